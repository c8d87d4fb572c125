//! A node: this process's hub, broker and sessions, and the operations every transport shares
//! (publish, subscribe with resume, history, presence).
//!
//! A message's way: a transport calls [`Node::publish`] → the broker gives it an offset, keeps
//! it in history and hands it to every node's [`HubBridge`] → the hub queues one prepared push
//! in each matching session's outbox → each session's writer sends it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use geostream_broker::{
    Broker, BrokerHandler, HistoryLimits, HistoryPage, MemoryBroker, Publication, StreamPosition,
};
use geostream_core::api::{
    self, ChannelHistoryParams, ChannelHistoryResult, ChannelSubscribeParams,
    ChannelSubscribeResult, ClientInfo, HistoryMessage, LockInfo, LockPush, Position,
    UnsubscribedPush, validate_name,
};
use geostream_core::codec::{Encoding, encode_push};
use geostream_core::error::ErrorCode;
use geostream_core::feature::{Change, Feature};
use geostream_core::payload::{Payload, PayloadKind};
use geostream_hub::{
    CloseReason, Hub, HubLimits, OutboxLimits, Prepared, PushEvent, Recovering, Removed, Session,
    SubTarget,
};
use geostream_hub::{Dispatched, Outgoing};
use geostream_store::{
    ChangePage, FeatureQuery, Holder, LayerInfo, LayerSpec, Lock, QueryPage, Snapshot,
    SnapshotRequest, SqliteOptions, SqliteStore, Store, WriteOutcome, WriteRequest,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::{BrokerConfig, Config, StoreConfig};
use crate::error::{Result, ServerError};
use crate::metrics::Metrics;

/// Tags on broker messages (the broker itself does not interpret them).
pub(crate) mod kind {
    /// A channel message whose data is JSON.
    pub(crate) const MESSAGE_JSON: u8 = 1;
    /// A channel message whose data is MessagePack.
    pub(crate) const MESSAGE_MSGPACK: u8 = 2;
    /// Someone subscribed to a channel; data is a JSON `ClientInfo`.
    pub(crate) const JOIN: u8 = 10;
    /// Someone left a channel.
    pub(crate) const LEAVE: u8 = 11;
    /// A layer change; data is a MessagePack `Change`.
    pub(crate) const CHANGE: u8 = 20;
    /// A feature was locked or unlocked; data is a JSON `LockPush`.
    pub(crate) const LOCK: u8 = 21;
    /// A layer was deleted.
    pub(crate) const LAYER_DELETED: u8 = 22;
    /// A raster tile was uploaded; data is a JSON `tiles::Uploaded`.
    pub(crate) const TILE: u8 = 23;
    /// A cursor moved on a layer; data is a JSON `CursorPush`, topic the layer's presence
    /// channel.
    pub(crate) const CURSOR: u8 = 12;
}

/// The internal channel carrying a layer's presence (joins, leaves, cursors).
pub(crate) fn presence_channel(layer: &str) -> String {
    format!("$presence/{layer}")
}

/// The configured store (see [`AnyBroker`] for why an enum).
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL/PostGIS, shared by several nodes.
    Postgres(geostream_store::PostgresStore),
}

macro_rules! store_call {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn create_layer(&self, spec: LayerSpec) -> geostream_store::Result<LayerInfo> {
        store_call!(self, s => s.create_layer(spec).await)
    }
    async fn list_layers(&self) -> geostream_store::Result<Vec<LayerInfo>> {
        store_call!(self, s => s.list_layers().await)
    }
    async fn layer(&self, name: &str) -> geostream_store::Result<LayerInfo> {
        store_call!(self, s => s.layer(name).await)
    }
    async fn delete_layer(&self, name: &str) -> geostream_store::Result<()> {
        store_call!(self, s => s.delete_layer(name).await)
    }
    async fn apply(&self, req: WriteRequest) -> geostream_store::Result<WriteOutcome> {
        store_call!(self, s => s.apply(req).await)
    }
    async fn get(&self, layer: &str, id: &str) -> geostream_store::Result<Option<Feature>> {
        store_call!(self, s => s.get(layer, id).await)
    }
    async fn query(&self, layer: &str, q: FeatureQuery) -> geostream_store::Result<QueryPage> {
        store_call!(self, s => s.query(layer, q).await)
    }
    async fn snapshot(
        &self,
        layer: &str,
        req: SnapshotRequest,
    ) -> geostream_store::Result<Snapshot> {
        store_call!(self, s => s.snapshot(layer, req).await)
    }
    async fn changes(
        &self,
        layer: &str,
        since: u64,
        limit: usize,
    ) -> geostream_store::Result<ChangePage> {
        store_call!(self, s => s.changes(layer, since, limit).await)
    }
    async fn lock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
        ttl_ms: u64,
    ) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.lock(layer, ids, holder, ttl_ms).await)
    }
    async fn unlock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
    ) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.unlock(layer, ids, holder).await)
    }
    async fn expire_client_locks(
        &self,
        client: &str,
        grace_ms: u64,
    ) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.expire_client_locks(client, grace_ms).await)
    }
    async fn reap_locks(&self) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.reap_locks().await)
    }
    async fn locks(&self, layer: &str) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.locks(layer).await)
    }
}

/// The configured broker. An enum rather than a trait object: the choice is made once at
/// start-up and the hot path stays statically dispatched.
#[derive(Clone, Debug)]
pub enum AnyBroker {
    /// In-process.
    Memory(MemoryBroker),
    /// NATS with JetStream, for several nodes.
    Nats(geostream_broker::NatsBroker),
}

impl Broker for AnyBroker {
    async fn publish(
        &self,
        topic: &str,
        kind: u8,
        data: Bytes,
    ) -> geostream_broker::Result<StreamPosition> {
        match self {
            AnyBroker::Memory(b) => b.publish(topic, kind, data).await,
            AnyBroker::Nats(b) => b.publish(topic, kind, data).await,
        }
    }
    async fn publish_ephemeral(
        &self,
        topic: &str,
        kind: u8,
        data: Bytes,
    ) -> geostream_broker::Result<()> {
        match self {
            AnyBroker::Memory(b) => b.publish_ephemeral(topic, kind, data).await,
            AnyBroker::Nats(b) => b.publish_ephemeral(topic, kind, data).await,
        }
    }
    async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> geostream_broker::Result<HistoryPage> {
        match self {
            AnyBroker::Memory(b) => b.history(topic, since, limit).await,
            AnyBroker::Nats(b) => b.history(topic, since, limit).await,
        }
    }
    async fn position(&self, topic: &str) -> geostream_broker::Result<StreamPosition> {
        match self {
            AnyBroker::Memory(b) => b.position(topic).await,
            AnyBroker::Nats(b) => b.position(topic).await,
        }
    }
    async fn subscribe(&self, topic: &str) -> geostream_broker::Result<()> {
        match self {
            AnyBroker::Memory(b) => b.subscribe(topic).await,
            AnyBroker::Nats(b) => b.subscribe(topic).await,
        }
    }
    async fn unsubscribe(&self, topic: &str) -> geostream_broker::Result<()> {
        match self {
            AnyBroker::Memory(b) => b.unsubscribe(topic).await,
            AnyBroker::Nats(b) => b.unsubscribe(topic).await,
        }
    }
}

/// Delivers what the broker brings to this node's hub.
pub struct HubBridge {
    hub: Arc<Hub>,
    tiles: Arc<crate::tiles::Tiles>,
    /// Layers whose changes arrived with a gap, for the gap filler.
    gaps: tokio::sync::mpsc::Sender<(String, u64)>,
}

impl BrokerHandler for HubBridge {
    fn on_publication(&self, topic: &str, p: &Publication, epoch: &Arc<str>) {
        if let Some(k) = PayloadKind::from_u8(p.kind) {
            self.hub.dispatch_message(
                topic,
                p.offset,
                epoch,
                Payload::from_trusted(k, p.data.clone()),
            );
        }
    }

    fn on_ephemeral(&self, topic: &str, kind: u8, data: &Bytes) {
        match kind {
            kind::JOIN | kind::LEAVE => {
                if let Ok(client) = serde_json::from_slice::<ClientInfo>(data) {
                    self.hub
                        .dispatch_presence(topic, kind == kind::JOIN, client);
                }
            }
            kind::CURSOR => {
                if let Ok(c) = serde_json::from_slice::<api::CursorPush>(data) {
                    self.hub.dispatch_cursor(topic, c);
                }
            }
            kind::CHANGE => match rmp_serde::from_slice::<Change>(data) {
                Ok(c) => {
                    self.tiles.on_change(&c);
                    let layer = c.layer.clone();
                    if let Dispatched::Waiting { missing } = self.hub.dispatch_change(Arc::new(c)) {
                        let _ = self.gaps.try_send((layer, missing));
                    }
                }
                Err(e) => tracing::warn!(topic, error = %e, "Dropping an undecodable change."),
            },
            kind::LOCK => {
                if let (Some(layer), Ok(lock)) = (
                    topic.strip_prefix("$layer/"),
                    serde_json::from_slice::<LockPush>(data),
                ) {
                    self.hub.dispatch_lock(layer, lock);
                }
            }
            kind::TILE => {
                if let (Some(layer), Ok(u)) = (
                    topic.strip_prefix("$layer/"),
                    serde_json::from_slice::<crate::tiles::Uploaded>(data),
                ) {
                    self.tiles.on_upload(layer, &u);
                }
            }
            kind::LAYER_DELETED => {
                if let Some(layer) = topic.strip_prefix("$layer/") {
                    self.tiles.on_layer_deleted(&self.hub, layer);
                    for (session, sub) in self.hub.drop_layer(layer) {
                        let f = encode_push(
                            session.encoding(),
                            api::push::UNSUBSCRIBED,
                            &UnsubscribedPush {
                                reason: "layer deleted",
                            },
                            None,
                        );
                        session.outbox.push_always(Outgoing::Frame(f.to_bytes(sub)));
                    }
                }
            }
            _ => tracing::debug!(topic, kind, "Ignoring a broker message of unknown kind."),
        }
    }
}

/// A channel subscription that is registered but not yet live: the transport sends its
/// response first, then calls [`Node::activate`].
pub struct PendingSubscription {
    /// What to answer the client.
    pub result: ChannelSubscribeResult,
    replay: Vec<Publication>,
    epoch: Arc<str>,
    recovering: Recovering,
    after: u64,
}

/// This process's part of a geostream deployment.
pub struct Node {
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// Local subscriptions and fan-out.
    pub hub: Arc<Hub>,
    /// The broker.
    pub broker: AnyBroker,
    /// The store.
    pub store: AnyStore,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Vector and raster tiles, and tile subscriptions.
    pub tiles: Arc<crate::tiles::Tiles>,
    /// Verifies tokens and says what anonymous clients may do.
    pub auth: crate::auth::Authenticator,
    /// Open connections, in total and per IP address.
    pub connections: crate::limits::ConnectionLimits,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    sessions_empty: Notify,
    draining: AtomicBool,
}

impl Node {
    /// Builds a node from configuration.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
        config.validate()?;
        let auth = crate::auth::Authenticator::new(&config)?;
        let connections = crate::limits::ConnectionLimits::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        let config = Arc::new(config);
        let hub = Arc::new(Hub::new(HubLimits {
            max_subscriptions: config.limits.max_subscriptions,
            outbox: OutboxLimits {
                budget_bytes: config.limits.outbox_bytes,
                slow_grace: Duration::from_secs(config.limits.slow_consumer_grace_secs),
            },
            recovery_buffer: 10_000,
            spatial_index: config.layers.spatial_index,
        }));
        let limits = HistoryLimits {
            size: config.channels.history_size,
            ttl: Duration::from_secs(config.channels.history_ttl_secs),
            meta_ttl: Duration::from_secs(24 * 3600),
        };
        let (gaps_tx, mut gaps_rx) = tokio::sync::mpsc::channel::<(String, u64)>(1024);
        let tiles = Arc::new(crate::tiles::Tiles::open(&config)?);
        let bridge = Arc::new(HubBridge {
            hub: hub.clone(),
            tiles: tiles.clone(),
            gaps: gaps_tx,
        });
        let broker = match &config.broker {
            BrokerConfig::Memory => {
                let b = MemoryBroker::new(limits);
                b.set_handler(bridge);
                let sweeper = b.clone();
                tokio::spawn(async move {
                    let mut t = tokio::time::interval(Duration::from_secs(30));
                    loop {
                        t.tick().await;
                        sweeper.sweep();
                    }
                });
                AnyBroker::Memory(b)
            }
            BrokerConfig::Nats {
                url,
                prefix,
                replicas,
                heartbeat_ms,
            } => {
                let heartbeat = Duration::from_millis((*heartbeat_ms).max(10));
                let opts = geostream_broker::NatsOptions {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    replicas: *replicas,
                    heartbeat,
                    node_timeout: heartbeat * 3,
                    ..Default::default()
                };
                let b = geostream_broker::NatsBroker::connect(opts, limits, bridge)
                    .await
                    .with_context(|| format!("cannot connect to NATS at {url}"))?;
                AnyBroker::Nats(b)
            }
        };
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let store = match &config.store {
            StoreConfig::Sqlite {
                path,
                change_retention,
            } => {
                let path = config.data_path(path);
                let change_retention = *change_retention;
                let opts = SqliteOptions {
                    change_retention,
                    ..SqliteOptions::default()
                };
                let s = SqliteStore::open(&path, opts)
                    .with_context(|| format!("cannot open the store {}", path.display()))?;
                AnyStore::Sqlite(s)
            }
            StoreConfig::Postgres {
                url,
                schema,
                pool_size,
                change_retention,
            } => {
                let opts = geostream_store::PostgresOptions {
                    url: url.clone(),
                    schema: schema.clone(),
                    pool_size: *pool_size,
                    change_retention: *change_retention,
                    ..Default::default()
                };
                let s = geostream_store::PostgresStore::connect(opts)
                    .await
                    .with_context(|| {
                        format!("cannot open the PostgreSQL store (schema {schema})")
                    })?;
                AnyStore::Postgres(s)
            }
        };
        // The hub must know where every layer's change log stands before anything is
        // dispatched, so it recognises a missing change as a gap.
        for l in store.list_layers().await.context("cannot list layers")? {
            hub.init_layer(&l.name, l.seq);
        }
        let node = Arc::new(Node {
            config,
            hub,
            broker,
            store,
            metrics: Arc::new(Metrics::default()),
            tiles,
            auth,
            connections,
            sessions: Mutex::new(HashMap::new()),
            sessions_empty: Notify::new(),
            draining: AtomicBool::new(false),
        });
        crate::tiles::Tiles::start(&node);
        if let AnyBroker::Nats(b) = &node.broker {
            // Layer changes published while this node was cut off from NATS never reach it:
            // after every reconnect, read from the store's log what the hub has not seen.
            let mut reconnects = b.reconnects();
            let n = Arc::downgrade(&node);
            tokio::spawn(async move {
                while reconnects.changed().await.is_ok() {
                    let Some(node) = n.upgrade() else { return };
                    match node.store.list_layers().await {
                        Ok(layers) => {
                            for l in layers {
                                if l.seq > node.hub.layer_last_seq(&l.name) {
                                    node.fill_gap(&l.name, l.seq).await;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Could not catch up after reconnecting to NATS.")
                        }
                    }
                }
            });
        }
        let n = Arc::downgrade(&node);
        tokio::spawn(async move {
            while let Some((layer, missing)) = gaps_rx.recv().await {
                let Some(node) = n.upgrade() else { return };
                node.fill_gap(&layer, missing).await;
            }
        });
        let n = Arc::downgrade(&node);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                let Some(node) = n.upgrade() else { return };
                match node.store.reap_locks().await {
                    Ok(expired) => {
                        for l in expired {
                            node.announce_lock(&l, false).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "Could not reap expired locks."),
                }
            }
        });
        Ok(node)
    }

    /// Opens a session for a new connection.
    pub fn open_session(&self, encoding: Encoding, user: Option<String>) -> Arc<Session> {
        let s = self.hub.new_session(encoding, user);
        self.sessions.lock().insert(s.id().clone(), s.clone());
        if self.is_draining() {
            s.outbox.close(restart_reason());
        }
        s
    }

    /// Closes a session: its subscriptions end and others see it leave.
    pub async fn close_session(&self, session: &Arc<Session>) {
        let removed = self.hub.remove_session(session);
        let client = session.client();
        for r in removed {
            self.after_unsubscribe(&r, &client).await;
        }
        let mut sessions = self.sessions.lock();
        sessions.remove(session.id());
        if sessions.is_empty() {
            self.sessions_empty.notify_waiters();
        }
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts a graceful shutdown: every session is told to reconnect (after what is already
    /// queued for it), new sessions are refused. Returns once all sessions are gone or after
    /// `timeout`.
    pub async fn drain(&self, timeout: Duration) {
        self.draining.store(true, Ordering::Release);
        let sessions: Vec<_> = self.sessions.lock().values().cloned().collect();
        tracing::info!(
            sessions = sessions.len(),
            "Draining: asking clients to reconnect."
        );
        for s in &sessions {
            s.outbox.close(restart_reason());
        }
        let wait = async {
            loop {
                let n = self.sessions_empty.notified();
                if self.sessions.lock().is_empty() {
                    return;
                }
                n.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(
                left = self.session_count(),
                "Drain timed out; closing the remaining connections."
            );
        }
    }

    fn check_channel(&self, name: &str) -> Result<()> {
        validate_name("channel", name).map_err(ServerError::invalid)?;
        if name.starts_with('$') {
            return Err(ServerError::invalid(
                "channel names starting with $ are reserved",
            ));
        }
        Ok(())
    }

    /// Publishes `data` to `channel`; returns the message's position.
    pub async fn publish(&self, channel: &str, data: Payload) -> Result<Position> {
        self.check_channel(channel)?;
        let max = self.config.websocket.max_frame_bytes;
        if data.len() > max {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!("message data is larger than {max} bytes"),
            ));
        }
        let k = match data.kind() {
            PayloadKind::Json => kind::MESSAGE_JSON,
            PayloadKind::Msgpack => kind::MESSAGE_MSGPACK,
        };
        let p = self
            .broker
            .publish(channel, k, data.bytes().clone())
            .await?;
        Ok(Position {
            offset: p.offset,
            epoch: p.epoch.to_string(),
        })
    }

    /// Registers a channel subscription and reads what it missed; see [`PendingSubscription`].
    pub async fn subscribe(
        &self,
        session: &Arc<Session>,
        p: ChannelSubscribeParams,
    ) -> Result<PendingSubscription> {
        self.check_channel(&p.channel)?;
        self.subscribe_checked(session, p).await
    }

    /// Joins `session` to a layer's presence: a presence-only subscription to the layer's
    /// internal presence channel. Activate it like a channel subscription.
    pub(crate) async fn subscribe_presence(
        &self,
        session: &Arc<Session>,
        layer: &str,
    ) -> Result<(PendingSubscription, Vec<ClientInfo>)> {
        self.store.layer(layer).await?;
        let channel = presence_channel(layer);
        let pending = self
            .subscribe_checked(
                session,
                ChannelSubscribeParams {
                    channel: channel.clone(),
                    since: None,
                    presence: true,
                },
            )
            .await?;
        let mut members = self.hub.presence(&channel);
        if let AnyBroker::Nats(b) = &self.broker {
            members.extend(
                b.remote_members(&channel)
                    .iter()
                    .filter_map(|m| serde_json::from_slice::<ClientInfo>(m).ok()),
            );
        }
        Ok((pending, members))
    }

    /// Shares a cursor with the layer's presence subscribers on every node.
    pub(crate) async fn publish_cursor(&self, cursor: &api::CursorPush) -> Result<()> {
        let data = serde_json::to_vec(cursor).map_err(|e| ServerError::Internal(e.to_string()))?;
        self.broker
            .publish_ephemeral(
                &presence_channel(&cursor.layer),
                kind::CURSOR,
                Bytes::from(data),
            )
            .await?;
        Ok(())
    }

    async fn subscribe_checked(
        &self,
        session: &Arc<Session>,
        p: ChannelSubscribeParams,
    ) -> Result<PendingSubscription> {
        let recovering = self.hub.add_channel_sub(session, &p.channel, p.presence)?;
        let sub = recovering.sub;
        match self.read_start(&p, recovering.first_on_node).await {
            Ok((position, replay, recovered)) => {
                let result = ChannelSubscribeResult {
                    sub,
                    channel: p.channel.clone(),
                    position: Position {
                        offset: position.offset,
                        epoch: position.epoch.to_string(),
                    },
                    recovered,
                    replayed: recovered.map(|_| replay.len() as u64),
                };
                Ok(PendingSubscription {
                    result,
                    replay,
                    epoch: position.epoch,
                    recovering,
                    after: position.offset,
                })
            }
            Err(e) => {
                if let Ok(r) = self.hub.remove_sub(session, sub)
                    && r.last_on_node
                {
                    let _ = self.broker.unsubscribe(&p.channel).await;
                }
                Err(e)
            }
        }
    }

    async fn read_start(
        &self,
        p: &ChannelSubscribeParams,
        first: bool,
    ) -> Result<(StreamPosition, Vec<Publication>, Option<bool>)> {
        if first {
            self.broker.subscribe(&p.channel).await?;
        }
        Ok(match &p.since {
            Some(since) => {
                let page = self
                    .broker
                    .history(
                        &p.channel,
                        Some(since.offset),
                        self.config.channels.history_size.max(1),
                    )
                    .await?;
                let same_epoch = *page.position.epoch == *since.epoch;
                let in_range =
                    since.offset + 1 >= page.first_offset && since.offset <= page.position.offset;
                if same_epoch && in_range {
                    (page.position, page.publications, Some(true))
                } else {
                    (page.position, Vec::new(), Some(false))
                }
            }
            None => (self.broker.position(&p.channel).await?, Vec::new(), None),
        })
    }

    /// Makes a subscription live: queues the replayed messages, then the live ones held back
    /// meanwhile, and announces the subscriber to the channel.
    pub async fn activate(&self, session: &Arc<Session>, pending: PendingSubscription) {
        let channel = pending.recovering.channel.clone();
        let sub = pending.recovering.sub;
        for p in pending.replay {
            if let Some(k) = PayloadKind::from_u8(p.kind) {
                let push = Prepared::new(PushEvent::Message {
                    channel: channel.clone(),
                    offset: p.offset,
                    data: Payload::from_trusted(k, p.data),
                });
                session
                    .outbox
                    .push_stream(sub, push, &channel, p.offset, &pending.epoch);
            }
        }
        self.hub.finish_recovery(pending.recovering, pending.after);
        let client = Bytes::from(serde_json::to_vec(&session.client()).unwrap_or_default());
        if let Err(e) = self
            .broker
            .publish_ephemeral(&channel, kind::JOIN, client.clone())
            .await
        {
            tracing::debug!(error = %e, "Could not announce a join.");
        }
        if let AnyBroker::Nats(b) = &self.broker {
            let key = format!("{}/{sub}", session.client().session);
            b.set_member(&channel, &key, Some(client)).await;
        }
    }

    /// Ends one subscription.
    pub async fn unsubscribe(&self, session: &Arc<Session>, sub: u32) -> Result<()> {
        let r = self.hub.remove_sub(session, sub)?;
        self.after_unsubscribe(&r, &session.client()).await;
        Ok(())
    }

    async fn after_unsubscribe(&self, r: &Removed, client: &ClientInfo) {
        if let SubTarget::Tiles { .. } = &r.target {
            self.tiles.on_unsubscribed(&client.session, r.sub);
        }
        let SubTarget::Channel { channel, .. } = &r.target else {
            return;
        };
        if let Ok(data) = serde_json::to_vec(client) {
            let _ = self
                .broker
                .publish_ephemeral(channel, kind::LEAVE, Bytes::from(data))
                .await;
        }
        if let AnyBroker::Nats(b) = &self.broker {
            b.set_member(channel, &format!("{}/{}", client.session, r.sub), None)
                .await;
        }
        if r.last_on_node {
            let _ = self.broker.unsubscribe(channel).await;
        }
    }

    /// Reads a page of a channel's history.
    pub async fn history(&self, p: &ChannelHistoryParams) -> Result<ChannelHistoryResult> {
        self.check_channel(&p.channel)?;
        let page_max = self.config.channels.history_page;
        let limit = p.limit.map_or(page_max, |l| (l as usize).min(page_max));
        let since = p.since.as_ref().map(|s| s.offset);
        let page = self.broker.history(&p.channel, since, limit + 1).await?;
        let complete = match &p.since {
            Some(s) => {
                *page.position.epoch == *s.epoch
                    && s.offset + 1 >= page.first_offset
                    && s.offset <= page.position.offset
            }
            None => true,
        };
        let mut pubs = page.publications;
        let more = if p.since.is_some() {
            let more = pubs.len() > limit;
            pubs.truncate(limit);
            more
        } else {
            if pubs.len() > limit {
                pubs.remove(0);
            }
            pubs.first().is_some_and(|f| f.offset > page.first_offset)
        };
        let messages = pubs
            .into_iter()
            .filter_map(|p| {
                PayloadKind::from_u8(p.kind).map(|k| HistoryMessage {
                    offset: p.offset,
                    data: Payload::from_trusted(k, p.data),
                })
            })
            .collect();
        Ok(ChannelHistoryResult {
            messages,
            position: Position {
                offset: page.position.offset,
                epoch: page.position.epoch.to_string(),
            },
            complete,
            more,
        })
    }

    /// Who is subscribed to a channel, on every node.
    pub fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>> {
        self.check_channel(channel)?;
        let mut clients = self.hub.presence(channel);
        if let AnyBroker::Nats(b) = &self.broker {
            clients.extend(
                b.remote_members(channel)
                    .iter()
                    .filter_map(|m| serde_json::from_slice::<ClientInfo>(m).ok()),
            );
        }
        Ok(clients)
    }
}

impl Node {
    /// Limits for validating features.
    pub fn feature_limits(&self) -> geostream_core::feature::FeatureLimits {
        let l = &self.config.layers;
        geostream_core::feature::FeatureLimits {
            max_vertices: l.max_vertices,
            max_property_bytes: l.max_property_bytes,
            ..Default::default()
        }
    }

    /// Limits for parsing filters.
    pub fn filter_limits(&self) -> geostream_filter::Limits {
        let l = &self.config.layers;
        geostream_filter::Limits {
            max_nodes: l.max_filter_nodes,
            max_vertices: l.max_filter_vertices,
            ..Default::default()
        }
    }

    /// A client's connection is gone: its locks expire after the grace period unless it
    /// comes back and locks again.
    pub(crate) async fn release_client(&self, holder: &Holder) {
        if let Err(e) = self
            .store
            .expire_client_locks(&holder.client, self.config.layers.lock_grace_ms)
            .await
        {
            tracing::warn!(error = %e, "Could not schedule a disconnected client's locks to expire.");
        }
    }

    /// Tells every node's subscribers of the lock's layer that it was locked or released.
    pub(crate) async fn announce_lock(&self, l: &Lock, locked: bool) {
        let push = LockPush {
            lock: LockInfo {
                layer: l.layer.clone(),
                id: l.id.clone(),
                client: l.holder.client.clone(),
                user: l.holder.user.clone(),
                until_ms: l.until_ms,
            },
            locked,
        };
        if let Ok(data) = serde_json::to_vec(&push) {
            let _ = self
                .broker
                .publish_ephemeral(
                    &crate::layer_ops::layer_topic(&l.layer),
                    kind::LOCK,
                    Bytes::from(data),
                )
                .await;
        }
    }
}

fn restart_reason() -> CloseReason {
    geostream_core::error::CloseCode::ServiceRestart.into()
}
