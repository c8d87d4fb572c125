//! HTTP routes: health, metrics, channel publish / history / presence, and the transports'
//! entry points. Every error is a JSON body `{"error": {"code", "name", "message"}}`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use geostream_core::api::{ChannelHistoryParams, Position};
use geostream_core::error::ErrorCode;
use geostream_core::payload::Payload;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::Principal;
use crate::error::{ServerError, http_error};
use crate::node::Node;
use crate::{ogc, sse, tile_routes, web, ws};

/// Builds the router.
pub fn router(node: Arc<Node>) -> Router {
    let max_body = node.config.websocket.max_frame_bytes + 1024;
    Router::new()
        .route("/", get(landing))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/channels/{name}/messages", post(publish).get(history))
        .route("/v1/channels/{name}/presence", get(presence))
        .route("/v1/geofences", post(fence_create).get(fence_list))
        .route("/v1/geofences/{name}", get(fence_get).delete(fence_delete))
        .merge(tile_routes::routes())
        .merge(ogc::routes())
        .merge(web::routes())
        .fallback(not_found)
        // After every route is merged: it applies to the routes registered before it.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            node.config.clone(),
            crate::guard::writes_from_allowed_origins,
        ))
        .layer(cors(&node.config.http.allowed_origins))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            time_limit,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(node)
}

/// The landing page: JSON for API clients (OGC API - Features landing page).
async fn landing(node: State<Arc<Node>>, headers: axum::http::HeaderMap) -> Response {
    if web::wants_html(&headers) {
        return web::index(node, headers).await;
    }
    Json(ogc::landing_page(&headers)).into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if !node.sessions.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response()
    } else {
        Json(json!({ "status": "ready" })).into_response()
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let sessions = node.sessions.count() as f64;
    let mut text = node.metrics.render(
        node.hub.stats(),
        &[(
            "geostream_node_sessions",
            "Sessions registered on this node.",
            sessions,
        )],
    );
    node.geofences.render_metrics(&mut text);
    node.tiles.render_metrics(&mut text);
    node.layers.render_metrics(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    http_error(ErrorCode::MethodNotFound, "no such endpoint")
}

/// A route that exists, asked with a method it does not have. axum's own answer is a 405
/// with an empty body; every HTTP error is documented as the JSON error body (found by
/// tests/http_fuzz.rs). axum still adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method) -> Response {
    let mut r = http_error(
        ErrorCode::MethodNotFound,
        format!("this endpoint does not answer {method}"),
    );
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

fn path_error(e: PathRejection) -> Response {
    http_error(ErrorCode::InvalidParams, format!("invalid path: {e}"))
}

fn body_error(e: BytesRejection) -> Response {
    let status = e.status();
    let mut r = http_error(
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::LimitExceeded
        } else {
            ErrorCode::InvalidRequest
        },
        e.body_text(),
    );
    *r.status_mut() = status;
    r
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

async fn publish(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    headers: axum::http::HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let r = async {
        let Path(name) = name.map_err(path_error)?;
        who.publish_channel(&name)
            .map_err(IntoResponse::into_response)?;
        crate::guard::require_media_type(&headers, crate::guard::JSON_TYPES)
            .map_err(IntoResponse::into_response)?;
        let body = body.map_err(body_error)?;
        let parsed: PublishBody<'_> = serde_json::from_slice(&body).map_err(|e| {
            http_error(
                ErrorCode::ParseError,
                format!("the body must be a JSON object {{\"data\": ...}}: {e}"),
            )
        })?;
        let Some(data) = parsed.data else {
            return Err(http_error(
                ErrorCode::InvalidParams,
                "the body must have a \"data\" member",
            ));
        };
        // The same checks as a WebSocket publish (nesting depth included).
        let data = Payload::from_json(Bytes::copy_from_slice(data.get().as_bytes()))
            .map_err(|e| http_error(ErrorCode::InvalidParams, format!("data: {e}")))?;
        let pos: Position = node
            .streams
            .publish(&name, data)
            .await
            .map_err(|e| ServerError::from(e).into_response())?;
        Ok::<_, Response>(Json(pos).into_response())
    }
    .await;
    node.metrics.request("http.publish", r.is_ok());
    node.metrics.request_latency.observe(start.elapsed());
    r.unwrap_or_else(|e| e)
}

#[derive(Deserialize)]
struct HistoryQuery {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<u32>,
}

async fn history(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let r = async {
        let Path(channel) = name.map_err(path_error)?;
        who.read_channel(&channel)
            .map_err(IntoResponse::into_response)?;
        let Query(q) = q.map_err(|e| http_error(ErrorCode::InvalidParams, e.body_text()))?;
        let since = match (q.since, q.epoch) {
            (Some(offset), Some(epoch)) => Some(Position { offset, epoch }),
            (None, None) => None,
            _ => {
                return Err(http_error(
                    ErrorCode::InvalidParams,
                    "since and epoch go together",
                ));
            }
        };
        let result = node
            .streams
            .history(&ChannelHistoryParams {
                channel,
                since,
                limit: q.limit,
            })
            .await
            .map_err(|e| ServerError::from(e).into_response())?;
        Ok::<_, Response>(Json(result).into_response())
    }
    .await;
    node.metrics.request("http.history", r.is_ok());
    r.unwrap_or_else(|e| e)
}

async fn presence(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let r = async {
        let Path(channel) = name.map_err(path_error)?;
        who.read_channel(&channel)
            .map_err(IntoResponse::into_response)?;
        let clients = node
            .streams
            .presence(&channel)
            .map_err(|e| ServerError::from(e).into_response())?;
        Ok::<_, Response>(Json(json!({ "clients": clients })).into_response())
    }
    .await;
    node.metrics.request("http.presence", r.is_ok());
    r.unwrap_or_else(|e| e)
}

async fn fence_create(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        crate::guard::require_media_type(&headers, crate::guard::JSON_TYPES)
            .map_err(IntoResponse::into_response)?;
        let body = body.map_err(body_error)?;
        let spec: geostream_fence::FenceSpec = serde_json::from_slice(&body).map_err(|e| {
            http_error(
                ErrorCode::InvalidParams,
                format!("not a geofence definition: {e}"),
            )
        })?;
        let record = node
            .geofences
            .create(&who, spec)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok::<_, Response>(
            (
                StatusCode::CREATED,
                Json(node.geofences.created_view(&record)),
            )
                .into_response(),
        )
    }
    .await;
    node.metrics.request("fence.create", r.is_ok());
    r.unwrap_or_else(|e| e)
}

async fn fence_list(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
) -> Response {
    let r = node.geofences.list(&who).await;
    node.metrics.request("fence.list", r.is_ok());
    match r {
        Ok(fences) => Json(json!({ "fences": fences })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn fence_get(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let r = async {
        let Path(name) = name.map_err(path_error)?;
        node.geofences
            .get(&who, &name)
            .await
            .map(|v| Json(v).into_response())
            .map_err(IntoResponse::into_response)
    }
    .await;
    node.metrics.request("fence.get", r.is_ok());
    r.unwrap_or_else(|e| e)
}

async fn fence_delete(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let r = async {
        let Path(name) = name.map_err(path_error)?;
        node.geofences
            .delete(&who, &name)
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response())
            .map_err(IntoResponse::into_response)
    }
    .await;
    node.metrics.request("fence.delete", r.is_ok());
    r.unwrap_or_else(|e| e)
}

/// Resolves who is calling (a bearer token, an `access_token` query parameter, or
/// anonymous) once per request; handlers check rights with the `Principal` extension. A
/// token that is given and invalid is refused here, whatever the route.
async fn authenticate(
    State(node): State<Arc<Node>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match node.auth.from_request(req.headers(), req.uri().query()) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            node.metrics.request("http.auth", false);
            e.into_response()
        }
    }
}

/// Answers 504 when a request takes longer than `http.request_timeout_secs` to produce its
/// response (streams such as SSE produce theirs at once).
async fn time_limit(
    State(node): State<Arc<Node>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = std::time::Duration::from_secs(node.config.http.request_timeout_secs);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => http_error(
            ErrorCode::Timeout,
            format!("the request took longer than {} s", limit.as_secs()),
        ),
    }
}

/// CORS for the HTTP API: the configured origins may call it from their pages.
fn cors(allowed: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origin = if allowed.iter().any(|a| a == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|a| a.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("geostream-client-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}
