//! Geofences: areas the server watches on its own, whether or not anyone is connected, and
//! the events it reports when features of a layer enter, leave, stay in or cross them, or
//! come near each other.
//!
//! * [`FenceSpec`] is a fence as users define it (JSON), [`FenceRecord`] as it is stored,
//!   [`Fence`] checked and compiled.
//! * [`Engine`] holds a node's fences, indexed by layer, and evaluates each change of the
//!   layers' change logs into [`FenceEvent`]s: a pure function of the log, so the same
//!   change always gives the same events with the same keys.
//!
//! Knows features and geometry; not the store, the broker or the network (the server's
//! `geofences` module runs the engine over them).
#![warn(missing_docs)]

mod engine;
mod event;
mod spec;

pub use engine::{Engine, position};
pub use event::{FenceEvent, Reason};
pub use spec::{
    CHANNEL_PREFIX, Detect, DetectSet, Fence, FenceRecord, FenceSpec, MAX_ROAM_M, NatsSpec,
    RoamSpec, WebhookSpec, ZonesSpec, channel_of,
};

/// Errors of fence definitions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FenceError {
    /// The definition is not valid.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests;
