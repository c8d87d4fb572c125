//! Copy/insert binary deltas between two versions of a tile (or any bytes): the encoder the
//! server uses and the verifying decoder the Rust client uses, one definition of the format.
//! Standard library only, so a client applying deltas pulls in nothing else.
//!
//! The byte format is specified in `docs/DELTA.md` for the TypeScript client;
//! in short: a header (magic `GD`, version 1, base length, target length,
//! CRC-32 of the target) then a list of operations, each either "insert these
//! literal bytes" or "copy n bytes from the base at an offset relative to the
//! end of the previous copy". Relative offsets keep shifted runs cheap.
//!
//! The encoder indexes every `BLOCK`-byte window of the base in a hash table
//! and scans the target with a rolling hash, extending each hit forwards and
//! backwards. That finds moved and shifted runs (an early one-byte insert
//! costs a few bytes, not a rewrite of everything after it) in linear time,
//! with a bounded number of candidates per position.

use std::fmt;

/// First bytes of every delta: `G`, `D`.
const MAGIC: [u8; 2] = *b"GD";
/// Format version this module writes and reads.
const VERSION: u8 = 1;
/// Length of the windows indexed in the base. Short enough to re-synchronise
/// within a few bytes after an edit inside a tile's geometry, long enough that
/// random 8-byte collisions between unrelated data are rare.
const BLOCK: usize = 8;
/// Candidates examined per target position. Bounds the work on repetitive
/// data (long runs of one byte would otherwise make every lookup linear).
const MAX_CHAIN: usize = 24;
/// Largest value a varint may carry: 2^53 - 1, so a JavaScript decoder can
/// hold every length and offset in a plain number.
const MAX_VARINT: u64 = (1 << 53) - 1;

/// Why a delta could not be applied. Any of these means "fetch the full tile".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaError {
    /// The delta does not start with the `GD` magic.
    BadMagic,
    /// A format version this decoder does not know.
    UnsupportedVersion(u8),
    /// The delta ends in the middle of a field or before the target is complete.
    Truncated,
    /// A structurally invalid delta (zero-length operation, copy outside the
    /// base, output longer than declared, bytes after the end, oversized varint).
    Malformed(&'static str),
    /// The base given is not the one the delta was made against (its length
    /// differs from the one recorded in the delta).
    BaseMismatch {
        /// Base length recorded in the delta.
        expected: u64,
        /// Length of the base supplied.
        actual: u64,
    },
    /// The declared target is larger than the caller allows.
    TooLarge {
        /// Declared target length.
        target_len: u64,
        /// The caller's limit.
        max_len: usize,
    },
    /// The rebuilt bytes do not hash to the recorded CRC-32: a corrupted delta
    /// or a wrong base of the right length.
    ChecksumMismatch {
        /// CRC-32 recorded in the delta.
        expected: u32,
        /// CRC-32 of the rebuilt output.
        actual: u32,
    },
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("not a geostream delta (bad magic)"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported delta version {v}"),
            Self::Truncated => f.write_str("delta is truncated"),
            Self::Malformed(why) => write!(f, "malformed delta: {why}"),
            Self::BaseMismatch { expected, actual } => write!(
                f,
                "delta was made against a base of {expected} bytes, got {actual}"
            ),
            Self::TooLarge {
                target_len,
                max_len,
            } => write!(
                f,
                "delta target of {target_len} bytes exceeds the limit of {max_len}"
            ),
            Self::ChecksumMismatch { expected, actual } => write!(
                f,
                "rebuilt target has CRC-32 {actual:08x}, delta expects {expected:08x}"
            ),
        }
    }
}

impl std::error::Error for DeltaError {}

/// The header fields of a delta, readable without the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHeader {
    /// Length of the base the delta applies to.
    pub base_len: u64,
    /// Length of the rebuilt target.
    pub target_len: u64,
    /// CRC-32 ([`checksum`]) of the target.
    pub checksum: u32,
}

/// CRC-32 as in zlib, gzip and PNG (reflected polynomial 0xEDB88320, initial
/// value and final XOR 0xFFFFFFFF). `checksum(b"123456789") == 0xCBF43926`.
///
/// Slicing-by-8: eight bytes per step through eight 256-entry tables (8 KiB, built at
/// compile time), several times faster than one table a byte.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = CRC_TABLES[7][(lo & 0xff) as usize]
            ^ CRC_TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ CRC_TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ CRC_TABLES[4][(lo >> 24) as usize]
            ^ CRC_TABLES[3][c[4] as usize]
            ^ CRC_TABLES[2][c[5] as usize]
            ^ CRC_TABLES[1][c[6] as usize]
            ^ CRC_TABLES[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = CRC_TABLES[0][((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// `CRC_TABLES[0]` is the classic byte table; `CRC_TABLES[k][b]` is the CRC of byte `b`
/// followed by `k` zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let prev = t[k - 1][i];
            t[k][i] = t[0][(prev & 0xff) as usize] ^ (prev >> 8);
            k += 1;
        }
        i += 1;
    }
    t
};

/// Builds a delta that turns `base` into `target`.
///
/// Always succeeds. The result can be larger than `target` when the two share
/// little; callers compare sizes and send the full bytes in that case.
pub fn encode(base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + target.len() / 16);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    put_varint(&mut out, base.len() as u64);
    put_varint(&mut out, target.len() as u64);
    out.extend_from_slice(&checksum(target).to_le_bytes());

    let mut w = OpWriter {
        out,
        cursor: 0,
        base_len: base.len(),
    };
    if base.len() < BLOCK || target.len() < BLOCK {
        w.insert(target);
        return w.out;
    }
    let index = BlockIndex::build(base);
    let mut lit_start = 0usize;
    let mut i = 0usize;
    let mut h = window_hash(&target[..BLOCK]);
    loop {
        if let Some(m) = index.best_match(base, target, i, lit_start, w.cursor, h) {
            w.insert(&target[lit_start..m.target_start]);
            w.copy(m.base_start, m.len);
            i = m.target_start + m.len;
            lit_start = i;
            if i + BLOCK > target.len() {
                break;
            }
            h = window_hash(&target[i..i + BLOCK]);
            continue;
        }
        if i + BLOCK >= target.len() {
            break;
        }
        h = roll(h, target[i], target[i + BLOCK]);
        i += 1;
    }
    w.insert(&target[lit_start..]);
    w.out
}

/// Reads a delta's header without applying it.
pub fn header(delta: &[u8]) -> Result<DeltaHeader, DeltaError> {
    let mut r = Reader { buf: delta, pos: 0 };
    read_header(&mut r)
}

/// Rebuilds the target from `base` and `delta`.
///
/// Never allocates more than `max_len` bytes of output: a delta declaring a
/// larger target is refused before any work, and the declared length bounds
/// every operation. The result is verified against the delta's CRC-32, so a
/// corrupted delta or a wrong base is reported rather than returned.
pub fn apply(base: &[u8], delta: &[u8], max_len: usize) -> Result<Vec<u8>, DeltaError> {
    let mut r = Reader { buf: delta, pos: 0 };
    let head = read_header(&mut r)?;
    if head.base_len != base.len() as u64 {
        return Err(DeltaError::BaseMismatch {
            expected: head.base_len,
            actual: base.len() as u64,
        });
    }
    if head.target_len > max_len as u64 {
        return Err(DeltaError::TooLarge {
            target_len: head.target_len,
            max_len,
        });
    }
    // target_len <= max_len, a usize, so this cannot truncate.
    let target_len = head.target_len as usize;
    // Reserve only what the delta can plausibly produce so a tiny hostile
    // delta that declares a huge (but allowed) length cannot force a large
    // allocation up front; the vector grows as real data arrives.
    let mut out = Vec::with_capacity(target_len.min(base.len().saturating_add(delta.len())));
    let mut cursor = 0u64;
    while out.len() < target_len {
        let op = r.varint()?;
        let n = op >> 1;
        if n == 0 {
            return Err(DeltaError::Malformed("zero-length operation"));
        }
        let remaining = (target_len - out.len()) as u64;
        if n > remaining {
            return Err(DeltaError::Malformed(
                "operation runs past the declared target length",
            ));
        }
        // n <= remaining <= target_len, a usize.
        let n_usize = n as usize;
        if op & 1 == 0 {
            out.extend_from_slice(r.take(n_usize)?);
        } else {
            let d = unzigzag(r.varint()?);
            let start = i128::from(cursor) + i128::from(d);
            let end = start + i128::from(n);
            if start < 0 || end > base.len() as i128 {
                return Err(DeltaError::Malformed("copy outside the base"));
            }
            // 0 <= start < end <= base.len().
            let (s, e) = (start as usize, end as usize);
            out.extend_from_slice(&base[s..e]);
            cursor = e as u64;
        }
    }
    if r.pos != delta.len() {
        return Err(DeltaError::Malformed("bytes after the last operation"));
    }
    let actual = checksum(&out);
    if actual != head.checksum {
        return Err(DeltaError::ChecksumMismatch {
            expected: head.checksum,
            actual,
        });
    }
    Ok(out)
}

fn read_header(r: &mut Reader<'_>) -> Result<DeltaHeader, DeltaError> {
    let magic = r.take(2).map_err(|_| DeltaError::BadMagic)?;
    if magic != MAGIC {
        return Err(DeltaError::BadMagic);
    }
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(DeltaError::UnsupportedVersion(version));
    }
    let base_len = r.varint()?;
    let target_len = r.varint()?;
    let crc = r.take(4)?;
    Ok(DeltaHeader {
        base_len,
        target_len,
        checksum: u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]),
    })
}

/// Writes operations, keeping the copy cursor the offsets are relative to.
struct OpWriter {
    out: Vec<u8>,
    cursor: usize,
    base_len: usize,
}

impl OpWriter {
    fn insert(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        put_varint(&mut self.out, (bytes.len() as u64) << 1);
        self.out.extend_from_slice(bytes);
    }

    fn copy(&mut self, start: usize, len: usize) {
        debug_assert!(len > 0 && start + len <= self.base_len);
        put_varint(&mut self.out, ((len as u64) << 1) | 1);
        // Offsets of real slices fit in i64 with room to spare.
        let d = start as i64 - self.cursor as i64;
        put_varint(&mut self.out, zigzag(d));
        self.cursor = start + len;
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DeltaError> {
        let end = self.pos.checked_add(n).ok_or(DeltaError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DeltaError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, DeltaError> {
        let mut v = 0u64;
        for i in 0..8 {
            let b = *self.buf.get(self.pos).ok_or(DeltaError::Truncated)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if v > MAX_VARINT {
                    return Err(DeltaError::Malformed("varint above 2^53 - 1"));
                }
                return Ok(v);
            }
        }
        Err(DeltaError::Malformed("varint longer than 8 bytes"))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Multiplier of the polynomial rolling hash (odd, with well mixed bits).
const HASH_MUL: u32 = 0x0100_0193;

fn window_hash(w: &[u8]) -> u32 {
    w.iter().fold(0u32, |h, &b| {
        h.wrapping_mul(HASH_MUL).wrapping_add(u32::from(b) + 1)
    })
}

/// HASH_MUL^(BLOCK-1), the weight of the byte leaving the window.
const OUT_WEIGHT: u32 = {
    let mut w = 1u32;
    let mut i = 1;
    while i < BLOCK {
        w = w.wrapping_mul(HASH_MUL);
        i += 1;
    }
    w
};

fn roll(h: u32, out_byte: u8, in_byte: u8) -> u32 {
    h.wrapping_sub((u32::from(out_byte) + 1).wrapping_mul(OUT_WEIGHT))
        .wrapping_mul(HASH_MUL)
        .wrapping_add(u32::from(in_byte) + 1)
}

struct Match {
    base_start: usize,
    target_start: usize,
    len: usize,
}

/// Hash chains over every window of the base, zlib style: `head[bucket]` is
/// the last window position with that hash bucket, `prev[pos]` the one before.
/// Plain vectors rather than a HashMap keep the encoder deterministic and
/// cache friendly.
struct BlockIndex {
    head: Vec<u32>,
    prev: Vec<u32>,
    shift: u32,
}

const NONE: u32 = u32::MAX;

impl BlockIndex {
    fn build(base: &[u8]) -> Self {
        let windows = base.len() - BLOCK + 1;
        let bits = (usize::BITS - windows.leading_zeros()).clamp(8, 24);
        let mut head = vec![NONE; 1 << bits];
        // Bases beyond 4 GiB windows are not tiles; index only the first
        // u32::MAX - 1 positions so positions fit the u32 chains.
        let windows = windows.min(NONE as usize - 1);
        let mut prev = vec![NONE; windows];
        let shift = 32 - bits;
        let mut h = window_hash(&base[..BLOCK]);
        // Length of the run of equal bytes ending at the window's last byte.
        let mut run = 1 + base[..BLOCK]
            .windows(2)
            .rev()
            .take_while(|w| w[0] == w[1])
            .count();
        for pos in 0..windows {
            if pos > 0 {
                h = roll(h, base[pos - 1], base[pos + BLOCK - 1]);
                let last = pos + BLOCK - 1;
                run = if base[last] == base[last - 1] {
                    run + 1
                } else {
                    1
                };
                // Inside a run of one repeated byte every window is the same:
                // index only the first so that the chain, which is walked
                // newest first and cut at MAX_CHAIN, still reaches the start
                // of the run (the candidate with the longest forward match).
                if run > BLOCK {
                    continue;
                }
            }
            let b = bucket(h, shift);
            prev[pos] = head[b];
            head[b] = pos as u32;
        }
        Self { head, prev, shift }
    }

    /// The longest match covering target position `i` (extended backwards no
    /// further than `lit_start`), preferring the candidate nearest `cursor`
    /// among equals since its offset encodes shortest.
    fn best_match(
        &self,
        base: &[u8],
        target: &[u8],
        i: usize,
        lit_start: usize,
        cursor: usize,
        h: u32,
    ) -> Option<Match> {
        let window = &target[i..i + BLOCK];
        let mut best: Option<Match> = None;
        // The natural continuation of the previous copy is tried first: after
        // an in-place edit it is the right answer and its offset costs 1 byte.
        let continuation = cursor + (i - lit_start);
        let mut next = (continuation + BLOCK <= base.len()).then_some(continuation);
        let mut chain = self.head[bucket(h, self.shift)];
        let mut steps = 0;
        loop {
            let c = match next.take() {
                Some(c) => c,
                None if chain != NONE && steps < MAX_CHAIN => {
                    steps += 1;
                    let c = chain as usize;
                    chain = self.prev[c];
                    c
                }
                None => break,
            };
            if &base[c..c + BLOCK] != window {
                continue;
            }
            let fwd = BLOCK + common_prefix(&base[c + BLOCK..], &target[i + BLOCK..]);
            let back = common_suffix(&base[..c], &target[lit_start..i]);
            let len = fwd + back;
            let start = c - back;
            let better = match &best {
                None => true,
                Some(b) => {
                    len > b.len
                        || (len == b.len && start.abs_diff(cursor) < b.base_start.abs_diff(cursor))
                }
            };
            if better {
                best = Some(Match {
                    base_start: start,
                    target_start: i - back,
                    len,
                });
            }
            if i + fwd == target.len() {
                // Reaches the end of the target: nothing can do better.
                break;
            }
        }
        best
    }
}

fn bucket(h: u32, shift: u32) -> usize {
    // Fibonacci hashing spreads the polynomial hash over the table.
    (h.wrapping_mul(0x9E37_79B1) >> shift) as usize
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(base: &[u8], target: &[u8]) -> Vec<u8> {
        let d = encode(base, target);
        let got = apply(base, &d, target.len()).unwrap();
        assert_eq!(got, target);
        d
    }

    /// Small deterministic generator so the tests need no rand crate.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(checksum(b"123456789"), 0xCBF4_3926);
        assert_eq!(checksum(b""), 0);
        assert_eq!(
            checksum(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        // The eight-byte steps agree with the bit-by-bit definition at every length and
        // alignment of the tail.
        let bitwise = |bytes: &[u8]| {
            let mut c = !0u32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        };
        let data = noise(7, 300);
        for n in 0..data.len() {
            assert_eq!(checksum(&data[..n]), bitwise(&data[..n]), "{n} bytes");
        }
    }

    #[test]
    fn varint_and_zigzag() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, MAX_VARINT] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader { buf: &b, pos: 0 };
            assert_eq!(r.varint().unwrap(), v);
        }
        for v in [0i64, -1, 1, -64, 64, i64::from(i32::MIN), 1 << 40] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        let mut r = Reader {
            buf: &[0xff; 12],
            pos: 0,
        };
        assert!(r.varint().is_err());
    }

    #[test]
    fn edge_cases() {
        round_trip(b"", b"");
        round_trip(b"", b"hello world, this is new");
        round_trip(b"hello world, this is old", b"");
        round_trip(b"short", b"shorter");
        let same = noise(1, 5000);
        let d = round_trip(&same, &same);
        assert!(d.len() < 20, "identical input gave {} bytes", d.len());
    }

    #[test]
    fn early_insert_gives_tiny_delta() {
        let base = noise(7, 50_000);
        let mut target = base.clone();
        target.insert(10, 0xAB);
        let d = round_trip(&base, &target);
        assert!(d.len() < 40, "delta {} bytes", d.len());
        // Deleting, and moving a block from the end to the front.
        let mut t2 = base[..20_000].to_vec();
        t2.extend_from_slice(&base[20_001..]);
        assert!(round_trip(&base, &t2).len() < 40);
        let mut t3 = base[40_000..].to_vec();
        t3.extend_from_slice(&base[..40_000]);
        assert!(round_trip(&base, &t3).len() < 40);
    }

    #[test]
    fn repetitive_data() {
        let base = vec![0u8; 100_000];
        let mut target = vec![0u8; 150_000];
        target[70_000] = 1;
        let d = round_trip(&base, &target);
        assert!(d.len() < 64, "{}", d.len());
    }

    #[test]
    fn detects_corruption_and_wrong_base() {
        let base = noise(3, 4000);
        let mut target = base.clone();
        target[100] ^= 0x55;
        target.extend_from_slice(b"appended bytes");
        let d = encode(&base, &target);
        // Wrong base of the same length: the checksum catches it.
        let mut other = base.clone();
        other[2000] ^= 1;
        assert!(matches!(
            apply(&other, &d, 1 << 20),
            Err(DeltaError::ChecksumMismatch { .. })
        ));
        // Wrong base of another length.
        assert!(matches!(
            apply(&base[1..], &d, 1 << 20),
            Err(DeltaError::BaseMismatch { .. })
        ));
        // Any single flipped byte must be rejected, never panic.
        for i in 0..d.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = d.clone();
                bad[i] ^= bit;
                assert!(apply(&base, &bad, 1 << 20).is_err(), "flip at {i}");
            }
        }
        // Every truncation is rejected.
        for n in 0..d.len() {
            assert!(apply(&base, &d[..n], 1 << 20).is_err());
        }
        let mut long = d.clone();
        long.push(0);
        assert!(apply(&base, &long, 1 << 20).is_err());
    }

    #[test]
    fn hostile_deltas_are_bounded() {
        let base = noise(5, 1000);
        // Declares 1 GiB.
        let mut d = Vec::new();
        d.extend_from_slice(b"GD\x01");
        put_varint(&mut d, base.len() as u64);
        put_varint(&mut d, 1 << 30);
        d.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            apply(&base, &d, 1 << 20),
            Err(DeltaError::TooLarge { .. })
        ));
        // Declares 100 bytes, then copies 1000.
        let mut d = Vec::new();
        d.extend_from_slice(b"GD\x01");
        put_varint(&mut d, base.len() as u64);
        put_varint(&mut d, 100);
        d.extend_from_slice(&[0, 0, 0, 0]);
        put_varint(&mut d, (1000 << 1) | 1);
        put_varint(&mut d, 0);
        assert!(matches!(
            apply(&base, &d, 1 << 20),
            Err(DeltaError::Malformed(_))
        ));
        // Copies before the start of the base.
        let mut d = Vec::new();
        d.extend_from_slice(b"GD\x01");
        put_varint(&mut d, base.len() as u64);
        put_varint(&mut d, 10);
        d.extend_from_slice(&[0, 0, 0, 0]);
        put_varint(&mut d, (10 << 1) | 1);
        put_varint(&mut d, zigzag(-5));
        assert!(matches!(
            apply(&base, &d, 1 << 20),
            Err(DeltaError::Malformed(_))
        ));
        assert_eq!(apply(&base, b"XY\x01", 10), Err(DeltaError::BadMagic));
        assert_eq!(
            apply(&base, b"GD\x09", 10),
            Err(DeltaError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn header_is_readable() {
        let d = encode(b"0123456789abcdef", b"0123456789abcdefXYZ");
        let h = header(&d).unwrap();
        assert_eq!(h.base_len, 16);
        assert_eq!(h.target_len, 19);
        assert_eq!(h.checksum, checksum(b"0123456789abcdefXYZ"));
    }

    #[test]
    fn known_bytes() {
        // Pins the exact layout documented in docs/DELTA.md.
        let d = encode(b"abcdefghijklmnop", b"XXabcdefghijklmnop");
        let mut expect = b"GD\x01\x10\x12".to_vec();
        expect.extend_from_slice(&[0xe8, 0x75, 0xe2, 0x30]);
        expect.extend_from_slice(&[0x04, b'X', b'X', 0x21, 0x00]);
        assert_eq!(d, expect);
    }
}
