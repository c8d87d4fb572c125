//! The PostgreSQL/PostGIS store: the shared conformance suite (every case), plus what only a
//! shared database has: two stores (two nodes) on one schema.
//!
//! Needs PostgreSQL with PostGIS at `GEOSTREAM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); `scripts/test.sh` installs and starts it. A
//! database that cannot be reached fails the tests with the reason: they are never skipped.
//! Every store gets a schema of its own, so the tests run in parallel with each other (and
//! with other test binaries) without seeing each other's data.

use std::sync::Arc;

use geostream_core::feature::ValidFeature;
use geostream_store::{
    FeatureQuery, Holder, LayerSpec, PostgresOptions, PostgresStore, Store, StoreError, WriteOp,
    WriteRequest,
};
use parking_lot::Mutex;
use serde_json::json;

fn url() -> String {
    std::env::var("GEOSTREAM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn unique_schema(tag: &str) -> String {
    format!(
        "gs_test_{tag}_{}",
        uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
    )
}

async fn open(schema: &str, change_retention: u64) -> PostgresStore {
    let opts = PostgresOptions {
        url: url(),
        schema: schema.to_owned(),
        pool_size: 8,
        change_retention,
        ..Default::default()
    };
    PostgresStore::connect(opts).await.unwrap_or_else(|e| {
        panic!(
            "cannot open the PostgreSQL store at {} (schema {schema}): {e}\n\
             PostgreSQL with PostGIS must be running for these tests: run scripts/test.sh, \
             or start it (pg_ctlcluster --skip-systemctl-redirect 15 main start) and install \
             postgresql-15-postgis-3, or set GEOSTREAM_TEST_POSTGRES_URL",
            url()
        )
    })
}

/// Drops the schemas a test made, also when it panics.
#[derive(Default)]
struct Schemas(Mutex<Vec<PostgresStore>>);

impl Schemas {
    fn keep(&self, s: &PostgresStore) {
        self.0.lock().push(s.clone());
    }

    async fn drop_all(&self) {
        let stores: Vec<_> = std::mem::take(&mut *self.0.lock());
        for s in stores {
            if let Err(e) = s.drop_schema().await {
                eprintln!("could not drop schema {}: {e}", s.schema());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let schemas = Arc::new(Schemas::default());
    let made = schemas.clone();
    geostream_store::conformance::run(move || {
        let made = made.clone();
        async move {
            // A small retention keeps the suite's pruning case short (see the suite's docs).
            let s = open(&unique_schema("conf"), 1000).await;
            made.keep(&s);
            s
        }
    })
    .await;
    schemas.drop_all().await;
}

fn writer(client: &str) -> Holder {
    Holder {
        client: client.into(),
        user: None,
    }
}

fn create(id: &str, x: f64) -> WriteOp {
    WriteOp::Create {
        feature: ValidFeature {
            id: Some(id.into()),
            bbox: Some([x, 0.0, x, 0.0]),
            geometry: Some(geojson::Geometry::new(geojson::Value::Point(vec![x, 0.0]))),
            properties: json!({"n": 0}).as_object().cloned().unwrap_or_default(),
        },
    }
}

fn patch(id: &str, n: i64, expected: Option<u64>) -> WriteOp {
    WriteOp::Patch {
        id: id.into(),
        properties: json!({ "n": n }).as_object().cloned(),
        geometry: None,
        expected,
    }
}

/// Two nodes on one schema: sequence numbers stay gap-free across both, a conflicting edit
/// is accepted by exactly one, locks taken through one hold on the other, and an op id
/// applied on one is a repeat on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_one_schema() {
    let schema = unique_schema("two");
    let a = open(&schema, 100_000).await;
    let b = open(&schema, 100_000).await;
    let spec = LayerSpec {
        name: "shared".into(),
        ..Default::default()
    };
    a.create_layer(spec.clone()).await.expect("create");
    assert_eq!(
        b.create_layer(spec).await.unwrap_err(),
        StoreError::LayerExists("shared".into())
    );
    let req = |ops, who: &str, op_id: Option<&str>| WriteRequest {
        layer: "shared".into(),
        ops,
        writer: writer(who),
        op_id: op_id.map(Into::into),
    };
    a.apply(req(vec![create("f", 1.0)], "w", None))
        .await
        .expect("create f");

    // Both nodes edit version 1 at once: exactly one wins, the other gets a conflict.
    let (ra, rb) = tokio::join!(
        a.apply(req(vec![patch("f", 10, Some(1))], "wa", None)),
        b.apply(req(vec![patch("f", 20, Some(1))], "wb", None)),
    );
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one conflicting edit wins: {ra:?} {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        matches!(loser, Err(StoreError::Conflict { expected: 1, .. })),
        "{loser:?}"
    );

    // Concurrent writers on both nodes: one gap-free log.
    let mut tasks = Vec::new();
    for (k, s) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let ops = vec![create(&format!("g{k}-{i}"), i as f64)];
                s.apply(WriteRequest {
                    layer: "shared".into(),
                    ops,
                    writer: writer(&format!("t{k}")),
                    op_id: None,
                })
                .await
                .expect("concurrent create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let page = b.changes("shared", 0, 10_000).await.expect("changes");
    let seqs: Vec<u64> = page.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=102).collect::<Vec<_>>(), "gap-free across nodes");
    assert_eq!(a.layer("shared").await.expect("layer").count, 101);

    // Locks taken through A are enforced through B.
    a.lock("shared", &["f".into()], &writer("locker"), 60_000)
        .await
        .expect("lock");
    let f = b.get("shared", "f").await.expect("get").expect("f");
    let e = b
        .apply(req(vec![patch("f", 30, Some(f.version))], "other", None))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert!(matches!(
        b.lock("shared", &["f".into()], &writer("other"), 1000)
            .await
            .unwrap_err(),
        StoreError::Locked { .. }
    ));
    assert_eq!(b.locks("shared").await.expect("locks").len(), 1);

    // An op id applied through A is a repeat through B.
    let first = a
        .apply(req(vec![create("h", 5.0)], "idem", Some("op-1")))
        .await
        .expect("first");
    let again = b
        .apply(req(vec![create("h", 5.0)], "idem", Some("op-1")))
        .await
        .expect("again");
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.changes, again.changes);
    a.drop_schema().await.expect("drop schema");
}

/// Filters that have an SQL form and those that do not give the same answers, and user
/// input never reaches the SQL text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_values_are_parameters() {
    let s = open(&unique_schema("param"), 1000).await;
    s.create_layer(LayerSpec {
        name: "p".into(),
        ..Default::default()
    })
    .await
    .expect("layer");
    let mut ops = Vec::new();
    for (i, name) in ["a'b", "x\"; DROP TABLE features; --", "plain"]
        .iter()
        .enumerate()
    {
        ops.push(WriteOp::Create {
            feature: ValidFeature {
                id: Some(format!("f{i}")),
                bbox: None,
                geometry: None,
                properties: json!({ "name": name })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            },
        });
    }
    s.apply(WriteRequest {
        layer: "p".into(),
        ops,
        writer: writer("w"),
        op_id: None,
    })
    .await
    .expect("write");
    let q = |text: &str| FeatureQuery {
        filter: Some(Arc::new(geostream_filter::Filter {
            attribute: Some(
                geostream_filter::AttributeFilter::parse_text(text, &Default::default())
                    .expect("cql2"),
            ),
            ..Default::default()
        })),
        limit: 10,
        ..Default::default()
    };
    let page = s
        .query("p", q("name = 'x\"; DROP TABLE features; --'"))
        .await
        .expect("query");
    assert_eq!(
        page.features
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>(),
        ["f1"]
    );
    let page = s.query("p", q("name = 'a''b'")).await.expect("query");
    assert_eq!(page.features.len(), 1);
    // `%` has no SQL translation: evaluated in Rust, same paging contract.
    let page = s
        .query("p", q("name LIKE '%' AND 7 % 2 = 1"))
        .await
        .expect("query");
    assert_eq!(page.features.len(), 3);
    s.drop_schema().await.expect("drop schema");
}

/// Durable edits per second through the pool: the figure the design notes quote. One
/// layer (writes serialised by its row lock) and eight layers (parallel), eight writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_edit_rate() {
    let s = open(&unique_schema("rate"), 100_000).await;
    for l in 0..8 {
        s.create_layer(LayerSpec {
            name: format!("r{l}"),
            last_writer_wins: true,
            ..Default::default()
        })
        .await
        .expect("layer");
    }
    for layers in [1usize, 8] {
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for w in 0..8usize {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let layer = format!("r{}", w % layers);
                for i in 0..100 {
                    s.apply(WriteRequest {
                        layer: layer.clone(),
                        ops: vec![create(&format!("{layers}-w{w}-{i}"), i as f64)],
                        writer: writer(&format!("w{w}")),
                        op_id: Some(format!("{layers}-{w}-{i}")),
                    })
                    .await
                    .expect("edit");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let rate = 800.0 / started.elapsed().as_secs_f64();
        eprintln!("postgres: {rate:.0} durable edits/s, 8 writers on {layers} layer(s)");
        assert!(rate > 50.0, "{rate:.0} edits/s is far too slow");
    }
    s.drop_schema().await.expect("drop schema");
}
