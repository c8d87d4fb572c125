/**
 * The page's service worker: the page reloads without a network (with the edits it queued,
 * which live in IndexedDB), and shows the basemap tiles it has seen.
 *
 * - the page itself (navigations): network first, the kept copy when offline;
 * - the content-hashed bundles (`/web/*-<hash>.*`): from the cache (they never change);
 * - map tiles and TileJSON (`/v1/tiles/...`): network first, the last copy when offline;
 * - everything else (the API, the WebSocket) goes to the network untouched.
 */
/// <reference lib="webworker" />
export {};

declare const __SHELL__: string[];
declare const __BUILD__: string;
declare const self: ServiceWorkerGlobalScope;

const SHELL = `geostream-shell-${__BUILD__}`;
const TILES = "geostream-tiles";
const MAX_TILES = 2000;
const PAGE = "/web/index.html";

self.addEventListener("install", (e) => {
  e.waitUntil(
    caches
      .open(SHELL)
      .then((c) => c.addAll(__SHELL__))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (e) => {
  e.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("geostream-shell-") && k !== SHELL).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

async function networkFirst(req: Request, cacheName: string, key: string | Request = req): Promise<Response> {
  const cache = await caches.open(cacheName);
  try {
    const res = await fetch(req);
    if (res.ok) {
      await cache.put(key, res.clone());
      if (cacheName === TILES) void trim(cache);
    }
    return res;
  } catch (e) {
    const kept = await cache.match(key, { ignoreVary: true });
    if (kept) return kept;
    throw e;
  }
}

async function trim(cache: Cache): Promise<void> {
  const keys = await cache.keys();
  for (const k of keys.slice(0, Math.max(0, keys.length - MAX_TILES))) await cache.delete(k);
}

self.addEventListener("fetch", (e) => {
  const req = e.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  if (req.mode === "navigate" && (url.pathname === "/" || url.pathname === PAGE)) {
    e.respondWith(networkFirst(req, SHELL, PAGE));
  } else if (url.pathname.startsWith("/web/")) {
    e.respondWith(caches.match(req, { ignoreSearch: true, ignoreVary: true }).then((hit) => hit ?? fetch(req)));
  } else if (url.pathname.startsWith("/v1/tiles/")) {
    e.respondWith(networkFirst(req, TILES));
  }
});
