//! Bulk import of GeoJSON into a layer: features given inline (the `geostream import`
//! command sends them in chunks) or read from a file in the server's import directory
//! (a FeatureCollection or newline-delimited GeoJSON, optionally Zstandard-compressed).
//!
//! Features are validated one by one (an invalid feature is refused with its reason and
//! the rest go on) and written in batches of `batch_size`, each one transaction. Progress is
//! reported after every batch; cancelling stops after the batch being written (batches
//! already written stay).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use geostream_core::api::{ImportResult, LayerImportParams, Rejected};
use geostream_core::error::ErrorCode;
use geostream_store::{Holder, LayerSpec, Store, StoreError, WriteOp, WriteRequest};
use serde_json::Value;

use crate::error::{Result, ServerError};
use crate::features;
use crate::node::Node;

/// Most refusals listed in a result.
const MAX_LISTED: usize = 100;

/// Largest import file, after decompression.
const MAX_FILE_BYTES: u64 = 2 << 30;

/// Runs an import; `progress(done, total)` is called after each batch.
pub(crate) async fn run(
    node: &Node,
    p: LayerImportParams,
    writer: Holder,
    progress: impl Fn(u64, Option<u64>),
) -> Result<ImportResult> {
    geostream_core::api::validate_name("layer", &p.layer).map_err(ServerError::invalid)?;
    let features: Vec<Value> = match (p.features, p.path) {
        (Some(f), None) => f,
        (None, Some(path)) => {
            let file = resolve(node, &path)?;
            tokio::task::spawn_blocking(move || read_file(&file))
                .await
                .map_err(|e| ServerError::Internal(e.to_string()))??
        }
        _ => return Err(ServerError::invalid("give either features or path")),
    };
    match node.store.layer(&p.layer).await {
        Ok(_) => {}
        Err(StoreError::LayerNotFound(_)) => {
            node.layers
                .create(LayerSpec {
                    name: p.layer.clone(),
                    ..Default::default()
                })
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    let batch_size = p.batch_size.unwrap_or(1000).clamp(1, 10_000);
    let limits = node.config.layers.feature_limits();
    let total = features.len() as u64;
    let mut result = ImportResult::default();
    let reject = |result: &mut ImportResult, index: u64, id: Option<String>, reason: String| {
        result.rejected += 1;
        if result.rejections.len() < MAX_LISTED {
            result.rejections.push(Rejected { index, id, reason });
        }
    };
    let mut done = 0u64;
    for chunk in features.chunks(batch_size) {
        let mut ops: Vec<(u64, WriteOp)> = Vec::with_capacity(chunk.len());
        for (i, f) in chunk.iter().enumerate() {
            let index = done + i as u64;
            match features::create_op(f, &limits) {
                Ok(op) => ops.push((index, op)),
                Err(e) => reject(
                    &mut result,
                    index,
                    f.get("id").map(id_text),
                    e.to_rpc().message.to_string(),
                ),
            }
        }
        // A batch is all or nothing: when one feature is refused by the store (its id is
        // taken), take it out and write the rest.
        while !ops.is_empty() {
            let req = WriteRequest {
                layer: p.layer.clone(),
                ops: ops.iter().map(|(_, op)| op.clone()).collect(),
                writer: writer.clone(),
                op_id: None,
            };
            match node.layers.apply(req).await {
                Ok(outcome) => {
                    result.imported += outcome.changes.len() as u64;
                    if let Some(c) = outcome.changes.last() {
                        result.seq = c.seq;
                    }
                    break;
                }
                Err(ServerError::Store(StoreError::FeatureExists { id, .. })) => {
                    // Re-importing a file hits many taken ids: find them all with reads
                    // rather than one failed transaction per id.
                    let mut kept = Vec::with_capacity(ops.len());
                    for (index, op) in ops.drain(..) {
                        let taken = match &op {
                            WriteOp::Create { feature } => match feature.id.as_deref() {
                                Some(fid) if fid != id => {
                                    node.store.get(&p.layer, fid).await?.is_some()
                                }
                                _ => false,
                            },
                            _ => false,
                        };
                        if taken {
                            let fid = match &op {
                                WriteOp::Create { feature } => feature.id.clone(),
                                _ => None,
                            };
                            let reason = format!(
                                "a feature with id {:?} already exists",
                                fid.as_deref().unwrap_or_default()
                            );
                            reject(&mut result, index, fid, reason);
                        } else {
                            kept.push((index, op));
                        }
                    }
                    ops = kept;
                    let Some(pos) = ops.iter().position(|(_, op)| matches!(op, WriteOp::Create { feature } if feature.id.as_deref() == Some(id.as_str()))) else {
                        return Err(ServerError::Internal(format!("import: the store refused id {id:?} that is not in the batch")));
                    };
                    let (index, _) = ops.remove(pos);
                    reject(
                        &mut result,
                        index,
                        Some(id.clone()),
                        format!("a feature with id {id:?} already exists"),
                    );
                }
                Err(e) => return Err(e),
            }
        }
        done += chunk.len() as u64;
        progress(done, Some(total));
    }
    if result.seq == 0 {
        result.seq = node.store.layer(&p.layer).await?.seq;
    }
    Ok(result)
}

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Resolves a path under the import directory, refusing anything that leaves it.
fn resolve(node: &Node, path: &str) -> Result<PathBuf> {
    let dir = node.config.data_path(&node.config.import.dir);
    let dir = dir.canonicalize().map_err(|_| {
        ServerError::invalid(format!(
            "the import directory {} does not exist on the server",
            dir.display()
        ))
    })?;
    let p = dir
        .join(path)
        .canonicalize()
        .map_err(|_| ServerError::invalid(format!("no file {path:?} in the import directory")))?;
    if !p.starts_with(&dir) || !p.is_file() {
        return Err(ServerError::invalid(format!(
            "{path:?} is not a file in the import directory"
        )));
    }
    Ok(p)
}

/// Reads GeoJSON features from a FeatureCollection or newline-delimited file (`.zst` too).
pub fn read_file(path: &Path) -> Result<Vec<Value>> {
    let f = std::fs::File::open(path)
        .map_err(|e| ServerError::invalid(format!("cannot open {}: {e}", path.display())))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let reader: Box<dyn Read> = if name.ends_with(".zst") {
        Box::new(
            zstd::stream::read::Decoder::new(f)
                .map_err(|e| ServerError::invalid(format!("{}: {e}", path.display())))?,
        )
    } else {
        Box::new(f)
    };
    read_features(reader.take(MAX_FILE_BYTES), &name)
}

/// Parses features from GeoJSON text: a FeatureCollection, a single Feature, or one
/// Feature per line.
pub fn read_features(reader: impl Read, name: &str) -> Result<Vec<Value>> {
    let bad = |m: String| ServerError::new(ErrorCode::InvalidFeature, m);
    let mut r = BufReader::new(reader);
    let line_delimited = [".ndjson", ".geojsonl", ".geojsonseq", ".jsonl", ".geojsons"]
        .iter()
        .any(|ext| name.trim_end_matches(".zst").ends_with(ext));
    if line_delimited {
        let mut out = Vec::new();
        let mut line = String::new();
        let mut n = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| bad(e.to_string()))? == 0 {
                break;
            }
            n += 1;
            // RFC 8142 text sequences start records with an RS character.
            let t = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{1e}');
            if t.is_empty() {
                continue;
            }
            out.push(serde_json::from_str(t).map_err(|e| bad(format!("line {n}: {e}")))?);
        }
        return Ok(out);
    }
    let v: Value = serde_json::from_reader(r).map_err(|e| bad(format!("not GeoJSON: {e}")))?;
    match v.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => match v {
            Value::Object(mut o) => match o.remove("features") {
                Some(Value::Array(f)) => Ok(f),
                _ => Err(bad("a FeatureCollection needs a features array".into())),
            },
            _ => Err(bad("not a FeatureCollection".into())),
        },
        Some("Feature") => Ok(vec![v]),
        other => Err(bad(format!(
            "expected a FeatureCollection or Feature, found type {other:?}"
        ))),
    }
}
