//! A load for crash tests: transfers in batches, every acknowledgement printed.
//!
//! Prints `ack <transfer-id>` for every transfer the ledger accepted, and
//! `rejected <transfer-id> <code>` for every refusal, after the whole batch is answered,
//! then flushes. A line is printed only after its transfer is durable, so a test that kills
//! the process (kill -9) at any moment can hold the store to every `ack` line it read.

use std::io::Write;

use actors::Ledger;
use cells::ids::{AccountId, TransferId, UserId};
use cells::ledger::{Command, ErrorCode, TransferRequest, BATCH_COMMANDS_MAX};
use cells::money::{Amount, Currency};
use cells::records::{AccountKind, AccountSpec, HotMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Settings of a crash load.
#[derive(Debug, Clone)]
pub struct CrashLoadConfig {
    pub accounts: u64,
    pub batch_size: usize,
    pub seed: u64,
    /// Tag that makes this run's transfer ids distinct from earlier runs' ids.
    pub run: String,
    /// Transfers to send before stopping by itself.
    pub transfers: u64,
}

/// Why the load stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CrashLoadError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("output failed: {0}")]
    Output(#[from] std::io::Error),
    #[error("setup failed: {0:?}")]
    Setup(ErrorCode),
}

fn currency() -> Currency {
    Currency::from_code("USD").expect("USD is known")
}

fn id(text: &str) -> AccountId {
    AccountId::new(text).expect("load ids are valid")
}

/// Creates (or finds) the accounts: a system account and customers funded from it.
async fn setup(ledger: &Ledger, config: &CrashLoadConfig) -> Result<(), CrashLoadError> {
    let spec = |name: String, kind| AccountSpec {
        id: id(&name),
        user: UserId::new(&name).expect("valid"),
        currency: currency(),
        kind,
        overdraft_limit: 0,
        mode: if name == "c-1" {
            HotMode::Append
        } else {
            HotMode::Standard
        },
    };
    let mut commands = vec![Command::CreateAccount(spec(
        "world".into(),
        AccountKind::System,
    ))];
    commands.extend(
        (0..config.accounts)
            .map(|i| Command::CreateAccount(spec(format!("c-{i}"), AccountKind::Customer))),
    );
    for chunk in commands.chunks(BATCH_COMMANDS_MAX) {
        let results = ledger
            .execute(chunk.to_vec())
            .await
            .map_err(|e| CrashLoadError::Setup(e.code()))?;
        if let Some(Err(code)) = results
            .into_iter()
            .find(|r| !matches!(r, Ok(_) | Err(ErrorCode::AccountExists)))
        {
            return Err(CrashLoadError::Setup(code));
        }
    }
    // Funding ids are fixed, so a restarted load's funding is an idempotent retry.
    let funding: Vec<_> = (0..config.accounts)
        .map(|i| {
            Command::Transfer(TransferRequest {
                id: TransferId::new(&format!("fund-c-{i}")).expect("valid"),
                from: id("world"),
                to: id(&format!("c-{i}")),
                amount: Amount::from_minor_units(100_000).expect("positive"),
                currency: currency(),
            })
        })
        .collect();
    for chunk in funding.chunks(BATCH_COMMANDS_MAX) {
        let results = ledger
            .execute(chunk.to_vec())
            .await
            .map_err(|e| CrashLoadError::Setup(e.code()))?;
        if let Some(Err(code)) = results.into_iter().find(|r| r.is_err()) {
            return Err(CrashLoadError::Setup(code));
        }
    }
    Ok(())
}

/// Runs the load, printing to `out`; returns the number of acknowledged transfers.
pub async fn run(
    ledger: &Ledger,
    config: &CrashLoadConfig,
    out: &mut impl Write,
) -> Result<u64, CrashLoadError> {
    if config.accounts < 2 || config.batch_size == 0 || config.batch_size > BATCH_COMMANDS_MAX {
        return Err(CrashLoadError::Config(
            "need >= 2 accounts and 1..=8190 per batch".into(),
        ));
    }
    setup(ledger, config).await?;
    writeln!(out, "ready")?;
    out.flush()?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut acknowledged = 0;
    let mut sent = 0;
    while sent < config.transfers {
        let count = (config.batch_size as u64).min(config.transfers - sent);
        let batch: Vec<TransferRequest> = (sent..sent + count)
            .map(|n| {
                let from = rng.random_range(0..config.accounts);
                let to = (from + rng.random_range(1..config.accounts)) % config.accounts;
                TransferRequest {
                    id: TransferId::new(&format!("{}-{n}", config.run)).expect("valid"),
                    from: id(&format!("c-{from}")),
                    to: id(&format!("c-{to}")),
                    amount: Amount::from_minor_units(rng.random_range(1..=500)).expect("positive"),
                    currency: currency(),
                }
            })
            .collect();
        sent += count;
        let commands = batch.iter().cloned().map(Command::Transfer).collect();
        let results = ledger
            .execute(commands)
            .await
            .map_err(|e| CrashLoadError::Setup(e.code()))?;
        for (request, result) in batch.iter().zip(results) {
            match result {
                Ok(_) => {
                    acknowledged += 1;
                    writeln!(out, "ack {}", request.id)?;
                }
                Err(code) => writeln!(out, "rejected {} {}", request.id, code.name())?,
            }
        }
        out.flush()?;
    }
    Ok(acknowledged)
}
