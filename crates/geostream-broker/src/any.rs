//! The broker a node is configured with, chosen once at start-up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    Broker, BrokerHandler, BusEvent, ClientInfo, HistoryLimits, HistoryPage, MemoryBroker, Result,
    StreamPosition,
};

/// Which broker to connect, and how.
#[derive(Clone, Debug)]
pub enum BrokerSettings {
    /// In-process: one node.
    Memory,
    /// NATS with JetStream, for several nodes.
    #[cfg(feature = "nats")]
    Nats(crate::NatsOptions),
}

/// The configured broker. An enum rather than a trait object: the choice is made once at
/// start-up and the hot path stays statically dispatched.
#[derive(Clone, Debug)]
pub enum AnyBroker {
    /// In-process.
    Memory(MemoryBroker),
    /// NATS with JetStream, for several nodes.
    #[cfg(feature = "nats")]
    Nats(crate::NatsBroker),
}

impl AnyBroker {
    /// Connects the configured broker, delivering to `handler`. A broker that cannot be
    /// reached is an error here, before the node serves anyone.
    pub async fn connect(
        settings: &BrokerSettings,
        limits: HistoryLimits,
        handler: Arc<dyn BrokerHandler>,
    ) -> Result<AnyBroker> {
        Ok(match settings {
            BrokerSettings::Memory => {
                let b = MemoryBroker::new(limits);
                b.set_handler(handler);
                b.sweep_every(Duration::from_secs(30));
                AnyBroker::Memory(b)
            }
            #[cfg(feature = "nats")]
            BrokerSettings::Nats(opts) => {
                AnyBroker::Nats(crate::NatsBroker::connect(opts.clone(), limits, handler).await?)
            }
        })
    }
}

macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBroker::Memory($b) => $e,
            #[cfg(feature = "nats")]
            AnyBroker::Nats($b) => $e,
        }
    };
}

impl Broker for AnyBroker {
    async fn publish(&self, topic: &str, kind: u8, data: Bytes) -> Result<StreamPosition> {
        each!(self, b => b.publish(topic, kind, data).await)
    }

    async fn publish_event(&self, topic: &str, event: Arc<BusEvent>) -> Result<()> {
        each!(self, b => b.publish_event(topic, event).await)
    }

    async fn history(&self, topic: &str, since: Option<u64>, limit: usize) -> Result<HistoryPage> {
        each!(self, b => b.history(topic, since, limit).await)
    }

    async fn position(&self, topic: &str) -> Result<StreamPosition> {
        each!(self, b => b.position(topic).await)
    }

    async fn subscribe(&self, topic: &str) -> Result<()> {
        each!(self, b => b.subscribe(topic).await)
    }

    async fn unsubscribe(&self, topic: &str) -> Result<()> {
        each!(self, b => b.unsubscribe(topic).await)
    }

    async fn set_member(&self, topic: &str, key: &str, member: Option<&ClientInfo>) {
        each!(self, b => b.set_member(topic, key, member).await)
    }

    fn remote_members(&self, topic: &str) -> Vec<ClientInfo> {
        each!(self, b => b.remote_members(topic))
    }

    fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        each!(self, b => b.reconnects())
    }
}
