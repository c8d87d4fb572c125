/** What a ship's popup says, from its AIS properties. */
import type { Feature } from "../../clients/js/src/index.js";

/** AIS ship and cargo type codes (ITU-R M.1371), by tens where the unit digit is the cargo. */
function vesselType(code: unknown): string {
  const n = Number(code);
  if (!Number.isFinite(n) || n <= 0) return "not reported";
  const exact: Record<number, string> = {
    30: "fishing",
    31: "towing",
    32: "towing (large)",
    33: "dredging",
    34: "diving",
    35: "military",
    36: "sailing",
    37: "pleasure craft",
    50: "pilot",
    51: "search and rescue",
    52: "tug",
    53: "port tender",
    54: "anti-pollution",
    55: "law enforcement",
    58: "medical transport",
  };
  if (exact[n]) return exact[n]!;
  const tens: Record<number, string> = { 2: "wing in ground", 4: "high-speed craft", 6: "passenger", 7: "cargo", 8: "tanker", 9: "other" };
  if (n >= 1000) return `other (${n})`;
  return tens[Math.floor(n / 10)] ?? `type ${n}`;
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

/** The popup's content: name, type, speed, course, and the last report. */
export function shipDetails(f: Feature): HTMLElement {
  const p = f.properties;
  const box = document.createElement("div");
  const title = document.createElement("strong");
  title.textContent = typeof p.VesselName === "string" && p.VesselName ? p.VesselName : `MMSI ${f.id}`;
  const dl = document.createElement("dl");
  const sog = Number(p.SOG);
  const cog = Number(p.COG);
  const rows: [string, string][] = [
    ["type", vesselType(p.VesselType)],
    ["speed", Number.isFinite(sog) ? `${sog.toFixed(1)} kn${sog <= 0.5 ? " (stopped)" : ""}` : "not reported"],
    ["course", Number.isFinite(cog) && cog < 360 ? `${Math.round(cog)}°` : "not reported"],
    ["MMSI", f.id],
  ];
  if (p.Length) rows.push(["length", `${String(p.Length)} m`]);
  const when = typeof p.datetime === "string" ? p.datetime.replace("T", " ").replace("Z", " UTC") : "";
  rows.push(["last report", `${when}${typeof p.replayed_ms === "number" ? ` (replayed ${ago(p.replayed_ms)})` : ""}`]);
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  box.append(title, dl);
  return box;
}
