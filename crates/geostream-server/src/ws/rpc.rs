//! Requests and notifications arriving on a WebSocket connection.
//!
//! Edits, feature reads, publishes and other short requests on independent things run
//! concurrently, pipelined (see [`super::pipeline`]): requests on the same feature or channel
//! keep their arrival order, and the rest (subscriptions, locks, hello ...) run alone, after
//! what is in flight. Pipelined and long requests (imports) run as tasks of their own,
//! registered by id so `$/cancelRequest` can abort them; the registry decides who answers:
//! whoever removes the id (the finishing task, or the cancel) sends the one response.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use geostream_core::api::{
    self, ChannelPresenceResult, EditResult, Empty, FeatureBatchResult, FeatureCollectionType,
    FeatureGetResult, FeatureLockResult, FeatureQueryResult, FeatureUnlockResult, Heartbeat,
    HelloParams, HelloResult, LayerListResult, LockInfo, PROTOCOL_VERSION, PingResult,
    ProgressParams, ServerSoftware, SessionLimits,
};
use geostream_core::codec::{self, ClientFrame, Encoding, Id, ZSTD_MAGIC};
use geostream_core::error::{CloseCode, ErrorCode, RpcError};
use geostream_core::request::{Access, Notification, Request, Scope};
use geostream_hub::{Outgoing, Session};
use geostream_store::{FeatureQuery, Holder, Store, WriteOp, WriteRequest};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::pipeline::{self, Lane, Order};
use crate::error::{Result, ServerError};
use crate::features::{self, build_filter};
use crate::limits::Refusal;
use crate::node::Node;

/// The result of one applied change.
fn edit_result(c: &geostream_core::feature::Change, replayed: bool) -> EditResult {
    EditResult {
        id: c.id.clone(),
        version: c.version,
        seq: c.seq,
        feature: c.new.clone(),
        replayed,
    }
}

/// Says which operation of a batch was invalid.
fn with_index(e: ServerError, i: usize) -> ServerError {
    let mut r = e.to_rpc();
    r.message = format!("ops[{i}]: {}", r.message).into();
    ServerError::Rpc(r)
}

/// Requests running as their own tasks, by id.
/// The requests running as tasks of their own, by id (to cancel them).
type Running = Arc<Mutex<HashMap<Id, AbortHandle>>>;

/// Largest `hello.info`, in bytes of JSON.
const MAX_INFO_BYTES: usize = 1024;

/// Handles the frames of one connection.
pub(crate) struct Rpc {
    node: Arc<Node>,
    session: Arc<Session>,
    enc: Encoding,
    /// Made on the first request that runs as a task: an idle connection holds no map.
    running: std::sync::OnceLock<Running>,
    /// Who this connection writes and locks as (`hello.client_id`, or the session id).
    holder: Arc<Holder>,
    /// Whether it ever took a lock (its locks must then expire when it leaves).
    locked: bool,
    /// When this connection last shared a cursor (cursors are rate-limited).
    last_cursor: Option<std::time::Instant>,
    /// Who the client is and what it may do.
    principal: crate::auth::Principal,
    /// Requests per second.
    rate: crate::limits::RateLimiter,
    /// Closes the connection when the token expires without a refresh.
    expiry_watch: Option<AbortHandle>,
    /// Places for pipelined requests in flight.
    /// Made on the first pipelined request: an idle connection does not hold one.
    inflight: Option<Arc<Semaphore>>,
    /// Their number (a serial request takes them all, so it waits for every one).
    max_inflight: u32,
    /// The client has sent requests back to back: see [`Rpc::pipelines`].
    pipelines: bool,
    /// The order kept among pipelined requests on the same feature or channel.
    order: Order,
}

/// What a pipelined request needs from its connection (cloned into its task).
#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    enc: Encoding,
    holder: Arc<Holder>,
    /// Told as the request's write is handed to the store and commits (no-ops outside the
    /// pipeline).
    signals: Arc<pipeline::Signals>,
}

/// Shortest interval between two cursor updates of one connection (20 per second).
const CURSOR_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Sends `$/progress` notifications for a long request.
#[derive(Clone)]
pub(crate) struct Progress {
    session: Arc<Session>,
    id: Id,
}

impl Progress {
    /// Reports progress.
    pub(crate) fn report(&self, done: u64, total: Option<u64>, message: Option<String>) {
        let p = ProgressParams {
            id: self.id.clone(),
            done,
            total,
            message,
        };
        let frame = codec::encode_notification(self.session.encoding(), api::push::PROGRESS, &p);
        self.session.outbox.push_always(Outgoing::Frame(frame));
    }
}

impl Ctx {
    fn respond<T: Serialize + ?Sized>(&self, id: &Id, result: &T) -> Result<Option<Bytes>> {
        Ok(Some(codec::encode_response(self.enc, id, result)))
    }

    /// Runs a request of the pipelined kind (see `pipeline::lane`).
    async fn run(&self, id: &Id, req: Request) -> Result<Option<Bytes>> {
        match req {
            Request::Ping { data } => self.respond(id, &PingResult { data }),
            Request::ChannelPublish { channel, data } => {
                let pos = self.node.streams.publish(&channel, data).await?;
                self.respond(id, &pos)
            }
            Request::ChannelHistory(p) => {
                let r = self.node.streams.history(&p).await?;
                self.respond(id, &r)
            }
            Request::ChannelPresence(p) => {
                let clients = self.node.streams.presence(&p.channel)?;
                self.respond(id, &ChannelPresenceResult { clients })
            }
            Request::FeatureCreate(p) => {
                let op =
                    features::create_op(&p.feature, &self.node.config.layers.feature_limits())?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            Request::FeatureReplace(p) => {
                let op = features::replace_op(
                    &p.id,
                    &p.feature,
                    p.version,
                    &self.node.config.layers.feature_limits(),
                )?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            Request::FeaturePatch(p) => {
                let op = features::patch_op(
                    &p.id,
                    p.properties,
                    p.geometry,
                    p.version,
                    &self.node.config.layers.feature_limits(),
                )?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            Request::FeatureDelete(p) => {
                let op = features::delete_op(
                    &p.id,
                    p.version,
                    &self.node.config.layers.feature_limits(),
                )?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            Request::FeatureBatch(p) => {
                if p.ops.is_empty() {
                    return Err(ServerError::invalid("a batch needs at least one operation"));
                }
                let limits = self.node.config.layers.feature_limits();
                let ops = p
                    .ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| features::batch_op(op, &limits).map_err(|e| with_index(e, i)))
                    .collect::<Result<Vec<WriteOp>>>()?;
                let outcome = self
                    .node
                    .layers
                    .apply_then(
                        WriteRequest {
                            layer: p.layer,
                            ops,
                            writer: Holder::clone(&self.holder),
                            op_id: p.op_id,
                        },
                        || self.signals.submitted(),
                        || self.signals.committed(),
                    )
                    .await?;
                let results: Vec<EditResult> = outcome
                    .changes
                    .iter()
                    .map(|c| edit_result(c, outcome.replayed))
                    .collect();
                let seq = outcome.changes.last().map_or(0, |c| c.seq);
                self.respond(
                    id,
                    &FeatureBatchResult {
                        results,
                        seq,
                        replayed: outcome.replayed,
                    },
                )
            }
            Request::FeatureGet(p) => {
                let fid = features::feature_id(&p.id, &self.node.config.layers.feature_limits())?;
                match self.node.store.get(&p.layer, &fid).await? {
                    Some(feature) => self.respond(id, &FeatureGetResult { feature }),
                    None => {
                        // Distinguish a missing layer from a missing feature.
                        self.node.store.layer(&p.layer).await?;
                        Err(ServerError::new(
                            ErrorCode::FeatureNotFound,
                            format!("feature {fid:?} does not exist in layer {:?}", p.layer),
                        ))
                    }
                }
            }
            other => Err(ServerError::Internal(format!(
                "{} is not a pipelined request",
                other.method().name()
            ))),
        }
    }

    async fn edit(
        &self,
        id: &Id,
        layer: String,
        ops: Vec<WriteOp>,
        op_id: Option<String>,
    ) -> Result<Option<Bytes>> {
        let outcome = self
            .node
            .layers
            .apply_then(
                WriteRequest {
                    layer,
                    ops,
                    writer: Holder::clone(&self.holder),
                    op_id,
                },
                || self.signals.submitted(),
                || self.signals.committed(),
            )
            .await?;
        let c = outcome
            .changes
            .first()
            .ok_or_else(|| ServerError::Internal("an applied edit produced no change".into()))?;
        self.respond(id, &edit_result(c, outcome.replayed))
    }
}

fn timed_out(limit: Duration) -> ServerError {
    ServerError::new(
        ErrorCode::Timeout,
        format!("the request took longer than {} s", limit.as_secs()),
    )
}

impl Rpc {
    pub(crate) fn new(
        node: Arc<Node>,
        session: Arc<Session>,
        principal: crate::auth::Principal,
    ) -> Self {
        let enc = session.encoding();
        let holder = Holder {
            client: session.id().to_string(),
            user: principal.user.clone(),
        };
        let rate = crate::limits::RateLimiter::new(
            node.config.limits.requests_per_sec,
            node.config.limits.request_burst,
            node.config.limits.flood_close_secs,
        );
        let max_inflight = node
            .config
            .websocket
            .max_inflight_requests
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        let mut rpc = Rpc {
            node,
            session,
            enc,
            running: std::sync::OnceLock::new(),
            holder: Arc::new(holder),
            locked: false,
            last_cursor: None,
            principal,
            rate,
            expiry_watch: None,
            inflight: None,
            max_inflight,
            pipelines: false,
            order: Order::default(),
        };
        rpc.watch_expiry();
        rpc
    }

    fn send(&self, frame: Bytes) {
        self.session.outbox.push_always(Outgoing::Frame(frame));
    }

    fn send_error(&self, id: Option<&Id>, e: &RpcError) {
        self.send(codec::encode_error(self.enc, id, e));
    }

    /// Handles one complete message's payload. `more`: the connection has already received
    /// bytes after it (part of a next request, at least).
    pub(crate) async fn handle(&mut self, data: &[u8], more: bool) {
        let owned;
        let data = if self.enc == Encoding::MsgpackZstd && data.starts_with(&ZSTD_MAGIC) {
            match codec::decompress_bounded(data, self.node.config.websocket.max_frame_bytes) {
                Ok(v) => {
                    owned = v;
                    &owned[..]
                }
                Err(e) => return self.send_error(e.id.as_ref(), &e.error),
            }
        } else {
            data
        };
        match codec::decode_client_frame(self.enc, data) {
            Err(e) => {
                self.node.metrics.request("other", false);
                self.send_error(e.id.as_ref(), &e.error);
            }
            Ok(ClientFrame::Request { id, method, params }) => {
                let start = Instant::now();
                match self.rate.check() {
                    Ok(()) => {}
                    Err(Refusal::Flood) => return self.close_flood(),
                    Err(Refusal::Wait(wait)) => {
                        self.node.metrics.request(&method, false);
                        let ms = wait.as_millis() as u64 + 1;
                        return self.send_error(
                            Some(&id),
                            &RpcError::new(
                                ErrorCode::RateLimited,
                                format!("rate limited: retry after {ms} ms"),
                            )
                            .with_data(serde_json::json!({ "retry_after_ms": ms })),
                        );
                    }
                }
                let req = match Request::parse(&method, &params) {
                    Ok(r) => r,
                    Err(e) => {
                        self.node.metrics.request(&method, false);
                        return self.send_error(Some(&id), &e);
                    }
                };
                let method = req.method().name();
                if let Err(e) = self.authorize(req.access()) {
                    self.node.metrics.request(method, false);
                    return self.send_error(Some(&id), &e.to_rpc());
                }
                match pipeline::lane(&req, &self.node.config.layers.feature_limits()) {
                    // Tasks of their own once the client has shown it pipelines (a request
                    // came with the next one right behind it). Until then they run here, as
                    // a serial connection's would: a client with one request at a time (an
                    // editor waiting for each answer) pays no hop to a task and back.
                    Lane::Pipelined { keys, writes }
                        if self.max_inflight > 1 && self.pipelines(more) =>
                    {
                        self.pipeline(id, req, keys, writes, start).await
                    }
                    Lane::Pipelined { .. } | Lane::Serial => {
                        // Alone: after every pipelined request in flight.
                        let all = match &self.inflight {
                            Some(places) => places
                                .clone()
                                .acquire_many_owned(self.max_inflight)
                                .await
                                .ok(),
                            None => None,
                        };
                        let limit = self.request_timeout();
                        let outcome =
                            match tokio::time::timeout(limit, self.request(&id, req)).await {
                                Ok(o) => o,
                                Err(_) => Err(timed_out(limit)),
                            };
                        drop(all);
                        let ok = match outcome {
                            Ok(Some(frame)) => {
                                self.send(frame);
                                true
                            }
                            Ok(None) => true,
                            Err(e) => {
                                self.send_error(Some(&id), &e.to_rpc());
                                false
                            }
                        };
                        self.node.metrics.request(method, ok);
                        self.node.metrics.request_latency.observe(start.elapsed());
                    }
                }
            }
            Ok(ClientFrame::Notification { method, params }) => {
                let Some(n) = Notification::parse(&method, &params) else {
                    tracing::debug!(method = %method, "Ignoring an unknown notification.");
                    return;
                };
                // Over the rate, notifications are dropped, except cancellations (which
                // only stop work).
                if !matches!(n, Notification::Cancel(_)) {
                    match self.rate.check() {
                        Ok(()) => {}
                        Err(Refusal::Flood) => return self.close_flood(),
                        Err(Refusal::Wait(_)) => return,
                    }
                }
                // Like a request's: a notification the client has no right to is dropped.
                if self.authorize(n.access()).is_ok() {
                    self.notification(n)
                }
            }
        }
    }

    fn respond<T: Serialize + ?Sized>(&self, id: &Id, result: &T) -> Result<Option<Bytes>> {
        Ok(Some(codec::encode_response(self.enc, id, result)))
    }

    /// The client kept flooding after being rate limited: close the connection (4029).
    fn close_flood(&self) {
        tracing::info!(session = %self.session.id(), "Closing a connection that floods.");
        self.session.outbox.close(CloseCode::Flood.into());
    }

    /// Whether the client may do what a request or notification needs.
    fn authorize(&self, a: Access<'_>) -> Result<()> {
        let p = &self.principal;
        match a.scope {
            // Subscriptions are looked up in this connection's own table, so a client can
            // only touch its own; `layer.list` filters its answer by read rights.
            Scope::Connection | Scope::LayerCatalog => Ok(()),
            Scope::LayerRead => p.read_layer(a.name),
            Scope::LayerWrite => p.write_layer(a.name),
            Scope::ChannelRead => p.read_channel(a.name),
            Scope::ChannelPublish => p.publish_channel(a.name),
            Scope::FenceManage => p.manage_fence(a.name),
            Scope::FenceRead => p.read_channel(&geostream_fence::channel_of(a.name)),
            // `fence.list` filters its answer by read rights.
            Scope::FenceCatalog => Ok(()),
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.node.config.limits.request_timeout_secs)
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            node: self.node.clone(),
            enc: self.enc,
            holder: self.holder.clone(),
            signals: Arc::default(),
        }
    }

    /// Whether the client pipelines: it has once a request arrives with more of its bytes
    /// already behind it (until then nothing runs as a task, so nothing else can be in
    /// flight). Once it has, it is taken to go on.
    fn pipelines(&mut self, more: bool) -> bool {
        self.pipelines |= more;
        self.pipelines
    }

    /// Runs a pipelined request as a task of its own, after its predecessors on the same
    /// keys; waits (reading nothing more from the socket) while every place is taken.
    async fn pipeline(
        &mut self,
        id: Id,
        req: Request,
        keys: Vec<pipeline::Key>,
        writes: bool,
        start: Instant,
    ) {
        let method = req.method().name();
        let max = self.max_inflight as usize;
        let places = self
            .inflight
            .get_or_insert_with(|| Arc::new(Semaphore::new(max)));
        let Ok(place) = places.clone().acquire_owned().await else {
            return; // the connection is closing
        };
        let pipeline::Place {
            after_turn,
            after_commit,
            after_answer,
            signals,
            answered,
        } = self.order.enqueue(&keys, writes);
        let mut ctx = self.ctx();
        ctx.signals = Arc::new(signals);
        let limit = self.request_timeout();
        let rid = id.clone();
        // The place and the "answered" signal are let go once the response is queued, so the
        // responses to requests on one feature go out in the order the requests came.
        let guard = (answered, place);
        let spawned = self.spawn_task(
            id.clone(),
            method,
            start,
            false,
            guard,
            move |_| async move {
                pipeline::wait_for(after_commit).await;
                pipeline::wait_for(after_turn).await;
                let outcome = match tokio::time::timeout(limit, ctx.run(&rid, req)).await {
                    Ok(o) => o,
                    Err(_) => Err(timed_out(limit)),
                };
                // A request that wrote nothing (a read, a refusal, a timeout) lets its
                // successors start now.
                ctx.signals.committed();
                pipeline::wait_for(after_answer).await;
                outcome
            },
        );
        if let Err(e) = spawned {
            self.node.metrics.request(method, false);
            self.send_error(Some(&id), &e.to_rpc());
        }
    }

    async fn request(&mut self, id: &Id, req: Request) -> Result<Option<Bytes>> {
        match req {
            Request::Hello(p) => {
                let r = self.hello(p)?;
                self.respond(id, &r)
            }
            Request::Unsubscribe(p) => {
                self.node.unsubscribe(&self.session, p.sub).await?;
                self.respond(id, &Empty {})
            }
            Request::ChannelSubscribe(p) => {
                let pending = self
                    .node
                    .streams
                    .subscribe_channel(&self.session, p)
                    .await?;
                // The response goes out before any replayed or live message of the subscription.
                self.send(codec::encode_response(self.enc, id, &pending.result));
                self.node
                    .streams
                    .activate_channel(&self.session, pending)
                    .await;
                Ok(None)
            }
            Request::PresenceSubscribe(p) => {
                let (pending, members) = self
                    .node
                    .streams
                    .subscribe_presence(&self.session, &p.layer)
                    .await?;
                let result = api::PresenceSubscribeResult {
                    sub: pending.result.sub,
                    layer: p.layer,
                    members,
                };
                self.send(codec::encode_response(self.enc, id, &result));
                self.node
                    .streams
                    .activate_channel(&self.session, pending)
                    .await;
                Ok(None)
            }
            Request::PresenceCursor(p) => {
                let c = self.cursor(p)?;
                self.node.streams.publish_cursor(c).await?;
                self.respond(id, &Empty {})
            }
            Request::LayerCreate(p) => {
                let info = self.node.layers.create(p).await?;
                self.respond(id, &info)
            }
            Request::LayerList => {
                let mut layers = self.node.store.list_layers().await?;
                layers.retain(|l| self.principal.may_read_layer(&l.name));
                self.respond(id, &LayerListResult { layers })
            }
            Request::LayerGet(p) => {
                let info = self.node.store.layer(&p.name).await?;
                self.respond(id, &info)
            }
            Request::FenceCreate(p) => {
                let spec = serde_json::from_value(serde_json::Value::Object(p.0))
                    .map_err(|e| ServerError::invalid(format!("not a geofence definition: {e}")))?;
                let record = self.node.geofences.create(&self.principal, spec).await?;
                self.respond(id, &self.node.geofences.created_view(&record))
            }
            Request::FenceList => {
                let fences = self.node.geofences.list(&self.principal).await?;
                self.respond(id, &serde_json::json!({ "fences": fences }))
            }
            Request::FenceGet(p) => {
                let view = self.node.geofences.get(&self.principal, &p.name).await?;
                self.respond(id, &view)
            }
            Request::FenceDelete(p) => {
                self.node.geofences.delete(&self.principal, &p.name).await?;
                self.respond(id, &Empty {})
            }
            Request::LayerDelete(p) => {
                self.node.layers.delete(&p.name).await?;
                self.respond(id, &Empty {})
            }
            Request::LayerSubscribe(p) => {
                let filter = Arc::new(build_filter(
                    &p.filter,
                    &self.node.config.layers.filter_limits(),
                )?);
                let page = p
                    .page_size
                    .unwrap_or(self.node.config.layers.snapshot_page)
                    .clamp(1, 5000);
                let pending = self
                    .node
                    .streams
                    .subscribe_layer(
                        &self.session,
                        &p.layer,
                        filter,
                        p.since,
                        p.snapshot.unwrap_or(true),
                        page,
                    )
                    .await?;
                // The response first: it carries the subscription id the pushes refer to.
                self.send(codec::encode_response(self.enc, id, &pending.result));
                self.node
                    .streams
                    .activate_layer(&self.session, pending)
                    .await;
                Ok(None)
            }
            Request::SubscriptionUpdate(p) => {
                let filter = Arc::new(build_filter(
                    &p.filter,
                    &self.node.config.layers.filter_limits(),
                )?);
                let m = self
                    .node
                    .streams
                    .move_layer(&self.session, p.sub, filter)
                    .await?;
                self.send(codec::encode_response(self.enc, id, &m.result));
                self.node.streams.finish_move(&self.session, m);
                Ok(None)
            }
            Request::FeatureQuery(p) => {
                let filter = build_filter(&p.filter, &self.node.config.layers.filter_limits())?;
                let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
                let bbox = filter.bbox();
                let page = self
                    .node
                    .store
                    .query(
                        &p.layer,
                        FeatureQuery {
                            bbox,
                            filter: Some(Arc::new(filter)),
                            limit,
                            offset: p.offset.unwrap_or(0),
                        },
                    )
                    .await?;
                self.respond(
                    id,
                    &FeatureQueryResult {
                        kind: FeatureCollectionType::FeatureCollection,
                        features: page.features,
                        next_offset: page.next_offset,
                        seq: page.seq,
                    },
                )
            }
            Request::FeatureLock(p) => {
                if !self.locked {
                    self.node.layers.track_holder(&self.holder).await;
                }
                self.locked = true;
                let locks = self
                    .node
                    .layers
                    .lock(&p.layer, &p.ids, &self.holder, p.ttl_ms)
                    .await?;
                let locks = locks.iter().map(LockInfo::from).collect();
                self.respond(id, &FeatureLockResult { locks })
            }
            Request::FeatureUnlock(p) => {
                let released = self
                    .node
                    .layers
                    .unlock(&p.layer, &p.ids, &self.holder)
                    .await?;
                let released = released.iter().map(LockInfo::from).collect();
                self.respond(id, &FeatureUnlockResult { released })
            }
            Request::LayerImport(p) => {
                let node = self.node.clone();
                let writer = Holder::clone(&self.holder);
                let enc = self.enc;
                let rid = id.clone();
                self.spawn(
                    id.clone(),
                    api::method::LAYER_IMPORT,
                    move |progress| async move {
                        let result = crate::import::run(&node, p, writer, move |done, total| {
                            progress.report(done, total, None)
                        })
                        .await?;
                        Ok(codec::encode_response(enc, &rid, &result))
                    },
                )?;
                Ok(None)
            }
            Request::TileSubscribe(p) => {
                crate::tiles::subscribe(&self.node.tiles, &self.node.hub, &self.session, id, p)
                    .await
            }
            Request::TileUpdate(p) => {
                crate::tiles::update(&self.node.tiles, &self.session, id, p).await
            }
            // Pipelined requests (see `pipeline::lane`) run through the same handlers when a
            // caller runs one inline.
            r @ (Request::Ping { .. }
            | Request::ChannelPublish { .. }
            | Request::ChannelHistory(_)
            | Request::ChannelPresence(_)
            | Request::FeatureCreate(_)
            | Request::FeatureReplace(_)
            | Request::FeaturePatch(_)
            | Request::FeatureDelete(_)
            | Request::FeatureBatch(_)
            | Request::FeatureGet(_)) => self.ctx().run(id, r).await,
        }
    }

    /// Validates and rate-limits a cursor update.
    fn cursor(&mut self, p: api::CursorParams) -> Result<api::CursorPush> {
        api::validate_name("layer", &p.layer).map_err(ServerError::invalid)?;
        if let Some([lon, lat]) = p.position
            && !((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat))
        {
            return Err(ServerError::invalid(format!(
                "position: [{lon}, {lat}] is not a longitude in -180..180 and a latitude in -90..90"
            )));
        }
        if p.editing.len() > 100 || p.editing.iter().any(|e| e.is_empty() || e.len() > 256) {
            return Err(ServerError::invalid(
                "editing: at most 100 feature ids of 1 to 256 bytes",
            ));
        }
        let now = std::time::Instant::now();
        if let Some(last) = self.last_cursor
            && now.duration_since(last) < CURSOR_INTERVAL
        {
            let wait = CURSOR_INTERVAL - now.duration_since(last);
            return Err(ServerError::Rpc(
                RpcError::new(
                    ErrorCode::RateLimited,
                    "cursor updates are limited to 20 per second",
                )
                .with_data(serde_json::json!({ "retry_after_ms": wait.as_millis() as u64 + 1 })),
            ));
        }
        self.last_cursor = Some(now);
        Ok(api::CursorPush {
            layer: p.layer,
            client: self.session.client(),
            position: p.position,
            editing: p.editing,
        })
    }

    /// Who this connection locked as, if it ever locked anything.
    pub(crate) fn lock_holder(&self) -> Option<&Holder> {
        self.locked.then_some(&*self.holder)
    }

    fn hello(&mut self, p: HelloParams) -> Result<HelloResult> {
        if let Some(v) = p.protocol
            && v != PROTOCOL_VERSION
        {
            return Err(ServerError::invalid(format!(
                "unsupported protocol version {v}; this server speaks {PROTOCOL_VERSION}"
            )));
        }
        if let Some(info) = &p.info {
            let n = serde_json::to_vec(info)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if n > MAX_INFO_BYTES {
                return Err(ServerError::new(
                    ErrorCode::LimitExceeded,
                    format!("hello.info is {n} bytes; at most {MAX_INFO_BYTES} are allowed"),
                ));
            }
        }
        if let Some(token) = &p.token {
            // A fresh token on a live connection (before the old one expires) keeps its
            // subject; a different subject needs a new connection.
            let fresh = self.node.auth.verify(token)?;
            if !self.principal.anonymous && fresh.user != self.principal.user {
                return Err(ServerError::new(
                    ErrorCode::Forbidden,
                    "a refreshed token must have the same subject; reconnect to change user",
                ));
            }
            let mut client = self.session.client();
            client.user = fresh.user.clone();
            self.session.set_client(client);
            Arc::make_mut(&mut self.holder).user = fresh.user.clone();
            self.principal = fresh;
            self.watch_expiry();
        }
        if let Some(cid) = &p.client_id {
            if cid.is_empty() || cid.len() > 128 || cid.chars().any(char::is_control) {
                return Err(ServerError::invalid(
                    "client_id must be 1 to 128 printable characters",
                ));
            }
            Arc::make_mut(&mut self.holder).client = cid.clone();
        }
        let mut client = self.session.client();
        client.info = p.info;
        self.session.set_client(client.clone());
        let cfg = &self.node.config;
        Ok(HelloResult {
            session: self.session.id().to_string(),
            server: ServerSoftware {
                name: "geostream".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            protocol: PROTOCOL_VERSION,
            encoding: self.enc.name().into(),
            user: client.user,
            limits: SessionLimits {
                max_frame_bytes: cfg.websocket.max_frame_bytes,
                max_subscriptions: cfg.limits.max_subscriptions,
                outbox_bytes: cfg.limits.outbox_bytes,
            },
            heartbeat: Heartbeat {
                ping_interval_ms: cfg.websocket.ping_interval().as_millis() as u64,
                idle_timeout_ms: cfg.websocket.idle_timeout().as_millis() as u64,
            },
        })
    }

    fn notification(&mut self, n: Notification) {
        match n {
            Notification::Cancel(p) => {
                let handle = self.running.get().and_then(|r| r.lock().remove(&p.id));
                if let Some(h) = handle {
                    h.abort();
                    self.node.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.send_error(
                        Some(&p.id),
                        &RpcError::new(ErrorCode::RequestCancelled, "request cancelled"),
                    );
                }
            }
            Notification::Cursor(p) => {
                // As a notification, a cursor over the rate or invalid is dropped silently:
                // cursors are best-effort and the next one supersedes it.
                let Ok(c) = self.cursor(p) else {
                    return;
                };
                let node = self.node.clone();
                tokio::spawn(async move {
                    let _ = node.streams.publish_cursor(c).await;
                });
            }
        }
    }

    /// Runs a long request as its own task that `$/cancelRequest` can abort.
    pub(crate) fn spawn<F, Fut>(&self, id: Id, method: &'static str, work: F) -> Result<()>
    where
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        self.spawn_task(id, method, Instant::now(), true, (), move |p| {
            let fut = work(p);
            async move { fut.await.map(Some) }
        })
    }

    /// Runs a request as a task registered by id (so it can be cancelled) that answers it.
    /// `limited`: counted against `websocket.max_concurrent_requests` (long requests;
    /// pipelined ones have their own places).
    fn spawn_task<F, Fut, G>(
        &self,
        id: Id,
        method: &'static str,
        start: Instant,
        limited: bool,
        guard: G,
        work: F,
    ) -> Result<()>
    where
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = Result<Option<Bytes>>> + Send + 'static,
        G: Send + 'static,
    {
        let registry = self.running.get_or_init(Running::default).clone();
        let mut running = registry.lock();
        let max = self.node.config.websocket.max_concurrent_requests;
        if limited && running.len() >= max {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!("at most {max} long requests may run at once on a connection"),
            ));
        }
        if running.contains_key(&id) {
            return Err(ServerError::invalid(format!(
                "request id {id} is already running"
            )));
        }
        let fut = work(Progress {
            session: self.session.clone(),
            id: id.clone(),
        });
        let registry = registry.clone();
        let session = self.session.clone();
        let node = self.node.clone();
        let task_id = id.clone();
        // Held while spawning, so the task cannot finish and look for its entry before it is
        // registered.
        let handle = tokio::spawn(async move {
            let outcome = fut.await;
            if registry.lock().remove(&task_id).is_none() {
                return; // cancelled meanwhile; the canceller answered
            }
            let frame = match &outcome {
                Ok(Some(frame)) => Some(frame.clone()),
                Ok(None) => None,
                Err(e) => Some(codec::encode_error(
                    session.encoding(),
                    Some(&task_id),
                    &e.to_rpc(),
                )),
            };
            if let Some(f) = frame {
                session.outbox.push_always(Outgoing::Frame(f));
            }
            // Held until the response is queued (see `pipeline`).
            drop(guard);
            node.metrics.request(method, outcome.is_ok());
            node.metrics.request_latency.observe(start.elapsed());
        });
        running.insert(id, handle.abort_handle());
        Ok(())
    }

    /// Aborts every running request (the connection is gone).
    /// (Re)starts the timer that closes the connection with 4001 when the token expires; a
    /// fresh token in `hello` restarts it.
    fn watch_expiry(&mut self) {
        if let Some(h) = self.expiry_watch.take() {
            h.abort();
        }
        let Some(exp) = self.principal.expires else {
            return;
        };
        let leeway = self.node.config.auth.leeway_secs;
        let session = Arc::downgrade(&self.session);
        let task = tokio::spawn(async move {
            let now = crate::auth::now_secs();
            let wait = (exp + leeway).saturating_sub(now);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            if let Some(session) = session.upgrade() {
                session
                    .outbox
                    .close(geostream_core::error::CloseCode::TokenExpired.into());
            }
        });
        self.expiry_watch = Some(task.abort_handle());
    }

    pub(crate) fn abort_all(&self) {
        if let Some(h) = &self.expiry_watch {
            h.abort();
        }
        let Some(running) = self.running.get() else {
            return;
        };
        for (_, h) in running.lock().drain() {
            h.abort();
            self.node.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}
