//! Counters the ledger keeps for benchmarks and tests (also exported through `metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Shared counters of one ledger.
#[derive(Debug)]
pub struct LedgerStats {
    /// Transfers (and captures) whose debit leg is durable.
    pub debits_committed: AtomicU64,
    /// Credit legs durable at the payee.
    pub credits_committed: AtomicU64,
    /// Store commits made by account actors.
    pub commits: AtomicU64,
    /// Outbox rescans the relay started (a safety net: none in a healthy run standalone).
    pub outbox_rescans: AtomicU64,
    commit_latency_us: Mutex<Histogram<u64>>,
}

impl Default for LedgerStats {
    fn default() -> Self {
        LedgerStats {
            debits_committed: AtomicU64::new(0),
            credits_committed: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            outbox_rescans: AtomicU64::new(0),
            commit_latency_us: Mutex::new(cells::store::latency_histogram()),
        }
    }
}

impl LedgerStats {
    pub(crate) fn record_commit(&self, latency: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Ok(mut histogram) = self.commit_latency_us.lock() {
            histogram.saturating_record(micros);
        }
        metrics::histogram!("tessera_actors_commit_latency_seconds").record(latency.as_secs_f64());
    }

    /// A copy of the commit-latency histogram (microseconds), and resets it.
    pub fn take_commit_latency(&self) -> Histogram<u64> {
        match self.commit_latency_us.lock() {
            Ok(mut histogram) => {
                let copy = histogram.clone();
                histogram.reset();
                copy
            }
            Err(_) => Histogram::new(3).expect("valid precision"),
        }
    }

    pub fn debits(&self) -> u64 {
        self.debits_committed.load(Ordering::Acquire)
    }

    pub fn rescans(&self) -> u64 {
        self.outbox_rescans.load(Ordering::Acquire)
    }

    pub fn credits(&self) -> u64 {
        self.credits_committed.load(Ordering::Acquire)
    }
}
