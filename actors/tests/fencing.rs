//! INV-4 at the actor level: the fencing precondition alone (no lease logic, no message
//! to the stale ledger) stops a DC whose slot moved from committing anything.

mod common;

use std::sync::Arc;

use actors::{Ledger, LedgerConfig};
use cells::ids::{DcId, UserId};
use cells::ledger::audit::audit;
use cells::ledger::ErrorCode;
use cells::ownership::{self, ChangeMeta, ChangePlan};
use cells::slot::slot_of;
use cells::store::Store;
use common::*;

fn dc(name: &str) -> DcId {
    DcId::new(name).unwrap()
}

fn dc_ledger(store: Arc<dyn Store>, name: &str) -> Ledger {
    let config = LedgerConfig {
        dc: Some(dc(name)),
        ..LedgerConfig::default()
    };
    Ledger::start(store, config)
}

async fn move_user_slot(store: &dyn Store, user: &str, from: &str, to: &str) {
    let slot = slot_of(&UserId::new(user).unwrap());
    let plan = ChangePlan::move_slots([slot], Some(&dc(from)), &dc(to));
    ownership::apply_change(store, &plan, &ChangeMeta::new("test", "move"))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn a_stale_dc_cannot_commit_after_its_slot_moved() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let meta = ChangeMeta::new("test", "bootstrap");
    ownership::bootstrap(&*store, &[dc("dc-a")], &meta)
        .await
        .unwrap();
    let a = dc_ledger(Arc::clone(&store), "dc-a");
    let setup = vec![
        create_system("bank"),
        create("alice"),
        create("bob"),
        transfer("t-1", "bank", "alice", 100),
    ];
    let results = run(&a, setup).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    settle(&a).await;
    let results = run(&a, vec![transfer("t-2", "alice", "bob", 10)]).await;
    assert!(results[0].is_ok(), "{results:?}");
    settle(&a).await;
    assert_eq!(balance(&a, "alice").await, (90, 90));

    // The slot moves; dc-a hears nothing about it. Its loaded actor must still be
    // refused by the store.
    move_user_slot(&*store, "user-alice", "dc-a", "dc-b").await;
    let results = run(&a, vec![transfer("t-3", "alice", "bob", 5)]).await;
    assert_eq!(results, vec![Err(ErrorCode::NotOwner)]);
    // Reloading does not help dc-a either: it no longer owns alice.
    let results = run(&a, vec![transfer("t-4", "alice", "bob", 5)]).await;
    assert_eq!(results, vec![Err(ErrorCode::NotOwner)]);
    let results = run(&a, vec![create_user_account("alice-2", "user-alice")]).await;
    assert_eq!(results, vec![Err(ErrorCode::NotOwner)]);

    // Nothing of t-3 / t-4 was written; the new owner serves alice from the store.
    let b = dc_ledger(Arc::clone(&store), "dc-b");
    assert_eq!(balance(&b, "alice").await, (90, 90));
    let results = run(&b, vec![transfer("t-3", "alice", "bank", 5)]).await;
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(balance(&b, "alice").await, (85, 85));
    // dc-b does not own bob or the bank.
    let results = run(&b, vec![transfer("t-5", "bank", "alice", 1)]).await;
    assert_eq!(results, vec![Err(ErrorCode::NotOwner)]);
    let report = audit(store.as_ref(), b.keyspace()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

fn create_user_account(id: &str, user: &str) -> cells::ledger::Command {
    let mut spec = account(id, cells::records::AccountKind::Customer);
    spec.user = UserId::new(user).unwrap();
    cells::ledger::Command::CreateAccount(spec)
}
