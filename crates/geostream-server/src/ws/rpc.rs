//! Requests and notifications arriving on a WebSocket connection.
//!
//! Short requests run inline in the connection's reader, in the order they arrive (two
//! publishes from one client reach the channel in the order sent). Long requests run as tasks
//! of their own, registered by id so `$/cancelRequest` can abort them; the registry decides
//! who answers: whoever removes the id (the finishing task, or the cancel) sends the one
//! response.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use geostream_core::api::{
    self, CancelParams, ChannelHistoryParams, ChannelPresenceParams, ChannelPresenceResult,
    ChannelPublishParams, ChannelSubscribeParams, EditResult, FeatureBatchParams,
    FeatureCreateParams, FeatureDeleteParams, FeatureGetParams, FeatureLockParams,
    FeaturePatchParams, FeatureQueryParams, FeatureReplaceParams, FeatureUnlockParams, Heartbeat,
    HelloParams, HelloResult, LayerCreateParams, LayerImportParams, LayerNameParams,
    LayerSubscribeParams, LockInfo, PROTOCOL_VERSION, ProgressParams, ServerSoftware,
    SessionLimits, SubscriptionUpdateParams, UnsubscribeParams,
};
use geostream_core::codec::{self, ClientFrame, Encoding, Id, Params, ZSTD_MAGIC};
use geostream_core::error::{ErrorCode, RpcError};
use geostream_core::payload::Payload;
use geostream_hub::{Outgoing, Session};
use geostream_store::{FeatureQuery, Holder, LayerSpec, Lock, Store, WriteOp, WriteRequest};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

use crate::error::{Result, ServerError};
use crate::features::{self, build_filter};
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

fn lock_info(l: &Lock) -> LockInfo {
    LockInfo {
        layer: l.layer.clone(),
        id: l.id.clone(),
        client: l.holder.client.clone(),
        user: l.holder.user.clone(),
        until_ms: l.until_ms,
    }
}

/// Says which operation of a batch was invalid.
fn with_index(e: ServerError, i: usize) -> ServerError {
    let mut r = e.to_rpc();
    r.message = format!("ops[{i}]: {}", r.message).into();
    ServerError::Rpc(r)
}

/// Requests running as their own tasks, by id.
type Running = Arc<Mutex<HashMap<Id, AbortHandle>>>;

/// Largest `hello.info`, in bytes of JSON.
const MAX_INFO_BYTES: usize = 1024;

/// Handles the frames of one connection.
pub(crate) struct Rpc {
    node: Arc<Node>,
    session: Arc<Session>,
    enc: Encoding,
    running: Running,
    /// Who this connection writes and locks as (`hello.client_id`, or the session id).
    holder: Holder,
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
}

/// The names a request is about, read to check rights before it runs.
#[derive(Deserialize, Default)]
struct Names {
    #[serde(default)]
    layer: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    name: Option<String>,
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
        );
        let mut rpc = Rpc {
            node,
            session,
            enc,
            running: Arc::new(Mutex::new(HashMap::new())),
            holder,
            locked: false,
            last_cursor: None,
            principal,
            rate,
            expiry_watch: None,
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

    /// Handles one complete message's payload.
    pub(crate) async fn handle(&mut self, data: &[u8]) {
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
                if let Err(wait) = self.rate.check() {
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
                let limit = Duration::from_secs(self.node.config.limits.request_timeout_secs);
                let outcome = match tokio::time::timeout(
                    limit,
                    self.authorized(&id, &method, params),
                )
                .await
                {
                    Ok(o) => o,
                    Err(_) => Err(ServerError::new(
                        ErrorCode::Timeout,
                        format!("the request took longer than {} s", limit.as_secs()),
                    )),
                };
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
                self.node.metrics.request(&method, ok);
                self.node.metrics.request_latency.observe(start.elapsed());
            }
            Ok(ClientFrame::Notification { method, params }) => {
                // Over the rate, notifications are dropped, except cancellations (which
                // only stop work).
                if method != api::method::CANCEL_REQUEST && self.rate.check().is_err() {
                    return;
                }
                self.notification(&method, params)
            }
        }
    }

    fn respond<T: Serialize + ?Sized>(&self, id: &Id, result: &T) -> Result<Option<Bytes>> {
        Ok(Some(codec::encode_response(self.enc, id, result)))
    }

    /// Checks the client's rights for `method` on the names it targets, then runs it.
    async fn authorized(
        &mut self,
        id: &Id,
        method: &str,
        params: Params<'_>,
    ) -> Result<Option<Bytes>> {
        use api::method as m;
        let needs = |method: &str| -> Option<(bool, bool)> {
            // (is a layer method, needs write)
            Some(match method {
                m::CHANNEL_SUBSCRIBE | m::CHANNEL_HISTORY | m::CHANNEL_PRESENCE => (false, false),
                // `channel.publish` (the hot path) checks after its own parse, below.
                m::LAYER_GET
                | m::LAYER_SUBSCRIBE
                | m::FEATURE_GET
                | m::FEATURE_QUERY
                | m::PRESENCE_SUBSCRIBE
                | m::PRESENCE_CURSOR
                | "tile.subscribe" => (true, false),
                m::LAYER_CREATE
                | m::LAYER_DELETE
                | m::FEATURE_CREATE
                | m::FEATURE_REPLACE
                | m::FEATURE_PATCH
                | m::FEATURE_DELETE
                | m::FEATURE_BATCH
                | m::FEATURE_LOCK
                | m::FEATURE_UNLOCK
                | m::LAYER_IMPORT => (true, true),
                _ => return None,
            })
        };
        if let Some((layer, write)) = needs(method) {
            let n: Names = params.parse()?;
            let p = &self.principal;
            if layer {
                let name = n.layer.or(n.name).unwrap_or_default();
                if write {
                    p.write_layer(&name)?;
                } else {
                    p.read_layer(&name)?;
                }
            } else {
                let name = n.channel.unwrap_or_default();
                if write {
                    p.publish_channel(&name)?;
                } else {
                    p.read_channel(&name)?;
                }
            }
        }
        self.request(id, method, params).await
    }

    async fn request(
        &mut self,
        id: &Id,
        method: &str,
        params: Params<'_>,
    ) -> Result<Option<Bytes>> {
        match method {
            api::method::HELLO => {
                let p: HelloParams = params.parse()?;
                let r = self.hello(p)?;
                self.respond(id, &r)
            }
            api::method::PING => {
                #[derive(Serialize)]
                struct Pong {
                    #[serde(skip_serializing_if = "Option::is_none")]
                    data: Option<Payload>,
                }
                let data = params.field("data")?;
                self.respond(id, &Pong { data })
            }
            api::method::UNSUBSCRIBE => {
                let p: UnsubscribeParams = params.parse()?;
                self.node.unsubscribe(&self.session, p.sub).await?;
                self.respond(id, &serde_json::json!({}))
            }
            api::method::CHANNEL_SUBSCRIBE => {
                let p: ChannelSubscribeParams = params.parse()?;
                let pending = self.node.subscribe(&self.session, p).await?;
                // The response goes out before any replayed or live message of the subscription.
                self.send(codec::encode_response(self.enc, id, &pending.result));
                self.node.activate(&self.session, pending).await;
                Ok(None)
            }
            api::method::PRESENCE_SUBSCRIBE => {
                let p: api::PresenceSubscribeParams = params.parse()?;
                let (pending, members) = self
                    .node
                    .subscribe_presence(&self.session, &p.layer)
                    .await?;
                let result = api::PresenceSubscribeResult {
                    sub: pending.result.sub,
                    layer: p.layer,
                    members,
                };
                self.send(codec::encode_response(self.enc, id, &result));
                self.node.activate(&self.session, pending).await;
                Ok(None)
            }
            api::method::PRESENCE_CURSOR => {
                let c = self.cursor(params.parse()?)?;
                self.node.publish_cursor(&c).await?;
                self.respond(id, &serde_json::json!({}))
            }
            api::method::CHANNEL_PUBLISH => {
                let p: ChannelPublishParams = params.parse()?;
                self.principal.publish_channel(&p.channel)?;
                let Some(data) = params.field("data")? else {
                    return Err(ServerError::invalid("invalid params: missing field `data`"));
                };
                let pos = self.node.publish(&p.channel, data).await?;
                self.respond(id, &pos)
            }
            api::method::CHANNEL_HISTORY => {
                let p: ChannelHistoryParams = params.parse()?;
                let r = self.node.history(&p).await?;
                self.respond(id, &r)
            }
            api::method::CHANNEL_PRESENCE => {
                let p: ChannelPresenceParams = params.parse()?;
                let clients = self.node.presence(&p.channel)?;
                self.respond(id, &ChannelPresenceResult { clients })
            }
            api::method::LAYER_CREATE => {
                let p: LayerCreateParams = params.parse()?;
                let info = self
                    .node
                    .create_layer(LayerSpec {
                        name: p.name,
                        title: p.title,
                        description: p.description,
                        last_writer_wins: p.last_writer_wins,
                    })
                    .await?;
                self.respond(id, &info)
            }
            api::method::LAYER_LIST => {
                let mut layers = self.node.store.list_layers().await?;
                layers.retain(|l| self.principal.may_read_layer(&l.name));
                self.respond(id, &serde_json::json!({ "layers": layers }))
            }
            api::method::LAYER_GET => {
                let p: LayerNameParams = params.parse()?;
                let info = self.node.store.layer(&p.name).await?;
                self.respond(id, &info)
            }
            api::method::LAYER_DELETE => {
                let p: LayerNameParams = params.parse()?;
                self.node.delete_layer(&p.name).await?;
                self.respond(id, &serde_json::json!({}))
            }
            api::method::LAYER_SUBSCRIBE => {
                let p: LayerSubscribeParams = params.parse()?;
                let filter = Arc::new(build_filter(&p.filter, &self.node.filter_limits())?);
                let page = p
                    .page_size
                    .unwrap_or(self.node.config.layers.snapshot_page)
                    .clamp(1, 5000);
                let pending = self
                    .node
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
                self.node.activate_layer_sub(&self.session, pending).await;
                Ok(None)
            }
            api::method::SUBSCRIPTION_UPDATE => {
                let p: SubscriptionUpdateParams = params.parse()?;
                let filter = Arc::new(build_filter(&p.filter, &self.node.filter_limits())?);
                let (result, frames, recovering) = self
                    .node
                    .move_layer_sub(&self.session, p.sub, filter)
                    .await?;
                self.send(codec::encode_response(self.enc, id, &result));
                for f in frames {
                    self.session.outbox.push_always(f);
                }
                self.node.hub.finish_layer_recovery(recovering, result.seq);
                Ok(None)
            }
            api::method::FEATURE_CREATE => {
                let p: FeatureCreateParams = params.parse()?;
                let op = features::create_op(&p.feature, &self.node.feature_limits())?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            api::method::FEATURE_REPLACE => {
                let p: FeatureReplaceParams = params.parse()?;
                let op = features::replace_op(
                    &p.id,
                    &p.feature,
                    p.version,
                    &self.node.feature_limits(),
                )?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            api::method::FEATURE_PATCH => {
                let p: FeaturePatchParams = params.parse()?;
                let op = features::patch_op(
                    &p.id,
                    p.properties,
                    p.geometry,
                    p.version,
                    &self.node.feature_limits(),
                )?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            api::method::FEATURE_DELETE => {
                let p: FeatureDeleteParams = params.parse()?;
                let op = features::delete_op(&p.id, p.version, &self.node.feature_limits())?;
                self.edit(id, p.layer, vec![op], p.op_id).await
            }
            api::method::FEATURE_BATCH => {
                let p: FeatureBatchParams = params.parse()?;
                if p.ops.is_empty() {
                    return Err(ServerError::invalid("a batch needs at least one operation"));
                }
                let limits = self.node.feature_limits();
                let ops = p
                    .ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| features::batch_op(op, &limits).map_err(|e| with_index(e, i)))
                    .collect::<Result<Vec<WriteOp>>>()?;
                let outcome = self
                    .node
                    .apply(WriteRequest {
                        layer: p.layer,
                        ops,
                        writer: self.holder.clone(),
                        op_id: p.op_id,
                    })
                    .await?;
                let results: Vec<EditResult> = outcome
                    .changes
                    .iter()
                    .map(|c| edit_result(c, outcome.replayed))
                    .collect();
                let seq = outcome.changes.last().map_or(0, |c| c.seq);
                self.respond(id, &serde_json::json!({ "results": results, "seq": seq, "replayed": outcome.replayed }))
            }
            api::method::FEATURE_GET => {
                let p: FeatureGetParams = params.parse()?;
                let fid = features::feature_id(&p.id, &self.node.feature_limits())?;
                match self.node.store.get(&p.layer, &fid).await? {
                    Some(f) => self.respond(id, &serde_json::json!({ "feature": f })),
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
            api::method::FEATURE_QUERY => {
                let p: FeatureQueryParams = params.parse()?;
                let filter = build_filter(&p.filter, &self.node.filter_limits())?;
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
                self.respond(id, &serde_json::json!({ "type": "FeatureCollection", "features": page.features, "next_offset": page.next_offset, "seq": page.seq }))
            }
            api::method::FEATURE_LOCK => {
                let p: FeatureLockParams = params.parse()?;
                let cfg = &self.node.config.layers;
                let ttl = p
                    .ttl_ms
                    .unwrap_or(cfg.lock_ttl_ms)
                    .clamp(1000, cfg.max_lock_ttl_ms);
                if p.ids.is_empty() {
                    return Err(ServerError::invalid("ids: give at least one feature id"));
                }
                self.locked = true;
                let locks = self
                    .node
                    .store
                    .lock(&p.layer, &p.ids, &self.holder, ttl)
                    .await?;
                for l in &locks {
                    self.node.announce_lock(l, true).await;
                }
                self.respond(id, &serde_json::json!({ "locks": locks.iter().map(lock_info).collect::<Vec<_>>() }))
            }
            api::method::FEATURE_UNLOCK => {
                let p: FeatureUnlockParams = params.parse()?;
                let released = self
                    .node
                    .store
                    .unlock(&p.layer, &p.ids, &self.holder)
                    .await?;
                for l in &released {
                    self.node.announce_lock(l, false).await;
                }
                self.respond(id, &serde_json::json!({ "released": released.iter().map(lock_info).collect::<Vec<_>>() }))
            }
            api::method::LAYER_IMPORT => {
                let p: LayerImportParams = params.parse()?;
                let node = self.node.clone();
                let writer = self.holder.clone();
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
            m if m.starts_with("tile.") => {
                crate::tiles::request(&self.node, &self.session, id, m, params).await
            }
            other => Err(ServerError::new(
                ErrorCode::MethodNotFound,
                format!("unknown method {other:?}"),
            )),
        }
    }

    async fn edit(
        &mut self,
        id: &Id,
        layer: String,
        ops: Vec<WriteOp>,
        op_id: Option<String>,
    ) -> Result<Option<Bytes>> {
        let outcome = self
            .node
            .apply(WriteRequest {
                layer,
                ops,
                writer: self.holder.clone(),
                op_id,
            })
            .await?;
        let c = outcome
            .changes
            .first()
            .ok_or_else(|| ServerError::Internal("an applied edit produced no change".into()))?;
        self.respond(id, &edit_result(c, outcome.replayed))
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
        self.locked.then_some(&self.holder)
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
            self.holder.user = fresh.user.clone();
            self.principal = fresh;
            self.watch_expiry();
        }
        if let Some(cid) = &p.client_id {
            if cid.is_empty() || cid.len() > 128 || cid.chars().any(char::is_control) {
                return Err(ServerError::invalid(
                    "client_id must be 1 to 128 printable characters",
                ));
            }
            self.holder.client = cid.clone();
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

    fn notification(&mut self, method: &str, params: Params<'_>) {
        match method {
            api::method::CANCEL_REQUEST => {
                let Ok(p) = params.parse::<CancelParams>() else {
                    return;
                };
                let handle = self.running.lock().remove(&p.id);
                if let Some(h) = handle {
                    h.abort();
                    self.node.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.send_error(
                        Some(&p.id),
                        &RpcError::new(ErrorCode::RequestCancelled, "request cancelled"),
                    );
                }
            }
            // JSON-RPC forbids answering a notification, even an unknown one.
            api::method::PRESENCE_CURSOR => {
                // As a notification, a cursor over the rate or invalid is dropped silently:
                // cursors are best-effort and the next one supersedes it.
                let Ok(c) = params
                    .parse()
                    .map_err(ServerError::from)
                    .and_then(|p| self.cursor(p))
                else {
                    return;
                };
                let node = self.node.clone();
                tokio::spawn(async move {
                    let _ = node.publish_cursor(&c).await;
                });
            }
            other => tracing::debug!(method = other, "Ignoring an unknown notification."),
        }
    }

    /// Runs a long request as its own task that `$/cancelRequest` can abort.
    pub(crate) fn spawn<F, Fut>(&self, id: Id, method: &'static str, work: F) -> Result<()>
    where
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        let mut running = self.running.lock();
        if running.len() >= self.node.config.websocket.max_concurrent_requests {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} requests may run at once on a connection",
                    self.node.config.websocket.max_concurrent_requests
                ),
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
        let registry = self.running.clone();
        let session = self.session.clone();
        let node = self.node.clone();
        let task_id = id.clone();
        let start = Instant::now();
        // Held while spawning, so the task cannot finish and look for its entry before it is
        // registered.
        let handle = tokio::spawn(async move {
            let outcome = fut.await;
            if registry.lock().remove(&task_id).is_none() {
                return; // cancelled meanwhile; the canceller answered
            }
            let frame = match &outcome {
                Ok(frame) => frame.clone(),
                Err(e) => codec::encode_error(session.encoding(), Some(&task_id), &e.to_rpc()),
            };
            session.outbox.push_always(Outgoing::Frame(frame));
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
                session.outbox.close(geostream_hub::CloseReason {
                    code: geostream_core::error::close::TOKEN_EXPIRED,
                    reason: "token expired",
                });
            }
        });
        self.expiry_watch = Some(task.abort_handle());
    }

    pub(crate) fn abort_all(&self) {
        if let Some(h) = &self.expiry_watch {
            h.abort();
        }
        for (_, h) in self.running.lock().drain() {
            h.abort();
            self.node.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}
