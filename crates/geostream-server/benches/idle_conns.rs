//! Server memory per idle WebSocket connection.
//!
//! Starts the release `geostream` binary (the one `cargo bench` builds next to this bench) on
//! a fresh data directory, reads its resident memory (`VmRSS` in `/proc/PID/status`), opens
//! `IDLE_CONNS` (default 10,000) WebSocket connections to `/v1/ws` from source addresses
//! 127.0.0.2 and up (round-robin, so no source runs out of ports), sends nothing, waits
//! `IDLE_SETTLE_SECS` (default 3) and reads the memory again:
//! bytes per connection = (held - before) / connected, as the peer harness computes it.
//!
//! ```sh
//! cargo bench -p geostream-server --bench idle_conns
//! IDLE_CONNS=19000 cargo bench -p geostream-server --bench idle_conns
//! ```
//!
//! The connections need one file each in this process and in the server: keep `IDLE_CONNS`
//! below the open-file limit (`ulimit -n`). Everything stays on 127.0.0.0/8, the server is
//! killed at the end, and nothing outlives the run.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Source addresses used round-robin (127.0.0.2 ..= 127.0.0.{1 + SOURCES}).
const SOURCES: u8 = 19;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Opens one WebSocket connection (the upgrade only) and returns the stream.
async fn open(addr: SocketAddr, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut s = socket.connect(addr).await?;
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: geostream.v1.json\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed during the upgrade"));
        }
        head.extend_from_slice(&b[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned(),
        ));
    }
    Ok(s)
}

fn main() {
    let conns = env_num("IDLE_CONNS", 10_000) as usize;
    let settle = Duration::from_secs(env_num("IDLE_SETTLE_SECS", 3));
    let data = std::env::temp_dir().join(format!("geostream-idle-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("data dir");
    let bin =
        std::env::var("IDLE_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_geostream").into());
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the geostream binary");
    let pid = child.id();
    // The server prints "geostream X listening on http://ADDR ..." to stderr.
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut said = String::new();
    let addr: SocketAddr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("the server exited before listening: {said}");
        };
        said.push_str(&line);
        said.push('\n');
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("listen address");
        }
    };
    // Keep draining the server's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        // Let start-up (store, basemap seeding) finish before the baseline.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_kib(pid);
        let started = Instant::now();
        let mut held = Vec::with_capacity(conns);
        let mut failed = 0usize;
        let mut first_error = None;
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0usize;
        while next < conns || !tasks.is_empty() {
            while next < conns && tasks.len() < 256 {
                let source = Ipv4Addr::new(127, 0, 0, 2 + (next % SOURCES as usize) as u8);
                tasks.spawn(open(addr, source));
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok(Ok(s))) => held.push(s),
                Some(Ok(Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Some(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
                None => break,
            }
        }
        let ramp = started.elapsed();
        tokio::time::sleep(settle).await;
        let after = rss_kib(pid);
        (before, after, held, failed, first_error, ramp)
    });
    let (before, after, held, failed, first_error, ramp) = result;
    let connected = held.len();
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / connected.max(1) as f64;
    println!("idle WebSocket connections to {addr} (server pid {pid}, {bin})");
    println!(
        "connected {connected}/{conns} in {:.1} s, failed {failed}{}",
        ramp.as_secs_f64(),
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "server RSS: {before} KiB before, {after} KiB held ({:.1} MiB more)",
        after.saturating_sub(before) as f64 / 1024.0
    );
    println!("server bytes per idle connection: {per_conn:.0}");
    drop(held);
    drop(rt);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
}
