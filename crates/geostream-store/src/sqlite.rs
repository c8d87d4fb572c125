//! The default store: one SQLite file in WAL mode.
//!
//! # Threads and connections
//!
//! * **One writer thread** owns the only write connection. Every mutation ([`Store::apply`],
//!   layer creation and deletion, locks) is sent to it over a channel with a oneshot reply.
//!   It takes everything queued (up to [`SqliteOptions::max_batch`] requests), opens one
//!   `BEGIN IMMEDIATE` transaction and runs the requests one after the other, so that a
//!   request that fails — conflict, lock, missing feature — rolls back only itself: a
//!   request of several operations (or a layer or lock change) runs inside its own
//!   `SAVEPOINT`; a single-operation edit makes every check before its first write and needs
//!   none (should it fail after writing, on an SQL error, the whole group is rolled back
//!   and every request in it fails). It commits once and only then answers every request
//!   (after the sync thread, below, has made the commit durable). One fsync for the whole group: this *group commit* is what lets many
//!   editors get durable acknowledgements at a rate a per-edit fsync could never reach.
//! * **A sync thread** ([`Synchronous::Full`], the default) `fdatasync`s the WAL after each
//!   commit and only then answers the group's requests, while the writer already works on
//!   the next group; groups committed during one sync share the next one.
//! * **Readers** use a small pool of connections on tokio's blocking threads; they never
//!   wait for the writer (WAL readers see the last committed state).
//! * **A checkpointer thread** copies the WAL back into the database file in the
//!   background (`wal_checkpoint(PASSIVE)`), so the writer does not stall on checkpoints;
//!   when the WAL grows long it asks the writer to checkpoint the last few frames itself
//!   between two groups, which lets SQLite rewind the WAL instead of growing it.
//!
//! # Schema (version 4, kept in `PRAGMA user_version`)
//!
//! * `layers(id, name, title, description, last_writer_wins, seq, count, created_ms)`:
//!   `seq` is the layer's last sequence number, incremented inside the writing transaction,
//!   so sequence numbers are gap-free and ordered.
//! * `features(ord, layer, fid, version, updated_ms, geometry, properties, minx..maxy)`:
//!   `ord` (the rowid) gives the creation order; geometry and properties are JSON text.
//! * `rtree_<layer id>`: one SQLite R*Tree per layer over the features' bounding boxes,
//!   rounded outwards to a grid of 1/1024 degree so that a feature moving inside its cells
//!   does not rewrite its entry (features without geometry are not in it). A group writes
//!   each entry it moved once, just before its COMMIT, with the box the entry ends the group
//!   in (`moved_boxes.rs`).
//! * `changes(id, layer, seq, body)`: the change log, one row per accepted operation, the
//!   [`Change`] (with the old and new feature) as JSON, appended in rowid order and found
//!   by a unique index on `(layer, seq)`; pruned to [`SqliteOptions::change_retention`]
//!   entries per layer, oldest first.
//! * `locks(layer, fid, client, user, until_ms)`.
//! * `op_ids(id, scope, op_id, time_ms, outcome)`: applied idempotency keys with the outcome
//!   they produced, kept [`SqliteOptions::op_id_retention_ms`]; `op_index(scope, op_id, id)`
//!   indexes them in batches (the newest keys are held in the writer's memory), and
//!   `meta(key, value)` keeps the batch mark.
//! * `tiles(layer, z, x, y, version, data)`: uploaded raster tiles ([`TileStore`]), written
//!   by the writer thread in its group commits like every other mutation.
//! * `fences(name, body)`, `fence_cursors(layer, seq)` and `fence_lease(id, holder,
//!   until_ms)`: geofence definitions, how far each watched layer was evaluated, and the
//!   evaluator's lease ([`FenceStore`]).
//!
//! Every pragma, table and index choice is explained where it is made (`schema.rs` and
//! [`SqliteStore::open`]).
//!
//! # Semantics chosen where the trait leaves room
//!
//! * On a layer that is not last-writer-wins, an edit without `expected` fails with
//!   [`StoreError::VersionRequired`] whether or not the feature exists.
//! * An edit of a missing feature with `expected` fails with [`StoreError::Conflict`] and
//!   `current: None`; without `expected` it fails with [`StoreError::FeatureNotFound`],
//!   except `Replace` on a last-writer-wins layer, which creates the feature.
//! * Checks run in this order: version required, existence/conflict, lock, geometry. The
//!   edit planner (`plan.rs`) decides every edit for both stores, so PostgreSQL answers the
//!   same.
//! * A lock belongs to a [`Holder`] (client *and* user): only the very same holder may edit
//!   the locked feature. Deleting a feature leaves its lock to expire (so the unlock is
//!   announced by [`Store::reap_locks`] like any other).
//! * Only successful requests record their `op_id`: a retry of a request that failed runs
//!   again. An `op_id` names one request of its writer across all layers.
//! * A request without operations is [`StoreError::Invalid`].
//! * Bounding boxes are derived by the store from the geometry (the given `bbox` fields of
//!   [`ValidFeature`] and `Patch` are not trusted).
//! * [`FeatureQuery::limit`] 0 returns no features (and `next_offset` when some match);
//!   [`SnapshotRequest::page_size`] 0 is read as 1.
//! * A corrupt row is reported as [`StoreError::Unavailable`] naming the row, never a panic.
//! * Dropping an `apply` future does not cancel the write; its outcome is just not seen.
//!
//! [`Change`]: geostream_core::feature::Change
//! [`ValidFeature`]: geostream_core::feature::ValidFeature

mod codec;
mod moved_boxes;
mod op_index;
mod read;
mod schema;
mod sync;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::{
    ChangePage, FeatureQuery, FenceStore, Holder, KnownKey, KnownPage, LayerInfo, LayerSpec, Lock,
    QueryPage, Result, Snapshot, SnapshotRequest, Store, StoreError, TileAddress, TilePut,
    TileStore, WriteOutcome, WriteRequest,
};
use geostream_core::api::validate_name;
use geostream_core::feature::{BBox, Feature};
use read::Readers;
use writer::{Acks, Job, Task, Writer};

/// How commits are made durable before they are acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Every acknowledged edit survives a crash of the process *and* of the machine: a
    /// group is answered only after an `fdatasync` of the WAL that started after its COMMIT
    /// returned. The sync runs on its own thread while the writer commits the next group,
    /// and one sync covers every group committed before it. The default, and the product's
    /// promise.
    ///
    /// The guarantee for acknowledged edits is the same as SQLite's `synchronous=FULL`
    /// ([`Synchronous::Inline`]); one thing differs: a *reader* may see a committed group
    /// a fraction of a millisecond before it is on disk (SQLite's FULL syncs before
    /// publishing the commit to readers). Only a power loss or kernel crash inside that
    /// window can then take back something a query or snapshot returned; never an
    /// acknowledged edit. (SQLite itself runs with `synchronous=NORMAL`, which keeps the
    /// database consistent across crashes: checkpoints are synced.)
    #[default]
    Full,
    /// SQLite's `synchronous=FULL`: COMMIT itself syncs the WAL, inside the writer thread.
    /// Same durability as [`Synchronous::Full`], without the reader window, at a fraction of
    /// its throughput (the writer idles during every sync).
    Inline,
    /// `synchronous=NORMAL` and no sync before answering: an edit survives a crash of the
    /// process but may be lost if the machine loses power. For benchmarks and throw-away
    /// data only.
    Normal,
}

/// Settings of a [`SqliteStore`]. Every field has a default (see [`Default`]).
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Changes kept per layer in the change log; older ones are pruned, oldest first, in the
    /// same transaction that adds new ones. Clients that fall further behind must resync.
    /// Default 100,000.
    pub change_retention: u64,
    /// Read connections kept open, which is also how many reads run at once (snapshots that
    /// are being streamed use connections of their own beyond this). Default 4.
    pub readers: usize,
    /// Most requests committed together in one transaction (group commit). Default 1,024.
    pub max_batch: usize,
    /// How long an expired lock is kept for [`Store::reap_locks`] to report it before
    /// housekeeping deletes it silently (in case nobody reaps). Milliseconds, default 600,000
    /// (10 minutes).
    pub lock_reap_ms: u64,
    /// How long an applied `op_id` is remembered, so that a retry is answered with the
    /// original outcome instead of being applied again. Milliseconds, default 86,400,000
    /// (24 hours).
    pub op_id_retention_ms: u64,
    /// How often the writer prunes expired op ids and forgotten locks. Milliseconds,
    /// default 60,000.
    pub housekeeping_ms: u64,
    /// How often the checkpointer copies the WAL into the database file. Milliseconds,
    /// default 100.
    pub checkpoint_ms: u64,
    /// How long a connection waits for a lock held by another connection (another process
    /// sharing the file, or a checkpoint) before failing with
    /// [`StoreError::Unavailable`]. Milliseconds, default 5,000.
    pub busy_timeout_ms: u64,
    /// Most changes a [`Store::snapshot`] returns; a client further behind than this gets
    /// `complete: false` and resyncs from the snapshot's features, which is cheaper than a
    /// long replay and bounds the memory one resume can take. Default 10,000.
    pub max_resume_changes: usize,
    /// How commits are synced. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            change_retention: 100_000,
            readers: 4,
            max_batch: 1024,
            lock_reap_ms: 600_000,
            op_id_retention_ms: 86_400_000,
            housekeeping_ms: 60_000,
            checkpoint_ms: 100,
            busy_timeout_ms: 5_000,
            max_resume_changes: 10_000,
            synchronous: Synchronous::Full,
        }
    }
}

/// A [`Store`] in one SQLite file (WAL mode, group commit); see the [module docs](self).
///
/// Cloning is cheap and shares the same threads and connections. The background threads
/// stop when the last clone is dropped (after the writer has finished the group it is
/// committing).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    readers: Arc<Readers>,
    writer: Option<JoinHandle<()>>,
    checkpointer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    syncer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has answered what was queued.
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // The writer held the sync thread's channel: it ends after answering the rest.
        if let Some(s) = self.syncer.take() {
            let _ = s.join();
        }
        if let Some((stop, handle)) = self.checkpointer.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Maps SQLite's errors: the store failed, the caller may retry.
pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Opens a connection with the settings every connection shares.
fn connect(path: &Path, opts: &SqliteOptions) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_millis(opts.busy_timeout_ms))
        .map_err(db_err)?;
    let sync = match opts.synchronous {
        // Full: the sync thread syncs the WAL; SQLite's NORMAL still syncs checkpoints.
        Synchronous::Full | Synchronous::Normal => "NORMAL",
        Synchronous::Inline => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(db_err)?;
    // Statements are per layer (one R-tree table each), so keep more than the default 16.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directory) the database at `path`,
    /// migrates its schema and starts the writer and checkpointer threads.
    ///
    /// Fails with [`StoreError::Unavailable`] if the file cannot be opened, is not a
    /// database, or has a schema newer than this build knows.
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let opts = SqliteOptions {
            readers: opts.readers.max(1),
            max_batch: opts.max_batch.max(1),
            checkpoint_ms: opts.checkpoint_ms.max(1),
            housekeeping_ms: opts.housekeeping_ms.max(1),
            ..opts
        };
        let mut conn = connect(&path, &opts)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{}: cannot switch to WAL mode (got {mode})",
                path.display()
            )));
        }
        // The checkpointer thread does this work, off the writer's path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db_err)?;
        // Keep the WAL file from staying huge after a burst (bytes).
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(db_err)?;
        // 8 MiB of page cache: the writer rereads the features it edits.
        conn.pragma_update(None, "cache_size", -8 * 1024)
            .map_err(db_err)?;
        // Savepoint journals (one per request in a group) stay in memory: spilled to a temp
        // file they cost two syscalls per page touched.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(db_err)?;
        schema::migrate(&mut conn)?;

        let wal_restart = Arc::new(AtomicBool::new(false));
        let checkpoint_conn = connect(&path, &opts)?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let interval = Duration::from_millis(opts.checkpoint_ms);
        let restart = wal_restart.clone();
        let db = path.clone();
        let checkpointer = spawn("geostream-sqlite-checkpoint", move || {
            checkpoint_loop(checkpoint_conn, &db, stop_rx, interval, &restart)
        })?;

        let (acks, syncer) = match opts.synchronous {
            Synchronous::Full => {
                let (tx, rx) = mpsc::channel();
                let db = path.clone();
                (
                    Acks::Synced(tx),
                    Some(spawn("geostream-sqlite-sync", move || sync::run(&db, rx))?),
                )
            }
            Synchronous::Inline | Synchronous::Normal => (Acks::Direct, None),
        };
        let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn Job>>();
        let writer = Writer::new(conn, &opts, acks, wal_restart)?;
        let max_batch = opts.max_batch;
        let housekeeping = Duration::from_millis(opts.housekeeping_ms);
        let writer = spawn("geostream-sqlite-writer", move || {
            writer.run(jobs_rx, max_batch, housekeeping)
        })?;

        let readers = Arc::new(Readers::new(path.clone(), opts.clone()));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                jobs: Some(jobs_tx),
                readers,
                writer: Some(writer),
                checkpointer: Some((stop_tx, checkpointer)),
                syncer,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` on the writer thread inside the next group commit and waits for the
    /// commit (and its sync). `savepoint`: see `Job::savepoint`; true unless the work makes
    /// every check before its first write.
    async fn write<T, F>(&self, savepoint: bool, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer, u64) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the SQLite writer has stopped".into());
        let jobs = self.inner.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Box::new(Task::new(work, tx, savepoint)))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StoreError::Unavailable(format!("cannot start the thread {name}: {e}")))
}

/// WAL length (in frames, 4 KiB pages) past which the checkpointer asks the writer to
/// checkpoint itself so the WAL can start over: 32 MiB.
const WAL_RESTART_FRAMES: i64 = 8192;

/// The checkpointer thread: copies WAL frames into the database file in the background.
///
/// A PASSIVE checkpoint that does not reach the end of the WAL (there is always a newer
/// group while edits stream in) copies pages but leaves the database file unsynced: SQLite
/// syncs it only when a checkpoint completes. Left alone, that sync would fall on the
/// writer's tail checkpoint and cost it tens of milliseconds of accumulated writeback, so
/// this thread syncs the database file itself after each checkpoint (an extra sync is always
/// safe), and the writer's tail only flushes the last few pages.
fn checkpoint_loop(
    conn: Connection,
    db: &Path,
    stop: mpsc::Receiver<()>,
    interval: Duration,
    wal_restart: &AtomicBool,
) {
    let mut file: Option<std::fs::File> = None;
    loop {
        match stop.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The store was dropped (or sent a stop): one last checkpoint happens when the
            // last connection closes.
            _ => return,
        }
        // PASSIVE never waits for readers or the writer: it copies what it can now.
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        let (frames, copied) = match r {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "SQLite checkpoint failed.");
                continue;
            }
        };
        if copied > 0 {
            if file.is_none() {
                file = std::fs::File::open(db).ok();
            }
            if let Some(Err(e)) = file.as_ref().map(std::fs::File::sync_data) {
                tracing::warn!(error = %e, "Syncing the SQLite database file failed.");
            }
        }
        if frames >= WAL_RESTART_FRAMES {
            wal_restart.store(true, Ordering::Relaxed);
        }
    }
}

impl Store for SqliteStore {
    async fn create_layer(&self, spec: LayerSpec) -> Result<LayerInfo> {
        self.write(true, move |w, now| w.create_layer(spec, now))
            .await
    }

    async fn list_layers(&self) -> Result<Vec<LayerInfo>> {
        self.inner.readers.run(read::list_layers).await
    }

    async fn layer(&self, name: &str) -> Result<LayerInfo> {
        let name = name.to_owned();
        self.inner
            .readers
            .run(move |c| read::layer_info(c, &name))
            .await
    }

    async fn delete_layer(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.write(true, move |w, _| w.delete_layer(&name)).await
    }

    async fn apply(&self, req: WriteRequest) -> Result<WriteOutcome> {
        // One operation checks everything before it writes; several need a savepoint to
        // undo the first ones when a later one fails.
        let savepoint = req.ops.len() > 1;
        self.write(savepoint, move |w, now| w.apply(req, now)).await
    }

    async fn get(&self, layer: &str, id: &str) -> Result<Option<Feature>> {
        let (layer, id) = (layer.to_owned(), id.to_owned());
        self.inner
            .readers
            .run(move |c| read::get(c, &layer, &id))
            .await
    }

    async fn query(&self, layer: &str, q: FeatureQuery) -> Result<QueryPage> {
        let layer = layer.to_owned();
        self.inner
            .readers
            .run(move |c| read::query(c, &layer, &q))
            .await
    }

    async fn query_known<T, K>(
        &self,
        layer: &str,
        bbox: BBox,
        limit: usize,
        known: K,
    ) -> Result<KnownPage<T>>
    where
        T: Send + 'static,
        K: FnMut(KnownKey<'_>) -> Option<T> + Send + 'static,
    {
        let layer = layer.to_owned();
        self.inner
            .readers
            .run(move |c| read::query_known(c, &layer, bbox, limit, known))
            .await
    }

    async fn snapshot(&self, layer: &str, req: SnapshotRequest) -> Result<Snapshot> {
        read::snapshot(&self.inner.readers, layer.to_owned(), req).await
    }

    async fn changes(&self, layer: &str, since: u64, limit: usize) -> Result<ChangePage> {
        let layer = layer.to_owned();
        self.inner
            .readers
            .run(move |c| read::changes(c, &layer, since, limit))
            .await
    }

    async fn lock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
        ttl_ms: u64,
    ) -> Result<Vec<Lock>> {
        let (layer, ids, holder) = (layer.to_owned(), ids.to_vec(), holder.clone());
        self.write(true, move |w, now| {
            w.lock(&layer, &ids, &holder, ttl_ms, now)
        })
        .await
    }

    async fn unlock(&self, layer: &str, ids: &[String], holder: &Holder) -> Result<Vec<Lock>> {
        let (layer, ids, holder) = (layer.to_owned(), ids.to_vec(), holder.clone());
        self.write(true, move |w, _| w.unlock(&layer, &ids, &holder))
            .await
    }

    async fn expire_client_locks(&self, client: &str, grace_ms: u64) -> Result<Vec<Lock>> {
        let client = client.to_owned();
        self.write(true, move |w, now| {
            w.expire_client_locks(&client, grace_ms, now)
        })
        .await
    }

    async fn reap_locks(&self) -> Result<Vec<Lock>> {
        self.write(true, |w, now| w.reap_locks(now)).await
    }

    async fn locks(&self, layer: &str) -> Result<Vec<Lock>> {
        let layer = layer.to_owned();
        self.inner
            .readers
            .run(move |c| read::locks(c, &layer, now_ms()))
            .await
    }
}

impl FenceStore for SqliteStore {
    async fn create_fence(&self, name: &str, body: String) -> Result<()> {
        validate_name("fence", name).map_err(StoreError::Invalid)?;
        let name = name.to_owned();
        self.write(false, move |w, _| w.create_fence(&name, &body))
            .await
    }

    async fn delete_fence(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(false, move |w, _| w.delete_fence(&name)).await
    }

    async fn fences(&self) -> Result<Vec<(String, String)>> {
        self.inner
            .readers
            .run(|c| {
                c.prepare_cached("SELECT name, body FROM fences ORDER BY name")
                    .and_then(|mut st| {
                        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(db_err)
            })
            .await
    }

    async fn fence_cursors(&self) -> Result<Vec<(String, u64)>> {
        self.inner
            .readers
            .run(|c| {
                c.prepare_cached("SELECT layer, seq FROM fence_cursors ORDER BY layer")
                    .and_then(|mut st| {
                        st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .map_err(db_err)
            })
            .await
    }

    async fn save_fence_cursors(&self, cursors: Vec<(String, u64)>) -> Result<()> {
        self.write(false, move |w, _| w.save_fence_cursors(&cursors))
            .await
    }

    async fn fence_lease(&self, holder: &str, ttl_ms: u64) -> Result<bool> {
        let holder = holder.to_owned();
        self.write(false, move |w, now| w.fence_lease(&holder, now, ttl_ms))
            .await
    }

    async fn release_fence_lease(&self, holder: &str) -> Result<()> {
        let holder = holder.to_owned();
        self.write(false, move |w, _| w.release_fence_lease(&holder))
            .await
    }
}

impl TileStore for SqliteStore {
    async fn put_tile(
        &self,
        layer: &str,
        tile: TileAddress,
        data: Vec<u8>,
        min_version: u64,
    ) -> Result<TilePut> {
        validate_name("tile layer", layer).map_err(StoreError::Invalid)?;
        tile.check()?;
        let layer = layer.to_owned();
        // One upsert after one read: nothing to undo if it fails.
        self.write(false, move |w, _| {
            w.put_tile(&layer, tile, &data, min_version)
        })
        .await
    }

    async fn get_tile(&self, layer: &str, tile: TileAddress) -> Result<Option<(u64, Vec<u8>)>> {
        let layer = layer.to_owned();
        self.inner
            .readers
            .run(move |c| {
                c.prepare_cached(
                    "SELECT version, data FROM tiles WHERE layer = ?1 AND z = ?2 AND x = ?3 AND y = ?4",
                )
                .and_then(|mut st| {
                    st.query_row(params![layer, tile.z, tile.x, tile.y], |r| {
                        Ok((r.get::<_, u64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .optional()
                })
                .map_err(db_err)
            })
            .await
    }

    async fn tile_zooms(&self, layer: &str) -> Result<Option<(u8, u8)>> {
        let layer = layer.to_owned();
        self.inner
            .readers
            .run(move |c| {
                c.prepare_cached("SELECT min(z), max(z) FROM tiles WHERE layer = ?1")
                    .and_then(|mut st| {
                        st.query_row([layer], |r| {
                            Ok((r.get::<_, Option<u8>>(0)?, r.get::<_, Option<u8>>(1)?))
                        })
                    })
                    .map(|r| r.0.zip(r.1))
                    .map_err(db_err)
            })
            .await
    }
}
