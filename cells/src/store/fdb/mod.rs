//! The FoundationDB backend (cargo feature `fdb`): the store of deployments beyond one
//! machine. A multi-region FoundationDB cluster replicates every commit across DCs before
//! it is acknowledged (see `ops/fdb/README.md`).
//!
//! Owns: [`FdbNetwork`] (FoundationDB's client network thread, started once per process),
//! [`FdbStore`] (one store inside a cluster, under its own key prefix) and its transactions.
//! Everything that does not need `libfdb_c` (error mapping, key layout, limit accounting,
//! commit versions) lives in [`crate::store::fdb_errors`] and [`crate::store::fdb_layout`]
//! so that it is tested without a cluster.
//!
//! Must never: hand FoundationDB a request that breaks an interface limit (they are checked
//! first, with the same typed errors as the embedded backend), report a commit as failed
//! with nothing written unless FoundationDB says so, or read or write outside its prefix.
//!
//! # How the contract maps onto FoundationDB
//! * Transactions are FoundationDB transactions: reads are serializable (non-snapshot) and
//!   see the transaction's own writes; a transaction that read nothing never conflicts.
//! * [`Transaction::require`] has no FoundationDB counterpart. At commit the backend reads
//!   every required key at the transaction's read version and adds a read conflict range on
//!   it, so a concurrent change to it is a conflict, exactly as a serializable read would
//!   be; if a value differs it returns [`CommitError::PreconditionFailed`] and commits
//!   nothing. The read is a snapshot read with snapshot read-your-writes disabled (a database
//!   option), because a precondition is about the committed value, not the transaction's own
//!   write of the same key (an id is required absent and then written in one transaction).
//! * The commit version is built from the transaction's versionstamp (FoundationDB version
//!   and order inside the commit batch), so it is unique per transaction and increasing.
//! * `transaction_too_old` after five seconds is FoundationDB's; the backend also checks the
//!   age itself at every read and at commit, because a transaction that only writes never
//!   meets FoundationDB's check.
//!
//! # Starting the network
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cells::store::fdb::{FdbNetwork, FdbOptions, FdbStore};
//! // Once per process, before any store; keep the guard alive until every store is dropped.
//! let network = unsafe { FdbNetwork::boot()? };
//! let store = FdbStore::open("/etc/foundationdb/fdb.cluster".as_ref(), FdbOptions::default())?;
//! // ... run the process ...
//! drop(store);
//! drop(network); // stops the network thread; must happen before the process exits
//! # Ok(()) }
//! ```

mod transaction;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use foundationdb::options::{DatabaseOption, StreamingMode, TransactionOption};
use foundationdb::{api::NetworkAutoStop, Database, FdbError, KeySelector, RangeOption};
use futures::future::try_join_all;

use super::fdb_errors::{describe, read_error, ErrorContext};
use super::fdb_layout::{strip_rows, KeyPrefix, PrefixError, RangeCursor};
use super::limits::{GET_MANY_KEYS_MAX, TRANSACTION_DURATION_MS_MAX};
use super::{
    check_key, BoxFuture, KeyValue, RangeRequest, Store, StoreError, StoreStats, Transaction,
};
use transaction::FdbTransaction;

/// FoundationDB's own timeout of a transaction, from creation to the end of its commit. It
/// is longer than [`TRANSACTION_DURATION_MS_MAX`] so that a commit started just before the
/// age limit can finish, and it bounds every wait on an unreachable cluster.
pub const FDB_TRANSACTION_TIMEOUT_MS: i32 = 10_000;
/// Most watches one process keeps outstanding (FoundationDB's default, set explicitly);
/// one more fails with `too_many_watches`, a retryable [`StoreError::Backend`].
pub const FDB_WATCHES_MAX: i32 = 10_000;

const _: () = assert!(FDB_TRANSACTION_TIMEOUT_MS as u64 > TRANSACTION_DURATION_MS_MAX);

/// The network thread has not been started in this process.
const NETWORK_NEVER_STARTED: u8 = 0;
const NETWORK_RUNNING: u8 = 1;
/// FoundationDB's network cannot be restarted in a process once stopped.
const NETWORK_STOPPED: u8 = 2;
static NETWORK_STATE: AtomicU8 = AtomicU8::new(NETWORK_NEVER_STARTED);

/// Why the FoundationDB client could not be started or a store not opened.
#[derive(Debug, thiserror::Error)]
pub enum FdbSetupError {
    #[error("the FoundationDB network was already started in this process")]
    AlreadyStarted,
    #[error("the FoundationDB network is not running: call FdbNetwork::boot first")]
    NetworkNotRunning,
    #[error("invalid key prefix: {0}")]
    Prefix(#[from] PrefixError),
    #[error("cluster file path {path:?} is not valid UTF-8 without NUL bytes")]
    ClusterFilePath { path: std::path::PathBuf },
    #[error("transaction_duration_ms_max {requested} exceeds FoundationDB's {max}")]
    DurationTooLong { requested: u64, max: u64 },
    #[error("{detail} while {action}")]
    Fdb {
        code: i32,
        detail: String,
        action: &'static str,
    },
}

impl FdbSetupError {
    fn fdb(action: &'static str) -> impl FnOnce(FdbError) -> Self {
        move |error| FdbSetupError::Fdb {
            code: error.code(),
            detail: describe(error.code()),
            action,
        }
    }
}

/// FoundationDB's client network thread. Start it once per process with
/// [`FdbNetwork::boot`] before opening any [`FdbStore`]; dropping it stops the thread, after
/// which no store works and the network cannot be started again in this process.
pub struct FdbNetwork {
    _running: NetworkAutoStop,
}

impl FdbNetwork {
    /// Selects FoundationDB's API version 7.3 and starts the network thread.
    ///
    /// # Safety
    /// FoundationDB requires its network to be stopped before the process exits: the
    /// returned guard must be dropped before the process ends (return from `main` holding
    /// it; never leak it or end the process with `std::process::exit` while it is alive).
    /// Drop every [`FdbStore`] before the guard.
    pub unsafe fn boot() -> Result<FdbNetwork, FdbSetupError> {
        NETWORK_STATE
            .compare_exchange(
                NETWORK_NEVER_STARTED,
                NETWORK_RUNNING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| FdbSetupError::AlreadyStarted)?;
        let builder = foundationdb::api::FdbApiBuilder::default()
            .build()
            .map_err(FdbSetupError::fdb("selecting the API version"))?;
        // SAFETY: the caller keeps the guard until before the process exits (see above).
        let running =
            unsafe { builder.boot() }.map_err(FdbSetupError::fdb("starting the network thread"))?;
        Ok(FdbNetwork { _running: running })
    }
}

impl Drop for FdbNetwork {
    fn drop(&mut self) {
        NETWORK_STATE.store(NETWORK_STOPPED, Ordering::Release);
    }
}

/// Options of [`FdbStore::open`].
#[derive(Debug, Clone)]
pub struct FdbOptions {
    /// Every key of the store lives under this prefix (several deployments or test runs can
    /// share one cluster under different prefixes; no prefix may start another).
    pub prefix: KeyPrefix,
    /// Transactions older than this are rejected as too old (at most FoundationDB's 5 s;
    /// tests lower it to wait less).
    pub transaction_duration_ms_max: u64,
}

impl Default for FdbOptions {
    fn default() -> Self {
        FdbOptions {
            prefix: KeyPrefix::default(),
            transaction_duration_ms_max: TRANSACTION_DURATION_MS_MAX,
        }
    }
}

/// What a store and its transactions share.
pub(crate) struct Shared {
    database: Database,
    prefix: KeyPrefix,
    options: FdbOptions,
    transactions_committed: AtomicU64,
    bytes_written: AtomicU64,
}

impl Shared {
    fn context(&self, transaction_bytes: usize) -> ErrorContext {
        ErrorContext {
            transaction_duration_ms_max: self.options.transaction_duration_ms_max,
            transaction_bytes,
        }
    }

    fn read_error(&self) -> impl Fn(FdbError) -> StoreError + Copy + Send + 'static {
        let context = self.context(0);
        move |error| read_error(error.code(), context)
    }

    fn create_transaction(&self) -> Result<foundationdb::Transaction, StoreError> {
        self.database.create_trx().map_err(self.read_error())
    }
}

/// A store inside a FoundationDB cluster.
pub struct FdbStore {
    shared: Arc<Shared>,
}

impl FdbStore {
    /// Opens the store under `options.prefix` in the cluster of `cluster_file`. Needs a
    /// running [`FdbNetwork`]. Connecting is lazy: an unreachable cluster shows up as
    /// errors (after [`FDB_TRANSACTION_TIMEOUT_MS`]) on the first reads and commits.
    pub fn open(cluster_file: &Path, options: FdbOptions) -> Result<Arc<Self>, FdbSetupError> {
        if NETWORK_STATE.load(Ordering::Acquire) != NETWORK_RUNNING {
            return Err(FdbSetupError::NetworkNotRunning);
        }
        if options.transaction_duration_ms_max > TRANSACTION_DURATION_MS_MAX {
            return Err(FdbSetupError::DurationTooLong {
                requested: options.transaction_duration_ms_max,
                max: TRANSACTION_DURATION_MS_MAX,
            });
        }
        let path = cluster_file
            .to_str()
            .filter(|path| !path.contains('\0'))
            .ok_or_else(|| FdbSetupError::ClusterFilePath {
                path: cluster_file.to_path_buf(),
            })?;
        let database =
            Database::new(Some(path)).map_err(FdbSetupError::fdb("opening the cluster file"))?;
        configure(&database)?;
        let shared = Shared {
            database,
            prefix: options.prefix.clone(),
            options,
            transactions_committed: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        };
        Ok(Arc::new(FdbStore {
            shared: Arc::new(shared),
        }))
    }

    /// The prefix every key of this store lives under.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.shared.prefix
    }

    /// Removes every key under the store's prefix in one transaction (test clean-up, and
    /// tearing a deployment down). Nothing outside the prefix is touched.
    pub async fn clear_all(&self) -> Result<(), StoreError> {
        let trx = self.shared.create_transaction()?;
        let (begin, end) = self.shared.prefix.whole_range();
        trx.clear_range(&begin, &end);
        let context = self.shared.context(begin.len() + end.len());
        trx.commit()
            .await
            .map(drop)
            .map_err(|error| read_error(error.code(), context))
    }
}

fn configure(database: &Database) -> Result<(), FdbSetupError> {
    let setting = FdbSetupError::fdb("setting database options");
    database
        .set_option(DatabaseOption::TransactionTimeout(
            FDB_TRANSACTION_TIMEOUT_MS,
        ))
        .and_then(|()| database.set_option(DatabaseOption::SnapshotRywDisable))
        .and_then(|()| database.set_option(DatabaseOption::MaxWatches(FDB_WATCHES_MAX)))
        .map_err(setting)
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

/// Reads a validated range through `trx`, page by page, until its limit or its end.
/// `snapshot` reads add no read conflict range (reads outside a transaction).
async fn read_range(
    trx: &foundationdb::Transaction,
    prefix: &KeyPrefix,
    request: &RangeRequest,
    snapshot: bool,
) -> Result<Vec<KeyValue>, ReadFailure> {
    let mut cursor = RangeCursor::new(prefix, request);
    let mut rows = Vec::new();
    while !cursor.is_done() {
        let option = RangeOption {
            begin: KeySelector::first_greater_or_equal(cursor.begin.clone()),
            end: KeySelector::first_greater_or_equal(cursor.end.clone()),
            limit: Some(cursor.remaining),
            mode: StreamingMode::WantAll,
            reverse: cursor.reverse,
            ..RangeOption::default()
        };
        let page = trx.get_range(&option, 1, snapshot).await?;
        let pairs = page.iter().map(|row| (row.key(), row.value()));
        strip_rows(prefix, pairs, &mut rows)?;
        cursor.advance(page.len(), page.last().map(|row| row.key()), page.more());
    }
    Ok(rows)
}

/// A read that failed in FoundationDB or returned something outside the store's prefix.
enum ReadFailure {
    Fdb(FdbError),
    Store(StoreError),
}

impl From<FdbError> for ReadFailure {
    fn from(error: FdbError) -> Self {
        ReadFailure::Fdb(error)
    }
}

impl From<StoreError> for ReadFailure {
    fn from(error: StoreError) -> Self {
        ReadFailure::Store(error)
    }
}

impl ReadFailure {
    fn into_store_error(self, context: ErrorContext) -> StoreError {
        match self {
            ReadFailure::Fdb(error) => read_error(error.code(), context),
            ReadFailure::Store(error) => error,
        }
    }
}

impl Store for FdbStore {
    fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        let trx = self.shared.create_transaction()?;
        Ok(Box::new(FdbTransaction::new(self.shared.clone(), trx)))
    }

    fn get(&self, key: &[u8]) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        let trx = match check_key(key).and_then(|()| self.shared.create_transaction()) {
            Ok(trx) => trx,
            Err(error) => return ready(Err(error)),
        };
        let read = trx.get(&self.shared.prefix.key(key), true);
        let read_error = self.shared.read_error();
        Box::pin(async move {
            let value = read.await.map_err(read_error)?;
            drop(trx);
            Ok(value.map(|value| value.to_vec()))
        })
    }

    fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        if keys.len() > GET_MANY_KEYS_MAX {
            return ready(Err(StoreError::RequestTooLarge {
                requested: keys.len(),
                max: GET_MANY_KEYS_MAX,
            }));
        }
        let checked = keys.iter().try_for_each(|key| check_key(key));
        let trx = match checked.and_then(|()| self.shared.create_transaction()) {
            Ok(trx) => trx,
            Err(error) => return ready(Err(error)),
        };
        let prefix = &self.shared.prefix;
        let reads: Vec<_> = keys
            .iter()
            .map(|key| trx.get(&prefix.key(key), true))
            .collect();
        let read_error = self.shared.read_error();
        Box::pin(async move {
            let values = try_join_all(reads).await.map_err(read_error)?;
            drop(trx);
            Ok(values
                .into_iter()
                .map(|value| value.map(|value| value.to_vec()))
                .collect())
        })
    }

    fn get_range(
        &self,
        request: RangeRequest,
    ) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>> {
        let trx = match request
            .validate()
            .and_then(|()| self.shared.create_transaction())
        {
            Ok(trx) => trx,
            Err(error) => return ready(Err(error)),
        };
        let shared = self.shared.clone();
        Box::pin(async move {
            read_range(&trx, &shared.prefix, &request, true)
                .await
                .map_err(|failure| failure.into_store_error(shared.context(0)))
        })
    }

    fn stats(&self) -> StoreStats {
        let committed = self.shared.transactions_committed.load(Ordering::Relaxed);
        StoreStats {
            transactions_committed: committed,
            // Every FoundationDB commit is made durable (logged on its transaction logs)
            // before it is acknowledged: one durable write per commit, as seen from here.
            durable_writes: committed,
            bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
        }
    }

    fn watch(&self, key: &[u8]) -> Option<BoxFuture<'static, Result<(), StoreError>>> {
        Some(self.watch_key(key))
    }
}

impl FdbStore {
    /// A FoundationDB watch: registered by committing the transaction that creates it, it
    /// fires when the key's value differs from the value at that transaction's read version
    /// (taken after this call). The watching transaction has no timeout, so the future can
    /// wait for as long as the key stays unchanged.
    fn watch_key(&self, key: &[u8]) -> BoxFuture<'static, Result<(), StoreError>> {
        let trx = match check_key(key).and_then(|()| self.shared.create_transaction()) {
            Ok(trx) => trx,
            Err(error) => return ready(Err(error)),
        };
        let read_error = self.shared.read_error();
        if let Err(error) = trx.set_option(TransactionOption::Timeout(0)) {
            return ready(Err(read_error(error)));
        }
        let watch = trx.watch(&self.shared.prefix.key(key));
        let registered = trx.commit();
        Box::pin(async move {
            registered
                .await
                .map_err(|error| read_error(FdbError::from(error)))?;
            watch.await.map_err(read_error)
        })
    }
}
