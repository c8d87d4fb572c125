//! HTTP surface fuzzing: hostile but plausible requests from property-based generators against
//! a real `geostream serve` process (SQLite store, loopback, anonymous full access).
//!
//! Each test starts its own process from a config file, seeds two layers and a raster tile,
//! then runs a few hundred generated cases against one group of routes:
//!
//! - OGC API - Features `items` queries (bbox, datetime, filter / filter-lang, limit, offset,
//!   unknown parameters, percent-encoding tricks);
//! - feature reads and writes (GET / POST / PUT / PATCH / DELETE with random bodies,
//!   content types and `If-Match` / `Idempotency-Key` / `Geostream-Client-Id` headers);
//! - tile paths (`/v1/tiles/...`: zoom and coordinates out of range, overflow, extensions,
//!   uploads);
//! - SSE query strings (channels, `since`, `Last-Event-ID`, presence);
//! - channel publish / history / presence;
//! - geofence create / list / get / delete with generated definitions;
//! - any method on any route (so every route's refusals are seen).
//!
//! For every response: no 5xx, the status is one the route documents (docs/PROTOCOL.md; the
//! sets are written next to each group), and every 4xx has the JSON error body
//! `{"error": {"code", "name", "message"}}` whose code belongs to the status. At the end the
//! process still runs, its log has no panic, a normal request still works, and the layers hold
//! exactly the seeded features plus the edits the server acknowledged (tracked as they are
//! answered), nothing else.
//!
//! Bounded and deterministic: a fixed seed (proptest's ChaCha RNG), a few hundred cases per
//! test, every request with a time limit. `cargo nextest run -p geostream-server --test
//! http_fuzz`.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::tempdir;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};
use serde_json::{Value, json};

/// How long one request may take before the test calls it a hang.
const REQUEST_TIME: Duration = Duration::from_secs(10);

/// The vector layer that requires versions (edits need `If-Match`).
const LAYER: &str = "fz";
/// The last-writer-wins vector layer (edits without `If-Match` are accepted).
const LWW: &str = "fzlww";
/// The upload-only raster layer.
const RASTER: &str = "sat";

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// A `geostream serve` process and everything it wrote to stderr / stdout.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempdir::Dir,
}

impl Server {
    /// Starts the binary from a config file in a fresh directory: port 0, SQLite in the data
    /// directory, an upload-only PNG raster layer, the demo replay off (it would write to a
    /// layer while the fuzzer reads).
    fn start() -> Server {
        let dir = tempdir::Dir::new("http-fuzz");
        let data = dir.path().join("data");
        let config = dir.path().join("geostream.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
data_dir = {data:?}

[log]
level = "warn"

[store]
type = "sqlite"

[web]
ships_speed = 0.0

[[tiles.raster]]
name = "{RASTER}"
format = "png"
"#
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_geostream"));
        // Configured by the file only, whatever the environment of the test run says.
        for (k, _) in std::env::vars() {
            if k.starts_with("GEOSTREAM_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start geostream");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        keep_lines(child.stderr.take().unwrap(), log.clone(), Some(tx));
        keep_lines(child.stdout.take().unwrap(), log.clone(), None);
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "geostream did not say where it listens; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// The last lines of the log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(40);
        log[from..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps every line of `out` in `log`; sends the address of the "listening on" line.
fn keep_lines(
    out: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    mut addr: Option<std::sync::mpsc::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let s = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Some(rest) = s.split("listening on http://").nth(1)
                && let Some(a) = rest.split_whitespace().next()
                && let Some(tx) = addr.take()
            {
                let _ = tx.send(a.parse().expect("the address it listens on"));
            }
            log.lock().unwrap().push(s);
            line.clear();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Requests and the checks every response gets
// ---------------------------------------------------------------------------------------------

/// A request as generated: everything may be hostile except what the HTTP client itself
/// refuses to send (the target must be a valid URI, header values visible bytes).
#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &str, target: impl Into<String>) -> Req {
        Req {
            method: method.to_string(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, k: &str, v: impl Into<Vec<u8>>) -> Req {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    fn body(mut self, b: impl Into<Vec<u8>>) -> Req {
        self.body = b.into();
        self
    }
}

/// Short form of a request for failure messages (bodies can be a megabyte).
fn describe(r: &Req) -> String {
    let body = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).to_string();
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
        .collect();
    let target: String = r.target.chars().take(400).collect();
    format!(
        "{} {target} {headers:?} body ({} bytes) {body:?}",
        r.method,
        r.body.len()
    )
}

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Bodies above this go through [`send_large`].
const LARGE_BODY: usize = 1 << 20;

/// Sends a request with a large body over a plain socket, reading while writing. A server
/// may refuse such a body before reading it (too large, or the route refuses whatever the
/// body) and close the connection (RFC 9112 9.6); hyper's client then reports the failed
/// write instead of the answer, which has arrived.
async fn send_large(addr: SocketAddr, r: &Req) -> Result<Resp, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n",
        r.method,
        r.target,
        r.body.len()
    )
    .into_bytes();
    for (k, v) in &r.headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let body = r.body.clone();
    // Write errors are expected once the server has answered and closed. No half-close
    // after the body: hyper's server drops a pending answer when the client half-closes.
    let writer = tokio::spawn(async move {
        if wr.write_all(&head).await.is_ok() {
            let _ = wr.write_all(&body).await;
        }
        wr
    });
    // Not `Connection: close`: a server that closes right after refusing a body it did not
    // read makes the kernel reset the connection, which can drop the answer in flight. On a
    // connection kept alive, hyper's server reads the rest of the body away instead; the
    // answer is complete at its Content-Length.
    let mut buf = Vec::new();
    let complete = |buf: &[u8]| -> bool {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        buf.len() >= end + 4 + len
    };
    let read = tokio::time::timeout(REQUEST_TIME, async {
        let mut chunk = vec![0u8; 64 * 1024];
        while !complete(&buf) {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    read.map_err(|_| format!("no response within {REQUEST_TIME:?} (a hang)"))?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head: {:?}", String::from_utf8_lossy(&buf)))?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    Ok(Resp {
        status,
        headers,
        body: Bytes::copy_from_slice(&buf[end + 4..]),
    })
}

/// Sends `r` on a new connection. For a 200 `text/event-stream` answer, reads until the first
/// event has arrived (the stream never ends by itself) and closes the connection.
async fn send(addr: SocketAddr, r: &Req) -> Result<Resp, String> {
    if r.body.len() > LARGE_BODY {
        return send_large(addr, r).await;
    }
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut b = http::Request::builder()
        .method(r.method.as_bytes())
        .uri(&r.target)
        .header("host", addr.to_string());
    for (k, v) in &r.headers {
        b = b.header(
            k.as_str(),
            http::HeaderValue::from_bytes(v).expect("a sendable value"),
        );
    }
    let req = b
        .body(http_body_util::Full::new(Bytes::from(r.body.clone())))
        .map_err(|e| format!("the test built an unsendable request: {e}"))?;
    let resp = tokio::time::timeout(REQUEST_TIME, sender.send_request(req))
        .await
        .map_err(|_| format!("no response within {REQUEST_TIME:?} (a hang)"))?
        .map_err(|e| format!("no response (the connection failed: {e})"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let sse = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    loop {
        let frame = tokio::time::timeout(REQUEST_TIME, body.frame())
            .await
            .map_err(|_| format!("the body did not arrive within {REQUEST_TIME:?}"))?;
        match frame {
            None => break,
            Some(Err(e)) => return Err(format!("the body failed: {e}")),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    bytes.extend_from_slice(&d);
                }
            }
        }
        // An open stream: the first event is enough (the subscribe results come first).
        if sse && status == 200 && bytes.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(Resp {
        status,
        headers,
        body: Bytes::from(bytes),
    })
}

/// The statuses an error code may be answered with (docs/PROTOCOL.md, "HTTP" and "Error
/// codes": the status follows the code; `conflict` is 412 / 428 for `If-Match`; 415 is
/// `invalid_request`; a full server is 503 `limit_exceeded`).
fn statuses_of_code(name: &str) -> &'static [u16] {
    match name {
        "parse_error" | "invalid_params" | "invalid_feature" | "invalid_filter"
        | "request_cancelled" => &[400],
        "invalid_request" => &[400, 415],
        "method_not_found" => &[404, 405],
        "layer_not_found" | "feature_not_found" | "tile_not_found" | "unknown_subscription" => {
            &[404]
        }
        "unauthorized" => &[401],
        "forbidden" => &[403],
        "rate_limited" => &[429],
        "limit_exceeded" => &[413, 503],
        "conflict" => &[409, 412, 428],
        "layer_exists" => &[409],
        "locked" => &[423],
        "fence_not_found" => &[404],
        "fence_exists" => &[409],
        _ => &[],
    }
}

/// The checks every response gets: a status of `allowed` (never a 5xx), and for a 4xx the
/// JSON error body with a code that belongs to the status.
fn check(req: &Req, resp: &Resp, allowed: &[u16]) -> Result<(), TestCaseError> {
    let ctx = || {
        format!(
            "request: {}\nresponse: {} {:?} {}",
            describe(req),
            resp.status,
            resp.headers,
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(500)])
        )
    };
    if resp.status >= 500 {
        return Err(TestCaseError::fail(format!("a 5xx\n{}", ctx())));
    }
    if !allowed.contains(&resp.status) {
        return Err(TestCaseError::fail(format!(
            "status {} is not one this route documents ({allowed:?})\n{}",
            resp.status,
            ctx()
        )));
    }
    // A HEAD answer has no body by definition. The demo page's static files (`/web/...`)
    // are not the API: a missing one is a plain 404, as from any file server.
    let api = !req.target.starts_with("/web/");
    if resp.status == 405 && !resp.headers.contains_key("allow") {
        return Err(TestCaseError::fail(format!(
            "a 405 without Allow\n{}",
            ctx()
        )));
    }
    if (400..500).contains(&resp.status) && req.method != "HEAD" && api {
        let ct = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(TestCaseError::fail(format!(
                "a 4xx whose body is not JSON (Content-Type {ct:?})\n{}",
                ctx()
            )));
        }
        let v = resp.json().ok_or_else(|| {
            TestCaseError::fail(format!("a 4xx whose body does not parse\n{}", ctx()))
        })?;
        let e = &v["error"];
        let (Some(_), Some(name), Some(_)) = (
            e["code"].as_i64(),
            e["name"].as_str(),
            e["message"].as_str(),
        ) else {
            return Err(TestCaseError::fail(format!(
                "a 4xx without {{\"error\": {{\"code\", \"name\", \"message\"}}}}\n{}",
                ctx()
            )));
        };
        if !statuses_of_code(name).contains(&resp.status) {
            return Err(TestCaseError::fail(format!(
                "error {name:?} answered with status {}\n{}",
                resp.status,
                ctx()
            )));
        }
    }
    Ok(())
}

/// Whether a generated request passes a token (`access_token`): there is no key configured,
/// so any token is refused with 401, which every route documents.
fn has_token(r: &Req) -> bool {
    r.target.contains("access_token")
}

// ---------------------------------------------------------------------------------------------
// The fuzzing harness: a server, seeded state, the edits it acknowledged
// ---------------------------------------------------------------------------------------------

/// What a layer should hold: id -> the feature as last acknowledged (without `updated` and
/// `links`), or absent once deleted.
type Expected = BTreeMap<(String, String), Value>;

struct Fuzz {
    srv: Server,
    rt: tokio::runtime::Runtime,
    expected: RefCell<Expected>,
    /// Responses by status in the current group, to show what the cases reached and to
    /// fail a group whose generator no longer reaches both answers and refusals.
    statuses: RefCell<BTreeMap<u16, u32>>,
}

fn point(id: &str, x: f64, y: f64, props: Value) -> Value {
    json!({ "type": "Feature", "id": id, "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": props })
}

/// The features every test starts with, in both vector layers.
fn seed_features() -> Vec<Value> {
    vec![
        point(
            "a",
            -74.0,
            40.6,
            json!({ "name": "Ada", "speed": 3, "datetime": "2020-06-30T00:10:00Z" }),
        ),
        json!({ "type": "Feature", "id": "b", "geometry": { "type": "Polygon", "coordinates":
            [[[10.0, 50.0], [11.0, 50.0], [11.0, 51.0], [10.0, 51.0], [10.0, 50.0]]] },
            "properties": { "name": "field", "crop": "wheat", "start_datetime": "2020-01-01T00:00:00Z",
                "end_datetime": "2020-12-31T00:00:00Z" } }),
        json!({ "type": "Feature", "id": "c", "geometry": { "type": "LineString", "coordinates":
            [[179.5, -10.0], [-179.5, -10.5]] }, "properties": { "speed": 12.5, "tags": ["x", "y"] } }),
        json!({ "type": "Feature", "id": "d", "geometry": null, "properties": {} }),
    ]
}

/// A feature as stored, for comparing: the server's fields that change by themselves
/// (`updated`) and the links of an OGC answer are dropped.
fn comparable(f: &Value) -> Value {
    let mut f = f.clone();
    if let Some(o) = f.as_object_mut() {
        o.remove("updated");
        o.remove("links");
    }
    f
}

impl Fuzz {
    fn start() -> Fuzz {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let srv = Server::start();
        let fuzz = Fuzz {
            srv,
            rt,
            expected: RefCell::new(BTreeMap::new()),
            statuses: RefCell::new(BTreeMap::new()),
        };
        fuzz.seed();
        fuzz
    }

    fn addr(&self) -> SocketAddr {
        self.srv.addr
    }

    /// Creates the layers over WebSocket (there is no HTTP route for it), the features over
    /// the OGC API, and one raster tile.
    fn seed(&self) {
        let addr = self.addr();
        let expected = self.rt.block_on(async move {
            let mut ws = common::Ws::connect(
                &format!("ws://{addr}/v1/ws"),
                geostream_core::codec::Encoding::Json,
            )
            .await;
            ws.ok("layer.create", json!({ "name": LAYER })).await;
            ws.ok(
                "layer.create",
                json!({ "name": LWW, "last_writer_wins": true }),
            )
            .await;
            let mut expected = Expected::new();
            for layer in [LAYER, LWW] {
                for f in seed_features() {
                    let r = Req::new("POST", format!("/collections/{layer}/items"))
                        .header("content-type", "application/geo+json")
                        .body(serde_json::to_vec(&f).unwrap());
                    let resp = send(addr, &r).await.unwrap();
                    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
                    let got = comparable(&resp.json().unwrap());
                    let id = got["id"].as_str().unwrap().to_string();
                    expected.insert((layer.to_string(), id), got);
                }
            }
            let tile = Req::new("PUT", format!("/v1/tiles/{RASTER}/3/1/2"))
                .body(png_bytes(b"seed".to_vec()));
            let resp = send(addr, &tile).await.unwrap();
            assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
            expected
        });
        *self.expected.borrow_mut() = expected;
    }

    /// Runs `cases` generated cases of `strategy` through `case`, each inside the runtime.
    fn run<S, F, Fut>(&self, name: &str, cases: u32, strategy: S, case: F)
    where
        S: Strategy,
        S::Value: std::fmt::Debug,
        F: Fn(S::Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), TestCaseError>>,
    {
        // PROPTEST_CASES runs every group longer, to explore beyond the fixed cases.
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases);
        let config = ProptestConfig {
            cases,
            // Cases go to a live server: no files of past failures in the source tree, and
            // a bounded shrink (each step is a request).
            failure_persistence: None,
            max_shrink_iters: 256,
            max_global_rejects: cases * 4,
            ..ProptestConfig::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        self.statuses.borrow_mut().clear();
        let result = runner.run(&strategy, |v| self.rt.block_on(case(v)));
        match result {
            Ok(()) => {
                let statuses = self.statuses.borrow();
                eprintln!("{name}: {cases} cases, responses by status: {statuses:?}");
                let ok = statuses.range(200..300).map(|(_, n)| n).sum::<u32>();
                let refused = statuses.range(400..500).map(|(_, n)| n).sum::<u32>();
                assert!(
                    ok > 0 && refused > 0,
                    "{name}: the cases reach both answers and refusals: {statuses:?}"
                );
            }
            Err(TestError::Fail(why, input)) => panic!(
                "{name}: {why}\nminimal input: {input:#?}\nserver log (last lines):\n{}",
                self.srv.log_tail()
            ),
            Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
        }
    }

    /// Sends `r` and checks the response against `allowed` (plus 401 when a token is given).
    async fn exchange(&self, r: &Req, allowed: &[u16]) -> Result<Resp, TestCaseError> {
        // The client's limit on a request target (http::Uri holds at most 64 KiB).
        if r.target.len() > 60_000 {
            return Err(TestCaseError::reject(
                "a target too long for the HTTP client",
            ));
        }
        let resp = send(self.addr(), r).await.map_err(|e| {
            TestCaseError::fail(format!(
                "{e}\nrequest: {}\nserver log:\n{}",
                describe(r),
                self.srv.log_tail()
            ))
        })?;
        let mut allowed = allowed.to_vec();
        if has_token(r) {
            allowed.push(401);
        }
        // A repeated Idempotency-Key is answered with the first write's own answer (201,
        // 200 or 204, marked), whatever this request's method (PROTOCOL.md "HTTP: OGC API").
        if resp.headers.contains_key("idempotent-replayed") {
            allowed.extend([200, 201, 204]);
        }
        check(r, &resp, &allowed)?;
        *self.statuses.borrow_mut().entry(resp.status).or_default() += 1;
        Ok(resp)
    }

    /// Records what an acknowledged feature write means for the layer's contents.
    fn record_write(&self, layer: &str, id_in_path: Option<&str>, r: &Req, resp: &Resp) {
        let writes = matches!(r.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
        if !writes || !(200..300).contains(&resp.status) || (layer != LAYER && layer != LWW) {
            return;
        }
        // A replayed answer is the original result of that key, not the current state.
        if resp.headers.contains_key("idempotent-replayed") {
            return;
        }
        let mut expected = self.expected.borrow_mut();
        if r.method == "DELETE" {
            let id = id_in_path.expect("DELETE names its feature");
            expected.remove(&(layer.to_string(), decode(id)));
            return;
        }
        let f = comparable(&resp.json().expect("a write answers with the feature"));
        let id = f["id"].as_str().expect("the feature has an id").to_string();
        expected.insert((layer.to_string(), id), f);
    }

    /// The end of every test: the process runs, its log has no panic, a normal request
    /// works, and both layers hold exactly what the acknowledgements say.
    fn finish(self) {
        let addr = self.addr();
        let Fuzz {
            mut srv,
            rt,
            expected,
            ..
        } = self;
        assert!(
            srv.child.try_wait().unwrap().is_none(),
            "the server exited; its log:\n{}",
            srv.log_tail()
        );
        rt.block_on(async {
            let health = send(addr, &Req::new("GET", "/healthz")).await.unwrap();
            assert_eq!(health.status, 200);
            for layer in [LAYER, LWW] {
                let r = Req::new("GET", format!("/collections/{layer}/items?limit=10000"));
                let resp = send(addr, &r).await.unwrap();
                assert_eq!(resp.status, 200);
                let got: BTreeMap<String, Value> = resp.json().unwrap()["features"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| (f["id"].as_str().unwrap().to_string(), comparable(f)))
                    .collect();
                let want: BTreeMap<String, Value> = expected
                    .borrow()
                    .iter()
                    .filter(|((l, _), _)| l == layer)
                    .map(|((_, id), f)| (id.clone(), f.clone()))
                    .collect();
                eprintln!(
                    "{layer}: {} features at the end, as acknowledged",
                    want.len()
                );
                let got_ids: BTreeSet<&String> = got.keys().collect();
                let want_ids: BTreeSet<&String> = want.keys().collect();
                assert_eq!(got_ids, want_ids, "the features of {layer}");
                for (id, f) in &want {
                    assert_eq!(&got[id], f, "feature {id:?} of {layer}");
                }
            }
        });
        // The panic hook's message reaches stderr even when the task's panic is caught.
        let log = srv.log.lock().unwrap().join("\n");
        assert!(
            !log.contains("panicked") && !log.to_lowercase().contains("panic"),
            "the server log mentions a panic:\n{log}"
        );
        let _ = srv.child.kill();
    }
}

/// Percent-decodes a path segment (as the server does) for the expected-state keys.
fn decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit) {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for path segments.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs, form-encoded, with the raw tricks appended unencoded.
fn query(pairs: &[(String, String)], raw: &[String]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    let mut q = s.finish();
    for r in raw {
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(r);
    }
    q
}

fn png_bytes(mut rest: Vec<u8>) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.append(&mut rest);
    b
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Strings a URL may carry percent-encoded: ASCII, control characters, non-ASCII, long runs.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,24}",
        1 => "\\PC{0,12}",
        1 => "[\\x00-\\x1f\\x7f]{1,4}",
        1 => (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Percent-encoding tricks that are valid in a URI but not as UTF-8 or as escapes.
fn raw_trick() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "%",
        "%2",
        "%zz",
        "%00",
        "%FF",
        "%C3%28",
        "%E2%82",
        "%2F",
        "%252F",
        "+",
        "%20",
        "=",
        "&&",
        "a=%",
        "bbox=%FF",
        "filter=%80",
        "limit=%00",
        "==",
        "%3D%3D",
        "x%00=1",
    ])
    .prop_map(str::to_string)
}

/// Numbers as query text: finite, huge, non-finite, malformed.
fn num_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (-200.0f64..200.0).prop_map(|f| format!("{f}")),
        2 => (-200i32..200).prop_map(|i| i.to_string()),
        2 => prop::sample::select(vec![
            "NaN", "nan", "inf", "-inf", "Infinity", "-Infinity", "1e308", "-1e308", "1e400",
            "-0", "0x10", "", " ", "1,5", "abc", "1e", "--1", "+1", "1.5.5", "\u{661}",
            "180.0000000000001", "-90.00000000000001", "4.9e-324",
        ])
        .prop_map(str::to_string),
    ]
}

/// Values of `bbox`: 0 to 7 numbers, with commas or other separators.
fn bbox_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(num_text(), 0..8),
        prop::sample::select(vec![",", ",", ",", ", ", ";", " ", ",,"]),
    )
        .prop_map(|(nums, sep)| nums.join(sep))
}

/// RFC 3339 instants, valid or nearly so.
fn instant() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u32..10000, 0u32..14, 0u32..33, 0u32..26, 0u32..62, 0u32..62).prop_map(
            |(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        ),
        2 => prop::sample::select(vec![
            "2020-06-30T00:10:00Z", "2020-06-30", "2020-06-30T00:10:00.123456789Z",
            "2020-06-30T00:10:00+25:00", "2020-06-30T00:10:00-00:00", "2020-02-30T00:00:00Z",
            "2020-06-30T23:59:60Z", "0000-01-01T00:00:00Z", "99999-01-01T00:00:00Z",
            "2020-06-30 00:10:00", "2020-06-30T00:10Z", "2020-06-30t00:10:00z", "..", "",
            "now", "2020-06-30T00:10:00.Z", "2020-06-30T00:10:00+0100", "\u{ff12}020-01-01",
        ])
        .prop_map(str::to_string),
        1 => "[0-9TZ:.+\\-]{0,30}",
    ]
}

fn datetime_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => instant(),
        3 => (instant(), instant()).prop_map(|(a, b)| format!("{a}/{b}")),
        1 => (instant(), instant(), instant()).prop_map(|(a, b, c)| format!("{a}/{b}/{c}")),
        1 => any_text(),
    ]
}

/// A CQL2 literal, well-formed or not.
fn cql_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        num_text(),
        "'[ -&(-~]{0,10}'".prop_map(|s| s),
        prop::sample::select(vec![
            "'unterminated",
            "''''",
            "TRUE",
            "false",
            "NULL",
            "DATE('2020-01-01')",
            "TIMESTAMP('2020-06-30T00:10:00Z')",
            "TIMESTAMP('bad')",
            "(1, 2, 3)",
            "()",
            "99999999999999999999999",
            "1e999",
            "-",
            "'\u{1F600}'",
        ])
        .prop_map(str::to_string),
    ]
}

fn cql_leaf() -> impl Strategy<Value = String> {
    let prop_name = prop::sample::select(vec![
        "name",
        "speed",
        "crop",
        "missing",
        "datetime",
        "tags",
        "\"quoted prop\"",
        "geometry",
        "id",
        "_",
        "1a",
        "",
    ]);
    let op = prop::sample::select(vec![
        "=", "<>", "<", "<=", ">", ">=", "LIKE", "NOT LIKE", "==", "!=", "IN", "IS", "BETWEEN",
    ]);
    prop_oneof![
        4 => (prop_name.clone(), op, cql_literal()).prop_map(|(p, o, l)| format!("{p} {o} {l}")),
        1 => (prop_name.clone(), cql_literal(), cql_literal())
            .prop_map(|(p, a, b)| format!("{p} BETWEEN {a} AND {b}")),
        1 => (prop_name.clone(), prop::collection::vec(cql_literal(), 0..4))
            .prop_map(|(p, l)| format!("{p} IN ({})", l.join(", "))),
        1 => prop_name.clone().prop_map(|p| format!("{p} IS NOT NULL")),
        1 => (prop_name, cql_literal()).prop_map(|(p, l)| format!("{p} + {l} * 2 / 0 > -{p}")),
        2 => (
            prop::sample::select(vec![
                "S_INTERSECTS", "S_WITHIN", "S_CONTAINS", "S_DISJOINT", "S_EQUALS", "S_TOUCHES",
                "S_CROSSES", "S_OVERLAPS", "T_INTERSECTS", "CASEI", "UNKNOWN_FN",
            ]),
            prop::sample::select(vec![
                "POINT(1 2)", "POINT(1e400 2)", "POINT(200 100)", "POINT()", "POINT(1)",
                "LINESTRING(0 0, 1 1)", "POLYGON((0 0, 1 0, 1 1, 0 0))", "POLYGON((0 0, 1 0))",
                "POLYGON((0 0, 1 0, 1 1, 0 1))", "BBOX(-180, -90, 180, 90)", "BBOX(1, 2)",
                "MULTIPOINT((1 2), (3 4))", "GEOMETRYCOLLECTION(POINT(1 2))", "ENVELOPE(1 2 3 4)",
                "INTERVAL('2020-01-01', '..')", "INTERVAL('..', '..')", "'text'",
            ]),
        )
            .prop_map(|(f, g)| format!("{f}(geometry, {g})")),
        1 => "[ -~]{0,30}",
    ]
}

/// CQL2 text: generated expressions, cut or corrupted, and pathological sizes.
fn cql_text() -> impl Strategy<Value = String> {
    let expr = cql_leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) AND ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
            inner.clone().prop_map(|a| format!("NOT ({a})")),
            (inner, any::<prop::sample::Index>()).prop_map(|(a, i)| {
                // Cut the expression at some character boundary.
                let cuts: Vec<usize> = a.char_indices().map(|(i, _)| i).collect();
                if cuts.is_empty() {
                    a
                } else {
                    a[..cuts[i.index(cuts.len())]].to_string()
                }
            }),
        ]
    });
    prop_oneof![
        6 => expr,
        1 => (1usize..3000).prop_map(|n| format!("{}speed = 1{}", "(".repeat(n), ")".repeat(n))),
        1 => (1usize..3000).prop_map(|n| format!("{}speed = 1", "NOT ".repeat(n))),
        1 => (1usize..3000).prop_map(|n| format!("speed = {}1", "-".repeat(n))),
        1 => (1usize..1000).prop_map(|n| vec!["speed = 1"; n].join(" AND ")),
        1 => (1usize..3000).prop_map(|n| "(".repeat(n)),
        1 => (1usize..1000).prop_map(|n| format!("name IN ({})", vec!["'a'"; n].join(","))),
    ]
}

/// Arbitrary JSON values (bounded).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "type",
            "Feature",
            "Point",
            "op",
            "args",
            "property",
            "geometry",
            "coordinates",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "type",
                    "op",
                    "args",
                    "property",
                    "geometry",
                    "coordinates",
                    "properties",
                    "id",
                    "interval",
                    "timestamp",
                    "date",
                    "bbox",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// CQL2-JSON: generated expressions and their pathological variants, as text.
fn cql_json() -> impl Strategy<Value = String> {
    let prop_ref = prop::sample::select(vec!["name", "speed", "missing", "datetime"])
        .prop_map(|p| json!({ "property": p }));
    let cmp = (
        prop::sample::select(vec![
            "=",
            "<>",
            "<",
            ">=",
            "like",
            "in",
            "between",
            "isNull",
            "s_intersects",
            "not",
            "and",
            "or",
            "t_intersects",
            "casei",
            "+",
            "div",
            "nope",
        ]),
        prop_ref,
        any_json(),
    )
        .prop_map(|(op, p, v)| json!({ "op": op, "args": [p, v] }));
    let expr = cmp.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|a| json!({ "op": "and", "args": a })),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|a| json!({ "op": "or", "args": a })),
            inner.prop_map(|a| json!({ "op": "not", "args": [a] })),
        ]
    });
    prop_oneof![
        5 => expr.prop_map(|v| v.to_string()),
        2 => any_json().prop_map(|v| v.to_string()),
        // Nested deeper than any limit, and deeper than serde_json's own (128).
        1 => (1usize..500).prop_map(|n| {
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(r#"{"op":"not","args":["#);
            }
            s.push_str(r#"{"op":"=","args":[{"property":"speed"},1]}"#);
            for _ in 0..n {
                s.push_str("]}");
            }
            s
        }),
        1 => (1usize..5000).prop_map(|n| "[".repeat(n)),
        1 => any_text(),
    ]
}

/// Query parameters of `items`: known ones with hostile values, unknown ones, repeats.
fn items_param() -> impl Strategy<Value = (String, String)> {
    let kv = |k: &'static str, v: BoxedStrategy<String>| v.prop_map(move |v| (k.to_string(), v));
    let int_text = prop_oneof![
        prop::sample::select(vec![
            "-1",
            "0",
            "1",
            "2",
            "10",
            "10000",
            "10001",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "1e3",
            "5.0",
            "+5",
            " 5",
            "",
            "abc",
            "0x10",
            "-0",
        ])
        .prop_map(str::to_string),
        any::<u64>().prop_map(|n| n.to_string()),
    ]
    .boxed();
    prop_oneof![
        3 => kv("bbox", bbox_text().boxed()),
        3 => kv("datetime", datetime_text().boxed()),
        3 => kv("filter", prop_oneof![cql_text(), cql_json()].boxed()),
        2 => kv("filter-lang", prop::sample::select(vec![
            "cql2-text", "cql2-json", "CQL2-TEXT", "cql-text", "", "ecql",
        ]).prop_map(str::to_string).boxed()),
        2 => kv("limit", int_text.clone()),
        2 => kv("offset", int_text),
        1 => kv("bbox-crs", prop::sample::select(vec![
            "http://www.opengis.net/def/crs/OGC/1.3/CRS84", "EPSG:4326",
            "http://www.opengis.net/def/crs/EPSG/0/4326", "",
        ]).prop_map(str::to_string).boxed()),
        1 => kv("filter-crs", Just("http://www.opengis.net/def/crs/OGC/1.3/CRS84".to_string()).boxed()),
        1 => kv("f", prop::sample::select(vec!["json", "geojson", "html", "", "JSON"]).prop_map(str::to_string).boxed()),
        1 => kv("cursor", any_text().boxed()),
        1 => kv("access_token", any_text().boxed()),
        1 => (prop::sample::select(vec![
            "properties", "sortby", "crs", "skipGeometry", "bbox ", "BBOX", "limit[]", "",
        ]).prop_map(str::to_string), any_text()),
    ]
}

/// A collection id for paths: the seeded layers mostly, else unknown or hostile ones.
fn layer_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(LAYER.to_string()),
        2 => Just(LWW.to_string()),
        1 => Just("nope".to_string()),
        1 => Just(RASTER.to_string()),
        1 => any_text().prop_map(|s| enc(&s)),
        1 => raw_trick(),
        1 => prop::sample::select(vec!["%2E%2E", "..", "$presence%2Ffz", "%24x", "fz%2Fb"])
            .prop_map(str::to_string),
    ]
}

/// A feature id for paths.
fn id_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_string),
        3 => (0u32..8).prop_map(|n| format!("n{n}")),
        1 => any_text().prop_map(|s| enc(&s)),
        1 => (250usize..270).prop_map(|n| "i".repeat(n)),
        1 => raw_trick(),
        1 => prop::sample::select(vec!["%FF", "%C3%28", "%00", "%2F", "0", "-1", "1e3"])
            .prop_map(str::to_string),
    ]
}

/// A GeoJSON geometry, valid or broken in one of the ways validation names.
fn geometry() -> impl Strategy<Value = Value> {
    let coord = prop_oneof![
        4 => (-180.0f64..180.0, -90.0f64..90.0).prop_map(|(x, y)| json!([x, y])),
        1 => (-180.0f64..180.0, -90.0f64..90.0, any::<f64>()).prop_map(|(x, y, z)| json!([x, y, z])),
        1 => prop::sample::select(vec![
            json!([1e308, 1e308]), json!([181, 0]), json!([0, -91]), json!([1]), json!([]),
            json!([1, 2, 3, 4]), json!(["1", "2"]), json!([null, 0]), json!([[1, 2]]),
            json!(-1.7976931348623157e308), json!({}),
        ]),
    ];
    let ring = prop::collection::vec(coord.clone(), 0..7).prop_map(|mut r| {
        // Closed most of the time, so the rest of the polygon gets looked at.
        if let Some(first) = r.first().cloned() {
            r.push(first);
        }
        Value::Array(r)
    });
    prop_oneof![
        3 => coord.clone().prop_map(|c| json!({ "type": "Point", "coordinates": c })),
        2 => prop::collection::vec(coord.clone(), 0..5)
            .prop_map(|c| json!({ "type": "LineString", "coordinates": c })),
        2 => prop::collection::vec(ring.clone(), 0..3)
            .prop_map(|r| json!({ "type": "Polygon", "coordinates": r })),
        1 => prop::collection::vec(prop::collection::vec(ring, 0..2), 0..3)
            .prop_map(|r| json!({ "type": "MultiPolygon", "coordinates": r })),
        1 => prop::collection::vec(coord, 0..3)
            .prop_map(|c| json!({ "type": "GeometryCollection", "geometries": [{ "type": "MultiPoint", "coordinates": c }] })),
        1 => Just(Value::Null),
        1 => any_json(),
        1 => (2usize..200).prop_map(|n| {
            // Coordinates nested deeper than any geometry has them.
            let mut v = json!([1, 2]);
            for _ in 0..n {
                v = json!([v]);
            }
            json!({ "type": "Polygon", "coordinates": v })
        }),
    ]
}

/// A feature body: a plausible feature with one part hostile, or something else entirely.
fn feature_body() -> impl Strategy<Value = Vec<u8>> {
    let props = prop_oneof![
        4 => prop::collection::btree_map("[a-z]{1,6}", any_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => any_json(),
        1 => (60_000usize..70_000).prop_map(|n| json!({ "big": "p".repeat(n) })),
    ];
    let id = prop_oneof![
        3 => Just(None),
        2 => prop::sample::select(vec!["a", "b", "n1", "n2"]).prop_map(|s| Some(json!(s))),
        1 => prop::sample::select(vec![json!(7), json!(-1), json!(1.5), json!(""), json!(null),
            json!(["a"]), json!("i".repeat(300))]).prop_map(Some),
    ];
    let feature = (
        geometry(),
        props,
        id,
        prop::sample::select(vec![
            "Feature",
            "Feature",
            "Feature",
            "FeatureCollection",
            "feature",
            "",
        ]),
    )
        .prop_map(|(g, p, id, t)| {
            let mut f = json!({ "type": t, "geometry": g, "properties": p });
            if let Some(id) = id {
                f["id"] = id;
            }
            serde_json::to_vec(&f).unwrap()
        });
    prop_oneof![
        8 => feature,
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::sample::select(vec![
            "", "{", "null", "[]", "{\"type\":\"Feature\"}", "{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":[1e999,0]},\"properties\":{}}",
            "{\"type\":\"Feature\",\"geometry\":null,\"properties\":{},\"properties\":{}}",
            "\u{feff}{}", "{\"a\":\"\\ud800\"}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (100usize..5000).prop_map(|n| {
            let mut s = "{\"type\":\"Feature\",\"geometry\":null,\"properties\":{\"x\":".to_string();
            s.push_str(&"[".repeat(n));
            s.push_str(&"]".repeat(n));
            s.push_str("}}");
            s.into_bytes()
        }),
    ]
}

/// A PATCH body: a merge patch with properties and / or geometry, or something else.
fn patch_body() -> impl Strategy<Value = Vec<u8>> {
    let patch = (
        prop::option::of(prop_oneof![
            3 => prop::collection::btree_map("[a-z]{1,6}", any_json(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            1 => any_json(),
        ]),
        prop::option::of(geometry()),
        prop::option::of(prop::sample::select(vec![
            "type", "id", "version", "updated", "links",
        ])),
    )
        .prop_map(|(p, g, extra)| {
            let mut o = serde_json::Map::new();
            if let Some(p) = p {
                o.insert("properties".into(), p);
            }
            if let Some(g) = g {
                o.insert("geometry".into(), g);
            }
            if let Some(k) = extra {
                o.insert(k.into(), json!("Feature"));
            }
            serde_json::to_vec(&Value::Object(o)).unwrap()
        });
    prop_oneof![
        4 => patch,
        1 => feature_body(),
    ]
}

fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        4 => Just(Some(b"application/geo+json".to_vec())),
        3 => Just(Some(b"application/json".to_vec())),
        2 => Just(Some(b"application/merge-patch+json".to_vec())),
        1 => Just(None),
        1 => prop::sample::select(vec![
            "text/plain", "application/json; charset=utf-8", "APPLICATION/JSON",
            "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ";", "",
            "application/geo+json;;;", "application/json\u{00e9}",
        ])
        .prop_map(|s| Some(s.as_bytes().to_vec())),
    ]
}

/// `If-Match` / `If-None-Match` values.
fn etag_header() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        3 => Just(None),
        4 => (0u64..4).prop_map(|v| Some(format!("\"{v}\"").into_bytes())),
        1 => prop::sample::select(vec![
            "*", "W/\"1\"", "\"1\", \"2\"", "\"x\"", "\"1\", \"x\"", "1", "\"", "\"\"", "W/",
            "\"18446744073709551615\"", "\"18446744073709551616\"", "\"-1\"", ",,,", "\"a b\"",
            " \"1\" ", "\"1\",", "*, \"1\"",
        ])
        .prop_map(|s| Some(s.as_bytes().to_vec())),
        1 => prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..20).prop_map(Some),
    ]
}

/// `Idempotency-Key` / `Geostream-Client-Id` values: absent, ordinary, empty, long, 8-bit.
fn token_header() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        6 => Just(None),
        2 => "[a-z0-9-]{1,12}".prop_map(|s| Some(s.into_bytes())),
        1 => prop::sample::select(vec![0usize, 128, 129, 4000])
            .prop_map(|n| Some("k".repeat(n).into_bytes())),
        1 => prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 1..20).prop_map(Some),
    ]
}

// ---------------------------------------------------------------------------------------------
// The groups
// ---------------------------------------------------------------------------------------------

/// `GET /collections/{layer}/items` with generated queries. Documented: 200, 400 (bad or
/// unknown parameters, invalid filters), 404 (no such layer or a path that is no route).
#[test]
fn ogc_items_queries() {
    let fuzz = Fuzz::start();
    let strategy = (
        layer_segment(),
        prop::collection::vec(items_param(), 0..5),
        prop::collection::vec(raw_trick(), 0..2),
        prop::bool::weighted(0.05),
    );
    let seeded: BTreeSet<String> = seed_features()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    fuzz.run(
        "items queries",
        400,
        strategy,
        |(layer, params, raw, repeat)| {
            let fuzz = &fuzz;
            let seeded = &seeded;
            async move {
                let mut params = params;
                if repeat && let Some(p) = params.first().cloned() {
                    params.push(p);
                }
                let q = query(&params, &raw);
                let target = format!("/collections/{layer}/items?{q}");
                let r = Req::new("GET", target);
                let resp = fuzz.exchange(&r, &[200, 400, 404]).await?;
                if resp.status == 200 {
                    let v = resp
                        .json()
                        .ok_or_else(|| TestCaseError::fail("200 without JSON"))?;
                    prop_assert_eq!(&v["type"], "FeatureCollection", "{}", describe(&r));
                    let features = v["features"].as_array().cloned().unwrap_or_default();
                    prop_assert_eq!(v["numberReturned"].as_u64(), Some(features.len() as u64));
                    for f in &features {
                        let id = f["id"].as_str().unwrap_or_default();
                        prop_assert!(
                            seeded.contains(id),
                            "unknown feature {id:?}: {}",
                            describe(&r)
                        );
                    }
                }
                Ok(())
            }
        },
    );
    fuzz.finish();
}

/// Which item operation a case makes.
#[derive(Clone, Debug)]
enum ItemOp {
    Get,
    Create,
    Replace,
    Patch,
    Delete,
}

/// Feature reads and writes with generated bodies and headers. Documented statuses
/// (PROTOCOL.md "HTTP: OGC API - Features", "Origins", "Layers and features"):
/// GET 200 / 304 / 400 / 404; POST 201 / 400 / 404 / 409 / 413 / 415; PUT 200 / 201 / 400 /
/// 404 / 409 / 412 / 413 / 415 / 428; PATCH 200 / 400 / 404 / 409 / 412 / 413 / 415 / 428;
/// DELETE 204 / 400 / 404 / 409 / 412 / 428. (409 is a conflict without `If-Match`, on a
/// last-writer-wins layer an id that exists; 413 a body over the limit.)
#[test]
fn ogc_item_reads_and_writes() {
    let fuzz = Fuzz::start();
    let op = prop_oneof![
        2 => Just(ItemOp::Get),
        2 => Just(ItemOp::Create),
        3 => Just(ItemOp::Replace),
        3 => Just(ItemOp::Patch),
        1 => Just(ItemOp::Delete),
    ];
    let strategy = (
        op,
        layer_segment(),
        id_segment(),
        feature_body(),
        patch_body(),
        content_type(),
        etag_header(),
        token_header(),
        token_header(),
        prop::bool::weighted(0.01),
    );
    fuzz.run(
        "item reads and writes",
        400,
        strategy,
        |(op, layer, id, fbody, pbody, ct, etag, key, client, huge)| {
            let fuzz = &fuzz;
            async move {
                let item = format!("/collections/{layer}/items/{id}");
                let (method, target, body, allowed): (&str, String, Vec<u8>, &[u16]) = match op {
                    ItemOp::Get => ("GET", item, Vec::new(), &[200, 304, 400, 404]),
                    ItemOp::Create => (
                        "POST",
                        format!("/collections/{layer}/items"),
                        fbody,
                        &[201, 400, 404, 409, 413, 415],
                    ),
                    ItemOp::Replace => (
                        "PUT",
                        item,
                        fbody,
                        &[200, 201, 400, 404, 409, 412, 413, 415, 428],
                    ),
                    ItemOp::Patch => (
                        "PATCH",
                        item,
                        pbody,
                        &[200, 400, 404, 409, 412, 413, 415, 428],
                    ),
                    ItemOp::Delete => ("DELETE", item, Vec::new(), &[204, 400, 404, 409, 412, 428]),
                };
                let mut r = Req::new(method, target);
                // Past the body limit (max_frame_bytes + 1 KiB): a JSON string of 1.1 MB.
                r.body = if huge {
                    format!("{{\"type\":\"Feature\",\"geometry\":null,\"properties\":{{\"x\":\"{}\"}}}}", "h".repeat(1_100_000)).into_bytes()
                } else {
                    body
                };
                if let Some(ct) = ct {
                    r = r.header("content-type", ct);
                }
                if let Some(e) = etag {
                    let name = if method == "GET" { "if-none-match" } else { "if-match" };
                    r = r.header(name, e);
                }
                if let Some(k) = key {
                    r = r.header("idempotency-key", k);
                }
                if let Some(c) = client {
                    r = r.header("geostream-client-id", c);
                }
                let resp = fuzz.exchange(&r, allowed).await?;
                let path_id = match op {
                    ItemOp::Create => None,
                    _ => Some(id.as_str()),
                };
                if matches!(op, ItemOp::Get) {
                    if resp.status == 200 {
                        let v = resp.json().ok_or_else(|| TestCaseError::fail("200 without JSON"))?;
                        let key = (layer.clone(), v["id"].as_str().unwrap_or_default().to_string());
                        let want = fuzz.expected.borrow().get(&key).cloned();
                        prop_assert_eq!(Some(comparable(&v)), want, "{}", describe(&r));
                    }
                } else {
                    fuzz.record_write(&layer, path_id, &r, &resp);
                }
                Ok(())
            }
        },
    );
    fuzz.finish();
}

/// A tile coordinate as path text: in range, just out of it, negative, overflowing, not a
/// number.
fn tile_num(z: u32) -> impl Strategy<Value = String> {
    let max = 1u64 << z.min(40);
    prop_oneof![
        4 => (0..max.max(1)).prop_map(|n| n.to_string()),
        1 => Just(max.to_string()),
        1 => Just((max.saturating_sub(1)).to_string()),
        1 => prop::sample::select(vec![
            "-1", "4294967295", "4294967296", "18446744073709551616", "", "x", "1.5", "+1", "01",
            " 1", "%31", "0x1", "\u{661}",
        ])
        .prop_map(|s| enc(s).replace("%2531", "%31")),
    ]
}

fn tile_ext() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "", "", ".mvt", ".mvt", ".pbf", ".png", ".PNG", ".MVT", ".json", ".", "..", ".mvt.gz",
        ".jpg", ".%FF", ".mvt%00", "%2Emvt",
    ])
    .prop_map(str::to_string)
}

/// Tile routes. Documented (PROTOCOL.md "Tiles"): GET 200 / 304 / 400 / 404; PUT 200 / 201 /
/// 400 / 403 / 404 / 413. `/v1/tiles/{name}` (TileJSON) 200 / 400 / 404.
#[test]
fn tile_paths() {
    let fuzz = Fuzz::start();
    let layer = prop_oneof![
        4 => Just(LAYER.to_string()),
        3 => Just(RASTER.to_string()),
        1 => Just("nope".to_string()),
        1 => any_text().prop_map(|s| enc(&s)),
    ];
    let zoom = prop_oneof![
        6 => (0u32..23).prop_map(|z| (z, z.to_string())),
        1 => prop::sample::select(vec![23u32, 24, 31, 32, 63, 64, 255, 256])
            .prop_map(|z| (z, z.to_string())),
        1 => prop::sample::select(vec!["-1", "4294967296", "", "x", "1.0", "%FF", "99999999999999999999"])
            .prop_map(|s| (0, s.to_string())),
    ];
    let tile = zoom.prop_flat_map(|(zn, z)| (Just(z), tile_num(zn), tile_num(zn), tile_ext()));
    let shape = prop_oneof![
        8 => Just(0u8), // /v1/tiles/{layer}/{z}/{x}/{y}{ext}
        1 => Just(1),   // one segment too few
        1 => Just(2),   // one segment too many
        1 => Just(3),   // TileJSON with a random name
        1 => Just(4),   // the list
    ];
    let body = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..40).prop_map(png_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => Just(Vec::new()),
        1 => Just(b"\xff\xd8\xff\xe0jpeg".to_vec()),
    ];
    let strategy = (
        layer,
        tile,
        shape,
        prop::bool::weighted(0.3),
        body,
        prop::option::of(prop::sample::select(vec![
            "*", "\"1-0\"", "W/\"x\"", "garbage",
        ])),
        prop::bool::weighted(0.005),
    );
    fuzz.run(
        "tile paths",
        400,
        strategy,
        |(layer, (z, x, y, ext), shape, put, body, inm, huge)| {
            let fuzz = &fuzz;
            async move {
                let path = match shape {
                    0 => format!("/v1/tiles/{layer}/{z}/{x}/{y}{ext}"),
                    1 => format!("/v1/tiles/{layer}/{z}/{x}{ext}"),
                    2 => format!("/v1/tiles/{layer}/{z}/{x}/{y}/{y}{ext}"),
                    3 => format!("/v1/tiles/{layer}{ext}"),
                    _ => "/v1/tiles".to_string(),
                };
                let (method, allowed): (&str, &[u16]) = if put && shape == 0 {
                    ("PUT", &[200, 201, 400, 403, 404, 413])
                } else if put {
                    // Other shapes have no PUT: 405 from the router, or 404 for no route.
                    ("PUT", &[400, 404, 405])
                } else {
                    ("GET", &[200, 304, 400, 404])
                };
                let mut r = Req::new(method, path);
                if put {
                    // Over tiles.max_upload_bytes (4 MiB) now and then.
                    r.body = if huge {
                        png_bytes(vec![0; 4 << 20])
                    } else {
                        body
                    };
                }
                if let Some(v) = inm {
                    r = r.header("if-none-match", v);
                }
                let resp = fuzz.exchange(&r, allowed).await?;
                if resp.status == 200 && method == "GET" && shape == 0 {
                    let ct = resp
                        .headers
                        .get("content-type")
                        .map(|v| v.as_bytes().to_vec());
                    prop_assert!(
                        ct.as_deref() == Some(b"application/vnd.mapbox-vector-tile")
                            || ct.as_deref() == Some(b"image/png"),
                        "a tile of type {:?}: {}",
                        ct,
                        describe(&r)
                    );
                    prop_assert!(resp.headers.contains_key("etag"));
                }
                Ok(())
            }
        },
    );
    fuzz.finish();
}

/// A channel name: valid, reserved, too long, with the event id's separators, empty, odd.
fn channel_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,6}",
        1 => prop::sample::select(vec![
            "$presence/fz", "$x", "a~b", "a,b", "", " ", "notifications#alice", "a/b", "a%2Fb",
            "é", "a\u{0}b", "..", "#", "=", "@",
        ])
        .prop_map(str::to_string),
        1 => (195usize..205).prop_map(|n| "c".repeat(n)),
        1 => any_text(),
    ]
}

/// An SSE `since` / `Last-Event-ID`: the server's format, near misses and garbage.
fn event_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ("[a-z]{1,4}", "[A-Za-z0-9]{0,10}", any::<u64>())
            .prop_map(|(c, e, o)| format!("{c}~{e}~{o}")),
        1 => prop::collection::vec(("[a-z]{1,3}", "[a-z]{0,3}", num_text()), 0..4).prop_map(|v| {
            v.into_iter().map(|(c, e, o)| format!("{c}~{e}~{o}")).collect::<Vec<_>>().join(",")
        }),
        1 => prop::sample::select(vec![
            "~~", "a~b", "a~b~c~d", ",", ",,,", "a~b~18446744073709551616", "a~b~-1", "~~0",
        ])
        .prop_map(str::to_string),
        1 => any_text(),
    ]
}

/// `GET /v1/sse` query strings. Documented (PROTOCOL.md "Server-Sent Events", "Authentication
/// and limits"): 200 (the stream), 400 (no channel, a bad name or event id), 401 (a channel
/// `...#USER`, readable with that user's token only), 403 (a reserved channel), 413 (more
/// channels than `limits.max_subscriptions`).
#[test]
fn sse_query_strings() {
    let fuzz = Fuzz::start();
    let param = prop_oneof![
        5 => channel_name().prop_map(|c| ("channel".to_string(), c)),
        2 => event_id().prop_map(|s| ("since".to_string(), s)),
        1 => prop::sample::select(vec!["true", "1", "false", "", "yes"])
            .prop_map(|p| ("presence".to_string(), p.to_string())),
        1 => any_text().prop_map(|t| ("access_token".to_string(), t)),
        1 => ("[a-z_]{0,8}", any_text()),
    ];
    let strategy = (
        prop::collection::vec(param, 0..6),
        prop::collection::vec(raw_trick(), 0..2),
        prop::option::of(event_id()),
        prop::bool::weighted(0.02),
    );
    fuzz.run(
        "sse queries",
        300,
        strategy,
        |(params, raw, last_id, many)| {
            let fuzz = &fuzz;
            async move {
                let mut params = params;
                if many {
                    // Past limits.max_subscriptions (128) channels in one stream.
                    params.extend((0..130).map(|i| ("channel".to_string(), format!("m{i}"))));
                }
                let r = Req::new("GET", format!("/v1/sse?{}", query(&params, &raw)));
                let r = match last_id {
                    // Only what a header may carry.
                    Some(id) if id.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                        r.header("last-event-id", id)
                    }
                    _ => r,
                };
                let resp = fuzz.exchange(&r, &[200, 400, 401, 403, 413]).await?;
                if resp.status == 200 {
                    let text = String::from_utf8_lossy(&resp.body);
                    prop_assert!(
                        text.starts_with("event: subscribed\n"),
                        "the stream starts with a subscribe result: {text:?} ({})",
                        describe(&r)
                    );
                }
                Ok(())
            }
        },
    );
    fuzz.finish();
}

/// Channel routes with generated names, bodies and queries. Documented (PROTOCOL.md "HTTP",
/// "Authentication and limits"): publish 200 / 400 / 401 / 403 / 413 / 415; history and
/// presence 200 / 400 / 401 / 403 (401: a `...#USER` channel needs that user's token).
#[test]
fn channel_routes() {
    let fuzz = Fuzz::start();
    let body = prop_oneof![
        4 => any_json().prop_map(|d| serde_json::to_vec(&json!({ "data": d })).unwrap()),
        2 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => (60usize..200).prop_map(|n| {
            format!("{{\"data\":{}{}}}", "[".repeat(n), "]".repeat(n)).into_bytes()
        }),
        1 => Just(b"{\"data\":1,\"data\":2}".to_vec()),
    ];
    let history_q = prop::collection::vec(
        prop_oneof![
            (Just("since".to_string()), num_text()).boxed(),
            (Just("epoch".to_string()), "[A-Za-z0-9]{0,8}").boxed(),
            (Just("limit".to_string()), num_text()).boxed(),
            (Just("x".to_string()), any_text()).boxed(),
        ],
        0..4,
    );
    let ct = prop_oneof![
        4 => Just(Some(b"application/json".to_vec())),
        1 => content_type(),
    ];
    let strategy = (
        0u8..3,
        channel_name().prop_map(|c| enc(&c)),
        body,
        history_q,
        ct,
        prop::bool::weighted(0.01),
    );
    fuzz.run(
        "channels",
        300,
        strategy,
        |(route, name, body, q, ct, huge)| {
            let fuzz = &fuzz;
            async move {
                let (r, allowed): (Req, &[u16]) = match route {
                    0 => {
                        let mut r = Req::new("POST", format!("/v1/channels/{name}/messages"));
                        r.body = if huge {
                            format!("{{\"data\":\"{}\"}}", "h".repeat(1_100_000)).into_bytes()
                        } else {
                            body
                        };
                        if let Some(ct) = ct {
                            r = r.header("content-type", ct);
                        }
                        (r, &[200, 400, 401, 403, 413, 415])
                    }
                    1 => (
                        Req::new(
                            "GET",
                            format!("/v1/channels/{name}/messages?{}", query(&q, &[])),
                        ),
                        &[200, 400, 401, 403],
                    ),
                    _ => (
                        Req::new("GET", format!("/v1/channels/{name}/presence")),
                        &[200, 400, 401, 403],
                    ),
                };
                let resp = fuzz.exchange(&r, allowed).await?;
                if resp.status == 200 && route == 0 {
                    let v = resp.json().unwrap_or_default();
                    prop_assert!(v["offset"].as_u64().is_some(), "{}", describe(&r));
                }
                Ok(())
            }
        },
    );
    fuzz.finish();
}

/// Every route with every method, odd paths and JSON bodies. A method a route does not have
/// is 405 (or 404 where no route matches), and its body is the JSON error like every other
/// HTTP error (PROTOCOL.md "HTTP"). Routes and their methods from http.rs, ogc.rs,
/// tile_routes.rs and web.rs.
#[test]
fn any_method_on_any_route() {
    let fuzz = Fuzz::start();
    let path = prop::sample::select(vec![
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/conformance",
        "/collections",
        "/collections/fz",
        "/collections/nope",
        "/collections/fz/queryables",
        "/collections/fz/items",
        "/collections/fz/items/a",
        "/collections/fz/items/%FF",
        "/collections/%FF/items",
        "/collections/fz/items/a/b",
        "/v1/tiles",
        "/v1/tiles/fz.json",
        "/v1/tiles/fz/0/0/0.mvt",
        "/v1/tiles/sat/3/1/2",
        "/v1/channels/c/messages",
        "/v1/channels/c/presence",
        "/v1/channels/%FF/messages",
        "/v1/sse?channel=c",
        "/v1/geofences",
        "/v1/geofences/nope",
        "/v1/nope",
        "/web/nope.js",
        "//",
        "/collections//items",
        "/%2e%2e/%2e%2e/etc/passwd",
    ]);
    let method = prop::sample::select(vec![
        "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECTX",
    ]);
    let body = prop_oneof![
        2 => Just(Vec::new()),
        2 => feature_body(),
        1 => any_json().prop_map(|v| serde_json::to_vec(&json!({ "data": v })).unwrap()),
    ];
    let strategy = (path, method, body, content_type());
    fuzz.run("methods", 400, strategy, |(path, method, body, ct)| {
        let fuzz = &fuzz;
        async move {
            let mut r = Req::new(method, path).body(body);
            if let Some(ct) = ct {
                r = r.header("content-type", ct);
            }
            // Writes may succeed on the routes that have them; every other answer is one of
            // the refusals the protocol documents.
            let allowed: &[u16] = &[
                200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 412, 413, 415, 428,
            ];
            let resp = fuzz.exchange(&r, allowed).await?;
            let layer = path.split('/').nth(2).unwrap_or_default();
            if path.starts_with("/collections/") {
                fuzz.record_write(layer, path.split('/').nth(4), &r, &resp);
            }
            Ok(())
        }
    });
    fuzz.finish();
}

/// The refusals the fuzzer found answered outside the JSON error body, each once: a path
/// segment that is not UTF-8 (axum's `Path`, plain text), a body over the limit (axum's
/// `Bytes`, plain text) and a method a route does not have (axum's 405, empty).
#[test]
fn refusals_made_before_the_handlers_are_json_errors() {
    let fuzz = Fuzz::start();
    let addr = fuzz.addr();
    fuzz.rt.block_on(async {
        let error = |resp: &Resp| -> (u16, String) {
            let ct = resp
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok());
            assert_eq!(ct, Some("application/json"), "{:?}", resp.body);
            let v = resp.json().expect("a JSON body");
            (
                resp.status,
                v["error"]["name"].as_str().unwrap().to_string(),
            )
        };
        for target in ["/collections/%FF/items", "/collections/fz/items/%C3%28"] {
            let resp = send(addr, &Req::new("GET", target)).await.unwrap();
            assert_eq!(error(&resp), (400, "invalid_params".into()), "{target}");
        }
        let huge = format!(
            "{{\"type\":\"Feature\",\"geometry\":null,\"properties\":{{\"x\":\"{}\"}}}}",
            "h".repeat(1_100_000)
        );
        for (method, target) in [
            ("POST", "/collections/fz/items"),
            ("PUT", "/collections/fz/items/a"),
            ("PATCH", "/collections/fz/items/a"),
        ] {
            let r = Req::new(method, target)
                .header("content-type", "application/json")
                .header("if-match", "\"1\"")
                .body(huge.clone());
            let resp = send(addr, &r).await.unwrap();
            assert_eq!(
                error(&resp),
                (413, "limit_exceeded".into()),
                "{method} {target}"
            );
        }
        for (method, target) in [
            ("POST", "/"),
            ("DELETE", "/collections/fz/items"),
            ("PUT", "/v1/tiles/fz.json"),
        ] {
            let resp = send(addr, &Req::new(method, target)).await.unwrap();
            assert_eq!(
                error(&resp),
                (405, "method_not_found".into()),
                "{method} {target}"
            );
            assert!(resp.headers.contains_key("allow"), "{method} {target}");
        }
    });
    fuzz.finish();
}

/// A geofence definition: the documented fields with hostile values, unknown fields, other
/// JSON. Webhooks only ever point at a closed loopback port: the server must not be made to
/// call anything else.
fn fence_body() -> impl Strategy<Value = Vec<u8>> {
    let area = prop_oneof![
        2 => geometry(),
        1 => prop::collection::vec(any::<f64>(), 0..6).prop_map(|b| json!({ "bbox": b })),
        1 => (-200.0f64..200.0, -100.0f64..100.0, any::<f64>())
            .prop_map(|(x, y, r)| json!({ "circle": { "center": [x, y], "radius_m": r } })),
        1 => any_json(),
    ];
    let spec = (
        prop_oneof![3 => "[a-z]{1,6}", 1 => channel_name()],
        prop::sample::select(vec![LAYER, LWW, "nope", "", RASTER]),
        prop::option::of(area),
        prop::option::of(prop::sample::select(vec![LAYER, "nope"])),
        prop::option::of((prop::option::of(Just(LWW)), any::<f64>())),
        prop::option::of(prop_oneof![cql_text().prop_map(Value::String), any_json()]),
        prop::collection::vec(
            prop::sample::select(vec![
                "enter", "exit", "inside", "cross", "nearby", "faraway", "ENTER", "",
            ]),
            0..4,
        ),
        (
            prop::option::of(instant()),
            prop::option::of(instant()),
            prop::option::of(prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()]),
        ),
        prop::option::of(prop::sample::select(vec![
            "http://127.0.0.1:1/hook",
            "ftp://127.0.0.1:1/",
            "",
            "not a url",
        ])),
        prop::option::of(prop::sample::select(vec![
            "fence.events",
            "",
            "a b",
            ">",
            "*",
        ])),
        prop::option::of(prop::sample::select(vec!["unknown", "sub", "id"])),
    )
        .prop_map(
            |(
                name,
                layer,
                area,
                zones,
                roam,
                filter,
                detect,
                (from, until, ttl),
                hook,
                nats,
                extra,
            )| {
                let mut f = json!({ "name": name, "layer": layer });
                if let Some(a) = area {
                    f["area"] = a;
                }
                if let Some(z) = zones {
                    f["zones"] = json!({ "layer": z });
                }
                if let Some((l, d)) = roam {
                    f["roam"] = json!({ "layer": l, "distance_m": d });
                }
                if let Some(v) = filter {
                    f["filter"] = v;
                }
                if !detect.is_empty() {
                    f["detect"] = json!(detect);
                }
                if let Some(t) = from {
                    f["active_from"] = json!(t);
                }
                if let Some(t) = until {
                    f["active_until"] = json!(t);
                }
                if let Some(t) = ttl {
                    f["ttl_secs"] = json!(t);
                }
                if let Some(u) = hook {
                    f["webhook"] = json!({ "url": u });
                }
                if let Some(n) = nats {
                    f["nats"] = json!({ "subject": n });
                }
                if let Some(k) = extra {
                    f[k] = json!(1);
                }
                serde_json::to_vec(&f).unwrap()
            },
        );
    // Valid ones too, so that creating, reading and deleting fences is exercised.
    let valid = ("[a-z]{1,6}", -170.0f64..170.0, -80.0f64..80.0).prop_map(|(name, x, y)| {
        let f = json!({ "name": name, "layer": LAYER, "area": { "bbox": [x, y, x + 5.0, y + 5.0] },
            "detect": ["enter", "exit"] });
        serde_json::to_vec(&f).unwrap()
    });
    prop_oneof![
        2 => valid,
        6 => spec,
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// `/v1/geofences` (create, list) and `/v1/geofences/{name}` (get, delete). PROTOCOL.md has
/// only their error codes (`fence_not_found`, `fence_exists`), so the allowed sets are this
/// test's, from http.rs and the codes: POST 201 / 400 / 404 (no such layer) / 409 (a fence of
/// that name) / 413 / 415; GET 200 / 400 / 404; DELETE 204 / 400 / 404; and 401 / 403 on all
/// of them, because a fence's events are the channel `fence:NAME`, with the channel rights
/// (`...#USER` names need that user's token).
#[test]
fn geofence_routes() {
    let fuzz = Fuzz::start();
    let ct = prop_oneof![
        4 => Just(Some(b"application/json".to_vec())),
        1 => content_type(),
    ];
    let strategy = (
        0u8..4,
        prop_oneof![3 => "[a-z]{1,6}", 1 => channel_name()].prop_map(|n| enc(&n)),
        fence_body(),
        ct,
    );
    fuzz.run("geofences", 300, strategy, |(route, name, body, ct)| {
        let fuzz = &fuzz;
        async move {
            let (mut r, allowed): (Req, &[u16]) = match route {
                0 | 1 => (
                    Req::new("POST", "/v1/geofences").body(body),
                    &[201, 400, 401, 403, 404, 409, 413, 415],
                ),
                2 => (
                    Req::new("GET", format!("/v1/geofences/{name}")),
                    &[200, 400, 401, 403, 404],
                ),
                _ => (
                    Req::new("DELETE", format!("/v1/geofences/{name}")),
                    &[204, 400, 401, 403, 404],
                ),
            };
            if route <= 1
                && let Some(ct) = ct
            {
                r = r.header("content-type", ct);
            }
            fuzz.exchange(&r, allowed).await?;
            Ok(())
        }
    });
    // The fences that were created are listed, and the server still answers the list.
    fuzz.rt.block_on(async {
        let resp = send(fuzz.addr(), &Req::new("GET", "/v1/geofences"))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.json().unwrap()["fences"].is_array());
    });
    fuzz.finish();
}

/// A request that repeats the `Idempotency-Key` of an earlier write gets that write's own
/// answer, marked, and changes nothing, whatever its method. The fuzzer found a DELETE
/// repeating a PUT's key answered 204 unmarked (the feature stayed), and a POST repeating a
/// DELETE's key could only fail (no feature to answer with).
#[test]
fn a_repeated_idempotency_key_gets_the_first_answer_whatever_the_method() {
    let fuzz = Fuzz::start();
    let addr = fuzz.addr();
    fuzz.rt.block_on(async {
        let feature = serde_json::to_vec(&point("r1", 1.0, 2.0, json!({ "k": 1 }))).unwrap();
        let write = |method: &str, target: &str, key: &str, body: &[u8]| {
            Req::new(method, target)
                .header("content-type", "application/geo+json")
                .header("idempotency-key", key)
                .body(body.to_vec())
        };
        let put = write("PUT", "/collections/fzlww/items/r1", "key-put", &feature);
        let first = send(addr, &put).await.unwrap();
        assert_eq!(first.status, 201);
        let created = comparable(&first.json().unwrap());

        // The PUT's key on a DELETE: the PUT's answer, and the feature stays.
        let del = write("DELETE", "/collections/fzlww/items/r1", "key-put", b"");
        let again = send(addr, &del).await.unwrap();
        assert_eq!(again.status, 201, "{:?}", again.body);
        assert_eq!(again.headers["idempotent-replayed"], "true");
        assert_eq!(comparable(&again.json().unwrap()), created);
        let get = send(addr, &Req::new("GET", "/collections/fzlww/items/r1"))
            .await
            .unwrap();
        assert_eq!(get.status, 200);

        // A DELETE's key on a POST: 204 as the DELETE was answered, nothing created.
        let del = write("DELETE", "/collections/fzlww/items/r1", "key-del", b"");
        assert_eq!(send(addr, &del).await.unwrap().status, 204);
        let post = write("POST", "/collections/fzlww/items", "key-del", &feature);
        let again = send(addr, &post).await.unwrap();
        assert_eq!(again.status, 204, "{:?}", again.body);
        assert_eq!(again.headers["idempotent-replayed"], "true");
        let get = send(addr, &Req::new("GET", "/collections/fzlww/items/r1"))
            .await
            .unwrap();
        assert_eq!(get.status, 404);
    });
    fuzz.finish();
}
