//! Ingest: `layer.import` with progress and cancellation, the `geostream import` and
//! `geostream replay` commands run as real processes against a real server, and the layer
//! methods' answers to bad input. Real-data parts read `datasets/`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestServer, Ws, datasets};
use geostream_core::codec::Encoding;
use serde_json::{Value, json};

const CITIES: &str = "points/geonames_cities15000.geojson.zst";
const AIS: &str = "trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst";

#[tokio::test]
async fn import_reports_progress_and_can_be_cancelled() {
    let data = datasets();
    let srv = TestServer::start_with(|c| c.import.dir = data.clone()).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;

    // A full import reports progress, then its result.
    let id = ws
        .send_request(
            "layer.import",
            json!({ "layer": "cities", "path": CITIES, "batch_size": 2000 }),
        )
        .await;
    let p = ws.push_of("$/progress").await;
    assert_eq!(p["id"], id);
    assert!(p["done"].as_u64().is_some());
    let r = ws.response(id).await.unwrap();
    assert_eq!(r["imported"], 34006);

    // A second import into another layer, cancelled after its first progress report.
    let id = ws
        .send_request(
            "layer.import",
            json!({ "layer": "cities2", "path": CITIES, "batch_size": 500 }),
        )
        .await;
    // Cancel once something is written (the first reports may come before any batch).
    loop {
        let p = ws.push_of("$/progress").await;
        if p["id"] == id && p["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
    }
    ws.notify("$/cancelRequest", json!({ "id": id })).await;
    let e = ws
        .response(id)
        .await
        .expect_err("the import was cancelled before it finished");
    assert_eq!(e.code.name(), "request_cancelled", "{e:?}");
    // What was committed before the cancel stays, and no more arrives afterwards.
    let n1 = ws.ok("layer.get", json!({ "name": "cities2" })).await["count"]
        .as_u64()
        .unwrap();
    assert!(n1 < 34006, "cancelled part-way ({n1})");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n2 = ws.ok("layer.get", json!({ "name": "cities2" })).await["count"]
        .as_u64()
        .unwrap();
    assert_eq!(n1, n2, "nothing is imported after the cancel");
    // The connection still serves.
    ws.ok("ping", json!({})).await;

    // Paths cannot leave the import directory.
    let e = ws
        .call(
            "layer.import",
            json!({ "layer": "x", "path": "../../../etc/passwd" }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "invalid_params", "{e:?}");
    srv.shutdown().await;
}

/// Runs the command off the async runtime (it blocks until the process exits).
async fn geostream_async(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        geostream(&args)
    })
    .await
    .unwrap()
}

fn geostream(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_geostream"))
        .args(args)
        .output()
        .expect("the geostream binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn layer_count(ws: &mut Ws, layer: &str) -> Option<u64> {
    let r = ws.call("layer.get", json!({ "name": layer })).await.ok()?;
    r["count"].as_u64()
}

/// Natural Earth 1:50m countries: two features share the id `036` (Australia, line 227, and
/// Ashmore and Cartier Is., line 231) and five have none. By default nothing is imported and
/// both lines are named; each option then imports the file.
#[tokio::test]
async fn command_line_import_reports_duplicate_ids_and_offers_policies() {
    let file = datasets().join("polygons/world_countries_50m.geojson.zst");
    let file = file.to_str().unwrap();
    let srv = TestServer::start().await;
    let server = srv.addr.to_string();
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;

    let (ok, out, err) =
        geostream_async(&["import", file, "--layer", "c", "--server", &server]).await;
    assert!(!ok, "duplicates fail the import by default: {out}");
    assert!(
        out.contains("id \"036\": line 227 (feature 226) and line 231 (feature 230)"),
        "both lines are named: {out}"
    );
    assert!(
        err.contains("nothing imported") && err.contains("--generate-ids"),
        "{err}"
    );
    assert_eq!(
        layer_count(&mut ws, "c").await,
        None,
        "not even the layer was made"
    );

    let (ok, out, err) = geostream_async(&[
        "import",
        file,
        "--layer",
        "c",
        "--duplicates",
        "skip",
        "--server",
        &server,
    ])
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("keeping the first (--duplicates skip)"),
        "{out}"
    );
    assert!(out.contains("imported 240 features"), "{out}");
    assert_eq!(layer_count(&mut ws, "c").await, Some(240));
    let f = ws
        .ok("feature.get", json!({ "layer": "c", "id": "036" }))
        .await;
    assert_eq!(f["feature"]["properties"]["name"], "Australia", "{f}");

    let (ok, out, _) = geostream_async(&[
        "import",
        file,
        "--layer",
        "r",
        "--duplicates",
        "replace",
        "--server",
        &server,
    ])
    .await;
    assert!(ok && out.contains("imported 240 features"), "{out}");
    let f = ws
        .ok("feature.get", json!({ "layer": "r", "id": "036" }))
        .await;
    assert_eq!(
        f["feature"]["properties"]["name"], "Ashmore and Cartier Is.",
        "{f}"
    );

    let (ok, out, _) = geostream_async(&[
        "import",
        file,
        "--layer",
        "g",
        "--generate-ids",
        "--server",
        &server,
    ])
    .await;
    assert!(ok && out.contains("imported 241 features"), "{out}");
    let (ok, out, _) = geostream_async(&[
        "import",
        file,
        "--layer",
        "n",
        "--id-property",
        "name",
        "--server",
        &server,
    ])
    .await;
    assert!(ok && out.contains("imported 241 features"), "{out}");
    let f = ws
        .ok("feature.get", json!({ "layer": "n", "id": "Australia" }))
        .await;
    assert_eq!(f["feature"]["properties"]["iso_n3"], "036", "{f}");
    srv.shutdown().await;
}

#[tokio::test]
async fn command_line_import_and_replay_reach_live_subscribers() {
    let data = datasets();
    let srv = TestServer::start().await;
    let server = srv.addr.to_string();

    // Import: a subscriber to the (not yet existing) layer is not possible, so subscribe to
    // the replay layer below; here check the summary and the count.
    let file = data.join(CITIES);
    let (ok, out, err) = geostream_async(&[
        "import",
        file.to_str().unwrap(),
        "--layer",
        "cities",
        "--server",
        &server,
    ])
    .await;
    assert!(ok, "import failed: {out}\n{err}");
    assert!(
        out.contains("imported 34006 features"),
        "summary says how many: {out}"
    );
    assert!(err.contains("importing"), "progress is shown: {err}");
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let info = ws.ok("layer.get", json!({ "name": "cities" })).await;
    assert_eq!(info["count"], 34006);

    // Importing the same file again rejects every feature (ids exist) and says why.
    let file = data.join(CITIES);
    let (ok, out, _) = geostream_async(&[
        "import",
        file.to_str().unwrap(),
        "--layer",
        "cities",
        "--server",
        &server,
    ])
    .await;
    assert!(ok);
    assert!(out.contains("rejected 34006"), "{out}");

    // Replay, with a live subscriber watching the whole harbour.
    ws.ok(
        "layer.create",
        json!({ "name": "ships", "last_writer_wins": true }),
    )
    .await;
    ws.ok(
        "layer.subscribe",
        json!({ "layer": "ships", "bbox": [-75, 40, -73, 41] }),
    )
    .await;
    ws.push_of("snapshot").await;
    let file = data.join(AIS);
    let (ok, out, err) = geostream_async(&[
        "replay",
        file.to_str().unwrap(),
        "--layer",
        "ships",
        "--speed",
        "0",
        "--server",
        &server,
    ])
    .await;
    assert!(ok, "replay failed: {out}\n{err}");
    assert!(out.contains("replayed 8689 position updates"), "{out}");
    let mut enters = 0;
    let mut updates = 0;
    for _ in 0..8689 {
        match ws.push_of("feature").await["kind"].as_str().unwrap() {
            "enter" => enters += 1,
            "update" => updates += 1,
            k => panic!("nothing leaves the harbour box: {k}"),
        }
    }
    assert_eq!(enters, 295, "one enter per vessel (manifest: 295 objects)");
    assert_eq!(updates, 8689 - 295);

    // Replaying into a layer that needs versions is refused with a reason.
    ws.ok("layer.create", json!({ "name": "strict" })).await;
    let file = data.join(AIS);
    let server = srv.addr.to_string();
    let (ok, _, err) = geostream_async(&[
        "replay",
        file.to_str().unwrap(),
        "--layer",
        "strict",
        "--server",
        &server,
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("last-writer-wins"), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn command_line_tools_explain_bad_input() {
    let dir = std::env::temp_dir().join(format!("gs-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "time,id,x,y\n1,2,3,4\n").unwrap();
    let (ok, _, err) = geostream(&["replay", bad.to_str().unwrap(), "--layer", "x"]);
    assert!(!ok);
    assert!(err.contains("timestamp,object_id,lon,lat"), "{err}");
    let bad = dir.join("bad.geojson");
    std::fs::write(&bad, "{\"type\": \"FeatureCollection\", \"features\": 7}").unwrap();
    let (ok, _, err) = geostream(&["import", bad.to_str().unwrap(), "--layer", "x"]);
    assert!(!ok);
    assert!(err.contains("bad.geojson"), "{err}");
    // No server listening: a clear connection error, not a hang.
    let good = dir.join("good.geojson");
    std::fs::write(
        &good,
        "{\"type\": \"Feature\", \"geometry\": null, \"properties\": {}}\n",
    )
    .unwrap();
    let (ok, _, err) = geostream(&[
        "import",
        good.to_str().unwrap(),
        "--layer",
        "x",
        "--server",
        "127.0.0.1:9",
    ]);
    assert!(!ok);
    assert!(err.contains("connection"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn layer_methods_refuse_bad_input_and_change_nothing() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.ok("layer.create", json!({ "name": "l" })).await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "feature.create",
            json!({ "layer": "l", "feature": { "type": "Feature", "geometry": { "type": "Point", "coordinates": [0, 91] }, "properties": {} } }),
            "invalid_feature",
        ),
        (
            "feature.create",
            json!({ "layer": "l", "feature": { "type": "Feature", "geometry": { "type": "LineString", "coordinates": [[0, 0]] }, "properties": {} } }),
            "invalid_feature",
        ),
        (
            "feature.create",
            json!({ "layer": "l", "feature": { "type": "Feature", "geometry": { "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]] }, "properties": {} } }),
            "invalid_feature",
        ),
        (
            "feature.create",
            json!({ "layer": "l", "feature": { "type": "FeatureCollection" } }),
            "invalid_feature",
        ),
        (
            "feature.create",
            json!({ "layer": "l", "feature": { "type": "Feature", "geometry": null, "properties": { "big": "x".repeat(300_000) } } }),
            "invalid_feature",
        ),
        (
            "feature.create",
            json!({ "layer": "nope", "feature": { "type": "Feature", "geometry": null, "properties": {} } }),
            "layer_not_found",
        ),
        (
            "layer.subscribe",
            json!({ "layer": "l", "bbox": [0, 0, 10, 91] }),
            "invalid_filter",
        ),
        (
            "layer.subscribe",
            json!({ "layer": "l", "filter": "a = = 1" }),
            "invalid_filter",
        ),
        (
            "layer.subscribe",
            json!({ "layer": "l", "datetime": "soon" }),
            "invalid_filter",
        ),
        (
            "layer.subscribe",
            json!({ "layer": "l", "point": [0, 0] }),
            "invalid_filter",
        ),
        (
            "layer.subscribe",
            json!({ "layer": "l", "bbox": [0, 0, 1, 1], "point": [0, 0], "radius": 5 }),
            "invalid_filter",
        ),
        (
            "layer.subscribe",
            json!({ "layer": "nope" }),
            "layer_not_found",
        ),
        (
            "feature.query",
            json!({ "layer": "l", "filter": 42 }),
            "invalid_filter",
        ),
        (
            "layer.create",
            json!({ "name": "$reserved" }),
            "invalid_params",
        ),
        ("layer.create", json!({ "name": "l" }), "layer_exists"),
    ];
    for (method, params, name) in cases {
        let e = ws.call(method, params.clone()).await.unwrap_err();
        assert_eq!(e.code.name(), name, "{method} {params}: {e:?}");
        assert!(!e.message.is_empty());
    }
    let deep = (0..300).fold("a = 1".to_string(), |acc, i| format!("({acc}) OR b{i} = 1"));
    let e = ws
        .call("layer.subscribe", json!({ "layer": "l", "filter": deep }))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "invalid_filter");
    let info = ws.ok("layer.get", json!({ "name": "l" })).await;
    assert_eq!(
        (info["count"].as_u64(), info["seq"].as_u64()),
        (Some(0), Some(0))
    );
    srv.shutdown().await;
}
