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
//!
//! Frames are decoded straight into geostream-core's types: the envelope first, then the
//! result or push params into the type its request or push method gives.
//!
//! This module has the commands, the requests and the routing of frames; the socket and
//! reconnects are in [`connection`]; each kind of subscription has a module of its own
//! ([`layers`], [`channels`], [`tiles`], [`presence`]), and so do the outbox and the locks
//! ([`edits`]).

mod channels;
mod connection;
mod edits;
mod layers;
mod presence;
mod tiles;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use geostream_core::api::{
    self, CancelParams, ClientInfo, ClientSoftware, CursorParams, EditResult, FilterSpec,
    HelloParams, HelloResult, PROTOCOL_VERSION, Position, SubscriptionUpdateResult, TileMode,
    TileSubscribeResult, TileUpdateResult, UnsubscribeParams,
};
use geostream_core::codec::{
    self, Encoding, Id, MAX_SERVER_FRAME_BYTES, OwnedParams, Params, RawServerFrame, ZSTD_THRESHOLD,
};
use geostream_core::error::{ErrorCode, RpcError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::edit::{Edit, Outbox, OutboxEntry};
use crate::error::{ClientError, Result};
use crate::events::{ChannelEvent, ClientEvent, FeatureEvent, PresenceEvent};
use crate::options::ClientOptions;
use crate::state::ConnectionState;
use crate::tiles::{TileEvent, TileSelection};

use channels::ChannelSub;
use connection::REFUSED;
use edits::HeldLock;
use layers::LayerSub;
use presence::PresenceSub;
use tiles::TileSub;

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
        reply: oneshot::Sender<Result<OwnedParams>>,
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
        reply: oneshot::Sender<Result<OwnedParams>>,
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

/// A subscription's own state, by kind.
enum SubKind {
    Layer(Box<LayerSub>),
    Channel(ChannelSub),
    Tile(Box<TileSub>),
    Presence(PresenceSub),
}

/// Who waits for a subscription's first result.
enum Ready {
    Layer(oneshot::Sender<Result<u64>>),
    Channel(oneshot::Sender<Result<Position>>),
    Tile(oneshot::Sender<Result<TileSubscribeResult>>),
    Presence(oneshot::Sender<Result<Vec<ClientInfo>>>),
}

impl Ready {
    fn fail(self, e: ClientError) {
        match self {
            Ready::Layer(r) => drop(r.send(Err(e))),
            Ready::Channel(r) => drop(r.send(Err(e))),
            Ready::Tile(r) => drop(r.send(Err(e))),
            Ready::Presence(r) => drop(r.send(Err(e))),
        }
    }
}

struct Sub {
    /// Its id on the current connection.
    server: Option<u32>,
    kind: SubKind,
    /// The first subscribe's caller.
    ready: Option<Ready>,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decodes a result or push params into its type.
fn decode<'a, T: Deserialize<'a>>(p: &Params<'a>) -> Result<T> {
    p.decode().map_err(ClientError::Decode)
}

/// The member every push carries: which subscription it belongs to.
#[derive(Deserialize)]
struct SubOf {
    sub: u32,
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

    fn frame<T: Serialize + ?Sized>(&self, id: Option<i64>, method: &str, params: &T) -> Message {
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
    fn send_internal<T: Serialize + ?Sized>(&mut self, method: &str, params: &T, origin: Origin) {
        if !self.online {
            return;
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let m = self.frame(Some(id), method, params);
        self.out.push_back(m);
        self.pending.insert(id, origin);
    }

    /// Sends a notification (only while online).
    fn notify<T: Serialize + ?Sized>(&mut self, method: &str, params: &T) {
        if self.online {
            let m = self.frame(None, method, params);
            self.out.push_back(m);
        }
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
        self.send_internal(api::method::HELLO, &hello, Origin::Hello { refresh: false });
        let locals: Vec<u64> = self.subs.keys().copied().collect();
        for local in locals {
            self.send_subscribe(local);
        }
        self.relock();
        self.reshare_cursors();
        self.resend_edits();
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
                // A move waits for the subscription to come back (see `on_subscribed`).
                Origin::Update { local, reply, .. } => {
                    if let Some(Sub {
                        kind: SubKind::Layer(ls),
                        ..
                    }) = self.subs.get_mut(&local)
                    {
                        ls.keep_update_reply(reply);
                    }
                }
                Origin::TileUpdate { local, reply } => {
                    if let Some(Sub {
                        kind: SubKind::Tile(ts),
                        ..
                    }) = self.subs.get_mut(&local)
                    {
                        ts.keep_update_reply(reply);
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
                } else {
                    self.notify(
                        api::method::CANCEL_REQUEST,
                        &CancelParams { id: Id::Int(id) },
                    );
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
                let ls = LayerSub::new(layer, filter, snapshot, page_size, events);
                self.add_sub(local, SubKind::Layer(Box::new(ls)), Ready::Layer(ready));
            }
            Cmd::SubscribeChannel {
                local,
                channel,
                presence,
                events,
                ready,
            } => {
                let cs = ChannelSub::new(channel, presence, events);
                self.add_sub(local, SubKind::Channel(cs), Ready::Channel(ready));
            }
            Cmd::SubscribePresence {
                local,
                layer,
                events,
                ready,
            } => {
                let ps = PresenceSub::new(layer, events);
                self.add_sub(local, SubKind::Presence(ps), Ready::Presence(ready));
            }
            Cmd::Cursor(c) => self.send_cursor(c),
            Cmd::UpdateFilter {
                local,
                filter,
                reply,
            } => self.update_filter(local, filter, reply),
            Cmd::SubscribeTiles {
                local,
                layer,
                selection,
                mode,
                events,
                ready,
            } => {
                let ts = TileSub::new(layer, selection, mode, events);
                self.add_sub(local, SubKind::Tile(Box::new(ts)), Ready::Tile(ready));
            }
            Cmd::UpdateTiles {
                local,
                selection,
                reply,
            } => self.update_tiles(local, selection, reply),
            Cmd::Unsubscribe(local) => {
                if let Some(sub) = self.subs.remove(&local)
                    && let Some(server) = sub.server
                {
                    self.by_server.remove(&server);
                    self.send_internal(
                        api::method::UNSUBSCRIBE,
                        &UnsubscribeParams { sub: server },
                        Origin::Ignore,
                    );
                }
            }
            Cmd::Submit { edit, reply } => self.submit(edit, reply),
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
                self.send_internal(api::method::HELLO, &hello, Origin::Hello { refresh: true });
            }
            Cmd::Token(Err(e)) => {
                tracing::warn!(error = %e, "Could not refresh the token; trying again in 5 s.");
                self.token_refresh_at = Some(Instant::now() + Duration::from_secs(5));
            }
            Cmd::Close => {}
        }
    }

    fn add_sub(&mut self, local: u64, kind: SubKind, ready: Ready) {
        self.subs.insert(
            local,
            Sub {
                server: None,
                kind,
                ready: Some(ready),
            },
        );
        self.send_subscribe(local);
    }

    /// Subscribes (again): fresh, or resuming from what the subscription has delivered.
    fn send_subscribe(&mut self, local: u64) {
        if !self.online {
            return;
        }
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        match &mut sub.kind {
            SubKind::Layer(ls) => {
                let (params, fresh) = ls.subscribe_params();
                let origin = Origin::Subscribe { local, fresh };
                self.send_internal(api::method::LAYER_SUBSCRIBE, &params, origin);
            }
            SubKind::Tile(ts) => {
                let (params, fresh) = ts.subscribe_params();
                let origin = Origin::Subscribe { local, fresh };
                self.send_internal(api::method::TILE_SUBSCRIBE, &params, origin);
            }
            SubKind::Presence(ps) => {
                let params = ps.subscribe_params();
                let origin = Origin::Subscribe { local, fresh: true };
                self.send_internal(api::method::PRESENCE_SUBSCRIBE, &params, origin);
            }
            SubKind::Channel(cs) => {
                let (params, fresh) = cs.subscribe_params();
                let origin = Origin::Subscribe { local, fresh };
                self.send_internal(api::method::CHANNEL_SUBSCRIBE, &params, origin);
            }
        }
    }

    fn on_frame(&mut self, data: &[u8]) {
        let mut scratch = Vec::new();
        let frame = match codec::decode_raw_server_frame(
            self.enc,
            data,
            &mut scratch,
            MAX_SERVER_FRAME_BYTES,
        ) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "Ignoring a frame that could not be decoded.");
                return;
            }
        };
        match frame {
            RawServerFrame::Response {
                id: Id::Int(id),
                result,
            } => self.on_response(id, Ok(result)),
            RawServerFrame::Error {
                id: Some(Id::Int(id)),
                error,
            } => self.on_response(id, Err(error)),
            RawServerFrame::Error { error, .. } => {
                tracing::warn!(error = %error, "The server reported an error about a frame.");
            }
            RawServerFrame::Response { .. } => {}
            RawServerFrame::Notification { method, params } => self.on_push(&method, params),
        }
    }

    fn on_response(&mut self, id: i64, r: std::result::Result<Params<'_>, RpcError>) {
        let Some(origin) = self.pending.remove(&id) else {
            return; // cancelled, or from before a reconnect
        };
        match origin {
            Origin::User { reply, hook, .. } => {
                match &r {
                    Ok(result) => self.after_hook(hook, result),
                    Err(_) => self.hook_failed(hook),
                }
                let _ = reply.send(r.map(|p| p.to_owned()).map_err(ClientError::from_rpc));
            }
            Origin::Hello { refresh } => self.on_hello(refresh, r),
            Origin::Subscribe { local, fresh } => self.on_subscribed(local, fresh, r),
            Origin::Update {
                local,
                filter,
                reply,
            } => self.on_filter_updated(local, filter, reply, r),
            Origin::TileUpdate { local, reply } => self.on_tiles_updated(local, reply, r),
            Origin::Edit { op_id } => self.on_edit_result(op_id, r),
            Origin::Relock { layer, ids } => self.on_relocked(layer, ids, r),
            Origin::Ignore => {}
        }
    }

    fn on_hello(&mut self, refresh: bool, r: std::result::Result<Params<'_>, RpcError>) {
        match r {
            Ok(result) => {
                if refresh {
                    return;
                }
                let session = decode::<HelloResult>(&result)
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
        }
    }

    fn on_subscribed(
        &mut self,
        local: u64,
        fresh: bool,
        r: std::result::Result<Params<'_>, RpcError>,
    ) {
        if !self.subs.contains_key(&local) {
            // Unsubscribed meanwhile: end it on the server too.
            if let Ok(result) = r
                && let Ok(s) = decode::<SubOf>(&result)
            {
                self.send_internal(
                    api::method::UNSUBSCRIBE,
                    &UnsubscribeParams { sub: s.sub },
                    Origin::Ignore,
                );
            }
            return;
        }
        let result = match r.map_err(ClientError::from_rpc) {
            Ok(result) => result,
            Err(e) => {
                if let Some(sub) = self.subs.remove(&local) {
                    match sub.ready {
                        Some(ready) => ready.fail(e),
                        // A resubscribe after a reconnect failed: the stream ends.
                        None => match sub.kind {
                            SubKind::Layer(ls) => ls.end(e),
                            SubKind::Channel(cs) => cs.end(e),
                            SubKind::Tile(ts) => ts.end(e),
                            SubKind::Presence(ps) => ps.end(e),
                        },
                    }
                }
                return;
            }
        };
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        let server = match &mut sub.kind {
            SubKind::Layer(ls) => ls.on_subscribed(fresh, &result, &mut sub.ready),
            SubKind::Tile(ts) => ts.on_subscribed(&result, &mut sub.ready),
            SubKind::Presence(ps) => ps.on_subscribed(&result, &mut sub.ready),
            SubKind::Channel(cs) => cs.on_subscribed(&result, &mut sub.ready),
        };
        let Some(server) = server else {
            return;
        };
        sub.server = Some(server);
        self.by_server.insert(server, local);
        self.after_layer_subscribed(local, server);
    }

    fn on_push(&mut self, method: &str, params: Params<'_>) {
        if method == api::push::PROGRESS {
            if let Ok(p) = decode::<api::ProgressParams>(&params)
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
        let Ok(SubOf { sub: server }) = decode::<SubOf>(&params) else {
            return;
        };
        let Some(local) = self.by_server.get(&server).copied() else {
            return; // a subscription ended meanwhile
        };
        if method == api::push::LOCK
            && let Ok(l) = decode::<api::LockPush>(&params)
        {
            self.on_lock_push(&l);
        }
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        let mut repair = None;
        let ended = match &mut sub.kind {
            SubKind::Layer(ls) => ls.on_push(method, &params),
            SubKind::Tile(ts) => {
                let (ended, r) = ts.on_push(method, &params);
                repair = r;
                ended
            }
            SubKind::Presence(ps) => ps.on_push(method, &params),
            SubKind::Channel(cs) => cs.on_push(method, &params),
        };
        if ended {
            self.subs.remove(&local);
            self.by_server.remove(&server);
        }
        if let Some(tile) = repair {
            self.repair_tile(server, tile);
        }
    }
}

/// The reason of an `unsubscribed` push.
fn reason_of(params: &Params<'_>) -> Option<String> {
    decode::<api::UnsubscribedPush<'static>>(params)
        .ok()
        .map(|p| p.reason.into_owned())
}
