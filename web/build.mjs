// Builds the demo page into dist/: bundles src/main.ts (with the geostream client and
// MapLibre GL JS from node_modules) and copies the page, its styles and MapLibre's worker.
// Nothing is fetched from a CDN, at build time or at run time.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src/main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: join(out, "main.js"),
  sourcemap: true,
  minify: true,
  legalComments: "linked",
  logLevel: "warning",
});

const maplibre = join(here, "node_modules/maplibre-gl/dist");
copyFileSync(join(maplibre, "maplibre-gl-worker.mjs"), join(out, "maplibre-gl-worker.mjs"));
copyFileSync(join(maplibre, "maplibre-gl.css"), join(out, "maplibre-gl.css"));
copyFileSync(join(here, "index.html"), join(out, "index.html"));
copyFileSync(join(here, "src/style.css"), join(out, "style.css"));
console.log(`built ${out}`);
