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
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
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
            let mask_at = header;
            header += 4;
            let total = header + len as usize;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let mask: [u8; 4] = buf[mask_at..mask_at + 4].try_into().unwrap_or_default();
            buf.advance(header);
            let mut payload = buf.split_to(len as usize);
            unmask(&mut payload, mask);

            if is_control {
                return match op {
                    opcode::PING => Ok(Some(Message::Ping(payload.freeze()))),
                    opcode::PONG => Ok(Some(Message::Pong(payload.freeze()))),
                    _ => parse_close(&payload).map(|c| Some(Message::Close(c))),
                };
            }
            match (op, self.partial.as_mut()) {
                (opcode::CONTINUATION, None) => {
                    return Err(violation(
                        "continuation frame without a message to continue",
                    ));
                }
                (opcode::CONTINUATION, Some((_, acc))) => acc.extend_from_slice(&payload),
                (_, Some(_)) => {
                    return Err(violation(
                        "new message started before the previous one finished",
                    ));
                }
                (_, None) if fin => return finish(op, payload).map(Some),
                (_, None) => self.partial = Some((op, payload)),
            }
            if fin {
                let (op, acc) = self
                    .partial
                    .take()
                    .unwrap_or((opcode::BINARY, BytesMut::new()));
                return finish(op, acc).map(Some);
            }
        }
    }

    /// Whether a fragmented message is being assembled (its bytes are held meanwhile).
    pub(crate) fn is_assembling(&self) -> bool {
        self.partial.is_some()
    }
}

fn finish(op: u8, payload: BytesMut) -> Result<Message, FrameError> {
    if op == opcode::TEXT {
        if std::str::from_utf8(&payload).is_err() {
            return Err(FrameError {
                code: CloseCode::InvalidPayload,
                reason: "text message is not UTF-8",
            });
        }
        Ok(Message::Text(payload.freeze()))
    } else {
        Ok(Message::Binary(payload.freeze()))
    }
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
