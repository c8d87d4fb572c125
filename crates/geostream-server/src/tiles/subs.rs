//! Tile subscriptions: which tiles each subscription holds and at which version, and the
//! flusher that pushes changed tiles.
//!
//! A change only marks `(subscription, tile)` pairs dirty. The flusher wakes, waits
//! `tiles.flush_ms` so a burst of edits to the same tile collapses into one push, then for
//! each dirty tile takes the current version once (cache or one render), and per subscriber
//! builds the push against the version that subscriber holds: nothing if it is current, a
//! delta when the base is still known and the delta is smaller, the full tile otherwise, or
//! a notice. Deltas and frames are computed once per base version and encoding and shared.
//!
//! Tiles a client asks for (by subscribing, moving its viewport or saying what it holds) are
//! *asked* pairs, pushed by the flusher at once: there is no burst to wait for, and a map
//! that pans should not wait a window for its tiles.
//!
//! Backpressure: a push that does not fit the client's outbox is not lost, the pair stays
//! dirty and is retried on the next flush, against the version the client then holds, so a
//! slow client ends up with the latest tile without receiving the intermediate ones (and is
//! closed as a slow consumer if it stays over budget, like any other).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use geostream_core::api::{
    self, TileMode, TilePushKind, TileSubscribeParams, TileSubscribeResult, TileUpdateParams,
    TileUpdateResult, TileViewport, UnsubscribedPush,
};
use geostream_core::codec::{self, Id, encode_push};
use geostream_core::error::ErrorCode;
use geostream_hub::{Hub, Outgoing, Prepared, PushEvent, PushOutcome, Session};
use geostream_tiles::{
    CachedTile, LonLatBbox, TileError, TileId, TilesNear, delta, tiles_covering,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{TileLayer, Tiles, key, parse_key};
use crate::error::{Result, ServerError};

type SubKey = (Arc<str>, u32);

struct SubState {
    session: Arc<Session>,
    layer: Arc<str>,
    mode: TileMode,
    tiles: BTreeSet<TileId>,
    /// The version the client holds of each tile (as far as the server knows: what it
    /// queued last, or what the client said).
    held: HashMap<TileId, u64>,
    /// How many times the client has said what it holds. A push records what it queued in
    /// `held` only if the client has not spoken since the push was planned: a client that
    /// received the push and at once said it holds nothing must get the tile again, not be
    /// taken to hold it.
    said: u64,
}

#[derive(Default)]
struct Inner {
    subs: HashMap<SubKey, SubState>,
    /// Per layer, per tile in (z, x, y) order: the subscriptions holding it. Ordered so a
    /// change finds the tiles near it by range.
    index: HashMap<Arc<str>, BTreeMap<TileId, Vec<SubKey>>>,
    dirty: HashSet<(SubKey, TileId)>,
    /// Pairs a client asked for: pushed without waiting for the window.
    asked: HashSet<(SubKey, TileId)>,
}

impl Inner {
    fn index_add(&mut self, layer: &Arc<str>, t: TileId, k: &SubKey) {
        self.index
            .entry(layer.clone())
            .or_default()
            .entry(t)
            .or_default()
            .push(k.clone());
    }

    fn index_remove(&mut self, layer: &str, t: TileId, k: &SubKey) {
        if let Some(tiles) = self.index.get_mut(layer) {
            if let Some(v) = tiles.get_mut(&t) {
                v.retain(|x| x != k);
                if v.is_empty() {
                    tiles.remove(&t);
                }
            }
            if tiles.is_empty() {
                self.index.remove(layer);
            }
        }
    }

    /// A new subscription: each of its tiles is asked for.
    fn add(&mut self, k: SubKey, s: SubState) {
        for t in &s.tiles {
            self.index_add(&s.layer, *t, &k);
            self.asked.insert((k.clone(), *t));
        }
        self.subs.insert(k, s);
    }

    /// What a client says of subscription `k` (`tile.update`): its new tile set, if any, and
    /// the versions it holds. Tiles added or stated are asked for. Returns the tiles added
    /// and removed, or `None` for an unknown subscription.
    fn restate(
        &mut self,
        k: &SubKey,
        set: Option<BTreeSet<TileId>>,
        have: Vec<(TileId, u64)>,
    ) -> Option<(Vec<TileId>, Vec<TileId>)> {
        let s = self.subs.get_mut(k)?;
        let layer = s.layer.clone();
        s.said += 1;
        let set = set.unwrap_or_else(|| s.tiles.clone());
        let added: Vec<TileId> = set.difference(&s.tiles).copied().collect();
        let removed: Vec<TileId> = s.tiles.difference(&set).copied().collect();
        for t in &removed {
            s.held.remove(t);
        }
        let mut asked: Vec<TileId> = added.clone();
        for (t, v) in have {
            if !set.contains(&t) {
                continue;
            }
            // What the client says it holds wins over what the server assumed.
            if v == 0 {
                s.held.remove(&t);
            } else {
                s.held.insert(t, v);
            }
            asked.push(t);
        }
        s.tiles = set;
        for t in &removed {
            self.index_remove(&layer, *t, k);
            self.dirty.remove(&(k.clone(), *t));
            self.asked.remove(&(k.clone(), *t));
        }
        for t in &added {
            self.index_add(&layer, *t, k);
        }
        for t in asked {
            self.asked.insert((k.clone(), t));
        }
        Some((added, removed))
    }

    /// Takes the pending pairs of one kind, grouped by (layer, tile), each with what its
    /// subscriber holds and how many times it had spoken.
    fn take(&mut self, which: Pending) -> HashMap<(Arc<str>, TileId), Vec<Target>> {
        let pending = match which {
            Pending::Asked => std::mem::take(&mut self.asked),
            Pending::Changed => std::mem::take(&mut self.dirty),
        };
        let mut groups: HashMap<(Arc<str>, TileId), Vec<Target>> = HashMap::new();
        for (k, t) in pending {
            let Some(s) = self.subs.get(&k) else { continue };
            if !s.tiles.contains(&t) {
                continue;
            }
            groups
                .entry((s.layer.clone(), t))
                .or_default()
                .push(Target {
                    key: k.clone(),
                    session: s.session.clone(),
                    mode: s.mode,
                    held: s.held.get(&t).copied(),
                    said: s.said,
                });
        }
        groups
    }

    /// Records the pushes of tile `t` at `version` that were queued (`sent`: each with how
    /// many times its client had spoken when the push was planned), and marks those that
    /// did not fit their client's outbox to be tried again.
    fn record(&mut self, t: TileId, version: u64, sent: Vec<(SubKey, u64)>, retry: Vec<SubKey>) {
        for (k, said) in sent {
            // A client that spoke since (it may have received the push and said it holds
            // nothing) is taken at its word: at worst the tile is pushed to it twice.
            if let Some(s) = self.subs.get_mut(&k)
                && s.tiles.contains(&t)
                && s.said == said
            {
                s.held.insert(t, version);
            }
        }
        for k in retry {
            if self.subs.contains_key(&k) {
                self.dirty.insert((k, t));
            }
        }
    }

    fn remove(&mut self, k: &SubKey) -> Option<SubState> {
        let s = self.subs.remove(k)?;
        for t in &s.tiles {
            self.index_remove(&s.layer, *t, k);
        }
        self.dirty.retain(|(dk, _)| dk != k);
        self.asked.retain(|(dk, _)| dk != k);
        Some(s)
    }
}

/// All tile subscriptions of this node.
#[derive(Default)]
pub(super) struct Registry {
    inner: Mutex<Inner>,
    wake: Notify,
}

impl Registry {
    /// Marks the subscribed tiles of `layer` near a change (`near`) for which `touched` says
    /// yes. Only the tiles near the change are looked at, however many are subscribed.
    pub(super) fn mark(
        &self,
        layer: &str,
        near: &TilesNear<'_>,
        mut touched: impl FnMut(TileId) -> bool,
    ) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let Some(tiles) = inner.index.get_mut(layer) else {
            return;
        };
        let mut any = false;
        near.visit(tiles, |t, keys| {
            if touched(t) {
                for k in keys.iter() {
                    inner.dirty.insert((k.clone(), t));
                    any = true;
                }
            }
        });
        drop(g);
        if any {
            self.wake.notify_one();
        }
    }

    pub(super) fn remove(&self, session: &str, sub: u32) {
        let k: SubKey = (session.into(), sub);
        self.inner.lock().remove(&k);
    }

    /// Ends every subscription of a deleted layer, telling each client.
    pub(super) fn drop_layer(&self, hub: &Hub, layer: &str) {
        let gone: Vec<(SubKey, SubState)> = {
            let mut g = self.inner.lock();
            let keys: Vec<SubKey> = g
                .subs
                .iter()
                .filter(|(_, s)| &*s.layer == layer)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| g.remove(&k).map(|s| (k, s)))
                .collect()
        };
        for ((_, sub), s) in gone {
            let _ = hub.remove_sub(&s.session, sub);
            let f = encode_push(
                s.session.encoding(),
                api::push::UNSUBSCRIBED,
                &UnsubscribedPush {
                    reason: Cow::Borrowed("layer deleted"),
                },
                None,
            );
            s.session
                .outbox
                .push_always(Outgoing::Frame(f.to_bytes(sub)));
        }
    }
}

/// Handles `tile.subscribe`. Sends the response itself (before any push of the
/// subscription) and returns `None`.
pub(crate) async fn subscribe(
    tiles: &Tiles,
    hub: &Hub,
    session: &Arc<Session>,
    id: &Id,
    p: TileSubscribeParams,
) -> Result<Option<Bytes>> {
    let enc = session.encoding();
    {
        {
            let layer = tiles.layer(&p.layer).await?;
            let kind = match layer {
                TileLayer::Vector(_) => "vector",
                TileLayer::Raster(_) => "raster",
            };
            let set = tiles.tile_set(kind == "vector", p.viewport.as_ref(), p.tiles.as_deref())?;
            let have = parse_have(&p.have)?;
            let sub = hub.add_tile_sub(session, &p.layer)?;
            let k: SubKey = (session.id().clone(), sub);
            let layer_name: Arc<str> = p.layer.as_str().into();
            let result = TileSubscribeResult {
                sub,
                layer: p.layer.clone(),
                kind: kind.into(),
                tiles: set.iter().map(|t| key(*t)).collect(),
            };
            session
                .outbox
                .push_always(Outgoing::Frame(codec::encode_response(enc, id, &result)));
            let reg = &tiles.subs;
            let held = have
                .into_iter()
                .filter(|(t, v)| set.contains(t) && *v > 0)
                .collect();
            reg.inner.lock().add(
                k,
                SubState {
                    session: session.clone(),
                    layer: layer_name,
                    mode: p.mode,
                    tiles: set,
                    held,
                    said: 0,
                },
            );
            reg.wake.notify_one();
            Ok(None)
        }
    }
}

/// Handles `tile.update`: moves a tile subscription of this connection.
pub(crate) async fn update(
    tiles: &Tiles,
    session: &Arc<Session>,
    id: &Id,
    p: TileUpdateParams,
) -> Result<Option<Bytes>> {
    let enc = session.encoding();
    {
        {
            let k: SubKey = (session.id().clone(), p.sub);
            let layer = {
                let g = tiles.subs.inner.lock();
                match g.subs.get(&k) {
                    Some(s) => s.layer.clone(),
                    None => {
                        return Err(ServerError::new(
                            ErrorCode::UnknownSubscription,
                            format!("unknown tile subscription {}", p.sub),
                        ));
                    }
                }
            };
            let vector = tiles.raster(&layer).is_none();
            let set = if p.viewport.is_none() && p.tiles.is_none() {
                None
            } else {
                Some(tiles.tile_set(vector, p.viewport.as_ref(), p.tiles.as_deref())?)
            };
            let have = parse_have(&p.have)?;
            let (added, removed) =
                tiles
                    .subs
                    .inner
                    .lock()
                    .restate(&k, set, have)
                    .ok_or_else(|| {
                        ServerError::new(
                            ErrorCode::UnknownSubscription,
                            format!("unknown tile subscription {}", p.sub),
                        )
                    })?;
            let result = TileUpdateResult {
                sub: p.sub,
                added: added.into_iter().map(key).collect(),
                removed: removed.into_iter().map(key).collect(),
            };
            session
                .outbox
                .push_always(Outgoing::Frame(codec::encode_response(enc, id, &result)));
            tiles.subs.wake.notify_one();
            Ok(None)
        }
    }
}

fn parse_have(have: &std::collections::BTreeMap<String, u64>) -> Result<Vec<(TileId, u64)>> {
    have.iter()
        .map(|(k, v)| {
            parse_key(k)
                .map(|t| (t, *v))
                .map_err(|e| ServerError::invalid(format!("have: {}", e.to_rpc().message)))
        })
        .collect()
}

impl super::Tiles {
    /// The tiles a subscription asks for: a viewport at a zoom, or an explicit list.
    fn tile_set(
        &self,
        vector: bool,
        viewport: Option<&TileViewport>,
        list: Option<&[String]>,
    ) -> Result<BTreeSet<TileId>> {
        let max = self.cfg.max_tiles_per_subscription;
        let set: BTreeSet<TileId> = match (viewport, list) {
            (Some(v), None) => {
                let top = if vector {
                    self.cfg.max_zoom
                } else {
                    geostream_tiles::MAX_ZOOM
                };
                if v.zoom > top {
                    return Err(ServerError::invalid(format!(
                        "viewport.zoom must be 0 to {top}"
                    )));
                }
                let [w, s, e, n] = v.bbox;
                let bbox = LonLatBbox::new(w, s, e, n).map_err(|e| {
                    ServerError::invalid(format!("viewport.bbox is not a lon/lat box: {e}"))
                })?;
                tiles_covering(&bbox, v.zoom, max)
                    .map_err(|e| match e {
                        TileError::TooManyTiles { z, count, limit } => ServerError::new(
                            ErrorCode::LimitExceeded,
                            format!(
                                "the viewport covers {count} tiles at zoom {z}; a subscription may hold at most {limit}"
                            ),
                        ),
                        other => ServerError::invalid(format!("viewport: {other}")),
                    })?
                    .into_iter()
                    .collect()
            }
            (None, Some(list)) => {
                if list.len() > max {
                    return Err(ServerError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "{} tiles asked for; a subscription may hold at most {max}",
                            list.len()
                        ),
                    ));
                }
                let set = list
                    .iter()
                    .map(|k| parse_key(k))
                    .collect::<Result<BTreeSet<TileId>>>()?;
                if vector && let Some(t) = set.iter().find(|t| t.z() > self.cfg.max_zoom) {
                    return Err(ServerError::invalid(format!(
                        "tile {} is above the highest vector tile zoom, {}",
                        key(*t),
                        self.cfg.max_zoom
                    )));
                }
                set
            }
            _ => {
                return Err(ServerError::invalid(
                    "give exactly one of viewport and tiles",
                ));
            }
        };
        Ok(set)
    }
}

/// Starts the flusher of the tile service's subscriptions.
pub(super) fn spawn_flusher(tiles: &Arc<Tiles>) {
    let weak = Arc::downgrade(tiles);
    let window = Duration::from_millis(tiles.cfg.flush_ms);
    tokio::spawn(async move {
        // When the window of the pending edits began: when the first of them woke the
        // flusher, or when the last flush of edits began.
        let mut window_start: Option<Instant> = None;
        loop {
            let Some(tiles) = weak.upgrade() else { return };
            let reg = tiles.subs.clone();
            let (dirty, asked) = {
                let g = reg.inner.lock();
                (!g.dirty.is_empty(), !g.asked.is_empty())
            };
            let wait = if dirty {
                // Let the burst finish: edits within the window end in one push per tile.
                // Edits that came while the last flush was rendering have waited that long
                // already: only the rest of the window is waited for, so a flush slower than
                // the window does not add a whole window to every edit after it.
                let start = *window_start.get_or_insert_with(Instant::now);
                let rest = window.saturating_sub(start.elapsed());
                if rest.is_zero() {
                    // Before any ask: clients that keep asking must not hold changes back.
                    window_start = Some(Instant::now());
                    flush(&tiles, Pending::Changed).await;
                    continue;
                }
                rest
            } else {
                window_start = None;
                Duration::from_secs(5)
            };
            if asked {
                flush(&tiles, Pending::Asked).await;
                continue;
            }
            let woken = reg.wake.notified();
            // Do not keep the service alive while waiting.
            drop(tiles);
            // A wake-up (an ask, or the first edit after idle) ends the wait early; the loop
            // then decides again.
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// Which pending pairs a flush pushes.
#[derive(Clone, Copy)]
enum Pending {
    /// Pairs clients asked for.
    Asked,
    /// Pairs whose tiles changed, gathered for the window.
    Changed,
}

/// One subscriber of a dirty tile, as read under the lock.
struct Target {
    key: SubKey,
    session: Arc<Session>,
    mode: TileMode,
    held: Option<u64>,
    said: u64,
}

async fn flush(tiles: &Tiles, which: Pending) {
    // Take the pending pairs, grouped by (layer, tile), with what each subscriber holds.
    let groups = tiles.subs.inner.lock().take(which);
    // Tiles are made (from the cache, or rendered) several at once, one per core, and each is
    // pushed as soon as it is ready: a flush of many changed tiles is not one render after
    // the other on one core.
    let mut made =
        futures_util::stream::iter(groups.into_iter().map(|((layer, t), targets)| async move {
            let current = tiles.tile(&layer, t).await;
            (layer, t, targets, current)
        }))
        .buffer_unordered(tiles.render_width);
    while let Some((layer, t, targets, current)) = made.next().await {
        let current = match current {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(layer = %layer, tile = %key(t), error = %e, "Could not make a subscribed tile.");
                continue;
            }
        };
        push_tile(tiles, &layer, t, &current, targets);
    }
}

/// Pushes shared by the subscribers of one tile: per (kind, base). Each is framed once per
/// encoding by the first writer that needs it; subscribers share its bytes.
type PushMemo = HashMap<(TilePushKind, Option<u64>), Arc<Prepared>>;

fn push_tile(
    tiles: &Tiles,
    layer: &Arc<str>,
    t: TileId,
    current: &CachedTile,
    targets: Vec<Target>,
) {
    let tile_key: Arc<str> = Arc::from(key(t));
    let mut deltas: HashMap<u64, Option<Bytes>> = HashMap::new();
    let mut pushes: PushMemo = HashMap::new();
    let mut sent: Vec<(SubKey, u64)> = Vec::new();
    let mut retry: Vec<SubKey> = Vec::new();
    for target in targets {
        if target.held == Some(current.version) {
            continue;
        }
        let (kind, data) = match target.mode {
            TileMode::Notify => (TilePushKind::Notify, None),
            TileMode::Full => (TilePushKind::Full, Some(current.bytes.clone())),
            TileMode::Delta => {
                let d = target.held.and_then(|base| {
                    deltas
                        .entry(base)
                        .or_insert_with(|| {
                            let old = tiles.cache.version_bytes(layer, t, base)?;
                            let d = delta::encode(&old, &current.bytes);
                            (d.len() < current.bytes.len()).then(|| Bytes::from(d))
                        })
                        .clone()
                });
                match d {
                    Some(d) => (TilePushKind::Delta, Some(d)),
                    None => (TilePushKind::Full, Some(current.bytes.clone())),
                }
            }
        };
        let base = target.held;
        let push = pushes
            .entry((kind, base))
            .or_insert_with(|| {
                Prepared::new(PushEvent::Tile {
                    layer: layer.clone(),
                    tile: tile_key.clone(),
                    version: current.version,
                    kind,
                    base,
                    etag: current.etag.clone(),
                    data: data.clone(),
                })
            })
            .clone();
        let sub = target.key.1;
        match target.session.outbox.push(Outgoing::Push { sub, push }) {
            PushOutcome::Queued => {
                let s = &tiles.stats;
                match kind {
                    TilePushKind::Delta => {
                        s.pushed_deltas.fetch_add(1, Ordering::Relaxed);
                        s.delta_bytes.fetch_add(
                            data.as_ref().map_or(0, |d| d.len() as u64),
                            Ordering::Relaxed,
                        );
                        s.delta_full_bytes
                            .fetch_add(current.bytes.len() as u64, Ordering::Relaxed);
                    }
                    TilePushKind::Full => {
                        s.pushed_full.fetch_add(1, Ordering::Relaxed);
                        s.full_bytes
                            .fetch_add(current.bytes.len() as u64, Ordering::Relaxed);
                    }
                    TilePushKind::Notify => {
                        s.pushed_notices.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.push((target.key, target.said));
            }
            PushOutcome::Dropped => {
                tiles.stats.deferred.fetch_add(1, Ordering::Relaxed);
                retry.push(target.key);
            }
            PushOutcome::Closed => {}
        }
    }
    if sent.is_empty() && retry.is_empty() {
        return;
    }
    tiles
        .subs
        .inner
        .lock()
        .record(t, current.version, sent, retry);
}

#[cfg(test)]
mod tests {
    use geostream_core::codec::Encoding;
    use geostream_hub::HubLimits;

    use super::*;

    /// The flusher plans a push, queues it, and only then records it as held. A client that
    /// received it and said in between that it holds nothing must get the tile again.
    #[test]
    fn a_client_that_speaks_after_a_push_was_planned_is_taken_at_its_word() {
        let hub = Hub::new(HubLimits::default());
        let session = hub.new_session(Encoding::Msgpack, None);
        let layer: Arc<str> = "l".into();
        let t = TileId::new(3, 1, 2).unwrap();
        let k: SubKey = (session.id().clone(), 1);
        let mut inner = Inner::default();
        inner.add(
            k.clone(),
            SubState {
                session,
                layer: layer.clone(),
                mode: TileMode::Full,
                tiles: BTreeSet::from([t]),
                held: HashMap::new(),
                said: 0,
            },
        );
        let planned = |inner: &mut Inner| {
            let mut plan = inner.take(Pending::Asked);
            plan.remove(&(layer.clone(), t))
                .map(|targets| (targets[0].held, targets[0].said))
        };

        // Quiet client: what was queued is held, and saying it holds it asks for nothing new.
        let (held, said) = planned(&mut inner).unwrap();
        assert_eq!(held, None);
        inner.record(t, 7, vec![(k.clone(), said)], vec![]);
        assert_eq!(inner.subs[&k].held.get(&t), Some(&7));
        inner.restate(&k, None, vec![(t, 7)]).unwrap();
        assert_eq!(planned(&mut inner), Some((Some(7), 1)));

        // The client says it holds nothing between the queueing and the bookkeeping.
        inner.restate(&k, None, vec![(t, 0)]).unwrap();
        let (held, said) = planned(&mut inner).unwrap();
        assert_eq!(held, None);
        inner.restate(&k, None, vec![(t, 0)]).unwrap();
        inner.record(t, 8, vec![(k.clone(), said)], vec![]);
        assert_eq!(inner.subs[&k].held.get(&t), None);
        assert_eq!(
            planned(&mut inner),
            Some((None, 3)),
            "the tile is asked for again"
        );

        // A push that did not fit is tried again with the changes.
        inner.record(t, 8, vec![], vec![k.clone()]);
        assert!(inner.dirty.contains(&(k.clone(), t)));
        assert!(
            inner
                .take(Pending::Changed)
                .contains_key(&(layer.clone(), t))
        );
    }
}
