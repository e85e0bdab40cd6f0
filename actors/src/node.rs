//! The DC node: hosts the cells of the slots its DC owns and serves the DC protocol.
//!
//! Owns, for one DC: its lease (registration, heartbeats, re-registration after being
//! declared dead), the follower of the ownership table (installed into the ledgers as it
//! changes), the takeover watcher (a peer whose lease has not moved for its TTL, as timed
//! on this node's own monotonic clock, has its slots taken over by the survivors), one
//! [`Ledger`] per keyspace in DC mode (commits fenced by slot epochs, users of other DCs
//! answered `not_owner`), and the peer links that carry credit legs to the DC owning their
//! payee.
//!
//! Compute is stateless: everything durable is in the store; a node that dies loses only
//! what it had not acknowledged.
//!
//! Must never: commit for a slot it does not own (the ledger's fences refuse it even if
//! this node's view is stale), trust a wall clock for liveness, or block the DC protocol
//! on store I/O of its own loops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cells::ids::DcId;
use cells::keys::Keyspace;
use cells::ledger::{Command, CommandResult, ErrorCode};
use cells::ownership::{self, ChangeMeta, Lease, LeaseState, OwnershipError, OwnershipTable};
use cells::slot::Slot;
use cells::store::{BoxFuture, KeyValue, Store};
use wire::dc_client::{DcClient, DcClientOptions};
use wire::dc_protocol::{NodeStatus, CREDITS_PER_MESSAGE_MAX};
use wire::dc_server::DcHandler;

use crate::{CreditForwarder, Ledger, LedgerConfig};

/// Shortest lease TTL accepted.
pub const LEASE_TTL_MS_MIN: u64 = 300;
/// Longest lease TTL accepted.
pub const LEASE_TTL_MS_MAX: u64 = 60_000;
/// Default lease TTL: a dead node's slots are taken over within about this plus a third.
pub const LEASE_TTL_MS_DEFAULT: u64 = 2_000;
/// Attempts at a table change (bootstrap, registration) that conflicts with other nodes'.
const TABLE_CHANGE_ATTEMPTS_MAX: usize = 16;

/// How often a node's relays rescan the durable outbox of the slots the node owns, as a
/// safety net. Every event that can leave a leg behind asks for a rescan at once (an
/// ownership change, a failed delivery or forward, an unknown commit outcome); the periodic
/// scan only bounds the delay of a leg lost without a signal (a peer that took a forwarded
/// leg and died before committing it). A scan re-delivers every entry still in flight, so
/// it is not free under load (cleared entries leave nothing to read: the embedded store
/// removes them without tombstones, see `EmbeddedOptions::transient_prefixes`).
pub const OUTBOX_RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of a [`DcNode`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub dc: DcId,
    /// Where peers and the router reach this node's DC protocol.
    pub advertise: String,
    pub lease_ttl_ms: u64,
    /// How often the table version is polled.
    pub follow_interval: Duration,
    /// Settings of the node's ledgers (`dc` and the outbox rescan are set by the node).
    pub ledger: LedgerConfig,
    /// Assign unowned slots to these DCs (in cell runs) before registering.
    pub bootstrap: Vec<DcId>,
}

impl NodeConfig {
    pub fn new(dc: DcId, advertise: String) -> Self {
        NodeConfig {
            dc,
            advertise,
            lease_ttl_ms: LEASE_TTL_MS_DEFAULT,
            follow_interval: Duration::from_millis(50),
            ledger: LedgerConfig::default(),
            bootstrap: Vec::new(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("lease TTL {ttl_ms} ms is outside {LEASE_TTL_MS_MIN}..={LEASE_TTL_MS_MAX}")]
    BadTtl { ttl_ms: u64 },
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
}

/// A running DC node. See the module docs.
pub struct DcNode {
    config: NodeConfig,
    store: Arc<dyn Store>,
    real: Ledger,
    shadow: Ledger,
    lease: Mutex<Lease>,
    table_version: AtomicU64,
    owned_slots: AtomicU64,
    peers: Arc<Peers>,
    /// Freezes in force, by slot range, with the token of the freeze that set them.
    freezes: Mutex<HashMap<(u32, u32), u64>>,
    next_freeze: AtomicU64,
}

impl DcNode {
    /// Bootstraps the table if asked, registers this DC (fencing any earlier process of it)
    /// and starts its ledgers. Call inside a running actix system; then drive
    /// [`DcNode::run`] and serve [`DcNode::handler`].
    pub async fn start(
        store: Arc<dyn Store>,
        config: NodeConfig,
    ) -> Result<Arc<DcNode>, NodeError> {
        if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&config.lease_ttl_ms) {
            return Err(NodeError::BadTtl {
                ttl_ms: config.lease_ttl_ms,
            });
        }
        if !config.bootstrap.is_empty() {
            bootstrap(&*store, &config).await?;
        }
        let lease = register(&*store, &config).await?;
        let peers = Arc::new(Peers::default());
        let start_ledger = |keyspace| {
            let ledger = Ledger::start(
                Arc::clone(&store),
                LedgerConfig {
                    keyspace,
                    dc: Some(config.dc.clone()),
                    outbox_rescan_interval: Some(OUTBOX_RESCAN_INTERVAL),
                    ..config.ledger.clone()
                },
            );
            ledger.set_forwarder(Arc::clone(&peers) as Arc<dyn CreditForwarder>);
            ledger
        };
        let node = Arc::new(DcNode {
            real: start_ledger(Keyspace::Real),
            shadow: start_ledger(Keyspace::Shadow),
            config,
            store,
            lease: Mutex::new(lease),
            table_version: AtomicU64::new(0),
            owned_slots: AtomicU64::new(0),
            peers,
            freezes: Mutex::new(HashMap::new()),
            next_freeze: AtomicU64::new(1),
        });
        node.follow().await?;
        node.refresh_peers(&ownership::read_leases(&*node.store).await?);
        tracing::info!(dc = %node.config.dc, addr = %node.config.advertise,
            slots = node.owned_slots.load(Ordering::Relaxed), "DC node started");
        Ok(node)
    }

    pub fn dc(&self) -> &DcId {
        &self.config.dc
    }

    pub fn ledger(&self, space: Keyspace) -> &Ledger {
        match space {
            Keyspace::Real => &self.real,
            Keyspace::Shadow => &self.shadow,
        }
    }

    /// The DC protocol handler for [`wire::dc_server::serve`].
    pub fn handler(self: &Arc<Self>) -> Arc<dyn DcHandler> {
        Arc::new(Handler(Arc::clone(self)))
    }

    /// The node's loops (table follower, heartbeat, takeover watcher) until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let ttl = Duration::from_millis(self.config.lease_ttl_ms);
        let beat_every = ttl / 3;
        let mut watcher = Watcher::default();
        let mut follow = tokio::time::interval(self.config.follow_interval);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(beat_every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // With FoundationDB a watch on the table version wakes the follower at once; the
        // embedded and remote stores have no watches and are polled.
        let version_key = cells::keys::table_version();
        let mut table_watch = self.store.watch(&version_key);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                fired = async {
                    match table_watch.as_mut() {
                        Some(watch) => watch.await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(error) = fired {
                        tracing::warn!(dc = %self.config.dc, %error, "table watch failed; polling until it is set again");
                        tokio::time::sleep(self.config.follow_interval).await;
                    }
                    if let Err(error) = self.follow().await {
                        tracing::warn!(dc = %self.config.dc, %error, "cannot follow the ownership table");
                    }
                    table_watch = self.store.watch(&version_key);
                }
                _ = follow.tick() => {
                    if let Err(error) = self.follow().await {
                        tracing::warn!(dc = %self.config.dc, %error, "cannot follow the ownership table");
                    }
                }
                _ = beat.tick() => {
                    if !self.beat().await {
                        // A node that cannot reach the store cannot judge its peers: their
                        // leases stood still only as far as it could see. Start over.
                        watcher.seen.clear();
                        continue;
                    }
                    match ownership::read_leases(&*self.store).await {
                        Ok(leases) => {
                            self.refresh_peers(&leases);
                            self.watch(&mut watcher, &leases).await;
                        }
                        Err(error) => tracing::warn!(dc = %self.config.dc, %error, "cannot read leases"),
                    }
                }
            }
        }
    }

    /// Loads the table if its version moved, and installs it into the ledgers.
    async fn follow(&self) -> Result<(), OwnershipError> {
        let version = ownership::read_version(&*self.store).await?;
        if version == self.table_version.load(Ordering::Acquire) && version != 0 {
            return Ok(());
        }
        let current = self.real.ownership();
        let table = ownership::refresh(&*self.store, &current).await?;
        self.install(table);
        Ok(())
    }

    fn install(&self, table: Arc<OwnershipTable>) {
        let owned = table.slots_of(&self.config.dc).count() as u64;
        let before = self.owned_slots.swap(owned, Ordering::AcqRel);
        self.table_version.store(table.version, Ordering::Release);
        self.real.set_ownership(Arc::clone(&table));
        self.shadow.set_ownership(table);
        metrics::gauge!("tessera_node_owned_slots").set(owned as f64);
        if before != owned {
            tracing::info!(dc = %self.config.dc, before, owned, "owned slots changed");
        }
    }

    /// Renews the lease; false when the store could not be reached.
    async fn beat(&self) -> bool {
        let lease = self.lease.lock().map(|l| l.clone());
        let Ok(lease) = lease else { return false };
        match ownership::heartbeat(&*self.store, &lease).await {
            Ok(next) => {
                if let Ok(mut current) = self.lease.lock() {
                    *current = next;
                }
                metrics::counter!("tessera_node_heartbeats_total").increment(1);
                true
            }
            Err(OwnershipError::LeaseLost { .. }) => {
                // Declared dead (paused, partitioned or too slow): everything this DC
                // owned was taken over and its fences bumped. Rejoin owning nothing.
                tracing::warn!(dc = %self.config.dc, "lease lost; registering again");
                metrics::counter!("tessera_node_lease_lost_total").increment(1);
                match register(&*self.store, &self.config).await {
                    Ok(lease) => {
                        if let Ok(mut current) = self.lease.lock() {
                            *current = lease;
                        }
                        if let Err(error) = self.follow().await {
                            tracing::warn!(%error, "cannot load the table after re-registering");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(dc = %self.config.dc, %error, "re-registration failed")
                    }
                }
                false
            }
            Err(error) => {
                metrics::counter!("tessera_node_heartbeat_failures_total").increment(1);
                tracing::warn!(dc = %self.config.dc, %error, "heartbeat failed");
                false
            }
        }
    }

    /// Takes over every peer whose lease has stood still for its TTL.
    async fn watch(&self, watcher: &mut Watcher, leases: &[Lease]) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut survivors = vec![self.config.dc.clone()];
        for lease in leases {
            if lease.dc == self.config.dc || lease.state != LeaseState::Live {
                watcher.seen.remove(&lease.dc);
                continue;
            }
            let mark = (lease.incarnation, lease.beat);
            let entry = watcher.seen.entry(lease.dc.clone()).or_insert((mark, now));
            if entry.0 != mark {
                *entry = (mark, now);
            }
            if now.duration_since(entry.1) > Duration::from_millis(lease.ttl_ms) {
                expired.push((lease.clone(), now.duration_since(entry.1)));
            } else {
                survivors.push(lease.dc.clone());
            }
        }
        survivors.sort();
        for (lease, silent) in expired {
            let why = format!(
                "lease of {} (incarnation {}) did not move for {} ms (TTL {} ms)",
                lease.dc,
                lease.incarnation,
                silent.as_millis(),
                lease.ttl_ms
            );
            let meta = ChangeMeta::new(self.config.dc.as_str(), &why);
            match ownership::take_over(&*self.store, &lease, &survivors, &meta).await {
                Ok(version) => {
                    tracing::warn!(dc = %self.config.dc, dead = %lease.dc, version, %why, "took over");
                    watcher.seen.remove(&lease.dc);
                    if let Err(error) = self.follow().await {
                        tracing::warn!(%error, "cannot load the table after a takeover");
                    }
                }
                Err(OwnershipError::LeaseLost { .. }) => {
                    tracing::info!(dead = %lease.dc, "lease moved or another DC took over first");
                }
                Err(error) => tracing::warn!(dead = %lease.dc, %error, "takeover failed"),
            }
        }
    }

    fn refresh_peers(&self, leases: &[Lease]) {
        for lease in leases {
            if lease.dc != self.config.dc && lease.state == LeaseState::Live {
                self.peers.ensure(&lease.dc, &lease.addr);
            }
        }
    }

    /// Handover at the source: freezes the slots in both keyspaces and drains them. The
    /// node thaws on its own after `max_ms` if no thaw came (a controller that died).
    async fn freeze(self: Arc<Self>, first: Slot, last: Slot, max_ms: u32) -> (bool, u64) {
        let started = Instant::now();
        let token = self.next_freeze.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut freezes) = self.freezes.lock() {
            freezes.insert((first.index(), last.index()), token);
        }
        let bound = Duration::from_millis(u64::from(max_ms));
        let real = self.real.freeze(first, last, bound / 2).await;
        let shadow = self.shadow.freeze(first, last, bound / 2).await;
        let drain_us = started.elapsed().as_micros() as u64;
        metrics::histogram!("tessera_node_drain_seconds").record(started.elapsed().as_secs_f64());
        let node = Arc::clone(&self);
        tokio::spawn(async move {
            tokio::time::sleep(bound).await;
            let expired = node.freezes.lock().is_ok_and(|mut freezes| {
                freezes.get(&(first.index(), last.index())) == Some(&token)
                    && freezes.remove(&(first.index(), last.index())).is_some()
            });
            if expired {
                tracing::warn!(dc = %node.config.dc, first = first.index(), last = last.index(),
                    "freeze expired without a thaw; thawing");
                node.real.thaw(first, last);
                node.shadow.thaw(first, last);
            }
        });
        (real && shadow, drain_us)
    }

    /// Handover at the source, last step: reload the table (so moved users are answered
    /// `not_owner` at once), then thaw.
    async fn thaw(self: Arc<Self>, first: Slot, last: Slot) -> u64 {
        if let Err(error) = self.follow().await {
            tracing::warn!(%error, "cannot reload the table before thawing");
        }
        if let Ok(mut freezes) = self.freezes.lock() {
            freezes.remove(&(first.index(), last.index()));
        }
        self.real.thaw(first, last);
        self.shadow.thaw(first, last);
        self.table_version.load(Ordering::Acquire)
    }

    fn status(&self) -> NodeStatus {
        NodeStatus {
            dc: self.config.dc.clone(),
            incarnation: self.lease.lock().map(|l| l.incarnation).unwrap_or(0),
            table_version: self.table_version.load(Ordering::Acquire),
            owned_slots: self.owned_slots.load(Ordering::Acquire) as u32,
            active_accounts: (self.real.active_accounts() + self.shadow.active_accounts()) as u64,
        }
    }
}

async fn bootstrap(store: &dyn Store, config: &NodeConfig) -> Result<(), OwnershipError> {
    let meta = ChangeMeta::new(config.dc.as_str(), "bootstrap");
    let version = retrying(|| ownership::bootstrap(store, &config.bootstrap, &meta)).await?;
    if let Some(version) = version {
        tracing::info!(version, dcs = ?config.bootstrap, "bootstrapped the ownership table");
    }
    Ok(())
}

async fn register(store: &dyn Store, config: &NodeConfig) -> Result<Lease, OwnershipError> {
    retrying(|| ownership::register(store, &config.dc, &config.advertise, config.lease_ttl_ms))
        .await
}

/// Runs a table change again while it fails retryably (other nodes changing the table at
/// the same moment), a bounded number of times.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, OwnershipError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OwnershipError>>,
{
    let mut attempts = 0;
    loop {
        match attempt().await {
            Err(error) if error.is_retryable() && attempts < TABLE_CHANGE_ATTEMPTS_MAX => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(5 * attempts as u64)).await;
            }
            result => return result,
        }
    }
}

/// When each peer's lease was last seen to move, on this node's clock.
#[derive(Default)]
struct Watcher {
    seen: HashMap<DcId, ((u64, u64), Instant)>,
}

/// Links to peer DC nodes, by DC.
#[derive(Default)]
struct Peers {
    links: Mutex<HashMap<DcId, Arc<DcClient>>>,
}

impl Peers {
    fn ensure(&self, dc: &DcId, addr: &str) {
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        if links.get(dc).is_some_and(|link| link.addr() == addr) {
            return;
        }
        match DcClient::connect(addr, DcClientOptions::default()) {
            Ok(link) => {
                links.insert(dc.clone(), Arc::new(link));
            }
            Err(error) => tracing::warn!(%dc, addr, %error, "cannot start a peer link"),
        }
    }
}

impl CreditForwarder for Peers {
    fn forward(&self, dc: &DcId, space: Keyspace, legs: Vec<KeyValue>) -> bool {
        let link = self
            .links
            .lock()
            .ok()
            .and_then(|links| links.get(dc).cloned());
        let Some(link) = link else {
            return false;
        };
        let mut legs = legs;
        while !legs.is_empty() {
            let rest = legs.split_off(legs.len().min(CREDITS_PER_MESSAGE_MAX));
            if link.credits(space, legs).is_err() {
                return false;
            }
            legs = rest;
        }
        true
    }
}

struct Handler(Arc<DcNode>);

impl DcHandler for Handler {
    fn execute(
        &self,
        space: Keyspace,
        commands: Vec<Command>,
    ) -> BoxFuture<'static, Result<Vec<CommandResult>, ErrorCode>> {
        let ledger = self.0.ledger(space).clone();
        Box::pin(async move { ledger.execute(commands).await.map_err(|e| e.code()) })
    }

    fn credits(&self, space: Keyspace, legs: Vec<KeyValue>) {
        self.0.ledger(space).deliver_from_peer(legs);
    }

    fn status(&self) -> NodeStatus {
        self.0.status()
    }

    fn freeze(&self, first: u16, last: u16, max_ms: u32) -> BoxFuture<'static, (bool, u64)> {
        let node = Arc::clone(&self.0);
        Box::pin(async move { node.freeze(Slot::new(first), Slot::new(last), max_ms).await })
    }

    fn thaw(&self, first: u16, last: u16) -> BoxFuture<'static, u64> {
        let node = Arc::clone(&self.0);
        Box::pin(async move { node.thaw(Slot::new(first), Slot::new(last)).await })
    }

    fn reload(&self) -> BoxFuture<'static, u64> {
        let node = Arc::clone(&self.0);
        Box::pin(async move {
            if let Err(error) = node.follow().await {
                tracing::warn!(%error, "reload of the ownership table failed");
            }
            node.table_version.load(Ordering::Acquire)
        })
    }
}
