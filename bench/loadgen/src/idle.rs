//! `idle`: as many open, silent connections as the server holds, spread over worker
//! processes (each process may open at most 20,000 files here). The server's RSS is sampled
//! before the first connection and after each worker is up, which gives a line (bytes per
//! connection, fixed cost) for the 1,000,000-connection model.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::conn::{self, Target};
use crate::stats::{self, Phase, round};

/// Worker: opens `conns` connections (indices `first..first+conns` of the source-address
/// rotation), prints one JSON line when they are up, then keeps reading them (answering the
/// server's pings) until its stdin closes or `hold` seconds pass.
pub(crate) async fn worker(
    target: Target,
    conns: usize,
    first: usize,
    concurrency: usize,
    hold: f64,
) -> Result<Value, String> {
    if let Some(limit) = stats::nofile_limit()
        && conns as u64 + 64 > limit
    {
        {
            return Err(format!(
                "{conns} connections need more open files than this process may have ({limit}); use more workers"
            ));
        }
    }
    let t = Instant::now();
    let (ws, errors) =
        conn::connect_many(target, conns, first, concurrency, Duration::from_secs(30)).await;
    let ws: Vec<_> = ws.into_iter().flatten().collect();
    let up = ws.len();
    println!(
        "{}",
        json!({"ready": up, "failed": conns - up, "ramp_s": round(t.elapsed().as_secs_f64(), 2), "errors": errors})
    );
    let alive = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(up));
    let mut set = tokio::task::JoinSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(hold);
    for mut w in ws {
        let alive = alive.clone();
        set.spawn(async move {
            loop {
                match tokio::time::timeout_at(until, conn::next_data(&mut w)).await {
                    Err(_) => break,
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => {
                        // Closed by the server (or broken): no longer alive.
                        alive.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            }
            drop(w);
        });
    }
    // Stdin closing (the parent is done measuring) ends the hold early. A plain thread reads
    // it, so the load generator needs no more tokio features than the server.
    let (tx, stdin) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for _ in std::io::stdin().lock().lines().map_while(Result::ok) {}
        let _ = tx.send(());
    });
    tokio::select! {
        _ = stdin => { set.abort_all(); }
        _ = async { while set.join_next().await.is_some() {} } => {}
    }
    Ok(json!({"worker_done": up, "alive_at_end": alive.load(std::sync::atomic::Ordering::Relaxed)}))
}

/// Parameters of the idle scenario.
pub(crate) struct IdleParams {
    pub(crate) conns: usize,
    pub(crate) procs: usize,
    pub(crate) concurrency: usize,
    pub(crate) settle: f64,
    pub(crate) hold: f64,
    pub(crate) server_pid: String,
}

/// Parent: starts the workers one after another and samples the server's RSS.
pub(crate) async fn run(args: &[String], p: IdleParams) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let procs = p.procs.max(1);
    let per = p.conns.div_ceil(procs);
    let rss = |pid: &str| stats::proc_rss_kb(pid).unwrap_or(0);
    let before_kb = rss(&p.server_pid);
    let phase = Phase::start(Some(&p.server_pid));
    let t = Instant::now();
    let mut children = Vec::new();
    let mut samples = vec![json!({"conns": 0, "rss_kb": before_kb})];
    let mut connected = 0usize;
    let mut failed = 0usize;
    let mut errors = Vec::new();
    for w in 0..procs {
        let n = per.min(p.conns - w * per);
        if n == 0 {
            break;
        }
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .arg("idle-worker")
            .arg("--conns")
            .arg(n.to_string())
            .arg("--first")
            .arg((w * per).to_string())
            .arg("--concurrency")
            .arg(p.concurrency.to_string())
            .arg("--hold")
            .arg((p.hold + p.settle + 60.0).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Worker(cmd.spawn().map_err(|e| format!("spawn worker: {e}"))?);
        let out = child.0.stdout.take().ok_or("no worker stdout")?;
        // A thread per worker forwards its stdout lines.
        let (tx, mut lines) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let line = tokio::time::timeout(Duration::from_secs(90), lines.recv())
            .await
            .map_err(|_| format!("worker {w} was not ready within 90 s"))?
            .ok_or_else(|| format!("worker {w} exited before it was ready"))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("worker {w}: {e}: {line}"))?;
        if let Some(e) = v.get("error") {
            return Err(format!("worker {w}: {e}"));
        }
        connected += v["ready"].as_u64().unwrap_or(0) as usize;
        failed += v["failed"].as_u64().unwrap_or(0) as usize;
        if let Some(e) = v["errors"].as_array() {
            errors.extend(e.iter().take(3).cloned());
        }
        // A moment for the server to finish the handshakes' allocations.
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(json!({"conns": connected, "rss_kb": rss(&p.server_pid)}));
        children.push((child, lines));
    }
    let ramp_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(p.settle)).await;
    let held_kb = rss(&p.server_pid);
    samples.push(json!({"conns": connected, "rss_kb": held_kb}));
    tokio::time::sleep(Duration::from_secs_f64(p.hold)).await;
    let end_kb = rss(&p.server_pid);
    // Children's CPU: read before they exit.
    let mut worker_cpu = 0.0;
    for (c, _) in &children {
        worker_cpu += stats::proc_cpu_s(&c.0.id().to_string()).unwrap_or(0.0);
    }
    let ph = phase.end(worker_cpu);
    let mut alive = 0u64;
    for (mut c, mut lines) in children {
        drop(c.0.stdin.take());
        if let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(20), lines.recv()).await
            && let Ok(v) = serde_json::from_str::<Value>(&l)
        {
            alive += v["alive_at_end"].as_u64().unwrap_or(0);
        }
        // Dropping the Worker waits for (or ends) the process.
    }
    // Least-squares line through the samples taken while ramping (conns > 0 plus the start).
    let pts: Vec<(f64, f64)> = samples[..samples.len() - 1]
        .iter()
        .map(|s| {
            (
                s["conns"].as_f64().unwrap_or(0.0),
                s["rss_kb"].as_f64().unwrap_or(0.0) * 1024.0,
            )
        })
        .collect();
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let intercept = my - slope * mx;
    let per_conn = if connected > 0 {
        (held_kb.saturating_sub(before_kb) as f64 * 1024.0) / connected as f64
    } else {
        0.0
    };
    Ok(json!({
        "conns_target": p.conns,
        "procs": procs,
        "connected": connected,
        "failed": failed,
        "alive_at_end": alive,
        "ramp_s": round(ramp_s, 2),
        "server_rss_kb_before": before_kb,
        "server_rss_kb_held": held_kb,
        "server_rss_kb_end": end_kb,
        "server_bytes_per_conn": round(per_conn, 0),
        "samples": samples,
        "model": {
            "bytes_per_conn_slope": round(slope, 0),
            "fixed_bytes": round(intercept, 0),
            "rss_gib_for_1m": round((intercept + slope * 1e6) / (1u64 << 30) as f64, 2),
        },
        "errors": errors,
        "phase": ph,
    }))
}

/// A worker process of this run: ended (by its own PID) if it is still running when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
