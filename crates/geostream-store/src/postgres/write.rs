//! Writes: layers, edits (one transaction each, see the module docs for the locking) and
//! feature locks.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use geostream_core::api::validate_name;
use geostream_core::feature::{BBox, Change, ChangeOp, Feature, format_time_ms};

use super::read::{FEATURE_COLUMNS, StoredFeature, corrupt, properties_param};
use super::{Inner, db_err, now_ms, sql_i64, sql_u64};
use crate::plan::{self, Planned};
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

pub(crate) async fn apply(inner: &Inner, req: WriteRequest) -> Result<WriteOutcome> {
    let scope = plan::scope(&req.writer);
    let now = now_ms();
    let mut client = inner.client().await?;
    // Dropping `tx` without commit rolls everything back, whatever failed.
    let tx = client.transaction().await.map_err(db_err)?;
    let mut seen = None;
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
            seen = Some(body);
        }
    }
    if let Some(replayed) = plan::start(seen.as_deref(), req.ops.len())? {
        return Ok(replayed);
    }
    let mut layer = lock_layer(&tx, &req.layer).await?;
    let locks = live_locks(&tx, layer.id, now).await?;
    let updated = format_time_ms(now);
    let w = plan::Writer {
        holder: &req.writer,
        op_id: req.op_id.as_deref(),
        now,
        updated: &updated,
    };
    let mut changes = Vec::with_capacity(req.ops.len());
    let mut seqs = Vec::with_capacity(req.ops.len());
    let mut bodies = Vec::with_capacity(req.ops.len());
    for op in req.ops {
        let change = op_one(&tx, &mut layer, op, &locks, w).await?;
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

/// One operation: read what the planner needs, let it decide, write what it decided.
async fn op_one(
    tx: &Transaction<'_>,
    layer: &mut LayerRow,
    op: WriteOp,
    locks: &LiveLocks,
    w: plan::Writer<'_>,
) -> Result<Change> {
    let id = plan::target(&op)?;
    let stored = load(tx, layer.id, &id).await?;
    let ord = stored.as_ref().map(|s| s.ord);
    let lock = locks.get(&id).map(|(h, u)| (h, *u));
    let planned = plan::plan(
        op,
        id,
        stored.map(|s| (s.feature, s.bbox)),
        lock,
        plan::Layer {
            name: &layer.name,
            lww: layer.lww,
            seq: layer.seq,
        },
        w,
    )?;
    let c = &planned.change;
    let n = match (c.op, ord) {
        (ChangeOp::Insert, _) => insert_row(tx, layer.id, &planned).await?,
        (ChangeOp::Update, Some(ord)) => update_row(tx, ord, &planned).await?,
        (ChangeOp::Delete, Some(ord)) => {
            let st = tx
                .prepare_cached("DELETE FROM features WHERE ord = $1")
                .await
                .map_err(db_err)?;
            tx.execute(&st, &[&ord]).await.map_err(db_err)?
        }
        _ => 0,
    };
    if n != 1 {
        return Err(StoreError::Unavailable(
            "a feature changed during a write".into(),
        ));
    }
    layer.seq = c.seq;
    layer.count = layer.count.saturating_add_signed(planned.count_delta());
    Ok(planned.change)
}

fn new_feature(planned: &Planned) -> Result<&Feature> {
    planned
        .change
        .new
        .as_ref()
        .ok_or_else(|| StoreError::Unavailable("an edit without its new feature".into()))
}

async fn insert_row(tx: &Transaction<'_>, layer: i64, planned: &Planned) -> Result<u64> {
    let c = &planned.change;
    let feature = new_feature(planned)?;
    let [minx, miny, maxx, maxy] = box_params(c.new_bbox);
    // ON CONFLICT: an id taken meanwhile is reported, not an error that aborts the
    // transaction (it cannot happen under the layer row lock).
    let st = tx
        .prepare_cached(
            "INSERT INTO features (layer, fid, version, updated_ms, geometry, geom, properties, minx, miny, maxx, maxy) \
             VALUES ($1, $2, 1, $3, $4::text, ST_SetSRID(ST_GeomFromGeoJSON($4::text), 4326), $5, $6, $7, $8, $9) \
             ON CONFLICT (layer, fid) DO NOTHING",
        )
        .await
        .map_err(db_err)?;
    tx.execute(
        &st,
        &[
            &layer,
            &c.id,
            &sql_i64(c.time_ms),
            &planned.geometry_json,
            &properties_param(&feature.properties),
            &minx,
            &miny,
            &maxx,
            &maxy,
        ],
    )
    .await
    .map_err(db_err)
}

async fn update_row(tx: &Transaction<'_>, ord: i64, planned: &Planned) -> Result<u64> {
    let c = &planned.change;
    let new = new_feature(planned)?;
    let props = properties_param(&new.properties);
    if c.geometry_changed {
        let [minx, miny, maxx, maxy] = box_params(c.new_bbox);
        let st = tx
            .prepare_cached(
                "UPDATE features SET version = $2, updated_ms = $3, geometry = $4::text, \
                 geom = ST_SetSRID(ST_GeomFromGeoJSON($4::text), 4326), properties = $5, \
                 minx = $6, miny = $7, maxx = $8, maxy = $9 WHERE ord = $1",
            )
            .await
            .map_err(db_err)?;
        tx.execute(
            &st,
            &[
                &ord,
                &sql_i64(c.version),
                &sql_i64(c.time_ms),
                &planned.geometry_json,
                &props,
                &minx,
                &miny,
                &maxx,
                &maxy,
            ],
        )
        .await
        .map_err(db_err)
    } else {
        let st = tx
            .prepare_cached(
                "UPDATE features SET version = $2, updated_ms = $3, properties = $4 WHERE ord = $1",
            )
            .await
            .map_err(db_err)?;
        tx.execute(
            &st,
            &[&ord, &sql_i64(c.version), &sql_i64(c.time_ms), &props],
        )
        .await
        .map_err(db_err)
    }
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
