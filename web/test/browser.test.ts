/**
 * The demo page in headless Chromium (Debian's chromium, driven by playwright-core) against a
 * real `geostream serve`, as two new users would use it (Alice and Bob, a third for the
 * offline reload, a phone): drawing, locks and names, moving, the silent-overwrite scenario
 * of issue 15 ending in a conflict shown in words and neither edit lost, two changes of a
 * feature in one batch drawn with their properties, undo of a move and of a delete seen by the
 * other page, vertex editing, import and export of a real file, an offline reload through the
 * service worker with its queued edit delivered exactly once, a server restart, the live
 * ships with their popup, and the phone layout. Screenshots go to test-artifacts/web/.
 */
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { chromium, type Browser, type BrowserContext, type Page, type WebSocketRoute } from "playwright-core";

import { REPO, ServerProcess } from "../../clients/js/test/server.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(REPO, "test-artifacts/web");
const T = 30_000; // generous: a loaded 2-core machine renders WebGL in software
/**
 * The server's ship replay, faster than the default so that a few seconds show movement;
 * locks of a client that went away released after 1.5 s instead of 15 (the overwrite
 * scenario needs Alice's lock gone while she is offline); the page served from web/dist as
 * `npm test` has just built it, not the copy built into the binary when it was compiled.
 */
const ENV = {
  GEOSTREAM_WEB__SHIPS_SPEED: "60",
  GEOSTREAM_LAYERS__LOCK_GRACE_MS: "1500",
  GEOSTREAM_WEB__DIR: join(REPO, "web/dist"),
};
/** The world view the drawing tests use. */
const WORLD = "at=10,30,1.6";
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"];

type F = { id: string; name: string; coords: unknown; version: number; properties: Record<string, unknown> };

/** Features of the shared layer as page `p` holds them. */
function features(p: Page): Promise<F[]> {
  return p.evaluate(() => {
    const d = (window as unknown as { geostreamDemo: { layer: { features: Map<string, { id: string; properties: Record<string, unknown>; geometry: { coordinates: unknown }; version: number }> } | null } }).geostreamDemo;
    return [...(d.layer?.features.values() ?? [])].map((f) => ({ id: f.id, name: String(f.properties.name ?? ""), coords: f.geometry.coordinates, version: f.version, properties: f.properties }));
  });
}
const byName = async (p: Page, name: string): Promise<F | undefined> => (await features(p)).find((f) => f.name === name);

/** The ships page `p` holds: id, position, speed. */
function ships(p: Page): Promise<{ id: string; at: string; sog: number }[] | null> {
  return p.evaluate(() => {
    const d = (window as unknown as { geostreamDemo: { ships: { features: Map<string, { id: string; properties: { SOG?: number }; geometry: { coordinates: unknown } }> } | null } }).geostreamDemo;
    if (!d.ships) return null;
    return [...d.ships.features.values()].map((f) => ({ id: f.id, at: JSON.stringify(f.geometry.coordinates), sog: Number(f.properties.SOG ?? 0) }));
  });
}

/** Ships MapLibre has in its source (what it draws from). */
function drawnShips(p: Page): Promise<number> {
  return p.evaluate(() => {
    const d = (window as unknown as { geostreamDemo: { map: { querySourceFeatures(id: string): unknown[] } } }).geostreamDemo;
    return d.map.querySourceFeatures("ships").length;
  });
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

async function waitFor<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, timeout = T): Promise<T> {
  const end = Date.now() + timeout;
  let last: T = await get();
  while (!ok(last)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)?.slice(0, 2000)}`);
    await new Promise((r) => setTimeout(r, 100));
    last = await get();
  }
  return last;
}

/** The page pixel of `lngLat` on page `p`'s map. */
async function pixel(p: Page, lngLat: [number, number]): Promise<{ x: number; y: number }> {
  return p.evaluate((ll) => {
    const d = (window as unknown as { geostreamDemo: { map: { project(l: [number, number]): { x: number; y: number }; getCanvas(): HTMLCanvasElement } } }).geostreamDemo;
    const pt = d.map.project(ll);
    const r = d.map.getCanvas().getBoundingClientRect();
    return { x: r.left + pt.x, y: r.top + pt.y };
  }, lngLat);
}

/** Properties of what MapLibre has drawn of the shared layer at `lngLat`. */
function renderedAt(p: Page, lngLat: [number, number]): Promise<Record<string, unknown>[]> {
  return p.evaluate((ll) => {
    const d = (window as unknown as { geostreamDemo: { map: { project(l: [number, number]): { x: number; y: number }; queryRenderedFeatures(pt: [number, number], o: object): { properties: Record<string, unknown> }[] } } }).geostreamDemo;
    const pt = d.map.project(ll);
    return d.map.queryRenderedFeatures([pt.x, pt.y], { layers: ["draw-point", "draw-line", "draw-fill"] }).map((f) => f.properties);
  }, lngLat);
}

async function clickAt(p: Page, lngLat: [number, number]): Promise<void> {
  const at = await pixel(p, lngLat);
  await p.mouse.click(at.x, at.y);
}

async function dragFrom(p: Page, from: [number, number], dx: number, dy: number): Promise<void> {
  const at = await pixel(p, from);
  await p.mouse.move(at.x, at.y);
  await p.mouse.down();
  await p.mouse.move(at.x + dx / 2, at.y + dy / 2, { steps: 5 });
  await p.mouse.move(at.x + dx, at.y + dy, { steps: 5 });
  await p.mouse.up();
}

const dialogOpen = (p: Page): Promise<boolean> => p.evaluate(() => (document.getElementById("conflict") as HTMLDialogElement).open);
const lockText = (p: Page): Promise<string> => p.locator("#sel-lock").textContent().then((t) => t ?? "");

async function selectAt(p: Page, lngLat: [number, number]): Promise<void> {
  await p.click("#tools button[data-mode=select]");
  await clickAt(p, lngLat);
  await p.waitForSelector("#selection:not([hidden])", { timeout: T });
  await waitFor("the lock", () => lockText(p), (t) => t.includes("You are editing"));
}

describe("the demo page in Chromium", { timeout: 900_000 }, () => {
  const server = new ServerProcess();
  let browser: Browser;
  let ctxA: BrowserContext;
  let ctxB: BrowserContext;
  let a: Page;
  let b: Page;
  /** Whether A's WebSocket may reach the server (the test cuts it). */
  let aOnline = true;
  const aSockets: WebSocketRoute[] = [];

  async function cutA(): Promise<void> {
    aOnline = false;
    for (const ws of aSockets.splice(0)) await ws.close({ code: 4000, reason: "cut" }).catch(() => undefined);
    await waitFor("A to show it is not connected", () => a.locator("#status").getAttribute("data-state"), (s) => s !== "connected");
  }
  async function restoreA(): Promise<void> {
    aOnline = true;
    await waitFor("A connected again", () => a.locator("#status").getAttribute("data-state"), (s) => s === "connected", T * 2);
  }

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    await server.start(ENV);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
    ctxA = await browser.newContext({ viewport: { width: 1100, height: 700 }, acceptDownloads: true });
    ctxB = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    await ctxA.routeWebSocket(/\/v1\/ws/, (ws) => {
      if (!aOnline) {
        void ws.close({ code: 1006, reason: "cut by the test" }).catch(() => undefined);
        return;
      }
      ws.connectToServer();
      aSockets.push(ws);
    });
    a = await ctxA.newPage();
    b = await ctxB.newPage();
    for (const p of [a, b]) p.on("pageerror", (e) => console.error(`page error: ${e.message}`));
    await a.goto(`${server.httpUrl}/?name=Alice&${WORLD}`);
    await b.goto(`${server.httpUrl}/?name=Bob`);
    // The first load parses the bundle and starts software WebGL: slow on a loaded machine.
    for (const p of [a, b]) await p.waitForSelector("body[data-ready=true]", { timeout: T * 4 });
  });

  after(async () => {
    await browser?.close();
    await server.stop();
  });

  it("opens on the harbor with moving ships, says what to do, and shows a ship when clicked", async () => {
    // Bob's first view: the default one.
    assert.ok(await b.locator("#welcome").isVisible(), "the welcome card");
    assert.match((await b.locator("#welcome").textContent()) ?? "", /Point.*Line.*Polygon/s);
    await waitFor("ships drawn in the first view", () => drawnShips(b), (n) => n > 20);
    await new Promise((r) => setTimeout(r, 1000));
    await shot(b, "first-view");
    // A ship that is not moving stays put while we click it.
    const all = await waitFor("a stopped ship", () => ships(b), (s) => (s ?? []).some((x) => x.sog <= 0.1));
    const still = all!.filter((x) => x.sog <= 0.1);
    let shown = false;
    for (const s of still.slice(0, 10)) {
      const at = JSON.parse(s.at) as [number, number];
      const px = await pixel(b, at);
      if (px.x < 120 || px.x > 780 || px.y < 260 || px.y > 680) continue;
      await clickAt(b, at);
      try {
        await b.waitForSelector(".ship-popup", { timeout: 3000 });
        shown = true;
        break;
      } catch {
        /* hidden behind another ship: try the next one */
      }
    }
    assert.ok(shown, "a ship popup");
    const text = (await b.locator(".ship-popup").textContent()) ?? "";
    for (const k of ["type", "speed", "last report", "MMSI"]) assert.ok(text.includes(k), `${k} in ${text}`);
    await shot(b, "ship-popup");
    // Using the map dismissed the card, for good.
    assert.equal(await b.locator("#welcome").isVisible(), false);
    await b.goto(`${server.httpUrl}/?name=Bob&${WORLD}`);
    await b.waitForSelector("body[data-ready=true]", { timeout: T * 2 });
    assert.equal(await b.locator("#welcome").isVisible(), false, "dismissed for good");
    await a.click("#welcome-close");
  });

  it("shows who is here, by name", async () => {
    for (const p of [a, b]) {
      await waitFor("two people", () => p.locator("#people li").allTextContents(), (t) => t.length === 2);
    }
    const names = (await a.locator("#people li").allTextContents()).sort();
    assert.deepEqual(names, ["Alice (you)", "Bob"]);
    const at = await pixel(a, [20, 10]);
    await a.mouse.move(at.x, at.y);
    await a.mouse.move(at.x + 30, at.y + 10, { steps: 3 });
    await waitFor("Alice's cursor on B", () => b.locator(".cursor").allTextContents(), (t) => t.some((x) => x.includes("Alice")));
  });

  it("A draws a point and B sees it, named and labelled", async () => {
    await a.click("#tools button[data-mode=point]");
    const t0 = Date.now();
    await clickAt(a, [10, 30]);
    const got = await waitFor("B to hold A's point", () => features(b), (f) => f.some((x) => x.name === "point 1 by Alice"));
    console.log(`A's point reached B in ${Date.now() - t0} ms`);
    const [lon, lat] = got.find((x) => x.name === "point 1 by Alice")!.coords as [number, number];
    assert.ok(Math.abs(lon - 10) < 1 && Math.abs(lat - 30) < 1, `at ${lon},${lat}`);
    await waitFor("the label on B", () => b.locator(".label").allTextContents(), (t) => t.includes("point 1 by Alice"));
    await waitFor("the feature list on B", () => b.locator("#features-list li").allTextContents(), (t) => t.some((x) => x.includes("point 1 by Alice")));
  });

  it("A locks the point and B sees the lock by name; B cannot edit it", async () => {
    await selectAt(a, [10, 30]);
    await waitFor("B to show the lock", () => b.locator(".lock-badge").allTextContents(), (t) => t.includes("Alice is editing"));
    await b.click("#tools button[data-mode=select]");
    await clickAt(b, [10, 30]);
    await waitFor("B's panel", () => lockText(b), (t) => t.includes("Locked by Alice"));
    assert.equal(await b.locator("#sel-save").isDisabled(), true);
    await shot(b, "1-b-sees-lock");
    await b.click("#sel-close");
    await a.click("#sel-close");
    await waitFor("the lock to go away on B", () => b.locator(".lock-badge").count(), (n) => n === 0);
  });

  it("B moves the point and A sees the move", async () => {
    await selectAt(b, [10, 30]);
    await dragFrom(b, [10, 30], 80, 40);
    const moved = await waitFor("A to see the move", () => byName(a, "point 1 by Alice"), (f) => (f?.coords as number[])[0]! > 12);
    assert.ok(moved!.version >= 2);
    await b.click("#sel-close");
  });

  it("an offline move and a rename end in a conflict shown in words; merging keeps both", async () => {
    const start = (await byName(a, "point 1 by Alice"))!;
    const at = start.coords as [number, number];
    await selectAt(a, at);
    await cutA();
    // Offline, the lock is dropped on the page; what Alice does is queued with its base.
    await waitFor("A's panel to say it is not locked", () => lockText(a), (t) => t.startsWith("Offline"));
    await dragFrom(a, at, 0, 60);
    await waitFor("A's queued move", () => a.locator("#queued").getAttribute("data-count"), (c) => c === "1");
    // Her lock is released by the server; Bob renames the feature.
    await waitFor("B to see the lock go", () => b.locator(".lock-badge").count(), (n) => n === 0, T);
    await selectAt(b, at);
    await b.fill("#sel-name", "Pier 7");
    await b.click("#sel-save");
    await waitFor("the rename", () => byName(b, "Pier 7"), (f) => f !== undefined);
    await b.click("#sel-close");
    // Alice comes back: her move is refused as a conflict, kept, and explained.
    await restoreA();
    await waitFor("the conflict dialog", () => dialogOpen(a), (o) => o);
    const text = (await a.locator("#conflict-text").textContent()) ?? "";
    assert.match(text, /Bob renamed it to 'Pier 7' while you were offline/);
    assert.match(text, /You moved it/);
    assert.equal(await a.locator("#conflict-merge").isVisible(), true);
    await shot(a, "conflict-dialog");
    // Her open panel followed Bob's rename.
    await waitFor("A's panel to show Bob's name", () => a.locator("#sel-name").inputValue(), (v) => v === "Pier 7");
    // Kept over a reload, offered again.
    await a.click("#conflict-later");
    await a.reload();
    await a.waitForSelector("body[data-ready=true]", { timeout: T * 2 });
    await waitFor("the conflict dialog again", () => dialogOpen(a), (o) => o);
    assert.equal(await a.locator("#conflicts-button").getAttribute("data-count"), "1");
    await a.click("#conflict-merge");
    // Both edits are there, for both.
    for (const p of [a, b]) {
      await waitFor(
        "the merged feature",
        () => byName(p, "Pier 7"),
        (f) => f !== undefined && (f.coords as number[])[1]! < at[1] - 1 && Math.abs((f.coords as number[])[0]! - at[0]) < 0.5,
      );
    }
    assert.equal(await a.locator("#conflicts-button").isHidden(), true);
    assert.equal((await features(b)).filter((f) => f.name === "Pier 7").length, 1);
  });

  it("two changes of a feature in one batch are drawn with their properties", async () => {
    const f = (await byName(a, "Pier 7"))!;
    const at = f.coords as [number, number];
    await cutA();
    // Bob changes name and colour, two edits.
    await b.evaluate(
      async ({ id, version }) => {
        const d = (window as unknown as { geostreamDemo: { client: { patchFeature(l: string, id: string, p: object, o: object): Promise<{ version: number }> } } }).geostreamDemo;
        const r = await d.client.patchFeature("draw", id, { properties: { name: "Pier 8" } }, { version });
        await d.client.patchFeature("draw", id, { properties: { color: "#30a46c" } }, { version: r.version });
      },
      { id: f.id, version: f.version },
    );
    // Alice's page draws the next frame late, so both changes, replayed on reconnect, land
    // in one batch of the adapter (the case that lost every property).
    await a.evaluate(() => {
      const w = window as unknown as { __raf: typeof requestAnimationFrame; __diffs: unknown[]; geostreamDemo: { map: { getSource(id: string): { updateData(d: unknown): unknown } } } };
      w.__raf = window.requestAnimationFrame.bind(window);
      window.requestAnimationFrame = (cb) => w.__raf(() => setTimeout(() => w.__raf(cb), 500)) as number;
      w.__diffs = [];
      const src = w.geostreamDemo.map.getSource("draw");
      const orig = src.updateData.bind(src);
      src.updateData = (d: unknown) => {
        w.__diffs.push(JSON.parse(JSON.stringify(d)));
        return orig(d);
      };
    });
    await restoreA();
    await waitFor("A to hold both changes", () => byName(a, "Pier 8"), (x) => x?.properties.color === "#30a46c");
    await waitFor("A's map to get them", () => a.evaluate(() => (window as unknown as { __diffs: unknown[] }).__diffs.length), (n) => n > 0);
    await a.evaluate(() => {
      const w = window as unknown as { __raf: typeof requestAnimationFrame };
      window.requestAnimationFrame = w.__raf;
    });
    const diffs = (await a.evaluate(() => (window as unknown as { __diffs: unknown[] }).__diffs)) as { add?: { id: string }[]; update?: unknown[] }[];
    assert.ok(diffs.some((d) => d.add?.some((x) => x.id === f.id)), `one batch replaced the feature: ${JSON.stringify(diffs)}`);
    const drawn = await waitFor("MapLibre to draw the new properties", () => renderedAt(a, at), (r) => r.some((p) => p.name === "Pier 8" && p.color === "#30a46c"));
    assert.equal(drawn.find((p) => p.name === "Pier 8")!.fid, f.id);
    // And it can still be selected.
    await selectAt(a, at);
    await a.click("#sel-close");
  });

  it("undo of a move and of a delete are real edits that B sees", async () => {
    await a.click("#tools button[data-mode=point]");
    await clickAt(a, [-20, 40]);
    const p = await waitFor("B to hold point 2", () => byName(b, "point 2 by Alice"), (f) => f !== undefined);
    const at = p!.coords as [number, number];
    await selectAt(a, at);
    await dragFrom(a, at, 60, 0);
    await waitFor("B to see the move", () => byName(b, "point 2 by Alice"), (f) => (f!.coords as number[])[0]! > at[0] + 1);
    await a.click("#undo");
    await waitFor("B to see the move undone", () => byName(b, "point 2 by Alice"), (f) => Math.abs((f!.coords as number[])[0]! - at[0]) < 1e-9);
    await a.click("#redo");
    await waitFor("B to see it redone", () => byName(b, "point 2 by Alice"), (f) => (f!.coords as number[])[0]! > at[0] + 1);
    await a.click("#undo");
    await waitFor("B to see it undone again", () => byName(b, "point 2 by Alice"), (f) => Math.abs((f!.coords as number[])[0]! - at[0]) < 1e-9);
    // Delete (the key), then undo (Ctrl+Z): the same feature comes back.
    await selectAt(a, at);
    await waitFor("B to see Alice's lock", () => b.locator(".lock-badge").allTextContents(), (t) => t.includes("Alice is editing"));
    await a.locator("#map canvas").focus();
    await a.keyboard.press("Delete");
    await waitFor("B to see the delete", () => byName(b, "point 2 by Alice"), (f) => f === undefined);
    await waitFor("no ghost badge on B", () => b.locator(".lock-badge").count(), (n) => n === 0);
    await a.keyboard.press("Control+z");
    const back = await waitFor("B to see it back", () => byName(b, "point 2 by Alice"), (f) => f !== undefined);
    assert.equal(back!.id, p!.id, "the same id");
    assert.deepEqual(back!.coords, p!.coords);
    assert.equal(back!.properties.color, p!.properties.color);
  });

  it("vertices of a line move, are added and removed, as B sees", async () => {
    await a.click("#tools button[data-mode=line]");
    for (const c of [[-60, 0], [-40, 10], [-20, 0]] as [number, number][]) await clickAt(a, c);
    await a.keyboard.press("Enter");
    const line = await waitFor("B to hold the line", () => byName(b, "line 1 by Alice"), (f) => f !== undefined);
    await selectAt(a, [-50, 5]);
    const n = (): Promise<number> => byName(b, "line 1 by Alice").then((f) => (f!.coords as unknown[]).length);
    // Move the middle vertex down.
    await dragFrom(a, [-40, 10], 0, 50);
    await waitFor("B to see the vertex moved", () => byName(b, "line 1 by Alice"), (f) => ((f!.coords as number[][])[1]![1]!) < 5);
    // A hears of its own edit on its own subscription, which may come after B's: take the
    // line from A only once A holds the move too, or the midpoint is the old line's.
    const moved = (await waitFor("A to hold the vertex moved", () => byName(a, "line 1 by Alice"), (f) => ((f!.coords as number[][])[1]![1]!) < 5))!.coords as [number, number][];
    // Drag the midpoint handle of the first segment: a new vertex.
    const mid: [number, number] = [(moved[0]![0] + moved[1]![0]) / 2, (moved[0]![1] + moved[1]![1]) / 2];
    // The handles are redrawn from the moved line by MapLibre's worker, a moment after the
    // page holds it, and the page finds the handle under the pointer among what is drawn
    // (queryRenderedFeatures): wait until a handle is drawn where the pointer will go, or
    // the drag pans the map and the double-click zooms it.
    const handleAt = (at: [number, number], isMid: boolean): Promise<boolean> =>
      a.evaluate(
        ([x, y, m]) => {
          const map = (window as unknown as { geostreamDemo: { map: { triggerRepaint(): void; project(l: [number, number]): { x: number; y: number }; queryRenderedFeatures(pt: [number, number], o: object): unknown[] } } }).geostreamDemo.map;
          // Source tiles are reloaded, and the handles drawn, on render frames, which a
          // headless page under load may not schedule: ask for one on every look.
          map.triggerRepaint();
          const pt = map.project([x as number, y as number]);
          return map.queryRenderedFeatures([pt.x, pt.y], { layers: [m ? "vertex-mid" : "vertex"] }).length > 0;
        },
        [at[0], at[1], isMid] as const,
      );
    await waitFor("A's midpoint handle at the moved line", () => handleAt(mid, true), (found) => found);
    await dragFrom(a, mid, 0, -40);
    await waitFor("B to see 4 vertices", n, (c) => c === 4);
    // Double-click a vertex: removed.
    const now = (await waitFor("A to hold 4 vertices", () => byName(a, "line 1 by Alice"), (f) => (f!.coords as unknown[]).length === 4))!.coords as [number, number][];
    await waitFor("A's vertex handle at the new line", () => handleAt(now[1]!, false), (found) => found);
    const v = await pixel(a, now[1]!);
    await a.mouse.dblclick(v.x, v.y);
    await waitFor("B to see 3 vertices", n, (c) => c === 3);
    assert.equal((await byName(b, "line 1 by Alice"))!.id, line!.id);
    await a.click("#sel-close");
  });

  it("the properties editor sets description, colour and any property; the list searches and zooms", async () => {
    const f = (await byName(a, "line 1 by Alice"))!;
    await a.fill("#features-search", "line 1");
    await waitFor("the search", () => a.locator("#features-list li").count(), (c) => c === 1);
    await a.locator("#features-list li button").focus();
    await a.keyboard.press("Enter");
    await waitFor("the lock", () => lockText(a), (t) => t.includes("You are editing"));
    await a.fill("#sel-description", "the ferry route");
    await a.fill("#sel-color", "#8e4ec6");
    await a.fill("#sel-newkey", "depth");
    await a.click("#sel-addprop");
    await a.fill('#sel-props input[data-key="depth"]', "12");
    await a.click("#sel-save");
    const got = await waitFor("B to see the properties", () => byName(b, "line 1 by Alice"), (x) => x?.properties.description === "the ferry route");
    assert.equal(got!.properties.color, "#8e4ec6");
    assert.equal(got!.properties.depth, "12");
    assert.equal(got!.id, f.id);
    await a.click("#sel-close");
    await a.fill("#features-search", "");
  });

  it("imports a real GeoJSON file and exports the layer with it", async () => {
    const file = join(REPO, "datasets/lines/london_tube_lines.geojson");
    const input = JSON.parse(readFileSync(file, "utf8")) as { features: { properties: Record<string, unknown>; geometry: unknown }[] };
    const before = (await features(b)).length;
    const chooser = a.waitForEvent("filechooser");
    await a.click("#import");
    await (await chooser).setFiles(file);
    await waitFor("B to hold the imported features", () => features(b).then((f) => f.length), (n) => n === before + input.features.length, T * 2);
    const download = a.waitForEvent("download");
    await a.click("#export");
    const out = JSON.parse(readFileSync(await (await download).path(), "utf8")) as { type: string; features: { id: string; properties: Record<string, unknown>; geometry: unknown }[] };
    assert.equal(out.type, "FeatureCollection");
    assert.equal(out.features.length, before + input.features.length);
    const key = (f: { properties: unknown; geometry: unknown }): string => JSON.stringify([f.properties, f.geometry]);
    const exported = new Map<string, number>();
    for (const f of out.features) exported.set(key(f), (exported.get(key(f)) ?? 0) + 1);
    for (const f of input.features) {
      const k = key(f);
      assert.ok((exported.get(k) ?? 0) > 0, `exported: ${k.slice(0, 200)}`);
      exported.set(k, exported.get(k)! - 1);
    }
    // Undo removes the whole import.
    await a.click("#undo");
    await waitFor("B to see the import undone", () => features(b).then((f) => f.length), (n) => n === before, T * 2);
  });

  it("an edit made while cut off, kept over a reload, arrives at B exactly once", async () => {
    await cutA();
    await a.click("#tools button[data-mode=point]");
    await clickAt(a, [-40, 10]);
    await waitFor("A's queued edit", () => a.locator("#queued").getAttribute("data-count"), (c) => c === "1");
    await shot(a, "2-a-offline-queued");
    await a.reload();
    await waitFor("the queued edit after the reload", () => a.locator("#queued").getAttribute("data-count"), (c) => c === "1");
    aOnline = true;
    await a.waitForSelector("body[data-ready=true]", { timeout: T * 2 });
    await waitFor("B to hold the offline point", () => features(b), (f) => f.some((x) => x.name.startsWith("point 3 by Alice")));
    await waitFor("A's outbox to empty", () => a.locator("#queued").getAttribute("data-count"), (c) => c === "0");
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await features(b)).filter((f) => f.name === "point 3 by Alice").length, 1);
  });

  it("with no network at all, the page reloads from its service worker with its queued edit, then delivers it once", async () => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const c = await ctx.newPage();
    c.on("pageerror", (e) => console.error(`page error (C): ${e.message}`));
    // The worker's scope is /web/ unless the server allows more: open the page there.
    await c.goto(`${server.httpUrl}/web/index.html?name=Carol&${WORLD}`);
    await c.waitForSelector("body[data-ready=true]", { timeout: T * 2 });
    await waitFor("the service worker in control", () => c.evaluate(() => navigator.serviceWorker.controller !== null), (x) => x);
    await ctx.setOffline(true);
    await waitFor("C offline", () => c.locator("#status").getAttribute("data-state"), (s) => s !== "connected");
    await c.click("#tools button[data-mode=point]");
    await clickAt(c, [30, 40]);
    await waitFor("C's queued edit", () => c.locator("#queued").getAttribute("data-count"), (x) => x === "1");
    await c.reload();
    await waitFor("the queued edit after an offline reload", () => c.locator("#queued").getAttribute("data-count"), (x) => x === "1");
    await waitFor(
      "the queued point drawn",
      () => c.evaluate(() => (window as unknown as { geostreamDemo: { map: { querySourceFeatures(s: string): unknown[] } } }).geostreamDemo.map.querySourceFeatures("pending").length),
      (n) => n >= 1,
    );
    await shot(c, "offline-reload");
    await ctx.setOffline(false);
    await waitFor("B to hold Carol's point", () => features(b), (f) => f.some((x) => x.name === "point 1 by Carol"));
    await waitFor("C's outbox to empty", () => c.locator("#queued").getAttribute("data-count"), (x) => x === "0");
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await features(b)).filter((f) => f.name === "point 1 by Carol").length, 1);
    await ctx.close();
  });

  it("a server restart shows reconnecting, then everything comes back", async () => {
    const count = (await features(b)).length;
    await server.stop();
    for (const p of [a, b]) {
      await waitFor("the indicator to show reconnecting", () => p.locator("#status-text").textContent(), (t) => (t ?? "").startsWith("reconnecting"));
    }
    await shot(b, "3-b-reconnecting");
    await server.start(ENV);
    for (const p of [a, b]) {
      await waitFor("reconnected", () => p.locator("#status").getAttribute("data-state"), (s) => s === "connected", T * 2);
      await waitFor("two people again", () => p.locator("#people li").count(), (n) => n === 2);
    }
    assert.equal((await features(b)).length, count);
    await a.click("#tools button[data-mode=point]");
    await clickAt(a, [60, 20]);
    await waitFor("B to see a point drawn after the restart", () => features(b), (f) => f.length === count + 1);
  });

  it("the ships move; the toggle hides and shows them", async () => {
    const first = await waitFor("ships on B", () => ships(b), (s) => (s?.length ?? 0) > 50);
    const seen = new Map(first!.map((s) => [s.id, s.at]));
    const t0 = Date.now();
    await waitFor("a ship to move on B", () => ships(b), (s) => (s ?? []).some((x) => seen.has(x.id) && seen.get(x.id) !== x.at));
    console.log(`${first!.length} ships on B; one moved within ${Date.now() - t0} ms`);
    await b.click("#to-harbor");
    await waitFor("the harbor's ships drawn", () => drawnShips(b), (n) => n > 20);
    await new Promise((r) => setTimeout(r, 1000));
    await shot(b, "5-b-ships-in-the-harbor");
    await b.click("#ships-toggle");
    await waitFor("no ships when toggled off", () => drawnShips(b), (n) => n === 0);
    assert.equal(await ships(b), null);
    await b.click("#ships-toggle");
    await waitFor("ships back when toggled on", () => drawnShips(b), (n) => n > 20);
  });

  it("on a 390×844 phone the map takes the width and the panel is a bottom sheet", async () => {
    const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    const p = await ctx.newPage();
    await p.goto(`${server.httpUrl}/?name=Dana`);
    await p.waitForSelector("body[data-ready=true]", { timeout: T * 2 });
    const mapBox = (await p.locator("#map").boundingBox())!;
    assert.ok(mapBox.width >= 0.8 * 390, `map ${mapBox.width} px wide`);
    const sheet = (await p.locator("#panel").boundingBox())!;
    assert.ok(sheet.y > 844 / 2 && sheet.width >= 380, `panel at ${JSON.stringify(sheet)}`);
    await waitFor("ships drawn on the phone", () => drawnShips(p), (n) => n > 20);
    await new Promise((r) => setTimeout(r, 1000));
    await shot(p, "phone");
    // The tools are reachable by touch.
    await p.tap("#tools button[data-mode=point]");
    assert.equal(await p.locator("#tools button[data-mode=point]").getAttribute("aria-pressed"), "true");
    await ctx.close();
  });
});
