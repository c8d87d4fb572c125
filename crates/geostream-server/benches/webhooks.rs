//! Webhook deliveries per second to local receivers.
//!
//! `cargo bench -p geostream-server --bench webhooks` queues `EVENTS` (default 20,000)
//! geofence-sized events (about 300 bytes of JSON) for each of `ENDPOINTS` (default 4) HTTP
//! receivers on 127.0.0.1, each answering 200 at once, and prints deliveries per second: each
//! signed (HMAC-SHA256), one request at a time per endpoint over a kept-alive connection, as
//! geostream delivers them. Loopback only; ends by itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use geostream_server::webhook::{WebhookConfig, WebhookTarget, Webhooks};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A receiver that answers 200 to everything and counts the requests.
async fn receiver(count: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let count = count.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/hook")
}

fn main() {
    let events = env("EVENTS", 20_000);
    let endpoints = env("ENDPOINTS", 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let count = Arc::new(AtomicU64::new(0));
        let hooks = Webhooks::new(WebhookConfig {
            queue: events + 1,
            ..WebhookConfig::default()
        });
        let mut targets = Vec::new();
        for _ in 0..endpoints {
            targets.push(WebhookTarget {
                url: receiver(count.clone()).await,
                secret: "a-bench-secret-of-some-length".into(),
            });
        }
        let body = |f: usize, i: usize| {
            Bytes::from(format!(
                r#"{{"fence":"f{f}","kind":"enter","layer":"ships","id":"36695{i:04}","version":{i},"seq":{i},"n":0,"time_ms":1593475265123,"position":[-74.0412,40.6683],"key":"f{f}:ships:{i}:0"}}"#
            ))
        };
        let start = Instant::now();
        for i in 0..events {
            for (f, t) in targets.iter().enumerate() {
                hooks.send(&format!("f{f}"), t, &format!("f{f}:ships:{i}:0"), body(f, i));
            }
        }
        let queued = start.elapsed();
        let total = (events * endpoints) as u64;
        while count.load(Ordering::Relaxed) < total {
            assert!(start.elapsed() < Duration::from_secs(600), "deliveries stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "webhooks: {total} events to {endpoints} endpoints delivered in {secs:.2} s = {:.0} deliveries/s ({:.0} per endpoint; queueing took {:.1} ms)",
            total as f64 / secs,
            total as f64 / secs / endpoints as f64,
            queued.as_secs_f64() * 1000.0
        );
    });
}
