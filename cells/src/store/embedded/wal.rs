//! The write-ahead log: record codec, segment files, the appending writer and recovery.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::store::StoreError;

use super::memtable::Tables;
use super::WAL_RECORD_BYTES_MAX;

/// One write of a transaction, borrowed from its [`WriteBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write<'a> {
    Set(&'a [u8], &'a [u8]),
    Clear(&'a [u8]),
    ClearRange(&'a [u8], &'a [u8]),
}

/// A transaction's writes, in order, in one buffer encoded exactly as the body of its log
/// record: the committer copies the body into the log with one `memcpy`, and a transaction
/// costs one allocation for its writes instead of two per write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WriteBatch {
    body: Vec<u8>,
    count: u32,
    has_range: bool,
}

impl WriteBatch {
    pub(crate) fn push(&mut self, write: Write<'_>) {
        match write {
            Write::Set(key, value) => {
                self.body.push(TAG_SET);
                put_bytes(&mut self.body, key);
                put_bytes(&mut self.body, value);
            }
            Write::Clear(key) => {
                self.body.push(TAG_CLEAR);
                put_bytes(&mut self.body, key);
            }
            Write::ClearRange(begin, end) => {
                self.body.push(TAG_CLEAR_RANGE);
                put_bytes(&mut self.body, begin);
                put_bytes(&mut self.body, end);
                self.has_range = true;
            }
        }
        self.count += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.body.reserve(bytes);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether a range clear is among the writes.
    pub(crate) fn has_range(&self) -> bool {
        self.has_range
    }

    pub(crate) fn iter(&self) -> WriteIter<'_> {
        WriteIter {
            reader: Reader { bytes: &self.body },
        }
    }

    /// Checks a log record body of `count` writes and takes it as a batch.
    fn decode(body: &[u8], count: usize) -> Result<WriteBatch, StoreError> {
        let mut reader = Reader { bytes: body };
        let mut has_range = false;
        for _ in 0..count {
            match read_write(&mut reader)? {
                Write::ClearRange(..) => has_range = true,
                Write::Set(..) | Write::Clear(..) => {}
            }
        }
        if !reader.bytes.is_empty() {
            return Err(corrupt("log record has trailing bytes"));
        }
        Ok(WriteBatch {
            body: body.to_vec(),
            count: u32::try_from(count).map_err(|_| corrupt("log record write count"))?,
            has_range,
        })
    }
}

/// The writes of a [`WriteBatch`], in order.
pub(crate) struct WriteIter<'a> {
    reader: Reader<'a>,
}

impl<'a> Iterator for WriteIter<'a> {
    type Item = Write<'a>;

    fn next(&mut self) -> Option<Write<'a>> {
        if self.reader.bytes.is_empty() {
            return None;
        }
        // A batch is built by `push` or checked by `decode`: its body always parses.
        Some(read_write(&mut self.reader).expect("a write batch body is well formed"))
    }
}

fn read_write<'a>(reader: &mut Reader<'a>) -> Result<Write<'a>, StoreError> {
    let tag = reader.take(1)?[0];
    Ok(match tag {
        TAG_SET => Write::Set(reader.slice()?, reader.slice()?),
        TAG_CLEAR => Write::Clear(reader.slice()?),
        TAG_CLEAR_RANGE => Write::ClearRange(reader.slice()?, reader.slice()?),
        other => return Err(corrupt(format!("unknown log write tag {other}"))),
    })
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
pub(crate) fn encode_record(buffer: &mut Vec<u8>, version: u64, writes: &WriteBatch) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    buffer.extend_from_slice(&version.to_le_bytes());
    buffer.extend_from_slice(&writes.count.to_le_bytes());
    buffer.extend_from_slice(&writes.body);
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

    fn slice(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

/// Decodes a payload whose checksum held.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<(u64, WriteBatch), StoreError> {
    let mut reader = Reader { bytes: payload };
    let version_bytes = reader.take(8)?;
    let mut version = [0u8; 8];
    version.copy_from_slice(version_bytes);
    let count = reader.u32()? as usize;
    // Every write takes at least 5 bytes: a bound that a corrupt count cannot exceed.
    if count > payload.len() / 5 {
        return Err(corrupt("log record write count exceeds its payload"));
    }
    let writes = WriteBatch::decode(reader.bytes, count)?;
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
            tables.apply(checkpoint, &writes)?;
            replay.last_version = version;
            replay.records += 1;
            Ok(())
        })?;
        if replay.records > records_before {
            replay.log_bytes += valid_len as u64;
        }
        if valid_len < bytes.len() && bytes[valid_len..].iter().all(|byte| *byte == 0) {
            tracing::debug!(
                segment = %path.display(),
                zeros = bytes.len() - valid_len,
                "cutting the preallocated zeros after the last record"
            );
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        } else if valid_len < bytes.len() {
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
    mut apply: impl FnMut(u64, WriteBatch) -> Result<(), StoreError>,
) -> Result<usize, StoreError> {
    let mut offset = 0;
    while offset < bytes.len() {
        match record_at(bytes, offset) {
            Some((payload, next)) => {
                let (version, writes) = decode_payload(payload)?;
                apply(version, writes)?;
                offset = next;
            }
            // Zeros the writer preallocated, or a record torn by a crash (which only the
            // last segment can hold: rotation cuts a segment back to its records).
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

/// Bytes of zeros the writer adds past the end of the log at a time. Overwriting blocks
/// that already exist lets `fdatasync` flush data only; an append also has to persist the
/// file's new size and block allocation, which measured about twice as slow per sync on
/// this machine's disk (0.16 vs 0.09 ms) with rare stalls of tens of milliseconds.
pub(crate) const WAL_PREALLOCATE_BYTES: u64 = 1 << 20;

/// Zeros written per call when preallocating.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Appends groups to the active segment.
///
/// The segment is extended with zeros ahead of the records ([`WAL_PREALLOCATE_BYTES`] at a
/// time, in the same sync as the group that needs them), so a crash can leave zeros after
/// the last record of the last segment; recovery treats them as the end of the log. A
/// closed or rotated segment is cut back to its records.
pub(crate) struct WalWriter {
    dir: PathBuf,
    file: File,
    sync: bool,
    /// Bytes of records in the segment (where the next group goes).
    len: u64,
    /// Length of the file: records, then zeros.
    allocated: u64,
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
            len: 0,
            allocated: 0,
        })
    }

    /// Appends `bytes` and makes them durable; returns how long the write (before the sync)
    /// took, so the committer can tell a slow write from a slow sync.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<std::time::Duration, StoreError> {
        let started = std::time::Instant::now();
        self.write(bytes)?;
        let written = started.elapsed();
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(written)
    }

    /// Writes without syncing (the torn-write failpoint).
    pub(crate) fn append_unsynced(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt as _;
        let end = self.len + bytes.len() as u64;
        if end > self.allocated {
            self.preallocate(end)?;
        }
        self.file.write_all_at(bytes, self.len)?;
        self.len = end;
        Ok(())
    }

    /// Extends the file with zeros to cover `end` and the next chunk after it.
    fn preallocate(&mut self, end: u64) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt as _;
        let target = end.div_ceil(WAL_PREALLOCATE_BYTES) * WAL_PREALLOCATE_BYTES;
        // Zeros from where the records will end (the group itself overwrites the part
        // before it, so only what lies past the records and past the old length is written).
        let mut at = self.allocated.max(end);
        while at < target {
            let count = (target - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..count], at)?;
            at += count as u64;
        }
        self.allocated = target;
        metrics::counter!("tessera_store_wal_preallocated_bytes_total").increment(target - end);
        Ok(())
    }

    /// Cuts the zeros after the last record and syncs: a closed segment ends at its last
    /// record.
    pub(crate) fn finish(&mut self) -> Result<(), StoreError> {
        if self.allocated > self.len {
            self.file.set_len(self.len)?;
            self.allocated = self.len;
        }
        if self.sync {
            self.file.sync_all()?;
        }
        Ok(())
    }

    /// Closes the active segment and starts the next one at `first_version`.
    pub(crate) fn rotate(&mut self, first_version: u64) -> Result<(), StoreError> {
        self.finish()?;
        *self = WalWriter::create(&self.dir, first_version, self.sync)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let list = [
            Write::Set(b"a", b"1"),
            Write::Clear(b"b"),
            Write::ClearRange(b"c", b"d"),
            Write::Set(b"", b""),
        ];
        let mut writes = WriteBatch::default();
        list.iter().for_each(|write| writes.push(*write));
        assert!(writes.has_range());
        assert_eq!(writes.iter().collect::<Vec<_>>(), list);
        let mut buffer = Vec::new();
        encode_record(&mut buffer, 7, &writes);
        let (payload, next) = record_at(&buffer, 0).expect("whole record");
        assert_eq!(next, buffer.len());
        assert_eq!(decode_payload(payload).expect("decodes"), (7, writes));
        buffer[10] ^= 1;
        assert!(record_at(&buffer, 0).is_none());
    }
}
