//! Loading an account actor's state from the store (activation).
//!
//! Reads the account record, replays the postings after its balance record, loads the
//! active holds and the ownership fence (refusing, in DC mode, a user this DC does not own). Asserts the loaded state against the records' own
//! invariants (frozen = sum of active holds) before the actor serves anything.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use cells::ids::{AccountId, DcId};
use cells::keys;
use cells::ledger::ErrorCode;
use cells::ownership::Fence;
use cells::records::{self, AccountRecord, HoldRecord, HoldState, RecordError};
use cells::slot::slot_of;
use cells::store::{limits::RANGE_ROWS_MAX, RangeRequest, StoreError};

use super::{ActiveHold, Loaded};
use crate::registry::Shared;

/// Why an account could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("account does not exist")]
    Missing,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("stored data is inconsistent: {0}")]
    Inconsistent(String),
    #[error("this DC does not own the account's user (owner: {owner:?})")]
    NotOwner { owner: Option<DcId> },
}

impl LoadError {
    pub fn code(&self) -> ErrorCode {
        match self {
            LoadError::Missing => ErrorCode::UnknownAccount,
            LoadError::Store(_) => ErrorCode::Unavailable,
            LoadError::Record(_) | LoadError::Inconsistent(_) => ErrorCode::Internal,
            LoadError::NotOwner { .. } => ErrorCode::NotOwner,
        }
    }
}

pub(crate) async fn load(shared: &Shared, id: &AccountId) -> Result<Loaded, LoadError> {
    let space = shared.space;
    let store = &shared.store;
    let bytes = store
        .get(&space.account(id))
        .await?
        .ok_or(LoadError::Missing)?;
    let record: AccountRecord = records::decode("account", &bytes)?;
    let slot = slot_of(&record.spec.user);
    // Remembered even when this DC does not own the account: the relay routes credit legs
    // by the payee's user.
    shared.remember(Arc::new(record.spec.clone()));
    let fence = Fence::read(&**store, &record.spec.user).await?;
    if let Some(dc) = &shared.config.dc {
        let owner = fence.owner()?;
        if owner.as_ref().map(|o| &o.dc) != Some(dc) {
            return Err(LoadError::NotOwner {
                owner: owner.map(|o| o.dc),
            });
        }
    }
    let (balance, next_seq) = replay_tail(shared, &record).await?;
    let holds = load_holds(shared, id).await?;
    let frozen = holds
        .values()
        .map(|h| i128::from(h.record.amount.signed()))
        .sum();
    Ok(Loaded {
        spec_bytes: cells::records::encode(&record.spec).into(),
        spec: Arc::new(record.spec),
        slot,
        fence: Arc::new(fence),
        balance,
        record_balance: record.balance,
        record_through_seq: record.balance_through_seq,
        next_seq,
        expiries: Loaded::index_expiries(&holds),
        holds,
        frozen,
    })
}

/// Folds the postings written after the balance record into the balance.
async fn replay_tail(shared: &Shared, record: &AccountRecord) -> Result<(i128, u64), LoadError> {
    let (mut begin, end) = shared
        .space
        .postings_from(&record.spec.id, record.balance_through_seq);
    let mut balance = record.balance;
    let mut next_seq = record.balance_through_seq;
    loop {
        let page = shared
            .store
            .get_range(RangeRequest::new(
                begin.clone(),
                end.clone(),
                RANGE_ROWS_MAX,
            ))
            .await?;
        let full = page.len() == RANGE_ROWS_MAX;
        for (key, value) in &page {
            let first =
                keys::posting_seq(key).ok_or(LoadError::Inconsistent("posting key".into()))?;
            if first != next_seq {
                return Err(LoadError::Inconsistent(format!(
                    "posting block {first}, expected {next_seq}"
                )));
            }
            for posting in records::decode_postings(value)? {
                balance += i128::from(posting.amount);
                next_seq += 1;
            }
        }
        match page.last() {
            Some((key, _)) if full => {
                begin = key.clone();
                begin.push(0);
            }
            _ => return Ok((balance, next_seq)),
        }
    }
}

async fn load_holds(
    shared: &Shared,
    id: &AccountId,
) -> Result<HashMap<cells::ids::HoldId, ActiveHold>, LoadError> {
    let prefix = shared.space.account_holds_prefix(id);
    let mut holds = HashMap::new();
    let mut request = RangeRequest::prefix(&prefix, RANGE_ROWS_MAX);
    loop {
        let page = shared.store.get_range(request.clone()).await?;
        let full = page.len() == RANGE_ROWS_MAX;
        let ids: Vec<_> = page
            .iter()
            .map(|(key, _)| {
                keys::account_hold_id(key).ok_or(LoadError::Inconsistent("hold key".into()))
            })
            .collect::<Result<_, _>>()?;
        let hold_keys = ids.iter().map(|hold| shared.space.hold(hold)).collect();
        let values = shared.store.get_many(hold_keys).await?;
        for (hold, value) in ids.into_iter().zip(values) {
            let bytes =
                value.ok_or_else(|| LoadError::Inconsistent(format!("hold {hold} indexed")))?;
            let record: HoldRecord = records::decode("hold", &bytes)?;
            if record.state != HoldState::Active {
                return Err(LoadError::Inconsistent(format!(
                    "hold {hold} indexed but final"
                )));
            }
            holds.insert(hold, ActiveHold { record });
        }
        match page.last() {
            Some((key, _)) if full => {
                request.begin = key.clone();
                request.begin.push(0);
            }
            _ => return Ok(holds),
        }
    }
}
