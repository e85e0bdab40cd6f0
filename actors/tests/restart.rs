//! Restart: everything acknowledged before a shutdown is there after reopening the same
//! directory with a new actix System and a new ledger (INV-2, INV-3).
//!
//! Three runs on one directory:
//! 1. transfers (accepted and refused), holds (active, partly captured, released) and an
//!    `append`-mode account whose postings are not yet netted into its balance record;
//! 2. a transfer accepted right before shutdown whose credit cannot land: the ledger runs
//!    with `active_accounts_max = 1`, so the payee's actor cannot be activated while the
//!    payer's is alive (deterministic, no timing);
//! 3. a normal ledger: the relay's startup rescan completes that transfer; balances, frozen
//!    amounts, lookups and retries are as before the restart; the audit is clean.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actors::{Ledger, LedgerConfig};
use cells::ids::{AccountId, HoldId, TransferId};
use cells::ledger::audit::audit;
use cells::ledger::{Command, CommandResult, ErrorCode, Outcome, TransferStatus};
use cells::money::Amount;
use cells::records::{self, AccountKind, AccountRecord, HoldState, HotMode};
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::Store;
use common::{
    account, capture, create, create_system, hold, lookup, release, run, settle, transfer,
};

const ACCOUNTS: [&str; 5] = ["world", "alice", "bob", "shop", "merch"];

type Views = HashMap<&'static str, (i128, i128, i128)>;

/// Runs `body` on a fresh actix System with a store opened on `dir`, then stops the System
/// (and the ledger's arbiters) and waits, bounded, until the store is closed, so that the
/// next run can open the directory again.
fn run_once<T, F, Fut>(dir: &std::path::Path, body: F) -> T
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let store = EmbeddedStore::open(dir, EmbeddedOptions::default()).unwrap();
    let weak: Weak<EmbeddedStore> = Arc::downgrade(&store);
    let runner = actix_rt::System::new();
    let result = runner.block_on(body(store));
    actix_rt::System::current().stop();
    runner.run().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while weak.strong_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the store was not closed after the System stopped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    result
}

async fn views(ledger: &Ledger) -> Views {
    let results = run(ledger, ACCOUNTS.iter().map(|a| lookup(a)).collect()).await;
    ACCOUNTS
        .iter()
        .zip(results)
        .map(|(id, result)| match result {
            Ok(Outcome::Account(view)) => (*id, (view.balance, view.frozen, view.available)),
            other => panic!("lookup of {id}: {other:?}"),
        })
        .collect()
}

async fn transfer_status(ledger: &Ledger, id: &str) -> TransferStatus {
    let lookup = Command::LookupTransfer(TransferId::new(id).unwrap());
    match run(ledger, vec![lookup]).await.remove(0) {
        Ok(Outcome::Transfer(view)) => view.status,
        other => panic!("lookup of transfer {id}: {other:?}"),
    }
}

async fn hold_state(ledger: &Ledger, id: &str) -> HoldState {
    match run(ledger, vec![Command::LookupHold(HoldId::new(id).unwrap())])
        .await
        .remove(0)
    {
        Ok(Outcome::Hold(view)) => view.state,
        other => panic!("lookup of hold {id}: {other:?}"),
    }
}

async fn stored_account(store: &dyn Store, ledger: &Ledger, id: &str) -> AccountRecord {
    let key = ledger.keyspace().account(&AccountId::new(id).unwrap());
    let bytes = store.get(&key).await.unwrap().expect("account record");
    records::decode("account", &bytes).unwrap()
}

fn ok(results: &[CommandResult]) -> bool {
    results.iter().all(Result::is_ok)
}

/// A tick period longer than any test: the idle tick never comes.
const NEVER: Duration = Duration::from_secs(3_600);

/// Starts a ledger ticking every `tick` and creates the system account "world", a
/// standard account for each of `customers` and the `append` account "merch".
async fn start_with_append_merch(
    store: &Arc<dyn Store>,
    tick: Duration,
    customers: &[&str],
) -> Ledger {
    let config = LedgerConfig {
        tick,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::start(Arc::clone(store), config);
    let mut merch = account("merch", AccountKind::Customer);
    merch.mode = HotMode::Append;
    let mut commands = vec![create_system("world")];
    commands.extend(customers.iter().map(|id| create(id)));
    commands.push(Command::CreateAccount(merch));
    let created = run(&ledger, commands).await;
    assert!(ok(&created), "{created:?}");
    ledger
}

/// Run 1: the history that must survive.
async fn first_run(store: Arc<dyn Store>) -> Views {
    // A long tick: the append account is never netted by the idle tick in this run.
    let ledger = start_with_append_merch(&store, NEVER, &["alice", "bob", "shop"]).await;
    let funded = run(
        &ledger,
        vec![
            transfer("fund-a", "world", "alice", 10_000),
            transfer("fund-b", "world", "bob", 5_000),
        ],
    )
    .await;
    assert!(ok(&funded), "{funded:?}");
    settle(&ledger).await;
    let moved = run(
        &ledger,
        vec![
            transfer("t1", "alice", "bob", 1_500),
            transfer("t2", "alice", "shop", 20_000),
            transfer("t3", "bob", "merch", 700),
            transfer("t4", "alice", "merch", 300),
            hold("h1", "alice", 2_000, None),
            hold("h2", "bob", 1_000, None),
            hold("h3", "alice", 500, None),
        ],
    )
    .await;
    let expected = vec![
        Ok(Outcome::TransferAccepted),
        Err(ErrorCode::InsufficientFunds),
        Ok(Outcome::TransferAccepted),
        Ok(Outcome::TransferAccepted),
        Ok(Outcome::HoldCreated),
        Ok(Outcome::HoldCreated),
        Ok(Outcome::HoldCreated),
    ];
    assert_eq!(moved, expected);
    let finished = run(
        &ledger,
        vec![capture("h2", "shop", Some(400)), release("h3")],
    )
    .await;
    assert_eq!(
        finished,
        vec![Ok(Outcome::HoldCaptured), Ok(Outcome::HoldReleased)]
    );
    settle(&ledger).await;
    // The append account pays too (its credits landed in the previous batches).
    assert_eq!(
        run(&ledger, vec![transfer("t5", "merch", "shop", 100)]).await,
        vec![Ok(Outcome::TransferAccepted)]
    );
    settle(&ledger).await;
    let views = views(&ledger).await;
    assert_eq!(
        views["alice"],
        (10_000 - 1_500 - 300, 2_000, 10_000 - 1_500 - 300 - 2_000)
    );
    assert_eq!(
        views["bob"],
        (5_000 + 1_500 - 700 - 400, 0, 5_000 + 1_500 - 700 - 400)
    );
    assert_eq!(views["merch"], (700 + 300 - 100, 0, 900));
    assert_eq!(views["shop"].0, 400 + 100);
    // The append account's balance record covers none of its postings: a restart must
    // replay them to get the balance right.
    let record = stored_account(store.as_ref(), &ledger, "merch").await;
    assert_eq!(
        (record.balance, record.balance_through_seq),
        (0, 0),
        "merch was netted"
    );
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    views
}

/// Run 2: a transfer accepted right before shutdown, whose credit cannot land before it.
async fn second_run(store: Arc<dyn Store>, before: &Views) {
    let config = LedgerConfig {
        active_accounts_max: 1,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::start(store, config);
    let late = run(&ledger, vec![transfer("late", "world", "merch", 250)]).await;
    assert_eq!(late, vec![Ok(Outcome::TransferAccepted)]);
    // world's actor is the one allowed; merch's cannot start, so the credit stays pending.
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        transfer_status(&ledger, "late").await,
        TransferStatus::Accepted
    );
    assert_eq!(ledger.stats().credits(), 0);
    let world = run(&ledger, vec![lookup("world")]).await.remove(0);
    let Ok(Outcome::Account(world)) = world else {
        panic!("{world:?}")
    };
    assert_eq!(world.balance, before["world"].0 - 250);
}

/// Run 3: everything is as it was; the late credit landed; retries change nothing.
async fn third_run(store: Arc<dyn Store>, before: &Views) {
    let ledger = Ledger::start(Arc::clone(&store), LedgerConfig::default());
    // The relay's startup rescan delivers the late credit (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    while transfer_status(&ledger, "late").await != TransferStatus::Completed {
        assert!(
            Instant::now() < deadline,
            "the late credit was not delivered after restart"
        );
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let after = views(&ledger).await;
    for id in ["alice", "bob", "shop"] {
        assert_eq!(after[id], before[id], "{id} changed across the restart");
    }
    assert_eq!(
        after["merch"],
        (before["merch"].0 + 250, 0, before["merch"].2 + 250)
    );
    assert_eq!(after["world"].0, before["world"].0 - 250);
    for id in ["fund-a", "fund-b", "t1", "t3", "t4", "t5", "late"] {
        assert_eq!(
            transfer_status(&ledger, id).await,
            TransferStatus::Completed,
            "{id}"
        );
    }
    let refused = TransferStatus::Rejected(ErrorCode::InsufficientFunds);
    assert_eq!(transfer_status(&ledger, "t2").await, refused);
    assert_eq!(hold_state(&ledger, "h1").await, HoldState::Active);
    let captured = HoldState::Captured {
        to: AccountId::new("shop").unwrap(),
        amount: Amount::from_minor_units(400).unwrap(),
    };
    assert_eq!(hold_state(&ledger, "h2").await, captured);
    assert_eq!(
        hold_state(&ledger, "h3").await,
        HoldState::Released { expired: false }
    );
    // Funds arrive for alice; a retry of her refused transfer is still refused.
    assert_eq!(
        run(&ledger, vec![transfer("fund-2", "world", "alice", 20_000)]).await,
        vec![Ok(Outcome::TransferAccepted)]
    );
    settle(&ledger).await;
    let retries = run(
        &ledger,
        vec![
            transfer("t1", "alice", "bob", 1_500),
            transfer("t2", "alice", "shop", 20_000),
            transfer("t3", "bob", "merch", 701),
            transfer("late", "world", "merch", 250),
            hold("h1", "alice", 2_000, None),
            capture("h2", "shop", Some(400)),
            release("h3"),
        ],
    )
    .await;
    let expected = vec![
        Ok(Outcome::TransferAccepted),
        Err(ErrorCode::InsufficientFunds),
        Err(ErrorCode::TransferExistsWithDifferentFields),
        Ok(Outcome::TransferAccepted),
        Ok(Outcome::HoldCreated),
        Ok(Outcome::HoldCaptured),
        Ok(Outcome::HoldReleased),
    ];
    assert_eq!(retries, expected);
    let wrong = run(
        &ledger,
        vec![
            capture("h3", "shop", None),
            capture("h1", "shop", Some(2_001)),
        ],
    )
    .await;
    assert_eq!(
        wrong,
        vec![
            Err(ErrorCode::HoldNotActive),
            Err(ErrorCode::CaptureExceedsHold)
        ]
    );
    settle(&ledger).await;
    // No second debit: only fund-2 was debited in this run.
    assert_eq!(ledger.stats().debits(), 1);
    let last = views(&ledger).await;
    assert_eq!(
        last["alice"],
        (after["alice"].0 + 20_000, 2_000, after["alice"].2 + 20_000)
    );
    for id in ["bob", "shop", "merch"] {
        assert_eq!(last[id], after[id], "{id} changed by retries");
    }
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    assert_eq!(report.outbox_pending, 0);
    assert_eq!(report.transfers, 9);
    assert_eq!(report.holds, 3);
    assert_eq!(report.balances["merch"], last["merch"].0);
}

#[test]
fn acknowledged_state_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let before = run_once(dir.path(), first_run);
    let before = &before;
    run_once(dir.path(), |store| async move {
        second_run(store, before).await
    });
    run_once(
        dir.path(),
        |store| async move { third_run(store, before).await },
    );
}

/// Stopping right after acknowledgements (no settle, credits possibly in flight) and
/// restarting: every acknowledged transfer is recorded, every credit lands after restart,
/// and the audit is clean.
#[test]
fn shutdown_without_settling_completes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let accepted = run_once(dir.path(), |store| async move {
        let ledger = Ledger::start(store, LedgerConfig::default());
        let mut specs = vec![create_system("world")];
        specs.extend((0..8).map(|i| create(&format!("r{i}"))));
        assert!(ok(&run(&ledger, specs).await));
        let batch: Vec<Command> = (0..200)
            .map(|i| {
                transfer(
                    &format!("q{i}"),
                    "world",
                    &format!("r{}", i % 8),
                    1 + i as u64,
                )
            })
            .collect();
        let results = run(&ledger, batch).await;
        assert!(ok(&results), "{results:?}");
        results.len()
    });
    run_once(dir.path(), |store| async move {
        let ledger = Ledger::start(Arc::clone(&store), LedgerConfig::default());
        // Wait (bounded) until the relay's startup rescan delivered every pending credit:
        // the audit reads page by page, so it only gives a verdict on a quiet store.
        let deadline = Instant::now() + Duration::from_secs(10);
        while audit(store.as_ref(), ledger.keyspace())
            .unwrap()
            .outbox_pending
            > 0
        {
            assert!(
                Instant::now() < deadline,
                "credits still pending after restart"
            );
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
        assert!(report.is_clean(), "{:?}", report.discrepancies);
        assert_eq!(report.outbox_pending, 0);
        assert_eq!(report.transfers as usize, accepted);
        let total: i128 = (0..200).map(|i| 1 + i as i128).sum();
        assert_eq!(report.balances["world"], -total);
        let credited: i128 = (0..8)
            .map(|i| report.balances[format!("r{i}").as_str()])
            .sum();
        assert_eq!(credited, total);
        for i in 0..200 {
            let id = format!("q{i}");
            assert_eq!(
                transfer_status(&ledger, &id).await,
                TransferStatus::Completed,
                "{id}"
            );
        }
    });
}

/// An `append` account's postings wait for netting; its housekeeper, which skips busy
/// actors, still ticks it once it is quiet, and the tick nets them into the balance record.
/// Standard accounts' records are exact after every commit.
#[test]
fn a_quiet_append_account_is_netted_by_its_tick() {
    let dir = tempfile::tempdir().unwrap();
    // Run 1: a tick that never comes, so nothing nets the append account's postings.
    run_once(dir.path(), |store| async move {
        let ledger = start_with_append_merch(&store, NEVER, &["alice"]).await;
        let funded = run(&ledger, vec![transfer("fund", "world", "alice", 10_000)]).await;
        assert!(ok(&funded), "{funded:?}");
        settle(&ledger).await;
        for i in 0..3 {
            let paid = run(
                &ledger,
                vec![transfer(&format!("p{i}"), "alice", "merch", 100)],
            )
            .await;
            assert!(ok(&paid), "{paid:?}");
        }
        settle(&ledger).await;
        let merch = stored_account(store.as_ref(), &ledger, "merch").await;
        assert_eq!(
            (merch.balance, merch.balance_through_seq),
            (0, 0),
            "merch waits"
        );
        let alice = stored_account(store.as_ref(), &ledger, "alice").await;
        assert_eq!((alice.balance, alice.balance_through_seq), (9_700, 4));
    });
    // Run 2: the balance is replayed exactly, and the quiet account is netted.
    run_once(dir.path(), |store| async move {
        let config = LedgerConfig {
            tick: Duration::from_millis(20),
            ..LedgerConfig::default()
        };
        let ledger = Ledger::start(Arc::clone(&store), config);
        match run(&ledger, vec![lookup("merch")]).await.remove(0) {
            Ok(Outcome::Account(view)) => assert_eq!(view.balance, 300),
            other => panic!("lookup: {other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let merch = stored_account(store.as_ref(), &ledger, "merch").await;
            if (merch.balance, merch.balance_through_seq) == (300, 3) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the quiet append account was not netted: {merch:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
        assert!(report.is_clean(), "{:?}", report.discrepancies);
    });
}
