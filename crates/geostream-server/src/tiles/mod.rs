//! Tiles on a node: Mapbox Vector Tiles made from layers, raster tile layers (MBTiles /
//! PMTiles archives plus uploaded tiles), one versioned cache for both, and tile
//! subscriptions that push changed tiles as deltas.
//!
//! Versions. A vector tile's version is the layer's sequence number it was rendered at (so it
//! only grows, and is the same on every node for the same data); a change with sequence `s`
//! invalidates the cached tiles it touches (old and new bounding box, plus the tile buffer)
//! whose version is below `s`. A raster tile from an archive is version 1; every upload
//! raises it by at least one and is durable in the store (SQLite or PostgreSQL, the same one
//! as the layers) before it is acknowledged, so every node sharing the store serves the same
//! bytes under the same version and ETag.
//!
//! A render and a change can race: a render reads the layer at `s` while change `s + 1`
//! commits and invalidates. The cache would then keep a stale tile. So each layer keeps its
//! recent changes (sequence and bounding boxes); a render is cached only if none of the
//! changes after its sequence touches the tile, and recording a change and invalidating happen
//! under the same lock as that check and the insert.

mod decoded;
mod subs;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use geostream_core::bus::TileVersion;
use geostream_core::error::ErrorCode;
use geostream_core::feature::{BBox, Change, Geometry};
use geostream_filter::boxes_overlap;
use geostream_store::{KnownRow, LayerInfo, Store, TileAddress, TileStore};
use geostream_tiles::tile::world_to_lon_lat;
use geostream_tiles::{
    CachedTile, FeatureId, KeptFeature, LonLatBbox, MbTiles, MvtOptions, PmTiles, TileArchive,
    TileCache, TileCompression, TileError, TileFeature, TileFormat, TileId, TilesNear, encode_kept,
};
use parking_lot::Mutex;

use crate::backends::AnyStore;
use crate::config::{Config, TilesConfig};
use crate::error::{Result, ServerError};

pub(crate) use subs::{subscribe, update};

/// Changes remembered per layer to decide whether a finished render may be cached.
const RECENT_CHANGES: usize = 1024;

/// A raster tile layer.
pub(crate) struct RasterLayer {
    pub(crate) archive: Option<Box<dyn TileArchive>>,
    pub(crate) format: TileFormat,
    pub(crate) compression: TileCompression,
    read_only: bool,
}

impl RasterLayer {
    /// The HTTP media type of its tiles.
    pub(crate) fn content_type(&self) -> &'static str {
        self.format
            .content_type()
            .unwrap_or("application/octet-stream")
    }
}

/// What a tile layer name refers to.
pub(crate) enum TileLayer<'a> {
    /// Tiles made from a layer's features.
    Vector(LayerInfo),
    /// A configured raster layer.
    Raster(&'a RasterLayer),
}

/// Recent changes of one layer, oldest first.
#[derive(Default)]
struct Recent {
    changes: VecDeque<(u64, Vec<BBox>)>,
    /// Highest sequence number dropped from `changes` (a render at or above it can still be
    /// checked).
    forgotten: u64,
}

/// Counters, read by the benchmark and the metrics endpoint.
#[derive(Debug, Default)]
pub struct TileStats {
    /// Vector tiles rendered.
    pub rendered: AtomicU64,
    /// Time spent rendering (query + encode), in nanoseconds.
    pub render_nanos: AtomicU64,
    /// Bytes of vector tiles rendered.
    pub rendered_bytes: AtomicU64,
    /// Renders not cached because a change raced them.
    pub render_races: AtomicU64,
    /// Features renders decoded from the store.
    pub features_decoded: AtomicU64,
    /// Features renders took already decoded from an earlier render.
    pub features_reused: AtomicU64,
    /// `tile` pushes carrying a delta.
    pub pushed_deltas: AtomicU64,
    /// Bytes of those deltas.
    pub delta_bytes: AtomicU64,
    /// Bytes of the full tiles those deltas stood for.
    pub delta_full_bytes: AtomicU64,
    /// `tile` pushes carrying a full tile.
    pub pushed_full: AtomicU64,
    /// Bytes of those full tiles.
    pub full_bytes: AtomicU64,
    /// `tile` pushes that are notices.
    pub pushed_notices: AtomicU64,
    /// Pushes that did not fit a slow client's outbox and wait for the next flush.
    pub deferred: AtomicU64,
}

/// This node's tile service.
pub struct Tiles {
    pub(crate) cfg: TilesConfig,
    /// Where vector tiles' features come from, and where uploaded raster tiles are kept.
    store: AnyStore,
    pub(crate) cache: TileCache,
    rasters: HashMap<String, RasterLayer>,
    recent: Mutex<HashMap<Arc<str>, Recent>>,
    subs: Arc<subs::Registry>,
    /// Features decoded by earlier renders, so a re-render parses only what changed.
    decoded: Arc<decoded::DecodedFeatures>,
    /// Tiles a flush makes at once: one per core (rendering is CPU work on the blocking pool).
    render_width: usize,
    /// Counters.
    pub stats: TileStats,
}

impl std::fmt::Debug for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiles")
            .field("rasters", &self.rasters.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Opens an archive by its extension.
fn open_archive(path: &Path) -> std::result::Result<Box<dyn TileArchive>, TileError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("pmtiles") => Ok(Box::new(PmTiles::open(path)?)),
        _ => Ok(Box::new(MbTiles::open(path)?)),
    }
}

/// A parsed `z/x/y` (with an optional extension on `y`), checked against the pyramid.
pub(crate) fn parse_tile(z: &str, x: &str, y: &str) -> Result<(TileId, Option<String>)> {
    let (y, ext) = match y.split_once('.') {
        Some((y, e)) => (y, Some(e.to_ascii_lowercase())),
        None => (y, None),
    };
    let num = |what: &str, v: &str| -> Result<u32> {
        v.parse::<u32>().map_err(|_| {
            ServerError::invalid(format!(
                "invalid tile {z}/{x}/{y}: {what} must be a non-negative integer, got {v:?}"
            ))
        })
    };
    let (zn, xn, yn) = (num("z", z)?, num("x", x)?, num("y", y)?);
    Ok((tile_id(zn, xn, yn)?, ext))
}

/// A tile id, with an error naming the valid range.
pub(crate) fn tile_id(z: u32, x: u32, y: u32) -> Result<TileId> {
    let max = u32::from(geostream_tiles::MAX_ZOOM);
    if z > max {
        return Err(ServerError::invalid(format!(
            "invalid tile {z}/{x}/{y}: zoom must be 0 to {max}"
        )));
    }
    TileId::new(z as u8, x, y).map_err(|_| {
        ServerError::invalid(format!(
            "invalid tile {z}/{x}/{y}: at zoom {z}, x and y must be 0 to {}",
            (1u64 << z) - 1
        ))
    })
}

/// `"z/x/y"` to a tile id.
pub(crate) fn parse_key(key: &str) -> Result<TileId> {
    let mut it = key.split('/');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(z), Some(x), Some(y), None) if !y.contains('.') => Ok(parse_tile(z, x, y)?.0),
        _ => Err(ServerError::invalid(format!(
            "invalid tile {key:?}: expected \"z/x/y\""
        ))),
    }
}

/// A tile id as the store addresses it.
fn address(t: TileId) -> TileAddress {
    TileAddress {
        z: t.z(),
        x: t.x(),
        y: t.y(),
    }
}

/// A tile id as `"z/x/y"`.
pub(crate) fn key(t: TileId) -> String {
    format!("{}/{}/{}", t.z(), t.x(), t.y())
}

/// The lon/lat box a tile's content depends on: the tile plus its buffer (`frac` of a tile
/// on each side), reaching the poles and the antimeridian at the edges of the world (the
/// encoder clamps what lies beyond onto the edge tiles).
pub(crate) fn buffered_bounds(t: TileId, frac: f64) -> BBox {
    let n = f64::from(1u32 << t.z());
    let x0 = (f64::from(t.x()) - frac) / n;
    let x1 = (f64::from(t.x()) + 1.0 + frac) / n;
    let y0 = (f64::from(t.y()) - frac) / n;
    let y1 = (f64::from(t.y()) + 1.0 + frac) / n;
    let (mut w, mut north) = world_to_lon_lat(x0.max(0.0), y0.max(0.0));
    let (mut e, mut south) = world_to_lon_lat(x1.min(1.0), y1.min(1.0));
    if x0 <= 0.0 {
        w = -180.0;
    }
    if x1 >= 1.0 {
        e = 180.0;
    }
    if y0 <= 0.0 {
        north = 90.0;
    }
    if y1 >= 1.0 {
        south = -90.0;
    }
    [w, south, e, north]
}

/// A stored feature as the encoder takes it; `None` without a usable geometry.
fn tile_feature(
    id: &str,
    geometry: Option<&Geometry>,
    properties: serde_json::Map<String, serde_json::Value>,
) -> Option<TileFeature> {
    let geometry = (&geometry?.value).try_into().ok()?;
    let id = match id.parse::<u64>() {
        Ok(n) if n.to_string() == id => FeatureId::Int(n),
        _ => FeatureId::Str(id.to_owned()),
    };
    Some(TileFeature {
        id: Some(id),
        geometry,
        properties,
    })
}

impl Tiles {
    /// Opens the configured archives; vector tiles are made from `store`'s layers, and
    /// uploaded raster tiles are kept in `store`.
    pub fn open(config: &Config, store: AnyStore) -> anyhow::Result<Tiles> {
        use anyhow::Context;
        let cfg = config.tiles.clone();
        if cfg.max_zoom > geostream_tiles::MAX_ZOOM {
            anyhow::bail!(
                "tiles.max_zoom must be at most {}",
                geostream_tiles::MAX_ZOOM
            );
        }
        if cfg.extent == 0 || cfg.buffer > cfg.extent {
            anyhow::bail!("tiles.extent must be positive and tiles.buffer at most the extent");
        }
        let mut rasters = HashMap::new();
        for r in &cfg.raster {
            geostream_core::api::validate_name("tile layer", &r.name)
                .map_err(|e| anyhow::anyhow!("tiles.raster: {e}"))?;
            let archive = match &r.path {
                Some(p) => {
                    let path = config.data_path(p);
                    Some(open_archive(&path).with_context(|| {
                        format!(
                            "cannot open the tile archive {} of raster layer {:?}",
                            path.display(),
                            r.name
                        )
                    })?)
                }
                None => None,
            };
            let format = match (&r.format, &archive) {
                (Some(f), _) => TileFormat::from_name(f),
                (None, Some(a)) => a.info().format.clone(),
                (None, None) => TileFormat::Png,
            };
            let compression = archive
                .as_ref()
                .map_or(TileCompression::None, |a| a.info().compression);
            let layer = RasterLayer {
                archive,
                format,
                compression,
                read_only: r.read_only,
            };
            if rasters.insert(r.name.clone(), layer).is_some() {
                anyhow::bail!("tiles.raster: the name {:?} is used twice", r.name);
            }
        }
        Ok(Tiles {
            store,
            cache: TileCache::new(cfg.cache_bytes, cfg.history),
            decoded: Arc::new(decoded::DecodedFeatures::new(cfg.decoded_bytes)),
            cfg,
            rasters,
            recent: Mutex::new(HashMap::new()),
            subs: Arc::default(),
            render_width: std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
            stats: TileStats::default(),
        })
    }

    /// Starts the task that pushes changed tiles to subscribers.
    pub fn start(self: &Arc<Self>) {
        subs::spawn_flusher(self);
    }

    fn mvt_options(&self) -> MvtOptions {
        MvtOptions {
            extent: self.cfg.extent,
            buffer: self.cfg.buffer,
            simplify: true,
            max_features: self.cfg.max_features,
        }
    }

    fn buffer_frac(&self) -> f64 {
        f64::from(self.cfg.buffer) / f64::from(self.cfg.extent)
    }

    /// Cache statistics: tiles and bytes held, hits and misses.
    pub fn cache_stats(&self) -> geostream_tiles::CacheStats {
        self.cache.stats()
    }

    /// Names of the raster layers.
    pub(crate) fn raster_names(&self) -> impl Iterator<Item = &str> {
        self.rasters.keys().map(String::as_str)
    }

    pub(crate) fn raster(&self, name: &str) -> Option<&RasterLayer> {
        self.rasters.get(name)
    }

    /// What `name` is: a raster layer (configured names win) or a vector layer of the store.
    pub(crate) async fn layer(&self, name: &str) -> Result<TileLayer<'_>> {
        if let Some(r) = self.rasters.get(name) {
            return Ok(TileLayer::Raster(r));
        }
        Ok(TileLayer::Vector(self.store.layer(name).await?))
    }

    /// The current version of a tile of `layer`, from the cache or made afresh. `None` for a
    /// raster tile that does not exist.
    pub(crate) async fn tile(&self, layer: &str, t: TileId) -> Result<Option<CachedTile>> {
        if let Some(c) = self.cache.get(layer, t) {
            return Ok(Some(c));
        }
        match self.rasters.get(layer) {
            Some(r) => self.load_raster(layer, r, t).await,
            None => self.render(layer, t).await.map(Some),
        }
    }

    /// Renders a vector tile from the layer's features and caches it unless a change raced it.
    async fn render(&self, layer: &str, t: TileId) -> Result<CachedTile> {
        if t.z() > self.cfg.max_zoom {
            return Err(ServerError::invalid(format!(
                "zoom {} is above the highest vector tile zoom, {}",
                t.z(),
                self.cfg.max_zoom
            )));
        }
        let start = Instant::now();
        let bounds = buffered_bounds(t, self.buffer_frac());
        let name: Arc<str> = layer.into();
        let (decoded, key) = (self.decoded.clone(), name.clone());
        let page = self
            .store
            .query_known(layer, bounds, self.cfg.max_features, move |k| {
                decoded.get(&key, k.layer_created_ms, k.id, k.version)
            })
            .await?;
        let (seq, created) = (page.seq, page.layer_created_ms);
        let previous = self.cache.latest(layer, t);
        let opts = self.mvt_options();
        let decoded = self.decoded.clone();
        let reused = page
            .rows
            .iter()
            .filter(|r| matches!(r, KnownRow::Known(_)))
            .count();
        self.stats
            .features_reused
            .fetch_add(reused as u64, Ordering::Relaxed);
        self.stats
            .features_decoded
            .fetch_add((page.rows.len() - reused) as u64, Ordering::Relaxed);
        let encoded = tokio::task::spawn_blocking(move || {
            let features: Vec<Arc<KeptFeature>> = page
                .rows
                .into_iter()
                .filter_map(|row| match row {
                    KnownRow::Known(held) => held,
                    KnownRow::Fresh(f) => {
                        let (id, version) = (f.id.clone(), f.version);
                        let d = tile_feature(&f.id, f.geometry.as_ref(), f.properties)
                            .map(|f| Arc::new(KeptFeature::new(f)));
                        decoded.insert(&name, (created, version), &id, d.clone());
                        d
                    }
                })
                .collect();
            let previous = previous.as_ref().map(|(_, prev)| &prev[..]);
            encode_kept(t, &name, &features, &opts, previous)
        })
        .await
        .map_err(|e| ServerError::Internal(format!("tile render task failed: {e}")))?
        .map_err(|e| ServerError::Internal(format!("tile encoding failed: {e}")))?;
        let bytes = Bytes::from(encoded.bytes);
        self.stats.rendered.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rendered_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.stats
            .render_nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(self.insert_checked(layer, t, seq, bytes))
    }

    /// Caches a vector tile rendered at `seq` unless a later change touches it; returns it
    /// either way (it is a consistent picture of the layer at `seq`).
    fn insert_checked(&self, layer: &str, t: TileId, seq: u64, bytes: Bytes) -> CachedTile {
        let frac = self.buffer_frac();
        let recent = self.recent.lock();
        let raced = recent.get(layer).is_some_and(|r| {
            seq < r.forgotten
                || r.changes.iter().any(|(s, boxes)| {
                    *s > seq && {
                        let b = buffered_bounds(t, frac);
                        boxes.iter().any(|x| boxes_overlap(*x, b))
                    }
                })
        });
        let uncached = |bytes: Bytes| CachedTile {
            version: seq,
            etag: format!("\"{seq}-{:08x}\"", geostream_tiles::delta::checksum(&bytes)).into(),
            bytes,
        };
        if raced {
            self.stats.render_races.fetch_add(1, Ordering::Relaxed);
            // Not current, but a real version a subscriber may be sent: keep its bytes among
            // the older versions, so the next push to that subscriber can be a delta.
            if self.cache.insert(layer, t, seq, bytes.clone()).is_ok() {
                self.cache.invalidate(layer, t);
            }
            return uncached(bytes);
        }
        match self.cache.insert(layer, t, seq, bytes.clone()) {
            Ok(c) => c,
            // Another render of the same version got there first: same data.
            Err(_) => self
                .cache
                .get(layer, t)
                .filter(|c| c.version == seq)
                .unwrap_or_else(|| uncached(bytes)),
        }
    }

    async fn load_raster(
        &self,
        layer: &str,
        r: &RasterLayer,
        t: TileId,
    ) -> Result<Option<CachedTile>> {
        let uploaded = self.store.get_tile(layer, address(t)).await?;
        let found = match uploaded {
            Some((version, bytes)) => Some((version, Bytes::from(bytes))),
            None => match &r.archive {
                Some(a) => a
                    .get(t.z(), t.x(), t.y())
                    .map_err(|e| ServerError::Internal(format!("tile archive: {e}")))?
                    .map(|b| (1, b)),
                None => None,
            },
        };
        let Some((version, bytes)) = found else {
            return Ok(None);
        };
        Ok(Some(
            match self.cache.insert(layer, t, version, bytes.clone()) {
                Ok(c) => c,
                Err(_) => match self.cache.get(layer, t) {
                    Some(c) if c.version >= version => c,
                    _ => CachedTile {
                        version,
                        etag: format!(
                            "\"{version}-{:08x}\"",
                            geostream_tiles::delta::checksum(&bytes)
                        )
                        .into(),
                        bytes,
                    },
                },
            },
        ))
    }

    /// Stores an uploaded raster tile durably and caches it (the caller tells every node).
    /// Returns the new version and whether it replaced a tile.
    pub(crate) async fn upload(
        &self,
        layer: &str,
        t: TileId,
        data: Bytes,
    ) -> Result<(CachedTile, bool)> {
        let Some(r) = self.rasters.get(layer) else {
            return Err(ServerError::new(
                ErrorCode::LayerNotFound,
                format!("no raster tile layer {layer:?}"),
            ));
        };
        if r.read_only {
            return Err(ServerError::new(
                ErrorCode::Forbidden,
                format!("raster layer {layer:?} is read-only"),
            ));
        }
        // Archive tiles are version 1, so an upload starts at 2.
        let floor = if r.archive.is_some() { 2 } else { 1 };
        let existed_in_archive = match &r.archive {
            Some(a) => a
                .get(t.z(), t.x(), t.y())
                .map_err(|e| ServerError::Internal(format!("tile archive: {e}")))?
                .is_some(),
            None => false,
        };
        let stored = self
            .store
            .put_tile(layer, address(t), data.to_vec(), floor)
            .await?;
        let cached = self
            .cache
            .insert(layer, t, stored.version, data.clone())
            .unwrap_or_else(|_| CachedTile {
                version: stored.version,
                etag: format!(
                    "\"{}-{:08x}\"",
                    stored.version,
                    geostream_tiles::delta::checksum(&data)
                )
                .into(),
                bytes: data,
            });
        Ok((cached, stored.previous.is_some() || existed_in_archive))
    }

    /// Number of uploaded tiles of a layer and their zoom range (for TileJSON).
    pub(crate) async fn uploads_summary(&self, layer: &str) -> Result<Option<(u8, u8)>> {
        Ok(self.store.tile_zooms(layer).await?)
    }

    /// A layer change arrived (from the broker, on every node): invalidate the cached tiles it
    /// touches and queue the subscribed ones for a push.
    pub fn on_change(&self, c: &Change) {
        let boxes: Vec<BBox> = [c.old_bbox, c.new_bbox].into_iter().flatten().collect();
        if boxes.is_empty() {
            return;
        }
        let layer: Arc<str> = Arc::from(c.layer.as_str());
        if let Some(new) = &c.new {
            // The features renders keep move on with the change, so the next render of the
            // edited feature's tiles neither parses it nor, when only its properties changed,
            // draws it again.
            self.decoded.advance(&layer, &c.id, c.version, |before| {
                let f = tile_feature(&new.id, new.geometry.as_ref(), new.properties.clone())?;
                Some(Arc::new(match before {
                    Some(kept) => kept.successor(f),
                    None => KeptFeature::new(f),
                }))
            });
        }
        let frac = self.buffer_frac();
        let touches = |t: TileId| {
            let b = buffered_bounds(t, frac);
            boxes.iter().any(|x| boxes_overlap(*x, b))
        };
        // Where to look: the cached and subscribed tiles near the change's boxes, not all of
        // the layer's.
        let lon_lat: Vec<LonLatBbox> = boxes
            .iter()
            .map(|b| LonLatBbox {
                west: b[0],
                south: b[1],
                east: b[2],
                north: b[3],
            })
            .collect();
        let near = TilesNear::new(&lon_lat, frac);
        {
            let mut recent = self.recent.lock();
            let r = recent.entry(layer).or_default();
            r.changes.push_back((c.seq, boxes.clone()));
            while r.changes.len() > RECENT_CHANGES {
                if let Some((s, _)) = r.changes.pop_front() {
                    r.forgotten = r.forgotten.max(s);
                }
            }
            self.cache.invalidate_older(&c.layer, c.seq, &near, touches);
        }
        self.subs.mark(&c.layer, &near, touches);
    }

    /// A raster tile was uploaded (on some node): drop older cached versions and queue it for
    /// its subscribers.
    pub(crate) fn on_upload(&self, layer: &str, u: &TileVersion) {
        let Ok(t) = TileId::new(u.z, u.x, u.y) else {
            return;
        };
        let own = [t.bounds_lonlat()];
        // The tile itself and its neighbours, which the exact test then leaves out.
        let near = TilesNear::new(&own, 0.0);
        self.cache
            .invalidate_older(layer, u.version, &near, |x| x == t);
        self.subs.mark(layer, &near, |x| x == t);
    }

    /// Appends the tile service's metrics.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::{counter, gauge};
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        counter(
            out,
            "geostream_tiles_rendered_total",
            "Vector tiles rendered from layers.",
            &[("", n(&s.rendered))],
        );
        counter(
            out,
            "geostream_tile_render_seconds_total",
            "Time spent rendering vector tiles (reading the features and encoding).",
            &[("", n(&s.render_nanos) / 1e9)],
        );
        counter(
            out,
            "geostream_tile_render_races_total",
            "Renders left uncached because a change committed while they read.",
            &[("", n(&s.render_races))],
        );
        counter(
            out,
            "geostream_tile_features_total",
            "Features read by renders: decoded from the store, or reused as an earlier render \
             decoded them or as a change brought them (tiles.decoded_bytes).",
            &[
                ("source=\"decoded\"", n(&s.features_decoded)),
                ("source=\"reused\"", n(&s.features_reused)),
            ],
        );
        let cache = self.cache.stats();
        counter(
            out,
            "geostream_tile_cache_lookups_total",
            "Tile lookups in the tile cache: a current version found (hit), or none (miss: \
             rendered, or read from a raster source).",
            &[
                ("result=\"hit\"", cache.hits as f64),
                ("result=\"miss\"", cache.misses as f64),
            ],
        );
        gauge(
            out,
            "geostream_tile_cache_bytes",
            "Bytes of tiles held by the tile cache (bounded by tiles.cache_bytes).",
            &[("", cache.bytes as f64)],
        );
        gauge(
            out,
            "geostream_tile_cache_tiles",
            "Tiles held by the tile cache (current versions and the history kept for deltas).",
            &[("", cache.tiles as f64)],
        );
        gauge(
            out,
            "geostream_tile_decoded_features",
            "Features kept decoded between renders.",
            &[("", self.decoded.len() as f64)],
        );
        gauge(
            out,
            "geostream_tile_decoded_bytes",
            "Estimated bytes of the features kept decoded (bounded by tiles.decoded_bytes).",
            &[("", self.decoded.bytes() as f64)],
        );
        counter(
            out,
            "geostream_tile_pushes_total",
            "Tile pushes to subscribers, by what they carried.",
            &[
                ("kind=\"delta\"", n(&s.pushed_deltas)),
                ("kind=\"full\"", n(&s.pushed_full)),
                ("kind=\"notice\"", n(&s.pushed_notices)),
            ],
        );
        counter(
            out,
            "geostream_tile_push_bytes_total",
            "Bytes of tiles and deltas pushed to subscribers.",
            &[
                ("kind=\"delta\"", n(&s.delta_bytes)),
                ("kind=\"full\"", n(&s.full_bytes)),
            ],
        );
    }

    /// A layer was deleted: forget its tiles and end its tile subscriptions.
    pub fn on_layer_deleted(&self, hub: &geostream_hub::Hub, layer: &str) {
        self.cache.remove_layer(layer);
        self.decoded.forget_layer(layer);
        self.recent.lock().remove(layer);
        self.subs.drop_layer(hub, layer);
    }

    /// A subscription ended (unsubscribe or disconnect).
    pub fn on_unsubscribed(&self, session: &str, sub: u32) {
        self.subs.remove(session, sub);
    }
}
