//! The edit rules, written once: a sans-I/O planner both backends execute.
//!
//! A backend reads what a decision needs (the feature's current state, the live lock on it,
//! the outcome an `op_id` already produced, the layer's rules and head) and asks the planner;
//! the planner answers with the [`Change`] to record (which carries the new row) or the
//! error to return, and the backend writes what it was told. Nothing here touches a
//! database, so every rule is tested here without one, and SQLite and PostgreSQL cannot
//! disagree on the order of the checks:
//!
//! * a request: an `op_id` already applied answers with its recorded outcome (even for a
//!   request that would now be invalid), then an empty request is invalid;
//! * create: an empty id is invalid; an existing feature is reported before a lock on it;
//!   then the lock; then the geometry;
//! * replace, patch, delete: `VersionRequired` on a strict layer without a version, then
//!   `Conflict` when the version differs (or the feature is missing), then a missing feature
//!   (`FeatureNotFound`, except for a last-writer-wins replace, which creates it), then the
//!   lock, then the geometry.

use geostream_core::feature::{
    BBox, Change, ChangeOp, Feature, FeatureType, Geometry, changed_properties, geometry_bbox,
    merge_patch,
};
use serde_json::{Map, Value};

use crate::{Holder, Result, StoreError, WriteOp, WriteOutcome};

/// The idempotency scope of a writer: its user, else its client, prefixed so that a user and
/// a client that happen to share a name stay apart.
pub(crate) fn scope(writer: &Holder) -> String {
    match &writer.user {
        Some(user) => format!("u:{user}"),
        None => format!("c:{}", writer.client),
    }
}

/// The start of a request: `Some` outcome to answer at once (a replay of `seen`, the outcome
/// its `op_id` already produced), `None` to go on and plan its operations.
pub(crate) fn start(seen: Option<&str>, ops: usize) -> Result<Option<WriteOutcome>> {
    if let Some(body) = seen {
        let changes: Vec<Change> = serde_json::from_str(body).map_err(|e| {
            StoreError::Unavailable(format!("corrupt op id outcome in the database: {e}"))
        })?;
        return Ok(Some(WriteOutcome {
            changes,
            replayed: true,
        }));
    }
    if ops == 0 {
        return Err(StoreError::Invalid(
            "a write needs at least one operation".into(),
        ));
    }
    Ok(None)
}

/// The feature an operation is about; a create without an id gets a new one (UUID v7).
pub(crate) fn target(op: &WriteOp) -> Result<String> {
    match op {
        WriteOp::Create { feature } => match &feature.id {
            Some(id) if id.is_empty() => {
                Err(StoreError::Invalid("a feature id must not be empty".into()))
            }
            Some(id) => Ok(id.clone()),
            None => Ok(uuid::Uuid::now_v7().to_string()),
        },
        WriteOp::Replace { id, .. } | WriteOp::Patch { id, .. } | WriteOp::Delete { id, .. } => {
            Ok(id.clone())
        }
    }
}

/// A layer as the planner needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layer<'a> {
    /// Its name (in changes and errors).
    pub(crate) name: &'a str,
    /// Last-writer-wins: edits may omit the version.
    pub(crate) lww: bool,
    /// Its sequence number so far; a planned change takes the next one.
    pub(crate) seq: u64,
}

/// Who writes and when, the same for every operation of a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Writer<'a> {
    /// The writer (owns the locks that let it edit locked features).
    pub(crate) holder: &'a Holder,
    /// The request's `op_id`.
    pub(crate) op_id: Option<&'a str>,
    /// Milliseconds since the Unix epoch.
    pub(crate) now: u64,
    /// `now` as RFC 3339.
    pub(crate) updated: &'a str,
}

/// A feature's current state: the stored feature and the box stored with it (`None` when
/// the feature does not exist).
pub(crate) type Current = Option<(Feature, Option<BBox>)>;

/// A live lock on the feature: its holder and expiry.
pub(crate) type LiveLock<'a> = Option<(&'a Holder, u64)>;

/// What to write: the change to record (its `new` and `new_bbox` are the row after the
/// edit), and the new geometry as JSON when the row's geometry is written (an insert, or an
/// update whose geometry changed).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Planned {
    /// The change, with sequence number `layer.seq + 1`.
    pub(crate) change: Change,
    /// The geometry to store, encoded once.
    pub(crate) geometry_json: Option<String>,
}

impl Planned {
    /// How the layer's feature count moves.
    pub(crate) fn count_delta(&self) -> i64 {
        match self.change.op {
            ChangeOp::Insert => 1,
            ChangeOp::Update => 0,
            ChangeOp::Delete => -1,
        }
    }
}

/// Decides one operation on feature `id` (from [`target`]).
pub(crate) fn plan(
    op: WriteOp,
    id: String,
    current: Current,
    lock: LiveLock<'_>,
    layer: Layer<'_>,
    w: Writer<'_>,
) -> Result<Planned> {
    match op {
        WriteOp::Create { feature } => {
            if let Some((current, _)) = current {
                return Err(StoreError::FeatureExists {
                    layer: layer.name.to_owned(),
                    id,
                    current: Box::new(current),
                });
            }
            check_lock(&id, lock, w)?;
            insert(id, feature.geometry, feature.properties, layer, w)
        }
        WriteOp::Replace {
            feature, expected, ..
        } => match versioned(&id, current, expected, layer)? {
            // Only reachable without `expected` on a last-writer-wins layer: upsert.
            None => {
                check_lock(&id, lock, w)?;
                insert(id, feature.geometry, feature.properties, layer, w)
            }
            Some(current) => {
                check_lock(&id, lock, w)?;
                let changed = changed_properties(&current.0.properties, &feature.properties);
                update(
                    current,
                    feature.geometry,
                    feature.properties,
                    changed,
                    layer,
                    w,
                )
            }
        },
        WriteOp::Patch {
            properties,
            geometry,
            expected,
            ..
        } => {
            let Some(current) = versioned(&id, current, expected, layer)? else {
                return Err(StoreError::FeatureNotFound {
                    layer: layer.name.to_owned(),
                    id,
                });
            };
            check_lock(&id, lock, w)?;
            let mut props = current.0.properties.clone();
            let changed = match &properties {
                Some(patch) => merge_patch(&mut props, patch),
                None => Vec::new(),
            };
            let geometry = match geometry {
                Some(g) => g.map(|(g, _)| g),
                None => current.0.geometry.clone(),
            };
            update(current, geometry, props, changed, layer, w)
        }
        WriteOp::Delete { expected, .. } => {
            let Some((old, old_bbox)) = versioned(&id, current, expected, layer)? else {
                return Err(StoreError::FeatureNotFound {
                    layer: layer.name.to_owned(),
                    id,
                });
            };
            check_lock(&id, lock, w)?;
            Ok(Planned {
                change: Change {
                    layer: layer.name.to_owned(),
                    seq: layer.seq + 1,
                    op: ChangeOp::Delete,
                    id,
                    version: old.version + 1,
                    changed: old.properties.keys().cloned().collect(),
                    geometry_changed: old.geometry.is_some(),
                    old: Some(old),
                    new: None,
                    old_bbox,
                    new_bbox: None,
                    author: w.holder.user.clone(),
                    op_id: w.op_id.map(str::to_owned),
                    time_ms: w.now,
                },
                geometry_json: None,
            })
        }
    }
}

/// The version rules: `VersionRequired` without `expected` on a strict layer, `Conflict`
/// when `expected` is not the current version (or the feature is missing). `Ok(None)`:
/// missing, and no version was stated.
fn versioned(
    id: &str,
    current: Current,
    expected: Option<u64>,
    layer: Layer<'_>,
) -> Result<Option<(Feature, Option<BBox>)>> {
    if expected.is_none() && !layer.lww {
        return Err(StoreError::VersionRequired {
            layer: layer.name.to_owned(),
        });
    }
    if let Some(expected) = expected {
        let version = current.as_ref().map(|c| c.0.version);
        if version != Some(expected) {
            return Err(StoreError::Conflict {
                id: id.to_owned(),
                expected,
                current: current.map(|c| Box::new(c.0)),
            });
        }
    }
    Ok(current)
}

fn check_lock(id: &str, lock: LiveLock<'_>, w: Writer<'_>) -> Result<()> {
    match lock {
        Some((holder, until_ms)) if holder != w.holder => Err(StoreError::Locked {
            id: id.to_owned(),
            holder: holder.clone(),
            until_ms,
        }),
        _ => Ok(()),
    }
}

fn insert(
    id: String,
    geometry: Option<Geometry>,
    properties: Map<String, Value>,
    layer: Layer<'_>,
    w: Writer<'_>,
) -> Result<Planned> {
    let bbox = checked_bbox(geometry.as_ref())?;
    let geometry_json = geometry.as_ref().map(to_json).transpose()?;
    let changed = properties.keys().cloned().collect();
    let feature = Feature {
        kind: FeatureType::Feature,
        id: id.clone(),
        geometry,
        properties,
        version: 1,
        updated: w.updated.to_owned(),
    };
    Ok(Planned {
        change: Change {
            layer: layer.name.to_owned(),
            seq: layer.seq + 1,
            op: ChangeOp::Insert,
            id,
            version: 1,
            old: None,
            geometry_changed: feature.geometry.is_some(),
            new: Some(feature),
            old_bbox: None,
            new_bbox: bbox,
            changed,
            author: w.holder.user.clone(),
            op_id: w.op_id.map(str::to_owned),
            time_ms: w.now,
        },
        geometry_json,
    })
}

fn update(
    (old, old_bbox): (Feature, Option<BBox>),
    geometry: Option<Geometry>,
    properties: Map<String, Value>,
    changed: Vec<String>,
    layer: Layer<'_>,
    w: Writer<'_>,
) -> Result<Planned> {
    let geometry_changed = geometry != old.geometry;
    let (bbox, geometry_json) = if geometry_changed {
        (
            checked_bbox(geometry.as_ref())?,
            geometry.as_ref().map(to_json).transpose()?,
        )
    } else {
        (old_bbox, None)
    };
    let version = old.version + 1;
    let new = Feature {
        kind: FeatureType::Feature,
        id: old.id.clone(),
        geometry,
        properties,
        version,
        updated: w.updated.to_owned(),
    };
    Ok(Planned {
        change: Change {
            layer: layer.name.to_owned(),
            seq: layer.seq + 1,
            op: ChangeOp::Update,
            id: new.id.clone(),
            version,
            old: Some(old),
            new: Some(new),
            old_bbox,
            new_bbox: bbox,
            changed,
            geometry_changed,
            author: w.holder.user.clone(),
            op_id: w.op_id.map(str::to_owned),
            time_ms: w.now,
        },
        geometry_json,
    })
}

/// Decides a lock request once the backend has read, for each requested feature (duplicates
/// removed, in order), whether it exists and the live lock on it: all or none.
pub(crate) fn plan_lock<'a>(
    layer: &str,
    ids: impl IntoIterator<Item = (&'a str, bool, LiveLock<'a>)>,
    holder: &Holder,
) -> Result<()> {
    for (id, exists, lock) in ids {
        if !exists {
            return Err(StoreError::FeatureNotFound {
                layer: layer.to_owned(),
                id: id.to_owned(),
            });
        }
        match lock {
            Some((h, until_ms)) if h != holder => {
                return Err(StoreError::Locked {
                    id: id.to_owned(),
                    holder: h.clone(),
                    until_ms,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// A change as the log (and an op id's outcome) keeps it.
pub(crate) fn encode_change(c: &Change) -> Result<String> {
    serde_json::to_string(c)
        .map_err(|e| StoreError::Invalid(format!("cannot encode the change: {e}")))
}

/// JSON for a column, or the reason it cannot be.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("cannot encode as JSON: {e}")))
}

/// The box the store keeps for a geometry: computed here (not trusted from the caller),
/// after checking every position is finite — an R-tree rejects NaN, and JSON would turn it
/// into a `null` that no longer reads back as a geometry.
pub(crate) fn checked_bbox(g: Option<&Geometry>) -> Result<Option<BBox>> {
    fn finite(v: &geojson::Value) -> bool {
        use geojson::Value as G;
        let pos = |p: &Vec<f64>| p.len() >= 2 && p.iter().all(|c| c.is_finite());
        match v {
            G::Point(p) => pos(p),
            G::MultiPoint(ps) | G::LineString(ps) => ps.iter().all(pos),
            G::MultiLineString(ls) | G::Polygon(ls) => ls.iter().flatten().all(pos),
            G::MultiPolygon(pss) => pss.iter().flatten().flatten().all(pos),
            G::GeometryCollection(gs) => gs.iter().all(|g| finite(&g.value)),
        }
    }
    let Some(g) = g else { return Ok(None) };
    if !finite(&g.value) {
        return Err(StoreError::Invalid(
            "geometry: every position needs 2 or 3 finite numbers".into(),
        ));
    }
    // `None`: valid GeoJSON without positions (an empty collection): kept, not indexed.
    Ok(geometry_bbox(g))
}

#[cfg(test)]
mod tests {
    use geostream_core::feature::ValidFeature;
    use serde_json::json;

    use super::*;

    fn alice() -> Holder {
        Holder {
            client: "a".into(),
            user: Some("alice".into()),
        }
    }

    fn bob() -> Holder {
        Holder {
            client: "b".into(),
            user: Some("bob".into()),
        }
    }

    fn point(x: f64, y: f64) -> Geometry {
        Geometry::new(geojson::Value::Point(vec![x, y]))
    }

    fn props(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        }
    }

    fn stored(id: &str, version: u64, p: Value) -> (Feature, Option<BBox>) {
        (
            Feature {
                kind: FeatureType::Feature,
                id: id.into(),
                geometry: Some(point(1.0, 2.0)),
                properties: props(p),
                version,
                updated: "2026-01-01T00:00:00.000Z".into(),
            },
            Some([1.0, 2.0, 1.0, 2.0]),
        )
    }

    fn create(id: Option<&str>, g: Option<Geometry>) -> WriteOp {
        WriteOp::Create {
            feature: ValidFeature {
                id: id.map(Into::into),
                bbox: None,
                geometry: g,
                properties: props(json!({"a": 1})),
            },
        }
    }

    fn strict() -> Layer<'static> {
        Layer {
            name: "l",
            lww: false,
            seq: 41,
        }
    }

    fn lww() -> Layer<'static> {
        Layer {
            name: "l",
            lww: true,
            seq: 41,
        }
    }

    fn run(op: WriteOp, current: Current, lock: LiveLock<'_>, layer: Layer<'_>) -> Result<Planned> {
        let holder = alice();
        let w = Writer {
            holder: &holder,
            op_id: Some("op"),
            now: 1000,
            updated: "1970-01-01T00:00:01.000Z",
        };
        let id = target(&op)?;
        plan(op, id, current, lock, layer, w)
    }

    #[test]
    fn start_replays_before_anything_else() {
        // A recorded outcome is answered even for a request with no operations.
        let body = "[]";
        let out = start(Some(body), 0).unwrap().unwrap();
        assert!(out.replayed && out.changes.is_empty());
        assert!(matches!(start(None, 0), Err(StoreError::Invalid(_))));
        assert_eq!(start(None, 1).unwrap(), None);
        assert!(matches!(
            start(Some("{"), 1),
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn scopes_keep_users_and_clients_apart() {
        let client = Holder {
            client: "x".into(),
            user: None,
        };
        let user = Holder {
            client: "y".into(),
            user: Some("x".into()),
        };
        assert_eq!(scope(&client), "c:x");
        assert_eq!(scope(&user), "u:x");
    }

    #[test]
    fn create_inserts_version_one_with_the_next_seq() {
        let p = run(
            create(Some("f"), Some(point(3.0, 4.0))),
            None,
            None,
            strict(),
        )
        .unwrap();
        let c = &p.change;
        assert_eq!((c.op, c.seq, c.version), (ChangeOp::Insert, 42, 1));
        assert_eq!(c.new_bbox, Some([3.0, 4.0, 3.0, 4.0]));
        assert_eq!(c.changed, vec!["a".to_string()]);
        assert_eq!(c.author.as_deref(), Some("alice"));
        assert_eq!(c.op_id.as_deref(), Some("op"));
        assert!(c.geometry_changed);
        assert_eq!(
            p.geometry_json.as_deref(),
            Some(r#"{"type":"Point","coordinates":[3.0,4.0]}"#)
        );
        assert_eq!(p.count_delta(), 1);
        // Without an id, one is made.
        let p = run(create(None, None), None, None, strict()).unwrap();
        assert_eq!(p.change.id.len(), 36);
        assert!(!p.change.geometry_changed && p.geometry_json.is_none());
    }

    #[test]
    fn create_reports_existence_before_the_lock_and_the_lock_before_the_geometry() {
        let b = bob();
        let e = run(create(Some(""), None), None, None, strict()).unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
        let e = run(
            create(Some("f"), None),
            Some(stored("f", 3, json!({}))),
            Some((&b, 9)),
            strict(),
        )
        .unwrap_err();
        assert!(matches!(e, StoreError::FeatureExists { .. }), "{e:?}");
        let nan = Some(point(f64::NAN, 0.0));
        let e = run(
            create(Some("f"), nan.clone()),
            None,
            Some((&b, 9)),
            strict(),
        )
        .unwrap_err();
        assert!(
            matches!(e, StoreError::Locked { ref holder, until_ms: 9, .. } if *holder == b),
            "{e:?}"
        );
        let e = run(create(Some("f"), nan), None, None, strict()).unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
        // One's own lock does not stop one.
        let a = alice();
        assert!(run(create(Some("f"), None), None, Some((&a, 9)), strict()).is_ok());
    }

    #[test]
    fn versions_come_before_existence_and_locks() {
        let b = bob();
        let del = |expected| WriteOp::Delete {
            id: "f".into(),
            expected,
        };
        // Strict layer, no version: refused whatever the state.
        let e = run(del(None), None, Some((&b, 9)), strict()).unwrap_err();
        assert!(matches!(e, StoreError::VersionRequired { .. }), "{e:?}");
        // Wrong version, locked by another: the conflict wins, with the current feature.
        let e = run(
            del(Some(2)),
            Some(stored("f", 3, json!({}))),
            Some((&b, 9)),
            strict(),
        )
        .unwrap_err();
        match e {
            StoreError::Conflict {
                expected: 2,
                current: Some(c),
                ..
            } => assert_eq!(c.version, 3),
            e => panic!("{e:?}"),
        }
        // A version for a missing feature: a conflict without a current feature.
        let e = run(del(Some(1)), None, None, strict()).unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict { current: None, .. }),
            "{e:?}"
        );
        // Missing without a version on a last-writer-wins layer: not found, before the lock.
        let e = run(del(None), None, Some((&b, 9)), lww()).unwrap_err();
        assert!(matches!(e, StoreError::FeatureNotFound { .. }), "{e:?}");
        // Right version, locked by another.
        let e = run(
            del(Some(3)),
            Some(stored("f", 3, json!({}))),
            Some((&b, 9)),
            strict(),
        )
        .unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
        let p = run(
            del(Some(3)),
            Some(stored("f", 3, json!({"k": 1}))),
            None,
            strict(),
        )
        .unwrap();
        let c = &p.change;
        assert_eq!((c.op, c.version, c.seq), (ChangeOp::Delete, 4, 42));
        assert_eq!(c.old_bbox, Some([1.0, 2.0, 1.0, 2.0]));
        assert_eq!(c.changed, vec!["k".to_string()]);
        assert!(c.new.is_none() && c.geometry_changed);
        assert_eq!(p.count_delta(), -1);
    }

    #[test]
    fn replace_upserts_only_on_last_writer_wins_layers() {
        let replace = |expected| WriteOp::Replace {
            id: "f".into(),
            feature: ValidFeature {
                id: None,
                bbox: None,
                geometry: Some(point(1.0, 2.0)),
                properties: props(json!({"a": 2, "b": 1})),
            },
            expected,
        };
        let p = run(replace(None), None, None, lww()).unwrap();
        assert_eq!((p.change.op, p.change.id.as_str()), (ChangeOp::Insert, "f"));
        let e = run(replace(None), None, None, strict()).unwrap_err();
        assert!(matches!(e, StoreError::VersionRequired { .. }), "{e:?}");
        let p = run(
            replace(Some(5)),
            Some(stored("f", 5, json!({"a": 2, "c": 3}))),
            None,
            strict(),
        )
        .unwrap();
        let c = &p.change;
        assert_eq!((c.op, c.version), (ChangeOp::Update, 6));
        // Same geometry: not rewritten, the stored box kept.
        assert!(!c.geometry_changed && p.geometry_json.is_none());
        assert_eq!(c.new_bbox, Some([1.0, 2.0, 1.0, 2.0]));
        let mut changed = c.changed.clone();
        changed.sort();
        assert_eq!(changed, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(p.count_delta(), 0);
    }

    #[test]
    fn patch_merges_and_moves() {
        let patch = WriteOp::Patch {
            id: "f".into(),
            properties: Some(props(json!({"a": null, "b": 2}))),
            geometry: Some(Some((point(5.0, 6.0), [5.0, 6.0, 5.0, 6.0]))),
            expected: Some(1),
        };
        let p = run(patch, Some(stored("f", 1, json!({"a": 1}))), None, strict()).unwrap();
        let new = p.change.new.as_ref().unwrap();
        assert_eq!(Value::Object(new.properties.clone()), json!({"b": 2}));
        assert!(p.change.geometry_changed);
        assert_eq!(p.change.new_bbox, Some([5.0, 6.0, 5.0, 6.0]));
        assert!(p.geometry_json.is_some());
        let missing = WriteOp::Patch {
            id: "g".into(),
            properties: None,
            geometry: None,
            expected: None,
        };
        let e = run(missing, None, None, lww()).unwrap_err();
        assert!(matches!(e, StoreError::FeatureNotFound { .. }), "{e:?}");
        // Removing the geometry clears the box.
        let clear = WriteOp::Patch {
            id: "f".into(),
            properties: None,
            geometry: Some(None),
            expected: None,
        };
        let p = run(clear, Some(stored("f", 1, json!({}))), None, lww()).unwrap();
        assert!(p.change.geometry_changed && p.change.new_bbox.is_none());
    }

    #[test]
    fn lock_requests_are_all_or_none() {
        let (a, b) = (alice(), bob());
        assert!(plan_lock("l", [("x", true, None), ("y", true, Some((&a, 5)))], &a).is_ok());
        let e = plan_lock("l", [("x", true, Some((&b, 5))), ("y", false, None)], &a).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
        let e = plan_lock("l", [("x", false, Some((&b, 5)))], &a).unwrap_err();
        assert!(matches!(e, StoreError::FeatureNotFound { .. }), "{e:?}");
    }

    #[test]
    fn non_finite_positions_are_refused() {
        let g = Geometry::new(geojson::Value::Point(vec![f64::NAN, 1.0]));
        assert!(checked_bbox(Some(&g)).is_err());
        let g = Geometry::new(geojson::Value::Point(vec![1.0, 2.0]));
        assert_eq!(checked_bbox(Some(&g)).unwrap(), Some([1.0, 2.0, 1.0, 2.0]));
    }
}
