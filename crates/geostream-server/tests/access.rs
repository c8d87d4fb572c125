//! Access rules fail closed, over real sockets: every method of the protocol, taken from the
//! method enum (not a hand list), is refused to a token without the right it needs; an
//! unknown method is refused before any handler runs; a web page on another site cannot
//! write through a "simple" cross-origin request.

mod common;

use std::collections::BTreeMap;

use common::{TestServer, Ws, http, http_json};
use geostream_core::codec::Encoding;
use geostream_core::request::{Method, Scope};
use geostream_server::auth::{Claims, mint_hs256, now_secs};
use geostream_server::config::Anonymous;
use serde_json::json;

const SECRET: &str = "test-secret-of-some-length";

fn token(layers: &[(&str, &str)], channels: &[(&str, &str)]) -> String {
    let map = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    mint_hs256(
        SECRET,
        &Claims {
            sub: Some("mallory".into()),
            exp: now_secs() + 3600,
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

async fn connect(srv: &TestServer, token: &str) -> Ws {
    Ws::connect(
        &format!("{}?access_token={token}", srv.ws_url()),
        Encoding::Json,
    )
    .await
}

#[tokio::test]
async fn every_method_needs_its_right() {
    let srv = secured().await;
    // The layer and channel exist, so a refusal can only come from the rights.
    let admin = token(&[("*", "rw")], &[("*", "rw")]);
    let mut a = connect(&srv, &admin).await;
    a.ok("layer.create", json!({"name": "secret"})).await;
    a.ok(
        "feature.create",
        json!({"layer": "secret", "feature": {"type": "Feature", "id": "a", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {"k": 0}}}),
    )
    .await;

    // Rights on other names only, then read-only rights on the targets.
    let nothing = token(&[("open", "rw")], &[("open", "rw")]);
    let read_only = token(&[("secret", "r")], &[("secret", "r")]);
    let mut none = connect(&srv, &nothing).await;
    let mut ro = connect(&srv, &read_only).await;
    let mut checked = 0;
    for m in Method::ALL {
        let params = m.example_params("secret");
        let named = matches!(
            m.scope(),
            Scope::LayerRead | Scope::LayerWrite | Scope::ChannelRead | Scope::ChannelPublish
        );
        if !named {
            continue;
        }
        checked += 1;
        let e = none
            .call(m.name(), params.clone())
            .await
            .expect_err(m.name());
        assert_eq!(e.code.name(), "forbidden", "{}: {}", m.name(), e.message);
        let writes = matches!(m.scope(), Scope::LayerWrite | Scope::ChannelPublish);
        match ro.call(m.name(), params).await {
            Err(e) if writes => {
                assert_eq!(e.code.name(), "forbidden", "{}: {}", m.name(), e.message)
            }
            Err(e) => assert_ne!(
                e.code.name(),
                "forbidden",
                "{} is a read and the token may read",
                m.name()
            ),
            Ok(_) => assert!(!writes, "{} wrote with a read-only token", m.name()),
        }
    }
    assert!(checked >= 20, "every named method was tried ({checked})");
    // Nothing the refused requests asked for happened.
    let f = a
        .ok("feature.get", json!({"layer": "secret", "id": "a"}))
        .await;
    assert_eq!(f["feature"]["properties"]["k"], 0);
    assert_eq!(f["feature"]["version"], 1);
    a.ok("layer.get", json!({"name": "secret"})).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn an_unknown_method_is_refused_before_any_handler() {
    let srv = TestServer::start().await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;
    for name in [
        "layer.creat",
        "LAYER.CREATE",
        "layer.create ",
        "$/cancelRequest",
        "",
    ] {
        let e = ws.call(name, json!({"name": "made"})).await.unwrap_err();
        assert_eq!(e.code.name(), "method_not_found", "{name:?}");
    }
    let e = ws
        .call("layer.get", json!({"name": "made"}))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "layer_not_found");
    // A notification with an unknown method is ignored, and the connection goes on.
    ws.notify("layer.create", json!({"name": "made"})).await;
    ws.ok("ping", json!({})).await;
    let e = ws
        .call("layer.get", json!({"name": "made"}))
        .await
        .unwrap_err();
    assert_eq!(e.code.name(), "layer_not_found");
    // Counted as unknown, not as any method's request.
    let (_, _, m) = http(srv.addr, "GET", "/metrics", &[], None).await;
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("geostream_requests_total{method=\"other\",outcome=\"error\"} 4"),
        "{m}"
    );
    assert!(m.contains("geostream_requests_total{method=\"layer.create\",outcome=\"error\"} 0"));
    srv.shutdown().await;
}

#[tokio::test]
async fn cursors_need_read_rights_even_as_notifications() {
    let srv = secured().await;
    let admin = token(&[("*", "rw")], &[]);
    let mut a = connect(&srv, &admin).await;
    a.ok("layer.create", json!({"name": "secret"})).await;
    let sub = a.ok("presence.subscribe", json!({"layer": "secret"})).await;
    assert!(sub["sub"].as_u64().is_some());
    a.push_of("join").await; // its own
    let outsider = token(&[("open", "rw")], &[]);
    let mut m = connect(&srv, &outsider).await;
    m.notify(
        "presence.cursor",
        json!({"layer": "secret", "position": [1.0, 2.0]}),
    )
    .await;
    m.ok("ping", json!({})).await;
    a.expect_silence(std::time::Duration::from_millis(500))
        .await;
    srv.shutdown().await;
}

/// A page on another site can send a POST with `text/plain` without asking first; it must
/// not change anything.
#[tokio::test]
async fn cross_site_simple_posts_cannot_write() {
    let srv = TestServer::start().await;
    let host = srv.addr.to_string();
    let feature =
        br#"{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2]},"properties":{}}"#;
    let (status, _) = http_json(
        srv.addr,
        "POST",
        "/v1/channels/c/messages",
        Some(json!({"data": 0})),
    )
    .await;
    assert_eq!(status, 200);
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.ok("layer.create", json!({"name": "draw"})).await;

    for (path, body) in [
        ("/collections/draw/items", feature.to_vec()),
        ("/v1/channels/c/messages", br#"{"data":{"x":1}}"#.to_vec()),
    ] {
        for ctype in ["text/plain", "application/x-www-form-urlencoded"] {
            let (status, _, b) = http(
                srv.addr,
                "POST",
                path,
                &[("content-type", ctype), ("origin", "http://evil.example")],
                Some(body.clone()),
            )
            .await;
            assert_eq!(
                status,
                403,
                "{path} {ctype}: {}",
                String::from_utf8_lossy(&b)
            );
            // The server's own page (same host) with the wrong type: 415.
            let origin = format!("http://{host}");
            let (status, _, b) = http(
                srv.addr,
                "POST",
                path,
                &[("content-type", ctype), ("origin", &origin)],
                Some(body.clone()),
            )
            .await;
            assert_eq!(
                status,
                415,
                "{path} {ctype}: {}",
                String::from_utf8_lossy(&b)
            );
            let err: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert!(
                err["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("application/")
            );
        }
        // Even with a JSON type, a foreign origin may not write.
        let (status, _, _) = http(
            srv.addr,
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 403);
    }
    // Nothing was written.
    let items = ws.ok("feature.query", json!({"layer": "draw"})).await;
    assert_eq!(items["features"].as_array().unwrap().len(), 0);
    let (_, h) = http_json(srv.addr, "GET", "/v1/channels/c/messages", None).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "{h}");
    // The documented types work.
    for ctype in ["application/geo+json", "application/json"] {
        let (status, _, b) = http(
            srv.addr,
            "POST",
            "/collections/draw/items",
            &[("content-type", ctype)],
            Some(feature.to_vec()),
        )
        .await;
        assert_eq!(status, 201, "{ctype}: {}", String::from_utf8_lossy(&b));
    }
    srv.shutdown().await;
}

/// A client that goes on sending far above its rate after being refused is closed with 4029;
/// one that stops in time is not.
#[tokio::test]
async fn a_flood_that_does_not_stop_is_closed() {
    use futures_util::SinkExt;
    use geostream_core::codec::{self, Id};
    use tokio_tungstenite::tungstenite::Message;
    let srv = TestServer::start_with(|c| {
        c.limits.requests_per_sec = 50;
        c.limits.request_burst = 10;
        c.limits.flood_close_secs = 1;
    })
    .await;
    let ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws.stream);
    // About 1,000 requests a second (20 times the rate) until the server closes.
    let sender = tokio::spawn(async move {
        let mut id = 0i64;
        let frame =
            |id| codec::encode_request(Encoding::Json, Some(&Id::Int(id)), "ping", &json!({}));
        loop {
            for _ in 0..20 {
                id += 1;
                let text = String::from_utf8(frame(id).to_vec()).unwrap();
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return id;
                }
            }
            tokio::select! {
                _ = &mut rx => return id,
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    });
    let code = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        use futures_util::StreamExt;
        while let Some(m) = stream.next().await {
            if let Ok(Message::Close(c)) = m {
                return c.map(|c| u16::from(c.code));
            }
        }
        None
    })
    .await
    .expect("closed within 15 s");
    let _ = tx.send(());
    let sent = sender.await.unwrap();
    assert_eq!(code, Some(4029), "closed as a flood after {sent} requests");
    assert!(sent > 100);
    // Another connection is served as usual.
    let mut calm = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    calm.ok("ping", json!({})).await;
    srv.shutdown().await;
}
