//! `tessera bench dcs`: transfers through DC nodes over loopback — a store process and three
//! DC node processes on this machine, driven through the router's routing core.
//!
//! Owns three measured phases, each from real processes and real answers:
//! 1. **throughput**: a closed loop of batches (bounded in flight) of random transfers
//!    between customers of all three DCs; acknowledged/s, completed/s (outbox empty), the
//!    share whose payee lives in another DC, batch latency percentiles;
//! 2. **handover** under a lighter load: one-slot and whole-cell handovers between DCs,
//!    each one's freeze window (from the controller's report), and the load's errors;
//! 3. **takeover**: kill -9 of one DC node; detection (kill → takeover committed to the
//!    table) and recovery (kill → a transfer of a user of the dead DC accepted again).
//!
//! Must never: count a transfer the DCs did not accept; run unbounded (every phase has a
//! count and a deadline); leave a child process behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cells::ids::{AccountId, DcId, TransferId, UserId};
use cells::keys::Keyspace;
use cells::ledger::{Command, CommandResult, ErrorCode, Outcome, TransferRequest};
use cells::money::{Amount, Currency};
use cells::ownership::{ChangeMeta, OwnershipTable};
use cells::records::{AccountKind, AccountSpec, HotMode};
use cells::slot::{slot_of, SLOTS_PER_CELL};
use cells::store::{RangeRequest, Store};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router::{Routing, RoutingOptions};
use serde::Serialize;

use crate::local::{self, Running, LOCAL_DCS};

/// Minor units every customer starts with.
const FUNDING_UNITS: u64 = 1_000_000_000_000;
const TRANSFER_UNITS_MAX: u64 = 1_000;
const CELL_SLOTS_U16: u16 = SLOTS_PER_CELL as u16;
/// Longest wait for the credit legs after the last acknowledgement.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the deployment to come up (bootstrap, links).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the takeover phase waits for recovery.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(60);
pub const IN_FLIGHT_MAX: usize = 64;
/// Most customer accounts (the harness keeps their ids in memory, 48 bytes each).
pub const ACCOUNTS_MAX: u64 = 1_000_000;
pub const HANDOVERS_MAX: usize = 1_000;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum DcsBenchError {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error("store: {0}")]
    Store(String),
    #[error("{0}")]
    Failed(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DcsBenchConfig {
    /// The `tessera` binary to start the processes from.
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub transfers: u64,
    pub accounts: u64,
    pub batch_size: usize,
    pub in_flight: usize,
    pub seed: u64,
    /// One-slot handovers, then whole-cell handovers (0 skips).
    pub slot_handovers: usize,
    pub cell_handovers: usize,
    pub takeover: bool,
    /// Lease TTL of the DC nodes (None: the nodes' default).
    pub lease_ttl_ms: Option<u64>,
    pub progress: bool,
}

impl DcsBenchConfig {
    pub fn validate(&self) -> Result<(), DcsBenchError> {
        let bad = |text: String| Err(DcsBenchError::Config(text));
        if self.transfers == 0 {
            return bad("--transfers must be at least 1".into());
        }
        if self.accounts < 2 || self.accounts > ACCOUNTS_MAX {
            return bad(format!("--accounts must be 2..={ACCOUNTS_MAX}"));
        }
        if self.batch_size == 0 || self.batch_size > cells::ledger::BATCH_COMMANDS_MAX {
            return bad(format!(
                "--batch-size must be 1..={}",
                cells::ledger::BATCH_COMMANDS_MAX
            ));
        }
        if self.in_flight == 0 || self.in_flight > IN_FLIGHT_MAX {
            return bad(format!("--in-flight must be 1..={IN_FLIGHT_MAX}"));
        }
        if self.slot_handovers > HANDOVERS_MAX || self.cell_handovers > HANDOVERS_MAX {
            return bad(format!("at most {HANDOVERS_MAX} handovers of each kind"));
        }
        Ok(())
    }
}

/// Freeze windows of one kind of handover.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandoverSummary {
    pub count: usize,
    pub freeze_window_ms_p50: f64,
    pub freeze_window_ms_p99: f64,
    pub freeze_window_ms_max: f64,
    pub drain_ms_p50: f64,
}

/// The report (`--json` prints it as one object).
#[derive(Debug, Clone, Serialize)]
pub struct DcsBenchReport {
    pub dcs: usize,
    pub transfers: u64,
    pub accounts: u64,
    pub batch_size: usize,
    pub in_flight: usize,
    pub seed: u64,
    pub accepted: u64,
    pub rejected_by_code: BTreeMap<String, u64>,
    pub resend_rounds: u64,
    /// Accepted transfers whose payee's slot is owned by another DC than the payer's.
    pub cross_dc: u64,
    pub cross_dc_share: f64,
    pub acknowledged_seconds: f64,
    pub completed_seconds: f64,
    pub acknowledged_per_second: f64,
    pub completed_per_second: f64,
    pub batch_latency_ms_p50: f64,
    pub batch_latency_ms_p99: f64,
    pub batch_latency_ms_max: f64,
    pub slot_handover: HandoverSummary,
    pub cell_handover: HandoverSummary,
    /// Transfers the load accepted during the handover phase, and its non-retryable errors
    /// other than insufficient funds (must be 0).
    pub handover_load_accepted: u64,
    pub handover_load_errors: u64,
    pub takeover_victim: Option<String>,
    pub takeover_lease_ttl_ms: Option<u64>,
    /// Kill → the takeover's table change visible in the store.
    pub takeover_detection_ms: Option<f64>,
    /// Kill → a transfer of a user of the dead DC accepted by its new owner.
    pub takeover_recovery_ms: Option<f64>,
    pub bench_peak_rss_bytes: u64,
}

fn usd() -> Currency {
    Currency::from_code("USD").expect("USD is known")
}

/// The customers' account and user ids, made once: the throughput phase picks from them
/// instead of formatting and validating two ids per transfer (and four more to count
/// crossings), work of the harness that competed with the system it measures.
struct Population {
    accounts: Vec<AccountId>,
    users: Vec<UserId>,
}

impl Population {
    fn new(accounts: u64) -> Population {
        Population {
            accounts: (0..accounts).map(customer).collect(),
            users: (0..accounts).map(customer_user).collect(),
        }
    }

    fn len(&self) -> u64 {
        self.accounts.len() as u64
    }

    /// Whether customers `a` and `b` (indexes) are owned by different DCs under `table`.
    fn cross(&self, table: &OwnershipTable, a: usize, b: usize) -> bool {
        let owner = |n: usize| table.owner_of(&self.users[n]).map(|owner| &owner.dc);
        owner(a) != owner(b)
    }
}

fn customer(n: u64) -> AccountId {
    AccountId::new(&format!("a-{n}")).expect("valid id")
}

fn customer_user(n: u64) -> UserId {
    UserId::new(&format!("u-{n}")).expect("valid id")
}

fn transfer(id: &str, from: AccountId, to: AccountId, units: u64) -> Command {
    Command::Transfer(TransferRequest {
        id: TransferId::new(id).expect("valid id"),
        from,
        to,
        amount: Amount::from_minor_units(units).expect("positive"),
        currency: usd(),
    })
}

struct Deployment {
    _store: Running,
    nodes: BTreeMap<String, Running>,
    store: Arc<dyn Store>,
}

fn start_deployment(config: &DcsBenchConfig) -> Result<Deployment, DcsBenchError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| DcsBenchError::Failed(format!("cannot create the data dir: {e}")))?;
    let store = local::start(
        &config.exe,
        local::store_spec(&config.data_dir, "127.0.0.1:0", None),
    )?;
    let mut nodes = BTreeMap::new();
    for dc in LOCAL_DCS {
        let spec = local::dc_spec(
            &config.data_dir,
            dc,
            &store.addr,
            "127.0.0.1:0",
            config.lease_ttl_ms,
            None,
        );
        nodes.insert(dc.to_string(), local::start(&config.exe, spec)?);
    }
    let remote = wire::remote::RemoteStore::connect(&store.addr, Default::default())
        .map_err(|e| DcsBenchError::Store(e.to_string()))?;
    Ok(Deployment {
        _store: store,
        nodes,
        store: Arc::new(remote),
    })
}

/// Waits until every DC owns slots and the router has a live link to each.
async fn wait_ready(routing: &Routing) -> Result<(), DcsBenchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let _ = routing.refresh().await;
        let table = routing.table();
        let counts = table.slot_counts();
        let links = routing.links();
        if counts.len() == LOCAL_DCS.len()
            && links.len() == LOCAL_DCS.len()
            && links.iter().all(|(_, _, up)| *up)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DcsBenchError::Failed(format!(
                "deployment not ready in {} s: owners {counts:?}, links {links:?}",
                READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_all(routing: &Routing, commands: Vec<Command>) -> Result<(), DcsBenchError> {
    for chunk in commands.chunks(cells::ledger::BATCH_COMMANDS_MAX) {
        let (results, _) = routing.execute(Keyspace::Real, chunk.to_vec()).await;
        if let Some(bad) = results.iter().find(|r| r.is_err()) {
            return Err(DcsBenchError::Failed(format!("setup refused: {bad:?}")));
        }
    }
    Ok(())
}

async fn setup(routing: &Routing, config: &DcsBenchConfig) -> Result<(), DcsBenchError> {
    let spec = |id: AccountId, user: UserId, kind| {
        Command::CreateAccount(AccountSpec {
            id,
            user,
            currency: usd(),
            kind,
            overdraft_limit: 0,
            mode: HotMode::Standard,
        })
    };
    let mut creations = vec![spec(
        AccountId::new("bank").expect("valid"),
        UserId::new("bank").expect("valid"),
        AccountKind::System,
    )];
    creations.extend(
        (0..config.accounts).map(|n| spec(customer(n), customer_user(n), AccountKind::Customer)),
    );
    run_all(routing, creations).await?;
    let funding = (0..config.accounts)
        .map(|n| {
            transfer(
                &format!("fund-{n}"),
                AccountId::new("bank").expect("valid"),
                customer(n),
                FUNDING_UNITS,
            )
        })
        .collect();
    run_all(routing, funding).await
}

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    cross_dc: AtomicU64,
    resends: AtomicU64,
    errors: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
    latency_us: Mutex<Option<Histogram<u64>>>,
}

impl Tally {
    /// Counts a batch's results; `crossing[i]`: command `i` moves money between DCs.
    fn record(&self, crossing: &[bool], results: &[CommandResult]) {
        let mut accepted = 0;
        let mut cross = 0;
        for (crosses, result) in crossing.iter().zip(results) {
            match result {
                Ok(Outcome::TransferAccepted) => {
                    accepted += 1;
                    if *crosses {
                        cross += 1;
                    }
                }
                Ok(_) => {}
                Err(code) => {
                    if *code != ErrorCode::InsufficientFunds {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
                    *rejected.entry(code.name().to_string()).or_insert(0) += 1;
                }
            }
        }
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.cross_dc.fetch_add(cross, Ordering::Relaxed);
    }
}

/// A batch of random transfers between customers, and for each whether it crosses DCs
/// under `table` (decided from the customers' indexes, before sending).
fn random_batch(
    rng: &mut StdRng,
    people: &Population,
    table: &OwnershipTable,
    tag: &str,
    first: u64,
    count: u64,
) -> (Vec<Command>, Vec<bool>) {
    let accounts = people.len();
    let index = |n: u64| usize::try_from(n).expect("fits");
    let prefix = format!("{tag}-");
    let mut crossing = Vec::with_capacity(usize::try_from(count).expect("fits"));
    let commands = (first..first + count)
        .map(|n| {
            let from = index(rng.random_range(0..accounts));
            let offset = rng.random_range(1..accounts);
            let to = index((from as u64 + offset) % accounts);
            crossing.push(people.cross(table, from, to));
            super::numbered(&prefix, n, |id| {
                transfer(
                    id,
                    people.accounts[from].clone(),
                    people.accounts[to].clone(),
                    rng.random_range(1..=TRANSFER_UNITS_MAX),
                )
            })
        })
        .collect();
    (commands, crossing)
}

/// The throughput phase's closed loop.
async fn load_worker(
    routing: Arc<Routing>,
    people: Arc<Population>,
    config: DcsBenchConfig,
    next_batch: Arc<AtomicU64>,
    tally: Arc<Tally>,
    bar: ProgressBar,
) {
    let batches = config.transfers.div_ceil(config.batch_size as u64);
    let mut histogram = cells::store::latency_histogram();
    loop {
        let batch = next_batch.fetch_add(1, Ordering::Relaxed);
        if batch >= batches {
            break;
        }
        let first = batch * config.batch_size as u64;
        let count = (config.batch_size as u64).min(config.transfers - first);
        let mut rng =
            StdRng::seed_from_u64(config.seed ^ batch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // The table does not change during this phase: crossings are counted before sending.
        let (commands, crossing) =
            random_batch(&mut rng, &people, &routing.table(), "t", first, count);
        let started = Instant::now();
        let (results, stats) = routing.execute(Keyspace::Real, commands).await;
        histogram.saturating_record((started.elapsed().as_micros() as u64).max(1));
        tally
            .resends
            .fetch_add(u64::from(stats.retries), Ordering::Relaxed);
        tally.record(&crossing, &results);
        bar.inc(count);
    }
    let mut total = tally.latency_us.lock().unwrap_or_else(|p| p.into_inner());
    match total.as_mut() {
        Some(total) => {
            let _ = total.add(&histogram);
        }
        None => *total = Some(histogram),
    }
}

/// Waits until the outbox is empty: every credit leg durable at its payee.
async fn wait_settled(store: &dyn Store) -> Result<(), DcsBenchError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let prefix = Keyspace::Real.outbox_prefix();
    let end = cells::store::prefix_end(&prefix);
    loop {
        let rows = store
            .get_range(RangeRequest::new(prefix.clone(), end.clone(), 1))
            .await
            .map_err(|e| DcsBenchError::Store(e.to_string()))?;
        if rows.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DcsBenchError::Failed(
                "credit legs still in the outbox after the settle timeout".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A light background load for the handover phase: small batches until `stop`.
async fn background_load(
    routing: Arc<Routing>,
    people: Arc<Population>,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    worker: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker + 1).wrapping_mul(0xA5A5_5A5A));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let tag = format!("h{worker}");
        let (commands, crossing) = random_batch(&mut rng, &people, &routing.table(), &tag, n, 256);
        n += 256;
        let (results, _) = routing.execute(Keyspace::Real, commands).await;
        tally.record(&crossing, &results);
    }
}

fn summarize(windows_us: &[u64], drains_us: &[u64]) -> HandoverSummary {
    let mut histogram = cells::store::latency_histogram();
    for w in windows_us {
        histogram.saturating_record((*w).max(1));
    }
    let mut drains = drains_us.to_vec();
    drains.sort_unstable();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
    HandoverSummary {
        count: windows_us.len(),
        freeze_window_ms_p50: ms(0.5),
        freeze_window_ms_p99: ms(0.99),
        freeze_window_ms_max: histogram.max() as f64 / 1_000.0,
        drain_ms_p50: drains.get(drains.len() / 2).copied().unwrap_or(0) as f64 / 1_000.0,
    }
}

/// Moves `count` runs of slots (`width` slots each, cell-aligned when 256) between DCs.
async fn handovers(
    store: &Arc<dyn Store>,
    rng: &mut StdRng,
    count: usize,
    width: u16,
) -> Result<HandoverSummary, DcsBenchError> {
    let links = actors::handover::DcLinks::new(Arc::clone(store));
    let meta = ChangeMeta::new("tessera bench dcs", "handover benchmark");
    let mut windows = Vec::with_capacity(count);
    let mut drains = Vec::with_capacity(count);
    for _ in 0..count {
        let table = OwnershipTable::read(store.as_ref())
            .await
            .map_err(|e| DcsBenchError::Store(e.to_string()))?;
        // A run with one owner (earlier one-slot moves leave some cells mixed).
        let single_owner = |first: u16| {
            let owner = |slot: u16| {
                table
                    .slot_owner(cells::slot::Slot::new(slot))
                    .map(|owner| owner.dc.clone())
            };
            (first..=first + (width - 1)).all(|slot| owner(slot) == owner(first))
        };
        let mut first = 0;
        for _ in 0..1_000 {
            first = if width == CELL_SLOTS_U16 {
                rng.random_range(0..256u16) * CELL_SLOTS_U16
            } else {
                rng.random_range(0..=u16::MAX)
            };
            if single_owner(first) {
                break;
            }
        }
        let last = first + (width - 1);
        let from = table
            .slot_owner(cells::slot::Slot::new(first))
            .map(|owner| owner.dc.clone());
        let targets: Vec<&str> = LOCAL_DCS
            .iter()
            .copied()
            .filter(|dc| Some(*dc) != from.as_ref().map(DcId::as_str))
            .collect();
        let to = DcId::new(targets[rng.random_range(0..targets.len())]).expect("valid");
        let report = actors::handover::hand_over(store.as_ref(), &links, first, last, &to, &meta)
            .await
            .map_err(|e| DcsBenchError::Failed(format!("handover {first}-{last}: {e}")))?;
        if report.moved {
            windows.push(report.freeze_window_us);
            drains.push(report.drain_us);
        }
    }
    Ok(summarize(&windows, &drains))
}

/// kill -9 of `victim`; measures detection and recovery.
async fn takeover(
    deployment: &mut Deployment,
    routing: &Routing,
    config: &DcsBenchConfig,
    victim: &str,
) -> Result<(f64, f64), DcsBenchError> {
    let victim_id = DcId::new(victim).expect("valid");
    let table = OwnershipTable::read(deployment.store.as_ref())
        .await
        .map_err(|e| DcsBenchError::Store(e.to_string()))?;
    let probe = (0..config.accounts)
        .find(|n| {
            table
                .owner_of(&customer_user(*n))
                .is_some_and(|owner| owner.dc == victim_id)
        })
        .ok_or_else(|| DcsBenchError::Failed(format!("{victim} owns no customer")))?;
    let probe_slot = slot_of(&customer_user(probe));
    let to = customer((probe + 1) % config.accounts);
    let node = deployment
        .nodes
        .get_mut(victim)
        .ok_or_else(|| DcsBenchError::Failed(format!("no node {victim}")))?;
    let killed = Instant::now();
    node.kill_nine();
    let deadline = killed + TAKEOVER_TIMEOUT;
    // Detection: polled on its own, so a probe waiting in the router does not delay it.
    let detector = {
        let store = Arc::clone(&deployment.store);
        let victim_id = victim_id.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(table) = OwnershipTable::read(store.as_ref()).await {
                    if table
                        .slot_owner(probe_slot)
                        .is_some_and(|owner| owner.dc != victim_id)
                    {
                        return Some(killed.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    };
    let mut attempt = 0u64;
    let recovery = loop {
        if Instant::now() > deadline {
            return Err(DcsBenchError::Failed(format!(
                "{victim}'s slots not served again within {} s",
                TAKEOVER_TIMEOUT.as_secs()
            )));
        }
        // A fresh id per attempt: a refused attempt must not pin the id's outcome.
        attempt += 1;
        let command = transfer(&format!("probe-{attempt}"), customer(probe), to.clone(), 1);
        let (results, _) = routing.execute(Keyspace::Real, vec![command]).await;
        if matches!(results.first(), Some(Ok(Outcome::TransferAccepted))) {
            break killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let detection = detector
        .await
        .ok()
        .flatten()
        .ok_or_else(|| DcsBenchError::Failed("takeover never showed in the table".into()))?;
    Ok((detection.as_secs_f64() * 1e3, recovery.as_secs_f64() * 1e3))
}

/// Runs every phase and reports.
pub async fn run(config: DcsBenchConfig) -> Result<DcsBenchReport, DcsBenchError> {
    config.validate()?;
    let mut deployment = start_deployment(&config)?;
    let options = RoutingOptions {
        retry_deadline: Duration::from_secs(30),
        ..RoutingOptions::default()
    };
    let routing = Arc::new(
        Routing::connect(Arc::clone(&deployment.store), options)
            .await
            .map_err(|e| DcsBenchError::Store(e.to_string()))?,
    );
    wait_ready(&routing).await?;
    setup(&routing, &config).await?;
    wait_settled(deployment.store.as_ref()).await?;

    // 1. Throughput.
    let people = Arc::new(Population::new(config.accounts));
    let bar = super::transfers_bar(config.transfers, config.progress);
    let tally = Arc::new(Tally::default());
    let next_batch = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..config.in_flight)
        .map(|_| {
            tokio::spawn(load_worker(
                Arc::clone(&routing),
                Arc::clone(&people),
                config.clone(),
                Arc::clone(&next_batch),
                Arc::clone(&tally),
                bar.clone(),
            ))
        })
        .collect();
    for worker in workers {
        worker
            .await
            .map_err(|e| DcsBenchError::Failed(format!("load worker: {e}")))?;
    }
    let acknowledged = started.elapsed();
    wait_settled(deployment.store.as_ref()).await?;
    let completed = started.elapsed();
    bar.finish_and_clear();
    let latency = tally
        .latency_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| Histogram::new(3).expect("valid"));
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let cross_dc = tally.cross_dc.load(Ordering::Relaxed);

    // 2. Handovers under a light load.
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(7));
    let background = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..2)
        .map(|worker| {
            tokio::spawn(background_load(
                Arc::clone(&routing),
                Arc::clone(&people),
                config.seed,
                Arc::clone(&stop),
                Arc::clone(&background),
                worker,
            ))
        })
        .collect();
    let slot = handovers(&deployment.store, &mut rng, config.slot_handovers, 1).await;
    let cell = match &slot {
        Ok(_) => {
            handovers(
                &deployment.store,
                &mut rng,
                config.cell_handovers,
                CELL_SLOTS_U16,
            )
            .await
        }
        Err(_) => Ok(HandoverSummary::default()),
    };
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        let _ = loader.await;
    }
    let (slot, cell) = (slot?, cell?);
    wait_settled(deployment.store.as_ref()).await?;

    // 3. Takeover.
    let victim = LOCAL_DCS[LOCAL_DCS.len() - 1];
    let (detection, recovery) = if config.takeover {
        let (d, r) = takeover(&mut deployment, &routing, &config, victim).await?;
        (Some(d), Some(r))
    } else {
        (None, None)
    };
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1_000.0;
    let mut rejected_by_code = tally
        .rejected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    rejected_by_code.retain(|_, count| *count > 0);
    Ok(DcsBenchReport {
        dcs: LOCAL_DCS.len(),
        transfers: config.transfers,
        accounts: config.accounts,
        batch_size: config.batch_size,
        in_flight: config.in_flight,
        seed: config.seed,
        accepted,
        rejected_by_code,
        resend_rounds: tally.resends.load(Ordering::Relaxed),
        cross_dc,
        cross_dc_share: cross_dc as f64 / accepted.max(1) as f64,
        acknowledged_seconds: acknowledged.as_secs_f64(),
        completed_seconds: completed.as_secs_f64(),
        acknowledged_per_second: accepted as f64 / acknowledged.as_secs_f64(),
        completed_per_second: accepted as f64 / completed.as_secs_f64(),
        batch_latency_ms_p50: ms(0.5),
        batch_latency_ms_p99: ms(0.99),
        batch_latency_ms_max: latency.max() as f64 / 1_000.0,
        slot_handover: slot,
        cell_handover: cell,
        handover_load_accepted: background.accepted.load(Ordering::Relaxed),
        handover_load_errors: background.errors.load(Ordering::Relaxed),
        takeover_victim: config.takeover.then(|| victim.to_string()),
        takeover_lease_ttl_ms: config.takeover.then(|| {
            config
                .lease_ttl_ms
                .unwrap_or(actors::node::LEASE_TTL_MS_DEFAULT)
        }),
        takeover_detection_ms: detection,
        takeover_recovery_ms: recovery,
        bench_peak_rss_bytes: crate::rss::peak_rss_bytes(),
    })
}

/// The data directory's store, for a reconcile after the run.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}
