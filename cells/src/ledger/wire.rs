//! Untrusted input: commands as they arrive from clients (strings and decimal strings),
//! parsed into typed [`Command`]s or refused with an [`ErrorCode`]. Parsing changes nothing.

use serde::Deserialize;

use super::{CaptureRequest, Command, ErrorCode, HoldRequest, TransferRequest};
use crate::ids::{AccountId, HoldId, IdError, TransferId, UserId};
use crate::money::{Amount, Currency, MoneyError};
use crate::records::{AccountKind, AccountSpec, HotMode};

/// A command as a client sends it (JSON: `{"type": "transfer", ...}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WireCommand {
    CreateAccount {
        id: String,
        user: String,
        currency: String,
        #[serde(default = "customer")]
        kind: AccountKind,
        #[serde(default)]
        overdraft_limit: Option<String>,
        #[serde(default)]
        mode: HotMode,
    },
    Transfer {
        id: String,
        from: String,
        to: String,
        amount: String,
        currency: String,
    },
    Hold {
        id: String,
        account: String,
        amount: String,
        currency: String,
        #[serde(default)]
        expires_in_ms: Option<u64>,
    },
    Release {
        hold: String,
    },
    Capture {
        hold: String,
        to: String,
        #[serde(default)]
        amount: Option<String>,
        currency: Option<String>,
    },
    LookupAccount {
        id: String,
    },
    LookupTransfer {
        id: String,
    },
    LookupHold {
        id: String,
    },
}

fn customer() -> AccountKind {
    AccountKind::Customer
}

impl From<IdError> for ErrorCode {
    fn from(_: IdError) -> Self {
        ErrorCode::InvalidId
    }
}

impl From<MoneyError> for ErrorCode {
    fn from(error: MoneyError) -> Self {
        match error {
            MoneyError::UnknownCurrency { .. } => ErrorCode::UnknownCurrency,
            MoneyError::NotPositive => ErrorCode::AmountNotPositive,
            MoneyError::TooManyDecimals { .. } => ErrorCode::TooManyDecimals,
            MoneyError::Overflow => ErrorCode::AmountOverflow,
            MoneyError::NotANumber => ErrorCode::InvalidAmount,
        }
    }
}

fn currency(code: &str) -> Result<Currency, ErrorCode> {
    Ok(Currency::from_code(code)?)
}

fn amount(text: &str, currency: Currency) -> Result<Amount, ErrorCode> {
    Ok(Amount::parse(text, currency)?)
}

impl WireCommand {
    /// Parses into a typed command.
    pub fn parse(&self) -> Result<Command, ErrorCode> {
        match self {
            WireCommand::CreateAccount {
                id,
                user,
                currency: code,
                kind,
                overdraft_limit,
                mode,
            } => {
                let currency = currency(code)?;
                let overdraft_limit = match overdraft_limit {
                    None => 0,
                    Some(text) if text.trim_start_matches(['0', '.']).is_empty() => 0,
                    Some(text) => amount(text, currency)?.minor_units(),
                };
                let spec = AccountSpec {
                    id: AccountId::new(id)?,
                    user: UserId::new(user)?,
                    currency,
                    kind: *kind,
                    overdraft_limit,
                    mode: *mode,
                };
                super::validate_account_spec(&spec)?;
                Ok(Command::CreateAccount(spec))
            }
            WireCommand::Transfer {
                id,
                from,
                to,
                amount: text,
                currency: code,
            } => {
                let currency = currency(code)?;
                Ok(Command::Transfer(TransferRequest {
                    id: TransferId::new(id)?,
                    from: AccountId::new(from)?,
                    to: AccountId::new(to)?,
                    amount: amount(text, currency)?,
                    currency,
                }))
            }
            WireCommand::Hold {
                id,
                account,
                amount: text,
                currency: code,
                expires_in_ms,
            } => {
                let currency = currency(code)?;
                Ok(Command::Hold(HoldRequest {
                    id: HoldId::new(id)?,
                    account: AccountId::new(account)?,
                    amount: amount(text, currency)?,
                    currency,
                    expires_in_ms: *expires_in_ms,
                }))
            }
            WireCommand::Release { hold } => Ok(Command::Release(HoldId::new(hold)?)),
            WireCommand::Capture {
                hold,
                to,
                amount: text,
                currency: code,
            } => {
                let amount = match (text, code) {
                    (Some(text), Some(code)) => Some(amount(text, currency(code)?)?),
                    (Some(_), None) => return Err(ErrorCode::UnknownCurrency),
                    (None, _) => None,
                };
                Ok(Command::Capture(CaptureRequest {
                    hold: HoldId::new(hold)?,
                    to: AccountId::new(to)?,
                    amount,
                }))
            }
            WireCommand::LookupAccount { id } => Ok(Command::LookupAccount(AccountId::new(id)?)),
            WireCommand::LookupTransfer { id } => Ok(Command::LookupTransfer(TransferId::new(id)?)),
            WireCommand::LookupHold { id } => Ok(Command::LookupHold(HoldId::new(id)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Command, ErrorCode> {
        serde_json::from_str::<WireCommand>(json).unwrap().parse()
    }

    #[test]
    fn bad_input_gets_typed_codes() {
        let t = |amount: &str, currency: &str| {
            parse(&format!(
                r#"{{"type":"transfer","id":"t1","from":"a","to":"b","amount":"{amount}","currency":"{currency}"}}"#
            ))
        };
        assert!(t("10.05", "USD").is_ok());
        assert_eq!(t("10.005", "USD"), Err(ErrorCode::TooManyDecimals));
        assert_eq!(t("0", "USD"), Err(ErrorCode::AmountNotPositive));
        assert_eq!(t("-5", "USD"), Err(ErrorCode::AmountNotPositive));
        assert_eq!(
            t("99999999999999999999", "USD"),
            Err(ErrorCode::AmountOverflow)
        );
        assert_eq!(t("abc", "USD"), Err(ErrorCode::InvalidAmount));
        assert_eq!(t("1", "XYZ"), Err(ErrorCode::UnknownCurrency));
        let bad_id = parse(
            r#"{"type":"transfer","id":"t 1","from":"a","to":"b","amount":"1","currency":"USD"}"#,
        );
        assert_eq!(bad_id, Err(ErrorCode::InvalidId));
    }

    #[test]
    fn system_accounts_take_no_overdraft_limit() {
        let json = r#"{"type":"create_account","id":"w","user":"u","currency":"EUR",
            "kind":"system","overdraft_limit":"5"}"#;
        assert_eq!(parse(json), Err(ErrorCode::InvalidOverdraftLimit));
    }
}
