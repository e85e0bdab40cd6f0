//! The storage conformance suite: checks every backend runs to honour the contract of
//! [`crate::store`] (ordering, ranges, read-your-writes, clears, isolation, preconditions,
//! atomic visibility, limits, durability across reopen, concurrent committers).
//!
//! Owns: backend-agnostic checks that panic with a message when the contract is broken.
//! Must never: assume a directory, a commit version numbering beyond "strictly increasing",
//! or anything about a backend's internals. Backend-specific checks (torn logs, crashes,
//! checkpoints) live beside the backend.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
//! use cells::store::{conformance::{self, ConformanceTarget}, Store};
//! struct Target { root: std::path::PathBuf, opened: u32 }
//! impl ConformanceTarget for Target {
//!     fn open(&mut self) -> Arc<dyn Store> {
//!         self.opened += 1;
//!         let dir = self.root.join(self.opened.to_string());
//!         EmbeddedStore::open(&dir, EmbeddedOptions::default()).expect("open")
//!     }
//!     fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
//!         drop(store);
//!         let dir = self.root.join(self.opened.to_string());
//!         EmbeddedStore::open(&dir, EmbeddedOptions::default()).expect("reopen")
//!     }
//! }
//! conformance::run_all(&mut Target { root: "/tmp/conformance".into(), opened: 0 });
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;

use super::limits::{
    GET_MANY_KEYS_MAX, KEY_BYTES_MAX, RANGE_ROWS_MAX, TRANSACTION_BYTES_MAX,
    TRANSACTION_DURATION_MS_MAX, VALUE_BYTES_MAX,
};
use super::{CommitError, KeyValue, RangeRequest, Store, StoreError, Transaction};

/// Committers of [`check_concurrent_committers`].
pub const CONCURRENT_THREADS: usize = 8;
/// Transactions each committer of [`check_concurrent_committers`] commits.
pub const CONCURRENT_TRANSACTIONS_PER_THREAD: usize = 200;
/// Retries of a commit refused as overloaded before a check gives up.
pub const OVERLOADED_RETRIES_MAX: usize = 10_000;

/// A backend under test.
pub trait ConformanceTarget {
    /// Opens a store over an empty keyspace.
    fn open(&mut self) -> Arc<dyn Store>;
    /// Closes `store` (the only handle left) and opens the same keyspace again.
    fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store>;
    /// The transaction age limit the target's stores enforce; a target may lower it below
    /// [`TRANSACTION_DURATION_MS_MAX`] so that [`check_transaction_too_old`] waits less.
    fn transaction_duration_ms_max(&self) -> u64 {
        TRANSACTION_DURATION_MS_MAX
    }
}

/// Runs every check, each on a freshly opened store.
pub fn run_all(target: &mut impl ConformanceTarget) {
    let checks: [fn(&mut dyn ConformanceTarget); 14] = [
        check_key_order_and_ranges,
        check_read_your_writes,
        check_clears,
        check_conflict_on_key,
        check_conflict_on_range,
        check_blind_writes_never_conflict,
        check_preconditions,
        check_atomic_visibility,
        check_limits,
        check_limits_nothing_written,
        check_transaction_too_old,
        check_durability_across_reopen,
        check_concurrent_committers,
        check_commit_versions_increase,
    ];
    for check in checks {
        check(target);
    }
}

fn begin(store: &Arc<dyn Store>) -> Box<dyn Transaction> {
    store.begin().expect("begin a transaction")
}

/// Commits once and waits for the outcome.
fn commit(txn: Box<dyn Transaction>) -> Result<u64, CommitError> {
    block_on(txn.commit())
}

fn write(store: &Arc<dyn Store>, rows: &[(&[u8], &[u8])]) -> u64 {
    for _ in 0..OVERLOADED_RETRIES_MAX {
        let mut txn = begin(store);
        for (key, value) in rows {
            txn.set(key, value).expect("set");
        }
        match commit(txn) {
            Err(CommitError::Overloaded) => std::thread::sleep(Duration::from_millis(1)),
            result => return result.expect("blind write commits"),
        }
    }
    panic!("store stayed overloaded");
}

fn read(store: &Arc<dyn Store>, key: &[u8]) -> Option<Vec<u8>> {
    block_on(store.get(key)).expect("get")
}

fn scan(store: &Arc<dyn Store>, request: RangeRequest) -> Vec<KeyValue> {
    block_on(store.get_range(request)).expect("get_range")
}

fn rows(pairs: &[(&[u8], &[u8])]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect()
}

const EVERYTHING_END: &[u8] = &[0xff, 0xff];

/// Keys sort in byte order; ranges honour limit, reverse, emptiness and prefixes.
pub fn check_key_order_and_ranges(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    let keys: [&[u8]; 8] = [b"b", &[0xff], b"a", &[0], &[], b"ab", &[0, 0], &[1]];
    for (index, key) in keys.iter().enumerate() {
        write(&store, &[(key, &[index as u8])]);
    }
    let all = scan(
        &store,
        RangeRequest::new(Vec::new(), EVERYTHING_END.to_vec(), 100),
    );
    let order: Vec<&[u8]> = all.iter().map(|(key, _)| key.as_slice()).collect();
    let expected: [&[u8]; 8] = [&[], &[0], &[0, 0], &[1], b"a", b"ab", b"b", &[0xff]];
    assert_eq!(order, expected, "keys in byte order");
    let first = scan(
        &store,
        RangeRequest::new(Vec::new(), EVERYTHING_END.to_vec(), 3),
    );
    assert_eq!(first, all[..3].to_vec(), "limit keeps the first rows");
    let mut request = RangeRequest::new(Vec::new(), EVERYTHING_END.to_vec(), 3);
    request.reverse = true;
    let last: Vec<KeyValue> = all.iter().rev().take(3).cloned().collect();
    assert_eq!(
        scan(&store, request),
        last,
        "reverse with limit keeps the last rows"
    );
    assert!(scan(&store, RangeRequest::new(b"c".to_vec(), b"d".to_vec(), 10)).is_empty());
    let prefix = scan(&store, RangeRequest::prefix(b"a", 10));
    assert_eq!(prefix, rows(&[(b"a", &[2]), (b"ab", &[5])]), "prefix range");
    let half_open = scan(&store, RangeRequest::new(b"a".to_vec(), b"b".to_vec(), 10));
    assert_eq!(half_open, prefix, "end is excluded");
    let limit_zero = scan(
        &store,
        RangeRequest::new(Vec::new(), EVERYTHING_END.to_vec(), 0),
    );
    assert!(limit_zero.is_empty(), "limit 0 reads nothing");
    let inverted = block_on(store.get_range(RangeRequest::new(b"b".to_vec(), b"a".to_vec(), 1)));
    assert!(
        matches!(inverted, Err(StoreError::InvalidRange)),
        "{inverted:?}"
    );
    let many = block_on(store.get_many(vec![b"ab".to_vec(), b"zz".to_vec(), Vec::new()]));
    assert_eq!(
        many.expect("get_many"),
        vec![Some(vec![5]), None, Some(vec![4])]
    );
}

/// Reads inside a transaction see its own sets, clears and range clears, in key order.
pub fn check_read_your_writes(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    write(
        &store,
        &[(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"e", b"5")],
    );
    let mut txn = begin(&store);
    txn.set(b"b", b"20").expect("set");
    txn.clear(b"c").expect("clear");
    txn.set(b"d", b"4").expect("set");
    assert_eq!(block_on(txn.get(b"b")).expect("get"), Some(b"20".to_vec()));
    assert_eq!(block_on(txn.get(b"c")).expect("get"), None);
    assert_eq!(block_on(txn.get(b"d")).expect("get"), Some(b"4".to_vec()));
    let all = RangeRequest::new(Vec::new(), EVERYTHING_END.to_vec(), 100);
    let expected = rows(&[(b"a", b"1"), (b"b", b"20"), (b"d", b"4"), (b"e", b"5")]);
    assert_eq!(
        block_on(txn.get_range(all.clone())).expect("range"),
        expected
    );
    let mut reverse = RangeRequest::new(Vec::new(), EVERYTHING_END.to_vec(), 2);
    reverse.reverse = true;
    let expected = rows(&[(b"e", b"5"), (b"d", b"4")]);
    assert_eq!(block_on(txn.get_range(reverse)).expect("range"), expected);
    txn.clear_range(b"a", b"d").expect("clear_range");
    txn.set(b"b", b"21").expect("set after clear_range");
    assert_eq!(
        block_on(txn.get(b"a")).expect("get"),
        None,
        "cleared by own clear_range"
    );
    let expected = rows(&[(b"b", b"21"), (b"d", b"4"), (b"e", b"5")]);
    assert_eq!(
        block_on(txn.get_range(all.clone())).expect("range"),
        expected
    );
    assert_eq!(
        read(&store, b"b"),
        Some(b"2".to_vec()),
        "uncommitted writes stay invisible"
    );
    commit(txn).expect("commit");
    assert_eq!(
        scan(&store, all),
        expected,
        "committed state equals what the txn read"
    );
}

/// Clears and range clears remove exactly their keys, also after reopen.
pub fn check_clears(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    let keys: Vec<Vec<u8>> = (0..10)
        .map(|index| format!("k{index}").into_bytes())
        .collect();
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|key| (key.as_slice(), &b"v"[..])).collect();
    write(&store, &pairs);
    let mut txn = begin(&store);
    txn.clear(b"k3").expect("clear");
    txn.clear(b"missing").expect("clear of an absent key");
    txn.clear_range(b"k5", b"k8").expect("clear_range");
    commit(txn).expect("commit");
    let expected: Vec<KeyValue> = ["k0", "k1", "k2", "k4", "k8", "k9"]
        .iter()
        .map(|key| (key.as_bytes().to_vec(), b"v".to_vec()))
        .collect();
    let all = RangeRequest::prefix(b"k", 100);
    assert_eq!(scan(&store, all.clone()), expected);
    let store = target.reopen(store);
    assert_eq!(scan(&store, all), expected, "clears survive reopen");
    assert_eq!(read(&store, b"k6"), None);
}

/// Two transactions read the same key and write it: the second to commit conflicts.
pub fn check_conflict_on_key(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    write(&store, &[(b"balance", b"10")]);
    let mut first = begin(&store);
    let mut second = begin(&store);
    for txn in [&mut first, &mut second] {
        assert_eq!(
            block_on(txn.get(b"balance")).expect("get"),
            Some(b"10".to_vec())
        );
    }
    first.set(b"balance", b"11").expect("set");
    second.set(b"balance", b"12").expect("set");
    commit(first).expect("first commits");
    let result = commit(second);
    assert!(matches!(result, Err(CommitError::Conflict)), "{result:?}");
    assert_eq!(
        read(&store, b"balance"),
        Some(b"11".to_vec()),
        "loser wrote nothing"
    );
    // A read of an absent key conflicts with its creation, too.
    let mut reader = begin(&store);
    assert_eq!(block_on(reader.get(b"fresh")).expect("get"), None);
    reader.set(b"other", b"x").expect("set");
    write(&store, &[(b"fresh", b"1")]);
    assert!(matches!(commit(reader), Err(CommitError::Conflict)));
    assert_eq!(read(&store, b"other"), None);
}

/// A range read followed by a concurrent insert into the range conflicts.
pub fn check_conflict_on_range(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    write(&store, &[(b"p/1", b"a"), (b"p/3", b"c"), (b"q/1", b"z")]);
    let mut txn = begin(&store);
    let seen = block_on(txn.get_range(RangeRequest::prefix(b"p/", 100))).expect("range");
    assert_eq!(seen.len(), 2);
    txn.set(b"summary", b"2").expect("set");
    write(&store, &[(b"p/2", b"b")]);
    let result = commit(txn);
    assert!(matches!(result, Err(CommitError::Conflict)), "{result:?}");
    assert_eq!(read(&store, b"summary"), None);
    // Writes outside the range read do not conflict.
    let mut txn = begin(&store);
    block_on(txn.get_range(RangeRequest::prefix(b"p/", 100))).expect("range");
    txn.set(b"summary", b"3").expect("set");
    write(&store, &[(b"q/2", b"y")]);
    commit(txn).expect("no conflict outside the range");
    // A concurrent clear inside the range conflicts as well.
    let mut txn = begin(&store);
    block_on(txn.get_range(RangeRequest::prefix(b"p/", 100))).expect("range");
    txn.set(b"summary", b"4").expect("set");
    let mut clearer = begin(&store);
    clearer.clear(b"p/1").expect("clear");
    commit(clearer).expect("clear commits");
    assert!(matches!(commit(txn), Err(CommitError::Conflict)));
    assert_eq!(read(&store, b"summary"), Some(b"3".to_vec()));
}

/// Transactions that read nothing never conflict; the later commit's value wins.
pub fn check_blind_writes_never_conflict(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    let mut first = begin(&store);
    let mut second = begin(&store);
    first.set(b"x", b"1").expect("set");
    second.set(b"x", b"2").expect("set");
    second.set(b"y", b"2").expect("set");
    let first_future = first.commit();
    let second_future = second.commit();
    let first_version = block_on(first_future).expect("blind write commits");
    let second_version = block_on(second_future).expect("blind write commits");
    assert!(
        first_version < second_version,
        "{first_version} < {second_version}"
    );
    assert_eq!(
        read(&store, b"x"),
        Some(b"2".to_vec()),
        "the later commit wins"
    );
}

/// Preconditions: absent, present, value mismatch; failing keys listed; nothing written.
pub fn check_preconditions(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    write(&store, &[(b"epoch", b"7"), (b"id/1", b"taken")]);
    let mut txn = begin(&store);
    txn.require(b"epoch", Some(b"7")).expect("require");
    txn.require(b"id/2", None).expect("require");
    txn.set(b"id/2", b"mine").expect("set");
    commit(txn).expect("preconditions hold");
    let mut txn = begin(&store);
    txn.require(b"epoch", Some(b"8")).expect("require");
    txn.require(b"id/1", None).expect("require");
    txn.require(b"id/9", Some(b"x")).expect("require");
    txn.require(b"id/2", Some(b"mine")).expect("require");
    txn.set(b"written", b"no").expect("set");
    match commit(txn) {
        Err(CommitError::PreconditionFailed { mut keys }) => {
            keys.sort();
            let expected: Vec<Vec<u8>> =
                vec![b"epoch".to_vec(), b"id/1".to_vec(), b"id/9".to_vec()];
            assert_eq!(keys, expected, "exactly the failing keys");
        }
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    assert_eq!(read(&store, b"written"), None, "nothing written on failure");
    let mut txn = begin(&store);
    txn.require(b"id/2", Some(b"mine")).expect("require");
    txn.set(b"written", b"yes").expect("set");
    commit(txn).expect("the rest recommits");
    assert_eq!(read(&store, b"written"), Some(b"yes".to_vec()));
}

/// Readers never see part of a transaction.
pub fn check_atomic_visibility(target: &mut dyn ConformanceTarget) {
    const KEYS: usize = 10;
    const ROUNDS: usize = 200;
    let store = target.open();
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|index| format!("atom/{index:02}").into_bytes())
        .collect();
    let writer_store = store.clone();
    let writer_keys = keys.clone();
    let writer = std::thread::spawn(move || {
        for round in 0..ROUNDS {
            let value = (round as u64).to_be_bytes();
            let pairs: Vec<(&[u8], &[u8])> = writer_keys
                .iter()
                .map(|key| (key.as_slice(), &value[..]))
                .collect();
            write(&writer_store, &pairs);
        }
    });
    let mut reads = 0;
    while !writer.is_finished() || reads < 10 {
        let values = block_on(store.get_many(keys.clone())).expect("get_many");
        assert!(
            values.windows(2).all(|pair| pair[0] == pair[1]),
            "torn read: {values:?}"
        );
        let range = scan(&store, RangeRequest::prefix(b"atom/", 100));
        assert!(
            range.is_empty() || range.len() == KEYS,
            "torn range: {} rows",
            range.len()
        );
        assert!(
            range.windows(2).all(|pair| pair[0].1 == pair[1].1),
            "torn range read"
        );
        reads += 1;
    }
    writer.join().expect("writer thread");
    let last = (ROUNDS as u64 - 1).to_be_bytes().to_vec();
    assert_eq!(read(&store, &keys[KEYS - 1]), Some(last));
}

fn expect_error<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) -> StoreError {
    match result {
        Ok(value) => panic!("{what}: expected an error, got {value:?}"),
        Err(error) => error,
    }
}

/// Every limit gives its typed error.
pub fn check_limits(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    let mut txn = begin(&store);
    let big_key = vec![b'k'; KEY_BYTES_MAX + 1];
    let big_value = vec![b'v'; VALUE_BYTES_MAX + 1];
    let error = expect_error(txn.set(&big_key, b"v"), "set with a large key");
    assert!(matches!(error, StoreError::KeyTooLarge { len, .. } if len == KEY_BYTES_MAX + 1));
    let error = expect_error(txn.set(b"k", &big_value), "set with a large value");
    assert!(matches!(error, StoreError::ValueTooLarge { len, .. } if len == VALUE_BYTES_MAX + 1));
    let error = expect_error(txn.clear(&big_key), "clear with a large key");
    assert!(matches!(error, StoreError::KeyTooLarge { .. }), "{error:?}");
    let error = expect_error(txn.require(&big_key, None), "require with a large key");
    assert!(matches!(error, StoreError::KeyTooLarge { .. }), "{error:?}");
    let error = expect_error(block_on(txn.get(&big_key)), "get with a large key");
    assert!(matches!(error, StoreError::KeyTooLarge { .. }), "{error:?}");
    let error = expect_error(block_on(store.get(&big_key)), "store get with a large key");
    assert!(matches!(error, StoreError::KeyTooLarge { .. }), "{error:?}");
    let too_many_rows = RangeRequest::new(b"a".to_vec(), b"b".to_vec(), RANGE_ROWS_MAX + 1);
    let error = expect_error(
        block_on(store.get_range(too_many_rows.clone())),
        "store range",
    );
    assert!(
        matches!(error, StoreError::RequestTooLarge { .. }),
        "{error:?}"
    );
    let error = expect_error(block_on(txn.get_range(too_many_rows)), "txn range");
    assert!(
        matches!(error, StoreError::RequestTooLarge { .. }),
        "{error:?}"
    );
    let keys = vec![b"k".to_vec(); GET_MANY_KEYS_MAX + 1];
    let error = expect_error(block_on(store.get_many(keys)), "get_many");
    assert!(
        matches!(error, StoreError::RequestTooLarge { .. }),
        "{error:?}"
    );
    let value = vec![b'v'; VALUE_BYTES_MAX];
    let mut result = Ok(());
    for index in 0..(TRANSACTION_BYTES_MAX / VALUE_BYTES_MAX + 1) {
        result = txn.set(format!("big/{index:04}").as_bytes(), &value);
        if result.is_err() {
            break;
        }
    }
    let error = expect_error(result, "transaction over 10 MB");
    assert!(
        matches!(error, StoreError::TransactionTooLarge { .. }),
        "{error:?}"
    );
    assert!(
        txn.size_bytes() <= TRANSACTION_BYTES_MAX,
        "{}",
        txn.size_bytes()
    );
}

/// A write refused for a limit leaves nothing behind: the rest of the transaction commits
/// without it, and a transaction abandoned after an error writes nothing.
pub fn check_limits_nothing_written(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    let mut txn = begin(&store);
    let big_key = vec![b'k'; KEY_BYTES_MAX + 1];
    assert!(txn.set(&big_key, b"v").is_err());
    assert!(txn
        .set(b"big-value", &vec![b'v'; VALUE_BYTES_MAX + 1])
        .is_err());
    txn.set(b"small", b"v").expect("set");
    commit(txn).expect("commit");
    assert_eq!(read(&store, b"small"), Some(b"v".to_vec()));
    assert_eq!(read(&store, b"big-value"), None);
    let range = scan(
        &store,
        RangeRequest::new(Vec::new(), EVERYTHING_END.to_vec(), 10),
    );
    assert_eq!(range.len(), 1, "only the small key: {:?}", range.len());
    let mut txn = begin(&store);
    let value = vec![b'v'; VALUE_BYTES_MAX];
    let mut index = 0;
    while txn
        .set(format!("big/{index:04}").as_bytes(), &value)
        .is_ok()
    {
        index += 1;
    }
    drop(txn);
    assert!(scan(&store, RangeRequest::prefix(b"big/", 10)).is_empty());
    // The maximal value itself is accepted.
    write(&store, &[(&vec![b'k'; KEY_BYTES_MAX], &value)]);
    assert_eq!(
        read(&store, &vec![b'k'; KEY_BYTES_MAX]).map(|v| v.len()),
        Some(VALUE_BYTES_MAX)
    );
}

/// A transaction older than the limit is rejected as too old and writes nothing.
pub fn check_transaction_too_old(target: &mut dyn ConformanceTarget) {
    let max_ms = target.transaction_duration_ms_max();
    let store = target.open();
    let mut txn = begin(&store);
    txn.set(b"late", b"v").expect("set");
    std::thread::sleep(Duration::from_millis(max_ms + 50));
    let result = commit(txn);
    assert!(
        matches!(
            result,
            Err(CommitError::Rejected(StoreError::TransactionTooOld { .. }))
        ),
        "{result:?}"
    );
    assert_eq!(read(&store, b"late"), None);
}

/// Committed writes and clears survive a reopen.
pub fn check_durability_across_reopen(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    for index in 0..100u32 {
        let key = format!("durable/{index:03}");
        write(&store, &[(key.as_bytes(), &index.to_be_bytes())]);
    }
    let mut txn = begin(&store);
    txn.clear_range(b"durable/050", b"durable/060")
        .expect("clear_range");
    commit(txn).expect("commit");
    let before = scan(&store, RangeRequest::prefix(b"durable/", 1000));
    assert_eq!(before.len(), 90);
    let store = target.reopen(store);
    assert_eq!(
        scan(&store, RangeRequest::prefix(b"durable/", 1000)),
        before
    );
    let version = write(&store, &[(b"after-reopen", b"v")]);
    assert!(version > 0);
}

fn commit_retrying(store: &Arc<dyn Store>, build: impl Fn(&mut dyn Transaction)) -> u64 {
    for _ in 0..OVERLOADED_RETRIES_MAX {
        let mut txn = begin(store);
        build(txn.as_mut());
        match commit(txn) {
            Err(CommitError::Overloaded) => std::thread::yield_now(),
            result => return result.expect("commit"),
        }
    }
    panic!("store stayed overloaded");
}

/// Many threads commit at once: every commit is present after reopen, and each thread sees
/// strictly increasing versions, unique across threads.
pub fn check_concurrent_committers(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    let threads: Vec<_> = (0..CONCURRENT_THREADS)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut versions = Vec::with_capacity(CONCURRENT_TRANSACTIONS_PER_THREAD);
                for index in 0..CONCURRENT_TRANSACTIONS_PER_THREAD {
                    versions.push(commit_retrying(&store, |txn| {
                        for part in 0..3 {
                            let key = format!("c/{thread:02}/{index:04}/{part}");
                            txn.set(key.as_bytes(), &[thread as u8, part]).expect("set");
                        }
                    }));
                }
                versions
            })
        })
        .collect();
    let mut all_versions = Vec::new();
    for thread in threads {
        let versions = thread.join().expect("committer thread");
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "per-thread order"
        );
        all_versions.extend(versions);
    }
    let count = all_versions.len();
    all_versions.sort_unstable();
    all_versions.dedup();
    assert_eq!(all_versions.len(), count, "versions unique across threads");
    let store = target.reopen(store);
    let rows = scan(&store, RangeRequest::prefix(b"c/", RANGE_ROWS_MAX));
    assert_eq!(
        rows.len(),
        CONCURRENT_THREADS * CONCURRENT_TRANSACTIONS_PER_THREAD * 3
    );
}

/// Sequential commits get strictly increasing versions, also across a reopen.
pub fn check_commit_versions_increase(target: &mut dyn ConformanceTarget) {
    let store = target.open();
    let mut last = 0;
    for index in 0..50u32 {
        let version = write(&store, &[(b"counter", &index.to_be_bytes())]);
        assert!(version > last, "version {version} after {last}");
        last = version;
    }
    let store = target.reopen(store);
    let version = write(&store, &[(b"counter", b"after")]);
    assert!(
        version > last,
        "version {version} after reopen, last {last}"
    );
}
