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
    /// The geofence does not exist.
    FenceNotFound,
    /// A geofence of that name exists.
    FenceExists,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 23] = [
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
        ErrorCode::FenceNotFound,
        ErrorCode::FenceExists,
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
            ErrorCode::FenceNotFound => 5001,
            ErrorCode::FenceExists => 5002,
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
            ErrorCode::FenceNotFound => "fence_not_found",
            ErrorCode::FenceExists => "fence_exists",
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

/// Why the server closes a WebSocket: every close code it sends, with its name and the
/// reason text of the close frame, in one place (RFC 6455 section 7.4 for 1xxx, 4xxx for
/// geostream's own reasons). `docs/PROTOCOL.md`'s close-code table is checked against
/// [`CloseCode::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure: the client closed, and the server echoes its code.
    Normal = 1000,
    /// The peer broke the WebSocket protocol (unmasked frame, bad opcode, reserved bits).
    ProtocolError = 1002,
    /// A frame type the subprotocol does not use (binary on JSON, text on MessagePack).
    UnsupportedData = 1003,
    /// A text frame that is not UTF-8.
    InvalidPayload = 1007,
    /// A frame or message larger than the server's limit.
    MessageTooBig = 1009,
    /// The server is restarting or shutting down: reconnect (with backoff) and resume.
    ServiceRestart = 1012,
    /// Nothing was received for longer than the idle timeout.
    IdleTimeout = 4000,
    /// The token expired on a live connection and was not refreshed.
    TokenExpired = 4001,
    /// The client read too slowly and its outbound queue stayed over the hard limit.
    SlowConsumer = 4008,
    /// The client kept sending far above its rate limit for longer than allowed.
    Flood = 4029,
}

impl CloseCode {
    /// Every code, in documentation order.
    pub const ALL: [CloseCode; 10] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::ServiceRestart,
        CloseCode::IdleTimeout,
        CloseCode::TokenExpired,
        CloseCode::SlowConsumer,
        CloseCode::Flood,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if the server sends it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Its name in the documentation.
    pub const fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::ServiceRestart => "service_restart",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::Flood => "flood",
        }
    }

    /// The reason text the close frame carries (a protocol violation may carry a more
    /// precise one, see [`CloseReason`]).
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::UnsupportedData => "frame type not used by this subprotocol",
            CloseCode::InvalidPayload => "text frame is not UTF-8",
            CloseCode::MessageTooBig => "frame or message too big",
            CloseCode::ServiceRestart => "server restarting; reconnect",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::TokenExpired => "token expired",
            CloseCode::SlowConsumer => "slow consumer: outbound queue over budget for too long",
            CloseCode::Flood => "flood: kept sending far above the rate limit",
        }
    }

    /// Whether a client should reconnect after it. The others mean the client did
    /// something that would fail again as is.
    pub const fn retry(self) -> bool {
        !matches!(
            self,
            CloseCode::ProtocolError | CloseCode::UnsupportedData | CloseCode::InvalidPayload
        )
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

/// What a close frame carries: a code (usually a [`CloseCode`]; the client's own when the
/// server echoes its close) and the reason text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The code on the wire.
    pub code: u16,
    /// The reason text (at most 123 bytes, the room a close frame has).
    pub reason: &'static str,
}

impl CloseReason {
    /// A more precise reason than the code's own (protocol violations say which rule).
    pub const fn with_reason(code: CloseCode, reason: &'static str) -> Self {
        CloseReason {
            code: code.code(),
            reason,
        }
    }

    /// The answer to a client's close frame (RFC 6455 section 5.5.1): a code of the
    /// registered range echoed, 1000 for an application code (4xxx) or none.
    pub fn echo(client_code: Option<u16>) -> Self {
        let code = match client_code {
            Some(c) if c < 4000 && c != 1005 && c != 1006 => c,
            _ => CloseCode::Normal.code(),
        };
        CloseReason {
            code,
            reason: "bye",
        }
    }

    /// The [`CloseCode`] it carries, if it is one the server sends.
    pub fn close_code(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.code)
    }
}

impl From<CloseCode> for CloseReason {
    fn from(code: CloseCode) -> Self {
        CloseReason {
            code: code.code(),
            reason: code.reason(),
        }
    }
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
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()));
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(
                c.reason().len() <= 123,
                "{c}: a close reason fits a control frame"
            );
        }
    }
}
