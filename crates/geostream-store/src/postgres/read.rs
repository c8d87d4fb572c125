//! Reads: rows to features, queries with their filters pushed down, snapshots streamed
//! through a portal, the change log and locks.

use std::sync::Arc;

use geostream_core::feature::{BBox, Change, Feature, FeatureType, Geometry, format_time_ms};
use geostream_filter::sql::{Dialect, SqlParam, attribute_to_sql};
use geostream_filter::{FeatureRef, Filter};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::{Inner, db_err, sql_i64, sql_u64};
use crate::boxes::search_boxes;
use crate::{
    ChangePage, FeatureQuery, Holder, KnownKey, KnownPage, KnownRow, LayerInfo, Lock, QueryPage,
    Result, Snapshot, SnapshotRequest, StoreError,
};

/// Columns of `features` that [`StoredFeature::from_row`] reads, in its order.
pub(crate) const FEATURE_COLUMNS: &str =
    "ord, fid, version, updated_ms, geometry, properties, minx, miny, maxx, maxy";

/// Rows a scan fetches from its portal at a time.
const SCAN_CHUNK: i32 = 1000;

/// Pages a snapshot reads ahead of its consumer (its transaction stays open meanwhile).
const SNAPSHOT_PAGES_AHEAD: usize = 2;

/// A feature row, decoded.
#[derive(Clone, Debug)]
pub(crate) struct StoredFeature {
    /// Creation order.
    pub(crate) ord: i64,
    /// The feature.
    pub(crate) feature: Feature,
    /// Its bounding box as stored.
    pub(crate) bbox: Option<BBox>,
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("corrupt {what} in the database: {e}"))
}

impl StoredFeature {
    /// Decodes a row selected with [`FEATURE_COLUMNS`] starting at column `at`.
    pub(crate) fn from_row(row: &Row, at: usize) -> Result<StoredFeature> {
        let fid: String = row.try_get(at + 1).map_err(|e| corrupt("feature row", e))?;
        let what = || format!("feature {fid:?}");
        let get = |e: tokio_postgres::Error| corrupt(&what(), e);
        let ord: i64 = row.try_get(at).map_err(get)?;
        let version: i64 = row.try_get(at + 2).map_err(get)?;
        let updated_ms: i64 = row.try_get(at + 3).map_err(get)?;
        let geometry_json: Option<String> = row.try_get(at + 4).map_err(get)?;
        let properties: Value = row.try_get(at + 5).map_err(get)?;
        let b: [Option<f64>; 4] = [
            row.try_get(at + 6).map_err(get)?,
            row.try_get(at + 7).map_err(get)?,
            row.try_get(at + 8).map_err(get)?,
            row.try_get(at + 9).map_err(get)?,
        ];
        let geometry: Option<Geometry> = match &geometry_json {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| corrupt(&what(), e))?),
            None => None,
        };
        let Value::Object(properties) = properties else {
            return Err(corrupt(&what(), "properties are not an object"));
        };
        let bbox = match b {
            [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
            [None, None, None, None] => None,
            _ => return Err(corrupt(&what(), "partial bounding box")),
        };
        Ok(StoredFeature {
            ord,
            feature: Feature {
                kind: FeatureType::Feature,
                id: fid,
                geometry,
                properties,
                version: sql_u64(version),
                updated: format_time_ms(sql_u64(updated_ms)),
            },
            bbox,
        })
    }
}

/// Decodes a change log body.
pub(crate) fn decode_change(body: &str) -> Result<Change> {
    serde_json::from_str(body).map_err(|e| corrupt("change", e))
}

const LAYER_COLUMNS: &str =
    "l.id, l.name, l.title, l.description, l.last_writer_wins, l.seq, l.count, l.created_ms";

fn layer_from_row(r: &Row) -> Result<(i64, LayerInfo)> {
    let f = |e| corrupt("layer row", e);
    Ok((
        r.try_get(0).map_err(f)?,
        LayerInfo {
            name: r.try_get(1).map_err(f)?,
            title: r.try_get(2).map_err(f)?,
            description: r.try_get(3).map_err(f)?,
            last_writer_wins: r.try_get(4).map_err(f)?,
            seq: sql_u64(r.try_get(5).map_err(f)?),
            count: sql_u64(r.try_get(6).map_err(f)?),
            bbox: None,
            created_ms: sql_u64(r.try_get(7).map_err(f)?),
        },
    ))
}

/// The extent columns of a layer row selected with [`LAYER_WITH_EXTENT`].
fn extent_from_row(r: &Row) -> Result<Option<BBox>> {
    let f = |e| corrupt("layer extent", e);
    let b: [Option<f64>; 4] = [
        r.try_get(8).map_err(f)?,
        r.try_get(9).map_err(f)?,
        r.try_get(10).map_err(f)?,
        r.try_get(11).map_err(f)?,
    ];
    Ok(match b {
        [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
        _ => None,
    })
}

/// Layers with their extents (exact, from the stored f64 boxes). The aggregate reads the
/// layer's rows; `ORDER BY name COLLATE "C"` orders by bytes, as the SQLite store does.
fn layer_with_extent(filter: &str) -> String {
    format!(
        "SELECT {LAYER_COLUMNS}, e.minx, e.miny, e.maxx, e.maxy FROM layers l \
         LEFT JOIN LATERAL (SELECT min(minx) AS minx, min(miny) AS miny, max(maxx) AS maxx, max(maxy) AS maxy \
         FROM features f WHERE f.layer = l.id) e ON true {filter}"
    )
}

pub(crate) async fn list_layers(inner: &Inner) -> Result<Vec<LayerInfo>> {
    let c = inner.client().await?;
    let rows = c
        .query(&layer_with_extent("ORDER BY l.name COLLATE \"C\""), &[])
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let (_, mut info) = layer_from_row(r)?;
            info.bbox = extent_from_row(r)?;
            Ok(info)
        })
        .collect()
}

pub(crate) async fn layer(inner: &Inner, name: &str) -> Result<LayerInfo> {
    let c = inner.client().await?;
    let row = c
        .query_opt(&layer_with_extent("WHERE l.name = $1"), &[&name])
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::LayerNotFound(name.to_owned()))?;
    let (_, mut info) = layer_from_row(&row)?;
    info.bbox = extent_from_row(&row)?;
    Ok(info)
}

/// A layer's id and info (without extent), or `LayerNotFound`.
pub(crate) async fn layer_head<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    name: &str,
) -> Result<(i64, LayerInfo)> {
    let row = c
        .query_opt(
            &format!("SELECT {LAYER_COLUMNS} FROM layers l WHERE l.name = $1"),
            &[&name],
        )
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::LayerNotFound(name.to_owned()))?;
    layer_from_row(&row)
}

pub(crate) async fn get(inner: &Inner, layer: &str, id: &str) -> Result<Option<Feature>> {
    let c = inner.client().await?;
    // One round trip: the layer (to tell a missing layer from a missing feature) joined
    // with the feature.
    let sql = format!(
        "SELECT l.id, {} FROM layers l LEFT JOIN features f ON f.layer = l.id AND f.fid = $2 WHERE l.name = $1",
        FEATURE_COLUMNS
            .split(", ")
            .map(|c| format!("f.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row = c
        .query_opt(&sql, &[&layer, &id])
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::LayerNotFound(layer.to_owned()))?;
    let ord: Option<i64> = row.try_get(1).map_err(|e| corrupt("feature row", e))?;
    match ord {
        None => Ok(None),
        Some(_) => Ok(Some(StoredFeature::from_row(&row, 1)?.feature)),
    }
}

// ----- queries -----

type Param = Box<dyn ToSql + Sync + Send>;

/// A `SELECT` of a layer's features with as much of the box and filter as SQL can take.
struct Plan {
    sql: String,
    params: Vec<Param>,
    /// The filter still to be evaluated in Rust (`None`: SQL decided everything).
    residual: Option<Arc<Filter>>,
    /// Nothing can match.
    empty: bool,
}

impl Plan {
    /// Plans a scan of layer `layer_id` in creation order. With `page` (limit, offset),
    /// adds `LIMIT limit + 1 OFFSET offset` when SQL decides everything.
    fn new(
        layer_id: i64,
        bbox: Option<BBox>,
        filter: Option<&Arc<Filter>>,
        page: Option<(usize, usize)>,
    ) -> Plan {
        let mut params: Vec<Param> = vec![Box::new(layer_id)];
        let mut conds = vec!["layer = $1".to_string()];
        let filter = filter.filter(|f| !f.is_empty());
        let boxes = search_boxes(bbox, filter.and_then(|f| f.bbox()));
        if let Some(parts) = &boxes {
            if parts.is_empty() {
                return Plan {
                    sql: String::new(),
                    params,
                    residual: None,
                    empty: true,
                };
            }
            let mut ors = Vec::new();
            for p in parts {
                let n = params.len();
                for v in p {
                    params.push(Box::new(*v));
                }
                let (a, b, c, d) = (n + 1, n + 2, n + 3, n + 4);
                // `&&` finds candidates in the GiST index (f32 boxes, rounded outwards); the
                // f64 columns decide exactly.
                ors.push(format!(
                    "(geom && ST_MakeEnvelope(${a}, ${b}, ${c}, ${d}, 4326) \
                     AND maxx >= ${a} AND minx <= ${c} AND maxy >= ${b} AND miny <= ${d})"
                ));
            }
            conds.push(format!("({})", ors.join(" OR ")));
        }
        let mut residual = None;
        if let Some(f) = filter {
            let mut all_in_sql = f.spatial.is_none() && f.temporal.is_none();
            if let Some(a) = &f.attribute {
                match attribute_to_sql(a, Dialect::Postgres, params.len() + 1) {
                    Ok(w) => {
                        conds.push(format!("({})", w.clause));
                        for p in w.params {
                            params.push(match p {
                                SqlParam::Text(s) => Box::new(s),
                                SqlParam::Float(v) => Box::new(v),
                                SqlParam::Int(v) => Box::new(v),
                                SqlParam::Bool(v) => Box::new(v),
                            });
                        }
                    }
                    // No exact SQL form: evaluated in Rust on the candidates.
                    Err(_) => all_in_sql = false,
                }
            }
            if !all_in_sql {
                residual = Some(f.clone());
            }
        }
        let mut sql = format!(
            "SELECT {FEATURE_COLUMNS} FROM features WHERE {} ORDER BY ord",
            conds.join(" AND ")
        );
        if let (None, Some((limit, offset))) = (&residual, page) {
            let n = params.len();
            params.push(Box::new(sql_i64(limit as u64 + 1)));
            params.push(Box::new(sql_i64(offset as u64)));
            sql.push_str(&format!(" LIMIT ${} OFFSET ${}", n + 1, n + 2));
        }
        Plan {
            sql,
            params,
            residual,
            empty: false,
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Whether a stored feature passes the part of a filter SQL did not decide.
fn residual_matches(filter: &Filter, f: &StoredFeature) -> bool {
    // A geometry geo cannot take is treated as absent, as in the other stores.
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

pub(crate) async fn query_known<T>(
    inner: &Inner,
    layer: &str,
    bbox: BBox,
    limit: usize,
    mut known: impl FnMut(KnownKey<'_>) -> Option<T>,
) -> Result<KnownPage<T>> {
    let mut c = inner.client().await?;
    let tx = read_tx(&mut c).await?;
    let (layer_id, info) = layer_head(&*tx, layer).await?;
    let plan = Plan::new(layer_id, Some(bbox), None, Some((limit, 0)));
    let mut page = KnownPage {
        rows: Vec::new(),
        truncated: false,
        seq: info.seq,
        layer_created_ms: info.created_ms,
    };
    if plan.empty {
        return Ok(page);
    }
    // SQL decides everything here (no filter); one row more than `limit` says whether the
    // box held more.
    let rows = tx.query(&plan.sql, &plan.params()).await.map_err(db_err)?;
    page.truncated = rows.len() > limit;
    for row in rows.iter().take(limit) {
        // The id and version decide whether the JSON is parsed at all.
        let fid: &str = row.try_get(1).map_err(|e| corrupt("feature row", e))?;
        let version: i64 = row
            .try_get(2)
            .map_err(|e| corrupt(&format!("feature {fid:?}"), e))?;
        let key = KnownKey {
            layer_created_ms: info.created_ms,
            id: fid,
            version: sql_u64(version),
        };
        page.rows.push(match known(key) {
            Some(held) => KnownRow::Known(held),
            None => KnownRow::Fresh(Box::new(StoredFeature::from_row(row, 0)?.feature)),
        });
    }
    Ok(page)
}

/// Starts a read-only transaction that sees one committed state for all its statements.
async fn read_tx(c: &mut deadpool_postgres::Object) -> Result<deadpool_postgres::Transaction<'_>> {
    c.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_err)
}

pub(crate) async fn query(inner: &Inner, layer: &str, q: &FeatureQuery) -> Result<QueryPage> {
    let mut c = inner.client().await?;
    let tx = read_tx(&mut c).await?;
    let (layer_id, info) = layer_head(&*tx, layer).await?;
    let plan = Plan::new(
        layer_id,
        q.bbox,
        q.filter.as_ref(),
        Some((q.limit, q.offset)),
    );
    let mut page = QueryPage {
        features: Vec::new(),
        next_offset: None,
        seq: info.seq,
    };
    if plan.empty {
        return Ok(page);
    }
    let Some(residual) = &plan.residual else {
        // SQL did everything, paging included (one row more than the page says whether
        // another page follows).
        let rows = tx.query(&plan.sql, &plan.params()).await.map_err(db_err)?;
        for row in rows.iter().take(q.limit) {
            page.features.push(StoredFeature::from_row(row, 0)?.feature);
        }
        if rows.len() > q.limit {
            page.next_offset = Some(q.offset + q.limit);
        }
        return Ok(page);
    };
    // Part of the filter is evaluated here: page over the matching candidates.
    let portal = tx.bind(&plan.sql, &plan.params()).await.map_err(db_err)?;
    let mut skipped = 0usize;
    'scan: loop {
        let rows = tx.query_portal(&portal, SCAN_CHUNK).await.map_err(db_err)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let f = StoredFeature::from_row(row, 0)?;
            if !residual_matches(residual, &f) {
                continue;
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            if page.features.len() >= q.limit {
                page.next_offset = Some(q.offset + q.limit);
                break 'scan;
            }
            page.features.push(f.feature);
        }
    }
    Ok(page)
}

// ----- the change log -----

/// The oldest retained sequence number: the first change still in the log, or `seq + 1`.
async fn first_retained<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    layer_id: i64,
    seq: u64,
) -> Result<u64> {
    let min: Option<i64> = c
        .query_one(
            "SELECT min(seq) FROM changes WHERE layer = $1",
            &[&layer_id],
        )
        .await
        .map_err(db_err)?
        .get(0);
    Ok(min.map_or(seq + 1, sql_u64))
}

async fn read_changes<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    layer_id: i64,
    since: u64,
    limit: usize,
) -> Result<Vec<Change>> {
    let rows = c
        .query(
            "SELECT body FROM changes WHERE layer = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&layer_id, &sql_i64(since), &sql_i64(limit as u64)],
        )
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let body: &str = r.try_get(0).map_err(|e| corrupt("change", e))?;
            decode_change(body)
        })
        .collect()
}

pub(crate) async fn changes(
    inner: &Inner,
    layer: &str,
    since: u64,
    limit: usize,
) -> Result<ChangePage> {
    let mut c = inner.client().await?;
    let tx = read_tx(&mut c).await?;
    let (layer_id, info) = layer_head(&*tx, layer).await?;
    let first_retained = first_retained(&*tx, layer_id, info.seq).await?;
    let changes = if limit == 0 {
        Vec::new()
    } else {
        read_changes(&*tx, layer_id, since, limit).await?
    };
    Ok(ChangePage {
        changes,
        first_retained,
        seq: info.seq,
    })
}

pub(crate) async fn locks(inner: &Inner, layer: &str) -> Result<Vec<Lock>> {
    let c = inner.client().await?;
    let (layer_id, _) = layer_head(&**c, layer).await?;
    let rows = c
        .query(
            "SELECT fid, holder_client, holder_user, until_ms FROM locks WHERE layer = $1 AND until_ms > $2 ORDER BY fid COLLATE \"C\"",
            &[&layer_id, &sql_i64(super::now_ms())],
        )
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let f = |e| corrupt("lock", e);
            Ok(Lock {
                layer: layer.to_owned(),
                id: r.try_get(0).map_err(f)?,
                holder: Holder {
                    client: r.try_get(1).map_err(f)?,
                    user: r.try_get(2).map_err(f)?,
                },
                until_ms: sql_u64(r.try_get(3).map_err(f)?),
            })
        })
        .collect()
}

// ----- snapshots -----

/// What a snapshot answers before its pages: seq, changes since, complete.
type SnapshotHead = (u64, Vec<Change>, bool);

/// Starts a snapshot: a task takes a connection, opens a `REPEATABLE READ` transaction,
/// answers the head and then streams the features page by page as the receiver takes
/// them, keeping the transaction (the cut) until the last page or until the receiver is
/// dropped.
pub(crate) async fn snapshot(
    inner: &Arc<Inner>,
    layer: String,
    req: SnapshotRequest,
) -> Result<Snapshot> {
    let (head_tx, head_rx) = oneshot::channel::<Result<SnapshotHead>>();
    let (page_tx, page_rx) = mpsc::channel(SNAPSHOT_PAGES_AHEAD);
    let inner = inner.clone();
    tokio::spawn(async move {
        let mut c = match inner.client().await {
            Ok(c) => c,
            Err(e) => {
                let _ = head_tx.send(Err(e));
                return;
            }
        };
        let max = inner.opts.max_resume_changes;
        stream_snapshot(&mut c, &layer, &req, max, head_tx, page_tx).await;
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

async fn stream_snapshot(
    c: &mut deadpool_postgres::Object,
    layer: &str,
    req: &SnapshotRequest,
    max_changes: usize,
    head_tx: oneshot::Sender<Result<SnapshotHead>>,
    page_tx: mpsc::Sender<Result<Vec<Feature>>>,
) {
    let tx = match read_tx(c).await {
        Ok(tx) => tx,
        Err(e) => {
            let _ = head_tx.send(Err(e));
            return;
        }
    };
    let head = async {
        let (layer_id, info) = layer_head(&*tx, layer).await?;
        let seq = info.seq;
        let Some(since) = req.since else {
            return Ok((layer_id, (seq, Vec::new(), true)));
        };
        let first = first_retained(&*tx, layer_id, seq).await?;
        // Beyond the log, behind what is kept, or too far behind to be worth replaying:
        // the caller resyncs from the features.
        let resumable = since <= seq && since + 1 >= first && seq - since <= max_changes as u64;
        if !resumable {
            return Ok((layer_id, (seq, Vec::new(), false)));
        }
        let changes = read_changes(&*tx, layer_id, since, max_changes).await?;
        Ok((layer_id, (seq, changes, true)))
    }
    .await;
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
    let plan = Plan::new(layer_id, req.bbox, req.filter.as_ref(), None);
    if plan.empty {
        return;
    }
    let page_size = req.page_size.max(1);
    let r: Result<()> = async {
        let portal = tx.bind(&plan.sql, &plan.params()).await.map_err(db_err)?;
        let mut page = Vec::with_capacity(page_size.min(4096));
        loop {
            let rows = tx.query_portal(&portal, SCAN_CHUNK).await.map_err(db_err)?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let f = StoredFeature::from_row(row, 0)?;
                if let Some(r) = &plan.residual
                    && !residual_matches(r, &f)
                {
                    continue;
                }
                page.push(f.feature);
                if page.len() >= page_size {
                    let full =
                        std::mem::replace(&mut page, Vec::with_capacity(page_size.min(4096)));
                    // Waits while the consumer is behind; fails when it dropped the receiver,
                    // which ends the read (and the transaction).
                    if page_tx.send(Ok(full)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if !page.is_empty() {
            let _ = page_tx.send(Ok(page)).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        let _ = page_tx.send(Err(e)).await;
    }
}

/// Properties as the `jsonb` parameter of a write.
pub(crate) fn properties_param(
    p: &Map<String, Value>,
) -> tokio_postgres::types::Json<&Map<String, Value>> {
    tokio_postgres::types::Json(p)
}
