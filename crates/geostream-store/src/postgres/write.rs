//! Writes: layers, edits (group commit inside a layer, see the module docs for the locking)
//! and feature locks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use deadpool_postgres::Transaction;
use futures_util::FutureExt;
use geostream_core::api::validate_name;
use geostream_core::feature::{BBox, Change, ChangeOp, Feature, format_time_ms};
use tokio::sync::oneshot;

use super::read::{FEATURE_COLUMNS, StoredFeature, corrupt, properties_param};
use super::{Inner, db_err, db_err_ref, now_ms, sql_i64, sql_u64};
use crate::plan;
use crate::{Holder, LayerInfo, LayerSpec, Lock, Result, StoreError, WriteOutcome, WriteRequest};

// ----- layers -----

pub(crate) async fn create_layer(inner: &Inner, spec: LayerSpec) -> Result<LayerInfo> {
    validate_name("layer", &spec.name).map_err(StoreError::Invalid)?;
    let now = now_ms();
    let c = inner.client().await?;
    let row = c
        .query_opt(
            "INSERT INTO layers (name, title, description, last_writer_wins, created_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING id",
            &[
                &spec.name,
                &spec.title,
                &spec.description,
                &spec.last_writer_wins,
                &sql_i64(now),
            ],
        )
        .await
        .map_err(db_err)?;
    if row.is_none() {
        return Err(StoreError::LayerExists(spec.name));
    }
    Ok(LayerInfo {
        name: spec.name,
        title: spec.title,
        description: spec.description,
        last_writer_wins: spec.last_writer_wins,
        seq: 0,
        count: 0,
        bbox: None,
        created_ms: now,
    })
}

pub(crate) async fn delete_layer(inner: &Inner, name: &str) -> Result<()> {
    let c = inner.client().await?;
    // Features, changes and locks go with it (ON DELETE CASCADE). A write in progress holds
    // the row lock; the delete waits for it.
    let n = c
        .execute("DELETE FROM layers WHERE name = $1", &[&name])
        .await
        .map_err(db_err)?;
    if n == 0 {
        return Err(StoreError::LayerNotFound(name.to_owned()));
    }
    Ok(())
}

/// The layer row, locked until the end of the transaction: every write of one layer, on
/// every node, passes here one at a time.
struct LayerRow {
    id: i64,
    name: String,
    lww: bool,
    seq: u64,
    count: u64,
}

async fn lock_layer(tx: &Transaction<'_>, name: &str) -> Result<LayerRow> {
    let st = tx
        .prepare_cached(
            "SELECT id, last_writer_wins, seq, count FROM layers WHERE name = $1 FOR UPDATE",
        )
        .await
        .map_err(db_err)?;
    let row = tx
        .query_opt(&st, &[&name])
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::LayerNotFound(name.to_owned()))?;
    let f = |e| corrupt("layer row", e);
    Ok(LayerRow {
        id: row.try_get(0).map_err(f)?,
        name: name.to_owned(),
        lww: row.try_get(1).map_err(f)?,
        seq: sql_u64(row.try_get(2).map_err(f)?),
        count: sql_u64(row.try_get(3).map_err(f)?),
    })
}

// ----- edits: group commit inside a layer -----

/// A write waiting for its layer's next group.
pub(crate) struct Pending {
    req: WriteRequest,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

/// Most requests in one group, and most operations (a group's statements carry one array
/// element per feature).
const MAX_GROUP_REQUESTS: usize = 512;
const MAX_GROUP_OPS: usize = 8192;

/// Queues `req` for its layer's next group and waits for its own outcome, which is sent
/// only after the group's COMMIT (or the request's own failure). The first write to a layer
/// with no group in flight starts the layer's flusher; writes that arrive while a group is
/// being committed go into the next one together.
pub(crate) async fn apply(inner: &Arc<Inner>, req: WriteRequest) -> Result<WriteOutcome> {
    let (reply, answer) = oneshot::channel();
    let layer = req.layer.clone();
    let start = {
        let mut queues = inner.queues.lock();
        match queues.get_mut(&layer) {
            Some(q) => {
                q.push(Pending { req, reply });
                false
            }
            None => {
                queues.insert(layer.clone(), vec![Pending { req, reply }]);
                true
            }
        }
    };
    if start {
        tokio::spawn(flush_layer(inner.clone(), layer));
    }
    answer
        .await
        .map_err(|_| StoreError::Unavailable("the write was dropped by the store".into()))?
}

/// Commits the layer's queued writes group after group until none is left.
async fn flush_layer(inner: Arc<Inner>, layer: String) {
    loop {
        let group: Vec<Pending> = {
            let mut queues = inner.queues.lock();
            let Some(q) = queues.get_mut(&layer) else {
                return;
            };
            if q.is_empty() {
                queues.remove(&layer);
                return;
            }
            let mut ops = 0;
            let n = q
                .iter()
                .take(MAX_GROUP_REQUESTS)
                .take_while(|p| {
                    ops += p.req.ops.len().max(1);
                    ops <= MAX_GROUP_OPS
                })
                .count()
                .max(1);
            q.drain(..n).collect()
        };
        let (reqs, replies): (Vec<WriteRequest>, Vec<_>) =
            group.into_iter().map(|p| (p.req, p.reply)).unzip();
        // A panic is a bug, but it must cost this group, not every later write of the layer.
        let outcomes = AssertUnwindSafe(commit_group(&inner, &reqs))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(
                    layer,
                    "A PostgreSQL write group panicked; it was rolled back."
                );
                let e = StoreError::Unavailable("internal error while applying the request".into());
                reqs.iter().map(|_| Err(e.clone())).collect()
            });
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The caller may have gone away; the work is done regardless.
            let _ = reply.send(outcome);
        }
    }
}

/// One group: one transaction, one outcome per request. A value the database itself refuses
/// (a data exception while writing the group) is found by committing each request alone, so
/// a bad edit fails alone.
async fn commit_group(inner: &Inner, reqs: &[WriteRequest]) -> Vec<Result<WriteOutcome>> {
    let r = run_group(inner, reqs).await;
    inner.stats.record(reqs.len());
    match r {
        Ok(outcomes) => outcomes,
        Err(StoreError::Invalid(_)) if reqs.len() > 1 => {
            let mut out = Vec::with_capacity(reqs.len());
            for req in reqs {
                let r = run_group(inner, std::slice::from_ref(req)).await;
                inner.stats.record(1);
                out.push(r.and_then(|mut v| v.pop().unwrap_or_else(|| Err(lost()))));
            }
            out
        }
        Err(e) => reqs.iter().map(|_| Err(e.clone())).collect(),
    }
}

fn lost() -> StoreError {
    StoreError::Unavailable("internal error: a request lost its outcome".into())
}

/// A feature as the group sees it, after the group's accepted edits so far.
#[derive(Clone)]
struct Row {
    /// `None`: created in this group.
    ord: Option<i64>,
    feature: Feature,
    bbox: Option<BBox>,
    /// The geometry to write, when it is written (a new row, or a changed geometry).
    geometry_json: Option<String>,
    geometry_written: bool,
    /// Changed in this group.
    dirty: bool,
    /// The sequence number of the change that created it (inserts keep that order).
    created: u64,
}

/// The group's view of one touched feature.
struct Slot {
    /// The row as it was read (locked) at the start of the group.
    original: Option<i64>,
    now: Option<Row>,
}

/// A request's idempotency key: (scope, op id).
type Key = (String, String);

/// Runs a group's transaction. `Err`: the transaction failed as a whole (nothing of it is
/// in the database); `Ok`: one outcome per request, each error its request's own.
async fn run_group(inner: &Inner, reqs: &[WriteRequest]) -> Result<Vec<Result<WriteOutcome>>> {
    let now = now_ms();
    let updated = format_time_ms(now);
    let keys: Vec<Option<Key>> = reqs
        .iter()
        .map(|r| r.op_id.clone().map(|o| (plan::scope(&r.writer), o)))
        .collect();
    let mut client = inner.client().await?;
    // Dropping `tx` without commit rolls everything back, whatever failed.
    let tx = client.transaction().await.map_err(db_err)?;
    let (claimed, seen) = claim_keys(&tx, &keys, now).await?;
    let layer_name = &reqs[0].layer;
    let layer = lock_layer(&tx, layer_name).await;
    let mut outcomes: Vec<Option<Result<WriteOutcome>>> = vec![None; reqs.len()];

    // Replays of outcomes committed before this group, and requests that are invalid as
    // they stand, are answered whatever the layer's state.
    for (i, req) in reqs.iter().enumerate() {
        let before = match &keys[i] {
            Some(k) if !claimed.contains(k) => match seen.get(k) {
                Some(body) => Some(body.as_str()),
                None => {
                    outcomes[i] = Some(Err(StoreError::Unavailable(
                        "the operation id was being forgotten; retry".into(),
                    )));
                    continue;
                }
            },
            _ => None,
        };
        match plan::start(before, req.ops.len()) {
            Ok(None) => {}
            Ok(Some(replayed)) => outcomes[i] = Some(Ok(replayed)),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    let mut layer = match layer {
        Ok(l) => l,
        Err(e) => {
            return Ok(outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Err(e.clone())))
                .collect());
        }
    };

    // Every feature the group touches, and its live lock, read (and row-locked) at once.
    let targets: Vec<Vec<Result<String>>> = reqs
        .iter()
        .zip(&outcomes)
        .map(|(r, o)| match o {
            Some(_) => Vec::new(),
            None => r.ops.iter().map(plan::target).collect(),
        })
        .collect();
    let mut ids: Vec<&str> = targets
        .iter()
        .flatten()
        .filter_map(|t| t.as_deref().ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let (mut slots, locks) = load_touched(&tx, layer.id, &ids, now).await?;

    // Plan the requests in order, each against the group's state so far.
    let mut in_group: HashMap<Key, String> = HashMap::new();
    let mut seqs = Vec::new();
    let mut bodies = Vec::new();
    let mut outcome_keys: (Vec<String>, Vec<String>, Vec<String>) = Default::default();
    for (i, req) in reqs.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        if let Some(k) = &keys[i]
            && let Some(body) = in_group.get(k)
        {
            // The same key earlier in this group: answered with that outcome.
            outcomes[i] =
                Some(plan::start(Some(body), req.ops.len()).and_then(|o| o.ok_or_else(lost)));
            continue;
        }
        let w = plan::Writer {
            holder: &req.writer,
            op_id: req.op_id.as_deref(),
            now,
            updated: &updated,
        };
        match plan_request(req, &targets[i], &slots, &locks, &layer, w) {
            Ok((changes, rows, count)) => {
                let encoded: Vec<String> = changes
                    .iter()
                    .map(plan::encode_change)
                    .collect::<Result<_>>()?;
                layer.seq = changes.last().map_or(layer.seq, |c| c.seq);
                layer.count = count;
                for (id, row) in rows {
                    match slots.get_mut(&id) {
                        Some(slot) => slot.now = row,
                        None => {
                            slots.insert(
                                id,
                                Slot {
                                    original: None,
                                    now: row,
                                },
                            );
                        }
                    }
                }
                for (c, b) in changes.iter().zip(&encoded) {
                    seqs.push(sql_i64(c.seq));
                    bodies.push(b.clone());
                }
                if let Some(k) = &keys[i] {
                    let body = format!("[{}]", encoded.join(","));
                    outcome_keys.0.push(k.0.clone());
                    outcome_keys.1.push(k.1.clone());
                    outcome_keys.2.push(body.clone());
                    in_group.insert(k.clone(), body);
                }
                outcomes[i] = Some(Ok(WriteOutcome {
                    changes,
                    replayed: false,
                }));
            }
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    let outcomes: Vec<Result<WriteOutcome>> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(lost())))
        .collect();
    if seqs.is_empty() {
        // Nothing to write: the rollback also releases the keys this group claimed.
        return Ok(outcomes);
    }
    write_group(
        inner,
        &tx,
        &layer,
        &slots,
        (&seqs, &bodies),
        &outcome_keys,
        &claimed,
        &in_group,
        now,
    )
    .await?;
    tx.commit().await.map_err(db_err)?;
    Ok(outcomes)
}

/// Claims the group's idempotency keys, in one order for every transaction (so two groups
/// claiming the same keys wait for each other instead of deadlocking). Returns the keys
/// claimed, and the recorded outcome of each key another transaction had committed: a
/// concurrent claim of the same key (on any node) blocks until that transaction ends.
async fn claim_keys(
    tx: &Transaction<'_>,
    keys: &[Option<Key>],
    now: u64,
) -> Result<(HashSet<Key>, HashMap<Key, String>)> {
    let distinct: BTreeSet<&Key> = keys.iter().flatten().collect();
    if distinct.is_empty() {
        return Ok(Default::default());
    }
    let scopes: Vec<&str> = distinct.iter().map(|k| k.0.as_str()).collect();
    let op_ids: Vec<&str> = distinct.iter().map(|k| k.1.as_str()).collect();
    let rows = tx
        .query(
            "INSERT INTO op_ids (scope, op_id, time_ms) \
             SELECT s, o, $3 FROM unnest($1::text[], $2::text[]) AS t(s, o) ORDER BY s, o \
             ON CONFLICT DO NOTHING RETURNING scope, op_id",
            &[&scopes, &op_ids, &sql_i64(now)],
        )
        .await
        .map_err(db_err)?;
    let claimed: HashSet<Key> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut seen = HashMap::new();
    if claimed.len() < distinct.len() {
        let rows = tx
            .query(
                "SELECT o.scope, o.op_id, o.outcome FROM op_ids o \
                 JOIN unnest($1::text[], $2::text[]) AS t(s, i) ON o.scope = t.s AND o.op_id = t.i",
                &[&scopes, &op_ids],
            )
            .await
            .map_err(db_err)?;
        for r in &rows {
            let key: Key = (r.get(0), r.get(1));
            let outcome: Option<String> = r.get(2);
            if let (false, Some(body)) = (claimed.contains(&key), outcome) {
                seen.insert(key, body);
            }
        }
    }
    Ok((claimed, seen))
}

/// The touched features (row-locked) and their live locks.
async fn load_touched(
    tx: &Transaction<'_>,
    layer: i64,
    ids: &[&str],
    now: u64,
) -> Result<(HashMap<String, Slot>, LiveLocks)> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let features = async {
        let st = tx
            .prepare_cached(&format!(
                "SELECT {FEATURE_COLUMNS} FROM features WHERE layer = $1 AND fid = ANY($2) FOR UPDATE"
            ))
            .await?;
        tx.query(&st, &[&layer, &ids]).await
    };
    let locks = async {
        let st = tx
            .prepare_cached(
                "SELECT fid, holder_client, holder_user, until_ms FROM locks \
                 WHERE layer = $1 AND fid = ANY($2) AND until_ms > $3",
            )
            .await?;
        tx.query(&st, &[&layer, &ids, &sql_i64(now)]).await
    };
    let (features, locks) = tokio::try_join!(features, locks).map_err(db_err)?;
    let mut slots = HashMap::with_capacity(features.len());
    for r in &features {
        let s = StoredFeature::from_row(r, 0)?;
        slots.insert(
            s.feature.id.clone(),
            Slot {
                original: Some(s.ord),
                now: Some(Row {
                    ord: Some(s.ord),
                    created: 0,
                    feature: s.feature,
                    bbox: s.bbox,
                    geometry_json: None,
                    geometry_written: false,
                    dirty: false,
                }),
            },
        );
    }
    Ok((slots, lock_rows(&locks)?))
}

/// Plans one request against the group's state: its changes, the rows it leaves (by id) and
/// the layer's count after it. Changes nothing: an error leaves the group as it was.
#[allow(clippy::type_complexity)]
fn plan_request(
    req: &WriteRequest,
    targets: &[Result<String>],
    slots: &HashMap<String, Slot>,
    locks: &LiveLocks,
    layer: &LayerRow,
    w: plan::Writer<'_>,
) -> Result<(Vec<Change>, HashMap<String, Option<Row>>, u64)> {
    let mut rows: HashMap<String, Option<Row>> = HashMap::new();
    let mut changes: Vec<Change> = Vec::with_capacity(req.ops.len());
    let mut seq = layer.seq;
    let mut count = layer.count;
    for (op, target) in req.ops.iter().zip(targets) {
        let id = target.clone()?;
        let row: Option<Row> = match rows.get(&id) {
            Some(r) => r.clone(),
            None => slots.get(&id).and_then(|s| s.now.clone()),
        };
        let planned = plan::plan(
            op.clone(),
            id.clone(),
            row.as_ref().map(|r| (r.feature.clone(), r.bbox)),
            locks.get(&id).map(|(h, u)| (h, *u)),
            plan::Layer {
                name: &layer.name,
                lww: layer.lww,
                seq,
            },
            w,
        )?;
        let c = &planned.change;
        let next = match (c.op, c.new.as_ref()) {
            (ChangeOp::Delete, _) | (_, None) => None,
            (ChangeOp::Insert, Some(f)) => Some(Row {
                ord: None,
                created: c.seq,
                feature: f.clone(),
                bbox: c.new_bbox,
                geometry_json: planned.geometry_json.clone(),
                geometry_written: true,
                dirty: true,
            }),
            (ChangeOp::Update, Some(f)) => {
                let old = row.ok_or_else(lost)?;
                Some(Row {
                    feature: f.clone(),
                    bbox: c.new_bbox,
                    geometry_json: if c.geometry_changed {
                        planned.geometry_json.clone()
                    } else {
                        old.geometry_json
                    },
                    geometry_written: old.geometry_written || c.geometry_changed,
                    dirty: true,
                    ..old
                })
            }
        };
        rows.insert(id, next);
        seq = c.seq;
        count = count.saturating_add_signed(planned.count_delta());
        changes.push(planned.change);
    }
    Ok((changes, rows, count))
}

/// Writes what the group decided: each statement carries every row of its kind.
#[allow(clippy::too_many_arguments)]
async fn write_group(
    inner: &Inner,
    tx: &Transaction<'_>,
    layer: &LayerRow,
    slots: &HashMap<String, Slot>,
    (seqs, bodies): (&[i64], &[String]),
    outcome_keys: &(Vec<String>, Vec<String>, Vec<String>),
    claimed: &HashSet<Key>,
    in_group: &HashMap<Key, String>,
    now: u64,
) -> Result<()> {
    let mut deleted: Vec<i64> = Vec::new();
    let mut updates: Vec<&Row> = Vec::new();
    let mut inserts: Vec<&Row> = Vec::new();
    for slot in slots.values() {
        let kept = slot.now.as_ref().and_then(|r| r.ord);
        if let Some(o) = slot.original
            && kept != Some(o)
        {
            deleted.push(o);
        }
        match &slot.now {
            Some(r) if r.ord.is_none() => inserts.push(r),
            Some(r) if r.dirty => updates.push(r),
            _ => {}
        }
    }
    inserts.sort_by_key(|r| r.created);
    if !deleted.is_empty() {
        // Before the inserts: a feature deleted and created again in one group keeps its id.
        tx.execute("DELETE FROM features WHERE ord = ANY($1)", &[&deleted])
            .await
            .map_err(db_err)?;
    }
    let update = async {
        if updates.is_empty() {
            return Ok(0);
        }
        let ords: Vec<i64> = updates.iter().filter_map(|r| r.ord).collect();
        let cols = Columns::of(&updates);
        let written: Vec<bool> = updates.iter().map(|r| r.geometry_written).collect();
        tx.execute(
            "UPDATE features f SET version = t.v, updated_ms = $1, properties = t.p, \
             geometry = CASE WHEN t.w THEN t.g ELSE f.geometry END, \
             geom = CASE WHEN t.w THEN ST_SetSRID(ST_GeomFromGeoJSON(t.g), 4326) ELSE f.geom END, \
             minx = t.x0, miny = t.y0, maxx = t.x1, maxy = t.y1 \
             FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bool[], $6::jsonb[], \
             $7::float8[], $8::float8[], $9::float8[], $10::float8[]) AS t(o, v, g, w, p, x0, y0, x1, y1) \
             WHERE f.ord = t.o",
            &[
                &sql_i64(now),
                &ords,
                &cols.versions,
                &cols.geometries,
                &written,
                &cols.properties,
                &cols.boxes[0],
                &cols.boxes[1],
                &cols.boxes[2],
                &cols.boxes[3],
            ],
        )
        .await
    };
    let insert = async {
        if inserts.is_empty() {
            return Ok(0);
        }
        let fids: Vec<&str> = inserts.iter().map(|r| r.feature.id.as_str()).collect();
        let cols = Columns::of(&inserts);
        tx.execute(
            "INSERT INTO features (layer, fid, version, updated_ms, geometry, geom, properties, minx, miny, maxx, maxy) \
             SELECT $1, t.f, t.v, $2, t.g, ST_SetSRID(ST_GeomFromGeoJSON(t.g), 4326), t.p, t.x0, t.y0, t.x1, t.y1 \
             FROM unnest($3::text[], $4::bigint[], $5::text[], $6::jsonb[], $7::float8[], $8::float8[], \
             $9::float8[], $10::float8[]) WITH ORDINALITY AS t(f, v, g, p, x0, y0, x1, y1, n) ORDER BY t.n",
            &[
                &layer.id,
                &sql_i64(now),
                &fids,
                &cols.versions,
                &cols.geometries,
                &cols.properties,
                &cols.boxes[0],
                &cols.boxes[1],
                &cols.boxes[2],
                &cols.boxes[3],
            ],
        )
        .await
    };
    let log = async {
        tx.execute(
            "INSERT INTO changes (layer, seq, body) SELECT $1, s, b FROM unnest($2::bigint[], $3::text[]) AS t(s, b)",
            &[&layer.id, &seqs, &bodies],
        )
        .await
    };
    let head = async {
        tx.execute(
            "UPDATE layers SET seq = $2, count = $3 WHERE id = $1",
            &[&layer.id, &sql_i64(layer.seq), &sql_i64(layer.count)],
        )
        .await
    };
    let cut = sql_i64(layer.seq.saturating_sub(inner.opts.change_retention));
    let prune = async {
        if cut > 0 {
            tx.execute(
                "DELETE FROM changes WHERE layer = $1 AND seq <= $2",
                &[&layer.id, &cut],
            )
            .await
        } else {
            Ok(0)
        }
    };
    let remember = async {
        if outcome_keys.0.is_empty() {
            return Ok(0);
        }
        tx.execute(
            "UPDATE op_ids o SET outcome = t.b FROM unnest($1::text[], $2::text[], $3::text[]) AS t(s, i, b) \
             WHERE o.scope = t.s AND o.op_id = t.i",
            &[&outcome_keys.0, &outcome_keys.1, &outcome_keys.2],
        )
        .await
    };
    // Keys claimed by requests that all failed are released, as a rollback would.
    let unused: Vec<&Key> = claimed
        .iter()
        .filter(|k| !in_group.contains_key(*k))
        .collect();
    let release = async {
        if unused.is_empty() {
            return Ok(0);
        }
        let s: Vec<&str> = unused.iter().map(|k| k.0.as_str()).collect();
        let i: Vec<&str> = unused.iter().map(|k| k.1.as_str()).collect();
        tx.execute(
            "DELETE FROM op_ids o USING unnest($1::text[], $2::text[]) AS t(s, i) \
             WHERE o.scope = t.s AND o.op_id = t.i",
            &[&s, &i],
        )
        .await
    };
    // Independent statements, sent together: one round trip.
    let (updated, inserted, log, head, prune, remember, release) =
        tokio::join!(update, insert, log, head, prune, remember, release);
    // Pipelined: after the first failure the others only report an aborted transaction, so
    // the reason is the data exception if there is one.
    let errors: Vec<StoreError> = [
        &log, &head, &prune, &remember, &release, &updated, &inserted,
    ]
    .into_iter()
    .filter_map(|r| r.as_ref().err())
    .map(db_err_ref)
    .collect();
    if let Some(e) = errors
        .iter()
        .find(|e| matches!(e, StoreError::Invalid(_)))
        .or(errors.first())
    {
        return Err(e.clone());
    }
    let (updated, inserted) = (updated.unwrap_or(0), inserted.unwrap_or(0));
    if updated != updates.len() as u64 || inserted != inserts.len() as u64 {
        return Err(StoreError::Unavailable(
            "features changed during a write".into(),
        ));
    }
    Ok(())
}

/// Rows as column arrays for `unnest`.
struct Columns<'a> {
    versions: Vec<i64>,
    geometries: Vec<Option<&'a str>>,
    properties: Vec<tokio_postgres::types::Json<&'a serde_json::Map<String, serde_json::Value>>>,
    boxes: [Vec<Option<f64>>; 4],
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a Row]) -> Columns<'a> {
        let mut boxes: [Vec<Option<f64>>; 4] = Default::default();
        for r in rows {
            for (k, v) in box_params(r.bbox).into_iter().enumerate() {
                boxes[k].push(v);
            }
        }
        Columns {
            versions: rows.iter().map(|r| sql_i64(r.feature.version)).collect(),
            geometries: rows.iter().map(|r| r.geometry_json.as_deref()).collect(),
            properties: rows
                .iter()
                .map(|r| properties_param(&r.feature.properties))
                .collect(),
            boxes,
        }
    }
}

/// The live locks of a layer by feature id: holder and expiry.
type LiveLocks = HashMap<String, (Holder, u64)>;

async fn live_locks(tx: &Transaction<'_>, layer: i64, now: u64) -> Result<LiveLocks> {
    let st = tx
        .prepare_cached("SELECT fid, holder_client, holder_user, until_ms FROM locks WHERE layer = $1 AND until_ms > $2")
        .await
        .map_err(db_err)?;
    let rows = tx
        .query(&st, &[&layer, &sql_i64(now)])
        .await
        .map_err(db_err)?;
    lock_rows(&rows)
}

fn lock_rows(rows: &[tokio_postgres::Row]) -> Result<LiveLocks> {
    rows.iter()
        .map(|r| {
            let f = |e| corrupt("lock", e);
            Ok((
                r.try_get(0).map_err(f)?,
                (
                    Holder {
                        client: r.try_get(1).map_err(f)?,
                        user: r.try_get(2).map_err(f)?,
                    },
                    sql_u64(r.try_get(3).map_err(f)?),
                ),
            ))
        })
        .collect()
}

fn box_params(b: Option<BBox>) -> [Option<f64>; 4] {
    b.map(|b| b.map(Some)).unwrap_or_default()
}

// ----- locks -----

pub(crate) async fn lock(
    inner: &Inner,
    layer: &str,
    ids: &[String],
    holder: &Holder,
    ttl_ms: u64,
) -> Result<Vec<Lock>> {
    let now = now_ms();
    let until_ms = now.saturating_add(ttl_ms).min(i64::MAX as u64);
    let mut seen = HashSet::new();
    let ids: Vec<&String> = ids.iter().filter(|id| seen.insert(id.as_str())).collect();
    let mut client = inner.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    // The layer row lock: checks and takes the locks atomically with respect to every
    // write and every other lock request of the layer, on every node.
    let row = lock_layer(&tx, layer).await?;
    let id_list: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let existing: HashSet<String> = tx
        .query(
            "SELECT fid FROM features WHERE layer = $1 AND fid = ANY($2)",
            &[&row.id, &id_list],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let live = live_locks(&tx, row.id, now).await?;
    plan::plan_lock(
        layer,
        ids.iter().map(|id| {
            (
                id.as_str(),
                existing.contains(id.as_str()),
                live.get(id.as_str()).map(|(h, u)| (h, *u)),
            )
        }),
        holder,
    )?;
    if !ids.is_empty() {
        tx.execute(
            "INSERT INTO locks (layer, fid, holder_client, holder_user, until_ms) \
             SELECT $1, f, $3, $4, $5 FROM unnest($2::text[]) AS t(f) \
             ON CONFLICT (layer, fid) DO UPDATE SET holder_client = excluded.holder_client, \
             holder_user = excluded.holder_user, until_ms = excluded.until_ms",
            &[
                &row.id,
                &id_list,
                &holder.client,
                &holder.user,
                &sql_i64(until_ms),
            ],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(ids
        .into_iter()
        .map(|id| Lock {
            layer: layer.to_owned(),
            id: id.clone(),
            holder: holder.clone(),
            until_ms,
        })
        .collect())
}

pub(crate) async fn unlock(
    inner: &Inner,
    layer: &str,
    ids: &[String],
    holder: &Holder,
) -> Result<Vec<Lock>> {
    let c = inner.client().await?;
    let (layer_id, _) = super::read::layer_head(&**c, layer).await?;
    let rows = c
        .query(
            "DELETE FROM locks WHERE layer = $1 AND fid = ANY($2) AND holder_client = $3 \
             AND holder_user IS NOT DISTINCT FROM $4 RETURNING fid, until_ms",
            &[&layer_id, &ids, &holder.client, &holder.user],
        )
        .await
        .map_err(db_err)?;
    let mut released: HashMap<String, u64> = HashMap::new();
    for r in &rows {
        released.insert(r.get(0), sql_u64(r.get(1)));
    }
    // In the order asked.
    Ok(ids
        .iter()
        .filter_map(|id| {
            released.remove(id).map(|until_ms| Lock {
                layer: layer.to_owned(),
                id: id.clone(),
                holder: holder.clone(),
                until_ms,
            })
        })
        .collect())
}

/// Runs a statement changing locks that returns `(layer id, fid, client, user, until)` as a
/// CTE `d`, and names the layers.
async fn locks_returning(
    inner: &Inner,
    cte: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Lock>> {
    let c = inner.client().await?;
    let sql = format!(
        "WITH d AS ({cte} RETURNING layer, fid, holder_client, holder_user, until_ms) \
         SELECT l.name, d.fid, d.holder_client, d.holder_user, d.until_ms FROM d JOIN layers l ON l.id = d.layer \
         ORDER BY l.name COLLATE \"C\", d.fid COLLATE \"C\""
    );
    let rows = c.query(&sql, params).await.map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let f = |e| corrupt("lock", e);
            Ok(Lock {
                layer: r.try_get(0).map_err(f)?,
                id: r.try_get(1).map_err(f)?,
                holder: Holder {
                    client: r.try_get(2).map_err(f)?,
                    user: r.try_get(3).map_err(f)?,
                },
                until_ms: sql_u64(r.try_get(4).map_err(f)?),
            })
        })
        .collect()
}

pub(crate) async fn expire_client_locks(
    inner: &Inner,
    client: &str,
    grace_ms: u64,
) -> Result<Vec<Lock>> {
    let now = now_ms();
    locks_returning(
        inner,
        "UPDATE locks SET until_ms = LEAST(until_ms, $2) WHERE holder_client = $1 AND until_ms > $3",
        &[
            &client,
            &sql_i64(now.saturating_add(grace_ms)),
            &sql_i64(now),
        ],
    )
    .await
}

pub(crate) async fn reap_locks(inner: &Inner) -> Result<Vec<Lock>> {
    // Each expired lock is deleted once, so exactly one node reports (and announces) it.
    locks_returning(
        inner,
        "DELETE FROM locks WHERE until_ms <= $1",
        &[&sql_i64(now_ms())],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::read::decode_change;

    #[test]
    fn corrupt_changes_are_errors() {
        let c = decode_change("{}");
        assert!(c.is_err(), "a corrupt change is an error, not a panic");
    }
}
