//! WebSocket framing (RFC 6455), server side.
//!
//! geostream frames its own WebSocket traffic instead of going through a general-purpose
//! library because fan-out writes one shared push frame per subscriber with only the
//! subscription id differing: writing the frame header, the shared bytes and the id straight
//! into the connection's write buffer costs one copy and no allocation per subscriber. Reading
//! is equally direct: no per-connection read buffer while a connection is idle.
//!
//! What this module enforces on client frames: masking, no reserved bits (no extensions are
//! negotiated), known opcodes, control frames short and unfragmented, continuation rules,
//! message size limits, UTF-8 in text messages and close reasons, and valid close codes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use geostream_core::error::{CloseCode, CloseReason};

/// Frame opcodes.
pub(crate) mod opcode {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xa;
}

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The client closes, with its code (if it sent one).
    Close(Option<u16>),
}

/// A protocol violation: the connection is closed with `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct FrameError {
    pub(crate) code: CloseCode,
    pub(crate) reason: &'static str,
}

impl From<FrameError> for CloseReason {
    fn from(e: FrameError) -> Self {
        CloseReason::with_reason(e.code, e.reason)
    }
}

const fn violation(reason: &'static str) -> FrameError {
    FrameError {
        code: CloseCode::ProtocolError,
        reason,
    }
}

/// Turns bytes from the socket into messages.
pub(crate) struct Decoder {
    max_message: usize,
    /// Opcode and payload of a fragmented message in progress.
    partial: Option<(u8, BytesMut)>,
    /// The UTF-8 check of the text message in progress: text is checked as it arrives, so a
    /// message that turns invalid fails at once, not once its last byte is in (RFC 6455
    /// section 8.1, Autobahn cases 6.4.x).
    utf8: Utf8Stream,
    /// Payload bytes of the incomplete text frame at the front of the buffer that are
    /// already unmasked and checked.
    seen: usize,
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
            utf8: Utf8Stream::default(),
            seen: 0,
        }
    }

    /// Decodes the next message from `buf`, consuming what it used. `Ok(None)`: more bytes
    /// are needed (nothing was consumed except complete fragments).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            if buf.len() < 2 {
                return Ok(None);
            }
            let b0 = buf[0];
            let b1 = buf[1];
            let fin = b0 & 0x80 != 0;
            if b0 & 0x70 != 0 {
                return Err(violation(
                    "reserved bits set without a negotiated extension",
                ));
            }
            let op = b0 & 0x0f;
            if b1 & 0x80 == 0 {
                return Err(violation("client frames must be masked"));
            }
            let (len, mut header) = match b1 & 0x7f {
                126 => {
                    if buf.len() < 4 {
                        return Ok(None);
                    }
                    (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
                }
                127 => {
                    if buf.len() < 10 {
                        return Ok(None);
                    }
                    let l = u64::from_be_bytes(buf[2..10].try_into().unwrap_or_default());
                    if l >> 63 != 0 {
                        return Err(violation("frame length has its most significant bit set"));
                    }
                    (l, 10)
                }
                n => (u64::from(n), 2),
            };
            let is_control = op & 0x08 != 0;
            match op {
                opcode::CONTINUATION
                | opcode::TEXT
                | opcode::BINARY
                | opcode::CLOSE
                | opcode::PING
                | opcode::PONG => {}
                _ => return Err(violation("unknown opcode")),
            }
            if is_control && (!fin || len > 125) {
                return Err(violation(
                    "control frames must be unfragmented and at most 125 bytes",
                ));
            }
            // Refuse an oversized message from its header, before buffering any of it.
            let already = self.partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
            if !is_control && already + len > self.max_message as u64 {
                return Err(FrameError {
                    code: CloseCode::MessageTooBig,
                    reason: "message larger than the server's limit",
                });
            }
            // Where the frame stands in a message, known from its header: refused before
            // its payload is waited for.
            let text = match (op, self.partial.as_ref()) {
                (_, _) if is_control => false,
                (opcode::CONTINUATION, None) => {
                    return Err(violation(
                        "continuation frame without a message to continue",
                    ));
                }
                (opcode::CONTINUATION, Some((first, _))) => *first == opcode::TEXT,
                (_, Some(_)) => {
                    return Err(violation(
                        "new message started before the previous one finished",
                    ));
                }
                (op, None) => op == opcode::TEXT,
            };
            let mask_at = header;
            header += 4;
            let total = header + len as usize;
            if text && op == opcode::TEXT && self.seen == 0 {
                self.utf8 = Utf8Stream::default();
            }
            if buf.len() < total {
                if text && buf.len() > header + self.seen {
                    // Check the text that is in, so invalid UTF-8 fails fast.
                    let mask: [u8; 4] = buf[mask_at..mask_at + 4].try_into().unwrap_or_default();
                    let part = &mut buf[header + self.seen..];
                    unmask(part, rotate(mask, self.seen));
                    if !self.utf8.feed(part) {
                        return Err(not_utf8());
                    }
                    self.seen = buf.len() - header;
                }
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let mask: [u8; 4] = buf[mask_at..mask_at + 4].try_into().unwrap_or_default();
            buf.advance(header);
            let mut payload = buf.split_to(len as usize);
            let seen = std::mem::take(&mut self.seen);
            unmask(&mut payload[seen..], rotate(mask, seen));
            if text && (!self.utf8.feed(&payload[seen..]) || (fin && !self.utf8.is_complete())) {
                return Err(not_utf8());
            }

            if is_control {
                return match op {
                    opcode::PING => Ok(Some(Message::Ping(payload.freeze()))),
                    opcode::PONG => Ok(Some(Message::Pong(payload.freeze()))),
                    _ => parse_close(&payload).map(|c| Some(Message::Close(c))),
                };
            }
            // The sequence was checked from the header above.
            match self.partial.as_mut() {
                Some((_, acc)) => acc.extend_from_slice(&payload),
                None if fin => return Ok(Some(finish(op, payload))),
                None => self.partial = Some((op, payload)),
            }
            if fin {
                let (op, acc) = self
                    .partial
                    .take()
                    .unwrap_or((opcode::BINARY, BytesMut::new()));
                return Ok(Some(finish(op, acc)));
            }
        }
    }

    /// Whether a fragmented message is being assembled (its bytes are held meanwhile).
    pub(crate) fn is_assembling(&self) -> bool {
        self.partial.is_some()
    }
}

/// A complete data message (text was checked for UTF-8 as it arrived).
fn finish(op: u8, payload: BytesMut) -> Message {
    if op == opcode::TEXT {
        Message::Text(payload.freeze())
    } else {
        Message::Binary(payload.freeze())
    }
}

const fn not_utf8() -> FrameError {
    FrameError {
        code: CloseCode::InvalidPayload,
        reason: "text message is not UTF-8",
    }
}

/// An incremental UTF-8 check: fed a message in pieces split anywhere (even inside a
/// character), it fails as soon as the bytes so far cannot begin valid UTF-8.
#[derive(Default)]
struct Utf8Stream {
    /// The start of a character cut by the end of the previous piece.
    carry: [u8; 4],
    carried: usize,
}

impl Utf8Stream {
    /// Checks the next piece; `false` once the text is invalid.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        while self.carried > 0 && !data.is_empty() {
            self.carry[self.carried] = data[0];
            self.carried += 1;
            data = &data[1..];
            match std::str::from_utf8(&self.carry[..self.carried]) {
                Ok(_) => self.carried = 0,
                Err(e) if e.error_len().is_some() => return false,
                Err(_) => {}
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carried = tail.len();
                true
            }
        }
    }

    /// Whether the text so far ends on a character boundary.
    fn is_complete(&self) -> bool {
        self.carried == 0
    }
}

/// The mask as it applies from payload offset `at` on.
fn rotate(mask: [u8; 4], at: usize) -> [u8; 4] {
    let r = at % 4;
    [
        mask[r],
        mask[(r + 1) % 4],
        mask[(r + 2) % 4],
        mask[(r + 3) % 4],
    ]
}

fn parse_close(p: &[u8]) -> Result<Option<u16>, FrameError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(violation("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(violation("invalid close code"));
            }
            if std::str::from_utf8(&p[2..]).is_err() {
                return Err(FrameError {
                    code: CloseCode::InvalidPayload,
                    reason: "close reason is not UTF-8",
                });
            }
            Ok(Some(code))
        }
    }
}

/// XORs the payload with the client's mask, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap_or_default()) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Writes the header of an unfragmented, unmasked server frame of `len` bytes.
pub(crate) fn put_header<B: BufMut>(out: &mut B, op: u8, len: usize) {
    out.put_u8(0x80 | op);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= 0xffff {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Writes a whole server frame.
pub(crate) fn put_frame<B: BufMut>(out: &mut B, op: u8, payload: &[u8]) {
    put_header(out, op, payload.len());
    out.put_slice(payload);
}

/// Writes a close frame with a code and a reason (cut to fit 125 bytes).
pub(crate) fn put_close<B: BufMut>(out: &mut B, code: u16, reason: &str) {
    let mut r = reason.as_bytes();
    if r.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    put_header(out, opcode::CLOSE, 2 + r.len());
    out.put_u16(code);
    out.put_slice(r);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a masked client frame.
    pub(crate) fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | op];
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Message>, FrameError> {
        let mut d = Decoder::new(max);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn decodes_every_length_form_and_unmasks() {
        for n in [0usize, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let f = client_frame(true, opcode::BINARY, &payload);
            assert_eq!(
                decode_all(&f, 1 << 20).unwrap(),
                vec![Message::Binary(Bytes::from(payload))],
                "n={n}"
            );
        }
    }

    #[test]
    fn waits_for_complete_frames_byte_by_byte() {
        let mut f = client_frame(true, opcode::TEXT, b"hello");
        f.extend(client_frame(true, opcode::PING, b"p"));
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in f {
            buf.put_u8(b);
            while let Some(m) = d.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                Message::Text(Bytes::from_static(b"hello")),
                Message::Ping(Bytes::from_static(b"p"))
            ]
        );
    }

    #[test]
    fn assembles_fragments_with_interleaved_control_frames() {
        let mut f = client_frame(false, opcode::TEXT, b"hel");
        f.extend(client_frame(true, opcode::PING, b""));
        f.extend(client_frame(false, opcode::CONTINUATION, b"lo "));
        f.extend(client_frame(true, opcode::CONTINUATION, "wörld".as_bytes()));
        assert_eq!(
            decode_all(&f, 1024).unwrap(),
            vec![
                Message::Ping(Bytes::new()),
                Message::Text(Bytes::from("hello wörld"))
            ]
        );
    }

    #[test]
    fn refuses_violations() {
        let unmasked = {
            let mut f = client_frame(true, opcode::TEXT, b"x");
            f[1] &= 0x7f;
            f
        };
        let rsv = {
            let mut f = client_frame(true, opcode::TEXT, b"x");
            f[0] |= 0x40;
            f
        };
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (unmasked, CloseCode::ProtocolError),
            (rsv, CloseCode::ProtocolError),
            (client_frame(true, 0x3, b""), CloseCode::ProtocolError),
            (
                client_frame(false, opcode::PING, b""),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, opcode::PING, &[0; 126]),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, opcode::CONTINUATION, b"x"),
                CloseCode::ProtocolError,
            ),
            (
                [
                    client_frame(false, opcode::TEXT, b"a"),
                    client_frame(true, opcode::TEXT, b"b"),
                ]
                .concat(),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, opcode::TEXT, &[0xff, 0xfe]),
                CloseCode::InvalidPayload,
            ),
            (
                client_frame(true, opcode::BINARY, &[0; 2000]),
                CloseCode::MessageTooBig,
            ),
            (
                [
                    client_frame(false, opcode::BINARY, &[0; 600]),
                    client_frame(true, opcode::CONTINUATION, &[0; 600]),
                ]
                .concat(),
                CloseCode::MessageTooBig,
            ),
            (
                client_frame(true, opcode::CLOSE, &[0x03]),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, opcode::CLOSE, &[0x03, 0xed]),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, opcode::CLOSE, &[0x03, 0xe8, 0xff]),
                CloseCode::InvalidPayload,
            ),
        ];
        for (bytes, code) in cases {
            assert_eq!(
                decode_all(&bytes, 1024).unwrap_err().code,
                code,
                "{bytes:02x?}"
            );
        }
    }

    /// Autobahn 6.4.1/6.4.2: a fragmented text message fails at the fragment that makes it
    /// invalid UTF-8, before the rest arrives (it used to fail only on the last fragment).
    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_makes_it_invalid() {
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&client_frame(false, opcode::TEXT, "κόσμε".as_bytes())[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&client_frame(
            false,
            opcode::CONTINUATION,
            &[0xf4, 0x90, 0x80, 0x80],
        ));
        assert_eq!(
            d.decode(&mut buf).unwrap_err().code,
            CloseCode::InvalidPayload
        );
        // A cut that is only incomplete (not invalid) waits for the next fragment.
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&client_frame(false, opcode::TEXT, &[b'a', 0xe2, 0x82])[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&client_frame(true, opcode::CONTINUATION, &[0xac]));
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Message::Text(Bytes::from("a€")))
        );
        // A message that ends inside a character is invalid.
        let f = client_frame(true, opcode::TEXT, &[b'a', 0xe2, 0x82]);
        assert_eq!(
            decode_all(&f, 1024).unwrap_err().code,
            CloseCode::InvalidPayload
        );
    }

    /// Autobahn 6.4.3/6.4.4: invalid UTF-8 in the part of a text frame that has arrived fails
    /// before the rest of the frame is in (it used to wait for the whole frame).
    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(b"edited");
        let f = client_frame(true, opcode::TEXT, &payload);
        let cut = f.len() - 6;
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&f[..cut - 3]);
        assert_eq!(d.decode(&mut buf).unwrap(), None, "valid so far");
        buf.extend_from_slice(&f[cut - 3..cut]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err().code,
            CloseCode::InvalidPayload
        );
    }

    /// Unmasking part of a frame early and the rest later gives the same text, whatever the
    /// cut, and characters cut by reads or fragments are reassembled.
    #[test]
    fn text_checked_in_pieces_decodes_the_same() {
        let text = "a€b😀c ü".repeat(5);
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut f = client_frame(false, opcode::TEXT, &bytes[..split]);
            f.extend(client_frame(true, opcode::CONTINUATION, &bytes[split..]));
            for step in [1usize, 3, 7] {
                let mut d = Decoder::new(1024);
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for chunk in f.chunks(step) {
                    buf.extend_from_slice(chunk);
                    while let Some(m) = d.decode(&mut buf).unwrap() {
                        got.push(m);
                    }
                }
                assert_eq!(got, vec![Message::Text(Bytes::from(text.clone()))]);
            }
        }
    }

    /// A frame that breaks the message sequence is refused from its header, before its
    /// payload is waited for.
    #[test]
    fn sequence_errors_are_refused_from_the_header() {
        let mut f = client_frame(false, opcode::TEXT, b"a");
        f.extend_from_slice(&client_frame(true, opcode::BINARY, &[0; 500])[..8]);
        assert_eq!(
            decode_all(&f, 1024).unwrap_err().code,
            CloseCode::ProtocolError
        );
        let f = &client_frame(true, opcode::CONTINUATION, &[0; 500])[..8];
        assert_eq!(
            decode_all(f, 1024).unwrap_err().code,
            CloseCode::ProtocolError
        );
    }

    #[test]
    fn oversized_header_is_refused_before_the_payload_arrives() {
        let mut f = vec![0x82, 0xff];
        f.extend_from_slice(&(10u64 << 30).to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        let mut d = Decoder::new(1 << 20);
        let mut buf = BytesMut::from(&f[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err().code,
            CloseCode::MessageTooBig
        );
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            decode_all(&client_frame(true, opcode::CLOSE, &[]), 10).unwrap(),
            vec![Message::Close(None)]
        );
        assert_eq!(
            decode_all(
                &client_frame(true, opcode::CLOSE, &[0x03, 0xe8, b'o', b'k']),
                10
            )
            .unwrap(),
            vec![Message::Close(Some(1000))]
        );
        let mut out = Vec::new();
        put_close(&mut out, 4008, &"é".repeat(100));
        assert!(out.len() <= 127);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn server_headers() {
        for (n, hlen) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            put_header(&mut out, opcode::TEXT, n);
            assert_eq!(out.len(), hlen);
            assert_eq!(out[0], 0x81);
        }
    }
}
