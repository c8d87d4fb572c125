//! MBTiles and PMTiles readers against the real archives in `datasets/`,
//! with expected counts read from its manifest.

mod common;

use std::collections::BTreeMap;

use geostream_tiles::{MbTiles, PmTiles, TileArchive, TileCompression, TileFormat, TileId};

const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];

fn expected_counts(manifest: &serde_json::Value, key: &str) -> (u64, BTreeMap<u8, u64>) {
    let entry = &manifest[key];
    let total = entry["tiles"].as_u64().expect("tiles");
    let per_zoom = entry["tiles_per_zoom"]
        .as_object()
        .expect("tiles_per_zoom")
        .iter()
        .map(|(z, n)| (z.parse::<u8>().unwrap(), n.as_u64().unwrap()))
        .collect();
    (total, per_zoom)
}

fn check_archive(archive: &dyn TileArchive, manifest: &serde_json::Value, key: &str) {
    let (total, per_zoom) = expected_counts(manifest, key);
    let ids = archive.tile_ids().unwrap();
    assert_eq!(ids.len() as u64, total, "{key}: tile count");
    assert_eq!(archive.tile_counts().unwrap(), per_zoom, "{key}: per zoom");
    let info = archive.info();
    assert_eq!(
        u64::from(info.min_zoom),
        manifest[key]["minzoom"].as_u64().unwrap()
    );
    assert_eq!(
        u64::from(info.max_zoom),
        manifest[key]["maxzoom"].as_u64().unwrap()
    );
    assert_eq!(
        info.format,
        TileFormat::from_name(manifest[key]["format"].as_str().unwrap())
    );
    // Every listed tile can be fetched and is a JPEG.
    for id in &ids {
        let bytes = archive
            .get(id.z(), id.x(), id.y())
            .unwrap()
            .unwrap_or_else(|| panic!("{key}: {id} listed but missing"));
        assert!(bytes.starts_with(&JPEG_MAGIC), "{key}: {id} is not a JPEG");
    }
    // Neighbours outside the archive are None, bad coordinates are errors.
    let z = info.max_zoom;
    let present: std::collections::HashSet<TileId> = ids.iter().copied().collect();
    for x in [0u32, (1 << z) - 1] {
        for y in [0u32, (1 << z) - 1] {
            let t = TileId::new(z, x, y).unwrap();
            if !present.contains(&t) {
                assert!(
                    archive.get(z, x, y).unwrap().is_none(),
                    "{key}: {t} should be absent"
                );
            }
        }
    }
    assert!(
        archive.get(z + 1, 0, 0).unwrap().is_none(),
        "{key}: zoom above max"
    );
    assert!(archive.get(3, 8, 0).is_err());
    assert!(archive.get(23, 0, 0).is_err());
}

#[test]
fn mbtiles_bluemarble_matches_manifest() {
    let dir = common::data_dir();
    let manifest = common::manifest(&dir);
    let key = "tiles/bluemarble_world_z0-4.mbtiles";
    let mb = MbTiles::open(dir.join(key)).unwrap();
    check_archive(&mb, &manifest, key);
    let info = mb.info();
    assert_eq!(info.format, TileFormat::Jpeg);
    assert_eq!(info.compression, TileCompression::None);
    assert!(info.attribution.as_deref().unwrap_or("").contains("NASA"));
    let b = info.bounds.expect("bounds");
    assert!((b.west + 180.0).abs() < 1e-6 && (b.north - 85.051_129).abs() < 1e-6);
    // XYZ row 0 is the north; MBTiles stores TMS rows, so the two differ.
    let north = mb.get(1, 0, 0).unwrap().unwrap();
    let south = mb.get(1, 0, 1).unwrap().unwrap();
    assert_ne!(north, south);
    assert_eq!(mb.metadata().get("minzoom").map(String::as_str), Some("0"));
}

#[test]
fn pmtiles_landsat_matches_manifest() {
    let dir = common::data_dir();
    let manifest = common::manifest(&dir);
    let key = "tiles/landsat7_sf_bay_z0-13.pmtiles";
    let pm = PmTiles::open(dir.join(key)).unwrap();
    check_archive(&pm, &manifest, key);
    let info = pm.info();
    assert_eq!(info.format, TileFormat::Jpeg);
    assert_eq!(info.compression, TileCompression::None);
    // The archive covers the San Francisco Bay: its bounds hold the city and
    // the z13 tile over downtown San Francisco is not necessarily present,
    // but every stored z13 tile lies inside the declared bounds.
    let b = info.bounds.expect("bounds");
    for id in pm.tile_ids().unwrap().iter().filter(|t| t.z() == 13) {
        let tb = id.bounds_lonlat();
        assert!(
            tb.east >= b.west && tb.west <= b.east && tb.north >= b.south && tb.south <= b.north,
            "{id} outside {b:?}"
        );
    }
    // Reading the same archive from memory gives the same tiles.
    let mem = PmTiles::from_bytes(std::fs::read(dir.join(key)).unwrap().into()).unwrap();
    for id in pm.tile_ids().unwrap().iter().step_by(17) {
        assert_eq!(
            mem.get(id.z(), id.x(), id.y()).unwrap(),
            pm.get(id.z(), id.x(), id.y()).unwrap()
        );
    }
    assert_eq!(
        pm.header().addressed_tiles,
        manifest[key]["tiles"].as_u64().unwrap()
    );
}

#[test]
fn pmtiles_z0_to_z7_are_the_parents_of_the_bay() {
    let dir = common::data_dir();
    let pm = PmTiles::open(dir.join("tiles/landsat7_sf_bay_z0-13.pmtiles")).unwrap();
    // One tile per zoom up to z7 (manifest): each must be the ancestor of
    // every z13 tile, which checks the Hilbert id decoding against real data.
    let ids = pm.tile_ids().unwrap();
    let deepest: Vec<TileId> = ids.iter().copied().filter(|t| t.z() == 13).collect();
    for t in ids.iter().filter(|t| t.z() <= 7) {
        for d in &deepest {
            let mut a = *d;
            while a.z() > t.z() {
                a = a.parent().unwrap();
            }
            assert_eq!(a, *t, "{t} is not an ancestor of {d}");
        }
    }
}

#[test]
fn corrupt_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("geostream-tiles-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.mbtiles");
    std::fs::write(&junk, b"this is not sqlite at all, just text").unwrap();
    assert!(MbTiles::open(&junk).is_err());
    let junk_pm = dir.join("junk.pmtiles");
    std::fs::write(&junk_pm, b"PMTiles\x03 too short").unwrap();
    assert!(PmTiles::open(&junk_pm).is_err());
    assert!(MbTiles::open(dir.join("missing.mbtiles")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
