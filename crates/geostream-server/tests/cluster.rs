//! Three server nodes sharing one PostgreSQL/PostGIS store and one NATS, acting as one:
//! a real AIS trajectory replayed through node A while nodes B and C edit concurrently, with
//! every subscriber (each on its own node and viewport) receiving exactly the enter / update /
//! exit sequence an oracle computes from the edits in sequence order; conflicting edits on two
//! nodes (exactly one wins); locks taken on one node enforced on another; channel messages,
//! history, resume and presence across nodes; and a node shut down mid-run whose clients
//! reconnect to another node and resume with nothing missing.
//!
//! Needs PostgreSQL with PostGIS (`GEOSTREAM_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS with JetStream
//! (`GEOSTREAM_TEST_NATS_URL`, default `nats://127.0.0.1:4222`); `scripts/test.sh` starts
//! both. If either is unreachable the test fails saying so. Each run uses a schema and a
//! subject prefix of its own, removed at the end.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::backends::{Backends, nats_url, pg_url};
use common::{TestServer, Ws, http_json, http_publish};
use geostream_core::codec::Encoding;
use geostream_core::error::ErrorCode;
use geostream_server::config::{BrokerConfig, StoreConfig};
use serde_json::{Value, json};

impl Backends {
    /// Starts a node on these backends.
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
        })
        .await
    }
}

/// Real positions: the first `n` reports of the AIS file (New York harbour, 2020-06-30).
fn ais_positions(n: usize) -> Vec<(String, f64, f64, f64)> {
    let dir = common::datasets();
    let raw = std::fs::read(dir.join("trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst"))
        .expect("AIS file");
    let text = String::from_utf8(zstd::decode_all(&raw[..]).expect("zstd")).expect("utf-8");
    let mut out = Vec::new();
    for line in text.lines().skip(1).take(n) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f[i].parse::<f64>().expect("number");
        out.push((format!("ais-{}", f[1]), num(2), num(3), num(4)));
    }
    out
}

fn point(id: &str, x: f64, y: f64, props: Value) -> Value {
    json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": props })
}

/// A feature's position and speed (`None`: deleted), as the oracle tracks it.
type At = Option<(f64, f64, f64)>;

/// One accepted edit, as the oracle needs it.
#[derive(Clone, Debug)]
struct Edit {
    seq: u64,
    id: String,
    /// The new position and speed (`None`: deleted).
    at: Option<(f64, f64, f64)>,
}

/// A subscriber's view: a box and a minimum speed.
#[derive(Clone, Copy)]
struct View {
    bbox: [f64; 4],
    min_sog: f64,
}

impl View {
    fn sees(&self, at: Option<(f64, f64, f64)>) -> bool {
        at.is_some_and(|(x, y, sog)| {
            x >= self.bbox[0]
                && x <= self.bbox[2]
                && y >= self.bbox[1]
                && y <= self.bbox[3]
                && sog > self.min_sog
        })
    }

    fn params(&self, layer: &str) -> Value {
        json!({ "layer": layer, "bbox": self.bbox, "filter": format!("sog > {}", self.min_sog) })
    }
}

/// What a subscriber must receive for `edits` (in sequence order), starting from `state`.
fn oracle(
    view: View,
    edits: &[Edit],
    state: &mut HashMap<String, At>,
) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for e in edits {
        let before = view.sees(state.get(&e.id).copied().flatten());
        let after = view.sees(e.at);
        let kind = match (before, after, e.at.is_none()) {
            (true, _, true) => Some("delete"),
            (false, true, _) => Some("enter"),
            (true, true, _) => Some("update"),
            (true, false, _) => Some("exit"),
            _ => None,
        };
        if let Some(k) = kind {
            out.push((e.seq, k.to_string(), e.id.clone()));
        }
        state.insert(e.id.clone(), e.at);
    }
    out
}

/// Reads `n` feature pushes: (seq, kind, id).
async fn feature_pushes(ws: &mut Ws, n: usize) -> Vec<(u64, String, String)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let p = ws.push_of("feature").await;
        got.push((
            p["seq"].as_u64().expect("seq"),
            p["kind"].as_str().expect("kind").to_string(),
            p["id"].as_str().expect("id").to_string(),
        ));
    }
    got
}

async fn replace(ws: &mut Ws, layer: &str, id: &str, x: f64, y: f64, sog: f64) -> Edit {
    let r = ws
        .ok(
            "feature.replace",
            json!({ "layer": layer, "id": id, "feature": point(id, x, y, json!({ "sog": sog })) }),
        )
        .await;
    Edit {
        seq: r["seq"].as_u64().expect("seq"),
        id: id.to_string(),
        at: Some((x, y, sog)),
    }
}

/// Drains the snapshot pages a subscription starts with.
async fn skip_snapshot(ws: &mut Ws) {
    loop {
        let p = ws.push_of("snapshot").await;
        if p["last"] == true {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_act_as_one() {
    let be = Backends::new("cluster_one").await;
    let a = be.node().await;
    let b = be.node().await;
    let c = be.node().await;

    // ----- layers: a replay on A, concurrent edits on B and C, viewers on every node -----
    let mut editor_a = Ws::connect(&a.ws_url(), Encoding::Msgpack).await;
    let mut editor_b = Ws::connect(&b.ws_url(), Encoding::Json).await;
    let mut editor_c = Ws::connect(&c.ws_url(), Encoding::Msgpack).await;
    editor_a
        .ok(
            "layer.create",
            json!({ "name": "ais", "last_writer_wins": true }),
        )
        .await;
    let west = View {
        bbox: [-74.30, 40.40, -74.06, 40.95],
        min_sog: 0.5,
    };
    let east = View {
        bbox: [-74.06, 40.40, -73.70, 40.95],
        min_sog: 0.5,
    };
    let fast = View {
        bbox: [-74.30, 40.40, -73.70, 40.95],
        min_sog: 8.0,
    };
    let mut viewers = Vec::new();
    for (srv, view) in [(&b, west), (&c, east), (&a, fast)] {
        let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
        let r = ws.ok("layer.subscribe", view.params("ais")).await;
        assert_eq!(r["seq"], 0);
        skip_snapshot(&mut ws).await;
        viewers.push((ws, view));
    }

    let track = ais_positions(240);
    let replay = async {
        let mut edits = Vec::new();
        for (id, x, y, sog) in &track {
            edits.push(replace(&mut editor_a, "ais", id, *x, *y, *sog).await);
        }
        edits
    };
    // B and C edit features of their own at the same time, in both halves of the harbour.
    let (mut edits, eb, ec) = tokio::join!(
        replay,
        side_edits(&mut editor_b, "b"),
        side_edits(&mut editor_c, "c")
    );
    edits.extend(eb);
    edits.extend(ec);
    edits.sort_by_key(|e| e.seq);
    assert_eq!(
        edits.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=edits.len() as u64).collect::<Vec<_>>(),
        "edits through three nodes got gap-free sequence numbers"
    );
    let mut states: Vec<HashMap<String, At>> = vec![HashMap::new(); viewers.len()];
    for (k, (ws, view)) in viewers.iter_mut().enumerate() {
        let want = oracle(*view, &edits, &mut states[k]);
        assert!(!want.is_empty(), "viewer {k} should see something");
        let got = feature_pushes(ws, want.len()).await;
        assert_eq!(got, want, "viewer {k}: exactly the oracle's sequence");
        ws.expect_silence(Duration::from_millis(300)).await;
    }

    // ----- conflicting edits on two nodes: exactly one wins -----
    editor_a
        .ok("layer.create", json!({ "name": "plans" }))
        .await;
    editor_a
        .ok(
            "feature.create",
            json!({ "layer": "plans", "feature": point("p", 0.0, 0.0, json!({ "v": 0 })) }),
        )
        .await;
    let patch =
        |v: i64| json!({ "layer": "plans", "id": "p", "version": 1, "properties": { "v": v } });
    let (ra, rb) = tokio::join!(
        editor_a.call("feature.patch", patch(1)),
        editor_b.call("feature.patch", patch(2)),
    );
    assert_eq!(
        [&ra, &rb].iter().filter(|r| r.is_ok()).count(),
        1,
        "exactly one of two conflicting edits wins: {ra:?} {rb:?}"
    );
    let lost = if ra.is_ok() { rb } else { ra };
    assert_eq!(lost.unwrap_err().code, ErrorCode::Conflict);

    // ----- a lock taken on A holds on B -----
    editor_a
        .ok("feature.lock", json!({ "layer": "plans", "ids": ["p"] }))
        .await;
    let e = editor_b
        .call(
            "feature.patch",
            json!({ "layer": "plans", "id": "p", "version": 2, "properties": { "v": 3 } }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Locked);
    editor_a
        .ok(
            "feature.patch",
            json!({ "layer": "plans", "id": "p", "version": 2, "properties": { "v": 4 } }),
        )
        .await;

    // ----- channels: published on B, delivered on A and C; presence everywhere -----
    let mut on_a = Ws::connect(&a.ws_url(), Encoding::Json).await;
    on_a.ok("hello", json!({ "info": { "name": "anna" } }))
        .await;
    let sa = on_a
        .ok(
            "channel.subscribe",
            json!({ "channel": "chat", "presence": true }),
        )
        .await;
    let epoch = sa["position"]["epoch"].as_str().expect("epoch").to_string();
    let mut on_c = Ws::connect(&c.ws_url(), Encoding::Msgpack).await;
    on_c.ok("hello", json!({ "info": { "name": "carl" } }))
        .await;
    let sc = on_c
        .ok("channel.subscribe", json!({ "channel": "chat" }))
        .await;
    assert_eq!(sc["position"]["epoch"], epoch, "one epoch on every node");
    // Anna sees Carl join, though he is on another node.
    loop {
        let j = on_a.push_of("join").await;
        if j["client"]["info"]["name"] == "carl" {
            break;
        }
    }
    for i in 1..=3 {
        http_publish(b.addr, "chat", json!({ "n": i })).await;
    }
    for ws in [&mut on_a, &mut on_c] {
        for i in 1..=3u64 {
            let m = ws.push_of("message").await;
            assert_eq!(
                (m["offset"].as_u64(), m["data"]["n"].as_u64()),
                (Some(i), Some(i))
            );
        }
    }
    // Presence asked on B (no local subscriber) lists both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_json(b.addr, "GET", "/v1/channels/chat/presence", None).await;
        assert_eq!(status, 200);
        let mut names: Vec<String> = body["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .filter_map(|c| c["info"]["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        if names == ["anna", "carl"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence on B: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ----- node C goes away mid-run: its clients resume on B with nothing missing -----
    let (east_ws, _) = viewers.remove(1);
    drop(east_ws);
    drop(on_c);
    drop(editor_c);
    c.shutdown().await;
    let last_layer_seq = edits.last().map_or(0, |e| e.seq);
    let mut more = Vec::new();
    for (id, x, y, sog) in ais_positions(300).into_iter().skip(240) {
        more.push(replace(&mut editor_a, "ais", &id, x, y, sog).await);
    }
    for i in 4..=6 {
        http_publish(a.addr, "chat", json!({ "n": i })).await;
    }
    // Carl reconnects to B and resumes the channel after offset 3.
    let mut carl = Ws::connect(&b.ws_url(), Encoding::Msgpack).await;
    let r = carl
        .ok(
            "channel.subscribe",
            json!({ "channel": "chat", "since": { "offset": 3, "epoch": epoch } }),
        )
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["replayed"].as_u64()),
        (Some(true), Some(3))
    );
    for i in 4..=6u64 {
        let m = carl.push_of("message").await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["n"].as_u64()),
            (Some(i), Some(i))
        );
    }
    // The east viewer reconnects to B and resumes the layer after the last change it saw.
    let mut east_again = Ws::connect(&b.ws_url(), Encoding::Msgpack).await;
    let mut params = east.params("ais");
    params["since"] = json!(last_layer_seq);
    let r = east_again.ok("layer.subscribe", params).await;
    assert_eq!(r["recovered"], true);
    let want = oracle(east, &more, &mut states[1]);
    let got = feature_pushes(&mut east_again, want.len()).await;
    assert_eq!(
        got, want,
        "resumed on another node: exactly the missed changes"
    );
    // And it is live again: an edit on A arrives.
    let e = replace(&mut editor_a, "ais", "probe", -73.9, 40.7, 9.0).await;
    let p = east_again.push_of("feature").await;
    assert_eq!(
        (p["seq"].as_u64(), p["kind"].as_str(), p["id"].as_str()),
        (Some(e.seq), Some("enter"), Some("probe"))
    );

    drop((editor_a, editor_b, on_a, carl, east_again, viewers));
    a.shutdown().await;
    b.shutdown().await;
    drop(be);
}

/// Edits by another node during the replay: features of its own, moving west to east
/// across both halves of the harbour, with varying speeds.
async fn side_edits(ws: &mut Ws, who: &str) -> Vec<Edit> {
    let mut edits = Vec::new();
    for i in 0..30 {
        let x = -74.25 + 0.018 * f64::from(i);
        let sog = f64::from(i % 12);
        edits.push(replace(ws, "ais", &format!("{who}-{}", i % 7), x, 40.6, sog).await);
    }
    edits
}
