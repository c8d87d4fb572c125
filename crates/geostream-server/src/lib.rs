//! The geostream server: WebSocket, SSE and HTTP transports over the hub and the broker.
//!
//! [`run`] takes a bound listener, a configuration and a shutdown future, which is what the
//! `geostream serve` binary and every integration test call (tests bind port 0).
#![warn(missing_docs)]

pub mod auth;
pub mod backends;
pub mod bridge;
pub mod config;
pub mod error;
pub mod features;
pub mod forward;
pub mod geofences;
pub mod guard;
pub mod http;
pub mod import;
pub mod layers;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod ogc;
pub mod remote;
pub mod replay;
pub mod sessions;
mod sse;
pub mod telemetry;
pub mod tile_routes;
pub mod tiles;
pub mod web;
pub mod webhook;
mod ws;

/// The WebSocket echo endpoint for conformance tests (feature `ws-echo`, off by default).
#[cfg(feature = "ws-echo")]
pub use ws::echo as ws_echo;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

pub use config::Config;
pub use node::Node;

/// Starts a node from `config` and serves it on `listener` until `shutdown` completes, then
/// drains: stops accepting, tells every client to reconnect (close code 1012), waits up to
/// `shutdown.drain_secs` for connections to finish, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let node = start(config).await?;
    serve(listener, node, shutdown).await;
    Ok(())
}

/// Starts a node from `config`: opens the store, connects to the broker (either failing is an
/// error naming the backend and the reason) and loads the demo basemap if no node has (see
/// [`web::seed_basemap`]). `geostream serve` calls this before it binds its listener, so a
/// node that cannot reach its backends exits before it says it is listening.
pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
    let node = Node::start(config).await?;
    web::seed_basemap(&node).await;
    Ok(node)
}

/// Serves an already started node.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let app = http::router(node.clone());
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "Listening.");
    tokio::pin!(shutdown);
    // After the signal: `/readyz` says 503 for `shutdown.unready_secs` while everything is
    // still served, so load balancers take the node out before the listener closes.
    let mut close_at: Option<tokio::time::Instant> = None;
    loop {
        let until_close = async {
            match close_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    node.metrics.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let app = app.clone();
                    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut().insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                        let mut app = app.clone();
                        async move { app.call(req).await }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc)).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::trace!(%peer, error = %e, "HTTP connection ended with an error.");
                        }
                    });
                }
                Err(e) => {
                    // Usually EMFILE: out of file descriptors. Back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown, if close_at.is_none() => {
                let wait = Duration::from_secs(node.config.shutdown.unready_secs);
                tracing::info!(secs = wait.as_secs(), "Shutting down: not ready for new clients.");
                node.sessions.set_unready();
                close_at = Some(tokio::time::Instant::now() + wait);
            }
            _ = until_close => break,
        }
    }
    drop(listener);
    tracing::info!("Shutting down: no longer accepting connections.");
    let drain = Duration::from_secs(node.config.shutdown.drain_secs);
    let both = async {
        tokio::join!(node.drain(drain), graceful.shutdown());
    };
    if tokio::time::timeout(drain + Duration::from_secs(1), both)
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections did not finish in time.");
    }
    tracing::info!("Stopped.");
}

/// Binds a listener with a deep accept backlog (many clients reconnecting at once after a
/// restart should not be refused).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
