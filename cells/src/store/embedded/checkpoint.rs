//! Checkpoints: the checkpointer thread ingests a frozen memtable into fjall, records the
//! last log version it covers, deletes the covered log segments and drops the memtable.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::store::StoreError;

use super::memtable::Memtable;
use super::wal::{list_segments, sync_dir};
use super::Shared;

const CHECKPOINT_DIR: &str = "checkpoint";
const KEYSPACE_NAME: &str = "data";
const POSITION_FILE: &str = "checkpoint.position";
const POSITION_FILE_TEMPORARY: &str = "checkpoint.position.tmp";
/// fjall's block cache.
const CHECKPOINT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// The checkpoint thread's nice value (0 is normal, 19 the lowest priority).
const CHECKPOINT_NICE: i32 = 10;

/// A frozen memtable to checkpoint: it holds every record before `next_version`.
pub(crate) struct CheckpointJob {
    pub(crate) memtable: Arc<Memtable>,
    pub(crate) next_version: u64,
}

pub(crate) fn fjall(error: fjall::Error) -> StoreError {
    StoreError::Backend {
        detail: format!("checkpoint store: {error}"),
    }
}

pub(crate) fn open_checkpoint(
    dir: &Path,
) -> Result<(fjall::Database, fjall::Keyspace), StoreError> {
    let database = fjall::Database::builder(dir.join(CHECKPOINT_DIR))
        .cache_size(CHECKPOINT_CACHE_BYTES)
        .worker_threads(1)
        .open()
        .map_err(fjall)?;
    let keyspace = database
        .keyspace(KEYSPACE_NAME, fjall::KeyspaceCreateOptions::default)
        .map_err(fjall)?;
    Ok((database, keyspace))
}

/// The last log version the checkpoint holds (0: none).
pub(crate) fn read_position(dir: &Path) -> Result<u64, StoreError> {
    let bytes = match std::fs::read(dir.join(POSITION_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error.into()),
    };
    let corrupt = || StoreError::Corrupt {
        detail: "checkpoint position file".to_string(),
    };
    let version: [u8; 8] = bytes
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let crc: [u8; 4] = bytes
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    if bytes.len() != 12 || crc32fast::hash(&version) != u32::from_le_bytes(crc) {
        return Err(corrupt());
    }
    Ok(u64::from_le_bytes(version))
}

fn write_position(dir: &Path, version: u64) -> Result<(), StoreError> {
    let mut bytes = version.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&version.to_le_bytes()).to_le_bytes());
    let temporary = dir.join(POSITION_FILE_TEMPORARY);
    std::fs::write(&temporary, &bytes)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, dir.join(POSITION_FILE))?;
    sync_dir(dir)
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    jobs: Receiver<CheckpointJob>,
) -> Result<JoinHandle<()>, StoreError> {
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".to_string())
        .spawn(move || {
            yield_to_commits();
            while let Ok(job) = jobs.recv() {
                let span = tracing::info_span!("store_checkpoint", next_version = job.next_version);
                let _entered = span.enter();
                if let Err(error) = checkpoint(&shared, &job) {
                    // The frozen memtable stays and keeps serving reads; its log segments stay, so
                    // a restart replays them. Commits go on over the soft memtable limit.
                    metrics::counter!("tessera_store_checkpoint_errors_total").increment(1);
                    tracing::error!(%error, "checkpoint failed; log segments kept");
                }
            }
        })?;
    Ok(thread)
}

/// Lowers the calling thread's scheduling priority to at least nice [`CHECKPOINT_NICE`]: a
/// checkpoint is background work with a whole memtable's time to finish, and on a machine
/// whose cores are busy it took them from the committer and the account actors, whose
/// commits then waited behind it (BENCHMARKS.md, round 16). Linux keeps a nice value per
/// thread; raising it needs no privilege, and a thread already nicer keeps its value. Where
/// it fails, the thread runs at the priority it has.
#[cfg(target_os = "linux")]
fn yield_to_commits() {
    // SAFETY: `gettid`, `getpriority` and `setpriority` take plain integers and touch no
    // memory of ours.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // The whole range of nice values (-20..=19) is valid: -1 is no error here.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if current >= CHECKPOINT_NICE {
        return;
    }
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, CHECKPOINT_NICE) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the checkpoint thread's priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_commits() {}

fn checkpoint(shared: &Shared, job: &CheckpointJob) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut ingestion = shared.checkpoint.start_ingestion().map_err(fjall)?;
    for (key, value) in job.memtable.entries() {
        match value {
            Some(value) => ingestion.write(key, value),
            None => ingestion.write_tombstone(key),
        }
        .map_err(fjall)?;
    }
    ingestion.finish().map_err(fjall)?;
    write_position(&shared.dir, job.next_version - 1)?;
    let mut segments_deleted = 0u64;
    for (first_version, path) in list_segments(&shared.dir)? {
        if first_version < job.next_version {
            std::fs::remove_file(&path)?;
            segments_deleted += 1;
        }
    }
    // The frozen memtable cannot change: read its transient keys before taking the lock.
    let changes = shared.tables.read().transient.changes(&job.memtable);
    shared.tables.write().checkpointed(changes);
    metrics::counter!("tessera_store_checkpoints_total").increment(1);
    metrics::histogram!("tessera_store_checkpoint_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(
        entries = job.memtable.len(),
        bytes = job.memtable.bytes(),
        segments_deleted,
        checkpoint_ms = started.elapsed().as_millis() as u64,
        "checkpoint written"
    );
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of the calling thread, as the kernel keeps it for that thread.
    fn own_nice() -> i32 {
        // SAFETY: plain integer arguments; no memory of ours is touched.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn the_checkpoint_thread_runs_below_normal_priority_and_others_keep_theirs() {
        let before = std::thread::spawn(own_nice).join().expect("thread");
        let lowered = std::thread::spawn(|| {
            yield_to_commits();
            own_nice()
        })
        .join()
        .expect("thread");
        let after = std::thread::spawn(own_nice).join().expect("thread");
        assert_eq!(lowered, before.max(CHECKPOINT_NICE));
        // Per thread: the process and threads started later keep their priority.
        assert_eq!(after, before);
        assert_eq!(own_nice(), before);
    }
}
