//! Opens the store a command names by URL (`embedded:`, `remote:`, `fdb:`).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::url::StoreUrl;
use cells::store::Store;
use wire::remote::{ClientOptions, RemoteStore};

/// An open store, and (with FoundationDB) the client network that must outlive it.
pub struct OpenStore {
    pub store: Arc<dyn Store>,
    #[cfg(feature = "fdb")]
    _network: Option<cells::store::fdb::FdbNetwork>,
}

impl OpenStore {
    /// Opens the embedded store in `dir` with `options`.
    pub fn open_embedded(dir: &std::path::Path, options: EmbeddedOptions) -> Result<OpenStore> {
        let store: Arc<dyn Store> = EmbeddedStore::open(dir, options)
            .with_context(|| format!("cannot open the store in {}", dir.display()))?;
        Ok(OpenStore {
            store,
            #[cfg(feature = "fdb")]
            _network: None,
        })
    }

    /// Opens `url`. A remote store must answer within the client's connect timeout.
    pub fn open(url: &StoreUrl) -> Result<OpenStore> {
        let store: Arc<dyn Store> = match url {
            StoreUrl::Embedded(dir) => {
                return OpenStore::open_embedded(dir, EmbeddedOptions::default())
            }
            StoreUrl::Remote { host, port } => {
                let addr = format!("{host}:{port}");
                Arc::new(
                    RemoteStore::connect(&addr, ClientOptions::default())
                        .with_context(|| format!("cannot reach the store server at {addr}"))?,
                )
            }
            StoreUrl::Fdb(cluster_file) => return open_fdb(cluster_file),
        };
        Ok(OpenStore {
            store,
            #[cfg(feature = "fdb")]
            _network: None,
        })
    }
}

/// The environment variable naming the deployment's key prefix in FoundationDB.
#[cfg(feature = "fdb")]
pub const FDB_PREFIX_VAR: &str = "TESSERA_FDB_PREFIX";

#[cfg(feature = "fdb")]
fn open_fdb(cluster_file: &std::path::Path) -> Result<OpenStore> {
    use cells::store::fdb::{FdbNetwork, FdbOptions, FdbStore};
    // SAFETY: the guard lives in the returned `OpenStore`, which every command holds until
    // it returns from `main`; no command ends the process with `exit` while it is alive.
    let network = unsafe { FdbNetwork::boot() }.context("cannot start the FoundationDB client")?;
    // The deployment's key prefix (several deployments or test runs share one cluster).
    let mut options = FdbOptions::default();
    if let Ok(prefix) = std::env::var(FDB_PREFIX_VAR) {
        options.prefix = cells::store::fdb_layout::KeyPrefix::new(prefix.into_bytes())
            .with_context(|| format!("bad {FDB_PREFIX_VAR}"))?;
    }
    let store = FdbStore::open(cluster_file, options).with_context(|| {
        format!(
            "cannot open FoundationDB through {}",
            cluster_file.display()
        )
    })?;
    Ok(OpenStore {
        store,
        _network: Some(network),
    })
}

#[cfg(not(feature = "fdb"))]
fn open_fdb(cluster_file: &std::path::Path) -> Result<OpenStore> {
    anyhow::bail!(
        "store fdb:{} needs a tessera built with `--features fdb` (and libfdb_c installed)",
        cluster_file.display()
    )
}
