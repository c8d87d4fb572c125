//! Bytes on the wire for layer snapshots in each encoding: JSON, MessagePack and MessagePack
//! with Zstandard, for real layers from `datasets/`, in snapshot pages of 500 features
//! (the server's default page). Run: `cargo bench -p geostream-server --bench snapshot_sizes`.

use std::path::PathBuf;

use geostream_core::api::{SnapshotPush, push};
use geostream_core::codec::{Encoding, encode_push};
use geostream_core::feature::Feature;
use serde_json::Value;

const FILES: &[(&str, &str)] = &[
    (
        "countries 1:50m",
        "polygons/world_countries_50m.geojson.zst",
    ),
    ("cities", "points/geonames_cities15000.geojson.zst"),
    (
        "Helsinki roads",
        "lines/osm_helsinki_highway_railway.geojson.zst",
    ),
    (
        "countries, 168 attributes",
        "polygons/ne_110m_admin_0_countries.geojson.zst",
    ),
];
const PAGE: usize = 500;

/// The repository's vendored real data (`datasets/`).
fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// The features of a file as the store would hold them (string ids, a version, a time).
fn features(path: &std::path::Path) -> Vec<Feature> {
    let raw = zstd::decode_all(&std::fs::read(path).unwrap()[..]).unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    v["features"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut f = f.clone();
            let id = match &f["id"] {
                Value::String(s) => s.clone(),
                Value::Null => format!("f{i}"),
                other => other.to_string(),
            };
            f["id"] = Value::String(id);
            f["version"] = Value::from(1);
            f["updated"] = Value::from("2026-11-30T12:00:00.000Z");
            serde_json::from_value(f).unwrap()
        })
        .collect()
}

fn main() {
    let dir = data_dir();
    println!("snapshot bytes for whole layers, pages of {PAGE} features");
    println!(
        "{:<18} {:>8} {:>12} {:>12} {:>8} {:>12} {:>8}",
        "layer", "features", "JSON", "MessagePack", "vs JSON", "msgpack-zstd", "vs JSON"
    );
    for (name, file) in FILES {
        let fs = features(&dir.join(file));
        let mut sizes = [0usize; 3];
        for (k, enc) in [Encoding::Json, Encoding::Msgpack, Encoding::MsgpackZstd]
            .into_iter()
            .enumerate()
        {
            let pages = fs.chunks(PAGE).count();
            for (p, chunk) in fs.chunks(PAGE).enumerate() {
                let f = encode_push(
                    enc,
                    push::SNAPSHOT,
                    &SnapshotPush {
                        layer: "layer".into(),
                        seq: 1,
                        features: chunk.into(),
                        last: p + 1 == pages,
                    },
                    None,
                );
                sizes[k] += f.len(1);
            }
        }
        let pct = |n: usize| 100.0 * n as f64 / sizes[0] as f64;
        println!(
            "{:<18} {:>8} {:>12} {:>12} {:>7.1}% {:>12} {:>7.1}%",
            name,
            fs.len(),
            sizes[0],
            sizes[1],
            pct(sizes[1]),
            sizes[2],
            pct(sizes[2])
        );
    }
}
