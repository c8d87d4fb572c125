//! The subscription index under load: 10,000 live viewport subscriptions and a real AIS
//! trajectory replayed as fast as possible through the hub's layer dispatch.
//!
//! Each subscription belongs to its own session, whose outbox a consumer task drains the way
//! the WebSocket writer does (it encodes each push for its encoding, splices its subscription
//! id into a write buffer, and records the push's latency from its creation on this node to
//! its drain). The viewports are screen-sized boxes (16:9, zoom 8 to 15) centred on positions
//! of the same trajectory, so they lie where the ships are, as users' maps would. The
//! replay runs twice: with the R-tree index of subscription areas (the default) and with a
//! linear scan of every subscription (`HubLimits::spatial_index = false`); the deliveries of
//! the two are compared over the updates both processed.
//!
//! ```sh
//! cargo bench -p geostream-server --bench viewports
//! VIEWPORTS=100000 VIEWPORT_TRACK=ais_ny_harbor_2020-06-30_first_hour.csv.zst cargo bench -p geostream-server --bench viewports
//! ```
//!
//! Knobs (environment): `VIEWPORTS` (10,000), `VIEWPORT_TRACK` (a file in
//! the repository's `datasets/trajectories`, default `ais_us_coastal_2020-06-30.csv.zst`),
//! `VIEWPORT_BATCH` (changes handed to the hub together, as a `feature.batch` commit brings
//! them; default 1), `VIEWPORT_SHARDS` (`layers.dispatch_shards`, default 1), `VIEWPORT_UPDATES` (cap on position updates, default all), `VIEWPORT_SECS` (cap on the
//! replay time of each run, default 20), `VIEWPORT_MODES` (`index,scan`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use geostream_core::codec::Encoding;
use geostream_core::feature::{Change, ChangeOp, Feature};
use geostream_filter::{Filter, SpatialFilter};
use geostream_hub::{CloseReason, Hub, HubLimits, Outgoing, Session};
use geostream_server::replay::{TrackPoint, read_track};

const LAYER: &str = "ships";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift64*), so every run has the same viewports.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The repository's vendored real data (`datasets/`).
fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// A map viewport of a 1280 x 720 screen at `zoom`, centred on (`lon`, `lat`), clamped to
/// valid coordinates.
fn viewport(lon: f64, lat: f64, zoom: f64) -> [f64; 4] {
    let width = 360.0 * 1280.0 / (256.0 * zoom.exp2());
    // Web Mercator: a degree of latitude takes more screen near the poles.
    let height = width * 720.0 / 1280.0 * lat.to_radians().cos().max(0.05);
    [
        (lon - width / 2.0).max(-180.0),
        (lat - height / 2.0).max(-90.0),
        (lon + width / 2.0).min(180.0),
        (lat + height / 2.0).min(90.0),
    ]
}

/// The position updates of the track as the store would emit them: an insert for an
/// object's first report, then updates carrying the feature before and after.
fn changes(points: &[TrackPoint]) -> Vec<Arc<Change>> {
    let mut last: HashMap<&str, Feature> = HashMap::new();
    let mut out = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let mut f: Feature = serde_json::from_value(p.feature()).expect("a track point feature");
        let old = last.get(p.id.as_str()).cloned();
        f.version = old.as_ref().map_or(1, |o| o.version + 1);
        f.updated = p.timestamp.clone();
        let changed: Vec<String> = match &old {
            None => f.properties.keys().cloned().collect(),
            Some(o) => f
                .properties
                .iter()
                .filter(|(k, v)| o.properties.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect(),
        };
        out.push(Arc::new(Change {
            layer: LAYER.into(),
            seq: i as u64 + 1,
            op: if old.is_some() {
                ChangeOp::Update
            } else {
                ChangeOp::Insert
            },
            id: p.id.clone(),
            version: f.version,
            old_bbox: old.as_ref().and_then(Feature::bbox),
            new_bbox: f.bbox(),
            changed,
            geometry_changed: true,
            author: None,
            op_id: None,
            time_ms: p.time_ms,
            old,
            new: Some(f.clone()),
        }));
        last.insert(p.id.as_str(), f);
    }
    out
}

/// What one consumer saw.
#[derive(Default)]
struct Seen {
    pushes: u64,
    bytes: u64,
    /// Latency of every push, in microseconds.
    latency_us: Vec<u32>,
}

/// Drains one session's outbox like the WebSocket writer: encode (shared, once per push and
/// encoding), splice the subscription id into a write buffer, measure.
async fn consume(session: Arc<Session>) -> Seen {
    let enc = session.encoding();
    let mut batch = VecDeque::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = Seen::default();
    loop {
        session.outbox.ready().await;
        let closed = session.outbox.drain(&mut batch, 64 * 1024);
        let now = Instant::now();
        for item in batch.drain(..) {
            if let Outgoing::State { sub, push, .. } | Outgoing::Push { sub, push } = item {
                let f = push.frame(enc);
                f.write(sub, &mut buf);
                seen.pushes += 1;
                let us = now.saturating_duration_since(push.created()).as_micros();
                seen.latency_us.push(us.min(u32::MAX as u128) as u32);
            }
        }
        seen.bytes += buf.len() as u64;
        buf.clear();
        if closed.is_some() {
            return seen;
        }
    }
}

struct RunResult {
    updates: usize,
    produce: Duration,
    total: Duration,
    pushes: u64,
    bytes: u64,
    hub_deliveries: u64,
    coalesced: u64,
    /// Hub deliveries after each update (for comparing two runs).
    cumulative: Vec<u64>,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
}

fn run(
    index: bool,
    views: &[[f64; 4]],
    changes: &[Arc<Change>],
    batch: usize,
    max_time: Duration,
) -> RunResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let hub = Arc::new(Hub::new(HubLimits {
        spatial_index: index,
        dispatch_shards: env_num("VIEWPORT_SHARDS", 1).max(1) as usize,
        ..HubLimits::default()
    }));
    hub.init_layer(LAYER, 0);
    let mut consumers = Vec::with_capacity(views.len());
    let mut sessions = Vec::with_capacity(views.len());
    for v in views {
        let s = hub.new_session(Encoding::Msgpack, None);
        let filter = Arc::new(Filter {
            spatial: Some(SpatialFilter::from_bbox(v).expect("a valid viewport")),
            ..Default::default()
        });
        let r = hub.add_layer_sub(&s, LAYER, filter).expect("subscribe");
        assert!(hub.finish_layer_recovery(r, 0));
        consumers.push(rt.spawn(consume(s.clone())));
        sessions.push(s);
    }
    // The replay runs on its own thread, as fast as dispatch allows; the consumers share the
    // runtime's one worker (the machine has two cores).
    let producer = {
        let hub = hub.clone();
        let changes = changes.to_vec();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut cumulative = Vec::with_capacity(changes.len());
            for (i, batch) in changes.chunks(batch).enumerate() {
                hub.dispatch_changes(batch);
                let delivered = hub.stats().deliveries.load(Ordering::Relaxed);
                cumulative.extend(std::iter::repeat_n(delivered, batch.len()));
                if (i * batch.len()) % 1024 < batch.len() && started.elapsed() > max_time {
                    break;
                }
            }
            (started, started.elapsed(), cumulative)
        })
    };
    let (started, produce, cumulative) = producer.join().expect("producer");
    let queued = &hub.stats().outbox.queued_bytes;
    while queued.load(Ordering::Relaxed) > 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let total = started.elapsed();
    // Everything is drained: closing the outboxes ends the consumers.
    for s in &sessions {
        s.outbox.close(CloseReason {
            code: 1000,
            reason: "done",
        });
    }
    let mut all = Vec::new();
    let (mut pushes, mut bytes) = (0, 0);
    for c in consumers {
        let seen = rt.block_on(c).expect("consumer");
        pushes += seen.pushes;
        bytes += seen.bytes;
        all.extend_from_slice(&seen.latency_us);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let result = RunResult {
        updates: cumulative.len(),
        produce,
        total,
        pushes,
        bytes,
        hub_deliveries: hub.stats().deliveries.load(Ordering::Relaxed),
        coalesced: hub.stats().outbox.coalesced.load(Ordering::Relaxed),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: all.last().copied().unwrap_or(0),
        cumulative,
    };
    for s in &sessions {
        hub.remove_session(s);
    }
    result
}

fn main() {
    let n_views = env_num("VIEWPORTS", 10_000) as usize;
    let track = std::env::var("VIEWPORT_TRACK")
        .unwrap_or_else(|_| "ais_us_coastal_2020-06-30.csv.zst".into());
    let max_time = Duration::from_secs(env_num("VIEWPORT_SECS", 20));
    let batch = env_num("VIEWPORT_BATCH", 1).max(1) as usize;
    let modes = std::env::var("VIEWPORT_MODES").unwrap_or_else(|_| "index,scan".into());
    let path = data_dir().join("trajectories").join(&track);
    let t = Instant::now();
    let mut points = read_track(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    points.sort_by_key(|p| p.time_ms);
    let cap = env_num("VIEWPORT_UPDATES", points.len() as u64) as usize;
    points.truncate(cap);
    let changes = changes(&points);
    let objects = points
        .iter()
        .map(|p| p.id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();

    // Viewports centred on reported positions (where the data is), zoom 8..15.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let views: Vec<[f64; 4]> = (0..n_views)
        .map(|_| {
            let p = &points[(rng.next() % points.len() as u64) as usize];
            let zoom = 8.0 + 7.0 * rng.unit();
            viewport(p.lon, p.lat, zoom)
        })
        .collect();
    let mean_width = views.iter().map(|v| v[2] - v[0]).sum::<f64>() / views.len() as f64;
    println!(
        "{track}: {} position updates of {objects} objects (loaded in {:.1} s); \
         {n_views} viewport subscriptions (1280x720 at zoom 8-15, mean width {mean_width:.2} deg), \
         one session and consumer each; MessagePack",
        points.len(),
        t.elapsed().as_secs_f64()
    );
    let mut results: Vec<(&str, RunResult)> = Vec::new();
    for mode in modes.split(',') {
        let index = match mode.trim() {
            "index" => true,
            "scan" => false,
            other => panic!("unknown mode {other} (index or scan)"),
        };
        let r = run(index, &views, &changes, batch, max_time);
        println!(
            "{:<6} updates {:>7} in {:>6.2} s: {:>9.0} updates/s processed | pushes {:>9} ({:>5.1} per update, \
             {:>9.0}/s delivered, {:.1} MB encoded) | latency p50 {:.2} ms p99 {:.2} ms max {:.1} ms | queued {} coalesced {}",
            mode,
            r.updates,
            r.produce.as_secs_f64(),
            r.updates as f64 / r.produce.as_secs_f64(),
            r.pushes,
            r.pushes as f64 / r.updates.max(1) as f64,
            r.pushes as f64 / r.total.as_secs_f64(),
            r.bytes as f64 / 1e6,
            r.p50_us as f64 / 1e3,
            r.p99_us as f64 / 1e3,
            r.max_us as f64 / 1e3,
            r.hub_deliveries,
            r.coalesced,
        );
        results.push((mode, r));
    }
    if let [(_, a), (_, b)] = &results[..] {
        let n = a.updates.min(b.updates);
        if n > 0 {
            let (da, db) = (a.cumulative[n - 1], b.cumulative[n - 1]);
            println!(
                "over the first {n} updates both runs handed {} pushes to outboxes ({da} vs {db}): {}",
                da.max(db),
                if da == db { "identical" } else { "MISMATCH" }
            );
            let rate = |r: &RunResult| r.updates as f64 / r.produce.as_secs_f64();
            println!(
                "the index processes {:.1}x the updates/s of the linear scan",
                rate(a) / rate(b)
            );
        }
    }
}
