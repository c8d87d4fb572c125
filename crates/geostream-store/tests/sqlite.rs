//! The SQLite store: the shared conformance suite, plus what only SQLite has (reopening a
//! file, schema versions, corrupt rows, housekeeping).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use geostream_core::feature::ValidFeature;
use geostream_store::{
    FeatureQuery, Holder, LayerSpec, SqliteOptions, SqliteStore, Store, StoreError, WriteOp,
    WriteRequest,
};
use serde_json::json;

fn writer() -> Holder {
    Holder {
        client: "c1".into(),
        user: Some("u1".into()),
    }
}

fn create(id: &str, x: f64, y: f64) -> WriteOp {
    let geometry = geojson::Geometry::new(geojson::Value::Point(vec![x, y]));
    WriteOp::Create {
        feature: ValidFeature {
            id: Some(id.into()),
            bbox: Some([x, y, x, y]),
            geometry: Some(geometry),
            properties: Default::default(),
        },
    }
}

fn request(layer: &str, ops: Vec<WriteOp>, op_id: Option<&str>) -> WriteRequest {
    WriteRequest {
        layer: layer.into(),
        ops,
        writer: writer(),
        op_id: op_id.map(Into::into),
    }
}

fn layer(name: &str) -> LayerSpec {
    LayerSpec {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    geostream_store::conformance::run(|| {
        let path = dir
            .path()
            .join(format!("store-{}.db", n.fetch_add(1, Ordering::Relaxed)));
        async move {
            // A small retention keeps the suite's pruning case short (see the suite's docs).
            SqliteStore::open(
                path,
                SqliteOptions {
                    change_retention: 1000,
                    ..Default::default()
                },
            )
            .expect("open")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dir/store.db");
    {
        let s = SqliteStore::open(&path, SqliteOptions::default()).expect("open");
        s.create_layer(layer("l")).await.expect("layer");
        s.apply(request(
            "l",
            vec![create("a", 1.0, 2.0), create("b", 3.0, 4.0)],
            Some("op"),
        ))
        .await
        .expect("apply");
        s.lock("l", &["a".into()], &writer(), 60_000)
            .await
            .expect("lock");
    }
    let s = SqliteStore::open(&path, SqliteOptions::default()).expect("reopen");
    let info = s.layer("l").await.expect("layer");
    assert_eq!((info.seq, info.count), (2, 2));
    assert_eq!(
        s.get("l", "a").await.expect("get").map(|f| f.version),
        Some(1)
    );
    assert_eq!(s.locks("l").await.expect("locks").len(), 1);
    let replay = s
        .apply(request("l", vec![create("zzz", 0.0, 0.0)], Some("op")))
        .await
        .expect("replay");
    assert!(replay.replayed, "op ids survive a restart");
    let c = s
        .apply(request("l", vec![create("c", 5.0, 6.0)], None))
        .await
        .expect("apply");
    assert_eq!(c.changes[0].seq, 3, "the sequence continues");
    let q = FeatureQuery {
        bbox: Some([0.0, 0.0, 3.5, 4.5]),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        s.query("l", q).await.expect("query").features.len(),
        2,
        "the R-tree is persistent"
    );
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    drop(SqliteStore::open(&path, SqliteOptions::default()).expect("open"));
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", 999)
        .expect("pragma");
    drop(conn);
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("999"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn not_a_database_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    std::fs::write(
        &path,
        b"this is not a database, just some text that is long enough to be a header",
    )
    .expect("write");
    assert!(matches!(
        SqliteStore::open(&path, SqliteOptions::default()),
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path, SqliteOptions::default()).expect("open");
    s.create_layer(layer("l")).await.expect("layer");
    s.apply(request(
        "l",
        vec![create("a", 1.0, 2.0), create("b", 1.0, 2.0)],
        None,
    ))
    .await
    .expect("apply");
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    raw.execute(
        "UPDATE features SET properties = '{not json' WHERE fid = 'a'",
        [],
    )
    .expect("corrupt");
    raw.execute(
        "UPDATE features SET geometry = '{\"type\":\"Blob\"}' WHERE fid = 'b'",
        [],
    )
    .expect("corrupt");
    raw.execute("UPDATE changes SET body = 'garbage' WHERE seq = 1", [])
        .expect("corrupt");
    drop(raw);
    let e = s.get("l", "a").await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("corrupt") && m.contains("\"a\"")),
        "{e:?}"
    );
    assert!(matches!(
        s.get("l", "b").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.query(
            "l",
            FeatureQuery {
                limit: 10,
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.changes("l", 0, 10).await,
        Err(StoreError::Unavailable(_))
    ));
    let op = WriteOp::Patch {
        id: "a".into(),
        properties: None,
        geometry: None,
        expected: Some(1),
    };
    assert!(
        matches!(
            s.apply(request("l", vec![op], None)).await,
            Err(StoreError::Unavailable(_))
        ),
        "the writer reports it too"
    );
    // The store keeps working for healthy rows.
    s.apply(request("l", vec![create("c", 0.0, 0.0)], None))
        .await
        .expect("apply after corruption");
    assert_eq!(
        s.get("l", "c").await.expect("get").map(|f| f.version),
        Some(1)
    );
}

#[tokio::test]
async fn empty_requests_are_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(dir.path().join("s.db"), SqliteOptions::default()).expect("open");
    s.create_layer(layer("l")).await.expect("layer");
    assert!(matches!(
        s.apply(request("l", vec![], None)).await,
        Err(StoreError::Invalid(_))
    ));
    let empty_id = WriteOp::Create {
        feature: ValidFeature {
            id: Some(String::new()),
            geometry: None,
            bbox: None,
            properties: Default::default(),
        },
    };
    assert!(matches!(
        s.apply(request("l", vec![empty_id], None)).await,
        Err(StoreError::Invalid(_))
    ));
    let nan = geojson::Geometry::new(geojson::Value::Point(vec![f64::NAN, 1.0]));
    let op = WriteOp::Create {
        feature: ValidFeature {
            id: None,
            geometry: Some(nan),
            bbox: None,
            properties: Default::default(),
        },
    };
    assert!(
        s.apply(request("l", vec![op], None)).await.is_err(),
        "non-finite coordinates are refused"
    );
    assert_eq!(s.layer("l").await.expect("layer").seq, 0);
}

#[tokio::test]
async fn housekeeping_forgets_old_op_ids_and_locks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SqliteOptions {
        op_id_retention_ms: 100,
        lock_reap_ms: 100,
        housekeeping_ms: 50,
        ..Default::default()
    };
    let s = SqliteStore::open(dir.path().join("s.db"), opts).expect("open");
    s.create_layer(layer("l")).await.expect("layer");
    s.apply(request("l", vec![create("a", 0.0, 0.0)], Some("op")))
        .await
        .expect("apply");
    s.lock("l", &["a".into()], &writer(), 1)
        .await
        .expect("lock");
    assert!(
        s.apply(request("l", vec![create("b", 0.0, 0.0)], Some("op")))
            .await
            .expect("apply")
            .replayed
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let o = s
        .apply(request("l", vec![create("b", 0.0, 0.0)], Some("op")))
        .await
        .expect("apply");
    assert!(!o.replayed, "an op id past its retention is forgotten");
    assert!(
        s.reap_locks().await.expect("reap").is_empty(),
        "housekeeping dropped the long-expired lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_does_not_spoil_its_group() {
    // Many requests at once land in the same group commit; the failing ones roll back only
    // themselves.
    let dir = tempfile::tempdir().expect("tempdir");
    let s = std::sync::Arc::new(
        SqliteStore::open(dir.path().join("s.db"), SqliteOptions::default()).expect("open"),
    );
    s.create_layer(layer("l")).await.expect("layer");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            // Every third request creates a duplicate id and fails.
            let id = if i % 3 == 0 {
                "dup".to_string()
            } else {
                format!("f{i}")
            };
            s.apply(request(
                "l",
                vec![create(&format!("x{i}"), 0.0, 0.0), create(&id, 0.0, 0.0)],
                None,
            ))
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(o) => ok += o.changes.len(),
            Err(StoreError::FeatureExists { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let info = s.layer("l").await.expect("layer");
    assert_eq!(info.seq as usize, ok);
    assert_eq!(info.count as usize, ok);
    let page = s.changes("l", 0, 10_000).await.expect("changes");
    assert!(
        page.changes
            .iter()
            .enumerate()
            .all(|(i, c)| c.seq == i as u64 + 1),
        "gap-free"
    );
    assert_eq!(
        serde_json::to_value(&page.changes[0].layer).expect("json"),
        json!("l")
    );
}

#[tokio::test]
async fn writes_by_another_connection_are_seen() {
    // The writer caches features it edits; a commit by another connection (another process
    // on the same file) must not leave it with a stale copy.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path, SqliteOptions::default()).expect("open");
    s.create_layer(layer("l")).await.expect("layer");
    s.apply(request("l", vec![create("a", 1.0, 2.0)], None))
        .await
        .expect("apply");
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    raw.execute(
        "UPDATE features SET version = 7, properties = '{\"k\":1}' WHERE fid = 'a'",
        [],
    )
    .expect("outside write");
    drop(raw);
    let op = WriteOp::Patch {
        id: "a".into(),
        properties: None,
        geometry: None,
        expected: Some(7),
    };
    let o = s.apply(request("l", vec![op], None)).await.expect("apply");
    assert_eq!(o.changes[0].version, 8);
    assert_eq!(
        o.changes[0].old.as_ref().map(|f| f.properties.clone()),
        Some(json!({"k": 1}).as_object().cloned().unwrap_or_default())
    );
}

fn move_to(id: &str, version: u64, x: f64, y: f64) -> WriteOp {
    let geometry = geojson::Geometry::new(geojson::Value::Point(vec![x, y]));
    WriteOp::Patch {
        id: id.into(),
        properties: None,
        geometry: Some(Some((geometry, [x, y, x, y]))),
        expected: Some(version),
    }
}

/// The layer's R-tree rows, as stored: (ord, [minx, miny, maxx, maxy]).
fn rtree_rows(path: &std::path::Path) -> Vec<[f64; 4]> {
    let raw = rusqlite::Connection::open(path).expect("raw open");
    let table: String = raw
        .query_row("SELECT 'rtree_' || id FROM layers", [], |r| r.get(0))
        .expect("layer");
    raw.prepare(&format!("SELECT minx, miny, maxx, maxy FROM {table}"))
        .expect("prepare")
        .query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))
        .expect("rows")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

async fn ids_in(s: &SqliteStore, bbox: [f64; 4]) -> Vec<String> {
    let q = FeatureQuery {
        bbox: Some(bbox),
        limit: 10,
        ..Default::default()
    };
    let page = s.query("l", q).await.expect("query");
    page.features.into_iter().map(|f| f.id).collect()
}

#[tokio::test]
async fn the_rtree_keeps_grid_cells_and_queries_stay_exact() {
    const CELL: f64 = 1.0 / 1024.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path, SqliteOptions::default()).expect("open");
    s.create_layer(layer("l")).await.expect("layer");
    s.apply(request("l", vec![create("a", 10.0001, 20.0001)], None))
        .await
        .expect("create");
    let cell = [
        10240.0 * CELL,
        20480.0 * CELL,
        10241.0 * CELL,
        20481.0 * CELL,
    ];
    assert_eq!(
        rtree_rows(&path),
        vec![cell],
        "the entry is the point's grid cell"
    );

    // Mark the entry: a move inside the cell must leave it alone, a move out must replace it.
    let marked = [10.0, 20.0, 10.5, 20.5];
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    raw.execute(
        "UPDATE rtree_1 SET minx = ?1, miny = ?2, maxx = ?3, maxy = ?4",
        marked,
    )
    .expect("mark");
    drop(raw);
    s.apply(request("l", vec![move_to("a", 1, 10.0003, 20.0002)], None))
        .await
        .expect("move inside the cell");
    assert_eq!(
        rtree_rows(&path),
        vec![marked],
        "a move inside the cell writes nothing"
    );
    // The answers come from the exact box: in the cell but off the point is a miss.
    assert!(
        ids_in(&s, [10.00035, 20.0, 10.0009, 20.0009])
            .await
            .is_empty()
    );
    assert_eq!(
        ids_in(&s, [10.0002, 20.0001, 10.0004, 20.0003]).await,
        ["a"]
    );

    s.apply(request("l", vec![move_to("a", 2, 10.0011, 20.0002)], None))
        .await
        .expect("move to the next cell");
    let next = [
        10241.0 * CELL,
        20480.0 * CELL,
        10242.0 * CELL,
        20481.0 * CELL,
    ];
    assert_eq!(rtree_rows(&path), vec![next]);
    assert_eq!(ids_in(&s, [10.001, 20.0, 10.0012, 20.001]).await, ["a"]);
    assert!(
        ids_in(&s, [10.0002, 20.0001, 10.0004, 20.0003])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn version_3_databases_get_grid_boxes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    {
        let s = SqliteStore::open(&path, SqliteOptions::default()).expect("open");
        s.create_layer(layer("l")).await.expect("layer");
        s.apply(request("l", vec![create("a", -3.0004, 51.0003)], None))
            .await
            .expect("create");
    }
    // As version 3 wrote it: the exact box (in the R-tree's f32), and the version mark.
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    raw.execute(
        "UPDATE rtree_1 SET minx = -3.0004, miny = 51.0003, maxx = -3.0004, maxy = 51.0003",
        [],
    )
    .expect("exact box");
    raw.pragma_update(None, "user_version", 3).expect("pragma");
    drop(raw);
    let s = SqliteStore::open(&path, SqliteOptions::default()).expect("reopen");
    let g = |v: f64, up: bool| {
        let c = v * 1024.0;
        (if up { c.ceil() } else { c.floor() }) / 1024.0
    };
    assert_eq!(
        rtree_rows(&path),
        vec![[
            g(-3.0004, false),
            g(51.0003, false),
            g(-3.0004, true),
            g(51.0003, true)
        ]]
    );
    assert_eq!(ids_in(&s, [-3.001, 51.0, -3.0, 51.001]).await, ["a"]);
}

/// The writer looks for a live lock only on layers that have locks. A lock taken in the
/// same group as an edit of its feature must still refuse that edit: a large batch keeps
/// the writer busy while the lock and the edit queue up behind it, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_in_the_edits_group_refuses_it() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(dir.path().join("s.db"), SqliteOptions::default()).expect("open");
    s.create_layer(layer("l")).await.expect("layer");
    let others: Vec<WriteOp> = (0..2000)
        .map(|i| create(&format!("o{i}"), 1.0, 1.0))
        .collect();
    s.apply(request("l", others, None)).await.expect("others");
    s.apply(request("l", vec![create("a", 0.0, 0.0)], None))
        .await
        .expect("a");
    let bob = Holder {
        client: "c2".into(),
        user: Some("u2".into()),
    };
    let patch = |id: String, version: u64| WriteOp::Patch {
        id,
        properties: Some(serde_json::Map::from_iter([(
            "n".to_string(),
            json!(version),
        )])),
        geometry: None,
        expected: Some(version),
    };
    let ids = vec!["a".to_string()];
    let alice = writer();
    for round in 1..=5u64 {
        let busy: Vec<WriteOp> = (0..2000).map(|i| patch(format!("o{i}"), round)).collect();
        let mut busy = Box::pin(s.apply(request("l", busy, None)));
        let mut lock = Box::pin(s.lock("l", &ids, &alice, 60_000));
        let edit = WriteRequest {
            layer: "l".into(),
            ops: vec![patch("a".into(), 1)],
            writer: bob.clone(),
            op_id: None,
        };
        let mut edit = Box::pin(s.apply(edit));
        // One poll each, in this order: each hands its work to the writer's queue.
        fn poll_once<F: Future + ?Sized>(f: &mut Pin<Box<F>>) {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            assert!(matches!(f.as_mut().poll(&mut cx), Poll::Pending));
        }
        poll_once(&mut busy);
        poll_once(&mut lock);
        poll_once(&mut edit);
        busy.await.expect("the busy batch");
        lock.await.expect("the lock");
        match edit.await {
            Err(StoreError::Locked { id, holder, .. }) => {
                assert_eq!((id.as_str(), holder), ("a", writer()), "round {round}")
            }
            other => panic!("round {round}: the edit of a locked feature gave {other:?}"),
        }
        s.unlock("l", &ids, &writer()).await.expect("unlock");
    }
}
