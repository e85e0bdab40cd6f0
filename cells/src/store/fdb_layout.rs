//! How the FoundationDB backend lays the interface's keyspace out in a cluster, and the
//! bookkeeping it does before FoundationDB sees a request.
//!
//! Owns: the subspace prefix of a store ([`KeyPrefix`]: every key the store writes starts
//! with it, and reads strip it), the paging of range reads ([`RangeCursor`]), the limit
//! accounting of a transaction ([`SizeAccount`]: the same typed errors as the embedded
//! backend, raised before FoundationDB would raise its own), and the commit version the
//! interface reports (built from FoundationDB's versionstamp, unique per transaction).
//! Compiled without the `fdb` feature so that its tests run everywhere.
//!
//! Must never: let a key outside the prefix reach a caller, let a prefix reach into
//! FoundationDB's system keys (`\xff…`), or accept a write that would break a limit.

use super::limits::{KEY_PREFIX_BYTES_MAX, TRANSACTION_BYTES_MAX};
use super::{prefix_end, KeyValue, RangeRequest, StoreError};

/// Most writes (sets, clears, clear ranges) in one transaction; bounds writes of empty keys
/// and values that [`TRANSACTION_BYTES_MAX`] alone would not (FoundationDB charges each
/// mutation its prefixed key, so the count is bounded there too, but later).
pub const TRANSACTION_WRITES_MAX: usize = 1_000_000;
/// Most bytes of keys and ranges one transaction may read; FoundationDB counts read conflict
/// ranges towards its ten-megabyte transaction limit.
pub const TRANSACTION_READ_BYTES_MAX: usize = TRANSACTION_BYTES_MAX;
/// The prefix of a store opened without one.
pub const DEFAULT_PREFIX: &[u8] = b"tessera/";
/// Bits of the reported commit version that hold the transaction's order inside its
/// FoundationDB commit batch (the last two bytes of the versionstamp).
pub const BATCH_ORDER_BITS: u32 = 16;
/// Largest FoundationDB commit version that fits in a reported commit version. FoundationDB
/// versions advance about a million per second from zero, so this lasts about 8.9 years of
/// cluster time (see `ops/fdb/README.md`).
pub const FDB_VERSION_MAX: u64 = (1 << (64 - BATCH_ORDER_BITS)) - 1;
/// Bytes of a FoundationDB versionstamp: an 8-byte commit version and a 2-byte batch order.
pub const VERSIONSTAMP_BYTES: usize = 10;

/// Why a prefix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("the key prefix is empty; keys would collide with other users of the cluster")]
    Empty,
    #[error("the key prefix has {len} bytes; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("the key prefix starts with 0xff, FoundationDB's system keyspace")]
    SystemKeys,
}

/// The subspace of one store: every key it writes starts with these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(Vec<u8>);

impl KeyPrefix {
    pub fn new(prefix: impl Into<Vec<u8>>) -> Result<Self, PrefixError> {
        let prefix = prefix.into();
        match prefix.first() {
            None => Err(PrefixError::Empty),
            Some(0xff) => Err(PrefixError::SystemKeys),
            Some(_) if prefix.len() > KEY_PREFIX_BYTES_MAX => Err(PrefixError::TooLong {
                len: prefix.len(),
                max: KEY_PREFIX_BYTES_MAX,
            }),
            Some(_) => Ok(KeyPrefix(prefix)),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The cluster key of the interface key `key`.
    pub fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut prefixed = Vec::with_capacity(self.0.len() + key.len());
        prefixed.extend_from_slice(&self.0);
        prefixed.extend_from_slice(key);
        prefixed
    }

    /// The interface key of the cluster key `key`; a key outside the prefix is corrupt.
    pub fn strip<'a>(&self, key: &'a [u8]) -> Result<&'a [u8], StoreError> {
        key.strip_prefix(self.0.as_slice())
            .ok_or_else(|| StoreError::Corrupt {
                detail: format!("FoundationDB returned a key outside the store's prefix: {key:x?}"),
            })
    }

    /// The conflict range of one key: `[key, key\0)`.
    pub fn point_range(&self, key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let begin = self.key(key);
        let mut end = begin.clone();
        end.push(0);
        (begin, end)
    }

    /// Every cluster key of the store: `[prefix, strinc(prefix))`.
    pub fn whole_range(&self) -> (Vec<u8>, Vec<u8>) {
        (self.0.clone(), prefix_end(&self.0))
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        KeyPrefix(DEFAULT_PREFIX.to_vec())
    }
}

/// Where the next page of a range read starts: FoundationDB may return fewer rows than
/// asked and say there are more, so a read loops until the limit is met or the range ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeCursor {
    /// Cluster keys of the part of the range still to read.
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
    /// Rows still wanted.
    pub remaining: usize,
    pub reverse: bool,
}

impl RangeCursor {
    /// The cursor of a validated request.
    pub fn new(prefix: &KeyPrefix, request: &RangeRequest) -> Self {
        RangeCursor {
            begin: prefix.key(&request.begin),
            end: prefix.key(&request.end),
            remaining: request.limit,
            reverse: request.reverse,
        }
    }

    pub fn is_done(&self) -> bool {
        self.remaining == 0 || self.begin >= self.end
    }

    /// Moves past a page of `rows` rows whose last (in read order) cluster key is
    /// `last_key`; `more` is FoundationDB's "the range has more rows".
    pub fn advance(&mut self, rows: usize, last_key: Option<&[u8]>, more: bool) {
        self.remaining = self.remaining.saturating_sub(rows);
        match (more, last_key) {
            (true, Some(last)) if self.reverse => self.end = last.to_vec(),
            (true, Some(last)) => {
                self.begin = last.to_vec();
                self.begin.push(0);
            }
            // No more rows, or "more" without a row (cannot page on): the read is over.
            _ => self.remaining = 0,
        }
    }
}

/// Appends a page of cluster rows to `rows`, stripping the prefix.
pub fn strip_rows<'a>(
    prefix: &KeyPrefix,
    page: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    rows: &mut Vec<KeyValue>,
) -> Result<(), StoreError> {
    for (key, value) in page {
        rows.push((prefix.strip(key)?.to_vec(), value.to_vec()));
    }
    Ok(())
}

/// Why a FoundationDB version cannot be reported as a commit version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("versionstamp of {len} bytes; expected {VERSIONSTAMP_BYTES}")]
    BadVersionstamp { len: usize },
    #[error("FoundationDB version {version} is beyond the reportable {FDB_VERSION_MAX}")]
    OutOfRange { version: i64 },
}

/// The commit version reported for a transaction that FoundationDB committed with this
/// versionstamp: its commit version and its order inside the commit batch, so that two
/// transactions committed in the same batch (same FoundationDB version) still differ.
pub fn commit_version(versionstamp: &[u8]) -> Result<u64, VersionError> {
    let stamp: &[u8; VERSIONSTAMP_BYTES] =
        versionstamp
            .try_into()
            .map_err(|_| VersionError::BadVersionstamp {
                len: versionstamp.len(),
            })?;
    let mut version = [0u8; 8];
    version.copy_from_slice(&stamp[..8]);
    let version = u64::from_be_bytes(version);
    let order = u64::from(u16::from_be_bytes([stamp[8], stamp[9]]));
    if version > FDB_VERSION_MAX {
        return Err(VersionError::OutOfRange {
            version: version as i64,
        });
    }
    Ok((version << BATCH_ORDER_BITS) | order)
}

/// The version reported for a transaction that wrote nothing, read at `read_version`: after
/// every transaction committed at or before it, before every one committed later.
pub fn read_only_version(read_version: i64) -> Result<u64, VersionError> {
    let version = u64::try_from(read_version)
        .ok()
        .filter(|version| *version <= FDB_VERSION_MAX)
        .ok_or(VersionError::OutOfRange {
            version: read_version,
        })?;
    Ok((version << BATCH_ORDER_BITS) | u64::from(u16::MAX))
}

/// The bytes a transaction has buffered and read, checked against the limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SizeAccount {
    /// Bytes of keys, values, ranges and preconditions (`Transaction::size_bytes`).
    pub write_bytes: usize,
    pub writes: usize,
    pub read_bytes: usize,
}

impl SizeAccount {
    /// Charges a write (or a precondition, `is_write` false) of `bytes` bytes.
    pub fn charge_write(&mut self, bytes: usize, is_write: bool) -> Result<(), StoreError> {
        let total = self.write_bytes + bytes;
        let writes = self.writes + usize::from(is_write);
        if total > TRANSACTION_BYTES_MAX || writes > TRANSACTION_WRITES_MAX {
            return Err(StoreError::TransactionTooLarge {
                bytes: total,
                max: TRANSACTION_BYTES_MAX,
            });
        }
        self.write_bytes = total;
        self.writes = writes;
        Ok(())
    }

    /// Charges a read of keys or range bounds totalling `bytes` bytes.
    pub fn charge_read(&mut self, bytes: usize) -> Result<(), StoreError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_validated() {
        assert_eq!(KeyPrefix::new(Vec::new()), Err(PrefixError::Empty));
        assert_eq!(KeyPrefix::new(vec![0xff, 1]), Err(PrefixError::SystemKeys));
        let long = vec![b'p'; KEY_PREFIX_BYTES_MAX + 1];
        assert!(matches!(
            KeyPrefix::new(long),
            Err(PrefixError::TooLong { .. })
        ));
        assert!(KeyPrefix::new(vec![b'p'; KEY_PREFIX_BYTES_MAX]).is_ok());
        assert_eq!(KeyPrefix::default().as_bytes(), DEFAULT_PREFIX);
    }

    #[test]
    fn keys_are_prefixed_and_stripped() {
        let prefix = KeyPrefix::new(b"t/".to_vec()).expect("prefix");
        assert_eq!(prefix.key(b"abc"), b"t/abc");
        assert_eq!(prefix.key(&[0xff]), b"t/\xff");
        assert_eq!(prefix.strip(b"t/abc").expect("inside"), b"abc");
        assert_eq!(prefix.strip(b"t/").expect("empty key"), b"");
        assert!(matches!(
            prefix.strip(b"u/abc"),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(
            prefix.point_range(b"k"),
            (b"t/k".to_vec(), b"t/k\0".to_vec())
        );
        assert_eq!(prefix.whole_range(), (b"t/".to_vec(), b"t0".to_vec()));
    }

    #[test]
    fn the_largest_interface_key_fits_under_foundationdb_limit() {
        use crate::store::limits::{FDB_KEY_BYTES_MAX, KEY_BYTES_MAX};
        let prefix = KeyPrefix::new(vec![b'p'; KEY_PREFIX_BYTES_MAX]).expect("prefix");
        assert_eq!(
            prefix.key(&vec![b'k'; KEY_BYTES_MAX]).len(),
            FDB_KEY_BYTES_MAX
        );
    }

    #[test]
    fn forward_cursor_pages_after_the_last_key() {
        let prefix = KeyPrefix::new(b"t/".to_vec()).expect("prefix");
        let request = RangeRequest::new(b"a".to_vec(), b"z".to_vec(), 10);
        let mut cursor = RangeCursor::new(&prefix, &request);
        assert_eq!(
            (cursor.begin.as_slice(), cursor.end.as_slice()),
            (&b"t/a"[..], &b"t/z"[..])
        );
        cursor.advance(4, Some(b"t/d"), true);
        assert_eq!(cursor.begin, b"t/d\0");
        assert_eq!(cursor.end, b"t/z");
        assert_eq!(cursor.remaining, 6);
        assert!(!cursor.is_done());
        cursor.advance(6, Some(b"t/k"), true);
        assert!(cursor.is_done(), "limit reached");
    }

    #[test]
    fn reverse_cursor_pages_before_the_last_key() {
        let prefix = KeyPrefix::new(b"t/".to_vec()).expect("prefix");
        let mut request = RangeRequest::new(b"a".to_vec(), b"z".to_vec(), 10);
        request.reverse = true;
        let mut cursor = RangeCursor::new(&prefix, &request);
        cursor.advance(3, Some(b"t/q"), true);
        assert_eq!(
            (cursor.begin.as_slice(), cursor.end.as_slice()),
            (&b"t/a"[..], &b"t/q"[..])
        );
        cursor.advance(1, Some(b"t/p"), false);
        assert!(
            cursor.is_done(),
            "FoundationDB said the range has no more rows"
        );
    }

    #[test]
    fn a_zero_limit_reads_nothing() {
        let prefix = KeyPrefix::default();
        let request = RangeRequest::new(b"a".to_vec(), b"b".to_vec(), 0);
        assert!(RangeCursor::new(&prefix, &request).is_done());
    }

    #[test]
    fn commit_versions_order_by_version_then_batch_order() {
        let stamp = |version: u64, order: u16| {
            let mut stamp = version.to_be_bytes().to_vec();
            stamp.extend_from_slice(&order.to_be_bytes());
            stamp
        };
        let first = commit_version(&stamp(1_000, 0)).expect("version");
        let second = commit_version(&stamp(1_000, 1)).expect("version");
        let third = commit_version(&stamp(1_001, 0)).expect("version");
        assert!(first < second && second < third);
        assert_eq!(first, 1_000 << BATCH_ORDER_BITS);
        let read_only = read_only_version(1_000).expect("version");
        assert!(second < read_only && read_only < third);
        assert!(commit_version(&stamp(FDB_VERSION_MAX, u16::MAX)).is_ok());
        assert!(matches!(
            commit_version(&stamp(FDB_VERSION_MAX + 1, 0)),
            Err(VersionError::OutOfRange { .. })
        ));
        assert!(matches!(
            commit_version(&[0; 8]),
            Err(VersionError::BadVersionstamp { len: 8 })
        ));
        assert!(read_only_version(-1).is_err());
    }

    #[test]
    fn size_account_enforces_the_limits() {
        let mut account = SizeAccount::default();
        account
            .charge_write(TRANSACTION_BYTES_MAX, true)
            .expect("exactly the limit");
        let error = account.charge_write(1, true).expect_err("one byte over");
        assert!(
            matches!(error, StoreError::TransactionTooLarge { bytes, .. }
            if bytes == TRANSACTION_BYTES_MAX + 1)
        );
        assert_eq!(
            account.write_bytes, TRANSACTION_BYTES_MAX,
            "a refused write is not charged"
        );
        let mut account = SizeAccount::default();
        for _ in 0..TRANSACTION_WRITES_MAX {
            account.charge_write(0, true).expect("empty write");
        }
        assert!(
            account.charge_write(0, true).is_err(),
            "write count bounded"
        );
        assert!(
            account.charge_write(0, false).is_ok(),
            "preconditions are not writes"
        );
        account
            .charge_read(TRANSACTION_READ_BYTES_MAX)
            .expect("read limit");
        assert!(account.charge_read(1).is_err());
    }
}
