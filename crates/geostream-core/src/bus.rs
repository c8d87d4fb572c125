//! What the nodes of a deployment tell each other besides channel messages: one enum, one
//! encoding (MessagePack, only when an event leaves the process; the in-process broker hands
//! the event itself to the hub).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::{ClientInfo, CursorPush, LockPush};
use crate::feature::Change;

/// An event published to a topic without history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BusEvent {
    /// Someone subscribed to a channel (the topic).
    Join(ClientInfo),
    /// Someone left a channel (the topic).
    Leave(ClientInfo),
    /// A cursor moved on a layer (the topic is the layer's presence channel).
    Cursor(CursorPush),
    /// A layer change, durable in the store (the topic is the layer's). Shared: the hub
    /// keeps it in the pushes it prepares.
    Change(Arc<Change>),
    /// Changes of one layer committed together (a batch), in sequence order: dispatched
    /// under one look at the layer's subscriptions.
    Changes(Vec<Arc<Change>>),
    /// A feature was locked or unlocked.
    Lock(LockPush),
    /// The layer was deleted.
    LayerDeleted,
    /// A raster tile of the layer has a new version (it was uploaded).
    TileUploaded(TileVersion),
}

/// A tile at a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileVersion {
    /// Zoom.
    pub z: u8,
    /// Column.
    pub x: u32,
    /// Row.
    pub y: u32,
    /// The tile's version after the upload.
    pub version: u64,
}

/// An event that could not be decoded (from another node of a different version, or
/// corrupted on the way).
#[derive(Debug, thiserror::Error)]
#[error("undecodable bus event: {0}")]
pub struct BusDecodeError(String);

impl BusEvent {
    /// Encodes the event to send it to other processes.
    pub fn encode(&self) -> Vec<u8> {
        // Named fields, so a node can read events of a newer node that added optional ones.
        rmp_serde::to_vec_named(self).expect("bus events are always encodable")
    }

    /// Decodes an event from another process.
    pub fn decode(bytes: &[u8]) -> Result<BusEvent, BusDecodeError> {
        rmp_serde::from_slice(bytes).map_err(|e| BusDecodeError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let client = ClientInfo {
            session: "s1".into(),
            user: Some("ada".into()),
            info: None,
        };
        for e in [
            BusEvent::Join(client.clone()),
            BusEvent::Leave(client.clone()),
            BusEvent::LayerDeleted,
            BusEvent::TileUploaded(TileVersion {
                z: 3,
                x: 1,
                y: 2,
                version: 9,
            }),
            BusEvent::Cursor(CursorPush {
                layer: "l".into(),
                client,
                position: Some([1.0, 2.0]),
                editing: vec!["a".into()],
            }),
        ] {
            assert_eq!(BusEvent::decode(&e.encode()).unwrap(), e);
        }
        assert!(BusEvent::decode(b"\xc1").is_err());
    }
}
