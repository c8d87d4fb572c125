/**
 * The collaborative map: a MapLibre map over geostream's own vector tiles of Natural Earth
 * countries, and a layer everyone here draws on together. It uses only the public API of the
 * geostream client and its MapLibre adapter.
 */
import * as maplibregl from "maplibre-gl";
import type { GeoJSONSource, MapMouseEvent } from "maplibre-gl";

import {
  GeostreamClient,
  IndexedDbOutboxStore,
  MemoryOutboxStore,
  RpcError,
  State,
  randomId,
  type ClientInfo,
  type Cursor,
  type Feature,
  type Geometry,
  type OutboxStore,
} from "../../clients/js/src/index.js";
import { bindFeatureSource, bindTileSource, type FeatureSourceBinding } from "../../clients/js/src/maplibre.js";
import type { PresenceSubscription } from "../../clients/js/src/subscriptions.js";

const LAYER = "draw";
const BASEMAP = "countries";
const SHIPS = "ships";
const HARBOR: [number, number] = [-74.03, 40.62];
const CHAT = "demo.chat";
const LOCK_TTL_MS = 60_000;

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
const toast = (msg: string): void => {
  $("toast").textContent = msg;
};

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

/** Who holds which client id, from presence. */
const people = new Map<string, { name: string; color: string }>();
const nameOf = (cid: string): string => (cid === clientId ? `${myName} (you)` : (people.get(cid)?.name ?? cid.slice(0, 8)));

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
});
client.on("outbox", () => {
  renderStatus();
  renderPending();
});
client.on("editRejected", ({ entry, error }) => toast(`An edit was refused (${entry.method}): ${error.message}`));

// ---- the map ----------------------------------------------------------------------------

const map = new maplibregl.Map({
  container: "map",
  style: {
    version: 8,
    sources: {},
    layers: [{ id: "sea", type: "background", paint: { "background-color": "#a9c7e4" } }],
  },
  center: [10, 30],
  zoom: 1.6,
  attributionControl: { compact: false, customAttribution: "Made with Natural Earth · geostream" },
  doubleClickZoom: false,
});
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");

const empty = { type: "FeatureCollection" as const, features: [] };

async function addBasemap(): Promise<void> {
  // geostream's own vector tiles of the countries layer; TileJSON gives URLs and zooms.
  const res = await fetch(`/v1/tiles/${BASEMAP}.json`).catch(() => null);
  if (res?.ok) {
    const tj = (await res.json()) as { maxzoom?: number };
    map.addSource(BASEMAP, { type: "vector", url: `/v1/tiles/${BASEMAP}.json`, attribution: "Made with Natural Earth" });
    map.addLayer({ id: "land", type: "fill", source: BASEMAP, "source-layer": BASEMAP, paint: { "fill-color": "#f2efe6" } });
    map.addLayer({ id: "borders", type: "line", source: BASEMAP, "source-layer": BASEMAP, paint: { "line-color": "#9a8f7e", "line-width": 0.6 } });
    bindTileSource(map, client, { sourceId: BASEMAP, layer: BASEMAP, maxzoom: Math.min(tj.maxzoom ?? 14, 14) });
    return;
  }
  // A server without tiles: draw the same layer from its features.
  const r = await client.queryFeatures(BASEMAP, {}, { limit: 1000 });
  map.addSource(BASEMAP, { type: "geojson", data: { type: "FeatureCollection", features: r.features as never } });
  map.addLayer({ id: "land", type: "fill", source: BASEMAP, paint: { "fill-color": "#f2efe6" } });
  map.addLayer({ id: "borders", type: "line", source: BASEMAP, paint: { "line-color": "#9a8f7e", "line-width": 0.6 } });
}

function addDrawLayers(): void {
  map.addSource(LAYER, { type: "geojson", data: empty });
  map.addSource("pending", { type: "geojson", data: empty });
  map.addSource("locks", { type: "geojson", data: empty });
  map.addSource("sketch", { type: "geojson", data: empty });
  map.addSource("selected", { type: "geojson", data: empty });
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
  map.addLayer({ id: "sketch-line", type: "line", source: "sketch", paint: { "line-color": myColor, "line-width": 2, "line-dasharray": [2, 1] } });
  map.addLayer({ id: "sketch-point", type: "circle", source: "sketch", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-color": myColor, "circle-radius": 4 } });
}

const drawLayers = ["draw-point", "draw-line", "draw-fill"];

// ---- the shared layer -------------------------------------------------------------------

let binding: ReturnType<typeof bindFeatureSource> | null = null;
const held = (): Map<string, Feature> => binding?.subscription.features ?? new Map();

function geometryAnchor(g: Geometry | null): [number, number] | null {
  if (!g) return null;
  const first = (c: unknown): [number, number] | null => {
    if (Array.isArray(c) && typeof c[0] === "number") return [c[0], c[1] as number];
    return Array.isArray(c) && c.length ? first(c[0]) : null;
  };
  return first(g.coordinates);
}

const lockBadges = new Map<string, maplibregl.Marker>();
function renderLocks(): void {
  const sub = binding?.subscription;
  if (!sub) return;
  const now = Date.now();
  const features = [];
  const live = new Set<string>();
  for (const [id, lock] of sub.locks) {
    const f = sub.features.get(id);
    if (!f || lock.until_ms < now) continue;
    live.add(id);
    const color = lock.client === clientId ? myColor : (people.get(lock.client)?.color ?? "#555");
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
    el.textContent = `${nameOf(lock.client)} is editing`;
    el.style.background = color;
    el.dataset.feature = id;
    el.dataset.holder = lock.client;
  }
  for (const [id, m] of lockBadges) {
    if (!live.has(id)) {
      m.remove();
      lockBadges.delete(id);
    }
  }
  (map.getSource("locks") as GeoJSONSource | undefined)?.setData({ type: "FeatureCollection", features: features as never });
  renderSelection();
}

function renderPending(): void {
  const features = client
    .pendingEdits()
    .filter((e) => e.method === "feature.create")
    .map((e) => ({ ...(e.params.feature as object), id: e.featureId ?? e.opId }));
  (map.getSource("pending") as GeoJSONSource | undefined)?.setData({ type: "FeatureCollection", features: features as never });
}

function bindLayer(): void {
  binding = bindFeatureSource(map, client, {
    sourceId: LAYER,
    layer: LAYER,
    padding: 0.5,
    // MapLibre keeps only numeric feature ids in rendered features: carry the id as a property.
    toMapFeature: (f) => ({ type: "Feature", id: f.id, geometry: f.geometry, properties: { ...f.properties, version: f.version, fid: f.id } }),
    onApplied: () => {
      document.body.dataset.features = String(held().size);
    },
  });
  binding.subscription.on("event", (e) => {
    if (e.type === "lock" || (e.type === "change" && binding!.subscription.locks.has(e.id))) renderLocks();
    if (e.type === "change" && e.id === selected?.id) {
      if (e.kind === "delete" || e.kind === "exit") deselect(false);
      else renderSelection();
    }
  });
  binding.subscription.on("error", (e) => toast(`The layer subscription failed: ${e.message}`));
}

// ---- presence and cursors ---------------------------------------------------------------

// Who is on the shared layer and where their pointers are: the layer's presence
// (`presence.subscribe`), joined once the layer exists, made again after every reconnect.
const cursors = new Map<string, maplibregl.Marker>();
let presence: PresenceSubscription | null = null;

function renderPeople(members: ClientInfo[]): void {
  people.clear();
  const ul = $("people");
  ul.replaceChildren();
  for (const m of members) {
    const info = (m.info ?? {}) as { name?: string; color?: string; clientId?: string };
    const cid = info.clientId ?? m.session;
    people.set(cid, { name: info.name ?? m.session.slice(0, 8), color: info.color ?? "#555" });
    const li = document.createElement("li");
    li.textContent = cid === clientId ? `${info.name} (you)` : (info.name ?? "?");
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
  el.querySelector("span")!.textContent = `${info.name ?? "?"}${c.editing.length ? " (editing)" : ""}`;
  marker.setLngLat(c.position);
}

function joinPresence(): void {
  presence = client.subscribePresence(LAYER);
  presence.on("presence", renderPeople);
  presence.on("event", (e) => {
    if (e.type === "cursor") renderCursor(e.cursor);
  });
  presence.on("error", (e) => toast(`Presence failed: ${e.message}`));
}

let lastCursor = 0;
function shareCursor(position: [number, number] | null): void {
  const now = Date.now();
  // The server takes 20 cursors a second per connection; 10 look smooth enough.
  if ((position && now - lastCursor < 100) || client.state !== State.Connected) return;
  lastCursor = now;
  client.sendCursor(LAYER, position, selected ? [selected.id] : []);
}
map.on("mousemove", (e) => shareCursor([e.lngLat.lng, e.lngLat.lat]));
map.getCanvas().addEventListener("mouseleave", () => shareCursor(null));

// ---- live ships -------------------------------------------------------------------------

// Ships replayed by the server from a real AIS hour of New York harbor, subscribed with the
// viewport (enter / update / exit as the map moves) and drawn from a GeoJSON source.
const shipStats = {
  /** Changes received. */
  changes: 0,
  /** Write-to-map latencies (ms) of the changes applied, since the benchmark last read them. */
  latencies: [] as number[],
};
let ships: FeatureSourceBinding | null = null;
let shipRetry: ReturnType<typeof setTimeout> | null = null;
const shipsToggle = $<HTMLInputElement>("ships-toggle");

function addShipLayers(): void {
  map.addSource(SHIPS, { type: "geojson", data: empty, attribution: "AIS: MarineCadastre.gov (USCG)" });
  const radius = ["interpolate", ["linear"], ["zoom"], 2, 2, 9, 4, 13, 7] as unknown as number;
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
    (map.getSource(SHIPS) as GeoJSONSource | undefined)?.setData(empty);
    renderShipCount();
    return;
  }
  if (ships) return;
  /** Replay times (`replayed_ms`) of the changes waiting for the next apply. */
  let waiting: number[] = [];
  const binding = bindFeatureSource(map, client, {
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
  binding.subscription.on("event", (e) => {
    if (e.type !== "change") return;
    shipStats.changes++;
    const t = binding.subscription.features.get(e.id)?.properties.replayed_ms;
    if (typeof t === "number") waiting.push(t);
  });
  // The server starts the replay when the page is first served: the layer may be a moment
  // away. Try again until it exists.
  binding.subscription.on("error", () => {
    if (ships !== binding) return;
    ships = null;
    shipRetry = setTimeout(() => setShips(shipsToggle.checked), 1000);
  });
  ships = binding;
}
shipsToggle.addEventListener("change", () => setShips(shipsToggle.checked));
$("to-harbor").addEventListener("click", () => map.jumpTo({ center: HARBOR, zoom: 9.6 }));

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
  void chat.publish({ name: myName, color: myColor, text }).catch((e: Error) => toast(e.message));
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

// ---- tools: draw, select, move, edit, delete -------------------------------------------

type Mode = "select" | "point" | "line" | "polygon";
let mode: Mode = "select";
let sketch: [number, number][] = [];

function setMode(m: Mode): void {
  mode = m;
  sketch = [];
  renderSketch();
  for (const b of document.querySelectorAll<HTMLButtonElement>("#tools button")) b.classList.toggle("active", b.dataset.mode === m);
  map.getCanvas().style.cursor = m === "select" ? "" : "crosshair";
  if (m !== "select") deselect(true);
}
for (const b of document.querySelectorAll<HTMLButtonElement>("#tools button")) b.addEventListener("click", () => setMode(b.dataset.mode as Mode));

function renderSketch(): void {
  const features: object[] = sketch.map((c) => ({ type: "Feature", geometry: { type: "Point", coordinates: c }, properties: {} }));
  if (sketch.length > 1) {
    const ring = mode === "polygon" ? [...sketch, sketch[0]] : sketch;
    features.push({ type: "Feature", geometry: { type: "LineString", coordinates: ring }, properties: {} });
  }
  (map.getSource("sketch") as GeoJSONSource | undefined)?.setData({ type: "FeatureCollection", features: features as never });
}

let drawn = 0;
function create(geometry: Geometry, kind: string): void {
  const id = randomId();
  drawn++;
  const name = `${kind} ${drawn} by ${myName}`;
  client
    .createFeature(LAYER, { id, geometry, properties: { name, kind, author: myName, color: myColor } })
    .catch((e: Error) => toast(`Could not create the ${kind}: ${e.message}`));
  renderPending();
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
    const hit = map.queryRenderedFeatures(e.point, { layers: drawLayers })[0];
    const fid = hit?.properties?.fid as string | undefined;
    if (fid !== undefined) void select(fid);
    else deselect(true);
  }
});
map.on("dblclick", (e) => {
  if (mode === "line" || mode === "polygon") {
    e.preventDefault();
    // The double-click's two clicks each added a vertex; keep one.
    sketch.pop();
    finishSketch();
  }
});
document.addEventListener("keydown", (e) => {
  if ((e.target as HTMLElement).tagName === "INPUT") return;
  if (e.key === "Enter") finishSketch();
  if (e.key === "Escape") {
    sketch = [];
    renderSketch();
    deselect(true);
  }
  if ((e.key === "Delete" || e.key === "Backspace") && selected) removeSelected();
});

/** The selected feature, while we hold its lock. */
let selected: { id: string; renew: ReturnType<typeof setInterval> } | null = null;

async function select(id: string): Promise<void> {
  if (selected?.id === id) return;
  deselect(true);
  const lock = binding?.subscription.locks.get(id);
  if (lock && lock.client !== clientId && lock.until_ms > Date.now()) {
    toast(`${nameOf(lock.client)} is editing this feature.`);
    showSelection(id, false);
    return;
  }
  try {
    await client.lock(LAYER, [id], LOCK_TTL_MS);
  } catch (e) {
    if (e instanceof RpcError && e.codeName === "locked") {
      const holder = (e.data as { client?: string } | undefined)?.client;
      toast(`${holder ? nameOf(holder) : "Someone"} is editing this feature.`);
      showSelection(id, false);
      return;
    }
    toast(`Could not lock the feature: ${(e as Error).message}`);
    return;
  }
  selected = {
    id,
    renew: setInterval(() => void client.lock(LAYER, [id], LOCK_TTL_MS).catch(() => undefined), LOCK_TTL_MS / 2),
  };
  toast("");
  showSelection(id, true);
}

let viewing: { id: string; editable: boolean } | null = null;
function showSelection(id: string, editable: boolean): void {
  viewing = { id, editable };
  const f = held().get(id);
  $("selection").hidden = false;
  $("sel-id").textContent = id.slice(0, 8);
  $<HTMLInputElement>("sel-name").value = String(f?.properties.name ?? "");
  renderSelection();
}

function renderSelection(): void {
  if (!viewing) return;
  const f = held().get(viewing.id);
  const lock = binding?.subscription.locks.get(viewing.id);
  const editable = selected?.id === viewing.id;
  $("sel-lock").textContent = editable ? "You are editing this feature (locked for you)." : lock ? `Locked by ${nameOf(lock.client)}.` : "Not locked.";
  $("sel-lock").dataset.holder = lock?.client ?? "";
  for (const b of ["sel-save", "sel-delete"]) $<HTMLButtonElement>(b).disabled = !editable;
  $<HTMLInputElement>("sel-name").disabled = !editable;
  (map.getSource("selected") as GeoJSONSource | undefined)?.setData({
    type: "FeatureCollection",
    features: f ? ([{ type: "Feature", geometry: f.geometry, properties: {} }] as never) : [],
  });
}

function deselect(unlock: boolean): void {
  if (selected) {
    clearInterval(selected.renew);
    if (unlock) void client.unlock(LAYER, [selected.id]).catch(() => undefined);
  }
  selected = null;
  viewing = null;
  $("selection").hidden = true;
  (map.getSource("selected") as GeoJSONSource | undefined)?.setData(empty);
}

$("sel-close").addEventListener("click", () => deselect(true));
$("sel-save").addEventListener("click", () => {
  if (!selected) return;
  const f = held().get(selected.id);
  const name = $<HTMLInputElement>("sel-name").value;
  client
    .patchFeature(LAYER, selected.id, { properties: { name } }, { version: f?.version })
    .catch((e: Error) => toast(`Could not save: ${e.message}`));
});
function removeSelected(): void {
  if (!selected) return;
  const id = selected.id;
  const f = held().get(id);
  deselect(false);
  client.deleteFeature(LAYER, id, { version: f?.version }).catch((e: Error) => toast(`Could not delete: ${e.message}`));
}
$("sel-delete").addEventListener("click", removeSelected);

// Dragging the selected feature moves it (one edit when the drag ends).
function translate(g: Geometry, dx: number, dy: number): Geometry {
  const move = (c: unknown): unknown =>
    Array.isArray(c) && typeof c[0] === "number" ? [(c[0] as number) + dx, (c[1] as number) + dy, ...c.slice(2)] : (c as unknown[]).map(move);
  return { ...g, coordinates: move(g.coordinates) };
}
let drag: { id: string; start: maplibregl.LngLat; geometry: Geometry } | null = null;
map.on("mousedown", (e) => {
  if (mode !== "select" || !selected) return;
  const hit = map.queryRenderedFeatures(e.point, { layers: drawLayers }).find((h) => h.properties?.fid === selected!.id);
  const f = held().get(selected.id);
  if (!hit || !f?.geometry) return;
  e.preventDefault();
  drag = { id: selected.id, start: e.lngLat, geometry: f.geometry };
  map.dragPan.disable();
});
map.on("mousemove", (e) => {
  if (!drag) return;
  const g = translate(drag.geometry, e.lngLat.lng - drag.start.lng, e.lngLat.lat - drag.start.lat);
  (map.getSource("selected") as GeoJSONSource | undefined)?.setData({ type: "FeatureCollection", features: [{ type: "Feature", geometry: g, properties: {} }] as never });
});
map.on("mouseup", (e) => {
  if (!drag) return;
  const d = drag;
  drag = null;
  map.dragPan.enable();
  const dx = e.lngLat.lng - d.start.lng;
  const dy = e.lngLat.lat - d.start.lat;
  if (Math.abs(dx) + Math.abs(dy) < 1e-9) return;
  const f = held().get(d.id);
  client
    .patchFeature(LAYER, d.id, { geometry: translate(d.geometry, dx, dy) }, { version: f?.version })
    .catch((err: Error) => toast(`Could not move: ${err.message}`));
});

// ---- start ------------------------------------------------------------------------------

map.on("load", () => {
  addShipLayers();
  addDrawLayers();
  void client
    .connect()
    .then(async () => {
      await client.ensureLayer({ name: LAYER, title: "Drawn together", description: "The demo page's shared layer" });
      bindLayer();
      joinPresence();
      setShips(shipsToggle.checked);
      await addBasemap().catch((e: Error) => toast(`No basemap: ${e.message}`));
      map.moveLayer("ships");
      map.moveLayer("draw-fill");
      for (const l of ["draw-line", "draw-point", "pending-line", "pending-point", "locks-line", "locks-point", "selected-line", "selected-point", "sketch-line", "sketch-point"]) map.moveLayer(l);
      renderPending();
      document.body.dataset.ready = "true";
    })
    .catch((e: Error) => toast(e.message));
});
void client.outboxLoaded.then(() => {
  renderStatus();
  renderPending();
});
renderStatus();

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
  shipStats,
  clientId,
};
