//! Filters for geostream subscriptions and queries.
//!
//! A [`Filter`] combines up to three parts with AND:
//!
//! * [`SpatialFilter`]: a bbox, a polygon, or a point and a radius in metres;
//! * [`TemporalFilter`]: an interval (OGC API Features `datetime`) the feature's own time
//!   must intersect;
//! * [`AttributeFilter`]: a CQL2 expression (text or JSON), parsed by the `cql2` crate and
//!   compiled into a small tree that evaluates without allocating.
//!
//! [`sql::attribute_to_sql`] turns an attribute filter into a parameterized `WHERE` clause
//! for PostgreSQL/PostGIS or SQLite that gives the same answers as
//! [`AttributeFilter::matches`].
//!
//! # Semantics
//!
//! **Missing and null properties follow SQL's three-valued logic.** A missing property and
//! a JSON `null` are both NULL. A comparison, `LIKE`, `BETWEEN`, `IN`, arithmetic or temporal
//! relation involving NULL is *unknown*; `NOT unknown` is unknown; `unknown AND false` is
//! false and `unknown OR true` is true. A feature matches only when the whole filter is
//! TRUE. So both `speed > 10` and `NOT (speed > 10)` reject a feature without `speed`,
//! while `speed IS NULL` accepts it. This is what SQL does with `properties->>'speed'`, and
//! what cql2's own `reduce` does, so the Rust, SQL and cql2 answers agree.
//!
//! **Types are strict.** A comparison between different kinds of value (number, string,
//! boolean, timestamp) is unknown, like a NULL: `speed > 10` is unknown when `speed` is
//! `"fast"`. Strings compare by code point (PostgreSQL uses `COLLATE "C"` to agree).
//! Property names are exact keys: `a.b` is the key `"a.b"`, not a path.
//!
//! **Times** are RFC 3339 strings, `YYYY-MM-DD` or `YYYY-MM-DD(T| )HH:MM:SS[.fff][Z|±HH:MM]`
//! (no offset means UTC), held to the millisecond (further digits are truncated). A date
//! names its whole day where a span is meant (the feature's `datetime`, the temporal
//! filter, the operands of `T_*` relations) and its midnight where an instant is meant
//! (comparisons with `TIMESTAMP()`/`DATE()`, `INTERVAL` bounds). A feature's time is its
//! `datetime` property, or else the span `start_datetime`..`end_datetime` (either may be
//! missing: open end). A feature without a time never matches a [`TemporalFilter`].
//!
//! **Geometry.** Polygons and boxes are tested in the plane of longitude/latitude (as
//! GeoJSON and PostGIS `geometry` do); circles on a sphere of radius 6,371,008.8 m
//! (haversine). A bbox with `minx > maxx` crosses the antimeridian (RFC 7946 5.2) and is
//! supported everywhere: `SpatialFilter::bbox` then covers all longitudes and
//! `SpatialFilter::covering_boxes` gives the two halves. Polygons themselves are not split at
//! the antimeridian.
//!
//! # CQL2 coverage
//!
//! Supported: `AND`, `OR`, `NOT`; `=`, `<>`, `<`, `<=`, `>`, `>=` on numbers, strings,
//! booleans and timestamps; `LIKE` (`%`, `_`, `\` escapes; case-sensitive) and `NOT LIKE`;
//! `BETWEEN`; `IN`; `IS [NOT] NULL`; arithmetic `+ - * / % ^ div` (division by zero is
//! NULL); `CASEI()` and `ACCENTI()`; `TIMESTAMP()`, `DATE()`, `INTERVAL()` (bounds may be
//! `'..'` or properties) with all fifteen `T_*` relations; `S_INTERSECTS`, `S_DISJOINT`,
//! `S_CONTAINS`, `S_WITHIN`, `S_EQUALS`, `S_TOUCHES`, `S_OVERLAPS`, `S_CROSSES` between the
//! feature geometry (property `geometry`) and a WKT, GeoJSON or `BBOX()` literal; a bare
//! boolean property as a condition. Not supported (a [`FilterError`] at parse time): the
//! array operators `A_*`, custom functions, LIKE with a non-literal pattern, spatial
//! predicates on other properties or between two properties.
//!
//! Intended differences from cql2's `reduce`: a type mismatch is unknown in every operator
//! (cql2 orders mismatched `BETWEEN` operands by variant); division by zero is NULL (cql2
//! gives an infinity); dotted property names are not paths; `CASEI` lower-cases per
//! character (no final-sigma rule); `ACCENTI` compares the decomposed form; `DATE()` in a
//! comparison is its midnight instant; a date-valued property in a `T_*` relation is its
//! whole day (cql2 makes it a day only beside a `DATE()`, and otherwise its midnight).

#![warn(missing_docs)]

mod attr;
mod error;
mod spatial;
pub mod sql;
mod time;

use geo::Geometry;
use serde_json::{Map, Value};

pub use attr::AttributeFilter;
pub use error::{FilterError, Result};
pub use spatial::{
    EARTH_RADIUS_M, SpatialFilter, bbox_halves, boxes_overlap, haversine_m, point_in_box,
};
pub use time::{TemporalFilter, parse_datetime_ms};

/// A borrowed view of a feature: everything a filter reads, nothing it would copy.
#[derive(Debug, Clone, Copy)]
pub struct FeatureRef<'a> {
    /// The feature id, if any (filters do not read it; it is here for callers' convenience).
    pub id: Option<&'a Value>,
    /// The geometry; `None` for a feature without one, which no spatial test matches.
    pub geometry: Option<&'a Geometry<f64>>,
    /// The geometry's bounding box if the caller already has it. Spatial predicates use it
    /// to reject far-away features early, so it must cover the geometry when given.
    pub bbox: Option<[f64; 4]>,
    /// The feature's `properties` object.
    pub properties: &'a Map<String, Value>,
}

impl<'a> FeatureRef<'a> {
    /// A feature with properties only.
    pub fn new(properties: &'a Map<String, Value>) -> Self {
        Self {
            id: None,
            geometry: None,
            bbox: None,
            properties,
        }
    }

    /// The same feature with a geometry.
    pub fn with_geometry(self, geometry: &'a Geometry<f64>) -> Self {
        Self {
            geometry: Some(geometry),
            ..self
        }
    }
}

/// Complexity limits enforced when a filter is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most expression nodes a CQL2 filter may have. Default 200.
    pub max_nodes: usize,
    /// Deepest nesting of a CQL2 filter. Default 32.
    pub max_depth: usize,
    /// Most vertices in a polygon filter or in all geometry literals of one CQL2 literal.
    /// Default 10,000.
    pub max_vertices: usize,
    /// Longest CQL2 input in bytes (text, or JSON given as text). Default 1 MiB.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_nodes: 200,
            max_depth: 32,
            max_vertices: 10_000,
            max_text_bytes: 1 << 20,
        }
    }
}

/// A complete subscription or query filter: every part present must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Where.
    pub spatial: Option<SpatialFilter>,
    /// When.
    pub temporal: Option<TemporalFilter>,
    /// What (CQL2).
    pub attribute: Option<AttributeFilter>,
}

impl Filter {
    /// Whether the feature passes every part. An empty filter matches everything.
    pub fn matches(&self, f: &FeatureRef<'_>) -> bool {
        // Cheapest first: box and circle tests are a few float operations, a polygon test
        // walks every edge, so it goes last.
        let polygon = matches!(self.spatial, Some(SpatialFilter::Polygon(_)));
        if !polygon && !self.spatial_matches(f) {
            return false;
        }
        if let Some(t) = &self.temporal
            && !t.matches(f.properties)
        {
            return false;
        }
        if let Some(a) = &self.attribute
            && !a.matches(f)
        {
            return false;
        }
        !polygon || self.spatial_matches(f)
    }

    fn spatial_matches(&self, f: &FeatureRef<'_>) -> bool {
        match (&self.spatial, f.geometry) {
            (None, _) => true,
            // The feature's box (covering its geometry) far from the filter's: no walk of the
            // geometry's vertices.
            (Some(SpatialFilter::BBox(b)), Some(_))
                if f.bbox.is_some_and(|fb| spatial::bboxes_disjoint(*b, fb)) =>
            {
                false
            }
            (Some(s), Some(g)) => s.intersects(g),
            (Some(_), None) => false,
        }
    }

    /// A box (`minx <= maxx`) covering everything the filter can match, for an R-tree:
    /// the spatial part's box, or else the box of a spatial predicate the CQL2 part
    /// requires. `None` when the filter is not bounded in space.
    pub fn bbox(&self) -> Option<[f64; 4]> {
        match &self.spatial {
            Some(s) => Some(s.bbox()),
            None => self.attribute.as_ref().and_then(AttributeFilter::bbox),
        }
    }

    /// The box, when the filter is exactly one box (`minx <= maxx`) and nothing else: then a
    /// point matches it exactly when [`point_in_box`] says so, and an index holding the box
    /// can decide without the filter.
    pub fn plain_box(&self) -> Option<[f64; 4]> {
        match (&self.spatial, &self.temporal, &self.attribute) {
            (Some(SpatialFilter::BBox(b)), None, None) if b[0] <= b[2] => Some(*b),
            _ => None,
        }
    }

    /// Whether the filter has no part at all (matches everything).
    pub fn is_empty(&self) -> bool {
        self.spatial.is_none() && self.temporal.is_none() && self.attribute.is_none()
    }
}
