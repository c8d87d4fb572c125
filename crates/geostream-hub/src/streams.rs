//! The life of subscriptions on a node, over the hub, the broker and the layer log: channel
//! publish, history and presence; a subscription's start (snapshot, replay of what a
//! resuming client missed), going live without losing or repeating anything, a viewport
//! move (only the difference), its end; and the repair of gaps in a layer's changes.
//!
//! Every start follows the same steps: register the subscription in the hub (live events for
//! it are held from then on), read where it starts (broker history or the layer's log), let
//! the caller send the response, queue what was read, then release the held events that came
//! after it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use geostream_broker::{Broker, BrokerError, Publication, StreamPosition};
use geostream_core::api::{
    self, ChannelHistoryParams, ChannelHistoryResult, ChannelSubscribeParams,
    ChannelSubscribeResult, ClientInfo, CursorPush, FeatureKind, HistoryMessage,
    LayerSubscribeResult, Position, ResyncPush, SnapshotPush, SubscriptionUpdateResult,
    validate_name,
};
use geostream_core::bus::BusEvent;
use geostream_core::codec::encode_push;
use geostream_core::error::{ErrorCode, RpcError};
use geostream_core::feature::{Change, ChangeOp, Feature};
use geostream_core::payload::{Payload, PayloadKind};
use geostream_filter::Filter;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::bus::{Gap, layer_topic, presence_channel};
use crate::layers::{ChangeView, LayerRecovering, Side, transition};
use crate::log::{LayerLog, SnapshotQuery};
use crate::outbox::Outgoing;
use crate::prepared::{Prepared, PushEvent};
use crate::session::{Session, SubTarget};
use crate::{Hub, HubError, Recovering, Removed};

/// How long a change may wait for an earlier one before the node reads the gap from the log.
pub const GAP_WAIT: Duration = Duration::from_millis(200);

/// Limits of [`Streams`].
#[derive(Clone, Copy, Debug)]
pub struct StreamsConfig {
    /// Channel messages a resuming subscription may replay (the history size).
    pub history_size: usize,
    /// Most messages one `channel.history` answer carries.
    pub history_page: usize,
    /// Largest channel message, in bytes.
    pub max_message_bytes: usize,
    /// Changes a resuming layer subscription may replay before a snapshot is cheaper.
    pub max_replay: usize,
}

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    /// The request was invalid or refused (wire form).
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// Subscription bookkeeping.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The layer log (a missing layer among others).
    #[error(transparent)]
    Log(E),
}

/// Result of stream operations over a log whose errors are `E`.
pub type StreamResult<T, E> = Result<T, StreamError<E>>;

/// A channel subscription registered but not yet live: send `result`, then
/// [`Streams::activate_channel`].
pub struct PendingChannelSub {
    /// What to answer the client.
    pub result: ChannelSubscribeResult,
    replay: Vec<Publication>,
    epoch: Arc<str>,
    recovering: Recovering,
    after: u64,
}

/// How a layer subscription starts.
enum Start<E> {
    /// Send a snapshot as of its sequence number, in pages.
    Snapshot(crate::log::SnapshotPages<E>),
    /// Replay these pushes (the changes after the client's `since` that concern it).
    Replay(Vec<(Arc<Change>, FeatureKind)>),
    /// Neither: the client asked for no snapshot.
    Nothing,
}

/// A layer subscription registered but not yet live: send `result`, then
/// [`Streams::activate_layer`].
pub struct PendingLayerSub<E> {
    /// What to answer the client.
    pub result: LayerSubscribeResult,
    start: Start<E>,
    resync: bool,
    filter: Arc<Filter>,
    recovering: LayerRecovering,
}

/// A viewport move computed but not yet sent: send `result`, then [`Streams::finish_move`].
pub struct PendingMove {
    /// What to answer the client.
    pub result: SubscriptionUpdateResult,
    frames: Vec<Outgoing>,
    recovering: LayerRecovering,
}

/// Subscriptions' lives on this node; see the [module docs](self).
pub struct Streams<B, L> {
    hub: Arc<Hub>,
    broker: B,
    log: L,
    config: StreamsConfig,
}

impl<B, L> Streams<B, L>
where
    B: Broker + Clone,
    L: LayerLog,
{
    /// Builds the node's streams and starts repairing the gaps `gaps` reports (and, with a
    /// broker that can lose events, catching up after every reconnect).
    pub fn new(
        hub: Arc<Hub>,
        broker: B,
        log: L,
        config: StreamsConfig,
        mut gaps: mpsc::Receiver<Gap>,
    ) -> Arc<Self> {
        let streams = Arc::new(Streams {
            hub,
            broker,
            log,
            config,
        });
        let weak = Arc::downgrade(&streams);
        tokio::spawn(async move {
            while let Some(gap) = gaps.recv().await {
                let Some(s) = weak.upgrade() else { return };
                tokio::time::sleep(GAP_WAIT).await;
                s.fill_gap(&gap.layer, gap.missing).await;
            }
        });
        if let Some(mut reconnects) = streams.broker.reconnects() {
            // Layer changes published while this node was cut off never reach it: after
            // every reconnect, read from the log what the hub has not seen.
            let weak = Arc::downgrade(&streams);
            tokio::spawn(async move {
                while reconnects.changed().await.is_ok() {
                    let Some(s) = weak.upgrade() else { return };
                    s.catch_up().await;
                }
            });
        }
        streams
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    // ----- channels -----

    fn check_channel(name: &str) -> Result<(), RpcError> {
        validate_name("channel", name).map_err(RpcError::invalid_params)?;
        if name.starts_with('$') {
            return Err(RpcError::invalid_params(
                "channel names starting with $ are reserved",
            ));
        }
        Ok(())
    }

    /// Publishes `data` to `channel`; returns the message's position.
    pub async fn publish(&self, channel: &str, data: Payload) -> StreamResult<Position, L::Error> {
        Self::check_channel(channel)?;
        let max = self.config.max_message_bytes;
        if data.len() > max {
            return Err(RpcError::new(
                ErrorCode::LimitExceeded,
                format!("message data is larger than {max} bytes"),
            )
            .into());
        }
        let p = self
            .broker
            .publish(channel, data.kind().as_u8(), data.bytes().clone())
            .await?;
        Ok(position(&p))
    }

    /// Registers a channel subscription and reads what it missed.
    pub async fn subscribe_channel(
        &self,
        session: &Arc<Session>,
        p: ChannelSubscribeParams,
    ) -> StreamResult<PendingChannelSub, L::Error> {
        Self::check_channel(&p.channel)?;
        self.subscribe_channel_checked(session, p).await
    }

    /// Joins `session` to a layer's presence (a presence-only subscription of the layer's
    /// presence channel); returns who is there. Activate it like a channel subscription.
    pub async fn subscribe_presence(
        &self,
        session: &Arc<Session>,
        layer: &str,
    ) -> StreamResult<(PendingChannelSub, Vec<ClientInfo>), L::Error> {
        self.log.seq(layer).await.map_err(StreamError::Log)?;
        let channel = presence_channel(layer);
        let pending = self
            .subscribe_channel_checked(
                session,
                ChannelSubscribeParams {
                    channel: channel.clone(),
                    since: None,
                    presence: true,
                },
            )
            .await?;
        let mut members = self.hub.presence(&channel);
        members.extend(self.broker.remote_members(&channel));
        Ok((pending, members))
    }

    /// Shares a cursor with the layer's presence subscribers on every node.
    pub async fn publish_cursor(&self, cursor: CursorPush) -> StreamResult<(), L::Error> {
        let topic = presence_channel(&cursor.layer);
        self.broker
            .publish_event(&topic, Arc::new(BusEvent::Cursor(cursor)))
            .await?;
        Ok(())
    }

    async fn subscribe_channel_checked(
        &self,
        session: &Arc<Session>,
        p: ChannelSubscribeParams,
    ) -> StreamResult<PendingChannelSub, L::Error> {
        let recovering = self.hub.add_channel_sub(session, &p.channel, p.presence)?;
        let sub = recovering.sub;
        match self.read_channel_start(&p, recovering.first_on_node).await {
            Ok((position, replay, recovered)) => Ok(PendingChannelSub {
                result: ChannelSubscribeResult {
                    sub,
                    channel: p.channel.clone(),
                    position: Position {
                        offset: position.offset,
                        epoch: position.epoch.to_string(),
                    },
                    recovered,
                    replayed: recovered.map(|_| replay.len() as u64),
                },
                replay,
                epoch: position.epoch,
                recovering,
                after: position.offset,
            }),
            Err(e) => {
                if let Ok(r) = self.hub.remove_sub(session, sub)
                    && r.last_on_node
                {
                    let _ = self.broker.unsubscribe(&p.channel).await;
                }
                Err(e)
            }
        }
    }

    async fn read_channel_start(
        &self,
        p: &ChannelSubscribeParams,
        first: bool,
    ) -> StreamResult<(StreamPosition, Vec<Publication>, Option<bool>), L::Error> {
        if first {
            self.broker.subscribe(&p.channel).await?;
        }
        let Some(since) = &p.since else {
            return Ok((self.broker.position(&p.channel).await?, Vec::new(), None));
        };
        let page = self
            .broker
            .history(
                &p.channel,
                Some(since.offset),
                self.config.history_size.max(1),
            )
            .await?;
        let same_epoch = *page.position.epoch == *since.epoch;
        let in_range =
            since.offset + 1 >= page.first_offset && since.offset <= page.position.offset;
        Ok(if same_epoch && in_range {
            (page.position, page.publications, Some(true))
        } else {
            (page.position, Vec::new(), Some(false))
        })
    }

    /// Makes a channel subscription live: queues the replayed messages, then the live ones
    /// held back meanwhile, and announces the subscriber to the channel.
    pub async fn activate_channel(&self, session: &Arc<Session>, pending: PendingChannelSub) {
        let channel = pending.recovering.channel.clone();
        let sub = pending.recovering.sub;
        for p in pending.replay {
            if let Some(k) = PayloadKind::from_u8(p.kind) {
                let push = Prepared::new(PushEvent::Message {
                    channel: channel.clone(),
                    offset: p.offset,
                    data: Payload::from_trusted(k, p.data),
                });
                session
                    .outbox
                    .push_stream(sub, push, &channel, p.offset, &pending.epoch);
            }
        }
        self.hub
            .finish_recovery(pending.recovering, pending.after, &pending.epoch);
        let client = session.client();
        self.broker
            .set_member(&channel, &member_key(&client, sub), Some(&client))
            .await;
        if let Err(e) = self
            .broker
            .publish_event(&channel, Arc::new(BusEvent::Join(client)))
            .await
        {
            tracing::debug!(error = %e, "Could not announce a join.");
        }
    }

    /// Ends one subscription; returns what it was (the caller ends tile subscriptions'
    /// state).
    pub async fn unsubscribe(
        &self,
        session: &Arc<Session>,
        sub: u32,
    ) -> StreamResult<Removed, L::Error> {
        let r = self.hub.remove_sub(session, sub)?;
        self.after_unsubscribe(&r, &session.client()).await;
        Ok(r)
    }

    /// Ends every subscription of a closed session; returns them.
    pub async fn close_session(&self, session: &Arc<Session>) -> Vec<Removed> {
        let removed = self.hub.remove_session(session);
        let client = session.client();
        for r in &removed {
            self.after_unsubscribe(r, &client).await;
        }
        removed
    }

    async fn after_unsubscribe(&self, r: &Removed, client: &ClientInfo) {
        let SubTarget::Channel { channel, .. } = &r.target else {
            return;
        };
        self.broker
            .set_member(channel, &member_key(client, r.sub), None)
            .await;
        let _ = self
            .broker
            .publish_event(channel, Arc::new(BusEvent::Leave(client.clone())))
            .await;
        if r.last_on_node {
            let _ = self.broker.unsubscribe(channel).await;
        }
    }

    /// Reads a page of a channel's history.
    pub async fn history(
        &self,
        p: &ChannelHistoryParams,
    ) -> StreamResult<ChannelHistoryResult, L::Error> {
        Self::check_channel(&p.channel)?;
        let page_max = self.config.history_page;
        let limit = p.limit.map_or(page_max, |l| (l as usize).min(page_max));
        let since = p.since.as_ref().map(|s| s.offset);
        let page = self.broker.history(&p.channel, since, limit + 1).await?;
        let complete = match &p.since {
            Some(s) => {
                *page.position.epoch == *s.epoch
                    && s.offset + 1 >= page.first_offset
                    && s.offset <= page.position.offset
            }
            None => true,
        };
        let mut pubs = page.publications;
        let more = if p.since.is_some() {
            let more = pubs.len() > limit;
            pubs.truncate(limit);
            more
        } else {
            if pubs.len() > limit {
                pubs.remove(0);
            }
            pubs.first().is_some_and(|f| f.offset > page.first_offset)
        };
        let messages = pubs
            .into_iter()
            .filter_map(|p| {
                PayloadKind::from_u8(p.kind).map(|k| HistoryMessage {
                    offset: p.offset,
                    data: Payload::from_trusted(k, p.data),
                })
            })
            .collect();
        Ok(ChannelHistoryResult {
            messages,
            position: position(&page.position),
            complete,
            more,
        })
    }

    /// Who is subscribed to a channel, on every node.
    pub fn presence(&self, channel: &str) -> StreamResult<Vec<ClientInfo>, L::Error> {
        Self::check_channel(channel)?;
        let mut clients = self.hub.presence(channel);
        clients.extend(self.broker.remote_members(channel));
        Ok(clients)
    }

    // ----- layers -----

    /// Publishes a durable change to every node's subscribers. A change that cannot be
    /// published is not lost: nodes read it from the log when the next one reveals the gap.
    pub async fn publish_change(&self, change: Arc<Change>) {
        self.publish_changes(vec![change]).await;
    }

    /// Publishes the changes of one commit (one layer, in sequence order) as one event, so
    /// every node dispatches them as a batch.
    pub async fn publish_changes(&self, mut changes: Vec<Arc<Change>>) {
        let (topic, seq) = match changes.first() {
            Some(c) => (layer_topic(&c.layer), c.seq),
            None => return,
        };
        let event = if changes.len() == 1 {
            BusEvent::Change(changes.pop().expect("one change"))
        } else {
            BusEvent::Changes(changes)
        };
        if let Err(e) = self.broker.publish_event(&topic, Arc::new(event)).await {
            tracing::warn!(topic, seq, error = %e, "Could not publish changes.");
        }
    }

    /// Publishes a layer-wide event (a lock, a deletion, a tile) to every node.
    pub async fn publish_layer_event(&self, layer: &str, event: BusEvent) {
        if let Err(e) = self
            .broker
            .publish_event(&layer_topic(layer), Arc::new(event))
            .await
        {
            tracing::warn!(layer, error = %e, "Could not publish a layer event.");
        }
    }

    /// Reads changes the hub has not seen, up to `missing`, from the log.
    pub async fn fill_gap(&self, layer: &str, missing: u64) {
        let mut last = self.hub.layer_last_seq(layer);
        while last < missing {
            let run = match self.log.changes(layer, last, 1000).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(layer, error = %e, "Could not read the change log to fill a gap.");
                    return;
                }
            };
            if run.first_retained > last + 1 {
                // Gone from the log: let the hub move on; subscribers resync on their own.
                tracing::warn!(
                    layer,
                    from = last + 1,
                    to = run.first_retained - 1,
                    "Changes are no longer in the log; skipping them."
                );
                self.hub.init_layer(layer, run.first_retained - 1);
            }
            if run.changes.is_empty() {
                return;
            }
            let changes: Vec<Arc<Change>> = run.changes.into_iter().map(Arc::new).collect();
            let _ = self.hub.dispatch_changes(&changes);
            let now = self.hub.layer_last_seq(layer);
            if now <= last {
                return;
            }
            last = now;
        }
    }

    /// Reads every layer's changes the hub has not seen (after a reconnect to the broker).
    pub async fn catch_up(&self) {
        match self.log.layers().await {
            Ok(layers) => {
                for (layer, seq) in layers {
                    if seq > self.hub.layer_last_seq(&layer) {
                        self.fill_gap(&layer, seq).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Could not catch up on layer changes."),
        }
    }

    /// Registers a layer subscription and reads how it starts.
    pub async fn subscribe_layer(
        &self,
        session: &Arc<Session>,
        layer: &str,
        filter: Arc<Filter>,
        since: Option<u64>,
        snapshot: bool,
        page_size: usize,
    ) -> StreamResult<PendingLayerSub<L::Error>, L::Error> {
        self.log.seq(layer).await.map_err(StreamError::Log)?;
        let recovering = self.hub.add_layer_sub(session, layer, filter.clone())?;
        let sub = recovering.sub;
        match self
            .read_layer_start(layer, &filter, since, snapshot, page_size)
            .await
        {
            Ok((seq, start, recovered, resync)) => {
                let replayed = match (&start, since) {
                    (Start::Replay(pushes), Some(_)) => Some(pushes.len() as u64),
                    (_, Some(_)) => Some(0),
                    _ => None,
                };
                Ok(PendingLayerSub {
                    result: LayerSubscribeResult {
                        sub,
                        layer: recovering.layer.to_string(),
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
    ) -> StreamResult<(u64, Start<L::Error>, Option<bool>, bool), L::Error> {
        let view = SnapshotQuery {
            bbox: filter.bbox(),
            filter: Some(filter.clone()),
            since: None,
            page_size,
        };
        if let Some(since) = since {
            let max = self.config.max_replay;
            let mut changes = Vec::new();
            let mut from = since;
            loop {
                let run = self
                    .log
                    .changes(layer, from, 1000)
                    .await
                    .map_err(StreamError::Log)?;
                if run.first_retained > since + 1 || since > run.seq {
                    break; // out of retention (or a position from the future): resync
                }
                let n = run.changes.len();
                if let Some(last) = run.changes.last() {
                    from = last.seq;
                }
                changes.extend(run.changes);
                if changes.len() > max {
                    break; // too much to replay: a snapshot is cheaper
                }
                if n == 0 || from >= run.seq {
                    // Only what concerns the subscription is replayed (and counted).
                    let pushes = changes
                        .into_iter()
                        .filter_map(|c| {
                            let kind = ChangeView::new(&c).kind(filter)?;
                            Some((Arc::new(c), kind))
                        })
                        .collect();
                    return Ok((from.max(since), Start::Replay(pushes), Some(true), false));
                }
            }
            let snap = self
                .log
                .snapshot(layer, view)
                .await
                .map_err(StreamError::Log)?;
            return Ok((snap.seq, Start::Snapshot(snap), Some(false), true));
        }
        if !snapshot {
            let seq = self.log.seq(layer).await.map_err(StreamError::Log)?;
            return Ok((seq, Start::Nothing, None, false));
        }
        let snap = self
            .log
            .snapshot(layer, view)
            .await
            .map_err(StreamError::Log)?;
        Ok((snap.seq, Start::Snapshot(snap), None, false))
    }

    /// Makes a layer subscription live: replays or streams the snapshot (waiting for room in
    /// the client's queue between pages), then releases the live changes held meanwhile.
    pub async fn activate_layer(
        self: &Arc<Self>,
        session: &Arc<Session>,
        p: PendingLayerSub<L::Error>,
    ) {
        let sub = p.recovering.sub;
        let seq = p.result.seq;
        match p.start {
            Start::Nothing => {
                self.finish_layer(session, p.recovering, seq, &p.filter)
                    .await
            }
            Start::Replay(pushes) => {
                for (c, kind) in pushes {
                    let key: Arc<str> = Arc::from(c.id.as_str());
                    let push = Prepared::new(PushEvent::Feature {
                        change: c,
                        kind,
                        full: kind == FeatureKind::Enter,
                    });
                    session.outbox.push_state(sub, &key, push);
                }
                self.finish_layer(session, p.recovering, seq, &p.filter)
                    .await;
            }
            Start::Snapshot(snap) => {
                // Pages are streamed by a task of their own so a large snapshot neither
                // blocks the connection's other requests nor grows its queue past the budget.
                let streams = self.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    let (recovering, filter) = (p.recovering, p.filter);
                    if streams
                        .stream_snapshot(&session, sub, &recovering.layer, seq, snap, p.resync)
                        .await
                    {
                        streams
                            .finish_layer(&session, recovering, seq, &filter)
                            .await;
                    }
                });
            }
        }
    }

    /// Sends a snapshot's pages, the last marked `last`; `false` if the subscription or the
    /// connection ended meanwhile.
    async fn stream_snapshot(
        &self,
        session: &Arc<Session>,
        sub: u32,
        layer: &str,
        seq: u64,
        mut snap: crate::log::SnapshotPages<L::Error>,
        resync: bool,
    ) -> bool {
        let enc = session.encoding();
        if resync {
            let f = encode_push(
                enc,
                api::push::RESYNC,
                &ResyncPush {
                    layer: Cow::Borrowed(layer),
                    seq,
                    reason: Cow::Borrowed("history no longer available"),
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
                if session.sub_target(sub).is_none() || !session.outbox.wait_room().await {
                    return false; // unsubscribed or disconnected: stop reading
                }
                let f = encode_push(
                    enc,
                    api::push::SNAPSHOT,
                    &SnapshotPush {
                        layer: Cow::Borrowed(layer),
                        seq,
                        features: Cow::Borrowed(&page),
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
                    return false;
                }
            }
        }
        if !sent_any {
            // An empty snapshot still ends with a `last` page.
            let f = encode_push(
                enc,
                api::push::SNAPSHOT,
                &SnapshotPush {
                    layer: Cow::Borrowed(layer),
                    seq,
                    features: Cow::Borrowed(&[]),
                    last: true,
                },
                None,
            );
            session.outbox.push_always(Outgoing::Frame(f.to_bytes(sub)));
        }
        true
    }

    async fn finish_layer(
        &self,
        session: &Arc<Session>,
        r: LayerRecovering,
        seq: u64,
        filter: &Arc<Filter>,
    ) {
        let sub = r.sub;
        let layer = r.layer.clone();
        if self.hub.finish_layer_recovery(r, seq) {
            return;
        }
        // Too many changes arrived while the snapshot was sent: catch up from the log.
        let mut from = seq;
        while let Ok(run) = self.log.changes(&layer, from, 1000).await {
            if run.changes.is_empty() {
                break;
            }
            for c in run.changes {
                from = c.seq;
                let c = Arc::new(c);
                if let Some(kind) = ChangeView::new(&c).kind(filter) {
                    let key: Arc<str> = Arc::from(c.id.as_str());
                    session.outbox.push_state(
                        sub,
                        &key,
                        Prepared::new(PushEvent::Feature {
                            change: c,
                            kind,
                            full: true,
                        }),
                    );
                }
            }
        }
    }

    /// Replaces a layer subscription's filter and computes the difference: `enter` for
    /// features now in view, `exit` for those that left, a whole `update` for those in view
    /// that changed meanwhile, with the same transition rule as live changes.
    pub async fn move_layer(
        &self,
        session: &Arc<Session>,
        sub: u32,
        filter: Arc<Filter>,
    ) -> StreamResult<PendingMove, L::Error> {
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
        let query = SnapshotQuery {
            bbox: area,
            filter: None,
            since: Some(since),
            page_size: 1000,
        };
        let mut snap = match self.log.snapshot(&layer, query).await {
            Ok(s) => s,
            Err(e) => {
                self.hub.finish_layer_recovery(m.recovering, u64::MAX);
                return Err(StreamError::Log(e));
            }
        };
        // The state the client holds of a feature changed after `since` is the `old` side
        // of its first change after `since`; the current state is the latest change's.
        let mut before: HashMap<String, Option<Feature>> = HashMap::new();
        let mut latest: HashMap<String, Change> = HashMap::new();
        for c in std::mem::take(&mut snap.changes) {
            before.entry(c.id.clone()).or_insert_with(|| c.old.clone());
            latest.insert(c.id.clone(), c);
        }
        let seq = snap.seq;
        let mut diff = ViewDiff::new(&layer, seq, &m.old_filter, &filter);
        let mut seen = HashSet::new();
        while let Some(page) = snap.pages.recv().await {
            let page = page.map_err(StreamError::Log)?;
            for f in page {
                seen.insert(f.id.clone());
                let held = match before.get(&f.id) {
                    Some(old) => Held::Changed(old.as_ref()),
                    None => Held::Same,
                };
                diff.feature(held, Some(&f), f.version);
            }
        }
        // Features that changed after `since` and are now outside the searched area, or gone.
        for (id, old) in &before {
            if seen.contains(id) {
                continue;
            }
            let latest = latest.get(id);
            let version = latest.map_or(old.as_ref().map_or(0, |o| o.version), |c| c.version);
            diff.feature(
                Held::Changed(old.as_ref()),
                latest.and_then(|c| c.new.as_ref()),
                version,
            );
        }
        let enc = session.encoding();
        let frames = diff
            .pushes
            .into_iter()
            .map(|p| Outgoing::Frame(p.frame(enc).to_bytes(sub)))
            .collect();
        Ok(PendingMove {
            result: SubscriptionUpdateResult {
                sub,
                seq,
                entered: diff.entered,
                exited: diff.exited,
            },
            frames,
            recovering: m.recovering,
        })
    }

    /// Sends a move's difference (after its response) and lets live changes through again.
    pub fn finish_move(&self, session: &Arc<Session>, m: PendingMove) {
        for f in m.frames {
            session.outbox.push_always(f);
        }
        self.hub.finish_layer_recovery(m.recovering, m.result.seq);
    }
}

/// What the client holds of a feature before a move.
enum Held<'a> {
    /// The feature did not change since the client's view: it holds the current state.
    Same,
    /// It changed: the client holds this state (none if it did not exist).
    Changed(Option<&'a Feature>),
}

/// The pushes that take a client from what it holds under the old filter to what it
/// should hold under the new one.
struct ViewDiff<'a> {
    layer: &'a str,
    seq: u64,
    old_filter: &'a Filter,
    new_filter: &'a Filter,
    pushes: Vec<Arc<Prepared>>,
    entered: u64,
    exited: u64,
}

impl<'a> ViewDiff<'a> {
    fn new(layer: &'a str, seq: u64, old_filter: &'a Filter, new_filter: &'a Filter) -> Self {
        ViewDiff {
            layer,
            seq,
            old_filter,
            new_filter,
            pushes: Vec::new(),
            entered: 0,
            exited: 0,
        }
    }

    /// One feature: what the client holds, what it is now (`None`: deleted).
    fn feature(&mut self, held: Held<'_>, now: Option<&Feature>, version: u64) {
        let (held_state, changed) = match held {
            Held::Same => (now, false),
            Held::Changed(f) => (f, true),
        };
        let Some(any) = held_state.or(now) else {
            return;
        };
        let id = Value::String(any.id.clone());
        let had = held_state.is_some_and(|f| Side::new(f, None).matches(self.old_filter, &id));
        let has = now.is_some_and(|f| Side::new(f, None).matches(self.new_filter, &id));
        let Some(kind) = transition(had, has, now.is_none()) else {
            return;
        };
        if kind == FeatureKind::Update && !changed {
            return; // in view before and after, and the client already has it
        }
        match kind {
            FeatureKind::Enter => self.entered += 1,
            FeatureKind::Exit | FeatureKind::Delete => self.exited += 1,
            FeatureKind::Update => {}
        }
        // Enter and update carry the current state; exit and delete the one the client had.
        let shown = match kind {
            FeatureKind::Enter | FeatureKind::Update => now,
            FeatureKind::Exit | FeatureKind::Delete => held_state,
        };
        let Some(shown) = shown else { return };
        let change = synthetic(self.layer, self.seq, shown, kind, version);
        self.pushes.push(Prepared::new(PushEvent::Feature {
            change: Arc::new(change),
            kind,
            full: true,
        }));
    }
}

/// A change record for a push that is not the result of one change (a viewport difference).
fn synthetic(layer: &str, seq: u64, f: &Feature, kind: FeatureKind, version: u64) -> Change {
    let gone = matches!(kind, FeatureKind::Exit | FeatureKind::Delete);
    Change {
        layer: layer.to_string(),
        seq,
        op: if gone {
            ChangeOp::Delete
        } else {
            ChangeOp::Update
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

fn position(p: &StreamPosition) -> Position {
    Position {
        offset: p.offset,
        epoch: p.epoch.to_string(),
    }
}

/// A subscription's key in the broker's member table.
fn member_key(client: &ClientInfo, sub: u32) -> String {
    format!("{}/{sub}", client.session)
}
