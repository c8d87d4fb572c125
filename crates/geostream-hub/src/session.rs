//! A connected client as the hub sees it: its encoding, who it is, its outbox and its
//! subscriptions. Transports (WebSocket, SSE) create one per connection.

use std::collections::HashMap;
use std::sync::Arc;

use geostream_core::api::ClientInfo;
use geostream_core::codec::Encoding;
use parking_lot::Mutex;

use crate::outbox::Outbox;

/// What a subscription is subscribed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubTarget {
    /// A channel.
    Channel {
        /// The channel name.
        channel: Arc<str>,
        /// Whether the subscriber receives join/leave pushes.
        presence: bool,
    },
    /// A layer's features.
    Layer {
        /// The layer name.
        layer: Arc<str>,
    },
    /// A set of a layer's tiles (the subscription's state lives with the server's tile
    /// service; the hub only hands out its id).
    Tiles {
        /// The layer name.
        layer: Arc<str>,
    },
}

#[derive(Default)]
struct SubTable {
    next: u32,
    subs: HashMap<u32, SubTarget>,
    channels: HashMap<Arc<str>, u32>,
}

/// One connected client.
pub struct Session {
    id: Arc<str>,
    encoding: Encoding,
    client: Mutex<ClientInfo>,
    /// The queue to this client's writer.
    pub outbox: Outbox,
    subs: Mutex<SubTable>,
}

impl Session {
    pub(crate) fn new(
        id: Arc<str>,
        encoding: Encoding,
        client: ClientInfo,
        outbox: Outbox,
    ) -> Self {
        Session {
            id,
            encoding,
            client: Mutex::new(client),
            outbox,
            subs: Mutex::new(SubTable::default()),
        }
    }

    /// The session id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The connection's encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Who this is, as presence shows it.
    pub fn client(&self) -> ClientInfo {
        self.client.lock().clone()
    }

    /// Replaces who this is (after `hello` or a token refresh).
    pub fn set_client(&self, client: ClientInfo) {
        *self.client.lock() = client;
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.lock().subs.len()
    }

    /// The subscription of a channel, if any.
    pub fn channel_sub(&self, channel: &str) -> Option<u32> {
        self.subs.lock().channels.get(channel).copied()
    }

    /// What a subscription id refers to.
    pub fn sub_target(&self, sub: u32) -> Option<SubTarget> {
        self.subs.lock().subs.get(&sub).cloned()
    }

    /// All subscriptions.
    pub fn subscriptions(&self) -> Vec<(u32, SubTarget)> {
        self.subs
            .lock()
            .subs
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    pub(crate) fn add_sub(&self, target: SubTarget, max: usize) -> Result<u32, crate::HubError> {
        let mut t = self.subs.lock();
        if let SubTarget::Channel { channel, .. } = &target
            && let Some(existing) = t.channels.get(channel)
        {
            return Err(crate::HubError::AlreadySubscribed(*existing));
        }
        if t.subs.len() >= max {
            return Err(crate::HubError::TooManySubscriptions(max));
        }
        t.next = t.next.wrapping_add(1).max(1);
        while t.subs.contains_key(&t.next) {
            t.next = t.next.wrapping_add(1).max(1);
        }
        let id = t.next;
        if let SubTarget::Channel { channel, .. } = &target {
            t.channels.insert(channel.clone(), id);
        }
        t.subs.insert(id, target);
        Ok(id)
    }

    pub(crate) fn remove_sub(&self, sub: u32) -> Option<SubTarget> {
        let mut t = self.subs.lock();
        let target = t.subs.remove(&sub)?;
        if let SubTarget::Channel { channel, .. } = &target {
            t.channels.remove(channel);
        }
        Some(target)
    }

    pub(crate) fn take_subs(&self) -> Vec<(u32, SubTarget)> {
        let mut t = self.subs.lock();
        t.channels.clear();
        t.subs.drain().collect()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}
