/** The client against a real `geostream serve` process (the workspace's debug build). */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import WebSocket from "ws";

import { GeostreamClient, type ClientOptions } from "../src/client.js";
import { AbortError, RpcError } from "../src/errors.js";
import type { FeatureChange, LayerEvent, TileEvent } from "../src/subscriptions.js";
import { SseClient } from "../src/transport_sse.js";
import { State, type Encoding } from "../src/types.js";
import { ServerProcess } from "./server.js";
import { until } from "./fake_ws.js";

const server = new ServerProcess();

function client(opts: Partial<ClientOptions> = {}): GeostreamClient {
  return new GeostreamClient({
    url: server.wsUrl,
    WebSocket: WebSocket as unknown as ClientOptions["WebSocket"],
    watchNetwork: false,
    backoff: { initialMs: 50, maxMs: 500 },
    ...opts,
  });
}

const point = (lon: number, lat: number) => ({ type: "Point", coordinates: [lon, lat] });

describe("integration with geostream serve", { timeout: 180_000 }, () => {
  before(async () => {
    await server.start();
  });
  after(async () => {
    await server.stop();
  });

  for (const encoding of ["json", "msgpack", "msgpack-zstd"] as Encoding[]) {
    it(`speaks ${encoding}: hello, ping, channels, features`, async () => {
      const c = client({ encoding, info: { name: "enc" } });
      const hello = await c.connect();
      assert.equal(hello.encoding, encoding);
      assert.deepEqual(await c.request("ping", { data: { t: 1.5, s: "x" } }), { data: { t: 1.5, s: "x" } });
      const ch = `chat-${encoding}`;
      const sub = c.subscribeChannel(ch);
      await sub.ready;
      const it = sub[Symbol.asyncIterator]();
      // Big enough to be compressed on msgpack-zstd.
      const big = { text: "hello ".repeat(300) };
      await c.publish(ch, big);
      const got = await it.next();
      assert.deepEqual(got.value, { type: "message", offset: 1, data: big });
      const layer = `enc-${encoding.replace("-", "")}`;
      await c.createLayer({ name: layer });
      const r = await c.createFeature(layer, { id: "p", geometry: point(10.5, 20.25), properties: { name: "n" } });
      assert.equal(r.version, 1);
      const f = await c.getFeature(layer, "p");
      assert.deepEqual(f.geometry, point(10.5, 20.25));
      c.close();
    });
  }

  it("streams a layer: snapshot, enter/update/exit/delete, viewport moves", async () => {
    const a = client();
    const b = client();
    await Promise.all([a.connect(), b.connect()]);
    await a.createLayer({ name: "draw" });
    await a.createFeature("draw", { id: "in", geometry: point(1, 1), properties: { name: "in" } });
    await a.createFeature("draw", { id: "out", geometry: point(50, 50), properties: { name: "out" } });
    const sub = b.subscribeLayer("draw", { bbox: [0, 0, 10, 10] });
    const events: LayerEvent[] = [];
    sub.on("event", (e) => events.push(e));
    await until(() => events.some((e) => e.type === "synced"), 10_000, "snapshot");
    assert.deepEqual([...sub.features.keys()], ["in"]);
    const changes = () => events.filter((e): e is FeatureChange => e.type === "change").map((e) => `${e.kind}:${e.id}`);

    await a.patchFeature("draw", "in", { properties: { name: "renamed" } }, { version: 1 });
    await until(() => changes().includes("update:in"), 10_000, "update");
    const upd = events.find((e) => e.type === "change" && e.kind === "update") as FeatureChange;
    assert.deepEqual(upd.patch?.properties, { name: "renamed" });
    assert.equal(sub.features.get("in")!.properties.name, "renamed");
    assert.equal(sub.features.get("in")!.version, 2);

    await a.patchFeature("draw", "in", { geometry: point(20, 20) }, { version: 2 });
    await until(() => changes().includes("exit:in"), 10_000, "exit");
    assert.equal(sub.features.size, 0);

    const moved = await sub.setFilter({ bbox: [15, 15, 60, 60] });
    assert.equal(moved?.entered, 2);
    await until(() => sub.features.size === 2, 10_000, "enter after move");
    await a.deleteFeature("draw", "out", { version: 1 });
    await until(() => changes().includes("delete:out"), 10_000, "delete");
    assert.deepEqual([...sub.features.keys()], ["in"]);

    // Optimistic concurrency: a stale version is a conflict, carried by RpcError.
    const err = await a.patchFeature("draw", "in", { properties: { x: 1 } }, { version: 1 }).catch((e: unknown) => e);
    assert.ok(err instanceof RpcError && err.codeName === "conflict", String(err));
    a.close();
    b.close();
  });

  it("an op_id applies once, and a retried edit reports replayed", async () => {
    const c = client();
    await c.connect();
    await c.createLayer({ name: "idem" });
    const first = await c.createFeature("idem", { geometry: point(0, 0), properties: {} }, { opId: "op-1" });
    const again = await c.createFeature("idem", { geometry: point(0, 0), properties: {} }, { opId: "op-1" });
    assert.equal(again.id, first.id);
    assert.equal(again.replayed, true);
    const all = await c.queryFeatures("idem");
    assert.equal(all.features.length, 1);
    c.close();
  });

  it("locks are pushed to other subscribers and refuse others' edits", async () => {
    const a = client({ clientId: "alice" });
    const b = client({ clientId: "bob" });
    await Promise.all([a.connect(), b.connect()]);
    await a.createLayer({ name: "locks", last_writer_wins: true });
    await a.createFeature("locks", { id: "f", geometry: point(0, 0), properties: {} });
    const sub = b.subscribeLayer("locks");
    await sub.ready;
    await until(() => sub.features.has("f"), 10_000, "snapshot");
    await a.lock("locks", ["f"], 30_000);
    await until(() => sub.locks.get("f")?.client === "alice", 10_000, "lock push");
    const err = await b.patchFeature("locks", "f", { properties: { x: 1 } }).catch((e: unknown) => e);
    assert.ok(err instanceof RpcError && err.codeName === "locked", String(err));
    await a.unlock("locks", ["f"]);
    await until(() => !sub.locks.has("f"), 10_000, "unlock push");
    a.close();
    b.close();
  });

  it("presence: members join and leave", async () => {
    const a = client({ info: { name: "Ada" } });
    const b = client({ info: { name: "Bob" } });
    await a.connect();
    const sa = a.subscribeChannel("room", { presence: true });
    await until(() => sa.members.size === 1, 10_000, "own join");
    await b.connect();
    const sb = b.subscribeChannel("room", { presence: true });
    await until(() => sa.members.size === 2 && sb.members.size === 2, 10_000, "both present");
    const names = [...sa.members.values()].map((m) => (m.info as { name: string }).name).sort();
    assert.deepEqual(names, ["Ada", "Bob"]);
    b.close();
    await until(() => sa.members.size === 1, 10_000, "leave");
    a.close();
  });

  it("layer presence: members, cursors, and both back after a reconnect", async () => {
    const a = client({ info: { name: "Ada" } });
    const b = client({ info: { name: "Bob" } });
    await a.connect();
    await b.connect();
    await a.createLayer({ name: "pres" });
    const pa = a.subscribePresence("pres");
    await pa.ready;
    const pb = b.subscribePresence("pres");
    await until(() => pa.members.size === 2 && pb.members.size === 2, 10_000, "both present");
    const bob = (): string | undefined => [...pa.members.values()].find((m) => (m.info as { name: string }).name === "Bob")?.session;
    const first = bob()!;
    b.sendCursor("pres", [2.35, 48.85], ["f1"]);
    await until(() => pa.cursors.get(first)?.position?.[0] === 2.35, 10_000, "Bob's cursor");
    assert.deepEqual(pa.cursors.get(first)!.editing, ["f1"]);
    // Bob's connection drops: he leaves, comes back as a new session, and his last cursor
    // is shared again without him moving.
    b.reconnect();
    await until(() => bob() !== undefined && bob() !== first, 10_000, "Bob back");
    assert.equal(pa.cursors.has(first), false);
    const again = bob()!;
    await until(() => pa.cursors.get(again)?.position?.[1] === 48.85, 10_000, "Bob's cursor again");
    await until(() => pb.members.has(again) && pb.members.size === 2, 10_000, "Bob's own list");
    pb.close();
    await until(() => pa.members.size === 1, 10_000, "leave");
    const missing = a.subscribePresence("no-such-layer");
    await assert.rejects(missing.ready);
    a.close();
    b.close();
  });

  it("cancels a running request with AbortController", async () => {
    const c = client();
    await c.connect();
    const features = Array.from({ length: 6000 }, (_, i) => ({ type: "Feature", geometry: point((i % 360) - 180, 0), properties: { i } }));
    const ac = new AbortController();
    const p = c.request("layer.import", { layer: "big", features, batch_size: 50 }, { signal: ac.signal, timeoutMs: 120_000 });
    setTimeout(() => ac.abort(), 30);
    await assert.rejects(p, AbortError);
    // The connection is still good.
    assert.deepEqual(await c.request("ping", {}), {});
    c.close();
  });

  it("tiles: a feature edit arrives as a delta that rebuilds the new tile", async () => {
    const c = client();
    await c.connect();
    await c.createLayer({ name: "tiles-l", last_writer_wins: true });
    await c.createFeature("tiles-l", { id: "t", geometry: point(10, 10), properties: { n: 1 } });
    const sub = c.subscribeTiles("tiles-l", { tiles: ["4/8/7"] }, "delta");
    const got: TileEvent[] = [];
    sub.on("event", (e) => got.push(e));
    await until(() => got.length >= 1, 20_000, "first tile");
    const v1 = got[0]!;
    assert.ok(v1.data && v1.data.length > 0);
    await c.patchFeature("tiles-l", "t", { properties: { n: 2, label: "changed" } });
    await until(() => got.length >= 2, 20_000, "changed tile");
    const v2 = got[got.length - 1]!;
    assert.ok(v2.version > v1.version);
    const res = await fetch(`${server.httpUrl}/v1/tiles/tiles-l/4/8/7.mvt`);
    assert.equal(res.status, 200);
    assert.deepEqual([...new Uint8Array(await res.arrayBuffer())], [...v2.data!]);
    c.close();
  });

  it("SSE: a read-only stream of a channel", async () => {
    const sse = new SseClient({ baseUrl: server.httpUrl, channels: ["news"] });
    const events: unknown[] = [];
    sse.on("event", (e) => {
      if (e.event === "message") events.push((e.data as { data: unknown }).data);
    });
    sse.start();
    await until(() => sse.state === State.Connected, 10_000, "SSE connected");
    await new Promise((r) => setTimeout(r, 200));
    const c = client();
    await c.connect();
    await c.publish("news", { n: 1 });
    await c.publish("news", { n: 2 });
    await until(() => events.length === 2, 10_000, "SSE messages");
    assert.deepEqual(events, [{ n: 1 }, { n: 2 }]);
    assert.match(sse.lastEventId ?? "", /^news~.+~2$/);
    sse.close();
    c.close();
  });

  it("survives a server restart: reconnects, resumes the layer, sends queued edits once", async () => {
    const a = client({ clientId: "writer" });
    const b = client();
    await Promise.all([a.connect(), b.connect()]);
    await a.createLayer({ name: "restart" });
    await a.createFeature("restart", { id: "before", geometry: point(0, 0), properties: {} });
    const sub = b.subscribeLayer("restart");
    const events: LayerEvent[] = [];
    sub.on("event", (e) => events.push(e));
    await until(() => sub.features.has("before"), 10_000, "snapshot");
    const ch = b.subscribeChannel("restart-chan");
    const chEvents: string[] = [];
    ch.on("event", (e) => chEvents.push(e.type));
    await ch.ready;
    const states: State[] = [];
    b.on("state", (s) => states.push(s.state));

    await server.stop();
    await until(() => a.state !== State.Connected && b.state !== State.Connected, 10_000, "both disconnected");
    // Made while the server is down: waits in the outbox.
    const queued = a.createFeature("restart", { id: "offline", geometry: point(1, 1), properties: { by: "outbox" } });
    await until(() => a.pendingEdits().length === 1, 5000, "the edit in the outbox");
    await server.start();
    const r = await queued;
    assert.equal(r.id, "offline");
    await until(() => sub.features.has("offline"), 30_000, "resumed stream delivers the queued edit");
    assert.ok(states.includes(State.Connecting) && states[states.length - 1] === State.Connected);
    // Exactly once: one enter for it, and one feature in the store.
    const enters = events.filter((e) => e.type === "change" && e.id === "offline" && e.kind === "enter");
    assert.equal(enters.length, 1, JSON.stringify(events.map((e) => (e.type === "change" ? `${e.kind}:${e.id}` : e.type))));
    assert.equal((await b.queryFeatures("restart")).features.length, 2);
    // The channel's in-memory history was reset by the restart: the resume says so.
    await until(() => chEvents.includes("resync"), 10_000, "channel resync");
    a.close();
    b.close();
  });
});
