//! Application data that geostream carries without interpreting it (channel messages,
//! presence info), kept in the encoding it arrived in.
//!
//! A message published as JSON is delivered to JSON subscribers byte for byte, and transcoded
//! to MessagePack once per fan-out for MessagePack subscribers (and the other way round). The
//! bytes are validated when they enter the server, so transcoding cannot fail later.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::msgpack::{self, WalkRules};

/// Which encoding a [`Payload`]'s bytes are in. Stable numbers: they travel between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PayloadKind {
    /// UTF-8 JSON text.
    Json = 1,
    /// A JSON-compatible MessagePack value.
    Msgpack = 2,
}

impl PayloadKind {
    /// The number used between nodes.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// From the number used between nodes.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(PayloadKind::Json),
            2 => Some(PayloadKind::Msgpack),
            _ => None,
        }
    }
}

/// A validated application value: one JSON value, or one JSON-compatible MessagePack value.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    kind: PayloadKind,
    bytes: Bytes,
}

/// A value that is not valid for its declared encoding.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind:?} payload: {reason}")]
pub struct PayloadError {
    kind: PayloadKind,
    reason: String,
}

/// Deepest nesting of arrays and objects a payload may have, in either encoding: the
/// MessagePack walker's default. Every frame that carries a payload adds a few levels of its
/// own, and this keeps the frame within what decoders accept (serde_json refuses 128 levels),
/// so transcoding a payload between encodings never fails.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// Why JSON text is deeper than [`MAX_PAYLOAD_DEPTH`]: the error message.
pub(crate) fn too_deep_message() -> String {
    format!("nested deeper than {MAX_PAYLOAD_DEPTH} levels")
}

/// Whether valid JSON text nests arrays and objects at most `max` levels deep. One pass over
/// the bytes, no recursion, no allocation (serde_json's `RawValue` validation, which runs
/// first, has no depth limit of its own).
pub(crate) fn json_depth_within(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

impl Payload {
    /// Validates JSON text (exactly one value, nesting at most [`MAX_PAYLOAD_DEPTH`] deep).
    pub fn from_json(bytes: Bytes) -> Result<Self, PayloadError> {
        let invalid = |reason: String| PayloadError {
            kind: PayloadKind::Json,
            reason,
        };
        serde_json::from_slice::<&RawValue>(&bytes).map_err(|e| invalid(e.to_string()))?;
        if !json_depth_within(&bytes, MAX_PAYLOAD_DEPTH) {
            return Err(invalid(too_deep_message()));
        }
        Ok(Payload {
            kind: PayloadKind::Json,
            bytes,
        })
    }

    /// Wraps a value that was already validated as part of a JSON frame, including its depth
    /// (at most [`MAX_PAYLOAD_DEPTH`]; [`crate::Params::field`] checks it).
    pub fn from_raw_json(raw: &RawValue) -> Self {
        Payload {
            kind: PayloadKind::Json,
            bytes: Bytes::copy_from_slice(raw.get().as_bytes()),
        }
    }

    /// Validates MessagePack (exactly one JSON-compatible value, nesting at most
    /// [`MAX_PAYLOAD_DEPTH`] deep).
    pub fn from_msgpack(bytes: Bytes) -> Result<Self, PayloadError> {
        let rules = WalkRules {
            max_depth: MAX_PAYLOAD_DEPTH,
            ..WalkRules::default()
        };
        msgpack::validate_exact(&bytes, rules).map_err(|e| PayloadError {
            kind: PayloadKind::Msgpack,
            reason: e.to_string(),
        })?;
        Ok(Payload {
            kind: PayloadKind::Msgpack,
            bytes,
        })
    }

    /// Serializes any value as a JSON payload.
    pub fn json_value(value: &impl Serialize) -> Self {
        let v = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Payload {
            kind: PayloadKind::Json,
            bytes: Bytes::from(v),
        }
    }

    /// Rebuilds a payload from bytes that another node (or this one) already validated.
    pub fn from_trusted(kind: PayloadKind, bytes: Bytes) -> Self {
        Payload { kind, bytes }
    }

    /// The encoding of the bytes.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The bytes, in [`Payload::kind`] encoding.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload is empty (never true for a validated payload).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends the value as JSON text.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self.kind {
            PayloadKind::Json => out.extend_from_slice(&self.bytes),
            PayloadKind::Msgpack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&self.bytes[..]);
                let mut ser = serde_json::Serializer::new(&mut *out);
                // Validated on entry: JSON-compatible, so this cannot fail.
                if serde_transcode::transcode(&mut de, &mut ser).is_err() {
                    out.extend_from_slice(b"null");
                }
            }
        }
    }

    /// Appends the value as MessagePack.
    pub fn write_msgpack(&self, out: &mut Vec<u8>) {
        match self.kind {
            PayloadKind::Msgpack => out.extend_from_slice(&self.bytes),
            PayloadKind::Json => {
                let mut de = serde_json::Deserializer::from_slice(&self.bytes);
                let mut ser = rmp_serde::Serializer::new(&mut *out).with_struct_map();
                if serde_transcode::transcode(&mut de, &mut ser).is_err() {
                    out.push(0xc0);
                }
            }
        }
    }

    /// The value as a `serde_json::Value` (allocates; for tests and slow paths).
    pub fn to_value(&self) -> serde_json::Value {
        let mut v = Vec::new();
        self.write_json(&mut v);
        serde_json::from_slice(&v).unwrap_or(serde_json::Value::Null)
    }

    /// Decodes the value into a typed value, straight from its bytes (MessagePack `bin`
    /// decodes as bytes here, where [`Payload::to_value`] gives an array of numbers).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        match self.kind {
            PayloadKind::Json => serde_json::from_slice(&self.bytes).map_err(|e| e.to_string()),
            PayloadKind::Msgpack => rmp_serde::from_slice(&self.bytes).map_err(|e| e.to_string()),
        }
    }
}

impl Serialize for Payload {
    /// Transcodes into whatever format is being written, so payloads can sit inside any
    /// serializable response. Pushes take a faster path that copies bytes when formats match.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.kind {
            PayloadKind::Json => {
                let mut de = serde_json::Deserializer::from_slice(&self.bytes);
                serde_transcode::transcode(&mut de, serializer)
            }
            PayloadKind::Msgpack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&self.bytes[..]);
                serde_transcode::transcode(&mut de, serializer)
            }
        }
    }
}

impl Default for Payload {
    /// JSON `null`.
    fn default() -> Self {
        Payload::from_trusted(PayloadKind::Json, Bytes::from_static(b"null"))
    }
}

impl<'de> Deserialize<'de> for Payload {
    /// Transcodes the value into JSON text (from a human-readable format) or MessagePack
    /// (from a binary one), and validates it like any payload entering a process. For
    /// clients and tests: the server reads payloads raw ([`crate::Params::field`]).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut out = Vec::new();
        if d.is_human_readable() {
            let mut ser = serde_json::Serializer::new(&mut out);
            serde_transcode::transcode(d, &mut ser).map_err(D::Error::custom)?;
            Payload::from_json(Bytes::from(out)).map_err(D::Error::custom)
        } else {
            let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
            serde_transcode::transcode(d, &mut ser).map_err(D::Error::custom)?;
            Payload::from_msgpack(Bytes::from(out)).map_err(D::Error::custom)
        }
    }
}

/// In TypeScript: any value.
#[cfg(feature = "ts")]
impl ts_rs::TS for Payload {
    type WithoutGenerics = Self;
    type OptionInnerType = Self;
    fn name(_: &ts_rs::Config) -> String {
        "unknown".into()
    }
    fn inline(cfg: &ts_rs::Config) -> String {
        Self::name(cfg)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PayloadKind::Json => write!(f, "Json({})", String::from_utf8_lossy(&self.bytes)),
            PayloadKind::Msgpack => write!(f, "Msgpack({} bytes)", self.bytes.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_msgpack() {
        let v = json!({"text": "héllo", "n": [1, -2, 3.5, null, true], "o": {}});
        let p = Payload::from_json(Bytes::from(serde_json::to_vec(&v).unwrap())).unwrap();
        let mut mp = Vec::new();
        p.write_msgpack(&mut mp);
        let q = Payload::from_msgpack(Bytes::from(mp)).unwrap();
        assert_eq!(q.to_value(), v);
        let mut js = Vec::new();
        q.write_json(&mut js);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&js).unwrap(), v);
    }

    #[test]
    fn json_is_copied_verbatim() {
        let text = br#"{"b":1,   "a":"x"}"#;
        let p = Payload::from_json(Bytes::from_static(text)).unwrap();
        let mut out = Vec::new();
        p.write_json(&mut out);
        assert_eq!(out, text);
    }

    #[test]
    fn rejects_invalid() {
        assert!(Payload::from_json(Bytes::from_static(b"{")).is_err());
        assert!(Payload::from_json(Bytes::from_static(b"1 2")).is_err());
        assert!(
            Payload::from_msgpack(Bytes::from_static(&[0xdd, 0xff, 0xff, 0xff, 0xff])).is_err()
        );
        assert!(Payload::from_msgpack(Bytes::from_static(&[0x81, 0x01, 0x02])).is_err());
    }

    #[test]
    fn depth_is_bounded_in_both_encodings() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let ok = nested(MAX_PAYLOAD_DEPTH);
        let p = Payload::from_json(Bytes::from(ok.clone())).unwrap();
        // Accepted means deliverable in the other encoding too.
        let mut mp = Vec::new();
        p.write_msgpack(&mut mp);
        assert_eq!(
            Payload::from_msgpack(Bytes::from(mp)).unwrap().to_value(),
            p.to_value()
        );
        // Regression (found by fuzz_json): 200 levels used to be accepted, and then
        // transcoded to MessagePack as a silent nil because serde_json stops at 128.
        for n in [MAX_PAYLOAD_DEPTH + 1, 200, 100_000] {
            let e = Payload::from_json(Bytes::from(nested(n))).unwrap_err();
            assert!(e.to_string().contains("nested deeper than 64"), "{e}");
        }
        // Brackets inside strings, escaped quotes included, are not nesting.
        let s = format!(
            "{}\"\\\"{}\"{}",
            "[".repeat(64),
            "[".repeat(100),
            "]".repeat(64)
        );
        assert!(Payload::from_json(Bytes::from(s)).is_ok());
        let mp = |n: usize| {
            let mut v = vec![0x91; n];
            v.push(0x01);
            Bytes::from(v)
        };
        assert!(Payload::from_msgpack(mp(MAX_PAYLOAD_DEPTH)).is_ok());
        assert!(Payload::from_msgpack(mp(MAX_PAYLOAD_DEPTH + 1)).is_err());
    }

    #[test]
    fn deserializes_from_either_format() {
        let v = json!({"k": [1, "x", null], "n": -2.5});
        let p: Payload = serde_json::from_value(v.clone()).unwrap();
        assert_eq!((p.kind(), p.to_value()), (PayloadKind::Json, v.clone()));
        let mp = rmp_serde::to_vec_named(&v).unwrap();
        let q: Payload = rmp_serde::from_slice(&mp).unwrap();
        assert_eq!((q.kind(), q.to_value()), (PayloadKind::Msgpack, v));
        assert_eq!(Payload::default().to_value(), serde_json::Value::Null);
    }

    #[test]
    fn serializes_into_either_format() {
        let p = Payload::from_json(Bytes::from_static(br#"{"k":[1,2]}"#)).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"k": [1, 2]}));
        let mp = rmp_serde::to_vec_named(&p).unwrap();
        let back: serde_json::Value = rmp_serde::from_slice(&mp).unwrap();
        assert_eq!(back, json!({"k": [1, 2]}));
    }
}
