//! Nothing acknowledged is lost when the server process dies: writers send edits as fast as
//! the server acknowledges them, the `geostream` process is killed with SIGKILL mid-stream
//! and restarted on the same data directory, and every acknowledged edit must be there with
//! its version, and the change log must have no gap. Several rounds on one directory.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use geostream_server::remote::{Remote, RemoteError};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `geostream serve` on a free port; returns the process and its address.
async fn start(data: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_geostream"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("GEOSTREAM_LOG__LEVEL", "warn")
        // A large outbox: `check_log` reads every change as a push, which a smaller budget
        // would rightly coalesce when the test reads slower than the server replays.
        .env("GEOSTREAM_LIMITS__OUTBOX_BYTES", "268435456")
        // ... and let it replay the whole log rather than answer with a snapshot.
        .env("GEOSTREAM_LAYERS__MAX_REPLAY", "10000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the geostream binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .expect("the server listens in time");
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Acknowledged versions per feature id.
type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// Creates and then patches its own features one edit at a time until the connection dies.
/// Each edit sets `n` to the version it produces minus one, so content and version can be
/// checked together.
async fn writer(addr: SocketAddr, round: usize, w: usize, acked: Acked) {
    let Ok(remote) = Remote::connect(&addr.to_string(), None).await else {
        return;
    };
    for k in 0.. {
        let id = format!("r{round}-w{w}-f{}", k % 20);
        let known = acked.lock().get(&id).copied();
        let result = match known {
            None => {
                remote
                    .call(
                        "feature.create",
                        &json!({ "layer": "edits", "feature": {
                            "type": "Feature", "id": id,
                            "geometry": { "type": "Point", "coordinates": [w as f64, k as f64 % 80.0] },
                            "properties": { "n": 0 } } }),
                    )
                    .await
            }
            Some(v) => {
                remote
                    .call(
                        "feature.patch",
                        &json!({ "layer": "edits", "id": id, "version": v, "properties": { "n": v } }),
                    )
                    .await
            }
        };
        match result {
            Ok(r) => {
                acked
                    .lock()
                    .insert(id, r["version"].as_u64().expect("a version"));
            }
            Err(RemoteError::Connection(_)) => return,
            Err(RemoteError::Rpc(e)) => panic!("edit {id} refused: {e:?}"),
        }
    }
}

/// Checks every acknowledged edit and the change log.
async fn verify(addr: SocketAddr, acked: &HashMap<String, u64>) -> u64 {
    let remote = Remote::connect(&addr.to_string(), None).await.unwrap();
    for (id, v) in acked {
        let r = remote
            .call("feature.get", &json!({ "layer": "edits", "id": id }))
            .await
            .unwrap_or_else(|e| panic!("acknowledged feature {id} is missing: {e}"));
        let f = &r["feature"];
        let version = f["version"].as_u64().unwrap();
        // One more edit may have been committed whose acknowledgement never arrived.
        assert!(
            version == *v || version == v + 1,
            "{id}: acknowledged version {v}, found {version}"
        );
        assert_eq!(
            f["properties"]["n"].as_u64(),
            Some(version - 1),
            "{id}: content matches its version"
        );
    }
    let info = remote
        .call("layer.get", &json!({ "name": "edits" }))
        .await
        .unwrap();
    info["seq"].as_u64().unwrap()
}

/// Reads the whole change log by resuming a subscription from 0 and checks it is 1..=seq.
async fn check_log(addr: SocketAddr, seq: u64) {
    let url = format!("ws://{addr}/v1/ws");
    let mut ws = common::Ws::connect(&url, geostream_core::codec::Encoding::Msgpack).await;
    let r = ws
        .ok("layer.subscribe", json!({ "layer": "edits", "since": 0 }))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["replayed"], seq, "every change is in the log");
    for expected in 1..=seq {
        let p: Value = ws.push_of("feature").await;
        assert_eq!(p["seq"], expected, "the change log has no gap");
    }
}

#[tokio::test]
async fn sigkill_mid_stream_loses_no_acknowledged_edit() {
    let dir = common::tempdir::Dir::new("crash");
    let (mut child, mut addr) = start(dir.path()).await;
    Remote::connect(&addr.to_string(), None)
        .await
        .unwrap()
        .call("layer.create", &json!({ "name": "edits" }))
        .await
        .unwrap();
    let acked: Acked = Arc::default();
    for round in 0..4 {
        let writers: Vec<_> = (0..8)
            .map(|w| tokio::spawn(writer(addr, round, w, acked.clone())))
            .collect();
        // Let the edits flow, then kill the process without warning.
        tokio::time::sleep(Duration::from_millis(700 + 200 * round as u64)).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        for w in writers {
            w.await.unwrap();
        }
        let snapshot = acked.lock().clone();
        assert!(
            snapshot.len() >= 8 * (round + 1),
            "round {round}: edits were acknowledged before the kill"
        );
        let (c, a) = start(dir.path()).await;
        let seq = verify(a, &snapshot).await;
        let total: u64 = snapshot.values().sum();
        assert!(
            seq >= total,
            "the log holds at least every acknowledged edit"
        );
        check_log(a, seq).await;
        eprintln!(
            "round {round}: {} features, {total} acknowledged edits, log at {seq}: all present",
            snapshot.len()
        );
        // The next round writes to the restarted server.
        child = c;
        addr = a;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// A request made after the server went away fails at once (it once waited forever, which
/// hung the SIGKILL test above now and then).
#[tokio::test]
async fn a_call_after_the_connection_died_fails_instead_of_waiting() {
    let srv = common::TestServer::start().await;
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote.call("ping", &json!({})).await.unwrap();
    srv.shutdown().await;
    // Let the client see the connection end before calling again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(5), remote.call("ping", &json!({})))
            .await
            .expect("a call on a dead connection must not wait forever");
        assert!(matches!(r, Err(RemoteError::Connection(_))), "{r:?}");
    }
}
