//! Fuzz properties of the GeoJSON validator (`validate_geometry`, `validate_feature`,
//! `normalize_id`) and of `merge_patch`, against small reference implementations written
//! here from RFC 7946 and RFC 7396.
//!
//! Geometries get random types and nesting, positions of 0 to 4 members that may be out of
//! range, huge, strings (`"NaN"`), null or integers where floats were expected, rings that are
//! closed, closed with a different spelling of the same numbers, or not closed, and vertex
//! counts beyond the limit. Every property: no panic, accepted exactly when the reference
//! accepts, and a peak heap use proportional to the input.

mod fuzz_support;

use fuzz_support::{config, json_value, peak_alloc};
use geostream_core::feature::{
    FeatureLimits, merge_patch, normalize_id, validate_feature, validate_geometry,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const BASE: usize = 64 * 1024;

fn coordinate() -> impl Strategy<Value = Value> {
    prop_oneof![
        40 => (-180.0f64..=180.0).prop_map(|f| json!(f)),
        20 => (-180i64..=180).prop_map(|i| json!(i)),
        1 => proptest::sample::select(&[180.000_001, -90.5, 1e308, -1e308, 5e-324, 181.0, 1e20][..])
            .prop_map(|f| json!(f)),
        1 => prop_oneof![
            Just(json!("NaN")),
            Just(json!("Infinity")),
            Just(json!(null)),
            Just(json!("1")),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!([1])),
        ],
    ]
}

fn position() -> impl Strategy<Value = Value> {
    prop_oneof![
        60 => (coordinate(), prop_oneof![(-90.0f64..=90.0).prop_map(|f| json!(f)), (-90i64..=90).prop_map(|i| json!(i))])
            .prop_map(|(x, y)| json!([x, y])),
        4 => (coordinate(), (-90i64..=90).prop_map(|i| json!(i)), coordinate())
            .prop_map(|(x, y, z)| json!([x, y, z])),
        2 => (coordinate(), coordinate()).prop_map(|(x, y)| json!([x, y])),
        1 => proptest::collection::vec(coordinate(), 0..5).prop_map(Value::Array),
        1 => Just(json!(5)),
    ]
}

/// The same position, with its numbers spelled differently (integer vs float) when exact.
fn respell(p: &Value) -> Value {
    match p {
        Value::Array(xs) => Value::Array(
            xs.iter()
                .map(|x| match x.as_f64() {
                    Some(f) if x.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
                    Some(f) if !x.is_f64() && f.abs() < 1e15 => json!(f),
                    _ => x.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn line(min: usize) -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => proptest::collection::vec(position(), min..12),
        1 => proptest::collection::vec(position(), 0..min.max(1)),
    ]
    .prop_map(Value::Array)
}

fn ring() -> impl Strategy<Value = Value> {
    (proptest::collection::vec(position(), 2..10), 0u8..6).prop_map(|(mut ps, close)| {
        match close {
            0 | 1 => ps.push(ps[0].clone()),
            2 | 3 => ps.push(respell(&ps[0])),
            // Not closed, or too short to be a ring.
            4 => {}
            _ => ps.truncate(2),
        }
        Value::Array(ps)
    })
}

fn polygon() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => proptest::collection::vec(ring(), 1..3),
        1 => Just(Vec::new()),
    ]
    .prop_map(Value::Array)
}

fn simple_geometry() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => position().prop_map(|c| json!({"type": "Point", "coordinates": c})),
        2 => proptest::collection::vec(position(), 0..6)
            .prop_map(|c| json!({"type": "MultiPoint", "coordinates": c})),
        3 => line(2).prop_map(|c| json!({"type": "LineString", "coordinates": c})),
        2 => proptest::collection::vec(line(2), 0..3)
            .prop_map(|c| json!({"type": "MultiLineString", "coordinates": c})),
        3 => polygon().prop_map(|c| json!({"type": "Polygon", "coordinates": c})),
        2 => proptest::collection::vec(polygon(), 0..3)
            .prop_map(|c| json!({"type": "MultiPolygon", "coordinates": c})),
        // Wrong nesting for the type, unknown types, missing members.
        1 => (proptest::sample::select(&["Point", "LineString", "Polygon", "MultiPolygon", "Circle", "point"][..]), json_value(4, 16))
            .prop_map(|(t, c)| json!({"type": t, "coordinates": c})),
        1 => Just(json!({"type": "Point"})),
        1 => json_value(3, 12),
    ]
}

fn geometry() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => simple_geometry(),
        2 => proptest::collection::vec(simple_geometry(), 0..4)
            .prop_map(|gs| json!({"type": "GeometryCollection", "geometries": gs})),
        1 => proptest::collection::vec(simple_geometry(), 0..2).prop_map(|gs| json!({
            "type": "GeometryCollection",
            "geometries": [{"type": "GeometryCollection", "geometries": gs}]
        })),
    ]
}

fn limits() -> impl Strategy<Value = FeatureLimits> {
    (
        prop_oneof![Just(100_000usize), 1usize..20],
        0usize..200,
        1usize..64,
    )
        .prop_map(|(v, p, i)| FeatureLimits {
            max_vertices: v,
            max_property_bytes: p,
            max_id_bytes: i,
        })
}

// ---------------------------------------------------------------------------------------------
// Reference validator (RFC 7946 plus geostream's limits), written for clarity, not speed.

struct Reference<'l> {
    limits: &'l FeatureLimits,
    positions: Vec<[f64; 2]>,
}

impl Reference<'_> {
    fn numbers(p: &Value) -> Option<Vec<f64>> {
        let xs = p.as_array()?;
        if !(2..=3).contains(&xs.len()) {
            return None;
        }
        xs.iter()
            .map(|x| x.as_f64().filter(|f| f.is_finite()))
            .collect()
    }

    fn position(&mut self, p: &Value) -> bool {
        let Some(n) = Self::numbers(p) else {
            return false;
        };
        if !(-180.0..=180.0).contains(&n[0]) || !(-90.0..=90.0).contains(&n[1]) {
            return false;
        }
        self.positions.push([n[0], n[1]]);
        true
    }

    fn positions(&mut self, c: &Value, min: usize) -> bool {
        c.as_array()
            .is_some_and(|ps| ps.len() >= min && ps.iter().all(|p| self.position(p)))
    }

    fn ring(&mut self, r: &Value) -> bool {
        let Some(ps) = r.as_array() else {
            return false;
        };
        // "The first and last positions are equivalent, and they MUST contain identical
        // values" (RFC 7946 3.1.6): the same numbers, however they are written.
        ps.len() >= 4
            && Self::numbers(&ps[0]).is_some()
            && Self::numbers(&ps[0]) == Self::numbers(&ps[ps.len() - 1])
            && self.positions(r, 4)
    }

    fn polygon(&mut self, c: &Value) -> bool {
        c.as_array()
            .is_some_and(|rs| !rs.is_empty() && rs.iter().all(|r| self.ring(r)))
    }

    fn geometry(&mut self, g: &Value, nested: bool) -> bool {
        let Some(t) = g.get("type").and_then(Value::as_str) else {
            return false;
        };
        if t == "GeometryCollection" {
            return !nested
                && g.get("geometries")
                    .and_then(Value::as_array)
                    .is_some_and(|gs| gs.iter().all(|g| self.geometry(g, true)));
        }
        let Some(c) = g.get("coordinates") else {
            return false;
        };
        let each = |c: &Value, f: &mut dyn FnMut(&Value) -> bool| {
            c.as_array().is_some_and(|xs| xs.iter().all(f))
        };
        match t {
            "Point" => self.position(c),
            "MultiPoint" => self.positions(c, 0),
            "LineString" => self.positions(c, 2),
            "MultiLineString" => each(c, &mut |l| self.positions(l, 2)),
            "Polygon" => self.polygon(c),
            "MultiPolygon" => each(c, &mut |p| self.polygon(p)),
            _ => false,
        }
    }

    fn accepts(g: &Value, limits: &FeatureLimits) -> Option<Vec<[f64; 2]>> {
        let mut r = Reference {
            limits,
            positions: Vec::new(),
        };
        let ok = g.is_object() && r.geometry(g, false);
        (ok && r.positions.len() <= r.limits.max_vertices).then_some(r.positions)
    }
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).unwrap().len()
}

fn check_geometry(g: &Value, limits: &FeatureLimits) -> Result<(), TestCaseError> {
    let (r, peak) = peak_alloc(|| validate_geometry(g, limits));
    let len = json_len(g);
    prop_assert!(
        peak <= BASE + 64 * len,
        "{peak} bytes for {len} bytes of JSON"
    );
    let expected = Reference::accepts(g, limits);
    match (&r, expected) {
        (Ok((_, bbox)), Some(positions)) => {
            for p in &positions {
                prop_assert!(
                    bbox[0] <= p[0] && p[0] <= bbox[2] && bbox[1] <= p[1] && p[1] <= bbox[3],
                    "{p:?} outside {bbox:?}"
                );
            }
            if positions.is_empty() {
                prop_assert_eq!(*bbox, [0.0; 4]);
            }
        }
        (Err(e), None) => {
            prop_assert!(!e.0.is_empty());
            prop_assert!(e.0.len() <= 512, "{} byte message", e.0.len());
        }
        (Ok(_), None) => prop_assert!(false, "accepted {g}"),
        (Err(e), Some(_)) => prop_assert!(false, "refused {g}: {e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1500))]

    /// Random geometries: accepted exactly when RFC 7946 (and the vertex limit) accepts them,
    /// with a bbox covering every position.
    #[test]
    fn geometries(g in geometry(), limits in limits()) {
        check_geometry(&g, &limits)?;
    }

    /// Random features: type, id, geometry and properties each valid or not.
    #[test]
    fn features(
        kind in prop_oneof![4 => Just(json!("Feature")), 1 => json_value(1, 2)],
        id in prop_oneof![
            2 => Just(None),
            2 => "\\PC{0,70}".prop_map(|s| Some(json!(s))),
            1 => ".{0,5}".prop_map(|s| Some(json!(s))),
            1 => any::<i64>().prop_map(|i| Some(json!(i))),
            1 => any::<u64>().prop_map(|i| Some(json!(i))),
            1 => json_value(2, 4).prop_map(Some),
        ],
        geometry in proptest::option::of(geometry()),
        properties in proptest::option::of(json_value(3, 24)),
        limits in limits(),
    ) {
        let mut f = Map::new();
        f.insert("type".into(), kind.clone());
        if let Some(id) = &id {
            f.insert("id".into(), id.clone());
        }
        if let Some(g) = &geometry {
            f.insert("geometry".into(), g.clone());
        }
        if let Some(p) = &properties {
            f.insert("properties".into(), p.clone());
        }
        let f = Value::Object(f);
        let (r, peak) = peak_alloc(|| validate_feature(&f, &limits));
        let len = json_len(&f);
        prop_assert!(peak <= BASE + 64 * len, "{peak} bytes for {len} bytes of JSON");
        let id_ok = match &id {
            None | Some(Value::Null) => Some(None),
            Some(v) => {
                let s = match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
                    _ => None,
                };
                s.filter(|s| !s.is_empty() && s.len() <= limits.max_id_bytes && !s.chars().any(char::is_control))
                    .map(Some)
            }
        };
        let geometry_ok = match &geometry {
            None | Some(Value::Null) => true,
            Some(g) => Reference::accepts(g, &limits).is_some(),
        };
        let properties_ok = match &properties {
            None | Some(Value::Null) => true,
            Some(p @ Value::Object(_)) => json_len(p) <= limits.max_property_bytes,
            Some(_) => false,
        };
        let expected = kind == json!("Feature") && id_ok.is_some() && geometry_ok && properties_ok;
        match r {
            Ok(v) => {
                prop_assert!(expected, "accepted {f}");
                prop_assert_eq!(v.id, id_ok.flatten());
                prop_assert_eq!(v.geometry.is_some(), geometry.as_ref().is_some_and(|g| !g.is_null()));
            }
            Err(e) => prop_assert!(!expected, "refused {f}: {e}"),
        }
        if let Some(id) = &id {
            let (_, peak) = peak_alloc(|| normalize_id(id, &limits).is_ok());
            prop_assert!(peak <= BASE + 2 * json_len(id));
        }
    }

    /// RFC 7396 merge patches on random documents, against the RFC's own pseudo-code.
    #[test]
    fn merge_patches(target in json_value(4, 32), patch in json_value(4, 32)) {
        fn reference(target: &Value, patch: &Value) -> Value {
            let Value::Object(p) = patch else {
                return patch.clone();
            };
            let mut t = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    let merged = reference(t.get(k).unwrap_or(&Value::Null), v);
                    t.insert(k.clone(), merged);
                }
            }
            Value::Object(t)
        }
        let (Value::Object(t), Value::Object(p)) = (&target, &patch) else {
            return Ok(());
        };
        let mut merged = t.clone();
        let changed = merge_patch(&mut merged, p);
        let expected = reference(&target, &patch);
        prop_assert_eq!(&Value::Object(merged.clone()), &expected);
        let mut really: Vec<String> = p.keys().filter(|k| t.get(*k) != merged.get(*k)).cloned().collect();
        let mut changed = changed;
        changed.sort();
        really.sort();
        prop_assert_eq!(changed, really);
    }
}

proptest! {
    #![proptest_config(config(20))]

    /// Vertex counts around and far beyond the limit (the default: 100,000): refused as soon
    /// as the count passes the limit, in memory proportional to the input.
    #[test]
    fn huge_vertex_counts(
        n in prop_oneof![99_990usize..100_010, 100_010usize..250_000],
        kind in 0u8..3,
    ) {
        let limits = FeatureLimits::default();
        let pts: Vec<Value> = (0..n).map(|i| json!([(i % 360) as f64 - 180.0, 0.5])).collect();
        let g = match kind {
            0 => json!({"type": "LineString", "coordinates": pts}),
            1 => json!({"type": "MultiPoint", "coordinates": pts}),
            _ => {
                let mut ring = pts;
                ring.push(ring[0].clone());
                json!({"type": "Polygon", "coordinates": [ring]})
            }
        };
        let count = n + usize::from(kind == 2);
        let (r, peak) = peak_alloc(|| validate_geometry(&g, &limits).map(|_| ()));
        let len = json_len(&g);
        prop_assert!(peak <= BASE + 64 * len, "{peak} bytes for {len} bytes of JSON");
        prop_assert_eq!(r.is_ok(), count <= limits.max_vertices, "{} positions", count);
    }
}

/// Regression (found by `geometries`): a ring closed with the same numbers spelled differently
/// (`[0, 0]` ... `[0.0, 0.0]`) was refused as "not closed".
#[test]
fn rings_closed_with_a_different_spelling_are_closed() {
    let g = json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0.0, 0.0]]]});
    assert!(validate_geometry(&g, &FeatureLimits::default()).is_ok());
    let open = json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0.0, 0.5]]]});
    assert!(validate_geometry(&open, &FeatureLimits::default()).is_err());
    let z = json!({"type": "Polygon", "coordinates": [[[0, 0, 1], [1, 0], [1, 1], [0, 0, 2]]]});
    assert!(validate_geometry(&z, &FeatureLimits::default()).is_err());
}
