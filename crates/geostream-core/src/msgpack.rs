//! A validating walker over untrusted MessagePack.
//!
//! Decoders that trust a length prefix can be made to allocate gigabytes by a five-byte input
//! (`0xdd ff ff ff ff`: "an array of 4 billion elements"). Before any frame from the network is
//! decoded, [`value_len`] walks it once: every length is checked against the bytes that are
//! actually left, nesting depth is bounded, strings must be UTF-8 and, where the value has to be
//! representable in JSON, map keys must be strings and extension types are refused. The walk
//! touches each byte at most once and allocates nothing, so its cost is linear in the input.

use thiserror::Error;

/// Why a MessagePack value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MsgpackError {
    /// The input ends inside a value.
    #[error("truncated MessagePack value")]
    Truncated,
    /// A marker byte that the format does not define (0xc1).
    #[error("invalid MessagePack marker 0x{0:02x}")]
    InvalidMarker(u8),
    /// Deeper nesting than allowed.
    #[error("MessagePack nesting deeper than {0}")]
    TooDeep(usize),
    /// A `str` that is not UTF-8.
    #[error("MessagePack string is not UTF-8")]
    InvalidUtf8,
    /// A map key that is not a string, where the value must be representable in JSON.
    #[error("MessagePack map keys must be strings")]
    NonStringKey,
    /// An extension type, where the value must be representable in JSON.
    #[error("MessagePack extension types are not supported")]
    Extension,
    /// Bytes left over after the value.
    #[error("trailing bytes after MessagePack value")]
    Trailing,
}

/// Rules for [`value_len`].
#[derive(Clone, Copy, Debug)]
pub struct WalkRules {
    /// Maximum nesting of arrays and maps.
    pub max_depth: usize,
    /// Refuse what JSON cannot represent (non-string map keys, extension types).
    pub json_compatible: bool,
}

impl Default for WalkRules {
    fn default() -> Self {
        WalkRules {
            max_depth: 64,
            json_compatible: true,
        }
    }
}

/// Returns the length in bytes of the first complete MessagePack value in `buf`.
pub fn value_len(buf: &[u8], rules: WalkRules) -> Result<usize, MsgpackError> {
    let mut w = Walker { buf, pos: 0, rules };
    w.value(0)?;
    Ok(w.pos)
}

/// Checks that `buf` is exactly one valid MessagePack value.
pub fn validate_exact(buf: &[u8], rules: WalkRules) -> Result<(), MsgpackError> {
    if value_len(buf, rules)? == buf.len() {
        Ok(())
    } else {
        Err(MsgpackError::Trailing)
    }
}

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    rules: WalkRules,
}

impl Walker<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MsgpackError> {
        let end = self.pos.checked_add(n).ok_or(MsgpackError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(MsgpackError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, MsgpackError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<usize, MsgpackError> {
        let s = self.take(n)?;
        let mut v: u64 = 0;
        for b in s {
            v = (v << 8) | u64::from(*b);
        }
        usize::try_from(v).map_err(|_| MsgpackError::Truncated)
    }

    fn skip(&mut self, n: usize) -> Result<(), MsgpackError> {
        self.take(n).map(|_| ())
    }

    fn string(&mut self, n: usize) -> Result<(), MsgpackError> {
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(|_| ())
            .map_err(|_| MsgpackError::InvalidUtf8)
    }

    fn is_string_marker(b: u8) -> bool {
        matches!(b, 0xa0..=0xbf | 0xd9..=0xdb)
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<(), MsgpackError> {
        // Each element takes at least one byte, so a count larger than what is left is a lie.
        if n > self.buf.len() - self.pos {
            return Err(MsgpackError::Truncated);
        }
        for _ in 0..n {
            self.value(depth + 1)?;
        }
        Ok(())
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<(), MsgpackError> {
        if n > (self.buf.len() - self.pos) / 2 {
            return Err(MsgpackError::Truncated);
        }
        for _ in 0..n {
            if self.rules.json_compatible {
                let k = *self.buf.get(self.pos).ok_or(MsgpackError::Truncated)?;
                if !Self::is_string_marker(k) {
                    return Err(MsgpackError::NonStringKey);
                }
            }
            self.value(depth + 1)?;
            self.value(depth + 1)?;
        }
        Ok(())
    }

    fn ext(&mut self, n: usize) -> Result<(), MsgpackError> {
        if self.rules.json_compatible {
            return Err(MsgpackError::Extension);
        }
        self.skip(n + 1)
    }

    fn value(&mut self, depth: usize) -> Result<(), MsgpackError> {
        if depth > self.rules.max_depth {
            return Err(MsgpackError::TooDeep(self.rules.max_depth));
        }
        let m = self.byte()?;
        match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Ok(()),
            0x80..=0x8f => self.map(usize::from(m & 0x0f), depth),
            0x90..=0x9f => self.array(usize::from(m & 0x0f), depth),
            0xa0..=0xbf => self.string(usize::from(m & 0x1f)),
            0xc1 => Err(MsgpackError::InvalidMarker(m)),
            0xc4 => {
                let n = self.be(1)?;
                self.skip(n)
            }
            0xc5 => {
                let n = self.be(2)?;
                self.skip(n)
            }
            0xc6 => {
                let n = self.be(4)?;
                self.skip(n)
            }
            0xc7 => {
                let n = self.be(1)?;
                self.ext(n)
            }
            0xc8 => {
                let n = self.be(2)?;
                self.ext(n)
            }
            0xc9 => {
                let n = self.be(4)?;
                self.ext(n)
            }
            0xca => self.skip(4),
            0xcb => self.skip(8),
            0xcc | 0xd0 => self.skip(1),
            0xcd | 0xd1 => self.skip(2),
            0xce | 0xd2 => self.skip(4),
            0xcf | 0xd3 => self.skip(8),
            0xd4 => self.ext(1),
            0xd5 => self.ext(2),
            0xd6 => self.ext(4),
            0xd7 => self.ext(8),
            0xd8 => self.ext(16),
            0xd9 => {
                let n = self.be(1)?;
                self.string(n)
            }
            0xda => {
                let n = self.be(2)?;
                self.string(n)
            }
            0xdb => {
                let n = self.be(4)?;
                self.string(n)
            }
            0xdc => {
                let n = self.be(2)?;
                self.array(n, depth)
            }
            0xdd => {
                let n = self.be(4)?;
                self.array(n, depth)
            }
            0xde => {
                let n = self.be(2)?;
                self.map(n, depth)
            }
            0xdf => {
                let n = self.be(4)?;
                self.map(n, depth)
            }
        }
    }
}

/// Reads an array header at the start of `buf`: `(element count, header length)`.
pub fn array_header(buf: &[u8]) -> Option<(usize, usize)> {
    match *buf.first()? {
        m @ 0x90..=0x9f => Some((usize::from(m & 0x0f), 1)),
        0xdc => Some((
            usize::from(u16::from_be_bytes(buf.get(1..3)?.try_into().ok()?)),
            3,
        )),
        0xdd => Some((
            u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize,
            5,
        )),
        _ => None,
    }
}

/// Reads a map header at the start of `buf`: `(pair count, header length)`.
pub fn map_header(buf: &[u8]) -> Option<(usize, usize)> {
    match *buf.first()? {
        m @ 0x80..=0x8f => Some((usize::from(m & 0x0f), 1)),
        0xde => Some((
            usize::from(u16::from_be_bytes(buf.get(1..3)?.try_into().ok()?)),
            3,
        )),
        0xdf => Some((
            u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize,
            5,
        )),
        _ => None,
    }
}

/// Reads a string at the start of `buf`: `(the string, bytes consumed)`.
pub fn read_str(buf: &[u8]) -> Option<(&str, usize)> {
    let (n, h): (usize, usize) = match *buf.first()? {
        m @ 0xa0..=0xbf => (usize::from(m & 0x1f), 1),
        0xd9 => (usize::from(*buf.get(1)?), 2),
        0xda => (
            usize::from(u16::from_be_bytes(buf.get(1..3)?.try_into().ok()?)),
            3,
        ),
        0xdb => (
            u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize,
            5,
        ),
        _ => return None,
    };
    let s = std::str::from_utf8(buf.get(h..h.checked_add(n)?)?).ok()?;
    Some((s, h + n))
}

/// Finds the raw bytes of `key`'s value in a map that has already been validated.
pub fn map_field<'a>(map: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let rules = WalkRules {
        max_depth: 64,
        json_compatible: false,
    };
    let (n, mut pos) = map_header(map)?;
    for _ in 0..n {
        let klen = value_len(&map[pos..], rules).ok()?;
        let k = read_str(&map[pos..pos + klen]).map(|(s, _)| s);
        pos += klen;
        let vlen = value_len(&map[pos..], rules).ok()?;
        if k == Some(key) {
            return Some(&map[pos..pos + vlen]);
        }
        pos += vlen;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> WalkRules {
        WalkRules::default()
    }

    #[test]
    fn measures_values() {
        let v = rmp_serde::to_vec_named(
            &serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {"c": -7}}),
        )
        .unwrap();
        assert_eq!(value_len(&v, rules()), Ok(v.len()));
        let mut two = v.clone();
        two.extend_from_slice(&v);
        assert_eq!(value_len(&two, rules()), Ok(v.len()));
        assert_eq!(validate_exact(&two, rules()), Err(MsgpackError::Trailing));
    }

    #[test]
    fn refuses_lying_length_prefixes() {
        // "array of 4 billion elements", "string of 4 GB", "map of 4 billion pairs", "bin 4 GB"
        for bomb in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'a', 0x01],
            &[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],
        ] {
            assert_eq!(
                value_len(bomb, rules()),
                Err(MsgpackError::Truncated),
                "{bomb:?}"
            );
        }
    }

    #[test]
    fn bounds_depth() {
        let deep = vec![0x91u8; 100_000];
        assert_eq!(value_len(&deep, rules()), Err(MsgpackError::TooDeep(64)));
    }

    #[test]
    fn json_compatibility() {
        assert_eq!(
            value_len(&[0x81, 0x01, 0x02], rules()),
            Err(MsgpackError::NonStringKey)
        );
        assert_eq!(
            value_len(&[0xd4, 0x01, 0x02], rules()),
            Err(MsgpackError::Extension)
        );
        assert_eq!(
            value_len(&[0xa2, 0xff, 0xfe], rules()),
            Err(MsgpackError::InvalidUtf8)
        );
        assert_eq!(
            value_len(&[0xc1], rules()),
            Err(MsgpackError::InvalidMarker(0xc1))
        );
        let lax = WalkRules {
            json_compatible: false,
            ..rules()
        };
        assert_eq!(value_len(&[0xd4, 0x01, 0x02], lax), Ok(3));
    }

    #[test]
    fn finds_fields() {
        let v =
            rmp_serde::to_vec_named(&serde_json::json!({"channel": "c", "data": {"x": [1, 2]}}))
                .unwrap();
        let data = map_field(&v, "data").unwrap();
        let back: serde_json::Value = rmp_serde::from_slice(data).unwrap();
        assert_eq!(back, serde_json::json!({"x": [1, 2]}));
        assert!(map_field(&v, "missing").is_none());
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_input() {
        let v = rmp_serde::to_vec_named(
            &serde_json::json!({"k": ["a", 1, {"z": 3.0}], "m": "x".repeat(300)}),
        )
        .unwrap();
        for i in 0..v.len() {
            assert!(value_len(&v[..i], rules()).is_err());
        }
    }
}
