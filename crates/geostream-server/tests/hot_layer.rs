//! A hot layer on a cluster: three server nodes sharing one PostgreSQL/PostGIS store and one
//! NATS, eight writers spread over them editing one layer at once (PostgreSQL group commit
//! batches their edits). Versions, conflicts and op-id replays behave exactly as the store
//! conformance suite requires; every acknowledged edit is in the final state and the log
//! has no hole; a subscriber on every node ends with that same state. The layer's writes go
//! to one owner node, and when it stops the others write at once. An uploaded raster
//! tile is served with the same bytes and ETag by every node, also after it is replaced
//! through another node.
//!
//! Needs PostgreSQL with PostGIS (`GEOSTREAM_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS with JetStream
//! (`GEOSTREAM_TEST_NATS_URL`, default `nats://127.0.0.1:4222`); if either is unreachable the
//! test fails saying so. The run uses a schema and a subject prefix of its own, removed at
//! the end.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::backends::{Backends, nats_url, pg_url};
use common::{TestServer, Ws};
use geostream_core::codec::Encoding;
use geostream_core::error::ErrorCode;
use geostream_server::config::{BrokerConfig, RasterLayerConfig, StoreConfig};
use serde_json::{Value, json};

const WRITERS: usize = 8;
const EDITS: usize = 15;

impl Backends {
    /// A node on these backends, with the raster layer `img` taking uploads.
    async fn node(&self) -> TestServer {
        let (schema, prefix) = (self.schema.clone(), self.prefix.clone());
        TestServer::start_with(move |c| {
            c.store = StoreConfig::Postgres {
                url: pg_url(),
                schema,
                pool_size: 8,
                change_retention: 100_000,
            };
            c.broker = BrokerConfig::Nats {
                url: nats_url(),
                prefix,
                replicas: 1,
                heartbeat_ms: 200,
                forward_writes: true,
                write_owner: Default::default(),
            };
            c.tiles.raster = vec![RasterLayerConfig {
                name: "img".into(),
                path: None,
                format: Some("png".into()),
                read_only: false,
            }];
        })
        .await
    }
}

/// A connection that says who it is, so its op ids are its own on every node.
async fn client(srv: &TestServer, id: &str) -> Ws {
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    ws.ok("hello", json!({ "client_id": id })).await;
    ws
}

fn point(id: &str, x: f64, y: f64, n: i64) -> Value {
    json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": { "n": n } })
}

/// An acknowledged edit: its op id, request and result.
struct Acked {
    op_id: String,
    method: &'static str,
    params: Value,
    result: Value,
}

/// A call whose success is remembered with its request.
async fn call(
    ws: &mut Ws,
    method: &'static str,
    params: Value,
) -> Result<Acked, geostream_core::error::RpcError> {
    let r = ws.call(method, params.clone()).await;
    r.map(|result| Acked {
        op_id: params["op_id"].as_str().expect("op id").to_string(),
        method,
        params,
        result,
    })
}

/// One writer: creates its own feature, then patches it `EDITS` times with the version it
/// holds, and after each patch edits the shared feature with the version it just read
/// (racing the others: a conflict is the expected answer to a lost race).
async fn writer(mut ws: Ws, w: usize) -> (Vec<Acked>, usize) {
    let mut acked = Vec::new();
    let mut conflicts = 0;
    let own = format!("own{w}");
    let a = call(
        &mut ws,
        "feature.create",
        json!({ "layer": "hot", "feature": point(&own, w as f64, 0.0, -1), "op_id": format!("c{w}") }),
    )
    .await
    .expect("create own");
    let mut version = a.result["version"].as_u64().expect("version");
    acked.push(a);
    for i in 0..EDITS {
        let a = call(
            &mut ws,
            "feature.patch",
            json!({ "layer": "hot", "id": own, "version": version, "properties": { "n": i }, "op_id": format!("p{w}-{i}") }),
        )
        .await
        .expect("own patch");
        assert_eq!(
            a.result["replayed"],
            Value::Null,
            "a first request is not a replay"
        );
        version = a.result["version"].as_u64().expect("version");
        assert_eq!(version, i as u64 + 2);
        acked.push(a);
        let seen = ws
            .ok("feature.get", json!({ "layer": "hot", "id": "shared" }))
            .await;
        let v = seen["feature"]["version"].as_u64().expect("shared version");
        match call(
            &mut ws,
            "feature.patch",
            json!({ "layer": "hot", "id": "shared", "version": v, "properties": { "n": w * 1000 + i }, "op_id": format!("s{w}-{i}") }),
        )
        .await
        {
            Ok(a) => {
                assert_eq!(a.result["version"].as_u64(), Some(v + 1));
                acked.push(a);
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
                let data = e.data.expect("conflict data");
                assert_eq!(data["expected"].as_u64(), Some(v));
                let current = data["current"]["version"].as_u64().expect("current");
                assert!(current > v, "a conflict means the feature moved on");
                conflicts += 1;
            }
        }
    }
    (acked, conflicts)
}

/// A subscriber's picture of the layer: id → (version, n), built from its pushes.
#[derive(Default)]
struct Picture {
    seq: u64,
    features: BTreeMap<String, (u64, Value)>,
}

impl Picture {
    fn apply(&mut self, p: &Value) {
        let seq = p["seq"].as_u64().expect("seq");
        assert!(
            seq > self.seq,
            "pushes in sequence order: {} then {seq}",
            self.seq
        );
        self.seq = seq;
        let id = p["id"].as_str().expect("id").to_string();
        let version = p["version"].as_u64().expect("version");
        match p["kind"].as_str().expect("kind") {
            "enter" => {
                let n = p["feature"]["properties"]["n"].clone();
                self.features.insert(id, (version, n));
            }
            "update" => {
                let entry = self
                    .features
                    .get_mut(&id)
                    .expect("an update of a known feature");
                entry.0 = version;
                if let Some(n) = p["properties"].get("n") {
                    entry.1 = n.clone();
                }
            }
            "exit" | "delete" => {
                self.features.remove(&id);
            }
            k => panic!("unexpected push kind {k}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_on_three_nodes() {
    let be = Backends::new("hot").await;
    let nodes = [be.node().await, be.node().await, be.node().await];

    let mut admin = client(&nodes[0], "admin").await;
    admin.ok("layer.create", json!({ "name": "hot" })).await;
    // A subscriber on every node, from the empty layer on.
    let mut subscribers = Vec::new();
    for srv in &nodes {
        let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
        let r = ws
            .ok(
                "layer.subscribe",
                json!({ "layer": "hot", "bbox": [-180, -90, 180, 90] }),
            )
            .await;
        assert_eq!(r["seq"], 0);
        loop {
            if ws.push_of("snapshot").await["last"] == true {
                break;
            }
        }
        subscribers.push(ws);
    }
    admin
        .ok(
            "feature.create",
            json!({ "layer": "hot", "feature": point("shared", 0.0, 1.0, -1) }),
        )
        .await;

    // Eight writers over the three nodes, all at once.
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let ws = client(&nodes[w % 3], &format!("writer-{w}")).await;
        tasks.push(tokio::spawn(writer(ws, w)));
    }
    let mut acked: Vec<(usize, Acked)> = Vec::new();
    let mut conflicts = 0;
    for (w, t) in tasks.into_iter().enumerate() {
        let (a, c) = t.await.expect("writer");
        acked.extend(a.into_iter().map(|a| (w, a)));
        conflicts += c;
    }
    assert!(conflicts > 0, "the writers raced on the shared feature");

    // One node owns the layer: the other two handed it their writers' edits, and it answered
    // every one of them.
    let (mut served, mut answered) = (Vec::new(), 0.0);
    for srv in &nodes {
        served.push(common::metric(srv.addr, "geostream_writes_served_total").await);
        answered += common::metric(
            srv.addr,
            "geostream_writes_forwarded_total{result=\"answered\"}",
        )
        .await;
        for failed in ["not_delivered", "no_answer"] {
            let series = format!("geostream_writes_forwarded_total{{result=\"{failed}\"}}");
            assert_eq!(common::metric(srv.addr, &series).await, 0.0, "{series}");
        }
    }
    let owner = (0..3)
        .max_by(|&a, &b| served[a].total_cmp(&served[b]))
        .unwrap();
    assert!(served[owner] > 0.0, "writes were forwarded: {served:?}");
    assert_eq!(answered, served.iter().sum::<f64>(), "{served:?}");

    // Every acknowledged edit has its own sequence number, and together they fill the log:
    // nothing applied was left unacknowledged, nothing acknowledged is missing.
    let mut seqs: Vec<u64> = acked
        .iter()
        .map(|(_, a)| a.result["seq"].as_u64().expect("seq"))
        .collect();
    seqs.push(1);
    seqs.sort_unstable();
    let n = 1 + WRITERS * (1 + EDITS) + (WRITERS * EDITS - conflicts);
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "a dense log");
    let layer = admin.ok("layer.get", json!({ "name": "hot" })).await;
    assert_eq!(layer["seq"].as_u64(), Some(n as u64));
    assert_eq!(layer["count"].as_u64(), Some(WRITERS as u64 + 1));

    // The final state, read through each node: every writer's last edit, and the shared
    // feature at one version per accepted edit.
    let mut expected: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    for srv in &nodes {
        let mut reader = Ws::connect(&srv.ws_url(), Encoding::Json).await;
        let body = reader
            .ok("feature.query", json!({ "layer": "hot", "limit": 100 }))
            .await;
        let state: BTreeMap<String, (u64, Value)> = body["features"]
            .as_array()
            .expect("features")
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().expect("id").to_string(),
                    (
                        f["version"].as_u64().expect("version"),
                        f["properties"]["n"].clone(),
                    ),
                )
            })
            .collect();
        if expected.is_empty() {
            expected = state;
        } else {
            assert_eq!(state, expected, "every node reads the same state");
        }
    }
    for w in 0..WRITERS {
        assert_eq!(
            expected.get(&format!("own{w}")),
            Some(&(EDITS as u64 + 1, json!(EDITS - 1))),
            "writer {w}'s last edit"
        );
    }
    let shared_edits = WRITERS * EDITS - conflicts;
    let last_shared = acked
        .iter()
        .filter(|(_, a)| a.params["id"] == "shared")
        .max_by_key(|(_, a)| a.result["seq"].as_u64())
        .expect("some shared edit won");
    assert_eq!(
        expected.get("shared"),
        Some(&(
            shared_edits as u64 + 1,
            last_shared.1.params["properties"]["n"].clone()
        ))
    );

    // Every subscriber, whatever its node, ends with exactly that state.
    for (k, ws) in subscribers.iter_mut().enumerate() {
        let mut picture = Picture::default();
        while picture.seq < n as u64 {
            let p = ws.push_of("feature").await;
            picture.apply(&p);
        }
        assert_eq!(picture.features, expected, "subscriber on node {k}");
        ws.expect_silence(Duration::from_millis(200)).await;
    }

    // Every op id, repeated through another node by the same client, answers the first
    // result without applying anything.
    let mut replays = Vec::new();
    for w in 0..WRITERS {
        replays.push(client(&nodes[(w + 1) % 3], &format!("writer-{w}")).await);
    }
    for (w, a) in &acked {
        let again = replays[*w].ok(a.method, a.params.clone()).await;
        assert_eq!(again["replayed"], true, "{} replayed", a.op_id);
        for key in ["id", "version", "seq"] {
            assert_eq!(again[key], a.result[key], "{} replayed: {key}", a.op_id);
        }
    }
    let layer = admin.ok("layer.get", json!({ "name": "hot" })).await;
    assert_eq!(
        layer["seq"].as_u64(),
        Some(n as u64),
        "replays wrote nothing"
    );

    // ----- an uploaded tile: the same bytes and ETag on every node -----
    let tile = "/v1/tiles/img/6/33/21";
    let one = png(1, 5000);
    let (status, _, body) = common::http(nodes[0].addr, "PUT", tile, &[], Some(one.clone())).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let first: Value = serde_json::from_slice(&body).expect("json");
    same_everywhere(&nodes, tile, &one, first["etag"].as_str().expect("etag")).await;
    // Replaced through another node: every node serves the new version, also the one that
    // had the old version cached.
    let two = png(2, 4000);
    let (status, _, body) = common::http(nodes[1].addr, "PUT", tile, &[], Some(two.clone())).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let second: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(second["version"], 2);
    assert_ne!(second["etag"], first["etag"]);
    same_everywhere(&nodes, tile, &two, second["etag"].as_str().expect("etag")).await;

    // The owner goes away: the others write the layer themselves at once, without waiting for
    // membership to take it for dead.
    drop((admin, subscribers, replays));
    let mut rest = Vec::new();
    for (k, srv) in nodes.into_iter().enumerate() {
        if k == owner {
            srv.shutdown().await;
        } else {
            rest.push(srv);
        }
    }
    for srv in &rest {
        let mut ws = client(srv, "after-the-owner").await;
        let id = format!("after-{}", srv.addr.port());
        let r = ws
            .ok(
                "feature.create",
                json!({ "layer": "hot", "feature": point(&id, 2.0, 2.0, 0) }),
            )
            .await;
        assert_eq!(r["version"], 1, "{r}");
    }
    for srv in rest {
        srv.shutdown().await;
    }
    drop(be);
}

/// A small PNG-signed tile (the server checks the signature).
fn png(tag: u8, len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend((0..len).map(|i| (i as u8).wrapping_mul(17).wrapping_add(tag)));
    v
}

/// Every node serves `bytes` under `etag` (waiting, for a node that cached an older
/// version, until the upload's announcement reached it).
async fn same_everywhere(nodes: &[TestServer], path: &str, bytes: &[u8], etag: &str) {
    let mut etags = HashMap::new();
    for (k, srv) in nodes.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (status, h, got) = common::http(srv.addr, "GET", path, &[], None).await;
            assert_eq!(status, 200, "node {k}");
            let e = h
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if e == etag {
                assert!(got == bytes, "node {k} serves the uploaded bytes");
                etags.insert(k, e);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {k} serves ETag {e}, not {etag}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(etags.len(), nodes.len());
}
