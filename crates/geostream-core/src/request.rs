//! Requests and notifications as typed values: a frame's method and params are parsed once
//! into a [`Request`] (or a [`Notification`]), and every variant says what it needs to be
//! allowed ([`Request::access`]). The match there has no default arm, so a method cannot be
//! added without an access rule.

use crate::api::{
    self, CancelParams, ChannelHistoryParams, ChannelPresenceParams, ChannelSubscribeParams,
    CursorParams, FeatureBatchParams, FeatureCreateParams, FeatureDeleteParams, FeatureGetParams,
    FeatureLockParams, FeaturePatchParams, FeatureQueryParams, FeatureReplaceParams,
    FeatureUnlockParams, FenceDefinition, FenceNameParams, HelloParams, LayerCreateParams,
    LayerImportParams, LayerNameParams, LayerSubscribeParams, PresenceSubscribeParams,
    SubscriptionUpdateParams, TileSubscribeParams, TileUpdateParams, UnsubscribeParams,
};
use crate::codec::Params;
use crate::error::{ErrorCode, RpcError};
use crate::payload::Payload;

/// Every request method the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `hello`
    Hello,
    /// `ping`
    Ping,
    /// `unsubscribe`
    Unsubscribe,
    /// `channel.subscribe`
    ChannelSubscribe,
    /// `channel.publish`
    ChannelPublish,
    /// `channel.history`
    ChannelHistory,
    /// `channel.presence`
    ChannelPresence,
    /// `layer.create`
    LayerCreate,
    /// `layer.list`
    LayerList,
    /// `layer.get`
    LayerGet,
    /// `layer.delete`
    LayerDelete,
    /// `layer.subscribe`
    LayerSubscribe,
    /// `layer.import`
    LayerImport,
    /// `subscription.update`
    SubscriptionUpdate,
    /// `feature.create`
    FeatureCreate,
    /// `feature.replace`
    FeatureReplace,
    /// `feature.patch`
    FeaturePatch,
    /// `feature.delete`
    FeatureDelete,
    /// `feature.get`
    FeatureGet,
    /// `feature.query`
    FeatureQuery,
    /// `feature.batch`
    FeatureBatch,
    /// `feature.lock`
    FeatureLock,
    /// `feature.unlock`
    FeatureUnlock,
    /// `presence.subscribe`
    PresenceSubscribe,
    /// `presence.cursor` (also accepted as a notification)
    PresenceCursor,
    /// `tile.subscribe`
    TileSubscribe,
    /// `tile.update`
    TileUpdate,
    /// `fence.create`.
    FenceCreate,
    /// `fence.list`.
    FenceList,
    /// `fence.get`.
    FenceGet,
    /// `fence.delete`.
    FenceDelete,
}

/// What a method touches, which decides the right it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only the connection itself (its session, its own subscriptions): any connected client.
    Connection,
    /// A layer, read.
    LayerRead,
    /// A layer, written.
    LayerWrite,
    /// A channel, read (subscribe, history, presence).
    ChannelRead,
    /// A channel, published to.
    ChannelPublish,
    /// Every layer, each filtered by read rights in the answer (`layer.list`).
    LayerCatalog,
    /// A geofence, created or deleted: write access to its channel `fence:NAME` (the name
    /// is the fence's; the server also checks read access to the layers it watches).
    FenceManage,
    /// A geofence, read: read access to its channel `fence:NAME`.
    FenceRead,
    /// Every geofence, each filtered by read rights in the answer (`fence.list`).
    FenceCatalog,
}

impl Method {
    /// Every method, in documentation order.
    pub const ALL: [Method; 31] = [
        Method::Hello,
        Method::Ping,
        Method::Unsubscribe,
        Method::ChannelSubscribe,
        Method::ChannelPublish,
        Method::ChannelHistory,
        Method::ChannelPresence,
        Method::LayerCreate,
        Method::LayerList,
        Method::LayerGet,
        Method::LayerDelete,
        Method::LayerSubscribe,
        Method::LayerImport,
        Method::SubscriptionUpdate,
        Method::FeatureCreate,
        Method::FeatureReplace,
        Method::FeaturePatch,
        Method::FeatureDelete,
        Method::FeatureGet,
        Method::FeatureQuery,
        Method::FeatureBatch,
        Method::FeatureLock,
        Method::FeatureUnlock,
        Method::PresenceSubscribe,
        Method::PresenceCursor,
        Method::TileSubscribe,
        Method::TileUpdate,
        Method::FenceCreate,
        Method::FenceList,
        Method::FenceGet,
        Method::FenceDelete,
    ];

    /// The method's name on the wire.
    pub const fn name(self) -> &'static str {
        use api::method as m;
        match self {
            Method::Hello => m::HELLO,
            Method::Ping => m::PING,
            Method::Unsubscribe => m::UNSUBSCRIBE,
            Method::ChannelSubscribe => m::CHANNEL_SUBSCRIBE,
            Method::ChannelPublish => m::CHANNEL_PUBLISH,
            Method::ChannelHistory => m::CHANNEL_HISTORY,
            Method::ChannelPresence => m::CHANNEL_PRESENCE,
            Method::LayerCreate => m::LAYER_CREATE,
            Method::LayerList => m::LAYER_LIST,
            Method::LayerGet => m::LAYER_GET,
            Method::LayerDelete => m::LAYER_DELETE,
            Method::LayerSubscribe => m::LAYER_SUBSCRIBE,
            Method::LayerImport => m::LAYER_IMPORT,
            Method::SubscriptionUpdate => m::SUBSCRIPTION_UPDATE,
            Method::FeatureCreate => m::FEATURE_CREATE,
            Method::FeatureReplace => m::FEATURE_REPLACE,
            Method::FeaturePatch => m::FEATURE_PATCH,
            Method::FeatureDelete => m::FEATURE_DELETE,
            Method::FeatureGet => m::FEATURE_GET,
            Method::FeatureQuery => m::FEATURE_QUERY,
            Method::FeatureBatch => m::FEATURE_BATCH,
            Method::FeatureLock => m::FEATURE_LOCK,
            Method::FeatureUnlock => m::FEATURE_UNLOCK,
            Method::PresenceSubscribe => m::PRESENCE_SUBSCRIBE,
            Method::PresenceCursor => m::PRESENCE_CURSOR,
            Method::TileSubscribe => m::TILE_SUBSCRIBE,
            Method::TileUpdate => m::TILE_UPDATE,
            Method::FenceCreate => m::FENCE_CREATE,
            Method::FenceList => m::FENCE_LIST,
            Method::FenceGet => m::FENCE_GET,
            Method::FenceDelete => m::FENCE_DELETE,
        }
    }

    /// The method with this name.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// What the method touches: the right a client needs, checked before it runs.
    pub const fn scope(self) -> Scope {
        match self {
            Method::Hello
            | Method::Ping
            | Method::Unsubscribe
            | Method::SubscriptionUpdate
            | Method::TileUpdate => Scope::Connection,
            Method::ChannelSubscribe | Method::ChannelHistory | Method::ChannelPresence => {
                Scope::ChannelRead
            }
            Method::ChannelPublish => Scope::ChannelPublish,
            Method::LayerList => Scope::LayerCatalog,
            Method::LayerGet
            | Method::LayerSubscribe
            | Method::FeatureGet
            | Method::FeatureQuery
            | Method::PresenceSubscribe
            | Method::PresenceCursor
            | Method::TileSubscribe => Scope::LayerRead,
            Method::LayerCreate
            | Method::LayerDelete
            | Method::LayerImport
            | Method::FeatureCreate
            | Method::FeatureReplace
            | Method::FeaturePatch
            | Method::FeatureDelete
            | Method::FeatureBatch
            | Method::FeatureLock
            | Method::FeatureUnlock => Scope::LayerWrite,
            Method::FenceCreate | Method::FenceDelete => Scope::FenceManage,
            Method::FenceGet => Scope::FenceRead,
            Method::FenceList => Scope::FenceCatalog,
        }
    }

    /// Valid params for the method naming layer or channel `target`, as a client would send
    /// them (for tests that go through every method, and for the documentation).
    pub fn example_params(self, target: &str) -> serde_json::Value {
        use serde_json::json;
        let point = json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1.0, 2.0]}, "properties": {}});
        match self {
            Method::Hello => json!({"protocol": 1}),
            Method::Ping => json!({}),
            Method::Unsubscribe => json!({"sub": 1}),
            Method::ChannelSubscribe | Method::ChannelPresence | Method::ChannelHistory => {
                json!({"channel": target})
            }
            Method::ChannelPublish => json!({"channel": target, "data": {"n": 1}}),
            Method::LayerCreate | Method::LayerGet | Method::LayerDelete => {
                json!({"name": target})
            }
            Method::LayerList => json!({}),
            Method::LayerSubscribe => json!({"layer": target, "bbox": [0, 0, 10, 10]}),
            Method::LayerImport => json!({"layer": target, "features": [point]}),
            Method::SubscriptionUpdate => json!({"sub": 1, "bbox": [0, 0, 1, 1]}),
            Method::FeatureCreate => json!({"layer": target, "feature": point}),
            Method::FeatureReplace => json!({"layer": target, "id": "a", "feature": point}),
            Method::FeaturePatch => json!({"layer": target, "id": "a", "properties": {"k": 1}}),
            Method::FeatureDelete | Method::FeatureGet => json!({"layer": target, "id": "a"}),
            Method::FeatureQuery => json!({"layer": target}),
            Method::FeatureBatch => {
                json!({"layer": target, "ops": [{"op": "create", "feature": point}]})
            }
            Method::FeatureLock | Method::FeatureUnlock => json!({"layer": target, "ids": ["a"]}),
            Method::PresenceSubscribe => json!({"layer": target}),
            Method::PresenceCursor => json!({"layer": target, "position": [1.0, 2.0]}),
            Method::TileSubscribe => json!({"layer": target, "tiles": ["0/0/0"]}),
            Method::TileUpdate => json!({"sub": 1, "tiles": ["0/0/0"]}),
            Method::FenceCreate => {
                json!({"name": target, "layer": target, "area": {"bbox": [0, 0, 1, 1]}})
            }
            Method::FenceList => json!({}),
            Method::FenceGet | Method::FenceDelete => json!({"name": target}),
        }
    }
}

/// A request, parsed.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Request {
    Hello(HelloParams),
    /// `data` is echoed as sent.
    Ping {
        data: Option<Payload>,
    },
    Unsubscribe(UnsubscribeParams),
    ChannelSubscribe(ChannelSubscribeParams),
    /// `data` is kept as sent (raw JSON or MessagePack).
    ChannelPublish {
        channel: String,
        data: Payload,
    },
    ChannelHistory(ChannelHistoryParams),
    ChannelPresence(ChannelPresenceParams),
    LayerCreate(LayerCreateParams),
    LayerList,
    LayerGet(LayerNameParams),
    LayerDelete(LayerNameParams),
    LayerSubscribe(LayerSubscribeParams),
    LayerImport(LayerImportParams),
    SubscriptionUpdate(SubscriptionUpdateParams),
    FeatureCreate(FeatureCreateParams),
    FeatureReplace(FeatureReplaceParams),
    FeaturePatch(FeaturePatchParams),
    FeatureDelete(FeatureDeleteParams),
    FeatureGet(FeatureGetParams),
    FeatureQuery(FeatureQueryParams),
    FeatureBatch(FeatureBatchParams),
    FeatureLock(FeatureLockParams),
    FeatureUnlock(FeatureUnlockParams),
    PresenceSubscribe(PresenceSubscribeParams),
    PresenceCursor(CursorParams),
    TileSubscribe(TileSubscribeParams),
    TileUpdate(TileUpdateParams),
    FenceCreate(FenceDefinition),
    FenceList,
    FenceGet(FenceNameParams),
    FenceDelete(FenceNameParams),
}

/// The right a parsed request needs: its [`Scope`] and the layer or channel it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access<'a> {
    /// What it touches.
    pub scope: Scope,
    /// The layer or channel name (empty for [`Scope::Connection`] and
    /// [`Scope::LayerCatalog`]).
    pub name: &'a str,
}

impl Request {
    /// Parses a request. An unknown method is `method_not_found`; params that do not fit
    /// the method are `invalid_params`.
    pub fn parse(method: &str, params: &Params<'_>) -> Result<Request, RpcError> {
        let Some(m) = Method::from_name(method) else {
            return Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("unknown method {method:?}"),
            ));
        };
        Ok(match m {
            Method::Hello => Request::Hello(params.parse()?),
            Method::Ping => Request::Ping {
                data: params.field("data")?,
            },
            Method::Unsubscribe => Request::Unsubscribe(params.parse()?),
            Method::ChannelSubscribe => Request::ChannelSubscribe(params.parse()?),
            Method::ChannelPublish => {
                let p: api::ChannelPublishParams = params.parse()?;
                let Some(data) = params.field("data")? else {
                    return Err(RpcError::invalid_params(
                        "invalid params: missing field `data`",
                    ));
                };
                Request::ChannelPublish {
                    channel: p.channel,
                    data,
                }
            }
            Method::ChannelHistory => Request::ChannelHistory(params.parse()?),
            Method::ChannelPresence => Request::ChannelPresence(params.parse()?),
            Method::LayerCreate => Request::LayerCreate(params.parse()?),
            Method::LayerList => Request::LayerList,
            Method::LayerGet => Request::LayerGet(params.parse()?),
            Method::LayerDelete => Request::LayerDelete(params.parse()?),
            Method::LayerSubscribe => Request::LayerSubscribe(params.parse()?),
            Method::LayerImport => Request::LayerImport(params.parse()?),
            Method::SubscriptionUpdate => Request::SubscriptionUpdate(params.parse()?),
            Method::FeatureCreate => Request::FeatureCreate(params.parse()?),
            Method::FeatureReplace => Request::FeatureReplace(params.parse()?),
            Method::FeaturePatch => Request::FeaturePatch(params.parse()?),
            Method::FeatureDelete => Request::FeatureDelete(params.parse()?),
            Method::FeatureGet => Request::FeatureGet(params.parse()?),
            Method::FeatureQuery => Request::FeatureQuery(params.parse()?),
            Method::FeatureBatch => Request::FeatureBatch(params.parse()?),
            Method::FeatureLock => Request::FeatureLock(params.parse()?),
            Method::FeatureUnlock => Request::FeatureUnlock(params.parse()?),
            Method::PresenceSubscribe => Request::PresenceSubscribe(params.parse()?),
            Method::PresenceCursor => Request::PresenceCursor(params.parse()?),
            Method::TileSubscribe => Request::TileSubscribe(params.parse()?),
            Method::TileUpdate => Request::TileUpdate(params.parse()?),
            Method::FenceCreate => Request::FenceCreate(params.parse()?),
            Method::FenceList => Request::FenceList,
            Method::FenceGet => Request::FenceGet(params.parse()?),
            Method::FenceDelete => Request::FenceDelete(params.parse()?),
        })
    }

    /// The method.
    pub fn method(&self) -> Method {
        match self {
            Request::Hello(_) => Method::Hello,
            Request::Ping { .. } => Method::Ping,
            Request::Unsubscribe(_) => Method::Unsubscribe,
            Request::ChannelSubscribe(_) => Method::ChannelSubscribe,
            Request::ChannelPublish { .. } => Method::ChannelPublish,
            Request::ChannelHistory(_) => Method::ChannelHistory,
            Request::ChannelPresence(_) => Method::ChannelPresence,
            Request::LayerCreate(_) => Method::LayerCreate,
            Request::LayerList => Method::LayerList,
            Request::LayerGet(_) => Method::LayerGet,
            Request::LayerDelete(_) => Method::LayerDelete,
            Request::LayerSubscribe(_) => Method::LayerSubscribe,
            Request::LayerImport(_) => Method::LayerImport,
            Request::SubscriptionUpdate(_) => Method::SubscriptionUpdate,
            Request::FeatureCreate(_) => Method::FeatureCreate,
            Request::FeatureReplace(_) => Method::FeatureReplace,
            Request::FeaturePatch(_) => Method::FeaturePatch,
            Request::FeatureDelete(_) => Method::FeatureDelete,
            Request::FeatureGet(_) => Method::FeatureGet,
            Request::FeatureQuery(_) => Method::FeatureQuery,
            Request::FeatureBatch(_) => Method::FeatureBatch,
            Request::FeatureLock(_) => Method::FeatureLock,
            Request::FeatureUnlock(_) => Method::FeatureUnlock,
            Request::PresenceSubscribe(_) => Method::PresenceSubscribe,
            Request::PresenceCursor(_) => Method::PresenceCursor,
            Request::TileSubscribe(_) => Method::TileSubscribe,
            Request::TileUpdate(_) => Method::TileUpdate,
            Request::FenceCreate(_) => Method::FenceCreate,
            Request::FenceList => Method::FenceList,
            Request::FenceGet(_) => Method::FenceGet,
            Request::FenceDelete(_) => Method::FenceDelete,
        }
    }

    /// The right the request needs. The name is the one the request acts on; for methods of
    /// [`Scope::Connection`] the server checks that the subscription is this connection's.
    pub fn access(&self) -> Access<'_> {
        let name: &str = match self {
            Request::Hello(_)
            | Request::Ping { .. }
            | Request::Unsubscribe(_)
            | Request::SubscriptionUpdate(_)
            | Request::TileUpdate(_)
            | Request::LayerList
            | Request::FenceList => "",
            Request::FenceCreate(p) => p.0.get("name").and_then(|v| v.as_str()).unwrap_or(""),
            Request::FenceGet(p) | Request::FenceDelete(p) => &p.name,
            Request::ChannelSubscribe(p) => &p.channel,
            Request::ChannelPublish { channel, .. } => channel,
            Request::ChannelHistory(p) => &p.channel,
            Request::ChannelPresence(p) => &p.channel,
            Request::LayerCreate(p) => &p.name,
            Request::LayerGet(p) | Request::LayerDelete(p) => &p.name,
            Request::LayerSubscribe(p) => &p.layer,
            Request::LayerImport(p) => &p.layer,
            Request::FeatureCreate(p) => &p.layer,
            Request::FeatureReplace(p) => &p.layer,
            Request::FeaturePatch(p) => &p.layer,
            Request::FeatureDelete(p) => &p.layer,
            Request::FeatureGet(p) => &p.layer,
            Request::FeatureQuery(p) => &p.layer,
            Request::FeatureBatch(p) => &p.layer,
            Request::FeatureLock(p) => &p.layer,
            Request::FeatureUnlock(p) => &p.layer,
            Request::PresenceSubscribe(p) => &p.layer,
            Request::PresenceCursor(p) => &p.layer,
            Request::TileSubscribe(p) => &p.layer,
        };
        Access {
            scope: self.method().scope(),
            name,
        }
    }
}

/// A notification from a client, parsed. Other notifications are ignored (JSON-RPC forbids
/// answering them).
#[derive(Clone, Debug)]
pub enum Notification {
    /// `$/cancelRequest`: abort a running request of this connection.
    Cancel(CancelParams),
    /// `presence.cursor` sent as a notification (best effort: dropped when invalid or over
    /// the rate).
    Cursor(CursorParams),
}

impl Notification {
    /// Parses a notification; `None` for methods that are not notifications or params that
    /// do not fit.
    pub fn parse(method: &str, params: &Params<'_>) -> Option<Notification> {
        match method {
            api::method::CANCEL_REQUEST => params.parse().ok().map(Notification::Cancel),
            api::method::PRESENCE_CURSOR => params.parse().ok().map(Notification::Cursor),
            _ => None,
        }
    }

    /// The right it needs (see [`Request::access`]).
    pub fn access(&self) -> Access<'_> {
        match self {
            Notification::Cancel(_) => Access {
                scope: Scope::Connection,
                name: "",
            },
            Notification::Cursor(p) => Access {
                scope: Method::PresenceCursor.scope(),
                name: &p.layer,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_examples_parse() {
        let mut seen = std::collections::HashSet::new();
        for m in Method::ALL {
            assert!(seen.insert(m.name()), "{} listed twice", m.name());
            assert_eq!(Method::from_name(m.name()), Some(m));
            let params = serde_json::to_string(&m.example_params("x")).unwrap();
            let raw = serde_json::value::RawValue::from_string(params).unwrap();
            let r = Request::parse(m.name(), &Params::Json(&raw))
                .unwrap_or_else(|e| panic!("{}: {e}", m.name()));
            assert_eq!(r.method(), m);
            let a = r.access();
            assert_eq!(a.scope, m.scope());
            let named = !matches!(
                a.scope,
                Scope::Connection | Scope::LayerCatalog | Scope::FenceCatalog
            );
            assert_eq!(a.name == "x", named, "{}: names its target", m.name());
        }
        assert_eq!(
            Request::parse("nope", &Params::Absent).unwrap_err().code,
            ErrorCode::MethodNotFound
        );
    }
}
