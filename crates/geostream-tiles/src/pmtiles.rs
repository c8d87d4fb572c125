//! Read-only PMTiles v3 archives: a 127-byte header, a root directory, optional
//! leaf directories (varint-encoded, usually gzip-compressed) and tile data,
//! all addressed by Hilbert tile id with run lengths for repeated tiles.
//!
//! Every offset and length read from the file is checked against the file's
//! size and against fixed limits before use, so a hostile archive yields an
//! error, never a panic or an unbounded allocation.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::tile::{LonLatBbox, MAX_ZOOM, TileId};
use crate::{ArchiveInfo, Result, TileArchive, TileCompression, TileError, TileFormat};

const HEADER_LEN: usize = 127;
/// Largest directory accepted, compressed or not. Real directories are at
/// most a few MB even for planet-scale archives.
const MAX_DIRECTORY_BYTES: usize = 64 << 20;
/// Largest metadata JSON accepted after decompression.
const MAX_METADATA_BYTES: usize = 16 << 20;
/// Root plus up to three levels of leaves; real archives use one level.
const MAX_DEPTH: usize = 4;
/// Leaf directories kept parsed; when full the cache starts over, which is
/// crude but bounded and good enough for archives that mostly use the root.
const LEAF_CACHE_ENTRIES: usize = 64;
/// `tile_ids` refuses to list more than this many tiles.
const MAX_LISTED_TILES: u64 = 50_000_000;

/// A PMTiles v3 archive opened read-only, from a file or from memory.
#[derive(Debug)]
pub struct PmTiles {
    source: Source,
    header: Header,
    info: ArchiveInfo,
    metadata: serde_json::Value,
    root: Arc<Vec<Entry>>,
    leaves: Mutex<LeafCache>,
}

/// Parsed leaf directories by (offset, length) within the leaf section.
type LeafCache = HashMap<(u64, u64), Arc<Vec<Entry>>>;

#[derive(Debug)]
enum Source {
    File { file: Mutex<File>, len: u64 },
    Memory(Bytes),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Self::File { len, .. } => *len,
            Self::Memory(b) => b.len() as u64,
        }
    }

    /// `len` bytes at `offset`, after checking they lie inside the source.
    fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= self.len())
            .ok_or_else(|| {
                TileError::InvalidArchive(format!(
                    "range {offset}+{len} outside the {}-byte archive",
                    self.len()
                ))
            })?;
        match self {
            // Both fit in usize: they are within a slice's length.
            Self::Memory(b) => Ok(b.slice(offset as usize..end as usize)),
            Self::File { file, .. } => {
                let len = usize::try_from(len)
                    .map_err(|_| TileError::InvalidArchive("range too large".into()))?;
                let mut buf = vec![0u8; len];
                let mut f = file.lock();
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(&mut buf)?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// The fields of the v3 header this reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Root directory offset.
    pub root_offset: u64,
    /// Root directory length.
    pub root_length: u64,
    /// JSON metadata offset.
    pub metadata_offset: u64,
    /// JSON metadata length.
    pub metadata_length: u64,
    /// Start of the leaf directory section.
    pub leaf_offset: u64,
    /// Length of the leaf directory section.
    pub leaf_length: u64,
    /// Start of the tile data section.
    pub data_offset: u64,
    /// Length of the tile data section.
    pub data_length: u64,
    /// Tiles addressed (counting each repeat of a run).
    pub addressed_tiles: u64,
    /// Directory entries pointing at tiles.
    pub tile_entries: u64,
    /// Distinct tile contents.
    pub tile_contents: u64,
    /// Whether tile data is ordered by tile id.
    pub clustered: bool,
    /// Compression of directories and metadata (raw code).
    pub internal_compression: u8,
    /// Compression of tile data (raw code).
    pub tile_compression: u8,
    /// Tile type (raw code).
    pub tile_type: u8,
    /// Lowest zoom.
    pub min_zoom: u8,
    /// Highest zoom.
    pub max_zoom: u8,
    /// Bounds in 1e-7 degrees: west, south, east, north.
    pub bounds_e7: [i32; 4],
    /// Centre zoom.
    pub center_zoom: u8,
    /// Centre in 1e-7 degrees: lon, lat.
    pub center_e7: [i32; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tile_id: u64,
    offset: u64,
    length: u32,
    /// 0 marks a pointer to a leaf directory.
    run_length: u32,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_le_bytes(a)
}

impl Header {
    /// Parses the fixed 127-byte header.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(TileError::InvalidArchive(
                "shorter than a PMTiles header".into(),
            ));
        }
        if &b[..7] != b"PMTiles" {
            return Err(TileError::InvalidArchive("not a PMTiles archive".into()));
        }
        if b[7] != 3 {
            return Err(TileError::InvalidArchive(format!(
                "PMTiles version {} (only 3 is supported)",
                b[7]
            )));
        }
        Ok(Self {
            root_offset: u64_at(b, 8),
            root_length: u64_at(b, 16),
            metadata_offset: u64_at(b, 24),
            metadata_length: u64_at(b, 32),
            leaf_offset: u64_at(b, 40),
            leaf_length: u64_at(b, 48),
            data_offset: u64_at(b, 56),
            data_length: u64_at(b, 64),
            addressed_tiles: u64_at(b, 72),
            tile_entries: u64_at(b, 80),
            tile_contents: u64_at(b, 88),
            clustered: b[96] == 1,
            internal_compression: b[97],
            tile_compression: b[98],
            tile_type: b[99],
            min_zoom: b[100],
            max_zoom: b[101],
            bounds_e7: [
                i32_at(b, 102),
                i32_at(b, 106),
                i32_at(b, 110),
                i32_at(b, 114),
            ],
            center_zoom: b[118],
            center_e7: [i32_at(b, 119), i32_at(b, 123)],
        })
    }
}

fn compression_of(code: u8) -> TileCompression {
    match code {
        1 => TileCompression::None,
        2 => TileCompression::Gzip,
        3 => TileCompression::Brotli,
        4 => TileCompression::Zstd,
        _ => TileCompression::Unknown,
    }
}

fn format_of(code: u8) -> TileFormat {
    match code {
        1 => TileFormat::Mvt,
        2 => TileFormat::Png,
        3 => TileFormat::Jpeg,
        4 => TileFormat::Webp,
        5 => TileFormat::Avif,
        _ => TileFormat::Unknown,
    }
}

/// Decompresses tile (or directory) bytes, refusing output beyond `max_len`.
/// Supports none and gzip; brotli and zstd tiles are returned by
/// [`TileArchive::get`] as stored for the caller to pass on.
pub fn decompress(data: &[u8], compression: TileCompression, max_len: usize) -> Result<Vec<u8>> {
    match compression {
        TileCompression::None => {
            if data.len() > max_len {
                return Err(TileError::InvalidArchive("data larger than allowed".into()));
            }
            Ok(data.to_vec())
        }
        TileCompression::Gzip => {
            let mut out = Vec::new();
            let mut dec = flate2::read::GzDecoder::new(data).take(max_len as u64 + 1);
            dec.read_to_end(&mut out)
                .map_err(|e| TileError::InvalidArchive(format!("gzip: {e}")))?;
            if out.len() > max_len {
                return Err(TileError::InvalidArchive(
                    "decompressed data larger than allowed".into(),
                ));
            }
            Ok(out)
        }
        other => Err(TileError::InvalidArchive(format!(
            "unsupported compression {other:?}"
        ))),
    }
}

struct Varints<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Varints<'_> {
    fn next(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| TileError::InvalidArchive("directory truncated".into()))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(TileError::InvalidArchive("varint too long".into()))
    }

    fn next_u32(&mut self) -> Result<u32> {
        u32::try_from(self.next()?)
            .map_err(|_| TileError::InvalidArchive("directory value above 2^32".into()))
    }
}

fn parse_directory(buf: &[u8]) -> Result<Vec<Entry>> {
    let mut r = Varints { buf, pos: 0 };
    let n = r.next()?;
    // Each entry needs at least four bytes (one per column), so a count
    // beyond that is a lie and must not size an allocation.
    if n > (buf.len() / 4) as u64 {
        return Err(TileError::InvalidArchive(format!(
            "directory claims {n} entries in {} bytes",
            buf.len()
        )));
    }
    let n = n as usize;
    let mut entries = vec![
        Entry {
            tile_id: 0,
            offset: 0,
            length: 0,
            run_length: 0,
        };
        n
    ];
    let mut last = 0u64;
    for e in entries.iter_mut() {
        last = last
            .checked_add(r.next()?)
            .ok_or_else(|| TileError::InvalidArchive("tile id overflow".into()))?;
        e.tile_id = last;
    }
    for e in entries.iter_mut() {
        e.run_length = r.next_u32()?;
    }
    for e in entries.iter_mut() {
        e.length = r.next_u32()?;
        if e.length == 0 {
            return Err(TileError::InvalidArchive(
                "zero-length directory entry".into(),
            ));
        }
    }
    for i in 0..n {
        let v = r.next()?;
        entries[i].offset = if v == 0 {
            let prev = i
                .checked_sub(1)
                .map(|p| entries[p])
                .ok_or_else(|| TileError::InvalidArchive("first entry has no offset".into()))?;
            prev.offset
                .checked_add(u64::from(prev.length))
                .ok_or_else(|| TileError::InvalidArchive("offset overflow".into()))?
        } else {
            v - 1
        };
    }
    Ok(entries)
}

/// The last entry whose tile id is not above `id`.
fn find_entry(entries: &[Entry], id: u64) -> Option<Entry> {
    let i = entries.partition_point(|e| e.tile_id <= id);
    i.checked_sub(1).map(|i| entries[i])
}

impl PmTiles {
    /// Opens an archive file. Reads the header, the root directory and the
    /// metadata; leaf directories and tiles are read on demand.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = File::open(path.as_ref())?;
        let len = file.metadata()?.len();
        Self::from_source(Source::File {
            file: Mutex::new(file),
            len,
        })
    }

    /// An archive held in memory (tests, or archives fetched whole).
    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        Self::from_source(Source::Memory(bytes))
    }

    fn from_source(source: Source) -> Result<Self> {
        let head = source.read(0, HEADER_LEN.min(source.len() as usize) as u64)?;
        let header = Header::parse(&head)?;
        let internal = compression_of(header.internal_compression);
        let root = Arc::new(read_directory(
            &source,
            internal,
            header.root_offset,
            header.root_length,
        )?);
        let metadata = if header.metadata_length == 0 {
            serde_json::Value::Null
        } else if header.metadata_length > MAX_METADATA_BYTES as u64 {
            return Err(TileError::InvalidArchive("metadata too large".into()));
        } else {
            let raw = source.read(header.metadata_offset, header.metadata_length)?;
            let json = decompress(&raw, internal, MAX_METADATA_BYTES)?;
            // Metadata is informative only; a broken JSON blob should not
            // make the tiles unreadable.
            serde_json::from_slice(&json).unwrap_or(serde_json::Value::Null)
        };
        let text = |k: &str| metadata.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let e7 = |v: i32| f64::from(v) / 1e7;
        let [w, s, e, n] = header.bounds_e7;
        let info = ArchiveInfo {
            format: format_of(header.tile_type),
            compression: compression_of(header.tile_compression),
            bounds: LonLatBbox::new(e7(w), e7(s), e7(e), e7(n)).ok(),
            min_zoom: header.min_zoom.min(MAX_ZOOM),
            max_zoom: header.max_zoom.min(MAX_ZOOM),
            name: text("name"),
            attribution: text("attribution"),
        };
        Ok(Self {
            source,
            header,
            info,
            metadata,
            root,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The archive's JSON metadata (`Null` when absent or unreadable).
    pub fn metadata(&self) -> &serde_json::Value {
        &self.metadata
    }

    fn internal(&self) -> TileCompression {
        compression_of(self.header.internal_compression)
    }

    fn leaf(&self, offset: u64, length: u32) -> Result<Arc<Vec<Entry>>> {
        let key = (offset, u64::from(length));
        if let Some(d) = self.leaves.lock().get(&key) {
            return Ok(d.clone());
        }
        if offset.saturating_add(u64::from(length)) > self.header.leaf_length {
            return Err(TileError::InvalidArchive(
                "leaf directory outside its section".into(),
            ));
        }
        let abs = self
            .header
            .leaf_offset
            .checked_add(offset)
            .ok_or_else(|| TileError::InvalidArchive("leaf offset overflow".into()))?;
        // Read and parse without holding the lock: I/O must not serialise
        // lookups that hit the cache.
        let dir = Arc::new(read_directory(
            &self.source,
            self.internal(),
            abs,
            u64::from(length),
        )?);
        let mut cache = self.leaves.lock();
        if cache.len() >= LEAF_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, dir.clone());
        Ok(dir)
    }

    /// Offset (within the data section) and length of a tile's bytes.
    fn locate(&self, id: u64) -> Result<Option<(u64, u32)>> {
        let mut dir = self.root.clone();
        for _ in 0..MAX_DEPTH {
            let Some(e) = find_entry(&dir, id) else {
                return Ok(None);
            };
            if e.run_length == 0 {
                dir = self.leaf(e.offset, e.length)?;
                continue;
            }
            return Ok((id - e.tile_id < u64::from(e.run_length)).then_some((e.offset, e.length)));
        }
        Err(TileError::InvalidArchive(
            "directories nested too deep".into(),
        ))
    }

    /// Walks every directory, calling `f` for each entry that points at tiles.
    fn walk(&self, f: &mut dyn FnMut(&Entry) -> Result<()>) -> Result<()> {
        let mut seen = HashSet::new();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            for e in dir.iter() {
                if e.run_length > 0 {
                    f(e)?;
                } else {
                    if depth + 1 >= MAX_DEPTH || !seen.insert((e.offset, e.length)) {
                        return Err(TileError::InvalidArchive(
                            "leaf directories nested too deep or repeated".into(),
                        ));
                    }
                    stack.push((self.leaf(e.offset, e.length)?, depth + 1));
                }
            }
        }
        Ok(())
    }
}

fn read_directory(
    source: &Source,
    compression: TileCompression,
    offset: u64,
    length: u64,
) -> Result<Vec<Entry>> {
    if length > MAX_DIRECTORY_BYTES as u64 {
        return Err(TileError::InvalidArchive("directory too large".into()));
    }
    let raw = source.read(offset, length)?;
    let bytes = decompress(&raw, compression, MAX_DIRECTORY_BYTES)?;
    parse_directory(&bytes)
}

impl TileArchive for PmTiles {
    /// The tile as stored: check [`ArchiveInfo::compression`] before use.
    fn get(&self, z: u8, x: u32, y: u32) -> Result<Option<Bytes>> {
        let tile = TileId::new(z, x, y)?;
        let Some((offset, length)) = self.locate(tile.hilbert_id())? else {
            return Ok(None);
        };
        if offset.saturating_add(u64::from(length)) > self.header.data_length {
            return Err(TileError::InvalidArchive(
                "tile outside the data section".into(),
            ));
        }
        let abs = self
            .header
            .data_offset
            .checked_add(offset)
            .ok_or_else(|| TileError::InvalidArchive("tile offset overflow".into()))?;
        self.source.read(abs, u64::from(length)).map(Some)
    }

    fn info(&self) -> &ArchiveInfo {
        &self.info
    }

    fn tile_ids(&self) -> Result<Vec<TileId>> {
        let mut out = Vec::new();
        let mut total = 0u64;
        self.walk(&mut |e| {
            total = total.saturating_add(u64::from(e.run_length));
            if total > MAX_LISTED_TILES {
                return Err(TileError::InvalidArchive("too many tiles to list".into()));
            }
            for id in e.tile_id..e.tile_id.saturating_add(u64::from(e.run_length)) {
                out.push(TileId::from_hilbert_id(id)?);
            }
            Ok(())
        })?;
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Serialises a directory the way the spec describes (no compression).
    fn directory(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, entries.len() as u64);
        let mut last = 0;
        for e in entries {
            varint(&mut out, e.tile_id - last);
            last = e.tile_id;
        }
        for e in entries {
            varint(&mut out, u64::from(e.run_length));
        }
        for e in entries {
            varint(&mut out, u64::from(e.length));
        }
        for (i, e) in entries.iter().enumerate() {
            let contiguous =
                i > 0 && entries[i - 1].offset + u64::from(entries[i - 1].length) == e.offset;
            varint(&mut out, if contiguous { 0 } else { e.offset + 1 });
        }
        out
    }

    /// An uncompressed archive: root pointing to one leaf holding three
    /// tiles, one of them a run of two.
    fn archive() -> Vec<u8> {
        let tiles: [&[u8]; 3] = [b"zero", b"one!", b"run"];
        let leaf = directory(&[
            Entry {
                tile_id: 0,
                offset: 0,
                length: 4,
                run_length: 1,
            },
            Entry {
                tile_id: 1,
                offset: 4,
                length: 4,
                run_length: 1,
            },
            Entry {
                tile_id: 3,
                offset: 8,
                length: 3,
                run_length: 2,
            },
        ]);
        let root = directory(&[Entry {
            tile_id: 0,
            offset: 0,
            length: leaf.len() as u32,
            run_length: 0,
        }]);
        let root_off = HEADER_LEN as u64;
        let leaf_off = root_off + root.len() as u64;
        let data_off = leaf_off + leaf.len() as u64;
        let data: Vec<u8> = tiles.concat();
        let mut h = Vec::new();
        h.extend_from_slice(b"PMTiles\x03");
        for v in [
            root_off,
            root.len() as u64,
            0,
            0,
            leaf_off,
            leaf.len() as u64,
            data_off,
            data.len() as u64,
            4,
            3,
            3,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&[1, 1, 1, 1, 0, 1]);
        for v in [
            -1_800_000_000i32,
            -850_000_000,
            1_800_000_000,
            850_000_000,
            0,
            0,
            0,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
            if h.len() == 118 {
                h.push(0);
            }
        }
        h.truncate(HEADER_LEN);
        assert_eq!(h.len(), HEADER_LEN);
        [h, root, leaf, data].concat()
    }

    #[test]
    fn reads_synthetic_archive_with_leaf_and_run() {
        let p = PmTiles::from_bytes(Bytes::from(archive())).unwrap();
        assert_eq!(p.get(0, 0, 0).unwrap().as_deref(), Some(&b"zero"[..]));
        assert_eq!(p.get(1, 0, 0).unwrap().as_deref(), Some(&b"one!"[..]));
        // Ids 3 and 4 (1/1/1 and 1/1/0) share the run.
        assert_eq!(p.get(1, 1, 1).unwrap().as_deref(), Some(&b"run"[..]));
        assert_eq!(p.get(1, 1, 0).unwrap().as_deref(), Some(&b"run"[..]));
        assert_eq!(p.get(1, 0, 1).unwrap(), None);
        assert_eq!(p.get(2, 0, 0).unwrap(), None);
        assert!(p.get(1, 2, 0).is_err());
        assert_eq!(p.tile_ids().unwrap().len(), 4);
        assert_eq!(p.info().format, TileFormat::Mvt);
    }

    #[test]
    fn hostile_archives_are_errors() {
        let good = archive();
        // Every truncation, and garbage in every byte of the directories,
        // must give an error or a normal answer, never a panic.
        for n in 0..good.len() {
            let p = PmTiles::from_bytes(Bytes::copy_from_slice(&good[..n]));
            if let Ok(p) = p {
                let _ = p.get(1, 1, 1);
                let _ = p.tile_ids();
            }
        }
        for i in 0..good.len() {
            for v in [0x00u8, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(p) = PmTiles::from_bytes(Bytes::from(bad)) {
                    for (z, x, y) in [(0, 0, 0), (1, 0, 0), (1, 1, 1), (1, 1, 0)] {
                        let _ = p.get(z, x, y);
                    }
                    let _ = p.tile_ids();
                }
            }
        }
        assert!(PmTiles::from_bytes(Bytes::from_static(b"PMTiles\x02")).is_err());
        // A directory claiming a billion entries.
        let mut d = Vec::new();
        varint(&mut d, 1 << 30);
        assert!(parse_directory(&d).is_err());
    }
}
