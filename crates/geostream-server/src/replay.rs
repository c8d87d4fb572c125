//! `geostream replay`: plays a trajectory CSV (`timestamp,object_id,lon,lat,...`, rows in
//! time order) into a layer as live position updates, one feature per object, at a chosen
//! speed. Also `geostream import`'s client side: sends a local file in chunks.
//!
//! Both are clients of a running server (over WebSocket), so subscribers see the data live.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use geostream_core::api::{self, BatchOp};
use geostream_core::error::ErrorCode;
use serde_json::{Map, Value, json};

use crate::remote::{Remote, RemoteError, finish};

/// One position report.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackPoint {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The timestamp as written (RFC 3339).
    pub timestamp: String,
    /// The moving object.
    pub id: String,
    /// Longitude.
    pub lon: f64,
    /// Latitude.
    pub lat: f64,
    /// The other columns: numbers where they parse as numbers, empty cells left out.
    pub properties: Map<String, Value>,
}

impl TrackPoint {
    /// The feature this report makes: a point whose `datetime` is the report's time (so
    /// temporal filters apply), with the other columns as properties.
    pub fn feature(&self) -> Value {
        let mut props = self.properties.clone();
        props.insert("datetime".into(), Value::String(self.timestamp.clone()));
        json!({
            "type": "Feature",
            "id": self.id,
            "geometry": { "type": "Point", "coordinates": [self.lon, self.lat] },
            "properties": props,
        })
    }
}

/// Errors reading a trajectory.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A row is not as expected.
    #[error("row {row}: {message}")]
    Row {
        /// 1-based data row.
        row: usize,
        /// What is wrong.
        message: String,
    },
}

/// Reads a trajectory CSV (plain or `.zst`). The first four columns must be
/// `timestamp,object_id,lon,lat`; rows must be in time order.
pub fn read_track(path: &Path) -> Result<Vec<TrackPoint>, TrackError> {
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(zstd::Decoder::new(file)?)
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    parse_track(reader)
}

/// Parses a trajectory CSV from a reader; see [`read_track`].
pub fn parse_track(reader: impl Read) -> Result<Vec<TrackPoint>, TrackError> {
    let mut csv = csv::ReaderBuilder::new().from_reader(reader);
    let headers = csv
        .headers()
        .map_err(|e| TrackError::Row {
            row: 0,
            message: e.to_string(),
        })?
        .clone();
    let first: Vec<&str> = headers.iter().take(4).collect();
    if first != ["timestamp", "object_id", "lon", "lat"] {
        return Err(TrackError::Row {
            row: 0,
            message: format!(
                "the header must start with timestamp,object_id,lon,lat (found {})",
                first.join(",")
            ),
        });
    }
    let mut out = Vec::new();
    let mut last = 0u64;
    for (i, rec) in csv.records().enumerate() {
        let row = i + 1;
        let bad = |message: String| TrackError::Row { row, message };
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let timestamp = rec.get(0).unwrap_or("").to_string();
        let time_ms = geostream_filter::parse_datetime_ms(&timestamp)
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| {
                bad(format!(
                    "timestamp {timestamp:?} is not an RFC 3339 time after 1970"
                ))
            })?;
        if time_ms < last {
            return Err(bad("rows are not in time order".into()));
        }
        last = time_ms;
        let id = rec.get(1).unwrap_or("").to_string();
        if id.is_empty() {
            return Err(bad("object_id is empty".into()));
        }
        let num = |k: usize, name: &str| -> Result<f64, TrackError> {
            rec.get(k)
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| bad(format!("{name} is not a number")))
        };
        let (lon, lat) = (num(2, "lon")?, num(3, "lat")?);
        if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
            return Err(bad(format!("position {lon},{lat} is out of range")));
        }
        let mut properties = Map::new();
        for (k, v) in headers.iter().zip(rec.iter()).skip(4) {
            if v.is_empty() {
                continue;
            }
            let value = match v.parse::<f64>() {
                Ok(n) if n.is_finite() => json!(n),
                _ => Value::String(v.to_string()),
            };
            properties.insert(k.to_string(), value);
        }
        out.push(TrackPoint {
            time_ms,
            timestamp,
            id,
            lon,
            lat,
            properties,
        });
    }
    Ok(out)
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    /// Position updates applied.
    pub updates: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Creates `layer` (last writer wins: a replay carries no versions) unless it exists; an
/// existing layer must be last-writer-wins.
async fn ensure_lww_layer(remote: &Remote, layer: &str) -> Result<(), RemoteError> {
    match remote
        .call(
            api::method::LAYER_CREATE,
            &json!({ "name": layer, "last_writer_wins": true }),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(RemoteError::Rpc(e)) if e.code == ErrorCode::LayerExists => {
            let info = remote
                .call(api::method::LAYER_GET, &json!({ "name": layer }))
                .await?;
            if info["last_writer_wins"] == true {
                Ok(())
            } else {
                Err(RemoteError::Connection(format!(
                    "layer {layer:?} exists and needs versions on every edit; replay into a last-writer-wins layer"
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// Replays `points` into `layer`. `speed` is the time factor (60 = one hour of data per
/// minute); `0` sends as fast as the server acknowledges. Reports with the same timestamp go
/// in one batch. `progress` is called about once a second.
pub async fn replay(
    remote: &Remote,
    layer: &str,
    points: &[TrackPoint],
    speed: f64,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayReport, RemoteError> {
    ensure_lww_layer(remote, layer).await?;
    let start = Instant::now();
    let t0 = points.first().map_or(0, |p| p.time_ms);
    let mut report = ReplayReport::default();
    let mut last_progress = Instant::now();
    // Up to this many batches in flight: keeps the server's group commit busy without
    // reordering (one connection's edits are applied in the order they are sent).
    const WINDOW: usize = 16;
    let mut in_flight = std::collections::VecDeque::new();
    let mut i = 0;
    while i < points.len() {
        let t = points[i].time_ms;
        let mut j = i;
        while j < points.len() && points[j].time_ms == t && j - i < 500 {
            j += 1;
        }
        if speed > 0.0 {
            let due = Duration::from_secs_f64((t - t0) as f64 / 1000.0 / speed);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let ops: Vec<BatchOp> = points[i..j]
            .iter()
            .map(|p| BatchOp::Replace {
                id: Value::String(p.id.clone()),
                feature: p.feature(),
                version: None,
            })
            .collect();
        let rx = remote
            .start(
                api::method::FEATURE_BATCH,
                &json!({ "layer": layer, "ops": ops }),
            )
            .await?;
        in_flight.push_back((rx, (j - i) as u64));
        while in_flight.len() >= WINDOW {
            let (rx, n) = in_flight.pop_front().expect("non-empty");
            finish(rx).await?;
            report.updates += n;
        }
        i = j;
        if last_progress.elapsed() >= Duration::from_secs(1) {
            progress(report.updates, points.len() as u64);
            last_progress = Instant::now();
        }
    }
    for (rx, n) in in_flight {
        finish(rx).await?;
        report.updates += n;
    }
    progress(report.updates, points.len() as u64);
    report.elapsed = start.elapsed();
    Ok(report)
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    /// Features imported.
    pub imported: u64,
    /// Features refused.
    pub rejected: u64,
    /// The first refusals: position in the file and reason.
    pub rejections: Vec<(u64, String)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Sends `features` to `layer` with `layer.import`, in chunks of at most `batch` features
/// and about 512 KiB, so that no frame exceeds the server's limit.
pub async fn import(
    remote: &Remote,
    layer: &str,
    features: &[Value],
    batch: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<ImportReport, RemoteError> {
    const CHUNK_BYTES: usize = 512 * 1024;
    let start = Instant::now();
    let mut report = ImportReport::default();
    let mut i = 0;
    while i < features.len() {
        let mut j = i;
        let mut bytes = 0;
        while j < features.len() && j - i < batch.max(1) {
            let n = serde_json::to_vec(&features[j]).map_or(0, |v| v.len());
            if j > i && bytes + n > CHUNK_BYTES {
                break;
            }
            bytes += n;
            j += 1;
        }
        let r = remote
            .call(
                api::method::LAYER_IMPORT,
                &json!({ "layer": layer, "features": &features[i..j], "batch_size": batch }),
            )
            .await?;
        report.imported += r["imported"].as_u64().unwrap_or(0);
        report.rejected += r["rejected"].as_u64().unwrap_or(0);
        // The server lists the first refusals of each chunk; keep the first hundred.
        for rej in r["rejections"].as_array().into_iter().flatten() {
            if report.rejections.len() < 100 {
                let index = rej["index"].as_u64().unwrap_or(0) + i as u64;
                let reason = rej["reason"].as_str().unwrap_or("").to_string();
                report.rejections.push((index, reason));
            }
        }
        i = j;
        progress(i as u64, features.len() as u64);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_with_typed_columns() {
        let csv = "timestamp,object_id,lon,lat,SOG,VesselName,IMO\n\
                   2020-06-30T00:00:00Z,338531000,-74.05,40.64,10.4,\"GENESIS, VIGILANT\",\n\
                   2020-06-30T00:00:05Z,2,-74.1,40.7,0.0,X,IMO1\n";
        let t = parse_track(csv.as_bytes()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].id, "338531000");
        assert_eq!(t[0].properties["SOG"], json!(10.4));
        assert_eq!(t[0].properties["VesselName"], json!("GENESIS, VIGILANT"));
        assert!(!t[0].properties.contains_key("IMO"));
        assert_eq!(t[1].time_ms - t[0].time_ms, 5000);
        let f = t[1].feature();
        assert_eq!(f["properties"]["datetime"], "2020-06-30T00:00:05Z");
        assert_eq!(f["geometry"]["coordinates"], json!([-74.1, 40.7]));
    }

    #[test]
    fn refuses_bad_files() {
        assert!(parse_track("a,b,c,d\n".as_bytes()).is_err());
        let unordered =
            "timestamp,object_id,lon,lat\n2020-06-30T00:00:05Z,1,0,0\n2020-06-30T00:00:00Z,1,0,0\n";
        assert!(matches!(
            parse_track(unordered.as_bytes()),
            Err(TrackError::Row { row: 2, .. })
        ));
        let bad_lat = "timestamp,object_id,lon,lat\n2020-06-30T00:00:05Z,1,0,95\n";
        assert!(parse_track(bad_lat.as_bytes()).is_err());
    }
}
