//! The storage conformance suite against a real FoundationDB cluster.
//!
//! Runs only when the binary is built with the `fdb` feature (which needs `libfdb_c` to
//! link, so CI never builds it) and `TESSERA_FDB_CLUSTER_FILE` names a cluster file. In
//! every other case the test prints why it was skipped — it never passes silently having
//! checked nothing, and it never talks to anything but a real cluster.
//!
//! ```text
//! TESSERA_FDB_CLUSTER_FILE=/etc/foundationdb/fdb.cluster \
//!     cargo test --release -p cells --features fdb --test fdb_conformance -- --nocapture
//! ```
//!
//! Each opened store lives under its own fresh prefix (`tessera-test/<pid>/<n>/`, so that no prefix starts another), cleared
//! before use and after the run; nothing outside it is read or written.

/// The environment variable naming the cluster file.
pub const CLUSTER_FILE_VAR: &str = "TESSERA_FDB_CLUSTER_FILE";

#[cfg(not(feature = "fdb"))]
#[test]
fn conformance_against_foundationdb() {
    println!(
        "SKIPPED conformance_against_foundationdb: built without the `fdb` feature \
         (linking it needs libfdb_c, which this machine does not have); \
         rebuild with `--features fdb` and set {CLUSTER_FILE_VAR} to run it"
    );
}

#[cfg(feature = "fdb")]
mod with_fdb {
    use std::path::PathBuf;
    use std::sync::Arc;

    use cells::store::conformance::{self, ConformanceTarget};
    use cells::store::fdb::{FdbNetwork, FdbOptions, FdbStore};
    use cells::store::fdb_layout::KeyPrefix;
    use cells::store::Store;
    use futures::executor::block_on;

    use super::CLUSTER_FILE_VAR;

    /// A short age limit so that the too-old check waits a fraction of a second.
    const TEST_TRANSACTION_DURATION_MS_MAX: u64 = 1_000;

    struct Target {
        cluster_file: PathBuf,
        opened: u32,
        stores: Vec<KeyPrefix>,
    }

    impl Target {
        fn prefix(&self) -> KeyPrefix {
            let text = format!("tessera-test/{}/{:04}/", std::process::id(), self.opened);
            KeyPrefix::new(text.into_bytes()).expect("a valid prefix")
        }

        fn open_prefix(&self, prefix: KeyPrefix) -> Arc<FdbStore> {
            let options = FdbOptions {
                prefix,
                transaction_duration_ms_max: TEST_TRANSACTION_DURATION_MS_MAX,
            };
            FdbStore::open(&self.cluster_file, options).expect("open the FoundationDB store")
        }
    }

    impl ConformanceTarget for Target {
        fn open(&mut self) -> Arc<dyn Store> {
            self.opened += 1;
            let prefix = self.prefix();
            let store = self.open_prefix(prefix.clone());
            block_on(store.clear_all()).expect("clear the test prefix");
            self.stores.push(prefix);
            store
        }

        fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
            drop(store);
            self.open_prefix(self.prefix())
        }

        fn transaction_duration_ms_max(&self) -> u64 {
            TEST_TRANSACTION_DURATION_MS_MAX
        }
    }

    #[test]
    fn conformance_against_foundationdb() {
        let Some(cluster_file) = std::env::var_os(CLUSTER_FILE_VAR) else {
            println!(
                "SKIPPED conformance_against_foundationdb: {CLUSTER_FILE_VAR} is not set \
                 (point it at a cluster file of a test cluster to run the suite)"
            );
            return;
        };
        // SAFETY: started once in this test binary, and dropped after every store.
        let network = unsafe { FdbNetwork::boot() }.expect("start the FoundationDB network");
        let mut target = Target {
            cluster_file: PathBuf::from(cluster_file),
            opened: 0,
            stores: Vec::new(),
        };
        conformance::run_all(&mut target);
        for prefix in std::mem::take(&mut target.stores) {
            let store = target.open_prefix(prefix);
            block_on(store.clear_all()).expect("clear the test prefix");
        }
        drop(network);
    }
}
