//! Methods, their parameters and results, and the pushes of the wire protocol (version 1).
//!
//! Field names are the same in every encoding. `docs/PROTOCOL.md` describes each method with
//! examples; the examples there are checked against these types by the server's tests.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::feature::{BBox, Feature, Geometry};
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
    /// Creates a layer.
    pub const LAYER_CREATE: &str = "layer.create";
    /// Lists layers.
    pub const LAYER_LIST: &str = "layer.list";
    /// Describes one layer.
    pub const LAYER_GET: &str = "layer.get";
    /// Deletes a layer and everything in it.
    pub const LAYER_DELETE: &str = "layer.delete";
    /// Subscribes to a layer's features with a spatial, temporal and attribute filter.
    pub const LAYER_SUBSCRIBE: &str = "layer.subscribe";
    /// Imports many features into a layer (long-running, with progress, cancellable).
    pub const LAYER_IMPORT: &str = "layer.import";
    /// Changes the filter (viewport) of a live layer subscription.
    pub const SUBSCRIPTION_UPDATE: &str = "subscription.update";
    /// Creates a feature.
    pub const FEATURE_CREATE: &str = "feature.create";
    /// Replaces a feature's geometry and properties.
    pub const FEATURE_REPLACE: &str = "feature.replace";
    /// Merges properties and/or sets the geometry of a feature.
    pub const FEATURE_PATCH: &str = "feature.patch";
    /// Deletes a feature.
    pub const FEATURE_DELETE: &str = "feature.delete";
    /// Reads one feature.
    pub const FEATURE_GET: &str = "feature.get";
    /// Queries features.
    pub const FEATURE_QUERY: &str = "feature.query";
    /// Applies several edits atomically.
    pub const FEATURE_BATCH: &str = "feature.batch";
    /// Locks features for editing.
    pub const FEATURE_LOCK: &str = "feature.lock";
    /// Releases locks.
    pub const FEATURE_UNLOCK: &str = "feature.unlock";
    /// Joins a layer's presence: who else views or edits it, and their cursors.
    pub const PRESENCE_SUBSCRIBE: &str = "presence.subscribe";
    /// Shares this client's cursor on a layer (rate-limited, not stored).
    pub const PRESENCE_CURSOR: &str = "presence.cursor";
    /// Subscribes to a layer's tiles (a viewport at a zoom, or a list of tiles).
    pub const TILE_SUBSCRIBE: &str = "tile.subscribe";
    /// Moves a tile subscription to another viewport or tile list.
    pub const TILE_UPDATE: &str = "tile.update";
    /// Creates a geofence (docs/GEOFENCES.md).
    pub const FENCE_CREATE: &str = "fence.create";
    /// Lists the geofences the caller may read.
    pub const FENCE_LIST: &str = "fence.list";
    /// One geofence.
    pub const FENCE_GET: &str = "fence.get";
    /// Deletes a geofence (features inside get `exit` with reason `fence_closed`).
    pub const FENCE_DELETE: &str = "fence.delete";
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
    /// A feature entered, changed in, left or was deleted from a layer subscription's view.
    pub const FEATURE: &str = "feature";
    /// A page of a layer subscription's snapshot.
    pub const SNAPSHOT: &str = "snapshot";
    /// The server cannot continue a layer subscription's stream; a fresh snapshot follows.
    pub const RESYNC: &str = "resync";
    /// A feature was locked or unlocked.
    pub const LOCK: &str = "lock";
    /// Someone on a layer moved their cursor (presence subscriptions).
    pub const CURSOR: &str = "cursor";
    /// A subscribed tile changed (or is sent for the first time): a delta, the full tile, or a
    /// notice.
    pub const TILE: &str = "tile";

    /// Every notification and push, in the order above.
    pub const ALL: &[&str] = &[
        PROGRESS,
        MESSAGE,
        JOIN,
        LEAVE,
        GAP,
        UNSUBSCRIBED,
        FEATURE,
        SNAPSHOT,
        RESYNC,
        LOCK,
        CURSOR,
        TILE,
    ];
}

/// Calls `$then!` with every method and push of the protocol and its types: the one table
/// of which params and result go with which method name.
///
/// `$then!` receives `methods: [(NAME, Params, Result | none), ...] pushes: [(NAME,
/// Params), ...]`, with the names of [`method`] and [`push`] and types of this module;
/// `none` marks a notification (no result). geostream-ts writes the TypeScript `Methods`
/// and `Pushes` maps from it.
#[macro_export]
macro_rules! protocol_table {
    ($then:ident) => {
        $then! {
            methods: [
                (HELLO, HelloParams, HelloResult),
                (PING, PingParams, PingResult),
                (UNSUBSCRIBE, UnsubscribeParams, Empty),
                (CHANNEL_SUBSCRIBE, ChannelSubscribeParams, ChannelSubscribeResult),
                (CHANNEL_PUBLISH, ChannelPublishParams, Position),
                (CHANNEL_HISTORY, ChannelHistoryParams, ChannelHistoryResult),
                (CHANNEL_PRESENCE, ChannelPresenceParams, ChannelPresenceResult),
                (CANCEL_REQUEST, CancelParams, none),
                (LAYER_CREATE, LayerCreateParams, LayerInfo),
                (LAYER_LIST, Empty, LayerListResult),
                (LAYER_GET, LayerNameParams, LayerInfo),
                (LAYER_DELETE, LayerNameParams, Empty),
                (LAYER_SUBSCRIBE, LayerSubscribeParams, LayerSubscribeResult),
                (LAYER_IMPORT, LayerImportParams, ImportResult),
                (SUBSCRIPTION_UPDATE, SubscriptionUpdateParams, SubscriptionUpdateResult),
                (FEATURE_CREATE, FeatureCreateParams, EditResult),
                (FEATURE_REPLACE, FeatureReplaceParams, EditResult),
                (FEATURE_PATCH, FeaturePatchParams, EditResult),
                (FEATURE_DELETE, FeatureDeleteParams, EditResult),
                (FEATURE_GET, FeatureGetParams, FeatureGetResult),
                (FEATURE_QUERY, FeatureQueryParams, FeatureQueryResult),
                (FEATURE_BATCH, FeatureBatchParams, FeatureBatchResult),
                (FEATURE_LOCK, FeatureLockParams, FeatureLockResult),
                (FEATURE_UNLOCK, FeatureUnlockParams, FeatureUnlockResult),
                (PRESENCE_SUBSCRIBE, PresenceSubscribeParams, PresenceSubscribeResult),
                (PRESENCE_CURSOR, CursorParams, Empty),
                (TILE_SUBSCRIBE, TileSubscribeParams, TileSubscribeResult),
                (TILE_UPDATE, TileUpdateParams, TileUpdateResult),
                (FENCE_CREATE, FenceDefinition, FenceInfo),
                (FENCE_LIST, Empty, FenceListResult),
                (FENCE_GET, FenceNameParams, FenceInfo),
                (FENCE_DELETE, FenceNameParams, Empty),
            ]
            pushes: [
                (PROGRESS, ProgressParams),
                (MESSAGE, MessagePush<'static>),
                (JOIN, PresencePush<'static>),
                (LEAVE, PresencePush<'static>),
                (GAP, GapPush<'static>),
                (UNSUBSCRIBED, UnsubscribedPush<'static>),
                (FEATURE, FeaturePush<'static>),
                (SNAPSHOT, SnapshotPush<'static>),
                (RESYNC, ResyncPush<'static>),
                (LOCK, LockPush),
                (CURSOR, CursorPush),
                (TILE, TilePush<'static>),
            ]
        }
    };
}

/// A position in a channel's stream: the offset of the last message and the history epoch.
///
/// The epoch changes whenever the history is reset (for example when an in-memory broker
/// restarts); an offset is only meaningful together with its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct Position {
    /// Offset of the last message (0 before the first).
    pub offset: u64,
    /// History epoch.
    pub epoch: String,
}

/// `hello` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
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
    /// A stable id this client keeps across reconnects (a random string it stores). Locks
    /// belong to it, so a client that reconnects within the grace period keeps its locks.
    /// Without it, locks belong to the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Shown to others in presence (a display name, a colour). At most 1 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub info: Option<serde_json::Value>,
}

/// Client software name and version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ClientSoftware {
    /// e.g. `geostream-js`.
    pub name: String,
    /// e.g. `0.1.0`.
    #[serde(default)]
    pub version: String,
}

/// `hello` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
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
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ServerSoftware {
    /// `geostream`.
    pub name: String,
    /// The server's version.
    pub version: String,
}

/// Limits a session must respect.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
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
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct Heartbeat {
    /// The server sends a WebSocket ping after this long without traffic.
    pub ping_interval_ms: u64,
    /// The server closes a connection it has received nothing from for this long.
    pub idle_timeout_ms: u64,
}

/// `ping` params: `data` is echoed unchanged.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct PingParams {
    /// Anything; returned as is. Not deserialized with the other members: the server reads
    /// it raw ([`crate::Params::field`]) so it echoes the value exactly as sent.
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub data: Option<Payload>,
}

/// `ping` result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct PingResult {
    /// The `data` of the request, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub data: Option<Payload>,
}

/// The params of a method that takes none, or the result of one that returns nothing: `{}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct Empty {}

/// `channel.subscribe` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ChannelSubscribeParams {
    /// The channel name.
    pub channel: String,
    /// Resume: deliver every message after this position first. Without it, only messages
    /// published after the subscription starts are delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
    /// Also receive `join` / `leave` pushes for this channel.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(as = "Option<bool>"))]
    pub presence: bool,
}

/// `channel.subscribe` result. Missed messages (when resuming) follow as `message` pushes,
/// before any live message.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
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
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct UnsubscribeParams {
    /// The subscription id.
    pub sub: u32,
}

/// `channel.publish` params. The result is the message's [`Position`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ChannelPublishParams {
    /// The channel name.
    pub channel: String,
    /// The message: any value, kept as sent. Not deserialized with the other members: the
    /// server reads it raw ([`crate::Params::field`]), so JSON is relayed byte for byte.
    #[serde(skip_deserializing)]
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub data: Payload,
}

/// `channel.history` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct HistoryMessage {
    /// Its offset.
    pub offset: u64,
    /// Its data.
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub data: Payload,
}

/// `channel.history` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
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
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ChannelPresenceParams {
    /// The channel name.
    pub channel: String,
}

/// A client as others see it in presence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ClientInfo {
    /// Session id.
    pub session: String,
    /// Authenticated user, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the client put in `hello.info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub info: Option<serde_json::Value>,
}

/// `channel.presence` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ChannelPresenceResult {
    /// Everyone subscribed, one entry per subscribed session.
    pub clients: Vec<ClientInfo>,
}

/// `$/cancelRequest` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct CancelParams {
    /// The id of the request to cancel.
    pub id: crate::codec::Id,
}

/// `$/progress` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
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

/// A `message` push (besides `sub`).
///
/// Push types borrow what they carry (`Cow::Borrowed`) when the server encodes them once per
/// fan-out, and own it (`Cow::Owned`) when a client decodes them: one definition for both
/// directions, no copy on the server's hot path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct MessagePush<'a> {
    /// The channel.
    pub channel: Cow<'a, str>,
    /// The message's offset.
    pub offset: u64,
    /// The message, as published. Not serialized with the other members: the server appends
    /// it raw ([`crate::codec::encode_push`]), so JSON is relayed byte for byte.
    #[serde(skip_serializing)]
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub data: Cow<'a, Payload>,
}

/// A `join` / `leave` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct PresencePush<'a> {
    /// The channel (for channel subscriptions; for layer presence, the layer's topic).
    pub channel: Cow<'a, str>,
    /// Who joined or left.
    pub client: ClientInfo,
}

/// A `gap` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct GapPush<'a> {
    /// The channel.
    pub channel: Cow<'a, str>,
    /// The first offset that was dropped; read history from `from - 1`.
    pub from: u64,
    /// The position the epoch belongs to.
    pub epoch: Cow<'a, str>,
}

/// An `unsubscribed` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct UnsubscribedPush<'a> {
    /// Why.
    pub reason: Cow<'a, str>,
}

/// What a `feature` push means for its subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// The feature now matches the subscription (it was created, moved in, or started
    /// matching the filter): the whole feature follows.
    Enter,
    /// A feature the subscriber has changed and still matches: only what changed follows.
    Update,
    /// A feature the subscriber has no longer matches (moved out, stopped matching).
    Exit,
    /// A feature the subscriber has was deleted.
    Delete,
}

/// A `feature` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeaturePush<'a> {
    /// The layer.
    pub layer: Cow<'a, str>,
    /// The change's sequence number in the layer.
    pub seq: u64,
    /// Enter, update, exit or delete.
    pub kind: FeatureKind,
    /// The feature id.
    pub id: Cow<'a, str>,
    /// The feature's version after the change.
    pub version: u64,
    /// The whole feature: on `enter`, and on an `update` that replaces what the client
    /// holds (after missed intermediate changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<Cow<'a, Feature>>,
    /// On a partial `update`: the changed properties as a JSON Merge Patch (`null` = removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
    /// On a partial `update` whose geometry changed: the new geometry (`null` = removed).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "ts", ts(type = "Geometry | null"))]
    pub geometry: Option<Option<Cow<'a, Geometry>>>,
}

impl<'a> FeaturePush<'a> {
    /// The push for `change` as seen by a subscriber for whom it means `kind`.
    pub fn new(change: &'a crate::feature::Change, kind: FeatureKind, full: bool) -> Self {
        let mut p = FeaturePush {
            layer: Cow::Borrowed(&change.layer),
            seq: change.seq,
            kind,
            id: Cow::Borrowed(&change.id),
            version: change.version,
            feature: None,
            properties: None,
            geometry: None,
        };
        match kind {
            FeatureKind::Enter => p.feature = change.new.as_ref().map(Cow::Borrowed),
            FeatureKind::Update if full => p.feature = change.new.as_ref().map(Cow::Borrowed),
            FeatureKind::Update => {
                if let Some(new) = &change.new {
                    let mut props = serde_json::Map::new();
                    for k in &change.changed {
                        props.insert(
                            k.clone(),
                            new.properties
                                .get(k)
                                .cloned()
                                .unwrap_or(serde_json::Value::Null),
                        );
                    }
                    if !props.is_empty() {
                        p.properties = Some(props);
                    }
                    if change.geometry_changed {
                        p.geometry = Some(new.geometry.as_ref().map(Cow::Borrowed));
                    }
                }
            }
            FeatureKind::Exit | FeatureKind::Delete => {}
        }
        p
    }
}

/// A subscription or query filter as a client states it. Every part given must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FilterSpec {
    /// `[min_lon, min_lat, max_lon, max_lat]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "[number, number, number, number]"))]
    pub bbox: Option<Vec<f64>>,
    /// A GeoJSON Polygon or MultiPolygon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "Geometry"))]
    pub geometry: Option<serde_json::Value>,
    /// Centre `[lon, lat]` of a circle (with `radius`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "[number, number]"))]
    pub point: Option<Vec<f64>>,
    /// Circle radius in metres (with `point`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<f64>,
    /// An instant or interval as in OGC API Features: `2020-06-30T00:00:00Z/..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datetime: Option<String>,
    /// CQL2: text (a string) or JSON (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "string | Record<string, unknown>"))]
    pub filter: Option<serde_json::Value>,
}

/// `layer.subscribe` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LayerSubscribeParams {
    /// The layer.
    pub layer: String,
    /// The filter.
    #[serde(flatten)]
    pub filter: FilterSpec,
    /// Resume: replay the changes after this sequence number instead of a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Send a snapshot of the matching features first (default true; ignored with `since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
    /// Features per snapshot page (default 500, at most 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<usize>,
}

/// `layer.subscribe` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LayerSubscribeResult {
    /// Subscription id.
    pub sub: u32,
    /// The layer.
    pub layer: String,
    /// The layer's sequence number the subscription starts from: the snapshot is as of this
    /// number and live changes follow with higher ones.
    pub seq: u64,
    /// With `since`: whether the missed changes are being replayed (`false`: they are no
    /// longer retained; a `resync` and a snapshot follow instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// With `since`: how many missed changes follow as `feature` pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
}

/// `subscription.update` params: the new filter of a live layer subscription.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct SubscriptionUpdateParams {
    /// The subscription.
    pub sub: u32,
    /// The new filter (replaces the old one entirely).
    #[serde(flatten)]
    pub filter: FilterSpec,
}

/// `subscription.update` result; `enter` / `exit` pushes for the difference follow.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct SubscriptionUpdateResult {
    /// The subscription.
    pub sub: u32,
    /// The sequence number the difference is computed at.
    pub seq: u64,
    /// Features entering the view.
    pub entered: u64,
    /// Features leaving it.
    pub exited: u64,
}

/// A `snapshot` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct SnapshotPush<'a> {
    /// The layer.
    pub layer: Cow<'a, str>,
    /// The sequence number the snapshot is as of.
    pub seq: u64,
    /// A page of matching features.
    pub features: Cow<'a, [Feature]>,
    /// Whether this is the last page.
    pub last: bool,
}

/// A `resync` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ResyncPush<'a> {
    /// The layer.
    pub layer: Cow<'a, str>,
    /// The sequence number the fresh snapshot will be as of.
    pub seq: u64,
    /// Why.
    pub reason: Cow<'a, str>,
}

/// Distinguishes an absent member (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `layer.create` params (the store creates layers from them as they are). The result is
/// the new layer's [`LayerInfo`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LayerCreateParams {
    /// Unique name (same rules as channel names).
    pub name: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Accept edits without an expected version (the last writer wins). When false (the
    /// default), replace, patch and delete must state the version they edited.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(as = "Option<bool>"))]
    pub last_writer_wins: bool,
}

/// A layer: the result of `layer.create` and `layer.get`, and an entry of `layer.list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LayerInfo {
    /// Name.
    pub name: String,
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// See [`LayerCreateParams::last_writer_wins`].
    pub last_writer_wins: bool,
    /// Sequence number of the layer's last change (0 before the first).
    pub seq: u64,
    /// Number of features.
    pub count: u64,
    /// Extent of all features, if any have geometry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<BBox>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// `layer.list` result: the layers the caller may read, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LayerListResult {
    /// The layers.
    pub layers: Vec<LayerInfo>,
}

/// `fence.create` params: a geofence definition, the same JSON object as the body of
/// `POST /v1/geofences` (docs/GEOFENCES.md). The server checks it with the fence crate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(transparent)]
pub struct FenceDefinition(
    /// The definition's members (`name`, `layer`, `area`, `detect`, ...).
    #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
    pub serde_json::Map<String, serde_json::Value>,
);

/// A geofence as the server shows it: the definition (webhook secret hidden except in the
/// answer to `fence.create`), `channel`, `created`, `start_seq`, `expires` and, on the
/// evaluating node, `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(transparent)]
pub struct FenceInfo(
    /// The members.
    #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
    pub serde_json::Map<String, serde_json::Value>,
);

/// `fence.list` result: the geofences the caller may read, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct FenceListResult {
    /// The fences.
    pub fences: Vec<FenceInfo>,
}

/// Params naming one geofence (`fence.get`, `fence.delete`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct FenceNameParams {
    /// The fence.
    pub name: String,
}

/// Params naming one layer (`layer.get`, `layer.delete`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LayerNameParams {
    /// The layer.
    pub name: String,
}

/// `feature.create` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureCreateParams {
    /// The layer.
    pub layer: String,
    /// A GeoJSON Feature; without `id`, the server assigns one.
    #[cfg_attr(feature = "ts", ts(type = "FeatureInput"))]
    pub feature: serde_json::Value,
    /// Idempotency key: a repeated `op_id` returns the first result instead of applying
    /// the edit again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// `feature.replace` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureReplaceParams {
    /// The layer.
    pub layer: String,
    /// The feature id.
    #[cfg_attr(feature = "ts", ts(type = "string | number"))]
    pub id: serde_json::Value,
    /// The new GeoJSON Feature (its `id`, if any, must equal `id`).
    #[cfg_attr(feature = "ts", ts(type = "FeatureInput"))]
    pub feature: serde_json::Value,
    /// The version the client edited (required unless the layer is last-writer-wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// `feature.patch` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeaturePatchParams {
    /// The layer.
    pub layer: String,
    /// The feature id.
    #[cfg_attr(feature = "ts", ts(type = "string | number"))]
    pub id: serde_json::Value,
    /// A JSON Merge Patch (RFC 7396) for the properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
    /// A new geometry; `null` removes it; absent leaves it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "ts", ts(type = "Geometry | null"))]
    pub geometry: Option<Option<serde_json::Value>>,
    /// The version the client edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// `feature.delete` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureDeleteParams {
    /// The layer.
    pub layer: String,
    /// The feature id.
    #[cfg_attr(feature = "ts", ts(type = "string | number"))]
    pub id: serde_json::Value,
    /// The version the client deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// `feature.get` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureGetParams {
    /// The layer.
    pub layer: String,
    /// The feature id.
    #[cfg_attr(feature = "ts", ts(type = "string | number"))]
    pub id: serde_json::Value,
}

/// `feature.get` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureGetResult {
    /// The feature.
    pub feature: Feature,
}

/// `feature.query` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureQueryParams {
    /// The layer.
    pub layer: String,
    /// The filter.
    #[serde(flatten)]
    pub filter: FilterSpec,
    /// Page size (default 100, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Matching features to skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
}

/// `feature.query` result: a GeoJSON FeatureCollection with paging members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureQueryResult {
    /// Always `"FeatureCollection"`.
    #[serde(rename = "type", default)]
    pub kind: FeatureCollectionType,
    /// The matching features of this page, in a stable order.
    pub features: Vec<Feature>,
    /// The `offset` of the next page; `null` on the last page.
    #[cfg_attr(feature = "ts", ts(optional = false))]
    pub next_offset: Option<usize>,
    /// The layer's sequence number the page is as of.
    pub seq: u64,
}

/// The GeoJSON object type tag of a [`FeatureQueryResult`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum FeatureCollectionType {
    /// `"FeatureCollection"`.
    #[default]
    FeatureCollection,
}

// Read by its own `Deserialize` (below), which takes the fields the serde attributes name.
/// One operation of `feature.batch`.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum BatchOp {
    /// As `feature.create`.
    Create {
        /// The feature.
        #[cfg_attr(feature = "ts", ts(type = "FeatureInput"))]
        feature: serde_json::Value,
    },
    /// As `feature.replace`.
    Replace {
        /// Feature id.
        #[cfg_attr(feature = "ts", ts(type = "string | number"))]
        id: serde_json::Value,
        /// The feature.
        #[cfg_attr(feature = "ts", ts(type = "FeatureInput"))]
        feature: serde_json::Value,
        /// Expected version.
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(optional))]
        version: Option<u64>,
    },
    /// As `feature.patch`.
    Patch {
        /// Feature id.
        #[cfg_attr(feature = "ts", ts(type = "string | number"))]
        id: serde_json::Value,
        /// Merge patch.
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>", optional))]
        properties: Option<serde_json::Map<String, serde_json::Value>>,
        /// New geometry, `null` removes.
        #[serde(default, deserialize_with = "double_option")]
        #[cfg_attr(feature = "ts", ts(type = "Geometry | null", optional))]
        geometry: Option<Option<serde_json::Value>>,
        /// Expected version.
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(optional))]
        version: Option<u64>,
    },
    /// As `feature.delete`.
    Delete {
        /// Feature id.
        #[cfg_attr(feature = "ts", ts(type = "string | number"))]
        id: serde_json::Value,
        /// Expected version.
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(optional))]
        version: Option<u64>,
    },
}

/// The `op` of a [`BatchOp`].
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum BatchOpKind {
    Create,
    Replace,
    Patch,
    Delete,
}

/// The members a [`BatchOp`] may have.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum BatchOpField {
    Op,
    Id,
    Feature,
    Properties,
    Geometry,
    Version,
    #[serde(other)]
    Other,
}

/// Reads each member straight into its type, wherever `op` is among them. serde's derive
/// for an internally tagged enum first copies the whole object into a buffer of its own,
/// then reads the variant from that: for a batch of moving points, that copy was most of
/// the time spent decoding the request.
impl<'de> Deserialize<'de> for BatchOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        struct Op;
        impl<'de> Visitor<'de> for Op {
            type Value = BatchOp;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a batch operation (an object with `op`)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<BatchOp, A::Error> {
                fn once<T, E: Error>(
                    slot: &mut Option<T>,
                    v: T,
                    name: &'static str,
                ) -> Result<(), E> {
                    if slot.replace(v).is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    Ok(())
                }
                let mut op = None;
                let mut id = None;
                let mut feature = None;
                let mut properties: Option<Option<serde_json::Map<String, serde_json::Value>>> =
                    None;
                let mut geometry: Option<Option<serde_json::Value>> = None;
                let mut version: Option<Option<u64>> = None;
                while let Some(field) = m.next_key::<BatchOpField>()? {
                    match field {
                        BatchOpField::Op => once(&mut op, m.next_value::<BatchOpKind>()?, "op")?,
                        BatchOpField::Id => once(&mut id, m.next_value()?, "id")?,
                        BatchOpField::Feature => once(&mut feature, m.next_value()?, "feature")?,
                        BatchOpField::Properties => {
                            once(&mut properties, m.next_value()?, "properties")?
                        }
                        // Present, even as null, is `Some`: null removes the geometry.
                        BatchOpField::Geometry => once(&mut geometry, m.next_value()?, "geometry")?,
                        BatchOpField::Version => once(&mut version, m.next_value()?, "version")?,
                        BatchOpField::Other => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let need = |v: Option<serde_json::Value>, name| {
                    v.ok_or_else(|| A::Error::missing_field(name))
                };
                let version = version.flatten();
                Ok(match op.ok_or_else(|| A::Error::missing_field("op"))? {
                    BatchOpKind::Create => BatchOp::Create {
                        feature: need(feature, "feature")?,
                    },
                    BatchOpKind::Replace => BatchOp::Replace {
                        id: need(id, "id")?,
                        feature: need(feature, "feature")?,
                        version,
                    },
                    BatchOpKind::Patch => BatchOp::Patch {
                        id: need(id, "id")?,
                        properties: properties.flatten(),
                        geometry,
                        version,
                    },
                    BatchOpKind::Delete => BatchOp::Delete {
                        id: need(id, "id")?,
                        version,
                    },
                })
            }
        }
        d.deserialize_map(Op)
    }
}

/// `feature.batch` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureBatchParams {
    /// The layer.
    pub layer: String,
    /// Operations, applied in order, all or nothing.
    pub ops: Vec<BatchOp>,
    /// Idempotency key for the whole batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// `feature.batch` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureBatchResult {
    /// One result per operation, in order.
    pub results: Vec<EditResult>,
    /// The sequence number of the last change (0 for an empty batch).
    pub seq: u64,
    /// True when this answers a repeated `op_id` (nothing was applied again).
    pub replayed: bool,
}

/// The result of one applied edit: of `feature.create`, `replace`, `patch` and `delete`,
/// and of each operation of `feature.batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct EditResult {
    /// The feature id.
    pub id: String,
    /// Its version after the edit.
    pub version: u64,
    /// The change's sequence number.
    pub seq: u64,
    /// The feature after the edit (absent after a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<crate::feature::Feature>,
    /// True when this answers a repeated `op_id` (nothing was applied again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[cfg_attr(feature = "ts", ts(as = "Option<bool>"))]
    pub replayed: bool,
}

/// `feature.lock` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureLockParams {
    /// The layer.
    pub layer: String,
    /// Features to lock (all or none).
    pub ids: Vec<String>,
    /// How long, in milliseconds (default 60,000, at most 600,000). Locking again extends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// `feature.unlock` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureUnlockParams {
    /// The layer.
    pub layer: String,
    /// Features to unlock.
    pub ids: Vec<String>,
}

/// A lock as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LockInfo {
    /// The layer.
    pub layer: String,
    /// The feature id.
    pub id: String,
    /// The holder's client id.
    pub client: String,
    /// The holder's user, if authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Expiry, milliseconds since the Unix epoch.
    pub until_ms: u64,
}

/// `feature.lock` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureLockResult {
    /// The locks now held, with their new expiry.
    pub locks: Vec<LockInfo>,
}

/// `feature.unlock` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct FeatureUnlockResult {
    /// The locks released (features not locked by the caller are left out).
    pub released: Vec<LockInfo>,
}

/// A `lock` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LockPush {
    /// The lock (for an unlock, its last state).
    #[serde(flatten)]
    pub lock: LockInfo,
    /// Locked (true) or released (false).
    pub locked: bool,
}

/// `layer.import` params: features inline, or a file in the server's import directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct LayerImportParams {
    /// The layer (created, last-writer-wins off, if it does not exist).
    pub layer: String,
    /// GeoJSON Features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "Array<FeatureInput>"))]
    pub features: Option<Vec<serde_json::Value>>,
    /// A GeoJSON FeatureCollection or newline-delimited GeoJSON file (optionally `.zst`),
    /// relative to the server's import directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Features per transaction (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// A feature an import refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct Rejected {
    /// Its position in the input (0-based).
    pub index: u64,
    /// Its id, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why.
    pub reason: String,
}

/// `layer.import` result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct ImportResult {
    /// Features imported.
    pub imported: u64,
    /// Features refused.
    pub rejected: u64,
    /// The first refusals (at most 100), with reasons.
    pub rejections: Vec<Rejected>,
    /// The layer's sequence number after the import.
    pub seq: u64,
}

/// Checks a channel or layer name: 1 to 200 bytes of `A-Z a-z 0-9 _ - . : / # @ =`.
///
/// `#` separates a user-limited channel from its user (`notifications#alice`).
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("{kind} name must be 1 to 200 bytes long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:/#@=".contains(*c)))
    {
        return Err(format!(
            "{kind} name contains {c:?}; allowed are A-Z a-z 0-9 and _ - . : / # @ ="
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tiles
// ---------------------------------------------------------------------------------------------

/// A viewport: the tiles of zoom `zoom` that cover `bbox`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[serde(deny_unknown_fields)]
pub struct TileViewport {
    /// `[west, south, east, north]` in degrees; `west > east` crosses the antimeridian.
    pub bbox: [f64; 4],
    /// Zoom level (0 to 22).
    pub zoom: u8,
}

/// What a tile subscription receives when a tile changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum TileMode {
    /// A binary delta against the version the client holds when that is smaller than the
    /// tile, the full tile otherwise. The default.
    #[default]
    Delta,
    /// Always the full tile.
    Full,
    /// Only "changed, now version V" (the client refetches over HTTP with its ETag).
    Notify,
}

/// `tile.subscribe` params. Exactly one of `viewport` and `tiles`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[serde(deny_unknown_fields)]
pub struct TileSubscribeParams {
    /// A vector layer (features) or a raster tile layer.
    pub layer: String,
    /// The tiles covering a bbox at a zoom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewport: Option<TileViewport>,
    /// An explicit tile set, `"z/x/y"` each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<Vec<String>>,
    /// Deltas (default), full tiles or notices.
    #[serde(default)]
    #[cfg_attr(feature = "ts", ts(as = "Option<TileMode>"))]
    pub mode: TileMode,
    /// Versions the client already holds, `{"z/x/y": version}`: a tile held at its current
    /// version is not sent, an older one is sent as a delta against it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(
        feature = "ts",
        ts(as = "Option<std::collections::BTreeMap<String, u64>>")
    )]
    pub have: std::collections::BTreeMap<String, u64>,
}

/// `tile.subscribe` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct TileSubscribeResult {
    /// Subscription id.
    pub sub: u32,
    /// The layer.
    pub layer: String,
    /// `"vector"` (Mapbox Vector Tiles made from features) or `"raster"`.
    pub kind: String,
    /// The subscribed tiles, `"z/x/y"`.
    pub tiles: Vec<String>,
}

/// `tile.update` params: the new viewport or tile list (exactly one), and versions held.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[serde(deny_unknown_fields)]
pub struct TileUpdateParams {
    /// The subscription.
    pub sub: u32,
    /// The tiles covering a bbox at a zoom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewport: Option<TileViewport>,
    /// An explicit tile set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<Vec<String>>,
    /// Versions the client holds (for tiles entering the set, or to correct what the server
    /// believes it holds, e.g. after a delta failed to apply: give version 0).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(
        feature = "ts",
        ts(as = "Option<std::collections::BTreeMap<String, u64>>")
    )]
    pub have: std::collections::BTreeMap<String, u64>,
}

/// `tile.update` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct TileUpdateResult {
    /// Subscription id.
    pub sub: u32,
    /// Tiles that entered the set.
    pub added: Vec<String>,
    /// Tiles that left it (no more pushes for them).
    pub removed: Vec<String>,
}

/// What a `tile` push carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum TilePushKind {
    /// `data` is a delta (docs/DELTA.md) that turns version `base` into version `version`.
    Delta,
    /// `data` is the whole tile.
    Full,
    /// No data: the tile is now at `version`; fetch it over HTTP.
    Notify,
}

/// Tile bytes in a push: a base64 string (RFC 4648, with padding) in JSON, MessagePack
/// `bin` in the binary encodings, so tiles travel there without inflation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileBytes<'a>(pub Cow<'a, [u8]>);

impl Serialize for TileBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            use base64::Engine;
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for TileBytes<'_> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tile bytes (base64 text or binary)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| E::custom(format!("invalid base64: {e}")))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        let v = if d.is_human_readable() {
            d.deserialize_str(Bytes)?
        } else {
            d.deserialize_bytes(Bytes)?
        };
        Ok(TileBytes(Cow::Owned(v)))
    }
}

/// In TypeScript: base64 text (JSON) or the bytes (MessagePack).
#[cfg(feature = "ts")]
impl ts_rs::TS for TileBytes<'_> {
    type WithoutGenerics = TileBytes<'static>;
    type OptionInnerType = Self;
    fn name(_: &ts_rs::Config) -> String {
        "string | Uint8Array".into()
    }
    fn inline(cfg: &ts_rs::Config) -> String {
        Self::name(cfg)
    }
}

/// A `tile` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct TilePush<'a> {
    /// The layer.
    pub layer: Cow<'a, str>,
    /// The tile, `"z/x/y"`.
    pub tile: Cow<'a, str>,
    /// The tile's version after this push.
    pub version: u64,
    /// Delta, full tile or notice.
    pub kind: TilePushKind,
    /// The version the server believes the client holds (the base of a delta); absent when
    /// it holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// The HTTP ETag of this version (quotes included).
    pub etag: Cow<'a, str>,
    /// Delta or tile bytes (absent for notices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TileBytes<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read as a request's params are: from JSON and from MessagePack.
    fn batch_op(v: serde_json::Value) -> Result<BatchOp, String> {
        let json = serde_json::from_value::<BatchOp>(v.clone()).map_err(|e| e.to_string());
        let bytes = rmp_serde::to_vec_named(&v).expect("msgpack");
        let msgpack = rmp_serde::from_slice::<BatchOp>(&bytes).map_err(|e| e.to_string());
        // Alike, but for the wording of the decoders' own type errors.
        assert_eq!(
            format!("{:?}", json.as_ref().ok()),
            format!("{:?}", msgpack.as_ref().ok()),
            "JSON and MessagePack read {v} alike"
        );
        json
    }

    #[test]
    fn batch_ops_are_read_member_by_member() {
        let f = serde_json::json!({"type": "Feature", "geometry": null, "properties": {}});
        // `op` anywhere; unknown members ignored.
        assert!(matches!(
            batch_op(serde_json::json!({"feature": f, "x": [1, {"y": 2}], "op": "create"})),
            Ok(BatchOp::Create { feature }) if feature == f
        ));
        assert!(matches!(
            batch_op(serde_json::json!({"op": "replace", "id": 7, "feature": f, "version": 3})),
            Ok(BatchOp::Replace { id, version: Some(3), .. }) if id == 7
        ));
        // A patch: absent geometry keeps it, null removes it; null properties and version
        // are as absent ones.
        assert!(matches!(
            batch_op(
                serde_json::json!({"op": "patch", "id": "a", "properties": null, "version": null})
            ),
            Ok(BatchOp::Patch {
                geometry: None,
                properties: None,
                version: None,
                ..
            })
        ));
        assert!(matches!(
            batch_op(serde_json::json!({"op": "patch", "id": "a", "geometry": null, "properties": {"n": 1}})),
            Ok(BatchOp::Patch { geometry: Some(None), properties: Some(p), .. }) if p["n"] == 1
        ));
        assert!(matches!(
            batch_op(serde_json::json!({"op": "delete", "id": "a"})),
            Ok(BatchOp::Delete { version: None, .. })
        ));
        // What is wrong is named.
        let err = |v| batch_op(v).unwrap_err();
        assert!(err(serde_json::json!({"id": "a"})).contains("missing field `op`"));
        assert!(
            err(serde_json::json!({"op": "move", "id": "a"})).contains("unknown variant `move`")
        );
        assert!(err(serde_json::json!({"op": "delete"})).contains("missing field `id`"));
        assert!(err(serde_json::json!({"op": "create"})).contains("missing field `feature`"));
        assert!(
            err(serde_json::json!({"op": "delete", "id": "a", "version": "1"}))
                .contains("invalid type")
        );
        assert!(
            err(serde_json::json!({"op": "patch", "id": "a", "properties": [1]}))
                .contains("invalid type")
        );
        assert!(err(serde_json::json!("create")).contains("invalid type"));
        let twice = serde_json::from_str::<BatchOp>(r#"{"op": "delete", "id": "a", "id": "b"}"#);
        assert!(
            twice
                .unwrap_err()
                .to_string()
                .contains("duplicate field `id`")
        );
        // And written as it is read.
        let op = batch_op(serde_json::json!({"op": "patch", "id": "a", "geometry": null})).unwrap();
        let back = serde_json::to_value(&op).unwrap();
        assert_eq!(back["op"], "patch");
        assert!(matches!(
            batch_op(back),
            Ok(BatchOp::Patch {
                geometry: Some(None),
                ..
            })
        ));
    }

    #[test]
    fn names() {
        assert!(validate_name("channel", "chat").is_ok());
        assert!(validate_name("channel", "notifications#alice").is_ok());
        assert!(validate_name("channel", "").is_err());
        assert!(validate_name("channel", "a b").is_err());
        assert!(validate_name("channel", &"x".repeat(201)).is_err());
    }

    /// Encodes `fields` as the server does (borrowed, once per fan-out, `sub` spliced in) and
    /// decodes the frame as a client does (owned), in every encoding.
    fn through_the_wire<T>(fields: &T, raw: Option<(&str, &Payload)>) -> Vec<T::Owned>
    where
        T: Serialize + ToOwned + ?Sized,
        T::Owned: serde::de::DeserializeOwned,
    {
        crate::codec::Encoding::ALL
            .into_iter()
            .map(|enc| {
                let bytes = crate::codec::encode_push(enc, "p", fields, raw).to_bytes(300);
                let mut scratch = Vec::new();
                match crate::codec::decode_raw_server_frame(enc, &bytes, &mut scratch, 1 << 20)
                    .unwrap()
                {
                    crate::codec::RawServerFrame::Notification { params, .. } => {
                        params.decode().unwrap_or_else(|e| panic!("{enc}: {e}"))
                    }
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn pushes_encoded_borrowed_decode_owned() {
        let feature: Feature = serde_json::from_value(serde_json::json!({
            "type": "Feature", "id": "a", "geometry": {"type": "Point", "coordinates": [1.5, 2.0]},
            "properties": {"k": "v", "n": 3}, "version": 4, "updated": "2026-01-01T00:00:00.000Z"
        }))
        .unwrap();
        let change = crate::feature::Change {
            layer: "l".into(),
            seq: 9,
            op: crate::feature::ChangeOp::Update,
            id: "a".into(),
            version: 4,
            old: None,
            new: Some(feature.clone()),
            old_bbox: None,
            new_bbox: None,
            changed: vec!["k".into(), "gone".into()],
            geometry_changed: true,
            author: None,
            op_id: None,
            time_ms: 0,
        };
        for (kind, full) in [
            (FeatureKind::Enter, false),
            (FeatureKind::Update, false),
            (FeatureKind::Update, true),
            (FeatureKind::Exit, false),
        ] {
            let push = FeaturePush::new(&change, kind, full);
            assert!(matches!(push.layer, Cow::Borrowed(_)));
            for got in through_the_wire(&push, None) {
                assert_eq!(got, push, "{kind:?} {full}");
            }
        }
        // A partial update: only what changed, a removed property as null.
        let partial = FeaturePush::new(&change, FeatureKind::Update, false);
        assert_eq!(
            serde_json::to_value(&partial.properties).unwrap(),
            serde_json::json!({"k": "v", "gone": null})
        );
        let page = [feature.clone(), feature];
        let snapshot = SnapshotPush {
            layer: Cow::Borrowed("l"),
            seq: 9,
            features: Cow::Borrowed(&page),
            last: true,
        };
        for got in through_the_wire(&snapshot, None) {
            assert_eq!(got, snapshot);
        }
        let data = Payload::from_json(bytes::Bytes::from_static(br#"{"t": [1, "x"]}"#)).unwrap();
        let message = MessagePush {
            channel: Cow::Borrowed("c"),
            offset: 7,
            data: Cow::Borrowed(&data),
        };
        for got in through_the_wire(&message, Some(("data", &data))) {
            assert_eq!((&*got.channel, got.offset), ("c", 7));
            assert_eq!(got.data.to_value(), data.to_value());
        }
        // Tile bytes: base64 text in JSON, `bin` in MessagePack; either way the same bytes.
        let tile = [0u8, 1, 2, 255, 254];
        let push = TilePush {
            layer: Cow::Borrowed("l"),
            tile: Cow::Borrowed("3/1/2"),
            version: 5,
            kind: TilePushKind::Delta,
            base: Some(4),
            etag: Cow::Borrowed("\"5-0\""),
            data: Some(TileBytes(Cow::Borrowed(&tile))),
        };
        for got in through_the_wire(&push, None) {
            assert_eq!(got, push);
        }
        let json: TileBytes<'static> = serde_json::from_str("\"AAEC\"").unwrap();
        assert_eq!(&*json.0, &[0, 1, 2]);
        assert!(serde_json::from_str::<TileBytes<'static>>("\"not base64!\"").is_err());
    }
}

/// `presence.subscribe` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct PresenceSubscribeParams {
    /// The layer.
    pub layer: String,
}

/// `presence.subscribe` result. `join`, `leave` and `cursor` pushes follow, carrying `sub`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct PresenceSubscribeResult {
    /// Subscription id (end it with `unsubscribe`).
    pub sub: u32,
    /// The layer.
    pub layer: String,
    /// Who is on the layer now, this client included.
    pub members: Vec<ClientInfo>,
}

/// `presence.cursor` params.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct CursorParams {
    /// The layer.
    pub layer: String,
    /// Where the pointer is, `[lon, lat]`; absent or `null` when it left the map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional = nullable))]
    pub position: Option<[f64; 2]>,
    /// Features being edited (for highlighting), at most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "ts", ts(as = "Option<Vec<String>>"))]
    pub editing: Vec<String>,
}

/// A `cursor` push (besides `sub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
pub struct CursorPush {
    /// The layer.
    pub layer: String,
    /// Whose cursor.
    pub client: ClientInfo,
    /// Where, `[lon, lat]`; `null` when it left the map.
    #[cfg_attr(feature = "ts", ts(optional = false))]
    pub position: Option<[f64; 2]>,
    /// Features being edited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "ts", ts(as = "Option<Vec<String>>"))]
    pub editing: Vec<String>,
}
