/**
 * Three-way merge of a feature's content, for edits the server refused as a `conflict`:
 * `base` is the feature the edit was made on, `mine` what the edit wanted, `theirs` what the
 * server holds now. Properties merge key by key; the geometry is taken whole from one side.
 */
import type { Geometry } from "./types.js";

/** The part of a feature a merge looks at. */
export interface FeatureContent {
  properties: Record<string, unknown>;
  geometry: Geometry | null;
}

/** What one side changed, relative to the base. */
export interface Changes {
  /** Keys set to a new value or added. */
  set: string[];
  /** Keys removed. */
  removed: string[];
  /** Whether the geometry changed. */
  geometry: boolean;
}

export interface MergeResult {
  /** What the edit changed. */
  mine: Changes;
  /** What happened on the server meanwhile. */
  theirs: Changes;
  /** Keys both sides changed, to different values. */
  conflicts: string[];
  /** Whether both sides changed the geometry, differently. */
  geometryConflict: boolean;
  /** Whether {@link merged} keeps both sides' changes (no conflicting key, no geometry clash). */
  clean: boolean;
  /** Theirs plus my changes where they do not collide (on a collision, theirs). */
  merged: FeatureContent;
  /** Theirs with all of my changes on top ("keep mine"). */
  mineWins: FeatureContent;
}

/** JSON text with object keys sorted: equal values give equal text. */
export function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v ?? null);
}

const same = (a: unknown, b: unknown): boolean => canonical(a) === canonical(b);

/** What `after` changed relative to `before`. */
export function changesBetween(before: FeatureContent, after: FeatureContent): Changes {
  const set: string[] = [];
  const removed: string[] = [];
  for (const [k, v] of Object.entries(after.properties)) if (!(k in before.properties) || !same(before.properties[k], v)) set.push(k);
  for (const k of Object.keys(before.properties)) if (!(k in after.properties)) removed.push(k);
  return { set, removed, geometry: !same(before.geometry, after.geometry) };
}

/** Merges `mine` and `theirs`, both made from `base`. */
export function mergeFeature(base: FeatureContent, mine: FeatureContent, theirs: FeatureContent): MergeResult {
  const m = changesBetween(base, mine);
  const t = changesBetween(base, theirs);
  const theirKeys = new Set([...t.set, ...t.removed]);
  const conflicts: string[] = [];
  const merged: Record<string, unknown> = { ...theirs.properties };
  const mineWins: Record<string, unknown> = { ...theirs.properties };
  for (const k of [...m.set, ...m.removed]) {
    const removed = !(k in mine.properties);
    const clash = theirKeys.has(k) && !same(mine.properties[k], theirs.properties[k]);
    if (clash) conflicts.push(k);
    for (const target of clash ? [mineWins] : [merged, mineWins]) {
      if (removed) delete target[k];
      else target[k] = mine.properties[k];
    }
  }
  const geometryConflict = m.geometry && t.geometry && !same(mine.geometry, theirs.geometry);
  const geometry = m.geometry && !geometryConflict ? mine.geometry : theirs.geometry;
  return {
    mine: m,
    theirs: t,
    conflicts: conflicts.sort(),
    geometryConflict,
    clean: conflicts.length === 0 && !geometryConflict,
    merged: { properties: merged, geometry },
    mineWins: { properties: mineWins, geometry: m.geometry ? mine.geometry : theirs.geometry },
  };
}

/**
 * The JSON Merge Patch (RFC 7396, top level) that turns `from`'s properties into `to`'s:
 * changed and added keys with their value, removed keys with `null`.
 */
export function propertiesPatch(from: Record<string, unknown>, to: Record<string, unknown>): Record<string, unknown> {
  const patch: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(to)) if (!(k in from) || !same(from[k], v)) patch[k] = v;
  for (const k of Object.keys(from)) if (!(k in to)) patch[k] = null;
  return patch;
}
