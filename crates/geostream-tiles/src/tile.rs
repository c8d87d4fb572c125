//! Tile math for the Web Mercator XYZ pyramid (EPSG:3857, y down from the
//! north edge), with the TMS row flip used by MBTiles and the Hilbert tile ids
//! used by PMTiles v3.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::fmt;
use std::ops::RangeInclusive;

use crate::{Result, TileError};

/// Highest zoom level this crate accepts. 22 is where the usual web map
/// clients stop; it also keeps every count and id comfortably inside `u64`.
pub const MAX_ZOOM: u8 = 22;

/// Web Mercator cannot show the poles; latitudes are clamped to the value
/// that makes the world square (atan(sinh(π)) in degrees).
pub const MAX_LATITUDE: f64 = 85.051_128_779_806_59;

/// Radius of the sphere EPSG:3857 is defined on, in metres.
pub const EARTH_RADIUS_M: f64 = 6_378_137.0;

/// Half the width of the Web Mercator world, in metres (π · R).
pub const MERCATOR_HALF_WORLD_M: f64 = PI * EARTH_RADIUS_M;

/// A tile of the XYZ pyramid. Always valid: `z <= MAX_ZOOM` and `x, y < 2^z`,
/// which is why the fields are private and construction goes through
/// [`TileId::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    z: u8,
    x: u32,
    y: u32,
}

/// A lon/lat bounding box in degrees (WGS84).
///
/// `west > east` means the box crosses the antimeridian (e.g. west 170,
/// east -170 is a 20° wide box around 180°).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LonLatBbox {
    /// Western edge, degrees in [-180, 180].
    pub west: f64,
    /// Southern edge, degrees in [-90, 90].
    pub south: f64,
    /// Eastern edge, degrees in [-180, 180].
    pub east: f64,
    /// Northern edge, degrees in [-90, 90], not below `south`.
    pub north: f64,
}

/// An inclusive rectangle of tiles at one zoom level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileRange {
    /// Zoom level.
    pub z: u8,
    /// Columns, inclusive.
    pub x: RangeInclusive<u32>,
    /// Rows, inclusive.
    pub y: RangeInclusive<u32>,
}

impl TileRange {
    /// Number of tiles in the range.
    pub fn count(&self) -> u64 {
        let nx = u64::from(self.x.end().saturating_sub(*self.x.start())) + 1;
        let ny = u64::from(self.y.end().saturating_sub(*self.y.start())) + 1;
        nx * ny
    }

    /// Whether `tile` lies in the range.
    pub fn contains(&self, tile: TileId) -> bool {
        tile.z == self.z && self.x.contains(&tile.x) && self.y.contains(&tile.y)
    }
}

/// Number of tiles along one axis at zoom `z`, as f64 (exact up to z 52).
fn axis_tiles(z: u8) -> f64 {
    f64::from(1u32 << z)
}

fn clamp_lat(lat: f64) -> f64 {
    lat.clamp(-MAX_LATITUDE, MAX_LATITUDE)
}

/// Projects lon/lat (degrees) to the unit square of the Web Mercator world:
/// x from 0 (180°W) to 1 (180°E), y from 0 (north edge) to 1 (south edge).
/// Latitudes beyond ±[`MAX_LATITUDE`] are clamped; longitudes are not wrapped.
pub fn lon_lat_to_world(lon: f64, lat: f64) -> (f64, f64) {
    let x = (lon + 180.0) / 360.0;
    let s = clamp_lat(lat).to_radians().sin();
    // ln(tan(π/4 + φ/2)) written with the sine, which stays accurate near the
    // clamp and needs one transcendental call fewer.
    let y = 0.5 - ((1.0 + s) / (1.0 - s)).ln() / (4.0 * PI);
    (x, y)
}

/// Inverse of [`lon_lat_to_world`].
pub fn world_to_lon_lat(x: f64, y: f64) -> (f64, f64) {
    let lon = x * 360.0 - 180.0;
    let lat = (PI * (1.0 - 2.0 * y)).sinh().atan().to_degrees();
    (lon, lat)
}

/// Lon/lat (degrees) to Web Mercator metres (EPSG:3857).
pub fn lon_lat_to_mercator(lon: f64, lat: f64) -> (f64, f64) {
    let (x, y) = lon_lat_to_world(lon, lat);
    (
        (2.0 * x - 1.0) * MERCATOR_HALF_WORLD_M,
        (1.0 - 2.0 * y) * MERCATOR_HALF_WORLD_M,
    )
}

/// Web Mercator metres (EPSG:3857) to lon/lat degrees.
pub fn mercator_to_lon_lat(mx: f64, my: f64) -> (f64, f64) {
    world_to_lon_lat(
        (mx / MERCATOR_HALF_WORLD_M + 1.0) / 2.0,
        (1.0 - my / MERCATOR_HALF_WORLD_M) / 2.0,
    )
}

/// Number of Hilbert ids used by all zoom levels below `z`: (4^z - 1) / 3.
fn hilbert_base(z: u8) -> u64 {
    ((1u64 << (2 * u32::from(z))) - 1) / 3
}

impl TileId {
    /// A validated tile id.
    pub fn new(z: u8, x: u32, y: u32) -> Result<Self> {
        if z > MAX_ZOOM || u64::from(x) >= 1u64 << z || u64::from(y) >= 1u64 << z {
            return Err(TileError::InvalidTile {
                z: u32::from(z),
                x: u64::from(x),
                y: u64::from(y),
            });
        }
        Ok(Self { z, x, y })
    }

    /// Zoom level.
    pub fn z(&self) -> u8 {
        self.z
    }

    /// Column, from the west edge.
    pub fn x(&self) -> u32 {
        self.x
    }

    /// Row, from the north edge (XYZ scheme).
    pub fn y(&self) -> u32 {
        self.y
    }

    /// The tile containing lon/lat at zoom `z`. Latitudes beyond the Mercator
    /// limit are clamped; lon 180 belongs to the easternmost column.
    pub fn from_lon_lat(lon: f64, lat: f64, z: u8) -> Result<Self> {
        if !lon.is_finite() || !lat.is_finite() {
            return Err(TileError::InvalidCoordinate("lon/lat must be finite"));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(TileError::InvalidCoordinate(
                "longitude outside [-180, 180]",
            ));
        }
        if z > MAX_ZOOM {
            return Err(TileError::InvalidTile {
                z: u32::from(z),
                x: 0,
                y: 0,
            });
        }
        let (wx, wy) = lon_lat_to_world(lon, lat);
        let n = axis_tiles(z);
        let max = (1u32 << z) - 1;
        Ok(Self {
            z,
            x: axis_index(wx * n, max),
            y: axis_index(wy * n, max),
        })
    }

    /// Lon/lat bounds of the tile.
    pub fn bounds_lonlat(&self) -> LonLatBbox {
        let n = axis_tiles(self.z);
        let (west, north) = world_to_lon_lat(f64::from(self.x) / n, f64::from(self.y) / n);
        let (east, south) = world_to_lon_lat(f64::from(self.x + 1) / n, f64::from(self.y + 1) / n);
        LonLatBbox {
            west,
            south,
            east,
            north,
        }
    }

    /// Web Mercator bounds of the tile in metres (min is south-west).
    pub fn bounds_mercator(&self) -> geo::Rect<f64> {
        let n = axis_tiles(self.z);
        let size = 2.0 * MERCATOR_HALF_WORLD_M / n;
        let min_x = -MERCATOR_HALF_WORLD_M + f64::from(self.x) * size;
        let max_y = MERCATOR_HALF_WORLD_M - f64::from(self.y) * size;
        geo::Rect::new(
            geo::coord! { x: min_x, y: max_y - size },
            geo::coord! { x: min_x + size, y: max_y },
        )
    }

    /// The tile one zoom level up that contains this one; `None` at zoom 0.
    pub fn parent(&self) -> Option<Self> {
        (self.z > 0).then(|| Self {
            z: self.z - 1,
            x: self.x >> 1,
            y: self.y >> 1,
        })
    }

    /// The four tiles one zoom level down, in order NW, NE, SW, SE; `None` at
    /// [`MAX_ZOOM`].
    pub fn children(&self) -> Option<[Self; 4]> {
        if self.z >= MAX_ZOOM {
            return None;
        }
        let (z, x, y) = (self.z + 1, self.x * 2, self.y * 2);
        Some([
            Self { z, x, y },
            Self { z, x: x + 1, y },
            Self { z, x, y: y + 1 },
            Self {
                z,
                x: x + 1,
                y: y + 1,
            },
        ])
    }

    /// The row in the TMS scheme (y up from the south edge), as MBTiles stores
    /// it. The flip is its own inverse.
    pub fn tms_y(&self) -> u32 {
        (1u32 << self.z) - 1 - self.y
    }

    /// The tile from a TMS row (as stored in MBTiles).
    pub fn from_tms(z: u8, x: u32, tms_y: u32) -> Result<Self> {
        if z > MAX_ZOOM || u64::from(tms_y) >= 1u64 << z {
            return Err(TileError::InvalidTile {
                z: u32::from(z),
                x: u64::from(x),
                y: u64::from(tms_y),
            });
        }
        Self::new(z, x, (1u32 << z) - 1 - tms_y)
    }

    /// The PMTiles v3 tile id: all tiles of lower zooms come first, then this
    /// zoom's tiles in Hilbert curve order.
    pub fn hilbert_id(&self) -> u64 {
        let side = 1u64 << self.z;
        let (mut x, mut y) = (u64::from(self.x), u64::from(self.y));
        let mut d = 0u64;
        let mut s = side / 2;
        while s > 0 {
            let rx = u64::from(x & s != 0);
            let ry = u64::from(y & s != 0);
            d += s * s * ((3 * rx) ^ ry);
            // Rotate the quadrant so the lower bits are read in the orientation
            // the curve enters it with.
            if ry == 0 {
                if rx == 1 {
                    x = side - 1 - x;
                    y = side - 1 - y;
                }
                std::mem::swap(&mut x, &mut y);
            }
            s /= 2;
        }
        hilbert_base(self.z) + d
    }

    /// The tile for a PMTiles v3 tile id; fails for ids beyond [`MAX_ZOOM`].
    pub fn from_hilbert_id(id: u64) -> Result<Self> {
        let mut z = 0u8;
        while z < MAX_ZOOM && id >= hilbert_base(z + 1) {
            z += 1;
        }
        let mut t = id - hilbert_base(z);
        if t >= 1u64 << (2 * u32::from(z)) {
            return Err(TileError::InvalidTile {
                z: u32::from(MAX_ZOOM) + 1,
                x: id,
                y: 0,
            });
        }
        let (mut x, mut y) = (0u64, 0u64);
        let mut s = 1u64;
        while s < 1u64 << z {
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
        // x, y < 2^z <= 2^22, so the narrowing cannot fail.
        Self::new(
            z,
            u32::try_from(x).unwrap_or(u32::MAX),
            u32::try_from(y).unwrap_or(u32::MAX),
        )
    }
}

impl fmt::Display for TileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.z, self.x, self.y)
    }
}

/// Floor of a fractional tile coordinate, clamped into [0, max]. NaN maps to 0.
fn axis_index(v: f64, max: u32) -> u32 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= f64::from(max) {
        max
    } else {
        // 0 < v < max <= 2^22: the cast is exact after floor.
        v.floor() as u32
    }
}

/// Last tile index touched by an upper edge at fractional coordinate `v`:
/// an edge lying exactly on a tile boundary does not reach into the next tile.
fn axis_index_upper(v: f64, max: u32) -> u32 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v > f64::from(max) + 1.0 {
        max
    } else {
        let c = v.ceil();
        if c <= 1.0 { 0 } else { (c as u32 - 1).min(max) }
    }
}

impl LonLatBbox {
    /// A validated bbox (see the field docs for the rules).
    pub fn new(west: f64, south: f64, east: f64, north: f64) -> Result<Self> {
        let b = Self {
            west,
            south,
            east,
            north,
        };
        b.validate()?;
        Ok(b)
    }

    /// The whole Web Mercator world.
    pub fn world() -> Self {
        Self {
            west: -180.0,
            south: -MAX_LATITUDE,
            east: 180.0,
            north: MAX_LATITUDE,
        }
    }

    /// Checks the field rules; every function taking a bbox calls this, since
    /// the fields are public.
    pub fn validate(&self) -> Result<()> {
        let all = [self.west, self.south, self.east, self.north];
        if all.iter().any(|v| !v.is_finite()) {
            return Err(TileError::InvalidCoordinate("bbox edges must be finite"));
        }
        if !(-180.0..=180.0).contains(&self.west) || !(-180.0..=180.0).contains(&self.east) {
            return Err(TileError::InvalidCoordinate(
                "bbox longitude outside [-180, 180]",
            ));
        }
        if !(-90.0..=90.0).contains(&self.south) || !(-90.0..=90.0).contains(&self.north) {
            return Err(TileError::InvalidCoordinate(
                "bbox latitude outside [-90, 90]",
            ));
        }
        if self.south > self.north {
            return Err(TileError::InvalidCoordinate("bbox south above north"));
        }
        Ok(())
    }

    /// Whether the two boxes share any point (edges included), antimeridian
    /// crossing taken into account.
    pub fn intersects(&self, other: &LonLatBbox) -> bool {
        if self.south > other.north || other.south > self.north {
            return false;
        }
        let a = lon_spans(self);
        let b = lon_spans(other);
        a.iter()
            .flatten()
            .any(|(w1, e1)| b.iter().flatten().any(|(w2, e2)| w1 <= e2 && w2 <= e1))
    }
}

/// One or two plain longitude intervals for a bbox.
fn lon_spans(b: &LonLatBbox) -> [Option<(f64, f64)>; 2] {
    if b.west <= b.east {
        [Some((b.west, b.east)), None]
    } else {
        [Some((b.west, 180.0)), Some((-180.0, b.east))]
    }
}

/// The tile rectangles (one, or two across the antimeridian) that `bbox`
/// touches at zoom `z`.
pub fn tile_ranges(bbox: &LonLatBbox, z: u8) -> Result<Vec<TileRange>> {
    bbox.validate()?;
    if z > MAX_ZOOM {
        return Err(TileError::InvalidTile {
            z: u32::from(z),
            x: 0,
            y: 0,
        });
    }
    let n = axis_tiles(z);
    let max = (1u32 << z) - 1;
    let (_, wy_top) = lon_lat_to_world(0.0, bbox.north);
    let (_, wy_bottom) = lon_lat_to_world(0.0, bbox.south);
    let y0 = axis_index(wy_top * n, max);
    let y1 = axis_index_upper(wy_bottom * n, max).max(y0);
    let x_range = |west: f64, east: f64| {
        let x0 = axis_index((west + 180.0) / 360.0 * n, max);
        let x1 = axis_index_upper((east + 180.0) / 360.0 * n, max).max(x0);
        x0..=x1
    };
    Ok(lon_spans(bbox)
        .into_iter()
        .flatten()
        .map(|(w, e)| TileRange {
            z,
            x: x_range(w, e),
            y: y0..=y1,
        })
        .collect())
}

/// Every tile at zoom `z` that `bbox` touches, row by row from the north-west.
/// Refuses with [`TileError::TooManyTiles`] rather than allocate more than
/// `limit` ids, so a client's world-sized viewport at zoom 18 is cheap to turn
/// down.
pub fn tiles_covering(bbox: &LonLatBbox, z: u8, limit: usize) -> Result<Vec<TileId>> {
    let ranges = tile_ranges(bbox, z)?;
    let count: u64 = ranges.iter().map(TileRange::count).sum();
    if count > limit as u64 {
        return Err(TileError::TooManyTiles { z, count, limit });
    }
    let mut out = Vec::with_capacity(count as usize);
    for r in &ranges {
        for y in r.y.clone() {
            for x in r.x.clone() {
                out.push(TileId { z, x, y });
            }
        }
    }
    Ok(out)
}

/// Where a change may have altered tiles: the boxes it touched, and how many tiles around a
/// box a tile's content reaches (its buffer, in tiles, rounded up).
#[derive(Debug, Clone, Copy)]
pub struct TilesNear<'a> {
    /// The boxes, `west <= east`. One that crosses the antimeridian or is not valid reaches
    /// every tile.
    pub boxes: &'a [LonLatBbox],
    /// Tiles around a box that may still show it: for a buffer of `f` tiles, `floor(f) + 1`
    /// (a tile's buffered edge may just touch a box on the far side of its neighbour).
    pub margin: u32,
}

impl<'a> TilesNear<'a> {
    /// Near `boxes`, for tiles whose content reaches `buffer` of a tile beyond their edges
    /// (the encoder's buffer over its extent): a margin of `floor(buffer) + 1` tiles.
    pub fn new(boxes: &'a [LonLatBbox], buffer: f64) -> TilesNear<'a> {
        TilesNear {
            boxes,
            margin: buffer.max(0.0).floor() as u32 + 1,
        }
    }

    /// The tiles at zoom `z` near the boxes: the rectangle holding every tile within `margin`
    /// of one of them, clamped to the world. `None` when that is every tile of the zoom.
    fn hull(&self, z: u8) -> Option<TileRange> {
        let max = (1u32 << z) - 1;
        let mut hull: Option<TileRange> = None;
        for b in self.boxes {
            if b.west > b.east {
                return None;
            }
            let ranges = tile_ranges(b, z).ok()?;
            let [r] = ranges.as_slice() else {
                return None;
            };
            let m = self.margin;
            let near = TileRange {
                z,
                x: r.x.start().saturating_sub(m)..=r.x.end().saturating_add(m).min(max),
                y: r.y.start().saturating_sub(m)..=r.y.end().saturating_add(m).min(max),
            };
            hull = Some(match hull {
                None => near,
                Some(h) => TileRange {
                    z,
                    x: *h.x.start().min(near.x.start())..=*h.x.end().max(near.x.end()),
                    y: *h.y.start().min(near.y.start())..=*h.y.end().max(near.y.end()),
                },
            });
        }
        hull
    }

    /// Visits, each once, the entries of `tiles` near the boxes. Zoom by zoom it reads only
    /// the columns the boxes reach (one range of the ordered map), so what it costs follows
    /// the tiles near the change, not every tile held: a cache or an index of many tiles is
    /// not scanned for each change of a moving layer.
    pub fn visit<V>(&self, tiles: &mut BTreeMap<TileId, V>, mut visit: impl FnMut(TileId, &mut V)) {
        let mut from = TileId { z: 0, x: 0, y: 0 };
        while let Some(z) = tiles.range(from..).next().map(|(t, _)| t.z) {
            let max = (1u32 << z) - 1;
            let (x, y) = match self.hull(z) {
                Some(r) => (r.x, r.y),
                None => (0..=max, 0..=max),
            };
            let first = TileId {
                z,
                x: *x.start(),
                y: 0,
            };
            let last = TileId {
                z,
                x: *x.end(),
                y: max,
            };
            for (t, v) in tiles.range_mut(first..=last) {
                if y.contains(&t.y) {
                    visit(*t, v);
                }
            }
            if z >= MAX_ZOOM {
                break;
            }
            from = TileId {
                z: z + 1,
                x: 0,
                y: 0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(z: u8, x: u32, y: u32) -> TileId {
        TileId::new(z, x, y).unwrap()
    }

    #[test]
    fn validation_rejects_out_of_range() {
        assert!(TileId::new(0, 0, 0).is_ok());
        assert!(TileId::new(0, 1, 0).is_err());
        assert!(TileId::new(3, 7, 8).is_err());
        assert!(TileId::new(23, 0, 0).is_err());
        assert!(TileId::new(22, (1 << 22) - 1, (1 << 22) - 1).is_ok());
        assert!(TileId::from_tms(2, 0, 4).is_err());
        assert!(TileId::from_lon_lat(f64::NAN, 0.0, 3).is_err());
        assert!(TileId::from_lon_lat(181.0, 0.0, 3).is_err());
    }

    #[test]
    fn lon_lat_to_tile_matches_known_values() {
        // Helsinki at z10 (the OSM wiki's slippy map formula).
        assert_eq!(
            TileId::from_lon_lat(24.9384, 60.1699, 10).unwrap(),
            t(10, 582, 296)
        );
        // San Francisco at z12.
        assert_eq!(
            TileId::from_lon_lat(-122.4194, 37.7749, 12).unwrap(),
            t(12, 655, 1583)
        );
        assert_eq!(TileId::from_lon_lat(180.0, 0.0, 2).unwrap(), t(2, 3, 2));
        assert_eq!(TileId::from_lon_lat(-180.0, 89.9, 2).unwrap(), t(2, 0, 0));
        assert_eq!(TileId::from_lon_lat(0.0, -89.9, 2).unwrap(), t(2, 2, 3));
    }

    #[test]
    fn bounds_round_trip() {
        let tile = t(10, 582, 296);
        let b = tile.bounds_lonlat();
        assert!(b.west < 24.9384 && 24.9384 < b.east);
        assert!(b.south < 60.1699 && 60.1699 < b.north);
        let centre = TileId::from_lon_lat((b.west + b.east) / 2.0, (b.south + b.north) / 2.0, 10);
        assert_eq!(centre.unwrap(), tile);
        let world = t(0, 0, 0).bounds_lonlat();
        assert!((world.north - MAX_LATITUDE).abs() < 1e-9);
        assert!((world.west + 180.0).abs() < 1e-12);
        let m = t(0, 0, 0).bounds_mercator();
        assert!((m.min().x + MERCATOR_HALF_WORLD_M).abs() < 1e-6);
        assert!((m.max().y - MERCATOR_HALF_WORLD_M).abs() < 1e-6);
        let m = t(1, 1, 0).bounds_mercator();
        assert!(m.min().x.abs() < 1e-6 && m.min().y.abs() < 1e-6);
        let (mx, my) = lon_lat_to_mercator(24.9384, 60.1699);
        let (lon, lat) = mercator_to_lon_lat(mx, my);
        assert!((lon - 24.9384).abs() < 1e-9 && (lat - 60.1699).abs() < 1e-9);
        // A known EPSG:3857 value: lon 10° = 1113194.9079 m.
        assert!((lon_lat_to_mercator(10.0, 0.0).0 - 1_113_194.907_9).abs() < 1e-3);
    }

    #[test]
    fn parent_children_tms() {
        let tile = t(5, 17, 9);
        let kids = tile.children().unwrap();
        for k in kids {
            assert_eq!(k.parent(), Some(tile));
        }
        assert_eq!(kids[3], t(6, 35, 19));
        assert_eq!(t(0, 0, 0).parent(), None);
        assert!(t(22, 0, 0).children().is_none());
        assert_eq!(t(3, 2, 1).tms_y(), 6);
        assert_eq!(TileId::from_tms(3, 2, 6).unwrap(), t(3, 2, 1));
    }

    #[test]
    fn hilbert_ids_match_pmtiles_vectors() {
        // Values from the PMTiles v3 specification's examples.
        let cases = [
            ((0, 0, 0), 0),
            ((1, 0, 0), 1),
            ((1, 0, 1), 2),
            ((1, 1, 1), 3),
            ((1, 1, 0), 4),
            ((2, 1, 3), 11),
            ((3, 3, 0), 26),
            ((12, 3423, 1763), 19_078_479),
        ];
        for ((z, x, y), id) in cases {
            assert_eq!(t(z, x, y).hilbert_id(), id, "{z}/{x}/{y}");
            assert_eq!(TileId::from_hilbert_id(id).unwrap(), t(z, x, y));
        }
        for z in 0..=5u8 {
            for x in 0..1u32 << z {
                for y in 0..1u32 << z {
                    let tile = t(z, x, y);
                    assert_eq!(TileId::from_hilbert_id(tile.hilbert_id()).unwrap(), tile);
                }
            }
        }
        let last = t(22, (1 << 22) - 1, 0);
        assert_eq!(TileId::from_hilbert_id(last.hilbert_id()).unwrap(), last);
        assert!(TileId::from_hilbert_id(hilbert_base(23)).is_err());
        assert!(TileId::from_hilbert_id(u64::MAX).is_err());
    }

    #[test]
    fn covering_counts_and_limit() {
        let all = tiles_covering(&LonLatBbox::world(), 3, 1000).unwrap();
        assert_eq!(all.len(), 64);
        assert!(matches!(
            tiles_covering(&LonLatBbox::world(), 10, 1000),
            Err(TileError::TooManyTiles {
                count: 1_048_576,
                ..
            })
        ));
        // A bbox ending exactly on the prime meridian stays in the west half.
        let west = LonLatBbox::new(-10.0, 10.0, 0.0, 20.0).unwrap();
        let tiles = tiles_covering(&west, 1, 10).unwrap();
        assert_eq!(tiles, vec![t(1, 0, 0)]);
        // A point covers one tile.
        let p = LonLatBbox::new(24.9, 60.1, 24.9, 60.1).unwrap();
        assert_eq!(tiles_covering(&p, 12, 1).unwrap().len(), 1);
        // Across the antimeridian: two ranges.
        let am = LonLatBbox::new(170.0, -5.0, -170.0, 5.0).unwrap();
        let tiles = tiles_covering(&am, 2, 100).unwrap();
        assert_eq!(tiles.len(), 4);
        assert!(tiles.contains(&t(2, 0, 1)) && tiles.contains(&t(2, 3, 2)));
        assert!(LonLatBbox::new(0.0, 10.0, 1.0, 5.0).is_err());
        assert!(LonLatBbox::new(0.0, f64::NAN, 1.0, 5.0).is_err());
        let bad = LonLatBbox {
            west: 0.0,
            south: 0.0,
            east: 500.0,
            north: 1.0,
        };
        assert!(tiles_covering(&bad, 2, 10).is_err());
    }

    /// A tile's box grown by `frac` of a tile on each side, clamped to the world: what a
    /// tile's content depends on when its buffer is `frac` of it.
    fn buffered(t: TileId, frac: f64) -> [f64; 4] {
        let n = f64::from(1u32 << t.z);
        let x0 = ((f64::from(t.x) - frac) / n).max(0.0);
        let x1 = ((f64::from(t.x) + 1.0 + frac) / n).min(1.0);
        let y0 = ((f64::from(t.y) - frac) / n).max(0.0);
        let y1 = ((f64::from(t.y) + 1.0 + frac) / n).min(1.0);
        let (w, north) = world_to_lon_lat(x0, y0);
        let (e, south) = world_to_lon_lat(x1, y1);
        [w, south, e, north]
    }

    #[test]
    fn tiles_near_are_visited_once_and_hold_every_touched_tile() {
        // Every tile of zooms 0 to 6, held in both a map and a list.
        let mut held: BTreeMap<TileId, u32> = BTreeMap::new();
        for z in 0..=6u8 {
            for x in 0..1u32 << z {
                for y in 0..1u32 << z {
                    held.insert(t(z, x, y), 0);
                }
            }
        }
        let all: Vec<TileId> = held.keys().copied().collect();
        // Boxes: points, small and large, on tile edges, at the antimeridian and the poles,
        // crossing the antimeridian, and not valid at all.
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut cases: Vec<Vec<LonLatBbox>> = vec![
            vec![LonLatBbox::new(0.0, 0.0, 0.0, 0.0).unwrap()],
            vec![LonLatBbox::new(-180.0, -90.0, -180.0, -90.0).unwrap()],
            vec![LonLatBbox::new(179.9, 84.0, 180.0, 90.0).unwrap()],
            vec![LonLatBbox::new(-22.5, 40.97, 0.0, 55.77).unwrap()],
            vec![LonLatBbox::new(170.0, -10.0, -170.0, 10.0).unwrap()],
            vec![LonLatBbox {
                west: f64::NAN,
                south: 0.0,
                east: 1.0,
                north: 1.0,
            }],
            vec![
                LonLatBbox::new(2.0, 48.0, 2.5, 49.0).unwrap(),
                LonLatBbox::new(-74.1, 40.6, -73.9, 40.8).unwrap(),
            ],
        ];
        for _ in 0..200 {
            let (lon, lat) = (next() * 360.0 - 180.0, next() * 170.0 - 85.0);
            let size = next().powi(3) * 40.0;
            cases.push(vec![LonLatBbox {
                west: lon,
                south: lat,
                east: (lon + size).min(180.0),
                north: (lat + size / 2.0).min(90.0),
            }]);
        }
        for boxes in &cases {
            for (frac, margin) in [(64.0 / 4096.0, 1), (1.0, 2), (0.0, 1), (2.5, 3)] {
                let near = TilesNear { boxes, margin };
                let mut seen: Vec<TileId> = Vec::new();
                near.visit(&mut held, |t, n| {
                    *n += 1;
                    seen.push(t);
                });
                let mut once = seen.clone();
                once.sort_unstable();
                once.dedup();
                assert_eq!(once.len(), seen.len(), "{boxes:?}: a tile visited twice");
                for &tile in &all {
                    let b = buffered(tile, frac);
                    let touched = boxes.iter().any(|x| {
                        x.west <= b[2] && b[0] <= x.east && x.south <= b[3] && b[1] <= x.north
                    });
                    assert!(
                        !touched || once.binary_search(&tile).is_ok(),
                        "{boxes:?}, buffer {frac}: {tile} is touched but was not visited"
                    );
                }
                // Only near tiles: a small box at zoom 6 reaches a handful, not the zoom.
                if boxes.len() == 1 && boxes[0].west <= boxes[0].east && margin == 1 {
                    let b = &boxes[0];
                    if b.east - b.west < 1.0 && b.north - b.south < 1.0 && b.north < 80.0 {
                        let at6 = once.iter().filter(|t| t.z == 6).count();
                        assert!(at6 <= 16, "{boxes:?}: {at6} tiles at zoom 6");
                    }
                }
            }
        }
        assert!(
            held.values().all(|n| *n > 0),
            "every tile visited at least once"
        );
    }

    #[test]
    fn bbox_intersection() {
        let a = LonLatBbox::new(170.0, -5.0, -170.0, 5.0).unwrap();
        let b = LonLatBbox::new(-175.0, 0.0, -172.0, 1.0).unwrap();
        let c = LonLatBbox::new(0.0, 0.0, 1.0, 1.0).unwrap();
        assert!(a.intersects(&b) && b.intersects(&a));
        assert!(!a.intersects(&c));
    }
}
