//! Prometheus metrics.
//!
//! Counters are plain atomics in fixed tables (per encoding, per method), so the hot path pays
//! one relaxed atomic add and no lookup. Writers accumulate latency in a [`LocalHistogram`]
//! and add it to the shared one once per write batch, so per-delivery latency costs no shared
//! atomics at all. `render` writes the Prometheus text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use geostream_core::codec::Encoding;
use geostream_core::request::Method;
use geostream_hub::HubStats;

/// Series besides the WebSocket methods ([`Method::ALL`]); anything else is `other` (last).
const OTHER_SERIES: [&str; 5] = [
    "$/cancelRequest",
    "http.publish",
    "http.history",
    "http.presence",
    "other",
];

/// Number of request series.
const SERIES: usize = Method::ALL.len() + OTHER_SERIES.len();

/// The name of series `i`.
fn series_name(i: usize) -> &'static str {
    match Method::ALL.get(i) {
        Some(m) => m.name(),
        None => OTHER_SERIES[i - Method::ALL.len()],
    }
}

/// The series of a method name.
fn series_of(method: &str) -> Option<usize> {
    (0..SERIES).find(|&i| series_name(i) == method)
}

/// Latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Adds a local histogram's counts.
    pub fn merge(&self, local: &mut LocalHistogram) {
        if local.n == 0 {
            return;
        }
        for (c, l) in self.counts.iter().zip(local.counts.iter_mut()) {
            if *l != 0 {
                c.fetch_add(u64::from(*l), Ordering::Relaxed);
                *l = 0;
            }
        }
        self.sum_ns.fetch_add(local.sum_ns, Ordering::Relaxed);
        local.sum_ns = 0;
        local.n = 0;
    }

    /// Records one observation directly.
    pub fn observe(&self, d: Duration) {
        let mut l = LocalHistogram::default();
        l.observe(d);
        self.merge(&mut l);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

/// A histogram owned by one task, merged into a [`Histogram`] now and then.
#[derive(Default)]
pub struct LocalHistogram {
    counts: [u32; BUCKETS.len() + 1],
    sum_ns: u64,
    n: u32,
}

impl LocalHistogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum_ns += d.as_nanos() as u64;
        self.n += 1;
    }
}

/// Per-encoding traffic counters.
#[derive(Default)]
pub struct Traffic {
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Bytes received (WebSocket payload bytes).
    pub bytes_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Bytes sent (including WebSocket headers).
    pub bytes_out: AtomicU64,
}

/// Requests per series, `[ok, failed]` (an array longer than `Default` is derived for).
struct RequestCounters([[AtomicU64; 2]; SERIES]);

impl Default for RequestCounters {
    fn default() -> Self {
        RequestCounters(std::array::from_fn(|_| Default::default()))
    }
}

/// All of the server's metrics.
#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub ws_connections: AtomicI64,
    /// Open SSE streams.
    pub sse_connections: AtomicI64,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// TCP connections refused by connection limits.
    pub refused: AtomicU64,
    /// Traffic by encoding (index: [`Encoding::index`]).
    pub traffic: [Traffic; 3],
    requests: RequestCounters,
    /// Requests aborted by `$/cancelRequest` (or by the connection closing).
    pub cancelled: AtomicU64,
    /// Connections closed for protocol violations.
    pub protocol_errors: AtomicU64,
    /// Time from a push being prepared on this node to its bytes being handed to the socket.
    pub deliver_latency: Histogram,
    /// Time to handle a request, by no method (all requests).
    pub request_latency: Histogram,
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, method: &str, ok: bool) {
        let i = series_of(method).unwrap_or(SERIES - 1);
        self.requests.0[i][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Traffic counters of an encoding.
    pub fn traffic(&self, enc: Encoding) -> &Traffic {
        &self.traffic[enc.index()]
    }

    /// Requests counted for `method` with the given outcome (for tests).
    pub fn requests(&self, method: &str, ok: bool) -> u64 {
        series_of(method).map_or(0, |i| {
            self.requests.0[i][usize::from(!ok)].load(Ordering::Relaxed)
        })
    }

    /// Renders everything in the Prometheus text format.
    pub fn render(&self, hub: &HubStats, extra: &[(&str, &str, f64)]) -> String {
        let mut o = String::with_capacity(8192);
        let r = Ordering::Relaxed;
        gauge(
            &mut o,
            "geostream_connections",
            "Open client connections by transport.",
            &[
                ("transport=\"ws\"", self.ws_connections.load(r) as f64),
                ("transport=\"sse\"", self.sse_connections.load(r) as f64),
            ],
        );
        counter(
            &mut o,
            "geostream_tcp_accepted_total",
            "TCP connections accepted.",
            &[("", self.accepted.load(r) as f64)],
        );
        counter(
            &mut o,
            "geostream_tcp_refused_total",
            "TCP connections refused by connection limits.",
            &[("", self.refused.load(r) as f64)],
        );
        for (name, help, pick) in [
            (
                "geostream_frames_in_total",
                "WebSocket data frames received, by encoding.",
                0,
            ),
            (
                "geostream_bytes_in_total",
                "WebSocket payload bytes received, by encoding.",
                1,
            ),
            (
                "geostream_frames_out_total",
                "Frames sent (WebSocket frames and SSE events), by encoding.",
                2,
            ),
            ("geostream_bytes_out_total", "Bytes sent, by encoding.", 3),
        ] {
            let series: Vec<(String, f64)> = Encoding::ALL
                .iter()
                .map(|e| {
                    let t = self.traffic(*e);
                    let v = [&t.frames_in, &t.bytes_in, &t.frames_out, &t.bytes_out][pick].load(r);
                    (format!("encoding=\"{}\"", e.name()), v as f64)
                })
                .collect();
            let s: Vec<(&str, f64)> = series.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            counter(&mut o, name, help, &s);
        }
        let mut lines = Vec::new();
        for i in 0..SERIES {
            let m = series_name(i);
            for (j, outcome) in ["ok", "error"].iter().enumerate() {
                lines.push((
                    format!("method=\"{m}\",outcome=\"{outcome}\""),
                    self.requests.0[i][j].load(r) as f64,
                ));
            }
        }
        let s: Vec<(&str, f64)> = lines.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            &mut o,
            "geostream_requests_total",
            "Requests handled, by method and outcome.",
            &s,
        );
        counter(
            &mut o,
            "geostream_requests_cancelled_total",
            "Requests aborted by $/cancelRequest or a closed connection.",
            &[("", self.cancelled.load(r) as f64)],
        );
        counter(
            &mut o,
            "geostream_protocol_errors_total",
            "Connections closed for protocol violations.",
            &[("", self.protocol_errors.load(r) as f64)],
        );
        let _ = writeln!(
            o,
            "# HELP geostream_publish_to_deliver_seconds Time from a push being prepared on this node to its bytes reaching the socket."
        );
        let _ = writeln!(o, "# TYPE geostream_publish_to_deliver_seconds histogram");
        self.deliver_latency
            .render(&mut o, "geostream_publish_to_deliver_seconds", "");
        let _ = writeln!(
            o,
            "# HELP geostream_request_duration_seconds Time to handle a request."
        );
        let _ = writeln!(o, "# TYPE geostream_request_duration_seconds histogram");
        self.request_latency
            .render(&mut o, "geostream_request_duration_seconds", "");
        gauge(
            &mut o,
            "geostream_sessions",
            "Sessions open.",
            &[("", hub.sessions.load(r) as f64)],
        );
        gauge(
            &mut o,
            "geostream_subscriptions",
            "Subscriptions open.",
            &[("", hub.subscriptions.load(r) as f64)],
        );
        counter(
            &mut o,
            "geostream_events_total",
            "Events dispatched to this node's subscribers (before fan-out).",
            &[("", hub.events.load(r) as f64)],
        );
        counter(
            &mut o,
            "geostream_deliveries_total",
            "Pushes queued to subscribers (after fan-out).",
            &[("", hub.deliveries.load(r) as f64)],
        );
        gauge(
            &mut o,
            "geostream_outbox_queued_bytes",
            "Bytes waiting in all outboxes.",
            &[("", hub.outbox.queued_bytes.load(r) as f64)],
        );
        counter(
            &mut o,
            "geostream_outbox_dropped_total",
            "Pushes dropped because an outbox was over budget.",
            &[("", hub.outbox.dropped.load(r) as f64)],
        );
        counter(
            &mut o,
            "geostream_outbox_coalesced_total",
            "Feature and tile pushes merged into a newer state of the same feature or tile.",
            &[("", hub.outbox.coalesced.load(r) as f64)],
        );
        counter(
            &mut o,
            "geostream_slow_consumer_disconnects_total",
            "Connections closed as slow consumers.",
            &[("", hub.outbox.slow_closed.load(r) as f64)],
        );
        for (name, help, v) in extra {
            gauge(&mut o, name, help, &[("", *v)]);
        }
        o
    }
}

fn header(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn series(o: &mut String, name: &str, s: &[(&str, f64)]) {
    for (labels, v) in s {
        if labels.is_empty() {
            let _ = writeln!(o, "{name} {v}");
        } else {
            let _ = writeln!(o, "{name}{{{labels}}} {v}");
        }
    }
}

pub(crate) fn counter(o: &mut String, name: &str, help: &str, s: &[(&str, f64)]) {
    header(o, name, help, "counter");
    series(o, name, s);
}

pub(crate) fn gauge(o: &mut String, name: &str, help: &str, s: &[(&str, f64)]) {
    header(o, name, help, "gauge");
    series(o, name, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        let mut l = LocalHistogram::default();
        l.observe(Duration::from_micros(50));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(100));
        m.deliver_latency.merge(&mut l);
        let text = m.render(&HubStats::default(), &[]);
        assert!(text.contains("geostream_publish_to_deliver_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("geostream_publish_to_deliver_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("geostream_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("geostream_publish_to_deliver_seconds_count{} 3"));
    }

    #[test]
    fn requests_by_method() {
        let m = Metrics::default();
        m.request("channel.publish", true);
        m.request("nonsense", false);
        let text = m.render(&HubStats::default(), &[]);
        assert!(
            text.contains("geostream_requests_total{method=\"channel.publish\",outcome=\"ok\"} 1")
        );
        assert!(text.contains("geostream_requests_total{method=\"other\",outcome=\"error\"} 1"));
    }
}
