//! The conformance suite: what every [`Store`] implementation must do, written once against
//! the trait and run against each backend (SQLite always, PostgreSQL when configured).
//!
//! Call [`run`] from a test on a **multi-threaded** tokio runtime (several cases race
//! writers against each other and against snapshots) with a factory returning a fresh,
//! empty store on each call:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance() {
//!     geostream_store::conformance::run(|| async { make_empty_store().await }).await;
//! }
//! ```
//!
//! What the factory should configure: a **small change retention** (at most 10,000 changes
//! per layer; 1,000 is ideal) so the pruning case finishes quickly; no case needs more than
//! 1,000 changes retained. Lock cases wait for real time (a few hundred milliseconds).
//!
//! The query cases use real data: GeoNames cities (34,006 points) from the repository's
//! vendored `datasets/`.
//!
//! A failing case panics with the case name and what differed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use geostream_core::feature::{
    BBox, Change, ChangeOp, Feature, FeatureLimits, Geometry, ValidFeature, geometry_bbox,
    validate_feature,
};
use geostream_filter::{
    AttributeFilter, FeatureRef, Filter, Limits, SpatialFilter, TemporalFilter,
};
use serde_json::{Map, Value, json};

use crate::{
    FeatureQuery, Holder, KnownKey, KnownRow, LayerSpec, SnapshotRequest, Store, StoreError,
    WriteOp, WriteOutcome, WriteRequest,
};

mod edits;
mod fences;
mod layers;
mod locks;
mod op_ids;
mod queries;
mod snapshots;
mod tiles;
mod versions;

use edits::{batches_are_atomic, crud_with_versions, last_writer_wins, patch_semantics};
use fences::geofences;
use layers::{delete_layer_removes_everything, layers, missing_layer};
use locks::{lock_expiry, locks};
use op_ids::{concurrent_op_ids, idempotent_op_ids, op_ids_raced_across_layers};
use queries::{moving_features, query_known_rows, query_real_data, query_synthetic};
use snapshots::{pruning, snapshot_basics, snapshot_races_writes};
use tiles::uploaded_tiles;
use versions::{concurrent_writers, lost_updates, ordered_on_first_poll};

/// Runs every case, each on a fresh store from `make`.
pub async fn run<S: Store + crate::TileStore + crate::FenceStore, F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! case {
        ($name:ident) => {{
            eprintln!("conformance: {}", stringify!($name));
            let started = std::time::Instant::now();
            $name(Arc::new(make().await)).await;
            eprintln!(
                "conformance: {} passed in {:?}",
                stringify!($name),
                started.elapsed()
            );
        }};
    }
    case!(layers);
    case!(geofences);
    case!(missing_layer);
    case!(crud_with_versions);
    case!(last_writer_wins);
    case!(patch_semantics);
    case!(batches_are_atomic);
    case!(concurrent_writers);
    case!(lost_updates);
    case!(ordered_on_first_poll);
    case!(idempotent_op_ids);
    case!(concurrent_op_ids);
    case!(op_ids_raced_across_layers);
    case!(locks);
    case!(lock_expiry);
    case!(query_synthetic);
    case!(query_real_data);
    case!(query_known_rows);
    case!(moving_features);
    case!(snapshot_basics);
    case!(snapshot_races_writes);
    case!(pruning);
    case!(delete_layer_removes_everything);
    case!(uploaded_tiles);
}

// ----- helpers -----

fn holder(client: &str, user: Option<&str>) -> Holder {
    Holder {
        client: client.into(),
        user: user.map(Into::into),
    }
}

fn alice() -> Holder {
    holder("c-alice", Some("alice"))
}

fn bob() -> Holder {
    holder("c-bob", Some("bob"))
}

fn point(x: f64, y: f64) -> Geometry {
    Geometry::new(geojson::Value::Point(vec![x, y]))
}

fn props(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("test properties must be an object, not {other}"),
    }
}

fn feature(id: Option<&str>, geometry: Option<Geometry>, properties: Value) -> ValidFeature {
    let bbox = geometry.as_ref().and_then(geometry_bbox);
    ValidFeature {
        id: id.map(Into::into),
        geometry,
        bbox,
        properties: props(properties),
    }
}

fn create(id: &str, x: f64, y: f64, properties: Value) -> WriteOp {
    WriteOp::Create {
        feature: feature(Some(id), Some(point(x, y)), properties),
    }
}

fn patch(id: &str, properties: Value, expected: Option<u64>) -> WriteOp {
    WriteOp::Patch {
        id: id.into(),
        properties: Some(props(properties)),
        geometry: None,
        expected,
    }
}

fn move_to(id: &str, x: f64, y: f64, expected: Option<u64>) -> WriteOp {
    let g = point(x, y);
    let b = geometry_bbox(&g).unwrap_or([x, y, x, y]);
    WriteOp::Patch {
        id: id.into(),
        properties: None,
        geometry: Some(Some((g, b))),
        expected,
    }
}

fn request(layer: &str, ops: Vec<WriteOp>, writer: &Holder, op_id: Option<&str>) -> WriteRequest {
    WriteRequest {
        layer: layer.into(),
        ops,
        writer: writer.clone(),
        op_id: op_id.map(Into::into),
    }
}

async fn new_layer<S: Store>(s: &S, name: &str, lww: bool) {
    let spec = LayerSpec {
        name: name.into(),
        title: None,
        description: None,
        last_writer_wins: lww,
    };
    s.create_layer(spec)
        .await
        .unwrap_or_else(|e| panic!("create_layer {name}: {e}"));
}

async fn ok<S: Store>(s: &S, req: WriteRequest) -> WriteOutcome {
    let what = format!("{req:?}");
    s.apply(req)
        .await
        .unwrap_or_else(|e| panic!("apply failed: {e:?}\nrequest: {what}"))
}

async fn err<S: Store>(s: &S, req: WriteRequest) -> StoreError {
    let what = format!("{req:?}");
    match s.apply(req).await {
        Ok(o) => panic!("apply should have failed: {what}\noutcome: {o:?}"),
        Err(e) => e,
    }
}

async fn one<S: Store>(s: &S, req: WriteRequest) -> Change {
    let mut o = ok(s, req).await;
    assert_eq!(o.changes.len(), 1, "one operation, one change: {o:?}");
    assert!(!o.replayed);
    o.changes.remove(0)
}

async fn all_changes<S: Store>(s: &S, layer: &str) -> Vec<Change> {
    let page = s.changes(layer, 0, 1_000_000).await.expect("changes");
    assert_eq!(
        page.first_retained, 1,
        "this case needs the whole change log"
    );
    page.changes
}

async fn all_features<S: Store>(s: &S, layer: &str) -> Vec<Feature> {
    let q = FeatureQuery {
        limit: 1_000_000,
        ..Default::default()
    };
    s.query(layer, q).await.expect("query").features
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks seqs `first..` without gaps and the old/new chain per feature.
fn check_log(changes: &[Change], first: u64) {
    let mut last: HashMap<&str, &Change> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(
            c.seq,
            first + i as u64,
            "gap or disorder in the change log at index {i}"
        );
        match c.op {
            ChangeOp::Insert => assert!(c.old.is_none() && c.new.is_some(), "insert {c:?}"),
            ChangeOp::Update => assert!(c.old.is_some() && c.new.is_some(), "update {c:?}"),
            ChangeOp::Delete => assert!(c.old.is_some() && c.new.is_none(), "delete {c:?}"),
        }
        if let Some(new) = &c.new {
            assert_eq!(new.version, c.version, "change {} version", c.seq);
            assert_eq!(new.id, c.id);
        }
        if let Some(prev) = last.get(c.id.as_str()) {
            assert_eq!(
                c.old.as_ref(),
                prev.new.as_ref(),
                "change {}'s old is not change {}'s new",
                c.seq,
                prev.seq
            );
            assert_eq!(
                c.version,
                prev.version + 1,
                "versions of {} go up by one",
                c.id
            );
        }
        last.insert(&c.id, c);
    }
}

/// Applies changes to a state (id -> feature), checking they fit it.
fn replay(state: &mut BTreeMap<String, Feature>, changes: &[Change]) {
    for c in changes {
        assert_eq!(
            state.get(&c.id),
            c.old.as_ref(),
            "change {} does not start from the state before it",
            c.seq
        );
        match &c.new {
            Some(f) => state.insert(c.id.clone(), f.clone()),
            None => state.remove(&c.id),
        };
    }
}

fn by_id(features: Vec<Feature>) -> BTreeMap<String, Feature> {
    features.into_iter().map(|f| (f.id.clone(), f)).collect()
}

fn ids(features: &[Feature]) -> Vec<String> {
    features.iter().map(|f| f.id.clone()).collect()
}
