//! The configuration tree.
//!
//! Loaded in layers, later ones winning: built-in defaults, the TOML file (`--config`, or
//! `GEOSTREAM_CONFIG`), environment variables `GEOSTREAM_<SECTION>__<KEY>` (for example
//! `GEOSTREAM_WEBSOCKET__PING_INTERVAL_SECS=10`, or `GEOSTREAM_LISTEN` for a top-level key), and
//! finally command-line flags. Unknown keys are an error, so a typo does not silently fall
//! back to a default. Every field's default is written next to it; `geostream serve
//! --print-config` prints the effective configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory for the SQLite store and other state. Default: `./data`.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// WebSocket transport.
    pub websocket: WebSocketConfig,
    /// Server-Sent Events transport.
    pub sse: SseConfig,
    /// Per-connection limits.
    pub limits: LimitsConfig,
    /// Channels (event streams).
    pub channels: ChannelsConfig,
    /// The broker that moves messages between nodes.
    pub broker: BrokerConfig,
    /// Where layers and features are stored.
    pub store: StoreConfig,
    /// Layers, features and their subscriptions.
    pub layers: LayersConfig,
    /// Server-side imports (`layer.import` with a `path`).
    pub import: ImportConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// Vector and raster tiles.
    pub tiles: TilesConfig,
    /// The demo page and its basemap.
    pub web: WebConfig,
    /// Tokens, rights and anonymous access.
    pub auth: AuthConfig,
    /// Browser origins and CORS.
    pub http: HttpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            websocket: WebSocketConfig::default(),
            sse: SseConfig::default(),
            limits: LimitsConfig::default(),
            channels: ChannelsConfig::default(),
            broker: BrokerConfig::default(),
            store: StoreConfig::default(),
            layers: LayersConfig::default(),
            import: ImportConfig::default(),
            shutdown: ShutdownConfig::default(),
            tiles: TilesConfig::default(),
            web: WebConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// Log output.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` (human-readable) or `json` (one object per line). Default: `pretty`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `geostream=debug,info`; `RUST_LOG` overrides it.
    /// Default: `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// Log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// WebSocket transport settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Send a ping after this many seconds without receiving anything. Default: 25.
    pub ping_interval_secs: u64,
    /// Close a connection after this many seconds without receiving anything (pongs count).
    /// Default: 60.
    pub idle_timeout_secs: u64,
    /// Largest frame or message accepted from a client, in bytes (also the limit after
    /// zstd decompression). Default: 1048576 (1 MiB).
    pub max_frame_bytes: usize,
    /// Most long requests (imports) one connection may have running at once; further ones
    /// are refused. Default: 16.
    pub max_concurrent_requests: usize,
    /// Most pipelined requests (edits, feature reads, publishes, history reads, pings) one
    /// connection may have in flight; past it the server reads no further request from the
    /// connection until one finishes. Default: 64.
    pub max_inflight_requests: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_secs: 25,
            idle_timeout_secs: 60,
            max_frame_bytes: 1 << 20,
            max_concurrent_requests: 16,
            max_inflight_requests: 64,
        }
    }
}

impl WebSocketConfig {
    /// Ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }
    /// Idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }
}

/// Server-Sent Events settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Seconds between keep-alive comments on an idle stream. Default: 15.
    pub keepalive_secs: u64,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig { keepalive_secs: 15 }
    }
}

/// What clients without a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// `full` when listening on a loopback address, `none` otherwise.
    Auto,
    /// Nothing: every request needs a token.
    None,
    /// Read layers and subscribe to channels.
    Read,
    /// Everything a token could grant (user channels excepted).
    Full,
}

/// A public key for RS256 or ES256 tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// `RS256` or `ES256`.
    pub alg: String,
    /// PEM file with the public key (relative paths are under `data_dir`).
    pub pem_file: PathBuf,
    /// Only tokens whose header names this `kid` use this key. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// Authentication: JWTs in `hello`, an `Authorization: Bearer` header or an `access_token`
/// query parameter.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// What clients without a token may do. Default: `auto` (everything on a loopback
    /// address, nothing elsewhere).
    pub anonymous: Anonymous,
    /// Allow anonymous writes on a non-loopback address. Default: false (the server refuses
    /// to start in that configuration).
    pub allow_public_anonymous_write: bool,
    /// Shared secret for HS256 tokens. Default: empty (HS256 tokens refused).
    pub hs256_secret: String,
    /// Public keys for RS256 / ES256 tokens. Default: none.
    pub public_keys: Vec<PublicKeyConfig>,
    /// Required `iss` claim. Default: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim. Default: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew tolerated for `exp` / `nbf`, in seconds. Default: 30.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: Anonymous::Auto,
            allow_public_anonymous_write: false,
            hs256_secret: String::new(),
            public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: 30,
        }
    }
}

/// Browser access.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins (`https://app.example.com`) whose pages may open WebSocket and SSE streams
    /// and call the HTTP API (CORS). `"*"` allows any. Pages served by this server (same
    /// host) and clients that send no `Origin` (not browsers) are always allowed. Default:
    /// none besides those.
    pub allowed_origins: Vec<String>,
    /// Seconds an HTTP request may take before it is answered 504. Default: 30.
    pub request_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            request_timeout_secs: 30,
        }
    }
}

/// Limits per connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Subscriptions one connection may hold. Default: 128.
    pub max_subscriptions: usize,
    /// Bytes of pushes that may wait for a slow client before pushes are dropped (channel
    /// messages leave a gap notice). Default: 4194304 (4 MiB).
    pub outbox_bytes: usize,
    /// Seconds a client may stay over its outbox budget before it is disconnected as a slow
    /// consumer (close code 4008). Default: 10.
    pub slow_consumer_grace_secs: u64,
    /// Requests (and notifications) per second one connection may send, on average.
    /// Default: 2000 (service clients pipeline; a browser sends far fewer).
    pub requests_per_sec: u32,
    /// Requests one connection may send in a burst above that rate. Default: 4000.
    pub request_burst: u32,
    /// Seconds in a row a connection may send more than twice `requests_per_sec` (most of it
    /// refused) before it is closed as a flood (close code 4029); 0 never closes. Default: 10.
    pub flood_close_secs: u32,
    /// Open connections (WebSocket and SSE) in total. Default: 100000.
    pub max_connections: usize,
    /// Open connections from one IP address. Default: 10000.
    pub max_connections_per_ip: usize,
    /// Seconds a request may run before it is answered with `timeout` (long-running requests
    /// such as imports are exempt; cancel those). Default: 30.
    pub request_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_subscriptions: 128,
            outbox_bytes: 4 << 20,
            slow_consumer_grace_secs: 10,
            requests_per_sec: 2000,
            request_burst: 4000,
            flood_close_secs: 10,
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            request_timeout_secs: 30,
        }
    }
}

/// Channel settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Messages kept per channel for history and resume. Default: 1000.
    pub history_size: usize,
    /// Seconds a message stays in history. Default: 600.
    pub history_ttl_secs: u64,
    /// Most messages returned by one history request. Default: 1000.
    pub history_page: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            history_size: 1000,
            history_ttl_secs: 600,
            history_page: 1000,
        }
    }
}

/// Which broker to use.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BrokerConfig {
    /// In-process: one node, no outside service, history in memory. The default.
    #[default]
    Memory,
    /// NATS with JetStream, for several nodes (`type = "nats"`): every node of a deployment
    /// points at the same NATS with the same `prefix`. Channel history lives in JetStream
    /// (file storage, `channels.history_size` / `history_ttl_secs` per channel).
    Nats {
        /// Server URL(s), comma-separated. Default: `nats://127.0.0.1:4222`.
        #[serde(default = "default_nats_url")]
        url: String,
        /// Prefix of every subject and stream of this deployment (letters, digits, `_`,
        /// `-`). Default: `geostream`.
        #[serde(default = "default_prefix")]
        prefix: String,
        /// JetStream replicas per history stream (3 on a NATS cluster). Default: 1.
        #[serde(default = "default_replicas")]
        replicas: usize,
        /// Milliseconds between this node's heartbeats to the others (presence across
        /// nodes); a node silent for three heartbeats is taken for dead. Default: 2000.
        #[serde(default = "default_heartbeat_ms")]
        heartbeat_ms: u64,
    },
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}

fn default_prefix() -> String {
    "geostream".into()
}

fn default_replicas() -> usize {
    1
}

fn default_heartbeat_ms() -> u64 {
    2000
}

/// Which store to use.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A SQLite file (WAL, every commit synced). The default.
    Sqlite {
        /// The database file; relative paths are under `data_dir`. Default: `geostream.db`.
        #[serde(default = "default_sqlite_path")]
        path: PathBuf,
        /// Changes kept per layer for resume and gap repair. Default: 100000.
        #[serde(default = "default_retention")]
        change_retention: u64,
    },
    /// PostgreSQL 15+ with PostGIS 3, shared by several nodes (`type = "postgres"`). The
    /// schema is created and migrated at start-up; PostGIS is created if the role may.
    Postgres {
        /// Connection string. Default: `postgres://postgres@127.0.0.1:5432/postgres`.
        #[serde(default = "default_postgres_url")]
        url: String,
        /// Schema holding the tables (lower-case letters, digits, `_`). Default: `geostream`.
        #[serde(default = "default_schema")]
        schema: String,
        /// Connections in this node's pool. Default: 16.
        #[serde(default = "default_pool_size")]
        pool_size: usize,
        /// Changes kept per layer for resume and gap repair. Default: 100000.
        #[serde(default = "default_retention")]
        change_retention: u64,
    },
}

fn default_postgres_url() -> String {
    "postgres://postgres@127.0.0.1:5432/postgres".into()
}

fn default_schema() -> String {
    "geostream".into()
}

fn default_pool_size() -> usize {
    16
}

fn default_sqlite_path() -> PathBuf {
    PathBuf::from("geostream.db")
}

fn default_retention() -> u64 {
    100_000
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sqlite {
            path: default_sqlite_path(),
            change_retention: default_retention(),
        }
    }
}

/// Layers, features and subscriptions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayersConfig {
    /// Most positions in one feature's geometry. Default: 100000.
    pub max_vertices: usize,
    /// Largest `properties` object of a feature, in bytes of JSON. Default: 65536.
    pub max_property_bytes: usize,
    /// Most nodes in a CQL2 filter. Default: 200.
    pub max_filter_nodes: usize,
    /// Most vertices in a polygon filter. Default: 10000.
    pub max_filter_vertices: usize,
    /// Default features per snapshot page. Default: 500.
    pub snapshot_page: usize,
    /// Most changes replayed to a resuming subscriber; beyond this it gets a fresh snapshot.
    /// Default: 10000.
    pub max_replay: usize,
    /// Use an R-tree of subscription areas to find the subscribers of a change (true), or test
    /// every subscription (false; only for comparison). Default: true.
    pub spatial_index: bool,
    /// Default lock duration, in milliseconds. Default: 60000.
    pub lock_ttl_ms: u64,
    /// Longest lock duration a client may ask for, in milliseconds. Default: 600000.
    pub max_lock_ttl_ms: u64,
    /// How long a disconnected client keeps its locks (to reconnect and resume editing), in
    /// milliseconds. Default: 15000.
    pub lock_grace_ms: u64,
}

impl LayersConfig {
    /// Limits for validating features.
    pub fn feature_limits(&self) -> geostream_core::feature::FeatureLimits {
        geostream_core::feature::FeatureLimits {
            max_vertices: self.max_vertices,
            max_property_bytes: self.max_property_bytes,
            ..Default::default()
        }
    }

    /// Limits for parsing filters.
    pub fn filter_limits(&self) -> geostream_filter::Limits {
        geostream_filter::Limits {
            max_nodes: self.max_filter_nodes,
            max_vertices: self.max_filter_vertices,
            ..Default::default()
        }
    }
}

impl Default for LayersConfig {
    fn default() -> Self {
        LayersConfig {
            max_vertices: 100_000,
            max_property_bytes: 64 * 1024,
            max_filter_nodes: 200,
            max_filter_vertices: 10_000,
            snapshot_page: 500,
            max_replay: 10_000,
            spatial_index: true,
            lock_ttl_ms: 60_000,
            max_lock_ttl_ms: 600_000,
            lock_grace_ms: 15_000,
        }
    }
}

/// Server-side imports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    /// Directory `layer.import` may read files from (a `path` cannot leave it); relative paths
    /// are under `data_dir`. Default: `import`.
    pub dir: PathBuf,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            dir: PathBuf::from("import"),
        }
    }
}

/// Shutdown behaviour.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds between SIGINT/SIGTERM and closing the listener, while `/readyz` answers 503
    /// so a load balancer stops sending new clients (everything else is served as usual).
    /// Default: 5.
    pub unready_secs: u64,
    /// Seconds to wait for connections to drain after that before exiting anyway.
    /// Default: 10.
    pub drain_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            unready_secs: 5,
            drain_secs: 10,
        }
    }
}

/// The demo page served at `/` to browsers, and the basemap layer it draws.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Directory to serve the page from instead of the copy built into the binary (the
    /// `web/dist` present when it was compiled; see `build.rs`): set it to `web/dist` while
    /// developing the page, so a rebuild of the page shows without rebuilding geostream.
    /// Relative paths are from the working directory. Default: empty (the built-in page).
    pub dir: PathBuf,
    /// GeoJSON FeatureCollection (optionally `.zst`) loaded into the layer `basemap_layer` at
    /// startup when that layer does not exist; empty to load nothing. A relative path is
    /// looked up in the working directory, then among the files built into the binary (the
    /// default is one). Default: `datasets/polygons/world_countries_110m.geojson` (Natural
    /// Earth).
    pub basemap: PathBuf,
    /// The layer the basemap is loaded into (served as vector tiles). Default: `countries`.
    pub basemap_layer: String,
    /// Trajectory CSV (`timestamp,object_id,lon,lat,...`, optionally `.zst`) replayed in a
    /// loop into the layer `ships_layer`, from the first time the demo page is served; empty
    /// to replay nothing. Relative paths are resolved as `basemap`'s. Default:
    /// `datasets/trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst` (AIS,
    /// MarineCadastre.gov; built into the binary).
    pub ships: PathBuf,
    /// The last-writer-wins layer the ships are written to. Default: `ships`.
    pub ships_layer: String,
    /// Replay speed as a time factor (20 = one hour of data in three minutes); 0 turns the
    /// replay off. Default: 20.
    pub ships_speed: f64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            dir: PathBuf::new(),
            basemap: PathBuf::from("datasets/polygons/world_countries_110m.geojson"),
            basemap_layer: "countries".into(),
            ships: PathBuf::from(
                "datasets/trajectories/ais_ny_harbor_2020-06-30_first_hour.csv.zst",
            ),
            ships_layer: "ships".into(),
            ships_speed: 20.0,
        }
    }
}

/// Tiles: Mapbox Vector Tiles generated from layers, and raster tile layers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TilesConfig {
    /// Bytes of tiles kept in memory (current versions and the older ones kept for deltas).
    /// Default: 67108864 (64 MiB).
    pub cache_bytes: usize,
    /// Older versions kept per tile, so a client holding one gets a delta. Default: 4.
    pub history: usize,
    /// Vector tile extent, in tile units per side. Default: 4096.
    pub extent: u32,
    /// Vector tile buffer around each tile, in tile units. Default: 64.
    pub buffer: u32,
    /// Most features in one vector tile (the first ones in creation order). Default: 20000.
    pub max_features: usize,
    /// Highest zoom level served for vector layers (at most 22). Default: 22.
    pub max_zoom: u8,
    /// How long changes to subscribed tiles are gathered before they are pushed, in
    /// milliseconds: a tile edited many times within this window is sent once. Default: 50.
    pub flush_ms: u64,
    /// Most tiles in one tile subscription. Default: 256.
    pub max_tiles_per_subscription: usize,
    /// Largest tile accepted by `PUT /v1/tiles/{layer}/{z}/{x}/{y}`, in bytes. Default:
    /// 4194304 (4 MiB).
    pub max_upload_bytes: usize,
    /// The store of uploaded tiles (SQLite); relative paths are under `data_dir`. Default:
    /// `tiles.db`.
    pub store_path: PathBuf,
    /// Raster tile layers: `[[tiles.raster]]` entries with `name`, and optionally `path` (an
    /// MBTiles or PMTiles archive to serve), `format` and `read_only`. Default: none.
    pub raster: Vec<RasterLayerConfig>,
}

impl Default for TilesConfig {
    fn default() -> Self {
        TilesConfig {
            cache_bytes: 64 << 20,
            history: 4,
            extent: 4096,
            buffer: 64,
            max_features: 20_000,
            max_zoom: 22,
            flush_ms: 50,
            max_tiles_per_subscription: 256,
            max_upload_bytes: 4 << 20,
            store_path: PathBuf::from("tiles.db"),
            raster: Vec::new(),
        }
    }
}

/// One raster tile layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RasterLayerConfig {
    /// Layer name in tile URLs (same rules as layer names).
    pub name: String,
    /// An MBTiles (`.mbtiles`) or PMTiles (`.pmtiles`) archive served read-only; uploaded
    /// tiles take precedence over its tiles. Without it, the layer holds uploaded tiles only.
    /// Relative paths are under `data_dir`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Tile format when there is no archive to say: `png`, `jpg`, `webp` or `pbf`.
    /// Default: the archive's, else `png`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Refuse uploads. Default: false.
    #[serde(default)]
    pub read_only: bool,
}

/// `GEOSTREAM_*` variables that are not configuration keys: the config file's path and the
/// command-line tools' settings.
const NOT_CONFIG_VARS: &[&str] = &[
    "GEOSTREAM_CONFIG",
    "GEOSTREAM_SERVER",
    "GEOSTREAM_TOKEN",
    "GEOSTREAM_TOKEN_SECRET",
];

/// Values from the command line that override the file and the environment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CliOverrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (if any), then `env` (pairs such as the process
    /// environment), then `cli`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        // Read env through a plain iterator (not the process environment directly) so tests
        // can pass their own.
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("GEOSTREAM_") && !NOT_CONFIG_VARS.contains(&k.as_str()))
            .collect();
        let env_toml = env_to_toml(&vars)?;
        fig = fig.merge(Toml::string(&env_toml));
        let mut overrides = serde_json::Map::new();
        if let Some(l) = cli.listen {
            overrides.insert("listen".into(), serde_json::Value::String(l.to_string()));
        }
        if let Some(d) = &cli.data_dir {
            overrides.insert(
                "data_dir".into(),
                serde_json::Value::String(d.display().to_string()),
            );
        }
        if let Some(f) = cli.log_format {
            overrides.insert("log".into(), serde_json::json!({ "format": f }));
        }
        fig = fig.merge(Serialized::defaults(serde_json::Value::Object(overrides)));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if self.websocket.max_frame_bytes < 1024 {
            return bad("websocket.max_frame_bytes must be at least 1024");
        }
        if !self.web.ships_speed.is_finite() || self.web.ships_speed < 0.0 {
            return bad("web.ships_speed must be a number of at least 0");
        }
        if self.websocket.idle_timeout_secs <= self.websocket.ping_interval_secs {
            return bad(
                "websocket.idle_timeout_secs must be larger than websocket.ping_interval_secs",
            );
        }
        if self.limits.requests_per_sec == 0 || self.limits.request_burst == 0 {
            return bad("limits.requests_per_sec and limits.request_burst must be at least 1");
        }
        if self.auth.anonymous_mode(self.listen) == Anonymous::Full
            && !self.listen.ip().is_loopback()
            && !self.auth.allow_public_anonymous_write
        {
            return bad(
                "auth.anonymous = \"full\" on a non-loopback address lets anyone write: set auth.allow_public_anonymous_write = true to mean it, or configure tokens",
            );
        }
        if self.limits.outbox_bytes < 64 * 1024 {
            return bad("limits.outbox_bytes must be at least 65536");
        }
        if self.limits.max_subscriptions == 0 {
            return bad("limits.max_subscriptions must be at least 1");
        }
        if self.channels.history_page == 0 {
            return bad("channels.history_page must be at least 1");
        }
        if self.layers.snapshot_page == 0 || self.layers.snapshot_page > 5000 {
            return bad("layers.snapshot_page must be 1 to 5000");
        }
        Ok(())
    }

    /// A path from the configuration, resolved against `data_dir` when relative.
    pub fn data_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.data_dir.join(p)
        }
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Turns `GEOSTREAM_A__B=v` pairs into TOML `[a] b = v`, keeping values typed: a value that
/// parses as a TOML scalar (number, boolean) stays one, anything else is a string.
fn env_to_toml(vars: &[(String, String)]) -> Result<String, ConfigError> {
    let mut root = toml::Table::new();
    for (k, v) in vars {
        let path: Vec<String> = k["GEOSTREAM_".len()..]
            .split("__")
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError(format!(
                "environment variable {k} has an empty key part"
            )));
        }
        let value = match format!("x = {v}").parse::<toml::Table>() {
            Ok(mut t)
                if !matches!(
                    t.get("x"),
                    Some(toml::Value::Table(_) | toml::Value::Array(_))
                ) =>
            {
                t.remove("x").unwrap_or(toml::Value::String(v.clone()))
            }
            _ => toml::Value::String(v.clone()),
        };
        let mut table = &mut root;
        for part in &path[..path.len() - 1] {
            let entry = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError(format!(
                        "environment variable {k} conflicts with another"
                    )));
                }
            };
        }
        table.insert(path[path.len() - 1].clone(), value);
    }
    toml::to_string(&root).map_err(|e| ConfigError(e.to_string()))
}

impl AuthConfig {
    /// The anonymous mode in force when listening on `listen` (`auto` resolved).
    pub fn anonymous_mode(&self, listen: SocketAddr) -> Anonymous {
        match self.anonymous {
            Anonymous::Auto if listen.ip().is_loopback() => Anonymous::Full,
            Anonymous::Auto => Anonymous::None,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("gs-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("geostream.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\n[websocket]\nping_interval_secs = 5\nidle_timeout_secs = 30\n[channels]\nhistory_size = 50\n").unwrap();
        let cfg = Config::load(
            Some(&file),
            env(&[
                ("GEOSTREAM_WEBSOCKET__PING_INTERVAL_SECS", "7"),
                ("GEOSTREAM_DATA_DIR", "/tmp/x"),
                ("OTHER", "1"),
            ]),
            &CliOverrides {
                listen: Some("127.0.0.1:9100".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9100, "CLI wins over the file");
        assert_eq!(
            cfg.websocket.ping_interval_secs, 7,
            "env wins over the file"
        );
        assert_eq!(
            cfg.websocket.idle_timeout_secs, 30,
            "file wins over defaults"
        );
        assert_eq!(cfg.channels.history_size, 50);
        assert_eq!(cfg.channels.history_ttl_secs, 600, "defaults fill the rest");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::load(
            None,
            env(&[("GEOSTREAM_WEBSOCKET__PING_INTERVAL", "7")]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ping_interval"), "{e}");
        let e = Config::load(
            None,
            env(&[("GEOSTREAM_WEBSOCKET__IDLE_TIMEOUT_SECS", "1")]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("idle_timeout_secs"), "{e}");
        assert!(
            Config::load(
                Some(Path::new("/nonexistent/geostream.toml")),
                env(&[]),
                &CliOverrides::default()
            )
            .is_err()
        );
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = Config::default().to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.listen, Config::default().listen);
    }
}
