//! Methods, their parameters and results, and the pushes of the wire protocol (version 1).
//!
//! Field names are the same in every encoding. `docs/PROTOCOL.md` describes each method with
//! examples; the examples there are checked against these types by the server's tests.

use serde::{Deserialize, Serialize};

use crate::payload::Payload;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Method names (client to server).
pub mod method {
    /// Opens a session: credentials, client info; answers with session id and limits.
    pub const HELLO: &str = "hello";
    /// Liveness check and round-trip measurement; echoes `data`.
    pub const PING: &str = "ping";
    /// Ends a subscription of any kind.
    pub const UNSUBSCRIBE: &str = "unsubscribe";
    /// Subscribes to a channel, optionally resuming from a position.
    pub const CHANNEL_SUBSCRIBE: &str = "channel.subscribe";
    /// Publishes a message to a channel.
    pub const CHANNEL_PUBLISH: &str = "channel.publish";
    /// Reads a channel's history.
    pub const CHANNEL_HISTORY: &str = "channel.history";
    /// Lists who is subscribed to a channel.
    pub const CHANNEL_PRESENCE: &str = "channel.presence";
    /// Notification: abort the request with the given id.
    pub const CANCEL_REQUEST: &str = "$/cancelRequest";
}

/// Notification and push names (server to client).
pub mod push {
    /// Progress of a long-running request.
    pub const PROGRESS: &str = "$/progress";
    /// A channel message.
    pub const MESSAGE: &str = "message";
    /// Someone subscribed to a channel (subscriptions with `presence: true`).
    pub const JOIN: &str = "join";
    /// Someone left a channel.
    pub const LEAVE: &str = "leave";
    /// Messages were dropped for a slow subscriber; recover them from history.
    pub const GAP: &str = "gap";
    /// The server ended a subscription.
    pub const UNSUBSCRIBED: &str = "unsubscribed";
}

/// A position in a channel's stream: the offset of the last message and the history epoch.
///
/// The epoch changes whenever the history is reset (for example when an in-memory broker
/// restarts); an offset is only meaningful together with its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Offset of the last message (0 before the first).
    pub offset: u64,
    /// History epoch.
    pub epoch: String,
}

/// `hello` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HelloParams {
    /// Protocol version the client speaks (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// A JWT; alternatives are the `Authorization` header and the `access_token` query
    /// parameter at connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Client software name and version, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientSoftware>,
    /// Shown to others in presence (a display name, a colour). At most 1 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// Client software name and version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientSoftware {
    /// e.g. `geostream-js`.
    pub name: String,
    /// e.g. `0.1.0`.
    #[serde(default)]
    pub version: String,
}

/// `hello` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloResult {
    /// This session's id (also used in presence).
    pub session: String,
    /// Server software.
    pub server: ServerSoftware,
    /// Protocol version in use.
    pub protocol: u32,
    /// The encoding of this connection (`json`, `msgpack`, `msgpack-zstd`).
    pub encoding: String,
    /// The authenticated user (the token's `sub`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Limits that apply to this session.
    pub limits: SessionLimits,
    /// Heartbeat timing.
    pub heartbeat: Heartbeat,
}

/// Server software name and version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerSoftware {
    /// `geostream`.
    pub name: String,
    /// The server's version.
    pub version: String,
}

/// Limits a session must respect.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Largest frame (and message) the server accepts, in bytes.
    pub max_frame_bytes: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Outbound queue budget, in bytes, before slow-consumer handling starts.
    pub outbox_bytes: usize,
}

/// Heartbeat timing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The server sends a WebSocket ping after this long without traffic.
    pub ping_interval_ms: u64,
    /// The server closes a connection it has received nothing from for this long.
    pub idle_timeout_ms: u64,
}

/// `ping` params and result: `data` is echoed unchanged.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PingParams {
    /// Anything; returned as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// `channel.subscribe` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelSubscribeParams {
    /// The channel name.
    pub channel: String,
    /// Resume: deliver every message after this position first. Without it, only messages
    /// published after the subscription starts are delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
    /// Also receive `join` / `leave` pushes for this channel.
    #[serde(default)]
    pub presence: bool,
}

/// `channel.subscribe` result. Missed messages (when resuming) follow as `message` pushes,
/// before any live message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelSubscribeResult {
    /// Subscription id, carried by every push of this subscription.
    pub sub: u32,
    /// The channel.
    pub channel: String,
    /// The channel's position when the subscription started (before replayed messages).
    pub position: Position,
    /// Present when `since` was given: whether every missed message is being delivered.
    /// `false` means history no longer holds them (or the epoch changed): resynchronise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Number of missed messages that follow as pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
}

/// `unsubscribe` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnsubscribeParams {
    /// The subscription id.
    pub sub: u32,
}

/// `channel.publish` params (`data` is any value and is kept as sent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelPublishParams {
    /// The channel name.
    pub channel: String,
}

/// `channel.history` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelHistoryParams {
    /// The channel name.
    pub channel: String,
    /// Only messages after this position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
    /// At most this many messages (default and maximum: the server's history page size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One message from history.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryMessage {
    /// Its offset.
    pub offset: u64,
    /// Its data.
    pub data: Payload,
}

/// `channel.history` result.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelHistoryResult {
    /// Messages in offset order.
    pub messages: Vec<HistoryMessage>,
    /// The channel's current position.
    pub position: Position,
    /// `false` when messages after `since` are no longer in history (or the epoch differs),
    /// so `messages` does not continue from `since`.
    pub complete: bool,
    /// More messages follow after the last one returned (ask again from its offset).
    pub more: bool,
}

/// `channel.presence` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelPresenceParams {
    /// The channel name.
    pub channel: String,
}

/// A client as others see it in presence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Session id.
    pub session: String,
    /// Authenticated user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the client put in `hello.info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// `channel.presence` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelPresenceResult {
    /// Everyone subscribed, one entry per subscribed session.
    pub clients: Vec<ClientInfo>,
}

/// `$/cancelRequest` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CancelParams {
    /// The id of the request to cancel.
    pub id: crate::codec::Id,
}

/// `$/progress` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgressParams {
    /// The id of the request this progress belongs to.
    pub id: crate::codec::Id,
    /// Units done so far.
    pub done: u64,
    /// Units in total, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What is happening, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Fields of a `message` push (besides `sub`, and `data` which is appended raw).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessagePush<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The message's offset.
    pub offset: u64,
}

/// Fields of a `join` / `leave` push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresencePush<'a> {
    /// The channel.
    pub channel: &'a str,
    /// Who joined or left.
    pub client: ClientInfo,
}

/// Fields of a `gap` push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GapPush<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The first offset that was dropped; read history from `from - 1`.
    pub from: u64,
    /// The position the epoch belongs to.
    pub epoch: &'a str,
}

/// Fields of an `unsubscribed` push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnsubscribedPush<'a> {
    /// Why.
    pub reason: &'a str,
}

/// Checks a channel or layer name: 1 to 200 bytes of `A-Z a-z 0-9 _ - . : / # @ =`.
///
/// `#` separates a user-limited channel from its user (`notifications#alice`).
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("{kind} name must be 1 to 200 bytes long"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-.:/#@=".contains(*c))) {
        return Err(format!("{kind} name contains {c:?}; allowed are A-Z a-z 0-9 and _ - . : / # @ ="));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("channel", "chat").is_ok());
        assert!(validate_name("channel", "notifications#alice").is_ok());
        assert!(validate_name("channel", "").is_err());
        assert!(validate_name("channel", "a b").is_err());
        assert!(validate_name("channel", &"x".repeat(201)).is_err());
    }
}
