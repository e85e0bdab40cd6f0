//! The embedded backend: a durable single-machine store whose commit point is a
//! group-committed write-ahead log.
//!
//! Owns: the log segments (`wal-<first_version:020>.log`), the in-memory tables that serve
//! every read (an active memtable, at most one frozen memtable), the checkpoint store under
//! `checkpoint/` (fjall) with its position file, and the two threads that write them (the
//! committer and the checkpointer).
//!
//! Must never: acknowledge or expose a write before the `fdatasync` that covers it returned;
//! block a committing caller (a full commit queue is [`CommitError::Overloaded`]); let the
//! checkpointer stall commits; pretend after an I/O error (the group's commits resolve
//! [`CommitError::Unknown`] and the store refuses every later commit); `unwrap` anything
//! read from disk.
//!
//! # How a commit flows
//! 1. [`Transaction::commit`] moves the buffered writes, read set and preconditions into a
//!    bounded queue ([`COMMIT_QUEUE_TRANSACTIONS_MAX`], [`COMMIT_QUEUE_BYTES_MAX`]).
//! 2. The committer thread takes everything queued (a group: whatever accumulated while the
//!    previous group was syncing; no timers, except that after slow syncs the [`pacer`]
//!    spaces syncs up to [`EmbeddedOptions::sync_gap_max`] apart), checks each transaction's age,
//!    preconditions and read set (values compared against the committed state plus a small
//!    overlay of earlier transactions of the same group), encodes the accepted ones as one
//!    log record each, appends the group with one `write` and one `fdatasync`, then applies
//!    it to the active memtable and resolves the callers' futures.
//! 3. When the active memtable passes [`EmbeddedOptions::memtable_bytes_max`] (or the log
//!    since the last freeze passes [`EmbeddedOptions::wal_bytes_max`]) it is frozen, the log
//!    rotates to a new segment, and the checkpointer bulk-ingests the frozen memtable
//!    (tombstones included) into fjall as sorted tables, writes the position file, deletes
//!    the covered segments and drops the frozen memtable. If a second freeze is due while one
//!    is being written, commits continue into the active memtable over its soft limit and
//!    `tessera_store_memtable_limit_hits_total` counts it.
//! 4. A clear writes a tombstone only where an older layer may hold the key. Until the
//!    first checkpoint there is none; after it, a key under a transient prefix
//!    ([`EmbeddedOptions::transient_prefixes`]: the outbox) is simply removed when the frozen
//!    memtable does not hold it and the checkpoint holds no value for it (the store keeps
//!    the set of transient keys the checkpoint holds, read at open and updated by each
//!    checkpoint). A credit leg's entry then lives from the payer's commit to the payee's
//!    and leaves nothing behind for checkpoints, compaction or outbox rescans.
//! 5. Point reads of keys under the pinned prefixes ([`EmbeddedOptions::pinned_prefixes`]:
//!    the owner records every money commit requires as its fence) are answered from a hash
//!    map of every such key, read from the checkpoint at open and changed by each applied
//!    write. Before it, each fence check walked both memtables' B-trees and, after the first
//!    checkpoint, read fjall: 5 % of all CPU in a long `bench dcs`.
//! 6. Keys under the point prefixes ([`EmbeddedOptions::point_prefixes`]: the transfer and
//!    hold records) and the transient ones live in each memtable's hash tables
//!    (`point::PointTable`) instead of its B-tree: a new transfer id's "absent" check and
//!    its insert cost one probe each (prefetched a few operations ahead by the committer)
//!    instead of a walk that misses the caches several times. Range reads over the point
//!    records use a key order the memtable builds on the first large one and keeps across
//!    inserts (later reads sort only the new keys); a removal drops it.
//! 7. Keys under the index prefixes ([`EmbeddedOptions::index_prefixes`]: the accounts'
//!    active-hold indexes) live in a second, small B-tree of each memtable: set at a hold
//!    and cleared at its capture, their walks stay in cache instead of missing down the
//!    tree of every account record and posting block; range reads merge both trees.
//!
//! # Why fjall ingestion for checkpoints
//! A frozen memtable is already sorted, so fjall's bulk ingestion writes it straight into
//! table files (fsynced, registered atomically in fjall's manifest) without fjall's journal
//! or memtables: one sequential write per checkpoint, and fjall's compaction, block cache and
//! bloom filters serve reads that miss the memtables. Own sorted runs would need their own
//! compaction and index to keep reads and disk bounded.
//!
//! The position file (`checkpoint.position`, replaced atomically by rename) is written after
//! the ingestion is durable. Replaying log records the checkpoint already holds is harmless
//! (a record's writes are re-applied in version order over the checkpoint, and each key ends
//! at its last write), so the data and its position need not be written in one step.
//!
//! # Log record format
//! `[u32 payload length][u32 crc32 of payload][payload]`, little-endian, one record per
//! committed transaction; the payload is `[u64 version][u32 write count]` then per write a
//! tag byte (1 set, 2 clear, 3 clear range) and length-prefixed (`u32`) byte strings.
//! Recovery truncates a torn or checksum-failing tail of the last segment; a bad record
//! followed by a valid one, or in an earlier segment, is [`StoreError::Corrupt`].

mod checkpoint;
mod chunks;
mod committer;
mod memtable;
pub mod pacer;
mod point;
mod transaction;
mod wal;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};

use super::limits::{self, GET_MANY_KEYS_MAX, TRANSACTION_BYTES_MAX, TRANSACTION_DURATION_MS_MAX};
use super::{
    check_key, BoxFuture, CommitError, KeyValue, RangeRequest, Store, StoreError, StoreStats,
    Transaction,
};
use committer::{PendingCommit, Queue};
use memtable::{Memtable, Tables, View};

/// Most transactions waiting in the commit queue; one more is [`CommitError::Overloaded`].
/// A group is at most this many transactions.
pub const COMMIT_QUEUE_TRANSACTIONS_MAX: usize = 65_536;
/// Most bytes (as counted by [`Transaction::size_bytes`]) waiting in the commit queue.
pub const COMMIT_QUEUE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most writes (sets, clears, clear ranges) in one transaction; bounds empty-key writes
/// that [`limits::TRANSACTION_BYTES_MAX`] alone would not.
pub const TRANSACTION_WRITES_MAX: usize = 1_000_000;
/// Most bytes of keys and ranges one transaction may read (its read set).
pub const TRANSACTION_READ_BYTES_MAX: usize = TRANSACTION_BYTES_MAX;
/// Default soft limit of the active memtable, in bytes (keys, values and per-entry overhead).
pub const MEMTABLE_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// Largest log record payload: a maximal transaction plus the framing of its writes.
pub const WAL_RECORD_BYTES_MAX: usize = 32 * 1024 * 1024;

const _: () = assert!(COMMIT_QUEUE_BYTES_MAX >= TRANSACTION_BYTES_MAX);
const _: () = assert!(COMMIT_QUEUE_TRANSACTIONS_MAX >= 1);
const _: () = assert!(
    WAL_RECORD_BYTES_MAX >= 12 + TRANSACTION_BYTES_MAX + 9 * TRANSACTION_WRITES_MAX,
    "a maximal transaction must fit in one log record"
);
const _: () = assert!(WAL_RECORD_BYTES_MAX <= u32::MAX as usize);

/// A fault to inject, for crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// After `after_groups` durable groups, write only the first `bytes_written` bytes of the
    /// next group, skip its sync and its application, resolve its commits
    /// [`CommitError::Unknown`] and fail the store, as if the machine crashed mid-write.
    TornGroupWrite {
        after_groups: u64,
        bytes_written: usize,
    },
    /// Every `every`-th sync takes `micros` longer (after the real one), as on a device
    /// that stalls now and then: drives the [`pacer`].
    SlowSyncs { micros: u64, every: u64 },
}

/// Options of [`EmbeddedStore::open`]. The default is durable.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Soft limit of the active memtable before it is frozen and checkpointed.
    pub memtable_bytes_max: usize,
    /// Log bytes appended since the last freeze that force a freeze (bounds replay time
    /// when overwrites keep the memtable small). Default: `memtable_bytes_max`.
    pub wal_bytes_max: u64,
    /// `fdatasync` every group. Only tests that do not crash may turn this off.
    pub sync: bool,
    /// Longest transaction, from `begin` to the committer's check. At most
    /// [`limits::TRANSACTION_DURATION_MS_MAX`]; lower it to test the limit without waiting.
    pub transaction_duration_ms_max: u64,
    /// A fault to inject (tests only).
    pub failpoint: Option<Failpoint>,
    /// Prefixes of keys that are set once and cleared soon after (Tessera's outbox entries).
    /// A clear of such a key that neither the frozen memtable nor the checkpoint holds
    /// removes it from the active memtable instead of writing a tombstone, so cleared
    /// entries leave nothing behind for checkpoints and range reads to carry. Memtables keep
    /// these keys in a hash map, not the ordered B-tree (point operations in O(1); a range
    /// read that reaches these prefixes gathers and sorts the memtable's live ones, so keep
    /// them to keys with few live entries). Any prefixes are correct; they only change what
    /// is kept and what costs what. Default: [`crate::keys::transient_prefixes`].
    pub transient_prefixes: Vec<Vec<u8>>,
    /// Prefixes of keys that are few and read by most commits (Tessera's fences: the owner
    /// records). The store keeps every key under them in a hash map beside the layers, loaded
    /// from the checkpoint at open and kept in step by every write, so a point read of one
    /// (present or absent) costs one hash lookup: no walk down the memtables' B-trees and no
    /// checkpoint read. Past 131,072 keys the store stops pinning
    /// until it is reopened. Any prefixes are correct; they only change what costs what.
    /// Default: [`crate::keys::pinned_prefixes`].
    pub pinned_prefixes: Vec<Vec<u8>>,
    /// Prefixes of keys that are many, read and written one at a time, and range-read
    /// rarely (Tessera's transfer and hold records: every transfer checks that its id is new
    /// and writes its record). Memtables keep these keys in a hash table, not the ordered
    /// B-tree: a random memory access costs 160–190 ns on the 2-core VM, and a B-tree walk
    /// costs several of them where a hash probe costs one. A range read that reaches these
    /// prefixes in a large table sorts the table's keys once per memtable (then only the keys
    /// new since the last such read): about 150 ms for a million. Any prefixes are correct;
    /// they only change what costs what. Default: [`crate::keys::point_prefixes`].
    pub point_prefixes: Vec<Vec<u8>>,
    /// Prefixes of small ordered indexes (Tessera's accounts' active holds: set at a hold,
    /// cleared at its capture or release, range-read per account at its load). Memtables
    /// keep these keys (unless under a transient or point prefix too) in a B-tree of their
    /// own, which holds the few live ones (and tombstones, once an older layer exists):
    /// its walks stay in cache, where the memtable's main tree holds every account record
    /// and posting block. Any prefixes are correct; they only change what costs what.
    /// Default: [`crate::keys::index_prefixes`].
    pub index_prefixes: Vec<Vec<u8>>,
    /// Most time the committer waits, after a group's sync began, before syncing the next
    /// group; the wait grows only after slow syncs and decays while syncs are fast (see
    /// [`pacer`]). Zero (the default) turns pacing off. At most [`pacer::GAP_MAX_LIMIT`].
    /// Worth it where many small transactions from several callers meet a device that
    /// stalls under many small syncs (`tessera store` turns it on); an in-process caller that
    /// batches its own commits only waits longer.
    pub sync_gap_max: std::time::Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            memtable_bytes_max: MEMTABLE_BYTES_MAX_DEFAULT,
            wal_bytes_max: MEMTABLE_BYTES_MAX_DEFAULT as u64,
            sync: true,
            transaction_duration_ms_max: TRANSACTION_DURATION_MS_MAX,
            failpoint: None,
            transient_prefixes: crate::keys::transient_prefixes(),
            pinned_prefixes: crate::keys::pinned_prefixes(),
            point_prefixes: crate::keys::point_prefixes(),
            index_prefixes: crate::keys::index_prefixes(),
            sync_gap_max: std::time::Duration::ZERO,
        }
    }
}

impl EmbeddedOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |detail: &str| {
            Err(StoreError::Backend {
                detail: detail.to_string(),
            })
        };
        if self.memtable_bytes_max == 0 || self.wal_bytes_max == 0 {
            return invalid("memtable_bytes_max and wal_bytes_max must be positive");
        }
        if self.transaction_duration_ms_max == 0
            || self.transaction_duration_ms_max > TRANSACTION_DURATION_MS_MAX
        {
            return invalid("transaction_duration_ms_max must be in 1..=5000");
        }
        if self.sync_gap_max > pacer::GAP_MAX_LIMIT {
            return invalid("sync_gap_max must be at most 10 ms");
        }
        Ok(())
    }
}

/// Counters behind [`Store::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    transactions_committed: AtomicU64,
    durable_writes: AtomicU64,
    bytes_written: AtomicU64,
    /// Last durable commit version (what a read-only transaction reports).
    version_committed: AtomicU64,
    /// Times the committer waited out the pacer's gap before a sync.
    paced_waits: AtomicU64,
}

/// State shared by the store handle, its transactions and its threads.
pub(crate) struct Shared {
    pub(crate) tables: RwLock<Tables>,
    pub(crate) checkpoint: fjall::Keyspace,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) queue_ready: Condvar,
    pub(crate) counters: Counters,
    /// Durable commits since the last [`Store::take_commit_latency`]: from the commit call to
    /// the answer, in microseconds.
    pub(crate) commit_latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// Set once the store closes or fails (mirrors the queue's flags, read without its lock).
    pub(crate) commits_refused: AtomicBool,
    pub(crate) options: EmbeddedOptions,
    pub(crate) dir: PathBuf,
}

impl Shared {
    /// Reads under one consistent state of the tables.
    pub(crate) fn with_view<T>(&self, read: impl FnOnce(&View<'_>) -> T) -> T {
        let tables = self.tables.read();
        read(&tables.view(&self.checkpoint, None))
    }
}

/// The embedded store. Dropping the last handle stops its threads after the queued commits.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    // Held to keep fjall open until the threads are joined.
    _database: fjall::Database,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`: opens the checkpoint, replays the log records
    /// after it, and starts the committer and checkpointer threads.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Arc<EmbeddedStore>, StoreError> {
        options.validate()?;
        let span = tracing::info_span!("store_open", dir = %dir.display());
        let _entered = span.enter();
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let (database, keyspace) = checkpoint::open_checkpoint(dir)?;
        let position = checkpoint::read_position(dir)?;
        let checkpoint_empty = position == 0 && keyspace.is_empty().map_err(checkpoint::fjall)?;
        let transient = memtable::Transient::load(options.transient_prefixes.clone(), &keyspace)?;
        let pinned = memtable::Pinned::load(options.pinned_prefixes.clone(), &keyspace)?;
        let mut tables = Tables::new(
            checkpoint_empty,
            transient,
            pinned,
            options.point_prefixes.clone(),
            options.index_prefixes.clone(),
        );
        let replay = wal::replay(dir, position, &mut tables, &keyspace)?;
        let elapsed = started.elapsed();
        metrics::histogram!("tessera_store_recovery_seconds").record(elapsed.as_secs_f64());
        tracing::info!(
            checkpoint_version = position,
            last_version = replay.last_version,
            records_replayed = replay.records,
            recovery_ms = elapsed.as_millis() as u64,
            "embedded store opened"
        );
        let writer = wal::WalWriter::create(dir, replay.last_version + 1, options.sync)?;
        let shared = Arc::new(Shared {
            tables: RwLock::new(tables),
            checkpoint: keyspace,
            queue: Mutex::new(Queue::default()),
            queue_ready: Condvar::new(),
            counters: Counters::default(),
            commit_latency_us: Mutex::new(super::latency_histogram()),
            commits_refused: AtomicBool::new(false),
            options,
            dir: dir.to_path_buf(),
        });
        shared
            .counters
            .version_committed
            .store(replay.last_version, Ordering::Relaxed);
        let (jobs, job_receiver) = std::sync::mpsc::sync_channel(1);
        let checkpointer = checkpoint::spawn(shared.clone(), job_receiver)?;
        let committer = committer::spawn(
            shared.clone(),
            writer,
            replay.last_version + 1,
            replay.log_bytes,
            jobs,
        )?;
        Ok(Arc::new(EmbeddedStore {
            shared,
            committer: Mutex::new(Some(committer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            _database: database,
        }))
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.shared.queue.lock().closing = true;
        self.shared.commits_refused.store(true, Ordering::Release);
        self.shared.queue_ready.notify_all();
        // The committer drains the queue, then drops the checkpoint job sender, which ends
        // the checkpointer after its job in flight.
        let handles = [
            self.committer.lock().take(),
            self.checkpointer.lock().take(),
        ];
        for handle in handles.into_iter().flatten() {
            if handle.join().is_err() {
                tracing::error!("embedded store thread panicked");
            }
        }
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Store for EmbeddedStore {
    fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        if self.shared.commits_refused.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(Box::new(transaction::EmbeddedTransaction::new(
            self.shared.clone(),
        )))
    }

    fn get(&self, key: &[u8]) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        let result = check_key(key).and_then(|()| {
            self.shared
                .with_view(|view| Ok(view.get(key)?.map(|value| value.into_owned())))
        });
        ready(result)
    }

    fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        ready(self.read_many(&keys))
    }

    fn get_range(
        &self,
        request: RangeRequest,
    ) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>> {
        let result = request.validate().and_then(|()| {
            self.shared.with_view(|view| {
                view.range(&request.begin, &request.end, request.reverse)
                    .take(request.limit)
                    .map(|row| row.map(|(key, value)| (key.into_owned(), value.into_owned())))
                    .collect()
            })
        });
        ready(result)
    }

    fn take_commit_latency(&self) -> Option<hdrhistogram::Histogram<u64>> {
        let mut histogram = self.shared.commit_latency_us.lock();
        Some(std::mem::replace(
            &mut *histogram,
            super::latency_histogram(),
        ))
    }

    fn stats(&self) -> StoreStats {
        let counters = &self.shared.counters;
        StoreStats {
            transactions_committed: counters.transactions_committed.load(Ordering::Relaxed),
            durable_writes: counters.durable_writes.load(Ordering::Relaxed),
            bytes_written: counters.bytes_written.load(Ordering::Relaxed),
        }
    }
}

impl EmbeddedStore {
    /// Times the committer waited before a sync because the [`pacer`] spaced syncs apart.
    pub fn paced_waits(&self) -> u64 {
        self.shared.counters.paced_waits.load(Ordering::Relaxed)
    }

    fn read_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.len() > GET_MANY_KEYS_MAX {
            return Err(StoreError::RequestTooLarge {
                requested: keys.len(),
                max: limits::GET_MANY_KEYS_MAX,
            });
        }
        keys.iter().try_for_each(|key| check_key(key))?;
        self.shared.with_view(|view| {
            keys.iter()
                .map(|key| Ok(view.get(key)?.map(|value| value.into_owned())))
                .collect()
        })
    }
}

/// The rejection of a commit to a closing or failed store.
pub(crate) fn closed() -> CommitError {
    CommitError::Rejected(StoreError::Closed)
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<EmbeddedStore>();
    check::<Memtable>();
}

#[allow(dead_code)]
fn assert_pending_send() {
    fn check<T: Send>() {}
    check::<PendingCommit>();
}
