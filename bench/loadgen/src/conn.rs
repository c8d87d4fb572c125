//! Connections to the server under test: the WebSocket upgrade from a chosen 127.0.0.x source
//! address, frames built and read with geostream-core's codec, and a cheap scan of the pushes
//! the scenarios count by the million.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::{self, Encoding, Id, ServerFrame};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;

/// A WebSocket connection to the server.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Where the load goes and how it is spoken.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    /// The server's address (always loopback).
    pub(crate) addr: SocketAddr,
    /// Further nodes of the same cluster (`--nodes`): connection `i` goes to the `i mod n`-th
    /// of `addr` and these, so the first connection of a scenario is always on `addr`.
    pub(crate) more: &'static [SocketAddr],
    /// The wire encoding every connection negotiates.
    pub(crate) enc: Encoding,
    /// First source address is 127.0.0.`src_first`, ...
    pub(crate) src_first: u8,
    /// ... and connections cycle over this many consecutive addresses.
    pub(crate) src_count: u8,
}

impl Target {
    /// The source address of the `i`-th connection (round-robin over the configured range).
    pub(crate) fn src(&self, i: usize) -> Ipv4Addr {
        let n = usize::from(self.src_count.max(1));
        let last = u8::try_from(i % n).unwrap_or(0);
        Ipv4Addr::new(127, 0, 0, self.src_first.saturating_add(last))
    }

    /// The node the `i`-th connection goes to.
    pub(crate) fn node(&self, i: usize) -> SocketAddr {
        match i % (self.more.len() + 1) {
            0 => self.addr,
            k => self.more[k - 1],
        }
    }

    /// Opens the `i`-th connection, within `timeout`.
    pub(crate) async fn connect(&self, i: usize, timeout: Duration) -> Result<Ws, String> {
        match tokio::time::timeout(timeout, connect(self.node(i), self.src(i), self.enc)).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect timed out after {timeout:?}")),
        }
    }
}

/// Checks that an address is on loopback: the load generator sends nothing anywhere else.
pub(crate) fn require_loopback(addr: &SocketAddr) -> Result<(), String> {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => Ok(()),
        _ => Err(format!(
            "{addr} is not in 127.0.0.0/8; the load generator only targets loopback"
        )),
    }
}

/// Each connection's read buffer, as the shared peer harness's load generator has it.
/// tungstenite's default (128 KiB) is zero-filled before every socket read: with it, half of
/// this process's CPU went to `memset` while 1,000 subscribers read 20 broadcasts a second,
/// and the latency it reported was the load generator's own queueing (see BENCHMARKS.md).
const READ_BUFFER_BYTES: usize = 16 * 1024;

async fn connect(addr: SocketAddr, src: Ipv4Addr, enc: Encoding) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(src.into(), 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr} from {src}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(enc.subprotocol()),
    );
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (ws, resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    if chosen != Some(enc.subprotocol()) {
        return Err(format!(
            "the server chose subprotocol {chosen:?}, not {}",
            enc.subprotocol()
        ));
    }
    Ok(ws)
}

/// A client frame in the connection's encoding (text for JSON, binary otherwise).
pub(crate) fn to_message(enc: Encoding, frame: Bytes) -> Message {
    if enc.is_binary() {
        Message::Binary(frame)
    } else {
        // The codec writes JSON with serde_json, which always produces UTF-8.
        Message::Text(Utf8Bytes::try_from(frame).unwrap_or_else(|_| Utf8Bytes::from("")))
    }
}

/// A request frame.
pub(crate) fn request(enc: Encoding, id: i64, method: &str, params: &Value) -> Message {
    to_message(
        enc,
        codec::encode_request(enc, Some(&Id::Int(id)), method, params),
    )
}

/// The bytes of a data frame, decompressed when the server compressed it (msgpack-zstd);
/// `None` for control frames.
pub(crate) fn frame_bytes(m: Message) -> Option<Bytes> {
    let b = match m {
        Message::Text(t) => Bytes::from(t),
        Message::Binary(b) => b,
        _ => return None,
    };
    if b.starts_with(&codec::ZSTD_MAGIC) {
        inflate(&b)
    } else {
        Some(b)
    }
}

/// Largest decompressed frame: the server's default `max_frame_bytes` (1 MiB) and some room.
const MAX_FRAME: usize = (1 << 20) + (64 << 10);

thread_local! {
    /// One decompression context and output buffer per worker thread: creating a zstd context
    /// per frame costs more than decompressing a 1 KiB frame (it shows at the top of a profile).
    static INFLATER: RefCell<Option<(zstd::bulk::Decompressor<'static>, Vec<u8>)>> =
        const { RefCell::new(None) };
}

fn inflate(b: &[u8]) -> Option<Bytes> {
    INFLATER.with(|z| {
        let mut z = z.borrow_mut();
        if z.is_none() {
            *z = Some((
                zstd::bulk::Decompressor::new().ok()?,
                Vec::with_capacity(MAX_FRAME),
            ));
        }
        let (d, buf) = z.as_mut()?;
        buf.clear();
        d.decompress_to_buffer(b, buf).ok()?;
        Some(Bytes::copy_from_slice(buf))
    })
}

/// A connection used in request/response style (set-up phases, editors, round trips).
pub(crate) struct Rpc {
    pub(crate) ws: Ws,
    pub(crate) enc: Encoding,
    next_id: i64,
    /// Push frames received while waiting for responses.
    pub(crate) pushes_seen: u64,
}

impl Rpc {
    pub(crate) fn new(ws: Ws, enc: Encoding) -> Rpc {
        Rpc {
            ws,
            enc,
            next_id: 1,
            pushes_seen: 0,
        }
    }

    /// Sends one request and waits (at most `timeout`) for its response.
    pub(crate) async fn call(
        &mut self,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let mut v = self.call_many(&[(method, params.clone())], timeout).await?;
        v.pop()
            .ok_or_else(|| "no response".to_string())?
            .map_err(|e| format!("{method}: {e}"))
    }

    /// Sends all requests at once (pipelined), then waits for every response; each is
    /// `Ok(result)` or `Err(error text)`.
    pub(crate) async fn call_many(
        &mut self,
        reqs: &[(&str, Value)],
        timeout: Duration,
    ) -> Result<Vec<Result<Value, String>>, String> {
        let first = self.next_id;
        for (method, params) in reqs {
            let id = self.next_id;
            self.next_id += 1;
            self.ws
                .feed(request(self.enc, id, method, params))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        self.ws.flush().await.map_err(|e| format!("send: {e}"))?;
        let mut out: Vec<Option<Result<Value, String>>> = vec![None; reqs.len()];
        let mut left = reqs.len();
        let deadline = tokio::time::Instant::now() + timeout;
        while left > 0 {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(format!("{left} responses missing after {timeout:?}")),
                Ok(None) => return Err("connection closed".into()),
                Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            let Some(b) = frame_bytes(m) else { continue };
            let (id, r) = match codec::decode_server_frame(self.enc, &b) {
                Ok(ServerFrame::Response {
                    id: Id::Int(id),
                    result,
                }) => (id, Ok(result)),
                Ok(ServerFrame::Error {
                    id: Some(Id::Int(id)),
                    error,
                }) => (id, Err(format!("{}: {}", error.code.name(), error.message))),
                Ok(ServerFrame::Error { error, .. }) => {
                    return Err(format!("error without id: {}", error.message));
                }
                Ok(ServerFrame::Notification { .. }) => {
                    self.pushes_seen += 1;
                    continue;
                }
                Ok(ServerFrame::Response { .. }) => continue,
                Err(e) => return Err(e.to_string()),
            };
            let Some(slot) = usize::try_from(id - first)
                .ok()
                .and_then(|i| out.get_mut(i))
            else {
                continue;
            };
            if slot.is_none() {
                left -= 1;
            }
            *slot = Some(r);
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Err("missing".into())))
            .collect())
    }
}

/// Opens `n` connections with at most `concurrency` handshakes in flight; returns them in
/// order with the failures counted (a failure gives `None`).
pub(crate) async fn connect_many(
    target: Target,
    n: usize,
    first_index: usize,
    concurrency: usize,
    timeout: Duration,
) -> (Vec<Option<Ws>>, Vec<String>) {
    let mut out: Vec<Option<Ws>> = Vec::with_capacity(n);
    let mut errors = Vec::new();
    let mut it = 0..n;
    let mut set = tokio::task::JoinSet::new();
    let mut slots: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    loop {
        while set.len() < concurrency.max(1) {
            let Some(i) = it.next() else { break };
            set.spawn(async move { (i, target.connect(first_index + i, timeout).await) });
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        match r {
            Ok((i, Ok(ws))) => slots[i] = Some(ws),
            Ok((_, Err(e))) => {
                if errors.len() < 10 {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    out.extend(slots);
    (out, errors)
}

/// The frames of a connection after its set-up: anything but data frames is skipped.
pub(crate) async fn next_data(ws: &mut Ws) -> Option<Result<Bytes, String>> {
    loop {
        match ws.next().await? {
            Ok(m) => {
                if let Some(b) = frame_bytes(m) {
                    return Some(Ok(b));
                }
            }
            Err(e) => return Some(Err(e.to_string())),
        }
    }
}
