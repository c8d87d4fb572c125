//! The writer thread: group commit, and every mutation of the database.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use geostream_core::api::validate_name;
use geostream_core::feature::{BBox, Change, ChangeOp, format_time_ms};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::codec::{FEATURE_COLUMNS, StoredFeature, corrupt};
use super::moved_boxes::{EntryWrite, MovedBoxes};
use super::op_index::OpIndex;
use super::schema::{create_rtree_sql, rtree_box, rtree_table};
use super::{SqliteOptions, db_err};
use crate::plan::{self, Planned};
use crate::{
    Holder, LayerInfo, LayerSpec, Lock, Result, StoreError, TileAddress, TilePut, WriteOp,
    WriteOutcome, WriteRequest,
};

/// A unit of work for the writer: run inside the group's transaction, answered after the
/// commit.
pub(crate) trait Job: Send {
    /// Runs the work; true when it succeeded (its savepoint is kept).
    fn run(&mut self, w: &mut Writer, now: u64) -> bool;
    /// Whether the work needs a savepoint to be undone when it fails. Work that makes all
    /// its checks before its first write (a single-operation edit) does not: skipping the
    /// savepoint spares copying every page it touches into the savepoint journal.
    fn savepoint(&self) -> bool;
    /// Sends the answer, given how the group's commit went.
    fn finish(self: Box<Self>, commit: &Result<()>);
}

/// A [`Job`] made of a closure and the oneshot its caller waits on.
pub(crate) struct Task<T, F> {
    work: Option<F>,
    savepoint: bool,
    reply: oneshot::Sender<Result<T>>,
    result: Option<Result<T>>,
}

impl<T, F> Task<T, F> {
    /// See [`Job::savepoint`] for `savepoint`.
    pub(crate) fn new(work: F, reply: oneshot::Sender<Result<T>>, savepoint: bool) -> Self {
        Task {
            work: Some(work),
            savepoint,
            reply,
            result: None,
        }
    }
}

impl<T, F> Job for Task<T, F>
where
    T: Send,
    F: FnOnce(&mut Writer, u64) -> Result<T> + Send,
{
    fn run(&mut self, w: &mut Writer, now: u64) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(w, now);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn savepoint(&self) -> bool {
        self.savepoint
    }

    fn finish(self: Box<Self>, commit: &Result<()>) {
        let answer = match (self.result, commit) {
            // Its own failure stands (it changed nothing either way).
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) | (None, Err(e)) => Err(e.clone()),
            (None, Ok(())) => Err(StoreError::Unavailable(
                "internal error while applying the request".into(),
            )),
        };
        // The caller may have gone away; the work is done regardless.
        let _ = self.reply.send(answer);
    }
}

/// A layer row as the writer keeps it during a group: read once, updated in memory by each
/// successful request, written back once before COMMIT.
#[derive(Clone)]
struct LayerRow {
    id: i64,
    name: String,
    lww: bool,
    seq: u64,
    count: u64,
    /// Changed in this group, to be written back.
    dirty: bool,
    /// The layer has rows in `locks` (live or expired): only then does an edit look for
    /// a live lock on its feature. Read with the row, set when the group takes a lock.
    has_locks: bool,
}

/// Where the answers of a committed group go.
pub(crate) enum Acks {
    /// Straight to the callers (the commit itself was synced, or syncing is off).
    Direct,
    /// To the sync thread, which answers once the WAL is on disk.
    Synced(mpsc::Sender<Vec<Box<dyn Job>>>),
}

/// Owns the write connection; lives on the writer thread.
pub(crate) struct Writer {
    conn: Connection,
    acks: Acks,
    /// Set by the checkpointer when the WAL has grown long: the writer then checkpoints
    /// between two groups (see [`Writer::checkpoint_tail`]).
    wal_restart: Arc<AtomicBool>,
    change_retention: u64,
    op_id_retention_ms: u64,
    lock_reap_ms: u64,
    /// The layers read or written in the current group, by name (see [`LayerRow`]).
    layers: HashMap<String, LayerRow>,
    /// Idempotency keys.
    ops: OpIndex,
    /// Features recently read or written, by layer id and feature id: an edit's feature
    /// is usually one edited moments ago, and this spares the read and JSON parse of its
    /// row. Kept exactly in step with the database: updated by every write, emptied when
    /// a write is rolled back and when another connection has committed (see
    /// `data_version`). At most [`FEATURE_CACHE`] entries.
    features: HashMap<i64, HashMap<String, StoredFeature>>,
    cached: usize,
    /// `PRAGMA data_version` when last read: it changes when another connection commits.
    data_version: i64,
    /// The R-tree entries the group has moved, written before its COMMIT (see
    /// [`MovedBoxes`]).
    boxes: MovedBoxes,
}

/// What an edit needs of a stored feature's row besides the feature itself.
struct Stored {
    ord: i64,
    bbox: Option<BBox>,
    geometry_json: Option<String>,
}

/// Most features the writer keeps in memory (a few megabytes).
const FEATURE_CACHE: usize = 8192;

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        opts: &SqliteOptions,
        acks: Acks,
        wal_restart: Arc<AtomicBool>,
    ) -> Result<Writer> {
        Ok(Writer {
            ops: OpIndex::load(&conn)?,
            conn,
            acks,
            wal_restart,
            change_retention: opts.change_retention,
            op_id_retention_ms: opts.op_id_retention_ms,
            lock_reap_ms: opts.lock_reap_ms,
            layers: HashMap::new(),
            features: HashMap::new(),
            cached: 0,
            data_version: 0,
            boxes: MovedBoxes::default(),
        })
    }

    /// Forgets every cached feature.
    fn forget_features(&mut self) {
        self.features.clear();
        self.cached = 0;
    }

    /// Caches a feature as it now is in the database.
    fn remember(&mut self, layer: i64, f: StoredFeature) {
        if self.cached >= FEATURE_CACHE {
            self.forget_features();
        }
        let old = self
            .features
            .entry(layer)
            .or_default()
            .insert(f.feature.id.clone(), f);
        if old.is_none() {
            self.cached += 1;
        }
    }

    /// The thread's loop: wait for work, take everything queued, commit it as one group.
    pub(crate) fn run(
        mut self,
        jobs: mpsc::Receiver<Box<dyn Job>>,
        max_batch: usize,
        housekeeping: Duration,
    ) {
        let mut next_housekeeping = Instant::now() + housekeeping;
        let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch.min(4096));
        loop {
            let wait = next_housekeeping.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(wait) {
                Ok(job) => group.push(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while group.len() < max_batch {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit_group(&mut group);
            }
            // Between groups: the writer's own upkeep, in short steps.
            if self.ops.should_merge() {
                self.merge_op_index();
            }
            if self.wal_restart.swap(false, Ordering::Relaxed) {
                self.checkpoint_tail();
            }
            if Instant::now() >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = Instant::now() + housekeeping;
            }
        }
        tracing::debug!("SQLite writer stopped.");
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(db_err)
    }

    /// One transaction for the whole group, one savepoint per job, answers after COMMIT.
    fn commit_group(&mut self, group: &mut Vec<Box<dyn Job>>) {
        self.layers.clear();
        self.boxes.clear();
        // Another process writing the same file would make the cache stale.
        match self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
        {
            Ok(v) if v == self.data_version => {}
            Ok(v) => {
                self.data_version = v;
                self.forget_features();
            }
            Err(_) => self.forget_features(),
        }
        let now = super::now_ms();
        let mut outcome = self.exec("BEGIN IMMEDIATE");
        if outcome.is_ok() {
            for job in group.iter_mut() {
                let savepoint = job.savepoint();
                if savepoint {
                    if let Err(e) = self.exec("SAVEPOINT request") {
                        outcome = Err(e);
                        break;
                    }
                    self.boxes.begin_request();
                }
                let changes_before = self.conn.total_changes();
                // A panic is a bug, but it must cost one request, not the writer thread.
                let ok = std::panic::catch_unwind(AssertUnwindSafe(|| job.run(self, now)))
                    .unwrap_or_else(|_| {
                        tracing::error!("A store request panicked; it was rolled back.");
                        false
                    });
                if savepoint {
                    if ok {
                        self.boxes.keep_request();
                    } else {
                        // Its earlier operations may have cached what is now rolled back.
                        self.forget_features();
                        self.boxes.undo_request();
                    }
                }
                let end = match (ok, savepoint) {
                    (true, true) => self.exec("RELEASE request"),
                    (false, true) => self
                        .exec("ROLLBACK TO request")
                        .and_then(|()| self.exec("RELEASE request")),
                    (true, false) => Ok(()),
                    // Failed before writing anything: nothing to undo.
                    (false, false) if self.conn.total_changes() == changes_before => Ok(()),
                    // Failed after a write (an SQL error halfway): without a savepoint the
                    // only safe undo is the whole group's.
                    (false, false) => Err(StoreError::Unavailable(
                        "a request failed halfway; its group was rolled back".into(),
                    )),
                };
                if let Err(e) = end {
                    outcome = Err(e);
                    break;
                }
                if self.conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (I/O error, disk full...):
                    // nothing of this group is in the database.
                    outcome = Err(StoreError::Unavailable(
                        "the SQLite transaction was rolled back by an error".into(),
                    ));
                    break;
                }
            }
        }
        if outcome.is_ok() {
            outcome = self
                .flush_layers()
                .and_then(|()| self.write_boxes())
                .and_then(|()| self.exec("COMMIT"));
        }
        match &outcome {
            Ok(()) => self.ops.group_committed(),
            Err(_) => self.ops.group_failed(),
        }
        if let Err(e) = &outcome {
            self.layers.clear();
            self.boxes.clear();
            self.forget_features();
            tracing::error!(error = %e, requests = group.len(), "SQLite group commit failed.");
            if !self.conn.is_autocommit() {
                let _ = self.exec("ROLLBACK");
            }
        }
        if let (Ok(()), Acks::Synced(sync)) = (&outcome, &self.acks) {
            match sync.send(std::mem::take(group)) {
                Ok(()) => return,
                Err(mpsc::SendError(jobs)) => {
                    let e = Err(StoreError::Unavailable(
                        "the SQLite sync thread has stopped".into(),
                    ));
                    jobs.into_iter().for_each(|job| job.finish(&e));
                    return;
                }
            }
        }
        for job in group.drain(..) {
            job.finish(&outcome);
        }
    }

    /// Checkpoints from the writer itself, between two groups, so the next group can start
    /// the WAL over from its beginning.
    ///
    /// Why: the checkpointer thread copies the WAL into the database while groups keep
    /// being appended, so it never finds the WAL fully copied with no write since — and
    /// SQLite only rewinds the WAL (instead of growing it) when that is the case. Here no
    /// write can slip in, and the background checkpoints have already copied most frames,
    /// so this copies only the recent tail.
    fn checkpoint_tail(&mut self) {
        let r = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            });
        match r {
            Ok((busy, log, done)) => tracing::debug!(busy, log, done, "SQLite writer checkpoint."),
            Err(e) => tracing::warn!(error = %e, "SQLite writer checkpoint failed."),
        }
    }

    /// Writes back the layers this group changed, and drops their changes beyond the
    /// retention, in the group's transaction (no extra fsync).
    fn flush_layers(&mut self) -> Result<()> {
        let mut update = self
            .conn
            .prepare_cached("UPDATE layers SET seq = ?2, count = ?3 WHERE id = ?1")
            .map_err(db_err)?;
        let mut prune = self
            .conn
            .prepare_cached("DELETE FROM changes WHERE layer = ?1 AND seq <= ?2")
            .map_err(db_err)?;
        for l in self.layers.values().filter(|l| l.dirty) {
            update
                .execute(params![l.id, sql_i64(l.seq), sql_i64(l.count)])
                .map_err(db_err)?;
            if l.seq > self.change_retention {
                prune
                    .execute(params![l.id, sql_i64(l.seq - self.change_retention)])
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// Runs `work` in a transaction of its own, between groups (rolled back on error).
    fn own_transaction<T>(&mut self, work: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        self.exec("BEGIN IMMEDIATE")?;
        let r = work(self).and_then(|v| self.exec("COMMIT").map(|()| v));
        if r.is_err() && !self.conn.is_autocommit() {
            let _ = self.exec("ROLLBACK");
        }
        r
    }

    /// Moves the next chunk of pending op-id keys into `op_index` (see [`OpIndex`]).
    fn merge_op_index(&mut self) {
        match self.own_transaction(|w| w.ops.merge_step(&w.conn)) {
            Ok(()) => self.ops.merge_committed(),
            Err(e) => {
                self.ops.merge_failed();
                tracing::warn!(error = %e, "Indexing SQLite op ids failed.");
            }
        }
    }

    /// Forgets old op ids and locks nobody reaped, in a transaction of its own.
    fn housekeeping(&mut self) {
        let now = super::now_ms();
        let op_cutoff = sql_i64(now.saturating_sub(self.op_id_retention_ms));
        let lock_cutoff = sql_i64(now.saturating_sub(self.lock_reap_ms));
        let r = self.own_transaction(|w| {
            let (ops, cut) = w.ops.expire(&w.conn, op_cutoff)?;
            let locks = w
                .conn
                .prepare_cached("DELETE FROM locks WHERE until_ms < ?1")
                .and_then(|mut s| s.execute([lock_cutoff]))
                .map_err(db_err)?;
            Ok((ops, cut, locks))
        });
        match r {
            Ok((ops, cut, locks)) => {
                self.ops.expired(cut);
                tracing::debug!(op_ids = ops, locks, "SQLite housekeeping done.");
            }
            Err(e) => tracing::warn!(error = %e, "SQLite housekeeping failed."),
        }
    }

    /// The layer's row as of this point of the group (see [`LayerRow`]).
    fn layer_row(&mut self, name: &str) -> Result<LayerRow> {
        if let Some(l) = self.layers.get(name) {
            return Ok(l.clone());
        }
        let row = self
            .conn
            .prepare_cached(
                "SELECT id, last_writer_wins, seq, count, \
                 EXISTS (SELECT 1 FROM locks WHERE locks.layer = layers.id) \
                 FROM layers WHERE name = ?1",
            )
            .and_then(|mut s| {
                s.query_row([name], |r| {
                    Ok(LayerRow {
                        id: r.get(0)?,
                        name: name.to_owned(),
                        lww: r.get(1)?,
                        seq: r.get(2)?,
                        count: r.get(3)?,
                        dirty: false,
                        has_locks: r.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(db_err)?
            .ok_or_else(|| StoreError::LayerNotFound(name.to_owned()))?;
        self.layers.insert(name.to_owned(), row.clone());
        Ok(row)
    }

    fn layer_name(&self, id: i64, names: &mut HashMap<i64, String>) -> Result<String> {
        if let Some(n) = names.get(&id) {
            return Ok(n.clone());
        }
        let name: String = self
            .conn
            .prepare_cached("SELECT name FROM layers WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(db_err)?
            .ok_or_else(|| corrupt("lock", format!("layer {id} does not exist")))?;
        names.insert(id, name.clone());
        Ok(name)
    }

    // ----- layers -----

    pub(crate) fn create_layer(&mut self, spec: LayerSpec, now: u64) -> Result<LayerInfo> {
        validate_name("layer", &spec.name).map_err(StoreError::Invalid)?;
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM layers WHERE name = ?1")
            .and_then(|mut s| s.exists([&spec.name]))
            .map_err(db_err)?;
        if exists {
            return Err(StoreError::LayerExists(spec.name));
        }
        self.conn
            .prepare_cached("INSERT INTO layers (name, title, description, last_writer_wins, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)")
            .and_then(|mut s| s.execute(params![spec.name, spec.title, spec.description, spec.last_writer_wins, sql_i64(now)]))
            .map_err(db_err)?;
        let id = self.conn.last_insert_rowid();
        self.conn
            .execute_batch(&create_rtree_sql(id))
            .map_err(db_err)?;
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

    pub(crate) fn delete_layer(&mut self, name: &str) -> Result<()> {
        let layer = self.layer_row(name)?;
        for sql in [
            "DELETE FROM features WHERE layer = ?1",
            "DELETE FROM changes WHERE layer = ?1",
            "DELETE FROM locks WHERE layer = ?1",
            "DELETE FROM layers WHERE id = ?1",
        ] {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([layer.id]))
                .map_err(db_err)?;
        }
        self.conn
            .execute_batch(&format!("DROP TABLE {}", rtree_table(layer.id)))
            .map_err(db_err)?;
        self.boxes.forget_layer(layer.id);
        // Last, so a failure above leaves the (rolled back) layer's pending row in place.
        self.layers.remove(name);
        if let Some(m) = self.features.remove(&layer.id) {
            self.cached -= m.len();
        }
        Ok(())
    }

    // ----- writes -----

    pub(crate) fn apply(&mut self, req: WriteRequest, now: u64) -> Result<WriteOutcome> {
        let scope = plan::scope(&req.writer);
        let seen = match &req.op_id {
            Some(op_id) => self.ops.lookup(&self.conn, &scope, op_id)?,
            None => None,
        };
        if let Some(replayed) = plan::start(seen.as_deref(), req.ops.len())? {
            return Ok(replayed);
        }
        let mut layer = self.layer_row(&req.layer)?;
        let updated = format_time_ms(now);
        let w = plan::Writer {
            holder: &req.writer,
            op_id: req.op_id.as_deref(),
            now,
            updated: &updated,
        };
        let mut changes = Vec::with_capacity(req.ops.len());
        // The outcome kept for the op id is the change bodies already encoded for the log.
        let mut outcome = String::from("[");
        for op in req.ops {
            let change = self.op(&mut layer, op, w)?;
            let body = plan::encode_change(&change)?;
            self.conn
                .prepare_cached("INSERT INTO changes (layer, seq, body) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![layer.id, sql_i64(change.seq), body]))
                .map_err(db_err)?;
            if req.op_id.is_some() {
                if outcome.len() > 1 {
                    outcome.push(',');
                }
                outcome.push_str(&body);
            }
            changes.push(change);
        }
        if let Some(op_id) = &req.op_id {
            outcome.push(']');
            self.ops
                .insert(&self.conn, &scope, op_id, sql_i64(now), &outcome)?;
        }
        layer.dirty = true;
        self.layers.insert(req.layer, layer);
        Ok(WriteOutcome {
            changes,
            replayed: false,
        })
    }

    /// One operation: read what the planner needs, let it decide, write what it decided.
    fn op(&mut self, layer: &mut LayerRow, op: WriteOp, w: plan::Writer<'_>) -> Result<Change> {
        let id = plan::target(&op)?;
        // Taken out of the cache, not copied: the planner keeps the feature as the change's
        // `old` side, and a successful write puts the new one back.
        let stored = self.take(layer.id, &id)?;
        let lock = if layer.has_locks {
            self.live_lock(layer.id, &id, w.now)?
        } else {
            None
        };
        let (current, stored) = match stored {
            Some(StoredFeature {
                ord,
                feature,
                bbox,
                geometry_json,
            }) => (
                Some((feature, bbox)),
                Some(Stored {
                    ord,
                    bbox,
                    geometry_json,
                }),
            ),
            None => (None, None),
        };
        let planned = plan::plan(
            op,
            id,
            current,
            lock.as_ref().map(|(h, until)| (h, *until)),
            plan::Layer {
                name: &layer.name,
                lww: layer.lww,
                seq: layer.seq,
            },
            w,
        )?;
        match planned.change.op {
            ChangeOp::Insert => self.insert(layer.id, &planned)?,
            ChangeOp::Update => {
                let stored = stored.ok_or_else(|| {
                    StoreError::Unavailable("an update without a stored feature".into())
                })?;
                self.update(layer.id, stored, &planned)?
            }
            ChangeOp::Delete => {
                let stored = stored.ok_or_else(|| {
                    StoreError::Unavailable("a delete without a stored feature".into())
                })?;
                self.delete(layer.id, stored)?
            }
        }
        layer.seq = planned.change.seq;
        layer.count = layer.count.saturating_add_signed(planned.count_delta());
        Ok(planned.change)
    }

    /// The feature as stored, taken from the cache (the caller puts back what it writes)
    /// or read from the database.
    fn take(&mut self, layer: i64, id: &str) -> Result<Option<StoredFeature>> {
        if let Some(f) = self.features.get_mut(&layer).and_then(|m| m.remove(id)) {
            self.cached -= 1;
            return Ok(Some(f));
        }
        let found = {
            let mut st = self
                .conn
                .prepare_cached(feature_by_id_sql())
                .map_err(db_err)?;
            let mut rows = st.query(params![layer, id]).map_err(db_err)?;
            match rows.next().map_err(db_err)? {
                Some(row) => Some(StoredFeature::from_row(row)?),
                None => None,
            }
        };
        Ok(found)
    }

    /// The live lock on a feature: its holder and expiry.
    fn live_lock(&self, layer: i64, id: &str, now: u64) -> Result<Option<(Holder, u64)>> {
        self.conn
            .prepare_cached("SELECT client, user, until_ms FROM locks WHERE layer = ?1 AND fid = ?2 AND until_ms > ?3")
            .and_then(|mut s| {
                s.query_row(params![layer, id, sql_i64(now)], |r| {
                    Ok((Holder { client: r.get(0)?, user: r.get(1)? }, r.get::<_, u64>(2)?))
                })
                .optional()
            })
            .map_err(db_err)
    }

    fn insert(&mut self, layer: i64, planned: &Planned) -> Result<()> {
        let c = &planned.change;
        let feature = c
            .new
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("an insert without a feature".into()))?;
        let bbox = c.new_bbox;
        let properties_json = plan::to_json(&feature.properties)?;
        let [minx, miny, maxx, maxy] = bbox.map(|b| b.map(Some)).unwrap_or_default();
        self.conn
            .prepare_cached(
                "INSERT INTO features (layer, fid, version, updated_ms, geometry, properties, minx, miny, maxx, maxy) \
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| s.execute(params![layer, c.id, sql_i64(c.time_ms), planned.geometry_json, properties_json, minx, miny, maxx, maxy]))
            .map_err(db_err)?;
        let ord = self.conn.last_insert_rowid();
        self.rtree_set(layer, ord, None, bbox);
        let stored = StoredFeature {
            ord,
            feature: feature.clone(),
            bbox,
            geometry_json: planned.geometry_json.clone(),
        };
        self.remember(layer, stored);
        Ok(())
    }

    fn update(&mut self, layer: i64, current: Stored, planned: &Planned) -> Result<()> {
        let c = &planned.change;
        let new = c
            .new
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("an update without a feature".into()))?;
        let bbox = c.new_bbox;
        let geometry_json = if c.geometry_changed {
            planned.geometry_json.clone()
        } else {
            current.geometry_json
        };
        let properties_json = plan::to_json(&new.properties)?;
        let [minx, miny, maxx, maxy] = bbox.map(|b| b.map(Some)).unwrap_or_default();
        self.conn
            .prepare_cached(
                "UPDATE features SET version = ?2, updated_ms = ?3, geometry = ?4, properties = ?5, \
                 minx = ?6, miny = ?7, maxx = ?8, maxy = ?9 WHERE ord = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![current.ord, sql_i64(c.version), sql_i64(c.time_ms), geometry_json, properties_json, minx, miny, maxx, maxy])
            })
            .map_err(db_err)?;
        if bbox != current.bbox {
            self.rtree_set(layer, current.ord, current.bbox, bbox);
        }
        let stored = StoredFeature {
            ord: current.ord,
            feature: new.clone(),
            bbox,
            geometry_json,
        };
        self.remember(layer, stored);
        Ok(())
    }

    fn delete(&mut self, layer: i64, current: Stored) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM features WHERE ord = ?1")
            .and_then(|mut s| s.execute([current.ord]))
            .map_err(db_err)?;
        // Already out of the cache (taken by `op`).
        self.rtree_set(layer, current.ord, current.bbox, None);
        Ok(())
    }

    /// Moves a feature's entry in its layer's R-tree from box `old` to box `new` (exact
    /// boxes; the R-tree keeps them on its grid, see [`rtree_box`]). Written before the
    /// group's COMMIT, once per entry (see [`MovedBoxes`]).
    fn rtree_set(&mut self, layer: i64, ord: i64, old: Option<BBox>, new: Option<BBox>) {
        self.boxes
            .set((layer, ord), old.map(rtree_box), new.map(rtree_box));
    }

    /// Writes the R-tree entries the group moved, layer by layer.
    fn write_boxes(&mut self) -> Result<()> {
        let mut writes: Vec<_> = self.boxes.take_writes().collect();
        writes.sort_unstable_by_key(|(key, _)| *key);
        let mut layer = None;
        let mut sql = [String::new(), String::new(), String::new()];
        for ((id, ord), write) in writes {
            if layer != Some(id) {
                layer = Some(id);
                let table = rtree_table(id);
                sql = [
                    format!(
                        "INSERT INTO {table} (ord, minx, maxx, miny, maxy) VALUES (?1, ?2, ?3, ?4, ?5)"
                    ),
                    format!(
                        "UPDATE {table} SET minx = ?2, maxx = ?3, miny = ?4, maxy = ?5 WHERE ord = ?1"
                    ),
                    format!("DELETE FROM {table} WHERE ord = ?1"),
                ];
            }
            let r = match write {
                EntryWrite::Insert(b) => self
                    .conn
                    .prepare_cached(&sql[0])
                    .and_then(|mut s| s.execute(params![ord, b[0], b[2], b[1], b[3]])),
                EntryWrite::Update(b) => self
                    .conn
                    .prepare_cached(&sql[1])
                    .and_then(|mut s| s.execute(params![ord, b[0], b[2], b[1], b[3]])),
                EntryWrite::Delete => self
                    .conn
                    .prepare_cached(&sql[2])
                    .and_then(|mut s| s.execute([ord])),
            };
            r.map_err(db_err)?;
        }
        Ok(())
    }

    // ----- tiles -----

    pub(crate) fn put_tile(
        &mut self,
        layer: &str,
        tile: TileAddress,
        data: &[u8],
        min_version: u64,
    ) -> Result<TilePut> {
        let previous: Option<u64> = self
            .conn
            .prepare_cached(
                "SELECT version FROM tiles WHERE layer = ?1 AND z = ?2 AND x = ?3 AND y = ?4",
            )
            .and_then(|mut s| {
                s.query_row(params![layer, tile.z, tile.x, tile.y], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)?;
        let version = previous
            .map_or(1, |p| p.saturating_add(1))
            .max(min_version)
            .min(i64::MAX as u64);
        self.conn
            .prepare_cached(
                "INSERT INTO tiles (layer, z, x, y, version, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (layer, z, x, y) DO UPDATE SET version = excluded.version, data = excluded.data",
            )
            .and_then(|mut s| {
                s.execute(params![layer, tile.z, tile.x, tile.y, sql_i64(version), data])
            })
            .map_err(db_err)?;
        Ok(TilePut { version, previous })
    }

    // ----- geofences -----

    pub(crate) fn create_fence(&mut self, name: &str, body: &str) -> Result<()> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO fences (name, body) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![name, body]))
            .map_err(db_err)?;
        if n == 0 {
            return Err(StoreError::FenceExists(name.to_owned()));
        }
        Ok(())
    }

    pub(crate) fn delete_fence(&mut self, name: &str) -> Result<bool> {
        self.conn
            .prepare_cached("DELETE FROM fences WHERE name = ?1")
            .and_then(|mut s| s.execute([name]))
            .map(|n| n > 0)
            .map_err(db_err)
    }

    pub(crate) fn save_fence_cursors(&mut self, cursors: &[(String, u64)]) -> Result<()> {
        for (layer, seq) in cursors {
            self.conn
                .prepare_cached(
                    "INSERT INTO fence_cursors (layer, seq) VALUES (?1, ?2) \
                     ON CONFLICT (layer) DO UPDATE SET seq = excluded.seq",
                )
                .and_then(|mut s| s.execute(params![layer, sql_i64(*seq)]))
                .map_err(db_err)?;
        }
        Ok(())
    }

    pub(crate) fn fence_lease(&mut self, holder: &str, now: u64, ttl_ms: u64) -> Result<bool> {
        let until = sql_i64(now.saturating_add(ttl_ms));
        self.conn
            .prepare_cached(
                "INSERT INTO fence_lease (id, holder, until_ms) VALUES (1, ?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
                 WHERE fence_lease.holder = excluded.holder OR fence_lease.until_ms < ?3",
            )
            .and_then(|mut s| s.execute(params![holder, until, sql_i64(now)]))
            .map(|n| n > 0)
            .map_err(db_err)
    }

    pub(crate) fn release_fence_lease(&mut self, holder: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM fence_lease WHERE holder = ?1")
            .and_then(|mut s| s.execute([holder]))
            .map(drop)
            .map_err(db_err)
    }

    // ----- locks -----

    pub(crate) fn lock(
        &mut self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
        ttl_ms: u64,
        now: u64,
    ) -> Result<Vec<Lock>> {
        let row = self.layer_row(layer)?;
        let until_ms = now.saturating_add(ttl_ms).min(i64::MAX as u64);
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<&String> = ids.iter().filter(|id| seen.insert(id.as_str())).collect();
        let mut found = Vec::with_capacity(ids.len());
        for id in &ids {
            let exists = self
                .conn
                .prepare_cached("SELECT 1 FROM features WHERE layer = ?1 AND fid = ?2")
                .and_then(|mut s| s.exists(params![row.id, id]))
                .map_err(db_err)?;
            found.push((id.as_str(), exists, self.live_lock(row.id, id, now)?));
        }
        plan::plan_lock(
            layer,
            found
                .iter()
                .map(|(id, exists, l)| (*id, *exists, l.as_ref().map(|(h, u)| (h, *u)))),
            holder,
        )?;
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO locks (layer, fid, client, user, until_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (layer, fid) DO UPDATE SET client = excluded.client, user = excluded.user, until_ms = excluded.until_ms",
            )
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            st.execute(params![
                row.id,
                id,
                holder.client,
                holder.user,
                sql_i64(until_ms)
            ])
            .map_err(db_err)?;
            out.push(Lock {
                layer: layer.to_owned(),
                id: id.clone(),
                holder: holder.clone(),
                until_ms,
            });
        }
        if let Some(l) = self.layers.get_mut(layer) {
            l.has_locks = true;
        }
        Ok(out)
    }

    pub(crate) fn unlock(
        &mut self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
    ) -> Result<Vec<Lock>> {
        let row = self.layer_row(layer)?;
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM locks WHERE layer = ?1 AND fid = ?2 AND client = ?3 AND user IS ?4 RETURNING until_ms")
            .map_err(db_err)?;
        let mut out = Vec::new();
        for id in ids {
            let until: Option<u64> = st
                .query_row(params![row.id, id, holder.client, holder.user], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            if let Some(until_ms) = until {
                out.push(Lock {
                    layer: layer.to_owned(),
                    id: id.clone(),
                    holder: holder.clone(),
                    until_ms,
                });
            }
        }
        Ok(out)
    }

    pub(crate) fn expire_client_locks(
        &mut self,
        client: &str,
        grace_ms: u64,
        now: u64,
    ) -> Result<Vec<Lock>> {
        let until = sql_i64(now.saturating_add(grace_ms));
        self.locks_returning(
            "UPDATE locks SET until_ms = min(until_ms, ?2) WHERE client = ?1 AND until_ms > ?3 \
             RETURNING layer, fid, client, user, until_ms",
            params![client, until, sql_i64(now)],
        )
    }

    pub(crate) fn reap_locks(&mut self, now: u64) -> Result<Vec<Lock>> {
        self.locks_returning(
            "DELETE FROM locks WHERE until_ms <= ?1 RETURNING layer, fid, client, user, until_ms",
            params![sql_i64(now)],
        )
    }

    fn locks_returning(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Result<Vec<Lock>> {
        let rows: Vec<(i64, String, Holder, u64)> = {
            let mut st = self.conn.prepare_cached(sql).map_err(db_err)?;
            let rows = st
                .query_map(params, |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        Holder {
                            client: r.get(2)?,
                            user: r.get(3)?,
                        },
                        r.get(4)?,
                    ))
                })
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
        };
        let mut names = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for (layer, id, holder, until_ms) in rows {
            out.push(Lock {
                layer: self.layer_name(layer, &mut names)?,
                id,
                holder,
                until_ms,
            });
        }
        out.sort_by(|a, b| (&a.layer, &a.id).cmp(&(&b.layer, &b.id)));
        Ok(out)
    }
}

fn feature_by_id_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!("SELECT {FEATURE_COLUMNS} FROM features WHERE layer = ?1 AND fid = ?2")
    })
}
