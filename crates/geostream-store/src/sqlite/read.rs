//! Reads: a pool of read-only connections used from tokio's blocking threads. Every read
//! runs in one read transaction, so what it returns is one committed state (WAL snapshot
//! isolation) and it never waits for the writer.

use std::path::PathBuf;
use std::sync::Arc;

use geostream_core::feature::{BBox, Change, Feature};
use geostream_filter::{FeatureRef, Filter};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::codec::{FEATURE_COLUMNS, StoredFeature, corrupt, decode_change};
use super::schema::rtree_table;
use super::{SqliteOptions, connect, db_err};
use crate::boxes::{passes_query_box, search_boxes};
use crate::{
    ChangePage, FeatureQuery, Holder, KnownKey, KnownPage, KnownRow, LayerInfo, Lock, QueryPage,
    Result, Snapshot, SnapshotRequest, StoreError,
};

/// Pages a snapshot reads ahead of its consumer. Small on purpose: the reading thread
/// keeps a read transaction open while it waits, and a slow subscriber should hold little
/// memory.
const SNAPSHOT_PAGES_AHEAD: usize = 2;

/// The read connection pool.
pub(crate) struct Readers {
    path: PathBuf,
    opts: SqliteOptions,
    /// Idle connections, at most `opts.readers`.
    idle: Mutex<Vec<Connection>>,
    /// Bounds the reads running at once (and so the blocking threads they occupy).
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, opts: SqliteOptions) -> Readers {
        let permits = Arc::new(Semaphore::new(opts.readers));
        Readers {
            path,
            idle: Mutex::new(Vec::with_capacity(opts.readers)),
            permits,
            opts,
        }
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Result<Connection> {
        if let Some(c) = self.idle.lock().pop() {
            return Ok(c);
        }
        let conn = connect(&self.path, &self.opts)?;
        // A reader must never write by mistake; writes belong to the writer thread.
        conn.pragma_update(None, "query_only", true)
            .map_err(db_err)?;
        Ok(conn)
    }

    /// Returns a connection to the pool (or closes it when the pool is full).
    fn give(&self, conn: Connection) {
        if !conn.is_autocommit() {
            // A read that failed halfway; start the next one clean.
            if conn.execute_batch("ROLLBACK").is_err() {
                return;
            }
        }
        let mut idle = self.idle.lock();
        if idle.len() < self.opts.readers {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection on a blocking thread.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the reader pool is closed".into()))?;
        let me = self.clone();
        // The connection goes back to the pool inside the blocking task, so a caller that
        // stops waiting (its future dropped) does not lose it.
        tokio::task::spawn_blocking(move || {
            let mut conn = me.take()?;
            let r = f(&mut conn);
            me.give(conn);
            drop(permit);
            r
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a read failed: {e}")))?
    }
}

/// A layer's row: its id and the info without the extent.
fn layer_head(conn: &Connection, name: &str) -> Result<(i64, LayerInfo)> {
    conn.prepare_cached("SELECT id, name, title, description, last_writer_wins, seq, count, created_ms FROM layers WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], layer_from_row).optional())
        .map_err(db_err)?
        .ok_or_else(|| StoreError::LayerNotFound(name.to_owned()))
}

fn layer_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, LayerInfo)> {
    Ok((
        r.get(0)?,
        LayerInfo {
            name: r.get(1)?,
            title: r.get(2)?,
            description: r.get(3)?,
            last_writer_wins: r.get(4)?,
            seq: r.get(5)?,
            count: r.get(6)?,
            bbox: None,
            created_ms: r.get(7)?,
        },
    ))
}

/// The extent of a layer's features. Read from the R-tree's root node, which holds the
/// union of the whole tree in a few dozen bytes, so it costs the same for 10 features or
/// 10 million; the R-tree keeps boxes rounded outwards to its grid, so the extent may be
/// larger than the exact one by up to one grid step (1/1024 degree, see
/// [`super::schema::rtree_box`]). If the node does not
/// decode (an unexpected SQLite format), the extent is computed with a scan.
fn layer_extent(conn: &Connection, layer_id: i64) -> Result<Option<BBox>> {
    let table = rtree_table(layer_id);
    let root: Option<Vec<u8>> = conn
        .prepare_cached(&format!("SELECT data FROM {table}_node WHERE nodeno = 1"))
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(db_err)?;
    if let Some(extent) = root.as_deref().and_then(decode_rtree_root) {
        return Ok(extent);
    }
    let b: [Option<f64>; 4] = conn
        .prepare_cached(&format!(
            "SELECT min(minx), min(miny), max(maxx), max(maxy) FROM {table}"
        ))
        .and_then(|mut s| s.query_row([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?])))
        .map_err(db_err)?;
    Ok(match b {
        [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
        _ => None,
    })
}

/// Decodes the root node of a 2-D R*Tree (format described in SQLite's `rtree.c`: a 2-byte
/// depth, a 2-byte cell count, then cells of an 8-byte id and 4 big-endian f32 — minx,
/// maxx, miny, maxy). `None` when the blob does not have that shape; `Some(None)` for an
/// empty tree.
fn decode_rtree_root(blob: &[u8]) -> Option<Option<BBox>> {
    const CELL: usize = 8 + 4 * 4;
    let count = usize::from(u16::from_be_bytes([*blob.get(2)?, *blob.get(3)?]));
    if count == 0 {
        return Some(None);
    }
    let cells = blob.get(4..4 + count * CELL)?;
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    for cell in cells.chunks_exact(CELL) {
        let c = |k: usize| {
            f64::from(f32::from_be_bytes([
                cell[8 + 4 * k],
                cell[9 + 4 * k],
                cell[10 + 4 * k],
                cell[11 + 4 * k],
            ]))
        };
        let (minx, maxx, miny, maxy) = (c(0), c(1), c(2), c(3));
        if !(minx <= maxx && miny <= maxy) {
            return None;
        }
        b = [
            b[0].min(minx),
            b[1].min(miny),
            b[2].max(maxx),
            b[3].max(maxy),
        ];
    }
    b.iter().all(|v| v.is_finite()).then_some(Some(b))
}

pub(crate) fn list_layers(conn: &mut Connection) -> Result<Vec<LayerInfo>> {
    let tx = conn.transaction().map_err(db_err)?;
    let heads: Vec<(i64, LayerInfo)> = {
        let mut st = tx
            .prepare_cached("SELECT id, name, title, description, last_writer_wins, seq, count, created_ms FROM layers ORDER BY name")
            .map_err(db_err)?;
        let rows = st.query_map([], layer_from_row).map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| corrupt("layer row", e))?
    };
    heads
        .into_iter()
        .map(|(id, mut info)| {
            info.bbox = layer_extent(&tx, id)?;
            Ok(info)
        })
        .collect()
}

pub(crate) fn layer_info(conn: &mut Connection, name: &str) -> Result<LayerInfo> {
    let tx = conn.transaction().map_err(db_err)?;
    let (id, mut info) = layer_head(&tx, name)?;
    info.bbox = layer_extent(&tx, id)?;
    Ok(info)
}

pub(crate) fn get(conn: &mut Connection, layer: &str, id: &str) -> Result<Option<Feature>> {
    let tx = conn.transaction().map_err(db_err)?;
    let (layer_id, _) = layer_head(&tx, layer)?;
    let mut st = tx
        .prepare_cached(&format!(
            "SELECT {FEATURE_COLUMNS} FROM features WHERE layer = ?1 AND fid = ?2"
        ))
        .map_err(db_err)?;
    let mut rows = st.query(rusqlite::params![layer_id, id]).map_err(db_err)?;
    match rows.next().map_err(db_err)? {
        Some(row) => Ok(Some(StoredFeature::from_row(row)?.feature)),
        None => Ok(None),
    }
}

/// Whether a stored feature passes an exact filter.
fn filter_matches(filter: &Filter, f: &StoredFeature) -> bool {
    if filter.is_empty() {
        return true;
    }
    // A geometry that geo cannot take (it accepts every valid GeoJSON geometry) is treated
    // as absent: it matches no spatial test.
    let geometry = f
        .feature
        .geometry
        .as_ref()
        .and_then(|g| geo::Geometry::<f64>::try_from(g).ok());
    let id = Value::String(f.feature.id.clone());
    filter.matches(&FeatureRef {
        id: Some(&id),
        geometry: geometry.as_ref(),
        bbox: f.bbox,
        properties: &f.feature.properties,
    })
}

/// Visits the rows (selected with [`FEATURE_COLUMNS`]) of layer `layer_id` whose stored box
/// may meet `boxes` (every row of the layer when `None`), in creation order, until `each`
/// returns false. The R-tree narrows the candidates; callers make the exact tests.
fn scan_rows(
    conn: &Connection,
    layer_id: i64,
    boxes: Option<&[BBox]>,
    mut each: impl FnMut(&rusqlite::Row<'_>) -> Result<bool>,
) -> Result<()> {
    let (sql, args) = match boxes {
        None => (
            format!("SELECT {FEATURE_COLUMNS} FROM features WHERE layer = ?1 ORDER BY ord"),
            Vec::new(),
        ),
        Some([]) => return Ok(()),
        Some(parts) => {
            let table = rtree_table(layer_id);
            let mut sub = Vec::new();
            let mut args = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let n = i * 4;
                sub.push(format!("SELECT ord FROM {table} WHERE maxx >= ?{} AND minx <= ?{} AND maxy >= ?{} AND miny <= ?{}", n + 1, n + 3, n + 2, n + 4));
                args.extend_from_slice(p);
            }
            // `ord IN (...)` on the rowid: SQLite looks the rows up in rowid order, so the
            // result comes out in creation order without a sort.
            (
                format!(
                    "SELECT {FEATURE_COLUMNS} FROM features WHERE ord IN ({}) ORDER BY ord",
                    sub.join(" UNION ")
                ),
                args,
            )
        }
    };
    let mut st = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = if args.is_empty() {
        st.query([layer_id])
    } else {
        st.query(params_from_iter(args.iter()))
    }
    .map_err(db_err)?;
    while let Some(row) = rows.next().map_err(db_err)? {
        if !each(row)? {
            break;
        }
    }
    Ok(())
}

/// Visits a layer's features passing `bbox` and `filter`, in creation order, until `each`
/// returns false.
fn scan(
    conn: &Connection,
    layer_id: i64,
    bbox: Option<BBox>,
    filter: Option<&Filter>,
    mut each: impl FnMut(Feature) -> bool,
) -> Result<()> {
    let boxes = search_boxes(bbox, filter.and_then(Filter::bbox));
    scan_rows(conn, layer_id, boxes.as_deref(), |row| {
        let f = StoredFeature::from_row(row)?;
        if !passes_query_box(bbox, f.bbox) {
            return Ok(true);
        }
        if let Some(filter) = filter
            && !filter_matches(filter, &f)
        {
            return Ok(true);
        }
        Ok(each(f.feature))
    })
}

pub(crate) fn query(conn: &mut Connection, layer: &str, q: &FeatureQuery) -> Result<QueryPage> {
    let tx = conn.transaction().map_err(db_err)?;
    let (layer_id, info) = layer_head(&tx, layer)?;
    let mut features = Vec::with_capacity(q.limit.min(1024));
    let mut skipped = 0usize;
    let mut next_offset = None;
    scan(&tx, layer_id, q.bbox, q.filter.as_deref(), |f| {
        if skipped < q.offset {
            skipped += 1;
            return true;
        }
        if features.len() >= q.limit {
            next_offset = Some(q.offset + features.len());
            return false;
        }
        features.push(f);
        true
    })?;
    Ok(QueryPage {
        features,
        next_offset,
        seq: info.seq,
    })
}

pub(crate) fn query_known<T>(
    conn: &mut Connection,
    layer: &str,
    bbox: BBox,
    limit: usize,
    mut known: impl FnMut(KnownKey<'_>) -> Option<T>,
) -> Result<KnownPage<T>> {
    let tx = conn.transaction().map_err(db_err)?;
    let (layer_id, info) = layer_head(&tx, layer)?;
    let mut page = KnownPage {
        rows: Vec::new(),
        truncated: false,
        seq: info.seq,
        layer_created_ms: info.created_ms,
    };
    let boxes = search_boxes(Some(bbox), None);
    scan_rows(&tx, layer_id, boxes.as_deref(), |row| {
        // Only the id, the version and the box are read before deciding: the JSON columns
        // are neither copied nor parsed for a feature the caller holds.
        let (fid, version, stored_box) = row_key(row)?;
        if !passes_query_box(Some(bbox), stored_box) {
            return Ok(true);
        }
        if page.rows.len() >= limit {
            page.truncated = true;
            return Ok(false);
        }
        let fid = fid.as_str().map_err(|e| corrupt("feature row", e))?;
        let key = KnownKey {
            layer_created_ms: info.created_ms,
            id: fid,
            version,
        };
        page.rows.push(match known(key) {
            Some(held) => KnownRow::Known(held),
            None => KnownRow::Fresh(Box::new(StoredFeature::from_row(row)?.feature)),
        });
        Ok(true)
    })?;
    Ok(page)
}

/// The id, version and stored box of a row selected with [`FEATURE_COLUMNS`].
fn row_key<'r>(
    row: &'r rusqlite::Row<'_>,
) -> Result<(rusqlite::types::ValueRef<'r>, u64, Option<BBox>)> {
    let bad = |e| corrupt("feature row", e);
    let fid = row.get_ref(1).map_err(bad)?;
    let version: u64 = row.get(2).map_err(bad)?;
    let b: [Option<f64>; 4] = [
        row.get(6).map_err(bad)?,
        row.get(7).map_err(bad)?,
        row.get(8).map_err(bad)?,
        row.get(9).map_err(bad)?,
    ];
    let stored_box = match b {
        [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
        _ => None,
    };
    Ok((fid, version, stored_box))
}

/// The oldest retained sequence number: the first change still in the log, or `seq + 1`
/// when none is.
fn first_retained(conn: &Connection, layer_id: i64, seq: u64) -> Result<u64> {
    let min: Option<u64> = conn
        .prepare_cached("SELECT min(seq) FROM changes WHERE layer = ?1")
        .and_then(|mut s| s.query_row([layer_id], |r| r.get(0)))
        .map_err(db_err)?;
    Ok(min.unwrap_or(seq + 1))
}

fn read_changes(conn: &Connection, layer_id: i64, since: u64, limit: usize) -> Result<Vec<Change>> {
    let mut st = conn
        .prepare_cached(
            "SELECT body FROM changes WHERE layer = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(db_err)?;
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = st
        .query(rusqlite::params![layer_id, since, limit])
        .map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let body: String = row.get(0).map_err(|e| corrupt("change", e))?;
        out.push(decode_change(&body)?);
    }
    Ok(out)
}

pub(crate) fn changes(
    conn: &mut Connection,
    layer: &str,
    since: u64,
    limit: usize,
) -> Result<ChangePage> {
    let tx = conn.transaction().map_err(db_err)?;
    let (layer_id, info) = layer_head(&tx, layer)?;
    let first_retained = first_retained(&tx, layer_id, info.seq)?;
    let changes = if limit == 0 {
        Vec::new()
    } else {
        read_changes(&tx, layer_id, since, limit)?
    };
    Ok(ChangePage {
        changes,
        first_retained,
        seq: info.seq,
    })
}

pub(crate) fn locks(conn: &mut Connection, layer: &str, now: u64) -> Result<Vec<Lock>> {
    let tx = conn.transaction().map_err(db_err)?;
    let (layer_id, _) = layer_head(&tx, layer)?;
    let mut st = tx
        .prepare_cached("SELECT fid, client, user, until_ms FROM locks WHERE layer = ?1 AND until_ms > ?2 ORDER BY fid")
        .map_err(db_err)?;
    let rows = st
        .query_map(
            rusqlite::params![layer_id, i64::try_from(now).unwrap_or(i64::MAX)],
            |r| {
                Ok(Lock {
                    layer: layer.to_owned(),
                    id: r.get(0)?,
                    holder: Holder {
                        client: r.get(1)?,
                        user: r.get(2)?,
                    },
                    until_ms: r.get(3)?,
                })
            },
        )
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| corrupt("lock", e))
}

/// What a snapshot answers before its pages.
type SnapshotHead = (u64, Vec<Change>, bool);

/// Starts a snapshot: a blocking thread opens a read transaction, answers the head (seq,
/// changes since, complete) and then streams the features, page by page, as the receiver
/// takes them, keeping the transaction (and so the cut) until the last page or until the
/// receiver is dropped.
///
/// It uses an idle pooled connection or opens its own, without taking a read permit: a
/// subscriber that reads its pages slowly must not starve the other reads.
pub(crate) async fn snapshot(
    readers: &Arc<Readers>,
    layer: String,
    req: SnapshotRequest,
) -> Result<Snapshot> {
    let (head_tx, head_rx) = oneshot::channel::<Result<SnapshotHead>>();
    let (page_tx, page_rx) = mpsc::channel(SNAPSHOT_PAGES_AHEAD);
    let readers = readers.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = match readers.take() {
            Ok(c) => c,
            Err(e) => {
                let _ = head_tx.send(Err(e));
                return;
            }
        };
        stream_snapshot(
            &mut conn,
            &layer,
            &req,
            readers.opts.max_resume_changes,
            head_tx,
            page_tx,
        );
        readers.give(conn);
    });
    let (seq, changes, complete) = head_rx
        .await
        .map_err(|_| StoreError::Unavailable("the snapshot reader stopped".into()))??;
    Ok(Snapshot {
        seq,
        changes,
        complete,
        pages: page_rx,
    })
}

fn stream_snapshot(
    conn: &mut Connection,
    layer: &str,
    req: &SnapshotRequest,
    max_changes: usize,
    head_tx: oneshot::Sender<Result<SnapshotHead>>,
    page_tx: mpsc::Sender<Result<Vec<Feature>>>,
) {
    let tx = match conn.transaction().map_err(db_err) {
        Ok(tx) => tx,
        Err(e) => {
            let _ = head_tx.send(Err(e));
            return;
        }
    };
    let head = (|| -> Result<(i64, SnapshotHead)> {
        let (layer_id, info) = layer_head(&tx, layer)?;
        let seq = info.seq;
        let Some(since) = req.since else {
            return Ok((layer_id, (seq, Vec::new(), true)));
        };
        let first = first_retained(&tx, layer_id, seq)?;
        // A `since` beyond the log (a restored database) or behind what is kept, or too far
        // behind to be worth replaying: the caller resyncs from the features.
        let resumable = since <= seq && since + 1 >= first && seq - since <= max_changes as u64;
        if !resumable {
            return Ok((layer_id, (seq, Vec::new(), false)));
        }
        Ok((
            layer_id,
            (seq, read_changes(&tx, layer_id, since, max_changes)?, true),
        ))
    })();
    let layer_id = match head {
        Ok((id, head)) => {
            if head_tx.send(Ok(head)).is_err() {
                return;
            }
            id
        }
        Err(e) => {
            let _ = head_tx.send(Err(e));
            return;
        }
    };
    let page_size = req.page_size.max(1);
    let mut page = Vec::with_capacity(page_size.min(4096));
    let mut open = true;
    let r = scan(&tx, layer_id, req.bbox, req.filter.as_deref(), |f| {
        page.push(f);
        if page.len() >= page_size {
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_size.min(4096)));
            // Waits while the consumer is `SNAPSHOT_PAGES_AHEAD` pages behind; fails when
            // it dropped the receiver, which stops the read.
            open = page_tx.blocking_send(Ok(full)).is_ok();
        }
        open
    });
    match r {
        Err(e) => {
            let _ = page_tx.blocking_send(Err(e));
        }
        Ok(()) if open && !page.is_empty() => {
            let _ = page_tx.blocking_send(Ok(page));
        }
        Ok(()) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtree_root_decoding_refuses_odd_blobs() {
        assert_eq!(decode_rtree_root(&[0, 0, 0, 0]), Some(None));
        assert_eq!(decode_rtree_root(&[0, 0]), None);
        assert_eq!(
            decode_rtree_root(&[0, 0, 0, 2, 1, 2, 3]),
            None,
            "shorter than its cells"
        );
        let mut one = vec![0, 0, 0, 1];
        one.extend_from_slice(&7i64.to_be_bytes());
        for v in [1.0f32, 2.0, -3.0, 4.0] {
            one.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(decode_rtree_root(&one), Some(Some([1.0, -3.0, 2.0, 4.0])));
    }
}
