//! The registry of live account actors, the account directory and the shared handles.
//!
//! Owns which account actor is alive where (an account has at most one live actor per
//! ledger), the bounded cache of account specs used to route and validate, and the
//! handles every actor shares (store, relay, stats, settings). Must never start a second
//! actor for an account whose actor is alive, and never grow past its limits.

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Instant;

use actix::{Actor, Addr, ArbiterHandle};
use cells::ids::{AccountId, DcId};
use cells::keys::Keyspace;
use cells::ledger::ErrorCode;
use cells::money::Currency;
use cells::ownership::OwnershipTable;
use cells::records::{self, AccountRecord, AccountSpec, HotMode};
use cells::slot::{slot_of, Slot};
use cells::store::{KeyValue, Store};

use crate::account::{AccountActor, Delivery, Waker, CLIENT_ITEMS_MAX};
use crate::config::{LedgerConfig, ACCOUNT_MAILBOX_CAPACITY, DIRECTORY_ACCOUNTS_MAX};
use crate::freeze::Gate;
use crate::relay::OutboxRelay;
use crate::stats::LedgerStats;

/// What routing reads of each account a batch names, by id (`None`: no such account).
pub(crate) type Specs = HashMap<AccountId, Option<Routing>>;

/// What routing reads of an account's spec: a copy kept beside the account's id in the
/// directory's entry and in a batch's [`Specs`], so that routing a command reads only the
/// entry it found (the full spec is a pointer away, in a line that routing missed per
/// account: the spec's reference count in the directory's lookup, its currency in
/// `route`; both were half of those functions' samples in the `holds` benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Routing {
    pub currency: Currency,
    /// The slot of the account's user.
    pub slot: Slot,
    /// The account is split into parts (`HotMode::Split`).
    pub split: bool,
}

impl Routing {
    pub(crate) fn of(spec: &AccountSpec) -> Self {
        Routing {
            currency: spec.currency,
            slot: slot_of(&spec.user),
            split: matches!(spec.mode, HotMode::Split { .. }),
        }
    }
}

/// A directory entry: the spec, and its [`Routing`] beside it.
struct Known {
    routing: Routing,
    spec: Arc<AccountSpec>,
}

/// Actors of one arbiter thread that a delivery found disarmed, to be woken on that
/// thread by its waker task ([`wake_actors`]).
///
/// Why: a batch reaches thousands of idle actors at once, and the relay's credit legs as
/// many payees. Woken one by one from the sender, they were thousands of wake-ups queued
/// on the actors' thread ahead of the store's answers (see `account::completions`). The
/// waker task wakes them [`WAKES_PER_TURN`] at a time and lets the thread's other work
/// (commit completions above all) run in between.
///
/// Bounded: an actor is listed when a delivery arms its inbox, and not again until it has
/// run and disarmed it, so the list never holds more entries than there are live actors.
pub(crate) struct WakeList<A = Arc<Live>> {
    actors: Mutex<Vec<A>>,
    task: futures::task::AtomicWaker,
}

impl<A> Default for WakeList<A> {
    fn default() -> Self {
        WakeList {
            actors: Mutex::new(Vec::new()),
            task: futures::task::AtomicWaker::new(),
        }
    }
}

impl<A> WakeList<A> {
    fn push(&self, actor: A) {
        self.actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(actor);
        self.task.wake();
    }
}

/// Actors woken in one turn of the waker task before it lets the thread's other tasks run.
const WAKES_PER_TURN: usize = 64;

/// The waker task of one arbiter thread: wakes the actors listed in `list`, a turn of
/// [`WAKES_PER_TURN`] at a time. Runs as long as its arbiter.
async fn wake_actors<A: Waker>(list: Arc<WakeList<A>>) {
    let mut listed = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            list.task.register(cx.waker());
            let mut actors = list.actors.lock().unwrap_or_else(|p| p.into_inner());
            if actors.is_empty() {
                return std::task::Poll::Pending;
            }
            std::mem::swap(&mut *actors, &mut listed);
            std::task::Poll::Ready(())
        })
        .await;
        for turn in listed.chunks(WAKES_PER_TURN) {
            for actor in turn {
                // A stopped actor answers what it finds in its closed inbox.
                actor.wake();
            }
            metrics::counter!("tessera_actors_wakes_total").increment(turn.len() as u64);
            actix_rt::task::yield_now().await;
        }
        listed.clear();
    }
}

/// A live actor and what it shares with its senders, in one allocation: the bound on what
/// is queued for it, the relay's count of credit legs it holds, its inbox, its address and
/// its thread's wake list. The registry's entry for the account points here, so that a
/// delivery follows one pointer from the entry, not two (the counters and inbox lived in an
/// allocation of their own, a cache miss more per delivery).
///
/// actix bounds a mailbox per sender (every `Addr` clone may park one extra message), so
/// the bound is kept here instead: a place is reserved under the registry lock before a
/// delivery, and released by the actor when it takes the delivery from its inbox. The
/// same count lets an idle actor retire without racing a sender (it retires only when
/// nothing is reserved).
///
/// In declaration order (`repr(C)`): what every delivery reads or writes (the count, the
/// actor's queue length, the closed flag, the inbox) comes first, next to the `Arc`'s
/// counts, in the allocation's first 88 bytes (the compiler's order put the flag 128 bytes
/// in, behind the address, a cache line more per delivery: `Reserved::send` lost a quarter
/// of its samples in `holds`).
#[repr(C)]
pub(crate) struct Live {
    /// Deliveries reserved for the actor and not yet taken from its inbox.
    pub(crate) queued: AtomicUsize,
    /// Items waiting in the actor's own queue (published by the actor).
    pub(crate) pending_items: AtomicUsize,
    /// Set when the actor stopped: its inbox takes nothing more.
    closed: AtomicBool,
    inbox: Mutex<Inbox>,
    /// Credit legs the relay handed this actor that it has not yet taken into a commit
    /// (see [`crate::relay`]'s flow control).
    pub(crate) credits: AtomicUsize,
    /// The actor's address: set by the registry once the actor started, before any sender
    /// sees this. (The actor holds its `Live` too, and so its own address: it is stopped
    /// explicitly, never for want of addresses.)
    addr: OnceLock<Addr<AccountActor>>,
    /// The wake list of the actor's arbiter thread.
    wakes: Arc<WakeList>,
    /// The last tick period ([`Shared::tick_period_at`]) in which the actor sealed a
    /// commit, published by the actor at most once a period. Its housekeeper does not tick
    /// an actor that sealed in this period or the last one and has no expiring hold: it has
    /// nothing to net, expire or passivate (a tick then cost a message and a turn of the
    /// actor: about 1 % of the CPU of `bench engine` with 10,000 busy accounts).
    pub(crate) active_period: AtomicU64,
    /// When (wall-clock ms) the actor's earliest expiring hold expires, or `u64::MAX`:
    /// from then on it is ticked, busy or not. Published by the actor when a hold expiring
    /// sooner arrives, and exactly at load and at each tick: it may be earlier than the
    /// truth (that hold was captured or released since), never later.
    pub(crate) next_expiry_ms: AtomicU64,
}

/// Deliveries waiting for the actor, in the order they were made.
///
/// A delivery is a push under a lock, not an actix message: an actor with a commit in
/// flight takes everything that arrived when the commit completes, so under load the
/// thousands of deliveries a second to it cost no envelope, no mailbox and no wake-up of
/// its context each. Only a delivery to an actor that is not armed (no commit in flight,
/// nothing waiting) lists it for a [`Wake`](crate::account::Wake) from its thread's waker
/// task ([`WakeList`]). Bounded by the reservations ([`ACCOUNT_MAILBOX_CAPACITY`]).
#[derive(Default)]
pub(crate) struct Inbox {
    deliveries: Vec<Delivery>,
    /// Items (commands, credit legs) of `deliveries`.
    items: usize,
    /// The actor will look at the inbox without being woken (a commit of its in flight,
    /// or a wake sent and not yet handled).
    pub(crate) armed: bool,
}

impl Inbox {
    /// Takes every delivery waiting.
    pub(crate) fn take(&mut self) -> Vec<Delivery> {
        self.items = 0;
        std::mem::take(&mut self.deliveries)
    }

    /// Takes every delivery waiting into `spare` (which must be empty), and keeps the
    /// spare's buffer for the next ones: an actor that hands back its drained buffer spares
    /// its senders an allocation per delivery.
    pub(crate) fn take_into(&mut self, spare: &mut Vec<Delivery>) {
        assert!(spare.is_empty(), "a spare inbox buffer is drained");
        self.items = 0;
        std::mem::swap(&mut self.deliveries, spare);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }
}

impl Live {
    fn new(wakes: Arc<WakeList>, period: u64) -> Self {
        Live {
            active_period: AtomicU64::new(period),
            next_expiry_ms: AtomicU64::new(u64::MAX),
            queued: AtomicUsize::new(0),
            credits: AtomicUsize::new(0),
            pending_items: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            inbox: Mutex::new(Inbox::default()),
            addr: OnceLock::new(),
            wakes,
        }
    }

    fn addr(&self) -> &Addr<AccountActor> {
        self.addr
            .get()
            .expect("the registry sets the address before any sender sees it")
    }

    /// Whether the actor stopped (its inbox is closed).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the actor's housekeeper may skip it in tick period `period` at wall-clock
    /// `now_ms`: it sealed a commit in this period or the last one, and none of its holds
    /// is due to expire.
    pub(crate) fn busy_in(&self, period: u64, now_ms: u64) -> bool {
        self.next_expiry_ms.load(Ordering::Relaxed) > now_ms
            && self.active_period.load(Ordering::Relaxed).saturating_add(1) >= period
    }

    /// Sends the actor a housekeeping [`Tick`](crate::account::Tick); whether it still
    /// runs (a full mailbox is busy with wake-ups, and gets the next tick).
    pub(crate) fn tick(&self) -> bool {
        !matches!(
            self.addr().try_send(crate::account::Tick),
            Err(actix::prelude::SendError::Closed(_))
        )
    }

    pub(crate) fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Every change under this lock is a push, a take or a flag: a panic cannot leave
        // the inbox half-changed.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the inbox (the actor stopped) and gives back what was left in it, each of
    /// which no longer holds a reserved place.
    pub(crate) fn close(&self) -> Vec<Delivery> {
        let mut inbox = self.inbox();
        self.closed.store(true, Ordering::Release);
        let left = inbox.take();
        self.queued.fetch_sub(left.len(), Ordering::AcqRel);
        left
    }
}

/// One reserved place in an account actor's inbox.
pub(crate) struct Reserved {
    live: Arc<Live>,
}

impl Reserved {
    /// Credit legs this actor holds and has not yet taken into a commit.
    pub(crate) fn credits_held(&self) -> usize {
        self.live.credits.load(Ordering::Acquire)
    }

    /// Counts `legs` credit legs as held by the actor (before sending them).
    pub(crate) fn hand_credits(&self, legs: usize) {
        self.live.credits.fetch_add(legs, Ordering::AcqRel);
    }

    /// Gives the place back unused.
    pub(crate) fn release(self) {
        self.live.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Delivers into the reserved place. Gives the delivery back, `overloaded`, if the
    /// actor is gone or (client commands) already has [`CLIENT_ITEMS_MAX`] items waiting:
    /// the bound the actor applies when it takes them, applied before they queue (with
    /// its commit in flight the actor takes deliveries only when the commit completes).
    /// Credit legs are bounded by the relay's flow control instead.
    pub(crate) fn send(self, delivery: Delivery) -> Result<(), (Delivery, ErrorCode)> {
        let live = &self.live;
        let wake = {
            let mut inbox = live.inbox();
            let items = delivery.items();
            let full = matches!(delivery, Delivery::Execute { .. })
                && inbox.items + live.pending_items.load(Ordering::Acquire) + items
                    > CLIENT_ITEMS_MAX;
            if full || live.closed.load(Ordering::Acquire) {
                drop(inbox);
                live.queued.fetch_sub(1, Ordering::AcqRel);
                return Err((delivery, ErrorCode::Overloaded));
            }
            inbox.items += items;
            inbox.deliveries.push(delivery);
            !std::mem::replace(&mut inbox.armed, true)
        };
        if wake {
            self.live.wakes.push(Arc::clone(&self.live));
        }
        Ok(())
    }
}

/// An actor is woken through what it shares with senders: listing it costs a count on the
/// `Arc`, where a clone of its `Addr` allocated twice and counted a sender in its channel.
impl Waker for Arc<Live> {
    fn wake(&self) -> bool {
        self.addr().wake()
    }
}

/// Asks the CPU to start loading what a delivery touches of `live`: the `Arc`'s counts
/// (the 16 bytes before the data) through the end of the inbox (88 bytes as `Live` is
/// laid out now).
fn prefetch_live(live: &Arc<Live>) {
    const TOUCHED: usize = 16 + std::mem::offset_of!(Live, inbox) + size_of::<Mutex<Inbox>>();
    crate::account::prefetch_bytes(Arc::as_ptr(live).cast::<u8>().wrapping_sub(16), TOUCHED);
}

/// Accounts [`Shared::reserve_each`] reserves per acquisition of the registry lock: few
/// enough that their entries are still in cache when their deliveries follow, and that the
/// relay (on the actors' thread) never waits long behind a client batch's reservations.
const RESERVE_CHUNK: usize = 32;

/// Messages an account actor's mailbox holds: wake-ups (a backstop: an actor is sent one
/// when its inbox is disarmed, and disarming needs the actor to run in between) and
/// housekeeping ticks (one a tick period, skipped while the mailbox is full).
const WAKES_QUEUED_MAX: usize = 64;

/// What every actor of one ledger shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub config: LedgerConfig,
    pub space: Keyspace,
    pub stats: Arc<LedgerStats>,
    arbiters: Vec<ArbiterHandle>,
    /// Per arbiter: the actors to wake on its thread.
    wakes: Vec<Arc<WakeList>>,
    actors: Mutex<HashMap<AccountId, Arc<Live>>>,
    /// Per arbiter: actors started since its housekeeper last looked (taken every tick, so
    /// at most the actors started in one tick period).
    newcomers: Vec<Mutex<Vec<Arc<Live>>>>,
    /// Where tick periods are counted from (see [`Shared::tick_period_at`]).
    tick_origin: Instant,
    relay: OnceLock<Addr<OutboxRelay>>,
    rescan_outbox: AtomicBool,
    directory: Mutex<HashMap<AccountId, Known>>,
    /// Holds this ledger created, by id: routed without a read of their records.
    pub(crate) seen_holds: crate::seen_holds::SeenHolds,
    /// DC mode: the ownership table as last loaded, and where credit legs for other DCs go.
    ownership: RwLock<Arc<OwnershipTable>>,
    forwarder: OnceLock<Arc<dyn CreditForwarder>>,
    /// Frozen slots and batches in flight per slot (handover).
    pub(crate) gate: Gate,
    /// Makes rebalancing transfer ids of split accounts unique (time-seeded, so unique
    /// across restarts too).
    rebalance_nonce: std::sync::atomic::AtomicU64,
}

/// Sends credit legs whose payee another DC owns to that DC (DC mode). Best effort: a leg
/// not taken stays in the durable outbox and the payer DC's rescan sends it again.
pub trait CreditForwarder: Send + Sync + 'static {
    /// Hands `legs` (outbox key and value) to `dc`; false when they could not be sent.
    fn forward(&self, dc: &DcId, space: Keyspace, legs: Vec<KeyValue>) -> bool;
}

impl Shared {
    /// A fresh nonce for split-account rebalancing ids.
    pub(crate) fn next_rebalance_nonce(&self) -> u64 {
        self.rebalance_nonce
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn new(
        store: Arc<dyn Store>,
        config: LedgerConfig,
        arbiters: Vec<ArbiterHandle>,
    ) -> Self {
        assert!(!arbiters.is_empty(), "a ledger needs at least one arbiter");
        let wakes: Vec<Arc<WakeList>> = arbiters
            .iter()
            .map(|arbiter| {
                let list = Arc::new(WakeList::default());
                assert!(
                    arbiter.spawn(wake_actors(Arc::clone(&list))),
                    "the ledger's arbiters run"
                );
                list
            })
            .collect();
        Shared {
            wakes,
            store,
            space: config.keyspace,
            config,
            stats: Arc::new(LedgerStats::default()),
            newcomers: arbiters.iter().map(|_| Mutex::new(Vec::new())).collect(),
            tick_origin: Instant::now(),
            arbiters,
            actors: Mutex::new(HashMap::new()),
            relay: OnceLock::new(),
            // A new ledger first delivers whatever an earlier run left in the outbox.
            rescan_outbox: AtomicBool::new(true),
            directory: Mutex::new(HashMap::new()),
            seen_holds: Default::default(),
            ownership: RwLock::new(Arc::new(OwnershipTable::empty())),
            forwarder: OnceLock::new(),
            gate: Gate::default(),
            rebalance_nonce: std::sync::atomic::AtomicU64::new(cells::ownership::now_ms() << 20),
        }
    }

    /// The ownership table as last loaded (DC mode; empty otherwise).
    pub(crate) fn ownership(&self) -> Arc<OwnershipTable> {
        let table = self.ownership.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&table)
    }

    /// Installs a newer ownership table; older or equal versions are ignored.
    pub(crate) fn set_ownership(&self, table: Arc<OwnershipTable>) -> bool {
        let mut current = self.ownership.write().unwrap_or_else(|p| p.into_inner());
        if table.version <= current.version {
            return false;
        }
        *current = table;
        true
    }

    pub(crate) fn set_forwarder(&self, forwarder: Arc<dyn CreditForwarder>) {
        assert!(
            self.forwarder.set(forwarder).is_ok(),
            "forwarder is set once"
        );
    }

    pub(crate) fn forwarder(&self) -> Option<&Arc<dyn CreditForwarder>> {
        self.forwarder.get()
    }

    /// Adds to `found` the cached routings of those of `accounts` it does not hold yet, under
    /// one lock of the directory; returns the accounts whose spec is not cached (each once).
    pub(crate) fn cached_into<'a>(
        &self,
        accounts: impl Iterator<Item = &'a AccountId>,
        found: &mut Specs,
    ) -> Vec<AccountId> {
        let mut missing = Vec::new();
        match self.directory.lock() {
            Ok(directory) => {
                for account in accounts {
                    if found.contains_key(account) {
                        continue;
                    }
                    match directory.get(account) {
                        Some(known) => {
                            found.insert(account.clone(), Some(known.routing));
                        }
                        None => missing.push(account.clone()),
                    }
                }
            }
            Err(_) => missing.extend(accounts.filter(|a| !found.contains_key(*a)).cloned()),
        }
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
        }
        missing
    }

    /// The cached spec of `account`, if the directory holds it.
    pub(crate) fn cached_spec(&self, account: &AccountId) -> Option<Arc<AccountSpec>> {
        let directory = self.directory.lock().ok()?;
        directory.get(account).map(|known| Arc::clone(&known.spec))
    }

    /// The cached routing of `account`, if the directory holds its spec.
    pub(crate) fn cached_routing(&self, account: &AccountId) -> Option<Routing> {
        let directory = self.directory.lock().ok()?;
        directory.get(account).map(|known| known.routing)
    }

    pub(crate) fn set_relay(&self, relay: Addr<OutboxRelay>) {
        assert!(self.relay.set(relay).is_ok(), "relay is set once");
    }

    pub(crate) fn relay(&self) -> &Addr<OutboxRelay> {
        self.relay.get().expect("relay is set at start")
    }

    /// Asks the relay to rescan the durable outbox (some credit legs left memory).
    pub(crate) fn request_outbox_rescan(&self) {
        self.rescan_outbox.store(true, Ordering::Release);
    }

    /// Takes the rescan request, if any.
    pub(crate) fn take_outbox_rescan(&self) -> bool {
        self.rescan_outbox.swap(false, Ordering::AcqRel)
    }

    /// Reserves a place in each entry's account inbox (starting actors as needed; a full
    /// inbox, or too many live actors, gives `overloaded`) and hands it to `then` with the
    /// entry, [`RESERVE_CHUNK`] accounts per acquisition of the registry lock.
    ///
    /// Each place is used right after its reservation, not after those of the whole batch:
    /// the actor's entry and its `Live` (counters, inbox) are then still in this core's
    /// cache. Reserving a batch's thousands of places first and delivering afterwards missed
    /// the caches twice per delivery (the inbox's lock and buffer, the entry's count).
    pub(crate) fn reserve_each<K: std::borrow::Borrow<AccountId>, T>(
        self: &Arc<Self>,
        entries: impl IntoIterator<Item = (K, T)>,
        mut then: impl FnMut(K, T, Result<Reserved, ErrorCode>),
    ) {
        let mut entries = entries.into_iter().peekable();
        let mut chunk = Vec::with_capacity(RESERVE_CHUNK);
        let mut reserved = Vec::with_capacity(RESERVE_CHUNK);
        while entries.peek().is_some() {
            chunk.extend(entries.by_ref().take(RESERVE_CHUNK));
            match self.actors.lock() {
                Ok(mut actors) => {
                    // First ask for every live actor's lines of the chunk, then reserve:
                    // a reservation's atomic writes let no later load start before them,
                    // so reserving as each entry was found waited out one miss on each
                    // actor's `Live` after the other.
                    for (account, _) in &chunk {
                        if let Some(live) = actors.get(account.borrow()) {
                            prefetch_live(live);
                        }
                    }
                    for (account, value) in chunk.drain(..) {
                        let place = self.reserve_locked(&mut actors, account.borrow());
                        reserved.push((account, value, place));
                    }
                }
                Err(_) => {
                    for (account, value) in chunk.drain(..).chain(entries.by_ref()) {
                        reserved.push((account, value, Err(ErrorCode::Internal)));
                    }
                }
            }
            for (account, value, place) in reserved.drain(..) {
                then(account, value, place);
            }
        }
    }

    fn reserve_locked(
        self: &Arc<Self>,
        actors: &mut HashMap<AccountId, Arc<Live>>,
        account: &AccountId,
    ) -> Result<Reserved, ErrorCode> {
        let live = match actors.get(account) {
            Some(live) if !live.closed.load(Ordering::Acquire) => Arc::clone(live),
            _ => {
                if actors.len() >= self.config.active_accounts_max {
                    metrics::counter!("tessera_actors_activation_refused_total").increment(1);
                    return Err(ErrorCode::Overloaded);
                }
                let live = self.start(account);
                actors.insert(account.clone(), Arc::clone(&live));
                metrics::gauge!("tessera_actors_active_accounts").set(actors.len() as f64);
                live
            }
        };
        if live.queued.load(Ordering::Acquire) >= ACCOUNT_MAILBOX_CAPACITY {
            metrics::counter!("tessera_actors_mailbox_full_total").increment(1);
            return Err(ErrorCode::Overloaded);
        }
        live.queued.fetch_add(1, Ordering::AcqRel);
        Ok(Reserved { live })
    }

    fn start(self: &Arc<Self>, account: &AccountId) -> Arc<Live> {
        let index = self.arbiter_index(account);
        let arbiter = &self.arbiters[index];
        let shared = Arc::clone(self);
        let id = account.clone();
        let live = Arc::new(Live::new(
            Arc::clone(&self.wakes[index]),
            self.tick_period_at(Instant::now()),
        ));
        let actor_live = Arc::clone(&live);
        let addr = AccountActor::start_in_arbiter(arbiter, move |ctx| {
            // Only wake-ups and ticks travel through the mailbox (deliveries go to the
            // inbox, bounded by the reservation count above): a few at a time at most.
            ctx.set_mailbox_capacity(WAKES_QUEUED_MAX);
            AccountActor::new(id, shared, actor_live)
        });
        assert!(live.addr.set(addr).is_ok(), "set once, here");
        // After the address is set: the housekeeper sends to it.
        if let Ok(mut newcomers) = self.newcomers[index].lock() {
            newcomers.push(Arc::clone(&live));
        }
        live
    }

    /// The tick period `at` falls in: periods of [`LedgerConfig::tick`] counted from the
    /// ledger's start.
    pub(crate) fn tick_period_at(&self, at: Instant) -> u64 {
        let tick = self.config.tick.as_micros().max(1);
        let since = at.saturating_duration_since(self.tick_origin).as_micros();
        u64::try_from(since / tick).unwrap_or(u64::MAX)
    }

    /// The arbiters account actors run on.
    pub(crate) fn arbiters(&self) -> &[ArbiterHandle] {
        &self.arbiters
    }

    /// Takes the actors started on arbiter `arbiter` since the last call (for its
    /// housekeeper, which keeps its own list: the registry's lock is not held to tick).
    pub(crate) fn take_newcomers(&self, arbiter: usize) -> Vec<Arc<Live>> {
        match self.newcomers[arbiter].lock() {
            Ok(mut newcomers) => std::mem::take(&mut *newcomers),
            Err(_) => Vec::new(),
        }
    }

    /// Removes `account`'s entry if it still points at `addr` and, when `only_if_idle`,
    /// nothing is reserved in its mailbox. Returns whether the entry is gone.
    pub(crate) fn retire(
        &self,
        account: &AccountId,
        addr: &Addr<AccountActor>,
        only_if_idle: bool,
    ) -> bool {
        let Ok(mut actors) = self.actors.lock() else {
            return false;
        };
        let retired = match actors.get(account) {
            Some(live) if live.addr() == addr => {
                if only_if_idle && live.queued.load(Ordering::Acquire) > 0 {
                    false
                } else {
                    actors.remove(account);
                    true
                }
            }
            _ => true,
        };
        metrics::gauge!("tessera_actors_active_accounts").set(actors.len() as f64);
        retired
    }

    /// Number of live account actors.
    pub fn active_accounts(&self) -> usize {
        self.actors.lock().map(|actors| actors.len()).unwrap_or(0)
    }

    fn arbiter_index(&self, account: &AccountId) -> usize {
        let hash = xxhash_rust::xxh3::xxh3_64(account.as_str().as_bytes());
        (hash % self.arbiters.len() as u64) as usize
    }

    /// Routings of `accounts` (`None`: no such account), from the cache or the store.
    pub(crate) async fn specs(&self, accounts: Vec<AccountId>) -> Result<Specs, ErrorCode> {
        let mut found = Specs::with_capacity(accounts.len());
        let missing = self.cached_into(accounts.iter(), &mut found);
        self.read_specs(missing, &mut found).await?;
        Ok(found)
    }

    /// The specs of those of `accounts` that exist, from the cache (under one lock) or the
    /// store (in one read): for the few places that need more than a [`Routing`].
    pub(crate) async fn full_specs(
        &self,
        accounts: Vec<AccountId>,
    ) -> Result<HashMap<AccountId, Arc<AccountSpec>>, ErrorCode> {
        let mut found = HashMap::with_capacity(accounts.len());
        let mut missing = Vec::new();
        match self.directory.lock() {
            Ok(directory) => {
                for account in accounts {
                    match directory.get(&account) {
                        Some(known) => {
                            found.insert(account, Arc::clone(&known.spec));
                        }
                        None => missing.push(account),
                    }
                }
            }
            Err(_) => missing = accounts,
        }
        for (account, spec) in self.read_records(missing).await? {
            if let Some(spec) = spec {
                found.insert(account, spec);
            }
        }
        Ok(found)
    }

    /// The spec of `account` (`None`: no such account), from the cache or the store.
    pub(crate) async fn spec(
        &self,
        account: &AccountId,
    ) -> Result<Option<Arc<AccountSpec>>, ErrorCode> {
        if let Some(spec) = self.cached_spec(account) {
            return Ok(Some(spec));
        }
        let read = self.read_records(vec![account.clone()]).await?;
        Ok(read.into_iter().next().and_then(|(_, spec)| spec))
    }

    /// Reads the specs of `missing` from the store into `found` (`None`: no such account)
    /// and caches those that exist.
    pub(crate) async fn read_specs(
        &self,
        missing: Vec<AccountId>,
        found: &mut Specs,
    ) -> Result<(), ErrorCode> {
        for (account, spec) in self.read_records(missing).await? {
            found.insert(account, spec.map(|spec| Routing::of(&spec)));
        }
        Ok(())
    }

    /// Reads the specs of `accounts` from the store (`None`: no such account), and caches
    /// those that exist.
    async fn read_records(
        &self,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<(AccountId, Option<Arc<AccountSpec>>)>, ErrorCode> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let keys = accounts.iter().map(|a| self.space.account(a)).collect();
        let values = self
            .store
            .get_many(keys)
            .await
            .map_err(|_| ErrorCode::Unavailable)?;
        let mut read = Vec::with_capacity(accounts.len());
        for (account, value) in accounts.into_iter().zip(values) {
            let spec = match value {
                Some(bytes) => {
                    let record: AccountRecord =
                        records::decode("account", &bytes).map_err(|_| ErrorCode::Internal)?;
                    let spec = Arc::new(record.spec);
                    self.remember(Arc::clone(&spec));
                    Some(spec)
                }
                None => None,
            };
            read.push((account, spec));
        }
        Ok(read)
    }

    /// Caches an account spec (specs never change once created).
    pub(crate) fn remember(&self, spec: Arc<AccountSpec>) {
        let known = Known {
            routing: Routing::of(&spec),
            spec,
        };
        if let Ok(mut directory) = self.directory.lock() {
            if directory.len() >= DIRECTORY_ACCOUNTS_MAX {
                directory.clear();
            }
            directory.insert(known.spec.id.clone(), known);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its wake-ups.
    struct Counted(Arc<AtomicUsize>);

    impl Waker for Counted {
        fn wake(&self) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    /// The housekeeper skips an actor that sealed in this tick period or the last one,
    /// unless one of its holds is due to expire; a quiet actor is ticked.
    #[test]
    fn an_actor_busy_this_period_or_the_last_is_skipped_unless_a_hold_is_due() {
        let live = Live::new(Arc::new(WakeList::default()), 7);
        let now_ms = 1_000_000;
        assert!(live.busy_in(7, now_ms), "started this period");
        assert!(live.busy_in(8, now_ms), "active in the last period");
        assert!(!live.busy_in(9, now_ms), "quiet for a whole period");
        live.next_expiry_ms.store(now_ms + 1, Ordering::Relaxed);
        assert!(live.busy_in(8, now_ms), "its hold is not due yet");
        live.next_expiry_ms.store(now_ms, Ordering::Relaxed);
        assert!(!live.busy_in(8, now_ms), "its hold is due");
        live.next_expiry_ms.store(u64::MAX, Ordering::Relaxed);
        live.active_period.store(u64::MAX, Ordering::Relaxed);
        assert!(
            live.busy_in(u64::MAX, now_ms),
            "no overflow at the end of time"
        );
    }

    /// Every listed actor is woken once, a turn at a time: a task of the thread that is
    /// ready meanwhile runs between two turns, not after all of them.
    #[test]
    fn listed_actors_are_woken_a_turn_at_a_time() {
        actix_rt::System::new().block_on(async {
            let woken = Arc::new(AtomicUsize::new(0));
            let list = Arc::new(WakeList::<Counted>::default());
            actix_rt::spawn(wake_actors(Arc::clone(&list)));
            // The waker task waits for its first listing.
            actix_rt::task::yield_now().await;
            let listed = 3 * WAKES_PER_TURN + 1;
            for _ in 0..listed {
                list.push(Counted(Arc::clone(&woken)));
            }
            let seen = Arc::new(AtomicUsize::new(usize::MAX));
            let probe = {
                let (woken, seen) = (Arc::clone(&woken), Arc::clone(&seen));
                actix_rt::spawn(async move {
                    seen.store(woken.load(Ordering::SeqCst), Ordering::SeqCst)
                })
            };
            probe.await.expect("probe ran");
            for _ in 0..1_000 {
                if woken.load(Ordering::SeqCst) == listed {
                    break;
                }
                actix_rt::task::yield_now().await;
            }
            assert_eq!(woken.load(Ordering::SeqCst), listed, "each woken once");
            let seen = seen.load(Ordering::SeqCst);
            assert!(
                (WAKES_PER_TURN..listed).contains(&seen),
                "the probe ran between turns (it saw {seen} woken)"
            );
            assert!(list.actors.lock().expect("list").is_empty());
        });
    }

    /// `reserve_each` answers every entry once, in order, across the registry lock's
    /// chunks; past the cap on live actors the rest are refused `overloaded`, and a refused
    /// or released place leaves nothing reserved (fails if a chunk boundary drops, repeats
    /// or reorders an entry).
    #[test]
    fn reserve_each_answers_every_entry_once_in_order_across_chunks() {
        actix_rt::System::new().block_on(async {
            let dir = tempfile::tempdir().expect("dir");
            let options = cells::store::embedded::EmbeddedOptions::default();
            let store: Arc<dyn Store> =
                cells::store::embedded::EmbeddedStore::open(dir.path(), options).expect("open");
            let cap = 2 * RESERVE_CHUNK + 5;
            let config = LedgerConfig {
                // The actors start on this thread: none runs (or retires) during the call.
                arbiters: 0,
                active_accounts_max: cap,
                ..LedgerConfig::default()
            };
            let shared = Arc::new(Shared::new(store, config, vec![actix::Arbiter::current()]));
            let accounts: Vec<AccountId> = (0..3 * RESERVE_CHUNK + 1)
                .map(|n| AccountId::new(&format!("a-{n}")).expect("valid id"))
                .collect();
            let mut seen = Vec::new();
            let entries = accounts.iter().enumerate().map(|(n, account)| (account, n));
            shared.reserve_each(entries, |account, n, place| {
                assert_eq!(account, &accounts[n], "the entry comes back with its value");
                match place {
                    Ok(place) => {
                        place.release();
                        seen.push((n, true));
                    }
                    Err(code) => {
                        assert_eq!(code, ErrorCode::Overloaded);
                        seen.push((n, false));
                    }
                }
            });
            let expected: Vec<(usize, bool)> = (0..accounts.len()).map(|n| (n, n < cap)).collect();
            assert_eq!(seen, expected);
            assert_eq!(shared.active_accounts(), cap);
            let actors = shared.actors.lock().expect("registry");
            assert!(actors
                .values()
                .all(|live| live.queued.load(Ordering::Acquire) == 0));
        });
    }
}
