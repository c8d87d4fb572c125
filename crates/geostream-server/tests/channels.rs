//! Channels end to end over real sockets: publish and receive in every encoding, HTTP to
//! WebSocket and SSE, resume after a disconnect, presence, history and shutdown.

mod common;

use std::time::Duration;

use common::{Sse, TestServer, Ws, http_json, http_publish};
use geostream_core::codec::Encoding;
use geostream_core::error::{CloseCode, ErrorCode};
use serde_json::{Value, json};

async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    ws.ok("channel.subscribe", json!({ "channel": channel }))
        .await
}

#[tokio::test]
async fn clients_in_every_encoding_publish_and_receive() {
    let srv = TestServer::start().await;
    let mut clients = Vec::new();
    for enc in Encoding::ALL {
        let mut ws = Ws::connect(&srv.ws_url(), enc).await;
        assert_eq!(ws.enc, enc, "the server accepted the offered subprotocol");
        let hello = ws
            .ok(
                "hello",
                json!({ "client": { "name": "test", "version": "1" } }),
            )
            .await;
        assert_eq!(hello["encoding"], enc.name());
        assert_eq!(hello["protocol"], 1);
        subscribe(&mut ws, "chat").await;
        clients.push(ws);
    }
    // Each client publishes once, including a payload large enough to be compressed.
    let big = "x".repeat(5000);
    let mut offsets = Vec::new();
    for (i, ws) in clients.iter_mut().enumerate() {
        let r = ws
            .ok(
                "channel.publish",
                json!({ "channel": "chat", "data": { "from": i, "big": big } }),
            )
            .await;
        offsets.push(r["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, vec![1, 2, 3]);
    for ws in clients.iter_mut() {
        for i in 0..3u64 {
            let m = ws.push_of("message").await;
            assert_eq!(m["channel"], "chat");
            assert_eq!(m["offset"], i + 1);
            assert_eq!(m["data"], json!({ "from": i, "big": big }));
        }
    }
}

#[tokio::test]
async fn a_client_offering_no_subprotocol_gets_json() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect_with(&srv.ws_url(), None).await.unwrap();
    assert_eq!(ws.enc, Encoding::Json);
    assert_eq!(
        ws.ok("ping", json!({ "data": [1, "two"] })).await,
        json!({ "data": [1, "two"] })
    );
    let refused = Ws::connect_with(&srv.ws_url(), Some("mqtt")).await;
    assert!(refused.is_err(), "an unknown subprotocol is refused");
}

#[tokio::test]
async fn http_publish_reaches_websocket_and_sse() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    subscribe(&mut ws, "alerts").await;
    let mut sse = Sse::open(srv.addr, "/v1/sse?channel=alerts", None).await;
    assert_eq!(sse.status, 200);
    let subscribed = sse.next_of("subscribed").await;
    assert_eq!(
        serde_json::from_str::<Value>(&subscribed.data).unwrap()["channel"],
        "alerts"
    );

    let pos = http_publish(srv.addr, "alerts", json!({ "level": "red" })).await;
    assert_eq!(pos["offset"], 1);

    let m = ws.push_of("message").await;
    assert_eq!(m["data"], json!({ "level": "red" }));
    let e = sse.next_of("message").await;
    let d: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(d["data"], json!({ "level": "red" }));
    assert_eq!(d["offset"], 1);
    assert_eq!(
        e.id.unwrap(),
        format!("alerts~{}~1", pos["epoch"].as_str().unwrap())
    );
}

#[tokio::test]
async fn resume_delivers_exactly_the_missed_messages() {
    let srv = TestServer::start().await;
    let mut publisher = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let sub = subscribe(&mut ws, "feed").await;
    let epoch = sub["position"]["epoch"].as_str().unwrap().to_string();
    for i in 1..=3 {
        publisher
            .ok("channel.publish", json!({ "channel": "feed", "data": i }))
            .await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = ws.push_of("message").await["offset"].as_u64().unwrap();
    }
    assert_eq!(last, 3);
    drop(ws);

    for i in 4..=9 {
        publisher
            .ok("channel.publish", json!({ "channel": "feed", "data": i }))
            .await;
    }
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let r = ws
        .ok(
            "channel.subscribe",
            json!({ "channel": "feed", "since": { "offset": last, "epoch": epoch } }),
        )
        .await;
    assert_eq!(r["recovered"], true);
    assert_eq!(r["replayed"], 6);
    publisher
        .ok("channel.publish", json!({ "channel": "feed", "data": 10 }))
        .await;
    let got: Vec<(u64, Value)> = {
        let mut v = Vec::new();
        for _ in 0..7 {
            let m = ws.push_of("message").await;
            v.push((m["offset"].as_u64().unwrap(), m["data"].clone()));
        }
        v
    };
    assert_eq!(
        got,
        (4..=10).map(|i| (i, json!(i))).collect::<Vec<_>>(),
        "missed ones in order, then live, no duplicates"
    );
    ws.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn resume_beyond_history_is_reported_not_recovered() {
    let srv = TestServer::start_with(|c| c.channels.history_size = 5).await;
    let mut publisher = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let first = publisher
        .ok("channel.publish", json!({ "channel": "c", "data": 0 }))
        .await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for i in 1..20 {
        publisher
            .ok("channel.publish", json!({ "channel": "c", "data": i }))
            .await;
    }
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    // Offset 2: messages 3..=15 are gone (only the last 5 are kept).
    let r = ws
        .ok(
            "channel.subscribe",
            json!({ "channel": "c", "since": { "offset": 2, "epoch": epoch } }),
        )
        .await;
    assert_eq!(r["recovered"], false);
    assert_eq!(r["replayed"], 0);
    assert_eq!(r["position"]["offset"], 20);
    ws.expect_silence(Duration::from_millis(200)).await;
    // The same offset in another epoch means nothing either.
    ws.ok("unsubscribe", json!({ "sub": r["sub"] })).await;
    let r = ws
        .ok(
            "channel.subscribe",
            json!({ "channel": "c", "since": { "offset": 19, "epoch": "other" } }),
        )
        .await;
    assert_eq!(r["recovered"], false);
    // History says so too.
    let h = ws
        .ok(
            "channel.history",
            json!({ "channel": "c", "since": { "offset": 2, "epoch": epoch } }),
        )
        .await;
    assert_eq!(h["complete"], false);
    assert_eq!(h["messages"].as_array().unwrap().len(), 5);
    let h = ws
        .ok(
            "channel.history",
            json!({ "channel": "c", "since": { "offset": 17, "epoch": epoch } }),
        )
        .await;
    assert_eq!(h["complete"], true);
    assert_eq!(
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![17, 18, 19]
    );
}

#[tokio::test]
async fn sse_resumes_with_last_event_id() {
    let srv = TestServer::start().await;
    let mut sse = Sse::open(srv.addr, "/v1/sse?channel=a&channel=b", None).await;
    sse.next_of("subscribed").await;
    sse.next_of("subscribed").await;
    http_publish(srv.addr, "a", json!("a1")).await;
    http_publish(srv.addr, "b", json!("b1")).await;
    sse.next_of("message").await;
    let e = sse.next_of("message").await;
    let last_id = e.id.clone().unwrap();
    drop(sse);

    http_publish(srv.addr, "a", json!("a2")).await;
    http_publish(srv.addr, "b", json!("b2")).await;
    http_publish(srv.addr, "a", json!("a3")).await;

    let mut sse = Sse::open(srv.addr, "/v1/sse?channel=a&channel=b", Some(&last_id)).await;
    for _ in 0..2 {
        let s: Value = serde_json::from_str(&sse.next_of("subscribed").await.data).unwrap();
        assert_eq!(s["recovered"], true);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let d: Value = serde_json::from_str(&sse.next_of("message").await.data).unwrap();
        got.push(d["data"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, vec!["a2", "a3", "b2"], "exactly the missed messages");
    http_publish(srv.addr, "b", json!("b3")).await;
    let d: Value = serde_json::from_str(&sse.next_of("message").await.data).unwrap();
    assert_eq!(d["data"], "b3");
}

#[tokio::test]
async fn presence_join_and_leave() {
    let srv = TestServer::start().await;
    let mut watcher = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    watcher
        .ok("hello", json!({ "info": { "name": "watcher" } }))
        .await;
    watcher
        .ok(
            "channel.subscribe",
            json!({ "channel": "room", "presence": true }),
        )
        .await;
    let me = watcher.push_of("join").await;
    assert_eq!(me["client"]["info"]["name"], "watcher");

    let mut guest = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let hello = guest
        .ok("hello", json!({ "info": { "name": "guest" } }))
        .await;
    guest
        .ok("channel.subscribe", json!({ "channel": "room" }))
        .await;
    let j = watcher.push_of("join").await;
    assert_eq!(j["client"]["session"], hello["session"]);
    assert_eq!(j["client"]["info"]["name"], "guest");

    let p = watcher
        .ok("channel.presence", json!({ "channel": "room" }))
        .await;
    let mut names: Vec<_> = p["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["info"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["guest", "watcher"]);
    let (status, body) = http_json(srv.addr, "GET", "/v1/channels/room/presence", None).await;
    assert_eq!(
        (status, body["clients"].as_array().unwrap().len()),
        (200, 2)
    );

    drop(guest);
    let l = watcher.push_of("leave").await;
    assert_eq!(l["client"]["session"], hello["session"]);
    let p = watcher
        .ok("channel.presence", json!({ "channel": "room" }))
        .await;
    assert_eq!(p["clients"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn history_over_http_and_paging() {
    let srv = TestServer::start().await;
    for i in 0..30 {
        http_publish(srv.addr, "log", json!(i)).await;
    }
    let (s, h) = http_json(srv.addr, "GET", "/v1/channels/log/messages?limit=10", None).await;
    assert_eq!(s, 200);
    assert_eq!(h["messages"][0]["offset"], 21, "newest 10 without since");
    assert_eq!(h["more"], true);
    let epoch = h["position"]["epoch"].as_str().unwrap();
    let (_, h) = http_json(
        srv.addr,
        "GET",
        &format!("/v1/channels/log/messages?since=5&epoch={epoch}&limit=10"),
        None,
    )
    .await;
    let offs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, (6..=15).collect::<Vec<_>>());
    assert_eq!(
        (h["complete"].clone(), h["more"].clone()),
        (json!(true), json!(true))
    );
    let (s, e) = http_json(srv.addr, "GET", "/v1/channels/log/messages?since=5", None).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["name"], "invalid_params");
}

#[tokio::test]
async fn graceful_shutdown_tells_clients_to_reconnect() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    subscribe(&mut ws, "c").await;
    let mut sse = Sse::open(srv.addr, "/v1/sse?channel=c", None).await;
    sse.next_of("subscribed").await;
    let addr = srv.addr;
    let stop = tokio::spawn(srv.shutdown());
    let frame = ws.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), CloseCode::ServiceRestart.code());
    let e = sse.next_of("close").await;
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).unwrap()["code"],
        CloseCode::ServiceRestart.code()
    );
    assert!(sse.next().await.is_none(), "the stream ends");
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// From the shutdown signal until the listener closes, `/readyz` answers 503 while new
/// connections and existing clients are still served; then clients are told to reconnect.
#[tokio::test]
async fn a_stopping_node_is_unready_before_it_stops_listening() {
    let srv = TestServer::start_with(|c| c.shutdown.unready_secs = 2).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    subscribe(&mut ws, "c").await;
    let addr = srv.addr;
    let signalled = std::time::Instant::now();
    let stop = tokio::spawn(srv.shutdown());
    let mut unready_at = None;
    while signalled.elapsed() < Duration::from_millis(1500) {
        let (s, body) = http_json(addr, "GET", "/readyz", None).await;
        if s == 503 {
            assert_eq!(body, json!({ "status": "draining" }));
            unready_at.get_or_insert(signalled.elapsed());
            // Still listening and serving: a new connection, and the old client.
            assert_eq!(http_json(addr, "GET", "/healthz", None).await.0, 200);
            ws.ok("channel.publish", json!({ "channel": "c", "data": 1 }))
                .await;
            ws.push_of("message").await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready_at = unready_at.expect("readyz said 503 while the listener was open");
    assert!(unready_at < Duration::from_millis(500), "{unready_at:?}");
    let frame = ws.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), CloseCode::ServiceRestart.code());
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "clients are told to go only after the unready window"
    );
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let srv = TestServer::start().await;
    assert_eq!(
        http_json(srv.addr, "GET", "/healthz", None).await,
        (200, json!({ "status": "ok" }))
    );
    assert_eq!(
        http_json(srv.addr, "GET", "/readyz", None).await,
        (200, json!({ "status": "ready" }))
    );
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    subscribe(&mut ws, "m").await;
    ws.ok("channel.publish", json!({ "channel": "m", "data": 1 }))
        .await;
    ws.push_of("message").await;
    let (s, _, body) = common::http(srv.addr, "GET", "/metrics", &[], None).await;
    assert_eq!(s, 200);
    let text = String::from_utf8(body).unwrap();
    for needle in [
        "geostream_connections{transport=\"ws\"} 1",
        "geostream_requests_total{method=\"channel.publish\",outcome=\"ok\"} 1",
        "geostream_frames_in_total{encoding=\"msgpack\"} 2",
        "geostream_publish_to_deliver_seconds_count{} 1",
        "geostream_subscriptions 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    let (s, e) = http_json(srv.addr, "GET", "/nope", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_i64()),
        (404, Some(ErrorCode::MethodNotFound.code() as i64))
    );
}
