//! A WebSocket echo endpoint for conformance testing (the Autobahn test suite), compiled only
//! with the `ws-echo` feature, which the `ws_echo` example and the tests enable; the
//! `geostream` binary never serves it.
//!
//! It runs the same framing code as `/v1/ws` ([`super::frame`]: the decoder with every check
//! on client frames, server frame headers and close frames) and the same connection pieces
//! ([`super::conn`]: reading on readiness into a buffer taken only when there is something to
//! read, the close-code echo, the closing handshake), with an echo in place of the JSON-RPC
//! dispatch: text comes back as text and binary as binary, pings are answered with pongs.
//! What it does not exercise is the outbox between the hub and the writer (a protocol
//! concern of its own, covered by the backpressure tests).

use std::io;

use bytes::BytesMut;
use geostream_core::error::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conn::{self, Read};
use super::frame::{self, Decoder, Message, opcode};

/// Largest opening handshake accepted.
const MAX_REQUEST: usize = 16 * 1024;

/// Serves echo connections on `listener` until an accept fails. Refuses a listener on a
/// non-loopback address: this endpoint is for tests on one machine.
pub async fn serve(listener: TcpListener, max_message: usize) -> io::Result<()> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the WebSocket echo endpoint serves loopback addresses only, not {addr}"),
        ));
    }
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(connection(stream, max_message));
    }
}

async fn connection(mut stream: TcpStream, max_message: usize) {
    let _ = stream.set_nodelay(true);
    let Some(leftover) = handshake(&mut stream).await else {
        return;
    };
    let (rd, mut wr) = stream.into_split();
    let mut dec = Decoder::new(max_message);
    let mut buf = leftover;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut close = None;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Message::Text(t))) => frame::put_frame(&mut out, opcode::TEXT, &t),
                Ok(Some(Message::Binary(b))) => frame::put_frame(&mut out, opcode::BINARY, &b),
                Ok(Some(Message::Ping(p))) => frame::put_frame(&mut out, opcode::PONG, &p),
                Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Close(code))) => close = Some(CloseReason::echo(code)),
                Ok(None) => break,
                Err(e) => close = Some(e.into()),
            }
            if close.is_some() {
                break;
            }
        }
        if let Some(c) = &close {
            frame::put_close(&mut out, c.code, c.reason);
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close.is_some() {
            // As on /v1/ws: the server ends the TCP connection after its close frame.
            let _ = wr.shutdown().await;
            conn::linger(&rd, max_message).await;
            return;
        }
        if rd.readable().await.is_err() {
            return;
        }
        if let Read::Gone = conn::read_some(&rd, &mut buf) {
            return;
        }
    }
}

/// Reads and answers the opening handshake (RFC 6455 section 4.2). Returns the bytes the
/// client sent after the request, or `None` when the request was refused or the client left.
async fn handshake(stream: &mut TcpStream) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_REQUEST {
            refuse(stream, "request headers too large").await;
            return None;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    let head = buf.split_to(end);
    let Ok(head) = std::str::from_utf8(&head) else {
        refuse(stream, "request is not UTF-8").await;
        return None;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if !request_line.starts_with("GET ") || !request_line.ends_with(" HTTP/1.1") {
        refuse(stream, "expected GET ... HTTP/1.1").await;
        return None;
    }
    let headers: Vec<(String, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    if !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        refuse(stream, "send an Upgrade: websocket request").await;
        return None;
    }
    if value("sec-websocket-version") != Some("13") {
        refuse(stream, "unsupported WebSocket version; use 13").await;
        return None;
    }
    let Some(key) = value("sec-websocket-key") else {
        refuse(stream, "Sec-WebSocket-Key is missing").await;
        return None;
    };
    use base64::Engine;
    if base64::engine::general_purpose::STANDARD
        .decode(key)
        .map(|k| k.len())
        != Ok(16)
    {
        refuse(stream, "Sec-WebSocket-Key must be 16 bytes in base64").await;
        return None;
    }
    // No extension is negotiated (so no permessage-deflate) and no subprotocol is selected.
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nServer: geostream-echo\r\n\r\n",
        super::accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    Some(buf)
}

async fn refuse(stream: &mut TcpStream, why: &str) {
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
