//! The store protocol: the messages a [`crate::remote::RemoteStore`] and
//! [`crate::store_server`] exchange inside frames, and the mutation block that carries a
//! transaction's buffered writes and preconditions.
//!
//! Owns: the request and response messages (postcard, borrowing byte strings from the frame
//! so that decoding copies nothing), the hand-written mutation block (appended to by
//! `set`/`clear`/`require` on the client, so shipping a transaction needs no encoding pass),
//! and the mirrors of [`StoreError`] and [`CommitError`] that cross the wire.
//!
//! Must never: do I/O, frame messages (that is [`crate::frame`]), or trust a length read
//! from the wire without checking it against the bytes that are there.
//!
//! # Mutation block
//! A sequence of `[u8 tag][u32 LE length][bytes]...`: tag 1 set (key, value), 2 clear (key),
//! 3 clear range (begin, end), 4 require absent (key), 5 require value (key, value).

use cells::store::embedded::TRANSACTION_WRITES_MAX;
use cells::store::{CommitError, KeyValue, RangeRequest, StoreError, StoreStats, Transaction};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::frame::{self, FrameError};

/// Most mutations (writes plus preconditions) in one transaction: the embedded backend's
/// write bound, and as many preconditions again.
pub const TRANSACTION_MUTATIONS_MAX: usize = 2 * TRANSACTION_WRITES_MAX;
/// Framing bytes per mutation at most (tag and two lengths).
pub const MUTATION_FRAMING_BYTES_MAX: usize = 9;
/// A range or `get_many` answer is split into parts of about this many bytes.
pub const RESPONSE_PART_BYTES: usize = 4 * 1024 * 1024;
/// Request id of a message that expects no answer.
pub const NO_REPLY: u64 = 0;

const _: () = assert!(
    TRANSACTION_MUTATIONS_MAX * MUTATION_FRAMING_BYTES_MAX <= frame::MUTATION_OVERHEAD_BYTES_MAX
);
const _: () = assert!(RESPONSE_PART_BYTES * 2 <= frame::FRAME_BYTES_MAX);

const TAG_SET: u8 = 1;
const TAG_CLEAR: u8 = 2;
const TAG_CLEAR_RANGE: u8 = 3;
const TAG_REQUIRE_ABSENT: u8 = 4;
const TAG_REQUIRE_VALUE: u8 = 5;

/// A byte string borrowed from the frame it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes<'a>(pub &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

struct BorrowedBytes;

impl<'de> Visitor<'de> for BorrowedBytes {
    type Value = Bytes<'de>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a borrowed byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, bytes: &'de [u8]) -> Result<Self::Value, E> {
        Ok(Bytes(bytes))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(BorrowedBytes)
    }
}

/// Which server-held transaction a read joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionRef {
    /// Chosen by the client, unique per connection.
    pub id: u64,
    /// True on the transaction's first read: the server begins it.
    pub begin: bool,
}

/// A range read on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRange<'a> {
    #[serde(borrow)]
    pub begin: Bytes<'a>,
    #[serde(borrow)]
    pub end: Bytes<'a>,
    pub limit: u64,
    pub reverse: bool,
}

impl<'a> WireRange<'a> {
    pub fn from_request(request: &'a RangeRequest) -> Self {
        WireRange {
            begin: Bytes(&request.begin),
            end: Bytes(&request.end),
            limit: request.limit as u64,
            reverse: request.reverse,
        }
    }

    pub fn to_request(&self) -> RangeRequest {
        RangeRequest {
            begin: self.begin.0.to_vec(),
            end: self.end.0.to_vec(),
            limit: usize::try_from(self.limit).unwrap_or(usize::MAX),
            reverse: self.reverse,
        }
    }
}

/// A request and the id its answer will carry ([`NO_REPLY`]: none).
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestFrame<'a> {
    pub id: u64,
    #[serde(borrow)]
    pub request: Request<'a>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request<'a> {
    /// [`cells::store::Store::get`].
    Get {
        #[serde(borrow)]
        key: Bytes<'a>,
    },
    /// [`cells::store::Store::get_many`].
    GetMany {
        #[serde(borrow)]
        keys: Vec<Bytes<'a>>,
    },
    /// [`cells::store::Store::get_range`].
    GetRange {
        #[serde(borrow)]
        range: WireRange<'a>,
    },
    /// Applies `mutations` to the server-held transaction, then reads `key` in it.
    TransactionGet {
        transaction: TransactionRef,
        #[serde(borrow)]
        mutations: Bytes<'a>,
        #[serde(borrow)]
        key: Bytes<'a>,
    },
    /// Applies `mutations` to the server-held transaction, then reads `range` in it.
    TransactionGetRange {
        transaction: TransactionRef,
        #[serde(borrow)]
        mutations: Bytes<'a>,
        #[serde(borrow)]
        range: WireRange<'a>,
    },
    /// Commits the server-held transaction `transaction` (or a new one when `None`) after
    /// applying `mutations`. `age_ms` is the time since the client's `begin`.
    Commit {
        transaction: Option<u64>,
        age_ms: u64,
        #[serde(borrow)]
        mutations: Bytes<'a>,
    },
    /// Drops a server-held transaction (sent with [`NO_REPLY`]).
    Abort { transaction: u64 },
}

/// An answer, with the server's store counters as of answering.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseFrame<'a> {
    pub id: u64,
    pub stats: WireStats,
    #[serde(borrow)]
    pub response: Response<'a>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStats {
    pub transactions_committed: u64,
    pub durable_writes: u64,
    pub bytes_written: u64,
}

impl From<StoreStats> for WireStats {
    fn from(stats: StoreStats) -> Self {
        WireStats {
            transactions_committed: stats.transactions_committed,
            durable_writes: stats.durable_writes,
            bytes_written: stats.bytes_written,
        }
    }
}

impl From<WireStats> for StoreStats {
    fn from(stats: WireStats) -> Self {
        StoreStats {
            transactions_committed: stats.transactions_committed,
            durable_writes: stats.durable_writes,
            bytes_written: stats.bytes_written,
        }
    }
}

pub type Row<'a> = (Bytes<'a>, Bytes<'a>);

#[derive(Debug, Serialize, Deserialize)]
pub enum Response<'a> {
    Value(#[serde(borrow)] Result<Option<Bytes<'a>>, WireStoreError>),
    Values(#[serde(borrow)] Result<Vec<Option<Bytes<'a>>>, WireStoreError>),
    Rows(#[serde(borrow)] Result<Vec<Row<'a>>, WireStoreError>),
    /// Leading values of a `get_many` answer too large for one frame; more follow.
    ValuesPart(#[serde(borrow)] Vec<Option<Bytes<'a>>>),
    /// Leading rows of a range answer too large for one frame; more follow.
    RowsPart(#[serde(borrow)] Vec<Row<'a>>),
    Committed(#[serde(borrow)] Result<u64, WireCommitError<'a>>),
}

/// [`StoreError`] on the wire (an I/O error travels as its message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireStoreError {
    KeyTooLarge { len: u64, max: u64 },
    ValueTooLarge { len: u64, max: u64 },
    TransactionTooLarge { bytes: u64, max: u64 },
    TransactionTooOld { max_ms: u64 },
    RequestTooLarge { requested: u64, max: u64 },
    InvalidRange,
    Closed,
    Corrupt { detail: String },
    Io { detail: String },
    Backend { detail: String },
}

fn to_u64(value: usize) -> u64 {
    value as u64
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

impl From<&StoreError> for WireStoreError {
    fn from(error: &StoreError) -> Self {
        use StoreError as E;
        match error {
            E::KeyTooLarge { len, max } => Self::KeyTooLarge {
                len: to_u64(*len),
                max: to_u64(*max),
            },
            E::ValueTooLarge { len, max } => Self::ValueTooLarge {
                len: to_u64(*len),
                max: to_u64(*max),
            },
            E::TransactionTooLarge { bytes, max } => Self::TransactionTooLarge {
                bytes: to_u64(*bytes),
                max: to_u64(*max),
            },
            E::TransactionTooOld { max_ms } => Self::TransactionTooOld { max_ms: *max_ms },
            E::RequestTooLarge { requested, max } => Self::RequestTooLarge {
                requested: to_u64(*requested),
                max: to_u64(*max),
            },
            E::InvalidRange => Self::InvalidRange,
            E::Closed => Self::Closed,
            E::Corrupt { detail } => Self::Corrupt {
                detail: detail.clone(),
            },
            E::Io(error) => Self::Io {
                detail: error.to_string(),
            },
            E::Backend { detail } => Self::Backend {
                detail: detail.clone(),
            },
        }
    }
}

impl From<WireStoreError> for StoreError {
    fn from(error: WireStoreError) -> Self {
        use WireStoreError as W;
        match error {
            W::KeyTooLarge { len, max } => Self::KeyTooLarge {
                len: to_usize(len),
                max: to_usize(max),
            },
            W::ValueTooLarge { len, max } => Self::ValueTooLarge {
                len: to_usize(len),
                max: to_usize(max),
            },
            W::TransactionTooLarge { bytes, max } => Self::TransactionTooLarge {
                bytes: to_usize(bytes),
                max: to_usize(max),
            },
            W::TransactionTooOld { max_ms } => Self::TransactionTooOld { max_ms },
            W::RequestTooLarge { requested, max } => Self::RequestTooLarge {
                requested: to_usize(requested),
                max: to_usize(max),
            },
            W::InvalidRange => Self::InvalidRange,
            W::Closed => Self::Closed,
            W::Corrupt { detail } => Self::Corrupt { detail },
            W::Io { detail } => Self::Io(std::io::Error::other(detail)),
            W::Backend { detail } => Self::Backend { detail },
        }
    }
}

/// [`CommitError`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireCommitError<'a> {
    PreconditionFailed {
        #[serde(borrow)]
        keys: Vec<Bytes<'a>>,
    },
    Conflict,
    Overloaded,
    Rejected(WireStoreError),
    Unknown {
        detail: String,
    },
}

impl<'a> WireCommitError<'a> {
    pub fn from_error(error: &'a CommitError) -> Self {
        match error {
            CommitError::PreconditionFailed { keys } => Self::PreconditionFailed {
                keys: keys.iter().map(|key| Bytes(key)).collect(),
            },
            CommitError::Conflict => Self::Conflict,
            CommitError::Overloaded => Self::Overloaded,
            CommitError::Rejected(error) => Self::Rejected(error.into()),
            CommitError::Unknown { detail } => Self::Unknown {
                detail: detail.clone(),
            },
        }
    }

    pub fn into_error(self) -> CommitError {
        match self {
            Self::PreconditionFailed { keys } => CommitError::PreconditionFailed {
                keys: keys.into_iter().map(|key| key.0.to_vec()).collect(),
            },
            Self::Conflict => CommitError::Conflict,
            Self::Overloaded => CommitError::Overloaded,
            Self::Rejected(error) => CommitError::Rejected(error.into()),
            Self::Unknown { detail } => CommitError::Unknown { detail },
        }
    }
}

/// Owned rows of a range answer.
pub fn rows_to_owned(rows: Vec<Row<'_>>) -> Vec<KeyValue> {
    rows.into_iter()
        .map(|(key, value)| (key.0.to_vec(), value.0.to_vec()))
        .collect()
}

/// Encodes `message` as one frame appended to `out`.
pub fn encode_message(out: &mut Vec<u8>, message: &impl Serialize) -> Result<(), FrameError> {
    let start = frame::start_frame(out);
    if let Err(error) = postcard::to_io(message, &mut *out) {
        out.truncate(start);
        return Err(FrameError::malformed(error));
    }
    frame::finish_frame(out, start)
}

/// Decodes a whole payload as one message; trailing bytes are malformed.
pub fn decode_message<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    let (message, rest) = postcard::take_from_bytes(payload).map_err(FrameError::malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends mutations to a block. Lengths were checked against the store's limits before.
pub mod encode {
    use super::*;

    pub fn set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
        out.reserve(MUTATION_FRAMING_BYTES_MAX + key.len() + value.len());
        out.push(TAG_SET);
        push_bytes(out, key);
        push_bytes(out, value);
    }

    pub fn clear(out: &mut Vec<u8>, key: &[u8]) {
        out.push(TAG_CLEAR);
        push_bytes(out, key);
    }

    pub fn clear_range(out: &mut Vec<u8>, begin: &[u8], end: &[u8]) {
        out.push(TAG_CLEAR_RANGE);
        push_bytes(out, begin);
        push_bytes(out, end);
    }

    pub fn require(out: &mut Vec<u8>, key: &[u8], expected: Option<&[u8]>) {
        match expected {
            None => {
                out.push(TAG_REQUIRE_ABSENT);
                push_bytes(out, key);
            }
            Some(value) => {
                out.push(TAG_REQUIRE_VALUE);
                push_bytes(out, key);
                push_bytes(out, value);
            }
        }
    }
}

/// One decoded mutation, borrowing from the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation<'a> {
    Set(&'a [u8], &'a [u8]),
    Clear(&'a [u8]),
    ClearRange(&'a [u8], &'a [u8]),
    Require(&'a [u8], Option<&'a [u8]>),
}

/// Iterates a mutation block; a malformed block yields one error and stops.
pub struct Mutations<'a> {
    rest: &'a [u8],
}

impl<'a> Mutations<'a> {
    pub fn new(block: &'a [u8]) -> Self {
        Mutations { rest: block }
    }

    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
            return Err(FrameError::malformed("mutation length cut short"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(FrameError::malformed("mutation bytes cut short"));
        }
        let (bytes, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(bytes)
    }

    fn mutation(&mut self, tag: u8) -> Result<Mutation<'a>, FrameError> {
        Ok(match tag {
            TAG_SET => Mutation::Set(self.bytes()?, self.bytes()?),
            TAG_CLEAR => Mutation::Clear(self.bytes()?),
            TAG_CLEAR_RANGE => Mutation::ClearRange(self.bytes()?, self.bytes()?),
            TAG_REQUIRE_ABSENT => Mutation::Require(self.bytes()?, None),
            TAG_REQUIRE_VALUE => Mutation::Require(self.bytes()?, Some(self.bytes()?)),
            other => return Err(FrameError::malformed(format!("mutation tag {other}"))),
        })
    }
}

impl<'a> Iterator for Mutations<'a> {
    type Item = Result<Mutation<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&tag, rest) = self.rest.split_first()?;
        self.rest = rest;
        let result = self.mutation(tag);
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

/// Applies a mutation block to `transaction`. The outer error is a malformed block (the
/// connection must close); the inner one is the store refusing a mutation.
pub fn apply_mutations(
    block: &[u8],
    transaction: &mut dyn Transaction,
) -> Result<Result<(), StoreError>, FrameError> {
    for mutation in Mutations::new(block) {
        let applied = match mutation? {
            Mutation::Set(key, value) => transaction.set(key, value),
            Mutation::Clear(key) => transaction.clear(key),
            Mutation::ClearRange(begin, end) => transaction.clear_range(begin, end),
            Mutation::Require(key, expected) => transaction.require(key, expected),
        };
        if let Err(error) = applied {
            return Ok(Err(error));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_block_round_trips() {
        let mut block = Vec::new();
        encode::set(&mut block, b"k", b"v");
        encode::clear(&mut block, b"");
        encode::clear_range(&mut block, b"a", b"b");
        encode::require(&mut block, b"e", None);
        encode::require(&mut block, b"e", Some(b"7"));
        let decoded: Result<Vec<Mutation>, FrameError> = Mutations::new(&block).collect();
        assert_eq!(
            decoded.expect("decodes"),
            vec![
                Mutation::Set(b"k", b"v"),
                Mutation::Clear(b""),
                Mutation::ClearRange(b"a", b"b"),
                Mutation::Require(b"e", None),
                Mutation::Require(b"e", Some(b"7")),
            ]
        );
        for cut in 1..block.len() {
            let last = Mutations::new(&block[..cut]).last().expect("one item");
            let whole_prefix = [11, 16, 27, 33].contains(&cut);
            assert_eq!(last.is_err(), !whole_prefix, "cut at {cut}");
        }
        assert!(Mutations::new(&[9]).next().expect("item").is_err());
    }

    #[test]
    fn messages_round_trip_and_reject_trailing_bytes() {
        let frame = RequestFrame {
            id: 7,
            request: Request::Commit {
                transaction: Some(3),
                age_ms: 12,
                mutations: Bytes(b"abc"),
            },
        };
        let payload = postcard::to_stdvec(&frame).expect("encode");
        let decoded: RequestFrame = decode_message(&payload).expect("decode");
        assert!(matches!(
            decoded.request,
            Request::Commit {
                transaction: Some(3),
                age_ms: 12,
                mutations: Bytes(b"abc")
            }
        ));
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode_message::<RequestFrame>(&longer).is_err());
        assert!(decode_message::<RequestFrame>(&payload[..payload.len() - 1]).is_err());
    }
}
