//! Webhook deliveries against real HTTP receivers on 127.0.0.1:0: retries through 5xx answers
//! and an outage (the receiver's port refusing connections) with every event delivered at
//! least once, in order, with signatures that verify; a healthy endpoint served promptly
//! meanwhile; a full queue dropping and counting; 4xx not retried; `Retry-After`; giving up;
//! URL checks.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::receiver::{Hit, Receiver, assert_signed};
use geostream_server::webhook::{DeliveryState, WebhookConfig, WebhookTarget, Webhooks};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a test waits for a condition before failing.
const WAIT: Duration = Duration::from_secs(10);

/// A certificate authority made for this test (EC P-256, valid until 2126), and a
/// certificate it signed for `localhost` and 127.0.0.1, with its key.
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBrzCCAVWgAwIBAgIUD0ZRyhhse9z00/+kWxNfaICjrYYwCgYIKoZIzj0EAwIw
JDEiMCAGA1UEAwwZZ2Vvc3RyZWFtIHdlYmhvb2sgdGVzdCBDQTAgFw0yNjEyMDYx
MDQ0MjNaGA8yMTI2MTExMjEwNDQyM1owJDEiMCAGA1UEAwwZZ2Vvc3RyZWFtIHdl
Ymhvb2sgdGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNKcNkJcdb7O
fvvcA+Ek7P0+H1RyX8IVA5UYAtXxvQc4Vvow4m2QSIj1YSeKPMoLb8dVpxbNYBih
VR75EMEzivajYzBhMB0GA1UdDgQWBBSLPqJ9rDGKjuF40y7q6ZVnlie5HDAfBgNV
HSMEGDAWgBSLPqJ9rDGKjuF40y7q6ZVnlie5HDAPBgNVHRMBAf8EBTADAQH/MA4G
A1UdDwEB/wQEAwICBDAKBggqhkjOPQQDAgNIADBFAiEAmzKYdWTnkUKKaLnVYLz+
Sp1Bf1WcXz+Uk/Jf2S+w41kCIF2+AqH7Z0T1ifeoMl5noomUz+gxFQ+qnoQegGVJ
k4ce
-----END CERTIFICATE-----
";
const LOCALHOST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBzDCCAXKgAwIBAgIUMwK5KZOiA7ZfXnpkqZaZ+SNuLKwwCgYIKoZIzj0EAwIw
JDEiMCAGA1UEAwwZZ2Vvc3RyZWFtIHdlYmhvb2sgdGVzdCBDQTAgFw0yNjEyMDYx
MDQ0MjNaGA8yMTI2MTExMjEwNDQyM1owFDESMBAGA1UEAwwJbG9jYWxob3N0MFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE/bv5KUwD7hZT+alncI3onWy+r0WuMlY4
MjMlatsnDoXTCMPhNO4TTp0j1mQ+vcxlvAwm7Ea1MXgTIt4PGNYC5aOBjzCBjDAJ
BgNVHRMEAjAAMA4GA1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAa
BgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwHQYDVR0OBBYEFJ+9liZqENY6DEDE
TrKZA5Iv1EslMB8GA1UdIwQYMBaAFIs+on2sMYqO4XjTLurplWeWJ7kcMAoGCCqG
SM49BAMCA0gAMEUCIQCsZHVq5WdnlNRUc1mEhLgrtcvKQmUGJbAj5Ixc36r89QIg
bRECh8ithT3r4Brz4g5WeLEVeXtravPpO3jYJfXsEvA=
-----END CERTIFICATE-----
";
const LOCALHOST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgodwhKSPjM6hvwFbt
/75VgR8Fy0XmxSo5ln8QXm6UA5mhRANCAAT9u/kpTAPuFlP5qWdwjeidbL6vRa4y
VjgyMyVq2ycOhdMIw+E07hNOnSPWZD69zGW8DCbsRrUxeBMi3g8Y1gLl
-----END PRIVATE KEY-----
";

fn fast_retries() -> WebhookConfig {
    WebhookConfig {
        queue: 1000,
        timeout_ms: 1000,
        retry_initial_ms: 20,
        retry_max_ms: 200,
        give_up_after_secs: 60,
        allow_private: true,
        ca_file: Default::default(),
    }
}

fn target(url: String, secret: &str) -> WebhookTarget {
    WebhookTarget {
        url,
        secret: secret.into(),
    }
}

fn body(fence: &str, seq: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"fence":"{fence}","kind":"enter","feature":"v{seq}","seq":{seq}}}"#
    ))
}

/// Waits until `done(state of fence)`, failing after [`WAIT`].
async fn until(hooks: &Webhooks, fence: &str, done: impl Fn(&DeliveryState) -> bool) {
    let start = Instant::now();
    loop {
        let s = hooks.state(fence);
        if done(&s) {
            return;
        }
        assert!(start.elapsed() < WAIT, "{fence}: timed out in state {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The keys in the order they first reached the receiver.
fn first_arrivals(hits: &[Hit]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.key.clone()))
        .map(|h| h.key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_through_errors_and_an_outage_while_other_endpoints_stay_prompt() {
    const FAILS: usize = 4;
    let mut flaky = Receiver::start(|n, _| (if n < FAILS { 500 } else { 200 }, None), None).await;
    let healthy = Receiver::start(|_, _| (204, None), None).await;
    let hooks = Webhooks::new(fast_retries());
    let a = target(flaky.url(), "secret-a");
    let b = target(healthy.url(), "secret-b");
    let keys_a: Vec<String> = (0..40).map(|i| format!("a:{i}")).collect();

    // The first events meet FAILS answers 500, then go through.
    for (i, key) in keys_a[..20].iter().enumerate() {
        hooks.send("fa", &a, key, body("fa", i));
    }
    until(&hooks, "fa", |s| s.delivered == 20).await;
    let s = hooks.state("fa");
    assert_eq!(s.failed_attempts, FAILS as u64, "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap().starts_with("HTTP 500"),
        "{s:?}"
    );

    // The receiver goes down with events in its queue; meanwhile another fence's endpoint
    // gets each event within a second of it being sent.
    flaky.down().await;
    let outage = Instant::now();
    for (i, key) in keys_a[20..].iter().enumerate() {
        hooks.send("fa", &a, key, body("fa", 20 + i));
    }
    let mut sent_b = Vec::new();
    for i in 0..20 {
        let key = format!("b:{i}");
        sent_b.push((key.clone(), Instant::now()));
        hooks.send("fb", &b, &key, body("fb", i));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(&hooks, "fb", |s| s.delivered == 20).await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(outage.elapsed())).await;
    let s = hooks.state("fa");
    assert_eq!(
        s.delivered, 20,
        "nothing can arrive while the port is closed: {s:?}"
    );
    assert_eq!(s.queued, 20, "{s:?}");
    assert!(
        s.failed_attempts >= FAILS as u64 + 3,
        "retries continued: {s:?}"
    );
    let error = s.last_error.unwrap();
    assert!(
        error.contains("connect") || error.contains("request failed"),
        "{error}"
    );

    let hits_b = healthy.hits();
    assert_eq!(
        hits_b.iter().map(|h| h.key.clone()).collect::<Vec<_>>(),
        sent_b.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );
    let mut worst = Duration::ZERO;
    for (hit, (_, sent)) in hits_b.iter().zip(&sent_b) {
        assert_signed(hit, "secret-b");
        worst = worst.max(hit.at.duration_since(*sent));
    }
    assert!(
        worst < Duration::from_secs(1),
        "slowest healthy delivery {worst:?}"
    );
    println!("healthy endpoint, slowest delivery during the outage: {worst:?}");

    // Back up: the rest arrives.
    flaky.up().await;
    until(&hooks, "fa", |s| s.delivered == 40).await;
    let s = hooks.state("fa");
    assert_eq!((s.queued, s.dropped, s.gave_up), (0, 0, 0), "{s:?}");
    assert!(s.last_delivered_ms.is_some());
    let hits_a = flaky.hits();
    println!(
        "flaky endpoint: {} requests for 40 events, {} failed attempts, all delivered {:?} after the 2 s outage began",
        hits_a.len(),
        s.failed_attempts,
        outage.elapsed()
    );
    for hit in &hits_a {
        assert_signed(hit, "secret-a");
        let seq: usize = hit.key[2..].parse().unwrap();
        assert_eq!(hit.body, body("fa", seq), "the body sent with {}", hit.key);
    }
    // Exactly the sent keys were accepted, and they first arrived in the order sent.
    let mut accepted: Vec<String> = hits_a
        .iter()
        .filter(|h| h.status == 200)
        .map(|h| h.key.clone())
        .collect();
    assert_eq!(first_arrivals(&hits_a), keys_a);
    accepted.dedup();
    assert_eq!(accepted, keys_a);
    assert_eq!(hooks.state("fb").failed_attempts, 0);

    let mut metrics = String::new();
    hooks.render_metrics(&mut metrics);
    for line in [
        "# TYPE geostream_webhook_delivered_total counter",
        "geostream_webhook_delivered_total{fence=\"fa\"} 40",
        "geostream_webhook_delivered_total{fence=\"fb\"} 20",
        &format!(
            "geostream_webhook_failed_attempts_total{{fence=\"fa\"}} {}",
            s.failed_attempts
        ),
        "geostream_webhook_dropped_total{fence=\"fa\"} 0",
        "geostream_webhook_gave_up_total{fence=\"fa\"} 0",
        "# TYPE geostream_webhook_queued gauge",
        "geostream_webhook_queued{fence=\"fb\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} not in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_new_events_and_counts_them() {
    // The receiver holds every request until the test lets it answer.
    let gate = Arc::new(Semaphore::new(0));
    let receiver = Receiver::start(|_, _| (200, None), Some(gate.clone())).await;
    let hooks = Webhooks::new(WebhookConfig {
        queue: 5,
        ..fast_retries()
    });
    let t = target(receiver.url(), "k");
    let start = Instant::now();
    for i in 0..8 {
        hooks.send("full", &t, &format!("e{i}"), body("full", i));
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "send never waits"
    );
    let s = hooks.state("full");
    assert_eq!((s.queued, s.dropped, s.delivered), (5, 3, 0), "{s:?}");
    assert_eq!(s.last_error.as_deref(), Some("queue full"));
    assert!(s.last_error_ms.is_some());
    let mut metrics = String::new();
    hooks.render_metrics(&mut metrics);
    assert!(metrics.contains("geostream_webhook_dropped_total{fence=\"full\"} 3\n"));
    assert!(metrics.contains("geostream_webhook_queued{fence=\"full\"} 5\n"));

    // Removing the fence forgets its state at once, but what was queued is still delivered
    // (a closing fence's last `exit` events are among them).
    hooks.remove("full");
    assert_eq!(hooks.state("full"), DeliveryState::default());
    let mut metrics = String::new();
    hooks.render_metrics(&mut metrics);
    assert!(!metrics.contains("fence=\"full\""), "{metrics}");
    gate.add_permits(100);
    let start = Instant::now();
    while receiver.hits().len() < 5 {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keys: Vec<String> = receiver.hits().into_iter().map(|h| h.key).collect();
    assert_eq!(keys, ["e0", "e1", "e2", "e3", "e4"]);
    assert_eq!(hooks.state("full"), DeliveryState::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_event_is_not_retried() {
    let receiver =
        Receiver::start(|_, key| (if key == "bad" { 400 } else { 200 }, None), None).await;
    let hooks = Webhooks::new(fast_retries());
    let t = target(receiver.url(), "k");
    hooks.send("f", &t, "bad", body("f", 0));
    hooks.send("f", &t, "good", body("f", 1));
    until(&hooks, "f", |s| s.delivered == 1 && s.gave_up == 1).await;
    // Several retry intervals: a retry would have happened by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys: Vec<String> = receiver.hits().into_iter().map(|h| h.key).collect();
    assert_eq!(keys, ["bad", "good"]);
    let s = hooks.state("f");
    assert_eq!((s.failed_attempts, s.queued), (1, 0), "{s:?}");
    assert_eq!(
        s.last_error.as_deref(),
        Some("HTTP 400 Bad Request: no such fence")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_respected_up_to_the_cap() {
    // 429 with Retry-After: 1 s, far above the backoff (at most 10 ms here).
    let receiver = Receiver::start(|n, _| (if n == 0 { 429 } else { 200 }, Some("1")), None).await;
    let hooks = Webhooks::new(WebhookConfig {
        retry_initial_ms: 10,
        retry_max_ms: 5000,
        ..fast_retries()
    });
    hooks.send("f", &target(receiver.url(), "k"), "x", body("f", 0));
    until(&hooks, "f", |s| s.delivered == 1).await;
    let hits = receiver.hits();
    let gap = hits[1].at.duration_since(hits[0].at);
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_secs(3),
        "{gap:?}"
    );
    assert_eq!(hooks.state("f").failed_attempts, 1);

    // 503 with Retry-After: an hour, capped by retry_max_ms.
    let receiver =
        Receiver::start(|n, _| (if n == 0 { 503 } else { 200 }, Some("3600")), None).await;
    let hooks = Webhooks::new(WebhookConfig {
        retry_initial_ms: 10,
        retry_max_ms: 300,
        ..fast_retries()
    });
    hooks.send("f", &target(receiver.url(), "k"), "x", body("f", 0));
    until(&hooks, "f", |s| s.delivered == 1).await;
    let hits = receiver.hits();
    let gap = hits[1].at.duration_since(hits[0].at);
    assert!(
        gap >= Duration::from_millis(250) && gap < Duration::from_secs(2),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_given_up_after_give_up_after_secs() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/geo", closed.local_addr().unwrap());
    drop(closed);
    let hooks = Webhooks::new(WebhookConfig {
        give_up_after_secs: 1,
        ..fast_retries()
    });
    let start = Instant::now();
    hooks.send("f", &target(url.clone(), "k"), "x", body("f", 0));
    until(&hooks, "f", |s| s.gave_up == 1).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let s = hooks.state("f");
    assert_eq!((s.delivered, s.queued, s.dropped), (0, 0, 0), "{s:?}");
    assert!(s.failed_attempts >= 3, "{s:?}");
    let error = s.last_error.unwrap();
    assert!(error.starts_with("gave up after "), "{error}");
    assert!(error.contains("cannot connect"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_checked() {
    let open = Webhooks::new(WebhookConfig::default());
    for ok in [
        "http://127.0.0.1:8080/hook?x=1",
        "http://[::1]/hook",
        "http://localhost:9000",
        "http://receiver.example.com/geo/events",
        "https://receiver.example.com:8443/geo/events",
        "https://[2001:db8::1]/geo",
    ] {
        assert_eq!(open.check_url(ok), Ok(()), "{ok}");
    }
    for (bad, why) in [
        ("ftp://receiver.example.com/hook", "http:// or https://"),
        ("receiver.example.com/hook", "http"),
        ("http://user:pw@receiver.example.com/hook", "password"),
        ("http:///hook", ""),
        ("http://receiver.example.com/hook#frag", "fragment"),
        ("", ""),
    ] {
        let error = open.check_url(bad).expect_err(bad);
        assert!(error.contains(why), "{bad}: {error}");
    }

    let public_only = Webhooks::new(WebhookConfig {
        allow_private: false,
        ..fast_retries()
    });
    assert_eq!(
        public_only.check_url("http://receiver.example.com/x"),
        Ok(())
    );
    for private in [
        "http://localhost/x",
        "http://127.0.0.1:8080/x",
        "http://10.0.0.7/x",
        "http://169.254.169.254/latest",
        "http://[::1]:80/x",
        "http://[fd00::1]/x",
    ] {
        let error = public_only.check_url(private).expect_err(private);
        assert!(error.contains("allow_private"), "{error}");
    }

    // A name that resolves to loopback is refused when connecting too, so a URL that passed
    // the check (or a name whose address changed) cannot reach a private receiver.
    let receiver = Receiver::start(|_, _| (200, None), None).await;
    let url = format!(
        "http://localhost:{}/hooks/geo?src=test",
        receiver.addr.port()
    );
    public_only.send("f", &target(url, "k"), "x", body("f", 0));
    until(&public_only, "f", |s| s.failed_attempts >= 2).await;
    let error = public_only.state("f").last_error.unwrap();
    assert!(error.contains("non-public"), "{error}");
    assert!(receiver.hits().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receivers_are_checked_against_trusted_authorities() {
    let receiver = Receiver::start_tls(|_, _| (200, None), LOCALHOST_CERT, LOCALHOST_KEY).await;
    let url = format!(
        "https://localhost:{}/hooks/geo?src=test",
        receiver.addr.port()
    );
    let ca_file =
        std::env::temp_dir().join(format!("geostream-webhook-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, TEST_CA).unwrap();
    let config = WebhookConfig {
        ca_file: ca_file.clone(),
        ..fast_retries()
    };
    assert_eq!(config.validate(), Ok(()));
    let hooks = Webhooks::new(config);
    assert_eq!(hooks.check_url(&url), Ok(()));
    for i in 0..3 {
        hooks.send(
            "tls",
            &target(url.clone(), "secret-tls"),
            &format!("t{i}"),
            body("tls", i),
        );
    }
    until(&hooks, "tls", |s| s.delivered == 3).await;
    std::fs::remove_file(&ca_file).unwrap();
    let hits = receiver.hits();
    assert_eq!(first_arrivals(&hits), ["t0", "t1", "t2"]);
    for hit in &hits {
        assert_signed(hit, "secret-tls");
    }
    assert_eq!(hooks.state("tls").failed_attempts, 0);

    // Without the test authority the certificate is refused, and nothing is sent.
    let strict = Webhooks::new(fast_retries());
    strict.send("tls", &target(url, "secret-tls"), "t9", body("tls", 9));
    until(&strict, "tls", |s| s.failed_attempts >= 2).await;
    let error = strict.state("tls").last_error.unwrap();
    assert!(
        error.contains("TLS handshake") && error.contains("certificate"),
        "{error}"
    );
    assert_eq!(receiver.hits().len(), 3);

    // A missing or empty ca_file is a configuration error.
    for bad in [
        std::path::PathBuf::from("/nonexistent/ca.pem"),
        std::env::temp_dir(),
    ] {
        let error = WebhookConfig {
            ca_file: bad.clone(),
            ..fast_retries()
        }
        .validate()
        .expect_err("a bad ca_file");
        assert!(error.contains("geofences.webhooks.ca_file"), "{error}");
    }
}
