//! What the broker brings to this node: channel messages and bus events go to the hub, and
//! the events that concern tiles (changes, uploads, deletions) to the tile service too. When
//! another node dies, its members' departure is told to this node's presence subscribers and
//! the locks its clients held are set to expire after the disconnect grace.

use std::sync::Arc;

use geostream_broker::{BrokerHandler, BusEvent, ClientInfo, Publication};
use geostream_core::payload::{Payload, PayloadKind};
use geostream_hub::bus::topic_layer;
use geostream_hub::{BusHandler, Hub, LOCK_HOLDERS};
use geostream_store::Store;

use crate::backends::AnyStore;
use crate::tiles::Tiles;

/// This node's handler of broker deliveries.
pub struct Bridge {
    hub: Arc<Hub>,
    bus: BusHandler,
    tiles: Arc<Tiles>,
    store: AnyStore,
    lock_grace_ms: u64,
    /// Told of every layer change, for the geofence evaluator.
    fence_wake: Arc<tokio::sync::Notify>,
}

impl Bridge {
    /// Delivers to `hub` (through `bus`) and `tiles`; a dead node's clients' locks in `store`
    /// expire `lock_grace_ms` after it is taken for dead.
    pub fn new(
        hub: Arc<Hub>,
        bus: BusHandler,
        tiles: Arc<Tiles>,
        store: AnyStore,
        lock_grace_ms: u64,
        fence_wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Bridge {
            hub,
            bus,
            tiles,
            store,
            lock_grace_ms,
            fence_wake,
        }
    }
}

impl BrokerHandler for Bridge {
    fn on_publication(&self, topic: &str, p: &Publication, epoch: &Arc<str>) {
        if let Some(k) = PayloadKind::from_u8(p.kind) {
            self.hub.dispatch_message(
                topic,
                p.offset,
                epoch,
                Payload::from_trusted(k, p.data.clone()),
            );
        }
    }

    fn on_event(&self, topic: &str, event: &Arc<BusEvent>) {
        match &**event {
            BusEvent::Change(c) => {
                self.tiles.on_change(c);
                self.fence_wake.notify_one();
            }
            BusEvent::Changes(cs) => {
                cs.iter().for_each(|c| self.tiles.on_change(c));
                self.fence_wake.notify_one();
            }
            BusEvent::TileUploaded(t) => {
                if let Some(layer) = topic_layer(topic) {
                    self.tiles.on_upload(layer, t);
                }
            }
            BusEvent::LayerDeleted => {
                if let Some(layer) = topic_layer(topic) {
                    self.tiles.on_layer_deleted(&self.hub, layer);
                }
            }
            _ => {}
        }
        self.bus.handle(topic, event);
    }

    fn on_remote_members(&self, gone: bool, members: &[(String, ClientInfo)]) {
        let mut holders = Vec::new();
        for (topic, client) in members {
            if topic == LOCK_HOLDERS {
                holders.push(client.session.clone());
            } else {
                // Only this node's subscribers: every survivor tells its own, once.
                self.hub.dispatch_presence(topic, !gone, client.clone());
            }
        }
        if !gone || holders.is_empty() {
            return;
        }
        // Expiry is written to the shared store by every survivor (idempotent); the one
        // whose reaper removes each lock announces its release.
        let (store, grace) = (self.store.clone(), self.lock_grace_ms);
        tokio::spawn(async move {
            for client in holders {
                if let Err(e) = store.expire_client_locks(&client, grace).await {
                    tracing::warn!(client, error = %e, "Could not expire a dead node's client's locks.");
                }
            }
        });
    }
}
