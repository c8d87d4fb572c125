//! The NATS broker: the shared broker conformance suite, plus what only a shared broker
//! has: several nodes (brokers) seeing each other's messages, history and members.
//!
//! Needs NATS with JetStream at `GEOSTREAM_TEST_NATS_URL` (default `nats://127.0.0.1:4222`);
//! `scripts/test.sh` starts it. An unreachable NATS fails the tests with the reason: they
//! are never skipped. Every test uses a prefix of its own (subjects and streams), so tests
//! run in parallel, and deletes its streams at the end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use geostream_broker::conformance::{self, Delivered, Recorder};
use geostream_broker::{Broker, BusEvent, ClientInfo, HistoryLimits, NatsBroker, NatsOptions};
use geostream_core::bus::TileVersion;

fn url() -> String {
    std::env::var("GEOSTREAM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn unique_prefix(tag: &str) -> String {
    format!("gstest_{tag}_{}", geostream_broker::new_epoch())
}

async fn broker(prefix: &str, limits: HistoryLimits) -> (NatsBroker, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let opts = NatsOptions {
        url: url(),
        prefix: prefix.to_owned(),
        heartbeat: Duration::from_millis(200),
        node_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let b = NatsBroker::connect(opts, limits, rec.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to NATS at {}: {e}\nNATS with JetStream must be running for \
                 these tests: run scripts/test.sh, or start it (nats-server -js), or set \
                 GEOSTREAM_TEST_NATS_URL",
                url()
            )
        });
    (b, rec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let prefix = unique_prefix("conf");
    let made = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = made.clone();
    let p = prefix.clone();
    conformance::run(move |limits| {
        let keep = keep.clone();
        let p = p.clone();
        async move {
            let (b, r) = broker(&p, limits).await;
            keep.lock().push(b.clone());
            (b, r)
        }
    })
    .await;
    let brokers: Vec<NatsBroker> = made.lock().clone();
    if let Some(b) = brokers.first() {
        b.delete_streams().await.expect("delete streams");
    }
}

fn limits() -> HistoryLimits {
    HistoryLimits {
        size: 100,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes: a message published on one reaches the subscribers of the others with the
/// same offset and epoch; ephemeral messages reach every node; history is the same
/// everywhere; members of one node are seen by the others, and forgotten when it dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_share_messages_history_and_members() {
    let prefix = unique_prefix("nodes");
    let (a, ra) = broker(&prefix, limits()).await;
    let (b, rb) = broker(&prefix, limits()).await;
    let (c, rc) = broker(&prefix, limits()).await;
    for n in [&a, &c] {
        n.subscribe("room").await.expect("subscribe");
    }
    let p1 = b
        .publish("room", 1, Bytes::from_static(b"hello"))
        .await
        .expect("publish");
    let p2 = a
        .publish("room", 1, Bytes::from_static(b"again"))
        .await
        .expect("publish");
    assert_eq!((p1.offset, p2.offset), (1, 2));
    assert_eq!(p1.epoch, p2.epoch, "one epoch on every node");
    for r in [&ra, &rc] {
        let got = r.wait_for(2).await;
        let offs: Vec<u64> = got
            .iter()
            .filter_map(|d| match d {
                Delivered::Publication {
                    topic,
                    publication,
                    epoch,
                } if topic == "room" => {
                    assert_eq!(**epoch, *p1.epoch);
                    Some(publication.offset)
                }
                _ => None,
            })
            .collect();
        assert_eq!(offs, [1, 2]);
    }
    assert!(
        rb.events().is_empty(),
        "a node that did not subscribe gets no channel messages"
    );
    let h = c.history("room", Some(0), 10).await.expect("history");
    assert_eq!(
        h.publications
            .iter()
            .map(|p| p.data.clone())
            .collect::<Vec<_>>(),
        [Bytes::from_static(b"hello"), Bytes::from_static(b"again")]
    );
    assert_eq!(h.position, p2);

    // Ephemeral messages go to every node.
    ra.clear();
    rb.clear();
    rc.clear();
    let event = BusEvent::TileUploaded(TileVersion {
        z: 1,
        x: 0,
        y: 1,
        version: 3,
    });
    c.publish_event("$layer/x", Arc::new(event.clone()))
        .await
        .expect("event");
    for r in [&ra, &rb, &rc] {
        let got = r.wait_for(1).await;
        assert!(got.contains(&Delivered::Event {
            topic: "$layer/x".into(),
            event: event.clone(),
        }));
    }

    // Members: set on A and C, seen by B; A's disappear when A is gone.
    let member = |s: &str| ClientInfo {
        session: s.into(),
        user: Some(s.into()),
        info: None,
    };
    a.set_member("room", "sa/1", Some(&member("alice"))).await;
    c.set_member("room", "sc/1", Some(&member("carol"))).await;
    let members = |n: &NatsBroker| {
        let mut m: Vec<String> = n
            .remote_members("room")
            .into_iter()
            .map(|m| m.session)
            .collect();
        m.sort();
        m
    };
    eventually("B sees A's and C's members", || members(&b).len() == 2).await;
    assert_eq!(members(&b), ["alice", "carol"]);
    assert_eq!(members(&a), ["carol"], "own members are local");
    // A node that starts later learns the existing members.
    let (d, _rd) = broker(&prefix, limits()).await;
    eventually("a new node catches up on members", || {
        members(&d).len() == 2
    })
    .await;
    c.set_member("room", "sc/1", None).await;
    rb.clear();
    drop(a);
    eventually("a left member and a dead node's members are gone", || {
        members(&b).is_empty()
    })
    .await;
    // The survivors are told, once, that A's member went without leaving.
    let gone = |r: &Recorder| {
        r.events()
            .into_iter()
            .filter_map(|d| match d {
                Delivered::RemoteMembers {
                    gone: true,
                    members,
                } => Some(members),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    eventually("B is told A's members are gone", || !gone(&rb).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let told = gone(&rb);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].len(), 1);
    assert_eq!(
        (told[0][0].0.as_str(), told[0][0].1.session.as_str()),
        ("room", "alice")
    );
    b.delete_streams().await.expect("delete streams");
    drop((c, d));
}
