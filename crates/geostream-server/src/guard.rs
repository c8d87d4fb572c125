//! What protects the server from other web pages: the `Origin` rule (WebSocket upgrades, SSE
//! streams and every HTTP write) and the media types an HTTP write accepts.
//!
//! A browser sends some cross-site requests without asking first ("simple" requests: a POST
//! with `text/plain` or a form type). CORS only stops the page from reading the answer; the
//! write would already have happened. So a write whose `Origin` is not the server's own or
//! allowed is refused with 403, and a write must declare one of its documented JSON media
//! types (415 otherwise), which a simple request cannot.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use geostream_core::error::ErrorCode;

use crate::config::Config;
use crate::error::ServerError;

/// Media types of a GeoJSON feature body (create, replace).
pub const FEATURE_TYPES: &[&str] = &["application/geo+json", "application/json"];

/// Media types of a feature PATCH body.
pub const PATCH_TYPES: &[&str] = &[
    "application/merge-patch+json",
    "application/geo+json",
    "application/json",
];

/// Media types of a channel message body.
pub const JSON_TYPES: &[&str] = &["application/json"];

/// Refuses browsers on origins that may not use this server. Requests without `Origin` (not
/// from a browser) and pages of this server (same host) are allowed.
pub fn check_origin(config: &Config, headers: &HeaderMap) -> Result<(), ServerError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if origin_allowed(&config.http.allowed_origins, origin, headers) {
        return Ok(());
    }
    Err(ServerError::new(
        ErrorCode::Forbidden,
        format!("origin {origin:?} is not allowed (http.allowed_origins)"),
    ))
}

fn origin_allowed(allowed: &[String], origin: &str, headers: &HeaderMap) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same host: the origin's authority equals the Host the request was sent to.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or_default();
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// Middleware: every request that can change something (POST, PUT, PATCH, DELETE) passes the
/// origin rule before any handler runs.
pub async fn writes_from_allowed_origins(
    State(config): State<Arc<Config>>,
    req: Request,
    next: Next,
) -> Response {
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes && let Err(e) = check_origin(&config, req.headers()) {
        return e.into_response();
    }
    next.run(req).await
}

/// Checks that a write's body is declared as one of `accepted` (parameters such as
/// `charset` are ignored); 415 otherwise, naming the accepted types.
pub fn require_media_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ServerError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim());
    if declared.is_some_and(|d| accepted.iter().any(|a| a.eq_ignore_ascii_case(d))) {
        return Ok(());
    }
    Err(ServerError::MediaType(format!(
        "Content-Type {} is not accepted here; send {}",
        declared.map_or_else(|| "(none)".to_string(), |d| format!("{d:?}")),
        accepted.join(" or ")
    )))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, StatusCode};

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn media_types() {
        let ok = headers(&[(header::CONTENT_TYPE, "application/geo+json; charset=utf-8")]);
        assert!(require_media_type(&ok, FEATURE_TYPES).is_ok());
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let h = headers(&[(header::CONTENT_TYPE, bad)]);
            let r = require_media_type(&h, FEATURE_TYPES)
                .unwrap_err()
                .into_response();
            assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        assert!(require_media_type(&HeaderMap::new(), JSON_TYPES).is_err());
    }

    #[test]
    fn origins() {
        let cfg = Config::default();
        let same = headers(&[
            (header::ORIGIN, "http://127.0.0.1:8080"),
            (header::HOST, "127.0.0.1:8080"),
        ]);
        assert!(check_origin(&cfg, &same).is_ok());
        let foreign = headers(&[
            (header::ORIGIN, "http://evil.example"),
            (header::HOST, "127.0.0.1:8080"),
        ]);
        assert!(check_origin(&cfg, &foreign).is_err());
        assert!(check_origin(&cfg, &HeaderMap::new()).is_ok());
    }
}
