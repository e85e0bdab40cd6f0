//! `tessera bench engine`, `tessera crash-load` and `tessera store-open`: the ledger core
//! in one process, on the embedded store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use actors::{Ledger, LedgerConfig};
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::Store;
use drills::bench::engine::{self, EngineBenchConfig, Scenario};
use drills::bench::runs;

use super::{fresh_temp_dir, print_report, require_fresh_dir};

#[derive(Args)]
pub struct EngineArgs {
    /// uniform | hot-credit | hot-debit | holds
    #[arg(long, default_value = "uniform")]
    scenario: Scenario,
    #[arg(long, default_value_t = 1_000_000)]
    transfers: u64,
    /// Accounts the run creates and pays between (2 to 1,000,000).
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Commands per batch (at most 8,190).
    #[arg(long, default_value_t = 8_190)]
    batch_size: usize,
    /// Batches in flight at once (default: 16; 2 for hot-debit).
    #[arg(long)]
    in_flight: Option<usize>,
    /// Offered load in transfers per second (open loop: batches are sent on a schedule, and
    /// a batch's latency counts from its slot). Default: closed loop, as fast as the ledger
    /// answers.
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Data directory (must be empty or absent); default: a fresh temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads for account actors (0: the benchmark driver's own thread). Default 1: the
    /// driver, standing in for clients, runs beside the actors as a DC node's protocol
    /// server does (measured faster in every scenario since statement blocks; BENCHMARKS.md).
    #[arg(long, default_value_t = 1)]
    arbiters: usize,
    /// Runs of the benchmark (odd, 1 to 9), each a fresh process on a fresh store (with
    /// --data-dir, run k uses <dir>/run-k). With more than one, every top-level figure of
    /// the report is its median over the runs, and `per_run` holds each run's report.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CrashLoadArgs {
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
pub struct StoreOpenArgs {
    #[arg(long)]
    data_dir: PathBuf,
}

/// Opens the store in `dir`, prints how long recovery took, and closes it.
pub fn store_open(args: StoreOpenArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let store = open_store(&args.data_dir)?;
    let open_seconds = started.elapsed().as_secs_f64();
    drop(store);
    println!("{}", serde_json::json!({ "open_seconds": open_seconds }));
    Ok(ExitCode::SUCCESS)
}

fn open_store(dir: &Path) -> Result<Arc<dyn Store>> {
    let store = EmbeddedStore::open(dir, EmbeddedOptions::default())
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    Ok(store)
}

pub fn bench_engine(args: EngineArgs) -> Result<ExitCode> {
    let config = EngineBenchConfig {
        scenario: args.scenario,
        transfers: args.transfers,
        accounts: args.accounts,
        batch_size: args.batch_size,
        in_flight: args.in_flight.unwrap_or(args.scenario.default_in_flight()),
        rate: args.rate,
        seed: args.seed,
        progress: !args.json,
    };
    config.validate()?;
    runs::check_count(args.runs)?;
    if let Some(dir) = &args.data_dir {
        require_fresh_dir(dir)?;
    }
    if args.runs > 1 {
        return bench_engine_runs(&args, &config);
    }
    let mut temporary = None;
    let dir = match args.data_dir {
        Some(dir) => dir,
        None => {
            let dir = fresh_temp_dir("tessera-bench")?;
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
    print_report(&report, args.json)
}

/// `--runs N` (N > 1): runs the benchmark N times, one after the other, each as a child
/// process of this binary with the same settings, and prints the runs summed up.
fn bench_engine_runs(args: &EngineArgs, config: &EngineBenchConfig) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this program to run it again")?;
    let mut reports = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let mut child = std::process::Command::new(&exe);
        child
            .args(["bench", "engine", "--json", "--runs", "1"])
            .args(["--scenario", config.scenario.name()])
            .args(["--transfers", &config.transfers.to_string()])
            .args(["--accounts", &config.accounts.to_string()])
            .args(["--batch-size", &config.batch_size.to_string()])
            .args(["--in-flight", &config.in_flight.to_string()])
            .args(["--seed", &config.seed.to_string()])
            .args(["--arbiters", &args.arbiters.to_string()])
            .stderr(std::process::Stdio::inherit());
        if let Some(rate) = config.rate {
            child.args(["--rate", &rate.to_string()]);
        }
        if let Some(dir) = &args.data_dir {
            child.arg("--data-dir").arg(dir.join(format!("run-{run}")));
        }
        let output = child
            .output()
            .with_context(|| format!("cannot start run {run}"))?;
        if !output.status.success() {
            bail!("run {run} of {} failed ({})", args.runs, output.status);
        }
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("run {run} printed no JSON report"))?;
        if !args.json {
            let figure = |field: &str| report[field].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "run {run} of {}: {:.0} completed transfers/s, commit p99 {:.2} ms",
                args.runs,
                figure("completed_per_second"),
                figure("commit_latency_ms_p99")
            );
        }
        reports.push(report);
    }
    print_report(&runs::median_report(&reports)?, args.json)
}

pub fn crash_load(args: CrashLoadArgs) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}
