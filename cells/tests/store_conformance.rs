//! Runs the storage conformance suite against the embedded backend, one test per check.

use std::sync::Arc;

use cells::store::conformance::{self, ConformanceTarget};
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::Store;

/// A short age limit so that the too-old check waits a fraction of a second.
const TEST_TRANSACTION_DURATION_MS_MAX: u64 = 300;

/// Each `open` starts an empty store in a new directory; `reopen` opens the last one again.
struct Embedded {
    dirs: Vec<tempfile::TempDir>,
    options: EmbeddedOptions,
}

impl Embedded {
    fn new() -> Self {
        let options = EmbeddedOptions {
            transaction_duration_ms_max: TEST_TRANSACTION_DURATION_MS_MAX,
            ..EmbeddedOptions::default()
        };
        Embedded {
            dirs: Vec::new(),
            options,
        }
    }

    fn open_last(&self) -> Arc<dyn Store> {
        let dir = self.dirs.last().expect("opened before").path();
        EmbeddedStore::open(dir, self.options.clone()).expect("open the store")
    }
}

impl ConformanceTarget for Embedded {
    fn open(&mut self) -> Arc<dyn Store> {
        self.dirs
            .push(tempfile::tempdir().expect("temporary directory"));
        self.open_last()
    }

    fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the test holds the last handle"
        );
        drop(store);
        self.open_last()
    }

    fn transaction_duration_ms_max(&self) -> u64 {
        TEST_TRANSACTION_DURATION_MS_MAX
    }
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                conformance::$check(&mut Embedded::new());
            }
        )*
    };
}

conformance_tests!(
    check_key_order_and_ranges,
    check_read_your_writes,
    check_clears,
    check_conflict_on_key,
    check_conflict_on_range,
    check_blind_writes_never_conflict,
    check_preconditions,
    check_atomic_visibility,
    check_limits,
    check_limits_nothing_written,
    check_transaction_too_old,
    check_durability_across_reopen,
    check_concurrent_committers,
    check_commit_versions_increase,
);

/// The same checks through `run_all`, with tiny memtables so that reads also cross frozen
/// memtables and the checkpoint.
#[test]
fn run_all_with_tiny_memtables() {
    let mut target = Embedded::new();
    target.options.memtable_bytes_max = 4 * 1024;
    target.options.wal_bytes_max = 16 * 1024;
    conformance::run_all(&mut target);
}

/// The same checks with every key the suite writes kept in the memtables' point hash tables
/// (the prefix `[]` covers all keys): lookups, ranges, clears, preconditions and reopens go
/// through the tables instead of the B-tree, across frozen memtables and the checkpoint.
#[test]
fn run_all_with_every_key_under_a_point_prefix() {
    let mut target = Embedded::new();
    target.options.memtable_bytes_max = 4 * 1024;
    target.options.wal_bytes_max = 16 * 1024;
    target.options.transient_prefixes = Vec::new();
    target.options.point_prefixes = vec![Vec::new()];
    conformance::run_all(&mut target);
}
