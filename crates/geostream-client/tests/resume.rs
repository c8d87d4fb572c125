//! Reconnect and resume against a real server: a server restart on the same port and data
//! directory, a network cut in the middle of a frame while an edit is in flight, and a
//! resume that the server can no longer replay (resync with a fresh snapshot).

mod common;

use std::collections::BTreeMap;

use common::{
    DataDir, Proxy, TestServer, WAIT, eventually, fast_options, next_channel, next_feature, point,
    state_where,
};
use geostream_client::{
    ChannelEvent, ChannelOptions, Client, ClientEvent, ConnectionState, Edit, FeatureEvent,
    FeatureSet, FeatureStream, FilterSpec, LayerCreateParams,
};
use serde_json::{Value, json};

/// Reads a layer subscription, keeping the sequence numbers of change events.
struct Watcher {
    stream: FeatureStream,
    set: FeatureSet,
    change_seqs: Vec<u64>,
    events: Vec<FeatureEvent>,
    snapshot_done: bool,
}

impl Watcher {
    fn new(stream: FeatureStream) -> Watcher {
        Watcher {
            stream,
            set: FeatureSet::new(),
            change_seqs: Vec::new(),
            events: Vec::new(),
            snapshot_done: false,
        }
    }

    async fn step(&mut self) -> FeatureEvent {
        let ev = next_feature(&mut self.stream).await;
        match &ev {
            FeatureEvent::Enter { seq, .. }
            | FeatureEvent::Update { seq, .. }
            | FeatureEvent::Exit { seq, .. }
            | FeatureEvent::Delete { seq, .. } => self.change_seqs.push(*seq),
            FeatureEvent::Snapshot { last, .. } => self.snapshot_done = *last,
            FeatureEvent::Resync { .. } => self.snapshot_done = false,
            _ => {}
        }
        self.set.apply(&ev);
        self.events.push(ev.clone());
        ev
    }

    /// Reads until the snapshot is complete and everything up to `seq` has arrived.
    async fn until_seq(&mut self, seq: u64) {
        while !(self.snapshot_done && self.set.seq() >= seq) {
            self.step().await;
        }
    }
}

/// The layer's features as the server has them: id → (version, properties).
async fn server_state(c: &Client, layer: &str) -> BTreeMap<String, (u64, Value)> {
    let page = c
        .query_features(layer, FilterSpec::default(), Some(10_000), None)
        .await
        .unwrap();
    page.features
        .into_iter()
        .map(|f| (f.id, (f.version, Value::Object(f.properties))))
        .collect()
}

fn local_state(s: &FeatureSet) -> BTreeMap<String, (u64, Value)> {
    s.iter()
        .map(|f| {
            (
                f.id.clone(),
                (f.version, Value::Object(f.properties.clone())),
            )
        })
        .collect()
}

fn props(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Every sequence number from `from` to `to` exactly once, in order.
fn assert_contiguous(seqs: &[u64], from: u64, to: u64) {
    let want: Vec<u64> = (from..=to).collect();
    assert_eq!(
        seqs, want,
        "change events must cover every sequence number once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_resumes_without_gaps_and_applies_outage_edits_once() {
    let dir = DataDir::new("restart");
    let srv = TestServer::start(&dir, |_| {}).await;
    let addr = srv.addr;
    let url = srv.url();

    let editor = Client::connect(&url, fast_options()).await.unwrap();
    editor
        .create_layer(LayerCreateParams {
            name: "fleet".into(),
            last_writer_wins: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..5 {
        editor
            .create_feature(
                "fleet",
                point(&format!("f{i}"), i as f64, 1.0, json!({ "n": 0 })),
            )
            .await
            .unwrap();
    }

    let viewer = Client::connect(&url, fast_options()).await.unwrap();
    let mut states = viewer.state_changes();
    let mut w = Watcher::new(
        viewer
            .subscribe_features("fleet", FilterSpec::default())
            .await
            .unwrap(),
    );
    assert_eq!(w.stream.start_seq(), 5);
    let mut news = viewer
        .subscribe_channel("news", ChannelOptions::default())
        .await
        .unwrap();
    w.until_seq(5).await;
    assert_eq!(w.set.len(), 5);

    for (i, id) in ["f0", "f2", "f3"].iter().enumerate() {
        editor
            .patch_properties("fleet", id, props(json!({ "n": i + 1 })), None)
            .await
            .unwrap();
    }
    w.until_seq(8).await;
    editor.publish("news", json!("before")).await.unwrap();
    assert!(matches!(
        next_channel(&mut news).await,
        ChannelEvent::Message { offset: 1, .. }
    ));

    // The server stops; the client notices and keeps trying.
    srv.stop().await;
    state_where(&mut states, |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;

    // Edits made during the outage wait in the outbox.
    let e1 = viewer
        .submit(Edit::patch_properties(
            "fleet",
            "f1",
            props(json!({ "o0": true })),
            None,
        ))
        .await
        .unwrap();
    let e2 = viewer
        .submit(Edit::patch_properties(
            "fleet",
            "f1",
            props(json!({ "o1": true })),
            None,
        ))
        .await
        .unwrap();
    let e3 = viewer
        .submit(Edit::create("fleet", point("n1", 3.0, 3.0, json!({ "new": true }))).unwrap())
        .await
        .unwrap();
    assert_eq!(viewer.outbox_len(), 3);
    let e4 = editor
        .submit(Edit::patch_properties(
            "fleet",
            "f4",
            props(json!({ "by": "editor" })),
            None,
        ))
        .await
        .unwrap();

    // Same port, same data directory.
    let srv = TestServer::start_at(addr, &dir, |_| {}).await;
    for e in [e1, e2, e3, e4] {
        let r = tokio::time::timeout(WAIT, e)
            .await
            .expect("the outage edit is applied in time")
            .unwrap();
        assert!(!r[0].replayed, "never sent before, so applied now");
    }
    assert_eq!(viewer.outbox_len(), 0);
    editor
        .patch_properties("fleet", "f0", props(json!({ "n": 9 })), None)
        .await
        .unwrap();
    editor.delete_feature("fleet", "f3", None).await.unwrap();

    let last = editor.layer("fleet").await.unwrap().seq;
    assert_eq!(last, 14);
    w.until_seq(last).await;
    assert_contiguous(&w.change_seqs, 6, last);
    assert!(
        !w.events
            .iter()
            .any(|e| matches!(e, FeatureEvent::Resync { .. })),
        "the changes were in the log: no resync"
    );
    assert_eq!(local_state(&w.set), server_state(&editor, "fleet").await);

    // Exactly once: two patches on f1, one new feature.
    let f1 = editor.get_feature("fleet", "f1").await.unwrap();
    assert_eq!(f1.version, 3);
    assert_eq!(
        Value::Object(f1.properties),
        json!({ "n": 0, "o0": true, "o1": true })
    );
    assert_eq!(editor.layer("fleet").await.unwrap().count, 5);

    // Channel history lived in the old process: the stream says so, then goes on.
    match next_channel(&mut news).await {
        ChannelEvent::Resync { position } => assert_eq!(position.offset, 0),
        other => panic!("expected a resync, got {other:?}"),
    }
    editor.publish("news", json!("after")).await.unwrap();
    assert_eq!(
        next_channel(&mut news).await,
        ChannelEvent::Message {
            offset: 1,
            data: json!("after")
        }
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_mid_frame_resumes_and_retried_edit_applies_once() {
    let dir = DataDir::new("cut");
    let srv = TestServer::start(&dir, |_| {}).await;
    let proxy = Proxy::start(srv.addr).await;
    let editor = Client::connect(&srv.url(), fast_options()).await.unwrap();
    editor
        .create_layer(LayerCreateParams {
            name: "boats".into(),
            last_writer_wins: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        editor
            .create_feature(
                "boats",
                point(&format!("b{i}"), 10.0 + i as f64, 50.0, json!({})),
            )
            .await
            .unwrap();
    }
    let viewer = Client::connect(&proxy.url(), fast_options()).await.unwrap();
    let mut events = viewer.events();
    let mut states = viewer.state_changes();
    let mut w = Watcher::new(
        viewer
            .subscribe_features(
                "boats",
                FilterSpec {
                    bbox: Some(vec![0.0, 40.0, 20.0, 60.0]),
                    ..Default::default()
                },
            )
            .await
            .unwrap(),
    );
    w.until_seq(3).await;

    // The server gets the edit and applies it, but its answer never comes back.
    proxy.set_blackhole(true);
    let pending = viewer
        .submit(Edit::patch_properties(
            "boats",
            "b0",
            props(json!({ "k": "v" })),
            None,
        ))
        .await
        .unwrap();
    let op_id = pending.op_id().to_string();
    eventually("the edit reached the server", || async {
        editor.get_feature("boats", "b0").await.unwrap().version == 2
    })
    .await;
    editor
        .patch_properties("boats", "b1", props(json!({ "x": 1 })), None)
        .await
        .unwrap();
    editor
        .patch_properties("boats", "b2", props(json!({ "x": 2 })), None)
        .await
        .unwrap();
    // Cut, delivering a few bytes of a frame first.
    proxy.cut();
    state_where(&mut states, |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;

    let r = tokio::time::timeout(WAIT, pending)
        .await
        .expect("the edit is answered after the reconnect")
        .unwrap();
    assert!(
        r[0].replayed,
        "the retry carried the same op id: answered from the first application"
    );
    assert_eq!(r[0].version, 2);
    loop {
        match tokio::time::timeout(WAIT, events.next()).await.unwrap() {
            Some(ClientEvent::EditApplied { op_id: o, .. }) if o == op_id => break,
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
    editor
        .patch_properties("boats", "b0", props(json!({ "k": "w" })), None)
        .await
        .unwrap();
    let last = editor.layer("boats").await.unwrap().seq;
    assert_eq!(last, 7);
    w.until_seq(last).await;
    assert_contiguous(&w.change_seqs, 4, last);
    assert_eq!(local_state(&w.set), server_state(&editor, "boats").await);
    let b0 = editor.get_feature("boats", "b0").await.unwrap();
    assert_eq!(
        b0.version, 3,
        "one patch from the viewer, one from the editor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_history_yields_resync_and_a_fresh_snapshot() {
    let dir = DataDir::new("resync");
    let srv = TestServer::start(&dir, |c| c.layers.max_replay = 2).await;
    let proxy = Proxy::start(srv.addr).await;
    let editor = Client::connect(&srv.url(), fast_options()).await.unwrap();
    editor
        .create_layer(LayerCreateParams {
            name: "r".into(),
            last_writer_wins: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        editor
            .create_feature("r", point(&format!("r{i}"), 1.0, 1.0, json!({})))
            .await
            .unwrap();
    }
    let viewer = Client::connect(&proxy.url(), fast_options()).await.unwrap();
    let mut states = viewer.state_changes();
    let mut w = Watcher::new(
        viewer
            .subscribe_features("r", FilterSpec::default())
            .await
            .unwrap(),
    );
    w.until_seq(3).await;

    proxy.set_accepting(false);
    proxy.cut();
    state_where(&mut states, |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;
    // More changes than the server replays to a resuming subscriber.
    for i in 0..4 {
        editor
            .patch_properties("r", "r0", props(json!({ "i": i })), None)
            .await
            .unwrap();
    }
    editor.delete_feature("r", "r1", None).await.unwrap();
    editor
        .create_feature("r", point("r9", 2.0, 2.0, json!({})))
        .await
        .unwrap();
    let last = editor.layer("r").await.unwrap().seq;
    assert_eq!(last, 9);
    proxy.set_accepting(true);

    w.until_seq(last).await;
    let resync = w
        .events
        .iter()
        .position(|e| matches!(e, FeatureEvent::Resync { .. }))
        .expect("a resync event");
    assert_eq!(w.events[resync].seq(), Some(last));
    assert!(
        matches!(w.events.get(resync + 1), Some(FeatureEvent::Snapshot { seq, .. }) if *seq == last),
        "a fresh snapshot follows the resync: {:?}",
        &w.events[resync..]
    );
    assert!(w.change_seqs.is_empty(), "nothing replayed one by one");
    assert_eq!(local_state(&w.set), server_state(&editor, "r").await);
    assert_eq!(w.set.ids(), vec!["r0", "r2", "r9"]);
}
