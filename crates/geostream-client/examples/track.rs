//! Follows the features of a layer inside a viewport and prints what enters, moves and leaves.
//!
//! ```sh
//! scripts/serve.sh &                      # a server on 127.0.0.1:8080
//! cargo run -p geostream-client --example edit            # puts a few features in "demo"
//! cargo run -p geostream-client --example track -- ws://127.0.0.1:8080/v1/ws demo -10,35,30,60
//! ```
//!
//! Arguments (all optional): the server URL, the layer, the viewport `west,south,east,north`.
//! The stream survives server restarts and network cuts: stop and start the server and watch
//! the connection state lines; no change is lost or printed twice.

use geostream_client::{
    Client, ClientOptions, ConnectionState, FeatureEvent, FeatureGeo, FeatureSet, FilterSpec,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/v1/ws".into());
    let layer = args.next().unwrap_or_else(|| "demo".into());
    let bbox: Vec<f64> = args
        .next()
        .unwrap_or_else(|| "-180,-90,180,90".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if bbox.len() != 4 {
        return Err("the viewport is west,south,east,north".into());
    }

    let client = Client::connect(&url, ClientOptions::default()).await?;
    let mut states = client.state_changes();
    tokio::spawn(async move {
        while let Some(s) = states.next().await {
            match s {
                ConnectionState::Reconnecting {
                    attempt,
                    delay,
                    error,
                } => {
                    eprintln!("connection lost ({error}); attempt {attempt} in {delay:?}")
                }
                ConnectionState::Connected { session, encoding } => {
                    eprintln!("connected: session {session}, {encoding}")
                }
                other => eprintln!("{other:?}"),
            }
        }
    });

    let filter = FilterSpec {
        bbox: Some(bbox),
        ..Default::default()
    };
    let mut stream = client.subscribe_features(&layer, filter).await?;
    let mut view = FeatureSet::new();
    while let Some(event) = stream.next().await {
        view.apply(&event);
        match &event {
            FeatureEvent::Snapshot {
                features,
                last,
                seq,
                ..
            } => {
                println!(
                    "snapshot at seq {seq}: {} features{}",
                    features.len(),
                    if *last { " (complete)" } else { "" }
                );
            }
            FeatureEvent::Enter { seq, feature } => {
                let at = feature.geo().map(|g| format!("{g:?}")).unwrap_or_default();
                println!("[{seq}] enter  {} {at}", feature.id);
            }
            FeatureEvent::Update {
                seq, id, version, ..
            } => {
                println!("[{seq}] update {id} (version {version})");
            }
            FeatureEvent::Exit { seq, id, .. } => println!("[{seq}] exit   {id}"),
            FeatureEvent::Delete { seq, id, .. } => println!("[{seq}] delete {id}"),
            FeatureEvent::Resync { reason, .. } => {
                println!("resync: {reason}; a fresh snapshot follows")
            }
            FeatureEvent::Lock { lock, locked } => {
                println!(
                    "{} {} by {}",
                    lock.id,
                    if *locked { "locked" } else { "unlocked" },
                    lock.client
                )
            }
            FeatureEvent::Unsubscribed { reason } => println!("unsubscribed: {reason}"),
            other => println!("{other:?}"),
        }
        println!("    {} features in view", view.len());
    }
    Ok(())
}
