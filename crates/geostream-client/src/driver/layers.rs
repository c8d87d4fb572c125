//! Layer subscriptions: a snapshot, then changes, resumed after a reconnect from the last
//! sequence number delivered, and viewport moves (`subscription.update`).

use std::borrow::Cow;

use geostream_core::api::{
    self, FeatureKind, FeaturePush, FilterSpec, LayerSubscribeParams, LayerSubscribeResult,
    LockPush, ResyncPush, SnapshotPush, SubscriptionUpdateParams, SubscriptionUpdateResult,
};
use geostream_core::codec::Params;
use geostream_core::error::RpcError;
use tokio::sync::{mpsc, oneshot};

use super::{Driver, Origin, Ready, Sub, SubKind, decode, reason_of};
use crate::error::{ClientError, Result};
use crate::events::FeatureEvent;

pub(super) struct LayerSub {
    layer: String,
    /// The filter the client's state (`seq`) corresponds to.
    acked: FilterSpec,
    /// The filter the application asked for last.
    desired: FilterSpec,
    snapshot: bool,
    page_size: Option<usize>,
    /// The last sequence number delivered.
    seq: u64,
    /// Whether the stream is complete up to `seq` (no snapshot page missing).
    snapshot_done: bool,
    /// Whether the subscription ever got a result (so a new one is a resume).
    started: bool,
    /// A fresh snapshot replaces an interrupted one: announce it with `Resync`.
    restart: bool,
    /// The sequence number of the viewport difference being delivered (after a
    /// `subscription.update` response), whose pushes all carry it.
    diff_seq: Option<u64>,
    /// A filter change made while disconnected waits for the reconnect.
    pub(super) update_reply: Option<oneshot::Sender<Result<SubscriptionUpdateResult>>>,
    tx: mpsc::UnboundedSender<FeatureEvent>,
}

fn filter_eq(a: &FilterSpec, b: &FilterSpec) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

impl LayerSub {
    pub(super) fn new(
        layer: String,
        filter: FilterSpec,
        snapshot: bool,
        page_size: Option<usize>,
        tx: mpsc::UnboundedSender<FeatureEvent>,
    ) -> LayerSub {
        LayerSub {
            layer,
            acked: filter.clone(),
            desired: filter,
            snapshot,
            page_size,
            seq: 0,
            snapshot_done: false,
            started: false,
            restart: false,
            diff_seq: None,
            update_reply: None,
            tx,
        }
    }

    /// The params of a (re)subscribe, and whether it starts fresh (with a snapshot).
    pub(super) fn subscribe_params(&mut self) -> (LayerSubscribeParams, bool) {
        let since = if self.started && self.snapshot_done {
            Some(self.seq)
        } else {
            // Never started, or its snapshot was cut: start over with the filter the
            // application wants now.
            self.restart = self.started;
            self.acked = self.desired.clone();
            None
        };
        let p = LayerSubscribeParams {
            layer: self.layer.clone(),
            filter: if since.is_some() {
                self.acked.clone()
            } else {
                self.desired.clone()
            },
            since,
            snapshot: Some(self.snapshot),
            page_size: self.page_size,
        };
        (p, since.is_none())
    }

    /// A move whose request was lost with the connection waits for the resubscribe.
    pub(super) fn keep_update_reply(
        &mut self,
        reply: Option<oneshot::Sender<Result<SubscriptionUpdateResult>>>,
    ) {
        if self.update_reply.is_none() {
            self.update_reply = reply;
        } else if let Some(r) = reply {
            let _ = r.send(Err(ClientError::ConnectionLost));
        }
    }

    /// A resubscribe failed: the stream ends.
    pub(super) fn end(self, e: ClientError) {
        let _ = self.tx.send(FeatureEvent::Unsubscribed {
            reason: e.to_string(),
        });
    }

    /// The (re)subscribe's result; returns the subscription id.
    pub(super) fn on_subscribed(
        &mut self,
        fresh: bool,
        result: &Params<'_>,
        ready: &mut Option<Ready>,
    ) -> Option<u32> {
        let res = match decode::<LayerSubscribeResult>(result) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Unexpected layer.subscribe result.");
                return None;
            }
        };
        self.diff_seq = None;
        if fresh || res.recovered != Some(true) {
            // A snapshot follows (after a `resync` push when resuming failed).
            self.seq = res.seq;
            self.snapshot_done = !self.snapshot && fresh;
            if fresh && self.restart {
                self.restart = false;
                let _ = self.tx.send(FeatureEvent::Resync {
                    seq: res.seq,
                    reason: "the snapshot was interrupted by a reconnect".into(),
                });
            }
        }
        self.started = true;
        if let Some(Ready::Layer(r)) = ready.take() {
            let _ = r.send(Ok(res.seq));
        }
        if filter_eq(&self.desired, &self.acked)
            && let Some(reply) = self.update_reply.take()
        {
            // The fresh snapshot already used the new filter.
            let _ = reply.send(Ok(SubscriptionUpdateResult {
                sub: res.sub,
                seq: res.seq,
                entered: 0,
                exited: 0,
            }));
        }
        Some(res.sub)
    }

    /// One push; true when it ends the subscription.
    pub(super) fn on_push(&mut self, method: &str, params: &Params<'_>) -> bool {
        let mut ended = false;
        let ev = match method {
            api::push::SNAPSHOT => decode::<SnapshotPush<'static>>(params).ok().map(|p| {
                self.seq = p.seq;
                self.diff_seq = None;
                if p.last {
                    self.snapshot_done = true;
                }
                FeatureEvent::Snapshot {
                    seq: p.seq,
                    features: p.features.into_owned(),
                    last: p.last,
                }
            }),
            api::push::FEATURE => decode::<FeaturePush<'static>>(params)
                .ok()
                .filter(|p| self.is_new(p.seq))
                .map(feature_event),
            api::push::RESYNC => decode::<ResyncPush<'static>>(params).ok().map(|p| {
                self.seq = p.seq;
                self.diff_seq = None;
                self.snapshot_done = false;
                FeatureEvent::Resync {
                    seq: p.seq,
                    reason: p.reason.into_owned(),
                }
            }),
            api::push::LOCK => decode::<LockPush>(params).ok().map(|l| FeatureEvent::Lock {
                lock: l.lock,
                locked: l.locked,
            }),
            api::push::UNSUBSCRIBED => {
                ended = true;
                reason_of(params).map(|reason| FeatureEvent::Unsubscribed { reason })
            }
            _ => None,
        };
        if let Some(ev) = ev {
            let _ = self.tx.send(ev);
        }
        ended
    }

    /// Whether a change at `seq` is to be delivered. The difference after a viewport move
    /// carries the move's sequence number; anything else at or below the last one delivered
    /// was delivered already (a change the server read for the snapshot or replay and also
    /// dispatched live): drop it.
    fn is_new(&mut self, seq: u64) -> bool {
        if self.diff_seq == Some(seq) {
            return true;
        }
        self.diff_seq = None;
        if seq <= self.seq {
            tracing::debug!(seq, last = self.seq, "Dropping a change delivered twice.");
            return false;
        }
        self.seq = seq;
        true
    }
}

/// The event a `feature` push means.
fn feature_event(p: FeaturePush<'static>) -> FeatureEvent {
    let geometry = p.geometry.map(|g| g.map(Cow::into_owned));
    match p.kind {
        FeatureKind::Enter => match p.feature {
            Some(feature) => FeatureEvent::Enter {
                seq: p.seq,
                feature: Box::new(feature.into_owned()),
            },
            None => FeatureEvent::Update {
                seq: p.seq,
                id: p.id.into_owned(),
                version: p.version,
                feature: None,
                properties: p.properties,
                geometry,
            },
        },
        FeatureKind::Update => FeatureEvent::Update {
            seq: p.seq,
            id: p.id.into_owned(),
            version: p.version,
            feature: p.feature.map(|f| Box::new(f.into_owned())),
            properties: p.properties,
            geometry,
        },
        FeatureKind::Exit => FeatureEvent::Exit {
            seq: p.seq,
            id: p.id.into_owned(),
            version: p.version,
        },
        FeatureKind::Delete => FeatureEvent::Delete {
            seq: p.seq,
            id: p.id.into_owned(),
            version: p.version,
        },
    }
}

impl Driver {
    /// `FeatureStream::set_filter`: moves the viewport now, or once the subscription is back.
    pub(super) fn update_filter(
        &mut self,
        local: u64,
        filter: FilterSpec,
        reply: oneshot::Sender<Result<SubscriptionUpdateResult>>,
    ) {
        let online = self.online;
        let Some(sub) = self.subs.get_mut(&local) else {
            let _ = reply.send(Err(ClientError::Closed));
            return;
        };
        let SubKind::Layer(ls) = &mut sub.kind else {
            let _ = reply.send(Err(ClientError::Decode("not a layer subscription".into())));
            return;
        };
        ls.desired = filter.clone();
        match sub.server {
            Some(server) if online => self.send_filter(local, server, filter, Some(reply)),
            // Applied once the subscription is back (see `after_layer_subscribed`).
            _ => {
                if let Some(old) = ls.update_reply.replace(reply) {
                    let _ = old.send(Err(ClientError::Decode(
                        "superseded by a later filter".into(),
                    )));
                }
            }
        }
    }

    fn send_filter(
        &mut self,
        local: u64,
        server: u32,
        filter: FilterSpec,
        reply: Option<oneshot::Sender<Result<SubscriptionUpdateResult>>>,
    ) {
        let params = SubscriptionUpdateParams {
            sub: server,
            filter: filter.clone(),
        };
        self.send_internal(
            api::method::SUBSCRIPTION_UPDATE,
            &params,
            Origin::Update {
                local,
                filter,
                reply,
            },
        );
    }

    /// After a layer (re)subscribe: a filter changed meanwhile is applied now.
    pub(super) fn after_layer_subscribed(&mut self, local: u64, server: u32) {
        let Some(Sub {
            kind: SubKind::Layer(ls),
            ..
        }) = self.subs.get_mut(&local)
        else {
            return;
        };
        if filter_eq(&ls.desired, &ls.acked) {
            return;
        }
        let (filter, reply) = (ls.desired.clone(), ls.update_reply.take());
        self.send_filter(local, server, filter, reply);
    }

    pub(super) fn on_filter_updated(
        &mut self,
        local: u64,
        filter: FilterSpec,
        reply: Option<oneshot::Sender<Result<SubscriptionUpdateResult>>>,
        r: std::result::Result<Params<'_>, RpcError>,
    ) {
        let Some(Sub {
            kind: SubKind::Layer(ls),
            ..
        }) = self.subs.get_mut(&local)
        else {
            return;
        };
        let out = match r {
            Ok(result) => decode::<SubscriptionUpdateResult>(&result).inspect(|res| {
                ls.acked = filter;
                ls.seq = ls.seq.max(res.seq);
                ls.diff_seq = Some(res.seq);
            }),
            Err(e) => {
                ls.desired = ls.acked.clone();
                Err(ClientError::from_rpc(e))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(out);
        }
    }
}
