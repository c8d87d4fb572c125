/** Geometry helpers of the editor: anchors, moving, and the vertex handles of lines and polygons. */
import type { Geometry } from "../../clients/js/src/index.js";

type Pos = number[];

/** A vertex handle: `ring` (0 for a line, ring index for a polygon), `index`, and whether it is a midpoint (drag to add a vertex after `index`). */
export interface Handle {
  ring: number;
  index: number;
  mid: boolean;
}

/** The first position of a geometry (where badges and popups go). */
export function geometryAnchor(g: Geometry | null): [number, number] | null {
  if (!g) return null;
  const first = (c: unknown): [number, number] | null => {
    if (Array.isArray(c) && typeof c[0] === "number") return [c[0], c[1] as number];
    return Array.isArray(c) && c.length ? first(c[0]) : null;
  };
  return first(g.coordinates);
}

/** The geometry moved by dx, dy degrees. */
export function translate(g: Geometry, dx: number, dy: number): Geometry {
  const move = (c: unknown): unknown =>
    Array.isArray(c) && typeof c[0] === "number" ? [(c[0] as number) + dx, (c[1] as number) + dy, ...c.slice(2)] : (c as unknown[]).map(move);
  return { ...g, coordinates: move(g.coordinates) };
}

/** The editable paths of a geometry: a line's positions, or a polygon's rings (closed). */
function paths(g: Geometry): Pos[][] | null {
  if (g.type === "LineString") return [g.coordinates as Pos[]];
  if (g.type === "Polygon") return g.coordinates as Pos[][];
  return null;
}

function rebuild(g: Geometry, ps: Pos[][]): Geometry {
  return { type: g.type, coordinates: g.type === "LineString" ? ps[0] : ps };
}

/** Handles for each vertex and each segment's midpoint, as GeoJSON points. */
export function handlesOf(g: Geometry): object[] {
  const ps = paths(g);
  if (!ps) return [];
  const out: object[] = [];
  ps.forEach((p, ring) => {
    const closed = g.type === "Polygon";
    const n = closed ? p.length - 1 : p.length;
    for (let i = 0; i < n; i++) {
      out.push({ type: "Feature", geometry: { type: "Point", coordinates: p[i] }, properties: { ring, index: i, mid: false } });
      const next = p[i + 1];
      if (next) {
        const m = [(p[i]![0]! + next[0]!) / 2, (p[i]![1]! + next[1]!) / 2];
        out.push({ type: "Feature", geometry: { type: "Point", coordinates: m }, properties: { ring, index: i, mid: true } });
      }
    }
  });
  return out;
}

const clone = (ps: Pos[][]): Pos[][] => ps.map((p) => p.map((c) => [...c]));

/** The geometry with vertex `h` at `to`. */
export function moveVertex(g: Geometry, h: Handle, to: [number, number]): Geometry {
  const ps = paths(g);
  if (!ps?.[h.ring]) return g;
  const out = clone(ps);
  const p = out[h.ring]!;
  p[h.index] = [...to];
  // A polygon ring's first and last positions are one vertex.
  if (g.type === "Polygon" && h.index === 0) p[p.length - 1] = [...to];
  return rebuild(g, out);
}

/** The geometry with a new vertex at `to` after vertex `h.index`. */
export function insertVertex(g: Geometry, h: Handle, to: [number, number]): Geometry {
  const ps = paths(g);
  if (!ps?.[h.ring]) return g;
  const out = clone(ps);
  out[h.ring]!.splice(h.index + 1, 0, [...to]);
  return rebuild(g, out);
}

/** The geometry without vertex `h`; null when too few would be left (2 for a line, 3 for a ring). */
export function removeVertex(g: Geometry, h: Handle): Geometry | null {
  const ps = paths(g);
  if (!ps?.[h.ring]) return null;
  const out = clone(ps);
  const p = out[h.ring]!;
  if (g.type === "LineString") {
    if (p.length <= 2) return null;
    p.splice(h.index, 1);
  } else {
    if (p.length <= 4) return null;
    p.splice(h.index, 1);
    if (h.index === 0) p[p.length - 1] = [...p[0]!];
  }
  return rebuild(g, out);
}
