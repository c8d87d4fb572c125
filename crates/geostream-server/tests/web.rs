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
    // The count of the shipped Natural Earth file (shared/data/manifest.json: 177).
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
