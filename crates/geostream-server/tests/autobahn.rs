//! WebSocket conformance: a bounded subset of the Autobahn test suite (run by `kosoku`, the
//! Python 3 runner, installed with pip when missing) against the echo endpoint, which runs
//! the framing and connection code of `/v1/ws`. The full run of cases 1-10 is
//! `scripts/autobahn.sh`; docs/AUTOBAHN.md holds its table and explains every case that is
//! not plainly OK. This test fails on any failed case, and on any non-OK case the document
//! does not explain.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The subset: every case of groups 1-7 and 10, and the smallest of the 9.* performance
/// cases (the rest send messages up to 16 MiB); `scripts/autobahn.sh` runs them all.
const SUBSET: &[&str] = &[
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.1.1", "9.2.1", "10.*",
];

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Installs kosoku with pip unless it is importable already. Never skips: a failed install
/// fails the test.
fn ensure_kosoku() {
    let importable = |py: &str| {
        Command::new(py)
            .args(["-c", "import kosoku"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let py = python();
    if importable(&py) {
        return;
    }
    let st = Command::new(&py)
        .args(["-m", "pip", "install", "--quiet", "kosoku"])
        .status()
        .unwrap_or_else(|e| panic!("run {py} -m pip: {e}"));
    assert!(st.success(), "pip install kosoku failed: {st}");
    assert!(
        importable(&py),
        "kosoku is not importable after pip install"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_subset_has_no_failure_and_every_non_ok_case_is_explained() {
    tokio::task::spawn_blocking(ensure_kosoku).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(geostream_server::ws_echo::serve(listener, 16 << 20));
    let out = std::env::temp_dir().join(format!("geostream-autobahn-{}", std::process::id()));
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(repo().join("scripts/autobahn_run.py"))
        .arg(format!("ws://{addr}"))
        .arg(&out)
        .kill_on_drop(true);
    for c in SUBSET {
        cmd.args(["--case", c]);
    }
    let status = tokio::time::timeout(Duration::from_secs(300), cmd.status())
        .await
        .expect("the subset runs within 5 minutes")
        .unwrap();
    let summary: Vec<Value> = serde_json::from_slice(
        &std::fs::read(out.join("summary.json")).unwrap_or_else(|e| {
            panic!("no summary.json (runner exit {status}): {e}");
        }),
    )
    .unwrap();
    server.abort();
    let _ = std::fs::remove_dir_all(&out);
    assert!(summary.len() > 200, "{} cases ran", summary.len());
    let passing = ["OK", "NON-STRICT", "INFORMATIONAL"];
    let mut failed = Vec::new();
    let mut not_ok = Vec::new();
    for c in &summary {
        let (b, bc) = (
            c["behavior"].as_str().unwrap(),
            c["behavior_close"].as_str().unwrap(),
        );
        if !passing.contains(&b) || !passing.contains(&bc) {
            failed.push(format!(
                "{} {b}/{bc}: {} {}",
                c["id"], c["result"], c["result_close"]
            ));
        } else if b != "OK" || bc != "OK" {
            not_ok.push(c["id"].as_str().unwrap().to_string());
        }
    }
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
    assert!(status.success(), "runner exit {status}");
    let doc = std::fs::read_to_string(repo().join("docs/AUTOBAHN.md")).unwrap();
    let unexplained: Vec<_> = not_ok
        .iter()
        .filter(|id| !doc.contains(&format!("`{id}`")))
        .collect();
    assert!(
        unexplained.is_empty(),
        "non-OK cases not explained in docs/AUTOBAHN.md: {unexplained:?}"
    );
}

#[tokio::test]
async fn the_echo_endpoint_refuses_a_non_loopback_address() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = geostream_server::ws_echo::serve(listener, 1 << 20)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
}
