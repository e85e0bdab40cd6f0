//! `tessera store`, `tessera dc` and `tessera reconcile`: the processes of a deployment
//! and the check that ends every drill.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use actors::node::{DcNode, NodeConfig, LEASE_TTL_MS_DEFAULT};
use actors::LedgerConfig;
use cells::ids::{DcId, TransferId};
use cells::keys::Keyspace;
use cells::store::embedded::EmbeddedOptions;
use cells::store::url::StoreUrl;
use cells::store::Store;
use wire::dc_server::DcServerOptions;
use wire::store_server::ServerOptions;

use crate::open::OpenStore;

#[derive(Args)]
pub struct StoreArgs {
    /// Directory of the embedded store (created if absent).
    #[arg(long)]
    data: PathBuf,
    /// Address to serve the store protocol on (loopback; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Serve /metrics, /health and /ready on this address.
    #[arg(long)]
    ops_listen: Option<SocketAddr>,
    /// Most microseconds the committer spaces syncs apart once small groups sync slowly
    /// (the device is saturated by many small requests); 0 turns pacing off. At most 10,000.
    #[arg(long, default_value_t = SERVED_SYNC_GAP_MAX_US)]
    sync_gap_max_us: u64,
}

/// `tessera store`'s default `--sync-gap-max-us`. The store server commits many small
/// transactions from several DC nodes, so it paces syncs when they turn slow (in process,
/// the engine batches its own commits and the library default, no pacing, applies).
pub const SERVED_SYNC_GAP_MAX_US: u64 = 2_000;

/// Serves the embedded store over loopback until SIGINT or SIGTERM.
pub fn store(args: StoreArgs) -> Result<ExitCode> {
    let options = EmbeddedOptions {
        sync_gap_max: std::time::Duration::from_micros(args.sync_gap_max_us),
        ..EmbeddedOptions::default()
    };
    let opened = OpenStore::open_embedded(&args.data, options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        if let Some(ops) = args.ops_listen {
            let data = args.data.display().to_string();
            let bound = crate::commands::start_ops(
                ops,
                std::sync::Arc::new(move || (true, serde_json::json!({ "data": data }))),
            )?;
            println!("store ops endpoints on http://{bound}");
        }
        println!("store serving {} on {addr}", args.data.display());
        wire::store_server::serve(
            Arc::clone(&opened.store),
            listener,
            ServerOptions::default(),
            shutdown_signal(),
        )
        .await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct DcArgs {
    /// The DC's name (1–64 characters of `[A-Za-z0-9._:-]`).
    #[arg(long)]
    id: String,
    /// The store: `remote:<host:port>` (a `tessera store`), `fdb:<cluster-file>`, or
    /// `embedded:<dir>` (a single DC owning the directory).
    #[arg(long)]
    store: StoreUrl,
    /// Address to serve the DC protocol on (loopback; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:7500")]
    listen: SocketAddr,
    /// Serve /metrics, /health and /ready on this address.
    #[arg(long)]
    ops_listen: Option<SocketAddr>,
    /// Before registering, assign every unowned slot to these DCs (comma-separated), in
    /// runs of whole cells. Harmless when the table is already complete.
    #[arg(long, value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Lease TTL: a node whose heartbeat stands still this long is taken over.
    #[arg(long, default_value_t = LEASE_TTL_MS_DEFAULT)]
    lease_ttl_ms: u64,
    /// Threads for account actors (per keyspace). 0 runs them on the node's own thread,
    /// beside the DC protocol server and the lease heartbeat: one thread hop less per
    /// request, but a long run of actor work then delays the heartbeat (see BENCHMARKS.md).
    #[arg(long, default_value_t = 1)]
    arbiters: usize,
}

/// Runs a DC node until SIGINT or SIGTERM.
pub fn dc(args: DcArgs) -> Result<ExitCode> {
    let dc = DcId::new(&args.id).with_context(|| format!("bad DC id {:?}", args.id))?;
    let bootstrap = args
        .bootstrap
        .iter()
        .map(|name| DcId::new(name).with_context(|| format!("bad DC id {name:?} in --bootstrap")))
        .collect::<Result<Vec<_>>>()?;
    if !bootstrap.is_empty() && !bootstrap.contains(&dc) {
        bail!("--bootstrap names {bootstrap:?} but not this DC ({dc})");
    }
    let opened = OpenStore::open(&args.store)?;
    let store = Arc::clone(&opened.store);
    actix_rt::System::new().block_on(async move {
        // The node's own thread serves the DC protocol and reads the store for each batch:
        // its store reads stay on it (see `wire::local_io`).
        wire::local_io::local_io_here();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let mut config = NodeConfig::new(dc.clone(), addr.to_string());
        config.lease_ttl_ms = args.lease_ttl_ms;
        config.bootstrap = bootstrap;
        config.ledger = LedgerConfig {
            arbiters: args.arbiters,
            ..LedgerConfig::default()
        };
        let node = DcNode::start(store, config)
            .await
            .with_context(|| format!("cannot start DC node {dc}"))?;
        if let Some(ops) = args.ops_listen {
            let handler = node.handler();
            let bound = crate::commands::start_ops(
                ops,
                Arc::new(move || {
                    let status = handler.status();
                    (
                        status.incarnation > 0 && status.table_version > 0,
                        serde_json::json!({
                            "dc": status.dc.as_str(),
                            "incarnation": status.incarnation,
                            "table_version": status.table_version,
                            "owned_slots": status.owned_slots,
                            "active_accounts": status.active_accounts,
                        }),
                    )
                }),
            )?;
            println!("dc {dc} ops endpoints on http://{bound}");
        }
        println!("dc {dc} serving on {addr}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(wire::dc_server::serve(
            node.handler(),
            listener,
            DcServerOptions::default(),
            wait_for(stopped.clone()),
        ));
        let loops = actix_rt::spawn(Arc::clone(&node).run(wait_for(stopped)));
        shutdown_signal().await;
        let _ = stop.send(true);
        let _ = server.await;
        let _ = loops.await;
        anyhow::Ok(())
    })?;
    drop(opened);
    Ok(ExitCode::SUCCESS)
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// The store to check: `embedded:<dir>`, `remote:<host:port>` or `fdb:<cluster-file>`.
    #[arg(long)]
    store: StoreUrl,
    /// Check the shadow keyspace instead of real money.
    #[arg(long)]
    shadow: bool,
    /// A file of `ack <transfer id>` lines: each must be present exactly once.
    #[arg(long)]
    acked: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Verifies the money invariants; exit status 1 on any discrepancy (each one listed).
pub fn reconcile(args: ReconcileArgs) -> Result<ExitCode> {
    let opened = OpenStore::open(&args.store)?;
    let acknowledged = match &args.acked {
        None => Vec::new(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .filter_map(|line| line.strip_prefix("ack "))
            .map(|id| TransferId::new(id.trim()))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let space = if args.shadow {
        Keyspace::Shadow
    } else {
        Keyspace::Real
    };
    let started = std::time::Instant::now();
    let report = drills::verify::verify(opened.store.as_ref() as &dyn Store, space, &acknowledged)?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["clean"] = serde_json::Value::Bool(report.is_clean());
        value["seconds"] = serde_json::json!(seconds);
        println!("{value}");
    } else {
        println!(
            "{}: {} acknowledged, {} missing, {} accounts, {} postings, {} transfers, {} holds, \
             {} in the outbox, {} discrepancies ({seconds:.2} s)",
            if report.is_clean() {
                "CLEAN"
            } else {
                "DISCREPANCIES"
            },
            report.acknowledged,
            report.missing.len(),
            report.audit.accounts,
            report.audit.postings,
            report.audit.transfers,
            report.audit.holds,
            report.audit.outbox_pending,
            report.audit.discrepancies.len()
        );
        for (currency, net) in &report.audit.net_by_currency {
            println!("  {currency}: net {net} minor units (must be 0)");
        }
        for id in &report.missing {
            println!("  missing: acknowledged transfer {id} is not in the store");
        }
        for discrepancy in &report.audit.discrepancies {
            println!("  {}: {}", discrepancy.invariant, discrepancy.detail);
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Args)]
pub struct HandoverArgs {
    /// The deployment's store (`remote:<host:port>` or `fdb:<cluster-file>`).
    #[arg(long)]
    store: StoreUrl,
    /// Slots to move: `N` or `FIRST-LAST` (inclusive, 0–65535), all owned by one DC.
    #[arg(long)]
    slots: SlotRange,
    /// The DC that takes the slots.
    #[arg(long)]
    to: String,
    /// Who asks, for the ownership history.
    #[arg(long, default_value = "tessera handover")]
    who: String,
    #[arg(long)]
    json: bool,
}

/// An inclusive run of slots from the command line.
#[derive(Debug, Clone, Copy)]
pub struct SlotRange {
    first: u16,
    last: u16,
}

impl std::str::FromStr for SlotRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| format!("{part:?} is not a slot number from 0 to 65535"))
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (parse(first)?, parse(last)?),
            None => (parse(text)?, parse(text)?),
        };
        if first > last {
            return Err(format!("slot range {first}-{last} is reversed"));
        }
        Ok(SlotRange { first, last })
    }
}

/// Hands slots over from their owner to another DC and reports the freeze window.
pub fn handover(args: HandoverArgs) -> Result<ExitCode> {
    let to = DcId::new(&args.to).with_context(|| format!("bad DC id {:?}", args.to))?;
    let opened = OpenStore::open(&args.store)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = Arc::clone(&opened.store);
    let report = runtime.block_on(async move {
        let links = actors::handover::DcLinks::new(Arc::clone(&store));
        let meta = cells::ownership::ChangeMeta::new(&args.who, "handover");
        actors::handover::hand_over(
            &*store,
            &links,
            args.slots.first,
            args.slots.last,
            &to,
            &meta,
        )
        .await
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.moved {
        println!(
            "slots {}-{} moved {} -> {} at table version {}: freeze window {:.2} ms (drain {:.2} ms{})",
            report.first,
            report.last,
            report.from,
            report.to,
            report.version,
            report.freeze_window_us as f64 / 1e3,
            report.drain_us as f64 / 1e3,
            if report.drained { "" } else { ", not fully drained" }
        );
    } else {
        println!(
            "slots {}-{} already at {}",
            report.first, report.last, report.to
        );
    }
    Ok(ExitCode::SUCCESS)
}
