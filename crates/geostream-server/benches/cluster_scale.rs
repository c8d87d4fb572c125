//! Delivered pushes/s with 1, 2 and 3 nodes sharing PostgreSQL and NATS.
//!
//! For each node count, the nodes start in this process (as `tests/cluster.rs` starts them:
//! `store.type = "postgres"`, `broker.type = "nats"`, a schema and a subject prefix of their
//! own, removed afterwards), `CLUSTER_SUBS` WebSocket subscribers are spread round-robin over
//! the nodes, and two workloads run for `CLUSTER_SECS` each:
//!
//! - `channel`: `CLUSTER_PUBLISHERS` (8) publishers spread over the nodes send 64-byte
//!   `channel.publish` requests, at most 64 unacknowledged each (a connection handles its
//!   requests in order, so one publisher is bound by the JetStream round trip); every
//!   message crosses NATS (JetStream keeps the channel's history) to
//!   every node, which fans it out to its own subscribers;
//! - `edits`: `CLUSTER_EDITORS` editors spread over the nodes replace point features with real
//!   AIS positions (`feature.replace`, one in flight each); every edit is committed in
//!   PostgreSQL (the per-layer sequence number is taken in the database) before it is
//!   acknowledged and published; the subscribers watch the whole layer.
//!
//! Reported: requests acknowledged/s, pushes delivered/s, and pushes expected but missing
//! (acknowledged x subscribers - received, after a drain of up to 5 s). Everything runs on
//! this machine's cores, so more nodes show the cost of the cluster path, not a speed-up.
//!
//! ```sh
//! cargo bench -p geostream-server --bench cluster_scale
//! CLUSTER_NODES=1,3 CLUSTER_SUBS=600 CLUSTER_SECS=10 cargo bench -p geostream-server --bench cluster_scale
//! ```
//!
//! Needs PostgreSQL with PostGIS (`GEOSTREAM_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS with JetStream
//! (`GEOSTREAM_TEST_NATS_URL`, default `nats://127.0.0.1:4222`); `scripts/test.sh` starts both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use geostream_broker::{
    BrokerHandler, HistoryLimits, NatsBroker, NatsOptions, Publication, new_epoch,
};
use geostream_server::Config;
use geostream_server::config::{BrokerConfig, StoreConfig};
use geostream_store::{PostgresOptions, PostgresStore};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn pg_url() -> String {
    std::env::var("GEOSTREAM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn nats_url() -> String {
    std::env::var("GEOSTREAM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Nothing;

impl BrokerHandler for Nothing {
    fn on_publication(&self, _: &str, _: &Publication, _: &Arc<str>) {}
    fn on_event(&self, _: &str, _: &Arc<geostream_broker::BusEvent>) {}
}

/// A node running in this process.
struct Node {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_node(schema: &str, prefix: &str, i: usize) -> Node {
    let dir = std::env::temp_dir().join(format!(
        "geostream-cluster-bench-{}-{prefix}-{i}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("data dir");
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.clone(),
        ..Default::default()
    };
    c.shutdown.drain_secs = 2;
    // The load comes from a handful of connections pipelining requests: lift the per-connection
    // request rate limit so it measures the cluster, not the limiter.
    c.limits.requests_per_sec = 1_000_000;
    c.limits.request_burst = 1_000_000;
    c.store = StoreConfig::Postgres {
        url: pg_url(),
        schema: schema.into(),
        pool_size: 8,
        change_retention: 100_000,
    };
    c.broker = BrokerConfig::Nats {
        url: nats_url(),
        prefix: prefix.into(),
        replicas: 1,
        heartbeat_ms: 500,
        forward_writes: true,
        write_owner: Default::default(),
    };
    let listener = geostream_server::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Err(e) = geostream_server::run(listener, c, async {
            let _ = rx.await;
        })
        .await
        {
            eprintln!("node {i} failed: {e:#}");
        }
    });
    Node {
        addr,
        stop,
        task,
        _dir: TempDir(dir),
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr) -> WsStream {
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "geostream.v1.json".parse().expect("header"),
    );
    // Nodes open their stores and brokers in the background: retry for a while.
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(req.clone()).await {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to {addr}");
}

/// Sends one request and waits for its response (skipping pushes); panics on an error.
async fn call(ws: &mut WsStream, id: u64, method: &str, params: Value) -> Value {
    let req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
    ws.send(Message::text(req.to_string())).await.expect("send");
    while let Some(m) = ws.next().await {
        let Ok(Message::Text(t)) = m else { continue };
        let v: Value = serde_json::from_str(&t).expect("json");
        if v["id"] == id {
            if let Some(e) = v.get("error") {
                panic!("{method} failed: {e}");
            }
            return v["result"].clone();
        }
    }
    panic!("connection closed during {method}");
}

/// A subscriber: counts pushes of `method` until `stop`.
fn subscriber(
    mut ws: WsStream,
    method: &'static str,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let needle = format!("\"method\":\"{method}\"");
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if stop.load(Ordering::Relaxed) { break; }
                    continue;
                }
            };
            match m {
                Some(Ok(Message::Text(t))) => {
                    if t.as_bytes()
                        .get(..48)
                        .is_some_and(|h| h.windows(needle.len()).any(|w| w == needle.as_bytes()))
                    {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = ws.close(None).await;
    });
}

/// Runs a closed-loop client: builds request `i` with `make`, keeps `window` unanswered;
/// returns the number of successful responses within `secs`.
async fn pipeline(
    ws: WsStream,
    window: usize,
    secs: Duration,
    make: impl Fn(u64) -> String + Send + 'static,
) -> (u64, u64) {
    let (mut tx, mut rx) = ws.split();
    let permits = Arc::new(Semaphore::new(window));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let permits = permits.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let p = permits.acquire().await.expect("semaphore");
                p.forget();
                i += 1;
                if tx.send(Message::text(make(i))).await.is_err() {
                    break;
                }
            }
            tx
        })
    };
    let (mut ok, mut failed) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + secs;
    let mut first_error = None;
    loop {
        let m = tokio::select! {
            m = rx.next() => m,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let Some(Ok(Message::Text(t))) = m else {
            if m.is_none() {
                break;
            }
            continue;
        };
        // Responses carry an id; pushes do not.
        if t.starts_with(r#"{"jsonrpc":"2.0","id":"#) {
            if t.contains(r#""error":"#) {
                failed += 1;
                first_error.get_or_insert_with(|| t.to_string());
            } else {
                ok += 1;
            }
            permits.add_permits(1);
        }
    }
    done.store(true, Ordering::Relaxed);
    permits.add_permits(window);
    if let Ok(tx) = sender.await
        && let Ok(mut ws) = tx.reunite(rx)
    {
        let _ = ws.close(None).await;
    }
    if let Some(e) = first_error {
        eprintln!("  first error response: {}", &e[..e.len().min(300)]);
    }
    (ok, failed)
}

/// Waits until `count` reaches `expected` or stops growing for `quiet`.
async fn drain(count: &AtomicU64, expected: u64, quiet: Duration) -> Instant {
    let mut last = count.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        if last >= expected || last_change.elapsed() > quiet {
            return last_change;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = count.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}

/// Real AIS positions (New York harbour) to edit with: (object id, lon, lat, speed).
fn ais_positions() -> Vec<(String, f64, f64, f64)> {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/trajectories");
    let raw =
        std::fs::read(dir.join("ais_ny_harbor_2020-06-30_first_hour.csv.zst")).expect("AIS file");
    let text = String::from_utf8(zstd::decode_all(&raw[..]).expect("zstd")).expect("utf-8");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
            Some((
                format!("ais-{}", f.get(1)?),
                num(2)?,
                num(3)?,
                num(4).unwrap_or(0.0),
            ))
        })
        .collect()
}

struct Outcome {
    acked: u64,
    failed: u64,
    elapsed: Duration,
    received: u64,
    expected: u64,
}

impl Outcome {
    fn print(&self, nodes: usize, workload: &str, subs: usize) {
        let s = self.elapsed.as_secs_f64();
        println!(
            "{nodes} node(s) {workload:<7} acknowledged {:>8.0}/s | delivered {:>9.0} pushes/s to {subs} subscribers | missing {}{}",
            self.acked as f64 / s,
            self.received as f64 / s,
            self.expected.saturating_sub(self.received),
            if self.failed > 0 {
                format!(" | {} requests failed", self.failed)
            } else {
                String::new()
            },
        );
    }
}

async fn run(
    nodes_n: usize,
    subs: usize,
    publishers: usize,
    editors: usize,
    secs: Duration,
    ais: &[(String, f64, f64, f64)],
) {
    let suffix = new_epoch().to_ascii_lowercase();
    let schema = format!("gs_bench_{nodes_n}_{suffix}");
    let prefix = format!("gsbench_{nodes_n}_{suffix}");
    let store = PostgresStore::connect(PostgresOptions {
        url: pg_url(),
        schema: schema.clone(),
        pool_size: 1,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL with PostGIS is needed at {}: {e}", pg_url()));
    let broker = NatsBroker::connect(
        NatsOptions {
            url: nats_url(),
            prefix: prefix.clone(),
            ..Default::default()
        },
        HistoryLimits::default(),
        Arc::new(Nothing),
    )
    .await
    .unwrap_or_else(|e| panic!("NATS with JetStream is needed at {}: {e}", nats_url()));
    let mut nodes = Vec::new();
    for i in 0..nodes_n {
        nodes.push(start_node(&schema, &prefix, i).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    // ----- channel fan-out -----
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..subs {
        let mut ws = connect(addrs[i % nodes_n]).await;
        call(&mut ws, 1, "channel.subscribe", json!({ "channel": "fan" })).await;
        subscriber(ws, "message", count.clone(), stop.clone());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let ws = connect(addrs[p % nodes_n]).await;
        let payload = ".".repeat(64);
        tasks.push(tokio::spawn(pipeline(ws, 64, secs, move |i| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"channel.publish","params":{{"channel":"fan","data":"{payload}"}}}}"#
            )
        })));
    }
    let (mut acked, mut failed) = (0, 0);
    for t in tasks {
        let (a, f) = t.await.expect("publisher");
        acked += a;
        failed += f;
    }
    let expected = acked * subs as u64;
    let last = drain(&count, expected, Duration::from_secs(5)).await;
    Outcome {
        acked,
        failed,
        elapsed: last.duration_since(started).max(secs),
        received: count.load(Ordering::Relaxed),
        expected,
    }
    .print(nodes_n, "channel", subs);
    stop.store(true, Ordering::Relaxed);

    // ----- durable edits -----
    let mut admin = connect(addrs[0]).await;
    call(
        &mut admin,
        1,
        "layer.create",
        json!({ "name": "ais", "last_writer_wins": true }),
    )
    .await;
    let _ = admin.close(None).await;
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..subs {
        let mut ws = connect(addrs[i % nodes_n]).await;
        call(
            &mut ws,
            1,
            "layer.subscribe",
            json!({ "layer": "ais", "bbox": [-180.0, -90.0, 180.0, 90.0] }),
        )
        .await;
        subscriber(ws, "feature", count.clone(), stop.clone());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for e in 0..editors {
        let ws = connect(addrs[e % nodes_n]).await;
        // Each editor moves its own ships (editors never race for one feature).
        let mine: Vec<(String, f64, f64, f64)> = ais
            .iter()
            .filter(|p| p.0.len() % editors == e || editors == 1)
            .cloned()
            .collect();
        let mine = if mine.is_empty() { ais.to_vec() } else { mine };
        tasks.push(tokio::spawn(pipeline(ws, 1, secs, move |i| {
            let (id, x, y, sog) = &mine[(i as usize) % mine.len()];
            let id = format!("{id}-{e}");
            format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"feature.replace","params":{{"layer":"ais","id":"{id}","feature":{{"type":"Feature","id":"{id}","geometry":{{"type":"Point","coordinates":[{x},{y}]}},"properties":{{"sog":{sog}}}}}}}}}"#
            )
        })));
    }
    let (mut acked, mut failed) = (0, 0);
    for t in tasks {
        let (a, f) = t.await.expect("editor");
        acked += a;
        failed += f;
    }
    let expected = acked * subs as u64;
    let last = drain(&count, expected, Duration::from_secs(5)).await;
    Outcome {
        acked,
        failed,
        elapsed: last.duration_since(started).max(secs),
        received: count.load(Ordering::Relaxed),
        expected,
    }
    .print(nodes_n, "edits", subs);
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;

    for n in nodes {
        let _ = n.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), n.task).await;
    }
    let _ = store.drop_schema().await;
    let _ = broker.delete_streams().await;
}

fn main() {
    let subs = env_num("CLUSTER_SUBS", 300) as usize;
    let publishers = env_num("CLUSTER_PUBLISHERS", 8) as usize;
    let editors = env_num("CLUSTER_EDITORS", 8) as usize;
    let secs = Duration::from_secs(env_num("CLUSTER_SECS", 5));
    let counts: Vec<usize> = std::env::var("CLUSTER_NODES")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let ais = ais_positions();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "cluster: PostgreSQL {} + NATS {}; {subs} JSON WebSocket subscribers spread over the nodes; \
         {} s per workload; channel: {publishers} publishers over the nodes, 64 B, window 64 each; edits: {editors} editors \
         over the nodes, one feature.replace in flight each",
        pg_url(),
        nats_url(),
        secs.as_secs()
    );
    for n in counts {
        rt.block_on(run(n, subs, publishers, editors, secs, &ais));
    }
}
