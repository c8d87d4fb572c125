//! Tile subscriptions: the tiles of a selection, kept current with deltas applied to the
//! versions held (which a resubscribe reports, so only what changed is sent again).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use geostream_core::api::{
    self, TileMode, TilePush, TilePushKind, TileSubscribeParams, TileSubscribeResult,
    TileUpdateParams, TileUpdateResult,
};
use geostream_core::codec::Params;
use geostream_core::error::RpcError;
use tokio::sync::{mpsc, oneshot};

use super::{Driver, Origin, Ready, Sub, SubKind, decode, reason_of};
use crate::error::{ClientError, Result};
use crate::tiles::{TileEvent, TileSelection, apply_delta};

/// A tile the client holds, to apply the next delta to.
struct HeldTile {
    version: u64,
    bytes: Bytes,
}

pub(super) struct TileSub {
    layer: String,
    selection: TileSelection,
    mode: TileMode,
    held: HashMap<String, HeldTile>,
    /// A move made while disconnected waits for the reconnect.
    pub(super) update_reply: Option<oneshot::Sender<Result<TileUpdateResult>>>,
    tx: mpsc::UnboundedSender<TileEvent>,
}

impl TileSub {
    pub(super) fn new(
        layer: String,
        selection: TileSelection,
        mode: TileMode,
        tx: mpsc::UnboundedSender<TileEvent>,
    ) -> TileSub {
        TileSub {
            layer,
            selection,
            mode,
            held: HashMap::new(),
            update_reply: None,
            tx,
        }
    }

    /// The params of a (re)subscribe, and whether it starts fresh (no tile held). Resuming:
    /// the versions held make the server send only what changed, as deltas against them.
    pub(super) fn subscribe_params(&self) -> (TileSubscribeParams, bool) {
        let p = TileSubscribeParams {
            layer: self.layer.clone(),
            viewport: self.selection.viewport(),
            tiles: self.selection.tiles(),
            mode: self.mode,
            have: self
                .held
                .iter()
                .map(|(k, h)| (k.clone(), h.version))
                .collect(),
        };
        (p, self.held.is_empty())
    }

    /// A move whose request was lost with the connection waits for the resubscribe.
    pub(super) fn keep_update_reply(
        &mut self,
        reply: Option<oneshot::Sender<Result<TileUpdateResult>>>,
    ) {
        if self.update_reply.is_none() {
            self.update_reply = reply;
        } else if let Some(r) = reply {
            let _ = r.send(Err(ClientError::ConnectionLost));
        }
    }

    /// A resubscribe failed: the stream ends.
    pub(super) fn end(self, e: ClientError) {
        if let Some(r) = self.update_reply {
            let _ = r.send(Err(e.clone()));
        }
        let _ = self.tx.send(TileEvent::Unsubscribed {
            reason: e.to_string(),
        });
    }

    /// The (re)subscribe's result; returns the subscription id.
    pub(super) fn on_subscribed(
        &mut self,
        result: &Params<'_>,
        ready: &mut Option<Ready>,
    ) -> Option<u32> {
        let res = match decode::<TileSubscribeResult>(result) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Unexpected tile.subscribe result.");
                return None;
            }
        };
        // Tiles no longer in the set (the selection moved while disconnected).
        let set: HashSet<&String> = res.tiles.iter().collect();
        let removed: Vec<String> = self
            .held
            .keys()
            .filter(|k| !set.contains(k))
            .cloned()
            .collect();
        for k in &removed {
            self.held.remove(k);
        }
        if let Some(r) = self.update_reply.take() {
            let added = res
                .tiles
                .iter()
                .filter(|t| !self.held.contains_key(*t))
                .cloned()
                .collect();
            let _ = r.send(Ok(TileUpdateResult {
                sub: res.sub,
                added,
                removed,
            }));
        }
        let sub = res.sub;
        if let Some(Ready::Tile(r)) = ready.take() {
            let _ = r.send(Ok(res));
        }
        Some(sub)
    }

    /// One push: whether it ends the subscription, and a tile whose delta did not apply (to
    /// ask for whole).
    pub(super) fn on_push(&mut self, method: &str, params: &Params<'_>) -> (bool, Option<String>) {
        match method {
            api::push::TILE => match decode::<TilePush<'static>>(params) {
                Ok(p) => {
                    let repair = self.on_tile(p);
                    (false, repair)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Ignoring a malformed tile push.");
                    (false, None)
                }
            },
            api::push::UNSUBSCRIBED => {
                if let Some(reason) = reason_of(params) {
                    let _ = self.tx.send(TileEvent::Unsubscribed { reason });
                }
                (true, None)
            }
            _ => (false, None),
        }
    }

    /// A tile push: the tile (rebuilt from a delta and checked) goes to the application, or
    /// the tile's name comes back when its delta failed.
    fn on_tile(&mut self, p: TilePush<'static>) -> Option<String> {
        let tile = p.tile.into_owned();
        let etag = p.etag.into_owned();
        let ev = match p.kind {
            TilePushKind::Notify => {
                self.held.insert(
                    tile.clone(),
                    HeldTile {
                        version: p.version,
                        bytes: Bytes::new(),
                    },
                );
                TileEvent::Changed {
                    tile,
                    version: p.version,
                    etag,
                }
            }
            TilePushKind::Full | TilePushKind::Delta => {
                let from_delta = p.kind == TilePushKind::Delta;
                let data = p
                    .data
                    .map(|d| Bytes::from(d.0.into_owned()))
                    .ok_or_else(|| "no tile data".to_string())
                    .and_then(|d| {
                        if from_delta {
                            let held = self.held.get(&tile).map(|h| (h.version, &h.bytes));
                            apply_delta(held, p.base, &d)
                        } else {
                            Ok(d)
                        }
                    });
                match data {
                    Ok(data) => {
                        self.held.insert(
                            tile.clone(),
                            HeldTile {
                                version: p.version,
                                bytes: data.clone(),
                            },
                        );
                        TileEvent::Tile {
                            tile,
                            version: p.version,
                            etag,
                            data,
                            from_delta,
                        }
                    }
                    Err(e) => {
                        // Never show a tile that failed its check: ask for the whole tile
                        // instead.
                        tracing::warn!(tile = %tile, error = %e, "A tile delta did not apply; asking for the whole tile.");
                        self.held.remove(&tile);
                        return Some(tile);
                    }
                }
            }
        };
        let _ = self.tx.send(ev);
        None
    }
}

impl Driver {
    /// `TileStream::set_selection`: moves the subscription now, or once it is back.
    pub(super) fn update_tiles(
        &mut self,
        local: u64,
        selection: TileSelection,
        reply: oneshot::Sender<Result<TileUpdateResult>>,
    ) {
        let online = self.online;
        let Some(sub) = self.subs.get_mut(&local) else {
            let _ = reply.send(Err(ClientError::Closed));
            return;
        };
        let SubKind::Tile(ts) = &mut sub.kind else {
            let _ = reply.send(Err(ClientError::Decode("not a tile subscription".into())));
            return;
        };
        ts.selection = selection.clone();
        match sub.server {
            Some(server) if online => {
                let p = TileUpdateParams {
                    sub: server,
                    viewport: selection.viewport(),
                    tiles: selection.tiles(),
                    have: Default::default(),
                };
                self.send_internal(
                    api::method::TILE_UPDATE,
                    &p,
                    Origin::TileUpdate {
                        local,
                        reply: Some(reply),
                    },
                );
            }
            // Applied by the subscribe that resumes the subscription.
            _ => {
                if let Some(old) = ts.update_reply.replace(reply) {
                    let _ = old.send(Err(ClientError::Decode(
                        "superseded by a later selection".into(),
                    )));
                }
            }
        }
    }

    pub(super) fn on_tiles_updated(
        &mut self,
        local: u64,
        reply: Option<oneshot::Sender<Result<TileUpdateResult>>>,
        r: std::result::Result<Params<'_>, RpcError>,
    ) {
        let out = match r {
            Ok(result) => decode::<TileUpdateResult>(&result),
            Err(e) => Err(ClientError::from_rpc(e)),
        };
        if let (
            Ok(res),
            Some(Sub {
                kind: SubKind::Tile(ts),
                ..
            }),
        ) = (&out, self.subs.get_mut(&local))
        {
            for t in &res.removed {
                ts.held.remove(t);
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(out);
        }
    }

    /// A delta did not apply: tell the server the tile is not held, so it sends it whole.
    pub(super) fn repair_tile(&mut self, server: u32, tile: String) {
        let p = TileUpdateParams {
            sub: server,
            viewport: None,
            tiles: None,
            have: [(tile, 0)].into_iter().collect(),
        };
        self.send_internal(api::method::TILE_UPDATE, &p, Origin::Ignore);
    }
}
