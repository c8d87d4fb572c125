//! Requests, cancellation, edits, locks, viewports and connection states against a real
//! server.

mod common;

use std::time::Duration;

use common::{
    DataDir, Proxy, TestServer, WAIT, eventually, fast_options, next_feature, next_state, point,
    state_where,
};
use geostream_client::{
    Backoff, ChannelEvent, ChannelOptions, Client, ClientError, ClientEvent, CloseReason,
    ConnectionState, Edit, ErrorCode, FeatureEvent, FeatureSet, FilterSpec, LayerCreateParams,
    RequestOptions,
};
use serde_json::{Value, json};

fn props(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn bbox(b: [f64; 4]) -> FilterSpec {
    FilterSpec {
        bbox: Some(b.to_vec()),
        ..Default::default()
    }
}

async fn layer(c: &Client, name: &str, lww: bool) {
    c.create_layer(LayerCreateParams {
        name: name.into(),
        last_writer_wins: lww,
        ..Default::default()
    })
    .await
    .unwrap();
}

fn many_points(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            point(
                &format!("p{i}"),
                (i % 360) as f64 - 180.0,
                ((i / 360) % 180) as f64 - 90.0,
                json!({}),
            )
        })
        .collect()
}

/// The layer's feature count (0 when the import never created it).
async fn count(c: &Client, layer: &str) -> u64 {
    match c.layer(layer).await {
        Ok(l) => l.count,
        Err(e) if e.code() == Some(ErrorCode::LayerNotFound) => 0,
        Err(e) => panic!("{e}"),
    }
}

/// The layer's feature count, once it has stopped changing.
async fn settled_count(c: &Client, layer: &str) -> u64 {
    let mut last = count(c, layer).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count(c, layer).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_request_future_cancels_it_on_the_server() {
    let dir = DataDir::new("cancel");
    let srv = TestServer::start(&dir, |_| {}).await;
    let c = Client::connect(&srv.url(), fast_options()).await.unwrap();
    assert_eq!(srv.metric("geostream_requests_cancelled_total").await, 0.0);
    const N: usize = 8000;

    // One transaction per feature: the import runs long enough to be caught in the middle.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let import = c.import_features(
        "big",
        many_points(N),
        Some(1),
        RequestOptions::default().on_progress(move |p| {
            let _ = tx.send(p);
        }),
    );
    tokio::select! {
        r = import => panic!("the import finished before it could be cancelled: {r:?}"),
        p = rx.recv() => assert!(p.unwrap().done < N as u64),
    }
    // The future is dropped here: the client sends $/cancelRequest.
    eventually("the server counts the cancellation", || async {
        srv.metric("geostream_requests_cancelled_total").await >= 1.0
    })
    .await;
    let n = settled_count(&c, "big").await;
    assert!(n < N as u64, "the import stopped early ({n} of {N})");

    // A timeout cancels too.
    let r = c
        .request_with::<Value>(
            "layer.import",
            json!({ "layer": "big2", "features": many_points(N), "batch_size": 1 }),
            RequestOptions::default().timeout(Duration::from_millis(50)),
        )
        .await;
    assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
    eventually("the server counts the second cancellation", || async {
        srv.metric("geostream_requests_cancelled_total").await >= 2.0
    })
    .await;
    let n = settled_count(&c, "big2").await;
    assert!(n < N as u64, "the second import stopped early ({n} of {N})");
    // The connection is still fine.
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_reported_to_the_caller_and_as_events() {
    let dir = DataDir::new("conflict");
    let srv = TestServer::start(&dir, |_| {}).await;
    let c = Client::connect(&srv.url(), fast_options()).await.unwrap();
    let mut events = c.events();
    layer(&c, "parcels", false).await;
    let r = c
        .create_feature("parcels", point("a", 1.0, 1.0, json!({ "owner": "x" })))
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    c.patch_properties("parcels", "a", props(json!({ "owner": "y" })), Some(1))
        .await
        .unwrap();
    let stale = c
        .submit(Edit::patch_properties(
            "parcels",
            "a",
            props(json!({ "owner": "z" })),
            Some(1),
        ))
        .await
        .unwrap();
    let op_id = stale.op_id().to_string();
    match stale.await {
        Err(ClientError::Conflict { current, .. }) => {
            let current = current.expect("the current feature");
            assert_eq!(current.version, 2);
            assert_eq!(current.properties["owner"], "y");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Reported as an event too, whether or not someone awaited the edit.
    let dropped = c
        .submit(Edit::delete("parcels", "a", Some(1)))
        .await
        .unwrap();
    let dropped_id = dropped.op_id().to_string();
    drop(dropped);
    let mut failed = Vec::new();
    while failed.len() < 2 {
        match tokio::time::timeout(WAIT, events.next()).await.unwrap() {
            Some(ClientEvent::EditFailed { op_id, error, .. }) => {
                assert_eq!(error.code(), Some(ErrorCode::Conflict));
                failed.push(op_id);
            }
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    assert_eq!(failed, vec![op_id, dropped_id]);
    assert_eq!(c.outbox_len(), 0);
    assert_eq!(c.get_feature("parcels", "a").await.unwrap().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewport_moves_live_and_while_disconnected() {
    let dir = DataDir::new("viewport");
    let srv = TestServer::start(&dir, |_| {}).await;
    let proxy = Proxy::start(srv.addr).await;
    let editor = Client::connect(&srv.url(), fast_options()).await.unwrap();
    layer(&editor, "v", true).await;
    editor
        .create_feature("v", point("a", 1.0, 1.0, json!({})))
        .await
        .unwrap();
    editor
        .create_feature("v", point("b", 20.0, 20.0, json!({})))
        .await
        .unwrap();

    let viewer = Client::connect(&proxy.url(), fast_options()).await.unwrap();
    let mut states = viewer.state_changes();
    let mut s = viewer
        .subscribe_features("v", bbox([0.0, 0.0, 10.0, 10.0]))
        .await
        .unwrap();
    let mut set = FeatureSet::new();
    let ev = next_feature(&mut s).await;
    assert!(matches!(&ev, FeatureEvent::Snapshot { last: true, .. }));
    set.apply(&ev);
    assert_eq!(set.ids(), vec!["a"]);

    let r = s.set_filter(bbox([15.0, 15.0, 25.0, 25.0])).await.unwrap();
    assert_eq!((r.entered, r.exited), (1, 1));
    for _ in 0..2 {
        set.apply(&next_feature(&mut s).await);
    }
    assert_eq!(set.ids(), vec!["b"]);

    // Offline: the move waits for the connection; a feature appears meanwhile.
    proxy.set_accepting(false);
    proxy.cut();
    state_where(&mut states, |st| {
        matches!(st, ConnectionState::Reconnecting { .. })
    })
    .await;
    editor
        .create_feature("v", point("c", 5.0, 5.0, json!({})))
        .await
        .unwrap();
    let wide = bbox([0.0, 0.0, 25.0, 25.0]);
    let (moved, _) = tokio::join!(s.set_filter(wide), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.set_accepting(true);
    });
    let moved = moved.unwrap();
    assert_eq!((moved.entered, moved.exited), (2, 0));
    while set.len() < 3 {
        let ev = next_feature(&mut s).await;
        assert!(matches!(ev, FeatureEvent::Enter { .. }), "{ev:?}");
        set.apply(&ev);
    }
    assert_eq!(set.ids(), vec!["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_reacquired_after_a_reconnect_or_reported_lost() {
    let dir = DataDir::new("locks");
    let srv = TestServer::start(&dir, |c| c.layers.lock_grace_ms = 20_000).await;
    let proxy = Proxy::start(srv.addr).await;
    let other = Client::connect(&srv.url(), fast_options()).await.unwrap();
    layer(&other, "l", false).await;
    for id in ["x", "y"] {
        other
            .create_feature("l", point(id, 1.0, 1.0, json!({})))
            .await
            .unwrap();
    }
    let me = Client::connect(&proxy.url(), fast_options().client_id("editor-me"))
        .await
        .unwrap();
    let mut events = me.events();
    let mut states = me.state_changes();
    let x = me
        .lock("l", &["x"], Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(x[0].client, "editor-me");
    me.lock("l", &["y"], Some(Duration::from_secs(1)))
        .await
        .unwrap();

    proxy.set_accepting(false);
    proxy.cut();
    state_where(&mut states, |st| {
        matches!(st, ConnectionState::Reconnecting { .. })
    })
    .await;
    // y's short lock runs out while we are away, and someone else takes it.
    eventually("another client locks y", || async {
        other.lock("l", &["y"], None).await.is_ok()
    })
    .await;
    proxy.set_accepting(true);
    state_where(&mut states, |st| st.is_connected()).await;

    match tokio::time::timeout(WAIT, events.next()).await.unwrap() {
        Some(ClientEvent::LockLost { layer, id, .. }) => {
            assert_eq!((layer.as_str(), id.as_str()), ("l", "y"));
        }
        other => panic!("expected y to be reported lost, got {other:?}"),
    }
    // x is still ours: the other client cannot take it, and we can edit it.
    let e = other.lock("l", &["x"], None).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Locked));
    me.patch_properties("l", "x", props(json!({ "k": 1 })), Some(1))
        .await
        .unwrap();
    let released = me.unlock("l", &["x"]).await.unwrap();
    assert_eq!(released.len(), 1);
    other.lock("l", &["x"], None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_backoff_state_transitions() {
    let dir = DataDir::new("backoff");
    let srv = TestServer::start(&dir, |_| {}).await;
    let proxy = Proxy::start(srv.addr).await;
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
        multiplier: 2.0,
        max_attempts: None,
    };
    let c = Client::connect(&proxy.url(), fast_options().backoff(backoff.clone()))
        .await
        .unwrap();
    assert!(c.state().is_connected());
    let mut states = c.state_changes();
    proxy.set_accepting(false);
    proxy.cut();

    // Reconnecting(1), Connecting, Reconnecting(2), Connecting, ... with growing ceilings.
    for attempt in 1..=5u32 {
        match next_state(&mut states).await {
            ConnectionState::Reconnecting {
                attempt: a, delay, ..
            } => {
                assert_eq!(a, attempt);
                assert!(
                    delay <= backoff.ceiling(attempt),
                    "attempt {a}: {delay:?} above {:?}",
                    backoff.ceiling(attempt)
                );
            }
            other => panic!("expected Reconnecting({attempt}), got {other:?}"),
        }
        assert_eq!(next_state(&mut states).await, ConnectionState::Connecting);
    }
    proxy.set_accepting(true);
    let mut expected = 6;
    loop {
        match next_state(&mut states).await {
            ConnectionState::Connected { .. } => break,
            ConnectionState::Connecting => {}
            ConnectionState::Reconnecting { attempt, delay, .. } => {
                assert_eq!(attempt, expected);
                assert!(delay <= backoff.max);
                expected += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    c.ping().await.unwrap();
    // After a success the attempt count starts again at 1.
    proxy.cut();
    assert!(matches!(
        next_state(&mut states).await,
        ConnectionState::Reconnecting { attempt: 1, .. }
    ));
    state_where(&mut states, |s| s.is_connected()).await;

    // Closing is final.
    c.close();
    assert_eq!(
        next_state(&mut states).await,
        ConnectionState::Closed {
            reason: CloseReason::Requested
        }
    );
    assert!(matches!(c.ping().await, Err(ClientError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_and_failing_first_connections() {
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("ws://{dead}/v1/ws");
    let e = Client::connect(&url, fast_options()).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect(_)), "{e:?}");

    let c = Client::start(
        &url,
        fast_options().backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
            multiplier: 2.0,
            max_attempts: Some(3),
        }),
    )
    .unwrap();
    let mut states = c.state_changes();
    let mut attempts = Vec::new();
    let reason = loop {
        match next_state(&mut states).await {
            ConnectionState::Reconnecting { attempt, .. } => attempts.push(attempt),
            ConnectionState::Closed { reason } => break reason,
            _ => {}
        }
    };
    // The state stream may start after the first failure was reported.
    assert!(
        attempts.ends_with(&[1, 2]) || attempts == [2],
        "{attempts:?}"
    );
    assert!(
        matches!(reason, CloseReason::GaveUp { attempts: 3, .. }),
        "{reason:?}"
    );
    assert!(matches!(
        Client::connect("http://example.com", fast_options()).await,
        Err(ClientError::InvalidUrl { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_file_survives_a_restart_of_the_client() {
    let dir = DataDir::new("outbox");
    let path = dir.path().join("outbox.json");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Offline from the start: edits wait in the outbox file.
    let first = Client::start(
        &format!("ws://{dead}/v1/ws"),
        fast_options().outbox_file(&path),
    )
    .unwrap();
    let id = first.client_id().to_string();
    for i in 0..2 {
        let p = first
            .submit(Edit::create("o", point(&format!("o{i}"), 1.0, 1.0, json!({}))).unwrap())
            .await
            .unwrap();
        drop(p);
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(stored["entries"].as_array().unwrap().len(), 2);
    assert_eq!(stored["client_id"], id.as_str());
    let mut states = first.state_changes();
    first.close();
    state_where(&mut states, |s| matches!(s, ConnectionState::Closed { .. })).await;
    drop(first);

    let srv = TestServer::start(&dir, |_| {}).await;
    let admin = Client::connect(&srv.url(), fast_options()).await.unwrap();
    layer(&admin, "o", true).await;
    let second = Client::connect(&srv.url(), fast_options().outbox_file(&path))
        .await
        .unwrap();
    assert_eq!(
        second.client_id(),
        id,
        "the client id is kept with the outbox"
    );
    eventually("the stored edits are applied", || async {
        second.outbox_len() == 0
    })
    .await;
    assert_eq!(admin.layer("o").await.unwrap().count, 2);
    let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(stored["entries"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_presence_in_every_encoding() {
    let dir = DataDir::new("channels");
    let srv = TestServer::start(&dir, |_| {}).await;
    for enc in geostream_client::Encoding::ALL {
        let channel = format!("room-{}", enc.name());
        let a = Client::connect(
            &srv.url(),
            fast_options().encoding(enc).info(json!({ "name": "Ada" })),
        )
        .await
        .unwrap();
        let mut s = a
            .subscribe_channel(&channel, ChannelOptions::default().presence(true))
            .await
            .unwrap();
        match common::next_channel(&mut s).await {
            ChannelEvent::Join(who) => assert_eq!(who.info, Some(json!({ "name": "Ada" }))),
            other => panic!("expected our own join, got {other:?}"),
        }
        let big = "x".repeat(4000);
        let pos = a.publish(&channel, json!({ "big": big })).await.unwrap();
        assert_eq!(pos.offset, 1);
        assert_eq!(
            common::next_channel(&mut s).await,
            ChannelEvent::Message {
                offset: 1,
                data: json!({ "big": big })
            }
        );
        assert_eq!(a.presence(&channel).await.unwrap().len(), 1);
        let h = a.history(&channel, None, Some(10)).await.unwrap();
        assert_eq!(h.messages.len(), 1);
        // An error from the server keeps its code.
        let e = a.get_feature("nope", "x").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::LayerNotFound));
        a.close();
    }
}
