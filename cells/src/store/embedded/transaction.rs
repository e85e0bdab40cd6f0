//! Transactions of the embedded store: buffered writes checked against the limits at call
//! time, reads that see the transaction's own writes and join its read set, and a commit
//! that only moves everything into the committer's queue.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::store::limits::TRANSACTION_BYTES_MAX;
use crate::store::{
    check_key, check_value, BoxFuture, CommitError, KeyValue, RangeRequest, StoreError, Transaction,
};

use super::committer::{enqueue, PendingCommit, Requires};
use super::memtable::View;
use super::wal::{Write, WriteBatch};
use super::{ready, Shared, TRANSACTION_READ_BYTES_MAX, TRANSACTION_WRITES_MAX};

/// What a transaction read from the committed state, compared by value at commit.
#[derive(Debug, Default)]
pub(crate) struct ReadSet {
    /// Keys read and the hash of the value seen (`None`: absent).
    pub(crate) keys: Vec<(Vec<u8>, Option<u128>)>,
    pub(crate) ranges: Vec<RangeRead>,
}

impl ReadSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ranges.is_empty()
    }
}

/// The committed rows of `[begin, end)` a range read examined, scanned in its direction.
#[derive(Debug)]
pub(crate) struct RangeRead {
    pub(crate) begin: Vec<u8>,
    pub(crate) end: Vec<u8>,
    pub(crate) reverse: bool,
    pub(crate) rows: usize,
    pub(crate) hash: u128,
}

pub(crate) fn value_hash(value: Option<&[u8]>) -> Option<u128> {
    value.map(xxh3_128)
}

/// Hashes rows as they are scanned.
#[derive(Default)]
pub(crate) struct RowsHasher {
    hasher: Xxh3,
    pub(crate) rows: usize,
}

impl RowsHasher {
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        self.hasher.update(&(key.len() as u64).to_le_bytes());
        self.hasher.update(key);
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        self.rows += 1;
    }

    pub(crate) fn digest(&self) -> u128 {
        self.hasher.digest128()
    }
}

/// The transaction's own writes, indexed for reads (built on the first read).
#[derive(Debug, Default)]
struct OwnWrites {
    points: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
}

impl OwnWrites {
    fn apply(&mut self, write: Write<'_>) {
        match write {
            Write::Set(key, value) => {
                self.points.insert(key.to_vec(), Some(value.to_vec()));
            }
            Write::Clear(key) => {
                self.points.insert(key.to_vec(), None);
            }
            Write::ClearRange(begin, end) => {
                let inside: Vec<Vec<u8>> = self
                    .points
                    .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in inside {
                    self.points.remove(&key);
                }
                self.cleared.push((begin.to_vec(), end.to_vec()));
            }
        }
    }

    /// `Some` when the transaction's own writes decide what `key` reads.
    fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if let Some(value) = self.points.get(key) {
            return Some(value.as_deref());
        }
        self.hides(key).then_some(None)
    }

    fn hides(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(begin, end)| begin.as_slice() <= key && key < end.as_slice())
    }
}

pub(crate) struct EmbeddedTransaction {
    shared: Arc<Shared>,
    begun: Instant,
    writes: WriteBatch,
    own: Option<OwnWrites>,
    reads: ReadSet,
    requires: Requires,
    size_bytes: usize,
    read_bytes: usize,
}

impl EmbeddedTransaction {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        EmbeddedTransaction {
            shared,
            begun: Instant::now(),
            writes: WriteBatch::default(),
            own: None,
            reads: ReadSet::default(),
            requires: Requires::default(),
            size_bytes: 0,
            read_bytes: 0,
        }
    }

    fn charge_write(&mut self, bytes: usize) -> Result<(), StoreError> {
        let total = self.size_bytes + bytes;
        if total > TRANSACTION_BYTES_MAX || self.writes.len() >= TRANSACTION_WRITES_MAX {
            return Err(StoreError::TransactionTooLarge {
                bytes: total,
                max: TRANSACTION_BYTES_MAX,
            });
        }
        self.size_bytes = total;
        Ok(())
    }

    fn charge_read(&mut self, bytes: usize) -> Result<(), StoreError> {
        let total = self.read_bytes + bytes;
        if total > TRANSACTION_READ_BYTES_MAX {
            return Err(StoreError::TransactionTooLarge {
                bytes: total,
                max: TRANSACTION_READ_BYTES_MAX,
            });
        }
        self.read_bytes = total;
        Ok(())
    }

    fn push_write(&mut self, write: Write<'_>) {
        if let Some(own) = &mut self.own {
            own.apply(write);
        }
        self.writes.push(write);
    }

    fn own_writes(&mut self) -> &OwnWrites {
        let writes = &self.writes;
        self.own.get_or_insert_with(|| {
            let mut own = OwnWrites::default();
            writes.iter().for_each(|write| own.apply(write));
            own
        })
    }

    fn read_key(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        if let Some(decided) = self.own_writes().get(key) {
            return Ok(decided.map(<[u8]>::to_vec));
        }
        self.charge_read(key.len())?;
        let value = self
            .shared
            .with_view(|view| Ok::<_, StoreError>(view.get(key)?.map(|v| v.into_owned())))?;
        self.reads
            .keys
            .push((key.to_vec(), value_hash(value.as_deref())));
        Ok(value)
    }

    fn read_range(&mut self, request: &RangeRequest) -> Result<Vec<KeyValue>, StoreError> {
        request.validate()?;
        self.charge_read(request.begin.len() + request.end.len())?;
        self.own_writes();
        let shared = self.shared.clone();
        let own = self.own.as_ref().expect("built just above");
        let (rows, read) = shared.with_view(|view| merge_range(view, own, request))?;
        self.reads.ranges.extend(read);
        Ok(rows)
    }
}

/// Merges the transaction's own writes over the committed rows of the range; returns the
/// rows and the part of the committed range that was examined.
fn merge_range(
    view: &View<'_>,
    own: &OwnWrites,
    request: &RangeRequest,
) -> Result<(Vec<KeyValue>, Option<RangeRead>), StoreError> {
    let (begin, end, reverse) = (&request.begin[..], &request.end[..], request.reverse);
    let mut committed = view.range(begin, end, reverse);
    let own_range = own
        .points
        .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
    let mut own_rows: Box<dyn Iterator<Item = _>> = if reverse {
        Box::new(own_range.rev())
    } else {
        Box::new(own_range)
    };
    let mut own_head = own_rows.next();
    let mut committed_head: Option<KeyValue> = None;
    let (mut committed_done, mut last_pulled, mut hasher) = (false, None, RowsHasher::default());
    let mut rows = Vec::new();
    while rows.len() < request.limit {
        if committed_head.is_none() && !committed_done {
            match committed.next().transpose()? {
                None => committed_done = true,
                Some((key, value)) => {
                    hasher.add(&key, &value);
                    last_pulled = Some(key.to_vec());
                    committed_head = Some((key.into_owned(), value.into_owned()));
                }
            }
        }
        let take_own = match (&committed_head, &own_head) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((committed_key, _)), Some((own_key, _))) => {
                if reverse {
                    *own_key >= committed_key
                } else {
                    *own_key <= committed_key
                }
            }
        };
        if take_own {
            let Some((key, value)) = own_head.take() else {
                break;
            };
            own_head = own_rows.next();
            if committed_head
                .as_ref()
                .is_some_and(|(committed_key, _)| committed_key == key)
            {
                committed_head = None;
            }
            if let Some(value) = value {
                rows.push((key.clone(), value.clone()));
            }
        } else if let Some((key, value)) = committed_head.take() {
            if !own.hides(&key) {
                rows.push((key, value));
            }
        }
    }
    let examined = match (committed_done, last_pulled) {
        (true, _) => Some((request.begin.clone(), request.end.clone())),
        (false, None) => None,
        (false, Some(mut last)) if !reverse => {
            last.push(0);
            Some((request.begin.clone(), last))
        }
        (false, Some(last)) => Some((last, request.end.clone())),
    };
    let read = examined.map(|(begin, end)| RangeRead {
        begin,
        end,
        reverse,
        rows: hasher.rows,
        hash: hasher.digest(),
    });
    Ok((rows, read))
}

impl Transaction for EmbeddedTransaction {
    fn get(&mut self, key: &[u8]) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        ready(self.read_key(key))
    }

    fn get_range(
        &mut self,
        request: RangeRequest,
    ) -> BoxFuture<'_, Result<Vec<KeyValue>, StoreError>> {
        ready(self.read_range(&request))
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        check_value(value)?;
        self.charge_write(key.len() + value.len())?;
        self.push_write(Write::Set(key, value));
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        self.charge_write(key.len())?;
        self.push_write(Write::Clear(key));
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        check_key(begin)?;
        check_key(end)?;
        if begin >= end {
            return Err(StoreError::InvalidRange);
        }
        self.charge_write(begin.len() + end.len())?;
        self.push_write(Write::ClearRange(begin, end));
        Ok(())
    }

    fn require(&mut self, key: &[u8], expected: Option<&[u8]>) -> Result<(), StoreError> {
        check_key(key)?;
        if let Some(expected) = expected {
            check_value(expected)?;
        }
        self.charge_write(key.len() + expected.map_or(0, <[u8]>::len))?;
        self.requires.push(key, expected);
        Ok(())
    }

    fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    fn reserve(&mut self, bytes: usize) {
        // Bounded by the transaction limit, whatever the hint says. About a quarter of a
        // draft's bytes are preconditions.
        let bytes = bytes.min(TRANSACTION_BYTES_MAX);
        self.writes.reserve(bytes - bytes / 4);
        self.requires.reserve(bytes / 4);
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<u64, CommitError>> {
        let this = *self;
        let max_ms = this.shared.options.transaction_duration_ms_max;
        let committing = Instant::now();
        if committing.duration_since(this.begun).as_millis() > u128::from(max_ms) {
            return ready(Err(CommitError::Rejected(StoreError::TransactionTooOld {
                max_ms,
            })));
        }
        if this.writes.is_empty() && this.requires.is_empty() && this.reads.is_empty() {
            return ready(Ok(this
                .shared
                .counters
                .version_committed
                .load(Ordering::Acquire)));
        }
        let (reply, answer) = oneshot::channel();
        let pending = PendingCommit {
            writes: this.writes,
            reads: this.reads,
            requires: this.requires,
            begun: this.begun,
            committing,
            size_bytes: this.size_bytes,
            reply: Some(reply),
        };
        if let Err(error) = enqueue(&this.shared, pending) {
            return ready(Err(error));
        }
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(CommitError::Unknown {
                    detail: "store stopped before answering".to_string(),
                })
            })
        })
    }
}
