//! The outbox (edits sent until the server answers, exactly once thanks to their operation
//! ids) and the locks this client holds (taken again after a reconnect, or reported lost).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use geostream_core::api::{
    self, EditResult, FeatureBatchResult, FeatureLockParams, FeatureLockResult, LockPush,
};
use geostream_core::codec::Params;
use geostream_core::error::{ErrorCode, RpcError};
use tokio::sync::oneshot;

use super::{Driver, EditWaiter, Hook, Origin, decode, now_ms};
use crate::edit::{Edit, OutboxEntry};
use crate::error::{ClientError, Result};
use crate::events::ClientEvent;

/// A lock this client holds.
pub(super) struct HeldLock {
    ttl_ms: Option<u64>,
    until_ms: u64,
}

/// Server errors worth retrying an edit after.
fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InternalError
            | ErrorCode::Unavailable
            | ErrorCode::Timeout
            | ErrorCode::RateLimited
    )
}

impl Driver {
    /// Puts an edit in the outbox (and its file) and sends it.
    pub(super) fn submit(
        &mut self,
        edit: Edit,
        reply: oneshot::Sender<Result<(String, EditWaiter)>>,
    ) {
        let op_id = uuid::Uuid::now_v7().to_string();
        let entry = OutboxEntry {
            op_id: op_id.clone(),
            edit,
        };
        self.outbox.entries.push_back(entry.clone());
        if let Err(e) = self.outbox.save(&self.shared.client_id) {
            self.outbox.entries.pop_back();
            let _ = reply.send(Err(e));
            return;
        }
        self.shared
            .outbox_len
            .store(self.outbox.entries.len(), Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(op_id.clone(), tx);
        let _ = reply.send(Ok((op_id, rx)));
        self.send_edit(&entry);
    }

    fn send_edit(&mut self, e: &OutboxEntry) {
        if !self.online {
            return;
        }
        self.inflight.insert(e.op_id.clone());
        self.send_internal(
            e.edit.method(),
            &e.edit.params(&e.op_id),
            Origin::Edit {
                op_id: e.op_id.clone(),
            },
        );
    }

    /// Sends every edit of the outbox not waiting for an answer (after a reconnect, or when
    /// it is time to retry).
    pub(super) fn resend_edits(&mut self) {
        if !self.online {
            return;
        }
        let entries: Vec<OutboxEntry> = self.outbox.entries.iter().cloned().collect();
        for e in entries {
            if !self.inflight.contains(&e.op_id) {
                self.send_edit(&e);
            }
        }
    }

    pub(super) fn on_edit_result(
        &mut self,
        op_id: String,
        r: std::result::Result<Params<'_>, RpcError>,
    ) {
        self.inflight.remove(&op_id);
        let Some(pos) = self.outbox.entries.iter().position(|e| e.op_id == op_id) else {
            return;
        };
        let outcome = match r {
            Err(e) if is_transient(e.code) => {
                self.edit_retries += 1;
                let wait = self
                    .opts
                    .backoff
                    .delay(self.edit_retries.min(16), &mut self.rng);
                tracing::debug!(op_id, error = %e, "An edit will be retried.");
                self.edit_retry_at = Some(Instant::now() + wait.max(Duration::from_millis(50)));
                return;
            }
            Err(e) => Err(ClientError::from_rpc(e)),
            Ok(result) => {
                if matches!(self.outbox.entries[pos].edit, Edit::Batch { .. }) {
                    decode::<FeatureBatchResult>(&result).map(|b| b.results)
                } else {
                    decode::<EditResult>(&result).map(|r| vec![r])
                }
            }
        };
        self.edit_retries = 0;
        let Some(entry) = self.outbox.entries.remove(pos) else {
            return;
        };
        if let Err(e) = self.outbox.save(&self.shared.client_id) {
            tracing::warn!(error = %e, "Could not update the outbox file.");
        }
        self.shared
            .outbox_len
            .store(self.outbox.entries.len(), Ordering::Relaxed);
        match &outcome {
            Ok(results) => {
                for result in results {
                    self.shared.emit(ClientEvent::EditApplied {
                        op_id: op_id.clone(),
                        result: result.clone(),
                    });
                }
            }
            Err(error) => self.shared.emit(ClientEvent::EditFailed {
                op_id: op_id.clone(),
                edit: entry.edit,
                error: error.clone(),
            }),
        }
        if let Some(w) = self.waiters.remove(&op_id) {
            let _ = w.send(outcome);
        }
    }

    /// What a user request's answer means for the client's own state.
    pub(super) fn after_hook(&mut self, hook: Hook, result: &Params<'_>) {
        match hook {
            Hook::None => {}
            Hook::Lock { ttl_ms } => {
                if let Ok(l) = decode::<FeatureLockResult>(result) {
                    for li in l.locks {
                        self.locks.insert(
                            (li.layer, li.id),
                            HeldLock {
                                ttl_ms,
                                until_ms: li.until_ms,
                            },
                        );
                    }
                }
            }
            Hook::Unlock { layer, ids } => {
                for id in ids {
                    let k = (layer.clone(), id);
                    self.locks.remove(&k);
                    self.unlocking.remove(&k);
                }
            }
            Hook::Cursor(c) => self.remember_cursor(c),
        }
    }

    /// A user request failed: an unlock did not happen.
    pub(super) fn hook_failed(&mut self, hook: Hook) {
        if let Hook::Unlock { layer, ids } = hook {
            for i in ids {
                self.unlocking.remove(&(layer.clone(), i));
            }
        }
    }

    /// Takes the locks held before the disconnect again (they may have survived on the
    /// server within its grace period; locking again extends them).
    pub(super) fn relock(&mut self) {
        let now = now_ms();
        let mut by_layer: BTreeMap<String, (Option<u64>, Vec<String>)> = BTreeMap::new();
        let mut expired = Vec::new();
        for ((layer, id), l) in &self.locks {
            if l.until_ms <= now {
                expired.push((layer.clone(), id.clone()));
            } else {
                let e = by_layer
                    .entry(layer.clone())
                    .or_insert((l.ttl_ms, Vec::new()));
                e.1.push(id.clone());
            }
        }
        for (layer, id) in expired {
            self.locks.remove(&(layer.clone(), id.clone()));
            self.shared.emit(ClientEvent::LockLost {
                layer,
                id,
                reason: "expired while disconnected".into(),
            });
        }
        for (layer, (ttl, ids)) in by_layer {
            self.send_relock(layer, ids, ttl);
        }
    }

    fn send_relock(&mut self, layer: String, ids: Vec<String>, ttl_ms: Option<u64>) {
        let p = FeatureLockParams {
            layer: layer.clone(),
            ids: ids.clone(),
            ttl_ms,
        };
        self.send_internal(api::method::FEATURE_LOCK, &p, Origin::Relock { layer, ids });
    }

    pub(super) fn on_relocked(
        &mut self,
        layer: String,
        ids: Vec<String>,
        r: std::result::Result<Params<'_>, RpcError>,
    ) {
        match r {
            Ok(result) => {
                if let Ok(l) = decode::<FeatureLockResult>(&result) {
                    for li in l.locks {
                        if let Some(h) = self.locks.get_mut(&(li.layer.clone(), li.id.clone())) {
                            h.until_ms = li.until_ms;
                        }
                    }
                }
            }
            Err(e) if ids.len() > 1 && e.code == ErrorCode::Locked => {
                // All or nothing: find out which ones are lost by asking one by one.
                for id in ids {
                    let ttl = self
                        .locks
                        .get(&(layer.clone(), id.clone()))
                        .and_then(|h| h.ttl_ms);
                    self.send_relock(layer.clone(), vec![id], ttl);
                }
            }
            Err(e) => {
                for id in ids {
                    self.locks.remove(&(layer.clone(), id.clone()));
                    self.shared.emit(ClientEvent::LockLost {
                        layer: layer.clone(),
                        id,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// A lock of ours released by someone other than us (it expired): report it lost.
    pub(super) fn on_lock_push(&mut self, l: &LockPush) {
        if l.locked || l.lock.client != self.shared.client_id {
            return;
        }
        let k = (l.lock.layer.clone(), l.lock.id.clone());
        if self.unlocking.contains(&k) {
            return;
        }
        if self.locks.remove(&k).is_some() {
            self.shared.emit(ClientEvent::LockLost {
                layer: k.0,
                id: k.1,
                reason: "released by the server (expired)".into(),
            });
        }
    }
}
