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
