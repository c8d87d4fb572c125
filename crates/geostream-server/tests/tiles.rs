//! Tiles over real sockets: vector tiles made from layers (checked with an independent MVT
//! decoder), ETag / 304, TileJSON, raster archives (compared with an independent read of the
//! files), uploads, and tile subscriptions (deltas, coalescing, unknown bases, notices).
//!
//! Real-data tests read the vendored `datasets/`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::{Got, TestServer, Ws, http, http_json};
use geo::CoordsIter;
use geostream_core::codec::{Encoding, ServerFrame};
use geostream_server::config::RasterLayerConfig;
use geostream_tiles::delta;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The repository's vendored real data (`datasets/`).
fn datasets() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json",
        dir.display()
    );
    dir
}

fn read_geojson(dir: &Path, rel: &str) -> Vec<Value> {
    let raw = std::fs::read(dir.join(rel)).unwrap();
    let text = if rel.ends_with(".zst") {
        zstd::decode_all(&raw[..]).unwrap()
    } else {
        raw
    };
    let fc: Value = serde_json::from_slice(&text).unwrap();
    fc["features"].as_array().unwrap().clone()
}

/// Imports features into a (new) layer over WebSocket.
async fn import(ws: &mut Ws, layer: &str, features: Vec<Value>) {
    // Last writer wins, so edits in the tests need no version.
    ws.ok(
        "layer.create",
        json!({ "name": layer, "last_writer_wins": true }),
    )
    .await;
    for chunk in features.chunks(200) {
        let r = ws
            .ok("layer.import", json!({ "layer": layer, "features": chunk }))
            .await;
        assert_eq!(r["rejected"], 0, "{r}");
    }
    // Forget the import's progress notifications.
    ws.backlog.retain(|(m, _)| m != "$/progress");
}

/// The bytes of a push's `data`: base64 in JSON, MessagePack bin (an array of numbers once
/// decoded to JSON) otherwise.
fn data_of(p: &Value) -> Vec<u8> {
    match &p["data"] {
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64 data"),
        Value::Array(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        other => panic!("no data in {p}: {other}"),
    }
}

async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Vec<u8>) {
    common::http(addr, "GET", path, headers, None).await
}

fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// What a client holds: tile → (version, bytes), updated by applying pushes.
#[derive(Default)]
struct Held(HashMap<String, (u64, Vec<u8>)>);

impl Held {
    /// Applies a `tile` push; returns its kind.
    fn apply(&mut self, p: &Value) -> String {
        let tile = p["tile"].as_str().unwrap().to_string();
        let version = p["version"].as_u64().unwrap();
        let kind = p["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "full" => {
                self.0.insert(tile, (version, data_of(p)));
            }
            "delta" => {
                let base = p["base"].as_u64().expect("a delta names its base");
                let (held_v, held) = self.0.get(&tile).expect("delta for a tile we hold");
                assert_eq!(*held_v, base, "delta against the version we hold");
                let new = delta::apply(held, &data_of(p), 1 << 24).expect("delta applies");
                self.0.insert(tile, (version, new));
            }
            "notify" => {}
            other => panic!("unknown kind {other}"),
        }
        kind
    }
}

async fn tile_push(ws: &mut Ws) -> Value {
    ws.push_of("tile").await
}

/// Pushes of `tile` until nothing arrives for `quiet`.
async fn tile_pushes_until_quiet(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some((m, p)) = ws.backlog.pop_front() {
        if m == "tile" {
            out.push(p);
        }
    }
    loop {
        match tokio::time::timeout(quiet, ws.recv()).await {
            Err(_) => return out,
            Ok(Got::Frame(ServerFrame::Notification { method, params })) if method == "tile" => {
                out.push(params)
            }
            Ok(Got::Frame(_)) => {}
            Ok(Got::Closed(c)) => panic!("closed: {c:?}"),
        }
    }
}

fn point(id: &str, lon: f64, lat: f64, props: Value) -> Value {
    json!({"type": "Feature", "id": id, "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": props})
}

/// A few points spread over the world, so tiles at z2 hold one or two each.
fn sample_points() -> Vec<Value> {
    vec![
        point(
            "helsinki",
            24.94,
            60.17,
            json!({"name": "Helsinki", "pop": 656_000}),
        ),
        point(
            "sf",
            -122.42,
            37.77,
            json!({"name": "San Francisco", "pop": 815_000}),
        ),
        point(
            "oakland",
            -122.27,
            37.80,
            json!({"name": "Oakland", "pop": 440_000}),
        ),
        point(
            "lagos",
            3.38,
            6.52,
            json!({"name": "Lagos", "pop": 15_000_000}),
        ),
        point(
            "sydney",
            151.21,
            -33.87,
            json!({"name": "Sydney", "pop": 5_300_000}),
        ),
    ]
}

/// The tile holding lon/lat at zoom z (independent slippy-map formula).
fn tile_of(lon: f64, lat: f64, z: u8) -> String {
    let n = f64::powi(2.0, i32::from(z));
    let lat_r = lat.to_radians();
    let x = ((lon + 180.0) / 360.0 * n).floor();
    let y =
        ((1.0 - (lat_r.tan() + 1.0 / lat_r.cos()).ln() / std::f64::consts::PI) / 2.0 * n).floor();
    format!("{z}/{x}/{y}")
}

/// Every position of a GeoJSON `coordinates` member.
fn positions(v: &Value) -> Vec<(f64, f64)> {
    match v.as_array() {
        Some(a) if a.first().is_some_and(Value::is_number) => {
            vec![(a[0].as_f64().unwrap(), a[1].as_f64().unwrap())]
        }
        Some(a) => a.iter().flat_map(positions).collect(),
        None => Vec::new(),
    }
}

/// `{"have": {tile: version}}`-style map with one entry.
fn have(tile: &str, version: u64) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(tile.to_string(), json!(version));
    Value::Object(m)
}

fn pixel(lon: f64, lat: f64, z: u8, x: u32, y: u32) -> (f64, f64) {
    let n = f64::powi(2.0, i32::from(z));
    let lat_r = lat.clamp(-85.051_128_78, 85.051_128_78).to_radians();
    let fx = (lon + 180.0) / 360.0 * n;
    let fy = (1.0 - (lat_r.tan() + 1.0 / lat_r.cos()).ln() / std::f64::consts::PI) / 2.0 * n;
    ((fx - f64::from(x)) * 4096.0, (fy - f64::from(y)) * 4096.0)
}

async fn mvt(addr: SocketAddr, layer: &str, tile: &str) -> Vec<u8> {
    let (status, h, body) = get(addr, &format!("/v1/tiles/{layer}/{tile}.mvt"), &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        header(&h, "content-type"),
        "application/vnd.mapbox-vector-tile"
    );
    body
}

// ---------------------------------------------------------------------------------------------
// Vector tiles over HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn vector_tiles_of_real_countries_and_cities_decode_to_the_layer() {
    let dir = datasets();
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let countries = read_geojson(&dir, "polygons/world_countries_110m.geojson");
    assert_eq!(countries.len(), 177);
    import(&mut ws, "world", countries.clone()).await;

    // z0: the whole world in one tile. Every country whose bounding box spans a few tile
    // units is in it, with its name, and its decoded extent matches the original's.
    let tile = mvt(srv.addr, "world", "0/0/0").await;
    let reader = mvt_reader::Reader::new(tile).expect("mvt-reader parses the tile");
    assert_eq!(reader.get_layer_names().unwrap(), vec!["world".to_string()]);
    let decoded = reader.get_features_as::<f64>(0).unwrap();
    let mut by_name: HashMap<String, &mvt_reader::feature::Feature<f64>> = HashMap::new();
    for f in &decoded {
        let props = f.properties.as_ref().expect("properties");
        let Some(mvt_reader::feature::Value::String(name)) = props.get("name") else {
            panic!("a feature without name: {props:?}")
        };
        by_name.insert(name.clone(), f);
    }
    let mut checked = 0;
    for c in &countries {
        let name = c["properties"]["name"].as_str().unwrap();
        let (mut min, mut max) = ((f64::MAX, f64::MAX), (f64::MIN, f64::MIN));
        for (lon, lat) in positions(&c["geometry"]["coordinates"]) {
            let (x, y) = pixel(lon, lat, 0, 0, 0);
            min = (min.0.min(x), min.1.min(y));
            max = (max.0.max(x), max.1.max(y));
        }
        if max.0 - min.0 < 8.0 || max.1 - min.1 < 8.0 {
            continue; // may legitimately vanish at z0
        }
        let f = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from tile 0/0/0"));
        let (mut dmin, mut dmax) = ((f64::MAX, f64::MAX), (f64::MIN, f64::MIN));
        for p in f.geometry.coords_iter() {
            dmin = (dmin.0.min(p.x), dmin.1.min(p.y));
            dmax = (dmax.0.max(p.x), dmax.1.max(p.y));
        }
        for (a, b) in [
            (dmin.0, min.0),
            (dmin.1, min.1),
            (dmax.0, max.0),
            (dmax.1, max.1),
        ] {
            assert!(
                (a - b).abs() <= 2.0,
                "{name}: decoded extent {dmin:?}-{dmax:?}, expected {min:?}-{max:?}"
            );
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} countries checked");
    assert!(decoded.len() <= 177);

    // Cities: each point of a z3 tile decodes to the pixel the textbook formula gives.
    let cities: Vec<Value> = read_geojson(&dir, "points/geonames_cities15000.geojson.zst")
        .into_iter()
        .filter(|c| {
            let p = &c["geometry"]["coordinates"];
            let (lon, lat) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            (0.0..45.0).contains(&lon) && (41.0..66.5).contains(&lat)
        })
        .take(600)
        .collect();
    import(&mut ws, "cities", cities.clone()).await;
    let (z, x, y) = (3u8, 4u32, 2u32);
    let tile = mvt(srv.addr, "cities", &format!("{z}/{x}/{y}")).await;
    let reader = mvt_reader::Reader::new(tile).unwrap();
    let decoded = reader.get_features_as::<f64>(0).unwrap();
    let expected: Vec<&Value> = cities
        .iter()
        .filter(|c| {
            let p = &c["geometry"]["coordinates"];
            tile_of(p[0].as_f64().unwrap(), p[1].as_f64().unwrap(), z) == format!("{z}/{x}/{y}")
        })
        .collect();
    assert!(expected.len() > 50, "{} cities in the tile", expected.len());
    let mut found = 0;
    for c in &expected {
        let p = &c["geometry"]["coordinates"];
        let (px, py) = pixel(p[0].as_f64().unwrap(), p[1].as_f64().unwrap(), z, x, y);
        let name = c["properties"]["name"].as_str().unwrap();
        let hit = decoded.iter().any(|f| {
            let named = matches!(
                f.properties.as_ref().and_then(|p| p.get("name")),
                Some(mvt_reader::feature::Value::String(n)) if n == name
            );
            named
                && f.geometry
                    .coords_iter()
                    .any(|q| (q.x - px.round()).abs() <= 1.0 && (q.y - py.round()).abs() <= 1.0)
        });
        assert!(hit, "{name} not at ({px:.1}, {py:.1})");
        found += 1;
    }
    assert_eq!(found, expected.len());
    srv.shutdown().await;
}

#[tokio::test]
async fn etag_304_tilejson_and_invalidation_by_edits() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    import(&mut ws, "pts", sample_points()).await;
    let path = format!("/v1/tiles/pts/{}.mvt", tile_of(24.94, 60.17, 4));
    let (s1, h1, b1) = get(srv.addr, &path, &[]).await;
    assert_eq!(s1, 200);
    let etag = header(&h1, "etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(!b1.is_empty());
    // Same tile again: 304 with the same ETag, no body.
    let (s2, h2, b2) = get(srv.addr, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(
        (s2, header(&h2, "etag").as_str(), b2.len()),
        (304, etag.as_str(), 0)
    );
    // A different ETag: the tile.
    let (s3, _, b3) = get(srv.addr, &path, &[("if-none-match", "\"0-deadbeef\"")]).await;
    assert_eq!((s3, &b3), (200, &b1));

    // An edit far away leaves the tile (and its ETag) alone.
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "sydney", "properties": {"pop": 1}}),
    )
    .await;
    let (s4, _, _) = get(srv.addr, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(s4, 304, "an edit elsewhere does not change this tile");
    // An edit of a feature in the tile changes it.
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "helsinki", "properties": {"name": "Helsingfors"}}),
    )
    .await;
    let (s5, h5, b5) = get(srv.addr, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(s5, 200);
    assert_ne!(header(&h5, "etag"), etag);
    assert!(b5.windows(11).any(|w| w == b"Helsingfors"));

    // TileJSON 3.0.
    let (status, tj) = http_json(srv.addr, "GET", "/v1/tiles/pts.json", None).await;
    assert_eq!(status, 200, "{tj}");
    assert_eq!(tj["tilejson"], "3.0.0");
    let url = tj["tiles"][0].as_str().unwrap();
    assert_eq!(
        url,
        format!("http://{}/v1/tiles/pts/{{z}}/{{x}}/{{y}}.mvt", srv.addr)
    );
    assert_eq!(tj["vector_layers"][0]["id"], "pts");
    assert_eq!(tj["vector_layers"][0]["fields"]["name"], "String");
    assert_eq!(tj["vector_layers"][0]["fields"]["pop"], "Number");
    assert_eq!(tj["maxzoom"], 22);
    let (status, list) = http_json(srv.addr, "GET", "/v1/tiles", None).await;
    assert_eq!(status, 200);
    assert!(
        list["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "pts" && l["kind"] == "vector")
    );
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Raster tiles
// ---------------------------------------------------------------------------------------------

/// Every tile of an MBTiles file, read with SQLite directly: (z, x, y in XYZ) → bytes.
fn read_mbtiles(path: &Path) -> Vec<((u8, u32, u32), Vec<u8>)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = conn
        .prepare("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")
        .unwrap();
    st.query_map([], |r| {
        let (z, x, row): (u8, u32, u32) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok(((z, x, (1u32 << z) - 1 - row), r.get::<_, Vec<u8>>(3)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A minimal PMTiles v3 reader written from the specification (independent of the server's):
/// every tile as (z, x, y) → bytes.
fn read_pmtiles(path: &Path) -> Vec<((u8, u32, u32), Vec<u8>)> {
    let file = std::fs::read(path).unwrap();
    assert_eq!(&file[0..7], b"PMTiles");
    assert_eq!(file[7], 3);
    let u64_at = |o: usize| u64::from_le_bytes(file[o..o + 8].try_into().unwrap());
    let (root_off, root_len) = (u64_at(8) as usize, u64_at(16) as usize);
    let (leaf_off, data_off) = (u64_at(40) as usize, u64_at(56) as usize);
    let internal_compression = file[97];
    let inflate = |b: &[u8]| -> Vec<u8> {
        match internal_compression {
            1 => b.to_vec(),
            2 => {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(b)
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            c => panic!("internal compression {c} not handled by this test"),
        }
    };
    fn varint(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    // Directory entries: (tile id, offset, length, run length).
    fn entries(d: &[u8]) -> Vec<(u64, u64, u64, u64)> {
        let mut pos = 0;
        let n = varint(d, &mut pos) as usize;
        let mut ids = Vec::with_capacity(n);
        let mut last = 0u64;
        for _ in 0..n {
            last += varint(d, &mut pos);
            ids.push(last);
        }
        let runs: Vec<u64> = (0..n).map(|_| varint(d, &mut pos)).collect();
        let lens: Vec<u64> = (0..n).map(|_| varint(d, &mut pos)).collect();
        let mut offs = Vec::with_capacity(n);
        for i in 0..n {
            let v = varint(d, &mut pos);
            offs.push(if v == 0 && i > 0 {
                offs[i - 1] + lens[i - 1]
            } else {
                v.saturating_sub(1)
            });
        }
        (0..n)
            .map(|i| (ids[i], offs[i], lens[i], runs[i]))
            .collect()
    }
    // Tile id to z/x/y (Hilbert curve per zoom, after the ids of lower zooms).
    fn zxy(id: u64) -> (u8, u32, u32) {
        let mut z = 0u8;
        let mut acc = 0u64;
        loop {
            let n = 1u64 << (2 * u32::from(z));
            if id < acc + n {
                break;
            }
            acc += n;
            z += 1;
        }
        let mut t = id - acc;
        let (mut x, mut y) = (0u64, 0u64);
        let mut s = 1u64;
        while s < (1u64 << z) {
            let rx = 1 & (t / 2);
            let ry = 1 & (t ^ rx);
            if ry == 0 {
                if rx == 1 {
                    x = s - 1 - x;
                    y = s - 1 - y;
                }
                std::mem::swap(&mut x, &mut y);
            }
            x += s * rx;
            y += s * ry;
            t /= 4;
            s *= 2;
        }
        (z, x as u32, y as u32)
    }
    let mut out = Vec::new();
    let mut stack = vec![inflate(&file[root_off..root_off + root_len])];
    while let Some(dir) = stack.pop() {
        for (id, off, len, run) in entries(&dir) {
            let (off, len) = (off as usize, len as usize);
            if run == 0 {
                let at = leaf_off + off;
                stack.push(inflate(&file[at..at + len]));
            } else {
                for k in 0..run {
                    let at = data_off + off;
                    out.push((zxy(id + k), file[at..at + len].to_vec()));
                }
            }
        }
    }
    out
}

fn with_rasters(dir: &Path) -> impl FnOnce(&mut geostream_server::Config) + use<> {
    let tiles = dir.join("tiles");
    move |c| {
        c.tiles.raster = vec![
            RasterLayerConfig {
                name: "bluemarble".into(),
                path: Some(tiles.join("bluemarble_world_z0-4.mbtiles")),
                format: None,
                read_only: false,
            },
            RasterLayerConfig {
                name: "landsat".into(),
                path: Some(tiles.join("landsat7_sf_bay_z0-13.pmtiles")),
                format: None,
                read_only: true,
            },
            RasterLayerConfig {
                name: "uploads".into(),
                path: None,
                format: Some("png".into()),
                read_only: false,
            },
        ];
    }
}

#[tokio::test]
async fn raster_tiles_are_served_byte_identical_to_the_archives() {
    let dir = datasets();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let srv = TestServer::start_with(with_rasters(&dir)).await;
    for (layer, file) in [
        ("bluemarble", "tiles/bluemarble_world_z0-4.mbtiles"),
        ("landsat", "tiles/landsat7_sf_bay_z0-13.pmtiles"),
    ] {
        let path = dir.join(file);
        let tiles = if file.ends_with(".mbtiles") {
            read_mbtiles(&path)
        } else {
            read_pmtiles(&path)
        };
        assert_eq!(
            tiles.len() as u64,
            manifest[file]["tiles"].as_u64().unwrap(),
            "{file}: the independent read finds every tile"
        );
        for ((z, x, y), bytes) in &tiles {
            let (status, h, body) =
                get(srv.addr, &format!("/v1/tiles/{layer}/{z}/{x}/{y}"), &[]).await;
            assert_eq!(status, 200, "{layer} {z}/{x}/{y}");
            assert_eq!(header(&h, "content-type"), "image/jpeg");
            assert!(
                body == *bytes,
                "{layer} {z}/{x}/{y} differs from the archive"
            );
        }
        let (status, tj) =
            http_json(srv.addr, "GET", &format!("/v1/tiles/{layer}.json"), None).await;
        assert_eq!(status, 200);
        assert_eq!(tj["format"], "jpg");
        assert_eq!(tj["maxzoom"], manifest[file]["maxzoom"]);
    }
    // A tile the archive does not have.
    let (status, body) = http_json(srv.addr, "GET", "/v1/tiles/landsat/13/0/0", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["name"], "tile_not_found");
    srv.shutdown().await;
}

/// A tiny valid-looking PNG (the server checks the signature).
fn png(tag: u8, len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag)));
    v
}

#[tokio::test]
async fn uploads_get_versions_and_survive_a_restart() {
    let dir = common::tempdir::Dir::new("tiles-up");
    let raster = |c: &mut geostream_server::Config| {
        c.tiles.raster = vec![RasterLayerConfig {
            name: "uploads".into(),
            path: None,
            format: Some("png".into()),
            read_only: false,
        }];
    };
    let mut cfg = common::test_config(&dir);
    raster(&mut cfg);
    let data_dir = dir.keep();
    let srv = TestServer::start_config(cfg, common::tempdir::Dir::new("unused")).await;
    let one = png(1, 3000);
    let (status, h, body) = http(
        srv.addr,
        "PUT",
        "/v1/tiles/uploads/5/10/12",
        &[("content-type", "image/png")],
        Some(one.clone()),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (r["version"].as_u64(), r["tile"].as_str()),
        (Some(1), Some("5/10/12"))
    );
    assert_eq!(header(&h, "etag"), r["etag"].as_str().unwrap());
    let (status, h, got) = get(srv.addr, "/v1/tiles/uploads/5/10/12.png", &[]).await;
    assert_eq!(
        (status, header(&h, "content-type").as_str()),
        (200, "image/png")
    );
    assert!(got == one);
    let two = png(2, 3100);
    let (status, _, body) = http(
        srv.addr,
        "PUT",
        "/v1/tiles/uploads/5/10/12",
        &[],
        Some(two.clone()),
    )
    .await;
    assert_eq!(status, 200, "a replacement");
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["version"], 2);
    srv.shutdown().await;

    // Acknowledged means durable: a new server on the same data directory serves it.
    let mut cfg = common::test_config(&common::tempdir::Dir::new("unused2"));
    cfg.data_dir = data_dir.clone();
    raster(&mut cfg);
    let srv = TestServer::start_config(cfg, common::tempdir::Dir::new("unused3")).await;
    let (status, h, got) = get(srv.addr, "/v1/tiles/uploads/5/10/12", &[]).await;
    assert_eq!(status, 200);
    assert!(got == two);
    assert!(header(&h, "etag").starts_with("\"2-"));
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn an_upload_over_an_archive_tile_is_pushed_to_subscribers() {
    let dir = datasets();
    let srv = TestServer::start_with(with_rasters(&dir)).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let r = ws
        .ok(
            "tile.subscribe",
            json!({"layer": "bluemarble", "tiles": ["2/1/1"], "mode": "full"}),
        )
        .await;
    assert_eq!(r["kind"], "raster");
    let first = tile_push(&mut ws).await;
    assert_eq!(
        (first["version"].as_u64(), first["kind"].as_str()),
        (Some(1), Some("full"))
    );
    let (_, _, archived) = get(srv.addr, "/v1/tiles/bluemarble/2/1/1", &[]).await;
    assert!(data_of(&first) == archived);
    // New imagery arrives (JPEG signature, as the layer holds JPEG tiles).
    let mut img = vec![0xFF, 0xD8, 0xFF, 0xE0];
    img.extend(std::iter::repeat_n(7u8, 5000));
    let (status, _, body) = http(
        srv.addr,
        "PUT",
        "/v1/tiles/bluemarble/2/1/1",
        &[],
        Some(img.clone()),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let p = tile_push(&mut ws).await;
    assert_eq!(
        (p["version"].as_u64(), p["base"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(data_of(&p) == img);
    // The read-only layer refuses uploads.
    let (status, _, body) = http(
        srv.addr,
        "PUT",
        "/v1/tiles/landsat/13/1310/3166",
        &[],
        Some(img),
    )
    .await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_delta_applied_to_the_held_version_gives_the_new_tile() {
    for enc in [Encoding::Json, Encoding::Msgpack, Encoding::MsgpackZstd] {
        let srv = TestServer::start().await;
        let mut ws = Ws::connect(&srv.ws_url(), enc).await;
        import(&mut ws, "pts", sample_points()).await;
        let sf = tile_of(-122.42, 37.77, 3);
        let r = ws
            .ok("tile.subscribe", json!({"layer": "pts", "tiles": [sf]}))
            .await;
        assert_eq!(r["tiles"], json!([sf]));
        assert_eq!(r["kind"], "vector");
        let mut held = Held::default();
        let first = tile_push(&mut ws).await;
        assert_eq!(held.apply(&first), "full");
        assert!(first.get("base").is_none());
        assert_eq!(held.0[&sf].1, mvt(srv.addr, "pts", &sf).await);

        // Move a point a little: a delta against what we hold, rebuilding the tile exactly.
        ws.ok(
            "feature.patch",
            json!({"layer": "pts", "id": "sf", "geometry": {"type": "Point", "coordinates": [-122.40, 37.78]}}),
        )
        .await;
        let p = tile_push(&mut ws).await;
        assert_eq!(p["base"].as_u64(), Some(held.0[&sf].0));
        assert_eq!(held.apply(&p), "delta", "{p}");
        let fresh = mvt(srv.addr, "pts", &sf).await;
        assert!(
            held.0[&sf].1 == fresh,
            "the delta rebuilds the tile byte for byte"
        );
        assert!(data_of(&p).len() < fresh.len());
        let (_, h, _) = get(srv.addr, &format!("/v1/tiles/pts/{sf}.mvt"), &[]).await;
        assert_eq!(header(&h, "etag"), p["etag"].as_str().unwrap());
        srv.shutdown().await;
    }
}

#[tokio::test]
async fn an_edit_pushes_exactly_the_affected_subscribed_tiles() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    import(&mut ws, "pts", sample_points()).await;
    // The whole world at z2: 16 tiles, 4 of them with points.
    let r = ws
        .ok(
            "tile.subscribe",
            json!({"layer": "pts", "viewport": {"bbox": [-180, -85, 180, 85], "zoom": 2}}),
        )
        .await;
    assert_eq!(r["tiles"].as_array().unwrap().len(), 16);
    let mut held = Held::default();
    for p in tile_pushes_until_quiet(&mut ws, Duration::from_millis(400)).await {
        assert_eq!(held.apply(&p), "full");
    }
    assert_eq!(
        held.0.len(),
        16,
        "every tile once (empty ones as empty tiles)"
    );
    // Edit Lagos's properties: only its tile changes.
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "lagos", "properties": {"pop": 16_000_000}}),
    )
    .await;
    let pushes = tile_pushes_until_quiet(&mut ws, Duration::from_millis(400)).await;
    let tiles: Vec<&str> = pushes.iter().map(|p| p["tile"].as_str().unwrap()).collect();
    assert_eq!(tiles, vec![tile_of(3.38, 6.52, 2)]);
    held.apply(&pushes[0]);
    // Move San Francisco to Helsinki's tile: the old and the new tile both change.
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "sf", "geometry": {"type": "Point", "coordinates": [25.0, 60.0]}}),
    )
    .await;
    let pushes = tile_pushes_until_quiet(&mut ws, Duration::from_millis(400)).await;
    let mut tiles: Vec<String> = pushes
        .iter()
        .map(|p| p["tile"].as_str().unwrap().to_string())
        .collect();
    tiles.sort();
    let mut expected = vec![tile_of(-122.42, 37.77, 2), tile_of(25.0, 60.0, 2)];
    expected.sort();
    assert_eq!(tiles, expected);
    for p in &pushes {
        held.apply(p);
        let t = p["tile"].as_str().unwrap();
        assert!(held.0[t].1 == mvt(srv.addr, "pts", t).await);
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_edits_is_coalesced_and_ends_at_the_latest_tile() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    import(&mut ws, "pts", sample_points()).await;
    let t = tile_of(24.94, 60.17, 6);
    ws.ok("tile.subscribe", json!({"layer": "pts", "tiles": [t]}))
        .await;
    let mut held = Held::default();
    held.apply(&tile_push(&mut ws).await);
    // 100 edits sent back to back, then their responses.
    let mut ids = Vec::new();
    for i in 0..100 {
        let lon = 24.94 + f64::from(i) * 0.001;
        ids.push(
            ws.send_request(
                "feature.patch",
                json!({"layer": "pts", "id": "helsinki", "geometry": {"type": "Point", "coordinates": [lon, 60.17]}, "properties": {"n": i}}),
            )
            .await,
        );
    }
    for id in ids {
        ws.response(id).await.unwrap();
    }
    let pushes = tile_pushes_until_quiet(&mut ws, Duration::from_millis(500)).await;
    assert!(!pushes.is_empty());
    assert!(pushes.len() < 20, "{} pushes for 100 edits", pushes.len());
    for p in &pushes {
        held.apply(p);
    }
    let fresh = mvt(srv.addr, "pts", &t).await;
    assert!(held.0[&t].1 == fresh, "the client ends at the latest tile");
    let reader = mvt_reader::Reader::new(fresh).unwrap();
    let f = &reader.get_features(0).unwrap()[0];
    assert_eq!(
        f.properties.as_ref().unwrap().get("n"),
        Some(&mvt_reader::feature::Value::UInt(99))
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn asked_tiles_come_at_once_and_edits_wait_for_the_window() {
    // A window long enough that a push within it cannot be the window's flush.
    let window = Duration::from_millis(3000);
    let srv = TestServer::start_with(|c| c.tiles.flush_ms = 3000).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    import(&mut ws, "pts", sample_points()).await;
    let t = tile_of(24.94, 60.17, 6);

    // Subscribing: the tile comes without waiting for the window.
    let asked = std::time::Instant::now();
    let r = ws
        .ok("tile.subscribe", json!({"layer": "pts", "tiles": [t]}))
        .await;
    let sub = r["sub"].as_u64().unwrap();
    let p = tile_push(&mut ws).await;
    assert!(asked.elapsed() < window / 2, "{:?}", asked.elapsed());
    let version = p["version"].as_u64().unwrap();

    // An edit is gathered for the window before its tile is pushed.
    let edited = std::time::Instant::now();
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "helsinki", "properties": {"x": 1}}),
    )
    .await;
    ws.expect_silence(window / 3).await;
    let p = tile_push(&mut ws).await;
    assert!(
        edited.elapsed() >= window * 9 / 10,
        "{:?}",
        edited.elapsed()
    );
    assert!(p["version"].as_u64().unwrap() > version);

    // Saying it holds nothing: the full tile comes at once again.
    let asked = std::time::Instant::now();
    ws.ok("tile.update", json!({"sub": sub, "have": have(&t, 0)}))
        .await;
    let p = tile_push(&mut ws).await;
    assert!(asked.elapsed() < window / 2, "{:?}", asked.elapsed());
    assert_eq!(p["kind"], "full");
    srv.shutdown().await;
}

/// Clients that say they hold nothing the moment their tiles have arrived (a map reloading
/// its style, a client that lost its tile store) must get every tile each time. The server
/// records what it pushed after queueing it, and a client's word that comes in between wins:
/// that interleaving is pinned by a unit test in `tiles/subs.rs`, since over real sockets it
/// happens only now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_again_at_once_gets_every_tile_every_time() {
    // Many subscribers per tile keep a push's bookkeeping busy while its first clients
    // already answer.
    const CLIENTS: usize = 24;
    const ZOOM: u8 = 2;
    const ROUNDS: usize = 60;
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    import(&mut ws, "pts", sample_points()).await;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let url = srv.ws_url();
        clients.spawn(async move {
            let mut ws = Ws::connect(&url, Encoding::Msgpack).await;
            let world = json!({"bbox": [-180.0, -85.0, 180.0, 85.0], "zoom": ZOOM});
            let r = ws
                .ok("tile.subscribe", json!({"layer": "pts", "viewport": world}))
                .await;
            let sub = r["sub"].as_u64().unwrap();
            let tiles: Vec<String> = r["tiles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            let nothing: serde_json::Map<String, Value> =
                tiles.iter().map(|t| (t.clone(), json!(0))).collect();
            let mut round = 0;
            loop {
                // This round's pushes: every tile, each once.
                let mut got = std::collections::BTreeSet::new();
                while got.len() < tiles.len() {
                    let p = tokio::time::timeout(Duration::from_secs(3), tile_push(&mut ws))
                        .await
                        .unwrap_or_else(|_| {
                            panic!("round {round}: {} of {} tiles", got.len(), tiles.len())
                        });
                    assert!(got.insert(p["tile"].as_str().unwrap().to_string()));
                }
                round += 1;
                if round == ROUNDS {
                    return;
                }
                ws.ok("tile.update", json!({"sub": sub, "have": nothing}))
                    .await;
            }
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn have_versions_unknown_bases_and_viewport_moves() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    import(&mut ws, "pts", sample_points()).await;
    let t = tile_of(151.21, -33.87, 4);
    let (_, h, current) = get(srv.addr, &format!("/v1/tiles/pts/{t}.mvt"), &[]).await;
    let version: u64 = header(&h, "x-tile-version").parse().unwrap();

    // Holding the current version: nothing is sent.
    let r = ws
        .ok(
            "tile.subscribe",
            json!({"layer": "pts", "tiles": [t], "have": have(&t, version)}),
        )
        .await;
    let sub = r["sub"].as_u64().unwrap();
    ws.expect_silence(Duration::from_millis(300)).await;
    ws.ok("unsubscribe", json!({"sub": sub})).await;

    // A version the server never had: the full tile.
    let r = ws
        .ok(
            "tile.subscribe",
            json!({"layer": "pts", "tiles": [t], "have": have(&t, 987_654)}),
        )
        .await;
    let sub = r["sub"].as_u64().unwrap();
    let p = tile_push(&mut ws).await;
    assert_eq!(
        (p["kind"].as_str(), p["base"].as_u64()),
        (Some("full"), Some(987_654))
    );
    assert!(data_of(&p) == current);

    // Move the viewport to another zoom: the new tiles come, the old one leaves.
    let r = ws
        .ok(
            "tile.update",
            json!({"sub": sub, "viewport": {"bbox": [150.0, -34.5, 152.0, -33.0], "zoom": 5}}),
        )
        .await;
    assert_eq!(r["removed"], json!([t]));
    let added = r["added"].as_array().unwrap().clone();
    assert!(!added.is_empty());
    let pushes = tile_pushes_until_quiet(&mut ws, Duration::from_millis(300)).await;
    let mut got: Vec<Value> = pushes.iter().map(|p| p["tile"].clone()).collect();
    got.sort_by_key(|v| v.to_string());
    let mut want = added.clone();
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);
    // An edit of Sydney now reaches its z5 tile, not the z4 tile that left.
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "sydney", "properties": {"x": 1}}),
    )
    .await;
    let pushes = tile_pushes_until_quiet(&mut ws, Duration::from_millis(300)).await;
    let tiles: Vec<&str> = pushes.iter().map(|p| p["tile"].as_str().unwrap()).collect();
    assert_eq!(tiles, vec![tile_of(151.21, -33.87, 5)]);
    srv.shutdown().await;
}

#[tokio::test]
async fn notify_mode_sends_versions_that_http_serves() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    import(&mut ws, "pts", sample_points()).await;
    let t = tile_of(-122.42, 37.77, 5);
    let (_, h, _) = get(srv.addr, &format!("/v1/tiles/pts/{t}.mvt"), &[]).await;
    let (etag, version): (String, u64) = (
        header(&h, "etag"),
        header(&h, "x-tile-version").parse().unwrap(),
    );
    ws.ok(
        "tile.subscribe",
        json!({"layer": "pts", "tiles": [t], "mode": "notify", "have": have(&t, version)}),
    )
    .await;
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "oakland", "properties": {"pop": 1}}),
    )
    .await;
    let p = tile_push(&mut ws).await;
    assert_eq!(p["kind"], "notify");
    assert!(p.get("data").is_none());
    assert_eq!(p["base"].as_u64(), Some(version));
    assert!(p["version"].as_u64().unwrap() > version);
    // The MapLibre way: refetch with the old ETag, get the announced version.
    let (status, h2, _) = get(
        srv.addr,
        &format!("/v1/tiles/pts/{t}.mvt"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&h2, "etag"), p["etag"].as_str().unwrap());
    srv.shutdown().await;
}

#[tokio::test]
async fn deleting_a_layer_ends_its_tile_subscriptions() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    import(&mut ws, "pts", sample_points()).await;
    let r = ws
        .ok(
            "tile.subscribe",
            json!({"layer": "pts", "tiles": ["0/0/0"]}),
        )
        .await;
    tile_push(&mut ws).await;
    ws.ok("layer.delete", json!({"name": "pts"})).await;
    let p = ws.push_of("unsubscribed").await;
    assert_eq!(p["sub"], r["sub"]);
    let e = ws
        .call("unsubscribe", json!({"sub": r["sub"]}))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "unknown_subscription");
    srv.shutdown().await;
}

/// Renders keep decoded features between them, keyed by version; a layer deleted and created
/// again counts versions from 1 again, and its tiles must show its new features, not the old
/// layer's at the same versions.
#[tokio::test]
async fn a_layer_created_again_renders_its_new_features() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    import(&mut ws, "pts", sample_points()).await;
    let path = format!("/v1/tiles/pts/{}.mvt", tile_of(24.94, 60.17, 4));
    let (status, _, old) = get(srv.addr, &path, &[]).await;
    assert_eq!(status, 200);
    assert!(old.windows(8).any(|w| w == b"Helsinki"));
    ws.ok("layer.delete", json!({"name": "pts"})).await;
    let again = vec![point(
        "helsinki",
        24.95,
        60.18,
        json!({"name": "Stadi", "pop": 1}),
    )];
    import(&mut ws, "pts", again).await;
    let (status, _, new) = get(srv.addr, &path, &[]).await;
    assert_eq!(status, 200);
    assert!(new.windows(5).any(|w| w == b"Stadi"), "the new feature");
    assert!(
        !new.windows(8).any(|w| w == b"Helsinki"),
        "not the old layer's feature at the same version"
    );
    srv.shutdown().await;
}

/// A re-render after an edit decodes nothing: the unchanged features are kept decoded, and the
/// edited one comes from its change, already parsed. `/metrics` says so.
#[tokio::test]
async fn a_re_render_after_an_edit_decodes_nothing() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let points = sample_points();
    let n = points.len() as f64;
    import(&mut ws, "pts", points).await;
    let decoded = r#"geostream_tile_features_total{source="decoded"}"#;
    let reused = r#"geostream_tile_features_total{source="reused"}"#;
    let (status, _, _) = get(srv.addr, "/v1/tiles/pts/0/0/0.mvt", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            common::metric(srv.addr, decoded).await,
            common::metric(srv.addr, reused).await
        ),
        (n, 0.0),
        "the first render decodes every feature of the world tile"
    );
    ws.ok(
        "feature.patch",
        json!({"layer": "pts", "id": "sydney", "properties": {"name": "Sydney Harbour"}}),
    )
    .await;
    let (status, _, body) = get(srv.addr, "/v1/tiles/pts/0/0/0.mvt", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            common::metric(srv.addr, decoded).await,
            common::metric(srv.addr, reused).await
        ),
        (n, n),
        "the re-render decodes nothing, not even sydney"
    );
    let renamed = b"Sydney Harbour";
    assert!(
        body.windows(renamed.len()).any(|w| w == renamed),
        "the tile has the edit"
    );
    assert_eq!(
        common::metric(srv.addr, "geostream_tile_decoded_features").await,
        n
    );
    assert_eq!(
        common::metric(srv.addr, "geostream_tiles_rendered_total").await,
        2.0
    );
    // The tile cache: both renders were misses (the edit invalidated the first); the same
    // tile asked again is a hit, and the bytes held are the tile's at least.
    let hit = r#"geostream_tile_cache_lookups_total{result="hit"}"#;
    let miss = r#"geostream_tile_cache_lookups_total{result="miss"}"#;
    assert_eq!(
        (
            common::metric(srv.addr, hit).await,
            common::metric(srv.addr, miss).await
        ),
        (0.0, 2.0)
    );
    let (status, _, again) = get(srv.addr, "/v1/tiles/pts/0/0/0.mvt", &[]).await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(
        (
            common::metric(srv.addr, hit).await,
            common::metric(srv.addr, miss).await
        ),
        (1.0, 2.0)
    );
    assert_eq!(
        common::metric(srv.addr, "geostream_tiles_rendered_total").await,
        2.0,
        "a hit renders nothing"
    );
    assert!(common::metric(srv.addr, "geostream_tile_cache_bytes").await >= body.len() as f64);
    assert!(common::metric(srv.addr, "geostream_tile_cache_tiles").await >= 1.0);
    // And the reused features are in the tile, as they were.
    assert!(body.windows(8).any(|w| w == b"Helsinki"));
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let srv = TestServer::start_with(|c| {
        c.tiles.max_upload_bytes = 64 * 1024;
        c.tiles.max_tiles_per_subscription = 16;
        c.tiles.raster = vec![RasterLayerConfig {
            name: "uploads".into(),
            path: None,
            format: Some("png".into()),
            read_only: false,
        }];
    })
    .await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    import(&mut ws, "pts", sample_points()).await;
    let expect = |status: u16, name: &str, r: (u16, Value)| {
        assert_eq!(r.0, status, "{}", r.1);
        assert_eq!(r.1["error"]["name"], name, "{}", r.1);
        assert!(!r.1["error"]["message"].as_str().unwrap().is_empty());
    };
    for path in [
        "/v1/tiles/pts/a/0/0.mvt",
        "/v1/tiles/pts/1/-1/0.mvt",
        "/v1/tiles/pts/3/8/0.mvt",
        "/v1/tiles/pts/23/0/0.mvt",
        "/v1/tiles/pts/99999999999/0/0.mvt",
        "/v1/tiles/pts/0/0/0.png",
    ] {
        expect(
            400,
            "invalid_params",
            http_json(srv.addr, "GET", path, None).await,
        );
    }
    expect(
        404,
        "layer_not_found",
        http_json(srv.addr, "GET", "/v1/tiles/nope/0/0/0.mvt", None).await,
    );
    expect(
        404,
        "layer_not_found",
        http_json(srv.addr, "GET", "/v1/tiles/nope.json", None).await,
    );
    expect(
        404,
        "tile_not_found",
        http_json(srv.addr, "GET", "/v1/tiles/uploads/1/0/0", None).await,
    );

    // Uploads: too large, not an image, empty, to a vector layer, unknown layer.
    let put = |path: &str, body: Vec<u8>| {
        let path = path.to_string();
        let addr = srv.addr;
        async move {
            let (s, _, b) = http(addr, "PUT", &path, &[], Some(body)).await;
            (
                s,
                serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
            )
        }
    };
    expect(
        413,
        "limit_exceeded",
        put("/v1/tiles/uploads/1/0/0", png(0, 200 * 1024)).await,
    );
    expect(
        400,
        "invalid_params",
        put("/v1/tiles/uploads/1/0/0", b"GIF89a....".to_vec()).await,
    );
    expect(
        400,
        "invalid_params",
        put("/v1/tiles/uploads/1/0/0", Vec::new()).await,
    );
    expect(
        400,
        "invalid_params",
        put("/v1/tiles/pts/1/0/0", png(0, 10)).await,
    );
    expect(
        404,
        "layer_not_found",
        put("/v1/tiles/nope/1/0/0", png(0, 10)).await,
    );
    expect(
        400,
        "invalid_params",
        put("/v1/tiles/uploads/1/2/0", png(0, 10)).await,
    );
    // Nothing was stored.
    expect(
        404,
        "tile_not_found",
        http_json(srv.addr, "GET", "/v1/tiles/uploads/1/0/0", None).await,
    );

    // Subscriptions.
    for (params, name) in [
        (
            json!({"layer": "nope", "tiles": ["0/0/0"]}),
            "layer_not_found",
        ),
        (json!({"layer": "pts"}), "invalid_params"),
        (
            json!({"layer": "pts", "tiles": ["0/0/0"], "viewport": {"bbox": [0, 0, 1, 1], "zoom": 1}}),
            "invalid_params",
        ),
        (
            json!({"layer": "pts", "tiles": ["1/2/0"]}),
            "invalid_params",
        ),
        (json!({"layer": "pts", "tiles": ["1/0"]}), "invalid_params"),
        (
            json!({"layer": "pts", "viewport": {"bbox": [0, 10, 1, 5], "zoom": 1}}),
            "invalid_params",
        ),
        (
            json!({"layer": "pts", "viewport": {"bbox": [-180, -85, 180, 85], "zoom": 8}}),
            "limit_exceeded",
        ),
        (
            json!({"layer": "pts", "tiles": ["0/0/0"], "mode": "sometimes"}),
            "invalid_params",
        ),
        (
            json!({"layer": "pts", "tiles": ["0/0/0"], "have": {"x": 1}}),
            "invalid_params",
        ),
    ] {
        let e = ws.call("tile.subscribe", params.clone()).await.unwrap_err();
        assert_eq!(e.code.name(), name, "{params}: {e}");
    }
    let e = ws
        .call("tile.update", json!({"sub": 77, "tiles": ["0/0/0"]}))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "unknown_subscription");
    // The connection is still fine.
    ws.ok(
        "tile.subscribe",
        json!({"layer": "pts", "tiles": ["0/0/0"]}),
    )
    .await;
    assert_eq!(tile_push(&mut ws).await["tile"], "0/0/0");
    srv.shutdown().await;
}
