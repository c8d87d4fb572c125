//! Fuzz properties of the MessagePack frame decoders: the validating walker
//! (`msgpack::value_len`, `validate_exact`), `decode_client_frame(Msgpack, ..)` with what the
//! server does next (`Params::parse`, `Params::field`), `Payload::from_msgpack` and
//! `decode_server_frame(Msgpack, ..)`.
//!
//! Every property: no panic, a clear error, and a peak heap use bounded by a constant plus a
//! multiple of the input length, whatever the length prefixes claim (4 GB strings, arrays of
//! four billion elements).

mod fuzz_support;

use bytes::Bytes;
use fuzz_support::{apply, config, json_close, json_value, mutations, peak_alloc};
use geostream_core::codec::{
    ClientFrame, Encoding, Id, Params, decode_client_frame, decode_server_frame, encode_request,
};
use geostream_core::msgpack::{self, WalkRules};
use geostream_core::{ErrorCode, Payload};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Fixed heap allowance for one decode.
const BASE: usize = 64 * 1024;

/// `decode_server_frame` is the client's decoder, built on rmp_serde and serde's `Vec`
/// visitor, which preallocates up to 1 MiB from a length prefix before it finds the input
/// short. Bounded, but not by the input.
const CLIENT_BASE: usize = 2 << 20;

const HUGE: &[&[u8]] = &[
    &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32
    &[0xc6, 0xff, 0xff, 0xff, 0xff],       // bin32
    &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32
    &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], // ext32
];

const TOKENS: &[&[u8]] = &[
    &[0xdb, 0xff, 0xff, 0xff, 0xff],
    &[0xc6, 0xff, 0xff, 0xff, 0xff],
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdf, 0xff, 0xff, 0xff, 0xff],
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xdc, 0xff, 0xff],
    &[0xde, 0xff, 0xff],
    &[0xda, 0xff, 0xff],
    &[0xc5, 0xff, 0xff],
    &[0xd9, 0xff],
    &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
    &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], // NaN
    &[0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0], // +inf
    &[0xc1],
    &[0xc0],
    &[0xd4, 0x01, 0x02],
    &[0xa2, 0xff, 0xfe],
    &[0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91],
    &[0x81, 0xa1, b'a', 0x81, 0xa1, b'a'],
    &[0x81, 0x01, 0x02],
    &[0x94, 0x00],
    &[0x93, 0x02],
];

/// Decodes a client frame and does what the server does next; returns whether it decoded.
fn decode_like_the_server(data: &[u8]) -> Result<bool, TestCaseError> {
    match decode_client_frame(Encoding::Msgpack, data) {
        Ok(ClientFrame::Request { params, .. } | ClientFrame::Notification { params, .. }) => {
            let _ = params.parse::<Value>();
            let _ = params.parse::<Map<String, Value>>();
            if let Ok(Some(p)) = params.field("data") {
                check_payload(&p)?;
            }
            Ok(true)
        }
        Err(e) => {
            prop_assert!(
                matches!(
                    e.error.code,
                    ErrorCode::ParseError | ErrorCode::InvalidRequest
                ),
                "{:?}: {}",
                e.error.code,
                e.error.message
            );
            prop_assert!(!e.error.message.is_empty() && e.error.message.len() <= 256);
            Ok(false)
        }
    }
}

/// A payload that was accepted converts to JSON and back without loss (transcoding "cannot
/// fail", `Payload::write_json` relies on it).
fn check_payload(p: &Payload) -> Result<(), TestCaseError> {
    let mut json = Vec::new();
    p.write_json(&mut json);
    let v: Value = serde_json::from_slice(&json)
        .map_err(|e| TestCaseError::fail(format!("payload as JSON does not parse: {e}")))?;
    let back = Payload::from_json(Bytes::from(json));
    prop_assert!(back.is_ok(), "{:?}", back.err());
    let mut mp = Vec::new();
    back.unwrap().write_msgpack(&mut mp);
    prop_assert!(Payload::from_msgpack(Bytes::from(mp)).is_ok());
    prop_assert!(json_close(&p.to_value(), &v));
    Ok(())
}

/// Every decoder on one input, each call's peak heap checked.
fn all_decoders(data: &[u8]) -> Result<(), TestCaseError> {
    let (r, peak) = peak_alloc(|| decode_like_the_server(data));
    r?;
    prop_assert!(
        peak <= BASE + 64 * data.len(),
        "client frame: {peak} bytes for {}",
        data.len()
    );
    let rules = WalkRules::default();
    let (r, peak) = peak_alloc(|| msgpack::value_len(data, rules));
    prop_assert_eq!(peak, 0, "the walker allocates nothing");
    if let Ok(n) = r {
        prop_assert!(n <= data.len());
        prop_assert!(msgpack::validate_exact(&data[..n], rules).is_ok());
    }
    let (r, peak) = peak_alloc(|| {
        Payload::from_msgpack(Bytes::copy_from_slice(data)).map(|p| check_payload(&p))
    });
    if let Ok(checked) = r {
        checked?;
    }
    // Converting to and from JSON builds a tree: with serde_json's order-preserving maps
    // each nested map costs about a kilobyte, and nesting is capped at
    // MAX_PAYLOAD_DEPTH, so the bound has a per-level allowance besides the per-byte one.
    prop_assert!(
        peak <= BASE + 64 * data.len() + 2048 * geostream_core::payload::MAX_PAYLOAD_DEPTH,
        "payload: {peak} bytes for {}",
        data.len()
    );
    let (_, peak) = peak_alloc(|| decode_server_frame(Encoding::Msgpack, data).is_ok());
    prop_assert!(
        peak <= CLIENT_BASE + 128 * data.len(),
        "server frame: {peak} bytes for {}",
        data.len()
    );
    Ok(())
}

#[derive(Debug, Clone)]
struct Frame {
    bytes: Vec<u8>,
    id: Option<Id>,
    method: String,
    params: Value,
}

fn frame() -> impl Strategy<Value = Frame> {
    let id = prop_oneof![
        Just(None),
        any::<i64>().prop_map(|i| Some(Id::Int(i))),
        "\\PC{0,10}".prop_map(|s| Some(Id::Str(s.into()))),
    ];
    (id, "[a-z$./]{0,12}", json_value(5, 48)).prop_map(|(id, method, params)| Frame {
        bytes: encode_request(Encoding::Msgpack, id.as_ref(), &method, &params).to_vec(),
        id,
        method,
        params,
    })
}

/// A valid frame with one value replaced by a header that claims 0xFFFFFFFF elements or
/// bytes, followed by a few real bytes.
fn lying_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        frame(),
        proptest::sample::select(HUGE),
        0..4u8,
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(f, huge, place, tail)| {
            let mut out = Vec::new();
            match place {
                // The frame itself.
                0 => out.extend_from_slice(huge),
                // The method.
                1 => {
                    out.extend_from_slice(&[0x93, 0x02]);
                    out.extend_from_slice(huge);
                }
                // The id.
                2 => {
                    out.extend_from_slice(&[0x94, 0x00]);
                    out.extend_from_slice(huge);
                }
                // The params, after a valid head.
                _ => {
                    let (_, used) = msgpack::array_header(&f.bytes).unwrap();
                    let mut pos = used + 1;
                    if f.id.is_some() {
                        pos += msgpack::value_len(&f.bytes[pos..], WalkRules::default()).unwrap();
                    }
                    pos += msgpack::value_len(&f.bytes[pos..], WalkRules::default()).unwrap();
                    out.extend_from_slice(&f.bytes[..pos]);
                    out.extend_from_slice(huge);
                }
            }
            out.extend_from_slice(&tail);
            out
        })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any bytes at all.
    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        all_decoders(&data)?;
    }

    /// Valid frames decode to what was encoded.
    #[test]
    fn valid_frames_round_trip(f in frame()) {
        let (r, peak) = peak_alloc(|| match decode_client_frame(Encoding::Msgpack, &f.bytes) {
            Ok(ClientFrame::Request { id, method, params }) => {
                Ok((Some(id), method.into_owned(), params_value(&params)))
            }
            Ok(ClientFrame::Notification { method, params }) => {
                Ok((None, method.into_owned(), params_value(&params)))
            }
            Err(e) => Err(e.error.message.into_owned()),
        });
        prop_assert!(peak <= BASE + 64 * f.bytes.len(), "{peak} bytes for {}", f.bytes.len());
        let (id, method, params) = r.map_err(TestCaseError::fail)?;
        prop_assert_eq!(id, f.id);
        prop_assert_eq!(method, f.method);
        // A nil params is "absent", which reads as `{}`.
        let sent = if f.params.is_null() { Value::Object(Map::new()) } else { f.params.clone() };
        prop_assert!(json_close(&params, &sent), "{params} != {sent}");
        all_decoders(&f.bytes)?;
    }

    /// Valid frames with byte-level mutations (huge length prefixes, NaN, ext, bad UTF-8...).
    #[test]
    fn mutated_frames(f in frame(), ms in mutations(TOKENS, 4)) {
        all_decoders(&apply(&f.bytes, &ms))?;
    }

    /// A str32, bin32, array32, map32 or ext32 header claiming 0xFFFFFFFF, in any place of a
    /// frame: a parse error, and nothing allocated for the claim.
    #[test]
    fn four_gigabyte_prefixes(data in lying_frame()) {
        let (r, peak) = peak_alloc(|| decode_client_frame(Encoding::Msgpack, &data).map(|_| ()));
        let e = r.expect_err("a frame claiming 4 GB more than it has");
        prop_assert_eq!(e.error.code, ErrorCode::ParseError, "{}", e.error.message);
        prop_assert!(peak <= BASE + 4 * data.len(), "{peak} bytes for {}", data.len());
        all_decoders(&data)?;
    }
}

/// One level of nesting: an array of one, a map of one, an array32 of one.
const SHAPES: &[&[u8]] = &[&[0x91], &[0x81, 0xa1, b'a'], &[0xdd, 0, 0, 0, 1]];

fn params_value(p: &Params<'_>) -> Value {
    p.parse::<Value>().expect("decoded params parse as a value")
}

proptest! {
    #![proptest_config(config(60))]

    /// Nesting up to 100,000 levels, in arrays, maps or both: refused past the walker's depth
    /// (64) before anything recursive sees it.
    #[test]
    fn deep_nesting(
        levels in prop_oneof![1usize..200, 200usize..5000, Just(100_000usize)],
        shape in proptest::sample::select(SHAPES),
        in_params in any::<bool>(),
    ) {
        let mut data = Vec::new();
        if in_params {
            data.extend_from_slice(&[0x93, 0x02, 0xa1, b'm', 0x81, 0xa4]);
            data.extend_from_slice(b"data");
        }
        for _ in 0..levels {
            data.extend_from_slice(shape);
        }
        data.push(0x01);
        let (r, peak) = peak_alloc(|| decode_client_frame(Encoding::Msgpack, &data).map(|_| ()));
        prop_assert!(peak <= BASE + 4 * data.len(), "{peak} bytes for {}", data.len());
        // The frame's own levels: the top array, and the params map when present.
        let depth = levels + if in_params { 2 } else { 0 };
        if in_params && depth <= 64 {
            prop_assert!(r.is_ok());
        } else {
            prop_assert!(r.is_err(), "{depth} levels accepted");
        }
        all_decoders(&data)?;
    }
}
