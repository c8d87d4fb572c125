//! Fuzz properties of the JSON frame decoders: `decode_client_frame(Json, ..)`, what the server
//! does next with a decoded frame (`Params::parse`, `Params::field`), `Payload::from_json` and
//! `decode_server_frame(Json, ..)`.
//!
//! Every property: no panic, a clear error (a JSON-RPC error code the protocol documents for a
//! bad frame), and a peak heap use bounded by a constant plus a multiple of the input length.

mod fuzz_support;

use bytes::Bytes;
use fuzz_support::{apply, config, json_close, json_value, mutations, nest, peak_alloc};
use geostream_core::codec::{
    ClientFrame, DecodeError, Encoding, Id, Params, decode_client_frame, decode_server_frame,
};
use geostream_core::payload::MAX_PAYLOAD_DEPTH;
use geostream_core::{ErrorCode, Payload};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Fixed heap allowance for one decode (error messages, serde's scratch buffers).
const BASE: usize = 64 * 1024;

/// Fragments that matter to a JSON parser.
const TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"\\u",
    b"\\ud800",
    b":",
    b",",
    b"null",
    b"1e999",
    b"-",
    b"18446744073709551616",
    b"\"jsonrpc\":\"2.0\",",
    b"\"id\":",
    b"\"method\":",
    b"\"params\":",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":",
    b"\xff\xfe",
    b"\xc3",
    b" ",
];

/// Checks a client-frame decode result and what the server does next with it; returns the
/// peak heap use of the whole sequence.
fn decode_like_the_server(data: &[u8]) -> (Result<(), Box<DecodeError>>, usize) {
    peak_alloc(|| match decode_client_frame(Encoding::Json, data) {
        Ok(ClientFrame::Request { params, .. } | ClientFrame::Notification { params, .. }) => {
            // Methods read their params as typed values or pick one member raw.
            let _ = params.parse::<Value>();
            let _ = params.parse::<Map<String, Value>>();
            let _ = params.field("data");
            Ok(())
        }
        Err(e) => Err(Box::new(e)),
    })
}

fn check_decode_error(e: &DecodeError, input: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            e.error.code,
            ErrorCode::ParseError | ErrorCode::InvalidRequest
        ),
        "unexpected code {:?}: {}",
        e.error.code,
        e.error.message
    );
    prop_assert!(!e.error.message.is_empty());
    // The message may quote a piece of the input, never more than the input.
    prop_assert!(
        e.error.message.len() <= 256 + input.len(),
        "{} byte message for {} bytes of input",
        e.error.message.len(),
        input.len()
    );
    Ok(())
}

/// A JSON-RPC envelope member: what is put in, and whether the decoder must accept it.
fn id() -> impl Strategy<Value = (Option<Value>, Result<Option<Id>, ()>)> {
    prop_oneof![
        3 => Just((None, Ok(None))),
        1 => Just((Some(Value::Null), Ok(None))),
        4 => any::<i64>().prop_map(|i| (Some(json!(i)), Ok(Some(Id::Int(i))))),
        3 => "\\PC{0,10}".prop_map(|s| (Some(json!(s)), Ok(Some(Id::Str(s.into()))))),
        1 => ((i64::MAX as u64 + 1)..).prop_map(|u| (Some(json!(u)), Err(()))),
        1 => prop_oneof![Just(json!(1.5)), Just(json!(true)), Just(json!([1])), Just(json!({}))]
            .prop_map(|v| (Some(v), Err(()))),
    ]
}

fn jsonrpc() -> impl Strategy<Value = (Option<Value>, bool)> {
    prop_oneof![
        8 => Just((Some(json!("2.0")), true)),
        1 => Just((None, false)),
        1 => prop_oneof![Just(json!("1.0")), Just(json!(2.0)), Just(json!(null)), Just(json!("2.00"))]
            .prop_map(|v| (Some(v), false)),
    ]
}

fn method() -> impl Strategy<Value = (Option<Value>, Option<String>)> {
    prop_oneof![
        8 => "[a-z$./]{0,16}".prop_map(|m| (Some(json!(m)), Some(m))),
        1 => "\\PC{0,8}".prop_map(|m| (Some(json!(m)), Some(m))),
        1 => Just((None, None)),
        1 => prop_oneof![Just(json!(7)), Just(json!(null)), Just(json!(["m"]))]
            .prop_map(|v| (Some(v), None)),
    ]
}

#[derive(Debug, Clone)]
struct Envelope {
    text: String,
    id: Result<Option<Id>, ()>,
    version_ok: bool,
    method: Option<String>,
    params: Option<Value>,
    /// Whether every envelope member has a type the envelope accepts (`jsonrpc` and `method`
    /// strings or null, `id` an i64, a string or null), so the id can be read even when the
    /// frame is refused.
    readable: bool,
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        jsonrpc(),
        id(),
        method(),
        proptest::option::weighted(0.8, json_value(5, 48)),
        proptest::collection::vec(("[a-z]{1,5}", json_value(2, 6)), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |((v, version_ok), (idv, id), (mv, method), params, extra, pretty)| {
                let str_or_null =
                    |x: &Option<Value>| x.as_ref().is_none_or(|x| x.is_string() || x.is_null());
                let readable = id.is_ok() && str_or_null(&v) && str_or_null(&mv);
                let mut members: Vec<(String, Value)> = Vec::new();
                for (k, x) in [
                    ("jsonrpc", v),
                    ("id", idv),
                    ("method", mv),
                    ("params", params.clone()),
                ] {
                    if let Some(x) = x {
                        members.push((k.to_string(), x));
                    }
                }
                for (k, x) in extra {
                    if !["jsonrpc", "id", "method", "params"].contains(&k.as_str()) {
                        members.push((k, x));
                    }
                }
                // Member order varies with the extra members' names; JSON-RPC does not fix it.
                members.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then(a.0.cmp(&b.0)));
                let obj = Value::Object(members.into_iter().collect());
                let text = if pretty {
                    serde_json::to_string_pretty(&obj).unwrap()
                } else {
                    obj.to_string()
                };
                Envelope {
                    text,
                    id,
                    version_ok,
                    method,
                    params,
                    readable,
                }
            },
        )
}

fn params_value(p: &Params<'_>) -> Option<Value> {
    match p {
        Params::Absent => None,
        p => Some(
            p.parse::<Value>()
                .expect("decoded params parse as a JSON value"),
        ),
    }
}

/// Where [`deep_frame`] puts the nesting.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    TopLevel,
    Params,
    Id,
    Method,
    Data,
    Unterminated,
}

/// Deep nesting: `(text, place, levels)`, in every place of a frame, up to 100,000 levels.
fn deep_frame() -> impl Strategy<Value = (String, Place, usize)> {
    let levels = prop_oneof![
        2 => 1usize..200,
        1 => 200usize..5000,
        1 => Just(100_000usize),
    ];
    let shape = proptest::sample::select(&[("[", "]"), ("{\"a\":", "}"), ("[{\"a\":", "}]")][..]);
    let place = proptest::sample::select(
        &[
            Place::TopLevel,
            Place::Params,
            Place::Id,
            Place::Method,
            Place::Data,
            Place::Unterminated,
        ][..],
    );
    (levels, shape, place).prop_map(|(n, (open, close), place)| {
        // `[{"a":` is two levels per repetition.
        let levels = if open.len() == 6 { 2 * n } else { n };
        let deep = nest(open, "1", close, n);
        let text = match place {
            Place::TopLevel => deep,
            Place::Params => format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{deep}}}"#),
            Place::Id => format!(r#"{{"jsonrpc":"2.0","id":{deep},"method":"m"}}"#),
            Place::Method => format!(r#"{{"jsonrpc":"2.0","method":{deep}}}"#),
            Place::Data => format!(
                r#"{{"jsonrpc":"2.0","id":"x","method":"m","params":{{"channel":"c","data":{deep}}}}}"#
            ),
            Place::Unterminated => format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}"#,
                open.repeat(n)
            ),
        };
        (text, place, levels)
    })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any bytes at all.
    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (r, peak) = decode_like_the_server(&data);
        if let Err(e) = &r {
            check_decode_error(e, &data)?;
        }
        prop_assert!(peak <= BASE + 64 * data.len(), "{peak} bytes for {} bytes", data.len());
        let (_, peak) = peak_alloc(|| {
            let _ = decode_server_frame(Encoding::Json, &data);
            let _ = Payload::from_json(Bytes::copy_from_slice(&data));
        });
        prop_assert!(peak <= BASE + 64 * data.len(), "{peak} bytes for {} bytes", data.len());
    }

    /// Generated envelopes, unmutated: decoded exactly as JSON-RPC 2.0 says (accepted when
    /// `jsonrpc` is "2.0", `method` a string and `id` absent, null, an i64 or a string), with
    /// id, method and params read back unchanged.
    #[test]
    fn envelopes_decode_exactly(env in envelope()) {
        let data = env.text.as_bytes();
        let (r, peak) = peak_alloc(|| decode_client_frame(Encoding::Json, data).map(|f| match f {
            ClientFrame::Request { id, method, params } => (Some(id), method.into_owned(), params_value(&params)),
            ClientFrame::Notification { method, params } => (None, method.into_owned(), params_value(&params)),
        }));
        prop_assert!(peak <= BASE + 64 * data.len(), "{peak} bytes for {} bytes", data.len());
        let must_accept = env.id.is_ok() && env.version_ok && env.method.is_some();
        match r {
            Ok((id, method, params)) => {
                prop_assert!(must_accept, "accepted {}", env.text);
                prop_assert_eq!(Ok(id), env.id.clone());
                prop_assert_eq!(Some(method), env.method.clone());
                // `"params": null` counts as absent (as MessagePack nil params do).
                let sent = env.params.clone().filter(|p| !p.is_null());
                match (&params, &sent) {
                    (Some(a), Some(b)) => prop_assert!(json_close(a, b), "params {a} != {b}"),
                    (None, None) => {}
                    _ => prop_assert!(false, "params {params:?} != {sent:?}"),
                }
            }
            Err(e) => {
                prop_assert!(!must_accept, "refused {}: {}", env.text, e.error.message);
                prop_assert_eq!(e.error.code, ErrorCode::InvalidRequest, "{}", e.error.message);
                // When the envelope itself was readable, the error carries the request's id
                // (otherwise JSON-RPC 2.0 wants a null id).
                match &env.id {
                    Ok(id) if env.readable => prop_assert_eq!(&e.id, id),
                    _ => prop_assert_eq!(&e.id, &None),
                }
            }
        }
    }

    /// Generated envelopes with byte-level mutations.
    #[test]
    fn mutated_envelopes(env in envelope(), ms in mutations(TOKENS, 4)) {
        let data = apply(env.text.as_bytes(), &ms);
        let (r, peak) = decode_like_the_server(&data);
        if let Err(e) = &r {
            check_decode_error(e, &data)?;
        }
        prop_assert!(peak <= BASE + 64 * data.len(), "{peak} bytes for {} bytes", data.len());
        let (_, peak) = peak_alloc(|| decode_server_frame(Encoding::Json, &data).is_ok());
        prop_assert!(peak <= BASE + 64 * data.len(), "{peak} bytes for {} bytes", data.len());
    }
}

proptest! {
    #![proptest_config(config(120))]

    /// Nesting up to 100,000 levels anywhere in a frame: no stack overflow, memory
    /// proportional to the input, and whatever is accepted can be used. The frame decoder keeps
    /// params as raw text (validated without recursion, so deep params decode); reading them as
    /// a value stops at serde_json's limit (128 levels); a payload (`data`) is refused past
    /// [`MAX_PAYLOAD_DEPTH`].
    #[test]
    fn deep_nesting(frame in deep_frame()) {
        let (text, place, levels) = frame;
        let data = text.as_bytes();
        let ((decoded, as_value, field), peak) = peak_alloc(|| {
            match decode_client_frame(Encoding::Json, data) {
                Ok(ClientFrame::Request { params, .. } | ClientFrame::Notification { params, .. }) => (
                    Ok(()),
                    params.parse::<Value>().is_ok(),
                    params.field("data").map(|d| d.map(|p| p.to_value())),
                ),
                Err(e) => (Err(e), false, Ok(None)),
            }
        });
        prop_assert!(peak <= BASE + 64 * data.len(), "{peak} bytes for {} bytes", data.len());
        if let Err(e) = &decoded {
            check_decode_error(e, data)?;
        }
        match place {
            Place::TopLevel | Place::Id | Place::Method | Place::Unterminated => {
                prop_assert!(decoded.is_err(), "accepted {place:?} nesting");
            }
            Place::Params => {
                prop_assert!(decoded.is_ok());
                prop_assert_eq!(as_value, levels < 128, "params of {} levels", levels);
            }
            Place::Data => {
                prop_assert!(decoded.is_ok());
                match field {
                    Ok(Some(v)) => {
                        prop_assert!(levels <= MAX_PAYLOAD_DEPTH, "data of {levels} levels");
                        // An accepted payload reads back as the value it is.
                        prop_assert_ne!(v, Value::Null);
                    }
                    Ok(None) => prop_assert!(false, "data not found"),
                    Err(e) => {
                        prop_assert!(levels > MAX_PAYLOAD_DEPTH, "data of {levels} levels: {}", e.message);
                        prop_assert_eq!(e.code, ErrorCode::InvalidParams);
                    }
                }
            }
        }
        let inner = nest("[", "1", "]", levels.min(100_000));
        let (r, peak) = peak_alloc(|| Payload::from_json(Bytes::from(inner.clone())));
        prop_assert!(peak <= BASE + 2 * inner.len(), "{peak} bytes for {} bytes", inner.len());
        prop_assert_eq!(r.is_ok(), levels <= MAX_PAYLOAD_DEPTH, "payload of {} levels", levels);
        let (r, peak) = peak_alloc(|| decode_server_frame(Encoding::Json, data));
        prop_assert!(peak <= BASE + 64 * data.len(), "{peak} bytes for {} bytes", data.len());
        prop_assert!(r.is_err() || levels < 128, "server frame of {levels} levels accepted");
    }
}

/// Regression (found by `deep_nesting`): a JSON frame's `data` nested 200 levels deep was
/// accepted as a payload, which then reached MessagePack subscribers as nil (and made any
/// response embedding it a broken frame), because transcoding stops at serde_json's 128 levels.
#[test]
fn deep_data_is_refused_not_delivered_as_nil() {
    let frame = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"channel.publish","params":{{"channel":"c","data":{}}}}}"#,
        nest("[", "1", "]", 200)
    );
    let Ok(ClientFrame::Request { params, .. }) =
        decode_client_frame(Encoding::Json, frame.as_bytes())
    else {
        panic!("the frame itself is fine");
    };
    let e = params.field("data").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParams);
    assert_eq!(
        e.message,
        "invalid params: data: nested deeper than 64 levels"
    );
    let ok = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"channel.publish","params":{{"channel":"c","data":{}}}}}"#,
        nest("[", "1", "]", MAX_PAYLOAD_DEPTH)
    );
    let Ok(ClientFrame::Request { params, .. }) =
        decode_client_frame(Encoding::Json, ok.as_bytes())
    else {
        panic!("the frame itself is fine");
    };
    let p = params.field("data").unwrap().unwrap();
    let mut mp = Vec::new();
    p.write_msgpack(&mut mp);
    assert_eq!(
        Payload::from_msgpack(Bytes::from(mp)).unwrap().to_value(),
        p.to_value()
    );
}
