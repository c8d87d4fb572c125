//! The `geostream` command: parses arguments, loads configuration, starts logging, binds and
//! runs. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use geostream_server::config::{CliOverrides, Config, LogFormat};
use geostream_server::import::{DuplicatePolicy, IdSource};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// geostream: a real-time geospatial streaming server.
#[derive(Parser)]
#[command(name = "geostream", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (WebSocket, SSE and HTTP on one port).
    Serve(ServeArgs),
    /// Import a GeoJSON FeatureCollection or newline-delimited GeoJSON file (plain or .zst)
    /// into a layer of a running server; the layer is created if it does not exist.
    Import(ImportArgs),
    /// Replay a trajectory CSV (timestamp,object_id,lon,lat,...) into a layer of a running
    /// server as live position updates, one feature per object.
    Replay(ReplayArgs),
    /// Mint an HS256 token (development and tests), signed with auth.hs256_secret.
    Token(TokenArgs),
    /// Manage the geofences of a running server (docs/GEOFENCES.md).
    Fence(FenceArgs),
}

#[derive(clap::Args)]
struct FenceArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: FenceCommand,
}

#[derive(Subcommand)]
enum FenceCommand {
    /// Create a geofence from its JSON definition (a file, or - for standard input). Prints
    /// the fence, with its webhook secret (shown only here).
    Create {
        /// The definition's file.
        file: PathBuf,
    },
    /// List the geofences, one JSON object per line.
    List,
    /// Show one geofence.
    Get {
        /// The fence.
        name: String,
    },
    /// Delete a geofence (features inside get `exit` with reason `fence_closed`).
    Delete {
        /// The fence.
        name: String,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Subject (the user).
    #[arg(long)]
    sub: String,
    /// Rights: `NAME:RIGHTS` or `layer:NAME:RIGHTS` for layers, `channel:NAME:RIGHTS` for
    /// channels; RIGHTS is r, w or rw; NAME may contain `*`. Repeatable.
    #[arg(long = "grant")]
    grants: Vec<String>,
    /// Lifetime: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// The HS256 secret (default: auth.hs256_secret from the configuration).
    #[arg(long, env = "GEOSTREAM_TOKEN_SECRET")]
    secret: Option<String>,
    /// TOML configuration file to read the secret from.
    #[arg(long, env = "GEOSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

/// Where the tools connect.
#[derive(clap::Args)]
struct ServerArgs {
    /// The server: host:port, http(s)://host:port or ws(s)://host:port/v1/ws.
    #[arg(
        long,
        global = true,
        env = "GEOSTREAM_SERVER",
        default_value = "127.0.0.1:8080"
    )]
    server: String,
    /// A bearer token, when the server requires one.
    #[arg(long, global = true, env = "GEOSTREAM_TOKEN")]
    token: Option<String>,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The file.
    file: PathBuf,
    /// The layer.
    #[arg(long)]
    layer: String,
    /// Features per transaction.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Take each feature's id from this property instead of the file's `id` (features
    /// without it get a new id).
    #[arg(long, value_name = "NAME", conflicts_with = "generate_ids")]
    id_property: Option<String>,
    /// Ignore the file's ids: every feature gets a new id from the server.
    #[arg(long)]
    generate_ids: bool,
    /// When features of the file share an id: `fail` imports nothing and lists them,
    /// `skip` keeps the first of each id, `replace` keeps the last.
    #[arg(long, value_enum, default_value = "fail")]
    duplicates: DuplicatePolicy,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The CSV file (plain or .zst).
    file: PathBuf,
    /// The layer (created last-writer-wins if it does not exist).
    #[arg(long)]
    layer: String,
    /// Time factor: 60 plays an hour of data in a minute; 0 as fast as the server accepts.
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "GEOSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format (overrides `log.format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Set any configuration key (overrides the file and the environment), for example
    /// `--set store.type=postgres --set store.url=postgres://db/geostream`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    set: Vec<(String, String)>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Parses `KEY=VALUE` of `--set`.
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Import(args) => tool(import(args)),
        Command::Replay(args) => tool(replay(args)),
        Command::Token(args) => token(args),
        Command::Fence(args) => tool(fence(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line: what failed and why.
            eprintln!("geostream: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    use geostream_server::auth;
    let secret = match args.secret {
        Some(s) => s,
        None => {
            Config::load(
                args.config.as_deref(),
                std::env::vars(),
                &CliOverrides::default(),
            )?
            .auth
            .hs256_secret
        }
    };
    anyhow::ensure!(
        !secret.is_empty(),
        "no secret: pass --secret or set auth.hs256_secret (GEOSTREAM_AUTH__HS256_SECRET)"
    );
    let mut layers = std::collections::BTreeMap::new();
    let mut channels = std::collections::BTreeMap::new();
    for g in &args.grants {
        auth::parse_grant(g, &mut layers, &mut channels)?;
    }
    let now = auth::now_secs();
    let claims = auth::Claims {
        sub: Some(args.sub),
        exp: now + auth::parse_ttl(&args.ttl)?,
        nbf: None,
        iat: Some(now),
        layers,
        channels,
    };
    println!("{}", auth::mint_hs256(&secret, &claims)?);
    Ok(())
}

/// Runs a command-line tool on a small runtime.
async fn fence(args: FenceArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use geostream_core::api::method;
    let remote = geostream_server::remote::Remote::connect(
        &args.server.server,
        args.server.token.as_deref(),
    )
    .await?;
    let out = match args.command {
        FenceCommand::Create { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let def: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            remote.call(method::FENCE_CREATE, &def).await?
        }
        FenceCommand::List => {
            let list = remote
                .call(method::FENCE_LIST, &serde_json::json!({}))
                .await?;
            for f in list["fences"].as_array().into_iter().flatten() {
                println!("{f}");
            }
            return Ok(());
        }
        FenceCommand::Get { name } => {
            remote
                .call(method::FENCE_GET, &serde_json::json!({ "name": name }))
                .await?
        }
        FenceCommand::Delete { name } => {
            remote
                .call(method::FENCE_DELETE, &serde_json::json!({ "name": name }))
                .await?;
            println!("deleted geofence {name:?}");
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn tool(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// A one-line progress bar on stderr (redrawn in place on a terminal).
fn progress_line(what: &str, done: u64, total: u64, start: std::time::Instant) {
    use std::io::{IsTerminal, Write};
    let pct = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let width = 30;
    let filled = ((pct / 100.0) * width as f64) as usize;
    let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-3);
    let bar: String = "#".repeat(filled) + &"-".repeat(width - filled.min(width));
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(
            err,
            "\r{what} [{bar}] {done}/{total} ({pct:.0}%, {rate:.0}/s)  "
        );
        if done >= total {
            let _ = writeln!(err);
        }
    } else {
        let _ = writeln!(err, "{what} {done}/{total} ({pct:.0}%, {rate:.0}/s)");
    }
    let _ = err.flush();
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    use geostream_server::import;
    let (features, lines) = import::read_file_with_lines(&args.file)
        .map_err(|e| anyhow::anyhow!("{}: {}", args.file.display(), e.to_rpc().message))?;
    let ids = match (&args.id_property, args.generate_ids) {
        (Some(name), _) => IdSource::Property(name.clone()),
        (None, true) => IdSource::Generate,
        (None, false) => IdSource::File,
    };
    let prepared = import::prepare_ids(features, &lines, &ids, args.duplicates);
    let file = args.file.display();
    if let IdSource::Property(name) = &ids
        && prepared.without_property > 0
    {
        println!(
            "{} features have no property {name:?} (a string or number): they get new ids",
            prepared.without_property
        );
    }
    let dup = &prepared.duplicates;
    if !dup.is_empty() {
        let what = match args.duplicates {
            DuplicatePolicy::Fail => "",
            DuplicatePolicy::Skip => ", keeping the first (--duplicates skip)",
            DuplicatePolicy::Replace => ", keeping the last (--duplicates replace)",
        };
        println!(
            "{} features of {file} have an id an earlier feature has{what}:",
            dup.len()
        );
        for d in dup.iter().take(20) {
            let (first, second) = if d.kept.index < d.dropped.index {
                (d.kept, d.dropped)
            } else {
                (d.dropped, d.kept)
            };
            println!("  id {:?}: {first} and {second}", d.id);
        }
        if dup.len() > 20 {
            println!("  ... and {} more", dup.len() - 20);
        }
        if args.duplicates == DuplicatePolicy::Fail {
            anyhow::bail!(
                "nothing imported: ids must be unique in a layer (--duplicates fail). Choose \
                 --duplicates skip (keep the first of each id), --duplicates replace (keep the \
                 last), --id-property NAME (ids from a property) or --generate-ids (new ids)"
            );
        }
    }
    let remote = geostream_server::remote::Remote::connect(
        &args.server.server,
        args.server.token.as_deref(),
    )
    .await?;
    let start = std::time::Instant::now();
    let report = geostream_server::replay::import(
        &remote,
        &args.layer,
        &prepared.features,
        args.batch,
        |d, t| progress_line("importing", d, t, start),
    )
    .await?;
    println!(
        "imported {} features into {:?} in {:.1} s; rejected {}",
        report.imported,
        args.layer,
        report.elapsed.as_secs_f64(),
        report.rejected
    );
    for (index, reason) in report.rejections.iter().take(20) {
        let place = prepared.places.get(*index as usize).copied();
        match place {
            Some(p) => println!("  {p}: {reason}"),
            None => println!("  feature {}: {reason}", index + 1),
        }
    }
    if report.rejected > 20 {
        println!("  ... and {} more", report.rejected - 20);
    }
    if report.rejected > 0 && report.imported > 0 {
        println!(
            "the layer holds the {} imported features; the rejected ones are not in it",
            report.imported
        );
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speed >= 0.0 && args.speed.is_finite(),
        "--speed must be 0 or more"
    );
    let points = geostream_server::replay::read_track(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let remote = geostream_server::remote::Remote::connect(
        &args.server.server,
        args.server.token.as_deref(),
    )
    .await?;
    let start = std::time::Instant::now();
    let report =
        geostream_server::replay::replay(&remote, &args.layer, &points, args.speed, |d, t| {
            progress_line("replaying", d, t, start)
        })
        .await?;
    println!(
        "replayed {} position updates into {:?} in {:.1} s ({:.0}/s)",
        report.updates,
        args.layer,
        report.elapsed.as_secs_f64(),
        report.updates as f64 / report.elapsed.as_secs_f64().max(1e-3)
    );
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = CliOverrides {
        listen: args.listen,
        data_dir: args.data_dir,
        log_format: args.log_format,
        set: args.set,
    };
    let config = Config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    if args.print_config {
        // Secrets stay out of terminals and support tickets.
        print!("{}", config.redacted().to_toml());
        return Ok(());
    }
    geostream_server::telemetry::init(&config.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listen = config.listen;
        // The store and the broker first: a node that cannot reach them exits with the
        // reason, before it listens or says it does.
        let node = geostream_server::start(config).await?;
        let listener =
            geostream_server::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "geostream {} listening on http://{addr} (WebSocket ws://{addr}/v1/ws)",
            env!("CARGO_PKG_VERSION")
        );
        geostream_server::serve(listener, node, shutdown_signal()).await;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM. A second signal ends the process at once (an impatient
/// Ctrl-C does not wait for the graceful shutdown).
async fn shutdown_signal() {
    signal().await;
    tracing::info!("Shutdown signal received; a second one exits at once.");
    tokio::spawn(async {
        signal().await;
        eprintln!("geostream: second signal, exiting without draining");
        std::process::exit(130);
    });
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
