//! The commit queue and the committer thread: validation, one log append and one
//! `fdatasync` per group, then application to the active memtable, then the answers.
//! A group slower than [`SLOW_GROUP`] is logged with the time each of those steps took.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::store::{CommitError, StoreError};

use super::checkpoint::CheckpointJob;
use super::memtable::{Overlay, Tables, View, PREFETCH_AHEAD};
use super::pacer::Pacer;
use super::transaction::{value_hash, ReadSet, RowsHasher};
use super::wal::{encode_record, WalWriter, Write, WriteBatch};
use super::{closed, Failpoint, Shared, COMMIT_QUEUE_BYTES_MAX, COMMIT_QUEUE_TRANSACTIONS_MAX};

/// A transaction handed to the committer.
pub(crate) struct PendingCommit {
    pub(crate) writes: WriteBatch,
    pub(crate) reads: ReadSet,
    pub(crate) requires: Requires,
    pub(crate) begun: Instant,
    /// When `commit` was called (the start of the commit latency).
    pub(crate) committing: Instant,
    pub(crate) size_bytes: usize,
    pub(crate) reply: Option<oneshot::Sender<Result<u64, CommitError>>>,
}

impl PendingCommit {
    fn needs_validation(&self) -> bool {
        !self.requires.is_empty() || !self.reads.is_empty()
    }

    fn answer(&mut self, result: Result<u64, CommitError>) {
        if let Some(reply) = self.reply.take() {
            // The caller may have dropped its future; the outcome stands regardless.
            let _ = reply.send(result);
        }
    }
}

/// A transaction's preconditions (`key` must hold `value`, or be absent), in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Requires(WriteBatch);

impl Requires {
    pub(crate) fn push(&mut self, key: &[u8], expected: Option<&[u8]>) {
        self.0.push(match expected {
            Some(value) => Write::Set(key, value),
            None => Write::Clear(key),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.0.reserve(bytes);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.0.iter().map(|write| match write {
            Write::Set(key, value) => (key, Some(value)),
            Write::Clear(key) => (key, None),
            Write::ClearRange(..) => unreachable!("preconditions are pushed as points"),
        })
    }
}

/// The bounded commit queue.
#[derive(Default)]
pub(crate) struct Queue {
    items: Vec<PendingCommit>,
    bytes: usize,
    pub(crate) closing: bool,
    failed: bool,
}

impl Queue {
    pub(crate) fn refuses_commits(&self) -> bool {
        self.closing || self.failed
    }
}

/// Queues a transaction for the committer, or refuses it at once.
pub(crate) fn enqueue(shared: &Shared, pending: PendingCommit) -> Result<(), CommitError> {
    let mut queue = shared.queue.lock();
    if queue.refuses_commits() {
        return Err(closed());
    }
    if queue.items.len() >= COMMIT_QUEUE_TRANSACTIONS_MAX
        || queue.bytes + pending.size_bytes > COMMIT_QUEUE_BYTES_MAX
    {
        drop(queue);
        metrics::counter!("tessera_store_overloaded_total").increment(1);
        return Err(CommitError::Overloaded);
    }
    let was_empty = queue.items.is_empty();
    queue.bytes += pending.size_bytes;
    queue.items.push(pending);
    drop(queue);
    if was_empty {
        shared.queue_ready.notify_one();
    }
    Ok(())
}

enum Verdict {
    /// Committed at `version`; `logged` when it has writes (and so a log record).
    Accepted {
        version: u64,
        logged: bool,
    },
    Rejected(CommitError),
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    wal: WalWriter,
    next_version: u64,
    log_bytes_since_freeze: u64,
    jobs: SyncSender<CheckpointJob>,
) -> Result<JoinHandle<()>, StoreError> {
    let committer = Committer {
        pacer: Pacer::new(shared.options.sync_gap_max),
        shared,
        wal,
        next_version,
        groups: 0,
        log_bytes_since_freeze,
        buffer: Vec::new(),
        jobs,
        slow_log: SlowLog::default(),
    };
    let thread = std::thread::Builder::new()
        .name("store-commit".to_string())
        .spawn(move || committer.run())?;
    Ok(thread)
}

struct Committer {
    pacer: Pacer,
    shared: Arc<Shared>,
    wal: WalWriter,
    next_version: u64,
    groups: u64,
    log_bytes_since_freeze: u64,
    buffer: Vec<u8>,
    jobs: SyncSender<CheckpointJob>,
    slow_log: SlowLog,
}

impl Committer {
    fn run(mut self) {
        let mut batch = Vec::new();
        // A store reopened over a large log freezes at once.
        if let Err(error) = self.maybe_freeze() {
            return self.fail(&error);
        }
        loop {
            let closing = self.take_queued(&mut batch);
            if batch.is_empty() && closing {
                // A cleanly closed log ends at its last record (no preallocated zeros).
                if let Err(error) = self.wal.finish() {
                    tracing::warn!(%error, "could not cut the log's preallocated tail");
                }
                return;
            }
            // Paced (after slow syncs): commits arriving meanwhile join this group.
            let wait = self.pacer.wait(Instant::now());
            if !closing && !wait.is_zero() {
                self.shared
                    .counters
                    .paced_waits
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tessera_store_paced_waits_total").increment(1);
                std::thread::sleep(wait);
                let mut queue = self.shared.queue.lock();
                batch.append(&mut queue.items);
                queue.bytes = 0;
            }
            let mut start = 0;
            while start < batch.len() {
                match self.commit_group(&mut batch[start..]) {
                    Ok(processed) => start += processed,
                    Err(error) => {
                        batch[start..]
                            .iter_mut()
                            .for_each(|pending| pending.answer(Err(closed())));
                        return self.fail(&error);
                    }
                }
            }
            batch.clear();
            let freezing = Instant::now();
            if let Err(error) = self.maybe_freeze() {
                return self.fail(&error);
            }
            let froze_in = freezing.elapsed();
            if froze_in >= SLOW_GROUP {
                tracing::warn!(ms = froze_in.as_secs_f64() * 1e3, "slow memtable freeze");
            }
        }
    }

    /// Swaps everything queued into `batch`; returns whether the store is closing.
    fn take_queued(&self, batch: &mut Vec<PendingCommit>) -> bool {
        let mut queue = self.shared.queue.lock();
        while queue.items.is_empty() && !queue.closing {
            self.shared.queue_ready.wait(&mut queue);
        }
        std::mem::swap(&mut queue.items, batch);
        queue.bytes = 0;
        queue.closing
    }

    /// Refuses every later commit after an I/O error; the log is the judge on reopen.
    fn fail(&mut self, error: &StoreError) {
        tracing::error!(%error, "commit log failed; the store refuses further commits");
        metrics::counter!("tessera_store_failures_total").increment(1);
        let items = {
            let mut queue = self.shared.queue.lock();
            queue.failed = true;
            self.shared.commits_refused.store(true, Ordering::Release);
            queue.bytes = 0;
            std::mem::take(&mut queue.items)
        };
        for mut pending in items {
            pending.answer(Err(closed()));
        }
    }

    /// Commits a prefix of `group` (all of it unless a validation needs a cut); returns the
    /// number of transactions answered.
    fn commit_group(&mut self, group: &mut [PendingCommit]) -> Result<usize, StoreError> {
        let mut phases = Phases::start();
        let verdicts = self.validate(group);
        phases.mark(Phase::Validate);
        let group = &mut group[..verdicts.len()];
        self.buffer.clear();
        let mut logged = 0;
        for (pending, verdict) in group.iter().zip(&verdicts) {
            if let Verdict::Accepted {
                version,
                logged: true,
            } = verdict
            {
                encode_record(&mut self.buffer, *version, &pending.writes);
                logged += 1;
            }
        }
        if !self.buffer.is_empty() {
            if let Err(error) = self.write_group(logged, &mut phases) {
                // Refuse later commits before anyone hears of this one: a caller told
                // "unknown" must find the store already failed.
                self.shared.commits_refused.store(true, Ordering::Release);
                answer_unknown(group, verdicts, &error);
                return Err(error);
            }
        }
        // The tables are locked for the group's application before anyone hears an answer:
        // reads wait for this lock, so a caller that has its answer reads its writes; and
        // its next commit is drafted while the group is applied, not after.
        let mut tables = self.shared.tables.write();
        phases.mark(Phase::Lock);
        // Counted before anyone hears the answer: a caller that has its answer finds its
        // commit in `stats()`.
        let (accepted, last_version) = verdicts.iter().fold((0u64, None), |(n, last), v| match v {
            Verdict::Accepted { version, .. } => (n + 1, Some(*version)),
            Verdict::Rejected(_) => (n, last),
        });
        let counters = &self.shared.counters;
        if let Some(version) = last_version {
            counters
                .version_committed
                .fetch_max(version, Ordering::AcqRel);
        }
        counters
            .transactions_committed
            .fetch_add(accepted, Ordering::Relaxed);
        let logged: Vec<bool> = verdicts
            .iter()
            .map(|verdict| matches!(verdict, Verdict::Accepted { logged: true, .. }))
            .collect();
        let mut latency = self.shared.commit_latency_us.lock();
        for (pending, verdict) in group.iter_mut().zip(verdicts) {
            match verdict {
                Verdict::Accepted { version, .. } => {
                    pending.answer(Ok(version));
                    let micros = pending.committing.elapsed().as_micros();
                    latency.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                }
                Verdict::Rejected(error) => pending.answer(Err(error)),
            }
        }
        drop(latency);
        phases.mark(Phase::Answer);
        let applied = apply(&mut tables, &self.shared.checkpoint, group, &logged);
        drop(tables);
        phases.mark(Phase::Apply);
        self.slow_log.report(&phases, group.len(), Instant::now());
        metrics::counter!("tessera_store_commits_total").increment(accepted);
        metrics::histogram!("tessera_store_commit_group_transactions").record(group.len() as f64);
        applied.map(|()| group.len())
    }

    /// Appends the encoded group and syncs it (or injects the torn-write fault).
    fn write_group(&mut self, transactions: usize, phases: &mut Phases) -> Result<(), StoreError> {
        if let Some(Failpoint::TornGroupWrite {
            after_groups,
            bytes_written,
        }) = self.shared.options.failpoint
        {
            if self.groups == after_groups {
                let torn = &self.buffer[..bytes_written.min(self.buffer.len())];
                self.wal.append_unsynced(torn)?;
                return Err(StoreError::Io(std::io::Error::other(
                    "failpoint: torn group write",
                )));
            }
        }
        // The group's encoding counts as writing; the sync starts the pacer's clock.
        phases.mark(Phase::Write);
        let started = phases.last;
        let written = self.wal.append(&self.buffer)?;
        if let Some(Failpoint::SlowSyncs { micros, every }) = self.shared.options.failpoint {
            if self.groups.is_multiple_of(every.max(1)) {
                std::thread::sleep(std::time::Duration::from_micros(micros));
            }
        }
        phases.mark_split(Phase::Write, written, Phase::Sync);
        self.pacer
            .synced(started, phases.last - started, transactions);
        self.groups += 1;
        let bytes = self.buffer.len() as u64;
        self.log_bytes_since_freeze += bytes;
        let counters = &self.shared.counters;
        counters.durable_writes.fetch_add(1, Ordering::Relaxed);
        counters.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("tessera_store_fsyncs_total").increment(1);
        metrics::counter!("tessera_store_bytes_written_total").increment(bytes);
        Ok(())
    }

    /// Checks age, preconditions and read sets; assigns versions. Stops before a transaction
    /// that must be validated against an earlier range clear of the same group.
    fn validate(&mut self, group: &[PendingCommit]) -> Vec<Verdict> {
        let shared = self.shared.clone();
        let tables = shared.tables.read();
        let max_ms = shared.options.transaction_duration_ms_max;
        let (now, max) = (Instant::now(), Duration::from_millis(max_ms));
        let mut overlay: Option<Overlay<'_>> = None;
        let mut overlay_has_range = false;
        let required = required_keys(group);
        let required = required.as_ref();
        let mut verdicts = Vec::with_capacity(group.len());
        for (index, pending) in group.iter().enumerate() {
            if now.saturating_duration_since(pending.begun) > max {
                let error = StoreError::TransactionTooOld { max_ms };
                verdicts.push(Verdict::Rejected(CommitError::Rejected(error)));
                continue;
            }
            if pending.needs_validation() {
                let overlay = overlay.get_or_insert_with(|| {
                    build_overlay(
                        group,
                        &group[..index],
                        &verdicts,
                        required,
                        &mut overlay_has_range,
                    )
                });
                if overlay_has_range {
                    break;
                }
                let view = tables.view(&shared.checkpoint, Some(overlay));
                if let Some(error) = check(&view, pending) {
                    verdicts.push(Verdict::Rejected(error));
                    continue;
                }
            }
            let logged = !pending.writes.is_empty();
            if logged {
                self.next_version += 1;
            }
            verdicts.push(Verdict::Accepted {
                version: self.next_version - 1,
                logged,
            });
            if let Some(overlay) = &mut overlay {
                add_to_overlay(overlay, &pending.writes, required, &mut overlay_has_range);
            }
        }
        verdicts
    }

    /// Freezes the active memtable when it (or the log since the last freeze) is over its
    /// limit and no checkpoint is in flight.
    fn maybe_freeze(&mut self) -> Result<(), StoreError> {
        let options = &self.shared.options;
        let log_over = self.log_bytes_since_freeze > options.wal_bytes_max;
        let memtable = {
            let tables = self.shared.tables.upgradable_read();
            if !log_over && tables.active.bytes() <= options.memtable_bytes_max {
                return Ok(());
            }
            if tables.frozen.is_some() {
                metrics::counter!("tessera_store_memtable_limit_hits_total").increment(1);
                return Ok(());
            }
            let mut tables = parking_lot::RwLockUpgradableReadGuard::upgrade(tables);
            let next = tables.active.successor();
            let memtable = Arc::new(std::mem::replace(&mut tables.active, next));
            tables.frozen = Some(memtable.clone());
            memtable
        };
        self.wal.rotate(self.next_version)?;
        self.log_bytes_since_freeze = 0;
        tracing::info!(
            next_version = self.next_version,
            bytes = memtable.bytes(),
            "memtable frozen"
        );
        let job = CheckpointJob {
            memtable,
            next_version: self.next_version,
        };
        // At most one memtable is frozen, so the checkpointer has no job waiting; if it is
        // gone, the frozen memtable keeps serving reads and the log keeps every record.
        if let Err(error) = self.jobs.try_send(job) {
            tracing::error!(%error, "checkpointer unavailable; memtable stays frozen");
        }
        Ok(())
    }
}

/// Makes a durable group visible (under the tables' write lock). An error here leaves the
/// memtable behind the log, so the caller fails the store (a reopen replays the log).
fn apply(
    tables: &mut Tables,
    checkpoint: &fjall::Keyspace,
    group: &[PendingCommit],
    logged: &[bool],
) -> Result<(), StoreError> {
    for (pending, logged) in group.iter().zip(logged) {
        if *logged {
            // The batch is freed with the group, outside the tables' lock.
            tables.apply(checkpoint, &pending.writes)?;
        }
    }
    Ok(())
}

/// A group slower than this is logged with where its time went.
pub const SLOW_GROUP: Duration = Duration::from_millis(20);
/// At most one slow-group warning per this interval (a saturated store has many slow
/// groups; the counter counts each, the log names how many it skipped).
pub const SLOW_GROUP_LOG_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Phase {
    // The variants index `Phases::spent`; keep `Phase::COUNT` in step.
    /// Age, preconditions and read sets (with the wait for the tables' read lock).
    Validate,
    /// Encoding and `pwrite` of the group (with any preallocation).
    Write,
    /// `fdatasync`, and a failpoint's sleep.
    Sync,
    /// The wait for the tables' write lock.
    Lock,
    /// Application to the active memtable.
    Apply,
    /// Answers and counters.
    Answer,
}

impl Phase {
    const COUNT: usize = Phase::Answer as usize + 1;
}

/// Where one group's time went; logged only when the group is slow, so the hot path pays
/// a few clock reads.
struct Phases {
    started: Instant,
    last: Instant,
    spent: [Duration; Phase::COUNT],
}

impl Phases {
    fn start() -> Phases {
        let now = Instant::now();
        Phases {
            started: now,
            last: now,
            spent: [Duration::ZERO; Phase::COUNT],
        }
    }

    /// Charges the time since the last mark to `phase`.
    fn mark(&mut self, phase: Phase) {
        let now = Instant::now();
        self.spent[phase as usize] += now - self.last;
        self.last = now;
    }

    /// Charges `first_part` of the time since the last mark to `first`, the rest to `rest`.
    fn mark_split(&mut self, first: Phase, first_part: Duration, rest: Phase) {
        let now = Instant::now();
        let all = now - self.last;
        let first_part = first_part.min(all);
        self.spent[first as usize] += first_part;
        self.spent[rest as usize] += all - first_part;
        self.last = now;
    }

    fn total(&self) -> Duration {
        self.last - self.started
    }
}

/// Counts slow groups and logs at most one per [`SLOW_GROUP_LOG_INTERVAL`].
#[derive(Default)]
struct SlowLog {
    last_logged: Option<Instant>,
    /// Slow groups since the last warning that were not logged.
    skipped: u64,
}

impl SlowLog {
    /// Returns whether it logged `phases`.
    fn report(&mut self, phases: &Phases, transactions: usize, now: Instant) -> bool {
        let total = phases.total();
        if total < SLOW_GROUP {
            return false;
        }
        metrics::counter!("tessera_store_slow_groups_total").increment(1);
        if self
            .last_logged
            .is_some_and(|at| now.saturating_duration_since(at) < SLOW_GROUP_LOG_INTERVAL)
        {
            self.skipped += 1;
            return false;
        }
        let ms = |phase: Phase| phases.spent[phase as usize].as_secs_f64() * 1e3;
        tracing::warn!(
            total_ms = total.as_secs_f64() * 1e3,
            validate_ms = ms(Phase::Validate),
            write_ms = ms(Phase::Write),
            sync_ms = ms(Phase::Sync),
            lock_ms = ms(Phase::Lock),
            apply_ms = ms(Phase::Apply),
            answer_ms = ms(Phase::Answer),
            transactions,
            slow_groups_not_logged_before = self.skipped,
            "slow commit group"
        );
        self.last_logged = Some(now);
        self.skipped = 0;
        true
    }
}

fn answer_unknown(group: &mut [PendingCommit], verdicts: Vec<Verdict>, error: &StoreError) {
    for (pending, verdict) in group.iter_mut().zip(verdicts) {
        match verdict {
            Verdict::Accepted { .. } => pending.answer(Err(CommitError::Unknown {
                detail: format!("commit log write failed: {error}"),
            })),
            Verdict::Rejected(rejection) => pending.answer(Err(rejection)),
        }
    }
}

/// The keys the group's transactions require or read, when none of them read a range:
/// only writes to those keys can change a later transaction's verdict, so the overlay
/// holds only them (most writes, such as new records and statement blocks, are required
/// by no one). `None` (keep every write) when a transaction read a range.
type Required<'a> = HashSet<&'a [u8], foldhash::fast::RandomState>;

fn required_keys(group: &[PendingCommit]) -> Option<Required<'_>> {
    if group.iter().any(|pending| !pending.reads.ranges.is_empty()) {
        return None;
    }
    // Sized once: growing it rehashed and moved it repeatedly.
    let capacity = group
        .iter()
        .map(|pending| pending.requires.len() + pending.reads.keys.len())
        .sum();
    let mut keys = Required::with_capacity_and_hasher(capacity, Default::default());
    for pending in group {
        keys.extend(pending.requires.iter().map(|(key, _)| key));
        keys.extend(pending.reads.keys.iter().map(|(key, _)| key.as_slice()));
    }
    Some(keys)
}

fn build_overlay<'a>(
    group: &'a [PendingCommit],
    accepted_before: &'a [PendingCommit],
    verdicts: &[Verdict],
    required: Option<&Required<'_>>,
    has_range: &mut bool,
) -> Overlay<'a> {
    // Sized once for every write it may take: growing it rehashed and moved it repeatedly.
    let capacity = match required {
        Some(keys) => keys.len(),
        None => group.iter().map(|pending| pending.writes.len()).sum(),
    };
    let mut overlay = Overlay::with_capacity_and_hasher(capacity, Default::default());
    for (pending, verdict) in accepted_before.iter().zip(verdicts) {
        if matches!(verdict, Verdict::Accepted { .. }) {
            add_to_overlay(&mut overlay, &pending.writes, required, has_range);
        }
    }
    overlay
}

fn add_to_overlay<'a>(
    overlay: &mut Overlay<'a>,
    writes: &'a WriteBatch,
    required: Option<&Required<'_>>,
    has_range: &mut bool,
) {
    *has_range |= writes.has_range();
    let wanted = |key: &[u8]| required.is_none_or(|keys| keys.contains(key));
    for write in writes.iter() {
        match write {
            Write::Set(key, value) if wanted(key) => {
                overlay.insert(key, Some(value));
            }
            Write::Clear(key) if wanted(key) => {
                overlay.insert(key, None);
            }
            Write::Set(..) | Write::Clear(..) | Write::ClearRange(..) => {}
        }
    }
}

/// Why `pending` cannot commit over `view`, if it cannot.
fn check(view: &View<'_>, pending: &PendingCommit) -> Option<CommitError> {
    match check_requires(view, pending) {
        Ok(failing) if failing.is_empty() => {}
        Ok(failing) => return Some(CommitError::PreconditionFailed { keys: failing }),
        Err(error) => return Some(CommitError::Rejected(error)),
    }
    match reads_unchanged(view, &pending.reads) {
        Ok(true) => None,
        Ok(false) => {
            metrics::counter!("tessera_store_conflicts_total").increment(1);
            Some(CommitError::Conflict)
        }
        Err(error) => Some(CommitError::Rejected(error)),
    }
}

fn check_requires(view: &View<'_>, pending: &PendingCommit) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut failing: Vec<Vec<u8>> = Vec::new();
    let mut ahead = pending.requires.iter();
    for (key, _) in ahead.by_ref().take(PREFETCH_AHEAD) {
        view.prefetch(key);
    }
    for (key, expected) in pending.requires.iter() {
        if let Some((next, _)) = ahead.next() {
            view.prefetch(next);
        }
        let value = view.get(key)?;
        if value.as_deref() != expected && !failing.iter().any(|seen| seen == key) {
            failing.push(key.to_vec());
        }
    }
    if !failing.is_empty() {
        metrics::counter!("tessera_store_precondition_failures_total").increment(1);
    }
    Ok(failing)
}

fn reads_unchanged(view: &View<'_>, reads: &ReadSet) -> Result<bool, StoreError> {
    for (key, seen) in &reads.keys {
        if value_hash(view.get(key)?.as_deref()) != *seen {
            return Ok(false);
        }
    }
    for range in &reads.ranges {
        let mut hasher = RowsHasher::default();
        for row in view
            .range(&range.begin, &range.end, range.reverse)
            .take(range.rows + 1)
        {
            let (key, value) = row?;
            hasher.add(&key, &value);
        }
        if hasher.rows != range.rows || hasher.digest() != range.hash {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod phase_tests {
    use super::*;

    #[test]
    fn phases_charge_each_interval_once() {
        let mut phases = Phases::start();
        std::thread::sleep(Duration::from_millis(2));
        phases.mark(Phase::Validate);
        std::thread::sleep(Duration::from_millis(3));
        // More than the interval claimed for the first part: it is clamped to the interval.
        phases.mark_split(Phase::Write, Duration::from_secs(1), Phase::Sync);
        std::thread::sleep(Duration::from_millis(1));
        phases.mark_split(Phase::Write, Duration::ZERO, Phase::Sync);
        let total = phases.last - phases.started;
        let charged: Duration = phases.spent.iter().sum();
        assert_eq!(
            charged, total,
            "every instant is charged to exactly one phase"
        );
        assert!(phases.spent[Phase::Validate as usize] >= Duration::from_millis(2));
        assert!(phases.spent[Phase::Write as usize] >= Duration::from_millis(3));
        assert!(phases.spent[Phase::Sync as usize] >= Duration::from_millis(1));
        assert_eq!(phases.spent[Phase::Apply as usize], Duration::ZERO);
    }

    #[test]
    fn slow_groups_are_logged_at_most_once_per_interval() {
        let mut slow = Phases::start();
        slow.last = slow.started + SLOW_GROUP;
        let mut fast = Phases::start();
        fast.last = fast.started + SLOW_GROUP - Duration::from_micros(1);
        let mut log = SlowLog::default();
        let t0 = Instant::now();
        assert!(!log.report(&fast, 1, t0), "a fast group is not logged");
        assert!(log.report(&slow, 1, t0), "the first slow group is logged");
        assert!(!log.report(&slow, 1, t0 + SLOW_GROUP_LOG_INTERVAL / 2));
        assert!(!log.report(&slow, 1, t0 + SLOW_GROUP_LOG_INTERVAL / 2));
        assert_eq!(log.skipped, 2);
        assert!(log.report(&slow, 1, t0 + SLOW_GROUP_LOG_INTERVAL));
        assert_eq!(
            log.skipped, 0,
            "the warning names the skipped ones and resets"
        );
    }
}
