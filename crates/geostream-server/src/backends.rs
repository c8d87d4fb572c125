//! The backends a node is configured with: the store (SQLite or PostgreSQL), opened from the
//! configuration, the broker's settings, and the store as the hub's layer log.

use anyhow::Context;
use geostream_broker::{BrokerSettings, HistoryLimits};
use geostream_core::feature::{BBox, Feature};
use geostream_hub::{ChangeRun, LayerLog, SnapshotPages, SnapshotQuery};
use geostream_store::{
    ChangePage, FeatureQuery, FenceStore, Holder, KnownKey, KnownPage, LayerInfo, LayerSpec, Lock,
    QueryPage, Snapshot, SnapshotRequest, SqliteOptions, SqliteStore, Store, StoreError,
    TileAddress, TilePut, TileStore, WriteOutcome, WriteRequest,
};

use crate::config::{BrokerConfig, Config, StoreConfig};

/// The configured store. An enum rather than a trait object: the choice is made once at
/// start-up and every call stays statically dispatched.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL/PostGIS, shared by several nodes.
    Postgres(geostream_store::PostgresStore),
}

macro_rules! store_call {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn create_layer(&self, spec: LayerSpec) -> geostream_store::Result<LayerInfo> {
        store_call!(self, s => s.create_layer(spec).await)
    }
    async fn list_layers(&self) -> geostream_store::Result<Vec<LayerInfo>> {
        store_call!(self, s => s.list_layers().await)
    }
    async fn layer(&self, name: &str) -> geostream_store::Result<LayerInfo> {
        store_call!(self, s => s.layer(name).await)
    }
    async fn delete_layer(&self, name: &str) -> geostream_store::Result<()> {
        store_call!(self, s => s.delete_layer(name).await)
    }
    async fn apply(&self, req: WriteRequest) -> geostream_store::Result<WriteOutcome> {
        store_call!(self, s => s.apply(req).await)
    }
    async fn get(&self, layer: &str, id: &str) -> geostream_store::Result<Option<Feature>> {
        store_call!(self, s => s.get(layer, id).await)
    }
    async fn query(&self, layer: &str, q: FeatureQuery) -> geostream_store::Result<QueryPage> {
        store_call!(self, s => s.query(layer, q).await)
    }
    async fn query_known<T, K>(
        &self,
        layer: &str,
        bbox: BBox,
        limit: usize,
        known: K,
    ) -> geostream_store::Result<KnownPage<T>>
    where
        T: Send + 'static,
        K: FnMut(KnownKey<'_>) -> Option<T> + Send + 'static,
    {
        store_call!(self, s => s.query_known(layer, bbox, limit, known).await)
    }
    async fn snapshot(
        &self,
        layer: &str,
        req: SnapshotRequest,
    ) -> geostream_store::Result<Snapshot> {
        store_call!(self, s => s.snapshot(layer, req).await)
    }
    async fn changes(
        &self,
        layer: &str,
        since: u64,
        limit: usize,
    ) -> geostream_store::Result<ChangePage> {
        store_call!(self, s => s.changes(layer, since, limit).await)
    }
    async fn lock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
        ttl_ms: u64,
    ) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.lock(layer, ids, holder, ttl_ms).await)
    }
    async fn unlock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
    ) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.unlock(layer, ids, holder).await)
    }
    async fn expire_client_locks(
        &self,
        client: &str,
        grace_ms: u64,
    ) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.expire_client_locks(client, grace_ms).await)
    }
    async fn reap_locks(&self) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.reap_locks().await)
    }
    async fn locks(&self, layer: &str) -> geostream_store::Result<Vec<Lock>> {
        store_call!(self, s => s.locks(layer).await)
    }
}

impl FenceStore for AnyStore {
    async fn create_fence(&self, name: &str, body: String) -> geostream_store::Result<()> {
        store_call!(self, s => s.create_fence(name, body).await)
    }
    async fn delete_fence(&self, name: &str) -> geostream_store::Result<bool> {
        store_call!(self, s => s.delete_fence(name).await)
    }
    async fn fences(&self) -> geostream_store::Result<Vec<(String, String)>> {
        store_call!(self, s => s.fences().await)
    }
    async fn fence_cursors(&self) -> geostream_store::Result<Vec<(String, u64)>> {
        store_call!(self, s => s.fence_cursors().await)
    }
    async fn save_fence_cursors(&self, cursors: Vec<(String, u64)>) -> geostream_store::Result<()> {
        store_call!(self, s => s.save_fence_cursors(cursors).await)
    }
    async fn fence_lease(&self, holder: &str, ttl_ms: u64) -> geostream_store::Result<bool> {
        store_call!(self, s => s.fence_lease(holder, ttl_ms).await)
    }
    async fn release_fence_lease(&self, holder: &str) -> geostream_store::Result<()> {
        store_call!(self, s => s.release_fence_lease(holder).await)
    }
}

impl TileStore for AnyStore {
    async fn put_tile(
        &self,
        layer: &str,
        tile: TileAddress,
        data: Vec<u8>,
        min_version: u64,
    ) -> geostream_store::Result<TilePut> {
        store_call!(self, s => s.put_tile(layer, tile, data, min_version).await)
    }
    async fn get_tile(
        &self,
        layer: &str,
        tile: TileAddress,
    ) -> geostream_store::Result<Option<(u64, Vec<u8>)>> {
        store_call!(self, s => s.get_tile(layer, tile).await)
    }
    async fn tile_zooms(&self, layer: &str) -> geostream_store::Result<Option<(u8, u8)>> {
        store_call!(self, s => s.tile_zooms(layer).await)
    }
}

impl AnyStore {
    /// Opens the configured store (creating and migrating its schema). A store that cannot
    /// be opened or reached is an error here, before the node serves anyone.
    pub async fn open(config: &Config) -> anyhow::Result<AnyStore> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        Ok(match &config.store {
            StoreConfig::Sqlite {
                path,
                change_retention,
            } => {
                let path = config.data_path(path);
                let opts = SqliteOptions {
                    change_retention: *change_retention,
                    ..SqliteOptions::default()
                };
                let s = SqliteStore::open(&path, opts)
                    .with_context(|| format!("cannot open the store {}", path.display()))?;
                AnyStore::Sqlite(s)
            }
            StoreConfig::Postgres {
                url,
                schema,
                pool_size,
                change_retention,
            } => {
                let opts = geostream_store::PostgresOptions {
                    url: url.clone(),
                    schema: schema.clone(),
                    pool_size: *pool_size,
                    change_retention: *change_retention,
                    ..Default::default()
                };
                let s = geostream_store::PostgresStore::connect(opts)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot open the PostgreSQL store at {} (schema {schema})",
                            without_password(url)
                        )
                    })?;
                AnyStore::Postgres(s)
            }
        })
    }
}

/// A connection URL as it may be shown in logs and errors: any password replaced by `***`.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_start = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..host_start].rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{}", &rest[host_start..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The broker settings and history limits of a configuration.
pub fn broker_settings(config: &Config) -> (BrokerSettings, HistoryLimits) {
    let limits = HistoryLimits {
        size: config.channels.history_size,
        ttl: std::time::Duration::from_secs(config.channels.history_ttl_secs),
        meta_ttl: std::time::Duration::from_secs(24 * 3600),
    };
    let settings = match &config.broker {
        BrokerConfig::Memory {} => BrokerSettings::Memory,
        BrokerConfig::Nats {
            url,
            prefix,
            replicas,
            heartbeat_ms,
            ..
        } => {
            let heartbeat = std::time::Duration::from_millis((*heartbeat_ms).max(10));
            BrokerSettings::Nats(geostream_broker::NatsOptions {
                url: url.clone(),
                prefix: prefix.clone(),
                replicas: *replicas,
                heartbeat,
                node_timeout: heartbeat * 3,
                ..Default::default()
            })
        }
    };
    (settings, limits)
}

/// This node's streams: over its broker and its store's change logs.
pub type NodeStreams = geostream_hub::Streams<geostream_broker::AnyBroker, StoreLog>;

/// The store as the hub reads it.
#[derive(Clone, Debug)]
pub struct StoreLog(pub AnyStore);

impl LayerLog for StoreLog {
    type Error = StoreError;

    async fn seq(&self, layer: &str) -> Result<u64, StoreError> {
        Ok(self.0.layer(layer).await?.seq)
    }

    async fn layers(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .0
            .list_layers()
            .await?
            .into_iter()
            .map(|l| (l.name, l.seq))
            .collect())
    }

    async fn changes(
        &self,
        layer: &str,
        since: u64,
        limit: usize,
    ) -> Result<ChangeRun, StoreError> {
        let ChangePage {
            changes,
            first_retained,
            seq,
        } = self.0.changes(layer, since, limit).await?;
        Ok(ChangeRun {
            changes,
            first_retained,
            seq,
        })
    }

    async fn snapshot(
        &self,
        layer: &str,
        q: SnapshotQuery,
    ) -> Result<SnapshotPages<StoreError>, StoreError> {
        let Snapshot {
            seq,
            changes,
            pages,
            ..
        } = self
            .0
            .snapshot(
                layer,
                SnapshotRequest {
                    bbox: q.bbox,
                    filter: q.filter,
                    since: q.since,
                    page_size: q.page_size,
                },
            )
            .await?;
        Ok(SnapshotPages {
            seq,
            changes,
            pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            without_password("postgres://geostream:secret@db.internal:5432/geostream"),
            "postgres://geostream:***@db.internal:5432/geostream"
        );
        assert_eq!(
            without_password("postgres://postgres@127.0.0.1/x?sslmode=disable"),
            "postgres://postgres@127.0.0.1/x?sslmode=disable"
        );
        assert_eq!(without_password("host=db user=u"), "host=db user=u");
    }
}
