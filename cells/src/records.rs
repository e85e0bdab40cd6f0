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

/// Encodes `record` into `out`, replacing what it held (for values a caller copies and
/// drops: no allocation once `out` has grown).
pub fn encode_into<T: Serialize>(record: &T, out: &mut Vec<u8>) {
    out.clear();
    let buffer = std::mem::take(out);
    // Serializing these plain structs into a Vec cannot fail.
    *out = postcard::to_extend(record, buffer).expect("records always serialize");
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
        encode_into(record, scratch);
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

/// Writes into `out` the encoding of `AccountRecord { spec, balance, balance_through_seq }`
/// given `spec_bytes`, the encoding of `spec`: byte for byte what [`encode_into`] writes for
/// the whole record (postcard writes a struct's fields one after another, with no framing).
/// An account actor encodes its spec once, at load, and its balance record at every commit.
pub fn encode_account_record_into(
    spec_bytes: &[u8],
    balance: i128,
    balance_through_seq: u64,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(spec_bytes);
    let buffer = std::mem::take(out);
    *out = postcard::to_extend(&(balance, balance_through_seq), buffer)
        .expect("records always serialize");
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

/// Most postings in one statement block.
pub const BLOCK_POSTINGS_MAX: usize = 256;
/// Largest encoded posting: a source tag, an id of at most 64 bytes with its length, a
/// varint amount (at most 10 bytes) and a counterparty of at most 64 bytes with its length.
pub const POSTING_BYTES_MAX: usize = 1 + 1 + 64 + 10 + 1 + 64;
/// Bytes of a typical encoded posting (ids of 10–20 characters), for sizing a block.
const POSTING_BYTES_TYPICAL: usize = 48;

const _: () =
    assert!(BLOCK_POSTINGS_MAX * POSTING_BYTES_MAX + 10 <= crate::store::limits::VALUE_BYTES_MAX);

/// The postings one account commit appends to the account's statement, stored as one value
/// under the key of the first one's sequence number ([`crate::keys::Keyspace::posting`]):
/// a commit of thousands of credits writes a few keys, not thousands. A block holds at most
/// [`BLOCK_POSTINGS_MAX`] postings (a commit with more writes several blocks); blocks are
/// immutable and never span two commits, so the sequence numbers of an account's blocks
/// are contiguous and every balance record's `balance_through_seq` falls on a block
/// boundary.
///
/// Encoded as the postcard encoding of `Vec<PostingRecord>` (a varint count, then the
/// postings), built in place without collecting the records; read with
/// [`decode_postings`].
#[derive(Debug, Default)]
pub struct PostingBlock {
    count: usize,
    postings: Vec<u8>,
}

impl PostingBlock {
    /// Appends `posting` (the block must not be full).
    pub fn push(&mut self, posting: &PostingRecord) {
        assert!(
            !self.is_full(),
            "a posting block holds at most {BLOCK_POSTINGS_MAX}"
        );
        let before = self.postings.len();
        let buffer = std::mem::take(&mut self.postings);
        self.postings = postcard::to_extend(posting, buffer).expect("records always serialize");
        debug_assert!(self.postings.len() - before <= POSTING_BYTES_MAX);
        self.count += 1;
    }

    /// Makes room for about `postings` more (at most a block's worth), so that a draft's
    /// block is sized once instead of grown by doubling.
    pub fn reserve(&mut self, postings: usize) {
        let postings = postings.min(BLOCK_POSTINGS_MAX - self.count);
        self.postings.reserve(postings * POSTING_BYTES_TYPICAL);
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.count >= BLOCK_POSTINGS_MAX
    }

    /// Bytes of the postings so far (the encoded block adds at most 2 bytes of count).
    pub fn bytes(&self) -> usize {
        self.postings.len()
    }

    /// The encoded block; leaves this one empty.
    pub fn take(&mut self) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.postings.len() + 2);
        self.write_into(&mut value);
        value
    }

    /// Writes the encoded block into `out` (replacing what it held); leaves this one empty
    /// with its buffer kept for the next block.
    pub fn write_into(&mut self, out: &mut Vec<u8>) {
        out.clear();
        let buffer = std::mem::take(out);
        *out = postcard::to_extend(&self.count, buffer).expect("a count always serializes");
        out.extend_from_slice(&self.postings);
        self.postings.clear();
        self.count = 0;
    }
}

/// Decodes a statement block (see [`PostingBlock`]): its postings, oldest first. An empty
/// block is an error: no commit writes one.
pub fn decode_postings(bytes: &[u8]) -> Result<Vec<PostingRecord>, RecordError> {
    let postings: Vec<PostingRecord> = decode("posting block", bytes)?;
    if postings.is_empty() || postings.len() > BLOCK_POSTINGS_MAX {
        return Err(RecordError {
            record: "posting block",
            source: postcard::Error::DeserializeBadEncoding,
        });
    }
    Ok(postings)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn posting(id: &str, amount: i64, counterparty: &str, capture: bool) -> PostingRecord {
        PostingRecord {
            source: if capture {
                PostingSource::Capture(HoldId::new(id).unwrap())
            } else {
                PostingSource::Transfer(TransferId::new(id).unwrap())
            },
            amount,
            counterparty: AccountId::new(counterparty).unwrap(),
        }
    }

    proptest! {
        /// A balance record written from its spec's encoding is the record's own encoding.
        #[test]
        fn account_records_from_spec_bytes_encode_as_the_record(
            id in "[A-Za-z0-9._:-]{1,64}",
            user in "[A-Za-z0-9._:-]{1,64}",
            currency in prop::sample::select(vec!["USD", "JPY", "BHD", "EUR"]),
            system in any::<bool>(),
            overdraft_limit in any::<u64>(),
            mode in 0u32..3,
            parts in 1u16..=64,
            balance in any::<i128>(),
            balance_through_seq in any::<u64>(),
        ) {
            let spec = AccountSpec {
                id: AccountId::new(&id).unwrap(),
                user: UserId::new(&user).unwrap(),
                currency: Currency::from_code(currency).unwrap(),
                kind: if system { AccountKind::System } else { AccountKind::Customer },
                overdraft_limit,
                mode: match mode {
                    0 => HotMode::Standard,
                    1 => HotMode::Append,
                    _ => HotMode::Split { parts },
                },
            };
            let mut fast = vec![7u8; 3];
            encode_account_record_into(&encode(&spec), balance, balance_through_seq, &mut fast);
            let record = AccountRecord { spec, balance, balance_through_seq };
            prop_assert_eq!(&fast, &encode(&record));
            prop_assert_eq!(decode::<AccountRecord>("account", &fast).unwrap(), record);
        }

        /// A block built in place is exactly the encoding of the postings as a `Vec`, and
        /// decodes back to them.
        #[test]
        fn blocks_round_trip(
            postings in proptest::collection::vec(
                ("[A-Za-z0-9._:-]{1,64}", any::<i64>(), "[A-Za-z0-9._:-]{1,64}", any::<bool>()),
                1..=BLOCK_POSTINGS_MAX,
            )
        ) {
            let postings: Vec<PostingRecord> = postings
                .iter()
                .map(|(id, amount, to, capture)| posting(id, *amount, to, *capture))
                .collect();
            let mut block = PostingBlock::default();
            for p in &postings {
                let before = block.bytes();
                block.push(p);
                prop_assert!(block.bytes() - before <= POSTING_BYTES_MAX);
            }
            prop_assert_eq!(block.len(), postings.len());
            let bytes = block.take();
            prop_assert!(block.is_empty());
            prop_assert!(bytes.len() <= crate::store::limits::VALUE_BYTES_MAX);
            prop_assert_eq!(&bytes, &encode(&postings));
            // Written into a used buffer instead (what drafts do), and encoded into one.
            for p in &postings {
                block.push(p);
            }
            let mut reused = b"stale bytes".to_vec();
            block.write_into(&mut reused);
            prop_assert!(block.is_empty());
            prop_assert_eq!(&reused, &bytes);
            encode_into(&postings, &mut reused);
            prop_assert_eq!(&reused, &bytes);
            prop_assert_eq!(decode_postings(&bytes).unwrap(), postings);
        }
    }

    #[test]
    fn empty_overfull_and_garbage_blocks_are_refused() {
        assert!(decode_postings(&encode(&Vec::<PostingRecord>::new())).is_err());
        let many = vec![posting("t", 1, "a", false); BLOCK_POSTINGS_MAX + 1];
        assert!(decode_postings(&encode(&many)).is_err());
        assert!(decode_postings(&[0xff, 0xff, 0x01]).is_err());
        // A lone posting record is not a block.
        assert!(decode_postings(&encode(&posting("t", 1, "a", false))).is_err());
    }
}
