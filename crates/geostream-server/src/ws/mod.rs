//! The WebSocket transport: `GET /v1/ws`.
//!
//! The HTTP upgrade is answered here (RFC 6455 section 4.2.2); the encoding is chosen by
//! subprotocol. After the upgrade the raw TCP stream is taken back from hyper and served by
//! [`conn`]: one reader task and one writer task per connection.

pub(crate) mod conn;
#[cfg(feature = "ws-echo")]
pub mod echo;
pub(crate) mod frame;
pub(crate) mod pipeline;
pub(crate) mod rpc;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::BytesMut;
use geostream_core::codec::Encoding;
use geostream_core::error::ErrorCode;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use crate::error::http_error;
use crate::node::Node;

/// The GUID of RFC 6455 section 1.3, appended to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Picks the encoding from the offered subprotocols: the first one we speak; JSON when none
/// is offered; `Err` when some are offered but none is ours.
pub(crate) fn choose_encoding(headers: &HeaderMap) -> Result<Option<Encoding>, String> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find_map(|s| Encoding::from_subprotocol(s))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "none of the offered subprotocols ({}) is supported; offer {}, {} or {}",
                offered.join(", "),
                Encoding::Json.subprotocol(),
                Encoding::Msgpack.subprotocol(),
                Encoding::MsgpackZstd.subprotocol()
            )
        })
}

/// What the upgrade request established: who the client is and its place in the
/// connection limits.
pub(crate) struct Admitted {
    pub(crate) principal: crate::auth::Principal,
    pub(crate) permit: crate::limits::ConnectionPermit,
}

/// Answers the upgrade request and hands the connection to [`conn::serve`].
pub(crate) async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return http_error(
            ErrorCode::InvalidRequest,
            "this endpoint speaks WebSocket: send an Upgrade: websocket request",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = http_error(
            ErrorCode::InvalidRequest,
            "unsupported WebSocket version; use 13",
        );
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return http_error(ErrorCode::InvalidRequest, "Sec-WebSocket-Key is missing");
    };
    if base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map(|k| k.len())
        != Ok(16)
    {
        return http_error(
            ErrorCode::InvalidRequest,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        );
    }
    if let Err(e) = crate::guard::check_origin(&node.config, headers) {
        return e.into_response();
    }
    let principal = match node.auth.from_request(headers, req.uri().query()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let permit = match node.connections.admit(peer.ip()) {
        Ok(p) => p,
        Err(refused) => {
            node.metrics
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = http_error(ErrorCode::LimitExceeded, refused.to_string());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
    };
    let admitted = Admitted { principal, permit };
    let headers = req.headers();
    let selected = match choose_encoding(headers) {
        Ok(s) => s,
        Err(m) => return http_error(ErrorCode::InvalidRequest, m),
    };
    if node.is_draining() {
        return http_error(
            ErrorCode::Unavailable,
            "the server is shutting down; reconnect to another node or retry",
        );
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return http_error(
            ErrorCode::InvalidRequest,
            "this connection cannot be upgraded (HTTP/2 WebSocket is not supported)",
        );
    };
    let accept = accept_key(key.as_bytes());
    let encoding = selected.unwrap_or(Encoding::Json);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "WebSocket upgrade failed.");
                return;
            }
        };
        match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
            Ok(parts) => {
                // `read_buf` is a view into hyper's read buffer (8 KiB or more): keep only
                // the bytes the client sent after the request, so an idle connection does
                // not hold hyper's buffer for its whole life.
                let leftover = BytesMut::from(&parts.read_buf[..]);
                drop(parts.read_buf);
                conn::serve(
                    parts.io.into_inner(),
                    leftover,
                    node,
                    encoding,
                    peer,
                    admitted,
                )
                .await
            }
            Err(_) => tracing::error!("Upgraded connection is not a TCP stream."),
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(e) = selected {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(e.subprotocol()),
        );
    }
    r.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_choice() {
        let mut h = HeaderMap::new();
        assert_eq!(choose_encoding(&h), Ok(None));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("foo, geostream.v1.msgpack, geostream.v1.json"),
        );
        assert_eq!(choose_encoding(&h), Ok(Some(Encoding::Msgpack)));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("foo"),
        );
        assert!(choose_encoding(&h).is_err());
    }
}
