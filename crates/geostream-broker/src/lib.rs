//! Brokers move messages between the nodes of a geostream deployment. They know topics,
//! channel messages as bytes and the bus events of `geostream_core::bus`, nothing about
//! geometry, filters or sessions.
//!
//! Every message goes through the broker, even on a single node: [`MemoryBroker`] hands it
//! straight back to this node's [`BrokerHandler`], so the single-node and clustered paths are the
//! same code. A broker also keeps each topic's bounded history (for resume) and gives every
//! published message an offset; the history's epoch changes whenever the history is reset.
#![warn(missing_docs)]

mod any;
mod memory;
#[cfg(feature = "nats")]
mod nats;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use any::{AnyBroker, BrokerSettings};
pub use geostream_core::api::ClientInfo;
pub use geostream_core::bus::BusEvent;
pub use memory::MemoryBroker;
#[cfg(feature = "nats")]
pub use nats::{NatsBroker, NatsOptions, NodeRequest, NodeRequestError};

/// A message kept in a topic's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// Position in the topic's stream, starting at 1, increasing by 1 per message.
    pub offset: u64,
    /// A tag the application uses to interpret `data` (the broker does not look at it).
    pub kind: u8,
    /// The message.
    pub data: Bytes,
    /// When it was published, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// A topic's position: the offset of its last message, and the epoch of its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    /// Offset of the last message (0 before the first).
    pub offset: u64,
    /// Changes whenever the history is reset; offsets from another epoch mean nothing.
    pub epoch: Arc<str>,
}

/// A page of history.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// Messages after the requested offset, in order.
    pub publications: Vec<Publication>,
    /// The topic's current position.
    pub position: StreamPosition,
    /// The oldest offset still in history (`position.offset + 1` when history is empty).
    pub first_offset: u64,
}

/// How much history each topic keeps.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Most messages kept per topic.
    pub size: usize,
    /// Messages older than this are dropped.
    pub ttl: Duration,
    /// A topic with no publication for this long is forgotten entirely (its next message
    /// starts a new epoch).
    pub meta_ttl: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            size: 1000,
            ttl: Duration::from_secs(600),
            meta_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a broker calls when a message reaches this node. Calls for one topic arrive in
/// offset order and never concurrently with each other; implementations must not block.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A message with history (a channel message).
    fn on_publication(&self, topic: &str, publication: &Publication, epoch: &Arc<str>);
    /// An event without history (presence join/leave, cursors, feature changes, locks).
    fn on_event(&self, topic: &str, event: &Arc<BusEvent>);

    /// Members of another node (topic and member) that went away without leaving, because
    /// the node stopped answering (`gone`), or that are back because a node taken for dead
    /// answered again. Every surviving node is told, so each tells its own subscribers.
    fn on_remote_members(&self, gone: bool, members: &[(String, ClientInfo)]) {
        let _ = (gone, members);
    }
}

/// Errors of a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker cannot be reached; the operation may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker was shut down.
    #[error("broker closed")]
    Closed,
}

/// Result alias for broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// A broker: publishes to topics, keeps history, and delivers to every node's handler.
pub trait Broker: Send + Sync + 'static {
    /// Publishes a message with history; returns its position once the broker has it.
    fn publish(
        &self,
        topic: &str,
        kind: u8,
        data: Bytes,
    ) -> impl Future<Output = Result<StreamPosition>> + Send;

    /// Publishes an event without history to every node (this one included). The
    /// in-process broker hands the event itself to the handler; others encode it once.
    fn publish_event(
        &self,
        topic: &str,
        event: Arc<BusEvent>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads up to `limit` messages after offset `since` (or the newest `limit` without it).
    fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryPage>> + Send;

    /// The topic's current position.
    fn position(&self, topic: &str) -> impl Future<Output = Result<StreamPosition>> + Send;

    /// This node starts needing `topic`'s messages (its first local subscriber).
    fn subscribe(&self, topic: &str) -> impl Future<Output = Result<()>> + Send;

    /// This node no longer needs `topic`'s messages.
    fn unsubscribe(&self, topic: &str) -> impl Future<Output = Result<()>> + Send;

    /// Records (`Some`) or removes (`None`) a member of `topic` on this node under `key`, so
    /// the other nodes can list it ([`Broker::remote_members`]). A single node has no one to
    /// tell.
    fn set_member(
        &self,
        topic: &str,
        key: &str,
        member: Option<&ClientInfo>,
    ) -> impl Future<Output = ()> + Send;

    /// The members of `topic` on the other live nodes (this node's own are not included).
    fn remote_members(&self, topic: &str) -> Vec<ClientInfo>;

    /// Changes each time the connection to the other nodes is established again, after which
    /// events sent meanwhile may be missing; `None` for a broker that cannot lose them.
    fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh epoch: 8 random alphanumerics.
pub fn new_epoch() -> Arc<str> {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let s: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    s.into()
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
