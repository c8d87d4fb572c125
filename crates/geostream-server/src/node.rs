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

use bytes::Bytes;
use geostream_broker::{Broker, BrokerHandler, HistoryLimits, HistoryPage, MemoryBroker, Publication, StreamPosition};
use geostream_core::api::{
    ChannelHistoryParams, ChannelHistoryResult, ChannelSubscribeParams, ChannelSubscribeResult, ClientInfo, HistoryMessage, Position, validate_name,
};
use geostream_core::codec::Encoding;
use geostream_core::error::ErrorCode;
use geostream_core::payload::{Payload, PayloadKind};
use geostream_hub::{CloseReason, Hub, HubLimits, OutboxLimits, Prepared, PushEvent, Recovering, Removed, Session, SubTarget};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::{BrokerConfig, Config};
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
}

/// The configured broker. An enum rather than a trait object: the choice is made once at
/// start-up and the hot path stays statically dispatched.
#[derive(Clone, Debug)]
pub enum AnyBroker {
    /// In-process.
    Memory(MemoryBroker),
}

impl Broker for AnyBroker {
    async fn publish(&self, topic: &str, kind: u8, data: Bytes) -> geostream_broker::Result<StreamPosition> {
        match self {
            AnyBroker::Memory(b) => b.publish(topic, kind, data).await,
        }
    }
    async fn publish_ephemeral(&self, topic: &str, kind: u8, data: Bytes) -> geostream_broker::Result<()> {
        match self {
            AnyBroker::Memory(b) => b.publish_ephemeral(topic, kind, data).await,
        }
    }
    async fn history(&self, topic: &str, since: Option<u64>, limit: usize) -> geostream_broker::Result<HistoryPage> {
        match self {
            AnyBroker::Memory(b) => b.history(topic, since, limit).await,
        }
    }
    async fn position(&self, topic: &str) -> geostream_broker::Result<StreamPosition> {
        match self {
            AnyBroker::Memory(b) => b.position(topic).await,
        }
    }
    async fn subscribe(&self, topic: &str) -> geostream_broker::Result<()> {
        match self {
            AnyBroker::Memory(b) => b.subscribe(topic).await,
        }
    }
    async fn unsubscribe(&self, topic: &str) -> geostream_broker::Result<()> {
        match self {
            AnyBroker::Memory(b) => b.unsubscribe(topic).await,
        }
    }
}

/// Delivers what the broker brings to this node's hub.
pub struct HubBridge {
    hub: Arc<Hub>,
}

impl BrokerHandler for HubBridge {
    fn on_publication(&self, topic: &str, p: &Publication, epoch: &Arc<str>) {
        if let Some(k) = PayloadKind::from_u8(p.kind) {
            self.hub.dispatch_message(topic, p.offset, epoch, Payload::from_trusted(k, p.data.clone()));
        }
    }

    fn on_ephemeral(&self, topic: &str, kind: u8, data: &Bytes) {
        match kind {
            kind::JOIN | kind::LEAVE => {
                if let Ok(client) = serde_json::from_slice::<ClientInfo>(data) {
                    self.hub.dispatch_presence(topic, kind == kind::JOIN, client);
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
    /// Metrics.
    pub metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    sessions_empty: Notify,
    draining: AtomicBool,
}

impl Node {
    /// Builds a node from configuration.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
        let config = Arc::new(config);
        let hub = Arc::new(Hub::new(HubLimits {
            max_subscriptions: config.limits.max_subscriptions,
            outbox: OutboxLimits {
                budget_bytes: config.limits.outbox_bytes,
                slow_grace: Duration::from_secs(config.limits.slow_consumer_grace_secs),
            },
            recovery_buffer: 10_000,
        }));
        let limits = HistoryLimits {
            size: config.channels.history_size,
            ttl: Duration::from_secs(config.channels.history_ttl_secs),
            meta_ttl: Duration::from_secs(24 * 3600),
        };
        let bridge = Arc::new(HubBridge { hub: hub.clone() });
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
        };
        Ok(Arc::new(Node {
            config,
            hub,
            broker,
            metrics: Arc::new(Metrics::default()),
            sessions: Mutex::new(HashMap::new()),
            sessions_empty: Notify::new(),
            draining: AtomicBool::new(false),
        }))
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
        tracing::info!(sessions = sessions.len(), "Draining: asking clients to reconnect.");
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
            tracing::warn!(left = self.session_count(), "Drain timed out; closing the remaining connections.");
        }
    }

    fn check_channel(&self, name: &str) -> Result<()> {
        validate_name("channel", name).map_err(ServerError::invalid)?;
        if name.starts_with('$') {
            return Err(ServerError::invalid("channel names starting with $ are reserved"));
        }
        Ok(())
    }

    /// Publishes `data` to `channel`; returns the message's position.
    pub async fn publish(&self, channel: &str, data: Payload) -> Result<Position> {
        self.check_channel(channel)?;
        let max = self.config.websocket.max_frame_bytes;
        if data.len() > max {
            return Err(ServerError::new(ErrorCode::LimitExceeded, format!("message data is larger than {max} bytes")));
        }
        let k = match data.kind() {
            PayloadKind::Json => kind::MESSAGE_JSON,
            PayloadKind::Msgpack => kind::MESSAGE_MSGPACK,
        };
        let p = self.broker.publish(channel, k, data.bytes().clone()).await?;
        Ok(Position { offset: p.offset, epoch: p.epoch.to_string() })
    }

    /// Registers a channel subscription and reads what it missed; see [`PendingSubscription`].
    pub async fn subscribe(&self, session: &Arc<Session>, p: ChannelSubscribeParams) -> Result<PendingSubscription> {
        self.check_channel(&p.channel)?;
        let recovering = self.hub.add_channel_sub(session, &p.channel, p.presence)?;
        let sub = recovering.sub;
        match self.read_start(&p, recovering.first_on_node).await {
            Ok((position, replay, recovered)) => {
                let result = ChannelSubscribeResult {
                    sub,
                    channel: p.channel.clone(),
                    position: Position { offset: position.offset, epoch: position.epoch.to_string() },
                    recovered,
                    replayed: recovered.map(|_| replay.len() as u64),
                };
                Ok(PendingSubscription { result, replay, epoch: position.epoch, recovering, after: position.offset })
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

    async fn read_start(&self, p: &ChannelSubscribeParams, first: bool) -> Result<(StreamPosition, Vec<Publication>, Option<bool>)> {
        if first {
            self.broker.subscribe(&p.channel).await?;
        }
        Ok(match &p.since {
            Some(since) => {
                let page = self.broker.history(&p.channel, Some(since.offset), self.config.channels.history_size.max(1)).await?;
                let same_epoch = *page.position.epoch == *since.epoch;
                let in_range = since.offset + 1 >= page.first_offset && since.offset <= page.position.offset;
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
                let push = Prepared::new(PushEvent::Message { channel: channel.clone(), offset: p.offset, data: Payload::from_trusted(k, p.data) });
                session.outbox.push_stream(sub, push, &channel, p.offset, &pending.epoch);
            }
        }
        self.hub.finish_recovery(pending.recovering, pending.after);
        let client = serde_json::to_vec(&session.client()).unwrap_or_default();
        if let Err(e) = self.broker.publish_ephemeral(&channel, kind::JOIN, Bytes::from(client)).await {
            tracing::debug!(error = %e, "Could not announce a join.");
        }
    }

    /// Ends one subscription.
    pub async fn unsubscribe(&self, session: &Arc<Session>, sub: u32) -> Result<()> {
        let r = self.hub.remove_sub(session, sub)?;
        self.after_unsubscribe(&r, &session.client()).await;
        Ok(())
    }

    async fn after_unsubscribe(&self, r: &Removed, client: &ClientInfo) {
        let SubTarget::Channel { channel, .. } = &r.target;
        if let Ok(data) = serde_json::to_vec(client) {
            let _ = self.broker.publish_ephemeral(channel, kind::LEAVE, Bytes::from(data)).await;
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
            Some(s) => *page.position.epoch == *s.epoch && s.offset + 1 >= page.first_offset && s.offset <= page.position.offset,
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
            .filter_map(|p| PayloadKind::from_u8(p.kind).map(|k| HistoryMessage { offset: p.offset, data: Payload::from_trusted(k, p.data) }))
            .collect();
        Ok(ChannelHistoryResult {
            messages,
            position: Position { offset: page.position.offset, epoch: page.position.epoch.to_string() },
            complete,
            more,
        })
    }

    /// Who is subscribed to a channel.
    pub fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>> {
        self.check_channel(channel)?;
        Ok(self.hub.presence(channel))
    }
}

fn restart_reason() -> CloseReason {
    CloseReason { code: geostream_core::error::close::SERVICE_RESTART, reason: "server restarting; reconnect" }
}
