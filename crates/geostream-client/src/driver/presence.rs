//! Layer presence: who is on a layer and where their cursors are; this client's own cursor,
//! shared again after a reconnect.

use geostream_core::api::{
    self, CursorParams, CursorPush, PresencePush, PresenceSubscribeParams, PresenceSubscribeResult,
};
use geostream_core::codec::Params;
use tokio::sync::mpsc;

use super::{Driver, Ready, decode, reason_of};
use crate::error::ClientError;
use crate::events::{Cursor, PresenceEvent};

pub(super) struct PresenceSub {
    layer: String,
    tx: mpsc::UnboundedSender<PresenceEvent>,
}

impl PresenceSub {
    pub(super) fn new(layer: String, tx: mpsc::UnboundedSender<PresenceEvent>) -> PresenceSub {
        PresenceSub { layer, tx }
    }

    pub(super) fn subscribe_params(&self) -> PresenceSubscribeParams {
        PresenceSubscribeParams {
            layer: self.layer.clone(),
        }
    }

    /// A resubscribe failed: the stream ends.
    pub(super) fn end(self, e: ClientError) {
        let _ = self.tx.send(PresenceEvent::Unsubscribed {
            reason: e.to_string(),
        });
    }

    /// The (re)subscribe's result; returns the subscription id.
    pub(super) fn on_subscribed(
        &mut self,
        result: &Params<'_>,
        ready: &mut Option<Ready>,
    ) -> Option<u32> {
        let res = match decode::<PresenceSubscribeResult>(result) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Unexpected presence.subscribe result.");
                return None;
            }
        };
        match ready.take() {
            Some(Ready::Presence(r)) => {
                let _ = r.send(Ok(res.members));
            }
            // A resubscribe after a reconnect: everyone here now replaces what the
            // application held.
            _ => {
                let _ = self.tx.send(PresenceEvent::Members(res.members));
            }
        }
        Some(res.sub)
    }

    /// One push; true when it ends the subscription.
    pub(super) fn on_push(&mut self, method: &str, params: &Params<'_>) -> bool {
        let mut ended = false;
        let ev = match method {
            api::push::JOIN => decode::<PresencePush<'static>>(params)
                .ok()
                .map(|p| PresenceEvent::Join(p.client)),
            api::push::LEAVE => decode::<PresencePush<'static>>(params)
                .ok()
                .map(|p| PresenceEvent::Leave(p.client)),
            api::push::CURSOR => decode::<CursorPush>(params).ok().map(|p| {
                PresenceEvent::Cursor(Cursor {
                    client: p.client,
                    position: p.position,
                    editing: p.editing,
                })
            }),
            api::push::UNSUBSCRIBED => {
                ended = true;
                reason_of(params).map(|reason| PresenceEvent::Unsubscribed { reason })
            }
            _ => None,
        };
        if let Some(ev) = ev {
            let _ = self.tx.send(ev);
        }
        ended
    }
}

impl Driver {
    /// Shares a cursor (a notification) and keeps it for the next connection.
    pub(super) fn send_cursor(&mut self, c: CursorParams) {
        self.remember_cursor(c.clone());
        self.notify(api::method::PRESENCE_CURSOR, &c);
    }

    /// Keeps a layer's last cursor for the next connection; a cursor that shows nothing (no
    /// position, no edits) needs no repeating: a new session starts without one.
    pub(super) fn remember_cursor(&mut self, c: CursorParams) {
        if c.position.is_none() && c.editing.is_empty() {
            self.cursors.remove(&c.layer);
        } else {
            self.cursors.insert(c.layer.clone(), c);
        }
    }

    /// Cursors are not kept by the server: share the last ones again. The server takes one
    /// cursor per 50 ms from a connection and drops the rest, so with cursors on several
    /// layers only the first arrives now; the next move sends the others.
    pub(super) fn reshare_cursors(&mut self) {
        let cursors: Vec<CursorParams> = self.cursors.values().cloned().collect();
        for c in cursors {
            self.notify(api::method::PRESENCE_CURSOR, &c);
        }
    }
}
