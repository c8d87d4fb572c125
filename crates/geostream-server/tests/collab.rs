//! Collaborative editing over real sockets: racing edits from the same version, locks with
//! their pushes and the grace period after a disconnect, repeated operation ids, all-or-
//! nothing batches, and presence with cursors on a layer.

mod common;

use std::time::Duration;

use common::{TestServer, Ws};
use geostream_core::codec::Encoding;
use serde_json::{Value, json};

fn point(id: &str, x: f64, y: f64) -> Value {
    json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": { "name": id } })
}

async fn client(srv: &TestServer, client_id: &str, name: &str) -> Ws {
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.ok(
        "hello",
        json!({ "client_id": client_id, "info": { "name": name } }),
    )
    .await;
    ws
}

#[tokio::test]
async fn racing_edits_from_the_same_version_one_wins() {
    let srv = TestServer::start().await;
    let mut a = client(&srv, "a", "Ada").await;
    let mut b = client(&srv, "b", "Bob").await;
    a.ok("layer.create", json!({ "name": "map" })).await;
    a.ok(
        "feature.create",
        json!({ "layer": "map", "feature": point("f", 1.0, 1.0) }),
    )
    .await;
    for round in 1..=20u64 {
        // Both edit from the version they read; send both before reading either answer.
        let ia = a
            .send_request(
                "feature.patch",
                json!({ "layer": "map", "id": "f", "version": round, "properties": { "by": "a" } }),
            )
            .await;
        let ib = b
            .send_request(
                "feature.patch",
                json!({ "layer": "map", "id": "f", "version": round, "properties": { "by": "b" } }),
            )
            .await;
        let (ra, rb) = (a.response(ia).await, b.response(ib).await);
        let (winner, loser) = match (&ra, &rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w.clone(), l.clone()),
            _ => panic!("round {round}: exactly one must win: {ra:?} / {rb:?}"),
        };
        assert_eq!(winner["version"], round + 1);
        assert_eq!(loser.code.name(), "conflict");
        let data = loser.data.unwrap();
        assert_eq!(
            data["current"]["version"],
            round + 1,
            "the loser learns the current version"
        );
        assert_eq!(
            data["current"]["properties"]["by"],
            winner["feature"]["properties"]["by"]
        );
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn locks_block_others_and_expire_after_the_holder_leaves() {
    let srv = TestServer::start_with(|c| c.layers.lock_grace_ms = 400).await;
    let mut a = client(&srv, "client-a", "Ada").await;
    let mut b = client(&srv, "client-b", "Bob").await;
    let mut watcher = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    a.ok(
        "layer.create",
        json!({ "name": "map", "last_writer_wins": true }),
    )
    .await;
    a.ok(
        "feature.create",
        json!({ "layer": "map", "feature": point("f", 1.0, 1.0) }),
    )
    .await;
    watcher
        .ok("layer.subscribe", json!({ "layer": "map" }))
        .await;
    watcher.push_of("snapshot").await;

    let r = a
        .ok(
            "feature.lock",
            json!({ "layer": "map", "ids": ["f"], "ttl_ms": 30000 }),
        )
        .await;
    assert_eq!(r["locks"][0]["client"], "client-a");
    let p = watcher.push_of("lock").await;
    assert_eq!(
        (p["locked"].as_bool(), p["id"].as_str()),
        (Some(true), Some("f"))
    );

    // B cannot write, and learns who holds it until when.
    let e = b
        .call(
            "feature.patch",
            json!({ "layer": "map", "id": "f", "properties": { "x": 1 } }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "locked");
    let d = e.data.unwrap();
    assert_eq!(d["client"], "client-a");
    assert!(d["until"].as_str().unwrap().ends_with('Z'));
    // B cannot take it either; A can still write.
    let e = b
        .call("feature.lock", json!({ "layer": "map", "ids": ["f"] }))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "locked");
    a.ok(
        "feature.patch",
        json!({ "layer": "map", "id": "f", "properties": { "x": 2 } }),
    )
    .await;

    // A reconnecting within the grace period with the same client id keeps its lock.
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut a = client(&srv, "client-a", "Ada").await;
    a.ok(
        "feature.lock",
        json!({ "layer": "map", "ids": ["f"], "ttl_ms": 30000 }),
    )
    .await;
    let e = b
        .call(
            "feature.patch",
            json!({ "layer": "map", "id": "f", "properties": { "x": 3 } }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "locked");

    // A leaves for good: after the grace period the lock is released and announced.
    drop(a);
    let p = loop {
        let p = watcher.push_of("lock").await;
        if p["locked"] == false {
            break p;
        }
    };
    assert_eq!(p["id"], "f");
    b.ok(
        "feature.patch",
        json!({ "layer": "map", "id": "f", "properties": { "x": 4 } }),
    )
    .await;
    srv.shutdown().await;
}

/// A lock whose time is up and that someone else takes at once (before any sweep) is
/// announced as released before the new lock, every time.
#[tokio::test]
async fn an_expired_lock_is_announced_released_before_it_is_taken_again() {
    let srv = TestServer::start().await;
    let mut a = client(&srv, "client-a", "Ada").await;
    let mut b = client(&srv, "client-b", "Bob").await;
    let mut watcher = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    a.ok(
        "layer.create",
        json!({ "name": "map", "last_writer_wins": true }),
    )
    .await;
    for i in 0..3 {
        a.ok(
            "feature.create",
            json!({ "layer": "map", "feature": point(&format!("f{i}"), 1.0, 1.0) }),
        )
        .await;
    }
    watcher
        .ok("layer.subscribe", json!({ "layer": "map" }))
        .await;
    watcher.push_of("snapshot").await;
    for i in 0..3 {
        let id = format!("f{i}");
        // 1 s is the shortest lock; the sweep runs every second, so without care the new
        // lock would often be announced before the old one's release.
        a.ok(
            "feature.lock",
            json!({ "layer": "map", "ids": [id], "ttl_ms": 1000 }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1020)).await;
        b.ok("feature.lock", json!({ "layer": "map", "ids": [id] }))
            .await;
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let p = watcher.push_of("lock").await;
            seen.push((
                p["client"].as_str().unwrap().to_string(),
                p["locked"].as_bool().unwrap(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("client-a".to_string(), true),
                ("client-a".to_string(), false),
                ("client-b".to_string(), true)
            ],
            "{id}"
        );
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn a_repeated_operation_id_is_applied_once() {
    let srv = TestServer::start().await;
    let mut a = client(&srv, "a", "Ada").await;
    a.ok("layer.create", json!({ "name": "map" })).await;
    let params = json!({ "layer": "map", "feature": point("f", 1.0, 1.0), "op_id": "op-1" });
    let first = a.ok("feature.create", params.clone()).await;
    // The acknowledgement was "lost": the client reconnects and sends the same edit again.
    drop(a);
    let mut a = client(&srv, "a", "Ada").await;
    let second = a.ok("feature.create", params).await;
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(first["version"], second["version"]);
    assert_eq!(second["replayed"], true);
    let patch = json!({ "layer": "map", "id": "f", "version": 1, "properties": { "n": 1 }, "op_id": "op-2" });
    let p1 = a.ok("feature.patch", patch.clone()).await;
    let p2 = a.ok("feature.patch", patch).await;
    assert_eq!(
        (p1["version"].as_u64(), p2["version"].as_u64()),
        (Some(2), Some(2))
    );
    let info = a.ok("layer.get", json!({ "name": "map" })).await;
    assert_eq!(info["seq"], 2, "two edits applied, not four");
    // Another client's identical op id is its own.
    let mut b = client(&srv, "b", "Bob").await;
    let r = b
        .ok(
            "feature.create",
            json!({ "layer": "map", "feature": point("g", 2.0, 2.0), "op_id": "op-1" }),
        )
        .await;
    assert_ne!(r["replayed"], true);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_batch_applies_all_or_nothing() {
    let srv = TestServer::start().await;
    let mut a = client(&srv, "a", "Ada").await;
    a.ok("layer.create", json!({ "name": "map" })).await;
    a.ok(
        "feature.create",
        json!({ "layer": "map", "feature": point("f", 1.0, 1.0) }),
    )
    .await;
    // The third operation is stale: nothing of the batch is applied.
    let e = a
        .call(
            "feature.batch",
            json!({ "layer": "map", "ops": [
                json!({ "op": "create", "feature": point("g", 2.0, 2.0) }),
                { "op": "patch", "id": "f", "version": 1, "properties": { "n": 1 } },
                { "op": "delete", "id": "f", "version": 1 },
            ]}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "conflict", "{e:?}");
    let info = a.ok("layer.get", json!({ "name": "map" })).await;
    assert_eq!(
        (info["seq"].as_u64(), info["count"].as_u64()),
        (Some(1), Some(1))
    );
    // A valid batch: consecutive sequence numbers.
    let r = a
        .ok(
            "feature.batch",
            json!({ "layer": "map", "ops": [
                json!({ "op": "create", "feature": point("g", 2.0, 2.0) }),
                { "op": "patch", "id": "f", "version": 1, "properties": { "n": 1 } },
                { "op": "delete", "id": "f", "version": 2 },
            ]}),
        )
        .await;
    let seqs: Vec<u64> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    srv.shutdown().await;
}

#[tokio::test]
async fn presence_and_cursors_on_a_layer() {
    let srv = TestServer::start().await;
    let mut a = client(&srv, "a", "Ada").await;
    let mut b = client(&srv, "b", "Bob").await;
    a.ok("layer.create", json!({ "name": "map" })).await;
    let ra = a.ok("presence.subscribe", json!({ "layer": "map" })).await;
    let names = |r: &Value| -> Vec<String> {
        let mut v: Vec<String> = r["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["info"]["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&ra), ["Ada"]);
    let rb = b.ok("presence.subscribe", json!({ "layer": "map" })).await;
    assert_eq!(names(&rb), ["Ada", "Bob"]);
    // A sees its own join first (joins are announced to everyone, the joiner included).
    let j = loop {
        let j = a.push_of("join").await;
        if j["client"]["info"]["name"] == "Bob" {
            break j;
        }
    };
    assert_eq!(j["sub"], ra["sub"]);

    // Cursors reach the others, tagged with who; the rate is limited.
    b.ok(
        "presence.cursor",
        json!({ "layer": "map", "position": [2.35, 48.85], "editing": ["f1"] }),
    )
    .await;
    let c = a.push_of("cursor").await;
    assert_eq!(c["client"]["info"]["name"], "Bob");
    assert_eq!(c["position"], json!([2.35, 48.85]));
    assert_eq!(c["editing"], json!(["f1"]));
    let e = b
        .call(
            "presence.cursor",
            json!({ "layer": "map", "position": [2.36, 48.85] }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "rate_limited");
    assert!(e.data.unwrap()["retry_after_ms"].as_u64().unwrap() <= 50);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // As a notification too.
    b.notify(
        "presence.cursor",
        json!({ "layer": "map", "position": null }),
    )
    .await;
    let c = a.push_of("cursor").await;
    assert_eq!(c["position"], Value::Null);
    // Bad cursors are refused.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let e = b
        .call(
            "presence.cursor",
            json!({ "layer": "map", "position": [200, 0] }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "invalid_params");
    let e = b
        .call("presence.subscribe", json!({ "layer": "nope" }))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "layer_not_found");

    // Leaving is announced.
    drop(b);
    let l = a.push_of("leave").await;
    assert_eq!(l["client"]["info"]["name"], "Bob");
    srv.shutdown().await;
}
