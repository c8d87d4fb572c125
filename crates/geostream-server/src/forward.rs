//! One writer across a cluster: a node hands each small write to its *owner*, one of the live
//! nodes chosen by rendezvous hashing over the membership table, so the edits of every node
//! join the same node's commit groups instead of each node committing small groups of its own
//! and waiting for the others' layer locks. `broker.write_owner` says what shares an owner:
//! every layer (`node`, the default: the whole cluster's small writes make one chain of
//! groups, as on one node) or each layer on its own (`layer`: the owners' planning and
//! publishing spread over the nodes, at one chain of groups per owner).
//!
//! Ownership is a speed-up, never a rule: versions, locks and operation ids are decided by the
//! store in the owner's transaction exactly as in anyone else's, so two nodes that briefly
//! disagree on the owner (one has not yet seen a node join or die) stay correct. The owner
//! publishes the changes it commits, which keeps a layer's changes on the bus in commit
//! order; the sender only answers its client.
//!
//! When the owner cannot be reached the sender writes itself, which is always safe: a
//! forwarded write carries an operation id (the client's, or one the sender makes up, unique
//! to it), so the store applies it at most once whichever node gets it through. If the owner
//! took the write and died before answering, the sender's own attempt finds it applied and
//! answers its outcome. A made-up id is the sender's business: the client is not told its
//! write was a replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use geostream_broker::{NatsBroker, NodeRequest, NodeRequestError};
use geostream_store::{WriteOutcome, WriteRequest};

use crate::config::WriteOwner;

/// The service name of forwarded writes on a node's subject.
const SERVICE: &str = "write";

/// An answer is the outcome with the feature before and after each change: at most about
/// three times the request. Larger requests are written locally so that no answer can be
/// too large for the bus.
const ANSWER_GROWTH: usize = 3;

/// The answer of a node that no longer applies writes (it is shutting down): the write was
/// not applied, and the sender applies it itself.
pub const NOT_APPLIED: Bytes = Bytes::new();

/// Writes of more operations than this are applied where they arrive. Forwarding pays for a
/// small write by letting it share a commit with others; a large batch is a group of its own
/// already, and carrying it and its outcome across the bus and back costs more than it saves
/// (measured: a replay in batches of 500 through a non-owner ran at 70 % of its local speed).
const MAX_FORWARDED_OPS: usize = 64;

/// Where this node's writes go.
pub struct Forwarding {
    nats: NatsBroker,
    /// What shares an owner.
    owner: WriteOwner,
    /// How long to wait for an owner's answer: the membership timeout, after which a silent
    /// owner is taken for dead and its layers move anyway.
    timeout: Duration,
    /// Writes sent to an owner that answered.
    answered: AtomicU64,
    /// Writes whose owner was not listening (or no longer applies writes), written here.
    not_delivered: AtomicU64,
    /// Writes whose owner did not answer in time.
    no_answer: AtomicU64,
    /// Writes this node applied for others.
    pub(crate) served: AtomicU64,
    /// Operation ids made up for forwarded writes without one.
    made_up: AtomicU64,
}

/// What became of a write handed to [`Forwarding::apply`].
pub enum Forwarded {
    /// The owner applied it (or refused it) and published its changes.
    Done(geostream_store::Result<WriteOutcome>),
    /// This node owns the layer, or the owner cannot be reached: apply it here.
    Local {
        /// The write, with an operation id if it was sent anywhere.
        req: WriteRequest,
        /// Its operation id was made up here, not the client's: a replay of it is the
        /// owner's work surfacing, not a repetition by the client.
        made_up_op_id: bool,
    },
}

impl Forwarding {
    /// Forwarding over `nats` to owners chosen by `owner`; an owner that has not answered
    /// after `timeout` is given up.
    pub fn new(nats: NatsBroker, owner: WriteOwner, timeout: Duration) -> Forwarding {
        Forwarding {
            nats,
            owner,
            timeout,
            answered: AtomicU64::new(0),
            not_delivered: AtomicU64::new(0),
            no_answer: AtomicU64::new(0),
            served: AtomicU64::new(0),
            made_up: AtomicU64::new(0),
        }
    }

    /// Appends this node's forwarding counters to a Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        crate::metrics::counter(
            out,
            "geostream_writes_forwarded_total",
            "Writes this node sent to their owner (`broker.write_owner`), by what came back (not_delivered: \
             the owner was not listening and this node wrote; no_answer: the owner did not \
             answer in time).",
            &[
                ("result=\"answered\"", n(&self.answered)),
                ("result=\"not_delivered\"", n(&self.not_delivered)),
                ("result=\"no_answer\"", n(&self.no_answer)),
            ],
        );
        crate::metrics::counter(
            out,
            "geostream_writes_served_total",
            "Writes other nodes forwarded to this node, their owner.",
            &[("", n(&self.served))],
        );
    }

    /// The writes other nodes forward to this one.
    pub async fn requests(
        &self,
    ) -> geostream_broker::Result<impl futures_util::Stream<Item = NodeRequest> + Send + 'static>
    {
        self.nats.node_requests(SERVICE).await
    }

    /// The owner of a write to `layer` when it is another node.
    fn remote_owner(&self, layer: &str) -> Option<Arc<str>> {
        let key = match self.owner {
            // Every node hashes the same key, so all of them name the same owner, and a node
            // leaving moves the writes only if it was that owner.
            WriteOwner::Node => "",
            WriteOwner::Layer => layer,
        };
        let owner = owner_of(key, &self.nats.service_nodes(SERVICE))?;
        (&*owner != self.nats.node_id()).then_some(owner)
    }

    /// Sends `req` to its owner, or gives it back to be applied here.
    pub async fn apply(&self, mut req: WriteRequest) -> Forwarded {
        let owner = match self.remote_owner(&req.layer) {
            Some(owner) if req.ops.len() <= MAX_FORWARDED_OPS => Some(owner),
            _ => None,
        };
        let Some(owner) = owner else {
            return Forwarded::Local {
                req,
                made_up_op_id: false,
            };
        };
        let made_up_op_id = req.op_id.is_none();
        if made_up_op_id {
            let n = self.made_up.fetch_add(1, Ordering::Relaxed);
            req.op_id = Some(format!("forwarded:{}:{n}", self.nats.node_id()));
        }
        let local = |req| Forwarded::Local { req, made_up_op_id };
        let body = match serde_json::to_vec(&req) {
            Ok(b) if b.len() * ANSWER_GROWTH <= self.nats.max_payload() => Bytes::from(b),
            _ => return local(req),
        };
        match self
            .nats
            .request_node(&owner, SERVICE, body, self.timeout)
            .await
        {
            Ok(answer) if answer.is_empty() => {
                self.not_delivered.fetch_add(1, Ordering::Relaxed);
                local(req)
            }
            Ok(answer) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                let outcome =
                    serde_json::from_slice::<geostream_store::Result<WriteOutcome>>(&answer);
                match outcome {
                    Ok(Ok(mut o)) => {
                        // A made-up id is new to the store: the owner applied it now.
                        o.replayed &= !made_up_op_id;
                        Forwarded::Done(Ok(o))
                    }
                    Ok(Err(e)) => Forwarded::Done(Err(e)),
                    Err(e) => {
                        tracing::warn!(%owner, layer = req.layer, error = %e, "Unreadable answer from the write's owner; writing locally.");
                        local(req)
                    }
                }
            }
            Err(NodeRequestError::NotDelivered(e)) => {
                self.not_delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%owner, layer = req.layer, error = %e, "Writing locally: the write's owner is not listening.");
                local(req)
            }
            Err(NodeRequestError::NoAnswer(e)) => {
                self.no_answer.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%owner, layer = req.layer, error = %e, "The write's owner did not answer; writing locally (the operation id keeps it at most once).");
                local(req)
            }
        }
    }
}

/// Decodes a forwarded write, or gives the answer to send when it is unreadable:
/// [`NOT_APPLIED`], so that the sender, which read the write from its client, applies it
/// itself. A node of another version (during a rolling upgrade) or a bug on either side must
/// cost a slower write, never a client's edit refused as `invalid`.
pub fn decode(payload: &[u8]) -> Result<WriteRequest, Bytes> {
    serde_json::from_slice(payload).map_err(|e| {
        tracing::warn!(error = %e, "Could not read a write forwarded by another node; the sender applies it itself.");
        NOT_APPLIED
    })
}

/// Encodes the answer to a forwarded write.
pub fn encode(outcome: &geostream_store::Result<WriteOutcome>) -> Bytes {
    // Both sides are plain data; serializing them cannot fail.
    Bytes::from(serde_json::to_vec(outcome).expect("a write outcome serializes"))
}

/// The node that writes what `layer` names (a layer, or `""` for every layer): the one with
/// the highest hash of (layer, node), so that a node joining or leaving moves only its own
/// share of the layers.
fn owner_of(layer: &str, nodes: &[Arc<str>]) -> Option<Arc<str>> {
    nodes
        .iter()
        .max_by_key(|n| (weight(layer, n), Arc::clone(n)))
        .cloned()
}

/// FNV-1a over the layer, a separator and the node, then a SplitMix64 finaliser so that
/// similar names spread. Fixed here rather than std's hasher, whose output may change between
/// Rust releases: nodes built by different compilers must agree.
fn weight(layer: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in layer.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Vec<Arc<str>> {
        ids.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn every_node_names_the_same_owner_and_layers_spread() {
        let all = nodes(&["aB3dE5fG", "Zz81kLm0", "q0Q0q0Q0"]);
        let mut reversed = all.clone();
        reversed.reverse();
        let mut per_node = std::collections::HashMap::new();
        for i in 0..300 {
            let layer = format!("layer-{i}");
            let owner = owner_of(&layer, &all).unwrap();
            assert_eq!(owner, owner_of(&layer, &reversed).unwrap());
            *per_node.entry(owner).or_insert(0) += 1;
        }
        // Three nodes share 300 layers about evenly.
        assert_eq!(per_node.len(), 3);
        assert!(
            per_node.values().all(|&n| (70..=130).contains(&n)),
            "{per_node:?}"
        );
        assert_eq!(owner_of("x", &[]), None);
    }

    #[test]
    fn an_unreadable_write_is_handed_back_to_its_sender() {
        assert_eq!(decode(b"{\"layer\": 7}"), Err(NOT_APPLIED));
        assert_eq!(decode(b"\xff"), Err(NOT_APPLIED));
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_layers() {
        let all = nodes(&["n1", "n2", "n3", "n4"]);
        let without = nodes(&["n1", "n2", "n4"]);
        for i in 0..200 {
            let layer = format!("l{i}");
            let before = owner_of(&layer, &all).unwrap();
            let after = owner_of(&layer, &without).unwrap();
            if &*before != "n3" {
                assert_eq!(before, after, "{layer}");
            }
        }
    }
}
