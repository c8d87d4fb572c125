/**
 * How many live ships and viewers the demo page handles smoothly: a real `geostream serve`
 * replays the shipped AIS hour (295 vessels, New York harbor) at increasing speeds, and one
 * or more demo pages in headless Chromium (Debian's chromium driven by playwright-core, the
 * same flags as the browser tests) watch the harbor. Each page measures, over a window:
 *
 * - frames per second (requestAnimationFrame callbacks) and the 95th percentile frame time;
 * - ship changes received per second;
 * - the latency of a position from the server's write (`replayed_ms`, stamped by the replay)
 *   to the page's `updateData` call on the map source (same machine, same clock);
 * - the time to first render: from navigation start until the map has drawn its first view
 *   (the harbor, the page's default) with the basemap's tiles loaded and, when the replay runs,
 *   ships in the map's source.
 *
 * Run: `npm run bench` in web/ (needs `target/debug/geostream`, or GS_TEST_SERVER_BIN; a
 * release build gives the server more headroom). Settings: BENCH_SECONDS (measuring window,
 * default 10), BENCH_SCENARIOS ("speed:pages,..."; default below; speed 0 = no ships, the
 * page's baseline frame rate). Prints a table and writes
 * test-artifacts/web/bench-ships.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { chromium, type Browser, type Page } from "playwright-core";

import { REPO, ServerProcess } from "../../clients/js/test/server.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
/** Replay speed (time factor; the file has 2.41 positions per second of data) and pages. */
const SCENARIOS: { speed: number; pages: number }[] = (process.env.BENCH_SCENARIOS ?? "0:1,20:1,100:1,400:1,1600:1,100:2,100:4,400:4")
  .split(",")
  .map((s) => {
    const [speed, pages] = s.split(":").map(Number);
    return { speed: speed!, pages: pages ?? 1 };
  });

interface Sample {
  frames: number[];
  changes: number;
  latencies: number[];
  ships: number;
  drawn: number;
}

interface Row {
  speed: number;
  pages: number;
  ships: number;
  drawn: number;
  changesPerSec: number;
  fps: number;
  frameP95: number;
  latP50: number;
  latP95: number;
  latP99: number;
  /** Time to first render of the slowest page, ms. */
  firstRenderMs: number;
}

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function openPage(browser: Browser, url: string, i: number, ships: boolean): Promise<{ page: Page; firstRenderMs: number }> {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const p = await ctx.newPage();
  p.on("pageerror", (e) => console.error(`page ${i} error: ${e.message}`));
  // The page opens on the harbor (its default view).
  await p.goto(`${url}/?name=Viewer${i}`);
  const firstRenderMs = await p.evaluate(async (ships) => {
    type M = { isSourceLoaded(id: string): boolean; querySourceFeatures(id: string): unknown[]; getSource(id: string): unknown };
    for (;;) {
      const d = (window as unknown as { geostreamDemo?: { map: M } }).geostreamDemo;
      const m = d?.map;
      // The basemap's tiles of the view loaded (not `areTilesLoaded`: with ships moving, their
      // source is never idle), and ships in their source.
      if (document.body.dataset.ready === "true" && m?.getSource("countries") && m.isSourceLoaded("countries") && (!ships || m.querySourceFeatures("ships").length > 0)) {
        // The frame after: what was loaded is on screen.
        await new Promise((r) => requestAnimationFrame(() => r(null)));
        return performance.now();
      }
      if (performance.now() > 120_000) throw new Error("no first render in 120 s");
      await new Promise((r) => setTimeout(r, 20));
    }
  }, ships);
  return { page: p, firstRenderMs };
}

/** Waits until the page holds at least `n` ships. */
async function waitShips(p: Page, n: number): Promise<void> {
  const end = Date.now() + 60_000;
  for (;;) {
    const held = await p.evaluate(() => (window as unknown as { geostreamDemo: { ships: { features: Map<string, unknown> } | null } }).geostreamDemo.ships?.features.size ?? 0);
    if (held >= n) return;
    if (Date.now() > end) throw new Error(`only ${held} ships after 60 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function measure(p: Page, ms: number): Promise<Sample> {
  return p.evaluate(async (ms) => {
    const d = (
      window as unknown as {
        geostreamDemo: {
          shipStats: { changes: number; latencies: number[] };
          ships: { features: Map<string, unknown> } | null;
          map: { querySourceFeatures(id: string): unknown[] };
        };
      }
    ).geostreamDemo;
    d.shipStats.latencies.length = 0;
    const c0 = d.shipStats.changes;
    const frames: number[] = [];
    let last = performance.now();
    let running = true;
    const tick = (t: number): void => {
      frames.push(t - last);
      last = t;
      if (running) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    await new Promise((r) => setTimeout(r, ms));
    running = false;
    return {
      frames: frames.slice(1),
      changes: d.shipStats.changes - c0,
      latencies: d.shipStats.latencies.slice(),
      ships: d.ships?.features.size ?? 0,
      drawn: d.map.querySourceFeatures("ships").length,
    };
  }, ms);
}

async function scenario(browser: Browser, speed: number, pages: number): Promise<Row> {
  const server = new ServerProcess();
  await server.start({ GEOSTREAM_WEB__SHIPS_SPEED: String(speed) });
  try {
    const ps: Page[] = [];
    let firstRenderMs = 0;
    for (let i = 0; i < pages; i++) {
      const o = await openPage(browser, server.httpUrl, i + 1, speed > 0);
      ps.push(o.page);
      firstRenderMs = Math.max(firstRenderMs, o.firstRenderMs);
    }
    if (speed > 0) for (const p of ps) await waitShips(p, 200);
    await new Promise((r) => setTimeout(r, 3000)); // settle
    const samples = await Promise.all(ps.map((p) => measure(p, SECONDS * 1000)));
    for (const p of ps) await p.context().close();
    const frames = samples.flatMap((s) => s.frames);
    const lat = samples.flatMap((s) => s.latencies);
    return {
      speed,
      pages,
      ships: Math.min(...samples.map((s) => s.ships)),
      drawn: Math.min(...samples.map((s) => s.drawn)),
      changesPerSec: samples.reduce((a, s) => a + s.changes, 0) / pages / SECONDS,
      // The slowest page's frame rate.
      fps: Math.min(...samples.map((s) => s.frames.length / SECONDS)),
      frameP95: pct(frames, 95),
      latP50: pct(lat, 50),
      latP95: pct(lat, 95),
      latP99: pct(lat, 99),
      firstRenderMs,
    };
  } finally {
    await server.stop();
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
const rows: Row[] = [];
try {
  for (const { speed, pages } of SCENARIOS) {
    const r = await scenario(browser, speed, pages);
    rows.push(r);
    console.log(
      `speed ${r.speed}x, ${r.pages} page(s): ${r.ships} ships held (${r.drawn} in the source), ` +
        `${r.changesPerSec.toFixed(0)} changes/s per page, ${r.fps.toFixed(1)} fps (slowest page), ` +
        `frame p95 ${r.frameP95.toFixed(0)} ms, first render ${r.firstRenderMs.toFixed(0)} ms, write-to-map latency p50 ${r.latP50.toFixed(0)} / p95 ${r.latP95.toFixed(0)} / p99 ${r.latP99.toFixed(0)} ms`,
    );
  }
} finally {
  await browser.close();
}

console.log("\n| replay speed | pages | ships held | ship changes/s per page | fps (slowest page) | frame time p95 | first render | write-to-map p50 / p95 / p99 |");
console.log("|---:|---:|---:|---:|---:|---:|---:|---:|");
for (const r of rows) {
  console.log(
    `| ${r.speed}x | ${r.pages} | ${r.ships} | ${r.changesPerSec.toFixed(0)} | ${r.fps.toFixed(1)} | ${r.frameP95.toFixed(0)} ms | ${r.firstRenderMs.toFixed(0)} ms | ${r.latP50.toFixed(0)} / ${r.latP95.toFixed(0)} / ${r.latP99.toFixed(0)} ms |`,
  );
}
const out = join(REPO, "test-artifacts/web");
mkdirSync(out, { recursive: true });
writeFileSync(join(out, "bench-ships.json"), JSON.stringify({ seconds: SECONDS, when: new Date().toISOString(), rows }, null, 2));
