/**
 * Undo and redo as real edits through the server: undoing a move patches the geometry back,
 * undoing a delete creates the feature again with its old id, properties and geometry,
 * undoing a create deletes it. Each is sent with the feature's current version, so it never
 * overwrites someone's later change unseen, and only what the undone edit touched changes.
 */
import { RpcError, changesBetween, type EditResult, type Feature, type FeatureContent, type GeostreamClient } from "../../clients/js/src/index.js";
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

  constructor(private readonly o: HistoryOptions) {}

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
    if (!step) return;
    if (this.apply(step, "before", `undo ${step.label}`)) this.redos.push(step);
    else this.undos.push(step);
    this.o.changed();
  }

  redo(): void {
    const step = this.redos.pop();
    if (!step) return;
    if (this.apply(step, "after", `redo ${step.label}`)) this.undos.push(step);
    else this.redos.push(step);
    this.o.changed();
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
    sent.catch((e: Error) => {
      // Conflicts and locks come back as kept conflicts (conflicts.ts).
      if (e instanceof RpcError && (e.codeName === "conflict" || e.codeName === "locked" || e.codeName === "feature_not_found")) return;
      this.o.failed(label, e);
    });
    return true;
  }
}
