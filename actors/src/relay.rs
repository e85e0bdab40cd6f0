//! The outbox relay: delivers credit legs from the outbox to payee account actors.
//!
//! Owns delivery, not exactly-once: exactly-once (INV-3) comes from the payee's commit,
//! which requires the outbox entry to still exist and clears it in the same transaction.
//! So the relay may deliver a leg twice (after a rescan) but never loses one: legs it
//! cannot hold in memory stay in the durable outbox, and a rescan finds them.
//!
//! Must never: hold more than [`RELAY_RETRY_CREDITS_MAX`] legs, or block on a payee.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use cells::ids::{AccountId, DcId};
use cells::ledger::BATCH_COMMANDS_MAX;
use cells::records::{self, OutboxRecord};
use cells::slot::Slot;
use cells::store::{prefix_end, KeyValue, RangeRequest};

use crate::account::{ApplyCredits, CreditLeg};
use crate::config::{RELAY_MAILBOX_CAPACITY, RELAY_RETRY_CREDITS_MAX};
use crate::registry::Shared;

/// Rows read per page of an outbox rescan.
const RESCAN_PAGE_ROWS: usize = 8_190;

/// Credit legs just made durable by a payer's commit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<CreditLeg>);

/// The relay actor. See the module docs.
pub struct OutboxRelay {
    shared: Arc<Shared>,
    retry: VecDeque<CreditLeg>,
    scanning: bool,
    pending_ranges: Vec<(Vec<u8>, Vec<u8>)>,
    last_rescan: Instant,
}

impl OutboxRelay {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        OutboxRelay {
            shared,
            retry: VecDeque::new(),
            scanning: false,
            pending_ranges: Vec::new(),
            last_rescan: Instant::now(),
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
        let mut local = Vec::with_capacity(legs.len());
        let mut remote: HashMap<DcId, Vec<KeyValue>> = HashMap::new();
        let mut unresolved = Vec::new();
        let mut left = 0u64;
        let specs = self
            .shared
            .cached_specs(legs.iter().map(|leg| &leg.record.to));
        for (leg, spec) in legs.into_iter().zip(specs) {
            let Some(spec) = spec else {
                unresolved.push(leg);
                continue;
            };
            match table.owner_of(&spec.user) {
                Some(owner) if owner.dc == me => local.push(leg),
                Some(owner) if forward => remote
                    .entry(owner.dc.clone())
                    .or_default()
                    .push((leg.key, leg.value)),
                _ => left += 1,
            }
        }
        self.route_local(local);
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

    fn route_local(&mut self, legs: Vec<CreditLeg>) {
        if legs.is_empty() {
            return;
        }
        let mut by_payee: HashMap<AccountId, Vec<CreditLeg>> = HashMap::with_capacity(legs.len());
        for leg in legs {
            by_payee.entry(leg.record.to.clone()).or_default().push(leg);
        }
        // One message carries at most one commit's worth of postings.
        let mut messages: Vec<(AccountId, Vec<CreditLeg>)> = Vec::with_capacity(by_payee.len());
        for (payee, mut legs) in by_payee {
            while legs.len() > BATCH_COMMANDS_MAX {
                let rest = legs.split_off(BATCH_COMMANDS_MAX);
                messages.push((payee.clone(), legs));
                legs = rest;
            }
            messages.push((payee, legs));
        }
        let places = self
            .shared
            .reserve_many(messages.iter().map(|(payee, _)| payee));
        for ((_, legs), place) in messages.into_iter().zip(places) {
            let sent = match place {
                Ok(place) => place.send(ApplyCredits(legs)).map_err(|message| message.0),
                Err(_) => Err(legs),
            };
            if let Err(legs) = sent {
                self.keep(legs);
            }
        }
    }

    fn keep(&mut self, legs: Vec<CreditLeg>) {
        if self.retry.len() + legs.len() > RELAY_RETRY_CREDITS_MAX {
            metrics::counter!("tessera_actors_relay_dropped_total").increment(legs.len() as u64);
            self.shared.request_outbox_rescan();
            return;
        }
        self.retry.extend(legs);
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if !self.retry.is_empty() {
            let legs: Vec<_> = self.retry.drain(..).collect();
            self.route_local(legs);
        }
        if let Some(every) = self.shared.config.outbox_rescan_interval {
            if self.last_rescan.elapsed() >= every {
                self.shared.request_outbox_rescan();
            }
        }
        if !self.scanning && self.shared.take_outbox_rescan() {
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
                    Ok(record) => legs.push(CreditLeg {
                        key,
                        value,
                        record,
                        verify: true,
                    }),
                    Err(error) => tracing::error!(%error, "undecodable outbox entry skipped"),
                }
            }
            metrics::counter!("tessera_actors_relay_rescanned_total").increment(legs.len() as u64);
            relay.route(legs, true, ctx);
            match next.flatten() {
                Some(mut last) => {
                    last.push(0);
                    relay.scan_page(last, end, ctx);
                }
                None => relay.scan_next(ctx),
            }
        }));
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
