//! Edits and the outbox that keeps them until the server has acknowledged them.
//!
//! Every edit gets an operation id (a UUID v7) when it enters the outbox. The server keeps
//! the result of each operation id, so sending the same edit again after a reconnect (when
//! the client cannot know whether the first attempt was applied) returns the first result
//! instead of applying it twice.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use geostream_core::api::{
    BatchOp, FeatureBatchParams, FeatureCreateParams, FeatureDeleteParams, FeaturePatchParams,
    FeatureReplaceParams, method,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ClientError, Result};

/// Distinguishes an absent member (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Value>>, D::Error> {
    Option::<Value>::deserialize(d).map(Some)
}

/// A change to a layer's features.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Edit {
    /// Creates a feature (`feature.create`).
    Create {
        /// The layer.
        layer: String,
        /// A GeoJSON Feature; without an `id` the server picks one.
        feature: Value,
    },
    /// Replaces a feature's geometry and properties (`feature.replace`).
    Replace {
        /// The layer.
        layer: String,
        /// The feature id.
        id: String,
        /// The new GeoJSON Feature.
        feature: Value,
        /// The version edited (required unless the layer is last-writer-wins).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Merges properties and/or sets the geometry (`feature.patch`).
    Patch {
        /// The layer.
        layer: String,
        /// The feature id.
        id: String,
        /// A JSON Merge Patch of the properties (`null` removes a property).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        properties: Option<Map<String, Value>>,
        /// A new geometry (`Some(None)` removes it).
        #[serde(
            default,
            deserialize_with = "double_option",
            skip_serializing_if = "Option::is_none"
        )]
        geometry: Option<Option<Value>>,
        /// The version edited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Deletes a feature (`feature.delete`).
    Delete {
        /// The layer.
        layer: String,
        /// The feature id.
        id: String,
        /// The version deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Several edits of one layer, all or nothing (`feature.batch`).
    Batch {
        /// The layer.
        layer: String,
        /// The operations, in order.
        ops: Vec<BatchOp>,
    },
}

impl Edit {
    /// A `Create` of `feature` (anything that serializes to a GeoJSON Feature, such as a
    /// `geojson::Feature` or a `serde_json::Value`).
    pub fn create(layer: impl Into<String>, feature: impl Serialize) -> Result<Edit> {
        Ok(Edit::Create {
            layer: layer.into(),
            feature: to_value(feature)?,
        })
    }

    /// A `Replace` of feature `id`, based on `version`.
    pub fn replace(
        layer: impl Into<String>,
        id: impl Into<String>,
        feature: impl Serialize,
        version: Option<u64>,
    ) -> Result<Edit> {
        Ok(Edit::Replace {
            layer: layer.into(),
            id: id.into(),
            feature: to_value(feature)?,
            version,
        })
    }

    /// A `Patch` of feature `id`'s properties, based on `version`.
    pub fn patch_properties(
        layer: impl Into<String>,
        id: impl Into<String>,
        properties: Map<String, Value>,
        version: Option<u64>,
    ) -> Edit {
        Edit::Patch {
            layer: layer.into(),
            id: id.into(),
            properties: Some(properties),
            geometry: None,
            version,
        }
    }

    /// A `Patch` setting feature `id`'s geometry (a GeoJSON geometry, `geojson::Geometry`,
    /// or `None` to remove it), based on `version`.
    pub fn patch_geometry(
        layer: impl Into<String>,
        id: impl Into<String>,
        geometry: Option<impl Serialize>,
        version: Option<u64>,
    ) -> Result<Edit> {
        Ok(Edit::Patch {
            layer: layer.into(),
            id: id.into(),
            properties: None,
            geometry: Some(geometry.map(to_value).transpose()?),
            version,
        })
    }

    /// A `Delete` of feature `id`, based on `version`.
    pub fn delete(layer: impl Into<String>, id: impl Into<String>, version: Option<u64>) -> Edit {
        Edit::Delete {
            layer: layer.into(),
            id: id.into(),
            version,
        }
    }

    /// The layer edited.
    pub fn layer(&self) -> &str {
        match self {
            Edit::Create { layer, .. }
            | Edit::Replace { layer, .. }
            | Edit::Patch { layer, .. }
            | Edit::Delete { layer, .. }
            | Edit::Batch { layer, .. } => layer,
        }
    }

    /// The protocol method.
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Edit::Create { .. } => method::FEATURE_CREATE,
            Edit::Replace { .. } => method::FEATURE_REPLACE,
            Edit::Patch { .. } => method::FEATURE_PATCH,
            Edit::Delete { .. } => method::FEATURE_DELETE,
            Edit::Batch { .. } => method::FEATURE_BATCH,
        }
    }

    /// The request params, carrying `op_id`.
    pub(crate) fn params(&self, op_id: &str) -> EditParams {
        let op_id = Some(op_id.to_string());
        match self.clone() {
            Edit::Create { layer, feature } => EditParams::Create(FeatureCreateParams {
                layer,
                feature,
                op_id,
            }),
            Edit::Replace {
                layer,
                id,
                feature,
                version,
            } => EditParams::Replace(FeatureReplaceParams {
                layer,
                id: Value::String(id),
                feature,
                version,
                op_id,
            }),
            Edit::Patch {
                layer,
                id,
                properties,
                geometry,
                version,
            } => EditParams::Patch(FeaturePatchParams {
                layer,
                id: Value::String(id),
                properties,
                geometry,
                version,
                op_id,
            }),
            Edit::Delete { layer, id, version } => EditParams::Delete(FeatureDeleteParams {
                layer,
                id: Value::String(id),
                version,
                op_id,
            }),
            Edit::Batch { layer, ops } => {
                EditParams::Batch(FeatureBatchParams { layer, ops, op_id })
            }
        }
    }
}

/// The params of an edit's request: the protocol's type for its method.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum EditParams {
    Create(FeatureCreateParams),
    Replace(FeatureReplaceParams),
    Patch(FeaturePatchParams),
    Delete(FeatureDeleteParams),
    Batch(FeatureBatchParams),
}

fn to_value(v: impl Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| ClientError::Decode(e.to_string()))
}

/// An edit waiting in the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Its operation id.
    pub op_id: String,
    /// The edit.
    pub edit: Edit,
}

/// What the outbox file holds.
#[derive(Serialize, Deserialize)]
struct OutboxFile {
    version: u32,
    client_id: String,
    entries: Vec<OutboxEntry>,
}

/// The edits not yet acknowledged, in the order they were made, optionally mirrored in a file.
pub(crate) struct Outbox {
    pub(crate) entries: VecDeque<OutboxEntry>,
    path: Option<PathBuf>,
}

impl Outbox {
    /// Opens the outbox: loads the file if there is one. Returns the client id stored in it.
    pub(crate) fn open(path: Option<PathBuf>) -> Result<(Outbox, Option<String>)> {
        let mut entries = VecDeque::new();
        let mut client_id = None;
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => {
                    let f: OutboxFile = serde_json::from_slice(&bytes)
                        .map_err(|e| ClientError::Outbox(format!("{}: {e}", p.display())))?;
                    entries = f.entries.into();
                    client_id = Some(f.client_id);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ClientError::Outbox(format!("{}: {e}", p.display()))),
            }
        }
        Ok((Outbox { entries, path }, client_id))
    }

    /// Writes the file (if any): to a temporary file, synced, then renamed over the old one,
    /// so a crash leaves either the old or the new outbox, never half of one.
    pub(crate) fn save(&self, client_id: &str) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let f = OutboxFile {
            version: 1,
            client_id: client_id.to_string(),
            entries: self.entries.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&f).map_err(|e| ClientError::Outbox(e.to_string()))?;
        write_atomically(path, &bytes)
            .map_err(|e| ClientError::Outbox(format!("{}: {e}", path.display())))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_carry_the_op_id_and_keep_null_geometry() {
        let e = Edit::patch_geometry("l", "a", None::<Value>, Some(3)).unwrap();
        let p = serde_json::to_value(e.params("op-1")).unwrap();
        assert_eq!(
            p,
            json!({"layer": "l", "id": "a", "version": 3, "geometry": null, "op_id": "op-1"})
        );
        let e = Edit::delete("l", "a", None);
        assert_eq!(
            serde_json::to_value(e.params("x")).unwrap(),
            json!({"layer": "l", "id": "a", "op_id": "x"})
        );
    }

    #[test]
    fn outbox_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("gs-outbox-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outbox.json");
        let (mut o, id) = Outbox::open(Some(path.clone())).unwrap();
        assert!(id.is_none());
        let edits = [
            Edit::patch_geometry("l", "a", None::<Value>, Some(3)).unwrap(),
            Edit::patch_properties("l", "b", Map::new(), None),
            Edit::create(
                "l",
                json!({"type": "Feature", "geometry": null, "properties": {}}),
            )
            .unwrap(),
        ];
        for (i, e) in edits.iter().enumerate() {
            o.entries.push_back(OutboxEntry {
                op_id: format!("op{i}"),
                edit: e.clone(),
            });
        }
        o.save("me").unwrap();
        let (back, id) = Outbox::open(Some(path)).unwrap();
        assert_eq!(id.as_deref(), Some("me"));
        assert_eq!(
            serde_json::to_value(&back.entries).unwrap(),
            serde_json::to_value(&o.entries).unwrap()
        );
        // `None` and `Some(None)` geometry stay distinct.
        assert!(matches!(
            &back.entries[0].edit,
            Edit::Patch {
                geometry: Some(None),
                ..
            }
        ));
        assert!(matches!(
            &back.entries[1].edit,
            Edit::Patch { geometry: None, .. }
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
