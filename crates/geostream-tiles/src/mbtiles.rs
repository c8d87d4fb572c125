//! Read-only MBTiles 1.3 archives (SQLite; rows stored in the TMS scheme).

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::tile::{LonLatBbox, MAX_ZOOM, TileId};
use crate::{ArchiveInfo, Result, TileArchive, TileCompression, TileError, TileFormat};

/// An MBTiles file opened read-only.
///
/// One SQLite connection behind a mutex: lookups are single indexed reads of
/// a few microseconds, so contention stays low, and the server can open the
/// file several times if it ever shows in profiles.
#[derive(Debug)]
pub struct MbTiles {
    conn: Mutex<Connection>,
    info: ArchiveInfo,
    metadata: BTreeMap<String, String>,
}

impl MbTiles {
    /// Opens `path` read-only and reads its metadata table.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path.as_ref(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let metadata = read_metadata(&conn)?;
        let info = build_info(&conn, &metadata)?;
        Ok(Self {
            conn: Mutex::new(conn),
            info,
            metadata,
        })
    }

    /// All rows of the `metadata` table (name → value).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

impl TileArchive for MbTiles {
    fn get(&self, z: u8, x: u32, y: u32) -> Result<Option<Bytes>> {
        let tile = TileId::new(z, x, y)?;
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT tile_data FROM tiles WHERE zoom_level = ?1 AND tile_column = ?2 AND tile_row = ?3",
        )?;
        let data: Option<Vec<u8>> = stmt
            .query_row((tile.z(), tile.x(), tile.tms_y()), |r| r.get(0))
            .optional()?;
        Ok(data.map(Bytes::from))
    }

    fn info(&self) -> &ArchiveInfo {
        &self.info
    }

    /// Counted by SQLite rather than by listing every tile.
    fn tile_counts(&self) -> Result<BTreeMap<u8, u64>> {
        let conn = self.conn.lock();
        let mut stmt =
            conn.prepare("SELECT zoom_level, COUNT(*) FROM tiles GROUP BY zoom_level")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (z, n) = row?;
            let z = u8::try_from(z)
                .ok()
                .filter(|z| *z <= MAX_ZOOM)
                .ok_or_else(|| TileError::InvalidArchive(format!("zoom level {z} in tiles")))?;
            out.insert(z, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    fn tile_ids(&self) -> Result<Vec<TileId>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("SELECT zoom_level, tile_column, tile_row FROM tiles")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (z, x, y) = row?;
            let id = match (u8::try_from(z), u32::try_from(x), u32::try_from(y)) {
                (Ok(z), Ok(x), Ok(y)) => TileId::from_tms(z, x, y).ok(),
                _ => None,
            };
            out.push(id.ok_or_else(|| {
                TileError::InvalidArchive(format!("tile row {z}/{x}/{y} outside the pyramid"))
            })?);
        }
        out.sort_unstable();
        Ok(out)
    }
}

fn read_metadata(conn: &Connection) -> Result<BTreeMap<String, String>> {
    let mut stmt = conn.prepare("SELECT name, value FROM metadata")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, Option<String>>(1)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        if let (Some(k), Some(v)) = row? {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn parse_zoom(v: Option<&String>) -> Option<u8> {
    v.and_then(|s| s.trim().parse::<u8>().ok())
        .filter(|z| *z <= MAX_ZOOM)
}

fn parse_bounds(v: Option<&String>) -> Option<LonLatBbox> {
    let nums: Vec<f64> = v?
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    match nums[..] {
        [w, s, e, n] => LonLatBbox::new(w, s, e, n).ok(),
        _ => None,
    }
}

fn build_info(conn: &Connection, md: &BTreeMap<String, String>) -> Result<ArchiveInfo> {
    let format = md
        .get("format")
        .map(|f| TileFormat::from_name(f))
        .unwrap_or(TileFormat::Unknown);
    // The MBTiles spec requires gzip for pbf tiles; images are stored raw.
    let compression = match format {
        TileFormat::Mvt => TileCompression::Gzip,
        TileFormat::Unknown | TileFormat::Other(_) => TileCompression::Unknown,
        _ => TileCompression::None,
    };
    let (min_zoom, max_zoom) = match (parse_zoom(md.get("minzoom")), parse_zoom(md.get("maxzoom")))
    {
        (Some(a), Some(b)) if a <= b => (a, b),
        // Metadata missing or unusable: ask the tiles themselves.
        _ => {
            let (a, b): (Option<i64>, Option<i64>) = conn.query_row(
                "SELECT MIN(zoom_level), MAX(zoom_level) FROM tiles",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let clamp = |z: Option<i64>| z.map_or(0, |z| z.clamp(0, i64::from(MAX_ZOOM)) as u8);
            (clamp(a), clamp(b))
        }
    };
    Ok(ArchiveInfo {
        format,
        compression,
        bounds: parse_bounds(md.get("bounds")),
        min_zoom,
        max_zoom,
        name: md.get("name").cloned(),
        attribution: md.get("attribution").cloned(),
    })
}
