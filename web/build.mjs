// Builds the demo page into dist/: bundles src/main.ts (with the geostream client and
// MapLibre GL JS from node_modules), its styles and MapLibre's worker under content-hashed
// names (`main-3f9a1c2b7e.js`: the name changes whenever the content does, so the server can
// let browsers cache them for good), index.html pointing at them, and the service worker
// under its stable name `sw.js` with the list of files to keep for offline use.
// Nothing is fetched from a CDN, at build time or at run time.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

/** 10 hex digits of the SHA-256 of `buf` (more until one is a digit, so it reads as a hash). */
function hashOf(buf) {
  const h = createHash("sha256").update(buf).digest("hex");
  let n = 10;
  while (n < h.length && !/[0-9]/.test(h.slice(0, n))) n++;
  return h.slice(0, n);
}
const withHash = (name, buf) => {
  const dot = name.indexOf(".");
  return `${name.slice(0, dot)}-${hashOf(buf)}${name.slice(dot)}`;
};
const written = [];
function emit(name, body) {
  writeFileSync(join(out, name), body);
  written.push(name);
  return `/web/${name}`;
}

// MapLibre's worker and stylesheet, as they come.
const maplibre = join(here, "node_modules/maplibre-gl/dist");
const workerSrc = readFileSync(join(maplibre, "maplibre-gl-worker.mjs"));
const workerUrl = emit(withHash("maplibre-gl-worker.mjs", workerSrc), workerSrc);
const mlCss = readFileSync(join(maplibre, "maplibre-gl.css"));
const mlCssUrl = emit(withHash("maplibre-gl.css", mlCss), mlCss);
// Harbor-scale land (OpenStreetMap, datasets/polygons/osm_ny_harbor_land.README.md).
const harbor = readFileSync(join(here, "../datasets/polygons/osm_ny_harbor_land.geojson"));
const harborUrl = emit(withHash("ny-harbor-land.geojson", harbor), harbor);
const css = readFileSync(join(here, "src/style.css"));
const cssUrl = emit(withHash("style.css", css), css);

// The page's code. Its name depends on its content, so the source map's and the licence
// file's names are set once it is known.
const bundle = await build({
  entryPoints: [join(here, "src/main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: join(out, "main.js"),
  sourcemap: "external",
  minify: true,
  legalComments: "external",
  logLevel: "warning",
  write: false,
  define: { __WORKER_URL__: JSON.stringify(workerUrl), __HARBOR_LAND_URL__: JSON.stringify(harborUrl) },
});
const file = (suffix) => bundle.outputFiles.find((f) => f.path.endsWith(suffix));
const code = Buffer.from(file("main.js").contents);
const mainName = withHash("main.js", code);
const mainUrl = emit(mainName, Buffer.concat([code, Buffer.from(`\n//# sourceMappingURL=${mainName}.map\n`)]));
emit(`${mainName}.map`, file("main.js.map").contents);
if (file("main.js.LEGAL.txt")) emit(`${mainName}.LEGAL.txt`, file("main.js.LEGAL.txt").contents);

// The page: its links point at the hashed files.
const html = readFileSync(join(here, "index.html"), "utf8")
  .replace('href="/web/maplibre-gl.css"', `href="${mlCssUrl}"`)
  .replace('href="/web/style.css"', `href="${cssUrl}"`)
  .replace('src="/web/main.js"', `src="${mainUrl}"`);
if (html.includes('"/web/main.js"') || html.includes('"/web/style.css"')) throw new Error("index.html: an asset link was not rewritten");
emit("index.html", html);

// The service worker: a stable name (browsers look for updates under it), a cache named
// after this build, and the files the page needs offline.
const shell = ["/web/index.html", mainUrl, mlCssUrl, cssUrl, workerUrl, harborUrl];
const buildId = hashOf(Buffer.from(shell.join("\n")));
await build({
  entryPoints: [join(here, "src/sw.ts")],
  bundle: true,
  format: "iife",
  target: "es2022",
  outfile: join(out, "sw.js"),
  minify: true,
  logLevel: "warning",
  define: { __SHELL__: JSON.stringify(shell), __BUILD__: JSON.stringify(buildId) },
});
written.push("sw.js");

// What a browser downloads, before and after compression.
const kb = (n) => `${(n / 1024).toFixed(0)} KiB`;
let raw = 0;
let gz = 0;
let br = 0;
for (const name of [mainName, mlCssUrl.slice(5), cssUrl.slice(5), workerUrl.slice(5), "index.html", "sw.js"]) {
  const body = readFileSync(join(out, name));
  raw += body.length;
  gz += gzipSync(body, { level: 9 }).length;
  br += brotliCompressSync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length;
}
console.log(`built ${out}: ${mainName}; the page's files ${kb(raw)}, gzip -9 ${kb(gz)}, brotli ${kb(br)}`);
