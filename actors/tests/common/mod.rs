//! Helpers shared by the actors tests: a ledger on a fresh embedded store.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::{Ledger, LedgerConfig};
use cells::ids::{AccountId, HoldId, TransferId, UserId};
use cells::ledger::{CaptureRequest, Command, CommandResult, HoldRequest, TransferRequest};
use cells::money::{Amount, Currency};
use cells::records::{AccountKind, AccountSpec, HotMode};
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::Store;

pub fn usd() -> Currency {
    Currency::from_code("USD").unwrap()
}

pub fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    EmbeddedStore::open(dir, EmbeddedOptions::default()).unwrap()
}

pub fn account(id: &str, kind: AccountKind) -> AccountSpec {
    AccountSpec {
        id: AccountId::new(id).unwrap(),
        user: UserId::new(&format!("user-{id}")).unwrap(),
        currency: usd(),
        kind,
        overdraft_limit: 0,
        mode: HotMode::Standard,
    }
}

pub fn create(id: &str) -> Command {
    Command::CreateAccount(account(id, AccountKind::Customer))
}

pub fn create_system(id: &str) -> Command {
    Command::CreateAccount(account(id, AccountKind::System))
}

pub fn transfer(id: &str, from: &str, to: &str, units: u64) -> Command {
    Command::Transfer(TransferRequest {
        id: TransferId::new(id).unwrap(),
        from: AccountId::new(from).unwrap(),
        to: AccountId::new(to).unwrap(),
        amount: Amount::from_minor_units(units).unwrap(),
        currency: usd(),
    })
}

pub fn hold(id: &str, account: &str, units: u64, expires_in_ms: Option<u64>) -> Command {
    Command::Hold(HoldRequest {
        id: HoldId::new(id).unwrap(),
        account: AccountId::new(account).unwrap(),
        amount: Amount::from_minor_units(units).unwrap(),
        currency: usd(),
        expires_in_ms,
    })
}

pub fn release(id: &str) -> Command {
    Command::Release(HoldId::new(id).unwrap())
}

pub fn capture(id: &str, to: &str, units: Option<u64>) -> Command {
    Command::Capture(CaptureRequest {
        hold: HoldId::new(id).unwrap(),
        to: AccountId::new(to).unwrap(),
        amount: units.map(|u| Amount::from_minor_units(u).unwrap()),
    })
}

pub fn lookup(id: &str) -> Command {
    Command::LookupAccount(AccountId::new(id).unwrap())
}

pub async fn run(ledger: &Ledger, commands: Vec<Command>) -> Vec<CommandResult> {
    ledger.execute(commands).await.unwrap()
}

/// Balance and available of an account, through the ledger.
pub async fn balance(ledger: &Ledger, id: &str) -> (i128, i128) {
    match run(ledger, vec![lookup(id)]).await.remove(0) {
        Ok(cells::ledger::Outcome::Account(view)) => (view.balance, view.available),
        other => panic!("lookup of {id}: {other:?}"),
    }
}

/// Waits until every debit committed so far has its credit committed (bounded).
pub async fn settle(ledger: &Ledger) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger.stats().credits() < ledger.stats().debits() {
        assert!(Instant::now() < deadline, "credits did not settle");
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn ledger(store: Arc<dyn Store>) -> Ledger {
    Ledger::start(store, LedgerConfig::default())
}
