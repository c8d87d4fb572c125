//! Features as the tile encoder takes them, kept between renders.
//!
//! Re-rendering a tile after an edit reads every feature under it again, and nearly all of
//! them have not changed. Parsing their stored GeoJSON was about a third of the server's CPU
//! in the open-loop tile benchmark; with this cache a render decodes only the features whose
//! version it has not seen ([`geostream_store::Store::query_known`]). Each feature also keeps
//! what it looked like in the tiles it was drawn in ([`KeptFeature`]): projecting, clipping
//! and simplifying the unchanged features was most of what was left of a re-render.
//!
//! Entries are keyed by layer and feature id and hold one state, named by the layer's creation
//! time and the feature's version (a layer deleted and created again counts versions afresh):
//! a later state read from the store, or made by a change from the state before it
//! ([`DecodedFeatures::advance`]), replaces the entry, and a render is only ever given the
//! state the store returned for it. Bounded in bytes (each entry's estimate, from its vertices
//! and properties, counted twice: once for the feature, once for the drawings it may keep; a
//! layer of large polygons must not hold what a count of small points would allow): two
//! generations, the older dropped whole when the newer fills half the budget, and an entry
//! read from the older is moved to the newer (so what renders keep touching stays).

use std::collections::HashMap;
use std::sync::Arc;

use geostream_tiles::KeptFeature;
use parking_lot::Mutex;

/// A decoded feature: `None` for one without a geometry the encoder can draw (still worth
/// remembering, so it is not parsed again to find that out).
pub(crate) type Decoded = Option<Arc<KeptFeature>>;

/// Which state of a feature: (the layer's creation time in ms, the feature's version). Later
/// states compare greater.
pub(crate) type State = (u64, u64);

/// What the cache holds of a feature.
struct Entry {
    state: State,
    decoded: Decoded,
    /// Its estimated size, charged to the generation holding it.
    bytes: usize,
}

/// Feature id → entry.
type Generation = HashMap<String, Entry>;

#[derive(Default)]
struct Generations {
    newer: HashMap<Arc<str>, Generation>,
    older: HashMap<Arc<str>, Generation>,
    newer_bytes: usize,
    older_bytes: usize,
}

/// The cache, shared by every render on the node.
pub(crate) struct DecodedFeatures {
    inner: Mutex<Generations>,
    /// Bytes in the newer generation before it becomes the older one.
    generation: usize,
}

/// What an entry costs besides the feature: its id, the map slot, the `Arc`.
const ENTRY_OVERHEAD: usize = 96;

fn entry_bytes(id: &str, decoded: &Decoded) -> usize {
    ENTRY_OVERHEAD + id.len() + decoded.as_ref().map_or(0, |f| f.approx_bytes())
}

impl DecodedFeatures {
    /// A cache holding at most about `budget` bytes of features (between half and all of
    /// it once full); 0 keeps nothing.
    pub(crate) fn new(budget: usize) -> DecodedFeatures {
        DecodedFeatures {
            inner: Mutex::new(Generations::default()),
            generation: budget / 2,
        }
    }

    /// The decoded feature `id` of `layer` (created at `created_ms`) at `version`, if held.
    pub(crate) fn get(
        &self,
        layer: &str,
        created_ms: u64,
        id: &str,
        version: u64,
    ) -> Option<Decoded> {
        let state = (created_ms, version);
        if self.generation == 0 {
            return None;
        }
        let mut g = self.inner.lock();
        if let Some(e) = g.newer.get(layer).and_then(|l| l.get(id))
            && e.state == state
        {
            return Some(e.decoded.clone());
        }
        let layer_key = g.older.get_key_value(layer)?.0.clone();
        let entry = g.older.get_mut(layer)?.remove(id)?;
        g.older_bytes -= entry.bytes;
        if entry.state != state {
            return None;
        }
        let d = entry.decoded.clone();
        g.put(layer_key, id.to_owned(), entry, self.generation);
        Some(d)
    }

    /// Keeps `decoded` as feature `id` of `layer` in `state`, unless a later state is already
    /// held (two renders may race; the cache only moves forward).
    pub(crate) fn insert(&self, layer: &Arc<str>, state: State, id: &str, decoded: Decoded) {
        if self.generation == 0 {
            return;
        }
        let bytes = entry_bytes(id, &decoded);
        if bytes > self.generation {
            return; // larger than half the budget: never worth a generation
        }
        let mut g = self.inner.lock();
        if let Some(e) = g.newer.get(&**layer).and_then(|l| l.get(id))
            && e.state >= state
        {
            return;
        }
        if let Some(old) = g.older.get_mut(&**layer).and_then(|l| l.remove(id)) {
            g.older_bytes -= old.bytes;
        }
        let entry = Entry {
            state,
            decoded,
            bytes,
        };
        g.put(layer.clone(), id.to_owned(), entry, self.generation);
    }

    /// A change made feature `id` of `layer` `version`: when the state just before it is
    /// held, `next` makes the new state from it (the change carries the feature already
    /// parsed), so the render after an edit parses nothing. Nothing is made when the state
    /// before is not held: a render decodes the feature if it needs it.
    ///
    /// The new state is named with the held state's layer creation time. A change of a layer
    /// created again after that state was held cannot be mistaken for it: a deleted layer's
    /// entries are forgotten, and a render asks with the creation time the store gives it.
    pub(crate) fn advance(
        &self,
        layer: &Arc<str>,
        id: &str,
        version: u64,
        next: impl FnOnce(&Decoded) -> Decoded,
    ) {
        if self.generation == 0 || version == 0 {
            return;
        }
        let before = {
            let g = self.inner.lock();
            let held = |generation: &HashMap<Arc<str>, Generation>| {
                generation
                    .get(&**layer)
                    .and_then(|l| l.get(id))
                    .filter(|e| e.state.1 == version - 1)
                    .map(|e| (e.state.0, e.decoded.clone()))
            };
            held(&g.newer).or_else(|| held(&g.older))
        };
        // Made outside the lock: converting a large geometry must not hold up renders.
        if let Some((created, decoded)) = before {
            self.insert(layer, (created, version), id, next(&decoded));
        }
    }

    /// Forgets a layer (deleted).
    pub(crate) fn forget_layer(&self, layer: &str) {
        let mut g = self.inner.lock();
        if let Some(l) = g.newer.remove(layer) {
            g.newer_bytes -= l.values().map(|e| e.bytes).sum::<usize>();
        }
        if let Some(l) = g.older.remove(layer) {
            g.older_bytes -= l.values().map(|e| e.bytes).sum::<usize>();
        }
    }

    /// Features held, both generations.
    pub(crate) fn len(&self) -> usize {
        let g = self.inner.lock();
        g.newer
            .values()
            .chain(g.older.values())
            .map(HashMap::len)
            .sum()
    }

    /// Estimated bytes held, both generations.
    pub(crate) fn bytes(&self) -> usize {
        let g = self.inner.lock();
        g.newer_bytes + g.older_bytes
    }
}

impl Generations {
    fn put(&mut self, layer: Arc<str>, id: String, entry: Entry, generation: usize) {
        if self.newer_bytes + entry.bytes > generation {
            self.older = std::mem::take(&mut self.newer);
            self.older_bytes = std::mem::take(&mut self.newer_bytes);
        }
        self.newer_bytes += entry.bytes;
        if let Some(old) = self.newer.entry(layer).or_default().insert(id, entry) {
            self.newer_bytes -= old.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geostream_tiles::{FeatureId, TileFeature};

    fn feature(n: u64) -> Decoded {
        Some(Arc::new(KeptFeature::new(TileFeature {
            id: Some(FeatureId::Int(n)),
            geometry: geo::Geometry::Point(geo::Point::new(n as f64, 0.0)),
            properties: Default::default(),
        })))
    }

    #[test]
    fn holds_one_state_and_only_moves_forward() {
        let c = DecodedFeatures::new(1 << 20);
        let layer: Arc<str> = "roads".into();
        c.insert(&layer, (7, 2), "a", feature(2));
        assert_eq!(c.get("roads", 7, "a", 2), Some(feature(2)));
        assert_eq!(
            c.get("roads", 7, "a", 1),
            None,
            "another version is not served"
        );
        assert_eq!(c.get("roads", 8, "a", 2), None, "nor a layer created again");
        assert_eq!(c.get("rivers", 7, "a", 2), None, "nor another layer's");
        c.insert(&layer, (7, 1), "a", feature(1));
        assert_eq!(
            c.get("roads", 7, "a", 2),
            Some(feature(2)),
            "an older render lost"
        );
        c.insert(&layer, (7, 3), "a", None);
        assert_eq!(
            c.get("roads", 7, "a", 3),
            Some(None),
            "no drawable geometry, held"
        );
        assert_eq!(c.get("roads", 7, "a", 2), None);
        c.insert(&layer, (8, 1), "a", feature(81));
        assert_eq!(
            c.get("roads", 8, "a", 1),
            Some(feature(81)),
            "the new layer's"
        );
        c.forget_layer("roads");
        assert_eq!(c.get("roads", 8, "a", 1), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_change_moves_a_held_feature_on() {
        let c = DecodedFeatures::new(1 << 20);
        let layer: Arc<str> = "roads".into();
        c.insert(&layer, (7, 2), "a", feature(2));
        // The state before (version 2) is held: version 3 is made from it, with its layer's
        // creation time.
        c.advance(&layer, "a", 3, |before| {
            assert_eq!(before, &feature(2));
            feature(3)
        });
        assert_eq!(c.get("roads", 7, "a", 3), Some(feature(3)));
        assert_eq!(c.get("roads", 7, "a", 2), None, "one state per feature");
        // A change that skips a version, or of a feature not held, makes nothing.
        c.advance(&layer, "a", 5, |_| panic!("version 4 is not held"));
        c.advance(&layer, "b", 1, |_| panic!("b is not held"));
        assert_eq!(c.get("roads", 7, "a", 3), Some(feature(3)));
        assert_eq!(c.get("roads", 7, "b", 1), None);
        // Nor after the layer is forgotten (deleted).
        c.forget_layer("roads");
        c.advance(&layer, "a", 4, |_| panic!("forgotten"));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded_and_keeps_what_is_read() {
        // Room for ten points with one-letter ids (two generations of five).
        let one = entry_bytes("0", &feature(0));
        let c = DecodedFeatures::new(10 * one);
        let layer: Arc<str> = "l".into();
        for n in 0..5 {
            c.insert(&layer, (1, 1), &n.to_string(), feature(n));
        }
        // The sixth starts a new generation; 0..5 are older, and reading 0 moves it on.
        c.insert(&layer, (1, 1), "5", feature(5));
        assert_eq!(c.get("l", 1, "0", 1), Some(feature(0)));
        for n in 6..10 {
            c.insert(&layer, (1, 1), &n.to_string(), feature(n));
        }
        // 5, 0, 6, 7, 8 fill the newer generation; 9 starts another, dropping 1..4.
        c.insert(&layer, (1, 1), "10", feature(10));
        assert_eq!(
            c.get("l", 1, "0", 1),
            Some(feature(0)),
            "read recently, kept"
        );
        assert_eq!(c.get("l", 1, "1", 1), None, "not read, dropped");
        assert!(c.len() <= 10, "{} held", c.len());
        assert!(c.bytes() <= 10 * one, "{} bytes held", c.bytes());
        let none = DecodedFeatures::new(0);
        none.insert(&layer, (1, 1), "a", feature(1));
        assert_eq!(none.get("l", 1, "a", 1), None, "capacity 0 keeps nothing");
    }

    #[test]
    fn large_features_count_by_their_size() {
        let one = entry_bytes("p", &feature(0));
        let c = DecodedFeatures::new(40 * one);
        let layer: Arc<str> = "l".into();
        // A ring of 1,000 vertices weighs far more than a point: 16 bytes a vertex.
        let ring: Vec<(f64, f64)> = (0..1000)
            .map(|i| {
                let a = i as f64 / 1000.0 * std::f64::consts::TAU;
                (a.cos(), a.sin())
            })
            .collect();
        let big = Some(Arc::new(KeptFeature::new(TileFeature {
            id: None,
            geometry: geo::Geometry::Polygon(geo::Polygon::new(ring.into(), vec![])),
            properties: Default::default(),
        })));
        assert!(entry_bytes("big", &big) > 16_000);
        c.insert(&layer, (1, 1), "big", big);
        assert_eq!(
            c.get("l", 1, "big", 1),
            None,
            "larger than a generation: not kept"
        );
        for n in 0..30 {
            c.insert(&layer, (1, 1), &format!("p{n}"), feature(n));
        }
        assert!(c.bytes() <= 40 * one + 30, "{} bytes held", c.bytes());
        assert!(c.len() >= 19, "points fill the budget: {} held", c.len());
        c.forget_layer("l");
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }
}
