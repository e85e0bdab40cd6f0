//! Ledger runtime settings and their limits.

use std::time::Duration;

use cells::ids::DcId;
use cells::keys::Keyspace;

/// Capacity of an account actor's inbox (deliveries, each carrying many commands or
/// credit legs; see `registry::Inbox`).
pub const ACCOUNT_MAILBOX_CAPACITY: usize = 1_024;
/// Capacity of the outbox relay's mailbox.
pub const RELAY_MAILBOX_CAPACITY: usize = 4_096;
/// Credit legs the relay keeps for retry when a payee is overloaded; beyond it the relay
/// drops them from memory and rescans the durable outbox instead.
pub const RELAY_RETRY_CREDITS_MAX: usize = 1_000_000;
/// Default of [`LedgerConfig::active_accounts_max`].
pub const ACTIVE_ACCOUNTS_MAX_DEFAULT: usize = 1_000_000;
/// Account specs cached by the directory.
pub const DIRECTORY_ACCOUNTS_MAX: usize = 1_000_000;
/// Attempts at creating a batch of accounts before giving up with `unavailable`.
pub const CREATE_ATTEMPTS_MAX: usize = 8;
/// Largest limit of commits in flight per arbiter thread a [`CommitWindow`] may set.
pub const COMMIT_WINDOW_MAX: usize = 65_536;

const _: () = assert!(RELAY_RETRY_CREDITS_MAX >= cells::ledger::BATCH_COMMANDS_MAX);

/// Settings of a [`crate::Ledger`].
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Keyspace the ledger reads and writes (real money or shadow traffic).
    pub keyspace: Keyspace,
    /// Arbiters (threads) the account actors are spread over; 0 runs them on the arbiter
    /// that starts the ledger.
    pub arbiters: usize,
    /// Most account actors alive at once; activation beyond it answers `overloaded`.
    pub active_accounts_max: usize,
    /// An account actor with nothing to do for this long stops (passivates).
    pub idle_timeout: Duration,
    /// Postings an `append`-mode account accumulates before netting them into its balance.
    pub netting_postings: u64,
    /// How often idle checks, hold expiry and outbox retries run.
    pub tick: Duration,
    /// The DC this ledger serves as: it then serves only users it owns (others get
    /// `not_owner`). `None` runs standalone (the engine benchmark, one-process tests).
    /// Either way every commit is fenced by the ownership records it loaded under.
    pub dc: Option<DcId>,
    /// Rescan the outbox this often even when nothing asked for it. DC mode sets it: the
    /// rescan is what delivers legs another DC could not take when they were first sent.
    pub outbox_rescan_interval: Option<Duration>,
    /// How many commits the account actors of one arbiter thread may have in flight.
    pub commit_window: CommitWindow,
    /// Client commands one commit of an account takes, at most (1 to 8,190; credit legs
    /// and expiries fill a commit up to 8,190). A larger share of a batch is split in order,
    /// its rest committed next, each part answered when its commit is durable.
    ///
    /// Callers wait for their commit, and a hot payer's commits are serial. On the 2-core
    /// machine (`bench engine` hot-debit, BENCHMARKS.md round 18) a commit of 8,190 debits
    /// took about 25 ms from seal to durable, 2,048 about 12–20 ms and 1,024 (the default)
    /// about 7 ms, at 280,000–400,000 debits/s. At 512 the payer's serial commits became
    /// the limit (205,000–215,000/s). A limit that adapted to each commit's latency chased
    /// noise: it grew whenever a few commits were fast, and the p99 rose to 10–16 ms. A
    /// faster disk affords a larger one.
    pub commit_client_items: usize,
}

/// Bounds of the commit window of each arbiter thread: the limit of commits in flight
/// starts at `initial` and adapts to commit latency between `min` and `max` (see
/// `account::window`). A thread takes the bounds of the first ledger whose actor commits
/// on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitWindow {
    pub initial: usize,
    pub min: usize,
    pub max: usize,
}

impl Default for CommitWindow {
    fn default() -> Self {
        CommitWindow {
            initial: 256,
            min: 16,
            max: 4_096,
        }
    }
}

impl CommitWindow {
    /// A window that never adapts: always `limit` commits in flight at most.
    pub fn fixed(limit: usize) -> Self {
        CommitWindow {
            initial: limit,
            min: limit,
            max: limit,
        }
    }

    /// Whether `1 <= min <= initial <= max <= COMMIT_WINDOW_MAX`.
    pub fn is_valid(&self) -> bool {
        1 <= self.min
            && self.min <= self.initial
            && self.initial <= self.max
            && self.max <= COMMIT_WINDOW_MAX
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            keyspace: Keyspace::Real,
            arbiters: 1,
            active_accounts_max: ACTIVE_ACCOUNTS_MAX_DEFAULT,
            idle_timeout: Duration::from_secs(30),
            netting_postings: 10_000,
            tick: Duration::from_secs(1),
            dc: None,
            outbox_rescan_interval: None,
            commit_window: CommitWindow::default(),
            commit_client_items: 1_024,
        }
    }
}
