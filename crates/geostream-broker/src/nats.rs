//! The NATS broker (feature `nats`): several nodes, history in JetStream.
//!
//! # Mapping
//!
//! * **Messages with history** (channel messages) go to a JetStream stream of their own per
//!   topic, `<prefix>_<token>`, subject `<prefix>.h.<token>`, where `<token>` encodes the
//!   topic. A stream per topic makes the stream's sequence number *the* topic offset: it
//!   starts at 1, grows by one per message, and JetStream assigns it atomically however many
//!   nodes publish at once. History is the stream's retained messages (`max_messages` =
//!   [`HistoryLimits::size`], `max_age` = [`HistoryLimits::ttl`]), in file storage, so it
//!   survives a NATS restart. The epoch is the stream's creation time: it changes only when
//!   the stream is deleted and created again.
//! * **Live delivery** of those messages: a node that [`Broker::subscribe`]s a topic runs an
//!   *ordered consumer* on its stream. It delivers in stream order, and after a lost
//!   connection it recreates itself from the last sequence it delivered, so a node that
//!   loses NATS catches up on reconnect without losing or repeating a message (as long as
//!   the history still holds them).
//! * **Messages without history** (feature changes, presence, locks) are core NATS messages
//!   on `<prefix>.e.<token>`; every node listens to `<prefix>.e.>` (a layer change concerns
//!   every node's hub, which tracks every layer's sequence). Lost ones are not replayed:
//!   layer changes are durable in the store, and the server repairs such a gap from the
//!   change log (see the server's gap filler and its reconnect hook,
//!   [`NatsBroker::reconnects`]).
//! * **Membership** ([`NatsBroker::set_member`], [`NatsBroker::remote_members`]): a small
//!   replicated table of who is subscribed where, for presence across nodes. Each node
//!   publishes its own entries' changes with a version number on `<prefix>.members`, and a
//!   heartbeat carrying its current version; a node that sees a version it cannot account
//!   for asks that node for its full state. A node not heard from for
//!   [`NatsOptions::node_timeout`] is forgotten, with its members (it crashed).
//!
//! Not implemented: [`HistoryLimits::meta_ttl`] (a topic's stream stays until an operator
//! deletes it; its messages still expire after `ttl`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::{
    Broker, BrokerError, BrokerHandler, BusEvent, ClientInfo, HistoryLimits, HistoryPage,
    Publication, Result, StreamPosition, new_epoch,
};

/// How long JetStream remembers a message id: a publish sent again within it (after a lost
/// acknowledgement) is stored once. JetStream's own default.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Settings of a [`NatsBroker`]. Every field has a default (see [`Default`]).
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated (`nats://host:4222,nats://other:4222`). Default
    /// `nats://127.0.0.1:4222`.
    pub url: String,
    /// Prefix of every subject and stream name, so several deployments (or tests) can share
    /// one NATS. Letters, digits, `_` and `-`. Default `geostream`.
    pub prefix: String,
    /// JetStream replicas of each history stream (1 on a single NATS server, 3 on a NATS
    /// cluster). Default 1.
    pub replicas: usize,
    /// How often this node announces itself to the others' membership tables. Default 2 s.
    pub heartbeat: Duration,
    /// A node not heard from for this long is taken for dead, and its members forgotten.
    /// Default 6 s.
    pub node_timeout: Duration,
    /// How long to wait for NATS when connecting and for JetStream's answers. Default 5 s.
    pub timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "geostream".into(),
            replicas: 1,
            heartbeat: Duration::from_secs(2),
            node_timeout: Duration::from_secs(6),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The NATS broker; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    opts: NatsOptions,
    limits: HistoryLimits,
    handler: Arc<dyn BrokerHandler>,
    /// This node's id in the membership table.
    node: Arc<str>,
    /// Streams known to exist, by topic, with their epochs.
    streams: Mutex<HashMap<String, (stream::Stream, Arc<str>)>>,
    /// Live subscriptions: topic → (local subscriber count, delivery task).
    subs: tokio::sync::Mutex<HashMap<String, (usize, JoinHandle<()>)>>,
    members: Mutex<Members>,
    reconnects: tokio::sync::watch::Sender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Publishes made by this node, for their message ids (see [`Broker::publish`]).
    published: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
        for (_, (_, t)) in self.subs.get_mut().drain() {
            t.abort();
        }
    }
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.inner.opts.prefix)
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// The membership topic under which a node says it serves `service`. Not a client topic
/// (those never start with `$node/`), and its entries are not client members, so presence
/// never shows them.
fn service_topic(service: &str) -> String {
    format!("$node/{service}")
}

/// A request from another node ([`NatsBroker::node_requests`]).
pub struct NodeRequest {
    /// What the other node sent.
    pub payload: Bytes,
    reply: Option<async_nats::Subject>,
    client: async_nats::Client,
}

impl NodeRequest {
    /// Sends the answer. A lost answer is the sender's [`NodeRequestError::NoAnswer`].
    pub async fn respond(self, body: Bytes) {
        if let Some(reply) = self.reply
            && let Err(e) = self.client.publish(reply, body).await
        {
            tracing::warn!(error = %e, "Could not answer another node's request.");
        }
    }
}

/// Why [`NatsBroker::request_node`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRequestError {
    /// The request never reached a listener: the node cannot have acted on it.
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// The request may have been acted on, but no answer came.
    #[error("no answer: {0}")]
    NoAnswer(String),
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats: {what}: {e}"))
}

/// A topic as one subject token and stream-name part: hex of its bytes, or, for long
/// topics, hex of the first 48 bytes and a 64-bit FNV-1a hash of the whole (stream names
/// become file names, which have a length limit).
/// An event's encoded bodies: one, or a batch of changes too large for one message split
/// in halves, in order (each half still a batch for the receiving hubs).
fn event_bodies(event: &BusEvent, max: usize) -> Vec<Vec<u8>> {
    let data = event.encode();
    match event {
        BusEvent::Changes(changes) if changes.len() > 1 && data.len() > max => {
            let (a, b) = changes.split_at(changes.len() / 2);
            let mut out = event_bodies(&BusEvent::Changes(a.to_vec()), max);
            out.extend(event_bodies(&BusEvent::Changes(b.to_vec()), max));
            out
        }
        _ => vec![data],
    }
}

fn token(topic: &str) -> String {
    fn hex(b: &[u8]) -> String {
        use std::fmt::Write;
        b.iter()
            .fold(String::with_capacity(b.len() * 2), |mut s, x| {
                let _ = write!(s, "{x:02x}");
                s
            })
    }
    let b = topic.as_bytes();
    if b.len() <= 96 {
        return hex(b);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}_{h:016x}", hex(&b[..48]))
}

fn check_prefix(p: &str) -> Result<()> {
    if !p.is_empty()
        && p.len() <= 32
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(BrokerError::Unavailable(format!(
            "nats prefix {p:?}: use 1 to 32 letters, digits, _ and -"
        )))
    }
}

impl NatsBroker {
    /// Connects to NATS and starts this node's listeners. `handler` receives every message
    /// for this node.
    ///
    /// Fails with [`BrokerError::Unavailable`] when NATS (with JetStream) cannot be reached.
    pub async fn connect(
        opts: NatsOptions,
        limits: HistoryLimits,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<NatsBroker> {
        check_prefix(&opts.prefix)?;
        let (reconnects, _) = tokio::sync::watch::channel(0u64);
        let events = reconnects.clone();
        let client = async_nats::ConnectOptions::new()
            .name("geostream")
            .connection_timeout(opts.timeout)
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            events.send_modify(|n| *n += 1);
                            tracing::info!("Connected to NATS.");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("Lost the connection to NATS; reconnecting.");
                        }
                        other => tracing::debug!(event = %other, "NATS event."),
                    }
                }
            })
            .connect(opts.url.as_str())
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {}", opts.url), e))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(opts.timeout);
        // Fail now, not at the first publish, when JetStream is off.
        // (A raw request: the typed account info of async-nats does not parse every server
        // version's answer.)
        let info = tokio::time::timeout(opts.timeout, client.request("$JS.API.INFO", Bytes::new()))
            .await
            .map_err(|e| unavailable("JetStream is not available", e))?
            .map_err(|e| unavailable("JetStream is not available", e))?;
        if info.payload.windows(8).any(|w| w == b"\"error\"") {
            return Err(unavailable(
                "JetStream is not available",
                String::from_utf8_lossy(&info.payload),
            ));
        }
        let inner = Arc::new(Inner {
            client,
            js,
            limits,
            handler,
            node: new_epoch(),
            streams: Mutex::new(HashMap::new()),
            subs: tokio::sync::Mutex::new(HashMap::new()),
            members: Mutex::new(Members::default()),
            reconnects,
            tasks: Mutex::new(Vec::new()),
            published: std::sync::atomic::AtomicU64::new(0),
            opts,
        });
        let eph = inner
            .client
            .subscribe(format!("{}.e.>", inner.opts.prefix))
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        let members = inner
            .client
            .subscribe(format!("{}.members", inner.opts.prefix))
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        let weak = Arc::downgrade(&inner);
        let t1 = tokio::spawn(ephemeral_loop(weak.clone(), eph));
        let t2 = tokio::spawn(membership_loop(weak, members));
        inner.tasks.lock().extend([t1, t2]);
        // Ask the others for their members (they answer with their state).
        inner.send_member_msg(MemberMsg::Hello { to: None }).await;
        inner
            .client
            .flush()
            .await
            .map_err(|e| unavailable("flush", e))?;
        Ok(NatsBroker { inner })
    }

    /// This node's id among the others.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The live nodes that answer requests for `service` ([`NatsBroker::node_requests`]),
    /// this one included, by id: those heard from within [`NatsOptions::node_timeout`]. Every
    /// node computes it from its own membership replica, so two nodes may briefly disagree
    /// while one joins or dies: callers use it to spread work, never to decide what is
    /// correct.
    pub fn service_nodes(&self, service: &str) -> Vec<Arc<str>> {
        let topic = service_topic(service);
        let timeout = self.inner.opts.node_timeout;
        let now = Instant::now();
        let m = self.inner.members.lock();
        let mut nodes: Vec<Arc<str>> = m
            .remote
            .iter()
            .filter(|(_, n)| now.duration_since(n.seen) < timeout && n.topics.contains_key(&topic))
            .map(|(id, _)| Arc::from(id.as_str()))
            .collect();
        if m.local.contains_key(&topic) {
            nodes.push(self.inner.node.clone());
        }
        nodes.sort_unstable();
        nodes
    }

    /// The requests other nodes send to this node's `service` ([`NatsBroker::request_node`]),
    /// as they arrive. The subscription lives as long as the stream and survives reconnects.
    pub async fn node_requests(
        &self,
        service: &str,
    ) -> Result<impl futures_util::Stream<Item = NodeRequest> + Send + 'static> {
        let subject = self.node_subject(&self.inner.node, service);
        let sub = self
            .inner
            .client
            .subscribe(subject)
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        // Listening first, then announced: a node that others see serving does.
        let node = Bytes::copy_from_slice(self.inner.node.as_bytes());
        self.set_member_data(&service_topic(service), "node", Some(node))
            .await;
        let client = self.inner.client.clone();
        Ok(sub.map(move |m| NodeRequest {
            payload: m.payload,
            reply: m.reply,
            client: client.clone(),
        }))
    }

    /// Sends `body` to `service` on node `node` and waits up to `timeout` for its answer.
    ///
    /// [`NodeRequestError::NotDelivered`] means the node cannot have acted on it (nobody
    /// listens, or NATS refused the message); [`NodeRequestError::NoAnswer`] means it may have.
    pub async fn request_node(
        &self,
        node: &str,
        service: &str,
        body: Bytes,
        timeout: Duration,
    ) -> std::result::Result<Bytes, NodeRequestError> {
        use async_nats::RequestErrorKind as K;
        let request = async_nats::Request::new()
            .payload(body)
            .timeout(Some(timeout));
        match self
            .inner
            .client
            .send_request(self.node_subject(node, service), request)
            .await
        {
            Ok(m) => Ok(m.payload),
            Err(e) => match e.kind() {
                K::NoResponders | K::InvalidSubject | K::MaxPayloadExceeded => {
                    Err(NodeRequestError::NotDelivered(e.to_string()))
                }
                _ => Err(NodeRequestError::NoAnswer(e.to_string())),
            },
        }
    }

    /// The largest message NATS takes, in bytes.
    pub fn max_payload(&self) -> usize {
        self.inner.client.server_info().max_payload
    }

    fn node_subject(&self, node: &str, service: &str) -> String {
        format!("{}.n.{node}.{service}", self.inner.opts.prefix)
    }

    /// Records (`Some`) or removes (`None`) a member of `topic` on this node under `key`,
    /// and tells the other nodes.
    async fn set_member_data(&self, topic: &str, key: &str, data: Option<Bytes>) {
        let msg = {
            let mut m = self.inner.members.lock();
            m.version += 1;
            let version = m.version;
            match &data {
                Some(d) => {
                    m.local
                        .entry(topic.to_owned())
                        .or_default()
                        .insert(key.to_owned(), d.clone());
                }
                None => {
                    if let Some(t) = m.local.get_mut(topic) {
                        t.remove(key);
                        if t.is_empty() {
                            m.local.remove(topic);
                        }
                    }
                }
            }
            MemberMsg::Delta {
                node: self.inner.node.to_string(),
                version,
                topic: topic.to_owned(),
                key: key.to_owned(),
                data,
            }
        };
        self.inner.send_member_msg(msg).await;
    }

    /// The members of `topic` on the other live nodes, as their nodes sent them.
    fn remote_member_data(&self, topic: &str) -> Vec<Bytes> {
        let timeout = self.inner.opts.node_timeout;
        let m = self.inner.members.lock();
        let now = Instant::now();
        m.remote
            .values()
            .filter(|n| now.duration_since(n.seen) < timeout)
            .filter_map(|n| n.topics.get(topic))
            .flat_map(|t| t.values().cloned())
            .collect()
    }

    /// Deletes every stream of this broker's prefix (tests and tear-down only).
    pub async fn delete_streams(&self) -> Result<usize> {
        let prefix = format!("{}_", self.inner.opts.prefix);
        let mut names = self.inner.js.stream_names();
        let mut mine = Vec::new();
        while let Some(n) = names.next().await {
            let n = n.map_err(|e| unavailable("list streams", e))?;
            if n.starts_with(&prefix) {
                mine.push(n);
            }
        }
        for n in &mine {
            self.inner
                .js
                .delete_stream(n)
                .await
                .map_err(|e| unavailable("delete stream", e))?;
        }
        self.inner.streams.lock().clear();
        Ok(mine.len())
    }
}

impl Inner {
    fn stream_name(&self, topic: &str) -> String {
        format!("{}_{}", self.opts.prefix, token(topic))
    }

    fn history_subject(&self, topic: &str) -> String {
        format!("{}.h.{}", self.opts.prefix, token(topic))
    }

    /// The topic's stream (created if missing) and its epoch.
    async fn stream(&self, topic: &str) -> Result<(stream::Stream, Arc<str>)> {
        if let Some(s) = self.streams.lock().get(topic) {
            return Ok(s.clone());
        }
        let config = stream::Config {
            name: self.stream_name(topic),
            subjects: vec![self.history_subject(topic)],
            max_messages: i64::try_from(self.limits.size.max(1)).unwrap_or(i64::MAX),
            max_age: self.limits.ttl,
            storage: stream::StorageType::File,
            num_replicas: self.opts.replicas.max(1),
            discard: stream::DiscardPolicy::Old,
            // Each publish carries a message id (see `publish`): within this window a
            // publish sent again (after its acknowledgement was lost) is stored once and
            // acknowledged with its first offset. Offsets do not skip: a duplicate takes
            // none. At most the history's age, as JetStream requires.
            duplicate_window: if self.limits.ttl.is_zero() {
                DUPLICATE_WINDOW
            } else {
                DUPLICATE_WINDOW.min(self.limits.ttl)
            },
            ..Default::default()
        };
        let mut s = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable("create stream", e))?;
        let info = s.info().await.map_err(|e| unavailable("stream info", e))?;
        let epoch: Arc<str> = format!("{:x}", info.created.unix_timestamp_nanos()).into();
        let out = (s, epoch);
        self.streams.lock().insert(topic.to_owned(), out.clone());
        Ok(out)
    }

    fn forget_stream(&self, topic: &str) {
        self.streams.lock().remove(topic);
    }

    async fn send_member_msg(&self, msg: MemberMsg) {
        let subject = format!("{}.members", self.opts.prefix);
        if let Err(e) = self.client.publish(subject, msg.encode()).await {
            tracing::debug!(error = %e, "Could not send a membership message.");
        }
    }
}

/// Reads a stream's position: offset of the last message and the first still kept.
fn positions(info: &stream::Info) -> (u64, u64) {
    let last = info.state.last_sequence;
    let first = if info.state.messages == 0 {
        last + 1
    } else {
        info.state.first_sequence.max(1)
    };
    (last, first)
}

impl Broker for NatsBroker {
    async fn publish(&self, topic: &str, kind: u8, data: Bytes) -> Result<StreamPosition> {
        let mut payload = BytesMut::with_capacity(1 + data.len());
        payload.put_u8(kind);
        payload.extend_from_slice(&data);
        let payload = payload.freeze();
        // One id for every attempt of this publish. When the connection drops between
        // JetStream storing a message and its acknowledgement arriving, the attempt below
        // fails and is made again (and the client may send it again on reconnecting): with
        // the id, JetStream stores it once. Without it, one acknowledged publish was stored
        // twice, at two offsets (found by bench/chaos-cluster.sh, cutting a node's NATS).
        let id = format!(
            "{}-{}",
            self.inner.node,
            self.inner
                .published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // Twice at most: a stream deleted behind our back is created again.
        for attempt in 0..2 {
            let (_, epoch) = self.inner.stream(topic).await?;
            let sent = self
                .inner
                .js
                .send_publish(
                    self.inner.history_subject(topic),
                    jetstream::message::PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(&id),
                )
                .await;
            let ack = match sent {
                Ok(ack) => ack.await,
                Err(e) => return Err(unavailable("publish", e)),
            };
            match ack {
                Ok(ack) => {
                    return Ok(StreamPosition {
                        offset: ack.sequence,
                        epoch,
                    });
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!(topic, error = %e, "Publish not acknowledged; looking the stream up again.");
                    self.inner.forget_stream(topic);
                }
                Err(e) => return Err(unavailable("publish", e)),
            }
        }
        Err(BrokerError::Unavailable("nats: publish failed".into()))
    }

    async fn publish_event(&self, topic: &str, event: Arc<BusEvent>) -> Result<()> {
        let t = topic.as_bytes();
        let len = u16::try_from(t.len())
            .map_err(|_| BrokerError::Unavailable("topic too long".into()))?;
        let max = self.inner.client.server_info().max_payload;
        let subject = format!("{}.e.{}", self.inner.opts.prefix, token(topic));
        for data in event_bodies(&event, max.saturating_sub(2 + t.len())) {
            let mut payload = BytesMut::with_capacity(2 + t.len() + data.len());
            payload.put_u16(len);
            payload.extend_from_slice(t);
            payload.extend_from_slice(&data);
            self.inner
                .client
                .publish(subject.clone(), payload.freeze())
                .await
                .map_err(|e| unavailable("publish", e))?;
        }
        Ok(())
    }

    async fn history(&self, topic: &str, since: Option<u64>, limit: usize) -> Result<HistoryPage> {
        let (mut s, epoch) = self.inner.stream(topic).await?;
        let info = s.info().await.map_err(|e| unavailable("stream info", e))?;
        let (last, first) = positions(info);
        let position = StreamPosition {
            offset: last,
            epoch,
        };
        let limit = limit as u64;
        let start = match since {
            Some(since) => (since + 1).max(first),
            None => first.max((last + 1).saturating_sub(limit)),
        };
        let end = last.min(start.saturating_add(limit).saturating_sub(1));
        let mut publications = Vec::new();
        if limit > 0 && start <= end {
            let s = &s;
            let mut gets = futures_util::stream::iter(start..=end)
                .map(|seq| async move { (seq, s.get_raw_message(seq).await) })
                .buffered(64);
            while let Some((seq, got)) = gets.next().await {
                match got {
                    Ok(m) => {
                        let mut payload = m.payload.clone();
                        if payload.is_empty() {
                            continue;
                        }
                        let kind = payload.get_u8();
                        publications.push(Publication {
                            offset: m.sequence,
                            kind,
                            data: payload,
                            time_ms: time_ms_of(&m),
                        });
                    }
                    // Expired between the info and the read: history starts later.
                    Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                        tracing::debug!(topic, seq, error = %e, "History message gone.");
                    }
                    // Anything else (a timeout, the connection lost) is no answer: skipping
                    // the message would hand a resuming subscriber a `recovered` replay with
                    // a hole (found by bench/chaos-cluster.sh, cutting a node's NATS).
                    Err(e) => return Err(unavailable("history", e)),
                }
            }
        }
        let first_offset = first;
        Ok(HistoryPage {
            publications,
            position,
            first_offset,
        })
    }

    async fn position(&self, topic: &str) -> Result<StreamPosition> {
        let (mut s, epoch) = self.inner.stream(topic).await?;
        let info = s.info().await.map_err(|e| unavailable("stream info", e))?;
        Ok(StreamPosition {
            offset: positions(info).0,
            epoch,
        })
    }

    async fn subscribe(&self, topic: &str) -> Result<()> {
        let mut subs = self.inner.subs.lock().await;
        if let Some((n, _)) = subs.get_mut(topic) {
            *n += 1;
            return Ok(());
        }
        let (s, epoch) = self.inner.stream(topic).await?;
        // Everything stored after the consumer exists is delivered: a position read after
        // this returns misses nothing.
        let consumer = s
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("create consumer", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("consume", e))?;
        let task = tokio::spawn(deliver_loop(
            self.inner.handler.clone(),
            topic.to_owned(),
            epoch,
            messages,
        ));
        subs.insert(topic.to_owned(), (1, task));
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<()> {
        let mut subs = self.inner.subs.lock().await;
        if let Some((n, _)) = subs.get_mut(topic) {
            *n -= 1;
            if *n == 0
                && let Some((_, task)) = subs.remove(topic)
            {
                // Dropping the consumer's subscription ends it; the server removes the
                // ephemeral consumer.
                task.abort();
            }
        }
        Ok(())
    }

    async fn set_member(&self, topic: &str, key: &str, member: Option<&ClientInfo>) {
        let data = match member.map(serde_json::to_vec).transpose() {
            Ok(d) => d.map(Bytes::from),
            Err(e) => {
                tracing::error!(error = %e, "Could not encode a member.");
                return;
            }
        };
        self.set_member_data(topic, key, data).await;
    }

    fn remote_members(&self, topic: &str) -> Vec<ClientInfo> {
        self.remote_member_data(topic)
            .iter()
            .filter_map(|m| serde_json::from_slice(m).ok())
            .collect()
    }

    fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.reconnects.subscribe())
    }
}

/// When JetStream stored a message, in milliseconds since the Unix epoch.
fn time_ms_of(m: &async_nats::jetstream::message::StreamMessage) -> u64 {
    u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Delivers one topic's messages, in stream order, to the handler.
async fn deliver_loop(
    handler: Arc<dyn BrokerHandler>,
    topic: String,
    epoch: Arc<str>,
    mut messages: consumer::push::Ordered,
) {
    while let Some(m) = messages.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                // The ordered consumer recreates itself from the last delivered sequence.
                tracing::debug!(topic, error = %e, "Ordered consumer hiccup.");
                continue;
            }
        };
        let Ok(info) = m.info() else { continue };
        let offset = info.stream_sequence;
        let time_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let mut payload = m.payload.clone();
        if payload.is_empty() {
            continue;
        }
        let kind = payload.get_u8();
        let p = Publication {
            offset,
            kind,
            data: payload,
            time_ms,
        };
        handler.on_publication(&topic, &p, &epoch);
    }
}

/// Delivers messages without history, whatever their topic.
async fn ephemeral_loop(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(m) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let mut p = m.payload;
        if p.len() < 2 {
            continue;
        }
        let len = usize::from(p.get_u16());
        if p.len() < len {
            continue;
        }
        let topic = p.split_to(len);
        let Ok(topic) = std::str::from_utf8(&topic) else {
            continue;
        };
        match BusEvent::decode(&p) {
            Ok(event) => inner.handler.on_event(topic, &Arc::new(event)),
            Err(e) => tracing::warn!(topic, error = %e, "Dropping an event from another node."),
        }
    }
}

// ----- membership -----

/// This node's members and its replica of the others'.
#[derive(Default)]
struct Members {
    /// Bumped by every local change.
    version: u64,
    /// topic → key → data.
    local: HashMap<String, HashMap<String, Bytes>>,
    remote: HashMap<String, RemoteNode>,
    /// Nodes taken for dead (their members were reported gone): if one speaks again, its
    /// members are reported back.
    dead: std::collections::HashSet<String>,
}

struct RemoteNode {
    version: u64,
    seen: Instant,
    topics: HashMap<String, HashMap<String, Bytes>>,
}

/// A membership message. Encoded as a tag byte and length-prefixed fields.
#[derive(Debug, PartialEq)]
enum MemberMsg {
    /// "Send me your state" (`to`: one node, or everyone).
    Hello { to: Option<String> },
    /// A node is alive and at `version`.
    Beat { node: String, version: u64 },
    /// One member joined (`data`) or left.
    Delta {
        node: String,
        version: u64,
        topic: String,
        key: String,
        data: Option<Bytes>,
    },
    /// All of a node's members at `version`.
    State {
        node: String,
        version: u64,
        entries: Vec<(String, String, Bytes)>,
    },
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.extend_from_slice(s.as_bytes());
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.len() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.len() >= n).then(|| b.split_to(n))
}

fn get_str(b: &mut Bytes) -> Option<String> {
    String::from_utf8(get_bytes(b)?.to_vec()).ok()
}

impl MemberMsg {
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            MemberMsg::Hello { to } => {
                b.put_u8(1);
                put_str(&mut b, to.as_deref().unwrap_or(""));
            }
            MemberMsg::Beat { node, version } => {
                b.put_u8(2);
                put_str(&mut b, node);
                b.put_u64(*version);
            }
            MemberMsg::Delta {
                node,
                version,
                topic,
                key,
                data,
            } => {
                b.put_u8(3);
                put_str(&mut b, node);
                b.put_u64(*version);
                put_str(&mut b, topic);
                put_str(&mut b, key);
                if let Some(d) = data {
                    b.put_u8(1);
                    b.put_u32(d.len() as u32);
                    b.extend_from_slice(d);
                } else {
                    b.put_u8(0);
                }
            }
            MemberMsg::State {
                node,
                version,
                entries,
            } => {
                b.put_u8(4);
                put_str(&mut b, node);
                b.put_u64(*version);
                b.put_u32(entries.len() as u32);
                for (t, k, d) in entries {
                    put_str(&mut b, t);
                    put_str(&mut b, k);
                    b.put_u32(d.len() as u32);
                    b.extend_from_slice(d);
                }
            }
        }
        b.freeze()
    }

    fn decode(mut b: Bytes) -> Option<MemberMsg> {
        if b.is_empty() {
            return None;
        }
        Some(match b.get_u8() {
            1 => {
                let to = get_str(&mut b)?;
                MemberMsg::Hello {
                    to: (!to.is_empty()).then_some(to),
                }
            }
            2 => {
                let node = get_str(&mut b)?;
                (b.len() >= 8).then_some(())?;
                MemberMsg::Beat {
                    node,
                    version: b.get_u64(),
                }
            }
            3 => {
                let node = get_str(&mut b)?;
                (b.len() >= 8).then_some(())?;
                let version = b.get_u64();
                let topic = get_str(&mut b)?;
                let key = get_str(&mut b)?;
                (!b.is_empty()).then_some(())?;
                let data = match b.get_u8() {
                    1 => Some(get_bytes(&mut b)?),
                    _ => None,
                };
                MemberMsg::Delta {
                    node,
                    version,
                    topic,
                    key,
                    data,
                }
            }
            4 => {
                let node = get_str(&mut b)?;
                (b.len() >= 12).then_some(())?;
                let version = b.get_u64();
                let n = b.get_u32() as usize;
                let mut entries = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    entries.push((get_str(&mut b)?, get_str(&mut b)?, get_bytes(&mut b)?));
                }
                MemberMsg::State {
                    node,
                    version,
                    entries,
                }
            }
            _ => return None,
        })
    }
}

/// Keeps the membership replica: applies the others' messages, answers requests for this
/// node's state, sends heartbeats, and resynchronises after a reconnect.
async fn membership_loop(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    let (every, mut reconnects) = match inner.upgrade() {
        Some(i) => (i.opts.heartbeat, i.reconnects.subscribe()),
        None => return,
    };
    let mut beat = tokio::time::interval(every);
    let mut last_beat = Instant::now();
    reconnects.mark_unchanged();
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => MemberMsg::decode(m.payload),
                None => return,
            },
            _ = beat.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                // A node that was not listening itself (paused past the timeout, or cut off
                // from NATS) cannot tell who else is dead: it gives every other node a fresh
                // timeout rather than take the living for dead and expire their clients' locks.
                let now = Instant::now();
                let blind = now.duration_since(last_beat) > inner.opts.node_timeout
                    || inner.client.connection_state() != async_nats::connection::State::Connected;
                last_beat = now;
                let (version, lost) = {
                    let mut m = inner.members.lock();
                    if blind {
                        for n in m.remote.values_mut() {
                            n.seen = now;
                        }
                        (m.version, Vec::new())
                    } else {
                        (m.version, take_dead(&mut m, inner.opts.node_timeout))
                    }
                };
                let node = inner.node.to_string();
                inner.send_member_msg(MemberMsg::Beat { node, version }).await;
                if !lost.is_empty() {
                    inner.handler.on_remote_members(true, &decode_members(lost));
                }
                continue;
            }
            r = reconnects.changed() => {
                if r.is_err() { return; }
                // Deltas may have been lost both ways: ask everyone, and tell everyone.
                let Some(inner) = inner.upgrade() else { return };
                inner.send_member_msg(MemberMsg::Hello { to: None }).await;
                let state = own_state(&inner);
                inner.send_member_msg(state).await;
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        let Some(msg) = msg else { continue };
        let me = &*inner.node;
        // Members of a node taken for dead that speaks again.
        let mut back = Vec::new();
        let reply = {
            let mut m = inner.members.lock();
            let now = Instant::now();
            match msg {
                MemberMsg::Hello { to } => (to.as_deref().is_none_or(|t| t == me))
                    .then_some(())
                    .map(|()| None),
                MemberMsg::Beat { node, version } if node != me => {
                    match m.remote.get_mut(&node) {
                        Some(n) if n.version == version => {
                            n.seen = now;
                            None
                        }
                        // A version we cannot account for: ask for the whole state.
                        _ => Some(Some(MemberMsg::Hello { to: Some(node) })),
                    }
                }
                MemberMsg::Delta {
                    node,
                    version,
                    topic,
                    key,
                    data,
                } if node != me => match m.remote.get_mut(&node) {
                    Some(n) if n.version + 1 == version => {
                        n.version = version;
                        n.seen = now;
                        match data {
                            Some(d) => {
                                n.topics.entry(topic).or_default().insert(key, d);
                            }
                            None => {
                                if let Some(t) = n.topics.get_mut(&topic) {
                                    t.remove(&key);
                                    if t.is_empty() {
                                        n.topics.remove(&topic);
                                    }
                                }
                            }
                        }
                        None
                    }
                    _ => Some(Some(MemberMsg::Hello { to: Some(node) })),
                },
                MemberMsg::State {
                    node,
                    version,
                    entries,
                } if node != me => {
                    let mut topics: HashMap<String, HashMap<String, Bytes>> = HashMap::new();
                    let returned = m.dead.remove(&node);
                    for (t, k, d) in entries {
                        if returned {
                            back.push((t.clone(), d.clone()));
                        }
                        topics.entry(t).or_default().insert(k, d);
                    }
                    m.remote.insert(
                        node,
                        RemoteNode {
                            version,
                            seen: now,
                            topics,
                        },
                    );
                    None
                }
                _ => None,
            }
        };
        if !back.is_empty() {
            inner
                .handler
                .on_remote_members(false, &decode_members(back));
        }
        match reply {
            // A Hello for this node: answer with the state.
            Some(None) => {
                let state = own_state(&inner);
                inner.send_member_msg(state).await;
            }
            Some(Some(ask)) => inner.send_member_msg(ask).await,
            None => {}
        }
    }
}

/// Removes the nodes not heard from for `timeout` and returns their members (topic, data).
fn take_dead(m: &mut Members, timeout: Duration) -> Vec<(String, Bytes)> {
    let now = Instant::now();
    let dead: Vec<String> = m
        .remote
        .iter()
        .filter(|(_, n)| now.duration_since(n.seen) >= timeout)
        .map(|(k, _)| k.clone())
        .collect();
    let mut lost = Vec::new();
    for node in dead {
        if let Some(n) = m.remote.remove(&node) {
            tracing::warn!(node, "A node stopped answering; taking it for dead.");
            for (topic, keys) in n.topics {
                lost.extend(keys.into_values().map(|d| (topic.clone(), d)));
            }
            m.dead.insert(node);
        }
    }
    lost
}

fn decode_members(raw: Vec<(String, Bytes)>) -> Vec<(String, ClientInfo)> {
    raw.into_iter()
        .filter_map(|(t, d)| serde_json::from_slice(&d).ok().map(|c| (t, c)))
        .collect()
}

fn own_state(inner: &Inner) -> MemberMsg {
    let m = inner.members.lock();
    let mut entries = Vec::new();
    for (t, keys) in &m.local {
        for (k, d) in keys {
            entries.push((t.clone(), k.clone(), d.clone()));
        }
    }
    MemberMsg::State {
        node: inner.node.to_string(),
        version: m.version,
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_too_large_for_one_message_is_sent_in_order_in_parts() {
        use geostream_core::feature::{Change, ChangeOp};
        let changes: Vec<Arc<Change>> = (1..=37)
            .map(|seq| {
                Arc::new(Change {
                    layer: "ships".into(),
                    seq,
                    op: ChangeOp::Delete,
                    id: format!("feature-{seq}"),
                    version: 2,
                    old: None,
                    new: None,
                    old_bbox: None,
                    new_bbox: None,
                    changed: Vec::new(),
                    geometry_changed: false,
                    author: None,
                    op_id: None,
                    time_ms: 1,
                })
            })
            .collect();
        let event = BusEvent::Changes(changes.clone());
        assert_eq!(event_bodies(&event, 1 << 20).len(), 1);
        let max = event.encode().len() / 5;
        let bodies = event_bodies(&event, max);
        assert!(bodies.len() >= 5, "{} parts", bodies.len());
        let mut back = Vec::new();
        for b in &bodies {
            assert!(b.len() <= max);
            match BusEvent::decode(b).expect("decodes") {
                BusEvent::Changes(part) => back.extend(part),
                other => panic!("not a batch: {other:?}"),
            }
        }
        assert_eq!(back, changes);
    }

    #[test]
    fn tokens_are_subject_and_stream_safe() {
        assert_eq!(token("chat"), "63686174");
        assert_eq!(token("$layer/a.b"), "246c617965722f612e62");
        let long = "x".repeat(200);
        let t = token(&long);
        assert!(t.len() < 120, "{}", t.len());
        assert_ne!(t, token(&"x".repeat(199)));
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_'));
        assert!(check_prefix("gs_test-1").is_ok());
        assert!(check_prefix("a.b").is_err() && check_prefix("").is_err());
    }

    #[test]
    fn membership_messages_round_trip() {
        let msgs = [
            MemberMsg::Hello { to: None },
            MemberMsg::Hello {
                to: Some("n1".into()),
            },
            MemberMsg::Beat {
                node: "n1".into(),
                version: 7,
            },
            MemberMsg::Delta {
                node: "n1".into(),
                version: 8,
                topic: "chat".into(),
                key: "s1/1".into(),
                data: Some(Bytes::from_static(b"{}")),
            },
            MemberMsg::Delta {
                node: "n1".into(),
                version: 9,
                topic: "chat".into(),
                key: "s1/1".into(),
                data: None,
            },
            MemberMsg::State {
                node: "n2".into(),
                version: 3,
                entries: vec![("a".into(), "k".into(), Bytes::from_static(b"x"))],
            },
        ];
        for m in msgs {
            assert_eq!(MemberMsg::decode(m.encode()), Some(m));
        }
        assert_eq!(MemberMsg::decode(Bytes::from_static(&[3, 0, 0])), None);
    }
}
