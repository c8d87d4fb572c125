//! A real AIS trajectory replayed through a layer while subscribers with different
//! viewports, time windows and CQL2 filters listen. What each receives is compared with a
//! brute-force oracle written here from the file: every enter / update / exit, in order,
//! nothing extra and nothing missing. Also: a viewport move, and a resume mid-stream.
//!
//! Reads the vendored AIS data in `datasets/`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{TestServer, Ws, datasets};
use geostream_core::codec::Encoding;
use geostream_server::remote::Remote;
use geostream_server::replay::{TrackPoint, read_track, replay};
use serde_json::{Value, json};

const TRACK: &str = "trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst";

/// One event as a subscriber sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    seq: u64,
    kind: String,
    id: String,
}

/// What a subscriber's filter selects, evaluated by hand.
type Pred = Box<dyn Fn(&TrackPoint) -> bool + Send + Sync>;

fn in_bbox(p: &TrackPoint, b: [f64; 4]) -> bool {
    p.lon >= b[0] && p.lon <= b[2] && p.lat >= b[1] && p.lat <= b[3]
}

fn num(p: &TrackPoint, k: &str) -> Option<f64> {
    p.properties.get(k).and_then(Value::as_f64)
}

/// The events a subscriber with `pred` must see, from seq `from` on (its view as of `from`
/// built silently from the changes before).
fn oracle(points: &[TrackPoint], pred: &Pred, from: u64) -> Vec<Event> {
    let mut inside: HashMap<&str, bool> = HashMap::new();
    let mut out = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let seq = i as u64 + 1;
        let was = inside.get(p.id.as_str()).copied().unwrap_or(false);
        let is = pred(p);
        inside.insert(&p.id, is);
        let kind = match (was, is) {
            (false, true) => "enter",
            (true, true) => "update",
            (true, false) => "exit",
            (false, false) => continue,
        };
        if seq > from {
            out.push(Event {
                seq,
                kind: kind.into(),
                id: p.id.clone(),
            });
        }
    }
    out
}

/// The objects inside `pred` after all points.
fn final_view(points: &[TrackPoint], pred: &Pred) -> BTreeSet<String> {
    let mut last: HashMap<&str, &TrackPoint> = HashMap::new();
    for p in points {
        last.insert(&p.id, p);
    }
    last.values()
        .filter(|p| pred(p))
        .map(|p| p.id.clone())
        .collect()
}

fn event(p: &Value) -> Event {
    Event {
        seq: p["seq"].as_u64().unwrap(),
        kind: p["kind"].as_str().unwrap().to_string(),
        id: p["id"].as_str().unwrap().to_string(),
    }
}

/// Reads `n` feature pushes, then checks nothing more comes.
async fn collect(ws: &mut Ws, n: usize) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(event(&ws.push_of("feature").await));
    }
    ws.expect_silence(Duration::from_millis(300)).await;
    got
}

async fn subscribe(ws: &mut Ws, filter: Value) -> u64 {
    let mut params = json!({ "layer": "ships" });
    params
        .as_object_mut()
        .unwrap()
        .extend(filter.as_object().unwrap().clone());
    let r = ws.ok("layer.subscribe", params).await;
    let p = ws.push_of("snapshot").await;
    assert_eq!(p["last"], true, "an empty layer has a one-page snapshot");
    r["sub"].as_u64().unwrap()
}

const VIEW_A: [f64; 4] = [-74.10, 40.55, -73.95, 40.70];
const VIEW_A2: [f64; 4] = [-74.05, 40.60, -73.90, 40.80];

#[tokio::test]
async fn replayed_ais_track_matches_the_oracle_for_every_subscriber() {
    oracle_run(1).await;
}

/// The same with each layer's subscriptions split over shards (`layers.dispatch_shards`):
/// every subscriber still gets exactly the oracle's sequence.
#[tokio::test]
async fn the_same_with_the_layer_sharded() {
    oracle_run(3).await;
}

async fn oracle_run(shards: usize) {
    let data = datasets();
    let points = read_track(&data.join(TRACK)).unwrap();
    assert_eq!(points.len(), 8689, "row count from the manifest");

    // A large outbox: this test is about filter semantics, not backpressure (which would
    // rightly coalesce updates for a subscriber that falls behind).
    let srv = TestServer::start_with(|c| {
        c.limits.outbox_bytes = 256 << 20;
        c.layers.dispatch_shards = shards;
    })
    .await;
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({ "name": "ships", "last_writer_wins": true }),
        )
        .await
        .unwrap();

    let t_lo = geostream_filter::parse_datetime_ms("2020-06-30T00:10:00Z").unwrap() as u64;
    let t_hi = geostream_filter::parse_datetime_ms("2020-06-30T00:30:00Z").unwrap() as u64;
    let center = [-74.03, 40.65];
    let radius = 8000.0;
    let subscribers: Vec<(Value, Pred)> = vec![
        // A viewport.
        (
            json!({ "bbox": VIEW_A }),
            Box::new(|p: &TrackPoint| in_bbox(p, VIEW_A)),
        ),
        // A time window (over each report's `datetime`) within a wider box.
        (
            json!({ "bbox": [-74.2, 40.4, -73.7, 40.9], "datetime": "2020-06-30T00:10:00Z/2020-06-30T00:30:00Z" }),
            Box::new(move |p: &TrackPoint| {
                in_bbox(p, [-74.2, 40.4, -73.7, 40.9]) && p.time_ms >= t_lo && p.time_ms <= t_hi
            }),
        ),
        // A circle and a CQL2 filter on speed and vessel type.
        (
            json!({ "point": center, "radius": radius, "filter": "SOG > 5 AND VesselType IN (31, 52, 60)" }),
            Box::new(move |p: &TrackPoint| {
                haversine_m(center, [p.lon, p.lat]) <= radius
                    && num(p, "SOG").is_some_and(|s| s > 5.0)
                    && num(p, "VesselType").is_some_and(|t| [31.0, 52.0, 60.0].contains(&t))
            }),
        ),
    ];

    let mut tasks = Vec::new();
    for (i, (filter, pred)) in subscribers.into_iter().enumerate() {
        let expected = oracle(&points, &pred, 0);
        assert!(
            expected.len() > 50 && expected.iter().any(|e| e.kind == "exit"),
            "subscriber {i} sees a fair number of events, including exits ({} events)",
            expected.len()
        );
        let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
        let sub = subscribe(&mut ws, filter).await;
        tasks.push(tokio::spawn(async move {
            let got = collect(&mut ws, expected.len()).await;
            (i, sub, ws, got, expected, pred)
        }));
    }

    let report = replay(&remote, "ships", &points, 0.0, |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.updates, points.len() as u64);

    for t in tasks {
        let (i, sub, mut ws, got, expected, pred) = t.await.unwrap();
        assert_eq!(got.len(), expected.len(), "subscriber {i}: event count");
        for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "subscriber {i}: event {k} differs from the oracle");
        }
        if i == 0 {
            // Moving the viewport: exactly the difference arrives.
            let before = final_view(&points, &pred);
            let moved: Pred = Box::new(|p: &TrackPoint| in_bbox(p, VIEW_A2));
            let after = final_view(&points, &moved);
            let r = ws
                .ok(
                    "subscription.update",
                    json!({ "sub": sub, "bbox": VIEW_A2 }),
                )
                .await;
            let entered: BTreeSet<String> = after.difference(&before).cloned().collect();
            let exited: BTreeSet<String> = before.difference(&after).cloned().collect();
            assert!(
                !entered.is_empty() && !exited.is_empty(),
                "the move matters"
            );
            assert_eq!(r["entered"], entered.len(), "{r}");
            assert_eq!(r["exited"], exited.len(), "{r}");
            let mut got_in = BTreeSet::new();
            let mut got_out = BTreeSet::new();
            for _ in 0..entered.len() + exited.len() {
                let p = ws.push_of("feature").await;
                let id = p["id"].as_str().unwrap().to_string();
                match p["kind"].as_str().unwrap() {
                    "enter" => {
                        assert!(p["feature"]["geometry"].is_object(), "an enter is whole");
                        got_in.insert(id);
                    }
                    "exit" => {
                        got_out.insert(id);
                    }
                    k => panic!("unexpected {k} after a move"),
                }
            }
            assert_eq!((got_in, got_out), (entered, exited));
            ws.expect_silence(Duration::from_millis(300)).await;
        }
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn resume_mid_stream_misses_nothing_and_repeats_nothing() {
    let data = datasets();
    let points: Vec<TrackPoint> = read_track(&data.join(TRACK))
        .unwrap()
        .into_iter()
        .take(3000)
        .collect();
    let srv = TestServer::start_with(|c| c.limits.outbox_bytes = 256 << 20).await;
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({ "name": "ships", "last_writer_wins": true }),
        )
        .await
        .unwrap();
    let pred: Pred = Box::new(|p: &TrackPoint| in_bbox(p, VIEW_A));
    let expected = oracle(&points, &pred, 0);

    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    subscribe(&mut ws, json!({ "bbox": VIEW_A })).await;
    let url = srv.ws_url();
    let feeder = tokio::spawn(async move {
        replay(&remote, "ships", &points, 0.0, |_, _| {})
            .await
            .unwrap();
        remote
    });

    // Take a part, drop the connection while edits keep coming, reconnect with `since`.
    let first_part = expected.len() / 3;
    let mut got = Vec::new();
    while got.len() < first_part {
        got.push(event(&ws.push_of("feature").await));
    }
    let last = got.last().unwrap().seq;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = Ws::connect(&url, Encoding::Json).await;
    let r = ws
        .ok(
            "layer.subscribe",
            json!({ "layer": "ships", "bbox": VIEW_A, "since": last }),
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let _remote = feeder.await.unwrap();
    let resumed_at = got.len();
    while got.len() < expected.len() {
        got.push(event(&ws.push_of("feature").await));
    }
    if let Some(extra) = ws.try_push(Duration::from_millis(300)).await {
        let dup = got.iter().position(|e| *e == event(&extra.1));
        panic!(
            "an extra push after all expected ones: {extra:?} (same as received #{dup:?}; resumed at #{resumed_at} after seq {last}, replayed {})",
            r["replayed"]
        );
    }
    assert_eq!(got, expected);
    srv.shutdown().await;
}

/// `replayed` in the answer to `layer.subscribe` with `since` counts the `feature` pushes that
/// follow (the missed changes that concern the filter), not every change after `since`.
#[tokio::test]
async fn replayed_counts_the_pushes_that_follow() {
    let points: Vec<TrackPoint> = read_track(&datasets().join(TRACK))
        .unwrap()
        .into_iter()
        .take(3000)
        .collect();
    let srv = TestServer::start().await;
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({ "name": "ships", "last_writer_wins": true }),
        )
        .await
        .unwrap();
    replay(&remote, "ships", &points, 0.0, |_, _| {})
        .await
        .unwrap();
    let since = 1000u64;
    let pred: Pred = Box::new(|p: &TrackPoint| in_bbox(p, VIEW_A));
    let expected = oracle(&points, &pred, since);
    let missed = points.len() as u64 - since;
    assert!(
        !expected.is_empty() && (expected.len() as u64) < missed,
        "the view sees some of the missed changes, not all: {} of {missed}",
        expected.len()
    );
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let r = ws
        .ok(
            "layer.subscribe",
            json!({ "layer": "ships", "bbox": VIEW_A, "since": since }),
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["replayed"], expected.len() as u64, "{r}");
    assert_eq!(collect(&mut ws, expected.len()).await, expected);
    srv.shutdown().await;
}

/// Great-circle distance on the sphere used by the server (mean Earth radius), written
/// out here independently.
fn haversine_m(a: [f64; 2], b: [f64; 2]) -> f64 {
    let r = 6_371_008.8;
    let (la1, la2) = (a[1].to_radians(), b[1].to_radians());
    let dla = la2 - la1;
    let dlo = (b[0] - a[0]).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}
