//! Shared helpers for the integration tests and the benchmark: locating
//! the vendored datasets/ and loading its GeoJSON into `TileFeature`s.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use geostream_tiles::{FeatureId, TileFeature, TileId};

/// The repository's vendored real data (`datasets/`).
pub(crate) fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json",
        dir.display()
    );
    dir
}

pub(crate) fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("read manifest.json");
    serde_json::from_str(&text).expect("parse manifest.json")
}

/// Reads a GeoJSON FeatureCollection, zstd-compressed when the name ends in
/// `.zst`.
pub(crate) fn load_features(dir: &Path, rel: &str) -> Vec<TileFeature> {
    let path = dir.join(rel);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let text = if rel.ends_with(".zst") {
        zstd::decode_all(&raw[..]).expect("zstd")
    } else {
        raw
    };
    let fc: geojson::FeatureCollection =
        serde_json::from_slice(&text).expect("parse FeatureCollection");
    fc.features
        .into_iter()
        .filter_map(|f| {
            let geometry = geo::Geometry::<f64>::try_from(&f.geometry?.value).ok()?;
            let id = f.id.map(|id| match id {
                geojson::feature::Id::String(s) => FeatureId::Str(s),
                geojson::feature::Id::Number(n) => match n.as_u64() {
                    Some(u) => FeatureId::Int(u),
                    None => FeatureId::Str(n.to_string()),
                },
            });
            Some(TileFeature {
                id,
                geometry,
                properties: f.properties.unwrap_or_default(),
            })
        })
        .collect()
}

/// The tile pixel of lon/lat, computed with the textbook slippy-map formula
/// (tan/sec form), independent of the crate's own projection code.
pub(crate) fn expected_pixel(lon: f64, lat: f64, z: u8, x: u32, y: u32, extent: u32) -> (i64, i64) {
    let n = f64::powi(2.0, i32::from(z));
    let lat_r = lat.to_radians();
    let fx = (lon + 180.0) / 360.0 * n;
    let fy = (1.0 - (lat_r.tan() + 1.0 / lat_r.cos()).ln() / std::f64::consts::PI) / 2.0 * n;
    (
        ((fx - f64::from(x)) * f64::from(extent)).round() as i64,
        ((fy - f64::from(y)) * f64::from(extent)).round() as i64,
    )
}

/// The features whose bounding box comes near `tile` (the rest cannot
/// change its bytes), so edits can clone a small set.
pub(crate) fn near_tile(features: &[TileFeature], tile: TileId) -> Vec<TileFeature> {
    use geo::BoundingRect;
    let b = tile.bounds_lonlat();
    let (mx, my) = ((b.east - b.west) * 0.1, (b.north - b.south) * 0.1);
    features
        .iter()
        .filter(|f| {
            f.geometry.bounding_rect().is_some_and(|r| {
                r.max().x >= b.west - mx
                    && r.min().x <= b.east + mx
                    && r.max().y >= b.south - my
                    && r.min().y <= b.north + my
            })
        })
        .cloned()
        .collect()
}

/// Single-feature edits of the kinds a collaborative editor makes: move a
/// point, move one vertex of a line or polygon (by about three tile pixels),
/// change one property value. Picks `n` features spread evenly over those
/// with a vertex inside the tile; deterministic.
pub(crate) fn single_feature_edits(
    features: &[TileFeature],
    tile: TileId,
    n: usize,
) -> Vec<(&'static str, Vec<TileFeature>)> {
    use geo::{Coord, Geometry};
    let b = tile.bounds_lonlat();
    let step = (b.east - b.west) / 4096.0 * 3.0;
    let inside = |c: &Coord<f64>| c.x > b.west && c.x < b.east && c.y > b.south && c.y < b.north;
    let candidates: Vec<usize> = features
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            use geo::CoordsIter;
            f.geometry.coords_iter().any(|c| inside(&c))
        })
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let picks: Vec<usize> = (0..n.min(candidates.len()))
        .map(|k| candidates[k * candidates.len() / n.min(candidates.len())])
        .collect();
    let mut out = Vec::new();
    for i in picks {
        // Geometry edit.
        let mut edited = features.to_vec();
        let moved = {
            let g = &mut edited[i].geometry;
            let mut done = false;
            let mut nudge = |ring: &mut geo::LineString<f64>, closed: bool| {
                let len = ring.0.len();
                let range = if closed {
                    1..len.saturating_sub(1)
                } else {
                    0..len
                };
                for j in range {
                    if !done && inside(&ring.0[j]) {
                        ring.0[j].x += step;
                        done = true;
                    }
                }
            };
            let kind = match g {
                Geometry::Point(p) => {
                    p.0.x += step;
                    done = true;
                    "move point"
                }
                Geometry::LineString(l) => {
                    nudge(l, false);
                    "move line vertex"
                }
                Geometry::MultiLineString(m) => {
                    m.0.iter_mut().for_each(|l| nudge(l, false));
                    "move line vertex"
                }
                Geometry::Polygon(p) => {
                    p.exterior_mut(|e| nudge(e, true));
                    "move polygon vertex"
                }
                Geometry::MultiPolygon(m) => {
                    m.0.iter_mut()
                        .for_each(|p| p.exterior_mut(|e| nudge(e, true)));
                    "move polygon vertex"
                }
                _ => "other",
            };
            done.then_some(kind)
        };
        if let Some(kind) = moved {
            out.push((kind, edited));
        }
        // Property edit.
        let mut edited = features.to_vec();
        let props = &mut edited[i].properties;
        if let Some(p) = props.get("population").and_then(|v| v.as_u64()) {
            props.insert("population".into(), (p + 7).into());
        } else if let Some(key) = ["name", "highway", "railway"]
            .into_iter()
            .find(|k| props.get(*k).is_some_and(|v| v.is_string()))
        {
            let v = format!("{} (edited)", props[key].as_str().unwrap_or_default());
            props.insert(key.into(), v.into());
        } else {
            continue;
        }
        out.push(("change property", edited));
    }
    out
}
