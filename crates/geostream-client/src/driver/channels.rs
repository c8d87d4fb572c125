//! Channel subscriptions: messages (and presence) resumed after a reconnect from the last
//! offset delivered, or a `Resync` when the server no longer has what was missed.

use geostream_core::api::{
    self, ChannelSubscribeParams, ChannelSubscribeResult, GapPush, MessagePush, Position,
    PresencePush,
};
use geostream_core::codec::Params;
use tokio::sync::mpsc;

use super::{Ready, decode, reason_of};
use crate::error::ClientError;
use crate::events::ChannelEvent;

pub(super) struct ChannelSub {
    channel: String,
    presence: bool,
    /// The position of the last message delivered.
    position: Option<Position>,
    tx: mpsc::UnboundedSender<ChannelEvent>,
}

impl ChannelSub {
    pub(super) fn new(
        channel: String,
        presence: bool,
        tx: mpsc::UnboundedSender<ChannelEvent>,
    ) -> ChannelSub {
        ChannelSub {
            channel,
            presence,
            position: None,
            tx,
        }
    }

    /// The params of a (re)subscribe, and whether it starts fresh (nothing to resume).
    pub(super) fn subscribe_params(&self) -> (ChannelSubscribeParams, bool) {
        let p = ChannelSubscribeParams {
            channel: self.channel.clone(),
            since: self.position.clone(),
            presence: self.presence,
        };
        (p, self.position.is_none())
    }

    /// A resubscribe failed: the stream ends.
    pub(super) fn end(self, e: ClientError) {
        let _ = self.tx.send(ChannelEvent::Unsubscribed {
            reason: e.to_string(),
        });
    }

    /// The (re)subscribe's result; returns the subscription id.
    pub(super) fn on_subscribed(
        &mut self,
        result: &Params<'_>,
        ready: &mut Option<Ready>,
    ) -> Option<u32> {
        let res = match decode::<ChannelSubscribeResult>(result) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Unexpected channel.subscribe result.");
                return None;
            }
        };
        match (&self.position, res.recovered) {
            (Some(_), Some(true)) => {} // the missed messages follow
            (Some(_), _) => {
                self.position = Some(res.position.clone());
                let _ = self.tx.send(ChannelEvent::Resync {
                    position: res.position,
                });
            }
            (None, _) => self.position = Some(res.position),
        }
        if let Some(Ready::Channel(r)) = ready.take() {
            let _ = r.send(Ok(self.position.clone().unwrap_or(Position {
                offset: 0,
                epoch: String::new(),
            })));
        }
        Some(res.sub)
    }

    /// One push; true when it ends the subscription.
    pub(super) fn on_push(&mut self, method: &str, params: &Params<'_>) -> bool {
        let mut ended = false;
        let ev = match method {
            api::push::MESSAGE => decode::<MessagePush<'static>>(params).ok().map(|p| {
                let epoch = self
                    .position
                    .as_ref()
                    .map(|p| p.epoch.clone())
                    .unwrap_or_default();
                self.position = Some(Position {
                    offset: p.offset,
                    epoch,
                });
                ChannelEvent::Message {
                    offset: p.offset,
                    data: p.data.to_value(),
                }
            }),
            api::push::JOIN => decode::<PresencePush<'static>>(params)
                .ok()
                .map(|p| ChannelEvent::Join(p.client)),
            api::push::LEAVE => decode::<PresencePush<'static>>(params)
                .ok()
                .map(|p| ChannelEvent::Leave(p.client)),
            api::push::GAP => decode::<GapPush<'static>>(params)
                .ok()
                .map(|p| ChannelEvent::Gap {
                    from: p.from,
                    epoch: p.epoch.into_owned(),
                }),
            api::push::UNSUBSCRIBED => {
                ended = true;
                reason_of(params).map(|reason| ChannelEvent::Unsubscribed { reason })
            }
            _ => None,
        };
        if let Some(ev) = ev {
            let _ = self.tx.send(ev);
        }
        ended
    }
}
