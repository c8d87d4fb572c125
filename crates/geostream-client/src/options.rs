//! Connection options.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use geostream_core::codec::Encoding;

use crate::backoff::Backoff;

/// A future yielding a fresh token, or why there is none.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Called for a token before every connection, and again when the current token nears its
/// expiry (read from the JWT's `exp` claim).
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// How the client connects, reconnects and times out. Build it with the setters:
///
/// ```
/// use std::time::Duration;
/// use geostream_client::{ClientOptions, Encoding};
///
/// let opts = ClientOptions::default()
///     .encoding(Encoding::MsgpackZstd)
///     .request_timeout(Duration::from_secs(5))
///     .token("eyJ...");
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) encoding: Encoding,
    pub(crate) token: Option<String>,
    pub(crate) token_provider: Option<TokenProvider>,
    pub(crate) token_refresh_margin: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) reconnect: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) client_id: Option<String>,
    pub(crate) info: Option<serde_json::Value>,
    pub(crate) outbox_path: Option<PathBuf>,
    pub(crate) name: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            encoding: Encoding::Msgpack,
            token: None,
            token_provider: None,
            token_refresh_margin: Duration::from_secs(30),
            backoff: Backoff::default(),
            reconnect: true,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(10),
            client_id: None,
            info: None,
            outbox_path: None,
            name: "geostream-client".into(),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("encoding", &self.encoding)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_provider", &self.token_provider.is_some())
            .field("backoff", &self.backoff)
            .field("reconnect", &self.reconnect)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("client_id", &self.client_id)
            .field("outbox_path", &self.outbox_path)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// The wire encoding to ask for. Default: [`Encoding::Msgpack`]. The server may answer
    /// with JSON if it offers nothing else; the client follows what the server chose.
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// A fixed token (JWT), sent at every connection.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A function that returns a fresh token. It is called before every connection, and on a
    /// live connection `margin` (see [`ClientOptions::token_refresh_margin`]) before the
    /// current token's `exp`, whose successor is then sent with `hello`.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        let provider = Arc::new(provider);
        self.token_provider = Some(Arc::new(move || {
            let fut = provider();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }));
        self
    }

    /// How long before a token's expiry the provider is asked for the next one. Default: 30 s.
    pub fn token_refresh_margin(mut self, margin: Duration) -> Self {
        self.token_refresh_margin = margin;
        self
    }

    /// Delays between reconnection attempts. Default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Whether to reconnect after the connection is lost. Default: true.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// Default time a request may take before it fails with [`crate::ClientError::Timeout`]
    /// (and is cancelled on the server). Default: 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Time for the TCP connection and WebSocket handshake. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// After this long without hearing from the server the client sends a WebSocket ping;
    /// if nothing arrives within `pong_timeout` after that, the connection is considered
    /// dead and replaced. Defaults: 15 s and 10 s.
    pub fn heartbeat(mut self, ping_interval: Duration, pong_timeout: Duration) -> Self {
        self.ping_interval = ping_interval;
        self.pong_timeout = pong_timeout;
        self
    }

    /// A stable id for this client (1 to 128 printable characters). Locks belong to it, so
    /// they survive a reconnect within the server's grace period. Default: the id stored in
    /// the outbox file, or else a random one per [`crate::Client`].
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// What others see of this client in presence (at most 1 KiB of JSON).
    pub fn info(mut self, info: serde_json::Value) -> Self {
        self.info = Some(info);
        self
    }

    /// Keeps the outbox of unacknowledged edits in this file too, so edits survive a restart
    /// of the process: they are loaded by [`crate::Client::connect`] and sent once connected.
    /// The file is rewritten (atomically, and synced) whenever the outbox changes.
    pub fn outbox_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.outbox_path = Some(path.into());
        self
    }

    /// The software name sent in `hello` (for the server's logs). Default: `geostream-client`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}
