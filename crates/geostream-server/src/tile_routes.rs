//! Tile endpoints (XYZ with TileJSON):
//!
//! - `GET /v1/tiles`: the tile layers (vector layers of the store, configured raster ones);
//! - `GET /v1/tiles/{layer}.json`: a TileJSON 3.0 document;
//! - `GET /v1/tiles/{layer}/{z}/{x}/{y}.mvt` (vector) or `/{y}` (raster, any extension):
//!   the tile, with a strong `ETag`; `If-None-Match` answers 304;
//! - `PUT /v1/tiles/{layer}/{z}/{x}/{y}`: a new or replaced raster tile, acknowledged once
//!   durable, with its new version.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use geostream_core::error::ErrorCode;
use geostream_store::Store;
use geostream_tiles::{CachedTile, TileCompression, TileFormat};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use geostream_core::bus::{BusEvent, TileVersion};

use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::tiles::{TileLayer, key, parse_tile};

/// Media type of Mapbox Vector Tiles.
const MVT: &str = "application/vnd.mapbox-vector-tile";

/// Properties sampled per vector layer to describe its fields in TileJSON.
const FIELD_SAMPLE: usize = 500;

/// The tile routes, merged into the server's router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/tiles", get(list))
        .route("/v1/tiles/{name}", get(tilejson))
        .route("/v1/tiles/{layer}/{z}/{x}/{y}", get(get_tile).put(put_tile))
}

fn path_error(e: PathRejection) -> ServerError {
    ServerError::invalid(format!("invalid path: {e}"))
}

fn finish(r: Result<Response>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn list(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<crate::auth::Principal>,
) -> Response {
    let r = async {
        let mut layers: Vec<Value> = node
            .store
            .list_layers()
            .await?
            .into_iter()
            .filter(|l| node.tiles.raster(&l.name).is_none() && who.may_read_layer(&l.name))
            .map(|l| {
                json!({
                    "name": l.name,
                    "kind": "vector",
                    "tilejson": format!("/v1/tiles/{}.json", l.name),
                    "tiles": format!("/v1/tiles/{}/{{z}}/{{x}}/{{y}}.mvt", l.name),
                })
            })
            .collect();
        let mut rasters: Vec<&str> = node
            .tiles
            .raster_names()
            .filter(|n| who.may_read_layer(n))
            .collect();
        rasters.sort_unstable();
        for name in rasters {
            layers.push(json!({
                "name": name,
                "kind": "raster",
                "tilejson": format!("/v1/tiles/{name}.json"),
                "tiles": format!("/v1/tiles/{name}/{{z}}/{{x}}/{{y}}"),
            }));
        }
        Ok(Json(json!({ "layers": layers })).into_response())
    }
    .await;
    finish(r)
}

/// `http://host` from the request, so TileJSON URLs are absolute (MapLibre needs them so).
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()));
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    host.map_or_else(String::new, |h| format!("{proto}://{h}"))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Number(_) => "Number",
        Value::Bool(_) => "Boolean",
        _ => "String",
    }
}

async fn tilejson(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<crate::auth::Principal>,
    name: std::result::Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let Path(name) = name.map_err(path_error)?;
        let Some(layer) = name.strip_suffix(".json") else {
            return Err(ServerError::new(
                ErrorCode::MethodNotFound,
                format!("no such endpoint; the TileJSON of a layer is /v1/tiles/{name}.json"),
            ));
        };
        who.read_layer(layer)?;
        let base = origin(&headers);
        let tiles = &node.tiles;
        let doc = match tiles.layer(layer).await? {
            TileLayer::Vector(info) => {
                // Describe the fields from a sample of features.
                let page = node
                    .store
                    .query(
                        layer,
                        geostream_store::FeatureQuery {
                            bbox: None,
                            filter: None,
                            limit: FIELD_SAMPLE,
                            offset: 0,
                        },
                    )
                    .await?;
                let mut fields = Map::new();
                for f in &page.features {
                    for (k, v) in &f.properties {
                        if !v.is_null() && !fields.contains_key(k) {
                            fields.insert(k.clone(), json!(json_type(v)));
                        }
                    }
                }
                let max = tiles.cfg.max_zoom;
                let bounds = info.bbox.unwrap_or([-180.0, -85.051_129, 180.0, 85.051_129]);
                let mut doc = json!({
                    "tilejson": "3.0.0",
                    "name": info.title.clone().unwrap_or_else(|| info.name.clone()),
                    "version": "1.0.0",
                    "scheme": "xyz",
                    "format": "pbf",
                    "tiles": [format!("{base}/v1/tiles/{layer}/{{z}}/{{x}}/{{y}}.mvt")],
                    "minzoom": 0,
                    "maxzoom": max,
                    "bounds": bounds,
                    "center": [(bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0, 2],
                    "vector_layers": [{
                        "id": layer,
                        "fields": fields,
                        "minzoom": 0,
                        "maxzoom": max,
                    }],
                });
                if let Some(d) = &info.description {
                    doc["description"] = json!(d);
                    doc["vector_layers"][0]["description"] = json!(d);
                }
                doc
            }
            TileLayer::Raster(r) => {
                let info = r.archive.as_ref().map(|a| a.info().clone());
                let uploaded = tiles.uploads_summary(layer).await?;
                let (mut minz, mut maxz) = info
                    .as_ref()
                    .map_or((u8::MAX, 0), |i| (i.min_zoom, i.max_zoom));
                if let Some((a, b)) = uploaded {
                    minz = minz.min(a);
                    maxz = maxz.max(b);
                }
                if minz > maxz {
                    (minz, maxz) = (0, 0);
                }
                let bounds = info
                    .as_ref()
                    .and_then(|i| i.bounds)
                    .filter(|_| uploaded.is_none())
                    .map_or([-180.0, -85.051_129, 180.0, 85.051_129], |b| {
                        [b.west, b.south, b.east, b.north]
                    });
                let format = match &r.format {
                    TileFormat::Png => "png",
                    TileFormat::Jpeg => "jpg",
                    TileFormat::Webp => "webp",
                    TileFormat::Avif => "avif",
                    TileFormat::Mvt => "pbf",
                    _ => "unknown",
                };
                let mut doc = json!({
                    "tilejson": "3.0.0",
                    "name": info.as_ref().and_then(|i| i.name.clone()).unwrap_or_else(|| layer.to_owned()),
                    "version": "1.0.0",
                    "scheme": "xyz",
                    "format": format,
                    "tiles": [format!("{base}/v1/tiles/{layer}/{{z}}/{{x}}/{{y}}")],
                    "minzoom": minz,
                    "maxzoom": maxz,
                    "bounds": bounds,
                    "center": [(bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0, minz],
                });
                if let Some(a) = info.as_ref().and_then(|i| i.attribution.clone()) {
                    doc["attribution"] = json!(a);
                }
                doc
            }
        };
        Ok(Json(doc).into_response())
    }
    .await;
    finish(r)
}

/// Whether an `If-None-Match` header matches `etag` (strong or weak comparison, `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn tile_response(
    headers: &HeaderMap,
    c: &CachedTile,
    content_type: &'static str,
    gzip: bool,
) -> Response {
    let etag = HeaderValue::from_str(&c.etag).unwrap_or(HeaderValue::from_static("\"0\""));
    // Tiles change live: caches must revalidate (cheap with the ETag).
    let cache = HeaderValue::from_static("no-cache");
    if not_modified(headers, &c.etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    let mut r = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
        ],
        Body::from(c.bytes.clone()),
    )
        .into_response();
    if gzip {
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r.headers_mut().insert(
        "x-tile-version",
        HeaderValue::from_str(&c.version.to_string()).unwrap_or(HeaderValue::from_static("0")),
    );
    r
}

type TilePath = Path<(String, String, String, String)>;

async fn get_tile(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<crate::auth::Principal>,
    path: std::result::Result<TilePath, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let Path((layer, z, x, y)) = path.map_err(path_error)?;
        who.read_layer(&layer)?;
        let (t, ext) = parse_tile(&z, &x, &y)?;
        let tiles = &node.tiles;
        match tiles.layer(&layer).await? {
            TileLayer::Vector(_) => {
                if let Some(e) = ext.as_deref()
                    && e != "mvt"
                    && e != "pbf"
                {
                    return Err(ServerError::invalid(format!(
                        "{layer:?} is a vector layer: its tiles are .mvt, not .{e}"
                    )));
                }
                let c = tiles.tile(&layer, t).await?.ok_or_else(|| {
                    ServerError::Internal("a vector tile render returned nothing".into())
                })?;
                Ok(tile_response(&headers, &c, MVT, false))
            }
            TileLayer::Raster(r) => {
                let c = tiles.tile(&layer, t).await?.ok_or_else(|| {
                    ServerError::new(
                        ErrorCode::TileNotFound,
                        format!("raster layer {layer:?} has no tile {z}/{x}/{}", t.y()),
                    )
                })?;
                Ok(tile_response(
                    &headers,
                    &c,
                    r.content_type(),
                    r.compression == TileCompression::Gzip,
                ))
            }
        }
    }
    .await;
    finish(r)
}

/// The image format of uploaded bytes, by their signature.
fn sniff(b: &[u8]) -> Option<TileFormat> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(TileFormat::Png)
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(TileFormat::Jpeg)
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some(TileFormat::Webp)
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" && (&b[8..12] == b"avif" || &b[8..12] == b"avis")
    {
        Some(TileFormat::Avif)
    } else {
        None
    }
}

async fn put_tile(
    State(node): State<Arc<Node>>,
    Extension(who): Extension<crate::auth::Principal>,
    path: std::result::Result<TilePath, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let Path((layer, z, x, y)) = path.map_err(path_error)?;
        who.write_layer(&layer)?;
        let (t, _) = parse_tile(&z, &x, &y)?;
        let tiles = &node.tiles;
        let max = tiles.cfg.max_upload_bytes;
        let raster = match tiles.layer(&layer).await? {
            TileLayer::Vector(_) => {
                return Err(ServerError::invalid(format!(
                    "{layer:?} is a vector layer: its tiles are made from its features; edit those instead"
                )));
            }
            TileLayer::Raster(r) => r,
        };
        let too_large = || {
            ServerError::new(
                ErrorCode::LimitExceeded,
                format!("the tile is larger than tiles.max_upload_bytes ({max} bytes)"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let data: Bytes = http_body_util::Limited::new(body, max)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    too_large()
                } else {
                    ServerError::new(ErrorCode::InvalidRequest, format!("cannot read the body: {e}"))
                }
            })?
            .to_bytes();
        if data.is_empty() {
            return Err(ServerError::invalid("the body is empty; send the tile bytes"));
        }
        let expected = &raster.format;
        if matches!(
            expected,
            TileFormat::Png | TileFormat::Jpeg | TileFormat::Webp | TileFormat::Avif
        ) && sniff(&data).as_ref() != Some(expected)
        {
            return Err(ServerError::invalid(format!(
                "raster layer {layer:?} holds {} tiles; the body is not one",
                expected.content_type().unwrap_or("image")
            )));
        }
        let (c, replaced) = tiles.upload(&layer, t, data).await?;
        node.streams
            .publish_layer_event(
                &layer,
                BusEvent::TileUploaded(TileVersion {
                    z: t.z(),
                    x: t.x(),
                    y: t.y(),
                    version: c.version,
                }),
            )
            .await;
        let status = if replaced {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        let etag = HeaderValue::from_str(&c.etag).unwrap_or(HeaderValue::from_static("\"0\""));
        Ok((
            status,
            [(header::ETAG, etag)],
            Json(json!({
                "layer": layer,
                "tile": key(t),
                "version": c.version,
                "etag": &*c.etag,
                "bytes": c.bytes.len(),
            })),
        )
            .into_response())
    }
    .await;
    finish(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, "\"3-abc\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"1-x\", W/\"3-abc\""),
        );
        assert!(not_modified(&h, "\"3-abc\""));
        assert!(!not_modified(&h, "\"4-abc\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "\"9-0\""));
    }

    #[test]
    fn image_signatures() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some(TileFormat::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(TileFormat::Jpeg));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(TileFormat::Webp));
        assert_eq!(sniff(b"GIF89a"), None);
    }
}
