//! Geofences on a node: the API's operations (create, list, get, delete) and the evaluator
//! that runs the fence engine ([`geostream_fence::Engine`]) over the layers' change logs and
//! appends every event to the fence's channel (`fence:NAME`), then to its webhook and NATS
//! subject.
//!
//! Who evaluates: one node of the deployment at a time, the holder of a lease in the store
//! (renewed every third of `geofences.lease_ms`). It reads the change logs from the store in
//! sequence order (woken by the bus as changes commit, and every 200 ms), so every change is
//! evaluated once, in order, whichever node committed it. How far each layer was evaluated
//! is saved in the store; a node that takes over loads the layers, rewinds its copy to that
//! point with the logged changes' `old` features, and evaluates from there. Events a dead
//! evaluator published after its last save are recognised in the fence channel's history
//! (an event's source layer, sequence number and place `n` only grow) and not published
//! again; with the in-process broker the history does not survive a restart, so they are
//! published again in the channel's new epoch, with the same keys.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use geostream_core::api::ChannelHistoryParams;
use geostream_core::error::ErrorCode;
use geostream_core::feature::format_time_ms;
use geostream_core::payload::Payload;
use geostream_fence::{Engine, Fence, FenceEvent, FenceRecord, FenceSpec};
use geostream_store::{FenceStore, SnapshotRequest, Store};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::auth::Principal;
use crate::backends::{AnyStore, NodeStreams};
use crate::config::{BrokerConfig, Config};
use crate::error::{Result, ServerError};
use crate::webhook::{DeliveryState, WebhookTarget, Webhooks};

/// A fence as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FenceView {
    /// The definition (the webhook secret replaced by `***`).
    #[serde(flatten)]
    pub spec: FenceSpec,
    /// The event channel.
    pub channel: String,
    /// When it was created.
    pub created: String,
    /// The watched layer's sequence number at creation: later changes are evaluated.
    pub start_seq: u64,
    /// When it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// What the evaluator reports of it, when this node evaluates (`null` on other nodes).
    pub status: Option<FenceStatus>,
    /// The webhook's delivery state, when this node evaluates and the fence has a webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryState>,
}

/// The evaluator's view of one fence.
#[derive(Clone, Debug, Serialize)]
pub struct FenceStatus {
    /// Whether the evaluator has loaded it (events flow).
    pub loaded: bool,
    /// The last change of the watched layer evaluated.
    pub evaluated_seq: u64,
    /// Events published to the channel since this node became the evaluator.
    pub events: u64,
}

/// Counters for `/metrics`.
#[derive(Default)]
struct Counters {
    leader: bool,
    fences: usize,
    changes: u64,
    events: u64,
    publish_errors: u64,
    /// Events not published again because the channel already had them.
    skipped: u64,
    /// Per fence: events published since this node became the evaluator.
    per_fence: HashMap<String, u64>,
    /// Per layer: evaluated sequence number.
    cursors: HashMap<String, u64>,
    /// Per layer: how many changes are waiting (at the last look).
    lag: HashMap<String, u64>,
}

/// The node's geofences; see the module documentation.
pub struct Geofences {
    store: AnyStore,
    streams: Arc<NodeStreams>,
    config: Arc<Config>,
    /// This node's name in the lease.
    holder: String,
    wake: Arc<Notify>,
    counters: Mutex<Counters>,
    nats: tokio::sync::OnceCell<Option<async_nats::Client>>,
    webhooks: Webhooks,
    /// Set when a fence is created or deleted through this node: the evaluator re-reads the
    /// fences at its next wake-up instead of at its next periodic look.
    changed: std::sync::atomic::AtomicBool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Geofences {
    /// The service; `wake` is notified by the bridge whenever a layer changes.
    pub fn new(
        store: AnyStore,
        streams: Arc<NodeStreams>,
        config: Arc<Config>,
        wake: Arc<Notify>,
    ) -> Arc<Self> {
        let webhooks = Webhooks::new(config.geofences.webhooks.clone());
        Arc::new(Geofences {
            store,
            streams,
            config,
            holder: uuid::Uuid::new_v4().to_string(),
            wake,
            counters: Mutex::new(Counters::default()),
            nats: tokio::sync::OnceCell::new(),
            webhooks,
            changed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the evaluator task (when `geofences.evaluate` is on).
    pub fn start(self: &Arc<Self>) {
        if self.config.geofences.evaluate {
            let me = self.clone();
            tokio::spawn(async move { me.run().await });
        }
    }

    fn nats_url(&self) -> Option<String> {
        let own = &self.config.geofences.nats_url;
        if !own.is_empty() {
            return Some(own.clone());
        }
        match &self.config.broker {
            BrokerConfig::Nats { url, .. } => Some(url.clone()),
            BrokerConfig::Memory {} => None,
        }
    }

    // ----- the API -----

    /// Checks `spec` and the caller's rights, and stores the fence. Returns the stored
    /// record, with the webhook secret (chosen here when the spec has none).
    pub async fn create(&self, who: &Principal, mut spec: FenceSpec) -> Result<FenceRecord> {
        spec.check()
            .map_err(|e| ServerError::new(ErrorCode::InvalidParams, e.to_string()))?;
        self.check_rights(who, &spec)?;
        if let Some(w) = &mut spec.webhook {
            self.webhooks
                .check_url(&w.url)
                .map_err(|e| ServerError::invalid(format!("webhook.url: {e}")))?;
            if w.secret.is_none() {
                w.secret = Some(random_secret());
            }
        }
        if spec.nats.is_some() && self.nats_url().is_none() {
            return Err(ServerError::invalid(
                "this deployment has no NATS server for fence deliveries: set geofences.nats_url",
            ));
        }
        let layer = self.store.layer(&spec.layer).await?;
        for other in [
            spec.zones.as_ref().map(|z| &z.layer),
            spec.roam.as_ref().and_then(|r| r.layer.as_ref()),
        ]
        .into_iter()
        .flatten()
        {
            self.store.layer(other).await?;
        }
        let count = self.store.fences().await?.len();
        if count >= self.config.geofences.max_fences {
            return Err(ServerError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "this deployment has {count} geofences, the most geofences.max_fences allows"
                ),
            ));
        }
        let record = spec
            .into_record(now_ms(), layer.seq)
            .map_err(|e| ServerError::invalid(e.to_string()))?;
        let body = serde_json::to_string(&record)
            .map_err(|e| ServerError::Internal(format!("cannot encode a fence: {e}")))?;
        self.store
            .create_fence(&record.spec.name, body)
            .await
            .map_err(|e| match e {
                geostream_store::StoreError::FenceExists(n) => ServerError::new(
                    ErrorCode::FenceExists,
                    format!("geofence {n:?} already exists"),
                ),
                e => e.into(),
            })?;
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
        Ok(record)
    }

    /// Creating or deleting a fence needs write access to its channel (which only the
    /// server publishes to) and read access to every layer it watches.
    fn check_rights(&self, who: &Principal, spec: &FenceSpec) -> Result<()> {
        who.manage_fence(&spec.name)?;
        who.read_layer(&spec.layer)?;
        if let Some(z) = &spec.zones {
            who.read_layer(&z.layer)?;
        }
        if let Some(l) = spec.roam.as_ref().and_then(|r| r.layer.as_ref()) {
            who.read_layer(l)?;
        }
        Ok(())
    }

    async fn records(&self) -> Result<Vec<FenceRecord>> {
        Ok(self
            .store
            .fences()
            .await?
            .into_iter()
            .filter_map(|(name, body)| match serde_json::from_str(&body) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(fence = %name, error = %e, "a stored geofence cannot be read; it is ignored");
                    None
                }
            })
            .collect())
    }

    fn view(&self, r: &FenceRecord) -> FenceView {
        let c = self.counters.lock();
        let status = c.leader.then(|| FenceStatus {
            loaded: c.per_fence.contains_key(&r.spec.name),
            evaluated_seq: c.cursors.get(&r.spec.layer).copied().unwrap_or(0),
            events: c.per_fence.get(&r.spec.name).copied().unwrap_or(0),
        });
        let delivery =
            (c.leader && r.spec.webhook.is_some()).then(|| self.webhooks.state(&r.spec.name));
        FenceView {
            delivery,
            spec: r.public_spec(),
            channel: r.channel(),
            created: format_time_ms(r.created_ms),
            start_seq: r.start_seq,
            expires: r.expires_ms.map(format_time_ms),
            status,
        }
    }

    /// The answer to a creation: the view, with the webhook secret (shown this once).
    pub fn created_view(&self, r: &FenceRecord) -> FenceView {
        let mut v = self.view(r);
        v.spec.webhook.clone_from(&r.spec.webhook);
        v
    }

    /// The fences the caller may read, by name.
    pub async fn list(&self, who: &Principal) -> Result<Vec<FenceView>> {
        Ok(self
            .records()
            .await?
            .iter()
            .filter(|r| who.read_channel(&r.channel()).is_ok())
            .map(|r| self.view(r))
            .collect())
    }

    /// One fence.
    pub async fn get(&self, who: &Principal, name: &str) -> Result<FenceView> {
        who.read_channel(&geostream_fence::channel_of(name))?;
        let r = self.find(name).await?;
        Ok(self.view(&r))
    }

    async fn find(&self, name: &str) -> Result<FenceRecord> {
        self.records()
            .await?
            .into_iter()
            .find(|r| r.spec.name == name)
            .ok_or_else(|| {
                ServerError::new(
                    ErrorCode::FenceNotFound,
                    format!("geofence {name:?} does not exist"),
                )
            })
    }

    /// Deletes a fence: the evaluator sends `exit` (reason `fence_closed`) for every feature
    /// still inside, then forgets it.
    pub async fn delete(&self, who: &Principal, name: &str) -> Result<()> {
        let r = self.find(name).await?;
        self.check_rights(who, &r.spec)?;
        if !self.store.delete_fence(name).await? {
            return Err(ServerError::new(
                ErrorCode::FenceNotFound,
                format!("geofence {name:?} does not exist"),
            ));
        }
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// Appends the geofence and webhook metrics.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        self.webhooks.render_metrics(out);
        let c = self.counters.lock();
        let mut line = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        line(
            "geostream_fence_evaluator",
            "gauge",
            "1 when this node evaluates the geofences (holds the lease).",
            if c.leader { 1.0 } else { 0.0 },
        );
        line(
            "geostream_fences",
            "gauge",
            "Geofences loaded by this node's evaluator.",
            c.fences as f64,
        );
        line(
            "geostream_fence_changes_total",
            "counter",
            "Layer changes evaluated against the geofences.",
            c.changes as f64,
        );
        line(
            "geostream_fence_events_total",
            "counter",
            "Geofence events published to their channels.",
            c.events as f64,
        );
        line(
            "geostream_fence_events_skipped_total",
            "counter",
            "Events evaluated again after a takeover and not published again (the channel had them).",
            c.skipped as f64,
        );
        line(
            "geostream_fence_publish_errors_total",
            "counter",
            "Failed attempts to publish geofence events (retried).",
            c.publish_errors as f64,
        );
        let _ = writeln!(
            out,
            "# HELP geostream_fence_lag_changes Changes of a layer not yet evaluated.\n# TYPE geostream_fence_lag_changes gauge"
        );
        let lag: BTreeMap<_, _> = c.lag.iter().collect();
        for (layer, n) in lag {
            let _ = writeln!(
                out,
                "geostream_fence_lag_changes{{layer=\"{}\"}} {n}",
                layer.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
    }

    // ----- the evaluator -----

    async fn run(self: Arc<Self>) {
        let lease = Duration::from_millis(self.config.geofences.lease_ms);
        loop {
            match self
                .store
                .fence_lease(&self.holder, lease.as_millis() as u64)
                .await
            {
                Ok(true) => {
                    info!(node = %self.holder, "this node evaluates the geofences");
                    match Evaluator::start(&self).await {
                        Ok(mut ev) => ev.serve(&self, lease).await,
                        Err(e) => warn!(error = %e, "cannot start the geofence evaluator"),
                    }
                    let mut c = self.counters.lock();
                    c.leader = false;
                    c.per_fence.clear();
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot reach the store for the geofence lease"),
            }
            tokio::time::sleep(lease / 4).await;
        }
    }

    async fn nats_client(&self) -> Option<&async_nats::Client> {
        self.nats
            .get_or_init(|| async {
                let url = self.nats_url()?;
                match async_nats::connect(&url).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn!(url = %url, error = %e, "cannot connect to NATS for geofence deliveries");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }
}

/// The evaluator's state while this node holds the lease.
struct Evaluator {
    engine: Engine,
    /// Per followed layer: the last change evaluated and published.
    cursors: HashMap<String, u64>,
    saved: HashMap<String, u64>,
    /// Per fence and source layer: the last event already in the channel (from history).
    published: HashMap<String, HashMap<String, (u64, u32)>>,
    /// Fences in the engine, with the time they were created (a fence deleted and created
    /// again under the same name is another fence).
    loaded: HashMap<String, u64>,
    /// Events evaluated and not yet published (the broker failed): published first.
    pending: VecDeque<FenceEvent>,
    /// Cursors to take once `pending` is empty.
    pending_cursors: Vec<(String, u64)>,
}

const PAGE: usize = 1000;

impl Evaluator {
    async fn start(g: &Geofences) -> Result<Evaluator> {
        let mut ev = Evaluator {
            engine: Engine::new(),
            cursors: HashMap::new(),
            saved: g.store.fence_cursors().await?.into_iter().collect(),
            published: HashMap::new(),
            loaded: HashMap::new(),
            pending: VecDeque::new(),
            pending_cursors: Vec::new(),
        };
        ev.sync_fences(g).await?;
        let mut c = g.counters.lock();
        c.leader = true;
        Ok(ev)
    }

    /// Loads `layer` into the engine as it was at change `target` (or now, when `None`, or
    /// when the log no longer reaches back that far).
    async fn load_layer(&mut self, g: &Geofences, layer: &str, target: Option<u64>) -> Result<()> {
        let mut snap = g
            .store
            .snapshot(
                layer,
                SnapshotRequest {
                    bbox: None,
                    filter: None,
                    since: target,
                    page_size: 2000,
                },
            )
            .await?;
        let mut features = Vec::new();
        while let Some(page) = snap.pages.recv().await {
            features.extend(page?);
        }
        self.engine.load(layer, snap.seq, features);
        let mut at = snap.seq;
        if let Some(t) = target.filter(|t| *t < snap.seq) {
            if snap.complete {
                for c in snap.changes.iter().rev() {
                    self.engine.unapply(c);
                }
                at = t;
            } else {
                warn!(
                    layer,
                    from = t,
                    to = snap.seq,
                    "the change log no longer holds the changes after the geofences' last evaluated one; they are skipped"
                );
            }
        }
        self.cursors.insert(layer.to_owned(), at);
        Ok(())
    }

    /// Brings the engine's fences in line with the store's: loads new ones (and the layers
    /// they need), closes deleted ones.
    async fn sync_fences(&mut self, g: &Geofences) -> Result<()> {
        let records = g.records().await?;
        let wanted: HashMap<&str, &FenceRecord> =
            records.iter().map(|r| (r.spec.name.as_str(), r)).collect();
        // Closed: deleted, or replaced by another fence of the same name.
        let gone: Vec<String> = self
            .loaded
            .iter()
            .filter(|(n, created)| {
                wanted
                    .get(n.as_str())
                    .is_none_or(|r| r.created_ms != **created)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.close(g, &name).await?;
        }
        let new: Vec<&FenceRecord> = records
            .iter()
            .filter(|r| !self.loaded.contains_key(&r.spec.name))
            .collect();
        for r in new {
            let fence = match Fence::compile(r.clone()) {
                Ok(f) => f,
                Err(e) => {
                    warn!(fence = %r.spec.name, error = %e, "a stored geofence is not valid; it is ignored");
                    continue;
                }
            };
            for layer in self.engine.missing_layers(&fence) {
                // The watched layer resumes where it was evaluated, or at the fence's start;
                // other layers (zones, roaming partners) are taken as they are now.
                let target = if layer == r.spec.layer {
                    Some(self.saved.get(&layer).copied().unwrap_or(r.start_seq))
                } else {
                    self.saved.get(&layer).copied()
                };
                match self.load_layer(g, &layer, target).await {
                    Ok(()) => {}
                    Err(ServerError::Store(geostream_store::StoreError::LayerNotFound(_))) => {
                        self.engine.load(&layer, 0, []);
                        self.cursors.insert(layer.clone(), 0);
                    }
                    Err(e) => return Err(e),
                }
            }
            self.read_published(g, &r.spec.name).await;
            self.engine.add(fence);
            self.loaded.insert(r.spec.name.clone(), r.created_ms);
            g.counters
                .lock()
                .per_fence
                .entry(r.spec.name.clone())
                .or_insert(0);
        }
        g.counters.lock().fences = self.loaded.len();
        Ok(())
    }

    /// Learns which events are already in the fence's channel (a previous evaluator
    /// published them): the newest per source layer.
    async fn read_published(&mut self, g: &Geofences, name: &str) {
        let params = ChannelHistoryParams {
            channel: geostream_fence::channel_of(name),
            since: None,
            limit: Some(1000),
        };
        let Ok(h) = g.streams.history(&params).await else {
            return;
        };
        let mut last: HashMap<String, (u64, u32)> = HashMap::new();
        for m in h.messages {
            if let Ok(e) = m.data.decode::<FenceEvent>() {
                let (src, seq, n) = e.source();
                let at = last.entry(src.to_owned()).or_insert((seq, n));
                *at = (*at).max((seq, n));
            }
        }
        if !last.is_empty() {
            self.published.insert(name.to_owned(), last);
        }
    }

    /// Sends the closing exits of a fence and removes it.
    async fn close(&mut self, g: &Geofences, name: &str) -> Result<()> {
        let events = self.engine.closing_events(name, now_ms());
        self.pending.extend(events);
        // Deliveries need the fence's targets: publish before removing it.
        self.flush(g).await;
        self.engine.remove(name);
        // Queued deliveries (the closing exits among them) still go out.
        g.webhooks.remove(name);
        self.loaded.remove(name);
        self.published.remove(name);
        g.counters.lock().per_fence.remove(name);
        Ok(())
    }

    async fn serve(&mut self, g: &Geofences, lease: Duration) {
        let mut renewed = Instant::now();
        let mut synced = Instant::now();
        let mut saved = Instant::now();
        loop {
            tokio::select! {
                _ = g.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if renewed.elapsed() >= lease / 3 {
                match g
                    .store
                    .fence_lease(&g.holder, lease.as_millis() as u64)
                    .await
                {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => {
                        warn!(
                            "the geofence lease went to another node; this node stops evaluating"
                        );
                        return;
                    }
                    Err(e) if renewed.elapsed() < lease * 2 / 3 => {
                        warn!(error = %e, "cannot renew the geofence lease; retrying");
                    }
                    Err(e) => {
                        warn!(error = %e, "the geofence lease could not be renewed in time; this node stops evaluating");
                        return;
                    }
                }
            }
            // Every layer change wakes this loop: the store is asked for the fences only
            // every 500 ms (fences created on other nodes), or at once after a change made
            // through this node, never per change.
            let changed = g.changed.swap(false, std::sync::atomic::Ordering::Relaxed);
            if changed || synced.elapsed() >= Duration::from_millis(500) {
                // Fences created or deleted through any node.
                if let Err(e) = self.sync_fences(g).await {
                    warn!(error = %e, "cannot read the geofences");
                }
                if let Err(e) = self.expire(g).await {
                    warn!(error = %e, "cannot close expired geofences");
                }
                synced = Instant::now();
            }
            if !self.flush(g).await {
                continue;
            }
            if let Err(e) = self.step(g).await {
                warn!(error = %e, "geofence evaluation failed; retrying");
            }
            if saved.elapsed() >= Duration::from_millis(500) {
                self.save(g).await;
                saved = Instant::now();
            }
        }
    }

    async fn expire(&mut self, g: &Geofences) -> Result<()> {
        let now = now_ms();
        let expired: Vec<String> = self
            .engine
            .fences()
            .filter(|f| f.record.expires_ms.is_some_and(|t| t <= now))
            .map(|f| f.name().to_owned())
            .collect();
        for name in expired {
            self.close(g, &name).await?;
            g.store.delete_fence(&name).await?;
            info!(fence = %name, "geofence expired");
        }
        Ok(())
    }

    async fn save(&mut self, g: &Geofences) {
        let dirty: Vec<(String, u64)> = self
            .cursors
            .iter()
            .filter(|(l, s)| self.saved.get(*l) != Some(*s))
            .map(|(l, s)| (l.clone(), *s))
            .collect();
        if dirty.is_empty() {
            return;
        }
        match g.store.save_fence_cursors(dirty.clone()).await {
            Ok(()) => self.saved.extend(dirty),
            Err(e) => warn!(error = %e, "cannot save how far the geofences were evaluated"),
        }
    }

    /// Evaluates the changes committed since the last step, a page per layer at a time.
    async fn step(&mut self, g: &Geofences) -> Result<()> {
        let layers: Vec<String> = self.cursors.keys().cloned().collect();
        for layer in layers {
            loop {
                let from = self.cursors[&layer];
                let page = match g.store.changes(&layer, from, PAGE).await {
                    Ok(p) => p,
                    Err(geostream_store::StoreError::LayerNotFound(_)) => break,
                    Err(e) => return Err(e.into()),
                };
                g.counters
                    .lock()
                    .lag
                    .insert(layer.clone(), page.seq.saturating_sub(from));
                if page.changes.is_empty() {
                    if page.seq < from {
                        // The layer was deleted and created again: start over.
                        self.load_layer(g, &layer, None).await?;
                    }
                    break;
                }
                if page.changes[0].seq != from + 1 {
                    warn!(
                        layer = %layer,
                        from,
                        first = page.changes[0].seq,
                        "changes were dropped from the log before the geofences saw them; reloading the layer"
                    );
                    self.load_layer(g, &layer, None).await?;
                    continue;
                }
                let mut events = Vec::new();
                let last = page.changes.last().map_or(from, |c| c.seq);
                for c in &page.changes {
                    self.engine.apply(c, &mut events);
                }
                {
                    let mut k = g.counters.lock();
                    k.changes += page.changes.len() as u64;
                }
                self.pending.extend(events);
                self.pending_cursors.push((layer.clone(), last));
                if !self.flush(g).await {
                    return Ok(());
                }
                if page.changes.len() < PAGE {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Publishes the pending events, each fence's in order (fences in parallel); returns
    /// whether all were published. Cursors advance only past published events.
    async fn flush(&mut self, g: &Geofences) -> bool {
        if !self.pending.is_empty() {
            let mut by_fence: BTreeMap<String, Vec<FenceEvent>> = BTreeMap::new();
            for e in self.pending.drain(..) {
                if let Some(done) = self.published.get(&e.fence) {
                    let (src, seq, n) = e.source();
                    if done.get(src).is_some_and(|d| (seq, n) <= *d) {
                        g.counters.lock().skipped += 1;
                        continue;
                    }
                }
                by_fence.entry(e.fence.clone()).or_default().push(e);
            }
            let nats = if by_fence.keys().any(|f| {
                self.engine
                    .fence(f)
                    .is_some_and(|f| f.record.spec.nats.is_some())
            }) {
                g.nats_client().await
            } else {
                None
            };
            let jobs = by_fence.into_iter().map(|(name, events)| {
                let fence = self.engine.fence(&name).cloned();
                publish_fence(g, fence, name, events, nats)
            });
            let results = futures_util::future::join_all(jobs).await;
            let mut failed = false;
            for (name, left, sent) in results {
                let mut c = g.counters.lock();
                c.events += sent;
                *c.per_fence.entry(name).or_insert(0) += sent;
                if !left.is_empty() {
                    failed = true;
                    c.publish_errors += 1;
                    self.pending.extend(left);
                }
            }
            if failed {
                return false;
            }
        }
        for (layer, seq) in self.pending_cursors.drain(..) {
            self.cursors.insert(layer.clone(), seq);
            g.counters.lock().cursors.insert(layer, seq);
        }
        true
    }
}

/// Publishes one fence's events in order; stops at the first failure. Returns the fence,
/// the events not published, and how many were.
async fn publish_fence(
    g: &Geofences,
    fence: Option<Arc<Fence>>,
    name: String,
    events: Vec<FenceEvent>,
    nats: Option<&async_nats::Client>,
) -> (String, Vec<FenceEvent>, u64) {
    let channel = geostream_fence::channel_of(&name);
    let mut sent = 0;
    let mut rest = events.into_iter();
    while let Some(e) = rest.next() {
        let body = Bytes::from(e.to_json());
        if let Err(err) = g
            .streams
            .publish(
                &channel,
                Payload::from_trusted(geostream_core::payload::PayloadKind::Json, body.clone()),
            )
            .await
        {
            warn!(fence = %name, error = %ServerError::from(err), "cannot publish a geofence event; retrying");
            let mut left = vec![e];
            left.extend(rest);
            return (name, left, sent);
        }
        sent += 1;
        if let Some(w) = fence.as_ref().and_then(|f| f.record.spec.webhook.as_ref()) {
            let target = WebhookTarget {
                url: w.url.clone(),
                secret: w.secret.clone().unwrap_or_default(),
            };
            g.webhooks.send(&name, &target, &e.key, body.clone());
        }
        if let (Some(f), Some(client)) = (&fence, nats)
            && let Some(n) = &f.record.spec.nats
            && let Err(err) = client.publish(n.subject.clone(), body.clone()).await
        {
            warn!(fence = %name, error = %err, "cannot publish a geofence event to NATS");
        }
    }
    (name, Vec::new(), sent)
}
