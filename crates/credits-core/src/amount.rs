//! Exact credit amounts. A `Credits` is a signed count of micro-credits in an `i64`; this
//! module owns parsing and canonical formatting of the decimal form (SPEC 1). Nothing here
//! ever goes through floating point.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Micro-credits in one credit.
pub const MICROS_PER_CREDIT: i64 = 1_000_000;
/// Fractional digits the decimal form may carry.
pub const MAX_FRACTION_DIGITS: usize = 6;

/// An exact amount of credits, stored as micro-credits (1 credit = 1,000,000 µcr).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Credits(i64);

/// Why a decimal string or integer is not an amount.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error(
        "not a decimal amount: expected digits with an optional '.' and up to 6 fractional digits"
    )]
    Syntax,
    #[error("more than 6 fractional digits")]
    TooManyDecimals,
    #[error("amount out of range")]
    Overflow,
    #[error("amount must not be negative")]
    Negative,
    #[error("amount must be greater than zero")]
    NotPositive,
}

impl Credits {
    pub const ZERO: Credits = Credits(0);
    pub const MAX: Credits = Credits(i64::MAX);
    /// The most a plan's daily or subscription credits, or a wallet's outstanding lots,
    /// may be (about 2.3 trillion credits): a wallet's parts, each at most this, always
    /// add up within i64.
    pub const MAX_HOLDING: Credits = Credits(i64::MAX / 4);

    pub const fn from_micro(micro_credits: i64) -> Self {
        Credits(micro_credits)
    }

    pub const fn micro(self) -> i64 {
        self.0
    }

    /// Whole credits, as a JSON integer input means (`5` = 5 credits).
    pub fn from_whole(credits: i64) -> Result<Self, AmountError> {
        credits
            .checked_mul(MICROS_PER_CREDIT)
            .map(Credits)
            .ok_or(AmountError::Overflow)
    }

    /// Parses `-?[0-9]+(\.[0-9]{1,6})?` exactly; a sign is accepted so that a negative
    /// amount is reported as negative rather than as bad syntax.
    pub fn parse(s: &str) -> Result<Self, AmountError> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::Syntax);
        }
        let frac = match frac_part {
            None => "",
            Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(AmountError::Syntax);
            }
            Some(f) if f.len() > MAX_FRACTION_DIGITS => return Err(AmountError::TooManyDecimals),
            Some(f) => f,
        };
        // Accumulate in i128 so that any digit string too long for i64 is an overflow, not a wrap.
        let mut micro: i128 = 0;
        for b in int_part.bytes() {
            micro = micro * 10 + i128::from(b - b'0');
            if micro > i128::from(i64::MAX) {
                return Err(AmountError::Overflow);
            }
        }
        micro *= i128::from(MICROS_PER_CREDIT);
        let mut scale = i128::from(MICROS_PER_CREDIT);
        for b in frac.bytes() {
            scale /= 10;
            micro += i128::from(b - b'0') * scale;
        }
        if negative {
            micro = -micro;
        }
        i64::try_from(micro)
            .map(Credits)
            .map_err(|_| AmountError::Overflow)
    }

    /// Parses an amount that must be zero or more (limits, plan credits).
    pub fn parse_non_negative(s: &str) -> Result<Self, AmountError> {
        Self::parse(s)?.non_negative()
    }

    /// Parses an amount that must be more than zero (grants, reservations, bundles).
    pub fn parse_positive(s: &str) -> Result<Self, AmountError> {
        Self::parse(s)?.positive()
    }

    pub fn non_negative(self) -> Result<Self, AmountError> {
        if self.0 < 0 {
            Err(AmountError::Negative)
        } else {
            Ok(self)
        }
    }

    pub fn positive(self) -> Result<Self, AmountError> {
        match self.0 {
            n if n < 0 => Err(AmountError::Negative),
            0 => Err(AmountError::NotPositive),
            _ => Ok(self),
        }
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    /// For counters that only meet limits (a member's spend), never balances.
    pub fn saturating_add(self, other: Credits) -> Credits {
        Credits(self.0.saturating_add(other.0))
    }

    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
    }

    /// Sum of amounts that cannot overflow by construction (parts of one balance); panics
    /// otherwise, since that would be a broken ledger rather than bad input.
    pub fn sum<I: IntoIterator<Item = Credits>>(items: I) -> Credits {
        items.into_iter().fold(Credits::ZERO, |a, b| a + b)
    }
}

impl std::ops::Add for Credits {
    type Output = Credits;
    fn add(self, rhs: Credits) -> Credits {
        Credits(self.0.checked_add(rhs.0).expect("credit amount overflow"))
    }
}

impl std::ops::Sub for Credits {
    type Output = Credits;
    fn sub(self, rhs: Credits) -> Credits {
        Credits(self.0.checked_sub(rhs.0).expect("credit amount underflow"))
    }
}

impl std::ops::AddAssign for Credits {
    fn add_assign(&mut self, rhs: Credits) {
        *self = *self + rhs;
    }
}

impl std::ops::SubAssign for Credits {
    fn sub_assign(&mut self, rhs: Credits) {
        *self = *self - rhs;
    }
}

impl std::iter::Sum for Credits {
    fn sum<I: Iterator<Item = Credits>>(iter: I) -> Credits {
        Credits::sum(iter)
    }
}

impl fmt::Display for Credits {
    /// Canonical form: no leading zeros, fraction only when non-zero and without trailing zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micro = i128::from(self.0);
        let sign = if micro < 0 { "-" } else { "" };
        let abs = micro.abs();
        let whole = abs / i128::from(MICROS_PER_CREDIT);
        let frac = abs % i128::from(MICROS_PER_CREDIT);
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl FromStr for Credits {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Credits::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, AmountError>) {
        let got = Credits::parse(input).map(|c| c.to_string());
        assert_eq!(
            got.as_deref().map_err(Clone::clone),
            expected,
            "input {input:?}"
        );
    }

    #[test]
    fn canonical_format() {
        check("100", Ok("100"));
        check("12.5", Ok("12.5"));
        check("0.000001", Ok("0.000001"));
        check("0", Ok("0"));
        check("007", Ok("7"));
        check("1.500000", Ok("1.5"));
        check("-3.25", Ok("-3.25"));
        check("-0", Ok("0"));
        check("9223372036854.775807", Ok("9223372036854.775807"));
        check("-9223372036854.775808", Ok("-9223372036854.775808"));
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "", ".", "1.", ".5", "+1", " 1", "1 ", "1e3", "1,5", "--1", "0x10", "1.2.3", "١",
        ] {
            assert_eq!(
                Credits::parse(bad),
                Err(AmountError::Syntax),
                "input {bad:?}"
            );
        }
    }

    #[test]
    fn seventh_decimal_is_refused_even_if_zero() {
        check("1.0000000", Err(AmountError::TooManyDecimals));
        check("0.0000001", Err(AmountError::TooManyDecimals));
    }

    #[test]
    fn out_of_range_is_overflow() {
        check("9223372036854.775808", Err(AmountError::Overflow));
        check("-9223372036854.775809", Err(AmountError::Overflow));
        check(
            "99999999999999999999999999999999999",
            Err(AmountError::Overflow),
        );
        assert_eq!(
            Credits::from_whole(9_223_372_036_855),
            Err(AmountError::Overflow)
        );
        assert_eq!(Credits::from_whole(5), Ok(Credits::from_micro(5_000_000)));
    }

    #[test]
    fn sign_rules() {
        assert_eq!(Credits::parse_positive("0"), Err(AmountError::NotPositive));
        assert_eq!(Credits::parse_positive("-1"), Err(AmountError::Negative));
        assert_eq!(
            Credits::parse_non_negative("-0.000001"),
            Err(AmountError::Negative)
        );
        assert_eq!(Credits::parse_non_negative("0"), Ok(Credits::ZERO));
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_round_trips(micro in proptest::num::i64::ANY) {
            let c = Credits::from_micro(micro);
            proptest::prop_assert_eq!(Credits::parse(&c.to_string()), Ok(c));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Credits::parse(&s);
        }
    }
}
