//! A push prepared once for every subscriber it goes to.
//!
//! The hub wraps each event in one `Arc<Prepared>` and hands the same `Arc` to every matching
//! outbox. The frame for an encoding is built the first time a writer needs it and then
//! shared: the work per subscriber is one reference count and one splice of its
//! subscription id.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use geostream_core::api::{
    self, ClientInfo, CursorPush, FeatureKind, FeaturePush, LockPush, MessagePush, PresencePush,
    TileBytes, TilePush, TilePushKind,
};
use geostream_core::codec::{Encoding, PushFrame, encode_push};
use geostream_core::feature::Change;
use geostream_core::payload::Payload;

/// What a push says.
#[derive(Clone, Debug)]
pub enum PushEvent {
    /// A channel message.
    Message {
        /// Channel.
        channel: Arc<str>,
        /// Offset in the channel's stream.
        offset: u64,
        /// Data as published.
        data: Payload,
    },
    /// A feature entered, changed in, left or was deleted from a subscription's view.
    Feature {
        /// The change that caused it.
        change: Arc<Change>,
        /// What it means for the subscriber.
        kind: FeatureKind,
        /// Carry the whole feature, not only what changed (enters always do; a coalesced
        /// update does, because the client missed intermediate changes).
        full: bool,
    },
    /// A feature of a subscribed layer was locked or unlocked.
    Lock {
        /// The lock event.
        lock: LockPush,
    },
    /// Someone joined (`join == true`) or left a channel.
    Presence {
        /// Channel.
        channel: Arc<str>,
        /// Joined or left.
        join: bool,
        /// Who.
        client: ClientInfo,
    },
    /// Someone on a layer moved their cursor.
    Cursor {
        /// The cursor.
        cursor: CursorPush,
    },
    /// A tile changed: the same push for every subscriber that holds the same base version,
    /// so its bytes are framed once per encoding and never copied per subscriber.
    Tile {
        /// The layer.
        layer: Arc<str>,
        /// `"z/x/y"`.
        tile: Arc<str>,
        /// The tile's version after this push.
        version: u64,
        /// Delta, full tile or notice.
        kind: TilePushKind,
        /// The version the delta applies to.
        base: Option<u64>,
        /// The version's HTTP ETag.
        etag: Arc<str>,
        /// Delta or tile bytes (none for a notice).
        data: Option<Bytes>,
    },
}

impl PushEvent {
    /// The push method name.
    pub fn method(&self) -> &'static str {
        match self {
            PushEvent::Message { .. } => api::push::MESSAGE,
            PushEvent::Feature { .. } => api::push::FEATURE,
            PushEvent::Lock { .. } => api::push::LOCK,
            PushEvent::Presence { join: true, .. } => api::push::JOIN,
            PushEvent::Presence { join: false, .. } => api::push::LEAVE,
            PushEvent::Cursor { .. } => api::push::CURSOR,
            PushEvent::Tile { .. } => api::push::TILE,
        }
    }

    fn encode(&self, enc: Encoding) -> PushFrame {
        match self {
            PushEvent::Message {
                channel,
                offset,
                data,
            } => encode_push(
                enc,
                self.method(),
                &MessagePush {
                    channel: Cow::Borrowed(channel),
                    offset: *offset,
                    data: Cow::Borrowed(data),
                },
                Some(("data", data)),
            ),
            PushEvent::Presence {
                channel, client, ..
            } => encode_push(
                enc,
                self.method(),
                &PresencePush {
                    channel: Cow::Borrowed(channel),
                    client: client.clone(),
                },
                None,
            ),
            PushEvent::Feature { change, kind, full } => encode_push(
                enc,
                self.method(),
                &FeaturePush::new(change, *kind, *full),
                None,
            ),
            PushEvent::Lock { lock } => encode_push(enc, self.method(), lock, None),
            PushEvent::Cursor { cursor } => encode_push(enc, self.method(), cursor, None),
            PushEvent::Tile {
                layer,
                tile,
                version,
                kind,
                base,
                etag,
                data,
            } => encode_push(
                enc,
                self.method(),
                &TilePush {
                    layer: Cow::Borrowed(layer),
                    tile: Cow::Borrowed(tile),
                    version: *version,
                    kind: *kind,
                    base: *base,
                    etag: Cow::Borrowed(etag),
                    data: data.as_deref().map(|d| TileBytes(Cow::Borrowed(d))),
                },
                None,
            ),
        }
    }

    fn cost(&self) -> usize {
        match self {
            PushEvent::Message { channel, data, .. } => 48 + channel.len() + data.len(),
            PushEvent::Presence { channel, .. } => 128 + channel.len(),
            PushEvent::Cursor { cursor } => {
                160 + cursor.layer.len() + cursor.editing.iter().map(|e| 8 + e.len()).sum::<usize>()
            }
            PushEvent::Lock { lock } => 128 + lock.lock.layer.len() + lock.lock.id.len(),
            PushEvent::Tile {
                layer, tile, data, ..
            } => 128 + layer.len() + tile.len() + data.as_ref().map_or(0, Bytes::len),
            PushEvent::Feature { change, kind, full } => {
                let carries =
                    matches!(kind, FeatureKind::Enter) || *full || change.geometry_changed;
                let geometry = if carries {
                    change
                        .new
                        .as_ref()
                        .and_then(|f| f.geometry.as_ref())
                        .map_or(0, geometry_cost)
                } else {
                    0
                };
                let props = change.new.as_ref().map_or(0, |f| {
                    24 * if *full || matches!(kind, FeatureKind::Enter) {
                        f.properties.len()
                    } else {
                        change.changed.len()
                    }
                });
                96 + change.layer.len() + change.id.len() + geometry + props
            }
        }
    }
}

/// Approximate encoded size of a geometry: about 20 bytes per position.
fn geometry_cost(g: &geojson::Geometry) -> usize {
    use geojson::Value as G;
    24 + 20
        * match &g.value {
            G::Point(_) => 1,
            G::MultiPoint(p) | G::LineString(p) => p.len(),
            G::MultiLineString(l) | G::Polygon(l) => l.iter().map(Vec::len).sum(),
            G::MultiPolygon(m) => m.iter().flatten().map(Vec::len).sum(),
            G::GeometryCollection(gs) => return gs.iter().map(geometry_cost).sum(),
        }
}

/// A push shared by all its subscribers, encoded lazily once per encoding.
pub struct Prepared {
    event: PushEvent,
    frames: [OnceLock<PushFrame>; 3],
    cost: usize,
    created: Instant,
}

impl Prepared {
    /// Prepares an event.
    pub fn new(event: PushEvent) -> Arc<Self> {
        let cost = event.cost();
        Arc::new(Prepared {
            event,
            frames: Default::default(),
            cost,
            created: Instant::now(),
        })
    }

    /// The event.
    pub fn event(&self) -> &PushEvent {
        &self.event
    }

    /// The frame in `enc`, built on first use.
    pub fn frame(&self, enc: Encoding) -> &PushFrame {
        self.frames[enc.index()].get_or_init(|| self.event.encode(enc))
    }

    /// When the push was prepared on this node (for delivery latency).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Where the push sorts among state pushes waiting aside: its change's sequence number.
    pub fn order(&self) -> u64 {
        match &self.event {
            PushEvent::Feature { change, .. } => change.seq,
            PushEvent::Message { offset, .. } => *offset,
            PushEvent::Presence { .. }
            | PushEvent::Lock { .. }
            | PushEvent::Cursor { .. }
            | PushEvent::Tile { .. } => 0,
        }
    }

    /// Approximate size in bytes, for outbox budgets (known before any encoding).
    pub fn cost(&self) -> usize {
        self.cost
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

/// Merges a waiting state push with a newer one for the same subscription and feature, so the
/// client ends in the newer state as if it had received both. `None` means the two cancel
/// out (the client never learns of a feature that entered and left while it waited).
pub fn coalesce(older: &Arc<Prepared>, newer: &Arc<Prepared>) -> Option<Arc<Prepared>> {
    use FeatureKind::{Delete, Enter, Exit, Update};
    let (
        PushEvent::Feature { kind: old_kind, .. },
        PushEvent::Feature {
            change,
            kind: new_kind,
            full: new_full,
        },
    ) = (older.event(), newer.event())
    else {
        return Some(newer.clone());
    };
    let (kind, full) = match (old_kind, new_kind) {
        // The client does not have it yet: it gets the latest state whole, or nothing.
        (Enter, Enter | Update) => (Enter, true),
        (Enter, Exit | Delete) => return None,
        // The client has an older state: two partial updates make one whole one.
        (Update, Enter | Update) => (Update, true),
        (Update, Exit) => (Exit, false),
        (Update, Delete) => (Delete, false),
        // The client still has the feature (the removal never reached it): refresh it.
        (Exit | Delete, Enter | Update) => (Update, true),
        (Exit, Exit) => (Exit, false),
        (Exit | Delete, Delete) | (Delete, Exit) => (Delete, false),
    };
    if kind == *new_kind && (full == *new_full || kind != Update) {
        Some(newer.clone())
    } else {
        Some(Prepared::new(PushEvent::Feature {
            change: change.clone(),
            kind,
            full,
        }))
    }
}
