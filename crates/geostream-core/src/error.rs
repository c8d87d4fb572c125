//! Error codes and close codes of the wire protocol, and the error value carried in responses.
//!
//! Every error a client can see is listed here, once. The server maps its internal errors to
//! these in one place (`geostream-server/src/error.rs`); `docs/PROTOCOL.md` documents them and
//! a test checks that the two lists agree.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A numeric error code carried in `error.code` of a response.
///
/// Ranges: the JSON-RPC 2.0 codes (-32768..=-32000) and LSP's "request cancelled" keep their
/// standard meaning; geostream's own codes are positive: 1xxx session, auth and limits,
/// 2xxx channels, 3xxx layers and features, 4xxx tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "i32", try_from = "i32")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON / MessagePack.
    ParseError,
    /// The frame is well-formed but not a valid request or notification.
    InvalidRequest,
    /// No such method.
    MethodNotFound,
    /// The parameters do not match the method (missing field, wrong type, bad value).
    InvalidParams,
    /// The server failed; the request may be retried.
    InternalError,
    /// The request was cancelled by `$/cancelRequest` before it finished.
    RequestCancelled,
    /// No credentials, or credentials that are invalid or expired.
    Unauthorized,
    /// Valid credentials that do not grant this operation.
    Forbidden,
    /// Too many requests; `data.retry_after_ms` says when to retry.
    RateLimited,
    /// A configured limit was reached (subscriptions per connection, payload size, ...).
    LimitExceeded,
    /// The request did not finish within the server's request timeout.
    Timeout,
    /// The server is shutting down or a backend is unavailable; retry elsewhere or later.
    Unavailable,
    /// The subscription id is not known on this connection.
    UnknownSubscription,
    /// The layer does not exist.
    LayerNotFound,
    /// The feature does not exist.
    FeatureNotFound,
    /// The GeoJSON feature or geometry is invalid.
    InvalidFeature,
    /// The filter (CQL2, spatial or temporal) is invalid or too complex.
    InvalidFilter,
    /// The edit was based on a stale version; `data.current` holds the current feature.
    Conflict,
    /// The feature is locked by someone else; `data` says by whom and until when.
    Locked,
    /// The layer already exists.
    LayerExists,
    /// The tile does not exist.
    TileNotFound,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::InternalError,
        ErrorCode::RequestCancelled,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::LimitExceeded,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::UnknownSubscription,
        ErrorCode::LayerNotFound,
        ErrorCode::FeatureNotFound,
        ErrorCode::InvalidFeature,
        ErrorCode::InvalidFilter,
        ErrorCode::Conflict,
        ErrorCode::Locked,
        ErrorCode::LayerExists,
        ErrorCode::TileNotFound,
    ];

    /// The number on the wire.
    pub const fn code(self) -> i32 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::InternalError => -32603,
            ErrorCode::RequestCancelled => -32800,
            ErrorCode::Unauthorized => 1001,
            ErrorCode::Forbidden => 1002,
            ErrorCode::RateLimited => 1003,
            ErrorCode::LimitExceeded => 1004,
            ErrorCode::Timeout => 1005,
            ErrorCode::Unavailable => 1006,
            ErrorCode::UnknownSubscription => 2001,
            ErrorCode::LayerNotFound => 3001,
            ErrorCode::FeatureNotFound => 3002,
            ErrorCode::InvalidFeature => 3003,
            ErrorCode::InvalidFilter => 3004,
            ErrorCode::Conflict => 3005,
            ErrorCode::Locked => 3006,
            ErrorCode::LayerExists => 3007,
            ErrorCode::TileNotFound => 4001,
        }
    }

    /// A stable snake_case name, used in HTTP error bodies and logs.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "parse_error",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::RequestCancelled => "request_cancelled",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownSubscription => "unknown_subscription",
            ErrorCode::LayerNotFound => "layer_not_found",
            ErrorCode::FeatureNotFound => "feature_not_found",
            ErrorCode::InvalidFeature => "invalid_feature",
            ErrorCode::InvalidFilter => "invalid_filter",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Locked => "locked",
            ErrorCode::LayerExists => "layer_exists",
            ErrorCode::TileNotFound => "tile_not_found",
        }
    }

    /// Looks a wire number up.
    pub fn from_code(code: i32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl From<ErrorCode> for i32 {
    fn from(c: ErrorCode) -> i32 {
        c.code()
    }
}

impl TryFrom<i32> for ErrorCode {
    type Error = String;
    fn try_from(v: i32) -> Result<Self, Self::Error> {
        ErrorCode::from_code(v).ok_or_else(|| format!("unknown error code {v}"))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// The `error` member of a response: `{code, message, data?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// What went wrong, as a number from [`ErrorCode`].
    pub code: ErrorCode,
    /// A sentence for humans; never contains internal details.
    pub message: Cow<'static, str>,
    /// Structured details (for example the current feature on a conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl RpcError {
    /// An error with a message and no data.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attaches structured details.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Shorthand for [`ErrorCode::InvalidParams`].
    pub fn invalid_params(message: impl Into<Cow<'static, str>>) -> Self {
        RpcError::new(ErrorCode::InvalidParams, message)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

/// WebSocket close codes the server uses (RFC 6455 section 7.4, IANA registry, and 4xxx for
/// geostream's own reasons). A client should reconnect after every code except 1002, 1003,
/// 1007, 1008 and 4003, which mean it did something that will fail again.
pub mod close {
    /// Normal closure (the client asked to close).
    pub const NORMAL: u16 = 1000;
    /// The server is going away for good (not used for restarts; see [`SERVICE_RESTART`]).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol (unmasked frame, bad opcode, reserved bits).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A frame type the subprotocol does not use (binary on JSON, text on MessagePack).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Refused by policy (origin not allowed, authentication failed on connect).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or message larger than the server's limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting or shutting down: reconnect (with backoff) and resume.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Too many connections; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Nothing was received for longer than the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The token expired on a live connection and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The connection was refused for its credentials.
    pub const UNAUTHORIZED: u16 = 4003;
    /// The client read too slowly and its outbound queue stayed over the hard limit.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client kept sending after being rate limited.
    pub const FLOOD: u16 = 4029;

    /// Every code with its name, in documentation order.
    pub const ALL: [(u16, &str); 15] = [
        (NORMAL, "normal"),
        (GOING_AWAY, "going_away"),
        (PROTOCOL_ERROR, "protocol_error"),
        (UNSUPPORTED_DATA, "unsupported_data"),
        (INVALID_PAYLOAD, "invalid_payload"),
        (POLICY_VIOLATION, "policy_violation"),
        (MESSAGE_TOO_BIG, "message_too_big"),
        (INTERNAL_ERROR, "internal_error"),
        (SERVICE_RESTART, "service_restart"),
        (TRY_AGAIN_LATER, "try_again_later"),
        (IDLE_TIMEOUT, "idle_timeout"),
        (TOKEN_EXPIRED, "token_expired"),
        (UNAUTHORIZED, "unauthorized"),
        (SLOW_CONSUMER, "slow_consumer"),
        (FLOOD, "flood"),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.code()), "duplicate code {}", c.code());
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
        }
        let json = serde_json::to_string(&RpcError::new(ErrorCode::Conflict, "stale")).unwrap();
        assert_eq!(json, r#"{"code":3005,"message":"stale"}"#);
        let back: RpcError = serde_json::from_str(&json).unwrap();
        assert_eq!(back.code, ErrorCode::Conflict);
    }

    #[test]
    fn close_codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (c, _) in close::ALL {
            assert!(seen.insert(c));
        }
    }
}
