//! The outbox relay: delivers credit legs from the outbox to payee account actors.
//!
//! Owns delivery, not exactly-once: exactly-once (INV-3) comes from the payee's commit,
//! which requires the outbox entry to still exist and clears it in the same transaction.
//! So the relay may deliver a leg twice (after a rescan) but never loses one: legs it
//! cannot hold in memory stay in the durable outbox, and a rescan finds them.
//!
//! Flow control: the relay hands a payee at most [`CREDITS_HELD_MAX`] legs that its actor
//! has not yet taken into a commit (the registry keeps the count: the relay raises it, the
//! actor lowers it). The rest wait here, per payee, and go out as the payee's commits take
//! them — so a hot merchant that falls behind its payers builds a queue at the relay (and
//! beyond [`RELAY_RETRY_CREDITS_MAX`], in the durable outbox), not a storm of refusals and
//! outbox rescans.
//!
//! Must never: hold more than [`RELAY_RETRY_CREDITS_MAX`] legs, or block on a payee.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use cells::ids::{AccountId, DcId, UserId};
use cells::ledger::BATCH_COMMANDS_MAX;
use cells::records::{self, OutboxRecord};
use cells::slot::Slot;
use cells::store::{prefix_end, KeyValue, RangeRequest};

use crate::account::{each_prefetching_ahead, CreditLeg, Delivery};
use crate::config::{DIRECTORY_ACCOUNTS_MAX, RELAY_MAILBOX_CAPACITY, RELAY_RETRY_CREDITS_MAX};
use crate::registry::{Reserved, Shared};

/// Rows read per page of an outbox rescan.
const RESCAN_PAGE_ROWS: usize = 8_190;
/// Credit legs an account actor may hold (sent, not yet taken into a commit): two full
/// commits, so a hot payee always has its next commit's worth waiting.
pub const CREDITS_HELD_MAX: usize = 2 * BATCH_COMMANDS_MAX;
/// Payees a tick tops up at most (the others wait for the next tick, in turn).
const PAYEES_PER_TICK_MAX: usize = 4_096;
/// A rescan pauses between pages while more legs than this wait at the relay.
const RESCAN_PAUSE_LEGS: usize = RELAY_RETRY_CREDITS_MAX / 2;

/// Credit legs just made durable by a payer's commit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<CreditLeg>);

/// Legs whose records [`OutboxRelay::route_local`] asks for ahead of the one it groups.
const RECORDS_AHEAD: usize = 8;

/// Legs grouped by payee.
type ByPayee = HashMap<AccountId, Vec<CreditLeg>>;

/// Adds `leg` to its payee's group (most payees get one leg per commit of a payer).
fn group(by_payee: &mut ByPayee, leg: CreditLeg) {
    by_payee
        .entry(leg.record.to.clone())
        .or_insert_with(|| Vec::with_capacity(1))
        .push(leg);
}

/// One payee's legs waiting for room.
#[derive(Default)]
struct Waiting {
    legs: VecDeque<CreditLeg>,
    /// Whether the payee is in `turns`. An entry in `turns` stays in the map (perhaps
    /// empty) until its turn comes, so `turns` never holds a payee twice.
    in_turns: bool,
}

/// The relay actor. See the module docs.
pub struct OutboxRelay {
    shared: Arc<Shared>,
    /// Legs waiting for room at their payee, per payee.
    waiting: HashMap<AccountId, Waiting>,
    /// Payees whose legs wait, in the order ticks serve them (each at most once: see
    /// [`Waiting::in_turns`]).
    turns: VecDeque<AccountId>,
    waiting_legs: usize,
    scanning: bool,
    pending_ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where a rescan paused (too many legs waiting): the next page's start and its end.
    paused_scan: Option<(Vec<u8>, Vec<u8>)>,
    last_rescan: Instant,
    /// The user of each payee seen (specs never change), bounded like the directory.
    payee_users: HashMap<AccountId, UserId>,
}

impl OutboxRelay {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        OutboxRelay {
            shared,
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            waiting_legs: 0,
            scanning: false,
            pending_ranges: Vec::new(),
            paused_scan: None,
            last_rescan: Instant::now(),
            payee_users: HashMap::new(),
        }
    }

    /// Routes legs to their payees: local payee actors, or (DC mode, when `forward`) the DC
    /// that owns the payee. A leg whose payee this DC cannot place stays in the durable
    /// outbox for the owner's rescan or this DC's next one.
    fn route(&mut self, legs: Vec<CreditLeg>, forward: bool, ctx: &mut Context<Self>) {
        let Some(me) = self.shared.config.dc.clone() else {
            self.route_local(legs);
            return;
        };
        let table = self.shared.ownership();
        if table.version == 0 {
            // No table installed: this ledger relies on its fences alone (as the gate does);
            // every payee is tried here and a payee this DC does not own is refused by its
            // commit's fence, leaving the leg in the outbox for the owner.
            self.route_local(legs);
            return;
        }
        let mut local = ByPayee::with_capacity(legs.len());
        let mut remote: HashMap<DcId, Vec<KeyValue>> = HashMap::new();
        let mut unresolved = Vec::new();
        let mut left = 0u64;
        for leg in legs {
            let Some(user) = self.payee_user(&leg.record.to) else {
                unresolved.push(leg);
                continue;
            };
            match table.owner_of(&user) {
                Some(owner) if owner.dc == me => group(&mut local, leg),
                Some(owner) if forward => remote
                    .entry(owner.dc.clone())
                    .or_default()
                    .push((leg.key().to_vec(), leg.value().to_vec())),
                _ => left += 1,
            }
        }
        self.send_grouped(local);
        if let Some(forwarder) = self.shared.forwarder() {
            for (dc, legs) in remote {
                let count = legs.len() as u64;
                if forwarder.forward(&dc, self.shared.space, legs) {
                    metrics::counter!("tessera_actors_relay_forwarded_total").increment(count);
                } else {
                    left += count;
                }
            }
        } else {
            left += remote.values().map(|legs| legs.len() as u64).sum::<u64>();
        }
        if left > 0 {
            metrics::counter!("tessera_actors_relay_left_in_outbox_total").increment(left);
        }
        if unresolved.is_empty() {
            return;
        }
        // Payees whose spec is not cached: read them once, then route again (a payee that
        // does not exist is handed to its would-be actor, which reports it).
        let shared = Arc::clone(&self.shared);
        let ids = unresolved.iter().map(|leg| leg.record.to.clone()).collect();
        let read = async move { shared.specs(ids).await };
        ctx.spawn(
            read.into_actor(self)
                .map(move |specs, relay, ctx| match specs {
                    Ok(specs) => {
                        let (known, missing): (Vec<_>, Vec<_>) = unresolved
                            .into_iter()
                            .partition(|leg| matches!(specs.get(&leg.record.to), Some(Some(_))));
                        relay.route_local(missing);
                        relay.route(known, forward, ctx);
                    }
                    Err(_) => relay.shared.request_outbox_rescan(),
                }),
        );
    }

    /// The user of payee `account`: from the relay's own cache (touched by this thread
    /// only: no lock, no shared count per leg), else from the ledger's directory. `None`:
    /// the spec is not cached anywhere (the caller reads it).
    fn payee_user(&mut self, account: &AccountId) -> Option<UserId> {
        if let Some(user) = self.payee_users.get(account) {
            return Some(user.clone());
        }
        let spec = self.shared.cached_spec(account)?;
        if self.payee_users.len() >= DIRECTORY_ACCOUNTS_MAX {
            self.payee_users.clear();
        }
        self.payee_users.insert(account.clone(), spec.user.clone());
        Some(spec.user.clone())
    }

    /// Sends legs to their payees as far as each has room; the rest wait here, per payee,
    /// for the ticks.
    fn route_local(&mut self, legs: Vec<CreditLeg>) {
        if legs.is_empty() {
            return;
        }
        let mut by_payee = ByPayee::with_capacity(legs.len());
        // Each leg's record (its payee) was written by the payer's draft, long enough ago
        // to have left the cache: it is asked for a few legs ahead of its turn.
        each_prefetching_ahead(legs, RECORDS_AHEAD, CreditLeg::prefetch_record, |leg| {
            group(&mut by_payee, leg)
        });
        self.send_grouped(by_payee);
    }

    /// Sends grouped legs to their payees as far as each has room; the rest wait here.
    fn send_grouped(&mut self, by_payee: ByPayee) {
        if by_payee.is_empty() {
            return;
        }
        // Payees with legs already waiting get these behind them (order per payee is kept,
        // though nothing depends on it); the others are sent to at once.
        let mut direct: Vec<(AccountId, Vec<CreditLeg>)> = Vec::with_capacity(by_payee.len());
        let mut queued = Vec::new();
        for (payee, legs) in by_payee {
            match self.waiting.get_mut(&payee) {
                Some(waiting) => {
                    self.waiting_legs += legs.len();
                    waiting.legs.extend(legs);
                    queued.push(payee);
                }
                None => direct.push((payee, legs)),
            }
        }
        // Those already waiting may have room again since their last top-up.
        self.top_up(&queued);
        let mut left: Vec<(AccountId, VecDeque<CreditLeg>)> = Vec::new();
        self.shared.reserve_each(direct, |payee, legs, place| {
            let mut legs = VecDeque::from(legs);
            // Not startable now (actor cap): the legs wait for a later turn.
            if let Ok(place) = place {
                offer(place, &mut legs);
            }
            if !legs.is_empty() {
                left.push((payee, legs));
            }
        });
        let mut dropped = 0u64;
        for (payee, legs) in left {
            let room = RELAY_RETRY_CREDITS_MAX.saturating_sub(self.waiting_legs);
            if legs.len() > room {
                // Beyond the relay's bound they stay in the durable outbox; a rescan
                // delivers them later.
                dropped += (legs.len() - room) as u64;
            }
            let mut kept = legs;
            kept.truncate(room);
            if kept.is_empty() {
                continue;
            }
            self.waiting_legs += kept.len();
            // These payees had nothing waiting (see above): their leftovers become the queue.
            let waiting = self.waiting.entry(payee.clone()).or_default();
            debug_assert!(waiting.legs.is_empty(), "a direct payee had legs waiting");
            waiting.legs = kept;
            queued.push(payee);
        }
        if dropped > 0 {
            metrics::counter!("tessera_actors_relay_dropped_total").increment(dropped);
            self.shared.request_outbox_rescan();
        }
        // Payees left waiting get their turns at the ticks.
        for payee in queued {
            if let Some(waiting) = self.waiting.get_mut(&payee) {
                if !waiting.in_turns {
                    waiting.in_turns = true;
                    self.turns.push_back(payee);
                }
            }
        }
        metrics::gauge!("tessera_actors_relay_waiting_legs").set(self.waiting_legs as f64);
    }

    /// Sends each of `payees` as many of its waiting legs as it has room for (one message
    /// of at most one commit's worth each). A payee left with nothing waiting leaves the
    /// map unless it is in `turns`.
    fn top_up(&mut self, payees: &[AccountId]) {
        if payees.is_empty() {
            return;
        }
        self.shared.reserve_each(
            payees.iter().map(|payee| (payee, ())),
            |payee, (), place| {
                let Some(waiting) = self.waiting.get_mut(payee) else {
                    if let Ok(place) = place {
                        place.release();
                    }
                    return;
                };
                // Not startable now (actor cap): its legs wait for a later turn.
                if let Ok(place) = place {
                    self.waiting_legs -= offer(place, &mut waiting.legs);
                }
                if waiting.legs.is_empty() && !waiting.in_turns {
                    self.waiting.remove(payee);
                }
            },
        );
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if !self.turns.is_empty() {
            // Serve payees with waiting legs in turn, a bounded number per tick.
            let count = self.turns.len().min(PAYEES_PER_TICK_MAX);
            let due: Vec<AccountId> = self.turns.drain(..count).collect();
            for payee in &due {
                if let Some(waiting) = self.waiting.get_mut(payee) {
                    waiting.in_turns = false;
                }
            }
            self.top_up(&due);
            for payee in due {
                if let Some(waiting) = self.waiting.get_mut(&payee) {
                    waiting.in_turns = true;
                    self.turns.push_back(payee);
                }
            }
            metrics::gauge!("tessera_actors_relay_waiting_legs").set(self.waiting_legs as f64);
        }
        if self.waiting_legs < RESCAN_PAUSE_LEGS {
            if let Some((begin, end)) = self.paused_scan.take() {
                self.scan_page(begin, end, ctx);
            }
        }
        if let Some(every) = self.shared.config.outbox_rescan_interval {
            if self.last_rescan.elapsed() >= every {
                self.shared.request_outbox_rescan();
            }
        }
        if !self.scanning && self.shared.take_outbox_rescan() {
            self.shared
                .stats
                .outbox_rescans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("tessera_actors_relay_rescans_total").increment(1);
            self.last_rescan = Instant::now();
            self.pending_ranges = self.rescan_ranges();
            self.scan_next(ctx);
        }
    }

    /// What a rescan reads: the whole outbox standalone; in DC mode the outbox entries of
    /// the payer slots this DC owns (entries of other slots are their owners' to deliver).
    fn rescan_ranges(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let space = self.shared.space;
        let Some(me) = &self.shared.config.dc else {
            let prefix = space.outbox_prefix();
            let end = prefix_end(&prefix);
            return vec![(prefix, end)];
        };
        let table = self.shared.ownership();
        let mut ranges = Vec::new();
        let mut run: Option<(Slot, Slot)> = None;
        for slot in table.slots_of(me) {
            run = match run {
                Some((first, last)) if last.index() + 1 == slot.index() => Some((first, slot)),
                Some((first, last)) => {
                    ranges.push(space.outbox_slots(first, last));
                    Some((slot, slot))
                }
                None => Some((slot, slot)),
            };
        }
        if let Some((first, last)) = run {
            ranges.push(space.outbox_slots(first, last));
        }
        ranges
    }

    fn scan_next(&mut self, ctx: &mut Context<Self>) {
        match self.pending_ranges.pop() {
            Some((begin, end)) => {
                self.scanning = true;
                self.scan_page(begin, end, ctx);
            }
            None => self.scanning = false,
        }
    }

    /// Reads one page of the outbox and delivers it, then the next page.
    fn scan_page(&mut self, begin: Vec<u8>, end: Vec<u8>, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.shared.store);
        let request = RangeRequest::new(begin, end.clone(), RESCAN_PAGE_ROWS);
        let read = async move { store.get_range(request).await };
        ctx.spawn(read.into_actor(self).map(move |page, relay, ctx| {
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "outbox rescan failed; will retry");
                    relay.shared.request_outbox_rescan();
                    relay.pending_ranges.clear();
                    relay.scanning = false;
                    return;
                }
            };
            let next =
                (page.len() == RESCAN_PAGE_ROWS).then(|| page.last().map(|(k, _)| k.clone()));
            let mut legs = Vec::with_capacity(page.len());
            for (key, value) in page {
                match records::decode::<OutboxRecord>("outbox", &value) {
                    Ok(record) => legs.push(CreditLeg::new(&key, &value, record, true)),
                    Err(error) => tracing::error!(%error, "undecodable outbox entry skipped"),
                }
            }
            metrics::counter!("tessera_actors_relay_rescanned_total").increment(legs.len() as u64);
            relay.route(legs, true, ctx);
            match next.flatten() {
                Some(mut last) => {
                    last.push(0);
                    if relay.waiting_legs >= RESCAN_PAUSE_LEGS {
                        // Go on once payees have taken some: a tick resumes it.
                        relay.paused_scan = Some((last, end));
                    } else {
                        relay.scan_page(last, end, ctx);
                    }
                }
                None => relay.scan_next(ctx),
            }
        }));
    }
}

/// Sends `place`'s actor as many legs from the front of `legs` as it has room for (at most
/// one commit's worth); returns how many went. Legs not sent stay in `legs`, in order.
fn offer(place: Reserved, legs: &mut VecDeque<CreditLeg>) -> usize {
    let room = CREDITS_HELD_MAX.saturating_sub(place.credits_held());
    let count = room.min(legs.len()).min(BATCH_COMMANDS_MAX);
    if count == 0 {
        place.release();
        return 0;
    }
    let batch: Vec<CreditLeg> = if count == legs.len() {
        // All of them: hand over the buffer itself.
        Vec::from(std::mem::take(legs))
    } else {
        legs.drain(..count).collect()
    };
    place.hand_credits(count);
    match place.send(Delivery::Credits(batch)) {
        Ok(()) => count,
        Err((delivery, _)) => {
            // The actor is gone (its count with it): the legs wait again.
            if let Delivery::Credits(batch) = delivery {
                for leg in batch.into_iter().rev() {
                    legs.push_front(leg);
                }
            }
            0
        }
    }
}

impl Actor for OutboxRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(RELAY_MAILBOX_CAPACITY);
        let tick = self
            .shared
            .config
            .tick
            .min(std::time::Duration::from_millis(10));
        ctx.run_interval(tick, |relay, ctx| relay.tick(ctx));
        self.tick(ctx);
    }
}

impl Handler<Deliver> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, message: Deliver, ctx: &mut Self::Context) {
        self.route(message.0, true, ctx);
    }
}

/// Credit legs another DC sent this one (DC mode): delivered to local payees only, never
/// forwarded again (a stale table on either side must not bounce legs between DCs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverFromPeer(pub Vec<CreditLeg>);

impl Handler<DeliverFromPeer> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, message: DeliverFromPeer, ctx: &mut Self::Context) {
        self.route(message.0, false, ctx);
    }
}
