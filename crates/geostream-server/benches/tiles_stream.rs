//! Tile streaming on real data, end to end over loopback:
//! `cargo bench -p geostream-server --bench tiles_stream`.
//!
//! A plain binary (harness = false) printing the figures the design talks about:
//! 1. vector tile encode rate (cold renders of countries, cities and roads) and the cache hit
//!    rate of a second pass;
//! 2. an edit stream (move a city, edit a country's property, move a country's vertex, move a
//!    road's vertex) watched by 100 WebSocket subscribers: bytes of the deltas pushed against
//!    the full tiles they stand for (median saving per edit kind);
//! 3. tile bytes delivered per second to 100 subscribers (full tiles, MessagePack).
//!
//! Reads the repository's vendored real data (`datasets/`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::{self, Encoding, Id, ServerFrame};
use geostream_server::{Config, Node};
use geostream_store::{Holder, WriteOp, WriteRequest};
use geostream_tiles::{LonLatBbox, TileId, delta, tiles_covering};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SUBSCRIBERS: usize = 100;
const EDITS_PER_KIND: usize = 40;
/// Longer than the flush window, so each edit is pushed on its own (not coalesced).
const EDIT_GAP: Duration = Duration::from_millis(70);

/// The repository's vendored real data (`datasets/`).
fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

fn read_features(dir: &Path, rel: &str) -> Vec<Value> {
    let raw = std::fs::read(dir.join(rel)).expect("read data file");
    let text = if rel.ends_with(".zst") {
        zstd::decode_all(&raw[..]).expect("zstd")
    } else {
        raw
    };
    let fc: Value = serde_json::from_slice(&text).expect("GeoJSON");
    fc["features"].as_array().cloned().unwrap_or_default()
}

fn writer() -> Holder {
    Holder {
        client: "bench".into(),
        user: None,
    }
}

async fn load(node: &Node, layer: &str, features: &[Value]) -> usize {
    node.layers
        .create(geostream_store::LayerSpec {
            name: layer.into(),
            title: None,
            description: None,
            last_writer_wins: true,
        })
        .await
        .expect("create layer");
    let limits = node.config.layers.feature_limits();
    let mut n = 0;
    // A few sources repeat an id (Natural Earth gives Australia's code to a territory too):
    // later ones get a generated id.
    let mut seen = std::collections::HashSet::new();
    let features: Vec<Value> = features
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if !f["id"].is_null()
                && !seen.insert(f["id"].to_string())
                && let Some(o) = f.as_object_mut()
            {
                o.remove("id");
            }
            f
        })
        .collect();
    for chunk in features.chunks(1000) {
        let ops: Vec<WriteOp> = chunk
            .iter()
            .filter_map(|f| geostream_server::features::create_op(f, &limits).ok())
            .collect();
        n += ops.len();
        node.layers
            .apply(WriteRequest {
                layer: layer.into(),
                ops,
                writer: writer(),
                op_id: None,
            })
            .await
            .unwrap_or_else(|e| panic!("load {layer}: {}", e.to_rpc().message));
    }
    n
}

async fn patch(node: &Node, layer: &str, id: &str, props: Option<Value>, geometry: Option<Value>) {
    let op = geostream_server::features::patch_op(
        &json!(id),
        props.and_then(|p| p.as_object().cloned()),
        geometry.map(Some),
        None,
        &node.config.layers.feature_limits(),
    )
    .expect("patch op");
    node.layers
        .apply(WriteRequest {
            layer: layer.into(),
            ops: vec![op],
            writer: writer(),
            op_id: None,
        })
        .await
        .unwrap_or_else(|e| panic!("edit {layer}/{id}: {}", e.to_rpc().message));
}

/// One HTTP/1.1 connection used for many GETs.
struct Http {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    addr: SocketAddr,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Http {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        Http { send, addr }
    }

    async fn get(&mut self, path: &str) -> (u16, usize) {
        use http_body_util::BodyExt;
        let req = http::Request::builder()
            .uri(path)
            .header("host", self.addr.to_string())
            .body(http_body_util::Empty::new())
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body.len())
    }
}

fn key(t: TileId) -> String {
    format!("{}/{}/{}", t.z(), t.x(), t.y())
}

fn covering(bbox: [f64; 4], zooms: std::ops::RangeInclusive<u8>) -> Vec<TileId> {
    let b = LonLatBbox::new(bbox[0], bbox[1], bbox[2], bbox[3]).unwrap();
    zooms
        .flat_map(|z| tiles_covering(&b, z, 1 << 20).unwrap())
        .collect()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr) -> Ws {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        Encoding::Msgpack.subprotocol().parse().unwrap(),
    );
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn request(ws: &mut Ws, id: i64, method: &str, params: Value) {
    let f = codec::encode_request(Encoding::Msgpack, Some(&Id::Int(id)), method, &params);
    ws.send(Message::Binary(f)).await.unwrap();
}

fn bin(v: &Value) -> Vec<u8> {
    v.as_array()
        .map(|a| a.iter().map(|b| b.as_u64().unwrap_or(0) as u8).collect())
        .unwrap_or_default()
}

/// A subscriber that forwards its `tile` pushes.
fn spawn_watcher(
    addr: SocketAddr,
    i: usize,
    layer: &'static str,
    tiles: Vec<String>,
    out: mpsc::UnboundedSender<(usize, Value)>,
) {
    tokio::spawn(async move {
        let mut ws = connect(addr).await;
        request(
            &mut ws,
            1,
            "tile.subscribe",
            json!({"layer": layer, "tiles": tiles}),
        )
        .await;
        while let Some(Ok(m)) = ws.next().await {
            let Message::Binary(b) = m else { continue };
            if let Ok(ServerFrame::Notification { method, params }) =
                codec::decode_server_frame(Encoding::Msgpack, &b)
                && method == "tile"
                && out.send((i, params)).is_err()
            {
                return;
            }
        }
    });
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default)]
struct Tally {
    savings: Vec<f64>,
    deltas: usize,
    full: usize,
    wire: u64,
    tile_bytes: u64,
}

/// Applies the pushes that arrive within `quiet` of each other to what each client holds.
async fn drain(
    rx: &mut mpsc::UnboundedReceiver<(usize, Value)>,
    held: &mut HashMap<(usize, String), Vec<u8>>,
    quiet: Duration,
    tally: &mut Tally,
) {
    while let Ok(Some((i, p))) = tokio::time::timeout(quiet, rx.recv()).await {
        let tile = p["tile"].as_str().unwrap_or_default().to_string();
        let data = bin(&p["data"]);
        let k = (i, tile);
        let new = match p["kind"].as_str() {
            Some("delta") => {
                let base = held.get(&k).expect("a delta for a held tile");
                let new = delta::apply(base, &data, 1 << 26).expect("the delta applies");
                tally.deltas += 1;
                new
            }
            _ => {
                tally.full += 1;
                data.clone()
            }
        };
        if !new.is_empty() {
            tally
                .savings
                .push(1.0 - data.len() as f64 / new.len() as f64);
        }
        tally.wire += data.len() as u64;
        tally.tile_bytes += new.len() as u64;
        held.insert(k, new);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = data_dir();
    let tmp = std::env::temp_dir().join(format!("geostream-tiles-bench-{}", std::process::id()));
    let mut cfg = Config {
        data_dir: tmp.clone(),
        ..Config::default()
    };
    cfg.tiles.max_tiles_per_subscription = 1024;
    cfg.limits.outbox_bytes = 32 << 20;
    let node = Node::start(cfg).await.expect("node");
    let listener = geostream_server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let served = node.clone();
    tokio::spawn(async move {
        geostream_server::serve(listener, served, std::future::pending()).await;
    });

    let countries = read_features(&dir, "polygons/world_countries_50m.geojson.zst");
    let cities = read_features(&dir, "points/geonames_cities15000.geojson.zst");
    let roads = read_features(&dir, "lines/osm_helsinki_highway_railway.geojson.zst");
    let t = Instant::now();
    let n = load(&node, "b_countries", &countries).await
        + load(&node, "b_cities", &cities).await
        + load(&node, "b_roads", &roads).await;
    println!(
        "loaded {n} features (countries 1:50m, GeoNames cities, Helsinki roads) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 1. Encode rate, then cache hits.
    let helsinki = [24.80, 60.13, 25.10, 60.25];
    let sets: Vec<(&str, Vec<TileId>)> = vec![
        ("b_countries", covering([-180.0, -85.0, 180.0, 85.0], 0..=4)),
        ("b_cities", covering([-180.0, -85.0, 180.0, 85.0], 0..=4)),
        ("b_roads", covering(helsinki, 10..=14)),
    ];
    println!("\n== 1. vector tile encode rate (cold) and cache (warm) ==");
    let mut http = Http::connect(addr).await;
    let before = node.tiles.cache_stats();
    for (layer, tiles) in &sets {
        let s = &node.tiles.stats;
        let (r0, n0, b0) = (
            s.rendered.load(Ordering::Relaxed),
            s.render_nanos.load(Ordering::Relaxed),
            s.rendered_bytes.load(Ordering::Relaxed),
        );
        let t = Instant::now();
        for tile in tiles {
            let (status, _) = http
                .get(&format!("/v1/tiles/{layer}/{}.mvt", key(*tile)))
                .await;
            assert_eq!(status, 200);
        }
        let wall = t.elapsed().as_secs_f64();
        let rendered = s.rendered.load(Ordering::Relaxed) - r0;
        let nanos = s.render_nanos.load(Ordering::Relaxed) - n0;
        let bytes = s.rendered_bytes.load(Ordering::Relaxed) - b0;
        println!(
            "{layer:>12}: {rendered} tiles, {:.0} tiles/s over HTTP, {:.2} ms per render (query + encode), {:.1} KiB average",
            tiles.len() as f64 / wall,
            nanos as f64 / 1e6 / rendered.max(1) as f64,
            bytes as f64 / 1024.0 / rendered.max(1) as f64,
        );
    }
    let t = Instant::now();
    let mut served = 0;
    for (layer, tiles) in &sets {
        for tile in tiles {
            http.get(&format!("/v1/tiles/{layer}/{}.mvt", key(*tile)))
                .await;
            served += 1;
        }
    }
    let warm = t.elapsed().as_secs_f64();
    let after = node.tiles.cache_stats();
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    println!(
        "warm pass: {served} tiles, {:.0} tiles/s over one HTTP connection; cache over both passes: {hits} hits, {misses} misses, hit rate {:.1}% (warm pass alone: {:.1}%)",
        served as f64 / warm,
        100.0 * hits as f64 / (hits + misses).max(1) as f64,
        100.0 * hits.min(served) as f64 / served as f64,
    );

    // 2. Edit stream watched by 100 subscribers.
    println!(
        "\n== 2. single-feature edits pushed to {SUBSCRIBERS} subscribers: delta vs full tile =="
    );
    let europe = [-10.0, 35.0, 30.0, 60.0];
    let watch: Vec<(&'static str, Vec<String>)> = vec![
        (
            "b_countries",
            covering(europe, 4..=4).into_iter().map(key).collect(),
        ),
        (
            "b_cities",
            covering(europe, 5..=5).into_iter().map(key).collect(),
        ),
        (
            "b_roads",
            covering(helsinki, 13..=13).into_iter().map(key).collect(),
        ),
    ];
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..SUBSCRIBERS {
        let (layer, tiles) = &watch[i % watch.len()];
        spawn_watcher(addr, i, layer, tiles.clone(), tx.clone());
    }
    let mut held: HashMap<(usize, String), Vec<u8>> = HashMap::new();
    let mut initial = Tally::default();
    drain(
        &mut rx,
        &mut held,
        Duration::from_millis(1500),
        &mut initial,
    )
    .await;
    println!(
        "initial: {} full tiles, {:.1} MiB",
        initial.full,
        initial.tile_bytes as f64 / (1 << 20) as f64
    );

    let in_box = |f: &Value, b: [f64; 4]| -> bool {
        let g = &f["geometry"]["coordinates"];
        let mut v = g;
        while v[0].is_array() {
            v = &v[0];
        }
        let (x, y) = (
            v[0].as_f64().unwrap_or(999.0),
            v[1].as_f64().unwrap_or(999.0),
        );
        x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]
    };
    let eu_cities: Vec<&Value> = cities.iter().filter(|c| in_box(c, europe)).collect();
    let eu_countries: Vec<&Value> = countries
        .iter()
        .filter(|c| in_box(c, europe) && c["id"].is_string())
        .collect();
    let hel_roads: Vec<&Value> = roads
        .iter()
        .filter(|r| r["geometry"]["type"] == "LineString" && !r["id"].is_null())
        .collect();
    let id_of = |f: &Value| match &f["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let kinds = [
        "move a city",
        "edit a country property",
        "move a country vertex",
        "move a road vertex",
    ];
    for (k, name) in kinds.iter().enumerate() {
        let mut tally = Tally::default();
        for e in 0..EDITS_PER_KIND {
            match k {
                0 => {
                    let c = eu_cities[(e * 37) % eu_cities.len()];
                    let p = &c["geometry"]["coordinates"];
                    let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
                    let g = json!({"type": "Point", "coordinates": [x + 0.01, y + 0.005]});
                    patch(&node, "b_cities", &id_of(c), None, Some(g)).await;
                }
                1 => {
                    let c = eu_countries[e % eu_countries.len()];
                    patch(
                        &node,
                        "b_countries",
                        &id_of(c),
                        Some(json!({"note": format!("edit {e}")})),
                        None,
                    )
                    .await;
                }
                2 => {
                    let c = eu_countries[e % eu_countries.len()];
                    let mut g = c["geometry"].clone();
                    let ring = if g["type"] == "Polygon" {
                        &mut g["coordinates"][0]
                    } else {
                        &mut g["coordinates"][0][0]
                    };
                    let n = ring.as_array().map_or(0, Vec::len);
                    let i = 1 + (e * 7) % (n.saturating_sub(2)).max(1);
                    let x = ring[i][0].as_f64().unwrap();
                    ring[i][0] = json!(x + 0.02 * (e as f64 + 1.0));
                    patch(&node, "b_countries", &id_of(c), None, Some(g)).await;
                }
                _ => {
                    let r = hel_roads[(e * 13) % hel_roads.len()];
                    let mut g = r["geometry"].clone();
                    let x = g["coordinates"][0][0].as_f64().unwrap();
                    g["coordinates"][0][0] = json!(x + 0.0003);
                    patch(&node, "b_roads", &id_of(r), None, Some(g)).await;
                }
            }
            tokio::time::sleep(EDIT_GAP).await;
            drain(&mut rx, &mut held, Duration::from_millis(5), &mut tally).await;
        }
        drain(&mut rx, &mut held, Duration::from_millis(400), &mut tally).await;
        let pushes = tally.deltas + tally.full;
        let med = median(&mut tally.savings);
        println!(
            "{name:>24}: {pushes} pushes ({} deltas, {} full), {:.1} KiB sent for {:.1} KiB of tiles ({:.1}% saved), median saving per push {:.1}%",
            tally.deltas,
            tally.full,
            tally.wire as f64 / 1024.0,
            tally.tile_bytes as f64 / 1024.0,
            100.0 * (1.0 - tally.wire as f64 / tally.tile_bytes.max(1) as f64),
            100.0 * med,
        );
    }
    let s = &node.tiles.stats;
    println!(
        "server: {} deltas ({:.1} KiB, standing for {:.1} KiB of tiles), {} full ({:.1} KiB), {} deferred by backpressure, {} renders raced by edits",
        s.pushed_deltas.load(Ordering::Relaxed),
        s.delta_bytes.load(Ordering::Relaxed) as f64 / 1024.0,
        s.delta_full_bytes.load(Ordering::Relaxed) as f64 / 1024.0,
        s.pushed_full.load(Ordering::Relaxed),
        s.full_bytes.load(Ordering::Relaxed) as f64 / 1024.0,
        s.deferred.load(Ordering::Relaxed),
        s.render_races.load(Ordering::Relaxed),
    );
    let c = node.tiles.cache_stats();
    println!(
        "cache now: {} tiles, {:.1} MiB (budget 64 MiB)",
        c.tiles,
        c.bytes as f64 / (1 << 20) as f64,
    );
    drop(rx);

    // 3. Throughput: full tiles to 100 subscribers.
    const ROUNDS: usize = 3;
    println!(
        "\n== 3. tile bytes delivered to {SUBSCRIBERS} subscribers (full z4 city tiles, MessagePack, {ROUNDS} rounds) =="
    );
    let world = covering([-180.0, -85.0, 180.0, 85.0], 4..=4);
    let tiles: Vec<String> = world.iter().map(|t| key(*t)).collect();
    let zero: serde_json::Map<String, Value> =
        tiles.iter().map(|t| (t.clone(), json!(0))).collect();
    // Warm the cache so the figure is about delivery, not rendering.
    for t in &world {
        http.get(&format!("/v1/tiles/b_cities/{}.mvt", key(*t)))
            .await;
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, u64)>();
    let start = Arc::new(tokio::sync::Barrier::new(SUBSCRIBERS + 1));
    for _ in 0..SUBSCRIBERS {
        let (tiles, zero, done, start) =
            (tiles.clone(), zero.clone(), done_tx.clone(), start.clone());
        tokio::spawn(async move {
            let mut ws = connect(addr).await;
            start.wait().await;
            request(
                &mut ws,
                1,
                "tile.subscribe",
                json!({"layer": "b_cities", "tiles": tiles, "mode": "full"}),
            )
            .await;
            let per_round = tiles.len();
            let (mut bytes, mut frames, mut got, mut round, mut sub) =
                (0u64, 0u64, 0usize, 0usize, 0u64);
            while let Some(Ok(m)) = ws.next().await {
                let Message::Binary(b) = m else { continue };
                bytes += b.len() as u64;
                frames += 1;
                // A response (type 1) carries the subscription id; pushes are type 2.
                if b.len() > 1 && b[1] == 1 {
                    if sub == 0
                        && let Ok(ServerFrame::Response { result, .. }) =
                            codec::decode_server_frame(Encoding::Msgpack, &b)
                    {
                        sub = result["sub"].as_u64().unwrap_or(0);
                    }
                    continue;
                }
                got += 1;
                if got == per_round {
                    got = 0;
                    round += 1;
                    if round == ROUNDS {
                        break;
                    }
                    request(
                        &mut ws,
                        2 + round as i64,
                        "tile.update",
                        json!({"sub": sub, "have": zero}),
                    )
                    .await;
                }
            }
            let _ = done.send((bytes, frames));
        });
    }
    start.wait().await;
    let t = Instant::now();
    let (mut bytes, mut frames) = (0u64, 0u64);
    for _ in 0..SUBSCRIBERS {
        let (b, f) = done_rx.recv().await.expect("a subscriber finishes");
        bytes += b;
        frames += f;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{frames} frames, {:.1} MiB in {secs:.2} s: {:.0} MiB/s ({:.2} GB/s), {:.0} tile pushes/s ({} tiles of {:.1} KiB average)",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64 / secs,
        bytes as f64 / 1e9 / secs,
        frames as f64 / secs,
        tiles.len(),
        bytes as f64 / 1024.0 / frames.max(1) as f64,
    );
    let _ = std::fs::remove_dir_all(tmp);
}
