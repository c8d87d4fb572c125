//! Durability across a hard crash: a child process edits through the store and prints every
//! acknowledged edit; the parent kills it with SIGKILL mid-stream (several times, at
//! different points), reopens the database and checks that every acknowledged edit is there
//! with its version and sequence number, and that the change log has no gap.
//!
//! The child is this same test binary, re-run with `CRASH_CHILD_DB` set on the test
//! `crash_child`, which does nothing otherwise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use geostream_store::{
    Holder, LayerSpec, SqliteOptions, SqliteStore, Store, StoreError, WriteOp, WriteRequest,
};
use serde_json::json;

const CHILD_ENV: &str = "CRASH_CHILD_DB";
const LAYER: &str = "crash";
const EDITORS: usize = 16;

/// One acknowledged edit, as the child printed it.
#[derive(Debug, Clone, Copy)]
struct Ack {
    feature: usize,
    version: u64,
    seq: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    // `ack <feature> <version> <seq> end`; the trailing word proves the line is whole.
    let mut it = line.split(' ');
    if it.next()? != "ack" {
        return None;
    }
    let ack = Ack {
        feature: it.next()?.parse().ok()?,
        version: it.next()?.parse().ok()?,
        seq: it.next()?.parse().ok()?,
    };
    (it.next()? == "end" && it.next().is_none()).then_some(ack)
}

/// The child: editors patching their own feature (strict layer, stated versions, op ids)
/// as fast as acknowledgements come, until killed.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default()).expect("open"));
        match store
            .create_layer(LayerSpec {
                name: LAYER.into(),
                ..Default::default()
            })
            .await
        {
            Ok(_) | Err(StoreError::LayerExists(_)) => {}
            Err(e) => panic!("{e}"),
        }
        let writer = Holder {
            client: "crash-child".into(),
            user: None,
        };
        let mut editors = tokio::task::JoinSet::new();
        for i in 0..EDITORS {
            let (store, writer) = (store.clone(), writer.clone());
            editors.spawn(async move {
                let id = format!("f{i}");
                let mut version = match store.get(LAYER, &id).await.expect("get") {
                    Some(f) => f.version,
                    None => {
                        let op = WriteOp::Create {
                            feature: geostream_core::feature::ValidFeature {
                                id: Some(id.clone()),
                                geometry: None,
                                bbox: None,
                                properties: Default::default(),
                            },
                        };
                        let req = WriteRequest {
                            layer: LAYER.into(),
                            ops: vec![op],
                            writer: writer.clone(),
                            op_id: None,
                        };
                        match store.apply(req).await {
                            Ok(o) => print_ack(i, o.changes[0].version, o.changes[0].seq),
                            // Created in an earlier life whose ack was lost with the process.
                            Err(StoreError::FeatureExists { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                        store
                            .get(LAYER, &id)
                            .await
                            .expect("get")
                            .expect("created")
                            .version
                    }
                };
                loop {
                    let op = WriteOp::Patch {
                        id: id.clone(),
                        properties: Some(
                            json!({"n": version})
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                        ),
                        geometry: None,
                        expected: Some(version),
                    };
                    let op_id = format!("{id}-{version}");
                    let req = WriteRequest {
                        layer: LAYER.into(),
                        ops: vec![op],
                        writer: writer.clone(),
                        op_id: Some(op_id),
                    };
                    let o = store.apply(req).await.expect("edit");
                    let c = &o.changes[0];
                    print_ack(i, c.version, c.seq);
                    version = c.version;
                }
            });
        }
        // Editors only stop by failing; the parent kills the process long before.
        if let Some(Err(e)) = editors.join_next().await {
            panic!("an editor failed: {e}");
        }
    });
}

fn print_ack(feature: usize, version: u64, seq: u64) {
    // One write per line: a pipe write under PIPE_BUF is atomic, so a kill never leaves
    // half a line that could parse.
    let line = format!("ack {feature} {version} {seq} end\n");
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).expect("stdout");
    out.flush().expect("stdout");
}

/// Runs the child until it has printed `kill_after` acks (or exits), kills it with SIGKILL
/// and returns every ack it printed.
fn run_child_and_kill(path: &std::path::Path, kill_after: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("stdout");
    let mut acks = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    let mut killed = false;
    while let Some(Ok(line)) = lines.next() {
        if let Some(a) = parse_ack(&line) {
            acks.push(a);
        }
        if !killed && acks.len() >= kill_after {
            // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no checkpoint.
            child.kill().expect("kill");
            killed = true;
            // Keep reading: acks already in the pipe were acknowledged before the kill.
        }
    }
    let status = child.wait().expect("wait");
    assert!(
        killed,
        "the child stopped by itself after {} acks: {status}",
        acks.len()
    );
    acks
}

#[test]
fn acknowledged_edits_survive_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.db");
    // Last acknowledged version per feature, and every acknowledged (seq -> feature, version).
    let mut last: HashMap<usize, u64> = HashMap::new();
    let mut acked: HashMap<u64, (usize, u64)> = HashMap::new();
    // Kill right at the start, then at several depths into a run. Over 8,192 op ids in all,
    // so the crashes also fall around the batched indexing of op ids.
    for (round, kill_after) in [1usize, 400, 3000, 50, 6000].into_iter().enumerate() {
        let acks = run_child_and_kill(&path, kill_after);
        assert!(acks.len() >= kill_after, "round {round}");
        for a in &acks {
            let v = last.entry(a.feature).or_default();
            *v = (*v).max(a.version);
            assert!(
                acked.insert(a.seq, (a.feature, a.version)).is_none(),
                "seq {} acknowledged twice",
                a.seq
            );
        }
        check(&path, &last, &acked, round);
    }
}

/// Reopens the database and checks every acknowledged edit against it.
fn check(
    path: &std::path::Path,
    last: &HashMap<usize, u64>,
    acked: &HashMap<u64, (usize, u64)>,
    round: usize,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store =
            SqliteStore::open(path, SqliteOptions::default()).expect("reopen after the crash");
        let info = store.layer(LAYER).await.expect("layer");
        for (&feature, &version) in last {
            let f = store
                .get(LAYER, &format!("f{feature}"))
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("round {round}: f{feature} lost"));
            // The editor waits for each ack, so at most one edit past the last ack may have
            // committed without its ack reaching us.
            assert!(
                f.version == version || f.version == version + 1,
                "round {round}: f{feature} is at version {}, acknowledged {version}",
                f.version
            );
            // The acknowledged edit's op id survived too: sending it again is a replay.
            if version > 1 {
                let id = format!("f{feature}");
                let op = WriteOp::Patch {
                    id: id.clone(),
                    properties: None,
                    geometry: None,
                    expected: Some(version - 1),
                };
                let req = WriteRequest {
                    layer: LAYER.into(),
                    ops: vec![op],
                    writer: Holder {
                        client: "crash-child".into(),
                        user: None,
                    },
                    op_id: Some(format!("{id}-{}", version - 1)),
                };
                let o = store.apply(req).await.expect("retry");
                assert!(
                    o.replayed,
                    "round {round}: the op id of f{feature} v{version} was forgotten"
                );
                assert_eq!(o.changes[0].version, version);
            }
        }
        let page = store.changes(LAYER, 0, usize::MAX).await.expect("changes");
        assert_eq!(page.first_retained, 1);
        assert_eq!(
            page.changes.len() as u64,
            info.seq,
            "round {round}: the log has every change up to seq"
        );
        for (i, c) in page.changes.iter().enumerate() {
            assert_eq!(c.seq, i as u64 + 1, "round {round}: gap in the change log");
        }
        for (&seq, &(feature, version)) in acked {
            let c = page.changes.get(seq as usize - 1).unwrap_or_else(|| {
                panic!(
                    "round {round}: acknowledged seq {seq} lost (log ends at {})",
                    info.seq
                )
            });
            assert_eq!(
                (c.id.as_str(), c.version),
                (format!("f{feature}").as_str(), version),
                "round {round}: seq {seq}"
            );
        }
        let integrity: String = rusqlite::Connection::open(path)
            .expect("raw")
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok");
    });
}
