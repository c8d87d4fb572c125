//! The hub: this node's subscriptions, and fan-out of events to the sessions that match.
//!
//! The hub knows subscriptions, not sockets. Transports create a [`Session`] per connection and
//! drain its [`Outbox`]; the broker hands the hub every message that reaches this node; the
//! hub finds the matching subscriptions, prepares each push once ([`Prepared`]) and queues it
//! in each matching outbox without ever waiting.
#![warn(missing_docs)]

pub mod bus;
pub mod layers;
pub mod log;
pub mod outbox;
pub mod prepared;
pub mod session;
pub mod streams;
pub mod tiles;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use geostream_core::api::{self, ClientInfo};
use geostream_core::codec::Encoding;
use geostream_core::payload::Payload;
use parking_lot::{Mutex, RwLock};

pub use bus::{BusHandler, Gap, LOCK_HOLDERS, layer_topic, presence_channel};
pub use layers::{ChangeView, Dispatched, LayerMove, LayerRecovering, Side, transition};
pub use log::{ChangeRun, LayerLog, SnapshotPages, SnapshotQuery};
pub use outbox::{CloseReason, Control, Outbox, OutboxLimits, OutboxStats, Outgoing, PushOutcome};
pub use prepared::{Prepared, PushEvent};
pub use session::{Session, SubTarget};
pub use streams::{
    PendingChannelSub, PendingLayerSub, PendingMove, StreamError, StreamResult, Streams,
    StreamsConfig,
};

/// Errors of hub operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubError {
    /// The session already holds as many subscriptions as allowed.
    #[error("too many subscriptions (at most {0} per connection)")]
    TooManySubscriptions(usize),
    /// The session is already subscribed to this channel.
    #[error("already subscribed to this channel (subscription {0})")]
    AlreadySubscribed(u32),
    /// No such subscription on this session.
    #[error("unknown subscription {0}")]
    UnknownSubscription(u32),
}

/// Limits the hub applies.
#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    /// Subscriptions per session.
    pub max_subscriptions: usize,
    /// Outbox limits of every session.
    pub outbox: OutboxLimits,
    /// Live messages buffered per subscription while it catches up from history; past this
    /// the subscription continues with a gap notice.
    pub recovery_buffer: usize,
    /// Find the layer subscriptions a change concerns with an R-tree of their areas (true,
    /// the default) or by testing every subscription of the layer (for comparison).
    pub spatial_index: bool,
    /// Shards of each layer's subscriptions (at least 1): a large run of changes is routed
    /// through the shards in parallel, so one hot layer uses several cores.
    pub dispatch_shards: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_subscriptions: 128,
            outbox: OutboxLimits::default(),
            recovery_buffer: 10_000,
            spatial_index: true,
            dispatch_shards: 1,
        }
    }
}

/// Counters of the hub, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Outbox counters of all sessions.
    pub outbox: Arc<OutboxStats>,
    /// Events dispatched (before fan-out).
    pub events: AtomicU64,
    /// Pushes handed to outboxes (after fan-out).
    pub deliveries: AtomicU64,
    /// Sessions open.
    pub sessions: AtomicU64,
    /// Subscriptions open.
    pub subscriptions: AtomicU64,
}

/// Shards of the channel table, so subscribe/unsubscribe on one channel does not stall
/// dispatch on another.
const SHARDS: usize = 32;

/// Live messages held for a subscription while it replays history.
struct Pending {
    items: Vec<(u64, Arc<Prepared>, Arc<str>)>,
    overflow_from: Option<u64>,
}

/// State of one channel subscription shared between the table and its recovery.
pub struct SubState {
    recovering: AtomicBool,
    pending: Mutex<Pending>,
    /// The epoch of the subscription's stream (set when it goes live) and the highest offset
    /// of it queued so far (from its start position on). A message at or below it is one
    /// the subscriber already has: with NATS, a node whose delivery lags behind JetStream
    /// (catching up after losing its connection) hands over messages older than the
    /// position a subscription made meanwhile started from, which would reach the client
    /// twice and out of order (found by bench/chaos-cluster.sh).
    epoch: std::sync::OnceLock<Arc<str>>,
    upto: AtomicU64,
}

impl SubState {
    /// Whether the subscriber already has `offset` of `epoch`; if not, it is the new high.
    fn already_has(&self, offset: u64, epoch: &Arc<str>) -> bool {
        match self.epoch.get() {
            Some(e) if **e == **epoch => self.upto.fetch_max(offset, Ordering::AcqRel) >= offset,
            _ => false,
        }
    }
}

struct ChannelSub {
    session: Arc<Session>,
    sub: u32,
    presence: bool,
    state: Arc<SubState>,
}

struct ChannelEntry {
    name: Arc<str>,
    subs: Vec<ChannelSub>,
}

/// A channel subscription that is registered but still catching up; finish it with
/// [`Hub::finish_recovery`].
pub struct Recovering {
    /// The subscription id.
    pub sub: u32,
    /// The channel.
    pub channel: Arc<str>,
    /// Whether this node had no other subscriber of the channel (it must start receiving
    /// the channel's messages from the broker).
    pub first_on_node: bool,
    session: Arc<Session>,
    state: Arc<SubState>,
}

/// A subscription that was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Its id.
    pub sub: u32,
    /// What it was subscribed to.
    pub target: SubTarget,
    /// Whether it was the last subscriber of its channel or layer on this node.
    pub last_on_node: bool,
}

/// This node's subscriptions and fan-out.
pub struct Hub {
    shards: Vec<RwLock<HashMap<Arc<str>, ChannelEntry>>>,
    layers: RwLock<HashMap<Arc<str>, Arc<Mutex<layers::LayerEntry>>>>,
    hasher: RandomState,
    limits: HubLimits,
    stats: Arc<HubStats>,
    next_session: AtomicU64,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            layers: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
            limits,
            stats: Arc::new(HubStats::default()),
            next_session: AtomicU64::new(1),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &HubLimits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<HubStats> {
        &self.stats
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<Arc<str>, ChannelEntry>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Creates a session for a new connection.
    pub fn new_session(&self, encoding: Encoding, user: Option<String>) -> Arc<Session> {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let id: Arc<str> = session_id(n).into();
        let client = ClientInfo {
            session: id.to_string(),
            user,
            info: None,
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Arc::new(Session::new(
            id,
            encoding,
            client,
            Outbox::new(self.limits.outbox, self.stats.outbox.clone()),
        ))
    }

    /// Registers a channel subscription. Live messages are held back until
    /// [`Hub::finish_recovery`], so the subscribe response and any replayed history can be
    /// queued first.
    pub fn add_channel_sub(
        &self,
        session: &Arc<Session>,
        channel: &str,
        presence: bool,
    ) -> Result<Recovering, HubError> {
        let mut shard = self.shard(channel).write();
        let name: Arc<str> = shard
            .get(channel)
            .map_or_else(|| channel.into(), |e| e.name.clone());
        let sub = session.add_sub(
            SubTarget::Channel {
                channel: name.clone(),
                presence,
            },
            self.limits.max_subscriptions,
        )?;
        let state = Arc::new(SubState {
            recovering: AtomicBool::new(true),
            pending: Mutex::new(Pending {
                items: Vec::new(),
                overflow_from: None,
            }),
            epoch: std::sync::OnceLock::new(),
            upto: AtomicU64::new(0),
        });
        let entry = shard.entry(name.clone()).or_insert_with(|| ChannelEntry {
            name: name.clone(),
            subs: Vec::new(),
        });
        let first_on_node = entry.subs.is_empty();
        entry.subs.push(ChannelSub {
            session: session.clone(),
            sub,
            presence,
            state: state.clone(),
        });
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(Recovering {
            sub,
            channel: name,
            first_on_node,
            session: session.clone(),
            state,
        })
    }

    /// Ends the catch-up of a subscription: queues the live messages held back with an offset
    /// above `after`, then lets new ones through directly (those of `epoch` only above the
    /// highest offset queued). Returns how many were queued.
    pub fn finish_recovery(&self, r: Recovering, after: u64, epoch: &Arc<str>) -> usize {
        let mut p = r.state.pending.lock();
        let _ = r.state.epoch.set(epoch.clone());
        r.state.upto.store(after, Ordering::Release);
        let items = std::mem::take(&mut p.items);
        let mut n = 0;
        let mut gap_from = p.overflow_from.take();
        for (offset, push, epoch) in items {
            if offset <= after || r.state.already_has(offset, &epoch) {
                continue;
            }
            if let Some(from) = gap_from.take() {
                // The buffer overflowed: tell the client where its stream has a hole.
                let _ = r.session.outbox.push_always(Outgoing::Gap {
                    sub: r.sub,
                    channel: r.channel.clone(),
                    from: from.max(after + 1),
                    epoch: epoch.clone(),
                });
            }
            if r.session
                .outbox
                .push_stream(r.sub, push, &r.channel, offset, &epoch)
                == PushOutcome::Queued
            {
                n += 1;
            }
        }
        r.state.recovering.store(false, Ordering::Release);
        n
    }

    /// Removes one subscription of a session.
    pub fn remove_sub(&self, session: &Session, sub: u32) -> Result<Removed, HubError> {
        let target = session
            .remove_sub(sub)
            .ok_or(HubError::UnknownSubscription(sub))?;
        Ok(self.unregister(session, sub, target))
    }

    fn unregister(&self, session: &Session, sub: u32, target: SubTarget) -> Removed {
        let channel = match &target {
            SubTarget::Channel { channel, .. } => channel.clone(),
            SubTarget::Layer { layer } => {
                let last_on_node = self.unregister_layer_sub(session, sub, layer);
                return Removed {
                    sub,
                    target,
                    last_on_node,
                };
            }
            SubTarget::Tiles { .. } => return self.unregister_tile_sub(sub, target),
        };
        let mut shard = self.shard(&channel).write();
        let mut last_on_node = false;
        if let Some(entry) = shard.get_mut(&*channel) {
            if let Some(i) = entry
                .subs
                .iter()
                .position(|s| s.sub == sub && Arc::ptr_eq(s.session.id(), session.id()))
            {
                entry.subs.swap_remove(i);
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            if entry.subs.is_empty() {
                shard.remove(&*channel);
                last_on_node = true;
            }
        }
        Removed {
            sub,
            target,
            last_on_node,
        }
    }

    /// Removes a closed session and all its subscriptions.
    pub fn remove_session(&self, session: &Session) -> Vec<Removed> {
        let removed = session
            .take_subs()
            .into_iter()
            .map(|(sub, target)| self.unregister(session, sub, target))
            .collect();
        session.outbox.clear();
        self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        removed
    }

    /// Whether this node has any subscriber of `channel`.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.shard(channel).read().contains_key(channel)
    }

    /// Who is subscribed to `channel` on this node (one entry per session).
    pub fn presence(&self, channel: &str) -> Vec<ClientInfo> {
        let shard = self.shard(channel).read();
        shard
            .get(channel)
            .map(|e| e.subs.iter().map(|s| s.session.client()).collect())
            .unwrap_or_default()
    }

    /// Fans a channel message out to this node's subscribers of `channel`.
    ///
    /// Must be called in offset order per channel (brokers guarantee it).
    pub fn dispatch_message(&self, channel: &str, offset: u64, epoch: &Arc<str>, data: Payload) {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        let push = Prepared::new(PushEvent::Message {
            channel: entry.name.clone(),
            offset,
            data,
        });
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let mut delivered = 0u64;
        for s in &entry.subs {
            if s.state.recovering.load(Ordering::Acquire) {
                let mut p = s.state.pending.lock();
                // Checked again under the lock: `finish_recovery` flips the flag while holding
                // it, so a message is either buffered before the flush or queued after it.
                if s.state.recovering.load(Ordering::Acquire) {
                    if p.items.len() < self.limits.recovery_buffer {
                        p.items.push((offset, push.clone(), epoch.clone()));
                    } else if p.overflow_from.is_none() {
                        p.overflow_from = Some(offset);
                    }
                    continue;
                }
            }
            if s.state.already_has(offset, epoch) {
                continue;
            }
            if s.session
                .outbox
                .push_stream(s.sub, push.clone(), &entry.name, offset, epoch)
                == PushOutcome::Queued
            {
                delivered += 1;
            }
        }
        self.stats
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Fans a join or leave out to this node's subscribers of `channel` that asked for
    /// presence pushes.
    pub fn dispatch_presence(&self, channel: &str, join: bool, client: ClientInfo) {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        if !entry.subs.iter().any(|s| s.presence) {
            return;
        }
        let push = Prepared::new(PushEvent::Presence {
            channel: entry.name.clone(),
            join,
            client,
        });
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        for s in entry.subs.iter().filter(|s| s.presence) {
            if s.session.outbox.push(Outgoing::Push {
                sub: s.sub,
                push: push.clone(),
            }) == PushOutcome::Queued
            {
                self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Hub {
    /// Fans a cursor move out to the presence subscribers of `channel` (a layer's presence
    /// channel). Cursors are state: a subscriber that falls behind gets each sender's latest
    /// position, not every step.
    pub fn dispatch_cursor(&self, channel: &str, cursor: api::CursorPush) {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        if !entry.subs.iter().any(|s| s.presence) {
            return;
        }
        let key: Arc<str> = Arc::from(format!("cursor:{}", cursor.client.session));
        let push = Prepared::new(PushEvent::Cursor { cursor });
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        for s in entry.subs.iter().filter(|s| s.presence) {
            if s.session.outbox.push_state(s.sub, &key, push.clone()) == PushOutcome::Queued {
                self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A session id: a node-unique counter mixed with randomness, so ids are not guessable and
/// do not repeat across restarts.
fn session_id(n: u64) -> String {
    use std::fmt::Write;
    let r = RandomState::new().hash_one(n);
    let mut s = String::with_capacity(20);
    let _ = write!(s, "{:x}{:08x}", n, r as u32);
    s
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn drain(s: &Session) -> Vec<Outgoing> {
        let mut out = VecDeque::new();
        s.outbox.drain(&mut out, usize::MAX);
        out.into()
    }

    fn offsets(items: &[Outgoing]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|i| match i {
                Outgoing::Push { push, .. } => match push.event() {
                    PushEvent::Message { offset, .. } => Some(*offset),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn data(i: u64) -> Payload {
        Payload::json_value(&i)
    }

    #[test]
    fn fan_out_shares_one_prepared_push() {
        let hub = Hub::new(HubLimits::default());
        let epoch: Arc<str> = "e".into();
        let sessions: Vec<_> = (0..3)
            .map(|_| hub.new_session(Encoding::Json, None))
            .collect();
        for s in &sessions {
            let r = hub.add_channel_sub(s, "c", false).unwrap();
            hub.finish_recovery(r, 0, &epoch);
        }
        hub.dispatch_message("c", 1, &epoch, data(1));
        hub.dispatch_message("other", 1, &epoch, data(1));
        let first: Vec<_> = sessions.iter().map(|s| drain(s)).collect();
        let ptrs: Vec<_> = first
            .iter()
            .map(|items| match &items[0] {
                Outgoing::Push { push, .. } => Arc::as_ptr(push),
                _ => panic!(),
            })
            .collect();
        assert!(
            ptrs.windows(2).all(|w| w[0] == w[1]),
            "one allocation shared by all subscribers"
        );
        assert_eq!(hub.stats().deliveries.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn recovery_holds_live_messages_and_deduplicates() {
        let hub = Hub::new(HubLimits::default());
        let epoch: Arc<str> = "e".into();
        let s = hub.new_session(Encoding::Msgpack, None);
        let r = hub.add_channel_sub(&s, "c", false).unwrap();
        assert!(r.first_on_node);
        // Messages 5..=8 arrive while the subscription reads history up to 6.
        for i in 5..=8 {
            hub.dispatch_message("c", i, &epoch, data(i));
        }
        assert!(
            drain(&s).is_empty(),
            "nothing is delivered before the subscription is live"
        );
        assert_eq!(hub.finish_recovery(r, 6, &epoch), 2);
        hub.dispatch_message("c", 9, &epoch, data(9));
        assert_eq!(offsets(&drain(&s)), vec![7, 8, 9]);
    }

    #[test]
    fn a_lagging_delivery_does_not_repeat_what_a_subscription_started_after() {
        // A node catching up after losing NATS delivers 4..=9 while a subscription made
        // meanwhile started at 6 (read from JetStream) and replayed up to it: only 7..=9 are
        // new to it. An older one delivered later still is not repeated either.
        let hub = Hub::new(HubLimits::default());
        let epoch: Arc<str> = "e".into();
        let s = hub.new_session(Encoding::Json, None);
        let r = hub.add_channel_sub(&s, "c", false).unwrap();
        assert_eq!(hub.finish_recovery(r, 6, &epoch), 0);
        for i in 4..=9 {
            hub.dispatch_message("c", i, &epoch, data(i));
        }
        hub.dispatch_message("c", 8, &epoch, data(8));
        hub.dispatch_message("c", 10, &epoch, data(10));
        assert_eq!(offsets(&drain(&s)), vec![7, 8, 9, 10]);
        // Another epoch (the history was reset) starts afresh.
        let other: Arc<str> = "f".into();
        hub.dispatch_message("c", 1, &other, data(1));
        assert_eq!(offsets(&drain(&s)), vec![1]);
    }

    #[test]
    fn limits_and_unsubscribe() {
        let hub = Hub::new(HubLimits {
            max_subscriptions: 2,
            ..HubLimits::default()
        });
        let s = hub.new_session(Encoding::Json, None);
        let a = hub.add_channel_sub(&s, "a", true).unwrap();
        assert_eq!(
            hub.add_channel_sub(&s, "a", true).err(),
            Some(HubError::AlreadySubscribed(a.sub))
        );
        let b = hub.add_channel_sub(&s, "b", false).unwrap();
        assert_eq!(
            hub.add_channel_sub(&s, "c", false).err(),
            Some(HubError::TooManySubscriptions(2))
        );
        let removed = hub.remove_sub(&s, a.sub).unwrap();
        assert!(removed.last_on_node);
        assert!(!hub.has_channel("a"));
        assert_eq!(
            hub.remove_sub(&s, a.sub).err(),
            Some(HubError::UnknownSubscription(a.sub))
        );
        let _ = b;
        assert_eq!(hub.remove_session(&s).len(), 1);
        assert_eq!(hub.stats().subscriptions.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn presence_pushes_go_only_to_those_who_asked() {
        let hub = Hub::new(HubLimits::default());
        let watcher = hub.new_session(Encoding::Json, Some("w".into()));
        let quiet = hub.new_session(Encoding::Json, None);
        for (s, p) in [(&watcher, true), (&quiet, false)] {
            let r = hub.add_channel_sub(s, "room", p).unwrap();
            hub.finish_recovery(r, 0, &"e".into());
        }
        assert_eq!(hub.presence("room").len(), 2);
        hub.dispatch_presence(
            "room",
            true,
            ClientInfo {
                session: "x".into(),
                user: None,
                info: None,
            },
        );
        assert_eq!(drain(&watcher).len(), 1);
        assert!(drain(&quiet).is_empty());
    }
}
