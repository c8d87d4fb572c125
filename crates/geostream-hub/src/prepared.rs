//! A push prepared once for every subscriber it goes to.
//!
//! The hub wraps each event in one `Arc<Prepared>` and hands the same `Arc` to every matching
//! outbox. The frame for an encoding is built the first time a writer needs it and then
//! shared: the work per subscriber is one reference count and one splice of its
//! subscription id.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use geostream_core::api::{self, ClientInfo, MessagePush, PresencePush};
use geostream_core::codec::{Encoding, PushFrame, encode_push};
use geostream_core::payload::Payload;

/// What a push says.
#[derive(Clone, Debug)]
pub enum PushEvent {
    /// A channel message.
    Message {
        /// Channel.
        channel: Arc<str>,
        /// Offset in the channel's stream.
        offset: u64,
        /// Data as published.
        data: Payload,
    },
    /// Someone joined (`join == true`) or left a channel.
    Presence {
        /// Channel.
        channel: Arc<str>,
        /// Joined or left.
        join: bool,
        /// Who.
        client: ClientInfo,
    },
}

impl PushEvent {
    /// The push method name.
    pub fn method(&self) -> &'static str {
        match self {
            PushEvent::Message { .. } => api::push::MESSAGE,
            PushEvent::Presence { join: true, .. } => api::push::JOIN,
            PushEvent::Presence { join: false, .. } => api::push::LEAVE,
        }
    }

    fn encode(&self, enc: Encoding) -> PushFrame {
        match self {
            PushEvent::Message { channel, offset, data } => {
                encode_push(enc, self.method(), &MessagePush { channel, offset: *offset }, Some(("data", data)))
            }
            PushEvent::Presence { channel, client, .. } => {
                encode_push(enc, self.method(), &PresencePush { channel, client: client.clone() }, None)
            }
        }
    }

    fn cost(&self) -> usize {
        match self {
            PushEvent::Message { channel, data, .. } => 48 + channel.len() + data.len(),
            PushEvent::Presence { channel, .. } => 128 + channel.len(),
        }
    }
}

/// A push shared by all its subscribers, encoded lazily once per encoding.
pub struct Prepared {
    event: PushEvent,
    frames: [OnceLock<PushFrame>; 3],
    cost: usize,
    created: Instant,
}

impl Prepared {
    /// Prepares an event.
    pub fn new(event: PushEvent) -> Arc<Self> {
        let cost = event.cost();
        Arc::new(Prepared { event, frames: Default::default(), cost, created: Instant::now() })
    }

    /// The event.
    pub fn event(&self) -> &PushEvent {
        &self.event
    }

    /// The frame in `enc`, built on first use.
    pub fn frame(&self, enc: Encoding) -> &PushFrame {
        self.frames[enc.index()].get_or_init(|| self.event.encode(enc))
    }

    /// When the push was prepared on this node (for delivery latency).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Approximate size in bytes, for outbox budgets (known before any encoding).
    pub fn cost(&self) -> usize {
        self.cost
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("event", &self.event).finish_non_exhaustive()
    }
}
