/**
 * The demo page's undo and redo (web/src/history.ts) against a stand-in client: an undo
 * clicked while the edit it undoes is still unacknowledged waits for it, then starts from the
 * version that edit left, so the server does not refuse it as a conflict.
 */
import assert from "node:assert/strict";
import { it } from "node:test";

import type { Feature, GeostreamClient } from "../../clients/js/src/index.js";
import { History } from "../src/history.js";

const P0 = { type: "Point", coordinates: [0, 0] };
const P1 = { type: "Point", coordinates: [5, 0] };

type Sent = { id: string; patch: { geometry?: unknown }; version: number };

/**
 * A history over one point `f` at version 1, and a client whose patches are acknowledged
 * when the test says so (`acks`, in order); an acknowledged patch is held at once at its new
 * version, as the real client holds its own acknowledged edits.
 */
function setUp(): { history: History; sent: Sent[]; acks: (() => void)[]; features: Map<string, Feature> } {
  const features = new Map<string, Feature>([["f", { type: "Feature", id: "f", version: 1, properties: { n: 1 }, geometry: P0 } as unknown as Feature]]);
  const sent: Sent[] = [];
  const acks: (() => void)[] = [];
  const client = {
    patchFeature: (_layer: string, id: string, patch: Sent["patch"], opts: { version: number }) => {
      sent.push({ id, patch, version: opts.version });
      return new Promise((resolve) =>
        acks.push(() => {
          const f = features.get(id)!;
          features.set(id, { ...f, version: opts.version + 1, geometry: (patch.geometry ?? f.geometry) as never });
          resolve({ id, version: opts.version + 1, seq: 10 });
        }),
      );
    },
  } as unknown as GeostreamClient;
  const history = new History({
    client,
    layer: "l",
    current: (id) => features.get(id),
    meta: () => ({ base: null, by: "me", summary: "", offline: false }),
    decorate: (p) => p,
    changed: () => {},
    failed: (what, e) => assert.fail(`${what}: ${e.message}`),
  });
  return { history, sent, acks, features };
}

const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

it("an undo waits for the edit it undoes, then sends the version that edit left", async () => {
  const { history, sent, features } = setUp();
  // The page moves f (version 1 → 2); the move is not acknowledged yet.
  let acknowledge!: () => void;
  const move = new Promise<void>((r) => (acknowledge = r));
  history.push([{ id: "f", before: { properties: { n: 1 }, geometry: P0 as never }, after: { properties: { n: 1 }, geometry: P1 as never } }], "move");
  history.track(["f"], move);
  history.undo();
  await tick();
  assert.equal(sent.length, 0, "nothing is sent while the move is in flight");
  // The acknowledgement comes (the client then holds the feature at version 2).
  features.set("f", { ...features.get("f")!, version: 2, geometry: P1 as never });
  acknowledge();
  await tick();
  assert.equal(sent.length, 1);
  assert.equal(sent[0]!.version, 2, "the undo starts from the move's version");
  assert.deepEqual(sent[0]!.patch.geometry, P0, "and puts the point back");
  assert.ok(history.canRedo());
});

it("undos and redos clicked quickly run one after the other, each from the previous one's version", async () => {
  const { history, sent, acks, features } = setUp();
  history.push([{ id: "f", before: { properties: { n: 1 }, geometry: P0 as never }, after: { properties: { n: 1 }, geometry: P1 as never } }], "move");
  features.set("f", { ...features.get("f")!, version: 2, geometry: P1 as never });
  // Undo then redo at once: the redo waits for the undo's acknowledgement.
  history.undo();
  history.redo();
  await tick();
  assert.equal(sent.length, 1, "the redo is not sent before the undo settled");
  assert.equal(sent[0]!.version, 2);
  acks[0]!();
  await tick();
  assert.equal(sent.length, 2);
  assert.equal(sent[1]!.version, 3, "the redo starts from the undo's version");
  assert.deepEqual(sent[1]!.patch.geometry, P1);
});
