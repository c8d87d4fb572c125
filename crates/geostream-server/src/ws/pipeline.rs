//! Pipelined requests: which requests of a connection may run at the same time, and the
//! order kept among those that touch the same thing.
//!
//! Edits and feature reads run concurrently (up to `websocket.max_inflight_requests` per
//! connection), so one client's edits share the store's commits instead of waiting for each
//! other's flush. Two of them that touch the same feature still run in the order they
//! arrived: each takes a place in the chains of every key it touches. It starts once its
//! predecessors' writes have committed, and answers once their answers are queued. So a
//! stream of batches on the same features (a replay of moving vehicles) writes batch n + 1
//! while batch n is routed to its subscribers and answered, and the answers still go out in
//! order. Everything else (hello, subscriptions, locks, channel publishes,
//! pings ...) is a barrier: it waits for the requests in flight, then runs alone in the
//! connection's reader, as a serial connection would. Channel requests stay there because
//! they are cheap: as tasks of their own, a stream of publishes to one channel waited for
//! the scheduler between each other behind every subscriber's writer (a fan-out benchmark
//! fell to a quarter of its rate).

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
    /// Concurrently, after the earlier requests that share one of these keys.
    Pipelined(Vec<Key>),
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
        Some(k) => Lane::Pipelined(k),
        None => Lane::Serial,
    }
}

/// The last request of each key, by its two signals (a sender is dropped when its moment
/// has come, or when the request ends however it ends: answered, failed, timed out or
/// cancelled).
#[derive(Default)]
pub(crate) struct Order {
    /// Dropped once the request's write has committed (or it will write nothing).
    committed: HashMap<Key, watch::Receiver<()>>,
    /// Dropped once the request's answer is queued.
    answered: HashMap<Key, watch::Receiver<()>>,
}

/// Entries kept before finished chains are pruned.
const PRUNE_AT: usize = 512;

/// A pipelined request's place in the chains of its keys.
pub(crate) struct Place {
    /// The predecessors' commits: the request starts after them.
    pub(crate) after_commit: Vec<watch::Receiver<()>>,
    /// The predecessors' answers: the request answers after them.
    pub(crate) after_answer: Vec<watch::Receiver<()>>,
    /// This request's commit, for its successors.
    pub(crate) committed: Committed,
    /// This request's answer, for its successors: drop it once the answer is queued.
    pub(crate) answered: watch::Sender<()>,
}

impl Order {
    /// Takes the place after the current last request of each key.
    pub(crate) fn enqueue(&mut self, keys: &[Key]) -> Place {
        let (committed, committed_rx) = watch::channel(());
        let (answered, answered_rx) = watch::channel(());
        // A batch may touch one feature twice: waiting on its own signal would never end.
        let mut keys: Vec<&Key> = keys.iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let mut after_commit = Vec::with_capacity(keys.len());
        let mut after_answer = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(prev) = self.committed.insert(k.clone(), committed_rx.clone()) {
                after_commit.push(prev);
            }
            if let Some(prev) = self.answered.insert(k.clone(), answered_rx.clone()) {
                after_answer.push(prev);
            }
        }
        if self.answered.len() > PRUNE_AT {
            // A closed channel is a finished request.
            self.committed.retain(|_, r| r.has_changed().is_ok());
            self.answered.retain(|_, r| r.has_changed().is_ok());
        }
        Place {
            after_commit,
            after_answer,
            committed: Committed(Mutex::new(Some(committed))),
            answered,
        }
    }
}

/// Told when a request's write has committed (the store has ordered it), so that the next
/// request on the same features may start while this one is still publishing and answering.
/// Also told, by being dropped, when the request ends without writing.
#[derive(Default)]
pub(crate) struct Committed(Mutex<Option<watch::Sender<()>>>);

impl Committed {
    /// The write has committed (or failed): successors may start.
    pub(crate) fn signal(&self) {
        drop(self.0.lock().take());
    }
}

/// Waits until every predecessor is done.
pub(crate) async fn wait_for(after: Vec<watch::Receiver<()>>) {
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

    #[tokio::test]
    async fn requests_on_one_key_run_in_arrival_order_others_do_not_wait() {
        let mut order = Order::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // a1 is slow; a2 and the batch (a, b) must wait for it; c runs at once.
        for (name, keys, ms) in [
            ("a1", vec!["a"], 100u64),
            ("a2", vec!["a"], 0),
            ("ab", vec!["a", "b", "a"], 0),
            ("c", vec!["c"], 0),
            ("b", vec!["b"], 0),
        ] {
            let keys: Vec<Key> = keys.into_iter().map(String::from).collect();
            let place = order.enqueue(&keys);
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                wait_for(place.after_commit).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                log.lock().push(name);
                drop(place.committed);
                wait_for(place.after_answer).await;
                drop(place.answered);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().clone();
        let pos = |n: &str| log.iter().position(|x| *x == n).unwrap();
        assert!(pos("a1") < pos("a2") && pos("a2") < pos("ab") && pos("ab") < pos("b"));
        assert!(
            pos("c") < pos("a1"),
            "an unrelated key does not wait: {log:?}"
        );
    }

    #[tokio::test]
    async fn a_successor_starts_after_the_commit_and_answers_after_the_answer() {
        let mut order = Order::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keys = vec![Key::from("a")];
        // a1 commits at once and answers late; a2 is quick.
        let first = order.enqueue(&keys);
        let second = order.enqueue(&keys);
        let l1 = log.clone();
        let t1 = tokio::spawn(async move {
            wait_for(first.after_commit).await;
            l1.lock().push("a1 committed");
            first.committed.signal();
            tokio::time::sleep(Duration::from_millis(100)).await;
            wait_for(first.after_answer).await;
            l1.lock().push("a1 answered");
            drop(first.answered);
        });
        let l2 = log.clone();
        let t2 = tokio::spawn(async move {
            wait_for(second.after_commit).await;
            l2.lock().push("a2 committed");
            drop(second.committed);
            wait_for(second.after_answer).await;
            l2.lock().push("a2 answered");
            drop(second.answered);
        });
        t1.await.unwrap();
        t2.await.unwrap();
        assert_eq!(
            *log.lock(),
            ["a1 committed", "a2 committed", "a1 answered", "a2 answered"]
        );
    }
}
