//! Layers' contents: GeoJSON features (RFC 7946) as geostream keeps them, their validation,
//! and the change records every accepted edit produces.
//!
//! A feature on the wire is a GeoJSON Feature with two foreign members the server keeps:
//! `version` (1 on creation, +1 per accepted edit) and `updated` (RFC 3339, UTC).
//! Ids are strings: a numeric id given by a client is kept as its decimal text, and a feature
//! created without an id gets a time-ordered one from the server.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A GeoJSON geometry (re-exported `geojson` type).
pub type Geometry = geojson::Geometry;

/// A bounding box `[min_lon, min_lat, max_lon, max_lat]`.
pub type BBox = [f64; 4];

/// A feature as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Feature {
    /// Always `"Feature"`.
    #[serde(rename = "type", default = "feature_type")]
    pub kind: FeatureType,
    /// The id, unique within its layer.
    pub id: String,
    /// The geometry (`null` is allowed by RFC 7946).
    #[cfg_attr(feature = "ts", ts(type = "Geometry | null"))]
    pub geometry: Option<Geometry>,
    /// Properties (never null here: an absent or null object is stored as `{}`).
    #[serde(default, deserialize_with = "null_as_empty")]
    #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
    pub properties: Map<String, Value>,
    /// Server-kept version: 1 when created, +1 per edit.
    #[serde(default)]
    pub version: u64,
    /// When the feature last changed, RFC 3339 UTC with milliseconds.
    #[serde(default)]
    pub updated: String,
}

/// The GeoJSON object type tag of a [`Feature`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum FeatureType {
    /// `"Feature"`.
    #[default]
    Feature,
}

fn feature_type() -> FeatureType {
    FeatureType::Feature
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

impl Feature {
    /// The bounding box of the geometry (`None` without geometry).
    pub fn bbox(&self) -> Option<BBox> {
        self.geometry.as_ref().and_then(geometry_bbox)
    }
}

/// A feature as a client sends it: the id is optional and may be a number, `version` and
/// `updated` are ignored (the server sets them).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureInput {
    /// Must be `"Feature"` when present.
    #[serde(rename = "type", default)]
    #[cfg_attr(feature = "ts", ts(type = "\"Feature\"", optional))]
    pub kind: Option<String>,
    /// A string or number id; absent to let the server choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "string | number"))]
    pub id: Option<Value>,
    /// The geometry.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(type = "Geometry | null", optional = false))]
    pub geometry: Option<Value>,
    /// The properties.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown> | null", optional))]
    pub properties: Option<Value>,
}

/// Limits that validation applies.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct FeatureLimits {
    /// Most positions in one geometry. Default 100,000.
    pub max_vertices: usize,
    /// Largest `properties` object, in bytes of JSON. Default 65,536.
    pub max_property_bytes: usize,
    /// Longest id, in bytes. Default 256.
    pub max_id_bytes: usize,
}

impl Default for FeatureLimits {
    fn default() -> Self {
        FeatureLimits {
            max_vertices: 100_000,
            max_property_bytes: 64 * 1024,
            max_id_bytes: 256,
        }
    }
}

/// Why a feature or geometry was refused; the message says exactly what and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidFeature(pub String);

fn invalid<T>(m: impl Into<String>) -> Result<T, InvalidFeature> {
    Err(InvalidFeature(m.into()))
}

/// Normalizes a client-given id: strings as they are, integers as decimal text.
pub fn normalize_id(id: &Value, limits: &FeatureLimits) -> Result<String, InvalidFeature> {
    let s = match id {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(_) => return invalid("id: a numeric id must be an integer"),
        other => {
            return invalid(format!(
                "id: must be a string or an integer, not {}",
                json_type(other)
            ));
        }
    };
    if s.is_empty() || s.len() > limits.max_id_bytes {
        return invalid(format!(
            "id: must be 1 to {} bytes long",
            limits.max_id_bytes
        ));
    }
    if s.chars().any(char::is_control) {
        return invalid("id: must not contain control characters");
    }
    Ok(s)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates a geometry given as JSON and returns it with its bounding box.
///
/// Checks: a known type with the right nesting of `coordinates`, positions of 2 or 3 finite
/// numbers, longitude in -180..=180 and latitude in -90..=90, at least 2 positions per
/// LineString, closed rings of at least 4 positions, at most `max_vertices` positions, and
/// GeometryCollections not nested. The message names the place of the first problem.
pub fn validate_geometry(
    v: &Value,
    limits: &FeatureLimits,
) -> Result<(Geometry, BBox), InvalidFeature> {
    let mut count = 0usize;
    let mut bbox = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    check_geometry(v, "geometry", limits, &mut count, &mut bbox, 0)?;
    // Read from the borrowed value: a copy of the whole tree only to be consumed would cost
    // an allocation per coordinate.
    let g = Geometry::deserialize(v).map_err(|e| InvalidFeature(format!("geometry: {e}")))?;
    if count == 0 {
        // An empty collection or empty multi-geometry: valid GeoJSON, no extent.
        return Ok((g, [0.0, 0.0, 0.0, 0.0]));
    }
    Ok((g, bbox))
}

fn check_geometry(
    v: &Value,
    at: &str,
    limits: &FeatureLimits,
    count: &mut usize,
    bbox: &mut BBox,
    depth: usize,
) -> Result<(), InvalidFeature> {
    let Value::Object(o) = v else {
        return invalid(format!("{at}: must be an object, not {}", json_type(v)));
    };
    let Some(Value::String(t)) = o.get("type") else {
        return invalid(format!("{at}: \"type\" is missing"));
    };
    if t == "GeometryCollection" {
        if depth > 0 {
            return invalid(format!("{at}: nested GeometryCollections are not accepted"));
        }
        let Some(Value::Array(gs)) = o.get("geometries") else {
            return invalid(format!("{at}: \"geometries\" must be an array"));
        };
        for (i, g) in gs.iter().enumerate() {
            check_geometry(
                g,
                &format!("{at}.geometries[{i}]"),
                limits,
                count,
                bbox,
                depth + 1,
            )?;
        }
        return Ok(());
    }
    let depth_of = match t.as_str() {
        "Point" => 0,
        "MultiPoint" | "LineString" => 1,
        "MultiLineString" | "Polygon" => 2,
        "MultiPolygon" => 3,
        other => return invalid(format!("{at}: unknown geometry type {other:?}")),
    };
    let Some(c) = o.get("coordinates") else {
        return invalid(format!("{at}: \"coordinates\" is missing"));
    };
    let at = format!("{at}.coordinates");
    check_coords(c, &at, depth_of, t, limits, count, bbox)
}

fn check_coords(
    c: &Value,
    at: &str,
    depth: usize,
    t: &str,
    limits: &FeatureLimits,
    count: &mut usize,
    bbox: &mut BBox,
) -> Result<(), InvalidFeature> {
    let Value::Array(a) = c else {
        return invalid(format!("{at}: must be an array"));
    };
    if depth == 0 {
        return check_position(a, at, limits, count, bbox);
    }
    match (t, depth) {
        ("LineString", 1) | ("MultiLineString", 1) if a.len() < 2 => {
            return invalid(format!(
                "{at}: a LineString needs at least 2 positions, has {}",
                a.len()
            ));
        }
        ("Polygon", 1) | ("MultiPolygon", 1) => {
            if a.len() < 4 {
                return invalid(format!(
                    "{at}: a linear ring needs at least 4 positions, has {}",
                    a.len()
                ));
            }
            if !same_position(&a[0], &a[a.len() - 1]) {
                return invalid(format!(
                    "{at}: the ring is not closed (first and last positions differ)"
                ));
            }
        }
        ("Polygon", 2) | ("MultiPolygon", 2) if a.is_empty() => {
            return invalid(format!("{at}: a Polygon needs at least one ring"));
        }
        _ => {}
    }
    for (i, x) in a.iter().enumerate() {
        check_coords(x, &format!("{at}[{i}]"), depth - 1, t, limits, count, bbox)?;
    }
    Ok(())
}

/// Whether two positions hold the same numbers (RFC 7946 3.1.6: "identical values"), however
/// they are written: `[0, 0]` closes a ring that starts at `[0.0, 0.0]`. Positions that are not
/// arrays of numbers are compared as JSON (and refused later anyway).
fn same_position(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| match (p.as_f64(), q.as_f64()) {
                        (Some(p), Some(q)) => p == q,
                        _ => p == q,
                    })
        }
        _ => a == b,
    }
}

fn check_position(
    a: &[Value],
    at: &str,
    limits: &FeatureLimits,
    count: &mut usize,
    bbox: &mut BBox,
) -> Result<(), InvalidFeature> {
    if a.len() < 2 || a.len() > 3 {
        return invalid(format!(
            "{at}: a position has 2 or 3 numbers, not {}",
            a.len()
        ));
    }
    let mut n = [0.0f64; 2];
    for (i, x) in a.iter().enumerate() {
        let Some(f) = x.as_f64().filter(|f| f.is_finite()) else {
            return invalid(format!("{at}[{i}]: must be a finite number"));
        };
        if i < 2 {
            n[i] = f;
        }
    }
    if !(-180.0..=180.0).contains(&n[0]) {
        return invalid(format!("{at}: longitude {} is outside -180..180", n[0]));
    }
    if !(-90.0..=90.0).contains(&n[1]) {
        return invalid(format!("{at}: latitude {} is outside -90..90", n[1]));
    }
    *count += 1;
    if *count > limits.max_vertices {
        return invalid(format!(
            "geometry: more than {} positions",
            limits.max_vertices
        ));
    }
    bbox[0] = bbox[0].min(n[0]);
    bbox[1] = bbox[1].min(n[1]);
    bbox[2] = bbox[2].max(n[0]);
    bbox[3] = bbox[3].max(n[1]);
    Ok(())
}

/// The length of `v` as compact JSON, counted without building the text (`usize::MAX` if it
/// cannot be written).
pub fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

/// Validates properties: an object (or null, meaning `{}`) no larger than the limit.
pub fn validate_properties(
    v: Option<&Value>,
    limits: &FeatureLimits,
) -> Result<Map<String, Value>, InvalidFeature> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            let n = json_len(m);
            if n > limits.max_property_bytes {
                return invalid(format!(
                    "properties: {n} bytes of JSON; at most {} are allowed",
                    limits.max_property_bytes
                ));
            }
            Ok(m.clone())
        }
        Some(other) => invalid(format!(
            "properties: must be an object or null, not {}",
            json_type(other)
        )),
    }
}

/// A validated feature ready to be written: id (if given), geometry, bbox and properties.
/// Serializable so that a node can hand a write to the node that writes its layer; such a
/// copy is trusted as validated by the node that made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidFeature {
    /// The normalized id, if the client gave one.
    pub id: Option<String>,
    /// The geometry, if any.
    pub geometry: Option<Geometry>,
    /// Its bounding box.
    pub bbox: Option<BBox>,
    /// The properties.
    pub properties: Map<String, Value>,
}

/// Validates a whole feature as a client sent it.
pub fn validate_feature(v: &Value, limits: &FeatureLimits) -> Result<ValidFeature, InvalidFeature> {
    let Value::Object(o) = v else {
        return invalid(format!(
            "feature: must be a GeoJSON Feature object, not {}",
            json_type(v)
        ));
    };
    match o.get("type") {
        Some(Value::String(t)) if t == "Feature" => {}
        Some(Value::String(t)) => return invalid(format!("type: must be \"Feature\", not {t:?}")),
        _ => return invalid("type: must be \"Feature\""),
    }
    let id = match o.get("id") {
        None | Some(Value::Null) => None,
        Some(id) => Some(normalize_id(id, limits)?),
    };
    let (geometry, bbox) = match o.get("geometry") {
        None | Some(Value::Null) => (None, None),
        Some(g) => {
            let (g, b) = validate_geometry(g, limits)?;
            (Some(g), Some(b))
        }
    };
    let properties = validate_properties(o.get("properties"), limits)?;
    Ok(ValidFeature {
        id,
        geometry,
        bbox,
        properties,
    })
}

/// The bounding box of a geometry, `None` when it has no positions.
pub fn geometry_bbox(g: &Geometry) -> Option<BBox> {
    use geojson::Value as G;
    fn add(b: &mut BBox, p: &[f64]) {
        if p.len() >= 2 {
            b[0] = b[0].min(p[0]);
            b[1] = b[1].min(p[1]);
            b[2] = b[2].max(p[0]);
            b[3] = b[3].max(p[1]);
        }
    }
    fn walk(v: &G, b: &mut BBox) {
        match v {
            G::Point(p) => add(b, p),
            G::MultiPoint(ps) | G::LineString(ps) => ps.iter().for_each(|p| add(b, p)),
            G::MultiLineString(ls) | G::Polygon(ls) => ls.iter().flatten().for_each(|p| add(b, p)),
            G::MultiPolygon(pss) => pss.iter().flatten().flatten().for_each(|p| add(b, p)),
            G::GeometryCollection(gs) => gs.iter().for_each(|g| walk(&g.value, b)),
        }
    }
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    walk(&g.value, &mut b);
    b[0].is_finite().then_some(b)
}

/// Applies a JSON Merge Patch (RFC 7396) to `target`; returns the names of the top-level
/// properties that changed.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Vec<String> {
    fn merge(t: &mut Value, p: &Value) {
        match p {
            Value::Object(pm) => {
                if !t.is_object() {
                    *t = Value::Object(Map::new());
                }
                if let Value::Object(tm) = t {
                    for (k, v) in pm {
                        if v.is_null() {
                            tm.remove(k);
                        } else {
                            merge(tm.entry(k.clone()).or_insert(Value::Null), v);
                        }
                    }
                }
            }
            other => *t = other.clone(),
        }
    }
    let mut changed = Vec::new();
    for (k, v) in patch {
        let before = target.get(k).cloned();
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
        if target.get(k) != before.as_ref() {
            changed.push(k.clone());
        }
    }
    changed
}

/// The top-level properties whose values differ between two property objects (including
/// ones present in only one of them), in a stable order.
pub fn changed_properties(old: &Map<String, Value>, new: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    // Property maps keep insertion order (the workspace enables serde_json's
    // `preserve_order`), so sort to make the change log independent of it.
    out.sort_unstable();
    out
}

/// What an accepted edit did to a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// Created.
    Insert,
    /// Replaced or patched.
    Update,
    /// Deleted.
    Delete,
}

impl fmt::Display for ChangeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        })
    }
}

/// One entry of a layer's change log: what changed, with the feature before and after, so
/// every subscriber's filter can be evaluated on both sides (enter / update / exit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The layer.
    pub layer: String,
    /// Position in the layer's change log: gap-free, starting at 1.
    pub seq: u64,
    /// What happened.
    pub op: ChangeOp,
    /// The feature id.
    pub id: String,
    /// The feature's version after the change (for a delete: the deleted version + 1).
    pub version: u64,
    /// The feature before (absent for an insert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Feature>,
    /// The feature after (absent for a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Feature>,
    /// Bounding box before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_bbox: Option<BBox>,
    /// Bounding box after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_bbox: Option<BBox>,
    /// Top-level properties that changed (all of them for an insert or delete).
    #[serde(default)]
    pub changed: Vec<String>,
    /// Whether the geometry changed.
    #[serde(default)]
    pub geometry_changed: bool,
    /// Who made the change (the token's subject), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The client's operation id, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC (`2026-11-23T19:00:00.123Z`).
pub fn format_time_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let millis = ms % 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), valid for the whole u64 millisecond range we use.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l() -> FeatureLimits {
        FeatureLimits::default()
    }

    #[test]
    fn valid_features() {
        let f = validate_feature(
            &json!({"type":"Feature","id":42,"geometry":{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,5],[0,0]]]},"properties":{"a":1}}),
            &l(),
        )
        .unwrap();
        assert_eq!(f.id.as_deref(), Some("42"));
        assert_eq!(f.bbox, Some([0.0, 0.0, 10.0, 5.0]));
        let f = validate_feature(
            &json!({"type":"Feature","geometry":null,"properties":null}),
            &l(),
        )
        .unwrap();
        assert!(f.id.is_none() && f.geometry.is_none() && f.properties.is_empty());
        let gc = json!({"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2,3]},{"type":"LineString","coordinates":[[0,0],[1,1]]}]});
        assert_eq!(
            validate_geometry(&gc, &l()).unwrap().1,
            [0.0, 0.0, 1.0, 2.0]
        );
    }

    #[test]
    fn invalid_features_say_what_and_where() {
        let cases = [
            (
                json!({"type":"Point","coordinates":[181,0]}),
                "longitude 181",
            ),
            (json!({"type":"Point","coordinates":[0,91]}), "latitude 91"),
            (json!({"type":"Point","coordinates":[0]}), "2 or 3 numbers"),
            (
                json!({"type":"Point","coordinates":["a",0]}),
                "finite number",
            ),
            (
                json!({"type":"LineString","coordinates":[[0,0]]}),
                "at least 2 positions",
            ),
            (
                json!({"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}),
                "not closed",
            ),
            (
                json!({"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}),
                "at least 4 positions",
            ),
            (
                json!({"type":"Circle","coordinates":[0,0]}),
                "unknown geometry type",
            ),
            (json!({"type":"Point"}), "coordinates\" is missing"),
            (
                json!({"type":"GeometryCollection","geometries":[{"type":"GeometryCollection","geometries":[]}]}),
                "nested",
            ),
            (
                json!({"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],[[[0,0],[1,0],[1,1],[9,9]]]]}),
                "coordinates[1][0]",
            ),
        ];
        for (g, needle) in cases {
            let e = validate_geometry(&g, &l()).unwrap_err().0;
            assert!(e.contains(needle), "{g}: {e}");
        }
        let big = json!({"type":"LineString","coordinates": (0..20).map(|i| json!([i, 0])).collect::<Vec<_>>()});
        assert!(
            validate_geometry(
                &big,
                &FeatureLimits {
                    max_vertices: 10,
                    ..l()
                }
            )
            .unwrap_err()
            .0
            .contains("more than 10")
        );
        assert!(
            validate_feature(&json!({"type":"Feature","id":1.5,"geometry":null}), &l())
                .unwrap_err()
                .0
                .contains("integer")
        );
        assert!(validate_feature(&json!({"type":"FeatureCollection"}), &l()).is_err());
        assert!(
            validate_feature(&json!({"type":"Feature","properties":[1]}), &l())
                .unwrap_err()
                .0
                .contains("properties")
        );
        let big = json!({"type":"Feature","properties":{"x":"y".repeat(100)}});
        assert!(
            validate_feature(
                &big,
                &FeatureLimits {
                    max_property_bytes: 50,
                    ..l()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut t = json!({"a":"b","c":{"d":"e","f":"g"}})
            .as_object()
            .unwrap()
            .clone();
        let changed = merge_patch(
            &mut t,
            json!({"a":"z","c":{"f":null},"n":null,"x":1})
                .as_object()
                .unwrap(),
        );
        assert_eq!(Value::Object(t), json!({"a":"z","c":{"d":"e"},"x":1}));
        assert_eq!(changed, vec!["a", "c", "x"]);
    }

    #[test]
    fn changed_properties_lists_both_sides() {
        let a = json!({"x":1,"y":2,"z":3}).as_object().unwrap().clone();
        let b = json!({"x":1,"y":5,"w":0}).as_object().unwrap().clone();
        assert_eq!(
            changed_properties(&a, &b),
            vec!["w", "y", "z"],
            "keys in sorted order, whatever the map order"
        );
    }

    #[test]
    fn times() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time_ms(1_593_476_532_123),
            "2020-06-30T00:22:12.123Z"
        );
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn features_serialize_as_geojson() {
        let f = Feature {
            kind: FeatureType::Feature,
            id: "a".into(),
            geometry: Some(
                serde_json::from_value(json!({"type":"Point","coordinates":[1.5,2.0]})).unwrap(),
            ),
            properties: Map::new(),
            version: 3,
            updated: format_time_ms(0),
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            json!({"type":"Feature","id":"a","geometry":{"type":"Point","coordinates":[1.5,2.0]},"properties":{},"version":3,"updated":"1970-01-01T00:00:00.000Z"})
        );
        assert_eq!(serde_json::from_value::<Feature>(v).unwrap(), f);
        let mp = rmp_serde::to_vec_named(&f).unwrap();
        assert_eq!(rmp_serde::from_slice::<Feature>(&mp).unwrap(), f);
    }
}
