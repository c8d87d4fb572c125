//! The schema and its migrations, tracked in the table `schema_version`.
//!
//! `MIGRATIONS[i]` takes a schema from version `i` to `i + 1`; released steps are never
//! edited. Every node runs [`migrate`] at start-up; a transaction-scoped advisory lock makes
//! concurrent starts wait for each other instead of racing.

use tokio_postgres::NoTls;

use super::db_err;
use crate::{Result, StoreError};

/// Version 1. Notes on the choices:
///
/// * `features.ord` is an identity: `ORDER BY ord` is creation order, and the primary key.
/// * `features(layer, fid)` is unique: it finds a feature and refuses a duplicate create
///   even if two writers raced (they cannot: the layer row lock serialises them).
/// * `geom` has a GiST index (all layers in one index; the `layer` condition is checked on
///   the few candidates). `minx..maxy` keep the exact f64 box, because GiST boxes are f32.
/// * `changes` is keyed by `(layer, seq)`: appends, range reads after a `since`, and pruning
///   a prefix are all index range operations.
/// * Foreign keys with `ON DELETE CASCADE` make deleting a layer one statement.
/// * `op_ids` is keyed by `(scope, op_id)`: the claim of a key is an insert into it.
const V1: &str = "
CREATE TABLE layers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    title text,
    description text,
    last_writer_wins boolean NOT NULL,
    seq bigint NOT NULL DEFAULT 0,
    count bigint NOT NULL DEFAULT 0,
    created_ms bigint NOT NULL
);
CREATE TABLE features (
    ord bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    layer bigint NOT NULL REFERENCES layers (id) ON DELETE CASCADE,
    fid text NOT NULL,
    version bigint NOT NULL,
    updated_ms bigint NOT NULL,
    geometry text,
    geom geometry(Geometry, 4326),
    properties jsonb NOT NULL,
    minx double precision,
    miny double precision,
    maxx double precision,
    maxy double precision,
    UNIQUE (layer, fid)
);
CREATE INDEX features_geom ON features USING gist (geom);
CREATE TABLE changes (
    layer bigint NOT NULL REFERENCES layers (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (layer, seq)
);
CREATE TABLE locks (
    layer bigint NOT NULL REFERENCES layers (id) ON DELETE CASCADE,
    fid text NOT NULL,
    holder_client text NOT NULL,
    holder_user text,
    until_ms bigint NOT NULL,
    PRIMARY KEY (layer, fid)
);
CREATE INDEX locks_by_client ON locks (holder_client);
CREATE INDEX locks_by_until ON locks (until_ms);
CREATE TABLE op_ids (
    scope text NOT NULL,
    op_id text NOT NULL,
    time_ms bigint NOT NULL,
    outcome text,
    PRIMARY KEY (scope, op_id)
);
CREATE INDEX op_ids_by_time ON op_ids (time_ms);
";

/// Version 2: uploaded raster tiles ([`crate::TileStore`]) as `bytea`, one row per tile
/// with its newest bytes and version, shared by every node.
const V2: &str = "
CREATE TABLE tiles (
    layer text NOT NULL,
    z smallint NOT NULL,
    x bigint NOT NULL,
    y bigint NOT NULL,
    version bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (layer, z, x, y)
);
";

/// Version 3: geofences ([`crate::FenceStore`]): definitions as JSON, how far each watched
/// layer's changes were evaluated, and the evaluator's lease (one row) that decides which
/// node of a cluster evaluates.
const V3: &str = "
CREATE TABLE fences (
    name text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE fence_cursors (
    layer text PRIMARY KEY,
    seq bigint NOT NULL
);
CREATE TABLE fence_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL,
    until_ms bigint NOT NULL
);
";

/// Version 4: the change log without a foreign key. Every write of a layer already holds the
/// layer's row lock, so the key's check (one lookup and row lock per appended change, about
/// a tenth of a hot layer's write time) proved nothing; [`crate::postgres`] deletes a layer's
/// changes with the layer, in the same transaction.
const V4: &str = "
ALTER TABLE changes DROP CONSTRAINT IF EXISTS changes_layer_fkey;
";

const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Advisory lock key serialising PostGIS creation across every schema of the database.
const EXTENSION_LOCK: i64 = 0x6765_6f73_7472_6d00; // "geostrm\0"

/// Refuses schema names that would need care to splice into SQL.
pub(crate) fn check_schema_name(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "schema name {s:?}: use 1 to 63 lower-case letters, digits and _, not starting with a digit"
        )))
    }
}

/// An identifier quoted for SQL.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Brings `schema` to [`SCHEMA_VERSION`] on a connection of its own; returns the schema
/// PostGIS is installed in.
pub(crate) async fn migrate(cfg: &tokio_postgres::Config, schema: &str) -> Result<String> {
    let (mut client, conn) = cfg.connect(NoTls).await.map_err(db_err)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL migration connection ended.");
        }
    });
    let r = migrate_on(&mut client, schema).await;
    drop(client);
    let _ = driver.await;
    r
}

async fn migrate_on(client: &mut tokio_postgres::Client, schema: &str) -> Result<String> {
    let q = quote_ident(schema);
    let postgis = {
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EXTENSION_LOCK])
            .await
            .map_err(db_err)?;
        let found = postgis_schema(&tx).await?;
        let name = match found {
            Some(s) => s,
            None => {
                tx.batch_execute("CREATE EXTENSION IF NOT EXISTS postgis SCHEMA public")
                    .await
                    .map_err(|e| {
                        StoreError::Unavailable(format!(
                            "PostGIS is not available on this PostgreSQL server (install postgresql-15-postgis-3): {}",
                            db_err(e)
                        ))
                    })?;
                tracing::info!("Created the PostGIS extension.");
                "public".to_string()
            }
        };
        tx.commit().await.map_err(db_err)?;
        name
    };
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("geostream schema {schema}")],
    )
    .await
    .map_err(db_err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q}; CREATE TABLE IF NOT EXISTS {q}.schema_version (version integer NOT NULL); \
         SET LOCAL search_path = {q}, {}",
        quote_ident(&postgis)
    ))
    .await
    .map_err(db_err)?;
    let current: Option<i32> = tx
        .query_opt("SELECT max(version) FROM schema_version", &[])
        .await
        .map_err(db_err)?
        .and_then(|r| r.get(0));
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "schema {schema} has version {current}; this build knows up to {SCHEMA_VERSION}"
        )));
    }
    if current < SCHEMA_VERSION {
        for (from, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            tx.batch_execute(step).await.map_err(db_err)?;
            tracing::info!(
                schema,
                version = from + 1,
                "Migrated the PostgreSQL schema."
            );
        }
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(db_err)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(postgis)
}

async fn postgis_schema(tx: &tokio_postgres::Transaction<'_>) -> Result<Option<String>> {
    let row = tx
        .query_opt(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'postgis'",
            &[],
        )
        .await
        .map_err(db_err)?;
    Ok(row.map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(check_schema_name("geostream").is_ok());
        assert!(check_schema_name("gs_test_01").is_ok());
        for bad in ["", "Geo", "1abc", "a-b", "a\"b", "a;drop", &"a".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
