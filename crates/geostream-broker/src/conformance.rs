//! One test suite for every [`Broker`] implementation (enable the `conformance` feature).
//!
//! [`run`] takes a factory that builds a fresh broker with the given history limits and the
//! [`Recorder`] it delivers to; each implementation's tests call it once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::{Broker, BrokerHandler, BusEvent, HistoryLimits, Publication};

/// Something a broker delivered.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivered {
    /// A message with history.
    Publication {
        /// Topic.
        topic: String,
        /// The message.
        publication: Publication,
        /// Its epoch.
        epoch: String,
    },
    /// An event without history.
    Event {
        /// Topic.
        topic: String,
        /// The event.
        event: BusEvent,
    },
    /// Another node's members gone (or back) without their own events.
    RemoteMembers {
        /// Gone (true) or back.
        gone: bool,
        /// Topic and member.
        members: Vec<(String, crate::ClientInfo)>,
    },
}

/// A handler that records everything it is given.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Delivered>>,
    notify: tokio::sync::Notify,
}

impl Recorder {
    /// Everything delivered so far.
    pub fn events(&self) -> Vec<Delivered> {
        self.events.lock().clone()
    }

    /// Waits until at least `n` events were delivered (at most 10 s), then returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            if self.events.lock().len() >= n {
                return self.events();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.events();
            }
        }
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.events.lock().clear();
    }
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, topic: &str, publication: &Publication, epoch: &Arc<str>) {
        self.events.lock().push(Delivered::Publication {
            topic: topic.to_string(),
            publication: publication.clone(),
            epoch: epoch.to_string(),
        });
        self.notify.notify_waiters();
    }

    fn on_remote_members(&self, gone: bool, members: &[(String, crate::ClientInfo)]) {
        self.events.lock().push(Delivered::RemoteMembers {
            gone,
            members: members.to_vec(),
        });
        self.notify.notify_waiters();
    }

    fn on_event(&self, topic: &str, event: &Arc<BusEvent>) {
        self.events.lock().push(Delivered::Event {
            topic: topic.to_string(),
            event: (**event).clone(),
        });
        self.notify.notify_waiters();
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", crate::new_epoch())
}

/// Runs every case against brokers made by `make`.
pub async fn run<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(HistoryLimits) -> Fut,
    Fut: Future<Output = (B, Arc<Recorder>)>,
{
    let limits = HistoryLimits {
        size: 10,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(3600),
    };

    // Offsets start at 1, grow by one, share an epoch; delivery is in order with the data.
    let (b, rec) = make(limits).await;
    let t = unique("conf.order");
    b.subscribe(&t).await.unwrap();
    let mut epoch = None;
    for i in 1..=5u64 {
        let p = b
            .publish(&t, 7, Bytes::from(format!("m{i}")))
            .await
            .unwrap();
        assert_eq!(p.offset, i);
        if let Some(e) = &epoch {
            assert_eq!(&p.epoch, e);
        }
        epoch = Some(p.epoch);
    }
    let got = rec.wait_for(5).await;
    let got: Vec<_> = got
        .into_iter()
        .filter_map(|d| match d {
            Delivered::Publication {
                topic,
                publication,
                epoch,
            } if topic == t => Some((publication, epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 5, "every publication is delivered once");
    for (i, (p, e)) in got.iter().enumerate() {
        assert_eq!(p.offset, i as u64 + 1);
        assert_eq!(p.kind, 7);
        assert_eq!(p.data, Bytes::from(format!("m{}", i + 1)));
        assert_eq!(Some(e.as_str()), epoch.as_deref());
    }
    let pos = b.position(&t).await.unwrap();
    assert_eq!((pos.offset, Some(pos.epoch)), (5, epoch.clone()));

    // History: after an offset, newest N, and bounded by size.
    let page = b.history(&t, Some(2), 100).await.unwrap();
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(page.first_offset, 1);
    let page = b.history(&t, Some(1), 2).await.unwrap();
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    let page = b.history(&t, None, 2).await.unwrap();
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let page = b.history(&t, Some(5), 100).await.unwrap();
    assert!(page.publications.is_empty());
    for i in 6..=15u64 {
        b.publish(&t, 7, Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }
    let page = b.history(&t, Some(0), 100).await.unwrap();
    assert_eq!(
        page.first_offset, 6,
        "only the newest {} are kept",
        limits.size
    );
    assert_eq!(page.publications.first().map(|p| p.offset), Some(6));
    assert_eq!(page.publications.len(), 10);

    // Topics are independent; a new topic starts at offset 0.
    let u = unique("conf.other");
    let p = b.position(&u).await.unwrap();
    assert_eq!(p.offset, 0);
    let page = b.history(&u, Some(0), 10).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.first_offset, 1);

    // Events are delivered and not kept.
    rec.clear();
    b.subscribe(&u).await.unwrap();
    b.publish_event(&u, Arc::new(BusEvent::LayerDeleted))
        .await
        .unwrap();
    let got = rec.wait_for(1).await;
    assert!(got.contains(&Delivered::Event {
        topic: u.clone(),
        event: BusEvent::LayerDeleted,
    }));
    assert_eq!(b.position(&u).await.unwrap().offset, 0);

    // Concurrent publishers: unique offsets, delivered in offset order.
    rec.clear();
    let c = unique("conf.concurrent");
    b.subscribe(&c).await.unwrap();
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let b = b.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut offs = Vec::new();
            for i in 0..50 {
                offs.push(
                    b.publish(&c, 1, Bytes::from(format!("{w}-{i}")))
                        .await
                        .unwrap()
                        .offset,
                );
            }
            offs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<u64>>());
    let got = rec.wait_for(200).await;
    let offs: Vec<u64> = got
        .iter()
        .filter_map(|d| match d {
            Delivered::Publication {
                topic, publication, ..
            } if *topic == c => Some(publication.offset),
            _ => None,
        })
        .collect();
    assert_eq!(
        offs,
        (1..=200).collect::<Vec<u64>>(),
        "delivery follows offset order"
    );
}
