//! The vendored real data (`datasets/`) against its manifest: every data file is listed and
//! every listed file is there, with the stated size and sha256; GeoJSON files hold the stated
//! number of features of each geometry type; trajectories the stated rows, objects and time
//! range. Every folder has a README naming its files' sources and licences.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

fn manifest() -> BTreeMap<String, Value> {
    let text = std::fs::read(root().join("manifest.json")).expect("datasets/manifest.json");
    serde_json::from_slice(&text).expect("manifest.json is a JSON object")
}

/// Data files under `datasets/` (not READMEs, scripts or the manifest), as relative paths.
fn data_files(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let path = format!("{rel}{name}");
        if entry.file_type().unwrap().is_dir() {
            if name != "scripts" {
                data_files(&entry.path(), &format!("{path}/"), out);
            }
        } else if !name.ends_with(".md") && path != "manifest.json" {
            out.insert(path);
        }
    }
}

fn contents(rel: &str) -> Vec<u8> {
    let raw = std::fs::read(root().join(rel)).unwrap();
    if rel.ends_with(".zst") {
        zstd::decode_all(&raw[..]).unwrap()
    } else {
        raw
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_file_is_in_the_manifest_with_its_size_and_checksum() {
    let m = manifest();
    let mut files = BTreeSet::new();
    data_files(&root(), "", &mut files);
    let listed: BTreeSet<String> = m.keys().cloned().collect();
    assert_eq!(files, listed, "files on disk and in datasets/manifest.json");
    for (rel, entry) in &m {
        let raw = std::fs::read(root().join(rel)).unwrap();
        assert_eq!(
            raw.len() as u64,
            entry["bytes"].as_u64().unwrap(),
            "{rel}: bytes"
        );
        assert_eq!(
            hex(&Sha256::digest(&raw)),
            entry["sha256"].as_str().unwrap(),
            "{rel}: sha256"
        );
        if let Some(n) = entry["uncompressed_bytes"].as_u64() {
            assert_eq!(contents(rel).len() as u64, n, "{rel}: uncompressed bytes");
        }
        assert!(
            entry["source"].as_str().is_some_and(|s| !s.is_empty()),
            "{rel}: no source"
        );
    }
}

#[test]
fn geojson_files_hold_the_stated_features() {
    for (rel, entry) in manifest() {
        if !rel.contains(".geojson") {
            continue;
        }
        let fc: Value = serde_json::from_slice(&contents(&rel)).unwrap();
        assert_eq!(fc["type"], "FeatureCollection", "{rel}");
        let features = fc["features"].as_array().unwrap();
        assert_eq!(
            features.len() as u64,
            entry["features"].as_u64().unwrap(),
            "{rel}: features"
        );
        let mut types: BTreeMap<String, u64> = BTreeMap::new();
        for f in features {
            let t = f["geometry"]["type"].as_str().unwrap_or("null");
            *types.entry(t.to_string()).or_default() += 1;
        }
        let stated: BTreeMap<String, u64> =
            serde_json::from_value(entry["geometry_types"].clone()).unwrap();
        assert_eq!(types, stated, "{rel}: geometry types");
    }
}

#[test]
fn trajectories_hold_the_stated_rows_objects_and_times() {
    let mut seen = 0;
    for (rel, entry) in manifest() {
        if !rel.starts_with("trajectories/") {
            continue;
        }
        seen += 1;
        let text = String::from_utf8(contents(&rel)).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let columns: Vec<String> = serde_json::from_value(entry["columns"].clone()).unwrap();
        assert_eq!(header, columns, "{rel}: columns");
        let (mut rows, mut objects) = (0u64, HashSet::new());
        let (mut first, mut last): (Option<String>, Option<String>) = (None, None);
        for line in lines {
            let mut f = line.splitn(3, ',');
            let (t, id) = (f.next().unwrap(), f.next().unwrap());
            rows += 1;
            objects.insert(id.to_string());
            if first.is_none() {
                first = Some(t.to_string());
            }
            if let Some(prev) = &last {
                assert!(
                    prev.as_str() <= t,
                    "{rel}: not sorted by time at row {rows}"
                );
            }
            last = Some(t.to_string());
        }
        assert_eq!(rows, entry["rows"].as_u64().unwrap(), "{rel}: rows");
        assert_eq!(
            objects.len() as u64,
            entry["objects"].as_u64().unwrap(),
            "{rel}: objects"
        );
        assert_eq!(first.as_deref(), entry["t_min"].as_str(), "{rel}: t_min");
        assert_eq!(last.as_deref(), entry["t_max"].as_str(), "{rel}: t_max");
    }
    assert!(seen >= 2, "the AIS trajectories are listed");
}

#[test]
fn no_aircraft_tracks_and_a_readme_per_folder() {
    for rel in manifest().keys() {
        // OpenSky's terms forbid redistributing ADS-B data: it must never be vendored.
        assert!(
            !rel.contains("adsb"),
            "{rel}: ADS-B data may not be redistributed"
        );
        let folder = rel.split('/').next().unwrap();
        let readme = std::fs::read_to_string(root().join(folder).join("README.md"))
            .unwrap_or_else(|_| panic!("datasets/{folder}/README.md"));
        let name = rel.rsplit('/').next().unwrap();
        assert!(
            readme.contains(name),
            "datasets/{folder}/README.md does not describe {name}"
        );
        for word in ["Data:", "From:"] {
            assert!(readme.contains(word), "datasets/{folder}/README.md: {word}");
        }
    }
}
