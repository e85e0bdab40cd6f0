//! Embedded-only checks: torn tails, corruption, crashes between write and sync,
//! checkpoints and restart, and a model-based property test.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::executor::block_on;
use proptest::prelude::*;

use super::wal::{list_segments, WAL_PREALLOCATE_BYTES};
use super::{EmbeddedOptions, EmbeddedStore, Failpoint};
use crate::store::{CommitError, RangeRequest, Store, StoreError};

fn open(dir: &Path, options: EmbeddedOptions) -> Arc<EmbeddedStore> {
    EmbeddedStore::open(dir, options).expect("open")
}

fn key(index: usize) -> Vec<u8> {
    format!("key/{index:05}").into_bytes()
}

fn put(store: &EmbeddedStore, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, CommitError> {
    let mut txn = store.begin().expect("begin");
    for (key, value) in pairs {
        txn.set(key, value).expect("set");
    }
    block_on(txn.commit())
}

fn everything(store: &EmbeddedStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let request = RangeRequest::new(Vec::new(), vec![0xff, 0xff], 100_000);
    block_on(store.get_range(request)).expect("range")
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    list_segments(dir)
        .expect("segments")
        .pop()
        .expect("a segment")
        .1
}

/// A store with 20 committed records of 50 bytes (keys 0..20), still open.
fn twenty_records(dir: &Path) -> Arc<EmbeddedStore> {
    let store = open(dir, EmbeddedOptions::default());
    for index in 0..20 {
        put(&store, &[(key(index), vec![index as u8; 50])]).expect("commit");
    }
    store
}

#[test]
fn torn_tail_recovers_every_complete_record() {
    let dir = tempfile::tempdir().expect("dir");
    let store = twenty_records(dir.path());
    drop(store);
    let segment = last_segment(dir.path());
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.truncate(bytes.len() - 7);
    bytes.extend_from_slice(&[0xab; 37]);
    std::fs::write(&segment, &bytes).expect("write");
    let store = open(dir.path(), EmbeddedOptions::default());
    let rows = everything(&store);
    assert_eq!(rows.len(), 19, "every complete record and nothing else");
    assert_eq!(rows.last().map(|(key, _)| key.clone()), Some(key(18)));
    put(&store, &[(key(99), b"after".to_vec())]).expect("commit after recovery");
    drop(store);
    let store = open(dir.path(), EmbeddedOptions::default());
    assert_eq!(everything(&store).len(), 20);
}

#[test]
fn the_log_is_preallocated_while_open_and_exact_when_closed() {
    let dir = tempfile::tempdir().expect("dir");
    let store = twenty_records(dir.path());
    let segment = last_segment(dir.path());
    let open_len = std::fs::metadata(&segment).expect("meta").len();
    assert_eq!(
        open_len % WAL_PREALLOCATE_BYTES,
        0,
        "zeros ahead of the records"
    );
    drop(store);
    let closed_len = std::fs::metadata(&segment).expect("meta").len();
    assert!(
        closed_len < open_len && closed_len > 20 * 50,
        "{closed_len}"
    );
    let bytes = std::fs::read(&segment).expect("read");
    assert_ne!(
        bytes.last(),
        Some(&0),
        "the closed log ends at its last record"
    );
    let store = open(dir.path(), EmbeddedOptions::default());
    assert_eq!(everything(&store).len(), 20);
}

#[test]
fn zeros_after_the_last_record_are_the_end_of_the_log() {
    // What a kill -9 leaves: the records, then the writer's preallocated zeros — with or
    // without a torn record between them.
    for torn in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let store = twenty_records(dir.path());
        drop(store);
        let segment = last_segment(dir.path());
        let mut bytes = std::fs::read(&segment).expect("read");
        let records_len = bytes.len();
        if torn {
            bytes.truncate(records_len - 7);
        }
        bytes.resize(bytes.len() + WAL_PREALLOCATE_BYTES as usize, 0);
        std::fs::write(&segment, &bytes).expect("write");
        let store = open(dir.path(), EmbeddedOptions::default());
        let rows = everything(&store);
        assert_eq!(rows.len(), if torn { 19 } else { 20 }, "torn: {torn}");
        put(&store, &[(key(99), b"after".to_vec())]).expect("commit after recovery");
        drop(store);
        let cut = std::fs::metadata(&segment).expect("meta").len() as usize;
        assert!(
            cut <= records_len,
            "recovery cut the zeros ({cut} > {records_len})"
        );
        let store = open(dir.path(), EmbeddedOptions::default());
        assert_eq!(everything(&store).len(), if torn { 20 } else { 21 });
    }
}

#[test]
fn checksum_flip_in_the_middle_is_corrupt() {
    let dir = tempfile::tempdir().expect("dir");
    let store = twenty_records(dir.path());
    drop(store);
    let segment = last_segment(dir.path());
    let mut bytes = std::fs::read(&segment).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).expect("write");
    let result = EmbeddedStore::open(dir.path(), EmbeddedOptions::default());
    assert!(
        matches!(result, Err(StoreError::Corrupt { .. })),
        "{result:?}"
    );
}

/// Eight writers commit 40 transactions each over syncs made slow; returns the store's
/// paced waits after checking that every commit is durable (after a reopen), once.
fn commit_over_slow_syncs(sync_gap_max: std::time::Duration) -> u64 {
    let dir = tempfile::tempdir().expect("dir");
    let options = EmbeddedOptions {
        failpoint: Some(Failpoint::SlowSyncs {
            micros: 2_500,
            every: 2,
        }),
        sync_gap_max,
        ..EmbeddedOptions::default()
    };
    let store = open(dir.path(), options);
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let store = Arc::clone(&store);
            scope.spawn(move || {
                for n in 0..EACH {
                    let index = writer * EACH + n;
                    put(&store, &[(key(index), vec![writer as u8; 20])]).expect("commit");
                }
            });
        }
    });
    assert_eq!(
        store.stats().transactions_committed,
        (WRITERS * EACH) as u64
    );
    let waits = store.paced_waits();
    drop(store);
    let store = open(dir.path(), EmbeddedOptions::default());
    let rows = everything(&store);
    assert_eq!(rows.len(), WRITERS * EACH);
    for (index, (k, v)) in rows.iter().enumerate() {
        assert_eq!(*k, key(index));
        assert_eq!(*v, vec![(index / EACH) as u8; 20]);
    }
    waits
}

/// Slow syncs of small groups make the committer space syncs apart (and commits arriving
/// meanwhile join the waiting group): none is lost or answered twice. Without pacing it
/// never waits.
#[test]
fn paced_syncs_lose_no_commit() {
    assert!(commit_over_slow_syncs(std::time::Duration::from_millis(2)) > 0);
    assert_eq!(commit_over_slow_syncs(std::time::Duration::ZERO), 0);
}

#[test]
fn a_sync_gap_over_the_limit_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let options = EmbeddedOptions {
        sync_gap_max: super::pacer::GAP_MAX_LIMIT + std::time::Duration::from_micros(1),
        ..EmbeddedOptions::default()
    };
    let result = EmbeddedStore::open(dir.path(), options);
    assert!(
        matches!(result, Err(StoreError::Backend { .. })),
        "{:?}",
        result.err()
    );
}

#[test]
fn crash_between_write_and_sync_keeps_transactions_whole() {
    let dir = tempfile::tempdir().expect("dir");
    let failpoint = Failpoint::TornGroupWrite {
        after_groups: 3,
        bytes_written: 700,
    };
    let options = EmbeddedOptions {
        failpoint: Some(failpoint),
        ..EmbeddedOptions::default()
    };
    let store = open(dir.path(), options);
    let pairs = |txn: usize| -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..3)
            .map(|part| (key(txn * 10 + part), vec![txn as u8; 100]))
            .collect()
    };
    for txn in 0..3 {
        put(&store, &pairs(txn)).expect("durable group");
    }
    let transactions: Vec<_> = (3..12)
        .map(|txn| {
            let mut transaction = store.begin().expect("begin");
            for (key, value) in pairs(txn) {
                transaction.set(&key, &value).expect("set");
            }
            transaction
        })
        .collect();
    let futures: Vec<_> = transactions.into_iter().map(|txn| txn.commit()).collect();
    let outcomes: Vec<_> = futures.into_iter().map(block_on).collect();
    assert!(outcomes
        .iter()
        .any(|outcome| matches!(outcome, Err(CommitError::Unknown { .. }))));
    assert!(
        matches!(store.begin().err(), Some(StoreError::Closed)),
        "a failed store refuses"
    );
    drop(store);
    let store = open(dir.path(), EmbeddedOptions::default());
    let rows: BTreeMap<Vec<u8>, Vec<u8>> = everything(&store).into_iter().collect();
    for (txn, outcome) in (3..12).zip(&outcomes) {
        let present = pairs(txn)
            .iter()
            .filter(|(key, _)| rows.contains_key(key))
            .count();
        assert!(
            present == 0 || present == 3,
            "transaction {txn} is torn: {present} of 3"
        );
        match outcome {
            Ok(_) => assert_eq!(present, 3, "acknowledged transaction {txn} lost"),
            Err(CommitError::Unknown { .. }) => {}
            Err(_) => assert_eq!(present, 0, "refused transaction {txn} written"),
        }
    }
    assert!((0..3).all(|txn| pairs(txn).iter().all(|(key, _)| rows.contains_key(key))));
}

fn tiny_options() -> EmbeddedOptions {
    EmbeddedOptions {
        memtable_bytes_max: 16 * 1024,
        wal_bytes_max: 32 * 1024,
        sync: false,
        ..EmbeddedOptions::default()
    }
}

fn wait_for_checkpoint(store: &EmbeddedStore) {
    for _ in 0..1000 {
        if store.shared.tables.read().frozen.is_none() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("checkpoint did not finish");
}

#[test]
fn checkpoint_and_restart_keep_final_values() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path(), tiny_options());
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for round in 0..400usize {
        let mut txn = store.begin().expect("begin");
        for part in 0..5 {
            let index = (round * 7 + part * 13) % 300;
            let value = format!("{round}-{part}").into_bytes();
            txn.set(&key(index), &value).expect("set");
            model.insert(key(index), value);
        }
        if round % 5 == 0 {
            txn.clear(&key(round % 300)).expect("clear");
            model.remove(&key(round % 300));
        }
        if round % 37 == 0 {
            let (begin, end) = (key(round % 250), key(round % 250 + 20));
            txn.clear_range(&begin, &end).expect("clear_range");
            model.retain(|key, _| !(begin <= *key && *key < end));
        }
        block_on(txn.commit()).expect("commit");
    }
    wait_for_checkpoint(&store);
    let expected: Vec<_> = model.clone().into_iter().collect();
    assert_eq!(everything(&store), expected);
    let segments = list_segments(dir.path()).expect("segments").len();
    assert!(segments <= 2, "covered segments deleted: {segments} left");
    assert!(
        dir.path().join("checkpoint.position").exists(),
        "a checkpoint was written"
    );
    drop(store);
    let store = open(dir.path(), tiny_options());
    assert_eq!(everything(&store), expected, "after restart");
    for (key, value) in &model {
        assert_eq!(block_on(store.get(key)).expect("get").as_ref(), Some(value));
    }
}

/// Writes filler until the active memtable freezes, then waits for its checkpoint (so the
/// active memtable holds no filler and no second freeze is due).
fn force_checkpoint(store: &EmbeddedStore, round: &mut usize) {
    while store.shared.tables.read().frozen.is_none() {
        put(
            store,
            &[(format!("filler-{round:06}").into_bytes(), vec![7; 200])],
        )
        .expect("put");
        *round += 1;
    }
    wait_for_checkpoint(store);
    assert!(
        !store.shared.tables.read().checkpoint_empty,
        "a checkpoint was written"
    );
}

/// Small memtables, and keys under `t/` transient.
fn transient_options() -> EmbeddedOptions {
    EmbeddedOptions {
        transient_prefixes: vec![b"t/".to_vec()],
        ..tiny_options()
    }
}

/// A memtable whose hash map of transient keys passed its bound keeps them in its B-tree;
/// the checkpoint still learns of them, so a later clear leaves the tombstone it needs.
#[test]
fn transient_keys_spilled_into_the_b_tree_are_tracked_through_the_checkpoint() {
    let dir = tempfile::tempdir().expect("dir");
    let options = transient_options();
    let store = open(dir.path(), options);
    let mut round = 0;
    let legs: Vec<(Vec<u8>, Vec<u8>)> = (0..8u8)
        .map(|i| (vec![b't', b'/', b'0' + i], vec![i; 20]))
        .collect();
    put(&store, &legs).expect("put");
    force_checkpoint(&store, &mut round);
    let mut txn = store.begin().expect("begin");
    txn.clear(b"t/6").expect("clear");
    block_on(txn.commit()).expect("commit");
    assert_eq!(
        store.shared.tables.read().active.lookup(b"t/6"),
        Some(None),
        "the clear hides the checkpoint's value"
    );
    assert_eq!(block_on(store.get(b"t/6")).expect("get"), None);
    // The seven other legs and the fillers that forced the checkpoint.
    assert_eq!(everything(&store).len(), 7 + round);
}

#[test]
fn transient_clears_leave_no_tombstone_unless_an_older_layer_holds_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let options = transient_options();
    let store = open(dir.path(), options.clone());
    let mut round = 0;
    put(
        &store,
        &[(b"t/old".to_vec(), b"in the checkpoint".to_vec())],
    )
    .expect("put");
    force_checkpoint(&store, &mut round);
    put(&store, &[(b"t/new".to_vec(), b"only in memory".to_vec())]).expect("put");
    put(&store, &[(b"other".to_vec(), b"not transient".to_vec())]).expect("put");
    for key in [&b"t/old"[..], b"t/new", b"other"] {
        let mut txn = store.begin().expect("begin");
        txn.clear(key).expect("clear");
        block_on(txn.commit()).expect("commit");
    }
    {
        let tables = store.shared.tables.read();
        assert_eq!(
            tables.active.lookup(b"t/new"),
            None,
            "no tombstone for t/new"
        );
        assert_eq!(
            tables.active.lookup(b"t/old"),
            Some(None),
            "t/old hides the checkpoint's"
        );
        assert_eq!(
            tables.active.lookup(b"other"),
            Some(None),
            "other keys keep tombstones"
        );
    }
    for key in [&b"t/old"[..], b"t/new", b"other"] {
        assert_eq!(block_on(store.get(key)).expect("get"), None);
    }
    // The tombstone of t/old reaches the checkpoint; after a reopen nothing comes back.
    force_checkpoint(&store, &mut round);
    drop(store);
    let store = open(dir.path(), options);
    for key in [&b"t/old"[..], b"t/new", b"other"] {
        assert_eq!(block_on(store.get(key)).expect("get"), None, "after reopen");
    }
    assert!(everything(&store)
        .iter()
        .all(|(key, _)| key.starts_with(b"filler-")));
}

#[test]
fn requires_see_earlier_transactions_of_the_same_group() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path(), EmbeddedOptions::default());
    for _ in 0..20 {
        let mut first = store.begin().expect("begin");
        first.set(b"x", b"1").expect("set");
        let mut second = store.begin().expect("begin");
        second.require(b"x", Some(b"1")).expect("require");
        second.set(b"y", b"1").expect("set");
        let mut third = store.begin().expect("begin");
        third.clear_range(b"a", b"z").expect("clear_range");
        let mut fourth = store.begin().expect("begin");
        fourth.require(b"x", None).expect("require");
        fourth.require(b"y", None).expect("require");
        fourth.set(b"z", b"1").expect("set");
        let futures = [
            first.commit(),
            second.commit(),
            third.commit(),
            fourth.commit(),
        ];
        for outcome in futures.into_iter().map(block_on) {
            outcome.expect("each sees the ones queued before it");
        }
    }
}

/// Answers go out before a group is applied to the memtable (under the tables' write
/// lock): a read made right after an answer, on any thread, must still see the write.
#[test]
fn a_read_after_the_answer_sees_the_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path(), EmbeddedOptions::default());
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for round in 0..250 {
                    // Wide groups: several writers, a batch of keys each.
                    let pairs: Vec<_> = (0..16)
                        .map(|i| {
                            (
                                key(writer * 100_000 + round * 16 + i),
                                vec![writer as u8; 40],
                            )
                        })
                        .collect();
                    put(&store, &pairs).expect("commit");
                    for (key, value) in &pairs {
                        let seen = block_on(store.get(key)).expect("get");
                        assert_eq!(seen.as_ref(), Some(value), "writer {writer} round {round}");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
}

#[derive(Debug, Clone)]
enum Operation {
    Set(u8, u8),
    Clear(u8),
    ClearRange(u8, u8),
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => (0u8..40, any::<u8>()).prop_map(|(key, value)| Operation::Set(key, value)),
        1 => (0u8..40).prop_map(Operation::Clear),
        1 => (0u8..40, 1u8..10).prop_map(|(key, width)| Operation::ClearRange(key, width)),
    ]
}

fn model_key(index: u8) -> Vec<u8> {
    vec![b'm', index]
}

fn apply(
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    txn: &mut dyn crate::store::Transaction,
    op: &Operation,
) {
    match *op {
        Operation::Set(key, value) => {
            txn.set(&model_key(key), &[value; 30]).expect("set");
            model.insert(model_key(key), vec![value; 30]);
        }
        Operation::Clear(key) => {
            txn.clear(&model_key(key)).expect("clear");
            model.remove(&model_key(key));
        }
        Operation::ClearRange(key, width) => {
            let (begin, end) = (model_key(key), model_key(key.saturating_add(width)));
            if begin < end {
                txn.clear_range(&begin, &end).expect("clear_range");
                model.retain(|key, _| !(begin <= *key && *key < end));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Transient prefixes (clears without tombstones), pinned prefixes (keys kept in
    /// memory beside the layers; past `PINNED_KEYS_MAX`, 16 in tests, pinning stops),
    /// point prefixes (keys in the memtables' hash tables) and index prefixes (keys in the
    /// memtables' second B-tree) cover none, some or all of the model's keys; checkpoints
    /// run beside the commits and reopens rebuild what the store knows of the checkpoint's
    /// transient and pinned keys.
    #[test]
    fn random_transactions_match_a_model(
        transactions in prop::collection::vec(
            (prop::collection::vec(operation(), 1..8), any::<bool>()), 1..60),
        transient_prefixes in prop_oneof![
            Just(Vec::new()),
            Just(vec![b"m".to_vec()]),
            Just(vec![vec![b'm', 3], vec![b'm', 17], vec![b'm', 30]]),
        ],
        pinned_prefixes in pinned_prefixes(),
        point_prefixes in point_prefixes(),
        index_prefixes in index_prefixes(),
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let options = EmbeddedOptions { memtable_bytes_max: 2048, wal_bytes_max: 4096,
            transient_prefixes, pinned_prefixes, point_prefixes, index_prefixes,
            ..tiny_options() };
        let mut store = open(dir.path(), options.clone());
        let mut model = BTreeMap::new();
        for (operations, reopen) in &transactions {
            let mut txn = store.begin().expect("begin");
            for op in operations {
                apply(&mut model, txn.as_mut(), op);
            }
            block_on(txn.commit()).expect("commit");
            if *reopen {
                drop(store);
                store = open(dir.path(), options.clone());
            }
            let expected: Vec<_> = model.clone().into_iter().collect();
            prop_assert_eq!(everything(&store), expected);
            check_partial_reads(&store, &model)?;
        }
    }
}

/// Pinned prefixes for the model tests: none, a few keys (always pinned), or all of them
/// (more than `PINNED_KEYS_MAX` in tests, so pinning may stop midway, or at a reopen).
fn pinned_prefixes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        Just(Vec::new()),
        Just(vec![vec![b'm', 3], vec![b'm', 7], vec![b'm', 9]]),
        Just(vec![b"m".to_vec()]),
    ]
}

/// Point prefixes for the model tests (keys kept in the memtables' point hash tables):
/// none, a few keys, or all of them.
fn point_prefixes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        Just(Vec::new()),
        Just(vec![vec![b'm', 5], vec![b'm', 17], vec![b'm', 20]]),
        Just(vec![b"m".to_vec()]),
    ]
}

/// Index prefixes for the model tests (keys kept in the memtables' index B-tree): none, a
/// few keys (some also under the point prefixes' few keys, which keep them), or all.
fn index_prefixes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        Just(Vec::new()),
        Just(vec![vec![b'm', 4], vec![b'm', 5], vec![b'm', 11]]),
        Just(vec![b"m".to_vec()]),
    ]
}

/// Partial ranges in both directions, with a row limit, and point reads agree with the
/// model (the memtable keeps transient keys apart from the ordered ones and merges them).
fn check_partial_reads(
    store: &EmbeddedStore,
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), TestCaseError> {
    for (from, to, limit) in [(3u8, 31u8, 100usize), (0, 40, 5), (17, 18, 10)] {
        let (begin, end) = (model_key(from), model_key(to));
        let inside = model.range(begin.clone()..end.clone());
        let forward: Vec<_> = inside
            .clone()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let backward: Vec<_> = inside
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let request = RangeRequest::new(begin.clone(), end.clone(), limit);
        prop_assert_eq!(block_on(store.get_range(request)).expect("range"), forward);
        let request = RangeRequest {
            reverse: true,
            ..RangeRequest::new(begin, end, limit)
        };
        prop_assert_eq!(block_on(store.get_range(request)).expect("range"), backward);
    }
    for key in (0u8..40).step_by(3) {
        let got = block_on(store.get(&model_key(key))).expect("get");
        prop_assert_eq!(got.as_ref(), model.get(&model_key(key)));
    }
    Ok(())
}

/// A precondition of a generated transaction: key `.0` must hold the model's current value
/// (`.1 == true`) or a value it does not hold (absent, or a different one).
fn require_strategy() -> impl Strategy<Value = (u8, bool)> {
    (0u8..12, prop::bool::weighted(0.8))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Preconditions decide exactly as a model says, whether the key was last written by
    /// an earlier group, by an earlier transaction of the same group, or never; the
    /// committer's cache of required keys never answers with a stale value.
    #[test]
    fn preconditions_match_a_model(
        waves in prop::collection::vec(
            prop::collection::vec(
                (prop::collection::vec(require_strategy(), 0..4),
                 prop::collection::vec(operation(), 0..4)),
                1..5),
            1..40),
        transient_prefixes in prop_oneof![
            Just(Vec::new()),
            Just(vec![b"m".to_vec()]),
            Just(vec![vec![b'm', 3], vec![b'm', 7], vec![b'm', 11]]),
        ],
        pinned_prefixes in pinned_prefixes(),
        point_prefixes in point_prefixes(),
        index_prefixes in index_prefixes(),
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let options = EmbeddedOptions { memtable_bytes_max: 2048, wal_bytes_max: 4096,
            transient_prefixes, pinned_prefixes, point_prefixes, index_prefixes,
            ..tiny_options() };
        let store = open(dir.path(), options);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for wave in &waves {
            // Queued together, so they are usually validated in one group, in this order.
            let mut expected = Vec::new();
            let mut futures = Vec::new();
            for (requires, operations) in wave {
                let mut txn = store.begin().expect("begin");
                let mut holds = true;
                for (key, right) in requires {
                    let current = model.get(&model_key(*key)).cloned();
                    let value = if *right {
                        current.clone()
                    } else {
                        match &current {
                            Some(_) => None,
                            None => Some(vec![7; 30]),
                        }
                    };
                    holds &= value == current;
                    txn.require(&model_key(*key), value.as_deref()).expect("require");
                }
                let mut after = model.clone();
                for op in operations {
                    apply(&mut after, txn.as_mut(), op);
                }
                if holds {
                    model = after;
                }
                expected.push(holds);
                futures.push(txn.commit());
            }
            for (future, holds) in futures.into_iter().zip(expected) {
                match block_on(future) {
                    Ok(_) => prop_assert!(holds, "committed against a failing precondition"),
                    Err(CommitError::PreconditionFailed { .. }) => {
                        prop_assert!(!holds, "refused although every precondition held")
                    }
                    Err(other) => prop_assert!(false, "unexpected outcome {other:?}"),
                }
            }
            let rows: Vec<_> = model.clone().into_iter().collect();
            prop_assert_eq!(everything(&store), rows);
        }
    }
}
