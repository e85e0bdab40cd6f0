//! `tessera`: the thin binary. Parses the command line, validates it into typed settings,
//! and dispatches to library code (`cells`, `actors`, `drills`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

use actors::{Ledger, LedgerConfig};
use cells::keys::Keyspace;
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::Store;
use drills::bench::engine::{self, EngineBenchConfig, Scenario};

// glibc's allocator serializes on its arenas when one thread allocates (account actors
// building commits) and another frees (the store's commit thread); mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (index 15 in both the v2 and v3
/// headers; the Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the OS: a ledger process keeps a steady working set, and
/// purging then re-faulting pages cost ~20 % of CPU in the engine benchmark (kernel page
/// zeroing; see BENCHMARKS.md).
fn keep_freed_pages() {
    // SAFETY: sets a process-wide allocator option; mimalloc documents that options may be
    // set at any time and reads them atomically. No memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Actor-based, multi-active cell runtime for payments"
)]
struct Cli {
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9000).
    #[arg(long, global = true)]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
    /// Sends transfers and prints every acknowledgement (for crash tests).
    CrashLoad(CrashLoadArgs),
    /// Checks a store: acknowledged transfers present exactly once, money invariants hold.
    Audit(AuditArgs),
    /// Opens a store (recovering it), prints how long that took, and exits.
    StoreOpen(StoreOpenArgs),
}

#[derive(Args)]
struct StoreOpenArgs {
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Bench {
    /// The ledger core alone: account actors and the embedded store in one process.
    Engine(EngineArgs),
}

#[derive(Args)]
struct EngineArgs {
    /// uniform | hot-credit | hot-debit | holds
    #[arg(long, default_value = "uniform")]
    scenario: Scenario,
    #[arg(long, default_value_t = 1_000_000)]
    transfers: u64,
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Commands per batch (at most 8,190).
    #[arg(long, default_value_t = 8_190)]
    batch_size: usize,
    /// Batches in flight at once (default: 16; 2 for hot-debit and hot-credit).
    #[arg(long)]
    in_flight: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Data directory (must be empty or absent); default: a fresh temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads for account actors (0: the benchmark driver's own thread).
    #[arg(long, default_value_t = 0)]
    arbiters: usize,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CrashLoadArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    accounts: u64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of this run's transfer ids.
    #[arg(long, default_value = "run")]
    run: String,
    #[arg(long, default_value_t = 1_000_000)]
    transfers: u64,
}

#[derive(Args)]
struct AuditArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// A crash-load output: every `ack <id>` line must be present exactly once.
    #[arg(long)]
    acked: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    keep_freed_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(address) = cli.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .context("cannot start the Prometheus exporter")?;
    }
    match cli.command {
        Command::Bench(Bench::Engine(args)) => bench_engine(args),
        Command::CrashLoad(args) => crash_load(args),
        Command::Audit(args) => audit(args),
        Command::StoreOpen(args) => {
            let started = std::time::Instant::now();
            let store = open_store(&args.data_dir)?;
            let open_seconds = started.elapsed().as_secs_f64();
            drop(store);
            println!("{}", serde_json::json!({ "open_seconds": open_seconds }));
            Ok(())
        }
    }
}

fn open_store(dir: &Path) -> Result<Arc<dyn Store>> {
    let store = EmbeddedStore::open(dir, EmbeddedOptions::default())
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    Ok(store)
}

fn bench_engine(args: EngineArgs) -> Result<()> {
    let config = EngineBenchConfig {
        scenario: args.scenario,
        transfers: args.transfers,
        accounts: args.accounts,
        batch_size: args.batch_size,
        in_flight: args.in_flight.unwrap_or(args.scenario.default_in_flight()),
        seed: args.seed,
        progress: !args.json,
    };
    config.validate()?;
    let mut temporary = None;
    let dir = match args.data_dir {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
                bail!(
                    "data dir {} is not empty; the benchmark needs a fresh store",
                    dir.display()
                );
            }
            dir
        }
        None => {
            let dir = tempfile_dir()?;
            temporary = Some(dir.clone());
            dir
        }
    };
    let store = open_store(&dir)?;
    let ledger_config = LedgerConfig {
        arbiters: args.arbiters,
        ..LedgerConfig::default()
    };
    let report = actix_rt::System::new().block_on(async move {
        let ledger = Ledger::start(store, ledger_config);
        engine::run(&ledger, &config).await
    })?;
    if let Some(dir) = temporary {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the benchmark's store {}", dir.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(dir)
}

fn crash_load(args: CrashLoadArgs) -> Result<()> {
    let store = open_store(&args.data_dir)?;
    let config = drills::crashload::CrashLoadConfig {
        accounts: args.accounts,
        batch_size: args.batch_size,
        seed: args.seed,
        run: args.run,
        transfers: args.transfers,
    };
    actix_rt::System::new().block_on(async move {
        let ledger = Ledger::start(store, LedgerConfig::default());
        let mut out = std::io::stdout().lock();
        drills::crashload::run(&ledger, &config, &mut out).await
    })?;
    Ok(())
}

fn audit(args: AuditArgs) -> Result<()> {
    let store = open_store(&args.data_dir)?;
    let acknowledged = match &args.acked {
        None => Vec::new(),
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .filter_map(|line| line.strip_prefix("ack "))
            .map(|id| cells::ids::TransferId::new(id.trim()))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let report = drills::verify::verify(store.as_ref(), Keyspace::Real, &acknowledged)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {} acknowledged, {} missing, {} accounts, {} postings, {} discrepancies",
            if report.is_clean() {
                "CLEAN"
            } else {
                "DISCREPANCIES"
            },
            report.acknowledged,
            report.missing.len(),
            report.audit.accounts,
            report.audit.postings,
            report.audit.discrepancies.len()
        );
        for discrepancy in &report.audit.discrepancies {
            println!("  {}: {}", discrepancy.invariant, discrepancy.detail);
        }
    }
    if !report.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}
