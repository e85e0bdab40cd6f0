//! Concurrency: many clients debiting the same accounts at once, concurrent retries of one
//! id, and the overload paths (INV-3, INV-5, INV-6).
//!
//! Some tests wrap the embedded store in a [`GatedStore`] whose reads or commits can be held
//! back, to make an account actor's "commit in flight" or "still loading" state last as long
//! as the test needs, deterministically.

mod common;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use actors::config::{CommitWindow, ACCOUNT_MAILBOX_CAPACITY};
use actors::{Ledger, LedgerConfig};
use cells::ids::{HoldId, TransferId};
use cells::ledger::audit::{audit, AuditReport};
use cells::ledger::{
    Command, CommandResult, ErrorCode, Outcome, TransferStatus, BATCH_COMMANDS_MAX,
};
use cells::records::{AccountKind, HoldState};
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::{
    BoxFuture, CommitError, KeyValue, RangeRequest, Store, StoreError, StoreStats, Transaction,
};
use common::{account, capture, create, create_system, hold, lookup, release, run, settle};
use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Funding of every payer, in minor units.
const FUNDING: i128 = 10_000;
/// The payers: two without overdraft, one with an overdraft limit.
const PAYERS: [&str; 3] = ["p0", "p1", "p2"];
const P2_OVERDRAFT: u64 = 2_000;
const CLIENTS: usize = 16;
const STEPS_PER_CLIENT: usize = 60;

// ------------------------------------------------------------------------------------------
// Setup and checks shared by the tests.

fn open_store(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    EmbeddedStore::open(dir, EmbeddedOptions::default()).unwrap()
}

fn limit_of(payer: &str) -> i128 {
    if payer == "p2" {
        -i128::from(P2_OVERDRAFT)
    } else {
        0
    }
}

/// world (system), the payers funded with [`FUNDING`] each, and two payees.
async fn fund_payers(ledger: &Ledger) {
    let mut p2 = account("p2", AccountKind::Customer);
    p2.overdraft_limit = P2_OVERDRAFT;
    let created = run(
        ledger,
        vec![
            create_system("world"),
            create("p0"),
            create("p1"),
            Command::CreateAccount(p2),
            create("shop"),
            create("shop2"),
        ],
    )
    .await;
    assert!(
        created.iter().all(|r| *r == Ok(Outcome::AccountCreated)),
        "{created:?}"
    );
    let funding: Vec<Command> = PAYERS
        .iter()
        .map(|p| common::transfer(&format!("fund-{p}"), "world", p, FUNDING as u64))
        .collect();
    let funded = run(ledger, funding).await;
    assert!(
        funded.iter().all(|r| *r == Ok(Outcome::TransferAccepted)),
        "{funded:?}"
    );
    settle(ledger).await;
}

/// (balance, frozen, available) of each account.
async fn views(ledger: &Ledger, ids: &[&str]) -> Vec<(i128, i128, i128)> {
    let results = ledger
        .execute(ids.iter().map(|id| lookup(id)).collect())
        .await
        .unwrap();
    results
        .into_iter()
        .zip(ids)
        .map(|(result, id)| match result {
            Ok(Outcome::Account(view)) => (view.balance, view.frozen, view.available),
            other => panic!("lookup of {id}: {other:?}"),
        })
        .collect()
}

fn assert_clean(store: &dyn Store, ledger: &Ledger) -> AuditReport {
    let report = audit(store, ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    assert_eq!(report.outbox_pending, 0);
    report
}

/// Runs `body` on a fresh actix System, then stops it (and the ledger's arbiters).
fn in_system<Fut: std::future::Future<Output = ()>>(body: impl FnOnce() -> Fut) {
    let runner = actix_rt::System::new();
    runner.block_on(body());
    actix_rt::System::current().stop();
    runner.run().unwrap();
}

// ------------------------------------------------------------------------------------------
// Clients debiting the payers at random.

#[derive(Debug, Default)]
struct ClientLog {
    /// Accepted transfers to "shop": (id, payer, amount).
    accepted: Vec<(String, usize, i128)>,
    /// Accepted transfers between payers: (id, payer, payee, amount). They put credit legs
    /// into the payers' own commits, beside the clients' debits.
    moved: Vec<(String, usize, usize, i128)>,
    /// Transfers refused for funds: (id, payer).
    rejected: Vec<(String, usize)>,
    /// Holds created and still active: (id, payer, amount).
    open_holds: Vec<(String, usize, i128)>,
    /// Captured amounts: (payer, amount).
    captured: Vec<(usize, i128)>,
    holds_created: usize,
    holds_refused: usize,
    released: usize,
}

fn expect_one(result: Vec<CommandResult>) -> CommandResult {
    assert_eq!(result.len(), 1);
    result.into_iter().next().unwrap()
}

/// One client: transfers to "shop" (a quarter of them to another payer instead), holds it
/// later releases or captures to "shop2", and now and then several transfers from
/// different payers in one batch. Every answer must be a success or `insufficient_funds`.
async fn client(ledger: Ledger, number: usize) -> ClientLog {
    let mut rng = StdRng::seed_from_u64(number as u64);
    let mut log = ClientLog::default();
    for step in 0..STEPS_PER_CLIENT {
        let roll = rng.random_range(0..100);
        if roll < 20 && !log.open_holds.is_empty() {
            let (id, payer, units) = log.open_holds.swap_remove(0);
            if rng.random_bool(0.5) {
                assert_eq!(
                    expect_one(run(&ledger, vec![release(&id)]).await),
                    Ok(Outcome::HoldReleased)
                );
                log.released += 1;
            } else {
                let part = rng.random_range(1..=units as u64);
                let amount = rng.random_bool(0.5).then_some(part);
                let result = expect_one(run(&ledger, vec![capture(&id, "shop2", amount)]).await);
                assert_eq!(result, Ok(Outcome::HoldCaptured));
                log.captured.push((payer, amount.map_or(units, i128::from)));
            }
            continue;
        }
        let batch_len = if roll >= 90 {
            rng.random_range(2..=4)
        } else {
            1
        };
        let is_hold = (20..45).contains(&roll);
        let mut commands = Vec::new();
        let mut meta = Vec::new();
        for part in 0..batch_len {
            let payer = rng.random_range(0..PAYERS.len());
            let units = rng.random_range(50..=1_500u64);
            let id = format!("c{number}-s{step}-{part}");
            let to_payer = (!is_hold && rng.random_bool(0.25))
                .then(|| (payer + rng.random_range(1..PAYERS.len())) % PAYERS.len());
            commands.push(if is_hold {
                hold(&id, PAYERS[payer], units, None)
            } else {
                let to = to_payer.map_or("shop", |to| PAYERS[to]);
                common::transfer(&id, PAYERS[payer], to, units)
            });
            meta.push((id, payer, to_payer, i128::from(units)));
        }
        let results = run(&ledger, commands).await;
        for (result, (id, payer, to_payer, units)) in results.into_iter().zip(meta) {
            match (is_hold, result) {
                (false, Ok(Outcome::TransferAccepted)) => match to_payer {
                    Some(to) => log.moved.push((id, payer, to, units)),
                    None => log.accepted.push((id, payer, units)),
                },
                (false, Err(ErrorCode::InsufficientFunds)) => log.rejected.push((id, payer)),
                (true, Ok(Outcome::HoldCreated)) => {
                    log.holds_created += 1;
                    log.open_holds.push((id, payer, units));
                }
                (true, Err(ErrorCode::InsufficientFunds)) => log.holds_refused += 1,
                (_, other) => panic!("client {number}, {id}: unexpected {other:?}"),
            }
        }
    }
    log
}

/// Checks one sample of the payers' views against INV-5.
fn check_sample(sample: &[(i128, i128, i128)]) {
    for ((balance, frozen, available), payer) in sample.iter().zip(PAYERS) {
        assert_eq!(*available, balance - frozen, "{payer}");
        assert!(
            *available >= limit_of(payer),
            "{payer}: available {available} below its limit"
        );
        assert!(*frozen >= 0, "{payer}: frozen {frozen}");
    }
}

/// Checks the end state against the clients' logs: nothing lost, nothing twice.
async fn check_outcome(ledger: &Ledger, store: &dyn Store, logs: &[ClientLog]) {
    settle(ledger).await;
    let mut left = [0i128; 3];
    let mut frozen = [0i128; 3];
    let mut rejected = [0usize; 3];
    let (mut shop, mut shop2, mut captures) = (0i128, 0i128, 0u64);
    let (mut transfers, mut holds) = (0usize, 0usize);
    for log in logs {
        for (_, payer, units) in &log.accepted {
            left[*payer] += units;
            shop += units;
        }
        for (_, payer, to, units) in &log.moved {
            left[*payer] += units;
            left[*to] -= units;
        }
        for (payer, units) in &log.captured {
            left[*payer] += units;
            shop2 += units;
            captures += 1;
        }
        for (_, payer, units) in &log.open_holds {
            frozen[*payer] += units;
        }
        for (_, payer) in &log.rejected {
            rejected[*payer] += 1;
        }
        transfers += log.accepted.len() + log.moved.len() + log.rejected.len();
        holds += log.holds_created;
        assert_eq!(
            log.holds_created,
            log.open_holds.len() + log.captured.len() + log.released
        );
    }
    let views = views(ledger, &["p0", "p1", "p2", "shop", "shop2", "world"]).await;
    for (index, payer) in PAYERS.iter().enumerate() {
        let (balance, held, available) = views[index];
        assert_eq!(
            balance,
            FUNDING - left[index],
            "{payer}: money left != accepted debits"
        );
        assert_eq!(held, frozen[index], "{payer}: frozen != open holds");
        assert!(
            available >= limit_of(payer),
            "{payer}: available {available}"
        );
        assert!(
            rejected[index] > 0,
            "{payer} was never overdrawn: the test is too gentle"
        );
    }
    assert_eq!(views[3].0, shop);
    assert_eq!(views[4].0, shop2);
    assert_eq!(views[5].0, -FUNDING * 3);
    let accepted: usize = logs.iter().map(|l| l.accepted.len() + l.moved.len()).sum();
    assert!(
        logs.iter().any(|l| !l.moved.is_empty()),
        "no transfer between payers was accepted: their commits held no credit legs"
    );
    assert_eq!(
        ledger.stats().debits(),
        (PAYERS.len() + accepted) as u64 + captures
    );
    let report = assert_clean(store, ledger);
    assert_eq!(
        report.transfers as usize,
        PAYERS.len() + transfers,
        "every transfer id once"
    );
    assert_eq!(report.holds as usize, holds);
    check_transfer_lookups(ledger, logs).await;
}

/// Every accepted transfer is complete; every refused one is recorded as refused.
async fn check_transfer_lookups(ledger: &Ledger, logs: &[ClientLog]) {
    let mut expected = HashMap::new();
    for log in logs {
        for (id, _, _) in &log.accepted {
            expected.insert(id.clone(), TransferStatus::Completed);
        }
        for (id, _, _, _) in &log.moved {
            expected.insert(id.clone(), TransferStatus::Completed);
        }
        for (id, _) in &log.rejected {
            expected.insert(
                id.clone(),
                TransferStatus::Rejected(ErrorCode::InsufficientFunds),
            );
        }
    }
    let ids: Vec<String> = expected.keys().cloned().collect();
    for chunk in ids.chunks(1_000) {
        let lookups = chunk
            .iter()
            .map(|id| Command::LookupTransfer(TransferId::new(id).unwrap()))
            .collect();
        let results = run(ledger, lookups).await;
        for (id, result) in chunk.iter().zip(results) {
            match result {
                Ok(Outcome::Transfer(view)) => {
                    assert_eq!(view.status, expected[id], "transfer {id}")
                }
                other => panic!("lookup of transfer {id}: {other:?}"),
            }
        }
    }
}

/// 16 clients as tasks on the System's thread (their commands interleave at every await),
/// one arbiter, and a monitor sampling the payers while they run.
#[test]
fn concurrent_debits_never_overdraw_and_lose_nothing() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let ledger = Ledger::start(store.clone(), LedgerConfig::default());
        fund_payers(&ledger).await;
        let done = AtomicBool::new(false);
        let clients = async {
            let logs = join_all((0..CLIENTS).map(|n| client(ledger.clone(), n))).await;
            done.store(true, Ordering::Release);
            logs
        };
        let monitor = async {
            let mut samples = 0;
            while !done.load(Ordering::Acquire) {
                check_sample(&views(&ledger, &PAYERS).await);
                samples += 1;
                actix_rt::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        };
        let (logs, samples) = futures::join!(clients, monitor);
        assert!(samples > 0);
        check_outcome(&ledger, store.as_ref(), &logs).await;
    });
}

/// 16 clients on their own OS threads, three arbiters, a monitor thread.
#[test]
fn concurrent_debits_from_threads_over_three_arbiters() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let runner = actix_rt::System::new();
    let config = LedgerConfig {
        arbiters: 3,
        ..LedgerConfig::default()
    };
    let ledger = runner.block_on(async {
        let ledger = Ledger::start(store.clone(), config);
        fund_payers(&ledger).await;
        ledger
    });
    let (sender, receiver) = mpsc::channel();
    for number in 0..CLIENTS {
        let (ledger, sender) = (ledger.clone(), sender.clone());
        std::thread::spawn(move || {
            let log = futures::executor::block_on(client(ledger, number));
            let _ = sender.send(log);
        });
    }
    drop(sender);
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (ledger, done) = (ledger.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut samples = 0;
            while !done.load(Ordering::Acquire) {
                check_sample(&futures::executor::block_on(views(&ledger, &PAYERS)));
                samples += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            samples
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let logs: Vec<ClientLog> = (0..CLIENTS)
        .map(|_| {
            let left = deadline.saturating_duration_since(Instant::now());
            receiver
                .recv_timeout(left)
                .expect("a client did not finish in time (or panicked)")
        })
        .collect();
    done.store(true, Ordering::Release);
    assert!(monitor.join().expect("monitor saw an overdraft") > 0);
    runner.block_on(check_outcome(&ledger, store.as_ref(), &logs));
    actix_rt::System::current().stop();
    runner.run().unwrap();
}

// ------------------------------------------------------------------------------------------
// Concurrent retries of one id.

/// Many callers send the same transfer at once (in one actor commit and across commits):
/// exactly one debit, and every caller hears the same outcome; a refusal is shared too.
#[test]
fn concurrent_retries_of_one_transfer_debit_once() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let config = LedgerConfig {
            arbiters: 2,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(store.clone(), config);
        fund_payers(&ledger).await;
        const ROUNDS: usize = 20;
        for round in 0..ROUNDS {
            let id = format!("same-{round}");
            let calls =
                (0..32).map(|_| run(&ledger, vec![common::transfer(&id, "p0", "shop", 10)]));
            for result in join_all(calls).await {
                assert_eq!(result, vec![Ok(Outcome::TransferAccepted)], "round {round}");
            }
        }
        // A refusal is recorded once and shared by every concurrent caller.
        let calls =
            (0..32).map(|_| run(&ledger, vec![common::transfer("big", "p1", "shop", 50_000)]));
        for result in join_all(calls).await {
            assert_eq!(result, vec![Err(ErrorCode::InsufficientFunds)]);
        }
        settle(&ledger).await;
        let views = views(&ledger, &["p0", "p1", "shop"]).await;
        assert_eq!(
            views[0].0,
            FUNDING - 10 * ROUNDS as i128,
            "one debit per id"
        );
        assert_eq!(views[1].0, FUNDING);
        assert_eq!(views[2].0, 10 * ROUNDS as i128);
        assert_eq!(ledger.stats().debits(), (PAYERS.len() + ROUNDS) as u64);
        let report = assert_clean(store.as_ref(), &ledger);
        assert_eq!(report.transfers as usize, PAYERS.len() + ROUNDS + 1);
    });
}

/// Concurrent requests under one id with different fields (other amount, other payer, so
/// other actors): one of them is recorded, callers with its fields get its outcome, the
/// others `transfer_exists_with_different_fields`; exactly one debit in total.
#[test]
fn concurrent_requests_with_different_fields_record_one() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let config = LedgerConfig {
            arbiters: 2,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(store.clone(), config);
        fund_payers(&ledger).await;
        const ROUNDS: usize = 10;
        for round in 0..ROUNDS {
            let id = format!("mixed-{round}");
            let variants = [("p0", 10), ("p0", 11), ("p1", 10), ("p2", 12)];
            let requests: Vec<Command> = (0..24)
                .map(|i| {
                    let (payer, units) = variants[(i + round) % variants.len()];
                    common::transfer(&id, payer, "shop", units)
                })
                .collect();
            let calls = requests
                .iter()
                .map(|command| run(&ledger, vec![command.clone()]));
            let results = join_all(calls).await;
            let lookup = Command::LookupTransfer(TransferId::new(&id).unwrap());
            let Ok(Outcome::Transfer(record)) = expect_one(run(&ledger, vec![lookup]).await) else {
                panic!("transfer {id} not recorded");
            };
            for (command, result) in requests.iter().zip(results) {
                let Command::Transfer(request) = command else {
                    unreachable!()
                };
                let same = request.from == record.from && request.amount == record.amount;
                let expected = if same {
                    Ok(Outcome::TransferAccepted)
                } else {
                    Err(ErrorCode::TransferExistsWithDifferentFields)
                };
                assert_eq!(
                    expect_one(result),
                    expected,
                    "{id}: {request:?} vs {record:?}"
                );
            }
        }
        settle(&ledger).await;
        let views = views(&ledger, &["p0", "p1", "p2", "shop"]).await;
        let left: i128 = (0..3).map(|i| FUNDING - views[i].0).sum();
        assert_eq!(left, views[3].0, "payers lost exactly what the payee got");
        assert_eq!(
            ledger.stats().debits(),
            (PAYERS.len() + ROUNDS) as u64,
            "one debit per id"
        );
        let report = assert_clean(store.as_ref(), &ledger);
        assert_eq!(report.transfers as usize, PAYERS.len() + ROUNDS);
    });
}

/// Concurrent requests for one hold id: frozen once; other amounts are refused.
#[test]
fn concurrent_retries_of_one_hold_freeze_once() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let config = LedgerConfig {
            arbiters: 2,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(store.clone(), config);
        fund_payers(&ledger).await;
        let calls = (0..32).map(|i| {
            let units = if i % 4 == 3 { 301 } else { 300 };
            run(&ledger, vec![hold("hh", "p0", units, None)])
        });
        let results = join_all(calls).await;
        let lookup = Command::LookupHold(HoldId::new("hh").unwrap());
        let Ok(Outcome::Hold(record)) = expect_one(run(&ledger, vec![lookup]).await) else {
            panic!("hold not recorded");
        };
        assert_eq!(record.state, HoldState::Active);
        for (i, result) in results.into_iter().enumerate() {
            let units = if i % 4 == 3 { 301 } else { 300 };
            let expected = if units == record.amount.minor_units() {
                Ok(Outcome::HoldCreated)
            } else {
                Err(ErrorCode::HoldExistsWithDifferentFields)
            };
            assert_eq!(expect_one(result), expected, "caller {i}");
        }
        let held = i128::from(record.amount.minor_units());
        assert_eq!(
            views(&ledger, &["p0"]).await[0],
            (FUNDING, held, FUNDING - held)
        );
        let report = assert_clean(store.as_ref(), &ledger);
        assert_eq!(report.holds, 1);
    });
}

// ------------------------------------------------------------------------------------------
// Overload: a typed `overloaded`, never a hang or a silent drop.

/// Activating an account beyond `active_accounts_max` answers `overloaded` at once; nothing
/// is written; the same request succeeds once idle actors passivated. A credit leg whose
/// payee cannot be activated waits in the outbox and lands later.
#[test]
fn activation_beyond_the_limit_is_overloaded_then_retryable() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let config = LedgerConfig {
            active_accounts_max: 2,
            idle_timeout: Duration::from_millis(500),
            tick: Duration::from_millis(20),
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(store.clone(), config);
        run(
            &ledger,
            vec![create_system("world"), create("alice"), create("bob")],
        )
        .await;
        run(
            &ledger,
            vec![common::transfer("fund", "world", "alice", 100)],
        )
        .await;
        settle(&ledger).await;
        assert_eq!(ledger.active_accounts(), 2, "world and alice are active");
        // bob cannot be activated while world and alice are alive.
        let refused = run(&ledger, vec![hold("hb", "bob", 5, None), lookup("bob")]).await;
        assert_eq!(
            refused,
            vec![Err(ErrorCode::Overloaded), Err(ErrorCode::Overloaded)]
        );
        let trace = run(
            &ledger,
            vec![Command::LookupHold(HoldId::new("hb").unwrap())],
        )
        .await;
        assert_eq!(
            trace,
            vec![Err(ErrorCode::UnknownHold)],
            "a refused hold left a trace"
        );
        // alice pays bob: the debit is durable, the credit waits for bob's activation.
        let paid = run(&ledger, vec![common::transfer("pay", "alice", "bob", 10)]).await;
        assert_eq!(paid, vec![Ok(Outcome::TransferAccepted)]);
        // Once idle actors passivate, the credit lands and the retry succeeds.
        settle(&ledger).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let retried = loop {
            let result = run(&ledger, vec![hold("hb", "bob", 5, None)]).await;
            if result != vec![Err(ErrorCode::Overloaded)] || Instant::now() > deadline {
                break result;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(retried, vec![Ok(Outcome::HoldCreated)]);
        assert!(ledger.active_accounts() <= 2);
        assert_eq!(views(&ledger, &["bob"]).await[0], (10, 5, 5));
        assert_clean(store.as_ref(), &ledger);
    });
}

/// A gate that holds futures back until opened.
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    waiting: AtomicUsize,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: tokio::sync::watch::Sender::new(true),
            waiting: AtomicUsize::new(0),
        })
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Resolves once the gate is open.
    fn pass(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let gate = Arc::clone(self);
        let mut open = self.open.subscribe();
        async move {
            if !*open.borrow_and_update() {
                gate.waiting.fetch_add(1, Ordering::AcqRel);
                let _ = open.wait_for(|open| *open).await;
                gate.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Waits (bounded) until `count` futures are held at the gate.
    async fn wait_for_waiting(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.waiting.load(Ordering::Acquire) < count {
            assert!(Instant::now() < deadline, "nothing reached the gate");
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The embedded store with gated reads and commits.
struct GatedStore {
    inner: Arc<EmbeddedStore>,
    reads: Arc<Gate>,
    commits: Arc<Gate>,
}

struct GatedTransaction {
    inner: Box<dyn Transaction>,
    commits: Arc<Gate>,
}

impl Store for GatedStore {
    fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        let inner = self.inner.begin()?;
        Ok(Box::new(GatedTransaction {
            inner,
            commits: Arc::clone(&self.commits),
        }))
    }

    fn get(&self, key: &[u8]) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        let (pass, inner, key) = (self.reads.pass(), Arc::clone(&self.inner), key.to_vec());
        Box::pin(async move {
            pass.await;
            inner.get(&key).await
        })
    }

    fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        let (pass, inner) = (self.reads.pass(), Arc::clone(&self.inner));
        Box::pin(async move {
            pass.await;
            inner.get_many(keys).await
        })
    }

    fn get_range(
        &self,
        request: RangeRequest,
    ) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>> {
        let (pass, inner) = (self.reads.pass(), Arc::clone(&self.inner));
        Box::pin(async move {
            pass.await;
            inner.get_range(request).await
        })
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

impl Transaction for GatedTransaction {
    fn get(&mut self, key: &[u8]) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        self.inner.get(key)
    }
    fn get_range(
        &mut self,
        request: RangeRequest,
    ) -> BoxFuture<'_, Result<Vec<KeyValue>, StoreError>> {
        self.inner.get_range(request)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.set(key, value)
    }
    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.inner.clear(key)
    }
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.inner.clear_range(begin, end)
    }
    fn require(&mut self, key: &[u8], expected: Option<&[u8]>) -> Result<(), StoreError> {
        self.inner.require(key, expected)
    }
    fn size_bytes(&self) -> usize {
        self.inner.size_bytes()
    }
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<u64, CommitError>> {
        let pass = self.commits.pass();
        let inner = self.inner;
        Box::pin(async move {
            pass.await;
            inner.commit().await
        })
    }
}

fn gated_store(dir: &std::path::Path) -> Arc<GatedStore> {
    Arc::new(GatedStore {
        inner: open_store(dir),
        reads: Gate::new(),
        commits: Gate::new(),
    })
}

/// Closes the commit gate and starts a hold of 1 on `world`: once this returns, its commit
/// waits at the gate, so `world`'s actor keeps it in flight until the gate opens. The
/// handle gives the hold's answer.
async fn hold_a_commit_in_flight(
    ledger: &Ledger,
    store: &GatedStore,
) -> actix_rt::task::JoinHandle<Vec<CommandResult>> {
    store.commits.set_open(false);
    let first = spawn_run(ledger, vec![hold("first", "world", 1, None)]);
    store.commits.wait_for_waiting(1).await;
    first
}

/// Runs `commands` on `ledger` in a task of its own; the handle gives the answers.
fn spawn_run(
    ledger: &Ledger,
    commands: Vec<Command>,
) -> actix_rt::task::JoinHandle<Vec<CommandResult>> {
    let ledger = ledger.clone();
    actix_rt::spawn(async move { run(&ledger, commands).await })
}

/// A capture sent twice whose hold record both batches read while it was active (the
/// second batch's read came before the first one's commit): the actor finds the hold gone
/// when it reaches the second, and the answer is still the original outcome, from the
/// record read again after the actor's answer. Nothing is captured twice.
#[test]
fn a_capture_retried_during_its_first_commit_gets_the_original_outcome() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = gated_store(dir.path());
        // The hold is created through another ledger over the same store, so that this
        // ledger reads its record to route (it does not remember creating it).
        let maker = Ledger::start(store.clone(), LedgerConfig::default());
        run(&maker, vec![create_system("world"), create("shop")]).await;
        assert_eq!(
            run(&maker, vec![hold("hc", "world", 5, None)]).await,
            vec![Ok(Outcome::HoldCreated)]
        );
        let ledger = Ledger::start(store.clone(), LedgerConfig::default());
        store.commits.set_open(false);
        let first = spawn_run(&ledger, vec![capture("hc", "shop", None)]);
        store.commits.wait_for_waiting(1).await;
        // The first capture's commit waits at the gate: the record still says active.
        let second = spawn_run(&ledger, vec![capture("hc", "shop", None)]);
        // Let the second batch read the record and reach the actor before the gate opens.
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        store.commits.set_open(true);
        assert_eq!(first.await.unwrap(), vec![Ok(Outcome::HoldCaptured)]);
        assert_eq!(second.await.unwrap(), vec![Ok(Outcome::HoldCaptured)]);
        settle(&ledger).await;
        assert_eq!(
            views(&ledger, &["world", "shop"]).await,
            vec![(-5, 0, -5), (5, 0, 5)]
        );
        let report = assert_clean(store.as_ref(), &ledger);
        assert_eq!(report.holds, 1);
    });
}

/// While an account's commit is in flight, the items waiting for it are bounded
/// (4 × `BATCH_COMMANDS_MAX`): the next command gets `overloaded` at once, leaves no trace,
/// and succeeds when retried later.
#[test]
fn items_beyond_the_pending_bound_are_overloaded() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = gated_store(dir.path());
        let ledger = Ledger::start(store.clone(), LedgerConfig::default());
        run(&ledger, vec![create_system("world"), create("shop")]).await;
        let first = hold_a_commit_in_flight(&ledger, &store).await;
        // Fill the pending bound exactly: four full batches of lookups.
        let fill =
            join_all((0..4).map(|_| run(&ledger, vec![lookup("world"); BATCH_COMMANDS_MAX])));
        let mut fill = pin!(fill);
        // One poll dispatches all four (their specs are cached, nothing else awaits).
        assert!(futures::poll!(fill.as_mut()).is_pending());
        let refused = run(&ledger, vec![hold("over", "world", 1, None)]).await;
        assert_eq!(refused, vec![Err(ErrorCode::Overloaded)]);
        store.commits.set_open(true);
        for batch in fill.await {
            assert_eq!(batch.len(), BATCH_COMMANDS_MAX);
            assert!(batch.iter().all(|r| matches!(r, Ok(Outcome::Account(_)))));
        }
        assert_eq!(first.await.unwrap(), vec![Ok(Outcome::HoldCreated)]);
        let trace = run(
            &ledger,
            vec![Command::LookupHold(HoldId::new("over").unwrap())],
        )
        .await;
        assert_eq!(
            trace,
            vec![Err(ErrorCode::UnknownHold)],
            "a refused hold left a trace"
        );
        let retried = run(&ledger, vec![hold("over", "world", 1, None)]).await;
        assert_eq!(retried, vec![Ok(Outcome::HoldCreated)]);
        assert_eq!(views(&ledger, &["world"]).await[0], (0, 2, -2));
        let report = assert_clean(store.as_ref(), &ledger);
        assert_eq!(report.holds, 2);
    });
}

/// Deliveries that reach an account actor while its commit is in flight wait in its inbox
/// and go into its next commit together, as soon as the one in flight completes; once the
/// actor has nothing in flight, the next delivery wakes it.
#[test]
fn deliveries_during_a_commit_share_the_next_one_and_an_idle_actor_wakes() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = gated_store(dir.path());
        let ledger = Ledger::start(store.clone(), LedgerConfig::default());
        run(&ledger, vec![create_system("world")]).await;
        let commits = || ledger.stats().commits.load(Ordering::Relaxed);
        let first = hold_a_commit_in_flight(&ledger, &store).await;
        let before = commits();
        // Five batches of holds (no credit legs: world's actor is the only one committing).
        let batches = join_all((0..5).map(|batch| {
            let holds = (0..10)
                .map(|i| hold(&format!("h{batch}-{i}"), "world", 1, None))
                .collect();
            run(&ledger, holds)
        }));
        let mut batches = pin!(batches);
        assert!(futures::poll!(batches.as_mut()).is_pending());
        store.commits.set_open(true);
        let batches = actix_rt::time::timeout(Duration::from_secs(10), batches)
            .await
            .expect("deliveries waiting in the inbox were not committed");
        for results in batches {
            assert!(results.iter().all(|r| *r == Ok(Outcome::HoldCreated)));
        }
        assert_eq!(first.await.unwrap(), vec![Ok(Outcome::HoldCreated)]);
        assert_eq!(
            commits() - before,
            2,
            "the held commit, then one commit for all five batches"
        );
        // Nothing in flight now: a new delivery must wake the actor.
        let woken = actix_rt::time::timeout(
            Duration::from_secs(10),
            run(&ledger, vec![hold("later", "world", 1, None)]),
        )
        .await
        .expect("an idle actor was not woken by a delivery");
        assert_eq!(woken, vec![Ok(Outcome::HoldCreated)]);
        assert_eq!(views(&ledger, &["world"]).await[0], (0, 52, -52));
        assert_clean(store.as_ref(), &ledger);
    });
}

/// Regression (bug 2, fixed): an account actor's mailbox was not bounded, because actix
/// bounds a mailbox per sender and every caller got its own `Addr` clone. The registry now
/// reserves a place under its lock before every delivery (`registry::Reserved`; deliveries
/// go to the actor's inbox since round 7 of the engine benchmark); here
/// 4 × `ACCOUNT_MAILBOX_CAPACITY` deliveries go to an actor that cannot take them (its load
/// is held) and the excess must answer `overloaded`.
#[test]
fn regression_full_account_mailbox_answers_overloaded() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = gated_store(dir.path());
        let ledger = Ledger::start(store.clone(), LedgerConfig::default());
        run(&ledger, vec![create("m")]).await;
        store.reads.set_open(false);
        let sent = 4 * ACCOUNT_MAILBOX_CAPACITY;
        let calls = join_all((0..sent).map(|_| run(&ledger, vec![lookup("m")])));
        let mut calls = pin!(calls);
        // One poll dispatches every call; the actor is still loading (reads are gated).
        assert!(futures::poll!(calls.as_mut()).is_pending());
        store.reads.set_open(true);
        let results = calls.await;
        let overloaded = results
            .iter()
            .filter(|r| **r == vec![Err(ErrorCode::Overloaded)])
            .count();
        let answered = results
            .iter()
            .filter(|r| matches!(r[0], Ok(Outcome::Account(_))))
            .count();
        assert_eq!(
            overloaded + answered,
            sent,
            "every call gets a definite answer"
        );
        assert!(
            answered <= 2 * ACCOUNT_MAILBOX_CAPACITY,
            "{answered} of {sent} messages were queued in a mailbox of capacity \
             {ACCOUNT_MAILBOX_CAPACITY}; {overloaded} were refused as overloaded"
        );
    });
}

/// Regression (bug 3, fixed): actors passivating after a few idle milliseconds while
/// clients keep paying sometimes dropped a message they had been handed (the registry gave
/// out the `Addr` of a stopping actor), and the caller got `outcome_unknown` for a transfer
/// that never ran. An idle actor now retires only when no mailbox place is reserved for it,
/// under the registry lock; every call must get a definite answer.
#[test]
fn regression_passivation_under_load_gives_definite_answers() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let config = LedgerConfig {
            idle_timeout: Duration::from_millis(1),
            tick: Duration::from_millis(1),
            arbiters: 2,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(store.clone(), config);
        fund_payers(&ledger).await;
        const CLIENTS: u64 = 12;
        const STEPS: usize = 80;
        // The race is timing-dependent: try a few rounds, stop at the first sighting.
        const ROUNDS: u64 = 8;
        let mut indefinite = Vec::new();
        let mut rounds = 0;
        while rounds < ROUNDS && indefinite.is_empty() {
            indefinite = passivation_round(&ledger, rounds, CLIENTS, STEPS).await;
            rounds += 1;
        }
        settle(&ledger).await;
        let report = assert_clean(store.as_ref(), &ledger);
        assert!(
            indefinite.is_empty(),
            "indefinite answers:\n{}",
            indefinite.join("\n")
        );
        let sent = rounds * CLIENTS * STEPS as u64;
        assert_eq!(report.transfers, PAYERS.len() as u64 + sent);
    });
}

/// One round of clients paying with pauses around the idle timeout; returns the answers
/// that were neither a success nor `insufficient_funds`, with their lookups.
async fn passivation_round(ledger: &Ledger, round: u64, clients: u64, steps: usize) -> Vec<String> {
    let clients = (0..clients).map(|number| {
        let ledger = ledger.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(round * 1_000 + number);
            let mut answers = Vec::new();
            for step in 0..steps {
                let from = PAYERS[rng.random_range(0..3)];
                let to = ["p0", "p1", "p2", "shop"][rng.random_range(0..4)];
                let to = if to == from { "shop" } else { to };
                let units = rng.random_range(1..=400);
                let id = format!("pass-{round}-{number}-{step}");
                let command = common::transfer(&id, from, to, units);
                answers.push((id, expect_one(run(&ledger, vec![command]).await)));
                let pause = rng.random_range(0..4);
                actix_rt::time::sleep(Duration::from_millis(pause)).await;
            }
            answers
        }
    });
    let answers: Vec<(String, CommandResult)> =
        join_all(clients).await.into_iter().flatten().collect();
    let mut indefinite = Vec::new();
    for (id, answer) in &answers {
        if !matches!(
            answer,
            Ok(Outcome::TransferAccepted) | Err(ErrorCode::InsufficientFunds)
        ) {
            let lookup = Command::LookupTransfer(TransferId::new(id).unwrap());
            let status = expect_one(run(ledger, vec![lookup]).await);
            indefinite.push(format!("{id}: answered {answer:?}; lookup {status:?}"));
        }
    }
    indefinite
}

/// Regression: a hot payee that falls behind its payers. Credit legs beyond what its actor
/// may hold (two commits' worth) wait at the relay and go out as its commits take them;
/// before, the actor refused them and each refusal asked for a full outbox rescan, which
/// re-delivered every leg in flight (hot-credit throughput fell tenfold). Every credit
/// lands once, and no rescan is needed.
#[test]
fn a_hot_payee_behind_its_payers_gets_every_credit_once_without_rescans() {
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let ledger = Ledger::start(store.clone(), LedgerConfig::default());
        const PAYERS: usize = 64;
        const BATCHES: usize = 16;
        let mut accounts: Vec<Command> = (0..PAYERS)
            .map(|n| create_system(&format!("w{n}")))
            .collect();
        accounts.push(create("merchant"));
        let created = run(&ledger, accounts).await;
        assert!(created.iter().all(|r| *r == Ok(Outcome::AccountCreated)));
        // (The relay's start-up rescan has run by now: it runs at the relay's start.)
        let rescans_before = ledger.stats().rescans();
        // Sixteen full batches at once, every transfer to the merchant: far more legs than
        // its actor may hold while its commits take 8,190 at a time.
        let batches = (0..BATCHES).map(|batch| {
            let commands: Vec<Command> = (0..BATCH_COMMANDS_MAX)
                .map(|i| {
                    common::transfer(
                        &format!("t{batch}-{i}"),
                        &format!("w{}", i % PAYERS),
                        "merchant",
                        1,
                    )
                })
                .collect();
            run(&ledger, commands)
        });
        for results in join_all(batches).await {
            assert!(results.iter().all(|r| *r == Ok(Outcome::TransferAccepted)));
        }
        settle(&ledger).await;
        let total = (BATCHES * BATCH_COMMANDS_MAX) as i128;
        assert_eq!(views(&ledger, &["merchant"]).await[0], (total, 0, total));
        assert_eq!(
            ledger.stats().rescans(),
            rescans_before,
            "the relay fell back to rescans"
        );
        assert_clean(store.as_ref(), &ledger);
    });
}

/// The commit window: with commits held back, one thread's actors have exactly
/// `WINDOW` commits in flight; the other payers wait their turn, taking
/// further deliveries meanwhile, and every transfer lands once the commits go through
/// (no place lost, nobody left waiting). Fails if the window does not bound commits in
/// flight, or if a waiting actor is never woken.
#[test]
fn commits_beyond_the_window_wait_their_turn_and_all_land() {
    const WINDOW: usize = 64;
    const PAYERS: usize = WINDOW + 100;
    in_system(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = gated_store(dir.path());
        let config = LedgerConfig {
            commit_window: CommitWindow::fixed(WINDOW),
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(store.clone(), config);
        let payers: Vec<String> = (0..PAYERS).map(|i| format!("payer-{i}")).collect();
        let mut setup = vec![create_system("world"), create("shop")];
        setup.extend(payers.iter().map(|p| create(p)));
        assert!(run(&ledger, setup).await.iter().all(Result::is_ok));
        let funding = payers
            .iter()
            .map(|p| common::transfer(&format!("fund-{p}"), "world", p, 10))
            .collect();
        assert!(run(&ledger, funding).await.iter().all(Result::is_ok));
        settle(&ledger).await;
        store.commits.set_open(false);
        let round = |n: usize| {
            let batch: Vec<Command> = payers
                .iter()
                .map(|p| common::transfer(&format!("{p}-{n}"), p, "shop", 1))
                .collect();
            let ledger = ledger.clone();
            actix_rt::spawn(async move { run(&ledger, batch).await })
        };
        let first = round(1);
        store.commits.wait_for_waiting(WINDOW).await;
        // Deliveries to payers in flight and to payers waiting for a place.
        let second = round(2);
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.commits.waiting.load(Ordering::Acquire),
            WINDOW,
            "commits in flight beyond the window"
        );
        store.commits.set_open(true);
        let landed = |round: actix_rt::task::JoinHandle<Vec<CommandResult>>| async move {
            actix_rt::time::timeout(Duration::from_secs(30), round)
                .await
                .expect("a waiting payer was never woken")
                .unwrap()
        };
        for results in [landed(first).await, landed(second).await] {
            assert_eq!(results.len(), PAYERS);
            assert!(
                results.iter().all(|r| *r == Ok(Outcome::TransferAccepted)),
                "{results:?}"
            );
        }
        settle(&ledger).await;
        let shop = views(&ledger, &["shop"]).await[0];
        assert_eq!(shop.0, 2 * PAYERS as i128, "the shop got every credit once");
        assert_clean(store.as_ref(), &ledger);
    });
}
