//! Writes: layers, edits (one transaction each, see the module docs for the locking) and
//! feature locks.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use geostream_core::api::validate_name;
use geostream_core::feature::{
    BBox, Change, ChangeOp, Feature, FeatureType, Geometry, changed_properties, format_time_ms,
    geometry_bbox, merge_patch,
};
use serde_json::{Map, Value};
use tokio_postgres::Row;

use super::read::{FEATURE_COLUMNS, StoredFeature, corrupt, properties_param};
use super::{Inner, db_err, now_ms, sql_i64, sql_u64};
use crate::{
    Holder, LayerInfo, LayerSpec, Lock, Result, StoreError, WriteOp, WriteOutcome, WriteRequest,
};

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

// ----- edits -----

/// Who and when, for every operation of one request.
struct OpCtx<'a> {
    writer: &'a Holder,
    op_id: Option<&'a str>,
    now: u64,
    updated: String,
    /// The layer's live locks, read once under the layer row lock (which `lock` also takes,
    /// so they cannot change during the request).
    locks: HashMap<String, (Holder, u64)>,
}

impl OpCtx<'_> {
    fn check_lock(&self, id: &str) -> Result<()> {
        match self.locks.get(id) {
            Some((holder, until_ms)) if holder != self.writer => Err(StoreError::Locked {
                id: id.to_owned(),
                holder: holder.clone(),
                until_ms: *until_ms,
            }),
            _ => Ok(()),
        }
    }
}

pub(crate) async fn apply(inner: &Inner, req: WriteRequest) -> Result<WriteOutcome> {
    // Prefixed so that a user and a client that happen to share a name stay apart.
    let scope = match &req.writer.user {
        Some(user) => format!("u:{user}"),
        None => format!("c:{}", req.writer.client),
    };
    let now = now_ms();
    let mut client = inner.client().await?;
    // Dropping `tx` without commit rolls everything back, whatever failed.
    let tx = client.transaction().await.map_err(db_err)?;
    if let Some(op_id) = &req.op_id {
        // The claim: a concurrent request with the same key (on any node) blocks here until
        // this transaction ends, then finds the committed outcome, or claims the key itself
        // if this one rolled back.
        let claimed = tx
            .execute(
                "INSERT INTO op_ids (scope, op_id, time_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&scope, op_id, &sql_i64(now)],
            )
            .await
            .map_err(db_err)?;
        if claimed == 0 {
            let row = tx
                .query_opt(
                    "SELECT outcome FROM op_ids WHERE scope = $1 AND op_id = $2",
                    &[&scope, op_id],
                )
                .await
                .map_err(db_err)?;
            let body: Option<String> = row.and_then(|r| r.get(0));
            let Some(body) = body else {
                return Err(StoreError::Unavailable(
                    "the operation id was being forgotten; retry".into(),
                ));
            };
            let changes: Vec<Change> =
                serde_json::from_str(&body).map_err(|e| corrupt("op id outcome", e))?;
            return Ok(WriteOutcome {
                changes,
                replayed: true,
            });
        }
    }
    if req.ops.is_empty() {
        return Err(StoreError::Invalid(
            "a write needs at least one operation".into(),
        ));
    }
    let mut layer = lock_layer(&tx, &req.layer).await?;
    let locks = live_locks(&tx, layer.id, now).await?;
    let ctx = OpCtx {
        writer: &req.writer,
        op_id: req.op_id.as_deref(),
        now,
        updated: format_time_ms(now),
        locks,
    };
    let mut changes = Vec::with_capacity(req.ops.len());
    let mut seqs = Vec::with_capacity(req.ops.len());
    let mut bodies = Vec::with_capacity(req.ops.len());
    for op in req.ops {
        let change = op_one(&tx, &mut layer, op, &ctx).await?;
        seqs.push(sql_i64(change.seq));
        bodies.push(encode_change(&change)?);
        changes.push(change);
    }
    // The tail statements are independent: sent together, they cost one round trip.
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
    let outcome = format!("[{}]", bodies.join(","));
    let remember = async {
        match &req.op_id {
            Some(op_id) => {
                tx.execute(
                    "UPDATE op_ids SET outcome = $3 WHERE scope = $1 AND op_id = $2",
                    &[&scope, op_id, &outcome],
                )
                .await
            }
            None => Ok(0),
        }
    };
    tokio::try_join!(log, head, prune, remember).map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(WriteOutcome {
        changes,
        replayed: false,
    })
}

async fn live_locks(
    tx: &Transaction<'_>,
    layer: i64,
    now: u64,
) -> Result<HashMap<String, (Holder, u64)>> {
    let st = tx
        .prepare_cached("SELECT fid, holder_client, holder_user, until_ms FROM locks WHERE layer = $1 AND until_ms > $2")
        .await
        .map_err(db_err)?;
    let rows = tx
        .query(&st, &[&layer, &sql_i64(now)])
        .await
        .map_err(db_err)?;
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

fn encode_change(c: &Change) -> Result<String> {
    serde_json::to_string(c)
        .map_err(|e| StoreError::Invalid(format!("cannot encode the change: {e}")))
}

async fn load(tx: &Transaction<'_>, layer: i64, id: &str) -> Result<Option<StoredFeature>> {
    let st = tx
        .prepare_cached(&format!(
            "SELECT {FEATURE_COLUMNS} FROM features WHERE layer = $1 AND fid = $2"
        ))
        .await
        .map_err(db_err)?;
    match tx.query_opt(&st, &[&layer, &id]).await.map_err(db_err)? {
        Some(row) => Ok(Some(StoredFeature::from_row(&row, 0)?)),
        None => Ok(None),
    }
}

async fn op_one(
    tx: &Transaction<'_>,
    layer: &mut LayerRow,
    op: WriteOp,
    ctx: &OpCtx<'_>,
) -> Result<Change> {
    match op {
        WriteOp::Create { feature } => {
            let id = match feature.id {
                Some(id) if id.is_empty() => {
                    return Err(StoreError::Invalid("a feature id must not be empty".into()));
                }
                Some(id) => id,
                None => uuid::Uuid::now_v7().to_string(),
            };
            if let Err(locked) = ctx.check_lock(&id) {
                // A deleted feature's lock outlives it; existence is still reported first.
                return Err(match load(tx, layer.id, &id).await? {
                    Some(current) => exists(layer, id, current),
                    None => locked,
                });
            }
            insert(tx, layer, id, feature.geometry, feature.properties, ctx).await
        }
        WriteOp::Replace {
            id,
            feature,
            expected,
        } => match current(tx, layer, &id, expected).await? {
            // Only reachable without `expected` on a last-writer-wins layer: upsert.
            None => {
                ctx.check_lock(&id)?;
                insert(tx, layer, id, feature.geometry, feature.properties, ctx).await
            }
            Some(current) => {
                ctx.check_lock(&id)?;
                let changed = changed_properties(&current.feature.properties, &feature.properties);
                update(
                    tx,
                    layer,
                    current,
                    feature.geometry,
                    feature.properties,
                    changed,
                    ctx,
                )
                .await
            }
        },
        WriteOp::Patch {
            id,
            properties,
            geometry,
            expected,
        } => {
            let Some(current) = current(tx, layer, &id, expected).await? else {
                return Err(StoreError::FeatureNotFound {
                    layer: layer.name.clone(),
                    id,
                });
            };
            ctx.check_lock(&id)?;
            let mut props = current.feature.properties.clone();
            let changed = match &properties {
                Some(patch) => merge_patch(&mut props, patch),
                None => Vec::new(),
            };
            let geometry = match geometry {
                Some(g) => g.map(|(g, _)| g),
                None => current.feature.geometry.clone(),
            };
            update(tx, layer, current, geometry, props, changed, ctx).await
        }
        WriteOp::Delete { id, expected } => {
            let Some(current) = current(tx, layer, &id, expected).await? else {
                return Err(StoreError::FeatureNotFound {
                    layer: layer.name.clone(),
                    id,
                });
            };
            ctx.check_lock(&id)?;
            delete(tx, layer, current, ctx).await
        }
    }
}

fn exists(layer: &LayerRow, id: String, current: StoredFeature) -> StoreError {
    StoreError::FeatureExists {
        layer: layer.name.clone(),
        id,
        current: Box::new(current.feature),
    }
}

/// The feature an edit applies to, after the version rules (as in the SQLite store).
async fn current(
    tx: &Transaction<'_>,
    layer: &LayerRow,
    id: &str,
    expected: Option<u64>,
) -> Result<Option<StoredFeature>> {
    if expected.is_none() && !layer.lww {
        return Err(StoreError::VersionRequired {
            layer: layer.name.clone(),
        });
    }
    let current = load(tx, layer.id, id).await?;
    if let Some(expected) = expected {
        let version = current.as_ref().map(|c| c.feature.version);
        if version != Some(expected) {
            return Err(StoreError::Conflict {
                id: id.to_owned(),
                expected,
                current: current.map(|c| Box::new(c.feature)),
            });
        }
    }
    Ok(current)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("cannot encode as JSON: {e}")))
}

/// The box the store keeps for a geometry, computed here (not trusted from the caller)
/// after checking every position is finite.
fn checked_bbox(g: Option<&Geometry>) -> Result<Option<BBox>> {
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
    Ok(geometry_bbox(g))
}

fn box_params(b: Option<BBox>) -> [Option<f64>; 4] {
    b.map(|b| b.map(Some)).unwrap_or_default()
}

async fn insert(
    tx: &Transaction<'_>,
    layer: &mut LayerRow,
    id: String,
    geometry: Option<Geometry>,
    properties: Map<String, Value>,
    ctx: &OpCtx<'_>,
) -> Result<Change> {
    let bbox = checked_bbox(geometry.as_ref())?;
    let geometry_json = geometry.as_ref().map(to_json).transpose()?;
    let [minx, miny, maxx, maxy] = box_params(bbox);
    // ON CONFLICT: an existing id is reported, not an error that aborts the transaction.
    let st = tx
        .prepare_cached(
            "INSERT INTO features (layer, fid, version, updated_ms, geometry, geom, properties, minx, miny, maxx, maxy) \
             VALUES ($1, $2, 1, $3, $4::text, ST_SetSRID(ST_GeomFromGeoJSON($4::text), 4326), $5, $6, $7, $8, $9) \
             ON CONFLICT (layer, fid) DO NOTHING RETURNING ord",
        )
        .await
        .map_err(db_err)?;
    let inserted: Option<Row> = tx
        .query_opt(
            &st,
            &[
                &layer.id,
                &id,
                &sql_i64(ctx.now),
                &geometry_json,
                &properties_param(&properties),
                &minx,
                &miny,
                &maxx,
                &maxy,
            ],
        )
        .await
        .map_err(db_err)?;
    if inserted.is_none() {
        let current = load(tx, layer.id, &id)
            .await?
            .ok_or_else(|| StoreError::Unavailable("a feature vanished during a write".into()))?;
        return Err(exists(layer, id, current));
    }
    layer.count += 1;
    layer.seq += 1;
    let changed = properties.keys().cloned().collect();
    let feature = Feature {
        kind: FeatureType::Feature,
        id: id.clone(),
        geometry,
        properties,
        version: 1,
        updated: ctx.updated.clone(),
    };
    Ok(Change {
        layer: layer.name.clone(),
        seq: layer.seq,
        op: ChangeOp::Insert,
        id,
        version: 1,
        old: None,
        geometry_changed: feature.geometry.is_some(),
        new: Some(feature),
        old_bbox: None,
        new_bbox: bbox,
        changed,
        author: ctx.writer.user.clone(),
        op_id: ctx.op_id.map(str::to_owned),
        time_ms: ctx.now,
    })
}

async fn update(
    tx: &Transaction<'_>,
    layer: &mut LayerRow,
    current: StoredFeature,
    geometry: Option<Geometry>,
    properties: Map<String, Value>,
    changed: Vec<String>,
    ctx: &OpCtx<'_>,
) -> Result<Change> {
    let geometry_changed = geometry != current.feature.geometry;
    let version = current.feature.version + 1;
    let props = properties_param(&properties);
    let (bbox, n) = if geometry_changed {
        let bbox = checked_bbox(geometry.as_ref())?;
        let geometry_json = geometry.as_ref().map(to_json).transpose()?;
        let [minx, miny, maxx, maxy] = box_params(bbox);
        let st = tx
            .prepare_cached(
                "UPDATE features SET version = $2, updated_ms = $3, geometry = $4::text, \
                 geom = ST_SetSRID(ST_GeomFromGeoJSON($4::text), 4326), properties = $5, \
                 minx = $6, miny = $7, maxx = $8, maxy = $9 WHERE ord = $1",
            )
            .await
            .map_err(db_err)?;
        let n = tx
            .execute(
                &st,
                &[
                    &current.ord,
                    &sql_i64(version),
                    &sql_i64(ctx.now),
                    &geometry_json,
                    &props,
                    &minx,
                    &miny,
                    &maxx,
                    &maxy,
                ],
            )
            .await
            .map_err(db_err)?;
        (bbox, n)
    } else {
        let st = tx
            .prepare_cached(
                "UPDATE features SET version = $2, updated_ms = $3, properties = $4 WHERE ord = $1",
            )
            .await
            .map_err(db_err)?;
        let n = tx
            .execute(
                &st,
                &[&current.ord, &sql_i64(version), &sql_i64(ctx.now), &props],
            )
            .await
            .map_err(db_err)?;
        (current.bbox, n)
    };
    if n != 1 {
        return Err(StoreError::Unavailable(
            "a feature vanished during a write".into(),
        ));
    }
    layer.seq += 1;
    let new = Feature {
        kind: FeatureType::Feature,
        id: current.feature.id.clone(),
        geometry,
        properties,
        version,
        updated: ctx.updated.clone(),
    };
    Ok(Change {
        layer: layer.name.clone(),
        seq: layer.seq,
        op: ChangeOp::Update,
        id: new.id.clone(),
        version,
        old: Some(current.feature),
        new: Some(new),
        old_bbox: current.bbox,
        new_bbox: bbox,
        changed,
        geometry_changed,
        author: ctx.writer.user.clone(),
        op_id: ctx.op_id.map(str::to_owned),
        time_ms: ctx.now,
    })
}

async fn delete(
    tx: &Transaction<'_>,
    layer: &mut LayerRow,
    current: StoredFeature,
    ctx: &OpCtx<'_>,
) -> Result<Change> {
    let st = tx
        .prepare_cached("DELETE FROM features WHERE ord = $1")
        .await
        .map_err(db_err)?;
    tx.execute(&st, &[&current.ord]).await.map_err(db_err)?;
    layer.count = layer.count.saturating_sub(1);
    layer.seq += 1;
    Ok(Change {
        layer: layer.name.clone(),
        seq: layer.seq,
        op: ChangeOp::Delete,
        id: current.feature.id.clone(),
        version: current.feature.version + 1,
        changed: current.feature.properties.keys().cloned().collect(),
        geometry_changed: current.feature.geometry.is_some(),
        old: Some(current.feature),
        new: None,
        old_bbox: current.bbox,
        new_bbox: None,
        author: ctx.writer.user.clone(),
        op_id: ctx.op_id.map(str::to_owned),
        time_ms: ctx.now,
    })
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
    for id in &ids {
        if !existing.contains(id.as_str()) {
            return Err(StoreError::FeatureNotFound {
                layer: layer.to_owned(),
                id: (*id).clone(),
            });
        }
        if let Some((h, until)) = live.get(id.as_str())
            && h != holder
        {
            return Err(StoreError::Locked {
                id: (*id).clone(),
                holder: h.clone(),
                until_ms: *until,
            });
        }
    }
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
    use super::*;

    #[test]
    fn non_finite_positions_are_refused() {
        let g = Geometry::new(geojson::Value::Point(vec![f64::NAN, 1.0]));
        assert!(checked_bbox(Some(&g)).is_err());
        let g = Geometry::new(geojson::Value::Point(vec![1.0, 2.0]));
        assert_eq!(checked_bbox(Some(&g)).unwrap(), Some([1.0, 2.0, 1.0, 2.0]));
        let c = decode_change("{}");
        assert!(c.is_err(), "a corrupt change is an error, not a panic");
    }
}
