//! `split(n)` hot accounts: the balance is the exact sum of the parts, debits spread over
//! the parts and are topped up from siblings when one runs low, no part (so not the whole
//! account) ever goes below zero, retries keep their outcome, and the books stay balanced.

mod common;

use std::sync::Arc;

use cells::ids::AccountId;
use cells::ledger::audit::audit;
use cells::ledger::{ErrorCode, Outcome, TransferStatus};
use cells::records::{AccountKind, HotMode};
use common::*;

fn create_split(id: &str, parts: u16) -> cells::ledger::Command {
    let mut spec = account(id, AccountKind::Customer);
    spec.mode = HotMode::Split { parts };
    cells::ledger::Command::CreateAccount(spec)
}

/// A ledger with a system account `bank`, a split account `hot` and a customer `other`.
async fn with_split(dir: &std::path::Path, parts: u16, other: &str) -> actors::Ledger {
    let ledger = ledger(open_store(dir));
    let results = run(
        &ledger,
        vec![
            create_system("bank"),
            create_split("hot", parts),
            create(other),
        ],
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    ledger
}

async fn parts_balances(ledger: &actors::Ledger, id: &str, parts: u16) -> Vec<i128> {
    let mut out = Vec::new();
    for k in 0..parts {
        out.push(balance(ledger, &format!("{id}.p{k}")).await.0);
    }
    out
}

#[actix_rt::test]
async fn split_account_sums_its_parts_and_rebalances_debits() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = with_split(dir.path(), 4, "shop").await;
    // Creating it again with the same fields is an idempotent retry.
    assert_eq!(
        run(&ledger, vec![create_split("hot", 4)]).await,
        vec![Err(ErrorCode::AccountExists)]
    );
    // Bad split specs are refused and create nothing.
    let mut bad = account("bad-1", AccountKind::Customer);
    bad.mode = HotMode::Split { parts: 1 };
    let mut overdraft = account("bad-2", AccountKind::Customer);
    overdraft.mode = HotMode::Split { parts: 2 };
    overdraft.overdraft_limit = 5;
    let results = run(
        &ledger,
        vec![
            cells::ledger::Command::CreateAccount(bad),
            cells::ledger::Command::CreateAccount(overdraft),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![
            Err(ErrorCode::InvalidMode),
            Err(ErrorCode::InvalidOverdraftLimit)
        ]
    );
    assert!(matches!(
        run(&ledger, vec![lookup("bad-1.p0")]).await[0],
        Err(ErrorCode::UnknownAccount)
    ));

    // Fund it with 1,000 in 10 credits; they land on different parts.
    let funding: Vec<_> = (0..10)
        .map(|n| transfer(&format!("f-{n}"), "bank", "hot", 100))
        .collect();
    assert!(run(&ledger, funding).await.iter().all(Result::is_ok));
    settle(&ledger).await;
    assert_eq!(balance(&ledger, "hot").await, (1_000, 1_000));
    let parts = parts_balances(&ledger, "hot", 4).await;
    assert_eq!(parts.iter().sum::<i128>(), 1_000);
    assert!(parts.iter().filter(|b| **b > 0).count() >= 2, "{parts:?}");

    // Debit all of it in one batch: every part must cover its share, so the short ones
    // are topped up from their siblings first.
    let debits: Vec<_> = (0..40)
        .map(|n| transfer(&format!("d-{n}"), "hot", "shop", 25))
        .collect();
    let results = run(&ledger, debits).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    settle(&ledger).await;
    assert_eq!(balance(&ledger, "hot").await, (0, 0));
    assert_eq!(parts_balances(&ledger, "hot", 4).await, vec![0, 0, 0, 0]);
    assert_eq!(balance(&ledger, "shop").await, (1_000, 1_000));

    // Nothing left: a debit is refused (and stays refused on retry).
    let results = run(&ledger, vec![transfer("d-x", "hot", "shop", 1)]).await;
    assert_eq!(results, vec![Err(ErrorCode::InsufficientFunds)]);
    // A retry of an accepted debit returns its outcome and moves nothing.
    assert!(run(&ledger, vec![transfer("d-0", "hot", "shop", 25)]).await[0].is_ok());
    assert_eq!(balance(&ledger, "hot").await, (0, 0));
    // Lookups show the split account, not its part.
    match &run(
        &ledger,
        vec![cells::ledger::Command::LookupTransfer(
            cells::ids::TransferId::new("d-3").unwrap(),
        )],
    )
    .await[0]
    {
        Ok(Outcome::Transfer(view)) => {
            assert_eq!(view.from, AccountId::new("hot").unwrap());
            assert_eq!(view.status, TransferStatus::Completed);
        }
        other => panic!("{other:?}"),
    }
    let report = audit(ledger.store().as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[actix_rt::test]
async fn concurrent_debits_never_overdraw_a_split_account() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = with_split(dir.path(), 8, "sink").await;
    assert!(run(&ledger, vec![transfer("f", "bank", "hot", 3_000)]).await[0].is_ok());
    settle(&ledger).await;
    // 16 clients ask for 4,000 in total from 3,000.
    let clients = (0..16).map(|c| {
        let ledger = ledger.clone();
        async move {
            let mut accepted = 0u64;
            for round in 0..5 {
                let batch: Vec<_> = (0..5)
                    .map(|i| transfer(&format!("c{c}-{round}-{i}"), "hot", "sink", 10))
                    .collect();
                for result in ledger.execute(batch).await.unwrap() {
                    match result {
                        Ok(_) => accepted += 10,
                        Err(ErrorCode::InsufficientFunds) => {}
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
            }
            accepted
        }
    });
    let accepted: u64 = futures::future::join_all(clients).await.into_iter().sum();
    settle(&ledger).await;
    let (balance_hot, available) = balance(&ledger, "hot").await;
    assert!(accepted <= 3_000, "more debited than funded: {accepted}");
    assert_eq!(balance_hot, 3_000 - accepted as i128);
    assert_eq!(available, balance_hot);
    let parts = parts_balances(&ledger, "hot", 8).await;
    assert!(parts.iter().all(|b| *b >= 0), "a part overdrew: {parts:?}");
    assert_eq!(parts.iter().sum::<i128>(), balance_hot);
    assert_eq!(balance(&ledger, "sink").await.0, accepted as i128);
    // Rebalancing makes most of the money usable even under contention.
    assert!(accepted >= 2_000, "only {accepted} of 3,000 was usable");
    let report = audit(ledger.store().as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let _ = Arc::clone(ledger.store());
}
