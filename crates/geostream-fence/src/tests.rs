//! The engine's rules, one detection at a time.

use geostream_core::feature::{Change, ChangeOp, Feature, FeatureType, Geometry};
use serde_json::{Map, Value, json};

use crate::{Detect, Engine, Fence, FenceEvent, FenceSpec, Reason};

fn point(x: f64, y: f64) -> Geometry {
    Geometry::new(geojson::Value::Point(vec![x, y]))
}

fn square(x: f64, y: f64, r: f64) -> Geometry {
    Geometry::new(geojson::Value::Polygon(vec![vec![
        vec![x - r, y - r],
        vec![x + r, y - r],
        vec![x + r, y + r],
        vec![x - r, y + r],
        vec![x - r, y - r],
    ]]))
}

fn feature(id: &str, g: Option<Geometry>, props: Value, version: u64) -> Feature {
    Feature {
        kind: FeatureType::Feature,
        id: id.into(),
        geometry: g,
        properties: match props {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        version,
        updated: String::new(),
    }
}

/// Builds a layer's change log as a client would write it.
struct Log {
    layer: String,
    seq: u64,
    current: std::collections::HashMap<String, Feature>,
}

impl Log {
    fn new(layer: &str) -> Self {
        Log {
            layer: layer.into(),
            seq: 0,
            current: Default::default(),
        }
    }

    fn put(&mut self, id: &str, g: Option<Geometry>, props: Value) -> Change {
        let old = self.current.get(id).cloned();
        let version = old.as_ref().map_or(1, |o| o.version + 1);
        let new = feature(id, g, props, version);
        self.current.insert(id.into(), new.clone());
        self.change(id, old, Some(new), version)
    }

    fn at(&mut self, id: &str, x: f64, y: f64) -> Change {
        let props = self
            .current
            .get(id)
            .map_or(json!({}), |f| Value::Object(f.properties.clone()));
        self.put(id, Some(point(x, y)), props)
    }

    fn delete(&mut self, id: &str) -> Change {
        let old = self.current.remove(id);
        let version = old.as_ref().map_or(1, |o| o.version + 1);
        self.change(id, old, None, version)
    }

    fn change(&mut self, id: &str, old: Option<Feature>, new: Option<Feature>, v: u64) -> Change {
        self.seq += 1;
        Change {
            layer: self.layer.clone(),
            seq: self.seq,
            op: match (&old, &new) {
                (None, _) => ChangeOp::Insert,
                (_, None) => ChangeOp::Delete,
                _ => ChangeOp::Update,
            },
            id: id.into(),
            version: v,
            old_bbox: old.as_ref().and_then(Feature::bbox),
            new_bbox: new.as_ref().and_then(Feature::bbox),
            old,
            new,
            changed: vec![],
            geometry_changed: true,
            author: None,
            op_id: None,
            time_ms: 1_000 + self.seq,
        }
    }
}

fn fence(v: Value) -> Fence {
    let spec: FenceSpec = serde_json::from_value(v).unwrap();
    Fence::compile(spec.into_record(0, 0).unwrap()).unwrap()
}

fn engine(fences: Vec<Value>, layers: &[&str]) -> Engine {
    let mut e = Engine::new();
    for l in layers {
        e.load(l, 0, []);
    }
    for f in fences {
        e.add(fence(f));
    }
    e
}

fn run(e: &mut Engine, changes: &[Change]) -> Vec<FenceEvent> {
    let mut out = Vec::new();
    for c in changes {
        e.apply(c, &mut out);
    }
    out
}

fn kinds(events: &[FenceEvent]) -> Vec<(String, Detect, String)> {
    events
        .iter()
        .map(|e| (e.fence.clone(), e.kind, e.id.clone()))
        .collect()
}

#[test]
fn enter_inside_exit_and_cross_of_a_box() {
    let mut e = engine(
        vec![
            json!({"name": "box", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]},
            "detect": ["enter", "exit", "inside", "cross"]}),
        ],
        &["ships"],
    );
    let mut log = Log::new("ships");
    let changes = vec![
        log.at("a", -1.0, 0.5), // outside: nothing
        log.at("a", 0.5, 0.5),  // enter
        log.at("a", 0.6, 0.5),  // inside
        log.at("a", 2.0, 0.5),  // exit
        log.at("a", -1.0, 0.5), // cross (2 -> -1 passes through)
        log.at("a", -1.0, 2.0), // outside to outside, not through: nothing
        log.at("a", 0.5, 0.5),  // enter
        log.delete("a"),        // exit, deleted
    ];
    let ev = run(&mut e, &changes);
    let k: Vec<Detect> = ev.iter().map(|e| e.kind).collect();
    use Detect::*;
    assert_eq!(k, vec![Enter, Inside, Exit, Cross, Enter, Exit]);
    assert_eq!(ev[5].reason, Some(Reason::Deleted));
    assert_eq!(ev[0].key, "box:ships:2:0");
    assert_eq!(ev[3].seq, 5);
}

#[test]
fn the_filter_decides_what_counts_and_a_feature_that_stops_matching_exits() {
    let mut e = engine(
        vec![json!({"name": "tankers", "layer": "ships",
            "area": {"circle": {"center": [0, 0], "radius_m": 1000}}, "filter": "type = 80"})],
        &["ships"],
    );
    let mut log = Log::new("ships");
    let changes = vec![
        log.put("cargo", Some(point(0.0, 0.0)), json!({"type": 70})),
        log.put("t", Some(point(0.05, 0.0)), json!({"type": 80})), // ~5.5 km: outside
        log.put("t", Some(point(0.001, 0.0)), json!({"type": 80})), // enter
        log.put("t", Some(point(0.001, 0.0)), json!({"type": 70})), // exit, filter
    ];
    let ev = run(&mut e, &changes);
    assert_eq!(
        kinds(&ev),
        vec![
            ("tankers".into(), Detect::Enter, "t".into()),
            ("tankers".into(), Detect::Exit, "t".into())
        ]
    );
    assert_eq!(ev[1].reason, Some(Reason::Filter));
}

#[test]
fn roaming_reports_each_pair_once_when_it_meets_and_parts() {
    let mut e = engine(
        vec![
            json!({"name": "close", "layer": "ships", "roam": {"distance_m": 500},
            "detect": ["nearby", "faraway"]}),
        ],
        &["ships"],
    );
    let mut log = Log::new("ships");
    let changes = vec![
        log.at("a", 0.0, 0.0),
        log.at("b", 0.01, 0.0),     // 1.1 km: nothing
        log.at("b", 0.004, 0.0),    // 445 m: b nearby a
        log.at("b", 0.003, 0.0),    // still near: nothing
        log.at("a", -0.003, 0.0),   // 667 m: a faraway b
        log.at("c", -0.003, 0.001), // c nearby a (111 m)
        log.delete("a"),            // a faraway c, deleted
    ];
    let ev = run(&mut e, &changes);
    let got: Vec<(Detect, &str, &str)> = ev
        .iter()
        .map(|e| (e.kind, e.id.as_str(), e.other.as_deref().unwrap()))
        .collect();
    use Detect::*;
    assert_eq!(
        got,
        vec![
            (Nearby, "b", "a"),
            (Faraway, "a", "b"),
            (Nearby, "c", "a"),
            (Faraway, "a", "c")
        ]
    );
    assert!((ev[0].distance_m.unwrap() - 445.0).abs() < 5.0);
    assert_eq!(ev[3].reason, Some(Reason::Deleted));
}

#[test]
fn zones_come_from_a_polygon_layer_and_a_removed_zone_closes_its_features() {
    let mut e = Engine::new();
    let mut zones = Log::new("zones");
    let z1 = zones.put("z1", Some(square(0.0, 0.0, 1.0)), json!({}));
    let z2 = zones.put("z2", Some(square(0.5, 0.0, 1.0)), json!({}));
    e.load("zones", 2, [z1.new.unwrap(), z2.new.unwrap()]);
    e.load("ships", 0, []);
    e.add(fence(
        json!({"name": "ports", "layer": "ships", "zones": {"layer": "zones"}}),
    ));
    let mut ships = Log::new("ships");
    let mut out = Vec::new();
    e.apply(&ships.at("a", 0.2, 0.0), &mut out); // enters z1 and z2
    e.apply(&ships.at("a", -0.8, 0.0), &mut out); // leaves z2 only
    e.apply(&zones.delete("z1"), &mut out); // a exits z1: zone removed
    let got: Vec<(Detect, Option<&str>, Option<Reason>, &str)> = out
        .iter()
        .map(|e| (e.kind, e.zone.as_deref(), e.reason, e.key.as_str()))
        .collect();
    use Detect::*;
    assert_eq!(
        got,
        vec![
            (Enter, Some("z1"), None, "ports:ships:1:0"),
            (Enter, Some("z2"), None, "ports:ships:1:1"),
            (Exit, Some("z2"), None, "ports:ships:2:0"),
            (
                Exit,
                Some("z1"),
                Some(Reason::ZoneRemoved),
                "ports:zones:3:0"
            ),
        ]
    );
    assert_eq!(out[3].cause.as_deref(), Some("zones"));
}

#[test]
fn closing_a_fence_exits_every_feature_inside() {
    let mut e = engine(
        vec![json!({"name": "box", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}})],
        &["ships"],
    );
    let mut log = Log::new("ships");
    run(
        &mut e,
        &[
            log.at("b", 0.5, 0.5),
            log.at("a", 0.2, 0.2),
            log.at("c", 3.0, 3.0),
        ],
    );
    let ev = e.closing_events("box", 99);
    let got: Vec<(&str, &str)> = ev.iter().map(|e| (e.id.as_str(), e.key.as_str())).collect();
    assert_eq!(got, vec![("a", "box:closed:0"), ("b", "box:closed:1")]);
    assert!(
        ev.iter()
            .all(|e| e.reason == Some(Reason::FenceClosed) && e.seq == 3)
    );
    assert!(e.remove("box").is_some());
    assert!(run(&mut e, &[log.at("a", 0.3, 0.3)]).is_empty());
}

#[test]
fn a_fence_reports_only_changes_after_its_creation_and_after_active_from() {
    let mut e = Engine::new();
    e.load("ships", 0, []);
    let spec: FenceSpec = serde_json::from_value(json!({"name": "late", "layer": "ships",
        "area": {"bbox": [0, 0, 1, 1]}, "active_from": "1970-01-01T00:00:01.003Z"}))
    .unwrap();
    e.add(Fence::compile(spec.into_record(0, 1).unwrap()).unwrap());
    let mut log = Log::new("ships");
    // seq 1 is before the fence (start_seq 1); seq 2 at 1002 ms is before active_from.
    let ev = run(
        &mut e,
        &[
            log.at("a", 0.5, 0.5),
            log.at("b", 0.5, 0.5),
            log.at("c", 0.5, 0.5),
        ],
    );
    assert_eq!(kinds(&ev), vec![("late".into(), Detect::Enter, "c".into())]);
}

#[test]
fn rewinding_and_replaying_gives_the_same_events() {
    let spec = json!({"name": "close", "layer": "ships", "roam": {"distance_m": 800},
        "detect": ["nearby", "faraway"]});
    let mut log = Log::new("ships");
    let mut changes = Vec::new();
    for i in 0..200u32 {
        let id = format!("s{}", i % 7);
        let x = ((i * 37) % 100) as f64 * 0.0002;
        let y = ((i * 53) % 100) as f64 * 0.0002;
        changes.push(log.at(&id, x, y));
    }
    let mut a = engine(vec![spec.clone()], &["ships"]);
    let all = run(&mut a, &changes);
    assert!(all.len() > 20, "{}", all.len());
    // A second engine loads the layer as it is at the end, rewinds 120 changes, replays.
    let mut b = Engine::new();
    b.load("ships", 200, log.current.values().cloned());
    b.add(fence(spec));
    for c in changes[80..].iter().rev() {
        b.unapply(c);
    }
    assert_eq!(b.seq("ships"), Some(80));
    let tail = run(&mut b, &changes[80..]);
    let expected: Vec<&FenceEvent> = all.iter().filter(|e| e.seq > 80).collect();
    assert_eq!(tail.iter().collect::<Vec<_>>(), expected);
}

/// Every fence definition and event in docs/GEOFENCES.md is one the code accepts.
#[test]
fn the_guides_definitions_and_events_are_valid() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/GEOFENCES.md"
    ))
    .unwrap();
    let mut blocks: Vec<&str> = doc
        .split("```json\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .collect();
    // The definition sent with curl in the walkthrough.
    for b in doc.split("<<'EOF'\n").skip(1) {
        blocks.push(&b[..b.find("\nEOF").unwrap()]);
    }
    let (mut fences, mut events) = (0, 0);
    for b in blocks {
        let v: Value = serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {b}"));
        if v.get("kind").is_some() {
            serde_json::from_value::<FenceEvent>(v).unwrap_or_else(|e| panic!("{e}: {b}"));
            events += 1;
        } else {
            let s: FenceSpec = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}: {b}"));
            s.check().unwrap_or_else(|e| panic!("{e}: {b}"));
            fences += 1;
        }
    }
    assert!(
        fences >= 4 && events >= 1,
        "{fences} fences, {events} events"
    );
}

#[test]
fn roaming_between_two_layers_reports_pairs_from_either_side() {
    let mut e = engine(
        vec![
            json!({"name": "escort", "layer": "tugs", "roam": {"layer": "tankers", "distance_m": 500},
            "detect": ["nearby", "faraway"], "filter": "busy = false"}),
        ],
        &["tugs", "tankers"],
    );
    let (mut tugs, mut tankers) = (Log::new("tugs"), Log::new("tankers"));
    let mut out = Vec::new();
    e.apply(&tankers.at("t1", 0.0, 0.0), &mut out);
    e.apply(
        &tugs.put("g1", Some(point(0.01, 0.0)), json!({"busy": false})),
        &mut out,
    );
    // The tug comes near the tanker: an event about the tug.
    e.apply(&tugs.at("g1", 0.003, 0.0), &mut out);
    // The tanker moves away: an event about the tanker, the tug as the other.
    e.apply(&tankers.at("t1", -0.01, 0.0), &mut out);
    // A busy tug (the filter is on the fence's layer) never pairs.
    e.apply(
        &tugs.put("g2", Some(point(-0.01, 0.001)), json!({"busy": true})),
        &mut out,
    );
    let got: Vec<(Detect, &str, &str, &str)> = out
        .iter()
        .map(|e| {
            (
                e.kind,
                e.layer.as_str(),
                e.id.as_str(),
                e.other.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Detect::Nearby, "tugs", "g1", "t1"),
            (Detect::Faraway, "tankers", "t1", "g1"),
        ]
    );
}
