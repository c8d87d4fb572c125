//! Evaluations per second of a compiled attribute filter, next to cql2's own `matches` on
//! the same input. Run with `cargo bench -p geostream-filter --bench attribute`.
//!
//! A plain binary rather than criterion: the figure wanted is a rate on one core, printed
//! side by side, and this keeps the dependency tree small.

use std::hint::black_box;
use std::time::{Duration, Instant};

use geostream_filter::{AttributeFilter, FeatureRef, Limits};
use serde_json::{Map, Value, json};

/// Runs `f` in batches until `budget` has passed; returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    let mut hits = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1000 {
            hits += u64::from(black_box(f()));
        }
        calls += 1000;
    }
    black_box(hits);
    calls as f64 / start.elapsed().as_secs_f64()
}

fn props(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000),
    );
    let cases = [
        (
            "speed > 10 AND name LIKE 'bus%'",
            json!({"speed": 42.5, "name": "bus 12", "heading": 270, "operator": "metro", "id": "v-1"}),
        ),
        (
            "speed > 10 AND name LIKE 'bus%'",
            json!({"speed": 4.0, "name": "bus 12", "heading": 270, "operator": "metro", "id": "v-1"}),
        ),
        (
            "CASEI(operator) IN ('metro', 'city') AND heading BETWEEN 180 AND 360",
            json!({"speed": 42.5, "name": "bus 12", "heading": 270, "operator": "Metro", "id": "v-1"}),
        ),
        (
            "T_INTERSECTS(seen, INTERVAL('2024-01-01T00:00:00Z', '2024-12-31T23:59:59Z'))",
            json!({"seen": "2024-06-01T12:00:00.250Z"}),
        ),
    ];
    println!(
        "{:<78} {:>14} {:>14} {:>8}",
        "filter", "compiled/s", "cql2 matches/s", "ratio"
    );
    for (text, p) in cases {
        let filter = AttributeFilter::parse_text(text, &Limits::default()).expect("filter parses");
        let props = props(p);
        let feature = FeatureRef::new(&props);
        let ours = rate(budget, || filter.matches(black_box(&feature)));
        // cql2 reads properties from a feature-shaped document and consumes the expression,
        // so each call clones it: that is the cost of using cql2 on the hot path.
        let expr = filter.expr().clone();
        let doc = json!({ "properties": props });
        let theirs = rate(budget, || {
            expr.clone().matches(Some(black_box(&doc))).unwrap_or(false)
        });
        println!(
            "{text:<78} {ours:>14.0} {theirs:>14.0} {:>7.0}x",
            ours / theirs
        );
    }
}
