//! Commit throughput of the embedded store: transactions of 5 writes of ~100-byte values
//! from N concurrent committer threads, group-committed and durable (fdatasync).
//!
//! `cargo bench -p cells --bench store` runs the criterion benchmark. With
//! `STORE_BENCH_REPORT=1` it instead prints a table (median of 3 runs) of transactions/s and
//! key writes/s for 1, 8 and 64 committers, with one commit in flight per thread and with a
//! window of pipelined commits per thread, then the reopen time after 5 M key writes.
//!
//! With `STORE_BENCH_AUDIT=1` it prints how long an audit's page reads take on a busy store:
//! 1 M transfer records in the active memtable, then pages of 1,000 records read in key
//! order, with a commit of 1,000 new records before each page (timed too). A read holds the
//! tables shared, so commits wait out a slow page.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cells::ids::TransferId;
use cells::keys::Keyspace;
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::{BoxFuture, CommitError, RangeRequest, Store};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use futures::executor::block_on;

const WRITES_PER_TRANSACTION: usize = 5;
const VALUE_BYTES: usize = 100;
const THREAD_COUNTS: [usize; 3] = [1, 8, 64];
/// Commits one report thread keeps in flight in pipelined mode.
const PIPELINE_DEPTH: usize = 64;

type CommitFuture = BoxFuture<'static, Result<u64, CommitError>>;

fn submit(store: &EmbeddedStore, thread: usize, index: u64) -> CommitFuture {
    let mut txn = store.begin().expect("begin");
    let value = [index as u8; VALUE_BYTES];
    for part in 0..WRITES_PER_TRANSACTION {
        // Keys spread like account balances: many distinct, some overwritten.
        let key = format!("acct/{:02}/{:08}/{part}", thread, index % 1_000_000);
        txn.set(key.as_bytes(), &value).expect("set");
    }
    txn.commit()
}

fn finish(future: CommitFuture) {
    match block_on(future) {
        Ok(_) | Err(CommitError::Overloaded) => {}
        Err(error) => panic!("commit failed: {error}"),
    }
}

/// Commits `transactions` spread over `threads`, each keeping `depth` commits in flight.
fn run(store: &Arc<EmbeddedStore>, threads: usize, depth: usize, transactions: u64) -> Duration {
    let per_thread = transactions.div_ceil(threads as u64);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let store = store.clone();
            scope.spawn(move || {
                let mut in_flight = VecDeque::with_capacity(depth);
                for index in 0..per_thread {
                    if in_flight.len() == depth {
                        finish(in_flight.pop_front().expect("non-empty"));
                    }
                    in_flight.push_back(submit(&store, thread, index));
                }
                in_flight.into_iter().for_each(finish);
            });
        }
    });
    started.elapsed()
}

fn open(dir: &Path) -> Arc<EmbeddedStore> {
    EmbeddedStore::open(dir, EmbeddedOptions::default()).expect("open")
}

fn commit_throughput(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("embedded_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for threads in THREAD_COUNTS {
        let dir = tempfile::tempdir().expect("dir");
        let store = open(dir.path());
        group.throughput(Throughput::Elements(WRITES_PER_TRANSACTION as u64));
        group.bench_with_input(
            BenchmarkId::new("threads", threads),
            &threads,
            |bench, &n| bench.iter_custom(|iterations| run(&store, n, 1, iterations.max(n as u64))),
        );
    }
    group.finish();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report() {
    const TRANSACTIONS: u64 = 200_000;
    println!("threads depth  transactions/s  key writes/s  fsyncs  (median of 3, durable)");
    for threads in THREAD_COUNTS {
        for depth in [1, PIPELINE_DEPTH] {
            let mut rates = Vec::new();
            let mut fsyncs = 0;
            for _ in 0..3 {
                let dir = tempfile::tempdir().expect("dir");
                let store = open(dir.path());
                let count = if depth == 1 && threads == 1 {
                    TRANSACTIONS / 20
                } else {
                    TRANSACTIONS
                };
                let elapsed = run(&store, threads, depth, count);
                rates.push(store.stats().transactions_committed as f64 / elapsed.as_secs_f64());
                fsyncs = store.stats().durable_writes;
            }
            let rate = median(rates);
            let writes = rate * WRITES_PER_TRANSACTION as f64;
            println!("{threads:7} {depth:5} {rate:15.0} {writes:13.0} {fsyncs:7}");
        }
    }
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    let started = Instant::now();
    run(&store, 8, PIPELINE_DEPTH, 1_000_000);
    let written = started.elapsed();
    drop(store);
    let started = Instant::now();
    let store = open(dir.path());
    println!(
        "5 M key writes in {:.1} s; reopen took {:.2} s ({} transactions committed before)",
        written.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        1_000_000
    );
    drop(store);
}

/// See the module docs (`STORE_BENCH_AUDIT`).
fn audit_report() {
    const RECORDS: u64 = 1_000_000;
    const PAGE: u64 = 1_000;
    const PAGES: usize = 30;
    let dir = tempfile::tempdir().expect("dir");
    let store = open(dir.path());
    let space = Keyspace::Real;
    let write = |first: u64, count: u64| {
        let mut txn = store.begin().expect("begin");
        for n in first..first + count {
            let id = TransferId::new(&format!("t-{n}")).expect("valid id");
            txn.set(&space.transfer(&id), &[7u8; 60]).expect("set");
        }
        finish(txn.commit());
    };
    let started = Instant::now();
    for first in (0..RECORDS).step_by(PAGE as usize) {
        write(first, PAGE);
    }
    println!(
        "{RECORDS} transfer records committed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let prefix = space.transfers_prefix();
    let end = [prefix.as_slice(), &[0xff]].concat();
    let mut cursor = prefix.clone();
    let mut pages = Vec::with_capacity(PAGES);
    let mut commits = Vec::with_capacity(PAGES);
    for page in 0..PAGES as u64 {
        let started = Instant::now();
        write(RECORDS + page * PAGE, PAGE);
        commits.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let rows = block_on(store.get_range(RangeRequest::new(
            cursor.clone(),
            end.clone(),
            PAGE as usize,
        )))
        .expect("range");
        pages.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(rows.len(), PAGE as usize, "a full page");
        cursor = [rows.last().expect("rows").0.as_slice(), &[0]].concat();
    }
    let later = pages[1..].to_vec();
    println!(
        "page reads of {PAGE} rows, each after a commit of {PAGE} new records: first {:.1} ms, \
         then median {:.2} ms, max {:.2} ms ({} pages)",
        pages[0],
        median(later.clone()),
        later.iter().copied().fold(0.0, f64::max),
        later.len()
    );
    println!(
        "the commits between them: median {:.2} ms, max {:.2} ms",
        median(commits.clone()),
        commits.iter().copied().fold(0.0, f64::max)
    );
}

criterion_group!(benches, commit_throughput);

fn main() {
    if std::env::var_os("STORE_BENCH_AUDIT").is_some() {
        audit_report();
        return;
    }
    if std::env::var_os("STORE_BENCH_REPORT").is_some() {
        report();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
