//! MVT encoding of real data, checked by decoding with an independent decoder
//! (the `mvt-reader` crate) and by recomputing expected values in the test.

mod common;

use std::collections::{HashMap, HashSet};

use geo::{Coord, Geometry, LineString};
use geostream_tiles::{FeatureId, MvtOptions, TileFeature, TileId, encode_tile};
use mvt_reader::feature::Value as MValue;
use serde_json::Value;

const EXTENT: u32 = 4096;
const BUFFER: u32 = 64;

fn decode(bytes: &[u8]) -> (Vec<String>, Vec<mvt_reader::feature::Feature<f64>>) {
    let reader = mvt_reader::Reader::new(bytes.to_vec()).expect("mvt-reader parses the tile");
    let names = reader.get_layer_names().expect("layer names");
    let feats = reader.get_features_as::<f64>(0).expect("features");
    (names, feats)
}

fn opts() -> MvtOptions {
    MvtOptions {
        extent: EXTENT,
        buffer: BUFFER,
        simplify: true,
        max_features: 100_000,
    }
}

/// Float tile pixel by the independent formula (no rounding).
fn pixel(c: Coord<f64>, t: TileId) -> (f64, f64) {
    let n = f64::powi(2.0, i32::from(t.z()));
    let lat = c.y.clamp(-85.051_128_78, 85.051_128_78).to_radians();
    let fx = (c.x + 180.0) / 360.0 * n;
    let fy = (1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n;
    (
        (fx - f64::from(t.x())) * f64::from(EXTENT),
        (fy - f64::from(t.y())) * f64::from(EXTENT),
    )
}

fn all_coords(g: &Geometry<f64>) -> Vec<Coord<f64>> {
    use geo::CoordsIter;
    g.coords_iter().collect()
}

/// Twice the signed area by the MVT spec's formula (y down; positive means
/// clockwise on screen, the exterior-ring orientation).
fn spec_area2(ring: &LineString<f64>) -> f64 {
    ring.0
        .windows(2)
        .map(|w| w[0].x * w[1].y - w[1].x * w[0].y)
        .sum()
}

fn in_buffered_tile(p: (f64, f64)) -> bool {
    let (lo, hi) = (-f64::from(BUFFER), f64::from(EXTENT + BUFFER));
    p.0 >= lo && p.0 <= hi && p.1 >= lo && p.1 <= hi
}

/// The id, or for the few features without one (Kosovo, N. Cyprus and
/// Somaliland in Natural Earth) the name.
fn key_of(f: &TileFeature) -> String {
    match &f.id {
        Some(FeatureId::Int(i)) => i.to_string(),
        Some(FeatureId::Str(s)) => s.clone(),
        None => format!("name:{}", f.properties["name"].as_str().unwrap_or("?")),
    }
}

fn decoded_key(f: &mvt_reader::feature::Feature<f64>) -> String {
    if let Some(id) = f.id {
        return id.to_string();
    }
    let props = f.properties.as_ref().expect("properties");
    match (props.get("id"), props.get("name")) {
        (Some(MValue::String(s)), _) => s.clone(),
        (None, Some(MValue::String(name))) => format!("name:{name}"),
        other => panic!("feature without id or name: {other:?}"),
    }
}

/// Checks that every non-null input property came back with the right type
/// and value.
fn assert_properties(input: &TileFeature, got: &HashMap<String, MValue>) {
    for (k, v) in &input.properties {
        if matches!(input.id, Some(FeatureId::Str(_))) && k == "id" {
            continue;
        }
        let d = got.get(k);
        match v {
            Value::Null => assert!(d.is_none(), "{k}: null must be left out"),
            Value::Bool(b) => assert_eq!(d, Some(&MValue::Bool(*b)), "{k}"),
            Value::String(s) => assert_eq!(d, Some(&MValue::String(s.clone())), "{k}"),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    assert_eq!(d, Some(&MValue::UInt(u)), "{k}");
                } else if let Some(i) = n.as_i64() {
                    assert_eq!(d, Some(&MValue::SInt(i)), "{k}");
                } else {
                    let f = n.as_f64().unwrap();
                    match d {
                        Some(MValue::Double(x)) => assert_eq!(*x, f, "{k}"),
                        Some(MValue::Float(x)) => assert_eq!(f64::from(*x), f, "{k}"),
                        other => panic!("{k}: {other:?} for {f}"),
                    }
                }
            }
            Value::Array(_) | Value::Object(_) => {
                assert_eq!(d, Some(&MValue::String(v.to_string())), "{k}")
            }
        }
    }
    if let Some(FeatureId::Str(s)) = &input.id {
        assert_eq!(got.get("id"), Some(&MValue::String(s.clone())));
    }
}

#[test]
fn countries_polygons_decode_with_winding_clipping_and_properties() {
    let dir = common::data_dir();
    let countries = common::load_features(&dir, "polygons/world_countries_110m.geojson");
    let manifest = common::manifest(&dir);
    assert_eq!(
        countries.len() as u64,
        manifest["polygons/world_countries_110m.geojson"]["features"]
            .as_u64()
            .unwrap()
    );
    let by_key: HashMap<String, &TileFeature> = countries.iter().map(|f| (key_of(f), f)).collect();

    for (z, x, y) in [(0, 0, 0), (2, 2, 1), (3, 2, 3), (4, 8, 5)] {
        let tile = TileId::new(z, x, y).unwrap();
        let enc = encode_tile(tile, "countries", &countries, &opts()).unwrap();
        let again = encode_tile(tile, "countries", &countries, &opts()).unwrap();
        assert_eq!(enc.bytes, again.bytes, "deterministic output for {tile}");

        let (names, decoded) = decode(&enc.bytes);
        assert_eq!(names, vec!["countries".to_string()]);
        assert_eq!(decoded.len(), enc.features);

        // Which countries must, and which may, appear, from the input alone.
        let mut must = HashSet::new();
        let mut may = HashSet::new();
        for f in &countries {
            let px: Vec<(f64, f64)> = all_coords(&f.geometry)
                .into_iter()
                .map(|c| pixel(c, tile))
                .collect();
            let (minx, miny, maxx, maxy) = px
                .iter()
                .fold((f64::MAX, f64::MAX, f64::MIN, f64::MIN), |b, p| {
                    (b.0.min(p.0), b.1.min(p.1), b.2.max(p.0), b.3.max(p.1))
                });
            let lo = -f64::from(BUFFER);
            let hi = f64::from(EXTENT + BUFFER);
            if maxx >= lo && minx <= hi && maxy >= lo && miny <= hi {
                may.insert(key_of(f));
            }
            // A polygon part with a vertex well inside the tile and an area
            // of a few hundred units cannot vanish under one-unit
            // simplification.
            let polys: Vec<&geo::Polygon<f64>> = match &f.geometry {
                Geometry::Polygon(p) => vec![p],
                Geometry::MultiPolygon(mp) => mp.0.iter().collect(),
                _ => vec![],
            };
            for p in polys {
                let ring: Vec<(f64, f64)> =
                    p.exterior().0.iter().map(|c| pixel(*c, tile)).collect();
                let area: f64 = ring
                    .windows(2)
                    .map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1)
                    .sum::<f64>()
                    .abs()
                    / 2.0;
                let inside = ring
                    .iter()
                    .any(|q| q.0 > 1.0 && q.0 < 4095.0 && q.1 > 1.0 && q.1 < 4095.0);
                if inside && area > 500.0 {
                    must.insert(key_of(f));
                }
            }
        }
        let got: HashSet<String> = decoded.iter().map(decoded_key).collect();
        assert_eq!(got.len(), decoded.len(), "one feature per country");
        assert!(
            must.is_subset(&got),
            "{tile}: missing {:?}",
            must.difference(&got).collect::<Vec<_>>()
        );
        assert!(
            got.is_subset(&may),
            "{tile}: unexpected {:?}",
            got.difference(&may).collect::<Vec<_>>()
        );
        println!(
            "{tile}: {} countries (must {}, may {}), {} bytes",
            got.len(),
            must.len(),
            may.len(),
            enc.bytes.len()
        );

        let mut exteriors = 0;
        for f in &decoded {
            let input = by_key[&decoded_key(f)];
            assert_properties(input, f.properties.as_ref().unwrap());
            let polys: Vec<&geo::Polygon<f64>> = match &f.geometry {
                Geometry::Polygon(p) => vec![p],
                Geometry::MultiPolygon(mp) => mp.0.iter().collect(),
                other => panic!("not a polygon: {other:?}"),
            };
            for p in polys {
                exteriors += 1;
                assert!(
                    spec_area2(p.exterior()) > 0.0,
                    "{tile}: exterior ring must have positive area"
                );
                for hole in p.interiors() {
                    assert!(
                        spec_area2(hole) < 0.0,
                        "{tile}: holes must have negative area"
                    );
                }
                for c in p
                    .exterior()
                    .0
                    .iter()
                    .chain(p.interiors().iter().flat_map(|h| h.0.iter()))
                {
                    assert!(
                        in_buffered_tile((c.x, c.y)),
                        "{tile}: {c:?} outside the buffered tile"
                    );
                }
            }
        }
        assert!(exteriors >= decoded.len());
    }

    // MultiPolygon → one feature with several exterior rings: Canada
    // (ISO 3166 numeric id "124") and its Arctic islands at zoom 0.
    let enc = encode_tile(
        TileId::new(0, 0, 0).unwrap(),
        "countries",
        &countries,
        &opts(),
    )
    .unwrap();
    let (_, decoded) = decode(&enc.bytes);
    let canada = decoded
        .iter()
        .find(|f| decoded_key(f) == "124")
        .expect("Canada at z0");
    match &canada.geometry {
        Geometry::MultiPolygon(mp) => assert!(mp.0.len() > 5, "Canada has many islands"),
        other => panic!("Canada should be a multipolygon, got {other:?}"),
    }
}

#[test]
fn simplification_reduces_vertices_and_keeps_validity() {
    let dir = common::data_dir();
    let countries = common::load_features(&dir, "polygons/world_countries_110m.geojson");
    let tile = TileId::new(1, 1, 0).unwrap();
    let plain = MvtOptions {
        simplify: false,
        ..opts()
    };
    let a = encode_tile(tile, "c", &countries, &opts()).unwrap();
    let b = encode_tile(tile, "c", &countries, &plain).unwrap();
    let count = |bytes: &[u8]| {
        decode(bytes)
            .1
            .iter()
            .map(|f| all_coords(&f.geometry).len())
            .sum::<usize>()
    };
    let (va, vb) = (count(&a.bytes), count(&b.bytes));
    println!(
        "z1 tile: {va} vertices simplified, {vb} without; {} vs {} bytes",
        a.bytes.len(),
        b.bytes.len()
    );
    assert!(va < vb, "simplification must drop vertices at z1");
    for f in decode(&a.bytes).1 {
        if let Geometry::MultiPolygon(mp) = &f.geometry {
            for p in &mp.0 {
                assert!(
                    p.exterior().0.len() >= 4,
                    "a ring keeps at least 3 distinct points"
                );
            }
        }
    }
}

#[test]
fn city_points_land_on_the_expected_pixels() {
    let dir = common::data_dir();
    let cities = common::load_features(&dir, "points/geonames_cities15000.geojson.zst");
    let manifest = common::manifest(&dir);
    assert_eq!(
        cities.len() as u64,
        manifest["points/geonames_cities15000.geojson.zst"]["features"]
            .as_u64()
            .unwrap()
    );
    let by_id: HashMap<u64, &TileFeature> = cities
        .iter()
        .map(|f| match f.id {
            Some(FeatureId::Int(i)) => (i, f),
            _ => panic!("city without numeric id"),
        })
        .collect();

    // Delhi at z6, Helsinki at z9, and the whole world at z0.
    for (lon, lat, z) in [(77.2, 28.6, 6), (24.94, 60.17, 9), (0.0, 0.0, 0)] {
        let tile = TileId::from_lon_lat(lon, lat, z).unwrap();
        let enc = encode_tile(tile, "cities", &cities, &opts()).unwrap();
        let (_, decoded) = decode(&enc.bytes);
        let expected: Vec<&TileFeature> = cities
            .iter()
            .filter(|f| {
                let Geometry::Point(p) = f.geometry else {
                    return false;
                };
                in_buffered_tile(pixel(p.0, tile))
            })
            .collect();
        println!(
            "{tile}: {} cities, {} bytes",
            decoded.len(),
            enc.bytes.len()
        );
        assert_eq!(decoded.len(), expected.len(), "{tile}: city count");
        for f in &decoded {
            let id = f.id.expect("numeric ids go to the id field");
            let input = by_id[&id];
            let Geometry::Point(p) = input.geometry else {
                unreachable!()
            };
            let want = common::expected_pixel(p.x(), p.y(), tile.z(), tile.x(), tile.y(), EXTENT);
            // mvt-reader returns every point feature as a MultiPoint.
            let pts: Vec<geo::Point<f64>> = match &f.geometry {
                Geometry::Point(q) => vec![*q],
                Geometry::MultiPoint(m) => m.0.clone(),
                other => panic!("city decoded as {other:?}"),
            };
            assert_eq!(pts.len(), 1);
            assert_eq!(
                (pts[0].x() as i64, pts[0].y() as i64),
                want,
                "{tile}: city {id}"
            );
            let props = f.properties.as_ref().unwrap();
            assert_properties(input, props);
            assert_eq!(props.get("geonameid"), Some(&MValue::UInt(id)));
        }
    }

    // The cap keeps the first features in input order and counts the rest.
    let tile = TileId::from_lon_lat(77.2, 28.6, 6).unwrap();
    let capped = MvtOptions {
        max_features: 10,
        ..opts()
    };
    let full = encode_tile(tile, "cities", &cities, &opts()).unwrap();
    let enc = encode_tile(tile, "cities", &cities, &capped).unwrap();
    let (_, decoded) = decode(&enc.bytes);
    let (_, all) = decode(&full.bytes);
    assert_eq!(decoded.len(), 10);
    assert_eq!(enc.dropped, all.len() - 10);
    let first: Vec<Option<u64>> = all.iter().take(10).map(|f| f.id).collect();
    assert_eq!(decoded.iter().map(|f| f.id).collect::<Vec<_>>(), first);
}

#[test]
fn helsinki_lines_are_clipped_into_runs() {
    let dir = common::data_dir();
    let lines = common::load_features(&dir, "lines/osm_helsinki_highway_railway.geojson.zst");
    let by_key: HashMap<String, &TileFeature> = lines.iter().map(|f| (key_of(f), f)).collect();
    for (lon, lat, z) in [(24.94, 60.17, 15), (24.945, 60.17, 14), (24.95, 60.175, 17)] {
        let tile = TileId::from_lon_lat(lon, lat, z).unwrap();
        let enc = encode_tile(tile, "roads", &lines, &opts()).unwrap();
        assert_eq!(
            enc.bytes,
            encode_tile(tile, "roads", &lines, &opts()).unwrap().bytes
        );
        let (_, decoded) = decode(&enc.bytes);
        let mut must = HashSet::new();
        for f in &lines {
            let px: Vec<(f64, f64)> = all_coords(&f.geometry)
                .into_iter()
                .map(|c| pixel(c, tile))
                .collect();
            let long = px
                .windows(2)
                .map(|w| (w[1].0 - w[0].0).hypot(w[1].1 - w[0].1))
                .sum::<f64>()
                > 4.0;
            if long
                && px
                    .iter()
                    .all(|p| p.0 > 0.0 && p.0 < 4096.0 && p.1 > 0.0 && p.1 < 4096.0)
            {
                must.insert(key_of(f));
            }
        }
        let got: HashSet<String> = decoded.iter().map(decoded_key).collect();
        assert!(
            must.is_subset(&got),
            "{tile}: lines inside the tile are missing"
        );
        println!(
            "{tile}: {} lines ({} fully inside), {} bytes",
            got.len(),
            must.len(),
            enc.bytes.len()
        );
        for f in &decoded {
            assert_properties(by_key[&decoded_key(f)], f.properties.as_ref().unwrap());
            let parts: Vec<&LineString<f64>> = match &f.geometry {
                Geometry::LineString(l) => vec![l],
                Geometry::MultiLineString(m) => m.0.iter().collect(),
                other => panic!("not a line: {other:?}"),
            };
            for part in parts {
                assert!(part.0.len() >= 2);
                assert!(
                    part.0.windows(2).all(|w| w[0] != w[1]),
                    "no repeated points"
                );
                for c in &part.0 {
                    assert!(in_buffered_tile((c.x, c.y)), "{tile}: {c:?} outside");
                }
            }
        }
    }
}

#[test]
fn layers_concatenate_into_one_tile() {
    let dir = common::data_dir();
    let countries = common::load_features(&dir, "polygons/world_countries_110m.geojson");
    let cities = common::load_features(&dir, "points/geonames_cities15000.geojson.zst");
    let tile = TileId::new(2, 2, 1).unwrap();
    let mut bytes = encode_tile(tile, "countries", &countries, &opts())
        .unwrap()
        .bytes;
    bytes.extend(encode_tile(tile, "cities", &cities, &opts()).unwrap().bytes);
    let reader = mvt_reader::Reader::new(bytes).unwrap();
    assert_eq!(
        reader.get_layer_names().unwrap(),
        vec!["countries", "cities"]
    );
    assert!(!reader.get_features(1).unwrap().is_empty());
}

/// Whether tile-space point `p` is inside polygon `poly` (even-odd over all
/// its rings).
fn covers(poly: &geo::Polygon<f64>, p: (f64, f64)) -> bool {
    let mut inside = false;
    for ring in std::iter::once(poly.exterior()).chain(poly.interiors()) {
        for w in ring.0.windows(2) {
            let (a, b) = (w[0], w[1]);
            if (a.y > p.1) != (b.y > p.1) && p.0 < a.x + (p.1 - a.y) * (b.x - a.x) / (b.y - a.y) {
                inside = !inside;
            }
        }
    }
    inside
}

/// The issue seen on the demo map: over the North Atlantic at zoom ~2.6, the
/// countries layer showed bands of land between ~66° and 72°N. Natural Earth
/// as world-atlas writes it has Russian rings (Chukotka, Wrangel Island) with
/// edges from 179.9° to -180°; read planar, each such edge crosses the whole
/// world. The tiles must now show open sea there, and Russia only near
/// ±180°.
#[test]
fn no_bands_of_land_across_the_north_atlantic() {
    let dir = common::data_dir();
    for file in [
        "polygons/world_countries_110m.geojson",
        "polygons/world_countries_50m.geojson.zst",
    ] {
        let countries = common::load_features(&dir, file);
        // Antarctica (010) at 1:110m goes round the pole and is closed along the
        // antimeridian: that edge is real, so it still fills the bottom of every column of
        // tiles. (At 1:50m the file has a zero-area exterior along -89.999° with the coast
        // as its hole, which no planar reading can draw.)
        for x in (0..4).filter(|_| file.contains("110m")) {
            let tile = TileId::new(2, x, 3).unwrap();
            let enc = encode_tile(tile, "countries", &countries, &opts()).unwrap();
            let (_, decoded) = decode(&enc.bytes);
            let bottom = pixel(
                Coord {
                    x: -135.0 + 90.0 * f64::from(x),
                    y: -84.0,
                },
                tile,
            );
            let antarctica = decoded.iter().find(|f| decoded_key(f) == "010");
            let covered = antarctica.is_some_and(|f| match &f.geometry {
                Geometry::Polygon(p) => covers(p, bottom),
                Geometry::MultiPolygon(mp) => mp.0.iter().any(|p| covers(p, bottom)),
                _ => false,
            });
            assert!(covered, "{file} {tile}: Antarctica at the bottom");
        }
        // Open sea, in the band: the Norwegian Sea, the Greenland Sea north
        // of Jan Mayen, the Beaufort Sea, the Barents Sea's west.
        for (z, x, y) in [(2, 1, 0), (2, 1, 1), (3, 3, 1), (3, 3, 2), (2, 0, 0)] {
            let tile = TileId::new(z, x, y).unwrap();
            let enc = encode_tile(tile, "countries", &countries, &opts()).unwrap();
            let (_, decoded) = decode(&enc.bytes);
            for sea in [(-10.0, 68.0), (-5.0, 73.0), (-150.0, 74.0), (-30.0, 62.0)] {
                let px = pixel(Coord { x: sea.0, y: sea.1 }, tile);
                if !(0.0..4096.0).contains(&px.0) || !(0.0..4096.0).contains(&px.1) {
                    continue;
                }
                for f in &decoded {
                    let polys: Vec<&geo::Polygon<f64>> = match &f.geometry {
                        Geometry::Polygon(p) => vec![p],
                        Geometry::MultiPolygon(mp) => mp.0.iter().collect(),
                        _ => vec![],
                    };
                    assert!(
                        !polys.iter().any(|p| covers(p, px)),
                        "{file} {tile}: {} covers the sea at {sea:?}",
                        decoded_key(f)
                    );
                }
            }
            // Russia (643) reaches no further west than Chukotka's tip
            // (-169.7°) across the antimeridian; in the Atlantic, nothing.
            let russia: Vec<_> = decoded.iter().filter(|f| decoded_key(f) == "643").collect();
            if x == 1 {
                assert!(russia.is_empty(), "{file} {tile}: Russia in the Atlantic");
            }
            for f in russia {
                let limit = pixel(Coord { x: -168.0, y: 0.0 }, tile).0;
                for c in all_coords(&f.geometry) {
                    assert!(
                        c.x <= limit.max(-f64::from(BUFFER)),
                        "{file} {tile}: Russia at x {}",
                        c.x
                    );
                }
            }
        }
    }
}
