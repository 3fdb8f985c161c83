//! Instants as stored: microseconds since the Unix epoch in an i64 (see `migrations/`).
//! This module owns the conversion both ways and never rounds silently: an instant finer
//! than a microsecond is truncated toward the past, which the core never produces.

use chrono::{DateTime, Utc};

use crate::error::{StoreError, corrupt};

pub(crate) fn to_us(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The first whole microsecond at or after `at`: for a bound on stored (whole-µs) instants,
/// `stored >= at` ⇔ `stored >= ceil_us(at)` and `stored < at` ⇔ `stored < ceil_us(at)`.
pub(crate) fn ceil_us(at: DateTime<Utc>) -> i64 {
    let floor = at.timestamp_micros();
    if at.timestamp_subsec_nanos().is_multiple_of(1_000) {
        floor
    } else {
        floor + 1
    }
}

pub(crate) fn from_us(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::<Utc>::from_timestamp_micros(us).ok_or_else(|| corrupt(format!("instant {us} µs")))
}

pub(crate) fn opt_from_us(us: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    us.map(from_us).transpose()
}

pub(crate) fn seq_to_db(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| corrupt(format!("seq {seq} beyond i64")))
}

pub(crate) fn seq_from_db(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| corrupt(format!("negative seq {seq}")))
}
