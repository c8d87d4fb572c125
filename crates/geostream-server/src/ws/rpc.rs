//! Requests and notifications arriving on a WebSocket connection.
//!
//! Short requests run inline in the connection's reader, in the order they arrive (two
//! publishes from one client reach the channel in the order sent). Long requests run as tasks
//! of their own, registered by id so `$/cancelRequest` can abort them; the registry decides
//! who answers: whoever removes the id (the finishing task, or the cancel) sends the one
//! response.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use geostream_core::api::{
    self, CancelParams, ChannelHistoryParams, ChannelPresenceParams, ChannelPresenceResult, ChannelPublishParams, ChannelSubscribeParams,
    HelloParams, HelloResult, Heartbeat, PROTOCOL_VERSION, ProgressParams, ServerSoftware, SessionLimits, UnsubscribeParams,
};
use geostream_core::codec::{self, ClientFrame, Encoding, Id, Params, ZSTD_MAGIC};
use geostream_core::error::{ErrorCode, RpcError};
use geostream_core::payload::Payload;
use geostream_hub::{Outgoing, Session};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::AbortHandle;

use crate::error::{Result, ServerError};
use crate::node::Node;

/// Requests running as their own tasks, by id.
type Running = Arc<Mutex<HashMap<Id, AbortHandle>>>;

/// Largest `hello.info`, in bytes of JSON.
const MAX_INFO_BYTES: usize = 1024;

/// Handles the frames of one connection.
pub(crate) struct Rpc {
    node: Arc<Node>,
    session: Arc<Session>,
    enc: Encoding,
    running: Running,
}

/// Sends `$/progress` notifications for a long request.
#[derive(Clone)]
pub(crate) struct Progress {
    session: Arc<Session>,
    id: Id,
}

impl Progress {
    /// Reports progress.
    pub(crate) fn report(&self, done: u64, total: Option<u64>, message: Option<String>) {
        let p = ProgressParams { id: self.id.clone(), done, total, message };
        let frame = codec::encode_notification(self.session.encoding(), api::push::PROGRESS, &p);
        self.session.outbox.push_always(Outgoing::Frame(frame));
    }
}

impl Rpc {
    pub(crate) fn new(node: Arc<Node>, session: Arc<Session>) -> Self {
        let enc = session.encoding();
        Rpc { node, session, enc, running: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn send(&self, frame: Bytes) {
        self.session.outbox.push_always(Outgoing::Frame(frame));
    }

    fn send_error(&self, id: Option<&Id>, e: &RpcError) {
        self.send(codec::encode_error(self.enc, id, e));
    }

    /// Handles one complete message's payload.
    pub(crate) async fn handle(&mut self, data: &[u8]) {
        let owned;
        let data = if self.enc == Encoding::MsgpackZstd && data.starts_with(&ZSTD_MAGIC) {
            match codec::decompress_bounded(data, self.node.config.websocket.max_frame_bytes) {
                Ok(v) => {
                    owned = v;
                    &owned[..]
                }
                Err(e) => return self.send_error(e.id.as_ref(), &e.error),
            }
        } else {
            data
        };
        match codec::decode_client_frame(self.enc, data) {
            Err(e) => {
                self.node.metrics.request("other", false);
                self.send_error(e.id.as_ref(), &e.error);
            }
            Ok(ClientFrame::Request { id, method, params }) => {
                let start = Instant::now();
                let outcome = self.request(&id, &method, params).await;
                let ok = match outcome {
                    Ok(Some(frame)) => {
                        self.send(frame);
                        true
                    }
                    Ok(None) => true,
                    Err(e) => {
                        self.send_error(Some(&id), &e.to_rpc());
                        false
                    }
                };
                self.node.metrics.request(&method, ok);
                self.node.metrics.request_latency.observe(start.elapsed());
            }
            Ok(ClientFrame::Notification { method, params }) => self.notification(&method, params),
        }
    }

    fn respond<T: Serialize + ?Sized>(&self, id: &Id, result: &T) -> Result<Option<Bytes>> {
        Ok(Some(codec::encode_response(self.enc, id, result)))
    }

    async fn request(&mut self, id: &Id, method: &str, params: Params<'_>) -> Result<Option<Bytes>> {
        match method {
            api::method::HELLO => {
                let p: HelloParams = params.parse()?;
                let r = self.hello(p)?;
                self.respond(id, &r)
            }
            api::method::PING => {
                #[derive(Serialize)]
                struct Pong {
                    #[serde(skip_serializing_if = "Option::is_none")]
                    data: Option<Payload>,
                }
                let data = params.field("data")?;
                self.respond(id, &Pong { data })
            }
            api::method::UNSUBSCRIBE => {
                let p: UnsubscribeParams = params.parse()?;
                self.node.unsubscribe(&self.session, p.sub).await?;
                self.respond(id, &serde_json::json!({}))
            }
            api::method::CHANNEL_SUBSCRIBE => {
                let p: ChannelSubscribeParams = params.parse()?;
                let pending = self.node.subscribe(&self.session, p).await?;
                // The response goes out before any replayed or live message of the subscription.
                self.send(codec::encode_response(self.enc, id, &pending.result));
                self.node.activate(&self.session, pending).await;
                Ok(None)
            }
            api::method::CHANNEL_PUBLISH => {
                let p: ChannelPublishParams = params.parse()?;
                let Some(data) = params.field("data")? else {
                    return Err(ServerError::invalid("invalid params: missing field `data`"));
                };
                let pos = self.node.publish(&p.channel, data).await?;
                self.respond(id, &pos)
            }
            api::method::CHANNEL_HISTORY => {
                let p: ChannelHistoryParams = params.parse()?;
                let r = self.node.history(&p).await?;
                self.respond(id, &r)
            }
            api::method::CHANNEL_PRESENCE => {
                let p: ChannelPresenceParams = params.parse()?;
                let clients = self.node.presence(&p.channel)?;
                self.respond(id, &ChannelPresenceResult { clients })
            }
            other => Err(ServerError::new(ErrorCode::MethodNotFound, format!("unknown method {other:?}"))),
        }
    }

    fn hello(&mut self, p: HelloParams) -> Result<HelloResult> {
        if let Some(v) = p.protocol
            && v != PROTOCOL_VERSION
        {
            return Err(ServerError::invalid(format!("unsupported protocol version {v}; this server speaks {PROTOCOL_VERSION}")));
        }
        if let Some(info) = &p.info {
            let n = serde_json::to_vec(info).map(|v| v.len()).unwrap_or(usize::MAX);
            if n > MAX_INFO_BYTES {
                return Err(ServerError::new(ErrorCode::LimitExceeded, format!("hello.info is {n} bytes; at most {MAX_INFO_BYTES} are allowed")));
            }
        }
        let mut client = self.session.client();
        client.info = p.info;
        self.session.set_client(client.clone());
        let cfg = &self.node.config;
        Ok(HelloResult {
            session: self.session.id().to_string(),
            server: ServerSoftware { name: "geostream".into(), version: env!("CARGO_PKG_VERSION").into() },
            protocol: PROTOCOL_VERSION,
            encoding: self.enc.name().into(),
            user: client.user,
            limits: SessionLimits {
                max_frame_bytes: cfg.websocket.max_frame_bytes,
                max_subscriptions: cfg.limits.max_subscriptions,
                outbox_bytes: cfg.limits.outbox_bytes,
            },
            heartbeat: Heartbeat {
                ping_interval_ms: cfg.websocket.ping_interval().as_millis() as u64,
                idle_timeout_ms: cfg.websocket.idle_timeout().as_millis() as u64,
            },
        })
    }

    fn notification(&mut self, method: &str, params: Params<'_>) {
        match method {
            api::method::CANCEL_REQUEST => {
                let Ok(p) = params.parse::<CancelParams>() else { return };
                let handle = self.running.lock().remove(&p.id);
                if let Some(h) = handle {
                    h.abort();
                    self.node.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.send_error(Some(&p.id), &RpcError::new(ErrorCode::RequestCancelled, "request cancelled"));
                }
            }
            // JSON-RPC forbids answering a notification, even an unknown one.
            other => tracing::debug!(method = other, "Ignoring an unknown notification."),
        }
    }

    /// Runs a long request as its own task that `$/cancelRequest` can abort.
    #[allow(dead_code)] // Used by long-running methods (imports, snapshots).
    pub(crate) fn spawn<F, Fut>(&self, id: Id, method: &'static str, work: F) -> Result<()>
    where
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        let mut running = self.running.lock();
        if running.len() >= self.node.config.websocket.max_concurrent_requests {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!("at most {} requests may run at once on a connection", self.node.config.websocket.max_concurrent_requests),
            ));
        }
        if running.contains_key(&id) {
            return Err(ServerError::invalid(format!("request id {id} is already running")));
        }
        let fut = work(Progress { session: self.session.clone(), id: id.clone() });
        let registry = self.running.clone();
        let session = self.session.clone();
        let node = self.node.clone();
        let task_id = id.clone();
        let start = Instant::now();
        // Held while spawning, so the task cannot finish and look for its entry before it is
        // registered.
        let handle = tokio::spawn(async move {
            let outcome = fut.await;
            if registry.lock().remove(&task_id).is_none() {
                return; // cancelled meanwhile; the canceller answered
            }
            let frame = match &outcome {
                Ok(frame) => frame.clone(),
                Err(e) => codec::encode_error(session.encoding(), Some(&task_id), &e.to_rpc()),
            };
            session.outbox.push_always(Outgoing::Frame(frame));
            node.metrics.request(method, outcome.is_ok());
            node.metrics.request_latency.observe(start.elapsed());
        });
        running.insert(id, handle.abort_handle());
        Ok(())
    }

    /// Aborts every running request (the connection is gone).
    pub(crate) fn abort_all(&self) {
        for (_, h) in self.running.lock().drain() {
            h.abort();
            self.node.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}
