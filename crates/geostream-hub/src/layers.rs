//! Layer subscriptions: which sessions watch which part of which layer, and the fan-out of
//! each change as `enter`, `update`, `exit` or `delete`.
//!
//! Per layer, an R-tree holds the box of every subscription's area (two boxes for one that
//! crosses the antimeridian); a change is tested only against subscriptions whose boxes touch
//! the union of its old and new bounding boxes, then exactly, on both sides: matching before
//! and after is an update, only after an enter, only before an exit (or a delete). Nothing is
//! kept per (subscription, feature): the change carries the feature before and after, so the
//! transition is a pure function of the change and the filter.
//!
//! Changes are dispatched in sequence order per layer. They can reach the hub out of order
//! (several writers, several nodes), so early ones wait in a small reorder buffer until the
//! gap before them fills; the caller fills gaps that persist from the store's change log.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use geostream_core::api::FeatureKind;
use geostream_core::feature::{BBox, Change, Feature};
use geostream_filter::{FeatureRef, Filter, point_in_box};
use parking_lot::Mutex;
use rstar::{AABB, RStarInsertionStrategy, RTree, RTreeObject, RTreeParams};
use serde_json::Value;

use crate::prepared::{Prepared, PushEvent};
use crate::session::{Session, SubTarget};
use crate::{Hub, HubError, PushOutcome};

/// Most changes held per layer while waiting for an earlier one. Past this, the oldest
/// missing range is reported and the layer continues from what it has.
const REORDER_LIMIT: usize = 4096;

/// A geometry converted for filtering, once per change side.
pub struct Side<'a> {
    feature: &'a Feature,
    geometry: Option<geo::Geometry<f64>>,
    bbox: Option<BBox>,
}

impl<'a> Side<'a> {
    /// Prepares one side of a change (or a stored feature) for filtering.
    pub fn new(feature: &'a Feature, bbox: Option<BBox>) -> Self {
        let geometry = feature
            .geometry
            .as_ref()
            .and_then(|g| geo::Geometry::<f64>::try_from(&g.value).ok());
        Side {
            feature,
            geometry,
            bbox: bbox.or_else(|| feature.bbox()),
        }
    }

    /// Whether `filter` matches this feature.
    pub fn matches(&self, filter: &Filter, id: &Value) -> bool {
        let f = FeatureRef {
            id: Some(id),
            geometry: self.geometry.as_ref(),
            bbox: self.bbox,
            properties: &self.feature.properties,
        };
        filter.matches(&f)
    }
}

/// What a subscriber must be told about a feature that matched its filter `before` (or not)
/// and matches it `after` (or not), `gone` when the feature no longer exists. The one rule
/// for live changes, replays and viewport moves alike.
pub fn transition(before: bool, after: bool, gone: bool) -> Option<FeatureKind> {
    match (before, after) {
        (false, false) => None,
        (false, true) => Some(FeatureKind::Enter),
        (true, true) => Some(FeatureKind::Update),
        (true, false) if gone => Some(FeatureKind::Delete),
        (true, false) => Some(FeatureKind::Exit),
    }
}

/// Both sides of a change, ready for filtering.
pub struct ChangeView<'a> {
    change: &'a Change,
    id: Value,
    old: Option<Side<'a>>,
    new: Option<Side<'a>>,
}

impl<'a> ChangeView<'a> {
    /// Converts a change's geometries once, for all the filters it is tested against.
    pub fn new(change: &'a Change) -> Self {
        ChangeView {
            change,
            id: Value::String(change.id.clone()),
            old: change.old.as_ref().map(|f| Side::new(f, change.old_bbox)),
            new: change.new.as_ref().map(|f| Side::new(f, change.new_bbox)),
        }
    }

    /// What the change means for a subscriber whose filter is exactly the box `b` (see
    /// [`Filter::plain_box`]), decided without the filter when both sides are points or
    /// absent (the commonest changes: moving objects); `None` when a side is another shape.
    fn box_kind(&self, b: BBox) -> Option<Option<FeatureKind>> {
        let side = |s: &Option<Side<'_>>| match s.as_ref().and_then(|s| s.geometry.as_ref()) {
            // No feature, or no geometry: a spatial filter does not match.
            None => Some(false),
            Some(geo::Geometry::Point(p)) => Some(point_in_box(b, p.x(), p.y())),
            Some(_) => None,
        };
        let (before, after) = (side(&self.old)?, side(&self.new)?);
        Some(transition(before, after, self.change.new.is_none()))
    }

    /// What the change means for a subscriber with `filter`; `None` if nothing.
    pub fn kind(&self, filter: &Filter) -> Option<FeatureKind> {
        let before = self
            .old
            .as_ref()
            .is_some_and(|s| s.matches(filter, &self.id));
        let after = self
            .new
            .as_ref()
            .is_some_and(|s| s.matches(filter, &self.id));
        transition(before, after, self.change.new.is_none())
    }

    /// The union of the change's bounding boxes (where a subscription must look to care).
    pub fn area(&self) -> Option<BBox> {
        match (self.change.old_bbox, self.change.new_bbox) {
            (Some(a), Some(b)) => Some([
                a[0].min(b[0]),
                a[1].min(b[1]),
                a[2].max(b[2]),
                a[3].max(b[3]),
            ]),
            (a, b) => a.or(b),
        }
    }
}

/// Index of a kind in per-change tables.
fn kind_index(k: FeatureKind) -> usize {
    match k {
        FeatureKind::Enter => 0,
        FeatureKind::Update => 1,
        FeatureKind::Exit => 2,
        FeatureKind::Delete => 3,
    }
}

/// Changes held for a subscription while it starts or moves.
struct Held {
    items: Vec<(u64, Arc<str>, Arc<Prepared>)>,
    overflow: bool,
}

/// Shared between the registry and a subscription that is catching up.
pub struct LayerSubState {
    recovering: AtomicBool,
    held: Mutex<Held>,
    /// The sequence number the subscription's start (snapshot, replay or move) covered:
    /// a change at or below it is already reflected, even when the broker brings it to
    /// this node only after the subscription went live (the store read can see a commit
    /// before its publication arrives).
    covered: AtomicU64,
}

struct LayerSub {
    session: Arc<Session>,
    sub: u32,
    filter: Arc<Filter>,
    boxes: Vec<BBox>,
    state: Arc<LayerSubState>,
}

/// Wider nodes than rstar's default (6): a layer's tree of 100,000 viewports is two levels
/// shallower, and each change's lookup misses the cache at fewer nodes (the lookup was the
/// largest single cost of routing a replay to 100,000 viewports); scanning 16 boxes held
/// side by side in a node costs little.
struct SubTreeParams;

impl RTreeParams for SubTreeParams {
    const MIN_SIZE: usize = 6;
    const MAX_SIZE: usize = 16;
    const REINSERTION_COUNT: usize = 4;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

#[derive(Clone, Debug, PartialEq)]
struct Indexed {
    env: AABB<[f64; 2]>,
    slot: usize,
    /// The subscription's filter is exactly this box: a change of points is decided here,
    /// without reaching for the subscription and its filter (see [`plain`]).
    plain: bool,
}

impl RTreeObject for Indexed {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.env
    }
}

/// Whether `s`'s filter is exactly its one indexed box.
fn plain(s: &LayerSub) -> bool {
    matches!(s.boxes.as_slice(), [b] if s.filter.plain_box() == Some(*b))
}

fn aabb(b: &BBox) -> AABB<[f64; 2]> {
    AABB::from_corners([b[0], b[1]], [b[2], b[3]])
}

pub(crate) struct LayerEntry {
    name: Arc<str>,
    /// Last sequence number dispatched. Layers start at 0, and the node sets the store's
    /// current number for existing layers when it starts ([`Hub::init_layer`]), so a gap is
    /// always recognised as one.
    last_seq: u64,
    waiting: BTreeMap<u64, Arc<Change>>,
    /// Subscriptions over all shards.
    live: usize,
    /// The layer's subscriptions, partitioned by session: each shard has its own index, and
    /// a run of changes is routed through the shards in parallel when it is large.
    shards: Vec<Shard>,
    /// Changes released in sequence order, waiting to be routed (reused between runs).
    run: Vec<Arc<Change>>,
}

/// A share of one layer's subscriptions with its own index. All of a session's
/// subscriptions are in one shard, so its pushes keep their order.
#[derive(Default)]
struct Shard {
    slots: Vec<Option<LayerSub>>,
    free: Vec<usize>,
    by_sub: HashMap<(usize, u32), usize>,
    tree: RTree<Indexed, SubTreeParams>,
    unbounded: Vec<usize>,
    live: usize,
    scratch: Vec<usize>,
    /// Pushes found for the changes being routed, delivered together per subscription (one
    /// outbox lock per subscription per run, not per push).
    pending: Vec<Pending>,
    /// `pending` grouped by subscription: each entry is a slot (high 32 bits) and an index
    /// into `pending` (low 32 bits), sorted (reused between runs).
    order: Vec<u64>,
}

/// A push found for a subscription, waiting for the rest of its run.
struct Pending {
    slot: usize,
    key: Arc<str>,
    push: Arc<Prepared>,
    seq: u64,
}

/// One change of a run, as every shard needs it: both sides converted for filtering and its
/// pushes, made by whichever shard needs each kind first (so each is encoded once per
/// encoding whatever the number of shards).
struct Routed<'a> {
    change: &'a Arc<Change>,
    view: ChangeView<'a>,
    area: Option<AABB<[f64; 2]>>,
    key: Arc<str>,
    pushes: [OnceLock<Arc<Prepared>>; 4],
}

impl Routed<'_> {
    fn push(&self, kind: FeatureKind) -> Arc<Prepared> {
        self.pushes[kind_index(kind)]
            .get_or_init(|| {
                Prepared::new(PushEvent::Feature {
                    change: self.change.clone(),
                    kind,
                    full: kind == FeatureKind::Enter,
                })
            })
            .clone()
    }
}

/// Below this many (changes x subscriptions), a run is routed through the shards one after
/// the other: handing work to other threads costs more than it saves. (Unit tests take the
/// parallel path for every run.)
const PARALLEL_WORK: usize = if cfg!(test) { 1 } else { 20_000 };

impl LayerEntry {
    fn new(name: Arc<str>, shards: usize) -> Self {
        LayerEntry {
            name,
            last_seq: 0,
            waiting: BTreeMap::new(),
            live: 0,
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            run: Vec::new(),
        }
    }

    fn shard_of(&self, session: &Session) -> usize {
        // Session keys are addresses (aligned): mix them before taking the remainder.
        let h = (session_key(session) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (h % self.shards.len() as u64) as usize
    }

    /// Takes `change` in sequence order: appended to the run when it is the next one (with
    /// the waiting changes it unblocks), held when an earlier one is missing. Returns whether
    /// it was new.
    fn sequence(&mut self, change: &Arc<Change>) -> bool {
        if change.seq <= self.last_seq {
            return false;
        }
        let next = self.last_seq + 1;
        if change.seq > next {
            self.waiting.insert(change.seq, change.clone());
            if self.waiting.len() > REORDER_LIMIT {
                // Give up on the gap: continue from the oldest held change.
                let first = *self.waiting.keys().next().unwrap_or(&next);
                tracing::warn!(layer = %self.name, missing = next, resumed = first, "Changes never arrived; continuing without them.");
                self.last_seq = first - 1;
                self.release_waiting();
            }
            return true;
        }
        self.run.push(change.clone());
        self.last_seq = change.seq;
        self.release_waiting();
        true
    }

    fn release_waiting(&mut self) {
        while let Some(entry) = self.waiting.first_entry() {
            let seq = *entry.key();
            if seq <= self.last_seq {
                entry.remove();
                continue;
            }
            if seq != self.last_seq + 1 {
                break;
            }
            let c = entry.remove();
            self.last_seq = c.seq;
            self.run.push(c);
        }
    }

    fn slot(&self, session: &Session, sub: u32) -> Option<(usize, usize)> {
        let shard = self.shard_of(session);
        let slot = *self.shards[shard]
            .by_sub
            .get(&(session_key(session), sub))?;
        Some((shard, slot))
    }

    fn subs(&self) -> impl Iterator<Item = &LayerSub> {
        self.shards.iter().flat_map(|s| s.slots.iter().flatten())
    }
}

impl Shard {
    fn index(&mut self, slot: usize) {
        let Some(s) = &self.slots[slot] else { return };
        if s.boxes.is_empty() {
            self.unbounded.push(slot);
        } else {
            let plain = plain(s);
            for b in &s.boxes {
                self.tree.insert(Indexed {
                    env: aabb(b),
                    slot,
                    plain,
                });
            }
        }
    }

    fn unindex(&mut self, slot: usize) {
        let Some(s) = &self.slots[slot] else { return };
        if s.boxes.is_empty() {
            self.unbounded.retain(|x| *x != slot);
        } else {
            let plain = plain(s);
            for b in &s.boxes {
                self.tree.remove(&Indexed {
                    env: aabb(b),
                    slot,
                    plain,
                });
            }
        }
    }

    /// Routes a run of changes to this shard's subscriptions; returns the pushes queued.
    fn route(&mut self, run: &[Routed<'_>], spatial_index: bool) -> u64 {
        if self.live == 0 {
            return 0;
        }
        let mut cands = std::mem::take(&mut self.scratch);
        for r in run {
            cands.clear();
            if spatial_index {
                if let Some(env) = &r.area {
                    for x in self.tree.locate_in_envelope_intersecting(env) {
                        if x.plain {
                            let (lo, hi) = (x.env.lower(), x.env.upper());
                            if let Some(kind) = r.view.box_kind([lo[0], lo[1], hi[0], hi[1]]) {
                                // Decided; a plain subscription has one box, so it is not
                                // found twice.
                                if let Some(kind) = kind {
                                    self.pending.push(Pending {
                                        slot: x.slot,
                                        key: r.key.clone(),
                                        push: r.push(kind),
                                        seq: r.change.seq,
                                    });
                                }
                                continue;
                            }
                        }
                        cands.push(x.slot);
                    }
                }
                cands.extend_from_slice(&self.unbounded);
                // A subscription indexed under two boxes may be found twice.
                cands.sort_unstable();
                cands.dedup();
            } else {
                cands.extend((0..self.slots.len()).filter(|i| self.slots[*i].is_some()));
            }
            for &slot in &cands {
                let Some(s) = &self.slots[slot] else { continue };
                let Some(kind) = r.view.kind(&s.filter) else {
                    continue;
                };
                self.pending.push(Pending {
                    slot,
                    key: r.key.clone(),
                    push: r.push(kind),
                    seq: r.change.seq,
                });
            }
        }
        self.scratch = cands;
        self.flush_pending()
    }

    /// Delivers what [`Shard::route`] found, grouped by subscription, each group in sequence
    /// order.
    fn flush_pending(&mut self) -> u64 {
        let pending = std::mem::take(&mut self.pending);
        let mut order = std::mem::take(&mut self.order);
        // `route` appends a run's pushes change by change, in sequence order, and a change
        // pushes at most once to a subscription: so sorting (slot, index) keys groups them by
        // subscription with each group in sequence order. Sorting the keys rather than the
        // pushes themselves: at 100,000 viewports a batch of 500 changes finds some 30,000
        // pushes, and sorting those 40-byte entries (their moves, mostly) was about a tenth of
        // the server's CPU.
        order.clear();
        order.extend(
            pending
                .iter()
                .enumerate()
                .map(|(i, p)| ((p.slot as u64) << 32) | i as u64),
        );
        order.sort_unstable();
        let mut delivered = 0u64;
        for group in order.chunk_by(|a, b| a >> 32 == b >> 32) {
            if let Some(s) = &self.slots[(group[0] >> 32) as usize] {
                let group = group
                    .iter()
                    .map(|k| &pending[(k & u64::from(u32::MAX)) as usize]);
                delivered += deliver_all(s, group);
            }
        }
        self.order = order;
        self.pending = pending;
        self.pending.clear();
        delivered
    }
}

/// A layer subscription that is registered but not yet live: changes for it are held until
/// [`Hub::finish_layer_recovery`].
pub struct LayerRecovering {
    /// The subscription id.
    pub sub: u32,
    /// The layer.
    pub layer: Arc<str>,
    /// Whether this node had no other subscriber of the layer.
    pub first_on_node: bool,
    /// The last sequence number this node dispatched for the layer when the subscription
    /// was registered or moved.
    pub last_dispatched: u64,
    session: Arc<Session>,
    state: Arc<LayerSubState>,
}

/// A subscription whose filter was replaced; see [`Hub::update_layer_sub`].
pub struct LayerMove {
    /// The filter before.
    pub old_filter: Arc<Filter>,
    /// The subscription, holding changes until the difference is sent.
    pub recovering: LayerRecovering,
}

/// What happened to a change handed to [`Hub::dispatch_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatched {
    /// Dispatched (with any held changes it unblocked).
    Done,
    /// Already dispatched (a duplicate): ignored.
    Duplicate,
    /// Held: changes from `missing` on have not arrived yet. Fill them from the change log
    /// if they do not come soon.
    Waiting {
        /// First missing sequence number.
        missing: u64,
    },
}

impl Hub {
    fn layer_entry(&self, layer: &str) -> Option<Arc<Mutex<LayerEntry>>> {
        self.layers.read().get(layer).cloned()
    }

    fn layer_entry_or_new(&self, layer: &str) -> Arc<Mutex<LayerEntry>> {
        if let Some(e) = self.layer_entry(layer) {
            return e;
        }
        let shards = self.limits.dispatch_shards;
        let mut layers = self.layers.write();
        layers
            .entry(Arc::from(layer))
            .or_insert_with_key(|k| Arc::new(Mutex::new(LayerEntry::new(k.clone(), shards))))
            .clone()
    }

    /// Tells the hub where a layer's change log stands (at start-up, for every existing
    /// layer): changes up to `seq` are not expected.
    pub fn init_layer(&self, layer: &str, seq: u64) {
        let entry = self.layer_entry_or_new(layer);
        let mut e = entry.lock();
        if seq > e.last_seq {
            e.last_seq = seq;
            e.release_waiting();
            self.route_run(&mut e);
        }
    }

    /// Forgets a deleted layer; returns its subscriptions (sessions and ids) so the caller can
    /// end them.
    pub fn drop_layer(&self, layer: &str) -> Vec<(Arc<Session>, u32)> {
        let Some(entry) = self.layers.write().remove(layer) else {
            return Vec::new();
        };
        let e = entry.lock();
        let subs: Vec<(Arc<Session>, u32)> = e.subs().map(|s| (s.session.clone(), s.sub)).collect();
        self.stats
            .subscriptions
            .fetch_sub(subs.len() as u64, Ordering::Relaxed);
        for (session, sub) in &subs {
            session.remove_sub(*sub);
        }
        subs
    }

    /// Registers a layer subscription with `filter`. Changes for it are held until
    /// [`Hub::finish_layer_recovery`], so the response and the snapshot go out first.
    pub fn add_layer_sub(
        &self,
        session: &Arc<Session>,
        layer: &str,
        filter: Arc<Filter>,
    ) -> Result<LayerRecovering, HubError> {
        let entry = self.layer_entry_or_new(layer);
        let mut e = entry.lock();
        let name = e.name.clone();
        let sub = session.add_sub(
            SubTarget::Layer {
                layer: name.clone(),
            },
            self.limits.max_subscriptions,
        )?;
        let state = Arc::new(LayerSubState {
            recovering: AtomicBool::new(true),
            held: Mutex::new(Held {
                items: Vec::new(),
                overflow: false,
            }),
            covered: AtomicU64::new(0),
        });
        let boxes = subscription_boxes(&filter);
        let first_on_node = e.live == 0;
        e.live += 1;
        let last_dispatched = e.last_seq;
        let shard = e.shard_of(session);
        let sh = &mut e.shards[shard];
        let slot = sh.free.pop().unwrap_or_else(|| {
            sh.slots.push(None);
            sh.slots.len() - 1
        });
        sh.slots[slot] = Some(LayerSub {
            session: session.clone(),
            sub,
            filter,
            boxes,
            state: state.clone(),
        });
        sh.index(slot);
        sh.by_sub.insert((session_key(session), sub), slot);
        sh.live += 1;
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(LayerRecovering {
            sub,
            layer: name,
            first_on_node,
            last_dispatched,
            session: session.clone(),
            state,
        })
    }

    /// Replaces the filter of a live layer subscription and holds its changes (already
    /// judged by the new filter) until [`Hub::finish_layer_recovery`]. The caller sends the
    /// difference between what the client has (the old filter as of `last_dispatched`) and
    /// what it should have.
    pub fn update_layer_sub(
        &self,
        session: &Arc<Session>,
        sub: u32,
        filter: Arc<Filter>,
    ) -> Result<LayerMove, HubError> {
        let Some(SubTarget::Layer { layer }) = session.sub_target(sub) else {
            return Err(HubError::UnknownSubscription(sub));
        };
        let entry = self
            .layer_entry(&layer)
            .ok_or(HubError::UnknownSubscription(sub))?;
        let mut e = entry.lock();
        let (shard, slot) = e
            .slot(session, sub)
            .ok_or(HubError::UnknownSubscription(sub))?;
        let last = e.last_seq;
        let sh = &mut e.shards[shard];
        sh.unindex(slot);
        let s = sh.slots[slot]
            .as_mut()
            .ok_or(HubError::UnknownSubscription(sub))?;
        let old_filter = std::mem::replace(&mut s.filter, filter);
        s.boxes = subscription_boxes(&s.filter);
        s.state.recovering.store(true, Ordering::Release);
        let state = s.state.clone();
        sh.index(slot);
        Ok(LayerMove {
            old_filter,
            recovering: LayerRecovering {
                sub,
                layer: layer.clone(),
                first_on_node: false,
                last_dispatched: last,
                session: session.clone(),
                state,
            },
        })
    }

    /// Makes a layer subscription live: queues the changes held for it with a sequence
    /// number above `after`, then lets new ones through. Returns `false` if too many changes
    /// arrived meanwhile and some were not kept (the caller must resynchronise the client).
    pub fn finish_layer_recovery(&self, r: LayerRecovering, after: u64) -> bool {
        let mut held = r.state.held.lock();
        let items = std::mem::take(&mut held.items);
        let complete = !std::mem::take(&mut held.overflow);
        for (seq, key, push) in items {
            if seq > after {
                r.session.outbox.push_state(r.sub, &key, push);
            }
        }
        r.state.covered.fetch_max(after, Ordering::AcqRel);
        r.state.recovering.store(false, Ordering::Release);
        complete
    }

    /// The last sequence number this node dispatched for `layer` (0 if it knows none).
    pub fn layer_last_seq(&self, layer: &str) -> u64 {
        self.layer_entry(layer).map_or(0, |e| e.lock().last_seq)
    }

    /// Whether this node has any subscriber of `layer`.
    pub fn has_layer(&self, layer: &str) -> bool {
        self.layer_entry(layer).is_some_and(|e| e.lock().live > 0)
    }

    pub(crate) fn unregister_layer_sub(&self, session: &Session, sub: u32, layer: &str) -> bool {
        let Some(entry) = self.layer_entry(layer) else {
            return false;
        };
        let mut e = entry.lock();
        let Some((shard, slot)) = e.slot(session, sub) else {
            return false;
        };
        let sh = &mut e.shards[shard];
        sh.by_sub.remove(&(session_key(session), sub));
        sh.unindex(slot);
        sh.slots[slot] = None;
        sh.free.push(slot);
        sh.live -= 1;
        e.live -= 1;
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        // The entry stays: it keeps the layer's position for the next subscriber.
        e.live == 0
    }

    /// Sends a lock or unlock to every subscriber of `layer` on this node (maps show who is
    /// editing what, wherever it is).
    pub fn dispatch_lock(&self, layer: &str, lock: geostream_core::api::LockPush) {
        let Some(entry) = self.layer_entry(layer) else {
            return;
        };
        let e = entry.lock();
        if e.live == 0 {
            return;
        }
        let push = Prepared::new(PushEvent::Lock { lock });
        for s in e.subs() {
            s.session.outbox.push(crate::Outgoing::Push {
                sub: s.sub,
                push: push.clone(),
            });
        }
    }

    /// Fans a change out to this node's subscribers of its layer, in sequence order.
    pub fn dispatch_change(&self, change: Arc<Change>) -> Dispatched {
        self.dispatch_changes(std::slice::from_ref(&change))
    }

    /// Fans changes out (a committed batch, or a run read from the log), in sequence order
    /// per layer: the layer's subscriptions are locked once per run of changes of one
    /// layer, and each subscription's pushes are queued under one outbox lock. The result
    /// is the state of the last layer touched.
    pub fn dispatch_changes(&self, changes: &[Arc<Change>]) -> Dispatched {
        let mut result = Dispatched::Duplicate;
        let mut rest = changes;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|c| c.layer != first.layer)
                .unwrap_or(rest.len());
            let (now, later) = rest.split_at(run);
            result = self.dispatch_layer_run(&first.layer, now);
            rest = later;
        }
        result
    }

    fn dispatch_layer_run(&self, layer: &str, changes: &[Arc<Change>]) -> Dispatched {
        let entry = self.layer_entry_or_new(layer);
        let mut e = entry.lock();
        let mut fresh = false;
        for change in changes {
            fresh |= e.sequence(change);
        }
        self.route_run(&mut e);
        if !fresh {
            Dispatched::Duplicate
        } else if e.waiting.is_empty() {
            Dispatched::Done
        } else {
            Dispatched::Waiting {
                missing: e.last_seq + 1,
            }
        }
    }

    /// Routes the changes released in sequence order to every shard's subscriptions: one
    /// shard after the other for small runs, the shards in parallel for large ones.
    fn route_run(&self, e: &mut LayerEntry) {
        let run = std::mem::take(&mut e.run);
        if run.is_empty() {
            e.run = run;
            return;
        }
        if e.live > 0 {
            self.stats
                .events
                .fetch_add(run.len() as u64, Ordering::Relaxed);
            let routed: Vec<Routed<'_>> = run
                .iter()
                .map(|change| {
                    let view = ChangeView::new(change);
                    let area = view.area().map(|a| aabb(&a));
                    Routed {
                        change,
                        view,
                        area,
                        key: Arc::from(change.id.as_str()),
                        pushes: Default::default(),
                    }
                })
                .collect();
            let index = self.limits.spatial_index;
            let delivered: u64 =
                if e.shards.len() > 1 && routed.len().saturating_mul(e.live) >= PARALLEL_WORK {
                    use rayon::prelude::*;
                    e.shards
                        .par_iter_mut()
                        .map(|s| s.route(&routed, index))
                        .sum()
                } else {
                    e.shards.iter_mut().map(|s| s.route(&routed, index)).sum()
                };
            self.stats
                .deliveries
                .fetch_add(delivered, Ordering::Relaxed);
        }
        let mut run = run;
        run.clear();
        e.run = run;
    }
}

/// Queues a push for a subscription, or holds it while the subscription catches up.
fn deliver(s: &LayerSub, key: &Arc<str>, push: Arc<Prepared>, seq: u64) -> bool {
    if s.state.recovering.load(Ordering::Acquire) {
        let mut held = s.state.held.lock();
        // Checked again under the lock: `finish_layer_recovery` flips the flag while holding
        // it, so a change is either held before the flush or queued after it.
        if s.state.recovering.load(Ordering::Acquire) {
            if held.items.len() < HELD_LIMIT {
                held.items.push((seq, key.clone(), push));
            } else {
                held.overflow = true;
            }
            return false;
        }
    }
    // Read after the flag: `finish_layer_recovery` sets `covered` before clearing it.
    if seq <= s.state.covered.load(Ordering::Acquire) {
        return false;
    }
    s.session.outbox.push_state(s.sub, key, push) == PushOutcome::Queued
}

/// Queues a subscription's pushes of one batch, under one outbox lock when it is live.
fn deliver_all<'a>(s: &LayerSub, group: impl Iterator<Item = &'a Pending>) -> u64 {
    // A live subscription stays live while the layer is locked (only a move, which takes
    // the layer's lock, makes it recover again); a recovering one may go live meanwhile,
    // which `deliver` handles push by push.
    if s.state.recovering.load(Ordering::Acquire) {
        return group
            .filter(|p| deliver(s, &p.key, p.push.clone(), p.seq))
            .count() as u64;
    }
    let covered = s.state.covered.load(Ordering::Acquire);
    s.session.outbox.push_states(
        s.sub,
        group
            .filter(|p| p.seq > covered)
            .map(|p| (&p.key, p.push.clone())),
    )
}

/// Changes held per subscription while it starts or moves.
const HELD_LIMIT: usize = 10_000;

fn subscription_boxes(filter: &Filter) -> Vec<BBox> {
    match &filter.spatial {
        Some(s) => s.covering_boxes(),
        None => filter.bbox().map(|b| vec![b]).unwrap_or_default(),
    }
}

fn session_key(s: &Session) -> usize {
    Arc::as_ptr(s.id()) as *const u8 as usize
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use geostream_core::codec::Encoding;
    use geostream_core::feature::{ChangeOp, FeatureType, format_time_ms};
    use geostream_filter::{AttributeFilter, Limits, SpatialFilter};
    use serde_json::json;

    use super::*;
    use crate::{HubLimits, OutboxLimits, Outgoing};

    fn point(id: &str, x: f64, y: f64, props: Value) -> Feature {
        Feature {
            kind: FeatureType::Feature,
            id: id.into(),
            geometry: Some(
                serde_json::from_value(json!({"type": "Point", "coordinates": [x, y]})).unwrap(),
            ),
            properties: props.as_object().cloned().unwrap_or_default(),
            version: 1,
            updated: format_time_ms(0),
        }
    }

    fn change(seq: u64, old: Option<Feature>, new: Option<Feature>) -> Arc<Change> {
        let op = match (&old, &new) {
            (None, _) => ChangeOp::Insert,
            (_, None) => ChangeOp::Delete,
            _ => ChangeOp::Update,
        };
        let id = old.as_ref().or(new.as_ref()).unwrap().id.clone();
        Arc::new(Change {
            layer: "ships".into(),
            seq,
            op,
            version: seq,
            old_bbox: old.as_ref().and_then(Feature::bbox),
            new_bbox: new.as_ref().and_then(Feature::bbox),
            changed: vec!["speed".into()],
            geometry_changed: true,
            author: None,
            op_id: None,
            time_ms: 0,
            id,
            old,
            new,
        })
    }

    fn bbox_filter(b: [f64; 4]) -> Arc<Filter> {
        Arc::new(Filter {
            spatial: Some(SpatialFilter::from_bbox(&b).unwrap()),
            ..Default::default()
        })
    }

    fn kinds(s: &Session) -> Vec<(String, FeatureKind, u64)> {
        let mut out = VecDeque::new();
        s.outbox.drain(&mut out, usize::MAX);
        out.into_iter()
            .filter_map(|o| match o {
                Outgoing::State { push, .. } => match push.event() {
                    PushEvent::Feature { change, kind, .. } => {
                        Some((change.id.clone(), *kind, change.seq))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn live_sub(hub: &Hub, filter: Arc<Filter>) -> Arc<Session> {
        let s = hub.new_session(Encoding::Json, None);
        let r = hub.add_layer_sub(&s, "ships", filter).unwrap();
        hub.finish_layer_recovery(r, 0);
        s
    }

    fn transitions(index: bool, batched: bool, shards: usize) {
        let hub = Hub::new(HubLimits {
            spatial_index: index,
            dispatch_shards: shards,
            ..HubLimits::default()
        });
        let west = live_sub(&hub, bbox_filter([-10.0, -10.0, 0.0, 10.0]));
        let east = live_sub(&hub, bbox_filter([0.5, -10.0, 10.0, 10.0]));
        let fast = {
            let f = Filter {
                attribute: Some(
                    AttributeFilter::parse_text("speed > 10", &Limits::default()).unwrap(),
                ),
                ..Default::default()
            };
            live_sub(&hub, Arc::new(f))
        };
        let a1 = point("a", -5.0, 0.0, json!({"speed": 5}));
        let a2 = point("a", -4.0, 0.0, json!({"speed": 12}));
        let a3 = point("a", 5.0, 0.0, json!({"speed": 12}));
        let a4 = point("a", 5.0, 0.0, json!({"speed": 3}));
        let changes = [
            change(1, None, Some(a1.clone())),
            change(2, Some(a1), Some(a2.clone())),
            change(3, Some(a2), Some(a3.clone())),
            change(4, Some(a3), Some(a4.clone())),
            change(5, Some(a4), None),
        ];
        if batched {
            // Out of order inside the batch: the hub still dispatches in sequence order.
            let mut shuffled = changes.to_vec();
            shuffled.swap(0, 3);
            assert_eq!(hub.dispatch_changes(&shuffled), Dispatched::Done);
            assert_eq!(hub.dispatch_changes(&changes), Dispatched::Duplicate);
        } else {
            for c in changes {
                assert_eq!(hub.dispatch_change(c), Dispatched::Done);
            }
        }
        use FeatureKind::*;
        assert_eq!(
            kinds(&west),
            vec![
                ("a".into(), Enter, 1),
                ("a".into(), Update, 2),
                ("a".into(), Exit, 3)
            ]
        );
        assert_eq!(
            kinds(&east),
            vec![
                ("a".into(), Enter, 3),
                ("a".into(), Update, 4),
                ("a".into(), Delete, 5)
            ]
        );
        assert_eq!(
            kinds(&fast),
            vec![
                ("a".into(), Enter, 2),
                ("a".into(), Update, 3),
                ("a".into(), Exit, 4)
            ]
        );
    }

    #[test]
    fn enter_update_exit_delete_with_the_index() {
        transitions(true, false, 1);
        transitions(true, false, 3);
    }

    #[test]
    fn the_same_without_the_index() {
        transitions(false, false, 1);
    }

    /// A subscription whose filter is one box is decided from its index entry (points), or by
    /// its filter (other shapes): either way as a subscription with the same box and a
    /// condition every feature meets, which always goes through the filter.
    #[test]
    fn plain_boxes_are_decided_as_their_filters_decide() {
        let hub = Hub::new(HubLimits::default());
        let b = [-2.0, -2.0, 2.0, 2.0];
        let plain = live_sub(&hub, bbox_filter(b));
        let checked = {
            let f = Filter {
                spatial: Some(SpatialFilter::from_bbox(&b).unwrap()),
                attribute: Some(
                    AttributeFilter::parse_text("speed >= 0", &Limits::default()).unwrap(),
                ),
                ..Default::default()
            };
            live_sub(&hub, Arc::new(f))
        };
        let line = |id: &str, x: f64| {
            let mut f = point(id, 0.0, 0.0, json!({"speed": 1}));
            f.geometry = Some(
                serde_json::from_value(
                    json!({"type": "LineString", "coordinates": [[x, -5.0], [x, 5.0]]}),
                )
                .unwrap(),
            );
            f
        };
        // Points on a grid of whole and half degrees (many on the box's edges), moving,
        // appearing and vanishing, and a line crossing the box whose box is not a point.
        let mut last: HashMap<String, Feature> = HashMap::new();
        let mut state = 7u64;
        let mut seq = 0;
        for _ in 0..400 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = state >> 33;
            let id = format!("f{}", r % 5);
            let x = ((r >> 3) % 13) as f64 * 0.5 - 3.0;
            let y = ((r >> 7) % 13) as f64 * 0.5 - 3.0;
            let new = match (r >> 11) % 6 {
                0 => None,
                1 => Some(line(&id, x)),
                _ => Some(point(&id, x, y, json!({"speed": 1}))),
            };
            let old = last.remove(&id);
            if old.is_none() && new.is_none() {
                continue;
            }
            if let Some(f) = &new {
                last.insert(id.clone(), f.clone());
            }
            seq += 1;
            assert_eq!(hub.dispatch_change(change(seq, old, new)), Dispatched::Done);
        }
        let got = kinds(&plain);
        assert!(got.len() > 50, "the run must reach the box: {}", got.len());
        assert_eq!(got, kinds(&checked));
    }

    #[test]
    fn one_batch_gives_each_subscriber_the_same_pushes_as_single_changes() {
        transitions(true, true, 1);
        transitions(true, true, 4);
        transitions(false, true, 1);
        transitions(false, true, 2);
    }

    #[test]
    fn out_of_order_changes_wait_for_the_gap() {
        let hub = Hub::new(HubLimits::default());
        let s = live_sub(&hub, bbox_filter([-10.0, -10.0, 10.0, 10.0]));
        let f = |seq: u64| point("p", seq as f64 * 0.1, 0.0, json!({}));
        assert_eq!(
            hub.dispatch_change(change(1, None, Some(f(1)))),
            Dispatched::Done
        );
        assert_eq!(
            hub.dispatch_change(change(3, Some(f(2)), Some(f(3)))),
            Dispatched::Waiting { missing: 2 }
        );
        assert_eq!(
            hub.dispatch_change(change(4, Some(f(3)), Some(f(4)))),
            Dispatched::Waiting { missing: 2 }
        );
        assert_eq!(kinds(&s).len(), 1);
        assert_eq!(
            hub.dispatch_change(change(2, Some(f(1)), Some(f(2)))),
            Dispatched::Done
        );
        assert_eq!(
            kinds(&s).iter().map(|k| k.2).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(
            hub.dispatch_change(change(3, Some(f(2)), Some(f(3)))),
            Dispatched::Duplicate
        );
    }

    #[test]
    fn held_changes_are_released_after_the_snapshot_point() {
        let hub = Hub::new(HubLimits::default());
        let s = hub.new_session(Encoding::Json, None);
        let r = hub
            .add_layer_sub(&s, "ships", bbox_filter([-10.0, -10.0, 10.0, 10.0]))
            .unwrap();
        for seq in 1..=4 {
            let old = (seq > 1).then(|| point("p", 0.0, 0.0, json!({})));
            hub.dispatch_change(change(seq, old, Some(point("p", 1.0, 1.0, json!({})))));
        }
        assert!(kinds(&s).is_empty());
        assert!(hub.finish_layer_recovery(r, 2));
        assert_eq!(
            kinds(&s).iter().map(|k| k.2).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    #[test]
    fn moving_the_viewport_reindexes() {
        let hub = Hub::new(HubLimits::default());
        let s = live_sub(&hub, bbox_filter([-10.0, -10.0, 0.0, 10.0]));
        let sub = s.subscriptions()[0].0;
        let m = hub
            .update_layer_sub(&s, sub, bbox_filter([20.0, 20.0, 30.0, 30.0]))
            .unwrap();
        assert_eq!(m.old_filter.bbox(), Some([-10.0, -10.0, 0.0, 10.0]));
        hub.finish_layer_recovery(m.recovering, 0);
        hub.dispatch_change(change(1, None, Some(point("x", -5.0, 0.0, json!({})))));
        hub.dispatch_change(change(2, None, Some(point("y", 25.0, 25.0, json!({})))));
        assert_eq!(
            kinds(&s).into_iter().map(|k| k.0).collect::<Vec<_>>(),
            vec!["y"]
        );
    }

    #[test]
    fn antimeridian_areas_are_found_on_both_sides() {
        let hub = Hub::new(HubLimits::default());
        let f = Filter {
            spatial: Some(SpatialFilter::circle([179.9, 0.0], 50_000.0).unwrap()),
            ..Default::default()
        };
        let s = live_sub(&hub, Arc::new(f));
        hub.dispatch_change(change(1, None, Some(point("e", -179.9, 0.0, json!({})))));
        hub.dispatch_change(change(2, None, Some(point("w", 179.8, 0.0, json!({})))));
        assert_eq!(kinds(&s).len(), 2);
    }

    #[test]
    fn a_slow_client_ends_at_the_latest_state() {
        let hub = Hub::new(HubLimits {
            outbox: OutboxLimits {
                budget_bytes: 2000,
                slow_grace: std::time::Duration::from_secs(60),
            },
            ..HubLimits::default()
        });
        let s = live_sub(&hub, bbox_filter([-10.0, -10.0, 10.0, 10.0]));
        // 200 moves of 5 features; the client reads nothing meanwhile.
        let mut prev: HashMap<usize, Feature> = HashMap::new();
        let mut seq = 0;
        for step in 0..40 {
            for i in 0..5 {
                seq += 1;
                let new = point(
                    &format!("f{i}"),
                    step as f64 * 0.1,
                    i as f64,
                    json!({"step": step}),
                );
                hub.dispatch_change(change(seq, prev.insert(i, new.clone()), Some(new)));
            }
        }
        let mut out = VecDeque::new();
        let mut latest: HashMap<String, (u64, Option<Value>)> = HashMap::new();
        loop {
            out.clear();
            s.outbox.drain(&mut out, usize::MAX);
            if out.is_empty() {
                break;
            }
            let mut last_seq = 0;
            for o in &out {
                let Outgoing::State { push, .. } = o else {
                    continue;
                };
                let PushEvent::Feature { change, full, kind } = push.event() else {
                    continue;
                };
                assert!(
                    change.seq > last_seq,
                    "sequence numbers stay in order on the wire"
                );
                last_seq = change.seq;
                assert!(*full || *kind == FeatureKind::Enter || latest.contains_key(&change.id));
                latest.insert(
                    change.id.clone(),
                    (
                        change.seq,
                        change.new.as_ref().map(|f| f.properties["step"].clone()),
                    ),
                );
            }
        }
        assert_eq!(latest.len(), 5);
        for (_, (_, step)) in latest {
            assert_eq!(
                step,
                Some(json!(39)),
                "every feature ends at its latest state"
            );
        }
        assert!(hub.stats().outbox.coalesced.load(Ordering::Relaxed) > 100);
    }
}
