//! The sessions open on this node, and the node's way out: unready (load balancers stop
//! sending new clients), then draining (every session told to reconnect elsewhere).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use geostream_core::error::CloseCode;
use geostream_hub::Session;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Open sessions by id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    empty: Notify,
    unready: AtomicBool,
    draining: AtomicBool,
}

impl Sessions {
    /// Registers a new session. While draining it is told to go at once (after whatever is
    /// queued for it).
    pub fn add(&self, s: &Arc<Session>) {
        self.open.lock().insert(s.id().clone(), s.clone());
        if self.is_draining() {
            s.outbox.close(CloseCode::ServiceRestart.into());
        }
    }

    /// Forgets a closed session.
    pub fn remove(&self, s: &Session) {
        let mut open = self.open.lock();
        open.remove(s.id());
        if open.is_empty() {
            self.empty.notify_waiters();
        }
    }

    /// Number of open sessions.
    pub fn count(&self) -> usize {
        self.open.lock().len()
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the node as no longer ready for new clients (shutdown has begun).
    pub fn set_unready(&self) {
        self.unready.store(true, Ordering::Release);
    }

    /// Whether the node wants new clients (what `/readyz` says).
    pub fn is_ready(&self) -> bool {
        !self.unready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Starts a graceful shutdown: every session is told to reconnect (after what is already
    /// queued for it), new sessions are refused. Returns once all sessions are gone or after
    /// `timeout`.
    pub async fn drain(&self, timeout: Duration) {
        self.set_unready();
        self.draining.store(true, Ordering::Release);
        let sessions: Vec<_> = self.open.lock().values().cloned().collect();
        tracing::info!(
            sessions = sessions.len(),
            "Draining: asking clients to reconnect."
        );
        for s in &sessions {
            s.outbox.close(CloseCode::ServiceRestart.into());
        }
        let wait = async {
            loop {
                let n = self.empty.notified();
                if self.open.lock().is_empty() {
                    return;
                }
                n.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(
                left = self.count(),
                "Drain timed out; closing the remaining connections."
            );
        }
    }
}
