//! The ledger entry point: a batch of commands in, one typed result per command out.
//!
//! Owns batch validation (size, duplicate ids, unknown accounts, currencies), routing of
//! each command to the account actor that must serialize it, account creation, and
//! lookups that need no actor. Commands of one batch run as: account creations first,
//! then everything else; commands for the same account keep their order.
//!
//! Must never: send a command to an actor without a bound (a full inbox answers
//! `overloaded`), or report success for anything not yet durable.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;

use actix::{Actor, Arbiter, ArbiterHandle};
use cells::ids::{AccountId, HoldId, TransferId, UserId};
use cells::keys::Keyspace;
use cells::ledger::{
    validate_account_spec, Command, CommandResult, ErrorCode, HoldView, Outcome, TransferStatus,
    TransferView, BATCH_COMMANDS_MAX,
};
use cells::ownership::{Fence, OwnershipTable};
use cells::records::{
    self, AccountKind, AccountRecord, AccountSpec, HoldRecord, HotMode, OutboxKind, OutboxRecord,
    PostingRecord, TransferOutcome, TransferRecord,
};
use cells::slot::{slot_of, Slot};
use cells::store::{CommitError, KeyValue, Store};

use crate::account::{AccountCommand, CreditLeg, Delivery, Item, Work};
use crate::answers::BatchAnswers;
use crate::config::{LedgerConfig, CREATE_ATTEMPTS_MAX};
use crate::registry::{CreditForwarder, Routing, Shared, Specs};
use crate::relay::{DeliverFromPeer, OutboxRelay};
use crate::seen_holds::{HoldRoute, SeenHolds};
use crate::split;
use crate::stats::LedgerStats;

/// Longest a batch waits for a frozen slot (a handover in progress) before its commands
/// for that slot are answered `unavailable`.
pub const FREEZE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts a batch out of the freeze gate when it is answered (or dropped).
struct GateGuard {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.shared.gate.leave(&self.slots);
    }
}

/// Most postings one statement page returns.
pub const STATEMENT_POSTINGS_MAX: usize = 1_000;

/// A batch refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch has {len} commands; at most {BATCH_COMMANDS_MAX} are allowed")]
    TooLarge { len: usize },
}

impl BatchError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BatchTooLarge
    }
}

/// The ledger: cheap to clone, usable from any thread once started.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    _arbiters: Arc<Vec<Arbiter>>,
}

/// Each account's share of a batch, as the items its actor drafts (built here, so the actor
/// takes them without converting or copying them).
type Routed = HashMap<AccountId, Vec<Item>>;

/// What routing knows of a hold that a command releases or captures.
enum HoldRef {
    /// Its record, read from the store.
    Read(HoldRecord),
    /// Where it lies, remembered from its creation (no record read).
    Seen(HoldRoute),
}

impl HoldRef {
    fn account(&self) -> &AccountId {
        match self {
            HoldRef::Read(record) => &record.account,
            HoldRef::Seen(route) => &route.account,
        }
    }

    fn currency(&self) -> cells::money::Currency {
        match self {
            HoldRef::Read(record) => record.currency,
            HoldRef::Seen(route) => route.currency,
        }
    }

    /// The record for the actor, if one was read.
    fn snapshot(self) -> Option<Box<HoldRecord>> {
        match self {
            HoldRef::Read(record) => Some(Box::new(record)),
            HoldRef::Seen(_) => None,
        }
    }
}

/// A batch's hold commands, noted as they are routed, for [`HoldWork::settle`].
///
/// An actor that finds a hold inactive answers from the state it ended in when it knows
/// it: ended in the same draft, or in the hold record routing read. It keeps no memory of
/// the holds that ended in its earlier commits (a map per actor, filled per hold, was 4 %
/// of the actor thread in `holds`), so a release or capture of such a hold, one routed
/// without a read (a retry) or one whose record was read before the hold ended (a race
/// with its first run), is answered `hold_not_active` there and runs again here on the
/// record, read after the actor's answer: the hold's final state is in it.
#[derive(Default)]
struct HoldWork {
    /// Holds the batch creates: `(index, id, where)`.
    created: Vec<(usize, HoldId, HoldRoute)>,
    /// Whether releases and captures found inactive run again (not in a run again).
    again: bool,
    /// The batch's releases and captures, kept to run again.
    settling: Vec<(usize, Command)>,
}

impl HoldWork {
    fn new(again: bool) -> Self {
        HoldWork {
            again,
            ..HoldWork::default()
        }
    }

    fn note(&mut self, index: usize, command: &Command) {
        match command {
            Command::Hold(request) => {
                let route = HoldRoute {
                    account: request.account.clone(),
                    currency: request.currency,
                };
                self.created.push((index, request.id.clone(), route));
            }
            Command::Release(_) | Command::Capture(_) if self.again => {
                self.settling.push((index, command.clone()));
            }
            _ => {}
        }
    }

    /// Remembers the holds created (answered `hold_created`: durable), and gives the
    /// releases and captures the actor found inactive (`hold_not_active`), to run again
    /// on their records.
    fn settle(self, seen: &SeenHolds, results: &[Option<CommandResult>]) -> Vec<(usize, Command)> {
        let answered_ok = |index: usize| matches!(results[index], Some(Ok(_)));
        seen.remember(
            self.created
                .into_iter()
                .filter(|(index, _, _)| answered_ok(*index))
                .map(|(_, id, route)| (id, route)),
        );
        self.settling
            .into_iter()
            .filter(|(index, _)| matches!(results[*index], Some(Err(ErrorCode::HoldNotActive))))
            .collect()
    }
}

/// The slots of a batch's routed accounts, as routing found them.
#[derive(Default)]
struct PayerSlots {
    /// Of the accounts whose spec routing had (one per account).
    slots: Vec<Slot>,
    /// The accounts whose spec it had not.
    unknown: Vec<AccountId>,
}

impl Ledger {
    /// Starts the ledger's arbiters, relay and registry. Call inside a running actix system.
    ///
    /// With `config.arbiters == 0` every actor runs on the calling arbiter: a caller on that
    /// same thread then talks to its actors without crossing threads.
    ///
    /// Panics if `config.commit_window` is out of range ([`crate::config::CommitWindow::is_valid`])
    /// or `config.commit_client_items` is not within 1–8,190.
    pub fn start(store: Arc<dyn Store>, config: LedgerConfig) -> Ledger {
        assert!(
            config.commit_window.is_valid(),
            "commit window bounds out of range: {:?}",
            config.commit_window
        );
        assert!(
            (1..=BATCH_COMMANDS_MAX).contains(&config.commit_client_items),
            "commit_client_items out of range: {}",
            config.commit_client_items
        );
        let arbiters: Vec<Arbiter> = (0..config.arbiters).map(|_| Arbiter::new()).collect();
        for arbiter in &arbiters {
            // Account actors commit from these threads: a remote store (and the relay's
            // links to peer DCs) then serve them on connections of the thread's own.
            arbiter.spawn_fn(wire::local_io::local_io_here);
        }
        let handles: Vec<ArbiterHandle> = if arbiters.is_empty() {
            vec![Arbiter::current()]
        } else {
            arbiters.iter().map(Arbiter::handle).collect()
        };
        let relay_arbiter = handles[0].clone();
        let shared = Arc::new(Shared::new(store, config, handles));
        let relay_shared = Arc::clone(&shared);
        let relay =
            OutboxRelay::start_in_arbiter(&relay_arbiter, move |_| OutboxRelay::new(relay_shared));
        shared.set_relay(relay);
        for (index, arbiter) in shared.arbiters().iter().enumerate() {
            let keeper_shared = Arc::clone(&shared);
            crate::account::Housekeeper::start_in_arbiter(arbiter, move |_| {
                crate::account::Housekeeper::new(keeper_shared, index)
            });
        }
        Ledger {
            shared,
            _arbiters: Arc::new(arbiters),
        }
    }

    pub fn stats(&self) -> &Arc<LedgerStats> {
        &self.shared.stats
    }

    pub fn keyspace(&self) -> Keyspace {
        self.shared.space
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Number of live account actors.
    pub fn active_accounts(&self) -> usize {
        self.shared.active_accounts()
    }

    /// DC mode: installs the ownership table the node loaded (ignored unless newer). A
    /// table that changed asks the relay to rescan the outbox of the slots now owned
    /// (a takeover hands this DC the outbox entries of the dead DC's payers).
    pub fn set_ownership(&self, table: Arc<OwnershipTable>) -> bool {
        let changed = self.shared.set_ownership(table);
        if changed {
            self.shared.request_outbox_rescan();
        }
        changed
    }

    /// The ownership table as last installed.
    pub fn ownership(&self) -> Arc<OwnershipTable> {
        self.shared.ownership()
    }

    /// DC mode: where credit legs for payees of other DCs go. Set once.
    pub fn set_forwarder(&self, forwarder: Arc<dyn CreditForwarder>) {
        self.shared.set_forwarder(forwarder);
    }

    /// DC mode: credit legs (outbox key and value) another DC sent this one. Legs outside
    /// this ledger's outbox or that do not decode are refused (counted and logged); the
    /// rest go to local payees. They are not read back from the store first: the payee's
    /// commit requires each leg's outbox entry to hold exactly the leg's value, so a leg
    /// already applied (a duplicate, a peer's rescan) or never written fails that
    /// precondition, is settled as done and is never applied (INV-3). Peer legs are almost
    /// always fresh (sent right after the payer's durable commit), and a store read per leg
    /// was a round trip and a lookup for nothing.
    /// Returns how many were taken.
    pub fn deliver_from_peer(&self, legs: Vec<KeyValue>) -> usize {
        let prefix = self.shared.space.outbox_prefix();
        let mut taken = Vec::with_capacity(legs.len());
        let mut refused = 0u64;
        for (key, value) in legs {
            if !key.starts_with(&prefix) {
                refused += 1;
                continue;
            }
            match records::decode::<OutboxRecord>("outbox", &value) {
                Ok(record) => taken.push(CreditLeg::new(&key, &value, record, false)),
                Err(_) => refused += 1,
            }
        }
        if refused > 0 {
            metrics::counter!("tessera_actors_peer_legs_refused_total").increment(refused);
            tracing::warn!(refused, "refused credit legs from a peer DC");
        }
        let count = taken.len();
        if count > 0
            && self
                .shared
                .relay()
                .try_send(DeliverFromPeer(taken))
                .is_err()
        {
            // The relay is saturated: the payer DC's rescan sends these again.
            metrics::counter!("tessera_actors_peer_legs_dropped_total").increment(count as u64);
            return 0;
        }
        count
    }

    /// An account's statement: its postings with sequence numbers `>= from_seq`, oldest
    /// first, at most `limit` (≤ [`STATEMENT_POSTINGS_MAX`]); page with the last `seq` + 1.
    /// Postings are immutable: a page once read never changes.
    pub async fn statement(
        &self,
        account: &AccountId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PostingRecord)>, ErrorCode> {
        if limit == 0 || limit > STATEMENT_POSTINGS_MAX {
            return Err(ErrorCode::InvalidLimit);
        }
        self.load_spec(account).await?;
        cells::ledger::statement::read(
            self.shared.store.as_ref(),
            self.shared.space,
            account,
            from_seq,
            limit,
        )
        .await
        .map_err(|error| error.code())
    }

    /// Runs a batch whose split accounts are already mapped onto their parts; `known`
    /// holds the routings already resolved (of accounts that exist). With `known_complete`,
    /// it holds the routing of every account the batch names, and the batch creates none. With
    /// `seen_holds`, releases and captures of holds this ledger remembers creating are
    /// routed without reading their records (see [`crate::seen_holds`]), and those an actor
    /// finds inactive run again on their records (see [`HoldWork`]; a run again has no
    /// `seen_holds`, so it is the last).
    async fn execute_plain(
        &self,
        commands: Vec<Command>,
        known: Specs,
        known_complete: bool,
        seen_holds: bool,
    ) -> Result<Vec<CommandResult>, BatchError> {
        if commands.len() > BATCH_COMMANDS_MAX {
            return Err(BatchError::TooLarge {
                len: commands.len(),
            });
        }
        let mut results: Vec<Option<CommandResult>> = vec![None; commands.len()];
        mark_duplicate_ids(&commands, &mut results);
        self.create_accounts(&commands, &mut results).await;
        let specs = if known_complete {
            known
        } else {
            match self.referenced_specs(&commands, &results, known).await {
                Ok(specs) => specs,
                Err(code) => return Ok(fill(results, code)),
            }
        };
        let mut holds = match self.referenced_holds(&commands, &results, seen_holds).await {
            Ok(holds) => holds,
            Err(code) => return Ok(fill(results, code)),
        };
        let mut hold_work = HoldWork::new(seen_holds);
        let mut routed = Routed::with_capacity(commands.len());
        // The slot of each account routed to, from the spec `route` read anyway; the gate
        // looks up the accounts whose spec it had not (a capture's payer the batch does
        // not name otherwise).
        let mut payers = PayerSlots::default();
        payers.slots.reserve(commands.len());
        for (index, command) in commands.into_iter().enumerate() {
            if results[index].is_some() {
                continue;
            }
            hold_work.note(index, &command);
            match self.route(command, &specs, &mut holds) {
                Ok(Route::Actor(account, command, routing)) => {
                    let item = Item {
                        index,
                        work: Work::Client(command),
                        settled: None,
                    };
                    match routed.entry(account) {
                        std::collections::hash_map::Entry::Occupied(items) => {
                            items.into_mut().push(item)
                        }
                        std::collections::hash_map::Entry::Vacant(vacant) => {
                            match routing {
                                Some(routing) => payers.slots.push(routing.slot),
                                None => payers.unknown.push(vacant.key().clone()),
                            }
                            // Most accounts of a batch get one item: room for one (`vec!`
                            // allocates exactly), not the four a first push reserves.
                            vacant.insert(vec![item]);
                        }
                    }
                }
                Ok(Route::Here(command)) => {
                    results[index] = Some(self.lookup(&command, &specs).await)
                }
                Err(code) => results[index] = Some(Err(code)),
            }
        }
        let entered = self
            .enter_gate(&mut routed, &specs, payers, &mut results)
            .await;
        self.dispatch(routed, &mut results).await;
        drop(entered);
        let again = hold_work.settle(&self.shared.seen_holds, &results);
        if !again.is_empty() {
            // Found inactive by an actor that did not know how they ended: run again on
            // the records (which hold the final states the answers need).
            let (indexes, commands): (Vec<usize>, Vec<Command>) = again.into_iter().unzip();
            let answers =
                Box::pin(self.execute_plain(commands, Specs::new(), false, false)).await?;
            for (index, answer) in indexes.into_iter().zip(answers) {
                results[index] = Some(answer);
            }
        }
        // Every command was settled before dispatch or sent to an actor; one still without
        // an answer went to an actor that stopped before answering: nothing it had not
        // answered committed without its caller hearing of it, except an unknown outcome.
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ErrorCode::OutcomeUnknown)))
            .collect())
    }

    /// Counts the batch into the freeze gate for the payer slots it touches. Commands for
    /// slots being handed over wait (at most [`FREEZE_WAIT_MAX`]) and then, if still
    /// frozen, are answered `unavailable` (retryable). In DC mode, commands for users this
    /// DC's table says another DC owns are answered `not_owner` without reaching an actor.
    /// `payers`: the slots of the accounts in `routed`, as far as routing knew them.
    async fn enter_gate(
        &self,
        routed: &mut Routed,
        specs: &Specs,
        payers: PayerSlots,
        results: &mut [Option<CommandResult>],
    ) -> GateGuard {
        // (An account the batch did not resolve, such as a capture's payer, is rare: its
        // routing is looked up in the directory.)
        let routing_of = |account: &AccountId| -> Option<Routing> {
            match specs.get(account) {
                Some(Some(routing)) => Some(*routing),
                _ => self.shared.cached_routing(account),
            }
        };
        let table = self.shared.ownership();
        let mut payers = Some(payers);
        // (A ledger that was never given a table relies on its fences alone.)
        if let (Some(me), true) = (&self.shared.config.dc, table.version > 0) {
            // Accounts may leave `routed` here: their slots are looked up again below.
            payers = None;
            let mut foreign: Vec<AccountId> = Vec::new();
            if table.users.is_empty() {
                // Without a whitelist a user's owner is its slot's.
                foreign.extend(
                    routed
                        .keys()
                        .filter(|account| {
                            routing_of(account).is_some_and(|routing| {
                                table.slot_owner(routing.slot).map(|o| &o.dc) != Some(me)
                            })
                        })
                        .cloned(),
                );
            } else {
                // A whitelisted user's owner is its own: it takes the user's id, in the spec.
                let accounts: Vec<AccountId> = routed.keys().cloned().collect();
                if let Ok(specs) = self.shared.full_specs(accounts).await {
                    foreign.extend(
                        specs
                            .into_iter()
                            .filter(|(_, spec)| {
                                table.owner_of(&spec.user).map(|o| &o.dc) != Some(me)
                            })
                            .map(|(account, _)| account),
                    );
                }
            }
            for account in foreign {
                for item in routed.remove(&account).unwrap_or_default() {
                    results[item.index] = Some(Err(ErrorCode::NotOwner));
                }
            }
        }
        // From `route` when it knew them all: a second lookup of every account's spec here
        // was 8 % of the driver's samples in `holds`.
        let slot = |account: &AccountId| routing_of(account).map(|routing| routing.slot);
        let mut slots: Vec<Slot> = match payers {
            Some(PayerSlots { mut slots, unknown }) => {
                slots.extend(unknown.iter().filter_map(slot));
                slots
            }
            None => routed.keys().filter_map(slot).collect(),
        };
        slots.sort_unstable();
        slots.dedup();
        let deadline = std::time::Instant::now() + FREEZE_WAIT_MAX;
        loop {
            match self.shared.gate.try_enter(&slots) {
                Ok(()) => {
                    return GateGuard {
                        shared: Arc::clone(&self.shared),
                        slots,
                    }
                }
                Err(frozen) if std::time::Instant::now() >= deadline => {
                    metrics::counter!("tessera_actors_frozen_refusals_total").increment(1);
                    let frozen_accounts: Vec<AccountId> = routed
                        .keys()
                        .filter(|account| {
                            routing_of(account)
                                .is_some_and(|routing| frozen.contains(&routing.slot))
                        })
                        .cloned()
                        .collect();
                    for account in frozen_accounts {
                        for item in routed.remove(&account).unwrap_or_default() {
                            results[item.index] = Some(Err(ErrorCode::Unavailable));
                        }
                    }
                    slots.retain(|slot| !frozen.contains(slot));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            }
        }
    }

    /// Freezes `first..=last` (new batches for them wait) and waits until the batches in
    /// flight there are answered, at most `drain_max`. Returns whether they drained.
    pub async fn freeze(&self, first: Slot, last: Slot, drain_max: std::time::Duration) -> bool {
        self.shared.gate.set_frozen(first, last, true);
        let deadline = std::time::Instant::now() + drain_max;
        while self.shared.gate.busy(first, last) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        true
    }

    /// Lets batches for `first..=last` in again.
    pub fn thaw(&self, first: Slot, last: Slot) {
        self.shared.gate.set_frozen(first, last, false);
    }

    async fn dispatch(&self, routed: Routed, results: &mut [Option<CommandResult>]) {
        // One list of answers for every actor of the batch (not a channel each).
        let answers = BatchAnswers::new(results.len());
        self.shared.reserve_each(routed, |_, items, place| {
            let delivery = Delivery::Execute {
                items,
                reply: answers.reply(),
            };
            let refused = match place {
                Ok(place) => place.send(delivery).err(),
                Err(code) => Some((delivery, code)),
            };
            if let Some((Delivery::Execute { items, .. }, code)) = refused {
                metrics::counter!("tessera_actors_overloaded_total").increment(1);
                items
                    .iter()
                    .for_each(|item| results[item.index] = Some(Err(code)));
            }
        });
        for (index, answer) in answers.all().await {
            let slot = &mut results[index];
            assert!(slot.is_none(), "command {index} answered twice");
            *slot = Some(answer);
        }
    }

    /// Decides which actor runs `command`, or that it is a lookup served here. Takes the
    /// command: the actor gets it without a copy.
    fn route(
        &self,
        command: Command,
        specs: &Specs,
        holds: &mut HashMap<HoldId, Option<HoldRef>>,
    ) -> Result<Route, ErrorCode> {
        let spec = |id: &AccountId| -> Result<Routing, ErrorCode> {
            specs
                .get(id)
                .copied()
                .flatten()
                .ok_or(ErrorCode::UnknownAccount)
        };
        // Taken, not cloned: a batch names each hold once (repeats are settled before).
        let mut hold = |id: &HoldId| holds.remove(id).flatten().ok_or(ErrorCode::UnknownHold);
        match command {
            Command::CreateAccount(_) => Err(ErrorCode::Internal),
            Command::Transfer(request) => {
                if request.from == request.to {
                    return Err(ErrorCode::SameAccount);
                }
                let (from, to) = (spec(&request.from)?, spec(&request.to)?);
                if from.currency != request.currency || to.currency != request.currency {
                    return Err(ErrorCode::CurrencyMismatch);
                }
                Ok(Route::Actor(
                    request.from.clone(),
                    AccountCommand::Transfer(request),
                    Some(from),
                ))
            }
            Command::Hold(request) => {
                let account = spec(&request.account)?;
                if account.currency != request.currency {
                    return Err(ErrorCode::CurrencyMismatch);
                }
                Ok(Route::Actor(
                    request.account.clone(),
                    AccountCommand::Hold(request),
                    Some(account),
                ))
            }
            Command::Release(id) => {
                let record = hold(&id)?;
                let account = record.account().clone();
                let payer = spec(&account).ok();
                Ok(Route::Actor(
                    account,
                    AccountCommand::Release(id, record.snapshot()),
                    payer,
                ))
            }
            Command::Capture(request) => {
                let record = hold(&request.hold)?;
                if *record.account() == request.to {
                    return Err(ErrorCode::SameAccount);
                }
                if spec(&request.to)?.currency != record.currency() {
                    return Err(ErrorCode::CurrencyMismatch);
                }
                let account = record.account().clone();
                let payer = spec(&account).ok();
                Ok(Route::Actor(
                    account,
                    AccountCommand::Capture(request, record.snapshot()),
                    payer,
                ))
            }
            Command::LookupAccount(id) => {
                let account = spec(&id)?;
                Ok(Route::Actor(id, AccountCommand::Lookup, Some(account)))
            }
            command @ (Command::LookupTransfer(_) | Command::LookupHold(_)) => {
                Ok(Route::Here(command))
            }
        }
    }

    async fn lookup(&self, command: &Command, specs: &Specs) -> CommandResult {
        let space = self.shared.space;
        let store = &self.shared.store;
        match command {
            Command::LookupTransfer(id) => {
                let bytes = store
                    .get(&space.transfer(id))
                    .await
                    .map_err(|_| ErrorCode::Unavailable)?;
                let record: TransferRecord =
                    decode("transfer", bytes.ok_or(ErrorCode::UnknownTransfer)?)?;
                let status = match record.outcome {
                    TransferOutcome::Rejected(code) => TransferStatus::Rejected(code),
                    TransferOutcome::Accepted => {
                        let slot = match specs.get(&record.from).copied().flatten() {
                            Some(payer) => payer.slot,
                            None => slot_of(&self.load_spec(&record.from).await?.user),
                        };
                        let key = space.outbox(slot, OutboxKind::Transfer, id.as_str());
                        match store.get(&key).await.map_err(|_| ErrorCode::Unavailable)? {
                            Some(_) => TransferStatus::Accepted,
                            None => TransferStatus::Completed,
                        }
                    }
                };
                Ok(Outcome::Transfer(Box::new(TransferView {
                    id: id.clone(),
                    from: record.from,
                    to: record.to,
                    amount: record.amount,
                    currency: record.currency,
                    status,
                })))
            }
            Command::LookupHold(id) => {
                let bytes = store
                    .get(&space.hold(id))
                    .await
                    .map_err(|_| ErrorCode::Unavailable)?;
                let record: HoldRecord = decode("hold", bytes.ok_or(ErrorCode::UnknownHold)?)?;
                Ok(Outcome::Hold(Box::new(HoldView {
                    id: id.clone(),
                    account: record.account,
                    amount: record.amount,
                    currency: record.currency,
                    expires_at_ms: record.expires_at_ms,
                    state: record.state,
                })))
            }
            _ => Err(ErrorCode::Internal),
        }
    }

    async fn load_spec(&self, account: &AccountId) -> Result<Arc<AccountSpec>, ErrorCode> {
        self.shared
            .spec(account)
            .await?
            .ok_or(ErrorCode::UnknownAccount)
    }

    /// Specs of every account the batch names (creations are already done).
    async fn referenced_specs(
        &self,
        commands: &[Command],
        results: &[Option<CommandResult>],
        mut known: Specs,
    ) -> Result<Specs, ErrorCode> {
        let wanted = commands
            .iter()
            .zip(results)
            .filter(|(_, result)| result.is_none())
            .flat_map(|(command, _)| named_accounts(command));
        let missing = self.shared.cached_into(wanted, &mut known);
        self.shared.read_specs(missing, &mut known).await?;
        Ok(known)
    }

    /// What routing needs of every hold the batch releases or captures: where it lies, if
    /// `seen` and this ledger remembers creating it, else its record (`None`: no such hold).
    async fn referenced_holds(
        &self,
        commands: &[Command],
        results: &[Option<CommandResult>],
        seen: bool,
    ) -> Result<HashMap<HoldId, Option<HoldRef>>, ErrorCode> {
        let ids: Vec<HoldId> = commands
            .iter()
            .zip(results)
            .filter(|(_, result)| result.is_none())
            .filter_map(|(command, _)| match command {
                Command::Release(id) => Some(id.clone()),
                Command::Capture(request) => Some(request.hold.clone()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut holds = HashMap::with_capacity(ids.len());
        let ids = if seen {
            for (id, route) in self.shared.seen_holds.routes(&ids) {
                holds.insert(id, Some(HoldRef::Seen(route)));
            }
            ids.into_iter()
                .filter(|id| !holds.contains_key(id))
                .collect()
        } else {
            ids
        };
        if ids.is_empty() {
            return Ok(holds);
        }
        let keys = ids.iter().map(|id| self.shared.space.hold(id)).collect();
        let values = self
            .shared
            .store
            .get_many(keys)
            .await
            .map_err(|_| ErrorCode::Unavailable)?;
        for (id, value) in ids.into_iter().zip(values) {
            let record = match value {
                Some(bytes) => Some(HoldRef::Read(decode("hold", bytes)?)),
                None => None,
            };
            holds.insert(id, record);
        }
        Ok(holds)
    }

    /// Creates the batch's accounts in one transaction (retrying without the ones that
    /// already exist).
    async fn create_accounts(&self, commands: &[Command], results: &mut [Option<CommandResult>]) {
        let mut todo: Vec<(usize, AccountSpec)> = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            if let (Command::CreateAccount(spec), None) = (command, &results[index]) {
                match validate_account_spec(spec) {
                    Ok(()) => todo.push((index, spec.clone())),
                    Err(code) => results[index] = Some(Err(code)),
                }
            }
        }
        for _ in 0..CREATE_ATTEMPTS_MAX {
            if todo.is_empty() {
                return;
            }
            let Some(fences) = self.owned_fences(&mut todo, results).await else {
                return;
            };
            if todo.is_empty() {
                return;
            }
            match self.try_create(&todo, &fences).await {
                Ok(()) => {
                    for (index, spec) in todo.drain(..) {
                        self.shared.remember(Arc::new(spec));
                        results[index] = Some(Ok(Outcome::AccountCreated));
                    }
                }
                Err(CommitError::PreconditionFailed { keys }) => {
                    self.settle_existing(&mut todo, &keys, results).await;
                }
                Err(error) if error.is_retryable() => continue,
                Err(error) => {
                    let code = if error.maybe_committed() {
                        ErrorCode::OutcomeUnknown
                    } else {
                        ErrorCode::Unavailable
                    };
                    todo.drain(..)
                        .for_each(|(index, _)| results[index] = Some(Err(code)));
                }
            }
        }
        todo.drain(..)
            .for_each(|(index, _)| results[index] = Some(Err(ErrorCode::Unavailable)));
    }

    /// Reads the fence of every user in `todo`; in DC mode answers `not_owner` for (and
    /// drops) the accounts of users this DC does not own. `None` when the store failed
    /// (every item then has its answer).
    async fn owned_fences(
        &self,
        todo: &mut Vec<(usize, AccountSpec)>,
        results: &mut [Option<CommandResult>],
    ) -> Option<HashMap<UserId, Fence>> {
        let mut fences: HashMap<UserId, Fence> = HashMap::new();
        for (_, spec) in todo.iter() {
            if fences.contains_key(&spec.user) {
                continue;
            }
            match Fence::read(&*self.shared.store, &spec.user).await {
                Ok(fence) => fences.insert(spec.user.clone(), fence),
                Err(_) => {
                    todo.drain(..)
                        .for_each(|(index, _)| results[index] = Some(Err(ErrorCode::Unavailable)));
                    return None;
                }
            };
        }
        if let Some(dc) = &self.shared.config.dc {
            todo.retain(|(index, spec)| {
                let owner = fences[&spec.user].owner().ok().flatten();
                let owned = owner.is_some_and(|o| &o.dc == dc);
                if !owned {
                    results[*index] = Some(Err(ErrorCode::NotOwner));
                }
                owned
            });
        }
        Some(fences)
    }

    async fn try_create(
        &self,
        todo: &[(usize, AccountSpec)],
        fences: &HashMap<UserId, Fence>,
    ) -> Result<(), CommitError> {
        let mut txn = self.shared.store.begin().map_err(CommitError::Rejected)?;
        for fence in fences.values() {
            fence.apply(&mut *txn).map_err(CommitError::Rejected)?;
        }
        for (_, spec) in todo {
            let key = self.shared.space.account(&spec.id);
            let record = AccountRecord {
                spec: spec.clone(),
                balance: 0,
                balance_through_seq: 0,
            };
            txn.require(&key, None).map_err(CommitError::Rejected)?;
            txn.set(&key, &records::encode(&record))
                .map_err(CommitError::Rejected)?;
        }
        txn.commit().await.map(|_| ())
    }

    async fn settle_existing(
        &self,
        todo: &mut Vec<(usize, AccountSpec)>,
        failed: &[Vec<u8>],
        results: &mut [Option<CommandResult>],
    ) {
        let space = self.shared.space;
        let (existing, rest): (Vec<_>, Vec<_>) = todo
            .drain(..)
            .partition(|(_, spec)| failed.contains(&space.account(&spec.id)));
        *todo = rest;
        let keys = existing
            .iter()
            .map(|(_, spec)| space.account(&spec.id))
            .collect();
        let values = self.shared.store.get_many(keys).await;
        for (position, (index, spec)) in existing.into_iter().enumerate() {
            let stored = values.as_ref().ok().and_then(|v| v[position].clone());
            results[index] = Some(
                match stored.map(|bytes| decode::<AccountRecord>("account", bytes)) {
                    Some(Ok(record)) if record.spec == spec => Err(ErrorCode::AccountExists),
                    Some(Ok(_)) => Err(ErrorCode::AccountExistsWithDifferentFields),
                    Some(Err(code)) => Err(code),
                    None => Err(ErrorCode::Unavailable),
                },
            );
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    name: &'static str,
    bytes: Vec<u8>,
) -> Result<T, ErrorCode> {
    records::decode(name, &bytes).map_err(|error| {
        tracing::error!(%error, "undecodable record");
        ErrorCode::Internal
    })
}

fn fill(results: Vec<Option<CommandResult>>, code: ErrorCode) -> Vec<CommandResult> {
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(code)))
        .collect()
}

/// The accounts whose specs `command` needs to be routed and checked (a capture's payer
/// comes from its hold record).
fn named_accounts(command: &Command) -> impl Iterator<Item = &AccountId> {
    let named = match command {
        Command::Transfer(request) => [Some(&request.from), Some(&request.to)],
        Command::Hold(request) => [Some(&request.account), None],
        Command::Capture(request) => [Some(&request.to), None],
        Command::LookupAccount(id) => [Some(id), None],
        _ => [None, None],
    };
    named.into_iter().flatten()
}

/// Marks every repeat of an id within the batch (the first occurrence runs).
fn mark_duplicate_ids(commands: &[Command], results: &mut [Option<CommandResult>]) {
    /// An id that must not repeat in a batch, by kind (a release and a capture of one hold
    /// are one kind: both end it). Hashes the ids' own hashes, not their texts.
    #[derive(PartialEq, Eq, Hash)]
    enum Unique<'a> {
        Account(&'a AccountId),
        Transfer(&'a TransferId),
        Hold(&'a HoldId),
        Settle(&'a HoldId),
    }
    let mut seen: HashSet<Unique<'_>> = HashSet::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        let key = match command {
            Command::CreateAccount(spec) => Unique::Account(&spec.id),
            Command::Transfer(request) => Unique::Transfer(&request.id),
            Command::Hold(request) => Unique::Hold(&request.id),
            Command::Release(id) => Unique::Settle(id),
            Command::Capture(request) => Unique::Settle(&request.hold),
            _ => continue,
        };
        if !seen.insert(key) {
            results[index] = Some(Err(ErrorCode::DuplicateIdInBatch));
        }
    }
}

/// Where [`Ledger::route`] sends a command.
enum Route {
    /// To this account's actor, as this command; with the account's routing when it was at
    /// hand.
    Actor(AccountId, AccountCommand, Option<Routing>),
    /// Nowhere: a lookup the ledger serves itself.
    Here(Command),
}

/// How one command of a client's batch maps onto the batch the actors run.
enum Expanded {
    /// The command at this inner position answers it.
    One(usize),
    /// A split account's creation: the parent, then its parts.
    Create(Vec<usize>),
    /// A split account's lookup: its parts, summed into the parent's view.
    Lookup(Arc<AccountSpec>, Vec<usize>),
}

impl Ledger {
    /// Runs a batch of commands; one result per command, in order.
    pub async fn execute(&self, commands: Vec<Command>) -> Result<Vec<CommandResult>, BatchError> {
        if commands.len() > BATCH_COMMANDS_MAX {
            return Err(BatchError::TooLarge {
                len: commands.len(),
            });
        }
        let (splits, known) = match self.split_specs(&commands).await {
            Ok((splits, (known, all_found))) if splits.is_empty() => {
                // Every account the batch names was looked up: if all exist and the batch
                // creates none, routing needs no second look.
                let complete = all_found
                    && !commands
                        .iter()
                        .any(|c| matches!(c, Command::CreateAccount(_)));
                let mut results = self.execute_plain(commands, known, complete, true).await?;
                self.unsplit_lookups(&mut results).await;
                return Ok(results);
            }
            Ok((splits, (known, _))) => (splits, known),
            Err(code) => return Ok(vec![Err(code); commands.len()]),
        };
        let (inner, plan) = match expand(&commands, &splits) {
            Ok(expanded) => expanded,
            Err(code) => return Ok(vec![Err(code); commands.len()]),
        };
        if inner.len() > BATCH_COMMANDS_MAX {
            return Err(BatchError::TooLarge { len: inner.len() });
        }
        self.rebalance_for(&inner, &splits).await;
        let results = self.execute_plain(inner, known, false, true).await?;
        let mut answers: Vec<CommandResult> = plan
            .into_iter()
            .map(|expanded| match expanded {
                Expanded::One(i) => results[i].clone(),
                Expanded::Create(indexes) => {
                    let mut outcome = Ok(Outcome::AccountCreated);
                    for i in &indexes {
                        match (&outcome, &results[*i]) {
                            (_, Ok(_)) => {}
                            (Ok(_), Err(ErrorCode::AccountExists)) => {
                                outcome = Err(ErrorCode::AccountExists)
                            }
                            (Err(ErrorCode::AccountExists), Err(ErrorCode::AccountExists)) => {}
                            (_, Err(code)) => outcome = Err(*code),
                        }
                    }
                    outcome
                }
                Expanded::Lookup(spec, indexes) => {
                    let (mut balance, mut frozen, mut available) = (0i128, 0i128, 0i128);
                    for i in indexes {
                        match &results[i] {
                            Ok(Outcome::Account(view)) => {
                                balance += view.balance;
                                frozen += view.frozen;
                                available += view.available;
                            }
                            Ok(_) => return Err(ErrorCode::Internal),
                            Err(code) => return Err(*code),
                        }
                    }
                    Ok(Outcome::Account(Box::new(cells::ledger::AccountView {
                        spec: (*spec).clone(),
                        balance,
                        frozen,
                        available,
                    })))
                }
            })
            .collect();
        self.unsplit_lookups(&mut answers).await;
        Ok(answers)
    }

    /// Transfer and hold views show a split account, not the part that ran the command.
    async fn unsplit_lookups(&self, results: &mut [CommandResult]) {
        let mut parents = Vec::new();
        for result in results.iter() {
            let ids: Vec<&AccountId> = match result {
                Ok(Outcome::Transfer(view)) => vec![&view.from, &view.to],
                Ok(Outcome::Hold(view)) => vec![&view.account],
                _ => continue,
            };
            parents.extend(
                ids.into_iter()
                    .filter_map(|id| split::parent_of(id).map(|(p, _)| p)),
            );
        }
        if parents.is_empty() {
            return;
        }
        parents.sort();
        parents.dedup();
        let Ok(specs) = self.shared.specs(parents).await else {
            return;
        };
        let split: Vec<AccountId> = specs
            .into_iter()
            .filter(|(_, routing)| routing.is_some_and(|routing| routing.split))
            .map(|(id, _)| id)
            .collect();
        let Ok(splits) = self.shared.full_specs(split).await else {
            return;
        };
        if splits.is_empty() {
            return;
        }
        for result in results.iter_mut() {
            *result = unsplit_view(result.clone(), &splits);
        }
    }

    /// Specs of the split accounts the batch names (created in it or existing), and the
    /// specs found of every account it names, with whether all of those exist.
    async fn split_specs(
        &self,
        commands: &[Command],
    ) -> Result<(HashMap<AccountId, Arc<AccountSpec>>, (Specs, bool)), ErrorCode> {
        let mut splits = HashMap::new();
        let mut parents = Vec::new();
        for command in commands {
            match command {
                Command::CreateAccount(spec) if matches!(spec.mode, HotMode::Split { .. }) => {
                    splits.insert(spec.id.clone(), Arc::new(spec.clone()));
                }
                Command::Transfer(request) => {
                    for id in [&request.from, &request.to] {
                        if let Some((parent, _)) = split::parent_of(id) {
                            parents.push(parent);
                        }
                    }
                }
                _ => {}
            }
        }
        let named = commands
            .iter()
            .flat_map(named_accounts)
            .chain(parents.iter());
        let mut found = Specs::with_capacity(2 * commands.len());
        let missing = self.shared.cached_into(named, &mut found);
        self.shared.read_specs(missing, &mut found).await?;
        // Accounts not found may be created by this very batch: only specs that exist are
        // passed on (specs never change once created).
        let all_found = found.values().all(Option::is_some);
        if !all_found {
            found.retain(|_, spec| spec.is_some());
        }
        let split_accounts: Vec<AccountId> = found
            .iter()
            .filter(|(id, routing)| {
                routing.is_some_and(|routing| routing.split) && !splits.contains_key(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        splits.extend(self.shared.full_specs(split_accounts).await?);
        Ok((splits, (found, all_found)))
    }

    /// Tops up every part this batch debits beyond what it holds, from its siblings, when
    /// the split account as a whole can cover it; waits (bounded) for the top-ups' credit
    /// legs. Customer accounts only (system accounts may go negative).
    async fn rebalance_for(
        &self,
        inner: &[Command],
        splits: &HashMap<AccountId, Arc<AccountSpec>>,
    ) {
        let mut need: HashMap<AccountId, HashMap<u16, i128>> = HashMap::new();
        for command in inner {
            let (account, amount) = match command {
                Command::Transfer(request) => (&request.from, request.amount),
                Command::Hold(request) => (&request.account, request.amount),
                _ => continue,
            };
            let Some((parent, k)) = split::parent_of(account) else {
                continue;
            };
            let Some(spec) = splits.get(&parent) else {
                continue;
            };
            if spec.kind != AccountKind::Customer {
                continue;
            }
            *need.entry(parent).or_default().entry(k).or_insert(0) +=
                i128::from(amount.minor_units());
        }
        for (parent, wanted) in need {
            let HotMode::Split { parts } = splits[&parent].mode else {
                continue;
            };
            let Ok(ids) = split::part_ids(&parent, parts) else {
                continue;
            };
            let lookups = ids.iter().cloned().map(Command::LookupAccount).collect();
            let Ok(views) = self.execute_plain(lookups, Specs::new(), false, true).await else {
                continue;
            };
            // What each part has beyond this batch's debits on it (negative: short).
            let mut surplus: Vec<i128> = views
                .iter()
                .map(|v| match v {
                    Ok(Outcome::Account(view)) => view.available,
                    _ => 0,
                })
                .collect();
            for (k, amount) in &wanted {
                surplus[usize::from(*k)] -= amount;
            }
            let nonce = self.shared.next_rebalance_nonce();
            let mut moves = Vec::new();
            for k in 0..parts {
                let short = usize::from(k);
                if surplus[short] >= 0 {
                    continue;
                }
                let Some(plan) = split::plan_top_up(&surplus, short, 0) else {
                    continue; // the whole account cannot cover it: the debit is refused
                };
                for (donor, take) in plan {
                    surplus[donor] -= take;
                    surplus[short] += take;
                    let Ok(units) = u64::try_from(take) else {
                        continue;
                    };
                    let Ok(amount) = cells::money::Amount::from_minor_units(units) else {
                        continue;
                    };
                    moves.push(Command::Transfer(cells::ledger::TransferRequest {
                        id: split::rebalance_id(&parent, nonce, donor as u16, k),
                        from: ids[donor].clone(),
                        to: ids[short].clone(),
                        amount,
                        currency: splits[&parent].currency,
                    }));
                }
            }
            if moves.is_empty() {
                continue;
            }
            metrics::counter!("tessera_actors_split_rebalances_total")
                .increment(moves.len() as u64);
            let lookups: Vec<Command> = moves
                .iter()
                .filter_map(|m| match m {
                    Command::Transfer(t) => Some(Command::LookupTransfer(t.id.clone())),
                    _ => None,
                })
                .collect();
            let Ok(answers) = self.execute_plain(moves, Specs::new(), false, true).await else {
                continue;
            };
            if answers.iter().any(|a| a.is_err()) {
                tracing::debug!(?answers, "a rebalancing transfer was refused");
            }
            // Wait until the top-ups are credited (the debits then see the funds).
            let deadline = std::time::Instant::now() + split::REBALANCE_WAIT_MAX;
            while std::time::Instant::now() < deadline {
                let Ok(status) = self
                    .execute_plain(lookups.clone(), Specs::new(), false, true)
                    .await
                else {
                    break;
                };
                let done = status.iter().zip(&answers).all(|(s, a)| {
                    a.is_err()
                        || matches!(s, Ok(Outcome::Transfer(v)) if v.status == TransferStatus::Completed)
                });
                if done {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
}

/// The batch the actors run for `commands`, and how to answer each command from it.
fn expand(
    commands: &[Command],
    splits: &HashMap<AccountId, Arc<AccountSpec>>,
) -> Result<(Vec<Command>, Vec<Expanded>), ErrorCode> {
    let parts_of = |id: &AccountId| {
        splits.get(id).and_then(|spec| match spec.mode {
            HotMode::Split { parts } => Some(parts),
            _ => None,
        })
    };
    let onto = |id: &AccountId, key: &str| -> Result<AccountId, ErrorCode> {
        match parts_of(id) {
            Some(parts) => split::part_id(id, split::part_for(key, parts)),
            None => Ok(id.clone()),
        }
    };
    let mut inner = Vec::with_capacity(commands.len());
    let mut plan = Vec::with_capacity(commands.len());
    for command in commands {
        match command {
            Command::CreateAccount(spec) if parts_of(&spec.id).is_some() => {
                let parts = parts_of(&spec.id).expect("checked");
                let mut indexes = vec![inner.len()];
                inner.push(command.clone());
                // Invalid split specs are refused by the parent's own validation; its
                // parts are only created for a valid one.
                if validate_account_spec(spec).is_ok() {
                    for id in split::part_ids(&spec.id, parts)? {
                        indexes.push(inner.len());
                        inner.push(Command::CreateAccount(AccountSpec {
                            id,
                            mode: HotMode::Standard,
                            ..spec.clone()
                        }));
                    }
                }
                plan.push(Expanded::Create(indexes));
            }
            Command::Transfer(request) => {
                let mut request = request.clone();
                if request.from != request.to {
                    request.from = onto(&request.from, request.id.as_str())?;
                    request.to = onto(&request.to, request.id.as_str())?;
                }
                plan.push(Expanded::One(inner.len()));
                inner.push(Command::Transfer(request));
            }
            Command::Hold(request) => {
                let mut request = request.clone();
                request.account = onto(&request.account, request.id.as_str())?;
                plan.push(Expanded::One(inner.len()));
                inner.push(Command::Hold(request));
            }
            Command::Capture(request) => {
                let mut request = request.clone();
                request.to = onto(&request.to, request.hold.as_str())?;
                plan.push(Expanded::One(inner.len()));
                inner.push(Command::Capture(request));
            }
            Command::LookupAccount(id) if parts_of(id).is_some() => {
                let parts = parts_of(id).expect("checked");
                let mut indexes = Vec::new();
                for part in split::part_ids(id, parts)? {
                    indexes.push(inner.len());
                    inner.push(Command::LookupAccount(part));
                }
                plan.push(Expanded::Lookup(Arc::clone(&splits[id]), indexes));
            }
            other => {
                plan.push(Expanded::One(inner.len()));
                inner.push(other.clone());
            }
        }
    }
    Ok((inner, plan))
}

/// Shows a split account's part as the account itself in transfer and hold views.
fn unsplit_view(
    result: CommandResult,
    splits: &HashMap<AccountId, Arc<AccountSpec>>,
) -> CommandResult {
    let parent = |id: AccountId| match split::parent_of(&id) {
        Some((parent, _)) if splits.contains_key(&parent) => parent,
        _ => id,
    };
    match result {
        Ok(Outcome::Transfer(mut view)) => {
            view.from = parent(view.from);
            view.to = parent(view.to);
            Ok(Outcome::Transfer(view))
        }
        Ok(Outcome::Hold(mut view)) => {
            view.account = parent(view.account);
            Ok(Outcome::Hold(view))
        }
        other => other,
    }
}
