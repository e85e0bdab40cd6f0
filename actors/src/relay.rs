//! The outbox relay: delivers credit legs from the outbox to payee account actors.
//!
//! Owns delivery, not exactly-once: exactly-once (INV-3) comes from the payee's commit,
//! which requires the outbox entry to still exist and clears it in the same transaction.
//! So the relay may deliver a leg twice (after a rescan) but never loses one: legs it
//! cannot hold in memory stay in the durable outbox, and a rescan finds them.
//!
//! Must never: hold more than [`RELAY_RETRY_CREDITS_MAX`] legs, or block on a payee.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use cells::ids::AccountId;
use cells::ledger::BATCH_COMMANDS_MAX;
use cells::records::{self, OutboxRecord};
use cells::store::{prefix_end, RangeRequest};

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
}

impl OutboxRelay {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        OutboxRelay {
            shared,
            retry: VecDeque::new(),
            scanning: false,
        }
    }

    fn route(&mut self, legs: Vec<CreditLeg>) {
        let mut by_payee: HashMap<AccountId, Vec<CreditLeg>> = HashMap::new();
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
            self.route(legs);
        }
        if !self.scanning && self.shared.take_outbox_rescan() {
            self.scanning = true;
            let prefix = self.shared.space.outbox_prefix();
            self.scan_page(prefix.clone(), prefix_end(&prefix), ctx);
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
            relay.route(legs);
            match next.flatten() {
                Some(mut last) => {
                    last.push(0);
                    relay.scan_page(last, end, ctx);
                }
                None => relay.scanning = false,
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

    fn handle(&mut self, message: Deliver, _: &mut Self::Context) {
        self.route(message.0);
    }
}
