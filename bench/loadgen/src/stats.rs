//! Measuring: a shared latency histogram, the monotonic clock payloads carry, and CPU / memory
//! of the server, this process and the rest of the machine, read from /proc.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since this process started measuring (monotonic; every timestamp a scenario
/// embeds in a payload is read and compared in this same process).
pub(crate) fn now_ns() -> u64 {
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Sub-buckets per power of two: 128, so a bucket is at most 0.8% wide.
const SUB: u32 = 7;
const BUCKETS: usize = 128 * 60;

/// A log-linear histogram of nanosecond values, shared by all tasks (relaxed atomics).
pub(crate) struct Hist {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Hist {
    pub(crate) fn new() -> Hist {
        Hist {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < (1 << (SUB + 1)) {
            return usize::try_from(v).unwrap_or(0);
        }
        let e = 63 - v.leading_zeros();
        let shift = e - SUB;
        let m = usize::try_from(v >> shift).unwrap_or(0);
        ((shift as usize) << SUB) + m
    }

    fn value(idx: usize) -> f64 {
        if idx < (1 << (SUB + 1)) {
            return idx as f64;
        }
        let shift = (idx >> SUB) - 1;
        let m = idx - (shift << SUB);
        ((m as f64) + 0.5) * (1u64 << shift) as f64
    }

    /// Records one value (ns).
    pub(crate) fn record(&self, ns: u64) {
        let i = Hist::index(ns).min(BUCKETS - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// Count, percentiles and max, in milliseconds.
    pub(crate) fn summary_ms(&self) -> Value {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return json!({"count": 0});
        }
        let q = |p: f64| -> f64 {
            let want = ((total as f64) * p).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= want {
                    return Hist::value(i) / 1e6;
                }
            }
            f64::NAN
        };
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "count": total,
            "p50": r(q(0.50)),
            "p90": r(q(0.90)),
            "p99": r(q(0.99)),
            "p999": r(q(0.999)),
            "max": r(self.max.load(Ordering::Relaxed) as f64 / 1e6),
        })
    }
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const HZ: f64 = 100.0;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// utime + stime of a process, in seconds.
pub(crate) fn proc_cpu_s(pid: &str) -> Option<f64> {
    let s = read(&format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / HZ)
}

/// Resident set size of a process, in KiB.
pub(crate) fn proc_rss_kb(pid: &str) -> Option<u64> {
    let s = read(&format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Busy CPU seconds of the whole machine (all cores) since boot.
fn machine_busy_s() -> Option<f64> {
    let s = read("/proc/stat")?;
    let f: Vec<f64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = f.get(3)? + f.get(4).copied().unwrap_or(0.0);
    let total: f64 = f.iter().take(8).sum();
    Some((total - idle) / HZ)
}

/// The soft limit on open files of this process.
pub(crate) fn nofile_limit() -> Option<u64> {
    let s = read("/proc/self/limits")?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

/// CPU use over a measured phase: the server, this process (and its children, for the idle
/// scenario's workers) and the rest of the machine.
pub(crate) struct Phase {
    server_pid: Option<String>,
    t0: Instant,
    server0: f64,
    own0: f64,
    machine0: f64,
}

impl Phase {
    pub(crate) fn start(server_pid: Option<&str>) -> Phase {
        Phase {
            server_pid: server_pid.map(str::to_string),
            t0: Instant::now(),
            server0: server_pid.and_then(proc_cpu_s).unwrap_or(0.0),
            own0: own_cpu_s(),
            machine0: machine_busy_s().unwrap_or(0.0),
        }
    }

    /// Ends the phase; `extra_own_cpu_s` is CPU spent by helper processes of this run.
    pub(crate) fn end(&self, extra_own_cpu_s: f64) -> Value {
        let wall = self.t0.elapsed().as_secs_f64();
        let server = self
            .server_pid
            .as_deref()
            .and_then(proc_cpu_s)
            .map(|s| s - self.server0);
        let own = own_cpu_s() - self.own0 + extra_own_cpu_s;
        let machine = machine_busy_s().unwrap_or(0.0) - self.machine0;
        let other = machine - own - server.unwrap_or(0.0);
        let r = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "wall_s": r(wall),
            "server_cpu_s": server.map(r),
            "loadgen_cpu_s": r(own),
            "other_cpu_s": r(other.max(0.0)),
            "server_rss_kb": self.server_pid.as_deref().and_then(proc_rss_kb),
        })
    }
}

fn own_cpu_s() -> f64 {
    proc_cpu_s("self").unwrap_or(0.0)
}

/// Rounds to `d` decimals for the report.
pub(crate) fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            255,
            256,
            257,
            511,
            512,
            1000,
            1 << 20,
            (1 << 20) + 12345,
            1 << 40,
        ] {
            let i = Hist::index(v);
            assert!(i >= last, "index grows with the value");
            last = i;
            let back = Hist::value(i);
            let err = (back - v as f64).abs() / (v as f64).max(1.0);
            assert!(err < 0.008, "value {v} comes back as {back}");
        }
    }

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let h = Hist::new();
        for v in 1..=1000u64 {
            h.record(v * 1_000_000);
        }
        let s = h.summary_ms();
        assert_eq!(s["count"], 1000);
        let p50 = s["p50"].as_f64().unwrap();
        assert!((p50 - 500.0).abs() < 5.0, "{s}");
        let p99 = s["p99"].as_f64().unwrap();
        assert!((p99 - 990.0).abs() < 8.0, "{s}");
    }
}
