/**
 * Undo and redo as real edits through the server: undoing a move patches the geometry back,
 * undoing a delete creates the feature again with its old id, properties and geometry,
 * undoing a create deletes it. Each is sent with the feature's current version, so it never
 * overwrites someone's later change unseen, and only what the undone edit touched changes.
 *
 * "Current" must include this page's own edits: an undo clicked while the edit it undoes is
 * still on its way (a browser may run the click before the acknowledgement that arrived just
 * before it) would otherwise start from the version before that edit and be refused as a
 * conflict. So each undo or redo waits until the page's edits of its features have settled
 * (`track` registers them), and undos and redos run one after the other.
 */
// The client's parts by module rather than its index, so that this module loads without the
// client's codec (web/test/history.test.ts runs it under Node without the client's packages).
import type { EditResult, Feature, GeostreamClient } from "../../clients/js/src/index.js";
import { RpcError } from "../../clients/js/src/errors.js";
import { changesBetween, type FeatureContent } from "../../clients/js/src/merge.js";
import type { EditMeta } from "./conflicts.js";

/** One feature's part of an undoable step: its content before and after (null: absent). */
export interface HistoryItem {
  id: string;
  before: FeatureContent | null;
  after: FeatureContent | null;
}

interface Step {
  items: HistoryItem[];
  label: string;
}

export interface HistoryOptions {
  client: GeostreamClient;
  layer: string;
  /** The feature as the server has it now (from the live subscription). */
  current(id: string): Feature | undefined;
  meta(base: { id: string; version: number; content: FeatureContent } | null, summary: string): EditMeta;
  /** Adds the page's own bookkeeping (who edited) to properties it sends. */
  decorate(p: Record<string, unknown>): Record<string, unknown>;
  changed(): void;
  failed(what: string, e: Error): void;
}

/** Properties the page sets itself; never undone on their own. */
const BOOKKEEPING = new Set(["edited_by"]);

export class History {
  private undos: Step[] = [];
  private redos: Step[] = [];
  /** This page's edits not settled yet, by feature id (the latest one of each). */
  private readonly inflight = new Map<string, Promise<unknown>>();
  /** Undos and redos, in the order they were asked for. */
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly o: HistoryOptions) {}

  /** An edit of `ids` was sent: undos and redos of these features wait until it settles. */
  track(ids: string[], sent: Promise<unknown>): void {
    const settled = sent.then(
      () => undefined,
      () => undefined,
    );
    for (const id of ids) {
      this.inflight.set(id, settled);
      void settled.then(() => {
        if (this.inflight.get(id) === settled) this.inflight.delete(id);
      });
    }
  }

  /**
   * Runs `step` towards `to` once the edits of its features have settled. The step is on the
   * `forth` stack meanwhile (a redo clicked right after an undo redoes it, after it), and goes
   * back to `back` if there was nothing to send.
   */
  private later(step: Step, to: "before" | "after", label: string, back: Step[], forth: Step[]): void {
    forth.push(step);
    this.o.changed();
    this.queue = this.queue
      .then(() => Promise.all(step.items.map((i) => this.inflight.get(i.id))))
      .then(() => {
        if (!this.apply(step, to, label)) {
          const i = forth.lastIndexOf(step);
          if (i >= 0) {
            forth.splice(i, 1);
            back.push(step);
          }
        }
        this.o.changed();
      })
      // The queue must go on after a step that failed to start.
      .catch((e: Error) => this.o.failed(label, e));
  }

  canUndo(): boolean {
    return this.undos.length > 0;
  }

  canRedo(): boolean {
    return this.redos.length > 0;
  }

  /** Records a step just made (clears what could be redone). */
  push(items: HistoryItem[], label: string): void {
    this.undos.push({ items, label });
    if (this.undos.length > 100) this.undos.shift();
    this.redos = [];
    this.o.changed();
  }

  undo(): void {
    const step = this.undos.pop();
    if (step) this.later(step, "before", `undo ${step.label}`, this.undos, this.redos);
  }

  redo(): void {
    const step = this.redos.pop();
    if (step) this.later(step, "after", `redo ${step.label}`, this.redos, this.undos);
  }

  /** Sends the edits that bring each item to its `to` side; false when there is nothing to send yet. */
  private apply(step: Step, to: "before" | "after", label: string): boolean {
    const from = to === "before" ? "after" : "before";
    const sends: (() => Promise<unknown>)[] = [];
    const ops: Record<string, unknown>[] = [];
    const { client, layer } = this.o;
    for (const item of step.items) {
      const target = item[to];
      const cur = this.o.current(item.id);
      const base = cur ? { id: cur.id, version: cur.version, content: { properties: cur.properties, geometry: cur.geometry } } : null;
      const meta = this.o.meta(base, label);
      if (!target) {
        if (!cur) continue;
        ops.push({ op: "delete", id: item.id, version: cur.version });
        sends.push(() => client.deleteFeature(layer, item.id, { version: cur.version, meta }));
      } else if (!cur) {
        const feature = { id: item.id, geometry: target.geometry, properties: this.o.decorate(target.properties) };
        ops.push({ op: "create", feature: { type: "Feature", ...feature } });
        sends.push(() => client.createFeature(layer, feature, { meta }));
      } else {
        const ch = changesBetween(item[from] ?? { properties: {}, geometry: null }, target);
        const properties: Record<string, unknown> = {};
        for (const k of [...ch.set, ...ch.removed]) if (!BOOKKEEPING.has(k)) properties[k] = k in target.properties ? target.properties[k] : null;
        const patch = { properties: this.o.decorate(properties), ...(ch.geometry && target.geometry ? { geometry: target.geometry } : {}) };
        ops.push({ op: "patch", id: item.id, ...patch, version: cur.version });
        sends.push(() => client.patchFeature(layer, item.id, patch, { version: cur.version, meta }));
      }
    }
    if (!ops.length) {
      this.o.failed(label, new Error("it has not reached the server yet"));
      return false;
    }
    const sent = ops.length === 1 ? (sends[0]!() as Promise<EditResult>) : client.batchEdit(layer, ops, { meta: this.o.meta(null, label) });
    this.track(
      step.items.map((i) => i.id),
      sent,
    );
    sent.catch((e: Error) => {
      // Conflicts and locks come back as kept conflicts (conflicts.ts).
      if (e instanceof RpcError && (e.codeName === "conflict" || e.codeName === "locked" || e.codeName === "feature_not_found")) return;
      this.o.failed(label, e);
    });
    return true;
  }
}
