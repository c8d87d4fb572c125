//! One WebSocket connection: a reader (this task) and a writer task.
//!
//! The reader waits for the socket to become readable and only then takes a read buffer, and
//! gives it back when the connection goes quiet, so an idle connection holds no buffer. The
//! writer drains the session's outbox in chunks, frames everything into one write buffer and
//! writes it with one call; pushes are spliced for this connection's subscription ids as they
//! are framed.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use geostream_core::api::{self, GapPush};
use geostream_core::codec::{self, Encoding};
use geostream_core::error::CloseCode;
use geostream_hub::{CloseReason, Control, Outgoing, Session};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frame::{self, Decoder, Message, opcode};
use super::rpc::Rpc;
use crate::metrics::LocalHistogram;
use crate::node::Node;

/// The writer takes at most this much from the outbox per write, so a burst does not build
/// an unbounded write buffer and the outbox keeps accounting for what is still queued.
const WRITE_CHUNK: usize = 64 * 1024;

/// Read size per readiness event.
const READ_CHUNK: usize = 4096;

/// How long to wait for the client's close frame after ours, and for the writer to flush
/// after the client's.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// hyper waited for this socket to become readable before it handed the socket over, which
/// left its HTTP connection task's waker in the socket's registration. This connection waits
/// with `readable()`, which does not replace that waker, so the finished HTTP task (3.5 KB)
/// would stay allocated until the socket's next event: on an idle connection, for its whole
/// life. Polling the readiness once here puts this task's waker in its place.
async fn forget_previous_wakers(stream: &TcpStream) {
    std::future::poll_fn(|cx| {
        let _ = stream.poll_read_ready(cx);
        let _ = stream.poll_write_ready(cx);
        std::task::Poll::Ready(())
    })
    .await;
}

/// Serves an upgraded connection until it closes.
pub(crate) async fn serve(
    stream: TcpStream,
    leftover: BytesMut,
    node: Arc<Node>,
    encoding: Encoding,
    peer: SocketAddr,
    admitted: super::Admitted,
) {
    let _ = stream.set_nodelay(true);
    forget_previous_wakers(&stream).await;
    // The permit holds this connection's place in the connection limits until it ends.
    let super::Admitted {
        principal,
        permit: _permit,
    } = admitted;
    let session = node.open_session(encoding, principal.user.clone());
    node.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(session = %session.id(), %peer, %encoding, "WebSocket connected.");
    let (rd, wr) = stream.into_split();
    let mut writer = tokio::spawn(write_loop(wr, session.clone(), node.clone()));
    let mut rpc = Rpc::new(node.clone(), session.clone(), principal);
    let ended = read_loop(&rd, leftover, &node, &session, &mut rpc, &mut writer).await;
    rpc.abort_all();
    if let Some(holder) = rpc.lock_holder() {
        Box::pin(node.layers.release_client(holder)).await;
    }
    match ended {
        ReadEnd::WriterDone => {
            // Our close frame is out: the session is over. Then give the client a moment to
            // answer it, so the TCP connection ends cleanly.
            Box::pin(node.close_session(&session)).await;
            node.metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
            linger(&rd, node.config.websocket.max_frame_bytes).await;
            return;
        }
        ReadEnd::Close(reason) => {
            session.outbox.close(reason);
            if tokio::time::timeout(CLOSE_WAIT, &mut writer).await.is_err() {
                writer.abort();
            }
        }
        ReadEnd::Gone => writer.abort(),
    }
    Box::pin(node.close_session(&session)).await;
    node.metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(session = %session.id(), %peer, "WebSocket closed.");
}

enum ReadEnd {
    /// The writer finished (it sent a close frame, or the socket failed).
    WriterDone,
    /// Close the connection with this reason (the client's close, or a violation).
    Close(CloseReason),
    /// The peer went away without a close frame.
    Gone,
}

/// Reads (and discards) until the client's close frame, end of stream or [`CLOSE_WAIT`].
pub(crate) async fn linger(rd: &OwnedReadHalf, max_frame: usize) {
    let mut dec = Decoder::new(max_frame);
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    loop {
        if !matches!(
            tokio::time::timeout_at(deadline, rd.readable()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        match read_some(rd, &mut buf) {
            Read::Gone => return,
            Read::NotYet => {}
            Read::Data => loop {
                match dec.decode(&mut buf) {
                    Ok(Some(Message::Close(_))) | Err(_) => return,
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                }
            },
        }
    }
}

/// What one read from a socket that reported readiness brought.
pub(crate) enum Read {
    /// Bytes were appended to the buffer.
    Data,
    /// The readiness was spurious: nothing to read yet.
    NotYet,
    /// End of stream or a socket error.
    Gone,
}

/// Reads what is available (up to [`READ_CHUNK`] more) into `buf` without waiting; call it
/// once the socket reported readiness. The buffer grows only when there is something to read.
pub(crate) fn read_some(rd: &OwnedReadHalf, buf: &mut BytesMut) -> Read {
    buf.reserve(READ_CHUNK);
    match rd.try_read_buf(buf) {
        Ok(0) => Read::Gone,
        Ok(_) => Read::Data,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::NotYet,
        Err(_) => Read::Gone,
    }
}

async fn read_loop(
    rd: &OwnedReadHalf,
    leftover: BytesMut,
    node: &Arc<Node>,
    session: &Arc<Session>,
    rpc: &mut Rpc,
    writer: &mut tokio::task::JoinHandle<()>,
) -> ReadEnd {
    let cfg = &node.config.websocket;
    let enc = session.encoding();
    let traffic = node.metrics.traffic(enc);
    let mut dec = Decoder::new(cfg.max_frame_bytes);
    let mut buf = leftover;
    let mut last_recv = Instant::now();
    let mut last_ping = Instant::now();
    // When the outbox started closing (slow consumer, shutdown) while the writer still runs.
    let mut closing_since: Option<Instant> = None;
    let ping_every = cfg.ping_interval();
    let idle_timeout = cfg.idle_timeout();
    // A timer in the task's own state (an `Interval` would box one): an idle connection's
    // allocations are few.
    let half = ping_every / 2;
    let tick = tokio::time::sleep(half);
    tokio::pin!(tick);
    loop {
        loop {
            let msg = match dec.decode(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    node.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(session = %session.id(), reason = e.reason, "Closing for a protocol violation.");
                    return ReadEnd::Close(e.into());
                }
            };
            match msg {
                Message::Text(_) if enc.is_binary() => {
                    node.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return ReadEnd::Close(CloseReason::with_reason(
                        CloseCode::UnsupportedData,
                        "text frame on a MessagePack connection",
                    ));
                }
                Message::Binary(_) if !enc.is_binary() => {
                    node.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return ReadEnd::Close(CloseReason::with_reason(
                        CloseCode::UnsupportedData,
                        "binary frame on a JSON connection",
                    ));
                }
                Message::Text(data) | Message::Binary(data) => {
                    traffic.frames_in.fetch_add(1, Ordering::Relaxed);
                    traffic
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    // Boxed: the request handlers' state machines are large, and inline they
                    // would be part of every connection's task even while it is idle.
                    Box::pin(rpc.handle(&data, !buf.is_empty())).await;
                }
                Message::Ping(p) => {
                    session
                        .outbox
                        .push_always(Outgoing::Control(Control::Pong(p)));
                }
                Message::Pong(_) => {}
                Message::Close(code) => return ReadEnd::Close(CloseReason::echo(code)),
            }
        }
        tokio::select! {
            r = rd.readable() => {
                if r.is_err() {
                    return ReadEnd::Gone;
                }
                match read_some(rd, &mut buf) {
                    Read::Data => last_recv = Instant::now(),
                    Read::NotYet => {}
                    Read::Gone => return ReadEnd::Gone,
                }
            }
            _ = &mut tick => {
                tick.as_mut().reset(tokio::time::Instant::now() + half);
                let now = Instant::now();
                let quiet = now.duration_since(last_recv);
                if session.outbox.close_reason().is_some() {
                    // The close frame is queued but the writer cannot get it out: the client
                    // reads nothing (its window is full). It does not get to hold the
                    // connection, whatever else it sends: let it go after the close wait.
                    let since = *closing_since.get_or_insert(now);
                    if now.duration_since(since) >= CLOSE_WAIT {
                        tracing::debug!(session = %session.id(), "Dropping a connection that does not read its close frame.");
                        return ReadEnd::Gone;
                    }
                }
                if quiet >= idle_timeout {
                    tracing::debug!(session = %session.id(), "Closing an idle connection.");
                    return ReadEnd::Close(CloseCode::IdleTimeout.into());
                }
                if quiet >= ping_every && now.duration_since(last_ping) >= ping_every {
                    session.outbox.push_always(Outgoing::Control(Control::Ping(Bytes::new())));
                    last_ping = now;
                }
                if buf.is_empty() && !dec.is_assembling() && buf.capacity() > 0 && quiet >= ping_every / 2 {
                    // Quiet for a while: give the read buffer back.
                    buf = BytesMut::new();
                }
            }
            // We sent a close frame (shutdown, slow consumer) or the socket broke.
            _ = &mut *writer => return ReadEnd::WriterDone,
        }
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, session: Arc<Session>, node: Arc<Node>) {
    let enc = session.encoding();
    let traffic = node.metrics.traffic(enc);
    let data_op = if enc.is_binary() {
        opcode::BINARY
    } else {
        opcode::TEXT
    };
    let mut batch = VecDeque::new();
    let mut out = Gather::default();
    let mut latency = LocalHistogram::default();
    loop {
        session.outbox.ready().await;
        let close = session.outbox.drain(&mut batch, WRITE_CHUNK);
        let now = Instant::now();
        let mut frames = 0u64;
        for item in batch.drain(..) {
            match item {
                Outgoing::Push { sub, push } | Outgoing::State { sub, push, .. } => {
                    let f = push.frame(enc);
                    frame::put_header(&mut out.buf, data_op, f.len(sub));
                    f.write_head(sub, &mut out.buf);
                    out.put(f.tail(), || f.tail_bytes());
                    latency.observe(now.saturating_duration_since(push.created()));
                }
                Outgoing::Frame(b) => {
                    frame::put_header(&mut out.buf, data_op, b.len());
                    out.put(&b, || b.clone());
                }
                Outgoing::Skip => continue,
                Outgoing::Control(Control::Ping(p)) => {
                    frame::put_frame(&mut out.buf, opcode::PING, &p)
                }
                Outgoing::Control(Control::Pong(p)) => {
                    frame::put_frame(&mut out.buf, opcode::PONG, &p)
                }
                Outgoing::Gap {
                    sub,
                    channel,
                    from,
                    epoch,
                } => {
                    let f = codec::encode_push(
                        enc,
                        api::push::GAP,
                        &GapPush {
                            channel: Cow::Borrowed(&channel),
                            from,
                            epoch: Cow::Borrowed(&epoch),
                        },
                        None,
                    );
                    frame::put_header(&mut out.buf, data_op, f.len(sub));
                    f.write(sub, &mut out.buf);
                }
            }
            frames += 1;
        }
        if let Some(c) = &close {
            frame::put_close(&mut out.buf, c.code, c.reason);
        }
        if !out.is_empty() {
            let len = out.len();
            if out.write_to(&mut wr).await.is_err() {
                session.outbox.clear();
                return;
            }
            traffic.frames_out.fetch_add(frames, Ordering::Relaxed);
            traffic.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
            node.metrics.deliver_latency.merge(&mut latency);
            out.clear();
            if batch.capacity() > 256 {
                batch = VecDeque::new();
            }
        }
        if close.is_some() {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// The bytes of one write: frame headers and small frames copied into one buffer, large
/// payloads referenced where they are. A tile or a large response pushed to many
/// connections is one shared buffer; copying it into each connection's buffer cost as much
/// CPU as the kernel's own copy (measured on the tile push path), and the buffer grown for it
/// was given back after every burst.
#[derive(Default)]
struct Gather {
    buf: Vec<u8>,
    /// Shared payloads, each sent after `buf[..at]`.
    shared: Vec<(usize, Bytes)>,
}

impl Gather {
    /// Payloads of at least this many bytes are sent from where they are.
    const SHARED_FROM: usize = 1024;

    /// Adds `bytes`: copied when small, otherwise referenced as `share()` gives them (the
    /// same bytes, held where they are).
    fn put(&mut self, bytes: &[u8], share: impl FnOnce() -> Bytes) {
        if bytes.len() >= Self::SHARED_FROM {
            self.shared.push((self.buf.len(), share()));
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn len(&self) -> usize {
        self.buf.len() + self.shared.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.shared.is_empty()
    }

    /// Writes everything, in order, with as few system calls as the socket allows.
    async fn write_to(&self, wr: &mut OwnedWriteHalf) -> std::io::Result<()> {
        if self.shared.is_empty() {
            return wr.write_all(&self.buf).await;
        }
        let mut slices = Vec::with_capacity(2 * self.shared.len() + 1);
        let mut from = 0;
        for (at, b) in &self.shared {
            if *at > from {
                slices.push(IoSlice::new(&self.buf[from..*at]));
            }
            slices.push(IoSlice::new(b));
            from = *at;
        }
        if from < self.buf.len() {
            slices.push(IoSlice::new(&self.buf[from..]));
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = wr.write_vectored(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// Empties it for the next write, keeping a small buffer: a connection that had a burst
    /// does not hold on to what the burst needed.
    fn clear(&mut self) {
        self.buf.clear();
        self.shared.clear();
        if self.buf.capacity() > 16 * 1024 {
            self.buf = Vec::new();
        }
        if self.shared.capacity() > 256 {
            self.shared = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_6<A, B, C, D, E, G, F: Future>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn size_3<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection holds its reader's and writer's state machines for its whole life,
    /// idle or not, so they must stay small: request handling is boxed, not inlined.
    #[test]
    fn connection_tasks_stay_small() {
        let reader = size_6(serve);
        let writer = size_3(write_loop);
        println!("reader task {reader} bytes, writer task {writer} bytes");
        assert!(reader < 2048, "reader task is {reader} bytes");
        assert!(writer < 1024, "writer task is {writer} bytes");
    }

    /// Copied and shared pieces arrive in the order they were put, also when the socket
    /// takes a write in several parts (a reader slower than the writer).
    #[tokio::test]
    async fn a_gathered_write_keeps_its_order_across_partial_writes() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 7000];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&chunk[..n]);
                // Slower than the writer, so its writes are partial.
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
        });
        let (_, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let pattern = |len: usize, seed: u8| -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect()
        };
        let mut want = Vec::new();
        let mut g = Gather::default();
        for (i, len) in [3usize, 0, 200_000, 5, 4096, 0, 1_500_000, 1, 1024, 9]
            .iter()
            .enumerate()
        {
            let piece = pattern(*len, i as u8);
            want.extend_from_slice(&piece);
            let piece = Bytes::from(piece);
            g.put(&piece, || piece.clone());
        }
        // Two shared pieces in a row, and one at the very start of a write.
        let mut g2 = Gather::default();
        for i in 0..3u8 {
            let piece = pattern(3000, 100 + i);
            want.extend_from_slice(&piece);
            let piece = Bytes::from(piece);
            g2.put(&piece, || piece.clone());
        }
        assert_eq!(g.len() + g2.len(), want.len());
        g.write_to(&mut wr).await.unwrap();
        g2.write_to(&mut wr).await.unwrap();
        drop(wr);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes arrived out of order");
    }
}
