//! Deltas between real tile versions, corruption handling and property-based
//! round trips.

mod common;

use geostream_tiles::delta::{self, DeltaError};
use geostream_tiles::{MvtOptions, TileFeature, TileId, encode_tile, encode_tile_like};
use proptest::prelude::*;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (label, tile, features near the tile) for the real-data tiles.
fn real_tiles(dir: &std::path::Path) -> Vec<(&'static str, TileId, Vec<TileFeature>)> {
    let countries = common::load_features(dir, "polygons/world_countries_110m.geojson");
    let cities = common::load_features(dir, "points/geonames_cities15000.geojson.zst");
    let lines = common::load_features(dir, "lines/osm_helsinki_highway_railway.geojson.zst");
    let mut out = Vec::new();
    for (label, tile, feats) in [
        ("countries z2", TileId::new(2, 2, 1).unwrap(), &countries),
        ("countries z4", TileId::new(4, 8, 5).unwrap(), &countries),
        (
            "cities z6 Delhi",
            TileId::from_lon_lat(77.2, 28.6, 6).unwrap(),
            &cities,
        ),
        ("cities z4 Europe", TileId::new(4, 8, 5).unwrap(), &cities),
        (
            "helsinki z15",
            TileId::from_lon_lat(24.94, 60.17, 15).unwrap(),
            &lines,
        ),
    ] {
        out.push((label, tile, common::near_tile(feats, tile)));
    }
    out
}

#[test]
fn single_feature_edits_give_small_deltas() {
    let dir = common::data_dir();
    let opts = MvtOptions::default();
    let (mut all_plain, mut all_like) = (Vec::new(), Vec::new());
    for (label, tile, feats) in real_tiles(&dir) {
        let base = encode_tile(tile, "layer", &feats, &opts).unwrap().bytes;
        let (mut plain, mut like) = (Vec::new(), Vec::new());
        let mut sizes = Vec::new();
        for (kind, edited) in common::single_feature_edits(&feats, tile, 8) {
            let target = encode_tile(tile, "layer", &edited, &opts).unwrap().bytes;
            let d = delta::encode(&base, &target);
            assert_eq!(
                delta::apply(&base, &d, target.len()).unwrap(),
                target,
                "{label} {kind}"
            );
            plain.push(d.len() as f64 / target.len() as f64);
            // What the server does: number the new version like the old one.
            let target = encode_tile_like(tile, "layer", &edited, &opts, &base)
                .unwrap()
                .bytes;
            let dl = delta::encode(&base, &target);
            assert_eq!(
                delta::apply(&base, &dl, target.len()).unwrap(),
                target,
                "{label} {kind}"
            );
            like.push(dl.len() as f64 / target.len() as f64);
            sizes.push(format!("{kind}: {}/{}", d.len(), dl.len()));
        }
        assert!(plain.len() >= 8, "{label}: too few edits ({})", plain.len());
        println!(
            "{label} ({tile}): full tile {} B, median delta {:.2}% (encode_tile) / {:.2}% (encode_tile_like); \
             bytes plain/like: {}",
            base.len(),
            median(&mut plain.clone()) * 100.0,
            median(&mut like.clone()) * 100.0,
            sizes.join(", ")
        );
        all_plain.extend(plain);
        all_like.extend(like);
    }
    let m = median(&mut all_plain);
    let m_like = median(&mut all_like);
    let p90_like = all_like[all_like.len() * 9 / 10];
    println!(
        "{} single-feature edits: median delta {:.2}% of the full tile with encode_tile, {:.2}% with \
         encode_tile_like (90th percentile {:.2}%)",
        all_plain.len(),
        m * 100.0,
        m_like * 100.0,
        p90_like * 100.0
    );
    assert!(
        m <= 0.10,
        "median delta {:.1}% is not 90% smaller than the tile",
        m * 100.0
    );
    assert!(
        p90_like <= 0.10,
        "90th percentile {:.1}% with stable numbering",
        p90_like * 100.0
    );
    assert!(
        all_like.iter().all(|r| *r <= 0.25),
        "every seeded delta saves at least 75%"
    );
}

#[test]
fn wrong_base_and_corruption_are_detected_on_real_tiles() {
    let dir = common::data_dir();
    let opts = MvtOptions::default();
    let (_, tile, feats) = real_tiles(&dir).swap_remove(2);
    let edits = common::single_feature_edits(&feats, tile, 3);
    let v1 = encode_tile(tile, "l", &feats, &opts).unwrap().bytes;
    let v2 = encode_tile(tile, "l", &edits[0].1, &opts).unwrap().bytes;
    let v3 = encode_tile(tile, "l", &edits[2].1, &opts).unwrap().bytes;
    let d = delta::encode(&v1, &v3);
    assert_eq!(delta::apply(&v1, &d, 1 << 20).unwrap(), v3);
    // A client holding v2 instead of v1 must not get a silently wrong tile.
    assert!(delta::apply(&v2, &d, 1 << 20).is_err());
    // Bounded output.
    assert!(matches!(
        delta::apply(&v1, &d, v3.len() - 1),
        Err(DeltaError::TooLarge { .. })
    ));
    // Flip each byte in turn (every 7th, to keep the debug build quick).
    for i in (0..d.len()).step_by(7) {
        let mut bad = d.clone();
        bad[i] ^= 0x20;
        assert!(
            delta::apply(&v1, &bad, 1 << 20).is_err(),
            "flip at {i} accepted"
        );
    }
    let h = delta::header(&d).unwrap();
    assert_eq!(h.checksum, delta::checksum(&v3));
    assert_eq!(h.target_len, v3.len() as u64);
}

#[test]
fn raster_tiles_round_trip() {
    let dir = common::data_dir();
    use geostream_tiles::{MbTiles, TileArchive};
    let mb = MbTiles::open(dir.join("tiles/bluemarble_world_z0-4.mbtiles")).unwrap();
    let a = mb.get(4, 8, 5).unwrap().unwrap();
    let b = mb.get(4, 9, 5).unwrap().unwrap();
    // Unrelated JPEGs share almost nothing, yet the delta must still work
    // and stay close to the target's size.
    let d = delta::encode(&a, &b);
    assert_eq!(delta::apply(&a, &d, b.len()).unwrap(), &b[..]);
    assert!(
        d.len() < b.len() + b.len() / 50 + 16,
        "{} vs {}",
        d.len(),
        b.len()
    );
    // A tile with a patch of bytes rewritten in the middle.
    let mut c = a.to_vec();
    for byte in &mut c[a.len() / 2..a.len() / 2 + 100] {
        *byte = byte.wrapping_add(1);
    }
    let d = delta::encode(&a, &c);
    assert_eq!(delta::apply(&a, &d, c.len()).unwrap(), c);
    assert!(d.len() < 140, "{}", d.len());
}

/// An edit script applied to a base: (position fraction, delete count,
/// inserted bytes).
fn edited(base: &[u8], edits: &[(f64, usize, Vec<u8>)]) -> Vec<u8> {
    let mut t = base.to_vec();
    for (at, del, ins) in edits {
        let pos = ((t.len() as f64) * at) as usize;
        let end = (pos + del).min(t.len());
        t.splice(pos..end, ins.iter().copied());
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn round_trip_random_edits(
        base in proptest::collection::vec(any::<u8>(), 0..3000),
        edits in proptest::collection::vec(
            (0.0f64..1.0, 0usize..64, proptest::collection::vec(any::<u8>(), 0..32)),
            0..6,
        ),
    ) {
        let target = edited(&base, &edits);
        let d = delta::encode(&base, &target);
        prop_assert_eq!(delta::apply(&base, &d, target.len()).unwrap(), target);
    }

    #[test]
    fn round_trip_unrelated(
        base in proptest::collection::vec(0u8..4, 0..2000),
        target in proptest::collection::vec(0u8..4, 0..2000),
    ) {
        // A four-letter alphabet makes many partial matches and collisions.
        let d = delta::encode(&base, &target);
        prop_assert_eq!(delta::apply(&base, &d, target.len()).unwrap(), target);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overshoot(
        base in proptest::collection::vec(any::<u8>(), 0..200),
        mut garbage in proptest::collection::vec(any::<u8>(), 0..64),
        max_len in 0usize..4096,
    ) {
        // Give half the cases a valid header so the operation parser is hit.
        if garbage.len() > 8 && garbage[0] & 1 == 0 {
            let mut head = b"GD\x01".to_vec();
            head.push(base.len().min(127) as u8);
            garbage.splice(0..0, head);
        }
        if let Ok(out) = delta::apply(&base, &garbage, max_len) {
            prop_assert!(out.len() <= max_len);
        }
    }
}
