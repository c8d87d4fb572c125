//! Backpressure you can see: slow clients behind a TCP proxy that this test owns and that
//! forwards the server's bytes at a set rate (a few KB/s, or not at all). On loopback the
//! kernel buffers megabytes for a socket, so a client with a small receive buffer alone
//! hardly slows the server; the proxy reads from the server through a 4 KiB receive buffer
//! and only as fast as its rate, so the pressure reaches the server's outbox. One test per
//! outbox policy:
//!
//! - a channel subscriber gets `gap` for what it missed and recovers it from history;
//! - a feature subscriber gets coalesced state: the latest version of every feature, nothing
//!   lost at the end, fewer pushes than changes;
//! - a connection over budget for `limits.slow_consumer_grace_secs` is closed with 4008, and
//!   one that reads nothing at all is let go within the grace plus the close wait, even when
//!   it keeps pinging;
//! - fast subscribers beside twenty slow ones keep their latency (p99 within 2x of the run
//!   without them) and the memory of a real `geostream` process stays under a stated bound.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, Ws, http};
use futures_util::SinkExt;
use geostream_core::codec::Encoding;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};

/// A rate that means "no limit".
const UNLIMITED: u64 = u64::MAX;

/// A TCP proxy in front of a server: client-to-server bytes pass freely, server-to-client
/// bytes at `rate` bytes per second (0: not at all), for every connection through it.
struct Proxy {
    addr: SocketAddr,
    rate: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rate = Arc::new(AtomicU64::new(UNLIMITED));
        let r = rate.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let socket = TcpSocket::new_v4().unwrap();
                // The server's bytes wait in the server, not in the kernel: a small receive
                // buffer, and a small segment size, which keeps the congestion window and
                // so the server's send buffer (autotuned from it) small.
                socket.set_recv_buffer_size(4096).unwrap();
                set_mss(&socket, 536);
                let Ok(server) = socket.connect(upstream).await else {
                    continue;
                };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let rate = r.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let rate = rate.load(Ordering::Relaxed);
                        if rate == 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        // Slices of 50 ms at the set rate.
                        let want = if rate == UNLIMITED {
                            buf.len()
                        } else {
                            ((rate / 20) as usize).clamp(1, buf.len())
                        };
                        let n = match sr.read(&mut buf[..want]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if rate != UNLIMITED {
                            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64))
                                .await;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Proxy { addr, rate, task }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }
}

/// Sets `TCP_MAXSEG` (the segment size announced to the server) before connecting.
#[allow(unsafe_code)]
fn set_mss(socket: &TcpSocket, mss: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int of the given size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw const mss).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A metric's value from `/metrics` (the first series of that name).
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, _, m) = http(addr, "GET", "/metrics", &[], None).await;
    let m = String::from_utf8(m).unwrap();
    m.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// A 1 KiB channel message.
fn body(i: u64) -> Value {
    json!({ "i": i, "pad": "x".repeat(1000) })
}

/// Publishes messages `1..=count` in small acknowledged batches, never more than 32 ahead of
/// what `read` (the fast subscriber's count) says it has received: on a machine loaded by
/// the whole suite its reader may be scheduled late, and its 64 KiB budget must not run out
/// for that (the test is about the slow one).
async fn publish(addr: SocketAddr, channel: &str, count: u64, read: &AtomicU64) {
    let mut p = Ws::connect(&format!("ws://{addr}/v1/ws"), Encoding::Msgpack).await;
    for start in (1..=count).step_by(8) {
        let waited = Instant::now();
        while read.load(Ordering::Acquire) + 32 < start {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "the fast subscriber stopped reading at {}",
                read.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut ids = Vec::new();
        for i in start..(start + 8).min(count + 1) {
            ids.push(
                p.send_request(
                    "channel.publish",
                    json!({ "channel": channel, "data": body(i) }),
                )
                .await,
            );
        }
        for id in ids {
            p.response(id).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_channel_subscriber_gets_a_gap_and_recovers_from_history() {
    const BUDGET: usize = 64 * 1024;
    const COUNT: u64 = 600;
    let srv = TestServer::start_with(|c| {
        c.limits.outbox_bytes = BUDGET;
        c.limits.slow_consumer_grace_secs = 600;
        c.channels.history_size = 10_000;
    })
    .await;
    let proxy = Proxy::start(srv.addr).await;
    let mut slow = Ws::connect(&proxy.ws_url(), Encoding::Json).await;
    slow.ok("channel.subscribe", json!({ "channel": "c" }))
        .await;
    let mut fast = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    fast.ok("channel.subscribe", json!({ "channel": "c" }))
        .await;
    proxy.set_rate(4 * 1024);
    let read = Arc::new(AtomicU64::new(0));
    let counted = read.clone();
    let reader = tokio::spawn(async move {
        for expected in 1..=COUNT {
            let m = fast.push_of("message").await;
            assert_eq!(m["offset"], expected, "the fast subscriber misses nothing");
            counted.store(expected, Ordering::Release);
        }
    });
    publish(srv.addr, "c", COUNT, &read).await;
    reader.await.unwrap();
    // The pressure reached the server: pushes were dropped, and what waits for the slow
    // client is bounded by its budget (plus one message).
    assert!(metric(srv.addr, "geostream_outbox_dropped_total").await > 0.0);
    let queued = metric(srv.addr, "geostream_outbox_queued_bytes").await;
    assert!(queued <= (BUDGET + 2048) as f64, "queued {queued}");

    // The client catches up: messages, and gaps where it lost some.
    proxy.set_rate(UNLIMITED);
    let mut got = BTreeSet::new();
    let mut gaps = Vec::new();
    while let Some((method, p)) = slow.try_push(Duration::from_secs(2)).await {
        match method.as_str() {
            "message" => {
                got.insert(p["offset"].as_u64().unwrap());
            }
            "gap" => gaps.push(p["from"].as_u64().unwrap()),
            other => panic!("unexpected push {other}"),
        }
    }
    assert!(
        !gaps.is_empty(),
        "the slow subscriber was told what it missed"
    );
    assert!((got.len() as u64) < COUNT, "it did miss messages");
    for g in &gaps {
        assert!(
            !got.contains(g),
            "gap {g} starts at a message it did not get"
        );
    }
    // Everything missed is in the history.
    let mut since = gaps[0] - 1;
    let epoch = slow
        .ok("channel.history", json!({ "channel": "c", "limit": 1 }))
        .await["position"]["epoch"]
        .clone();
    loop {
        let r = slow
            .ok(
                "channel.history",
                json!({ "channel": "c", "since": { "offset": since, "epoch": epoch }, "limit": 1000 }),
            )
            .await;
        let msgs = r["messages"].as_array().unwrap();
        for m in msgs {
            got.insert(m["offset"].as_u64().unwrap());
        }
        if r["more"] != true || msgs.is_empty() {
            break;
        }
        since = msgs.last().unwrap()["offset"].as_u64().unwrap();
    }
    assert_eq!(got, (1..=COUNT).collect::<BTreeSet<_>>(), "nothing is lost");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_feature_subscriber_gets_the_latest_state_of_every_feature() {
    const FEATURES: usize = 20;
    const ROUNDS: u64 = 60;
    let srv = TestServer::start_with(|c| {
        c.limits.outbox_bytes = 64 * 1024;
        c.limits.slow_consumer_grace_secs = 600;
    })
    .await;
    let mut editor = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    editor
        .ok(
            "layer.create",
            json!({ "name": "ships", "last_writer_wins": true }),
        )
        .await;
    for f in 0..FEATURES {
        editor
            .ok(
                "feature.create",
                json!({ "layer": "ships", "feature": {
            "type": "Feature", "id": format!("s{f}"),
            "geometry": { "type": "Point", "coordinates": [f as f64 * 0.1, 1.0] },
            "properties": { "n": 0 } } }),
            )
            .await;
    }
    let proxy = Proxy::start(srv.addr).await;
    let mut slow = Ws::connect(&proxy.ws_url(), Encoding::Json).await;
    slow.ok(
        "layer.subscribe",
        json!({ "layer": "ships", "bbox": [-10, -10, 10, 10] }),
    )
    .await;
    // State as the client holds it: id -> (version, n).
    let mut held: HashMap<String, (u64, u64)> = HashMap::new();
    loop {
        let p = slow.push_of("snapshot").await;
        for f in p["features"].as_array().unwrap() {
            held.insert(
                f["id"].as_str().unwrap().into(),
                (
                    f["version"].as_u64().unwrap(),
                    f["properties"]["n"].as_u64().unwrap(),
                ),
            );
        }
        if p["last"] == true {
            break;
        }
    }
    assert_eq!(held.len(), FEATURES);
    proxy.set_rate(2 * 1024);
    // Every feature changes ROUNDS times; each change is ~600 bytes on the wire.
    let mut latest: HashMap<String, u64> = HashMap::new();
    for round in 1..=ROUNDS {
        let mut ids = Vec::new();
        for f in 0..FEATURES {
            ids.push((
                format!("s{f}"),
                editor
                    .send_request(
                        "feature.patch",
                        json!({ "layer": "ships", "id": format!("s{f}"),
                            "properties": { "n": round, "pad": "y".repeat(500 + round as usize % 7) } }),
                    )
                    .await,
            ));
        }
        for (id, rid) in ids {
            let r = editor.response(rid).await.unwrap();
            latest.insert(id, r["version"].as_u64().unwrap());
        }
    }
    assert!(
        metric(srv.addr, "geostream_outbox_coalesced_total").await > 0.0,
        "the pressure reached the server's outbox"
    );
    proxy.set_rate(UNLIMITED);
    let mut pushes = 0;
    while let Some((method, p)) = slow.try_push(Duration::from_secs(2)).await {
        assert_eq!(method, "feature", "{p}");
        pushes += 1;
        let id = p["id"].as_str().unwrap().to_string();
        let version = p["version"].as_u64().unwrap();
        let entry = held.get_mut(&id).expect("a known feature");
        assert!(
            version > entry.0,
            "versions only go forward: {id} {version} after {}",
            entry.0
        );
        entry.0 = version;
        if let Some(n) = p["properties"]["n"].as_u64() {
            entry.1 = n;
        } else if let Some(n) = p["feature"]["properties"]["n"].as_u64() {
            entry.1 = n;
        }
    }
    for (id, v) in &latest {
        assert_eq!(
            held[id],
            (*v, ROUNDS),
            "{id} ends at its latest version and state"
        );
    }
    let changes = FEATURES * ROUNDS as usize;
    assert!(
        pushes < changes,
        "coalesced: {pushes} pushes for {changes} changes"
    );
    srv.shutdown().await;
}

/// Publishes 1 KiB messages at about `per_sec` until `stop` is set, on a connection that is
/// open when this returns.
async fn publish_until(
    addr: SocketAddr,
    channel: &'static str,
    per_sec: u64,
    stop: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let mut p = Ws::connect(&format!("ws://{addr}/v1/ws"), Encoding::Msgpack).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec as u32);
        let mut i = 0;
        let mut pending = Vec::new();
        while stop.load(Ordering::Relaxed) == 0 {
            tick.tick().await;
            i += 1;
            pending.push(
                p.send_request(
                    "channel.publish",
                    json!({ "channel": channel, "data": body(i) }),
                )
                .await,
            );
            if pending.len() == 16 {
                for id in pending.drain(..) {
                    p.response(id).await.unwrap();
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_over_budget_is_closed_with_4008_within_the_grace() {
    const GRACE: u64 = 2;
    let srv = TestServer::start_with(|c| {
        c.limits.outbox_bytes = 64 * 1024;
        c.limits.slow_consumer_grace_secs = GRACE;
    })
    .await;
    let proxy = Proxy::start(srv.addr).await;
    let mut slow = Ws::connect(&proxy.ws_url(), Encoding::Json).await;
    slow.ok("channel.subscribe", json!({ "channel": "c" }))
        .await;
    proxy.set_rate(2 * 1024);
    let stop = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let publisher = publish_until(srv.addr, "c", 200, stop.clone()).await;
    // The server gives up on it once it has been over budget for the grace period.
    let deadline = Duration::from_secs(GRACE + 3);
    loop {
        if metric(srv.addr, "geostream_slow_consumer_disconnects_total").await >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < deadline,
            "not closed as a slow consumer within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decided = start.elapsed();
    stop.store(1, Ordering::Relaxed);
    publisher.await.unwrap();
    // It reads again: what was written, then the close frame with 4008.
    proxy.set_rate(UNLIMITED);
    let close = tokio::time::timeout(Duration::from_secs(20), slow.closed())
        .await
        .expect("the close frame arrives")
        .expect("a close frame, not just the end of the stream");
    assert_eq!(u16::from(close.code), 4008, "{close:?}");
    println!("slow consumer closed after {decided:?} (grace {GRACE} s)");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_let_go_even_while_it_pings() {
    const GRACE: u64 = 1;
    let srv = TestServer::start_with(|c| {
        c.limits.outbox_bytes = 64 * 1024;
        c.limits.slow_consumer_grace_secs = GRACE;
        c.websocket.ping_interval_secs = 1;
        c.websocket.idle_timeout_secs = 60;
    })
    .await;
    let proxy = Proxy::start(srv.addr).await;
    let mut stalled = Ws::connect(&proxy.ws_url(), Encoding::Json).await;
    stalled
        .ok("channel.subscribe", json!({ "channel": "c" }))
        .await;
    proxy.set_rate(0);
    let stop = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let publisher = publish_until(srv.addr, "c", 200, stop.clone()).await;
    // The stalled client and the publisher.
    let baseline = metric(srv.addr, "geostream_connections").await;
    assert_eq!(baseline, 2.0);
    // The stalled client keeps talking (pings every 200 ms), so the idle timeout never
    // applies: only the slow-consumer rule can free its connection.
    let pinger = tokio::spawn(async move {
        loop {
            use tokio_tungstenite::tungstenite::Message;
            if stalled
                .stream
                .send(Message::Ping(vec![1].into()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Over budget for the grace, then the close wait (3 s) for a close frame it cannot
    // receive, then at most one reader tick (half the ping interval).
    let deadline = Duration::from_secs(GRACE + 3 + 3);
    loop {
        let open = metric(srv.addr, "geostream_connections").await;
        if open <= baseline - 1.0 {
            break;
        }
        assert!(
            start.elapsed() < deadline,
            "the stalled connection is still open after {:?} ({open} open)",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stalled connection let go after {:?}", start.elapsed());
    stop.store(1, Ordering::Relaxed);
    publisher.await.unwrap();
    pinger.abort();
    srv.shutdown().await;
}

/// `geostream serve` as a child process (for its real memory use).
struct Child {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: common::tempdir::Dir,
}

impl Child {
    async fn start(env: &[(&str, &str)]) -> Child {
        let dir = common::tempdir::Dir::new("bp-proc");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_geostream"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("GEOSTREAM_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the geostream binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    return rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
            panic!("the server exited before listening");
        })
        .await
        .expect("the server listens in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Child {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }
}

/// Publishes `count` messages at `per_sec`, each stamped with the microseconds since
/// `epoch`; the fast subscribers measure publish-to-receive latency. Returns them and the
/// p99 in milliseconds.
async fn latency_run(
    addr: SocketAddr,
    epoch: Instant,
    fast: Vec<Ws>,
    count: u64,
    per_sec: u32,
) -> (Vec<Ws>, f64) {
    let url = format!("ws://{addr}/v1/ws");
    let mut readers = Vec::new();
    for mut ws in fast {
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for _ in 0..count {
                let m = ws.push_of("message").await;
                let t = m["data"]["t"].as_u64().unwrap();
                lat.push((epoch.elapsed().as_micros() as u64).saturating_sub(t));
            }
            (ws, lat)
        }));
    }
    let mut p = Ws::connect(&url, Encoding::Msgpack).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
    let mut pending = Vec::new();
    for i in 0..count {
        tick.tick().await;
        let t = epoch.elapsed().as_micros() as u64;
        pending.push(
            p.send_request(
                "channel.publish",
                json!({ "channel": "live", "data": { "i": i, "t": t, "pad": "z".repeat(1000) } }),
            )
            .await,
        );
        if pending.len() == 16 {
            for id in pending.drain(..) {
                p.response(id).await.unwrap();
            }
        }
    }
    for id in pending {
        p.response(id).await.unwrap();
    }
    let mut fast = Vec::new();
    let mut all = Vec::new();
    for r in readers {
        let (ws, lat) = r.await.unwrap();
        fast.push(ws);
        all.extend(lat);
    }
    all.sort_unstable();
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)] as f64 / 1000.0;
    (fast, p99)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_subscribers_keep_their_latency_and_memory_stays_bounded_beside_slow_ones() {
    const SLOW: usize = 20;
    const BUDGET: u64 = 256 * 1024;
    /// What one slow connection may hold: its outbox budget, plus the writer's chunk in
    /// flight and its write buffer (64 KiB each).
    const PER_SLOW: u64 = BUDGET + 2 * 64 * 1024;
    /// Allocator and runtime slack, independent of the number of slow clients.
    const SLACK: u64 = 32 << 20;
    let srv = Child::start(&[
        ("GEOSTREAM_LIMITS__OUTBOX_BYTES", "262144"),
        ("GEOSTREAM_LIMITS__SLOW_CONSUMER_GRACE_SECS", "600"),
    ])
    .await;
    let url = format!("ws://{}/v1/ws", srv.addr);
    let epoch = Instant::now();
    let mut fast = Vec::new();
    for _ in 0..4 {
        let mut ws = Ws::connect(&url, Encoding::Msgpack).await;
        ws.ok("channel.subscribe", json!({ "channel": "live" }))
            .await;
        fast.push(ws);
    }
    // Warm up, then the run without slow subscribers.
    let (fast, _) = latency_run(srv.addr, epoch, fast, 200, 200).await;
    let (fast, alone) = latency_run(srv.addr, epoch, fast, 1000, 200).await;
    let rss_alone = srv.rss();

    let proxy = Proxy::start(srv.addr).await;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut ws = Ws::connect(&proxy.ws_url(), Encoding::Json).await;
        ws.ok("channel.subscribe", json!({ "channel": "live" }))
            .await;
        slow.push(ws);
    }
    proxy.set_rate(1024);
    let (_fast, beside) = latency_run(srv.addr, epoch, fast, 1000, 200).await;
    let queued = metric(srv.addr, "geostream_outbox_queued_bytes").await;
    let dropped = metric(srv.addr, "geostream_outbox_dropped_total").await;
    let rss_beside = srv.rss();
    println!(
        "p99 alone {alone:.2} ms, beside {SLOW} slow {beside:.2} ms; RSS {} -> {} MiB; \
         queued {queued} bytes; dropped {dropped}",
        rss_alone >> 20,
        rss_beside >> 20
    );
    assert!(dropped > 0.0, "the slow subscribers did fall behind");
    assert!(
        queued <= (SLOW as u64 * (BUDGET + 2048)) as f64,
        "queued {queued} bytes for {SLOW} slow subscribers"
    );
    // p99 within 2x of the run without slow subscribers; the baseline is taken as at least
    // 5 ms, the scheduling noise of a debug build on a shared two-core machine.
    assert!(
        beside <= 2.0 * alone.max(5.0),
        "p99 {beside:.2} ms beside slow subscribers, {alone:.2} ms without"
    );
    let bound = rss_alone + SLOW as u64 * PER_SLOW + SLACK;
    assert!(
        rss_beside <= bound,
        "RSS {} MiB beside {SLOW} slow subscribers, bound {} MiB",
        rss_beside >> 20,
        bound >> 20
    );
    drop(slow);
}
