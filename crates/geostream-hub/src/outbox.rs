//! The bounded queue between the hub and one connection's writer task.
//!
//! The hub never waits on a socket: it pushes into an [`Outbox`] under a short, uncontended
//! lock and moves on. The writer drains the outbox in chunks. The queue is bounded in bytes:
//! past the budget the outbox applies the overflow policy (see [`Outbox::push`]), and a
//! connection that stays over its hard limit is closed as a slow consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::prepared::Prepared;

/// Limits of one outbox.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    /// Bytes that may wait in the queue. Past this, pushes are dropped (channel messages,
    /// recorded as a gap) until the queue drains.
    pub budget_bytes: usize,
    /// How long a connection may keep dropping before it is closed as a slow consumer.
    pub slow_grace: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            budget_bytes: 4 << 20,
            slow_grace: Duration::from_secs(10),
        }
    }
}

/// Something for the writer to send.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// A push of subscription `sub`, encoded by the writer for its connection's encoding.
    Push {
        /// Subscription id spliced into the frame.
        sub: u32,
        /// The push, shared by every subscriber.
        push: Arc<Prepared>,
    },
    /// A state push (a feature of a layer subscription) keyed by what it is the state of:
    /// a newer push with the same `(sub, key)` replaces it while it waits (coalescing).
    State {
        /// Subscription id spliced into the frame.
        sub: u32,
        /// The feature id (or tile key) the push is the state of.
        key: Arc<str>,
        /// The push, shared by every subscriber.
        push: Arc<Prepared>,
    },
    /// A finished frame in this connection's encoding (a response or notification).
    Frame(Bytes),
    /// A queued item that was superseded by a coalesced one; writers skip it.
    Skip,
    /// A transport control message (WebSocket ping or pong payload).
    Control(Control),
    /// Messages of a stream subscription were dropped from `from` on; the writer encodes a
    /// `gap` push so the client can recover them from history.
    Gap {
        /// Subscription id.
        sub: u32,
        /// The channel.
        channel: Arc<str>,
        /// First dropped offset.
        from: u64,
        /// The epoch the offset belongs to.
        epoch: Arc<str>,
    },
}

/// Transport control messages queued behind data, so they keep their order.
#[derive(Clone, Debug)]
pub enum Control {
    /// Send a ping with this payload.
    Ping(Bytes),
    /// Answer a ping with this payload.
    Pong(Bytes),
}

impl Outgoing {
    fn cost(&self) -> usize {
        // A fixed overhead per item keeps a flood of tiny pushes bounded too.
        32 + match self {
            Outgoing::Skip => return 0,
            Outgoing::Push { push, .. } | Outgoing::State { push, .. } => push.cost(),
            Outgoing::Frame(b) => b.len(),
            Outgoing::Control(Control::Ping(b) | Control::Pong(b)) => b.len(),
            Outgoing::Gap { channel, .. } => 48 + channel.len(),
        }
    }
}

use geostream_core::error::CloseCode;
pub use geostream_core::error::CloseReason;

/// What [`Outbox::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// Over budget: not queued.
    Dropped,
    /// The outbox is closed (the connection is going away): not queued.
    Closed,
}

struct State {
    queue: VecDeque<Outgoing>,
    /// Gaps not yet queued: one per subscription that lost messages since its last delivery.
    gaps: Vec<Outgoing>,
    /// Absolute position (see `base`) of each queued state push, by `(sub, key)`.
    keys: HashMap<(u32, Arc<str>), u64>,
    /// State pushes that did not fit: the latest (coalesced) state per `(sub, key)`, queued
    /// in sequence order once the queue has drained to half its budget.
    overflow: HashMap<(u32, Arc<str>), Outgoing>,
    /// Absolute position of the queue's front item.
    base: u64,
    bytes: usize,
    close: Option<CloseReason>,
    /// When the outbox first refused a push since it last drained below budget.
    over_since: Option<Instant>,
}

/// Counters shared by every outbox of a hub.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Items queued.
    pub queued: AtomicU64,
    /// Items refused for lack of budget.
    pub dropped: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_closed: AtomicU64,
    /// Bytes currently queued in all outboxes.
    pub queued_bytes: AtomicU64,
    /// State pushes merged into a newer one instead of being sent twice.
    pub coalesced: AtomicU64,
}

/// What queueing under the lock changed, told to the shared counters and the writer once
/// the lock is released.
#[derive(Default)]
struct Tally {
    queued: u64,
    queued_bytes: u64,
    unqueued_bytes: u64,
    wake: bool,
}

/// One connection's outbound queue.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when the queue drains below half its budget (for producers that can wait, such
    /// as snapshot streams). Separate from `notify`, which belongs to the writer.
    room: Notify,
    limits: OutboxLimits,
    stats: Arc<OutboxStats>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits, stats: Arc<OutboxStats>) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                gaps: Vec::new(),
                keys: HashMap::new(),
                overflow: HashMap::new(),
                base: 0,
                bytes: 0,
                close: None,
                over_since: None,
            }),
            notify: Notify::new(),
            room: Notify::new(),
            limits,
            stats,
        }
    }

    /// The limits.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Queues an item unless the outbox is over budget or closed. Never waits.
    ///
    /// Responses and control messages should use [`Outbox::push_always`]: they are the
    /// answer to something the client asked and are small.
    pub fn push(&self, item: Outgoing) -> PushOutcome {
        let cost = item.cost();
        let s = self.state.lock();
        if s.close.is_some() {
            return PushOutcome::Closed;
        }
        if s.bytes + cost > self.limits.budget_bytes {
            return self.refuse(s);
        }
        self.enqueue(s, item, cost);
        PushOutcome::Queued
    }

    /// Queues a message of a stream subscription (a channel message with an offset). When it
    /// does not fit, the loss is remembered as a gap, and the `gap` push is queued before the
    /// subscription's next message (or as soon as the queue has drained to half its budget),
    /// so the client always learns what it missed, in order.
    pub fn push_stream(
        &self,
        sub: u32,
        push: Arc<Prepared>,
        channel: &Arc<str>,
        offset: u64,
        epoch: &Arc<str>,
    ) -> PushOutcome {
        let item = Outgoing::Push { sub, push };
        let cost = item.cost();
        let mut s = self.state.lock();
        if s.close.is_some() {
            return PushOutcome::Closed;
        }
        let pending = if s.gaps.is_empty() {
            None
        } else {
            s.gaps
                .iter()
                .position(|g| matches!(g, Outgoing::Gap { sub: gs, .. } if *gs == sub))
        };
        let gap_cost = pending.map_or(0, |i| s.gaps[i].cost());
        if s.bytes + cost + gap_cost > self.limits.budget_bytes {
            if pending.is_none() {
                s.gaps.push(Outgoing::Gap {
                    sub,
                    channel: channel.clone(),
                    from: offset,
                    epoch: epoch.clone(),
                });
            }
            return self.refuse(s);
        }
        if let Some(i) = pending {
            let gap = s.gaps.swap_remove(i);
            s.queue.push_back(gap);
            s.bytes += gap_cost;
            self.stats
                .queued_bytes
                .fetch_add(gap_cost as u64, Ordering::Relaxed);
        }
        self.enqueue(s, item, cost);
        PushOutcome::Queued
    }

    /// Queues a state push (a feature of a layer subscription). Under pressure (a quarter of
    /// the budget queued), if a push for the same `(sub, key)` is still waiting, the two are
    /// merged ([`crate::prepared::coalesce`]) and the result goes to the back of the queue (so
    /// sequence numbers stay in order on the wire); over budget, the merged state waits aside
    /// and is queued once the queue has drained, so the client always ends at the latest state.
    pub fn push_state(&self, sub: u32, key: &Arc<str>, push: Arc<Prepared>) -> PushOutcome {
        let mut tally = Tally::default();
        let mut s = self.state.lock();
        let out = self.state_locked(&mut s, sub, key, push, &mut tally);
        drop(s);
        self.settle(tally);
        out
    }

    /// Queues several state pushes for one subscription under one lock (the pushes a batch
    /// of changes brings it), in order, with [`Outbox::push_state`]'s rules for each. Returns
    /// how many were queued (stops at the first refusal that closes the outbox).
    pub fn push_states<'k>(
        &self,
        sub: u32,
        items: impl IntoIterator<Item = (&'k Arc<str>, Arc<Prepared>)>,
    ) -> u64 {
        let mut tally = Tally::default();
        let mut queued = 0;
        let mut s = self.state.lock();
        for (key, push) in items {
            match self.state_locked(&mut s, sub, key, push, &mut tally) {
                PushOutcome::Queued => queued += 1,
                PushOutcome::Dropped => {}
                PushOutcome::Closed => break,
            }
        }
        drop(s);
        self.settle(tally);
        queued
    }

    fn state_locked(
        &self,
        s: &mut State,
        sub: u32,
        key: &Arc<str>,
        push: Arc<Prepared>,
        tally: &mut Tally,
    ) -> PushOutcome {
        if s.close.is_some() {
            return PushOutcome::Closed;
        }
        // A client that keeps up gets every transition; coalescing (which merges transitions)
        // starts only once a quarter of the budget is queued, and costs nothing before.
        if s.bytes < self.limits.budget_bytes / 4 && s.overflow.is_empty() && s.keys.is_empty() {
            let item = Outgoing::State {
                sub,
                key: key.clone(),
                push,
            };
            let cost = item.cost();
            Self::enqueue_locked(s, item, cost, tally);
            return PushOutcome::Queued;
        }
        let k = (sub, key.clone());
        let mut push = push;
        let mut merged = false;
        if let Some(abs) = s.keys.remove(&k) {
            let i = (abs - s.base) as usize;
            if let Some(old) = s
                .queue
                .get_mut(i)
                .map(|slot| std::mem::replace(slot, Outgoing::Skip))
            {
                s.bytes -= old.cost().min(s.bytes);
                tally.unqueued_bytes += old.cost() as u64;
                if let Outgoing::State { push: older, .. } = old {
                    merged = true;
                    match crate::prepared::coalesce(&older, &push) {
                        Some(p) => push = p,
                        None => {
                            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                            return PushOutcome::Queued;
                        }
                    }
                }
            }
        } else if let Some(Outgoing::State { push: older, .. }) = s.overflow.remove(&k) {
            merged = true;
            match crate::prepared::coalesce(&older, &push) {
                Some(p) => push = p,
                None => {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    return PushOutcome::Queued;
                }
            }
        }
        if merged {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        let item = Outgoing::State {
            sub,
            key: key.clone(),
            push,
        };
        let cost = item.cost();
        if s.bytes + cost > self.limits.budget_bytes || !s.overflow.is_empty() {
            // Nothing is lost: the latest state waits aside. Once anything waits aside, later
            // states wait too, so they are queued in order after it.
            s.overflow.insert(k, item);
            let now = Instant::now();
            let since = *s.over_since.get_or_insert(now);
            if now.duration_since(since) >= self.limits.slow_grace {
                s.close = Some(CloseCode::SlowConsumer.into());
                self.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                tally.wake = true;
                return PushOutcome::Closed;
            }
            return PushOutcome::Queued;
        }
        let abs = s.base + s.queue.len() as u64;
        s.keys.insert(k, abs);
        Self::enqueue_locked(s, item, cost, tally);
        PushOutcome::Queued
    }

    /// Appends to the queue; what the shared counters and the writer must hear is collected
    /// in `tally` and told once the lock is released ([`Outbox::settle`]).
    fn enqueue_locked(s: &mut State, item: Outgoing, cost: usize, tally: &mut Tally) {
        // Wake the writer only on the empty -> non-empty edge: while it is busy it will find
        // the new items on its next drain without a wake-up per item.
        tally.wake |= s.queue.is_empty();
        s.queue.push_back(item);
        s.bytes += cost;
        tally.queued += 1;
        tally.queued_bytes += cost as u64;
    }

    fn settle(&self, tally: Tally) {
        if tally.queued > 0 {
            self.stats.queued.fetch_add(tally.queued, Ordering::Relaxed);
        }
        if tally.queued_bytes != tally.unqueued_bytes {
            if tally.queued_bytes > tally.unqueued_bytes {
                self.stats
                    .queued_bytes
                    .fetch_add(tally.queued_bytes - tally.unqueued_bytes, Ordering::Relaxed);
            } else {
                self.stats
                    .queued_bytes
                    .fetch_sub(tally.unqueued_bytes - tally.queued_bytes, Ordering::Relaxed);
            }
        }
        if tally.wake {
            self.notify.notify_one();
        }
    }

    fn refuse(&self, mut s: parking_lot::MutexGuard<'_, State>) -> PushOutcome {
        let now = Instant::now();
        let since = *s.over_since.get_or_insert(now);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if now.duration_since(since) >= self.limits.slow_grace {
            s.close = Some(CloseCode::SlowConsumer.into());
            self.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            drop(s);
            self.notify.notify_one();
            return PushOutcome::Closed;
        }
        PushOutcome::Dropped
    }

    /// Queues an item regardless of the budget (responses, pongs); refused only when closed.
    pub fn push_always(&self, item: Outgoing) -> PushOutcome {
        let cost = item.cost();
        let s = self.state.lock();
        if s.close.is_some() {
            return PushOutcome::Closed;
        }
        self.enqueue(s, item, cost);
        PushOutcome::Queued
    }

    fn enqueue(&self, mut s: parking_lot::MutexGuard<'_, State>, item: Outgoing, cost: usize) {
        let was_empty = s.queue.is_empty();
        s.queue.push_back(item);
        s.bytes += cost;
        drop(s);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.stats
            .queued_bytes
            .fetch_add(cost as u64, Ordering::Relaxed);
        // Wake the writer only on the empty -> non-empty edge: while it is busy it will find
        // the new items on its next drain without a wake-up per item.
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Asks the writer to close the connection after what is already queued.
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.state.lock();
        if s.close.is_none() {
            s.close = Some(reason);
        }
        drop(s);
        self.notify.notify_one();
        self.room.notify_waiters();
    }

    /// The close reason, once closing.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().close
    }

    /// Waits until there is something to drain or the outbox is closing.
    pub async fn ready(&self) {
        loop {
            let notified = self.notify.notified();
            {
                let s = self.state.lock();
                let room = s.bytes < self.limits.budget_bytes / 2;
                if !s.queue.is_empty()
                    || s.close.is_some()
                    || (room && (!s.gaps.is_empty() || !s.overflow.is_empty()))
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Waits until the queue is below half its budget. Returns `false` if the outbox closed.
    pub async fn wait_room(&self) -> bool {
        loop {
            let room = self.room.notified();
            {
                let s = self.state.lock();
                if s.close.is_some() {
                    return false;
                }
                if s.bytes < self.limits.budget_bytes / 2 {
                    return true;
                }
            }
            room.await;
        }
    }

    /// Moves queued items into `out`, up to about `max_bytes`, and returns the close reason
    /// once the queue is empty and the outbox is closing.
    pub fn drain(&self, out: &mut VecDeque<Outgoing>, max_bytes: usize) -> Option<CloseReason> {
        let mut s = self.state.lock();
        if !s.gaps.is_empty() && s.bytes < self.limits.budget_bytes / 2 {
            let gaps = std::mem::take(&mut s.gaps);
            for g in gaps {
                s.bytes += g.cost();
                self.stats
                    .queued_bytes
                    .fetch_add(g.cost() as u64, Ordering::Relaxed);
                s.queue.push_back(g);
            }
        }
        if !s.overflow.is_empty() && s.bytes < self.limits.budget_bytes / 2 {
            let mut waiting: Vec<((u32, Arc<str>), Outgoing)> = s.overflow.drain().collect();
            waiting.sort_by_key(|(_, item)| match item {
                Outgoing::State { push, .. } => push.order(),
                _ => 0,
            });
            for (k, item) in waiting {
                let abs = s.base + s.queue.len() as u64;
                s.keys.insert(k, abs);
                s.bytes += item.cost();
                self.stats
                    .queued_bytes
                    .fetch_add(item.cost() as u64, Ordering::Relaxed);
                s.queue.push_back(item);
            }
        }
        let mut taken = 0;
        while taken < max_bytes {
            let Some(item) = s.queue.pop_front() else {
                break;
            };
            let abs = s.base;
            s.base += 1;
            if let Outgoing::State { sub, key, .. } = &item {
                let k = (*sub, key.clone());
                if s.keys.get(&k) == Some(&abs) {
                    s.keys.remove(&k);
                }
            }
            if matches!(item, Outgoing::Skip) {
                continue;
            }
            taken += item.cost();
            out.push_back(item);
        }
        s.bytes -= taken.min(s.bytes);
        if s.bytes < self.limits.budget_bytes / 2 {
            s.over_since = None;
        }
        if s.queue.is_empty() && s.queue.capacity() > 256 {
            // Give back memory after a burst: idle connections should cost little.
            s.queue = VecDeque::new();
        }
        if s.keys.is_empty() && s.keys.capacity() > 64 {
            s.keys = HashMap::new();
        }
        let close = if s.queue.is_empty() && s.overflow.is_empty() {
            s.close
        } else {
            None
        };
        let roomy = s.bytes < self.limits.budget_bytes / 2;
        drop(s);
        if roomy {
            self.room.notify_waiters();
        }
        self.stats
            .queued_bytes
            .fetch_sub(taken as u64, Ordering::Relaxed);
        close
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Forgets everything queued (the connection is gone).
    pub fn clear(&self) {
        let mut s = self.state.lock();
        let bytes = s.bytes;
        s.queue = VecDeque::new();
        s.gaps = Vec::new();
        s.keys = HashMap::new();
        s.overflow = HashMap::new();
        s.bytes = 0;
        if s.close.is_none() {
            s.close = Some(CloseCode::Normal.into());
        }
        drop(s);
        self.stats
            .queued_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed);
        self.room.notify_waiters();
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Outbox")
            .field("items", &s.queue.len())
            .field("bytes", &s.bytes)
            .field("close", &s.close)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Outgoing {
        Outgoing::Frame(Bytes::from(vec![b'x'; n]))
    }

    #[tokio::test]
    async fn bounded_and_drains_in_order() {
        let stats = Arc::new(OutboxStats::default());
        let o = Outbox::new(
            OutboxLimits {
                budget_bytes: 1000,
                slow_grace: Duration::from_secs(60),
            },
            stats.clone(),
        );
        let mut n = 0;
        while o.push(frame(100)) == PushOutcome::Queued {
            n += 1;
        }
        assert_eq!(n, 7, "7 x (100 + 32) fit in 1000 bytes");
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(
            o.push_always(frame(100)),
            PushOutcome::Queued,
            "responses bypass the budget"
        );
        o.ready().await;
        let mut out = VecDeque::new();
        assert!(o.drain(&mut out, 300).is_none());
        assert_eq!(out.len(), 3);
        assert!(o.drain(&mut out, usize::MAX).is_none());
        assert_eq!(out.len(), 8);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(stats.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn stays_over_budget_then_closes_as_slow() {
        let stats = Arc::new(OutboxStats::default());
        let o = Outbox::new(
            OutboxLimits {
                budget_bytes: 200,
                slow_grace: Duration::from_millis(20),
            },
            stats.clone(),
        );
        assert_eq!(o.push(frame(150)), PushOutcome::Queued);
        assert_eq!(o.push(frame(150)), PushOutcome::Dropped);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(o.push(frame(150)), PushOutcome::Closed);
        assert_eq!(
            o.close_reason().unwrap().close_code(),
            Some(CloseCode::SlowConsumer)
        );
        assert_eq!(stats.slow_closed.load(Ordering::Relaxed), 1);
        let mut out = VecDeque::new();
        let close = o.drain(&mut out, usize::MAX);
        assert_eq!(
            out.len(),
            1,
            "what was queued before the close is still delivered"
        );
        assert!(close.is_some());
    }

    fn message(offset: u64) -> Arc<Prepared> {
        Prepared::new(crate::prepared::PushEvent::Message {
            channel: "c".into(),
            offset,
            data: geostream_core::Payload::json_value(&"x".repeat(60)),
        })
    }

    #[tokio::test]
    async fn gap_precedes_the_next_message() {
        let o = Outbox::new(
            OutboxLimits {
                budget_bytes: 400,
                slow_grace: Duration::from_secs(60),
            },
            Arc::new(OutboxStats::default()),
        );
        let (ch, ep): (Arc<str>, Arc<str>) = ("c".into(), "e".into());
        let mut offset = 0;
        loop {
            offset += 1;
            if o.push_stream(1, message(offset), &ch, offset, &ep) == PushOutcome::Dropped {
                break;
            }
        }
        let first_dropped = offset;
        offset += 1;
        assert_eq!(
            o.push_stream(1, message(offset), &ch, offset, &ep),
            PushOutcome::Dropped
        );
        let mut out = VecDeque::new();
        o.drain(&mut out, usize::MAX);
        let delivered = out.len();
        assert_eq!(delivered as u64, first_dropped - 1);
        offset += 1;
        assert_eq!(
            o.push_stream(1, message(offset), &ch, offset, &ep),
            PushOutcome::Queued
        );
        out.clear();
        o.drain(&mut out, usize::MAX);
        assert!(matches!(out[0], Outgoing::Gap { sub: 1, from, .. } if from == first_dropped));
        assert!(
            matches!(&out[1], Outgoing::Push { push, .. } if matches!(push.event(), crate::prepared::PushEvent::Message { offset: o, .. } if *o == offset))
        );
    }

    #[tokio::test]
    async fn pending_gap_is_flushed_by_draining() {
        let o = Outbox::new(
            OutboxLimits {
                budget_bytes: 300,
                slow_grace: Duration::from_secs(60),
            },
            Arc::new(OutboxStats::default()),
        );
        let (ch, ep): (Arc<str>, Arc<str>) = ("c".into(), "e".into());
        let mut offset = 0;
        while o.push_stream(2, message(offset + 1), &ch, offset + 1, &ep) == PushOutcome::Queued {
            offset += 1;
        }
        let mut out = VecDeque::new();
        o.drain(&mut out, usize::MAX);
        out.clear();
        tokio::time::timeout(Duration::from_secs(1), o.ready())
            .await
            .expect("a pending gap wakes the writer");
        o.drain(&mut out, usize::MAX);
        assert!(matches!(out[0], Outgoing::Gap { sub: 2, from, .. } if from == offset + 1));
    }

    #[tokio::test]
    async fn wakes_a_waiting_writer() {
        let o = Arc::new(Outbox::new(
            OutboxLimits::default(),
            Arc::new(OutboxStats::default()),
        ));
        let o2 = o.clone();
        let w = tokio::spawn(async move {
            o2.ready().await;
            let mut out = VecDeque::new();
            o2.drain(&mut out, usize::MAX);
            out.len()
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        o.push(frame(1));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap(),
            1
        );
    }
}
