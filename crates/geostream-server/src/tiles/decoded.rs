//! Features as the tile encoder takes them, kept between renders.
//!
//! Re-rendering a tile after an edit reads every feature under it again, and nearly all of
//! them have not changed. Parsing their stored GeoJSON was about a third of the server's CPU
//! in the open-loop tile benchmark; with this cache a render decodes only the features whose
//! version it has not seen ([`geostream_store::Store::query_known`]).
//!
//! Entries are keyed by layer and feature id and hold one state, named by the layer's creation
//! time and the feature's version (a layer deleted and created again counts versions afresh):
//! a later state read from the store replaces the entry, and a render is only ever given the
//! state the store returned for it. Bounded by a count of features: two generations, the older dropped whole
//! when the newer fills, and an entry read from the older is moved to the newer (so what
//! renders keep touching stays).

use std::collections::HashMap;
use std::sync::Arc;

use geostream_tiles::TileFeature;
use parking_lot::Mutex;

/// A decoded feature: `None` for one without a geometry the encoder can draw (still worth
/// remembering, so it is not parsed again to find that out).
pub(crate) type Decoded = Option<Arc<TileFeature>>;

/// Which state of a feature: (the layer's creation time in ms, the feature's version). Later
/// states compare greater.
pub(crate) type State = (u64, u64);

/// Feature id → (state, decoded feature).
type Generation = HashMap<String, (State, Decoded)>;

#[derive(Default)]
struct Generations {
    newer: HashMap<Arc<str>, Generation>,
    older: HashMap<Arc<str>, Generation>,
    newer_len: usize,
}

/// The cache, shared by every render on the node.
pub(crate) struct DecodedFeatures {
    inner: Mutex<Generations>,
    /// Entries in the newer generation before it becomes the older one.
    generation: usize,
}

impl DecodedFeatures {
    /// A cache holding at most about `capacity` features (between `capacity / 2` and
    /// `capacity`); 0 keeps nothing.
    pub(crate) fn new(capacity: usize) -> DecodedFeatures {
        DecodedFeatures {
            inner: Mutex::new(Generations::default()),
            generation: capacity / 2,
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
        if let Some((v, d)) = g.newer.get(layer).and_then(|l| l.get(id))
            && *v == state
        {
            return Some(d.clone());
        }
        let layer_key = g.older.get_key_value(layer)?.0.clone();
        let entry = g.older.get_mut(layer)?.remove(id)?;
        if entry.0 != state {
            return None;
        }
        let d = entry.1.clone();
        g.put(layer_key, id.to_owned(), entry, self.generation);
        Some(d)
    }

    /// Keeps `decoded` as feature `id` of `layer` in `state`, unless a later state is already
    /// held (two renders may race; the cache only moves forward).
    pub(crate) fn insert(&self, layer: &Arc<str>, state: State, id: &str, decoded: Decoded) {
        if self.generation == 0 {
            return;
        }
        let mut g = self.inner.lock();
        if let Some((v, _)) = g.newer.get(&**layer).and_then(|l| l.get(id))
            && *v >= state
        {
            return;
        }
        if let Some(older) = g.older.get_mut(&**layer) {
            older.remove(id);
        }
        g.put(
            layer.clone(),
            id.to_owned(),
            (state, decoded),
            self.generation,
        );
    }

    /// Forgets a layer (deleted).
    pub(crate) fn forget_layer(&self, layer: &str) {
        let mut g = self.inner.lock();
        if let Some(l) = g.newer.remove(layer) {
            g.newer_len -= l.len();
        }
        g.older.remove(layer);
    }

    /// Features held, both generations.
    pub(crate) fn len(&self) -> usize {
        let g = self.inner.lock();
        g.newer_len + g.older.values().map(HashMap::len).sum::<usize>()
    }
}

impl Generations {
    fn put(&mut self, layer: Arc<str>, id: String, entry: (State, Decoded), generation: usize) {
        if self.newer_len >= generation {
            self.older = std::mem::take(&mut self.newer);
            self.newer_len = 0;
        }
        if self
            .newer
            .entry(layer)
            .or_default()
            .insert(id, entry)
            .is_none()
        {
            self.newer_len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geostream_tiles::FeatureId;

    fn feature(n: u64) -> Decoded {
        Some(Arc::new(TileFeature {
            id: Some(FeatureId::Int(n)),
            geometry: geo::Geometry::Point(geo::Point::new(n as f64, 0.0)),
            properties: Default::default(),
        }))
    }

    #[test]
    fn holds_one_state_and_only_moves_forward() {
        let c = DecodedFeatures::new(100);
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
    fn bounded_and_keeps_what_is_read() {
        let c = DecodedFeatures::new(10);
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
        let none = DecodedFeatures::new(0);
        none.insert(&layer, (1, 1), "a", feature(1));
        assert_eq!(none.get("l", 1, "a", 1), None, "capacity 0 keeps nothing");
    }
}
