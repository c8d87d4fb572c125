//! The schema and its migrations, tracked in `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes a database from version `i` to `i + 1`. A later version appends a
//! step; steps already released are never edited, so every database walks the same path.

use geostream_core::feature::BBox;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::db_err;
use crate::{Result, StoreError};

/// Version 1. Notes on the choices:
///
/// * `layers.id` is AUTOINCREMENT so a deleted layer's id (and R-tree table name) is never
///   reused.
/// * `features.ord` is the rowid: a new row gets the largest rowid + 1, so `ORDER BY ord` is
///   creation order. The index on `layer` holds the rowid too, so it serves
///   `WHERE layer = ? ORDER BY ord` without sorting.
/// * No foreign keys: the writer deletes a layer's rows itself, and every insert skips the
///   parent lookup a foreign key would cost.
/// * The per-layer R-tree tables (`rtree_<id>`) are created with their layer.
/// * Big rows are appended in rowid order (`changes`, `op_ids`), so a group commit's new rows
///   fill a few consecutive pages; `changes` finds rows by `(layer, seq)` through a small
///   index that is also appended to.
/// * Op ids are random, and a b-tree keyed by them takes each insert on another page: with
///   a unique index on `op_ids`, that index was 60% of the pages every group commit wrote.
///   So `op_ids` has no index; the writer keeps the keys of the newest rows in memory and
///   merges them, sorted, into `op_index` in batches (one pass over the index per batch
///   instead of one page per edit). `meta.op_index_upto` is the last `op_ids.id` merged;
///   rows after it are read back into memory at startup. Expiry deletes a prefix of the
///   rowids.
const V1: &str = "
CREATE TABLE layers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    title TEXT,
    description TEXT,
    last_writer_wins INTEGER NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    count INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE features (
    ord INTEGER PRIMARY KEY,
    layer INTEGER NOT NULL,
    fid TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    geometry TEXT,
    properties TEXT NOT NULL,
    minx REAL,
    miny REAL,
    maxx REAL,
    maxy REAL,
    UNIQUE (layer, fid)
);
CREATE INDEX features_by_layer ON features (layer);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY,
    layer INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX changes_by_seq ON changes (layer, seq);
CREATE TABLE locks (
    layer INTEGER NOT NULL,
    fid TEXT NOT NULL,
    client TEXT NOT NULL,
    user TEXT,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (layer, fid)
) WITHOUT ROWID;
CREATE INDEX locks_by_client ON locks (client);
CREATE INDEX locks_by_until ON locks (until_ms);
CREATE TABLE op_ids (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    op_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE op_index (
    scope TEXT NOT NULL,
    op_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (scope, op_id)
) WITHOUT ROWID;
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('op_index_upto', 0);
";

/// Version 2: uploaded raster tiles ([`crate::TileStore`]), one row per tile holding its
/// newest bytes and version. A rowid table with a unique index rather than `WITHOUT ROWID`:
/// tiles are large rows, which SQLite keeps better in a rowid table.
const V2: &str = "
CREATE TABLE tiles (
    layer TEXT NOT NULL,
    z INTEGER NOT NULL,
    x INTEGER NOT NULL,
    y INTEGER NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (layer, z, x, y)
);
";

/// Version 3: geofences ([`crate::FenceStore`]): definitions as JSON, how far each watched
/// layer's changes were evaluated, and the evaluator's lease (one row).
const V3: &str = "
CREATE TABLE fences (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE fence_cursors (
    layer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE fence_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
";

/// Version 4: every R-tree box rounded outwards to the grid of [`rtree_box`] (version 3
/// wrote the features' exact boxes).
fn v4(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let layers: Vec<i64> = tx
        .prepare("SELECT id FROM layers")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for layer in layers {
        let table = rtree_table(layer);
        let rows: Vec<(i64, BBox)> = tx
            .prepare(&format!("SELECT ord, minx, miny, maxx, maxy FROM {table}"))?
            .query_map([], |r| {
                Ok((r.get(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut update = tx.prepare(&format!(
            "UPDATE {table} SET minx = ?2, maxx = ?3, miny = ?4, maxy = ?5 WHERE ord = ?1"
        ))?;
        for (ord, b) in rows {
            let g = rtree_box(b);
            if g != b {
                update.execute(params![ord, g[0], g[2], g[1], g[3]])?;
            }
        }
    }
    Ok(())
}

/// One step of the schema's history.
enum Step {
    Sql(&'static str),
    /// A step SQL alone cannot take (one R-tree table per layer).
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

const MIGRATIONS: &[Step] = &[Step::Sql(V1), Step::Sql(V2), Step::Sql(V3), Step::Code(v4)];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The name of a layer's R-tree table. Built from the integer id only, so it is safe to
/// splice into SQL.
pub(crate) fn rtree_table(layer_id: i64) -> String {
    format!("rtree_{layer_id}")
}

/// The R-tree's grid: 1/1024 of a degree, about 100 m.
const RTREE_GRID: f64 = 1024.0;

/// A feature's box as its layer's R-tree keeps it: rounded outwards to the grid. A feature
/// moving inside its grid cells keeps its R-tree entry, which is then not rewritten (the
/// R-tree update was a quarter of the writer's time in a replay of moving vessels). Readers
/// use the R-tree only to find candidates and test the exact box stored with the feature, so
/// the rounding costs them a few more candidates, not a wrong answer. The grid's steps are
/// exact in the R-tree's 32-bit floats (multiples of 2^-10 below 2^18), so what it stores is
/// exactly this box.
pub(crate) fn rtree_box(b: BBox) -> BBox {
    [
        (b[0] * RTREE_GRID).floor() / RTREE_GRID,
        (b[1] * RTREE_GRID).floor() / RTREE_GRID,
        (b[2] * RTREE_GRID).ceil() / RTREE_GRID,
        (b[3] * RTREE_GRID).ceil() / RTREE_GRID,
    ]
}

/// SQL creating a layer's R-tree (columns: `ord`, then min/max per dimension).
pub(crate) fn create_rtree_sql(layer_id: i64) -> String {
    format!(
        "CREATE VIRTUAL TABLE {} USING rtree(ord, minx, maxx, miny, maxy)",
        rtree_table(layer_id)
    )
}

/// Brings the database to [`SCHEMA_VERSION`], one transaction per step.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {current}; this build knows up to {SCHEMA_VERSION}"
        )));
    }
    for (from, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        match step {
            Step::Sql(sql) => tx.execute_batch(sql),
            Step::Code(f) => f(&tx),
        }
        .map_err(db_err)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(version = from + 1, "Migrated the SQLite schema.");
    }
    Ok(())
}
