//! Geofences against an oracle: the vendored AIS day of the US coasts replayed into a layer
//! watched by a fence over a layer of 10,000 zone polygons, 500 individual fences (circles,
//! polygons and boxes near the track, some with CQL2 on the vessel type) and a roaming fence
//! (500 m). The events on every fence channel must equal, in order, what a brute-force
//! oracle written here computes from the file: every `enter`, `exit`, `inside`, `cross`,
//! `nearby` and `faraway`. Then: a resume from an offset, a deleted fence's closing exits,
//! and an expiring fence.
//!
//! The oracle shares no code with the engine: its own point-in-polygon (ray casting),
//! segment tests and haversine, and no index (every fence and zone, every change).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestServer, datasets, http_json};
use geostream_server::remote::Remote;
use geostream_server::replay::{TrackPoint, read_track, replay};
use serde_json::{Value, json};

const TRACK: &str = "trajectories/ais_us_coastal_2020-06-30.csv.zst";
/// Positions replayed (from the start of the day).
const POSITIONS: usize = 12_000;
const ZONES: usize = 10_000;
const EARTH_M: f64 = 6_371_008.8;

/// xorshift: the same zones and fences every run.
struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug)]
enum Area {
    Circle([f64; 2], f64),
    /// A closed ring (first = last).
    Ring(Vec<[f64; 2]>),
    Box([f64; 4]),
}

fn haversine(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (la1, la2) = (a[1].to_radians(), b[1].to_radians());
    let dla = la2 - la1;
    let dlo = (b[0] - a[0]).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * EARTH_M * h.sqrt().min(1.0).asin()
}

fn ring_contains(r: &[[f64; 2]], p: [f64; 2]) -> bool {
    let mut inside = false;
    for w in r.windows(2) {
        let (a, b) = (w[0], w[1]);
        if (a[1] > p[1]) != (b[1] > p[1])
            && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0]
        {
            inside = !inside;
        }
    }
    inside
}

fn orient(a: [f64; 2], b: [f64; 2], c: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

fn on_seg(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> bool {
    p[0] >= a[0].min(b[0])
        && p[0] <= a[0].max(b[0])
        && p[1] >= a[1].min(b[1])
        && p[1] <= a[1].max(b[1])
}

fn segs_meet(p1: [f64; 2], p2: [f64; 2], q1: [f64; 2], q2: [f64; 2]) -> bool {
    let (d1, d2) = (orient(q1, q2, p1), orient(q1, q2, p2));
    let (d3, d4) = (orient(p1, p2, q1), orient(p1, p2, q2));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && on_seg(q1, q2, p1))
        || (d2 == 0.0 && on_seg(q1, q2, p2))
        || (d3 == 0.0 && on_seg(p1, p2, q1))
        || (d4 == 0.0 && on_seg(p1, p2, q2))
}

impl Area {
    fn bbox(&self) -> [f64; 4] {
        match self {
            Area::Box(b) => *b,
            Area::Ring(r) => r.iter().fold(
                [
                    f64::INFINITY,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::NEG_INFINITY,
                ],
                |b, p| {
                    [
                        b[0].min(p[0]),
                        b[1].min(p[1]),
                        b[2].max(p[0]),
                        b[3].max(p[1]),
                    ]
                },
            ),
            Area::Circle(c, r) => {
                let d = r / 111_000.0 * 1.1;
                let dx = d / c[1].to_radians().cos();
                [c[0] - dx, c[1] - d, c[0] + dx, c[1] + d]
            }
        }
    }

    fn contains(&self, p: [f64; 2]) -> bool {
        match self {
            Area::Box(b) => p[0] >= b[0] && p[0] <= b[2] && p[1] >= b[1] && p[1] <= b[3],
            Area::Ring(r) => ring_contains(r, p),
            Area::Circle(c, r) => haversine(*c, p) <= *r,
        }
    }

    /// Whether the segment meets the area (only asked when both ends are outside).
    fn crossed_by(&self, a: [f64; 2], b: [f64; 2]) -> bool {
        let ring = match self {
            Area::Box(x) => vec![
                [x[0], x[1]],
                [x[2], x[1]],
                [x[2], x[3]],
                [x[0], x[3]],
                [x[0], x[1]],
            ],
            Area::Ring(r) => r.clone(),
            Area::Circle(..) => unreachable!("no cross on circles here"),
        };
        ring.windows(2).any(|w| segs_meet(a, b, w[0], w[1]))
    }

    fn json(&self) -> Value {
        match self {
            Area::Box(b) => json!({ "bbox": b }),
            Area::Ring(r) => json!({ "type": "Polygon", "coordinates": [r] }),
            Area::Circle(c, r) => json!({ "circle": { "center": c, "radius_m": r } }),
        }
    }
}

/// An anchorage-sized polygon near `p`: a rotated, irregular pentagon 300 m to 3 km across.
fn polygon_near(rng: &mut Rng, p: [f64; 2], max_m: f64) -> Vec<[f64; 2]> {
    let c = [p[0] + (rng.f() - 0.5) * 0.03, p[1] + (rng.f() - 0.5) * 0.03];
    let r = (150.0 + rng.f() * (max_m / 2.0 - 150.0)) / 111_000.0;
    let rot = rng.f() * std::f64::consts::TAU;
    let coslat = c[1].to_radians().cos();
    let mut ring: Vec<[f64; 2]> = (0..5)
        .map(|k| {
            let a = rot + k as f64 * std::f64::consts::TAU / 5.0;
            let rr = r * (0.6 + 0.4 * rng.f());
            [c[0] + rr * a.cos() / coslat, c[1] + rr * a.sin()]
        })
        .collect();
    ring.push(ring[0]);
    ring
}

/// The vessel type stand-in: the coastal file has no type column, so one of four AIS type
/// codes is derived from the MMSI.
fn vessel_type(id: &str) -> i64 {
    [30, 60, 70, 80][id.bytes().map(u64::from).sum::<u64>() as usize % 4]
}

#[derive(Clone, Copy, PartialEq)]
enum Filter {
    None,
    /// `vessel_type = 70`
    Cargo,
    /// `vessel_type IN (60, 80)`
    PassengerOrTanker,
}

impl Filter {
    fn cql(self) -> Option<&'static str> {
        match self {
            Filter::None => None,
            Filter::Cargo => Some("vessel_type = 70"),
            Filter::PassengerOrTanker => Some("vessel_type IN (60, 80)"),
        }
    }
    fn ok(self, t: i64) -> bool {
        match self {
            Filter::None => true,
            Filter::Cargo => t == 70,
            Filter::PassengerOrTanker => t == 60 || t == 80,
        }
    }
}

struct OracleFence {
    name: String,
    area: Area,
    bbox: [f64; 4],
    detect: Vec<&'static str>,
    filter: Filter,
}

/// One event as compared: (seq, kind, feature, zone, other).
type Ev = (u64, String, String, Option<String>, Option<String>);

fn area_kind(
    area: &Area,
    old: Option<[f64; 2]>,
    new: [f64; 2],
    ok: bool,
    cross: bool,
) -> Option<&'static str> {
    let was = ok && old.is_some_and(|o| area.contains(o));
    let is = ok && area.contains(new);
    match (was, is) {
        (false, true) => Some("enter"),
        (true, false) => Some("exit"),
        (true, true) => Some("inside"),
        (false, false) => {
            let o = old?;
            (cross && ok && o != new && area.crossed_by(o, new)).then_some("cross")
        }
    }
}

fn seg_box(a: [f64; 2], b: [f64; 2]) -> [f64; 4] {
    [
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[0].max(b[0]),
        a[1].max(b[1]),
    ]
}

fn overlap(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3]
}

/// Reads a whole channel from its first message: (offset, event) in order.
async fn channel(addr: SocketAddr, name: &str) -> (String, Vec<(u64, Value)>) {
    let path = format!("/v1/channels/fence:{name}/messages?limit=1");
    let (status, first) = http_json(addr, "GET", &path, None).await;
    assert_eq!(status, 200, "{first}");
    let epoch = first["position"]["epoch"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    let mut since = 0u64;
    loop {
        let path =
            format!("/v1/channels/fence:{name}/messages?since={since}&epoch={epoch}&limit=1000");
        let (status, page) = http_json(addr, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["complete"], true,
            "history of {name} is not complete: {page}"
        );
        let msgs = page["messages"].as_array().unwrap();
        for m in msgs {
            since = m["offset"].as_u64().unwrap();
            out.push((since, m["data"].clone()));
        }
        if msgs.is_empty() || page["more"] != true {
            break;
        }
    }
    (epoch, out)
}

fn ev(v: &Value) -> Ev {
    (
        v["seq"].as_u64().unwrap(),
        v["kind"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
        v["zone"].as_str().map(str::to_owned),
        v["other"].as_str().map(str::to_owned),
    )
}

async fn wait_evaluated(addr: SocketAddr, fence: &str, seq: u64) {
    let start = Instant::now();
    loop {
        let (status, v) = http_json(addr, "GET", &format!("/v1/geofences/{fence}"), None).await;
        assert_eq!(status, 200, "{v}");
        if v["status"]["loaded"] == true && v["status"]["evaluated_seq"].as_u64() >= Some(seq) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "fence {fence} not evaluated up to {seq}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_on_the_ais_day_match_the_oracle_event_for_event() {
    let srv = TestServer::start_with(|c| {
        c.channels.history_size = 1_000_000;
    })
    .await;
    let addr = srv.addr;
    let mut points: Vec<TrackPoint> = read_track(&datasets().join(TRACK)).unwrap();
    points.truncate(POSITIONS);
    for p in &mut points {
        p.properties
            .insert("vessel_type".into(), json!(vessel_type(&p.id)));
    }
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({"name": "ships", "last_writer_wins": true}),
        )
        .await
        .unwrap();
    remote
        .call(
            "layer.create",
            &json!({"name": "zones", "last_writer_wins": true}),
        )
        .await
        .unwrap();

    // 10,000 zones around positions of the track.
    let mut rng = Rng(0x5eed_0ffe_1ce5);
    let mut zones: Vec<(String, Area)> = Vec::new();
    for i in 0..ZONES {
        let p = &points[(rng.f() * points.len() as f64) as usize];
        zones.push((
            format!("z{i:05}"),
            Area::Ring(polygon_near(&mut rng, [p.lon, p.lat], 3000.0)),
        ));
    }
    for chunk in zones.chunks(500) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|(id, a)| {
                json!({"op": "create", "feature": {"type": "Feature", "id": id,
                    "geometry": a.json(), "properties": {}}})
            })
            .collect();
        remote
            .call("feature.batch", &json!({"layer": "zones", "ops": ops}))
            .await
            .unwrap();
    }

    // 500 individual fences near the track, and the roaming and zone fences.
    let mut fences: Vec<OracleFence> = Vec::new();
    for i in 0..500 {
        let p = &points[(rng.f() * points.len() as f64) as usize];
        let at = [p.lon, p.lat];
        let filter = match i % 5 {
            0 => Filter::Cargo,
            1 => Filter::PassengerOrTanker,
            _ => Filter::None,
        };
        let (area, detect) = match i % 5 {
            0 | 3 => {
                let c = [
                    at[0] + (rng.f() - 0.5) * 0.02,
                    at[1] + (rng.f() - 0.5) * 0.02,
                ];
                (
                    Area::Circle(c, 300.0 + rng.f() * 1700.0),
                    vec!["enter", "exit", "inside"],
                )
            }
            1 | 4 => (
                Area::Ring(polygon_near(&mut rng, at, 3000.0)),
                vec!["enter", "exit", "inside", "cross"],
            ),
            _ => {
                let r = (200.0 + rng.f() * 1300.0) / 111_000.0;
                let c = [
                    at[0] + (rng.f() - 0.5) * 0.02,
                    at[1] + (rng.f() - 0.5) * 0.02,
                ];
                (
                    Area::Box([c[0] - r, c[1] - r, c[0] + r, c[1] + r]),
                    vec!["enter", "exit", "cross"],
                )
            }
        };
        fences.push(OracleFence {
            name: format!("f{i:03}"),
            bbox: area.bbox(),
            area,
            detect,
            filter,
        });
    }
    for f in &fences {
        let mut spec =
            json!({"name": f.name, "layer": "ships", "area": f.area.json(), "detect": f.detect});
        if let Some(q) = f.filter.cql() {
            spec["filter"] = json!(q);
        }
        let (status, body) = http_json(addr, "POST", "/v1/geofences", Some(spec)).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["channel"], format!("fence:{}", f.name));
    }
    let (status, body) = http_json(
        addr,
        "POST",
        "/v1/geofences",
        Some(
            json!({"name": "ports", "layer": "ships", "zones": {"layer": "zones"},
            "detect": ["enter", "exit", "cross"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = http_json(
        addr,
        "POST",
        "/v1/geofences",
        Some(json!({"name": "close-quarters", "layer": "ships",
            "roam": {"distance_m": 500}, "detect": ["nearby", "faraway"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Every fence is loaded before the first position.
    for f in fences
        .iter()
        .map(|f| f.name.as_str())
        .chain(["ports", "close-quarters"])
    {
        wait_evaluated(addr, f, 0).await;
    }

    replay(&remote, "ships", &points, 0.0, |_, _| {})
        .await
        .unwrap();
    let last = points.len() as u64;
    wait_evaluated(addr, "ports", last).await;

    // The oracle.
    let mut expected: BTreeMap<String, Vec<Ev>> = BTreeMap::new();
    let mut state: BTreeMap<String, [f64; 2]> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        let seq = i as u64 + 1;
        let new = [p.lon, p.lat];
        let old = state.get(&p.id).copied();
        let t = vessel_type(&p.id);
        let reach = match old {
            Some(o) => seg_box(o, new),
            None => [new[0], new[1], new[0], new[1]],
        };
        for f in &fences {
            if !overlap(f.bbox, reach) {
                continue;
            }
            let cross = f.detect.contains(&"cross");
            if let Some(k) = area_kind(&f.area, old, new, f.filter.ok(t), cross)
                && f.detect.contains(&k)
            {
                expected.entry(f.name.clone()).or_default().push((
                    seq,
                    k.into(),
                    p.id.clone(),
                    None,
                    None,
                ));
            }
        }
        for (zid, area) in &zones {
            if !overlap(area.bbox(), reach) {
                continue;
            }
            if let Some(k) = area_kind(area, old, new, true, true)
                && k != "inside"
            {
                expected.entry("ports".into()).or_default().push((
                    seq,
                    k.into(),
                    p.id.clone(),
                    Some(zid.clone()),
                    None,
                ));
            }
        }
        let near = |at: Option<[f64; 2]>| -> Vec<String> {
            let Some(a) = at else { return Vec::new() };
            state
                .iter()
                .filter(|(id, q)| **id != p.id && haversine(a, **q) <= 500.0)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let (before, after) = (near(old), near(Some(new)));
        for o in after.iter().filter(|o| !before.contains(o)) {
            expected.entry("close-quarters".into()).or_default().push((
                seq,
                "nearby".into(),
                p.id.clone(),
                None,
                Some(o.clone()),
            ));
        }
        for o in before.iter().filter(|o| !after.contains(o)) {
            expected.entry("close-quarters".into()).or_default().push((
                seq,
                "faraway".into(),
                p.id.clone(),
                None,
                Some(o.clone()),
            ));
        }
        state.insert(p.id.clone(), new);
    }

    // Every channel against the oracle.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut busiest = ("", 0usize);
    for name in fences
        .iter()
        .map(|f| f.name.as_str())
        .chain(["ports", "close-quarters"])
    {
        let (_, got) = channel(addr, name).await;
        let got_ev: Vec<Ev> = got.iter().map(|(_, v)| ev(v)).collect();
        let want = expected.get(name).cloned().unwrap_or_default();
        if got_ev != want {
            let at = got_ev.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "fence {name}: {} events, oracle {}; first difference at {at:?}: {:?} vs {:?}",
                got_ev.len(),
                want.len(),
                at.map(|i| &got_ev[i]),
                at.map(|i| &want[i])
            );
        }
        // Keys are unique and say where each event comes from.
        for (_, v) in &got {
            assert_eq!(
                v["key"],
                format!("{name}:ships:{}:{}", v["seq"], v["n"]),
                "{v}"
            );
        }
        for e in &want {
            *kinds.entry(e.1.clone()).or_default() += 1;
        }
        if want.len() > busiest.1 {
            busiest = (name, want.len());
        }
    }
    for k in ["enter", "exit", "inside", "cross", "nearby", "faraway"] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) >= 5,
            "too few {k}: {kinds:?}"
        );
    }
    eprintln!("events by kind: {kinds:?}; busiest fence {busiest:?}");

    // A backend that read up to an offset resumes with exactly what it missed.
    let (epoch, all) = channel(addr, busiest.0).await;
    let half = all[all.len() / 2].0;
    let path = format!(
        "/v1/channels/fence:{}/messages?since={half}&epoch={epoch}&limit=1000",
        busiest.0
    );
    let (_, page) = http_json(addr, "GET", &path, None).await;
    let resumed: Vec<Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    let missed: Vec<Value> = all
        .iter()
        .filter(|(o, _)| *o > half)
        .take(1000)
        .map(|(_, v)| v.clone())
        .collect();
    assert!(!missed.is_empty());
    assert_eq!(resumed, missed);

    // Deleting a fence closes it: every vessel still inside gets an exit, in id order.
    let victim = fences
        .iter()
        .filter(|f| f.detect.contains(&"exit"))
        .max_by_key(|f| {
            state
                .iter()
                .filter(|(id, p)| f.filter.ok(vessel_type(id)) && f.area.contains(**p))
                .count()
        })
        .unwrap();
    let inside: Vec<String> = state
        .iter()
        .filter(|(id, p)| victim.filter.ok(vessel_type(id)) && victim.area.contains(**p))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!inside.is_empty());
    let before = channel(addr, &victim.name).await.1.len();
    let (status, _) = http_json(
        addr,
        "DELETE",
        &format!("/v1/geofences/{}", victim.name),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let start = Instant::now();
    let closing = loop {
        let all = channel(addr, &victim.name).await.1;
        if all.len() >= before + inside.len() {
            break all[before..].to_vec();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no closing exits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let closed: Vec<(String, String, String)> = closing
        .iter()
        .map(|(_, v)| {
            (
                v["kind"].as_str().unwrap().into(),
                v["id"].as_str().unwrap().into(),
                v["reason"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = inside
        .iter()
        .map(|id| ("exit".into(), id.clone(), "fence_closed".into()))
        .collect();
    assert_eq!(closed, want);
    let (status, _) = http_json(addr, "GET", &format!("/v1/geofences/{}", victim.name), None).await;
    assert_eq!(status, 404);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_fence_closes_itself_and_bad_definitions_are_refused() {
    let srv = TestServer::start().await;
    let addr = srv.addr;
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({"name": "cars", "last_writer_wins": true}),
        )
        .await
        .unwrap();
    for (body, status, code) in [
        (
            json!({"name": "x", "layer": "nope", "area": {"bbox": [0, 0, 1, 1]}}),
            404,
            "layer_not_found",
        ),
        (json!({"name": "x", "layer": "cars"}), 400, "invalid_params"),
        (
            json!({"name": "x", "layer": "cars", "area": {"bbox": [0, 0, 1, 1]}, "filter": "a >"}),
            400,
            "invalid_params",
        ),
        (
            json!({"name": "x", "layer": "cars", "area": {"bbox": [0, 0, 1, 1]}, "nats": {"subject": "a.b"}}),
            400,
            "invalid_params",
        ),
        (
            json!({"name": "x", "layer": "cars", "area": {"bbox": [0, 0, 1, 1]}, "webhook": {"url": "ftp://h/"}}),
            400,
            "invalid_params",
        ),
        (json!("not an object"), 400, "invalid_params"),
    ] {
        let (s, b) = http_json(addr, "POST", "/v1/geofences", Some(body.clone())).await;
        assert_eq!(
            (s, b["error"]["name"].as_str()),
            (status, Some(code)),
            "{body} -> {b}"
        );
    }
    let (s, b) = http_json(addr, "GET", "/v1/geofences/none", None).await;
    assert_eq!(
        (s, b["error"]["name"].as_str()),
        (404, Some("fence_not_found"))
    );
    // Clients cannot forge fence events.
    let (s, b) = http_json(
        addr,
        "POST",
        "/v1/channels/fence:depot/messages",
        Some(json!({"data": {"kind": "enter"}})),
    )
    .await;
    assert_eq!(
        (s, b["error"]["name"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );

    let (s, b) = http_json(
        addr,
        "POST",
        "/v1/geofences",
        Some(json!({"name": "depot", "layer": "cars", "area": {"bbox": [0, 0, 1, 1]}, "ttl_secs": 2})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = http_json(
        addr,
        "POST",
        "/v1/geofences",
        Some(json!({"name": "depot", "layer": "cars", "area": {"bbox": [0, 0, 1, 1]}})),
    )
    .await;
    assert_eq!(s, 409);
    wait_evaluated(addr, "depot", 0).await;
    let ops: Vec<Value> = ["a", "b", "c"]
        .iter()
        .zip([[0.5, 0.5], [5.0, 5.0], [0.2, 0.9]])
        .map(|(id, p)| {
            json!({"op": "replace", "id": id, "feature": {"type": "Feature",
                "geometry": {"type": "Point", "coordinates": p}, "properties": {}}})
        })
        .collect();
    remote
        .call("feature.batch", &json!({"layer": "cars", "ops": ops}))
        .await
        .unwrap();
    let start = Instant::now();
    let events = loop {
        let (_, list) = http_json(addr, "GET", "/v1/geofences", None).await;
        let gone = list["fences"].as_array().unwrap().is_empty();
        let (_, got) = channel(addr, "depot").await;
        if gone && got.len() >= 4 {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the fence did not expire: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got: Vec<(String, String, Option<String>)> = events
        .iter()
        .map(|(_, v)| {
            (
                v["kind"].as_str().unwrap().into(),
                v["id"].as_str().unwrap().into(),
                v["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("enter".into(), "a".into(), None),
            ("enter".into(), "c".into(), None),
            ("exit".into(), "a".into(), Some("fence_closed".into())),
            ("exit".into(), "c".into(), Some("fence_closed".into())),
        ]
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_every_event_through_failures_and_an_outage_without_slowing_other_fences() {
    let srv = TestServer::start_with(|c| {
        c.geofences.webhooks.retry_initial_ms = 20;
        c.geofences.webhooks.retry_max_ms = 300;
    })
    .await;
    let addr = srv.addr;
    // The first 5 requests fail with 500; later the receiver goes down for a while.
    let mut receiver = common::receiver::Receiver::start(
        |n, _| if n < 5 { (500, None) } else { (200, None) },
        None,
    )
    .await;
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({"name": "cars", "last_writer_wins": true}),
        )
        .await
        .unwrap();
    const SECRET: &str = "a-secret-of-at-least-16-bytes";
    for (name, hook) in [
        ("hooked", json!({"url": receiver.url(), "secret": SECRET})),
        ("plain", Value::Null),
    ] {
        let mut spec = json!({"name": name, "layer": "cars", "area": {"bbox": [0, 0, 1, 1]},
            "detect": ["enter", "exit"]});
        if !hook.is_null() {
            spec["webhook"] = hook;
        }
        let (s, b) = http_json(addr, "POST", "/v1/geofences", Some(spec)).await;
        assert_eq!(s, 201, "{b}");
        if name == "hooked" {
            // The secret is shown when the fence is created, and hidden afterwards.
            assert_eq!(b["webhook"]["secret"], SECRET);
        }
        wait_evaluated(addr, name, 0).await;
    }
    let (_, b) = http_json(addr, "GET", "/v1/geofences/hooked", None).await;
    assert_eq!(b["webhook"]["secret"], "***");

    let moves = |round: usize, inside: bool| -> Vec<Value> {
        (0..10)
            .map(|i| {
                let p = if inside {
                    [0.5, 0.01 + i as f64 * 0.05]
                } else {
                    [2.0, 2.0]
                };
                json!({"op": "replace", "id": format!("car{round}-{i}"), "feature": {
                    "type": "Feature", "geometry": {"type": "Point", "coordinates": p},
                    "properties": {}}})
            })
            .collect()
    };
    let write = |ops: Vec<Value>| {
        let remote = &remote;
        async move {
            remote
                .call("feature.batch", &json!({"layer": "cars", "ops": ops}))
                .await
                .unwrap();
        }
    };
    write(moves(0, true)).await;
    write(moves(0, false)).await;
    // An acknowledged edit is evaluated a moment later: round 0 must be in the channel
    // before it is counted. (Counting while its events still arrived once made the check
    // below wait for a total the channel had already passed.)
    let layer = remote
        .call("layer.get", &json!({"name": "cars"}))
        .await
        .unwrap();
    wait_evaluated(addr, "plain", layer["seq"].as_u64().unwrap()).await;
    let before = channel(addr, "plain").await.1.len();
    assert_eq!(before, 20, "round 0: ten cars in, ten out");
    // The receiver is down: events of the plain fence still arrive at once.
    receiver.down().await;
    let t = Instant::now();
    write(moves(1, true)).await;
    write(moves(1, false)).await;
    loop {
        let now = channel(addr, "plain").await.1.len();
        if now >= before + 20 {
            assert_eq!(now, before + 20, "round 1: ten cars in, ten out");
            break;
        }
        // The receiver comes back only after this loop: an evaluator that waited on the
        // webhook would never get here. The bound is loose so that a loaded machine (the
        // whole suite on 2 cores) does not fail it.
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the other fence was slowed down by the webhook's outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    receiver.up().await;

    // Every event is delivered, signed, and deduplicates by key to the channel's events.
    let (_, events) = channel(addr, "hooked").await;
    assert_eq!(events.len(), 40);
    let start = Instant::now();
    let view = loop {
        let (_, v) = http_json(addr, "GET", "/v1/geofences/hooked", None).await;
        if v["delivery"]["delivered"] == 40 && v["delivery"]["queued"] == 0 {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not delivered: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        view["delivery"]["failed_attempts"].as_u64() >= Some(5),
        "{view}"
    );
    let hits = receiver.hits();
    let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.status == 200) {
        common::receiver::assert_signed(h, SECRET);
        let body: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(body["key"], h.key.as_str());
        by_key.insert(h.key.clone(), body);
    }
    let want: BTreeMap<String, Value> = events
        .iter()
        .map(|(_, v)| (v["key"].as_str().unwrap().to_owned(), v.clone()))
        .collect();
    assert_eq!(by_key, want);
    // The metrics say so too.
    let (_, _, m) = common::http(addr, "GET", "/metrics", &[], None).await;
    let m = String::from_utf8_lossy(&m);
    assert!(
        m.lines()
            .any(|l| l == "geostream_webhook_delivered_total{fence=\"hooked\"} 40"),
        "{m}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_to_a_fences_nats_subject() {
    let nats = common::backends::nats_url();
    let srv = TestServer::start_with(|c| c.geofences.nats_url = nats.clone()).await;
    let addr = srv.addr;
    let client = async_nats::connect(&nats)
        .await
        .unwrap_or_else(|e| panic!("NATS is needed at {nats} (scripts/test.sh starts it): {e}"));
    let subject = format!(
        "fences.test.{}",
        geostream_broker::new_epoch().to_ascii_lowercase()
    );
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let remote = Remote::connect(&srv.ws_url(), None).await.unwrap();
    remote
        .call(
            "layer.create",
            &json!({"name": "buoys", "last_writer_wins": true}),
        )
        .await
        .unwrap();
    let (s, b) = http_json(
        addr,
        "POST",
        "/v1/geofences",
        Some(json!({"name": "bay", "layer": "buoys",
            "area": {"circle": {"center": [10, 50], "radius_m": 1000}},
            "nats": {"subject": subject}})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    wait_evaluated(addr, "bay", 0).await;
    for p in [[10.001, 50.0], [10.1, 50.0]] {
        remote
            .call(
                "feature.replace",
                &json!({"layer": "buoys", "id": "b1", "feature": {"type": "Feature",
                    "geometry": {"type": "Point", "coordinates": p}, "properties": {}}}),
            )
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut sub),
        )
        .await
        .expect("an event on the NATS subject")
        .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        got.push((
            v["kind"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        got,
        vec![
            ("enter".to_owned(), "bay:buoys:1:0".to_owned()),
            ("exit".to_owned(), "bay:buoys:2:0".to_owned())
        ]
    );
    srv.shutdown().await;
}
