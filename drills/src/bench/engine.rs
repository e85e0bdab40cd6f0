//! `tessera bench engine`: the ledger core alone — account actors, relay and the embedded
//! store in one process, durable, no network.
//!
//! Owns the scenarios (`uniform`, `hot-credit`, `hot-debit`, `holds`), the closed-loop
//! driver (a bounded number of batches in flight), and the report. Every number in the
//! report is measured from the run itself: acknowledgements from the ledger's replies,
//! completion from the credit legs the payees made durable, latencies from HdrHistogram,
//! fsyncs and bytes from the store's own counters.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::Ledger;
use cells::ids::{AccountId, HoldId, TransferId, UserId};
use cells::ledger::{
    CaptureRequest, Command, CommandResult, ErrorCode, HoldRequest, Outcome, TransferRequest,
    BATCH_COMMANDS_MAX,
};
use cells::money::{Amount, Currency};
use cells::records::{AccountKind, AccountSpec, HotMode};
use hdrhistogram::Histogram;

use super::numbered;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Minor units every customer starts with (large enough that no scenario drains it).
const FUNDING_UNITS: u64 = 1_000_000_000_000;
/// Largest amount a benchmark transfer moves (minor units).
const TRANSFER_UNITS_MAX: u64 = 1_000;
/// Longest the harness waits for credit legs after the last acknowledgement.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(300);
/// Most times a client retries a command refused with a retryable code.
const RETRIES_MAX: u32 = 200;
/// Most batches in flight at once.
pub const IN_FLIGHT_MAX: usize = 64;
/// Highest offered rate `--rate` accepts (transfers per second): far above what one machine
/// commits (consecutive transfers' slots are still 10 ns apart).
pub const RATE_MAX: u64 = 100_000_000;
/// Most accounts a run creates: the ledger's default cap on live account actors
/// (`LedgerConfig::active_accounts_max`), beyond which activations are refused `overloaded`.
pub const ACCOUNTS_MAX: u64 = actors::config::ACTIVE_ACCOUNTS_MAX_DEFAULT as u64;
/// A paced batch that starts this much after its slot counts as late.
const LATE_AFTER: Duration = Duration::from_millis(1);

/// The load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Random payer and payee among all accounts.
    Uniform,
    /// Every transfer pays one merchant.
    HotCredit,
    /// Every transfer is paid by one account.
    HotDebit,
    /// 30 % of transfers go through hold, then capture (two thirds) or release.
    Holds,
}

impl FromStr for Scenario {
    type Err = BenchError;
    fn from_str(text: &str) -> Result<Self, BenchError> {
        match text {
            "uniform" => Ok(Scenario::Uniform),
            "hot-credit" => Ok(Scenario::HotCredit),
            "hot-debit" => Ok(Scenario::HotDebit),
            "holds" => Ok(Scenario::Holds),
            other => Err(BenchError::Config(format!(
                "unknown scenario {other:?}; expected uniform, hot-credit, hot-debit or holds"
            ))),
        }
    }
}

impl Scenario {
    /// Batches in flight when the command line does not say (measured, BENCHMARKS.md):
    /// deep pipelines let many account actors batch more per commit (while an actor waits
    /// for its place in the commit window, what arrives joins its next commit). One hot
    /// payer refuses work past its pending bound (4 batches), so hot-debit keeps 2. Hot-credit
    /// kept 2 too until the commit window (round 17); since then its payers' commits grow
    /// with the pipeline: 16 in flight carried 282,000–311,000 transfers/s against
    /// 184,000–232,000 with 2, and its hot merchant kept up (round 18).
    pub fn default_in_flight(self) -> usize {
        match self {
            Scenario::HotDebit => 2,
            Scenario::Uniform | Scenario::HotCredit | Scenario::Holds => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Uniform => "uniform",
            Scenario::HotCredit => "hot-credit",
            Scenario::HotDebit => "hot-debit",
            Scenario::Holds => "holds",
        }
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct EngineBenchConfig {
    pub scenario: Scenario,
    pub transfers: u64,
    pub accounts: u64,
    pub batch_size: usize,
    pub in_flight: usize,
    /// Offered load in transfers per second (open loop): transfer `n` is due at `n / rate`
    /// seconds after the start, and its batch's latency counts from the slot of its first
    /// transfer, so a run that falls behind shows it in its latencies (no coordinated
    /// omission; the latency also holds the timer's wake-up, within about 1 ms of the
    /// slot). `None`: closed loop, each worker sends its next batch when the last is
    /// answered. Either way at most `in_flight` batches are outstanding.
    pub rate: Option<u64>,
    pub seed: u64,
    pub progress: bool,
}

impl EngineBenchConfig {
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.transfers == 0 {
            return Err(BenchError::Config("--transfers must be at least 1".into()));
        }
        if self.accounts < 2 || self.accounts > ACCOUNTS_MAX {
            return Err(BenchError::Config(format!(
                "--accounts must be between 2 and {ACCOUNTS_MAX}"
            )));
        }
        if self.batch_size == 0 || self.batch_size > BATCH_COMMANDS_MAX {
            return Err(BenchError::Config(format!(
                "--batch-size must be between 1 and {BATCH_COMMANDS_MAX}"
            )));
        }
        if self.in_flight == 0 || self.in_flight > IN_FLIGHT_MAX {
            return Err(BenchError::Config(format!(
                "--in-flight must be between 1 and {IN_FLIGHT_MAX}"
            )));
        }
        if self.rate.is_some_and(|rate| rate == 0 || rate > RATE_MAX) {
            return Err(BenchError::Config(format!(
                "--rate must be between 1 and {RATE_MAX} transfers per second"
            )));
        }
        Ok(())
    }
}

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark settings: {0}")]
    Config(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("credit legs did not complete within {0:?}")]
    Incomplete(Duration),
}

/// The report; field names are a stable interface (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct EngineBenchReport {
    pub scenario: &'static str,
    pub transfers: u64,
    pub accounts: u64,
    pub batch_size: usize,
    pub in_flight: usize,
    /// The offered load (`--rate`), transfers per second; absent in a closed-loop run.
    pub offered_per_second: Option<u64>,
    /// Paced batches that started more than 1 ms after their slot because every worker was
    /// busy: the offered load was more than the ledger took at that moment.
    pub late_batches: u64,
    pub seed: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Commands sent again after a retryable refusal (`overloaded`, …).
    pub retried: u64,
    pub rejected_by_code: std::collections::BTreeMap<String, u64>,
    pub acknowledged_seconds: f64,
    pub completed_seconds: f64,
    pub acknowledged_per_second: f64,
    pub completed_per_second: f64,
    /// Account actor commits, from sealing a draft to handling the store's answer: includes
    /// the wait for the actor's turn on a busy thread once the answer is in.
    pub commit_latency_ms_p50: f64,
    pub commit_latency_ms_p99: f64,
    pub commit_latency_ms_max: f64,
    /// Store commits, from `Transaction::commit` to the store's durable answer (queue,
    /// validation, log write and sync); absent where the backend does not measure it.
    pub store_commit_latency_ms_p50: Option<f64>,
    pub store_commit_latency_ms_p99: Option<f64>,
    pub store_commit_latency_ms_max: Option<f64>,
    pub batch_latency_ms_p50: f64,
    pub batch_latency_ms_p99: f64,
    pub batch_latency_ms_max: f64,
    pub commits: u64,
    pub fsyncs: u64,
    pub fsyncs_per_second: f64,
    pub transactions_per_fsync: f64,
    pub bytes_written_per_transfer: f64,
    pub peak_rss_bytes: u64,
    /// CPU seconds (user + system) of the whole process from the first transfer to the last
    /// credit leg: steadier than the rates within an hour of a shared machine (not across hours:
    /// the host's cores change speed; BENCHMARKS.md round 20).
    pub cpu_seconds: f64,
    /// `cpu_seconds` per transfer, in microseconds.
    pub cpu_us_per_transfer: f64,
    /// CPU seconds by thread name over the same span: `tessera` is the driver (and the
    /// account actors with `--arbiters 0`), `actix-rt|system` the account actors' arbiters
    /// (the kernel keeps 15 characters of a name, so every arbiter shares this entry),
    /// `store-commit` the embedded store's committer. A thread near `completed_seconds` is
    /// the bottleneck; a sum near twice it means both cores are.
    pub cpu_seconds_by_thread: std::collections::BTreeMap<String, f64>,
    /// `cpu_seconds` over `completed_seconds`: the cores the run kept busy on average (at
    /// most the machine's CPUs; 2 on the benchmark machine).
    pub cpu_cores_busy: f64,
    /// Percent of the machine's CPU time its hypervisor stole over the same span (`None`
    /// where the kernel does not say): a virtual machine runs slower by about this much. A
    /// run with steal is slower than the program is; compare runs with little of it.
    pub host_steal_percent: Option<f64>,
}

fn currency() -> Currency {
    Currency::from_code("USD").expect("USD is a known currency")
}

fn account_id(text: &str) -> AccountId {
    AccountId::new(text).expect("benchmark ids are valid")
}

fn customer(index: u64) -> AccountId {
    numbered("acct-", index, account_id)
}

/// Creates the accounts and funds the payers.
async fn setup(ledger: &Ledger, config: &EngineBenchConfig) -> Result<(), BenchError> {
    let spec = |id: AccountId, kind| AccountSpec {
        user: UserId::new(id.as_str()).expect("benchmark ids are valid"),
        id,
        currency: currency(),
        kind,
        overdraft_limit: 0,
        mode: HotMode::Standard,
    };
    let mut creations = vec![
        Command::CreateAccount(spec(account_id("world"), AccountKind::System)),
        Command::CreateAccount(spec(account_id("merchant"), AccountKind::Customer)),
        Command::CreateAccount(spec(account_id("payer"), AccountKind::Customer)),
    ];
    creations.extend(
        (0..config.accounts)
            .map(|i| Command::CreateAccount(spec(customer(i), AccountKind::Customer))),
    );
    for chunk in creations.chunks(BATCH_COMMANDS_MAX) {
        let results = execute(ledger, chunk.to_vec()).await?;
        if let Some(bad) = results
            .iter()
            .find(|r| !matches!(r, Ok(_) | Err(ErrorCode::AccountExists)))
        {
            return Err(BenchError::Setup(format!("account creation: {bad:?}")));
        }
    }
    let funding_units = FUNDING_UNITS.max(config.transfers * TRANSFER_UNITS_MAX);
    let mut funding = vec![fund("payer", funding_units)];
    funding.extend((0..config.accounts).map(|i| fund(customer(i).as_str(), FUNDING_UNITS)));
    for chunk in funding.chunks(BATCH_COMMANDS_MAX) {
        let results = execute(ledger, chunk.to_vec()).await?;
        if let Some(bad) = results.iter().find(|r| r.is_err()) {
            return Err(BenchError::Setup(format!("funding: {bad:?}")));
        }
    }
    wait_settled(ledger).await
}

fn fund(account: &str, units: u64) -> Command {
    Command::Transfer(TransferRequest {
        id: TransferId::new(&format!("fund-{account}")).expect("benchmark ids are valid"),
        from: account_id("world"),
        to: account_id(account),
        amount: Amount::from_minor_units(units).expect("funding is positive"),
        currency: currency(),
    })
}

async fn execute(
    ledger: &Ledger,
    commands: Vec<Command>,
) -> Result<Vec<CommandResult>, BenchError> {
    ledger
        .execute(commands)
        .await
        .map_err(|error| BenchError::Setup(error.to_string()))
}

async fn wait_settled(ledger: &Ledger) -> Result<(), BenchError> {
    let deadline = Instant::now() + COMPLETION_TIMEOUT;
    while ledger.stats().credits() < ledger.stats().debits() {
        if Instant::now() > deadline {
            return Err(BenchError::Incomplete(COMPLETION_TIMEOUT));
        }
        actix_rt::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// Shared progress of the driver.
struct Progress {
    next_transfer: AtomicU64,
    accepted: AtomicU64,
    retried: AtomicU64,
    late_batches: AtomicU64,
    rejected: Mutex<std::collections::BTreeMap<String, u64>>,
    batch_latency_us: Mutex<Histogram<u64>>,
    bar: ProgressBar,
}

/// Runs the benchmark on a started ledger over a fresh store.
pub async fn run(
    ledger: &Ledger,
    config: &EngineBenchConfig,
) -> Result<EngineBenchReport, BenchError> {
    config.validate()?;
    setup(ledger, config).await?;
    let bar = super::transfers_bar(config.transfers, config.progress);
    let progress = Arc::new(Progress {
        next_transfer: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        late_batches: AtomicU64::new(0),
        rejected: Mutex::new(Default::default()),
        batch_latency_us: Mutex::new(cells::store::latency_histogram()),
        bar,
    });
    let store = ledger.store().stats();
    let credits_before = ledger.stats().credits();
    let debits_before = ledger.stats().debits();
    ledger.stats().take_commit_latency();
    ledger.store().take_commit_latency();
    let cpu_before = crate::cpu::snapshot();
    // The customers' ids, made once: a client holds its account ids, it does not format
    // and check two per transfer (about 3 % of the driver's CPU in holds).
    let customers: Arc<[AccountId]> = (0..config.accounts).map(customer).collect();
    let started = Instant::now();
    let workers = (0..config.in_flight).map(|_| {
        worker(
            ledger.clone(),
            config.clone(),
            Arc::clone(&customers),
            Arc::clone(&progress),
            started,
        )
    });
    futures::future::join_all(workers).await;
    let acknowledged = started.elapsed();
    wait_settled(ledger).await?;
    let completed = started.elapsed();
    let cpu = crate::cpu::snapshot().since(&cpu_before);
    progress.bar.finish_and_clear();
    let store_after = ledger.store().stats();
    let credits = ledger.stats().credits() - credits_before;
    let debits = ledger.stats().debits() - debits_before;
    assert_eq!(credits, debits, "every debit of the run has its credit");
    let commit = ledger.stats().take_commit_latency();
    let store_commit = ledger.store().take_commit_latency();
    let batch = progress
        .batch_latency_us
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| Histogram::new(3).expect("valid"));
    let fsyncs = store_after.durable_writes - store.durable_writes;
    let commits = store_after.transactions_committed - store.transactions_committed;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let accepted = progress.accepted.load(Ordering::Relaxed);
    Ok(EngineBenchReport {
        scenario: config.scenario.name(),
        transfers: config.transfers,
        accounts: config.accounts,
        batch_size: config.batch_size,
        in_flight: config.in_flight,
        offered_per_second: config.rate,
        late_batches: progress.late_batches.load(Ordering::Relaxed),
        seed: config.seed,
        accepted,
        rejected: progress
            .rejected
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or(0),
        rejected_by_code: progress
            .rejected
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        acknowledged_seconds: acknowledged.as_secs_f64(),
        completed_seconds: completed.as_secs_f64(),
        // Only transfers the ledger accepted count (refusals do no work worth counting).
        acknowledged_per_second: accepted as f64 / acknowledged.as_secs_f64(),
        completed_per_second: accepted as f64 / completed.as_secs_f64(),
        retried: progress.retried.load(Ordering::Relaxed),
        commit_latency_ms_p50: ms(&commit, 0.5),
        commit_latency_ms_p99: ms(&commit, 0.99),
        commit_latency_ms_max: commit.max() as f64 / 1_000.0,
        store_commit_latency_ms_p50: store_commit.as_ref().map(|h| ms(h, 0.5)),
        store_commit_latency_ms_p99: store_commit.as_ref().map(|h| ms(h, 0.99)),
        store_commit_latency_ms_max: store_commit.as_ref().map(|h| h.max() as f64 / 1_000.0),
        batch_latency_ms_p50: ms(&batch, 0.5),
        batch_latency_ms_p99: ms(&batch, 0.99),
        batch_latency_ms_max: batch.max() as f64 / 1_000.0,
        commits,
        fsyncs,
        fsyncs_per_second: fsyncs as f64 / completed.as_secs_f64(),
        transactions_per_fsync: commits as f64 / fsyncs.max(1) as f64,
        bytes_written_per_transfer: (store_after.bytes_written - store.bytes_written) as f64
            / config.transfers as f64,
        peak_rss_bytes: crate::rss::peak_rss_bytes(),
        cpu_us_per_transfer: cpu.seconds * 1e6 / config.transfers as f64,
        cpu_seconds: cpu.seconds,
        cpu_cores_busy: cpu.seconds / completed.as_secs_f64(),
        cpu_seconds_by_thread: cpu.by_thread,
        host_steal_percent: cpu.host_steal_percent,
    })
}

/// One closed loop. Every call to the ledger carries up to `batch_size` commands: the
/// follow-ups (capture or release) of the holds its previous call created, then as many new
/// transfers as fit, taken from the shared counter. A held transfer thus rides in two
/// consecutive calls of one worker, as a client sends captures among its new work; every
/// call but a worker's last is a full batch. It ends once no transfers are left and its
/// follow-ups are done. With a `rate`, a call waits for the slot of its first new transfer
/// (one that carries only follow-ups goes at once), and its latency counts from that slot.
async fn worker(
    ledger: Ledger,
    config: EngineBenchConfig,
    customers: Arc<[AccountId]>,
    progress: Arc<Progress>,
    run_started: Instant,
) {
    let mut carried: Vec<Command> = Vec::new();
    loop {
        let room = (config.batch_size - carried.len()) as u64;
        let first = progress
            .next_transfer
            .fetch_add(room, Ordering::Relaxed)
            .min(config.transfers);
        let count = room.min(config.transfers - first);
        if count == 0 && carried.is_empty() {
            return;
        }
        let mut rng =
            StdRng::seed_from_u64(config.seed ^ first.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let settling = carried.len();
        let mut commands = std::mem::take(&mut carried);
        let follow_ups = build_batch(&config, &customers, &mut rng, first, count, &mut commands);
        let started = match config.rate {
            Some(rate) if count > 0 => {
                let slot = run_started + slot_offset(first, rate);
                let now = Instant::now();
                if now < slot {
                    actix_rt::time::sleep_until(slot.into()).await;
                } else if now - slot > LATE_AFTER {
                    progress.late_batches.fetch_add(1, Ordering::Relaxed);
                }
                slot
            }
            _ => Instant::now(),
        };
        let results = execute_retrying(&ledger, commands, &progress).await;
        // A hold that was refused ends its transfer here; one that was created ends in the
        // next call, with its follow-up's result.
        let mut ended = Vec::with_capacity(results.len());
        let mut follow_ups = follow_ups.into_iter().peekable();
        for (position, result) in results.into_iter().enumerate() {
            match follow_ups.next_if(|(held, _)| *held == position) {
                Some((_, follow_up)) if matches!(result, Ok(Outcome::HoldCreated)) => {
                    carried.push(follow_up)
                }
                _ => ended.push(result),
            }
        }
        debug_assert!(settling <= ended.len(), "follow-ups end their transfers");
        record(&progress, &ended, started.elapsed());
    }
}

/// When transfer `n` is due at `rate` transfers per second, from the start of the run.
fn slot_offset(n: u64, rate: u64) -> Duration {
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Runs a batch as a well-behaved client does: commands refused with a retryable code
/// (`overloaded`, `unavailable`, …) are sent again with the same ids after a pause, a bounded
/// number of times; their final results count.
async fn execute_retrying(
    ledger: &Ledger,
    commands: Vec<Command>,
    progress: &Progress,
) -> Vec<CommandResult> {
    let mut results = ledger.execute(commands.clone()).await.unwrap_or_default();
    for attempt in 0..RETRIES_MAX {
        let retry: Vec<usize> = (0..results.len())
            .filter(|i| matches!(&results[*i], Err(code) if code.is_retryable()))
            .collect();
        if retry.is_empty() {
            break;
        }
        progress
            .retried
            .fetch_add(retry.len() as u64, Ordering::Relaxed);
        actix_rt::time::sleep(Duration::from_micros(500 << attempt.min(6))).await;
        let again = retry.iter().map(|i| commands[*i].clone()).collect();
        let answers = ledger.execute(again).await.unwrap_or_default();
        for (i, answer) in retry.into_iter().zip(answers) {
            results[i] = answer;
        }
    }
    results
}

fn record(progress: &Progress, results: &[CommandResult], latency: Duration) {
    let mut accepted = 0;
    for result in results {
        match result {
            Ok(_) => accepted += 1,
            Err(code) => {
                if let Ok(mut rejected) = progress.rejected.lock() {
                    *rejected.entry(code.name().to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    progress.accepted.fetch_add(accepted, Ordering::Relaxed);
    if let Ok(mut histogram) = progress.batch_latency_us.lock() {
        histogram.saturating_record((latency.as_micros() as u64).max(1));
    }
    progress.bar.inc(results.len() as u64);
}

/// Appends the commands of transfers `first..first + count` to `commands`, and returns the
/// follow-ups of its holds with the position of their hold in `commands`, in order.
fn build_batch(
    config: &EngineBenchConfig,
    customers: &[AccountId],
    rng: &mut StdRng,
    first: u64,
    count: u64,
    commands: &mut Vec<Command>,
) -> Vec<(usize, Command)> {
    commands.reserve(count as usize);
    let mut follow_ups = Vec::new();
    // Looked up once, as a client would: not once per command.
    let usd = currency();
    for n in first..first + count {
        let units = rng.random_range(1..=TRANSFER_UNITS_MAX);
        let amount = Amount::from_minor_units(units).expect("positive");
        let customer = |index: u64| customers[index as usize].clone();
        let pick = |rng: &mut StdRng| customer(rng.random_range(0..config.accounts));
        let (from, to) = match config.scenario {
            Scenario::Uniform | Scenario::Holds => {
                let from = rng.random_range(0..config.accounts);
                let offset = rng.random_range(1..config.accounts);
                (customer(from), customer((from + offset) % config.accounts))
            }
            Scenario::HotCredit => (pick(rng), account_id("merchant")),
            Scenario::HotDebit => (account_id("payer"), pick(rng)),
        };
        if config.scenario == Scenario::Holds && rng.random_bool(0.3) {
            let hold = numbered("h-", n, |id| HoldId::new(id).expect("valid id"));
            commands.push(Command::Hold(HoldRequest {
                id: hold.clone(),
                account: from,
                amount,
                currency: usd,
                expires_in_ms: Some(600_000),
            }));
            let follow_up = if rng.random_bool(2.0 / 3.0) {
                Command::Capture(CaptureRequest {
                    hold,
                    to,
                    amount: None,
                })
            } else {
                Command::Release(hold)
            };
            follow_ups.push((commands.len() - 1, follow_up));
            continue;
        }
        commands.push(Command::Transfer(TransferRequest {
            id: numbered("t-", n, |id| TransferId::new(id).expect("valid id")),
            from,
            to,
            amount,
            currency: usd,
        }));
    }
    follow_ups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_rate_without_drift_or_overflow() {
        assert_eq!(slot_offset(0, 1), Duration::ZERO);
        assert_eq!(slot_offset(250_000, 250_000), Duration::from_secs(1));
        // Computed from the transfer's number, not summed per batch: no rounding drift.
        assert_eq!(slot_offset(3, 3_000_000), Duration::from_nanos(1_000));
        assert_eq!(slot_offset(1, 3), Duration::from_nanos(333_333_333));
        // Far past any run's length it saturates rather than wraps.
        assert_eq!(
            slot_offset(u64::MAX, RATE_MAX),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(slot_offset(u64::MAX, 1), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn a_rate_outside_its_bounds_is_refused() {
        let mut config = EngineBenchConfig {
            scenario: Scenario::Uniform,
            transfers: 10,
            accounts: 10,
            batch_size: 10,
            in_flight: 1,
            rate: Some(0),
            seed: 1,
            progress: false,
        };
        assert!(matches!(config.validate(), Err(BenchError::Config(_))));
        config.rate = Some(RATE_MAX + 1);
        assert!(matches!(config.validate(), Err(BenchError::Config(_))));
        config.rate = Some(RATE_MAX);
        assert!(config.validate().is_ok());
        config.rate = None;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn accounts_outside_their_bounds_are_refused() {
        let mut config = EngineBenchConfig {
            scenario: Scenario::Uniform,
            transfers: 10,
            accounts: 1,
            batch_size: 10,
            in_flight: 1,
            rate: None,
            seed: 1,
            progress: false,
        };
        assert!(matches!(config.validate(), Err(BenchError::Config(_))));
        config.accounts = ACCOUNTS_MAX + 1;
        assert!(matches!(config.validate(), Err(BenchError::Config(_))));
        config.accounts = ACCOUNTS_MAX;
        assert!(config.validate().is_ok());
        config.accounts = 2;
        assert!(config.validate().is_ok());
    }
}
