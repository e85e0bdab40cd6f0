//! `tessera bench dcs`: a local deployment (store + three DC nodes as child processes)
//! benchmarked through the router's routing core.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use drills::bench::dcs::{self, DcsBenchConfig};

#[derive(Args)]
pub struct DcsBenchArgs {
    #[arg(long, default_value_t = 1_000_000)]
    transfers: u64,
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Transfers per batch sent to the routing core (split by owner DC; at most 8,190).
    #[arg(long, default_value_t = 8_190)]
    batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 6)]
    in_flight: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// One-slot handovers under load after the throughput phase.
    #[arg(long, default_value_t = 40)]
    slot_handovers: usize,
    /// Whole-cell handovers under load after those.
    #[arg(long, default_value_t = 10)]
    cell_handovers: usize,
    /// Skip the kill -9 takeover phase.
    #[arg(long)]
    no_takeover: bool,
    /// Lease TTL of the DC nodes (default: the nodes' default, 2000 ms).
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// Data directory (must be empty or absent; kept after the run). Default: a fresh
    /// temporary directory, removed after the run.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn bench_dcs(args: DcsBenchArgs) -> Result<ExitCode> {
    let (data_dir, temporary) = match args.data_dir {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
                bail!(
                    "data dir {} is not empty; the benchmark needs a fresh store",
                    dir.display()
                );
            }
            (dir, false)
        }
        None => {
            let dir =
                std::env::temp_dir().join(format!("tessera-bench-dcs-{}", std::process::id()));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            (dir, true)
        }
    };
    let config = DcsBenchConfig {
        exe: std::env::current_exe().context("cannot find the tessera binary")?,
        data_dir: data_dir.clone(),
        transfers: args.transfers,
        accounts: args.accounts,
        batch_size: args.batch_size,
        in_flight: args.in_flight,
        seed: args.seed,
        slot_handovers: args.slot_handovers,
        cell_handovers: args.cell_handovers,
        takeover: !args.no_takeover,
        lease_ttl_ms: args.lease_ttl_ms,
        progress: !args.json,
    };
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(dcs::run(config));
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}
