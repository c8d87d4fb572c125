//! The demo page: its static files (`/web/...`, built into `web.dir` by `npm run build` in
//! `web/`), the page itself for browsers at `/`, the basemap layer it draws, loaded at
//! startup from the Natural Earth file shipped in `web/data`, and the live ships, an AIS
//! trajectory replayed in a loop into a layer from the first time the page is served.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use geostream_core::api::LayerImportParams;
use geostream_core::error::ErrorCode;
use geostream_core::feature::validate_feature;
use geostream_store::{Holder, LayerSpec, Store, WriteOp, WriteRequest};

use crate::node::Node;
use crate::replay::{TrackPoint, read_track};

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

/// The demo page (`index.html` of the built assets). Without a build, a short page that
/// says how to make one.
pub async fn index(State(node): State<Arc<Node>>) -> Response {
    start_ships(&node);
    let dir = resolve(&node.config.web.dir);
    match tokio::fs::read(dir.join("index.html")).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!(
                "<!doctype html><title>geostream</title><h1>The demo page is not built</h1>\
                 <p>Run <code>scripts/serve.sh</code>, or <code>npm ci &amp;&amp; npm run build</code> \
                 in <code>web/</code>, so that <code>{}</code> exists (config key \
                 <code>web.dir</code>).</p><p>The API is at <a href=\"/v1/ws\">/v1/ws</a>; \
                 ask <code>/</code> for JSON to read the landing document.</p>",
                html_escape(&dir.join("index.html").display().to_string())
            ),
        )
            .into_response(),
    }
}

async fn asset(State(node): State<Arc<Node>>, UrlPath(path): UrlPath<String>) -> Response {
    let Some(rel) = safe_relative(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let file = resolve(&node.config.web.dir).join(&rel);
    match tokio::fs::read(&file).await {
        Ok(body) => {
            // Bundles are rebuilt in place under the same names, so every asset is revalidated.
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(content_type(&rel)),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                body,
            )
                .into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
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

/// A configured path: as given when absolute or present in the working directory, otherwise
/// under the source tree the binary was built from (so `cargo run` works from any folder).
pub fn resolve(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p);
    if in_tree.exists() {
        in_tree
    } else {
        p.to_path_buf()
    }
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
    let file = resolve(&cfg.basemap);
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
            let raw = std::fs::read(&path)?;
            let bytes = if path.extension().is_some_and(|e| e == "zst") {
                zstd::decode_all(&raw[..])?
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
    let file = resolve(&cfg.ships);
    let (layer, speed) = (cfg.ships_layer.clone(), cfg.ships_speed);
    tokio::spawn(async move {
        let path = file.clone();
        let points = match tokio::task::spawn_blocking(move || read_track(&path)).await {
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
    fn content_types() {
        assert_eq!(
            content_type(Path::new("main.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(Path::new("blob")), "application/octet-stream");
    }
}
