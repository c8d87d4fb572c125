//! Layers and features over real sockets and a real SQLite file: editing with versions,
//! filtered subscriptions with snapshots, enter/update/exit/delete, viewport moves, resume.

mod common;

use std::time::Duration;

use common::{TestServer, Ws};
use geostream_core::codec::Encoding;
use geostream_core::error::ErrorCode;
use serde_json::{Value, json};

fn point(id: &str, x: f64, y: f64, props: Value) -> Value {
    json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": props })
}

async fn layer(ws: &mut Ws, name: &str) {
    ws.ok("layer.create", json!({ "name": name })).await;
}

/// Collects snapshot pages until the last one; returns the feature ids.
async fn snapshot_ids(ws: &mut Ws) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let p = ws.push_of("snapshot").await;
        ids.extend(
            p["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_string()),
        );
        if p["last"] == true {
            ids.sort();
            return ids;
        }
    }
}

#[tokio::test]
async fn edits_with_versions_and_conflicts() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    layer(&mut ws, "roads").await;
    let r = ws
        .ok(
            "feature.create",
            json!({ "layer": "roads", "feature": point("a", 1.0, 2.0, json!({ "name": "A" })) }),
        )
        .await;
    assert_eq!(
        (r["id"].as_str(), r["version"].as_u64(), r["seq"].as_u64()),
        (Some("a"), Some(1), Some(1))
    );
    assert_eq!(r["feature"]["properties"]["name"], "A");
    // Without an id, the server picks one.
    let r = ws.ok("feature.create", json!({ "layer": "roads", "feature": { "type": "Feature", "geometry": null, "properties": {} } })).await;
    assert!(r["id"].as_str().unwrap().len() >= 16);
    // The same id again is a conflict carrying the current feature.
    let e = ws
        .call(
            "feature.create",
            json!({ "layer": "roads", "feature": point("a", 0.0, 0.0, json!({})) }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.data.unwrap()["current"]["properties"]["name"], "A");

    let r = ws.ok("feature.patch", json!({ "layer": "roads", "id": "a", "version": 1, "properties": { "name": "B", "lanes": 2 } })).await;
    assert_eq!(r["version"], 2);
    assert_eq!(
        r["feature"]["properties"],
        json!({ "name": "B", "lanes": 2 })
    );
    // A stale version: conflict with the current feature.
    let e = ws
        .call(
            "feature.patch",
            json!({ "layer": "roads", "id": "a", "version": 1, "properties": { "name": "C" } }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.data.unwrap()["current"]["version"], 2);
    // No version on a layer that is not last-writer-wins.
    let e = ws
        .call(
            "feature.replace",
            json!({ "layer": "roads", "id": "a", "feature": point("a", 3.0, 3.0, json!({})) }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    let r = ws.ok("feature.replace", json!({ "layer": "roads", "id": "a", "version": 2, "feature": point("a", 3.0, 3.0, json!({ "k": 1 })) })).await;
    assert_eq!(r["version"], 3);
    let g = ws
        .ok("feature.get", json!({ "layer": "roads", "id": "a" }))
        .await;
    assert_eq!(g["feature"]["geometry"]["coordinates"], json!([3.0, 3.0]));
    let r = ws
        .ok(
            "feature.delete",
            json!({ "layer": "roads", "id": "a", "version": 3 }),
        )
        .await;
    assert_eq!(r["version"], 4);
    assert_eq!(
        ws.call("feature.get", json!({ "layer": "roads", "id": "a" }))
            .await
            .unwrap_err()
            .code,
        ErrorCode::FeatureNotFound
    );
    assert_eq!(
        ws.call("feature.get", json!({ "layer": "nope", "id": "a" }))
            .await
            .unwrap_err()
            .code,
        ErrorCode::LayerNotFound
    );
    let info = ws.ok("layer.get", json!({ "name": "roads" })).await;
    assert_eq!(
        (info["seq"].as_u64(), info["count"].as_u64()),
        (Some(5), Some(1))
    );
}

#[tokio::test]
async fn subscribers_see_enter_update_exit_and_delete() {
    let srv = TestServer::start().await;
    let mut editor = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    editor
        .ok(
            "layer.create",
            json!({ "name": "ships", "last_writer_wins": true }),
        )
        .await;
    editor
        .ok(
            "feature.create",
            json!({ "layer": "ships", "feature": point("s1", 1.0, 1.0, json!({ "speed": 5 })) }),
        )
        .await;
    editor
        .ok(
            "feature.create",
            json!({ "layer": "ships", "feature": point("s2", 50.0, 50.0, json!({ "speed": 5 })) }),
        )
        .await;

    let mut viewer = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let r = viewer
        .ok(
            "layer.subscribe",
            json!({ "layer": "ships", "bbox": [0, 0, 10, 10] }),
        )
        .await;
    assert_eq!(r["seq"], 2);
    let sub = r["sub"].clone();
    assert_eq!(snapshot_ids(&mut viewer).await, vec!["s1"]);

    // s1 moves within view: update with the new geometry only.
    editor.ok("feature.replace", json!({ "layer": "ships", "id": "s1", "feature": point("s1", 2.0, 2.0, json!({ "speed": 5 })) })).await;
    let u = viewer.push_of("feature").await;
    assert_eq!(
        (
            u["sub"].clone(),
            u["kind"].as_str(),
            u["id"].as_str(),
            u["seq"].as_u64()
        ),
        (sub.clone(), Some("update"), Some("s1"), Some(3))
    );
    assert_eq!(u["geometry"]["coordinates"], json!([2.0, 2.0]));
    assert!(
        u.get("properties").is_none(),
        "unchanged properties are not sent: {u}"
    );
    // A property changes: only it is sent.
    editor
        .ok(
            "feature.patch",
            json!({ "layer": "ships", "id": "s1", "properties": { "speed": 9 } }),
        )
        .await;
    let u = viewer.push_of("feature").await;
    assert_eq!(u["properties"], json!({ "speed": 9 }));
    assert!(u.get("geometry").is_none());
    // s2 moves into view: enter with the whole feature.
    editor.ok("feature.patch", json!({ "layer": "ships", "id": "s2", "geometry": { "type": "Point", "coordinates": [5.0, 5.0] } })).await;
    let e = viewer.push_of("feature").await;
    assert_eq!(
        (e["kind"].as_str(), e["id"].as_str()),
        (Some("enter"), Some("s2"))
    );
    assert_eq!(e["feature"]["properties"]["speed"], 5);
    // s1 leaves: exit.
    editor.ok("feature.patch", json!({ "layer": "ships", "id": "s1", "geometry": { "type": "Point", "coordinates": [20.0, 20.0] } })).await;
    let x = viewer.push_of("feature").await;
    assert_eq!(
        (x["kind"].as_str(), x["id"].as_str()),
        (Some("exit"), Some("s1"))
    );
    // s2 deleted: delete.
    editor
        .ok("feature.delete", json!({ "layer": "ships", "id": "s2" }))
        .await;
    let d = viewer.push_of("feature").await;
    assert_eq!(
        (d["kind"].as_str(), d["id"].as_str()),
        (Some("delete"), Some("s2"))
    );
    // A change far away is not sent.
    editor
        .ok(
            "feature.patch",
            json!({ "layer": "ships", "id": "s1", "properties": { "speed": 1 } }),
        )
        .await;
    viewer.expect_silence(Duration::from_millis(200)).await;
}
