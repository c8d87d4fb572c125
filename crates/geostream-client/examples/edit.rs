//! Edits a layer through the outbox: creates, moves and patches features, takes a lock, and
//! shows how a conflict is reported.
//!
//! ```sh
//! scripts/serve.sh &
//! cargo run -p geostream-client --example edit -- ws://127.0.0.1:8080/v1/ws demo /tmp/outbox.json
//! ```
//!
//! Arguments (all optional): the server URL, the layer, an outbox file. With an outbox file,
//! edits made while the server is down are kept on disk and sent when it is back, even if this
//! program is restarted meanwhile; each is applied exactly once.

use std::time::Duration;

use geostream_client::{
    Client, ClientError, ClientEvent, ClientOptions, Edit, ErrorCode, LayerCreateParams,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/v1/ws".into());
    let layer = args.next().unwrap_or_else(|| "demo".into());
    let mut options = ClientOptions::default().info(json!({ "name": "edit example" }));
    if let Some(path) = args.next() {
        options = options.outbox_file(path);
    }
    // `start` does not wait for the server: edits queue up until it is reachable.
    let client = Client::start(&url, options)?;
    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                ClientEvent::EditApplied { op_id, result } => {
                    println!(
                        "applied {op_id}: {} is at version {}",
                        result.id, result.version
                    )
                }
                ClientEvent::EditFailed { op_id, error, .. } => {
                    println!("refused {op_id}: {error}")
                }
                ClientEvent::LockLost { id, reason, .. } => {
                    println!("lost the lock on {id}: {reason}")
                }
                other => println!("{other:?}"),
            }
        }
    });
    if client.outbox_len() > 0 {
        println!(
            "{} edits from a previous run are waiting to be sent",
            client.outbox_len()
        );
    }
    client.wait_connected(Duration::from_secs(60)).await?;

    match client
        .create_layer(LayerCreateParams {
            name: layer.clone(),
            title: Some("Demo layer".into()),
            ..Default::default()
        })
        .await
    {
        Ok(_) => println!("created layer {layer}"),
        Err(e) if e.code() == Some(ErrorCode::LayerExists) => {}
        Err(e) => return Err(e.into()),
    }

    // A new feature; the server picks its id.
    let created = client
        .create_feature(
            &layer,
            json!({
                "type": "Feature",
                "geometry": { "type": "Point", "coordinates": [2.3522, 48.8566] },
                "properties": { "name": "Paris", "visits": 1 }
            }),
        )
        .await?;
    println!("created {} (version {})", created.id, created.version);

    // Lock it, move it (based on the version we saw), then release it.
    client
        .lock(&layer, &[&created.id], Some(Duration::from_secs(30)))
        .await?;
    let geometry = geojson::Geometry::new(geojson::Value::Point(vec![2.2945, 48.8584]));
    let moved = client
        .edit(Edit::patch_geometry(
            &layer,
            &created.id,
            Some(geometry),
            Some(created.version),
        )?)
        .await?;
    println!("moved {} to version {}", created.id, moved[0].version);
    client.unlock(&layer, &[&created.id]).await?;

    // An edit based on a stale version is refused with the current feature.
    let stale = Edit::patch_properties(
        &layer,
        &created.id,
        json!({ "visits": 2 })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        Some(created.version),
    );
    match client.edit(stale).await {
        Err(ClientError::Conflict { current, .. }) => println!(
            "conflict, as expected: the feature is at version {}",
            current.map_or(0, |f| f.version)
        ),
        other => println!("unexpected: {other:?}"),
    }

    // Without a version on a layer that is not last-writer-wins, the server refuses too; with
    // the right one the patch goes through.
    let current = client.get_feature(&layer, &created.id).await?;
    let patched = client
        .patch_properties(
            &layer,
            &created.id,
            json!({ "visits": 2 })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            Some(current.version),
        )
        .await?;
    println!("patched {} to version {}", patched.id, patched.version);
    client.close();
    Ok(())
}
