//! Features kept between renders, with their drawings.
//!
//! Re-rendering a tile after an edit draws every feature under it again, though usually only
//! one of them changed: projecting, clipping and simplifying the others gives the command
//! streams of the last render once more. A [`KeptFeature`] remembers what it drew per tile
//! and options, so a render of kept features draws only the ones it has not drawn in that
//! tile yet. Tags are still written per render: their numbers depend on the tile's tables.
//!
//! Bounded: a feature keeps at most as many bytes of drawings as it holds itself
//! ([`TileFeature::approx_bytes`]), the oldest dropped first, so a cache that charges a kept
//! feature [`KeptFeature::approx_bytes`] (twice the feature) holds what it was charged.
//!
//! An edit that leaves the geometry as it was (a property changed) keeps the drawings: the
//! next state shares them ([`KeptFeature::successor`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Drawing, MvtOptions, TileFeature};
use crate::TileId;

/// What a drawing depends on besides the feature: the tile and the options that shape the
/// geometry (`max_features` only decides which features are drawn, not how).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct DrawKey {
    tile: TileId,
    extent: u32,
    buffer: u32,
    simplify: bool,
}

impl DrawKey {
    pub(super) fn new(tile: TileId, opts: &MvtOptions) -> DrawKey {
        DrawKey {
            tile,
            extent: opts.extent,
            buffer: opts.buffer,
            simplify: opts.simplify,
        }
    }
}

/// What a kept drawing costs besides its command words: the map slot, the queue slot, the
/// `Arc` and the vectors' headers.
const DRAWING_OVERHEAD: usize = 128;

/// A feature and the drawings made of it, for encoders that render the same features again
/// ([`crate::encode_kept`]). Immutable like the feature state it holds: a changed feature is
/// a new `KeptFeature`, with no drawings yet.
pub struct KeptFeature {
    feature: TileFeature,
    /// The feature's own estimated size.
    bytes: usize,
    /// Shared by the states of a feature that have the same geometry.
    drawings: Arc<Mutex<Drawings>>,
}

struct Drawings {
    /// Bytes of drawings kept at most: the estimated size of the feature first drawn.
    budget: usize,
    by_key: HashMap<DrawKey, Arc<Drawing>>,
    /// Keys oldest first, for eviction.
    order: VecDeque<DrawKey>,
    bytes: usize,
}

impl KeptFeature {
    /// Keeps `feature`, with no drawings yet.
    pub fn new(feature: TileFeature) -> KeptFeature {
        let bytes = feature.approx_bytes();
        KeptFeature {
            feature,
            bytes,
            drawings: Arc::new(Mutex::new(Drawings {
                budget: bytes,
                by_key: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            })),
        }
    }

    /// Keeps `next`, a later state of the same feature: with this state's drawings when the
    /// geometry is the same (they are its drawings too), with none otherwise.
    pub fn successor(&self, next: TileFeature) -> KeptFeature {
        if next.geometry != self.feature.geometry {
            return KeptFeature::new(next);
        }
        KeptFeature {
            bytes: next.approx_bytes(),
            feature: next,
            drawings: self.drawings.clone(),
        }
    }

    /// The feature.
    pub fn feature(&self) -> &TileFeature {
        &self.feature
    }

    /// About how many bytes this may hold in memory: the feature, and as much again for its
    /// drawings.
    pub fn approx_bytes(&self) -> usize {
        2 * self.bytes
    }

    /// Bytes of drawings kept now: at most half of [`KeptFeature::approx_bytes`] of the
    /// first state that drew them.
    pub fn drawing_bytes(&self) -> usize {
        self.drawings.lock().bytes
    }

    /// The drawing for `key`: the kept one, or `draw()`'s, kept if it fits the budget.
    pub(super) fn drawing(&self, key: DrawKey, draw: impl FnOnce() -> Drawing) -> Arc<Drawing> {
        if let Some(d) = self.drawings.lock().by_key.get(&key) {
            return d.clone();
        }
        // Drawn outside the lock: two renders of different tiles draw at once.
        let d = Arc::new(draw());
        let cost = DRAWING_OVERHEAD + d.approx_bytes();
        let mut g = self.drawings.lock();
        if cost > g.budget {
            return d;
        }
        if let Some(kept) = g.by_key.get(&key) {
            // Another render of the same tile drew it meanwhile: the same drawing.
            return kept.clone();
        }
        while g.bytes + cost > g.budget {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(dropped) = g.by_key.remove(&old) {
                g.bytes -= DRAWING_OVERHEAD + dropped.approx_bytes();
            }
        }
        g.by_key.insert(key, d.clone());
        g.order.push_back(key);
        g.bytes += cost;
        d
    }
}

/// Equal when the features are: the drawings follow from the feature.
impl PartialEq for KeptFeature {
    fn eq(&self, other: &KeptFeature) -> bool {
        self.feature == other.feature
    }
}

impl std::fmt::Debug for KeptFeature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptFeature")
            .field("feature", &self.feature)
            .field("drawing_bytes", &self.drawing_bytes())
            .finish()
    }
}
