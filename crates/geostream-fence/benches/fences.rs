//! Changes evaluated per second against many fences on one layer.
//!
//! `cargo bench -p geostream-fence --bench fences` replays the vendored AIS day
//! (`datasets/trajectories/ais_us_coastal_2020-06-30.csv.zst`, 235,967 positions of 1,185
//! vessels) as changes of one layer through an engine holding `FENCES` fences (default
//! 100,000): boxes, circles and polygons of 100 m to 2 km placed around positions of the
//! track, a quarter reporting `cross` too, plus one roaming fence (500 m) when `ROAM=1`.
//! Prints changes/s, events/s and how many fences each change touched on average.

use std::collections::HashMap;
use std::io::Read;
use std::time::Instant;

use geostream_core::feature::{Change, ChangeOp, Feature, FeatureType, Geometry};
use geostream_fence::{Detect, Engine, Fence, FenceSpec};
use serde_json::{Map, json};

fn track() -> Vec<(String, f64, f64, u64)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../datasets/trajectories/ais_us_coastal_2020-06-30.csv.zst"
    );
    let mut s = String::new();
    zstd::Decoder::new(std::fs::File::open(path).expect("the vendored AIS day"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    let mut out = Vec::new();
    for (i, line) in s.lines().enumerate().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        if c.len() < 4 {
            continue;
        }
        let (Ok(x), Ok(y)) = (c[2].parse::<f64>(), c[3].parse::<f64>()) else {
            continue;
        };
        out.push((c[1].to_owned(), x, y, i as u64));
    }
    out
}

/// A small deterministic generator (xorshift), so every run places the same fences.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n_fences = env("FENCES", 100_000);
    let roam = env("ROAM", 0) == 1;
    let t = track();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut engine = Engine::new();
    engine.load("ships", 0, []);
    let started = Instant::now();
    for i in 0..n_fences {
        let (_, x, y, _) = &t[(rng.next() * t.len() as f64) as usize];
        // Up to ~5 km away from a track position, 100 m to 2 km across.
        let cx = x + (rng.next() - 0.5) * 0.1;
        let cy = y + (rng.next() - 0.5) * 0.1;
        let r_m = 100.0 + rng.next() * 1900.0;
        let r = r_m / 111_000.0;
        let area = match i % 3 {
            0 => json!({"bbox": [cx - r, cy - r, cx + r, cy + r]}),
            1 => json!({"circle": {"center": [cx, cy], "radius_m": r_m}}),
            _ => json!({"type": "Polygon", "coordinates": [[
                [cx - r, cy], [cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]]]}),
        };
        let detect = if i % 4 == 0 {
            json!(["enter", "exit", "inside", "cross"])
        } else {
            json!(["enter", "exit"])
        };
        let spec: FenceSpec = serde_json::from_value(
            json!({"name": format!("f{i}"), "layer": "ships", "area": area, "detect": detect}),
        )
        .unwrap();
        engine.add(Fence::compile(spec.into_record(0, 0).unwrap()).unwrap());
    }
    if roam {
        let spec: FenceSpec = serde_json::from_value(json!({"name": "roam", "layer": "ships",
            "roam": {"distance_m": 500}, "detect": ["nearby", "faraway"]}))
        .unwrap();
        engine.add(Fence::compile(spec.into_record(0, 0).unwrap()).unwrap());
    }
    let build = started.elapsed();
    // The changes, made before timing.
    let mut current: HashMap<String, Feature> = HashMap::new();
    let mut changes = Vec::with_capacity(t.len());
    for (seq, (id, x, y, time)) in t.iter().enumerate() {
        let old = current.get(id).cloned();
        let version = old.as_ref().map_or(1, |o| o.version + 1);
        let new = Feature {
            kind: FeatureType::Feature,
            id: id.clone(),
            geometry: Some(Geometry::new(geojson::Value::Point(vec![*x, *y]))),
            properties: Map::new(),
            version,
            updated: String::new(),
        };
        current.insert(id.clone(), new.clone());
        changes.push(Change {
            layer: "ships".into(),
            seq: seq as u64 + 1,
            op: if old.is_some() {
                ChangeOp::Update
            } else {
                ChangeOp::Insert
            },
            id: id.clone(),
            version,
            old_bbox: None,
            new_bbox: None,
            old,
            new: Some(new),
            changed: vec![],
            geometry_changed: true,
            author: None,
            op_id: None,
            time_ms: *time,
        });
    }
    let mut out = Vec::new();
    let mut events = 0usize;
    let mut all: Vec<(u32, u32, Detect)> = Vec::new();
    let mut names: HashMap<String, u32> = HashMap::new();
    // Only the engine's time is counted, not the bookkeeping for the order check.
    let mut busy = std::time::Duration::ZERO;
    for c in &changes {
        let t = Instant::now();
        engine.apply(c, &mut out);
        busy += t.elapsed();
        events += out.len();
        // Kept compactly (fence, feature, kind) for the order check after timing.
        for e in out.drain(..) {
            let n = names.len() as u32;
            let f = *names.entry(e.fence).or_insert(n);
            let n = names.len() as u32;
            let id = *names.entry(e.id).or_insert(n);
            all.push((f, id, e.kind));
        }
    }
    let secs = busy.as_secs_f64();
    // Each feature's events per fence form a logical sequence: enter, inside..., exit, and
    // cross only while outside.
    let mut inside: HashMap<(u32, u32), bool> = HashMap::new();
    for (f, id, kind) in &all {
        let was = inside.entry((*f, *id)).or_insert(false);
        let ok = match kind {
            Detect::Enter => !*was,
            Detect::Inside | Detect::Exit => *was,
            Detect::Cross => !*was,
            Detect::Nearby | Detect::Faraway => true,
        };
        assert!(ok, "{kind:?} out of order");
        match kind {
            Detect::Enter => *was = true,
            Detect::Exit => *was = false,
            _ => {}
        }
    }
    println!(
        "fences: {n_fences}{} (indexed in {:.2} s)\nchanges: {} in {:.2} s = {:.0} changes/s\nevents: {} ({:.3} per change, {:.0} events/s); every feature's events in logical order",
        if roam { " + 1 roaming (500 m)" } else { "" },
        build.as_secs_f64(),
        changes.len(),
        secs,
        changes.len() as f64 / secs,
        events,
        events as f64 / changes.len() as f64,
        events as f64 / secs,
    );
}
