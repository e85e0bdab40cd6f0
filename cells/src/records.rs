//! The records stored under the keys of [`crate::keys`], encoded with postcard.
//!
//! Owns the durable shape of the ledger. Records are versioned by their position in the
//! schema; decoding failures are typed ([`RecordError`]), never panics: the bytes come
//! from disk or the network.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ids::{AccountId, HoldId, TransferId, UserId};
use crate::ledger::ErrorCode;
use crate::money::{Amount, Currency};

/// A record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {record} record: {source}")]
pub struct RecordError {
    pub record: &'static str,
    #[source]
    pub source: postcard::Error,
}

/// Encodes a record.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Serialized into a reused buffer, then copied into an exact-size allocation: a record
    // lives on in the store's memtable, and growth slack there is memory the process keeps
    // touching (most records are 20–80 bytes).
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        let scratch_buffer = std::mem::take(scratch);
        // Serializing these plain structs into a Vec cannot fail.
        *scratch = postcard::to_extend(record, scratch_buffer).expect("records always serialize");
        scratch.as_slice().to_vec()
    })
}

/// Decodes a record of type `T`.
pub fn decode<T: DeserializeOwned>(record: &'static str, bytes: &[u8]) -> Result<T, RecordError> {
    postcard::from_bytes(bytes).map_err(|source| RecordError { record, source })
}

/// Customer accounts are bounded by their overdraft limit; system accounts (the outside
/// world) may go negative without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    Customer,
    System,
}

/// How an account's postings reach its balance record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HotMode {
    /// The balance record is rewritten by every batch.
    #[default]
    Standard,
    /// Postings are appended; a periodic netting step folds them into the balance record.
    Append,
    /// The balance is spread over `parts` part accounts (`<id>.p0` …), each its own actor;
    /// the account's balance is their sum (see `actors::split`).
    Split { parts: u16 },
}

/// The fields of an account fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSpec {
    pub id: AccountId,
    pub user: UserId,
    pub currency: Currency,
    pub kind: AccountKind,
    /// How far below zero the available balance of a customer account may go (minor units).
    pub overdraft_limit: u64,
    pub mode: HotMode,
}

/// An account: its spec and its balance as of posting `balance_through_seq` (exclusive).
/// Postings with `seq >= balance_through_seq` are not yet folded into `balance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub spec: AccountSpec,
    pub balance: i128,
    pub balance_through_seq: u64,
}

/// What a posting belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PostingSource {
    Transfer(TransferId),
    Capture(HoldId),
}

impl PostingSource {
    pub fn id(&self) -> &str {
        match self {
            PostingSource::Transfer(id) => id.as_str(),
            PostingSource::Capture(id) => id.as_str(),
        }
    }
}

/// One immutable line of an account's statement: a signed change of its balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingRecord {
    pub source: PostingSource,
    /// Negative for a debit, positive for a credit (minor units).
    pub amount: i64,
    pub counterparty: AccountId,
}

/// The outcome of a transfer as first decided; a retry returns it unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOutcome {
    /// Debited; the credit leg is in the outbox (or already applied).
    Accepted,
    /// Refused for a business reason (insufficient funds, …); nothing moved.
    Rejected(ErrorCode),
}

/// A transfer's durable record: its idempotency record and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub outcome: TransferOutcome,
}

/// Where a hold stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Active,
    Released { expired: bool },
    Captured { to: AccountId, amount: Amount },
}

/// A hold: money frozen on an account until released or captured (or it expires).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub account: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    /// Milliseconds since the Unix epoch after which the hold is released.
    pub expires_at_ms: Option<u64>,
    pub state: HoldState,
}

/// The kind of credit leg waiting in an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutboxKind {
    Transfer,
    Capture,
}

impl OutboxKind {
    pub fn tag(self) -> i64 {
        match self {
            OutboxKind::Transfer => 1,
            OutboxKind::Capture => 2,
        }
    }
}

/// A credit leg that the payer's commit promised to the payee: delivered exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub source: PostingSource,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

impl OutboxRecord {
    pub fn kind(&self) -> OutboxKind {
        match self.source {
            PostingSource::Transfer(_) => OutboxKind::Transfer,
            PostingSource::Capture(_) => OutboxKind::Capture,
        }
    }
}
