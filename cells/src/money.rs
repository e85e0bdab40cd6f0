//! Currencies and amounts.
//!
//! Inside Tessera money is an integer count of a currency's minor units: [`Amount`] is a
//! strictly positive `u64` no larger than `i64::MAX`, balances are `i64`, and every
//! arithmetic step is checked (overflow is an error, never a wrap). `rust_decimal` appears
//! only at the edges ([`Amount::from_decimal`], [`to_decimal`]), with exact scale checks:
//! `"10.005"` in a 2-decimal currency is rejected, never rounded. Floats never appear.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {code:?}")]
    UnknownCurrency { code: String },
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount has more than {scale} decimal places for {currency}")]
    TooManyDecimals { currency: Currency, scale: u32 },
    #[error("amount is too large")]
    Overflow,
    #[error("amount is not a decimal number")]
    NotANumber,
}

/// A currency: its ISO 4217 code and the number of decimals of its minor unit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    scale: u8,
}

/// The currencies Tessera knows, with their minor-unit scale (ISO 4217).
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

impl Currency {
    /// Looks up an ISO 4217 code (upper case).
    pub fn from_code(code: &str) -> Result<Self, MoneyError> {
        let unknown = || MoneyError::UnknownCurrency {
            code: code.to_string(),
        };
        // The table is sorted by code (a test checks): a binary search over codes packed
        // into integers, with no string comparison (currencies are decoded per command).
        let code_bytes: [u8; 3] = code.as_bytes().try_into().map_err(|_| unknown())?;
        let packed = |bytes: [u8; 3]| u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        let at = CURRENCIES
            .binary_search_by_key(&packed(code_bytes), |(known, _)| {
                let known = known.as_bytes();
                packed([known[0], known[1], known[2]])
            })
            .map_err(|_| unknown())?;
        Ok(Currency {
            code: code_bytes,
            scale: CURRENCIES[at].1,
        })
    }

    pub fn code(&self) -> &str {
        // The code bytes come from the static table of ASCII codes.
        std::str::from_utf8(&self.code).expect("currency codes are ASCII")
    }

    /// Number of decimals of the minor unit (2 for USD, 0 for JPY, 3 for KWD).
    pub fn scale(&self) -> u32 {
        u32::from(self.scale)
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(code: &str) -> Result<Self, MoneyError> {
        Currency::from_code(code)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::from_code(&code).map_err(serde::de::Error::custom)
    }
}

/// A strictly positive amount of minor units, at most `i64::MAX` so that it always fits
/// a balance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

impl Amount {
    pub const MAX_MINOR_UNITS: u64 = i64::MAX as u64;

    pub fn from_minor_units(units: u64) -> Result<Self, MoneyError> {
        if units == 0 {
            return Err(MoneyError::NotPositive);
        }
        if units > Self::MAX_MINOR_UNITS {
            return Err(MoneyError::Overflow);
        }
        Ok(Amount(units))
    }

    /// Converts a decimal amount exactly; refuses zero, negatives, excess decimals and
    /// values that do not fit.
    pub fn from_decimal(value: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        if value.is_sign_negative() || value.is_zero() {
            return Err(MoneyError::NotPositive);
        }
        let value = value.normalize();
        if value.scale() > currency.scale() {
            return Err(MoneyError::TooManyDecimals {
                currency,
                scale: currency.scale(),
            });
        }
        let factor = Decimal::from(10u64.pow(currency.scale()));
        let units = value.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        let units: u64 = units.trunc().try_into().map_err(|_| MoneyError::Overflow)?;
        Self::from_minor_units(units)
    }

    /// Parses a decimal string such as `"10.05"` for `currency`.
    pub fn parse(text: &str, currency: Currency) -> Result<Self, MoneyError> {
        let value = Decimal::from_str_exact(text).map_err(|error| match error {
            rust_decimal::Error::ExceedsMaximumPossibleValue
            | rust_decimal::Error::LessThanMinimumPossibleValue => MoneyError::Overflow,
            rust_decimal::Error::Underflow => MoneyError::TooManyDecimals {
                currency,
                scale: currency.scale(),
            },
            _ => MoneyError::NotANumber,
        })?;
        Self::from_decimal(value, currency)
    }

    pub fn minor_units(self) -> u64 {
        self.0
    }

    /// The amount as a signed minor-unit count (always fits: see [`Amount::MAX_MINOR_UNITS`]).
    pub fn signed(self) -> i64 {
        self.0 as i64
    }
}

impl TryFrom<u64> for Amount {
    type Error = MoneyError;
    fn try_from(units: u64) -> Result<Self, MoneyError> {
        Amount::from_minor_units(units)
    }
}

impl From<Amount> for u64 {
    fn from(amount: Amount) -> u64 {
        amount.0
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

/// Renders a minor-unit count (a balance, possibly negative) as a decimal of the currency.
pub fn to_decimal(minor_units: i64, currency: Currency) -> Decimal {
    Decimal::new(minor_units, currency.scale())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    #[test]
    fn every_listed_code_is_found_and_nothing_else() {
        // `from_code` binary-searches the table: it must stay sorted, three ASCII letters each.
        assert!(CURRENCIES.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (code, scale) in CURRENCIES {
            assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()));
            let currency = Currency::from_code(code).unwrap();
            assert_eq!(
                (currency.code(), currency.scale()),
                (*code, u32::from(*scale))
            );
        }
        for code in ["", "US", "USDD", "usd", "AAA", "ZZZ", "UŚD", "ÜS"] {
            assert_eq!(
                Currency::from_code(code),
                Err(MoneyError::UnknownCurrency {
                    code: code.to_string()
                })
            );
        }
    }

    #[test]
    fn exact_decimals_only() {
        assert_eq!(Amount::parse("10.05", usd()).unwrap().minor_units(), 1005);
        assert_eq!(Amount::parse("10.50", usd()).unwrap().minor_units(), 1050);
        assert_eq!(Amount::parse("7", usd()).unwrap().minor_units(), 700);
        assert_eq!(
            Amount::parse("10.005", usd()),
            Err(MoneyError::TooManyDecimals {
                currency: usd(),
                scale: 2
            })
        );
        let jpy = Currency::from_code("JPY").unwrap();
        assert!(matches!(
            Amount::parse("1.5", jpy),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        assert_eq!(Amount::parse("100", jpy).unwrap().minor_units(), 100);
    }

    #[test]
    fn refuses_zero_negative_overflow_and_garbage() {
        assert_eq!(Amount::parse("0", usd()), Err(MoneyError::NotPositive));
        assert_eq!(Amount::parse("0.00", usd()), Err(MoneyError::NotPositive));
        assert_eq!(Amount::parse("-1", usd()), Err(MoneyError::NotPositive));
        assert_eq!(
            Amount::parse("92233720368547758.08", usd()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Amount::parse("1e3", usd()), Err(MoneyError::NotANumber));
        assert_eq!(Amount::parse("ten", usd()), Err(MoneyError::NotANumber));
        assert_eq!(Amount::from_minor_units(0), Err(MoneyError::NotPositive));
        assert_eq!(
            Amount::from_minor_units(u64::MAX),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn largest_amount_round_trips() {
        let max = Amount::parse("92233720368547758.07", usd()).unwrap();
        assert_eq!(max.minor_units(), i64::MAX as u64);
        assert_eq!(
            to_decimal(max.signed(), usd()).to_string(),
            "92233720368547758.07"
        );
    }

    #[test]
    fn unknown_currency() {
        assert!(matches!(
            Currency::from_code("XXX"),
            Err(MoneyError::UnknownCurrency { .. })
        ));
        assert!(Currency::from_code("usd").is_err());
    }
}
