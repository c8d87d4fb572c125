//! Writes clients/js/src/protocol.ts from geostream-core's Rust types.

fn main() -> std::io::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let path = std::path::Path::new(root).join(geostream_ts::OUTPUT);
    std::fs::write(&path, geostream_ts::typescript())?;
    println!("wrote {}", geostream_ts::OUTPUT);
    Ok(())
}
