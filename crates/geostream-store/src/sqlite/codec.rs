//! Rows to values and back: features, changes, boxes. A row that does not decode is a
//! [`StoreError::Unavailable`] naming it, never a panic.

use geostream_core::feature::{BBox, Change, Feature, FeatureType, Geometry, format_time_ms};
use rusqlite::Row;
use serde_json::{Map, Value};

use crate::{Result, StoreError};

/// Columns of `features` that [`StoredFeature::from_row`] reads, in its order.
pub(crate) const FEATURE_COLUMNS: &str =
    "ord, fid, version, updated_ms, geometry, properties, minx, miny, maxx, maxy";

/// A feature row, decoded.
#[derive(Clone, Debug)]
pub(crate) struct StoredFeature {
    /// Rowid (creation order; the R-tree key).
    pub(crate) ord: i64,
    /// The feature.
    pub(crate) feature: Feature,
    /// Its bounding box as stored.
    pub(crate) bbox: Option<BBox>,
    /// The geometry's JSON as stored, reused when an edit keeps the geometry.
    pub(crate) geometry_json: Option<String>,
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("corrupt {what} in the database: {e}"))
}

impl StoredFeature {
    /// Decodes a row selected with [`FEATURE_COLUMNS`].
    pub(crate) fn from_row(row: &Row<'_>) -> Result<StoredFeature> {
        let raw = RawFeature::from_row(row).map_err(|e| corrupt("feature row", e))?;
        raw.decode()
    }
}

/// The columns of a feature row before JSON parsing.
struct RawFeature {
    ord: i64,
    fid: String,
    version: u64,
    updated_ms: u64,
    geometry: Option<String>,
    properties: String,
    bbox: [Option<f64>; 4],
}

impl RawFeature {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawFeature> {
        Ok(RawFeature {
            ord: row.get(0)?,
            fid: row.get(1)?,
            version: row.get(2)?,
            updated_ms: row.get(3)?,
            geometry: row.get(4)?,
            properties: row.get(5)?,
            bbox: [row.get(6)?, row.get(7)?, row.get(8)?, row.get(9)?],
        })
    }

    fn decode(self) -> Result<StoredFeature> {
        let what = || format!("feature {:?}", self.fid);
        let geometry: Option<Geometry> = match &self.geometry {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| corrupt(&what(), e))?),
            None => None,
        };
        let properties: Map<String, Value> =
            serde_json::from_str(&self.properties).map_err(|e| corrupt(&what(), e))?;
        let bbox = match self.bbox {
            [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
            [None, None, None, None] => None,
            _ => return Err(corrupt(&what(), "partial bounding box")),
        };
        Ok(StoredFeature {
            ord: self.ord,
            feature: Feature {
                kind: FeatureType::Feature,
                id: self.fid,
                geometry,
                properties,
                version: self.version,
                updated: format_time_ms(self.updated_ms),
            },
            bbox,
            geometry_json: self.geometry,
        })
    }
}

/// Decodes a change log body.
pub(crate) fn decode_change(body: &str) -> Result<Change> {
    serde_json::from_str(body).map_err(|e| corrupt("change", e))
}

/// Whether two boxes overlap, edges included. Both have `minx <= maxx`.
pub(crate) fn boxes_intersect(a: &BBox, b: &BBox) -> bool {
    a[0] <= b[2] && a[2] >= b[0] && a[1] <= b[3] && a[3] >= b[1]
}

/// A query box as boxes with `minx <= maxx`: two when it crosses the antimeridian
/// (`minx > maxx`, RFC 7946 5.2).
pub(crate) fn split_antimeridian(b: BBox) -> Vec<BBox> {
    if b[0] > b[2] {
        vec![[b[0], b[1], 180.0, b[3]], [-180.0, b[1], b[2], b[3]]]
    } else {
        vec![b]
    }
}

/// The boxes the R-tree must be searched with for a query box and a filter box (either
/// may be absent): `None` when nothing limits the search, an empty list when no feature can
/// match (the two do not overlap).
pub(crate) fn search_boxes(query: Option<BBox>, filter: Option<BBox>) -> Option<Vec<BBox>> {
    let parts = match (query, filter) {
        (None, None) => return None,
        (Some(q), None) => split_antimeridian(q),
        (None, Some(f)) => vec![f],
        (Some(q), Some(f)) => split_antimeridian(q)
            .into_iter()
            .filter_map(|p| {
                let i = [
                    p[0].max(f[0]),
                    p[1].max(f[1]),
                    p[2].min(f[2]),
                    p[3].min(f[3]),
                ];
                (i[0] <= i[2] && i[1] <= i[3]).then_some(i)
            })
            .collect(),
    };
    Some(parts)
}

/// Whether a feature's box passes the query box (exactly, in f64: the R-tree stores f32 and
/// rounds outwards, so its answers are candidates).
pub(crate) fn passes_query_box(query: Option<BBox>, feature: Option<BBox>) -> bool {
    match (query, feature) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(q), Some(f)) => split_antimeridian(q).iter().any(|p| boxes_intersect(p, &f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes() {
        assert!(
            boxes_intersect(&[0.0, 0.0, 1.0, 1.0], &[1.0, 1.0, 2.0, 2.0]),
            "touching edges count"
        );
        assert!(!boxes_intersect(
            &[0.0, 0.0, 1.0, 1.0],
            &[1.5, 0.0, 2.0, 2.0]
        ));
        assert_eq!(split_antimeridian([170.0, -10.0, -170.0, 10.0]).len(), 2);
        assert!(passes_query_box(
            Some([170.0, -10.0, -170.0, 10.0]),
            Some([-175.0, 0.0, -175.0, 0.0])
        ));
        assert!(!passes_query_box(
            Some([170.0, -10.0, -170.0, 10.0]),
            Some([0.0, 0.0, 0.0, 0.0])
        ));
        assert!(!passes_query_box(Some([0.0, 0.0, 1.0, 1.0]), None));
        assert_eq!(
            search_boxes(Some([0.0, 0.0, 10.0, 10.0]), Some([5.0, 5.0, 20.0, 20.0])),
            Some(vec![[5.0, 5.0, 10.0, 10.0]])
        );
        assert_eq!(
            search_boxes(Some([0.0, 0.0, 1.0, 1.0]), Some([5.0, 5.0, 20.0, 20.0])),
            Some(vec![])
        );
        assert_eq!(search_boxes(None, None), None);
    }
}
