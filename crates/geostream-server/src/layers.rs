//! Layers on a node: creating and deleting them, edits (durable first, then published to
//! every node), and feature locks (taken, released, expired, always announced).
//!
//! An edit's way: [`Layers::apply`] → the store commits and syncs it and gives it the layer's
//! next sequence number → the change is published → every node's hub dispatches it in
//! sequence order to the subscriptions it concerns.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;

use geostream_broker::Broker;
use geostream_core::api::{ClientInfo, LockInfo, LockPush};
use geostream_core::bus::BusEvent;
use geostream_core::feature::Change;
use geostream_hub::{Hub, LOCK_HOLDERS};
use geostream_store::{Holder, LayerInfo, LayerSpec, Lock, Store, WriteRequest};

use crate::backends::{AnyStore, NodeStreams};
use crate::config::LayersConfig;
use crate::error::{Result, ServerError};
use crate::forward::{self, Forwarded, Forwarding};

/// An applied edit: [`geostream_store::WriteOutcome`] with its changes shared.
pub struct Applied {
    /// One change per operation, in order.
    pub changes: Vec<Arc<Change>>,
    /// True when the request repeated an already applied `op_id`.
    pub replayed: bool,
}

/// Layer operations of this node.
pub struct Layers {
    store: AnyStore,
    streams: Arc<NodeStreams>,
    hub: Arc<Hub>,
    config: LayersConfig,
    /// Hands writes to their owner in a cluster (`None`: this node writes all).
    forwarding: Option<Forwarding>,
    /// The task applying other nodes' writes: it ends with this node's layers, and with it
    /// this node's subscription, so that others stop sending it writes.
    serving: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Layers {
    fn drop(&mut self) {
        if let Some(t) = self.serving.get_mut().take() {
            t.abort();
        }
    }
}

impl Layers {
    /// The service, and the task that expires locks whose time is up.
    pub fn start(
        store: AnyStore,
        streams: Arc<NodeStreams>,
        hub: Arc<Hub>,
        config: LayersConfig,
        forwarding: Option<Forwarding>,
    ) -> Arc<Layers> {
        let layers = Arc::new(Layers {
            store,
            streams,
            hub,
            config,
            forwarding,
            serving: parking_lot::Mutex::new(None),
        });
        let weak = Arc::downgrade(&layers);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                let Some(layers) = weak.upgrade() else { return };
                layers.reap().await;
            }
        });
        layers
    }

    /// Creates a layer (and tells the hub it starts at sequence 0).
    pub async fn create(&self, spec: LayerSpec) -> Result<LayerInfo> {
        geostream_core::api::validate_name("layer", &spec.name).map_err(ServerError::invalid)?;
        let info = self.store.create_layer(spec).await?;
        self.hub.init_layer(&info.name, info.seq);
        Ok(info)
    }

    /// Deletes a layer; every node ends its subscriptions to it.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.store.delete_layer(name).await?;
        self.streams
            .publish_layer_event(name, BusEvent::LayerDeleted)
            .await;
        Ok(())
    }

    /// Applies an edit durably, then publishes its changes. The changes are shared with the
    /// pushes made of them rather than copied (each holds a feature before and after).
    pub async fn apply(&self, req: WriteRequest) -> Result<Applied> {
        self.apply_then(req, || (), || ()).await
    }

    /// [`Layers::apply`], calling `submitted` once the write's order is fixed (it is in the
    /// store's queue, see [`geostream_store::Store::apply`]) and `committed` as soon as the
    /// store has answered (committed or refused), before the changes are published: a
    /// connection's pipeline hands its next write to the store from the first, and lets the
    /// reads of the same features start from the second.
    ///
    /// In a cluster the write may be applied by its owner ([`crate::forward`]), which
    /// then publishes the changes itself. The owner applies forwarded writes as they come, in
    /// no fixed order, so a forwarded write is `submitted` only once it is answered.
    pub async fn apply_then(
        &self,
        req: WriteRequest,
        submitted: impl FnOnce(),
        committed: impl FnOnce(),
    ) -> Result<Applied> {
        let (req, made_up_op_id) = match &self.forwarding {
            Some(f) => match f.apply(req).await {
                Forwarded::Done(outcome) => {
                    submitted();
                    committed();
                    let outcome = outcome?;
                    return Ok(Applied {
                        changes: outcome.changes.into_iter().map(Arc::new).collect(),
                        replayed: outcome.replayed,
                    });
                }
                Forwarded::Local { req, made_up_op_id } => (req, made_up_op_id),
            },
            None => (req, false),
        };
        let mut write = std::pin::pin!(self.store.apply(req));
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        submitted();
        let outcome = match first {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => write.await,
        };
        committed();
        let outcome = outcome?;
        let changes: Vec<Arc<Change>> = outcome.changes.into_iter().map(Arc::new).collect();
        // A replay is published already (by whoever applied it first).
        if !outcome.replayed && !changes.is_empty() {
            self.streams.publish_changes(changes.clone()).await;
        }
        Ok(Applied {
            changes,
            // Of an id made up for forwarding: the owner applied it and did not answer.
            replayed: outcome.replayed && !made_up_op_id,
        })
    }

    /// Applies the writes other nodes forward to this one, each as soon as it arrives (the
    /// store groups a layer's concurrent writes into one commit), publishing the changes
    /// before answering, as a local edit is published before it is acknowledged.
    pub fn serve_forwarded(
        self: &Arc<Self>,
        requests: impl futures_util::Stream<Item = geostream_broker::NodeRequest> + Send + 'static,
    ) {
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut requests = std::pin::pin!(requests);
            while let Some(r) = requests.next().await {
                let Some(layers) = weak.upgrade() else {
                    // Shutting down: the sender writes it itself.
                    r.respond(forward::NOT_APPLIED).await;
                    return;
                };
                tokio::spawn(async move {
                    let answer = match forward::decode(&r.payload) {
                        Ok(req) => {
                            if let Some(f) = &layers.forwarding {
                                f.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            let outcome = layers.store.apply(req).await;
                            let answer = forward::encode(&outcome);
                            if let Ok(o) = outcome
                                && !o.replayed
                                && !o.changes.is_empty()
                            {
                                let changes = o.changes.into_iter().map(Arc::new).collect();
                                layers.streams.publish_changes(changes).await;
                            }
                            answer
                        }
                        Err(answer) => answer,
                    };
                    r.respond(answer).await;
                });
            }
        });
        *self.serving.lock() = Some(task);
    }

    /// Appends the PostgreSQL write groups and the forwarding counters (a cluster on
    /// PostgreSQL only) to a Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        if let AnyStore::Postgres(s) = &self.store {
            let (groups, requests) = s.write_stats().get();
            crate::metrics::counter(
                out,
                "geostream_store_write_groups_total",
                "Write transactions this node committed on PostgreSQL (the writes, to any \
                 layers, that arrive while groups commit share the next one).",
                &[("", groups as f64)],
            );
            crate::metrics::counter(
                out,
                "geostream_store_write_requests_total",
                "Write requests those transactions carried: divided by the groups, the mean \
                 group size.",
                &[("", requests as f64)],
            );
        }
        if let Some(f) = &self.forwarding {
            f.render_metrics(out);
        }
    }

    /// Locks features for `holder` (at most `layers.max_lock_ttl_ms`) and tells every node.
    pub async fn lock(
        &self,
        layer: &str,
        ids: &[String],
        holder: &Holder,
        ttl_ms: Option<u64>,
    ) -> Result<Vec<Lock>> {
        if ids.is_empty() {
            return Err(ServerError::invalid("ids: give at least one feature id"));
        }
        let ttl = ttl_ms
            .unwrap_or(self.config.lock_ttl_ms)
            .clamp(1000, self.config.max_lock_ttl_ms);
        // Locks whose time is up are announced as released before anyone takes them over,
        // rather than at the next sweep, which could come after the new `locked: true`.
        self.reap().await;
        let locks = self.store.lock(layer, ids, holder, ttl).await?;
        for l in &locks {
            self.announce_lock(l, true).await;
        }
        Ok(locks)
    }

    /// Releases `holder`'s locks of `ids` and tells every node.
    pub async fn unlock(&self, layer: &str, ids: &[String], holder: &Holder) -> Result<Vec<Lock>> {
        let released = self.store.unlock(layer, ids, holder).await?;
        for l in &released {
            self.announce_lock(l, false).await;
        }
        Ok(released)
    }

    /// Registers `holder` (a connection that takes locks) with the other nodes, so that if
    /// this node dies they let its locks expire.
    pub async fn track_holder(&self, holder: &Holder) {
        let member = ClientInfo {
            session: holder.client.clone(),
            user: holder.user.clone(),
            info: None,
        };
        self.streams
            .broker()
            .set_member(LOCK_HOLDERS, &holder.client, Some(&member))
            .await;
    }

    /// A client's connection is gone: its locks expire after the grace period unless it
    /// comes back and locks again.
    pub async fn release_client(&self, holder: &Holder) {
        self.streams
            .broker()
            .set_member(LOCK_HOLDERS, &holder.client, None)
            .await;
        if let Err(e) = self
            .store
            .expire_client_locks(&holder.client, self.config.lock_grace_ms)
            .await
        {
            tracing::warn!(error = %e, "Could not schedule a disconnected client's locks to expire.");
        }
    }

    /// Removes the locks whose time is up and announces each release (once: the store hands
    /// each expired lock to one caller).
    async fn reap(&self) {
        match self.store.reap_locks().await {
            Ok(expired) => {
                for l in expired {
                    self.announce_lock(&l, false).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "Could not reap expired locks."),
        }
    }

    /// Tells every node's subscribers of the lock's layer that it was locked or released.
    async fn announce_lock(&self, l: &Lock, locked: bool) {
        let push = LockPush {
            lock: LockInfo::from(l),
            locked,
        };
        self.streams
            .publish_layer_event(&l.layer, BusEvent::Lock(push))
            .await;
    }
}
