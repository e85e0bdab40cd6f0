//! The storage interface, shaped like FoundationDB.
//!
//! Owns: the contract every backend honours (ordered byte keys, serializable transactions,
//! range reads, writes and clears, preconditions that fence a commit, FoundationDB's
//! limits with typed errors, and a three-way commit outcome), the [`conformance`] suite
//! that checks it, and the backends ([`embedded`]; FoundationDB behind the `fdb` feature).
//!
//! Must never: acknowledge a commit before it is durable, expose a write before it is
//! durable, or hide an unknown commit outcome behind a retryable error. A caller that gets
//! [`CommitError::Unknown`] must resolve it through its idempotency records.
//!
//! Reads return boxed futures so that a networked backend can serve them asynchronously;
//! the embedded backend answers them at once.
//!
//! Semantics every backend honours:
//! * [`Store::get`], [`Store::get_many`] and [`Store::get_range`] read the latest durable
//!   committed state, outside any transaction.
//! * A [`Transaction`] reads its own writes. It commits only if every key and range it read
//!   still reads the same at commit time and every [`Transaction::require`] precondition
//!   holds, so committed transactions are serializable. A transaction that read nothing
//!   and required nothing never conflicts (blind writes).
//! * Writes of one transaction become visible all at once, and only once durable.

pub mod conformance;
pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod fdb_errors;
pub mod fdb_layout;
pub mod url;

use std::future::Future;
use std::pin::Pin;

/// A latency histogram in microseconds, from 1 µs to one hour at 3 significant digits: the
/// shape of [`Store::take_commit_latency`], shared by every latency Tessera records.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// A boxed, sendable future: the shape of every asynchronous answer of this interface.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// FoundationDB's limits, enforced by every backend.
pub mod limits {
    /// Largest key FoundationDB accepts, in bytes (its whole key, subspace prefix included).
    pub const FDB_KEY_BYTES_MAX: usize = 10_000;
    /// Bytes reserved in every key for a backend's subspace prefix (the FoundationDB
    /// backend places each deployment under a prefix of at most this many bytes).
    pub const KEY_PREFIX_BYTES_MAX: usize = 256;
    /// Largest key, in bytes: FoundationDB's limit less the room kept for a prefix, so that
    /// every backend accepts exactly the same keys.
    pub const KEY_BYTES_MAX: usize = FDB_KEY_BYTES_MAX - KEY_PREFIX_BYTES_MAX;
    /// Largest value, in bytes.
    pub const VALUE_BYTES_MAX: usize = 100_000;
    /// Largest transaction: the sum of its keys, values and ranges written or required.
    pub const TRANSACTION_BYTES_MAX: usize = 10_000_000;
    /// Longest transaction, from `begin` to `commit`.
    pub const TRANSACTION_DURATION_MS_MAX: u64 = 5_000;
    /// Most rows one range read returns; callers page with the last key.
    pub const RANGE_ROWS_MAX: usize = 100_000;
    /// Most keys one `get_many` reads.
    pub const GET_MANY_KEYS_MAX: usize = 100_000;
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Errors of reads and of building a transaction. None of them commits anything.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("transaction of {bytes} bytes exceeds the limit of {max}")]
    TransactionTooLarge { bytes: usize, max: usize },
    #[error("transaction is older than {max_ms} ms")]
    TransactionTooOld { max_ms: u64 },
    #[error("request asks for {requested} rows or keys; at most {max} are allowed")]
    RequestTooLarge { requested: usize, max: usize },
    #[error("range begins at or after its end")]
    InvalidRange,
    #[error("store is closed")]
    Closed,
    #[error("store data is corrupt: {detail}")]
    Corrupt { detail: String },
    #[error("store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("store backend failed: {detail}")]
    Backend { detail: String },
}

impl StoreError {
    /// Whether the same request may succeed if tried again unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::TransactionTooOld { .. } | StoreError::Backend { .. }
        )
    }
}

/// Why a commit failed. Every variant but [`CommitError::Unknown`] means nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// One or more [`Transaction::require`] preconditions did not hold; their keys are listed.
    #[error("precondition failed on {} key(s)", keys.len())]
    PreconditionFailed { keys: Vec<Vec<u8>> },
    /// A key or range the transaction read changed before it could commit. Retryable.
    #[error("transaction conflicted with a concurrent commit")]
    Conflict,
    /// The store refuses new commits for now (queue full). Retryable.
    #[error("store is overloaded")]
    Overloaded,
    /// The transaction broke a limit or the store is closed. Nothing was written.
    #[error(transparent)]
    Rejected(StoreError),
    /// The commit may or may not have become durable (I/O failure while syncing, lost
    /// connection). Resolve through idempotency records before acting on it.
    #[error("commit outcome unknown: {detail}")]
    Unknown { detail: String },
}

impl CommitError {
    /// True only for [`CommitError::Unknown`]: the writes may be durable.
    pub fn maybe_committed(&self) -> bool {
        matches!(self, CommitError::Unknown { .. })
    }
    /// Whether retrying the same transaction (rebuilt from fresh reads) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CommitError::Conflict | CommitError::Overloaded)
    }
}

/// A range read request: keys in `[begin, end)`, at most `limit` rows, in key order or
/// reversed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
    pub limit: usize,
    pub reverse: bool,
}

impl RangeRequest {
    pub fn new(begin: Vec<u8>, end: Vec<u8>, limit: usize) -> Self {
        RangeRequest {
            begin,
            end,
            limit,
            reverse: false,
        }
    }

    /// All keys that start with `prefix`.
    pub fn prefix(prefix: &[u8], limit: usize) -> Self {
        Self::new(prefix.to_vec(), prefix_end(prefix), limit)
    }

    /// Checks the request against the limits.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.begin >= self.end {
            return Err(StoreError::InvalidRange);
        }
        if self.limit > limits::RANGE_ROWS_MAX {
            return Err(StoreError::RequestTooLarge {
                requested: self.limit,
                max: limits::RANGE_ROWS_MAX,
            });
        }
        check_key(&self.begin)?;
        check_key(&self.end)
    }
}

/// The first key after every key that starts with `prefix` (FoundationDB's `strinc`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff]
}

/// Checks a key against [`limits::KEY_BYTES_MAX`].
pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > limits::KEY_BYTES_MAX {
        return Err(StoreError::KeyTooLarge {
            len: key.len(),
            max: limits::KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Checks a value against [`limits::VALUE_BYTES_MAX`].
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > limits::VALUE_BYTES_MAX {
        return Err(StoreError::ValueTooLarge {
            len: value.len(),
            max: limits::VALUE_BYTES_MAX,
        });
    }
    Ok(())
}

/// Counters a backend reports about itself (for benchmarks and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed since open.
    pub transactions_committed: u64,
    /// Durable writes (fsyncs of the log, or their equivalent) since open.
    pub durable_writes: u64,
    /// Bytes appended to durable storage since open.
    pub bytes_written: u64,
}

/// A store: the durable, ordered key-value space that a deployment shares.
pub trait Store: Send + Sync + 'static {
    /// Starts a transaction.
    fn begin(&self) -> Result<Box<dyn Transaction>, StoreError>;
    /// Reads one key at the latest committed state.
    fn get(&self, key: &[u8]) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>>;
    /// Reads many keys at one committed state; answers in the order asked.
    fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<Option<Vec<u8>>>, StoreError>>;
    /// Reads a range at the latest committed state.
    fn get_range(
        &self,
        request: RangeRequest,
    ) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>>;
    /// Counters about the backend.
    fn stats(&self) -> StoreStats;
    /// Latencies of the durable commits since the last call, in microseconds: from
    /// [`Transaction::commit`] to the store's answer (queueing, validation, the log write and
    /// its sync). `None` when the backend does not measure it.
    fn take_commit_latency(&self) -> Option<hdrhistogram::Histogram<u64>> {
        None
    }
    /// A future that resolves when the value at `key` may have changed since this call
    /// (it may also resolve spuriously, and a change that is undone before the backend looks
    /// may go unseen). Callers that must not miss a change call `watch` first, then read the
    /// key, and read it again once the future resolves. `None` means the backend has no
    /// watches and callers poll.
    fn watch(&self, key: &[u8]) -> Option<BoxFuture<'static, Result<(), StoreError>>> {
        let _ = key;
        None
    }
}

/// A transaction: reads see its own writes; writes are buffered until [`Transaction::commit`].
pub trait Transaction: Send {
    /// Reads a key; the key joins the transaction's read set.
    fn get(&mut self, key: &[u8]) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>>;
    /// Reads a range; the range joins the transaction's read set.
    fn get_range(
        &mut self,
        request: RangeRequest,
    ) -> BoxFuture<'_, Result<Vec<KeyValue>, StoreError>>;
    /// Writes `value` at `key`.
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`.
    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Removes every key in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError>;
    /// Commits only if `key` holds exactly `expected` at commit time (`None`: absent).
    /// This is how writes are fenced by a slot epoch and how ids are made unique.
    fn require(&mut self, key: &[u8], expected: Option<&[u8]>) -> Result<(), StoreError>;
    /// Bytes this transaction would write so far (keys, values, ranges, preconditions).
    fn size_bytes(&self) -> usize;
    /// A hint: about `bytes` more of writes and preconditions will follow (a backend may
    /// reserve buffers once instead of growing them). Changes nothing else.
    fn reserve(&mut self, bytes: usize) {
        let _ = bytes;
    }
    /// Commits: resolves to the commit version once the writes are durable.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<u64, CommitError>>;
}
