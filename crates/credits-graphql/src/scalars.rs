//! The contract's scalars: `Credits` (exact decimal string in, canonical string out; a JSON
//! integer counts whole credits), `DateTime` (RFC 3339) and `Seq` (a JSON integer below
//! 2^53). Parsing here turns input into core types once, at the edge.

use async_graphql::{InputValueError, InputValueResult, Number, Scalar, ScalarType, Value};
use chrono::{DateTime as ChronoDateTime, Datelike, SecondsFormat, SubsecRound, Utc};

/// Largest integer a JSON number carries exactly (SPEC: `Seq` is 0 to 2^53 − 1).
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// An exact amount of credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credits(pub credits_core::Credits);

#[Scalar(name = "Credits")]
impl ScalarType for Credits {
    fn parse(value: Value) -> InputValueResult<Self> {
        let parsed = match &value {
            Value::String(s) => credits_core::Credits::parse(s),
            Value::Number(n) => match n.as_i64() {
                Some(whole) => credits_core::Credits::from_whole(whole),
                // A float (or an integer beyond i64) is never an amount.
                None => {
                    return Err(InputValueError::custom(
                        "Credits must be a decimal string or a whole number, never a float",
                    ));
                }
            },
            _ => return Err(InputValueError::expected_type(value)),
        };
        let amount =
            parsed.map_err(|e| InputValueError::custom(format!("invalid Credits: {e}")))?;
        if amount.micro() < 0 {
            return Err(InputValueError::custom(
                "invalid Credits: amount must not be negative",
            ));
        }
        Ok(Credits(amount))
    }

    /// Checked during validation, so a bad value refuses the whole document before any
    /// field of it runs.
    fn is_valid(value: &Value) -> bool {
        Self::parse(value.clone()).is_ok()
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

impl From<credits_core::Credits> for Credits {
    fn from(c: credits_core::Credits) -> Self {
        Credits(c)
    }
}

/// An instant, RFC 3339 in and out (UTC, `Z`). Input keeps its digits (a filter bound
/// just after an event's microsecond stays after it); an instant the service schedules
/// (an expiry, a billing anchor) is taken to the microsecond with [`DateTime::micros`], so
/// that its clock and its store name it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime(pub ChronoDateTime<Utc>);

#[Scalar(name = "DateTime")]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => {
                let t = ChronoDateTime::parse_from_rfc3339(s).map_err(|e| {
                    InputValueError::custom(format!("invalid DateTime (RFC 3339 expected): {e}"))
                })?;
                let t = t.with_timezone(&Utc);
                // Written back in UTC, an instant past year 9999 (or before year 0) is no
                // RFC 3339 (`+10000-…`), which clients, this parser included, cannot read
                // (found by review).
                if !(0..=9999).contains(&t.year()) {
                    return Err(InputValueError::custom(
                        "invalid DateTime: it must fall within the years 0000 to 9999 in UTC",
                    ));
                }
                Ok(DateTime(t))
            }
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        Self::parse(value.clone()).is_ok()
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl DateTime {
    /// The instant to the microsecond (finer digits dropped): what the service schedules.
    pub fn micros(self) -> ChronoDateTime<Utc> {
        self.0.trunc_subsecs(6)
    }
}

impl From<ChronoDateTime<Utc>> for DateTime {
    fn from(t: ChronoDateTime<Utc>) -> Self {
        DateTime(t)
    }
}

/// What each scalar accepts, added to a validation error that names it (validation only
/// knows that a value is not of the type).
pub(crate) const ACCEPTED: [(&str, &str); 3] = [
    (
        "Credits",
        "a decimal string with at most 6 fractional digits (\"12.5\") or a whole number of credits; never negative, a float, an exponent, or beyond 64-bit micro-credits",
    ),
    ("DateTime", "an RFC 3339 instant (\"2027-01-31T09:00:00Z\")"),
    ("Seq", "an integer from 0 to 2^53 - 1"),
];

/// A per-wallet ledger sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq(pub u64);

#[Scalar(name = "Seq")]
impl ScalarType for Seq {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n
                .as_u64()
                .filter(|v| *v <= MAX_SEQ)
                .map(Seq)
                .ok_or_else(|| {
                    InputValueError::custom("Seq must be an integer from 0 to 2^53 - 1")
                }),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        Self::parse(value.clone()).is_ok()
    }

    fn to_value(&self) -> Value {
        Value::Number(Number::from(self.0.min(MAX_SEQ)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credits(v: Value) -> Result<String, String> {
        <Credits as ScalarType>::parse(v)
            .map(|c| c.0.to_string())
            .map_err(|e| e.into_server_error(Default::default()).message)
    }

    #[test]
    fn credits_accepts_strings_and_whole_numbers_only() {
        assert_eq!(credits(Value::String("1.500000".into())), Ok("1.5".into()));
        assert_eq!(credits(Value::Number(5.into())), Ok("5".into()));
        assert!(credits(Value::Number(Number::from_f64(1.5).unwrap())).is_err());
        assert!(credits(Value::String("1.0000000".into())).is_err());
        assert!(credits(Value::String("-1".into())).is_err());
        assert!(credits(Value::Number((-1).into())).is_err());
        assert!(credits(Value::Number(i64::MAX.into())).is_err());
        assert!(credits(Value::Boolean(true)).is_err());
    }

    #[test]
    fn date_time_round_trips_rfc3339() {
        let t = <DateTime as ScalarType>::parse(Value::String("2027-03-10T13:00:00+01:00".into()))
            .unwrap();
        assert_eq!(t.to_value(), Value::String("2027-03-10T12:00:00Z".into()));
        assert!(<DateTime as ScalarType>::parse(Value::String("yesterday".into())).is_err());
    }

    /// Found by review: an instant valid in its own offset but past year 9999 in UTC was
    /// accepted, then written back as `+10000-01-01T00:30:00Z`, which no RFC 3339 reader
    /// (this one included) takes.
    #[test]
    fn date_time_is_refused_where_utc_has_no_rfc3339_form() {
        let parse = |s: &str| <DateTime as ScalarType>::parse(Value::String(s.into()));
        assert!(parse("9999-12-31T23:30:00-01:00").is_err());
        assert!(parse("0000-01-01T00:30:00+01:00").is_err());
        let last = parse("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(parse_back(&last), last);
    }

    fn parse_back(t: &DateTime) -> DateTime {
        <DateTime as ScalarType>::parse(t.to_value()).unwrap()
    }

    /// Found by review: an expiry or billing anchor with nanoseconds was kept, so a due
    /// instant could fall inside a microsecond the clock (whole µs) never reaches on the
    /// timer's wake-up, and the event was not applied until another call came.
    #[test]
    fn date_time_keeps_microseconds_only() {
        let t =
            <DateTime as ScalarType>::parse(Value::String("2027-03-10T12:00:00.0000015Z".into()))
                .unwrap();
        assert_eq!(t.micros().timestamp_subsec_nanos(), 1_000);
        // A filter bound keeps its digits (the store rounds it up to a microsecond).
        assert_eq!(t.0.timestamp_subsec_nanos(), 1_500);
    }
}
