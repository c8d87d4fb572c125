//! Frames on the wire, in the three encodings.
//!
//! * `geostream.v1.json`: JSON-RPC 2.0 objects in text frames.
//! * `geostream.v1.msgpack`: the same structure as MessagePack arrays in binary frames, shaped
//!   like msgpack-rpc: request `[0, id, method, params]`, response `[1, id, error, result]`,
//!   notification `[2, method, params]`.
//! * `geostream.v1.msgpack-zstd`: as `msgpack`, but a frame that starts with the Zstandard magic
//!   number is a Zstandard stream (one or more frames) whose content is the MessagePack frame.
//!   The server compresses frames above a threshold; clients may compress theirs.
//!
//! Server pushes are built once per fan-out by [`encode_push`]. Their params start with the
//! subscription id, which differs per subscriber, so a [`PushFrame`] keeps the bytes before and
//! after the id and [`PushFrame::write`] splices a subscriber's id in while writing to the socket.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use bytes::{BufMut, Bytes};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{ErrorCode, RpcError};
use crate::msgpack::{self, WalkRules};
use crate::payload::{MAX_PAYLOAD_DEPTH, Payload, json_depth_within, too_deep_message};

/// The Zstandard frame magic number, as it appears at the start of a compressed frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Frames at least this large are compressed in the `msgpack-zstd` encoding (when that makes
/// them smaller).
pub const ZSTD_THRESHOLD: usize = 512;

/// Zstandard level for server frames: level 1 is the fastest and still saves most of what
/// higher levels save on JSON-like MessagePack.
const ZSTD_LEVEL: i32 = 1;

/// A wire encoding, chosen per connection by WebSocket subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON-RPC 2.0 in text frames.
    Json,
    /// MessagePack arrays in binary frames.
    Msgpack,
    /// MessagePack, Zstandard-compressed above a threshold.
    MsgpackZstd,
}

impl Encoding {
    /// Every encoding, in order of [`Encoding::index`].
    pub const ALL: [Encoding; 3] = [Encoding::Json, Encoding::Msgpack, Encoding::MsgpackZstd];

    /// The WebSocket subprotocol that selects this encoding.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "geostream.v1.json",
            Encoding::Msgpack => "geostream.v1.msgpack",
            Encoding::MsgpackZstd => "geostream.v1.msgpack-zstd",
        }
    }

    /// A short name for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
            Encoding::MsgpackZstd => "msgpack-zstd",
        }
    }

    /// The encoding a subprotocol selects, if it is one of ours.
    pub fn from_subprotocol(s: &str) -> Option<Self> {
        Encoding::ALL.into_iter().find(|e| e.subprotocol() == s)
    }

    /// Whether frames travel as binary (otherwise text).
    pub const fn is_binary(self) -> bool {
        !matches!(self, Encoding::Json)
    }

    /// A dense index (0, 1, 2) for per-encoding tables.
    pub const fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::Msgpack => 1,
            Encoding::MsgpackZstd => 2,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request id: a number or a string, chosen by the client and echoed in the response.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(untagged)]
pub enum Id {
    /// A numeric id.
    Int(i64),
    /// A string id.
    Str(Box<str>),
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Int(i) => write!(f, "{i}"),
            Id::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The parameters of a request or notification, not yet decoded.
#[derive(Clone, Copy, Debug)]
pub enum Params<'a> {
    /// No `params` member.
    Absent,
    /// JSON text of the params value.
    Json(&'a RawValue),
    /// A validated MessagePack value.
    Msgpack(&'a [u8]),
}

impl<'a> Params<'a> {
    /// Decodes the params into a typed value; absent params decode as an empty object.
    pub fn parse<T: Deserialize<'a>>(&self) -> Result<T, RpcError> {
        self.decode()
            .map_err(|m| RpcError::invalid_params(format!("invalid params: {m}")))
    }

    /// Decodes the value into a typed value (absent decodes as an empty object); the error
    /// names the member that failed.
    pub fn decode<T: Deserialize<'a>>(&self) -> Result<T, String> {
        // serde_path_to_error names the member that failed (`channel: invalid type ...`),
        // which plain serde messages do not.
        fn located<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
            let path = e.path().to_string();
            let inner = clean_serde_message(&e.into_inner().to_string());
            if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            }
        }
        match *self {
            Params::Absent => serde_json::from_str("{}").map_err(|e| e.to_string()),
            Params::Json(raw) => {
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
                    .map_err(located)
            }
            Params::Msgpack(b) => {
                serde_path_to_error::deserialize(&mut rmp_serde::Deserializer::from_read_ref(b))
                    .map_err(located)
            }
        }
    }

    /// A copy that owns its bytes, to decode later (a request's result, handed to whoever
    /// waits for it).
    pub fn to_owned(&self) -> OwnedParams {
        match *self {
            Params::Absent => OwnedParams::Absent,
            Params::Json(raw) => OwnedParams::Json(raw.to_owned()),
            Params::Msgpack(b) => OwnedParams::Msgpack(Bytes::copy_from_slice(b)),
        }
    }

    /// The value of one member of the params object, kept raw as a [`Payload`] (refused when
    /// nested deeper than [`MAX_PAYLOAD_DEPTH`]).
    pub fn field(&self, name: &str) -> Result<Option<Payload>, RpcError> {
        match *self {
            Params::Absent => Ok(None),
            Params::Json(raw) => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                let value = FieldSeed { name }
                    .deserialize(&mut de)
                    .map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))?;
                match value {
                    // The frame decoder keeps params as raw text, which serde_json validates
                    // without a depth limit; a payload must be deliverable in every encoding.
                    Some(v) if !json_depth_within(v.get().as_bytes(), MAX_PAYLOAD_DEPTH) => {
                        Err(RpcError::invalid_params(format!(
                            "invalid params: {name}: {}",
                            too_deep_message()
                        )))
                    }
                    v => Ok(v.map(Payload::from_raw_json)),
                }
            }
            Params::Msgpack(b) => {
                if msgpack::map_header(b).is_none() {
                    return Err(RpcError::invalid_params(
                        "invalid params: expected an object",
                    ));
                }
                Ok(msgpack::map_field(b, name).map(|v| {
                    Payload::from_trusted(crate::PayloadKind::Msgpack, Bytes::copy_from_slice(v))
                }))
            }
        }
    }

    /// Size of the encoded params in bytes.
    pub fn len(&self) -> usize {
        match *self {
            Params::Absent => 0,
            Params::Json(raw) => raw.get().len(),
            Params::Msgpack(b) => b.len(),
        }
    }

    /// Whether there are no params.
    pub fn is_empty(&self) -> bool {
        matches!(self, Params::Absent)
    }
}

/// A value of a frame kept encoded, owning its bytes: see [`Params::to_owned`].
#[derive(Clone, Debug)]
pub enum OwnedParams {
    /// No value.
    Absent,
    /// JSON text.
    Json(Box<RawValue>),
    /// A validated MessagePack value.
    Msgpack(Bytes),
}

impl OwnedParams {
    /// The value, borrowed.
    pub fn as_params(&self) -> Params<'_> {
        match self {
            OwnedParams::Absent => Params::Absent,
            OwnedParams::Json(raw) => Params::Json(raw),
            OwnedParams::Msgpack(b) => Params::Msgpack(b),
        }
    }

    /// Decodes the value into an owned typed value.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        self.as_params().decode()
    }
}

/// serde_json appends " at line 1 column N"; on a one-line frame that is noise.
fn clean_serde_message(m: &str) -> String {
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

/// Picks one member of a JSON object as a `&RawValue`, skipping the rest without allocating.
struct FieldSeed<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            if k == self.name && found.is_none() {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A frame from a client.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// A request: the server answers it with a response carrying the same id.
    Request {
        /// The client's id for this request.
        id: Id,
        /// The method name.
        method: Cow<'a, str>,
        /// Its parameters.
        params: Params<'a>,
    },
    /// A notification: no response.
    Notification {
        /// The method name.
        method: Cow<'a, str>,
        /// Its parameters.
        params: Params<'a>,
    },
}

/// A frame that could not be decoded, and the error to answer it with.
#[derive(Debug)]
pub struct DecodeError {
    /// The request id, when it could be read (the response then carries it).
    pub id: Option<Id>,
    /// The error to send.
    pub error: Box<RpcError>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        DecodeError {
            id: None,
            error: Box::new(RpcError::new(code, message)),
        }
    }

    fn with_id(id: Option<Id>, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        DecodeError {
            id,
            error: Box::new(RpcError::new(code, message)),
        }
    }
}

/// Decompresses a client frame that starts with the Zstandard magic number, refusing output
/// larger than `limit` and windows larger than the limit needs (a "zstd bomb" declares a huge
/// window to make the decoder allocate it).
pub fn decompress_bounded(data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let too_large = || {
        DecodeError::new(
            ErrorCode::LimitExceeded,
            format!("decompressed frame exceeds the limit of {limit} bytes"),
        )
    };
    // A frame whose window is larger than the limit allows is refused by zstd before it
    // allocates anything; it is a frame too large for the limit, not a malformed one (a
    // single-segment frame's window is its whole content, so any such frame above twice the
    // limit lands here).
    let fail = |e: std::io::Error| {
        let window_too_large = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<zstd::Error>())
            .is_some_and(|z| {
                z.is(zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge)
            });
        if window_too_large {
            too_large()
        } else {
            DecodeError::new(ErrorCode::ParseError, format!("invalid zstd frame: {e}"))
        }
    };
    // A decompression context per thread, reset before each frame: creating one per frame
    // cost more than decompressing a small frame.
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ctx = cell.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        ctx.reset(zstd::zstd_safe::ResetDirective::SessionAndParameters)
            .map_err(|_| DecodeError::new(ErrorCode::InternalError, "zstd context reset failed"))?;
        let mut dec = zstd::stream::read::Decoder::with_context(data, ctx);
        let window_log = (usize::BITS - limit.max(1 << 10).leading_zeros()).clamp(10, 27);
        dec.window_log_max(window_log).map_err(fail)?;
        let mut out = Vec::new();
        let n = dec
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(fail)?;
        if n > limit {
            return Err(too_large());
        }
        Ok(out)
    })
}

/// Decodes a client frame. For `msgpack-zstd`, a compressed frame must have been decompressed
/// with [`decompress_bounded`] first.
pub fn decode_client_frame(enc: Encoding, data: &[u8]) -> Result<ClientFrame<'_>, DecodeError> {
    match enc {
        Encoding::Json => decode_json_frame(data),
        Encoding::Msgpack | Encoding::MsgpackZstd => decode_msgpack_frame(data),
    }
}

#[derive(Deserialize)]
struct JsonEnvelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<Id>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

fn decode_json_frame(data: &[u8]) -> Result<ClientFrame<'_>, DecodeError> {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Err(DecodeError::new(
            ErrorCode::InvalidRequest,
            "batch requests are not supported; send one request per frame",
        ));
    }
    let env: JsonEnvelope<'_> = serde_json::from_slice(data).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::new(
            ErrorCode::InvalidRequest,
            format!("invalid request: {}", clean_serde_message(&e.to_string())),
        ),
        _ => DecodeError::new(
            ErrorCode::ParseError,
            format!("invalid JSON: {}", clean_serde_message(&e.to_string())),
        ),
    })?;
    let id = env.id;
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(DecodeError::with_id(
            id,
            ErrorCode::InvalidRequest,
            "\"jsonrpc\" must be \"2.0\"",
        ));
    }
    let Some(method) = env.method else {
        return Err(DecodeError::with_id(
            id,
            ErrorCode::InvalidRequest,
            "\"method\" is missing",
        ));
    };
    let params = env.params.map_or(Params::Absent, Params::Json);
    Ok(match id {
        Some(id) => ClientFrame::Request { id, method, params },
        None => ClientFrame::Notification { method, params },
    })
}

fn read_int(buf: &[u8]) -> Option<(i64, usize)> {
    let b = *buf.first()?;
    let be = |n: usize| -> Option<u64> {
        let s = buf.get(1..1 + n)?;
        Some(s.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    };
    Some(match b {
        0x00..=0x7f => (i64::from(b), 1),
        0xe0..=0xff => (i64::from(b as i8), 1),
        0xcc => (be(1)? as i64, 2),
        0xcd => (be(2)? as i64, 3),
        0xce => (be(4)? as i64, 5),
        0xcf => (i64::try_from(be(8)?).ok()?, 9),
        0xd0 => (i64::from(be(1)? as u8 as i8), 2),
        0xd1 => (i64::from(be(2)? as u16 as i16), 3),
        0xd2 => (i64::from(be(4)? as u32 as i32), 5),
        0xd3 => (be(8)? as i64, 9),
        _ => return None,
    })
}

fn decode_msgpack_frame(data: &[u8]) -> Result<ClientFrame<'_>, DecodeError> {
    msgpack::validate_exact(data, WalkRules::default()).map_err(|e| {
        DecodeError::new(ErrorCode::ParseError, format!("invalid MessagePack: {e}"))
    })?;
    let invalid = |m: &'static str| DecodeError::new(ErrorCode::InvalidRequest, m);
    let (n, mut pos) = msgpack::array_header(data)
        .ok_or_else(|| invalid("a frame must be an array [type, ...]"))?;
    let (kind, used) = read_int(&data[pos..])
        .ok_or_else(|| invalid("the first element must be the frame type"))?;
    pos += used;
    let mut id = None;
    match (kind, n) {
        (0, 4) => {
            let rest = &data[pos..];
            if let Some((i, used)) = read_int(rest) {
                id = Some(Id::Int(i));
                pos += used;
            } else if let Some((s, used)) = msgpack::read_str(rest) {
                id = Some(Id::Str(s.into()));
                pos += used;
            } else {
                return Err(invalid("a request id must be an integer or a string"));
            }
        }
        (2, 3) => {}
        (0, _) => return Err(invalid("a request is [0, id, method, params]")),
        (2, _) => return Err(invalid("a notification is [2, method, params]")),
        _ => {
            return Err(invalid(
                "the frame type must be 0 (request) or 2 (notification)",
            ));
        }
    }
    let Some((method, used)) = msgpack::read_str(&data[pos..]) else {
        return Err(DecodeError::with_id(
            id,
            ErrorCode::InvalidRequest,
            "the method must be a string",
        ));
    };
    pos += used;
    let rest = &data[pos..];
    let params = if rest == [0xc0] {
        Params::Absent
    } else {
        Params::Msgpack(rest)
    };
    let method = Cow::Borrowed(method);
    Ok(match id {
        Some(id) => ClientFrame::Request { id, method, params },
        None => ClientFrame::Notification { method, params },
    })
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

fn write_msgpack_id(out: &mut Vec<u8>, id: Option<&Id>) {
    match id {
        None => out.push(0xc0),
        Some(Id::Int(i)) => {
            let _ = rmp::encode::write_sint(out, *i);
        }
        Some(Id::Str(s)) => {
            let _ = rmp::encode::write_str(out, s);
        }
    }
}

fn write_json_id(out: &mut Vec<u8>, id: Option<&Id>) {
    match id {
        None => out.extend_from_slice(b"null"),
        Some(id) => {
            let _ = serde_json::to_writer(&mut *out, id);
        }
    }
}

fn json_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn msgpack_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let mut ser = rmp_serde::Serializer::new(&mut *out).with_struct_map();
    if v.serialize(&mut ser).is_err() {
        out.push(0xc0);
    }
}

/// Compresses with a per-thread reused context: creating a Zstandard context per frame
/// costs more than compressing a small frame.
fn zstd_compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        match c.as_mut() {
            Some(c) => c.compress(data),
            None => zstd::bulk::compress(data, ZSTD_LEVEL),
        }
    })
}

/// Compresses a finished MessagePack frame when it is large enough and compression helps.
fn maybe_compress(enc: Encoding, frame: Vec<u8>) -> Bytes {
    if enc == Encoding::MsgpackZstd
        && frame.len() >= ZSTD_THRESHOLD
        && let Ok(z) = zstd_compress(&frame)
        && z.len() < frame.len()
    {
        return Bytes::from(z);
    }
    Bytes::from(frame)
}

/// Encodes a successful response.
pub fn encode_response<T: Serialize + ?Sized>(enc: Encoding, id: &Id, result: &T) -> Bytes {
    let mut out = Vec::with_capacity(64);
    match enc {
        Encoding::Json => {
            out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
            write_json_id(&mut out, Some(id));
            out.extend_from_slice(br#","result":"#);
            json_value(&mut out, result);
            out.push(b'}');
        }
        Encoding::Msgpack | Encoding::MsgpackZstd => {
            out.extend_from_slice(&[0x94, 0x01]);
            write_msgpack_id(&mut out, Some(id));
            out.push(0xc0);
            msgpack_value(&mut out, result);
        }
    }
    maybe_compress(enc, out)
}

/// Encodes an error response (`id` is `None` when the request's id could not be read).
pub fn encode_error(enc: Encoding, id: Option<&Id>, error: &RpcError) -> Bytes {
    let mut out = Vec::with_capacity(96);
    match enc {
        Encoding::Json => {
            out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
            write_json_id(&mut out, id);
            out.extend_from_slice(br#","error":"#);
            json_value(&mut out, error);
            out.push(b'}');
        }
        Encoding::Msgpack | Encoding::MsgpackZstd => {
            out.extend_from_slice(&[0x94, 0x01]);
            write_msgpack_id(&mut out, id);
            msgpack_value(&mut out, error);
            out.push(0xc0);
        }
    }
    maybe_compress(enc, out)
}

/// Encodes a notification from the server (`$/progress`, for example).
pub fn encode_notification<T: Serialize + ?Sized>(
    enc: Encoding,
    method: &str,
    params: &T,
) -> Bytes {
    let mut out = Vec::with_capacity(64);
    match enc {
        Encoding::Json => {
            out.extend_from_slice(br#"{"jsonrpc":"2.0","method":"#);
            json_value(&mut out, method);
            out.extend_from_slice(br#","params":"#);
            json_value(&mut out, params);
            out.push(b'}');
        }
        Encoding::Msgpack | Encoding::MsgpackZstd => {
            out.extend_from_slice(&[0x93, 0x02]);
            let _ = rmp::encode::write_str(&mut out, method);
            msgpack_value(&mut out, params);
        }
    }
    maybe_compress(enc, out)
}

/// Encodes a client request (used by the Rust client and tests).
pub fn encode_request<T: Serialize + ?Sized>(
    enc: Encoding,
    id: Option<&Id>,
    method: &str,
    params: &T,
) -> Bytes {
    let mut out = Vec::with_capacity(64);
    match enc {
        Encoding::Json => {
            out.extend_from_slice(br#"{"jsonrpc":"2.0","#);
            if id.is_some() {
                out.extend_from_slice(br#""id":"#);
                write_json_id(&mut out, id);
                out.push(b',');
            }
            out.extend_from_slice(br#""method":"#);
            json_value(&mut out, method);
            out.extend_from_slice(br#","params":"#);
            json_value(&mut out, params);
            out.push(b'}');
        }
        Encoding::Msgpack | Encoding::MsgpackZstd => {
            if id.is_some() {
                out.extend_from_slice(&[0x94, 0x00]);
                write_msgpack_id(&mut out, id);
            } else {
                out.extend_from_slice(&[0x93, 0x02]);
            }
            let _ = rmp::encode::write_str(&mut out, method);
            msgpack_value(&mut out, params);
        }
    }
    maybe_compress(enc, out)
}

/// A push frame, encoded once for all subscribers in one encoding.
///
/// The bytes are `head ++ <subscription id> ++ tail`. With `zstd` set, `tail` is a complete
/// Zstandard frame and the frame on the wire is a raw (uncompressed) Zstandard frame holding
/// `head ++ id`, followed by `tail`: a valid Zstandard stream of two frames that decompresses
/// to the MessagePack frame, so the id can be spliced in without compressing per subscriber.
#[derive(Clone, Debug)]
pub struct PushFrame {
    bytes: Bytes,
    split: usize,
    zstd: bool,
    binary: bool,
}

/// Length of the id encoded in `enc`.
fn sub_len(binary: bool, sub: u32) -> usize {
    if binary {
        match sub {
            0..=0x7f => 1,
            0x80..=0xff => 2,
            0x100..=0xffff => 3,
            _ => 5,
        }
    } else {
        let mut b = itoa::Buffer::new();
        b.format(sub).len()
    }
}

fn put_sub<B: BufMut>(out: &mut B, binary: bool, sub: u32) {
    if binary {
        match sub {
            0..=0x7f => out.put_u8(sub as u8),
            0x80..=0xff => {
                out.put_u8(0xcc);
                out.put_u8(sub as u8);
            }
            0x100..=0xffff => {
                out.put_u8(0xcd);
                out.put_u16(sub as u16);
            }
            _ => {
                out.put_u8(0xce);
                out.put_u32(sub);
            }
        }
    } else {
        let mut b = itoa::Buffer::new();
        out.put_slice(b.format(sub).as_bytes());
    }
}

/// Bytes of a raw-block Zstandard frame header for `n` bytes of content (n < 256).
const ZSTD_RAW_HEADER: usize = 4 + 1 + 1 + 3;

impl PushFrame {
    /// Length on the wire for subscription `sub`.
    pub fn len(&self, sub: u32) -> usize {
        self.bytes.len() + sub_len(self.binary, sub) + if self.zstd { ZSTD_RAW_HEADER } else { 0 }
    }

    /// Whether the frame is empty (never: a push always has an envelope).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the frame goes out as a binary WebSocket frame (otherwise text).
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// Writes the frame for subscription `sub`.
    pub fn write<B: BufMut>(&self, sub: u32, out: &mut B) {
        self.write_head(sub, out);
        out.put_slice(self.tail());
    }

    /// The part of the frame after the subscription id: the same bytes for every
    /// subscriber, so a writer may send them from here rather than copy them.
    pub fn tail(&self) -> &[u8] {
        &self.bytes[self.split..]
    }

    /// [`PushFrame::tail`] as shared bytes (no copy).
    pub fn tail_bytes(&self) -> Bytes {
        self.bytes.slice(self.split..)
    }

    /// Writes the frame for subscription `sub` up to its [`PushFrame::tail`].
    pub fn write_head<B: BufMut>(&self, sub: u32, out: &mut B) {
        let head = &self.bytes[..self.split];
        if self.zstd {
            let n = head.len() + sub_len(self.binary, sub);
            debug_assert!(n < 256);
            out.put_slice(&ZSTD_MAGIC);
            // Frame header descriptor: single segment, 1-byte content size, no checksum.
            out.put_u8(0x20);
            out.put_u8(n as u8);
            // Block header: last block, raw, size n.
            let bh = ((n as u32) << 3) | 1;
            out.put_slice(&bh.to_le_bytes()[..3]);
        }
        out.put_slice(head);
        put_sub(out, self.binary, sub);
    }

    /// Writes only the params object (`{"sub":N,...}`) of a JSON push, without the JSON-RPC
    /// envelope: the `data:` of a Server-Sent Event. `None` for binary encodings.
    pub fn write_json_params<B: BufMut>(&self, sub: u32, out: &mut B) -> Option<()> {
        if self.binary {
            return None;
        }
        const PARAMS_START: &[u8] = br#"{"sub":"#;
        let (head, tail) = self.bytes.split_at(self.split);
        let start = head.len().checked_sub(PARAMS_START.len())?;
        out.put_slice(&head[start..]);
        put_sub(out, false, sub);
        out.put_slice(&tail[..tail.len().checked_sub(1)?]);
        Some(())
    }

    /// The frame for one subscription as a new buffer (SSE and tests).
    pub fn to_bytes(&self, sub: u32) -> Bytes {
        let mut v = Vec::with_capacity(self.len(sub));
        self.write(sub, &mut v);
        Bytes::from(v)
    }
}

/// Encodes a push `{"sub": <id>, ...fields, raw.0: raw.1}` for method `method`.
///
/// `fields` must serialize as a map (a struct). `raw` appends one member whose value is an
/// opaque [`Payload`], copied as is when its encoding matches.
pub fn encode_push<T: Serialize + ?Sized>(
    enc: Encoding,
    method: &str,
    fields: &T,
    raw: Option<(&str, &Payload)>,
) -> PushFrame {
    match enc {
        Encoding::Json => {
            let mut out = Vec::with_capacity(96 + raw.map_or(0, |r| r.1.len()));
            out.extend_from_slice(br#"{"jsonrpc":"2.0","method":"#);
            json_value(&mut out, method);
            out.extend_from_slice(br#","params":{"sub":"#);
            let split = out.len();
            let start = out.len();
            json_value(&mut out, fields);
            // `fields` wrote `{...}`: turn it into `,...` (or nothing for `{}`).
            if out.len() - start <= 2 {
                out.truncate(start);
            } else {
                out[start] = b',';
                out.pop();
            }
            if let Some((key, payload)) = raw {
                out.push(b',');
                json_value(&mut out, key);
                out.push(b':');
                payload.write_json(&mut out);
            }
            out.extend_from_slice(b"}}");
            PushFrame {
                bytes: Bytes::from(out),
                split,
                zstd: false,
                binary: false,
            }
        }
        Encoding::Msgpack | Encoding::MsgpackZstd => {
            // The fields are serialized once, straight into the frame (a tile's bytes are
            // not copied a second time): behind room for the longest envelope, which is
            // written, once the fields are counted, just before them over their own map
            // header.
            let room = 2 + 5 + method.len() + 5 + 4;
            let mut out =
                Vec::with_capacity(room + 64 + raw.map_or(0, |r| r.0.len() + r.1.len() + 6));
            out.resize(room, 0);
            msgpack_value(&mut out, fields);
            let (n, hlen) = msgpack::map_header(&out[room..]).unwrap_or((0, out.len() - room));
            let count = n + 1 + usize::from(raw.is_some());
            if let Some((key, payload)) = raw {
                let _ = rmp::encode::write_str(&mut out, key);
                payload.write_msgpack(&mut out);
            }
            let mut head = Vec::with_capacity(room);
            head.extend_from_slice(&[0x93, 0x02]);
            let _ = rmp::encode::write_str(&mut head, method);
            let _ = rmp::encode::write_map_len(&mut head, count as u32);
            let _ = rmp::encode::write_str(&mut head, "sub");
            let begin = room + hlen - head.len();
            out[begin..room + hlen].copy_from_slice(&head);
            let split = head.len();
            let tail = &out[begin + split..];
            if enc == Encoding::MsgpackZstd
                && tail.len() >= ZSTD_THRESHOLD
                && let Ok(z) = zstd_compress(tail)
                && z.len() + ZSTD_RAW_HEADER < tail.len()
            {
                out.truncate(begin + split);
                out.extend_from_slice(&z);
                return PushFrame {
                    bytes: Bytes::from(out).slice(begin..),
                    split,
                    zstd: true,
                    binary: true,
                };
            }
            PushFrame {
                bytes: Bytes::from(out).slice(begin..),
                split,
                zstd: false,
                binary: true,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding server frames (clients and tests)
// ---------------------------------------------------------------------------------------------

/// A frame from the server, decoded into JSON values (for clients and tests; the server
/// itself never decodes its own frames).
#[derive(Clone, Debug, PartialEq)]
pub enum ServerFrame {
    /// A successful response.
    Response {
        /// The request id.
        id: Id,
        /// The result.
        result: serde_json::Value,
    },
    /// An error response.
    Error {
        /// The request id, if the server could read it.
        id: Option<Id>,
        /// The error.
        error: RpcError,
    },
    /// A notification or push.
    Notification {
        /// The method (`message`, `feature`, `$/progress`, ...).
        method: String,
        /// The params.
        params: serde_json::Value,
    },
}

/// Why a server frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid server frame: {0}")]
pub struct ServerFrameError(String);

/// The most a compressed server frame may decompress to in [`decode_server_frame`]: the
/// largest message tungstenite (the Rust client's WebSocket library) accepts by default.
pub const MAX_SERVER_FRAME_BYTES: usize = 64 << 20;

/// Deepest nesting [`decode_server_frame`] reads: what serde_json accepts, since the values
/// end up as `serde_json::Value`s.
const MAX_SERVER_FRAME_DEPTH: usize = 127;

/// Decodes a frame received from the server; a compressed frame may decompress to at most
/// [`MAX_SERVER_FRAME_BYTES`].
pub fn decode_server_frame(enc: Encoding, data: &[u8]) -> Result<ServerFrame, ServerFrameError> {
    decode_server_frame_limited(enc, data, MAX_SERVER_FRAME_BYTES)
}

/// Decodes a frame received from the server; a compressed frame may decompress to at most
/// `max_bytes`.
///
/// Server frames are untrusted input for a client too: a compressed frame is decompressed
/// with [`decompress_bounded`], and a MessagePack frame is walked (lengths against the bytes
/// present, nesting at most 127) before the recursive decoder sees it.
pub fn decode_server_frame_limited(
    enc: Encoding,
    data: &[u8],
    max_bytes: usize,
) -> Result<ServerFrame, ServerFrameError> {
    let err = |m: String| ServerFrameError(m);
    match enc {
        Encoding::Json => {
            #[derive(Deserialize)]
            struct Env {
                #[serde(default)]
                id: Option<Id>,
                #[serde(default)]
                method: Option<String>,
                #[serde(default)]
                params: Option<serde_json::Value>,
                #[serde(default)]
                result: Option<serde_json::Value>,
                #[serde(default)]
                error: Option<RpcError>,
            }
            let e: Env = serde_json::from_slice(data).map_err(|e| err(e.to_string()))?;
            if let Some(method) = e.method {
                return Ok(ServerFrame::Notification {
                    method,
                    params: e.params.unwrap_or_default(),
                });
            }
            if let Some(error) = e.error {
                return Ok(ServerFrame::Error { id: e.id, error });
            }
            match e.id {
                Some(id) => Ok(ServerFrame::Response {
                    id,
                    result: e.result.unwrap_or_default(),
                }),
                None => Err(err("frame has neither method nor id".into())),
            }
        }
        Encoding::Msgpack | Encoding::MsgpackZstd => {
            let owned;
            let data = if data.starts_with(&ZSTD_MAGIC) {
                owned = decompress_bounded(data, max_bytes)
                    .map_err(|e| err(e.error.message.into_owned()))?;
                &owned[..]
            } else {
                data
            };
            // Server frames carry `bin` (tiles) and are not held to JSON's rules, but the
            // lengths and the depth must be checked before rmp_serde recurses and allocates.
            let rules = WalkRules {
                max_depth: MAX_SERVER_FRAME_DEPTH,
                json_compatible: false,
            };
            msgpack::validate_exact(data, rules).map_err(|e| err(e.to_string()))?;
            let v: Vec<rmpv_like::Any> =
                rmp_serde::from_slice(data).map_err(|e| err(e.to_string()))?;
            let to_json = |a: &rmpv_like::Any| a.0.clone();
            let kind = v
                .first()
                .and_then(|a| a.0.as_i64())
                .ok_or_else(|| err("missing frame type".into()))?;
            let id_of = |a: &rmpv_like::Any| -> Option<Id> {
                match &a.0 {
                    serde_json::Value::Number(n) => n.as_i64().map(Id::Int),
                    serde_json::Value::String(s) => Some(Id::Str(s.as_str().into())),
                    _ => None,
                }
            };
            match (kind, v.len()) {
                (1, 4) => {
                    let id = id_of(&v[1]);
                    if !v[2].0.is_null() {
                        let error: RpcError = serde_json::from_value(to_json(&v[2]))
                            .map_err(|e| err(e.to_string()))?;
                        return Ok(ServerFrame::Error { id, error });
                    }
                    let id = id.ok_or_else(|| err("response without id".into()))?;
                    Ok(ServerFrame::Response {
                        id,
                        result: to_json(&v[3]),
                    })
                }
                (2, 3) => {
                    let method = v[1]
                        .0
                        .as_str()
                        .ok_or_else(|| err("method is not a string".into()))?
                        .to_string();
                    Ok(ServerFrame::Notification {
                        method,
                        params: to_json(&v[2]),
                    })
                }
                _ => Err(err(format!(
                    "unexpected frame type {kind} with {} elements",
                    v.len()
                ))),
            }
        }
    }
}

/// A serde value that accepts MessagePack binary (as an array of numbers, like JSON would).
mod rmpv_like {
    use serde::Deserialize;

    pub(super) struct Any(pub(super) serde_json::Value);

    impl<'de> Deserialize<'de> for Any {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::new(&mut out);
            serde_transcode::transcode(d, &mut ser).map_err(serde::de::Error::custom)?;
            serde_json::from_slice(&out)
                .map(Any)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// A frame from the server with its result or params left encoded, for a client that decodes
/// each straight into the type its request or push method gives ([`Params::decode`]).
#[derive(Debug)]
pub enum RawServerFrame<'a> {
    /// A successful response.
    Response {
        /// The request id.
        id: Id,
        /// The result.
        result: Params<'a>,
    },
    /// An error response.
    Error {
        /// The request id, if the server could read it.
        id: Option<Id>,
        /// The error.
        error: RpcError,
    },
    /// A notification or push.
    Notification {
        /// The method (`message`, `feature`, `$/progress`, ...).
        method: Cow<'a, str>,
        /// The params.
        params: Params<'a>,
    },
}

/// Decodes the envelope of a frame received from the server, leaving the result or params
/// encoded. A compressed frame is decompressed into `scratch` (at most `max_bytes`), and the
/// frame borrows from there.
///
/// Server frames are untrusted input for a client too: see [`decode_server_frame_limited`].
pub fn decode_raw_server_frame<'a>(
    enc: Encoding,
    data: &'a [u8],
    scratch: &'a mut Vec<u8>,
    max_bytes: usize,
) -> Result<RawServerFrame<'a>, ServerFrameError> {
    let err = |m: String| ServerFrameError(m);
    match enc {
        Encoding::Json => {
            #[derive(Deserialize)]
            struct Env<'a> {
                #[serde(default)]
                id: Option<Id>,
                #[serde(borrow, default)]
                method: Option<Cow<'a, str>>,
                #[serde(borrow, default)]
                params: Option<&'a RawValue>,
                #[serde(borrow, default)]
                result: Option<&'a RawValue>,
                #[serde(default)]
                error: Option<RpcError>,
            }
            let e: Env<'a> = serde_json::from_slice(data).map_err(|e| err(e.to_string()))?;
            if let Some(method) = e.method {
                return Ok(RawServerFrame::Notification {
                    method,
                    params: e.params.map_or(Params::Absent, Params::Json),
                });
            }
            if let Some(error) = e.error {
                return Ok(RawServerFrame::Error { id: e.id, error });
            }
            match e.id {
                Some(id) => Ok(RawServerFrame::Response {
                    id,
                    result: e.result.map_or(Params::Absent, Params::Json),
                }),
                None => Err(err("frame has neither method nor id".into())),
            }
        }
        Encoding::Msgpack | Encoding::MsgpackZstd => {
            let data: &'a [u8] = if data.starts_with(&ZSTD_MAGIC) {
                *scratch = decompress_bounded(data, max_bytes)
                    .map_err(|e| err(e.error.message.into_owned()))?;
                &scratch[..]
            } else {
                data
            };
            // Server frames carry `bin` (tiles) and are not held to JSON's rules, but the
            // lengths and the depth must be checked before rmp_serde recurses and allocates.
            let rules = WalkRules {
                max_depth: MAX_SERVER_FRAME_DEPTH,
                json_compatible: false,
            };
            msgpack::validate_exact(data, rules).map_err(|e| err(e.to_string()))?;
            let (n, mut pos) = msgpack::array_header(data)
                .ok_or_else(|| err("a frame must be an array".into()))?;
            let (kind, used) =
                read_int(&data[pos..]).ok_or_else(|| err("missing frame type".into()))?;
            pos += used;
            // The value at `pos`, and the position after it.
            let element = |pos: usize| -> Result<(&'a [u8], usize), ServerFrameError> {
                let len =
                    msgpack::value_len(&data[pos..], rules).map_err(|e| err(e.to_string()))?;
                Ok((&data[pos..pos + len], pos + len))
            };
            let params_of = |v: &'a [u8]| {
                if v == [0xc0] {
                    Params::Absent
                } else {
                    Params::Msgpack(v)
                }
            };
            match (kind, n) {
                (1, 4) => {
                    let (id, pos) = element(pos)?;
                    let id = if let Some((i, _)) = read_int(id) {
                        Some(Id::Int(i))
                    } else {
                        msgpack::read_str(id).map(|(s, _)| Id::Str(s.into()))
                    };
                    let (error, pos) = element(pos)?;
                    if error != [0xc0] {
                        let error: RpcError =
                            rmp_serde::from_slice(error).map_err(|e| err(e.to_string()))?;
                        return Ok(RawServerFrame::Error { id, error });
                    }
                    let id = id.ok_or_else(|| err("response without id".into()))?;
                    let (result, _) = element(pos)?;
                    Ok(RawServerFrame::Response {
                        id,
                        result: params_of(result),
                    })
                }
                (2, 3) => {
                    let (method, used) = msgpack::read_str(&data[pos..])
                        .ok_or_else(|| err("method is not a string".into()))?;
                    let (params, _) = element(pos + used)?;
                    Ok(RawServerFrame::Notification {
                        method: Cow::Borrowed(method),
                        params: params_of(params),
                    })
                }
                _ => Err(err(format!(
                    "unexpected frame type {kind} with {n} elements"
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_json_requests_and_notifications() {
        let f = decode_client_frame(Encoding::Json, br#"{"jsonrpc":"2.0","id":7,"method":"channel.publish","params":{"channel":"c","data":{"a":1}}}"#).unwrap();
        let ClientFrame::Request { id, method, params } = f else {
            panic!()
        };
        assert_eq!(id, Id::Int(7));
        assert_eq!(method, "channel.publish");
        let data = params.field("data").unwrap().unwrap();
        assert_eq!(data.to_value(), json!({"a": 1}));
        #[derive(Deserialize)]
        struct P {
            channel: String,
        }
        assert_eq!(params.parse::<P>().unwrap().channel, "c");

        let f = decode_client_frame(
            Encoding::Json,
            br#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":"x"}}"#,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Notification { .. }));
    }

    #[test]
    fn json_errors_are_classified() {
        let e = decode_client_frame(Encoding::Json, b"{not json").unwrap_err();
        assert_eq!(e.error.code, ErrorCode::ParseError);
        let e = decode_client_frame(
            Encoding::Json,
            br#"{"jsonrpc":"2.0","id":{"x":1},"method":"m"}"#,
        )
        .unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidRequest);
        let e = decode_client_frame(Encoding::Json, br#"{"jsonrpc":"1.0","id":3,"method":"m"}"#)
            .unwrap_err();
        assert_eq!(
            (e.id, e.error.code),
            (Some(Id::Int(3)), ErrorCode::InvalidRequest)
        );
        let e = decode_client_frame(
            Encoding::Json,
            br#"[{"jsonrpc":"2.0","id":3,"method":"m"}]"#,
        )
        .unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidRequest);
        let e = decode_client_frame(Encoding::Json, br#"{"jsonrpc":"2.0","id":3}"#).unwrap_err();
        assert_eq!(
            (e.id, e.error.code),
            (Some(Id::Int(3)), ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn msgpack_requests_round_trip() {
        for enc in [Encoding::Msgpack, Encoding::MsgpackZstd] {
            let req = encode_request(
                enc,
                Some(&Id::Str("a1".into())),
                "channel.publish",
                &json!({"channel": "c", "data": [1, "x"]}),
            );
            let f = decode_client_frame(enc, &req).unwrap();
            let ClientFrame::Request { id, method, params } = f else {
                panic!()
            };
            assert_eq!(id, Id::Str("a1".into()));
            assert_eq!(method, "channel.publish");
            assert_eq!(
                params.field("data").unwrap().unwrap().to_value(),
                json!([1, "x"])
            );
            let note = encode_request(enc, None, "$/cancelRequest", &json!({"id": 1}));
            assert!(matches!(
                decode_client_frame(enc, &note).unwrap(),
                ClientFrame::Notification { .. }
            ));
        }
    }

    #[test]
    fn msgpack_rejects_bad_frames() {
        for (bytes, code) in [
            (&[0xdd, 0xff, 0xff, 0xff, 0xff][..], ErrorCode::ParseError),
            (&[0x01], ErrorCode::InvalidRequest),
            (&[0x93, 0x01, 0xa1, b'm', 0x80], ErrorCode::InvalidRequest),
            (
                &[0x94, 0x00, 0x80, 0xa1, b'm', 0x80],
                ErrorCode::InvalidRequest,
            ),
        ] {
            assert_eq!(
                decode_client_frame(Encoding::Msgpack, bytes)
                    .unwrap_err()
                    .error
                    .code,
                code,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn responses_decode_back() {
        for enc in Encoding::ALL {
            let id = Id::Int(42);
            let big = "x".repeat(4000);
            let r = encode_response(enc, &id, &json!({"ok": true, "big": big}));
            if enc == Encoding::MsgpackZstd {
                assert!(r.starts_with(&ZSTD_MAGIC));
                assert!(r.len() < 1000);
            }
            assert_eq!(
                decode_server_frame(enc, &r).unwrap(),
                ServerFrame::Response {
                    id: id.clone(),
                    result: json!({"ok": true, "big": big})
                }
            );
            let e = encode_error(enc, None, &RpcError::new(ErrorCode::ParseError, "bad"));
            assert_eq!(
                decode_server_frame(enc, &e).unwrap(),
                ServerFrame::Error {
                    id: None,
                    error: RpcError::new(ErrorCode::ParseError, "bad")
                }
            );
            let n = encode_notification(enc, "$/progress", &json!({"id": 1, "done": 5}));
            assert_eq!(
                decode_server_frame(enc, &n).unwrap(),
                ServerFrame::Notification {
                    method: "$/progress".into(),
                    params: json!({"id": 1, "done": 5})
                }
            );
        }
    }

    #[test]
    fn raw_frames_decode_into_types() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct R {
            ok: bool,
            big: String,
        }
        #[derive(Debug, PartialEq, Deserialize)]
        struct Sub {
            sub: u32,
        }
        for enc in Encoding::ALL {
            let mut scratch = Vec::new();
            let big = "x".repeat(4000);
            let r = encode_response(enc, &Id::Int(42), &json!({"ok": true, "big": big}));
            let RawServerFrame::Response { id, result } =
                decode_raw_server_frame(enc, &r, &mut scratch, 1 << 20).unwrap()
            else {
                panic!()
            };
            assert_eq!(id, Id::Int(42));
            let owned = result.to_owned();
            assert_eq!(owned.decode::<R>().unwrap(), R { ok: true, big });
            let e = encode_error(
                enc,
                Some(&Id::Str("a".into())),
                &RpcError::new(ErrorCode::Locked, "no"),
            );
            let mut scratch = Vec::new();
            let RawServerFrame::Error { id, error } =
                decode_raw_server_frame(enc, &e, &mut scratch, 1 << 20).unwrap()
            else {
                panic!()
            };
            assert_eq!(
                (id, error.code),
                (Some(Id::Str("a".into())), ErrorCode::Locked)
            );
            let p = encode_push(enc, "message", &json!({"channel": "c"}), None).to_bytes(300);
            let mut scratch = Vec::new();
            let RawServerFrame::Notification { method, params } =
                decode_raw_server_frame(enc, &p, &mut scratch, 1 << 20).unwrap()
            else {
                panic!()
            };
            assert_eq!(method, "message");
            assert_eq!(params.decode::<Sub>().unwrap(), Sub { sub: 300 });
            // A decode error names the member.
            let m = params.decode::<R>().unwrap_err();
            assert!(m.contains("ok"), "{m}");
        }
        // Limits and untrusted input, as for `decode_server_frame`.
        let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
        let mut scratch = Vec::new();
        assert!(
            decode_raw_server_frame(Encoding::MsgpackZstd, &bomb, &mut scratch, 1 << 20).is_err()
        );
        let mut deep = vec![0x93, 0x02, 0xa1, b'm'];
        deep.extend(vec![0x91u8; 1000]);
        deep.push(0x01);
        assert!(decode_raw_server_frame(Encoding::Msgpack, &deep, &mut scratch, 1 << 20).is_err());
    }

    #[test]
    fn pushes_splice_the_subscription_id() {
        #[derive(Serialize)]
        struct F<'a> {
            channel: &'a str,
            offset: u64,
        }
        for raw in [
            Payload::from_json(Bytes::from_static(br#"{"t":"hi"}"#)).unwrap(),
            Payload::json_value(&"y".repeat(3000)),
        ] {
            for enc in Encoding::ALL {
                let p = encode_push(
                    enc,
                    "message",
                    &F {
                        channel: "chat",
                        offset: 9,
                    },
                    Some(("data", &raw)),
                );
                for sub in [0u32, 1, 127, 128, 255, 256, 65535, 65536, u32::MAX] {
                    let b = p.to_bytes(sub);
                    assert_eq!(b.len(), p.len(sub));
                    let ServerFrame::Notification { method, params } =
                        decode_server_frame(enc, &b).unwrap()
                    else {
                        panic!()
                    };
                    assert_eq!(method, "message");
                    assert_eq!(
                        params,
                        json!({"sub": sub, "channel": "chat", "offset": 9, "data": raw.to_value()}),
                        "{enc} {sub}"
                    );
                }
            }
        }
        let big = Payload::json_value(&"y".repeat(3000));
        let p = encode_push(
            Encoding::MsgpackZstd,
            "message",
            &F {
                channel: "chat",
                offset: 9,
            },
            Some(("data", &big)),
        );
        assert!(p.len(1) < 200, "compressed push is {} bytes", p.len(1));
    }

    #[test]
    fn json_params_without_envelope() {
        let p = encode_push(
            Encoding::Json,
            "message",
            &json!({"channel": "c"}),
            Some(("data", &Payload::json_value(&[1, 2]))),
        );
        let mut out = Vec::new();
        p.write_json_params(12, &mut out).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            json!({"sub": 12, "channel": "c", "data": [1, 2]})
        );
        assert!(
            encode_push(Encoding::Msgpack, "m", &json!({}), None)
                .write_json_params(1, &mut out)
                .is_none()
        );
    }

    #[test]
    fn empty_field_structs_encode() {
        #[derive(Serialize)]
        struct Empty {}
        for enc in Encoding::ALL {
            let p = encode_push(enc, "x", &Empty {}, None);
            let ServerFrame::Notification { params, .. } =
                decode_server_frame(enc, &p.to_bytes(3)).unwrap()
            else {
                panic!()
            };
            assert_eq!(params, json!({"sub": 3}));
        }
    }

    #[test]
    fn zstd_bombs_are_bounded() {
        let bomb = zstd::bulk::compress(&vec![0u8; 50 << 20], 3).unwrap();
        assert!(bomb.len() < 10_000);
        let e = decompress_bounded(&bomb, 1 << 20).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::LimitExceeded);
        let ok = zstd::bulk::compress(b"[2,\"ping\",{}]", 3).unwrap();
        assert_eq!(
            decompress_bounded(&ok, 1 << 20).unwrap(),
            b"[2,\"ping\",{}]"
        );
        assert!(decompress_bounded(&[0x28, 0xb5, 0x2f, 0xfd, 0xff], 1 << 20).is_err());
        // Regression (found by fuzz_zstd): a plain 8 KB frame against a 1 KB limit was called
        // a parse error, because zstd refuses its window before decoding anything.
        let big = zstd::bulk::compress(&[0u8; 8185], 1).unwrap();
        let e = decompress_bounded(&big, 1024).unwrap_err();
        assert_eq!(
            e.error.code,
            ErrorCode::LimitExceeded,
            "{}",
            e.error.message
        );
        assert!(
            decompress_bounded(
                &[0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xff, 0x01, 0x00, 0x00],
                1 << 20
            )
            .is_err_and(|e| e.error.code == ErrorCode::LimitExceeded),
            "a 2^41-byte window is declared"
        );
    }

    /// Regressions found by the fuzz properties: the client-side decoder trusted its input.
    #[test]
    fn server_frames_are_untrusted_input() {
        // 1,000 nested arrays overflowed the stack of a 2 MiB thread inside rmp_serde.
        let mut deep = vec![0x91u8; 1000];
        deep.push(0x01);
        let e = decode_server_frame(Encoding::Msgpack, &deep).unwrap_err();
        assert!(e.to_string().contains("nesting deeper than 127"), "{e}");
        // A compressed frame was decompressed without a limit (and zstd's `decode_all`
        // reserves up to 32 MiB from the size a frame header declares).
        let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
        let e = decode_server_frame_limited(Encoding::MsgpackZstd, &bomb, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        // Within the limit, compressed frames decode as before.
        let p = encode_notification(
            Encoding::MsgpackZstd,
            "m",
            &json!({"x": "y".repeat(2000), "t": [1, 2]}),
        );
        assert!(p.starts_with(&ZSTD_MAGIC));
        let ServerFrame::Notification { params, .. } =
            decode_server_frame_limited(Encoding::MsgpackZstd, &p, 1 << 20).unwrap()
        else {
            panic!()
        };
        assert_eq!(params["t"], json!([1, 2]));
        // Binary values (tiles) are still accepted from the server.
        let with_bin = [
            0x93, 0x02, 0xa1, b'm', 0x81, 0xa1, b'b', 0xc4, 0x02, 0x07, 0x08,
        ];
        let ServerFrame::Notification { params, .. } =
            decode_server_frame(Encoding::Msgpack, &with_bin).unwrap()
        else {
            panic!()
        };
        assert_eq!(params, json!({"b": [7, 8]}));
    }
}
