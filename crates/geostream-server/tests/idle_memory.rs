//! What an idle WebSocket connection costs the server in heap: the bytes and allocations it
//! holds for its whole life (tasks, session, outbox, subscriptions, buffers), counted by a
//! global allocator that tracks live bytes. The server runs in this process; the clients
//! are plain blocking sockets, which allocate nothing on the heap, so every byte counted
//! between "before" and "after" is the server's.
//!
//! The kernel's socket buffers are not counted (they are not the process's memory); the
//! allocator's own overhead is not either (bench/loadgen's `idle` scenario measures RSS).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::TestServer;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_ALLOCS: AtomicI64 = AtomicI64::new(0);

// A global allocator is an unsafe trait by nature; this one only forwards to the system's.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Opens a WebSocket with a blocking socket and reads the 101 response.
const UPGRADE: &[u8] = b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn upgraded(mut s: TcpStream) -> TcpStream {
    let mut buf = [0u8; 1024];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).expect("response");
        assert!(n > 0, "closed during the handshake");
        got += n;
        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..got])
    );
    s
}

/// Opens `n` WebSocket connections the way a slow network delivers them: every socket is
/// connected (and the server has waited on it) before its request arrives. A connection
/// that did not wait would hide what the HTTP layer leaves behind in the socket after the
/// upgrade.
async fn open_many(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut socks: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| {
                let s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect()
    })
    .await
    .expect("clients");
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(move || {
        for s in &mut socks {
            s.write_all(UPGRADE).expect("handshake");
        }
        socks.into_iter().map(upgraded).collect()
    })
    .await
    .expect("clients")
}

async fn settled() -> (i64, i64) {
    let mut last = LIVE_BYTES.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = LIVE_BYTES.load(Ordering::Relaxed);
        if (now - last).abs() < 4096 {
            return (now, LIVE_ALLOCS.load(Ordering::Relaxed));
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_holds_under_4_kb_of_heap() {
    let srv = TestServer::start().await;
    // Warm up: lazily built state (metrics series, pools, the runtime's first timers).
    let warm = open_many(srv.addr, 50).await;
    let (bytes0, allocs0) = settled().await;
    const N: usize = 1000;
    let conns = open_many(srv.addr, N).await;
    let (bytes1, allocs1) = settled().await;
    let per_conn = (bytes1 - bytes0) as f64 / N as f64;
    let allocs = (allocs1 - allocs0) as f64 / N as f64;
    println!(
        "an idle WebSocket connection: {per_conn:.0} bytes of heap in {allocs:.1} allocations"
    );
    assert!(
        per_conn < 4000.0,
        "an idle connection holds {per_conn:.0} bytes of heap"
    );
    // The budget in allocations is exact: one more is usually a finished task kept alive by
    // a waker (in a release build the HTTP connection's task, 3.5 KB, stayed allocated for
    // the whole life of every idle connection until ws::conn replaced hyper's waker).
    assert!(
        allocs < 9.5,
        "an idle connection holds {allocs:.1} allocations, over the budget of 9"
    );
    drop(conns);
    drop(warm);
    srv.shutdown().await;
}
