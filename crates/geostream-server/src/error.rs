//! The server's errors, and the one place where they are mapped to the wire: an error frame
//! (`RpcError`) on WebSocket, an HTTP status with a JSON body on HTTP.
//!
//! Errors the client caused are answered and not logged above debug; internal failures are
//! logged with their details and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use geostream_broker::BrokerError;
use geostream_core::error::{ErrorCode, RpcError};
use geostream_hub::HubError;
use geostream_store::StoreError;
use serde_json::json;

/// An error from any part of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An error already in wire form (validation, not found, conflicts, ...).
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// From the hub (subscription limits and bookkeeping).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// From the broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An HTTP body of a media type the route does not accept (415).
    #[error("{0}")]
    MediaType(String),
    /// Anything else unexpected: logged, answered as an internal error.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<geostream_hub::StreamError<StoreError>> for ServerError {
    fn from(e: geostream_hub::StreamError<StoreError>) -> Self {
        use geostream_hub::StreamError;
        match e {
            StreamError::Rpc(e) => ServerError::Rpc(e),
            StreamError::Hub(e) => ServerError::Hub(e),
            StreamError::Broker(e) => ServerError::Broker(e),
            StreamError::Log(e) => ServerError::Store(e),
        }
    }
}

/// Result alias for server operations.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl ServerError {
    /// Shorthand for an error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerError::Rpc(RpcError::new(code, message.into()))
    }

    /// Shorthand for invalid params.
    pub fn invalid(message: impl Into<String>) -> Self {
        ServerError::new(ErrorCode::InvalidParams, message)
    }

    /// The error as the client sees it.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            ServerError::Rpc(e) => e.clone(),
            ServerError::Hub(e) => match e {
                HubError::TooManySubscriptions(_) => {
                    RpcError::new(ErrorCode::LimitExceeded, e.to_string())
                }
                HubError::AlreadySubscribed(sub) => {
                    RpcError::new(ErrorCode::InvalidParams, e.to_string())
                        .with_data(serde_json::json!({ "sub": sub }))
                }
                HubError::UnknownSubscription(_) => {
                    RpcError::new(ErrorCode::UnknownSubscription, e.to_string())
                }
                _ => RpcError::new(ErrorCode::InternalError, "internal error"),
            },
            ServerError::Store(e) => store_error(e),
            ServerError::Broker(e) => {
                tracing::warn!(error = %e, "Broker operation failed.");
                RpcError::new(
                    ErrorCode::Unavailable,
                    "the message broker is unavailable; retry later",
                )
            }
            ServerError::MediaType(m) => RpcError::new(ErrorCode::InvalidRequest, m.clone()),
            ServerError::Internal(detail) => {
                tracing::error!(error = %detail, "Internal error.");
                RpcError::new(ErrorCode::InternalError, "internal error")
            }
        }
    }
}

fn store_error(e: &StoreError) -> RpcError {
    let msg = e.to_string();
    match e {
        StoreError::LayerNotFound(_) => RpcError::new(ErrorCode::LayerNotFound, msg),
        StoreError::LayerExists(_) => RpcError::new(ErrorCode::LayerExists, msg),
        StoreError::FenceExists(_) => RpcError::new(ErrorCode::FenceExists, msg),
        StoreError::FeatureNotFound { .. } => RpcError::new(ErrorCode::FeatureNotFound, msg),
        StoreError::FeatureExists { current, .. } => RpcError::new(ErrorCode::Conflict, msg)
            .with_data(json!({ "current": current, "exists": true })),
        StoreError::Conflict {
            current, expected, ..
        } => RpcError::new(ErrorCode::Conflict, msg)
            .with_data(json!({ "current": current, "expected": expected })),
        StoreError::VersionRequired { .. } => {
            RpcError::new(ErrorCode::Conflict, msg).with_data(json!({ "version_required": true }))
        }
        StoreError::Locked {
            id,
            holder,
            until_ms,
        } => RpcError::new(ErrorCode::Locked, msg).with_data(json!({
            "id": id,
            "client": holder.client,
            "user": holder.user,
            "until_ms": until_ms,
            "until": geostream_core::feature::format_time_ms(*until_ms),
        })),
        StoreError::Invalid(_) => RpcError::new(ErrorCode::InvalidParams, msg),
        StoreError::Unavailable(detail) => {
            tracing::error!(error = %detail, "Store failure.");
            RpcError::new(
                ErrorCode::Unavailable,
                "the store is unavailable; retry later",
            )
        }
        _ => {
            tracing::error!(error = %msg, "Unexpected store error.");
            RpcError::new(ErrorCode::InternalError, "internal error")
        }
    }
}

/// The HTTP status for an error code.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::ParseError
        | ErrorCode::InvalidRequest
        | ErrorCode::InvalidParams
        | ErrorCode::InvalidFeature
        | ErrorCode::InvalidFilter => StatusCode::BAD_REQUEST,
        ErrorCode::MethodNotFound
        | ErrorCode::LayerNotFound
        | ErrorCode::FeatureNotFound
        | ErrorCode::TileNotFound
        | ErrorCode::FenceNotFound
        | ErrorCode::UnknownSubscription => StatusCode::NOT_FOUND,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Conflict | ErrorCode::LayerExists | ErrorCode::FenceExists => {
            StatusCode::CONFLICT
        }
        ErrorCode::Locked => StatusCode::LOCKED,
        ErrorCode::RequestCancelled => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of every HTTP error: `{"error": {"code", "name", "message", "data"?}}`.
pub fn error_body(e: &RpcError) -> serde_json::Value {
    let mut inner =
        serde_json::json!({ "code": e.code.code(), "name": e.code.name(), "message": e.message });
    if let Some(d) = &e.data {
        inner["data"] = d.clone();
    }
    serde_json::json!({ "error": inner })
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let e = self.to_rpc();
        let mut status = http_status(e.code);
        if let ServerError::MediaType(_) = self {
            status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        if e.code == ErrorCode::Conflict {
            // HTTP has its own statuses for failed and missing preconditions (If-Match).
            if let Some(d) = &e.data {
                if d.get("precondition").is_some() {
                    status = StatusCode::PRECONDITION_FAILED;
                } else if d.get("version_required").is_some() {
                    status = StatusCode::PRECONDITION_REQUIRED;
                }
            }
        }
        (status, Json(error_body(&e))).into_response()
    }
}

/// An HTTP error response from a code and message.
pub fn http_error(code: ErrorCode, message: impl Into<String>) -> Response {
    ServerError::new(code, message).into_response()
}
