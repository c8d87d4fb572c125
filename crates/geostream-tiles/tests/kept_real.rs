//! Kept features ([`encode_kept`]) give, render after render, the bytes the plain encoders
//! give for the same features: on real polygons, points and lines, with and without the
//! previous version's tables, across edits and under a feature cap.

mod common;

use std::sync::Arc;

use geostream_tiles::{
    KeptFeature, MvtOptions, TileFeature, TileId, encode_kept, encode_tile, encode_tile_like,
};

fn keep(features: &[TileFeature]) -> Vec<Arc<KeptFeature>> {
    features
        .iter()
        .map(|f| Arc::new(KeptFeature::new(f.clone())))
        .collect()
}

fn tiles_at(z: u8) -> impl Iterator<Item = TileId> {
    let n = 1u32 << z;
    (0..n).flat_map(move |x| (0..n).map(move |y| TileId::new(z, x, y).unwrap()))
}

#[test]
fn kept_countries_render_as_plain_ones_every_time() {
    let dir = common::data_dir();
    let countries = common::load_features(&dir, "polygons/world_countries_50m.geojson.zst");
    let kept = keep(&countries);
    let opts = MvtOptions::default();
    let mut tiles = 0;
    for z in 0..=3 {
        for t in tiles_at(z) {
            let plain = encode_tile(t, "countries", &countries, &opts).unwrap();
            // First render draws, the second takes every drawing kept by the first.
            for round in 0..2 {
                let k = encode_kept(t, "countries", &kept, &opts, None).unwrap();
                assert!(
                    k == plain,
                    "tile {t}, round {round}: the kept render differs"
                );
            }
            tiles += 1;
        }
    }
    assert_eq!(tiles, 1 + 4 + 16 + 64);
    let drawn: usize = kept.iter().map(|k| k.drawing_bytes()).sum();
    assert!(drawn > 0, "nothing was kept");
    for k in &kept {
        assert!(
            k.drawing_bytes() <= k.approx_bytes() / 2,
            "{} bytes of drawings for a feature charged {}",
            k.drawing_bytes(),
            k.approx_bytes()
        );
    }
}

#[test]
fn an_edited_feature_is_drawn_afresh_and_the_others_are_reused() {
    let dir = common::data_dir();
    let countries = common::load_features(&dir, "polygons/world_countries_50m.geojson.zst");
    let opts = MvtOptions::default();
    let tile = TileId::new(3, 4, 2).unwrap();
    let near = common::near_tile(&countries, tile);
    let kept = keep(&near);
    let base = encode_kept(tile, "c", &kept, &opts, None).unwrap().bytes;
    assert_eq!(base, encode_tile(tile, "c", &near, &opts).unwrap().bytes);
    let edits = common::single_feature_edits(&near, tile, 6);
    assert!(edits.len() >= 6, "only {} edits", edits.len());
    for (kind, edited) in edits {
        // The one feature that differs is replaced by a new kept feature; the rest keep
        // their drawings from the renders before.
        let changed: Vec<usize> = (0..near.len()).filter(|&i| near[i] != edited[i]).collect();
        assert_eq!(changed.len(), 1, "{kind}");
        let mut now = kept.clone();
        now[changed[0]] = Arc::new(KeptFeature::new(edited[changed[0]].clone()));
        let got = encode_kept(tile, "c", &now, &opts, Some(&base)).unwrap();
        let want = encode_tile_like(tile, "c", &edited, &opts, &base).unwrap();
        assert!(
            got == want,
            "{kind}: the kept render differs from the plain one"
        );
    }
}

#[test]
fn kept_points_and_lines_render_as_plain_ones_under_a_cap() {
    let dir = common::data_dir();
    let cities = common::load_features(&dir, "points/geonames_cities15000.geojson.zst");
    let lines = common::load_features(&dir, "lines/osm_helsinki_highway_railway.geojson.zst");
    for (name, features, tiles) in [
        (
            "cities",
            &cities,
            vec![TileId::new(4, 8, 5).unwrap(), TileId::new(2, 2, 1).unwrap()],
        ),
        (
            "lines",
            &lines,
            vec![
                TileId::from_lon_lat(24.945, 60.17, 14).unwrap(),
                TileId::from_lon_lat(24.94, 60.17, 15).unwrap(),
            ],
        ),
    ] {
        let kept = keep(features);
        for cap in [usize::MAX, 25] {
            let opts = MvtOptions {
                max_features: cap,
                ..MvtOptions::default()
            };
            for &t in &tiles {
                let plain = encode_tile(t, name, features, &opts).unwrap();
                assert!(plain.features > 0, "{name} {t}: empty tile");
                if cap != usize::MAX {
                    assert!(plain.dropped > 0, "{name} {t}: the cap dropped nothing");
                }
                for round in 0..2 {
                    let got = encode_kept(t, name, &kept, &opts, None).unwrap();
                    assert!(got == plain, "{name} {t} cap {cap} round {round}: differs");
                }
            }
        }
    }
}

#[test]
fn drawings_are_kept_per_options() {
    let dir = common::data_dir();
    let countries = common::load_features(&dir, "polygons/world_countries_50m.geojson.zst");
    let kept = keep(&countries);
    let tile = TileId::new(2, 2, 1).unwrap();
    for opts in [
        MvtOptions::default(),
        MvtOptions {
            extent: 512,
            ..MvtOptions::default()
        },
        MvtOptions {
            buffer: 8,
            ..MvtOptions::default()
        },
        MvtOptions {
            simplify: false,
            ..MvtOptions::default()
        },
    ] {
        let plain = encode_tile(tile, "c", &countries, &opts).unwrap();
        let got = encode_kept(tile, "c", &kept, &opts, None).unwrap();
        assert!(got == plain, "{opts:?}: the kept render differs");
    }
}

#[test]
fn a_feature_keeps_no_more_drawings_than_its_own_size() {
    // A line of three vertices across a hundred z10 tiles: each drawing is small, but all of
    // them together would outgrow the feature many times over.
    let line = TileFeature {
        id: None,
        geometry: geo::LineString::from(vec![(0.0, 45.0), (20.0, 45.5), (40.0, 45.0)]).into(),
        properties: serde_json::Map::new(),
    };
    let kept = keep(std::slice::from_ref(&line));
    let opts = MvtOptions::default();
    let row = TileId::from_lon_lat(0.0, 45.0, 10).unwrap();
    let mut drawn = 0;
    for x in row.x()..row.x() + 114 {
        for y in row.y().saturating_sub(2)..row.y() + 1 {
            let t = TileId::new(10, x, y).unwrap();
            let plain = encode_tile(t, "l", std::slice::from_ref(&line), &opts).unwrap();
            drawn += usize::from(plain.features > 0);
            for _ in 0..2 {
                let got = encode_kept(t, "l", &kept, &opts, None).unwrap();
                assert!(got == plain, "tile {t}: the kept render differs");
            }
            let k = &kept[0];
            assert!(
                k.drawing_bytes() <= k.approx_bytes() / 2,
                "{} bytes of drawings for a feature charged {}",
                k.drawing_bytes(),
                k.approx_bytes()
            );
        }
    }
    assert!(drawn >= 100, "the line crossed only {drawn} tiles");
    assert!(kept[0].drawing_bytes() > 0, "nothing was kept");
}

#[test]
fn a_state_with_the_same_geometry_keeps_the_drawings() {
    let dir = common::data_dir();
    let countries = common::load_features(&dir, "polygons/world_countries_50m.geojson.zst");
    let opts = MvtOptions::default();
    let tile = TileId::new(3, 4, 2).unwrap();
    let mut near = common::near_tile(&countries, tile);
    let kept = keep(&near);
    encode_kept(tile, "c", &kept, &opts, None).unwrap();
    let i = near
        .iter()
        .position(|f| f.properties.get("name").and_then(|n| n.as_str()) == Some("France"))
        .expect("France");
    let drawn = kept[i].drawing_bytes();
    assert!(drawn > 0);

    // A property edit: the next state has the drawings already, and renders as a plain one.
    near[i]
        .properties
        .insert("name".into(), serde_json::json!("République française"));
    let renamed = kept[i].successor(near[i].clone());
    assert_eq!(renamed.drawing_bytes(), drawn, "the drawings came along");
    let mut now = kept.clone();
    now[i] = Arc::new(renamed);
    let got = encode_kept(tile, "c", &now, &opts, None).unwrap();
    assert!(
        got == encode_tile(tile, "c", &near, &opts).unwrap(),
        "renamed"
    );
    let name = "République française".as_bytes();
    assert!(got.bytes.windows(name.len()).any(|w| w == name));

    // A geometry edit: the next state starts without drawings, and is drawn where it is now.
    let moved = common::single_feature_edits(&near, tile, near.len())
        .into_iter()
        .find(|(kind, edited)| *kind != "change property" && edited[i] != near[i])
        .map(|(_, edited)| edited)
        .expect("a geometry edit of France");
    let reshaped = now[i].successor(moved[i].clone());
    assert_eq!(reshaped.drawing_bytes(), 0, "other geometry, no drawings");
    now[i] = Arc::new(reshaped);
    let got = encode_kept(tile, "c", &now, &opts, None).unwrap();
    assert!(
        got == encode_tile(tile, "c", &moved, &opts).unwrap(),
        "moved"
    );
}
