//! `fanout`: subscribers on one channel, one publisher; every delivery is checked for order
//! and timed. Also `slow` (some subscribers stop reading) and `rtt` (request round trips).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::{self, ServerFrame};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::conn::{self, Rpc, Target, Ws};
use crate::stats::{Hist, Phase, now_ns, round};

/// Marks a benchmark payload inside any frame: `GSB` + 16 hex digits of sequence number + 16
/// hex digits of send time (ns), then `.` padding.
const MARK: &[u8] = b"GSB";

/// The searcher for [`MARK`], built once: building one for every received frame (what
/// `memmem::find` does) cost more of the load generator's CPU than the search itself.
static MARK_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(MARK));

/// A payload of `size` bytes (at least 35) carrying `seq` and the send time.
pub(crate) fn body(seq: u64, t_ns: u64, size: usize) -> String {
    let mut s = format!("GSB{seq:016x}{t_ns:016x}");
    while s.len() < size {
        s.push('.');
    }
    s
}

/// Finds a payload in a (decompressed) frame: its sequence number and send time.
pub(crate) fn scan(frame: &[u8]) -> Option<(u64, u64)> {
    let at = MARK_FINDER.find(frame)? + MARK.len();
    let hex = frame.get(at..at + 32)?;
    let s = std::str::from_utf8(hex).ok()?;
    Some((
        u64::from_str_radix(&s[..16], 16).ok()?,
        u64::from_str_radix(&s[16..], 16).ok()?,
    ))
}

/// Parameters of a fan-out run.
pub(crate) struct FanoutParams {
    pub(crate) subs: usize,
    pub(crate) stalled: usize,
    pub(crate) size: usize,
    /// Messages per second; 0 = closed loop with `window` messages in flight.
    pub(crate) rate: f64,
    pub(crate) window: u64,
    pub(crate) count: u64,
    pub(crate) duration: f64,
    pub(crate) drain: f64,
    pub(crate) channel: String,
    pub(crate) concurrency: usize,
    pub(crate) server_pid: Option<String>,
}

struct Shared {
    fast_subs: u32,
    ring: Vec<AtomicU32>,
    completed: AtomicU64,
    progress: Notify,
    sent: AtomicU64,
    done_sending: AtomicBool,
    hist: Hist,
    delivered: AtomicU64,
    gaps: AtomicU64,
    dups: AtomicU64,
    gap_pushes: AtomicU64,
    verified: AtomicU64,
    verify_failed: AtomicU64,
    ended_early: AtomicU64,
    last_recv_ns: AtomicU64,
    per_sub_min: AtomicU64,
    per_sub_max: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 10 {
            v.push(e);
        }
    }
}

async fn subscribe(mut rpc: Rpc, channel: &str) -> Result<Ws, String> {
    rpc.call(
        "channel.subscribe",
        &json!({"channel": channel}),
        Duration::from_secs(30),
    )
    .await?;
    Ok(rpc.ws)
}

/// One subscriber's loop: reads until everything sent has arrived or the deadline passes.
async fn subscriber(
    mut ws: Ws,
    sh: Arc<Shared>,
    enc: codec::Encoding,
    deadline_ns: Arc<AtomicU64>,
) {
    let mut next = 1u64;
    let mut got = 0u64;
    let mut frames = 0u64;
    loop {
        if sh.done_sending.load(Ordering::Acquire) && next > sh.sent.load(Ordering::Acquire) {
            break;
        }
        let left = deadline_ns.load(Ordering::Acquire).saturating_sub(now_ns());
        if left == 0 {
            break;
        }
        let wait = Duration::from_nanos(left.min(200_000_000));
        let b = match tokio::time::timeout(wait, conn::next_data(&mut ws)).await {
            Err(_) => continue,
            Ok(None) => {
                sh.ended_early.fetch_add(1, Ordering::Relaxed);
                sh.error("subscriber: connection closed".into());
                break;
            }
            Ok(Some(Err(e))) => {
                sh.ended_early.fetch_add(1, Ordering::Relaxed);
                sh.error(format!("subscriber: {e}"));
                break;
            }
            Ok(Some(Ok(b))) => b,
        };
        let t_recv = now_ns();
        frames += 1;
        let Some((seq, t_sent)) = scan(&b) else {
            // Not a message push: a gap notice, or something unexpected.
            match codec::decode_server_frame(enc, &b) {
                Ok(ServerFrame::Notification { method, .. }) if method == "gap" => {
                    sh.gap_pushes.fetch_add(1, Ordering::Relaxed);
                }
                other => sh.error(format!("subscriber: unexpected frame {other:?}")),
            }
            continue;
        };
        // Every 1024th push (and the first) is decoded in full with the codec, to check that
        // the fast scan reads real `message` pushes carrying exactly the published payload.
        if frames % 1024 == 1 {
            let ok = match codec::decode_server_frame(enc, &b) {
                Ok(ServerFrame::Notification { method, params }) => {
                    method == "message"
                        && params["data"]
                            .as_str()
                            .and_then(|d| scan(d.as_bytes()))
                            .is_some_and(|x| x == (seq, t_sent))
                }
                _ => false,
            };
            if ok {
                sh.verified.fetch_add(1, Ordering::Relaxed);
            } else {
                sh.verify_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if seq < next {
            sh.dups.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if seq > next {
            sh.gaps.fetch_add(seq - next, Ordering::Relaxed);
        }
        next = seq + 1;
        got += 1;
        sh.hist.record(t_recv.saturating_sub(t_sent));
        sh.delivered.fetch_add(1, Ordering::Relaxed);
        sh.last_recv_ns.fetch_max(t_recv, Ordering::Relaxed);
        let slot = &sh.ring[(seq % sh.ring.len() as u64) as usize];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 == sh.fast_subs {
            slot.store(0, Ordering::Release);
            sh.completed.fetch_add(1, Ordering::AcqRel);
            sh.progress.notify_one();
        }
    }
    sh.per_sub_min.fetch_min(got, Ordering::Relaxed);
    sh.per_sub_max.fetch_max(got, Ordering::Relaxed);
    // Close politely; the server may already be gone.
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
}

/// Runs a fan-out; returns the result object.
pub(crate) async fn run(target: Target, p: FanoutParams) -> Result<Value, String> {
    let total = p.subs + p.stalled;
    let t_setup = std::time::Instant::now();
    let (conns, errors) =
        conn::connect_many(target, total + 1, 0, p.concurrency, Duration::from_secs(30)).await;
    let mut conns = conns.into_iter();
    let publisher = conns
        .next()
        .flatten()
        .ok_or_else(|| format!("publisher could not connect: {errors:?}"))?;
    let mut subscribed = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    let mut failed = 0usize;
    let mut connected: Vec<Ws> = conns.flatten().collect();
    failed += total - connected.len();
    // Subscribe in batches of `concurrency` so set-up stays bounded.
    while !connected.is_empty() || !set.is_empty() {
        while set.len() < p.concurrency.max(1) {
            let Some(ws) = connected.pop() else { break };
            let ch = p.channel.clone();
            set.spawn(async move { subscribe(Rpc::new(ws, target.enc), &ch).await });
        }
        match set.join_next().await {
            Some(Ok(Ok(ws))) => subscribed.push(ws),
            Some(_) => failed += 1,
            None => break,
        }
    }
    if subscribed.len() < total {
        return Err(format!(
            "only {} of {total} subscribers are ready ({failed} failed; {errors:?})",
            subscribed.len()
        ));
    }
    // The stalled subscribers stay subscribed but are never read.
    let stalled: Vec<Ws> = subscribed.split_off(p.subs);
    let setup_s = t_setup.elapsed().as_secs_f64();

    let window = p.window.max(1);
    let sh = Arc::new(Shared {
        fast_subs: u32::try_from(p.subs).unwrap_or(u32::MAX),
        ring: (0..(window * 4).max(1024))
            .map(|_| AtomicU32::new(0))
            .collect(),
        completed: AtomicU64::new(0),
        progress: Notify::new(),
        sent: AtomicU64::new(0),
        done_sending: AtomicBool::new(false),
        hist: Hist::new(),
        delivered: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        dups: AtomicU64::new(0),
        gap_pushes: AtomicU64::new(0),
        verified: AtomicU64::new(0),
        verify_failed: AtomicU64::new(0),
        ended_early: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        per_sub_min: AtomicU64::new(u64::MAX),
        per_sub_max: AtomicU64::new(0),
        errors: std::sync::Mutex::new(Vec::new()),
    });
    let publish_ns = (p.duration * 1e9) as u64;
    let drain_ns = (p.drain * 1e9) as u64;
    let t0 = now_ns();
    let deadline = Arc::new(AtomicU64::new(t0 + publish_ns + drain_ns));
    let phase = Phase::start(p.server_pid.as_deref());
    let mut subs = tokio::task::JoinSet::new();
    for ws in subscribed {
        subs.spawn(subscriber(ws, sh.clone(), target.enc, deadline.clone()));
    }

    // Publisher: the sink sends, a reader drains the responses.
    let (mut sink, mut stream) = publisher.split();
    let acks = Arc::new(AtomicU64::new(0));
    let pub_errors = Arc::new(AtomicU64::new(0));
    let reader = {
        let acks = acks.clone();
        let pub_errors = pub_errors.clone();
        let enc = target.enc;
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Some(b) = conn::frame_bytes(m) else {
                    continue;
                };
                match codec::decode_server_frame(enc, &b) {
                    Ok(ServerFrame::Response { .. }) => acks.fetch_add(1, Ordering::Relaxed),
                    _ => pub_errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let mut stalled_pub = false;
    let mut max_lag_ms = 0f64;
    let mut seq = 0u64;
    let params_channel = p.channel.clone();
    while seq < p.count {
        let now = now_ns();
        if now - t0 >= publish_ns {
            break;
        }
        if p.rate > 0.0 {
            let due = t0 + ((seq as f64) / p.rate * 1e9) as u64;
            if due > now {
                tokio::time::sleep(Duration::from_nanos(due - now)).await;
            } else {
                max_lag_ms = max_lag_ms.max((now - due) as f64 / 1e6);
            }
        } else {
            let mut waited = 0;
            while seq - sh.completed.load(Ordering::Acquire) >= window {
                let n = sh.progress.notified();
                if seq - sh.completed.load(Ordering::Acquire) < window {
                    break;
                }
                if tokio::time::timeout(Duration::from_millis(100), n)
                    .await
                    .is_err()
                {
                    waited += 1;
                    if waited > 30 {
                        break;
                    }
                }
            }
            if waited > 30 {
                stalled_pub = true;
                break;
            }
        }
        seq += 1;
        let b = body(seq, now_ns(), p.size);
        let frame = conn::request(
            target.enc,
            i64::try_from(seq).unwrap_or(0),
            "channel.publish",
            &json!({"channel": params_channel, "data": b}),
        );
        if let Err(e) = sink.send(frame).await {
            sh.error(format!("publisher: {e}"));
            break;
        }
        sh.sent.store(seq, Ordering::Release);
    }
    let publish_s = (now_ns() - t0) as f64 / 1e9;
    sh.done_sending.store(true, Ordering::Release);
    deadline.store(now_ns() + drain_ns, Ordering::Release);
    while subs.join_next().await.is_some() {}
    let server_phase = phase.end(0.0);
    drop(stalled);
    reader.abort();
    let _ = sink.close().await;

    let sent = sh.sent.load(Ordering::Acquire);
    let delivered = sh.delivered.load(Ordering::Relaxed);
    let expected = sent * p.subs as u64;
    let span_s = (sh.last_recv_ns.load(Ordering::Relaxed).saturating_sub(t0)) as f64 / 1e9;
    let errors = sh.errors.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(json!({
        "subs": p.subs,
        "stalled_subs": p.stalled,
        "size": p.size,
        "rate_target": p.rate,
        "window": if p.rate > 0.0 { Value::Null } else { json!(window) },
        "setup_s": round(setup_s, 2),
        "sent": sent,
        "publish_s": round(publish_s, 2),
        "publish_rate": round(sent as f64 / publish_s.max(1e-9), 1),
        "publisher_acks": acks.load(Ordering::Relaxed),
        "publisher_max_lag_ms": if p.rate > 0.0 { json!(round(max_lag_ms, 2)) } else { Value::Null },
        "publisher_stalled": stalled_pub,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "gaps": sh.gaps.load(Ordering::Relaxed),
        "gap_pushes": sh.gap_pushes.load(Ordering::Relaxed),
        "dups_or_reordered": sh.dups.load(Ordering::Relaxed),
        "subs_ended_early": sh.ended_early.load(Ordering::Relaxed),
        "per_sub_min": sh.per_sub_min.load(Ordering::Relaxed),
        "per_sub_max": sh.per_sub_max.load(Ordering::Relaxed),
        "verified_pushes": sh.verified.load(Ordering::Relaxed),
        "verify_failed": sh.verify_failed.load(Ordering::Relaxed),
        "delivered_per_s": round(delivered as f64 / span_s.max(1e-9), 0),
        "latency_ms": sh.hist.summary_ms(),
        "errors": errors,
        "phase": server_phase,
    }))
}

/// Parameters of a round-trip run.
pub(crate) struct RttParams {
    pub(crate) clients: usize,
    pub(crate) size: usize,
    pub(crate) duration: f64,
    pub(crate) concurrency: usize,
    pub(crate) server_pid: Option<String>,
}

/// `rtt`: each client keeps one `ping` in flight for the whole duration.
pub(crate) async fn rtt(target: Target, p: RttParams) -> Result<Value, String> {
    let (conns, errors) =
        conn::connect_many(target, p.clients, 0, p.concurrency, Duration::from_secs(30)).await;
    let conns: Vec<Ws> = conns.into_iter().flatten().collect();
    if conns.len() < p.clients {
        return Err(format!(
            "only {} clients connected: {errors:?}",
            conns.len()
        ));
    }
    let hist = Arc::new(Hist::new());
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let end = now_ns() + (p.duration * 1e9) as u64;
    let phase = Phase::start(p.server_pid.as_deref());
    let t0 = now_ns();
    let mut set = tokio::task::JoinSet::new();
    for ws in conns {
        let (hist, done, failures) = (hist.clone(), done.clone(), failures.clone());
        let size = p.size;
        set.spawn(async move {
            let mut rpc = Rpc::new(ws, target.enc);
            let mut seq = 0u64;
            while now_ns() < end {
                seq += 1;
                let t = now_ns();
                let data = body(seq, t, size);
                match rpc
                    .call("ping", &json!({"data": data}), Duration::from_secs(10))
                    .await
                {
                    Ok(r) if r["data"].as_str() == Some(data.as_str()) => {
                        hist.record(now_ns() - t);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let _ = rpc.ws.close(None).await;
        });
    }
    while set.join_next().await.is_some() {}
    let wall = (now_ns() - t0) as f64 / 1e9;
    let ph = phase.end(0.0);
    let n = done.load(Ordering::Relaxed);
    Ok(json!({
        "clients": p.clients,
        "size": p.size,
        "round_trips": n,
        "failures": failures.load(Ordering::Relaxed),
        "round_trips_per_s": round(n as f64 / wall, 0),
        "latency_ms": hist.summary_ms(),
        "phase": ph,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_found_inside_frames() {
        let b = body(42, 123_456_789, 64);
        assert_eq!(b.len(), 64);
        let frame = format!(
            r#"{{"jsonrpc":"2.0","method":"message","params":{{"sub":1,"channel":"c","offset":9,"data":"{b}"}}}}"#
        );
        assert_eq!(scan(frame.as_bytes()), Some((42, 123_456_789)));
        assert_eq!(scan(b"no payload"), None);
        assert_eq!(scan(b"GSB0123"), None, "a truncated payload is not read");
    }
}
