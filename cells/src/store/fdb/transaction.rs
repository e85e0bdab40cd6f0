//! Transactions of the FoundationDB backend: a FoundationDB transaction under the store's
//! prefix, the interface's limits checked before every call reaches it, preconditions
//! checked at commit (see the parent module), and the commit version from the versionstamp.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use foundationdb::options::ConflictRangeType;
use foundationdb::FdbError;
use futures::future::try_join_all;

use crate::store::fdb_errors::{commit_error, describe, uncommitted_error};
use crate::store::fdb_layout::{commit_version, read_only_version, SizeAccount};
use crate::store::{
    check_key, check_value, BoxFuture, CommitError, KeyValue, RangeRequest, StoreError, Transaction,
};

use super::{read_range, ready, Shared};

pub(super) struct FdbTransaction {
    shared: Arc<Shared>,
    trx: foundationdb::Transaction,
    begun: Instant,
    account: SizeAccount,
    requires: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    wrote: bool,
}

impl FdbTransaction {
    pub(super) fn new(shared: Arc<Shared>, trx: foundationdb::Transaction) -> Self {
        FdbTransaction {
            shared,
            trx,
            begun: Instant::now(),
            account: SizeAccount::default(),
            requires: Vec::new(),
            wrote: false,
        }
    }

    /// FoundationDB only checks the age of transactions that read; this checks every one.
    fn check_age(&self) -> Result<(), StoreError> {
        let max_ms = self.shared.options.transaction_duration_ms_max;
        if self.begun.elapsed().as_millis() > u128::from(max_ms) {
            return Err(StoreError::TransactionTooOld { max_ms });
        }
        Ok(())
    }

    fn read_error(&self) -> impl Fn(FdbError) -> StoreError + Copy + Send + 'static {
        let context = self.shared.context(self.account.write_bytes);
        move |error| crate::store::fdb_errors::read_error(error.code(), context)
    }

    fn start_get(
        &mut self,
        key: &[u8],
    ) -> Result<impl std::future::Future<Output = Result<Option<Vec<u8>>, StoreError>>, StoreError>
    {
        check_key(key)?;
        self.check_age()?;
        self.account.charge_read(key.len())?;
        let read = self.trx.get(&self.shared.prefix.key(key), false);
        let read_error = self.read_error();
        Ok(async move {
            let value = read.await.map_err(read_error)?;
            Ok(value.map(|value| value.to_vec()))
        })
    }

    /// Reads every required key's committed value, adds a read conflict range on it, and
    /// lists the keys whose value is not the expected one.
    async fn check_requires(&self) -> Result<(), CommitError> {
        let context = self.shared.context(self.account.write_bytes);
        let failed = |error: FdbError| uncommitted_error(error.code(), context);
        let mut reads = Vec::with_capacity(self.requires.len());
        for (key, _) in &self.requires {
            let (begin, end) = self.shared.prefix.point_range(key);
            self.trx
                .add_conflict_range(&begin, &end, ConflictRangeType::Read)
                .map_err(failed)?;
            reads.push(self.trx.get(&begin, true));
        }
        let values = try_join_all(reads).await.map_err(failed)?;
        let keys: Vec<Vec<u8>> = self
            .requires
            .iter()
            .zip(values)
            .filter(|((_, expected), actual)| expected.as_deref() != actual.as_deref())
            .map(|((key, _), _)| key.clone())
            .collect();
        if keys.is_empty() {
            Ok(())
        } else {
            Err(CommitError::PreconditionFailed { keys })
        }
    }

    async fn commit_inner(self) -> Result<u64, CommitError> {
        self.check_age().map_err(CommitError::Rejected)?;
        self.check_requires().await?;
        if !self.wrote {
            return self.read_only_outcome().await;
        }
        let context = self.shared.context(self.account.write_bytes);
        let versionstamp = self.trx.get_versionstamp();
        let committed = self
            .trx
            .commit()
            .await
            .map_err(|error| commit_error(error.code(), context))?;
        let shared = &self.shared;
        shared
            .transactions_committed
            .fetch_add(1, Ordering::Relaxed);
        let bytes = self.account.write_bytes as u64;
        shared.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        let stamp = match versionstamp.await {
            Ok(stamp) => stamp,
            Err(error) => return Err(committed_unreportable(describe(error.code()))),
        };
        drop(committed);
        commit_version(&stamp).map_err(|error| committed_unreportable(error.to_string()))
    }

    /// A transaction that wrote nothing has nothing to commit: it is serializable at its
    /// read version, which is the version it reports.
    async fn read_only_outcome(self) -> Result<u64, CommitError> {
        let context = self.shared.context(self.account.write_bytes);
        let read_version = self
            .trx
            .get_read_version()
            .await
            .map_err(|error| uncommitted_error(error.code(), context))?;
        read_only_version(read_version).map_err(|error| {
            CommitError::Rejected(StoreError::Backend {
                detail: error.to_string(),
            })
        })
    }
}

/// FoundationDB committed the transaction but its version cannot be reported. The writes are
/// durable; the only outcome that does not deny that is "unknown", which callers resolve
/// through their idempotency records.
fn committed_unreportable(detail: String) -> CommitError {
    tracing::error!(%detail, "FoundationDB commit succeeded but its version is unreportable");
    CommitError::Unknown {
        detail: format!("committed, but the commit version is unreportable: {detail}"),
    }
}

impl Transaction for FdbTransaction {
    fn get(&mut self, key: &[u8]) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        match self.start_get(key) {
            Ok(read) => Box::pin(read),
            Err(error) => ready(Err(error)),
        }
    }

    fn get_range(
        &mut self,
        request: RangeRequest,
    ) -> BoxFuture<'_, Result<Vec<KeyValue>, StoreError>> {
        let checked = request
            .validate()
            .and_then(|()| self.check_age())
            .and_then(|()| {
                self.account
                    .charge_read(request.begin.len() + request.end.len())
            });
        if let Err(error) = checked {
            return ready(Err(error));
        }
        let context = self.shared.context(self.account.write_bytes);
        Box::pin(async move {
            read_range(&self.trx, &self.shared.prefix, &request, false)
                .await
                .map_err(|failure| failure.into_store_error(context))
        })
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        check_value(value)?;
        self.account.charge_write(key.len() + value.len(), true)?;
        self.trx.set(&self.shared.prefix.key(key), value);
        self.wrote = true;
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        self.account.charge_write(key.len(), true)?;
        self.trx.clear(&self.shared.prefix.key(key));
        self.wrote = true;
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        check_key(begin)?;
        check_key(end)?;
        if begin >= end {
            return Err(StoreError::InvalidRange);
        }
        self.account.charge_write(begin.len() + end.len(), true)?;
        let prefix = &self.shared.prefix;
        self.trx.clear_range(&prefix.key(begin), &prefix.key(end));
        self.wrote = true;
        Ok(())
    }

    fn require(&mut self, key: &[u8], expected: Option<&[u8]>) -> Result<(), StoreError> {
        check_key(key)?;
        if let Some(expected) = expected {
            check_value(expected)?;
        }
        let bytes = key.len() + expected.map_or(0, <[u8]>::len);
        self.account.charge_write(bytes, false)?;
        self.requires
            .push((key.to_vec(), expected.map(<[u8]>::to_vec)));
        Ok(())
    }

    fn size_bytes(&self) -> usize {
        self.account.write_bytes
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<u64, CommitError>> {
        Box::pin((*self).commit_inner())
    }
}
