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

/// Drops the schemas a test made when it ends, passed or failed, so that a failing run
/// leaves nothing in a developer's database.
#[derive(Default)]
struct Schemas(Mutex<Vec<PostgresStore>>);

impl Schemas {
    fn of(s: &PostgresStore) -> Schemas {
        let schemas = Schemas::default();
        schemas.keep(s);
        schemas
    }

    fn keep(&self, s: &PostgresStore) {
        self.0.lock().push(s.clone());
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let stores: Vec<_> = std::mem::take(&mut *self.0.lock());
        // `Drop` cannot await: this thread blocks while the multi-threaded runtime's workers
        // drive the connections (every test here runs on one).
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for s in stores {
                    if let Err(e) = s.drop_schema().await {
                        eprintln!("could not drop schema {}: {e}", s.schema());
                    }
                }
            })
        });
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
    let _drop = Schemas::of(&a);
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

    // One op id sent through both nodes at once, 20 times: each node's group reads the key
    // before the other records it, so the later one must notice, roll back and replay.
    for round in 0..20 {
        let op_id = format!("both-{round}");
        let id = format!("both-{round}");
        let (ra, rb) = tokio::join!(
            a.apply(req(vec![create(&id, 1.0)], "racer", Some(&op_id))),
            b.apply(req(vec![create(&id, 1.0)], "racer", Some(&op_id))),
        );
        let (ra, rb) = (ra.expect("through a"), rb.expect("through b"));
        assert_eq!(
            [ra.replayed, rb.replayed].iter().filter(|r| !**r).count(),
            1,
            "round {round}: exactly one applies"
        );
        assert_eq!(ra.changes, rb.changes, "round {round}: the same answer");
    }
    let page = a.changes("shared", 0, 10_000).await.expect("changes");
    assert_eq!(
        page.changes.len(),
        103 + 20,
        "each raced create applied once"
    );
}

/// Filters that have an SQL form and those that do not give the same answers, and user
/// input never reaches the SQL text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_values_are_parameters() {
    let s = open(&unique_schema("param"), 1000).await;
    let _drop = Schemas::of(&s);
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
}

/// Durable edits per second through the pool: the figure the design notes quote. One
/// layer (writes serialised by its row lock) and eight layers (parallel), eight writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_edit_rate() {
    let s = open(&unique_schema("rate"), 100_000).await;
    let _drop = Schemas::of(&s);
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
}

/// Group commit on a hot layer: 50 concurrent writers on one layer, over two nodes (two
/// stores on one schema), each patching its own feature with the version it last saw and
/// racing the others on one shared feature. The log stays dense (1..=n, in order, each
/// change's version one above the feature's previous one), no acknowledged edit is lost,
/// conflicts are exactly the races, every op id replayed answers the first outcome, and the
/// edits were committed in groups (fewer transactions than requests). A value the database
/// refuses fails alone inside a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_layer_group_commit() {
    const WRITERS: usize = 50;
    const EDITS: usize = 20;
    let schema = unique_schema("hot");
    let a = open(&schema, 100_000).await;
    let _drop = Schemas::of(&a);
    let b = open(&schema, 100_000).await;
    a.create_layer(LayerSpec {
        name: "hot".into(),
        ..Default::default()
    })
    .await
    .expect("layer");
    let req = |ops, who: String, op_id: Option<String>| WriteRequest {
        layer: "hot".into(),
        ops,
        writer: writer(&who),
        op_id,
    };
    let mut setup: Vec<WriteOp> = (0..WRITERS)
        .map(|w| create(&format!("own{w}"), w as f64))
        .collect();
    setup.push(create("shared", 0.0));
    a.apply(req(setup, "setup".into(), None))
        .await
        .expect("setup");

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut conflicts = 0usize;
            let mut version = 1;
            for i in 0..EDITS {
                let op_id = format!("w{w}-{i}");
                let out = s
                    .apply(req(
                        vec![patch(&format!("own{w}"), i as i64, Some(version))],
                        format!("w{w}"),
                        Some(op_id.clone()),
                    ))
                    .await
                    .expect("own edit");
                assert!(!out.replayed);
                version = out.changes[0].version;
                acked.push((op_id, out));
                // The shared feature: read, then edit with that version; a race is a conflict.
                let seen = s.get("hot", "shared").await.expect("get").expect("shared");
                match s
                    .apply(req(
                        vec![patch("shared", (w * 1000 + i) as i64, Some(seen.version))],
                        format!("w{w}"),
                        Some(format!("s{w}-{i}")),
                    ))
                    .await
                {
                    Ok(out) => acked.push((format!("s{w}-{i}"), out)),
                    Err(StoreError::Conflict {
                        expected, current, ..
                    }) => {
                        assert_eq!(expected, seen.version);
                        assert!(current.expect("current").version > expected);
                        conflicts += 1;
                    }
                    Err(e) => panic!("shared edit: {e:?}"),
                }
            }
            (w, acked, conflicts)
        }));
    }
    let mut acked = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (w, a, c) = t.await.expect("writer");
        acked.extend(a.into_iter().map(|(op, out)| (w, op, out)));
        conflicts += c;
    }
    let (groups, requests) = a.write_stats().get();
    let (groups_b, requests_b) = b.write_stats().get();
    assert!(
        groups + groups_b < requests + requests_b,
        "edits were grouped: {groups}+{groups_b} transactions for {requests}+{requests_b} requests"
    );

    // Dense log, versions one step at a time per feature, every acknowledged change in it.
    let page = a.changes("hot", 0, 100_000).await.expect("changes");
    let n = WRITERS + 1 + WRITERS * EDITS + (WRITERS * EDITS - conflicts);
    assert_eq!(page.changes.len(), n, "every edit logged once");
    for (i, c) in page.changes.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1, "dense log");
    }
    let mut versions = std::collections::HashMap::new();
    for c in &page.changes {
        let v = versions.entry(c.id.clone()).or_insert(0u64);
        assert_eq!(c.version, *v + 1, "version of {} at seq {}", c.id, c.seq);
        *v = c.version;
    }
    let logged: std::collections::HashMap<u64, &geostream_core::feature::Change> =
        page.changes.iter().map(|c| (c.seq, c)).collect();
    for (_, _, out) in &acked {
        for c in &out.changes {
            assert_eq!(
                logged.get(&c.seq),
                Some(&c),
                "acknowledged change {} logged",
                c.seq
            );
        }
    }
    for w in 0..WRITERS {
        let f = b
            .get("hot", &format!("own{w}"))
            .await
            .expect("get")
            .expect("own");
        assert_eq!(f.version, EDITS as u64 + 1);
        assert_eq!(f.properties["n"], json!(EDITS - 1));
    }
    let shared = a.get("hot", "shared").await.expect("get").expect("shared");
    assert_eq!(shared.version, (WRITERS * EDITS - conflicts) as u64 + 1);

    // Every op id, replayed on either node, concurrently, answers its first outcome.
    let mut replays = Vec::new();
    for (w, op_id, first) in acked {
        let s = if w % 3 == 0 { a.clone() } else { b.clone() };
        replays.push(tokio::spawn(async move {
            let again = s
                .apply(req(
                    vec![patch("shared", -1, Some(1))],
                    format!("w{w}"),
                    Some(op_id),
                ))
                .await
                .expect("replay");
            assert!(again.replayed);
            assert_eq!(again.changes, first.changes);
        }));
    }
    for r in replays {
        r.await.expect("replay task");
    }
    assert_eq!(
        a.layer("hot").await.expect("layer").seq,
        n as u64,
        "replays wrote nothing"
    );

    // A NUL character passes the planner but PostgreSQL refuses it: in a group of good
    // edits, only that one fails.
    let mut tasks = Vec::new();
    for k in 0..20 {
        let s = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut op = create(&format!("nul{k}"), 1.0);
            if k == 7
                && let WriteOp::Create { feature } = &mut op
            {
                feature.properties.insert("bad".into(), json!("a\u{0}b"));
            }
            (k, s.apply(req(vec![op], format!("n{k}"), None)).await)
        }));
    }
    for t in tasks {
        let (k, r) = t.await.expect("task");
        match (k, r) {
            (7, Err(StoreError::Invalid(_))) => {}
            (7, r) => panic!("the NUL edit: {r:?}"),
            (_, r) => {
                r.expect("a good edit beside a bad one");
            }
        }
    }
    assert_eq!(
        a.layer("hot").await.expect("layer").count,
        WRITERS as u64 + 1 + 19
    );
}

/// The change log has no foreign key to its layer (schema version 4): deleting a layer must
/// delete its changes itself, including those of a write that committed while the delete
/// waited for the layer's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_layer_deletes_its_changes() {
    let schema = unique_schema("del");
    let s = open(&schema, 100_000).await;
    let _drop = Schemas::of(&s);
    s.create_layer(LayerSpec {
        name: "gone".into(),
        ..Default::default()
    })
    .await
    .expect("layer");
    s.create_layer(LayerSpec {
        name: "kept".into(),
        ..Default::default()
    })
    .await
    .expect("layer");
    let write = |layer: &str, id: &str| WriteRequest {
        layer: layer.into(),
        ops: vec![create(id, 1.0)],
        writer: writer("c"),
        op_id: None,
    };
    for i in 0..20 {
        s.apply(write("gone", &format!("g{i}")))
            .await
            .expect("apply");
    }
    s.apply(write("kept", "k")).await.expect("apply");
    // Writes racing the delete: each either committed before it (and its changes go with the
    // layer) or finds the layer gone.
    let racing: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let _ = s.apply(write("gone", &format!("r{i}"))).await;
            })
        })
        .collect();
    s.delete_layer("gone").await.expect("delete");
    for t in racing {
        t.await.expect("write task");
    }
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".changes"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "only the kept layer's change is left");
}

/// A node's writes over many layers share groups: while a large group (a batch) waits for
/// its layer's row lock (held here by another transaction), the writes of seven other layers
/// commit beside it in a few transactions, not one per layer, and a write to a missing layer
/// fails alone. Then
/// two nodes write rotating sets of eight layers at once: groups that share layers lock them
/// in one order, so none deadlocks, and every layer's log stays dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_span_layers() {
    const LAYERS: usize = 8;
    let schema = unique_schema("span");
    let a = open(&schema, 100_000).await;
    let _drop = Schemas::of(&a);
    let b = open(&schema, 100_000).await;
    let layer = |l: usize| format!("l{l}");
    for l in 0..LAYERS {
        a.create_layer(LayerSpec {
            name: layer(l),
            last_writer_wins: true,
            ..Default::default()
        })
        .await
        .expect("layer");
    }
    let req = |l: String, ops, who: &str| WriteRequest {
        layer: l,
        ops,
        writer: writer(who),
        op_id: None,
    };
    for l in 0..LAYERS {
        a.apply(req(layer(l), vec![create("f", l as f64)], "setup"))
            .await
            .expect("setup");
    }

    // Layer l0's row is locked by another transaction: a batch to it waits in its group.
    let (blocker, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM \"{schema}\".layers WHERE name = 'l0' FOR UPDATE"
        ))
        .await
        .expect("lock l0");
    let (before, _) = a.write_stats().get();
    let blocked = {
        let a = a.clone();
        tokio::spawn(async move {
            let batch = (0..100).map(|n| patch("f", n, None)).collect();
            a.apply(req("l0".into(), batch, "w0")).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut tasks = Vec::new();
    for k in 0..2 * (LAYERS - 1) {
        let a = a.clone();
        let l = layer(1 + k % (LAYERS - 1));
        tasks.push(tokio::spawn(async move {
            a.apply(req(l, vec![patch("f", k as i64, None)], "w")).await
        }));
    }
    let missing = {
        let a = a.clone();
        tokio::spawn(async move {
            a.apply(req("missing".into(), vec![create("g", 0.0)], "w"))
                .await
        })
    };
    let within = std::time::Duration::from_secs(20);
    for t in tasks {
        tokio::time::timeout(within, t)
            .await
            .expect("the other layers' writes do not wait for l0")
            .expect("task")
            .expect("write");
    }
    let missing = tokio::time::timeout(within, missing)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(
        missing.unwrap_err(),
        StoreError::LayerNotFound("missing".into())
    );
    let (after, _) = a.write_stats().get();
    assert!(
        after - before <= 4,
        "15 writes over 8 layers took {} transactions",
        after - before
    );
    assert!(!blocked.is_finished(), "l0's write waits for its row lock");
    blocker.batch_execute("COMMIT").await.expect("release l0");
    let out = tokio::time::timeout(within, blocked)
        .await
        .expect("l0's write ends once the lock is released")
        .expect("task")
        .expect("l0's write");
    assert_eq!(out.changes.last().map(|c| c.version), Some(101));
    for l in 1..LAYERS {
        let f = a.get(&layer(l), "f").await.expect("get").expect("f");
        assert_eq!(f.version, 3, "two edits of {}", layer(l));
    }

    // Two nodes, sixteen writers, each edit to the next of eight layers: the groups of both
    // nodes share layers all the time.
    const WRITERS: usize = 16;
    const EDITS: usize = 40;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..EDITS {
                let l = (w + i) % LAYERS;
                s.apply(req(
                    layer(l),
                    vec![patch("f", (w * 1000 + i) as i64, None)],
                    &format!("w{w}"),
                ))
                .await
                .unwrap_or_else(|e| panic!("writer {w}, edit {i} to l{l}: {e:?}"));
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(120), t)
            .await
            .expect("no writer waits forever")
            .expect("writer");
    }
    let mut total = 0;
    for l in 0..LAYERS {
        let page = b.changes(&layer(l), 0, 100_000).await.expect("changes");
        for (i, c) in page.changes.iter().enumerate() {
            assert_eq!(c.seq, i as u64 + 1, "dense log of {}", layer(l));
            assert_eq!(c.version, i as u64 + 1, "versions of {}", layer(l));
        }
        let head = a.layer(&layer(l)).await.expect("layer");
        assert_eq!(head.seq, page.changes.len() as u64);
        total += page.changes.len();
    }
    // Setup, the first part's 100 + 14 edits, and the writers'.
    assert_eq!(total, LAYERS + 114 + WRITERS * EDITS);
}
