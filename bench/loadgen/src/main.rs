//! `gs-loadgen`: the load generator of geostream's benchmark suite (`bench/run.sh`).
//!
//! Every run prints one JSON line on stdout (or `{"error": ...}` and exit code 1). It speaks
//! protocol v1 in any of the three encodings through geostream-core's codec, sends traffic
//! only to 127.0.0.0/8, and every loop is bounded by a count and a time.

mod conn;
mod fanout;
mod geo;
mod idle;
mod stats;

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use geostream_core::codec::Encoding;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Load generator for geostream's benchmark suite")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// The server (loopback only).
    #[arg(long, global = true, default_value = "127.0.0.1:9200")]
    addr: SocketAddr,
    /// Further nodes of the same cluster (comma-separated, loopback only): connections are
    /// spread round-robin over `--addr` and these (`spatial` and `edits`).
    #[arg(long, global = true, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    /// Wire encoding.
    #[arg(long, global = true, value_enum, default_value = "msgpack")]
    enc: Enc,
    /// Connections come from 127.0.0.<src-first> ...
    #[arg(long, global = true, default_value_t = 2)]
    src_first: u8,
    /// ... cycling over this many addresses.
    #[arg(long, global = true, default_value_t = 40)]
    src_count: u8,
    /// The server's PID, to read its CPU time and RSS.
    #[arg(long, global = true)]
    server_pid: Option<String>,
    /// A label copied into the output.
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// Handshakes / set-up requests in flight.
    #[arg(long, global = true, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Enc {
    Json,
    Msgpack,
    MsgpackZstd,
}

impl From<Enc> for Encoding {
    fn from(e: Enc) -> Encoding {
        match e {
            Enc::Json => Encoding::Json,
            Enc::Msgpack => Encoding::Msgpack,
            Enc::MsgpackZstd => Encoding::MsgpackZstd,
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Subscribers on one channel, one publisher.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Subscribers that subscribe and then never read (the `slow` scenario).
        #[arg(long, default_value_t = 0)]
        stalled: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Publishes per second; 0 = closed loop.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Closed loop: messages not yet delivered to every subscriber.
        #[arg(long, default_value_t = 64)]
        window: u64,
        #[arg(long, default_value_t = 10_000_000)]
        count: u64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
        #[arg(long, default_value = "fanout")]
        channel: String,
    },
    /// Clients with one `ping` each in flight.
    Rtt {
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Idle connections over worker processes; server memory per connection.
    Idle {
        #[arg(long, default_value_t = 19_000)]
        conns: usize,
        #[arg(long, default_value_t = 4)]
        procs: usize,
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
    /// (internal) One worker process of `idle`.
    IdleWorker {
        #[arg(long)]
        conns: usize,
        #[arg(long, default_value_t = 0)]
        first: usize,
        #[arg(long, default_value_t = 60.0)]
        hold: f64,
    },
    /// Viewport subscriptions and a trajectory replay.
    Spatial {
        #[arg(long)]
        track: String,
        #[arg(long, default_value_t = 10_000)]
        subs: usize,
        #[arg(long, default_value_t = 128)]
        subs_per_conn: usize,
        /// Side of each square viewport, in degrees.
        #[arg(long, default_value_t = 0.5)]
        box_deg: f64,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
    },
    /// Durable edits: each editor patches features of its own with the versions it holds,
    /// `inflight` requests in flight on its connection (1: one at a time).
    Edits {
        #[arg(long, default_value_t = 10)]
        editors: usize,
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Layers the editors are spread over (editor i edits layer i mod n).
        #[arg(long, default_value_t = 1)]
        layers: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Tile pushes (full tiles) and one-feature deltas.
    Tiles {
        #[arg(long)]
        geojson: String,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 3)]
        zoom: u8,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 10)]
        delta_edits: usize,
        /// Edits per second of the open-loop phase, which runs for `duration` after the
        /// closed loop (0: none).
        #[arg(long, default_value_t = 0.0)]
        open_rate: f64,
    },
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let out = match rt {
        Ok(rt) => rt.block_on(run(cli, &argv)),
        Err(e) => Err(e.to_string()),
    };
    match out {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({"error": e, "args": argv[1..].join(" ")}));
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli, argv: &[String]) -> Result<Value, String> {
    let c = cli.common;
    conn::require_loopback(&c.addr)?;
    for a in &c.nodes {
        conn::require_loopback(a)?;
    }
    let target = conn::Target {
        addr: c.addr,
        more: Vec::leak(c.nodes.clone()),
        enc: c.enc.into(),
        src_first: c.src_first,
        src_count: c.src_count,
    };
    let pid = c.server_pid.clone();
    let (name, mut v) = match cli.scenario {
        Scenario::Fanout {
            subs,
            stalled,
            size,
            rate,
            window,
            count,
            duration,
            drain,
            channel,
        } => {
            if size < 35 {
                return Err("--size must be at least 35 (sequence number and send time)".into());
            }
            let p = fanout::FanoutParams {
                subs,
                stalled,
                size,
                rate,
                window,
                count,
                duration,
                drain,
                channel,
                concurrency: c.concurrency,
                server_pid: pid,
            };
            ("fanout", fanout::run(target, p).await?)
        }
        Scenario::Rtt {
            clients,
            size,
            duration,
        } => {
            let p = fanout::RttParams {
                clients,
                size: size.max(35),
                duration,
                concurrency: c.concurrency,
                server_pid: pid,
            };
            ("rtt", fanout::rtt(target, p).await?)
        }
        Scenario::Idle {
            conns,
            procs,
            settle,
            hold,
        } => {
            let server_pid = pid.ok_or("idle needs --server-pid")?;
            // The workers get the same common options.
            let mut common: Vec<String> = vec![
                "--addr".into(),
                c.addr.to_string(),
                "--enc".into(),
                enc_name(c.enc).into(),
                "--src-first".into(),
                c.src_first.to_string(),
                "--src-count".into(),
                c.src_count.to_string(),
            ];
            common.extend(["--label".into(), c.label.clone()]);
            let p = idle::IdleParams {
                conns,
                procs,
                concurrency: c.concurrency,
                settle,
                hold,
                server_pid,
            };
            ("idle", idle::run(&common, p).await?)
        }
        Scenario::IdleWorker { conns, first, hold } => (
            "idle-worker",
            idle::worker(target, conns, first, c.concurrency, hold).await?,
        ),
        Scenario::Spatial {
            track,
            subs,
            subs_per_conn,
            box_deg,
            batch,
            window,
            duration,
            drain,
        } => {
            let p = geo::SpatialParams {
                track,
                subs,
                subs_per_conn,
                box_deg,
                batch,
                window,
                duration,
                drain,
                concurrency: c.concurrency,
                server_pid: pid,
            };
            ("spatial", geo::spatial(target, p).await?)
        }
        Scenario::Edits {
            editors,
            inflight,
            layers,
            duration,
        } => {
            let p = geo::EditsParams {
                editors,
                inflight: inflight.max(1),
                layers: layers.max(1),
                duration,
                server_pid: pid,
            };
            ("edits", geo::edits(target, p).await?)
        }
        Scenario::Tiles {
            geojson,
            clients,
            zoom,
            duration,
            delta_edits,
            open_rate,
        } => {
            let p = geo::TilesParams {
                geojson,
                clients,
                zoom,
                duration,
                delta_edits,
                open_rate,
                server_pid: pid,
            };
            ("tiles", geo::tiles(target, p).await?)
        }
    };
    if let Value::Object(m) = &mut v {
        m.insert("scenario".into(), json!(name));
        m.insert("encoding".into(), json!(enc_name(c.enc)));
        m.insert("label".into(), json!(c.label));
        m.insert("nodes".into(), json!(1 + c.nodes.len()));
        m.insert("args".into(), json!(argv[1..].join(" ")));
    }
    Ok(v)
}

fn enc_name(e: Enc) -> &'static str {
    Encoding::from(e).name()
}
