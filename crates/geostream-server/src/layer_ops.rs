//! Layers on a node: edits (durable first, then published), subscriptions (snapshot, resume,
//! viewport moves) and gap repair.
//!
//! An edit's way: [`Node::apply`] → the store commits and syncs it and gives it the layer's
//! next sequence number → the change is published through the broker → every node's hub
//! dispatches it in sequence order to the subscriptions it concerns. A change that reaches a
//! hub ahead of an earlier one waits; if the earlier one does not arrive within
//! [`GAP_WAIT`], the node reads it from the store's change log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use geostream_broker::Broker;
use geostream_core::api::{
    FeatureKind, LayerSubscribeResult, ResyncPush, SnapshotPush, SubscriptionUpdateResult,
};
use geostream_core::codec::encode_push;
use geostream_core::feature::{Change, Feature};
use geostream_filter::Filter;
use geostream_hub::{ChangeView, LayerRecovering, Outgoing, Prepared, PushEvent, Session, Side};
use geostream_store::{
    ChangePage, LayerInfo, LayerSpec, SnapshotRequest, Store, WriteOutcome, WriteRequest,
};
use serde_json::Value;

use crate::error::{Result, ServerError};
use crate::node::{Node, kind};

/// How long a change may wait for an earlier one before the node reads the gap from the store.
pub(crate) const GAP_WAIT: Duration = Duration::from_millis(200);

/// The broker topic of a layer's changes. `$` cannot start a channel name, so layer topics
/// never collide with channels.
pub(crate) fn layer_topic(layer: &str) -> String {
    format!("$layer/{layer}")
}

/// How a layer subscription starts.
pub(crate) enum Start {
    /// Send a snapshot as of `seq`, in pages.
    Snapshot(geostream_store::Snapshot),
    /// Replay these changes (after the client's `since`), in order.
    Replay(Vec<Change>),
    /// Neither: the client asked for no snapshot.
    Nothing,
}

/// A layer subscription registered but not yet live; the transport sends `result` first and
/// then calls [`Node::activate_layer_sub`].
pub(crate) struct PendingLayerSub {
    pub(crate) result: LayerSubscribeResult,
    pub(crate) start: Start,
    pub(crate) resync: bool,
    pub(crate) filter: Arc<Filter>,
    pub(crate) recovering: LayerRecovering,
}

impl Node {
    /// Creates a layer (and tells the hub it starts at sequence 0).
    pub async fn create_layer(&self, spec: LayerSpec) -> Result<LayerInfo> {
        geostream_core::api::validate_name("layer", &spec.name).map_err(ServerError::invalid)?;
        let info = self.store.create_layer(spec).await?;
        self.hub.init_layer(&info.name, info.seq);
        Ok(info)
    }

    /// Deletes a layer; every node ends its subscriptions to it.
    pub async fn delete_layer(&self, name: &str) -> Result<()> {
        self.store.delete_layer(name).await?;
        let _ = self
            .broker
            .publish_ephemeral(&layer_topic(name), kind::LAYER_DELETED, Bytes::new())
            .await;
        Ok(())
    }

    /// Applies an edit durably, then publishes its changes.
    pub async fn apply(&self, req: WriteRequest) -> Result<WriteOutcome> {
        let outcome = self.store.apply(req).await?;
        if !outcome.replayed {
            for c in &outcome.changes {
                self.publish_change(c).await;
            }
        }
        Ok(outcome)
    }

    pub(crate) async fn publish_change(&self, c: &Change) {
        match rmp_serde::to_vec_named(c) {
            Ok(data) => {
                if let Err(e) = self
                    .broker
                    .publish_ephemeral(&layer_topic(&c.layer), kind::CHANGE, Bytes::from(data))
                    .await
                {
                    // The change is durable; subscribers get it from the change log when the
                    // next change reveals the gap.
                    tracing::warn!(layer = %c.layer, seq = c.seq, error = %e, "Could not publish a change.");
                }
            }
            Err(e) => tracing::error!(error = %e, "Could not encode a change."),
        }
    }

    /// Reads missing changes from the store after a short wait, if they have not arrived.
    pub(crate) async fn fill_gap(&self, layer: &str, missing: u64) {
        tokio::time::sleep(GAP_WAIT).await;
        let mut last = self.hub.layer_last_seq(layer);
        while last < missing {
            let page: ChangePage = match self.store.changes(layer, last, 1000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(layer, error = %e, "Could not read the change log to fill a gap.");
                    return;
                }
            };
            if page.first_retained > last + 1 {
                // Gone from the log: let the hub move on; subscribers resync on their own.
                tracing::warn!(
                    layer,
                    from = last + 1,
                    to = page.first_retained - 1,
                    "Changes are no longer in the log; skipping them."
                );
                self.hub.init_layer(layer, page.first_retained - 1);
            }
            if page.changes.is_empty() {
                return;
            }
            for c in page.changes {
                let _ = self.hub.dispatch_change(Arc::new(c));
            }
            let now = self.hub.layer_last_seq(layer);
            if now <= last {
                return;
            }
            last = now;
        }
    }

    /// Registers a layer subscription and reads how it starts.
    pub(crate) async fn subscribe_layer(
        &self,
        session: &Arc<Session>,
        layer: &str,
        filter: Arc<Filter>,
        since: Option<u64>,
        snapshot: bool,
        page_size: usize,
    ) -> Result<PendingLayerSub> {
        let info = self.store.layer(layer).await?;
        let recovering = self
            .hub
            .add_layer_sub(session, &info.name, filter.clone())?;
        let sub = recovering.sub;
        let started = self
            .read_layer_start(&info.name, &filter, since, snapshot, page_size)
            .await;
        match started {
            Ok((seq, start, recovered, resync)) => {
                let replayed = match (&start, since) {
                    (Start::Replay(c), Some(_)) => Some(c.len() as u64),
                    (_, Some(_)) => Some(0),
                    _ => None,
                };
                Ok(PendingLayerSub {
                    result: LayerSubscribeResult {
                        sub,
                        layer: info.name.clone(),
                        seq,
                        recovered,
                        replayed,
                    },
                    start,
                    resync,
                    filter,
                    recovering,
                })
            }
            Err(e) => {
                let _ = self.hub.remove_sub(session, sub);
                Err(e)
            }
        }
    }

    async fn read_layer_start(
        &self,
        layer: &str,
        filter: &Arc<Filter>,
        since: Option<u64>,
        snapshot: bool,
        page_size: usize,
    ) -> Result<(u64, Start, Option<bool>, bool)> {
        if let Some(since) = since {
            let max = self.config.layers.max_replay;
            let mut changes = Vec::new();
            let mut from = since;
            loop {
                let page = self.store.changes(layer, from, 1000).await?;
                if page.first_retained > since + 1 || since > page.seq {
                    break; // out of retention (or a position from the future): resync
                }
                let n = page.changes.len();
                if let Some(last) = page.changes.last() {
                    from = last.seq;
                }
                changes.extend(page.changes);
                if changes.len() > max {
                    break; // too much to replay: a snapshot is cheaper
                }
                if n == 0 || from >= page.seq {
                    return Ok((from.max(since), Start::Replay(changes), Some(true), false));
                }
            }
            let snap = self
                .store
                .snapshot(
                    layer,
                    SnapshotRequest {
                        bbox: filter.bbox(),
                        filter: Some(filter.clone()),
                        since: None,
                        page_size,
                    },
                )
                .await?;
            return Ok((snap.seq, Start::Snapshot(snap), Some(false), true));
        }
        if !snapshot {
            let info = self.store.layer(layer).await?;
            return Ok((info.seq, Start::Nothing, None, false));
        }
        let snap = self
            .store
            .snapshot(
                layer,
                SnapshotRequest {
                    bbox: filter.bbox(),
                    filter: Some(filter.clone()),
                    since: None,
                    page_size,
                },
            )
            .await?;
        Ok((snap.seq, Start::Snapshot(snap), None, false))
    }

    /// Makes a layer subscription live: replays or streams the snapshot (waiting for room in
    /// the client's queue between pages), then releases the live changes held meanwhile.
    pub(crate) async fn activate_layer_sub(
        self: &Arc<Self>,
        session: &Arc<Session>,
        p: PendingLayerSub,
    ) {
        let sub = p.recovering.sub;
        let seq = p.result.seq;
        let layer: Arc<str> = p.recovering.layer.clone();
        match p.start {
            Start::Nothing => {
                self.finish_layer_sub(session, p.recovering, seq, &p.filter)
                    .await;
            }
            Start::Replay(changes) => {
                for c in changes {
                    let c = Arc::new(c);
                    if let Some(k) = ChangeView::new(&c).kind(&p.filter) {
                        let key: Arc<str> = Arc::from(c.id.as_str());
                        let push = Prepared::new(PushEvent::Feature {
                            change: c.clone(),
                            kind: k,
                            full: k == FeatureKind::Enter,
                        });
                        session.outbox.push_state(sub, &key, push);
                    }
                }
                self.finish_layer_sub(session, p.recovering, seq, &p.filter)
                    .await;
            }
            Start::Snapshot(mut snap) => {
                let node = self.clone();
                let session = session.clone();
                let resync = p.resync;
                let filter = p.filter.clone();
                let recovering = p.recovering;
                // Pages are streamed by a task of their own so a large snapshot neither blocks
                // the connection's other requests nor grows its queue past the budget.
                tokio::spawn(async move {
                    let enc = session.encoding();
                    if resync {
                        let f = encode_push(
                            enc,
                            geostream_core::api::push::RESYNC,
                            &ResyncPush {
                                layer: &layer,
                                seq,
                                reason: "history no longer available",
                            },
                            None,
                        );
                        session.outbox.push_always(Outgoing::Frame(f.to_bytes(sub)));
                    }
                    // One page is held back so the final one can be marked `last`.
                    let mut pending: Option<Vec<Feature>> = None;
                    let mut sent_any = false;
                    loop {
                        let next = snap.pages.recv().await;
                        if let Some(page) = pending.take() {
                            if session.sub_target(sub).is_none()
                                || !session.outbox.wait_room().await
                            {
                                return; // unsubscribed or disconnected: stop reading
                            }
                            let f = encode_push(
                                enc,
                                geostream_core::api::push::SNAPSHOT,
                                &SnapshotPush {
                                    layer: &layer,
                                    seq,
                                    features: &page,
                                    last: next.is_none(),
                                },
                                None,
                            );
                            session.outbox.push_always(Outgoing::Frame(f.to_bytes(sub)));
                            sent_any = true;
                        }
                        match next {
                            None => break,
                            Some(Ok(page)) => pending = Some(page),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "Snapshot read failed.");
                                return;
                            }
                        }
                    }
                    if !sent_any {
                        // An empty snapshot still ends with a `last` page.
                        let f = encode_push(
                            enc,
                            geostream_core::api::push::SNAPSHOT,
                            &SnapshotPush {
                                layer: &layer,
                                seq,
                                features: &[],
                                last: true,
                            },
                            None,
                        );
                        session.outbox.push_always(Outgoing::Frame(f.to_bytes(sub)));
                    }
                    node.finish_layer_sub(&session, recovering, seq, &filter)
                        .await;
                });
            }
        }
    }

    async fn finish_layer_sub(
        &self,
        session: &Arc<Session>,
        r: LayerRecovering,
        seq: u64,
        filter: &Arc<Filter>,
    ) {
        let sub = r.sub;
        let layer = r.layer.clone();
        if !self.hub.finish_layer_recovery(r, seq) {
            // Too many changes arrived while the snapshot was sent: catch up from the log.
            let mut from = seq;
            while let Ok(page) = self.store.changes(&layer, from, 1000).await {
                if page.changes.is_empty() {
                    break;
                }
                for c in page.changes {
                    from = c.seq;
                    let c = Arc::new(c);
                    if let Some(k) = ChangeView::new(&c).kind(filter) {
                        let key: Arc<str> = Arc::from(c.id.as_str());
                        session.outbox.push_state(
                            sub,
                            &key,
                            Prepared::new(PushEvent::Feature {
                                change: c.clone(),
                                kind: k,
                                full: true,
                            }),
                        );
                    }
                }
            }
        }
    }

    /// Replaces a layer subscription's filter and sends the difference: `enter` for
    /// features now in view, `exit` for those that left, a whole `update` for those in view
    /// that changed meanwhile.
    pub(crate) async fn move_layer_sub(
        &self,
        session: &Arc<Session>,
        sub: u32,
        filter: Arc<Filter>,
    ) -> Result<(SubscriptionUpdateResult, Vec<Outgoing>, LayerRecovering)> {
        let m = self.hub.update_layer_sub(session, sub, filter.clone())?;
        let layer = m.recovering.layer.clone();
        let since = m.recovering.last_dispatched;
        let area = match (m.old_filter.bbox(), filter.bbox()) {
            (Some(a), Some(b)) => Some([
                a[0].min(b[0]),
                a[1].min(b[1]),
                a[2].max(b[2]),
                a[3].max(b[3]),
            ]),
            _ => None,
        };
        let snap = self
            .store
            .snapshot(
                &layer,
                SnapshotRequest {
                    bbox: area,
                    filter: None,
                    since: Some(since),
                    page_size: 1000,
                },
            )
            .await;
        let mut snap = match snap {
            Ok(s) => s,
            Err(e) => {
                self.hub.finish_layer_recovery(m.recovering, u64::MAX);
                return Err(e.into());
            }
        };
        // The state the client holds for a feature changed after `since`: the `old` side of
        // its first change after `since`.
        let mut before: HashMap<String, Option<Feature>> = HashMap::new();
        let mut latest: HashMap<String, Change> = HashMap::new();
        for c in std::mem::take(&mut snap.changes) {
            before.entry(c.id.clone()).or_insert_with(|| c.old.clone());
            latest.insert(c.id.clone(), c);
        }
        let seq = snap.seq;
        let enc = session.encoding();
        let mut out = Vec::new();
        let (mut entered, mut exited) = (0u64, 0u64);
        let mut seen = std::collections::HashSet::new();
        let mut push = |kind: FeatureKind, feature: &Feature, version: u64| {
            let change = synthetic(&layer, seq, feature, kind, version);
            let p = Prepared::new(PushEvent::Feature {
                change: Arc::new(change),
                kind,
                full: true,
            });
            out.push(Outgoing::Frame(p.frame(enc).to_bytes(sub)));
        };
        while let Some(page) = snap.pages.recv().await {
            let page = page?;
            for f in page {
                seen.insert(f.id.clone());
                let id = Value::String(f.id.clone());
                let now_in = Side::new(&f, None).matches(&filter, &id);
                let (had, changed) = match before.get(&f.id) {
                    Some(old) => (
                        old.as_ref()
                            .is_some_and(|o| Side::new(o, None).matches(&m.old_filter, &id)),
                        true,
                    ),
                    None => (Side::new(&f, None).matches(&m.old_filter, &id), false),
                };
                match (had, now_in) {
                    (false, true) => {
                        entered += 1;
                        push(FeatureKind::Enter, &f, f.version);
                    }
                    (true, false) => {
                        exited += 1;
                        push(FeatureKind::Exit, &f, f.version);
                    }
                    (true, true) if changed => push(FeatureKind::Update, &f, f.version),
                    _ => {}
                }
            }
        }
        // Features that changed after `since` and are now outside the searched area, or gone.
        for (id, old) in &before {
            if seen.contains(id) {
                continue;
            }
            let idv = Value::String(id.clone());
            let Some(old) = old else { continue };
            if !Side::new(old, None).matches(&m.old_filter, &idv) {
                continue;
            }
            let latest = latest.get(id);
            let gone = latest.is_some_and(|c| c.new.is_none());
            let now = latest.and_then(|c| c.new.as_ref());
            if now.is_some_and(|n| Side::new(n, None).matches(&filter, &idv)) {
                // Still in view (the area search missed it only if it has no geometry).
                if let Some(n) = now {
                    push(FeatureKind::Update, n, n.version);
                }
                continue;
            }
            exited += 1;
            let version = latest.map_or(old.version, |c| c.version);
            push(
                if gone {
                    FeatureKind::Delete
                } else {
                    FeatureKind::Exit
                },
                old,
                version,
            );
        }
        Ok((
            SubscriptionUpdateResult {
                sub,
                seq,
                entered,
                exited,
            },
            out,
            m.recovering,
        ))
    }
}

/// A change record for a push that is not the result of one change (a viewport difference).
fn synthetic(layer: &str, seq: u64, f: &Feature, kind: FeatureKind, version: u64) -> Change {
    let gone = matches!(kind, FeatureKind::Exit | FeatureKind::Delete);
    Change {
        layer: layer.to_string(),
        seq,
        op: if gone {
            geostream_core::feature::ChangeOp::Delete
        } else {
            geostream_core::feature::ChangeOp::Update
        },
        id: f.id.clone(),
        version,
        old: None,
        new: (!gone).then(|| f.clone()),
        old_bbox: None,
        new_bbox: f.bbox(),
        changed: Vec::new(),
        geometry_changed: false,
        author: None,
        op_id: None,
        time_ms: 0,
    }
}
