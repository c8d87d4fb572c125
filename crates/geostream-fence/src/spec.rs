//! What a fence is: its definition as users write it ([`FenceSpec`], the JSON of
//! `POST /v1/geofences` and of the store), and the checked, compiled form the engine runs
//! ([`Fence`]).

use std::sync::Arc;

use geostream_core::api::validate_name;
use geostream_filter::{AttributeFilter, Limits, SpatialFilter, parse_datetime_ms};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::FenceError;

/// The prefix of every fence's event channel: fence `docks` appends to `fence:docks`.
pub const CHANNEL_PREFIX: &str = "fence:";

/// What a fence reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detect {
    /// A feature that was outside (or did not exist, or did not match the filter) is inside.
    Enter,
    /// A feature that was inside is outside, deleted, no longer matches the filter, or the
    /// fence (or its zone) ended.
    Exit,
    /// A feature that was inside changed and is still inside.
    Inside,
    /// A feature moved from outside to outside, and the straight segment between its two
    /// positions passes through the area.
    Cross,
    /// Two features came within the roaming distance of each other.
    Nearby,
    /// Two features that were within the roaming distance are no longer.
    Faraway,
}

impl Detect {
    /// The detections that need an area (an `area` or `zones`).
    pub fn needs_area(self) -> bool {
        matches!(
            self,
            Detect::Enter | Detect::Exit | Detect::Inside | Detect::Cross
        )
    }

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Detect::Enter => "enter",
            Detect::Exit => "exit",
            Detect::Inside => "inside",
            Detect::Cross => "cross",
            Detect::Nearby => "nearby",
            Detect::Faraway => "faraway",
        }
    }
}

/// Areas taken from a polygon layer: every Polygon or MultiPolygon feature of `layer` is a
/// zone of the fence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonesSpec {
    /// The polygon layer.
    pub layer: String,
}

/// Roaming: report pairs of features that come within `distance_m` of each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoamSpec {
    /// The layer of the other features; the fence's own layer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// The distance in metres (great circle), more than 0 and at most 100 km.
    pub distance_m: f64,
}

/// An HTTP endpoint the fence's events are POSTed to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://` URL.
    pub url: String,
    /// The HMAC-SHA256 key of the signature header. Chosen by the server when absent, and
    /// shown only in the answer to the request that created the fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A NATS subject the fence's events are published to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSpec {
    /// The subject.
    pub subject: String,
}

/// A fence as users define it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceSpec {
    /// Unique name (channel name rules); events go to channel `fence:NAME`.
    pub name: String,
    /// The layer whose features the fence watches.
    pub layer: String,
    /// The area: a GeoJSON Polygon or MultiPolygon, `{"bbox": [w, s, e, n]}`, or
    /// `{"circle": {"center": [lon, lat], "radius_m": R}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<Value>,
    /// Areas from a polygon layer instead of `area`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<ZonesSpec>,
    /// Roaming (`nearby` / `faraway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roam: Option<RoamSpec>,
    /// A CQL2 filter (text as a string, or CQL2 JSON) a feature must match to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// What to report. Default: `enter` and `exit`.
    #[serde(default = "default_detect")]
    pub detect: Vec<Detect>,
    /// Changes before this time (RFC 3339) are not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_from: Option<String>,
    /// The fence ends at this time (RFC 3339): see `ttl_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_until: Option<String>,
    /// The fence ends this many seconds after it is created; features still inside get an
    /// `exit` with reason `fence_closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Also POST every event here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// Also publish every event to this NATS subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
}

fn default_detect() -> Vec<Detect> {
    vec![Detect::Enter, Detect::Exit]
}

/// Most zones or area vertices a fence definition may carry inline.
const MAX_AREA_VERTICES: usize = 100_000;
/// The largest roaming distance, in metres.
pub const MAX_ROAM_M: f64 = 100_000.0;

/// A fence as stored: the definition and what the server decided when it was created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The definition (with the webhook secret).
    pub spec: FenceSpec,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// The watched layer's sequence number when it was created: only later changes count.
    pub start_seq: u64,
    /// When it ends (from `ttl_secs` or `active_until`), ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

impl FenceRecord {
    /// The event channel.
    pub fn channel(&self) -> String {
        channel_of(&self.spec.name)
    }

    /// The definition as clients see it: the webhook secret is replaced by `"***"`.
    pub fn public_spec(&self) -> FenceSpec {
        let mut s = self.spec.clone();
        if let Some(w) = &mut s.webhook {
            w.secret = w.secret.as_ref().map(|_| "***".to_owned());
        }
        s
    }
}

/// The event channel of fence `name`.
pub fn channel_of(name: &str) -> String {
    format!("{CHANNEL_PREFIX}{name}")
}

/// A checked fence, ready for the engine.
#[derive(Debug)]
pub struct Fence {
    /// The stored record.
    pub record: FenceRecord,
    /// The area (absent for zone and roaming-only fences).
    pub area: Option<SpatialFilter>,
    /// The attribute filter.
    pub filter: Option<AttributeFilter>,
    /// Reported detections, as a set.
    pub detect: DetectSet,
    /// Changes before this time are not reported.
    pub active_from_ms: Option<u64>,
    /// The channel, `fence:NAME`.
    pub channel: Arc<str>,
}

/// A small set of [`Detect`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectSet(u8);

impl DetectSet {
    fn bit(d: Detect) -> u8 {
        1 << (d as u8)
    }
    /// Adds one.
    pub fn insert(&mut self, d: Detect) {
        self.0 |= Self::bit(d);
    }
    /// Whether it has `d`.
    pub fn has(self, d: Detect) -> bool {
        self.0 & Self::bit(d) != 0
    }
}

impl FenceSpec {
    /// Checks the definition and compiles it. `now_ms` and `start_seq` are recorded; an
    /// expiry is computed from `ttl_secs` / `active_until` (the earlier wins).
    pub fn check(&self) -> Result<(), FenceError> {
        self.compile_parts().map(drop)
    }

    #[allow(clippy::type_complexity)]
    fn compile_parts(
        &self,
    ) -> Result<
        (
            Option<SpatialFilter>,
            Option<AttributeFilter>,
            DetectSet,
            Option<u64>,
            Option<u64>,
        ),
        FenceError,
    > {
        let bad = FenceError::Invalid;
        validate_name("fence", &self.name).map_err(bad)?;
        validate_name("layer", &self.layer).map_err(bad)?;
        let limits = Limits {
            max_vertices: MAX_AREA_VERTICES,
            ..Limits::default()
        };
        let area = match &self.area {
            None => None,
            Some(v) => Some(parse_area(v, &limits)?),
        };
        if let Some(z) = &self.zones {
            validate_name("zones layer", &z.layer).map_err(bad)?;
            if area.is_some() {
                return Err(bad("a fence has an area or zones, not both".into()));
            }
        }
        if let Some(r) = &self.roam {
            if let Some(l) = &r.layer {
                validate_name("roam layer", l).map_err(bad)?;
            }
            if !(r.distance_m.is_finite() && r.distance_m > 0.0 && r.distance_m <= MAX_ROAM_M) {
                return Err(bad(format!(
                    "roam.distance_m must be more than 0 and at most {MAX_ROAM_M} metres"
                )));
            }
        }
        if self.detect.is_empty() {
            return Err(bad("detect must name at least one detection".into()));
        }
        let mut detect = DetectSet::default();
        for d in &self.detect {
            detect.insert(*d);
            if d.needs_area() && area.is_none() && self.zones.is_none() {
                return Err(bad(format!(
                    "detecting {:?} needs an area or zones",
                    d.as_str()
                )));
            }
            if !d.needs_area() && self.roam.is_none() {
                return Err(bad(format!("detecting {:?} needs roam", d.as_str())));
            }
        }
        if self.roam.is_some() && !(detect.has(Detect::Nearby) || detect.has(Detect::Faraway)) {
            return Err(bad(
                "roam is given but detect has neither nearby nor faraway".into(),
            ));
        }
        let filter = match &self.filter {
            None => None,
            Some(Value::String(s)) => Some(
                AttributeFilter::parse_text(s, &Limits::default())
                    .map_err(|e| bad(format!("filter: {e}")))?,
            ),
            Some(v @ Value::Object(_)) => Some(
                AttributeFilter::parse_json(v, &Limits::default())
                    .map_err(|e| bad(format!("filter: {e}")))?,
            ),
            Some(_) => {
                return Err(bad(
                    "filter must be CQL2 text (a string) or CQL2 JSON (an object)".into(),
                ));
            }
        };
        let time = |name: &str, s: &Option<String>| -> Result<Option<u64>, FenceError> {
            s.as_deref()
                .map(|s| {
                    parse_datetime_ms(s)
                        .and_then(|ms| u64::try_from(ms).ok())
                        .ok_or_else(|| bad(format!("{name} must be an RFC 3339 time")))
                })
                .transpose()
        };
        let from = time("active_from", &self.active_from)?;
        let until = time("active_until", &self.active_until)?;
        if let (Some(f), Some(u)) = (from, until)
            && u <= f
        {
            return Err(bad("active_until must be after active_from".into()));
        }
        if self.ttl_secs == Some(0) {
            return Err(bad("ttl_secs must be at least 1".into()));
        }
        if let Some(w) = &self.webhook
            && let Some(s) = &w.secret
            && (s.len() < 16 || s.len() > 256)
        {
            return Err(bad("webhook.secret must be 16 to 256 bytes long".into()));
        }
        if let Some(n) = &self.nats
            && (n.subject.is_empty()
                || n.subject.len() > 256
                || n.subject
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>')
                || n.subject.split('.').any(str::is_empty))
        {
            return Err(bad(
                "nats.subject must be a NATS subject without wildcards or spaces".into(),
            ));
        }
        Ok((area, filter, detect, from, until))
    }

    /// Makes the stored record of a new fence.
    pub fn into_record(self, now_ms: u64, start_seq: u64) -> Result<FenceRecord, FenceError> {
        let (.., until) = self.compile_parts()?;
        let ttl = self
            .ttl_secs
            .map(|s| now_ms.saturating_add(s.saturating_mul(1000)));
        let expires_ms = match (ttl, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(FenceRecord {
            spec: self,
            created_ms: now_ms,
            start_seq,
            expires_ms,
        })
    }
}

impl Fence {
    /// Compiles a stored record.
    pub fn compile(record: FenceRecord) -> Result<Fence, FenceError> {
        let (area, filter, detect, active_from_ms, _) = record.spec.compile_parts()?;
        let channel = Arc::from(record.channel());
        Ok(Fence {
            record,
            area,
            filter,
            detect,
            active_from_ms,
            channel,
        })
    }

    /// The fence's name.
    pub fn name(&self) -> &str {
        &self.record.spec.name
    }
}

fn parse_area(v: &Value, limits: &Limits) -> Result<SpatialFilter, FenceError> {
    let bad = |m: String| FenceError::Invalid(format!("area: {m}"));
    let Value::Object(o) = v else {
        return Err(bad("must be an object".into()));
    };
    if let Some(b) = o.get("bbox") {
        if o.len() != 1 {
            return Err(bad("a bbox area has only the member bbox".into()));
        }
        let nums: Vec<f64> = b
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        if nums.len() != 4 || b.as_array().map(Vec::len) != Some(4) {
            return Err(bad("bbox must be 4 numbers [w, s, e, n]".into()));
        }
        return SpatialFilter::from_bbox(&nums).map_err(|e| bad(e.to_string()));
    }
    if let Some(c) = o.get("circle") {
        if o.len() != 1 {
            return Err(bad("a circle area has only the member circle".into()));
        }
        let center = c
            .get("center")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some([a[0].as_f64()?, a[1].as_f64()?]));
        let radius = c.get("radius_m").and_then(Value::as_f64);
        let (Some(center), Some(radius)) = (center, radius) else {
            return Err(bad(
                "circle must be {\"center\": [lon, lat], \"radius_m\": R}".into(),
            ));
        };
        if radius <= 0.0 || radius > 1_000_000.0 {
            return Err(bad(
                "radius_m must be more than 0 and at most 1,000 km".into()
            ));
        }
        return SpatialFilter::circle(center, radius).map_err(|e| bad(e.to_string()));
    }
    if o.get("type").is_some() {
        return SpatialFilter::from_geojson(v, limits).map_err(|e| bad(e.to_string()));
    }
    Err(bad(
        "must be a GeoJSON Polygon or MultiPolygon, {\"bbox\": [...]} or {\"circle\": {...}}"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<FenceSpec, FenceError> {
        let s: FenceSpec =
            serde_json::from_value(v).map_err(|e| FenceError::Invalid(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn definitions_are_checked() {
        assert!(
            spec(json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}})).is_ok()
        );
        assert!(
            spec(json!({"name": "a", "layer": "ships",
                "area": {"circle": {"center": [-74, 40.6], "radius_m": 500}},
                "detect": ["enter", "exit", "inside", "cross"], "filter": "type = 70"}))
            .is_ok()
        );
        assert!(
            spec(
                json!({"name": "a", "layer": "ships", "roam": {"distance_m": 500},
                "detect": ["nearby", "faraway"]})
            )
            .is_ok()
        );
        assert!(spec(json!({"name": "a", "layer": "ships", "zones": {"layer": "z"}})).is_ok());
        for bad in [
            json!({"name": "a", "layer": "ships"}),
            json!({"name": "a b", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1]}}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}, "detect": []}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}, "detect": ["nearby"]}),
            json!({"name": "a", "layer": "ships", "roam": {"distance_m": 0}, "detect": ["nearby"]}),
            json!({"name": "a", "layer": "ships", "area": {"type": "Point", "coordinates": [0, 0]}}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}, "filter": "speed >"}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}, "ttl_secs": 0}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}, "extra": 1}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]}, "nats": {"subject": "a.>"}}),
            json!({"name": "a", "layer": "ships", "area": {"bbox": [0, 0, 1, 1]},
                   "active_from": "2026-01-02", "active_until": "2026-01-01"}),
        ] {
            assert!(spec(bad.clone()).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn expiry_is_the_earlier_of_ttl_and_until() {
        let s: FenceSpec = serde_json::from_value(json!({"name": "a", "layer": "l",
            "area": {"bbox": [0, 0, 1, 1]}, "ttl_secs": 10,
            "active_until": "1970-01-01T00:00:05Z"}))
        .unwrap();
        let r = s.into_record(1_000, 7).unwrap();
        assert_eq!(r.expires_ms, Some(5_000));
        assert_eq!(r.start_seq, 7);
        assert_eq!(r.channel(), "fence:a");
    }
}
