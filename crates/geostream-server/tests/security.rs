//! Tokens, rights, origins and inbound limits over real sockets: expired, forged and
//! `alg: none` tokens are refused; read-only tokens cannot write; a layer or channel a token
//! does not grant is invisible over WebSocket, SSE and HTTP; user channels; floods are rate
//! limited without touching other clients; connection limits; origin allow-list; the
//! `geostream token` command.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Sse, TestServer, Ws, http, http_json};
use geostream_core::codec::Encoding;
use geostream_server::auth::{Claims, mint_hs256, now_secs};
use geostream_server::config::Anonymous;
use serde_json::json;

const SECRET: &str = "test-secret-of-some-length";

fn token(sub: &str, exp: u64, layers: &[(&str, &str)], channels: &[(&str, &str)]) -> String {
    let map = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    mint_hs256(
        SECRET,
        &Claims {
            sub: Some(sub.into()),
            exp,
            nbf: None,
            iat: None,
            layers: map(layers),
            channels: map(channels),
        },
    )
    .unwrap()
}

async fn secured() -> TestServer {
    TestServer::start_with(|c| {
        c.auth.anonymous = Anonymous::None;
        c.auth.hs256_secret = SECRET.into();
    })
    .await
}

/// Status of a WebSocket upgrade request with `extra` headers.
async fn upgrade_status(srv: &TestServer, path: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut h = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    h.extend_from_slice(extra);
    let (status, _, body) = http(srv.addr, "GET", path, &h, None).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn bad_tokens_are_refused_everywhere() {
    let srv = secured().await;
    let later = now_secs() + 3600;
    let expired = token("alice", now_secs() - 3600, &[("*", "rw")], &[]);
    let forged = mint_hs256(
        "another-secret",
        &Claims {
            sub: Some("alice".into()),
            exp: later,
            nbf: None,
            iat: None,
            layers: [("*".to_string(), "rw".to_string())].into(),
            channels: BTreeMap::new(),
        },
    )
    .unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"sub":"alice","exp":{later},"layers":{{"*":"rw"}}}}"#
        ))
    );
    for t in [&expired, &forged, &none, &"not-a-jwt".to_string()] {
        let bearer = format!("Bearer {t}");
        let (s, body) = upgrade_status(&srv, "/v1/ws", &[("authorization", &bearer)]).await;
        assert_eq!(s, 401, "{body}");
        assert!(body.contains("unauthorized"), "{body}");
        let (s, body) = upgrade_status(&srv, &format!("/v1/ws?access_token={t}"), &[]).await;
        assert_eq!(s, 401, "{body}");
        let (s, _, _) = http(
            srv.addr,
            "GET",
            "/collections",
            &[("authorization", &bearer)],
            None,
        )
        .await;
        assert_eq!(s, 401);
        let sse = Sse::open(
            srv.addr,
            &format!("/v1/sse?channel=a&access_token={t}"),
            None,
        )
        .await;
        assert_eq!(sse.status, 401);
    }
    // In hello, on a connection that is otherwise anonymous.
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let e = ws
        .call("hello", json!({ "token": forged }))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "unauthorized");
    // Without a token, nothing is allowed on this server.
    let e = ws
        .call("channel.subscribe", json!({ "channel": "a" }))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "unauthorized");
    let (s, _) = http_json(srv.addr, "GET", "/collections/x/items", None).await;
    assert_eq!(s, 401);
    srv.shutdown().await;
}

#[tokio::test]
async fn rights_limit_what_a_token_sees_and_does() {
    let srv = secured().await;
    let later = now_secs() + 3600;
    let admin = token("root", later, &[("*", "rw")], &[("*", "rw")]);
    let reader = token(
        "alice",
        later,
        &[("roads", "r")],
        &[("news", "r"), ("chat/*", "rw")],
    );
    let mut root = Ws::connect(
        &format!("{}?access_token={admin}", srv.ws_url()),
        Encoding::Json,
    )
    .await;
    for layer in ["roads", "secret"] {
        root.ok("layer.create", json!({ "name": layer })).await;
        root.ok(
            "feature.create",
            json!({ "layer": layer, "feature": { "type": "Feature", "id": "f", "geometry": { "type": "Point", "coordinates": [1, 1] }, "properties": {} } }),
        )
        .await;
    }

    // WebSocket with the token in hello.
    let mut a = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let r = a.ok("hello", json!({ "token": reader })).await;
    assert_eq!(r["user"], "alice");
    a.ok("layer.subscribe", json!({ "layer": "roads" })).await;
    assert_eq!(a.push_of("snapshot").await["features"][0]["id"], "f");
    let e = a
        .call(
            "feature.patch",
            json!({ "layer": "roads", "id": "f", "version": 1, "properties": { "x": 1 } }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "forbidden");
    for (method, params) in [
        ("layer.subscribe", json!({ "layer": "secret" })),
        ("feature.get", json!({ "layer": "secret", "id": "f" })),
        ("feature.query", json!({ "layer": "secret" })),
        ("channel.publish", json!({ "channel": "news", "data": 1 })),
        ("channel.subscribe", json!({ "channel": "other" })),
    ] {
        let e = a.call(method, params).await.unwrap_err();
        assert_eq!(e.code.name(), "forbidden", "{method}");
    }
    let list = a.ok("layer.list", json!({})).await;
    let names: Vec<&str> = list["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"roads") && !names.contains(&"secret"),
        "{names:?}"
    );
    a.ok(
        "channel.publish",
        json!({ "channel": "chat/1", "data": "hi" }),
    )
    .await;

    // HTTP with a bearer token.
    let bearer = format!("Bearer {reader}");
    let h = [("authorization", bearer.as_str())];
    let (s, _, _) = http(srv.addr, "GET", "/collections/roads/items", &h, None).await;
    assert_eq!(s, 200);
    let (s, _, body) = http(srv.addr, "GET", "/collections/secret/items", &h, None).await;
    assert_eq!(s, 403, "{}", String::from_utf8_lossy(&body));
    let (s, _, _) = http(srv.addr, "GET", "/collections/secret/items/f", &h, None).await;
    assert_eq!(s, 403);
    let (s, _, _) = http(srv.addr, "GET", "/v1/tiles/secret/0/0/0.mvt", &h, None).await;
    assert_eq!(s, 403);
    let (s, _, _) = http(srv.addr, "GET", "/v1/tiles/roads/0/0/0.mvt", &h, None).await;
    assert_eq!(s, 200);
    let (_, _, body) = http(srv.addr, "GET", "/collections", &h, None).await;
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("roads") && !body.contains("secret"), "{body}");
    let mut hh = h.to_vec();
    hh.push(("content-type", "application/json"));
    let (s, _, _) = http(
        srv.addr,
        "POST",
        "/collections/roads/items",
        &hh,
        Some(br#"{"type":"Feature","geometry":null,"properties":{}}"#.to_vec()),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = http(
        srv.addr,
        "POST",
        "/v1/channels/news/messages",
        &hh,
        Some(br#"{"data":1}"#.to_vec()),
    )
    .await;
    assert_eq!(s, 403);

    // SSE with the token as a query parameter.
    let sse = Sse::open(
        srv.addr,
        &format!("/v1/sse?channel=news&access_token={reader}"),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    let sse = Sse::open(
        srv.addr,
        &format!("/v1/sse?channel=secret&access_token={reader}"),
        None,
    )
    .await;
    assert_eq!(sse.status, 403);

    // User channels: only their user reads them; publishing needs a grant.
    let bob = token("bob", later, &[], &[]);
    let mut b = Ws::connect(
        &format!("{}?access_token={bob}", srv.ws_url()),
        Encoding::Json,
    )
    .await;
    b.ok(
        "channel.subscribe",
        json!({ "channel": "notifications#bob" }),
    )
    .await;
    let e = b
        .call(
            "channel.subscribe",
            json!({ "channel": "notifications#alice" }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "forbidden");
    let e = b
        .call(
            "channel.publish",
            json!({ "channel": "notifications#bob", "data": 1 }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "forbidden");
    root.ok(
        "channel.publish",
        json!({ "channel": "notifications#bob", "data": { "text": "hi bob" } }),
    )
    .await;
    assert_eq!(b.push_of("message").await["data"]["text"], "hi bob");

    // A token refresh keeps the subject; another subject is refused.
    let fresh = token("alice", later + 60, &[("roads", "rw")], &[]);
    a.ok("hello", json!({ "token": fresh })).await;
    a.ok(
        "feature.patch",
        json!({ "layer": "roads", "id": "f", "version": 1, "properties": { "x": 1 } }),
    )
    .await;
    let e = a.call("hello", json!({ "token": bob })).await.unwrap_err();
    assert_eq!(e.code.name(), "forbidden");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_without_touching_others() {
    let srv = TestServer::start_with(|c| {
        c.limits.requests_per_sec = 100;
        c.limits.request_burst = 50;
    })
    .await;
    let mut flood = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let mut calm = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    let n = 1000;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(flood.send_request("ping", json!({})).await);
    }
    let mut limited = 0;
    let mut retry = 0;
    for id in ids {
        match flood.response(id).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code.name(), "rate_limited");
                retry = retry.max(e.data.unwrap()["retry_after_ms"].as_u64().unwrap());
                limited += 1;
            }
        }
    }
    assert!(limited >= n / 2, "most of the flood is refused ({limited})");
    assert!((1..=20).contains(&retry), "a retry hint ({retry} ms)");
    // The calm client is served at once, within its own budget.
    let t = Instant::now();
    for _ in 0..20 {
        calm.ok("ping", json!({})).await;
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    // After a pause the flooder is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    flood.ok("ping", json!({})).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn connection_limits_and_origins() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 3;
        c.http.allowed_origins = vec!["https://maps.example.org".into()];
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Ws::connect(&srv.ws_url(), Encoding::Json).await);
    }
    let (s, body) = upgrade_status(&srv, "/v1/ws", &[]).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("limit_exceeded"), "{body}");
    // SSE streams count too.
    let (s, _, _) = http(srv.addr, "GET", "/v1/sse?channel=x", &[], None).await;
    assert_eq!(s, 503);
    // Closing one frees its place.
    drop(open.pop());
    let mut ok = false;
    for _ in 0..50 {
        if upgrade_status(&srv, "/v1/ws", &[]).await.0 == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a place was freed");
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Origins: allowed, same host, and others.
    let (s, _) = upgrade_status(&srv, "/v1/ws", &[("origin", "https://evil.example.com")]).await;
    assert_eq!(s, 403);
    let (s, _) = upgrade_status(&srv, "/v1/ws", &[("origin", "https://maps.example.org")]).await;
    assert_eq!(s, 101);
    let same = format!("http://{}", srv.addr);
    let (s, _) = upgrade_status(&srv, "/v1/ws", &[("origin", &same)]).await;
    assert_eq!(s, 101);
    let sse = {
        let (s, _, _) = http(
            srv.addr,
            "GET",
            "/v1/sse?channel=x",
            &[("origin", "https://evil.example.com")],
            None,
        )
        .await;
        s
    };
    assert_eq!(sse, 403);
    // CORS for the HTTP API.
    let (s, h, _) = http(
        srv.addr,
        "OPTIONS",
        "/collections",
        &[
            ("origin", "https://maps.example.org"),
            ("access-control-request-method", "GET"),
        ],
        None,
    )
    .await;
    assert!(s < 300);
    assert_eq!(h["access-control-allow-origin"], "https://maps.example.org");
    srv.shutdown().await;
}

#[test]
fn anonymous_writes_on_a_public_address_need_consent() {
    let mut c = geostream_server::config::Config {
        listen: "0.0.0.0:8080".parse().unwrap(),
        ..Default::default()
    };
    assert!(c.validate().is_ok(), "auto means no anonymous access there");
    c.auth.anonymous = Anonymous::Full;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("allow_public_anonymous_write"), "{e}");
    c.auth.allow_public_anonymous_write = true;
    assert!(c.validate().is_ok());
}

#[tokio::test]
async fn the_token_command_mints_usable_tokens() {
    let srv = secured().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geostream"))
        .args([
            "token",
            "--sub",
            "carol",
            "--grant",
            "plans:rw",
            "--grant",
            "channel:team:r",
            "--ttl",
            "10m",
            "--secret",
            SECRET,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut ws = Ws::connect(
        &format!("{}?access_token={t}", srv.ws_url()),
        Encoding::Json,
    )
    .await;
    let r = ws.ok("hello", json!({})).await;
    assert_eq!(r["user"], "carol");
    ws.ok("layer.create", json!({ "name": "plans" })).await;
    ws.ok("channel.subscribe", json!({ "channel": "team" }))
        .await;
    let e = ws
        .call("channel.publish", json!({ "channel": "team", "data": 1 }))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "forbidden");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geostream"))
        .args([
            "token",
            "--sub",
            "x",
            "--grant",
            "plans:admin",
            "--secret",
            SECRET,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    srv.shutdown().await;
}

#[tokio::test]
async fn deeply_nested_http_payloads_are_refused() {
    let srv = TestServer::start().await;
    let deep = format!("{{\"data\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    let (s, _, body) = http(
        srv.addr,
        "POST",
        "/v1/channels/c/messages",
        &[("content-type", "application/json")],
        Some(deep.into_bytes()),
    )
    .await;
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("nested deeper"));
    srv.shutdown().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_verified_with_configured_keys() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let srv = TestServer::start_with(|c| {
        c.auth.anonymous = Anonymous::None;
        c.auth.public_keys = vec![
            geostream_server::config::PublicKeyConfig {
                alg: "ES256".into(),
                pem_file: fixtures.join("es256-public.pem"),
                kid: None,
            },
            geostream_server::config::PublicKeyConfig {
                alg: "RS256".into(),
                pem_file: fixtures.join("rs256-public.pem"),
                kid: None,
            },
        ];
    })
    .await;
    let claims = Claims {
        sub: Some("dana".into()),
        exp: now_secs() + 600,
        nbf: None,
        iat: None,
        layers: [("*".to_string(), "r".to_string())].into(),
        channels: BTreeMap::new(),
    };
    let es =
        EncodingKey::from_ec_pem(&std::fs::read(fixtures.join("es256-private-pk8.pem")).unwrap())
            .unwrap();
    let rs = EncodingKey::from_rsa_pem(&std::fs::read(fixtures.join("rs256-private.pem")).unwrap())
        .unwrap();
    for (alg, key) in [(Algorithm::ES256, &es), (Algorithm::RS256, &rs)] {
        let t = encode(&Header::new(alg), &claims, key).unwrap();
        let mut ws = Ws::connect(
            &format!("{}?access_token={t}", srv.ws_url()),
            Encoding::Json,
        )
        .await;
        let r = ws.ok("hello", json!({})).await;
        assert_eq!(r["user"], "dana", "{alg:?}");
    }
    // An algorithm without a configured key (RS384), or HS256 with no secret: refused.
    let wrong = encode(&Header::new(Algorithm::RS384), &claims, &rs).unwrap();
    let (s, _) = upgrade_status(&srv, &format!("/v1/ws?access_token={wrong}"), &[]).await;
    assert_eq!(s, 401);
    let hs = mint_hs256("anything", &claims).unwrap();
    let (s, _) = upgrade_status(&srv, &format!("/v1/ws?access_token={hs}"), &[]).await;
    assert_eq!(s, 401);
    srv.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_unless_refreshed() {
    let srv = TestServer::start_with(|c| {
        c.auth.anonymous = Anonymous::None;
        c.auth.hs256_secret = SECRET.into();
        c.auth.leeway_secs = 0;
    })
    .await;
    let short = token("erin", now_secs() + 2, &[("*", "r")], &[("*", "r")]);
    let mut a = Ws::connect(
        &format!("{}?access_token={short}", srv.ws_url()),
        Encoding::Json,
    )
    .await;
    a.ok("channel.subscribe", json!({ "channel": "c" })).await;
    let mut b = Ws::connect(
        &format!("{}?access_token={short}", srv.ws_url()),
        Encoding::Json,
    )
    .await;
    let long = token("erin", now_secs() + 600, &[("*", "r")], &[("*", "r")]);
    b.ok("hello", json!({ "token": long })).await;
    let t = Instant::now();
    let close = a.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001, "{close:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // The refreshed connection is still served.
    b.ok("channel.subscribe", json!({ "channel": "c" })).await;
    srv.shutdown().await;
}
