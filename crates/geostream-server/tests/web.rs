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

/// The `geostream` binary, started from an empty directory, serves the demo page built into
/// it (HTML whose script is the map's bundle), its assets with entity tags, compression and
/// long caching, the service worker with `Service-Worker-Allowed: /`, and the basemap from
/// its built-in copy; its log on a pipe carries no colour codes.
///
/// Needs the page built before geostream is compiled (`scripts/npm-web.sh`, which
/// `scripts/test.sh` runs first); a binary built without it fails here, saying so.
#[tokio::test]
async fn the_binary_serves_the_built_in_page_from_an_empty_directory() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let cwd = common::tempdir::Dir::new("empty-cwd");
    let data = common::tempdir::Dir::new("binary-data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_geostream"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .current_dir(cwd.path())
        .env_remove("RUST_LOG")
        .env("GEOSTREAM_WEB__SHIPS_SPEED", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start geostream");
    let stderr = child.stderr.take().unwrap();
    // Killed however the test ends: a failed assertion must not leave the server running.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = KillOnDrop(child);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut all = String::new();
        let mut line = String::new();
        let mut sent = false;
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: std::net::SocketAddr =
                    rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = addr_tx.send(addr);
                sent = true;
            }
            all.push_str(&line);
            line.clear();
        }
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        all + &rest
    });
    let addr = addr_rx
        .recv_timeout(common::WAIT)
        .expect("geostream says where it listens");

    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let (status, headers, body) = http(addr, "GET", "/", &[("accept", html)], None).await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(
        status, 200,
        "this binary has no page built in (run scripts/npm-web.sh before compiling): {page}"
    );
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let script = page
        .split("src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .find(|s| s.starts_with("/web/main-") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("the page loads the map's script: {page}"));

    // The bundle: a content-hashed name, so cached for good; an entity tag; gzip and zstd.
    let (status, h, plain) = http(addr, "GET", script, &[], None).await;
    assert_eq!(status, 200);
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        h["cache-control"].to_str().unwrap().contains("immutable"),
        "{h:?}"
    );
    assert!(h.get("content-encoding").is_none());
    assert!(
        plain.len() > 100_000 && plain.windows(8).any(|w| w == b"maplibre"),
        "the bundle holds MapLibre ({} bytes)",
        plain.len()
    );
    let etag = h["etag"].to_str().unwrap().to_string();
    let (status, h, gz) = http(
        addr,
        "GET",
        script,
        &[("accept-encoding", "gzip, deflate")],
        None,
    )
    .await;
    assert_eq!(
        (status, h["content-encoding"].to_str().unwrap()),
        (200, "gzip")
    );
    assert!(
        gz.len() < plain.len() / 2,
        "{} of {}",
        gz.len(),
        plain.len()
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain);
    let gz_etag = h["etag"].to_str().unwrap().to_string();
    assert_ne!(gz_etag, etag, "each representation has its own tag");
    assert_eq!(h["vary"], "accept-encoding");
    let (status, h, zst) = http(
        addr,
        "GET",
        script,
        &[("accept-encoding", "gzip, zstd, br")],
        None,
    )
    .await;
    assert_eq!(
        (status, h["content-encoding"].to_str().unwrap()),
        (200, "zstd")
    );
    assert_eq!(zstd::decode_all(&zst[..]).unwrap(), plain);
    let (status, h, body) = http(addr, "GET", script, &[("if-none-match", &etag)], None).await;
    assert_eq!((status, body.len()), (304, 0));
    assert_eq!(h["etag"].to_str().unwrap(), etag);
    let (status, _, _) = http(
        addr,
        "GET",
        script,
        &[("if-none-match", &gz_etag), ("accept-encoding", "gzip")],
        None,
    )
    .await;
    assert_eq!(status, 304);
    let (status, _, _) = http(addr, "GET", script, &[("if-none-match", "\"other\"")], None).await;
    assert_eq!(status, 200);

    // The page itself and the service worker are revalidated; the worker may control `/`.
    let (_, h, _) = http(addr, "GET", "/", &[("accept", html)], None).await;
    assert_eq!(h["cache-control"], "no-cache");
    let (status, h, _) = http(addr, "GET", "/web/sw.js", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(h["service-worker-allowed"], "/");
    assert_eq!(h["cache-control"], "no-cache");
    let (status, _, _) = http(addr, "GET", "/web/no-such-file.js", &[], None).await;
    assert_eq!(status, 404);

    // The basemap was loaded from the built-in Natural Earth file (177 countries).
    let (status, body) =
        http_json(addr, "GET", "/collections/countries/items?limit=1000", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["numberReturned"], 177);

    drop(child);
    let log = log.join().unwrap();
    assert!(log.contains("Loaded the basemap layer"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no ANSI codes in a log that is not a terminal: {log:?}"
    );
}
