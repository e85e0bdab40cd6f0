//! The one table of ledger error codes.
//!
//! Every refusal the ledger gives has a stable numeric code, a stable name, an HTTP status,
//! an MQTT v5 reason code, and two flags: `retryable` (the same request may succeed later,
//! retry with the same id) and `maybe_committed` (the outcome is unknown; retry with the
//! same id to learn it). Codes are never renumbered; new ones are appended.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($( $variant:ident = $code:literal, $name:literal, $http:literal, $mqtt:literal,
        $retryable:literal, $maybe:literal, $meaning:literal; )*) => {
        /// A stable ledger error code (see the module docs and [`ErrorCode::TABLE`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode { $( $variant, )* }

        /// One row of the error table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct ErrorCodeInfo {
            pub code: ErrorCode,
            pub number: u16,
            pub name: &'static str,
            pub http_status: u16,
            pub mqtt_reason: u8,
            pub retryable: bool,
            pub maybe_committed: bool,
            pub meaning: &'static str,
        }

        impl ErrorCode {
            /// Every code, in number order.
            pub const TABLE: &'static [ErrorCodeInfo] = &[ $( ErrorCodeInfo {
                code: ErrorCode::$variant, number: $code, name: $name, http_status: $http,
                mqtt_reason: $mqtt, retryable: $retryable, maybe_committed: $maybe,
                meaning: $meaning,
            }, )* ];

            pub fn info(self) -> &'static ErrorCodeInfo {
                // TABLE lists every variant once, in declaration order.
                &Self::TABLE[self as usize]
            }
        }
    };
}

codes! {
    InvalidId = 1001, "invalid_id", 400, 0x99, false, false,
        "an id is empty, longer than 64 bytes or has a character outside [A-Za-z0-9._:-]";
    UnknownCurrency = 1002, "unknown_currency", 400, 0x99, false, false,
        "the currency is not an ISO 4217 code Tessera knows";
    AmountNotPositive = 1003, "amount_not_positive", 400, 0x99, false, false,
        "the amount is zero or negative";
    TooManyDecimals = 1004, "too_many_decimals", 400, 0x99, false, false,
        "the amount has more decimals than the currency's minor unit";
    AmountOverflow = 1005, "amount_overflow", 400, 0x99, false, false,
        "the amount does not fit 63 bits of minor units";
    InvalidAmount = 1006, "invalid_amount", 400, 0x99, false, false,
        "the amount is not a decimal number";
    BatchTooLarge = 1007, "batch_too_large", 413, 0x95, false, false,
        "the batch has more commands than allowed (8,190)";
    DuplicateIdInBatch = 1008, "duplicate_id_in_batch", 400, 0x99, false, false,
        "the same transfer, hold or account id appears twice in one batch";
    SameAccount = 1009, "same_account", 400, 0x99, false, false,
        "a transfer or capture names the same account on both sides";
    InvalidExpiry = 1010, "invalid_expiry", 400, 0x99, false, false,
        "a hold's expiry is zero or longer than the allowed maximum";
    InvalidOverdraftLimit = 1011, "invalid_overdraft_limit", 400, 0x99, false, false,
        "an overdraft limit is set on a system account or is out of range";
    InvalidLimit = 1012, "invalid_limit", 400, 0x99, false, false,
        "a page size is zero or larger than allowed";
    AccountExists = 2001, "account_exists", 200, 0x00, false, false,
        "the account already exists with the same fields (an idempotent retry)";
    AccountExistsWithDifferentFields = 2002, "account_exists_with_different_fields", 409,
        0x99, false, false, "an account with this id exists with different fields";
    TransferExistsWithDifferentFields = 2003, "transfer_exists_with_different_fields", 409,
        0x99, false, false, "a transfer with this id exists with different fields";
    HoldExistsWithDifferentFields = 2004, "hold_exists_with_different_fields", 409,
        0x99, false, false, "a hold with this id exists with different fields";
    UnknownAccount = 2005, "unknown_account", 404, 0x99, false, false,
        "no account has this id";
    UnknownTransfer = 2006, "unknown_transfer", 404, 0x99, false, false,
        "no transfer has this id";
    UnknownHold = 2007, "unknown_hold", 404, 0x99, false, false,
        "no hold has this id";
    CurrencyMismatch = 2008, "currency_mismatch", 422, 0x99, false, false,
        "the request's currency differs from an account's currency";
    InsufficientFunds = 2009, "insufficient_funds", 422, 0x99, false, false,
        "the payer's available balance would go below its overdraft limit";
    HoldNotActive = 2010, "hold_not_active", 409, 0x99, false, false,
        "the hold was already released, captured or expired";
    CaptureExceedsHold = 2011, "capture_exceeds_hold", 422, 0x99, false, false,
        "the capture amount is larger than the hold";
    Overloaded = 3001, "overloaded", 429, 0x97, true, false,
        "a queue or mailbox is full; retry later with the same id";
    NotOwner = 3002, "not_owner", 503, 0x9D, true, false,
        "this DC no longer owns the slot (epoch changed); retry through the router";
    Unavailable = 3003, "unavailable", 503, 0x88, true, false,
        "the store refused the request for now; nothing was written; retry with the same id";
    OutcomeUnknown = 3004, "outcome_unknown", 503, 0x80, true, true,
        "the commit may or may not have happened; retry with the same id to learn the outcome";
    Internal = 3005, "internal", 500, 0x83, false, true,
        "stored data could not be read; an operator must look";
    MalformedRequest = 1013, "malformed_request", 400, 0x81, false, false,
        "the request body is not the JSON the endpoint expects (or a field has the wrong type)";
    BodyTooLarge = 1014, "body_too_large", 413, 0x95, false, false,
        "the request body is larger than allowed";
    Unauthorized = 4001, "unauthorized", 401, 0x87, false, false,
        "no API key, or one the router does not know (Authorization: Bearer <key>)";
    Forbidden = 4002, "forbidden", 403, 0x87, false, false,
        "the credential is valid but not allowed here (the admin API needs the admin token)";
    RateLimited = 3006, "rate_limited", 429, 0x96, true, false,
        "this API key sent more than its rate; retry after the Retry-After seconds";
    NotFound = 1015, "not_found", 404, 0x99, false, false,
        "no endpoint has this path and method";
    InvalidPlan = 1016, "invalid_plan", 400, 0x99, false, false,
        "a shift plan's name, cells, DCs or stages are not valid";
    UnknownPlan = 2012, "unknown_plan", 404, 0x99, false, false,
        "no shift plan has this name";
    PlanConflict = 2013, "plan_conflict", 409, 0x99, false, false,
        "the plan cannot do this now (exists, paused, complete, stage, overlap, or changed meanwhile)";
    InvalidMode = 1017, "invalid_mode", 400, 0x99, false, false,
        "the hot-account mode is not standard, append or split with 2 to 64 parts";
}

impl ErrorCode {
    pub fn number(self) -> u16 {
        self.info().number
    }
    pub fn name(self) -> &'static str {
        self.info().name
    }
    pub fn is_retryable(self) -> bool {
        self.info().retryable
    }

    /// The table as Markdown (for README and documentation).
    pub fn markdown_table() -> String {
        let mut out = String::from(
            "| code | name | HTTP | MQTT | retryable | maybe committed | meaning |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for row in Self::TABLE {
            out.push_str(&format!(
                "| {} | `{}` | {} | 0x{:02X} | {} | {} | {} |\n",
                row.number,
                row.name,
                row.http_status,
                row.mqtt_reason,
                if row.retryable { "yes" } else { "no" },
                if row.maybe_committed { "yes" } else { "no" },
                row.meaning
            ));
        }
        out
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_declaration_order_with_unique_numbers_and_names() {
        for (index, row) in ErrorCode::TABLE.iter().enumerate() {
            assert_eq!(row.code as usize, index);
            assert_eq!(row.code.info(), row);
        }
        let mut numbers: Vec<_> = ErrorCode::TABLE.iter().map(|r| r.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ErrorCode::TABLE.len());
        let mut names: Vec<_> = ErrorCode::TABLE.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::TABLE.len());
    }

    #[test]
    fn stable_numbers() {
        assert_eq!(ErrorCode::InsufficientFunds.number(), 2009);
        assert_eq!(ErrorCode::Overloaded.number(), 3001);
        assert!(ErrorCode::OutcomeUnknown.info().maybe_committed);
        assert!(!ErrorCode::UnknownAccount.is_retryable());
    }
}
