//! The demo page's server side: `/` for browsers, its static files, and the basemap layer
//! loaded at startup.

mod common;

use common::{TestServer, http, http_json};

/// A built page in a temporary folder, standing in for `web/dist`.
fn fake_dist(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("geostream-web-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>demo</title>").unwrap();
    std::fs::write(dir.join("main.js"), "console.log(1)").unwrap();
    std::fs::write(dir.join("sub/style.css"), "body{}").unwrap();
    dir
}

#[tokio::test]
async fn browsers_get_the_page_and_api_clients_json() {
    let dist = fake_dist("page");
    let d = dist.clone();
    let srv = TestServer::start_with(move |c| {
        c.web.dir = d;
        c.web.basemap = Default::default();
        c.web.ships_speed = 0.0;
    })
    .await;
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let (status, headers, body) = http(srv.addr, "GET", "/", &[("accept", html)], None).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(body, b"<!doctype html><title>demo</title>");
    let (status, json) = http_json(srv.addr, "GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(json["links"].is_array(), "{json}");

    let (status, headers, body) = http(srv.addr, "GET", "/web/main.js", &[], None).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(body, b"console.log(1)");
    let (status, headers, _) = http(srv.addr, "GET", "/web/sub/style.css", &[], None).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    for bad in [
        "/web/nothing.js",
        "/web/..%2F..%2Fetc%2Fpasswd",
        "/web/sub/../../x",
    ] {
        let (status, _, _) = http(srv.addr, "GET", bad, &[], None).await;
        assert_eq!(status, 404, "{bad}");
    }
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(dist);
}

#[tokio::test]
async fn without_a_build_browsers_are_told_how_to_make_one() {
    let srv = TestServer::start_with(|c| {
        c.web.dir = "/nonexistent/geostream-web".into();
        c.web.basemap = Default::default();
        c.web.ships_speed = 0.0;
    })
    .await;
    let (status, _, body) = http(srv.addr, "GET", "/", &[("accept", "text/html")], None).await;
    assert_eq!(status, 503);
    assert!(String::from_utf8(body).unwrap().contains("npm run build"));
    srv.shutdown().await;
}

#[tokio::test]
async fn the_basemap_layer_is_loaded_once_from_the_shipped_file() {
    let srv = TestServer::start_with(|c| c.web.basemap_layer = "world".into()).await;
    let (status, body) = http_json(srv.addr, "GET", "/v1/tiles/world.json", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vector_layers"][0]["id"], "world");
    let mut ws = common::Ws::connect(&srv.ws_url(), geostream_core::codec::Encoding::Json).await;
    let r = ws
        .ok(
            "feature.query",
            serde_json::json!({ "layer": "world", "limit": 1000 }),
        )
        .await;
    // The count of the shipped Natural Earth file (datasets/manifest.json: 177).
    assert_eq!(r["features"].as_array().unwrap().len(), 177);
    let france = r["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["properties"]["name"] == "France")
        .expect("France is in the basemap");
    assert_eq!(france["id"], "250");
    srv.shutdown().await;
}

/// Asks for the page as a browser would (which starts the ship replay).
async fn open_page(addr: std::net::SocketAddr) {
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let _ = http(addr, "GET", "/", &[("accept", html)], None).await;
}

async fn has_layer(ws: &mut common::Ws, name: &str) -> Option<serde_json::Value> {
    ws.call("layer.get", serde_json::json!({ "name": name }))
        .await
        .ok()
}

#[tokio::test]
async fn ships_replay_from_the_first_page_view_and_move() {
    // 600 times real time: the shipped hour of AIS plays in six seconds.
    let srv = TestServer::start_with(|c| {
        c.web.basemap = Default::default();
        c.web.dir = "/nonexistent/geostream-web".into();
        c.web.ships_speed = 600.0;
    })
    .await;
    let mut ws = common::Ws::connect(&srv.ws_url(), geostream_core::codec::Encoding::Json).await;
    // Nothing is replayed before the page is opened.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(has_layer(&mut ws, "ships").await.is_none());
    open_page(srv.addr).await;
    open_page(srv.addr).await; // a second view starts nothing more
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let info = loop {
        if let Some(info) = has_layer(&mut ws, "ships").await {
            break info;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ships layer");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(info["last_writer_wins"], true, "{info}");
    // Follow the harbour (the file's extent) and watch one ship move.
    let sub = ws
        .ok(
            "layer.subscribe",
            serde_json::json!({ "layer": "ships", "bbox": [-74.3, 40.3, -73.6, 40.9] }),
        )
        .await;
    assert!(sub["sub"].is_u64());
    // Enters carry the whole feature, updates what changed (here the geometry and some
    // properties).
    let mut first: std::collections::HashMap<String, serde_json::Value> = Default::default();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let moved = loop {
        assert!(tokio::time::Instant::now() < deadline, "no ship moved");
        let p = ws.push_of("feature").await;
        let id = p["id"].as_str().unwrap().to_string();
        let (at, props) = match p.get("feature").filter(|f| f.is_object()) {
            Some(f) => (
                f["geometry"]["coordinates"].clone(),
                f["properties"].clone(),
            ),
            None => (
                p["geometry"]["coordinates"].clone(),
                p["properties"].clone(),
            ),
        };
        if at.is_null() {
            continue;
        }
        assert!(
            props["replayed_ms"].as_u64().unwrap() > 1_600_000_000_000,
            "{p}"
        );
        assert!(
            props["datetime"]
                .as_str()
                .unwrap()
                .starts_with("2020-06-30T00:")
        );
        match first.get(&id) {
            Some(before) if *before != at => break (id, before.clone(), at),
            Some(_) => {}
            None => {
                first.insert(id, at);
            }
        }
    };
    let (id, from, to) = moved;
    assert_ne!(from, to, "{id}");
    // The whole hour arrives: every one of its 295 vessels (datasets/manifest.json) is written.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let n = ws
            .ok(
                "feature.query",
                serde_json::json!({ "layer": "ships", "limit": 1000 }),
            )
            .await["features"]
            .as_array()
            .unwrap()
            .len();
        if n == 295 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} ships of 295");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn ships_can_be_turned_off() {
    let srv = TestServer::start_with(|c| {
        c.web.basemap = Default::default();
        c.web.dir = "/nonexistent/geostream-web".into();
        c.web.ships_speed = 0.0;
    })
    .await;
    open_page(srv.addr).await;
    let mut ws = common::Ws::connect(&srv.ws_url(), geostream_core::codec::Encoding::Json).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(has_layer(&mut ws, "ships").await.is_none());
    srv.shutdown().await;
}

#[tokio::test]
async fn ships_resume_after_a_restart_without_a_page_view() {
    let data = common::tempdir::Dir::new("ships-restart");
    let config = || {
        let mut c = common::test_config(&data);
        c.web.basemap = Default::default();
        c.web.dir = "/nonexistent/geostream-web".into();
        c.web.ships_speed = 600.0;
        c
    };
    let srv = TestServer::start_config(config(), common::tempdir::Dir::new("unused")).await;
    open_page(srv.addr).await;
    let mut ws = common::Ws::connect(&srv.ws_url(), geostream_core::codec::Encoding::Json).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while has_layer(&mut ws, "ships").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no ships layer");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(ws);
    srv.shutdown().await;
    // Same data, nobody opens the page: open pages reconnect, and the ships go on moving.
    let srv = TestServer::start_config(config(), common::tempdir::Dir::new("unused")).await;
    let mut ws = common::Ws::connect(&srv.ws_url(), geostream_core::codec::Encoding::Json).await;
    let seq = has_layer(&mut ws, "ships").await.unwrap()["seq"]
        .as_u64()
        .unwrap();
    ws.ok(
        "layer.subscribe",
        serde_json::json!({ "layer": "ships", "snapshot": false }),
    )
    .await;
    let p = ws.push_of("feature").await;
    assert!(p["seq"].as_u64().unwrap() > seq, "{p}");
    srv.shutdown().await;
}
