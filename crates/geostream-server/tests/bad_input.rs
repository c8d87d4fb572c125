//! Hostile and broken input: each gets the documented error (or close code, when the peer
//! broke the protocol itself), changes nothing, and the server keeps serving everyone else.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{RawWs, TestServer, Ws, client_frame, http, http_json};
use futures_util::SinkExt;
use geostream_core::codec::{Encoding, Id, ServerFrame};
use geostream_core::error::{CloseCode, ErrorCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A client that keeps working while others misbehave.
async fn bystander(srv: &TestServer) -> Ws {
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    ws.ok("channel.subscribe", json!({ "channel": "calm" }))
        .await;
    ws
}

async fn still_served(ws: &mut Ws, n: u64) {
    let r = ws
        .ok("channel.publish", json!({ "channel": "calm", "data": n }))
        .await;
    assert!(r["offset"].as_u64().unwrap() >= 1);
    assert_eq!(ws.push_of("message").await["data"], n);
}

async fn error_of(ws: &mut Ws) -> (Option<Id>, ErrorCode, String) {
    match ws.recv().await {
        common::Got::Frame(ServerFrame::Error { id, error }) => {
            (id, error.code, error.message.to_string())
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_stays() {
    let srv = TestServer::start().await;
    let mut calm = bystander(&srv).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;

    ws.send_raw(Bytes::from_static(b"{this is not json")).await;
    let (id, code, _) = error_of(&mut ws).await;
    assert_eq!((id, code), (None, ErrorCode::ParseError));

    ws.send_raw(Bytes::from(format!(
        "{}{}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    )))
    .await;
    let (_, code, _) = error_of(&mut ws).await;
    assert_eq!(
        code,
        ErrorCode::InvalidRequest,
        "a batch is refused, however deep"
    );

    ws.send_raw(Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{}{}}}"#,
        "{\"a\":".repeat(5000),
        "}".repeat(5000)
    )))
    .await;
    let (_, code, _) = error_of(&mut ws).await;
    assert_eq!(
        code,
        ErrorCode::ParseError,
        "nesting beyond serde_json's limit"
    );

    ws.send_raw(Bytes::from_static(br#"{"jsonrpc":"2.0","id":2}"#))
        .await;
    let (id, code, _) = error_of(&mut ws).await;
    assert_eq!((id, code), (Some(Id::Int(2)), ErrorCode::InvalidRequest));

    assert_eq!(
        ws.call("no.such.method", json!({})).await.unwrap_err().code,
        ErrorCode::MethodNotFound
    );
    let e = ws
        .call("channel.publish", json!({ "channel": 5, "data": 1 }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParams);
    assert!(e.message.contains("channel"), "{}", e.message);
    let e = ws
        .call("channel.publish", json!({ "channel": "calm" }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParams);
    assert!(e.message.contains("data"), "{}", e.message);
    let e = ws
        .call("channel.subscribe", json!({ "channel": "has space" }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParams);
    let e = ws
        .call("channel.subscribe", json!({ "channel": "$sys" }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParams);
    assert_eq!(
        ws.call("unsubscribe", json!({ "sub": 77 }))
            .await
            .unwrap_err()
            .code,
        ErrorCode::UnknownSubscription
    );
    assert_eq!(
        ws.call("hello", json!({ "protocol": 9 }))
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidParams
    );
    let e = ws
        .call("hello", json!({ "info": "x".repeat(5000) }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    // An unknown notification is not answered (JSON-RPC), and nothing breaks.
    ws.notify("no.such.notification", json!({})).await;

    // None of that changed anything: the connection works, nobody got a message.
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    calm.expect_silence(Duration::from_millis(100)).await;
    still_served(&mut calm, 1).await;
}

#[tokio::test]
async fn hostile_msgpack_is_refused_without_allocating() {
    let srv = TestServer::start().await;
    let mut calm = bystander(&srv).await;
    for enc in [Encoding::Msgpack, Encoding::MsgpackZstd] {
        let mut ws = Ws::connect(&srv.ws_url(), enc).await;
        // "An array of four billion elements" in five bytes.
        ws.send_raw(Bytes::from_static(&[0xdd, 0xff, 0xff, 0xff, 0xff]))
            .await;
        assert_eq!(error_of(&mut ws).await.1, ErrorCode::ParseError);
        // A request whose params claim a 4 GB string.
        ws.send_raw(Bytes::from_static(&[
            0x94, 0x00, 0x01, 0xa4, b'p', b'i', b'n', b'g', 0xdb, 0xff, 0xff, 0xff, 0xff,
        ]))
        .await;
        assert_eq!(error_of(&mut ws).await.1, ErrorCode::ParseError);
        // A response-type frame from a client.
        ws.send_raw(Bytes::from_static(&[0x94, 0x01, 0x01, 0xc0, 0xc0]))
            .await;
        assert_eq!(error_of(&mut ws).await.1, ErrorCode::InvalidRequest);
        assert_eq!(
            ws.ok("ping", json!({ "data": 1 })).await,
            json!({ "data": 1 })
        );
    }
    // A decompression bomb: 50 MB of zeros in a few kilobytes.
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::MsgpackZstd).await;
    let bomb = zstd::bulk::compress(&vec![0u8; 50 << 20], 3).unwrap();
    ws.send_raw(Bytes::from(bomb)).await;
    let (_, code, msg) = error_of(&mut ws).await;
    assert_eq!(code, ErrorCode::LimitExceeded, "{msg}");
    // A compressed request within the limit works.
    let req = geostream_core::codec::encode_request(
        Encoding::Msgpack,
        Some(&Id::Int(5)),
        "ping",
        &json!({ "data": "z".repeat(3000) }),
    );
    ws.send_raw(Bytes::from(zstd::bulk::compress(&req, 3).unwrap()))
        .await;
    assert_eq!(
        ws.response(5).await.unwrap()["data"]
            .as_str()
            .unwrap()
            .len(),
        3000
    );
    still_served(&mut calm, 2).await;
}

#[tokio::test]
async fn protocol_violations_close_with_the_documented_code() {
    let srv = TestServer::start_with(|c| c.websocket.max_frame_bytes = 64 * 1024).await;
    let mut calm = bystander(&srv).await;

    // Oversized: refused from the frame header.
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    ws.stream
        .send(Message::Binary(Bytes::from(vec![0u8; 100 * 1024])))
        .await
        .unwrap();
    assert_eq!(
        ws.closed().await.map(|c| u16::from(c.code)),
        Some(CloseCode::MessageTooBig.code())
    );

    // A binary frame on a JSON connection, a text frame on a MessagePack one.
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.stream
        .send(Message::Binary(Bytes::from_static(&[0x90])))
        .await
        .unwrap();
    assert_eq!(
        ws.closed().await.map(|c| u16::from(c.code)),
        Some(CloseCode::UnsupportedData.code())
    );
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    ws.stream.send(Message::Text("{}".into())).await.unwrap();
    assert_eq!(
        ws.closed().await.map(|c| u16::from(c.code)),
        Some(CloseCode::UnsupportedData.code())
    );

    // An unmasked frame, and reserved bits.
    let mut raw = RawWs::connect(srv.addr, "geostream.v1.json").await;
    raw.send(&[0x81, 0x02, b'{', b'}']).await;
    assert_eq!(
        raw.close_code().await,
        Some(CloseCode::ProtocolError.code())
    );
    let mut raw = RawWs::connect(srv.addr, "geostream.v1.json").await;
    let mut f = client_frame(0x1, b"{}");
    f[0] |= 0x20;
    raw.send(&f).await;
    assert_eq!(
        raw.close_code().await,
        Some(CloseCode::ProtocolError.code())
    );
    // Invalid UTF-8 in a text frame.
    let mut raw = RawWs::connect(srv.addr, "geostream.v1.json").await;
    raw.send(&client_frame(0x1, &[0xc3, 0x28])).await;
    assert_eq!(
        raw.close_code().await,
        Some(CloseCode::InvalidPayload.code())
    );
    // A ping is answered with a pong carrying the same payload.
    let mut raw = RawWs::connect(srv.addr, "geostream.v1.json").await;
    raw.send(&client_frame(0x9, b"hb")).await;
    assert_eq!(raw.frame().await, Some((0xa, b"hb".to_vec())));
    // The client's close is echoed.
    raw.send(&client_frame(0x8, &[0x03, 0xe8])).await;
    assert_eq!(raw.close_code().await, Some(CloseCode::Normal.code()));

    still_served(&mut calm, 3).await;
}

#[tokio::test]
async fn silent_peers_are_pinged_then_closed() {
    let srv = TestServer::start_with(|c| {
        c.websocket.ping_interval_secs = 1;
        c.websocket.idle_timeout_secs = 2;
    })
    .await;
    let mut raw = RawWs::connect(srv.addr, "geostream.v1.json").await;
    let (op, _) = raw.frame().await.expect("a ping");
    assert_eq!(op, 0x9, "the server pings a quiet connection");
    assert_eq!(
        raw.close_code().await,
        Some(CloseCode::IdleTimeout.code()),
        "and closes it when nothing comes back"
    );
    // A client that answers pings (tungstenite does) stays connected.
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.expect_silence(Duration::from_millis(2500)).await;
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn subscription_limit() {
    let srv = TestServer::start_with(|c| c.limits.max_subscriptions = 3).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    for i in 0..3 {
        ws.ok("channel.subscribe", json!({ "channel": format!("c{i}") }))
            .await;
    }
    let e = ws
        .call("channel.subscribe", json!({ "channel": "c3" }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    let e = ws
        .call("channel.subscribe", json!({ "channel": "c0" }))
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::InvalidParams,
        "already subscribed: {}",
        e.message
    );
}

#[tokio::test]
async fn bad_http_requests_get_json_errors() {
    let srv = TestServer::start_with(|c| c.websocket.max_frame_bytes = 2048).await;
    let (s, _, body) = http(
        srv.addr,
        "POST",
        "/v1/channels/c/messages",
        &[("content-type", "application/json")],
        Some(b"{nope".to_vec()),
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, body["error"]["name"].as_str()),
        (400, Some("parse_error"))
    );
    let (s, body) = http_json(
        srv.addr,
        "POST",
        "/v1/channels/c/messages",
        Some(json!({ "text": 1 })),
    )
    .await;
    assert_eq!(
        (s, body["error"]["name"].as_str()),
        (400, Some("invalid_params"))
    );
    let (s, body) = http_json(
        srv.addr,
        "POST",
        "/v1/channels/bad%20name/messages",
        Some(json!({ "data": 1 })),
    )
    .await;
    assert_eq!(
        (s, body["error"]["name"].as_str()),
        (400, Some("invalid_params"))
    );
    let (s, _, body) = http(
        srv.addr,
        "POST",
        "/v1/channels/c/messages",
        &[("content-type", "application/json")],
        Some(format!("{{\"data\":\"{}\"}}", "x".repeat(10_000)).into_bytes()),
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, body["error"]["name"].as_str()),
        (413, Some("limit_exceeded"))
    );
    let (s, body) = http_json(srv.addr, "GET", "/v1/channels/c/messages?limit=abc", None).await;
    assert_eq!(
        (s, body["error"]["name"].as_str()),
        (400, Some("invalid_params"))
    );
    let (s, _, _) = http(srv.addr, "GET", "/v1/ws", &[], None).await;
    assert_eq!(s, 400, "a plain GET on the WebSocket endpoint");
    let (s, _, body) = http(srv.addr, "GET", "/v1/sse", &[], None).await;
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&body));
    let (s, _, _) = http(
        srv.addr,
        "GET",
        "/v1/sse?channel=a&since=garbage",
        &[],
        None,
    )
    .await;
    assert_eq!(s, 400);
    // Nothing was published by any of that.
    let (_, h) = http_json(srv.addr, "GET", "/v1/channels/c/messages", None).await;
    assert_eq!(h["position"]["offset"], 0);
}
