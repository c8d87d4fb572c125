//! Queries: boxes and filters against a brute-force oracle, on synthetic and real data.

use super::*;

/// What a query should return, decided by brute force over the features as written.
struct Expected {
    id: String,
    geometry: Option<geo::Geometry<f64>>,
    bbox: Option<BBox>,
    properties: Map<String, Value>,
}

impl Expected {
    fn new(id: &str, f: &ValidFeature) -> Expected {
        Expected {
            id: id.to_owned(),
            geometry: f
                .geometry
                .as_ref()
                .and_then(|g| geo::Geometry::<f64>::try_from(g).ok()),
            bbox: f.geometry.as_ref().and_then(geometry_bbox),
            properties: f.properties.clone(),
        }
    }
}

fn box_parts(b: BBox) -> Vec<BBox> {
    if b[0] > b[2] {
        vec![[b[0], b[1], 180.0, b[3]], [-180.0, b[1], b[2], b[3]]]
    } else {
        vec![b]
    }
}

fn brute(all: &[Expected], bbox: Option<BBox>, filter: Option<&Filter>) -> Vec<String> {
    all.iter()
        .filter(|e| match (bbox, e.bbox) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(q), Some(f)) => box_parts(q)
                .iter()
                .any(|p| p[0] <= f[2] && p[2] >= f[0] && p[1] <= f[3] && p[3] >= f[1]),
        })
        .filter(|e| {
            filter.is_none_or(|f| {
                let id = Value::String(e.id.clone());
                f.matches(&FeatureRef {
                    id: Some(&id),
                    geometry: e.geometry.as_ref(),
                    bbox: e.bbox,
                    properties: &e.properties,
                })
            })
        })
        .map(|e| e.id.clone())
        .collect()
}

pub(super) fn cql(text: &str) -> Filter {
    Filter {
        attribute: Some(AttributeFilter::parse_text(text, &Limits::default()).expect("cql2")),
        ..Default::default()
    }
}

/// Pages through a query with `limit`, checking the paging contract; returns all ids.
async fn page_through<S: Store>(
    s: &S,
    layer: &str,
    bbox: Option<BBox>,
    filter: Option<Arc<Filter>>,
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let q = FeatureQuery {
            bbox,
            filter: filter.clone(),
            limit,
            offset,
        };
        let page = s.query(layer, q).await.expect("query");
        assert!(page.features.len() <= limit);
        out.extend(ids(&page.features));
        match page.next_offset {
            Some(next) => {
                assert_eq!(page.features.len(), limit, "only the last page is short");
                assert_eq!(next, offset + limit);
                offset = next;
            }
            None => return out,
        }
    }
}

async fn check_query<S: Store>(
    s: &S,
    layer: &str,
    all: &[Expected],
    what: &str,
    bbox: Option<BBox>,
    filter: Option<Filter>,
) -> usize {
    let want = brute(all, bbox, filter.as_ref());
    let filter = filter.map(Arc::new);
    let q = FeatureQuery {
        bbox,
        filter: filter.clone(),
        limit: 1_000_000,
        offset: 0,
    };
    let page = s.query(layer, q).await.expect("query");
    assert_eq!(page.next_offset, None);
    let got = ids(&page.features);
    if got != want {
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
        panic!(
            "query {what}: {} features, expected {} (missing e.g. {missing:?}, extra e.g. {extra:?}; or the order differs)",
            got.len(),
            want.len()
        );
    }
    want.len()
}

pub(super) async fn query_synthetic<S: Store>(s: Arc<S>) {
    new_layer(&*s, "q", false).await;
    let rows = [
        (
            "t1",
            Some(point(10.0, 10.0)),
            json!({"datetime": "2024-01-15T00:00:00Z", "kind": "a"}),
        ),
        ("t2", None, json!({"datetime": "2024-03-01", "kind": "b"})),
        (
            "t3",
            Some(point(-10.0, -10.0)),
            json!({"start_datetime": "2023-12-01T00:00:00Z", "end_datetime": "2024-02-01T00:00:00Z", "kind": "a"}),
        ),
        ("t4", Some(point(179.5, 0.0)), json!({"kind": "b"})),
        (
            "t5",
            Some(Geometry::new(geojson::Value::LineString(vec![
                vec![-20.0, 0.0],
                vec![20.0, 0.5],
            ]))),
            json!({"kind": "c", "datetime": "2025-01-01T00:00:00Z"}),
        ),
        ("t6", None, json!({})),
    ];
    let mut all = Vec::new();
    let mut ops = Vec::new();
    for (id, g, p) in rows {
        let f = feature(Some(id), g, p);
        all.push(Expected::new(id, &f));
        ops.push(WriteOp::Create { feature: f });
    }
    ok(&*s, request("q", ops, &alice(), None)).await;
    let temporal = |t: &str| Filter {
        temporal: Some(TemporalFilter::parse(t).expect("datetime")),
        ..Default::default()
    };
    let n = check_query(&*s, "q", &all, "everything", None, None).await;
    assert_eq!(n, 6, "features without geometry are in unbounded queries");
    assert_eq!(
        check_query(
            &*s,
            "q",
            &all,
            "world box",
            Some([-180.0, -90.0, 180.0, 90.0]),
            None
        )
        .await,
        4,
        "but not in bbox queries"
    );
    check_query(
        &*s,
        "q",
        &all,
        "box crossing a line",
        Some([-1.0, -1.0, 1.0, 1.0]),
        None,
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "antimeridian",
        Some([179.0, -1.0, -179.0, 1.0]),
        None,
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "temporal",
        None,
        Some(temporal("2024-01-01/2024-03-31")),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "temporal open",
        None,
        Some(temporal("2024-06-01/..")),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "cql2",
        None,
        Some(cql("kind = 'a' OR kind IS NULL")),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "spatial filter",
        None,
        Some(Filter {
            spatial: Some(SpatialFilter::from_bbox(&[-15.0, -15.0, 15.0, 15.0]).expect("bbox")),
            ..Default::default()
        }),
    )
    .await;
    check_query(
        &*s,
        "q",
        &all,
        "bbox and cql2",
        Some([-30.0, -30.0, 30.0, 30.0]),
        Some(cql("kind <> 'c'")),
    )
    .await;
    // Paging in creation order, with a filter.
    assert_eq!(
        page_through(
            &*s,
            "q",
            None,
            Some(Arc::new(cql("kind IN ('a', 'b', 'c')"))),
            2
        )
        .await,
        ["t1", "t2", "t3", "t4", "t5"]
    );
    assert_eq!(page_through(&*s, "q", None, None, 1).await.len(), 6);
    let q = FeatureQuery {
        limit: 2,
        offset: 5,
        ..Default::default()
    };
    let page = s.query("q", q).await.expect("query");
    assert_eq!(
        (ids(&page.features), page.next_offset, page.seq),
        (vec!["t6".to_string()], None, 6)
    );
}

/// The repository's vendored real data (`datasets/`).
fn datasets() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json",
        dir.display()
    );
    dir
}

/// Reads a zstd-compressed GeoJSON FeatureCollection and validates its features.
fn read_features(path: &Path) -> Vec<ValidFeature> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json = zstd::decode_all(&raw[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut fc: Value =
        serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let features = match fc.get_mut("features").map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => panic!("{}: not a FeatureCollection", path.display()),
    };
    features
        .iter()
        .map(|f| {
            validate_feature(f, &FeatureLimits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

pub(super) async fn query_real_data<S: Store>(s: Arc<S>) {
    let dir = datasets();
    let features = read_features(&dir.join("points/geonames_cities15000.geojson.zst"));
    assert_eq!(
        features.len(),
        34_006,
        "the manifest's count of GeoNames cities"
    );
    new_layer(&*s, "cities", false).await;
    let mut all = Vec::with_capacity(features.len());
    for chunk in features.chunks(2000) {
        let ops = chunk
            .iter()
            .map(|f| WriteOp::Create { feature: f.clone() })
            .collect();
        let o = ok(&*s, request("cities", ops, &alice(), None)).await;
        for (c, f) in o.changes.iter().zip(chunk) {
            all.push(Expected::new(&c.id, f));
        }
    }
    let info = s.layer("cities").await.expect("layer");
    assert_eq!((info.count, info.seq), (34_006, 34_006));
    let exact =
        all.iter()
            .filter_map(|e| e.bbox)
            .fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |a, b| {
                [
                    a[0].min(b[0]),
                    a[1].min(b[1]),
                    a[2].max(b[2]),
                    a[3].max(b[3]),
                ]
            });
    let ext = info.bbox.expect("extent");
    assert!(
        ext[0] <= exact[0] && ext[1] <= exact[1] && ext[2] >= exact[2] && ext[3] >= exact[3],
        "extent {ext:?} covers {exact:?}"
    );
    assert!(
        (0..4).all(|k| (ext[k] - exact[k]).abs() < 1e-3),
        "extent {ext:?} is about {exact:?}"
    );

    let europe = Some([-10.123_45, 35.432_1, 30.987_6, 60.246_8]);
    let n = check_query(&*s, "cities", &all, "bbox Europe", europe, None).await;
    assert!(n > 3000, "{n} European cities");
    check_query(
        &*s,
        "cities",
        &all,
        "bbox across the antimeridian",
        Some([170.123_4, -50.5, -170.432_1, 10.25]),
        None,
    )
    .await;
    check_query(
        &*s,
        "cities",
        &all,
        "bbox with nothing in it",
        Some([-30.1, -50.2, -29.9, -49.8]),
        None,
    )
    .await;
    let n = check_query(
        &*s,
        "cities",
        &all,
        "cql2 population",
        None,
        Some(cql("population > 1000000")),
    )
    .await;
    assert!(n > 300, "{n} cities over a million");
    check_query(
        &*s,
        "cities",
        &all,
        "cql2 and",
        None,
        Some(cql("countrycode = 'FR' AND population >= 50000")),
    )
    .await;
    check_query(
        &*s,
        "cities",
        &all,
        "bbox and cql2",
        Some([-125.0, 24.0, -66.0, 50.0]),
        Some(cql("population BETWEEN 100000 AND 200000")),
    )
    .await;
    check_query(
        &*s,
        "cities",
        &all,
        "cql2 like",
        None,
        Some(cql("name LIKE 'San %' AND timezone LIKE 'America/%'")),
    )
    .await;
    let triangle = json!({"type": "Polygon", "coordinates": [[[0.0, 40.0], [20.0, 40.0], [10.0, 55.0], [0.0, 40.0]]]});
    let polygon = Filter {
        spatial: Some(SpatialFilter::from_geojson(&triangle, &Limits::default()).expect("polygon")),
        ..Default::default()
    };
    let n = check_query(
        &*s,
        "cities",
        &all,
        "polygon filter",
        None,
        Some(polygon.clone()),
    )
    .await;
    assert!(n > 500, "{n} cities in the triangle");
    let circle = Filter {
        spatial: Some(SpatialFilter::circle([2.3522, 48.8566], 100_000.0).expect("circle")),
        attribute: cql("population > 20000").attribute,
        temporal: None,
    };
    check_query(&*s, "cities", &all, "circle and cql2", None, Some(circle)).await;
    check_query(
        &*s,
        "cities",
        &all,
        "bbox and polygon filter",
        europe,
        Some(polygon.clone()),
    )
    .await;
    let spatial_cql =
        cql("S_INTERSECTS(geometry, BBOX(5.1, 45.2, 15.3, 50.4)) AND population > 30000");
    check_query(
        &*s,
        "cities",
        &all,
        "cql2 spatial predicate",
        None,
        Some(spatial_cql),
    )
    .await;

    // Paging gives the same answer, page after page.
    let big = Arc::new(cql("population > 200000"));
    let want = brute(&all, None, Some(&big));
    assert_eq!(
        page_through(&*s, "cities", None, Some(big.clone()), 137).await,
        want
    );
    assert_eq!(
        page_through(&*s, "cities", europe, None, 1000).await,
        brute(&all, europe, None)
    );

    // A snapshot streams the same features in pages.
    let req = SnapshotRequest {
        bbox: europe,
        filter: Some(Arc::new(polygon.clone())),
        since: None,
        page_size: 100,
    };
    let mut snap = s.snapshot("cities", req).await.expect("snapshot");
    assert_eq!(
        (snap.seq, snap.complete, snap.changes.len()),
        (34_006, true, 0)
    );
    let mut got = Vec::new();
    while let Some(page) = snap.pages.recv().await {
        let page = page.expect("page");
        assert!(!page.is_empty() && page.len() <= 100);
        got.extend(ids(&page));
    }
    assert_eq!(got, brute(&all, europe, Some(&polygon)));
    // Dropping the receiver early is fine.
    let req = SnapshotRequest {
        page_size: 10,
        ..Default::default()
    };
    let mut snap = s.snapshot("cities", req).await.expect("snapshot");
    assert_eq!(
        snap.pages.recv().await.expect("page").expect("page").len(),
        10
    );
    drop(snap);
    assert_eq!(
        s.layer("cities").await.expect("layer still readable").count,
        34_006
    );
}

/// `query_known`: the same features in the same order as `query` with the box, decoded only
/// where the caller does not hold the stored version, at the layer's sequence number.
pub(super) async fn query_known_rows<S: Store>(s: Arc<S>) {
    new_layer(&*s, "k", false).await;
    let rows = [
        ("a", Some(point(10.0, 10.0))),
        ("b", Some(point(-10.0, -10.0))),
        ("c", None),
        ("d", Some(point(179.5, 0.0))),
        ("e", Some(point(20.0, 20.0))),
    ];
    let ops = rows
        .iter()
        .map(|(id, g)| WriteOp::Create {
            feature: feature(Some(id), g.clone(), json!({"name": id})),
        })
        .collect();
    ok(&*s, request("k", ops, &alice(), None)).await;
    let replace = WriteOp::Replace {
        id: "b".into(),
        feature: feature(None, Some(point(-11.0, -11.0)), json!({"name": "B"})),
        expected: Some(1),
    };
    ok(&*s, request("k", vec![replace], &alice(), None)).await;
    let info = s.layer("k").await.expect("layer");
    let seq = info.seq;

    // The caller holds a and b at version 1 and d at version 1: b has moved on to 2.
    let created = info.created_ms;
    let holds = |id: &str, v: u64| matches!(id, "a" | "b" | "d") && v == 1;
    let held = move |k: KnownKey<'_>| {
        assert_eq!(k.layer_created_ms, created);
        holds(k.id, k.version).then(|| k.id.to_owned())
    };
    for (what, bbox) in [
        ("world", [-180.0, -90.0, 180.0, 90.0]),
        ("antimeridian", [179.0, -1.0, -179.0, 1.0]),
        ("south-west", [-12.0, -12.0, 0.0, 0.0]),
        ("empty", [50.0, 50.0, 60.0, 60.0]),
    ] {
        let q = FeatureQuery {
            bbox: Some(bbox),
            filter: None,
            limit: 100,
            offset: 0,
        };
        let want = s.query("k", q).await.expect("query");
        let got = s
            .query_known("k", bbox, 100, held)
            .await
            .expect("query_known");
        assert_eq!(got.seq, seq, "{what}");
        assert!(!got.truncated, "{what}");
        assert_eq!(got.rows.len(), want.features.len(), "{what}");
        for (row, f) in got.rows.iter().zip(&want.features) {
            match row {
                KnownRow::Known(id) => {
                    assert_eq!(id, &f.id, "{what}");
                    assert!(holds(&f.id, f.version), "{what}: {id} is held");
                }
                KnownRow::Fresh(fresh) => {
                    assert_eq!(&**fresh, f, "{what}");
                    assert!(!holds(&f.id, f.version), "{what}: {} is not", f.id);
                }
            }
        }
    }
    let world = [-180.0, -90.0, 180.0, 90.0];
    let got = s
        .query_known("k", world, 2, |_: KnownKey<'_>| None::<()>)
        .await
        .expect("query_known");
    assert!(
        got.truncated,
        "four features meet the world box, two asked for"
    );
    let ids: Vec<_> = got
        .rows
        .iter()
        .map(|r| match r {
            KnownRow::Fresh(f) => f.id.as_str(),
            KnownRow::Known(()) => unreachable!("nothing is held"),
        })
        .collect();
    assert_eq!(ids, ["a", "b"], "creation order");
    assert_eq!(
        s.query_known("nope", world, 2, |_: KnownKey<'_>| None::<()>)
            .await
            .map(|p| p.rows.len())
            .unwrap_err(),
        StoreError::LayerNotFound("nope".into())
    );
}

/// Box queries follow features that move, several times within one request and one group,
/// and not those of a request that failed (the SQLite store writes a group's R-tree entries
/// once each, before its COMMIT).
pub(super) async fn moving_features<S: Store>(s: Arc<S>) {
    new_layer(&*s, "m", true).await;
    let w = alice();
    let start: Vec<WriteOp> = (0..10)
        .map(|i| create(&format!("p{i}"), i as f64, 0.0, json!({})))
        .collect();
    ok(&*s, request("m", start, &w, None)).await;
    let near = |x: f64, y: f64| Some([x - 0.5, y - 0.5, x + 0.5, y + 0.5]);
    let found = |b: Option<BBox>| {
        let s = s.clone();
        async move { page_through(&*s, "m", b, None, 1000).await }
    };

    // One request moves p0 three times, creates p10 where p0 ends and deletes p9.
    let ops = vec![
        move_to("p0", 50.0, 50.0, None),
        move_to("p0", 60.0, 60.0, None),
        move_to("p0", 70.0, 70.0, None),
        create("p10", 70.0, 70.2, json!({})),
        WriteOp::Delete {
            id: "p9".into(),
            expected: None,
        },
    ];
    ok(&*s, request("m", ops, &w, None)).await;
    assert!(found(near(50.0, 50.0)).await.is_empty(), "p0 left 50,50");
    assert!(found(near(60.0, 60.0)).await.is_empty(), "p0 left 60,60");
    assert!(found(near(0.0, 0.0)).await.is_empty(), "p0 left 0,0");
    assert_eq!(found(near(70.0, 70.0)).await, ["p0", "p10"]);
    assert!(found(near(9.0, 0.0)).await.is_empty(), "p9 is deleted");

    // A request that moves p1 twice and creates p11, then fails: none of it shows.
    let ops = vec![
        move_to("p1", 80.0, 80.0, None),
        move_to("p1", 81.0, 81.0, None),
        create("p11", 80.0, 80.0, json!({})),
        patch("nowhere", json!({"a": 1}), Some(1)),
    ];
    err(&*s, request("m", ops, &w, None)).await;
    assert!(found(Some([79.0, 79.0, 82.0, 82.0])).await.is_empty());
    assert_eq!(found(near(1.0, 0.0)).await, ["p1"]);

    // Eight writers move their own point 40 times each, with their requests in flight
    // together, so that groups hold several moves of one feature and some requests fail.
    let mut tasks = Vec::new();
    for k in 0..8u64 {
        let s = s.clone();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("c{k}");
            ok(
                &*s,
                request("m", vec![create(&id, 0.0, -80.0, json!({}))], &w, None),
            )
            .await;
            let mut x = k.wrapping_mul(2_654_435_761) | 1;
            let mut last = (0.0, -80.0);
            for n in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let to = (
                    (x % 34_000) as f64 / 100.0 - 170.0,
                    ((x >> 20) % 16_000) as f64 / 100.0 - 80.0,
                );
                let mut ops = vec![move_to(&id, to.0, to.1, None)];
                if n % 5 == 4 {
                    // Moved, then failed: rolled back.
                    ops.push(patch("nowhere", json!({"a": 1}), Some(1)));
                    err(&*s, request("m", ops, &w, None)).await;
                } else {
                    ok(&*s, request("m", ops, &w, None)).await;
                    last = to;
                }
            }
            (id, last)
        }));
    }
    let mut finals = Vec::new();
    for t in tasks {
        finals.push(t.await.expect("writer task"));
    }
    // Every feature is found where it is and nowhere else, by brute force over a grid of
    // boxes covering the world.
    let mut all: Vec<Expected> = Vec::new();
    for f in all_features(&*s, "m").await {
        let g = f.geometry.clone();
        all.push(Expected::new(&f.id, &feature(None, g, json!({}))));
    }
    for (id, (x, y)) in &finals {
        let e = all.iter().find(|e| &e.id == id).expect("a moved feature");
        assert_eq!(e.bbox, Some([*x, *y, *x, *y]), "{id} as stored");
        assert!(found(near(*x, *y)).await.contains(id), "{id} near {x},{y}");
    }
    for i in 0..12 {
        for j in 0..6 {
            let b = [
                -180.0 + 30.0 * i as f64,
                -90.0 + 30.0 * j as f64,
                -150.0 + 30.0 * i as f64,
                -60.0 + 30.0 * j as f64,
            ];
            check_query(&*s, "m", &all, "a box of the world grid", Some(b), None).await;
        }
    }
}
