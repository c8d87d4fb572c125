//! Pipelined requests: which requests of a connection may run at the same time, and the
//! order kept among them.
//!
//! Edits and feature reads run concurrently (up to `websocket.max_inflight_requests` per
//! connection), so one client's edits share the store's commits instead of waiting for each
//! other's flush. Their effects still come in the order the requests arrived:
//!
//! * **Writes are handed to the store in arrival order.** Each write waits for its turn:
//!   the previous write has been handed to the store (whose queue orders it, see
//!   [`geostream_store::Store::apply`]) or has ended without writing. So the sequence
//!   numbers of a connection's edits follow the order it sent them, across features too (a
//!   replay of a file gets the file's order), while their commits and answers overlap: a
//!   stream of batches (moving vehicles) is written group after group without waiting for
//!   each batch's flush.
//! * **A read sees the writes sent before it, and no later one.** A read waits for the
//!   commit of the last write before it on the same feature, and a write on a feature waits
//!   for the reads of it that came before.
//! * **Answers on one feature go out in arrival order**: each request answers once the
//!   earlier requests on the same features have answered.
//!
//! Everything else (hello, subscriptions, locks, channel publishes, pings ...) is a barrier:
//! it waits for the requests in flight, then runs alone in the connection's reader, as a
//! serial connection would. Channel requests stay there because they are cheap: as tasks of
//! their own, a stream of publishes to one channel waited for the scheduler between each
//! other behind every subscriber's writer (a fan-out benchmark fell to a quarter of its
//! rate).

use std::collections::HashMap;

use geostream_core::api::BatchOp;
use geostream_core::feature::FeatureLimits;
use geostream_core::request::Request;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::features::feature_id;

/// What a request must keep its order with.
pub(crate) type Key = String;

/// How a request runs.
pub(crate) enum Lane {
    /// After every request in flight, alone.
    Serial,
    /// Concurrently, in order with the earlier requests on these keys (and, for a write,
    /// with the earlier writes).
    Pipelined {
        /// The features the request touches.
        keys: Vec<Key>,
        /// Whether it writes (an edit) rather than reads.
        writes: bool,
    },
}

fn feature_key(layer: &str, id: &Value, limits: &FeatureLimits) -> Option<Key> {
    let id = feature_id(id, limits).ok()?;
    Some(format!("f\u{0}{layer}\u{0}{id}"))
}

/// The lane of a request. A request whose ids cannot be read runs serially (it fails there
/// with the right error).
pub(crate) fn lane(req: &Request, limits: &FeatureLimits) -> Lane {
    let keys = match req {
        // Without an id the server makes a fresh one: nothing to keep an order with.
        Request::FeatureCreate(p) => match p.feature.get("id") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(id) => feature_key(&p.layer, id, limits).map(|k| vec![k]),
        },
        Request::FeatureReplace(p) => feature_key(&p.layer, &p.id, limits).map(|k| vec![k]),
        Request::FeaturePatch(p) => feature_key(&p.layer, &p.id, limits).map(|k| vec![k]),
        Request::FeatureDelete(p) => feature_key(&p.layer, &p.id, limits).map(|k| vec![k]),
        Request::FeatureGet(p) => feature_key(&p.layer, &p.id, limits).map(|k| vec![k]),
        Request::FeatureBatch(p) => p
            .ops
            .iter()
            .filter_map(|op| match op {
                BatchOp::Create { feature } => match feature.get("id") {
                    None | Some(Value::Null) => None,
                    Some(id) => Some(feature_key(&p.layer, id, limits)),
                },
                BatchOp::Replace { id, .. }
                | BatchOp::Patch { id, .. }
                | BatchOp::Delete { id, .. } => Some(feature_key(&p.layer, id, limits)),
            })
            .collect::<Option<Vec<Key>>>(),
        _ => None,
    };
    match keys {
        Some(keys) => Lane::Pipelined {
            keys,
            writes: !matches!(req, Request::FeatureGet(_)),
        },
        None => Lane::Serial,
    }
}

/// What came before on one feature.
struct KeyState {
    /// The last write's commit (closed once it committed, or ended without writing).
    write: Option<watch::Receiver<()>>,
    /// The reads that came after that write, until each ends.
    reads: Vec<watch::Receiver<()>>,
    /// The last request's answer (closed once it is queued).
    answered: watch::Receiver<()>,
}

/// The order of a connection's pipelined requests: signals are never sent, a sender is
/// dropped when its moment has come, or when the request ends however it ends (answered,
/// failed, timed out or cancelled).
#[derive(Default)]
pub(crate) struct Order {
    keys: HashMap<Key, KeyState>,
    /// Closed once the last write has been handed to the store (or ended without writing).
    turn: Option<watch::Receiver<()>>,
}

/// Entries kept before finished chains are pruned.
const PRUNE_AT: usize = 512;

fn open(r: &watch::Receiver<()>) -> bool {
    r.has_changed().is_ok()
}

/// A pipelined request's place among the others.
pub(crate) struct Place {
    /// A write's turn: the previous write has been handed to the store.
    pub(crate) after_turn: Option<watch::Receiver<()>>,
    /// What must have happened on its features before it starts: for a read, the last
    /// write's commit; for a write, the end of the reads since the last write.
    pub(crate) after_commit: Vec<watch::Receiver<()>>,
    /// The predecessors' answers: the request answers after them.
    pub(crate) after_answer: Vec<watch::Receiver<()>>,
    /// This request's progress, for its successors.
    pub(crate) signals: Signals,
    /// This request's answer, for its successors: drop it once the answer is queued.
    pub(crate) answered: watch::Sender<()>,
}

impl Order {
    /// Takes the place after the requests that came before.
    pub(crate) fn enqueue(&mut self, keys: &[Key], writes: bool) -> Place {
        let (committed, committed_rx) = watch::channel(());
        let (answered, answered_rx) = watch::channel(());
        let (submitted, after_turn) = if writes {
            let (tx, rx) = watch::channel(());
            (Some(tx), self.turn.replace(rx))
        } else {
            (None, None)
        };
        // A batch may touch one feature twice: waiting on its own signal would never end.
        let mut keys: Vec<&Key> = keys.iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let mut after_commit = Vec::new();
        let mut after_answer = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(st) = self.keys.get_mut(k) else {
                self.keys.insert(
                    k.clone(),
                    KeyState {
                        write: writes.then(|| committed_rx.clone()),
                        reads: if writes {
                            Vec::new()
                        } else {
                            vec![committed_rx.clone()]
                        },
                        answered: answered_rx.clone(),
                    },
                );
                continue;
            };
            after_answer.push(std::mem::replace(&mut st.answered, answered_rx.clone()));
            if writes {
                // Earlier writes are ordered by the turn and the store's queue.
                after_commit.append(&mut st.reads);
                st.write = Some(committed_rx.clone());
            } else {
                after_commit.extend(st.write.clone());
                st.reads.retain(open);
                st.reads.push(committed_rx.clone());
            }
        }
        if self.keys.len() > PRUNE_AT {
            self.keys.retain(|_, st| {
                open(&st.answered)
                    || st.write.as_ref().is_some_and(open)
                    || st.reads.iter().any(open)
            });
        }
        Place {
            after_turn,
            after_commit,
            after_answer,
            signals: Signals {
                submitted: Mutex::new(submitted),
                committed: Mutex::new(Some(committed)),
            },
            answered,
        }
    }
}

/// Told as a pipelined request's write progresses: once it is handed to the store (the next
/// write may be handed over) and once it has committed (reads of its features may start while
/// it is still publishing and answering). Both are told, by being dropped, when the request
/// ends without writing.
#[derive(Default)]
pub(crate) struct Signals {
    submitted: Mutex<Option<watch::Sender<()>>>,
    committed: Mutex<Option<watch::Sender<()>>>,
}

impl Signals {
    /// The write is in the store's queue, its order fixed.
    pub(crate) fn submitted(&self) {
        drop(self.submitted.lock().take());
    }

    /// The write has committed (or failed, or there was none).
    pub(crate) fn committed(&self) {
        self.submitted();
        drop(self.committed.lock().take());
    }
}

/// Waits until every predecessor is done.
pub(crate) async fn wait_for(after: impl IntoIterator<Item = watch::Receiver<()>>) {
    for mut r in after {
        // Nothing is ever sent: this returns when the sender is dropped.
        while r.changed().await.is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    fn keys(k: &[&str]) -> Vec<Key> {
        k.iter().map(|k| k.to_string()).collect()
    }

    /// A request as the connection runs it: waits for its place, takes `before_ms` to reach
    /// the store (a write) or to read, is committed `commit_ms` later, then answers.
    fn run(
        order: &mut Order,
        log: &Log,
        name: &'static str,
        k: &[&str],
        writes: bool,
        before_ms: u64,
        commit_ms: u64,
    ) -> tokio::task::JoinHandle<()> {
        let place = order.enqueue(&keys(k), writes);
        let log = log.clone();
        tokio::spawn(async move {
            wait_for(place.after_commit).await;
            wait_for(place.after_turn).await;
            log.lock().push(format!("{name} start"));
            tokio::time::sleep(Duration::from_millis(before_ms)).await;
            log.lock().push(format!("{name} submitted"));
            place.signals.submitted();
            tokio::time::sleep(Duration::from_millis(commit_ms)).await;
            log.lock().push(format!("{name} committed"));
            place.signals.committed();
            wait_for(place.after_answer).await;
            log.lock().push(format!("{name} answered"));
            drop(place.answered);
        })
    }

    fn pos(log: &[String], what: &str) -> usize {
        log.iter()
            .position(|x| x == what)
            .unwrap_or_else(|| panic!("{what} is not in {log:?}"))
    }

    #[tokio::test]
    async fn writes_reach_the_store_in_arrival_order_and_commit_together() {
        let mut order = Order::default();
        let log = Log::default();
        // a1 is slow to reach the store; b (another feature) and a2 come after it and must
        // be handed over after it, but need not wait for its commit.
        let tasks = [
            run(&mut order, &log, "a1", &["a"], true, 60, 200),
            run(&mut order, &log, "b", &["b"], true, 0, 0),
            run(&mut order, &log, "a2", &["a", "a"], true, 0, 0),
            run(&mut order, &log, "c", &["c"], true, 0, 0),
        ];
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().clone();
        let submitted = |n: &str| pos(&log, &format!("{n} submitted"));
        assert!(
            submitted("a1") < submitted("b")
                && submitted("b") < submitted("a2")
                && submitted("a2") < submitted("c"),
            "handed over in arrival order: {log:?}"
        );
        assert!(
            submitted("c") < pos(&log, "a1 committed"),
            "later writes do not wait for an earlier commit: {log:?}"
        );
        assert!(
            pos(&log, "a1 answered") < pos(&log, "a2 answered"),
            "answers on one feature keep their order: {log:?}"
        );
        assert!(
            pos(&log, "b answered") < pos(&log, "a1 answered"),
            "answers on other features do not wait: {log:?}"
        );
    }

    #[tokio::test]
    async fn a_read_sees_the_writes_before_it_and_none_after() {
        let mut order = Order::default();
        let log = Log::default();
        let tasks = [
            // w1 commits late: the read of its feature waits for the commit ...
            run(&mut order, &log, "w1", &["a"], true, 0, 150),
            run(&mut order, &log, "r", &["a"], false, 50, 0),
            // ... a read of another feature does not ...
            run(&mut order, &log, "r2", &["b"], false, 0, 0),
            // ... and the next write of the feature waits for the read to end.
            run(&mut order, &log, "w2", &["a"], true, 0, 0),
        ];
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().clone();
        assert!(pos(&log, "w1 committed") < pos(&log, "r start"), "{log:?}");
        assert!(pos(&log, "r2 start") < pos(&log, "w1 committed"), "{log:?}");
        assert!(pos(&log, "r committed") < pos(&log, "w2 start"), "{log:?}");
    }

    #[tokio::test]
    async fn a_request_that_ends_without_writing_lets_the_next_go() {
        let mut order = Order::default();
        let first = order.enqueue(&keys(&["a"]), true);
        let second = order.enqueue(&keys(&["b"]), true);
        // Refused before it reached the store (or cancelled): its place is dropped.
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), wait_for(second.after_turn))
            .await
            .expect("the turn passes on when a write ends without writing");
    }
}
