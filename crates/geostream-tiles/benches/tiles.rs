//! Tile benchmarks on real data: `cargo bench -p geostream-tiles --bench tiles`.
//!
//! A plain binary (harness = false) rather than criterion: it prints the few
//! figures the design targets talk about (MVT encode time, delta throughput,
//! delta-vs-full savings) and needs no extra dependency. Not part of
//! `cargo test`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use geostream_tiles::delta;
use geostream_tiles::{
    KeptFeature, LonLatBbox, MvtOptions, TileCache, TileFeature, TileId, TilesNear, encode_kept,
    encode_tile, encode_tile_like,
};

/// Median time of one call of `f`, over batches run for about `budget`.
fn time<R>(budget: Duration, mut f: impl FnMut() -> R) -> Duration {
    let start = Instant::now();
    black_box(f());
    let once = start.elapsed().max(Duration::from_nanos(50));
    let per_batch = ((budget.as_secs_f64() / 20.0 / once.as_secs_f64()) as u32).max(1);
    let mut samples = Vec::new();
    let begin = Instant::now();
    while samples.len() < 5 || begin.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..per_batch {
            black_box(f());
        }
        samples.push(t.elapsed() / per_batch);
        if samples.len() >= 200 {
            break;
        }
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn densest_tile(features: &[TileFeature], z: u8) -> Option<(TileId, usize)> {
    let mut counts: HashMap<TileId, usize> = HashMap::new();
    for f in features {
        if let geo::Geometry::Point(p) = f.geometry
            && let Ok(t) = TileId::from_lon_lat(p.x(), p.y(), z)
        {
            *counts.entry(t).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(t, n)| (*n, std::cmp::Reverse(*t)))
}

fn main() {
    let dir = common::data_dir();
    let budget = Duration::from_millis(1500);
    let opts = MvtOptions::default();
    let countries = common::load_features(&dir, "polygons/world_countries_110m.geojson");
    let cities = common::load_features(&dir, "points/geonames_cities15000.geojson.zst");
    let lines = common::load_features(&dir, "lines/osm_helsinki_highway_railway.geojson.zst");

    println!("== MVT encode (extent 4096, buffer 64, simplify on) ==");
    let (dense, dense_n) = densest_tile(&cities, 8).expect("cities");
    let cases: Vec<(String, TileId, &[TileFeature])> = vec![
        (
            "world countries z4 4/8/5, all 177 as input".into(),
            TileId::new(4, 8, 5).unwrap(),
            &countries,
        ),
        (
            "world countries z0, all 177".into(),
            TileId::new(0, 0, 0).unwrap(),
            &countries,
        ),
        (
            format!("densest z8 city tile {dense} ({dense_n} cities), all 34,006 as input"),
            dense,
            &cities,
        ),
        (
            "cities z4 4/8/5 (Europe), all 34,006 as input".into(),
            TileId::new(4, 8, 5).unwrap(),
            &cities,
        ),
        (
            "Helsinki roads z14, all 2,952 as input".into(),
            TileId::from_lon_lat(24.945, 60.17, 14).unwrap(),
            &lines,
        ),
    ];
    for (label, tile, feats) in &cases {
        let enc = encode_tile(*tile, "layer", feats, &opts).unwrap();
        let t = time(budget, || {
            encode_tile(*tile, "layer", feats, &opts).unwrap()
        });
        println!(
            "{label}: {:>8.3} ms, {} features, {} bytes",
            t.as_secs_f64() * 1e3,
            enc.features,
            enc.bytes.len()
        );
    }
    // The same dense tile when the caller pre-filters by bbox (as a spatial
    // index would).
    let near = common::near_tile(&cities, dense);
    let t = time(budget, || {
        encode_tile(dense, "layer", &near, &opts).unwrap()
    });
    println!(
        "densest z8 city tile, {} pre-filtered features as input: {:.3} ms",
        near.len(),
        t.as_secs_f64() * 1e3
    );

    println!("\n== re-rendering after an edit: every feature drawn again, or kept drawings ==");
    // A server re-renders a tile after each edit under it; kept features are drawn in that
    // tile once, so a re-render draws only the edited one (here: none, the bound).
    let countries_50m = common::load_features(&dir, "polygons/world_countries_50m.geojson.zst");
    for tile in [TileId::new(3, 4, 2).unwrap(), TileId::new(2, 2, 1).unwrap()] {
        let near = common::near_tile(&countries_50m, tile);
        let kept: Vec<KeptFeature> = near.iter().cloned().map(KeptFeature::new).collect();
        let previous = encode_tile(tile, "layer", &near, &opts).unwrap().bytes;
        let plain = time(budget, || {
            encode_tile_like(tile, "layer", &near, &opts, &previous).unwrap()
        });
        let again = time(budget, || {
            encode_kept(tile, "layer", &kept, &opts, Some(&previous)).unwrap()
        });
        println!(
            "world countries 50m {tile} ({} features): drawn afresh {:.3} ms, kept drawings {:.3} ms ({:.1}x)",
            near.len(),
            plain.as_secs_f64() * 1e3,
            again.as_secs_f64() * 1e3,
            plain.as_secs_f64() / again.as_secs_f64()
        );
    }

    println!("\n== single-feature edits: delta vs full tile ==");
    let edit_tiles: Vec<(&str, TileId, Vec<TileFeature>)> = vec![
        (
            "countries z2 2/2/1",
            TileId::new(2, 2, 1).unwrap(),
            common::near_tile(&countries, TileId::new(2, 2, 1).unwrap()),
        ),
        (
            "countries z4 4/8/5",
            TileId::new(4, 8, 5).unwrap(),
            common::near_tile(&countries, TileId::new(4, 8, 5).unwrap()),
        ),
        (
            "cities z4 4/8/5",
            TileId::new(4, 8, 5).unwrap(),
            common::near_tile(&cities, TileId::new(4, 8, 5).unwrap()),
        ),
        ("cities densest z8", dense, near.clone()),
        (
            "helsinki z15",
            TileId::from_lon_lat(24.94, 60.17, 15).unwrap(),
            common::near_tile(&lines, TileId::from_lon_lat(24.94, 60.17, 15).unwrap()),
        ),
    ];
    let (mut all, mut all_like) = (Vec::new(), Vec::new());
    let mut pairs = Vec::new();
    for (label, tile, feats) in &edit_tiles {
        let base = encode_tile(*tile, "layer", feats, &opts).unwrap().bytes;
        let (mut ratios, mut ratios_like) = (Vec::new(), Vec::new());
        let mut worst = (0usize, 0usize);
        for (_, edited) in common::single_feature_edits(feats, *tile, 10) {
            let target = encode_tile(*tile, "layer", &edited, &opts).unwrap().bytes;
            let d = delta::encode(&base, &target);
            assert_eq!(delta::apply(&base, &d, target.len()).unwrap(), target);
            ratios.push(d.len() as f64 / target.len() as f64);
            let like = encode_tile_like(*tile, "layer", &edited, &opts, &base)
                .unwrap()
                .bytes;
            let dl = delta::encode(&base, &like);
            assert_eq!(delta::apply(&base, &dl, like.len()).unwrap(), like);
            ratios_like.push(dl.len() as f64 / like.len() as f64);
            worst = (worst.0.max(d.len()), worst.1.max(dl.len()));
            pairs.push((base.clone(), like));
        }
        ratios.sort_by(f64::total_cmp);
        ratios_like.sort_by(f64::total_cmp);
        println!(
            "{label}: full {} B, {} edits, median delta {:.2}% / {:.2}% (encode_tile / encode_tile_like), worst {} B / {} B",
            base.len(),
            ratios.len(),
            ratios[ratios.len() / 2] * 100.0,
            ratios_like[ratios_like.len() / 2] * 100.0,
            worst.0,
            worst.1
        );
        all.extend(ratios);
        all_like.extend(ratios_like);
    }
    all.sort_by(f64::total_cmp);
    all_like.sort_by(f64::total_cmp);
    for (name, v) in [("encode_tile", &all), ("encode_tile_like", &all_like)] {
        println!(
            "all {} edits, {name}: median delta {:.2}% of the full tile (saving {:.2}%), 90th percentile {:.2}%, max {:.2}%",
            v.len(),
            v[v.len() / 2] * 100.0,
            100.0 - v[v.len() / 2] * 100.0,
            v[v.len() * 9 / 10] * 100.0,
            v[v.len() - 1] * 100.0
        );
    }

    println!("\n== a change against a large tile cache: the tiles near it, or all of them ==");
    // Every tile of zooms 0 to 8 cached (87,381 tiles), and a moving point's change: what the
    // server does per change of a layer, looked up near the change or scanned (the world box
    // reaches every tile, as the scan before TilesNear did).
    let cache = TileCache::new(1 << 30, 0);
    let mut cached = 0;
    for z in 0..=8u8 {
        for x in 0..1u32 << z {
            for y in 0..1u32 << z {
                cache
                    .insert("l", TileId::new(z, x, y).unwrap(), 1, bytes::Bytes::new())
                    .unwrap();
                cached += 1;
            }
        }
    }
    let point = [LonLatBbox::new(24.94, 60.17, 24.94, 60.17).unwrap()];
    let world = [LonLatBbox::world()];
    // Version 0: nothing is older, so nothing is invalidated and every call does the same work.
    for (label, boxes) in [("near the change", &point[..]), ("every tile", &world[..])] {
        let near = TilesNear { boxes, margin: 1 };
        let t = time(budget, || cache.invalidate_older("l", 0, &near, |_| false));
        println!(
            "{cached} cached tiles, {label}: {:.3} µs per change",
            t.as_secs_f64() * 1e6
        );
    }

    println!("\n== delta throughput ==");
    // Pairs of real tile versions around 50 KB and larger.
    let mut sized: Vec<&(Vec<u8>, Vec<u8>)> =
        pairs.iter().filter(|(b, _)| b.len() >= 30_000).collect();
    sized.sort_by_key(|(b, _)| b.len());
    sized.dedup_by_key(|(b, _)| b.len());
    for (base, target) in sized {
        let d = delta::encode(base, target);
        let te = time(budget, || delta::encode(base, target));
        let ta = time(budget, || delta::apply(base, &d, target.len()).unwrap());
        let mb = target.len() as f64 / 1e6;
        println!(
            "{} B tile: encode {:.3} ms ({:.0} MB/s), apply {:.3} ms ({:.0} MB/s), delta {} B",
            target.len(),
            te.as_secs_f64() * 1e3,
            mb / te.as_secs_f64(),
            ta.as_secs_f64() * 1e3,
            mb / ta.as_secs_f64(),
            d.len()
        );
    }
    // Worst case for the encoder: unrelated 50 KB inputs (JPEG tiles).
    let mb =
        geostream_tiles::MbTiles::open(dir.join("tiles/bluemarble_world_z0-4.mbtiles")).unwrap();
    use geostream_tiles::TileArchive;
    let a = mb.get(3, 4, 2).unwrap().unwrap();
    let b = mb.get(3, 5, 2).unwrap().unwrap();
    let d = delta::encode(&a, &b);
    let te = time(budget, || delta::encode(&a, &b));
    let ta = time(budget, || delta::apply(&a, &d, b.len()).unwrap());
    println!(
        "unrelated JPEG tiles {} -> {} B: encode {:.3} ms ({:.0} MB/s), apply {:.3} ms, delta {} B",
        a.len(),
        b.len(),
        te.as_secs_f64() * 1e3,
        b.len() as f64 / 1e6 / te.as_secs_f64(),
        ta.as_secs_f64() * 1e3,
        d.len()
    );
}
