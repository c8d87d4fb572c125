//! The connection's state as the application sees it.

use std::time::Duration;

use geostream_core::codec::Encoding;

/// Where the connection stands. Every transition is reported, in order, by
/// [`crate::Client::state_changes`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection (the first one, or the next attempt after a delay).
    Connecting,
    /// Connected, and the session is open (`hello` answered); subscriptions are being
    /// resumed and the outbox sent.
    Connected {
        /// The server's session id.
        session: String,
        /// The encoding the server chose.
        encoding: Encoding,
    },
    /// The connection was lost or an attempt failed; the next attempt starts after `delay`.
    Reconnecting {
        /// Failed attempts in a row so far (1 after the first failure).
        attempt: u32,
        /// How long the client waits before attempt `attempt + 1`.
        delay: Duration,
        /// Why the last connection or attempt ended.
        error: String,
    },
    /// The client stopped; it will not connect again.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

impl ConnectionState {
    /// Whether the state is [`ConnectionState::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// Why the client stopped.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`crate::Client::close`] was called, or every handle was dropped.
    Requested,
    /// The server closed with a code that means "do not retry as is" (1002, 1003, 1007,
    /// 1008, 4003), or reconnection is turned off.
    Server {
        /// The WebSocket close code (1006 when the connection just broke).
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// [`crate::Backoff::max_attempts`] attempts in a row failed.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// The first connection of [`crate::Client::connect`] failed.
    ConnectFailed(String),
}
