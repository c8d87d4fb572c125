//! The TypeScript client's protocol types are the Rust types: CI fails while
//! clients/js/src/protocol.ts is not what `cargo run -p geostream-ts` writes.

use geostream_core::api::{method, push};
use geostream_core::request::Method;

#[test]
fn protocol_ts_is_current() {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join(geostream_ts::OUTPUT);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = geostream_ts::typescript();
    assert!(
        on_disk == generated,
        "{} is stale: run `cargo run -p geostream-ts` and commit the result",
        geostream_ts::OUTPUT
    );
}

#[test]
fn the_table_covers_every_method_and_push() {
    let (methods, pushes) = geostream_ts::table_names();
    // The requests the server answers, and the one method that is only a notification.
    let mut all: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
    all.push(method::CANCEL_REQUEST);
    let mut table = methods.clone();
    all.sort_unstable();
    table.sort_unstable();
    assert_eq!(table, all);
    assert_eq!(pushes, push::ALL);
}
