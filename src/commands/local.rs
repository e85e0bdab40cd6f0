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
    /// Batches in flight at once (16: the best throughput measured; 6 gave 25 % less,
    /// 24 and 32 no more, with twice the latency).
    #[arg(long, default_value_t = 16)]
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
            super::require_fresh_dir(&dir)?;
            (dir, false)
        }
        None => (super::fresh_temp_dir("tessera-bench-dcs")?, true),
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
    super::print_report(&report?, args.json)
}

#[derive(Args)]
pub struct RouterArgs {
    /// The store: `remote:HOST:PORT` (the local store server), `embedded:DIR`, `fdb:CLUSTER_FILE`.
    #[arg(long)]
    store: cells::store::url::StoreUrl,
    /// Address of the HTTP API (loopback; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// JSON file with `{"api_key", "admin_token"}` (what `tessera up` writes).
    #[arg(long)]
    credentials: PathBuf,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Commands per second each API key may send (a batch counts its transfers).
    #[arg(long, default_value_t = 500_000)]
    rate_per_key: u64,
}

/// Runs the router until SIGINT or SIGTERM.
pub fn router(args: RouterArgs) -> Result<ExitCode> {
    let credentials = router::auth::CredentialsFile::read(&args.credentials)
        .with_context(|| format!("cannot read credentials {}", args.credentials.display()))?;
    if args.rate_per_key == 0 {
        bail!("--rate-per-key must be at least 1");
    }
    let auth = router::auth::Auth::new(
        std::slice::from_ref(&credentials.api_key),
        &credentials.admin_token,
        args.rate_per_key,
    );
    drop(credentials);
    // /metrics of the API; absent when --metrics-listen already installed an exporter.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let opened = crate::open::OpenStore::open(&args.store)?;
    let store = std::sync::Arc::clone(&opened.store);
    actix_web_rt_block_on(async move {
        let routing = router::Routing::connect(store, router::RoutingOptions::default())
            .await
            .context("cannot read the ownership table")?;
        let settings = router::server::RouterSettings {
            listen: args.listen,
            workers: args.workers,
            auth,
            metrics,
        };
        router::server::serve(std::sync::Arc::new(routing), settings, |addr| {
            println!("router serving http://{addr} on {addr}");
        })
        .await
        .context("the HTTP server failed")
    })?;
    drop(opened);
    Ok(ExitCode::SUCCESS)
}

/// actix-web's server runs on an actix (tokio-based) system.
fn actix_web_rt_block_on<F: std::future::Future>(future: F) -> F::Output {
    actix_rt::System::new().block_on(future)
}

#[derive(Args)]
pub struct UpArgs {
    /// Where the store, the logs and credentials.json live (created if absent; reused).
    #[arg(long, default_value = "./tessera-data")]
    data_dir: PathBuf,
    /// Port of the router's HTTP API.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Port of the store server.
    #[arg(long, default_value_t = 7400)]
    store_port: u16,
    /// Ports of dc-a, dc-b and dc-c are this and the next two.
    #[arg(long, default_value_t = 7501)]
    dc_port: u16,
    /// Ops endpoints (/metrics, /health, /ready): the store on this port, dc-a, dc-b and
    /// dc-c on the next three.
    #[arg(long, default_value_t = 7600)]
    ops_port: u16,
    /// Lease TTL of the DC nodes in ms (default: the nodes' default, 2000).
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// Seed demo users, accounts and a hot merchant.
    #[arg(long)]
    demo: bool,
}

/// Starts a local deployment and supervises it until SIGINT or SIGTERM.
pub fn up(args: UpArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the tessera binary")?;
    let settings = drills::up::UpSettings {
        exe,
        data_dir: args.data_dir,
        http_port: args.http_port,
        store_port: args.store_port,
        dc_port: args.dc_port,
        ops_port: args.ops_port,
        lease_ttl_ms: args.lease_ttl_ms,
        demo: args.demo,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(drills::up::run(settings, super::cluster::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct HttpBenchArgs {
    /// The router, `http://HOST:PORT`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The credentials file `tessera up` wrote (for the API key).
    #[arg(long, default_value = "./tessera-data/credentials.json")]
    credentials: PathBuf,
    /// `batch` (the batch endpoint) or `single` (one transfer per request).
    #[arg(long, default_value = "batch")]
    mode: String,
    #[arg(long, default_value_t = 200_000)]
    transfers: u64,
    /// Transfers per request in batch mode (at most 8,190).
    #[arg(long, default_value_t = 2_000)]
    batch_size: usize,
    /// Connections (threads), each with one request in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 1_000)]
    accounts: u64,
    /// Requests per second offered (open loop); 0: closed loop, as fast as answered.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Use the real keyspace (default: shadow, which never touches a real balance).
    #[arg(long)]
    real: bool,
    /// Where to write the SVG chart of throughput and latency over time.
    #[arg(long, default_value = "bench-http.svg")]
    chart: PathBuf,
    /// Run a shift plan through every stage while the load runs (admin token from the
    /// credentials file), then roll it back and delete it; the report shows each step and
    /// the latency bump.
    #[arg(long)]
    shift: bool,
    /// Cells the `--shift` plan moves (comma-separated; `a-b` for a run).
    #[arg(long, default_value = "0-31")]
    shift_cells: String,
    #[arg(long, default_value = "dc-a")]
    shift_from: String,
    #[arg(long, default_value = "dc-b")]
    shift_to: String,
    /// Pause before the first step and between steps.
    #[arg(long, default_value_t = 2_000)]
    shift_step_ms: u64,
    #[arg(long)]
    json: bool,
}

/// Parses `0-31,40,42-43` into cell numbers (each below 256).
fn parse_cells(text: &str) -> Result<Vec<u16>> {
    let mut cells = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u16>()?, b.trim().parse::<u16>()?),
            None => {
                let cell = part.parse::<u16>()?;
                (cell, cell)
            }
        };
        if first > last || last >= 256 {
            bail!("cell range {part:?} must be a-b with a ≤ b < 256");
        }
        cells.extend(first..=last);
    }
    if cells.is_empty() {
        bail!("--shift-cells names no cell");
    }
    Ok(cells)
}

pub fn bench_http(args: HttpBenchArgs) -> Result<ExitCode> {
    let mode = match args.mode.as_str() {
        "batch" => drills::bench::http::Mode::Batch,
        "single" => drills::bench::http::Mode::Single,
        other => bail!("--mode {other:?} is not batch or single"),
    };
    let credentials = router::auth::CredentialsFile::read(&args.credentials)
        .with_context(|| format!("cannot read credentials {}", args.credentials.display()))?;
    let config = drills::bench::http::HttpBenchConfig {
        target: args.target,
        api_key: credentials.api_key,
        mode,
        transfers: args.transfers,
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        accounts: args.accounts,
        rate: args.rate,
        real: args.real,
        chart: Some(args.chart),
        progress: !args.json,
        shift: if args.shift {
            Some(drills::bench::shift_load::ShiftLoad {
                admin_token: credentials.admin_token.clone(),
                cells: parse_cells(&args.shift_cells)
                    .with_context(|| format!("bad --shift-cells {:?}", args.shift_cells))?,
                from: args.shift_from,
                to: args.shift_to,
                step_interval: std::time::Duration::from_millis(args.shift_step_ms),
            })
        } else {
            None
        },
    };
    let report = drills::bench::http::run(config)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let mut value = serde_json::to_value(&report)?;
        if let Some(object) = value.as_object_mut() {
            object.remove("per_second");
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_cells;

    #[test]
    fn cell_lists_parse_runs_and_singles() {
        assert_eq!(parse_cells("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_cells("7, 9-10").unwrap(), vec![7, 9, 10]);
        assert_eq!(parse_cells("255").unwrap(), vec![255]);
    }

    #[test]
    fn bad_cell_lists_are_refused() {
        for bad in ["", "256", "3-1", "0-256", "a", "1-b", ","] {
            assert!(parse_cells(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
