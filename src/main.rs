//! `tessera`: the thin binary. Parses the command line, validates it into typed settings,
//! and dispatches to library code (`cells`, `wire`, `actors`, `drills`) through the command
//! modules in `commands/`.

mod commands;
mod open;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use commands::cluster::{DcArgs, HandoverArgs, ReconcileArgs, StoreArgs};
use commands::engine::{CrashLoadArgs, EngineArgs, StoreOpenArgs};
use commands::local::{DcsBenchArgs, HttpBenchArgs, RouterArgs, UpArgs};
use commands::route::RouteArgs;

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

/// No transparent huge pages for this process (and the processes it starts: the setting
/// is inherited). mimalloc asks for them on its arenas (`MADV_HUGEPAGE`), and with the
/// kernel's `defrag=madvise` each first touch of a 2 MiB page may compact memory
/// synchronously: faulting fresh memory cost 0.7–3.2 ms per MiB against 0.4 ms with 4 KiB
/// pages on the benchmark machine, and page zeroing was 13 % of all CPU in `bench dcs`
/// (see BENCHMARKS.md). Failure (an old kernel) only costs speed, so it is only logged.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(%error, "could not turn off transparent huge pages");
    }
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
    /// Starts a complete local deployment (store, dc-a, dc-b, dc-c, router), supervises it
    /// and stops it on Ctrl-C.
    Up(UpArgs),
    /// Runs the router: the client HTTP API, routing each command to the DC owning its user.
    Router(RouterArgs),
    /// Traffic shifting: status, plans, advance, pause, resume, rollback, whitelist, history.
    Route(RouteArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
    /// Sends transfers and prints every acknowledgement (for crash tests).
    CrashLoad(CrashLoadArgs),
    /// Opens a store (recovering it), prints how long that took, and exits.
    StoreOpen(StoreOpenArgs),
    /// Serves an embedded store to the DC nodes of one machine (stands in for FoundationDB).
    Store(StoreArgs),
    /// Runs a DC node: the cells of the slots its DC owns, and the DC protocol.
    Dc(DcArgs),
    /// Checks a store: money invariants (INV-1, INV-3, INV-5), every balance equal to the
    /// replay of its postings, no transfer applied twice, acknowledged transfers present.
    Reconcile(ReconcileArgs),
    /// Moves a run of slots from the DC owning them to another (freeze, drain, bump the
    /// epoch, activate, thaw) and reports the freeze window.
    Handover(HandoverArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// The ledger core alone: account actors and the embedded store in one process.
    Engine(EngineArgs),
    /// A store and three DC node processes on this machine, through the routing core:
    /// throughput, handover freeze windows, takeover after kill -9.
    Dcs(DcsBenchArgs),
    /// The router's HTTP API from outside (shadow keyspace by default): transfers/s,
    /// latency p50/p99/p999, answers by code, an SVG chart.
    Http(HttpBenchArgs),
}

fn main() -> Result<ExitCode> {
    keep_freed_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    no_transparent_huge_pages();
    if let Some(address) = cli.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .context("cannot start the Prometheus exporter")?;
    }
    match cli.command {
        Command::Up(args) => commands::local::up(args),
        Command::Router(args) => commands::local::router(args),
        Command::Route(args) => commands::route::route(args),
        Command::Bench(Bench::Engine(args)) => commands::engine::bench_engine(args),
        Command::Bench(Bench::Dcs(args)) => commands::local::bench_dcs(args),
        Command::Bench(Bench::Http(args)) => commands::local::bench_http(args),
        Command::CrashLoad(args) => commands::engine::crash_load(args),
        Command::StoreOpen(args) => commands::engine::store_open(args),
        Command::Store(args) => commands::cluster::store(args),
        Command::Dc(args) => commands::cluster::dc(args),
        Command::Reconcile(args) => commands::cluster::reconcile(args),
        Command::Handover(args) => commands::cluster::handover(args),
    }
}
