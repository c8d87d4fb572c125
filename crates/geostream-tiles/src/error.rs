//! The crate's error type.

/// Errors from tile math, MVT encoding, archives and the cache.
///
/// Delta decoding has its own [`crate::delta::DeltaError`] because its
/// failures (corrupt or hostile input from the wire) are handled separately by
/// callers: they fall back to sending the full tile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    /// z/x/y outside the tile pyramid (zoom above [`crate::MAX_ZOOM`], or x/y
    /// not below 2^z).
    #[error("invalid tile {z}/{x}/{y}")]
    InvalidTile {
        /// Zoom level.
        z: u32,
        /// Column.
        x: u64,
        /// Row.
        y: u64,
    },
    /// A coordinate or bbox that is not a finite lon/lat.
    #[error("invalid coordinate: {0}")]
    InvalidCoordinate(&'static str),
    /// Covering a bbox would need more tiles than allowed.
    #[error("bbox covers {count} tiles at zoom {z}, more than the limit of {limit}")]
    TooManyTiles {
        /// Zoom level asked for.
        z: u8,
        /// Tiles the bbox covers.
        count: u64,
        /// The caller's limit.
        limit: usize,
    },
    /// Bad encoder options (extent 0, buffer too large, empty layer name).
    #[error("invalid MVT options: {0}")]
    InvalidOptions(&'static str),
    /// A cache insert carried a version not newer than the one held.
    #[error("stale tile version {version}: cache already holds version {current}")]
    StaleVersion {
        /// Version offered.
        version: u64,
        /// Version held.
        current: u64,
    },
    /// The archive is malformed or uses something this reader does not support.
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    /// SQLite failure while reading MBTiles.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// I/O failure while reading an archive.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with [`TileError`].
pub type Result<T, E = TileError> = std::result::Result<T, E>;
