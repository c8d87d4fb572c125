//! The in-process broker: single node, no outside service, history in memory.
//!
//! History does not survive a restart; the epoch of every topic changes then, so clients
//! resuming across a restart are told plainly that their position cannot be recovered.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::{
    Broker, BrokerError, BrokerHandler, BusEvent, ClientInfo, HistoryLimits, HistoryPage,
    Publication, Result, StreamPosition, new_epoch, now_ms,
};

/// Shards of the topic table: publishers to different topics rarely meet on one lock.
const SHARDS: usize = 32;

/// The in-process broker. Cheap to clone.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

/// Topics hashed over a fixed number of shards so publishers to different
/// topics rarely contend on the same map lock.
type Shard = Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>>;

struct Inner {
    shards: Vec<Shard>,
    hasher: RandomState,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    limits: HistoryLimits,
}

struct Stream {
    epoch: Arc<str>,
    top: u64,
    history: VecDeque<(Instant, Publication)>,
    last_publish: Instant,
}

impl Stream {
    fn new() -> Self {
        Stream {
            epoch: new_epoch(),
            top: 0,
            history: VecDeque::new(),
            last_publish: Instant::now(),
        }
    }

    fn expire(&mut self, limits: &HistoryLimits, now: Instant) {
        while self.history.len() > limits.size {
            self.history.pop_front();
        }
        while let Some((t, _)) = self.history.front() {
            if now.duration_since(*t) > limits.ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

impl MemoryBroker {
    /// A broker keeping `limits` of history per topic. Call [`MemoryBroker::set_handler`]
    /// before publishing.
    pub fn new(limits: HistoryLimits) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
                handler: OnceLock::new(),
                limits,
            }),
        }
    }

    /// Sets the handler that receives every message. Only the first call has an effect.
    pub fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    fn shard(&self, topic: &str) -> &Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>> {
        &self.inner.shards[(self.inner.hasher.hash_one(topic) as usize) % SHARDS]
    }

    fn stream(&self, topic: &str) -> Arc<Mutex<Stream>> {
        let mut shard = self.shard(topic).lock();
        if let Some(s) = shard.get(topic) {
            return s.clone();
        }
        let s = Arc::new(Mutex::new(Stream::new()));
        shard.insert(topic.into(), s.clone());
        s
    }

    /// Drops expired history and forgets topics idle for longer than `meta_ttl`. The server
    /// calls this periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let limits = self.inner.limits;
        for shard in &self.inner.shards {
            shard.lock().retain(|_, s| {
                let mut s = s.lock();
                s.expire(&limits, now);
                now.duration_since(s.last_publish) < limits.meta_ttl
            });
        }
    }

    /// Sweeps (see [`MemoryBroker::sweep`]) every `period` while the broker lives.
    pub fn sweep_every(&self, period: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(period);
            loop {
                t.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                MemoryBroker { inner }.sweep();
            }
        });
    }

    /// Number of topics with state (for metrics).
    pub fn topics(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerHandler>> {
        self.inner.handler.get().ok_or(BrokerError::Closed)
    }

    /// Publishes synchronously (the in-process broker never waits).
    pub fn publish_now(&self, topic: &str, kind: u8, data: Bytes) -> Result<StreamPosition> {
        let handler = self.handler()?;
        let stream = self.stream(topic);
        let mut s = stream.lock();
        let now = Instant::now();
        s.top += 1;
        s.last_publish = now;
        let publication = Publication {
            offset: s.top,
            kind,
            data,
            time_ms: now_ms(),
        };
        // Delivery happens under the stream lock, so every subscriber sees one topic's
        // messages in offset order even when several tasks publish at once. The handler only
        // queues (it never waits on a socket), so the lock is held briefly.
        handler.on_publication(topic, &publication, &s.epoch);
        if self.inner.limits.size > 0 {
            s.history.push_back((now, publication));
            let limits = self.inner.limits;
            s.expire(&limits, now);
        }
        Ok(s.position())
    }

    /// Reads history synchronously.
    pub fn history_now(&self, topic: &str, since: Option<u64>, limit: usize) -> HistoryPage {
        let stream = self.stream(topic);
        let mut s = stream.lock();
        let limits = self.inner.limits;
        s.expire(&limits, Instant::now());
        let first_offset = s.history.front().map_or(s.top + 1, |(_, p)| p.offset);
        let publications: Vec<Publication> = match since {
            Some(since) => {
                // Offsets in history are consecutive, so the start index is arithmetic.
                let skip = (since + 1).saturating_sub(first_offset) as usize;
                s.history
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(|(_, p)| p.clone())
                    .collect()
            }
            None => {
                let skip = s.history.len().saturating_sub(limit);
                s.history
                    .iter()
                    .skip(skip)
                    .map(|(_, p)| p.clone())
                    .collect()
            }
        };
        HistoryPage {
            publications,
            position: s.position(),
            first_offset,
        }
    }
}

impl Broker for MemoryBroker {
    async fn publish(&self, topic: &str, kind: u8, data: Bytes) -> Result<StreamPosition> {
        self.publish_now(topic, kind, data)
    }

    async fn publish_event(&self, topic: &str, event: Arc<BusEvent>) -> Result<()> {
        self.handler()?.on_event(topic, &event);
        Ok(())
    }

    async fn history(&self, topic: &str, since: Option<u64>, limit: usize) -> Result<HistoryPage> {
        Ok(self.history_now(topic, since, limit))
    }

    async fn position(&self, topic: &str) -> Result<StreamPosition> {
        Ok(self.stream(topic).lock().position())
    }

    async fn subscribe(&self, _topic: &str) -> Result<()> {
        Ok(())
    }

    async fn unsubscribe(&self, _topic: &str) -> Result<()> {
        Ok(())
    }

    async fn set_member(&self, _topic: &str, _key: &str, _member: Option<&ClientInfo>) {}

    fn remote_members(&self, _topic: &str) -> Vec<ClientInfo> {
        Vec::new()
    }

    fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Recorder};

    fn broker(limits: HistoryLimits) -> (MemoryBroker, Arc<Recorder>) {
        let b = MemoryBroker::new(limits);
        let r = Arc::new(Recorder::default());
        b.set_handler(r.clone());
        (b, r)
    }

    #[tokio::test]
    async fn conformance_suite() {
        conformance::run(|limits| async move {
            let (b, r) = broker(limits);
            (b, r)
        })
        .await;
    }

    #[tokio::test]
    async fn sweep_forgets_idle_topics() {
        let (b, _r) = broker(HistoryLimits {
            size: 10,
            ttl: Duration::from_millis(10),
            meta_ttl: Duration::from_millis(20),
        });
        let p1 = b.publish("t", 1, Bytes::from_static(b"x")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        b.sweep();
        assert_eq!(b.topics(), 0);
        let p2 = b.publish("t", 1, Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(p2.offset, 1);
        assert_ne!(p1.epoch, p2.epoch, "a forgotten topic starts a new epoch");
    }
}
