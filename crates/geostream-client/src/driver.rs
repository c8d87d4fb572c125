//! The task behind a [`crate::Client`]: it owns the WebSocket, every subscription's resume
//! position, the pending requests, the outbox and the locks, and reconnects.
//!
//! Handles talk to it through one unbounded command channel, and it answers through oneshot
//! channels and per-subscription event channels. Owning everything in one task means no lock
//! is shared with the socket loop and the order of frames is the order of commands.
//!
//! Frames are produced synchronously into `out` and written by the connection loop after
//! each event, so command handling never waits on the socket; while disconnected nothing is
//! produced, and everything that must reach the server (subscriptions, locks, the outbox,
//! queued requests) is sent again in `on_open`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use geostream_core::api::{
    self, ChannelSubscribeParams, ChannelSubscribeResult, ClientInfo, ClientSoftware, CursorParams,
    CursorPush, EditResult, FeatureKind, FilterSpec, HelloParams, HelloResult,
    LayerSubscribeParams, LayerSubscribeResult, LockInfo, PROTOCOL_VERSION, Position,
    PresenceSubscribeParams, PresenceSubscribeResult, SubscriptionUpdateParams,
    SubscriptionUpdateResult, TileMode, TilePushKind, TileSubscribeParams, TileSubscribeResult,
    TileUpdateParams, TileUpdateResult,
};
use geostream_core::codec::{self, Encoding, Id, ServerFrame, ZSTD_THRESHOLD};
use geostream_core::error::{ErrorCode, RpcError};
use geostream_core::feature::{Feature, Geometry};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::edit::{Edit, Outbox, OutboxEntry};
use crate::error::{ClientError, Result};
use crate::events::{ChannelEvent, ClientEvent, Cursor, FeatureEvent, PresenceEvent};
use crate::options::{ClientOptions, TokenProvider};
use crate::state::{CloseReason, ConnectionState};
use crate::tiles::{TileEvent, TileSelection, apply_delta, tile_bytes};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Receives the server's answer to an edit.
pub(crate) type EditWaiter = oneshot::Receiver<Result<Vec<EditResult>>>;

/// Receives `$/progress` reports of a request.
pub(crate) type ProgressFn = Arc<dyn Fn(crate::Progress) + Send + Sync>;

/// State shared by the driver and every handle.
pub(crate) struct Shared {
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) state_listeners: Mutex<Vec<mpsc::UnboundedSender<ConnectionState>>>,
    pub(crate) event_listeners: Mutex<Vec<mpsc::UnboundedSender<ClientEvent>>>,
    pub(crate) next_id: AtomicI64,
    pub(crate) next_local: AtomicU64,
    pub(crate) outbox_len: AtomicUsize,
    pub(crate) client_id: String,
}

impl Shared {
    fn set_state(&self, s: ConnectionState) {
        tracing::debug!(state = ?s, "Connection state changed.");
        self.state.send_replace(s.clone());
        let mut l = self
            .state_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        l.retain(|tx| tx.send(s.clone()).is_ok());
    }

    fn emit(&self, e: ClientEvent) {
        let mut l = self
            .event_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        l.retain(|tx| tx.send(e.clone()).is_ok());
    }
}

/// What a request does with its response.
pub(crate) enum Hook {
    /// Nothing more.
    None,
    /// Remember the locks taken, to re-acquire them after a reconnect.
    Lock { ttl_ms: Option<u64> },
    /// Forget the locks released.
    Unlock { layer: String, ids: Vec<String> },
    /// Remember the cursor shared, to share it again after a reconnect.
    Cursor(CursorParams),
}

/// Commands from handles.
pub(crate) enum Cmd {
    Request {
        id: i64,
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value>>,
        progress: Option<ProgressFn>,
        hook: Hook,
    },
    Cancel(i64),
    SubscribeLayer {
        local: u64,
        layer: String,
        filter: FilterSpec,
        snapshot: bool,
        page_size: Option<usize>,
        events: mpsc::UnboundedSender<FeatureEvent>,
        ready: oneshot::Sender<Result<u64>>,
    },
    SubscribeChannel {
        local: u64,
        channel: String,
        presence: bool,
        events: mpsc::UnboundedSender<ChannelEvent>,
        ready: oneshot::Sender<Result<Position>>,
    },
    SubscribePresence {
        local: u64,
        layer: String,
        events: mpsc::UnboundedSender<PresenceEvent>,
        ready: oneshot::Sender<Result<Vec<ClientInfo>>>,
    },
    /// Shares a cursor without waiting for an answer (a notification).
    Cursor(CursorParams),
    UpdateFilter {
        local: u64,
        filter: FilterSpec,
        reply: oneshot::Sender<Result<SubscriptionUpdateResult>>,
    },
    SubscribeTiles {
        local: u64,
        layer: String,
        selection: TileSelection,
        mode: TileMode,
        events: mpsc::UnboundedSender<TileEvent>,
        ready: oneshot::Sender<Result<TileSubscribeResult>>,
    },
    UpdateTiles {
        local: u64,
        selection: TileSelection,
        reply: oneshot::Sender<Result<TileUpdateResult>>,
    },
    Unsubscribe(u64),
    Submit {
        edit: Edit,
        reply: oneshot::Sender<Result<(String, EditWaiter)>>,
    },
    Outbox(oneshot::Sender<Vec<OutboxEntry>>),
    Token(std::result::Result<String, String>),
    Close,
}

/// Who waits for a response, and what to do with it.
enum Origin {
    User {
        reply: oneshot::Sender<Result<Value>>,
        progress: Option<ProgressFn>,
        hook: Hook,
    },
    Hello {
        refresh: bool,
    },
    Subscribe {
        local: u64,
        fresh: bool,
    },
    Update {
        local: u64,
        filter: FilterSpec,
        reply: Option<oneshot::Sender<Result<SubscriptionUpdateResult>>>,
    },
    TileUpdate {
        local: u64,
        reply: Option<oneshot::Sender<Result<TileUpdateResult>>>,
    },
    Edit {
        op_id: String,
    },
    Relock {
        layer: String,
        ids: Vec<String>,
    },
    Ignore,
}

struct LayerSub {
    layer: String,
    /// The filter the client's state (`seq`) corresponds to.
    acked: FilterSpec,
    /// The filter the application asked for last.
    desired: FilterSpec,
    snapshot: bool,
    page_size: Option<usize>,
    /// The last sequence number delivered.
    seq: u64,
    /// Whether the stream is complete up to `seq` (no snapshot page missing).
    snapshot_done: bool,
    /// Whether the subscription ever got a result (so a new one is a resume).
    started: bool,
    /// A fresh snapshot replaces an interrupted one: announce it with `Resync`.
    restart: bool,
    /// The sequence number of the viewport difference being delivered (after a
    /// `subscription.update` response), whose pushes all carry it.
    diff_seq: Option<u64>,
    /// A filter change made while disconnected waits for the reconnect.
    update_reply: Option<oneshot::Sender<Result<SubscriptionUpdateResult>>>,
    tx: mpsc::UnboundedSender<FeatureEvent>,
}

struct ChannelSub {
    channel: String,
    presence: bool,
    /// The position of the last message delivered.
    position: Option<Position>,
    tx: mpsc::UnboundedSender<ChannelEvent>,
}

/// A tile the client holds, to apply the next delta to.
struct HeldTile {
    version: u64,
    bytes: bytes::Bytes,
}

struct TileSub {
    layer: String,
    selection: TileSelection,
    mode: TileMode,
    held: HashMap<String, HeldTile>,
    /// A move made while disconnected waits for the reconnect.
    update_reply: Option<oneshot::Sender<Result<TileUpdateResult>>>,
    tx: mpsc::UnboundedSender<TileEvent>,
}

struct PresenceSub {
    layer: String,
    tx: mpsc::UnboundedSender<PresenceEvent>,
}

enum SubKind {
    Layer(Box<LayerSub>),
    Channel(ChannelSub),
    Tile(Box<TileSub>),
    Presence(PresenceSub),
}

enum Ready {
    Layer(oneshot::Sender<Result<u64>>),
    Channel(oneshot::Sender<Result<Position>>),
    Tile(oneshot::Sender<Result<TileSubscribeResult>>),
    Presence(oneshot::Sender<Result<Vec<ClientInfo>>>),
}

struct Sub {
    /// Its id on the current connection.
    server: Option<u32>,
    kind: SubKind,
    /// The first subscribe's caller.
    ready: Option<Ready>,
}

struct HeldLock {
    ttl_ms: Option<u64>,
    until_ms: u64,
}

/// How a connection ended.
enum End {
    Requested,
    Refused { code: u16, reason: String },
    Lost(String),
}

pub(crate) struct Driver {
    url: String,
    opts: ClientOptions,
    shared: Arc<Shared>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    cmd_tx: mpsc::WeakUnboundedSender<Cmd>,
    rng: StdRng,
    first: Option<oneshot::Sender<Result<()>>>,
    attempt: u32,
    online: bool,
    enc: Encoding,
    out: VecDeque<Message>,
    end: Option<End>,
    token: Option<String>,
    token_refresh_at: Option<Instant>,
    pending: HashMap<i64, Origin>,
    queued: VecDeque<(i64, String, Value)>,
    subs: BTreeMap<u64, Sub>,
    by_server: HashMap<u32, u64>,
    outbox: Outbox,
    waiters: HashMap<String, oneshot::Sender<Result<Vec<EditResult>>>>,
    inflight: HashSet<String>,
    edit_retry_at: Option<Instant>,
    edit_retries: u32,
    locks: BTreeMap<(String, String), HeldLock>,
    unlocking: HashSet<(String, String)>,
    /// The last cursor shared on each layer, shared again after a reconnect.
    cursors: BTreeMap<String, CursorParams>,
}

/// RFC 6455's "policy violation": not sent by geostream, but a proxy in front of it may.
const POLICY_VIOLATION: u16 = 1008;

/// The code this client reports when the server refused its credentials in `hello` (the
/// server answers with an error, not a close frame).
const REFUSED: u16 = 4003;

/// Close codes after which reconnecting with the same request would fail again.
fn is_final_close(code: u16) -> bool {
    use geostream_core::error::CloseCode;
    match CloseCode::from_code(code) {
        Some(c) => !c.retry(),
        None => matches!(code, POLICY_VIOLATION | REFUSED),
    }
}

/// Server errors worth retrying an edit after.
fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InternalError
            | ErrorCode::Unavailable
            | ErrorCode::Timeout
            | ErrorCode::RateLimited
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn filter_eq(a: &FilterSpec, b: &FilterSpec) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))
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
    let (ws, resp) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(req))
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

#[derive(Deserialize)]
struct SubField {
    sub: u32,
}

#[derive(Deserialize)]
struct SnapshotIn {
    seq: u64,
    features: Vec<Feature>,
    last: bool,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<Geometry>>, D::Error> {
    Option::<Geometry>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct FeatureIn {
    seq: u64,
    kind: FeatureKind,
    id: String,
    version: u64,
    #[serde(default)]
    feature: Option<Feature>,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "double_option")]
    geometry: Option<Option<Geometry>>,
}

#[derive(Deserialize)]
struct ResyncIn {
    seq: u64,
    reason: String,
}

#[derive(Deserialize)]
struct LockIn {
    #[serde(flatten)]
    lock: LockInfo,
    locked: bool,
}

#[derive(Deserialize)]
struct MessageIn {
    offset: u64,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct PresenceIn {
    client: ClientInfo,
}

#[derive(Deserialize)]
struct GapIn {
    from: u64,
    epoch: String,
}

#[derive(Deserialize)]
struct TileIn {
    tile: String,
    version: u64,
    kind: TilePushKind,
    #[serde(default)]
    base: Option<u64>,
    #[serde(default)]
    etag: String,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct ReasonIn {
    reason: String,
}

#[derive(Deserialize)]
struct BatchOut {
    results: Vec<EditResult>,
}

#[derive(Deserialize)]
struct LocksOut {
    #[serde(default)]
    locks: Vec<LockInfo>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        url: String,
        opts: ClientOptions,
        shared: Arc<Shared>,
        cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        cmd_tx: mpsc::WeakUnboundedSender<Cmd>,
        outbox: Outbox,
        first: Option<oneshot::Sender<Result<()>>>,
    ) -> Driver {
        let enc = opts.encoding;
        let token = opts.token.clone();
        Driver {
            url,
            opts,
            shared,
            cmd_rx,
            cmd_tx,
            rng: StdRng::from_os_rng(),
            first,
            attempt: 0,
            online: false,
            enc,
            out: VecDeque::new(),
            end: None,
            token,
            token_refresh_at: None,
            pending: HashMap::new(),
            queued: VecDeque::new(),
            subs: BTreeMap::new(),
            by_server: HashMap::new(),
            outbox,
            waiters: HashMap::new(),
            inflight: HashSet::new(),
            edit_retry_at: None,
            edit_retries: 0,
            locks: BTreeMap::new(),
            unlocking: HashSet::new(),
            cursors: BTreeMap::new(),
        }
    }

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
            match s.ready {
                Some(Ready::Layer(r)) => {
                    let _ = r.send(Err(ClientError::Closed));
                }
                Some(Ready::Channel(r)) => {
                    let _ = r.send(Err(ClientError::Closed));
                }
                Some(Ready::Tile(r)) => {
                    let _ = r.send(Err(ClientError::Closed));
                }
                Some(Ready::Presence(r)) => {
                    let _ = r.send(Err(ClientError::Closed));
                }
                None => {}
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

    fn schedule_token_refresh(&mut self) {
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
            if self.online {
                let entries: Vec<OutboxEntry> = self.outbox.entries.iter().cloned().collect();
                for e in entries {
                    if !self.inflight.contains(&e.op_id) {
                        self.send_edit(&e);
                    }
                }
            }
        }
    }

    fn frame(&self, id: Option<i64>, method: &str, params: &Value) -> Message {
        let id = id.map(Id::Int);
        let b = codec::encode_request(self.enc, id.as_ref(), method, params);
        match self.enc {
            Encoding::Json => {
                Message::Text(String::from_utf8(b.to_vec()).unwrap_or_default().into())
            }
            Encoding::Msgpack => Message::Binary(b),
            Encoding::MsgpackZstd => {
                if b.len() >= ZSTD_THRESHOLD
                    && let Ok(z) = zstd::bulk::compress(&b, 1)
                    && z.len() < b.len()
                {
                    return Message::Binary(z.into());
                }
                Message::Binary(b)
            }
        }
    }

    /// Sends a request of the client's own (only while online).
    fn send_internal(&mut self, method: &str, params: Value, origin: Origin) {
        if !self.online {
            return;
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let m = self.frame(Some(id), method, &params);
        self.out.push_back(m);
        self.pending.insert(id, origin);
    }

    /// A new connection is open: `hello`, then everything the server must know again.
    fn on_open(&mut self) {
        let hello = HelloParams {
            protocol: Some(PROTOCOL_VERSION),
            token: self.token.clone(),
            client: Some(ClientSoftware {
                name: self.opts.name.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            client_id: Some(self.shared.client_id.clone()),
            info: self.opts.info.clone(),
        };
        self.send_internal(
            api::method::HELLO,
            serde_json::to_value(hello).unwrap_or_default(),
            Origin::Hello { refresh: false },
        );
        let locals: Vec<u64> = self.subs.keys().copied().collect();
        for local in locals {
            self.send_subscribe(local);
        }
        self.relock();
        // Cursors are not kept by the server: share the last ones again. The server takes
        // one cursor per 50 ms from a connection and drops the rest, so with cursors on
        // several layers only the first arrives now; the next move sends the others.
        let cursors: Vec<CursorParams> = self.cursors.values().cloned().collect();
        for c in cursors {
            let m = self.frame(
                None,
                api::method::PRESENCE_CURSOR,
                &serde_json::to_value(c).unwrap_or_default(),
            );
            self.out.push_back(m);
        }
        let entries: Vec<OutboxEntry> = self.outbox.entries.iter().cloned().collect();
        for e in &entries {
            self.send_edit(e);
        }
        while let Some((id, method, params)) = self.queued.pop_front() {
            let m = self.frame(Some(id), &method, &params);
            self.out.push_back(m);
        }
    }

    /// The connection is gone: forget per-connection state; fail what cannot be retried.
    fn on_disconnect(&mut self) {
        self.online = false;
        self.out.clear();
        self.by_server.clear();
        self.inflight.clear();
        for s in self.subs.values_mut() {
            s.server = None;
        }
        for (_, origin) in self.pending.drain() {
            match origin {
                // Whether it was applied is unknown: the caller decides (edits use the outbox).
                Origin::User { reply, .. } => {
                    let _ = reply.send(Err(ClientError::ConnectionLost));
                }
                Origin::Update { local, reply, .. } => {
                    if let Some(Sub {
                        kind: SubKind::Layer(ls),
                        ..
                    }) = self.subs.get_mut(&local)
                    {
                        if ls.update_reply.is_none() {
                            ls.update_reply = reply;
                        } else if let Some(r) = reply {
                            let _ = r.send(Err(ClientError::ConnectionLost));
                        }
                    }
                }
                Origin::TileUpdate { local, reply } => {
                    if let Some(Sub {
                        kind: SubKind::Tile(ts),
                        ..
                    }) = self.subs.get_mut(&local)
                    {
                        if ts.update_reply.is_none() {
                            ts.update_reply = reply;
                        } else if let Some(r) = reply {
                            let _ = r.send(Err(ClientError::ConnectionLost));
                        }
                    }
                }
                _ => {}
            }
        }
        self.unlocking.clear();
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request {
                id,
                method,
                params,
                reply,
                progress,
                hook,
            } => {
                if let Hook::Unlock { layer, ids } = &hook {
                    for i in ids {
                        self.unlocking.insert((layer.clone(), i.clone()));
                    }
                }
                self.pending.insert(
                    id,
                    Origin::User {
                        reply,
                        progress,
                        hook,
                    },
                );
                if self.online {
                    let m = self.frame(Some(id), &method, &params);
                    self.out.push_back(m);
                } else {
                    self.queued.push_back((id, method, params));
                }
            }
            Cmd::Cancel(id) => {
                if self.pending.remove(&id).is_none() {
                    return;
                }
                if let Some(i) = self.queued.iter().position(|(q, _, _)| *q == id) {
                    self.queued.remove(i);
                } else if self.online {
                    let m = self.frame(None, api::method::CANCEL_REQUEST, &json!({ "id": id }));
                    self.out.push_back(m);
                }
            }
            Cmd::SubscribeLayer {
                local,
                layer,
                filter,
                snapshot,
                page_size,
                events,
                ready,
            } => {
                self.subs.insert(
                    local,
                    Sub {
                        server: None,
                        kind: SubKind::Layer(Box::new(LayerSub {
                            layer,
                            acked: filter.clone(),
                            desired: filter,
                            snapshot,
                            page_size,
                            seq: 0,
                            snapshot_done: false,
                            started: false,
                            restart: false,
                            diff_seq: None,
                            update_reply: None,
                            tx: events,
                        })),
                        ready: Some(Ready::Layer(ready)),
                    },
                );
                self.send_subscribe(local);
            }
            Cmd::SubscribeChannel {
                local,
                channel,
                presence,
                events,
                ready,
            } => {
                self.subs.insert(
                    local,
                    Sub {
                        server: None,
                        kind: SubKind::Channel(ChannelSub {
                            channel,
                            presence,
                            position: None,
                            tx: events,
                        }),
                        ready: Some(Ready::Channel(ready)),
                    },
                );
                self.send_subscribe(local);
            }
            Cmd::SubscribePresence {
                local,
                layer,
                events,
                ready,
            } => {
                self.subs.insert(
                    local,
                    Sub {
                        server: None,
                        kind: SubKind::Presence(PresenceSub { layer, tx: events }),
                        ready: Some(Ready::Presence(ready)),
                    },
                );
                self.send_subscribe(local);
            }
            Cmd::Cursor(c) => {
                self.remember_cursor(c.clone());
                if self.online {
                    let m = self.frame(
                        None,
                        api::method::PRESENCE_CURSOR,
                        &serde_json::to_value(c).unwrap_or_default(),
                    );
                    self.out.push_back(m);
                }
            }
            Cmd::UpdateFilter {
                local,
                filter,
                reply,
            } => {
                let online = self.online;
                let Some(sub) = self.subs.get_mut(&local) else {
                    let _ = reply.send(Err(ClientError::Closed));
                    return;
                };
                let SubKind::Layer(ls) = &mut sub.kind else {
                    let _ = reply.send(Err(ClientError::Decode("not a layer subscription".into())));
                    return;
                };
                ls.desired = filter.clone();
                match sub.server {
                    Some(server) if online => {
                        let params = SubscriptionUpdateParams {
                            sub: server,
                            filter: filter.clone(),
                        };
                        self.send_internal(
                            api::method::SUBSCRIPTION_UPDATE,
                            serde_json::to_value(params).unwrap_or_default(),
                            Origin::Update {
                                local,
                                filter,
                                reply: Some(reply),
                            },
                        );
                    }
                    // Applied once the subscription is back (see `on_subscribed`).
                    _ => {
                        if let Some(old) = ls.update_reply.replace(reply) {
                            let _ = old.send(Err(ClientError::Decode(
                                "superseded by a later filter".into(),
                            )));
                        }
                    }
                }
            }
            Cmd::SubscribeTiles {
                local,
                layer,
                selection,
                mode,
                events,
                ready,
            } => {
                self.subs.insert(
                    local,
                    Sub {
                        server: None,
                        kind: SubKind::Tile(Box::new(TileSub {
                            layer,
                            selection,
                            mode,
                            held: HashMap::new(),
                            update_reply: None,
                            tx: events,
                        })),
                        ready: Some(Ready::Tile(ready)),
                    },
                );
                self.send_subscribe(local);
            }
            Cmd::UpdateTiles {
                local,
                selection,
                reply,
            } => {
                let online = self.online;
                let Some(sub) = self.subs.get_mut(&local) else {
                    let _ = reply.send(Err(ClientError::Closed));
                    return;
                };
                let SubKind::Tile(ts) = &mut sub.kind else {
                    let _ = reply.send(Err(ClientError::Decode("not a tile subscription".into())));
                    return;
                };
                ts.selection = selection.clone();
                match sub.server {
                    Some(server) if online => {
                        let p = TileUpdateParams {
                            sub: server,
                            viewport: selection.viewport(),
                            tiles: selection.tiles(),
                            have: Default::default(),
                        };
                        self.send_internal(
                            api::method::TILE_UPDATE,
                            serde_json::to_value(p).unwrap_or_default(),
                            Origin::TileUpdate {
                                local,
                                reply: Some(reply),
                            },
                        );
                    }
                    // Applied by the subscribe that resumes the subscription.
                    _ => {
                        if let Some(old) = ts.update_reply.replace(reply) {
                            let _ = old.send(Err(ClientError::Decode(
                                "superseded by a later selection".into(),
                            )));
                        }
                    }
                }
            }
            Cmd::Unsubscribe(local) => {
                if let Some(sub) = self.subs.remove(&local)
                    && let Some(server) = sub.server
                {
                    self.by_server.remove(&server);
                    self.send_internal(
                        api::method::UNSUBSCRIBE,
                        json!({ "sub": server }),
                        Origin::Ignore,
                    );
                }
            }
            Cmd::Submit { edit, reply } => {
                let op_id = uuid::Uuid::now_v7().to_string();
                let entry = OutboxEntry {
                    op_id: op_id.clone(),
                    edit,
                };
                self.outbox.entries.push_back(entry.clone());
                if let Err(e) = self.outbox.save(&self.shared.client_id) {
                    self.outbox.entries.pop_back();
                    let _ = reply.send(Err(e));
                    return;
                }
                self.shared
                    .outbox_len
                    .store(self.outbox.entries.len(), Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                self.waiters.insert(op_id.clone(), tx);
                let _ = reply.send(Ok((op_id, rx)));
                self.send_edit(&entry);
            }
            Cmd::Outbox(reply) => {
                let _ = reply.send(self.outbox.entries.iter().cloned().collect());
            }
            Cmd::Token(Ok(token)) => {
                self.token = Some(token.clone());
                self.schedule_token_refresh();
                let hello = HelloParams {
                    token: Some(token),
                    client_id: Some(self.shared.client_id.clone()),
                    ..Default::default()
                };
                self.send_internal(
                    api::method::HELLO,
                    serde_json::to_value(hello).unwrap_or_default(),
                    Origin::Hello { refresh: true },
                );
            }
            Cmd::Token(Err(e)) => {
                tracing::warn!(error = %e, "Could not refresh the token; trying again in 5 s.");
                self.token_refresh_at = Some(Instant::now() + Duration::from_secs(5));
            }
            Cmd::Close => {}
        }
    }

    fn send_subscribe(&mut self, local: u64) {
        if !self.online {
            return;
        }
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        let (method, params, fresh) = match &mut sub.kind {
            SubKind::Layer(ls) => {
                let since = if ls.started && ls.snapshot_done {
                    Some(ls.seq)
                } else {
                    // Never started, or its snapshot was cut: start over with the filter
                    // the application wants now.
                    ls.restart = ls.started;
                    ls.acked = ls.desired.clone();
                    None
                };
                let p = LayerSubscribeParams {
                    layer: ls.layer.clone(),
                    filter: if since.is_some() {
                        ls.acked.clone()
                    } else {
                        ls.desired.clone()
                    },
                    since,
                    snapshot: Some(ls.snapshot),
                    page_size: ls.page_size,
                };
                (
                    api::method::LAYER_SUBSCRIBE,
                    serde_json::to_value(p).unwrap_or_default(),
                    since.is_none(),
                )
            }
            SubKind::Tile(ts) => {
                // Resuming: the versions held make the server send only what changed, as
                // deltas against them.
                let p = TileSubscribeParams {
                    layer: ts.layer.clone(),
                    viewport: ts.selection.viewport(),
                    tiles: ts.selection.tiles(),
                    mode: ts.mode,
                    have: ts
                        .held
                        .iter()
                        .map(|(k, h)| (k.clone(), h.version))
                        .collect(),
                };
                (
                    api::method::TILE_SUBSCRIBE,
                    serde_json::to_value(p).unwrap_or_default(),
                    ts.held.is_empty(),
                )
            }
            SubKind::Presence(ps) => {
                let p = PresenceSubscribeParams {
                    layer: ps.layer.clone(),
                };
                (
                    api::method::PRESENCE_SUBSCRIBE,
                    serde_json::to_value(p).unwrap_or_default(),
                    true,
                )
            }
            SubKind::Channel(cs) => {
                let p = ChannelSubscribeParams {
                    channel: cs.channel.clone(),
                    since: cs.position.clone(),
                    presence: cs.presence,
                };
                (
                    api::method::CHANNEL_SUBSCRIBE,
                    serde_json::to_value(p).unwrap_or_default(),
                    cs.position.is_none(),
                )
            }
        };
        self.send_internal(method, params, Origin::Subscribe { local, fresh });
    }

    fn send_edit(&mut self, e: &OutboxEntry) {
        if !self.online {
            return;
        }
        self.inflight.insert(e.op_id.clone());
        self.send_internal(
            e.edit.method(),
            e.edit.params(&e.op_id),
            Origin::Edit {
                op_id: e.op_id.clone(),
            },
        );
    }

    /// Takes the locks held before the disconnect again (they may have survived on the
    /// server within its grace period; locking again extends them).
    fn relock(&mut self) {
        let now = now_ms();
        let mut by_layer: BTreeMap<String, (Option<u64>, Vec<String>)> = BTreeMap::new();
        let mut expired = Vec::new();
        for ((layer, id), l) in &self.locks {
            if l.until_ms <= now {
                expired.push((layer.clone(), id.clone()));
            } else {
                let e = by_layer
                    .entry(layer.clone())
                    .or_insert((l.ttl_ms, Vec::new()));
                e.1.push(id.clone());
            }
        }
        for (layer, id) in expired {
            self.locks.remove(&(layer.clone(), id.clone()));
            self.shared.emit(ClientEvent::LockLost {
                layer,
                id,
                reason: "expired while disconnected".into(),
            });
        }
        for (layer, (ttl, ids)) in by_layer {
            self.send_relock(layer, ids, ttl);
        }
    }

    fn send_relock(&mut self, layer: String, ids: Vec<String>, ttl_ms: Option<u64>) {
        let mut p = json!({ "layer": layer, "ids": ids });
        if let Some(t) = ttl_ms {
            p["ttl_ms"] = json!(t);
        }
        self.send_internal(api::method::FEATURE_LOCK, p, Origin::Relock { layer, ids });
    }

    fn on_frame(&mut self, data: &[u8]) {
        let frame = match codec::decode_server_frame(self.enc, data) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "Ignoring a frame that could not be decoded.");
                return;
            }
        };
        match frame {
            ServerFrame::Response {
                id: Id::Int(id),
                result,
            } => self.on_response(id, Ok(result)),
            ServerFrame::Error {
                id: Some(Id::Int(id)),
                error,
            } => self.on_response(id, Err(error)),
            ServerFrame::Error { error, .. } => {
                tracing::warn!(error = %error, "The server reported an error about a frame.");
            }
            ServerFrame::Response { .. } => {}
            ServerFrame::Notification { method, params } => self.on_push(&method, params),
        }
    }

    fn on_response(&mut self, id: i64, r: std::result::Result<Value, RpcError>) {
        let Some(origin) = self.pending.remove(&id) else {
            return; // cancelled, or from before a reconnect
        };
        match origin {
            Origin::User { reply, hook, .. } => {
                if let Ok(v) = &r {
                    self.after_hook(hook, v);
                } else if let Hook::Unlock { layer, ids } = hook {
                    for i in ids {
                        self.unlocking.remove(&(layer.clone(), i));
                    }
                }
                let _ = reply.send(r.map_err(ClientError::from_rpc));
            }
            Origin::Hello { refresh } => match r {
                Ok(v) => {
                    if refresh {
                        return;
                    }
                    let session = serde_json::from_value::<HelloResult>(v)
                        .map(|h| h.session)
                        .unwrap_or_default();
                    self.attempt = 0;
                    self.shared.set_state(ConnectionState::Connected {
                        session,
                        encoding: self.enc,
                    });
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    }
                }
                Err(e) if refresh => {
                    tracing::warn!(error = %e, "The server refused the refreshed token.");
                }
                Err(e) => {
                    let final_ =
                        e.code == ErrorCode::Unauthorized && self.opts.token_provider.is_none();
                    self.end = Some(if final_ || e.code == ErrorCode::InvalidParams {
                        End::Refused {
                            code: REFUSED,
                            reason: e.to_string(),
                        }
                    } else {
                        End::Lost(format!("hello failed: {e}"))
                    });
                }
            },
            Origin::Subscribe { local, fresh } => self.on_subscribed(local, fresh, r),
            Origin::Update {
                local,
                filter,
                reply,
            } => {
                let Some(Sub {
                    kind: SubKind::Layer(ls),
                    ..
                }) = self.subs.get_mut(&local)
                else {
                    return;
                };
                let out = match r {
                    Ok(v) => decode::<SubscriptionUpdateResult>(v).inspect(|res| {
                        ls.acked = filter;
                        ls.seq = ls.seq.max(res.seq);
                        ls.diff_seq = Some(res.seq);
                    }),
                    Err(e) => {
                        ls.desired = ls.acked.clone();
                        Err(ClientError::from_rpc(e))
                    }
                };
                if let Some(reply) = reply {
                    let _ = reply.send(out);
                }
            }
            Origin::TileUpdate { local, reply } => {
                let out = match r {
                    Ok(v) => decode::<TileUpdateResult>(v),
                    Err(e) => Err(ClientError::from_rpc(e)),
                };
                if let (
                    Ok(res),
                    Some(Sub {
                        kind: SubKind::Tile(ts),
                        ..
                    }),
                ) = (&out, self.subs.get_mut(&local))
                {
                    for t in &res.removed {
                        ts.held.remove(t);
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(out);
                }
            }
            Origin::Edit { op_id } => self.on_edit_result(op_id, r),
            Origin::Relock { layer, ids } => match r {
                Ok(v) => {
                    if let Ok(l) = decode::<LocksOut>(v) {
                        for li in l.locks {
                            if let Some(h) = self.locks.get_mut(&(li.layer.clone(), li.id.clone()))
                            {
                                h.until_ms = li.until_ms;
                            }
                        }
                    }
                }
                Err(e) if ids.len() > 1 && e.code == ErrorCode::Locked => {
                    // All or nothing: find out which ones are lost by asking one by one.
                    for id in ids {
                        let ttl = self
                            .locks
                            .get(&(layer.clone(), id.clone()))
                            .and_then(|h| h.ttl_ms);
                        self.send_relock(layer.clone(), vec![id], ttl);
                    }
                }
                Err(e) => {
                    for id in ids {
                        self.locks.remove(&(layer.clone(), id.clone()));
                        self.shared.emit(ClientEvent::LockLost {
                            layer: layer.clone(),
                            id,
                            reason: e.to_string(),
                        });
                    }
                }
            },
            Origin::Ignore => {}
        }
    }

    fn after_hook(&mut self, hook: Hook, v: &Value) {
        match hook {
            Hook::None => {}
            Hook::Lock { ttl_ms } => {
                if let Ok(l) = serde_json::from_value::<LocksOut>(v.clone()) {
                    for li in l.locks {
                        self.locks.insert(
                            (li.layer, li.id),
                            HeldLock {
                                ttl_ms,
                                until_ms: li.until_ms,
                            },
                        );
                    }
                }
            }
            Hook::Unlock { layer, ids } => {
                for id in ids {
                    let k = (layer.clone(), id);
                    self.locks.remove(&k);
                    self.unlocking.remove(&k);
                }
            }
            Hook::Cursor(c) => self.remember_cursor(c),
        }
    }

    /// Keeps a layer's last cursor for the next connection; a cursor that shows nothing (no
    /// position, no edits) needs no repeating: a new session starts without one.
    fn remember_cursor(&mut self, c: CursorParams) {
        if c.position.is_none() && c.editing.is_empty() {
            self.cursors.remove(&c.layer);
        } else {
            self.cursors.insert(c.layer.clone(), c);
        }
    }

    fn on_edit_result(&mut self, op_id: String, r: std::result::Result<Value, RpcError>) {
        self.inflight.remove(&op_id);
        let Some(pos) = self.outbox.entries.iter().position(|e| e.op_id == op_id) else {
            return;
        };
        let outcome = match r {
            Err(e) if is_transient(e.code) => {
                self.edit_retries += 1;
                let wait = self
                    .opts
                    .backoff
                    .delay(self.edit_retries.min(16), &mut self.rng);
                tracing::debug!(op_id, error = %e, "An edit will be retried.");
                self.edit_retry_at = Some(Instant::now() + wait.max(Duration::from_millis(50)));
                return;
            }
            Err(e) => Err(ClientError::from_rpc(e)),
            Ok(v) => {
                let parsed = if matches!(self.outbox.entries[pos].edit, Edit::Batch { .. }) {
                    decode::<BatchOut>(v).map(|b| b.results)
                } else {
                    decode::<EditResult>(v).map(|r| vec![r])
                };
                match parsed {
                    Ok(r) => Ok(r),
                    Err(e) => Err(e),
                }
            }
        };
        self.edit_retries = 0;
        let Some(entry) = self.outbox.entries.remove(pos) else {
            return;
        };
        if let Err(e) = self.outbox.save(&self.shared.client_id) {
            tracing::warn!(error = %e, "Could not update the outbox file.");
        }
        self.shared
            .outbox_len
            .store(self.outbox.entries.len(), Ordering::Relaxed);
        match &outcome {
            Ok(results) => {
                for result in results {
                    self.shared.emit(ClientEvent::EditApplied {
                        op_id: op_id.clone(),
                        result: result.clone(),
                    });
                }
            }
            Err(error) => self.shared.emit(ClientEvent::EditFailed {
                op_id: op_id.clone(),
                edit: entry.edit,
                error: error.clone(),
            }),
        }
        if let Some(w) = self.waiters.remove(&op_id) {
            let _ = w.send(outcome);
        }
    }

    fn on_subscribed(&mut self, local: u64, fresh: bool, r: std::result::Result<Value, RpcError>) {
        let Some(sub) = self.subs.get_mut(&local) else {
            // Unsubscribed meanwhile: end it on the server too.
            if let Ok(v) = r
                && let Ok(s) = decode::<SubField>(v)
            {
                self.send_internal(
                    api::method::UNSUBSCRIBE,
                    json!({ "sub": s.sub }),
                    Origin::Ignore,
                );
            }
            return;
        };
        let v = match r.map_err(ClientError::from_rpc) {
            Ok(v) => v,
            Err(e) => {
                let sub = self.subs.remove(&local);
                match sub.map(|s| (s.ready, s.kind)) {
                    Some((Some(Ready::Layer(r)), _)) => {
                        let _ = r.send(Err(e));
                    }
                    Some((Some(Ready::Channel(r)), _)) => {
                        let _ = r.send(Err(e));
                    }
                    Some((Some(Ready::Tile(r)), _)) => {
                        let _ = r.send(Err(e));
                    }
                    Some((Some(Ready::Presence(r)), _)) => {
                        let _ = r.send(Err(e));
                    }
                    Some((None, SubKind::Presence(ps))) => {
                        let _ = ps.tx.send(PresenceEvent::Unsubscribed {
                            reason: e.to_string(),
                        });
                    }
                    Some((None, SubKind::Tile(ts))) => {
                        if let Some(r) = ts.update_reply {
                            let _ = r.send(Err(e.clone()));
                        }
                        let _ = ts.tx.send(TileEvent::Unsubscribed {
                            reason: e.to_string(),
                        });
                    }
                    Some((None, SubKind::Layer(ls))) => {
                        let _ = ls.tx.send(FeatureEvent::Unsubscribed {
                            reason: e.to_string(),
                        });
                    }
                    Some((None, SubKind::Channel(cs))) => {
                        let _ = cs.tx.send(ChannelEvent::Unsubscribed {
                            reason: e.to_string(),
                        });
                    }
                    None => {}
                }
                return;
            }
        };
        let mut follow_up = None;
        match &mut sub.kind {
            SubKind::Presence(ps) => {
                let res = match decode::<PresenceSubscribeResult>(v) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "Unexpected presence.subscribe result.");
                        return;
                    }
                };
                sub.server = Some(res.sub);
                self.by_server.insert(res.sub, local);
                match sub.ready.take() {
                    Some(Ready::Presence(r)) => {
                        let _ = r.send(Ok(res.members));
                    }
                    // A resubscribe after a reconnect: everyone here now replaces what the
                    // application held.
                    _ => {
                        let _ = ps.tx.send(PresenceEvent::Members(res.members));
                    }
                }
            }
            SubKind::Tile(ts) => {
                let res = match decode::<TileSubscribeResult>(v) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "Unexpected tile.subscribe result.");
                        return;
                    }
                };
                sub.server = Some(res.sub);
                self.by_server.insert(res.sub, local);
                // Tiles no longer in the set (the selection moved while disconnected).
                let set: HashSet<&String> = res.tiles.iter().collect();
                let removed: Vec<String> = ts
                    .held
                    .keys()
                    .filter(|k| !set.contains(k))
                    .cloned()
                    .collect();
                for k in &removed {
                    ts.held.remove(k);
                }
                if let Some(r) = ts.update_reply.take() {
                    let added = res
                        .tiles
                        .iter()
                        .filter(|t| !ts.held.contains_key(*t))
                        .cloned()
                        .collect();
                    let _ = r.send(Ok(TileUpdateResult {
                        sub: res.sub,
                        added,
                        removed,
                    }));
                }
                if let Some(Ready::Tile(r)) = sub.ready.take() {
                    let _ = r.send(Ok(res));
                }
            }
            SubKind::Layer(ls) => {
                let res = match decode::<LayerSubscribeResult>(v) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "Unexpected layer.subscribe result.");
                        return;
                    }
                };
                sub.server = Some(res.sub);
                self.by_server.insert(res.sub, local);
                ls.diff_seq = None;
                if fresh || res.recovered != Some(true) {
                    // A snapshot follows (after a `resync` push when resuming failed).
                    ls.seq = res.seq;
                    ls.snapshot_done = !ls.snapshot && fresh;
                    if fresh && ls.restart {
                        ls.restart = false;
                        let _ = ls.tx.send(FeatureEvent::Resync {
                            seq: res.seq,
                            reason: "the snapshot was interrupted by a reconnect".into(),
                        });
                    }
                }
                ls.started = true;
                if let Some(Ready::Layer(r)) = sub.ready.take() {
                    let _ = r.send(Ok(res.seq));
                }
                if !filter_eq(&ls.desired, &ls.acked) {
                    follow_up = Some((res.sub, ls.desired.clone(), ls.update_reply.take()));
                } else if let Some(reply) = ls.update_reply.take() {
                    // The fresh snapshot already used the new filter.
                    let _ = reply.send(Ok(SubscriptionUpdateResult {
                        sub: res.sub,
                        seq: res.seq,
                        entered: 0,
                        exited: 0,
                    }));
                }
            }
            SubKind::Channel(cs) => {
                let res = match decode::<ChannelSubscribeResult>(v) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "Unexpected channel.subscribe result.");
                        return;
                    }
                };
                sub.server = Some(res.sub);
                self.by_server.insert(res.sub, local);
                match (&cs.position, res.recovered) {
                    (Some(_), Some(true)) => {} // the missed messages follow
                    (Some(_), _) => {
                        cs.position = Some(res.position.clone());
                        let _ = cs.tx.send(ChannelEvent::Resync {
                            position: res.position,
                        });
                    }
                    (None, _) => cs.position = Some(res.position.clone()),
                }
                if let Some(Ready::Channel(r)) = sub.ready.take() {
                    let _ = r.send(Ok(cs.position.clone().unwrap_or(Position {
                        offset: 0,
                        epoch: String::new(),
                    })));
                }
            }
        }
        if let Some((server, filter, reply)) = follow_up {
            let params = SubscriptionUpdateParams {
                sub: server,
                filter: filter.clone(),
            };
            self.send_internal(
                api::method::SUBSCRIPTION_UPDATE,
                serde_json::to_value(params).unwrap_or_default(),
                Origin::Update {
                    local,
                    filter,
                    reply,
                },
            );
        }
    }

    fn on_push(&mut self, method: &str, params: Value) {
        if method == api::push::PROGRESS {
            if let Ok(p) = serde_json::from_value::<api::ProgressParams>(params)
                && let Id::Int(id) = p.id
                && let Some(Origin::User {
                    progress: Some(f), ..
                }) = self.pending.get(&id)
            {
                f(crate::Progress {
                    done: p.done,
                    total: p.total,
                    message: p.message,
                });
            }
            return;
        }
        let Some(server) = params.get("sub").and_then(Value::as_u64) else {
            return;
        };
        let Some(local) = self.by_server.get(&(server as u32)).copied() else {
            return; // a subscription ended meanwhile
        };
        if method == api::push::LOCK
            && let Ok(l) = serde_json::from_value::<LockIn>(params.clone())
        {
            self.on_lock_push(&l);
        }
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        let mut ended = false;
        let mut repair: Option<String> = None;
        match &mut sub.kind {
            SubKind::Layer(ls) => {
                let ev = match method {
                    api::push::SNAPSHOT => {
                        serde_json::from_value::<SnapshotIn>(params).ok().map(|p| {
                            ls.seq = p.seq;
                            ls.diff_seq = None;
                            if p.last {
                                ls.snapshot_done = true;
                            }
                            FeatureEvent::Snapshot {
                                seq: p.seq,
                                features: p.features,
                                last: p.last,
                            }
                        })
                    }
                    api::push::FEATURE => {
                        serde_json::from_value::<FeatureIn>(params)
                            .ok()
                            .filter(|p| {
                                // The difference after a viewport move carries the move's
                                // sequence number; anything else at or below the last one
                                // delivered was delivered already (a change the server read for
                                // the snapshot or replay and also dispatched live): drop it.
                                if ls.diff_seq == Some(p.seq) {
                                    return true;
                                }
                                ls.diff_seq = None;
                                if p.seq <= ls.seq {
                                    tracing::debug!(
                                        seq = p.seq,
                                        last = ls.seq,
                                        "Dropping a change delivered twice."
                                    );
                                    return false;
                                }
                                ls.seq = p.seq;
                                true
                            })
                            .map(|p| match p.kind {
                                FeatureKind::Enter => match p.feature {
                                    Some(feature) => FeatureEvent::Enter {
                                        seq: p.seq,
                                        feature: Box::new(feature),
                                    },
                                    None => FeatureEvent::Update {
                                        seq: p.seq,
                                        id: p.id,
                                        version: p.version,
                                        feature: None,
                                        properties: p.properties,
                                        geometry: p.geometry,
                                    },
                                },
                                FeatureKind::Update => FeatureEvent::Update {
                                    seq: p.seq,
                                    id: p.id,
                                    version: p.version,
                                    feature: p.feature.map(Box::new),
                                    properties: p.properties,
                                    geometry: p.geometry,
                                },
                                FeatureKind::Exit => FeatureEvent::Exit {
                                    seq: p.seq,
                                    id: p.id,
                                    version: p.version,
                                },
                                FeatureKind::Delete => FeatureEvent::Delete {
                                    seq: p.seq,
                                    id: p.id,
                                    version: p.version,
                                },
                            })
                    }
                    api::push::RESYNC => serde_json::from_value::<ResyncIn>(params).ok().map(|p| {
                        ls.seq = p.seq;
                        ls.diff_seq = None;
                        ls.snapshot_done = false;
                        FeatureEvent::Resync {
                            seq: p.seq,
                            reason: p.reason,
                        }
                    }),
                    api::push::LOCK => {
                        serde_json::from_value::<LockIn>(params)
                            .ok()
                            .map(|l| FeatureEvent::Lock {
                                lock: l.lock,
                                locked: l.locked,
                            })
                    }
                    api::push::UNSUBSCRIBED => {
                        ended = true;
                        serde_json::from_value::<ReasonIn>(params)
                            .ok()
                            .map(|p| FeatureEvent::Unsubscribed { reason: p.reason })
                    }
                    _ => None,
                };
                if let Some(ev) = ev {
                    let _ = ls.tx.send(ev);
                }
            }
            SubKind::Tile(ts) => match method {
                api::push::TILE => match serde_json::from_value::<TileIn>(params) {
                    Ok(p) => {
                        let ev = match p.kind {
                            TilePushKind::Notify => {
                                ts.held.insert(
                                    p.tile.clone(),
                                    HeldTile {
                                        version: p.version,
                                        bytes: Default::default(),
                                    },
                                );
                                Some(TileEvent::Changed {
                                    tile: p.tile,
                                    version: p.version,
                                    etag: p.etag,
                                })
                            }
                            TilePushKind::Full | TilePushKind::Delta => {
                                let from_delta = p.kind == TilePushKind::Delta;
                                let data = p
                                    .data
                                    .as_ref()
                                    .and_then(tile_bytes)
                                    .ok_or_else(|| "no tile data".to_string())
                                    .and_then(|d| {
                                        if from_delta {
                                            let held =
                                                ts.held.get(&p.tile).map(|h| (h.version, &h.bytes));
                                            apply_delta(held, p.base, &d)
                                        } else {
                                            Ok(d)
                                        }
                                    });
                                match data {
                                    Ok(data) => {
                                        ts.held.insert(
                                            p.tile.clone(),
                                            HeldTile {
                                                version: p.version,
                                                bytes: data.clone(),
                                            },
                                        );
                                        Some(TileEvent::Tile {
                                            tile: p.tile,
                                            version: p.version,
                                            etag: p.etag,
                                            data,
                                            from_delta,
                                        })
                                    }
                                    Err(e) => {
                                        // Never show a tile that failed its check: ask for
                                        // the whole tile instead.
                                        tracing::warn!(tile = %p.tile, error = %e, "A tile delta did not apply; asking for the whole tile.");
                                        ts.held.remove(&p.tile);
                                        repair = Some(p.tile);
                                        None
                                    }
                                }
                            }
                        };
                        if let Some(ev) = ev {
                            let _ = ts.tx.send(ev);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "Ignoring a malformed tile push."),
                },
                api::push::UNSUBSCRIBED => {
                    ended = true;
                    if let Ok(p) = serde_json::from_value::<ReasonIn>(params) {
                        let _ = ts.tx.send(TileEvent::Unsubscribed { reason: p.reason });
                    }
                }
                _ => {}
            },
            SubKind::Presence(ps) => {
                let ev = match method {
                    api::push::JOIN => serde_json::from_value::<PresenceIn>(params)
                        .ok()
                        .map(|p| PresenceEvent::Join(p.client)),
                    api::push::LEAVE => serde_json::from_value::<PresenceIn>(params)
                        .ok()
                        .map(|p| PresenceEvent::Leave(p.client)),
                    api::push::CURSOR => {
                        serde_json::from_value::<CursorPush>(params).ok().map(|p| {
                            PresenceEvent::Cursor(Cursor {
                                client: p.client,
                                position: p.position,
                                editing: p.editing,
                            })
                        })
                    }
                    api::push::UNSUBSCRIBED => {
                        ended = true;
                        serde_json::from_value::<ReasonIn>(params)
                            .ok()
                            .map(|p| PresenceEvent::Unsubscribed { reason: p.reason })
                    }
                    _ => None,
                };
                if let Some(ev) = ev {
                    let _ = ps.tx.send(ev);
                }
            }
            SubKind::Channel(cs) => {
                let ev =
                    match method {
                        api::push::MESSAGE => {
                            serde_json::from_value::<MessageIn>(params).ok().map(|p| {
                                let epoch = cs
                                    .position
                                    .as_ref()
                                    .map(|p| p.epoch.clone())
                                    .unwrap_or_default();
                                cs.position = Some(Position {
                                    offset: p.offset,
                                    epoch,
                                });
                                ChannelEvent::Message {
                                    offset: p.offset,
                                    data: p.data,
                                }
                            })
                        }
                        api::push::JOIN => serde_json::from_value::<PresenceIn>(params)
                            .ok()
                            .map(|p| ChannelEvent::Join(p.client)),
                        api::push::LEAVE => serde_json::from_value::<PresenceIn>(params)
                            .ok()
                            .map(|p| ChannelEvent::Leave(p.client)),
                        api::push::GAP => serde_json::from_value::<GapIn>(params).ok().map(|p| {
                            ChannelEvent::Gap {
                                from: p.from,
                                epoch: p.epoch,
                            }
                        }),
                        api::push::UNSUBSCRIBED => {
                            ended = true;
                            serde_json::from_value::<ReasonIn>(params)
                                .ok()
                                .map(|p| ChannelEvent::Unsubscribed { reason: p.reason })
                        }
                        _ => None,
                    };
                if let Some(ev) = ev {
                    let _ = cs.tx.send(ev);
                }
            }
        }
        if ended {
            self.subs.remove(&local);
            self.by_server.remove(&(server as u32));
        }
        if let Some(tile) = repair {
            let p = TileUpdateParams {
                sub: server as u32,
                viewport: None,
                tiles: None,
                have: [(tile, 0)].into_iter().collect(),
            };
            self.send_internal(
                api::method::TILE_UPDATE,
                serde_json::to_value(p).unwrap_or_default(),
                Origin::Ignore,
            );
        }
    }

    /// A lock of ours released by someone other than us (it expired): report it lost.
    fn on_lock_push(&mut self, l: &LockIn) {
        if l.locked || l.lock.client != self.shared.client_id {
            return;
        }
        let k = (l.lock.layer.clone(), l.lock.id.clone());
        if self.unlocking.contains(&k) {
            return;
        }
        if self.locks.remove(&k).is_some() {
            self.shared.emit(ClientEvent::LockLost {
                layer: k.0,
                id: k.1,
                reason: "released by the server (expired)".into(),
            });
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
