/**
 * Edits the server refused because the feature changed meanwhile (`conflict`), was deleted
 * (`feature_not_found`) or is being edited by someone else (`locked`). None is dropped: each
 * is kept (in localStorage, so over reloads too) and shown in words with both sides, and its
 * author chooses: keep mine (sent again on top of the current version), keep theirs, or merge
 * (a three-way merge of the properties against the version the edit was based on, the
 * geometry taken whole from one side).
 */
import {
  RpcError,
  changesBetween,
  mergeFeature,
  propertiesPatch,
  type Feature,
  type FeatureContent,
  type GeostreamClient,
  type OutboxEntry,
} from "../../clients/js/src/index.js";

/** What the page keeps with each edit in the outbox. */
export interface EditMeta {
  /** The feature the edit was made on (null for a create). */
  base: { id: string; version: number; content: FeatureContent } | null;
  /** Who made it. */
  by: string;
  /** What it does, in words. */
  summary: string;
  /** Whether it was made while not connected. */
  offline: boolean;
}

/** A refused edit kept until its author decides. */
export interface Conflict {
  key: string;
  featureId: string;
  reason: "conflict" | "gone" | "locked";
  method: string;
  params: Record<string, unknown>;
  meta: EditMeta;
  /** The feature as the server had it when it refused (null: deleted). */
  theirs: Feature | null;
  /** For `locked`: who holds it. */
  holder?: string;
  at: number;
}

export interface ConflictOptions {
  client: GeostreamClient;
  layer: string;
  storageKey: string;
  myName(): string;
  /** The feature as the live subscription holds it now. */
  current(id: string): Feature | undefined;
  toast(msg: string): void;
  /** The name of a client id (a lock's holder). */
  nameOf?(clientId: string): string;
}

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const quote = (v: unknown): string => `'${typeof v === "string" ? v : JSON.stringify(v)}'`;

/** What the refused edit wanted the feature to be (null: deleted). */
function mineOf(c: Conflict): FeatureContent | null {
  const base = c.meta.base?.content ?? { properties: {}, geometry: null };
  const p = c.params;
  if (c.method === "feature.delete") return null;
  if (c.method === "feature.create" || c.method === "feature.replace") {
    const f = p.feature as { properties?: Record<string, unknown>; geometry: FeatureContent["geometry"] };
    return { properties: f.properties ?? {}, geometry: f.geometry };
  }
  const properties = { ...base.properties };
  for (const [k, v] of Object.entries((p.properties as Record<string, unknown> | undefined) ?? {})) {
    if (v === null) delete properties[k];
    else properties[k] = v;
  }
  return { properties, geometry: "geometry" in p ? (p.geometry as FeatureContent["geometry"]) : base.geometry };
}

/** A change in words: "renamed it to 'Pier 7', moved it". */
function describe(before: FeatureContent, after: FeatureContent | null): string {
  if (!after) return "deleted it";
  const ch = changesBetween(before, after);
  const parts: string[] = [];
  const set = ch.set.filter((k) => k !== "edited_by");
  if (set.includes("name")) parts.push(`renamed it to ${quote(after.properties.name)}`);
  const others = set.filter((k) => k !== "name");
  if (others.length === 1) parts.push(`set ${others[0]} to ${quote(after.properties[others[0]!])}`);
  else if (others.length > 1) parts.push(`changed ${others.join(", ")}`);
  if (ch.removed.length) parts.push(`removed ${ch.removed.join(", ")}`);
  if (ch.geometry) parts.push(before.geometry?.type === "Point" ? "moved it" : "moved or reshaped it");
  return parts.length ? parts.join(", ") : "made no visible change";
}

export class Conflicts {
  private list: Conflict[];
  private showing: Conflict | null = null;

  constructor(private readonly o: ConflictOptions) {
    try {
      this.list = JSON.parse(localStorage.getItem(o.storageKey) ?? "[]") as Conflict[];
    } catch {
      this.list = [];
    }
    $("conflict-mine").addEventListener("click", () => this.resolve("mine"));
    $("conflict-theirs").addEventListener("click", () => this.resolve("theirs"));
    $("conflict-merge").addEventListener("click", () => this.resolve("merge"));
    $("conflict-later").addEventListener("click", () => this.close());
    $<HTMLDialogElement>("conflict").addEventListener("cancel", () => {
      this.showing = null;
    });
  }

  /** The conflicts waiting for a decision. */
  pending(): readonly Conflict[] {
    return this.list;
  }

  /** Keeps a refused edit as a conflict; false when it is not one of ours to keep. */
  take(entry: OutboxEntry, error: Error): boolean {
    if (!(error instanceof RpcError) || entry.featureId === undefined || entry.layer !== this.o.layer) return false;
    const meta = entry.meta as EditMeta | undefined;
    if (!meta || typeof meta.summary !== "string") return false;
    let reason: Conflict["reason"];
    let theirs: Feature | null = null;
    let holder: string | undefined;
    if (error.codeName === "conflict") {
      reason = "conflict";
      theirs = ((error.data as { current?: Feature } | undefined)?.current ?? this.o.current(entry.featureId)) || null;
    } else if (error.codeName === "feature_not_found") {
      reason = "gone";
    } else if (error.codeName === "locked") {
      reason = "locked";
      theirs = this.o.current(entry.featureId) ?? null;
      holder = (error.data as { client?: string } | undefined)?.client;
    } else return false;
    const params = { ...entry.params };
    delete params.op_id;
    this.list.push({ key: entry.opId, featureId: entry.featureId, reason, method: entry.method, params, meta, theirs, at: Date.now(), ...(holder ? { holder } : {}) });
    this.save();
    this.render();
    if (!this.showing) this.open();
    return true;
  }

  private save(): void {
    localStorage.setItem(this.o.storageKey, JSON.stringify(this.list));
  }

  /** The header's badge. */
  render(): void {
    const b = $<HTMLButtonElement>("conflicts-button");
    b.hidden = this.list.length === 0;
    b.textContent = `${this.list.length} edit${this.list.length === 1 ? "" : "s"} to resolve`;
    b.dataset.count = String(this.list.length);
  }

  /** Shows the oldest conflict. */
  open(): void {
    const c = this.list[0];
    const dialog = $<HTMLDialogElement>("conflict");
    if (!c) {
      this.close();
      return;
    }
    this.showing = c;
    // The freshest state: what the subscription holds now, else what the server said.
    const now = this.o.current(c.featureId);
    const theirs = c.reason === "gone" ? (now ?? null) : (now ?? c.theirs);
    const base = c.meta.base?.content ?? theirs ?? { properties: {}, geometry: null };
    const mine = mineOf(c);
    const title = quote(theirs?.properties.name ?? base.properties.name ?? "this feature");
    const who = typeof theirs?.properties.edited_by === "string" && theirs.properties.edited_by !== this.o.myName() ? theirs.properties.edited_by : "Someone";
    const when = c.meta.offline ? "while you were offline" : "before your change arrived";
    const text = $("conflict-text");
    text.replaceChildren();
    const line = (cls: string, s: string): void => {
      const p = document.createElement("p");
      p.className = cls;
      p.textContent = s;
      text.append(p);
    };
    let canMerge = false;
    if (c.reason === "locked") {
      $("conflict-title").textContent = "Someone is editing this feature";
      const holder = c.holder ? (this.o.nameOf?.(c.holder) ?? "Someone") : "Someone";
      line("theirs", `${holder} is editing ${title} and holds its lock.`);
      line("mine", `You ${describe(base, mine)} (${c.meta.summary}). Your change is kept: send it again once they are done, or drop it.`);
    } else {
      $("conflict-title").textContent = `${theirs ? who : "Someone"} changed ${title}`;
      line("theirs", theirs ? `${who} ${describe(base, theirs)} ${when}.` : `Someone deleted ${title} ${when}.`);
      line("mine", `You ${describe(base, mine)}.`);
      if (theirs && mine && c.meta.base) {
        const r = mergeFeature(base, mine, theirs);
        canMerge = r.clean;
        line("hint", r.clean ? "Your changes touch other things than theirs: Merge both keeps both." : `You both changed ${[...r.conflicts, ...(r.geometryConflict ? ["the geometry"] : [])].join(", ")}: choose whose to keep.`);
      }
    }
    $("conflict-count").textContent = this.list.length > 1 ? `${this.list.length - 1} more after this one.` : "";
    $("conflict-mine").textContent = c.reason === "locked" ? "Send mine again" : theirs ? "Keep mine" : "Restore with mine";
    $("conflict-theirs").textContent = c.reason === "locked" ? "Drop mine" : "Keep theirs";
    $<HTMLButtonElement>("conflict-merge").hidden = !canMerge;
    if (!dialog.open) dialog.showModal();
  }

  private close(): void {
    this.showing = null;
    const d = $<HTMLDialogElement>("conflict");
    if (d.open) d.close();
  }

  private resolve(choice: "mine" | "theirs" | "merge"): void {
    const c = this.showing;
    if (!c) return;
    this.list = this.list.filter((x) => x.key !== c.key);
    this.save();
    this.render();
    this.showing = null;
    if (choice !== "theirs") this.send(c, choice);
    if (this.list.length) this.open();
    else this.close();
  }

  /** Sends the chosen outcome on top of the current version (through the outbox, as any edit). */
  private send(c: Conflict, choice: "mine" | "merge"): void {
    const { client, layer } = this.o;
    const cur = this.o.current(c.featureId) ?? (c.reason === "gone" ? null : c.theirs);
    const mine = mineOf(c);
    const base = c.meta.base?.content ?? (cur ? { properties: cur.properties, geometry: cur.geometry } : { properties: {}, geometry: null });
    const meta: EditMeta = {
      base: cur ? { id: cur.id, version: cur.version, content: { properties: cur.properties, geometry: cur.geometry } } : null,
      by: this.o.myName(),
      summary: c.meta.summary,
      offline: false,
    };
    const fail = (e: Error): void => {
      if (e instanceof RpcError && (e.codeName === "conflict" || e.codeName === "locked" || e.codeName === "feature_not_found")) return;
      this.o.toast(`Could not send your change: ${e.message}`);
    };
    if (!mine) {
      if (cur) client.deleteFeature(layer, c.featureId, { version: cur.version, meta }).catch(fail);
      return;
    }
    if (!cur) {
      const properties = { ...mine.properties, edited_by: this.o.myName() };
      client.createFeature(layer, { id: c.featureId, geometry: mine.geometry, properties }, { meta }).catch(fail);
      return;
    }
    const theirs = { properties: cur.properties, geometry: cur.geometry };
    const r = mergeFeature(base, mine, theirs);
    const target = choice === "merge" ? r.merged : r.mineWins;
    const properties = propertiesPatch(cur.properties, { ...target.properties, edited_by: this.o.myName() });
    const geometryChanged = JSON.stringify(target.geometry) !== JSON.stringify(cur.geometry);
    client
      .patchFeature(layer, c.featureId, { properties, ...(geometryChanged ? { geometry: target.geometry } : {}) }, { version: cur.version, meta })
      .then(() => this.o.toast(choice === "merge" ? "Merged: both changes are kept." : "Your change is back on top."))
      .catch(fail);
  }
}
