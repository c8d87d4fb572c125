//! From wire params to store operations and filters: validation of features and filters,
//! with errors that name what is wrong. Shared by WebSocket methods, the OGC API and imports.

use std::sync::Arc;

use geostream_core::api::{BatchOp, FilterSpec};
use geostream_core::error::ErrorCode;
use geostream_core::feature::{
    self, FeatureLimits, ValidFeature, normalize_id, validate_feature, validate_geometry,
};
use geostream_filter::{AttributeFilter, Filter, Limits, SpatialFilter, TemporalFilter};
use geostream_store::WriteOp;
use serde_json::Value;

use crate::error::{Result, ServerError};

fn invalid_feature(e: feature::InvalidFeature) -> ServerError {
    ServerError::new(ErrorCode::InvalidFeature, e.0)
}

fn invalid_filter(m: impl std::fmt::Display) -> ServerError {
    ServerError::new(ErrorCode::InvalidFilter, m.to_string())
}

/// Builds a filter from what a client stated. At most one spatial part may be given.
pub fn build_filter(spec: &FilterSpec, limits: &Limits) -> Result<Filter> {
    let spatial_parts = usize::from(spec.bbox.is_some())
        + usize::from(spec.geometry.is_some())
        + usize::from(spec.point.is_some());
    if spatial_parts > 1 {
        return Err(invalid_filter(
            "give one of bbox, geometry or point (with radius)",
        ));
    }
    let spatial = if let Some(b) = &spec.bbox {
        Some(SpatialFilter::from_bbox(b).map_err(invalid_filter)?)
    } else if let Some(g) = &spec.geometry {
        Some(SpatialFilter::from_geojson(g, limits).map_err(invalid_filter)?)
    } else if let Some(p) = &spec.point {
        let [lon, lat] = p[..] else {
            return Err(invalid_filter("point must be [lon, lat]"));
        };
        let Some(r) = spec.radius else {
            return Err(invalid_filter("point needs a radius in metres"));
        };
        Some(SpatialFilter::circle([lon, lat], r).map_err(invalid_filter)?)
    } else {
        if spec.radius.is_some() {
            return Err(invalid_filter("radius needs a point"));
        }
        None
    };
    let temporal = spec
        .datetime
        .as_deref()
        .map(TemporalFilter::parse)
        .transpose()
        .map_err(invalid_filter)?;
    let attribute = match &spec.filter {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(AttributeFilter::parse_text(s, limits).map_err(invalid_filter)?)
        }
        Some(v @ Value::Object(_)) => {
            Some(AttributeFilter::parse_json(v, limits).map_err(invalid_filter)?)
        }
        Some(_) => {
            return Err(invalid_filter(
                "filter must be CQL2 text (a string) or CQL2-JSON (an object)",
            ));
        }
    };
    Ok(Filter {
        spatial,
        temporal,
        attribute,
    })
}

/// A feature id from params (a string or an integer).
pub fn feature_id(id: &Value, limits: &FeatureLimits) -> Result<String> {
    normalize_id(id, limits).map_err(invalid_feature)
}

/// Validates a feature for creation.
pub fn create_op(feature: &Value, limits: &FeatureLimits) -> Result<WriteOp> {
    Ok(WriteOp::Create {
        feature: validate_feature(feature, limits).map_err(invalid_feature)?,
    })
}

/// Validates a replacement; the feature's own id, if any, must match.
pub fn replace_op(
    id: &Value,
    feature: &Value,
    version: Option<u64>,
    limits: &FeatureLimits,
) -> Result<WriteOp> {
    let id = feature_id(id, limits)?;
    let f: ValidFeature = validate_feature(feature, limits).map_err(invalid_feature)?;
    if f.id.as_ref().is_some_and(|fid| *fid != id) {
        return Err(ServerError::new(
            ErrorCode::InvalidFeature,
            format!(
                "the feature's id {:?} differs from {id:?}",
                f.id.unwrap_or_default()
            ),
        ));
    }
    Ok(WriteOp::Replace {
        id,
        feature: f,
        expected: version,
    })
}

/// Validates a patch.
pub fn patch_op(
    id: &Value,
    properties: Option<serde_json::Map<String, Value>>,
    geometry: Option<Option<Value>>,
    version: Option<u64>,
    limits: &FeatureLimits,
) -> Result<WriteOp> {
    let id = feature_id(id, limits)?;
    let geometry = match geometry {
        None => None,
        Some(None) | Some(Some(Value::Null)) => Some(None),
        Some(Some(g)) => Some(Some(
            validate_geometry(&g, limits).map_err(invalid_feature)?,
        )),
    };
    if let Some(p) = &properties {
        let n = feature::json_len(p);
        if n > limits.max_property_bytes {
            return Err(ServerError::new(
                ErrorCode::InvalidFeature,
                format!(
                    "properties: {n} bytes of JSON; at most {} are allowed",
                    limits.max_property_bytes
                ),
            ));
        }
    }
    if properties.is_none() && geometry.is_none() {
        return Err(ServerError::invalid(
            "a patch needs properties and/or geometry",
        ));
    }
    Ok(WriteOp::Patch {
        id,
        properties,
        geometry,
        expected: version,
    })
}

/// Validates a delete.
pub fn delete_op(id: &Value, version: Option<u64>, limits: &FeatureLimits) -> Result<WriteOp> {
    Ok(WriteOp::Delete {
        id: feature_id(id, limits)?,
        expected: version,
    })
}

/// Validates one operation of a batch.
pub fn batch_op(op: &BatchOp, limits: &FeatureLimits) -> Result<WriteOp> {
    match op {
        BatchOp::Create { feature } => create_op(feature, limits),
        BatchOp::Replace {
            id,
            feature,
            version,
        } => replace_op(id, feature, *version, limits),
        BatchOp::Patch {
            id,
            properties,
            geometry,
            version,
        } => patch_op(id, properties.clone(), geometry.clone(), *version, limits),
        BatchOp::Delete { id, version } => delete_op(id, *version, limits),
    }
}

/// Shares a filter; the hub and the store hold it by reference.
pub fn shared(f: Filter) -> Arc<Filter> {
    Arc::new(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> FilterSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn filters_from_specs() {
        let l = Limits::default();
        let f = build_filter(&spec(json!({"bbox": [0, 0, 10, 10], "datetime": "2020-01-01T00:00:00Z/..", "filter": "speed > 3"})), &l).unwrap();
        assert!(f.spatial.is_some() && f.temporal.is_some() && f.attribute.is_some());
        assert!(
            build_filter(&spec(json!({"point": [1, 2], "radius": 500})), &l)
                .unwrap()
                .spatial
                .is_some()
        );
        assert!(
            build_filter(
                &spec(json!({"filter": {"op": ">", "args": [{"property": "a"}, 1]}})),
                &l
            )
            .unwrap()
            .attribute
            .is_some()
        );
        for (bad, needle) in [
            (json!({"bbox": [0, 0, 10, 91]}), "91"),
            (
                json!({"bbox": [0, 0, 1, 1], "point": [0, 0], "radius": 1}),
                "one of",
            ),
            (json!({"point": [0, 0]}), "radius"),
            (json!({"radius": 5}), "point"),
            (json!({"filter": "speed >>> 3"}), ""),
            (json!({"filter": 5}), "CQL2"),
            (json!({"datetime": "yesterday"}), ""),
        ] {
            let e = build_filter(&spec(bad.clone()), &l).unwrap_err().to_rpc();
            assert_eq!(e.code, ErrorCode::InvalidFilter, "{bad}");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn ops_validate() {
        let l = FeatureLimits::default();
        assert!(
            replace_op(
                &json!("a"),
                &json!({"type": "Feature", "id": "b", "geometry": null}),
                Some(1),
                &l
            )
            .is_err()
        );
        assert!(patch_op(&json!("a"), None, None, Some(1), &l).is_err());
        assert!(
            matches!(patch_op(&json!(7), None, Some(None), Some(1), &l).unwrap(), WriteOp::Patch { id, geometry: Some(None), .. } if id == "7")
        );
        let e = create_op(
            &json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 95]}}),
            &l,
        )
        .unwrap_err()
        .to_rpc();
        assert_eq!(e.code, ErrorCode::InvalidFeature);
        assert!(e.message.contains("latitude 95"));
    }
}
