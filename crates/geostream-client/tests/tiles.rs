//! Tile subscriptions against a real server: deltas applied and verified, resumed after a
//! network cut from the versions held, viewport moves, and both JSON (base64) and
//! MessagePack (binary) transport of tile bytes.

mod common;

use common::{DataDir, Proxy, TestServer, WAIT, fast_options, http_get, point, state_where};
use geostream_client::{
    Client, ConnectionState, Encoding, LayerCreateParams, TileEvent, TileMode, TileSelection,
    TileStream,
};
use serde_json::json;

async fn next_tile(s: &mut TileStream) -> TileEvent {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a tile event in time")
        .expect("the stream is open")
}

/// The tile as the server serves it over HTTP now: (version, bytes).
async fn http_tile(srv: &TestServer, layer: &str, tile: &str) -> (u64, Vec<u8>) {
    let (status, headers, body) = http_get(srv.addr, &format!("/v1/tiles/{layer}/{tile}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let version = headers
        .iter()
        .find(|(k, _)| k == "x-tile-version")
        .and_then(|(_, v)| v.parse().ok())
        .expect("x-tile-version");
    (version, body)
}

/// Reads tile events until `tile` arrives at least at `version`; checks it against HTTP.
async fn tile_at(
    srv: &TestServer,
    s: &mut TileStream,
    layer: &str,
    min_version: u64,
) -> (String, u64, bool) {
    loop {
        match next_tile(s).await {
            TileEvent::Tile {
                tile,
                version,
                data,
                from_delta,
                ..
            } if version >= min_version => {
                // Nothing else edits the layer meanwhile: HTTP serves this very version.
                let (v, body) = http_tile(srv, layer, &tile).await;
                assert_eq!(v, version, "tile {tile}");
                assert_eq!(&data[..], &body[..], "tile {tile} v{version} as served");
                return (tile, version, from_delta);
            }
            TileEvent::Tile { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tile_deltas_are_applied_verified_and_resumed() {
    let dir = DataDir::new("tiles");
    let srv = TestServer::start(&dir, |_| {}).await;
    let proxy = Proxy::start(srv.addr).await;
    let editor = Client::connect(&srv.url(), fast_options()).await.unwrap();
    editor
        .create_layer(LayerCreateParams {
            name: "t".into(),
            last_writer_wins: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // Enough features that a one-feature change is much smaller than the tile.
    let features: Vec<_> = (0..300)
        .map(|i| {
            point(
                &format!("p{i}"),
                9.0 + (i % 20) as f64 * 0.1,
                9.0 + (i / 20) as f64 * 0.1,
                json!({ "name": format!("point number {i}"), "kind": i % 7 }),
            )
        })
        .collect();
    editor
        .import_features("t", features, None, Default::default())
        .await
        .unwrap();

    let viewer = Client::connect(&proxy.url(), fast_options().encoding(Encoding::Msgpack))
        .await
        .unwrap();
    let mut states = viewer.state_changes();
    let mut s = viewer
        .subscribe_tiles(
            "t",
            TileSelection::Viewport {
                bbox: [9.5, 9.5, 10.5, 10.5],
                zoom: 6,
            },
            TileMode::Delta,
        )
        .await
        .unwrap();
    assert_eq!(s.kind(), "vector");
    assert_eq!(s.tiles().len(), 1);
    let key = s.tiles()[0].clone();
    let (tile, v1, from_delta) = tile_at(&srv, &mut s, "t", 0).await;
    assert_eq!(tile, key);
    assert!(!from_delta, "the first version comes whole");

    // One feature changes: a delta, applied and checked against its CRC by the client.
    editor
        .patch_properties(
            "t",
            "p210",
            json!({ "name": "renamed" }).as_object().cloned().unwrap(),
            None,
        )
        .await
        .unwrap();
    let (_, v2, from_delta) = tile_at(&srv, &mut s, "t", v1 + 1).await;
    assert!(from_delta, "a small change travels as a delta");

    // Disconnected while the tile changes twice: on reconnect the client says it holds v2
    // and gets one delta to the latest version.
    proxy.set_accepting(false);
    proxy.cut();
    state_where(&mut states, |st| {
        matches!(st, ConnectionState::Reconnecting { .. })
    })
    .await;
    for name in ["again", "and again"] {
        editor
            .patch_properties(
                "t",
                "p211",
                json!({ "name": name }).as_object().cloned().unwrap(),
                None,
            )
            .await
            .unwrap();
    }
    let latest = loop {
        let (v, _) = http_tile(&srv, "t", &key).await;
        if v > v2 {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    proxy.set_accepting(true);
    let (_, v3, from_delta) = tile_at(&srv, &mut s, "t", latest).await;
    assert!(v3 >= latest);
    assert!(from_delta, "resumed from the version held");

    // Moving the viewport brings the new tile, whole.
    let moved = s
        .set_selection(TileSelection::Viewport {
            bbox: [0.5, 0.5, 1.5, 1.5],
            zoom: 6,
        })
        .await
        .unwrap();
    assert_eq!(moved.removed, vec![key.clone()]);
    assert_eq!(moved.added.len(), 1);
    let (tile, _, from_delta) = tile_at(&srv, &mut s, "t", 0).await;
    assert_eq!(tile, moved.added[0]);
    assert!(!from_delta);

    // JSON carries the bytes as base64; the client decodes them to the same tile.
    let json_viewer = Client::connect(&srv.url(), fast_options().encoding(Encoding::Json))
        .await
        .unwrap();
    let mut js = json_viewer
        .subscribe_tiles("t", TileSelection::Tiles(vec![key.clone()]), TileMode::Full)
        .await
        .unwrap();
    let (tile, _, _) = tile_at(&srv, &mut js, "t", 0).await;
    assert_eq!(tile, key);
}
