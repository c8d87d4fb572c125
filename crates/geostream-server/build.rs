//! Embeds the demo page and its data in the `geostream` binary, so the binary serves the
//! page, its basemap and its live ships from any directory.
//!
//! - `web/dist` (the page built by `npm run build` in `web/`, which `scripts/serve.sh` and
//!   `scripts/test.sh` run before cargo) is embedded file by file when it holds an
//!   `index.html`, source maps excepted. Without it the binary embeds no page and serves, at
//!   `/`, a page saying how to build one. Cargo reruns this script when `web/dist` changes.
//! - The demo's basemap and ship track from `datasets/` (the defaults of `web.basemap` and
//!   `web.ships`) are always embedded.
//!
//! The npm build is not run from here: it needs the network the first time (`npm ci`), and a
//! build script should not. Writes `$OUT_DIR/embedded.rs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Data files from `datasets/` that the demo needs (the `web` config defaults).
const DATA: &[&str] = &[
    "datasets/polygons/world_countries_110m.geojson",
    "datasets/trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest.join("../..");
    let dist = repo.join("web/dist");
    println!("cargo::rerun-if-changed={}", dist.display());
    println!("cargo::rerun-if-changed=build.rs");

    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, "", &mut files);
        files.sort();
        warn_if_stale(&repo, &dist);
    } else {
        println!(
            "cargo::warning=web/dist is not built: this geostream binary serves no demo page \
             (run scripts/npm-web.sh, then build again)"
        );
    }

    let mut out = String::new();
    out.push_str(
        "/// The files of `web/dist` at build time (name, contents); empty without a build.\n",
    );
    out.push_str("pub(crate) static WEB: &[(&str, &[u8])] = &[\n");
    for (name, path) in &files {
        let _ = writeln!(
            out,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n\n");
    out.push_str("/// Data files the demo uses by default (repository-relative path, contents).\n");
    out.push_str("pub(crate) static DATA: &[(&str, &[u8])] = &[\n");
    for rel in DATA {
        let path = repo.join(rel);
        println!("cargo::rerun-if-changed={}", path.display());
        assert!(path.is_file(), "{} is missing", path.display());
        let path = path.canonicalize().unwrap();
        let _ = writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("embedded.rs"), out).unwrap();
}

/// Every file under `dir` as (`/`-separated name relative to the root, absolute path).
fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            collect(&path, &format!("{prefix}{name}/"), out);
        } else if !name.ends_with(".map") {
            out.push((format!("{prefix}{name}"), path.canonicalize().unwrap()));
        }
    }
}

/// A cargo warning when the page's sources are newer than its build.
fn warn_if_stale(repo: &Path, dist: &Path) {
    let built = modified(&dist.join("index.html"));
    let mut newest = None;
    for p in [
        "web/src",
        "web/index.html",
        "web/build.mjs",
        "clients/js/src",
    ] {
        newest = newest.max(newest_in(&repo.join(p)));
    }
    if let (Some(built), Some(newest)) = (built, newest)
        && newest > built
    {
        println!(
            "cargo::warning=web/dist is older than the page's sources: the embedded demo page is \
             stale (run scripts/npm-web.sh, then build again)"
        );
    }
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn newest_in(p: &Path) -> Option<std::time::SystemTime> {
    if p.is_dir() {
        std::fs::read_dir(p)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| newest_in(&e.path()))
            .max()
    } else {
        modified(p)
    }
}
