//! A node: this process's part of a deployment, composed from its configuration. The store
//! and the broker come first (a node that cannot reach them exits with the reason before it
//! serves anyone), then the hub and the services over them: streams (channels, subscriptions,
//! gap repair, in the hub crate), layers (edits and locks) and tiles; then the transports'
//! shared state: who may connect (auth, connection limits), metrics and open sessions.
//!
//! A message's way: a transport calls `node.streams.publish` → the broker gives it an
//! offset, keeps it in history and hands it to every node's [`Bridge`] → the hub queues one
//! prepared push in each matching session's outbox → each session's writer sends it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use geostream_broker::{AnyBroker, BrokerSettings};
use geostream_core::codec::Encoding;
use geostream_hub::{BusHandler, Hub, HubLimits, OutboxLimits, Session, StreamsConfig, SubTarget};
use geostream_store::Store;

use crate::backends::{AnyStore, NodeStreams, StoreLog, broker_settings};
use crate::bridge::Bridge;
use crate::config::{BrokerConfig, Config};
use crate::error::Result;
use crate::forward::Forwarding;
use crate::geofences::Geofences;
use crate::layers::Layers;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::tiles::Tiles;

/// This process's part of a geostream deployment.
pub struct Node {
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// Local subscriptions and fan-out.
    pub hub: Arc<Hub>,
    /// Channels and subscriptions over the hub, the broker and the store's change logs.
    pub streams: Arc<NodeStreams>,
    /// Layers, edits and locks.
    pub layers: Arc<Layers>,
    /// The store.
    pub store: AnyStore,
    /// Vector and raster tiles, and tile subscriptions.
    pub tiles: Arc<Tiles>,
    /// Geofences and their evaluator.
    pub geofences: Arc<Geofences>,
    /// Verifies tokens and says what anonymous clients may do.
    pub auth: crate::auth::Authenticator,
    /// Open connections, in total and per IP address.
    pub connections: crate::limits::ConnectionLimits,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Open sessions.
    pub sessions: Sessions,
}

impl Node {
    /// Builds a node from configuration.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
        config.validate()?;
        let auth = crate::auth::Authenticator::new(&config)?;
        let connections = crate::limits::ConnectionLimits::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        let config = Arc::new(config);
        let store = AnyStore::open(&config).await?;
        let hub = Arc::new(Hub::new(HubLimits {
            max_subscriptions: config.limits.max_subscriptions,
            outbox: OutboxLimits {
                budget_bytes: config.limits.outbox_bytes,
                slow_grace: Duration::from_secs(config.limits.slow_consumer_grace_secs),
            },
            recovery_buffer: 10_000,
            spatial_index: config.layers.spatial_index,
            dispatch_shards: config.layers.dispatch_shards.max(1),
        }));
        // The hub must know where every layer's change log stands before anything is
        // dispatched, so it recognises a missing change as a gap.
        for l in store.list_layers().await.context("cannot list layers")? {
            hub.init_layer(&l.name, l.seq);
        }
        let tiles = Arc::new(Tiles::open(&config, store.clone())?);
        let (bus, gaps) = BusHandler::new(hub.clone());
        let fence_wake = Arc::new(tokio::sync::Notify::new());
        let bridge = Arc::new(Bridge::new(
            hub.clone(),
            bus,
            tiles.clone(),
            store.clone(),
            config.layers.lock_grace_ms,
            fence_wake.clone(),
        ));
        let (settings, limits) = broker_settings(&config);
        let broker = AnyBroker::connect(&settings, limits, bridge)
            .await
            .context("cannot connect to the broker")?;
        // A shared store written by several nodes: small writes go to their owner.
        let forwarding = match (&broker, &config.broker, &store) {
            (
                AnyBroker::Nats(nats),
                BrokerConfig::Nats {
                    forward_writes: true,
                    write_owner,
                    ..
                },
                AnyStore::Postgres(_),
            ) => match &settings {
                BrokerSettings::Nats(o) => {
                    Some(Forwarding::new(nats.clone(), *write_owner, o.node_timeout))
                }
                BrokerSettings::Memory => None,
            },
            _ => None,
        };
        let forwarded = match &forwarding {
            Some(f) => Some(
                f.requests()
                    .await
                    .context("cannot listen for other nodes' writes")?,
            ),
            None => None,
        };
        let streams = geostream_hub::Streams::new(
            hub.clone(),
            broker,
            StoreLog(store.clone()),
            StreamsConfig {
                history_size: config.channels.history_size,
                history_page: config.channels.history_page,
                max_message_bytes: config.websocket.max_frame_bytes,
                max_replay: config.layers.max_replay,
            },
            gaps,
        );
        let layers = Layers::start(
            store.clone(),
            streams.clone(),
            hub.clone(),
            config.layers.clone(),
            forwarding,
        );
        if let Some(requests) = forwarded {
            layers.serve_forwarded(requests);
        }
        tiles.start();
        let geofences = Geofences::new(store.clone(), streams.clone(), config.clone(), fence_wake);
        geofences.start();
        Ok(Arc::new(Node {
            config,
            hub,
            streams,
            layers,
            store,
            tiles,
            geofences,
            auth,
            connections,
            metrics: Arc::new(Metrics::default()),
            sessions: Sessions::default(),
        }))
    }

    /// Opens a session for a new connection.
    pub fn open_session(&self, encoding: Encoding, user: Option<String>) -> Arc<Session> {
        let s = self.hub.new_session(encoding, user);
        self.sessions.add(&s);
        s
    }

    /// Closes a session: its subscriptions end and others see it leave.
    pub async fn close_session(&self, session: &Arc<Session>) {
        for r in self.streams.close_session(session).await {
            self.after_unsubscribe(session, r.sub, &r.target);
        }
        self.sessions.remove(session);
    }

    /// Ends one subscription of any kind.
    pub async fn unsubscribe(&self, session: &Arc<Session>, sub: u32) -> Result<()> {
        let r = self.streams.unsubscribe(session, sub).await?;
        self.after_unsubscribe(session, r.sub, &r.target);
        Ok(())
    }

    fn after_unsubscribe(&self, session: &Session, sub: u32, target: &SubTarget) {
        if let SubTarget::Tiles { .. } = target {
            self.tiles.on_unsubscribed(session.id(), sub);
        }
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.sessions.is_draining()
    }

    /// Starts a graceful shutdown; see [`Sessions::drain`].
    pub async fn drain(&self, timeout: Duration) {
        self.sessions.drain(timeout).await;
    }
}
