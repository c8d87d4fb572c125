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
