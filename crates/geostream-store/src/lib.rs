//! Where layers, features, change logs, locks and operation ids live: SQLite by default, and
//! PostgreSQL/PostGIS when several nodes share one store. Knows SQL, not subscribers.
//!
//! Every write goes through [`Store::apply`]: a batch of operations on one layer, applied all
//! or nothing, each accepted operation producing one [`Change`] with the layer's next
//! sequence number. `apply` returns only once the changes are durable (committed and synced),
//! which is what lets the server acknowledge an edit only when it cannot be lost.
//!
//! The same conformance suite ([`conformance`], feature `conformance`) runs against every
//! implementation.
#![warn(missing_docs)]

use std::future::Future;
use std::sync::Arc;

use geostream_core::feature::{BBox, Change, Feature, Geometry, ValidFeature};
use geostream_filter::Filter;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod boxes;
mod plan;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore, WriteStats};
pub use sqlite::{SqliteOptions, SqliteStore};

/// How a layer is created: the protocol's `layer.create` params, as they are.
pub use geostream_core::api::LayerCreateParams as LayerSpec;
/// A layer as stored: the protocol's description of a layer.
pub use geostream_core::api::LayerInfo;

/// One operation of a write. Serializable: a node hands writes to the node that writes
/// their layer (see the server's write forwarding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Creates a feature; the store assigns an id (UUID v7) when `feature.id` is `None`.
    /// Fails with [`StoreError::FeatureExists`] when the id is taken.
    Create {
        /// The validated feature.
        feature: ValidFeature,
    },
    /// Replaces geometry and properties of feature `id`. With `expected`, fails with
    /// [`StoreError::Conflict`] unless the current version is `expected`. Without it (only on
    /// last-writer-wins layers) it also creates a missing feature.
    Replace {
        /// Feature id.
        id: String,
        /// New content (its `id` is ignored).
        feature: ValidFeature,
        /// Version the client edited.
        expected: Option<u64>,
    },
    /// Merges `properties` (JSON Merge Patch, RFC 7396) and/or sets the geometry.
    Patch {
        /// Feature id.
        id: String,
        /// Merge patch for the properties.
        properties: Option<Map<String, Value>>,
        /// New geometry: `Some(None)` removes it.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "some_even_if_null"
        )]
        geometry: Option<Option<(Geometry, BBox)>>,
        /// Version the client edited.
        expected: Option<u64>,
    },
    /// Deletes feature `id`.
    Delete {
        /// Feature id.
        id: String,
        /// Version the client edited.
        expected: Option<u64>,
    },
}

/// Reads a present field as `Some`, `null` included (`Some(None)`); with `#[serde(default)]`
/// an absent one stays `None`. Keeps "remove" and "leave alone" apart in JSON.
fn some_even_if_null<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Who holds or wants a lock: a client that survives reconnects (`client`, chosen by the
/// client and kept across sessions, or the session id when it gives none) and the user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Holder {
    /// Stable client id.
    pub client: String,
    /// Authenticated user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A batch of operations on one layer, applied all or nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// The layer.
    pub layer: String,
    /// Operations, applied in order.
    pub ops: Vec<WriteOp>,
    /// Who writes: recorded in the change log, scopes `op_id`, and owns the locks that let
    /// it edit locked features.
    pub writer: Holder,
    /// Idempotency key chosen by the client. A request whose `(writer.user or
    /// writer.client, op_id)` was already applied is not applied again: its original outcome
    /// is returned with [`WriteOutcome::replayed`] set.
    pub op_id: Option<String>,
}

/// The result of an applied write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// One change per operation, in order, with consecutive sequence numbers.
    pub changes: Vec<Change>,
    /// True when the request was a repetition of an already applied `op_id`.
    #[serde(default)]
    pub replayed: bool,
}

/// A lock on a feature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Layer.
    pub layer: String,
    /// Feature id.
    pub id: String,
    /// Who holds it.
    pub holder: Holder,
    /// When it expires, milliseconds since the Unix epoch.
    pub until_ms: u64,
}

impl From<&Lock> for geostream_core::api::LockInfo {
    /// The lock as clients see it (in results and `lock` pushes).
    fn from(l: &Lock) -> Self {
        geostream_core::api::LockInfo {
            layer: l.layer.clone(),
            id: l.id.clone(),
            client: l.holder.client.clone(),
            user: l.holder.user.clone(),
            until_ms: l.until_ms,
        }
    }
}

/// A query over a layer's current features.
#[derive(Clone, Debug, Default)]
pub struct FeatureQuery {
    /// Only features whose bounding box intersects this box (a fast pre-filter; `filter`'s
    /// spatial part is exact).
    pub bbox: Option<BBox>,
    /// Exact filter (spatial, temporal, CQL2).
    pub filter: Option<Arc<Filter>>,
    /// Page size.
    pub limit: usize,
    /// Matching features to skip.
    pub offset: usize,
}

/// What [`Store::query_known`] asks its caller about each feature: does it hold this one?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownKey<'a> {
    /// When the layer was created ([`LayerInfo::created_ms`]): a layer deleted and created
    /// again under the same name starts its features' versions afresh, so a version alone
    /// does not name one state of a feature.
    pub layer_created_ms: u64,
    /// The feature's id.
    pub id: &'a str,
    /// Its stored version.
    pub version: u64,
}

/// A row of [`Store::query_known`]: a feature read and decoded from the store, or what the
/// caller's `known` returned for a version it already holds.
#[derive(Clone, Debug)]
pub enum KnownRow<T> {
    /// Not held by the caller: decoded from the store. (Boxed: most rows are usually
    /// `Known`, and should not each take a feature's size.)
    Fresh(Box<Feature>),
    /// Held by the caller at the stored version: not decoded.
    Known(T),
}

/// The answer of [`Store::query_known`].
#[derive(Clone, Debug)]
pub struct KnownPage<T> {
    /// Features whose bounding box meets the box, in creation order, at most `limit`.
    pub rows: Vec<KnownRow<T>>,
    /// Whether more features met the box than `limit`.
    pub truncated: bool,
    /// The layer's sequence number the rows were read at.
    pub seq: u64,
    /// When the layer was created (as in [`KnownKey`]).
    pub layer_created_ms: u64,
}

/// One page of a query.
#[derive(Clone, Debug)]
pub struct QueryPage {
    /// Features, in a stable order (creation order).
    pub features: Vec<Feature>,
    /// The offset of the next page, when there is one.
    pub next_offset: Option<usize>,
    /// The layer's sequence number the page was read at.
    pub seq: u64,
}

/// What a subscription needs to start or move: a consistent cut of the layer.
#[derive(Clone, Debug, Default)]
pub struct SnapshotRequest {
    /// Features whose bounding box intersects this box (all when `None`).
    pub bbox: Option<BBox>,
    /// Only features matching this filter (all in `bbox` when `None`).
    pub filter: Option<Arc<Filter>>,
    /// Also return the changes after this sequence number, up to the snapshot's.
    pub since: Option<u64>,
    /// Features per page.
    pub page_size: usize,
}

/// A consistent view of a layer at sequence number `seq`: the changes after the requested
/// `since` (read in the same transaction) and the features, delivered in pages.
#[derive(Debug)]
pub struct Snapshot {
    /// The layer's sequence number at the cut.
    pub seq: u64,
    /// Changes with `since < seq' <= seq`, in order (empty without `since`).
    pub changes: Vec<Change>,
    /// False when some changes after `since` are no longer retained (the caller must resync).
    pub complete: bool,
    /// Pages of features as of `seq`. Dropping the receiver stops the read.
    pub pages: tokio::sync::mpsc::Receiver<Result<Vec<Feature>, StoreError>>,
}

/// A page of the change log.
#[derive(Clone, Debug)]
pub struct ChangePage {
    /// Changes after the requested sequence number, in order.
    pub changes: Vec<Change>,
    /// The oldest sequence number still retained.
    pub first_retained: u64,
    /// The layer's current sequence number.
    pub seq: u64,
}

/// Where a raster tile sits in the pyramid: zoom, column, row (XYZ scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileAddress {
    /// Zoom, 0 to [`MAX_TILE_ZOOM`].
    pub z: u8,
    /// Column, below `2^z`.
    pub x: u32,
    /// Row from the north, below `2^z`.
    pub y: u32,
}

/// Highest zoom a [`TileStore`] takes.
pub const MAX_TILE_ZOOM: u8 = 30;

impl TileAddress {
    /// Refuses an address outside the pyramid.
    pub fn check(&self) -> Result<()> {
        if self.z > MAX_TILE_ZOOM || u64::from(self.x.max(self.y)) >= 1u64 << self.z {
            return Err(StoreError::Invalid(format!(
                "tile {}/{}/{} is outside the pyramid",
                self.z, self.x, self.y
            )));
        }
        Ok(())
    }
}

/// What [`TileStore::put_tile`] stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilePut {
    /// The tile's new version.
    pub version: u64,
    /// The version it replaced, if the store held one.
    pub previous: Option<u64>,
}

/// Uploaded raster tiles with versions, kept in the store beside the layers, so that every
/// node sharing a store serves the same bytes under the same version (and so the same
/// ETag). Tile layers are named like layers but are not layers of the [`Store`].
pub trait TileStore: Send + Sync + 'static {
    /// Stores `data` as the newest version of a tile: one above the stored version, and at
    /// least `min_version` (so an upload can supersede a version that lives elsewhere, such
    /// as a read-only archive's). Durable when it returns. Concurrent puts of one tile, on
    /// any node, get distinct versions, and the highest holds the last bytes stored.
    fn put_tile(
        &self,
        layer: &str,
        tile: TileAddress,
        data: Vec<u8>,
        min_version: u64,
    ) -> impl Future<Output = Result<TilePut>> + Send;
    /// The stored version and bytes of a tile.
    fn get_tile(
        &self,
        layer: &str,
        tile: TileAddress,
    ) -> impl Future<Output = Result<Option<(u64, Vec<u8>)>>> + Send;
    /// The lowest and highest zoom of the tiles stored for `layer`, if any.
    fn tile_zooms(&self, layer: &str) -> impl Future<Output = Result<Option<(u8, u8)>>> + Send;
}

/// Where geofences live: their definitions (JSON, as the fence crate writes them), how far
/// each watched layer's change log has been evaluated, and which node evaluates (a lease).
/// Kept in the store so that every node of a cluster sees the same fences and a node that
/// takes over resumes where the last one stopped.
pub trait FenceStore: Send + Sync + 'static {
    /// Stores a new fence; fails with [`StoreError::FenceExists`] when the name is taken.
    fn create_fence(&self, name: &str, body: String) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a fence; returns whether it existed.
    fn delete_fence(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Every fence: `(name, body)` in name order.
    fn fences(&self) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// How far each layer's changes have been evaluated: `(layer, seq)`.
    fn fence_cursors(&self) -> impl Future<Output = Result<Vec<(String, u64)>>> + Send;
    /// Records how far layers' changes have been evaluated.
    fn save_fence_cursors(
        &self,
        cursors: Vec<(String, u64)>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Takes or renews the evaluator's lease for `holder` until `now + ttl_ms` if it is free,
    /// expired or already `holder`'s; returns whether `holder` has it.
    fn fence_lease(&self, holder: &str, ttl_ms: u64) -> impl Future<Output = Result<bool>> + Send;
    /// Gives the lease up (a node shutting down), if `holder` has it.
    fn release_fence_lease(&self, holder: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Errors of a store. Serializable, as the answer to a forwarded write.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StoreError {
    /// No such layer.
    #[error("layer {0:?} does not exist")]
    LayerNotFound(String),
    /// The layer name is taken.
    #[error("layer {0:?} already exists")]
    LayerExists(String),
    /// The fence name is taken.
    #[error("fence {0:?} already exists")]
    FenceExists(String),
    /// No such feature.
    #[error("feature {id:?} does not exist in layer {layer:?}")]
    FeatureNotFound {
        /// Layer.
        layer: String,
        /// Feature id.
        id: String,
    },
    /// Create with an id that is taken.
    #[error("feature {id:?} already exists in layer {layer:?}")]
    FeatureExists {
        /// Layer.
        layer: String,
        /// Feature id.
        id: String,
        /// The existing feature.
        current: Box<Feature>,
    },
    /// The edit was based on another version.
    #[error("feature {id:?} is at version {}, not {expected}", current.as_ref().map_or(0, |f| f.version))]
    Conflict {
        /// Feature id.
        id: String,
        /// The version the client stated.
        expected: u64,
        /// The current feature (`None`: it was deleted).
        current: Option<Box<Feature>>,
    },
    /// An edit without a version on a layer that requires one.
    #[error("layer {layer:?} requires the version you edited (it is not last-writer-wins)")]
    VersionRequired {
        /// Layer.
        layer: String,
    },
    /// The feature is locked by another holder.
    #[error("feature {id:?} is locked by {} until {until_ms}", holder.user.as_deref().unwrap_or(&holder.client))]
    Locked {
        /// Feature id.
        id: String,
        /// Who holds it.
        holder: Holder,
        /// Until when (ms since the Unix epoch).
        until_ms: u64,
    },
    /// Input the store cannot take (checked by the store itself).
    #[error("{0}")]
    Invalid(String),
    /// The store cannot be reached or failed; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A store of layers. Implementations: [`SqliteStore`] (default) and PostgreSQL.
pub trait Store: Send + Sync + 'static {
    /// Creates a layer.
    fn create_layer(&self, spec: LayerSpec) -> impl Future<Output = Result<LayerInfo>> + Send;
    /// All layers, by name.
    fn list_layers(&self) -> impl Future<Output = Result<Vec<LayerInfo>>> + Send;
    /// One layer.
    fn layer(&self, name: &str) -> impl Future<Output = Result<LayerInfo>> + Send;
    /// Deletes a layer with its features, change log and locks.
    fn delete_layer(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Applies a batch atomically and durably; see [`WriteRequest`].
    ///
    /// The future hands the write to the store's queue on its first poll, before it awaits
    /// anything, and the store applies a layer's writes in the order they were handed over.
    /// So a caller that polls one write once before starting the next fixes their order
    /// (their sequence numbers, and which of two conflicting edits wins) while their
    /// commits overlap; a connection's pipelined requests rely on it.
    fn apply(&self, req: WriteRequest) -> impl Future<Output = Result<WriteOutcome>> + Send;

    /// One feature.
    fn get(&self, layer: &str, id: &str) -> impl Future<Output = Result<Option<Feature>>> + Send;
    /// A page of matching features.
    fn query(&self, layer: &str, q: FeatureQuery)
    -> impl Future<Output = Result<QueryPage>> + Send;
    /// The features whose bounding box meets `bbox`, at most `limit`, in creation order,
    /// read at one sequence number as [`Store::query`] reads them; but a feature for which
    /// `known` returns something is not decoded, and its row carries that instead. For callers that keep decoded features (the tile renderer): most rows of a
    /// re-render have not changed, and decoding stored JSON is most of a read's cost.
    fn query_known<T, K>(
        &self,
        layer: &str,
        bbox: BBox,
        limit: usize,
        known: K,
    ) -> impl Future<Output = Result<KnownPage<T>>> + Send
    where
        T: Send + 'static,
        K: FnMut(KnownKey<'_>) -> Option<T> + Send + 'static;
    /// A consistent cut for a subscription; see [`Snapshot`].
    fn snapshot(
        &self,
        layer: &str,
        req: SnapshotRequest,
    ) -> impl Future<Output = Result<Snapshot>> + Send;
    /// Up to `limit` changes after `since`.
    fn changes(
        &self,
        layer: &str,
        since: u64,
        limit: usize,
    ) -> impl Future<Output = Result<ChangePage>> + Send;

    /// Locks features for `holder` until `now + ttl_ms`, all or none: fails with
    /// [`StoreError::Locked`] if another holder has a live lock on any of them. Locking again
    /// extends the holder's own locks. Features must exist.
    fn lock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Vec<Lock>>> + Send;
    /// Releases the holder's locks on these features (others' locks are left alone);
    /// returns the locks released.
    fn unlock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
    ) -> impl Future<Output = Result<Vec<Lock>>> + Send;
    /// Shortens every lock of `client` to expire within `grace_ms` (its connection is gone);
    /// returns them with the new expiry.
    fn expire_client_locks(
        &self,
        client: &str,
        grace_ms: u64,
    ) -> impl Future<Output = Result<Vec<Lock>>> + Send;
    /// Removes expired locks and returns them (the caller announces the unlocks).
    fn reap_locks(&self) -> impl Future<Output = Result<Vec<Lock>>> + Send;
    /// The live locks of a layer.
    fn locks(&self, layer: &str) -> impl Future<Output = Result<Vec<Lock>>> + Send;
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    /// A forwarded write must mean on the other node what it meant here: in particular
    /// "leave the geometry", "remove it" and "set it" stay three different things.
    #[test]
    fn write_requests_survive_json() {
        let point = Geometry::new(geojson::Value::Point(vec![1.5, -2.25]));
        let feature = ValidFeature {
            id: Some("a".into()),
            geometry: Some(point.clone()),
            bbox: Some([1.5, -2.25, 1.5, -2.25]),
            properties: serde_json::json!({"n": 1}).as_object().cloned().unwrap(),
        };
        let patch = |geometry| WriteOp::Patch {
            id: "a".into(),
            properties: None,
            geometry,
            expected: Some(3),
        };
        let req = WriteRequest {
            layer: "l".into(),
            ops: vec![
                WriteOp::Create {
                    feature: feature.clone(),
                },
                WriteOp::Replace {
                    id: "a".into(),
                    feature,
                    expected: None,
                },
                patch(None),
                patch(Some(None)),
                patch(Some(Some((point, [1.5, -2.25, 1.5, -2.25])))),
                WriteOp::Delete {
                    id: "a".into(),
                    expected: Some(7),
                },
            ],
            writer: Holder {
                client: "c".into(),
                user: Some("u".into()),
            },
            op_id: Some("op".into()),
        };
        let back: WriteRequest =
            serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let err = StoreError::Conflict {
            id: "a".into(),
            expected: 2,
            current: None,
        };
        let r: Result<WriteOutcome> = Err(err);
        let back: Result<WriteOutcome> =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
