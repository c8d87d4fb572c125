//! Fuzz properties of the Zstandard path: `decompress_bounded` (client frames in
//! `msgpack-zstd`) and `decode_server_frame_limited(MsgpackZstd, ..)` (the client's decoder).
//!
//! Inputs are built from zstd's frame format (RFC 8878): frame headers with arbitrary
//! descriptors, declared content sizes up to 2^64-1 and windows up to 2^41; raw, RLE,
//! compressed and reserved blocks; skippable frames claiming 4 GB; bombs of thousands of
//! 128 KiB RLE blocks (a few bytes each); real compressed frames; all of it mutated.
//!
//! Every property: no panic; the output never exceeds the limit; errors are `parse_error` or
//! `limit_exceeded`; the peak heap use (zstd's own context and window included: the crate
//! routes zstd's allocations through Rust's allocator) stays below a constant plus a multiple
//! of the limit and of the input, whatever the frame declares.

mod fuzz_support;

use std::sync::OnceLock;

use fuzz_support::{apply, config, mutations, peak_alloc};
use geostream_core::ErrorCode;
use geostream_core::codec::{
    Encoding, ZSTD_MAGIC, decode_server_frame_limited, decompress_bounded, encode_request,
};
use proptest::prelude::*;

/// zstd's decompression context and input buffer, with room to spare (measured: 96 KiB).
const ZSTD_FIXED: usize = 512 * 1024;

const LIMITS: &[usize] = &[1024, 4096, 64 * 1024, 1 << 20];

fn bound(limit: usize, input: usize) -> usize {
    // The window (at most twice the limit, see `decompress_bounded`), the output (limit + 1,
    // grown by doubling) and a copy of the input.
    ZSTD_FIXED + 5 * limit + 2 * input
}

#[derive(Debug, Clone)]
enum Block {
    Raw(Vec<u8>),
    Rle(u8, u32),
    Compressed(Vec<u8>),
    Reserved(Vec<u8>),
    /// A header whose declared size differs from the bytes that follow.
    Lying(u8, u32, Vec<u8>),
}

fn block_header(last: bool, kind: u8, size: u32) -> [u8; 3] {
    let h = u32::from(last) | (u32::from(kind & 3) << 1) | ((size & 0x1f_ffff) << 3);
    let b = h.to_le_bytes();
    [b[0], b[1], b[2]]
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Block::Raw),
        3 => (any::<u8>(), prop_oneof![0u32..1024, Just(128 * 1024), 0u32..(1 << 21)])
            .prop_map(|(b, n)| Block::Rle(b, n)),
        2 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Block::Compressed),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Block::Reserved),
        1 => (0u8..4, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(k, n, b)| Block::Lying(k, n, b)),
    ]
}

fn write_blocks(out: &mut Vec<u8>, blocks: &[Block], close: bool) {
    for (i, b) in blocks.iter().enumerate() {
        let last = close && i + 1 == blocks.len();
        match b {
            Block::Raw(d) => {
                out.extend_from_slice(&block_header(last, 0, d.len() as u32));
                out.extend_from_slice(d);
            }
            Block::Rle(byte, n) => {
                out.extend_from_slice(&block_header(last, 1, *n));
                out.push(*byte);
            }
            Block::Compressed(d) => {
                out.extend_from_slice(&block_header(last, 2, d.len() as u32));
                out.extend_from_slice(d);
            }
            Block::Reserved(d) => {
                out.extend_from_slice(&block_header(last, 3, d.len() as u32));
                out.extend_from_slice(d);
            }
            Block::Lying(k, n, d) => {
                out.extend_from_slice(&block_header(last, *k, *n));
                out.extend_from_slice(d);
            }
        }
    }
}

/// A frame header: magic, descriptor, window descriptor, dictionary id, content size.
fn header() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..4,                                               // content size flag
        any::<bool>(),                                        // single segment
        any::<bool>(),                                        // checksum
        0u8..4,                                               // dictionary id flag
        prop_oneof![Just(0u8), any::<u8>()],                  // reserved/unused bits, usually clear
        prop_oneof![Just(0xffu8), 0x38..0x40u8, any::<u8>()], // window descriptor
        prop_oneof![Just(u64::MAX), Just(1u64 << 40), any::<u64>(), 0u64..4096],
        any::<u32>(),
    )
        .prop_map(
            |(fcs, single, checksum, dict, junk, window, size, dict_id)| {
                let mut h = ZSTD_MAGIC.to_vec();
                let fhd = (fcs << 6)
                    | (u8::from(single) << 5)
                    | (junk & 0x18)
                    | (u8::from(checksum) << 2)
                    | dict;
                h.push(fhd);
                if !single {
                    h.push(window);
                }
                let dict_len = [0, 1, 2, 4][usize::from(dict)];
                h.extend_from_slice(&dict_id.to_le_bytes()[..dict_len]);
                let fcs_len = match fcs {
                    0 if single => 1,
                    0 => 0,
                    1 => 2,
                    2 => 4,
                    _ => 8,
                };
                let size = if fcs == 1 {
                    size.saturating_sub(256)
                } else {
                    size
                };
                h.extend_from_slice(&size.to_le_bytes()[..fcs_len]);
                h
            },
        )
}

/// A decompression bomb: a multi-segment frame (window 128 KiB) of `n` RLE blocks of
/// 128 KiB, four bytes each, with no declared content size.
fn rle_bomb(n: usize, byte: u8) -> Vec<u8> {
    let mut f = ZSTD_MAGIC.to_vec();
    f.extend_from_slice(&[0x00, 0x38]);
    let blocks: Vec<Block> = (0..n).map(|_| Block::Rle(byte, 128 * 1024)).collect();
    write_blocks(&mut f, &blocks, true);
    f
}

/// 64 MiB of zeros, compressed once for all cases (a few kilobytes).
fn zeros_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap())
}

/// One frame of a stream.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Structured garbage.
        4 => (header(), proptest::collection::vec(block(), 0..6), any::<bool>(), any::<u32>())
            .prop_map(|(mut h, blocks, close, checksum)| {
                write_blocks(&mut h, &blocks, close);
                if close && h[4] & 0x04 != 0 {
                    h.extend_from_slice(&checksum.to_le_bytes());
                }
                h
            }),
        // RLE bombs: up to 4096 x 128 KiB = 512 MiB declared by 16 KiB.
        2 => (prop_oneof![1usize..16, 16usize..4096], any::<u8>()).prop_map(|(n, b)| rle_bomb(n, b)),
        // The same bomb header with a declared content size (single segment, so the window
        // is the content size).
        1 => (any::<u64>(), 1usize..64).prop_map(|(size, n)| {
            let mut f = ZSTD_MAGIC.to_vec();
            f.push(0xe0);
            f.extend_from_slice(&size.to_le_bytes());
            let blocks: Vec<Block> = (0..n).map(|_| Block::Rle(0, 128 * 1024)).collect();
            write_blocks(&mut f, &blocks, true);
            f
        }),
        // Real compressed data around the limits, from a MessagePack frame.
        3 => (0usize..(2 << 20), 1i32..4, any::<u8>()).prop_map(|(n, level, b)| {
            let body = vec![b; n];
            let frame = encode_request(Encoding::Msgpack, None, "ping", &serde_json::json!({ "data": body.len() }));
            let mut plain = frame.to_vec();
            plain.extend(body.iter().take(n));
            zstd::bulk::compress(&plain, level).unwrap()
        }),
        // Skippable frames, possibly claiming 4 GB.
        1 => (0u8..16, prop_oneof![Just(u32::MAX), 0u32..64], proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(m, n, d)| {
                let mut f = (0x184d_2a50u32 + u32::from(m)).to_le_bytes().to_vec();
                f.extend_from_slice(&n.to_le_bytes());
                f.extend_from_slice(&d);
                f
            }),
        1 => Just(zeros_bomb().to_vec()),
    ]
}

const TOKENS: &[&[u8]] = &[
    &[0x28, 0xb5, 0x2f, 0xfd],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x50, 0x2a, 0x4d, 0x18, 0xff, 0xff, 0xff, 0xff],
    &[0x00],
    &[0xe0],
    &[0x38],
    &[0xff],
    &[0x03, 0x00, 0x10],
];

fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(frame(), 1..3),
        mutations(TOKENS, 3),
    )
        .prop_map(|(frames, ms)| {
            // The server only takes the zstd path for data that starts with the magic number.
            let mut s = ZSTD_MAGIC.to_vec();
            let joined = frames.concat();
            s.extend_from_slice(joined.strip_prefix(&ZSTD_MAGIC[..]).unwrap_or(&joined));
            apply(&s, &ms)
        })
}

fn check(data: &[u8], limit: usize) -> Result<(), TestCaseError> {
    let (r, peak) = peak_alloc(|| decompress_bounded(data, limit));
    match &r {
        Ok(out) => prop_assert!(out.len() <= limit, "{} bytes out, limit {limit}", out.len()),
        Err(e) => {
            prop_assert!(
                matches!(
                    e.error.code,
                    ErrorCode::ParseError | ErrorCode::LimitExceeded
                ),
                "{:?}",
                e.error.code
            );
            prop_assert!(!e.error.message.is_empty() && e.error.message.len() <= 256);
        }
    }
    prop_assert!(
        peak <= bound(limit, data.len()),
        "{peak} bytes for {} bytes in, limit {limit}",
        data.len()
    );
    if limit <= 64 * 1024 {
        // The client's decoder: the same bound, plus reading the (at most `limit`) bytes
        // into JSON values.
        let (_, peak) =
            peak_alloc(|| decode_server_frame_limited(Encoding::MsgpackZstd, data, limit).is_ok());
        prop_assert!(
            peak <= (2 << 20) + bound(limit, data.len()) + 256 * limit,
            "server frame: {peak} bytes for {} bytes in, limit {limit}",
            data.len()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(600))]

    /// Structured and mutated zstd streams against every limit.
    #[test]
    fn zstd_streams(data in stream(), limit in proptest::sample::select(LIMITS)) {
        check(&data, limit)?;
    }

    /// Arbitrary bytes after the magic number.
    #[test]
    fn arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..256), limit in proptest::sample::select(LIMITS)) {
        let mut data = ZSTD_MAGIC.to_vec();
        data.extend_from_slice(&tail);
        check(&data, limit)?;
    }

    /// Real compressed frames come back exactly when they fit the limit, and are refused
    /// with `limit_exceeded` when they do not, however well they compress.
    #[test]
    fn round_trip_or_limit_exceeded(
        n in prop_oneof![0usize..2048, 2048usize..(3 << 20)],
        byte in any::<u8>(),
        level in 1i32..4,
        limit in proptest::sample::select(LIMITS),
    ) {
        let mut plain = encode_request(Encoding::Msgpack, None, "ping", &serde_json::json!({})).to_vec();
        plain.extend(std::iter::repeat_n(byte, n));
        let z = zstd::bulk::compress(&plain, level).unwrap();
        let (r, peak) = peak_alloc(|| decompress_bounded(&z, limit));
        prop_assert!(peak <= bound(limit, z.len()), "{peak} bytes for {} in, limit {limit}", z.len());
        if plain.len() <= limit {
            prop_assert_eq!(r.map_err(|e| e.error.message.into_owned()), Ok(plain));
        } else {
            prop_assert_eq!(r.map_err(|e| e.error.code).unwrap_err(), ErrorCode::LimitExceeded);
        }
    }

    /// RLE bombs whose window fits the limit: refused with `limit_exceeded`, after producing
    /// no more than the limit.
    #[test]
    fn rle_bombs(blocks in 9usize..4096, byte in any::<u8>()) {
        let limit = 1 << 20;
        let bomb = rle_bomb(blocks, byte);
        let (r, peak) = peak_alloc(|| decompress_bounded(&bomb, limit));
        prop_assert_eq!(r.map_err(|e| e.error.code).unwrap_err(), ErrorCode::LimitExceeded);
        prop_assert!(peak <= bound(limit, bomb.len()), "{peak} bytes for {} in", bomb.len());
    }
}

/// The meter must see zstd's own allocations (its window lives in C), or the bounds above
/// would prove nothing about them.
#[test]
fn the_meter_sees_zstd_windows() {
    use std::io::Read;
    let bomb = rle_bomb(64, 7);
    let (n, peak) = peak_alloc(|| {
        let mut d = zstd::stream::read::Decoder::with_buffer(&bomb[..]).unwrap();
        let mut buf = [0u8; 16];
        d.read(&mut buf).unwrap()
    });
    assert!(n > 0);
    // A 128 KiB window plus the context.
    assert!(peak > 128 * 1024, "only {peak} bytes seen");
}
