//! Routing: user → slot → owning DC, and batches forwarded over the DC protocol.
//!
//! Owns the router's cached copy of the ownership table (followed incrementally from the
//! store's history), one [`DcClient`] per live DC node (addresses from the leases), and
//! bounded caches of account → user and hold → account (both immutable facts once
//! written, so a cache entry never goes stale).
//!
//! [`Routing::execute`] splits a batch by the DC that owns each command's user, sends the
//! parts concurrently, and re-sends only the commands whose answer was retryable
//! (`not_owner`, `unavailable`, a request that never left, an answer lost) after a table
//! refresh, with the same ids: every command is idempotent by its id, so a re-send after
//! an unknown outcome returns the original outcome. It gives up after a bounded time and
//! answers the last retryable code.
//!
//! Must never: answer a command it did not get a definitive answer for with anything but a
//! retryable code; send a command to a DC the cached table does not name as its owner;
//! hold more than its cache limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cells::ids::{AccountId, DcId, HoldId, UserId};
use cells::keys::Keyspace;
use cells::ledger::{Command, CommandResult, ErrorCode, Outcome, BATCH_COMMANDS_MAX};
use cells::ownership::{self, LeaseState, OwnershipTable};
use cells::records::{self, AccountRecord, HoldRecord};
use cells::store::Store;
use futures::future::join_all;
use wire::dc_client::{DcCallError, DcClient, DcClientOptions};

/// Entries of the account → user cache before it is cleared (the store is the truth).
pub const ACCOUNT_CACHE_MAX: usize = 1_000_000;
/// Entries of the hold → account cache before it is cleared.
pub const HOLD_CACHE_MAX: usize = 1_000_000;

/// Settings of a [`Routing`].
#[derive(Debug, Clone)]
pub struct RoutingOptions {
    /// How long a batch keeps being re-sent while its answers are retryable.
    pub retry_deadline: Duration,
    /// Pause between two rounds of re-sends.
    pub retry_pause: Duration,
    /// Refreshes of the table closer together than this are served by the last one.
    pub refresh_min_interval: Duration,
    pub client: DcClientOptions,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        RoutingOptions {
            retry_deadline: Duration::from_secs(8),
            retry_pause: Duration::from_millis(20),
            refresh_min_interval: Duration::from_millis(10),
            client: DcClientOptions {
                reply_timeout_ms: 5_000,
                ..DcClientOptions::default()
            },
        }
    }
}

/// What the router knows about the deployment.
struct View {
    /// Shared, so that readers and the follower never copy the 65,536-slot table.
    table: Arc<OwnershipTable>,
    links: HashMap<DcId, Arc<DcClient>>,
    addrs: HashMap<DcId, String>,
    refreshed: Option<Instant>,
}

/// Where one command goes.
enum Route {
    /// To the DC owning this user.
    User(UserId),
    /// To any live DC (reads of immutable records).
    Any,
    /// Answered here without a DC (the command names something that does not exist).
    Answer(CommandResult),
}

/// The router's routing core; shared by every request handler.
pub struct Routing {
    store: Arc<dyn Store>,
    options: RoutingOptions,
    view: RwLock<View>,
    refresh_lock: tokio::sync::Mutex<()>,
    accounts: Mutex<HashMap<AccountId, UserId>>,
    holds: Mutex<HashMap<HoldId, AccountId>>,
}

/// Counts of one [`Routing::execute`] call, for reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteStats {
    /// Rounds of re-sends after a retryable answer.
    pub retries: u32,
}

impl Routing {
    /// A router over `store`; reads the table and the leases once.
    pub async fn connect(
        store: Arc<dyn Store>,
        options: RoutingOptions,
    ) -> Result<Routing, ownership::OwnershipError> {
        let routing = Routing {
            store,
            options,
            view: RwLock::new(View {
                table: Arc::new(OwnershipTable::empty()),
                links: HashMap::new(),
                addrs: HashMap::new(),
                refreshed: None,
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
            accounts: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
        };
        routing.refresh().await?;
        Ok(routing)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The table version the router routes by.
    pub fn table_version(&self) -> u64 {
        self.read_view().table.version
    }

    /// The cached table.
    pub fn table(&self) -> Arc<OwnershipTable> {
        Arc::clone(&self.read_view().table)
    }

    /// DC nodes the router has a link to, with whether the link is up.
    pub fn links(&self) -> Vec<(DcId, String, bool)> {
        let view = self.read_view();
        let mut links: Vec<_> = view
            .links
            .iter()
            .map(|(dc, link)| (dc.clone(), link.addr().to_string(), link.is_connected()))
            .collect();
        links.sort();
        links
    }

    fn read_view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the table and the DC links up to date (incrementally; at most once per
    /// `refresh_min_interval`, concurrent callers share one refresh).
    pub async fn refresh(&self) -> Result<(), ownership::OwnershipError> {
        self.refresh_since(None).await
    }

    /// Like [`Routing::refresh`], but the table read starts after this call does: for
    /// callers that must see a change committed before they called (the admin API after a
    /// shift step), where a refresh already in flight may have read the older table.
    pub async fn refresh_current(&self) -> Result<(), ownership::OwnershipError> {
        self.refresh_since(Some(Instant::now())).await
    }

    async fn refresh_since(
        &self,
        called: Option<Instant>,
    ) -> Result<(), ownership::OwnershipError> {
        let _one = self.refresh_lock.lock().await;
        let current = {
            let view = self.read_view();
            // `refreshed` is when the last read began.
            let fresh = view.refreshed.is_some_and(|at| match called {
                Some(called) => at >= called,
                None => at.elapsed() < self.options.refresh_min_interval,
            });
            if fresh {
                return Ok(());
            }
            Arc::clone(&view.table)
        };
        let read_started = Instant::now();
        // Most polls find the version unchanged and get the same table back (no copy).
        let table = ownership::refresh(self.store.as_ref(), &current).await?;
        let leases = ownership::read_leases(self.store.as_ref()).await?;
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        for lease in leases {
            if lease.state != LeaseState::Live {
                continue;
            }
            if view.addrs.get(&lease.dc) == Some(&lease.addr) {
                continue;
            }
            match DcClient::connect(&lease.addr, self.options.client.clone()) {
                Ok(link) => {
                    tracing::info!(dc = %lease.dc, addr = %lease.addr, "router links DC node");
                    view.links.insert(lease.dc.clone(), Arc::new(link));
                    view.addrs.insert(lease.dc.clone(), lease.addr.clone());
                }
                Err(error) => {
                    tracing::warn!(dc = %lease.dc, %error, "cannot start a DC link");
                }
            }
        }
        if table.version != view.table.version {
            metrics::gauge!("tessera_router_table_version").set(table.version as f64);
        }
        view.table = table;
        view.refreshed = Some(read_started);
        Ok(())
    }

    /// Runs a batch (at most [`BATCH_COMMANDS_MAX`] commands): one result per command, in
    /// order. Commands of the same account keep their order (they go to the same DC in one
    /// request).
    pub async fn execute(
        &self,
        space: Keyspace,
        commands: Vec<Command>,
    ) -> (Vec<CommandResult>, RouteStats) {
        assert!(commands.len() <= BATCH_COMMANDS_MAX, "batch over the limit");
        let started = Instant::now();
        let deadline = started + self.options.retry_deadline;
        let mut results: Vec<Option<CommandResult>> = vec![None; commands.len()];
        let routes = self.routes(space, &commands).await;
        let mut users: Vec<Option<UserId>> = Vec::with_capacity(commands.len());
        for (index, route) in routes.into_iter().enumerate() {
            match route {
                Route::User(user) => users.push(Some(user)),
                Route::Any => users.push(None),
                Route::Answer(answer) => {
                    results[index] = Some(answer);
                    users.push(None);
                }
            }
        }
        let mut stats = RouteStats::default();
        let mut last_failure: Vec<ErrorCode> = vec![ErrorCode::Unavailable; commands.len()];
        let mut spread = 0usize;
        loop {
            let pending: Vec<usize> = (0..commands.len())
                .filter(|i| results[*i].is_none())
                .collect();
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for index in pending {
                    results[index] = Some(Err(last_failure[index]));
                }
                break;
            }
            // Split by owner under the current view: a few DCs, found by a linear search
            // (no hash and no id copy per command).
            let mut parts: Vec<(DcId, Arc<DcClient>, Vec<usize>)> = Vec::new();
            {
                let view = self.read_view();
                let live: Vec<&DcId> = {
                    let mut live: Vec<&DcId> = view.links.keys().collect();
                    live.sort();
                    live
                };
                for index in &pending {
                    let dc = match &users[*index] {
                        Some(user) => view.table.owner_of(user).map(|owner| &owner.dc),
                        None if !live.is_empty() => {
                            spread = spread.wrapping_add(1);
                            Some(live[spread % live.len()])
                        }
                        None => None,
                    };
                    let Some(dc) = dc else {
                        last_failure[*index] = ErrorCode::Unavailable;
                        continue;
                    };
                    if let Some((_, _, indexes)) = parts.iter_mut().find(|(at, ..)| at == dc) {
                        indexes.push(*index);
                        continue;
                    }
                    let Some(link) = view.links.get(dc) else {
                        last_failure[*index] = ErrorCode::Unavailable;
                        continue;
                    };
                    parts.push((dc.clone(), Arc::clone(link), vec![*index]));
                }
            }
            let calls = parts.into_iter().map(|(_, link, indexes)| {
                let batch: Vec<Command> = indexes.iter().map(|i| commands[*i].clone()).collect();
                let call = link.execute(space, batch);
                async move { (indexes, call.await) }
            });
            let mut retry = false;
            for (indexes, answer) in join_all(calls).await {
                match answer {
                    Ok(answers) => {
                        for (index, answer) in indexes.into_iter().zip(answers) {
                            match answer {
                                Err(code) if code.is_retryable() => {
                                    last_failure[index] = code;
                                    retry = true;
                                }
                                answer => results[index] = Some(answer),
                            }
                        }
                    }
                    Err(error) => {
                        let code = match &error {
                            // Sent but unanswered: the outcome is unknown until a re-send
                            // with the same ids answers it.
                            DcCallError::Lost { .. } | DcCallError::Protocol { .. } => {
                                ErrorCode::OutcomeUnknown
                            }
                            other => other.code(),
                        };
                        tracing::debug!(%error, "DC call failed; will re-send");
                        for index in indexes {
                            last_failure[index] = code;
                        }
                        retry = true;
                    }
                }
            }
            if retry || results.iter().any(Option::is_none) {
                stats.retries += 1;
                metrics::counter!("tessera_router_resends_total").increment(1);
                let pause = self
                    .options
                    .retry_pause
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                if let Err(error) = self.refresh().await {
                    tracing::warn!(%error, "router cannot refresh the ownership table");
                }
            }
        }
        self.remember(&commands, &results);
        metrics::histogram!("tessera_router_batch_seconds").record(started.elapsed().as_secs_f64());
        (
            results.into_iter().map(|r| r.expect("answered")).collect(),
            stats,
        )
    }

    /// The route of every command; unknown accounts and holds are answered here.
    async fn routes(&self, space: Keyspace, commands: &[Command]) -> Vec<Route> {
        // Accounts and holds the batch itself creates.
        let mut created: HashMap<&AccountId, &UserId> = HashMap::new();
        let mut new_holds: HashMap<&HoldId, &AccountId> = HashMap::new();
        for command in commands {
            match command {
                Command::CreateAccount(spec) => {
                    created.insert(&spec.id, &spec.user);
                }
                Command::Hold(request) => {
                    new_holds.insert(&request.id, &request.account);
                }
                _ => {}
            }
        }
        // Holds to look up, then accounts to look up.
        let mut hold_accounts: HashMap<HoldId, Option<AccountId>> = HashMap::new();
        {
            let cache = self.holds.lock().unwrap_or_else(|p| p.into_inner());
            for command in commands {
                let hold = match command {
                    Command::Release(hold) => hold,
                    Command::Capture(request) => &request.hold,
                    _ => continue,
                };
                if let Some(account) = new_holds.get(hold) {
                    hold_accounts.insert(hold.clone(), Some((*account).clone()));
                } else if let Some(account) = cache.get(hold) {
                    hold_accounts.insert(hold.clone(), Some(account.clone()));
                } else {
                    hold_accounts.entry(hold.clone()).or_insert(None);
                }
            }
        }
        let missing: Vec<HoldId> = hold_accounts
            .iter()
            .filter(|(_, account)| account.is_none())
            .map(|(hold, _)| hold.clone())
            .collect();
        let mut unreadable = false;
        if !missing.is_empty() {
            let keys = missing.iter().map(|hold| space.hold(hold)).collect();
            match self.store.get_many(keys).await {
                Ok(values) => {
                    for (hold, value) in missing.iter().zip(values) {
                        if let Some(bytes) = value {
                            if let Ok(record) = records::decode::<HoldRecord>("hold", &bytes) {
                                hold_accounts.insert(hold.clone(), Some(record.account));
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "router cannot read holds");
                    unreadable = true;
                }
            }
        }
        let account_of = |command: &Command| -> Option<AccountId> {
            match command {
                Command::Transfer(request) => Some(request.from.clone()),
                Command::Hold(request) => Some(request.account.clone()),
                Command::LookupAccount(id) => Some(id.clone()),
                Command::Release(hold) => hold_accounts.get(hold).cloned().flatten(),
                Command::Capture(request) => hold_accounts.get(&request.hold).cloned().flatten(),
                _ => None,
            }
        };
        let mut account_users: HashMap<AccountId, Option<UserId>> = HashMap::new();
        {
            let cache = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            for command in commands {
                let Some(account) = account_of(command) else {
                    continue;
                };
                let user = created
                    .get(&account)
                    .map(|user| (*user).clone())
                    .or_else(|| cache.get(&account).cloned());
                account_users.entry(account).or_insert(user);
            }
        }
        let missing: Vec<AccountId> = account_users
            .iter()
            .filter(|(_, user)| user.is_none())
            .map(|(account, _)| account.clone())
            .collect();
        if !missing.is_empty() {
            let keys = missing
                .iter()
                .map(|account| space.account(account))
                .collect();
            match self.store.get_many(keys).await {
                Ok(values) => {
                    let mut cache = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() + missing.len() > ACCOUNT_CACHE_MAX {
                        cache.clear();
                    }
                    for (account, value) in missing.iter().zip(values) {
                        if let Some(bytes) = value {
                            if let Ok(record) = records::decode::<AccountRecord>("account", &bytes)
                            {
                                cache.insert(account.clone(), record.spec.user.clone());
                                account_users.insert(account.clone(), Some(record.spec.user));
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "router cannot read accounts");
                    unreadable = true;
                }
            }
        }
        commands
            .iter()
            .map(|command| match command {
                Command::CreateAccount(spec) => Route::User(spec.user.clone()),
                Command::LookupTransfer(_) | Command::LookupHold(_) => Route::Any,
                Command::Release(hold)
                | Command::Capture(cells::ledger::CaptureRequest { hold, .. })
                    if hold_accounts.get(hold).is_some_and(Option::is_none) =>
                {
                    Route::Answer(Err(if unreadable {
                        ErrorCode::Unavailable
                    } else {
                        ErrorCode::UnknownHold
                    }))
                }
                other => {
                    let account = account_of(other).expect("every other command names an account");
                    match account_users.get(&account).cloned().flatten() {
                        Some(user) => Route::User(user),
                        None if unreadable => Route::Answer(Err(ErrorCode::Unavailable)),
                        None => Route::Answer(Err(ErrorCode::UnknownAccount)),
                    }
                }
            })
            .collect()
    }

    /// Caches what the answers proved: created accounts and holds.
    fn remember(&self, commands: &[Command], results: &[Option<CommandResult>]) {
        let mut accounts = Vec::new();
        let mut holds = Vec::new();
        for (command, result) in commands.iter().zip(results) {
            match (command, result) {
                (Command::CreateAccount(spec), Some(Ok(Outcome::AccountCreated))) => {
                    accounts.push((spec.id.clone(), spec.user.clone()));
                }
                (Command::Hold(request), Some(Ok(_))) => {
                    holds.push((request.id.clone(), request.account.clone()));
                }
                _ => {}
            }
        }
        if !accounts.is_empty() {
            let mut cache = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() + accounts.len() > ACCOUNT_CACHE_MAX {
                cache.clear();
            }
            cache.extend(accounts);
        }
        if !holds.is_empty() {
            let mut cache = self.holds.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() + holds.len() > HOLD_CACHE_MAX {
                cache.clear();
            }
            cache.extend(holds);
        }
    }
}
