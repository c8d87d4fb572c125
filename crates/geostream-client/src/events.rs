//! What the streams yield.

use std::collections::{BTreeMap, HashMap};

use geostream_core::api::{ClientInfo, EditResult, LockInfo, Position};
use geostream_core::feature::{Feature, Geometry};
use serde_json::{Map, Value};

use crate::edit::Edit;
use crate::error::ClientError;

/// One event of a layer subscription ([`crate::FeatureStream`]).
///
/// A subscription starts with one or more `Snapshot` pages (the last has `last: true`), then
/// live changes. After a reconnect the stream continues where it stopped, with nothing missed
/// or repeated; when the server no longer has the missed changes it yields `Resync` and a
/// fresh snapshot follows, which replaces everything the application held.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FeatureEvent {
    /// A page of the features matching the filter, as of `seq`.
    Snapshot {
        /// The layer sequence number the snapshot is as of.
        seq: u64,
        /// The features of this page.
        features: Vec<Feature>,
        /// Whether this is the last page.
        last: bool,
    },
    /// A feature now matches (created, moved into view, started matching the filter).
    Enter {
        /// The change's sequence number.
        seq: u64,
        /// The whole feature.
        feature: Box<Feature>,
    },
    /// A feature in view changed.
    Update {
        /// The change's sequence number.
        seq: u64,
        /// The feature id.
        id: String,
        /// Its version after the change.
        version: u64,
        /// The whole feature, when the server sent it (after merged changes).
        feature: Option<Box<Feature>>,
        /// Otherwise the changed properties, as a JSON Merge Patch (`null` = removed).
        properties: Option<Map<String, Value>>,
        /// Otherwise the new geometry, when it changed (`Some(None)`: removed).
        geometry: Option<Option<Geometry>>,
    },
    /// A feature no longer matches (moved out of view, stopped matching the filter).
    Exit {
        /// The change's sequence number.
        seq: u64,
        /// The feature id.
        id: String,
        /// Its version after the change.
        version: u64,
    },
    /// A feature in view was deleted.
    Delete {
        /// The change's sequence number.
        seq: u64,
        /// The feature id.
        id: String,
        /// Its version after the delete.
        version: u64,
    },
    /// The stream cannot continue from where it was (the missed changes are gone, or a
    /// snapshot was cut by a disconnect): drop everything held; a fresh snapshot follows.
    Resync {
        /// The sequence number the fresh snapshot will be as of.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A feature of the layer was locked or unlocked (by anyone).
    Lock {
        /// The lock (its last state, for an unlock).
        lock: LockInfo,
        /// Locked (true) or released (false).
        locked: bool,
    },
    /// The server ended the subscription (for example the layer was deleted). Nothing follows.
    Unsubscribed {
        /// Why.
        reason: String,
    },
}

impl FeatureEvent {
    /// The layer sequence number of the event, if it has one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            FeatureEvent::Snapshot { seq, .. }
            | FeatureEvent::Enter { seq, .. }
            | FeatureEvent::Update { seq, .. }
            | FeatureEvent::Exit { seq, .. }
            | FeatureEvent::Delete { seq, .. }
            | FeatureEvent::Resync { seq, .. } => Some(*seq),
            FeatureEvent::Lock { .. } | FeatureEvent::Unsubscribed { .. } => None,
        }
    }
}

/// One event of a channel subscription ([`crate::ChannelStream`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// A message.
    Message {
        /// Its offset in the channel.
        offset: u64,
        /// What was published.
        data: Value,
    },
    /// Someone subscribed to the channel (subscriptions with presence).
    Join(ClientInfo),
    /// Someone left the channel (subscriptions with presence).
    Leave(ClientInfo),
    /// Messages from offset `from` on were dropped by the server because this client read
    /// too slowly; read them with [`crate::Client::history`] from `from - 1`.
    Gap {
        /// The first dropped offset.
        from: u64,
        /// The history epoch they belong to.
        epoch: String,
    },
    /// After a reconnect, the messages missed while disconnected are no longer in the
    /// channel's history (or the history was reset, for example by a server restart): the
    /// stream goes on from `position`, and the application should refresh its state.
    Resync {
        /// The channel's position the stream continues from.
        position: Position,
    },
    /// The server ended the subscription. Nothing follows.
    Unsubscribed {
        /// Why.
        reason: String,
    },
}

/// Where another client's pointer is on a layer, and what it edits ([`PresenceEvent::Cursor`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    /// Whose cursor.
    pub client: ClientInfo,
    /// Where, `[lon, lat]`; `None` when the pointer left the map.
    pub position: Option<[f64; 2]>,
    /// Ids of the features it edits.
    pub editing: Vec<String>,
}

/// One event of a layer presence subscription ([`crate::PresenceStream`]).
///
/// Members are sessions: a client that reconnects leaves with its old session and joins with
/// a new one. After this client reconnects, the stream yields `Members` with everyone on the
/// layer then, which replaces what was held (joins and leaves missed meanwhile included).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PresenceEvent {
    /// Everyone on the layer now, this client included (after a reconnect).
    Members(Vec<ClientInfo>),
    /// Someone joined the layer's presence (this client too, right after subscribing).
    Join(ClientInfo),
    /// Someone left (unsubscribed or disconnected); their cursor is gone with them.
    Leave(ClientInfo),
    /// Someone moved their cursor or changed what they edit.
    Cursor(Cursor),
    /// The server ended the subscription (for example the layer was deleted). Nothing follows.
    Unsubscribed {
        /// Why.
        reason: String,
    },
}

/// Who is on a layer and where their cursors are, kept up to date by
/// [`PresenceSet::apply`] with every [`PresenceEvent`] ([`crate::PresenceStream`] does it
/// for you).
#[derive(Clone, Debug, Default)]
pub struct PresenceSet {
    members: BTreeMap<String, ClientInfo>,
    cursors: BTreeMap<String, Cursor>,
}

impl PresenceSet {
    /// A set with these members and no cursors.
    pub fn new(members: Vec<ClientInfo>) -> Self {
        let mut s = PresenceSet::default();
        s.apply(&PresenceEvent::Members(members));
        s
    }

    /// Applies one event: `Members` replaces everyone (keeping the cursors of those still
    /// here), `Join` adds, `Leave` removes a member and its cursor, `Cursor` records the
    /// latest cursor of its client.
    pub fn apply(&mut self, event: &PresenceEvent) {
        match event {
            PresenceEvent::Members(list) => {
                self.members = list
                    .iter()
                    .map(|m| (m.session.clone(), m.clone()))
                    .collect();
                let members = &self.members;
                self.cursors.retain(|s, _| members.contains_key(s));
            }
            PresenceEvent::Join(m) => {
                self.members.insert(m.session.clone(), m.clone());
            }
            PresenceEvent::Leave(m) => {
                self.members.remove(&m.session);
                self.cursors.remove(&m.session);
            }
            PresenceEvent::Cursor(c) => {
                self.cursors.insert(c.client.session.clone(), c.clone());
            }
            PresenceEvent::Unsubscribed { .. } => {
                self.members.clear();
                self.cursors.clear();
            }
        }
    }

    /// Everyone here, by session id.
    pub fn members(&self) -> impl Iterator<Item = &ClientInfo> {
        self.members.values()
    }

    /// A member by session id.
    pub fn member(&self, session: &str) -> Option<&ClientInfo> {
        self.members.get(session)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is here (not even this client: before subscribing or after the end).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The latest cursor of each member that shared one, by session id.
    pub fn cursors(&self) -> impl Iterator<Item = &Cursor> {
        self.cursors.values()
    }

    /// A member's latest cursor.
    pub fn cursor(&self, session: &str) -> Option<&Cursor> {
        self.cursors.get(session)
    }
}

/// Something that happened to the client as a whole ([`crate::Client::events`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// An edit from the outbox was applied (exactly once, whatever reconnects happened).
    EditApplied {
        /// Its operation id.
        op_id: String,
        /// The server's result.
        result: EditResult,
    },
    /// An edit from the outbox was refused (a conflict, a lock, invalid input) and removed
    /// from the outbox. Never silent: this event is sent whether or not anyone awaits the edit.
    EditFailed {
        /// Its operation id.
        op_id: String,
        /// The edit.
        edit: Edit,
        /// Why ([`ClientError::Conflict`] carries the current feature).
        error: ClientError,
    },
    /// A lock this client held could not be re-acquired after a reconnect, or expired.
    LockLost {
        /// The layer.
        layer: String,
        /// The feature id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The features a layer subscription currently shows, kept up to date by
/// [`FeatureSet::apply`] with every [`FeatureEvent`].
#[derive(Clone, Debug, Default)]
pub struct FeatureSet {
    features: HashMap<String, Feature>,
    seq: u64,
}

impl FeatureSet {
    /// An empty set.
    pub fn new() -> Self {
        FeatureSet::default()
    }

    /// Applies one event: snapshot pages and `enter` add, `update` changes (merging a partial
    /// update's properties), `exit` and `delete` remove, `resync` empties the set.
    pub fn apply(&mut self, event: &FeatureEvent) {
        if let Some(seq) = event.seq() {
            self.seq = self.seq.max(seq);
        }
        match event {
            FeatureEvent::Snapshot { features, .. } => {
                for f in features {
                    self.features.insert(f.id.clone(), f.clone());
                }
            }
            FeatureEvent::Enter { feature, .. } => {
                self.features
                    .insert(feature.id.clone(), feature.as_ref().clone());
            }
            FeatureEvent::Update {
                id,
                version,
                feature,
                properties,
                geometry,
                ..
            } => {
                if let Some(f) = feature {
                    self.features.insert(id.clone(), f.as_ref().clone());
                } else if let Some(f) = self.features.get_mut(id) {
                    f.version = *version;
                    if let Some(props) = properties {
                        for (k, v) in props {
                            if v.is_null() {
                                f.properties.remove(k);
                            } else {
                                f.properties.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    if let Some(g) = geometry {
                        f.geometry = g.clone();
                    }
                }
            }
            FeatureEvent::Exit { id, .. } | FeatureEvent::Delete { id, .. } => {
                self.features.remove(id);
            }
            FeatureEvent::Resync { .. } => self.features.clear(),
            FeatureEvent::Lock { .. } | FeatureEvent::Unsubscribed { .. } => {}
        }
    }

    /// A feature by id.
    pub fn get(&self, id: &str) -> Option<&Feature> {
        self.features.get(id)
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The highest sequence number applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// All features, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Feature> {
        self.features.values()
    }

    /// Feature ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.features.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Conversions of features to [`geo_types`], for computation with the `geo` ecosystem.
pub trait FeatureGeo {
    /// The geometry as a `geo_types::Geometry<f64>` (`None` without geometry).
    fn geo(&self) -> Option<geo_types::Geometry<f64>>;
}

impl FeatureGeo for Feature {
    fn geo(&self) -> Option<geo_types::Geometry<f64>> {
        self.geometry.as_ref().and_then(|g| g.geo())
    }
}

impl FeatureGeo for Geometry {
    fn geo(&self) -> Option<geo_types::Geometry<f64>> {
        geo_types::Geometry::<f64>::try_from(self).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn feature(id: &str, x: f64, props: Value) -> Feature {
        serde_json::from_value(json!({"type": "Feature", "id": id, "version": 1, "geometry": {"type": "Point", "coordinates": [x, 1.0]}, "properties": props})).unwrap()
    }

    fn member(session: &str, name: &str) -> ClientInfo {
        ClientInfo {
            session: session.into(),
            user: None,
            info: Some(json!({ "name": name })),
        }
    }

    #[test]
    fn presence_set_follows_events() {
        let mut s = PresenceSet::new(vec![member("s1", "Ada")]);
        s.apply(&PresenceEvent::Join(member("s2", "Bob")));
        s.apply(&PresenceEvent::Cursor(Cursor {
            client: member("s2", "Bob"),
            position: Some([2.0, 48.0]),
            editing: vec!["f1".into()],
        }));
        s.apply(&PresenceEvent::Cursor(Cursor {
            client: member("s2", "Bob"),
            position: Some([3.0, 49.0]),
            editing: vec![],
        }));
        assert_eq!(s.len(), 2);
        assert_eq!(s.cursor("s2").unwrap().position, Some([3.0, 49.0]));
        assert_eq!(s.cursors().count(), 1);
        s.apply(&PresenceEvent::Leave(member("s2", "Bob")));
        assert!(s.cursor("s2").is_none());
        assert_eq!(
            s.members().map(|m| m.session.as_str()).collect::<Vec<_>>(),
            ["s1"]
        );
        // A reconnect's list replaces the members; cursors of those gone go too.
        s.apply(&PresenceEvent::Cursor(Cursor {
            client: member("s1", "Ada"),
            position: None,
            editing: vec![],
        }));
        s.apply(&PresenceEvent::Members(vec![member("s3", "Ada")]));
        assert!(s.member("s1").is_none() && s.member("s3").is_some());
        assert_eq!(s.cursors().count(), 0);
    }

    #[test]
    fn feature_set_follows_events() {
        let mut s = FeatureSet::new();
        s.apply(&FeatureEvent::Snapshot {
            seq: 3,
            features: vec![feature("a", 1.0, json!({"k": 1, "x": 2}))],
            last: true,
        });
        s.apply(&FeatureEvent::Enter {
            seq: 4,
            feature: Box::new(feature("b", 2.0, json!({}))),
        });
        s.apply(&FeatureEvent::Update {
            seq: 5,
            id: "a".into(),
            version: 2,
            feature: None,
            properties: Some(json!({"k": 5, "x": null}).as_object().unwrap().clone()),
            geometry: Some(Some(
                serde_json::from_value(json!({"type": "Point", "coordinates": [9.0, 9.0]}))
                    .unwrap(),
            )),
        });
        let a = s.get("a").unwrap();
        assert_eq!(a.properties, *json!({"k": 5}).as_object().unwrap());
        assert_eq!(a.version, 2);
        assert_eq!(
            a.geo(),
            Some(geo_types::Geometry::Point(geo_types::Point::new(9.0, 9.0)))
        );
        s.apply(&FeatureEvent::Exit {
            seq: 6,
            id: "b".into(),
            version: 1,
        });
        assert_eq!(s.ids(), vec!["a"]);
        assert_eq!(s.seq(), 6);
        s.apply(&FeatureEvent::Resync {
            seq: 9,
            reason: "x".into(),
        });
        assert!(s.is_empty());
    }
}
