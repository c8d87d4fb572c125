//! Layer presence and cursors through the client against a real server: who is here, joins,
//! leaves and cursors, and what happens when a client's connection is cut mid-session: its
//! presence comes back by itself (a new session), with its last cursor.

mod common;

use common::{DataDir, Proxy, TestServer, WAIT, fast_options};
use geostream_client::{
    Client, ClientError, ErrorCode, LayerCreateParams, PresenceEvent, PresenceStream,
};
use serde_json::json;

/// The next presence event, failing after [`WAIT`].
async fn next(s: &mut PresenceStream) -> PresenceEvent {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a presence event in time")
        .expect("the stream is open")
}

/// Reads events until `pred` holds for one; returns it.
async fn until(s: &mut PresenceStream, pred: impl Fn(&PresenceEvent) -> bool) -> PresenceEvent {
    loop {
        let ev = next(s).await;
        if pred(&ev) {
            return ev;
        }
    }
}

fn name(info: &geostream_client::ClientInfo) -> String {
    info.info
        .as_ref()
        .and_then(|i| i["name"].as_str())
        .unwrap_or("")
        .to_string()
}

fn names(s: &PresenceStream) -> Vec<String> {
    let mut v: Vec<String> = s.state().members().map(name).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_cursors_and_a_cut_connection() {
    let dir = DataDir::new("presence");
    let srv = TestServer::start(&dir, |_| {}).await;
    let proxy = Proxy::start(srv.addr).await;
    let ada = Client::connect(&srv.url(), fast_options().info(json!({ "name": "Ada" })))
        .await
        .unwrap();
    let bob = Client::connect(&proxy.url(), fast_options().info(json!({ "name": "Bob" })))
        .await
        .unwrap();
    let _: serde_json::Value = ada
        .request(
            "layer.create",
            LayerCreateParams {
                name: "plan".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let mut a = ada.subscribe_presence("plan").await.unwrap();
    assert_eq!(names(&a), ["Ada"]);
    let mut b = bob.subscribe_presence("plan").await.unwrap();
    assert_eq!(names(&b), ["Ada", "Bob"]);
    until(
        &mut a,
        |e| matches!(e, PresenceEvent::Join(c) if name(c) == "Bob"),
    )
    .await;
    assert_eq!(names(&a), ["Ada", "Bob"]);
    let bob_session = a
        .state()
        .members()
        .find(|m| name(m) == "Bob")
        .unwrap()
        .session
        .clone();

    // A cursor, as a notification; Ada sees it tagged with Bob's session.
    bob.send_cursor("plan", Some([2.35, 48.85]), &["f1"])
        .unwrap();
    let ev = until(&mut a, |e| matches!(e, PresenceEvent::Cursor(_))).await;
    let PresenceEvent::Cursor(c) = ev else {
        unreachable!()
    };
    assert_eq!(c.client.session, bob_session);
    assert_eq!(c.position, Some([2.35, 48.85]));
    assert_eq!(c.editing, ["f1"]);
    assert_eq!(
        a.state().cursor(&bob_session).unwrap().position,
        Some([2.35, 48.85])
    );

    // A request over the rate is refused (at most one per 50 ms per connection).
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    bob.set_cursor("plan", Some([2.4, 48.9]), &[])
        .await
        .unwrap();
    let e = bob
        .set_cursor("plan", Some([2.5, 48.9]), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    let ev = until(&mut a, |e| matches!(e, PresenceEvent::Cursor(_))).await;
    assert!(matches!(ev, PresenceEvent::Cursor(c) if c.position == Some([2.4, 48.9])));

    // Bob's connection is cut mid-session: Ada sees him leave (his cursor goes with him),
    // then come back as a new session, with his last cursor shared again by itself.
    proxy.cut();
    let ev = until(&mut a, |e| matches!(e, PresenceEvent::Leave(_))).await;
    assert!(matches!(&ev, PresenceEvent::Leave(c) if c.session == bob_session));
    assert!(a.state().cursor(&bob_session).is_none());
    assert_eq!(names(&a), ["Ada"]);
    let ev = until(
        &mut a,
        |e| matches!(e, PresenceEvent::Join(c) if name(c) == "Bob"),
    )
    .await;
    let PresenceEvent::Join(again) = ev else {
        unreachable!()
    };
    assert_ne!(again.session, bob_session);
    let ev = until(&mut a, |e| matches!(e, PresenceEvent::Cursor(_))).await;
    let PresenceEvent::Cursor(c) = ev else {
        unreachable!()
    };
    assert_eq!(c.client.session, again.session);
    assert_eq!(c.position, Some([2.4, 48.9]));
    // Bob's stream was made again: it lists everyone there now, under his new session.
    let ev = until(&mut b, |e| matches!(e, PresenceEvent::Members(_))).await;
    let PresenceEvent::Members(list) = ev else {
        unreachable!()
    };
    assert!(list.iter().any(|m| m.session == again.session));
    assert_eq!(names(&b), ["Ada", "Bob"]);

    // Dropping the stream leaves.
    drop(b);
    let ev = until(&mut a, |e| matches!(e, PresenceEvent::Leave(_))).await;
    assert!(matches!(&ev, PresenceEvent::Leave(c) if c.session == again.session));
    assert_eq!(names(&a), ["Ada"]);

    // A layer that does not exist is refused.
    let e = ada.subscribe_presence("nope").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Rpc(r) if r.code == ErrorCode::LayerNotFound),
        "{e}"
    );
    ada.close();
    bob.close();
    srv.stop().await;
}
