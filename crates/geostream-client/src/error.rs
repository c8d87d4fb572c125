//! The client's error type.

use std::time::Duration;

use geostream_core::error::{ErrorCode, RpcError};
use geostream_core::feature::Feature;

/// Everything that can go wrong in the client.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL cannot be used (not `ws://` or `wss://`, or malformed).
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The first connection attempt of [`crate::Client::connect`] failed.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The server answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
    /// An edit was based on a stale version; `current` is the feature as the server has it
    /// now (absent when the server did not send it, for example after a delete).
    #[error("conflict: {error}")]
    Conflict {
        /// The server's error, with its message and data.
        error: RpcError,
        /// The current feature.
        current: Option<Box<Feature>>,
    },
    /// No response arrived in time; the request was cancelled on the server.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection broke after the request was sent, so whether it was applied is
    /// unknown. (Edits never end like this: they stay in the outbox and are retried with
    /// their operation id.)
    #[error("the connection was lost before the response arrived")]
    ConnectionLost,
    /// The client was closed (or gave up reconnecting).
    #[error("the client is closed")]
    Closed,
    /// A response or push did not have the expected shape.
    #[error("unexpected data from the server: {0}")]
    Decode(String),
    /// The outbox file could not be read or written.
    #[error("outbox file: {0}")]
    Outbox(String),
}

impl ClientError {
    /// The protocol error code, when the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rpc(e) | ClientError::Conflict { error: e, .. } => Some(e.code),
            _ => None,
        }
    }

    /// Whether this is an edit conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Conflict { .. })
    }

    /// Turns a server error into a client error, recognising conflicts.
    pub(crate) fn from_rpc(e: RpcError) -> Self {
        if e.code == ErrorCode::Conflict {
            let current = e
                .data
                .as_ref()
                .and_then(|d| d.get("current"))
                .and_then(|c| serde_json::from_value::<Feature>(c.clone()).ok())
                .map(Box::new);
            return ClientError::Conflict { error: e, current };
        }
        ClientError::Rpc(e)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
