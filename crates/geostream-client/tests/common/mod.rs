//! Test support: real servers (in this process, on real sockets) that can be stopped and
//! started again on the same port and data directory, a TCP proxy that can cut connections
//! (mid-frame) or refuse them, and waiting helpers that wait on conditions, not sleeps.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use geostream_client::{
    Backoff, ChannelEvent, ChannelStream, ClientOptions, ConnectionState, FeatureEvent,
    FeatureStream, StateStream,
};
use geostream_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// How long a test waits for anything before failing. Generous: the machine is shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// A data directory removed on drop.
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        let p = std::env::temp_dir().join(format!(
            "geostream-client-test-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&p).unwrap();
        DataDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn config(dir: &DataDir) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    c.shutdown.drain_secs = 3;
    c
}

impl TestServer {
    /// Starts a server on a port of the system's choosing.
    pub async fn start(dir: &DataDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_at("127.0.0.1:0".parse().unwrap(), dir, tweak).await
    }

    /// Starts a server on `addr` (retrying while the port is still held by a previous one).
    pub async fn start_at(
        addr: SocketAddr,
        dir: &DataDir,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut cfg = config(dir);
        tweak(&mut cfg);
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match geostream_server::bind(addr) {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("bind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            geostream_server::run(listener, cfg, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Graceful shutdown (clients get 1012), waiting until the server has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("server stops in time")
                .unwrap();
        }
    }

    /// The server's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .expect("metrics in time")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name)?;
                let rest = rest.strip_prefix("{}").unwrap_or(rest);
                rest.trim().parse::<f64>().ok()
            })
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A TCP proxy in front of a server, to cut connections as a network would.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: SocketAddr,
    accepting: AtomicBool,
    blackhole: AtomicBool,
    cut: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            accepting: AtomicBool::new(true),
            blackhole: AtomicBool::new(false),
            cut: watch::channel(0).0,
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !st.accepting.load(Ordering::SeqCst) {
                    drop(client); // refused: the handshake fails
                    continue;
                }
                tokio::spawn(pipe(client, st.clone()));
            }
        });
        Proxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Refuse (accept and drop at once) new connections, or accept them again.
    pub fn set_accepting(&self, on: bool) {
        self.state.accepting.store(on, Ordering::SeqCst);
    }

    /// Stop delivering the server's bytes to clients (they are held back, unseen), so
    /// requests reach the server but their responses do not come back.
    pub fn set_blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::SeqCst);
    }

    /// Cuts every open connection. Of the bytes held back by the blackhole, the first few
    /// (never a whole frame) are delivered first, so the client sees a frame cut in the
    /// middle. Turns the blackhole off for later connections.
    pub fn cut(&self) {
        self.state.blackhole.store(false, Ordering::SeqCst);
        self.state.cut.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.cut.send_modify(|g| *g += 1);
    }
}

async fn pipe(client: TcpStream, st: Arc<ProxyState>) {
    let mut cut = st.cut.subscribe();
    let Ok(upstream) = TcpStream::connect(st.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let held: Arc<Mutex<Vec<u8>>> = Arc::default();
    let held2 = held.clone();
    let st2 = st.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if uw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let (tx_down, mut rx_down) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let down_read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match ur.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if st2.blackhole.load(Ordering::SeqCst) {
                        held2.lock().unwrap().extend_from_slice(&buf[..n]);
                    } else if tx_down.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down_read => {}
        _ = async {
            while let Some(chunk) = rx_down.recv().await {
                if cw.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        } => {}
        _ = cut.changed() => {
            let partial: Vec<u8> = {
                let h = held.lock().unwrap();
                h[..h.len().min(7)].to_vec()
            };
            if !partial.is_empty() {
                let _ = cw.write_all(&partial).await;
            }
        }
    }
    // Dropping both halves of both sockets closes them.
}

/// Options for tests: quick reconnects, a short heartbeat.
pub fn fast_options() -> ClientOptions {
    ClientOptions::default()
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            multiplier: 2.0,
            max_attempts: None,
        })
        .heartbeat(Duration::from_secs(5), Duration::from_secs(10))
        .request_timeout(WAIT)
}

/// Polls `f` until it returns true (every 20 ms, at most [`WAIT`]).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next feature event, failing after [`WAIT`].
pub async fn next_feature(s: &mut FeatureStream) -> FeatureEvent {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a feature event in time")
        .expect("the stream is open")
}

/// The next channel event, failing after [`WAIT`].
pub async fn next_channel(s: &mut ChannelStream) -> ChannelEvent {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a channel event in time")
        .expect("the stream is open")
}

/// The next state, failing after [`WAIT`].
pub async fn next_state(s: &mut StateStream) -> ConnectionState {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a state change in time")
        .expect("the state stream is open")
}

/// Waits for a state matching `pred`, skipping others.
pub async fn state_where(s: &mut StateStream, pred: impl Fn(&ConnectionState) -> bool) {
    loop {
        let st = next_state(s).await;
        if pred(&st) {
            return;
        }
    }
}

pub fn point(id: &str, x: f64, y: f64, props: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": props })
}

/// A plain HTTP GET: status, headers (lower-case names) and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("a response in time")
        .unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut body = out[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16)
                .unwrap();
            rest = &rest[end + 2..];
            if n == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
        body = decoded;
    }
    (status, headers, body)
}
