//! The WebSocket echo endpoint (geostream's own framing and connection code) for the
//! Autobahn test suite: `scripts/autobahn.sh` runs it.
//!
//!     cargo run -p geostream-server --features ws-echo --example ws_echo -- [PORT]
//!
//! Listens on 127.0.0.1 only (port 0 by default: the OS picks one), prints
//! `listening on 127.0.0.1:PORT` and serves until killed. Messages up to 64 MiB (the suite's
//! largest is 16 MiB).

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("port: {e}"))
        })?,
        None => 0,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    geostream_server::ws_echo::serve(listener, 64 << 20).await
}
