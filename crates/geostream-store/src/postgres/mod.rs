//! The store for several nodes: PostgreSQL 15 with PostGIS 3 (feature `postgres`).
//!
//! Every node of a deployment opens a [`PostgresStore`] on the same database and schema;
//! the database alone decides what is accepted, so two nodes can never both accept
//! conflicting edits.
//!
//! # Transactions and concurrency
//!
//! * **Group commit across layers.** A node queues its writes by layer. A write that finds
//!   no group in flight, or only one large group (over 64 operations: a replay's batches),
//!   and its own layer in none, starts a flusher task; every write that arrives while groups
//!   are being committed waits for the next one. A group takes
//!   what every layer without a group in flight has waiting (longest-waiting layer first, up
//!   to 512 requests and 8,192 operations), so a node's small edits over many layers share
//!   one transaction and one WAL flush instead of making one each. A group is one transaction
//!   on a connection from a small pool (deadpool): it locks its layers' rows in name order
//!   (`SELECT .. ORDER BY name FOR UPDATE`), then reads the outcomes already recorded for its
//!   requests' idempotency keys, every feature the group touches (`SELECT .. FOR UPDATE`) and
//!   their live locks, all in one round trip. The layer row lock serialises every write of
//!   one layer across all nodes, which is what keeps the per-layer sequence numbers gap-free
//!   and in commit order; a layer is in one group at a time on a node, and groups over other
//!   layers run in parallel. The requests are then decided in order, in memory, by the edit
//!   planner (versions, locks, op-id replays, also against the group's earlier requests); a
//!   request that fails changes nothing and fails alone. What the accepted requests decided
//!   is written with one multi-row statement per kind for all the group's layers (`unnest`
//!   arrays: deletes, updates, inserts, change log, layer heads, op-id outcomes; the change
//!   log is pruned per layer), sent together with the COMMIT: no per-row round trips. The
//!   op-id outcomes are inserted in key order and without `ON CONFLICT`: if another
//!   transaction (another group, or another node) recorded one of the keys after the group
//!   read them, the group fails as a whole and runs again, and then replays that outcome. If
//!   the database itself refuses a value of the group (a data exception), the group's
//!   requests are committed one by one, so only the bad one fails. Groups lock layer rows in
//!   one global order (by name), then rows of those layers only, and insert keys in one
//!   global order, so no two groups wait for each other in a cycle: writes cannot deadlock.
//! * **Durability** is PostgreSQL's: a write is answered after its group's COMMIT, which
//!   (with the default `synchronous_commit = on`) has flushed the WAL; one flush covers the
//!   whole group.
//! * **Reads** take a pooled connection each; `query` and `snapshot` run in a
//!   `REPEATABLE READ READ ONLY` transaction, so the layer's sequence number, the changes and
//!   the features they return are one consistent cut. A snapshot streams its features
//!   through a portal, page by page, holding its transaction until the last page (or until
//!   the receiver is dropped).
//! * An `apply` runs in a flusher task: dropping its future does not cancel the
//!   write (the same as the SQLite store); its outcome is just not seen.
//!
//! # Schema (in the configured schema, version 4, in `schema_version`)
//!
//! * `layers(id, name, title, description, last_writer_wins, seq, count, created_ms)`.
//! * `features(ord, layer, fid, version, updated_ms, geometry, geom, properties,
//!   minx..maxy)`: `ord` (an identity) gives the creation order; `geometry` is the GeoJSON
//!   text exactly as written (returned byte for byte), `geom` the same geometry as a PostGIS
//!   `geometry(Geometry, 4326)` with a GiST index, `properties` is `jsonb` (what the CQL2
//!   translation reads), and `minx..maxy` the f64 bounding box for exact box tests.
//! * `changes(layer, seq, body)`: the change log, primary key `(layer, seq)` (no foreign
//!   key: deleting a layer deletes its changes in the same transaction), pruned to
//!   [`PostgresOptions::change_retention`] per layer in the writing transaction.
//! * `locks(layer, fid, holder_client, holder_user, until_ms)`.
//! * `op_ids(scope, op_id, time_ms, outcome)`: applied idempotency keys and the outcome
//!   they produced, kept [`PostgresOptions::op_id_retention_ms`].
//! * `tiles(layer, z, x, y, version, data)`: uploaded raster tiles ([`TileStore`]) as
//!   `bytea`, so every node serves the same bytes under the same version.
//! * `fences(name, body)`, `fence_cursors(layer, seq)` and `fence_lease(id, holder,
//!   until_ms)`: geofence definitions, how far each watched layer was evaluated, and the
//!   lease that picks the one node that evaluates ([`FenceStore`]).
//!
//! Migrations run at start-up, under a transaction-scoped advisory lock, so nodes starting
//! together migrate once. PostGIS is created (in schema `public`) if it is missing.
//!
//! # Queries
//!
//! Boxes are pushed down as `geom && ST_MakeEnvelope(..)` (the GiST index) plus an exact
//! test on the stored f64 box. A CQL2 attribute filter is translated to a parameterized
//! `WHERE` clause by [`geostream_filter::sql`] (property names are checked, every value is a
//! parameter). When the whole filter is in SQL, paging is `LIMIT`/`OFFSET`; when a part has
//! no exact SQL form (polygon, circle and bbox filters, temporal filters, CQL2 functions
//! without a translation), SQL narrows the candidates and that part is evaluated in Rust,
//! with the same code the hub uses, so the answers are exactly those of the other stores.
//!
//! The semantics where the trait leaves room are those of the SQLite store (see
//! [`crate::sqlite`]).

mod read;
mod schema;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use geostream_core::feature::{BBox, Feature};
use tokio_postgres::NoTls;

use crate::{
    ChangePage, FeatureQuery, FenceStore, Holder, KnownKey, KnownPage, LayerInfo, LayerSpec, Lock,
    QueryPage, Result, Snapshot, SnapshotRequest, Store, StoreError, TileAddress, TilePut,
    TileStore, WriteOutcome, WriteRequest,
};

/// Settings of a [`PostgresStore`]. Every field but `url` has a default (see [`Default`]).
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Connection string, as libpq takes it (`postgres://user:pass@host:5432/db` or
    /// `host=.. user=.. dbname=..`). Default `postgres://postgres@127.0.0.1:5432/postgres`.
    pub url: String,
    /// The schema holding geostream's tables (created if missing). Several deployments can
    /// share a database with different schemas. Lower-case letters, digits and `_`, at most
    /// 63 bytes. Default `geostream`.
    pub schema: String,
    /// Connections in this node's pool, which is also how many reads and writes it runs at
    /// once (a streaming snapshot holds one until its last page). Default 16.
    pub pool_size: usize,
    /// Changes kept per layer in the change log. Default 100,000.
    pub change_retention: u64,
    /// How long an applied `op_id` is remembered. Milliseconds, default 86,400,000 (24 h).
    pub op_id_retention_ms: u64,
    /// How long an expired lock is kept for [`Store::reap_locks`] to report it before
    /// housekeeping deletes it silently. Milliseconds, default 600,000 (10 minutes).
    pub lock_reap_ms: u64,
    /// How often this node prunes expired op ids and forgotten locks. Milliseconds, default
    /// 60,000.
    pub housekeeping_ms: u64,
    /// Most changes a [`Store::snapshot`] returns before answering `complete: false`.
    /// Default 10,000.
    pub max_resume_changes: usize,
    /// How long to wait for a connection (to open one, or for a free one in the pool)
    /// before failing with [`StoreError::Unavailable`]. Milliseconds, default 5,000.
    pub connect_timeout_ms: u64,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "geostream".into(),
            pool_size: 16,
            change_retention: 100_000,
            op_id_retention_ms: 86_400_000,
            lock_reap_ms: 600_000,
            housekeeping_ms: 60_000,
            max_resume_changes: 10_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// A [`Store`] in PostgreSQL/PostGIS; see the [module docs](self). Cloning is cheap.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) opts: PostgresOptions,
    /// Writes waiting for a group, and the groups in flight.
    pub(crate) queues: parking_lot::Mutex<write::WriteQueues>,
    pub(crate) stats: WriteStats,
}

/// How this node's writes were grouped: transactions run and requests they carried.
#[derive(Debug, Default)]
pub struct WriteStats {
    groups: AtomicU64,
    requests: AtomicU64,
}

impl WriteStats {
    pub(crate) fn record(&self, requests: usize) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
    }

    /// Write transactions run (groups), and the requests they carried.
    pub fn get(&self) -> (u64, u64) {
        (
            self.groups.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.opts.schema)
            .finish_non_exhaustive()
    }
}

/// Maps the driver's errors. Data exceptions (SQLSTATE class 22: a NUL character in a
/// string, a number out of range, GeoJSON PostGIS cannot read) are the input's fault;
/// everything else means the database failed and the caller may retry.
pub(crate) fn db_err(e: tokio_postgres::Error) -> StoreError {
    db_err_ref(&e)
}

/// [`db_err`] of a borrowed error.
pub(crate) fn db_err_ref(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if db.code().code().starts_with("22") => {
            StoreError::Invalid(format!("the database refused a value: {}", db.message()))
        }
        Some(db) => {
            StoreError::Unavailable(format!("postgres: {}: {}", db.code().code(), db.message()))
        }
        None => {
            // tokio-postgres says "error connecting to server" and keeps why (connection
            // refused, no such host, ...) in the source: show the whole chain.
            let mut msg = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cause = c.source();
            }
            StoreError::Unavailable(format!("postgres: {msg}"))
        }
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        other => StoreError::Unavailable(format!("postgres pool: {other}")),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A `u64` as PostgreSQL's `bigint`, saturating.
pub(crate) fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` read back as `u64` (never negative in this schema).
pub(crate) fn sql_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PostgresStore {
    /// Connects, creates the schema (and PostGIS) if needed, runs the migrations and starts
    /// this node's housekeeping task (it stops when the last clone is dropped).
    ///
    /// Fails with [`StoreError::Unavailable`] when the database cannot be reached, PostGIS
    /// is not installed on the server, or the schema is newer than this build, and with
    /// [`StoreError::Invalid`] for a bad schema name or URL.
    pub async fn connect(opts: PostgresOptions) -> Result<PostgresStore> {
        schema::check_schema_name(&opts.schema)?;
        let mut cfg: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("postgres url: {e}")))?;
        let timeout = Duration::from_millis(opts.connect_timeout_ms.max(1));
        cfg.connect_timeout(timeout);
        cfg.application_name("geostream");
        // "schema already exists, skipping" and other NOTICEs are not worth a log line
        // each time a node starts; warnings and errors still reach the log.
        cfg.options("-c client_min_messages=warning");
        let postgis_schema = schema::migrate(&cfg, &opts.schema).await?;
        // Every pooled connection resolves unqualified names in our schema first, then where
        // PostGIS lives (its functions and the `geometry` type). Both names were checked or
        // read from the catalog, and are quoted.
        cfg.options(format!(
            "-c client_min_messages=warning -c search_path={},{}",
            schema::quote_ident(&opts.schema),
            schema::quote_ident(&postgis_schema)
        ));
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                opts,
                queues: parking_lot::Mutex::default(),
                stats: WriteStats::default(),
            }),
        };
        // Fail now, not at the first request, when the pool cannot connect.
        drop(store.inner.client().await?);
        let weak = Arc::downgrade(&store.inner);
        let every = Duration::from_millis(store.inner.opts.housekeeping_ms.max(1));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.tick().await;
            loop {
                t.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.housekeeping().await {
                    tracing::warn!(error = %e, "PostgreSQL housekeeping failed.");
                }
            }
        });
        Ok(store)
    }

    /// How this node's writes were grouped (see the module docs on group commit).
    pub fn write_stats(&self) -> &WriteStats {
        &self.inner.stats
    }

    /// The schema this store uses.
    pub fn schema(&self) -> &str {
        &self.inner.opts.schema
    }

    /// Drops the store's schema with everything in it. For tests and tear-down only: other
    /// nodes using the schema fail from then on.
    pub async fn drop_schema(&self) -> Result<()> {
        let c = self.inner.client().await?;
        c.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            schema::quote_ident(&self.inner.opts.schema)
        ))
        .await
        .map_err(db_err)
    }
}

impl Inner {
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Forgets old op ids and locks nobody reaped.
    async fn housekeeping(&self) -> Result<()> {
        let now = now_ms();
        let c = self.client().await?;
        let ops = c
            .execute(
                "DELETE FROM op_ids WHERE time_ms < $1",
                &[&sql_i64(now.saturating_sub(self.opts.op_id_retention_ms))],
            )
            .await
            .map_err(db_err)?;
        let locks = c
            .execute(
                "DELETE FROM locks WHERE until_ms < $1",
                &[&sql_i64(now.saturating_sub(self.opts.lock_reap_ms))],
            )
            .await
            .map_err(db_err)?;
        tracing::debug!(op_ids = ops, locks, "PostgreSQL housekeeping done.");
        Ok(())
    }
}

impl Store for PostgresStore {
    async fn create_layer(&self, spec: LayerSpec) -> Result<LayerInfo> {
        write::create_layer(&self.inner, spec).await
    }

    async fn list_layers(&self) -> Result<Vec<LayerInfo>> {
        read::list_layers(&self.inner).await
    }

    async fn layer(&self, name: &str) -> Result<LayerInfo> {
        read::layer(&self.inner, name).await
    }

    async fn delete_layer(&self, name: &str) -> Result<()> {
        write::delete_layer(&self.inner, name).await
    }

    async fn apply(&self, req: WriteRequest) -> Result<WriteOutcome> {
        // Runs in the layer's flusher task: dropping this future does not cancel the write.
        write::apply(&self.inner, req).await
    }

    async fn get(&self, layer: &str, id: &str) -> Result<Option<Feature>> {
        read::get(&self.inner, layer, id).await
    }

    async fn query(&self, layer: &str, q: FeatureQuery) -> Result<QueryPage> {
        read::query(&self.inner, layer, &q).await
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
        read::query_known(&self.inner, layer, bbox, limit, known).await
    }

    async fn snapshot(&self, layer: &str, req: SnapshotRequest) -> Result<Snapshot> {
        read::snapshot(&self.inner, layer.to_owned(), req).await
    }

    async fn changes(&self, layer: &str, since: u64, limit: usize) -> Result<ChangePage> {
        read::changes(&self.inner, layer, since, limit).await
    }

    async fn lock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
        ttl_ms: u64,
    ) -> Result<Vec<Lock>> {
        write::lock(&self.inner, layer, ids, holder, ttl_ms).await
    }

    async fn unlock(&self, layer: &str, ids: &[String], holder: &Holder) -> Result<Vec<Lock>> {
        write::unlock(&self.inner, layer, ids, holder).await
    }

    async fn expire_client_locks(&self, client: &str, grace_ms: u64) -> Result<Vec<Lock>> {
        write::expire_client_locks(&self.inner, client, grace_ms).await
    }

    async fn reap_locks(&self) -> Result<Vec<Lock>> {
        write::reap_locks(&self.inner).await
    }

    async fn locks(&self, layer: &str) -> Result<Vec<Lock>> {
        read::locks(&self.inner, layer).await
    }
}

impl FenceStore for PostgresStore {
    async fn create_fence(&self, name: &str, body: String) -> Result<()> {
        geostream_core::api::validate_name("fence", name).map_err(StoreError::Invalid)?;
        let c = self.inner.client().await?;
        let n = c
            .execute(
                "INSERT INTO fences (name, body) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &body],
            )
            .await
            .map_err(db_err)?;
        if n == 0 {
            return Err(StoreError::FenceExists(name.to_owned()));
        }
        Ok(())
    }

    async fn delete_fence(&self, name: &str) -> Result<bool> {
        let c = self.inner.client().await?;
        let n = c
            .execute("DELETE FROM fences WHERE name = $1", &[&name])
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn fences(&self) -> Result<Vec<(String, String)>> {
        let c = self.inner.client().await?;
        let rows = c
            .query("SELECT name, body FROM fences ORDER BY name", &[])
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn fence_cursors(&self) -> Result<Vec<(String, u64)>> {
        let c = self.inner.client().await?;
        let rows = c
            .query("SELECT layer, seq FROM fence_cursors ORDER BY layer", &[])
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
    }

    async fn save_fence_cursors(&self, cursors: Vec<(String, u64)>) -> Result<()> {
        if cursors.is_empty() {
            return Ok(());
        }
        let c = self.inner.client().await?;
        let layers: Vec<&str> = cursors.iter().map(|(l, _)| l.as_str()).collect();
        let seqs: Vec<i64> = cursors
            .iter()
            .map(|(_, s)| (*s).min(i64::MAX as u64) as i64)
            .collect();
        c.execute(
            "INSERT INTO fence_cursors (layer, seq) SELECT * FROM unnest($1::text[], $2::bigint[]) \
             ON CONFLICT (layer) DO UPDATE SET seq = excluded.seq",
            &[&layers, &seqs],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn fence_lease(&self, holder: &str, ttl_ms: u64) -> Result<bool> {
        let c = self.inner.client().await?;
        // The database's clock decides expiry, so nodes with skewed clocks agree.
        let n = c
            .execute(
                "INSERT INTO fence_lease AS l (id, holder, until_ms) \
                 VALUES (1, $1, (extract(epoch from clock_timestamp()) * 1000)::bigint + $2) \
                 ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
                 WHERE l.holder = excluded.holder \
                    OR l.until_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint",
                &[&holder, &(ttl_ms.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn release_fence_lease(&self, holder: &str) -> Result<()> {
        let c = self.inner.client().await?;
        c.execute("DELETE FROM fence_lease WHERE holder = $1", &[&holder])
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

impl TileStore for PostgresStore {
    async fn put_tile(
        &self,
        layer: &str,
        tile: TileAddress,
        data: Vec<u8>,
        min_version: u64,
    ) -> Result<TilePut> {
        geostream_core::api::validate_name("tile layer", layer).map_err(StoreError::Invalid)?;
        tile.check()?;
        let c = self.inner.client().await?;
        // One statement: the upsert's conflict arm takes the row lock, so concurrent puts of
        // one tile (on any node) each get the version above the one before. `old` is read
        // before the row lock and only tells whether a tile was replaced.
        let row = c
            .query_one(
                "WITH old AS (SELECT version FROM tiles WHERE layer = $1 AND z = $2 AND x = $3 AND y = $4) \
                 INSERT INTO tiles AS t (layer, z, x, y, version, data) \
                 VALUES ($1, $2, $3, $4, GREATEST(1, $6::bigint), $5) \
                 ON CONFLICT (layer, z, x, y) DO UPDATE \
                 SET version = GREATEST(t.version + 1, $6::bigint), data = excluded.data \
                 RETURNING t.version, (SELECT version FROM old), t.xmax::text <> '0'",
                &[
                    &layer,
                    &i16::from(tile.z),
                    &i64::from(tile.x),
                    &i64::from(tile.y),
                    &data,
                    &sql_i64(min_version),
                ],
            )
            .await
            .map_err(db_err)?;
        let version = sql_u64(row.get(0));
        let old: Option<i64> = row.get(1);
        let replaced: bool = row.get(2);
        Ok(TilePut {
            version,
            previous: match (old, replaced) {
                (Some(v), _) => Some(sql_u64(v)),
                // Created by a concurrent put after this statement's snapshot.
                (None, true) => Some(version.saturating_sub(1)),
                (None, false) => None,
            },
        })
    }

    async fn get_tile(&self, layer: &str, tile: TileAddress) -> Result<Option<(u64, Vec<u8>)>> {
        let c = self.inner.client().await?;
        let row = c
            .query_opt(
                "SELECT version, data FROM tiles WHERE layer = $1 AND z = $2 AND x = $3 AND y = $4",
                &[
                    &layer,
                    &i16::from(tile.z),
                    &i64::from(tile.x),
                    &i64::from(tile.y),
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| (sql_u64(r.get(0)), r.get(1))))
    }

    async fn tile_zooms(&self, layer: &str) -> Result<Option<(u8, u8)>> {
        let c = self.inner.client().await?;
        let row = c
            .query_one(
                "SELECT min(z), max(z) FROM tiles WHERE layer = $1",
                &[&layer],
            )
            .await
            .map_err(db_err)?;
        let (a, b): (Option<i16>, Option<i16>) = (row.get(0), row.get(1));
        Ok(a.zip(b)
            .map(|(a, b)| (a.clamp(0, 255) as u8, b.clamp(0, 255) as u8)))
    }
}
