//! What the broker brings to this node: channel messages and bus events go to the hub, and
//! the events that concern tiles (changes, uploads, deletions) to the tile service too.

use std::sync::Arc;

use geostream_broker::{BrokerHandler, BusEvent, Publication};
use geostream_core::payload::{Payload, PayloadKind};
use geostream_hub::bus::topic_layer;
use geostream_hub::{BusHandler, Hub};

use crate::tiles::Tiles;

/// This node's handler of broker deliveries.
pub struct Bridge {
    hub: Arc<Hub>,
    bus: BusHandler,
    tiles: Arc<Tiles>,
}

impl Bridge {
    /// Delivers to `hub` (through `bus`) and `tiles`.
    pub fn new(hub: Arc<Hub>, bus: BusHandler, tiles: Arc<Tiles>) -> Self {
        Bridge { hub, bus, tiles }
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
            BusEvent::Change(c) => self.tiles.on_change(c),
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
}
