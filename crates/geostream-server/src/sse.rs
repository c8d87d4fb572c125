//! Server-Sent Events: `GET /v1/sse?channel=a&channel=b`.
//!
//! One-way and resumable. Every `message` event carries an `id:` that records the position
//! of every channel of the stream (`chat~EPOCH~42,news~EPOCH~7`: channel, epoch and offset,
//! joined with `~`, entries joined with `,`; neither character is allowed in channel names).
//! A browser's `EventSource` sends the last one back as `Last-Event-ID` when it reconnects,
//! and the stream resumes from there without loss; clients that cannot set headers may pass
//! the same value as `?since=`. Event data is the push's params object as JSON.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use geostream_core::api::{self, ChannelSubscribeParams, GapPush, Position};
use geostream_core::codec::{Encoding, encode_push};
use geostream_core::error::ErrorCode;
use geostream_hub::{Outgoing, PushEvent, Session};

use crate::error::{ServerError, http_error};
use crate::node::Node;

/// Formats a stream position as an event id.
pub(crate) fn format_event_id(positions: &[(Arc<str>, String, u64)]) -> String {
    let mut s = String::new();
    for (i, (ch, epoch, off)) in positions.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(ch);
        s.push('~');
        s.push_str(epoch);
        s.push('~');
        s.push_str(itoa::Buffer::new().format(*off));
    }
    s
}

/// Parses an event id back into positions by channel.
pub(crate) fn parse_event_id(id: &str) -> Result<HashMap<String, Position>, String> {
    let mut out = HashMap::new();
    for entry in id.split(',').filter(|e| !e.is_empty()) {
        let mut parts = entry.split('~');
        let (Some(ch), Some(epoch), Some(off), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "invalid event id entry {entry:?}; expected channel~epoch~offset"
            ));
        };
        let offset = off
            .parse::<u64>()
            .map_err(|_| format!("invalid offset {off:?} in event id"))?;
        out.insert(
            ch.to_string(),
            Position {
                offset,
                epoch: epoch.to_string(),
            },
        );
    }
    Ok(out)
}

/// Ends the session when the stream is dropped (the client went away or the server closed).
struct Guard {
    node: Arc<Node>,
    session: Arc<Session>,
    /// This stream's place in the connection limits, freed when it ends.
    _permit: crate::limits::ConnectionPermit,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.node
            .metrics
            .sse_connections
            .fetch_sub(1, Ordering::Relaxed);
        let node = self.node.clone();
        let session = self.session.clone();
        tokio::spawn(async move { node.close_session(&session).await });
    }
}

struct Stream {
    guard: Guard,
    positions: Vec<(Arc<str>, String, u64)>,
    batch: VecDeque<Outgoing>,
    first: Option<Bytes>,
    keepalive: tokio::time::Interval,
    done: bool,
}

fn event(out: &mut Vec<u8>, id: Option<&str>, name: Option<&str>, data: impl FnOnce(&mut Vec<u8>)) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    data(out);
    out.extend_from_slice(b"\n\n");
}

impl Stream {
    fn format(&mut self, item: Outgoing, out: &mut Vec<u8>) {
        match item {
            Outgoing::Push { sub, push } | Outgoing::State { sub, push, .. } => {
                let id = match push.event() {
                    PushEvent::Message {
                        channel, offset, ..
                    } => {
                        if let Some(p) = self.positions.iter_mut().find(|p| p.0 == *channel) {
                            p.2 = *offset;
                        }
                        Some(format_event_id(&self.positions))
                    }
                    _ => None,
                };
                let method = push.event().method();
                let name = (method != api::push::MESSAGE).then_some(method);
                event(out, id.as_deref(), name, |o| {
                    let _ = push.frame(Encoding::Json).write_json_params(sub, o);
                });
            }
            Outgoing::Gap {
                sub,
                channel,
                from,
                epoch,
            } => {
                let f = encode_push(
                    Encoding::Json,
                    api::push::GAP,
                    &GapPush {
                        channel: Cow::Borrowed(&channel),
                        from,
                        epoch: Cow::Borrowed(&epoch),
                    },
                    None,
                );
                event(out, None, Some(api::push::GAP), |o| {
                    let _ = f.write_json_params(sub, o);
                });
            }
            Outgoing::Frame(_) | Outgoing::Control(_) | Outgoing::Skip => {}
        }
    }

    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if let Some(b) = self.first.take() {
            return Some((Ok(b), self));
        }
        let session = self.guard.session.clone();
        let node = self.guard.node.clone();
        let traffic = node.metrics.traffic(Encoding::Json);
        loop {
            if self.done {
                return None;
            }
            tokio::select! {
                _ = session.outbox.ready() => {
                    let close = session.outbox.drain(&mut self.batch, 64 * 1024);
                    let mut out = Vec::new();
                    let mut n = 0;
                    while let Some(item) = self.batch.pop_front() {
                        self.format(item, &mut out);
                        n += 1;
                    }
                    if let Some(c) = close {
                        event(&mut out, None, Some("close"), |o| {
                            let _ = serde_json::to_writer(o, &serde_json::json!({ "code": c.code, "reason": c.reason }));
                        });
                        self.done = true;
                    }
                    if !out.is_empty() {
                        traffic.frames_out.fetch_add(n, Ordering::Relaxed);
                        traffic.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
                        return Some((Ok(Bytes::from(out)), self));
                    }
                }
                _ = self.keepalive.tick() => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
                }
            }
        }
    }
}

/// Opens an event stream.
pub(crate) async fn stream(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<crate::auth::Principal>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let mut channels: Vec<String> = Vec::new();
    let mut since = None;
    let mut presence = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "channel" if !channels.iter().any(|c| *c == v) => channels.push(v.into_owned()),
            "channel" => {}
            "since" => since = Some(v.into_owned()),
            "presence" => presence = v == "true" || v == "1",
            _ => {}
        }
    }
    if channels.is_empty() {
        return http_error(
            ErrorCode::InvalidParams,
            "give at least one channel: /v1/sse?channel=NAME",
        );
    }
    if let Err(e) = crate::guard::check_origin(&node.config, &headers) {
        return e.into_response();
    }
    for c in &channels {
        if let Err(e) = who.read_channel(c) {
            return e.into_response();
        }
    }
    let max = node.config.limits.max_subscriptions;
    if channels.len() > max {
        return http_error(
            ErrorCode::LimitExceeded,
            format!("at most {max} channels per stream"),
        );
    }
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(since);
    let mut resume = match last_id.as_deref().map(parse_event_id) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return http_error(ErrorCode::InvalidParams, e),
        None => HashMap::new(),
    };
    if node.is_draining() {
        return http_error(ErrorCode::Unavailable, "the server is shutting down; retry");
    }
    // SSE streams count against the same connection limits as WebSockets.
    let permit = match node.connections.admit(peer.ip()) {
        Ok(p) => p,
        Err(refused) => {
            node.metrics.refused.fetch_add(1, Ordering::Relaxed);
            let mut r = http_error(ErrorCode::LimitExceeded, refused.to_string());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
    };
    let session = node.open_session(Encoding::Json, who.user.clone());
    node.metrics.sse_connections.fetch_add(1, Ordering::Relaxed);
    let guard = Guard {
        node: node.clone(),
        session: session.clone(),
        _permit: permit,
    };
    let mut first = Vec::new();
    let mut positions = Vec::new();
    for ch in &channels {
        let since = resume.remove(ch);
        let resuming = since.clone();
        let pending = match node
            .streams
            .subscribe_channel(
                &session,
                ChannelSubscribeParams {
                    channel: ch.clone(),
                    since,
                    presence,
                },
            )
            .await
        {
            Ok(p) => p,
            Err(e) => return ServerError::from(e).into_response(), // the guard closes the session
        };
        // Position before the replayed messages (which advance it as they are sent).
        let start = match (&resuming, pending.result.recovered) {
            (Some(p), Some(true)) => p.offset,
            _ => pending.result.position.offset,
        };
        positions.push((
            Arc::<str>::from(ch.as_str()),
            pending.result.position.epoch.clone(),
            start,
        ));
        event(&mut first, None, Some("subscribed"), |o| {
            let _ = serde_json::to_writer(o, &pending.result);
        });
        node.streams.activate_channel(&session, pending).await;
    }
    // An initial id, so a client that reconnects before any message still resumes exactly.
    first.extend_from_slice(format!("id: {}\n\n", format_event_id(&positions)).as_bytes());
    let keepalive_every = Duration::from_secs(node.config.sse.keepalive_secs.max(1));
    let keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + keepalive_every,
        keepalive_every,
    );
    let s = Stream {
        guard,
        positions,
        batch: VecDeque::new(),
        first: Some(Bytes::from(first)),
        keepalive,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(s, Stream::next));
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        let p = vec![
            (Arc::<str>::from("chat"), "AbC123xy".to_string(), 42),
            (Arc::<str>::from("a/b:c#d"), "e".to_string(), 0),
        ];
        let id = format_event_id(&p);
        assert_eq!(id, "chat~AbC123xy~42,a/b:c#d~e~0");
        let back = parse_event_id(&id).unwrap();
        assert_eq!(
            back["chat"],
            Position {
                offset: 42,
                epoch: "AbC123xy".into()
            }
        );
        assert_eq!(back["a/b:c#d"].offset, 0);
        assert!(parse_event_id("chat~e").is_err());
        assert!(parse_event_id("chat~e~x").is_err());
    }
}
