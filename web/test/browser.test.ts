/**
 * The demo page in two headless Chromium contexts (Debian's chromium, driven by
 * playwright-core) against a real `geostream serve`: drawing, moving, locks, presence, an
 * edit made while cut off and sent after a reload exactly once, a server restart, and the
 * live ships replayed from AIS (turned on here at 60 times real time).
 * Screenshots of both views go to test-artifacts/web/.
 */
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { chromium, type Browser, type BrowserContext, type Page, type WebSocketRoute } from "playwright-core";

import { REPO, ServerProcess } from "../../clients/js/test/server.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(REPO, "test-artifacts/web");
const T = 30_000; // generous: a loaded 2-core machine renders WebGL in software
/** The server's ship replay, faster than the default so that a few seconds show movement. */
const SHIPS_ON = { GEOSTREAM_WEB__SHIPS_SPEED: "60" };

/** The ships page `p` holds: id and position. */
function ships(p: Page): Promise<{ id: string; at: string }[] | null> {
  return p.evaluate(() => {
    const d = (window as unknown as { geostreamDemo: { ships: { features: Map<string, { id: string; geometry: { coordinates: unknown } }> } | null } }).geostreamDemo;
    if (!d.ships) return null;
    return [...d.ships.features.values()].map((f) => ({ id: f.id, at: JSON.stringify(f.geometry.coordinates) }));
  });
}

/** Ships MapLibre has in its source (what it draws from). */
function drawnShips(p: Page): Promise<number> {
  return p.evaluate(() => {
    const d = (window as unknown as { geostreamDemo: { map: { querySourceFeatures(id: string): unknown[] } } }).geostreamDemo;
    return d.map.querySourceFeatures("ships").length;
  });
}

interface Demo {
  ready(): Promise<void>;
}
void (null as unknown as Demo);

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

/** Features of the shared layer as page `p` holds them. */
function features(p: Page): Promise<{ id: string; name: string; coords: unknown; version: number }[]> {
  return p.evaluate(() => {
    const d = (window as unknown as { geostreamDemo: { layer: { features: Map<string, { id: string; properties: { name: string }; geometry: { coordinates: unknown }; version: number }> } | null } }).geostreamDemo;
    return [...(d.layer?.features.values() ?? [])].map((f) => ({ id: f.id, name: f.properties.name, coords: f.geometry.coordinates, version: f.version }));
  });
}

async function waitFor<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, timeout = T): Promise<T> {
  const end = Date.now() + timeout;
  let last: T = await get();
  while (!ok(last)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
    last = await get();
  }
  return last;
}

/** The pixel of the map canvas at `lngLat` in page `p`. */
async function pixel(p: Page, lngLat: [number, number]): Promise<{ x: number; y: number }> {
  return p.evaluate((ll) => {
    const d = (window as unknown as { geostreamDemo: { map: { project(l: [number, number]): { x: number; y: number }; getCanvas(): HTMLCanvasElement } } }).geostreamDemo;
    const pt = d.map.project(ll);
    const r = d.map.getCanvas().getBoundingClientRect();
    return { x: r.left + pt.x, y: r.top + pt.y };
  }, lngLat);
}

describe("the demo page in Chromium", { timeout: 600_000 }, () => {
  const server = new ServerProcess();
  let browser: Browser;
  let ctxA: BrowserContext;
  let ctxB: BrowserContext;
  let a: Page;
  let b: Page;
  /** Whether A's WebSocket may reach the server (the test cuts it). */
  let aOnline = true;
  const aSockets: WebSocketRoute[] = [];

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    await server.start(SHIPS_ON);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    });
    ctxA = await browser.newContext({ viewport: { width: 1100, height: 700 } });
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
    await a.goto(`${server.httpUrl}/?name=Alice`);
    await b.goto(`${server.httpUrl}/?name=Bob`);
    for (const p of [a, b]) await p.waitForSelector("body[data-ready=true]", { timeout: T * 2 });
  });

  after(async () => {
    await browser?.close();
    await server.stop();
  });

  it("shows who is here", async () => {
    for (const p of [a, b]) {
      await waitFor("two people", () => p.locator("#people li").allTextContents(), (t) => t.length === 2);
    }
    const names = (await a.locator("#people li").allTextContents()).sort();
    assert.deepEqual(names, ["Alice (you)", "Bob"]);
    assert.equal(await a.locator("#status").getAttribute("data-state"), "connected");
    // Alice's pointer shows on Bob's map with her name (layer presence cursors).
    const at = await pixel(a, [20, 10]);
    await a.mouse.move(at.x, at.y);
    await a.mouse.move(at.x + 30, at.y + 10, { steps: 3 });
    const cursor = b.locator(".cursor");
    await waitFor("Alice's cursor on B", () => cursor.allTextContents(), (t) => t.some((x) => x.includes("Alice")));
  });

  it("A draws a point and B sees it", async () => {
    await a.click("#tools button[data-mode=point]");
    const at = await pixel(a, [10, 30]);
    const t0 = Date.now();
    await a.mouse.click(at.x, at.y);
    const got = await waitFor("B to hold A's point", () => features(b), (f) => f.some((x) => x.name === "point 1 by Alice"));
    const ms = Date.now() - t0;
    console.log(`A's point reached B in ${ms} ms`);
    const p = got.find((x) => x.name === "point 1 by Alice")!;
    const [lon, lat] = p.coords as [number, number];
    assert.ok(Math.abs(lon - 10) < 1 && Math.abs(lat - 30) < 1, `at ${lon},${lat}`);
    await a.click("#tools button[data-mode=select]");
  });

  it("A locks the point and B sees the lock; B cannot edit it", async () => {
    const at = await pixel(a, [10, 30]);
    await a.mouse.click(at.x, at.y);
    await a.waitForSelector("#selection:not([hidden])", { timeout: T });
    await waitFor("A to hold the lock", () => a.locator("#sel-lock").textContent(), (t) => (t ?? "").includes("You are editing"));
    const badge = b.locator(".lock-badge");
    await waitFor("B to show the lock", () => badge.allTextContents(), (t) => t.some((x) => x.includes("Alice")));
    // B clicks it: it is shown as locked by Alice, and not editable.
    const atB = await pixel(b, [10, 30]);
    await b.mouse.click(atB.x, atB.y);
    await waitFor("B's panel", () => b.locator("#sel-lock").textContent(), (t) => (t ?? "").includes("Locked by Alice"));
    assert.equal(await b.locator("#sel-save").isDisabled(), true);
    await shot(a, "1-a-locked");
    await shot(b, "1-b-sees-lock");
    await b.click("#sel-close");
    await a.click("#sel-close");
    await waitFor("the lock to go away on B", () => badge.count(), (n) => n === 0);
  });

  it("B moves the point and A sees the move", async () => {
    const from = await pixel(b, [10, 30]);
    await b.mouse.click(from.x, from.y);
    await waitFor("B to hold the lock", () => b.locator("#sel-lock").textContent(), (t) => (t ?? "").includes("You are editing"));
    await b.mouse.move(from.x, from.y);
    await b.mouse.down();
    await b.mouse.move(from.x + 40, from.y + 20, { steps: 5 });
    await b.mouse.move(from.x + 80, from.y + 40, { steps: 5 });
    await b.mouse.up();
    const moved = await waitFor(
      "A to see the move",
      () => features(a),
      (f) => f.some((x) => x.name === "point 1 by Alice" && (x.coords as number[])[0]! > 12),
    );
    const p = moved.find((x) => x.name === "point 1 by Alice")!;
    assert.ok(p.version >= 2);
    await b.click("#sel-close");
  });

  it("an edit made while cut off, kept over a reload, arrives at B exactly once", async () => {
    aOnline = false;
    for (const ws of aSockets.splice(0)) await ws.close({ code: 4000, reason: "cut" }).catch(() => undefined);
    await waitFor("A to show it is not connected", () => a.locator("#status").getAttribute("data-state"), (s) => s !== "connected");
    await a.click("#tools button[data-mode=point]");
    const at = await pixel(a, [-40, 10]);
    await a.mouse.click(at.x, at.y);
    await waitFor("A's queued edit", () => a.locator("#queued").getAttribute("data-count"), (c) => c === "1");
    await shot(a, "2-a-offline-queued");
    await a.reload();
    await waitFor("the queued edit after the reload", () => a.locator("#queued").getAttribute("data-count"), (c) => c === "1");
    assert.equal((await features(b)).filter((f) => f.name === "point 1 by Alice").length, 1);
    aOnline = true;
    await a.waitForSelector("body[data-ready=true]", { timeout: T * 2 });
    await waitFor("B to hold the offline point", () => features(b), (f) => f.some((x) => (x.coords as number[])[0]! < -30));
    await waitFor("A's outbox to empty", () => a.locator("#queued").getAttribute("data-count"), (c) => c === "0");
    // Let any duplicate arrive, then count.
    await new Promise((r) => setTimeout(r, 1500));
    const offline = (await features(b)).filter((f) => (f.coords as number[])[0]! < -30);
    assert.equal(offline.length, 1, JSON.stringify(offline));
  });

  it("a server restart shows reconnecting, then everything comes back", async () => {
    const before = (await features(b)).length;
    await server.stop();
    for (const p of [a, b]) {
      await waitFor("the indicator to show reconnecting", () => p.locator("#status-text").textContent(), (t) => (t ?? "").startsWith("reconnecting"));
    }
    await shot(b, "3-b-reconnecting");
    await server.start();
    for (const p of [a, b]) {
      await waitFor("reconnected", () => p.locator("#status").getAttribute("data-state"), (s) => s === "connected", T * 2);
      await waitFor("two people again", () => p.locator("#people li").count(), (n) => n === 2);
    }
    assert.equal((await features(b)).length, before);
    await a.click("#tools button[data-mode=point]");
    const at = await pixel(a, [60, 20]);
    await a.mouse.click(at.x, at.y);
    await waitFor("B to see a point drawn after the restart", () => features(b), (f) => f.length === before + 1);
    await shot(a, "4-a-after-restart");
    await shot(b, "4-b-after-restart");
  });

  it("the ships move; the toggle hides and shows them", async () => {
    // Ships began when the page was first served, and went on after the restart.
    const first = await waitFor("ships on B", () => ships(b), (s) => (s?.length ?? 0) > 50);
    const before = new Map(first!.map((s) => [s.id, s.at]));
    const t0 = Date.now();
    await waitFor("a ship to move on B", () => ships(b), (s) => (s ?? []).some((x) => before.has(x.id) && before.get(x.id) !== x.at));
    console.log(`${first!.length} ships on B; one moved within ${Date.now() - t0} ms`);
    await waitFor("the ships drawn", () => drawnShips(b), (n) => n > 50);
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
});
