//! End-to-end behaviour of the ledger on the embedded store.

mod common;

use cells::ids::HoldId;
use cells::ledger::audit::audit;
use cells::ledger::{Command, ErrorCode, Outcome};
use cells::records::HoldState;
use common::*;

#[actix_rt::test]
async fn transfer_moves_money_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ledger = ledger(store.clone());
    let created = run(
        &ledger,
        vec![create_system("world"), create("alice"), create("bob")],
    )
    .await;
    assert!(
        created.iter().all(|r| *r == Ok(Outcome::AccountCreated)),
        "{created:?}"
    );
    let results = run(&ledger, vec![transfer("fund-1", "world", "alice", 10_000)]).await;
    assert_eq!(results, vec![Ok(Outcome::TransferAccepted)]);
    settle(&ledger).await;
    let results = run(
        &ledger,
        vec![
            transfer("t1", "alice", "bob", 2_500),
            transfer("t2", "alice", "bob", 9_000),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![
            Ok(Outcome::TransferAccepted),
            Err(ErrorCode::InsufficientFunds)
        ]
    );
    settle(&ledger).await;
    assert_eq!(balance(&ledger, "alice").await, (7_500, 7_500));
    assert_eq!(balance(&ledger, "bob").await, (2_500, 2_500));
    assert_eq!(balance(&ledger, "world").await.0, -10_000);
    // A retry returns the original outcome; a different request under the same id is refused.
    let retry = run(&ledger, vec![transfer("t1", "alice", "bob", 2_500)]).await;
    assert_eq!(retry, vec![Ok(Outcome::TransferAccepted)]);
    let retry = run(&ledger, vec![transfer("t2", "alice", "bob", 9_000)]).await;
    assert_eq!(retry, vec![Err(ErrorCode::InsufficientFunds)]);
    let other = run(&ledger, vec![transfer("t1", "alice", "bob", 1)]).await;
    assert_eq!(
        other,
        vec![Err(ErrorCode::TransferExistsWithDifferentFields)]
    );
    settle(&ledger).await;
    assert_eq!(balance(&ledger, "alice").await, (7_500, 7_500));
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    assert_eq!(report.transfers, 3);
}

/// A ledger on a fresh store with a system account `world`, a customer `payer` funded with
/// `units` (settled) and a customer `shop`.
async fn payer_and_shop(
    units: u64,
) -> (
    tempfile::TempDir,
    std::sync::Arc<dyn cells::store::Store>,
    actors::Ledger,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ledger = ledger(store.clone());
    run(
        &ledger,
        vec![create_system("world"), create("payer"), create("shop")],
    )
    .await;
    run(&ledger, vec![transfer("fund", "world", "payer", units)]).await;
    settle(&ledger).await;
    (dir, store, ledger)
}

#[actix_rt::test]
async fn holds_freeze_release_and_capture() {
    let (_dir, store, ledger) = payer_and_shop(1_000).await;
    let results = run(
        &ledger,
        vec![
            hold("h1", "payer", 600, None),
            hold("h2", "payer", 600, None),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![Ok(Outcome::HoldCreated), Err(ErrorCode::InsufficientFunds)]
    );
    assert_eq!(balance(&ledger, "payer").await, (1_000, 400));
    let results = run(&ledger, vec![capture("h1", "shop", Some(250))]).await;
    assert_eq!(results, vec![Ok(Outcome::HoldCaptured)]);
    settle(&ledger).await;
    assert_eq!(balance(&ledger, "payer").await, (750, 750));
    assert_eq!(balance(&ledger, "shop").await, (250, 250));
    // Retries and wrong states.
    assert_eq!(
        run(&ledger, vec![capture("h1", "shop", Some(250))]).await,
        vec![Ok(Outcome::HoldCaptured)]
    );
    assert_eq!(
        run(&ledger, vec![release("h1")]).await,
        vec![Err(ErrorCode::HoldNotActive)]
    );
    assert_eq!(
        run(&ledger, vec![release("nope")]).await,
        vec![Err(ErrorCode::UnknownHold)]
    );
    run(&ledger, vec![hold("h3", "payer", 700, None)]).await;
    assert_eq!(
        run(&ledger, vec![release("h3")]).await,
        vec![Ok(Outcome::HoldReleased)]
    );
    assert_eq!(
        run(&ledger, vec![release("h3")]).await,
        vec![Ok(Outcome::HoldReleased)]
    );
    assert_eq!(
        run(&ledger, vec![capture("h3", "shop", None)]).await,
        vec![Err(ErrorCode::HoldNotActive)]
    );
    assert_eq!(balance(&ledger, "payer").await, (750, 750));
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
}

#[actix_rt::test]
async fn bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ledger = ledger(store.clone());
    run(
        &ledger,
        vec![create_system("world"), create("a"), create("b")],
    )
    .await;
    run(&ledger, vec![transfer("fund", "world", "a", 100)]).await;
    settle(&ledger).await;
    let results = run(
        &ledger,
        vec![
            transfer("x1", "a", "ghost", 1),
            transfer("x2", "ghost", "a", 1),
            transfer("x3", "a", "a", 1),
            transfer("x4", "a", "b", 1),
            transfer("x4", "a", "b", 1),
            create("a"),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![
            Err(ErrorCode::UnknownAccount),
            Err(ErrorCode::UnknownAccount),
            Err(ErrorCode::SameAccount),
            Ok(Outcome::TransferAccepted),
            Err(ErrorCode::DuplicateIdInBatch),
            Err(ErrorCode::AccountExists),
        ]
    );
    let too_many = vec![lookup("a"); cells::ledger::BATCH_COMMANDS_MAX + 1];
    assert!(ledger.execute(too_many).await.is_err());
    settle(&ledger).await;
    assert_eq!(balance(&ledger, "a").await, (99, 99));
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    assert_eq!(report.transfers, 2);
}

#[actix_rt::test]
async fn statement_replays_to_the_balance() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ledger = ledger(store.clone());
    run(
        &ledger,
        vec![create_system("world"), create("carol"), create("dave")],
    )
    .await;
    run(&ledger, vec![transfer("fund-c", "world", "carol", 5_000)]).await;
    settle(&ledger).await;
    let payments: Vec<_> = (0..30)
        .map(|i| transfer(&format!("pay-{i}"), "carol", "dave", 10 + i))
        .collect();
    run(&ledger, payments).await;
    settle(&ledger).await;
    let carol = cells::ids::AccountId::new("carol").unwrap();
    let mut postings = Vec::new();
    let mut from = 0;
    loop {
        let page = ledger.statement(&carol, from, 7).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        from = last + 1;
        postings.extend(page);
    }
    assert_eq!(postings.len(), 31);
    assert!(postings
        .iter()
        .enumerate()
        .all(|(i, (seq, _))| *seq == i as u64));
    let replayed: i128 = postings.iter().map(|(_, p)| i128::from(p.amount)).sum();
    assert_eq!((replayed, replayed), balance(&ledger, "carol").await);
    assert_eq!(postings[0].1.amount, 5_000);
    let ghost = cells::ids::AccountId::new("ghost").unwrap();
    assert_eq!(
        ledger.statement(&ghost, 0, 10).await,
        Err(ErrorCode::UnknownAccount)
    );
    assert_eq!(
        ledger.statement(&carol, 0, 0).await,
        Err(ErrorCode::InvalidLimit)
    );
}

/// World funds erin with 900, then erin pays frank 300 (`e1`); both credits settled.
/// Returns the answer to `e1`.
async fn erin_pays_frank(ledger: &actors::Ledger) -> Vec<cells::ledger::CommandResult> {
    run(
        ledger,
        vec![create_system("world"), create("erin"), create("frank")],
    )
    .await;
    run(ledger, vec![transfer("fund-e", "world", "erin", 900)]).await;
    // Erin's credit is asynchronous: wait for it before she pays.
    settle(ledger).await;
    let paid = run(ledger, vec![transfer("e1", "erin", "frank", 300)]).await;
    settle(ledger).await;
    paid
}

/// The audit can fail: a posting slipped into the store behind the ledger's back (a second
/// credit of an existing transfer) is reported as INV-1 and INV-3 discrepancies.
#[actix_rt::test]
async fn audit_reports_a_tampered_store() {
    use cells::records::{encode, PostingRecord, PostingSource};
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ledger = ledger(store.clone());
    erin_pays_frank(&ledger).await;
    assert!(audit(store.as_ref(), ledger.keyspace()).unwrap().is_clean());
    let frank = cells::ids::AccountId::new("frank").unwrap();
    let next = ledger.statement(&frank, 0, 100).await.unwrap().len() as u64;
    let forged = PostingRecord {
        source: PostingSource::Transfer(cells::ids::TransferId::new("e1").unwrap()),
        amount: 300,
        counterparty: cells::ids::AccountId::new("erin").unwrap(),
    };
    let mut txn = store.begin().unwrap();
    // A statement block of one posting (see `cells::records::PostingBlock`).
    txn.set(
        &ledger.keyspace().posting(&frank, next),
        &encode(&vec![forged]),
    )
    .unwrap();
    txn.commit().await.unwrap();
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    let broken: Vec<_> = report.discrepancies.iter().map(|d| d.invariant).collect();
    assert!(broken.contains(&"INV-1"), "{:?}", report.discrepancies);
    assert!(broken.contains(&"INV-3"), "{:?}", report.discrepancies);
}

/// A ledger on `store` with world, gina and hank, gina funded with 1,000 and holding two
/// holds: "soon" (400, expiring in 60 ms) and "later" (100, expiring in `later_ms`).
async fn gina_holds(
    store: std::sync::Arc<dyn cells::store::Store>,
    config: actors::LedgerConfig,
    later_ms: Option<u64>,
) -> actors::Ledger {
    let ledger = actors::Ledger::start(store, config);
    run(
        &ledger,
        vec![create_system("world"), create("gina"), create("hank")],
    )
    .await;
    run(&ledger, vec![transfer("fund-g", "world", "gina", 1_000)]).await;
    settle(&ledger).await;
    let held = run(
        &ledger,
        vec![
            hold("soon", "gina", 400, Some(60)),
            hold("later", "gina", 100, later_ms),
        ],
    )
    .await;
    assert_eq!(
        held,
        vec![Ok(Outcome::HoldCreated), Ok(Outcome::HoldCreated)]
    );
    ledger
}

/// Waits (at most 10 s) until "soon" expired: gina's 400 available again.
async fn until_soon_expired(ledger: &actors::Ledger) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while balance(ledger, "gina").await != (1_000, 900) {
        assert!(
            std::time::Instant::now() < deadline,
            "the hold never expired"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An expiring hold is released on its own (by the actor's tick, or by the next commit
/// after its expiry), and the money it froze is available again.
#[actix_rt::test]
async fn expired_holds_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let config = actors::LedgerConfig {
        tick: std::time::Duration::from_millis(20),
        ..actors::LedgerConfig::default()
    };
    let ledger = gina_holds(store.clone(), config, Some(600_000)).await;
    assert_eq!(balance(&ledger, "gina").await, (1_000, 500));
    until_soon_expired(&ledger).await;
    let lookup = run(
        &ledger,
        vec![Command::LookupHold(HoldId::new("soon").unwrap())],
    )
    .await;
    let Ok(Outcome::Hold(view)) = &lookup[0] else {
        panic!("{lookup:?}")
    };
    assert_eq!(view.state, HoldState::Released { expired: true });
    assert_eq!(
        run(&ledger, vec![capture("soon", "hank", None)]).await,
        vec![Err(ErrorCode::HoldNotActive)]
    );
    assert!(audit(store.as_ref(), ledger.keyspace()).unwrap().is_clean());
}

/// A release or capture of a hold this ledger created is routed without a read of the hold
/// record. When the hold's actor finds the hold no longer active and no longer remembers how
/// it ended (it was passivated and loaded again since), the ledger runs the command again on
/// the record: a release of an expired hold is still answered `hold_released` and a capture
/// of it `hold_not_active`; a capture of an active hold lands once, and its retry gets the
/// original outcome.
#[actix_rt::test]
async fn remembered_holds_still_answer_from_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let config = actors::LedgerConfig {
        tick: std::time::Duration::from_millis(20),
        idle_timeout: std::time::Duration::from_millis(100),
        ..actors::LedgerConfig::default()
    };
    // "later" never expires.
    let ledger = gina_holds(store.clone(), config, None).await;
    until_soon_expired(&ledger).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Every actor passivates: gina's next actor does not remember "soon" expiring.
    while ledger.active_accounts() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the actors never passivated"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // (One command on a hold per batch.) The capture is refused, so "soon" stays
    // remembered for the release.
    assert_eq!(
        run(&ledger, vec![capture("soon", "hank", None)]).await,
        vec![Err(ErrorCode::HoldNotActive)]
    );
    assert_eq!(
        run(&ledger, vec![release("soon")]).await,
        vec![Ok(Outcome::HoldReleased)]
    );
    let captured = run(&ledger, vec![capture("later", "hank", None)]).await;
    assert_eq!(captured, vec![Ok(Outcome::HoldCaptured)]);
    let retried = run(&ledger, vec![capture("later", "hank", None)]).await;
    assert_eq!(retried, vec![Ok(Outcome::HoldCaptured)]);
    settle(&ledger).await;
    assert_eq!(balance(&ledger, "gina").await, (900, 900));
    assert_eq!(balance(&ledger, "hank").await, (100, 100));
    assert!(audit(store.as_ref(), ledger.keyspace()).unwrap().is_clean());
}

/// Credit legs from a peer DC go to the payee without a store read first; the payee's
/// commit precondition alone keeps them exactly once. A duplicate of a leg already applied
/// and a well-formed leg whose outbox entry never existed change nothing, and a transfer
/// credited behind them still lands once.
#[actix_rt::test]
async fn peer_legs_are_applied_at_most_once() {
    use cells::ids::{AccountId, TransferId, UserId};
    use cells::records::{encode, OutboxKind, OutboxRecord, PostingSource};
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ledger = ledger(store.clone());
    let paid = erin_pays_frank(&ledger).await;
    assert_eq!(paid, vec![Ok(Outcome::TransferAccepted)]);
    let erin_slot = cells::slot::slot_of(&UserId::new("user-erin").unwrap());
    let leg = |id: &str, units: u64| {
        let record = OutboxRecord {
            source: PostingSource::Transfer(TransferId::new(id).unwrap()),
            from: AccountId::new("erin").unwrap(),
            to: AccountId::new("frank").unwrap(),
            amount: cells::money::Amount::from_minor_units(units).unwrap(),
            currency: usd(),
        };
        let key = ledger
            .keyspace()
            .outbox(erin_slot, OutboxKind::Transfer, id);
        (key, encode(&record))
    };
    // e1 again (applied, its outbox entry cleared) and a leg nobody debited.
    let taken = ledger.deliver_from_peer(vec![leg("e1", 300), leg("forged", 500)]);
    assert_eq!(taken, 2);
    let paid = run(&ledger, vec![transfer("e2", "erin", "frank", 100)]).await;
    assert_eq!(paid, vec![Ok(Outcome::TransferAccepted)]);
    settle(&ledger).await;
    // The peer legs reached frank's actor before e2's credit; give a retried draft time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (frank, _) = balance(&ledger, "frank").await;
        if frank == 400 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "frank holds {frank}, expected 400; stats {:?}",
            (ledger.stats().debits(), ledger.stats().credits())
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(balance(&ledger, "frank").await, (400, 400));
    let statement = ledger
        .statement(&AccountId::new("frank").unwrap(), 0, 100)
        .await
        .unwrap();
    assert_eq!(statement.len(), 2, "{statement:?}");
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
}

/// One batch of 3,000 debits from one payer spans three of its commits (by default a
/// commit takes at most 1,024 client commands): each part is drafted on the state the part
/// before it left, so exactly the first 2,000 fit the funds, every command is answered once
/// with its own result, and money is conserved.
#[actix_rt::test]
async fn a_batch_larger_than_one_commit_is_committed_in_order() {
    let (_dir, store, ledger) = payer_and_shop(2_000).await;
    let commits_before = ledger
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Acquire);
    let batch: Vec<_> = (0..3_000)
        .map(|n| transfer(&format!("t{n}"), "payer", "shop", 1))
        .collect();
    let results = run(&ledger, batch).await;
    assert_eq!(results.len(), 3_000);
    for (n, result) in results.iter().enumerate() {
        let expected = if n < 2_000 {
            Ok(Outcome::TransferAccepted)
        } else {
            Err(ErrorCode::InsufficientFunds)
        };
        assert_eq!(*result, expected, "transfer t{n}");
    }
    settle(&ledger).await;
    let commits = ledger
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Acquire)
        - commits_before;
    // Three of the payer's, at least one of the shop's.
    assert!(commits >= 4, "{commits} commits");
    assert_eq!(balance(&ledger, "payer").await, (0, 0));
    assert_eq!(balance(&ledger, "shop").await, (2_000, 2_000));
    // Retries of both parts return the original outcomes.
    let retries = run(
        &ledger,
        vec![
            transfer("t0", "payer", "shop", 1),
            transfer("t1999", "payer", "shop", 1),
            transfer("t2999", "payer", "shop", 1),
        ],
    )
    .await;
    assert_eq!(
        retries,
        vec![
            Ok(Outcome::TransferAccepted),
            Ok(Outcome::TransferAccepted),
            Err(ErrorCode::InsufficientFunds)
        ]
    );
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    // Refused transfers are recorded too (their retries return the refusal).
    assert_eq!(report.transfers, 3_001);
}
