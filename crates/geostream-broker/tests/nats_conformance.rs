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

/// A TCP proxy to NATS whose NATS-to-client direction can be held back: bytes NATS sends
/// while `hold` is set (an acknowledgement, say) reach the client only once it is cleared.
async fn holding_proxy(
    upstream: std::net::SocketAddr,
    hold: Arc<std::sync::atomic::AtomicBool>,
) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut down_r, mut down_w) = down.into_split();
            let (mut up_r, mut up_w) = up.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut down_r, &mut up_w).await;
            });
            let hold = hold.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match up_r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    while hold.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if down_w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A publish whose acknowledgement comes too late is sent again by the broker; JetStream
/// must store it once (found by bench/chaos-cluster.sh: with a node's NATS link cut, one
/// acknowledged channel publish was stored at two offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_sent_again_after_a_lost_acknowledgement_is_stored_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let prefix = unique_prefix("dup");
    let upstream = tokio::net::lookup_host(url().trim_start_matches("nats://").to_string())
        .await
        .expect("NATS address")
        .next()
        .expect("NATS address");
    let hold = Arc::new(AtomicBool::new(false));
    let proxy = holding_proxy(upstream, hold.clone()).await;
    let timeout = Duration::from_secs(1);
    let b = NatsBroker::connect(
        NatsOptions {
            url: format!("nats://{proxy}"),
            prefix: prefix.clone(),
            timeout,
            ..Default::default()
        },
        limits(),
        Arc::new(Recorder::default()),
    )
    .await
    .expect("connect through the proxy");
    let first = b
        .publish("t", 1, Bytes::from_static(b"a"))
        .await
        .expect("publish");
    assert_eq!(first.offset, 1);
    // Hold NATS's answers back past the first attempt's timeout: the broker sends the
    // message again (after looking the stream up again, which must be answered in time).
    hold.store(true, Ordering::SeqCst);
    let publishing = tokio::spawn({
        let b = b.clone();
        async move { b.publish("t", 1, Bytes::from_static(b"b")).await }
    });
    tokio::time::sleep(timeout + timeout / 2).await;
    hold.store(false, Ordering::SeqCst);
    let second = publishing
        .await
        .expect("join")
        .expect("the second attempt is acknowledged");
    let h = b.history("t", Some(0), 10).await.expect("history");
    let stored: Vec<(u64, Bytes)> = h
        .publications
        .iter()
        .map(|p| (p.offset, p.data.clone()))
        .collect();
    assert_eq!(
        stored,
        vec![(1, Bytes::from_static(b"a")), (2, Bytes::from_static(b"b"))],
        "each publish stored once"
    );
    assert_eq!(
        second.offset, 2,
        "acknowledged with the offset it was stored at"
    );
    b.delete_streams().await.expect("delete streams");
}
