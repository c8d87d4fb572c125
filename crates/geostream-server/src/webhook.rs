//! Webhook deliveries of geofence events: signed HTTP POSTs with retries, one bounded queue
//! and one task per endpoint.
//!
//! Detection calls [`Webhooks::send`], which only appends to the endpoint's queue (or drops the
//! event and counts it when the queue is full), so a slow or dead receiver never slows
//! detection or the deliveries to other endpoints. Each endpoint (target URL) has its own task,
//! started by the first event and ending once its queue has stayed empty for a while
//! ([`IDLE_EXIT`]); the task delivers the queue strictly in order, one request at a time, over
//! one kept-alive connection, so the events of one feature reach the receiver in the order
//! they were detected (a retried event holds back the ones after it).
//!
//! Delivery is at least once: an event is retried until the receiver answers 2xx, rejects it
//! for good (a 4xx other than 408 and 429), or it has waited `give_up_after_secs`. A request
//! whose answer was lost is sent again, so receivers dedupe on the `Idempotency-Key` header.
//! Queues live in memory: events still queued when the process stops are not delivered by
//! this component (the fence's channel keeps them for a backend to read).
//!
//! # Verifying a delivery
//!
//! Every request is `POST <url>` (`http://`, or `https://` with the certificate checked
//! against the system's authorities and `ca_file`'s) with `Content-Type: application/json`,
//! the event as the body, and two headers:
//!
//! - `Idempotency-Key: <key>`: the same for every attempt of one event; a receiver that has
//!   already processed a key answers 2xx again and does nothing.
//! - `X-Geostream-Signature: t=<unix ms>,v1=<hex>`: `<t>` is the time of this attempt in
//!   milliseconds since 1970-01-01 UTC, and `<hex>` is the lowercase hexadecimal
//!   HMAC-SHA256, keyed with the fence's secret (its UTF-8 bytes), of the bytes
//!   `<t>.<body>`: the decimal timestamp exactly as it appears in the header, a dot, and the
//!   raw request body exactly as received (before any JSON parsing).
//!
//! To verify: split the header on `,`, take the `t=` and `v1=` parts (ignore other parts,
//! later versions may add some), compute the HMAC over `t + "." + body`, compare it with
//! `v1` in constant time, and reject the request when `t` is further than a few minutes from
//! your clock (so a captured request cannot be replayed later). Each retry is signed afresh,
//! with a new `t`. In Python:
//!
//! ```text
//! import hashlib, hmac, time
//!
//! def verify(secret: bytes, header: str, body: bytes, tolerance_ms: int = 300_000) -> bool:
//!     parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
//!     t, v1 = parts.get("t", ""), parts.get("v1", "")
//!     if not t.isdigit() or abs(time.time() * 1000 - int(t)) > tolerance_ms:
//!         return False
//!     mac = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return hmac.compare_digest(mac, v1)
//! ```
//!
//! # Answers and retries
//!
//! - 2xx: delivered.
//! - 408, 429, 5xx, a timeout (`timeout_ms` for connecting, sending and reading the answer)
//!   or a connection error: retried after an exponential backoff with full jitter (a random
//!   wait between 0 and `retry_initial_ms * 2^(attempt - 1)`, capped at `retry_max_ms`), or
//!   after the answer's `Retry-After` seconds when it has one (also capped at `retry_max_ms`).
//!   Once the event has waited `give_up_after_secs` since it was queued, it is given up.
//! - Any other status (other 4xx, redirects, which are not followed): the event is given up at
//!   once, since sending it again would get the same answer.
//!
//! Every event sent is eventually counted once as delivered, dropped (queue full), or given up;
//! `queued` counts the ones still waiting (or in flight).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::header::{CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// How long an endpoint's task waits for a new event after its queue has emptied before it
/// ends (and closes its connection); the next event starts a new one.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);

/// At most one warning per endpoint and kind (queue full, delivery failing) in this interval,
/// so a dead receiver fills the log with one line every 10 s, not one per event.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The most of an answer's body read (and the first 200 bytes kept in `last_error`): enough
/// for a receiver's error message, and a bound on what a hostile receiver can make us buffer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-geostream-signature";
/// The idempotency key header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Webhook delivery settings (`[geofences.webhooks]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Events waiting per endpoint (target URL), the one being delivered included; when the
    /// queue is full a new event is dropped, counted in `geostream_webhook_dropped_total` and
    /// logged. Default: 10000.
    pub queue: usize,
    /// Milliseconds one attempt may take: connecting, sending the event and reading the
    /// answer. Default: 10000.
    pub timeout_ms: u64,
    /// Upper bound of the wait before the first retry, in milliseconds; it doubles with every
    /// further retry (the wait is random between 0 and the bound). Default: 1000.
    pub retry_initial_ms: u64,
    /// Cap of the wait between two attempts (also of a receiver's `Retry-After`), in
    /// milliseconds. Default: 300000 (5 minutes).
    pub retry_max_ms: u64,
    /// Seconds after which an event still not delivered is given up (counted in
    /// `geostream_webhook_gave_up_total`). Default: 3900 (65 minutes, so a receiver down for
    /// an hour loses nothing).
    pub give_up_after_secs: u64,
    /// Whether a webhook may reach loopback, private, link-local and other non-public
    /// addresses. On by default because a single-node setup usually runs its receiver on
    /// localhost; turn it off when untrusted users create fences, so they cannot make the
    /// server call into its own network (the URL's host and every address it resolves to are
    /// checked). Default: true.
    pub allow_private: bool,
    /// PEM file of certificate authorities trusted for `https://` webhooks besides the
    /// system's (for receivers with certificates of a private authority). Default: empty.
    pub ca_file: PathBuf,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            queue: 10_000,
            timeout_ms: 10_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            give_up_after_secs: 3_900,
            allow_private: true,
            ca_file: PathBuf::new(),
        }
    }
}

impl WebhookConfig {
    /// Checks values that parse but make no sense; the message names the key under
    /// `geofences.webhooks`.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue == 0 {
            return Err("geofences.webhooks.queue must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("geofences.webhooks.timeout_ms must be at least 1".into());
        }
        // A zero first wait would retry a failing receiver in a tight loop.
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err(
                "geofences.webhooks.retry_initial_ms must be at least 1 and at most retry_max_ms"
                    .into(),
            );
        }
        // Read now so a wrong path fails at startup, not at the first https delivery.
        ca_certificates(&self.ca_file)?;
        Ok(())
    }
}

/// Where one fence's events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `http://` or `https://` URL the events are POSTed to (checked by
    /// [`Webhooks::check_url`]).
    pub url: String,
    /// The fence's secret, the key of the HMAC-SHA256 signature.
    pub secret: String,
}

/// Delivery state of one fence, as shown by the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// Events the receiver accepted (2xx).
    pub delivered: u64,
    /// Attempts that failed (error, timeout or non-2xx answer), retried or not.
    pub failed_attempts: u64,
    /// Events waiting in the queue or being delivered.
    pub queued: u64,
    /// Events dropped because the endpoint's queue was full.
    pub dropped: u64,
    /// Events given up: rejected for good by the receiver, or still failing after
    /// `give_up_after_secs`.
    pub gave_up: u64,
    /// The last failure, such as `HTTP 503 Service Unavailable`, `queue full`.
    pub last_error: Option<String>,
    /// When `last_error` happened, in milliseconds since 1970-01-01 UTC.
    pub last_error_ms: Option<u64>,
    /// When an event was last delivered, in milliseconds since 1970-01-01 UTC.
    pub last_delivered_ms: Option<u64>,
}

/// The webhook deliveries of a node. Cheap to clone (all clones share the queues); the
/// endpoint tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    runtime: tokio::runtime::Handle,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    fences: Mutex<HashMap<String, Arc<FenceStats>>>,
    /// Never sent on: dropping it (with `Inner`) tells every endpoint task to stop.
    _stop: watch::Sender<()>,
    stopped: watch::Receiver<()>,
}

/// What endpoint tasks share.
struct Settings {
    config: WebhookConfig,
    /// Built at the first `https://` connection (loading the system's certificate
    /// authorities reads files), then shared by every endpoint; an error (an unreadable
    /// `ca_file`) fails each https attempt with its message.
    tls: OnceLock<Result<TlsConnector, String>>,
}

impl Settings {
    fn tls(&self) -> Result<&TlsConnector, String> {
        self.tls
            .get_or_init(|| tls_connector(&self.config.ca_file))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Counters of one fence. Queued events hold an `Arc` to it, so events of a removed fence
/// still delivered update a detached copy, not a new fence of the same name.
struct FenceStats {
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
    gave_up: AtomicU64,
    last: Mutex<LastTimes>,
}

#[derive(Default)]
struct LastTimes {
    error: Option<String>,
    error_ms: Option<u64>,
    delivered_ms: Option<u64>,
}

impl FenceStats {
    fn new() -> Self {
        FenceStats {
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            last: Mutex::new(LastTimes::default()),
        }
    }

    fn error(&self, message: String) {
        let mut last = self.last.lock();
        last.error = Some(message);
        last.error_ms = Some(unix_ms());
    }
}

struct Endpoint {
    url: String,
    target: Target,
    queue: Mutex<Queue>,
    /// Wakes the task when an event is queued.
    wake: Notify,
    /// When the last warning of a failing delivery was logged.
    failure_warned: Mutex<Option<Instant>>,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Whether the task holds an event it took from `jobs` (it counts against the bound).
    in_flight: bool,
    /// Whether a task is running for this endpoint.
    running: bool,
    drop_warned: Option<Instant>,
    dropped_since_warn: u64,
}

struct Job {
    fence: String,
    stats: Arc<FenceStats>,
    secret: Box<[u8]>,
    key: HeaderValue,
    body: Bytes,
    queued_at: Instant,
}

/// The parts of a target URL a request needs, parsed once per endpoint.
struct Target {
    /// Host name or IP address (IPv6 without brackets).
    host: String,
    /// The name the server's certificate must hold, for `https://`.
    tls: Option<ServerName<'static>>,
    port: u16,
    /// `Host` header value.
    authority: HeaderValue,
    /// Origin-form request target (`/path?query`).
    path: Uri,
}

impl Webhooks {
    /// A delivery component with no endpoint yet. Must be called inside a Tokio runtime:
    /// endpoint tasks run on it, so [`Webhooks::send`] can be called from any thread.
    pub fn new(config: WebhookConfig) -> Self {
        let (stop, stopped) = watch::channel(());
        Webhooks {
            inner: Arc::new(Inner {
                settings: Arc::new(Settings {
                    config,
                    tls: OnceLock::new(),
                }),
                runtime: tokio::runtime::Handle::current(),
                endpoints: Mutex::new(HashMap::new()),
                fences: Mutex::new(HashMap::new()),
                _stop: stop,
                stopped,
            }),
        }
    }

    /// Checks a fence's webhook URL: `http://` or `https://`, a host, no user name or
    /// password, no fragment. With `allow_private = false`, `localhost` and literal loopback, private,
    /// link-local and other non-public addresses are refused too (names are checked again
    /// when they are resolved, at each connection).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let target = Target::parse(url)?;
        if !self.inner.settings.config.allow_private {
            let host = target.host.to_ascii_lowercase();
            let private = match host.parse::<IpAddr>() {
                Ok(ip) => !is_public(ip),
                Err(_) => host == "localhost" || host.ends_with(".localhost"),
            };
            if private {
                return Err(format!(
                    "webhook URL {url:?}: {} is not a public address (geofences.webhooks.allow_private is false)",
                    target.host
                ));
            }
        }
        Ok(())
    }

    /// Queues one event for `fence`'s target: never blocks on the network and never waits
    /// for a slow endpoint. `key` is sent as the `Idempotency-Key` header, `body` (JSON) as
    /// the request body. When the endpoint's queue is full, the event is dropped and counted.
    pub fn send(&self, fence: &str, target: &WebhookTarget, key: &str, body: Bytes) {
        let inner = &self.inner;
        let stats = inner.stats(fence);
        let key = match HeaderValue::from_str(key) {
            Ok(k) => k,
            Err(_) => {
                // A key is made by the fence engine, so this is a bug there; the event
                // cannot be sent without one, and the count keeps the sum exact.
                stats.gave_up.fetch_add(1, Ordering::Relaxed);
                stats.error(format!("invalid idempotency key {key:?}"));
                tracing::warn!(fence, key, "webhook event with an invalid idempotency key");
                return;
            }
        };
        let mut endpoints = inner.endpoints.lock();
        let endpoint = match endpoints.get(&target.url) {
            Some(e) => e.clone(),
            None => match Target::parse(&target.url) {
                Ok(t) => {
                    let e = Arc::new(Endpoint {
                        url: target.url.clone(),
                        target: t,
                        queue: Mutex::new(Queue {
                            jobs: VecDeque::new(),
                            in_flight: false,
                            running: false,
                            drop_warned: None,
                            dropped_since_warn: 0,
                        }),
                        wake: Notify::new(),
                        failure_warned: Mutex::new(None),
                    });
                    endpoints.insert(target.url.clone(), e.clone());
                    e
                }
                Err(e) => {
                    drop(endpoints);
                    stats.gave_up.fetch_add(1, Ordering::Relaxed);
                    stats.error(e.clone());
                    tracing::warn!(fence, error = e, "webhook event for an invalid URL");
                    return;
                }
            },
        };
        // The endpoints map stays locked while the event is queued, so the task cannot end
        // and remove the endpoint between this lookup and the push (see `Inner::idle`).
        let mut queue = endpoint.queue.lock();
        if queue.jobs.len() + usize::from(queue.in_flight) >= inner.settings.config.queue {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            stats.error("queue full".into());
            queue.dropped_since_warn += 1;
            let now = Instant::now();
            if queue
                .drop_warned
                .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
            {
                tracing::warn!(
                    url = %endpoint.url,
                    fence,
                    dropped = queue.dropped_since_warn,
                    queue = inner.settings.config.queue,
                    "webhook queue full: dropping events (counted in geostream_webhook_dropped_total)"
                );
                queue.drop_warned = Some(now);
                queue.dropped_since_warn = 0;
            }
            return;
        }
        stats.queued.fetch_add(1, Ordering::Relaxed);
        queue.jobs.push_back(Job {
            fence: fence.to_owned(),
            stats,
            secret: target.secret.as_bytes().into(),
            key,
            body,
            queued_at: Instant::now(),
        });
        if queue.running {
            endpoint.wake.notify_one();
        } else {
            queue.running = true;
            let inner = Arc::downgrade(&self.inner);
            let settings = self.inner.settings.clone();
            let mut stopped = self.inner.stopped.clone();
            let endpoint = endpoint.clone();
            self.inner.runtime.spawn(async move {
                // Ends with the last `Webhooks` handle (the sender inside it is dropped).
                tokio::select! {
                    _ = stopped.changed() => {}
                    () = run_endpoint(inner, settings, endpoint) => {}
                }
            });
        }
    }

    /// The delivery state of `fence` (all zeros for a fence with no event yet).
    pub fn state(&self, fence: &str) -> DeliveryState {
        match self.inner.fences.lock().get(fence) {
            Some(s) => s.snapshot(),
            None => DeliveryState::default(),
        }
    }

    /// Forgets a deleted fence: its state and metric series go at once. Events already
    /// queued are still delivered (with their retries), since they include the `exit`s a
    /// closing fence sends for the features still inside it, which receivers need to close
    /// their state; events sent after this start a new state.
    pub fn remove(&self, fence: &str) {
        self.inner.fences.lock().remove(fence);
    }

    /// Appends the webhook metrics in the Prometheus text format, one series per fence.
    pub fn render_metrics(&self, out: &mut String) {
        let mut fences: Vec<(String, DeliveryState)> = self
            .inner
            .fences
            .lock()
            .iter()
            .map(|(name, s)| (label_value(name), s.snapshot()))
            .collect();
        fences.sort_by(|a, b| a.0.cmp(&b.0));
        // Name, type, help, value.
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&DeliveryState) -> u64,
        );
        let families: [Family; 5] = [
            (
                "geostream_webhook_delivered_total",
                "counter",
                "Geofence events a webhook receiver accepted (2xx).",
                |s| s.delivered,
            ),
            (
                "geostream_webhook_failed_attempts_total",
                "counter",
                "Webhook attempts that failed (connection error, timeout or non-2xx answer).",
                |s| s.failed_attempts,
            ),
            (
                "geostream_webhook_dropped_total",
                "counter",
                "Geofence events dropped because the webhook endpoint's queue was full.",
                |s| s.dropped,
            ),
            (
                "geostream_webhook_gave_up_total",
                "counter",
                "Geofence events given up: rejected by the receiver (4xx) or still failing after geofences.webhooks.give_up_after_secs.",
                |s| s.gave_up,
            ),
            (
                "geostream_webhook_queued",
                "gauge",
                "Geofence events waiting for (or in) delivery to a webhook.",
                |s| s.queued,
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (fence, state) in &fences {
                let _ = writeln!(out, "{name}{{fence=\"{fence}\"}} {}", value(state));
            }
        }
    }
}

impl Inner {
    fn stats(&self, fence: &str) -> Arc<FenceStats> {
        let mut fences = self.fences.lock();
        if let Some(s) = fences.get(fence) {
            return s.clone();
        }
        let s = Arc::new(FenceStats::new());
        fences.insert(fence.to_owned(), s.clone());
        s
    }

    /// Called by an endpoint's task when it has waited [`IDLE_EXIT`] with nothing to do:
    /// true (and the endpoint is forgotten) if the queue is still empty, false if an event
    /// arrived meanwhile. Locks the map before the queue, like `send`, so an event is either
    /// queued before this look (and delivered) or finds no endpoint and starts a new one.
    fn idle(&self, endpoint: &Arc<Endpoint>) -> bool {
        let mut endpoints = self.endpoints.lock();
        let mut queue = endpoint.queue.lock();
        if !queue.jobs.is_empty() {
            return false;
        }
        queue.running = false;
        if endpoints
            .get(&endpoint.url)
            .is_some_and(|e| Arc::ptr_eq(e, endpoint))
        {
            endpoints.remove(&endpoint.url);
        }
        true
    }
}

impl FenceStats {
    fn snapshot(&self) -> DeliveryState {
        let r = Ordering::Relaxed;
        let last = self.last.lock();
        DeliveryState {
            delivered: self.delivered.load(r),
            failed_attempts: self.failed_attempts.load(r),
            queued: self.queued.load(r),
            dropped: self.dropped.load(r),
            gave_up: self.gave_up.load(r),
            last_error: last.error.clone(),
            last_error_ms: last.error_ms,
            last_delivered_ms: last.delivered_ms,
        }
    }
}

/// The task of one endpoint: delivers its queue in order until it stays empty for
/// [`IDLE_EXIT`].
async fn run_endpoint(inner: Weak<Inner>, settings: Arc<Settings>, endpoint: Arc<Endpoint>) {
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let job = {
            let mut queue = endpoint.queue.lock();
            let job = queue.jobs.pop_front();
            queue.in_flight = job.is_some();
            job
        };
        let Some(job) = job else {
            if tokio::time::timeout(IDLE_EXIT, endpoint.wake.notified())
                .await
                .is_ok()
            {
                continue;
            }
            match inner.upgrade() {
                Some(inner) if !inner.idle(&endpoint) => continue,
                _ => return,
            }
        };
        deliver(&settings, &endpoint, &mut conn, &job).await;
        job.stats.queued.fetch_sub(1, Ordering::Relaxed);
        endpoint.queue.lock().in_flight = false;
    }
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    /// Worth another attempt; with the receiver's `Retry-After`, if any.
    Retry(String, Option<Duration>),
    /// Sending the same event again would fail the same way.
    Permanent(String),
}

/// Delivers one event: attempts until it is delivered, rejected, or too old.
async fn deliver(
    settings: &Settings,
    endpoint: &Endpoint,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    job: &Job,
) {
    let config = &settings.config;
    let give_up_at = job.queued_at + Duration::from_secs(config.give_up_after_secs);
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let outcome =
            match tokio::time::timeout(timeout, attempt(settings, endpoint, conn, job)).await {
                Ok(o) => o,
                Err(_) => {
                    // The connection is in an unknown state (a request half sent, or an answer
                    // half read): start afresh.
                    *conn = None;
                    Outcome::Retry(format!("timed out after {} ms", config.timeout_ms), None)
                }
            };
        let stats = &job.stats;
        let (error, retry_after) = match outcome {
            Outcome::Delivered => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats.last.lock().delivered_ms = Some(unix_ms());
                return;
            }
            Outcome::Permanent(error) => {
                stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                stats.gave_up.fetch_add(1, Ordering::Relaxed);
                warn_failure(endpoint, job, &error, "rejected, not retried");
                stats.error(error);
                return;
            }
            Outcome::Retry(error, retry_after) => (error, retry_after),
        };
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if now >= give_up_at {
            let error = format!("gave up after {attempts} attempts: {error}");
            warn_failure(endpoint, job, &error, "given up");
            stats.error(error);
            stats.gave_up.fetch_add(1, Ordering::Relaxed);
            return;
        }
        warn_failure(endpoint, job, &error, "will retry");
        stats.error(error);
        let max = Duration::from_millis(config.retry_max_ms);
        let wait = match retry_after {
            Some(d) => d.min(max),
            None => backoff(
                attempts,
                config.retry_initial_ms,
                config.retry_max_ms,
                &mut rand::rng(),
            ),
        };
        // One last attempt at the deadline rather than none after it.
        tokio::time::sleep(wait.min(give_up_at - now)).await;
    }
}

/// The wait before retry number `retry` (1 for the first): full jitter, uniform between 0
/// and `min(max_ms, initial_ms * 2^(retry - 1))`, so many events failing together do not
/// come back together.
fn backoff(retry: u32, initial_ms: u64, max_ms: u64, rng: &mut impl Rng) -> Duration {
    let doublings = retry.saturating_sub(1).min(63);
    let bound = initial_ms.saturating_mul(1u64 << doublings).min(max_ms);
    Duration::from_millis(rng.random_range(0..=bound))
}

fn warn_failure(endpoint: &Endpoint, job: &Job, error: &str, what: &str) {
    let now = Instant::now();
    let mut warned = endpoint.failure_warned.lock();
    if warned.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
        *warned = Some(now);
        drop(warned);
        tracing::warn!(
            url = %endpoint.url,
            fence = %job.fence,
            key = ?job.key,
            error,
            "webhook delivery failed ({what}); further failures of this endpoint within 10 s are not logged"
        );
    } else {
        tracing::debug!(
            url = %endpoint.url,
            fence = %job.fence,
            error,
            "webhook delivery failed ({what})"
        );
    }
}

/// One attempt, on the kept-alive connection if there is one. A request that fails on a
/// reused connection is sent once more on a new one before counting as a failure: the
/// receiver may have closed the idle connection just as the request went out.
async fn attempt(
    settings: &Settings,
    endpoint: &Endpoint,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    job: &Job,
) -> Outcome {
    let mut fresh = false;
    loop {
        if let Some(s) = conn.as_mut()
            && s.ready().await.is_err()
        {
            *conn = None;
        }
        let sender = match conn {
            Some(s) => s,
            None => match connect(&endpoint.target, settings).await {
                Ok(s) => {
                    fresh = true;
                    conn.insert(s)
                }
                Err(e) => {
                    *conn = None;
                    return Outcome::Retry(e, None);
                }
            },
        };
        let answer = match sender.send_request(request(endpoint, job)).await {
            Ok(a) => a,
            Err(e) => {
                *conn = None;
                if fresh {
                    return Outcome::Retry(format!("request failed: {e}"), None);
                }
                continue;
            }
        };
        let status = answer.status();
        let retry_after = answer
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.to_str().ok()?));
        // Read the answer so the connection can carry the next request; a body too large or
        // broken only costs the connection.
        let body = match Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                *conn = None;
                Bytes::new()
            }
        };
        return classify(status, retry_after, &body);
    }
}

fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let mut error = format!("HTTP {status}");
    let text: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if !text.is_empty() {
        error.push_str(": ");
        error.push_str(text);
    }
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        Outcome::Retry(error, retry_after)
    } else {
        if status.is_redirection() {
            error.push_str(" (redirects are not followed)");
        }
        Outcome::Permanent(error)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by webhook receivers in
/// practice, and is ignored: the backoff applies).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn request(endpoint: &Endpoint, job: &Job) -> Request<Full<Bytes>> {
    let t = unix_ms();
    let signature = signature(&job.secret, t, &job.body);
    let mut request = Request::post(endpoint.target.path.clone())
        .body(Full::new(job.body.clone()))
        .expect("a request from parsed parts");
    let headers = request.headers_mut();
    headers.insert(HOST, endpoint.target.authority.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("geostream/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(IDEMPOTENCY_HEADER, job.key.clone());
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::try_from(signature).expect("ASCII digits and hex"),
    );
    request
}

/// The `X-Geostream-Signature` value for `body` signed at `t` (unix ms) with `secret`:
/// `t=<t>,v1=<hex of HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut t_text = itoa::Buffer::new();
    let t_text = t_text.format(t);
    format!(
        "t={t_text},v1={}",
        hmac_sha256_hex(secret, &[t_text.as_bytes(), b".", body])
    )
}

fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    hex
}

/// Resolves and connects (trying each address in turn), then starts TLS for `https://`,
/// then an HTTP/1.1 connection.
async fn connect(target: &Target, settings: &Settings) -> Result<SendRequest<Full<Bytes>>, String> {
    let allow_private = settings.config.allow_private;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| allow_private || is_public(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(if addrs.is_empty() {
            format!("{} resolves to no address", target.host)
        } else {
            format!(
                "{} resolves only to non-public addresses (geofences.webhooks.allow_private is false)",
                target.host
            )
        });
    }
    let mut error = String::new();
    for addr in allowed {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                error = format!("cannot connect to {addr}: {e}");
                continue;
            }
        };
        // Events are small and sent one at a time: waiting to coalesce them only adds
        // latency.
        let _ = stream.set_nodelay(true);
        let Some(server_name) = &target.tls else {
            return http1(stream, addr).await;
        };
        let stream = settings
            .tls()?
            .connect(server_name.clone(), stream)
            .await
            .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
        return http1(stream, addr).await;
    }
    Err(error)
}

async fn http1<T>(io: T, addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}

/// The TLS client of https webhooks: the system's certificate authorities, plus those of
/// `ca_file` (PEM) if set; TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
fn tls_connector(ca_file: &Path) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "cannot load some of the system's certificate authorities (for https webhooks)");
    }
    roots.add_parsable_certificates(native.certs);
    for cert in ca_certificates(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("geofences.webhooks.ca_file {ca_file:?}: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The certificates of `ca_file` (none when it is empty).
fn ca_certificates(ca_file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    if ca_file.as_os_str().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |e: &dyn std::fmt::Display| format!("geofences.webhooks.ca_file {ca_file:?}: {e}");
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(certs)
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let bad = |why: &str| Err(format!("webhook URL {url:?}: {why}"));
        if url.contains('#') {
            return bad("a fragment (#...) is not sent to a server");
        }
        let uri: Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                return bad(&format!(
                    "not a URL ({e}); expected http(s)://host[:port][/path]"
                ));
            }
        };
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return bad("must start with http:// or https://"),
        };
        let Some(authority) = uri.authority() else {
            return bad("no host");
        };
        if authority.as_str().contains('@') {
            return bad("a user name or password in the URL is not supported");
        }
        let host = authority.host();
        if host.is_empty() {
            return bad("no host");
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = match uri.path_and_query() {
            Some(p) if !p.as_str().is_empty() => p.as_str(),
            _ => "/",
        };
        let tls = if https {
            match ServerName::try_from(host.clone()) {
                Ok(name) => Some(name),
                Err(_) => return bad("the host is not a valid TLS server name"),
            }
        } else {
            None
        };
        Ok(Target {
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            tls,
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|_| format!("webhook URL {url:?}: bad host"))?,
            path: path
                .parse()
                .map_err(|_| format!("webhook URL {url:?}: bad path"))?,
        })
    }
}

/// Whether `ip` is an ordinary public unicast address: not loopback, private (RFC 1918,
/// IPv6 unique local), link-local, shared (RFC 6598), unspecified, broadcast, multicast or
/// documentation; IPv4-mapped IPv6 addresses are judged as IPv4.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2, split across parts as `signature` feeds it.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &[b"what do ya want ", b"", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_signs_timestamp_dot_body() {
        let body = br#"{"fence":"depot","kind":"enter"}"#;
        let sig = signature(b"s3cret", 1_700_000_000_123, body);
        let mut message = b"1700000000123.".to_vec();
        message.extend_from_slice(body);
        assert_eq!(
            sig,
            format!(
                "t=1700000000123,v1={}",
                hmac_sha256_hex(b"s3cret", &[&message])
            )
        );
        let hex = sig.split_once(",v1=").unwrap().1;
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // Another secret, timestamp or body gives another signature.
        assert_ne!(sig, signature(b"s3cret!", 1_700_000_000_123, body));
        assert_ne!(sig, signature(b"s3cret", 1_700_000_000_124, body));
        assert_ne!(sig, signature(b"s3cret", 1_700_000_000_123, b"{}"));
    }

    #[test]
    fn backoff_stays_within_its_doubling_bound_and_spreads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for retry in 1..=40u32 {
            let bound = (100u64 << (retry - 1).min(40)).min(30_000);
            let waits: Vec<u64> = (0..500)
                .map(|_| backoff(retry, 100, 30_000, &mut rng).as_millis() as u64)
                .collect();
            assert!(waits.iter().all(|&w| w <= bound), "retry {retry}");
            // Full jitter: spread over the whole range, not bunched at the bound.
            assert!(*waits.iter().min().unwrap() < bound / 10, "retry {retry}");
            assert!(
                *waits.iter().max().unwrap() > bound * 9 / 10,
                "retry {retry}"
            );
        }
        // No overflow for absurd retry counts or settings.
        assert!(backoff(u32::MAX, u64::MAX / 2, 60_000, &mut rng) <= Duration::from_secs(60));
        assert!(backoff(1_000, 1_000, 5_000, &mut rng) <= Duration::from_millis(5_000));
    }

    #[test]
    fn answers_are_classified() {
        let retry = |code: u16| {
            matches!(
                classify(StatusCode::from_u16(code).unwrap(), None, b""),
                Outcome::Retry(..)
            )
        };
        let permanent = |code: u16| {
            matches!(
                classify(StatusCode::from_u16(code).unwrap(), None, b""),
                Outcome::Permanent(..)
            )
        };
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, None, b""),
            Outcome::Delivered
        ));
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retry(code), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(permanent(code), "{code}");
        }
        let Outcome::Permanent(e) =
            classify(StatusCode::BAD_REQUEST, None, b"bad\nevent\x00 json  ")
        else {
            panic!()
        };
        assert_eq!(e, "HTTP 400 Bad Request: bad event  json");
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
    }

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "2a00:1450:4007:80e::200e", "::ffff:1.1.1.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = WebhookConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.give_up_after_secs > 3600);
        let parsed: WebhookConfig = toml::from_str("queue = 5").unwrap();
        assert_eq!(
            parsed,
            WebhookConfig {
                queue: 5,
                ..c.clone()
            }
        );
        assert!(toml::from_str::<WebhookConfig>("queue_size = 5").is_err());
        assert!(
            WebhookConfig {
                queue: 0,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            WebhookConfig {
                retry_initial_ms: 0,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            WebhookConfig {
                retry_max_ms: 10,
                ..c
            }
            .validate()
            .is_err()
        );
    }
}
