//! `geostream` / `geostream-msgpack`: the geostream protocol v1 (docs/PROTOCOL.md of the
//! geostream repository), over `GET /v1/ws`, in its JSON-RPC or its MessagePack encoding.
//!
//! This file lives in the geostream repository (bench/peers/adapter/) and is copied into a
//! temporary copy of the peer harness by bench/peers/run.sh, which also registers it.
//!
//! Mapping of the harness's operations:
//! - open: nothing (`hello` is optional; the connection is usable at once);
//! - subscribe: request `channel.subscribe {"channel": topic}`; Ready = its success response
//!   (a result holding `sub`);
//! - publish: request `channel.publish {"channel": topic, "data": body}`; its response (a
//!   position) is not data and is ignored;
//! - echo: request `ping {"data": body}`; Data = the response's `result.data`;
//! - Data also = every `message` push's `params.data`.
//!
//! JSON frames:    `{"jsonrpc":"2.0","method":"message","params":{"sub":1,"channel":"c","offset":7,"data":"..."}}`
//!                 `{"jsonrpc":"2.0","id":3,"result":{"data":"..."}}`
//! MessagePack:    `[2, "message", {...same map...}]`, `[1, id, error|nil, result|nil]`.
//!
//! Bodies from body::encode are plain ASCII without `"` or `\`, so they go into a JSON string
//! as they are, and a subscriber's payload is a zero-copy slice of the received frame.
//! Server errors (`error` responses, `unsubscribed` pushes, non-frames) make `decode` return
//! `Err` with the frame's text; `gap` pushes (the server dropped messages for a slow
//! subscriber) are reported on stderr and otherwise left to the loadgen's sequence check,
//! which counts the missing messages as loss.

use super::{frame_bytes, text, Event, Proto};
use crate::args::Args;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Msgpack,
}

pub struct Geostream {
    enc: Encoding,
    path: String,
}

impl Geostream {
    pub fn from_args(a: &Args, enc: Encoding) -> Result<Self, String> {
        Ok(Geostream { enc, path: a.str("path", "/v1/ws") })
    }
}

/// Per-connection state: the next JSON-RPC request id (ids only need to be unique per
/// connection; nothing waits for a particular one, responses are classified by content).
#[derive(Default)]
pub struct State {
    next_id: u64,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// At most this many server-side problems (errors, gap pushes) are printed to stderr per
/// loadgen process: enough to see what went wrong in `$OUT/<peer>.<scenario>.err`, without
/// flooding it when every subscriber hits the same problem thousands of times.
const MAX_REPORTS: usize = 20;
static REPORTS: AtomicUsize = AtomicUsize::new(0);

fn report(what: &str, frame: &[u8]) {
    if REPORTS.fetch_add(1, Relaxed) < MAX_REPORTS {
        eprintln!("geostream adapter: {what}: {}", show(frame));
    }
}

/// A frame for a message: the text of a JSON frame, or hex + a JSON rendering of a
/// MessagePack frame; both cut to a readable length.
fn show(frame: &[u8]) -> String {
    const MAX: usize = 300;
    if let Ok(s) = std::str::from_utf8(frame) {
        if !frame.first().is_some_and(|&b| b >= 0x80) {
            return s.chars().take(MAX).collect();
        }
    }
    let mut r = Mp::new(frame);
    let json = r.to_json(0).map(|v| v.to_string()).unwrap_or_else(|e| format!("<undecodable: {e}>"));
    let hex: String = frame.iter().take(64).map(|b| format!("{b:02x}")).collect();
    format!("msgpack {json} (hex {hex}{})", if frame.len() > 64 { "..." } else { "" }).chars().take(MAX * 2).collect()
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// JSON request with `params` made of string members (`(key, value)`); values must not
/// need escaping (topic names and bodies are plain ASCII without quotes or backslashes).
fn json_request(id: u64, method: &str, params: &[(&str, &[u8])]) -> Message {
    let len: usize = params.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    let mut v = Vec::with_capacity(64 + method.len() + len);
    v.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    v.extend_from_slice(id.to_string().as_bytes());
    v.extend_from_slice(br#","method":""#);
    v.extend_from_slice(method.as_bytes());
    v.extend_from_slice(br#"","params":{"#);
    for (i, (k, val)) in params.iter().enumerate() {
        debug_assert!(!val.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20));
        if i > 0 {
            v.push(b',');
        }
        v.push(b'"');
        v.extend_from_slice(k.as_bytes());
        v.extend_from_slice(b"\":\"");
        v.extend_from_slice(val);
        v.push(b'"');
    }
    v.extend_from_slice(b"}}");
    text(v)
}

/// MessagePack unsigned integer, smallest form.
fn mp_uint(v: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        v.push(n as u8);
    } else if n <= 0xff {
        v.extend_from_slice(&[0xcc, n as u8]);
    } else if n <= 0xffff {
        v.push(0xcd);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        v.push(0xce);
        v.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        v.push(0xcf);
        v.extend_from_slice(&n.to_be_bytes());
    }
}

/// MessagePack str, smallest form.
fn mp_str(v: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        v.push(0xa0 | n as u8);
    } else if n <= 0xff {
        v.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= 0xffff {
        v.push(0xda);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(0xdb);
        v.extend_from_slice(&(n as u32).to_be_bytes());
    }
    v.extend_from_slice(s);
}

/// MessagePack request `[0, id, method, {key: str, ...}]` (fewer than 16 params).
fn mp_request(id: u64, method: &str, params: &[(&str, &[u8])]) -> Message {
    debug_assert!(params.len() < 16);
    let len: usize = params.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    let mut v = Vec::with_capacity(24 + method.len() + len);
    v.extend_from_slice(&[0x94, 0x00]);
    mp_uint(&mut v, id);
    mp_str(&mut v, method.as_bytes());
    v.push(0x80 | params.len() as u8);
    for (k, val) in params {
        mp_str(&mut v, k.as_bytes());
        mp_str(&mut v, val);
    }
    Message::Binary(v.into())
}

impl Geostream {
    fn request(&self, st: &mut State, method: &str, params: &[(&str, &[u8])]) -> Message {
        let id = st.id();
        match self.enc {
            Encoding::Json => json_request(id, method, params),
            Encoding::Msgpack => mp_request(id, method, params),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON decoding
// ---------------------------------------------------------------------------------------------

const PUSH_MESSAGE: &[u8] = br#"{"jsonrpc":"2.0","method":"message","params":{"#;
const RESPONSE: &[u8] = br#"{"jsonrpc":"2.0","id":"#;

/// Fast path for the two frames that carry payloads, in the exact form the server writes
/// them: a `message` push whose last member is `"data":"<payload>"`, and a response whose
/// result is `{"data":"<payload>"}`. The payload is the string before the closing `"}}`;
/// it must contain no backslash (an escape would need real parsing). Anything else: None.
fn json_fast(b: &Bytes) -> Option<Bytes> {
    const DATA: &[u8] = br#""data":""#;
    let n = b.len();
    if n < 8 || !b.ends_with(br#""}}"#) {
        return None;
    }
    let end = n - 3;
    let q = b[..end].iter().rposition(|&c| c == b'"')?; // opening quote of the payload
    let key = q.checked_sub(DATA.len() - 1)?;
    if &b[key..=q] != DATA || b[q + 1..end].contains(&b'\\') {
        return None;
    }
    let ok = if b.starts_with(PUSH_MESSAGE) {
        // `,"data":"` inside the params object of a message push.
        b[key - 1] == b','
    } else if b.starts_with(RESPONSE) {
        b[..key].ends_with(br#","result":{"#)
    } else {
        false
    };
    ok.then(|| b.slice(q + 1..end))
}

fn decode_json(b: Bytes, out: &mut Vec<Event>) -> Result<(), String> {
    if let Some(p) = json_fast(&b) {
        out.push(Event::Data(p));
        return Ok(());
    }
    // Slow path: everything else (subscribe/publish responses, other pushes, errors).
    let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| {
        report("not JSON", &b);
        format!("geostream: bad JSON ({e}): {}", show(&b))
    })?;
    if v.get("error").is_some() {
        report("error response", &b);
        return Err(format!("geostream: server error: {}", show(&b)));
    }
    if let Some(m) = v.get("method").and_then(|m| m.as_str()) {
        let p = &v["params"];
        return match m {
            "message" => match p.get("data") {
                Some(serde_json::Value::String(s)) => {
                    out.push(Event::Data(Bytes::copy_from_slice(s.as_bytes())));
                    Ok(())
                }
                // Not a body of ours: pass it on so the loadgen counts it as a bad payload.
                Some(d) => {
                    out.push(Event::Data(Bytes::from(d.to_string())));
                    Ok(())
                }
                None => Err(format!("geostream: message push without data: {}", show(&b))),
            },
            "gap" => {
                report("gap push (server dropped messages for this subscriber)", &b);
                Ok(())
            }
            "unsubscribed" => {
                report("unsubscribed push", &b);
                Err(format!("geostream: unsubscribed by server: {}", show(&b)))
            }
            _ => Ok(()), // join/leave/$/progress/...: not ours to count
        };
    }
    if let Some(r) = v.get("result") {
        if r.get("sub").is_some() {
            out.push(Event::Ready); // channel.subscribe succeeded
        } else if let Some(d) = r.get("data") {
            let s = d.as_str().map(|s| s.to_string()).unwrap_or_else(|| d.to_string());
            out.push(Event::Data(Bytes::from(s)));
        }
        // Anything else (a publish's position, hello): not data.
        return Ok(());
    }
    Err(format!("geostream: unexpected frame: {}", show(&b)))
}

// ---------------------------------------------------------------------------------------------
// MessagePack decoding
// ---------------------------------------------------------------------------------------------

/// Minimal MessagePack reader over one frame: walks values without allocating, returns
/// byte ranges of strings so payloads are zero-copy slices of the frame.
struct Mp<'a> {
    b: &'a [u8],
    i: usize,
}

/// Nesting deeper than this is refused (the server never nests that deep; a corrupt frame
/// must not recurse without bound).
const MAX_DEPTH: usize = 64;

impl<'a> Mp<'a> {
    fn new(b: &'a [u8]) -> Self {
        Mp { b, i: 0 }
    }

    fn u8(&mut self) -> Result<u8, String> {
        let c = *self.b.get(self.i).ok_or("msgpack: truncated")?;
        self.i += 1;
        Ok(c)
    }

    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, String> {
        let s = self.i;
        let e = s.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("msgpack: truncated")?;
        self.i = e;
        Ok(s..e)
    }

    fn be(&mut self, n: usize) -> Result<u64, String> {
        let r = self.take(n)?;
        Ok(self.b[r].iter().fold(0u64, |x, &c| (x << 8) | c as u64))
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn array_len(&mut self) -> Result<usize, String> {
        match self.u8()? {
            c @ 0x90..=0x9f => Ok((c & 0x0f) as usize),
            0xdc => Ok(self.be(2)? as usize),
            0xdd => Ok(self.be(4)? as usize),
            c => Err(format!("msgpack: expected array, got 0x{c:02x}")),
        }
    }

    fn map_len(&mut self) -> Result<usize, String> {
        match self.u8()? {
            c @ 0x80..=0x8f => Ok((c & 0x0f) as usize),
            0xde => Ok(self.be(2)? as usize),
            0xdf => Ok(self.be(4)? as usize),
            c => Err(format!("msgpack: expected map, got 0x{c:02x}")),
        }
    }

    /// A non-negative integer.
    fn uint(&mut self) -> Result<u64, String> {
        match self.u8()? {
            c @ 0x00..=0x7f => Ok(c as u64),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            c => Err(format!("msgpack: expected unsigned integer, got 0x{c:02x}")),
        }
    }

    /// The byte range of a str or bin value, or None (the value is skipped) for anything else.
    fn bytes(&mut self) -> Result<Option<std::ops::Range<usize>>, String> {
        let n = match self.peek().ok_or("msgpack: truncated")? {
            c @ 0xa0..=0xbf => {
                self.i += 1;
                (c & 0x1f) as usize
            }
            0xd9 | 0xc4 => {
                self.i += 1;
                self.be(1)? as usize
            }
            0xda | 0xc5 => {
                self.i += 1;
                self.be(2)? as usize
            }
            0xdb | 0xc6 => {
                self.i += 1;
                self.be(4)? as usize
            }
            _ => {
                self.skip(0)?;
                return Ok(None);
            }
        };
        Ok(Some(self.take(n)?))
    }

    /// Skips one value of any type.
    fn skip(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("msgpack: nested too deep".into());
        }
        let c = self.u8()?;
        let (payload, items) = match c {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * (c & 0x0f) as usize),
            0x90..=0x9f => (0, (c & 0x0f) as usize),
            0xa0..=0xbf => ((c & 0x1f) as usize, 0),
            0xc4 | 0xd9 => (self.be(1)? as usize, 0),
            0xc5 | 0xda => (self.be(2)? as usize, 0),
            0xc6 | 0xdb => (self.be(4)? as usize, 0),
            0xc7 => (self.be(1)? as usize + 1, 0),
            0xc8 => (self.be(2)? as usize + 1, 0),
            0xc9 => (self.be(4)? as usize + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, self.be(2)? as usize),
            0xdd => (0, self.be(4)? as usize),
            0xde => (0, 2 * self.be(2)? as usize),
            0xdf => (0, 2 * self.be(4)? as usize),
            0xc1 => return Err("msgpack: reserved byte 0xc1".into()),
        };
        self.take(payload)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Ok(())
    }

    /// Walks a map, returning the ranges of the str/bin values of `data` and whether a `sub`
    /// key is present. Other members are skipped.
    fn scan_map(&mut self) -> Result<(Option<std::ops::Range<usize>>, bool), String> {
        let n = self.map_len()?;
        let (mut data, mut sub) = (None, false);
        for _ in 0..n {
            match self.bytes()?.map(|r| &self.b[r]) {
                Some(b"data") => data = self.bytes()?,
                Some(b"sub") => {
                    sub = true;
                    self.skip(0)?;
                }
                _ => self.skip(0)?,
            }
        }
        Ok((data, sub))
    }

    /// Any value as JSON, for error messages (bin as an array of numbers, ext as null).
    fn to_json(&mut self, depth: usize) -> Result<serde_json::Value, String> {
        use serde_json::Value as V;
        if depth > MAX_DEPTH {
            return Err("msgpack: nested too deep".into());
        }
        let c = self.peek().ok_or("msgpack: truncated")?;
        Ok(match c {
            0x00..=0x7f | 0xcc..=0xcf => V::from(self.uint()?),
            0xe0..=0xff => {
                self.i += 1;
                V::from(c as i8)
            }
            0xd0..=0xd3 => {
                self.i += 1;
                let n = 1usize << (c - 0xd0);
                let x = self.be(n)?;
                let shift = 64 - 8 * n as u32;
                V::from(((x << shift) as i64) >> shift)
            }
            0xc0 => {
                self.i += 1;
                V::Null
            }
            0xc2 | 0xc3 => {
                self.i += 1;
                V::Bool(c == 0xc3)
            }
            0xca => {
                self.i += 1;
                V::from(f32::from_bits(self.be(4)? as u32) as f64)
            }
            0xcb => {
                self.i += 1;
                V::from(f64::from_bits(self.be(8)?))
            }
            0xa0..=0xbf | 0xd9..=0xdb => {
                let r = self.bytes()?.ok_or("msgpack: str")?;
                V::String(String::from_utf8_lossy(&self.b[r]).into_owned())
            }
            0xc4..=0xc6 => {
                let r = self.bytes()?.ok_or("msgpack: bin")?;
                V::Array(self.b[r].iter().map(|&x| V::from(x)).collect())
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                let n = self.array_len()?;
                let mut a = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    a.push(self.to_json(depth + 1)?);
                }
                V::Array(a)
            }
            0x80..=0x8f | 0xde | 0xdf => {
                let n = self.map_len()?;
                let mut m = serde_json::Map::new();
                for _ in 0..n {
                    let k = match self.to_json(depth + 1)? {
                        V::String(s) => s,
                        other => other.to_string(),
                    };
                    m.insert(k, self.to_json(depth + 1)?);
                }
                V::Object(m)
            }
            _ => {
                self.skip(depth)?;
                V::Null
            }
        })
    }
}

fn decode_msgpack(b: Bytes, out: &mut Vec<Event>) -> Result<(), String> {
    let fail = |e: String| {
        report("bad MessagePack frame", &b);
        format!("geostream: {e}: {}", show(&b))
    };
    let mut r = Mp::new(&b);
    let n = r.array_len().map_err(fail)?;
    match (n, r.uint().map_err(fail)?) {
        // Notification / push: [2, method, params].
        (3, 2) => {
            let m = r.bytes().map_err(fail)?.ok_or_else(|| fail("method is not a string".into()))?;
            match &b[m] {
                b"message" => match r.scan_map().map_err(fail)? {
                    (Some(d), _) => out.push(Event::Data(b.slice(d))),
                    (None, _) => return Err(format!("geostream: message push without str data: {}", show(&b))),
                },
                b"gap" => report("gap push (server dropped messages for this subscriber)", &b),
                b"unsubscribed" => {
                    report("unsubscribed push", &b);
                    return Err(format!("geostream: unsubscribed by server: {}", show(&b)));
                }
                _ => {}
            }
        }
        // Response: [1, id, error, result].
        (4, 1) => {
            r.skip(0).map_err(fail)?; // id
            if r.peek() != Some(0xc0) {
                report("error response", &b);
                return Err(format!("geostream: server error: {}", show(&b)));
            }
            r.i += 1;
            // Results that are not maps (none of ours) carry nothing we count.
            if matches!(r.peek(), Some(0x80..=0x8f | 0xde | 0xdf)) {
                match r.scan_map().map_err(fail)? {
                    (_, true) => out.push(Event::Ready), // channel.subscribe succeeded
                    (Some(d), false) => out.push(Event::Data(b.slice(d))), // ping echo
                    (None, false) => {} // a publish's position, hello, ...
                }
            }
        }
        _ => return Err(fail("not a response or notification array".into())),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The adapter
// ---------------------------------------------------------------------------------------------

impl Proto for Geostream {
    type State = State;

    fn name(&self) -> &'static str {
        match self.enc {
            Encoding::Json => "geostream",
            Encoding::Msgpack => "geostream-msgpack",
        }
    }

    fn path(&self) -> String {
        self.path.clone()
    }

    fn subprotocols(&self) -> Vec<String> {
        // Offer exactly one, so tungstenite fails the upgrade if the server ignores it
        // (it would otherwise fall back to JSON silently).
        vec![match self.enc {
            Encoding::Json => "geostream.v1.json".into(),
            Encoding::Msgpack => "geostream.v1.msgpack".into(),
        }]
    }

    fn open(&self, _: &mut State) -> (Vec<Message>, bool) {
        (Vec::new(), false)
    }

    fn subscribe(&self, st: &mut State, topic: &str) -> (Vec<Message>, bool) {
        (vec![self.request(st, "channel.subscribe", &[("channel", topic.as_bytes())])], true)
    }

    fn publish(&self, st: &mut State, topic: &str, body: &[u8]) -> Message {
        self.request(st, "channel.publish", &[("channel", topic.as_bytes()), ("data", body)])
    }

    fn echo(&self, st: &mut State, body: &[u8]) -> Message {
        self.request(st, "ping", &[("data", body)])
    }

    fn decode(&self, _: &mut State, msg: Message, out: &mut Vec<Event>) -> Result<(), String> {
        let Some(b) = frame_bytes(msg) else { return Ok(()) };
        match self.enc {
            Encoding::Json => decode_json(b, out),
            Encoding::Msgpack => decode_msgpack(b, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(enc: Encoding) -> Geostream {
        Geostream { enc, path: "/v1/ws".into() }
    }

    fn events(enc: Encoding, m: Message) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        p(enc).decode(&mut State::default(), m, &mut out)?;
        Ok(out)
    }

    fn json(frame: &str) -> Result<Vec<Event>, String> {
        events(Encoding::Json, Message::Text(frame.into()))
    }

    fn mp(frame: Vec<u8>) -> Result<Vec<Event>, String> {
        events(Encoding::Msgpack, Message::Binary(frame.into()))
    }

    fn data(ev: &[Event]) -> Vec<Vec<u8>> {
        ev.iter().filter_map(|e| if let Event::Data(d) = e { Some(d.to_vec()) } else { None }).collect()
    }

    /// The error of a decode that must fail (Event has no Debug, so no unwrap_err).
    fn decode_err(r: Result<Vec<Event>, String>) -> String {
        match r {
            Ok(ev) => panic!("expected an error, got {} events", ev.len()),
            Err(e) => e,
        }
    }

    fn ready(ev: &[Event]) -> bool {
        ev.len() == 1 && matches!(ev[0], Event::Ready)
    }

    fn msg_bytes(m: Message) -> Vec<u8> {
        frame_bytes(m).unwrap().to_vec()
    }

    #[test]
    fn json_requests() {
        let g = p(Encoding::Json);
        let mut st = State::default();
        let (sub, wait) = g.subscribe(&mut st, "fanout");
        assert!(wait);
        assert!(matches!(&sub[0], Message::Text(_)));
        assert_eq!(
            msg_bytes(sub[0].clone()),
            br#"{"jsonrpc":"2.0","id":1,"method":"channel.subscribe","params":{"channel":"fanout"}}"#
        );
        assert_eq!(
            msg_bytes(g.publish(&mut st, "fanout", b"00ab..")),
            br#"{"jsonrpc":"2.0","id":2,"method":"channel.publish","params":{"channel":"fanout","data":"00ab.."}}"#
        );
        let e = msg_bytes(g.echo(&mut st, b"x.y"));
        assert_eq!(e, br#"{"jsonrpc":"2.0","id":3,"method":"ping","params":{"data":"x.y"}}"#);
        // Every request is valid JSON with the right shape.
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["params"]["data"], "x.y");
        assert_eq!(g.subprotocols(), vec!["geostream.v1.json".to_string()]);
        assert_eq!(g.path(), "/v1/ws");
    }

    #[test]
    fn json_fast_path() {
        let push = r#"{"jsonrpc":"2.0","method":"message","params":{"sub":1,"channel":"fanout","offset":7,"data":"abc.."}}"#;
        assert_eq!(data(&json(push).unwrap()), vec![b"abc..".to_vec()]);
        assert_eq!(json_fast(&Bytes::from(push)).as_deref(), Some(&b"abc.."[..]));
        let echo = r#"{"jsonrpc":"2.0","id":12,"result":{"data":"0001.."}}"#;
        assert_eq!(data(&json(echo).unwrap()), vec![b"0001..".to_vec()]);
        assert!(json_fast(&Bytes::from(echo)).is_some());
        // Escapes, other members after data, other pushes: not the fast path.
        assert!(json_fast(&Bytes::from(r#"{"jsonrpc":"2.0","id":1,"result":{"data":"a\"b"}}"#)).is_none());
        assert!(json_fast(&Bytes::from(r#"{"jsonrpc":"2.0","method":"join","params":{"sub":1,"x":{"data":"q"}}}"#)).is_none());
        assert!(json_fast(&Bytes::from(r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m","data":"q"}}"#)).is_none());
    }

    #[test]
    fn json_slow_path() {
        // Member order differs, escapes: still found by the full parse.
        let ev = json(r#"{"method":"message","jsonrpc":"2.0","params":{"data":"a\"b","sub":1,"offset":2}}"#).unwrap();
        assert_eq!(data(&ev), vec![b"a\"b".to_vec()]);
        let ev = json(r#"{"jsonrpc":"2.0","id":1,"result":{"data":"a\\b"}}"#).unwrap();
        assert_eq!(data(&ev), vec![b"a\\b".to_vec()]);
    }

    #[test]
    fn json_responses() {
        let sub = r#"{"jsonrpc":"2.0","id":1,"result":{"sub":1,"channel":"fanout","position":{"offset":0,"epoch":"e1"}}}"#;
        assert!(ready(&json(sub).unwrap()));
        // A publish's position is neither data nor ready, even with a tricky epoch.
        assert!(json(r#"{"jsonrpc":"2.0","id":2,"result":{"offset":5,"epoch":"\"data\":\"x"}}"#).unwrap().is_empty());
        assert!(json(r#"{"jsonrpc":"2.0","id":2,"result":{"offset":5,"epoch":"abc"}}"#).unwrap().is_empty());
        assert!(json(r#"{"jsonrpc":"2.0","method":"join","params":{"sub":1,"channel":"c","client":{}}}"#).unwrap().is_empty());
        assert!(json(r#"{"jsonrpc":"2.0","method":"gap","params":{"sub":1,"channel":"c","from":3,"epoch":"e"}}"#).unwrap().is_empty());
    }

    #[test]
    fn json_errors() {
        let e = json(r#"{"jsonrpc":"2.0","id":1,"error":{"code":1003,"message":"rate limited","data":{"retry_after_ms":5}}}"#);
        assert!(decode_err(e).contains("rate limited"));
        let e = json(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"m","data":"x"}}"#);
        assert!(e.is_err());
        assert!(json(r#"{"jsonrpc":"2.0","method":"unsubscribed","params":{"sub":1,"reason":"x"}}"#).is_err());
        assert!(json("not json").is_err());
        // Control frames are not ours.
        assert!(events(Encoding::Json, Message::Ping(Vec::new().into())).unwrap().is_empty());
    }

    /// The push the server writes: [2, "message", {"sub", "channel", "offset", "data"}].
    fn mp_push(sub: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x93, 0x02];
        mp_str(&mut v, b"message");
        v.push(0x84);
        mp_str(&mut v, b"sub");
        mp_uint(&mut v, sub);
        mp_str(&mut v, b"channel");
        mp_str(&mut v, b"fanout");
        mp_str(&mut v, b"offset");
        mp_uint(&mut v, offset);
        mp_str(&mut v, b"data");
        mp_str(&mut v, payload);
        v
    }

    #[test]
    fn msgpack_requests() {
        let g = p(Encoding::Msgpack);
        let mut st = State::default();
        let (sub, wait) = g.subscribe(&mut st, "fanout");
        assert!(wait);
        assert!(matches!(&sub[0], Message::Binary(_)));
        let mut want = vec![0x94, 0x00, 0x01, 0xb1];
        want.extend_from_slice(b"channel.subscribe");
        want.extend_from_slice(&[0x81, 0xa7]);
        want.extend_from_slice(b"channel");
        want.push(0xa6);
        want.extend_from_slice(b"fanout");
        assert_eq!(msg_bytes(sub[0].clone()), want);
        // Publish of a 64-byte body: str8; 1 KiB: str16.
        for (size, hdr) in [(64usize, vec![0xd9, 64]), (1024, vec![0xda, 0x04, 0x00])] {
            let body = vec![b'.'; size];
            let f = msg_bytes(g.publish(&mut st, "fanout", &body));
            let mut r = Mp::new(&f);
            assert_eq!(r.array_len().unwrap(), 4);
            assert_eq!(r.uint().unwrap(), 0);
            r.skip(0).unwrap();
            assert_eq!(&f[r.bytes().unwrap().unwrap()], b"channel.publish");
            assert_eq!(r.map_len().unwrap(), 2);
            assert!(f.windows(hdr.len() + 1).any(|w| w[..hdr.len()] == hdr[..] && w[hdr.len()] == b'.'));
            assert_eq!(Mp::new(&f).to_json(0).unwrap()[3]["data"].as_str().unwrap().len(), size);
        }
        // The example of docs/PROTOCOL.md, with a str instead of 7: 94 00 01 a4 "ping" 81 a4 "data" ...
        let f = msg_bytes(g.echo(&mut State::default(), b"ab"));
        assert_eq!(f, [&[0x94, 0x00, 0x01, 0xa4][..], b"ping", &[0x81, 0xa4], b"data", &[0xa2], b"ab"].concat());
        assert_eq!(g.subprotocols(), vec!["geostream.v1.msgpack".to_string()]);
    }

    #[test]
    fn msgpack_ids() {
        for (id, want) in [(5u64, vec![5u8]), (200, vec![0xcc, 200]), (300, vec![0xcd, 1, 44]), (70_000, vec![0xce, 0, 1, 0x11, 0x70])] {
            let mut v = Vec::new();
            mp_uint(&mut v, id);
            assert_eq!(v, want);
            assert_eq!(Mp::new(&v).uint().unwrap(), id);
        }
    }

    #[test]
    fn msgpack_pushes() {
        let body = vec![b'7'; 100];
        assert_eq!(data(&mp(mp_push(1, 9, b"abc")).unwrap()), vec![b"abc".to_vec()]);
        assert_eq!(data(&mp(mp_push(300, 70_000, &body)).unwrap()), vec![body.clone()]);
        let big = vec![b'.'; 1024];
        assert_eq!(data(&mp(mp_push(1, 1, &big)).unwrap()), vec![big]);
        // Other pushes carry no data; unsubscribed is an error.
        let mut join = vec![0x93, 0x02];
        mp_str(&mut join, b"join");
        join.extend_from_slice(&[0x81, 0xa3]);
        join.extend_from_slice(b"sub");
        join.push(1);
        assert!(mp(join).unwrap().is_empty());
        let mut uns = vec![0x93, 0x02];
        mp_str(&mut uns, b"unsubscribed");
        uns.push(0x80);
        assert!(mp(uns).is_err());
    }

    #[test]
    fn msgpack_responses() {
        // [1, 1, nil, {"sub": 1, "channel": "fanout", "position": {"offset": 0, "epoch": "e"}}]
        let mut sub = vec![0x94, 0x01, 0x01, 0xc0, 0x83, 0xa3];
        sub.extend_from_slice(b"sub");
        sub.push(0x01);
        mp_str(&mut sub, b"channel");
        mp_str(&mut sub, b"fanout");
        mp_str(&mut sub, b"position");
        sub.push(0x82);
        mp_str(&mut sub, b"offset");
        sub.push(0x00);
        mp_str(&mut sub, b"epoch");
        mp_str(&mut sub, b"e");
        assert!(ready(&mp(sub).unwrap()));
        // Echo: [1, 2, nil, {"data": "0123"}]
        let mut echo = vec![0x94, 0x01, 0x02, 0xc0, 0x81];
        mp_str(&mut echo, b"data");
        mp_str(&mut echo, b"0123");
        assert_eq!(data(&mp(echo).unwrap()), vec![b"0123".to_vec()]);
        // The documented response to ping {"data": 7}: 94 01 01 c0 81 a4 "data" 07 (not a str: skipped).
        let doc = [&[0x94, 0x01, 0x01, 0xc0, 0x81, 0xa4][..], b"data", &[0x07]].concat();
        assert!(mp(doc).unwrap().is_empty());
        // Publish: [1, 300, nil, {"offset": 70000, "epoch": "e"}]
        let mut publ = vec![0x94, 0x01, 0xcd, 0x01, 0x2c, 0xc0, 0x82];
        mp_str(&mut publ, b"offset");
        mp_uint(&mut publ, 70_000);
        mp_str(&mut publ, b"epoch");
        mp_str(&mut publ, b"e");
        assert!(mp(publ).unwrap().is_empty());
    }

    /// Frames captured from a geostream server (subscribe response, push of "abc...").
    #[test]
    fn real_server_frames() {
        let hex = |h: &str| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect::<Vec<u8>>();
        let sub = "940101c083a373756201a76368616e6e656ca666616e6f7574a8706f736974696f6e82a66f666673657400a565706f6368a8304b514e5930564e";
        assert!(ready(&mp(hex(sub)).unwrap()));
        let push = "9302a76d65737361676584a373756201a76368616e6e656ca666616e6f7574a66f666673657401a464617461a66162632e2e2e";
        assert_eq!(data(&mp(hex(push)).unwrap()), vec![b"abc...".to_vec()]);
        let ev = json(r#"{"jsonrpc":"2.0","id":1,"result":{"sub":1,"channel":"fanout","position":{"offset":0,"epoch":"0KQNY0VN"}}}"#);
        assert!(ready(&ev.unwrap()));
        let push = r#"{"jsonrpc":"2.0","method":"message","params":{"sub":1,"channel":"fanout","offset":1,"data":"abc..."}}"#;
        assert!(json_fast(&Bytes::from(push)).is_some());
        assert!(json(r#"{"jsonrpc":"2.0","id":2,"result":{"offset":1,"epoch":"0KQNY0VN"}}"#).unwrap().is_empty());
        assert!(json_fast(&Bytes::from(r#"{"jsonrpc":"2.0","id":3,"result":{"data":"xyz"}}"#)).is_some());
    }

    #[test]
    fn msgpack_errors() {
        // [1, 3, {"code": 1003, "message": "rate limited", "data": {"retry_after_ms": 5}}, nil]
        let mut e = vec![0x94, 0x01, 0x03, 0x83];
        mp_str(&mut e, b"code");
        e.extend_from_slice(&[0xcd, 0x03, 0xeb]);
        mp_str(&mut e, b"message");
        mp_str(&mut e, b"rate limited");
        mp_str(&mut e, b"data");
        e.push(0x81);
        mp_str(&mut e, b"retry_after_ms");
        e.push(0x05);
        e.push(0xc0);
        let err = decode_err(mp(e));
        assert!(err.contains("rate limited") && err.contains("1003"), "{err}");
        // Negative codes render too: -32700 = d1 80 44.
        let mut e = vec![0x94, 0x01, 0xc0, 0x81];
        mp_str(&mut e, b"code");
        e.extend_from_slice(&[0xd1, 0x80, 0x44]);
        e.push(0xc0);
        assert!(decode_err(mp(e)).contains("-32700"));
        // Truncated or not an array.
        let mut t = mp_push(1, 1, b"abcdef");
        t.truncate(t.len() - 2);
        assert!(mp(t).is_err());
        assert!(mp(vec![0x81, 0xa1, b'a', 0x01]).is_err());
        assert!(mp(Vec::new()).is_err());
    }

    #[test]
    fn msgpack_skip_types() {
        // A push map with members of every kind before data.
        let mut v = vec![0x93, 0x02];
        mp_str(&mut v, b"message");
        v.push(0x8a);
        for (k, val) in [
            (&b"f32"[..], vec![0xca, 0, 0, 0, 0]),
            (b"f64", vec![0xcb, 0, 0, 0, 0, 0, 0, 0, 0]),
            (b"neg", vec![0xe0]),
            (b"i16", vec![0xd1, 0xff, 0xfe]),
            (b"bin", vec![0xc4, 2, 1, 2]),
            (b"ext", vec![0xd4, 1, 9]),
            (b"arr", vec![0x92, 0xc2, 0xc3]),
            (b"map", vec![0x81, 0xa1, b'k', 0xc0]),
            (b"a16", vec![0xdc, 0, 1, 0x01]),
        ] {
            mp_str(&mut v, k);
            v.extend_from_slice(&val);
        }
        mp_str(&mut v, b"data");
        mp_str(&mut v, b"payload");
        assert_eq!(data(&mp(v.clone()).unwrap()), vec![b"payload".to_vec()]);
        assert!(Mp::new(&v).to_json(0).unwrap()[2]["map"]["k"].is_null());
        // Bounded nesting.
        let deep = vec![0x91; 100];
        assert!(Mp::new(&deep).skip(0).is_err());
    }
}
