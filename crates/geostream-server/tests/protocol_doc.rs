//! docs/PROTOCOL.md is executable: every ```conversation block is replayed against a fresh
//! server, the MessagePack byte examples are decoded and re-encoded, and the error and close
//! code tables are compared with the code.

mod common;

use common::{TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::{self, ClientFrame, Encoding, Id};
use geostream_core::error::{CloseCode, ErrorCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .expect("docs/PROTOCOL.md")
}

/// The contents of every fenced block with the given info string.
fn blocks(md: &str, info: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match &mut cur {
            None if line.trim() == format!("```{info}") => cur = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Whether `actual` matches `expected`, where the string "*" in `expected` matches anything.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "*" => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        _ => expected == actual,
    }
}

#[tokio::test]
async fn conversations_replay_against_the_server() {
    let md = protocol_md();
    let convs = blocks(&md, "conversation");
    assert!(convs.len() >= 5, "the document has its conversations");
    for conv in convs {
        let srv = TestServer::start().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url())
            .await
            .unwrap();
        let mut lines = conv.lines().filter(|l| !l.trim().is_empty()).peekable();
        while let Some(line) = lines.next() {
            let (dir, text) = line.split_once(' ').unwrap();
            assert_eq!(
                dir, "→",
                "a conversation alternates sends and receive groups: {line}"
            );
            ws.send(Message::Text(text.into())).await.unwrap();
            let mut expected: Vec<Value> = Vec::new();
            while let Some(l) = lines.peek() {
                let Some(t) = l.strip_prefix("← ") else {
                    break;
                };
                expected.push(
                    serde_json::from_str(t).unwrap_or_else(|e| panic!("bad example {t}: {e}")),
                );
                lines.next();
            }
            // Frames that answer one send may arrive in any order: match them as a set.
            let mut got = Vec::new();
            while got.len() < expected.len() {
                match tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("a frame in time")
                {
                    Some(Ok(Message::Text(t))) => {
                        got.push(serde_json::from_str::<Value>(&t).unwrap())
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("connection ended: {other:?}"),
                }
            }
            for g in &got {
                frame_fits_the_core_types(text, g);
            }
            for e in &expected {
                let i = got.iter().position(|g| matches(e, g)).unwrap_or_else(|| {
                    panic!("documented frame\n  {e}\nnot among what the server sent:\n  {got:#?}")
                });
                got.remove(i);
            }
        }
        srv.shutdown().await;
    }
}

/// Decoders for each method's params and result and each push's params, from
/// geostream-core's one table of them.
macro_rules! core_decoders {
    (methods: [$(($m:ident, $p:ty, $r:tt)),* $(,)?] pushes: [$(($n:ident, $t:ty)),* $(,)?]) => {
        /// Decodes `v` as the params of `method`; `None` for a method not in the table.
        fn decode_params(method: &str, v: &Value) -> Option<Result<(), String>> {
            use geostream_core::api::*;
            $(
                if method == method::$m {
                    return Some(serde_json::from_value::<$p>(v.clone()).map(drop).map_err(|e| e.to_string()));
                }
            )*
            None
        }
        /// Decodes `v` as the result of `method`.
        fn decode_result(method: &str, v: &Value) -> Option<Result<(), String>> {
            use geostream_core::api::*;
            $(
                if method == method::$m {
                    return core_decoders!(@result v $r);
                }
            )*
            None
        }
        /// Decodes `v` as the params of push `method`.
        fn decode_push(method: &str, v: &Value) -> Option<Result<(), String>> {
            use geostream_core::api::*;
            $(
                if method == push::$n {
                    return Some(serde_json::from_value::<$t>(v.clone()).map(drop).map_err(|e| e.to_string()));
                }
            )*
            None
        }
    };
    (@result $v:ident none) => { None };
    (@result $v:ident $r:ty) => {
        Some(serde_json::from_value::<$r>($v.clone()).map(drop).map_err(|e| e.to_string()))
    };
}
geostream_core::protocol_table!(core_decoders);

/// Every frame of the documented conversations is what geostream-core's types describe:
/// a request answered with a result has the params of its method and the result its type;
/// a push has its push's params.
fn frame_fits_the_core_types(sent: &str, got: &Value) {
    let sent: Value = serde_json::from_str(sent).unwrap();
    let method = sent["method"].as_str().unwrap_or_default();
    let check = |what: &str, r: Option<Result<(), String>>| {
        if let Some(Err(e)) = r {
            panic!(
                "{what} does not decode into geostream-core's type: {e}\n  sent {sent}\n  got {got}"
            );
        }
    };
    if let Some(push) = got["method"].as_str() {
        assert!(
            decode_push(push, &got["params"]).is_some(),
            "push {push} is not in geostream-core's protocol table"
        );
        check("push", decode_push(push, &got["params"]));
    } else if got.get("result").is_some() && got["id"] == sent["id"] {
        // Absent params are an empty object, as the server reads them.
        let params = sent.get("params").cloned().unwrap_or_else(|| json!({}));
        check("params", decode_params(method, &params));
        check("result", decode_result(method, &got["result"]));
    }
}

fn hex(block: &str) -> Vec<u8> {
    block
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

#[test]
fn msgpack_byte_examples_are_exact() {
    let md = protocol_md();
    let hexes = blocks(&md, "hex");
    assert_eq!(hexes.len(), 2);
    let req = hex(&hexes[0]);
    let ClientFrame::Request { id, method, params } =
        codec::decode_client_frame(Encoding::Msgpack, &req).unwrap()
    else {
        panic!("a request")
    };
    assert_eq!((id, &*method), (Id::Int(1), "ping"));
    assert_eq!(params.field("data").unwrap().unwrap().to_value(), json!(7));
    assert_eq!(
        codec::encode_request(
            Encoding::Msgpack,
            Some(&Id::Int(1)),
            "ping",
            &json!({ "data": 7 })
        )
        .to_vec(),
        req
    );
    let resp = hex(&hexes[1]);
    assert_eq!(
        codec::encode_response(Encoding::Msgpack, &Id::Int(1), &json!({ "data": 7 })).to_vec(),
        resp
    );
}

/// Rows `| number | `name` | ... |` of the table under `heading`.
fn table(md: &str, heading: &str) -> Vec<(i64, String)> {
    let start = md
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} missing"));
    md[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let n = cells.get(1)?.parse::<i64>().ok()?;
            Some((n, cells.get(2)?.trim_matches('`').to_string()))
        })
        .collect()
}

#[test]
fn error_and_close_code_tables_match_the_code() {
    let md = protocol_md();
    let documented = table(&md, "## Error codes");
    let code: Vec<(i64, String)> = ErrorCode::ALL
        .iter()
        .map(|c| (i64::from(c.code()), c.name().to_string()))
        .collect();
    assert_eq!(
        documented, code,
        "docs/PROTOCOL.md error table and ErrorCode::ALL differ"
    );
    let documented = table(&md, "## Close codes");
    let code: Vec<(i64, String)> = CloseCode::ALL
        .iter()
        .map(|c| (i64::from(c.code()), c.name().to_string()))
        .collect();
    assert_eq!(
        documented, code,
        "docs/PROTOCOL.md close table and CloseCode::ALL differ"
    );
}
