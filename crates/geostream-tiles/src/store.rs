//! A durable, writable store of uploaded tiles with versions (one SQLite
//! file), for raster layers that receive new imagery while they are served.
//!
//! Each (layer, tile) holds its newest bytes and a version that increases by
//! at least one per write. The database runs in WAL mode with
//! `synchronous = FULL`, so a write has reached the disk (the WAL is fsync'd
//! at commit) when [`TileStore::put`] returns: the server acknowledges an
//! upload only after that.
//!
//! Calls block on SQLite; async callers run them on a blocking thread.

use std::path::Path;

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension};

use crate::{Result, TileId};

/// Uploaded tiles, by layer.
#[derive(Debug)]
pub struct TileStore {
    conn: Mutex<Connection>,
}

/// What [`TileStore::put`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The tile's new version.
    pub version: u64,
    /// The version it replaced, if the store held one.
    pub previous: Option<u64>,
}

impl TileStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open(path.as_ref())?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit syncs the WAL, so a returned put is on disk.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tiles (
                layer   TEXT    NOT NULL,
                z       INTEGER NOT NULL,
                x       INTEGER NOT NULL,
                y       INTEGER NOT NULL,
                version INTEGER NOT NULL,
                data    BLOB    NOT NULL,
                PRIMARY KEY (layer, z, x, y)
            ) WITHOUT ROWID;",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Stores `data` as the newest version of a tile: one above the stored
    /// version, and at least `min_version` (so an upload can supersede a
    /// version that lives elsewhere, such as a read-only archive's).
    pub fn put(&self, layer: &str, tile: TileId, data: &[u8], min_version: u64) -> Result<Stored> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let previous: Option<u64> = tx
            .query_row(
                "SELECT version FROM tiles WHERE layer = ?1 AND z = ?2 AND x = ?3 AND y = ?4",
                (layer, tile.z(), tile.x(), tile.y()),
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|v| v as u64);
        let version = previous.map_or(1, |p| p + 1).max(min_version).max(1);
        tx.execute(
            "INSERT INTO tiles (layer, z, x, y, version, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (layer, z, x, y) DO UPDATE SET version = excluded.version, data = excluded.data",
            (layer, tile.z(), tile.x(), tile.y(), version as i64, data),
        )?;
        tx.commit()?;
        Ok(Stored { version, previous })
    }

    /// The stored version and bytes of a tile.
    pub fn get(&self, layer: &str, tile: TileId) -> Result<Option<(u64, Bytes)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT version, data FROM tiles WHERE layer = ?1 AND z = ?2 AND x = ?3 AND y = ?4",
        )?;
        let row = stmt
            .query_row((layer, tile.z(), tile.x(), tile.y()), |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        Ok(row.map(|(v, d)| (v, Bytes::from(d))))
    }

    /// Number of tiles stored for `layer`.
    pub fn count(&self, layer: &str) -> Result<u64> {
        let conn = self.conn.lock();
        let n: i64 = conn.query_row(
            "SELECT count(*) FROM tiles WHERE layer = ?1",
            [layer],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// The zoom range of the tiles stored for `layer`, if any.
    pub fn zoom_range(&self, layer: &str) -> Result<Option<(u8, u8)>> {
        let conn = self.conn.lock();
        let r: (Option<i64>, Option<i64>) = conn.query_row(
            "SELECT min(z), max(z) FROM tiles WHERE layer = ?1",
            [layer],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(match r {
            (Some(a), Some(b)) => Some((a as u8, b as u8)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        use std::hash::{BuildHasher, RandomState};
        let d = std::env::temp_dir().join(format!(
            "gs-tilestore-{}-{:x}",
            std::process::id(),
            RandomState::new().hash_one(std::time::SystemTime::now())
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn versions_increase_and_survive_reopening() {
        let d = dir();
        let path = d.join("tiles.db");
        let t = TileId::new(3, 2, 1).unwrap();
        {
            let s = TileStore::open(&path).unwrap();
            assert_eq!(s.get("img", t).unwrap(), None);
            assert_eq!(
                s.put("img", t, b"one", 2).unwrap(),
                Stored {
                    version: 2,
                    previous: None
                }
            );
            assert_eq!(
                s.put("img", t, b"two", 2).unwrap(),
                Stored {
                    version: 3,
                    previous: Some(2)
                }
            );
            // Another layer, same tile: independent.
            assert_eq!(s.put("other", t, b"x", 0).unwrap().version, 1);
            assert_eq!(s.count("img").unwrap(), 1);
            assert_eq!(s.zoom_range("img").unwrap(), Some((3, 3)));
            assert_eq!(s.zoom_range("none").unwrap(), None);
        }
        let s = TileStore::open(&path).unwrap();
        assert_eq!(
            s.get("img", t).unwrap(),
            Some((3, Bytes::from_static(b"two")))
        );
        assert_eq!(s.put("img", t, b"three", 10).unwrap().version, 10);
        let _ = std::fs::remove_dir_all(d);
    }
}
