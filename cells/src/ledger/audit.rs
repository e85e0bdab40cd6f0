//! The audit: re-derives the ledger from the store and checks the money invariants.
//!
//! Owns the numbered invariant checks that tests, the crash test and (later) drills and
//! `tessera reconcile` share:
//! * INV-1 conservation: per currency, the sum of all balances plus all pending outbox
//!   amounts is zero;
//! * every account's balance record equals the replay of its postings;
//! * INV-3 exactly once: every transfer or capture has at most one debit and at most one
//!   credit posting, an accepted transfer has its debit, and its credit exactly when its
//!   outbox entry is gone;
//! * INV-5 no overdraft: a customer account's available balance is within its limit;
//! * every hold is accounted for (active holds and the active-hold index agree).
//!
//! Must never write: it only reads, page by page, so it can run against a live store
//! (it then sees each page at its own moment; run it on a quiet store for a verdict).

use std::collections::{BTreeMap, HashMap};

use futures::executor::block_on;
use serde::Serialize;

use crate::keys::{self, Keyspace};
use crate::records::{
    self, AccountRecord, HoldRecord, HoldState, OutboxRecord, PostingSource, TransferOutcome,
    TransferRecord,
};
use crate::store::{limits, KeyValue, RangeRequest, Store, StoreError};

/// One thing the audit found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    /// The invariant broken, e.g. `"INV-1"`.
    pub invariant: &'static str,
    pub detail: String,
}

/// What the audit saw, and what it found wrong.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub accounts: u64,
    pub postings: u64,
    pub transfers: u64,
    pub holds: u64,
    pub outbox_pending: u64,
    /// Per currency: sum of balances plus pending outbox amounts (must be zero).
    pub net_by_currency: BTreeMap<String, i128>,
    /// Exact balance of every account (sum of its postings).
    #[serde(skip)]
    pub balances: HashMap<String, i128>,
    pub discrepancies: Vec<Discrepancy>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        // Keep the report bounded even on a badly broken store.
        const DISCREPANCIES_MAX: usize = 10_000;
        if self.discrepancies.len() < DISCREPANCIES_MAX {
            self.discrepancies.push(Discrepancy { invariant, detail });
        }
    }
}

/// Why the audit could not run (distinct from discrepancies it found).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] records::RecordError),
    #[error("malformed key under {0}")]
    Key(&'static str),
}

/// Rows per page of the scans: bounded in bytes as well as rows (a statement block may hold
/// 256 postings, up to 37 kB; a page of them stays under 40 MB).
const SCAN_ROWS_PER_PAGE: usize = 1_000;
const _: () = assert!(SCAN_ROWS_PER_PAGE <= limits::RANGE_ROWS_MAX);

/// Calls `each` for every key-value pair under `prefix`, page by page.
pub fn scan_prefix(
    store: &dyn Store,
    prefix: &[u8],
    mut each: impl FnMut(KeyValue) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let mut request = RangeRequest::prefix(prefix, SCAN_ROWS_PER_PAGE);
    loop {
        let page = block_on(store.get_range(request.clone()))?;
        let full = page.len() == request.limit;
        let mut last = None;
        for (key, value) in page {
            last = Some(key.clone());
            each((key, value))?;
        }
        match last {
            Some(mut key) if full => {
                key.push(0);
                request.begin = key;
            }
            _ => return Ok(()),
        }
    }
}

#[derive(Default)]
struct Legs {
    debits: u32,
    credits: u32,
}

/// Audits the whole keyspace.
pub fn audit(store: &dyn Store, space: Keyspace) -> Result<AuditReport, AuditError> {
    let mut report = AuditReport::default();
    let mut accounts: HashMap<String, AccountRecord> = HashMap::new();
    scan_prefix(store, &space.accounts_prefix(), |(_, value)| {
        let record: AccountRecord = records::decode("account", &value)?;
        accounts.insert(record.spec.id.as_str().to_string(), record);
        Ok(())
    })?;
    report.accounts = accounts.len() as u64;
    let legs = replay_postings(store, space, &accounts, &mut report)?;
    check_transfers(store, space, &accounts, &legs, &mut report)?;
    let frozen = check_holds(store, space, &accounts, &legs, &mut report)?;
    check_outbox(store, space, &mut report)?;
    check_conservation_and_limits(&accounts, &frozen, &mut report);
    Ok(report)
}

fn replay_postings(
    store: &dyn Store,
    space: Keyspace,
    accounts: &HashMap<String, AccountRecord>,
    report: &mut AuditReport,
) -> Result<HashMap<PostingSource, Legs>, AuditError> {
    let mut legs: HashMap<PostingSource, Legs> = HashMap::new();
    let mut folded: HashMap<String, i128> = HashMap::new();
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    let mut problems = Vec::new();
    scan_prefix(store, &space.postings_prefix(), |(key, value)| {
        let account = keys::posting_account(&key).ok_or(AuditError::Key("postings"))?;
        let first = keys::posting_seq(&key).ok_or(AuditError::Key("postings"))?;
        let block = records::decode_postings(&value)?;
        let name = account.as_str().to_string();
        let expected = next_seq.entry(name.clone()).or_insert(0);
        if first != *expected {
            problems.push(format!(
                "account {name}: posting {first} follows {expected}"
            ));
        }
        *expected = first + block.len() as u64;
        let through = accounts.get(&name).map(|a| a.balance_through_seq);
        let (mut total, mut folded_here) = (0i128, 0i128);
        for (seq, posting) in (first..).zip(block) {
            total += i128::from(posting.amount);
            if through.is_some_and(|through| seq < through) {
                folded_here += i128::from(posting.amount);
            }
            let entry = legs.entry(posting.source).or_default();
            if posting.amount < 0 {
                entry.debits += 1;
            } else {
                entry.credits += 1;
            }
            report.postings += 1;
        }
        *report.balances.entry(name.clone()).or_insert(0) += total;
        if through.is_some() {
            *folded.entry(name).or_insert(0) += folded_here;
        }
        Ok(())
    })?;
    for detail in problems {
        report.fail("replay", detail);
    }
    for (name, record) in accounts {
        let replayed = folded.get(name).copied().unwrap_or(0);
        if replayed != record.balance {
            report.fail(
                "replay",
                format!(
                    "account {name}: balance record {} != replay {replayed}",
                    record.balance
                ),
            );
        }
        if next_seq.get(name).copied().unwrap_or(0) < record.balance_through_seq {
            report.fail(
                "replay",
                format!("account {name}: balance covers missing postings"),
            );
        }
        report.balances.entry(name.clone()).or_insert(0);
    }
    Ok(legs)
}

fn check_transfers(
    store: &dyn Store,
    space: Keyspace,
    accounts: &HashMap<String, AccountRecord>,
    legs: &HashMap<PostingSource, Legs>,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let mut found = Vec::new();
    scan_prefix(store, &space.transfers_prefix(), |(key, value)| {
        let (_, _, id): (i64, i64, String) =
            foundationdb_tuple::unpack(&key).map_err(|_| AuditError::Key("transfers"))?;
        let record: TransferRecord = records::decode("transfer", &value)?;
        found.push((id, record));
        Ok(())
    })?;
    report.transfers = found.len() as u64;
    for (id, record) in found {
        let transfer =
            crate::ids::TransferId::new(&id).map_err(|_| AuditError::Key("transfers"))?;
        let payer = accounts
            .get(record.from.as_str())
            .ok_or(AuditError::Key("accounts"))?;
        let slot = crate::slot::slot_of(&payer.spec.user);
        let outbox_key = space.outbox(slot, records::OutboxKind::Transfer, &id);
        let pending = block_on(store.get(&outbox_key))?.is_some();
        let source = PostingSource::Transfer(transfer);
        let (debits, credits) = legs.get(&source).map_or((0, 0), |l| (l.debits, l.credits));
        let expected = match record.outcome {
            TransferOutcome::Accepted => (1, if pending { 0 } else { 1 }),
            TransferOutcome::Rejected(_) => (0, 0),
        };
        if (debits, credits) != expected {
            report.fail(
                "INV-3",
                format!(
                    "transfer {id}: {debits} debit(s), {credits} credit(s), expected {expected:?}"
                ),
            );
        }
    }
    for (source, legs) in legs {
        if legs.debits > 1 || legs.credits > 1 {
            report.fail("INV-3", format!("{source:?} posted more than once"));
        }
    }
    Ok(())
}

fn check_holds(
    store: &dyn Store,
    space: Keyspace,
    accounts: &HashMap<String, AccountRecord>,
    legs: &HashMap<PostingSource, Legs>,
    report: &mut AuditReport,
) -> Result<HashMap<String, i128>, AuditError> {
    let mut frozen: HashMap<String, i128> = HashMap::new();
    let mut holds = Vec::new();
    scan_prefix(store, &space.holds_prefix(), |(key, value)| {
        let (_, _, id): (i64, i64, String) =
            foundationdb_tuple::unpack(&key).map_err(|_| AuditError::Key("holds"))?;
        holds.push((id, records::decode::<HoldRecord>("hold", &value)?));
        Ok(())
    })?;
    report.holds = holds.len() as u64;
    for (id, hold) in holds {
        let hold_id = crate::ids::HoldId::new(&id).map_err(|_| AuditError::Key("holds"))?;
        let indexed = block_on(store.get(&space.account_hold(&hold.account, &hold_id)))?.is_some();
        let active = hold.state == HoldState::Active;
        if indexed != active {
            report.fail(
                "holds",
                format!("hold {id}: active {active} but indexed {indexed}"),
            );
        }
        if active {
            *frozen.entry(hold.account.as_str().to_string()).or_insert(0) +=
                i128::from(hold.amount.signed());
        }
        let source = PostingSource::Capture(hold_id);
        let (debits, credits) = legs.get(&source).map_or((0, 0), |l| (l.debits, l.credits));
        let captured = matches!(hold.state, HoldState::Captured { .. });
        // A captured hold's credit leg is posted exactly when its outbox entry is gone.
        let pending = if captured {
            let payer = accounts
                .get(hold.account.as_str())
                .ok_or(AuditError::Key("accounts"))?;
            let slot = crate::slot::slot_of(&payer.spec.user);
            let key = space.outbox(slot, records::OutboxKind::Capture, &id);
            block_on(store.get(&key))?.is_some()
        } else {
            false
        };
        let expected = (u32::from(captured), u32::from(captured && !pending));
        if (debits, credits) != expected {
            report.fail(
                "INV-3",
                format!("hold {id}: {debits} debit(s), {credits} credit(s), expected {expected:?}"),
            );
        }
    }
    Ok(frozen)
}

fn check_outbox(
    store: &dyn Store,
    space: Keyspace,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let mut pending = Vec::new();
    scan_prefix(store, &space.outbox_prefix(), |(_, value)| {
        pending.push(records::decode::<OutboxRecord>("outbox", &value)?);
        Ok(())
    })?;
    report.outbox_pending = pending.len() as u64;
    for entry in pending {
        *report
            .net_by_currency
            .entry(entry.currency.code().to_string())
            .or_insert(0) += i128::from(entry.amount.signed());
    }
    Ok(())
}

fn check_conservation_and_limits(
    accounts: &HashMap<String, AccountRecord>,
    frozen: &HashMap<String, i128>,
    report: &mut AuditReport,
) {
    let mut problems = Vec::new();
    for (name, record) in accounts {
        let balance = report.balances.get(name).copied().unwrap_or(0);
        *report
            .net_by_currency
            .entry(record.spec.currency.code().to_string())
            .or_insert(0) += balance;
        let available = balance - frozen.get(name).copied().unwrap_or(0);
        if !super::within_limit(&record.spec, available) {
            problems.push(format!(
                "account {name}: available {available} below its limit"
            ));
        }
    }
    for detail in problems {
        report.fail("INV-5", detail);
    }
    let unbalanced: Vec<_> = report
        .net_by_currency
        .iter()
        .filter(|(_, net)| **net != 0)
        .map(|(c, n)| (c.clone(), *n))
        .collect();
    for (currency, net) in unbalanced {
        report.fail(
            "INV-1",
            format!("{currency}: balances plus outbox sum to {net}, not 0"),
        );
    }
}
