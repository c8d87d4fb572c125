//! The little of the protobuf wire format that vector tiles need: varints,
//! zigzag, fixed 32/64-bit values and length-delimited fields. Written by
//! hand so the byte order of every field is ours to fix (determinism) and so
//! the crate needs no code generator.

/// Wire type of varint fields.
const VARINT: u32 = 0;
/// Wire type of 64-bit fields.
const FIXED64: u32 = 1;
/// Wire type of length-delimited fields.
const LEN: u32 = 2;
/// Wire type of 32-bit fields.
const FIXED32: u32 = 5;

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from((field << 3) | wire));
}

pub(super) fn put_uint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, VARINT);
    put_varint(out, v);
}

pub(super) fn put_sint_field(out: &mut Vec<u8>, field: u32, v: i64) {
    put_key(out, field, VARINT);
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub(super) fn put_bool_field(out: &mut Vec<u8>, field: u32, v: bool) {
    put_key(out, field, VARINT);
    out.push(u8::from(v));
}

pub(super) fn put_double_field(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_float_field(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A packed repeated uint32 field (tags, geometry).
pub(super) fn put_packed_field(out: &mut Vec<u8>, field: u32, values: &[u32]) {
    if values.is_empty() {
        return;
    }
    let len: usize = values.iter().map(|&v| varint_len(u64::from(v))).sum();
    put_key(out, field, LEN);
    put_varint(out, len as u64);
    for &v in values {
        put_varint(out, u64::from(v));
    }
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    ((64 - (v | 1).leading_zeros()) as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xAC, 0x02]);
    }
}

/// One field read back from a protobuf message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A minimal protobuf reader, used only to read back the key and value
/// tables of an earlier tile. Returns `None` on anything malformed.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next field, `Some(None)` at the end of the buffer, `None` when
    /// malformed (including the deprecated group wire types).
    pub(super) fn next_field(&mut self) -> Option<Option<(u32, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Some(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).ok()?;
        let value = match (key & 7) as u32 {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => {
                let b = self.take(8)?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().ok()?))
            }
            LEN => {
                let n = usize::try_from(self.varint()?).ok()?;
                Field::Bytes(self.take(n)?)
            }
            FIXED32 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes(b.try_into().ok()?))
            }
            _ => return None,
        };
        Some(Some((field, value)))
    }
}
