//! Clusters of real `geostream serve` processes sharing the local PostgreSQL and NATS, set up
//! the way an operator does it:
//!
//! - three nodes from the TOML block of docs/DEPLOY.md, read out of the document (so it
//!   cannot drift) and used verbatim: only what differs per machine is overridden, through
//!   the environment as DEPLOY.md documents; a feature created on node 1 reaches a subscriber
//!   on node 3, `--print-config` shows the effective PostgreSQL/NATS settings, and the demo
//!   basemap is loaded once, without warnings, though the nodes start together;
//! - three nodes configured from environment variables alone, with an owner of writes per
//!   layer (`broker.write_owner = "layer"`): the layers' owners are spread over the nodes;
//! - a node SIGKILLed while its client holds a lock: after `layers.lock_grace_ms` a client on
//!   another node takes the lock, and a watcher on each survivor receives exactly one
//!   `locked:false` and one presence `leave` per presence channel;
//! - a node frozen (SIGSTOP) until it is taken for dead, then resumed: its client's released
//!   lock stays released, and the locks of clients on the living nodes are left alone;
//! - feature changes made while one node's NATS connection is cut (through a TCP proxy this
//!   test owns; the shared NATS is never stopped) arrive once, in order, after it reconnects;
//! - a node that cannot reach PostgreSQL or NATS exits non-zero with the reason, before it
//!   says it is listening;
//! - by default one node owns every layer's writes; a write forwarded to it while it is frozen
//!   (SIGSTOP) is applied by the sender after the answer times out, and the thawed owner,
//!   reading it late, does not apply it again.
//!
//! Needs PostgreSQL with PostGIS (`GEOSTREAM_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS with JetStream
//! (`GEOSTREAM_TEST_NATS_URL`, default `nats://127.0.0.1:4222`); `scripts/test.sh` starts
//! both. If either is unreachable the test fails saying so. Each test uses a schema and a
//! subject prefix of its own, removed at the end.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backends::{Backends, nats_url, pg_url};
use common::{Ws, http_json, http_publish, tempdir};
use geostream_core::codec::Encoding;
use geostream_core::error::ErrorCode;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long a node may take to start (a debug build on a loaded machine, migrations, the
/// basemap import).
const START: Duration = Duration::from_secs(90);

impl Backends {
    /// A node configured from environment variables alone, as scripts/cluster.sh does.
    fn env_only(&self, broker_url: &str) -> Vec<(String, String)> {
        vars(&[
            ("GEOSTREAM_LISTEN", "127.0.0.1:0"),
            ("GEOSTREAM_STORE__TYPE", "postgres"),
            ("GEOSTREAM_STORE__URL", &pg_url()),
            ("GEOSTREAM_STORE__SCHEMA", &self.schema),
            ("GEOSTREAM_STORE__POOL_SIZE", "4"),
            ("GEOSTREAM_BROKER__TYPE", "nats"),
            ("GEOSTREAM_BROKER__URL", broker_url),
            ("GEOSTREAM_BROKER__PREFIX", &self.prefix),
            ("GEOSTREAM_BROKER__HEARTBEAT_MS", "200"),
            ("GEOSTREAM_SHUTDOWN__UNREADY_SECS", "0"),
        ])
    }
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The TOML block of docs/DEPLOY.md that every node gets (`/etc/geostream/node.toml`).
fn deploy_toml() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/DEPLOY.md");
    let doc = std::fs::read_to_string(path).expect("docs/DEPLOY.md");
    let start = doc
        .find("```toml\n# /etc/geostream/node.toml")
        .expect("DEPLOY.md has the node.toml block");
    let body = &doc[start + "```toml\n".len()..];
    body[..body.find("```").expect("the block ends")].to_string()
}

/// A command for the `geostream` binary with none of this process's `GEOSTREAM_*` or
/// `RUST_LOG` variables: a node is configured by what the test gives it only.
fn geostream(args: &[String], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_geostream"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GEOSTREAM_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().cloned());
    cmd
}

/// Removes terminal colour codes from a log line.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `geostream serve` process.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempdir::Dir,
}

/// A node that was spawned and has not said it listens yet.
struct Starting {
    child: Child,
    addr: tokio::sync::oneshot::Receiver<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    dir: tempdir::Dir,
}

/// Keeps every line of `out` in `log`; sends the address of the "listening on" line.
fn read_lines(
    out: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    mut addr: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = plain(&line);
            if let Some(rest) = line.split("listening on http://").nth(1)
                && let (Some(tx), Some(a)) = (addr.take(), rest.split_whitespace().next())
            {
                let _ = tx.send(a.parse().expect("the address it listens on"));
            }
            log.lock().push(line);
        }
    });
}

impl Node {
    /// Spawns `geostream serve` with the arguments and environment `setup` gives for a data
    /// directory of its own; see [`Starting::ready`].
    fn spawn(setup: impl FnOnce(&str) -> (Vec<String>, Vec<(String, String)>)) -> Starting {
        let dir = tempdir::Dir::new("node");
        let (args, env) = setup(dir.path().to_str().expect("utf-8 path"));
        let mut all = vec!["serve".to_string()];
        all.extend(args);
        let mut child = geostream(&all, &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the geostream binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        read_lines(child.stderr.take().unwrap(), log.clone(), Some(tx));
        read_lines(child.stdout.take().unwrap(), log.clone(), None);
        Starting {
            child,
            addr: rx,
            log,
            dir,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The node's log so far.
    fn log(&self) -> Vec<String> {
        self.log.lock().clone()
    }

    /// Kills the process without warning (SIGKILL) and waits for it to end.
    async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the process ends")
            .expect("wait");
    }
}

impl Starting {
    /// Waits until the node says it listens; panics with its log if it exits first.
    async fn ready(self) -> Node {
        let Starting {
            child,
            addr,
            log,
            dir,
        } = self;
        match tokio::time::timeout(START, addr).await {
            Ok(Ok(addr)) => Node {
                child,
                addr,
                log,
                _dir: dir,
            },
            other => panic!(
                "the node did not start ({}); its log:\n{}",
                if other.is_err() {
                    "timed out"
                } else {
                    "it exited"
                },
                log.lock().join("\n")
            ),
        }
    }
}

/// Starts all of `starting` at once and waits for each.
async fn all_ready(starting: Vec<Starting>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for s in starting {
        nodes.push(s.ready().await);
    }
    nodes
}

/// `n` nodes configured from `env` alone (each with a data directory of its own), started
/// together.
async fn from_env(n: usize, env: &[(String, String)]) -> Vec<Node> {
    let starting = (0..n)
        .map(|_| Node::spawn(|data| (vec!["--data-dir".into(), data.into()], env.to_vec())))
        .collect();
    all_ready(starting).await
}

fn point(id: &str, x: f64, y: f64, props: Value) -> Value {
    json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": props })
}

/// Drains the snapshot pages a layer subscription starts with.
async fn skip_snapshot(ws: &mut Ws) {
    loop {
        let p = ws.push_of("snapshot").await;
        if p["last"] == true {
            return;
        }
    }
}

/// Subscribes `ws` to `layer` and reads its (empty or not) snapshot.
async fn watch_layer(ws: &mut Ws, layer: &str) {
    ws.ok("layer.subscribe", json!({ "layer": layer })).await;
    skip_snapshot(ws).await;
}

/// The number of features in the demo basemap file the nodes load.
fn basemap_features() -> usize {
    let bytes = geostream_server::web::read_data(&geostream_server::Config::default().web.basemap)
        .expect("the basemap file");
    let fc: Value = serde_json::from_slice(&bytes).expect("GeoJSON");
    fc["features"].as_array().expect("features").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_from_the_deploy_toml() {
    let be = Backends::new("proc_doc").await;
    let dir = tempdir::Dir::new("deploy-toml");
    let file = dir.path().join("node.toml");
    std::fs::write(&file, deploy_toml()).unwrap();
    let file = file.to_str().unwrap().to_string();
    // The file as DEPLOY.md gives it; what differs on this machine through the environment,
    // as DEPLOY.md says (hosts, this test's schema and prefix, one NATS server, a small pool).
    let env = vars(&[
        ("GEOSTREAM_STORE__URL", &pg_url()),
        ("GEOSTREAM_STORE__SCHEMA", &be.schema),
        ("GEOSTREAM_STORE__POOL_SIZE", "4"),
        ("GEOSTREAM_BROKER__URL", &nats_url()),
        ("GEOSTREAM_BROKER__PREFIX", &be.prefix),
        ("GEOSTREAM_BROKER__REPLICAS", "1"),
        ("GEOSTREAM_SHUTDOWN__UNREADY_SECS", "0"),
    ]);

    // --print-config shows the effective PostgreSQL and NATS settings (and --set works).
    let args = [
        "serve",
        "--config",
        &file,
        "--set",
        "layers.lock_grace_ms=500",
    ];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.push("--print-config".into());
    let out = geostream(&args, &env)
        .output()
        .await
        .expect("geostream runs");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want_store = format!(
        "[store]\ntype = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\npool_size = 4\nchange_retention = 100000\n",
        pg_url(),
        be.schema
    );
    let want_broker = format!(
        "[broker]\ntype = \"nats\"\nurl = \"{}\"\nprefix = \"{}\"\nreplicas = 1\nheartbeat_ms = 2000\n",
        nats_url(),
        be.prefix
    );
    assert!(printed.contains(&want_store), "{printed}");
    assert!(printed.contains(&want_broker), "{printed}");
    assert!(printed.contains("\nlock_grace_ms = 500\n"), "{printed}");

    // Three nodes started together.
    let starting = (0..3)
        .map(|_| {
            Node::spawn(|data| {
                let args = [
                    "--config",
                    &file,
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    data,
                ];
                (args.map(String::from).to_vec(), env.clone())
            })
        })
        .collect();
    let nodes = all_ready(starting).await;

    // A feature created on node 1 reaches a subscriber on node 3.
    let mut editor = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    let mut sub = Ws::connect(&nodes[2].ws_url(), Encoding::Msgpack).await;
    editor.ok("layer.create", json!({ "name": "plan" })).await;
    watch_layer(&mut sub, "plan").await;
    let r = editor
        .ok(
            "feature.create",
            json!({ "layer": "plan", "feature": point("f1", 2.35, 48.85, json!({ "name": "Paris" })) }),
        )
        .await;
    let p = sub.push_of("feature").await;
    assert_eq!(
        (p["id"].as_str(), p["seq"].as_u64()),
        (Some("f1"), r["seq"].as_u64())
    );

    // The demo basemap: loaded by exactly one node, every feature once, and no node warned.
    let loaded: Vec<usize> = (0..3)
        .filter(|&i| {
            nodes[i]
                .log()
                .iter()
                .any(|l| l.contains("Loaded the basemap layer"))
        })
        .collect();
    assert_eq!(loaded.len(), 1, "exactly one node loads the basemap");
    for (i, n) in nodes.iter().enumerate() {
        let warnings: Vec<String> = n
            .log()
            .into_iter()
            .filter(|l| {
                l.contains("WARN") && (l.contains("basemap") || l.contains("already exists"))
            })
            .collect();
        assert!(warnings.is_empty(), "node {}: {warnings:#?}", i + 1);
    }
    let (status, body) = http_json(
        nodes[1].addr,
        "GET",
        "/collections/countries/items?limit=1000",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["numberReturned"].as_u64(),
        Some(basemap_features() as u64)
    );

    drop((editor, sub));
    for n in nodes {
        n.kill().await;
    }
    drop(be);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_from_environment_variables_alone() {
    let be = Backends::new("proc_env").await;
    // With an owner per layer, which `a_write_forwarded_to_a_frozen_owner_is_applied_once`
    // checks for the default, one owner for all.
    let env = [
        be.env_only(&nats_url()),
        vars(&[("GEOSTREAM_BROKER__WRITE_OWNER", "layer")]),
    ]
    .concat();
    let starting = (0..3)
        .map(|_| {
            Node::spawn(|data| {
                let env = [env.clone(), vars(&[("GEOSTREAM_DATA_DIR", data)])].concat();
                (Vec::new(), env)
            })
        })
        .collect();
    let nodes = all_ready(starting).await;

    // A channel message published on node 2 reaches subscribers on nodes 1 and 3.
    let mut on_1 = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    let mut on_3 = Ws::connect(&nodes[2].ws_url(), Encoding::Msgpack).await;
    for ws in [&mut on_1, &mut on_3] {
        ws.ok("channel.subscribe", json!({ "channel": "news" }))
            .await;
    }
    http_publish(nodes[1].addr, "news", json!({ "n": 1 })).await;
    for ws in [&mut on_1, &mut on_3] {
        let m = ws.push_of("message").await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["n"].as_u64()),
            (Some(1), Some(1))
        );
    }
    // A feature edited on node 3 reaches a subscriber on node 1.
    let mut editor = Ws::connect(&nodes[2].ws_url(), Encoding::Json).await;
    editor.ok("layer.create", json!({ "name": "env" })).await;
    watch_layer(&mut on_1, "env").await;
    let r = editor
        .ok(
            "feature.create",
            json!({ "layer": "env", "feature": point("e", 1.0, 2.0, json!({})) }),
        )
        .await;
    let p = on_1.push_of("feature").await;
    assert_eq!(
        (p["id"].as_str(), p["seq"].as_u64()),
        (Some("e"), r["seq"].as_u64())
    );

    // Layers have their owners spread over the nodes (twelve layers all on one of three
    // nodes would happen once in 177,000 runs).
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..12 {
        let layer = format!("owned-{i}");
        editor.ok("layer.create", json!({ "name": layer })).await;
        owners.insert(owner_of(&nodes, &layer).await.0);
    }
    assert!(owners.len() > 1, "one owner for every layer: {owners:?}");

    drop((on_1, on_3, editor));
    for n in nodes {
        n.kill().await;
    }
    drop(be);
}

/// What a watcher saw of Kim, the client of the node that dies.
#[derive(Debug, Default)]
struct SeenOfKim {
    /// `leave` pushes per presence channel.
    leaves: HashMap<String, usize>,
    /// Lock pushes for the feature (client, locked), in order.
    locks: Vec<(String, bool)>,
}

impl SeenOfKim {
    fn note(&mut self, method: &str, p: &Value) {
        match method {
            "leave" if p["client"]["info"]["name"] == "Kim" => {
                let ch = p["channel"].as_str().unwrap_or_default().to_string();
                *self.leaves.entry(ch).or_default() += 1;
            }
            "lock" => {
                let client = p["client"].as_str().expect("client").to_string();
                self.locks
                    .push((client, p["locked"].as_bool().expect("locked")));
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_lock_and_presence_are_cleaned_up_once_by_the_survivors() {
    const GRACE_MS: u64 = 3000;
    let be = Backends::new("proc_kill").await;
    let env = [
        be.env_only(&nats_url()),
        vars(&[("GEOSTREAM_LAYERS__LOCK_GRACE_MS", &GRACE_MS.to_string())]),
    ]
    .concat();
    let mut nodes = from_env(3, &env).await;

    let mut setup = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    setup.ok("layer.create", json!({ "name": "plan" })).await;
    setup
        .ok(
            "feature.create",
            json!({ "layer": "plan", "feature": point("f", 1.0, 1.0, json!({})) }),
        )
        .await;
    // A watcher on each node that survives: the layer, its presence, and a channel's presence.
    let mut watchers = Vec::new();
    for (i, node) in nodes.iter().take(2).enumerate() {
        let mut w = Ws::connect(&node.ws_url(), Encoding::Json).await;
        w.ok(
            "hello",
            json!({ "info": { "name": format!("watcher-{i}") } }),
        )
        .await;
        watch_layer(&mut w, "plan").await;
        w.ok("presence.subscribe", json!({ "layer": "plan" })).await;
        w.ok(
            "channel.subscribe",
            json!({ "channel": "room", "presence": true }),
        )
        .await;
        watchers.push(w);
    }
    // Kim, on node 3, is present on the layer and the channel, and locks the feature.
    let mut kim = Ws::connect(&nodes[2].ws_url(), Encoding::Msgpack).await;
    kim.ok(
        "hello",
        json!({ "client_id": "kim", "info": { "name": "Kim" } }),
    )
    .await;
    kim.ok("presence.subscribe", json!({ "layer": "plan" }))
        .await;
    kim.ok(
        "channel.subscribe",
        json!({ "channel": "room", "presence": true }),
    )
    .await;
    kim.ok("feature.lock", json!({ "layer": "plan", "ids": ["f"] }))
        .await;
    for w in &mut watchers {
        let mut joins = 0;
        let mut locked = false;
        while joins < 2 || !locked {
            let (m, p) = w.push().await;
            if m == "join" && p["client"]["info"]["name"] == "Kim" {
                joins += 1;
            }
            if m == "lock" && p["client"] == "kim" && p["locked"] == true {
                locked = true;
            }
        }
    }

    // Node 3 dies without a word.
    let killed_at = Instant::now();
    nodes.pop().expect("node 3").kill().await;
    drop(kim);

    // Each survivor's watcher hears Kim leave both presence channels, then, after the grace,
    // the lock's release.
    let mut seen: Vec<SeenOfKim> = Vec::new();
    for w in &mut watchers {
        let mut s = SeenOfKim::default();
        while s.leaves.values().sum::<usize>() < 2 {
            let (m, p) = w.push().await;
            s.note(&m, &p);
        }
        seen.push(s);
    }
    // Still locked: the grace runs from when the node was taken for dead.
    let mut taker = Ws::connect(&nodes[1].ws_url(), Encoding::Json).await;
    taker
        .ok(
            "hello",
            json!({ "client_id": "tom", "info": { "name": "Tom" } }),
        )
        .await;
    let e = taker
        .call("feature.lock", json!({ "layer": "plan", "ids": ["f"] }))
        .await
        .expect_err("still locked within the grace");
    assert_eq!(e.code, ErrorCode::Locked, "{e}");
    for (w, s) in watchers.iter_mut().zip(&mut seen) {
        while !s.locks.iter().any(|(c, locked)| c == "kim" && !locked) {
            let (m, p) = w.push().await;
            s.note(&m, &p);
        }
    }
    let released_after = killed_at.elapsed();
    assert!(
        released_after >= Duration::from_millis(GRACE_MS),
        "released {released_after:?} after the kill, before the grace of {GRACE_MS} ms"
    );
    // Now another node's client takes it.
    let r = taker
        .ok("feature.lock", json!({ "layer": "plan", "ids": ["f"] }))
        .await;
    assert_eq!(r["locks"][0]["client"], "tom", "{r}");
    // Nothing more about Kim: several heartbeats and lock sweeps later, still exactly one
    // leave per presence channel and one release, pushed before Tom's lock.
    let until = Instant::now() + Duration::from_secs(3);
    for (w, s) in watchers.iter_mut().zip(&mut seen) {
        while let Some((m, p)) = w
            .try_push(until.saturating_duration_since(Instant::now()))
            .await
        {
            s.note(&m, &p);
        }
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s.leaves,
            HashMap::from([("$presence/plan".to_string(), 1), ("room".to_string(), 1)]),
            "watcher on node {}",
            i + 1
        );
        assert_eq!(
            s.locks,
            [("kim".to_string(), false), ("tom".to_string(), true)],
            "watcher on node {}: one release, before the new lock",
            i + 1
        );
    }

    drop((setup, watchers, taker));
    for n in nodes {
        n.kill().await;
    }
    drop(be);
}

/// A TCP proxy between one node and NATS that the test can cut and restore.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    // Cut: the connection is closed at once.
                    drop(down);
                    continue;
                }
                k.lock().push(tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Proxy {
            addr,
            cut,
            conns,
            accept,
        }
    }

    /// Closes every connection through the proxy and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_while_a_node_is_cut_from_nats_arrive_once_in_order() {
    let be = Backends::new("proc_cut").await;
    let nats = nats_url();
    let host = nats
        .trim_start_matches("nats://")
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let upstream = tokio::net::lookup_host(host)
        .await
        .expect("NATS address")
        .next()
        .expect("NATS address");
    let proxy = Proxy::start(upstream).await;
    let direct = Node::spawn(|data| (vec!["--data-dir".into(), data.into()], be.env_only(&nats)));
    let proxied = Node::spawn(|data| {
        let env = be.env_only(&format!("nats://{}", proxy.addr));
        (vec!["--data-dir".into(), data.into()], env)
    });
    let nodes = all_ready(vec![direct, proxied]).await;

    let mut editor = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    editor
        .ok(
            "layer.create",
            json!({ "name": "fleet", "last_writer_wins": true }),
        )
        .await;
    let mut sub = Ws::connect(&nodes[1].ws_url(), Encoding::Msgpack).await;
    watch_layer(&mut sub, "fleet").await;
    let mut edit = async |n: u32| -> u64 {
        let id = format!("v{}", n % 5);
        let r = editor
            .ok(
                "feature.replace",
                json!({ "layer": "fleet", "id": id, "feature": point(&id, f64::from(n) * 0.01, 40.0, json!({ "n": n })) }),
            )
            .await;
        r["seq"].as_u64().expect("seq")
    };
    // Live through the proxy.
    let first = edit(0).await;
    let p = sub.push_of("feature").await;
    assert_eq!(p["seq"].as_u64(), Some(first));

    // Cut node 2 from NATS; node 1 goes on accepting edits.
    proxy.cut();
    let mut made = Vec::new();
    for n in 1..=20 {
        made.push(edit(n).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.restore();
    // Node 2 reconnects and catches up from the store's change log; then it is live again.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < made.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.try_push(left).await {
            Some((m, p)) if m == "feature" => got.push((
                p["seq"].as_u64().expect("seq"),
                p["properties"]["n"]
                    .as_u64()
                    .or(p["feature"]["properties"]["n"].as_u64()),
            )),
            Some(_) => {}
            None => panic!("after the reconnect: {got:?} of {made:?}"),
        }
    }
    let last = edit(21).await;
    let p = sub.push_of("feature").await;
    assert_eq!(
        p["seq"].as_u64(),
        Some(last),
        "live again after the catch-up"
    );
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        made,
        "every change made during the cut, once, in order"
    );
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        (1..=20).map(Some).collect::<Vec<_>>(),
        "with its content"
    );
    sub.expect_silence(Duration::from_millis(500)).await;
    // The cut was real: node 2 lost NATS and connected again.
    let log = nodes[1].log();
    assert!(
        log.iter()
            .any(|l| l.contains("Lost the connection to NATS")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .filter(|l| l.contains("Connected to NATS"))
            .count()
            >= 2,
        "{log:#?}"
    );

    drop((editor, sub, proxy));
    for n in nodes {
        n.kill().await;
    }
    drop(be);
}

/// Runs `geostream serve` with `env` until it exits (it must, within a minute); returns its
/// exit status and output.
async fn run_to_exit(env: &[(String, String)]) -> (std::process::ExitStatus, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        geostream(&["serve".into()], env)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the node exits by itself")
    .expect("geostream runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, plain(&text))
}

/// A loopback port where nothing listens.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reach_postgres_or_nats_exits_with_the_reason_before_listening() {
    let be = Backends::new("proc_down").await;
    let data = tempdir::Dir::new("down");
    let base = [
        be.env_only(&nats_url()),
        vars(&[("GEOSTREAM_DATA_DIR", data.path().to_str().unwrap())]),
    ]
    .concat();
    let with = |k: &str, v: String| {
        let mut env: Vec<(String, String)> = base.iter().filter(|(n, _)| n != k).cloned().collect();
        env.push((k.to_string(), v));
        env
    };

    let pg = format!(
        "postgres://postgres:secret@127.0.0.1:{}/test",
        closed_port().await
    );
    let (status, out) = run_to_exit(&with("GEOSTREAM_STORE__URL", pg)).await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("cannot open the PostgreSQL store at postgres://postgres:***@127.0.0.1:"),
        "{out}"
    );
    assert!(!out.contains("secret"), "the password is not shown: {out}");
    assert!(
        out.to_lowercase().contains("connection refused"),
        "the reason is given: {out}"
    );
    assert!(!out.contains("listening"), "{out}");

    let nats = format!("nats://127.0.0.1:{}", closed_port().await);
    let (status, out) = run_to_exit(&with("GEOSTREAM_BROKER__URL", nats.clone())).await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("cannot connect to the broker") && out.contains(&nats),
        "{out}"
    );
    assert!(!out.contains("listening"), "{out}");

    drop(be);
}

/// Sends `signal` (`STOP`, `CONT`) to `node`'s process, by its PID.
async fn signal(node: &Node, signal: &str) {
    let pid = node.child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_taken_for_dead_that_comes_back_resurrects_nothing_and_kills_nothing() {
    const GRACE_MS: u64 = 1000;
    let be = Backends::new("proc_pause").await;
    let env = [
        be.env_only(&nats_url()),
        vars(&[("GEOSTREAM_LAYERS__LOCK_GRACE_MS", &GRACE_MS.to_string())]),
    ]
    .concat();
    let nodes = from_env(3, &env).await;
    let mut setup = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    setup.ok("layer.create", json!({ "name": "plan" })).await;
    for id in ["f", "g"] {
        setup
            .ok(
                "feature.create",
                json!({ "layer": "plan", "feature": point(id, 1.0, 1.0, json!({})) }),
            )
            .await;
    }
    let mut watcher = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    watch_layer(&mut watcher, "plan").await;
    watcher
        .ok("presence.subscribe", json!({ "layer": "plan" }))
        .await;
    // Kim on node 3 locks f; Tom on node 2 locks g.
    let mut kim = Ws::connect(&nodes[2].ws_url(), Encoding::Json).await;
    kim.ok(
        "hello",
        json!({ "client_id": "kim", "info": { "name": "Kim" } }),
    )
    .await;
    kim.ok("presence.subscribe", json!({ "layer": "plan" }))
        .await;
    kim.ok("feature.lock", json!({ "layer": "plan", "ids": ["f"] }))
        .await;
    let mut tom = Ws::connect(&nodes[1].ws_url(), Encoding::Json).await;
    tom.ok("hello", json!({ "client_id": "tom" })).await;
    tom.ok("feature.lock", json!({ "layer": "plan", "ids": ["g"] }))
        .await;

    let mut held = 0;
    while held < 2 {
        let (m, p) = watcher.push().await;
        if m == "lock" && p["locked"] == true {
            held += 1;
        }
    }
    // Node 3 freezes long enough to be taken for dead and for Kim's lock to be released.
    signal(&nodes[2], "STOP").await;
    // Lock pushes from now on: (client, feature, locked).
    let mut locks = Vec::new();
    let mut note = |m: &str, p: &Value| {
        if m == "lock" {
            locks.push((p["client"].clone(), p["id"].clone(), p["locked"].clone()));
        }
    };
    loop {
        let (m, p) = watcher.push().await;
        note(&m, &p);
        if m == "lock" && p["client"] == "kim" && p["locked"] == false {
            break;
        }
    }
    // Someone else takes f meanwhile.
    let mut ann = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    ann.ok("hello", json!({ "client_id": "ann" })).await;
    ann.ok("feature.lock", json!({ "layer": "plan", "ids": ["f"] }))
        .await;
    // Node 3 comes back: Kim is present again, but her lock is not, and the locks of the
    // living (Tom's on node 2, Ann's on node 1) are left alone.
    signal(&nodes[2], "CONT").await;
    loop {
        let (m, p) = watcher.push().await;
        note(&m, &p);
        if m == "join" && p["client"]["info"]["name"] == "Kim" {
            break;
        }
    }
    let e = kim
        .call(
            "feature.patch",
            json!({ "layer": "plan", "id": "f", "version": 1, "properties": { "by": "kim" } }),
        )
        .await
        .expect_err("f is Ann's now");
    assert_eq!(e.code, ErrorCode::Locked, "{e}");
    // Longer than the grace after the comeback: nobody's lock was released.
    let until = Instant::now() + Duration::from_millis(GRACE_MS * 3);
    while let Some((m, p)) = watcher
        .try_push(until.saturating_duration_since(Instant::now()))
        .await
    {
        note(&m, &p);
    }
    assert_eq!(
        locks,
        [
            (json!("kim"), json!("f"), json!(false)),
            (json!("ann"), json!("f"), json!(true))
        ],
        "only Kim's lock ended, and it stayed ended"
    );
    for (who, ws) in [("tom", &mut tom), ("ann", &mut ann)] {
        let id = if who == "tom" { "g" } else { "f" };
        ws.ok(
            "feature.patch",
            json!({ "layer": "plan", "id": id, "version": 1, "properties": { "by": who } }),
        )
        .await;
    }

    drop((setup, watcher, kim, tom, ann));
    for n in nodes {
        n.kill().await;
    }
    drop(be);
}

/// The owner of `layer`: writes through each of `nodes` until one round of them was served
/// by one node (the others' writes) and written by that node itself, which is when every
/// node's membership names the same owner. The count of its served writes too.
async fn owner_of(nodes: &[Node], layer: &str) -> (usize, f64) {
    let served = async || {
        let mut v = Vec::new();
        for n in nodes {
            v.push(common::metric(n.addr, "geostream_writes_served_total").await);
        }
        v
    };
    for round in 0..20 {
        let before = served().await;
        for (k, n) in nodes.iter().enumerate() {
            let mut ws = Ws::connect(&n.ws_url(), Encoding::Json).await;
            let id = format!("probe-{round}-{k}");
            ws.ok(
                "feature.create",
                json!({ "layer": layer, "feature": point(&id, 0.0, 0.0, json!({})) }),
            )
            .await;
        }
        let after = served().await;
        let grew: Vec<usize> = (0..nodes.len()).filter(|&k| after[k] > before[k]).collect();
        if let [owner] = grew[..]
            && after[owner] - before[owner] == (nodes.len() - 1) as f64
        {
            return (owner, after[owner]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the nodes never agreed on the owner of {layer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_forwarded_to_a_frozen_owner_is_applied_once() {
    // Three beats of 1 s: the owner is taken for dead 3 s after it froze, long after the
    // write below was forwarded to it.
    let be = Backends::new("proc_frozen").await;
    let env: Vec<(String, String)> = be
        .env_only(&nats_url())
        .into_iter()
        .filter(|(k, _)| k != "GEOSTREAM_BROKER__HEARTBEAT_MS")
        .chain(vars(&[("GEOSTREAM_BROKER__HEARTBEAT_MS", "1000")]))
        .collect();
    let nodes = from_env(3, &env).await;
    let mut setup = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    setup
        .ok(
            "layer.create",
            json!({ "name": "tally", "last_writer_wins": true }),
        )
        .await;
    let (owner, _) = owner_of(&nodes, "tally").await;
    // By default one node owns every layer's writes.
    for other in ["tally-2", "tally-3"] {
        setup.ok("layer.create", json!({ "name": other })).await;
        assert_eq!(owner_of(&nodes, other).await.0, owner, "{other}");
    }
    let served = common::metric(nodes[owner].addr, "geostream_writes_served_total").await;
    let writer = (owner + 1) % 3;
    let mut ws = Ws::connect(&nodes[writer].ws_url(), Encoding::Json).await;
    let r = ws
        .ok(
            "feature.create",
            json!({ "layer": "tally", "feature": point("t", 1.0, 1.0, json!({})) }),
        )
        .await;
    assert_eq!(r["version"], 1);
    let seq = r["seq"].as_u64().expect("seq");

    // The owner freezes with the write on its socket: the sender gets no answer, writes it
    // itself, and the client has its acknowledgement. No op id from the client: the sender
    // made one up.
    signal(&nodes[owner], "STOP").await;
    let started = Instant::now();
    let r = ws
        .ok(
            "feature.patch",
            json!({ "layer": "tally", "id": "t", "properties": { "n": 1 } }),
        )
        .await;
    assert_eq!(r["version"], 2, "{r}");
    assert!(r.get("replayed").is_none_or(|v| v == false), "{r}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for the owner"
    );
    let series = "geostream_writes_forwarded_total{result=\"no_answer\"}";
    assert_eq!(common::metric(nodes[writer].addr, series).await, 1.0);

    // Thawed, the owner reads the same write and finds it applied: nothing changes twice.
    signal(&nodes[owner], "CONT").await;
    let until = Instant::now() + Duration::from_secs(20);
    // The probes, the create, and now the patch.
    while common::metric(nodes[owner].addr, "geostream_writes_served_total").await < served + 2.0 {
        assert!(Instant::now() < until, "the thawed owner read the write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let f = setup
        .ok("feature.get", json!({ "layer": "tally", "id": "t" }))
        .await["feature"]
        .clone();
    assert_eq!(f["version"], 2, "applied once: {f}");
    assert_eq!(f["properties"]["n"], 1);
    let layer = setup.ok("layer.get", json!({ "name": "tally" })).await;
    assert_eq!(layer["seq"], seq + 1, "one patch after the create");

    drop((setup, ws));
    for n in nodes {
        n.kill().await;
    }
    drop(be);
}

/// Which node evaluates the geofences, from each node's `/metrics`.
async fn evaluators(nodes: &[&Node]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (_, _, body) = common::http(n.addr, "GET", "/metrics", &[], None).await;
        if String::from_utf8_lossy(&body)
            .lines()
            .any(|l| l == "geostream_fence_evaluator 1")
        {
            out.push(i);
        }
    }
    out
}

/// Waits until exactly one of `nodes` evaluates and has evaluated `layer_seq` changes of
/// the fence's layer; returns its index.
async fn fence_caught_up(nodes: &[&Node], fence: &str, layer_seq: u64) -> usize {
    let start = Instant::now();
    loop {
        let ev = evaluators(nodes).await;
        if let [i] = ev[..] {
            let (status, v) = http_json(
                nodes[i].addr,
                "GET",
                &format!("/v1/geofences/{fence}"),
                None,
            )
            .await;
            if status == 200
                && v["status"]["loaded"] == true
                && v["status"]["evaluated_seq"].as_u64() >= Some(layer_seq)
            {
                return i;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no node evaluated fence {fence} up to {layer_seq} (evaluators: {ev:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn geofence_events_are_produced_once_across_nodes_and_a_killed_evaluator() {
    let be = Backends::new("proc_fence").await;
    let env = [
        be.env_only(&nats_url()),
        vars(&[("GEOSTREAM_GEOFENCES__LEASE_MS", "2000")]),
    ]
    .concat();
    let starting = (0..3)
        .map(|_| {
            Node::spawn(|data| {
                let env = [env.clone(), vars(&[("GEOSTREAM_DATA_DIR", data)])].concat();
                (Vec::new(), env)
            })
        })
        .collect();
    let mut nodes = all_ready(starting).await;
    let mut admin = Ws::connect(&nodes[0].ws_url(), Encoding::Json).await;
    admin
        .ok(
            "layer.create",
            json!({"name": "boats", "last_writer_wins": true}),
        )
        .await;

    // The fence is created with the CLI through node 2, from a file, as an operator would.
    let dir = tempdir::Dir::new("fence-def");
    let file = dir.path().join("harbor.json");
    std::fs::write(
        &file,
        r#"{"name": "harbor", "layer": "boats", "area": {"bbox": [0, 0, 1, 1]},
            "detect": ["enter", "exit", "inside"]}"#,
    )
    .unwrap();
    let cli = |args: Vec<String>| geostream(&args, &[]).output();
    let out = cli(vec![
        "fence".into(),
        "--server".into(),
        nodes[1].addr.to_string(),
        "create".into(),
        file.to_str().unwrap().into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["channel"], "fence:harbor");
    let out = cli(vec![
        "fence".into(),
        "list".into(),
        "--server".into(),
        nodes[2].addr.to_string(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("\"name\":\"harbor\""), "{listed}");

    let all: Vec<&Node> = nodes.iter().collect();
    let evaluator = fence_caught_up(&all, "harbor", 0).await;
    // Boats write through the other two nodes, each boat its own steps in order, all boats
    // at once; midway the evaluating node is killed.
    const BOATS: usize = 12;
    const STEPS: u64 = 40;
    let writers: Vec<String> = (0..3)
        .filter(|i| *i != evaluator)
        .map(|i| nodes[i].ws_url())
        .collect();
    let half = Arc::new(tokio::sync::Barrier::new(BOATS + 1));
    let mut tasks = Vec::new();
    for b in 0..BOATS {
        let url = writers[b % writers.len()].clone();
        let half = half.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = Ws::connect(&url, Encoding::Json).await;
            for k in 0..STEPS {
                if k == STEPS / 2 {
                    half.wait().await;
                }
                let x = -0.5 + k as f64 * 0.05;
                let id = format!("b{b:02}");
                ws.ok(
                    "feature.replace",
                    json!({"layer": "boats", "id": id,
                        "feature": point(&id, x, 0.1 + b as f64 * 0.05, json!({}))}),
                )
                .await;
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), half.wait())
        .await
        .expect("the boats wrote half their steps");
    // Half the steps are acknowledged; kill the evaluator while the rest stream in.
    let killed = nodes.remove(evaluator);
    tokio::time::sleep(Duration::from_millis(150)).await;
    killed.kill().await;
    for t in tasks {
        t.await.unwrap();
    }
    let survivors: Vec<&Node> = nodes.iter().collect();
    let total = BOATS as u64 * STEPS;
    let now = fence_caught_up(&survivors, "harbor", total).await;

    // The channel (JetStream history, read on a survivor) against the oracle: per boat,
    // enter at x = 0, inside up to x = 1, exit after; every key once.
    let (status, page) = http_json(
        survivors[now].addr,
        "GET",
        "/v1/channels/fence:harbor/messages?limit=1000",
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let events: Vec<Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    let mut keys = std::collections::HashSet::new();
    for e in &events {
        assert!(
            keys.insert(e["key"].as_str().unwrap().to_owned()),
            "twice: {e}"
        );
    }
    for b in 0..BOATS {
        let id = format!("b{b:02}");
        let got: Vec<(String, u64)> = events
            .iter()
            .filter(|e| e["id"] == id.as_str())
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().into(),
                    e["version"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut want = Vec::new();
        let mut was = false;
        for k in 0..STEPS {
            let x = -0.5 + k as f64 * 0.05;
            let is = (0.0..=1.0).contains(&x);
            let kind = match (was, is) {
                (false, true) => "enter",
                (true, true) => "inside",
                (true, false) => "exit",
                (false, false) => {
                    was = is;
                    continue;
                }
            };
            want.push((kind.to_string(), k + 1));
            was = is;
        }
        assert_eq!(got, want, "boat {id}");
    }
    assert_eq!(events.len(), BOATS * 22);
    let (_, _, metrics) = common::http(survivors[now].addr, "GET", "/metrics", &[], None).await;
    let skipped = String::from_utf8_lossy(&metrics)
        .lines()
        .find(|l| l.starts_with("geostream_fence_events_skipped_total "))
        .map(str::to_owned);
    eprintln!("after the takeover: {skipped:?}");
    drop(nodes);
    drop(be);
}
