//! The write-ahead log: record codec, segment files, the appending writer and recovery.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::store::StoreError;

use super::memtable::Tables;
use super::WAL_RECORD_BYTES_MAX;

/// One buffered write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
}

const TAG_SET: u8 = 1;
const TAG_CLEAR: u8 = 2;
const TAG_CLEAR_RANGE: u8 = 3;
/// `[u32 length][u32 crc32]`.
const RECORD_HEADER_BYTES: usize = 8;
/// `[u64 version][u32 write count]`.
const PAYLOAD_HEADER_BYTES: usize = 12;

pub(crate) fn segment_name(first_version: u64) -> String {
    format!("wal-{first_version:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Log segments in `dir`, ordered by the first version they hold.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn put_bytes(buffer: &mut Vec<u8>, bytes: &[u8]) {
    buffer.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buffer.extend_from_slice(bytes);
}

/// Appends one record holding a transaction's writes at `version`.
pub(crate) fn encode_record(buffer: &mut Vec<u8>, version: u64, writes: &[Write]) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    buffer.extend_from_slice(&version.to_le_bytes());
    buffer.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for write in writes {
        match write {
            Write::Set(key, value) => {
                buffer.push(TAG_SET);
                put_bytes(buffer, key);
                put_bytes(buffer, value);
            }
            Write::Clear(key) => {
                buffer.push(TAG_CLEAR);
                put_bytes(buffer, key);
            }
            Write::ClearRange(begin, end) => {
                buffer.push(TAG_CLEAR_RANGE);
                put_bytes(buffer, begin);
                put_bytes(buffer, end);
            }
        }
    }
    let payload_len = buffer.len() - start - RECORD_HEADER_BYTES;
    assert!(
        payload_len <= WAL_RECORD_BYTES_MAX,
        "transaction limits bound a record"
    );
    let crc = crc32fast::hash(&buffer[start + RECORD_HEADER_BYTES..]);
    buffer[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        detail: detail.into(),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < count {
            return Err(corrupt("log record payload ends early"));
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn vec(&mut self) -> Result<Vec<u8>, StoreError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
}

/// Decodes a payload whose checksum held.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<(u64, Vec<Write>), StoreError> {
    let mut reader = Reader { bytes: payload };
    let version_bytes = reader.take(8)?;
    let mut version = [0u8; 8];
    version.copy_from_slice(version_bytes);
    let count = reader.u32()? as usize;
    // Every write takes at least 5 bytes: a bound that a corrupt count cannot exceed.
    if count > payload.len() / 5 {
        return Err(corrupt("log record write count exceeds its payload"));
    }
    let mut writes = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = reader.take(1)?[0];
        writes.push(match tag {
            TAG_SET => Write::Set(reader.vec()?, reader.vec()?),
            TAG_CLEAR => Write::Clear(reader.vec()?),
            TAG_CLEAR_RANGE => Write::ClearRange(reader.vec()?, reader.vec()?),
            other => return Err(corrupt(format!("unknown log write tag {other}"))),
        });
    }
    if !reader.bytes.is_empty() {
        return Err(corrupt("log record has trailing bytes"));
    }
    Ok((u64::from_le_bytes(version), writes))
}

/// The payload of the record at `offset` and the offset after it, if the record is whole
/// and its checksum holds.
fn record_at(bytes: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(offset..offset + RECORD_HEADER_BYTES)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(PAYLOAD_HEADER_BYTES..=WAL_RECORD_BYTES_MAX).contains(&len) {
        return None;
    }
    let start = offset + RECORD_HEADER_BYTES;
    let payload = bytes.get(start..start + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, start + len))
}

/// Whether a whole, checksummed record starts anywhere after `offset`.
fn valid_record_after(bytes: &[u8], offset: usize) -> bool {
    (offset + 1..bytes.len()).any(|candidate| record_at(bytes, candidate).is_some())
}

/// What recovery found.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Version of the last record (or of the checkpoint if no record follows it).
    pub(crate) last_version: u64,
    /// Records applied to the memtable.
    pub(crate) records: u64,
    /// Bytes of log holding records after the checkpoint (to trigger the next freeze).
    pub(crate) log_bytes: u64,
}

/// Replays every record after `checkpoint_version` into `tables`, truncating a torn tail of
/// the last segment.
pub(crate) fn replay(
    dir: &Path,
    checkpoint_version: u64,
    tables: &mut Tables,
    checkpoint: &fjall::Keyspace,
) -> Result<Replay, StoreError> {
    let segments = list_segments(dir)?;
    let mut replay = Replay {
        last_version: checkpoint_version,
        ..Replay::default()
    };
    for (index, (_, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let bytes = std::fs::read(path)?;
        let records_before = replay.records;
        let valid_len = replay_segment(&bytes, is_last, |version, writes| {
            if version <= checkpoint_version {
                return Ok(());
            }
            if version != replay.last_version + 1 {
                return Err(corrupt(format!(
                    "log version {version} follows {} in {}",
                    replay.last_version,
                    path.display()
                )));
            }
            tables.apply(checkpoint, writes)?;
            replay.last_version = version;
            replay.records += 1;
            Ok(())
        })?;
        if replay.records > records_before {
            replay.log_bytes += valid_len as u64;
        }
        if valid_len < bytes.len() {
            tracing::warn!(
                segment = %path.display(),
                valid_bytes = valid_len,
                dropped_bytes = bytes.len() - valid_len,
                "truncating torn tail of the log"
            );
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
    }
    Ok(replay)
}

/// Calls `apply` for every record of a segment; returns the length of its valid prefix.
fn replay_segment(
    bytes: &[u8],
    is_last: bool,
    mut apply: impl FnMut(u64, Vec<Write>) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    let mut offset = 0;
    while offset < bytes.len() {
        match record_at(bytes, offset) {
            Some((payload, next)) => {
                let (version, writes) = decode_payload(payload)?;
                apply(version, writes)?;
                offset = next;
            }
            None if is_last && !valid_record_after(bytes, offset) => return Ok(offset),
            None => {
                return Err(corrupt(format!(
                    "bad log record at offset {offset} followed by valid data"
                )))
            }
        }
    }
    Ok(offset)
}

/// Appends groups to the active segment.
pub(crate) struct WalWriter {
    dir: PathBuf,
    file: File,
    sync: bool,
}

impl WalWriter {
    /// Starts a new segment whose first record will be `first_version`.
    pub(crate) fn create(dir: &Path, first_version: u64, sync: bool) -> Result<Self, StoreError> {
        let path = dir.join(segment_name(first_version));
        // A segment of this name can only hold a torn record (recovery applied nothing from
        // it), so it is started afresh.
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(dir)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            file,
            sync,
        })
    }

    /// Appends `bytes` and makes them durable.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Writes without syncing (the torn-write failpoint).
    pub(crate) fn append_unsynced(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes)?;
        Ok(())
    }

    /// Closes the active segment and starts the next one at `first_version`.
    pub(crate) fn rotate(&mut self, first_version: u64) -> Result<(), StoreError> {
        if self.sync {
            self.file.sync_all()?;
        }
        *self = WalWriter::create(&self.dir, first_version, self.sync)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let writes = vec![
            Write::Set(b"a".to_vec(), b"1".to_vec()),
            Write::Clear(b"b".to_vec()),
            Write::ClearRange(b"c".to_vec(), b"d".to_vec()),
            Write::Set(Vec::new(), Vec::new()),
        ];
        let mut buffer = Vec::new();
        encode_record(&mut buffer, 7, &writes);
        let (payload, next) = record_at(&buffer, 0).expect("whole record");
        assert_eq!(next, buffer.len());
        assert_eq!(decode_payload(payload).expect("decodes"), (7, writes));
        buffer[10] ^= 1;
        assert!(record_at(&buffer, 0).is_none());
    }
}
