//! Filters on the vendored real data sets (`datasets/`), checked against brute-force loops
//! written here without this crate's code, and the SQLite translation checked against `matches`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use geo::Geometry;
use geostream_filter::sql::{Dialect, SqlParam, attribute_to_sql};
use geostream_filter::{
    AttributeFilter, FeatureRef, Filter, Limits, SpatialFilter, TemporalFilter,
};
use serde_json::{Map, Value};

struct Feature {
    id: String,
    props: Map<String, Value>,
    geometry: Option<Geometry<f64>>,
    raw_geometry: Value,
}

impl Feature {
    fn as_ref(&self) -> FeatureRef<'_> {
        FeatureRef {
            id: None,
            geometry: self.geometry.as_ref(),
            bbox: None,
            properties: &self.props,
        }
    }
}

/// The repository's vendored real data (`datasets/`).
fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json",
        dir.display()
    );
    dir
}

fn manifest_count(dir: &Path, file: &str) -> usize {
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m[file]["features"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count for {file}")) as usize
}

fn load(dir: &Path, file: &str) -> Vec<Feature> {
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let bytes = if file.ends_with(".zst") {
        zstd::decode_all(&bytes[..]).unwrap()
    } else {
        bytes
    };
    let fc: Value = serde_json::from_slice(&bytes).unwrap();
    let features = fc["features"].as_array().unwrap();
    let out: Vec<Feature> = features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let raw_geometry = f["geometry"].clone();
            let geometry = serde_json::from_value::<geojson::Geometry>(raw_geometry.clone())
                .ok()
                .and_then(|g| Geometry::<f64>::try_from(g).ok());
            Feature {
                id: match &f["id"] {
                    Value::Null => format!("#{i}"),
                    v => v.to_string(),
                },
                props: f["properties"].as_object().cloned().unwrap_or_default(),
                geometry,
                raw_geometry,
            }
        })
        .collect();
    assert_eq!(
        out.len(),
        manifest_count(dir, file),
        "{file}: count differs from manifest.json"
    );
    out
}

fn ids(features: &[Feature], mut keep: impl FnMut(&Feature) -> bool) -> BTreeSet<String> {
    features
        .iter()
        .filter(|f| keep(f))
        .map(|f| f.id.clone())
        .collect()
}

fn point(f: &Feature) -> [f64; 2] {
    let c = f.raw_geometry["coordinates"].as_array().unwrap();
    [c[0].as_f64().unwrap(), c[1].as_f64().unwrap()]
}

/// Great-circle distance, written out independently of the crate (spherical law of
/// cosines on unit vectors).
fn distance_m(a: [f64; 2], b: [f64; 2]) -> f64 {
    let v = |p: [f64; 2]| {
        let (lon, lat) = (p[0].to_radians(), p[1].to_radians());
        [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
    };
    let (x, y) = (v(a), v(b));
    let cross = [
        x[1] * y[2] - x[2] * y[1],
        x[2] * y[0] - x[0] * y[2],
        x[0] * y[1] - x[1] * y[0],
    ];
    let sin = (cross[0] * cross[0] + cross[1] * cross[1] + cross[2] * cross[2]).sqrt();
    let cos = x[0] * y[0] + x[1] * y[1] + x[2] * y[2];
    sin.atan2(cos) * 6_371_008.8
}

/// Even-odd ray casting over every ring of a GeoJSON Polygon / MultiPolygon.
fn inside(p: [f64; 2], geometry: &Value) -> bool {
    let polys: Vec<&Value> = match geometry["type"].as_str() {
        Some("Polygon") => vec![&geometry["coordinates"]],
        Some("MultiPolygon") => geometry["coordinates"].as_array().unwrap().iter().collect(),
        _ => return false,
    };
    polys.iter().any(|rings| {
        let mut odd = false;
        for ring in rings.as_array().unwrap() {
            let pts: Vec<[f64; 2]> = ring
                .as_array()
                .unwrap()
                .iter()
                .map(|c| [c[0].as_f64().unwrap(), c[1].as_f64().unwrap()])
                .collect();
            for w in pts.windows(2) {
                let (a, b) = (w[0], w[1]);
                if (a[1] > p[1]) != (b[1] > p[1])
                    && p[0] < a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0])
                {
                    odd = !odd;
                }
            }
        }
        odd
    })
}

fn attr(text: &str) -> AttributeFilter {
    AttributeFilter::parse_text(text, &Limits::default()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn matching(features: &[Feature], f: &Filter) -> BTreeSet<String> {
    ids(features, |x| f.matches(&x.as_ref()))
}

#[test]
fn cities_attribute_filters() {
    let dir = data_dir();
    let cities = load(&dir, "points/geonames_cities15000.geojson.zst");
    fn num(f: &Feature, k: &str) -> Option<f64> {
        f.props.get(k).and_then(Value::as_f64)
    }
    fn text(f: &Feature, k: &str) -> Option<String> {
        f.props.get(k).and_then(Value::as_str).map(str::to_string)
    }
    type Brute = Box<dyn Fn(&Feature) -> bool>;
    let cases: Vec<(&str, Brute)> = vec![
        (
            "population > 1000000 AND countrycode = 'IN'",
            Box::new(|f| {
                num(f, "population").is_some_and(|p| p > 1e6)
                    && text(f, "countrycode").as_deref() == Some("IN")
            }),
        ),
        (
            "name LIKE 'San %'",
            Box::new(|f| text(f, "name").is_some_and(|n| n.starts_with("San "))),
        ),
        (
            "name LIKE '%burg' AND NOT countrycode IN ('DE', 'AT')",
            Box::new(|f| {
                text(f, "name").is_some_and(|n| n.ends_with("burg"))
                    && text(f, "countrycode").is_some_and(|c| c != "DE" && c != "AT")
            }),
        ),
        (
            "population BETWEEN 15000 AND 16000 OR timezone = 'Europe/Paris'",
            Box::new(|f| {
                num(f, "population").is_some_and(|p| (15000.0..=16000.0).contains(&p))
                    || text(f, "timezone").as_deref() == Some("Europe/Paris")
            }),
        ),
        (
            "CASEI(name) = 'paris'",
            Box::new(|f| text(f, "name").is_some_and(|n| n.to_lowercase() == "paris")),
        ),
    ];
    for (filter, brute) in cases {
        let f = Filter {
            attribute: Some(attr(filter)),
            ..Filter::default()
        };
        let got = matching(&cities, &f);
        let want = ids(&cities, |x| brute(x));
        assert!(
            !want.is_empty(),
            "{filter}: brute force found nothing, the case proves little"
        );
        assert_eq!(got, want, "{filter}");
    }
}

#[test]
fn cities_spatial_filters() {
    let dir = data_dir();
    let cities = load(&dir, "points/geonames_cities15000.geojson.zst");
    // Circle: within 100 km of Paris.
    let paris = [2.3522, 48.8566];
    let f = Filter {
        spatial: Some(SpatialFilter::circle(paris, 100_000.0).unwrap()),
        ..Filter::default()
    };
    let want = ids(&cities, |c| distance_m(paris, point(c)) <= 100_000.0);
    assert!(want.len() > 20);
    assert_eq!(matching(&cities, &f), want);
    // Every match lies inside the covering box.
    let b = f.bbox().unwrap();
    assert!(cities.iter().filter(|c| want.contains(&c.id)).all(|c| {
        let p = point(c);
        b[0] <= p[0] && p[0] <= b[2] && b[1] <= p[1] && p[1] <= b[3]
    }));
    // A circle across the antimeridian (Fiji).
    let suva = [178.44, -18.14];
    let f = Filter {
        spatial: Some(SpatialFilter::circle(suva, 400_000.0).unwrap()),
        ..Filter::default()
    };
    let want = ids(&cities, |c| distance_m(suva, point(c)) <= 400_000.0);
    assert_eq!(matching(&cities, &f), want);
    // Boxes, plain and across the antimeridian.
    for b in [[-10.0, 35.0, 30.0, 60.0], [170.0, -50.0, -170.0, 0.0]] {
        let f = Filter {
            spatial: Some(SpatialFilter::from_bbox(&b).unwrap()),
            ..Filter::default()
        };
        let want = ids(&cities, |c| {
            let [x, y] = point(c);
            let in_lon = if b[0] <= b[2] {
                b[0] <= x && x <= b[2]
            } else {
                x >= b[0] || x <= b[2]
            };
            in_lon && b[1] <= y && y <= b[3]
        });
        assert!(!want.is_empty(), "{b:?}");
        assert_eq!(matching(&cities, &f), want, "{b:?}");
    }
}

#[test]
fn countries_as_polygon_filters() {
    let dir = data_dir();
    let countries = load(&dir, "polygons/ne_110m_admin_0_countries.geojson.zst");
    let cities = load(&dir, "points/geonames_cities15000.geojson.zst");
    for name in ["France", "Brazil", "Japan", "Italy"] {
        let country = countries.iter().find(|c| c.props["ADMIN"] == name).unwrap();
        let f = Filter {
            spatial: Some(
                SpatialFilter::from_geojson(&country.raw_geometry, &Limits::default()).unwrap(),
            ),
            ..Filter::default()
        };
        let got = matching(&cities, &f);
        let want = ids(&cities, |c| inside(point(c), &country.raw_geometry));
        assert!(want.len() > 10, "{name}");
        // Points exactly on an edge may go either way between the two algorithms; there are
        // none at this precision, so the sets must be equal.
        assert_eq!(got, want, "{name}");
    }
    // CQL2 spatial predicate on the countries themselves: which country holds Paris?
    let f = Filter {
        attribute: Some(attr("S_INTERSECTS(geometry, POINT(2.3522 48.8566))")),
        ..Filter::default()
    };
    let got: Vec<String> = countries
        .iter()
        .filter(|c| f.matches(&c.as_ref()))
        .map(|c| c.props["ADMIN"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec!["France"]);
    // Countries intersecting a box around the Alps, against the independent point test on
    // a grid (only a necessary condition: a hit on the grid implies intersection).
    let f = Filter {
        attribute: Some(attr("S_INTERSECTS(geometry, BBOX(6, 45, 11, 48))")),
        ..Filter::default()
    };
    let got = matching(&countries, &f);
    for c in &countries {
        let grid_hit = (0..=50).any(|i| {
            (0..=30).any(|j| {
                inside(
                    [6.0 + f64::from(i) * 0.1, 45.0 + f64::from(j) * 0.1],
                    &c.raw_geometry,
                )
            })
        });
        if grid_hit {
            assert!(
                got.contains(&c.id),
                "{} touches the box but was not matched",
                c.props["ADMIN"]
            );
        }
    }
    assert!(got.len() >= 4, "{got:?}");
}

#[test]
fn earthquakes_in_time() {
    let dir = data_dir();
    let mut quakes = load(
        &dir,
        "points/usgs_earthquakes_2018-01-31_2018-02-07.geojson.zst",
    );
    // The data carries the time as `time` (epoch ms) and `time_iso`; the temporal filter reads
    // `datetime`, so copy it there.
    for q in &mut quakes {
        let iso = q.props["time_iso"].clone();
        q.props.insert("datetime".into(), iso);
    }
    let ms = |f: &Feature| f.props["time"].as_i64().unwrap();
    let (from, to) = (1_517_443_200_000_i64, 1_517_529_600_000_i64); // 2018-02-01 .. 2018-02-02
    let f = Filter {
        temporal: Some(TemporalFilter::parse("2018-02-01T00:00:00Z/2018-02-02T00:00:00Z").unwrap()),
        ..Filter::default()
    };
    let want = ids(&quakes, |q| (from..=to).contains(&ms(q)));
    assert!(want.len() > 100);
    assert_eq!(matching(&quakes, &f), want);
    let f = Filter {
        temporal: Some(TemporalFilter::parse("../2018-02-01T00:00:00Z").unwrap()),
        ..Filter::default()
    };
    assert_eq!(matching(&quakes, &f), ids(&quakes, |q| ms(q) <= from));
    // The manifest's time range covers every event.
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let entry = &m["points/usgs_earthquakes_2018-01-31_2018-02-07.geojson.zst"];
    let range = format!(
        "{}/{}",
        entry["t_min"].as_str().unwrap(),
        entry["t_max"].as_str().unwrap()
    );
    let f = Filter {
        temporal: Some(TemporalFilter::parse(&range).unwrap()),
        ..Filter::default()
    };
    assert_eq!(matching(&quakes, &f).len(), quakes.len());
    // The same question in CQL2, combined with magnitude and a circle around Alaska.
    let anchorage = [-149.9, 61.2];
    let f = Filter {
        spatial: Some(SpatialFilter::circle(anchorage, 500_000.0).unwrap()),
        attribute: Some(attr(
            "T_DURING(time_iso, INTERVAL('2018-02-01T00:00:00Z', '2018-02-02T00:00:00Z')) AND mag >= 1.5",
        )),
        ..Filter::default()
    };
    let want = ids(&quakes, |q| {
        from < ms(q)
            && ms(q) < to
            && q.props["mag"].as_f64().is_some_and(|m| m >= 1.5)
            && distance_m(anchorage, point(q)) <= 500_000.0
    });
    assert!(!want.is_empty());
    assert_eq!(matching(&quakes, &f), want);
}

/// Loads features into an in-memory SQLite table and runs the same filters both ways.
#[test]
fn sqlite_translation_agrees_with_matches() {
    let dir = data_dir();
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch("CREATE TABLE features (layer TEXT, id TEXT, properties TEXT)")
        .unwrap();
    let layers = [
        ("cities", "points/geonames_cities15000.geojson.zst"),
        (
            "quakes",
            "points/usgs_earthquakes_2018-01-31_2018-02-07.geojson.zst",
        ),
        ("ports", "points/wpi_ports.geojson.zst"),
        (
            "countries",
            "polygons/ne_110m_admin_0_countries.geojson.zst",
        ),
    ];
    let mut data = Vec::new();
    for (layer, file) in layers {
        let features = load(&dir, file);
        let mut insert = db
            .prepare("INSERT INTO features VALUES (?1, ?2, ?3)")
            .unwrap();
        for f in &features {
            insert
                .execute((layer, &f.id, Value::Object(f.props.clone()).to_string()))
                .unwrap();
        }
        data.push((layer, features));
    }
    let filters: &[(&str, &str)] = &[
        ("cities", "population > 1000000 AND name LIKE 'S%'"),
        ("cities", "name LIKE '_a%' AND NOT (population < 50000)"),
        ("cities", "name < 'B' OR name >= 'Ž'"),
        (
            "cities",
            "name IN ('Paris', 'London', 'São Paulo', 'Zürich') OR admin1code = '08'",
        ),
        ("cities", "population / 1000 BETWEEN 100 AND 120"),
        ("cities", "population div 1000 = 100"),
        ("cities", "geonameid - population > 0"),
        ("cities", "name = timezone OR countrycode = admin1code"),
        ("quakes", "mag > depth_km"),
        ("quakes", "NOT (felt > 1)"),
        ("quakes", "felt IS NULL AND mag >= 3"),
        ("quakes", "alert IS NOT NULL"),
        ("quakes", "time_iso > TIMESTAMP('2018-02-03T12:00:00Z')"),
        (
            "quakes",
            "T_DURING(time_iso, INTERVAL('2018-02-01T00:00:00Z', '2018-02-02T00:00:00Z'))",
        ),
        (
            "quakes",
            "T_AFTER(time_iso, DATE('2018-02-05')) OR T_EQUALS(time_iso, TIMESTAMP('2018-01-31T01:49:59.650Z'))",
        ),
        (
            "quakes",
            "T_INTERSECTS(INTERVAL(time_iso, '..'), INTERVAL('..', '2018-01-31T06:00:00Z'))",
        ),
        ("quakes", "tsunami = 1 OR type <> 'earthquake'"),
        ("quakes", "place LIKE '%Alaska' AND mag BETWEEN 1 AND 2"),
        ("ports", "alternate_name IS NULL AND channel_depth_m > 10"),
        (
            "ports",
            "harbor_size IN ('Large', 'Medium') AND NOT (max_vessel_length_m = 0)",
        ),
        (
            "ports",
            "name LIKE '%.%' OR name LIKE 'Port \\_%' OR name LIKE '%[%' OR name LIKE '%*%'",
        ),
        (
            "countries",
            "POP_EST > 100000000 OR (ISO_A2 = '-99' AND NOT (GDP_MD < 1000))",
        ),
        ("countries", "NAME_ALT <> '' OR LABELRANK <= 2"),
        ("countries", "FORMAL_FR = NULL"),
        ("countries", "POP_RANK BETWEEN 'a' AND 'z'"),
    ];
    for (layer, text) in filters {
        let f = attr(text);
        let features = &data.iter().find(|(l, _)| l == layer).unwrap().1;
        let rust = ids(features, |x| f.matches(&x.as_ref()));
        let sql =
            attribute_to_sql(&f, Dialect::Sqlite, 2).unwrap_or_else(|e| panic!("{text}: {e}"));
        let query = format!(
            "SELECT id FROM features WHERE layer = ?1 AND ({})",
            sql.clause
        );
        let mut stmt = db
            .prepare(&query)
            .unwrap_or_else(|e| panic!("{text}: {e}\n{query}"));
        let mut params: Vec<rusqlite::types::Value> =
            vec![rusqlite::types::Value::Text(layer.to_string())];
        params.extend(sql.params.iter().map(|p| match p {
            SqlParam::Text(s) => rusqlite::types::Value::Text(s.clone()),
            SqlParam::Float(v) => rusqlite::types::Value::Real(*v),
            SqlParam::Int(v) => rusqlite::types::Value::Integer(*v),
            SqlParam::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
        }));
        let got: BTreeSet<String> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(0)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, rust, "{layer}: {text}\n{}", sql.clause);
        println!("{layer:<9} {:>6} rows  {text}", rust.len());
    }
}
