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
    /// Most requests one connection may have running at once (imports, snapshots);
    /// further ones are refused. Default: 16.
    pub max_concurrent_requests: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_secs: 25,
            idle_timeout_secs: 60,
            max_frame_bytes: 1 << 20,
            max_concurrent_requests: 16,
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_subscriptions: 128,
            outbox_bytes: 4 << 20,
            slow_consumer_grace_secs: 10,
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
    /// Seconds to wait for connections to drain after SIGINT/SIGTERM before exiting anyway.
    /// Default: 10.
    pub drain_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_secs: 10 }
    }
}

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
            .filter(|(k, _)| k.starts_with("GEOSTREAM_") && k != "GEOSTREAM_CONFIG")
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
        if self.websocket.idle_timeout_secs <= self.websocket.ping_interval_secs {
            return bad(
                "websocket.idle_timeout_secs must be larger than websocket.ping_interval_secs",
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
