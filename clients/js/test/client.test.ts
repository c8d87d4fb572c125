/** The client against the in-process fake server: reconnects, resume, cancellation. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { GeostreamClient } from "../src/client.js";
import { AbortError, ConnectionError, RpcError } from "../src/errors.js";
import { State } from "../src/types.js";
import { FakeServer, basicHandler, until } from "./fake_ws.js";

const fast = { backoff: { initialMs: 20, maxMs: 50 }, watchNetwork: false, encoding: "json" as const };

describe("client (fake server)", () => {
  it("sends hello with client id and info, then requests", async () => {
    const server = new FakeServer(basicHandler((c, m) => c.reply(m.id, { echo: m.params })));
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), info: { name: "Ada" }, clientId: "cid", ...fast });
    const hello = await client.connect();
    assert.equal(hello.session, "s1");
    const h = server.last.received[0]!;
    assert.equal(h.method, "hello");
    assert.deepEqual((h.params as Record<string, unknown>).info, { name: "Ada" });
    assert.equal((h.params as Record<string, unknown>).client_id, "cid");
    assert.deepEqual(await client.request("x.y", { a: 1 }), { echo: { a: 1 } });
    client.close();
    assert.equal(client.state, State.Closed);
  });

  it("turns error responses into RpcError", async () => {
    const server = new FakeServer(basicHandler((c, m) => c.fail(m.id, 3005, "stale", { current: { version: 2 } })));
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    await client.connect();
    const err = await client.request("feature.patch", {}).catch((e: unknown) => e);
    assert.ok(err instanceof RpcError);
    assert.equal(err.codeName, "conflict");
    assert.deepEqual(err.data, { current: { version: 2 } });
    client.close();
  });

  it("aborting a request sends $/cancelRequest with its id", async () => {
    const server = new FakeServer(basicHandler(() => undefined)); // never answers
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    await client.connect();
    const ac = new AbortController();
    const p = client.request("layer.import", { layer: "x" }, { signal: ac.signal });
    await until(() => server.last.received.some((m) => m.method === "layer.import"));
    const id = server.last.received.find((m) => m.method === "layer.import")!.id;
    ac.abort();
    await assert.rejects(p, AbortError);
    await until(() => server.last.received.some((m) => m.method === "$/cancelRequest"));
    assert.deepEqual(server.last.received.find((m) => m.method === "$/cancelRequest")!.params, { id });
    // An already aborted signal never sends anything.
    const before = server.last.received.length;
    await assert.rejects(client.request("ping", {}, { signal: AbortSignal.abort() }), AbortError);
    assert.equal(server.last.received.length, before);
    client.close();
  });

  it("times requests out", async () => {
    const server = new FakeServer(basicHandler(() => undefined));
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    await client.connect();
    await assert.rejects(client.request("slow", {}, { timeoutMs: 20 }), /timed out/);
    client.close();
  });

  it("reconnects after the server closes, with backoff, and fails what was in flight", async () => {
    const server = new FakeServer(basicHandler(() => undefined));
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    const states: State[] = [];
    client.on("state", (s) => states.push(s.state));
    const delays: number[] = [];
    client.on("reconnecting", (r) => delays.push(r.delayMs));
    await client.connect();
    const inFlight = client.request("never", {});
    server.up = false;
    server.last.close(1012, "restart");
    await assert.rejects(inFlight, ConnectionError);
    await until(() => delays.length >= 3, 5000, "three attempts");
    assert.ok(delays.every((d) => d >= 0 && d < 50));
    server.up = true;
    await until(() => client.state === State.Connected, 5000, "reconnect");
    assert.ok(server.connections.length >= 2);
    assert.deepEqual(states.slice(0, 3), [State.Connecting, State.Connected, State.Connecting]);
    client.close();
  });

  it("does not reconnect after a close code that says not to", async () => {
    const server = new FakeServer(basicHandler(() => undefined));
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    await client.connect();
    server.last.close(4003, "unauthorized");
    await until(() => client.state === State.Closed);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(server.connections.length, 1);
  });

  it("queues requests made while disconnected and sends them once connected", async () => {
    const server = new FakeServer(basicHandler((c, m) => c.reply(m.id, { ok: m.method })));
    server.up = false;
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    void client.connect();
    const p = client.request("later", {});
    await new Promise((r) => setTimeout(r, 60));
    server.up = true;
    assert.deepEqual(await p, { ok: "later" });
    client.close();
  });

  it("resumes a channel subscription from the last offset after a reconnect", async () => {
    let sub = 0;
    const server = new FakeServer(
      basicHandler((c, m) => {
        if (m.method === "channel.subscribe") {
          const p = m.params as { since?: { offset: number; epoch: string } };
          c.reply(m.id, { sub: ++sub, channel: "chat", position: { offset: p.since?.offset ?? 4, epoch: "E" }, ...(p.since ? { recovered: true, replayed: 1 } : {}) });
          if (p.since) c.send({ method: "message", params: { sub, channel: "chat", offset: p.since.offset + 1, data: "missed" } });
          else c.send({ method: "message", params: { sub, channel: "chat", offset: 5, data: "live" } });
        }
      }),
    );
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    await client.connect();
    const s = client.subscribeChannel("chat");
    const it = s[Symbol.asyncIterator]();
    assert.deepEqual(await it.next(), { value: { type: "message", offset: 5, data: "live" }, done: false });
    server.last.close(1012);
    assert.deepEqual(await it.next(), { value: { type: "message", offset: 6, data: "missed" }, done: false });
    const resub = server.last.received.find((m) => m.method === "channel.subscribe")!;
    assert.deepEqual((resub.params as Record<string, unknown>).since, { offset: 5, epoch: "E" });
    client.close();
    assert.deepEqual(await it.next(), { value: undefined, done: true });
  });

  it("applies layer snapshots and changes, and resumes with since", async () => {
    let sub = 0;
    const server = new FakeServer(
      basicHandler((c, m) => {
        const p = m.params as Record<string, unknown>;
        if (m.method !== "layer.subscribe") return;
        sub++;
        if (p.since === undefined) {
          c.reply(m.id, { sub, layer: "l", seq: 10 });
          const f = (id: string, v: number) => ({ type: "Feature", id, geometry: { type: "Point", coordinates: [1, 2] }, properties: { n: v, keep: 1 }, version: v, updated: "t" });
          c.send({ method: "snapshot", params: { sub, layer: "l", seq: 10, features: [f("a", 1)], last: false } });
          c.send({ method: "snapshot", params: { sub, layer: "l", seq: 10, features: [f("b", 1)], last: true } });
          c.send({ method: "feature", params: { sub, layer: "l", seq: 11, kind: "update", id: "a", version: 2, properties: { n: 2, keep: null }, geometry: { type: "Point", coordinates: [3, 4] } } });
          c.send({ method: "feature", params: { sub, layer: "l", seq: 12, kind: "exit", id: "b", version: 1 } });
          c.send({ method: "lock", params: { sub, layer: "l", id: "a", client: "other", until_ms: 1, locked: true } });
        } else {
          assert.equal(p.since, 12);
          c.reply(m.id, { sub, layer: "l", seq: 13, recovered: true, replayed: 1 });
          c.send({ method: "feature", params: { sub, layer: "l", seq: 13, kind: "delete", id: "a", version: 3 } });
        }
      }),
    );
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    await client.connect();
    const s = client.subscribeLayer("l", { bbox: [0, 0, 10, 10] });
    const events: string[] = [];
    s.on("event", (e) => events.push(e.type === "change" ? `${e.kind}:${e.id}` : e.type));
    await until(() => events.includes("lock"));
    assert.deepEqual(events, ["enter:a", "enter:b", "synced", "update:a", "exit:b", "lock"]);
    const a = s.features.get("a")!;
    assert.deepEqual(a.properties, { n: 2 });
    assert.deepEqual(a.geometry, { type: "Point", coordinates: [3, 4] });
    assert.equal(a.version, 2);
    assert.equal(s.features.has("b"), false);
    assert.equal(s.locks.get("a")?.client, "other");
    assert.equal(s.seq, 12);
    server.last.close(1012);
    await until(() => events.includes("delete:a"));
    assert.equal(s.features.size, 0);
    client.close();
  });

  it("holds this client's own acknowledged edits before their pushes, and does not report them twice", async (t) => {
    let conn: import("./fake_ws.js").FakeConnection | null = null;
    const f = (v: number, n: number) => ({ type: "Feature", id: "a", geometry: { type: "Point", coordinates: [1, 2] }, properties: { n }, version: v, updated: "t" });
    const server = new FakeServer(
      basicHandler((c, m) => {
        conn = c;
        if (m.method === "layer.subscribe") {
          c.reply(m.id, { sub: 1, layer: "l", seq: 10 });
          c.send({ method: "snapshot", params: { sub: 1, layer: "l", seq: 10, features: [f(1, 1)], last: true } });
        } else if (m.method === "feature.patch") {
          // Answered now; the push is the test's to send, later (as a busy server may).
          c.reply(m.id, { id: "a", version: 2, seq: 11, feature: f(2, 2) });
        } else if (m.method === "feature.delete") {
          c.reply(m.id, { id: "a", version: 3, seq: 12 });
        }
      }),
    );
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    // Closed however the test ends, or a failure would leave the process running.
    t.after(() => client.close());
    await client.connect();
    const s = client.subscribeLayer("l", {});
    const events: string[] = [];
    s.on("event", (e) => events.push(e.type === "change" ? `${e.kind}:${e.id}:${e.feature?.version ?? ""}` : e.type));
    await until(() => events.includes("synced"));

    const r = await client.patchFeature("l", "a", { properties: { n: 2 } }, { version: 1 });
    assert.equal(r.version, 2);
    assert.equal(s.features.get("a")?.version, 2, "held as answered, before the push");
    assert.equal(s.features.get("a")?.properties.n, 2);
    // The push comes: nothing is taken back or reported again; it is the resume point.
    conn!.send({ method: "feature", params: { sub: 1, layer: "l", seq: 11, kind: "update", id: "a", version: 2, properties: { n: 2 } } });
    await until(() => s.seq === 11);
    assert.equal(s.features.get("a")?.version, 2);

    await client.deleteFeature("l", "a", { version: 2 });
    assert.equal(s.features.has("a"), false, "gone as answered");
    conn!.send({ method: "feature", params: { sub: 1, layer: "l", seq: 12, kind: "delete", id: "a", version: 3 } });
    await until(() => s.seq === 12);
    assert.deepEqual(events, ["enter:a:1", "synced", "update:a:2", "delete:a:2"]);
    client.close();
  });

  it("a fresh snapshot after a failed resume reports features that are gone as exits", async () => {
    let n = 0;
    const f = (id: string) => ({ type: "Feature", id, geometry: null, properties: {}, version: 1, updated: "t" });
    const server = new FakeServer(
      basicHandler((c, m) => {
        if (m.method !== "layer.subscribe") return;
        n++;
        c.reply(m.id, { sub: n, layer: "l", seq: 5 * n, ...(n > 1 ? { recovered: false, replayed: 0 } : {}) });
        if (n > 1) c.send({ method: "resync", params: { sub: n, layer: "l", seq: 10, reason: "history no longer available" } });
        c.send({ method: "snapshot", params: { sub: n, layer: "l", seq: 5 * n, features: n === 1 ? [f("a"), f("b")] : [f("b")], last: true } });
      }),
    );
    const client = new GeostreamClient({ url: "ws://fake", WebSocket: server.factory(), ...fast });
    await client.connect();
    const s = client.subscribeLayer("l");
    const events: string[] = [];
    s.on("event", (e) => events.push(e.type === "change" ? `${e.kind}:${e.id}` : e.type));
    await until(() => events.includes("synced"));
    server.last.close(1012);
    await until(() => events.filter((e) => e === "synced").length === 2);
    assert.deepEqual(events, ["enter:a", "enter:b", "synced", "resync", "exit:a", "synced"]);
    assert.deepEqual([...s.features.keys()], ["b"]);
    client.close();
  });
});
