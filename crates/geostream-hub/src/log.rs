//! What the hub needs from the store to start, resume, move and repair layer subscriptions:
//! a layer's position, its change log and snapshots of its features. The server implements
//! this over its store; the hub knows nothing else about storage.

use std::future::Future;
use std::sync::Arc;

use geostream_core::feature::{BBox, Change, Feature};
use geostream_filter::Filter;

/// A run of a layer's change log.
#[derive(Clone, Debug, Default)]
pub struct ChangeRun {
    /// Changes after the requested sequence number, in order.
    pub changes: Vec<Change>,
    /// The oldest sequence number still in the log (a resume from before it cannot replay).
    pub first_retained: u64,
    /// The layer's current sequence number.
    pub seq: u64,
}

/// Which features a snapshot reads.
#[derive(Clone, Debug, Default)]
pub struct SnapshotQuery {
    /// Only features whose bounding box meets this one.
    pub bbox: Option<BBox>,
    /// Only features that match (the store may pre-filter; the hub does not test again).
    pub filter: Option<Arc<Filter>>,
    /// Also return the changes after this sequence number, taken with the same view.
    pub since: Option<u64>,
    /// Features per page.
    pub page_size: usize,
}

/// A snapshot: the features as of `seq`, in pages.
#[derive(Debug)]
pub struct SnapshotPages<E> {
    /// The sequence number the snapshot is consistent with.
    pub seq: u64,
    /// With [`SnapshotQuery::since`]: the changes after it up to `seq`.
    pub changes: Vec<Change>,
    /// Pages of features; the channel closes after the last.
    pub pages: tokio::sync::mpsc::Receiver<Result<Vec<Feature>, E>>,
}

/// A layer's log, as the hub reads it.
pub trait LayerLog: Send + Sync + 'static {
    /// What reading can fail with (a missing layer among others); the server maps it.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The layer's current sequence number; an error when the layer does not exist.
    fn seq(&self, layer: &str) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Every layer with its current sequence number.
    fn layers(&self) -> impl Future<Output = Result<Vec<(String, u64)>, Self::Error>> + Send;

    /// Up to `limit` changes after `since`.
    fn changes(
        &self,
        layer: &str,
        since: u64,
        limit: usize,
    ) -> impl Future<Output = Result<ChangeRun, Self::Error>> + Send;

    /// The layer's features (and optionally its recent changes) as of one sequence number.
    fn snapshot(
        &self,
        layer: &str,
        query: SnapshotQuery,
    ) -> impl Future<Output = Result<SnapshotPages<Self::Error>, Self::Error>> + Send;
}
