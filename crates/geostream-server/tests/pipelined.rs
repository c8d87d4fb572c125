//! Pipelined requests over a real socket: many edits in flight on one connection are all
//! answered, once and correctly; they are applied in the order they were sent, across
//! features too, and the answers on one feature keep that order whatever else is in flight;
//! a request that is not pipelined (a barrier) sees every earlier edit.

mod common;

use std::collections::HashMap;

use common::{Got, TestServer, Ws};
use geostream_core::codec::{Encoding, Id, ServerFrame};
use serde_json::{Value, json};

fn point(id: &str, n: u64) -> Value {
    json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [1.0, 2.0] }, "properties": { "n": n } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_edits_in_flight_keep_per_feature_order() {
    let srv = TestServer::start_with(|c| {
        c.websocket.max_inflight_requests = 64;
        c.limits.requests_per_sec = 100_000;
        c.limits.request_burst = 100_000;
    })
    .await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    ws.ok(
        "layer.create",
        json!({ "name": "p", "last_writer_wins": true }),
    )
    .await;
    let features = 16u64;
    let rounds = 20u64;
    for f in 0..features {
        ws.ok(
            "feature.create",
            json!({ "layer": "p", "feature": point(&format!("f{f}"), 0) }),
        )
        .await;
    }
    // 320 patches sent without waiting: 20 rounds over 16 features, interleaved with pings
    // and publishes, which need no order.
    let mut sent: Vec<(i64, Option<(String, u64)>)> = Vec::new();
    for r in 1..=rounds {
        for f in 0..features {
            let id = format!("f{f}");
            let rid = ws
                .send_request(
                    "feature.patch",
                    json!({ "layer": "p", "id": id, "properties": { "n": r } }),
                )
                .await;
            sent.push((rid, Some((id, r))));
        }
        let rid = ws.send_request("ping", json!({})).await;
        sent.push((rid, None));
    }
    // A barrier: it runs after every edit above.
    let q = ws
        .send_request("feature.query", json!({ "layer": "p", "limit": 100 }))
        .await;
    // The answers as they arrive: those of one feature must come in the order it was edited.
    let what: HashMap<i64, Option<(String, u64)>> = sent.iter().cloned().collect();
    let mut versions: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut seqs: HashMap<i64, u64> = HashMap::new();
    let mut answered = 0;
    while answered < sent.len() {
        let (rid, r) = match ws.recv().await {
            Got::Frame(ServerFrame::Response {
                id: Id::Int(i),
                result,
            }) => (i, result),
            Got::Frame(ServerFrame::Notification { .. }) => continue,
            other => panic!("unexpected: {other:?}"),
        };
        answered += 1;
        if let Some(Some((id, round))) = what.get(&rid) {
            assert_eq!(r["id"], *id);
            let v = r["version"].as_u64().unwrap();
            seqs.insert(rid, r["seq"].as_u64().unwrap());
            versions.entry(id.clone()).or_default().push((*round, v));
        }
    }
    for (id, vs) in &versions {
        // Version k+1 is round k: the patches of one feature were applied in arrival order,
        // and answered in that order.
        let rounds: Vec<u64> = vs.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            rounds,
            (1..=rounds.len() as u64).collect::<Vec<_>>(),
            "{id}: answers out of order"
        );
        for (round, v) in vs {
            assert_eq!(*v, round + 1, "{id}: round {round} got version {v}");
        }
    }
    // The layer's sequence numbers follow the order the edits were sent, across features:
    // what a serial connection gives (a replayed file keeps the file's order).
    let in_send_order: Vec<u64> = sent
        .iter()
        .filter_map(|(rid, what)| what.as_ref().map(|_| seqs[rid]))
        .collect();
    let first = in_send_order[0];
    assert_eq!(
        in_send_order,
        (first..first + in_send_order.len() as u64).collect::<Vec<_>>(),
        "edits applied out of the order they were sent"
    );
    let page = ws.response(q).await.unwrap();
    let feats = page["features"].as_array().unwrap();
    assert_eq!(feats.len() as u64, features);
    for f in feats {
        assert_eq!(f["properties"]["n"], rounds, "{f}");
        assert_eq!(f["version"], rounds + 1);
    }
    srv.shutdown().await;
}

/// Responses of pipelined requests may come out of order; every request is still answered
/// exactly once, including errors, and the connection stays usable.
#[tokio::test]
async fn pipelined_errors_are_answered_by_id() {
    let srv = TestServer::start_with(|c| c.websocket.max_inflight_requests = 64).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.ok("layer.create", json!({ "name": "q" })).await;
    let ok = ws
        .send_request(
            "feature.create",
            json!({ "layer": "q", "feature": point("a", 1) }),
        )
        .await;
    let conflict = ws
        .send_request(
            "feature.patch",
            json!({ "layer": "q", "id": "a", "version": 7, "properties": { "n": 2 } }),
        )
        .await;
    let missing = ws
        .send_request("feature.get", json!({ "layer": "nope", "id": "a" }))
        .await;
    let dup = ws
        .send_request(
            "feature.create",
            json!({ "layer": "q", "feature": point("a", 3) }),
        )
        .await;
    assert_eq!(ws.response(ok).await.unwrap()["version"], 1);
    assert_eq!(
        ws.response(conflict).await.unwrap_err().code.name(),
        "conflict"
    );
    assert_eq!(
        ws.response(missing).await.unwrap_err().code.name(),
        "layer_not_found"
    );
    assert!(ws.response(dup).await.is_err());
    ws.ok("ping", json!({})).await;
    srv.shutdown().await;
}
