/**
 * The binary tile delta format of docs/DELTA.md: rebuilds a new tile from the one the
 * client holds. Every rule of the format's "Rules a decoder must enforce" is checked, so a
 * bad delta is an error (and the caller fetches the whole tile) rather than a wrong tile.
 */

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO-HDLC, as zlib and PNG). */
export function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Applies `delta` to `base`; throws on any violation of the format. */
export function applyDelta(base: Uint8Array, delta: Uint8Array, maxLen = 16 * 1024 * 1024): Uint8Array {
  let pos = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (pos >= delta.length) throw new Error("delta truncated");
      const b = delta[pos++]!;
      v += (b & 0x7f) * mul; // arithmetic: values go past 2^31
      if ((b & 0x80) === 0) {
        if (v > Number.MAX_SAFE_INTEGER) throw new Error("varint too large");
        return v;
      }
      mul *= 128;
    }
    throw new Error("varint too long");
  };
  if (delta.length < 3 || delta[0] !== 0x47 || delta[1] !== 0x44) throw new Error("not a delta");
  if (delta[2] !== 1) throw new Error(`unsupported delta version ${delta[2]}`);
  pos = 3;
  const baseLen = varint();
  if (baseLen !== base.length) throw new Error(`the delta is for a base of ${baseLen} bytes, not ${base.length}`);
  const targetLen = varint();
  if (targetLen > maxLen) throw new Error(`the target would be ${targetLen} bytes, above ${maxLen}`);
  if (pos + 4 > delta.length) throw new Error("delta truncated");
  const crc = (delta[pos]! | (delta[pos + 1]! << 8) | (delta[pos + 2]! << 16) | (delta[pos + 3]! << 24)) >>> 0;
  pos += 4;
  const out = new Uint8Array(targetLen);
  let n = 0;
  let cursor = 0;
  while (n < targetLen) {
    const head = varint();
    const len = Math.floor(head / 2);
    if (len < 1 || len > targetLen - n) throw new Error("an operation of a bad length");
    if (head % 2 === 0) {
      if (pos + len > delta.length) throw new Error("delta truncated");
      out.set(delta.subarray(pos, pos + len), n);
      pos += len;
    } else {
      const z = varint();
      const d = z % 2 === 0 ? z / 2 : -(z + 1) / 2;
      const start = cursor + d;
      if (start < 0 || start + len > base.length) throw new Error("a copy outside the base");
      out.set(base.subarray(start, start + len), n);
      cursor = start + len;
    }
    n += len;
  }
  if (pos !== delta.length) throw new Error("bytes after the end of the delta");
  if (crc32(out) !== crc) throw new Error("checksum mismatch");
  return out;
}
