//! A byte-bounded LRU cache of tiles with versions.
//!
//! Each (layer, tile) holds its current version plus the last few older
//! versions, so when a tile changes the server can still find the bytes a
//! client holds and send it a delta instead of the whole tile.
//!
//! One `parking_lot::Mutex` guards everything. Critical sections are map
//! operations and refcount bumps only (tile bytes are `Bytes`, cloning is a
//! pointer copy); no hashing of tile contents, encoding or I/O happens under
//! the lock, apart from the CRC-32 of the ETag which is computed before
//! taking it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::tile::TilesNear;
use crate::{Result, TileError, TileId};

/// Bookkeeping cost charged per cached tile on top of its bytes, so that a
/// flood of tiny tiles is bounded too.
const ENTRY_OVERHEAD: usize = 160;

/// One version of a tile as the cache serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedTile {
    /// Version, increasing per tile (supplied by the caller on insert).
    pub version: u64,
    /// The tile bytes.
    pub bytes: Bytes,
    /// A strong HTTP ETag, quotes included: `"<version>-<crc32 hex>"`.
    /// Shared, so cloning a `CachedTile` never copies it.
    pub etag: Arc<str>,
}

#[derive(Debug)]
struct Entry {
    /// `None` after invalidation: the tile must be regenerated, but its old
    /// bytes stay in `history` for deltas.
    current: Option<CachedTile>,
    /// Older versions, oldest first.
    history: VecDeque<(u64, Bytes)>,
    /// Highest version ever inserted, to refuse out-of-order inserts.
    last_version: u64,
    tick: u64,
    cost: usize,
}

impl Entry {
    fn compute_cost(&self) -> usize {
        ENTRY_OVERHEAD
            + self
                .current
                .as_ref()
                .map_or(0, |c| c.bytes.len() + c.etag.len())
            + self.history.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    /// Moves the current version into the history, trimming it to `max`.
    fn retire_current(&mut self, max: usize) {
        if let Some(c) = self.current.take() {
            self.history.push_back((c.version, c.bytes));
        }
        while self.history.len() > max {
            self.history.pop_front();
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Per layer, tiles in (z, x, y) order, so a change finds the tiles near it by range.
    layers: HashMap<Arc<str>, BTreeMap<TileId, Entry>>,
    /// Access order: tick → key. The smallest tick is the least recently used.
    lru: BTreeMap<u64, (Arc<str>, TileId)>,
    tick: u64,
    bytes: usize,
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn evict_to(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((_, (layer, tile))) = self.lru.pop_first() else {
                break;
            };
            if let Some(tiles) = self.layers.get_mut(&layer) {
                if let Some(e) = tiles.remove(&tile) {
                    self.bytes -= e.cost;
                }
                if tiles.is_empty() {
                    self.layers.remove(&layer);
                }
            }
        }
    }
}

/// Statistics of a [`TileCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Tiles held (current or only history).
    pub tiles: usize,
    /// Bytes charged against the budget.
    pub bytes: usize,
    /// Lookups ([`TileCache::get`]) that found a current version.
    pub hits: u64,
    /// Lookups that found none (never cached, evicted or invalidated).
    pub misses: u64,
}

/// Thread-safe, byte-bounded LRU cache of versioned tiles.
#[derive(Debug)]
pub struct TileCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    max_history: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TileCache {
    /// A cache holding at most `max_bytes` (tile bytes plus a fixed overhead
    /// per tile) and, per tile, at most `max_history` older versions.
    pub fn new(max_bytes: usize, max_history: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            max_history,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The current version of a tile, if cached and not invalidated. Counts
    /// as a use for the LRU order.
    pub fn get(&self, layer: &str, tile: TileId) -> Option<CachedTile> {
        let found = self.lookup(layer, tile);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn lookup(&self, layer: &str, tile: TileId) -> Option<CachedTile> {
        let mut g = self.inner.lock();
        let tick = g.next_tick();
        let inner = &mut *g;
        let e = inner.layers.get_mut(layer)?.get_mut(&tile)?;
        let current = e.current.clone()?;
        let old = std::mem::replace(&mut e.tick, tick);
        if let Some(key) = inner.lru.remove(&old) {
            inner.lru.insert(tick, key);
        }
        Some(current)
    }

    /// The newest bytes held for a tile, current or (after an invalidation)
    /// the most recent kept version, with its version. A re-render passes
    /// them to [`crate::encode_tile_like`] so the new version diffs small
    /// against it. Not counted as a use.
    pub fn latest(&self, layer: &str, tile: TileId) -> Option<(u64, Bytes)> {
        let g = self.inner.lock();
        let e = g.layers.get(layer)?.get(&tile)?;
        match &e.current {
            Some(c) => Some((c.version, c.bytes.clone())),
            None => e.history.back().cloned(),
        }
    }

    /// Stores `bytes` as version `version` of the tile, keeping the previous
    /// current version for deltas. Fails with [`TileError::StaleVersion`] when
    /// the cache has already seen this or a newer version, so a slow render
    /// finishing late cannot overwrite a fresher one. A tile larger than the
    /// whole budget is returned but not kept.
    pub fn insert(
        &self,
        layer: &str,
        tile: TileId,
        version: u64,
        bytes: Bytes,
    ) -> Result<CachedTile> {
        let etag: Arc<str> = format!("\"{version}-{:08x}\"", crate::delta::checksum(&bytes)).into();
        let cached = CachedTile {
            version,
            bytes,
            etag,
        };
        let mut g = self.inner.lock();
        let tick = g.next_tick();
        let inner = &mut *g;
        let key: Arc<str> = match inner.layers.get_key_value(layer) {
            Some((k, _)) => k.clone(),
            None => Arc::from(layer),
        };
        let tiles = inner.layers.entry(key.clone()).or_default();
        match tiles.get_mut(&tile) {
            Some(e) => {
                if version <= e.last_version {
                    return Err(TileError::StaleVersion {
                        version,
                        current: e.last_version,
                    });
                }
                e.retire_current(self.max_history);
                e.current = Some(cached.clone());
                e.last_version = version;
                let old_tick = std::mem::replace(&mut e.tick, tick);
                let old_cost = std::mem::replace(&mut e.cost, 0);
                e.cost = e.compute_cost();
                inner.bytes = inner.bytes - old_cost + e.cost;
                inner.lru.remove(&old_tick);
            }
            None => {
                let mut e = Entry {
                    current: Some(cached.clone()),
                    history: VecDeque::new(),
                    last_version: version,
                    tick,
                    cost: 0,
                };
                e.cost = e.compute_cost();
                inner.bytes += e.cost;
                tiles.insert(tile, e);
            }
        }
        inner.lru.insert(tick, (key, tile));
        inner.evict_to(self.max_bytes);
        Ok(cached)
    }

    /// Marks a tile as needing regeneration: `get` returns `None` until the
    /// next insert, while its bytes stay available to
    /// [`TileCache::version_bytes`]. Returns whether a current version was
    /// invalidated.
    pub fn invalidate(&self, layer: &str, tile: TileId) -> bool {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let Some(e) = inner.layers.get_mut(layer).and_then(|t| t.get_mut(&tile)) else {
            return false;
        };
        if e.current.is_none() {
            return false;
        }
        let old_cost = e.cost;
        e.retire_current(self.max_history);
        e.cost = e.compute_cost();
        inner.bytes = inner.bytes - old_cost + e.cost;
        true
    }

    /// Invalidates the cached tiles of `layer` near a change (`near`) whose current version
    /// is below `version` and for which `affected` says yes. Returns the tiles invalidated,
    /// sorted.
    ///
    /// Meant for changes that carry a sequence number: a tile rendered at or
    /// after the change already shows it and stays, so a notification that
    /// arrives after a fresh render costs nothing. `affected` runs under the
    /// cache lock, once per current tile near the change: keep it to arithmetic. Only the
    /// tiles near the change are looked at, however many the layer has cached.
    pub fn invalidate_older(
        &self,
        layer: &str,
        version: u64,
        near: &TilesNear<'_>,
        mut affected: impl FnMut(TileId) -> bool,
    ) -> Vec<TileId> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let Some(tiles) = inner.layers.get_mut(layer) else {
            return Vec::new();
        };
        let mut hit = Vec::new();
        near.visit(tiles, |tile, e| {
            let stale = e.current.as_ref().is_some_and(|c| c.version < version);
            if stale && affected(tile) {
                let old_cost = e.cost;
                e.retire_current(self.max_history);
                e.cost = e.compute_cost();
                inner.bytes = inner.bytes - old_cost + e.cost;
                hit.push(tile);
            }
        });
        hit.sort_unstable();
        hit
    }

    /// The bytes of a given version of a tile (current or kept history), to
    /// serve as the base of a delta for a client holding that version.
    pub fn version_bytes(&self, layer: &str, tile: TileId, version: u64) -> Option<Bytes> {
        let g = self.inner.lock();
        let e = g.layers.get(layer)?.get(&tile)?;
        if let Some(c) = &e.current
            && c.version == version
        {
            return Some(c.bytes.clone());
        }
        e.history
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, b)| b.clone())
    }

    /// Drops everything cached for `layer`.
    pub fn remove_layer(&self, layer: &str) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if let Some(tiles) = inner.layers.remove(layer) {
            for e in tiles.values() {
                inner.bytes -= e.cost;
                inner.lru.remove(&e.tick);
            }
        }
    }

    /// Tiles held and bytes charged.
    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock();
        CacheStats {
            tiles: g.layers.values().map(BTreeMap::len).sum(),
            bytes: g.bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tile::LonLatBbox;

    fn t(z: u8, x: u32, y: u32) -> TileId {
        TileId::new(z, x, y).unwrap()
    }

    fn b(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[test]
    fn versions_history_and_stale_inserts() {
        let c = TileCache::new(1 << 20, 2);
        let tile = t(3, 1, 2);
        let v1 = c.insert("roads", tile, 1, b(10, 1)).unwrap();
        assert_eq!(c.get("roads", tile), Some(v1.clone()));
        assert!(v1.etag.starts_with("\"1-") && v1.etag.ends_with('"'));
        c.insert("roads", tile, 2, b(10, 2)).unwrap();
        c.insert("roads", tile, 5, b(10, 5)).unwrap();
        assert!(matches!(
            c.insert("roads", tile, 5, b(1, 0)),
            Err(TileError::StaleVersion { current: 5, .. })
        ));
        assert_eq!(c.get("roads", tile).unwrap().version, 5);
        assert_eq!(c.version_bytes("roads", tile, 2), Some(b(10, 2)));
        assert_eq!(c.version_bytes("roads", tile, 1), Some(b(10, 1)));
        c.insert("roads", tile, 6, b(10, 6)).unwrap();
        // History holds two: versions 2 and 5; version 1 is gone.
        assert_eq!(c.version_bytes("roads", tile, 1), None);
        assert_eq!(c.version_bytes("roads", tile, 5), Some(b(10, 5)));
        assert_eq!(c.get("other", tile), None);
    }

    #[test]
    fn invalidation_keeps_bytes_for_deltas() {
        let c = TileCache::new(1 << 20, 4);
        let tile = t(2, 1, 1);
        c.insert("l", tile, 1, b(5, 1)).unwrap();
        assert!(c.invalidate("l", tile));
        assert!(!c.invalidate("l", tile));
        assert_eq!(c.get("l", tile), None);
        assert_eq!(c.version_bytes("l", tile, 1), Some(b(5, 1)));
        assert!(c.insert("l", tile, 1, b(5, 9)).is_err());
        c.insert("l", tile, 2, b(5, 2)).unwrap();
        assert_eq!(c.get("l", tile).unwrap().version, 2);
    }

    #[test]
    fn invalidate_older_spares_fresh_renders() {
        let c = TileCache::new(1 << 20, 4);
        let (a, b2, fresh) = (t(3, 1, 1), t(3, 2, 2), t(3, 1, 2));
        c.insert("l", a, 4, b(3, 1)).unwrap();
        c.insert("l", b2, 4, b(3, 2)).unwrap();
        // Rendered after change 7 was committed: it already shows it.
        c.insert("l", fresh, 7, b(3, 3)).unwrap();
        let world = [LonLatBbox::world()];
        let near = TilesNear {
            boxes: &world,
            margin: 1,
        };
        let hit = c.invalidate_older("l", 7, &near, |tile| tile != b2);
        assert_eq!(hit, vec![a]);
        assert!(c.get("l", a).is_none());
        assert!(c.get("l", b2).is_some());
        assert_eq!(c.get("l", fresh).unwrap().version, 7);
        // The invalidated bytes remain the latest known, for encode_tile_like.
        assert_eq!(c.latest("l", a), Some((4, b(3, 1))));
        assert_eq!(c.latest("l", fresh), Some((7, b(3, 3))));
        assert_eq!(c.latest("other", a), None);
        assert!(c.invalidate_older("missing", 9, &near, |_| true).is_empty());
        // Only the tiles near the change are looked at: a box inside `a` (3/1/1) reaches a
        // and the tiles next to it (fresh, b2), not 3/5/5.
        let far = t(3, 5, 5);
        c.insert("l", a, 8, b(3, 1)).unwrap();
        c.insert("l", far, 8, b(3, 4)).unwrap();
        let inside_a = [t(3, 1, 1).bounds_lonlat()];
        let near_a = TilesNear {
            boxes: &inside_a,
            margin: 1,
        };
        assert_eq!(
            c.invalidate_older("l", 9, &near_a, |_| true),
            vec![a, fresh, b2]
        );
        assert!(c.get("l", far).is_some(), "far from the change");
    }

    #[test]
    fn lru_eviction_by_bytes() {
        let per = 1000 + ENTRY_OVERHEAD + 16;
        let c = TileCache::new(per * 3, 0);
        for x in 0..3 {
            c.insert("l", t(4, x, 0), 1, b(1000, 0)).unwrap();
        }
        // Touch tile 0 so tile 1 is the least recently used.
        assert!(c.get("l", t(4, 0, 0)).is_some());
        c.insert("l", t(4, 3, 0), 1, b(1000, 0)).unwrap();
        assert!(c.get("l", t(4, 1, 0)).is_none());
        assert!(c.get("l", t(4, 0, 0)).is_some());
        assert!(c.get("l", t(4, 3, 0)).is_some());
        let s = c.stats();
        assert_eq!(s.tiles, 3);
        assert!(s.bytes <= per * 3);
        c.remove_layer("l");
        let s = c.stats();
        assert_eq!((s.tiles, s.bytes), (0, 0));
        assert_eq!((s.hits, s.misses), (3, 1));
    }

    #[test]
    fn shared_between_threads() {
        let c = Arc::new(TileCache::new(64 << 10, 2));
        let handles: Vec<_> = (0..4u32)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for v in 1..200u64 {
                        let tile = t(8, i, (v % 7) as u32);
                        let _ = c.insert("l", tile, v, Bytes::from(vec![i as u8; 300]));
                        let _ = c.get("l", tile);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(c.stats().bytes <= 64 << 10);
    }
}
