//! A commit whose outcome is unknown (FoundationDB's `commit_unknown_result`, a lost
//! connection to a remote store) is resolved through idempotency records: the caller gets
//! `outcome_unknown`, retries with the same id, and the transfer exists exactly once
//! whether or not the first commit became durable.
//!
//! The store here is the real embedded store behind a wrapper that, for one commit, either
//! commits and then reports `Unknown` (the reply was lost) or drops the commit and reports
//! `Unknown` (the request was lost) — the two cases a real backend cannot tell apart.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cells::ledger::audit::audit;
use cells::ledger::{ErrorCode, Outcome, TransferStatus};
use cells::store::{
    BoxFuture, CommitError, KeyValue, RangeRequest, Store, StoreError, StoreStats, Transaction,
};
use common::*;

const NORMAL: u8 = 0;
const COMMIT_THEN_UNKNOWN: u8 = 1;
const DROP_THEN_UNKNOWN: u8 = 2;

struct LossyStore {
    inner: Arc<dyn Store>,
    next: Arc<AtomicU8>,
}

struct LossyTransaction {
    inner: Box<dyn Transaction>,
    next: Arc<AtomicU8>,
}

impl Store for LossyStore {
    fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        Ok(Box::new(LossyTransaction {
            inner: self.inner.begin()?,
            next: Arc::clone(&self.next),
        }))
    }
    fn get(&self, key: &[u8]) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        self.inner.get(key)
    }
    fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        self.inner.get_many(keys)
    }
    fn get_range(
        &self,
        request: RangeRequest,
    ) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>> {
        self.inner.get_range(request)
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

impl Transaction for LossyTransaction {
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
        let mode = self.next.swap(NORMAL, Ordering::SeqCst);
        let inner = self.inner;
        Box::pin(async move {
            let unknown = || CommitError::Unknown {
                detail: "injected: commit_unknown_result".into(),
            };
            match mode {
                COMMIT_THEN_UNKNOWN => {
                    inner.commit().await?;
                    Err(unknown())
                }
                DROP_THEN_UNKNOWN => {
                    drop(inner);
                    Err(unknown())
                }
                _ => inner.commit().await,
            }
        })
    }
}

async fn transfer_status(ledger: &actors::Ledger, id: &str) -> Option<TransferStatus> {
    let id = cells::ids::TransferId::new(id).unwrap();
    match run(ledger, vec![cells::ledger::Command::LookupTransfer(id)])
        .await
        .remove(0)
    {
        Ok(Outcome::Transfer(view)) => Some(view.status),
        Err(ErrorCode::UnknownTransfer) => None,
        other => panic!("lookup: {other:?}"),
    }
}

async fn unknown_then_retry(mode: u8) {
    let dir = tempfile::tempdir().unwrap();
    let next = Arc::new(AtomicU8::new(NORMAL));
    let store: Arc<dyn Store> = Arc::new(LossyStore {
        inner: open_store(dir.path()),
        next: Arc::clone(&next),
    });
    let ledger = ledger(Arc::clone(&store));
    let setup = vec![
        create_system("bank"),
        create("alice"),
        create("bob"),
        transfer("fund", "bank", "alice", 100),
    ];
    assert!(run(&ledger, setup).await.iter().all(Result::is_ok));
    settle(&ledger).await;

    next.store(mode, Ordering::SeqCst);
    let first = run(&ledger, vec![transfer("pay", "alice", "bob", 30)]).await;
    assert_eq!(first, vec![Err(ErrorCode::OutcomeUnknown)]);
    assert_eq!(next.load(Ordering::SeqCst), NORMAL, "the fault was used");

    // The id tells what happened: present only if the lost commit was durable.
    let seen = transfer_status(&ledger, "pay").await;
    assert_eq!(seen.is_some(), mode == COMMIT_THEN_UNKNOWN, "{seen:?}");

    // The retry is always safe: same id, same fields.
    let retry = run(&ledger, vec![transfer("pay", "alice", "bob", 30)]).await;
    assert!(retry[0].is_ok(), "{retry:?}");
    // And a second retry answers the original outcome, not a second posting.
    let again = run(&ledger, vec![transfer("pay", "alice", "bob", 30)]).await;
    assert_eq!(again, retry);
    // The credit leg of a commit whose outcome was lost is not counted by the ledger's
    // stats (it never saw the commit succeed), so wait on the transfer itself: the relay's
    // outbox rescan must find and deliver it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while transfer_status(&ledger, "pay").await != Some(TransferStatus::Completed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the credit leg was never delivered"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(balance(&ledger, "alice").await, (70, 70));
    assert_eq!(balance(&ledger, "bob").await, (30, 30));
    assert_eq!(
        transfer_status(&ledger, "pay").await,
        Some(TransferStatus::Completed)
    );
    let report = audit(store.as_ref(), ledger.keyspace()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[actix_rt::test]
async fn unknown_outcome_of_a_durable_commit_is_resolved_by_the_retry() {
    unknown_then_retry(COMMIT_THEN_UNKNOWN).await;
}

#[actix_rt::test]
async fn unknown_outcome_of_a_lost_commit_is_resolved_by_the_retry() {
    unknown_then_retry(DROP_THEN_UNKNOWN).await;
}
