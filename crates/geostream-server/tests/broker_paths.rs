//! The two ways a change reaches the hub give the same pushes: on the embedded defaults the
//! in-process broker hands the change to the hub as it is, while with `broker.type = "nats"`
//! it is encoded, sent through a real NATS server and decoded on the way back. The same
//! real AIS replay, then patches and deletes, go through one node of each kind, watched by
//! the same subscribers (a viewport, a time window, a circle with a CQL2 filter, an attribute
//! filter alone); every push each subscriber receives must be the same on both, field for
//! field, in the same order, except the server's clock in `updated`.
//!
//! Needs NATS with JetStream (`GEOSTREAM_TEST_NATS_URL`, default `nats://127.0.0.1:4222`);
//! `scripts/test.sh` starts it. If it is unreachable the test fails saying so. The run uses a
//! subject prefix of its own, removed at the end.

mod common;

use std::time::Duration;

use common::backends::nats_url;
use common::{TestServer, Ws, datasets};
use geostream_core::codec::Encoding;
use geostream_server::config::BrokerConfig;
use geostream_server::remote::Remote;
use geostream_server::replay::{TrackPoint, read_track, replay};
use serde_json::{Value, json};

const TRACK: &str = "trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst";
const POINTS: usize = 2500;

/// The subscribers' filters (each on a connection of its own; the last in MessagePack).
fn filters() -> Vec<Value> {
    vec![
        json!({ "bbox": [-74.10, 40.55, -73.95, 40.70] }),
        json!({ "bbox": [-74.2, 40.4, -73.7, 40.9],
                "datetime": "2020-06-30T00:05:00Z/2020-06-30T00:20:00Z" }),
        json!({ "point": [-74.03, 40.65], "radius": 8000.0,
                "filter": "SOG > 5 AND VesselType IN (31, 52, 60)" }),
        json!({ "filter": "SOG > 12" }),
    ]
}

/// A push with the server's clock taken out (`updated` is the time of the write on each
/// node, the one field that may differ).
fn normalized(mut push: Value) -> Value {
    if let Some(f) = push.get_mut("feature").and_then(Value::as_object_mut) {
        f.remove("updated");
    }
    push
}

/// Everything a subscriber receives, in order.
struct Watcher {
    ws: Ws,
    got: Vec<Value>,
}

impl Watcher {
    async fn start(srv: &TestServer, i: usize, filter: &Value) -> Watcher {
        let enc = if i == 3 {
            Encoding::Msgpack
        } else {
            Encoding::Json
        };
        let mut ws = Ws::connect(&srv.ws_url(), enc).await;
        let mut params = json!({ "layer": "ships" });
        params
            .as_object_mut()
            .unwrap()
            .extend(filter.as_object().unwrap().clone());
        ws.ok("layer.subscribe", params).await;
        let snap = ws.push_of("snapshot").await;
        assert_eq!(snap["last"], true, "an empty layer has a one-page snapshot");
        Watcher {
            ws,
            got: Vec::new(),
        }
    }

    /// Reads feature pushes until `n` arrived (or, with `None`, until 1 s passes without one).
    async fn read(&mut self, n: Option<usize>) {
        loop {
            if n.is_some_and(|n| self.got.len() >= n) {
                return;
            }
            let wait = if n.is_some() { 20 } else { 1 };
            match self.ws.try_push(Duration::from_secs(wait)).await {
                Some((m, p)) if m == "feature" => self.got.push(normalized(p)),
                Some(_) => {}
                None if n.is_none() => return,
                None => panic!(
                    "{} of {} pushes arrived within {wait} s of the previous",
                    self.got.len(),
                    n.unwrap_or(0)
                ),
            }
        }
    }
}

/// The AIS replay, then patches of properties only, a patch removing a property, and
/// deletes, through `srv`; returns what every subscriber received, in order. With `expect`
/// (the other path's result), reads until as many pushes as there arrived.
async fn run(
    srv: &TestServer,
    points: &[TrackPoint],
    expect: Option<&[Vec<Value>]>,
) -> Vec<Vec<Value>> {
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({ "name": "ships", "last_writer_wins": true }),
        )
        .await
        .unwrap();
    let mut watchers = Vec::new();
    for (i, f) in filters().iter().enumerate() {
        watchers.push(Watcher::start(srv, i, f).await);
    }
    let report = replay(&remote, "ships", points, 0.0, |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.updates, points.len() as u64);

    // Edits that make partial updates (properties only), a removal, and deletes.
    let mut ids: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    for (k, id) in ids.iter().take(40).enumerate() {
        let props = if k % 2 == 0 {
            json!({ "SOG": 20.5, "note": format!("patched {k}") })
        } else {
            json!({ "Heading": null })
        };
        remote
            .call(
                "feature.patch",
                &json!({ "layer": "ships", "id": id, "properties": props }),
            )
            .await
            .unwrap();
    }
    for id in ids.iter().skip(40).take(20) {
        remote
            .call("feature.delete", &json!({ "layer": "ships", "id": id }))
            .await
            .unwrap();
    }

    let mut out = Vec::new();
    for (i, mut w) in watchers.into_iter().enumerate() {
        w.read(expect.map(|e| e[i].len())).await;
        w.ws.expect_silence(Duration::from_millis(300)).await;
        out.push(w.got);
    }
    out
}

#[tokio::test]
async fn in_process_and_nats_brokers_push_the_same() {
    let points: Vec<TrackPoint> = read_track(&datasets().join(TRACK))
        .unwrap()
        .into_iter()
        .take(POINTS)
        .collect();

    let local = TestServer::start_with(|c| c.limits.outbox_bytes = 256 << 20).await;
    let in_process = run(&local, &points, None).await;
    local.shutdown().await;
    for (i, got) in in_process.iter().enumerate() {
        let kinds = |k: &str| got.iter().filter(|p| p["kind"] == k).count();
        assert!(
            kinds("enter") > 10 && kinds("update") > 10 && kinds("exit") + kinds("delete") > 0,
            "subscriber {i} sees every kind of push ({} pushes)",
            got.len()
        );
    }
    let partial = in_process
        .iter()
        .flatten()
        .filter(|p| p["kind"] == "update" && p.get("feature").is_none())
        .count();
    assert!(
        partial > 0,
        "some updates are partial (changed properties only)"
    );

    let prefix = format!(
        "gspaths_{}",
        geostream_broker::new_epoch().to_ascii_lowercase()
    );
    let own = common::backends::nats(&prefix).await;
    let p = prefix.clone();
    let nats = TestServer::start_with(move |c| {
        c.limits.outbox_bytes = 256 << 20;
        c.broker = BrokerConfig::Nats {
            url: nats_url(),
            prefix: p,
            replicas: 1,
            heartbeat_ms: 200,
            forward_writes: true,
            write_owner: Default::default(),
        };
    })
    .await;
    let through_nats = run(&nats, &points, Some(&in_process)).await;
    nats.shutdown().await;
    own.delete_streams()
        .await
        .expect("delete the run's streams");

    for (i, (a, b)) in in_process.iter().zip(&through_nats).enumerate() {
        assert_eq!(a.len(), b.len(), "subscriber {i}: push count");
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(
                x, y,
                "subscriber {i}: push {k} differs between the two paths"
            );
        }
    }
}
