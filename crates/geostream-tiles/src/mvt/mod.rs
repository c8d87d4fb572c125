//! Mapbox Vector Tile 2.1 encoding of one layer of lon/lat features.
//!
//! Pipeline per feature: quick reject by bounding box → (paths crossing the
//! antimeridian: longitudes unwrapped, one copy per world side) → project to tile
//! pixels → clip to the tile plus its buffer → simplify (Douglas–Peucker,
//! one tile unit) → round to the integer grid → drop degenerate parts → fix
//! ring winding → command-encode. Output is deterministic: the same features
//! and options always give the same bytes (keys and values are numbered in
//! first-seen order, no hash map is ever iterated), because tiles are ETag'ed
//! and diffed between versions.
//!
//! A tile holding several layers is the concatenation of single-layer tiles
//! (a protobuf repeated field may be split across the message), so callers
//! can encode layers separately and join the bytes.

mod geom;
mod kept;
mod pbf;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use geo::{BoundingRect, Geometry, LineString, Polygon};
use serde_json::{Map, Value};

use crate::{Result, TileError, TileId};
use geom::{ClipRect, IP, P, Projector};
use kept::DrawKey;
pub use kept::KeptFeature;

/// Nested geometry collections deeper than this are ignored rather than
/// recursed into, so hostile input cannot exhaust the stack.
const MAX_COLLECTION_DEPTH: usize = 8;

/// Largest extent accepted: 2^20 units per tile keeps every buffered tile
/// coordinate and delta far inside the 32-bit range the format allows.
const MAX_EXTENT: u32 = 1 << 20;

/// MVT command ids (spec 4.3.1).
const CMD_MOVE_TO: u32 = 1;
const CMD_LINE_TO: u32 = 2;
const CMD_CLOSE_PATH: u32 = 7;
/// Largest count one command integer can carry (29 bits).
const MAX_COMMAND_COUNT: usize = (1 << 29) - 1;

/// MVT geometry types (spec 4.3.4).
const GEOM_POINT: u64 = 1;
const GEOM_LINESTRING: u64 = 2;
const GEOM_POLYGON: u64 = 3;

/// A feature id. MVT ids are unsigned 64-bit integers; a string id cannot go
/// there and is written as a property named `id` instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FeatureId {
    /// Numeric id, written to the feature's `id` field.
    Int(u64),
    /// String id, written as the property `id` (replacing any property of
    /// that name).
    Str(String),
}

/// One input feature: WGS84 lon/lat geometry and its properties.
#[derive(Debug, Clone, PartialEq)]
pub struct TileFeature {
    /// Optional id.
    pub id: Option<FeatureId>,
    /// Geometry in lon/lat degrees. Latitudes beyond ±85.0511° are clamped.
    pub geometry: Geometry<f64>,
    /// Properties. `null` values are left out (MVT has no null); objects and
    /// arrays are written as their JSON text.
    pub properties: Map<String, Value>,
}

impl TileFeature {
    /// About how many bytes the feature holds in memory: 16 a vertex, and its id and
    /// properties' strings, numbers and containers at their usual sizes. For budgets (a cache
    /// of decoded features), not accounting to the byte.
    pub fn approx_bytes(&self) -> usize {
        fn value(v: &Value) -> usize {
            match v {
                Value::String(s) => 24 + s.len(),
                Value::Array(a) => 24 + a.iter().map(|x| 8 + value(x)).sum::<usize>(),
                Value::Object(m) => map(m),
                _ => 16,
            }
        }
        fn map(m: &Map<String, Value>) -> usize {
            48 + m
                .iter()
                .map(|(k, v)| 48 + k.len() + value(v))
                .sum::<usize>()
        }
        let id = match &self.id {
            Some(FeatureId::Str(s)) => s.len(),
            _ => 0,
        };
        std::mem::size_of::<TileFeature>()
            + id
            + 16 * geo::CoordsIter::coords_count(&self.geometry)
            + map(&self.properties)
    }
}

/// Encoder settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MvtOptions {
    /// Tile units per tile side. Default 4096.
    pub extent: u32,
    /// Tile units kept around the tile so that lines and polygon edges render
    /// seamlessly across tile borders. Default 64.
    pub buffer: u32,
    /// Douglas–Peucker simplification with a tolerance of one tile unit (so
    /// it adapts to the zoom level). Points are never simplified. Default on.
    pub simplify: bool,
    /// Keep at most this many features (the first ones in input order that
    /// have geometry in the tile). Default 50,000.
    pub max_features: usize,
}

impl Default for MvtOptions {
    fn default() -> Self {
        Self {
            extent: 4096,
            buffer: 64,
            simplify: true,
            max_features: 50_000,
        }
    }
}

/// The result of [`encode_tile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedTile {
    /// The tile. Empty (zero bytes, a valid tile with no layers) when no
    /// feature has geometry in the tile.
    pub bytes: Vec<u8>,
    /// MVT features written. A geometry collection may add up to three (one
    /// per geometry kind).
    pub features: usize,
    /// Input features left out because of `max_features`: those after the
    /// cap whose bounding box touches the buffered tile (counted without
    /// clipping them, to keep the cap cheap).
    pub dropped: usize,
}

/// Encodes `features` (owned or shared, e.g. `Arc<TileFeature>`) as the layer `layer` of tile
/// `tile`.
pub fn encode_tile(
    tile: TileId,
    layer: &str,
    features: &[impl Borrow<TileFeature>],
    opts: &MvtOptions,
) -> Result<EncodedTile> {
    let inputs: Vec<Input<'_>> = features.iter().map(|f| Input::Plain(f.borrow())).collect();
    encode_inputs(tile, layer, &inputs, opts, None)
}

/// Like [`encode_tile`], but numbers keys and values the way `previous` (an
/// earlier version of the same tile, e.g. from the cache) did, so that a
/// delta between the two versions stays small.
///
/// Why: with plain first-seen numbering, an edit that introduces a new value
/// (say a street renamed to a name no other feature has yet, while the old
/// name is still used elsewhere) shifts the index of every value seen after
/// it, which rewrites the tags of every later feature. Here values still in
/// use keep their old index and new ones go at the end. Entries of the
/// previous tables that are no longer used stay as unreferenced fillers;
/// once they exceed an eighth of a table (at least 8), the tile is numbered
/// afresh, exactly as [`encode_tile`] would. If `previous` is not a readable
/// tile or lacks the layer, this is [`encode_tile`].
///
/// Still deterministic: the output depends only on the features, the options
/// and `previous`.
pub fn encode_tile_like(
    tile: TileId,
    layer: &str,
    features: &[impl Borrow<TileFeature>],
    opts: &MvtOptions,
    previous: &[u8],
) -> Result<EncodedTile> {
    let inputs: Vec<Input<'_>> = features.iter().map(|f| Input::Plain(f.borrow())).collect();
    encode_inputs(tile, layer, &inputs, opts, Some(previous))
}

/// [`encode_tile_like`] (or [`encode_tile`] without `previous`) for features kept between
/// renders: each feature is drawn in this tile only the first time, later renders take its
/// kept drawing. The bytes are those the plain functions give for the same features.
pub fn encode_kept(
    tile: TileId,
    layer: &str,
    features: &[impl Borrow<KeptFeature>],
    opts: &MvtOptions,
    previous: Option<&[u8]>,
) -> Result<EncodedTile> {
    let inputs: Vec<Input<'_>> = features.iter().map(|f| Input::Kept(f.borrow())).collect();
    encode_inputs(tile, layer, &inputs, opts, previous)
}

/// A feature as the encoder reads it.
enum Input<'a> {
    /// Drawn on every render.
    Plain(&'a TileFeature),
    /// Drawn once per tile and options.
    Kept(&'a KeptFeature),
}

impl Input<'_> {
    fn feature(&self) -> &TileFeature {
        match self {
            Input::Plain(f) => f,
            Input::Kept(k) => k.feature(),
        }
    }

    fn drawing(&self, ctx: &Ctx) -> Arc<Drawing> {
        match self {
            Input::Plain(f) => Arc::new(ctx.draw(f)),
            Input::Kept(k) => k.drawing(ctx.key, || ctx.draw(k.feature())),
        }
    }
}

fn encode_inputs(
    tile: TileId,
    layer: &str,
    features: &[Input<'_>],
    opts: &MvtOptions,
    previous: Option<&[u8]>,
) -> Result<EncodedTile> {
    // Fresh tables have no unused entries, so the renumber flag is false.
    let fresh =
        || encode_with_tables(tile, layer, features, opts, Tables::default()).map(|(t, _)| t);
    let Some((keys, values)) = previous.and_then(|p| read_tables(p, layer)) else {
        return fresh();
    };
    let seeded = Tables::seeded(keys, values);
    match encode_with_tables(tile, layer, features, opts, seeded)? {
        (_, true) => fresh(),
        (t, false) => Ok(t),
    }
}

fn encode_with_tables(
    tile: TileId,
    layer: &str,
    features: &[Input<'_>],
    opts: &MvtOptions,
    mut tables: Tables,
) -> Result<(EncodedTile, bool)> {
    if opts.extent == 0 || opts.extent > MAX_EXTENT {
        return Err(TileError::InvalidOptions("extent must be in 1..=2^20"));
    }
    if opts.buffer > opts.extent {
        return Err(TileError::InvalidOptions("buffer larger than the extent"));
    }
    if layer.is_empty() {
        return Err(TileError::InvalidOptions("empty layer name"));
    }
    let ctx = Ctx {
        proj: Projector::new(tile.z(), tile.x(), tile.y(), opts.extent),
        rect: ClipRect::square(
            -f64::from(opts.buffer),
            f64::from(opts.extent) + f64::from(opts.buffer),
        ),
        tolerance: if opts.simplify { 1.0 } else { 0.0 },
        key: DrawKey::new(tile, opts),
    };

    let mut features_buf = Vec::new();
    let mut scratch = Vec::new();
    let mut tags = Vec::new();
    let mut written_inputs = 0usize;
    let mut written = 0usize;
    let mut dropped = 0usize;

    for input in features {
        if written_inputs >= opts.max_features {
            // Counted without drawing, to keep the cap cheap.
            if ctx.may_touch(&input.feature().geometry) {
                dropped += 1;
            }
            continue;
        }
        let drawing = input.drawing(&ctx);
        if drawing.is_empty() {
            continue;
        }
        let f = input.feature();
        written_inputs += 1;
        tables.tags_for(f, &mut tags);
        for (geom_type, cmds) in &drawing.parts {
            scratch.clear();
            if let Some(FeatureId::Int(id)) = &f.id {
                pbf::put_uint_field(&mut scratch, 1, *id);
            }
            pbf::put_packed_field(&mut scratch, 2, &tags);
            pbf::put_uint_field(&mut scratch, 3, *geom_type);
            pbf::put_packed_field(&mut scratch, 4, cmds);
            pbf::put_bytes_field(&mut features_buf, 2, &scratch);
            written += 1;
        }
    }

    if written == 0 {
        let empty = EncodedTile {
            bytes: Vec::new(),
            features: 0,
            dropped,
        };
        return Ok((empty, false));
    }
    if tables.too_many_fillers() {
        return Ok((
            EncodedTile {
                bytes: Vec::new(),
                features: 0,
                dropped,
            },
            true,
        ));
    }
    let mut layer_buf = Vec::with_capacity(features_buf.len() + 64 * tables.values.len());
    pbf::put_bytes_field(&mut layer_buf, 1, layer.as_bytes());
    layer_buf.extend_from_slice(&features_buf);
    for k in &tables.keys {
        pbf::put_bytes_field(&mut layer_buf, 3, k.as_bytes());
    }
    for v in &tables.values {
        scratch.clear();
        v.encode(&mut scratch);
        pbf::put_bytes_field(&mut layer_buf, 4, &scratch);
    }
    pbf::put_uint_field(&mut layer_buf, 5, u64::from(opts.extent));
    pbf::put_uint_field(&mut layer_buf, 15, 2);
    let mut bytes = Vec::with_capacity(layer_buf.len() + 8);
    pbf::put_bytes_field(&mut bytes, 3, &layer_buf);
    let encoded = EncodedTile {
        bytes,
        features: written,
        dropped,
    };
    Ok((encoded, false))
}

struct Ctx {
    proj: Projector,
    rect: ClipRect,
    tolerance: f64,
    /// What the drawings made with this context are kept under.
    key: DrawKey,
}

/// A feature drawn in one tile: its command streams, one per MVT geometry type it has there.
/// Empty when nothing of it falls in the tile (buffer included).
#[derive(Debug, Default, PartialEq, Eq)]
struct Drawing {
    parts: Vec<(u64, Vec<u32>)>,
}

impl Drawing {
    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Bytes of command words held.
    fn approx_bytes(&self) -> usize {
        self.parts.iter().map(|(_, c)| 4 * c.len()).sum()
    }
}

/// Tile-space parts of one input feature, grouped by MVT geometry type.
#[derive(Default)]
struct Parts {
    points: Vec<IP>,
    lines: Vec<Vec<IP>>,
    /// Rings in order: each exterior (positive area) followed by its holes.
    rings: Vec<Vec<IP>>,
}

impl Parts {
    /// Command streams, one per non-empty geometry type.
    fn encode(&self) -> Vec<(u64, Vec<u32>)> {
        let mut out = Vec::with_capacity(1);
        if !self.points.is_empty() {
            let mut buf = Vec::with_capacity(2 * self.points.len() + 1);
            let mut c = Cursor::default();
            for chunk in self.points.chunks(MAX_COMMAND_COUNT) {
                buf.push(command(CMD_MOVE_TO, chunk.len()));
                for &p in chunk {
                    c.push(&mut buf, p);
                }
            }
            out.push((GEOM_POINT, buf));
        }
        if !self.lines.is_empty() {
            let mut buf = Vec::new();
            let mut c = Cursor::default();
            for line in &self.lines {
                c.path(&mut buf, line);
            }
            out.push((GEOM_LINESTRING, buf));
        }
        if !self.rings.is_empty() {
            let mut buf = Vec::new();
            let mut c = Cursor::default();
            for ring in &self.rings {
                c.path(&mut buf, ring);
                buf.push(command(CMD_CLOSE_PATH, 1));
            }
            out.push((GEOM_POLYGON, buf));
        }
        out
    }
}

fn command(id: u32, count: usize) -> u32 {
    // Callers chunk by MAX_COMMAND_COUNT, so count fits in 29 bits.
    id | ((count as u32) << 3)
}

fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

/// The command encoder's cursor: parameters are deltas from the previous
/// point, across all parts of one feature (spec 4.3.2).
#[derive(Default)]
struct Cursor {
    x: i32,
    y: i32,
}

impl Cursor {
    fn push(&mut self, buf: &mut Vec<u32>, p: IP) {
        buf.push(zigzag32(p.0.wrapping_sub(self.x)));
        buf.push(zigzag32(p.1.wrapping_sub(self.y)));
        self.x = p.0;
        self.y = p.1;
    }

    /// MoveTo the first point, LineTo the rest.
    fn path(&mut self, buf: &mut Vec<u32>, pts: &[IP]) {
        let Some((first, rest)) = pts.split_first() else {
            return;
        };
        buf.push(command(CMD_MOVE_TO, 1));
        self.push(buf, *first);
        for chunk in rest.chunks(MAX_COMMAND_COUNT) {
            buf.push(command(CMD_LINE_TO, chunk.len()));
            for &p in chunk {
                self.push(buf, p);
            }
        }
    }
}

impl Ctx {
    /// `f` projected, clipped, simplified and command-encoded for this tile.
    fn draw(&self, f: &TileFeature) -> Drawing {
        if !self.may_touch(&f.geometry) {
            return Drawing::default();
        }
        let mut parts = Parts::default();
        self.add(&f.geometry, &mut parts, 0);
        Drawing {
            parts: parts.encode(),
        }
    }

    /// Cheap test on the lon/lat bounding box; `true` when unsure.
    fn may_touch(&self, g: &Geometry<f64>) -> bool {
        let Some(r) = g.bounding_rect() else {
            return false;
        };
        // Projection is monotonic: west→east is x up, north→south is y up.
        match (
            self.proj.project(r.min().x, r.max().y),
            self.proj.project(r.max().x, r.min().y),
        ) {
            (Some(a), Some(b)) => self.rect.touches([a.0, a.1, b.0, b.1]),
            _ => true,
        }
    }

    fn add(&self, g: &Geometry<f64>, parts: &mut Parts, depth: usize) {
        match g {
            Geometry::Point(p) => self.add_point(p.x(), p.y(), parts),
            Geometry::MultiPoint(mp) => {
                for p in mp {
                    self.add_point(p.x(), p.y(), parts);
                }
            }
            Geometry::Line(l) => self.add_line(&LineString::from(vec![l.start, l.end]), parts),
            Geometry::LineString(ls) => self.add_line(ls, parts),
            Geometry::MultiLineString(mls) => {
                for ls in mls {
                    self.add_line(ls, parts);
                }
            }
            Geometry::Polygon(p) => self.add_polygon(p, parts),
            Geometry::MultiPolygon(mp) => {
                for p in mp {
                    self.add_polygon(p, parts);
                }
            }
            Geometry::Rect(r) => self.add_polygon(&r.to_polygon(), parts),
            Geometry::Triangle(t) => self.add_polygon(&t.to_polygon(), parts),
            Geometry::GeometryCollection(gc) => {
                if depth < MAX_COLLECTION_DEPTH {
                    for g in gc {
                        self.add(g, parts, depth + 1);
                    }
                }
            }
        }
    }

    fn add_point(&self, lon: f64, lat: f64, parts: &mut Parts) {
        if let Some(p) = self.proj.project(lon, lat)
            && self.rect.contains(p)
        {
            let q = geom::round_dedup(&[p]);
            parts.points.extend(q);
        }
    }

    fn project_all(&self, ls: &LineString<f64>) -> Vec<P> {
        ls.0.iter()
            .filter_map(|c| self.proj.project(c.x, c.y))
            .collect()
    }

    fn project_shifted(&self, lon_lat: &[P], shift: f64) -> Vec<P> {
        lon_lat
            .iter()
            .filter_map(|&(lon, lat)| self.proj.project(lon + shift, lat))
            .collect()
    }

    /// The clip rectangle for the copy of a path moved by `shift` degrees of
    /// longitude: the tile's, cut at the antimeridian so that each copy draws
    /// only its own side of it. `None` when the tile is all on the other side.
    fn world_rect(&self) -> Option<ClipRect> {
        let (west, east) = self.proj.world_columns();
        self.rect.within_x(west, east)
    }

    fn add_line(&self, ls: &LineString<f64>, parts: &mut Parts) {
        let lon_lat: Vec<P> = ls.0.iter().map(|c| (c.x, c.y)).collect();
        if let Some(unwrapped) = geom::unwrap_lons(&lon_lat, false) {
            // A line crossing the antimeridian: drawn once per world copy it
            // reaches, each cut at ±180°.
            let Some(rect) = self.world_rect() else {
                return;
            };
            for shift in copies(&unwrapped) {
                let pts = self.project_shifted(&unwrapped, shift);
                self.push_runs(&pts, rect, parts);
            }
            return;
        }
        let pts = self.project_all(ls);
        self.push_runs(&pts, self.rect, parts);
    }

    fn push_runs(&self, pts: &[P], rect: ClipRect, parts: &mut Parts) {
        for run in geom::clip_line(pts, rect) {
            let run = geom::simplify(&run, self.tolerance);
            let ints = geom::round_dedup(&run);
            if ints.len() >= 2 {
                parts.lines.push(ints);
            }
        }
    }

    /// A ring (tile space) clipped to `rect`, oriented with positive area
    /// when `exterior`, negative otherwise; `None` when nothing with area is
    /// left.
    fn ring(&self, mut pts: Vec<P>, exterior: bool, rect: ClipRect) -> Option<Vec<IP>> {
        if pts.len() > 1 && pts.first() == pts.last() {
            pts.pop();
        }
        let clipped = geom::clip_ring(&pts, rect);
        let simplified = geom::simplify_ring(&clipped, self.tolerance);
        let mut ints = geom::round_ring(&simplified);
        if ints.len() < 3 {
            return None;
        }
        let area = geom::area2(&ints);
        if area == 0 {
            return None;
        }
        if (area > 0) != exterior {
            ints.reverse();
        }
        Some(ints)
    }

    fn add_polygon(&self, poly: &Polygon<f64>, parts: &mut Parts) {
        let rings = std::iter::once(poly.exterior()).chain(poly.interiors());
        let lon_lat: Vec<Vec<P>> = rings
            .map(|r| r.0.iter().map(|c| (c.x, c.y)).collect())
            .collect();
        let unwrapped: Vec<Option<Vec<P>>> =
            lon_lat.iter().map(|r| geom::unwrap_lons(r, true)).collect();
        if unwrapped.iter().all(Option::is_none) {
            let Some(ext) = self.ring(self.project_all(poly.exterior()), true, self.rect) else {
                return;
            };
            parts.rings.push(ext);
            for hole in poly.interiors() {
                if let Some(h) = self.ring(self.project_all(hole), false, self.rect) {
                    parts.rings.push(h);
                }
            }
            return;
        }
        // Rings crossing the antimeridian (an edge from 179.9° to -180°, as
        // TopoJSON-derived data has for Russia and Fiji): read planar, such
        // an edge runs across the whole world and fills a band of latitude
        // on every tile. Taken the short way round instead, the polygon is
        // drawn in each world copy it reaches, cut at ±180°.
        let Some(rect) = self.world_rect() else {
            return;
        };
        let rings: Vec<&[P]> = lon_lat
            .iter()
            .zip(&unwrapped)
            .map(|(plain, u)| u.as_deref().unwrap_or(plain))
            .collect();
        if unwrapped[0].is_none() {
            // The exterior stays where it is (a ring around a pole, or one
            // that does not cross): each crossing hole is cut out of it on
            // both sides of the antimeridian.
            let Some(ext) = self.ring(self.project_shifted(rings[0], 0.0), true, rect) else {
                return;
            };
            parts.rings.push(ext);
            for hole in &rings[1..] {
                for shift in copies(hole) {
                    if let Some(h) = self.ring(self.project_shifted(hole, shift), false, rect) {
                        parts.rings.push(h);
                    }
                }
            }
            return;
        }
        for shift in copies(&rings.concat()) {
            let Some(ext) = self.ring(self.project_shifted(rings[0], shift), true, rect) else {
                continue;
            };
            parts.rings.push(ext);
            for hole in &rings[1..] {
                if let Some(h) = self.ring(self.project_shifted(hole, shift), false, rect) {
                    parts.rings.push(h);
                }
            }
        }
    }
}

/// The longitude shifts (0, -360°, 360°) that bring some of an unwrapped
/// path inside [-180°, 180°].
fn copies(lon_lat: &[P]) -> Vec<f64> {
    let (min, max) = lon_lat
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    [0.0, -360.0, 360.0]
        .into_iter()
        .filter(|s| min + s < 180.0 && max + s > -180.0)
        .collect()
}

/// A property value as MVT stores it. Also the dedup key: doubles compare by
/// bit pattern, so equal values share one table entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MvtValue {
    Str(String),
    /// f32 bits, used when the number round-trips through f32 exactly
    /// (4 bytes on the wire instead of 8).
    Float(u32),
    Double(u64),
    Uint(u64),
    Sint(i64),
    Bool(bool),
}

impl MvtValue {
    fn from_json(v: &Value) -> Option<Self> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => Self::Bool(*b),
            Value::String(s) => Self::Str(s.clone()),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Self::Uint(u)
                } else if let Some(i) = n.as_i64() {
                    Self::Sint(i)
                } else {
                    let d = n.as_f64().unwrap_or(f64::NAN);
                    let f = d as f32;
                    if f64::from(f) == d {
                        Self::Float(f.to_bits())
                    } else {
                        Self::Double(d.to_bits())
                    }
                }
            }
            // serde_json writes maps in their own (deterministic) order.
            Value::Array(_) | Value::Object(_) => Self::Str(v.to_string()),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Str(s) => pbf::put_bytes_field(out, 1, s.as_bytes()),
            Self::Float(bits) => pbf::put_float_field(out, 2, f32::from_bits(*bits)),
            Self::Double(bits) => pbf::put_double_field(out, 3, f64::from_bits(*bits)),
            Self::Uint(u) => pbf::put_uint_field(out, 5, *u),
            Self::Sint(i) => pbf::put_sint_field(out, 6, *i),
            Self::Bool(b) => pbf::put_bool_field(out, 7, *b),
        }
    }
}

/// The layer's key and value tables. The vectors hold the order (first seen
/// first, after any seed); the maps only answer "already there?".
#[derive(Default)]
struct Tables {
    keys: Vec<String>,
    key_index: HashMap<String, u32>,
    values: Vec<MvtValue>,
    value_index: HashMap<MvtValue, u32>,
    /// Per entry, whether a feature refers to it. Only seeded entries can be
    /// unused.
    key_used: Vec<bool>,
    value_used: Vec<bool>,
}

/// Unused seeded entries tolerated in a table of `n` entries.
fn filler_slack(n: usize) -> usize {
    (n / 8).max(8)
}

impl Tables {
    /// Tables pre-filled with an earlier tile's order, all entries unused.
    fn seeded(keys: Vec<String>, values: Vec<MvtValue>) -> Self {
        let mut t = Self::default();
        for k in keys {
            let i = t.keys.len() as u32;
            t.key_index.entry(k.clone()).or_insert(i);
            t.keys.push(k);
            t.key_used.push(false);
        }
        for v in values {
            let i = t.values.len() as u32;
            t.value_index.entry(v.clone()).or_insert(i);
            t.values.push(v);
            t.value_used.push(false);
        }
        t
    }

    fn too_many_fillers(&self) -> bool {
        let unused = |u: &[bool]| u.iter().filter(|x| !**x).count();
        unused(&self.key_used) > filler_slack(self.keys.len())
            || unused(&self.value_used) > filler_slack(self.values.len())
    }

    fn key(&mut self, k: &str) -> u32 {
        if let Some(&i) = self.key_index.get(k) {
            self.key_used[i as usize] = true;
            return i;
        }
        let i = self.keys.len() as u32;
        self.keys.push(k.to_owned());
        self.key_used.push(true);
        self.key_index.insert(k.to_owned(), i);
        i
    }

    fn value(&mut self, v: MvtValue) -> u32 {
        if let Some(&i) = self.value_index.get(&v) {
            self.value_used[i as usize] = true;
            return i;
        }
        let i = self.values.len() as u32;
        self.values.push(v.clone());
        self.value_used.push(true);
        self.value_index.insert(v, i);
        i
    }

    fn tags_for(&mut self, f: &TileFeature, tags: &mut Vec<u32>) {
        tags.clear();
        let string_id = match &f.id {
            Some(FeatureId::Str(s)) => Some(s),
            _ => None,
        };
        for (k, v) in &f.properties {
            if string_id.is_some() && k == "id" {
                continue;
            }
            if let Some(val) = MvtValue::from_json(v) {
                let ki = self.key(k);
                let vi = self.value(val);
                tags.extend([ki, vi]);
            }
        }
        if let Some(s) = string_id {
            let ki = self.key("id");
            let vi = self.value(MvtValue::Str(s.clone()));
            tags.extend([ki, vi]);
        }
    }
}

impl MvtValue {
    /// A value message read back from a tile; `None` for an empty or
    /// unreadable one.
    fn decode(buf: &[u8]) -> Option<Self> {
        let mut r = pbf::Reader::new(buf);
        let mut out = None;
        while let Some((field, f)) = r.next_field()? {
            out = Some(match (field, f) {
                (1, pbf::Field::Bytes(b)) => Self::Str(std::str::from_utf8(b).ok()?.to_owned()),
                (2, pbf::Field::Fixed32(bits)) => Self::Float(bits),
                (3, pbf::Field::Fixed64(bits)) => Self::Double(bits),
                // int64: this encoder writes non-negative integers as uint
                // and negative ones as sint, so map them the same way.
                (4, pbf::Field::Varint(v)) => match i64::try_from(v) {
                    Ok(i) => Self::Uint(i as u64),
                    Err(_) => Self::Sint(v as i64),
                },
                (5, pbf::Field::Varint(v)) => Self::Uint(v),
                (6, pbf::Field::Varint(v)) => Self::Sint(((v >> 1) as i64) ^ -((v & 1) as i64)),
                (7, pbf::Field::Varint(v)) => Self::Bool(v != 0),
                _ => return None,
            });
        }
        out
    }
}

/// The key and value tables of layer `layer` in an encoded tile.
fn read_tables(tile: &[u8], layer: &str) -> Option<(Vec<String>, Vec<MvtValue>)> {
    let mut r = pbf::Reader::new(tile);
    while let Some((field, f)) = r.next_field()? {
        let (3, pbf::Field::Bytes(layer_bytes)) = (field, f) else {
            continue;
        };
        let mut name = None;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut lr = pbf::Reader::new(layer_bytes);
        while let Some((lf, v)) = lr.next_field()? {
            match (lf, v) {
                (1, pbf::Field::Bytes(b)) => name = Some(b),
                (3, pbf::Field::Bytes(b)) => keys.push(std::str::from_utf8(b).ok()?.to_owned()),
                (4, pbf::Field::Bytes(b)) => values.push(MvtValue::decode(b)?),
                _ => {}
            }
        }
        if name == Some(layer.as_bytes()) {
            return Some((keys, values));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{LineString, Polygon, point, polygon};
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn point_in_tile_zero() {
        let f = TileFeature {
            id: Some(FeatureId::Int(7)),
            geometry: point!(x: 0.0, y: 0.0).into(),
            properties: props(json!({"name": "origin", "n": 1})),
        };
        let t = encode_tile(
            TileId::new(0, 0, 0).unwrap(),
            "pts",
            &[f],
            &MvtOptions::default(),
        )
        .unwrap();
        assert_eq!(t.features, 1);
        // Layer "pts", one feature with id 7 at (2048, 2048).
        let b = &t.bytes;
        assert_eq!(b[0], 0x1A);
        let geometry = [0x09u8, 0x80, 0x20, 0x80, 0x20];
        assert!(b.windows(geometry.len()).any(|w| w == geometry));
    }

    #[test]
    fn empty_and_bad_options() {
        let tile = TileId::new(3, 1, 1).unwrap();
        let far = TileFeature {
            id: None,
            geometry: point!(x: 170.0, y: -60.0).into(),
            properties: Map::new(),
        };
        let t = encode_tile(tile, "x", &[far], &MvtOptions::default()).unwrap();
        assert!(t.bytes.is_empty() && t.features == 0);
        let bad = MvtOptions {
            extent: 0,
            ..MvtOptions::default()
        };
        assert!(encode_tile(tile, "x", &[] as &[TileFeature], &bad).is_err());
        assert!(encode_tile(tile, "", &[] as &[TileFeature], &MvtOptions::default()).is_err());
    }

    #[test]
    fn non_finite_and_degenerate_input_does_not_panic() {
        let tile = TileId::new(0, 0, 0).unwrap();
        let feats = vec![
            TileFeature {
                id: None,
                geometry: LineString::from(vec![(f64::NAN, 0.0), (10.0, f64::INFINITY)]).into(),
                properties: Map::new(),
            },
            TileFeature {
                id: None,
                geometry: polygon![(x: 1.0, y: 1.0), (x: 1.0, y: 1.0), (x: 1.0, y: 1.0)].into(),
                properties: Map::new(),
            },
            TileFeature {
                id: None,
                geometry: Geometry::GeometryCollection(geo::GeometryCollection(vec![])),
                properties: Map::new(),
            },
        ];
        let t = encode_tile(tile, "x", &feats, &MvtOptions::default()).unwrap();
        assert_eq!(t.features, 0);
    }

    fn labelled_points(n: usize, rename: Option<(usize, &str)>) -> Vec<TileFeature> {
        (0..n)
            .map(|i| {
                let kind = match rename {
                    Some((j, k)) if j == i => k.to_owned(),
                    _ => ["house", "shop"][i % 2].to_owned(),
                };
                TileFeature {
                    id: Some(FeatureId::Int(i as u64)),
                    geometry: point!(x: -170.0 + i as f64 * 0.5, y: (i % 50) as f64).into(),
                    properties: props(json!({"kind": kind, "name": format!("n{i}")})),
                }
            })
            .collect()
    }

    #[test]
    fn encode_like_keeps_numbering_stable() {
        let tile = TileId::new(0, 0, 0).unwrap();
        let o = MvtOptions::default();
        let base = labelled_points(300, None);
        let v1 = encode_tile(tile, "p", &base, &o).unwrap().bytes;
        // Same input: identical bytes whichever function is used.
        assert!(encode_tile_like(tile, "p", &base, &o, &v1).unwrap().bytes == v1);
        // Garbage or another layer as the previous tile: plain numbering.
        assert!(
            encode_tile_like(tile, "p", &base, &o, b"\xff\xff")
                .unwrap()
                .bytes
                == v1
        );
        let q = encode_tile(tile, "q", &base, &o).unwrap().bytes;
        assert!(encode_tile_like(tile, "q", &base, &o, &v1).unwrap().bytes == q);

        // Feature 0 gets a new kind while "house" stays in use: plain
        // numbering shifts every later value, the seeded one appends.
        let edited = labelled_points(300, Some((0, "cafe")));
        let plain = encode_tile(tile, "p", &edited, &o).unwrap().bytes;
        let like = encode_tile_like(tile, "p", &edited, &o, &v1).unwrap().bytes;
        let (dp, dl) = (
            crate::delta::encode(&v1, &plain).len(),
            crate::delta::encode(&v1, &like).len(),
        );
        assert!(dl * 10 < dp, "seeded delta {dl} B, plain {dp} B");
        let (keys, values) = read_tables(&like, "p").unwrap();
        assert_eq!(keys, ["kind", "name"]);
        assert_eq!(values.last(), Some(&MvtValue::Str("cafe".into())));
        assert_eq!(values.len(), 303);

        // Once most old values are unused, the tile is numbered afresh.
        let renamed: Vec<TileFeature> = labelled_points(300, None)
            .into_iter()
            .map(|mut f| {
                f.properties.insert("name".into(), json!("same"));
                f
            })
            .collect();
        let fresh = encode_tile(tile, "p", &renamed, &o).unwrap().bytes;
        assert!(
            encode_tile_like(tile, "p", &renamed, &o, &v1)
                .unwrap()
                .bytes
                == fresh
        );
    }

    /// Tile-space exterior rings of the polygons in an encoded tile, read
    /// back with an independent decoder.
    fn rings_of(bytes: &[u8]) -> Vec<Vec<(i64, i64)>> {
        let reader = mvt_reader::Reader::new(bytes.to_vec()).unwrap();
        let mut out = Vec::new();
        for f in reader.get_features_as::<f64>(0).unwrap() {
            let polys = match f.geometry {
                Geometry::Polygon(p) => vec![p],
                Geometry::MultiPolygon(mp) => mp.0,
                other => panic!("not a polygon: {other:?}"),
            };
            for p in polys {
                out.push(
                    p.exterior()
                        .0
                        .iter()
                        .map(|c| (c.x as i64, c.y as i64))
                        .collect(),
                );
            }
        }
        out
    }

    #[test]
    fn polygons_crossing_the_antimeridian_stay_on_their_side() {
        // Wrangel Island as TopoJSON-derived files have it: one ring with
        // edges from 178.x° to -180° and back.
        let ring = vec![
            (178.7, 71.1),
            (-180.0, 71.5),
            (-177.0, 71.3),
            (-177.0, 70.9),
            (-180.0, 70.8),
            (178.9, 70.8),
            (178.7, 71.1),
        ];
        let f = TileFeature {
            id: None,
            geometry: Polygon::new(LineString::from(ring), vec![]).into(),
            properties: Map::new(),
        };
        let o = MvtOptions::default();
        // The North Atlantic (lon -90..0, lat 66.5..85): planar, the two
        // long edges made a band across it from 70.8° to 71.5°.
        let atlantic = encode_tile(
            TileId::new(2, 1, 0).unwrap(),
            "c",
            std::slice::from_ref(&f),
            &o,
        )
        .unwrap();
        assert_eq!(
            atlantic.features, 0,
            "nothing of the island is in the Atlantic"
        );
        // Each side of the antimeridian gets its own part, and only it.
        let east = encode_tile(
            TileId::new(2, 3, 0).unwrap(),
            "c",
            std::slice::from_ref(&f),
            &o,
        )
        .unwrap();
        let west = encode_tile(
            TileId::new(2, 0, 0).unwrap(),
            "c",
            std::slice::from_ref(&f),
            &o,
        )
        .unwrap();
        let (e, w) = (rings_of(&east.bytes), rings_of(&west.bytes));
        assert_eq!((e.len(), w.len()), (1, 1));
        // At z2 one tile spans 90°: 178.7° is 4096 * 88.7 / 90 into the
        // eastern tile, -177° is 4096 * 3 / 90 into the western one.
        let xs = |r: &[(i64, i64)]| {
            (
                r.iter().map(|p| p.0).min().unwrap(),
                r.iter().map(|p| p.0).max().unwrap(),
            )
        };
        let (emin, emax) = xs(&e[0]);
        assert!(
            (emin - 4037).abs() <= 1 && emax == 4096,
            "east part {emin}..{emax}"
        );
        let (wmin, wmax) = xs(&w[0]);
        assert!(
            wmin == 0 && (wmax - 137).abs() <= 1,
            "west part {wmin}..{wmax}"
        );
        for r in [&e[0], &w[0]] {
            let ints: Vec<IP> = r.iter().map(|&(x, y)| (x as i32, y as i32)).collect();
            assert!(geom::area2(&ints) > 0, "exterior winding");
        }

        // A ring around a pole keeps its edge along the cut: Antarctica
        // still fills the bottom of the world.
        let polar = TileFeature {
            id: None,
            geometry: Polygon::new(
                LineString::from(vec![
                    (-180.0, -84.7),
                    (-180.0, -70.0),
                    (0.0, -65.0),
                    (180.0, -70.0),
                    (180.0, -84.7),
                    (-180.0, -84.7),
                ]),
                vec![],
            )
            .into(),
            properties: Map::new(),
        };
        for x in 0..4 {
            let t = encode_tile(
                TileId::new(2, x, 3).unwrap(),
                "c",
                std::slice::from_ref(&polar),
                &o,
            )
            .unwrap();
            assert_eq!(t.features, 1, "2/{x}/3");
        }
    }

    #[test]
    fn lines_crossing_the_antimeridian_stay_on_their_side() {
        let f = TileFeature {
            id: None,
            geometry: LineString::from(vec![(170.0, 10.0), (-170.0, 10.0)]).into(),
            properties: Map::new(),
        };
        let o = MvtOptions::default();
        assert_eq!(
            encode_tile(
                TileId::new(2, 1, 1).unwrap(),
                "l",
                std::slice::from_ref(&f),
                &o
            )
            .unwrap()
            .features,
            0
        );
        assert_eq!(
            encode_tile(
                TileId::new(2, 2, 1).unwrap(),
                "l",
                std::slice::from_ref(&f),
                &o
            )
            .unwrap()
            .features,
            0
        );
        assert_eq!(
            encode_tile(
                TileId::new(2, 3, 1).unwrap(),
                "l",
                std::slice::from_ref(&f),
                &o
            )
            .unwrap()
            .features,
            1
        );
        assert_eq!(
            encode_tile(TileId::new(2, 0, 1).unwrap(), "l", &[f], &o)
                .unwrap()
                .features,
            1
        );
    }

    #[test]
    fn value_types() {
        assert_eq!(MvtValue::from_json(&json!(3)), Some(MvtValue::Uint(3)));
        assert_eq!(MvtValue::from_json(&json!(-3)), Some(MvtValue::Sint(-3)));
        assert_eq!(
            MvtValue::from_json(&json!(0.5)),
            Some(MvtValue::Float(0.5f32.to_bits()))
        );
        assert_eq!(
            MvtValue::from_json(&json!(0.1)),
            Some(MvtValue::Double(0.1f64.to_bits()))
        );
        assert_eq!(MvtValue::from_json(&json!(null)), None);
        assert_eq!(
            MvtValue::from_json(&json!({"a": [1, 2]})),
            Some(MvtValue::Str("{\"a\":[1,2]}".into()))
        );
    }
}
