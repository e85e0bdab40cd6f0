//! A draft: the next commit of an account actor, built from its committed state.
//!
//! Owns the posting rules as they apply to one account: it walks the batched items in
//! order against a scratch copy of the balance (and a change-set of holds), writes their
//! records into one transaction, and decides each item's provisional result. Nothing here
//! touches the actor's committed state: the actor applies the draft's delta only after the
//! store says the transaction is durable.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use cells::ids::{HoldId, TransferId};
use cells::keys::Keyspace;
use cells::ledger::{
    within_limit, CaptureRequest, CommandResult, ErrorCode, HoldRequest, Outcome, TransferRequest,
    BATCH_COMMANDS_MAX, HOLD_EXPIRY_MS_MAX,
};
use cells::records::{
    self, AccountSpec, HoldRecord, HoldState, HotMode, OutboxRecord, PostingBlock, PostingRecord,
    PostingSource, TransferOutcome, TransferRecord,
};
use cells::store::{limits::TRANSACTION_BYTES_MAX, BoxFuture, CommitError, Transaction};

use super::{AccountCommand, ActiveHold, CreditLeg, Job, Loaded, Work};
use crate::registry::Shared;

/// Most bytes one item adds to a transaction (ids are at most 64 bytes, so every key and
/// record an item writes is bounded).
pub(crate) const ITEM_BYTES_MAX: usize = 1_200;
/// Bytes a typical item writes (a transfer's records and precondition, or a credit's), for
/// sizing a transaction's buffers once.
const ITEM_BYTES_TYPICAL: usize = 320;
/// Bytes of the per-commit records (account record, epoch precondition).
const COMMIT_OVERHEAD_BYTES_MAX: usize = 10_000;

/// Holds a draft releases on its own because they expired (beyond its items).
pub(crate) const EXPIRIES_PER_DRAFT_MAX: usize = 64;

const _: () = assert!(
    (BATCH_COMMANDS_MAX + EXPIRIES_PER_DRAFT_MAX) * ITEM_BYTES_MAX + COMMIT_OVERHEAD_BYTES_MAX
        <= TRANSACTION_BYTES_MAX
);

/// Buffers a draft writes keys and values through before the transaction copies them in,
/// and its statement block. Every draft of a thread reuses the same ones (taken when the
/// draft starts, given back when it is sealed), so a record written costs no allocation
/// of its own: drafts allocated and freed several key and value buffers per transfer.
#[derive(Default)]
struct Scratch {
    key: Vec<u8>,
    value: Vec<u8>,
    /// A debit's outbox key (a transfer's own key stays in `key` across its debit).
    outbox_key: Vec<u8>,
    block_key: Vec<u8>,
    block_value: Vec<u8>,
    block: PostingBlock,
}

/// Largest buffer the thread keeps for the next draft (a bigger one is dropped).
const SCRATCH_KEPT_BYTES_MAX: usize = 1 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Scratch {
    fn take() -> Scratch {
        SCRATCH.with_borrow_mut(std::mem::take)
    }

    fn give_back(self) {
        assert!(self.block.is_empty(), "a sealed draft wrote its last block");
        let kept = [
            &self.key,
            &self.value,
            &self.outbox_key,
            &self.block_key,
            &self.block_value,
        ]
        .iter()
        .all(|buffer| buffer.capacity() <= SCRATCH_KEPT_BYTES_MAX);
        if kept {
            SCRATCH.with_borrow_mut(|slot| *slot = self);
        }
    }
}

/// Which kinds of item a draft holds more than one of.
#[derive(Default, Clone, Copy)]
struct Dedup {
    transfers: bool,
    holds: bool,
    credits: bool,
}

/// A built commit and what it will change once durable.
pub(crate) struct Sealed {
    pub commit: BoxFuture<'static, Result<u64, CommitError>>,
    pub outcome: Delta,
}

/// The change a commit makes to the actor's state, and what to tell whom.
pub(crate) struct Delta {
    pub balance: i128,
    pub frozen: i128,
    pub next_seq: u64,
    pub record_balance: i128,
    pub record_through_seq: u64,
    pub holds_added: HashMap<HoldId, ActiveHold>,
    pub holds_removed: HashSet<HoldId>,
    /// Holds that reached a final state in this commit.
    pub finalized: Vec<(HoldId, HoldState)>,
    /// One result per item, in job order, with the item's index in its batch: answering
    /// then reads no item (a commit completes milliseconds after its draft, when the
    /// items, a few per delivery all over the heap, are out of the cache; reading each
    /// one's index there was 70 % of `Reply::answer`'s samples).
    pub results: Vec<(usize, CommandResult)>,
    /// Credit legs to hand to the relay.
    pub credits: Vec<CreditLeg>,
    pub debits: u64,
    pub credits_applied: u64,
}

impl Delta {
    /// Applies the committed change to the actor's state.
    pub fn apply_to(&mut self, state: &mut Loaded) {
        state.balance = self.balance;
        state.frozen = self.frozen;
        state.next_seq = self.next_seq;
        state.record_balance = self.record_balance;
        state.record_through_seq = self.record_through_seq;
        for hold in self.holds_removed.drain() {
            state.remove_hold(&hold);
        }
        for (id, hold) in self.holds_added.drain() {
            state.insert_hold(id, hold);
        }
        debug_assert_eq!(state.expiries, Loaded::index_expiries(&state.holds));
        debug_assert_eq!(
            state.frozen,
            state
                .holds
                .values()
                .map(|h| i128::from(h.record.amount.signed()))
                .sum::<i128>()
        );
    }
}

pub(crate) struct Draft<'a> {
    base: &'a Loaded,
    shared: &'a Shared,
    space: Keyspace,
    /// The wall clock in ms, read once and only by a draft that needs it (holds).
    now_ms: Option<u64>,
    delta: Delta,
    /// Transfers drafted so far, borrowed from the jobs (a second request under an id
    /// gets the first one's result, or `transfer_exists_with_different_fields`).
    batch_transfers: HashMap<&'a TransferId, (&'a TransferRequest, CommandResult)>,
    batch_holds: HashMap<HoldId, (HoldRequest, CommandResult)>,
    /// Outbox keys of the credit legs drafted so far, borrowed from the jobs.
    batch_credits: HashSet<&'a [u8]>,
    /// Whether the draft holds more than one transfer, hold or credit leg (with one, the
    /// matching set above stays empty: nothing can repeat it).
    dedup: Dedup,
    net_requested: bool,
    /// Key and value buffers, and the postings of this commit not yet written (one
    /// statement block per [`records::BLOCK_POSTINGS_MAX`]).
    scratch: Scratch,
    /// The sequence number of the block's first posting.
    block_first_seq: u64,
}

impl<'a> Draft<'a> {
    pub fn new(base: &'a Loaded, shared: &'a Shared) -> Self {
        Draft {
            base,
            shared,
            space: shared.space,
            now_ms: None,
            delta: Delta {
                balance: base.balance,
                frozen: base.frozen,
                next_seq: base.next_seq,
                record_balance: base.record_balance,
                record_through_seq: base.record_through_seq,
                holds_added: HashMap::new(),
                holds_removed: HashSet::new(),
                finalized: Vec::new(),
                results: Vec::new(),
                credits: Vec::new(),
                debits: 0,
                credits_applied: 0,
            },
            batch_transfers: HashMap::new(),
            batch_holds: HashMap::new(),
            batch_credits: HashSet::new(),
            dedup: Dedup::default(),
            net_requested: false,
            scratch: Scratch::take(),
            block_first_seq: base.next_seq,
        }
    }

    /// Builds the transaction for `jobs` and starts its commit.
    pub fn build(mut self, jobs: &'a [Job]) -> Result<Sealed, ErrorCode> {
        let mut txn = self
            .shared
            .store
            .begin()
            .map_err(|_| ErrorCode::Unavailable)?;
        let items = jobs.iter().flat_map(|job| &job.items);
        // Only client transfers enter `batch_transfers` (a payee's draft of credits has none).
        let (mut transfers, mut credits, mut holds) = (0, 0, 0);
        // Legs not fresh (a rescan's, a peer DC's) may repeat another leg of the draft.
        let mut credits_not_fresh = 0;
        for item in items.clone() {
            // The items were written on the caller's thread (another core): ask for all of
            // each one's cache lines now, not one line per field as the draft reaches it.
            item.prefetch();
            match &item.work {
                Work::Client(AccountCommand::Transfer(_)) => transfers += 1,
                Work::Credit(leg) => {
                    leg.prefetch();
                    credits += 1;
                    credits_not_fresh += usize::from(!leg.is_fresh());
                }
                Work::Client(AccountCommand::Hold(_)) => holds += 1,
                _ => {}
            }
        }
        self.dedup = Dedup {
            transfers: transfers > 1,
            holds: holds > 1,
            // Fresh legs are each delivered once: among them alone nothing repeats. Two
            // copies of one leg in a commit would both pass its precondition (checked
            // against the state before the commit), so any other leg makes every leg count.
            credits: credits > 1 && credits_not_fresh > 0,
        };
        if self.dedup.transfers {
            self.batch_transfers.reserve(transfers);
        }
        if self.dedup.credits {
            self.batch_credits.reserve(credits);
        }
        if self.dedup.holds {
            self.batch_holds.reserve(holds);
        }
        self.delta.holds_added.reserve(holds);
        let count = items.count();
        self.delta.results.reserve(count);
        txn.reserve(count * ITEM_BYTES_TYPICAL + 256);
        // Every transfer and credit posts once.
        self.scratch.block.reserve(transfers + credits);
        self.expire_due_holds(txn.as_mut());
        for job in jobs {
            for item in &job.items {
                // An item's postings wait in the block; it pays for them and, when it fills
                // the block, for the block's key.
                let before = txn.size_bytes() + self.scratch.block.bytes();
                let result = match &item.settled {
                    Some(result) => result.clone(),
                    None => self.apply(txn.as_mut(), &item.work),
                };
                assert!(
                    txn.size_bytes() + self.scratch.block.bytes() - before <= ITEM_BYTES_MAX,
                    "item exceeds ITEM_BYTES_MAX"
                );
                self.delta.results.push((item.index, result));
            }
        }
        self.finish(txn.as_mut());
        self.scratch.give_back();
        Ok(Sealed {
            commit: txn.commit(),
            outcome: self.delta,
        })
    }

    fn apply(&mut self, txn: &mut dyn Transaction, work: &'a Work) -> CommandResult {
        match work {
            Work::Client(AccountCommand::Transfer(request)) => self.transfer(txn, request),
            Work::Client(AccountCommand::Hold(request)) => self.hold(txn, request),
            Work::Client(AccountCommand::Release(hold, snapshot)) => {
                self.release(txn, hold, snapshot.as_deref())
            }
            Work::Client(AccountCommand::Capture(request, snapshot)) => {
                self.capture(txn, request, snapshot.as_deref())
            }
            Work::Client(AccountCommand::Lookup) => Ok(Outcome::Account(Box::new(self.view()))),
            Work::Credit(leg) => self.credit(txn, leg),
            Work::Expire(hold) => {
                if self.active_hold(hold).is_some() {
                    self.finish_hold(txn, hold, HoldState::Released { expired: true });
                }
                Ok(Outcome::HoldReleased)
            }
            Work::Net => {
                self.net_requested = true;
                Ok(Outcome::AccountCreated)
            }
        }
    }

    fn now_ms(&mut self) -> u64 {
        *self.now_ms.get_or_insert_with(super::now_ms)
    }

    fn spec(&self) -> &AccountSpec {
        &self.base.spec
    }

    fn view(&self) -> cells::ledger::AccountView {
        cells::ledger::AccountView {
            spec: (*self.base.spec).clone(),
            balance: self.delta.balance,
            frozen: self.delta.frozen,
            available: self.delta.balance - self.delta.frozen,
        }
    }

    fn available(&self) -> i128 {
        self.delta.balance - self.delta.frozen
    }

    fn post(&mut self, txn: &mut dyn Transaction, posting: &PostingRecord) {
        if self.scratch.block.is_empty() {
            self.block_first_seq = self.delta.next_seq;
        }
        self.scratch.block.push(posting);
        self.delta.next_seq += 1;
        self.delta.balance += i128::from(posting.amount);
        if self.scratch.block.is_full() {
            self.write_block(txn);
        }
    }

    /// Writes the postings collected so far as one statement block.
    fn write_block(&mut self, txn: &mut dyn Transaction) {
        let scratch = &mut self.scratch;
        if scratch.block.is_empty() {
            return;
        }
        self.space.posting_into(
            &self.base.spec.id,
            self.block_first_seq,
            &mut scratch.block_key,
        );
        scratch.block.write_into(&mut scratch.block_value);
        set(txn, &scratch.block_key, &scratch.block_value);
    }

    fn transfer(
        &mut self,
        txn: &mut dyn Transaction,
        request: &'a TransferRequest,
    ) -> CommandResult {
        if request.currency != self.spec().currency {
            return Err(ErrorCode::CurrencyMismatch);
        }
        if let Some((first, result)) = self.batch_transfers.get(&request.id) {
            return if *first == request {
                result.clone()
            } else {
                Err(ErrorCode::TransferExistsWithDifferentFields)
            };
        }
        self.space.transfer_into(&request.id, &mut self.scratch.key);
        require(txn, &self.scratch.key, None);
        let amount = request.amount.signed();
        let (outcome, result) = if within_limit(self.spec(), self.available() - i128::from(amount))
        {
            let source = PostingSource::Transfer(request.id.clone());
            self.debit(
                txn,
                source,
                amount,
                request.to.clone(),
                request.currency,
                request.amount,
            );
            (TransferOutcome::Accepted, Ok(Outcome::TransferAccepted))
        } else {
            let code = ErrorCode::InsufficientFunds;
            (TransferOutcome::Rejected(code), Err(code))
        };
        let record = TransferRecord {
            from: request.from.clone(),
            to: request.to.clone(),
            amount: request.amount,
            currency: request.currency,
            outcome,
        };
        // The key is still the transfer's: a debit writes its key into its own buffer.
        records::encode_into(&record, &mut self.scratch.value);
        set(txn, &self.scratch.key, &self.scratch.value);
        if self.dedup.transfers {
            self.batch_transfers
                .insert(&request.id, (request, result.clone()));
        }
        result
    }

    /// Posts a debit and writes the outbox entry of its credit leg.
    fn debit(
        &mut self,
        txn: &mut dyn Transaction,
        source: PostingSource,
        amount: i64,
        to: cells::ids::AccountId,
        currency: cells::money::Currency,
        positive: cells::money::Amount,
    ) {
        let posting = PostingRecord {
            source,
            amount: -amount,
            counterparty: to,
        };
        self.post(txn, &posting);
        let PostingRecord {
            source,
            counterparty: to,
            ..
        } = posting;
        let record = OutboxRecord {
            source,
            from: self.base.spec.id.clone(),
            to,
            amount: positive,
            currency,
        };
        self.space.outbox_into(
            self.base.slot,
            record.kind(),
            record.source.id(),
            &mut self.scratch.outbox_key,
        );
        records::encode_into(&record, &mut self.scratch.value);
        set(txn, &self.scratch.outbox_key, &self.scratch.value);
        let leg = CreditLeg::fresh(&self.scratch.outbox_key, &self.scratch.value, record);
        self.delta.credits.push(leg);
        self.delta.debits += 1;
    }

    fn active_hold(&self, hold: &HoldId) -> Option<&ActiveHold> {
        if self.delta.holds_removed.contains(hold) {
            return None;
        }
        self.delta
            .holds_added
            .get(hold)
            .or_else(|| self.base.holds.get(hold))
    }

    fn hold(&mut self, txn: &mut dyn Transaction, request: &HoldRequest) -> CommandResult {
        if request.currency != self.spec().currency {
            return Err(ErrorCode::CurrencyMismatch);
        }
        if request
            .expires_in_ms
            .is_some_and(|ms| ms == 0 || ms > HOLD_EXPIRY_MS_MAX)
        {
            return Err(ErrorCode::InvalidExpiry);
        }
        if let Some((first, result)) = self.batch_holds.get(&request.id) {
            return if first == request {
                result.clone()
            } else {
                Err(ErrorCode::HoldExistsWithDifferentFields)
            };
        }
        if let Some(active) = self.active_hold(&request.id) {
            return if same_hold(&active.record, request) {
                Ok(Outcome::HoldCreated)
            } else {
                Err(ErrorCode::HoldExistsWithDifferentFields)
            };
        }
        // The id must be new even when the hold is refused: if it exists (released or
        // captured earlier), the precondition fails and the retry gets the original outcome.
        self.space.hold_into(&request.id, &mut self.scratch.key);
        require(txn, &self.scratch.key, None);
        let amount = i128::from(request.amount.signed());
        let result = if within_limit(self.spec(), self.available() - amount) {
            let record = HoldRecord {
                account: request.account.clone(),
                amount: request.amount,
                currency: request.currency,
                expires_at_ms: request.expires_in_ms.map(|ms| self.now_ms() + ms),
                state: HoldState::Active,
            };
            records::encode_into(&record, &mut self.scratch.value);
            set(txn, &self.scratch.key, &self.scratch.value);
            self.space
                .account_hold_into(&request.account, &request.id, &mut self.scratch.key);
            set(txn, &self.scratch.key, &[]);
            self.delta.frozen += amount;
            self.delta
                .holds_added
                .insert(request.id.clone(), ActiveHold { record });
            Ok(Outcome::HoldCreated)
        } else {
            Err(ErrorCode::InsufficientFunds)
        };
        if self.dedup.holds {
            self.batch_holds
                .insert(request.id.clone(), (request.clone(), result.clone()));
        }
        result
    }

    /// The final state of a hold that is not active (or `None` if it still looks active,
    /// or it ended before this draft and no record was read: the ledger then runs the
    /// command again on the record, see `HoldWork`).
    fn final_state(&self, hold: &HoldId, snapshot: Option<&HoldRecord>) -> Option<HoldState> {
        self.delta
            .finalized
            .iter()
            .rev()
            .find(|(id, _)| id == hold)
            .map(|(_, state)| state.clone())
            .or_else(|| {
                snapshot
                    .filter(|snapshot| snapshot.state != HoldState::Active)
                    .map(|snapshot| snapshot.state.clone())
            })
    }

    fn release(
        &mut self,
        txn: &mut dyn Transaction,
        hold: &HoldId,
        snapshot: Option<&HoldRecord>,
    ) -> CommandResult {
        if self.active_hold(hold).is_some() {
            self.finish_hold(txn, hold, HoldState::Released { expired: false });
            return Ok(Outcome::HoldReleased);
        }
        match self.final_state(hold, snapshot) {
            Some(HoldState::Released { .. }) => Ok(Outcome::HoldReleased),
            _ => Err(ErrorCode::HoldNotActive),
        }
    }

    fn capture(
        &mut self,
        txn: &mut dyn Transaction,
        request: &CaptureRequest,
        snapshot: Option<&HoldRecord>,
    ) -> CommandResult {
        let Some(active) = self.active_hold(&request.hold) else {
            return match self.final_state(&request.hold, snapshot) {
                Some(HoldState::Captured { to, amount })
                    if to == request.to && request.amount.is_none_or(|a| a == amount) =>
                {
                    Ok(Outcome::HoldCaptured)
                }
                _ => Err(ErrorCode::HoldNotActive),
            };
        };
        let held = active.record.amount;
        let currency = active.record.currency;
        let amount = request.amount.unwrap_or(held);
        if amount > held {
            return Err(ErrorCode::CaptureExceedsHold);
        }
        let state = HoldState::Captured {
            to: request.to.clone(),
            amount,
        };
        self.finish_hold(txn, &request.hold, state);
        let source = PostingSource::Capture(request.hold.clone());
        self.debit(
            txn,
            source,
            amount.signed(),
            request.to.clone(),
            currency,
            amount,
        );
        Ok(Outcome::HoldCaptured)
    }

    /// Moves an active hold to a final state: unfreezes it and rewrites its record.
    fn finish_hold(&mut self, txn: &mut dyn Transaction, hold: &HoldId, state: HoldState) {
        let Some(active) = self.active_hold(hold) else {
            return;
        };
        let mut record = active.record.clone();
        self.delta.frozen -= i128::from(record.amount.signed());
        record.state = state.clone();
        self.space.hold_into(hold, &mut self.scratch.key);
        records::encode_into(&record, &mut self.scratch.value);
        set(txn, &self.scratch.key, &self.scratch.value);
        self.space
            .account_hold_into(&record.account, hold, &mut self.scratch.key);
        clear(txn, &self.scratch.key);
        self.delta.holds_added.remove(hold);
        self.delta.holds_removed.insert(hold.clone());
        self.delta.finalized.push((hold.clone(), state));
    }

    fn expire_due_holds(&mut self, txn: &mut dyn Transaction) {
        if self.base.expiries.is_empty() {
            return;
        }
        let now_ms = self.now_ms();
        for hold in self.base.due_holds(now_ms, EXPIRIES_PER_DRAFT_MAX) {
            self.finish_hold(txn, &hold, HoldState::Released { expired: true });
        }
    }

    fn credit(&mut self, txn: &mut dyn Transaction, leg: &'a CreditLeg) -> CommandResult {
        if self.dedup.credits && !self.batch_credits.insert(leg.key()) {
            return Ok(Outcome::TransferAccepted);
        }
        assert_eq!(
            leg.record.currency,
            self.spec().currency,
            "payer checked the currency"
        );
        require(txn, leg.key(), Some(leg.value()));
        clear(txn, leg.key());
        let posting = PostingRecord {
            source: leg.record.source.clone(),
            amount: leg.record.amount.signed(),
            counterparty: leg.record.from.clone(),
        };
        self.post(txn, &posting);
        self.delta.credits_applied += 1;
        Ok(Outcome::TransferAccepted)
    }

    /// Writes the balance record when the mode asks for it, and fences the commit.
    fn finish(&mut self, txn: &mut dyn Transaction) {
        // The last block ends the commit: a balance record below always falls on a block
        // boundary.
        self.write_block(txn);
        let unnetted = self.delta.next_seq - self.delta.record_through_seq;
        let write_record = match self.spec().mode {
            HotMode::Standard | HotMode::Split { .. } => unnetted > 0,
            HotMode::Append => {
                unnetted >= self.shared.config.netting_postings
                    || (self.net_requested && unnetted > 0)
            }
        };
        if write_record {
            self.delta.record_balance = self.delta.balance;
            self.delta.record_through_seq = self.delta.next_seq;
            self.space
                .account_into(&self.base.spec.id, &mut self.scratch.key);
            // The `AccountRecord` of this spec and balance, from the spec's encoding.
            records::encode_account_record_into(
                &self.base.spec_bytes,
                self.delta.balance,
                self.delta.next_seq,
                &mut self.scratch.value,
            );
            set(txn, &self.scratch.key, &self.scratch.value);
        }
        // INV-4: the commit lands only while this DC still owns the user's slot (and
        // whitelist entry) exactly as when the actor loaded.
        self.base
            .fence
            .apply(txn)
            .expect("fence keys fit the transaction limits");
    }
}

fn same_hold(record: &HoldRecord, request: &HoldRequest) -> bool {
    record.account == request.account
        && record.amount == request.amount
        && record.currency == request.currency
}

// Items are bounded (ITEM_BYTES_MAX) and a batch fits the transaction limit (checked at
// compile time above), so the store's limit checks cannot fail here.
fn set(txn: &mut dyn Transaction, key: &[u8], value: &[u8]) {
    txn.set(key, value)
        .expect("bounded items fit the transaction limits");
}

fn clear(txn: &mut dyn Transaction, key: &[u8]) {
    txn.clear(key)
        .expect("bounded items fit the transaction limits");
}

fn require(txn: &mut dyn Transaction, key: &[u8], expected: Option<&[u8]>) {
    txn.require(key, expected)
        .expect("bounded items fit the transaction limits");
}

/// The items whose uniqueness key is among `failed` keys: `(job, item, key)`. Credits among
/// them were already applied and are settled here (they are skipped on the retry).
pub(crate) fn conflicted_items(
    space: Keyspace,
    jobs: &mut [Job],
    failed: &[Vec<u8>],
) -> Vec<(usize, usize, Vec<u8>)> {
    let failed: HashSet<&[u8]> = failed.iter().map(Vec::as_slice).collect();
    let mut found = Vec::new();
    for (j, job) in jobs.iter_mut().enumerate() {
        for (i, item) in job.items.iter_mut().enumerate() {
            if item.settled.is_some() {
                continue;
            }
            let key = match &item.work {
                Work::Client(AccountCommand::Transfer(request)) => space.transfer(&request.id),
                Work::Client(AccountCommand::Hold(request)) => space.hold(&request.id),
                Work::Credit(leg) => {
                    if failed.contains(leg.key()) {
                        item.settled = Some(Ok(Outcome::TransferAccepted));
                    }
                    continue;
                }
                _ => continue,
            };
            if failed.contains(key.as_slice()) {
                found.push((j, i, key));
            }
        }
    }
    found
}

/// Settles conflicted items from the records that beat them: a retry gets the original
/// outcome, a different request under the same id gets `*_exists_with_different_fields`.
pub(crate) fn settle_duplicates(
    jobs: &mut [Job],
    conflicted: Vec<(usize, usize, Vec<u8>)>,
    values: Vec<Option<Vec<u8>>>,
) {
    for ((j, i, _), value) in conflicted.into_iter().zip(values) {
        let item = &mut jobs[j].items[i];
        let Some(bytes) = value else { continue };
        item.settled = Some(match &item.work {
            Work::Client(AccountCommand::Transfer(request)) => {
                match records::decode::<TransferRecord>("transfer", &bytes) {
                    Ok(record) => transfer_retry_outcome(&record, request),
                    Err(_) => Err(ErrorCode::Internal),
                }
            }
            Work::Client(AccountCommand::Hold(request)) => {
                match records::decode::<HoldRecord>("hold", &bytes) {
                    Ok(record) if same_hold(&record, request) => Ok(Outcome::HoldCreated),
                    Ok(_) => Err(ErrorCode::HoldExistsWithDifferentFields),
                    Err(_) => Err(ErrorCode::Internal),
                }
            }
            _ => continue,
        });
    }
}

/// What a retry of `request` gets, given the transfer already recorded under its id.
pub(crate) fn transfer_retry_outcome(
    record: &TransferRecord,
    request: &TransferRequest,
) -> CommandResult {
    let same = record.from == request.from
        && record.to == request.to
        && record.amount == request.amount
        && record.currency == request.currency;
    match (same, record.outcome) {
        (false, _) => Err(ErrorCode::TransferExistsWithDifferentFields),
        (true, TransferOutcome::Accepted) => Ok(Outcome::TransferAccepted),
        (true, TransferOutcome::Rejected(code)) => Err(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{Item, Origin};
    use cells::ids::{AccountId, UserId};
    use cells::money::Amount;
    use cells::records::{AccountKind, AccountSpec, HotMode, OutboxKind, OutboxRecord};
    use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
    use cells::store::Store;
    use std::sync::Arc;

    /// A payee's loaded state (no postings, no holds) and the ledger's shared handles, on a
    /// fresh embedded store.
    async fn payee(dir: &std::path::Path) -> (Loaded, Shared) {
        let store: Arc<dyn Store> =
            EmbeddedStore::open(dir, EmbeddedOptions::default()).expect("open");
        let config = crate::LedgerConfig {
            arbiters: 0,
            ..crate::LedgerConfig::default()
        };
        let shared = Shared::new(store, config, vec![actix::Arbiter::current()]);
        let spec = AccountSpec {
            id: AccountId::new("frank").expect("valid id"),
            user: UserId::new("user-frank").expect("valid id"),
            currency: "USD".parse().expect("known currency"),
            kind: AccountKind::Customer,
            overdraft_limit: 0,
            mode: HotMode::Standard,
        };
        let fence = cells::ownership::Fence::read(&*shared.store, &spec.user)
            .await
            .expect("fence");
        let loaded = Loaded {
            spec_bytes: records::encode(&spec).into(),
            slot: cells::slot::slot_of(&spec.user),
            spec: Arc::new(spec),
            fence: Arc::new(fence),
            balance: 0,
            record_balance: 0,
            record_through_seq: 0,
            next_seq: 0,
            holds: HashMap::new(),
            expiries: Default::default(),
            frozen: 0,
        };
        (loaded, shared)
    }

    /// Writes the outbox entry of a transfer `id` of `units` from erin to frank, as erin's
    /// commit would; gives its key, value and record.
    async fn outbox_entry(
        shared: &Shared,
        id: &str,
        units: u64,
    ) -> (Vec<u8>, Vec<u8>, OutboxRecord) {
        let record = OutboxRecord {
            source: PostingSource::Transfer(TransferId::new(id).expect("valid id")),
            from: AccountId::new("erin").expect("valid id"),
            to: AccountId::new("frank").expect("valid id"),
            amount: Amount::from_minor_units(units).expect("positive"),
            currency: "USD".parse().expect("known currency"),
        };
        let erin = cells::slot::slot_of(&UserId::new("user-erin").expect("valid id"));
        let key = shared.space.outbox(erin, OutboxKind::Transfer, id);
        let value = records::encode(&record);
        let mut txn = shared.store.begin().expect("begin");
        txn.set(&key, &value).expect("set");
        txn.commit().await.expect("committed");
        (key, value, record)
    }

    fn credits(legs: Vec<CreditLeg>) -> Vec<Job> {
        let items = legs
            .into_iter()
            .map(|leg| Item {
                index: 0,
                work: Work::Credit(leg),
                settled: None,
            })
            .collect();
        vec![Job {
            origin: Origin::Internal,
            items,
        }]
    }

    /// Drafts and commits `jobs` on `loaded`; gives the commit's outcome and its delta.
    async fn commit(loaded: &Loaded, shared: &Shared, jobs: &[Job]) -> (bool, Delta) {
        let sealed = Draft::new(loaded, shared).build(jobs).expect("drafted");
        (sealed.commit.await.is_ok(), sealed.outcome)
    }

    /// A leg fresh from a payer's commit and a copy of it from a rescan or a peer DC, in one
    /// commit, credit the payee once: both would pass the commit's precondition (checked
    /// against the state before it), so the draft must see the repeat.
    #[actix_rt::test]
    async fn a_fresh_leg_and_its_copy_in_one_commit_credit_once() {
        let dir = tempfile::tempdir().expect("dir");
        let (loaded, shared) = payee(dir.path()).await;
        let (key, value, record) = outbox_entry(&shared, "e1", 300).await;
        for copy_verified in [false, true] {
            let jobs = credits(vec![
                CreditLeg::fresh(&key, &value, record.clone()),
                CreditLeg::new(&key, &value, record.clone(), copy_verified),
            ]);
            let (committed, delta) = commit(&loaded, &shared, &jobs).await;
            assert!(committed);
            assert_eq!((delta.balance, delta.credits_applied), (300, 1));
            assert_eq!(delta.next_seq, 1, "one posting");
            // Put the entry back for the next round (the commit cleared it).
            let (again, _, _) = outbox_entry(&shared, "e1", 300).await;
            assert_eq!(again, key);
        }
    }

    /// Fresh legs of different transfers in one commit are each credited.
    #[actix_rt::test]
    async fn fresh_legs_of_different_transfers_are_each_credited() {
        let dir = tempfile::tempdir().expect("dir");
        let (loaded, shared) = payee(dir.path()).await;
        let mut legs = Vec::new();
        for (id, units) in [("e1", 300), ("e2", 200), ("e3", 50)] {
            let (key, value, record) = outbox_entry(&shared, id, units).await;
            legs.push(CreditLeg::fresh(&key, &value, record));
        }
        let (committed, delta) = commit(&loaded, &shared, &credits(legs)).await;
        assert!(committed);
        assert_eq!((delta.balance, delta.credits_applied), (550, 3));
    }
}
