//! The HTTP feature API, following OGC API - Features: Part 1 (core, GeoJSON), Part 3
//! (filtering with CQL2 text and JSON) and Part 4 (create, replace, update, delete, with
//! optimistic locking by `ETag` / `If-Match`).
//!
//! A layer is a collection. Writes go through the same store and change publication as the
//! WebSocket methods, so live subscribers see them at once. Errors are the server's JSON
//! error body; a stale `If-Match` is answered with 412 and the current feature.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use geostream_core::api::FilterSpec;
use geostream_core::error::{ErrorCode, RpcError};
use geostream_core::feature::{Change, Feature, format_time_ms};
use geostream_store::{FeatureQuery, Holder, LayerInfo, Store, WriteOp, WriteRequest};
use serde_json::{Map, Value, json};

use crate::auth::Principal;
use crate::error::{Result, ServerError};
use crate::features;
use crate::node::Node;

/// Conformance classes this API implements.
pub const CONFORMANCE: &[&str] = &[
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/create-replace-delete",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/update",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/optimistic-locking-etags",
];

const CRS84: &str = "http://www.opengis.net/def/crs/OGC/1.3/CRS84";
const GEOJSON: &str = "application/geo+json";
/// Default and largest page size of `items`.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 10_000;

/// `Path`, refused with the server's JSON error body. axum's own `Path` refuses a segment
/// that does not decode to UTF-8 (`/collections/%FF/items`) with a plain-text 400, and every
/// HTTP error is documented as `{"error": {...}}` (found by tests/http_fuzz.rs).
struct OgcPath<T>(T);

impl<T, S> FromRequestParts<S> for OgcPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(OgcPath(v)),
            Err(e) => Err(ServerError::invalid(format!("invalid path: {e}"))),
        }
    }
}

/// The body of a write, refused with the server's JSON error body: axum's `Bytes` answers a
/// body over the limit (`DefaultBodyLimit`) with a plain-text 413 (found by
/// tests/http_fuzz.rs). The refusal waits for the handler, so the checks before reading
/// the body (rights, media type) keep their order.
struct OgcBody(std::result::Result<Bytes, BytesRejection>);

impl<S: Send + Sync> FromRequest<S> for OgcBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        Ok(OgcBody(Bytes::from_request(req, state).await))
    }
}

/// The routes of the feature API.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/conformance", get(conformance))
        .route("/collections", get(collections))
        .route("/collections/{layer}", get(collection))
        .route("/collections/{layer}/queryables", get(queryables))
        .route("/collections/{layer}/items", get(items).post(create_item))
        .route(
            "/collections/{layer}/items/{id}",
            get(item)
                .put(replace_item)
                .patch(patch_item)
                .delete(delete_item),
        )
}

/// The base URL of links: the request's host, `https` when a proxy says so.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

fn link(href: String, rel: &str, kind: &str, title: &str) -> Value {
    json!({ "href": href, "rel": rel, "type": kind, "title": title })
}

/// The JSON landing page (`/` for clients asking for JSON).
pub fn landing_page(headers: &HeaderMap) -> Value {
    let base = base_url(headers);
    json!({
        "title": "geostream",
        "description": "Real-time geospatial streaming server: live features, tiles and events over WebSocket, SSE and HTTP",
        "version": env!("CARGO_PKG_VERSION"),
        "links": [
            link(format!("{base}/?f=json"), "self", "application/json", "This document"),
            link(format!("{base}/conformance"), "conformance", "application/json", "Conformance classes"),
            link(format!("{base}/collections"), "data", "application/json", "Layers as feature collections"),
            link(format!("{base}/v1/ws"), "service-desc", "application/json", "WebSocket endpoint (JSON-RPC 2.0; subprotocols geostream.v1.json, geostream.v1.msgpack, geostream.v1.msgpack-zstd)"),
            link(format!("{base}/v1/sse"), "alternate", "text/event-stream", "Server-Sent Events (?channel=NAME)"),
            link(format!("{base}/healthz"), "status", "application/json", "Liveness"),
            link(format!("{base}/readyz"), "status", "application/json", "Readiness"),
            link(format!("{base}/metrics"), "metrics", "text/plain", "Prometheus metrics"),
        ]
    })
}

async fn conformance() -> Response {
    Json(json!({ "conformsTo": CONFORMANCE })).into_response()
}

fn collection_doc(base: &str, l: &LayerInfo) -> Value {
    let name = &l.name;
    let mut c = json!({
        "id": name,
        "title": l.title.clone().unwrap_or_else(|| name.clone()),
        "itemType": "feature",
        "crs": [CRS84],
        "storageCrs": CRS84,
        "links": [
            link(format!("{base}/collections/{name}"), "self", "application/json", "This collection"),
            link(format!("{base}/collections/{name}/items"), "items", GEOJSON, "Features"),
            link(format!("{base}/collections/{name}/queryables"), "http://www.opengis.net/def/rel/ogc/1.0/queryables", "application/schema+json", "Queryables"),
        ],
        "geostream": {
            "seq": l.seq,
            "count": l.count,
            "last_writer_wins": l.last_writer_wins,
            "created": format_time_ms(l.created_ms),
        }
    });
    if let Some(d) = &l.description {
        c["description"] = json!(d);
    }
    if let Some(b) = l.bbox {
        c["extent"] = json!({ "spatial": { "bbox": [b], "crs": CRS84 } });
    }
    c
}

async fn collections(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&headers);
    let mut layers = node.store.list_layers().await?;
    layers.retain(|l| who.may_read_layer(&l.name));
    let docs: Vec<Value> = layers.iter().map(|l| collection_doc(&base, l)).collect();
    Ok(Json(json!({
        "links": [link(format!("{base}/collections"), "self", "application/json", "Collections")],
        "collections": docs,
    }))
    .into_response())
}

async fn collection(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath(layer): OgcPath<String>,
    headers: HeaderMap,
) -> Result<Response> {
    who.read_layer(&layer)?;
    let info = node.store.layer(&layer).await?;
    Ok(Json(collection_doc(&base_url(&headers), &info)).into_response())
}

/// Queryables: any property may be filtered on (features are schemaless), plus the
/// geometry and the temporal properties the temporal filter reads.
async fn queryables(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath(layer): OgcPath<String>,
    headers: HeaderMap,
) -> Result<Response> {
    who.read_layer(&layer)?;
    node.store.layer(&layer).await?;
    let base = base_url(&headers);
    let body = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{base}/collections/{layer}/queryables"),
        "type": "object",
        "title": layer,
        "properties": {
            "geometry": { "format": "geometry-any" },
            "datetime": { "type": "string", "format": "date-time" },
            "start_datetime": { "type": "string", "format": "date-time" },
            "end_datetime": { "type": "string", "format": "date-time" }
        },
        "additionalProperties": true
    });
    let mut r = Json(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/schema+json"),
    );
    Ok(r)
}

/// The query parameters of `items`, validated.
struct ItemsQuery {
    spec: FilterSpec,
    limit: usize,
    offset: usize,
    /// The parameters to repeat in paging links (everything but `offset`).
    keep: Vec<(String, String)>,
}

fn parse_items_query(raw: Option<&str>) -> Result<ItemsQuery> {
    let mut q = ItemsQuery {
        spec: FilterSpec::default(),
        limit: DEFAULT_LIMIT,
        offset: 0,
        keep: Vec::new(),
    };
    let mut filter_lang: Option<String> = None;
    let mut filter_text: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !seen.insert(k.to_string()) {
            return Err(ServerError::invalid(format!(
                "query parameter {k:?} is given more than once"
            )));
        }
        match &*k {
            "bbox" => {
                let nums: std::result::Result<Vec<f64>, _> =
                    v.split(',').map(|s| s.trim().parse::<f64>()).collect();
                let nums = nums.map_err(|_| {
                    ServerError::new(
                        ErrorCode::InvalidFilter,
                        format!("bbox: {v:?} is not a comma-separated list of numbers"),
                    )
                })?;
                q.spec.bbox = Some(nums);
            }
            "bbox-crs" | "filter-crs" => {
                if v != CRS84 {
                    return Err(ServerError::new(
                        ErrorCode::InvalidFilter,
                        format!("{k}: only {CRS84} is supported"),
                    ));
                }
            }
            "datetime" => q.spec.datetime = Some(v.to_string()),
            "filter" => filter_text = Some(v.to_string()),
            "filter-lang" => filter_lang = Some(v.to_string()),
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        ServerError::invalid(format!(
                            "limit: {v:?} is not a whole number of at least 1"
                        ))
                    })?
                    .min(MAX_LIMIT);
            }
            "offset" => {
                q.offset = v.parse::<usize>().map_err(|_| {
                    ServerError::invalid(format!("offset: {v:?} is not a whole number"))
                })?;
                continue;
            }
            "f" => {
                if v != "json" && v != "geojson" {
                    return Err(ServerError::invalid(format!(
                        "f: {v:?} is not offered; use f=json"
                    )));
                }
            }
            other => {
                return Err(ServerError::invalid(format!(
                    "unknown query parameter {other:?}; known: bbox, bbox-crs, datetime, filter, filter-lang, filter-crs, limit, offset, f"
                )));
            }
        }
        q.keep.push((k.into_owned(), v.into_owned()));
    }
    if let Some(text) = filter_text {
        q.spec.filter = Some(match filter_lang.as_deref() {
            None | Some("cql2-text") => Value::String(text),
            Some("cql2-json") => serde_json::from_str(&text).map_err(|e| {
                ServerError::new(
                    ErrorCode::InvalidFilter,
                    format!("filter: not valid CQL2-JSON: {e}"),
                )
            })?,
            Some(other) => {
                return Err(ServerError::new(
                    ErrorCode::InvalidFilter,
                    format!("filter-lang: {other:?} is not supported; use cql2-text or cql2-json"),
                ));
            }
        });
    } else if filter_lang.is_some() {
        return Err(ServerError::invalid("filter-lang given without filter"));
    }
    Ok(q)
}

fn page_url(base: &str, layer: &str, keep: &[(String, String)], offset: usize) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in keep {
        s.append_pair(k, v);
    }
    if offset > 0 {
        s.append_pair("offset", &offset.to_string());
    }
    let qs = s.finish();
    if qs.is_empty() {
        format!("{base}/collections/{layer}/items")
    } else {
        format!("{base}/collections/{layer}/items?{qs}")
    }
}

fn geojson_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(GEOJSON));
    r
}

async fn items(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath(layer): OgcPath<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    who.read_layer(&layer)?;
    let q = parse_items_query(raw.as_deref())?;
    let filter = features::build_filter(&q.spec, &node.config.layers.filter_limits())?;
    let bbox = filter.bbox();
    let page = node
        .store
        .query(
            &layer,
            FeatureQuery {
                bbox,
                filter: Some(Arc::new(filter)),
                limit: q.limit,
                offset: q.offset,
            },
        )
        .await?;
    let base = base_url(&headers);
    let mut links = vec![
        link(
            page_url(&base, &layer, &q.keep, q.offset),
            "self",
            GEOJSON,
            "This page",
        ),
        link(
            format!("{base}/collections/{layer}"),
            "collection",
            "application/json",
            "The collection",
        ),
    ];
    if let Some(next) = page.next_offset {
        links.push(link(
            page_url(&base, &layer, &q.keep, next),
            "next",
            GEOJSON,
            "Next page",
        ));
    }
    if q.offset > 0 {
        links.push(link(
            page_url(&base, &layer, &q.keep, q.offset.saturating_sub(q.limit)),
            "prev",
            GEOJSON,
            "Previous page",
        ));
    }
    let body = json!({
        "type": "FeatureCollection",
        "timeStamp": format_time_ms(now_ms()),
        "numberReturned": page.features.len(),
        "features": page.features,
        "links": links,
        "geostream": { "seq": page.seq },
    });
    Ok(geojson_response(StatusCode::OK, &body))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

/// The entity tags an `If-Match` / `If-None-Match` header names, each as the version it
/// stands for, or `None` for a well-formed tag that is no version this server issued (it can
/// match nothing); `None` for `*`. A malformed list is a bad request.
fn header_versions(
    headers: &HeaderMap,
    name: header::HeaderName,
) -> Result<Option<Vec<Option<u64>>>> {
    let Some(v) = headers.get(&name) else {
        return Ok(Some(Vec::new()));
    };
    let s = v
        .to_str()
        .map_err(|_| ServerError::invalid(format!("{name}: not ASCII")))?;
    if s.trim() == "*" {
        return Ok(None);
    }
    s.split(',')
        .map(|t| {
            let t = t.trim();
            // entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE (RFC 9110 8.8.3)
            let opaque = t
                .strip_prefix("W/")
                .unwrap_or(t)
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|o| o.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b)))
                .ok_or_else(|| {
                    ServerError::invalid(format!(
                        "{name}: {t:?} is not an entity tag (a quoted string such as \"3\")"
                    ))
                })?;
            Ok(opaque.parse::<u64>().ok())
        })
        .collect::<Result<Vec<Option<u64>>>>()
        .map(Some)
}

/// The version a write is conditional on: the one `If-Match` names. A tag that names no
/// version this server issued matches no version (RFC 9110 13.1.1: the write fails with
/// 412), which version 0 expresses: versions start at 1. Two different versions cannot be
/// expressed as one expected version, so they are refused.
fn expected_version(headers: &HeaderMap) -> Result<Option<u64>> {
    match header_versions(headers, header::IF_MATCH)? {
        None => Ok(None),
        Some(tags) if tags.is_empty() => Ok(None),
        Some(tags) => {
            let mut versions: Vec<u64> = tags.into_iter().flatten().collect();
            versions.sort_unstable();
            versions.dedup();
            match versions[..] {
                [] => Ok(Some(0)),
                [v] => Ok(Some(v)),
                _ => Err(ServerError::invalid(
                    "If-Match: give one entity tag (the version you edited)",
                )),
            }
        }
    }
}

/// Who writes over HTTP: the client id a caller states (so it can edit what it locked over
/// WebSocket with the same id), else a shared anonymous HTTP client.
fn http_writer(headers: &HeaderMap, who: &Principal) -> Result<Holder> {
    let client = match headers.get("geostream-client-id") {
        None => "http".to_string(),
        Some(v) => {
            let s = v
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 128)
                .ok_or_else(|| {
                    ServerError::invalid("Geostream-Client-Id: 1 to 128 visible ASCII characters")
                })?;
            s.to_string()
        }
    };
    Ok(Holder {
        client,
        user: who.user.clone(),
    })
}

fn op_id(headers: &HeaderMap) -> Result<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| {
                ServerError::invalid("Idempotency-Key: 1 to 128 visible ASCII characters")
            }),
    }
}

fn parse_body(body: &std::result::Result<Bytes, BytesRejection>) -> Result<Value> {
    let body = body.as_ref().map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::LimitExceeded
        } else {
            ErrorCode::InvalidRequest
        };
        ServerError::new(code, e.body_text())
    })?;
    serde_json::from_slice(body).map_err(|e| {
        ServerError::new(
            ErrorCode::InvalidFeature,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

fn feature_response(
    status: StatusCode,
    base: &str,
    layer: &str,
    f: &Feature,
    replayed: bool,
) -> Response {
    let mut doc = serde_json::to_value(f).unwrap_or(Value::Null);
    doc["links"] = json!([
        link(
            format!("{base}/collections/{layer}/items/{}", enc(&f.id)),
            "self",
            GEOJSON,
            "This feature"
        ),
        link(
            format!("{base}/collections/{layer}"),
            "collection",
            "application/json",
            "The collection"
        ),
    ]);
    let mut r = geojson_response(status, &doc);
    r.headers_mut().insert(header::ETAG, etag(f.version));
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// Percent-encodes an id for a URL path segment.
fn enc(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn item(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath((layer, id)): OgcPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    who.read_layer(&layer)?;
    let f = get_feature(&node, &layer, &id).await?;
    if let Some(tags) = header_versions(&headers, header::IF_NONE_MATCH)?
        && tags.contains(&Some(f.version))
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, etag(f.version));
        return Ok(r);
    }
    Ok(feature_response(
        StatusCode::OK,
        &base_url(&headers),
        &layer,
        &f,
        false,
    ))
}

async fn get_feature(node: &Node, layer: &str, id: &str) -> Result<Feature> {
    let fid = features::feature_id(
        &Value::String(id.to_string()),
        &node.config.layers.feature_limits(),
    )?;
    match node.store.get(layer, &fid).await? {
        Some(f) => Ok(f),
        None => {
            node.store.layer(layer).await?;
            Err(ServerError::new(
                ErrorCode::FeatureNotFound,
                format!("feature {fid:?} does not exist in layer {layer:?}"),
            ))
        }
    }
}

/// Applies one operation and answers with the feature after it.
async fn write(
    node: &Node,
    who: &Principal,
    layer: &str,
    op: WriteOp,
    headers: &HeaderMap,
    conditional: bool,
) -> Result<(Change, bool)> {
    let req = WriteRequest {
        layer: layer.to_string(),
        ops: vec![op],
        writer: http_writer(headers, who)?,
        op_id: op_id(headers)?,
    };
    let outcome = node
        .layers
        .apply(req)
        .await
        .map_err(|e| precondition(e, conditional))?;
    let replayed = outcome.replayed;
    let change = outcome
        .changes
        .into_iter()
        .next()
        .map(Arc::unwrap_or_clone)
        .ok_or_else(|| ServerError::Internal("a write produced no change".into()))?;
    Ok((change, replayed))
}

/// The answer to a request that repeats the `Idempotency-Key` of an earlier write: that
/// write's own answer (201 with the feature it created, 200 with the feature it changed, 204
/// when it deleted), marked `Idempotent-Replayed: true`, whatever this request's method. A
/// repeated key is not applied again, so the answer must not say this request was: a DELETE
/// repeating the key of a PUT answered 204 without the mark and deleted nothing, and a POST
/// repeating the key of a DELETE was a 500 (no feature to answer with). Found by
/// tests/http_fuzz.rs.
fn replayed_answer(base: &str, layer: &str, change: &Change) -> Response {
    match &change.new {
        Some(f) => {
            let status = if change.old.is_none() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            feature_response(status, base, layer, f, true)
        }
        None => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            r
        }
    }
}

/// A version conflict on a request with `If-Match` is a failed precondition (412); without
/// one, the layer required a version (428).
fn precondition(e: ServerError, conditional: bool) -> ServerError {
    let rpc = e.to_rpc();
    if rpc.code != ErrorCode::Conflict {
        return e;
    }
    let mut data = rpc.data.clone().unwrap_or_else(|| json!({}));
    if data.get("version_required").is_some() {
        return ServerError::Rpc(
            RpcError::new(
                ErrorCode::Conflict,
                "this layer requires the version you edited: send If-Match with the feature's ETag",
            )
            .with_data(data),
        );
    }
    if conditional && data.get("expected").is_some() {
        data["precondition"] = json!(true);
        return ServerError::Rpc(RpcError::new(rpc.code, rpc.message).with_data(data));
    }
    e
}

async fn create_item(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath(layer): OgcPath<String>,
    headers: HeaderMap,
    body: OgcBody,
) -> Result<Response> {
    who.write_layer(&layer)?;
    crate::guard::require_media_type(&headers, crate::guard::FEATURE_TYPES)?;
    let v = parse_body(&body.0)?;
    let op = features::create_op(&v, &node.config.layers.feature_limits())?;
    let (change, replayed) = write(&node, &who, &layer, op, &headers, false).await?;
    if replayed {
        return Ok(replayed_answer(&base_url(&headers), &layer, &change));
    }
    let f = change
        .new
        .ok_or_else(|| ServerError::Internal("an insert without a feature".into()))?;
    let base = base_url(&headers);
    let mut r = feature_response(StatusCode::CREATED, &base, &layer, &f, replayed);
    if let Ok(loc) =
        HeaderValue::from_str(&format!("{base}/collections/{layer}/items/{}", enc(&f.id)))
    {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(r)
}

async fn replace_item(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath((layer, id)): OgcPath<(String, String)>,
    headers: HeaderMap,
    body: OgcBody,
) -> Result<Response> {
    who.write_layer(&layer)?;
    crate::guard::require_media_type(&headers, crate::guard::FEATURE_TYPES)?;
    let v = parse_body(&body.0)?;
    let expected = expected_version(&headers)?;
    let op = features::replace_op(
        &Value::String(id),
        &v,
        expected,
        &node.config.layers.feature_limits(),
    )?;
    let (change, replayed) = write(&node, &who, &layer, op, &headers, expected.is_some()).await?;
    if replayed {
        return Ok(replayed_answer(&base_url(&headers), &layer, &change));
    }
    let created = change.old.is_none();
    let f = change
        .new
        .ok_or_else(|| ServerError::Internal("a replace without a feature".into()))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(feature_response(
        status,
        &base_url(&headers),
        &layer,
        &f,
        replayed,
    ))
}

async fn patch_item(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath((layer, id)): OgcPath<(String, String)>,
    headers: HeaderMap,
    body: OgcBody,
) -> Result<Response> {
    who.write_layer(&layer)?;
    crate::guard::require_media_type(&headers, crate::guard::PATCH_TYPES)?;
    let v = parse_body(&body.0)?;
    let Value::Object(mut obj) = v else {
        return Err(ServerError::new(
            ErrorCode::InvalidFeature,
            "a PATCH body is a JSON object with \"properties\" (a merge patch) and/or \"geometry\"",
        ));
    };
    let properties = match obj.remove("properties") {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(Value::Null) => Some(Map::new()),
        Some(_) => {
            return Err(ServerError::new(
                ErrorCode::InvalidFeature,
                "properties: must be an object (a JSON merge patch)",
            ));
        }
    };
    let geometry = obj.remove("geometry").map(Some);
    obj.remove("type");
    obj.remove("id");
    if let Some(k) = obj.keys().next() {
        return Err(ServerError::new(
            ErrorCode::InvalidFeature,
            format!("{k:?}: a PATCH may change only \"properties\" and \"geometry\""),
        ));
    }
    let expected = expected_version(&headers)?;
    let op = features::patch_op(
        &Value::String(id),
        properties,
        geometry,
        expected,
        &node.config.layers.feature_limits(),
    )?;
    let (change, replayed) = write(&node, &who, &layer, op, &headers, expected.is_some()).await?;
    if replayed {
        return Ok(replayed_answer(&base_url(&headers), &layer, &change));
    }
    let f = change
        .new
        .ok_or_else(|| ServerError::Internal("a patch without a feature".into()))?;
    Ok(feature_response(
        StatusCode::OK,
        &base_url(&headers),
        &layer,
        &f,
        replayed,
    ))
}

async fn delete_item(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    OgcPath((layer, id)): OgcPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    who.write_layer(&layer)?;
    let expected = expected_version(&headers)?;
    let op = features::delete_op(
        &Value::String(id),
        expected,
        &node.config.layers.feature_limits(),
    )?;
    let (change, replayed) = write(&node, &who, &layer, op, &headers, expected.is_some()).await?;
    if replayed {
        return Ok(replayed_answer(&base_url(&headers), &layer, &change));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_query_keeps_params_for_paging_and_rejects_unknown() {
        let q = parse_items_query(Some("bbox=1,2,3,4&limit=5&offset=10&filter=a%3D1")).unwrap();
        assert_eq!(q.limit, 5);
        assert_eq!(q.offset, 10);
        assert_eq!(q.spec.bbox, Some(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(q.spec.filter, Some(json!("a=1")));
        assert_eq!(
            page_url("http://h", "l", &q.keep, 15),
            "http://h/collections/l/items?bbox=1%2C2%2C3%2C4&limit=5&filter=a%3D1&offset=15"
        );
        assert!(parse_items_query(Some("colour=red")).is_err());
        assert!(parse_items_query(Some("limit=0")).is_err());
        assert!(parse_items_query(Some("limit=1&limit=2")).is_err());
        assert!(parse_items_query(Some("bbox=1,x,3,4")).is_err());
        assert!(parse_items_query(Some("filter-lang=cql2-text")).is_err());
        assert_eq!(
            parse_items_query(Some("limit=99999")).unwrap().limit,
            MAX_LIMIT
        );
    }

    #[test]
    fn entity_tags() {
        let mut h = HeaderMap::new();
        assert_eq!(expected_version(&h).unwrap(), None);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(expected_version(&h).unwrap(), Some(7));
        h.insert(header::IF_MATCH, HeaderValue::from_static("W/\"8\""));
        assert_eq!(expected_version(&h).unwrap(), Some(8));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"1\", \"2\""));
        assert!(expected_version(&h).is_err());
        h.insert(header::IF_MATCH, HeaderValue::from_static("abc"));
        assert!(expected_version(&h).is_err());
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"a b\""));
        assert!(expected_version(&h).is_err());
        // Well-formed tags this server never issued match no version: 412, not 400.
        h.insert(
            header::IF_MATCH,
            HeaderValue::from_static("\"stale-version\""),
        );
        assert_eq!(expected_version(&h).unwrap(), Some(0));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"x\", \"4\""));
        assert_eq!(expected_version(&h).unwrap(), Some(4));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(header_versions(&h, header::IF_NONE_MATCH).unwrap(), None);
    }

    #[test]
    fn ids_are_encoded_for_paths() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("x-1_2.3~"), "x-1_2.3~");
    }
}
