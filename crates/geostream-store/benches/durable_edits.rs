//! Acknowledged durable edits per second on one layer, SQLite against PostgreSQL, in one run:
//! both stores' group commit.
//!
//! `cargo bench -p geostream-store --bench durable_edits`
//!
//! Each editor patches its own feature of one layer (one property, stated version, an op
//! id, as a real client would send) and waits for the acknowledgement before sending the
//! next edit. An acknowledgement means committed and flushed. Runs 1, 10 and 50 editors on
//! SQLite with each [`Synchronous`] mode: `FULL` (the default: fdatasync of the WAL on the
//! sync thread, pipelined with the next group), `INLINE` (SQLite's own `synchronous=FULL`,
//! the sync inside COMMIT) and, for comparison, `NORMAL` (no sync before the
//! acknowledgement); then on PostgreSQL (`synchronous_commit` as the server has it, `on` by
//! default) at `GEOSTREAM_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, PostGIS needed), in a schema of its own that
//! is dropped afterwards. The CPU column counts this process only (not the PostgreSQL
//! server's).
//!
//! The database lives under cargo's target directory (a real disk; a tmpfs would make fsync
//! free and the figures meaningless) unless `GEOSTREAM_BENCH_DIR` names another directory.
//! `GEOSTREAM_BENCH_SECS` sets the measured time per configuration (default 5);
//! `GEOSTREAM_BENCH_SYNC` (`full`/`inline`/`normal`/`postgres`) and `GEOSTREAM_BENCH_EDITORS`
//! narrow the run to some rows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geostream_core::feature::ValidFeature;
use geostream_store::sqlite::Synchronous;
use geostream_store::{
    Holder, LayerSpec, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store, WriteOp,
    WriteRequest,
};
use serde_json::{Map, Value, json};

// As in the server binary, so allocation costs are the ones production sees.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Figures {
    edits: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// CPU time of the whole process (all threads) per edit, when Linux tells it: a figure
    /// other load on the machine disturbs far less than the rate.
    cpu_per_edit: Option<Duration>,
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (Linux; clock
/// ticks of 10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The store a row runs on.
#[derive(Clone, Copy)]
enum Backend {
    Sqlite(Synchronous),
    Postgres,
}

async fn run_on(backend: Backend, editors: usize, measure: Duration) -> Figures {
    match backend {
        Backend::Sqlite(sync) => {
            let base = std::env::var_os("GEOSTREAM_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
            std::fs::create_dir_all(&base).expect("bench dir");
            let dir = tempfile::tempdir_in(&base).expect("tempdir");
            let store = SqliteStore::open(
                dir.path().join("bench.db"),
                SqliteOptions {
                    synchronous: sync,
                    ..Default::default()
                },
            )
            .expect("open");
            run(Arc::new(store), editors, measure).await
        }
        Backend::Postgres => {
            let url = std::env::var("GEOSTREAM_BENCH_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let schema = format!(
                "gs_bench_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let store = PostgresStore::connect(PostgresOptions {
                url: url.clone(),
                schema,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL with PostGIS is needed at {url}: {e}"));
            let f = run(Arc::new(store.clone()), editors, measure).await;
            store.drop_schema().await.expect("drop the bench schema");
            f
        }
    }
}

async fn run<S: Store>(store: Arc<S>, editors: usize, measure: Duration) -> Figures {
    store
        .create_layer(LayerSpec {
            name: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("layer");
    let writer = Holder {
        client: "bench".into(),
        user: Some("bench".into()),
    };
    let ops = (0..editors)
        .map(|i| {
            let g = geojson::Geometry::new(geojson::Value::Point(vec![i as f64 * 0.01, 45.0]));
            let properties: Map<String, Value> =
                json!({"name": format!("vehicle {i}"), "speed": 0, "heading": 90})
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
            WriteOp::Create {
                feature: ValidFeature {
                    id: Some(format!("f{i}")),
                    bbox: None,
                    geometry: Some(g),
                    properties,
                },
            }
        })
        .collect();
    store
        .apply(WriteRequest {
            layer: "bench".into(),
            ops,
            writer: writer.clone(),
            op_id: None,
        })
        .await
        .expect("create");

    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let measure_from = start + warmup;
    let measure_until = measure_from + measure;
    let mut tasks = Vec::new();
    for i in 0..editors {
        let (store, writer) = (store.clone(), writer.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("f{i}");
            let mut version = 1;
            let mut latencies = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= measure_until {
                    return latencies;
                }
                let properties = json!({"speed": version % 120})
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let op = WriteOp::Patch {
                    id: id.clone(),
                    properties: Some(properties),
                    geometry: None,
                    expected: Some(version),
                };
                let req = WriteRequest {
                    layer: "bench".into(),
                    ops: vec![op],
                    writer: writer.clone(),
                    op_id: Some(format!("{id}-{version}")),
                };
                let o = store.apply(req).await.expect("edit");
                version = o.changes[0].version;
                if t0 >= measure_from {
                    latencies.push(t0.elapsed());
                }
            }
        }));
    }
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let a = process_cpu();
        tokio::time::sleep_until(measure_until.into()).await;
        a.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a))
    });
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("editor"));
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let cpu = cpu.await.expect("cpu task");
    Figures {
        cpu_per_edit: cpu.map(|c| c / all.len().max(1) as u32),
        edits: all.len(),
        elapsed: measure,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (and not needed).
    let secs = std::env::var("GEOSTREAM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let measure = Duration::from_secs_f64(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "durable edits: single-feature patches, each editor waits for its ack ({secs} s per row)"
    );
    println!(
        "{:<16} {:>8} {:>12} {:>10} {:>10} {:>14}",
        "store", "editors", "edits/s", "p50 ms", "p99 ms", "CPU us/edit"
    );
    // Optional narrowing, for profiling one configuration:
    // GEOSTREAM_BENCH_SYNC=full|inline|normal|postgres, GEOSTREAM_BENCH_EDITORS=50.
    let only_sync = std::env::var("GEOSTREAM_BENCH_SYNC")
        .ok()
        .map(|s| s.to_ascii_uppercase());
    let only_editors: Option<usize> = std::env::var("GEOSTREAM_BENCH_EDITORS")
        .ok()
        .and_then(|s| s.parse().ok());
    let modes = [
        ("FULL", "sqlite FULL", Backend::Sqlite(Synchronous::Full)),
        (
            "INLINE",
            "sqlite INLINE",
            Backend::Sqlite(Synchronous::Inline),
        ),
        (
            "NORMAL",
            "sqlite NORMAL",
            Backend::Sqlite(Synchronous::Normal),
        ),
        ("POSTGRES", "postgres", Backend::Postgres),
    ];
    for (key, name, backend) in modes {
        if only_sync.as_deref().is_some_and(|s| s != key) {
            continue;
        }
        for editors in [1, 10, 50] {
            if only_editors.is_some_and(|e| e != editors) {
                continue;
            }
            let f = rt.block_on(run_on(backend, editors, measure));
            println!(
                "{name:<16} {editors:>8} {:>12.0} {:>10.3} {:>10.3} {:>14}",
                f.edits as f64 / f.elapsed.as_secs_f64(),
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                f.cpu_per_edit
                    .map_or("-".to_string(), |c| format!("{:.1}", c.as_secs_f64() * 1e6)),
            );
        }
    }
}
