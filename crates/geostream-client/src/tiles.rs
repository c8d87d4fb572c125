//! Tile subscriptions: the tiles of a viewport, kept current with deltas that are applied and
//! verified (CRC-32 of the result) before the application sees the tile.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use geostream_core::api::{TileUpdateResult, TileViewport};
use tokio::sync::{mpsc, oneshot};

use crate::driver::Cmd;
use crate::error::{ClientError, Result};

/// Largest tile the client accepts from a delta, in bytes.
pub(crate) const MAX_TILE_BYTES: usize = 64 << 20;

/// Which tiles a subscription covers.
#[derive(Clone, Debug, PartialEq)]
pub enum TileSelection {
    /// The tiles of zoom `zoom` covering `bbox` (`[west, south, east, north]`).
    Viewport {
        /// `[west, south, east, north]` in degrees.
        bbox: [f64; 4],
        /// Zoom level.
        zoom: u8,
    },
    /// These tiles, as `"z/x/y"`.
    Tiles(Vec<String>),
}

impl TileSelection {
    pub(crate) fn viewport(&self) -> Option<TileViewport> {
        match self {
            TileSelection::Viewport { bbox, zoom } => Some(TileViewport {
                bbox: *bbox,
                zoom: *zoom,
            }),
            TileSelection::Tiles(_) => None,
        }
    }

    pub(crate) fn tiles(&self) -> Option<Vec<String>> {
        match self {
            TileSelection::Viewport { .. } => None,
            TileSelection::Tiles(t) => Some(t.clone()),
        }
    }
}

/// One event of a tile subscription ([`TileStream`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TileEvent {
    /// The current bytes of a tile (first sent whole; afterwards usually rebuilt from a delta
    /// against the version held, and checked against the delta's CRC-32).
    Tile {
        /// `"z/x/y"`.
        tile: String,
        /// Its version.
        version: u64,
        /// Its HTTP ETag.
        etag: String,
        /// The tile (Mapbox Vector Tile, or the raster image).
        data: Bytes,
        /// Whether it was rebuilt from a delta (false: sent whole).
        from_delta: bool,
    },
    /// The tile changed and is now at `version` (subscriptions in notify mode): fetch it over
    /// HTTP (`GET /v1/tiles/{layer}/{z}/{x}/{y}`, with `If-None-Match`).
    Changed {
        /// `"z/x/y"`.
        tile: String,
        /// Its new version.
        version: u64,
        /// Its HTTP ETag.
        etag: String,
    },
    /// The server ended the subscription. Nothing follows.
    Unsubscribed {
        /// Why.
        reason: String,
    },
}

/// Rebuilds a tile from the version held and a delta; fails (so the client asks for the whole
/// tile) when the base is not the one held or the result does not match its checksum.
pub(crate) fn apply_delta(
    held: Option<(u64, &Bytes)>,
    base: Option<u64>,
    delta: &[u8],
) -> std::result::Result<Bytes, String> {
    let Some((version, bytes)) = held else {
        return Err("no base version held".into());
    };
    if base != Some(version) {
        return Err(format!("delta against {base:?}, but {version} is held"));
    }
    geostream_delta::apply(bytes, delta, MAX_TILE_BYTES)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// The events of a tile subscription. Dropping it unsubscribes.
pub struct TileStream {
    pub(crate) rx: mpsc::UnboundedReceiver<TileEvent>,
    pub(crate) cmd: mpsc::UnboundedSender<Cmd>,
    pub(crate) local: u64,
    pub(crate) layer: String,
    pub(crate) kind: String,
    pub(crate) tiles: Vec<String>,
    pub(crate) request_timeout: Duration,
}

impl std::fmt::Debug for TileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileStream")
            .field("layer", &self.layer)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Drop for TileStream {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Unsubscribe(self.local));
    }
}

impl TileStream {
    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<TileEvent> {
        self.rx.recv().await
    }

    /// The layer.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// `"vector"` (tiles made from the layer's features) or `"raster"`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The tiles subscribed at the start, `"z/x/y"`.
    pub fn tiles(&self) -> &[String] {
        &self.tiles
    }

    /// Moves the subscription to other tiles. Tiles entering the set follow as events; those
    /// leaving are forgotten. Made while disconnected, the move is applied on reconnect.
    pub async fn set_selection(&self, selection: TileSelection) -> Result<TileUpdateResult> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::UpdateTiles {
                local: self.local,
                selection,
                reply: tx,
            })
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.request_timeout)),
        }
    }
}

impl Stream for TileStream {
    type Item = TileEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_verified() {
        let old = Bytes::from_static(b"the quick brown fox jumps over the lazy dog, twice over");
        let new = b"the quick brown cat jumps over the lazy dog, twice over!".to_vec();
        let d = geostream_delta::encode(&old, &new);
        assert_eq!(
            apply_delta(Some((3, &old)), Some(3), &d).unwrap(),
            Bytes::from(new.clone())
        );
        // A wrong base version, no base, or a different base of the same length: refused.
        assert!(apply_delta(Some((2, &old)), Some(3), &d).is_err());
        assert!(apply_delta(None, Some(3), &d).is_err());
        let other = Bytes::from(old.iter().map(|b| b ^ 1).collect::<Vec<u8>>());
        assert!(apply_delta(Some((3, &other)), Some(3), &d).is_err());
        // A corrupted delta: refused by its checksum (or as malformed).
        let mut bad = d.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(apply_delta(Some((3, &old)), Some(3), &bad).is_err());
    }
}
