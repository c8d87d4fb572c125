//! The configuration tree.
//!
//! Loaded in layers, later ones winning: built-in defaults, the TOML file (`--config`, or
//! `GEOSTREAM_CONFIG`), environment variables `GEOSTREAM_<SECTION>__<KEY>` (for example
//! `GEOSTREAM_WEBSOCKET__PING_INTERVAL_SECS=10`, or `GEOSTREAM_LISTEN` for a top-level key), and
//! finally command-line flags (`--listen`, `--data-dir`, `--log-format`, and `--set KEY=VALUE`
//! for any key). `[store]` and `[broker]` hold one of several types: a source that sets their
//! `type` to another type than the sources before it starts the table afresh, so
//! `GEOSTREAM_STORE__TYPE=postgres` gets PostgreSQL's defaults, not SQLite's `path`. Unknown
//! keys are an error naming the key and where it was set, so a typo does not silently fall
//! back to a default. Every field's default is written next to it; `geostream serve
//! --print-config` prints the effective configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
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
    /// Geofences: their evaluation and deliveries.
    pub geofences: GeofencesConfig,
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
            geofences: GeofencesConfig::default(),
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
    /// Most pipelined requests (edits and feature reads) one connection may have in flight;
    /// past it the server reads no further request from the connection until one finishes.
    /// Edits still take effect in the order they arrived (see PROTOCOL.md); their commits
    /// overlap. 1 handles a connection's requests one at a time. Default: 16. Raise it for
    /// clients that keep more edits in flight, such as importers.
    pub max_inflight_requests: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_secs: 25,
            idle_timeout_secs: 60,
            max_frame_bytes: 1 << 20,
            max_concurrent_requests: 16,
            max_inflight_requests: 16,
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
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BrokerConfig {
    /// In-process: one node, no outside service, history in memory. The default. A table
    /// with braces, not a unit, so that a key of another broker (`url` without
    /// `type = "nats"`) is refused rather than ignored.
    Memory {},
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
        /// With a PostgreSQL store, hand each small write to its owner (see `write_owner`),
        /// so the edits that arrive through every node share one node's commits (false:
        /// every node writes what it receives). Default: true.
        #[serde(default = "default_forward_writes")]
        forward_writes: bool,
        /// Which writes share an owner when `forward_writes` is on: `node` (one live node
        /// writes every layer, so the whole cluster's small edits share one chain of
        /// commits) or `layer` (each layer has its own owner, spreading the owners' work
        /// over the nodes at the price of one chain of commits per owner). Default: `node`.
        #[serde(default)]
        write_owner: WriteOwner,
    },
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig::Memory {}
    }
}

fn default_forward_writes() -> bool {
    true
}

/// Which live node is the owner of a write (`broker.write_owner`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOwner {
    /// One owner for every layer.
    #[default]
    Node,
    /// An owner per layer.
    Layer,
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

/// Geofences ([`crate::geofences`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeofencesConfig {
    /// Whether this node may evaluate geofences. One node of a deployment evaluates them at a
    /// time (it holds a lease in the store); the others take over when it dies. Default:
    /// true.
    pub evaluate: bool,
    /// Most geofences in the deployment. Default: 1000000.
    pub max_fences: usize,
    /// How long the evaluator's lease lasts without renewal, in milliseconds: a dead
    /// evaluator is replaced within this time. Default: 10000.
    pub lease_ms: u64,
    /// The NATS server for fences with a `nats` delivery (`nats://host:port`). Empty: the
    /// broker's URL when the broker is NATS, and none otherwise (such fences are refused).
    /// Default: empty.
    pub nats_url: String,
    /// Webhook deliveries.
    pub webhooks: crate::webhook::WebhookConfig,
}

impl Default for GeofencesConfig {
    fn default() -> Self {
        GeofencesConfig {
            evaluate: true,
            max_fences: 1_000_000,
            lease_ms: 10_000,
            nats_url: String::new(),
            webhooks: Default::default(),
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
    /// Shards of each layer's subscriptions. A large batch of changes (a `feature.batch`
    /// into a layer with many subscribers) is routed through the shards in parallel, one
    /// core each: set it to the number of cores to route one hot layer on all of them.
    /// Default: 1.
    pub dispatch_shards: usize,
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
            dispatch_shards: 1,
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
    /// Bytes of features kept decoded between vector tile renders, with the drawings made of
    /// them per tile, so re-rendering a tile after an edit parses and draws only the features
    /// that changed. Each feature counts its vertices (16 bytes each) and properties twice:
    /// once for itself and once for its drawings. 0 decodes and draws every feature on every
    /// render. Default: 67108864 (64 MiB).
    pub decoded_bytes: usize,
    /// Highest zoom level served for vector layers (at most 22). Default: 22.
    pub max_zoom: u8,
    /// How long changes to subscribed tiles are gathered before they are pushed, in
    /// milliseconds: a tile edited many times within this window is sent once. Tiles a
    /// client asks for (subscribing, moving its viewport) are pushed without waiting.
    /// Default: 50.
    pub flush_ms: u64,
    /// Most tiles in one tile subscription. Default: 256.
    pub max_tiles_per_subscription: usize,
    /// Largest tile accepted by `PUT /v1/tiles/{layer}/{z}/{x}/{y}`, in bytes. Default:
    /// 4194304 (4 MiB).
    pub max_upload_bytes: usize,
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
            decoded_bytes: 64 << 20,
            max_zoom: 22,
            flush_ms: 50,
            max_tiles_per_subscription: 256,
            max_upload_bytes: 4 << 20,
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
#[derive(Clone, Debug, Default)]
pub struct CliOverrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--set KEY=VALUE` (repeatable): any key, dotted (`store.url`), typed as environment
    /// values are.
    pub set: Vec<(String, String)>,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// The tables that hold one of several types, chosen by their `type` key. A source that sets
/// `type` to another type than the sources below it starts the table afresh: the fields of
/// the other type (its defaults included) do not carry over.
const TYPED_TABLES: &[&str] = &["store", "broker"];

/// One source of settings: a TOML table and where errors say it was set ("in the file ...").
struct Source {
    name: String,
    table: toml::Table,
}

impl Config {
    /// Loads defaults, then `file` (if any), then `env` (pairs such as the process
    /// environment), then `cli`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(format!("the defaults: {e}")))?;
        let mut sources = vec![Source {
            name: "in the defaults".into(),
            table: defaults,
        }];
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            let table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            sources.push(Source {
                name: format!("in the file {}", path.display()),
                table,
            });
        }
        // Read env through a plain iterator (not the process environment directly) so tests
        // can pass their own.
        let vars: Vec<(Vec<String>, String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("GEOSTREAM_") && !NOT_CONFIG_VARS.contains(&k.as_str()))
            .map(|(k, v)| {
                let path = k["GEOSTREAM_".len()..]
                    .split("__")
                    .map(|p| p.to_ascii_lowercase())
                    .collect();
                (path, v, k)
            })
            .collect();
        sources.push(Source {
            name: "in the environment".into(),
            table: keys_to_table(&vars)?,
        });
        let set: Vec<(Vec<String>, String, String)> = cli
            .set
            .iter()
            .map(|(k, v)| {
                let path = k.split('.').map(str::to_string).collect();
                (path, v.clone(), format!("--set {k}"))
            })
            .collect();
        let mut flags = keys_to_table(&set)?;
        if let Some(l) = cli.listen {
            flags.insert("listen".into(), toml::Value::String(l.to_string()));
        }
        if let Some(d) = &cli.data_dir {
            flags.insert(
                "data_dir".into(),
                toml::Value::String(d.display().to_string()),
            );
        }
        if let Some(f) = cli.log_format {
            let f = toml::Value::try_from(f).map_err(|e| ConfigError(e.to_string()))?;
            match flags
                .entry("log")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => {
                    t.insert("format".into(), f);
                }
                _ => return Err(ConfigError("--log-format conflicts with --set log".into())),
            }
        }
        sources.push(Source {
            name: "on the command line".into(),
            table: flags,
        });
        let mut merged = toml::Table::new();
        for s in &sources {
            merge(&mut merged, &s.table, true);
        }
        // Values given as text (environment, --set), in the order they apply.
        let given: Vec<(Vec<String>, String)> = vars
            .iter()
            .chain(&set)
            .map(|(path, v, _)| (path.clone(), v.clone()))
            .collect();
        loop {
            match Figment::from(Serialized::defaults(&merged)).extract::<Config>() {
                Ok(cfg) => {
                    cfg.validate()?;
                    return Ok(cfg);
                }
                Err(e) if as_text(&mut merged, &e, &given) => continue,
                Err(e) => return Err(explain(e, &sources, &merged)),
            }
        }
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
        if self.geofences.lease_ms < 1000 {
            return bad("geofences.lease_ms must be at least 1000");
        }
        if let Err(e) = self.geofences.webhooks.validate() {
            return Err(ConfigError(e));
        }
        if self.layers.dispatch_shards == 0 || self.layers.dispatch_shards > 256 {
            return bad("layers.dispatch_shards must be between 1 and 256");
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

    /// The configuration as it may be shown (`--print-config`, logs): the HS256 secret and
    /// passwords in the PostgreSQL and NATS URLs replaced by `***`.
    pub fn redacted(&self) -> Config {
        use crate::backends::without_password;
        let mut c = self.clone();
        if !c.auth.hs256_secret.is_empty() {
            c.auth.hs256_secret = "***".into();
        }
        if let StoreConfig::Postgres { url, .. } = &mut c.store {
            *url = without_password(url);
        }
        if let BrokerConfig::Nats { url, .. } = &mut c.broker {
            *url = url
                .split(',')
                .map(without_password)
                .collect::<Vec<_>>()
                .join(",");
        }
        c.geofences.nats_url = without_password(&c.geofences.nats_url);
        c
    }
}

/// Turns `(key path, value, what set it)` triples (`GEOSTREAM_A__B=v`, `--set a.b=v`) into
/// a table `[a] b = v`, keeping values typed: a value that parses as a TOML scalar (number,
/// boolean, quoted string) stays one, anything else is a string.
fn keys_to_table(vars: &[(Vec<String>, String, String)]) -> Result<toml::Table, ConfigError> {
    let mut root = toml::Table::new();
    for (path, v, k) in vars {
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError(format!("{k} has an empty key part")));
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
                _ => return Err(ConfigError(format!("{k} conflicts with another setting"))),
            };
        }
        table.insert(path[path.len() - 1].clone(), value);
    }
    Ok(root)
}

/// When `err` is a number or boolean given as text (environment, `--set`) to a key that takes
/// text (`GEOSTREAM_BROKER__PREFIX=2024`, a numeric secret), puts the text in `merged` as it
/// was given and says so.
fn as_text(
    merged: &mut toml::Table,
    err: &figment::Error,
    given: &[(Vec<String>, String)],
) -> bool {
    use figment::error::{Actual, Kind};
    let Kind::InvalidType(actual, _) = &err.kind else {
        return false;
    };
    for (path, text) in given.iter().rev() {
        if !path.starts_with(&err.path) {
            continue;
        }
        let Some(value) = value_mut(merged, path) else {
            continue;
        };
        let same = match (actual, &*value) {
            (Actual::Bool(a), toml::Value::Boolean(b)) => a == b,
            (Actual::Unsigned(a), toml::Value::Integer(b)) => *a as i128 == i128::from(*b),
            (Actual::Signed(a), toml::Value::Integer(b)) => *a == i128::from(*b),
            (Actual::Float(a), toml::Value::Float(b)) => a == b,
            _ => false,
        };
        if same {
            *value = toml::Value::String(text.clone());
            return true;
        }
    }
    false
}

/// The value at `path` in `table`.
fn value_mut<'a>(table: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get_mut(p)?.as_table_mut()?;
    }
    t.get_mut(last)
}

/// Merges `from` over `into`: tables key by key, anything else replaced. A typed table
/// ([`TYPED_TABLES`]) whose `type` changes is replaced whole.
fn merge(into: &mut toml::Table, from: &toml::Table, top: bool) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => {
                let retyped = top
                    && TYPED_TABLES.contains(&k.as_str())
                    && b.get("type").is_some_and(|t| a.get("type") != Some(t));
                if retyped {
                    *a = b.clone();
                } else {
                    merge(a, b, false);
                }
            }
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Whether `table` holds a value at `path`.
fn has_path(table: &toml::Table, path: &[String]) -> bool {
    match path {
        [] => true,
        [last] => table.contains_key(last),
        [first, rest @ ..] => {
            matches!(table.get(first), Some(toml::Value::Table(t)) if has_path(t, rest))
        }
    }
}

/// The keys a typed table of type `ty` takes (its type's fields, defaults filled in), or
/// `None` for a type that does not exist.
fn keys_of_type(table: &str, ty: &str) -> Option<Vec<String>> {
    let value = toml::Table::from_iter([("type".to_string(), toml::Value::from(ty))]);
    let value = toml::Value::Table(value);
    let fields = match table {
        "store" => toml::Table::try_from(value.try_into::<StoreConfig>().ok()?).ok()?,
        "broker" => toml::Table::try_from(value.try_into::<BrokerConfig>().ok()?).ok()?,
        _ => return None,
    };
    Some(fields.keys().filter(|k| *k != "type").cloned().collect())
}

/// The types a typed table may have.
fn types_of(table: &str) -> Vec<&'static str> {
    let probe = toml::Table::from_iter([("type".to_string(), toml::Value::from("?"))]);
    let err = match table {
        "store" => Figment::from(Serialized::defaults(&probe))
            .extract::<StoreConfig>()
            .err(),
        "broker" => Figment::from(Serialized::defaults(&probe))
            .extract::<BrokerConfig>()
            .err(),
        _ => None,
    };
    match err.map(|e| e.kind) {
        Some(figment::error::Kind::UnknownVariant(_, types)) => types.to_vec(),
        _ => Vec::new(),
    }
}

/// Says what is wrong with which key, and which source set it.
fn explain(err: figment::Error, sources: &[Source], merged: &toml::Table) -> ConfigError {
    let from = |path: &[String]| {
        sources
            .iter()
            .rev()
            .find(|s| has_path(&s.table, path))
            .map_or_else(String::new, |s| format!(" (set {})", s.name))
    };
    let mut lines = Vec::new();
    for e in err {
        let mut path = e.path.clone();
        let line = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                // Figment's path ends at the field for a struct, at the table for a typed
                // (tagged) table.
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
                let key = path.join(".");
                let mut line = format!("unknown key `{key}`{}", from(&path));
                let typed = match path.as_slice() {
                    [table, _] if TYPED_TABLES.contains(&table.as_str()) => Some(table.as_str()),
                    _ => None,
                };
                if let Some(table) = typed {
                    let ty = merged
                        .get(table)
                        .and_then(|t| t.get("type"))
                        .and_then(|t| t.as_str())
                        .unwrap_or_default();
                    if expected.is_empty() {
                        line.push_str(&format!("; {table}.type = {ty:?} takes no other key"));
                    } else {
                        line.push_str(&format!(
                            "; {table}.type = {ty:?} takes {}",
                            figment::error::OneOf(expected)
                        ));
                    }
                    let others: Vec<String> = types_of(table)
                        .into_iter()
                        .filter(|t| *t != ty)
                        .filter(|t| keys_of_type(table, t).is_some_and(|k| k.contains(field)))
                        .map(|t| format!("{t:?}"))
                        .collect();
                    if !others.is_empty() {
                        line.push_str(&format!(
                            " (`{field}` belongs to {table}.type = {})",
                            others.join(" or ")
                        ));
                    }
                } else {
                    line.push_str(&format!(", expected {}", figment::error::OneOf(expected)));
                }
                line
            }
            kind if path.is_empty() => format!("{kind}"),
            kind => {
                // Inside a typed table serde reports at the table: name the key.
                if let [table] = path.as_slice()
                    && TYPED_TABLES.contains(&table.as_str())
                    && let Some(key) = culprit(merged, table)
                {
                    path.push(key);
                }
                // Figment quotes a list of choices and then quotes it again: "``a` or `b``".
                let kind = kind.to_string().replace("``", "`");
                format!("`{}`: {kind}{}", path.join("."), from(&path))
            }
        };
        lines.push(line);
    }
    ConfigError(lines.join("; "))
}

/// The key of typed table `table` ([`TYPED_TABLES`]) that makes the configuration fail:
/// serde reads a tagged table as a whole, so its errors name the table, not the key. Each
/// key is tried alone with the table's `type`; the first that fails is the one.
fn culprit(merged: &toml::Table, table: &str) -> Option<String> {
    let t = merged.get(table)?.as_table()?;
    let ty = t.get("type")?;
    t.iter()
        .filter(|(k, _)| k.as_str() != "type")
        .find_map(|(k, v)| {
            let one = toml::Table::from_iter([("type".into(), ty.clone()), (k.clone(), v.clone())]);
            let mut alone = merged.clone();
            alone.insert(table.into(), toml::Value::Table(one));
            Figment::from(Serialized::defaults(&alone))
                .extract::<Config>()
                .is_err()
                .then(|| k.clone())
        })
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
        let _ = std::fs::remove_dir_all(&dir);
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

    fn load(
        file: Option<&str>,
        vars: &[(&str, &str)],
        set: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "gs-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let cli = CliOverrides {
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let r = Config::load(file.map(|_| path.as_path()), env(vars), &cli);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn postgres(c: &Config) -> (&str, &str, usize) {
        match &c.store {
            StoreConfig::Postgres {
                url,
                schema,
                pool_size,
                ..
            } => (url, schema, *pool_size),
            other => panic!("expected a postgres store, got {other:?}"),
        }
    }

    fn nats(c: &Config) -> (&str, &str) {
        match &c.broker {
            BrokerConfig::Nats { url, prefix, .. } => (url, prefix),
            other => panic!("expected a nats broker, got {other:?}"),
        }
    }

    /// The TOML block of docs/DEPLOY.md that every node of a cluster gets.
    fn deploy_toml() -> String {
        let doc = include_str!("../../../docs/DEPLOY.md");
        let start = doc
            .find("```toml\n# /etc/geostream/node.toml")
            .expect("DEPLOY.md has the node.toml block");
        let body = &doc[start + "```toml\n".len()..];
        body[..body.find("```").expect("the block ends")].to_string()
    }

    #[test]
    fn the_deploy_toml_loads_as_written() {
        let c = load(Some(&deploy_toml()), &[], &[]).unwrap();
        assert_eq!(
            postgres(&c),
            (
                "postgres://geostream:secret@db.internal:5432/geostream",
                "geostream",
                16
            )
        );
        assert_eq!(nats(&c).1, "geostream");
        assert!(matches!(
            c.broker,
            BrokerConfig::Nats {
                replicas: 3,
                heartbeat_ms: 2000,
                ..
            }
        ));
        assert_eq!(c.channels.history_size, 1000);
    }

    #[test]
    fn a_store_or_broker_type_from_any_source_gets_a_clean_table() {
        // The environment alone (what scripts/cluster.sh does).
        let c = load(
            None,
            &[
                ("GEOSTREAM_STORE__TYPE", "postgres"),
                ("GEOSTREAM_STORE__URL", "postgres://u@db:5432/geo"),
                ("GEOSTREAM_BROKER__TYPE", "nats"),
                ("GEOSTREAM_BROKER__PREFIX", "run_1"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(postgres(&c), ("postgres://u@db:5432/geo", "geostream", 16));
        assert_eq!(nats(&c), ("nats://127.0.0.1:4222", "run_1"));
        // Flags alone.
        let c = load(
            None,
            &[],
            &[
                ("store.type", "postgres"),
                ("store.schema", "s1"),
                ("broker.type", "nats"),
            ],
        )
        .unwrap();
        assert_eq!(postgres(&c).1, "s1");
        nats(&c);
        // The file sets the type; the environment and flags add keys of that type.
        let c = load(
            Some("[store]\ntype = \"postgres\"\nurl = \"postgres://a@h/d\"\n"),
            &[("GEOSTREAM_STORE__SCHEMA", "s2")],
            &[("store.pool_size", "4")],
        )
        .unwrap();
        assert_eq!(postgres(&c), ("postgres://a@h/d", "s2", 4));
        // A later source that changes the type starts the table afresh.
        let c = load(
            Some("[store]\ntype = \"postgres\"\nurl = \"postgres://a@h/d\"\n"),
            &[("GEOSTREAM_STORE__TYPE", "sqlite")],
            &[],
        )
        .unwrap();
        assert!(
            matches!(&c.store, StoreConfig::Sqlite { path, .. } if path == Path::new("geostream.db")),
            "{:?}",
            c.store
        );
        // Keys of the default type need no `type`.
        let c = load(None, &[("GEOSTREAM_STORE__PATH", "other.db")], &[]).unwrap();
        assert!(
            matches!(&c.store, StoreConfig::Sqlite { path, .. } if path == Path::new("other.db"))
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_where_it_was_set() {
        let e = load(
            None,
            &[
                ("GEOSTREAM_STORE__TYPE", "postgres"),
                ("GEOSTREAM_STORE__PATH", "x.db"),
            ],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown key `store.path` (set in the environment)"),
            "{e}"
        );
        assert!(e.contains("store.type = \"postgres\" takes"), "{e}");
        assert!(
            e.contains("`path` belongs to store.type = \"sqlite\""),
            "{e}"
        );
        // A PostgreSQL key without the type.
        let e = load(Some("[store]\nurl = \"postgres://h/d\"\n"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `store.url` (set in the file "),
            "{e}"
        );
        assert!(e.contains("belongs to store.type = \"postgres\""), "{e}");
        let e = load(
            None,
            &[],
            &[("broker.hearbeat_ms", "10"), ("broker.type", "nats")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown key `broker.hearbeat_ms` (set on the command line)"),
            "{e}"
        );
        let e = load(Some("lisen = \"127.0.0.1:1\"\n"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `lisen` (set in the file "), "{e}");
        let e = load(None, &[("GEOSTREAM_STORE__TYPE", "mysql")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mysql") && e.contains("postgres"), "{e}");
        let e = load(None, &[("GEOSTREAM_LAYERS__LOCK_GRACE_MS", "soon")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`layers.lock_grace_ms`") && e.contains("(set in the environment)"),
            "{e}"
        );
        // The in-process broker takes no keys: NATS's are refused, not ignored.
        let e = load(None, &[("GEOSTREAM_BROKER__URL", "nats://n1:4222")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `broker.url` (set in the environment); broker.type = \"memory\" takes no other key (`url` belongs to broker.type = \"nats\")"),
            "{e}"
        );
        // A bad value inside a typed table names its key, not only the table.
        let e = load(
            None,
            &[
                ("GEOSTREAM_STORE__TYPE", "postgres"),
                ("GEOSTREAM_STORE__POOL_SIZE", "lots"),
            ],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`store.pool_size`: invalid type") && e.contains("(set in the environment)"),
            "{e}"
        );
        let e = load(
            Some("[broker]\ntype = \"nats\"\nwrite_owner = \"table\"\n"),
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`broker.write_owner`: unknown variant") && e.contains("(set in the file "),
            "{e}"
        );
    }

    #[test]
    fn text_that_looks_like_a_number_stays_text_where_a_key_takes_text() {
        let c = load(
            None,
            &[
                ("GEOSTREAM_AUTH__HS256_SECRET", "31415926535"),
                ("GEOSTREAM_BROKER__TYPE", "nats"),
                ("GEOSTREAM_BROKER__PREFIX", "2024"),
                ("GEOSTREAM_BROKER__REPLICAS", "3"),
            ],
            &[("store.type", "postgres"), ("store.schema", "true")],
        )
        .unwrap();
        assert_eq!(c.auth.hs256_secret, "31415926535");
        assert_eq!(nats(&c).1, "2024");
        assert!(matches!(c.broker, BrokerConfig::Nats { replicas: 3, .. }));
        assert_eq!(postgres(&c).1, "true");
        // Numbers where numbers are wanted are still checked.
        let e = load(
            None,
            &[("GEOSTREAM_WEBSOCKET__MAX_FRAME_BYTES", "big")],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`websocket.max_frame_bytes`"), "{e}");
    }

    #[test]
    fn the_printed_configuration_loads_back_the_same() {
        let c = load(
            Some(&deploy_toml()),
            &[
                ("GEOSTREAM_STORE__SCHEMA", "s3"),
                ("GEOSTREAM_BROKER__REPLICAS", "1"),
            ],
            &[("layers.lock_grace_ms", "500")],
        )
        .unwrap();
        let printed = c.to_toml();
        assert!(printed.contains("[store]\ntype = \"postgres\"\nurl = \"postgres://geostream:secret@db.internal:5432/geostream\"\nschema = \"s3\""), "{printed}");
        assert!(printed.contains("[broker]\ntype = \"nats\""), "{printed}");
        let back = load(Some(&printed), &[], &[]).unwrap();
        assert_eq!(back.to_toml(), printed);
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = Config::default().to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.listen, Config::default().listen);
    }

    #[test]
    fn printed_configurations_hide_secrets() {
        let mut c = Config::default();
        c.auth.hs256_secret = "hunter2-hunter2".into();
        c.store = StoreConfig::Postgres {
            url: "postgres://gs:pgpass@db:5432/gs".into(),
            schema: "geostream".into(),
            pool_size: 4,
            change_retention: 100_000,
        };
        c.broker = BrokerConfig::Nats {
            url: "nats://a:natspass@n1:4222,nats://n2:4222".into(),
            prefix: "geostream".into(),
            replicas: 1,
            heartbeat_ms: 2000,
            forward_writes: true,
            write_owner: WriteOwner::Layer,
        };
        let text = c.redacted().to_toml();
        for secret in ["hunter2", "pgpass", "natspass"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("postgres://gs:***@db:5432/gs"), "{text}");
        assert!(
            text.contains("nats://a:***@n1:4222,nats://n2:4222"),
            "{text}"
        );
        assert!(text.contains("hs256_secret = \"***\""), "{text}");
    }
}
