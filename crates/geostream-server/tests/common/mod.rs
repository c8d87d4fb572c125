//! Test support: a server on 127.0.0.1:0, a WebSocket client speaking the raw protocol in any
//! encoding, and small HTTP / SSE helpers. Every test gets its own server, so tests run in
//! parallel.
#![allow(dead_code, unreachable_pub)]

pub mod receiver;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::{self, Encoding, Id, ServerFrame};
use geostream_core::error::RpcError;
use geostream_server::Config;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub data_dir: tempdir::Dir,
}

pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "geostream-test-{tag}-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
        /// Keeps the directory (for a restart on the same data).
        pub fn keep(self) -> PathBuf {
            let p = self.0.clone();
            std::mem::forget(self);
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }
}

/// A configuration suitable for tests (short timeouts, data in a temporary directory).
pub fn test_config(dir: &tempdir::Dir) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    c.shutdown.drain_secs = 3;
    c.shutdown.unready_secs = 0;
    c
}

impl TestServer {
    /// Starts a server with the default test configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempdir::Dir::new("srv");
        let mut cfg = test_config(&dir);
        tweak(&mut cfg);
        TestServer::start_config(cfg, dir).await
    }

    pub async fn start_config(cfg: Config, dir: tempdir::Dir) -> TestServer {
        geostream_server::telemetry::init(&geostream_server::config::LogConfig {
            level: "warn".into(),
            ..Default::default()
        });
        let listener = geostream_server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
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
            data_dir: dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins a graceful shutdown and waits for it to finish.
    pub async fn shutdown(mut self) {
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
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol-level WebSocket client for tests.
pub struct Ws {
    pub enc: Encoding,
    pub stream: Stream,
    next_id: i64,
    /// Notifications and pushes received while waiting for a response.
    pub backlog: std::collections::VecDeque<(String, Value)>,
    /// Responses to other requests received while waiting for one (pipelined requests may
    /// be answered in any order).
    answered: std::collections::HashMap<i64, Result<Value, RpcError>>,
}

/// What the server sent, as a test sees it.
#[derive(Debug)]
pub enum Got {
    Frame(ServerFrame),
    Closed(Option<CloseFrame>),
}

impl Ws {
    /// Connects offering the subprotocol of `enc`.
    pub async fn connect(url: &str, enc: Encoding) -> Ws {
        Ws::connect_with(url, Some(enc.subprotocol()))
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// Connects offering `subprotocol` (or none).
    pub async fn connect_with(
        url: &str,
        subprotocol: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(p) = subprotocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (stream, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")?;
        let enc = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_subprotocol)
            .unwrap_or(Encoding::Json);
        Ok(Ws {
            enc,
            stream,
            next_id: 0,
            backlog: Default::default(),
            answered: Default::default(),
        })
    }

    /// Sends raw bytes as a frame of the encoding's type.
    pub async fn send_raw(&mut self, bytes: Bytes) {
        let msg = if self.enc.is_binary() {
            Message::Binary(bytes)
        } else {
            Message::Text(String::from_utf8(bytes.to_vec()).unwrap().into())
        };
        self.stream.send(msg).await.unwrap();
    }

    /// Sends a request without waiting; returns its id.
    pub async fn send_request(&mut self, method: &str, params: Value) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        let frame = codec::encode_request(self.enc, Some(&Id::Int(id)), method, &params);
        self.send_raw(frame).await;
        id
    }

    /// Sends a notification.
    pub async fn notify(&mut self, method: &str, params: Value) {
        let frame = codec::encode_request(self.enc, None, method, &params);
        self.send_raw(frame).await;
    }

    /// Receives the next frame (or the close).
    pub async fn recv(&mut self) -> Got {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame in time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Got::Frame(codec::decode_server_frame(self.enc, t.as_bytes()).unwrap());
                }
                Some(Ok(Message::Binary(b))) => {
                    return Got::Frame(codec::decode_server_frame(self.enc, &b).unwrap());
                }
                Some(Ok(Message::Close(c))) => return Got::Closed(c),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Got::Closed(None),
            }
        }
    }

    /// Waits for the response to request `id`, keeping pushes that arrive meanwhile.
    pub async fn response(&mut self, id: i64) -> Result<Value, RpcError> {
        if let Some(r) = self.answered.remove(&id) {
            return r;
        }
        loop {
            match self.recv().await {
                Got::Frame(ServerFrame::Response {
                    id: Id::Int(i),
                    result,
                }) => {
                    if i == id {
                        return Ok(result);
                    }
                    assert!(
                        self.answered.insert(i, Ok(result)).is_none(),
                        "{i} answered twice"
                    );
                }
                Got::Frame(ServerFrame::Error {
                    id: Some(Id::Int(i)),
                    error,
                }) => {
                    if i == id {
                        return Err(error);
                    }
                    assert!(
                        self.answered.insert(i, Err(error)).is_none(),
                        "{i} answered twice"
                    );
                }
                Got::Frame(ServerFrame::Notification { method, params }) => {
                    self.backlog.push_back((method, params))
                }
                Got::Frame(other) => panic!("unexpected frame while waiting for {id}: {other:?}"),
                Got::Closed(c) => panic!("closed while waiting for {id}: {c:?}"),
            }
        }
    }

    /// Sends a request and waits for its response.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.send_request(method, params).await;
        self.response(id).await
    }

    /// Like `call`, panicking on an error.
    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        let m = method.to_string();
        self.call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{m} failed: {e}"))
    }

    /// The next notification or push.
    pub async fn push(&mut self) -> (String, Value) {
        if let Some(p) = self.backlog.pop_front() {
            return p;
        }
        match self.recv().await {
            Got::Frame(ServerFrame::Notification { method, params }) => (method, params),
            Got::Frame(other) => panic!("expected a push, got {other:?}"),
            Got::Closed(c) => panic!("closed while waiting for a push: {c:?}"),
        }
    }

    /// The next push of `method`, skipping others.
    pub async fn push_of(&mut self, method: &str) -> Value {
        loop {
            let (m, p) = self.push().await;
            if m == method {
                return p;
            }
        }
    }

    /// Asserts nothing arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        assert!(
            self.backlog.is_empty(),
            "unexpected backlog: {:?}",
            self.backlog
        );
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                // Heartbeats are not messages (tungstenite answers pings by itself).
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(m) => panic!("expected silence, got {m:?}"),
            }
        }
    }

    /// The next notification or push if one arrives within `d`.
    pub async fn try_push(&mut self, d: Duration) -> Option<(String, Value)> {
        if let Some(p) = self.backlog.pop_front() {
            return Some(p);
        }
        tokio::time::timeout(d, self.push()).await.ok()
    }

    /// Waits for the server to close the connection; returns the close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match self.recv().await {
                Got::Closed(c) => return c,
                Got::Frame(_) => continue,
            }
        }
    }
}

/// A plain HTTP request; returns status, headers and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(
            body.unwrap_or_default(),
        )))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("response in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// A JSON request; returns status and parsed body.
/// One series of a node's `/metrics` (its name with labels, as printed); panics when the node
/// does not print it.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (status, _, body) = http(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("metrics are text");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let b = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (status, _, bytes) = http(
        addr,
        method,
        path,
        &[("content-type", "application/json")],
        b,
    )
    .await;
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

/// Publishes over HTTP.
pub async fn http_publish(addr: SocketAddr, channel: &str, data: Value) -> Value {
    let (status, body) = http_json(
        addr,
        "POST",
        &format!("/v1/channels/{channel}/messages"),
        Some(json!({ "data": data })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An open SSE stream.
pub struct Sse {
    body: hyper::body::Incoming,
    buf: String,
    pub status: u16,
    /// The last `id:` seen, as EventSource keeps it.
    pub last_id: Option<String>,
}

impl Sse {
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Sse {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .uri(path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = send
            .send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        Sse {
            body: resp.into_body(),
            buf: String::new(),
            status,
            last_id: None,
        }
    }

    /// The next event (comments skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut ev = Event::default();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                        self.last_id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data.push_str(v);
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event in time")?;
            let frame = frame.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event named `name` (the default event type is "message").
    pub async fn next_of(&mut self, name: &str) -> Event {
        loop {
            let e = self.next().await.expect("stream open");
            if e.event.as_deref().unwrap_or("message") == name {
                return e;
            }
        }
    }
}

/// A WebSocket connection driven byte by byte, for frames a well-behaved client never sends.
pub struct RawWs {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Performs the opening handshake offering `subprotocol`.
    pub async fn connect(addr: SocketAddr, subprotocol: &str) -> RawWs {
        Self::connect_with_buffer(addr, subprotocol, None).await
    }

    /// As [`RawWs::connect`], with a small receive buffer (a client that reads slowly fills
    /// the server's queue sooner).
    pub async fn connect_with_buffer(
        addr: SocketAddr,
        subprotocol: &str,
        recv_buffer: Option<u32>,
    ) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                assert!(
                    head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                    "RFC 6455 sample accept key: {head}"
                );
                buf.drain(..i + 4);
                return RawWs { stream, buf };
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one server frame: (opcode, payload). `None` at end of stream.
    pub async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                let (len, h) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= h + len {
                    let payload = self.buf[h..h + len].to_vec();
                    self.buf.drain(..h + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame if one arrives within `d` (`None` on silence or end of stream).
    pub async fn try_frame(&mut self, d: Duration) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(d, self.frame()).await.ok().flatten()
    }

    /// Reads frames until a close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, p)) = self.frame().await {
            if op == 0x8 {
                return Some(u16::from_be_bytes([p[0], p[1]]));
            }
        }
        None
    }
}

/// A masked client frame.
pub fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut out = vec![0x80 | op];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The repository's vendored real data (`datasets/`, with `manifest.json`).
pub fn datasets() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    assert!(
        dir.join("manifest.json").is_file(),
        "the vendored data is missing: {} has no manifest.json",
        dir.display()
    );
    dir
}

/// The shared PostgreSQL and NATS the cluster tests use (overridable for other machines).
pub mod backends {
    use std::sync::Arc;

    use geostream_broker::{BrokerHandler, HistoryLimits, NatsBroker, NatsOptions, Publication};
    use geostream_store::{PostgresOptions, PostgresStore};

    /// One test's share of the shared PostgreSQL and NATS: a schema and a subject prefix of
    /// its own, both checked reachable before any node starts, and removed when this is
    /// dropped, at the end of the test whether it passed or failed (so a failing run leaves
    /// nothing in a developer's database). Tests that use it run on a multi-threaded runtime.
    pub struct Backends {
        pub schema: String,
        pub prefix: String,
        store: PostgresStore,
        broker: NatsBroker,
    }

    impl Backends {
        /// Schema `gs_TAG_…` and prefix `gsTAG_…`, unique to this call.
        pub async fn new(tag: &str) -> Backends {
            let suffix = geostream_broker::new_epoch().to_ascii_lowercase();
            let schema = format!("gs_{tag}_{suffix}");
            let prefix = format!("gs{tag}_{suffix}");
            let store = PostgresStore::connect(PostgresOptions {
                url: pg_url(),
                schema: schema.clone(),
                pool_size: 2,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL with PostGIS is needed at {} for this test: {e}\n\
                     Run scripts/test.sh (it installs PostGIS and starts PostgreSQL), or set \
                     GEOSTREAM_TEST_POSTGRES_URL.",
                    pg_url()
                )
            });
            let broker = nats(&prefix).await;
            Backends {
                schema,
                prefix,
                store,
                broker,
            }
        }
    }

    /// A test's own connection to the shared NATS under `prefix` (to publish, to check
    /// NATS is reachable, and to delete the prefix's streams at the end).
    pub async fn nats(prefix: &str) -> NatsBroker {
        NatsBroker::connect(
            NatsOptions {
                url: nats_url(),
                prefix: prefix.to_owned(),
                ..Default::default()
            },
            HistoryLimits::default(),
            Arc::new(Nothing),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "NATS with JetStream is needed at {} for this test: {e}\n\
                 Run scripts/test.sh (it starts NATS), or set GEOSTREAM_TEST_NATS_URL.",
                nats_url()
            )
        })
    }

    impl Drop for Backends {
        fn drop(&mut self) {
            // `Drop` cannot await: this thread blocks while the runtime's other workers drive
            // the connections.
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    if let Err(e) = self.store.drop_schema().await {
                        eprintln!("could not drop schema {}: {e}", self.schema);
                    }
                    if let Err(e) = self.broker.delete_streams().await {
                        eprintln!("could not delete the streams of {}: {e}", self.prefix);
                    }
                })
            });
        }
    }

    /// PostgreSQL for the cluster tests.
    pub fn pg_url() -> String {
        std::env::var("GEOSTREAM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// NATS for the cluster tests.
    pub fn nats_url() -> String {
        std::env::var("GEOSTREAM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
    }

    /// A broker handler that ignores everything (a test's own broker connection, used only
    /// to publish or to check NATS is reachable).
    pub struct Nothing;

    impl BrokerHandler for Nothing {
        fn on_publication(&self, _: &str, _: &Publication, _: &Arc<str>) {}
        fn on_event(&self, _: &str, _: &Arc<geostream_broker::BusEvent>) {}
    }
}
