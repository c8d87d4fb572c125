//! What a fence reports: one [`FenceEvent`] per detection, the body of a message on the
//! fence's channel, of a webhook POST and of a NATS message.

use serde::{Deserialize, Serialize};

use crate::spec::Detect;

/// Why a feature left (on `exit` and `faraway` events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The feature was deleted.
    Deleted,
    /// The feature changed and no longer matches the fence's filter.
    Filter,
    /// The fence was deleted or expired.
    FenceClosed,
    /// The zone was deleted from the zones layer (or lost its polygon).
    ZoneRemoved,
    /// The zone's polygon was edited: the feature is inside the new one (`enter`) or not
    /// (`exit`).
    ZoneChanged,
}

/// One detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FenceEvent {
    /// The fence.
    pub fence: String,
    /// What happened.
    pub kind: Detect,
    /// The feature's layer.
    pub layer: String,
    /// The feature.
    pub id: String,
    /// The feature's version after the change (for a deleted feature, the version of its
    /// deletion).
    pub version: u64,
    /// The layer whose change caused the event, when it is not `layer` (a zones layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The sequence number of the change that caused the event in its layer's change log
    /// (for `fence_closed`, the last change of `layer` the fence saw).
    pub seq: u64,
    /// The event's place among the fence's events of that change: 0, 1, ...
    pub n: u32,
    /// The change's time, ms since the Unix epoch.
    pub time_ms: u64,
    /// The feature's position after the change (before it, when deleted): its point, or
    /// the centre of its bounding box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<[f64; 2]>,
    /// The zone (a feature id of the zones layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The other feature of a `nearby` / `faraway` pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
    /// The distance between the pair after the change, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
    /// Why the feature left, when it did not simply move out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Unique per event and the same every time the same change is evaluated: the webhook's
    /// idempotency key. `FENCE:LAYER:SEQ:N`, or `FENCE:closed:N`.
    pub key: String,
}

impl FenceEvent {
    /// The event as JSON bytes (the channel message and webhook body).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events are always serializable")
    }

    /// The position of the event in its source log: the source layer (`cause` or `layer`),
    /// the sequence number and `n`. Events of one source are produced in this order.
    pub fn source(&self) -> (&str, u64, u32) {
        (
            self.cause.as_deref().unwrap_or(&self.layer),
            self.seq,
            self.n,
        )
    }
}
