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
    FeatureQuery, Holder, LayerSpec, SnapshotRequest, Store, StoreError, WriteOp, WriteOutcome,
    WriteRequest,
};

/// Runs every case, each on a fresh store from `make`.
pub async fn run<S: Store, F, Fut>(make: F)
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
    case!(missing_layer);
    case!(crud_with_versions);
    case!(last_writer_wins);
    case!(patch_semantics);
    case!(batches_are_atomic);
    case!(concurrent_writers);
    case!(lost_updates);
    case!(idempotent_op_ids);
    case!(concurrent_op_ids);
    case!(locks);
    case!(lock_expiry);
    case!(query_synthetic);
    case!(query_real_data);
    case!(snapshot_basics);
    case!(snapshot_races_writes);
    case!(pruning);
    case!(delete_layer_removes_everything);
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

// ----- layers -----

async fn layers<S: Store>(s: Arc<S>) {
    let before = now_ms();
    let spec = LayerSpec {
        name: "roads".into(),
        title: Some("Roads".into()),
        description: Some("All roads".into()),
        last_writer_wins: false,
    };
    let info = s.create_layer(spec.clone()).await.expect("create_layer");
    assert_eq!(
        (
            info.name.as_str(),
            info.title.as_deref(),
            info.description.as_deref()
        ),
        ("roads", Some("Roads"), Some("All roads"))
    );
    assert!(!info.last_writer_wins);
    assert_eq!((info.seq, info.count, info.bbox), (0, 0, None));
    assert!(
        info.created_ms >= before.saturating_sub(1000) && info.created_ms <= now_ms() + 1000,
        "created_ms {}",
        info.created_ms
    );
    assert_eq!(
        s.create_layer(spec).await.unwrap_err(),
        StoreError::LayerExists("roads".into())
    );
    let bad = LayerSpec {
        name: "no spaces".into(),
        ..Default::default()
    };
    assert!(
        matches!(s.create_layer(bad).await, Err(StoreError::Invalid(_))),
        "invalid layer names are refused"
    );
    new_layer(&*s, "areas", true).await;

    let list = s.list_layers().await.expect("list_layers");
    assert_eq!(
        list.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["areas", "roads"],
        "layers by name"
    );
    assert!(list[0].last_writer_wins);
    assert_eq!(s.layer("roads").await.expect("layer"), info);

    ok(
        &*s,
        request(
            "roads",
            vec![
                create("a", 10.0, 20.0, json!({})),
                create("b", -5.5, 40.25, json!({})),
            ],
            &alice(),
            None,
        ),
    )
    .await;
    let info = s.layer("roads").await.expect("layer");
    assert_eq!((info.seq, info.count), (2, 2));
    let b = info.bbox.expect("a layer with geometries has an extent");
    let exact = [-5.5, 20.0, 10.0, 40.25];
    for k in 0..4 {
        assert!(
            (b[k] - exact[k]).abs() < 1e-3,
            "extent {b:?} is not about {exact:?}"
        );
    }
    assert!(
        b[0] <= -5.5 && b[1] <= 20.0 && b[2] >= 10.0 && b[3] >= 40.25,
        "extent {b:?} must cover every feature"
    );

    s.delete_layer("roads").await.expect("delete_layer");
    assert_eq!(
        s.layer("roads").await.unwrap_err(),
        StoreError::LayerNotFound("roads".into())
    );
    assert_eq!(
        s.delete_layer("roads").await.unwrap_err(),
        StoreError::LayerNotFound("roads".into())
    );
    assert_eq!(s.list_layers().await.expect("list").len(), 1);
}

async fn missing_layer<S: Store>(s: Arc<S>) {
    let nf = StoreError::LayerNotFound("nope".into());
    assert_eq!(s.layer("nope").await.unwrap_err(), nf);
    assert_eq!(
        err(
            &*s,
            request(
                "nope",
                vec![create("a", 0.0, 0.0, json!({}))],
                &alice(),
                None
            )
        )
        .await,
        nf
    );
    assert_eq!(s.get("nope", "a").await.unwrap_err(), nf);
    assert_eq!(
        s.query(
            "nope",
            FeatureQuery {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap_err(),
        nf
    );
    assert_eq!(s.changes("nope", 0, 10).await.unwrap_err(), nf);
    assert_eq!(
        s.snapshot(
            "nope",
            SnapshotRequest {
                page_size: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap_err(),
        nf
    );
    assert_eq!(
        s.lock("nope", &["a".into()], &alice(), 1000)
            .await
            .unwrap_err(),
        nf
    );
    assert_eq!(
        s.unlock("nope", &["a".into()], &alice()).await.unwrap_err(),
        nf
    );
    assert_eq!(s.locks("nope").await.unwrap_err(), nf);
}

// ----- single features -----

async fn crud_with_versions<S: Store>(s: Arc<S>) {
    new_layer(&*s, "l", false).await;
    let w = alice();
    let c = one(
        &*s,
        request(
            "l",
            vec![create("a", 1.0, 2.0, json!({"name": "A", "n": 1}))],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert_eq!(
        (c.seq, c.op, c.id.as_str(), c.version, c.layer.as_str()),
        (1, ChangeOp::Insert, "a", 1, "l")
    );
    assert!(c.old.is_none() && c.old_bbox.is_none());
    assert_eq!(c.new_bbox, Some([1.0, 2.0, 1.0, 2.0]));
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(changed, ["n", "name"], "an insert changes every property");
    assert!(c.geometry_changed);
    assert_eq!(
        (c.author.as_deref(), c.op_id.as_deref()),
        (Some("alice"), Some("op-1"))
    );
    assert!(c.time_ms > 0);
    let a1 = c.new.clone().expect("new");
    assert_eq!(
        (a1.version, a1.geometry.clone(), a1.properties.clone()),
        (
            1,
            Some(point(1.0, 2.0)),
            props(json!({"name": "A", "n": 1}))
        )
    );
    assert!(
        a1.updated.ends_with('Z') && a1.updated.len() == 24,
        "updated is RFC 3339 UTC with ms: {}",
        a1.updated
    );
    assert_eq!(s.get("l", "a").await.expect("get"), Some(a1.clone()));
    assert_eq!(s.get("l", "zz").await.expect("get"), None);

    // Server-chosen ids: distinct and non-empty.
    let x = one(
        &*s,
        request(
            "l",
            vec![WriteOp::Create {
                feature: feature(None, None, json!({})),
            }],
            &w,
            None,
        ),
    )
    .await;
    let y = one(
        &*s,
        request(
            "l",
            vec![WriteOp::Create {
                feature: feature(None, None, json!({})),
            }],
            &w,
            None,
        ),
    )
    .await;
    assert!(
        !x.id.is_empty() && x.id != y.id,
        "server ids {} {}",
        x.id,
        y.id
    );
    assert_eq!((x.seq, y.seq), (2, 3));
    assert!(
        !x.geometry_changed && x.new_bbox.is_none(),
        "no geometry, no box"
    );

    match err(
        &*s,
        request("l", vec![create("a", 0.0, 0.0, json!({}))], &w, None),
    )
    .await
    {
        StoreError::FeatureExists { layer, id, current } => assert_eq!(
            (layer.as_str(), id.as_str(), *current),
            ("l", "a", a1.clone())
        ),
        e => panic!("expected FeatureExists, got {e:?}"),
    }

    // Replace with the right version.
    let replace = |expected| WriteOp::Replace {
        id: "a".into(),
        feature: feature(None, Some(point(3.0, 4.0)), json!({"name": "A", "k": true})),
        expected,
    };
    let c = one(&*s, request("l", vec![replace(Some(1))], &w, None)).await;
    assert_eq!((c.seq, c.op, c.version), (4, ChangeOp::Update, 2));
    assert_eq!(c.old.as_ref(), Some(&a1));
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(
        changed,
        ["k", "n"],
        "replace lists added and removed properties, not unchanged ones"
    );
    assert!(c.geometry_changed);
    assert_eq!(
        (c.old_bbox, c.new_bbox),
        (Some([1.0, 2.0, 1.0, 2.0]), Some([3.0, 4.0, 3.0, 4.0]))
    );
    let a2 = c.new.clone().expect("new");
    assert_eq!(a2.version, 2);

    // Stale versions conflict and return the current feature; no version: refused here.
    match err(&*s, request("l", vec![replace(Some(1))], &w, None)).await {
        StoreError::Conflict {
            id,
            expected,
            current,
        } => assert_eq!(
            (id.as_str(), expected, current.map(|b| *b)),
            ("a", 1, Some(a2.clone()))
        ),
        e => panic!("expected Conflict, got {e:?}"),
    }
    assert_eq!(
        err(&*s, request("l", vec![replace(None)], &w, None)).await,
        StoreError::VersionRequired { layer: "l".into() }
    );
    assert_eq!(
        err(
            &*s,
            request("l", vec![patch("a", json!({"q": 1}), None)], &w, None)
        )
        .await,
        StoreError::VersionRequired { layer: "l".into() }
    );
    assert_eq!(
        err(
            &*s,
            request(
                "l",
                vec![WriteOp::Delete {
                    id: "a".into(),
                    expected: None
                }],
                &w,
                None
            )
        )
        .await,
        StoreError::VersionRequired { layer: "l".into() }
    );
    // Missing features with a version: a conflict with nothing current.
    for op in [
        patch("zz", json!({}), Some(1)),
        WriteOp::Delete {
            id: "zz".into(),
            expected: Some(3),
        },
    ] {
        match err(&*s, request("l", vec![op], &w, None)).await {
            StoreError::Conflict {
                id, current: None, ..
            } => assert_eq!(id, "zz"),
            e => panic!("expected Conflict without current, got {e:?}"),
        }
    }
    assert_eq!(
        s.get("l", "a").await.expect("get"),
        Some(a2.clone()),
        "failed edits change nothing"
    );
    assert_eq!(
        s.layer("l").await.expect("layer").seq,
        4,
        "failed edits consume no sequence number"
    );

    // Delete: the change carries the old feature and version + 1.
    let c = one(
        &*s,
        request(
            "l",
            vec![WriteOp::Delete {
                id: "a".into(),
                expected: Some(2),
            }],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!((c.seq, c.op, c.version), (5, ChangeOp::Delete, 3));
    assert_eq!((c.old.as_ref(), c.new.as_ref()), (Some(&a2), None));
    assert_eq!((c.old_bbox, c.new_bbox), (Some([3.0, 4.0, 3.0, 4.0]), None));
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(changed, ["k", "name"], "a delete changes every property");
    assert!(c.geometry_changed);
    assert_eq!(s.get("l", "a").await.expect("get"), None);
    match err(
        &*s,
        request(
            "l",
            vec![WriteOp::Delete {
                id: "a".into(),
                expected: Some(2),
            }],
            &w,
            None,
        ),
    )
    .await
    {
        StoreError::Conflict {
            current: None,
            expected: 2,
            ..
        } => {}
        e => panic!("expected Conflict without current, got {e:?}"),
    }
    let info = s.layer("l").await.expect("layer");
    assert_eq!((info.seq, info.count), (5, 2));
    check_log(&all_changes(&*s, "l").await, 1);
}

async fn last_writer_wins<S: Store>(s: Arc<S>) {
    new_layer(&*s, "lww", true).await;
    let w = bob();
    let replace = |id: &str, n: i64, expected| WriteOp::Replace {
        id: id.into(),
        feature: feature(None, Some(point(0.0, 0.0)), json!({"n": n})),
        expected,
    };
    let c = one(&*s, request("lww", vec![replace("a", 1, None)], &w, None)).await;
    assert_eq!(
        (c.op, c.version),
        (ChangeOp::Insert, 1),
        "replace without a version creates a missing feature"
    );
    let c = one(&*s, request("lww", vec![replace("a", 2, None)], &w, None)).await;
    assert_eq!(
        (c.op, c.version, c.changed.clone(), c.geometry_changed),
        (ChangeOp::Update, 2, vec!["n".to_string()], false)
    );
    let c = one(
        &*s,
        request("lww", vec![patch("a", json!({"m": 1}), None)], &w, None),
    )
    .await;
    assert_eq!(c.version, 3);
    assert!(
        matches!(
            err(
                &*s,
                request("lww", vec![replace("a", 9, Some(1))], &w, None)
            )
            .await,
            StoreError::Conflict { expected: 1, .. }
        ),
        "a stated version is still checked"
    );
    assert!(matches!(
        err(
            &*s,
            request("lww", vec![replace("b", 9, Some(1))], &w, None)
        )
        .await,
        StoreError::Conflict { current: None, .. }
    ));
    assert_eq!(
        err(
            &*s,
            request("lww", vec![patch("b", json!({}), None)], &w, None)
        )
        .await,
        StoreError::FeatureNotFound {
            layer: "lww".into(),
            id: "b".into()
        },
        "patch does not create"
    );
    assert!(matches!(
        err(
            &*s,
            request("lww", vec![create("a", 0.0, 0.0, json!({}))], &w, None)
        )
        .await,
        StoreError::FeatureExists { .. }
    ));
    let c = one(
        &*s,
        request(
            "lww",
            vec![WriteOp::Delete {
                id: "a".into(),
                expected: None,
            }],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!((c.op, c.version), (ChangeOp::Delete, 4));
    assert_eq!(
        err(
            &*s,
            request(
                "lww",
                vec![WriteOp::Delete {
                    id: "a".into(),
                    expected: None
                }],
                &w,
                None
            )
        )
        .await,
        StoreError::FeatureNotFound {
            layer: "lww".into(),
            id: "a".into()
        }
    );
    check_log(&all_changes(&*s, "lww").await, 1);
}

async fn patch_semantics<S: Store>(s: Arc<S>) {
    new_layer(&*s, "p", false).await;
    let w = alice();
    one(
        &*s,
        request(
            "p",
            vec![create(
                "a",
                1.0,
                1.0,
                json!({"a": 1, "b": {"c": 1, "d": 2}, "e": "x"}),
            )],
            &w,
            None,
        ),
    )
    .await;
    // RFC 7396: null removes, objects merge, the rest replaces; unchanged values are not listed.
    let c = one(
        &*s,
        request(
            "p",
            vec![patch(
                "a",
                json!({"a": null, "b": {"d": null, "f": 3}, "e": "x", "g": [1]}),
                Some(1),
            )],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!(
        c.new.as_ref().map(|f| f.properties.clone()),
        Some(props(json!({"b": {"c": 1, "f": 3}, "e": "x", "g": [1]})))
    );
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(changed, ["a", "b", "g"]);
    assert!(!c.geometry_changed);
    assert_eq!(
        (c.old_bbox, c.new_bbox),
        (Some([1.0, 1.0, 1.0, 1.0]), Some([1.0, 1.0, 1.0, 1.0]))
    );
    // Geometry only.
    let c = one(
        &*s,
        request("p", vec![move_to("a", 5.0, -5.0, Some(2))], &w, None),
    )
    .await;
    assert!(c.geometry_changed && c.changed.is_empty());
    assert_eq!(c.new_bbox, Some([5.0, -5.0, 5.0, -5.0]));
    // Removing the geometry.
    let op = WriteOp::Patch {
        id: "a".into(),
        properties: None,
        geometry: Some(None),
        expected: Some(3),
    };
    let c = one(&*s, request("p", vec![op], &w, None)).await;
    assert!(c.geometry_changed);
    assert_eq!(
        (c.new.as_ref().and_then(|f| f.geometry.clone()), c.new_bbox),
        (None, None)
    );
    let got = s.get("p", "a").await.expect("get").expect("a");
    assert_eq!((got.version, got.geometry), (4, None));
    // A geometry-less feature leaves bbox queries but stays in unbounded ones.
    let q = FeatureQuery {
        bbox: Some([-180.0, -90.0, 180.0, 90.0]),
        limit: 10,
        ..Default::default()
    };
    assert!(s.query("p", q).await.expect("query").features.is_empty());
    assert_eq!(all_features(&*s, "p").await.len(), 1);
    // Put a geometry back.
    let c = one(
        &*s,
        request("p", vec![move_to("a", 7.0, 8.0, Some(4))], &w, None),
    )
    .await;
    assert_eq!((c.old_bbox, c.new_bbox), (None, Some([7.0, 8.0, 7.0, 8.0])));
    let q = FeatureQuery {
        bbox: Some([6.5, 7.5, 7.5, 8.5]),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(&s.query("p", q).await.expect("query").features), ["a"]);
}

async fn batches_are_atomic<S: Store>(s: Arc<S>) {
    new_layer(&*s, "b", false).await;
    let w = alice();
    let o = ok(
        &*s,
        request(
            "b",
            vec![
                create("a", 0.0, 0.0, json!({})),
                create("b", 1.0, 1.0, json!({})),
                patch("a", json!({"x": 1}), Some(1)),
            ],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!(
        o.changes
            .iter()
            .map(|c| (c.seq, c.version))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 1), (3, 2)],
        "ops apply in order and see each other"
    );
    assert!(!o.replayed);
    // A failing op rolls back the ops before it and consumes no sequence number.
    let e = err(
        &*s,
        request(
            "b",
            vec![
                create("c", 0.0, 0.0, json!({})),
                patch("a", json!({"y": 1}), Some(2)),
                patch("b", json!({}), Some(99)),
            ],
            &w,
            None,
        ),
    )
    .await;
    assert!(
        matches!(e, StoreError::Conflict { expected: 99, .. }),
        "{e:?}"
    );
    assert_eq!(s.get("b", "c").await.expect("get"), None);
    assert_eq!(
        s.get("b", "a").await.expect("get").map(|f| f.version),
        Some(2)
    );
    let e = err(
        &*s,
        request(
            "b",
            vec![
                create("d", 0.0, 0.0, json!({})),
                create("d", 0.0, 0.0, json!({})),
            ],
            &w,
            None,
        ),
    )
    .await;
    assert!(matches!(e, StoreError::FeatureExists { .. }), "{e:?}");
    assert_eq!(s.get("b", "d").await.expect("get"), None);
    let info = s.layer("b").await.expect("layer");
    assert_eq!((info.seq, info.count), (3, 2));
    let c = one(
        &*s,
        request("b", vec![create("e", 0.0, 0.0, json!({}))], &w, None),
    )
    .await;
    assert_eq!(c.seq, 4, "the next accepted change follows without a gap");
    // The rolled back patch of `a` left no trace, not even in a cache: the edit based on
    // the version before it goes through, from the state before it.
    let c = one(
        &*s,
        request("b", vec![patch("a", json!({"z": 1}), Some(2))], &w, None),
    )
    .await;
    assert_eq!(c.version, 3);
    assert_eq!(
        c.new.map(|f| f.properties),
        Some(props(json!({"x": 1, "z": 1})))
    );
    check_log(&all_changes(&*s, "b").await, 1);
}

// ----- concurrency -----

async fn concurrent_writers<S: Store>(s: Arc<S>) {
    new_layer(&*s, "c", true).await;
    let ops = (0..4)
        .map(|i| create(&format!("f{i}"), i as f64, 0.0, json!({"n": 0})))
        .collect();
    ok(&*s, request("c", ops, &alice(), None)).await;
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let w = holder(&format!("writer-{t}"), None);
            for k in 0..25u32 {
                let id = format!("f{}", (t + k) % 4);
                let op = if k % 5 == 4 {
                    move_to(&id, f64::from(t), f64::from(k), None)
                } else {
                    patch(&id, json!({"n": k, "by": t}), None)
                };
                s.apply(request("c", vec![op], &w, None))
                    .await
                    .expect("concurrent edit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let log = all_changes(&*s, "c").await;
    assert_eq!(log.len(), 204);
    check_log(&log, 1);
    assert_eq!(s.layer("c").await.expect("layer").seq, 204);
    let mut state = BTreeMap::new();
    replay(&mut state, &log);
    assert_eq!(
        state,
        by_id(all_features(&*s, "c").await),
        "the log replays to the current features"
    );
}

async fn lost_updates<S: Store>(s: Arc<S>) {
    new_layer(&*s, "counter", false).await;
    one(
        &*s,
        request(
            "counter",
            vec![create("n", 0.0, 0.0, json!({"n": 0}))],
            &alice(),
            None,
        ),
    )
    .await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let w = holder(&format!("inc-{t}"), None);
            let mut done = 0;
            while done < 25 {
                let f = s.get("counter", "n").await.expect("get").expect("counter");
                let n = f.properties.get("n").and_then(Value::as_i64).expect("n");
                match s
                    .apply(request(
                        "counter",
                        vec![patch("n", json!({"n": n + 1}), Some(f.version))],
                        &w,
                        None,
                    ))
                    .await
                {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("increment: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let f = s.get("counter", "n").await.expect("get").expect("counter");
    assert_eq!(
        (f.properties.get("n"), f.version),
        (Some(&json!(200)), 201),
        "optimistic concurrency loses no increment"
    );
    check_log(&all_changes(&*s, "counter").await, 1);
}

// ----- idempotency -----

async fn idempotent_op_ids<S: Store>(s: Arc<S>) {
    new_layer(&*s, "i", false).await;
    let w = alice();
    let first = ok(
        &*s,
        request(
            "i",
            vec![
                create("a", 0.0, 0.0, json!({"v": 1})),
                WriteOp::Create {
                    feature: feature(None, None, json!({})),
                },
            ],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert!(!first.replayed);
    // The same op id again (even with other content) returns the original outcome.
    let again = ok(
        &*s,
        request(
            "i",
            vec![
                create("a", 0.0, 0.0, json!({"v": 1})),
                WriteOp::Create {
                    feature: feature(None, None, json!({})),
                },
            ],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert!(again.replayed);
    assert_eq!(again.changes, first.changes);
    let other_content = ok(
        &*s,
        request(
            "i",
            vec![create("zzz", 0.0, 0.0, json!({}))],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert!(other_content.replayed && other_content.changes == first.changes);
    assert_eq!(s.get("i", "zzz").await.expect("get"), None);
    let info = s.layer("i").await.expect("layer");
    assert_eq!((info.seq, info.count), (2, 2), "a repeat applies nothing");
    // The scope is the user when there is one: the same user on another client is a repeat...
    let other_client = holder("c-alice-2", Some("alice"));
    assert!(
        ok(
            &*s,
            request(
                "i",
                vec![create("q", 0.0, 0.0, json!({}))],
                &other_client,
                Some("op-1")
            )
        )
        .await
        .replayed
    );
    // ...another writer with the same op id is not.
    let c = one(
        &*s,
        request(
            "i",
            vec![create("b", 0.0, 0.0, json!({}))],
            &bob(),
            Some("op-1"),
        ),
    )
    .await;
    assert_eq!(c.seq, 3);
    // Without a user, the client is the scope.
    let anon = holder("device-7", None);
    one(
        &*s,
        request(
            "i",
            vec![create("c", 0.0, 0.0, json!({}))],
            &anon,
            Some("op-2"),
        ),
    )
    .await;
    assert!(
        ok(
            &*s,
            request(
                "i",
                vec![create("c", 0.0, 0.0, json!({}))],
                &anon,
                Some("op-2")
            )
        )
        .await
        .replayed
    );
    // A failed request records nothing: its retry runs (and fails) again.
    for _ in 0..2 {
        let e = err(
            &*s,
            request("i", vec![patch("a", json!({}), Some(7))], &w, Some("op-3")),
        )
        .await;
        assert!(matches!(e, StoreError::Conflict { .. }), "{e:?}");
    }
    let c = one(
        &*s,
        request(
            "i",
            vec![patch("a", json!({"v": 2}), Some(1))],
            &w,
            Some("op-3"),
        ),
    )
    .await;
    assert_eq!(c.version, 2);
    check_log(&all_changes(&*s, "i").await, 1);
}

async fn concurrent_op_ids<S: Store>(s: Arc<S>) {
    new_layer(&*s, "ci", false).await;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let op = WriteOp::Create {
                    feature: feature(None, Some(point(1.0, 1.0)), json!({"round": round})),
                };
                s.apply(request(
                    "ci",
                    vec![op],
                    &alice(),
                    Some(&format!("same-{round}")),
                ))
                .await
                .expect("apply")
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("task"));
        }
        assert_eq!(
            outcomes.iter().filter(|o| !o.replayed).count(),
            1,
            "exactly one of the concurrent repeats applies"
        );
        assert!(
            outcomes.iter().all(|o| o.changes == outcomes[0].changes),
            "every repeat gets the same answer"
        );
        assert_eq!(s.layer("ci").await.expect("layer").seq, round + 1);
    }
    assert_eq!(s.layer("ci").await.expect("layer").count, 5);
}

// ----- locks -----

async fn locks<S: Store>(s: Arc<S>) {
    new_layer(&*s, "k", false).await;
    ok(
        &*s,
        request(
            "k",
            vec![
                create("a", 0.0, 0.0, json!({})),
                create("b", 1.0, 1.0, json!({})),
            ],
            &alice(),
            None,
        ),
    )
    .await;
    let (a, b) = (
        vec!["a".to_string()],
        vec!["a".to_string(), "b".to_string()],
    );
    let before = now_ms();
    let locks = s.lock("k", &a, &alice(), 60_000).await.expect("lock");
    assert_eq!(locks.len(), 1);
    assert_eq!(
        (
            locks[0].layer.as_str(),
            locks[0].id.as_str(),
            &locks[0].holder
        ),
        ("k", "a", &alice())
    );
    assert!(
        locks[0].until_ms >= before + 60_000 && locks[0].until_ms <= now_ms() + 60_000,
        "until {}",
        locks[0].until_ms
    );
    assert_eq!(s.locks("k").await.expect("locks"), locks);

    // All or none: bob gets neither.
    match s.lock("k", &b, &bob(), 60_000).await {
        Err(StoreError::Locked {
            id,
            holder,
            until_ms,
        }) => assert_eq!(
            (id.as_str(), holder, until_ms),
            ("a", alice(), locks[0].until_ms)
        ),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(
        s.locks("k").await.expect("locks").len(),
        1,
        "a refused lock request locks nothing"
    );
    // Others cannot edit; the holder can; unlocked features are free.
    match err(
        &*s,
        request(
            "k",
            vec![patch("a", json!({"x": 1}), Some(1))],
            &bob(),
            None,
        ),
    )
    .await
    {
        StoreError::Locked { id, holder, .. } => assert_eq!((id.as_str(), holder), ("a", alice())),
        e => panic!("expected Locked, got {e:?}"),
    }
    assert!(matches!(
        err(
            &*s,
            request(
                "k",
                vec![WriteOp::Delete {
                    id: "a".into(),
                    expected: Some(1)
                }],
                &bob(),
                None
            )
        )
        .await,
        StoreError::Locked { .. }
    ));
    // The same user on another client is another holder.
    assert!(matches!(
        err(
            &*s,
            request(
                "k",
                vec![patch("a", json!({}), Some(1))],
                &holder("c-alice-2", Some("alice")),
                None
            )
        )
        .await,
        StoreError::Locked { .. }
    ));
    one(
        &*s,
        request(
            "k",
            vec![patch("a", json!({"x": 1}), Some(1))],
            &alice(),
            None,
        ),
    )
    .await;
    one(
        &*s,
        request(
            "k",
            vec![patch("b", json!({"x": 1}), Some(1))],
            &bob(),
            None,
        ),
    )
    .await;
    // A batch touching a locked feature fails as a whole.
    let e = err(
        &*s,
        request(
            "k",
            vec![
                patch("b", json!({"y": 1}), Some(2)),
                patch("a", json!({"y": 1}), Some(2)),
            ],
            &bob(),
            None,
        ),
    )
    .await;
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert_eq!(
        s.get("k", "b").await.expect("get").map(|f| f.version),
        Some(2)
    );

    // Locking again extends.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = s.lock("k", &a, &alice(), 120_000).await.expect("relock");
    assert!(again[0].until_ms > locks[0].until_ms, "relocking extends");
    // Only the holder unlocks.
    assert!(s.unlock("k", &a, &bob()).await.expect("unlock").is_empty());
    assert_eq!(s.locks("k").await.expect("locks").len(), 1);
    let released = s.unlock("k", &a, &alice()).await.expect("unlock");
    assert_eq!(
        released
            .iter()
            .map(|l| (l.id.as_str(), &l.holder))
            .collect::<Vec<_>>(),
        [("a", &alice())]
    );
    assert!(s.locks("k").await.expect("locks").is_empty());
    one(
        &*s,
        request(
            "k",
            vec![patch("a", json!({"z": 1}), Some(2))],
            &bob(),
            None,
        ),
    )
    .await;

    // Locks need existing features.
    assert_eq!(
        s.lock("k", &["a".to_string(), "nope".to_string()], &alice(), 1000)
            .await
            .unwrap_err(),
        StoreError::FeatureNotFound {
            layer: "k".into(),
            id: "nope".into()
        }
    );
    assert!(s.locks("k").await.expect("locks").is_empty());
}

async fn lock_expiry<S: Store>(s: Arc<S>) {
    new_layer(&*s, "e", false).await;
    ok(
        &*s,
        request(
            "e",
            vec![
                create("a", 0.0, 0.0, json!({})),
                create("b", 1.0, 1.0, json!({})),
            ],
            &alice(),
            None,
        ),
    )
    .await;
    // Generous times: the machine running the suite may be busy compiling.
    s.lock("e", &["a".to_string()], &alice(), 1000)
        .await
        .expect("lock");
    assert!(matches!(
        err(
            &*s,
            request("e", vec![patch("a", json!({}), Some(1))], &bob(), None)
        )
        .await,
        StoreError::Locked { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        s.locks("e").await.expect("locks").is_empty(),
        "expired locks are not live"
    );
    one(
        &*s,
        request(
            "e",
            vec![patch("a", json!({"x": 1}), Some(1))],
            &bob(),
            None,
        ),
    )
    .await;
    let reaped = s.reap_locks().await.expect("reap");
    assert_eq!(
        reaped
            .iter()
            .map(|l| (l.layer.as_str(), l.id.as_str(), &l.holder))
            .collect::<Vec<_>>(),
        [("e", "a", &alice())]
    );
    assert!(
        s.reap_locks().await.expect("reap").is_empty(),
        "a reaped lock is gone"
    );

    // A vanished client's locks shrink to the grace period, then get reaped.
    let long = s
        .lock("e", &["a".to_string(), "b".to_string()], &alice(), 600_000)
        .await
        .expect("lock");
    let bob_lock = s.lock("e", &[], &bob(), 1000).await.expect("empty lock");
    assert!(bob_lock.is_empty());
    let before = now_ms();
    let shortened = s
        .expire_client_locks("c-alice", 1000)
        .await
        .expect("expire");
    assert_eq!(shortened.len(), 2);
    for l in &shortened {
        assert_eq!(l.holder, alice());
        assert!(
            l.until_ms <= now_ms() + 1000
                && l.until_ms >= before + 1000
                && l.until_ms < long[0].until_ms,
            "until {}",
            l.until_ms
        );
    }
    assert!(
        s.expire_client_locks("c-nobody", 0)
            .await
            .expect("expire")
            .is_empty()
    );
    assert!(
        s.reap_locks().await.expect("reap").is_empty(),
        "not expired yet"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let reaped = s.reap_locks().await.expect("reap");
    let mut got: Vec<_> = reaped.iter().map(|l| l.id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["a", "b"]);
    // An expired lock of someone else does not stand in the way of a new one.
    s.lock("e", &["a".to_string()], &alice(), 100)
        .await
        .expect("lock");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = s
        .lock("e", &["a".to_string()], &bob(), 60_000)
        .await
        .expect("take over an expired lock");
    assert_eq!(taken[0].holder, bob());
}

// ----- queries -----

/// What a query should return, decided by brute force over the features as written.
struct Expected {
    id: String,
    geometry: Option<geo::Geometry<f64>>,
    bbox: Option<BBox>,
    properties: Map<String, Value>,
}

impl Expected {
    fn new(id: &str, f: &ValidFeature) -> Expected {
        Expected {
            id: id.to_owned(),
            geometry: f
                .geometry
                .as_ref()
                .and_then(|g| geo::Geometry::<f64>::try_from(g).ok()),
            bbox: f.geometry.as_ref().and_then(geometry_bbox),
            properties: f.properties.clone(),
        }
    }
}

fn box_parts(b: BBox) -> Vec<BBox> {
    if b[0] > b[2] {
        vec![[b[0], b[1], 180.0, b[3]], [-180.0, b[1], b[2], b[3]]]
    } else {
        vec![b]
    }
}

fn brute(all: &[Expected], bbox: Option<BBox>, filter: Option<&Filter>) -> Vec<String> {
    all.iter()
        .filter(|e| match (bbox, e.bbox) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(q), Some(f)) => box_parts(q)
                .iter()
                .any(|p| p[0] <= f[2] && p[2] >= f[0] && p[1] <= f[3] && p[3] >= f[1]),
        })
        .filter(|e| {
            filter.is_none_or(|f| {
                let id = Value::String(e.id.clone());
                f.matches(&FeatureRef {
                    id: Some(&id),
                    geometry: e.geometry.as_ref(),
                    bbox: e.bbox,
                    properties: &e.properties,
                })
            })
        })
        .map(|e| e.id.clone())
        .collect()
}

fn cql(text: &str) -> Filter {
    Filter {
        attribute: Some(AttributeFilter::parse_text(text, &Limits::default()).expect("cql2")),
        ..Default::default()
    }
}

/// Pages through a query with `limit`, checking the paging contract; returns all ids.
async fn page_through<S: Store>(
    s: &S,
    layer: &str,
    bbox: Option<BBox>,
    filter: Option<Arc<Filter>>,
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let q = FeatureQuery {
            bbox,
            filter: filter.clone(),
            limit,
            offset,
        };
        let page = s.query(layer, q).await.expect("query");
        assert!(page.features.len() <= limit);
        out.extend(ids(&page.features));
        match page.next_offset {
            Some(next) => {
                assert_eq!(page.features.len(), limit, "only the last page is short");
                assert_eq!(next, offset + limit);
                offset = next;
            }
            None => return out,
        }
    }
}

async fn check_query<S: Store>(
    s: &S,
    layer: &str,
    all: &[Expected],
    what: &str,
    bbox: Option<BBox>,
    filter: Option<Filter>,
) -> usize {
    let want = brute(all, bbox, filter.as_ref());
    let filter = filter.map(Arc::new);
    let q = FeatureQuery {
        bbox,
        filter: filter.clone(),
        limit: 1_000_000,
        offset: 0,
    };
    let page = s.query(layer, q).await.expect("query");
    assert_eq!(page.next_offset, None);
    let got = ids(&page.features);
    if got != want {
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
        panic!(
            "query {what}: {} features, expected {} (missing e.g. {missing:?}, extra e.g. {extra:?}; or the order differs)",
            got.len(),
            want.len()
        );
    }
    want.len()
}

async fn query_synthetic<S: Store>(s: Arc<S>) {
    new_layer(&*s, "q", false).await;
    let rows = [
        (
            "t1",
            Some(point(10.0, 10.0)),
            json!({"datetime": "2024-01-15T00:00:00Z", "kind": "a"}),
        ),
        ("t2", None, json!({"datetime": "2024-03-01", "kind": "b"})),
        (
            "t3",
            Some(point(-10.0, -10.0)),
            json!({"start_datetime": "2023-12-01T00:00:00Z", "end_datetime": "2024-02-01T00:00:00Z", "kind": "a"}),
        ),
        ("t4", Some(point(179.5, 0.0)), json!({"kind": "b"})),
        (
            "t5",
            Some(Geometry::new(geojson::Value::LineString(vec![
                vec![-20.0, 0.0],
                vec![20.0, 0.5],
            ]))),
            json!({"kind": "c", "datetime": "2025-01-01T00:00:00Z"}),
        ),
        ("t6", None, json!({})),
    ];
    let mut all = Vec::new();
    let mut ops = Vec::new();
    for (id, g, p) in rows {
        let f = feature(Some(id), g, p);
        all.push(Expected::new(id, &f));
        ops.push(WriteOp::Create { feature: f });
    }
    ok(&*s, request("q", ops, &alice(), None)).await;
    let temporal = |t: &str| Filter {
        temporal: Some(TemporalFilter::parse(t).expect("datetime")),
        ..Default::default()
    };
    let n = check_query(&*s, "q", &all, "everything", None, None).await;
    assert_eq!(n, 6, "features without geometry are in unbounded queries");
    assert_eq!(
        check_query(
            &*s,
            "q",
            &all,
            "world box",
            Some([-180.0, -90.0, 180.0, 90.0]),
            None
        )
        .await,
        4,
        "but not in bbox queries"
    );
    check_query(
        &*s,
        "q",
        &all,
        "box crossing a line",
        Some([-1.0, -1.0, 1.0, 1.0]),
        None,
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "antimeridian",
        Some([179.0, -1.0, -179.0, 1.0]),
        None,
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "temporal",
        None,
        Some(temporal("2024-01-01/2024-03-31")),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "temporal open",
        None,
        Some(temporal("2024-06-01/..")),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "cql2",
        None,
        Some(cql("kind = 'a' OR kind IS NULL")),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "spatial filter",
        None,
        Some(Filter {
            spatial: Some(SpatialFilter::from_bbox(&[-15.0, -15.0, 15.0, 15.0]).expect("bbox")),
            ..Default::default()
        }),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "bbox and cql2",
        Some([-30.0, -30.0, 30.0, 30.0]),
        Some(cql("kind <> 'c'")),
    )
    .await;
    // Paging in creation order, with a filter.
    assert_eq!(
        page_through(
            &*s,
            "q",
            None,
            Some(Arc::new(cql("kind IN ('a', 'b', 'c')"))),
            2
        )
        .await,
        ["t1", "t2", "t3", "t4", "t5"]
    );
    assert_eq!(page_through(&*s, "q", None, None, 1).await.len(), 6);
    let q = FeatureQuery {
        limit: 2,
        offset: 5,
        ..Default::default()
    };
    let page = s.query("q", q).await.expect("query");
    assert_eq!(
        (ids(&page.features), page.next_offset, page.seq),
        (vec!["t6".to_string()], None, 6)
    );
}

/// The repository's vendored real data (`datasets/`).
fn datasets() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json",
        dir.display()
    );
    dir
}

/// Reads a zstd-compressed GeoJSON FeatureCollection and validates its features.
fn read_features(path: &Path) -> Vec<ValidFeature> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json = zstd::decode_all(&raw[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut fc: Value =
        serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let features = match fc.get_mut("features").map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => panic!("{}: not a FeatureCollection", path.display()),
    };
    features
        .iter()
        .map(|f| {
            validate_feature(f, &FeatureLimits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

async fn query_real_data<S: Store>(s: Arc<S>) {
    let dir = datasets();
    let features = read_features(&dir.join("points/geonames_cities15000.geojson.zst"));
    assert_eq!(
        features.len(),
        34_006,
        "the manifest's count of GeoNames cities"
    );
    new_layer(&*s, "cities", false).await;
    let mut all = Vec::with_capacity(features.len());
    for chunk in features.chunks(2000) {
        let ops = chunk
            .iter()
            .map(|f| WriteOp::Create { feature: f.clone() })
            .collect();
        let o = ok(&*s, request("cities", ops, &alice(), None)).await;
        for (c, f) in o.changes.iter().zip(chunk) {
            all.push(Expected::new(&c.id, f));
        }
    }
    let info = s.layer("cities").await.expect("layer");
    assert_eq!((info.count, info.seq), (34_006, 34_006));
    let exact =
        all.iter()
            .filter_map(|e| e.bbox)
            .fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |a, b| {
                [
                    a[0].min(b[0]),
                    a[1].min(b[1]),
                    a[2].max(b[2]),
                    a[3].max(b[3]),
                ]
            });
    let ext = info.bbox.expect("extent");
    assert!(
        ext[0] <= exact[0] && ext[1] <= exact[1] && ext[2] >= exact[2] && ext[3] >= exact[3],
        "extent {ext:?} covers {exact:?}"
    );
    assert!(
        (0..4).all(|k| (ext[k] - exact[k]).abs() < 1e-3),
        "extent {ext:?} is about {exact:?}"
    );

    let europe = Some([-10.123_45, 35.432_1, 30.987_6, 60.246_8]);
    let n = check_query(&*s, "cities", &all, "bbox Europe", europe, None).await;
    assert!(n > 3000, "{n} European cities");
    check_query(
        &*s,
        "cities",
        &all,
        "bbox across the antimeridian",
        Some([170.123_4, -50.5, -170.432_1, 10.25]),
        None,
    )
    .await;
    check_query(
        &*s,
        "cities",
        &all,
        "bbox with nothing in it",
        Some([-30.1, -50.2, -29.9, -49.8]),
        None,
    )
    .await;
    let n = check_query(
        &*s,
        "cities",
        &all,
        "cql2 population",
        None,
        Some(cql("population > 1000000")),
    )
    .await;
    assert!(n > 300, "{n} cities over a million");
    check_query(
        &*s,
        "cities",
        &all,
        "cql2 and",
        None,
        Some(cql("countrycode = 'FR' AND population >= 50000")),
    )
    .await;
    check_query(
        &*s,
        "cities",
        &all,
        "bbox and cql2",
        Some([-125.0, 24.0, -66.0, 50.0]),
        Some(cql("population BETWEEN 100000 AND 200000")),
    )
    .await;
    check_query(
        &*s,
        "cities",
        &all,
        "cql2 like",
        None,
        Some(cql("name LIKE 'San %' AND timezone LIKE 'America/%'")),
    )
    .await;
    let triangle = json!({"type": "Polygon", "coordinates": [[[0.0, 40.0], [20.0, 40.0], [10.0, 55.0], [0.0, 40.0]]]});
    let polygon = Filter {
        spatial: Some(SpatialFilter::from_geojson(&triangle, &Limits::default()).expect("polygon")),
        ..Default::default()
    };
    let n = check_query(
        &*s,
        "cities",
        &all,
        "polygon filter",
        None,
        Some(polygon.clone()),
    )
    .await;
    assert!(n > 500, "{n} cities in the triangle");
    let circle = Filter {
        spatial: Some(SpatialFilter::circle([2.3522, 48.8566], 100_000.0).expect("circle")),
        attribute: cql("population > 20000").attribute,
        temporal: None,
    };
    check_query(&*s, "cities", &all, "circle and cql2", None, Some(circle)).await;
    check_query(
        &*s,
        "cities",
        &all,
        "bbox and polygon filter",
        europe,
        Some(polygon.clone()),
    )
    .await;
    let spatial_cql =
        cql("S_INTERSECTS(geometry, BBOX(5.1, 45.2, 15.3, 50.4)) AND population > 30000");
    check_query(
        &*s,
        "cities",
        &all,
        "cql2 spatial predicate",
        None,
        Some(spatial_cql),
    )
    .await;

    // Paging gives the same answer, page after page.
    let big = Arc::new(cql("population > 200000"));
    let want = brute(&all, None, Some(&big));
    assert_eq!(
        page_through(&*s, "cities", None, Some(big.clone()), 137).await,
        want
    );
    assert_eq!(
        page_through(&*s, "cities", europe, None, 1000).await,
        brute(&all, europe, None)
    );

    // A snapshot streams the same features in pages.
    let req = SnapshotRequest {
        bbox: europe,
        filter: Some(Arc::new(polygon.clone())),
        since: None,
        page_size: 100,
    };
    let mut snap = s.snapshot("cities", req).await.expect("snapshot");
    assert_eq!(
        (snap.seq, snap.complete, snap.changes.len()),
        (34_006, true, 0)
    );
    let mut got = Vec::new();
    while let Some(page) = snap.pages.recv().await {
        let page = page.expect("page");
        assert!(!page.is_empty() && page.len() <= 100);
        got.extend(ids(&page));
    }
    assert_eq!(got, brute(&all, europe, Some(&polygon)));
    // Dropping the receiver early is fine.
    let req = SnapshotRequest {
        page_size: 10,
        ..Default::default()
    };
    let mut snap = s.snapshot("cities", req).await.expect("snapshot");
    assert_eq!(
        snap.pages.recv().await.expect("page").expect("page").len(),
        10
    );
    drop(snap);
    assert_eq!(
        s.layer("cities").await.expect("layer still readable").count,
        34_006
    );
}

// ----- snapshots -----

async fn collect_pages(
    mut pages: tokio::sync::mpsc::Receiver<Result<Vec<Feature>, StoreError>>,
) -> Vec<Feature> {
    let mut out = Vec::new();
    while let Some(p) = pages.recv().await {
        out.extend(p.expect("page"));
    }
    out
}

async fn snapshot_basics<S: Store>(s: Arc<S>) {
    new_layer(&*s, "s", true).await;
    let ops = (0..20)
        .map(|i| create(&format!("f{i:02}"), f64::from(i), 0.0, json!({"i": i})))
        .collect();
    ok(&*s, request("s", ops, &alice(), None)).await;
    let snap = s
        .snapshot(
            "s",
            SnapshotRequest {
                page_size: 3,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert_eq!((snap.seq, snap.complete, snap.changes.len()), (20, true, 0));
    assert_eq!(
        collect_pages(snap.pages).await,
        all_features(&*s, "s").await
    );
    for i in 0..5 {
        one(
            &*s,
            request(
                "s",
                vec![move_to(&format!("f{i:02}"), 50.0, 50.0, None)],
                &alice(),
                None,
            ),
        )
        .await;
    }
    one(
        &*s,
        request(
            "s",
            vec![WriteOp::Delete {
                id: "f19".into(),
                expected: None,
            }],
            &alice(),
            None,
        ),
    )
    .await;
    let snap = s
        .snapshot(
            "s",
            SnapshotRequest {
                since: Some(20),
                page_size: 7,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert_eq!((snap.seq, snap.complete), (26, true));
    assert_eq!(
        snap.changes,
        s.changes("s", 20, 100).await.expect("changes").changes,
        "the changes after since"
    );
    assert_eq!(
        snap.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (21..=26).collect::<Vec<_>>()
    );
    let features = collect_pages(snap.pages).await;
    assert_eq!(features.len(), 19);
    let snap = s
        .snapshot(
            "s",
            SnapshotRequest {
                since: Some(26),
                page_size: 7,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert!(snap.complete && snap.changes.is_empty());
    // Box and filter apply to the snapshot's features.
    let req = SnapshotRequest {
        bbox: Some([45.0, 45.0, 55.0, 55.0]),
        filter: Some(Arc::new(cql("i >= 2"))),
        since: Some(24),
        page_size: 2,
    };
    let snap = s.snapshot("s", req).await.expect("snapshot");
    assert_eq!(snap.changes.len(), 2);
    assert_eq!(ids(&collect_pages(snap.pages).await), ["f02", "f03", "f04"]);
    // changes(): limit and the retained range.
    let page = s.changes("s", 3, 4).await.expect("changes");
    assert_eq!((page.seq, page.first_retained), (26, 1));
    assert_eq!(
        page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert!(
        s.changes("s", 26, 10)
            .await
            .expect("changes")
            .changes
            .is_empty()
    );
}

async fn snapshot_races_writes<S: Store>(s: Arc<S>) {
    new_layer(&*s, "r", true).await;
    let ops = (0..30)
        .map(|i| {
            create(
                &format!("f{i:02}"),
                f64::from(i),
                f64::from(i % 7),
                json!({"i": i}),
            )
        })
        .collect();
    ok(&*s, request("r", ops, &alice(), None)).await;
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for k in 0..300u32 {
                let id = format!("f{:02}", (k * 7) % 30);
                let op = match k % 10 {
                    3 => move_to(&id, f64::from(k % 90), f64::from(k % 45), None),
                    7 => WriteOp::Delete {
                        id: id.clone(),
                        expected: None,
                    },
                    8 => WriteOp::Replace {
                        id: id.clone(),
                        feature: feature(None, Some(point(1.5, 2.5)), json!({"i": k})),
                        expected: None,
                    },
                    _ => patch(&id, json!({"k": k}), None),
                };
                match s.apply(request("r", vec![op], &bob(), None)).await {
                    Ok(_) | Err(StoreError::FeatureNotFound { .. }) => {}
                    Err(e) => panic!("racing writer: {e}"),
                }
                if k % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut snaps = Vec::new();
    while !writer.is_finished() {
        let snap = s
            .snapshot(
                "r",
                SnapshotRequest {
                    since: Some(30),
                    page_size: 4,
                    ..Default::default()
                },
            )
            .await
            .expect("snapshot");
        let (seq, changes, complete) = (snap.seq, snap.changes, snap.complete);
        let features = collect_pages(snap.pages).await;
        snaps.push((seq, changes, complete, features));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.expect("writer");
    assert!(
        snaps.len() >= 2,
        "the case needs snapshots taken during the writes"
    );
    let log = all_changes(&*s, "r").await;
    check_log(&log, 1);
    let last = log.len() as u64;
    assert!(
        snaps.iter().any(|(seq, ..)| *seq > 30 && *seq < last),
        "no snapshot fell in the middle of the writes (at {:?})",
        snaps.iter().map(|(seq, ..)| *seq).collect::<Vec<_>>()
    );
    let fin = by_id(all_features(&*s, "r").await);
    for (seq, changes, complete, features) in snaps {
        assert!(complete && seq >= 30);
        // The snapshot's changes are exactly the log's (30, seq].
        assert_eq!(
            changes.as_slice(),
            &log[30..seq as usize],
            "snapshot at {seq}: its changes"
        );
        // Its features are the log replayed up to seq: every change up to the cut is in
        // them, none after.
        let mut at_cut = BTreeMap::new();
        replay(&mut at_cut, &log[..seq as usize]);
        assert_eq!(
            by_id(features.clone()),
            at_cut,
            "snapshot at {seq}: features as of seq"
        );
        // And the later changes take them to the final state.
        let mut later = by_id(features);
        replay(&mut later, &log[seq as usize..]);
        assert_eq!(later, fin, "snapshot at {seq} + later changes = now");
    }
}

async fn pruning<S: Store>(s: Arc<S>) {
    new_layer(&*s, "big", true).await;
    one(
        &*s,
        request(
            "big",
            vec![create("a", 0.0, 0.0, json!({"n": 0}))],
            &alice(),
            None,
        ),
    )
    .await;
    const CAP: u64 = 300_000;
    let mut written = 1u64;
    let mut page = s.changes("big", 0, 1).await.expect("changes");
    while page.first_retained <= 1 && written < CAP {
        let ops = (0..500)
            .map(|k| patch("a", json!({"n": written + k}), None))
            .collect();
        ok(&*s, request("big", ops, &alice(), None)).await;
        written += 500;
        page = s.changes("big", 0, 1).await.expect("changes");
    }
    if page.first_retained <= 1 {
        eprintln!(
            "skipping pruning checks: the store kept all {written} changes (configure a small retention)"
        );
        return;
    }
    let seq = page.seq;
    assert_eq!(seq, written);
    assert!(page.first_retained > 1 && page.first_retained <= seq);
    assert_eq!(
        page.changes.first().map(|c| c.seq),
        Some(page.first_retained),
        "changes resume at the oldest retained"
    );
    let snap = s
        .snapshot(
            "big",
            SnapshotRequest {
                since: Some(0),
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert!(
        !snap.complete,
        "changes after since were pruned: the caller must resync"
    );
    assert_eq!(snap.seq, seq);
    let features = collect_pages(snap.pages).await;
    assert_eq!(features.len(), 1);
    assert_eq!(
        features[0].version, seq,
        "the resync snapshot has the current features"
    );
    let snap = s
        .snapshot(
            "big",
            SnapshotRequest {
                since: Some(seq - 1),
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert!(snap.complete);
    assert_eq!(
        snap.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [seq]
    );
    let first = page.first_retained;
    let snap = s
        .snapshot(
            "big",
            SnapshotRequest {
                since: Some(first - 1),
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    if snap.complete {
        assert_eq!(snap.changes.first().map(|c| c.seq), Some(first));
        check_log(&snap.changes, first);
    }
}

async fn delete_layer_removes_everything<S: Store>(s: Arc<S>) {
    new_layer(&*s, "gone", false).await;
    ok(
        &*s,
        request(
            "gone",
            vec![
                create("a", 1.0, 1.0, json!({})),
                create("b", 2.0, 2.0, json!({})),
            ],
            &alice(),
            Some("op-x"),
        ),
    )
    .await;
    s.lock("gone", &["a".to_string()], &alice(), 60_000)
        .await
        .expect("lock");
    s.delete_layer("gone").await.expect("delete");
    assert_eq!(
        s.get("gone", "a").await.unwrap_err(),
        StoreError::LayerNotFound("gone".into())
    );
    new_layer(&*s, "gone", false).await;
    let info = s.layer("gone").await.expect("layer");
    assert_eq!((info.seq, info.count, info.bbox), (0, 0, None));
    assert_eq!(s.get("gone", "a").await.expect("get"), None);
    assert!(all_features(&*s, "gone").await.is_empty());
    let q = FeatureQuery {
        bbox: Some([0.0, 0.0, 3.0, 3.0]),
        limit: 10,
        ..Default::default()
    };
    assert!(
        s.query("gone", q).await.expect("query").features.is_empty(),
        "nothing left in the spatial index"
    );
    let page = s.changes("gone", 0, 10).await.expect("changes");
    assert!(page.changes.is_empty() && page.seq == 0 && page.first_retained == 1);
    assert!(s.locks("gone").await.expect("locks").is_empty());
    assert!(
        s.reap_locks()
            .await
            .expect("reap")
            .iter()
            .all(|l| l.layer != "gone")
    );
    let c = one(
        &*s,
        request(
            "gone",
            vec![create("a", 1.0, 1.0, json!({}))],
            &alice(),
            None,
        ),
    )
    .await;
    assert_eq!(
        (c.seq, c.version),
        (1, 1),
        "a new layer of the same name starts afresh"
    );
}
