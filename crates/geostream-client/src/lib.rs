//! An async client for geostream, the real-time geospatial streaming server.
//!
//! * [`Client::connect`] opens a WebSocket session in the encoding of your choice
//!   (MessagePack by default) with an optional token or token provider, and **reconnects by
//!   itself** with exponential backoff, full jitter and a cap ([`Backoff`]). The connection
//!   state is observable ([`Client::state`], [`Client::state_changes`]).
//! * **Typed streams** that survive reconnects: [`Client::subscribe_features`] yields
//!   [`FeatureEvent`]s (snapshot, enter, update, exit, delete) carrying GeoJSON features
//!   (convert geometries to `geo-types` with [`FeatureGeo`]); [`Client::subscribe_channel`]
//!   yields [`ChannelEvent`]s (messages, presence). After a reconnect every subscription
//!   resumes from its last sequence number or offset, with nothing missed or repeated; when
//!   the server no longer has the missed history, the stream says so (`Resync`) and, for
//!   layers, a fresh snapshot follows. [`FeatureStream::set_filter`] moves the viewport.
//! * **Presence and cursors** on a layer: [`Client::subscribe_presence`] yields who joins and
//!   leaves and where their cursors are ([`PresenceEvent`]) and keeps the current members and
//!   cursors ([`PresenceSet`]); [`Client::send_cursor`] shares this client's. Both are
//!   restored after a reconnect.
//! * [`Client::subscribe_tiles`] yields the tiles of a viewport as [`TileEvent`]s: changed
//!   tiles arrive as binary deltas against the version held, and the client applies them and
//!   checks the result's CRC-32 before handing out the tile (a delta that fails is never
//!   shown: the client asks for the whole tile). After a reconnect it tells the server which
//!   versions it holds, so only what changed is sent.
//! * **Requests** with timeouts; dropping a request's future sends `$/cancelRequest` so the
//!   server stops the work.
//! * **Edits that survive disconnects**: [`Client::submit`] puts an edit with an operation id
//!   in the outbox (in memory, and in a file with [`ClientOptions::outbox_file`]); it is sent
//!   when connected and again after every reconnect until the server answers, and the server
//!   applies it exactly once. Conflicts and other refusals are reported (to the caller and as
//!   [`ClientEvent::EditFailed`]), never dropped silently. Locks are re-acquired after a
//!   reconnect or reported lost ([`ClientEvent::LockLost`]).
//!
//! The wire protocol is geostream-core's; `docs/PROTOCOL.md` in the repository describes it.
//!
//! ```no_run
//! use geostream_client::{Client, ClientOptions, Edit};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), geostream_client::ClientError> {
//! let client = Client::connect("ws://127.0.0.1:8080/v1/ws", ClientOptions::default()).await?;
//! let point = json!({"type": "Feature", "id": "a", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]}, "properties": {}});
//! // Applied exactly once, even if the connection drops meanwhile.
//! let applied = client.edit(Edit::create("places", point)?).await?;
//! println!("created at seq {}", applied[0].seq);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod backoff;
mod client;
mod driver;
mod edit;
mod error;
mod events;
mod options;
mod state;
mod tiles;
mod token;

pub use backoff::Backoff;
pub use client::{
    ChannelOptions, ChannelStream, Client, EventStream, FeatureStream, LayerOptions, PendingEdit,
    PresenceStream, Progress, RequestOptions, StateStream,
};
pub use edit::{Edit, OutboxEntry};
pub use error::{ClientError, Result};
pub use events::{
    ChannelEvent, ClientEvent, Cursor, FeatureEvent, FeatureGeo, FeatureSet, PresenceEvent,
    PresenceSet,
};
pub use options::{ClientOptions, TokenFuture, TokenProvider};
pub use state::{CloseReason, ConnectionState};
pub use tiles::{TileEvent, TileSelection, TileStream};

/// The protocol's types, as requests take and return them: geostream-core's definitions.
pub use geostream_core::api::{
    BatchOp, ChannelHistoryResult, ClientInfo, EditResult, FeatureQueryResult, FilterSpec,
    HistoryMessage, ImportResult, LayerCreateParams, LayerInfo, LockInfo, Position,
    SubscriptionUpdateResult, TileMode, TileSubscribeResult, TileUpdateResult,
};
pub use geostream_core::codec::Encoding;
pub use geostream_core::error::{ErrorCode, RpcError};
pub use geostream_core::feature::{Feature, Geometry};
pub use geostream_core::payload::Payload;
