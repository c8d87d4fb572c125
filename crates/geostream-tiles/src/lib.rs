//! Tiles for geostream: tile math, Mapbox Vector Tile encoding, binary deltas
//! between tile versions, read-only MBTiles/PMTiles archives and a versioned,
//! byte-bounded tile cache.
//!
//! The crate is a pure library: no sockets, no async runtime, and of
//! geostream's crates only geostream-delta (re-exported as [`delta`]). The server calls it to build tiles from layers, to serve
//! raster archives and to push a changed tile as a small delta against the
//! version a client already holds.
//!
//! Module map:
//! - [`tile`]: [`TileId`], Web Mercator conversions, covering a bbox, TMS and
//!   Hilbert (PMTiles) ids.
//! - [`mvt`]: encode one layer of features into a Mapbox Vector Tile 2.1
//!   ([`encode_tile`]), or re-encode a changed tile numbering its keys and
//!   values like the previous version ([`encode_tile_like`]) so the delta
//!   between the two stays small; [`encode_kept`] does either for features
//!   kept between renders ([`KeptFeature`]), drawing each in a tile once.
//! - [`delta`]: copy/insert binary delta with a CRC-32 of the target
//!   (format in `docs/DELTA.md`), from geostream-delta, which the Rust client
//!   shares.
//! - [`mbtiles`] and [`pmtiles`]: raster (or vector) tile archives.
//! - [`cache`]: [`TileCache`], LRU by bytes, keeping a few old versions per
//!   tile so deltas can be computed against what a client holds.
#![warn(missing_docs)]

pub mod cache;
/// Binary tile deltas: geostream-delta, the one definition the Rust client uses too.
pub use geostream_delta as delta;
mod error;
pub mod mbtiles;
pub mod mvt;
pub mod pmtiles;
pub mod tile;

pub use cache::{CacheStats, CachedTile, TileCache};
pub use error::{Result, TileError};
pub use mbtiles::MbTiles;
pub use mvt::{
    EncodedTile, FeatureId, KeptFeature, MvtOptions, TileFeature, encode_kept, encode_tile,
    encode_tile_like,
};
pub use pmtiles::{PmTiles, decompress};
pub use tile::{LonLatBbox, MAX_ZOOM, TileId, TileRange, TilesNear, tiles_covering};

/// Encoding of the tiles stored in an archive, as declared by the archive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TileFormat {
    /// Mapbox Vector Tile (protobuf).
    Mvt,
    /// PNG image.
    Png,
    /// JPEG image.
    Jpeg,
    /// WebP image.
    Webp,
    /// AVIF image.
    Avif,
    /// Anything else the archive declares, kept verbatim (lower case).
    Other(String),
    /// The archive does not say.
    Unknown,
}

impl TileFormat {
    /// Parses the `format` value of MBTiles metadata (`pbf`, `png`, `jpg`, ...).
    pub fn from_name(name: &str) -> Self {
        match name.trim().to_ascii_lowercase().as_str() {
            "pbf" | "mvt" => Self::Mvt,
            "png" => Self::Png,
            "jpg" | "jpeg" => Self::Jpeg,
            "webp" => Self::Webp,
            "avif" => Self::Avif,
            "" => Self::Unknown,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The HTTP media type for this format, when one is well known.
    pub fn content_type(&self) -> Option<&'static str> {
        match self {
            Self::Mvt => Some("application/vnd.mapbox-vector-tile"),
            Self::Png => Some("image/png"),
            Self::Jpeg => Some("image/jpeg"),
            Self::Webp => Some("image/webp"),
            Self::Avif => Some("image/avif"),
            Self::Other(_) | Self::Unknown => None,
        }
    }
}

/// Compression applied to each stored tile (not to the archive's own
/// directories). Tile bytes are returned as stored; the caller decides whether
/// to decompress or to pass them on with a `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TileCompression {
    /// Stored as is.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// Brotli.
    Brotli,
    /// Zstandard.
    Zstd,
    /// The archive does not say.
    Unknown,
}

/// What an archive says about itself.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ArchiveInfo {
    /// Tile encoding.
    pub format: TileFormat,
    /// Per-tile compression.
    pub compression: TileCompression,
    /// Area covered, when declared.
    pub bounds: Option<LonLatBbox>,
    /// Lowest zoom level with tiles.
    pub min_zoom: u8,
    /// Highest zoom level with tiles.
    pub max_zoom: u8,
    /// Human readable name, when declared.
    pub name: Option<String>,
    /// Attribution (may contain HTML), when declared.
    pub attribution: Option<String>,
}

/// A read-only source of tiles addressed by z/x/y in the XYZ scheme.
///
/// Implemented by [`MbTiles`] and [`PmTiles`] so the server can hold either
/// behind one type parameter.
pub trait TileArchive: Send + Sync {
    /// The stored bytes of one tile, `None` when the archive has no such tile.
    /// Fails with [`TileError::InvalidTile`] for coordinates outside the pyramid.
    fn get(&self, z: u8, x: u32, y: u32) -> Result<Option<bytes::Bytes>>;
    /// The archive's own description.
    fn info(&self) -> &ArchiveInfo;
    /// Every tile id present, sorted by zoom then x then y. Meant for tests and
    /// tools; it walks the whole index.
    fn tile_ids(&self) -> Result<Vec<TileId>>;
    /// Number of tiles per zoom level.
    fn tile_counts(&self) -> Result<std::collections::BTreeMap<u8, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for id in self.tile_ids()? {
            *out.entry(id.z()).or_insert(0) += 1;
        }
        Ok(out)
    }
}
