/**
 * The collaborative map: a MapLibre map over geostream's own vector tiles of Natural Earth
 * countries, live ships in New York harbor, and a layer everyone here draws on together.
 * It uses only the public API of the geostream client and its MapLibre adapter.
 *
 * Edits go through the client's outbox with the version they were based on and, kept with
 * them, the feature as it was then; an edit the server refuses because someone else changed
 * the feature meanwhile becomes a conflict the page keeps (over reloads) until its author
 * chooses: keep mine, keep theirs, or merge (see conflicts.ts).
 */
import * as maplibregl from "maplibre-gl";
import type { GeoJSONSource, MapMouseEvent, MapTouchEvent } from "maplibre-gl";

import {
  GeostreamClient,
  IndexedDbOutboxStore,
  MemoryOutboxStore,
  RpcError,
  State,
  changesBetween,
  propertiesPatch,
  randomId,
  type ClientInfo,
  type Cursor,
  type EditResult,
  type Feature,
  type FeatureContent,
  type Geometry,
  type OutboxStore,
} from "../../clients/js/src/index.js";
import { bindFeatureSource, bindTileSource, type FeatureSourceBinding } from "../../clients/js/src/maplibre.js";
import type { PresenceSubscription } from "../../clients/js/src/subscriptions.js";
import { Conflicts, type EditMeta } from "./conflicts.js";
import { History, type HistoryItem } from "./history.js";
import { featuresFromFile, layerAsGeoJson } from "./io.js";
import { shipDetails } from "./ships.js";
import { geometryAnchor, handlesOf, moveVertex, insertVertex, removeVertex, translate, type Handle } from "./geometry.js";

/** MapLibre's worker, under its content-hashed name (set by build.mjs). */
declare const __WORKER_URL__: string;
/** Harbor-scale land of New York harbor (OpenStreetMap), under its hashed name. */
declare const __HARBOR_LAND_URL__: string;
/** The box it covers: inside it, it replaces the countries' coarse coast. */
const HARBOR_BOX: [number, number, number, number] = [-74.4, 40.4, -73.6, 41.0];
maplibregl.setWorkerUrl(__WORKER_URL__);

const LAYER = "draw";
const BASEMAP = "countries";
const SHIPS = "ships";
const HARBOR: [number, number] = [-74.03, 40.64];
const HARBOR_ZOOM = 10.6;
const CHAT = "demo.chat";
const LOCK_TTL_MS = 60_000;
/** Properties the page writes itself: shown as facts, not as fields to edit. */
const INTERNAL = new Set(["author", "kind", "edited_by"]);

// ---- who am I ---------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const stored = (k: string, make: () => string): string => {
  let v = localStorage.getItem(k);
  if (!v) localStorage.setItem(k, (v = make()));
  return v;
};
const clientId = stored("geostream.clientId", randomId);
if (params.get("name")) localStorage.setItem("geostream.name", params.get("name")!);
let myName = stored("geostream.name", () => `Guest-${clientId.slice(0, 4)}`);
const COLORS = ["#e5484d", "#3e63dd", "#30a46c", "#f76808", "#8e4ec6", "#d6409f", "#0091ff", "#ad7f58"];
const colorOf = (id: string): string => COLORS[[...id].reduce((a, c) => (a * 31 + c.charCodeAt(0)) >>> 0, 7) % COLORS.length]!;
const myColor = colorOf(clientId);

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

/** A message at the bottom of the map that goes away by itself (or with its button). */
function toast(msg: string, opts: { error?: boolean; ms?: number; action?: { label: string; run: () => void } } = {}): void {
  if (!msg) return;
  const el = document.createElement("div");
  el.className = `toast${opts.error ? " error" : ""}`;
  el.textContent = msg;
  if (opts.action) {
    const b = document.createElement("button");
    b.textContent = opts.action.label;
    b.style.marginLeft = "8px";
    b.addEventListener("click", () => {
      el.remove();
      opts.action!.run();
    });
    el.append(b);
  }
  const box = $("toasts");
  box.append(el);
  while (box.children.length > 4) box.firstElementChild!.remove();
  setTimeout(() => el.remove(), opts.ms ?? 6000);
}

// ---- the client -------------------------------------------------------------------------

let outbox: OutboxStore;
try {
  outbox = new IndexedDbOutboxStore(`geostream-outbox:${location.host}:${clientId}`);
} catch {
  outbox = new MemoryOutboxStore();
}
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
const client = new GeostreamClient({
  url: wsUrl,
  clientId,
  info: { name: myName, color: myColor, clientId },
  outbox,
  clientName: "geostream-web-demo",
});

/**
 * Names of the people seen here, by client id: from presence, and remembered (so a lock or
 * an edit of someone who has left still shows a name).
 */
const NAMES_KEY = `geostream.names:${location.host}`;
const knownNames = new Map<string, { name: string; color: string }>(
  (() => {
    try {
      return Object.entries(JSON.parse(localStorage.getItem(NAMES_KEY) ?? "{}") as Record<string, { name: string; color: string }>);
    } catch {
      return [];
    }
  })(),
);
const present = new Set<string>();
function rememberName(cid: string, name: string, color: string): void {
  const had = knownNames.get(cid);
  if (had?.name === name && had.color === color) return;
  knownNames.set(cid, { name, color });
  localStorage.setItem(NAMES_KEY, JSON.stringify(Object.fromEntries(knownNames)));
}
rememberName(clientId, myName, myColor);
const nameOf = (cid: string): string => (cid === clientId ? "you" : (knownNames.get(cid)?.name ?? "someone who has left"));
const colorOfClient = (cid: string): string => (cid === clientId ? myColor : (knownNames.get(cid)?.color ?? "#555"));

// ---- connection indicator ---------------------------------------------------------------

let attempt = 0;
function renderStatus(): void {
  const el = $("status");
  const s = client.state;
  el.dataset.state = s;
  const text =
    s === State.Connected
      ? "connected"
      : s === State.Connecting && attempt > 0
        ? `reconnecting… (attempt ${attempt})`
        : s === State.Connecting
          ? "connecting…"
          : s === State.Disconnected
            ? "offline"
            : "closed";
  $("status-text").textContent = text;
  const pending = client.pendingEdits().length;
  const q = $("queued");
  q.hidden = pending === 0;
  q.textContent = `${pending} edit${pending === 1 ? "" : "s"} queued`;
  q.dataset.count = String(pending);
}
client.on("state", renderStatus);
client.on("reconnecting", (r) => {
  attempt = r.attempt;
  renderStatus();
});
client.on("connected", () => {
  attempt = 0;
  renderStatus();
  void relockAfterReconnect();
});
client.on("disconnected", () => {
  // Locks are the server's: without a connection the page cannot know them. Drop them from
  // the map, and our own: whoever edits offline is told their changes are checked later.
  binding?.subscription.locks.clear();
  if (selected) {
    clearInterval(selected.renew);
    selected.locked = false;
  }
  renderLocks();
});
client.on("outbox", () => {
  renderStatus();
  renderPending();
});

// ---- the map ----------------------------------------------------------------------------

/** `?at=lon,lat,zoom` opens there; otherwise the harbor, where the ships are. */
const at = (params.get("at") ?? "").split(",").map(Number);
const start = at.length === 3 && at.every(Number.isFinite) ? { center: [at[0]!, at[1]!] as [number, number], zoom: at[2]! } : { center: HARBOR, zoom: HARBOR_ZOOM };

const map = new maplibregl.Map({
  container: "map",
  style: {
    version: 8,
    sources: {},
    layers: [{ id: "sea", type: "background", paint: { "background-color": "#a9c7e4" } }],
  },
  ...start,
  attributionControl: { compact: false, customAttribution: "Made with Natural Earth · geostream" },
  doubleClickZoom: false,
});
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");

const empty = { type: "FeatureCollection" as const, features: [] };
const setSource = (id: string, features: object[]): void => {
  (map.getSource(id) as GeoJSONSource | undefined)?.setData({ type: "FeatureCollection", features: features as never });
};

async function addBasemap(): Promise<void> {
  // geostream's own vector tiles of the countries layer; TileJSON gives URLs and zooms.
  const res = await fetch(`/v1/tiles/${BASEMAP}.json`).catch(() => null);
  const before = map.getLayer("ships") ? "ships" : undefined;
  if (res?.ok) {
    const tj = (await res.json()) as { maxzoom?: number };
    map.addSource(BASEMAP, { type: "vector", url: `/v1/tiles/${BASEMAP}.json`, attribution: "Made with Natural Earth" });
    map.addLayer({ id: "land", type: "fill", source: BASEMAP, "source-layer": BASEMAP, paint: { "fill-color": "#f2efe6" } }, before);
    map.addLayer({ id: "borders", type: "line", source: BASEMAP, "source-layer": BASEMAP, paint: { "line-color": "#9a8f7e", "line-width": 0.6 } }, before);
    bindTileSource(map, client, { sourceId: BASEMAP, layer: BASEMAP, maxzoom: Math.min(tj.maxzoom ?? 14, 14) });
    return;
  }
  // A server without tiles: draw the same layer from its features.
  const r = await client.queryFeatures(BASEMAP, {}, { limit: 1000 });
  map.addSource(BASEMAP, { type: "geojson", data: { type: "FeatureCollection", features: r.features as never } });
  map.addLayer({ id: "land", type: "fill", source: BASEMAP, paint: { "fill-color": "#f2efe6" } }, before);
  map.addLayer({ id: "borders", type: "line", source: BASEMAP, paint: { "line-color": "#9a8f7e", "line-width": 0.6 } }, before);
}

/** The harbor's own land, over a sea patch of its box, from zoom 8 (where Natural Earth is too coarse). */
function addHarborLand(): void {
  const [w, s, e, n] = HARBOR_BOX;
  map.addSource("harbor-box", { type: "geojson", data: { type: "Feature", properties: {}, geometry: { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] } } });
  map.addSource("harbor-land", { type: "geojson", data: __HARBOR_LAND_URL__, attribution: "Harbor coast © OpenStreetMap contributors (ODbL)" });
  const before = map.getLayer("ships") ? "ships" : undefined;
  map.addLayer({ id: "harbor-sea", type: "fill", source: "harbor-box", minzoom: 8, paint: { "fill-color": "#a9c7e4" } }, before);
  map.addLayer({ id: "harbor-land", type: "fill", source: "harbor-land", minzoom: 8, paint: { "fill-color": "#f2efe6" } }, before);
  map.addLayer({ id: "harbor-coast", type: "line", source: "harbor-land", minzoom: 8, paint: { "line-color": "#9a8f7e", "line-width": 0.6 } }, before);
}

function addDrawLayers(): void {
  for (const id of [LAYER, "pending", "locks", "sketch", "selected", "vertices"]) map.addSource(id, { type: "geojson", data: empty });
  const color = ["coalesce", ["get", "color"], "#3e63dd"] as unknown as string;
  map.addLayer({ id: "draw-fill", type: "fill", source: LAYER, filter: ["==", ["geometry-type"], "Polygon"], paint: { "fill-color": color, "fill-opacity": 0.35 } });
  map.addLayer({ id: "draw-line", type: "line", source: LAYER, filter: ["!=", ["geometry-type"], "Point"], paint: { "line-color": color, "line-width": 3 } });
  map.addLayer({ id: "draw-point", type: "circle", source: LAYER, filter: ["==", ["geometry-type"], "Point"], paint: { "circle-color": color, "circle-radius": 7, "circle-stroke-color": "#fff", "circle-stroke-width": 2 } });
  map.addLayer({ id: "pending-line", type: "line", source: "pending", filter: ["!=", ["geometry-type"], "Point"], paint: { "line-color": "#66768a", "line-width": 2, "line-dasharray": [2, 2] } });
  map.addLayer({ id: "pending-point", type: "circle", source: "pending", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-color": "#fff", "circle-radius": 6, "circle-stroke-color": "#66768a", "circle-stroke-width": 2 } });
  map.addLayer({ id: "locks-line", type: "line", source: "locks", filter: ["!=", ["geometry-type"], "Point"], paint: { "line-color": ["get", "color"] as unknown as string, "line-width": 5, "line-opacity": 0.7 } });
  map.addLayer({ id: "locks-point", type: "circle", source: "locks", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-color": "rgba(0,0,0,0)", "circle-radius": 12, "circle-stroke-color": ["get", "color"] as unknown as string, "circle-stroke-width": 3 } });
  map.addLayer({ id: "selected-line", type: "line", source: "selected", filter: ["!=", ["geometry-type"], "Point"], paint: { "line-color": "#111", "line-width": 2, "line-dasharray": [1, 1] } });
  map.addLayer({ id: "selected-point", type: "circle", source: "selected", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-color": "rgba(0,0,0,0)", "circle-radius": 10, "circle-stroke-color": "#111", "circle-stroke-width": 2 } });
  map.addLayer({ id: "vertex-mid", type: "circle", source: "vertices", filter: ["==", ["get", "mid"], true], paint: { "circle-color": "#c3cad3", "circle-radius": 4, "circle-stroke-color": "#111", "circle-stroke-width": 1 } });
  map.addLayer({ id: "vertex", type: "circle", source: "vertices", filter: ["==", ["get", "mid"], false], paint: { "circle-color": "#fff", "circle-radius": 6, "circle-stroke-color": "#111", "circle-stroke-width": 2 } });
  map.addLayer({ id: "sketch-line", type: "line", source: "sketch", paint: { "line-color": myColor, "line-width": 2, "line-dasharray": [2, 1] } });
  map.addLayer({ id: "sketch-point", type: "circle", source: "sketch", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-color": myColor, "circle-radius": 4 } });
}

const drawLayers = ["draw-point", "draw-line", "draw-fill"];
const handleLayers = ["vertex", "vertex-mid"];

// ---- the shared layer -------------------------------------------------------------------

let binding: FeatureSourceBinding | null = null;
const held = (): Map<string, Feature> => binding?.subscription.features ?? new Map();
const contentOf = (f: Feature): FeatureContent => ({ properties: structuredClone(f.properties), geometry: structuredClone(f.geometry) });
const titleOf = (f: { id: string; properties: Record<string, unknown> } | undefined, id?: string): string => {
  const name = f?.properties.name;
  return typeof name === "string" && name.trim() ? name : `an unnamed ${String(f?.properties.kind ?? "feature")}`.trim() || (id ?? "?");
};

const lockBadges = new Map<string, maplibregl.Marker>();
function renderLocks(): void {
  const sub = binding?.subscription;
  if (!sub) return;
  const now = Date.now();
  const features = [];
  const live = new Set<string>();
  if (client.state === State.Connected) {
    for (const [id, lock] of sub.locks) {
      const f = sub.features.get(id);
      if (!f || lock.until_ms < now) continue;
      live.add(id);
      const color = colorOfClient(lock.client);
      features.push({ type: "Feature" as const, id, geometry: f.geometry, properties: { color } });
      const at = geometryAnchor(f.geometry);
      if (!at) continue;
      let m = lockBadges.get(id);
      if (!m) {
        const el = document.createElement("div");
        el.className = "lock-badge";
        m = new maplibregl.Marker({ element: el, anchor: "bottom" }).setLngLat(at).addTo(map);
        lockBadges.set(id, m);
      }
      m.setLngLat(at);
      const el = m.getElement();
      el.textContent = lock.client === clientId ? "You are editing" : `${nameOf(lock.client)} is editing`;
      el.style.background = color;
      el.dataset.feature = id;
      el.dataset.holder = lock.client;
    }
  }
  for (const [id, m] of lockBadges) {
    if (!live.has(id)) {
      m.remove();
      lockBadges.delete(id);
    }
  }
  setSource("locks", features);
  renderSelection();
}
// Locks expire on the server without a push: redraw now and then so none outlives its time.
setInterval(renderLocks, 5000);

function renderPending(): void {
  const features = client
    .pendingEdits()
    .filter((e) => e.method === "feature.create")
    .map((e) => ({ ...(e.params.feature as object), id: e.featureId ?? e.opId }));
  setSource("pending", features);
}

/** Name labels of the drawn features, as HTML markers (the page has no glyph server). */
const labels = new Map<string, maplibregl.Marker>();
function renderLabels(): void {
  const shown = new Set<string>();
  const bounds = map.getBounds();
  for (const [id, f] of held()) {
    const name = f.properties.name;
    const at = labelAnchor(f.geometry);
    if (typeof name !== "string" || !name || !at || !bounds.contains(at) || shown.size >= 200) continue;
    shown.add(id);
    let m = labels.get(id);
    if (!m) {
      const el = document.createElement("div");
      el.className = "label";
      m = new maplibregl.Marker({ element: el, anchor: "top" }).setLngLat(at).addTo(map);
      labels.set(id, m);
    }
    m.setLngLat(at);
    m.getElement().textContent = name;
    m.getElement().dataset.feature = id;
  }
  for (const [id, m] of labels) {
    if (!shown.has(id)) {
      m.remove();
      labels.delete(id);
    }
  }
}
function labelAnchor(g: Geometry | null): [number, number] | null {
  if (g?.type === "Polygon" || g?.type === "LineString") {
    const pts = (g.type === "Polygon" ? (g.coordinates as number[][][])[0] : (g.coordinates as number[][])) ?? [];
    if (!pts.length) return null;
    if (g.type === "LineString") return pts[Math.floor(pts.length / 2)] as [number, number];
    const ring = pts.slice(0, -1);
    return [ring.reduce((a, p) => a + p[0]!, 0) / ring.length, ring.reduce((a, p) => a + p[1]!, 0) / ring.length];
  }
  return geometryAnchor(g);
}
map.on("moveend", renderLabels);

function bindLayer(): void {
  binding = bindFeatureSource(map, client, {
    sourceId: LAYER,
    layer: LAYER,
    // The whole layer: the feature list shows all of it, not just what is in view.
    followViewport: false,
    // MapLibre keeps only numeric feature ids in rendered features: carry the id as a property.
    toMapFeature: (f) => ({ type: "Feature", id: f.id, geometry: f.geometry, properties: { ...f.properties, version: f.version, fid: f.id } }),
    onApplied: () => {
      document.body.dataset.features = String(held().size);
      renderLabels();
      renderList();
    },
  });
  binding.subscription.on("event", (e) => {
    if (e.type === "lock" || (e.type === "change" && (e.kind === "delete" || binding!.subscription.locks.has(e.id)))) renderLocks();
    if (e.type === "change" && e.id === viewing?.id) {
      if (e.kind === "delete" || e.kind === "exit") {
        toast(`${titleOf(e.feature, e.id)} was deleted${e.feature?.properties.edited_by ? ` by ${String(e.feature.properties.edited_by)}` : ""}.`);
        deselect(false);
      } else followRemote(e.feature!);
    }
  });
  binding.subscription.on("error", (e) => toast(`The layer subscription failed: ${e.message}`, { error: true }));
  // Edits refused before a reload are offered again once the layer is known.
  const offSynced = binding.subscription.on("event", (e) => {
    if (e.type !== "synced") return;
    offSynced();
    if (conflicts.pending().length) conflicts.open();
  });
}

// ---- presence and cursors ---------------------------------------------------------------

const cursors = new Map<string, maplibregl.Marker>();
let presence: PresenceSubscription | null = null;

function renderPeople(members: ClientInfo[]): void {
  present.clear();
  const ul = $("people");
  ul.replaceChildren();
  for (const m of members) {
    const info = (m.info ?? {}) as { name?: string; color?: string; clientId?: string };
    const cid = info.clientId ?? m.session;
    present.add(cid);
    rememberName(cid, info.name ?? "a guest", info.color ?? "#555");
    const li = document.createElement("li");
    li.textContent = cid === clientId ? `${info.name} (you)` : (info.name ?? "a guest");
    li.style.background = info.color ?? "#555";
    li.dataset.client = cid;
    ul.append(li);
  }
  for (const [session, marker] of cursors) {
    if (!presence?.cursors.has(session)) {
      marker.remove();
      cursors.delete(session);
    }
  }
  renderLocks();
}

function renderCursor(c: Cursor): void {
  const info = (c.client.info ?? {}) as { name?: string; color?: string; clientId?: string };
  const session = c.client.session;
  let marker = cursors.get(session);
  if (info.clientId === clientId || !c.position) {
    marker?.remove();
    cursors.delete(session);
    return;
  }
  if (!marker) {
    const el = document.createElement("div");
    el.className = "cursor";
    el.append(document.createElement("span"));
    marker = new maplibregl.Marker({ element: el, anchor: "top-left" }).setLngLat(c.position).addTo(map);
    cursors.set(session, marker);
  }
  const el = marker.getElement();
  el.style.color = info.color ?? "#555";
  el.dataset.client = info.clientId ?? session;
  el.querySelector("span")!.textContent = `${info.name ?? "a guest"}${c.editing.length ? " (editing)" : ""}`;
  marker.setLngLat(c.position);
}

function joinPresence(): void {
  presence = client.subscribePresence(LAYER);
  presence.on("presence", renderPeople);
  presence.on("event", (e) => {
    if (e.type === "cursor") renderCursor(e.cursor);
  });
  presence.on("error", (e) => toast(`Presence failed: ${e.message}`, { error: true }));
}

let lastCursor = 0;
function shareCursor(position: [number, number] | null): void {
  const now = Date.now();
  // The server takes 20 cursors a second per connection; 10 look smooth enough.
  if ((position && now - lastCursor < 100) || client.state !== State.Connected) return;
  lastCursor = now;
  client.sendCursor(LAYER, position, selected?.locked ? [selected.id] : []);
}
map.on("mousemove", (e) => shareCursor([e.lngLat.lng, e.lngLat.lat]));
map.getCanvas().addEventListener("mouseleave", () => shareCursor(null));

// ---- live ships -------------------------------------------------------------------------

const shipStats = {
  /** Changes received. */
  changes: 0,
  /** Write-to-map latencies (ms) of the changes applied, since the benchmark last read them. */
  latencies: [] as number[],
};
let ships: FeatureSourceBinding | null = null;
let shipRetry: ReturnType<typeof setTimeout> | null = null;
const shipsToggle = $<HTMLInputElement>("ships-toggle");
let shipPopup: { id: string; popup: maplibregl.Popup } | null = null;

function addShipLayers(): void {
  map.addSource(SHIPS, { type: "geojson", data: empty, attribution: "AIS: MarineCadastre.gov (USCG)" });
  const radius = ["interpolate", ["linear"], ["zoom"], 2, 3, 9, 5, 13, 8] as unknown as number;
  map.addLayer({
    id: "ships",
    type: "circle",
    source: SHIPS,
    paint: {
      "circle-radius": radius,
      "circle-color": ["case", [">", ["coalesce", ["get", "sog"], 0], 0.5], "#0b5cad", "#8a96a3"] as unknown as string,
      "circle-stroke-color": "#fff",
      "circle-stroke-width": 1,
    },
  });
}

function renderShipCount(): void {
  $("ships-count").textContent = ships ? String(ships.subscription.features.size) : "";
}

function setShips(on: boolean): void {
  if (shipRetry) clearTimeout(shipRetry);
  shipRetry = null;
  if (!on) {
    ships?.close();
    ships = null;
    shipPopup?.popup.remove();
    setSource(SHIPS, []);
    renderShipCount();
    return;
  }
  if (ships) return;
  /** Replay times (`replayed_ms`) of the changes waiting for the next apply. */
  let waiting: number[] = [];
  const b = bindFeatureSource(map, client, {
    sourceId: SHIPS,
    layer: SHIPS,
    toMapFeature: (f) => ({
      type: "Feature",
      id: f.id,
      geometry: f.geometry,
      properties: { fid: f.id, name: f.properties.VesselName ?? f.id, sog: f.properties.SOG ?? 0 },
    }),
    onApplied: (st) => {
      const now = Date.now();
      if (!st.full) for (const t of waiting) shipStats.latencies.push(now - t);
      if (shipStats.latencies.length > 100_000) shipStats.latencies.splice(0, 50_000);
      waiting = [];
      renderShipCount();
    },
  });
  b.subscription.on("event", (e) => {
    if (e.type !== "change") return;
    shipStats.changes++;
    const t = b.subscription.features.get(e.id)?.properties.replayed_ms;
    if (typeof t === "number") waiting.push(t);
    if (shipPopup?.id === e.id) {
      if (e.kind === "exit" || e.kind === "delete") shipPopup.popup.remove();
      else if (e.feature) {
        shipPopup.popup.setLngLat(geometryAnchor(e.feature.geometry) ?? shipPopup.popup.getLngLat());
        shipPopup.popup.setDOMContent(shipDetails(e.feature));
      }
    }
  });
  // The server starts the replay when the page is first served: the layer may be a moment
  // away. Try again until it exists.
  b.subscription.on("error", () => {
    if (ships !== b) return;
    ships = null;
    shipRetry = setTimeout(() => setShips(shipsToggle.checked), 1000);
  });
  ships = b;
}
shipsToggle.addEventListener("change", () => setShips(shipsToggle.checked));
$("to-harbor").addEventListener("click", () => map.jumpTo({ center: HARBOR, zoom: HARBOR_ZOOM }));

function showShip(id: string): void {
  const f = ships?.subscription.features.get(id);
  const where = f && geometryAnchor(f.geometry);
  if (!f || !where) return;
  shipPopup?.popup.remove();
  const popup = new maplibregl.Popup({ className: "ship-popup", closeButton: true, maxWidth: "260px" }).setLngLat(where).setDOMContent(shipDetails(f)).addTo(map);
  shipPopup = { id, popup };
  popup.on("close", () => {
    if (shipPopup?.popup === popup) shipPopup = null;
  });
}

// ---- chat -------------------------------------------------------------------------------

const chat = client.subscribeChannel(CHAT);
const addMessage = (d: { name?: string; color?: string; text?: string }): void => {
  const li = document.createElement("li");
  const b = document.createElement("b");
  b.textContent = d.name ?? "?";
  b.style.color = d.color ?? "#555";
  li.append(b, document.createTextNode(d.text ?? ""));
  const ol = $("messages");
  ol.append(li);
  while (ol.children.length > 200) ol.firstElementChild!.remove();
  ol.scrollTop = ol.scrollHeight;
};
chat.on("event", (e) => {
  if (e.type === "message") addMessage(e.data as { name?: string; text?: string });
});
void chat.ready.then(() => client.history(CHAT, undefined, 30)).then((h) => {
  for (const m of h.messages) addMessage(m.data as { name?: string; text?: string });
});
$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $<HTMLInputElement>("chat-input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  void chat.publish({ name: myName, color: myColor, text }).catch((e: Error) => toast(e.message, { error: true }));
});

// ---- name -------------------------------------------------------------------------------

const nameInput = $<HTMLInputElement>("name");
nameInput.value = myName;
nameInput.addEventListener("change", () => {
  myName = nameInput.value.trim() || myName;
  localStorage.setItem("geostream.name", myName);
  // Presence info is sent in hello: reconnect to show the new name to others.
  location.reload();
});

// ---- edits: through the outbox, with their base, undoable -------------------------------

const conflicts = new Conflicts({
  client,
  layer: LAYER,
  storageKey: `geostream.conflicts:${location.host}:${clientId}`,
  myName: () => myName,
  current: (id) => held().get(id),
  toast: (m) => toast(m),
  nameOf: (cid) => nameOf(cid),
});

const history = new History({
  client,
  layer: LAYER,
  current: (id) => held().get(id),
  meta: (base, summary) => editMeta(base, summary),
  decorate: (p) => ({ ...p, edited_by: myName }),
  changed: () => {
    $<HTMLButtonElement>("undo").disabled = !history.canUndo();
    $<HTMLButtonElement>("redo").disabled = !history.canRedo();
  },
  failed: (what, e) => toast(`Could not ${what}: ${refusal(e)}`, { error: true }),
});

function editMeta(base: { id: string; version: number; content: FeatureContent } | null, summary: string): EditMeta {
  return { base, by: myName, summary, offline: client.state !== State.Connected };
}

/** An edit's error in words (a lock names its holder). */
function refusal(e: Error): string {
  if (e instanceof RpcError && e.codeName === "locked") {
    const holder = (e.data as { client?: string } | undefined)?.client;
    return `${holder ? nameOf(holder) : "someone"} is editing it`;
  }
  if (e instanceof RpcError && e.codeName === "conflict") return "someone else changed it first";
  return e.message;
}

/** Edits refused for good are conflicts to resolve, or said in words; none is dropped unseen. */
client.on("editRejected", ({ entry, error }) => {
  if (!conflicts.take(entry, error)) toast(`An edit was refused: ${refusal(error)}`, { error: true });
});

/** Sends an edit of features `ids`; undos and redos of them wait until it settles. */
function send(p: Promise<EditResult>, what: string, ids: string[]): void {
  history.track(ids, p);
  p.catch((e: Error) => {
    // Conflicts and locks come back through `editRejected` (kept and offered again).
    if (e instanceof RpcError && (e.codeName === "conflict" || e.codeName === "locked" || e.codeName === "feature_not_found")) return;
    toast(`Could not ${what}: ${refusal(e)}`, { error: true });
  });
}

const DRAWN_KEY = `geostream.drawn:${location.host}:${clientId}`;
function nextNumber(kind: string): number {
  // Counted per kind across reloads, and past any name of ours already on the map.
  const key = `${DRAWN_KEY}:${kind}`;
  let n = Number(localStorage.getItem(key) ?? "0");
  const mine = new RegExp(`^${kind} (\\d+) by ${myName.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
  for (const f of held().values()) {
    const m = mine.exec(String(f.properties.name ?? ""));
    if (m) n = Math.max(n, Number(m[1]));
  }
  localStorage.setItem(key, String(n + 1));
  return n + 1;
}

function create(geometry: Geometry, kind: string): void {
  const id = randomId();
  const properties = { name: `${kind} ${nextNumber(kind)} by ${myName}`, kind, author: myName, edited_by: myName, color: myColor };
  history.push([{ id, before: null, after: { properties, geometry } }], `draw the ${kind}`);
  send(client.createFeature(LAYER, { id, geometry, properties }, { meta: editMeta(null, `drew ${properties.name}`) }), `create the ${kind}`, [id]);
  renderPending();
}

/** A change of an existing feature by this page: patch, undo entry, conflict metadata. */
function edit(f: Feature, change: { properties?: Record<string, unknown>; geometry?: Geometry }, summary: string): void {
  const before = contentOf(f);
  const properties = { ...f.properties };
  if (change.properties) {
    for (const [k, v] of Object.entries(change.properties)) {
      if (v === null) delete properties[k];
      else properties[k] = v;
    }
    properties.edited_by = myName;
  }
  const after: FeatureContent = { properties, geometry: change.geometry ?? f.geometry };
  history.push([{ id: f.id, before, after }], summary);
  const patch = { ...change, ...(change.properties ? { properties: { ...change.properties, edited_by: myName } } : { properties: { edited_by: myName } }) };
  send(client.patchFeature(LAYER, f.id, patch, { version: f.version, meta: editMeta({ id: f.id, version: f.version, content: before }, summary) }), summary, [f.id]);
}

function remove(f: Feature): void {
  history.push([{ id: f.id, before: contentOf(f), after: null }], "delete");
  send(client.deleteFeature(LAYER, f.id, { version: f.version, meta: editMeta({ id: f.id, version: f.version, content: contentOf(f) }, "deleted it") }), "delete", [f.id]);
  toast(`Deleted ${titleOf(f)}.`, { action: { label: "Undo", run: () => history.undo() } });
}

$("undo").addEventListener("click", () => history.undo());
$("redo").addEventListener("click", () => history.redo());
$("conflicts-button").addEventListener("click", () => conflicts.open());

// ---- import / export ----------------------------------------------------------------------

const fileInput = $<HTMLInputElement>("import-file");
$("import").addEventListener("click", () => fileInput.click());
fileInput.addEventListener("change", async () => {
  const file = fileInput.files?.[0];
  fileInput.value = "";
  if (!file) return;
  let features: { geometry: Geometry; properties: Record<string, unknown> }[];
  try {
    features = featuresFromFile(await file.text());
  } catch (e) {
    toast(`${file.name} is not GeoJSON: ${(e as Error).message}`, { error: true });
    return;
  }
  const items: HistoryItem[] = features.map((f) => ({ id: randomId(), before: null, after: { properties: f.properties, geometry: f.geometry } }));
  // Batches of at most ~400 kB: one durable write each, well under the frame limit.
  let batch: HistoryItem[] = [];
  let bytes = 0;
  const flush = (): void => {
    if (!batch.length) return;
    const ops = batch.map((it) => ({ op: "create", feature: { type: "Feature", id: it.id, ...it.after } }));
    send(
      client.batchEdit(LAYER, ops, { meta: editMeta(null, `imported ${file.name}`) }) as Promise<never>,
      `import ${file.name}`,
      batch.map((it) => it.id),
    );
    batch = [];
    bytes = 0;
  };
  for (const it of items) {
    const size = JSON.stringify(it.after).length;
    if (bytes + size > 400_000) flush();
    batch.push(it);
    bytes += size;
  }
  flush();
  history.push(items, `import ${file.name}`);
  toast(`Importing ${items.length} feature${items.length === 1 ? "" : "s"} from ${file.name}.`);
});
$("export").addEventListener("click", () => {
  const blob = new Blob([JSON.stringify(layerAsGeoJson(held().values()))], { type: "application/geo+json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${LAYER}.geojson`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
});

// ---- the feature list -------------------------------------------------------------------

const search = $<HTMLInputElement>("features-search");
search.addEventListener("input", () => renderList());
let listTimer: ReturnType<typeof setTimeout> | null = null;
function renderList(): void {
  if (listTimer) return;
  listTimer = setTimeout(() => {
    listTimer = null;
    const q = search.value.trim().toLowerCase();
    const ul = $("features-list");
    const all = [...held().values()];
    const hits = all
      .filter((f) => !q || Object.values(f.properties).some((v) => String(v).toLowerCase().includes(q)))
      .sort((a, b) => titleOf(a).localeCompare(titleOf(b)))
      .slice(0, 300);
    $("features-count").textContent = `(${q ? `${hits.length} of ` : ""}${all.length})`;
    ul.replaceChildren(
      ...hits.map((f) => {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.feature = f.id;
        b.setAttribute("aria-label", `${titleOf(f)}, ${f.geometry?.type ?? "no geometry"}: zoom to it and select it`);
        if (viewing?.id === f.id) b.setAttribute("aria-current", "true");
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = typeof f.properties.color === "string" ? f.properties.color : "#3e63dd";
        const name = document.createElement("span");
        name.textContent = titleOf(f);
        const kind = document.createElement("span");
        kind.className = "kind";
        kind.textContent = (f.geometry?.type ?? "").replace("String", "");
        b.append(sw, name, kind);
        b.addEventListener("click", () => {
          zoomTo(f);
          setMode("select");
          void select(f.id);
        });
        li.append(b);
        return li;
      }),
    );
  }, 50);
}

function zoomTo(f: Feature): void {
  const pts: number[][] = [];
  const walk = (c: unknown): void => {
    if (Array.isArray(c) && typeof c[0] === "number") pts.push(c as number[]);
    else if (Array.isArray(c)) c.forEach(walk);
  };
  walk(f.geometry?.coordinates);
  if (!pts.length) return;
  const b = pts.reduce((acc, p) => [Math.min(acc[0]!, p[0]!), Math.min(acc[1]!, p[1]!), Math.max(acc[2]!, p[0]!), Math.max(acc[3]!, p[1]!)], [180, 90, -180, -90]);
  if (b[2]! - b[0]! < 1e-4 && b[3]! - b[1]! < 1e-4) map.jumpTo({ center: [b[0]!, b[1]!], zoom: Math.max(map.getZoom(), 12) });
  else map.fitBounds([b[0]!, b[1]!, b[2]!, b[3]!] as [number, number, number, number], { padding: 60, maxZoom: 15, animate: false });
}

// ---- tools: draw, select, move, reshape -------------------------------------------------

type Mode = "select" | "point" | "line" | "polygon";
let mode: Mode = "select";
let sketch: [number, number][] = [];

function setMode(m: Mode): void {
  mode = m;
  sketch = [];
  renderSketch();
  for (const b of document.querySelectorAll<HTMLButtonElement>("#tools button[data-mode]")) {
    b.classList.toggle("active", b.dataset.mode === m);
    b.setAttribute("aria-pressed", String(b.dataset.mode === m));
  }
  map.getCanvas().style.cursor = m === "select" ? "" : "crosshair";
  if (m !== "select") deselect(true);
}
for (const b of document.querySelectorAll<HTMLButtonElement>("#tools button[data-mode]")) b.addEventListener("click", () => setMode(b.dataset.mode as Mode));

function renderSketch(): void {
  const features: object[] = sketch.map((c) => ({ type: "Feature", geometry: { type: "Point", coordinates: c }, properties: {} }));
  if (sketch.length > 1) {
    const ring = mode === "polygon" ? [...sketch, sketch[0]] : sketch;
    features.push({ type: "Feature", geometry: { type: "LineString", coordinates: ring }, properties: {} });
  }
  setSource("sketch", features);
}

function finishSketch(): void {
  if (mode === "line" && sketch.length >= 2) create({ type: "LineString", coordinates: sketch }, "line");
  if (mode === "polygon" && sketch.length >= 3) create({ type: "Polygon", coordinates: [[...sketch, sketch[0]!]] }, "polygon");
  sketch = [];
  renderSketch();
}

map.on("click", (e: MapMouseEvent) => {
  const at: [number, number] = [e.lngLat.lng, e.lngLat.lat];
  if (mode === "point") create({ type: "Point", coordinates: at }, "point");
  else if (mode === "line" || mode === "polygon") {
    sketch.push(at);
    renderSketch();
  } else {
    if (map.queryRenderedFeatures(e.point, { layers: handleLayers }).length) return;
    const hit = map.queryRenderedFeatures(e.point, { layers: drawLayers })[0];
    const fid = hit?.properties?.fid as string | undefined;
    if (fid !== undefined) {
      void select(fid);
      return;
    }
    const ship = map.getLayer("ships") ? map.queryRenderedFeatures(e.point, { layers: ["ships"] })[0] : undefined;
    if (ship?.properties?.fid !== undefined) showShip(String(ship.properties.fid));
    else deselect(true);
  }
});
map.on("dblclick", (e) => {
  if (mode === "line" || mode === "polygon") {
    e.preventDefault();
    // The double-click's two clicks each added a vertex; keep one.
    sketch.pop();
    finishSketch();
    return;
  }
  const h = map.queryRenderedFeatures(e.point, { layers: ["vertex"] })[0];
  const f = selected && held().get(selected.id);
  if (h && f?.geometry) {
    e.preventDefault();
    const g = removeVertex(f.geometry, h.properties as unknown as Handle);
    if (g) edit(f, { geometry: g }, "remove a vertex");
    else toast("A line needs two vertices and a polygon three.");
  }
});
for (const l of ["ships", ...drawLayers]) {
  map.on("mouseenter", l, () => {
    if (mode === "select") map.getCanvas().style.cursor = "pointer";
  });
  map.on("mouseleave", l, () => {
    if (mode === "select") map.getCanvas().style.cursor = "";
  });
}

document.addEventListener("keydown", (e) => {
  const target = e.target as HTMLElement;
  if (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.closest("dialog")) return;
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key.toLowerCase() === "z") {
    e.preventDefault();
    if (e.shiftKey) history.redo();
    else history.undo();
    return;
  }
  if (mod && e.key.toLowerCase() === "y") {
    e.preventDefault();
    history.redo();
    return;
  }
  if (mod || e.altKey) return;
  if (e.key === "Enter" && (mode === "line" || mode === "polygon")) finishSketch();
  else if (e.key === "Escape") {
    sketch = [];
    renderSketch();
    deselect(true);
  } else if ((e.key === "Delete" || e.key === "Backspace") && selected) removeSelected();
  else if (target.tagName !== "BUTTON" || e.key.length === 1) {
    const tool = ({ s: "select", p: "point", l: "line", g: "polygon" } as Record<string, Mode>)[e.key.toLowerCase()];
    if (tool) setMode(tool);
  }
});

/** The feature shown in the panel; `locked` while we hold its lock. */
let selected: { id: string; renew: ReturnType<typeof setInterval>; locked: boolean } | null = null;
/** The panel's form: the feature it was loaded from (the base of a Save), and the fields touched. */
let viewing: { id: string; base: Feature; dirty: Set<string> } | null = null;

async function takeLock(id: string): Promise<"ok" | "held" | "failed"> {
  try {
    await client.lock(LAYER, [id], LOCK_TTL_MS);
    return "ok";
  } catch (e) {
    if (e instanceof RpcError && e.codeName === "locked") {
      const holder = (e.data as { client?: string } | undefined)?.client;
      toast(`${holder ? nameOf(holder) : "Someone"} is editing ${titleOf(held().get(id))}.`);
      return "held";
    }
    toast(`Could not lock the feature: ${(e as Error).message}`, { error: true });
    return "failed";
  }
}

function renewing(id: string): ReturnType<typeof setInterval> {
  return setInterval(() => {
    if (client.state === State.Connected) void client.lock(LAYER, [id], LOCK_TTL_MS).catch(() => undefined);
  }, LOCK_TTL_MS / 2);
}

async function select(id: string): Promise<void> {
  if (selected?.id === id && selected.locked) return;
  deselect(true);
  const lock = binding?.subscription.locks.get(id);
  if (lock && lock.client !== clientId && lock.until_ms > Date.now()) {
    toast(`${nameOf(lock.client)} is editing ${titleOf(held().get(id))}.`);
    showSelection(id);
    return;
  }
  const got = await takeLock(id);
  if (got !== "ok") {
    if (got === "held") showSelection(id);
    return;
  }
  selected = { id, renew: renewing(id), locked: true };
  showSelection(id);
}

/** Back online with the panel open: take the lock again, and say so; never quietly. */
async function relockAfterReconnect(): Promise<void> {
  if (!selected || selected.locked) return;
  const id = selected.id;
  const got = await takeLock(id);
  if (selected?.id !== id) return;
  if (got === "ok") {
    selected.locked = true;
    selected.renew = renewing(id);
    toast(`Back online: you are editing ${titleOf(held().get(id))} again.`);
  }
  renderSelection();
}

function showSelection(id: string): void {
  const f = held().get(id);
  if (!f) return;
  viewing = { id, base: structuredClone(f), dirty: new Set() };
  $("selection").hidden = false;
  $("sel-remote").hidden = true;
  $("panel").classList.remove("collapsed");
  fillForm(f, true);
  renderSelection();
  renderList();
}

/** Fills the form from `f`; only untouched fields unless `all`. */
function fillForm(f: Feature, all: boolean): void {
  const dirty = viewing?.dirty ?? new Set<string>();
  const set = (el: HTMLInputElement | HTMLTextAreaElement, key: string, fallback = ""): void => {
    if (all || !dirty.has(key)) el.value = typeof f.properties[key] === "string" ? (f.properties[key] as string) : fallback;
  };
  set($<HTMLInputElement>("sel-name"), "name");
  set($<HTMLTextAreaElement>("sel-description"), "description");
  set($<HTMLInputElement>("sel-color"), "color", "#3e63dd");
  const box = $("sel-props");
  const keys = Object.keys(f.properties).filter((k) => !["name", "description", "color"].includes(k) && !INTERNAL.has(k));
  for (const k of [...(viewing?.dirty ?? [])]) if (!keys.includes(k) && !["name", "description", "color"].includes(k)) keys.push(k);
  const existing = new Map([...box.querySelectorAll<HTMLInputElement>("input[data-key]")].map((i) => [i.dataset.key!, i]));
  box.replaceChildren(
    ...keys.map((k) => {
      const row = document.createElement("div");
      row.className = "prop";
      const label = document.createElement("label");
      label.textContent = `${k} `;
      const input = existing.get(k) ?? document.createElement("input");
      input.dataset.key = k;
      input.name = k;
      if (all || !dirty.has(k)) {
        const v = f.properties[k];
        input.value = v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v);
      }
      label.append(input);
      const del = document.createElement("button");
      del.type = "button";
      del.textContent = "×";
      del.setAttribute("aria-label", `remove the property ${k}`);
      del.addEventListener("click", () => {
        viewing?.dirty.add(k);
        input.dataset.removed = "true";
        row.hidden = true;
      });
      row.append(label, del);
      if (input.dataset.removed) row.hidden = true;
      return row;
    }),
  );
  const by = f.properties.edited_by ?? f.properties.author;
  $("sel-meta").textContent = `${f.geometry?.type ?? "no geometry"} · version ${f.version}${by ? ` · last edited by ${String(by)}` : ""}`;
}

/** A remote change of the feature in the panel: the form follows it, keeping what is typed. */
function followRemote(f: Feature): void {
  if (!viewing) return;
  const mine = f.properties.edited_by === myName && f.version > viewing.base.version && !viewing.dirty.size;
  if (!viewing.dirty.size) viewing.base = structuredClone(f);
  fillForm(f, false);
  if (viewing.dirty.size) {
    const who = typeof f.properties.edited_by === "string" && f.properties.edited_by !== myName ? f.properties.edited_by : "Someone";
    $("sel-remote").textContent = `${who} changed this feature while you were editing it. Saving shows what each of you changed.`;
    $("sel-remote").hidden = false;
  } else if (!mine) $("sel-remote").hidden = true;
  renderSelection();
}

function renderSelection(): void {
  if (!viewing) return;
  const f = held().get(viewing.id);
  const lock = binding?.subscription.locks.get(viewing.id);
  const mine = selected?.id === viewing.id;
  const editable = mine;
  $("sel-title").textContent = f ? titleOf(f) : "Feature";
  $("sel-lock").textContent = mine
    ? selected!.locked
      ? "You are editing this feature (locked for you)."
      : "Offline: not locked. What you save is kept and checked against others' changes when you are back."
    : lock && lock.until_ms > Date.now()
      ? `Locked by ${nameOf(lock.client)}.`
      : "Not locked.";
  $("sel-lock").dataset.holder = lock?.client ?? "";
  for (const b of ["sel-save", "sel-delete", "sel-addprop"]) $<HTMLButtonElement>(b).disabled = !editable;
  for (const el of $("sel-form").querySelectorAll<HTMLInputElement>("input, textarea")) el.disabled = !editable;
  setSource("selected", f ? [{ type: "Feature", geometry: f.geometry, properties: {} }] : []);
  setSource("vertices", editable && f?.geometry ? handlesOf(f.geometry) : []);
}

function deselect(unlock: boolean): void {
  if (selected) {
    clearInterval(selected.renew);
    if (unlock && selected.locked) void client.unlock(LAYER, [selected.id]).catch(() => undefined);
  }
  selected = null;
  viewing = null;
  $("selection").hidden = true;
  $("sel-lock").textContent = "";
  setSource("selected", []);
  setSource("vertices", []);
  renderList();
}

for (const el of [$("sel-name"), $("sel-description"), $("sel-color")]) {
  el.addEventListener("input", () => viewing?.dirty.add((el as HTMLInputElement).name));
}
$("sel-props").addEventListener("input", (e) => {
  const k = (e.target as HTMLInputElement).dataset.key;
  if (k) viewing?.dirty.add(k);
});
$("sel-addprop").addEventListener("click", () => {
  const input = $<HTMLInputElement>("sel-newkey");
  const key = input.value.trim();
  if (!key || !viewing) return;
  input.value = "";
  viewing.dirty.add(key);
  fillForm(held().get(viewing.id) ?? viewing.base, false);
  $("sel-props").querySelector<HTMLInputElement>(`input[data-key="${CSS.escape(key)}"]`)?.focus();
});
$("sel-close").addEventListener("click", () => deselect(true));
$("sel-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!selected || !viewing || !viewing.dirty.size) return;
  const base = viewing.base;
  const next = { ...base.properties };
  const read = (key: string): void => {
    const el = $("sel-form").querySelector<HTMLInputElement | HTMLTextAreaElement>(`[name="${CSS.escape(key)}"]`);
    if (!el || el.dataset.removed) {
      delete next[key];
      return;
    }
    const text = el.value;
    let v: unknown = text;
    // Numbers, booleans and JSON stay what they were when they still parse.
    if (!["name", "description", "color"].includes(key) && typeof base.properties[key] !== "string" && base.properties[key] !== undefined) {
      try {
        v = JSON.parse(text);
      } catch {
        v = text;
      }
    }
    if (key === "description" && text === "" && base.properties.description === undefined) delete next[key];
    else next[key] = v;
  };
  for (const k of viewing.dirty) read(k);
  const patch = propertiesPatch(base.properties, next);
  if (!Object.keys(patch).length) return;
  // The version the form was loaded from: if the feature moved on, the server refuses it and
  // the conflict dialog shows both sides.
  edit(base, { properties: patch }, describeProps(patch, base));
  viewing.dirty.clear();
  $("sel-remote").hidden = true;
});

function describeProps(patch: Record<string, unknown>, f: Feature): string {
  if (typeof patch.name === "string") return `renamed ${titleOf(f)} to '${patch.name}'`;
  return `changed ${Object.keys(patch).join(", ")} of ${titleOf(f)}`;
}

function removeSelected(): void {
  if (!selected) return;
  const f = held().get(selected.id);
  deselect(false);
  if (f) remove(f);
}
$("sel-delete").addEventListener("click", removeSelected);

// Dragging: the selected feature moves whole, or one of its vertices (one edit when the drag
// ends). Mouse and touch alike.
let drag: { id: string; start: maplibregl.LngLat; geometry: Geometry; handle: Handle | null; preview: Geometry } | null = null;
function dragStart(e: MapMouseEvent | MapTouchEvent): void {
  if (mode !== "select" || !selected) return;
  const f = held().get(selected.id);
  if (!f?.geometry) return;
  const h = map.queryRenderedFeatures(e.point, { layers: handleLayers })[0];
  const hit = h ?? map.queryRenderedFeatures(e.point, { layers: drawLayers }).find((x) => x.properties?.fid === selected!.id);
  if (!hit) return;
  e.preventDefault();
  drag = { id: selected.id, start: e.lngLat, geometry: f.geometry, handle: h ? (h.properties as unknown as Handle) : null, preview: f.geometry };
  map.dragPan.disable();
}
function dragMove(e: MapMouseEvent | MapTouchEvent): void {
  if (!drag) return;
  const to: [number, number] = [e.lngLat.lng, e.lngLat.lat];
  drag.preview = drag.handle
    ? drag.handle.mid
      ? insertVertex(drag.geometry, drag.handle, to)
      : moveVertex(drag.geometry, drag.handle, to)
    : translate(drag.geometry, e.lngLat.lng - drag.start.lng, e.lngLat.lat - drag.start.lat);
  setSource("selected", [{ type: "Feature", geometry: drag.preview, properties: {} }]);
  if (drag.handle) setSource("vertices", handlesOf(drag.preview));
}
function dragEnd(e: MapMouseEvent | MapTouchEvent): void {
  if (!drag) return;
  const d = drag;
  drag = null;
  map.dragPan.enable();
  const moved = Math.abs(e.lngLat.lng - d.start.lng) + Math.abs(e.lngLat.lat - d.start.lat) > 1e-9;
  const f = held().get(d.id);
  if (!moved || !f) {
    renderSelection();
    return;
  }
  const what = d.handle ? (d.handle.mid ? "add a vertex" : "move a vertex") : `move ${titleOf(f)}`;
  edit(f, { geometry: d.preview }, what);
}
map.on("mousedown", dragStart);
map.on("touchstart", (e) => {
  if (e.points.length === 1) dragStart(e);
});
map.on("mousemove", dragMove);
map.on("touchmove", dragMove);
map.on("mouseup", dragEnd);
map.on("touchend", dragEnd);

// ---- the welcome card and the phone's bottom sheet ---------------------------------------

/** The card goes for good once dismissed, or once the map or a tool is used. */
function welcomed(): void {
  if ($("welcome").hidden) return;
  $("welcome").hidden = true;
  localStorage.setItem("geostream.welcomed", "1");
}
if (localStorage.getItem("geostream.welcomed")) $("welcome").hidden = true;
$("welcome-close").addEventListener("click", welcomed);
map.on("click", welcomed);
$("tools").addEventListener("click", welcomed);
$("sheet-handle").addEventListener("click", () => {
  const collapsed = $("panel").classList.toggle("collapsed");
  $("sheet-handle").setAttribute("aria-expanded", String(!collapsed));
});

// ---- start ------------------------------------------------------------------------------

map.on("load", () => {
  addShipLayers();
  addDrawLayers();
  renderPending();
  void client
    .connect()
    .then(async () => {
      await client.ensureLayer({ name: LAYER, title: "Drawn together", description: "The demo page's shared layer" });
      bindLayer();
      joinPresence();
      setShips(shipsToggle.checked);
      await addBasemap().catch((e: Error) => toast(`No basemap: ${e.message}`, { error: true }));
      addHarborLand();
      renderPending();
      document.body.dataset.ready = "true";
    })
    .catch((e: Error) => toast(e.message, { error: true }));
});
void client.outboxLoaded.then(() => {
  renderStatus();
  renderPending();
});
renderStatus();
conflicts.render();

// The page works offline once loaded: a service worker keeps it and its last tiles.
if ("serviceWorker" in navigator && !params.has("nosw")) {
  const sw = "/web/sw.js";
  // The root scope needs the server's permission (Service-Worker-Allowed); without it the
  // worker still serves the page at /web/index.html.
  void navigator.serviceWorker.register(sw, { scope: "/" }).catch(() => navigator.serviceWorker.register(sw, { scope: "/web/" }).catch(() => undefined));
}

/** For the browser tests and the curious: the live objects behind the page. */
(window as unknown as { geostreamDemo: unknown }).geostreamDemo = {
  client,
  map,
  get layer() {
    return binding?.subscription ?? null;
  },
  get ships() {
    return ships?.subscription ?? null;
  },
  get presence() {
    return presence;
  },
  conflicts,
  history,
  shipStats,
  clientId,
  changesBetween,
};
