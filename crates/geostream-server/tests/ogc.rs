//! The OGC API - Features routes over real sockets: landing page, conformance, collections,
//! items with bbox / datetime / CQL2 / paging checked against brute force over the real data
//! in `datasets/`, single items with ETags, and Part 4 writes with `If-Match`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::{TestServer, Ws, datasets, http, http_json};
use geostream_core::codec::Encoding;
use serde_json::{Value, json};

fn manifest_count(data: &std::path::Path, file: &str) -> u64 {
    let m: Value =
        serde_json::from_slice(&std::fs::read(data.join("manifest.json")).unwrap()).unwrap();
    m[file]["features"]
        .as_u64()
        .unwrap_or_else(|| panic!("manifest has no feature count for {file}"))
}

fn read_collection(data: &std::path::Path, file: &str) -> Vec<Value> {
    let bytes = std::fs::read(data.join(file)).unwrap();
    let bytes = if file.ends_with(".zst") {
        zstd::decode_all(&bytes[..]).unwrap()
    } else {
        bytes
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["features"].as_array().unwrap().clone()
}

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Follows `next` links from `path`, collecting the ids of every page.
async fn all_pages(addr: SocketAddr, path: &str) -> (BTreeSet<String>, usize) {
    let mut ids = BTreeSet::new();
    let mut pages = 0;
    let mut next = Some(path.to_string());
    while let Some(p) = next.take() {
        let (status, body) = http_json(addr, "GET", &p, None).await;
        assert_eq!(status, 200, "{p}: {body}");
        pages += 1;
        let features = body["features"].as_array().unwrap();
        assert_eq!(body["numberReturned"], features.len());
        for f in features {
            assert!(ids.insert(id_string(&f["id"])), "duplicate id across pages");
        }
        next = body["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["rel"] == "next")
            .map(|l| {
                let href = l["href"].as_str().unwrap();
                let prefix = format!("http://{addr}");
                href.strip_prefix(&prefix)
                    .expect("links use the request's host")
                    .to_string()
            });
    }
    (ids, pages)
}

async fn import(ws: &mut Ws, layer: &str, path: &str) -> Value {
    ws.ok("layer.import", json!({ "layer": layer, "path": path }))
        .await
}

#[tokio::test]
async fn real_data_counts_and_queries_match_brute_force() {
    let data = datasets();
    let srv = TestServer::start_with(|c| c.import.dir = data.clone()).await;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Msgpack).await;

    let countries_file = "polygons/ne_110m_admin_0_countries.geojson.zst";
    let cities_file = "points/geonames_cities15000.geojson.zst";
    let r = import(&mut ws, "ne_countries", countries_file).await;
    assert_eq!(r["imported"], manifest_count(&data, countries_file), "{r}");
    let r = import(&mut ws, "cities", cities_file).await;
    assert_eq!(r["imported"], manifest_count(&data, cities_file), "{r}");

    // The collection reports the count and an extent.
    let (status, c) = http_json(srv.addr, "GET", "/collections/cities", None).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["geostream"]["count"], manifest_count(&data, cities_file));
    assert!(c["extent"]["spatial"]["bbox"][0].as_array().unwrap().len() == 4);

    // bbox + CQL2 over HTTP, paged, against a loop over the file.
    let bbox = [-10.0, 35.0, 30.0, 60.0];
    let cities = read_collection(&data, cities_file);
    let expected: BTreeSet<String> = cities
        .iter()
        .filter(|f| {
            let c = f["geometry"]["coordinates"].as_array().unwrap();
            let (x, y) = (c[0].as_f64().unwrap(), c[1].as_f64().unwrap());
            let p = &f["properties"];
            let pop = p["population"].as_f64().unwrap_or(0.0);
            let cc = p["countrycode"].as_str().unwrap_or("");
            let name = p["name"].as_str().unwrap_or("");
            x >= bbox[0]
                && x <= bbox[2]
                && y >= bbox[1]
                && y <= bbox[3]
                && pop > 100_000.0
                && (cc == "DE" || cc == "FR" || name.starts_with("San"))
        })
        .map(|f| id_string(&f["id"]))
        .collect();
    assert!(expected.len() > 50, "the query should select a fair number");
    let filter =
        "population > 100000 AND (countrycode = 'DE' OR countrycode = 'FR' OR name LIKE 'San%')";
    let path = format!(
        "/collections/cities/items?bbox=-10,35,30,60&limit=25&filter={}",
        urlencode(filter)
    );
    let (got, pages) = all_pages(srv.addr, &path).await;
    assert_eq!(got, expected);
    assert!(pages > 2, "paging was exercised ({pages} pages)");

    // An attribute-only query over the polygons, in CQL2-JSON.
    let countries = read_collection(&data, countries_file);
    let expected: BTreeSet<String> = countries
        .iter()
        .filter(|f| {
            f["properties"]["CONTINENT"] == "Africa"
                && f["properties"]["POP_EST"].as_f64().unwrap_or(0.0) >= 20_000_000.0
        })
        .map(|f| {
            // Countries without an id get one from the server: compare by name instead.
            f["properties"]["NAME"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(expected.len() > 5);
    let filter = json!({ "op": "and", "args": [
        { "op": "=", "args": [{ "property": "CONTINENT" }, "Africa"] },
        { "op": ">=", "args": [{ "property": "POP_EST" }, 20000000] }
    ]});
    let path = format!(
        "/collections/ne_countries/items?limit=1000&filter-lang=cql2-json&filter={}",
        urlencode(&filter.to_string())
    );
    let (status, body) = http_json(srv.addr, "GET", &path, None).await;
    assert_eq!(status, 200, "{body}");
    let got: BTreeSet<String> = body["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["NAME"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, expected);
    srv.shutdown().await;
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn landing_conformance_and_collections() {
    let srv = TestServer::start().await;
    let (status, body) = http_json(srv.addr, "GET", "/?f=json", None).await;
    assert_eq!(status, 200);
    let rels: Vec<&str> = body["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rel"].as_str().unwrap())
        .collect();
    for rel in ["self", "conformance", "data", "service-desc"] {
        assert!(rels.contains(&rel), "landing page links {rel}");
    }
    let (status, body) = http_json(srv.addr, "GET", "/conformance", None).await;
    assert_eq!(status, 200);
    let classes = body["conformsTo"].as_array().unwrap();
    assert!(
        classes
            .iter()
            .any(|c| c.as_str().unwrap().ends_with("features-1/1.0/conf/core"))
    );
    assert!(
        classes
            .iter()
            .any(|c| c.as_str().unwrap().ends_with("cql2/1.0/conf/cql2-text"))
    );

    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.ok("layer.create", json!({ "name": "parks", "title": "Parks" }))
        .await;
    let (status, body) = http_json(srv.addr, "GET", "/collections", None).await;
    assert_eq!(status, 200);
    let c = body["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "parks")
        .expect("the new layer is listed");
    assert_eq!(
        (c["id"].as_str(), c["title"].as_str()),
        (Some("parks"), Some("Parks"))
    );
    assert!(
        c["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["rel"] == "items")
    );
    let (status, _) = http_json(srv.addr, "GET", "/collections/parks/queryables", None).await;
    assert_eq!(status, 200);
    let (status, body) = http_json(srv.addr, "GET", "/collections/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["name"], "layer_not_found");
    srv.shutdown().await;
}

fn point(x: f64, y: f64, props: Value) -> Value {
    json!({ "type": "Feature", "geometry": { "type": "Point", "coordinates": [x, y] }, "properties": props })
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, http::HeaderMap, Value) {
    let mut h = vec![("content-type", "application/geo+json")];
    h.extend_from_slice(headers);
    let (s, hm, b) = http(
        addr,
        method,
        path,
        &h,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await;
    let v = if b.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&b).unwrap()
    };
    (s, hm, v)
}

#[tokio::test]
async fn writes_with_etags_reach_live_subscribers() {
    let srv = TestServer::start().await;
    let a = srv.addr;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.ok("layer.create", json!({ "name": "sites" })).await;
    ws.ok(
        "layer.subscribe",
        json!({ "layer": "sites", "bbox": [0, 0, 10, 10] }),
    )
    .await;
    assert_eq!(ws.push_of("snapshot").await["last"], true);

    // Create: 201, Location, ETag; subscribers see it.
    let (s, h, f) = send(
        a,
        "POST",
        "/collections/sites/items",
        &[],
        Some(point(1.0, 1.0, json!({ "name": "one" }))),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    let id = f["id"].as_str().unwrap().to_string();
    assert_eq!(h["etag"], "\"1\"");
    assert!(
        h["location"]
            .to_str()
            .unwrap()
            .ends_with(&format!("/collections/sites/items/{id}"))
    );
    let p = ws.push_of("feature").await;
    assert_eq!(
        (p["kind"].as_str(), p["id"].as_str()),
        (Some("enter"), Some(id.as_str()))
    );

    // Read with ETag, and 304 for a matching If-None-Match.
    let item = format!("/collections/sites/items/{id}");
    let (s, h, f) = send(a, "GET", &item, &[], None).await;
    assert_eq!((s, h["etag"].to_str().unwrap()), (200, "\"1\""));
    assert_eq!(f["properties"]["name"], "one");
    let (s, _, _) = send(a, "GET", &item, &[("if-none-match", "\"1\"")], None).await;
    assert_eq!(s, 304);

    // Replace: without If-Match on a layer that needs versions → 428; stale → 412 with the
    // current feature; right → 200 and version 2.
    let (s, _, e) = send(
        a,
        "PUT",
        &item,
        &[],
        Some(point(2.0, 2.0, json!({ "name": "two" }))),
    )
    .await;
    assert_eq!(s, 428, "{e}");
    let (s, _, e) = send(
        a,
        "PUT",
        &item,
        &[("if-match", "\"7\"")],
        Some(point(2.0, 2.0, json!({ "name": "two" }))),
    )
    .await;
    assert_eq!(s, 412, "{e}");
    assert_eq!(e["error"]["data"]["current"]["version"], 1);
    // A well-formed entity tag this server never issued matches no version: 412 as well
    // (RFC 9110 13.1.1), for every write method; a malformed one is a bad request.
    for (method, body) in [
        ("PUT", Some(point(2.0, 2.0, json!({ "name": "two" })))),
        ("PATCH", Some(json!({ "properties": { "name": "two" } }))),
        ("DELETE", None),
    ] {
        let (s, _, e) = send(a, method, &item, &[("if-match", "\"stale-version\"")], body).await;
        assert_eq!(s, 412, "{method}: {e}");
        assert_eq!(e["error"]["data"]["current"]["version"], 1, "{method}");
    }
    let (s, _, e) = send(
        a,
        "PUT",
        &item,
        &[("if-match", "stale-version")],
        Some(point(2.0, 2.0, json!({ "name": "two" }))),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, h, f) = send(
        a,
        "PUT",
        &item,
        &[("if-match", "\"1\"")],
        Some(point(2.0, 2.0, json!({ "name": "two" }))),
    )
    .await;
    assert_eq!((s, h["etag"].to_str().unwrap()), (200, "\"2\""), "{f}");
    let p = ws.push_of("feature").await;
    assert_eq!(p["kind"], "update");

    // Patch with a merge patch; idempotent with a key.
    let patch = json!({ "properties": { "name": null, "kind": "museum" } });
    let hdrs = [("if-match", "\"2\""), ("idempotency-key", "k-1")];
    let (s, h, f) = send(a, "PATCH", &item, &hdrs, Some(patch.clone())).await;
    assert_eq!((s, h["etag"].to_str().unwrap()), (200, "\"3\""), "{f}");
    assert_eq!(f["properties"], json!({ "kind": "museum" }));
    let (s, h, f) = send(a, "PATCH", &item, &hdrs, Some(patch)).await;
    assert_eq!(
        (s, h["etag"].to_str().unwrap()),
        (200, "\"3\""),
        "a retry is answered, not applied: {f}"
    );
    assert_eq!(h["idempotent-replayed"], "true");

    // Moving it out of the subscriber's bbox is an exit.
    let (s, _, f) = send(
        a,
        "PATCH",
        &item,
        &[("if-match", "\"3\"")],
        Some(json!({ "geometry": { "type": "Point", "coordinates": [50, 50] } })),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    let p = ws.push_of("feature").await;
    assert_eq!(p["kind"], "update");
    let p = ws.push_of("feature").await;
    assert_eq!(p["kind"], "exit");

    // Delete with a stale tag fails; with the right one, 204, then 404.
    let (s, _, _) = send(a, "DELETE", &item, &[("if-match", "\"3\"")], None).await;
    assert_eq!(s, 412);
    let (s, _, _) = send(a, "DELETE", &item, &[("if-match", "\"4\"")], None).await;
    assert_eq!(s, 204);
    let (s, _, e) = send(a, "GET", &item, &[], None).await;
    assert_eq!(
        (s, e["error"]["name"].as_str()),
        (404, Some("feature_not_found"))
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let srv = TestServer::start().await;
    let a = srv.addr;
    let mut ws = Ws::connect(&srv.ws_url(), Encoding::Json).await;
    ws.ok("layer.create", json!({ "name": "l" })).await;
    let (s, _, _) = send(
        a,
        "POST",
        "/collections/l/items",
        &[],
        Some(point(1.0, 1.0, json!({}))),
    )
    .await;
    assert_eq!(s, 201);

    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "GET",
            "/collections/l/items?bbox=0,0,10,91",
            None,
            400,
            "invalid_filter",
        ),
        (
            "GET",
            "/collections/l/items?bbox=0,0,10",
            None,
            400,
            "invalid_filter",
        ),
        (
            "GET",
            "/collections/l/items?filter=population%20%3E%3E%201",
            None,
            400,
            "invalid_filter",
        ),
        (
            "GET",
            "/collections/l/items?filter=a%3D1&filter-lang=xml",
            None,
            400,
            "invalid_filter",
        ),
        (
            "GET",
            "/collections/l/items?datetime=yesterday",
            None,
            400,
            "invalid_filter",
        ),
        (
            "GET",
            "/collections/l/items?limit=-3",
            None,
            400,
            "invalid_params",
        ),
        (
            "GET",
            "/collections/l/items?colour=red",
            None,
            400,
            "invalid_params",
        ),
        (
            "GET",
            "/collections/none/items",
            None,
            404,
            "layer_not_found",
        ),
        (
            "POST",
            "/collections/none/items",
            Some(point(1.0, 1.0, json!({}))),
            404,
            "layer_not_found",
        ),
        (
            "POST",
            "/collections/l/items",
            Some(json!({ "type": "Feature", "geometry": { "type": "Point", "coordinates": [1] } })),
            400,
            "invalid_feature",
        ),
        (
            "POST",
            "/collections/l/items",
            Some(
                json!({ "type": "Feature", "geometry": { "type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1]]] } }),
            ),
            400,
            "invalid_feature",
        ),
        (
            "POST",
            "/collections/l/items",
            Some(
                json!({ "type": "Feature", "geometry": { "type": "Point", "coordinates": [0, 95] } }),
            ),
            400,
            "invalid_feature",
        ),
        (
            "POST",
            "/collections/l/items",
            Some(json!([1, 2])),
            400,
            "invalid_feature",
        ),
        (
            "PATCH",
            "/collections/l/items/x",
            Some(json!({ "colour": 1 })),
            400,
            "invalid_feature",
        ),
    ];
    for (method, path, body, status, name) in cases {
        let (s, _, e) = send(a, method, path, &[], body).await;
        assert_eq!(s, status, "{method} {path}: {e}");
        assert_eq!(e["error"]["name"], name, "{method} {path}: {e}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    // A deeply nested CQL2 filter is refused as too complex.
    let deep = (0..200).fold("a = 1".to_string(), |acc, i| {
        format!("({acc}) AND b{i} = 1")
    });
    let (s, _, e) = send(
        a,
        "GET",
        &format!("/collections/l/items?filter={}", urlencode(&deep)),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["name"], "invalid_filter");
    // Not JSON at all.
    let (s, _, b) = http(
        a,
        "POST",
        "/collections/l/items",
        &[("content-type", "application/geo+json")],
        Some(b"{nope".to_vec()),
    )
    .await;
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));

    // Nothing changed: still the one feature, at seq 1.
    let (_, c) = http_json(a, "GET", "/collections/l", None).await;
    assert_eq!(
        (
            c["geostream"]["count"].as_u64(),
            c["geostream"]["seq"].as_u64()
        ),
        (Some(1), Some(1))
    );
    srv.shutdown().await;
}
