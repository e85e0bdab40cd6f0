//! Reading an account's statement: its postings by sequence number, from the blocks its
//! commits wrote ([`crate::records::PostingBlock`]).
//!
//! Owns the mapping from "postings `from_seq..`" to block reads: the block that holds
//! `from_seq` may start before it (one reverse read of one row finds it), later blocks are
//! read forward. Must never write, and never return a page with a gap: blocks of one
//! account are contiguous, and a block out of place is reported, not skipped.

use crate::ids::AccountId;
use crate::keys::{self, Keyspace};
use crate::ledger::ErrorCode;
use crate::records::{self, PostingRecord, RecordError};
use crate::store::{limits, RangeRequest, Store, StoreError};

/// Blocks the first forward read asks for, and the most any read asks for.
const BLOCKS_PER_READ_FIRST: usize = 8;
const BLOCKS_PER_READ_MAX: usize = 256;
const _: () = assert!(BLOCKS_PER_READ_MAX <= limits::RANGE_ROWS_MAX);

/// Why a statement could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("account {account}: {detail}")]
    Inconsistent { account: String, detail: String },
}

impl StatementError {
    /// The code a caller answers with: `unavailable` (retryable) when the store failed,
    /// `internal` when the statement's data is damaged (logged by [`read`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            StatementError::Store(_) => ErrorCode::Unavailable,
            StatementError::Record(_) | StatementError::Inconsistent { .. } => ErrorCode::Internal,
        }
    }
}

/// The postings of `account` with `seq >= from_seq`, oldest first, at most `limit`.
/// Damaged statement data (an undecodable block, a gap) is logged here.
pub async fn read(
    store: &dyn Store,
    space: Keyspace,
    account: &AccountId,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, PostingRecord)>, StatementError> {
    let mut page = Vec::with_capacity(limit.min(1_024));
    if limit == 0 {
        return Ok(page);
    }
    let damaged = |error: StatementError| {
        tracing::error!(%error, "statement unreadable");
        error
    };
    let inconsistent = |detail: String| {
        damaged(StatementError::Inconsistent {
            account: account.as_str().to_string(),
            detail,
        })
    };
    let decode = |value: &[u8]| records::decode_postings(value).map_err(|e| damaged(e.into()));
    // The block holding `from_seq` is the last one that starts at or before it.
    let (first, end) = space.postings_from(account, 0);
    let holding = RangeRequest {
        begin: first,
        end: space.posting(account, from_seq.saturating_add(1)),
        limit: 1,
        reverse: true,
    };
    // Where the next block must start, once a block was read.
    let mut expected = None;
    if let Some((key, value)) = store.get_range(holding).await?.into_iter().next() {
        let start = keys::posting_seq(&key).ok_or_else(|| inconsistent("posting key".into()))?;
        let postings = decode(&value)?;
        expected = Some(start + postings.len() as u64);
        let skip = usize::try_from(from_seq - start).unwrap_or(usize::MAX);
        page.extend((start..).zip(postings).skip(skip).take(limit));
    }
    let mut begin = space.posting(account, from_seq.saturating_add(1));
    // Blocks per read: from a few (a page usually needs few) doubling to a bounded number,
    // so a short page never fetches hundreds of blocks of 256 postings.
    let mut chunk = BLOCKS_PER_READ_FIRST;
    while page.len() < limit {
        // Each block holds at least one posting: never more rows than postings wanted.
        let rows = (limit - page.len()).min(chunk);
        chunk = (chunk * 2).min(BLOCKS_PER_READ_MAX);
        let blocks = store
            .get_range(RangeRequest::new(begin.clone(), end.clone(), rows))
            .await?;
        let full = blocks.len() == rows;
        for (key, value) in &blocks {
            let start = keys::posting_seq(key).ok_or_else(|| inconsistent("posting key".into()))?;
            if let Some(expected) = expected.filter(|&expected| expected != start) {
                return Err(inconsistent(format!(
                    "posting block {start}, expected {expected}"
                )));
            }
            let postings = decode(value)?;
            expected = Some(start + postings.len() as u64);
            let room = limit - page.len();
            page.extend((start..).zip(postings).take(room));
            if page.len() == limit {
                return Ok(page);
            }
        }
        match blocks.last() {
            Some((key, _)) if full => {
                begin = key.clone();
                begin.push(0);
            }
            _ => break,
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TransferId;
    use crate::records::{PostingBlock, PostingSource};
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
    use futures::executor::block_on;
    use proptest::prelude::*;

    fn posting(account: &str, seq: u64) -> PostingRecord {
        PostingRecord {
            source: PostingSource::Transfer(TransferId::new(&format!("{account}-{seq}")).unwrap()),
            amount: seq as i64 + 1,
            counterparty: AccountId::new("other").unwrap(),
        }
    }

    /// Writes `blocks` (sizes) of postings for `account`, one commit per block.
    fn write(
        store: &dyn Store,
        account: &AccountId,
        blocks: &[usize],
    ) -> Vec<(u64, PostingRecord)> {
        let mut all = Vec::new();
        let mut seq = 0;
        for &size in blocks {
            let mut block = PostingBlock::default();
            let first = seq;
            for _ in 0..size {
                let p = posting(account.as_str(), seq);
                block.push(&p);
                all.push((seq, p));
                seq += 1;
            }
            let mut txn = store.begin().unwrap();
            txn.set(&Keyspace::Real.posting(account, first), &block.take())
                .unwrap();
            block_on(txn.commit()).unwrap();
        }
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Every page (any start, any limit) is exactly the slice of the flat statement,
        /// whatever the block sizes, and neighbouring accounts never leak in.
        #[test]
        fn pages_are_slices_of_the_statement(
            blocks in proptest::collection::vec(1usize..=6, 0..8),
            limits in proptest::collection::vec(1usize..=12, 1..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
            let (before, account, after) = (
                AccountId::new("a").unwrap(),
                AccountId::new("b").unwrap(),
                AccountId::new("c").unwrap(),
            );
            write(store.as_ref(), &before, &[3, 2]);
            let all = write(store.as_ref(), &account, &blocks);
            write(store.as_ref(), &after, &[1, 4]);
            for from in 0..=all.len() as u64 + 1 {
                for &limit in &limits {
                    let page = block_on(read(store.as_ref(), Keyspace::Real, &account, from, limit))
                        .unwrap();
                    let expected: Vec<_> = all
                        .iter()
                        .filter(|(seq, _)| *seq >= from)
                        .take(limit)
                        .cloned()
                        .collect();
                    prop_assert_eq!(page, expected);
                }
            }
        }
    }

    #[test]
    fn a_gap_between_blocks_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let account = AccountId::new("a").unwrap();
        write(store.as_ref(), &account, &[2]);
        // A block at 5 where 2 was due.
        let mut block = PostingBlock::default();
        block.push(&posting("a", 5));
        let mut txn = store.begin().unwrap();
        txn.set(&Keyspace::Real.posting(&account, 5), &block.take())
            .unwrap();
        block_on(txn.commit()).unwrap();
        let error = block_on(read(store.as_ref(), Keyspace::Real, &account, 0, 10)).unwrap_err();
        assert!(
            matches!(error, StatementError::Inconsistent { .. }),
            "{error}"
        );
    }
}
