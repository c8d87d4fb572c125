//! The demo page: its static files (`/web/...`) and the page itself for browsers at `/`,
//! served from the copy of `web/dist` built into the binary (see `build.rs`) or, when
//! `web.dir` is set, from that directory (for developing the page); the basemap layer it
//! draws, loaded at startup; and the live ships, an AIS trajectory replayed in a loop into a
//! layer from the first time the page is served. The default basemap and ship files are
//! built into the binary too, so the binary serves the whole demo from any directory.
//!
//! Embedded files are answered with a strong `ETag` (conditional requests get 304),
//! compressed with zstd or gzip when the client accepts it (each compressed copy made once
//! and kept), `Cache-Control: immutable` for content-hashed names and `no-cache` for the rest
//! (`index.html`, `sw.js`), and `Service-Worker-Allowed: /` on `sw.js` so the page's service
//! worker may control the whole origin.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use geostream_core::api::LayerImportParams;
use geostream_core::error::ErrorCode;
use geostream_core::feature::validate_feature;
use geostream_store::{Holder, LayerSpec, Store, WriteOp, WriteRequest};
use sha1::{Digest, Sha1};

use crate::node::Node;
use crate::replay::{TrackPoint, parse_track};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// The static-file routes of the demo page.
pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/web/{*path}", get(asset))
}

/// Whether a request for `/` comes from a browser that wants the page rather than the JSON
/// landing document: its `Accept` names `text/html` (browsers send
/// `text/html,application/xhtml+xml,...`; API clients send `application/json` or nothing).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|part| {
                let mut it = part.split(';');
                let mime = it.next().unwrap_or("").trim();
                let refused = it.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
                });
                mime.eq_ignore_ascii_case("text/html") && !refused
            })
        })
}

/// Whether this binary carries a built demo page.
pub fn page_is_embedded() -> bool {
    ASSETS.contains_key("index.html")
}

/// The demo page (`index.html` of the built assets). Without a build, a page that says how
/// to make one (503).
pub async fn index(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    start_ships(&node);
    let dir = &node.config.web.dir;
    if dir.as_os_str().is_empty() {
        return match ASSETS.get("index.html") {
            Some(a) => a.respond(&headers),
            None => not_built(None),
        };
    }
    match tokio::fs::read(dir.join("index.html")).await {
        Ok(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response(),
        Err(_) => not_built(Some(dir.join("index.html").as_path())),
    }
}

/// The page served at `/` when there is none to serve: what to do to get one.
fn not_built(missing: Option<&Path>) -> Response {
    let cause = match missing {
        Some(p) => format!(
            "<p>The configured page directory has no <code>{}</code> (config key \
             <code>web.dir</code>; leave it empty to serve the page built into the binary).</p>",
            html_escape(&p.display().to_string())
        ),
        None => "<p>This <code>geostream</code> binary was built without the page: \
                 <code>web/dist</code> did not exist when it was compiled.</p>"
            .to_string(),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>geostream: the demo page is not \
             built</title><h1>The demo page is not built</h1>{cause}<p>To build it (Node.js 20 \
             or later): run <code>scripts/serve.sh</code> from the repository, or \
             <code>scripts/npm-web.sh</code> (that is <code>npm ci &amp;&amp; npm run \
             build</code> in <code>web/</code>) and then build geostream again \
             (<code>cargo build --release -p geostream-server</code> or <code>cargo install \
             --path crates/geostream-server</code>): the page is built into the binary.</p>\
             <p>The server itself works: the API is at <a href=\"/v1/ws\">/v1/ws</a> \
             (WebSocket), <a href=\"/collections\">/collections</a> (OGC API - Features); ask \
             <code>/</code> for JSON to read the landing document.</p>"
        ),
    )
        .into_response()
}

async fn asset(
    State(node): State<Arc<Node>>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(rel) = safe_relative(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let dir = &node.config.web.dir;
    if dir.as_os_str().is_empty() {
        let name = rel.to_string_lossy().replace('\\', "/");
        return match ASSETS.get(name.as_str()) {
            Some(a) => a.respond(&headers),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    match tokio::fs::read(dir.join(&rel)).await {
        Ok(body) => {
            // Developing the page: files change in place, so every one is revalidated.
            let mut response = (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(content_type(&rel)),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                body,
            )
                .into_response();
            if rel == Path::new("sw.js") {
                response
                    .headers_mut()
                    .insert(SERVICE_WORKER_ALLOWED, HeaderValue::from_static("/"));
            }
            response
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

const SERVICE_WORKER_ALLOWED: HeaderName = HeaderName::from_static("service-worker-allowed");

/// One file of the embedded page, with its compressed copies made on first use.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// The identity representation's entity tag, quoted; compressed ones add `-zstd` / `-gzip`.
    etag: String,
    cache_control: &'static str,
    service_worker: bool,
    compressible: bool,
    zstd: OnceLock<Option<Bytes>>,
    gzip: OnceLock<Option<Bytes>>,
}

/// The embedded page's files by name (`index.html`, `main-0123456789.js`, ...).
static ASSETS: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    embedded::WEB
        .iter()
        .map(|&(name, body)| (name, Asset::new(name, body)))
        .collect()
});

/// Encodings the server compresses to, best first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Coding {
    Zstd,
    Gzip,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }
}

impl Asset {
    fn new(name: &str, body: &'static [u8]) -> Asset {
        let path = Path::new(name);
        let digest = Sha1::digest(body);
        let etag = format!("\"{}\"", hex(&digest[..10]));
        let content_type = content_type(path);
        Asset {
            body,
            content_type,
            etag,
            cache_control: if content_hashed(name) {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
            service_worker: name == "sw.js",
            compressible: body.len() >= 512
                && (content_type.starts_with("text/")
                    || content_type.starts_with("application/json")
                    || content_type.starts_with("application/geo+json")
                    || content_type.starts_with("image/svg")
                    || content_type.starts_with("application/wasm")),
            zstd: OnceLock::new(),
            gzip: OnceLock::new(),
        }
    }

    /// The compressed copy in `coding`, or `None` when compressing does not make it smaller.
    fn compressed(&self, coding: Coding) -> Option<&Bytes> {
        let cell = match coding {
            Coding::Zstd => &self.zstd,
            Coding::Gzip => &self.gzip,
        };
        cell.get_or_init(|| {
            compress(coding, self.body)
                .ok()
                .filter(|c| c.len() < self.body.len())
                .map(Bytes::from)
        })
        .as_ref()
    }

    /// The response to a GET of this file given the request's headers.
    fn respond(&self, req: &HeaderMap) -> Response {
        let chosen = if self.compressible {
            accepted_codings(req)
                .into_iter()
                .find_map(|c| self.compressed(c).map(|b| (c, b.clone())))
        } else {
            None
        };
        let (etag, body, coding) = match chosen {
            Some((c, b)) => (
                format!("{}-{}\"", &self.etag[..self.etag.len() - 1], c.token()),
                b,
                Some(c),
            ),
            None => (self.etag.clone(), Bytes::from_static(self.body), None),
        };
        let mut h = HeaderMap::new();
        h.insert(
            header::ETAG,
            HeaderValue::from_str(&etag).expect("hex etag"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        if self.service_worker {
            h.insert(SERVICE_WORKER_ALLOWED, HeaderValue::from_static("/"));
        }
        if none_match(req, &etag) {
            return (StatusCode::NOT_MODIFIED, h).into_response();
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(c) = coding {
            h.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(c.token()),
            );
        }
        (h, body).into_response()
    }
}

/// `body` compressed at the best ratio (made once per file and kept).
fn compress(coding: Coding, body: &[u8]) -> std::io::Result<Vec<u8>> {
    match coding {
        Coding::Zstd => zstd::encode_all(body, 19),
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(body)?;
            e.finish()
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a file name carries a hash of its content (`main-0911e1112e.js`,
/// `maplibre-gl-worker-73d7a024a4.mjs`), as the page's build names everything but
/// `index.html` and `sw.js`: such a file never changes, so browsers may keep it.
fn content_hashed(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = base.split('.').next().unwrap_or(base);
    stem.rsplit_once('-').is_some_and(|(_, h)| {
        h.len() >= 10
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && h.bytes().any(|b| b.is_ascii_digit())
    })
}

/// The codings of `Accept-Encoding` the server can produce, in the server's order of
/// preference (zstd, then gzip), leaving out those refused with `q=0`.
fn accepted_codings(req: &HeaderMap) -> Vec<Coding> {
    let mut ok = Vec::new();
    for value in req.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for part in text.split(',') {
            let mut it = part.split(';');
            let token = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            if refused {
                continue;
            }
            match token.as_str() {
                "zstd" => ok.push(Coding::Zstd),
                "gzip" | "x-gzip" => ok.push(Coding::Gzip),
                _ => {}
            }
        }
    }
    [Coding::Zstd, Coding::Gzip]
        .into_iter()
        .filter(|c| ok.contains(c))
        .collect()
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 13.1.2) or is `*`.
fn none_match(req: &HeaderMap, etag: &str) -> bool {
    req.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|text| {
            text.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
            })
        })
    })
}

/// `path` as a relative path with no `..`, root or prefix components.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "geojson" => "application/geo+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The contents of a data file named in the configuration (`web.basemap`, `web.ships`): the
/// file itself when the path is absolute or exists from the working directory, else the copy
/// built into the binary when the path is one of those (the defaults,
/// `datasets/polygons/world_countries_110m.geojson` and
/// `datasets/trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst`).
pub fn read_data(p: &Path) -> std::io::Result<Cow<'static, [u8]>> {
    if p.is_absolute() || p.exists() {
        return std::fs::read(p).map(Cow::Owned);
    }
    let wanted: PathBuf = p.components().filter(|c| *c != Component::CurDir).collect();
    embedded::DATA
        .iter()
        .find(|(rel, _)| Path::new(rel) == wanted)
        .map(|&(_, body)| Cow::Borrowed(body))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no file {} (from the working directory)", p.display()),
            )
        })
}

/// Loads the basemap file into its layer when the layer does not exist yet. Failures are
/// logged, not fatal: the server is useful without the demo's basemap. Nodes of a cluster
/// that start together all find the layer missing; the one whose `layer.create` wins loads
/// it, the others leave it to that one quietly.
///
/// Also restarts the ship replay when its layer exists, that is when the page was opened
/// before on this data: pages still open reconnect without loading the page again.
pub async fn seed_basemap(node: &Arc<Node>) {
    let ships = &node.config.web.ships_layer;
    if !ships.is_empty() && node.store.layer(ships).await.is_ok() {
        start_ships(node);
    }
    let cfg = &node.config.web;
    if cfg.basemap.as_os_str().is_empty() || cfg.basemap_layer.is_empty() {
        return;
    }
    if node.store.layer(&cfg.basemap_layer).await.is_ok() {
        return;
    }
    let file = cfg.basemap.clone();
    match load_basemap(node, &file).await {
        Ok(Some(n)) => {
            tracing::info!(layer = %cfg.basemap_layer, file = %file.display(), features = n, "Loaded the basemap layer.")
        }
        Ok(None) => {
            tracing::debug!(layer = %cfg.basemap_layer, "Another node created the basemap layer first and loads it.")
        }
        Err(e) => {
            tracing::warn!(layer = %cfg.basemap_layer, file = %file.display(), error = %e, "Could not load the basemap layer.")
        }
    }
}

/// The number of features loaded, or `None` when another node created the layer first.
async fn load_basemap(node: &Node, file: &Path) -> anyhow::Result<Option<u64>> {
    let path = file.to_path_buf();
    let features =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<serde_json::Value>> {
            let raw = read_data(&path)?;
            let bytes = if path.extension().is_some_and(|e| e == "zst") {
                Cow::Owned(zstd::decode_all(&raw[..])?)
            } else {
                raw
            };
            let mut fc: serde_json::Value = serde_json::from_slice(&bytes)?;
            match fc.get_mut("features").map(serde_json::Value::take) {
                Some(serde_json::Value::Array(f)) => Ok(f),
                _ => anyhow::bail!("not a GeoJSON FeatureCollection"),
            }
        })
        .await??;
    let layer = node.config.web.basemap_layer.clone();
    let created = node
        .layers
        .create(LayerSpec {
            name: layer.clone(),
            title: Some("Countries (Natural Earth 1:110m)".into()),
            description: Some(
                "Made with Natural Earth: Admin 0 countries, public domain. Basemap of the demo page."
                    .into(),
            ),
            last_writer_wins: false,
        })
        .await;
    match created {
        Ok(_) => {}
        Err(crate::error::ServerError::Store(geostream_store::StoreError::LayerExists(_))) => {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let result = crate::import::run(
        node,
        LayerImportParams {
            layer,
            features: Some(features),
            ..Default::default()
        },
        Holder {
            client: "geostream-basemap".into(),
            user: None,
        },
        |_, _| {},
    )
    .await?;
    if result.rejected > 0 {
        tracing::warn!(rejected = result.rejected, first = ?result.rejections.first().map(|r| &r.reason), "Some basemap features were refused.");
    }
    Ok(Some(result.imported))
}

/// Nodes whose ship replay has started (a process may run several nodes, as tests do).
static SHIPS_STARTED: Mutex<Vec<Weak<Node>>> = Mutex::new(Vec::new());

/// Starts the ship replay of `node` unless it runs already or is turned off (`web.ships`
/// empty or `web.ships_speed` 0). The page starts it (and a restart, once the ships layer
/// exists), so a server whose demo is never opened (tests, benchmarks, production) writes no
/// ships.
pub fn start_ships(node: &Arc<Node>) {
    let cfg = &node.config.web;
    if cfg.ships.as_os_str().is_empty() || cfg.ships_layer.is_empty() || cfg.ships_speed <= 0.0 {
        return;
    }
    {
        let mut started = SHIPS_STARTED.lock().unwrap_or_else(|e| e.into_inner());
        started.retain(|w| w.strong_count() > 0);
        if started
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(node)))
        {
            return;
        }
        started.push(Arc::downgrade(node));
    }
    let weak = Arc::downgrade(node);
    let file = cfg.ships.clone();
    let (layer, speed) = (cfg.ships_layer.clone(), cfg.ships_speed);
    tokio::spawn(async move {
        let path = file.clone();
        let points = match tokio::task::spawn_blocking(move || read_ships(&path)).await {
            Ok(Ok(p)) if !p.is_empty() => p,
            Ok(Ok(_)) => {
                tracing::warn!(file = %file.display(), "The ships file has no positions; no ships.");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(file = %file.display(), error = %e, "Could not read the ships file; no ships.");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Reading the ships file failed; no ships.");
                return;
            }
        };
        tracing::info!(layer = %layer, file = %file.display(), positions = points.len(), speed, "Replaying ships.");
        replay_ships(weak, &points, &layer, speed).await;
    });
}

/// Reads the ships' trajectory (plain or `.zst`) with [`read_data`].
fn read_ships(path: &Path) -> anyhow::Result<Vec<TrackPoint>> {
    let raw = read_data(path)?;
    let points = if path.extension().is_some_and(|e| e == "zst") {
        parse_track(zstd::Decoder::new(&raw[..])?)?
    } else {
        parse_track(&raw[..])?
    };
    Ok(points)
}

/// At most one write per this interval: at high speeds every position due meanwhile goes
/// in one batch (one durable commit), so the store's load does not grow with the speed.
const SHIP_TICK: Duration = Duration::from_millis(50);

/// Wall-clock milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Creates the ships layer (last writer wins) unless it exists; false when it exists and is
/// not last-writer-wins (the replay carries no versions) or cannot be made.
async fn ensure_ships_layer(node: &Node, layer: &str) -> bool {
    match node.store.layer(layer).await {
        Ok(info) if info.last_writer_wins => return true,
        Ok(_) => {
            tracing::warn!(
                layer,
                "The ships layer exists and needs versions on every edit; no ships."
            );
            return false;
        }
        Err(_) => {}
    }
    let spec = LayerSpec {
        name: layer.to_string(),
        title: Some("Ships (AIS, New York harbor)".into()),
        description: Some(
            "Live positions replayed from US Coast Guard AIS data (MarineCadastre.gov, public domain)."
                .into(),
        ),
        last_writer_wins: true,
    };
    match node.layers.create(spec).await {
        Ok(_) => true,
        Err(e) if e.to_rpc().code == ErrorCode::LayerExists => true,
        Err(e) => {
            tracing::warn!(layer, error = %e, "Could not create the ships layer.");
            false
        }
    }
}

/// Replays `points` into `layer` at `speed`, over and over, until the node stops. Each write
/// is one batch of the positions due since the last; the features carry `replayed_ms`, the
/// wall-clock time of their write, so a viewer can measure how late a position reaches it.
async fn replay_ships(weak: Weak<Node>, points: &[TrackPoint], layer: &str, speed: f64) {
    let writer = Holder {
        client: "geostream-ships".into(),
        user: None,
    };
    let t0 = points[0].time_ms;
    let mut ready = false;
    loop {
        let start = Instant::now();
        let mut last_write = Instant::now() - SHIP_TICK;
        let mut i = 0;
        while i < points.len() {
            let due =
                start + Duration::from_secs_f64((points[i].time_ms - t0) as f64 / 1000.0 / speed);
            tokio::time::sleep_until(due.max(last_write + SHIP_TICK).into()).await;
            let Some(node) = weak.upgrade() else { return };
            if node.is_draining() {
                return;
            }
            if !ready {
                ready = ensure_ships_layer(&node, layer).await;
                if !ready {
                    return;
                }
            }
            let data_now = t0 + (start.elapsed().as_secs_f64() * speed * 1000.0) as u64;
            let mut j = i + 1;
            while j < points.len() && points[j].time_ms <= data_now && j - i < 1000 {
                j += 1;
            }
            last_write = Instant::now();
            let stamp = serde_json::Value::from(now_ms());
            let limits = node.config.layers.feature_limits();
            let ops: Vec<WriteOp> = points[i..j]
                .iter()
                .filter_map(|p| {
                    let mut f = p.feature();
                    f["properties"]["replayed_ms"] = stamp.clone();
                    validate_feature(&f, &limits)
                        .ok()
                        .map(|feature| WriteOp::Replace {
                            id: p.id.clone(),
                            feature,
                            expected: None,
                        })
                })
                .collect();
            let req = WriteRequest {
                layer: layer.to_string(),
                ops,
                writer: writer.clone(),
                op_id: None,
            };
            if let Err(e) = node.layers.apply(req).await {
                // Deleted or refused: make the layer again at the next write, a second later.
                tracing::warn!(layer, error = %e, "Could not write ship positions.");
                ready = false;
                drop(node);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            i = j;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn browsers_get_html_and_api_clients_json() {
        assert!(wants_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept("text/html;q=0, application/json")));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn paths_cannot_leave_the_asset_dir() {
        assert_eq!(safe_relative("main.js"), Some(PathBuf::from("main.js")));
        assert_eq!(safe_relative("a/./b.css"), Some(PathBuf::from("a/b.css")));
        assert_eq!(safe_relative("../secret"), None);
        assert_eq!(safe_relative("a/../../x"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(""), None);
    }

    #[test]
    fn hashed_names_are_immutable_and_the_rest_revalidated() {
        assert!(content_hashed("main-0911e1112e.js"));
        assert!(content_hashed("main-0911e1112e.js.LEGAL.txt"));
        assert!(content_hashed("maplibre-gl-worker-73d7a024a4.mjs"));
        assert!(!content_hashed("index.html"));
        assert!(!content_hashed("sw.js"));
        assert!(!content_hashed("maplibre-gl-worker.mjs"));
        assert!(
            !content_hashed("style-abcdefabcd.css"),
            "a hash has a digit"
        );
    }

    fn encodings(v: &'static str) -> Vec<Coding> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        accepted_codings(&h)
    }

    #[test]
    fn accept_encoding_picks_zstd_then_gzip() {
        assert_eq!(
            encodings("gzip, deflate, br, zstd"),
            [Coding::Zstd, Coding::Gzip]
        );
        assert_eq!(encodings("gzip;q=1.0, zstd;q=0"), [Coding::Gzip]);
        assert_eq!(encodings("br"), []);
        assert_eq!(accepted_codings(&HeaderMap::new()), []);
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let mut h = HeaderMap::new();
        assert!(!none_match(&h, "\"abc\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(none_match(&h, "\"abc\""));
        assert!(!none_match(&h, "\"abc-gzip\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&h, "\"abc\""));
    }

    #[test]
    fn the_demo_data_is_built_in() {
        let basemap = read_data(Path::new("datasets/polygons/world_countries_110m.geojson"))
            .expect("the default basemap is built in");
        assert!(basemap.starts_with(b"{"));
        assert!(
            read_data(Path::new(
                "./datasets/trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst"
            ))
            .is_ok()
        );
        assert!(read_data(Path::new("no/such/file.geojson")).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("main.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(Path::new("blob")), "application/octet-stream");
    }
}
