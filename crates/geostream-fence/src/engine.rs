//! The engine: fences indexed by layer, a copy of the features of the layers they need, and
//! the evaluation of one change against them.
//!
//! Evaluation is a pure function of the change log: the engine sees each layer's changes in
//! sequence order, and an event depends only on the change (its `old` and `new` feature)
//! and on the engine's copy of the layers at that point of the log. So evaluating the same
//! changes again gives the same events with the same keys, which is what lets a node that
//! takes over from a dead one skip what was already published.
//!
//! Costs per change: the fence areas come from an R-tree, so only fences whose box holds the
//! feature's old or new position are tested (or whose box meets the segment between them,
//! when some fence of the layer reports `cross`); zones likewise; roaming asks the copied
//! layer's R-tree of points for the neighbours within the distance.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use geo::{Geometry as GeoGeometry, Line, Point};
use geostream_core::feature::{Change, Feature, Geometry};
use geostream_filter::{FeatureRef, Limits, SpatialFilter, haversine_m};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};

use crate::event::{FenceEvent, Reason};
use crate::spec::{Detect, Fence};

type BoxEntry = GeomWithData<Rectangle<[f64; 2]>, usize>;
type PointEntry = GeomWithData<[f64; 2], usize>;

/// The representative point of a geometry: the point itself, or the centre of the bounding
/// box of all its positions.
pub fn position(g: &Geometry) -> Option<[f64; 2]> {
    use geojson::Value as V;
    fn walk(v: &V, b: &mut [f64; 4]) {
        let mut add = |p: &[f64]| {
            if p.len() >= 2 && p[0].is_finite() && p[1].is_finite() {
                b[0] = b[0].min(p[0]);
                b[1] = b[1].min(p[1]);
                b[2] = b[2].max(p[0]);
                b[3] = b[3].max(p[1]);
            }
        };
        match v {
            V::Point(p) => add(p),
            V::MultiPoint(ps) | V::LineString(ps) => ps.iter().for_each(|p| add(p)),
            V::MultiLineString(ls) | V::Polygon(ls) => ls.iter().flatten().for_each(|p| add(p)),
            V::MultiPolygon(pss) => pss.iter().flatten().flatten().for_each(|p| add(p)),
            V::GeometryCollection(gs) => gs.iter().for_each(|g| walk(&g.value, b)),
        }
    }
    if let geojson::Value::Point(p) = &g.value {
        return (p.len() >= 2 && p[0].is_finite() && p[1].is_finite()).then(|| [p[0], p[1]]);
    }
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    walk(&g.value, &mut b);
    (b[0] <= b[2]).then(|| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
}

fn rect(b: [f64; 4]) -> Rectangle<[f64; 2]> {
    Rectangle::from_corners([b[0], b[1]], [b[2], b[3]])
}

fn point_in(area: &SpatialFilter, p: [f64; 2]) -> bool {
    match area {
        SpatialFilter::BBox(_) => area.intersects_bbox([p[0], p[1], p[0], p[1]]),
        SpatialFilter::Circle { center, radius_m } => haversine_m(*center, p) <= *radius_m,
        SpatialFilter::Polygon(_) => area.intersects(&GeoGeometry::Point(Point::new(p[0], p[1]))),
    }
}

fn segment_hits(area: &SpatialFilter, a: [f64; 2], b: [f64; 2]) -> bool {
    area.intersects(&GeoGeometry::Line(Line::new((a[0], a[1]), (b[0], b[1]))))
}

/// A box holding every point within `d` metres of `p` (a little larger).
fn reach_box(p: [f64; 2], d: f64) -> [f64; 4] {
    let dlat = d / 111_000.0 * 1.01;
    let coslat = ((p[1].abs() + dlat).min(90.0)).to_radians().cos();
    let dlon = if coslat < 1e-6 {
        360.0
    } else {
        (dlat / coslat).min(360.0)
    };
    [p[0] - dlon, p[1] - dlat, p[0] + dlon, p[1] + dlat]
}

/// Whether a feature counts for a fence: its properties (and geometry) match the filter.
fn matches(fence: &Fence, f: &Feature) -> bool {
    let Some(filter) = &fence.filter else {
        return true;
    };
    let fr = FeatureRef::new(&f.properties);
    // A spatial predicate in the filter needs the geometry; most filters do not.
    if filter.bbox().is_some() {
        let g = f
            .geometry
            .as_ref()
            .and_then(|g| GeoGeometry::<f64>::try_from(&g.value).ok());
        return match &g {
            Some(g) => filter.matches(&fr.with_geometry(g)),
            None => filter.matches(&fr),
        };
    }
    filter.matches(&fr)
}

/// A copy of a layer's features with an R-tree of their positions.
#[derive(Default)]
struct Mirror {
    slots: Vec<Option<(Feature, Option<[f64; 2]>)>>,
    free: Vec<usize>,
    by_id: HashMap<String, usize>,
    tree: RTree<PointEntry>,
}

impl Mirror {
    fn remove(&mut self, id: &str) {
        if let Some(slot) = self.by_id.remove(id) {
            if let Some((_, Some(p))) = self.slots[slot].take() {
                self.tree.remove(&PointEntry::new(p, slot));
            }
            self.free.push(slot);
        }
    }

    fn put(&mut self, f: Feature) {
        let pos = f.geometry.as_ref().and_then(position);
        // A known feature keeps its slot (and its key in `by_id`): most changes are moves.
        if let Some(&slot) = self.by_id.get(&f.id) {
            if let Some((_, Some(p))) = &self.slots[slot] {
                self.tree.remove(&PointEntry::new(*p, slot));
            }
            if let Some(p) = pos {
                self.tree.insert(PointEntry::new(p, slot));
            }
            self.slots[slot] = Some((f, pos));
            return;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Some(p) = pos {
            self.tree.insert(PointEntry::new(p, slot));
        }
        self.by_id.insert(f.id.clone(), slot);
        self.slots[slot] = Some((f, pos));
    }

    fn apply(&mut self, old: Option<&Feature>, new: Option<&Feature>) {
        match (old, new) {
            (_, Some(n)) => self.put(n.clone()),
            (Some(o), None) => self.remove(&o.id),
            (None, None) => {}
        }
    }

    /// Features whose position lies in the box.
    fn in_box(&self, b: [f64; 4]) -> impl Iterator<Item = (&Feature, [f64; 2])> {
        self.tree
            .locate_in_envelope(&AABB::from_corners([b[0], b[1]], [b[2], b[3]]))
            .filter_map(|e| self.slots[e.data].as_ref().map(|(f, _)| (f, *e.geom())))
    }

    fn iter(&self) -> impl Iterator<Item = (&Feature, [f64; 2])> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|(f, p)| p.map(|p| (f, p)))
    }
}

/// The zones of a zones layer.
#[derive(Default)]
struct Zones {
    slots: Vec<Option<(String, SpatialFilter)>>,
    free: Vec<usize>,
    by_id: HashMap<String, usize>,
    tree: RTree<BoxEntry>,
}

impl Zones {
    fn area_of(f: &Feature) -> Option<SpatialFilter> {
        let g = f.geometry.as_ref()?;
        let limits = Limits {
            max_vertices: 1_000_000,
            ..Limits::default()
        };
        SpatialFilter::from_geojson_geometry(g, &limits).ok()
    }

    fn remove(&mut self, id: &str) -> Option<SpatialFilter> {
        let slot = self.by_id.remove(id)?;
        let (_, area) = self.slots[slot].take()?;
        for b in area.covering_boxes() {
            self.tree.remove(&BoxEntry::new(rect(b), slot));
        }
        self.free.push(slot);
        Some(area)
    }

    fn put(&mut self, f: &Feature) {
        self.remove(&f.id);
        let Some(area) = Self::area_of(f) else {
            return;
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        for b in area.covering_boxes() {
            self.tree.insert(BoxEntry::new(rect(b), slot));
        }
        self.by_id.insert(f.id.clone(), slot);
        self.slots[slot] = Some((f.id.clone(), area));
    }

    /// Zones whose box meets the box `b`, by slot (a zone crossing the antimeridian may
    /// come twice: callers sort and dedup).
    fn candidates(&self, b: [f64; 4], out: &mut Vec<usize>) {
        out.extend(
            self.tree
                .locate_in_envelope_intersecting(&AABB::from_corners([b[0], b[1]], [b[2], b[3]]))
                .map(|e| e.data),
        );
    }

    fn get(&self, slot: usize) -> Option<(&str, &SpatialFilter)> {
        self.slots[slot].as_ref().map(|(id, a)| (id.as_str(), a))
    }
}

/// The fences that watch one layer.
#[derive(Default)]
struct Watch {
    /// Fences with an `area`, by slot, in an R-tree of their boxes.
    slots: Vec<Option<Arc<Fence>>>,
    free: Vec<usize>,
    tree: RTree<BoxEntry>,
    /// How many area fences report `cross` (then the segment's box is searched).
    cross: usize,
    /// Zone fences and roaming fences.
    zoned: Vec<Arc<Fence>>,
    roaming: Vec<Arc<Fence>>,
}

/// Where fence `name` is held.
enum Place {
    Area { slot: usize },
    Other,
}

/// The fences of a node and the layer copies they need; see the module documentation.
#[derive(Default)]
pub struct Engine {
    fences: HashMap<String, (Arc<Fence>, Place)>,
    watches: HashMap<String, Watch>,
    /// Roaming fences by the other layer, when it is not their own.
    roam_partners: HashMap<String, Vec<Arc<Fence>>>,
    /// Zone fences by zones layer.
    zone_users: HashMap<String, Vec<Arc<Fence>>>,
    mirrors: HashMap<String, Mirror>,
    zones: HashMap<String, Zones>,
    /// The last change seen per layer.
    seqs: HashMap<String, u64>,
}

/// A feature's state on one side of a change, as a fence sees it.
#[derive(Clone, Copy)]
struct Side<'a> {
    feature: Option<&'a Feature>,
    pos: Option<[f64; 2]>,
    /// Exists and matches the filter.
    ok: bool,
}

impl<'a> Side<'a> {
    fn of(fence: &Fence, f: Option<&'a Feature>) -> Self {
        let pos = f.and_then(|f| f.geometry.as_ref()).and_then(position);
        Side {
            feature: f,
            pos,
            ok: f.is_some_and(|f| matches(fence, f)),
        }
    }

    fn inside(&self, area: &SpatialFilter) -> bool {
        self.ok && self.pos.is_some_and(|p| point_in(area, p))
    }
}

impl Engine {
    /// An engine without fences.
    pub fn new() -> Self {
        Self::default()
    }

    /// The layers whose features the engine must be given ([`Engine::load`]) and whose
    /// changes it must see ([`Engine::apply`]).
    pub fn layers(&self) -> BTreeSet<String> {
        let mut l: BTreeSet<String> = self.mirrors.keys().cloned().collect();
        l.extend(self.zones.keys().cloned());
        l
    }

    /// Whether the engine has a copy of `layer` (it was loaded or is being followed).
    pub fn has_layer(&self, layer: &str) -> bool {
        self.mirrors.contains_key(layer) || self.zones.contains_key(layer)
    }

    /// The layers a fence needs that the engine does not hold yet.
    pub fn missing_layers(&self, fence: &Fence) -> Vec<String> {
        let s = &fence.record.spec;
        let mut need = vec![s.layer.clone()];
        if let Some(z) = &s.zones {
            need.push(z.layer.clone());
        }
        if let Some(l) = s.roam.as_ref().and_then(|r| r.layer.clone()) {
            need.push(l);
        }
        need.retain(|l| !self.has_layer(l));
        need.dedup();
        need
    }

    /// Loads a layer's features (at sequence number `seq`), before any of its changes after
    /// `seq` are applied. Replaces what was held.
    pub fn load(&mut self, layer: &str, seq: u64, features: impl IntoIterator<Item = Feature>) {
        let mut m = Mirror::default();
        let mut z = Zones::default();
        for f in features {
            z.put(&f);
            m.put(f);
        }
        self.mirrors.insert(layer.to_owned(), m);
        self.zones.insert(layer.to_owned(), z);
        self.seqs.insert(layer.to_owned(), seq);
    }

    /// The last change of `layer` the engine has seen.
    pub fn seq(&self, layer: &str) -> Option<u64> {
        self.seqs.get(layer).copied()
    }

    /// The fences, by name.
    pub fn fence(&self, name: &str) -> Option<&Arc<Fence>> {
        self.fences.get(name).map(|(f, _)| f)
    }

    /// Every fence.
    pub fn fences(&self) -> impl Iterator<Item = &Arc<Fence>> {
        self.fences.values().map(|(f, _)| f)
    }

    /// Adds a fence (replacing one of the same name). The layers it needs must be loaded
    /// first; see [`Engine::missing_layers`].
    pub fn add(&mut self, fence: Fence) {
        let name = fence.name().to_owned();
        if self.fences.contains_key(&name) {
            self.remove(&name);
        }
        let fence = Arc::new(fence);
        let s = &fence.record.spec;
        let watch = self.watches.entry(s.layer.clone()).or_default();
        let place = if let Some(area) = &fence.area {
            let slot = watch.free.pop().unwrap_or_else(|| {
                watch.slots.push(None);
                watch.slots.len() - 1
            });
            for b in area.covering_boxes() {
                watch.tree.insert(BoxEntry::new(rect(b), slot));
            }
            if fence.detect.has(Detect::Cross) {
                watch.cross += 1;
            }
            watch.slots[slot] = Some(fence.clone());
            Place::Area { slot }
        } else {
            Place::Other
        };
        if let Some(z) = &s.zones {
            watch.zoned.push(fence.clone());
            self.zone_users
                .entry(z.layer.clone())
                .or_default()
                .push(fence.clone());
        }
        if let Some(r) = &s.roam {
            watch.roaming.push(fence.clone());
            if let Some(other) = r.layer.as_ref().filter(|l| **l != s.layer) {
                self.roam_partners
                    .entry(other.clone())
                    .or_default()
                    .push(fence.clone());
            }
        }
        self.fences.insert(name, (fence, place));
    }

    /// Removes a fence. With `closing`, every feature still inside its area or a zone gets
    /// an `exit` with that reason (in id order, then zone order).
    pub fn remove(&mut self, name: &str) -> Option<Arc<Fence>> {
        let (fence, place) = self.fences.remove(name)?;
        let s = &fence.record.spec;
        if let Some(w) = self.watches.get_mut(&s.layer) {
            if let Place::Area { slot, .. } = place {
                if let Some(area) = &fence.area {
                    for b in area.covering_boxes() {
                        w.tree.remove(&BoxEntry::new(rect(b), slot));
                    }
                }
                if fence.detect.has(Detect::Cross) {
                    w.cross -= 1;
                }
                w.slots[slot] = None;
                w.free.push(slot);
            }
            w.zoned.retain(|f| !Arc::ptr_eq(f, &fence));
            w.roaming.retain(|f| !Arc::ptr_eq(f, &fence));
        }
        for v in self.zone_users.values_mut() {
            v.retain(|f| !Arc::ptr_eq(f, &fence));
        }
        for v in self.roam_partners.values_mut() {
            v.retain(|f| !Arc::ptr_eq(f, &fence));
        }
        self.zone_users.retain(|_, v| !v.is_empty());
        self.roam_partners.retain(|_, v| !v.is_empty());
        Some(fence)
    }

    /// The `exit` events (reason `fence_closed`) of every feature inside the fence's area
    /// or zones now, in id then zone order. Call before [`Engine::remove`].
    pub fn closing_events(&self, name: &str, time_ms: u64) -> Vec<FenceEvent> {
        let Some((fence, _)) = self.fences.get(name) else {
            return Vec::new();
        };
        let s = &fence.record.spec;
        let mut out = Vec::new();
        if !fence.detect.has(Detect::Exit) {
            return out;
        }
        let Some(mirror) = self.mirrors.get(&s.layer) else {
            return out;
        };
        let seq = self.seq(&s.layer).unwrap_or(0);
        let mut inside: Vec<(&Feature, [f64; 2], Option<&str>)> = Vec::new();
        if let Some(area) = &fence.area {
            for b in area.covering_boxes() {
                for (f, p) in mirror.in_box(b) {
                    if point_in(area, p) && matches(fence, f) {
                        inside.push((f, p, None));
                    }
                }
            }
        } else if let Some(zones) = s.zones.as_ref().and_then(|z| self.zones.get(&z.layer)) {
            for (f, p) in mirror.iter() {
                if !matches(fence, f) {
                    continue;
                }
                let mut c = Vec::new();
                zones.candidates([p[0], p[1], p[0], p[1]], &mut c);
                c.sort_unstable();
                c.dedup();
                for slot in c {
                    if let Some((zid, area)) = zones.get(slot)
                        && point_in(area, p)
                    {
                        inside.push((f, p, Some(zid)));
                    }
                }
            }
        }
        inside.sort_by(|a, b| (&a.0.id, a.2).cmp(&(&b.0.id, b.2)));
        inside.dedup_by(|a, b| a.0.id == b.0.id && a.2 == b.2);
        for (n, (f, p, zone)) in inside.into_iter().enumerate() {
            out.push(FenceEvent {
                fence: name.to_owned(),
                kind: Detect::Exit,
                layer: s.layer.clone(),
                id: f.id.clone(),
                version: f.version,
                cause: None,
                seq,
                n: n as u32,
                time_ms,
                position: Some(p),
                zone: zone.map(str::to_owned),
                other: None,
                distance_m: None,
                reason: Some(Reason::FenceClosed),
                key: format!("{name}:closed:{n}"),
            });
        }
        out
    }

    /// Evaluates one change against every fence and appends the events to `out`, grouped by
    /// fence (in name order), each fence's in a fixed order with `n` counting from 0. Then
    /// updates the engine's copy of the layer. Changes of a layer must come in sequence
    /// order; changes of layers the engine does not hold are ignored.
    pub fn apply(&mut self, c: &Change, out: &mut Vec<FenceEvent>) {
        let start = out.len();
        if let Some(w) = self.watches.get(&c.layer) {
            self.eval_watch(w, c, out);
        }
        if let Some(fs) = self.roam_partners.get(&c.layer) {
            for f in fs {
                // A change of the other layer: the pair seen from this side.
                if let Some(m) = self.mirrors.get(&f.record.spec.layer) {
                    roam(f, c, m, false, out);
                }
            }
        }
        if let Some(fs) = self.zone_users.get(&c.layer)
            && let Some(zones) = self.zones.get(&c.layer)
        {
            for f in fs {
                if let Some(m) = self.mirrors.get(&f.record.spec.layer) {
                    zone_edit(f, zones, m, c, out);
                }
            }
        }
        // Fixed order: by fence, then as produced; then number each fence's events.
        out[start..].sort_by(|a, b| a.fence.cmp(&b.fence));
        let mut i = start;
        while i < out.len() {
            let mut j = i;
            while j < out.len() && out[j].fence == out[i].fence {
                let n = (j - i) as u32;
                let e = &mut out[j];
                e.n = n;
                e.key = format!(
                    "{}:{}:{}:{}",
                    e.fence,
                    e.cause.as_deref().unwrap_or(&e.layer),
                    e.seq,
                    n
                );
                j += 1;
            }
            i = j;
        }
        if let Some(m) = self.mirrors.get_mut(&c.layer) {
            m.apply(c.old.as_ref(), c.new.as_ref());
        }
        if let Some(z) = self.zones.get_mut(&c.layer) {
            match &c.new {
                Some(n) => z.put(n),
                None => {
                    z.remove(&c.id);
                }
            }
        }
        self.seqs.insert(c.layer.clone(), c.seq);
    }

    /// Undoes a change in the engine's copy of its layer (no events): used to rewind a copy
    /// loaded at a later point of the log to where evaluation resumes.
    pub fn unapply(&mut self, c: &Change) {
        if let Some(m) = self.mirrors.get_mut(&c.layer) {
            m.apply(c.new.as_ref(), c.old.as_ref());
        }
        if let Some(z) = self.zones.get_mut(&c.layer) {
            match &c.old {
                Some(o) => z.put(o),
                None => {
                    z.remove(&c.id);
                }
            }
        }
        self.seqs.insert(c.layer.clone(), c.seq.saturating_sub(1));
    }

    fn eval_watch(&self, w: &Watch, c: &Change, out: &mut Vec<FenceEvent>) {
        let old_pos = c
            .old
            .as_ref()
            .and_then(|f| f.geometry.as_ref())
            .and_then(position);
        let new_pos = c
            .new
            .as_ref()
            .and_then(|f| f.geometry.as_ref())
            .and_then(position);
        let active = |f: &Fence| {
            c.seq > f.record.start_seq && f.active_from_ms.is_none_or(|t| c.time_ms >= t)
        };
        // Area fences near either position (or the segment between them).
        // A few candidates per change: a Vec sorted and deduplicated costs less than a set.
        let mut slots: Vec<usize> = Vec::new();
        let mut search = |b: [f64; 4]| {
            slots.extend(
                w.tree
                    .locate_in_envelope_intersecting(&AABB::from_corners(
                        [b[0], b[1]],
                        [b[2], b[3]],
                    ))
                    .map(|e| e.data),
            );
        };
        match (old_pos, new_pos) {
            (Some(a), Some(b)) if w.cross > 0 => search(seg_box(a, b)),
            _ => {
                for p in [old_pos, new_pos].into_iter().flatten() {
                    search([p[0], p[1], p[0], p[1]]);
                }
            }
        }
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            let Some(f) = &w.slots[slot] else { continue };
            let Some(area) = &f.area else { continue };
            if !active(f) {
                continue;
            }
            area_events(f, area, None, c, out);
        }
        for f in &w.zoned {
            if !active(f) {
                continue;
            }
            let Some(zones) = f
                .record
                .spec
                .zones
                .as_ref()
                .and_then(|z| self.zones.get(&z.layer))
            else {
                continue;
            };
            let mut cand = Vec::new();
            match (old_pos, new_pos) {
                (Some(a), Some(b)) if f.detect.has(Detect::Cross) => {
                    zones.candidates(seg_box(a, b), &mut cand)
                }
                _ => {
                    for p in [old_pos, new_pos].into_iter().flatten() {
                        zones.candidates([p[0], p[1], p[0], p[1]], &mut cand);
                    }
                }
            }
            cand.sort_unstable();
            cand.dedup();
            let mut found: Vec<(&str, &SpatialFilter)> =
                cand.into_iter().filter_map(|s| zones.get(s)).collect();
            found.sort_by(|a, b| a.0.cmp(b.0));
            for (zid, area) in found {
                area_events(f, area, Some(zid), c, out);
            }
        }
        for f in &w.roaming {
            if !active(f) {
                continue;
            }
            let other = f
                .record
                .spec
                .roam
                .as_ref()
                .and_then(|r| r.layer.as_deref())
                .unwrap_or(&f.record.spec.layer);
            if let Some(m) = self.mirrors.get(other) {
                roam(f, c, m, true, out);
            }
        }
    }
}

fn seg_box(a: [f64; 2], b: [f64; 2]) -> [f64; 4] {
    [
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[0].max(b[0]),
        a[1].max(b[1]),
    ]
}

fn event(f: &Fence, kind: Detect, c: &Change, pos: Option<[f64; 2]>) -> FenceEvent {
    FenceEvent {
        fence: f.name().to_owned(),
        kind,
        layer: c.layer.clone(),
        id: c.id.clone(),
        version: c.version,
        cause: None,
        seq: c.seq,
        n: 0,
        time_ms: c.time_ms,
        position: pos,
        zone: None,
        other: None,
        distance_m: None,
        reason: None,
        key: String::new(),
    }
}

/// Enter / exit / inside / cross of one change for one area.
fn area_events(
    f: &Fence,
    area: &SpatialFilter,
    zone: Option<&str>,
    c: &Change,
    out: &mut Vec<FenceEvent>,
) {
    let old = Side::of(f, c.old.as_ref());
    let new = Side::of(f, c.new.as_ref());
    let (was, is) = (old.inside(area), new.inside(area));
    let kind = match (was, is) {
        (false, true) => Detect::Enter,
        (true, false) => Detect::Exit,
        (true, true) => Detect::Inside,
        (false, false) => {
            let crossed = old.ok
                && new.ok
                && matches!((old.pos, new.pos), (Some(a), Some(b)) if a != b && segment_hits(area, a, b));
            if !crossed {
                return;
            }
            Detect::Cross
        }
    };
    if !f.detect.has(kind) {
        return;
    }
    let mut e = event(f, kind, c, new.pos.or(old.pos));
    e.zone = zone.map(str::to_owned);
    if kind == Detect::Exit {
        e.reason = if new.feature.is_none() {
            Some(Reason::Deleted)
        } else if !new.ok {
            Some(Reason::Filter)
        } else {
            None
        };
    }
    out.push(e);
}

/// Nearby / faraway of one change. `own` says whether the changed feature is of the
/// fence's own layer (the filter applies to it) or of the roaming layer (the filter applies
/// to the partners, which are then of the fence's layer).
fn roam(f: &Fence, c: &Change, partners: &Mirror, own: bool, out: &mut Vec<FenceEvent>) {
    let Some(r) = &f.record.spec.roam else { return };
    let same_layer = r.layer.as_ref().is_none_or(|l| *l == f.record.spec.layer);
    let filter_self = own;
    let filter_partner = !own || same_layer;
    let side = |feat: Option<&Feature>| -> Option<[f64; 2]> {
        let feat = feat?;
        if filter_self && !matches(f, feat) {
            return None;
        }
        feat.geometry.as_ref().and_then(position)
    };
    let near = |p: Option<[f64; 2]>| -> Vec<(&str, f64)> {
        let Some(p) = p else { return Vec::new() };
        let mut v: Vec<(&str, f64)> = partners
            .in_box(reach_box(p, r.distance_m))
            .filter(|(g, _)| !(same_layer && g.id == c.id))
            .filter(|(g, _)| !filter_partner || matches(f, g))
            .filter_map(|(g, q)| {
                let d = haversine_m(p, q);
                (d <= r.distance_m).then_some((g.id.as_str(), d))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    };
    let (op, np) = (side(c.old.as_ref()), side(c.new.as_ref()));
    let before = near(op);
    let after = near(np);
    let pos = c
        .new
        .as_ref()
        .or(c.old.as_ref())
        .and_then(|g| g.geometry.as_ref())
        .and_then(position);
    if f.detect.has(Detect::Nearby) {
        for (id, d) in &after {
            if before.binary_search_by(|x| x.0.cmp(id)).is_err() {
                let mut e = event(f, Detect::Nearby, c, pos);
                e.other = Some((*id).to_owned());
                e.distance_m = Some(*d);
                out.push(e);
            }
        }
    }
    if f.detect.has(Detect::Faraway) {
        for (id, _) in &before {
            if after.binary_search_by(|x| x.0.cmp(id)).is_err() {
                let mut e = event(f, Detect::Faraway, c, pos);
                e.other = Some((*id).to_owned());
                if let (Some(p), Some(q)) = (np, partners.by_id.get(*id)) {
                    e.distance_m = partners.slots[*q]
                        .as_ref()
                        .and_then(|(_, qp)| qp.map(|qp| haversine_m(p, qp)));
                }
                e.reason = if c.new.is_none() {
                    Some(Reason::Deleted)
                } else if np.is_none() && c.new.as_ref().is_some_and(|n| n.geometry.is_some()) {
                    Some(Reason::Filter)
                } else {
                    None
                };
                out.push(e);
            }
        }
    }
}

/// A zone was created, edited or deleted: features of the fence's layer that are inside the
/// new polygon and not the old one `enter`, the reverse `exit` (reason `zone_changed`, or
/// `zone_removed` when the zone is gone).
fn zone_edit(f: &Fence, zones: &Zones, m: &Mirror, c: &Change, out: &mut Vec<FenceEvent>) {
    let old = zones
        .by_id
        .get(&c.id)
        .and_then(|s| zones.get(*s))
        .map(|(_, a)| a.clone());
    let new = c.new.as_ref().and_then(Zones::area_of);
    if old.is_none() && new.is_none() {
        return;
    }
    if c.old.is_none() {
        // A new zone: features already inside enter it only when they next move, as for a
        // new fence (whose start is the change log's present).
        return;
    }
    let removed = new.is_none();
    let mut ids: BTreeSet<(&str, [u64; 2])> = BTreeSet::new();
    let mut candidates = Vec::new();
    for a in old.iter().chain(new.iter()) {
        for b in a.covering_boxes() {
            for (feat, p) in m.in_box(b) {
                if ids.insert((feat.id.as_str(), [p[0].to_bits(), p[1].to_bits()])) {
                    candidates.push((feat, p));
                }
            }
        }
    }
    candidates.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    for (feat, p) in candidates {
        if !matches(f, feat) {
            continue;
        }
        let was = old.as_ref().is_some_and(|a| point_in(a, p));
        let is = new.as_ref().is_some_and(|a| point_in(a, p));
        let kind = match (was, is) {
            (true, false) => Detect::Exit,
            (false, true) => Detect::Enter,
            _ => continue,
        };
        if !f.detect.has(kind) {
            continue;
        }
        out.push(FenceEvent {
            fence: f.name().to_owned(),
            kind,
            layer: f.record.spec.layer.clone(),
            id: feat.id.clone(),
            version: feat.version,
            cause: Some(c.layer.clone()),
            seq: c.seq,
            n: 0,
            time_ms: c.time_ms,
            position: Some(p),
            zone: Some(c.id.clone()),
            other: None,
            distance_m: None,
            reason: Some(if removed {
                Reason::ZoneRemoved
            } else {
                Reason::ZoneChanged
            }),
            key: String::new(),
        });
    }
}
