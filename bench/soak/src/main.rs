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
    addr: SocketAddr,
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
            remote = Remote::connect(&addr.to_string(), None).await.ok();
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
            }
            Err(e) => sh.error(format!("publish {channel}: {e}")),
        }
    }
}

async fn channel_subscriber(
    addr: SocketAddr,
    channel: String,
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
    rec: Arc<Mutex<SubRecord>>,
) {
    let mut last: Option<(u64, String)> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut c = match Client::connect(addr).await {
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
        match &last {
            Some((_, e)) if *e == epoch => {
                sh.reconnects.fetch_add(1, Ordering::Relaxed);
                if r["recovered"] != true {
                    sh.error(format!(
                        "{channel}: resume from {last:?} not recovered in the same epoch: {r}"
                    ));
                }
            }
            Some(_) if !sh.chaos => {
                sh.error(format!(
                    "{channel}: the epoch changed without a restart: {r}"
                ));
            }
            _ => {
                // First subscription in this epoch.
                rec.lock().entry(epoch.clone()).or_default().start = position;
                last = Some((position, epoch.clone()));
            }
        }
        let session = Duration::from_millis(rand::rng().random_range(10_000..40_000));
        let until = Instant::now() + session;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            let p = match c.push(Duration::from_millis(500)).await {
                Ok(Some(p)) => p,
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
                            "{channel}: offset {o} after {prev} (duplicate or out of order)"
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
    addr: SocketAddr,
    bbox: [f64; 4],
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
) -> Result<View> {
    loop {
        match follow(addr, bbox, &stop, &sh).await {
            Ok(v) => return Ok(v),
            Err(e) if sh.chaos && !stop.load(Ordering::Relaxed) => {
                let _ = e;
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
    addr: SocketAddr,
    e: usize,
    features: usize,
    rate: u64,
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
    acks: Arc<Mutex<Vec<Ack>>>,
) {
    let mut remote: Option<Remote> = None;
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
                match Remote::connect(&addr.to_string(), None).await {
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
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
                continue;
            };
            match call(r, "feature.patch", &params).await {
                Err(RemoteError::Connection(_)) if sh.chaos => {
                    sh.interrupted.fetch_add(1, Ordering::Relaxed);
                    remote = None;
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

/// Starts `geostream serve` on `listen` (port 0: any) on the run's data directory, which
/// must be empty on the first start.
async fn start_server(
    args: &Args,
    listen: SocketAddr,
    first: bool,
) -> Result<(tokio::process::Child, SocketAddr)> {
    let data = args.out.join("data");
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
    let mut child = tokio::process::Command::new(&args.bin)
        .args(["serve", "--listen", &listen.to_string(), "--data-dir"])
        .arg(&data)
        .env("GEOSTREAM_LOG__LEVEL", "warn")
        .env("GEOSTREAM_CHANNELS__HISTORY_SIZE", "5000")
        .env("GEOSTREAM_LIMITS__MAX_CONNECTIONS_PER_IP", "100000")
        .stdout(append("server.log")?)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", args.bin.display()))?;
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
    let mut err_log = append("server.err").ok().map(tokio::fs::File::from_std);
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(f) = err_log.as_mut() {
                let _ = f.write_all(format!("{l}\n").as_bytes()).await;
            }
        }
    });
    Ok((child, addr))
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
    std::fs::create_dir_all(&args.out)?;
    let points = geostream_server::replay::read_track(&args.track)
        .with_context(|| format!("read {}", args.track.display()))?;
    let (child, addr) = start_server(&args, "127.0.0.1:0".parse()?, true).await?;
    let pid = Arc::new(AtomicU32::new(child.id().context("server pid")?));
    let server = Arc::new(tokio::sync::Mutex::new(child));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let conns_start = metric(&metrics(addr).await?, "geostream_connections") as i64;
    let fds_start = fds(pid.load(Ordering::Relaxed));
    let fd_kinds_start = fd_kinds(pid.load(Ordering::Relaxed));
    println!(
        "server {addr} (pid {}), {fds_start} fds at start; {} s of load{}",
        pid.load(Ordering::Relaxed),
        args.duration,
        if args.chaos {
            ", with SIGKILL restarts and bad frames"
        } else {
            ""
        }
    );

    let sh = Arc::new(Shared {
        chaos: args.chaos,
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
    for _ in 0..args.viewports {
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
            tokio::spawn(viewer(addr, bbox, stop_views.clone(), sh.clone())),
        ));
    }

    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for ch in 0..args.channels {
        let name = format!("soak-{ch}");
        for _ in 0..args.channel_subscribers {
            let rec = Arc::new(Mutex::new(SubRecord::default()));
            subs.push((
                name.clone(),
                rec.clone(),
                tokio::spawn(channel_subscriber(
                    addr,
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
            addr,
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
            addr,
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
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(remote) = Remote::connect(&addr.to_string(), None).await else {
                    if !sh.chaos {
                        sh.error("replay: cannot connect".into());
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
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
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sh.stalls.fetch_add(1, Ordering::Relaxed);
                let _ = stalled(addr, Duration::from_secs(30)).await;
            }
        })
    };
    // Chaos: SIGKILL and restart the server every kill_min..kill_max seconds; malformed
    // frames every 1-3 s.
    let (killer, badder) = if args.chaos {
        let killer = {
            let stop = stop.clone();
            let sh = sh.clone();
            let server = server.clone();
            let pid = pid.clone();
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
                    let mut child = server.lock().await;
                    if let Ok(Some(status)) = child.try_wait() {
                        sh.error(format!("the server exited by itself: {status}"));
                    }
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    sh.kills.fetch_add(1, Ordering::Relaxed);
                    // Restart on the same address (the listener sets SO_REUSEADDR).
                    for attempt in 0.. {
                        match start_server(&args, addr, false).await {
                            Ok((c, _)) => {
                                pid.store(c.id().unwrap_or(0), Ordering::Relaxed);
                                *child = c;
                                break;
                            }
                            Err(e) if attempt < 50 => {
                                let _ = e;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => {
                                sh.error(format!("restart failed: {e}"));
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
            let server = server.clone();
            tokio::spawn(async move {
                let mut kind = 0;
                while !stop.load(Ordering::Relaxed) {
                    let pause = rand::rng().random_range(1000..3000);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    kind += 1;
                    let kills = sh.kills.load(Ordering::Relaxed);
                    if let Err(e) = bad_frame(addr, kind).await {
                        // A kill in between explains a failure; otherwise it is one.
                        let restarting = server.try_lock().is_err();
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

    // Sample every 10 s.
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
        let m = metrics(addr).await.unwrap_or_default();
        let t = begin.elapsed().as_secs_f64();
        let p = pid.load(Ordering::Relaxed);
        let r = rss(p);
        let lat = std::mem::take(&mut *sh.latency.lock());
        let line = format!(
            "{t:.0},{r},{},{},{:.2},{},{}\n",
            fds(p),
            metric(&m, "geostream_outbox_queued_bytes"),
            p99(lat),
            metric(&m, "geostream_connections"),
            sh.delivered.load(Ordering::Relaxed)
        );
        print!("{line}");
        csv.push_str(&line);
        samples.push((t, r as f64));
        fd_samples.push((t, fds(p) - metric(&m, "geostream_connections") as i64));
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
    // layers' sequence numbers have not moved for 3 s (at most 60 s).
    eprintln!("waiting for the layers to settle");
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    let mut last_seqs = None;
    let mut stable_since = Instant::now();
    loop {
        let seqs = async {
            let mut c = Client::connect(addr).await?;
            let a = c.call("layer.get", json!({ "name": "soak-ships" })).await?["seq"].clone();
            let b = c.call("layer.get", json!({ "name": "edits" })).await?["seq"].clone();
            anyhow::Ok((a, b))
        }
        .await
        .ok();
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
                    "the layers were still changing 60 s after the writers stopped (seq of soak-ships, edits: {last_seqs:?})"
                ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_subs.store(true, Ordering::Relaxed);
    stop_views.store(true, Ordering::Relaxed);

    // Channels: in each epoch, every acknowledged message after the subscriber's start in it
    // (up to the last one it saw in that epoch, when the server was killed in between), live
    // or recovered.
    let acked = sh.acked.lock().clone();
    let mut sub_checked = 0;
    let mut epochs = BTreeSet::new();
    for (name, rec, task) in subs {
        join("a channel subscriber", task, &mut failures).await;
        let rec = rec.lock();
        for (epoch, er) in rec.iter() {
            epochs.insert(epoch.clone());
            let got: BTreeSet<u64> = er.live.iter().chain(er.recovered.iter()).copied().collect();
            let upto = if args.chaos {
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
    let checks = viewers.into_iter().map(|(bbox, task)| async move {
        let held = match tokio::time::timeout(STOP_WAIT, task).await {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e))) => return Err(format!("viewer {bbox:?}: {e}")),
            Ok(Err(e)) => return Err(format!("viewer {bbox:?}: {e}")),
            Err(_) => {
                return Err(format!("viewer {bbox:?} did not stop within {STOP_WAIT:?}"));
            }
        };
        let fresh = tokio::time::timeout(STOP_WAIT, async {
            let mut c = Client::connect(addr).await?;
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
    eprintln!("checking the edits");
    let admin = Remote::connect(&addr.to_string(), None).await?;
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
    drop(admin);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = pid.load(Ordering::Relaxed);
    // Connections still open count against the fds (the tools' `Remote` client keeps its
    // connection until the process exits); what is left over is a leak.
    let conns_end = metric(
        &metrics(addr).await.unwrap_or_default(),
        "geostream_connections",
    ) as i64;
    let fds_end = fds(p);
    let fd_kinds_end = fd_kinds(p);
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
    let m = metrics(addr).await.unwrap_or_default();
    let verdict = json!({
        "ok": failures.is_empty(),
        "mode": if args.chaos { "chaos" } else { "soak" },
        "duration_s": args.duration,
        "failures": failures,
        "server_kills": sh.kills.load(Ordering::Relaxed),
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
    let mut child = server.lock().await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    if verdict["ok"] != true {
        std::process::exit(1);
    }
    Ok(())
}
