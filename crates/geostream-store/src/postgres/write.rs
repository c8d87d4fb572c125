//! Writes: layers, edits (group commit across layers, see the module docs for the locking)
//! and feature locks.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};

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

// ----- edits: group commit across layers -----

/// A write waiting for a group.
pub(crate) struct Pending {
    req: WriteRequest,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

/// Most requests in one group, and most operations (a group's statements carry one array
/// element per feature).
const MAX_GROUP_REQUESTS: usize = 512;
const MAX_GROUP_OPS: usize = 8192;

/// Most groups one node has in flight at once. A group takes what every layer without a
/// group in flight has waiting, so one chain of groups carries a node's small edits over any
/// number of layers: fewer, larger transactions, each with one WAL flush (measured on two
/// cores with three nodes and eight layers: a second chain for small groups made the groups
/// half as large and the edits a quarter slower). A second group starts only beside a
/// [large](LARGE_GROUP_OPS) one, so that a replay's batches, or a group waiting for its
/// layer's row lock behind another node's batch, do not hold up every other layer's edits.
const MAX_GROUPS_IN_FLIGHT: usize = 2;

/// A group of more operations than this is large (see [`MAX_GROUPS_IN_FLIGHT`]).
const LARGE_GROUP_OPS: usize = 64;

/// The node's writes waiting for a group, and the groups in flight.
#[derive(Default)]
pub(crate) struct WriteQueues {
    /// Waiting writes by layer, each layer's in arrival order.
    waiting: HashMap<String, VecDeque<Pending>>,
    /// The layers with waiting writes, each once, longest waiting first.
    order: VecDeque<String>,
    /// Layers in a group in flight: a layer's next writes wait for its group's COMMIT, so
    /// that its groups commit in the order they were formed.
    in_flight: HashSet<String>,
    /// Flusher tasks running (at most [`MAX_GROUPS_IN_FLIGHT`]).
    flushers: usize,
    /// Of those, the ones committing a large group.
    large: usize,
}

impl WriteQueues {
    /// Queues a write; true when a new flusher must start to take it.
    fn push(&mut self, p: Pending) -> bool {
        let layer = &p.req.layer;
        // A flusher that is not committing a large group takes this write next.
        let startable = !self.in_flight.contains(layer)
            && self.flushers < MAX_GROUPS_IN_FLIGHT
            && self.flushers == self.large;
        match self.waiting.get_mut(layer) {
            Some(q) => q.push_back(p),
            None => {
                self.order.push_back(layer.clone());
                self.waiting.insert(layer.clone(), VecDeque::from([p]));
            }
        }
        if startable {
            self.flushers += 1;
        }
        startable
    }

    /// The next group: what the layers without a group in flight have waiting, longest
    /// waiting layer first, up to the group's limits (at least one request). The layers it
    /// takes are in flight until [`WriteQueues::done`]. Empty when nothing can be taken;
    /// with the layers taken, once each, and whether the group is large.
    fn take(&mut self) -> (Vec<Pending>, Vec<String>, bool) {
        let mut group = Vec::new();
        let mut layers = Vec::new();
        let (mut ops, mut i) = (0, 0);
        while i < self.order.len() && group.len() < MAX_GROUP_REQUESTS {
            let layer = &self.order[i];
            if self.in_flight.contains(layer) {
                i += 1;
                continue;
            }
            let q = self.waiting.get_mut(layer).expect("an ordered layer waits");
            let before = group.len();
            while let Some(p) = q.front() {
                let n = p.req.ops.len().max(1);
                if !group.is_empty()
                    && (ops + n > MAX_GROUP_OPS || group.len() == MAX_GROUP_REQUESTS)
                {
                    break;
                }
                ops += n;
                group.push(q.pop_front().expect("a front"));
            }
            if group.len() == before {
                // Not one more request fits.
                break;
            }
            self.in_flight.insert(layer.clone());
            layers.push(layer.clone());
            if q.is_empty() {
                self.waiting.remove(layer);
                self.order.remove(i);
            } else {
                // Full: the rest of this layer waits, behind the layers not served yet.
                let layer = self.order.remove(i).expect("in range");
                self.order.push_back(layer);
                break;
            }
            if ops >= MAX_GROUP_OPS {
                break;
            }
        }
        let large = ops > LARGE_GROUP_OPS;
        self.large += usize::from(large);
        (group, layers, large)
    }

    /// The group over `layers` committed (or failed): their next writes can be taken.
    fn done<'a>(&mut self, layers: impl IntoIterator<Item = &'a str>, large: bool) {
        for l in layers {
            self.in_flight.remove(l);
        }
        self.large -= usize::from(large);
    }
}

/// Queues `req` for a group and waits for its own outcome, which is sent only after the
/// group's COMMIT (or the request's own failure). A write that finds no group in flight, or
/// only a large one (and its layer in none), starts a flusher; writes that arrive while
/// groups are being committed go into the next ones together.
pub(crate) async fn apply(inner: &Arc<Inner>, req: WriteRequest) -> Result<WriteOutcome> {
    let (reply, answer) = oneshot::channel();
    if inner.queues.lock().push(Pending { req, reply }) {
        tokio::spawn(flush(inner.clone()));
    }
    answer
        .await
        .map_err(|_| StoreError::Unavailable("the write was dropped by the store".into()))?
}

/// Commits groups until no waiting write can be taken (what is left waits for a layer in
/// another flusher's group, and that flusher takes it next).
async fn flush(inner: Arc<Inner>) {
    let mut layers: Vec<String> = Vec::new();
    let mut large = false;
    loop {
        let group = {
            let mut queues = inner.queues.lock();
            queues.done(layers.iter().map(String::as_str), large);
            let group;
            (group, layers, large) = queues.take();
            if group.is_empty() {
                queues.flushers -= 1;
                return;
            }
            group
        };
        let (reqs, replies): (Vec<WriteRequest>, Vec<_>) =
            group.into_iter().map(|p| (p.req, p.reply)).unzip();
        // A panic is a bug, but it must cost this group, not every later write.
        let outcomes = AssertUnwindSafe(commit_group(&inner, &reqs))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(
                    layers = layers.join(","),
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

/// The group's first round trip, in this order: the rows of the group's layers are locked,
/// in name order (every write of a layer, on every node, passes here one at a time, and two
/// groups that share layers lock them in the same order); then, each statement seeing what
/// was committed before the locks were granted, the outcomes recorded for the group's
/// idempotency keys and the touched features (row-locked) with their live locks.
///
/// Each key is looked up by its own index probe (a `LATERAL` subquery with `LIMIT`, which the
/// planner cannot flatten into a join): these statements are prepared once per connection,
/// and a generic plan made while a table was small (a hash join over a sequential scan) would
/// otherwise be kept while the table grows to millions of rows.
const LOCK_LAYER: &str =
    "SELECT id, last_writer_wins, seq, count FROM layers WHERE name = $1 FOR UPDATE";
const LOCK_LAYERS: &str = "SELECT id, last_writer_wins, seq, count, name FROM layers \
     WHERE name = ANY($1) ORDER BY name FOR UPDATE";
const RECORDED_OUTCOMES: &str = "SELECT t.s, t.i, o.outcome \
     FROM unnest($1::text[], $2::text[]) AS t(s, i) \
     CROSS JOIN LATERAL (SELECT outcome FROM op_ids WHERE scope = t.s AND op_id = t.i LIMIT 1) o";
/// `(layer name, feature id)` pairs; the layer name comes last.
const TOUCHED_LOCKS: &str = "SELECT k.fid, k.holder_client, k.holder_user, k.until_ms, t.l \
     FROM unnest($1::text[], $2::text[]) AS t(l, f) \
     CROSS JOIN LATERAL (SELECT * FROM locks WHERE layer = (SELECT id FROM layers WHERE name = t.l) \
     AND fid = t.f AND until_ms > $3 LIMIT 1) k";

/// Like [`TOUCHED_LOCKS`]: the features, row-locked, then their layer's name.
static TOUCHED_FEATURES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {FEATURE_COLUMNS}, t.l FROM unnest($1::text[], $2::text[]) AS t(l, f) \
         CROSS JOIN LATERAL (SELECT * FROM features WHERE layer = (SELECT id FROM layers WHERE name = t.l) \
         AND fid = t.f LIMIT 1 FOR UPDATE) r"
    )
});

/// Where the layer's name is in a row of [`TOUCHED_FEATURES`] and of [`TOUCHED_LOCKS`].
const FEATURE_LAYER_COLUMN: usize = 10;
const LOCK_LAYER_COLUMN: usize = 4;

/// Generic plans only, inside the group's transaction: the statements are prepared once per
/// connection and written to need no custom plan, and PostgreSQL would otherwise plan some of
/// them again on every execution (measured: most of its CPU time with small groups on many
/// layers).
const BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// How a group's statements ended.
enum GroupEnd {
    /// One outcome per request, each error its request's own.
    Done(Vec<Result<WriteOutcome>>),
    /// Another transaction (another group, or another node) recorded one of the group's
    /// idempotency keys after this group read them: the group was rolled back, and its next
    /// run finds that outcome and replays it.
    Raced,
}

/// Times a group runs again after losing a race for an idempotency key.
const MAX_KEY_RACES: usize = 3;

/// Runs a group's transaction. `Err`: the transaction failed as a whole (nothing of it is
/// in the database); `Ok`: one outcome per request, each error its request's own.
///
/// Two round trips: BEGIN with the layer locks and the reads (see [`LOCK_LAYERS`]), then
/// every write with the COMMIT. The layers' row locks are held across both, so on a busy
/// machine, where a round trip costs a few hundred microseconds of scheduling, their number
/// bounds a hot layer's rate of groups.
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

/// One layer of a group: its row (locked), and the features the group touches (and their
/// live locks) as the group's requests so far left them.
struct LayerState {
    row: LayerRow,
    slots: HashMap<String, Slot>,
    locks: LiveLocks,
    /// The sequence numbers and bodies of the changes the group appends to the layer's log.
    seqs: Vec<i64>,
    bodies: Vec<String>,
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
    let layer_names: Vec<&str> = reqs
        .iter()
        .map(|r| r.layer.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Every feature any request names is read and row-locked, including those of requests
    // that turn out to be replays (a few rows locked for nothing, no extra round trip).
    let targets: Vec<Vec<Result<String>>> = reqs
        .iter()
        .map(|r| r.ops.iter().map(plan::target).collect())
        .collect();
    let pairs: BTreeSet<(&str, &str)> = reqs
        .iter()
        .zip(&targets)
        .flat_map(|(r, t)| {
            t.iter()
                .filter_map(|t| t.as_deref().ok())
                .map(|id| (r.layer.as_str(), id))
        })
        .collect();
    let (pair_layers, pair_ids): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    let distinct: BTreeSet<&Key> = keys.iter().flatten().collect();
    let scopes: Vec<&str> = distinct.iter().map(|k| k.0.as_str()).collect();
    let op_ids: Vec<&str> = distinct.iter().map(|k| k.1.as_str()).collect();

    // Prepared first (from the cache after a connection's first group), so the statements
    // below leave in the order written.
    let (layers_st, keys_st, features_st, locks_st) = tokio::try_join!(
        db.prepare_cached(LOCK_LAYERS),
        db.prepare_cached(RECORDED_OUTCOMES),
        db.prepare_cached(&TOUCHED_FEATURES),
        db.prepare_cached(TOUCHED_LOCKS),
    )
    .map_err(db_err)?;
    let stamp = sql_i64(now);
    let (begun, layer_rows, key_rows, feature_rows, lock_rows_) = tokio::join!(
        biased;
        db.batch_execute(BEGIN),
        async { db.query(&layers_st, &[&layer_names]).await },
        async {
            if scopes.is_empty() {
                return Ok(Vec::new());
            }
            db.query(&keys_st, &[&scopes, &op_ids]).await
        },
        async {
            if pair_ids.is_empty() {
                return Ok(Vec::new());
            }
            db.query(&features_st, &[&pair_layers, &pair_ids]).await
        },
        async {
            if pair_ids.is_empty() {
                return Ok(Vec::new());
            }
            db.query(&locks_st, &[&pair_layers, &pair_ids, &stamp]).await
        },
    );
    begun.map_err(db_err)?;
    let layer_rows = layer_rows.map_err(db_err)?;
    // A key's outcome, or `None` for a key an older node claimed and has not answered yet.
    let recorded: HashMap<Key, Option<String>> = key_rows
        .map_err(db_err)?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let (feature_rows, lock_rows_) = (feature_rows.map_err(db_err)?, lock_rows_.map_err(db_err)?);
    let mut layers = touched(&layer_rows, &feature_rows, &lock_rows_)?;
    let mut outcomes: Vec<Option<Result<WriteOutcome>>> = vec![None; reqs.len()];

    // Replays of outcomes committed before this group, requests that are invalid as they
    // stand, and requests to layers that do not exist are answered first.
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
            Ok(None) if !layers.contains_key(&req.layer) => {
                outcomes[i] = Some(Err(StoreError::LayerNotFound(req.layer.clone())))
            }
            Ok(None) => {}
            Ok(Some(replayed)) => outcomes[i] = Some(Ok(replayed)),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }

    // Plan the requests in order, each against its layer's state so far in the group.
    let mut in_group: HashMap<Key, String> = HashMap::new();
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
        let layer = layers.get_mut(&req.layer).ok_or_else(lost)?;
        let w = plan::Writer {
            holder: &req.writer,
            op_id: req.op_id.as_deref(),
            now,
            updated: &updated,
        };
        match plan_request(req, &targets[i], layer, w) {
            Ok((changes, rows, count)) => {
                let encoded: Vec<String> = changes
                    .iter()
                    .map(plan::encode_change)
                    .collect::<Result<_>>()?;
                layer.row.seq = changes.last().map_or(layer.row.seq, |c| c.seq);
                layer.row.count = count;
                for (id, row) in rows {
                    match layer.slots.get_mut(&id) {
                        Some(slot) => slot.now = row,
                        None => {
                            layer.slots.insert(
                                id,
                                Slot {
                                    original: None,
                                    now: row,
                                },
                            );
                        }
                    }
                }
                layer.seqs.extend(changes.iter().map(|c| sql_i64(c.seq)));
                if let Some(k) = &keys[i] {
                    let body = format!("[{}]", encoded.join(","));
                    outcome_keys.0.push(k.0.clone());
                    outcome_keys.1.push(k.1.clone());
                    outcome_keys.2.push(body.clone());
                    in_group.insert(k.clone(), body);
                }
                layer.bodies.extend(encoded);
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
    if layers.values().all(|l| l.seqs.is_empty()) {
        return Ok(GroupEnd::Done(outcomes));
    }
    let (ended, written) = write_group(inner, db, &layers, &outcome_keys, now).await;
    tx.ended = ended;
    Ok(match written? {
        Written::Committed => GroupEnd::Done(outcomes),
        Written::Raced => GroupEnd::Raced,
    })
}

/// The group's layers (locked rows) by name, each with its touched features (row-locked) as
/// slots and their live locks. A layer that does not exist is missing.
fn touched(
    layer_rows: &[tokio_postgres::Row],
    features: &[tokio_postgres::Row],
    locks: &[tokio_postgres::Row],
) -> Result<HashMap<String, LayerState>> {
    let mut layers = HashMap::with_capacity(layer_rows.len());
    for r in layer_rows {
        let name: String = r.try_get(4).map_err(|e| corrupt("layer row", e))?;
        let row = layer_from_row(r, &name)?;
        layers.insert(
            name,
            LayerState {
                row,
                slots: HashMap::new(),
                locks: LiveLocks::new(),
                seqs: Vec::new(),
                bodies: Vec::new(),
            },
        );
    }
    // A feature or lock of a layer the group could not lock cannot be read: the layer row
    // is gone, and so are its rows.
    for r in features {
        let s = StoredFeature::from_row(r, 0)?;
        let layer: String = r
            .try_get(FEATURE_LAYER_COLUMN)
            .map_err(|e| corrupt("feature row", e))?;
        let Some(l) = layers.get_mut(&layer) else {
            continue;
        };
        l.slots.insert(
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
    for r in locks {
        let layer: String = r
            .try_get(LOCK_LAYER_COLUMN)
            .map_err(|e| corrupt("lock", e))?;
        let Some(l) = layers.get_mut(&layer) else {
            continue;
        };
        let (fid, lock) = lock_row(r)?;
        l.locks.insert(fid, lock);
    }
    Ok(layers)
}

/// Plans one request against its layer's state in the group: its changes, the rows it
/// leaves (by id) and the layer's count after it. Changes nothing: an error leaves the
/// group as it was.
#[allow(clippy::type_complexity)]
fn plan_request(
    req: &WriteRequest,
    targets: &[Result<String>],
    layer: &LayerState,
    w: plan::Writer<'_>,
) -> Result<(Vec<Change>, HashMap<String, Option<Row>>, u64)> {
    let mut rows: HashMap<String, Option<Row>> = HashMap::new();
    let mut changes: Vec<Change> = Vec::with_capacity(req.ops.len());
    let mut seq = layer.row.seq;
    let mut count = layer.row.count;
    for (op, target) in req.ops.iter().zip(targets) {
        let id = target.clone()?;
        let row: Option<Row> = match rows.get(&id) {
            Some(r) => r.clone(),
            None => layer.slots.get(&id).and_then(|s| s.now.clone()),
        };
        let planned = plan::plan(
            op.clone(),
            id.clone(),
            row.as_ref().map(|r| (r.feature.clone(), r.bbox)),
            layer.locks.get(&id).map(|(h, u)| (h, *u)),
            plan::Layer {
                name: &layer.row.name,
                lww: layer.row.lww,
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

// The group's writes, one statement per kind of row, each carrying the rows of every layer
// of the group (the change log is pruned per layer).
const DELETE_FEATURES: &str = "DELETE FROM features WHERE ord = ANY($1)";
const UPDATE_FEATURES: &str = "UPDATE features f SET version = t.v, updated_ms = $1, properties = t.p, \
             geometry = CASE WHEN t.w THEN t.g ELSE f.geometry END, \
             geom = CASE WHEN t.w THEN ST_SetSRID(ST_GeomFromGeoJSON(t.g), 4326) ELSE f.geom END, \
             minx = t.x0, miny = t.y0, maxx = t.x1, maxy = t.y1 \
             FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bool[], $6::jsonb[], \
             $7::float8[], $8::float8[], $9::float8[], $10::float8[]) AS t(o, v, g, w, p, x0, y0, x1, y1) \
             WHERE f.ord = t.o";
const INSERT_FEATURES: &str = "INSERT INTO features (layer, fid, version, updated_ms, geometry, geom, properties, minx, miny, maxx, maxy) \
             SELECT t.l, t.f, t.v, $1, t.g, ST_SetSRID(ST_GeomFromGeoJSON(t.g), 4326), t.p, t.x0, t.y0, t.x1, t.y1 \
             FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::jsonb[], $7::float8[], $8::float8[], \
             $9::float8[], $10::float8[]) WITH ORDINALITY AS t(l, f, v, g, p, x0, y0, x1, y1, n) ORDER BY t.n";
const APPEND_CHANGES: &str = "INSERT INTO changes (layer, seq, body) \
             SELECT l, s, b FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS t(l, s, b)";
const SET_HEADS: &str = "UPDATE layers l SET seq = t.s, count = t.c \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS t(i, s, c) WHERE l.id = t.i";
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
    layers: &HashMap<String, LayerState>,
    outcome_keys: &(Vec<String>, Vec<String>, Vec<String>),
    now: u64,
) -> (bool, Result<Written>) {
    let mut deleted: Vec<i64> = Vec::new();
    let mut updates: Vec<&Row> = Vec::new();
    let mut inserts: Vec<(i64, &Row)> = Vec::new();
    let (mut log_layers, mut log_seqs, mut log_bodies) = (Vec::new(), Vec::new(), Vec::new());
    let (mut head_ids, mut head_seqs, mut head_counts) = (Vec::new(), Vec::new(), Vec::new());
    let mut cuts: Vec<(i64, i64)> = Vec::new();
    for layer in layers.values() {
        if layer.seqs.is_empty() {
            continue;
        }
        let id = layer.row.id;
        for slot in layer.slots.values() {
            let kept = slot.now.as_ref().and_then(|r| r.ord);
            if let Some(o) = slot.original
                && kept != Some(o)
            {
                deleted.push(o);
            }
            match &slot.now {
                Some(r) if r.ord.is_none() => inserts.push((id, r)),
                Some(r) if r.dirty => updates.push(r),
                _ => {}
            }
        }
        log_layers.extend(std::iter::repeat_n(id, layer.seqs.len()));
        log_seqs.extend_from_slice(&layer.seqs);
        log_bodies.extend(layer.bodies.iter().map(String::as_str));
        head_ids.push(id);
        head_seqs.push(sql_i64(layer.row.seq));
        head_counts.push(sql_i64(layer.row.count));
        let cut = sql_i64(layer.row.seq.saturating_sub(inner.opts.change_retention));
        if cut > 0 {
            cuts.push((id, cut));
        }
    }
    // A layer's features are created in the order of their changes.
    inserts.sort_by_key(|(layer, r)| (*layer, r.created));
    // Prepared first (from the cache after a connection's first group), so the statements
    // below leave in the order written: the delete before the inserts, so that a feature
    // deleted and created again in one group keeps its id.
    let prepared = tokio::try_join!(
        db.prepare_cached(DELETE_FEATURES),
        db.prepare_cached(UPDATE_FEATURES),
        db.prepare_cached(INSERT_FEATURES),
        db.prepare_cached(APPEND_CHANGES),
        db.prepare_cached(SET_HEADS),
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
        let ids: Vec<i64> = inserts.iter().map(|(l, _)| *l).collect();
        let rows: Vec<&Row> = inserts.iter().map(|(_, r)| *r).collect();
        let fids: Vec<&str> = rows.iter().map(|r| r.feature.id.as_str()).collect();
        let cols = Columns::of(&rows);
        db.execute(
            &insert_st,
            &[
                &sql_i64(now),
                &ids,
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
        db.execute(&log_st, &[&log_layers, &log_seqs, &log_bodies])
            .await
    };
    let head = async {
        db.execute(&head_st, &[&head_ids, &head_seqs, &head_counts])
            .await
    };
    let prune = async {
        let mut pruned = 0;
        for (id, cut) in &cuts {
            pruned += db.execute(&prune_st, &[id, cut]).await?;
        }
        Ok(pruned)
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
            layers = head_ids.len(),
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
    rows.iter().map(lock_row).collect()
}

/// A lock row `(fid, holder_client, holder_user, until_ms, ..)`.
fn lock_row(r: &tokio_postgres::Row) -> Result<(String, (Holder, u64))> {
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
