//! Spatial filters: bounding box, polygon and great-circle radius, plus the GeoJSON reader
//! and sphere geometry they share with the CQL2 spatial predicates.

use geo::{
    BoundingRect, Coord, Geometry, Intersects, LineString, MultiPolygon, Point, Polygon, Rect,
};
use serde_json::Value;

use crate::Limits;
use crate::error::{FilterError, Result};

/// Mean Earth radius in metres (IUGG), the radius the haversine distances use.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The region part of a subscription or query.
///
/// Coordinates are WGS84 longitude/latitude in degrees. Polygons are tested in the plane of
/// longitude/latitude (as GeoJSON and PostGIS `geometry` do); circles on the sphere.
#[derive(Debug, Clone, PartialEq)]
pub enum SpatialFilter {
    /// `[minx, miny, maxx, maxy]`. `minx > maxx` is a box crossing the antimeridian, as
    /// RFC 7946 section 5.2 defines: it covers `minx..=180` and `-180..=maxx`.
    BBox([f64; 4]),
    /// An area; holes are honoured.
    Polygon(MultiPolygon<f64>),
    /// Everything within `radius_m` metres (great-circle distance) of `center` (`[lon, lat]`).
    Circle {
        /// `[lon, lat]` in degrees.
        center: [f64; 2],
        /// Radius in metres, 0 or more.
        radius_m: f64,
    },
}

impl SpatialFilter {
    /// Validates a GeoJSON-style bbox: 4 numbers, or 6 with the two elevations ignored.
    ///
    /// Latitudes must lie in -90..90 with `miny <= maxy`; longitudes in -180..180, where
    /// `minx > maxx` means the box crosses the antimeridian.
    pub fn from_bbox(b: &[f64]) -> Result<Self> {
        let b = match *b {
            [a, b, c, d] => [a, b, c, d],
            [a, b, _, d, e, _] => [a, b, d, e],
            _ => return Err(FilterError::BboxLength(b.len())),
        };
        check_bbox(b, "bbox")?;
        Ok(Self::BBox(b))
    }

    /// Reads a GeoJSON `Polygon` or `MultiPolygon` geometry object.
    ///
    /// Every ring must be closed and have at least 4 positions, every position must be a
    /// valid longitude/latitude, and the total vertex count must be within
    /// [`Limits::max_vertices`].
    pub fn from_geojson(value: &Value, limits: &Limits) -> Result<Self> {
        match geojson_to_geo(value, limits, "polygon")? {
            Geometry::Polygon(p) => Ok(Self::Polygon(MultiPolygon(vec![p]))),
            Geometry::MultiPolygon(mp) => Ok(Self::Polygon(mp)),
            other => Err(FilterError::InvalidGeometry(format!(
                "a spatial filter area must be a Polygon or MultiPolygon, not a {}",
                geometry_kind(&other)
            ))),
        }
    }

    /// Same as [`SpatialFilter::from_geojson`], from the `geojson` crate's type.
    pub fn from_geojson_geometry(g: &geojson::Geometry, limits: &Limits) -> Result<Self> {
        let value = serde_json::to_value(g)
            .map_err(|e| FilterError::InvalidGeometry(format!("cannot read GeoJSON: {e}")))?;
        Self::from_geojson(&value, limits)
    }

    /// A great-circle disc. The radius must be finite and not negative.
    pub fn circle(center: [f64; 2], radius_m: f64) -> Result<Self> {
        check_position(center[0], center[1], "circle centre")?;
        if !radius_m.is_finite() || radius_m < 0.0 {
            return Err(FilterError::InvalidRadius(radius_m));
        }
        Ok(Self::Circle { center, radius_m })
    }

    /// A box covering the whole filter with `minx <= maxx`, for an R-tree.
    ///
    /// Regions crossing the antimeridian get the full longitude range (`-180..180`) and
    /// circles reaching a pole the full longitude range up to that pole, so the box always
    /// covers the region. [`SpatialFilter::covering_boxes`] gives a tighter pair instead.
    pub fn bbox(&self) -> [f64; 4] {
        let boxes = self.covering_boxes();
        if boxes.len() == 1 {
            return boxes[0];
        }
        let miny = boxes.iter().map(|b| b[1]).fold(f64::INFINITY, f64::min);
        let maxy = boxes.iter().map(|b| b[3]).fold(f64::NEG_INFINITY, f64::max);
        [-180.0, miny, 180.0, maxy]
    }

    /// One box, or two when the region crosses the antimeridian (one each side), all with
    /// `minx <= maxx`. Index the filter under each.
    pub fn covering_boxes(&self) -> Vec<[f64; 4]> {
        match self {
            Self::BBox(b) => split_bbox(*b),
            Self::Polygon(mp) => match mp.bounding_rect() {
                Some(r) => vec![[r.min().x, r.min().y, r.max().x, r.max().y]],
                // An empty multipolygon matches nothing; a degenerate box keeps the index sane.
                None => vec![[0.0, 0.0, 0.0, 0.0]],
            },
            Self::Circle { center, radius_m } => circle_boxes(*center, *radius_m),
        }
    }

    /// Whether the geometry touches the region (boundaries included).
    pub fn intersects(&self, g: &Geometry<f64>) -> bool {
        match self {
            // Without `split_bbox`'s allocation: this runs for every candidate subscription of
            // every change routed.
            Self::BBox(b) => {
                let (first, second) = bbox_halves(*b);
                rect_hits(first, g) || second.is_some_and(|h| rect_hits(h, g))
            }
            Self::Polygon(mp) => mp.intersects(g),
            Self::Circle { center, radius_m } => {
                circle_hits_geometry(*center, radius_m / EARTH_RADIUS_M, g)
            }
        }
    }

    /// Whether the box `[minx, miny, maxx, maxy]` touches the region. A box with
    /// `minx > maxx` is read as crossing the antimeridian.
    pub fn intersects_bbox(&self, b: [f64; 4]) -> bool {
        let parts = split_bbox(b);
        match self {
            Self::BBox(own) => split_bbox(*own)
                .iter()
                .any(|o| parts.iter().any(|p| boxes_overlap(*o, *p))),
            Self::Polygon(mp) => parts.iter().any(|p| mp.intersects(&to_rect(*p))),
            Self::Circle { center, radius_m } => {
                let delta = radius_m / EARTH_RADIUS_M;
                parts.iter().any(|p| circle_hits_box(*center, delta, *p))
            }
        }
    }
}

pub(crate) fn check_position(lon: f64, lat: f64, what: &'static str) -> Result<()> {
    if !lon.is_finite() || !lat.is_finite() {
        return Err(FilterError::NotFinite(what));
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(FilterError::LatitudeOutOfRange { what, value: lat });
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(FilterError::LongitudeOutOfRange { what, value: lon });
    }
    Ok(())
}

pub(crate) fn check_bbox(b: [f64; 4], what: &'static str) -> Result<()> {
    check_position(b[0], b[1], what)?;
    check_position(b[2], b[3], what)?;
    if b[1] > b[3] {
        return Err(FilterError::BboxInverted {
            miny: b[1],
            maxy: b[3],
        });
    }
    Ok(())
}

/// A bbox as one or two boxes with `minx <= maxx` ([`bbox_halves`], in a list).
pub(crate) fn split_bbox(b: [f64; 4]) -> Vec<[f64; 4]> {
    let (first, second) = bbox_halves(b);
    std::iter::once(first).chain(second).collect()
}

/// Whether the point `(x, y)` is in the box `r` (`minx <= maxx`), boundary included: what
/// a box filter means for a point.
pub fn point_in_box(r: [f64; 4], x: f64, y: f64) -> bool {
    r[0] <= x && x <= r[2] && r[1] <= y && y <= r[3]
}

/// Whether `g` touches the box `r` (`minx <= maxx`), boundary included. A point, the
/// commonest geometry of moving objects, is four comparisons.
fn rect_hits(r: [f64; 4], g: &Geometry<f64>) -> bool {
    match g {
        Geometry::Point(p) => point_in_box(r, p.x(), p.y()),
        _ => to_rect(r).intersects(g),
    }
}

/// Whether two boxes (each `minx <= maxx`, or crossing the antimeridian) have no point in
/// common.
pub(crate) fn bboxes_disjoint(a: [f64; 4], b: [f64; 4]) -> bool {
    let (a1, a2) = bbox_halves(a);
    let (b1, b2) = bbox_halves(b);
    ![Some(a1), a2].into_iter().flatten().any(|x| {
        [Some(b1), b2]
            .into_iter()
            .flatten()
            .any(|y| boxes_overlap(x, y))
    })
}

/// A box `[minx, miny, maxx, maxy]` as one or two with `minx <= maxx`: a box crossing the
/// antimeridian (`minx > maxx`, RFC 7946 5.2) is cut there, its eastern part first. Without
/// allocating: stores and routing call it for every candidate.
pub fn bbox_halves(b: [f64; 4]) -> ([f64; 4], Option<[f64; 4]>) {
    if b[0] <= b[2] {
        (b, None)
    } else {
        ([b[0], b[1], 180.0, b[3]], Some([-180.0, b[1], b[2], b[3]]))
    }
}

pub(crate) fn to_rect(b: [f64; 4]) -> Rect<f64> {
    Rect::new(Coord { x: b[0], y: b[1] }, Coord { x: b[2], y: b[3] })
}

/// Whether two boxes, each with `minx <= maxx`, have a point in common (edges included).
pub fn boxes_overlap(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3]
}

pub(crate) fn geometry_kind(g: &Geometry<f64>) -> &'static str {
    match g {
        Geometry::Point(_) => "Point",
        Geometry::Line(_) => "Line",
        Geometry::LineString(_) => "LineString",
        Geometry::Polygon(_) => "Polygon",
        Geometry::MultiPoint(_) => "MultiPoint",
        Geometry::MultiLineString(_) => "MultiLineString",
        Geometry::MultiPolygon(_) => "MultiPolygon",
        Geometry::GeometryCollection(_) => "GeometryCollection",
        Geometry::Rect(_) => "Rect",
        Geometry::Triangle(_) => "Triangle",
    }
}

// ---------------------------------------------------------------------------------------------
// GeoJSON reading with validation.

/// Reads a GeoJSON geometry object into `geo`, refusing anything malformed, out of range or
/// larger than `limits.max_vertices`.
///
/// Written by hand rather than through the `geojson` crate because its conversion silently
/// closes open rings, and an unclosed ring is a client error we want to report.
pub(crate) fn geojson_to_geo(
    v: &Value,
    limits: &Limits,
    what: &'static str,
) -> Result<Geometry<f64>> {
    let mut reader = GeoJsonReader {
        limits,
        what,
        vertices: 0,
    };
    reader.geometry(v, 0)
}

struct GeoJsonReader<'l> {
    limits: &'l Limits,
    what: &'static str,
    vertices: usize,
}

fn bad(msg: impl Into<String>) -> FilterError {
    FilterError::InvalidGeometry(msg.into())
}

impl GeoJsonReader<'_> {
    fn geometry(&mut self, v: &Value, depth: usize) -> Result<Geometry<f64>> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("a GeoJSON geometry must be an object"))?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("GeoJSON geometry has no \"type\" string"))?;
        if kind == "GeometryCollection" {
            // Nested collections are legal GeoJSON but discouraged; refusing them bounds the
            // recursion with a fixed, small depth.
            if depth > 0 {
                return Err(bad("nested GeometryCollection is not supported"));
            }
            let members = obj
                .get("geometries")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("GeometryCollection has no \"geometries\" array"))?;
            let mut out = Vec::with_capacity(members.len());
            for m in members {
                out.push(self.geometry(m, depth + 1)?);
            }
            return Ok(Geometry::GeometryCollection(geo::GeometryCollection(out)));
        }
        let coords = obj
            .get("coordinates")
            .ok_or_else(|| bad(format!("{kind} has no \"coordinates\"")))?;
        Ok(match kind {
            "Point" => Geometry::Point(Point(self.position(coords)?)),
            "MultiPoint" => Geometry::MultiPoint(geo::MultiPoint(
                self.array(coords, "MultiPoint")?
                    .iter()
                    .map(|p| self.position(p).map(Point))
                    .collect::<Result<_>>()?,
            )),
            "LineString" => Geometry::LineString(self.line(coords)?),
            "MultiLineString" => Geometry::MultiLineString(geo::MultiLineString(
                self.array(coords, "MultiLineString")?
                    .iter()
                    .map(|l| self.line(l))
                    .collect::<Result<_>>()?,
            )),
            "Polygon" => Geometry::Polygon(self.polygon(coords, None)?),
            "MultiPolygon" => Geometry::MultiPolygon(MultiPolygon(
                self.array(coords, "MultiPolygon")?
                    .iter()
                    .enumerate()
                    .map(|(i, p)| self.polygon(p, Some(i)))
                    .collect::<Result<_>>()?,
            )),
            other => return Err(bad(format!("unknown GeoJSON geometry type \"{other}\""))),
        })
    }

    fn array<'v>(&self, v: &'v Value, what: &str) -> Result<&'v Vec<Value>> {
        v.as_array()
            .ok_or_else(|| bad(format!("{what} coordinates must be an array")))
    }

    fn position(&mut self, v: &Value) -> Result<Coord<f64>> {
        let a = v
            .as_array()
            .ok_or_else(|| bad("a position must be an array of numbers"))?;
        if a.len() < 2 {
            return Err(bad(format!(
                "a position needs at least 2 numbers; got {}",
                a.len()
            )));
        }
        let x = a[0]
            .as_f64()
            .ok_or_else(|| bad("a position must be an array of numbers"))?;
        let y = a[1]
            .as_f64()
            .ok_or_else(|| bad("a position must be an array of numbers"))?;
        check_position(x, y, self.what)?;
        self.vertices += 1;
        if self.vertices > self.limits.max_vertices {
            return Err(FilterError::TooManyVertices {
                count: self.vertices,
                max: self.limits.max_vertices,
            });
        }
        Ok(Coord { x, y })
    }

    fn line(&mut self, v: &Value) -> Result<LineString<f64>> {
        let pts = self
            .array(v, "LineString")?
            .iter()
            .map(|p| self.position(p))
            .collect::<Result<Vec<_>>>()?;
        if pts.len() < 2 {
            return Err(bad(format!(
                "a LineString needs at least 2 positions; got {}",
                pts.len()
            )));
        }
        Ok(LineString(pts))
    }

    fn polygon(&mut self, v: &Value, index: Option<usize>) -> Result<Polygon<f64>> {
        let place = |ring: usize| match index {
            Some(p) => format!("polygon {p} ring {ring}"),
            None => format!("polygon ring {ring}"),
        };
        let rings = self.array(v, "Polygon")?;
        if rings.is_empty() {
            return Err(bad(format!(
                "{} is missing: a polygon needs an exterior ring",
                place(0)
            )));
        }
        let mut out = Vec::with_capacity(rings.len());
        for (i, r) in rings.iter().enumerate() {
            let pts = self
                .array(r, "a polygon ring")?
                .iter()
                .map(|p| self.position(p))
                .collect::<Result<Vec<_>>>()?;
            if pts.len() < 4 {
                return Err(bad(format!(
                    "{} has {} positions; a closed ring needs at least 4",
                    place(i),
                    pts.len()
                )));
            }
            let (first, last) = (pts[0], pts[pts.len() - 1]);
            if first != last {
                return Err(bad(format!(
                    "{} is not closed: first position [{}, {}] differs from last [{}, {}]",
                    place(i),
                    first.x,
                    first.y,
                    last.x,
                    last.y
                )));
            }
            out.push(LineString(pts));
        }
        let exterior = out.remove(0);
        Ok(Polygon::new(exterior, out))
    }
}

// ---------------------------------------------------------------------------------------------
// Sphere geometry. Angles in radians; `delta` is a radius as an angle (metres / Earth radius).

type V3 = [f64; 3];

fn unit(lon: f64, lat: f64) -> V3 {
    let (lon, lat) = (lon.to_radians(), lat.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}

/// Angle between two unit vectors; atan2 keeps it accurate for tiny and near-antipodal angles.
fn angle(a: V3, b: V3) -> f64 {
    norm(cross(a, b)).atan2(dot(a, b))
}

/// Great-circle distance between two lon/lat points, in radians (haversine formula).
pub(crate) fn haversine_angle(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (phi1, phi2) = (a[1].to_radians(), b[1].to_radians());
    let dphi = phi2 - phi1;
    let dlambda = (b[0] - a[0]).to_radians();
    let h = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * h.sqrt().min(1.0).asin()
}

/// Great-circle distance in metres between two lon/lat points.
pub fn haversine_m(a: [f64; 2], b: [f64; 2]) -> f64 {
    haversine_angle(a, b) * EARTH_RADIUS_M
}

/// Angular distance from `p` to the shorter great-circle arc from `a` to `b`.
fn angle_to_arc(p: V3, a: V3, b: V3) -> f64 {
    let n = cross(a, b);
    let len = norm(n);
    let ends = angle(p, a).min(angle(p, b));
    if len < 1e-15 {
        return ends; // a and b coincide (or are antipodal: no unique arc)
    }
    let n = [n[0] / len, n[1] / len, n[2] / len];
    // Project p onto the arc's plane; the foot lies on the arc when it sits between a and b.
    let t = cross(n, cross(p, n));
    if norm(t) < 1e-15 {
        return ends; // p is a pole of the great circle: every point of it is 90 degrees away
    }
    if dot(cross(a, t), n) >= 0.0 && dot(cross(t, b), n) >= 0.0 {
        angle(p, t).min(ends)
    } else {
        ends
    }
}

fn circle_hits_line(c: V3, delta: f64, coords: &[Coord<f64>]) -> bool {
    match coords {
        [] => false,
        [only] => angle(c, unit(only.x, only.y)) <= delta,
        _ => coords
            .windows(2)
            .any(|w| angle_to_arc(c, unit(w[0].x, w[0].y), unit(w[1].x, w[1].y)) <= delta),
    }
}

fn circle_hits_polygon(center: [f64; 2], c: V3, delta: f64, p: &Polygon<f64>) -> bool {
    // Containment is planar (the polygon's edges are straight in lon/lat, as in GeoJSON),
    // the distance to the boundary is on the sphere.
    p.intersects(&Point::new(center[0], center[1]))
        || circle_hits_line(c, delta, &p.exterior().0)
        || p.interiors()
            .iter()
            .any(|r| circle_hits_line(c, delta, &r.0))
}

pub(crate) fn circle_hits_geometry(center: [f64; 2], delta: f64, g: &Geometry<f64>) -> bool {
    let c = unit(center[0], center[1]);
    match g {
        Geometry::Point(p) => haversine_angle(center, [p.x(), p.y()]) <= delta,
        Geometry::MultiPoint(mp) => mp
            .iter()
            .any(|p| haversine_angle(center, [p.x(), p.y()]) <= delta),
        Geometry::Line(l) => circle_hits_line(c, delta, &[l.start, l.end]),
        Geometry::LineString(l) => circle_hits_line(c, delta, &l.0),
        Geometry::MultiLineString(ml) => ml.iter().any(|l| circle_hits_line(c, delta, &l.0)),
        Geometry::Polygon(p) => circle_hits_polygon(center, c, delta, p),
        Geometry::MultiPolygon(mp) => mp.iter().any(|p| circle_hits_polygon(center, c, delta, p)),
        Geometry::Rect(r) => circle_hits_polygon(center, c, delta, &r.to_polygon()),
        Geometry::Triangle(t) => circle_hits_polygon(center, c, delta, &t.to_polygon()),
        Geometry::GeometryCollection(gc) => {
            gc.iter().any(|g| circle_hits_geometry(center, delta, g))
        }
    }
}

/// Whether a great-circle disc touches a box with `minx <= maxx`.
///
/// For a fixed latitude the distance grows with the longitude difference, so the nearest
/// point of the box is on the meridian through the centre when that meridian crosses the
/// box, and otherwise on the nearer of the two side meridians.
fn circle_hits_box(center: [f64; 2], delta: f64, b: [f64; 4]) -> bool {
    let [lon, lat] = center;
    let inside_lon = b[0] <= lon && lon <= b[2];
    if inside_lon {
        let nearest_lat = lat.clamp(b[1], b[3]);
        return (lat - nearest_lat).abs().to_radians() <= delta;
    }
    [b[0], b[2]]
        .iter()
        .any(|&edge| angle_to_meridian_segment(center, edge, b[1], b[3]) <= delta)
}

/// Angular distance from a point to the meridian `lon` between latitudes `lat0..=lat1`.
///
/// Along the meridian, cos(distance) = A sin(phi) + B cos(phi), a sinusoid in phi; its
/// extremes on the segment are at the ends or at the stationary point phi0.
fn angle_to_meridian_segment(p: [f64; 2], lon: f64, lat0: f64, lat1: f64) -> f64 {
    let phi_p = p[1].to_radians();
    let dl = (p[0] - lon).to_radians();
    let phi0 = phi_p.sin().atan2(phi_p.cos() * dl.cos()).to_degrees();
    let mut best = haversine_angle(p, [lon, lat0]).min(haversine_angle(p, [lon, lat1]));
    if lat0 <= phi0 && phi0 <= lat1 {
        best = best.min(haversine_angle(p, [lon, phi0]));
    }
    best
}

fn circle_boxes(center: [f64; 2], radius_m: f64) -> Vec<[f64; 4]> {
    let delta = (radius_m / EARTH_RADIUS_M).to_degrees();
    let [lon, lat] = center;
    if delta >= 180.0 {
        return vec![[-180.0, -90.0, 180.0, 90.0]];
    }
    let (south, north) = (lat - delta, lat + delta);
    if north >= 90.0 || south <= -90.0 {
        // The disc contains a pole, so it spans every longitude on that side.
        return vec![[-180.0, south.max(-90.0), 180.0, north.min(90.0)]];
    }
    // Widest longitude extent of a disc not containing a pole (reached at the tangent
    // meridians): sin(dlon) = sin(delta) / cos(lat). The pole test above keeps the ratio < 1.
    let ratio = (delta.to_radians().sin() / lat.to_radians().cos()).min(1.0);
    let dlon = ratio.asin().to_degrees();
    let (west, east) = (lon - dlon, lon + dlon);
    if west < -180.0 {
        vec![
            [west + 360.0, south, 180.0, north],
            [-180.0, south, east, north],
        ]
    } else if east > 180.0 {
        vec![
            [west, south, 180.0, north],
            [-180.0, south, east - 360.0, north],
        ]
    } else {
        vec![[west, south, east, north]]
    }
}

// ---------------------------------------------------------------------------------------------
// WKT output for the PostGIS translation.

/// Writes a geometry as WKT. Numbers use Rust's shortest round-trip formatting, so PostGIS
/// reads back exactly the same coordinates.
pub(crate) fn to_wkt(g: &Geometry<f64>) -> String {
    let mut s = String::new();
    write_wkt(g, &mut s);
    s
}

fn write_coords(cs: &[Coord<f64>], s: &mut String) {
    s.push('(');
    for (i, c) in cs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{} {}", c.x, c.y));
    }
    s.push(')');
}

fn write_polygon_body(p: &Polygon<f64>, s: &mut String) {
    s.push('(');
    write_coords(&p.exterior().0, s);
    for r in p.interiors() {
        s.push(',');
        write_coords(&r.0, s);
    }
    s.push(')');
}

fn write_wkt(g: &Geometry<f64>, s: &mut String) {
    match g {
        Geometry::Point(p) => {
            s.push_str("POINT");
            write_coords(&[p.0], s);
        }
        Geometry::Line(l) => {
            s.push_str("LINESTRING");
            write_coords(&[l.start, l.end], s);
        }
        Geometry::LineString(l) => {
            s.push_str("LINESTRING");
            write_coords(&l.0, s);
        }
        Geometry::Polygon(p) => {
            s.push_str("POLYGON");
            write_polygon_body(p, s);
        }
        Geometry::MultiPoint(mp) => {
            s.push_str("MULTIPOINT");
            let cs: Vec<Coord<f64>> = mp.iter().map(|p| p.0).collect();
            write_coords(&cs, s);
        }
        Geometry::MultiLineString(ml) => {
            s.push_str("MULTILINESTRING(");
            for (i, l) in ml.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_coords(&l.0, s);
            }
            s.push(')');
        }
        Geometry::MultiPolygon(mp) => {
            s.push_str("MULTIPOLYGON(");
            for (i, p) in mp.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_polygon_body(p, s);
            }
            s.push(')');
        }
        Geometry::Rect(r) => write_wkt(&Geometry::Polygon(r.to_polygon()), s),
        Geometry::Triangle(t) => write_wkt(&Geometry::Polygon(t.to_polygon()), s),
        Geometry::GeometryCollection(gc) => {
            s.push_str("GEOMETRYCOLLECTION(");
            for (i, g) in gc.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_wkt(g, s);
            }
            s.push(')');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pt(x: f64, y: f64) -> Geometry<f64> {
        Geometry::Point(Point::new(x, y))
    }

    #[test]
    fn bbox_validation_messages() {
        let e = SpatialFilter::from_bbox(&[0.0, 0.0, 10.0, 91.0]).unwrap_err();
        assert_eq!(e.to_string(), "bbox latitude 91 is outside -90..90");
        let e = SpatialFilter::from_bbox(&[-181.0, 0.0, 10.0, 10.0]).unwrap_err();
        assert_eq!(e.to_string(), "bbox longitude -181 is outside -180..180");
        let e = SpatialFilter::from_bbox(&[0.0, 20.0, 10.0, 10.0]).unwrap_err();
        assert_eq!(e.to_string(), "bbox miny 20 is greater than maxy 10");
        let e = SpatialFilter::from_bbox(&[0.0, 1.0, 2.0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bbox must have 4 numbers [minx, miny, maxx, maxy]; got 3"
        );
        assert!(SpatialFilter::from_bbox(&[0.0, f64::NAN, 1.0, 1.0]).is_err());
        assert_eq!(
            SpatialFilter::from_bbox(&[1.0, 2.0, -5.0, 3.0, 4.0, 9.0]).unwrap(),
            SpatialFilter::BBox([1.0, 2.0, 3.0, 4.0]),
            "a 3D bbox drops its elevations"
        );
    }

    #[test]
    fn bbox_crossing_the_antimeridian() {
        let f = SpatialFilter::from_bbox(&[170.0, -10.0, -170.0, 10.0]).unwrap();
        assert!(f.intersects(&pt(175.0, 0.0)));
        assert!(f.intersects(&pt(-175.0, 0.0)));
        assert!(f.intersects(&pt(180.0, 0.0)));
        assert!(!f.intersects(&pt(0.0, 0.0)));
        assert!(!f.intersects(&pt(175.0, 11.0)));
        assert_eq!(f.bbox(), [-180.0, -10.0, 180.0, 10.0]);
        assert_eq!(f.covering_boxes().len(), 2);
        assert!(f.intersects_bbox([-172.0, -1.0, -160.0, 1.0]));
        assert!(!f.intersects_bbox([-160.0, -1.0, 160.0, 1.0]));
        assert!(f.intersects_bbox([179.0, -1.0, -179.0, 1.0]), "both wrap");
    }

    #[test]
    fn polygon_from_geojson() {
        let limits = Limits::default();
        let square = json!({"type": "Polygon", "coordinates": [[[0,0],[10,0],[10,10],[0,10],[0,0]],
            [[4,4],[6,4],[6,6],[4,6],[4,4]]]});
        let f = SpatialFilter::from_geojson(&square, &limits).unwrap();
        assert!(f.intersects(&pt(2.0, 2.0)));
        assert!(!f.intersects(&pt(5.0, 5.0)), "inside the hole");
        assert!(f.intersects(&pt(10.0, 5.0)), "on the boundary");
        assert!(!f.intersects(&pt(11.0, 5.0)));
        assert_eq!(f.bbox(), [0.0, 0.0, 10.0, 10.0]);
        assert!(f.intersects_bbox([9.0, 9.0, 20.0, 20.0]));
        assert!(
            !f.intersects_bbox([4.5, 4.5, 5.5, 5.5]),
            "box inside the hole"
        );
    }

    #[test]
    fn polygon_errors() {
        let limits = Limits::default();
        let open = json!({"type": "Polygon", "coordinates": [[[0,0],[10,0],[10,10],[0,10]]]});
        assert_eq!(
            SpatialFilter::from_geojson(&open, &limits)
                .unwrap_err()
                .to_string(),
            "invalid geometry: polygon ring 0 is not closed: first position [0, 0] differs from last [0, 10]"
        );
        let short = json!({"type": "Polygon", "coordinates": [[[0,0],[10,0],[0,0]]]});
        assert!(
            SpatialFilter::from_geojson(&short, &limits)
                .unwrap_err()
                .to_string()
                .contains("at least 4")
        );
        let ring: Vec<Value> = (0..=20)
            .map(|i| {
                let a = f64::from(i) / 20.0 * std::f64::consts::TAU;
                if i == 20 {
                    json!([1.0, 0.0])
                } else {
                    json!([a.cos(), a.sin()])
                }
            })
            .collect();
        let big = json!({"type": "Polygon", "coordinates": [ring]});
        let small = Limits {
            max_vertices: 10,
            ..Limits::default()
        };
        assert_eq!(
            SpatialFilter::from_geojson(&big, &small)
                .unwrap_err()
                .to_string(),
            "geometry has 11 vertices; at most 10 allowed"
        );
        assert!(SpatialFilter::from_geojson(&big, &limits).is_ok());
        let line = json!({"type": "LineString", "coordinates": [[0,0],[1,1]]});
        assert!(
            SpatialFilter::from_geojson(&line, &limits)
                .unwrap_err()
                .to_string()
                .contains("not a LineString")
        );
        let lat = json!({"type": "Polygon", "coordinates": [[[0,0],[10,0],[10,95],[0,0]]]});
        assert_eq!(
            SpatialFilter::from_geojson(&lat, &limits)
                .unwrap_err()
                .to_string(),
            "polygon latitude 95 is outside -90..90"
        );
        assert!(SpatialFilter::from_geojson(&json!({"type": "Polygon"}), &limits).is_err());
        assert!(SpatialFilter::from_geojson(&json!([1, 2]), &limits).is_err());
    }

    #[test]
    fn circle_validation_and_points() {
        assert_eq!(
            SpatialFilter::circle([0.0, 0.0], -1.0)
                .unwrap_err()
                .to_string(),
            "circle radius -1 m is invalid: it must be a finite number of metres, 0 or more"
        );
        assert!(SpatialFilter::circle([0.0, 0.0], f64::INFINITY).is_err());
        assert!(SpatialFilter::circle([0.0, 95.0], 1.0).is_err());
        // One degree of latitude is about 111.195 km on this sphere.
        let f = SpatialFilter::circle([0.0, 0.0], 111_300.0).unwrap();
        assert!(f.intersects(&pt(0.0, 1.0)));
        assert!(!f.intersects(&pt(0.0, 1.01)));
        let exact = SpatialFilter::circle([5.0, 5.0], 0.0).unwrap();
        assert!(exact.intersects(&pt(5.0, 5.0)));
        assert!(!exact.intersects(&pt(5.0, 5.000001)));
        let d = haversine_m([-0.1278, 51.5074], [2.3522, 48.8566]);
        assert!((d - 343_923.0).abs() < 500.0, "London-Paris {d}");
    }

    #[test]
    fn circle_against_lines_and_polygons() {
        let f = SpatialFilter::circle([0.0, 1.0], 120_000.0).unwrap();
        // A line passing 1 degree south of the centre: its middle is in range, its ends are not.
        let line = Geometry::LineString(LineString::from(vec![(-10.0, 0.0), (10.0, 0.0)]));
        assert!(f.intersects(&line));
        let far = Geometry::LineString(LineString::from(vec![(-10.0, -1.0), (10.0, -1.0)]));
        assert!(!f.intersects(&far));
        // Centre inside a large polygon whose edges are all far away.
        let poly = Geometry::Polygon(Polygon::new(
            LineString::from(vec![
                (-20.0, -20.0),
                (20.0, -20.0),
                (20.0, 20.0),
                (-20.0, 20.0),
                (-20.0, -20.0),
            ]),
            vec![],
        ));
        assert!(f.intersects(&poly));
    }

    #[test]
    fn circle_covering_boxes() {
        // Crossing the antimeridian.
        let f = SpatialFilter::circle([179.5, 0.0], 200_000.0).unwrap();
        assert_eq!(f.bbox()[0], -180.0);
        assert_eq!(f.bbox()[2], 180.0);
        let boxes = f.covering_boxes();
        assert_eq!(boxes.len(), 2);
        assert!(f.intersects(&pt(-179.5, 0.0)));
        assert!(boxes.iter().any(|b| b[0] <= -179.5 && -179.5 <= b[2]));
        // Reaching the north pole: every longitude near the pole is covered.
        let f = SpatialFilter::circle([0.0, 89.0], 200_000.0).unwrap();
        let b = f.bbox();
        assert_eq!((b[0], b[2], b[3]), (-180.0, 180.0, 90.0));
        assert!(f.intersects(&pt(180.0, 89.5)));
        // Every point the circle matches must be inside the covering box (sampled).
        for (c, r) in [
            ([10.0, 60.0], 900_000.0),
            ([-179.9, -45.0], 50_000.0),
            ([0.0, -89.9], 1000.0),
        ] {
            let f = SpatialFilter::circle(c, r).unwrap();
            let boxes = f.covering_boxes();
            for i in 0..360 {
                for j in 0..180 {
                    let p = [f64::from(i) - 180.0 + 0.5, f64::from(j) - 90.0 + 0.5];
                    if f.intersects(&pt(p[0], p[1])) {
                        assert!(
                            boxes.iter().any(|b| b[0] <= p[0]
                                && p[0] <= b[2]
                                && b[1] <= p[1]
                                && p[1] <= b[3]),
                            "{p:?} matched but is outside {boxes:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn circle_against_boxes() {
        let f = SpatialFilter::circle([0.0, 0.0], 120_000.0).unwrap();
        assert!(f.intersects_bbox([-1.0, -1.0, 1.0, 1.0]), "centre inside");
        assert!(
            f.intersects_bbox([1.0, -5.0, 3.0, 5.0]),
            "side edge within reach"
        );
        assert!(!f.intersects_bbox([1.1, -5.0, 3.0, 5.0]));
        assert!(
            f.intersects_bbox([-5.0, 1.0, 5.0, 3.0]),
            "top edge within reach"
        );
        // Near the pole the nearest point of a side meridian is not at the centre's latitude.
        let polar = SpatialFilter::circle([0.0, 80.0], 700_000.0).unwrap();
        assert!(
            polar.intersects_bbox([90.0, 70.0, 100.0, 85.0]) == polar.intersects(&pt(90.0, 85.0))
                || polar.intersects_bbox([90.0, 70.0, 100.0, 85.0])
        );
        // Brute force against sampled box points.
        for b in [
            [30.0, 70.0, 60.0, 88.0],
            [-170.0, -60.0, -100.0, -50.0],
            [100.0, -10.0, 120.0, 10.0],
        ] {
            for (c, r) in [
                ([0.0, 80.0], 1_500_000.0),
                ([-140.0, -70.0], 900_000.0),
                ([90.0, 0.0], 1_300_000.0),
            ] {
                let f = SpatialFilter::circle(c, r).unwrap();
                let mut sampled = false;
                for i in 0..=100 {
                    for j in 0..=100 {
                        let x = b[0] + (b[2] - b[0]) * f64::from(i) / 100.0;
                        let y = b[1] + (b[3] - b[1]) * f64::from(j) / 100.0;
                        sampled |= f.intersects(&pt(x, y));
                    }
                }
                if sampled {
                    assert!(
                        f.intersects_bbox(b),
                        "{c:?} {r} misses {b:?} though a sample hit"
                    );
                }
            }
        }
    }

    #[test]
    fn wkt_output() {
        let g = geojson_to_geo(
            &json!({"type": "MultiPolygon", "coordinates": [[[[0,0],[1.5,0],[1,1],[0,0]]]]}),
            &Limits::default(),
            "test",
        )
        .unwrap();
        assert_eq!(to_wkt(&g), "MULTIPOLYGON(((0 0,1.5 0,1 1,0 0)))");
        assert_eq!(to_wkt(&pt(-1.25, 3.0)), "POINT(-1.25 3)");
    }

    proptest::proptest! {
        /// The allocation-free box test and the disjoint-box rejection agree with the plain
        /// `geo` test over the box's parts, for points (boundaries included: coordinates are
        /// drawn from a coarse grid so they land on edges often), lines and boxes crossing
        /// the antimeridian.
        #[test]
        fn box_fast_paths_agree_with_geo(
            b in (0i32..36, -9i32..9, 0i32..36, 0i32..9),
            p in (-36i32..36, -9i32..9),
            q in (-36i32..36, -9i32..9),
            line in proptest::bool::ANY,
        ) {
            let (x0, y0, x1, dy) = b;
            let bbox = [x0 as f64 * 5.0 - 90.0, y0 as f64 * 10.0, x1 as f64 * 5.0 - 90.0, (y0 + dy) as f64 * 10.0];
            let (px, py) = (p.0 as f64 * 5.0, p.1 as f64 * 10.0);
            let (qx, qy) = (q.0 as f64 * 5.0, q.1 as f64 * 10.0);
            let g = if line {
                Geometry::LineString(vec![(px, py), (qx, qy)].into())
            } else {
                pt(px, py)
            };
            let f = SpatialFilter::BBox(bbox);
            let plain = split_bbox(bbox).iter().any(|r| to_rect(*r).intersects(&g));
            proptest::prop_assert_eq!(f.intersects(&g), plain);
            let gb = if line {
                [px.min(qx), py.min(qy), px.max(qx), py.max(qy)]
            } else {
                [px, py, px, py]
            };
            let overlap = split_bbox(bbox).iter().any(|r| boxes_overlap(*r, gb));
            proptest::prop_assert_eq!(bboxes_disjoint(bbox, gb), !overlap);
            if bboxes_disjoint(bbox, gb) {
                proptest::prop_assert!(!plain, "disjoint boxes, yet the geometry touches");
            }
        }
    }
}
