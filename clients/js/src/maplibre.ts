/**
 * MapLibre GL JS adapter. Two bindings:
 *
 * - {@link bindFeatureSource}: a layer subscription kept on the map's viewport, applied to a
 *   GeoJSON source with `updateData` diffs (only what changed is sent to the map's worker);
 * - {@link bindTileSource}: a tile subscription in `notify` mode kept on the viewport; each
 *   changed tile is refetched with `map.refreshTiles`, the others stay as they are.
 *
 * The adapter uses only the map methods named in {@link MapLike}, so it does not import
 * maplibre-gl itself (the page brings its own copy).
 */
import type { GeostreamClient } from "./client.js";
import type { FeatureChange, LayerSubscription, TileSubscription } from "./subscriptions.js";
import type { Feature, FilterSpec } from "./types.js";

/** The bounds API of `map.getBounds()`. */
export interface BoundsLike {
  getWest(): number;
  getSouth(): number;
  getEast(): number;
  getNorth(): number;
}

/** The map methods the adapter uses (a `maplibregl.Map` has all of them). */
export interface MapLike {
  getBounds(): BoundsLike;
  getZoom(): number;
  on(type: string, fn: () => void): unknown;
  off(type: string, fn: () => void): unknown;
  getSource(id: string): unknown;
  refreshTiles?(sourceId: string, tiles?: { x: number; y: number; z: number }[]): void;
}

/** A GeoJSON feature as MapLibre takes it. */
export interface MapFeature {
  type: "Feature";
  id: string;
  geometry: Feature["geometry"];
  properties: Record<string, unknown>;
}

/** MapLibre's `GeoJSONSourceDiff`. */
export interface GeoJsonDiff {
  removeAll?: boolean;
  remove?: string[];
  add?: MapFeature[];
  update?: {
    id: string;
    newGeometry?: Feature["geometry"];
    removeAllProperties?: boolean;
    removeProperties?: string[];
    addOrUpdateProperties?: { key: string; value: unknown }[];
  }[];
}

type DiffUpdate = NonNullable<GeoJsonDiff["update"]>[number];

/** The GeoJSON source methods the adapter uses. */
export interface GeoJsonSourceLike {
  setData(data: { type: "FeatureCollection"; features: MapFeature[] }): unknown;
  updateData(diff: GeoJsonDiff): unknown;
}

export interface FeatureSourceOptions {
  /** The GeoJSON source to fill (create it with empty data first). */
  sourceId: string;
  /** The layer to subscribe to. */
  layer: string;
  /** Filter parts other than the viewport (CQL2, datetime). */
  filter?: Omit<FilterSpec, "bbox">;
  /** Follow the viewport (default true); false subscribes to the whole layer. */
  followViewport?: boolean;
  /** Extra margin around the view, as a fraction of its size. Default 0.25. */
  padding?: number;
  /** Wait this long after the map stops before moving the subscription, in ms. Default 100. */
  debounceMs?: number;
  /** Turns a held feature into what the source shows (default: adds `version`). */
  toMapFeature?: (f: Feature) => MapFeature;
  /** Called after each batch is applied to the source. */
  onApplied?: (stats: { added: number; updated: number; removed: number; full: boolean }) => void;
}

/** A live binding; `close()` ends the subscription and stops following the map. */
export interface FeatureSourceBinding {
  readonly subscription: LayerSubscription;
  close(): void;
}

/** The viewport as a bbox, grown by `padding` and clamped to valid coordinates. */
export function viewportBbox(map: MapLike, padding = 0.25): [number, number, number, number] {
  const b = map.getBounds();
  const w = b.getEast() - b.getWest();
  const h = b.getNorth() - b.getSouth();
  let west = b.getWest() - w * padding;
  let east = b.getEast() + w * padding;
  if (east - west >= 360) {
    west = -180;
    east = 180;
  }
  const clampLon = (x: number): number => Math.max(-180, Math.min(180, x));
  const clampLat = (y: number): number => Math.max(-90, Math.min(90, y));
  return [clampLon(west), clampLat(b.getSouth() - h * padding), clampLon(east), clampLat(b.getNorth() + h * padding)];
}

function defaultMapFeature(f: Feature): MapFeature {
  return { type: "Feature", id: f.id, geometry: f.geometry, properties: { ...f.properties, version: f.version } };
}

const nextFrame: (fn: () => void) => void =
  typeof requestAnimationFrame === "function" ? (fn) => requestAnimationFrame(() => fn()) : (fn) => setTimeout(fn, 16);

/**
 * Keeps a GeoJSON source in step with a layer subscription that follows the viewport.
 * Changes are batched per animation frame; a batch becomes one `updateData` diff (adds,
 * removes, and property / geometry updates), except the first snapshot and resyncs, which
 * replace the data with `setData`.
 */
export function bindFeatureSource(map: MapLike, client: GeostreamClient, opts: FeatureSourceOptions): FeatureSourceBinding {
  const follow = opts.followViewport ?? true;
  const padding = opts.padding ?? 0.25;
  const toMap = opts.toMapFeature ?? defaultMapFeature;
  const filter: FilterSpec = { ...(opts.filter ?? {}) };
  if (follow) filter.bbox = viewportBbox(map, padding);
  const sub = client.subscribeLayer(opts.layer, filter);
  const source = (): GeoJsonSourceLike | undefined => map.getSource(opts.sourceId) as GeoJsonSourceLike | undefined;

  /** Ids the source shows now. */
  const shown = new Set<string>();
  /** Changes since the last flush, by id. */
  const pending = new Map<string, { patch: FeatureChange["patch"] | null; gone: boolean }>();
  let full = true; // the first batch replaces everything
  let scheduled = false;

  const flush = (): void => {
    scheduled = false;
    const src = source();
    if (!src) {
      schedule();
      return;
    }
    if (full) {
      full = false;
      pending.clear();
      shown.clear();
      const features = [...sub.features.values()].map(toMap);
      for (const f of features) shown.add(f.id);
      src.setData({ type: "FeatureCollection", features });
      opts.onApplied?.({ added: features.length, updated: 0, removed: 0, full: true });
      return;
    }
    const diff: Required<Pick<GeoJsonDiff, "add" | "remove" | "update">> = { add: [], remove: [], update: [] };
    for (const [id, p] of pending) {
      const f = sub.features.get(id);
      if (!f || p.gone) {
        if (shown.delete(id)) diff.remove.push(id);
        if (!f) continue;
      }
      if (!shown.has(id)) {
        diff.add.push(toMap(f));
        shown.add(id);
      } else if (p.patch) {
        // A partial update: send only what changed, and the new version.
        const mf = toMap(f);
        const u: DiffUpdate = { id };
        if (p.patch.geometry !== undefined) u.newGeometry = mf.geometry;
        const entries = Object.entries(p.patch.properties ?? {});
        const removed = entries.filter(([, v]) => v === null).map(([k]) => k);
        const set = entries.filter(([, v]) => v !== null).map(([key]) => ({ key, value: mf.properties[key] }));
        set.push({ key: "version", value: mf.properties.version });
        if (removed.length) u.removeProperties = removed;
        u.addOrUpdateProperties = set;
        diff.update.push(u);
      } else {
        // A whole new state (two changes in one batch, or a full update): replace the feature.
        // Not an `update` with `removeAllProperties`: MapLibre 6 then drops the properties
        // added in the same update, and draws the feature with none.
        diff.add.push(toMap(f));
      }
    }
    pending.clear();
    if (diff.add.length + diff.remove.length + diff.update.length === 0) return;
    src.updateData(diff);
    opts.onApplied?.({ added: diff.add.length, updated: diff.update.length, removed: diff.remove.length, full: false });
  };

  const schedule = (): void => {
    if (scheduled) return;
    scheduled = true;
    nextFrame(flush);
  };

  const offEvent = sub.on("event", (e) => {
    if (e.type === "resync") {
      full = true;
      schedule();
      return;
    }
    if (e.type !== "change") return;
    const prev = pending.get(e.id);
    const gone = e.kind === "exit" || e.kind === "delete";
    // Two partial updates in one batch become one full update (the feature is held whole).
    const patch = e.kind === "update" && e.patch && !prev ? e.patch : null;
    pending.set(e.id, { patch: prev ? null : patch, gone: gone || (prev?.gone ?? false) });
    schedule();
  });
  const offSynced = sub.on("event", (e) => {
    if (e.type === "synced" && shown.size === 0 && sub.features.size > 0) {
      full = true;
      schedule();
    }
  });

  let moveTimer: ReturnType<typeof setTimeout> | null = null;
  const onMove = (): void => {
    if (moveTimer) clearTimeout(moveTimer);
    moveTimer = setTimeout(() => {
      moveTimer = null;
      void sub.setFilter({ ...(opts.filter ?? {}), bbox: viewportBbox(map, padding) }).catch(() => undefined);
    }, opts.debounceMs ?? 100);
  };
  if (follow) map.on("moveend", onMove);
  schedule();

  return {
    subscription: sub,
    close() {
      if (follow) map.off("moveend", onMove);
      if (moveTimer) clearTimeout(moveTimer);
      offEvent();
      offSynced();
      sub.close();
    },
  };
}

export interface TileSourceOptions {
  /** The vector (or raster) source whose tiles come from geostream over HTTP. */
  sourceId: string;
  /** The geostream layer behind it. */
  layer: string;
  /** The source's largest zoom (tiles above it are overzoomed). Default 14. */
  maxzoom?: number;
  /** The source's smallest zoom. Default 0. */
  minzoom?: number;
  /** Called for each tile refreshed. */
  onRefresh?: (tile: { z: number; x: number; y: number; version: number }) => void;
}

/** A live tile binding. */
export interface TileSourceBinding {
  readonly subscription: TileSubscription;
  close(): void;
}

/** The zoom level of the tiles a source shows at the map's zoom. */
export function tileZoom(map: MapLike, minzoom = 0, maxzoom = 14): number {
  return Math.max(minzoom, Math.min(maxzoom, Math.floor(map.getZoom())));
}

/**
 * Keeps a tile subscription (mode `notify`) on the viewport and refreshes exactly the tiles
 * the server reports as changed. The tiles themselves are fetched by MapLibre over HTTP
 * (with ETags), so unchanged tiles are never fetched again.
 */
export function bindTileSource(map: MapLike, client: GeostreamClient, opts: TileSourceOptions): TileSourceBinding {
  const selection = () => ({
    viewport: { bbox: viewportBbox(map, 0), zoom: tileZoom(map, opts.minzoom ?? 0, opts.maxzoom ?? 14) },
  });
  const sub = client.subscribeTiles(opts.layer, selection(), "notify");
  // The first notice of each tile only reports the version the map has just loaded.
  const seen = new Set<string>();
  const off = sub.on("event", (e) => {
    if (!seen.has(e.tile)) {
      seen.add(e.tile);
      return;
    }
    map.refreshTiles?.(opts.sourceId, [{ x: e.x, y: e.y, z: e.z }]);
    opts.onRefresh?.({ z: e.z, x: e.x, y: e.y, version: e.version });
  });
  const onMove = (): void => {
    void sub.setSelection(selection()).catch(() => undefined);
  };
  map.on("moveend", onMove);
  return {
    subscription: sub,
    close() {
      map.off("moveend", onMove);
      off();
      sub.close();
    },
  };
}
