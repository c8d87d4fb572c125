//! The geospatial scenarios: `spatial` (a real AIS / ADS-B replay through many viewport
//! subscriptions), `edits` (durable, versioned edits/s) and `tiles` (tile bytes/s and the
//! size of one-feature deltas).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use geostream_core::codec::{self, Encoding, ServerFrame};
use memchr::memmem::Finder;
use serde_json::{Value, json};

use crate::conn::{self, Rpc, Target, Ws};
use crate::stats::{Hist, Phase, now_ns, round};

const CALL: Duration = Duration::from_secs(60);

/// A tiny deterministic random generator (xorshift64*), so every run places the same
/// viewports.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One position report of a trajectory file.
struct Row {
    obj: u32,
    lon: f64,
    lat: f64,
}

/// Reads a trajectory CSV (optionally .zst) with `object_id`, `lon`, `lat` columns.
fn load_track(path: &str) -> Result<(Vec<String>, Vec<Row>), String> {
    let raw = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let text = if path.ends_with(".zst") {
        zstd::stream::decode_all(&raw[..]).map_err(|e| format!("{path}: {e}"))?
    } else {
        raw
    };
    let text = String::from_utf8(text).map_err(|e| format!("{path}: {e}"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty trajectory")?.split(',').collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| *h == n)
            .ok_or(format!("{path}: no column {n}"))
    };
    let (ci, cx, cy) = (col("object_id")?, col("lon")?, col("lat")?);
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for l in lines {
        // Only the first columns matter and none of them is quoted.
        let f: Vec<&str> = l.splitn(cx.max(cy).max(ci) + 2, ',').collect();
        let (Some(id), Some(x), Some(y)) = (f.get(ci), f.get(cx), f.get(cy)) else {
            continue;
        };
        let (Ok(lon), Ok(lat)) = (x.parse::<f64>(), y.parse::<f64>()) else {
            continue;
        };
        let n = names.len() as u32;
        let obj = *ids.entry((*id).to_string()).or_insert_with(|| {
            names.push((*id).to_string());
            n
        });
        rows.push(Row { obj, lon, lat });
    }
    Ok((names, rows))
}

/// Viewports on a grid of cells, to compute which viewports a position is in (the expected
/// pushes, independently of the server).
struct Boxes {
    boxes: Vec<[f64; 4]>,
    cell: f64,
    grid: HashMap<(i32, i32), Vec<u32>>,
}

impl Boxes {
    fn new(boxes: Vec<[f64; 4]>, cell: f64) -> Boxes {
        let mut grid: HashMap<(i32, i32), Vec<u32>> = HashMap::new();
        for (i, b) in boxes.iter().enumerate() {
            let (x0, y0) = ((b[0] / cell).floor() as i32, (b[1] / cell).floor() as i32);
            let (x1, y1) = ((b[2] / cell).floor() as i32, (b[3] / cell).floor() as i32);
            for x in x0..=x1 {
                for y in y0..=y1 {
                    grid.entry((x, y)).or_default().push(i as u32);
                }
            }
        }
        Boxes { boxes, cell, grid }
    }

    fn containing(&self, lon: f64, lat: f64, out: &mut Vec<u32>) {
        out.clear();
        let k = (
            (lon / self.cell).floor() as i32,
            (lat / self.cell).floor() as i32,
        );
        if let Some(v) = self.grid.get(&k) {
            for &i in v {
                let b = &self.boxes[i as usize];
                if lon >= b[0] && lon <= b[2] && lat >= b[1] && lat <= b[3] {
                    out.push(i);
                }
            }
        }
    }
}

/// The searchers the receivers run over every frame, built once: building one per frame
/// (what `memmem::find` does) was a fifth of the load generator's CPU in the
/// 100,000-viewport replay, more than the searches themselves.
static KIND_MSGPACK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\xa4kind"));
static KIND_JSON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"kind\":\""));
static SENT_MARK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"GST"));

/// The kind of a `feature` push, read from the frame without decoding it: the first
/// `kind` key followed by one of the four kinds.
fn push_kind(enc: Encoding, frame: &[u8]) -> Option<usize> {
    const JSON: [&[u8]; 4] = [b"enter\"", b"update\"", b"exit\"", b"delete\""];
    const MSGPACK: [&[u8]; 4] = [b"\xa5enter", b"\xa6update", b"\xa4exit", b"\xa6delete"];
    let (key, kinds) = if enc.is_binary() {
        (&*KIND_MSGPACK, &MSGPACK)
    } else {
        (&*KIND_JSON, &JSON)
    };
    key.find_iter(frame).find_map(|at| {
        let rest = &frame[at + key.needle().len()..];
        kinds.iter().position(|k| rest.starts_with(k))
    })
}

/// Parameters of the viewport-routing scenario.
pub(crate) struct SpatialParams {
    pub(crate) track: String,
    pub(crate) subs: usize,
    pub(crate) subs_per_conn: usize,
    pub(crate) box_deg: f64,
    pub(crate) batch: usize,
    pub(crate) window: usize,
    pub(crate) duration: f64,
    pub(crate) drain: f64,
    pub(crate) concurrency: usize,
    pub(crate) server_pid: Option<String>,
}

/// `spatial`: viewport subscriptions on a layer, a trajectory replayed into it as fast as
/// the acknowledgements allow.
pub(crate) async fn spatial(target: Target, p: SpatialParams) -> Result<Value, String> {
    let (names, rows) = load_track(&p.track)?;
    if rows.is_empty() {
        return Err("the trajectory has no rows".into());
    }
    let layer = format!("bench-spatial-{}", now_ns());
    // Viewports: squares of box_deg around randomly chosen reports of the same trajectory,
    // so they lie where the traffic is (ports, coasts, airways).
    let mut rng = Rng::new(0x5eed_0001);
    let boxes: Vec<[f64; 4]> = (0..p.subs)
        .map(|_| {
            let r = &rows[(rng.next() % rows.len() as u64) as usize];
            let cx = r.lon + (rng.unit() - 0.5) * p.box_deg;
            let cy = r.lat + (rng.unit() - 0.5) * p.box_deg;
            let h = p.box_deg / 2.0;
            [
                (cx - h).max(-180.0),
                (cy - h).max(-85.0),
                (cx + h).min(180.0),
                (cy + h).min(85.0),
            ]
        })
        .collect();
    let index = Boxes::new(boxes.clone(), p.box_deg.max(0.01));

    let t_setup = Instant::now();
    let (ctl, e) = conn::connect_many(target, 1, 0, 1, CALL).await;
    let mut ctl = Rpc::new(
        ctl.into_iter()
            .flatten()
            .next()
            .ok_or(format!("control connection: {e:?}"))?,
        target.enc,
    );
    ctl.call(
        "layer.create",
        &json!({"name": layer, "last_writer_wins": true}),
        CALL,
    )
    .await?;
    let per = p.subs_per_conn.max(1);
    let nconns = p.subs.div_ceil(per);
    let (conns, errors) = conn::connect_many(target, nconns, 1, p.concurrency, CALL).await;
    let conns: Vec<Ws> = conns.into_iter().flatten().collect();
    if conns.len() < nconns {
        return Err(format!(
            "{} of {nconns} subscriber connections: {errors:?}",
            conns.len()
        ));
    }
    let mut set = tokio::task::JoinSet::new();
    let mut ready = Vec::new();
    let mut pending: Vec<(usize, Ws)> = conns.into_iter().enumerate().collect();
    while !pending.is_empty() || !set.is_empty() {
        while set.len() < p.concurrency.max(1) {
            let Some((i, ws)) = pending.pop() else { break };
            let reqs: Vec<(&'static str, Value)> = boxes[i * per..((i + 1) * per).min(p.subs)]
                .iter()
                .map(|b| {
                    (
                        "layer.subscribe",
                        json!({"layer": layer, "bbox": b, "snapshot": false}),
                    )
                })
                .collect();
            set.spawn(async move {
                let mut rpc = Rpc::new(ws, target.enc);
                let r = rpc.call_many(&reqs, CALL).await?;
                if let Some(Err(e)) = r.into_iter().find(|r| r.is_err()) {
                    return Err(e);
                }
                Ok(rpc.ws)
            });
        }
        match set.join_next().await {
            Some(Ok(Ok(ws))) => ready.push(ws),
            Some(Ok(Err(e))) => return Err(format!("layer.subscribe: {e}")),
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    let setup_s = t_setup.elapsed().as_secs_f64();

    // Receivers: count pushes by kind and time them (the `t` property carries the send time).
    let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let hist = Arc::new(Hist::new());
    let last_recv = Arc::new(AtomicU64::new(0));
    let phase = Phase::start(p.server_pid.as_deref());
    let t0 = now_ns();
    let mut receivers = tokio::task::JoinSet::new();
    for mut ws in ready {
        let (counts, hist, last_recv) = (counts.clone(), hist.clone(), last_recv.clone());
        let enc = target.enc;
        // Read until aborted at the end of the drain: no timer per frame (a timeout around
        // each read cost two clock reads and a timer registration per push).
        receivers.spawn(async move {
            while let Some(Ok(b)) = conn::next_data(&mut ws).await {
                let t = now_ns();
                let k = push_kind(enc, &b).unwrap_or(4);
                counts[k].fetch_add(1, Ordering::Relaxed);
                last_recv.fetch_max(t, Ordering::Relaxed);
                if let Some((_, sent)) = scan_t(&b) {
                    hist.record(t.saturating_sub(sent));
                }
            }
        });
    }

    // Publisher: batches of `replace` operations in file order on one connection (applied in
    // order), `window` batches in flight; the expected pushes are computed alongside.
    let (mut sink, mut stream) = ctl.ws.split();
    let acked = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<usize>(p.window.max(1));
    let enc = target.enc;
    let ack_task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while let Some(n) = rx.recv().await {
                loop {
                    let Some(Ok(m)) = stream.next().await else {
                        return errors;
                    };
                    let Some(b) = conn::frame_bytes(m) else {
                        continue;
                    };
                    match codec::decode_server_frame(enc, &b) {
                        Ok(ServerFrame::Response { .. }) => {
                            acked.fetch_add(n as u64, Ordering::Relaxed);
                            break;
                        }
                        Ok(ServerFrame::Error { error, .. }) => {
                            if errors.len() < 5 {
                                errors.push(error.message.to_string());
                            }
                            break;
                        }
                        _ => {}
                    }
                }
            }
            errors
        })
    };
    let mut last: Vec<Option<(f64, f64)>> = vec![None; names.len()];
    let mut expected = [0u64; 3];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut sent_rows = 0usize;
    let mut id = 0i64;
    let end = t0 + (p.duration * 1e9) as u64;
    while sent_rows < rows.len() && now_ns() < end {
        let chunk = &rows[sent_rows..(sent_rows + p.batch).min(rows.len())];
        let t = format!("GST{:016x}", now_ns());
        let ops: Vec<Value> = chunk
            .iter()
            .map(|r| {
                let fid = &names[r.obj as usize];
                json!({"op": "replace", "id": fid, "feature": {
                    "type": "Feature", "id": fid,
                    "geometry": {"type": "Point", "coordinates": [r.lon, r.lat]},
                    "properties": {"t": t}}})
            })
            .collect();
        for r in chunk {
            index.containing(r.lon, r.lat, &mut b);
            match last[r.obj as usize] {
                Some((x, y)) => index.containing(x, y, &mut a),
                None => a.clear(),
            }
            for s in &b {
                if a.contains(s) {
                    expected[1] += 1;
                } else {
                    expected[0] += 1;
                }
            }
            expected[2] += a.iter().filter(|s| !b.contains(s)).count() as u64;
            last[r.obj as usize] = Some((r.lon, r.lat));
        }
        id += 1;
        if tx.send(chunk.len()).await.is_err() {
            break;
        }
        let m = conn::request(
            enc,
            id,
            "feature.batch",
            &json!({"layer": layer, "ops": ops}),
        );
        if sink.send(m).await.is_err() {
            break;
        }
        sent_rows += chunk.len();
    }
    drop(tx);
    let ack_errors = ack_task.await.unwrap_or_default();
    let publish_s = (now_ns() - t0) as f64 / 1e9;
    let in_acked = acked.load(Ordering::Relaxed);
    // Drain: until every expected push arrived, or `drain` seconds.
    let want: u64 = expected.iter().sum();
    let drain_end = Instant::now() + Duration::from_secs_f64(p.drain);
    while Instant::now() < drain_end {
        let got: u64 = counts[..3].iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receivers.abort_all();
    while receivers.join_next().await.is_some() {}
    let ph = phase.end(0.0);
    let _ = sink.close().await;
    let got: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let out_total: u64 = got[..4].iter().sum();
    let span = (last_recv.load(Ordering::Relaxed).saturating_sub(t0)) as f64 / 1e9;
    Ok(json!({
        "track": p.track.rsplit('/').next(),
        "track_rows": rows.len(),
        "objects": names.len(),
        "subs": p.subs,
        "conns": nconns,
        "box_deg": p.box_deg,
        "batch": p.batch,
        "window": p.window,
        "setup_s": round(setup_s, 2),
        "updates_sent": sent_rows,
        "updates_acked": in_acked,
        "publish_s": round(publish_s, 2),
        "updates_per_s": round(in_acked as f64 / publish_s.max(1e-9), 0),
        "expected": {"enter": expected[0], "update": expected[1], "exit": expected[2]},
        "received": {"enter": got[0], "update": got[1], "exit": got[2], "delete": got[3], "other": got[4]},
        "pushes": out_total,
        "pushes_per_s": round(out_total as f64 / span.max(1e-9), 0),
        "pushes_per_update": round(out_total as f64 / (sent_rows.max(1)) as f64, 2),
        "latency_ms": hist.summary_ms(),
        "errors": ack_errors,
        "phase": ph,
    }))
}

/// The send time a replay put in a feature's `t` property.
fn scan_t(frame: &[u8]) -> Option<((), u64)> {
    let at = SENT_MARK.find(frame)? + 3;
    let s = std::str::from_utf8(frame.get(at..at + 16)?).ok()?;
    Some(((), u64::from_str_radix(s, 16).ok()?))
}

/// Parameters of the durable-edits scenario.
pub(crate) struct EditsParams {
    pub(crate) editors: usize,
    /// Requests each editor keeps in flight (each on a feature of its own).
    pub(crate) inflight: usize,
    pub(crate) layers: usize,
    pub(crate) duration: f64,
    pub(crate) server_pid: Option<String>,
}

/// `edits`: each editor patches its own feature with the version it holds, one edit in flight,
/// and counts the acknowledgements (the server acknowledges only durable edits). Editor `i`
/// edits layer `i mod layers`.
pub(crate) async fn edits(target: Target, p: EditsParams) -> Result<Value, String> {
    let stamp = now_ns();
    let layers: Vec<String> = (0..p.layers)
        .map(|k| format!("bench-edits-{stamp}-{k}"))
        .collect();
    let (conns, errors) = conn::connect_many(target, p.editors, 0, 64, CALL).await;
    let conns: Vec<Ws> = conns.into_iter().flatten().collect();
    if conns.len() < p.editors {
        return Err(format!("{} editors connected: {errors:?}", conns.len()));
    }
    let mut rpcs: Vec<Rpc> = conns.into_iter().map(|w| Rpc::new(w, target.enc)).collect();
    for layer in &layers {
        rpcs[0]
            .call("layer.create", &json!({"name": layer}), CALL)
            .await?;
    }
    if p.inflight > 1 {
        return pipelined_edits(target, p, layers, rpcs).await;
    }
    let mut versions = Vec::new();
    for (i, r) in rpcs.iter_mut().enumerate() {
        let layer = &layers[i % layers.len()];
        let v = r
            .call(
                "feature.create",
                &json!({"layer": layer, "feature": {"type": "Feature", "id": format!("e{i}"),
                    "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                    "properties": {"n": 0}}}),
                CALL,
            )
            .await?;
        versions.push(v["version"].as_u64().unwrap_or(1));
    }
    let hist = Arc::new(Hist::new());
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let phase = Phase::start(p.server_pid.as_deref());
    let t0 = now_ns();
    let end = t0 + (p.duration * 1e9) as u64;
    let mut set = tokio::task::JoinSet::new();
    for (i, (mut rpc, mut version)) in rpcs.into_iter().zip(versions).enumerate() {
        let (hist, done, failed, layer) = (
            hist.clone(),
            done.clone(),
            failed.clone(),
            layers[i % layers.len()].clone(),
        );
        set.spawn(async move {
            let mut n = 0u64;
            while now_ns() < end {
                n += 1;
                let t = now_ns();
                let params = json!({"layer": layer, "id": format!("e{i}"), "version": version,
                    "properties": {"n": n}, "op_id": format!("e{i}-{n}")});
                match rpc.call("feature.patch", &params, CALL).await {
                    Ok(r) => {
                        hist.record(now_ns() - t);
                        done.fetch_add(1, Ordering::Relaxed);
                        version = r["version"].as_u64().unwrap_or(version + 1);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let _ = rpc.ws.close(None).await;
        });
    }
    while set.join_next().await.is_some() {}
    let wall = (now_ns() - t0) as f64 / 1e9;
    let ph = phase.end(0.0);
    let n = done.load(Ordering::Relaxed);
    Ok(json!({
        "editors": p.editors,
        "layers": p.layers,
        "edits": n,
        "failed": failed.load(Ordering::Relaxed),
        "edits_per_s": round(n as f64 / wall, 0),
        "latency_ms": hist.summary_ms(),
        "phase": ph,
    }))
}

/// `edits` with `inflight` > 1: each editor keeps that many `feature.patch` requests in
/// flight on one connection, each slot patching a feature of its own with the version it
/// holds (so no two requests in flight touch the same feature), and sends the slot's next
/// patch as soon as its response arrives.
async fn pipelined_edits(
    target: Target,
    p: EditsParams,
    layers: Vec<String>,
    rpcs: Vec<Rpc>,
) -> Result<Value, String> {
    let k = p.inflight;
    let mut editors = Vec::new();
    for (i, mut rpc) in rpcs.into_iter().enumerate() {
        let layer = &layers[i % layers.len()];
        let creates: Vec<(&str, Value)> = (0..k)
            .map(|s| {
                (
                    "feature.create",
                    json!({"layer": layer, "feature": {"type": "Feature",
                    "id": format!("e{i}-{s}"),
                    "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                    "properties": {"n": 0}}}),
                )
            })
            .collect();
        let mut versions = Vec::with_capacity(k);
        for r in rpc.call_many(&creates, CALL).await? {
            versions.push(r?["version"].as_u64().unwrap_or(1));
        }
        editors.push((rpc, versions));
    }
    let hist = Arc::new(Hist::new());
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let phase = Phase::start(p.server_pid.as_deref());
    let t0 = now_ns();
    let end = t0 + (p.duration * 1e9) as u64;
    let mut set = tokio::task::JoinSet::new();
    for (i, (rpc, mut versions)) in editors.into_iter().enumerate() {
        let (hist, done, failed, layer) = (
            hist.clone(),
            done.clone(),
            failed.clone(),
            layers[i % layers.len()].clone(),
        );
        let enc = target.enc;
        set.spawn(async move {
            let mut ws = rpc.ws;
            // Request id = slot + k * round, so a response names its slot.
            let mut sent_at = vec![0u64; k];
            let mut round = vec![0i64; k];
            let patch = |slot: usize, n: i64, version: u64| {
                let params = json!({"layer": layer, "id": format!("e{i}-{slot}"),
                    "version": version, "properties": {"n": n},
                    "op_id": format!("e{i}-{slot}-{n}")});
                conn::request(enc, slot as i64 + k as i64 * n, "feature.patch", &params)
            };
            for (slot, at) in sent_at.iter_mut().enumerate() {
                *at = now_ns();
                if ws.feed(patch(slot, 0, versions[slot])).await.is_err() {
                    return;
                }
            }
            if ws.flush().await.is_err() {
                return;
            }
            let mut outstanding = k;
            while outstanding > 0 {
                let Ok(Some(Ok(m))) = tokio::time::timeout(CALL, ws.next()).await else {
                    failed.fetch_add(outstanding as u64, Ordering::Relaxed);
                    return;
                };
                let Some(b) = conn::frame_bytes(m) else {
                    continue;
                };
                let (id, version) = match codec::decode_server_frame(enc, &b) {
                    Ok(ServerFrame::Response {
                        id: codec::Id::Int(id),
                        result,
                    }) => (id, result["version"].as_u64()),
                    Ok(ServerFrame::Error {
                        id: Some(codec::Id::Int(id)),
                        ..
                    }) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        (id, None)
                    }
                    _ => continue,
                };
                let slot = (id % k as i64) as usize;
                let now = now_ns();
                outstanding -= 1;
                match version {
                    Some(v) => {
                        hist.record(now - sent_at[slot]);
                        done.fetch_add(1, Ordering::Relaxed);
                        versions[slot] = v;
                    }
                    None => continue, // a refused edit ends its slot
                }
                if now < end {
                    round[slot] += 1;
                    sent_at[slot] = now;
                    if ws
                        .send(patch(slot, round[slot], versions[slot]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    outstanding += 1;
                }
            }
            let _ = ws.close(None).await;
        });
    }
    while set.join_next().await.is_some() {}
    let wall = (now_ns() - t0) as f64 / 1e9;
    let ph = phase.end(0.0);
    let n = done.load(Ordering::Relaxed);
    Ok(json!({
        "editors": p.editors,
        "inflight": k,
        "edits": n,
        "failed": failed.load(Ordering::Relaxed),
        "edits_per_s": round(n as f64 / wall, 0),
        "latency_ms": hist.summary_ms(),
        "phase": ph,
    }))
}

/// Parameters of the tiles scenario.
pub(crate) struct TilesParams {
    pub(crate) geojson: String,
    pub(crate) clients: usize,
    pub(crate) zoom: u8,
    pub(crate) duration: f64,
    pub(crate) delta_edits: usize,
    /// Edits per second of the open-loop phase (0: no open-loop phase).
    pub(crate) open_rate: f64,
    pub(crate) server_pid: Option<String>,
}

async fn read_until<F: FnMut(&[u8]) -> bool>(ws: &mut Ws, quiet: Duration, mut f: F) {
    while let Ok(Some(Ok(b))) = tokio::time::timeout(quiet, conn::next_data(ws)).await {
        if f(&b) {
            break;
        }
    }
}

/// `tiles`: a real vector layer; full-tile throughput to several clients that keep asking for
/// their whole viewport again (closed loop), then the push path itself (open loop: an editor
/// changes features at a set rate while the same clients only read), then one-feature edits
/// seen as deltas by a delta subscriber.
pub(crate) async fn tiles(target: Target, p: TilesParams) -> Result<Value, String> {
    let raw = std::fs::read(&p.geojson).map_err(|e| format!("{}: {e}", p.geojson))?;
    let raw = if p.geojson.ends_with(".zst") {
        zstd::stream::decode_all(&raw[..]).map_err(|e| e.to_string())?
    } else {
        raw
    };
    let fc: Value = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
    // Ids of their own: the source's ids are not unique (disputed areas share a country code).
    let features: Vec<Value> = fc["features"]
        .as_array()
        .ok_or("no features")?
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut f = f.clone();
            f["id"] = json!(format!("f{i}"));
            f
        })
        .collect();
    let layer = format!("bench-tiles-{}", now_ns());
    let (conns, errors) = conn::connect_many(target, p.clients + 1, 0, 32, CALL).await;
    let mut conns: Vec<Ws> = conns.into_iter().flatten().collect();
    if conns.len() < p.clients + 1 {
        return Err(format!(
            "{} tile clients connected: {errors:?}",
            conns.len()
        ));
    }
    let mut ctl = Rpc::new(conns.remove(0), target.enc);
    ctl.call(
        "layer.create",
        &json!({"name": layer, "last_writer_wins": true}),
        CALL,
    )
    .await?;
    for chunk in features.chunks(20) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|f| json!({"op": "create", "feature": f}))
            .collect();
        ctl.call("feature.batch", &json!({"layer": layer, "ops": ops}), CALL)
            .await?;
    }
    let world = json!({"bbox": [-179.9, -84.0, 179.9, 84.0], "zoom": p.zoom});

    // Throughput: each client subscribes in `full` mode, then repeatedly says it holds
    // nothing, which makes the server push every tile of its viewport again.
    let bytes = Arc::new(AtomicU64::new(0));
    let pushes = Arc::new(AtomicU64::new(0));
    // Subscribed all at once: each then counts the tiles its first round brings (the round
    // ends when the pushes stop for half a second).
    let mut subscribing = tokio::task::JoinSet::new();
    for ws in conns {
        let layer = layer.clone();
        let world = world.clone();
        subscribing.spawn(async move {
            let mut rpc = Rpc::new(ws, target.enc);
            let r = rpc
                .call(
                    "tile.subscribe",
                    &json!({"layer": layer, "viewport": world, "mode": "full"}),
                    CALL,
                )
                .await?;
            let sub = r["sub"].clone();
            let tiles: Vec<String> = r["tiles"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let mut n = 0u64;
            read_until(&mut rpc.ws, Duration::from_millis(500), |_| {
                n += 1;
                false
            })
            .await;
            Ok::<_, String>((rpc, sub, tiles, n))
        });
    }
    let mut prepared = Vec::new();
    while let Some(r) = subscribing.join_next().await {
        prepared.push(r.map_err(|e| e.to_string())??);
    }
    let tiles_per_round = prepared.first().map_or(0, |p| p.3);
    let phase = Phase::start(p.server_pid.as_deref());
    let t0 = now_ns();
    let end = t0 + (p.duration * 1e9) as u64;
    let mut set = tokio::task::JoinSet::new();
    for (mut rpc, sub, tiles, per_round) in prepared {
        let (bytes, pushes) = (bytes.clone(), pushes.clone());
        set.spawn(async move {
            let have: serde_json::Map<String, Value> =
                tiles.iter().map(|t| (t.clone(), json!(0))).collect();
            let params = json!({"sub": sub, "have": have});
            let mut id = 1_000_000i64;
            let mut finished = true;
            while now_ns() < end && per_round > 0 {
                id += 1;
                if rpc
                    .ws
                    .send(conn::request(rpc.enc, id, "tile.update", &params))
                    .await
                    .is_err()
                {
                    finished = false;
                    break;
                }
                // Wait for the response and this round's pushes.
                let mut got = 0u64;
                let mut answered = false;
                while (got < per_round || !answered) && now_ns() < end + 5_000_000_000 {
                    let Ok(Some(Ok(m))) =
                        tokio::time::timeout(Duration::from_secs(5), rpc.ws.next()).await
                    else {
                        return None;
                    };
                    let wire = m.len() as u64;
                    let Some(b) = conn::frame_bytes(m) else {
                        continue;
                    };
                    if memchr::memmem::find(&b[..b.len().min(48)], b"tile").is_some()
                        && !is_response(rpc.enc, &b)
                    {
                        got += 1;
                        pushes.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(wire, Ordering::Relaxed);
                    } else {
                        answered = true;
                    }
                }
                if got < per_round || !answered {
                    finished = false;
                }
            }
            // A client that finished its last round holds every tile at its current version.
            finished.then_some(rpc)
        });
    }
    let mut readers = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(rpc)) = r {
            readers.push(rpc);
        }
    }
    let wall = (now_ns() - t0) as f64 / 1e9;
    let ph = phase.end(0.0);
    let open = if p.open_rate > 0.0 {
        tiles_open(&mut ctl, readers, &layer, &features, &p).await?
    } else {
        Value::Null
    };

    // Deltas: one delta-mode subscriber on tiles around western Europe at zoom 5; edit one
    // property of one feature there at a time and compare each delta with the full tile.
    let (c, e) = conn::connect_many(target, 1, 100, 1, CALL).await;
    let mut d = Rpc::new(
        c.into_iter().flatten().next().ok_or(format!("{e:?}"))?,
        target.enc,
    );
    let europe = json!({"bbox": [-5.0, 42.0, 15.0, 55.0], "zoom": 5});
    d.call(
        "tile.subscribe",
        &json!({"layer": layer, "viewport": europe, "mode": "delta"}),
        CALL,
    )
    .await?;
    let mut full: HashMap<String, usize> = HashMap::new();
    let enc = target.enc;
    read_until(&mut d.ws, Duration::from_millis(500), |b| {
        if let Some((tile, kind, len)) = tile_push(enc, b)
            && kind == "full"
        {
            full.insert(tile, len);
        }
        false
    })
    .await;
    let in_view: Vec<String> = features
        .iter()
        .filter(|f| {
            first_position(&f["geometry"]["coordinates"])
                .is_some_and(|(x, y)| (-5.0..15.0).contains(&x) && (42.0..55.0).contains(&y))
        })
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect();
    let mut deltas = Vec::new();
    for k in 0..p.delta_edits {
        let Some(fid) = in_view.get(k % in_view.len().max(1)) else {
            break;
        };
        d.call(
            "feature.patch",
            &json!({"layer": layer, "id": fid, "properties": {"bench_rev": k}}),
            CALL,
        )
        .await?;
        read_until(&mut d.ws, Duration::from_millis(400), |b| {
            if let Some((tile, kind, len)) = tile_push(enc, b) {
                if kind == "delta" {
                    if let Some(f) = full.get(&tile) {
                        deltas.push((len, *f));
                    }
                } else if kind == "full" {
                    full.insert(tile, len);
                }
            }
            false
        })
        .await;
    }
    let (dsum, fsum) = deltas
        .iter()
        .fold((0usize, 0usize), |a, (d, f)| (a.0 + d, a.1 + f));
    let b = bytes.load(Ordering::Relaxed);
    Ok(json!({
        "features": features.len(),
        "clients": p.clients,
        "zoom": p.zoom,
        "tiles_per_round": tiles_per_round,
        "tile_pushes": pushes.load(Ordering::Relaxed),
        "tile_bytes": b,
        "tile_bytes_per_s": round(b as f64 / wall, 0),
        "tile_mib_per_s": round(b as f64 / wall / (1u64 << 20) as f64, 1),
        "delta_edits": p.delta_edits,
        "delta_pushes": deltas.len(),
        "delta_bytes_mean": if deltas.is_empty() { Value::Null } else { json!(round(dsum as f64 / deltas.len() as f64, 0)) },
        "full_bytes_mean": if deltas.is_empty() { Value::Null } else { json!(round(fsum as f64 / deltas.len() as f64, 0)) },
        "delta_saving_pct": if fsum == 0 { Value::Null } else { json!(round(100.0 * (1.0 - dsum as f64 / fsum as f64), 1)) },
        "phase": ph,
        "open_loop": open,
    }))
}

/// The tile of `(lon, lat)` at zoom `z` (Web Mercator), as `(x, y)`.
fn tile_of(lon: f64, lat: f64, z: u8) -> (u32, u32) {
    let n = f64::from(1u32 << z);
    let lat = lat.clamp(-85.051_128, 85.051_128).to_radians();
    let x = ((lon + 180.0) / 360.0 * n).floor().clamp(0.0, n - 1.0);
    let y = ((1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n)
        .floor()
        .clamp(0.0, n - 1.0);
    (x as u32, y as u32)
}

/// Grows `b` (min lon, min lat, max lon, max lat) by every position of a coordinates tree.
fn grow_bbox(v: &Value, b: &mut [f64; 4]) {
    match v {
        Value::Array(a) if a.len() >= 2 && a[0].is_number() => {
            let (x, y) = (a[0].as_f64().unwrap_or(0.0), a[1].as_f64().unwrap_or(0.0));
            *b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
        }
        Value::Array(a) => a.iter().for_each(|c| grow_bbox(c, b)),
        _ => {}
    }
}

/// The tiles at zoom `z` a feature's bounding box covers, as `x << 16 | y`.
fn feature_tiles(f: &Value, z: u8) -> Vec<u32> {
    let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
    grow_bbox(&f["geometry"]["coordinates"], &mut b);
    if b[0] > b[2] {
        return Vec::new();
    }
    let (x0, y0) = tile_of(b[0], b[3], z);
    let (x1, y1) = tile_of(b[2], b[1], z);
    (x0..=x1)
        .flat_map(|x| (y0..=y1).map(move |y| (x << 16) | y))
        .collect()
}

/// The head of a `tile` push (its bytes are skipped, not decoded).
#[derive(serde::Deserialize)]
struct TileHead {
    tile: String,
    version: u64,
}

/// One tile push as a reader saw it: tile (`x << 16 | y`), version, arrival (ns).
type Seen = (u32, u64, u64);

/// The open-loop phase of `tiles`: an editor patches one feature after another at
/// `open_rate` edits/s, without waiting for answers, while every client only reads; the
/// server's flusher pushes each changed tile to every client. Measures the bytes delivered
/// per second and, per edit and client, the time from sending the edit to the arrival of the
/// first push of one of the feature's tiles at a version that includes it.
async fn tiles_open(
    ctl: &mut Rpc,
    readers: Vec<Rpc>,
    layer: &str,
    features: &[Value],
    p: &TilesParams,
) -> Result<Value, String> {
    let enc = ctl.enc;
    let targets: Vec<(String, Vec<u32>)> = features
        .iter()
        .filter_map(|f| Some((f["id"].as_str()?.to_string(), feature_tiles(f, p.zoom))))
        .filter(|(_, t)| !t.is_empty())
        .collect();
    if targets.is_empty() || readers.is_empty() {
        return Err("open loop: no features or no clients".into());
    }
    let clients = readers.len();
    let bytes = Arc::new(AtomicU64::new(0));
    let phase = Phase::start(p.server_pid.as_deref());
    let t0 = now_ns();
    let end = t0 + (p.duration * 1e9) as u64;
    // Readers keep reading for a while after the last edit, so late pushes are counted late,
    // not lost; what has still not come then is reported as missed.
    let stop = tokio::time::Instant::now() + Duration::from_secs_f64(p.duration + 2.0);
    let mut set = tokio::task::JoinSet::new();
    for mut rpc in readers {
        let bytes = bytes.clone();
        set.spawn(async move {
            let mut seen: Vec<Seen> = Vec::new();
            let mut scratch = Vec::new();
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(stop, rpc.ws.next()).await {
                let at = now_ns();
                let wire = m.len() as u64;
                let Some(b) = conn::frame_bytes(m) else {
                    continue;
                };
                let Ok(codec::RawServerFrame::Notification { method, params }) =
                    codec::decode_raw_server_frame(enc, &b, &mut scratch, usize::MAX)
                else {
                    continue;
                };
                if method != "tile" {
                    continue;
                }
                if at <= end {
                    bytes.fetch_add(wire, Ordering::Relaxed);
                }
                let Ok(h) = params.decode::<TileHead>() else {
                    continue;
                };
                let mut it = h.tile.split('/').skip(1).map(str::parse::<u32>);
                if let (Some(Ok(x)), Some(Ok(y))) = (it.next(), it.next()) {
                    seen.push(((x << 16) | y, h.version, at));
                }
            }
            seen
        });
    }

    // The editor: requests go out on schedule whatever the answers do (open loop); the
    // answers are read on the side for each edit's sequence number.
    let interval = 1e9 / p.open_rate;
    let n_edits = (p.duration * p.open_rate) as usize;
    let (mut tx, mut rx) = (&mut ctl.ws).split();
    let mut sent: Vec<u64> = vec![0; n_edits];
    // Per edit: its sequence number and when its answer came.
    let mut answers: Vec<Option<(u64, u64)>> = vec![None; n_edits];
    let send = async {
        for (k, slot) in sent.iter_mut().enumerate() {
            let due = t0 + (k as f64 * interval) as u64;
            let now = now_ns();
            if due > now {
                tokio::time::sleep(Duration::from_nanos(due - now)).await;
            }
            let (fid, _) = &targets[k % targets.len()];
            let params = json!({"layer": layer, "id": fid, "properties": {"bench_open": k}});
            *slot = now_ns();
            tx.send(conn::request(
                enc,
                OPEN_ID0 + k as i64,
                "feature.patch",
                &params,
            ))
            .await
            .map_err(|e| format!("send: {e}"))?;
        }
        Ok::<(), String>(())
    };
    let receive = async {
        let mut left = n_edits;
        while left > 0 {
            let Ok(Some(Ok(m))) = tokio::time::timeout_at(stop, rx.next()).await else {
                break;
            };
            let at = now_ns();
            let Some(b) = conn::frame_bytes(m) else {
                continue;
            };
            if let Ok(ServerFrame::Response {
                id: codec::Id::Int(id),
                result,
            }) = codec::decode_server_frame(enc, &b)
                && let Some(slot) = usize::try_from(id - OPEN_ID0)
                    .ok()
                    .and_then(|k| answers.get_mut(k))
                && let Some(seq) = result["seq"].as_u64()
            {
                *slot = Some((seq, at));
                left -= 1;
            }
        }
    };
    let (sent_ok, ()) = tokio::join!(send, receive);
    sent_ok?;
    let mut seen = Vec::with_capacity(clients);
    while let Some(r) = set.join_next().await {
        seen.push(r.map_err(|e| e.to_string())?);
    }
    let ph = phase.end(0.0);

    // Per client and tile, the versions pushed and their arrival, in arrival order (which is
    // version order: a tile is never pushed older than before).
    let ack = Hist::new();
    let push = Hist::new();
    let mut missed = 0u64;
    let mut pushes = 0usize;
    let by_tile: Vec<HashMap<u32, Vec<(u64, u64)>>> = seen
        .into_iter()
        .map(|s| {
            pushes += s.len();
            let mut m: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
            for (t, v, at) in s {
                m.entry(t).or_default().push((v, at));
            }
            m
        })
        .collect();
    let mut answered = 0usize;
    for (k, a) in answers.iter().enumerate() {
        let Some((seq, at)) = *a else { continue };
        answered += 1;
        ack.record(at.saturating_sub(sent[k]));
        let tiles = &targets[k % targets.len()].1;
        for client in &by_tile {
            let first = tiles
                .iter()
                .filter_map(|t| {
                    let v = client.get(t)?;
                    let i = v.partition_point(|(version, _)| *version < seq);
                    v.get(i).map(|(_, at)| *at)
                })
                .min();
            match first {
                Some(at) => push.record(at.saturating_sub(sent[k])),
                None => missed += 1,
            }
        }
    }
    let b = bytes.load(Ordering::Relaxed);
    let wall = p.duration;
    Ok(json!({
        "rate": p.open_rate,
        "clients": clients,
        "edits_sent": n_edits,
        "edits_answered": answered,
        "tile_pushes": pushes,
        "tile_bytes_per_s": round(b as f64 / wall, 0),
        "tile_mib_per_s": round(b as f64 / wall / (1u64 << 20) as f64, 1),
        "edit_latency_ms": ack.summary_ms(),
        "push_latency_ms": push.summary_ms(),
        "pushes_missed": missed,
        "phase": ph,
    }))
}

/// Request ids of the open-loop editor (above those of the set-up calls).
const OPEN_ID0: i64 = 2_000_000;

fn is_response(enc: Encoding, b: &[u8]) -> bool {
    if enc.is_binary() {
        b.get(1) == Some(&0x01)
    } else {
        memchr::memmem::find(b, b"\"result\"").is_some()
            || memchr::memmem::find(b, b"\"error\"").is_some()
    }
}

/// A `tile` push: tile name, kind and the size of its data in bytes.
fn tile_push(enc: Encoding, b: &[u8]) -> Option<(String, String, usize)> {
    let ServerFrame::Notification { method, params } = codec::decode_server_frame(enc, b).ok()?
    else {
        return None;
    };
    if method != "tile" {
        return None;
    }
    let len = match &params["data"] {
        // MessagePack `bin` arrives as an array of numbers; JSON carries base64.
        Value::Array(a) => a.len(),
        Value::String(s) => s.len() / 4 * 3,
        _ => 0,
    };
    Some((
        params["tile"].as_str()?.to_string(),
        params["kind"].as_str()?.to_string(),
        len,
    ))
}

fn first_position(v: &Value) -> Option<(f64, f64)> {
    match v {
        Value::Array(a) if a.len() >= 2 && a[0].is_number() => {
            Some((a[0].as_f64()?, a[1].as_f64()?))
        }
        Value::Array(a) => first_position(a.first()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_kinds_are_read_from_real_frames() {
        for enc in Encoding::ALL {
            for (i, kind) in ["enter", "update", "exit", "delete"].iter().enumerate() {
                let params = json!({"sub": 3, "layer": "ships", "seq": 9, "kind": kind, "id": "s1", "version": 2});
                let frame = codec::encode_notification(enc, "feature", &params);
                let frame = conn::frame_bytes(conn::to_message(enc, frame)).unwrap();
                assert_eq!(push_kind(enc, &frame), Some(i), "{enc} {kind}");
            }
            let response = codec::encode_response(enc, &codec::Id::Int(1), &json!({"sub": 1}));
            assert!(is_response(enc, &response), "{enc}");
        }
    }

    #[test]
    fn viewports_containing_a_point() {
        let b = Boxes::new(
            vec![
                [0.0, 0.0, 1.0, 1.0],
                [0.5, 0.5, 2.5, 2.5],
                [-3.0, -3.0, -2.0, -2.0],
            ],
            1.0,
        );
        let mut out = Vec::new();
        b.containing(0.75, 0.75, &mut out);
        out.sort();
        assert_eq!(out, vec![0, 1]);
        b.containing(2.0, 2.0, &mut out);
        assert_eq!(out, vec![1]);
        b.containing(-2.5, -2.5, &mut out);
        assert_eq!(out, vec![2]);
        b.containing(10.0, 10.0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn trajectory_times_are_read_back() {
        let t = format!("GST{:016x}", 123_456_789u64);
        let frame = format!(r#"{{"properties":{{"t":"{t}"}}}}"#);
        assert_eq!(scan_t(frame.as_bytes()).map(|x| x.1), Some(123_456_789));
    }
}
