//! The account actor: one per active account.
//!
//! Owns the account's in-memory state (balance, active holds, next posting number), checks
//! every command against it (idempotency, currency, INV-5 no overdraft), and commits what
//! accumulated while its previous commit was in flight (or while it waited for a place in
//! its thread's commit window, see [`window`]) as one store transaction: postings,
//! idempotency records, hold records, outbox entries and the balance record, fenced by the
//! slot epoch. A commit takes at most [`crate::LedgerConfig::commit_client_items`] client
//! commands; a larger job is split in order and each part answered when its commit is
//! durable. Callers hear back only after the commit is durable (INV-2).
//!
//! Must never: let two commits of its own overlap (state would fork), update its state
//! before the store says committed, or answer a caller before that. On an unknown commit
//! outcome it stops; the next activation reloads from the store and callers retry with the
//! same ids.

mod completions;
mod draft;
mod load;
mod window;

use std::collections::{BTreeSet, VecDeque};

use foldhash::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use cells::ids::{AccountId, HoldId};
use cells::ledger::{
    AccountView, CaptureRequest, CommandResult, ErrorCode, HoldRequest, TransferRequest,
    BATCH_COMMANDS_MAX,
};
use cells::ownership::Fence;
use cells::records::{AccountSpec, HoldRecord, OutboxRecord};
use cells::slot::Slot;
use cells::store::CommitError;

use crate::answers::Reply;
use crate::registry::{Live, Shared};
use crate::relay::Deliver;
use draft::{Delta, Draft, Sealed};
pub use load::LoadError;

thread_local! {
    /// Credit legs committed in this turn of the thread's event loop, not yet handed to the
    /// relay (bounded by what one turn commits: each actor has one commit in flight).
    static PENDING_CREDITS: std::cell::RefCell<Vec<CreditLeg>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Expired holds one tick releases (the rest wait for the next tick).
const EXPIRIES_PER_TICK_MAX: usize = 1_024;
const _: () = assert!(EXPIRIES_PER_TICK_MAX <= BATCH_COMMANDS_MAX);

/// Client items an account actor takes waiting for a commit (in its inbox and its queue):
/// beyond it a delivery of client commands is answered `overloaded`.
pub(crate) const CLIENT_ITEMS_MAX: usize = 4 * BATCH_COMMANDS_MAX;

/// A command routed to the account that it debits or reads.
#[derive(Debug, Clone)]
pub enum AccountCommand {
    Transfer(TransferRequest),
    Hold(HoldRequest),
    /// Release a hold; the record is what the router read (its state if no longer active),
    /// or `None` when it routed by a hold it remembered creating: if the hold is no longer
    /// active the actor then answers `hold_not_active`, and the router runs the command
    /// again with the record.
    Release(HoldId, Option<Box<HoldRecord>>),
    Capture(CaptureRequest, Option<Box<HoldRecord>>),
    Lookup,
}

/// A credit leg to apply: the outbox entry's key and value, and its decoded record.
#[derive(Debug)]
pub struct CreditLeg {
    /// The outbox entry's key, then its value, in one allocation: the payee reads both (its
    /// precondition names the value), long after the payer wrote them, so they arrive in its
    /// cache together and cost one allocation and one free instead of two. Taken from and
    /// given back to the thread's [`LegPool`].
    entry: Vec<u8>,
    key_len: usize,
    /// Boxed: a leg is moved several times between the payer's commit and the payee's
    /// (the relay groups legs, the payee queues them as items), and it sets the size of
    /// every item, client commands' included. Given back to the thread's pool of leg
    /// allocations (`LegPool`) when the leg is dropped (hence `ManuallyDrop`: the drop takes
    /// it out).
    pub record: std::mem::ManuallyDrop<Box<OutboxRecord>>,
    /// Found by an outbox rescan: it may already be applied, so the payee checks that
    /// the entry still exists before drafting it (a failed precondition would fail the
    /// whole commit it is part of).
    pub verify: bool,
    /// Made by a payer's commit in this process and handed to the relay once: a leg
    /// delivered exactly once, so two fresh legs never repeat each other (a rescan's or a
    /// peer's leg may repeat one; see [`draft::Draft::build`]).
    fresh: bool,
}

/// Most allocations of each kind a thread's [`LegPool`] keeps: a burst of legs (a payee's
/// commit drops its legs together, a payer's draft makes its own together), about 60 kB.
const LEG_POOL_MAX: usize = 256;

/// Room of the largest entry buffer the pool keeps (an outbox key and value take about 150
/// bytes; a larger buffer is freed, so the pool holds at most 256 × 512 bytes of entries).
const LEG_POOL_ENTRY_BYTES_MAX: usize = 512;

/// The allocations of the credit legs this thread dropped last, for the next legs it makes.
///
/// Why: a leg's two blocks freshly handed out by the allocator were cold (mimalloc hands out
/// a page's blocks freed long before, so reading the next free block missed the cache:
/// `_mi_page_malloc` was 4 % of the actor thread in `bench engine --scenario holds`, nearly
/// all of it that one load). The blocks of the legs just dropped are still in the cache.
/// A record kept here still holds its last leg's values; the next leg overwrites them.
#[derive(Default)]
struct LegPool {
    entries: Vec<Vec<u8>>,
    /// The boxes themselves are what is kept (a leg holds its record boxed).
    #[allow(clippy::vec_box)]
    records: Vec<Box<OutboxRecord>>,
}

thread_local! {
    static LEG_POOL: std::cell::RefCell<LegPool> = std::cell::RefCell::default();
}

/// Runs `f` on this thread's pool; `None` (and `f` not run) once the thread is tearing its
/// pool down, or while the pool is in use.
fn with_leg_pool<R>(f: impl FnOnce(&mut LegPool) -> R) -> Option<R> {
    LEG_POOL
        .try_with(|pool| pool.try_borrow_mut().ok().map(|mut pool| f(&mut pool)))
        .ok()
        .flatten()
}

impl CreditLeg {
    pub(crate) fn new(key: &[u8], value: &[u8], record: OutboxRecord, verify: bool) -> Self {
        // A thread ending (its pool gone) makes its legs in fresh allocations.
        let (entry, boxed) =
            with_leg_pool(|pool| (pool.entries.pop(), pool.records.pop())).unwrap_or((None, None));
        let mut entry = entry.unwrap_or_default();
        entry.clear();
        entry.reserve_exact(key.len() + value.len());
        entry.extend_from_slice(key);
        entry.extend_from_slice(value);
        let record = match boxed {
            Some(mut boxed) => {
                *boxed = record;
                boxed
            }
            None => Box::new(record),
        };
        CreditLeg {
            entry,
            key_len: key.len(),
            record: std::mem::ManuallyDrop::new(record),
            verify,
            fresh: false,
        }
    }

    /// A leg written by a payer's commit in this process: delivered exactly once.
    pub(crate) fn fresh(key: &[u8], value: &[u8], record: OutboxRecord) -> Self {
        let mut leg = CreditLeg::new(key, value, record, false);
        leg.fresh = true;
        leg
    }

    /// Whether the leg was made by a payer's commit in this process (see
    /// [`CreditLeg::fresh`]).
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Asks the CPU to start loading the leg's record and entry (its item holds only
    /// pointers to them): a payee's draft reads both, written long before by the payer.
    pub(crate) fn prefetch(&self) {
        self.prefetch_record();
        prefetch_bytes(self.entry.as_ptr(), self.entry.len());
    }

    /// Asks the CPU to start loading the leg's record (the relay reads its payee).
    pub(crate) fn prefetch_record(&self) {
        prefetch_bytes(
            (&**self.record as *const OutboxRecord).cast(),
            std::mem::size_of::<OutboxRecord>(),
        );
    }

    /// The outbox entry's key.
    pub fn key(&self) -> &[u8] {
        &self.entry[..self.key_len]
    }

    /// The outbox entry's value (the encoded `record`).
    pub fn value(&self) -> &[u8] {
        &self.entry[self.key_len..]
    }
}

impl Drop for CreditLeg {
    fn drop(&mut self) {
        // SAFETY: `record` is taken once, here, and the leg is not used after its drop.
        let record = unsafe { std::mem::ManuallyDrop::take(&mut self.record) };
        let entry = std::mem::take(&mut self.entry);
        // A thread ending drops its pool before its last legs: those are freed as usual.
        with_leg_pool(|pool| {
            if pool.records.len() < LEG_POOL_MAX {
                pool.records.push(record);
            }
            if pool.entries.len() < LEG_POOL_MAX && entry.capacity() <= LEG_POOL_ENTRY_BYTES_MAX {
                pool.entries.push(entry);
            }
        });
    }
}

/// A copy is never fresh: only the leg its payer's commit made is delivered exactly once.
impl Clone for CreditLeg {
    fn clone(&self) -> Self {
        CreditLeg {
            entry: self.entry.clone(),
            key_len: self.key_len,
            record: self.record.clone(),
            verify: self.verify,
            fresh: false,
        }
    }
}

/// What senders put in an account actor's inbox (see [`crate::registry::Inbox`]).
pub(crate) enum Delivery {
    /// The commands of a client batch for this account, as items (each with its index in
    /// the batch); the reply is written once they are durable.
    Execute { items: Vec<Item>, reply: Reply },
    /// Credit legs from the outbox (sent by the relay).
    Credits(Vec<CreditLeg>),
}

impl Delivery {
    pub(crate) fn items(&self) -> usize {
        match self {
            Delivery::Execute { items, .. } => items.len(),
            Delivery::Credits(legs) => legs.len(),
        }
    }
}

/// Tells an account actor whose inbox was disarmed that deliveries wait in it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Wake;

/// How an account actor is woken: by its thread's commit window when it grants the actor a
/// place, and by its thread's waker task when a delivery found it idle
/// ([`crate::registry::WakeList`]).
pub(crate) trait Waker {
    /// Sends a [`Wake`]; whether the actor will run (false: it stopped).
    fn wake(&self) -> bool;
}

impl Waker for Addr<AccountActor> {
    fn wake(&self) -> bool {
        match self.try_send(Wake) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                // Its mailbox holds wake-ups and housekeeping ticks already, any of which
                // makes it pump: it finds its grant and its deliveries.
                metrics::counter!("tessera_actors_wake_failed_total").increment(1);
                true
            }
            Err(SendError::Closed(_)) => false,
        }
    }
}

/// Periodic housekeeping (hold expiry, netting, passivation), sent by its arbiter's
/// [`Housekeeper`] every [`crate::LedgerConfig::tick`].
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Tick;

/// An active hold, as the actor keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActiveHold {
    pub record: HoldRecord,
}

/// The committed state of a loaded account.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub spec: Arc<AccountSpec>,
    /// `spec`'s encoding, made once: every commit's balance record starts with it.
    pub spec_bytes: Arc<[u8]>,
    pub slot: Slot,
    /// The ownership records this actor loaded under; every commit requires them.
    pub fence: Arc<Fence>,
    /// Exact balance: the sum of every posting.
    pub balance: i128,
    /// Balance as stored in the account record, and the postings it covers.
    pub record_balance: i128,
    pub record_through_seq: u64,
    pub next_seq: u64,
    pub holds: HashMap<HoldId, ActiveHold>,
    /// The active holds that expire, ordered by expiry (kept in step with `holds`).
    pub expiries: BTreeSet<(u64, HoldId)>,
    pub frozen: i128,
}

impl Loaded {
    /// Builds the expiry index of `holds`.
    pub fn index_expiries(holds: &HashMap<HoldId, ActiveHold>) -> BTreeSet<(u64, HoldId)> {
        holds
            .iter()
            .filter_map(|(id, hold)| hold.record.expires_at_ms.map(|at| (at, id.clone())))
            .collect()
    }

    /// Adds an active hold (and its expiry).
    pub fn insert_hold(&mut self, id: HoldId, hold: ActiveHold) {
        if let Some(at) = hold.record.expires_at_ms {
            self.expiries.insert((at, id.clone()));
        }
        self.holds.insert(id, hold);
    }

    /// Removes an active hold (and its expiry).
    pub fn remove_hold(&mut self, id: &HoldId) {
        if let Some(hold) = self.holds.remove(id) {
            if let Some(at) = hold.record.expires_at_ms {
                self.expiries.remove(&(at, id.clone()));
            }
        }
    }

    /// Up to `max` active holds whose expiry is at or before `now_ms`, soonest first.
    pub fn due_holds(&self, now_ms: u64, max: usize) -> Vec<HoldId> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub fn view(&self) -> AccountView {
        AccountView {
            spec: (*self.spec).clone(),
            balance: self.balance,
            frozen: self.frozen,
            available: self.balance - self.frozen,
        }
    }
}

/// Work waiting for a commit.
pub(crate) enum Work {
    Client(AccountCommand),
    Credit(CreditLeg),
    Expire(HoldId),
    Net,
}

pub(crate) struct Item {
    pub index: usize,
    pub work: Work,
    /// Decided before any commit (bad input, or resolved as a duplicate).
    pub settled: Option<CommandResult>,
}

impl Item {
    /// Asks the CPU to start loading every cache line of the item (see
    /// [`draft::Draft::build`]).
    pub(crate) fn prefetch(&self) {
        prefetch_bytes((self as *const Item).cast(), std::mem::size_of::<Item>());
    }

    /// Asks the CPU to start loading the lines of the first [`ITEMS_PREFETCHED_MAX`] of
    /// `items` (a list about to be dropped: see [`each_prefetching_ahead`]).
    pub(crate) fn prefetch_first(items: &[Item]) {
        let items = &items[..items.len().min(ITEMS_PREFETCHED_MAX)];
        prefetch_bytes(items.as_ptr().cast(), std::mem::size_of_val(items));
    }
}

/// Items of one list [`Item::prefetch_first`] asks for at most (most lists an actor
/// answers hold one to four).
const ITEMS_PREFETCHED_MAX: usize = 4;

/// Consumes `values` in order, each by `each`, having called `prefetch` on the value
/// `ahead` places further on first (and on the first `ahead` before starting): for values
/// whose memory was written long enough ago to have left the cache, and which lie apart,
/// so that the loads overlap instead of waiting for one miss after another.
pub(crate) fn each_prefetching_ahead<T>(
    values: Vec<T>,
    ahead: usize,
    prefetch: impl Fn(&T),
    mut each: impl FnMut(T),
) {
    assert!(ahead > 0, "prefetch at least one value ahead");
    let mut values = values.into_iter();
    for value in values.as_slice().iter().take(ahead) {
        prefetch(value);
    }
    while let Some(value) = values.next() {
        if let Some(later) = values.as_slice().get(ahead - 1) {
            prefetch(later);
        }
        each(value);
    }
}

/// Asks the CPU to start loading every cache line of the `len` bytes at `start`.
pub(crate) fn prefetch_bytes(start: *const u8, len: usize) {
    const LINE: usize = 64;
    let lines = (start as usize % LINE + len).div_ceil(LINE);
    for line in 0..lines {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing architecturally and cannot fault, even for an
        // address past the bytes (the last line may start past their end).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                start.wrapping_add(line * LINE).cast(),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, line);
    }
}

pub(crate) enum Origin {
    Client(Reply),
    Internal,
}

pub(crate) struct Job {
    pub origin: Origin,
    pub items: Vec<Item>,
}

impl Job {
    /// Splits off the job's first `count` items into a job of their own (answered on its
    /// own reply, a share of this job's).
    fn split_front(&mut self, count: usize) -> Job {
        debug_assert!(count > 0 && count < self.items.len());
        let rest = self.items.split_off(count);
        let front = std::mem::replace(&mut self.items, rest);
        let origin = match &self.origin {
            Origin::Client(reply) => Origin::Client(reply.share()),
            Origin::Internal => Origin::Internal,
        };
        Job {
            origin,
            items: front,
        }
    }

    /// Credit legs (from the relay) among the job's items.
    fn credit_legs(&self) -> usize {
        match self.origin {
            Origin::Client(_) => 0,
            Origin::Internal => self
                .items
                .iter()
                .filter(|item| matches!(item.work, Work::Credit(_)))
                .count(),
        }
    }

    /// Asks for the lines of the first items of a job whose items are dropped here when it
    /// is answered (an internal one's: credit legs), written long enough ago to have left
    /// the cache. A client job's go back to its caller unread.
    fn prefetch_dropped(&self) {
        if let Origin::Internal = self.origin {
            Item::prefetch_first(&self.items);
        }
    }

    /// Answers the job's items: `results` are `(index, result)` pairs, in item order.
    fn answer(self, results: impl IntoIterator<Item = (usize, CommandResult)>) {
        if let Origin::Client(reply) = self.origin {
            // The caller may have given up; its answers are then kept for nobody.
            reply.answer(self.items, results);
        }
    }

    fn fail(self, code: ErrorCode) {
        let results: Vec<(usize, CommandResult)> = self
            .items
            .iter()
            .map(|item| (item.index, Err(code)))
            .collect();
        self.answer(results);
    }
}

/// Gives each job its share of a commit's results (one per item, in job order, with the
/// item's index: see [`draft::Delta::results`]). Every
/// job's share is consumed whether or not anyone waits for it: an internal job (credit
/// legs, expiries) has no reply, and its results must not fall to the job after it.
fn answer_jobs(jobs: Vec<Job>, results: Vec<(usize, CommandResult)>) {
    debug_assert_eq!(
        results.len(),
        jobs.iter().map(|job| job.items.len()).sum::<usize>()
    );
    let mut results = results.into_iter();
    each_prefetching_ahead(jobs, JOBS_AHEAD, Job::prefetch_dropped, |job| {
        let mut share = results.by_ref().take(job.items.len());
        job.answer(&mut share);
        share.for_each(drop);
    });
}

/// Jobs whose items [`answer_jobs`] asks for ahead of their drop.
const JOBS_AHEAD: usize = 4;

/// Takes the jobs of the next commit off the front of `pending`, in order: at most
/// [`BATCH_COMMANDS_MAX`] items, of which at most `client_max` client commands. A job that
/// does not fit is split, its rest left at the front. Gives the jobs and their items.
fn take_for_commit(pending: &mut VecDeque<Job>, client_max: usize) -> (Vec<Job>, usize) {
    // `Ledger::start` checked the setting.
    debug_assert!((1..=BATCH_COMMANDS_MAX).contains(&client_max));
    // Sized once (the pending queue is bounded): grown by doubling it was moved repeatedly.
    let mut jobs = Vec::with_capacity(pending.len());
    let mut items = 0;
    let mut client_items = 0;
    while let Some(job) = pending.front_mut() {
        assert!(
            job.items.len() <= BATCH_COMMANDS_MAX,
            "senders bound every job"
        );
        let client = matches!(job.origin, Origin::Client(_));
        let room = if client {
            (BATCH_COMMANDS_MAX - items).min(client_max - client_items)
        } else {
            BATCH_COMMANDS_MAX - items
        };
        let take = job.items.len().min(room);
        if take == 0 {
            break;
        }
        items += take;
        if client {
            client_items += take;
        }
        if take < job.items.len() {
            // The rest waits for the next commit, answered on a share of the reply.
            metrics::counter!("tessera_actors_jobs_split_total").increment(1);
            jobs.push(job.split_front(take));
            break;
        }
        jobs.extend(pending.pop_front());
    }
    (jobs, items)
}

/// Snapshot of an account actor for metrics and the console.
#[derive(Debug, Clone)]
pub struct AccountSnapshot {
    pub account: AccountId,
    pub view: Option<AccountView>,
    pub pending_jobs: usize,
    pub commit_in_flight: bool,
}

/// The actor. See the module docs.
pub struct AccountActor {
    id: AccountId,
    shared: Arc<Shared>,
    state: Option<Loaded>,
    load_error: Option<ErrorCode>,
    pending: VecDeque<Job>,
    pending_items: usize,
    in_flight: bool,
    last_active: Instant,
    /// Shared with senders (see `registry`): the inbox and its places reserved (released
    /// here as deliveries are taken from it), the items waiting here, and credit legs the
    /// relay counted as handed to this actor and not yet taken into a commit (raised by the
    /// relay before it sends, lowered here when a job holding them leaves `pending`, into a
    /// draft or refused, and when a rescanned leg turns out to be applied already).
    live: Arc<Live>,
    /// An empty buffer that `pump` swaps into the inbox for senders to fill (so a delivery
    /// costs them no allocation), taking the inbox's filled one.
    spare_deliveries: Vec<Delivery>,
    /// Its place in the queue for the thread's commit window, while it waits for one.
    ticket: Option<window::Ticket>,
    /// The tick period and earliest hold expiry last published in `live` (written there
    /// only when they change as the housekeeper needs to know: at most once a period, and
    /// when a hold expiring sooner arrives; not once a commit).
    published_period: u64,
    published_expiry_ms: u64,
}

/// Largest spare inbox buffer an actor keeps (in deliveries).
const SPARE_DELIVERIES_MAX: usize = 64;

impl AccountActor {
    pub(crate) fn new(id: AccountId, shared: Arc<Shared>, live: Arc<Live>) -> Self {
        AccountActor {
            id,
            shared,
            state: None,
            load_error: None,
            pending: VecDeque::new(),
            pending_items: 0,
            in_flight: false,
            last_active: Instant::now(),
            published_period: live.active_period.load(Ordering::Relaxed),
            spare_deliveries: Vec::new(),
            ticket: None,
            published_expiry_ms: u64::MAX,
            live,
        }
    }

    /// Tells the housekeeper when the actor's earliest hold expires: always when `exact`,
    /// else only when it is sooner than published (a later truth can wait for the tick the
    /// published time brings, which publishes exactly).
    fn publish_expiry(&mut self, exact: bool) {
        let earliest = self
            .state
            .as_ref()
            .and_then(|state| state.expiries.first())
            .map_or(u64::MAX, |(at, _)| *at);
        if earliest < self.published_expiry_ms || (exact && earliest != self.published_expiry_ms) {
            self.published_expiry_ms = earliest;
            self.live.next_expiry_ms.store(earliest, Ordering::Relaxed);
        }
    }

    /// The relay's count of legs held here goes down by `legs`.
    fn credits_done(&self, legs: usize) {
        if legs == 0 {
            return;
        }
        let before = self
            .live
            .credits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(legs))
            })
            .unwrap_or(0);
        debug_assert!(before >= legs, "credit count went below zero");
    }

    /// Jobs leaving `pending` (or refused before entering it) no longer hold their legs.
    fn credits_left(&self, jobs: &[Job]) {
        self.credits_done(jobs.iter().map(Job::credit_legs).sum());
    }

    /// Fails a job that never reached a draft (refused, or taken out of `pending`).
    fn refuse(&self, job: Job, code: ErrorCode) {
        self.credits_done(job.credit_legs());
        self.fail_job(job, code);
    }

    /// Fails everything in `pending`.
    fn fail_pending(&mut self, code: ErrorCode) {
        while let Some(job) = self.pending.pop_front() {
            self.refuse(job, code);
        }
        self.pending_items = 0;
        self.publish_pending();
    }

    pub fn snapshot(&self) -> AccountSnapshot {
        AccountSnapshot {
            account: self.id.clone(),
            view: self.state.as_ref().map(Loaded::view),
            pending_jobs: self.pending.len(),
            commit_in_flight: self.in_flight,
        }
    }

    /// Queues a job for the next commit (the caller seals).
    fn enqueue(&mut self, job: Job) {
        if let Some(code) = self.load_error {
            self.refuse(job, code);
            return;
        }
        // The reservations bound deliveries; this bounds the items they carry (credit legs
        // are bounded before they are sent, by the relay's flow control, so they get room
        // beyond the clients' share).
        let bound = match job.origin {
            Origin::Client(_) => CLIENT_ITEMS_MAX,
            Origin::Internal => 8 * BATCH_COMMANDS_MAX,
        };
        if self.pending_items + job.items.len() > bound {
            metrics::counter!("tessera_actors_overloaded_total").increment(1);
            self.refuse(job, ErrorCode::Overloaded);
            return;
        }
        self.pending_items += job.items.len();
        self.pending.push_back(job);
        self.publish_pending();
    }

    /// Shows senders how many items wait here (they refuse client deliveries beyond
    /// [`CLIENT_ITEMS_MAX`] before queueing them; see [`crate::registry::Reserved::send`]).
    fn publish_pending(&self) {
        self.live
            .pending_items
            .store(self.pending_items, Ordering::Release);
    }

    /// Takes what accumulated and commits it, unless a commit is already in flight or the
    /// thread's commit window is full (then it waits for its turn, taking items meanwhile;
    /// see [`window`]).
    fn seal(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            return;
        }
        if self.pending.is_empty() {
            // Nothing to commit: a place granted meanwhile passes on.
            self.ticket = None;
            return;
        }
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let Some(place) = window::acquire(
            self.shared.config.commit_window,
            &mut self.ticket,
            self.pending_items,
            // What it shares with senders (it holds its address): a clone of an `Addr`
            // allocates twice and counts a sender in the actor's channel.
            || Arc::clone(&self.live),
        ) else {
            return;
        };
        let (jobs, items) =
            take_for_commit(&mut self.pending, self.shared.config.commit_client_items);
        self.pending_items -= items;
        self.publish_pending();
        self.credits_left(&jobs);
        // Every job taken in is sealed (or refused) in the same turn: activity is dated
        // here, once per commit.
        let started = place.since();
        self.last_active = started;
        // Tells the housekeeper the actor is busy (see `Live::busy_in`).
        let period = self.shared.tick_period_at(started);
        if period != self.published_period {
            self.published_period = period;
            self.live.active_period.store(period, Ordering::Relaxed);
        }
        let draft = Draft::new(state, &self.shared);
        let Sealed { commit, outcome } = match draft.build(&jobs) {
            Ok(sealed) => sealed,
            Err(code) => {
                jobs.into_iter().for_each(|job| self.fail_job(job, code));
                return;
            }
        };
        self.in_flight = true;
        // Polled by the thread's poller, which hands the outcome on from this thread.
        let commit = completions::watch(commit);
        ctx.spawn(commit.into_actor(self).map(move |result, actor, ctx| {
            // Freed before this actor looks again: one waiting since earlier goes first.
            let took = started.elapsed();
            place.finish(took);
            actor.in_flight = false;
            actor.shared.stats.record_commit(took);
            actor.on_commit(result, jobs, outcome, ctx);
            actor.pump(ctx);
        }));
    }

    fn on_commit(
        &mut self,
        result: Result<u64, CommitError>,
        jobs: Vec<Job>,
        delta: Delta,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Ok(_) => self.on_committed(jobs, delta),
            Err(CommitError::PreconditionFailed { keys }) => {
                self.on_precondition_failed(keys, jobs, ctx)
            }
            Err(CommitError::Conflict) | Err(CommitError::Overloaded) => {
                metrics::counter!("tessera_actors_commit_retried_total").increment(1);
                self.requeue_front(jobs);
                ctx.run_later(Duration::from_millis(1), |actor, ctx| actor.pump(ctx));
            }
            Err(CommitError::Rejected(error)) => {
                tracing::warn!(account = %self.id, %error, "commit rejected by the store");
                jobs.into_iter()
                    .for_each(|job| self.fail_job(job, ErrorCode::Unavailable));
            }
            Err(CommitError::Unknown { detail }) => {
                tracing::error!(account = %self.id, %detail, "commit outcome unknown; reloading");
                // The commit may have been durable, outbox entries included, with no
                // delivery following it: only a rescan of the outbox finds those legs.
                self.shared.request_outbox_rescan();
                // Leave the registry before answering, so a caller's retry starts a fresh
                // actor that reloads from the store instead of reaching this one.
                self.shared.retire(&self.id, &ctx.address(), false);
                jobs.into_iter()
                    .for_each(|job| self.fail_job(job, ErrorCode::OutcomeUnknown));
                self.stop_failing(ErrorCode::Unavailable, ctx);
            }
        }
    }

    fn on_committed(&mut self, jobs: Vec<Job>, mut delta: Delta) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        delta.apply_to(state);
        self.publish_expiry(false);
        let Delta {
            results,
            credits,
            debits,
            credits_applied,
            ..
        } = delta;
        let stats = &self.shared.stats;
        stats
            .debits_committed
            .fetch_add(debits, std::sync::atomic::Ordering::AcqRel);
        stats
            .credits_committed
            .fetch_add(credits_applied, std::sync::atomic::Ordering::AcqRel);
        metrics::counter!("tessera_actors_debits_committed_total").increment(debits);
        metrics::counter!("tessera_actors_credits_committed_total").increment(credits_applied);
        answer_jobs(jobs, results);
        if !credits.is_empty() {
            self.deliver(credits);
        }
    }

    /// Hands credit legs to the relay: the legs of every commit completed in this turn of
    /// the thread's event loop travel in one message.
    fn deliver(&self, credits: Vec<CreditLeg>) {
        let first = PENDING_CREDITS.with(|pending| {
            let mut pending = pending.borrow_mut();
            let first = pending.is_empty();
            pending.extend(credits);
            first
        });
        if first {
            let shared = Arc::clone(&self.shared);
            actix_rt::spawn(async move {
                actix_rt::task::yield_now().await;
                let credits =
                    PENDING_CREDITS.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
                if shared.relay().try_send(Deliver(credits)).is_err() {
                    // The legs are durable in the outbox: the relay finds them on a rescan.
                    metrics::counter!("tessera_actors_relay_full_total").increment(1);
                    shared.request_outbox_rescan();
                }
            });
        }
    }

    /// Fails a job: callers get `code`; credit legs stay in the durable outbox and the
    /// relay is asked to rescan it.
    fn fail_job(&self, job: Job, code: ErrorCode) {
        if job
            .items
            .iter()
            .any(|item| matches!(item.work, Work::Credit(_)))
        {
            self.shared.request_outbox_rescan();
        }
        job.fail(code);
    }

    fn on_precondition_failed(
        &mut self,
        keys: Vec<Vec<u8>>,
        mut jobs: Vec<Job>,
        ctx: &mut Context<Self>,
    ) {
        let Some(state) = self.state.as_ref() else {
            return;
        };
        if keys.iter().any(|key| state.fence.is_fence_key(key)) {
            tracing::warn!(account = %self.id, "slot epoch changed: no longer the owner");
            jobs.into_iter()
                .for_each(|job| self.fail_job(job, ErrorCode::NotOwner));
            self.stop_failing(ErrorCode::NotOwner, ctx);
            return;
        }
        let space = self.shared.space;
        let conflicted = draft::conflicted_items(space, &mut jobs, &keys);
        let store = Arc::clone(&self.shared.store);
        let fut = async move {
            let reads: Vec<Vec<u8>> = conflicted.iter().map(|(_, _, key)| key.clone()).collect();
            (conflicted, store.get_many(reads).await)
        };
        self.in_flight = true;
        ctx.spawn(
            fut.into_actor(self)
                .map(move |(conflicted, values), actor, ctx| {
                    actor.in_flight = false;
                    match values {
                        Ok(values) => {
                            draft::settle_duplicates(&mut jobs, conflicted, values);
                            actor.requeue_front(jobs);
                        }
                        Err(_) => jobs
                            .into_iter()
                            .for_each(|job| actor.fail_job(job, ErrorCode::Unavailable)),
                    }
                    actor.pump(ctx);
                }),
        );
    }

    fn requeue_front(&mut self, jobs: Vec<Job>) {
        // Back in `pending`: their legs count as held again.
        let legs: usize = jobs.iter().map(Job::credit_legs).sum();
        self.live.credits.fetch_add(legs, Ordering::AcqRel);
        for job in jobs.into_iter().rev() {
            self.pending_items += job.items.len();
            self.pending.push_front(job);
        }
        self.publish_pending();
    }

    /// Leaves the registry and answers `code` to everything until no message is reserved
    /// for it any more, then stops: no sender is left without an answer.
    fn stop_failing(&mut self, code: ErrorCode, ctx: &mut Context<Self>) {
        self.load_error = Some(code);
        self.shared.retire(&self.id, &ctx.address(), false);
        self.fail_pending(code);
        self.stop_when_drained(ctx);
    }

    fn stop_when_drained(&mut self, ctx: &mut Context<Self>) {
        if self.load_error.is_some() && self.live.queued.load(Ordering::Acquire) == 0 {
            ctx.stop();
        }
    }

    /// Periodic housekeeping: hold expiry, netting for `append` accounts, passivation.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let expired = state.due_holds(now_ms(), EXPIRIES_PER_TICK_MAX);
        let unnetted = state.next_seq - state.record_through_seq;
        if !expired.is_empty() {
            self.enqueue_internal(expired.into_iter().map(Work::Expire));
            self.seal(ctx);
        } else if unnetted > 0 && !self.in_flight && self.pending.is_empty() {
            self.enqueue_internal([Work::Net]);
            self.seal(ctx);
        } else if self.idle() && self.shared.retire(&self.id, &ctx.address(), true) {
            ctx.stop();
        }
    }

    fn idle(&self) -> bool {
        !self.in_flight
            && self.pending.is_empty()
            && self.last_active.elapsed() >= self.shared.config.idle_timeout
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = Arc::clone(&self.shared);
        let id = self.id.clone();
        let load = async move { load::load(&shared, &id).await };
        ctx.wait(
            load.into_actor(self)
                .map(|result, actor, ctx| match result {
                    Ok(state) => {
                        actor.shared.remember(Arc::clone(&state.spec));
                        actor.state = Some(state);
                        actor.publish_expiry(true);
                        actor.pump(ctx);
                    }
                    Err(error) => {
                        let code = error.code();
                        if code != ErrorCode::UnknownAccount {
                            tracing::error!(account = %actor.id, %error, "cannot load account");
                        }
                        actor.stop_failing(code, ctx);
                    }
                }),
        );
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let code = self.load_error.unwrap_or(ErrorCode::Unavailable);
        self.fail_pending(code);
        // No sender is left without an answer: what is still in the inbox is answered
        // here, and the closed inbox refuses every later delivery to its sender.
        for delivery in self.live.close() {
            match delivery {
                Delivery::Execute { items, reply } => Job {
                    origin: Origin::Client(reply),
                    items,
                }
                .fail(code),
                Delivery::Credits(legs) => {
                    // They stay in the durable outbox.
                    self.credits_done(legs.len());
                    self.shared.request_outbox_rescan();
                }
            }
        }
        self.shared.retire(&self.id, &ctx.address(), false);
    }
}

impl Handler<Wake> for AccountActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.pump(ctx);
    }
}

impl Handler<Tick> for AccountActor {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Self::Context) {
        self.tick(ctx);
        self.publish_expiry(true);
        // Ticks share the mailbox with wake-ups: a delivery whose wake-up found the
        // mailbox full of ticks is taken here.
        if ctx.state() == ActorState::Running {
            self.pump(ctx);
        }
    }
}

/// Sends [`Tick`] to the live account actors of one arbiter that may have something to do
/// (hold expiry, netting, passivation), every [`crate::LedgerConfig::tick`]: an actor that
/// sealed a commit in this tick period or the last one, and keeps no expiring hold, is
/// skipped ([`crate::registry::Live::busy_in`]): its netting waits for a quiet period, its
/// passivation for `idle_timeout`.
///
/// One timer per arbiter instead of one per actor: actix polls every item of an actor's
/// context each time the actor is woken, so a per-actor interval was polled at every
/// delivery and commit completion (about 2 % of all CPU in `bench engine` hot-credit;
/// BENCHMARKS.md).
///
/// Keeps its own list of the arbiter's actors (the registry hands it those started since
/// the last tick), so ticking takes no lock the senders need; actors that stopped (their
/// inbox closed) leave the list at the next tick. It keeps what each actor shares with
/// senders, whose address it ticks (no address is cloned or upgraded for a tick); actors
/// stop explicitly, never for want of addresses.
pub(crate) struct Housekeeper {
    shared: Arc<Shared>,
    arbiter: usize,
    /// The arbiter's actors: at most the live ones and those started in one tick period.
    actors: Vec<Arc<Live>>,
}

impl Housekeeper {
    pub(crate) fn new(shared: Arc<Shared>, arbiter: usize) -> Self {
        Housekeeper {
            shared,
            arbiter,
            actors: Vec::new(),
        }
    }

    fn tick(&mut self) {
        let period = self.shared.tick_period_at(Instant::now());
        let now_ms = now_ms();
        self.actors.extend(self.shared.take_newcomers(self.arbiter));
        let (mut ticked, mut skipped) = (0u64, 0u64);
        self.actors.retain(|live| {
            if live.is_closed() {
                return false;
            }
            if live.busy_in(period, now_ms) {
                skipped += 1;
                return true;
            }
            let runs = live.tick();
            ticked += u64::from(runs);
            runs
        });
        metrics::counter!("tessera_actors_ticks_total", "sent" => "yes").increment(ticked);
        metrics::counter!("tessera_actors_ticks_total", "sent" => "skipped_busy")
            .increment(skipped);
    }
}

impl Actor for Housekeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.shared.config.tick, |keeper, _| keeper.tick());
    }
}

impl AccountActor {
    /// Takes every delivery waiting in the inbox, commits what it can, and disarms the
    /// inbox when nothing of the actor's own will look at it again (no commit in flight):
    /// the next delivery then wakes the actor. Called on a wake-up, when a commit (or
    /// the read after a failed one) completes, and once loaded.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut deliveries = std::mem::take(&mut self.spare_deliveries);
        self.live.inbox().take_into(&mut deliveries);
        loop {
            self.live
                .queued
                .fetch_sub(deliveries.len(), Ordering::AcqRel);
            for delivery in deliveries.drain(..) {
                self.take(delivery, ctx);
            }
            self.seal(ctx);
            if self.in_flight || self.ticket.is_some() {
                // Its completion (or the grant of its place in the commit window) looks
                // again; meanwhile the inbox stays armed, and deliveries wake nobody.
                break;
            }
            let mut inbox = self.live.inbox();
            if inbox.is_empty() {
                inbox.armed = false;
                break;
            }
            inbox.take_into(&mut deliveries);
        }
        // The drained buffer serves the next pump (a large one is let go).
        if deliveries.capacity() <= SPARE_DELIVERIES_MAX {
            self.spare_deliveries = deliveries;
        }
        self.stop_when_drained(ctx);
    }

    /// Queues one delivery for the next commit (the caller seals).
    fn take(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        match delivery {
            Delivery::Execute { items, reply } => {
                debug_assert!(items
                    .iter()
                    .all(|item| matches!(item.work, Work::Client(_)) && item.settled.is_none()));
                self.enqueue(Job {
                    origin: Origin::Client(reply),
                    items,
                });
            }
            Delivery::Credits(legs) => self.take_credits(legs, ctx),
        }
    }

    /// Queues credit legs; legs found by a rescan are checked against the store first.
    fn take_credits(&mut self, legs: Vec<CreditLeg>, ctx: &mut Context<Self>) {
        // Legs to verify come only from outbox rescans: spare the common case a partition.
        let (verify, direct): (Vec<_>, Vec<_>) = if legs.iter().any(|leg| leg.verify) {
            legs.into_iter().partition(|leg| leg.verify)
        } else {
            (Vec::new(), legs)
        };
        self.enqueue_credits(direct);
        if !verify.is_empty() {
            let store = Arc::clone(&self.shared.store);
            let keys = verify.iter().map(|leg| leg.key().to_vec()).collect();
            let read = async move { store.get_many(keys).await };
            ctx.spawn(read.into_actor(self).map(move |values, actor, ctx| {
                let Ok(values) = values else {
                    actor.credits_done(verify.len());
                    actor.shared.request_outbox_rescan();
                    return;
                };
                let checked = verify.len();
                let present: Vec<CreditLeg> = verify
                    .into_iter()
                    .zip(values)
                    .filter(|(leg, value)| value.as_deref() == Some(leg.value()))
                    .map(|(leg, _)| leg)
                    .collect();
                actor.credits_done(checked - present.len());
                actor.enqueue_credits(present);
                actor.seal(ctx);
            }));
        }
    }
}

impl AccountActor {
    fn enqueue_credits(&mut self, legs: Vec<CreditLeg>) {
        if !legs.is_empty() {
            // Straight into items: one list, not a list of work and then one of items.
            self.enqueue_internal(legs.into_iter().map(Work::Credit));
        }
    }

    /// Queues work of the actor's own (credits, expiries, netting) for the next commit
    /// (the caller seals).
    fn enqueue_internal(&mut self, work: impl IntoIterator<Item = Work>) {
        let items = work
            .into_iter()
            .map(|work| Item {
                index: 0,
                work,
                settled: None,
            })
            .collect();
        self.enqueue(Job {
            origin: Origin::Internal,
            items,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::BatchAnswers;
    use cells::ledger::Outcome;
    use futures::executor::block_on;

    /// Every value is consumed once, in order, and asked for once, `ahead` values before
    /// its turn (or up front, for the first `ahead`).
    #[test]
    fn values_are_consumed_in_order_each_asked_for_ahead_of_its_turn() {
        for len in 0..12 {
            for ahead in 1..6 {
                let events = std::cell::RefCell::new(Vec::new());
                each_prefetching_ahead(
                    (0..len).collect::<Vec<usize>>(),
                    ahead,
                    |value| events.borrow_mut().push(('p', *value)),
                    |value| events.borrow_mut().push(('e', value)),
                );
                let events = events.into_inner();
                let at = |event: (char, usize)| events.iter().position(|e| *e == event);
                let consumed: Vec<usize> = events
                    .iter()
                    .filter(|(kind, _)| *kind == 'e')
                    .map(|(_, value)| *value)
                    .collect();
                assert_eq!(consumed, (0..len).collect::<Vec<_>>());
                assert_eq!(events.len(), 2 * len, "each value asked for once");
                for value in 0..len {
                    let asked = at(('p', value)).expect("asked for");
                    let taken = at(('e', value)).expect("consumed");
                    // Asked for before the turn of the value `ahead` places earlier (the
                    // first `ahead`: before any turn).
                    let earlier = value.saturating_sub(ahead);
                    let due = at(('e', earlier)).expect("consumed");
                    assert!(asked < taken && asked < due, "{len} {ahead} {value}");
                }
            }
        }
    }

    fn item(index: usize, work: Work) -> Item {
        Item {
            index,
            work,
            settled: None,
        }
    }

    fn client_job(answers: &Arc<BatchAnswers>, indexes: std::ops::Range<usize>) -> Job {
        Job {
            origin: Origin::Client(answers.reply()),
            items: indexes
                .map(|index| item(index, Work::Client(AccountCommand::Lookup)))
                .collect(),
        }
    }

    fn internal_job(items: usize) -> Job {
        Job {
            origin: Origin::Internal,
            items: (0..items).map(|_| item(0, Work::Net)).collect(),
        }
    }

    /// A credit leg keeps its outbox key and value in one allocation and gives each back
    /// whole, an empty value included.
    #[test]
    fn credit_legs_give_back_their_key_and_value() {
        let record = OutboxRecord {
            source: cells::records::PostingSource::Transfer(
                cells::ids::TransferId::new("t-1").expect("valid id"),
            ),
            from: AccountId::new("a").expect("valid id"),
            to: AccountId::new("b").expect("valid id"),
            amount: cells::money::Amount::from_minor_units(5).expect("positive"),
            currency: "USD".parse().expect("known currency"),
        };
        let value = cells::records::encode(&record);
        let leg = CreditLeg::new(b"outbox/key", &value, record.clone(), false);
        assert_eq!(leg.key(), b"outbox/key");
        assert_eq!(leg.value(), value.as_slice());
        let empty = CreditLeg::new(b"k", b"", record.clone(), true);
        assert_eq!((empty.key(), empty.value()), (&b"k"[..], &b""[..]));
        // Only the leg a payer's commit made is fresh; a copy of it is not.
        let fresh = CreditLeg::fresh(b"outbox/key", &value, record);
        assert!(fresh.is_fresh() && !leg.is_fresh());
        let copy = fresh.clone();
        assert!(!copy.is_fresh());
        assert_eq!((copy.key(), copy.value()), (fresh.key(), fresh.value()));
    }

    /// A leg made from a dropped leg's allocations (the thread's pool) holds exactly its
    /// own key, value and record: nothing of the leg before it shows through, whether the
    /// new entry is shorter or longer; and the pool never holds more than its bound.
    #[test]
    fn legs_made_from_pooled_allocations_hold_only_their_own_entry_and_record() {
        let record = |id: &str, to: &str, units: u64| OutboxRecord {
            source: cells::records::PostingSource::Transfer(
                cells::ids::TransferId::new(id).expect("valid id"),
            ),
            from: AccountId::new("payer").expect("valid id"),
            to: AccountId::new(to).expect("valid id"),
            amount: cells::money::Amount::from_minor_units(units).expect("positive"),
            currency: "USD".parse().expect("known currency"),
        };
        // Runs on a thread of its own: a pool the test starts empty and alone uses.
        std::thread::spawn(move || {
            let long = record(
                "t-a-long-transfer-id-of-many-bytes",
                "a-payee-with-a-long-id",
                7,
            );
            let long_value = cells::records::encode(&long);
            drop(CreditLeg::new(&[7; 90], &long_value, long, false));
            let (entry_before, record_before) =
                LEG_POOL.with_borrow(|pool| (pool.entries.len(), pool.records.len()));
            assert_eq!(
                (entry_before, record_before),
                (1, 1),
                "a dropped leg is pooled"
            );
            let short = record("t-2", "b", 9);
            let short_value = cells::records::encode(&short);
            let leg = CreditLeg::new(b"k", &short_value, short.clone(), false);
            assert_eq!(
                LEG_POOL.with_borrow(|pool| pool.records.len()),
                0,
                "taken back"
            );
            assert_eq!(
                (leg.key(), leg.value()),
                (&b"k"[..], short_value.as_slice())
            );
            assert_eq!(**leg.record, short);
            drop(leg);
            let again = record("t-3-longer-than-the-last", "c", 11);
            let again_value = cells::records::encode(&again);
            let leg = CreditLeg::new(&[3; 64], &again_value, again.clone(), true);
            assert_eq!(
                (leg.key(), leg.value()),
                (&[3u8; 64][..], again_value.as_slice())
            );
            assert_eq!(**leg.record, again.clone());
            // An entry buffer over the bound is freed, not kept.
            drop(CreditLeg::new(
                &[1; LEG_POOL_ENTRY_BYTES_MAX + 1],
                b"v",
                again,
                false,
            ));
            drop(leg);
            assert_eq!(
                LEG_POOL.with_borrow(|pool| (pool.entries.len(), pool.records.len())),
                (1, 2),
                "the large entry went, its record and the last leg's stayed"
            );
            // A burst of drops fills the pool to its bound, no further.
            let legs: Vec<CreditLeg> = (0..LEG_POOL_MAX + 10)
                .map(|n| CreditLeg::new(b"k", b"v", record(&format!("t-{n}"), "d", 1), false))
                .collect();
            drop(legs);
            LEG_POOL.with_borrow(|pool| {
                assert_eq!(pool.entries.len(), LEG_POOL_MAX);
                assert_eq!(pool.records.len(), LEG_POOL_MAX);
            });
        })
        .join()
        .expect("the test thread passes");
    }

    fn indexes(jobs: &[Job]) -> Vec<usize> {
        jobs.iter()
            .flat_map(|job| job.items.iter().map(|item| item.index))
            .collect()
    }

    /// A commit takes at most `commit_client_items` client commands (the default, 1,024)
    /// and `BATCH_COMMANDS_MAX` items; jobs that do not fit are split in order, and every part
    /// answers on its own share of the batch's reply.
    #[test]
    fn commits_take_bounded_parts_of_large_jobs_in_order() {
        let client_max = crate::LedgerConfig::default().commit_client_items;
        assert_eq!(client_max, 1_024);
        let answers = BatchAnswers::new(2_100);
        let mut pending: VecDeque<Job> = VecDeque::new();
        pending.push_back(client_job(&answers, 0..1_500));
        pending.push_back(internal_job(100));
        pending.push_back(client_job(&answers, 1_500..2_100));
        pending.push_back(internal_job(8_000));

        let mut taken = Vec::new();
        let (first, items) = take_for_commit(&mut pending, client_max);
        assert_eq!(items, 1_024);
        assert_eq!(indexes(&first), (0..1_024).collect::<Vec<_>>());
        taken.push(first);

        // The rest of the first job, the internal job, and what fits of the third.
        let (second, items) = take_for_commit(&mut pending, client_max);
        assert_eq!(items, 476 + 100 + 548);
        assert_eq!(second.len(), 3);
        let client: Vec<usize> = indexes(&second)
            .into_iter()
            .filter(|index| *index > 0)
            .collect();
        assert_eq!(
            client,
            (1_024..1_500).chain(1_500..2_048).collect::<Vec<_>>()
        );
        taken.push(second);

        // Credit legs and expiries fill a commit up to the batch bound.
        let (third, items) = take_for_commit(&mut pending, client_max);
        assert_eq!(items, 52 + 8_000);
        assert_eq!(
            indexes(&third)[..52],
            (2_048..2_100).collect::<Vec<_>>()[..]
        );
        taken.push(third);
        assert!(pending.is_empty());
        assert_eq!(take_for_commit(&mut pending, client_max).1, 0);

        for jobs in taken {
            let results: Vec<(usize, CommandResult)> = jobs
                .iter()
                .flat_map(|job| &job.items)
                .map(|item| (item.index, Ok(Outcome::TransferAccepted)))
                .collect();
            answer_jobs(jobs, results);
        }
        let mut answered: Vec<usize> = block_on(answers.all())
            .into_iter()
            .map(|(index, _)| index)
            .collect();
        answered.sort_unstable();
        assert_eq!(answered, (0..2_100).collect::<Vec<_>>());
    }

    #[test]
    fn an_internal_job_beyond_the_batch_bound_is_split() {
        let client_max = 1;
        let mut pending: VecDeque<Job> = VecDeque::new();
        pending.push_back(internal_job(8_000));
        pending.push_back(internal_job(500));
        assert_eq!(
            take_for_commit(&mut pending, client_max).1,
            BATCH_COMMANDS_MAX
        );
        assert_eq!(
            take_for_commit(&mut pending, client_max).1,
            8_500 - BATCH_COMMANDS_MAX
        );
        assert!(pending.is_empty());
    }

    /// Regression: a client job after an internal one (credit legs, expiries, netting)
    /// in the same commit got the internal job's results, so a refused transfer could be
    /// acknowledged. Each job gets exactly its own share.
    #[test]
    fn a_client_job_after_an_internal_one_gets_its_own_results() {
        let answers = BatchAnswers::new(8);
        let jobs = vec![
            Job {
                origin: Origin::Internal,
                items: vec![item(0, Work::Net), item(0, Work::Net)],
            },
            Job {
                origin: Origin::Client(answers.reply()),
                items: vec![
                    item(5, Work::Client(AccountCommand::Lookup)),
                    item(2, Work::Client(AccountCommand::Lookup)),
                ],
            },
            Job {
                origin: Origin::Internal,
                items: vec![item(0, Work::Net)],
            },
            Job {
                origin: Origin::Client(answers.reply()),
                items: vec![item(7, Work::Client(AccountCommand::Lookup))],
            },
        ];
        let results = vec![
            (0, Ok(Outcome::AccountCreated)),
            (0, Ok(Outcome::AccountCreated)),
            (5, Err(ErrorCode::InsufficientFunds)),
            (2, Ok(Outcome::TransferAccepted)),
            (0, Ok(Outcome::AccountCreated)),
            (7, Err(ErrorCode::CurrencyMismatch)),
        ];
        answer_jobs(jobs, results);
        let mut answered = block_on(answers.all());
        answered.sort_by_key(|(index, _)| *index);
        assert_eq!(
            answered,
            vec![
                (2, Ok(Outcome::TransferAccepted)),
                (5, Err(ErrorCode::InsufficientFunds)),
                (7, Err(ErrorCode::CurrencyMismatch)),
            ]
        );
    }
}
