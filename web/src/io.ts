/** Import and export of GeoJSON files. */
import type { Feature, Geometry } from "../../clients/js/src/index.js";

export interface Imported {
  geometry: Geometry;
  properties: Record<string, unknown>;
}

function asFeature(v: unknown, where: string): Imported {
  const o = v as { type?: string; geometry?: Geometry | null; properties?: Record<string, unknown> | null; coordinates?: unknown };
  if (!o || typeof o !== "object") throw new Error(`${where}: not an object`);
  if (o.type === "Feature") {
    if (!o.geometry || typeof o.geometry.type !== "string") throw new Error(`${where}: a feature without geometry`);
    return { geometry: o.geometry, properties: o.properties && typeof o.properties === "object" ? o.properties : {} };
  }
  if (typeof o.type === "string" && ("coordinates" in o || "geometries" in o)) return { geometry: o as Geometry, properties: {} };
  throw new Error(`${where}: not a GeoJSON feature`);
}

/**
 * The features of a GeoJSON text: a FeatureCollection, a Feature, a bare geometry, or
 * newline-delimited features. Ids are not kept (the map gives new ones, so an import never
 * collides with what is there).
 */
export function featuresFromFile(text: string): Imported[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    const lines = text.split("\n").filter((l) => l.trim());
    return lines.map((l, i) => asFeature(JSON.parse(l), `line ${i + 1}`));
  }
  const d = doc as { type?: string; features?: unknown[] };
  const out = d?.type === "FeatureCollection" && Array.isArray(d.features) ? d.features.map((f, i) => asFeature(f, `features[${i}]`)) : [asFeature(doc, "the file")];
  if (!out.length) throw new Error("no features");
  return out;
}

/** The features as a GeoJSON FeatureCollection (ids kept; versions left out). */
export function layerAsGeoJson(features: Iterable<Feature>): { type: "FeatureCollection"; features: object[] } {
  return {
    type: "FeatureCollection",
    features: [...features].map((f) => ({ type: "Feature", id: f.id, geometry: f.geometry, properties: f.properties })),
  };
}
