//! `gs-soak`: a soak run of one `geostream` process with an oracle (run by bench/soak.sh).
//!
//! For `--duration` seconds: channel publishers (acknowledged publishes; the acknowledged
//! offsets are the oracle), channel subscribers that drop their connection at random and
//! resume from their last offset, and recover from history whenever they get a `gap`; an AIS
//! trajectory replayed into the layer `soak-ships`, watched by `--viewports` viewport subscribers;
//! editors patching shared features with versions (conflicts expected); one stalled client at
//! a time (it subscribes and never reads; replaced every 30 s). Every 10 s: the server's RSS,
//! open fds, outbox depth, connections and the p99 of publish-to-deliver latency.
//!
//! At the end, with the load stopped: every channel subscriber received every acknowledged
//! message after its start (live or recovered from history after a `gap`), none twice and in
//! order; every viewport subscriber holds exactly what a fresh subscription to its viewport
//! holds (ids and versions); every feature's version counts the acknowledged edits and its
//! properties are those of the last one. The RSS slope over the second half of the run and
//! the fd count after all clients left are checked against bounds. Writes samples.csv and
//! verdict.json into `--out`; exits 1 on any failure.
//!
//! `--chaos` (bench/chaos.sh) kills and restarts the server along the way. `--cluster N`
//! (bench/chaos-cluster.sh) runs N nodes from `--config` (PostgreSQL store, NATS broker)
//! with the clients spread over them, each moving to the next node whenever it connects
//! again; with `--chaos` a random node is killed and restarted each time, and the last
//! node's NATS connection goes through a proxy of this process that is cut for a few
//! seconds now and then. Channel history is then JetStream's and outlives any node: the
//! oracle wants one epoch per channel and every acknowledged message, every node's answer
//! equal for edits, and every viewport equal to a fresh snapshot taken on another node.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use geostream_server::remote::{Remote, RemoteError};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "Soak run of one geostream process with an oracle")]
struct Args {
    /// The `geostream` binary.
    #[arg(long)]
    bin: PathBuf,
    /// Seconds of load (at most 14400).
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Output directory (samples.csv, verdict.json, the server's data and log).
    #[arg(long)]
    out: PathBuf,
    /// AIS trajectory CSV (plain or .zst) replayed into the layer `soak-ships`.
    #[arg(long)]
    track: PathBuf,
    /// Replay speed (x real time).
    #[arg(long, default_value_t = 30.0)]
    replay_speed: f64,
    /// Viewport subscribers of `soak-ships` (not `ships`: the server replays its own demo ships there).
    #[arg(long, default_value_t = 1000)]
    viewports: usize,
    /// Channels, each with one publisher.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 5)]
    channel_subscribers: usize,
    /// Messages per second per channel.
    #[arg(long, default_value_t = 20)]
    publish_rate: u64,
    /// Editors of the shared layer `edits`.
    #[arg(long, default_value_t = 4)]
    editors: usize,
    /// Edits per second per editor.
    #[arg(long, default_value_t = 5)]
    edit_rate: u64,
    /// Chaos: SIGKILL and restart the server every `--kill-min`..`--kill-max` seconds, and
    /// send malformed frames every 1-3 s; the oracle then allows what a restart loses by
    /// design (channel history, with the in-process broker) and nothing else.
    #[arg(long)]
    chaos: bool,
    /// Shortest time between kills (chaos).
    #[arg(long, default_value_t = 20)]
    kill_min: u64,
    /// Longest time between kills (chaos).
    #[arg(long, default_value_t = 40)]
    kill_max: u64,
    /// Cluster: run this many `geostream serve` nodes (2 or more) from `--config`, sharing
    /// PostgreSQL and NATS, with the clients spread over them and moving to another node on
    /// every reconnection. Channel history is then in JetStream and survives a node kill:
    /// the oracle requires one epoch per channel and every acknowledged message delivered.
    /// With `--chaos`, a random node is killed each time, and one node's NATS connection
    /// goes through a proxy of this process that is cut now and then.
    #[arg(long, default_value_t = 1)]
    cluster: usize,
    /// The nodes' configuration file (cluster; PostgreSQL store, NATS broker).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The NATS server the cut proxy forwards to (cluster with `--chaos`; host:port).
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats: String,
    /// Shortest time between two NATS cuts (cluster chaos), seconds.
    #[arg(long, default_value_t = 20)]
    cut_min: u64,
    /// Longest time between two NATS cuts (cluster chaos), seconds.
    #[arg(long, default_value_t = 40)]
    cut_max: u64,
    /// Longest NATS cut (cluster chaos; each lasts 2 s to this), seconds.
    #[arg(long, default_value_t = 10)]
    cut_for_max: u64,
    /// Largest accepted RSS slope over the second half of the run, MiB per minute.
    #[arg(long, default_value_t = 1.0)]
    max_rss_slope: f64,
    /// Largest accepted growth of the server's open fds, start to end (no client connected
    /// at either point).
    #[arg(long, default_value_t = 8)]
    max_fd_growth: i64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A JSON WebSocket client that keeps pushes received while waiting for a response.
struct Client {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: i64,
    backlog: VecDeque<Value>,
}

const WAIT: Duration = Duration::from_secs(30);

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client> {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
        )
        .await
        .context("connect timed out")??;
        Ok(Client {
            ws,
            next_id: 1,
            backlog: VecDeque::new(),
        })
    }

    async fn frame(&mut self, wait: Duration) -> Result<Option<Value>> {
        loop {
            let m = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("connection closed"),
                Ok(Some(m)) => m?,
            };
            match m {
                Message::Text(t) => return Ok(Some(serde_json::from_str(t.as_str())?)),
                Message::Close(c) => bail!("closed by the server: {c:?}"),
                _ => continue,
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        self.ws.send(Message::Text(req.to_string().into())).await?;
        loop {
            let Some(f) = self.frame(WAIT).await? else {
                bail!("no answer to {method} in {WAIT:?}");
            };
            if f.get("id").and_then(Value::as_i64) == Some(id) {
                if let Some(e) = f.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(f["result"].clone());
            }
            if f.get("method").is_some() {
                self.backlog.push_back(f);
            }
        }
    }

    /// The next push (`method`, `params`), or `None` after `wait` of silence.
    async fn push(&mut self, wait: Duration) -> Result<Option<(String, Value)>> {
        loop {
            let f = match self.backlog.pop_front() {
                Some(f) => f,
                None => match self.frame(wait).await? {
                    Some(f) => f,
                    None => return Ok(None),
                },
            };
            if let Some(m) = f.get("method").and_then(Value::as_str) {
                return Ok(Some((m.to_string(), f["params"].clone())));
            }
        }
    }
}

/// The node addresses (one without `--cluster`).
type Addrs = Arc<Vec<SocketAddr>>;

/// The node a client uses for its `k`-th connection: client `i` starts on node `i mod n`
/// and moves on to the next node whenever it connects again, so a client whose node died
/// finds a live one and every resume may cross nodes.
fn node(nodes: &[SocketAddr], k: usize) -> SocketAddr {
    nodes[k % nodes.len()]
}

/// A client connected to the first node, from `k` on, that accepts the connection.
async fn connect_any(nodes: &[SocketAddr], k: usize) -> Result<Client> {
    let mut last = None;
    for i in 0..nodes.len() {
        match Client::connect(node(nodes, k + i)).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no node")))
}

/// A `Remote` connected to the first node, from `k` on, that accepts the connection.
async fn remote_any(nodes: &[SocketAddr], k: usize) -> Result<Remote> {
    let mut last = None;
    for i in 0..nodes.len() {
        match Remote::connect(&node(nodes, k + i).to_string(), None).await {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!("no node accepts a connection: {last:?}"))
}

/// Whether an error answer is one a node may give while it is cut from NATS (cluster
/// chaos): the request was refused, not wrongly answered.
fn refused(sh: &Shared, e: &RemoteError) -> bool {
    sh.chaos
        && sh.history_survives
        && matches!(e, RemoteError::Rpc(r) if matches!(r.code.name(), "unavailable" | "timeout"))
}

/// `Remote::call` with a time limit: a call made just after its connection died can wait
/// forever (the reader task has already failed the waiting calls when this one registers),
/// so a call that takes longer than [`CALL_WAIT`] counts as interrupted (and is retried on a
/// new connection: edits with their op_id).
async fn call(remote: &Remote, method: &str, params: &Value) -> Result<Value, RemoteError> {
    match tokio::time::timeout(CALL_WAIT, remote.call(method, params)).await {
        Ok(r) => r,
        Err(_) => Err(RemoteError::Connection(format!(
            "no answer to {method} in {CALL_WAIT:?}"
        ))),
    }
}

const CALL_WAIT: Duration = Duration::from_secs(5);

/// What the load saw, for the oracle.
#[derive(Default)]
struct Shared {
    /// Whether the server is killed and restarted along the way (`--chaos`).
    chaos: bool,
    /// Whether channel history outlives a node (a cluster: JetStream keeps it), so a
    /// channel's epoch must never change and every acknowledged message is owed.
    history_survives: bool,
    /// NATS cuts made, and their total length in milliseconds (cluster chaos).
    cuts: AtomicU64,
    cut_ms: AtomicU64,
    /// Requests answered `unavailable` or `timeout` (cluster chaos: a node cut from NATS
    /// cannot publish; an edit so answered is retried with its op_id).
    refused: AtomicU64,
    /// Acknowledged (epoch, offset) per channel.
    acked: Mutex<HashMap<String, Vec<(String, u64)>>>,
    /// Latency samples (µs) since the last sample point.
    latency: Mutex<Vec<u64>>,
    delivered: AtomicU64,
    reconnects: AtomicU64,
    gaps: AtomicU64,
    conflicts: AtomicU64,
    stalls: AtomicU64,
    kills: AtomicU64,
    bad_frames: AtomicU64,
    /// Requests whose connection died before the answer (chaos).
    interrupted: AtomicU64,
    /// Problems found while running (duplicates, order, failed resumes).
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        let mut errs = self.errors.lock();
        if errs.len() < 200 {
            errs.push(e);
        }
    }
}

/// One channel subscriber's record in one epoch of the channel (the in-process broker starts
/// a new epoch, with offsets from 1, when the server restarts).
#[derive(Default)]
struct EpochRecord {
    /// The position at its first subscription in this epoch: it owes every message after.
    start: u64,
    live: Vec<u64>,
    recovered: BTreeSet<u64>,
}

/// One channel subscriber's record across its connections, by epoch.
type SubRecord = HashMap<String, EpochRecord>;

async fn publisher(
    nodes: Addrs,
    mut k: usize,
    channel: String,
    rate: u64,
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
) {
    let mut remote: Option<Remote> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1) as u32);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Some(r) = remote.as_ref() else {
            remote = Remote::connect(&node(&nodes, k).to_string(), None)
                .await
                .ok();
            if remote.is_none() {
                k += 1;
            }
            continue;
        };
        i += 1;
        let data = json!({ "i": i, "t": now_us(), "pad": "p".repeat(100) });
        match call(
            r,
            "channel.publish",
            &json!({ "channel": channel, "data": data }),
        )
        .await
        {
            Ok(r) => {
                let (Some(o), Some(e)) = (r["offset"].as_u64(), r["epoch"].as_str()) else {
                    sh.error(format!("publish {channel}: no position in {r}"));
                    continue;
                };
                sh.acked
                    .lock()
                    .entry(channel.clone())
                    .or_default()
                    .push((e.to_string(), o));
            }
            Err(RemoteError::Connection(_)) if sh.chaos => {
                sh.interrupted.fetch_add(1, Ordering::Relaxed);
                remote = None;
                k += 1;
            }
            Err(e) if refused(&sh, &e) => {
                sh.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => sh.error(format!("publish {channel}: {e}")),
        }
    }
}

async fn channel_subscriber(
    nodes: Addrs,
    mut k: usize,
    channel: String,
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
    rec: Arc<Mutex<SubRecord>>,
) {
    let mut last: Option<(u64, String)> = None;
    // When history outlives a node, everything acknowledged is owed to the end: after the
    // stop, one last resume (the way any client catches up) reads until the channel is
    // quiet, so a subscriber caught between two connections at the stop is not counted
    // short. Attempts at it are bounded; `done` once it has read to the end.
    let mut final_attempts = 0;
    let mut done = false;
    // The offset each publish attempt (`data.i`, one publisher per channel) arrived with: a
    // publish answered once must not be stored twice (as two offsets).
    let mut offset_of: HashMap<(String, u64), u64> = HashMap::new();
    loop {
        let finishing = stop.load(Ordering::Relaxed);
        if finishing {
            if done || !sh.history_survives || final_attempts >= 10 {
                break;
            }
            final_attempts += 1;
        }
        let at = node(&nodes, k);
        k += 1;
        let mut c = match Client::connect(at).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut params = json!({ "channel": channel });
        if let Some((o, e)) = &last {
            params["since"] = json!({ "offset": o, "epoch": e });
        }
        let r = match c.call("channel.subscribe", params).await {
            Ok(r) => r,
            Err(e) => {
                if !sh.chaos {
                    sh.error(format!("subscribe {channel}: {e}"));
                }
                continue;
            }
        };
        let epoch = r["position"]["epoch"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let position = r["position"]["offset"].as_u64().unwrap_or(0);
        if matches!(&last, Some((_, e)) if *e == epoch) {
            sh.reconnects.fetch_add(1, Ordering::Relaxed);
            if r["recovered"] != true {
                sh.error(format!(
                    "{channel}: resume from {last:?} on {at} not recovered in the same epoch: {r}"
                ));
            }
        } else {
            if last.is_some() && (!sh.chaos || sh.history_survives) {
                sh.error(format!(
                    "{channel}: the epoch changed (from {last:?}, on {at}) without the history being reset: {r}"
                ));
            }
            // First subscription in this epoch.
            rec.lock().entry(epoch.clone()).or_default().start = position;
            last = Some((position, epoch.clone()));
        }
        let session = if finishing {
            STOP_WAIT
        } else {
            Duration::from_millis(rand::rng().random_range(10_000..40_000))
        };
        let quiet = if finishing {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(500)
        };
        let until = Instant::now() + session;
        while Instant::now() < until && (finishing || !stop.load(Ordering::Relaxed)) {
            let p = match c.push(quiet).await {
                Ok(Some(p)) => p,
                Ok(None) if finishing => {
                    done = true;
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    if !sh.chaos {
                        sh.error(format!("{channel} subscriber: {e}"));
                    }
                    break;
                }
            };
            match p.0.as_str() {
                "message" => {
                    let o = p.1["offset"].as_u64().unwrap_or(0);
                    let prev = last.as_ref().map_or(0, |l| l.0);
                    if o <= prev {
                        sh.error(format!(
                            "{channel}: offset {o} after {prev} on {at} (duplicate or out of order)"
                        ));
                    }
                    if let Some(i) = p.1["data"]["i"].as_u64()
                        && let Some(first) = offset_of.insert((epoch.clone(), i), o)
                        && first != o
                    {
                        sh.error(format!(
                            "{channel}: publish {i} stored twice, at offsets {first} and {o}"
                        ));
                    }
                    rec.lock().entry(epoch.clone()).or_default().live.push(o);
                    last = Some((o, epoch.clone()));
                    sh.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = p.1["data"]["t"].as_u64() {
                        sh.latency.lock().push(now_us().saturating_sub(t));
                    }
                }
                "gap" => {
                    sh.gaps.fetch_add(1, Ordering::Relaxed);
                    let from = p.1["from"].as_u64().unwrap_or(1);
                    if let Err(e) = recover(&mut c, &channel, from, &epoch, &rec).await
                        && !sh.chaos
                    {
                        sh.error(format!("{channel}: recovery from {from}: {e}"));
                    }
                }
                _ => {}
            }
        }
        // Drop the connection without a close frame: an abrupt disconnect.
        drop(c);
    }
}

/// Reads the history from `from` on (as far as it goes now) into the record.
async fn recover(
    c: &mut Client,
    channel: &str,
    from: u64,
    epoch: &str,
    rec: &Mutex<SubRecord>,
) -> Result<()> {
    let mut since = from.saturating_sub(1);
    loop {
        let r = c
            .call(
                "channel.history",
                json!({ "channel": channel, "since": { "offset": since, "epoch": epoch }, "limit": 1000 }),
            )
            .await?;
        if r["complete"] == false {
            bail!("history no longer holds offset {}", since + 1);
        }
        let msgs = r["messages"].as_array().cloned().unwrap_or_default();
        {
            let mut rec = rec.lock();
            let e = rec.entry(epoch.to_string()).or_default();
            for m in &msgs {
                e.recovered.insert(m["offset"].as_u64().unwrap_or(0));
            }
        }
        match msgs.last() {
            Some(m) if r["more"] == true => since = m["offset"].as_u64().unwrap_or(since),
            _ => return Ok(()),
        }
    }
}

/// A viewport subscriber's view: feature id -> version.
type View = HashMap<String, u64>;

async fn read_snapshot(c: &mut Client, view: &mut View) -> Result<()> {
    loop {
        let Some((m, p)) = c.push(WAIT).await? else {
            bail!("no snapshot in {WAIT:?}");
        };
        if m != "snapshot" {
            continue;
        }
        for f in p["features"].as_array().cloned().unwrap_or_default() {
            view.insert(
                f["id"].as_str().unwrap_or_default().to_string(),
                f["version"].as_u64().unwrap_or(0),
            );
        }
        if p["last"] == true {
            return Ok(());
        }
    }
}

/// Subscribes to `bbox` and follows it until `stop`, then until the stream is quiet; returns
/// what it holds. With `--chaos`, a lost connection is replaced by a new subscription (and
/// its snapshot).
async fn viewer(
    nodes: Addrs,
    mut k: usize,
    bbox: [f64; 4],
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
) -> Result<View> {
    loop {
        match follow(node(&nodes, k), bbox, &stop, &sh).await {
            Ok(v) => return Ok(v),
            Err(e) if sh.chaos && !stop.load(Ordering::Relaxed) => {
                let _ = e;
                k += 1;
                sh.reconnects.fetch_add(1, Ordering::Relaxed);
                let pause = rand::rng().random_range(100..1000);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn follow(addr: SocketAddr, bbox: [f64; 4], stop: &AtomicBool, sh: &Shared) -> Result<View> {
    let mut c = Client::connect(addr).await?;
    c.call(
        "layer.subscribe",
        json!({ "layer": "soak-ships", "bbox": bbox }),
    )
    .await?;
    let mut view = View::new();
    read_snapshot(&mut c, &mut view).await?;
    let mut stopped_at: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let wait = if stopping {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(500)
        };
        let Some((m, p)) = c.push(wait).await? else {
            if stopping {
                return Ok(view);
            }
            continue;
        };
        if stopping
            && stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(30)
        {
            // Still changing 30 s after the stop: compare what it holds now.
            return Ok(view);
        }
        match m.as_str() {
            "feature" => {
                let id = p["id"].as_str().unwrap_or_default().to_string();
                let v = p["version"].as_u64().unwrap_or(0);
                match p["kind"].as_str() {
                    Some("enter" | "update") => {
                        if let Some(old) = view.get(&id)
                            && *old >= v
                        {
                            sh.error(format!("viewer: {id} version {v} after {old}"));
                        }
                        view.insert(id, v);
                    }
                    Some("exit" | "delete") => {
                        view.remove(&id);
                    }
                    other => sh.error(format!("viewer: unknown kind {other:?}")),
                }
            }
            "snapshot" => bail!("unexpected snapshot page after the first"),
            _ => {}
        }
    }
}

/// One acknowledged edit: (feature, version, editor, counter).
type Ack = (usize, u64, usize, u64);

async fn editor(
    nodes: Addrs,
    e: usize,
    features: usize,
    rate: u64,
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
    acks: Arc<Mutex<Vec<Ack>>>,
) {
    let mut remote: Option<Remote> = None;
    // Editor e starts on node e mod n.
    let mut at = e;
    let mut known = vec![1u64; features];
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1) as u32);
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        k += 1;
        let f = rand::rng().random_range(0..features);
        let params = json!({ "layer": "edits", "id": format!("f{f}"), "version": known[f],
            "properties": { "by": e, "k": k }, "op_id": format!("e{e}-k{k}") });
        // Until answered: a retry after a lost answer carries the same op_id, so it is
        // answered with the original result instead of being applied twice.
        let answer = loop {
            let Some(r) = remote.as_ref() else {
                match Remote::connect(&node(&nodes, at).to_string(), None).await {
                    Ok(r) => {
                        // One client id across connections, so op_ids are recognised.
                        if call(
                            &r,
                            "hello",
                            &json!({ "client_id": format!("soak-editor-{e}") }),
                        )
                        .await
                        .is_ok()
                        {
                            remote = Some(r);
                        }
                    }
                    Err(_) => {
                        at += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                continue;
            };
            match call(r, "feature.patch", &params).await {
                Err(RemoteError::Connection(_)) if sh.chaos => {
                    sh.interrupted.fetch_add(1, Ordering::Relaxed);
                    remote = None;
                    at += 1;
                }
                // Refused by a node (cut from NATS, or its store busy): the same op_id again,
                // on another node; it must not be applied twice.
                Err(e) if refused(&sh, &e) => {
                    sh.refused.fetch_add(1, Ordering::Relaxed);
                    remote = None;
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other,
            }
        };
        match answer {
            Ok(r) => {
                let v = r["version"].as_u64().unwrap_or(0);
                known[f] = v;
                acks.lock().push((f, v, e, k));
            }
            Err(RemoteError::Rpc(err))
                if err
                    .data
                    .as_ref()
                    .is_some_and(|d| d.get("current").is_some()) =>
            {
                sh.conflicts.fetch_add(1, Ordering::Relaxed);
                if let Some(v) = err
                    .data
                    .as_ref()
                    .and_then(|d| d["current"]["version"].as_u64())
                {
                    known[f] = v;
                }
            }
            Err(err) => sh.error(format!("editor {e}: {err}")),
        }
    }
}

/// A client that sends one malformed frame and must be closed by the server (close frame or
/// end of stream) within 10 s.
async fn bad_frame(addr: SocketAddr, kind: usize) -> Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut head)).await??;
    if !head[..n].starts_with(b"HTTP/1.1 101") {
        bail!("handshake refused");
    }
    let mask = [9u8, 8, 7, 6];
    let masked =
        |b: &[u8]| -> Vec<u8> { b.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect() };
    let frame: Vec<u8> = match kind % 6 {
        // Unmasked.
        0 => vec![0x81, 0x02, b'h', b'i'],
        // Reserved bit.
        1 => [&[0xc1, 0x82][..], &mask, &masked(b"hi")].concat(),
        // Unknown opcode.
        2 => [&[0x83, 0x80][..], &mask].concat(),
        // Invalid UTF-8.
        3 => [&[0x81, 0x82][..], &mask, &masked(&[0xff, 0xfe])].concat(),
        // A 1 TiB length.
        4 => [&[0x82, 0xff][..], &(1u64 << 40).to_be_bytes(), &mask].concat(),
        // A binary frame on a JSON connection.
        _ => [&[0x82, 0x82][..], &mask, &masked(b"hi")].concat(),
    };
    s.write_all(&frame).await?;
    // Closed: a close frame then the end of stream (or a reset).
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .context("not closed within 10 s after a malformed frame")?;
    Ok(())
}

/// A client that subscribes to `soak-ships` and never reads again, for `hold`.
async fn stalled(addr: SocketAddr, hold: Duration) -> Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut s = socket.connect(addr).await?;
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = [0u8; 256];
    let _ = s.read(&mut head).await?;
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "layer.subscribe", "params": { "layer": "soak-ships" } })
        .to_string();
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81u8];
    let n = body.len();
    if n < 126 {
        frame.push(0x80 | n as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(n as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(body.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await?;
    tokio::time::sleep(hold).await;
    Ok(())
}

async fn metrics(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await??;
    Ok(out)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn fds(pid: u32) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(-1, |d| d.count() as i64)
}

/// The server's open fds by kind (sockets, files by path), for the verdict.
fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut kinds = std::collections::BTreeMap::new();
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in d.flatten() {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let kind = match target.split_once(":[") {
                Some((k, _)) => k.to_string(),
                None => target,
            };
            *kinds.entry(kind).or_insert(0) += 1;
        }
    }
    kinds
}

fn p99(mut v: Vec<u64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1000.0
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// Starts `geostream serve` on `listen` (port 0: any): the single server, or node `i` of a
/// cluster (from `--config`, as an operator starts one, with `env` on top), on its data
/// directory, which must be empty on the first start. Its log is `server.*` or `node-N.*`.
async fn start_server(
    args: &Args,
    i: Option<usize>,
    listen: SocketAddr,
    first: bool,
    env: &[(String, String)],
) -> Result<(tokio::process::Child, SocketAddr)> {
    let name = i.map_or_else(|| "server".to_string(), |i| format!("node-{}", i + 1));
    let data = match i {
        None => args.out.join("data"),
        Some(_) => args.out.join(&name),
    };
    if first && std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} is not empty: each run starts on fresh data",
            data.display()
        );
    }
    std::fs::create_dir_all(&data)?;
    let append = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.out.join(name))
    };
    let mut cmd = tokio::process::Command::new(&args.bin);
    cmd.arg("serve");
    match i {
        // The cluster's settings (store, broker, history size) are in its file.
        Some(_) => {
            cmd.arg("--config")
                .arg(args.config.as_ref().context("--cluster needs --config")?);
        }
        None => {
            cmd.env("GEOSTREAM_CHANNELS__HISTORY_SIZE", "5000");
        }
    }
    let mut child = cmd
        .args(["--listen", &listen.to_string(), "--data-dir"])
        .arg(&data)
        .env("GEOSTREAM_LOG__LEVEL", "warn")
        .env("GEOSTREAM_LIMITS__MAX_CONNECTIONS_PER_IP", "100000")
        .envs(env.iter().cloned())
        .stdout(append(&format!("{name}.log"))?)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", args.bin.display()))?;
    // Its PID, for the script to stop it should this process be interrupted.
    if let Some(pid) = child.id() {
        std::fs::write(args.out.join(format!("{name}.pid")), pid.to_string())?;
    }
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .context("address")?
                    .parse::<SocketAddr>()
                    .context("address");
            }
        }
        bail!("the server exited before listening")
    })
    .await
    .context("the server did not listen within 60 s")??;
    let mut err_log = append(&format!("{name}.err"))
        .ok()
        .map(tokio::fs::File::from_std);
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(f) = err_log.as_mut() {
                let _ = f.write_all(format!("{l}\n").as_bytes()).await;
            }
        }
    });
    Ok((child, addr))
}

/// A TCP proxy between one node and NATS (cluster chaos), cut now and then: a cut closes
/// every connection through it and refuses new ones until it is restored.
struct Proxy {
    addr: SocketAddr,
    cut: AtomicBool,
    conns: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Arc<Proxy>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Arc::new(Proxy {
            addr: listener.local_addr()?,
            cut: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        // The accept loop holds only a weak reference: it ends with the run.
        let weak = Arc::downgrade(&proxy);
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let Some(p) = weak.upgrade() else { return };
                if p.cut.load(Ordering::SeqCst) {
                    // Refused: closed at once.
                    drop(down);
                    continue;
                }
                let mut conns = p.conns.lock();
                conns.retain(|c| !c.is_finished());
                conns.push(tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Ok(proxy)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The sum of each running node's RSS (bytes).
fn rss_all(pids: &[AtomicU32]) -> u64 {
    pids.iter().map(|p| rss(p.load(Ordering::Relaxed))).sum()
}

/// The sum of each running node's open fds.
fn fds_all(pids: &[AtomicU32]) -> i64 {
    pids.iter().map(|p| fds(p.load(Ordering::Relaxed))).sum()
}

/// Every node's open fds by kind, added up.
fn fd_kinds_all(pids: &[AtomicU32]) -> std::collections::BTreeMap<String, u64> {
    let mut all = std::collections::BTreeMap::new();
    for p in pids {
        for (k, v) in fd_kinds(p.load(Ordering::Relaxed)) {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

/// Every reachable node's metrics text, one after the other ([`metric`] adds the nodes up).
async fn metrics_all(nodes: &[SocketAddr]) -> String {
    let mut all = String::new();
    for a in nodes {
        if let Ok(m) = metrics(*a).await {
            all.push_str(&m);
        }
    }
    all
}

/// How long a task may take to finish once told to stop.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Waits up to [`STOP_WAIT`] for a task; records a failure naming it if it does not end.
async fn join<T>(what: &str, task: tokio::task::JoinHandle<T>, failures: &mut Vec<String>) {
    eprintln!("stopping {what}");
    let abort = task.abort_handle();
    match tokio::time::timeout(STOP_WAIT, task).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failures.push(format!("{what} failed: {e}")),
        Err(_) => {
            abort.abort();
            failures.push(format!("{what} did not stop within {STOP_WAIT:?}"));
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.duration > 14_400 {
        bail!("--duration is at most 14400 s");
    }
    let n = args.cluster.max(1);
    let cluster = n > 1;
    if cluster && args.config.is_none() {
        bail!("--cluster needs --config (the nodes' configuration file)");
    }
    std::fs::create_dir_all(&args.out)?;
    let points = geostream_server::replay::read_track(&args.track)
        .with_context(|| format!("read {}", args.track.display()))?;
    // Cluster chaos: the last node reaches NATS through a proxy of ours that the cutter
    // cuts now and then (the shared NATS itself is never touched).
    let proxy = if cluster && args.chaos {
        let upstream = tokio::net::lookup_host(args.nats.trim_start_matches("nats://"))
            .await?
            .next()
            .context("the NATS address")?;
        Some(Proxy::start(upstream).await?)
    } else {
        None
    };
    let envs: Arc<Vec<Vec<(String, String)>>> = Arc::new(
        (0..n)
            .map(|i| match &proxy {
                Some(p) if i == n - 1 => vec![(
                    "GEOSTREAM_BROKER__URL".to_string(),
                    format!("nats://{}", p.addr),
                )],
                _ => Vec::new(),
            })
            .collect(),
    );
    // All nodes at once, as an operator may start them (the order does not matter).
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;
    let started = futures_util::future::try_join_all(
        (0..n).map(|i| start_server(&args, cluster.then_some(i), any_port, true, &envs[i])),
    )
    .await?;
    let addrs: Addrs = Arc::new(started.iter().map(|s| s.1).collect());
    let pids: Arc<Vec<AtomicU32>> = Arc::new(
        started
            .iter()
            .map(|s| s.0.id().map(AtomicU32::new).context("server pid"))
            .collect::<Result<_>>()?,
    );
    let servers: Arc<Vec<tokio::sync::Mutex<tokio::process::Child>>> = Arc::new(
        started
            .into_iter()
            .map(|s| tokio::sync::Mutex::new(s.0))
            .collect(),
    );
    let addr = addrs[0];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let conns_start = metric(&metrics_all(&addrs).await, "geostream_connections") as i64;
    let fds_start = fds_all(&pids);
    let fd_kinds_start = fd_kinds_all(&pids);
    println!(
        "{} {addrs:?} (pids {:?}), {fds_start} fds at start; {} s of load{}",
        if cluster { "nodes" } else { "server" },
        pids.iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
        args.duration,
        match (args.chaos, &proxy) {
            (true, Some(p)) => format!(
                ", with SIGKILL restarts of a random node, bad frames, and node {}'s NATS link cut now and then (proxy {})",
                n, p.addr
            ),
            (true, None) => ", with SIGKILL restarts and bad frames".to_string(),
            _ => String::new(),
        }
    );

    let sh = Arc::new(Shared {
        chaos: args.chaos,
        history_survives: cluster,
        ..Shared::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stop_subs = Arc::new(AtomicBool::new(false));
    let stop_views = Arc::new(AtomicBool::new(false));

    // Layers: `edits` (versions required) with its features; `soak-ships` for the replay.
    let admin = Remote::connect(&addr.to_string(), None).await?;
    admin
        .call("layer.create", &json!({ "name": "edits" }))
        .await?;
    const FEATURES: usize = 20;
    for f in 0..FEATURES {
        admin
            .call(
                "feature.create",
                &json!({ "layer": "edits", "feature": { "type": "Feature", "id": format!("f{f}"),
                    "geometry": { "type": "Point", "coordinates": [f as f64, 0.0] },
                    "properties": {} } }),
            )
            .await?;
    }
    // Replay a first slice so the layer exists before the viewers subscribe.
    geostream_server::replay::replay(
        &admin,
        "soak-ships",
        &points[..points.len().min(50)],
        1e9,
        |_, _| {},
    )
    .await?;
    drop(admin);

    // The extent of the track, for viewports.
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for p in &points {
        x0 = x0.min(p.lon);
        y0 = y0.min(p.lat);
        x1 = x1.max(p.lon);
        y1 = y1.max(p.lat);
    }
    let mut viewers = Vec::new();
    for v in 0..args.viewports {
        let bbox = {
            let mut r = rand::rng();
            let (w, h) = (
                (x1 - x0) * r.random_range(0.1..0.5),
                (y1 - y0) * r.random_range(0.1..0.5),
            );
            let (bx, by) = (
                r.random_range(x0..(x1 - w).max(x0 + 1e-9)),
                r.random_range(y0..(y1 - h).max(y0 + 1e-9)),
            );
            [bx, by, bx + w, by + h]
        };
        viewers.push((
            bbox,
            tokio::spawn(viewer(
                addrs.clone(),
                v,
                bbox,
                stop_views.clone(),
                sh.clone(),
            )),
        ));
    }

    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    let mut client = 0;
    for ch in 0..args.channels {
        let name = format!("soak-{ch}");
        for _ in 0..args.channel_subscribers {
            let rec = Arc::new(Mutex::new(SubRecord::default()));
            client += 1;
            subs.push((
                name.clone(),
                rec.clone(),
                tokio::spawn(channel_subscriber(
                    addrs.clone(),
                    client,
                    name.clone(),
                    stop_subs.clone(),
                    sh.clone(),
                    rec,
                )),
            ));
        }
    }
    // Let the subscribers subscribe before anything is published.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ch in 0..args.channels {
        pubs.push(tokio::spawn(publisher(
            addrs.clone(),
            ch,
            format!("soak-{ch}"),
            args.publish_rate,
            stop.clone(),
            sh.clone(),
        )));
    }
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut eds = Vec::new();
    for e in 0..args.editors {
        eds.push(tokio::spawn(editor(
            addrs.clone(),
            e,
            FEATURES,
            args.edit_rate,
            stop.clone(),
            sh.clone(),
            acks.clone(),
        )));
    }
    let replayer = {
        let stop = stop.clone();
        let sh = sh.clone();
        let speed = args.replay_speed;
        let addrs = addrs.clone();
        tokio::spawn(async move {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(remote) = remote_any(&addrs, k).await else {
                    if !sh.chaos {
                        sh.error("replay: cannot connect".into());
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                k += 1;
                tokio::select! {
                    r = geostream_server::replay::replay(&remote, "soak-ships", &points, speed, |_, _| {}) => {
                        if let Err(e) = r && !sh.chaos {
                            sh.error(format!("replay: {e}"));
                            return;
                        }
                    }
                    // Stop, or (chaos) start over on a new connection after a kill: the
                    // replay's calls may wait forever on a dead connection.
                    _ = async {
                        let kills = sh.kills.load(Ordering::Relaxed);
                        while !stop.load(Ordering::Relaxed) && sh.kills.load(Ordering::Relaxed) == kills {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                    } => {}
                }
            }
        })
    };
    let staller = {
        let stop = stop.clone();
        let sh = sh.clone();
        let addrs = addrs.clone();
        tokio::spawn(async move {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                sh.stalls.fetch_add(1, Ordering::Relaxed);
                let _ = stalled(node(&addrs, k), Duration::from_secs(30)).await;
                k += 1;
            }
        })
    };
    // Chaos: SIGKILL a random node (the only one without --cluster) and restart it on the
    // same port every kill_min..kill_max seconds; malformed frames every 1-3 s; in a cluster,
    // the proxied node's NATS link cut now and then.
    let kills_per_node: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (killer, badder) = if args.chaos {
        let killer = {
            let stop = stop.clone();
            let sh = sh.clone();
            let servers = servers.clone();
            let pids = pids.clone();
            let addrs = addrs.clone();
            let envs = envs.clone();
            let kills_per_node = kills_per_node.clone();
            let args = Args::parse();
            tokio::spawn(async move {
                loop {
                    let wait =
                        rand::rng().random_range(args.kill_min..=args.kill_max.max(args.kill_min));
                    let until = Instant::now() + Duration::from_secs(wait);
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = rand::rng().random_range(0..n);
                    let mut child = servers[i].lock().await;
                    if let Ok(Some(status)) = child.try_wait() {
                        sh.error(format!("node {} exited by itself: {status}", i + 1));
                    }
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    sh.kills.fetch_add(1, Ordering::Relaxed);
                    kills_per_node[i].fetch_add(1, Ordering::Relaxed);
                    // Restart on the same address (the listener sets SO_REUSEADDR). A node
                    // restarted while its NATS link is cut exits (it cannot reach the
                    // broker), so attempts go on for up to two minutes.
                    let give_up = Instant::now() + Duration::from_secs(120);
                    loop {
                        match start_server(&args, cluster.then_some(i), addrs[i], false, &envs[i])
                            .await
                        {
                            Ok((c, _)) => {
                                pids[i].store(c.id().unwrap_or(0), Ordering::Relaxed);
                                *child = c;
                                break;
                            }
                            Err(e) if Instant::now() < give_up => {
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            Err(e) => {
                                sh.error(format!("restart of node {} failed: {e}", i + 1));
                                return;
                            }
                        }
                    }
                }
            })
        };
        let badder = {
            let stop = stop.clone();
            let sh = sh.clone();
            let servers = servers.clone();
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let mut kind = 0;
                while !stop.load(Ordering::Relaxed) {
                    let pause = rand::rng().random_range(1000..3000);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    kind += 1;
                    let kills = sh.kills.load(Ordering::Relaxed);
                    if let Err(e) = bad_frame(node(&addrs, kind), kind).await {
                        // A kill in between explains a failure; otherwise it is one.
                        let restarting = servers.iter().any(|s| s.try_lock().is_err());
                        if sh.kills.load(Ordering::Relaxed) == kills && !restarting {
                            sh.error(format!("bad frame {}: {e}", kind % 6));
                        }
                    } else {
                        sh.bad_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        (Some(killer), Some(badder))
    } else {
        (None, None)
    };
    let cutter = proxy.clone().map(|proxy| {
        let stop = stop.clone();
        let sh = sh.clone();
        let (lo, hi, longest) = (
            args.cut_min,
            args.cut_max.max(args.cut_min),
            args.cut_for_max.max(2),
        );
        tokio::spawn(async move {
            loop {
                let wait = rand::rng().random_range(lo..=hi);
                let until = Instant::now() + Duration::from_secs(wait);
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let ms = rand::rng().random_range(2000..=longest * 1000);
                proxy.cut();
                sh.cuts.fetch_add(1, Ordering::Relaxed);
                // Always restored, even when the run stops meanwhile.
                tokio::time::sleep(Duration::from_millis(ms)).await;
                proxy.restore();
                sh.cut_ms.fetch_add(ms, Ordering::Relaxed);
            }
        })
    });

    // Sample every 10 s (the nodes added up).
    let mut csv =
        String::from("t_s,rss_bytes,fds,outbox_queued_bytes,p99_ms,connections,delivered\n");
    let mut samples: Vec<(f64, f64)> = Vec::new();
    // Open fds beyond one per connection, over time.
    let mut fd_samples: Vec<(f64, i64)> = Vec::new();
    let begin = Instant::now();
    let end = begin + Duration::from_secs(args.duration);
    let mut next = begin;
    while Instant::now() < end {
        next += Duration::from_secs(10);
        tokio::time::sleep_until(next.min(end).into()).await;
        let m = metrics_all(&addrs).await;
        let t = begin.elapsed().as_secs_f64();
        let r = rss_all(&pids);
        let lat = std::mem::take(&mut *sh.latency.lock());
        let line = format!(
            "{t:.0},{r},{},{},{:.2},{},{}\n",
            fds_all(&pids),
            metric(&m, "geostream_outbox_queued_bytes"),
            p99(lat),
            metric(&m, "geostream_connections"),
            sh.delivered.load(Ordering::Relaxed)
        );
        print!("{line}");
        csv.push_str(&line);
        samples.push((t, r as f64));
        fd_samples.push((
            t,
            fds_all(&pids) - metric(&m, "geostream_connections") as i64,
        ));
        std::fs::write(args.out.join("samples.csv"), &csv)?;
    }

    // Stop the faults, then the writers, then (once everything is delivered) the readers.
    // Each task gets STOP_WAIT to finish; one that does not is a failure (and is named).
    stop.store(true, Ordering::Relaxed);
    let mut failures: Vec<String> = Vec::new();
    if let Some(k) = killer {
        join("the killer", k, &mut failures).await;
    }
    if let Some(b) = badder {
        join("the bad-frame client", b, &mut failures).await;
    }
    if let Some(c) = cutter {
        join("the NATS cutter", c, &mut failures).await;
    }
    for p in pubs {
        join("a publisher", p, &mut failures).await;
    }
    for e in eds {
        join("an editor", e, &mut failures).await;
    }
    join("the replay", replayer, &mut failures).await;
    staller.abort();
    // Writes already sent (the replay keeps up to 16 batches in flight, and a dropped
    // `Remote` still sends what it queued) land after the writers stop: wait until the
    // layers' sequence numbers have not moved for 3 s (at most 60 s), on every node alike.
    eprintln!("waiting for the layers to settle");
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    let mut last_seqs = None;
    let mut stable_since = Instant::now();
    loop {
        let seqs = async {
            let mut all = Vec::new();
            for a in addrs.iter() {
                let mut c = Client::connect(*a).await?;
                let s = c.call("layer.get", json!({ "name": "soak-ships" })).await?["seq"].clone();
                let e = c.call("layer.get", json!({ "name": "edits" })).await?["seq"].clone();
                all.push((s, e));
            }
            anyhow::Ok(all)
        }
        .await
        .ok()
        .filter(|all| all.windows(2).all(|w| w[0] == w[1]));
        if seqs.is_some() && seqs == last_seqs {
            if stable_since.elapsed() >= Duration::from_secs(3) {
                break;
            }
        } else {
            stable_since = Instant::now();
            last_seqs = seqs;
        }
        if Instant::now() > settle_deadline {
            failures
                .push(format!(
                    "the layers were still changing (or the nodes disagreed) 60 s after the writers stopped (seq of soak-ships, edits, by node: {last_seqs:?})"
                ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_subs.store(true, Ordering::Relaxed);
    stop_views.store(true, Ordering::Relaxed);

    // Channels: in each epoch, every acknowledged message after the subscriber's start in it
    // (up to the last one it saw in that epoch, when the in-process broker's history died
    // with the server in between), live or recovered. In a cluster the history is
    // JetStream's: one epoch per channel from start to end, whatever was killed or cut.
    let acked = sh.acked.lock().clone();
    if sh.history_survives {
        for (name, a) in &acked {
            let seen: BTreeSet<&String> = a.iter().map(|(e, _)| e).collect();
            if seen.len() != 1 {
                failures.push(format!(
                    "{name}: publishes were acknowledged in {} epochs ({seen:?}); JetStream history should survive node kills",
                    seen.len()
                ));
            }
        }
    }
    let mut sub_checked = 0;
    let mut epochs = BTreeSet::new();
    for (name, rec, task) in subs {
        join("a channel subscriber", task, &mut failures).await;
        let rec = rec.lock();
        for (epoch, er) in rec.iter() {
            epochs.insert(epoch.clone());
            let got: BTreeSet<u64> = er.live.iter().chain(er.recovered.iter()).copied().collect();
            let upto = if args.chaos && !sh.history_survives {
                got.last().copied().unwrap_or(0)
            } else {
                u64::MAX
            };
            let missing: Vec<u64> = acked
                .get(&name)
                .map(|a| {
                    a.iter()
                        .filter(|(e, o)| {
                            e == epoch && *o > er.start && *o <= upto && !got.contains(o)
                        })
                        .map(|(_, o)| *o)
                        .collect()
                })
                .unwrap_or_default();
            if !missing.is_empty() {
                failures.push(format!(
                    "{name}: a subscriber lacks {} acknowledged messages of epoch {epoch} (first {:?})",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
        }
        sub_checked += 1;
    }
    // Viewports: what each holds equals a fresh subscription to the same viewport.
    eprintln!("checking the viewports");
    // All at once, each bounded: a viewer that does not end, or a fresh snapshot that does
    // not come, is a failure naming the viewport.
    let checks = viewers.into_iter().enumerate().map(|(v, (bbox, task))| {
        let addrs = addrs.clone();
        async move {
            let held = match tokio::time::timeout(STOP_WAIT, task).await {
                Ok(Ok(Ok(v))) => v,
                Ok(Ok(Err(e))) => return Err(format!("viewer {bbox:?}: {e}")),
                Ok(Err(e)) => return Err(format!("viewer {bbox:?}: {e}")),
                Err(_) => {
                    return Err(format!("viewer {bbox:?} did not stop within {STOP_WAIT:?}"));
                }
            };
            // From another node than the one the viewer started on (the same one without
            // --cluster): every node must hold the same state.
            let fresh = tokio::time::timeout(STOP_WAIT, async {
                let mut c = connect_any(&addrs, v + 1).await?;
                c.call(
                    "layer.subscribe",
                    json!({ "layer": "soak-ships", "bbox": bbox }),
                )
                .await?;
                let mut v = View::new();
                read_snapshot(&mut c, &mut v).await?;
                anyhow::Ok(v)
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no snapshot within {STOP_WAIT:?}")));
            match fresh {
                Ok(f) if f == held => Ok(held.len()),
                Ok(f) => {
                    let diff: Vec<_> = f
                        .iter()
                        .filter(|(k, v)| held.get(*k) != Some(v))
                        .map(|(k, v)| format!("{k}: server {v}, held {:?}", held.get(k)))
                        .chain(
                            held.keys()
                                .filter(|k| !f.contains_key(*k))
                                .map(|k| format!("{k}: held, not in view")),
                        )
                        .take(3)
                        .collect();
                    Err(format!("viewer {bbox:?} differs from the server: {diff:?}"))
                }
                Err(e) => Err(format!("viewer {bbox:?}: fresh snapshot: {e}")),
            }
        }
    });
    let mut view_checked = 0;
    let mut view_features = 0;
    for r in futures_util::future::join_all(checks).await {
        view_checked += 1;
        match r {
            Ok(n) => view_features += n,
            Err(e) => failures.push(e),
        }
    }
    // Edits: versions count the acknowledged edits; the last one's properties are current.
    // Read through every node (each reads the shared store): they must agree.
    eprintln!("checking the edits");
    let mut admins = Vec::new();
    for a in addrs.iter() {
        admins.push(Remote::connect(&a.to_string(), None).await?);
    }
    let admin = &admins[0];
    let acks = acks.lock().clone();
    let mut edits_acked = 0;
    for f in 0..FEATURES {
        let mut mine: Vec<&Ack> = acks.iter().filter(|a| a.0 == f).collect();
        mine.sort_by_key(|a| a.1);
        edits_acked += mine.len();
        let cur = admin
            .call(
                "feature.get",
                &json!({ "layer": "edits", "id": format!("f{f}") }),
            )
            .await?;
        for (i, other) in admins.iter().enumerate().skip(1) {
            let o = other
                .call(
                    "feature.get",
                    &json!({ "layer": "edits", "id": format!("f{f}") }),
                )
                .await?;
            if o["feature"] != cur["feature"] {
                failures.push(format!(
                    "f{f}: node {} holds {}, node 1 {}",
                    i + 1,
                    o["feature"],
                    cur["feature"]
                ));
            }
        }
        let version = cur["feature"]["version"].as_u64().unwrap_or(0);
        if version != 1 + mine.len() as u64 {
            failures.push(format!(
                "f{f}: version {version} after {} acknowledged edits",
                mine.len()
            ));
        }
        if mine.windows(2).any(|w| w[0].1 == w[1].1) {
            failures.push(format!("f{f}: two acknowledged edits with one version"));
        }
        if let Some(last) = mine.last() {
            let p = &cur["feature"]["properties"];
            if p["by"].as_u64() != Some(last.2 as u64) || p["k"].as_u64() != Some(last.3) {
                failures.push(format!(
                    "f{f}: properties {p} are not the last acknowledged edit's"
                ));
            }
        }
    }
    failures.extend(sh.errors.lock().iter().cloned());

    // Resources (soak only: restarts reset them): fds beyond connections over the second
    // half, RSS slope over the second half.
    drop(admins);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Connections still open count against the fds (the tools' `Remote` client keeps its
    // connection until the process exits); what is left over is a leak.
    let conns_end = metric(&metrics_all(&addrs).await, "geostream_connections") as i64;
    let fds_end = fds_all(&pids);
    let fd_kinds_end = fd_kinds_all(&pids);
    // Growth from the middle of the run to the end: the reader pool and SQLite's file
    // handles fill during warm-up and then stay; a leak keeps growing.
    let fd_mid = fd_samples
        .iter()
        .find(|(t, _)| *t >= args.duration as f64 / 2.0)
        .map_or(fds_start - conns_start, |s| s.1);
    let fd_growth = (fds_end - conns_end) - fd_mid;
    let fd_growth_from_start = (fds_end - conns_end) - (fds_start - conns_start);
    let half: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= args.duration as f64 / 2.0)
        .map(|(t, r)| (t / 60.0, r / (1024.0 * 1024.0)))
        .collect();
    let rss_slope = slope(&half);
    // A slope over less than five minutes says more about warm-up (caches, history filling,
    // allocator arenas) than about leaks: it is reported, and checked from 600 s runs on.
    let slope_checked = args.duration >= 600 && !args.chaos;
    if slope_checked && rss_slope > args.max_rss_slope {
        failures.push(format!(
            "RSS grows {rss_slope:.2} MiB/min over the second half (bound {})",
            args.max_rss_slope
        ));
    }
    if !args.chaos && fd_growth > args.max_fd_growth {
        failures.push(format!(
            "open fds beyond connections grew by {fd_growth} over the second half (bound +{})",
            args.max_fd_growth
        ));
    }
    // Every node must still run: one that exited by itself between kills is a failure.
    for (i, s) in servers.iter().enumerate() {
        if let Ok(Some(status)) = s.lock().await.try_wait() {
            failures.push(format!("node {} exited by itself: {status}", i + 1));
        }
    }
    // The cuts were real: the proxied node logged losing NATS (unless every cut fell while
    // it was down).
    let nats_losses: usize = if proxy.is_some() {
        ["log", "err"]
            .iter()
            .map(|ext| {
                std::fs::read_to_string(args.out.join(format!("node-{n}.{ext}")))
                    .unwrap_or_default()
                    .matches("Lost the connection to NATS")
                    .count()
            })
            .sum()
    } else {
        0
    };
    let cuts = sh.cuts.load(Ordering::Relaxed);
    if cuts > 1 && nats_losses == 0 {
        failures.push(format!(
            "{cuts} NATS cuts but node {n} never logged losing NATS: the cut did not reach it"
        ));
    }
    let m = metrics_all(&addrs).await;
    let verdict = json!({
        "ok": failures.is_empty(),
        "mode": match (args.chaos, cluster) {
            (true, true) => "chaos-cluster",
            (true, false) => "chaos",
            (false, true) => "soak-cluster",
            (false, false) => "soak",
        },
        "nodes": n,
        "duration_s": args.duration,
        "failures": failures,
        "server_kills": sh.kills.load(Ordering::Relaxed),
        "kills_by_node": kills_per_node.iter().map(|k| k.load(Ordering::Relaxed)).collect::<Vec<_>>(),
        "nats_cuts": cuts,
        "nats_cut_s": sh.cut_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        "nats_losses_logged": nats_losses,
        "requests_refused": sh.refused.load(Ordering::Relaxed),
        "channel_epochs": epochs.len(),
        "bad_frames_closed": sh.bad_frames.load(Ordering::Relaxed),
        "requests_interrupted": sh.interrupted.load(Ordering::Relaxed),
        "channel_subscribers_checked": sub_checked,
        "messages_acknowledged": acked.values().map(Vec::len).sum::<usize>(),
        "messages_delivered": sh.delivered.load(Ordering::Relaxed),
        "reconnects": sh.reconnects.load(Ordering::Relaxed),
        "gaps": sh.gaps.load(Ordering::Relaxed),
        "viewports_checked": view_checked,
        "viewport_features_checked": view_features,
        "edits_acknowledged": edits_acked,
        "edit_conflicts": sh.conflicts.load(Ordering::Relaxed),
        "stalled_clients": sh.stalls.load(Ordering::Relaxed),
        "slow_consumer_disconnects": metric(&m, "geostream_slow_consumer_disconnects_total"),
        "rss_slope_mib_per_min": rss_slope,
        "rss_slope_bound": args.max_rss_slope,
        "rss_slope_checked": slope_checked,
        "rss_start_mib": samples.first().map_or(0.0, |s| s.1 / 1048576.0),
        "rss_end_mib": samples.last().map_or(0.0, |s| s.1 / 1048576.0),
        "fds_start": fds_start,
        "fds_end": fds_end,
        "connections_start": conns_start,
        "connections_end": conns_end,
        "fd_growth_second_half": fd_growth,
        "fd_growth_from_start": fd_growth_from_start,
        "fd_kinds_start": fd_kinds_start,
        "fd_kinds_end": fd_kinds_end,
        "fd_growth_bound": args.max_fd_growth,
    });
    std::fs::write(
        args.out.join("verdict.json"),
        serde_json::to_string_pretty(&verdict)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    for s in servers.iter() {
        let mut child = s.lock().await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    if verdict["ok"] != true {
        std::process::exit(1);
    }
    Ok(())
}
