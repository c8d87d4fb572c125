//! The public handle, its streams and requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use geostream_core::api::{
    self, ChannelHistoryResult, ChannelPresenceParams, ChannelPresenceResult, ChannelPublishParams,
    ClientInfo, CursorParams, EditResult, Empty, FeatureGetParams, FeatureGetResult,
    FeatureLockParams, FeatureLockResult, FeatureQueryResult, FeatureUnlockParams,
    FeatureUnlockResult, FilterSpec, ImportResult, LayerCreateParams, LayerInfo, LayerListResult,
    LayerNameParams, LockInfo, PingParams, PingResult, Position, SubscriptionUpdateResult,
    TileMode,
};
use geostream_core::codec::OwnedParams;
use geostream_core::feature::Feature;
use geostream_core::payload::Payload;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{Cmd, Driver, Hook, ProgressFn, Shared};
use crate::edit::{Edit, Outbox, OutboxEntry};
use crate::error::{ClientError, Result};
use crate::events::{ChannelEvent, ClientEvent, FeatureEvent, PresenceEvent, PresenceSet};
use crate::options::ClientOptions;
use crate::state::ConnectionState;
use crate::tiles::{TileSelection, TileStream};

/// A connection to a geostream server that reconnects by itself.
///
/// Cheap to clone; every clone talks to the same connection. The connection (and every
/// subscription) ends when [`Client::close`] is called or when the last clone and the last
/// stream are dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), geostream_client::ClientError> {
/// use geostream_client::{Client, ClientOptions, FeatureEvent, FilterSpec};
///
/// let client = Client::connect("ws://127.0.0.1:8080/v1/ws", ClientOptions::default()).await?;
/// let mut ships = client
///     .subscribe_features("ships", FilterSpec { bbox: Some(vec![0.0, 50.0, 10.0, 60.0]), ..Default::default() })
///     .await?;
/// while let Some(event) = ships.next().await {
///     if let FeatureEvent::Enter { feature, .. } = event {
///         println!("{} entered", feature.id);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cmd: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    state: watch::Receiver<ConnectionState>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.shared.client_id)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

/// Progress of a long request (`$/progress`), such as an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Units done so far.
    pub done: u64,
    /// Units in total, when known.
    pub total: Option<u64>,
    /// What is happening, for humans.
    pub message: Option<String>,
}

/// Options of one request.
#[derive(Clone, Default)]
pub struct RequestOptions {
    timeout: Option<Duration>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RequestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestOptions")
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl RequestOptions {
    /// Fail with [`ClientError::Timeout`] (and cancel on the server) after `timeout` instead of
    /// the client's default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Calls `f` with every `$/progress` report of the request.
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
}

/// Options of a channel subscription.
#[derive(Clone, Debug, Default)]
pub struct ChannelOptions {
    presence: bool,
}

impl ChannelOptions {
    /// Also deliver [`ChannelEvent::Join`] and [`ChannelEvent::Leave`].
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }
}

/// Options of a layer subscription beyond its filter.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    snapshot: bool,
    page_size: Option<usize>,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            snapshot: true,
            page_size: None,
        }
    }
}

impl LayerOptions {
    /// Whether to start with a snapshot of the matching features. Default: true.
    pub fn snapshot(mut self, on: bool) -> Self {
        self.snapshot = on;
        self
    }

    /// Features per snapshot page (the server's default is 500, its maximum 5000).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = Some(n);
        self
    }
}

/// Cancels a request on the server when dropped before it was disarmed.
struct CancelGuard<'a> {
    cmd: &'a mpsc::UnboundedSender<Cmd>,
    id: i64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmd.send(Cmd::Cancel(self.id));
        }
    }
}

impl Client {
    /// Connects to `url` (`ws://host:port/v1/ws`) and returns once the session is open.
    ///
    /// Fails if this first attempt fails (so a wrong URL is reported at once); after that, the
    /// client reconnects by itself whenever the connection is lost. Use [`Client::start`] to
    /// connect in the background instead (an application that starts offline).
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client> {
        let (tx, rx) = oneshot::channel();
        let client = Client::spawn(url, options, Some(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Starts connecting in the background and returns at once. Requests, subscriptions and
    /// edits made before the connection is up wait for it.
    pub fn start(url: &str, options: ClientOptions) -> Result<Client> {
        Client::spawn(url, options, None)
    }

    fn spawn(
        url: &str,
        options: ClientOptions,
        first: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<Client> {
        check_url(url)?;
        let (outbox, stored_id) = Outbox::open(options.outbox_path.clone())?;
        let client_id = options
            .client_id
            .clone()
            .or(stored_id)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let shared = Arc::new(Shared {
            state: state_tx,
            state_listeners: Mutex::new(Vec::new()),
            event_listeners: Mutex::new(Vec::new()),
            next_id: AtomicI64::new(1),
            next_local: AtomicU64::new(1),
            outbox_len: AtomicUsize::new(outbox.entries.len()),
            client_id,
        });
        // Persist the client id with the outbox at once, so a restart keeps the same id.
        outbox.save(&shared.client_id)?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let request_timeout = options.request_timeout;
        let driver = Driver::new(
            url.to_string(),
            options,
            shared.clone(),
            cmd_rx,
            cmd_tx.downgrade(),
            outbox,
            first,
        );
        tokio::spawn(driver.run());
        Ok(Client {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                shared,
                state: state_rx,
                request_timeout,
            }),
        })
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.inner.cmd.send(cmd).map_err(|_| ClientError::Closed)
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// Every state transition from now on, in order.
    pub fn state_changes(&self) -> StateStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .shared
            .state_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        StateStream { rx }
    }

    /// Waits until the client is connected (at most `timeout`); fails if it closes.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.inner.state.clone();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    ConnectionState::Connected { .. } => return Ok(()),
                    ConnectionState::Closed { .. } => return Err(ClientError::Closed),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Events about the client as a whole (edits applied or refused, locks lost) from now on.
    pub fn events(&self) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .shared
            .event_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        EventStream { rx }
    }

    /// The id locks are held under (see [`ClientOptions::client_id`]).
    pub fn client_id(&self) -> &str {
        &self.inner.shared.client_id
    }

    /// Closes the connection; the state becomes `Closed` and every stream ends. Edits still
    /// in the outbox stay in its file (if any) for the next start.
    pub fn close(&self) {
        let _ = self.inner.cmd.send(Cmd::Close);
    }

    // ---------------------------------------------------------------------------------------
    // Requests
    // ---------------------------------------------------------------------------------------

    /// Sends a request and decodes its result, with the client's default timeout.
    ///
    /// Dropping the returned future before it completes (or a timeout) sends
    /// `$/cancelRequest`, so the server stops the work. A request made while disconnected
    /// waits for the connection (within its timeout); one whose connection breaks after it
    /// was sent fails with [`ClientError::ConnectionLost`].
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T> {
        self.request_with(method, params, RequestOptions::default())
            .await
    }

    /// [`Client::request`] with options (timeout, progress).
    pub async fn request_with<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
        options: RequestOptions,
    ) -> Result<T> {
        let result = self.call(method, params, options, Hook::None).await?;
        result.decode().map_err(ClientError::Decode)
    }

    async fn call(
        &self,
        method: &str,
        params: impl Serialize,
        options: RequestOptions,
        hook: Hook,
    ) -> Result<OwnedParams> {
        let params =
            serde_json::to_value(params).map_err(|e| ClientError::Decode(e.to_string()))?;
        let id = self.inner.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Request {
            id,
            method: method.to_string(),
            params,
            reply: tx,
            progress: options.progress,
            hook,
        })?;
        let mut guard = CancelGuard {
            cmd: &self.inner.cmd,
            id,
            armed: true,
        };
        let timeout = options.timeout.unwrap_or(self.inner.request_timeout);
        let r = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed),
            // The guard stays armed: the request is cancelled on the server.
            Err(_) => return Err(ClientError::Timeout(timeout)),
        };
        guard.armed = false;
        r
    }

    /// Measures a round trip.
    pub async fn ping(&self) -> Result<Duration> {
        let t = Instant::now();
        let _: PingResult = self
            .request(api::method::PING, PingParams::default())
            .await?;
        Ok(t.elapsed())
    }

    // ---------------------------------------------------------------------------------------
    // Channels
    // ---------------------------------------------------------------------------------------

    /// Subscribes to a channel. The stream continues across reconnects from the last offset
    /// delivered, or yields [`ChannelEvent::Resync`] when the server no longer has the messages
    /// missed meanwhile.
    pub async fn subscribe_channel(
        &self,
        channel: &str,
        options: ChannelOptions,
    ) -> Result<ChannelStream> {
        let local = self.inner.shared.next_local.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        self.send(Cmd::SubscribeChannel {
            local,
            channel: channel.to_string(),
            presence: options.presence,
            events: tx,
            ready: ready_tx,
        })?;
        let handle = SubHandle {
            cmd: self.inner.cmd.clone(),
            local,
        };
        let position = self.wait_ready(ready_rx).await?;
        Ok(ChannelStream {
            rx,
            handle,
            channel: channel.to_string(),
            position,
        })
    }

    // ---------------------------------------------------------------------------------------
    // Layer presence and cursors
    // ---------------------------------------------------------------------------------------

    /// Joins the presence of `layer`: the stream knows who is on the layer
    /// ([`PresenceStream::state`], this client included) and yields their joins, leaves and
    /// cursors. After a reconnect the subscription is made again and yields
    /// [`PresenceEvent::Members`] with everyone there then; dropping the stream leaves.
    ///
    /// ```no_run
    /// # async fn demo(client: geostream_client::Client) -> Result<(), geostream_client::ClientError> {
    /// use geostream_client::PresenceEvent;
    ///
    /// let mut here = client.subscribe_presence("plan").await?;
    /// client.send_cursor("plan", Some([2.35, 48.85]), &[])?;
    /// while let Some(event) = here.next().await {
    ///     if let PresenceEvent::Cursor(c) = event {
    ///         println!("{} is at {:?}", c.client.session, c.position);
    ///     }
    ///     println!("{} here", here.state().len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_presence(&self, layer: &str) -> Result<PresenceStream> {
        let local = self.inner.shared.next_local.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        self.send(Cmd::SubscribePresence {
            local,
            layer: layer.to_string(),
            events: tx,
            ready: ready_tx,
        })?;
        let handle = SubHandle {
            cmd: self.inner.cmd.clone(),
            local,
        };
        let members = self.wait_ready(ready_rx).await?;
        Ok(PresenceStream {
            rx,
            _handle: handle,
            layer: layer.to_string(),
            state: PresenceSet::new(members),
        })
    }

    /// Shares where this client's pointer is on `layer` (`None`: it left the map) and which
    /// features it edits, and waits for the server's answer. Others subscribed to the layer's
    /// presence get it as [`PresenceEvent::Cursor`]. The server takes at most 20 cursors a
    /// second from a connection: faster ones fail with [`ClientError::Rpc`] `rate_limited`
    /// (use [`Client::send_cursor`] to have them dropped quietly). The last cursor is shared
    /// again after a reconnect.
    pub async fn set_cursor(
        &self,
        layer: &str,
        position: Option<[f64; 2]>,
        editing: &[&str],
    ) -> Result<()> {
        let c = cursor_params(layer, position, editing);
        self.call(
            api::method::PRESENCE_CURSOR,
            c.clone(),
            RequestOptions::default(),
            Hook::Cursor(c),
        )
        .await
        .map(|_| ())
    }

    /// [`Client::set_cursor`] without an answer (a notification): nothing waits, a cursor
    /// over the server's rate is dropped, and while disconnected only the last one is kept,
    /// to share when the connection is back. Fails only when the client is closed.
    pub fn send_cursor(
        &self,
        layer: &str,
        position: Option<[f64; 2]>,
        editing: &[&str],
    ) -> Result<()> {
        self.send(Cmd::Cursor(cursor_params(layer, position, editing)))
    }

    async fn wait_ready<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        let timeout = self.inner.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Publishes `data` to a channel; returns its position once it is in history.
    pub async fn publish(&self, channel: &str, data: impl Serialize) -> Result<Position> {
        let data = serde_json::to_vec(&data)
            .map_err(|e| e.to_string())
            .and_then(|d| Payload::from_json(d.into()).map_err(|e| e.to_string()))
            .map_err(ClientError::Decode)?;
        self.request(
            api::method::CHANNEL_PUBLISH,
            ChannelPublishParams {
                channel: channel.to_string(),
                data,
            },
        )
        .await
    }

    /// Reads a channel's history: after `since` when given, else the newest messages.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: Option<u32>,
    ) -> Result<ChannelHistoryResult> {
        self.request(
            api::method::CHANNEL_HISTORY,
            api::ChannelHistoryParams {
                channel: channel.to_string(),
                since,
                limit,
            },
        )
        .await
    }

    /// Who is subscribed to a channel.
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>> {
        let r: ChannelPresenceResult = self
            .request(
                api::method::CHANNEL_PRESENCE,
                ChannelPresenceParams {
                    channel: channel.to_string(),
                },
            )
            .await?;
        Ok(r.clients)
    }

    // ---------------------------------------------------------------------------------------
    // Layers and features
    // ---------------------------------------------------------------------------------------

    /// Creates a layer.
    pub async fn create_layer(&self, params: LayerCreateParams) -> Result<LayerInfo> {
        self.request(api::method::LAYER_CREATE, params).await
    }

    /// Describes a layer.
    pub async fn layer(&self, name: &str) -> Result<LayerInfo> {
        self.request(api::method::LAYER_GET, layer_name(name)).await
    }

    /// Lists layers.
    pub async fn list_layers(&self) -> Result<Vec<LayerInfo>> {
        let l: LayerListResult = self.request(api::method::LAYER_LIST, Empty {}).await?;
        Ok(l.layers)
    }

    /// Deletes a layer and its features.
    pub async fn delete_layer(&self, name: &str) -> Result<()> {
        let _: Empty = self
            .request(api::method::LAYER_DELETE, layer_name(name))
            .await?;
        Ok(())
    }

    /// Reads one feature.
    pub async fn get_feature(&self, layer: &str, id: &str) -> Result<Feature> {
        let f: FeatureGetResult = self
            .request(
                api::method::FEATURE_GET,
                FeatureGetParams {
                    layer: layer.to_string(),
                    id: Value::String(id.to_string()),
                },
            )
            .await?;
        Ok(f.feature)
    }

    /// Queries a page of features.
    pub async fn query_features(
        &self,
        layer: &str,
        filter: FilterSpec,
        limit: Option<usize>,
        offset: Option<usize>,
    ) -> Result<FeatureQueryResult> {
        self.request(
            api::method::FEATURE_QUERY,
            api::FeatureQueryParams {
                layer: layer.to_string(),
                filter,
                limit,
                offset,
            },
        )
        .await
    }

    /// Imports features into a layer (created if missing), reporting progress. A long
    /// request: dropping the future cancels the import on the server after the batch
    /// being written.
    pub async fn import_features(
        &self,
        layer: &str,
        features: Vec<Value>,
        batch_size: Option<usize>,
        options: RequestOptions,
    ) -> Result<ImportResult> {
        self.request_with(
            api::method::LAYER_IMPORT,
            api::LayerImportParams {
                layer: layer.to_string(),
                features: Some(features),
                path: None,
                batch_size,
            },
            options,
        )
        .await
    }

    /// Subscribes to the features of `layer` matching `filter`, with a snapshot first.
    ///
    /// The stream continues across reconnects with nothing missing or repeated; when that is
    /// impossible it yields [`FeatureEvent::Resync`] and a fresh snapshot.
    pub async fn subscribe_features(
        &self,
        layer: &str,
        filter: FilterSpec,
    ) -> Result<FeatureStream> {
        self.subscribe_features_with(layer, filter, LayerOptions::default())
            .await
    }

    /// [`Client::subscribe_features`] with options.
    pub async fn subscribe_features_with(
        &self,
        layer: &str,
        filter: FilterSpec,
        options: LayerOptions,
    ) -> Result<FeatureStream> {
        let local = self.inner.shared.next_local.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        self.send(Cmd::SubscribeLayer {
            local,
            layer: layer.to_string(),
            filter,
            snapshot: options.snapshot,
            page_size: options.page_size,
            events: tx,
            ready: ready_tx,
        })?;
        let handle = SubHandle {
            cmd: self.inner.cmd.clone(),
            local,
        };
        let seq = self.wait_ready(ready_rx).await?;
        Ok(FeatureStream {
            rx,
            handle,
            layer: layer.to_string(),
            start_seq: seq,
            request_timeout: self.inner.request_timeout,
        })
    }

    /// Subscribes to the tiles of a layer (vector tiles made from its features, or a raster
    /// layer) in `selection`. The server first sends every tile, then each change: in
    /// [`TileMode::Delta`] (the default) as a delta the client applies and verifies, in
    /// [`TileMode::Full`] whole, in [`TileMode::Notify`] as a notice to refetch over HTTP.
    pub async fn subscribe_tiles(
        &self,
        layer: &str,
        selection: TileSelection,
        mode: TileMode,
    ) -> Result<TileStream> {
        let local = self.inner.shared.next_local.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        self.send(Cmd::SubscribeTiles {
            local,
            layer: layer.to_string(),
            selection,
            mode,
            events: tx,
            ready: ready_tx,
        })?;
        let mut stream = TileStream {
            rx,
            cmd: self.inner.cmd.clone(),
            local,
            layer: layer.to_string(),
            kind: String::new(),
            tiles: Vec::new(),
            request_timeout: self.inner.request_timeout,
        };
        let res = self.wait_ready(ready_rx).await?;
        stream.kind = res.kind;
        stream.tiles = res.tiles;
        Ok(stream)
    }

    // ---------------------------------------------------------------------------------------
    // Edits and locks
    // ---------------------------------------------------------------------------------------

    /// Puts an edit in the outbox (and its file, when configured) and sends it when
    /// connected. Returns once the edit is safely in the outbox; await the returned
    /// [`PendingEdit`] for the server's answer.
    ///
    /// The edit carries an operation id, so it is applied exactly once however many times a
    /// reconnect makes the client send it. It leaves the outbox when the server applied it or
    /// refused it for good; either way a [`ClientEvent`] reports it.
    pub async fn submit(&self, edit: Edit) -> Result<PendingEdit> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Submit { edit, reply: tx })?;
        let (op_id, rx) = rx.await.map_err(|_| ClientError::Closed)??;
        Ok(PendingEdit { op_id, rx })
    }

    /// Submits an edit and waits for its result (however long the connection is down).
    pub async fn edit(&self, edit: Edit) -> Result<Vec<EditResult>> {
        self.submit(edit).await?.await
    }

    async fn edit_one(&self, edit: Edit) -> Result<EditResult> {
        self.edit(edit)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Decode("an edit produced no result".into()))
    }

    /// Creates a feature (through the outbox); see [`Client::submit`].
    pub async fn create_feature(&self, layer: &str, feature: impl Serialize) -> Result<EditResult> {
        self.edit_one(Edit::create(layer, feature)?).await
    }

    /// Replaces a feature (through the outbox), based on `version`.
    pub async fn replace_feature(
        &self,
        layer: &str,
        id: &str,
        feature: impl Serialize,
        version: Option<u64>,
    ) -> Result<EditResult> {
        self.edit_one(Edit::replace(layer, id, feature, version)?)
            .await
    }

    /// Merges `properties` into a feature (through the outbox), based on `version`.
    pub async fn patch_properties(
        &self,
        layer: &str,
        id: &str,
        properties: serde_json::Map<String, Value>,
        version: Option<u64>,
    ) -> Result<EditResult> {
        self.edit_one(Edit::patch_properties(layer, id, properties, version))
            .await
    }

    /// Deletes a feature (through the outbox), based on `version`.
    pub async fn delete_feature(
        &self,
        layer: &str,
        id: &str,
        version: Option<u64>,
    ) -> Result<EditResult> {
        self.edit_one(Edit::delete(layer, id, version)).await
    }

    /// The edits not yet acknowledged, oldest first.
    pub async fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Outbox(tx))?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Number of edits not yet acknowledged.
    pub fn outbox_len(&self) -> usize {
        self.inner.shared.outbox_len.load(Ordering::Relaxed)
    }

    /// Locks features for editing (all or none) for `ttl` (the server's default when `None`).
    /// The client re-acquires its locks after a reconnect, and reports any it could not get
    /// back as [`ClientEvent::LockLost`].
    pub async fn lock(
        &self,
        layer: &str,
        ids: &[&str],
        ttl: Option<Duration>,
    ) -> Result<Vec<LockInfo>> {
        let ttl_ms = ttl.map(|t| t.as_millis() as u64);
        let p = FeatureLockParams {
            layer: layer.to_string(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            ttl_ms,
        };
        let result = self
            .call(
                api::method::FEATURE_LOCK,
                p,
                RequestOptions::default(),
                Hook::Lock { ttl_ms },
            )
            .await?;
        let l: FeatureLockResult = result.decode().map_err(ClientError::Decode)?;
        Ok(l.locks)
    }

    /// Releases locks; returns those released.
    pub async fn unlock(&self, layer: &str, ids: &[&str]) -> Result<Vec<LockInfo>> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let result = self
            .call(
                api::method::FEATURE_UNLOCK,
                FeatureUnlockParams {
                    layer: layer.to_string(),
                    ids: ids.clone(),
                },
                RequestOptions::default(),
                Hook::Unlock {
                    layer: layer.to_string(),
                    ids,
                },
            )
            .await?;
        let r: FeatureUnlockResult = result.decode().map_err(ClientError::Decode)?;
        Ok(r.released)
    }
}

fn layer_name(name: &str) -> LayerNameParams {
    LayerNameParams {
        name: name.to_string(),
    }
}

fn cursor_params(layer: &str, position: Option<[f64; 2]>, editing: &[&str]) -> CursorParams {
    CursorParams {
        layer: layer.to_string(),
        position,
        editing: editing.iter().map(|s| s.to_string()).collect(),
    }
}

fn check_url(url: &str) -> Result<()> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if let Some(r) = url.strip_prefix("wss://") {
        if !cfg!(feature = "rustls-tls") {
            return Err(bad("wss:// needs the `rustls-tls` feature"));
        }
        r
    } else {
        return Err(bad("the scheme must be ws:// or wss://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    Ok(())
}

/// Ends a subscription when its stream is dropped.
struct SubHandle {
    cmd: mpsc::UnboundedSender<Cmd>,
    local: u64,
}

impl Drop for SubHandle {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Unsubscribe(self.local));
    }
}

/// The events of a layer subscription. Dropping it unsubscribes.
///
/// Events are buffered without limit until read: keep reading.
pub struct FeatureStream {
    rx: mpsc::UnboundedReceiver<FeatureEvent>,
    handle: SubHandle,
    layer: String,
    start_seq: u64,
    request_timeout: Duration,
}

impl std::fmt::Debug for FeatureStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStream")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl FeatureStream {
    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<FeatureEvent> {
        self.rx.recv().await
    }

    /// The layer.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// The layer sequence number the subscription started at.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// Changes the filter (moves the viewport). The difference follows as `Enter` and `Exit`
    /// events. Made while disconnected, the change is applied when the subscription resumes.
    pub async fn set_filter(&self, filter: FilterSpec) -> Result<SubscriptionUpdateResult> {
        let (tx, rx) = oneshot::channel();
        self.handle
            .cmd
            .send(Cmd::UpdateFilter {
                local: self.handle.local,
                filter,
                reply: tx,
            })
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.request_timeout)),
        }
    }
}

impl Stream for FeatureStream {
    type Item = FeatureEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The events of a channel subscription. Dropping it unsubscribes.
///
/// Events are buffered without limit until read: keep reading.
pub struct ChannelStream {
    rx: mpsc::UnboundedReceiver<ChannelEvent>,
    handle: SubHandle,
    channel: String,
    position: Position,
}

impl std::fmt::Debug for ChannelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelStream")
            .field("channel", &self.channel)
            .field("local", &self.handle.local)
            .finish_non_exhaustive()
    }
}

impl ChannelStream {
    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<ChannelEvent> {
        self.rx.recv().await
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The channel's position when the subscription started.
    pub fn start_position(&self) -> &Position {
        &self.position
    }
}

impl Stream for ChannelStream {
    type Item = ChannelEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// A layer's presence: who is there and their cursors. Dropping it leaves the layer's
/// presence.
///
/// Reading the stream keeps [`PresenceStream::state`] up to date. Events are buffered
/// without limit until read: keep reading.
pub struct PresenceStream {
    rx: mpsc::UnboundedReceiver<PresenceEvent>,
    _handle: SubHandle,
    layer: String,
    state: PresenceSet,
}

impl std::fmt::Debug for PresenceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceStream")
            .field("layer", &self.layer)
            .field("members", &self.state.len())
            .finish_non_exhaustive()
    }
}

impl PresenceStream {
    /// The next event, already applied to [`PresenceStream::state`]; `None` once the
    /// subscription has ended.
    pub async fn next(&mut self) -> Option<PresenceEvent> {
        let ev = self.rx.recv().await?;
        self.state.apply(&ev);
        Some(ev)
    }

    /// The layer.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// Who is here and their latest cursors, as of the events read so far.
    pub fn state(&self) -> &PresenceSet {
        &self.state
    }
}

impl Stream for PresenceStream {
    type Item = PresenceEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(ev)) => {
                this.state.apply(&ev);
                Poll::Ready(Some(ev))
            }
            other => other,
        }
    }
}

/// Every connection state transition, in order ([`Client::state_changes`]).
#[derive(Debug)]
pub struct StateStream {
    rx: mpsc::UnboundedReceiver<ConnectionState>,
}

impl StateStream {
    /// The next state; `None` once the client has stopped and every state was read.
    pub async fn next(&mut self) -> Option<ConnectionState> {
        self.rx.recv().await
    }
}

impl Stream for StateStream {
    type Item = ConnectionState;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Client events ([`Client::events`]).
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
}

impl EventStream {
    /// The next event.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }
}

impl Stream for EventStream {
    type Item = ClientEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// An edit in the outbox; resolves to the server's answer. Dropping it does not withdraw
/// the edit: it is still sent, and its result is reported by [`Client::events`].
#[derive(Debug)]
pub struct PendingEdit {
    op_id: String,
    rx: oneshot::Receiver<Result<Vec<EditResult>>>,
}

impl PendingEdit {
    /// The edit's operation id.
    pub fn op_id(&self) -> &str {
        &self.op_id
    }
}

impl Future for PendingEdit {
    type Output = Result<Vec<EditResult>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("ws://127.0.0.1:1/v1/ws").is_ok());
        assert!(matches!(
            check_url("http://x/v1/ws"),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(check_url("ws:///v1/ws").is_err());
    }
}
