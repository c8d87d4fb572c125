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

/// Where `geostream import` takes each feature's id from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdSource {
    /// The file's `id` members (features without one get an id from the server).
    File,
    /// This property (a string or number); features without it get an id from the server.
    Property(String),
    /// None: the server assigns every feature a new id (UUID v7).
    Generate,
}

/// What `geostream import` does when two features of a file have the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DuplicatePolicy {
    /// Import nothing and list the duplicates.
    Fail,
    /// Keep the first feature of each id, leave out the later ones.
    Skip,
    /// Keep the last feature of each id (in the place of the first).
    Replace,
}

impl DuplicatePolicy {
    /// The option's value, as typed.
    pub fn name(self) -> &'static str {
        match self {
            DuplicatePolicy::Fail => "fail",
            DuplicatePolicy::Skip => "skip",
            DuplicatePolicy::Replace => "replace",
        }
    }
}

/// A feature's place in its file: its position (0-based) and the line it starts on (1-based;
/// 0 when unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Position among the file's features, from 0.
    pub index: usize,
    /// Line of the file where the feature starts, from 1; 0 when not known.
    pub line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {} (feature {})", self.line, self.index + 1)
        } else {
            write!(f, "feature {}", self.index + 1)
        }
    }
}

/// Two features of a file with the same id, and which of them is imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateId {
    /// The id.
    pub id: String,
    /// The feature imported (under `fail`: the first, though nothing is imported).
    pub kept: Place,
    /// The feature left out.
    pub dropped: Place,
}

/// A file's features ready to send: ids set as chosen, duplicates resolved by the policy.
#[derive(Debug)]
pub struct Prepared {
    /// The features to import, in file order.
    pub features: Vec<Value>,
    /// Where each of them is in the file.
    pub places: Vec<Place>,
    /// Ids found more than once, in file order of the later feature.
    pub duplicates: Vec<DuplicateId>,
    /// With [`IdSource::Property`]: features without that property (given server ids).
    pub without_property: usize,
}

/// Reads a GeoJSON file as [`read_file`] does, with the line each feature starts on (one
/// per feature; 0 where the layout does not tell).
pub fn read_file_with_lines(path: &Path) -> Result<(Vec<Value>, Vec<usize>)> {
    let raw = std::fs::read(path)
        .map_err(|e| ServerError::invalid(format!("cannot open {}: {e}", path.display())))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let text = if name.ends_with(".zst") {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(&raw[..])
            .and_then(|d| d.take(MAX_FILE_BYTES).read_to_end(&mut out))
            .map_err(|e| ServerError::invalid(format!("{}: {e}", path.display())))?;
        out
    } else {
        raw
    };
    let features = read_features(&text[..], &name)?;
    let line_delimited = [".ndjson", ".geojsonl", ".geojsonseq", ".jsonl", ".geojsons"]
        .iter()
        .any(|ext| name.trim_end_matches(".zst").ends_with(ext));
    let lines = if line_delimited {
        text.split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| l.iter().any(|&b| !b.is_ascii_whitespace() && b != 0x1e))
            .map(|(i, _)| i + 1)
            .collect()
    } else {
        feature_lines(&text)
    };
    let lines = if lines.len() == features.len() {
        lines
    } else {
        vec![0; features.len()]
    };
    Ok((features, lines))
}

/// The 1-based line on which each element of the top-level `features` array starts (for a
/// single Feature, line 1). Assumes valid JSON (it was parsed before).
fn feature_lines(text: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut line, mut depth) = (1usize, 0usize);
    let (mut in_str, mut escaped) = (false, false);
    let mut str_start = 0;
    let mut last_string: &[u8] = b"";
    let (mut in_features, mut expect_element) = (false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
                if depth == 1 {
                    last_string = &text[str_start..i];
                }
            }
            continue;
        }
        if b == b'\n' {
            line += 1;
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if in_features && depth == 2 && expect_element && b != b']' {
            out.push(line);
            expect_element = false;
        }
        match b {
            b'"' => {
                in_str = true;
                str_start = i + 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth == 2 && b == b'[' && last_string == b"features" {
                    in_features = true;
                    expect_element = true;
                }
            }
            b']' | b'}' => {
                if depth == 2 {
                    in_features = false;
                }
                depth = depth.saturating_sub(1);
            }
            b',' if in_features && depth == 2 => expect_element = true,
            _ => {}
        }
    }
    if out.is_empty() && text.iter().any(|b| !b.is_ascii_whitespace()) {
        // A single Feature.
        return vec![1];
    }
    out
}

/// Sets each feature's id from `ids` and resolves ids found more than once by `policy`.
/// Under [`DuplicatePolicy::Fail`] the duplicates are listed and the caller imports nothing.
pub fn prepare_ids(
    features: Vec<Value>,
    lines: &[usize],
    ids: &IdSource,
    policy: DuplicatePolicy,
) -> Prepared {
    let mut out = Prepared {
        features: Vec::with_capacity(features.len()),
        places: Vec::with_capacity(features.len()),
        duplicates: Vec::new(),
        without_property: 0,
    };
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for (index, mut f) in features.into_iter().enumerate() {
        let place = Place {
            index,
            line: lines.get(index).copied().unwrap_or(0),
        };
        let id = match ids {
            IdSource::File => f.get("id").filter(|v| !v.is_null()).map(id_text),
            IdSource::Generate => None,
            IdSource::Property(name) => {
                let v = f
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .filter(|v| v.is_string() || v.is_number())
                    .map(id_text);
                if v.is_none() {
                    out.without_property += 1;
                }
                v
            }
        };
        if let Value::Object(o) = &mut f {
            match &id {
                Some(id) if *ids != IdSource::File => {
                    o.insert("id".into(), Value::String(id.clone()));
                }
                None => {
                    o.remove("id");
                }
                _ => {}
            }
        }
        let Some(id) = id else {
            out.features.push(f);
            out.places.push(place);
            continue;
        };
        match seen.get(&id) {
            None => {
                seen.insert(id, out.features.len());
                out.features.push(f);
                out.places.push(place);
            }
            Some(&k) if policy == DuplicatePolicy::Replace => {
                out.duplicates.push(DuplicateId {
                    id,
                    kept: place,
                    dropped: out.places[k],
                });
                out.features[k] = f;
                out.places[k] = place;
            }
            Some(&k) => out.duplicates.push(DuplicateId {
                id,
                kept: out.places[k],
                dropped: place,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FC: &str = "{\"type\":\"FeatureCollection\",\"features\":[\n\
        {\"type\":\"Feature\",\"id\":\"a\",\"properties\":{\"n\":\"x [1]\"},\"geometry\":null},\n\
        {\"type\":\"Feature\",\"id\":\"b\",\"properties\":{\"n\":\"y\"},\"geometry\":null},\n\
        \n\
        {\"type\":\"Feature\",\"id\":\"a\",\"properties\":{\"n\":\"z\"},\"geometry\":null}\n\
        ]}\n";

    #[test]
    fn lines_of_features_in_a_collection() {
        assert_eq!(feature_lines(FC.as_bytes()), vec![2, 3, 5]);
        let pretty = "{\n  \"features\": [\n    {\n      \"id\": 1\n    },\n    {\"id\": 2}\n  ],\n  \"type\": \"FeatureCollection\"\n}";
        assert_eq!(feature_lines(pretty.as_bytes()), vec![3, 6]);
        assert_eq!(feature_lines(b"{\"type\":\"Feature\"}"), vec![1]);
    }

    fn ids(p: &Prepared) -> Vec<Value> {
        p.features
            .iter()
            .map(|f| f.get("id").cloned().unwrap_or(Value::Null))
            .collect()
    }

    #[test]
    fn duplicates_are_listed_skipped_or_replaced() {
        let features = read_features(FC.as_bytes(), "x.geojson").unwrap();
        let lines = feature_lines(FC.as_bytes());
        let p = prepare_ids(
            features.clone(),
            &lines,
            &IdSource::File,
            DuplicatePolicy::Fail,
        );
        assert_eq!(
            p.duplicates,
            vec![DuplicateId {
                id: "a".into(),
                kept: Place { index: 0, line: 2 },
                dropped: Place { index: 2, line: 5 },
            }]
        );
        let p = prepare_ids(
            features.clone(),
            &lines,
            &IdSource::File,
            DuplicatePolicy::Skip,
        );
        assert_eq!(ids(&p), vec![json!("a"), json!("b")]);
        assert_eq!(p.features[0]["properties"]["n"], "x [1]");
        let p = prepare_ids(
            features.clone(),
            &lines,
            &IdSource::File,
            DuplicatePolicy::Replace,
        );
        assert_eq!(ids(&p), vec![json!("a"), json!("b")]);
        assert_eq!(p.features[0]["properties"]["n"], "z", "the last one wins");
        assert_eq!(p.places[0], Place { index: 2, line: 5 });
        let p = prepare_ids(
            features.clone(),
            &lines,
            &IdSource::Generate,
            DuplicatePolicy::Fail,
        );
        assert!(p.duplicates.is_empty());
        assert_eq!(ids(&p), vec![Value::Null; 3]);
        let p = prepare_ids(
            features,
            &lines,
            &IdSource::Property("n".into()),
            DuplicatePolicy::Fail,
        );
        assert!(p.duplicates.is_empty());
        assert_eq!(ids(&p), vec![json!("x [1]"), json!("y"), json!("z")]);
    }
}
