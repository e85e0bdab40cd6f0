//! The ledger language: commands, their outcomes, the error table and the audit.
//!
//! Owns what a command means and how it may fail; the actors crate owns how commands are
//! scheduled and committed. [`wire`] parses untrusted input (strings, decimals) into typed
//! [`Command`]s with typed errors; [`audit`] re-derives every balance from the store and
//! checks the money invariants (INV-1, INV-3, INV-5).

pub mod audit;
pub mod codes;
pub mod statement;
pub mod wire;

use serde::{Deserialize, Serialize};

pub use codes::{ErrorCode, ErrorCodeInfo};

use crate::ids::{AccountId, HoldId, TransferId};
use crate::money::{Amount, Currency};
use crate::records::{AccountKind, AccountSpec, HoldState, HotMode};

/// Most commands in one batch (and most postings in one account commit).
pub const BATCH_COMMANDS_MAX: usize = 8_190;
/// Longest hold expiry accepted: 30 days.
pub const HOLD_EXPIRY_MS_MAX: u64 = 30 * 24 * 3_600 * 1_000;

/// A request to move `amount` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

/// A request to freeze `amount` on `account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    pub id: HoldId,
    pub account: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub expires_in_ms: Option<u64>,
}

/// A request to capture a hold: move all of it (or `amount` of it, releasing the rest)
/// to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    pub hold: HoldId,
    pub to: AccountId,
    pub amount: Option<Amount>,
}

/// One command of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateAccount(AccountSpec),
    Transfer(TransferRequest),
    Hold(HoldRequest),
    Release(HoldId),
    Capture(CaptureRequest),
    LookupAccount(AccountId),
    LookupTransfer(TransferId),
    LookupHold(HoldId),
}

/// What an account looks like to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub spec: AccountSpec,
    pub balance: i128,
    pub frozen: i128,
    pub available: i128,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Debited and durable; the credit leg is on its way.
    Accepted,
    /// Both legs are durable.
    Completed,
    /// Refused; nothing moved.
    Rejected(ErrorCode),
}

/// A transfer as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub status: TransferStatus,
}

/// A hold as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub id: HoldId,
    pub account: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub expires_at_ms: Option<u64>,
    pub state: HoldState,
}

/// The successful outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    AccountCreated,
    TransferAccepted,
    HoldCreated,
    HoldReleased,
    HoldCaptured,
    // Boxed: results travel by the million through batches and replies, and the common
    // ones (accepted, created) should not pay for the size of a view.
    Account(Box<AccountView>),
    Transfer(Box<TransferView>),
    Hold(Box<HoldView>),
}

/// One typed result per command.
pub type CommandResult = Result<Outcome, ErrorCode>;

// Results are moved by the million: keep them two words.
const _: () = assert!(std::mem::size_of::<CommandResult>() <= 16);

/// Builds an account spec with the defaults (customer, no overdraft, standard mode).
pub fn customer_account(
    id: AccountId,
    user: crate::ids::UserId,
    currency: Currency,
) -> AccountSpec {
    AccountSpec {
        id,
        user,
        currency,
        kind: AccountKind::Customer,
        overdraft_limit: 0,
        mode: HotMode::Standard,
    }
}

/// Checks an account spec for values that are well-formed but not allowed.
/// Most parts of a `split(n)` account.
pub const SPLIT_PARTS_MAX: u16 = 64;

pub fn validate_account_spec(spec: &AccountSpec) -> Result<(), ErrorCode> {
    if spec.kind == AccountKind::System && spec.overdraft_limit != 0 {
        return Err(ErrorCode::InvalidOverdraftLimit);
    }
    if spec.overdraft_limit > Amount::MAX_MINOR_UNITS {
        return Err(ErrorCode::InvalidOverdraftLimit);
    }
    if let HotMode::Split { parts } = spec.mode {
        if !(2..=SPLIT_PARTS_MAX).contains(&parts) {
            return Err(ErrorCode::InvalidMode);
        }
        // Each part keeps INV-5 on its own; an overdraft would have to be shared out.
        if spec.overdraft_limit != 0 {
            return Err(ErrorCode::InvalidOverdraftLimit);
        }
        // Room for the parts' ids (`<id>.p<k>`).
        if spec.id.as_str().len() + 2 + (parts - 1).to_string().len() > 64 {
            return Err(ErrorCode::InvalidId);
        }
    }
    Ok(())
}

/// Whether `available` may fall to `available_after` on an account of this spec (INV-5).
pub fn within_limit(spec: &AccountSpec, available_after: i128) -> bool {
    match spec.kind {
        AccountKind::System => true,
        AccountKind::Customer => available_after >= -i128::from(spec.overdraft_limit),
    }
}
