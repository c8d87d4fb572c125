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
use tokio_postgres::error::SqlState;

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
    let mut c = inner.client().await?;
    let tx = c.transaction().await.map_err(db_err)?;
    // Features and locks go with it (ON DELETE CASCADE). A write in progress holds the row
    // lock; the delete waits for it.
    let id: i64 = tx
        .query_opt("DELETE FROM layers WHERE name = $1 RETURNING id", &[&name])
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::LayerNotFound(name.to_owned()))?
        .get(0);
    // The change log has no foreign key (schema version 4). A statement of its own, so that
    // it sees the changes of a write that committed while the delete waited for the lock.
    tx.execute("DELETE FROM changes WHERE layer = $1", &[&id])
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)
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
    let st = tx.prepare_cached(LOCK_LAYER).await.map_err(db_err)?;
    let row = tx
        .query_opt(&st, &[&name])
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::LayerNotFound(name.to_owned()))?;
    layer_from_row(&row, name)
}

fn layer_from_row(row: &tokio_postgres::Row, name: &str) -> Result<LayerRow> {
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

/// A connection inside a write group's transaction. Closed with [`OpenTx::close`]; dropped
/// before that (a panic while the group runs), the connection is closed rather than returned
/// to the pool in the middle of a transaction.
struct OpenTx {
    object: Option<deadpool_postgres::Object>,
    /// The transaction is over: its COMMIT, sent with the writes, came back (a transaction
    /// in which a statement failed is rolled back by its COMMIT).
    ended: bool,
}

impl OpenTx {
    fn db(&self) -> &Db {
        self.object
            .as_deref()
            .expect("the transaction's connection is held until close")
    }

    /// Rolls back what is still open and returns the connection to the pool, or closes it
    /// when even the rollback failed.
    async fn close(mut self) {
        if !self.ended && self.db().batch_execute("ROLLBACK").await.is_ok() {
            self.ended = true;
        }
        if self.ended {
            drop(self.object.take());
        }
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

type Db = deadpool_postgres::ClientWrapper;

/// The group's first round trip, in this order: the layer row is locked (every write of the
/// layer, on every node, passes here one at a time); then, each statement seeing what was
/// committed before the lock was granted, the outcomes recorded for the group's idempotency
/// keys and the touched features (row-locked) with their live locks.
///
/// Each key is looked up by its own index probe (a `LATERAL` subquery with `LIMIT`, which the
/// planner cannot flatten into a join): these statements are prepared once per connection,
/// and a generic plan made while a table was small (a hash join over a sequential scan) would
/// otherwise be kept while the table grows to millions of rows.
const LOCK_LAYER: &str =
    "SELECT id, last_writer_wins, seq, count FROM layers WHERE name = $1 FOR UPDATE";
const RECORDED_OUTCOMES: &str = "SELECT t.s, t.i, o.outcome \
     FROM unnest($1::text[], $2::text[]) AS t(s, i) \
     CROSS JOIN LATERAL (SELECT outcome FROM op_ids WHERE scope = t.s AND op_id = t.i LIMIT 1) o";
const TOUCHED_LOCKS: &str = "SELECT l.fid, l.holder_client, l.holder_user, l.until_ms \
     FROM unnest($2::text[]) AS t(f) \
     CROSS JOIN LATERAL (SELECT * FROM locks WHERE layer = (SELECT id FROM layers WHERE name = $1) \
     AND fid = t.f AND until_ms > $3 LIMIT 1) l";

fn touched_features_sql() -> String {
    format!(
        "SELECT {FEATURE_COLUMNS} FROM unnest($2::text[]) AS t(f) \
         CROSS JOIN LATERAL (SELECT * FROM features WHERE layer = (SELECT id FROM layers WHERE name = $1) \
         AND fid = t.f LIMIT 1 FOR UPDATE) r"
    )
}

/// Generic plans only, inside the group's transaction: the statements are prepared once per
/// connection and written to need no custom plan, and PostgreSQL would otherwise plan some of
/// them again on every execution (measured: most of its CPU time with small groups on many
/// layers).
const BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// How a group's statements ended.
enum GroupEnd {
    /// One outcome per request, each error its request's own.
    Done(Vec<Result<WriteOutcome>>),
    /// Another transaction (another layer's group, or another node) recorded one of the
    /// group's idempotency keys after this group read them: the group was rolled back, and
    /// its next run finds that outcome and replays it.
    Raced,
}

/// Times a group runs again after losing a race for an idempotency key.
const MAX_KEY_RACES: usize = 3;

/// Runs a group's transaction. `Err`: the transaction failed as a whole (nothing of it is
/// in the database); `Ok`: one outcome per request, each error its request's own.
///
/// Two round trips: BEGIN with the layer lock and the reads (see [`LOCK_LAYER`]), then every
/// write with the COMMIT. The layer's row lock is held across both, so on a busy machine,
/// where a round trip costs a few hundred microseconds of scheduling, their number bounds a
/// hot layer's rate of groups.
async fn run_group(inner: &Inner, reqs: &[WriteRequest]) -> Result<Vec<Result<WriteOutcome>>> {
    for _ in 0..MAX_KEY_RACES {
        let mut tx = OpenTx {
            object: Some(inner.client().await?),
            ended: false,
        };
        let end = group_statements(inner, &mut tx, reqs).await;
        tx.close().await;
        match end? {
            GroupEnd::Done(outcomes) => return Ok(outcomes),
            GroupEnd::Raced => {
                tracing::debug!(
                    layer = reqs[0].layer,
                    "A write group lost the race for an operation id; it runs again."
                );
                continue;
            }
        }
    }
    Err(StoreError::Unavailable(
        "the operation ids of this write were being recorded by other writes; retry".into(),
    ))
}

/// The group's statements, its COMMIT included when it writes anything.
async fn group_statements(
    inner: &Inner,
    tx: &mut OpenTx,
    reqs: &[WriteRequest],
) -> Result<GroupEnd> {
    let db = tx.db();
    let now = now_ms();
    let updated = format_time_ms(now);
    let keys: Vec<Option<Key>> = reqs
        .iter()
        .map(|r| r.op_id.clone().map(|o| (plan::scope(&r.writer), o)))
        .collect();
    let layer_name = &reqs[0].layer;
    // Every feature any request names is read and row-locked, including those of requests
    // that turn out to be replays (a few rows locked for nothing, no extra round trip).
    let targets: Vec<Vec<Result<String>>> = reqs
        .iter()
        .map(|r| r.ops.iter().map(plan::target).collect())
        .collect();
    let mut ids: Vec<&str> = targets
        .iter()
        .flatten()
        .filter_map(|t| t.as_deref().ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let distinct: BTreeSet<&Key> = keys.iter().flatten().collect();
    let scopes: Vec<&str> = distinct.iter().map(|k| k.0.as_str()).collect();
    let op_ids: Vec<&str> = distinct.iter().map(|k| k.1.as_str()).collect();

    // Prepared first (from the cache after a connection's first group), so the statements
    // below leave in the order written.
    let features_sql = touched_features_sql();
    let (layer_st, keys_st, features_st, locks_st) = tokio::try_join!(
        db.prepare_cached(LOCK_LAYER),
        db.prepare_cached(RECORDED_OUTCOMES),
        db.prepare_cached(&features_sql),
        db.prepare_cached(TOUCHED_LOCKS),
    )
    .map_err(db_err)?;
    let stamp = sql_i64(now);
    let (begun, layer_row, key_rows, feature_rows, lock_rows_) = tokio::join!(
        biased;
        db.batch_execute(BEGIN),
        async { db.query_opt(&layer_st, &[layer_name]).await },
        async {
            if scopes.is_empty() {
                return Ok(Vec::new());
            }
            db.query(&keys_st, &[&scopes, &op_ids]).await
        },
        async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            db.query(&features_st, &[layer_name, &ids]).await
        },
        async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            db.query(&locks_st, &[layer_name, &ids, &stamp]).await
        },
    );
    begun.map_err(db_err)?;
    let layer = match layer_row.map_err(db_err)? {
        Some(row) => layer_from_row(&row, layer_name),
        None => Err(StoreError::LayerNotFound(layer_name.clone())),
    };
    // A key's outcome, or `None` for a key an older node claimed and has not answered yet.
    let recorded: HashMap<Key, Option<String>> = key_rows
        .map_err(db_err)?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let (feature_rows, lock_rows_) = (feature_rows.map_err(db_err)?, lock_rows_.map_err(db_err)?);
    let mut outcomes: Vec<Option<Result<WriteOutcome>>> = vec![None; reqs.len()];

    // Replays of outcomes committed before this group, and requests that are invalid as
    // they stand, are answered whatever the layer's state.
    for (i, req) in reqs.iter().enumerate() {
        let before = match keys[i].as_ref().and_then(|k| recorded.get(k)) {
            Some(Some(body)) => Some(body.as_str()),
            Some(None) => {
                outcomes[i] = Some(Err(StoreError::Unavailable(
                    "the operation id is being used by another write; retry".into(),
                )));
                continue;
            }
            None => None,
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
            let outcomes = outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Err(e.clone())))
                .collect();
            return Ok(GroupEnd::Done(outcomes));
        }
    };

    let (mut slots, locks) = touched(&feature_rows, &lock_rows_)?;

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
        return Ok(GroupEnd::Done(outcomes));
    }
    let (ended, written) = write_group(
        inner,
        db,
        &layer,
        &slots,
        (&seqs, &bodies),
        &outcome_keys,
        now,
    )
    .await;
    tx.ended = ended;
    Ok(match written? {
        Written::Committed => GroupEnd::Done(outcomes),
        Written::Raced => GroupEnd::Raced,
    })
}

/// The touched features (row-locked) as the group's slots, and their live locks.
fn touched(
    features: &[tokio_postgres::Row],
    locks: &[tokio_postgres::Row],
) -> Result<(HashMap<String, Slot>, LiveLocks)> {
    let mut slots = HashMap::with_capacity(features.len());
    for r in features {
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
    Ok((slots, lock_rows(locks)?))
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

// The group's writes, one statement per kind of row.
const DELETE_FEATURES: &str = "DELETE FROM features WHERE ord = ANY($1)";
const UPDATE_FEATURES: &str = "UPDATE features f SET version = t.v, updated_ms = $1, properties = t.p, \
             geometry = CASE WHEN t.w THEN t.g ELSE f.geometry END, \
             geom = CASE WHEN t.w THEN ST_SetSRID(ST_GeomFromGeoJSON(t.g), 4326) ELSE f.geom END, \
             minx = t.x0, miny = t.y0, maxx = t.x1, maxy = t.y1 \
             FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bool[], $6::jsonb[], \
             $7::float8[], $8::float8[], $9::float8[], $10::float8[]) AS t(o, v, g, w, p, x0, y0, x1, y1) \
             WHERE f.ord = t.o";
const INSERT_FEATURES: &str = "INSERT INTO features (layer, fid, version, updated_ms, geometry, geom, properties, minx, miny, maxx, maxy) \
             SELECT $1, t.f, t.v, $2, t.g, ST_SetSRID(ST_GeomFromGeoJSON(t.g), 4326), t.p, t.x0, t.y0, t.x1, t.y1 \
             FROM unnest($3::text[], $4::bigint[], $5::text[], $6::jsonb[], $7::float8[], $8::float8[], \
             $9::float8[], $10::float8[]) WITH ORDINALITY AS t(f, v, g, p, x0, y0, x1, y1, n) ORDER BY t.n";
const APPEND_CHANGES: &str = "INSERT INTO changes (layer, seq, body) SELECT $1, s, b FROM unnest($2::bigint[], $3::text[]) AS t(s, b)";
const SET_HEAD: &str = "UPDATE layers SET seq = $2, count = $3 WHERE id = $1";
const PRUNE_CHANGES: &str = "DELETE FROM changes WHERE layer = $1 AND seq <= $2";
/// No `ON CONFLICT`: a key recorded by another transaction since this group read the keys
/// fails the group (see [`GroupEnd::Raced`]). Sorted, so that two groups inserting the same
/// keys wait for each other instead of deadlocking.
const RECORD_OUTCOMES: &str = "INSERT INTO op_ids (scope, op_id, time_ms, outcome) \
             SELECT s, i, $4, b FROM unnest($1::text[], $2::text[], $3::text[]) AS t(s, i, b) ORDER BY s, i";

/// What became of a group's writes.
enum Written {
    Committed,
    /// See [`GroupEnd::Raced`].
    Raced,
}

/// Writes what the group decided, each statement carrying every row of its kind, and
/// commits, all in one round trip. Returns whether the transaction is over (its COMMIT came
/// back: committed, or rolled back because a statement before it failed), and what became
/// of the writes.
async fn write_group(
    inner: &Inner,
    db: &Db,
    layer: &LayerRow,
    slots: &HashMap<String, Slot>,
    (seqs, bodies): (&[i64], &[String]),
    outcome_keys: &(Vec<String>, Vec<String>, Vec<String>),
    now: u64,
) -> (bool, Result<Written>) {
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
    // Prepared first (from the cache after a connection's first group), so the statements
    // below leave in the order written: the delete before the inserts, so that a feature
    // deleted and created again in one group keeps its id.
    let prepared = tokio::try_join!(
        db.prepare_cached(DELETE_FEATURES),
        db.prepare_cached(UPDATE_FEATURES),
        db.prepare_cached(INSERT_FEATURES),
        db.prepare_cached(APPEND_CHANGES),
        db.prepare_cached(SET_HEAD),
        db.prepare_cached(PRUNE_CHANGES),
        db.prepare_cached(RECORD_OUTCOMES),
    );
    let (delete_st, update_st, insert_st, log_st, head_st, prune_st, record_st) = match prepared {
        Ok(p) => p,
        Err(e) => return (false, Err(db_err(e))),
    };
    let delete = async {
        if deleted.is_empty() {
            return Ok(0);
        }
        db.execute(&delete_st, &[&deleted]).await
    };
    let update = async {
        if updates.is_empty() {
            return Ok(0);
        }
        let ords: Vec<i64> = updates.iter().filter_map(|r| r.ord).collect();
        let cols = Columns::of(&updates);
        let written: Vec<bool> = updates.iter().map(|r| r.geometry_written).collect();
        db.execute(
            &update_st,
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
        db.execute(
            &insert_st,
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
    let log = async { db.execute(&log_st, &[&layer.id, &seqs, &bodies]).await };
    let head = async {
        db.execute(
            &head_st,
            &[&layer.id, &sql_i64(layer.seq), &sql_i64(layer.count)],
        )
        .await
    };
    let cut = sql_i64(layer.seq.saturating_sub(inner.opts.change_retention));
    let prune = async {
        if cut > 0 {
            db.execute(&prune_st, &[&layer.id, &cut]).await
        } else {
            Ok(0)
        }
    };
    let stamp = sql_i64(now);
    let record = async {
        if outcome_keys.0.is_empty() {
            return Ok(0);
        }
        db.execute(
            &record_st,
            &[&outcome_keys.0, &outcome_keys.1, &outcome_keys.2, &stamp],
        )
        .await
    };
    // Sent together with the COMMIT: one round trip.
    let (deleted_rows, updated, inserted, log, head, prune, record, commit) = tokio::join!(
        biased;
        delete,
        update,
        insert,
        log,
        head,
        prune,
        record,
        db.batch_execute("COMMIT")
    );
    let ended = commit.is_ok();
    if let Err(e) = &record
        && e.code() == Some(&SqlState::UNIQUE_VIOLATION)
    {
        return (ended, Ok(Written::Raced));
    }
    // Pipelined: after the first failure the others only report an aborted transaction, so
    // the reason is the data exception if there is one.
    let errors: Vec<StoreError> = [
        &deleted_rows,
        &log,
        &head,
        &prune,
        &record,
        &updated,
        &inserted,
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
        return (ended, Err(e.clone()));
    }
    if let Err(e) = commit {
        return (false, Err(db_err(e)));
    }
    let (updated, inserted) = (updated.unwrap_or(0), inserted.unwrap_or(0));
    if updated != updates.len() as u64 || inserted != inserts.len() as u64 {
        // The rows were locked when read, so this cannot happen; the group is committed.
        tracing::error!(
            layer = layer.name,
            updated,
            inserted,
            expected_updates = updates.len(),
            expected_inserts = inserts.len(),
            "A PostgreSQL write group wrote other rows than it planned."
        );
    }
    (true, Ok(Written::Committed))
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
