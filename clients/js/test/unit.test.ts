import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { decode, encode } from "@msgpack/msgpack";

import { backoffDelay } from "../src/backoff.js";
import { decodeFrame, encodeFrame } from "../src/codec.js";
import { applyDelta, crc32 } from "../src/delta.js";
import { Channel } from "../src/events.js";
import { EditQueue, MemoryOutboxStore, type OutboxEntry } from "../src/outbox.js";
import { Emitter } from "../src/events.js";
import { bindFeatureSource, type GeoJsonDiff } from "../src/maplibre.js";
import { canonical, mergeFeature, propertiesPatch } from "../src/merge.js";
import type { GeostreamClient } from "../src/client.js";
import type { LayerSubscription } from "../src/subscriptions.js";
import type { Feature } from "../src/types.js";

const hex = (s: string): Uint8Array => new Uint8Array(s.split(/\s+/).filter(Boolean).map((h) => parseInt(h, 16)));

describe("codec", () => {
  it("encodes a MessagePack request exactly as docs/PROTOCOL.md shows", () => {
    const bytes = encodeFrame("msgpack", "ping", { data: 7 }, 1) as Uint8Array;
    assert.deepEqual([...bytes], [...hex("94 00 01 a4 70 69 6e 67 81 a4 64 61 74 61 07")]);
  });

  it("decodes the documented MessagePack response", () => {
    const f = decodeFrame("msgpack", hex("94 01 01 c0 81 a4 64 61 74 61 07"));
    assert.deepEqual(f, { kind: "response", id: 1, result: { data: 7 } });
  });

  it("leaves undefined members out in MessagePack, as JSON does", () => {
    const bytes = encodeFrame("msgpack", "feature.patch", { layer: "l", id: "a", geometry: undefined, version: 2 }, 3) as Uint8Array;
    assert.deepEqual(decode(bytes), [0, 3, "feature.patch", { layer: "l", id: "a", version: 2 }]);
    const keepNull = encodeFrame("msgpack", "feature.patch", { geometry: null }, 4) as Uint8Array;
    assert.deepEqual(decode(keepNull), [0, 4, "feature.patch", { geometry: null }]);
  });

  it("encodes JSON-RPC requests and notifications", () => {
    assert.deepEqual(JSON.parse(encodeFrame("json", "ping", undefined, "s") as string), { jsonrpc: "2.0", id: "s", method: "ping" });
    assert.deepEqual(JSON.parse(encodeFrame("json", "$/cancelRequest", { id: 4 }) as string), {
      jsonrpc: "2.0",
      method: "$/cancelRequest",
      params: { id: 4 },
    });
    assert.deepEqual([...(encodeFrame("msgpack", "$/cancelRequest", { id: 4 }) as Uint8Array)], [...encode([2, "$/cancelRequest", { id: 4 }])]);
  });

  it("decodes JSON responses, errors and notifications", () => {
    assert.deepEqual(decodeFrame("json", '{"jsonrpc":"2.0","id":2,"result":{"x":1}}'), { kind: "response", id: 2, result: { x: 1 } });
    assert.deepEqual(decodeFrame("json", '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}'), {
      kind: "response",
      id: null,
      error: { code: -32700, message: "bad" },
    });
    assert.deepEqual(decodeFrame("json", '{"jsonrpc":"2.0","method":"message","params":{"sub":1}}'), {
      kind: "notification",
      method: "message",
      params: { sub: 1 },
    });
  });

  it("decodes MessagePack errors and pushes, with binary values as bytes", () => {
    const err = decodeFrame("msgpack", encode([1, 9, { code: 3005, message: "conflict", data: { current: 1 } }, null]));
    assert.deepEqual(err, { kind: "response", id: 9, error: { code: 3005, message: "conflict", data: { current: 1 } } });
    const push = decodeFrame("msgpack", encode([2, "tile", { sub: 1, data: new Uint8Array([1, 2, 3]) }]));
    assert.equal(push.kind, "notification");
    const data = (push as { params: { data: Uint8Array } }).params.data;
    assert.ok(data instanceof Uint8Array);
    assert.deepEqual([...data], [1, 2, 3]);
  });

  it("refuses frames of the wrong kind for the encoding", () => {
    assert.throws(() => decodeFrame("json", new Uint8Array([1])));
    assert.throws(() => decodeFrame("msgpack", "{}"));
    assert.throws(() => decodeFrame("json", "[1,2]"));
    assert.throws(() => decodeFrame("msgpack", encode([7, 1])));
  });
});

describe("backoff", () => {
  it("stays within the exponential ceiling (full jitter)", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(10_000, 250 * 2 ** attempt);
      assert.equal(backoffDelay(attempt, {}, () => 0), 0);
      const top = backoffDelay(attempt, {}, () => 0.999999);
      assert.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: ${top} vs ${ceiling}`);
    }
    assert.equal(backoffDelay(3, { initialMs: 100, maxMs: 500 }, () => 0.5), 250);
  });

  it("spreads clients out", () => {
    const delays = new Set<number>();
    for (let i = 0; i < 50; i++) delays.add(backoffDelay(5));
    assert.ok(delays.size > 30);
  });
});

describe("delta", () => {
  it("checks the CRC-32 test vector", () => {
    assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
    assert.equal(crc32(new Uint8Array()), 0);
  });

  it("applies the example of docs/DELTA.md", () => {
    const base = new TextEncoder().encode("abcdefghijklmnop");
    const delta = hex("47 44 01 10 12 e8 75 e2 30 04 58 58 21 00");
    assert.equal(new TextDecoder().decode(applyDelta(base, delta)), "XXabcdefghijklmnop");
  });

  it("refuses bad deltas", () => {
    const base = new TextEncoder().encode("abcdefghijklmnop");
    const good = [...hex("47 44 01 10 12 e8 75 e2 30 04 58 58 21 00")];
    const bad = (patch: (d: number[]) => number[]) => new Uint8Array(patch([...good]));
    assert.throws(() => applyDelta(base.subarray(1), new Uint8Array(good)), /base/);
    assert.throws(() => applyDelta(base, bad((d) => ((d[1] = 0x45), d))), /not a delta/);
    assert.throws(() => applyDelta(base, bad((d) => ((d[2] = 2), d))), /version/);
    assert.throws(() => applyDelta(base, bad((d) => ((d[5] ^= 1), d))), /checksum/);
    assert.throws(() => applyDelta(base, bad((d) => d.slice(0, -1))), /truncated/);
    assert.throws(() => applyDelta(base, bad((d) => [...d, 0])), /after the end/);
    assert.throws(() => applyDelta(base, bad((d) => ((d[13] = 2), d))), /outside the base/);
    assert.throws(() => applyDelta(base, new Uint8Array(good), 10), /above/);
    assert.throws(() => applyDelta(base, hex("47 44 01 ff ff ff ff ff ff ff ff 01")), /too long/);
  });
});

describe("Channel (async iterator)", () => {
  it("yields pushed values in order, then ends", async () => {
    const ch = new Channel<number>();
    ch.push(1);
    ch.push(2);
    setTimeout(() => {
      ch.push(3);
      ch.end();
    }, 5);
    const got: number[] = [];
    for await (const v of ch) got.push(v);
    assert.deepEqual(got, [1, 2, 3]);
  });

  it("fails instead of growing past its limit", async () => {
    const ch = new Channel<number>(2);
    ch.push(1);
    ch.push(2);
    ch.push(3);
    assert.deepEqual(await ch.next(), { value: 1, done: false });
    assert.deepEqual(await ch.next(), { value: 2, done: false });
    await assert.rejects(ch.next(), /behind/);
  });

  it("return() stops the iteration and calls back", async () => {
    let returned = false;
    const ch = new Channel<number>(10, () => (returned = true));
    ch.push(1);
    for await (const v of ch) {
      assert.equal(v, 1);
      break;
    }
    assert.ok(returned);
    ch.push(2);
    assert.deepEqual(await ch.next(), { value: undefined, done: true });
  });
});

describe("EditQueue", () => {
  function harness(store = new MemoryOutboxStore()) {
    const sent: { method: string; params: Record<string, unknown>; done: (e: Error | null, r?: unknown) => void }[] = [];
    const acked: OutboxEntry[] = [];
    const rejected: OutboxEntry[] = [];
    let connected = true;
    const q = new EditQueue(
      store,
      { isConnected: () => connected, sendEdit: (method, params, done) => sent.push({ method, params, done }) },
      {
        acked: (e) => acked.push(e),
        rejected: (e) => rejected.push(e),
        changed: () => undefined,
        isTransient: (e) => e.message === "transient",
        retryDelay: () => 1,
      },
    );
    return { q, sent, acked, rejected, store, setConnected: (c: boolean) => (connected = c) };
  }

  it("sends one edit at a time, in order, with an op_id each", async () => {
    const h = harness();
    await h.q.loaded;
    const a = h.q.add("feature.create", { layer: "l", feature: {} }, "l");
    const b = h.q.add("feature.create", { layer: "l", feature: {} }, "l");
    await new Promise((r) => setTimeout(r, 1));
    assert.equal(h.sent.length, 1);
    const opA = h.sent[0]!.params.op_id;
    assert.equal(typeof opA, "string");
    h.sent[0]!.done(null, { id: "x", version: 1, seq: 1 });
    assert.deepEqual(await a, { id: "x", version: 1, seq: 1 });
    assert.equal(h.sent.length, 2);
    assert.notEqual(h.sent[1]!.params.op_id, opA);
    h.sent[1]!.done(null, { id: "y", version: 1, seq: 2 });
    await b;
    assert.equal((await h.store.load()).length, 0);
  });

  it("moves the version of a later edit of the same feature forward", async () => {
    const h = harness();
    await h.q.loaded;
    void h.q.add("feature.patch", { layer: "l", id: "f", version: 3 }, "l", "f");
    void h.q.add("feature.patch", { layer: "l", id: "f", version: 3 }, "l", "f");
    void h.q.add("feature.patch", { layer: "l", id: "g", version: 9 }, "l", "g");
    await new Promise((r) => setTimeout(r, 1));
    h.sent[0]!.done(null, { id: "f", version: 4, seq: 1 });
    assert.equal(h.sent[1]!.params.version, 4);
    h.sent[1]!.done(null, { id: "f", version: 5, seq: 2 });
    assert.equal(h.sent[2]!.params.version, 9);
  });

  it("keeps an edit after a transient error or a lost connection, and retries it with the same op_id", async () => {
    const h = harness();
    await h.q.loaded;
    const p = h.q.add("feature.create", { layer: "l", feature: {} }, "l");
    await new Promise((r) => setTimeout(r, 1));
    const op = h.sent[0]!.params.op_id;
    h.sent[0]!.done(new Error("transient"));
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(h.sent.length, 2);
    assert.equal(h.sent[1]!.params.op_id, op);
    // The connection drops with the retry in flight; it is sent again on reconnect.
    h.setConnected(false);
    h.q.disconnected();
    h.sent[1]!.done(new Error("transient"));
    h.setConnected(true);
    h.q.kick();
    assert.equal(h.sent.length, 3);
    assert.equal(h.sent[2]!.params.op_id, op);
    h.sent[2]!.done(null, { id: "a", version: 1, seq: 1, replayed: true });
    assert.deepEqual(await p, { id: "a", version: 1, seq: 1, replayed: true });
  });

  it("drops an edit the server refuses for good, and goes on with the next", async () => {
    const h = harness();
    await h.q.loaded;
    const a = h.q.add("feature.patch", { layer: "l", id: "f", version: 1 }, "l", "f");
    const b = h.q.add("feature.create", { layer: "l", feature: {} }, "l");
    await new Promise((r) => setTimeout(r, 1));
    h.sent[0]!.done(new Error("conflict"));
    await assert.rejects(a, /conflict/);
    assert.equal(h.rejected.length, 1);
    h.sent[1]!.done(null, { id: "n", version: 1, seq: 2 });
    await b;
    assert.equal(h.acked.length, 1);
  });

  it("picks up what a previous run left in the store, in order", async () => {
    const store = new MemoryOutboxStore();
    await store.put({ opId: "b", order: 2, method: "feature.create", params: { op_id: "b" }, layer: "l", createdAt: 0 });
    await store.put({ opId: "a", order: 1, method: "feature.create", params: { op_id: "a" }, layer: "l", createdAt: 0 });
    const h = harness(store);
    await h.q.loaded;
    assert.deepEqual(h.q.pending().map((e) => e.opId), ["a", "b"]);
    assert.equal(h.sent[0]!.params.op_id, "a");
    h.sent[0]!.done(null, { id: "1", version: 1, seq: 1 });
    assert.equal(h.sent[1]!.params.op_id, "b");
    h.sent[1]!.done(null, { id: "2", version: 1, seq: 2 });
    assert.equal(h.acked.length, 2);
    const later = h.q.add("feature.create", { layer: "l", feature: {} }, "l");
    await new Promise((r) => setTimeout(r, 1));
    const stored = await store.load();
    assert.equal(stored.length, 1);
    assert.ok(stored[0]!.order > 2);
    h.sent[2]!.done(null, { id: "3", version: 1, seq: 3 });
    await later;
  });
});

describe("three-way merge of a refused edit", () => {
  const base = { properties: { name: "Pier", colour: "#f00", note: "x" }, geometry: { type: "Point", coordinates: [1, 2] } };

  it("keeps both sides when they touched different things", () => {
    // I moved it; they renamed it.
    const mine = { ...base, geometry: { type: "Point", coordinates: [3, 4] } };
    const theirs = { ...base, properties: { ...base.properties, name: "Pier 7" } };
    const r = mergeFeature(base, mine, theirs);
    assert.equal(r.clean, true);
    assert.deepEqual(r.mine, { set: [], removed: [], geometry: true });
    assert.deepEqual(r.theirs, { set: ["name"], removed: [], geometry: false });
    assert.deepEqual(r.merged, { properties: { name: "Pier 7", colour: "#f00", note: "x" }, geometry: { type: "Point", coordinates: [3, 4] } });
  });

  it("reports keys both changed differently, and lets mine win on request", () => {
    const mine = { properties: { name: "Dock", colour: "#f00" }, geometry: base.geometry };
    const theirs = { properties: { name: "Pier 7", colour: "#0f0", note: "x" }, geometry: base.geometry };
    const r = mergeFeature(base, mine, theirs);
    assert.equal(r.clean, false);
    assert.deepEqual(r.conflicts, ["name"]);
    assert.deepEqual(r.mine, { set: ["name"], removed: ["note"], geometry: false });
    // The merge keeps their name (a conflict), their colour, and my removal of note.
    assert.deepEqual(r.merged.properties, { name: "Pier 7", colour: "#0f0" });
    assert.deepEqual(r.mineWins.properties, { name: "Dock", colour: "#0f0" });
  });

  it("treats equal changes as no conflict, and geometry as a whole", () => {
    const both = { ...base, properties: { ...base.properties, name: "Same" } };
    assert.equal(mergeFeature(base, both, both).clean, true);
    const a = { ...base, geometry: { type: "Point", coordinates: [5, 5] } };
    const b = { ...base, geometry: { type: "Point", coordinates: [6, 6] } };
    const r = mergeFeature(base, a, b);
    assert.equal(r.geometryConflict, true);
    assert.deepEqual(r.merged.geometry, b.geometry);
    assert.deepEqual(r.mineWins.geometry, a.geometry);
  });

  it("writes the merge patch between two property sets, key order aside", () => {
    assert.deepEqual(propertiesPatch({ a: 1, b: { x: 1, y: 2 }, c: 3 }, { a: 2, b: { y: 2, x: 1 }, d: 4 }), { a: 2, d: 4, c: null });
    assert.equal(canonical({ b: 1, a: [1, { d: 2, c: 1 }] }), '{"a":[1,{"c":1,"d":2}],"b":1}');
  });
});

describe("the MapLibre adapter", () => {
  it("replaces a feature changed twice in one batch with add, never removeAllProperties", async () => {
    const calls: GeoJsonDiff[] = [];
    const source = { setData: () => undefined, updateData: (d: GeoJsonDiff) => calls.push(d) };
    const handlers = new Map<string, () => void>();
    const map = {
      getBounds: () => ({ getWest: () => -10, getSouth: () => -10, getEast: () => 10, getNorth: () => 10 }),
      getZoom: () => 3,
      on: (t: string, fn: () => void) => handlers.set(t, fn),
      off: () => undefined,
      getSource: () => source,
    };
    class FakeSub extends Emitter<{ event: unknown }> {
      fire(e: unknown): void {
        this.emit("event", e);
      }
    }
    const sub = new FakeSub();
    const features = new Map<string, Feature>();
    Object.assign(sub, { features, close: () => undefined });
    const client = { subscribeLayer: () => sub as unknown as LayerSubscription } as unknown as GeostreamClient;
    bindFeatureSource(map, client, { sourceId: "s", layer: "l", followViewport: false });
    const f = (version: number, name: string): Feature => ({ type: "Feature", id: "a", geometry: { type: "Point", coordinates: [0, 0] }, properties: { name, color: "#f00" }, version, updated: "" });
    features.set("a", f(1, "one"));
    sub.fire({ type: "change", kind: "enter", id: "a", seq: 1, feature: f(1, "one") });
    await new Promise((r) => setTimeout(r, 40));
    // Two partial updates in one frame.
    features.set("a", f(2, "two"));
    sub.fire({ type: "change", kind: "update", id: "a", seq: 2, feature: f(2, "two"), patch: { properties: { name: "two" } } });
    features.set("a", f(3, "three"));
    sub.fire({ type: "change", kind: "update", id: "a", seq: 3, feature: f(3, "three"), patch: { properties: { name: "three" } } });
    await new Promise((r) => setTimeout(r, 40));
    const last = calls.at(-1)!;
    assert.deepEqual(last.update ?? [], []);
    assert.deepEqual(last.add, [{ type: "Feature", id: "a", geometry: { type: "Point", coordinates: [0, 0] }, properties: { name: "three", color: "#f00", version: 3 } }]);
  });
});
