//! Slow consumers over real sockets: a client that stops reading never delays the others
//! or grows the server's memory; it gets a `gap` for the channel messages it missed and
//! recovers them from history. The same through a throttling proxy, for every outbox policy
//! (gap, coalescing, the 4008 disconnect, latency and memory beside slow clients), is in
//! backpressure_proxy.rs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{RawWs, TestServer, Ws, client_frame, http};
use geostream_core::codec::Encoding;
use serde_json::{Value, json};

const MESSAGES: u64 = 3000;

/// A 4 KiB message body.
fn body(i: u64) -> Value {
    json!({ "i": i, "pad": "x".repeat(4000) })
}

/// A slow client: subscribes with `request`, reads the answer, then stops reading.
async fn stalled(srv: &TestServer, request: Value) -> RawWs {
    let mut raw = RawWs::connect_with_buffer(srv.addr, "geostream.v1.json", Some(4096)).await;
    raw.send(&client_frame(0x1, request.to_string().as_bytes()))
        .await;
    let (_, answer) = raw.frame().await.unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer.get("result").is_some(), "{answer}");
    raw
}

/// Publishes `MESSAGES` messages in small acknowledged batches: a steady stream, which a
/// reading client keeps up with and a stalled one cannot.
async fn publish_all(srv: &TestServer, channel: &str) {
    let mut p = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    for start in (1..=MESSAGES).step_by(8) {
        let mut ids = Vec::new();
        for i in start..(start + 8).min(MESSAGES + 1) {
            ids.push(
                p.send_request(
                    "channel.publish",
                    json!({ "channel": channel, "data": body(i) }),
                )
                .await,
            );
        }
        for id in ids {
            p.response(id).await.unwrap();
        }
    }
}

async fn queued_bytes(srv: &TestServer) -> f64 {
    let (_, _, m) = http(srv.addr, "GET", "/metrics", &[], None).await;
    let m = String::from_utf8(m).unwrap();
    m.lines()
        .find(|l| l.starts_with("geostream_outbox_queued_bytes"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_stalled_subscriber_gets_a_gap_and_recovers_while_others_keep_up() {
    let srv = TestServer::start_with(|c| {
        c.limits.outbox_bytes = 512 * 1024;
        c.limits.slow_consumer_grace_secs = 120;
        c.channels.history_size = 10_000;
    })
    .await;
    let mut slow = stalled(
        &srv,
        json!({ "jsonrpc": "2.0", "id": 1, "method": "channel.subscribe", "params": { "channel": "c" } }),
    )
    .await;
    let mut fast = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    fast.ok("channel.subscribe", json!({ "channel": "c" }))
        .await;
    let reader = tokio::spawn(async move {
        for expected in 1..=MESSAGES {
            let m = fast.push_of("message").await;
            assert_eq!(
                m["offset"], expected,
                "the fast subscriber gets every message in order"
            );
        }
        fast
    });
    publish_all(&srv, "c").await;
    let _fast = reader.await.unwrap();
    // The stalled client's queue is bounded by its budget (plus one message).
    assert!(queued_bytes(&srv).await < 520.0 * 1024.0);

    // Now it reads until silence: messages and one or more gaps.
    let mut got = BTreeSet::new();
    let mut gaps = Vec::new();
    while let Some((op, payload)) = slow.try_frame(Duration::from_secs(2)).await {
        if op != 0x1 {
            continue;
        }
        let f: Value = serde_json::from_slice(&payload).unwrap();
        match f["method"].as_str() {
            Some("message") => {
                got.insert(f["params"]["offset"].as_u64().unwrap());
            }
            Some("gap") => gaps.push(f["params"]["from"].as_u64().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        !gaps.is_empty(),
        "the stalled subscriber was told what it missed"
    );
    for g in &gaps {
        assert!(
            !got.contains(g),
            "a gap starts at a message that was not delivered"
        );
    }
    // Recover the missing ones from history.
    let mut h = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let mut since = gaps[0] - 1;
    let epoch = h
        .ok("channel.history", json!({ "channel": "c", "limit": 1 }))
        .await["position"]["epoch"]
        .clone();
    loop {
        let r = h
            .ok(
                "channel.history",
                json!({ "channel": "c", "since": { "offset": since, "epoch": epoch }, "limit": 1000 }),
            )
            .await;
        let msgs = r["messages"].as_array().unwrap();
        for m in msgs {
            got.insert(m["offset"].as_u64().unwrap());
        }
        if r["more"] != true || msgs.is_empty() {
            break;
        }
        since = msgs.last().unwrap()["offset"].as_u64().unwrap();
    }
    assert_eq!(got.len() as u64, MESSAGES, "nothing is lost for good");
    srv.shutdown().await;
}
