//! A small connection to a running geostream server, for the command-line tools
//! (`geostream import`, `geostream replay`): requests with pipelining, no reconnects.
//! Applications use the `geostream-client` crate, which reconnects and resumes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::{self, Encoding, Id, ServerFrame};
use geostream_core::error::RpcError;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Why a remote call failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The server answered with an error.
    #[error("{}: {}", .0.code.name(), .0.message)]
    Rpc(RpcError),
    /// The connection could not be made or broke.
    #[error("connection: {0}")]
    Connection(String),
}

/// Requests waiting for their answers, and whether the connection is gone (then no request
/// may start waiting: nothing would ever answer it).
#[derive(Default)]
struct Pending {
    waiting: HashMap<i64, oneshot::Sender<Result<Value, RpcError>>>,
    closed: bool,
}

type Waiters = Arc<Mutex<Pending>>;

/// A connection using MessagePack.
pub struct Remote {
    out: mpsc::Sender<Message>,
    waiters: Waiters,
    next_id: AtomicI64,
    enc: Encoding,
}

impl Remote {
    /// Connects to `url` (`ws://host:port/v1/ws`, or `http://host:port`, to which `/v1/ws`
    /// is added), optionally with a bearer token.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Remote, RemoteError> {
        let url = ws_url(url);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| RemoteError::Connection(format!("{url}: {e}")))?;
        let enc = Encoding::Msgpack;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("geostream.v1.msgpack"),
        );
        if let Some(t) = token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| RemoteError::Connection("the token is not a valid header".into()))?;
            req.headers_mut().insert("authorization", v);
        }
        // A small read buffer: tungstenite zero-fills all of it before every socket read
        // (128 KiB by default), which dominated the CPU of clients receiving small frames.
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
            .await
            .map_err(|e| RemoteError::Connection(format!("{url}: {e}")))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(256);
        let waiters: Waiters = Arc::default();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let w = waiters.clone();
        // Weak: dropping the `Remote` must end the writer (which closes the connection),
        // whatever the reader still holds.
        let pong = out.downgrade();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let data = match m {
                    Message::Binary(b) => b,
                    Message::Text(t) => t.as_bytes().to_vec().into(),
                    Message::Ping(p) => {
                        if let Some(out) = pong.upgrade() {
                            let _ = out.try_send(Message::Pong(p));
                        }
                        continue;
                    }
                    Message::Close(_) => break,
                    _ => continue,
                };
                match codec::decode_server_frame(enc, &data) {
                    Ok(ServerFrame::Response {
                        id: Id::Int(id),
                        result,
                    }) => {
                        if let Some(tx) = w.lock().waiting.remove(&id) {
                            let _ = tx.send(Ok(result));
                        }
                    }
                    Ok(ServerFrame::Error {
                        id: Some(Id::Int(id)),
                        error,
                    }) => {
                        if let Some(tx) = w.lock().waiting.remove(&id) {
                            let _ = tx.send(Err(error));
                        }
                    }
                    // Pushes and progress are not used by the tools.
                    _ => {}
                }
            }
            // Fail whatever is still waiting, and whatever would start to.
            let mut p = w.lock();
            p.closed = true;
            p.waiting.clear();
        });
        Ok(Remote {
            out,
            waiters,
            next_id: AtomicI64::new(1),
            enc,
        })
    }

    /// Sends a request and returns a future of its answer, so callers can pipeline.
    pub async fn start<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<oneshot::Receiver<Result<Value, RpcError>>, RemoteError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.waiters.lock();
            if p.closed {
                return Err(RemoteError::Connection("the connection closed".into()));
            }
            p.waiting.insert(id, tx);
        }
        let frame = codec::encode_request(self.enc, Some(&Id::Int(id)), method, params);
        self.out
            .send(Message::Binary(frame))
            .await
            .map_err(|_| RemoteError::Connection("the connection closed".into()))?;
        Ok(rx)
    }

    /// Sends a request and waits for its answer.
    pub async fn call<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<Value, RemoteError> {
        let rx = self.start(method, params).await?;
        finish(rx).await
    }
}

/// Waits for the answer of a request sent with [`Remote::start`].
pub async fn finish(rx: oneshot::Receiver<Result<Value, RpcError>>) -> Result<Value, RemoteError> {
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RemoteError::Rpc(e)),
        Err(_) => Err(RemoteError::Connection(
            "the connection closed before the answer".into(),
        )),
    }
}

/// Turns a server address into the WebSocket endpoint URL.
pub fn ws_url(server: &str) -> String {
    let s = server.trim_end_matches('/');
    let s = if let Some(rest) = s.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = s.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if s.starts_with("ws://") || s.starts_with("wss://") {
        s.to_string()
    } else {
        format!("ws://{s}")
    };
    if s.ends_with("/v1/ws") {
        s
    } else {
        format!("{s}/v1/ws")
    }
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn server_addresses_become_endpoint_urls() {
        assert_eq!(ws_url("127.0.0.1:8080"), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(ws_url("http://h:1/"), "ws://h:1/v1/ws");
        assert_eq!(ws_url("https://h"), "wss://h/v1/ws");
        assert_eq!(ws_url("ws://h/v1/ws"), "ws://h/v1/ws");
    }
}
