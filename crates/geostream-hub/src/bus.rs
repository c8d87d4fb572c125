//! Events from the bus (every node's edits, presence and locks) into this node's hub.

use std::borrow::Cow;
use std::sync::Arc;

use geostream_core::feature::Change;

use geostream_core::api::{self, UnsubscribedPush};
use geostream_core::bus::BusEvent;
use geostream_core::codec::encode_push;
use tokio::sync::mpsc;

use crate::Hub;
use crate::layers::Dispatched;
use crate::outbox::Outgoing;

/// The broker topic of a layer's events. `$` cannot start a channel name, so layer topics
/// never collide with channels.
pub fn layer_topic(layer: &str) -> String {
    format!("$layer/{layer}")
}

/// The layer a topic of [`layer_topic`] is about.
pub fn topic_layer(topic: &str) -> Option<&str> {
    topic.strip_prefix("$layer/")
}

/// The internal channel carrying a layer's presence (joins, leaves, cursors).
pub fn presence_channel(layer: &str) -> String {
    format!("$presence/{layer}")
}

/// The member table of clients holding feature locks on a node (key: the client id), so
/// that when the node dies the others can let those locks expire.
pub const LOCK_HOLDERS: &str = "$locks";

/// A layer whose changes arrived with a gap: changes from `missing` on have not arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The layer.
    pub layer: String,
    /// The first missing sequence number.
    pub missing: u64,
}

/// Hands bus events to the hub; gaps go to whoever repairs them (see
/// [`crate::streams::Streams::new`]).
pub struct BusHandler {
    hub: Arc<Hub>,
    gaps: mpsc::Sender<Gap>,
}

impl BusHandler {
    /// A handler for `hub`, and the receiving end of the gaps it finds.
    pub fn new(hub: Arc<Hub>) -> (BusHandler, mpsc::Receiver<Gap>) {
        let (gaps, rx) = mpsc::channel(1024);
        (BusHandler { hub, gaps }, rx)
    }

    /// Dispatches one event. Never waits: the broker calls it on its delivery path.
    pub fn handle(&self, topic: &str, event: &Arc<BusEvent>) {
        match &**event {
            BusEvent::Join(client) => self.hub.dispatch_presence(topic, true, client.clone()),
            BusEvent::Leave(client) => self.hub.dispatch_presence(topic, false, client.clone()),
            BusEvent::Cursor(c) => self.hub.dispatch_cursor(topic, c.clone()),
            BusEvent::Change(c) => self.changes(std::slice::from_ref(c)),
            BusEvent::Changes(cs) => self.changes(cs),
            BusEvent::Lock(lock) => {
                if let Some(layer) = topic_layer(topic) {
                    self.hub.dispatch_lock(layer, lock.clone());
                }
            }
            BusEvent::LayerDeleted => {
                if let Some(layer) = topic_layer(topic) {
                    self.end_layer(layer);
                }
            }
            // Tiles are the tile service's business.
            BusEvent::TileUploaded(_) => {}
        }
    }

    fn changes(&self, changes: &[Arc<Change>]) {
        let Some(first) = changes.first() else { return };
        if let Dispatched::Waiting { missing } = self.hub.dispatch_changes(changes) {
            // Full: a repair for this layer is already queued, which reads every change it
            // finds missing.
            let _ = self.gaps.try_send(Gap {
                layer: first.layer.clone(),
                missing,
            });
        }
    }

    /// A layer was deleted: its subscriptions end with an `unsubscribed` push.
    fn end_layer(&self, layer: &str) {
        for (session, sub) in self.hub.drop_layer(layer) {
            let f = encode_push(
                session.encoding(),
                api::push::UNSUBSCRIBED,
                &UnsubscribedPush {
                    reason: Cow::Borrowed("layer deleted"),
                },
                None,
            );
            session.outbox.push_always(Outgoing::Frame(f.to_bytes(sub)));
        }
    }
}
