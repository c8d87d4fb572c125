//! An HTTP(S) receiver for webhook tests: records every request (idempotency key,
//! signature, body) and answers what the test says; `down` closes its port, `up` opens it
//! again on the same address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    pub key: String,
    pub signature: String,
    pub content_type: String,
    pub body: Bytes,
    pub at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

/// What a receiver answers to its `n`th request (from 0) carrying `key`: a status and an
/// optional `Retry-After` value.
pub type Answer = dyn Fn(usize, &str) -> (u16, Option<&'static str>) + Send + Sync;

/// An HTTP receiver that records every request. `down` closes its port (and every open
/// connection), `up` listens on the same port again.
pub struct Receiver {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    answer: Arc<Answer>,
    /// When set, each request waits for a permit before it is answered.
    gate: Option<Arc<Semaphore>>,
    /// Serves https with the test certificate when set.
    tls: Option<TlsAcceptor>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(
        answer: impl Fn(usize, &str) -> (u16, Option<&'static str>) + Send + Sync + 'static,
        gate: Option<Arc<Semaphore>>,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiver {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            answer: Arc::new(answer),
            gate,
            tls: None,
            task: None,
        };
        r.serve(listener);
        r
    }

    /// The same receiver over https, with the certificate and key given (PEM).
    pub async fn start_tls(
        answer: impl Fn(usize, &str) -> (u16, Option<&'static str>) + Send + Sync + 'static,
        cert_pem: &str,
        key_pem: &str,
    ) -> Receiver {
        let mut r = Receiver::start(answer, None).await;
        r.down().await;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        r.tls = Some(TlsAcceptor::from(Arc::new(config)));
        r.up().await;
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/geo?src=test", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }

    fn serve(&mut self, listener: TcpListener) {
        let (hits, answer, gate) = (self.hits.clone(), self.answer.clone(), self.gate.clone());
        let tls = self.tls.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task when the receiver goes down, which aborts (and closes)
            // every connection, kept-alive ones included.
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (hits, answer, gate) = (hits.clone(), answer.clone(), gate.clone());
                let tls = tls.clone();
                conns.spawn(async move {
                    match tls {
                        // A client that refuses the certificate ends the handshake.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve_connection(stream, hits, answer, gate).await;
                            }
                        }
                        None => serve_connection(stream, hits, answer, gate).await,
                    }
                });
            }
        }));
    }

    /// Closes the port: connections are refused until `up`.
    pub async fn down(&mut self) {
        let task = self.task.take().unwrap();
        task.abort();
        let _ = task.await;
    }

    pub async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

pub async fn serve_connection<T>(
    io: T,
    hits: Arc<Mutex<Vec<Hit>>>,
    answer: Arc<Answer>,
    gate: Option<Arc<Semaphore>>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (hits, answer, gate) = (hits.clone(), answer.clone(), gate.clone());
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let (key, signature, content_type) = (
                header("idempotency-key"),
                header("x-geostream-signature"),
                header("content-type"),
            );
            assert_eq!(req.method(), hyper::Method::POST);
            assert_eq!(req.uri().path(), "/hooks/geo");
            assert_eq!(req.uri().query(), Some("src=test"));
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
            let n = hits.lock().len();
            let (status, retry_after) = answer(n, &key);
            hits.lock().push(Hit {
                key,
                signature,
                content_type,
                body,
                at: Instant::now(),
                status,
            });
            let mut resp = Response::builder().status(status);
            if let Some(r) = retry_after {
                resp = resp.header("retry-after", r);
            }
            let text = if status == 400 { "no such fence" } else { "" };
            Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(text))).unwrap())
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Recomputes the signature of `hit` with `secret` independently of the server's code, and
/// checks its timestamp is recent.
pub fn assert_signed(hit: &Hit, secret: &str) {
    let (t, v1) = hit
        .signature
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap_or_else(|| panic!("bad signature header {:?}", hit.signature));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&hit.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "signature of {}", hit.key);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t: i64 = t.parse().unwrap();
    assert!((now - t).abs() < 60_000, "timestamp {t} vs now {now}");
    assert_eq!(hit.content_type, "application/json");
}
