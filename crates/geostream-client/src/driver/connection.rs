//! The connection: connect (with the token), serve frames and commands until the socket
//! ends, reconnect with backoff, and end everything when the client closes.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::Encoding;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::{Cmd, Driver, End, Origin, SubKind, Ws, now_ms};
use crate::error::ClientError;
use crate::options::TokenProvider;
use crate::state::{CloseReason, ConnectionState};

/// The connection's read buffer. tungstenite's default (128 KiB) is zero-filled before every
/// read of the socket, whatever arrives: a client receiving many small pushes spent half its
/// CPU in that `memset` (measured in bench/loadgen, which connects the same way). Larger
/// messages still arrive whole, over several reads.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// RFC 6455's "policy violation": not sent by geostream, but a proxy in front of it may.
const POLICY_VIOLATION: u16 = 1008;

/// The code this client reports when the server refused its credentials in `hello` (the
/// server answers with an error, not a close frame).
pub(super) const REFUSED: u16 = 4003;

/// Close codes after which reconnecting with the same request would fail again.
fn is_final_close(code: u16) -> bool {
    use geostream_core::error::CloseCode;
    match CloseCode::from_code(code) {
        Some(c) => !c.retry(),
        None => matches!(code, POLICY_VIOLATION | REFUSED),
    }
}

/// Opens the WebSocket; returns it, the encoding the server chose and the token used.
async fn dial(
    url: String,
    enc: Encoding,
    token: Option<String>,
    provider: Option<TokenProvider>,
    timeout: Duration,
) -> std::result::Result<(Ws, Encoding, Option<String>), String> {
    let token = match provider {
        Some(p) => Some(
            tokio::time::timeout(timeout, p())
                .await
                .map_err(|_| "the token provider timed out".to_string())?
                .map_err(|e| format!("the token provider failed: {e}"))?,
        ),
        None => token,
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("invalid request: {e}"))?;
    let h = req.headers_mut();
    h.insert(
        "sec-websocket-protocol",
        enc.subprotocol().parse().map_err(|_| "bad subprotocol")?,
    );
    if let Some(t) = &token {
        h.insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| "the token is not a valid header value".to_string())?,
        );
    }
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (ws, resp) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(req, Some(config), true),
    )
    .await
    .map_err(|_| format!("no connection within {timeout:?}"))?
    .map_err(|e| e.to_string())?;
    let enc = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_subprotocol)
        .unwrap_or(Encoding::Json);
    Ok((ws, enc, token))
}

impl Driver {
    /// Connects, serves, reconnects, until closed.
    pub(crate) async fn run(mut self) {
        let mut last_error = String::new();
        let reason = loop {
            if self.attempt > 0 {
                if let Some(max) = self.opts.backoff.max_attempts
                    && self.attempt >= max
                {
                    break CloseReason::GaveUp {
                        attempts: self.attempt,
                        error: last_error,
                    };
                }
                let delay = self.opts.backoff.delay(self.attempt, &mut self.rng);
                self.shared.set_state(ConnectionState::Reconnecting {
                    attempt: self.attempt,
                    delay,
                    error: last_error.clone(),
                });
                if !self.idle(delay).await {
                    break CloseReason::Requested;
                }
            }
            self.shared.set_state(ConnectionState::Connecting);
            let (ws, enc) = match self.open().await {
                Some(Ok(x)) => x,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Connection attempt failed.");
                    if self.first.is_some() {
                        break CloseReason::ConnectFailed(e);
                    }
                    last_error = e;
                    self.attempt += 1;
                    continue;
                }
                None => break CloseReason::Requested,
            };
            let end = self.serve(ws, enc).await;
            self.on_disconnect();
            match end {
                End::Requested => break CloseReason::Requested,
                End::Refused { code, reason } => break CloseReason::Server { code, reason },
                End::Lost(e) => {
                    tracing::debug!(error = %e, "Connection lost.");
                    if self.first.is_some() {
                        break CloseReason::ConnectFailed(e);
                    }
                    if !self.opts.reconnect {
                        break CloseReason::Server {
                            code: 1006,
                            reason: e,
                        };
                    }
                    last_error = e;
                    self.attempt += 1;
                }
            }
        };
        self.shutdown(reason);
    }

    /// Ends everything: waiters get [`ClientError::Closed`], streams end.
    fn shutdown(&mut self, reason: CloseReason) {
        if let Some(first) = self.first.take() {
            let e = match &reason {
                CloseReason::ConnectFailed(e) => ClientError::Connect(e.clone()),
                CloseReason::Server { code, reason } => {
                    ClientError::Connect(format!("closed by the server ({code}): {reason}"))
                }
                _ => ClientError::Closed,
            };
            let _ = first.send(Err(e));
        }
        for (_, origin) in self.pending.drain() {
            match origin {
                Origin::User { reply, .. } => {
                    let _ = reply.send(Err(ClientError::Closed));
                }
                Origin::Update {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(ClientError::Closed));
                }
                Origin::TileUpdate {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(ClientError::Closed));
                }
                _ => {}
            }
        }
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(ClientError::Closed));
        }
        for (_, s) in std::mem::take(&mut self.subs) {
            if let Some(r) = s.ready {
                r.fail(ClientError::Closed);
            }
            match s.kind {
                SubKind::Layer(ls) => {
                    if let Some(r) = ls.update_reply {
                        let _ = r.send(Err(ClientError::Closed));
                    }
                }
                SubKind::Tile(ts) => {
                    if let Some(r) = ts.update_reply {
                        let _ = r.send(Err(ClientError::Closed));
                    }
                }
                SubKind::Channel(_) | SubKind::Presence(_) => {}
            }
        }
        self.shared.set_state(ConnectionState::Closed { reason });
        // Commands sent after this point find the receiver closed and fail with `Closed`.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            self.reject(cmd);
        }
    }

    fn reject(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request { reply, .. } => {
                let _ = reply.send(Err(ClientError::Closed));
            }
            Cmd::SubscribeLayer { ready, .. } => {
                let _ = ready.send(Err(ClientError::Closed));
            }
            Cmd::SubscribeChannel { ready, .. } => {
                let _ = ready.send(Err(ClientError::Closed));
            }
            Cmd::UpdateFilter { reply, .. } => {
                let _ = reply.send(Err(ClientError::Closed));
            }
            Cmd::SubscribeTiles { ready, .. } => {
                let _ = ready.send(Err(ClientError::Closed));
            }
            Cmd::SubscribePresence { ready, .. } => {
                let _ = ready.send(Err(ClientError::Closed));
            }
            Cmd::UpdateTiles { reply, .. } => {
                let _ = reply.send(Err(ClientError::Closed));
            }
            Cmd::Submit { reply, .. } => {
                let _ = reply.send(Err(ClientError::Closed));
            }
            Cmd::Outbox(reply) => {
                let _ = reply.send(self.outbox.entries.iter().cloned().collect());
            }
            Cmd::Cancel(_) | Cmd::Unsubscribe(_) | Cmd::Token(_) | Cmd::Cursor(_) | Cmd::Close => {}
        }
    }

    /// Waits `d` while handling commands; false when the client is closing.
    async fn idle(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.cmd_rx.recv() => match cmd {
                    None | Some(Cmd::Close) => return false,
                    Some(c) => self.handle_cmd(c),
                },
            }
        }
    }

    /// One connection attempt, handling commands meanwhile. `None` when closing.
    async fn open(&mut self) -> Option<std::result::Result<(Ws, Encoding), String>> {
        let fut = dial(
            self.url.clone(),
            self.opts.encoding,
            self.token.clone(),
            self.opts.token_provider.clone(),
            self.opts.connect_timeout,
        );
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => {
                    return Some(r.map(|(ws, enc, token)| {
                        if token.is_some() {
                            self.token = token;
                        }
                        self.schedule_token_refresh();
                        (ws, enc)
                    }));
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    None | Some(Cmd::Close) => return None,
                    Some(c) => self.handle_cmd(c),
                },
            }
        }
    }

    pub(super) fn schedule_token_refresh(&mut self) {
        self.token_refresh_at = None;
        if self.opts.token_provider.is_none() {
            return;
        }
        let Some(exp) = self.token.as_deref().and_then(crate::token::jwt_expiry) else {
            return;
        };
        let left = Duration::from_secs(exp.saturating_sub(now_ms() / 1000));
        let margin = self.opts.token_refresh_margin;
        // A short-lived token is renewed at 80% of its remaining life rather than too late.
        let wait = if left > margin * 2 {
            left - margin
        } else {
            left.mul_f64(0.8)
        };
        self.token_refresh_at = Some(Instant::now() + wait.max(Duration::from_secs(1)));
    }

    /// Serves one open connection until it ends.
    async fn serve(&mut self, ws: Ws, enc: Encoding) -> End {
        let (mut sink, mut stream) = ws.split();
        self.online = true;
        self.enc = enc;
        self.end = None;
        self.on_open();
        let mut last_recv = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let tick_every = (self.opts.ping_interval.min(self.opts.pong_timeout) / 2)
            .max(Duration::from_millis(20));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !self.out.is_empty() {
                while let Some(m) = self.out.pop_front() {
                    if let Err(e) = sink.feed(m).await {
                        return End::Lost(format!("write failed: {e}"));
                    }
                }
                if let Err(e) = sink.flush().await {
                    return End::Lost(format!("write failed: {e}"));
                }
            }
            if let Some(end) = self.end.take() {
                let _ = sink.close().await;
                return end;
            }
            let timer = self.next_timer();
            tokio::select! {
                m = stream.next() => {
                    last_recv = Instant::now();
                    ping_sent = None;
                    match m {
                        Some(Ok(Message::Text(t))) => self.on_frame(t.as_bytes()),
                        Some(Ok(Message::Binary(b))) => self.on_frame(&b),
                        Some(Ok(Message::Close(c))) => {
                            let (code, reason) = c.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                            let _ = sink.flush().await;
                            if is_final_close(code) {
                                return End::Refused { code, reason };
                            }
                            return End::Lost(format!("closed by the server ({code}): {reason}"));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return End::Lost(format!("read failed: {e}")),
                        None => return End::Lost("the connection ended".into()),
                    }
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    None | Some(Cmd::Close) => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Normal,
                                reason: "bye".into(),
                            })))
                            .await;
                        return End::Requested;
                    }
                    Some(c) => self.handle_cmd(c),
                },
                _ = tick.tick() => {
                    let quiet = last_recv.elapsed();
                    match ping_sent {
                        Some(at) if at.elapsed() >= self.opts.pong_timeout => {
                            return End::Lost(format!("no answer from the server for {quiet:?}"));
                        }
                        None if quiet >= self.opts.ping_interval => {
                            self.out.push_back(Message::Ping(Default::default()));
                            ping_sent = Some(Instant::now());
                        }
                        _ => {}
                    }
                }
                _ = sleep_until_opt(timer) => self.on_timer(),
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        match (self.token_refresh_at, self.edit_retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.token_refresh_at.is_some_and(|t| t <= now) {
            self.token_refresh_at = None;
            if let (Some(p), Some(tx)) = (self.opts.token_provider.clone(), self.cmd_tx.upgrade()) {
                tokio::spawn(async move {
                    let _ = tx.send(Cmd::Token(p().await));
                });
            }
        }
        if self.edit_retry_at.is_some_and(|t| t <= now) {
            self.edit_retry_at = None;
            self.resend_edits();
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
