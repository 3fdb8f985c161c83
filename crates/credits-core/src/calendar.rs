//! Calendar rules of SPEC 3: when a wallet's day starts in its time zone, when its daily
//! reset falls (also right after a time-zone change), and which billing period an instant
//! belongs to. It owns these instants and nothing else: it must never read a clock, touch
//! I/O, use floating point or panic — every function is a pure map from (zone, instants) to
//! instants, so replay and live processing agree to the nanosecond. At the edges of chrono's
//! range (years ±262 000) results saturate to `DateTime::<Utc>::MIN_UTC`/`MAX_UTC` (or
//! `NaiveDate::MIN`/`MAX`) instead of failing; no real wallet gets near them.

use chrono::{
    DateTime, Datelike, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeDelta, TimeZone, Utc,
};
use chrono_tz::{GapInfo, Tz};

/// Billing interval of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
// The SPEC, its plan file and the GraphQL contract spell these MONTHLY/ANNUAL.
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BillingInterval {
    Monthly,
    Annual,
}

impl BillingInterval {
    /// The contract's name: `MONTHLY` or `ANNUAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingInterval::Monthly => "MONTHLY",
            BillingInterval::Annual => "ANNUAL",
        }
    }

    /// The interval [`as_str`](Self::as_str) names.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Monthly, Self::Annual]
            .into_iter()
            .find(|i| i.as_str() == name)
    }
}

/// The minimum time between the last reset and the first reset after a time-zone change
/// (SPEC 3), so that hopping zones never buys an extra daily allowance.
const ZONE_CHANGE_MIN_GAP: TimeDelta = TimeDelta::hours(23);

/// The first instant of the local calendar day `date` in `tz`: local 00:00; where 00:00 does
/// not exist (DST gap) the first existing local time after it; where it occurs twice, the
/// earlier.
///
/// Saturates to `MIN_UTC`/`MAX_UTC` for dates at the ends of chrono's range.
pub fn day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    // `offset_from_local_datetime`, not `from_local_datetime`: the latter also answers
    // "none" when the UTC instant is out of range, which must not be mistaken for a gap.
    match tz.offset_from_local_datetime(&midnight) {
        LocalResult::Single(offset) => local_to_utc(midnight, offset.fix()),
        LocalResult::Ambiguous(a, b) => {
            local_to_utc(midnight, a.fix()).min(local_to_utc(midnight, b.fix()))
        }
        LocalResult::None => gap_end(tz, midnight),
    }
}

/// The local date of instant `t` in `tz`.
///
/// Saturates to `NaiveDate::MIN`/`MAX` where the local date would leave chrono's range.
pub fn local_date(tz: Tz, t: DateTime<Utc>) -> NaiveDate {
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    // `DateTime::date_naive` panics where the offset pushes the local time out of range.
    match t.naive_utc().checked_add_offset(offset) {
        Some(local) => local.date(),
        None if offset.local_minus_utc() > 0 => NaiveDate::MAX,
        None => NaiveDate::MIN,
    }
}

/// The next daily reset strictly after `t` for a wallet that stays in `tz`: the smallest
/// `day_start(tz, d)` over all dates `d` that is later than `t`.
///
/// This is usually the start of the date after `t`'s local date, but not where the zone's
/// clock jumps back over midnight (the repeated date was already started) or skips a whole
/// date. Saturates to `MAX_UTC` when no day starts after `t` within chrono's range.
pub fn next_daily_reset(tz: Tz, t: DateTime<Utc>) -> DateTime<Utc> {
    first_day_start(tz, t, Bound::Excluded)
}

/// The first reset after a time-zone change at `changed_at` into `tz` (SPEC 3): the first
/// reset instant of `tz` strictly after `changed_at` that is at least 23 hours after
/// `floor_from` (the last reset performed, or the wallet's creation if it never reset).
///
/// Saturates to `MAX_UTC` like [`next_daily_reset`].
pub fn first_reset_after_zone_change(
    tz: Tz,
    changed_at: DateTime<Utc>,
    floor_from: DateTime<Utc>,
) -> DateTime<Utc> {
    let earliest_allowed = floor_from
        .checked_add_signed(ZONE_CHANGE_MIN_GAP)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let after_change = next_daily_reset(tz, changed_at);
    if after_change >= earliest_allowed {
        after_change
    } else {
        // A day start exactly 23 h after the last reset is allowed ("at least"), hence
        // inclusive; it is after `changed_at` because it is after `after_change`.
        first_day_start(tz, earliest_allowed, Bound::Included)
    }
}

/// The n-th renewal instant from `anchor` (n = 0 is the anchor itself). Monthly: the
/// anchor's day of month clamped to the month's last day, at the anchor's UTC time of day
/// (anchor Jan 31 -> Feb 28/29 -> Mar 31). Annual: the anchor's date, Feb 29 -> Feb 28 in
/// common years.
///
/// Saturates to `MAX_UTC` past the end of chrono's range.
pub fn renewal(anchor: DateTime<Utc>, interval: BillingInterval, n: u32) -> DateTime<Utc> {
    // Always from the anchor, never chained: chaining would turn Jan 31 -> Feb 28 -> Mar 28.
    let (year, month) = match interval {
        BillingInterval::Monthly => {
            let index = month_index(anchor) + i64::from(n);
            (index.div_euclid(12), index.rem_euclid(12) + 1)
        }
        BillingInterval::Annual => (
            i64::from(anchor.year()) + i64::from(n),
            i64::from(anchor.month()),
        ),
    };
    let (Ok(year), Ok(month)) = (i32::try_from(year), u32::try_from(month)) else {
        return DateTime::<Utc>::MAX_UTC;
    };
    // Every month has days 1..=28, so the clamp finds a date unless the year is out of range.
    let date = (1..=anchor.day())
        .rev()
        .take(4)
        .find_map(|day| NaiveDate::from_ymd_opt(year, month, day));
    match date {
        Some(date) => date.and_time(anchor.naive_utc().time()).and_utc(),
        None => DateTime::<Utc>::MAX_UTC,
    }
}

/// The billing period `[start, end)` containing `now` (start inclusive, end exclusive), as
/// two consecutive renewals. Precondition `anchor <= now`; if `now < anchor`, returns
/// `(anchor, renewal(anchor, interval, 1))`.
///
/// At the end of chrono's range `end` saturates to `MAX_UTC` and may then equal `now`.
pub fn billing_period(
    anchor: DateTime<Utc>,
    interval: BillingInterval,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    if now < anchor {
        return (anchor, renewal(anchor, interval, 1));
    }
    // The renewal with this index falls in now's month (or year), so the period containing
    // now starts either there or one renewal earlier: constant time for any anchor age.
    let steps = match interval {
        BillingInterval::Monthly => month_index(now) - month_index(anchor),
        BillingInterval::Annual => i64::from(now.year()) - i64::from(anchor.year()),
    };
    let mut n = u32::try_from(steps.max(0)).unwrap_or(u32::MAX);
    if renewal(anchor, interval, n) > now {
        n = n.saturating_sub(1);
    }
    (
        renewal(anchor, interval, n),
        renewal(anchor, interval, n.saturating_add(1)),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Included,
    Excluded,
}

/// The smallest day start at or after (`Included`) or strictly after (`Excluded`) `t`.
fn first_day_start(tz: Tz, t: DateTime<Utc>, bound: Bound) -> DateTime<Utc> {
    // Why this window is enough: chrono offsets are under 24 h in magnitude, so with M(d)
    // the UTC reading of d's local midnight, day_start(d) lies in (M(d) - 24h, M(d) + 24h)
    // and t in (M(d0) - 24h, M(d0) + 48h) for d0 = local_date(t). Then every date before
    // d0 - 1 starts before t, d0 + 3 starts after t, and every date after d0 + 4 starts
    // after d0 + 3 does. Scanning a window, rather than taking "tomorrow", is what makes
    // repeated and skipped local dates come out right.
    let d0 = local_date(tz, t);
    let first = d0.pred_opt().unwrap_or(d0);
    first
        .iter_days()
        .take(6)
        .map(|date| day_start(tz, date))
        .filter(|&start| match bound {
            Bound::Included => start >= t,
            Bound::Excluded => start > t,
        })
        .min()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Months since year 0, so that month arithmetic is plain integer arithmetic.
fn month_index(t: DateTime<Utc>) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

/// The UTC instant of `local` read with `offset`, saturated at chrono's range.
fn local_to_utc(local: NaiveDateTime, offset: FixedOffset) -> DateTime<Utc> {
    match local.checked_sub_offset(offset) {
        Some(utc) => utc.and_utc(),
        // Subtracting a negative offset moves later, so only it can overflow at the top.
        None if offset.local_minus_utc() < 0 => DateTime::<Utc>::MAX_UTC,
        None => DateTime::<Utc>::MIN_UTC,
    }
}

/// The first instant after the DST gap that swallows `local`: the first existing local time
/// after it.
fn gap_end(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    GapInfo::new(&local, &tz)
        .and_then(|gap| gap.end)
        .map(|end| end.with_timezone(&Utc))
        // chrono-tz has no answer only at the ends of its range or if the gap's end is
        // itself ambiguous; search for the instant instead of failing.
        .unwrap_or_else(|| gap_end_by_search(tz, local))
}

/// The first whole second whose local reading in `tz` is at or after `local`, searched
/// within a day either side (offsets are under 24 h). Only exact where local time rises
/// monotonically around the gap, which holds for every gap in tzdata; a fallback for
/// [`gap_end`].
fn gap_end_by_search(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    const DAY_SECONDS: i64 = 86_400;
    let target = local.and_utc().timestamp();
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    let reaches_target = |second: i64| match DateTime::from_timestamp(second, 0) {
        Some(utc) => {
            let offset = tz.offset_from_utc_datetime(&utc.naive_utc()).fix();
            second + i64::from(offset.local_minus_utc()) >= target
        }
        None => second >= max,
    };
    // Invariant: reaches_target(high), and !reaches_target(low) unless low is the range minimum.
    let mut low = target.saturating_sub(DAY_SECONDS).clamp(min, max);
    let mut high = target.saturating_add(DAY_SECONDS).clamp(min, max);
    if reaches_target(low) {
        high = low;
    }
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if reaches_target(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    DateTime::from_timestamp(high, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test instants are RFC 3339")
            .with_timezone(&Utc)
    }

    fn zone(name: &str) -> Tz {
        name.parse().expect("test zones exist")
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().expect("test dates are ISO 8601")
    }

    fn show(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// `renewal(anchor, interval, n) == expected`.
    fn check_renewal(anchor: &str, interval: BillingInterval, n: u32, expected: &str) {
        let got = renewal(at(anchor), interval, n);
        assert_eq!(show(got), expected, "renewal({anchor}, {interval:?}, {n})");
    }

    /// `billing_period(anchor, interval, now) == (start, end)`.
    fn check_period(anchor: &str, interval: BillingInterval, now: &str, start: &str, end: &str) {
        let (got_start, got_end) = billing_period(at(anchor), interval, at(now));
        assert_eq!(
            (show(got_start), show(got_end)),
            (start.to_string(), end.to_string()),
            "billing_period({anchor}, {interval:?}, {now})"
        );
    }

    /// `day_start(zone, date) == expected`.
    fn check_day_start(zone_name: &str, day: &str, expected: &str) {
        let got = day_start(zone(zone_name), date(day));
        assert_eq!(show(got), expected, "day_start({zone_name}, {day})");
    }

    /// `next_daily_reset(zone, now) == expected`.
    fn check_reset(zone_name: &str, now: &str, expected: &str) {
        let got = next_daily_reset(zone(zone_name), at(now));
        assert_eq!(show(got), expected, "next_daily_reset({zone_name}, {now})");
    }

    /// `local_date(zone, t) == expected`.
    fn check_local_date(zone_name: &str, t: &str, expected: &str) {
        let got = local_date(zone(zone_name), at(t));
        assert_eq!(got, date(expected), "local_date({zone_name}, {t})");
    }

    /// `first_reset_after_zone_change(zone, changed_at, floor_from) == expected`, and never
    /// less than 23 hours after `floor_from`.
    fn check_zone_change(zone_name: &str, changed_at: &str, floor_from: &str, expected: &str) {
        let got = first_reset_after_zone_change(zone(zone_name), at(changed_at), at(floor_from));
        assert_eq!(
            show(got),
            expected,
            "first_reset_after_zone_change({zone_name}, {changed_at}, {floor_from})"
        );
        assert!(got - at(floor_from) >= ZONE_CHANGE_MIN_GAP);
        assert!(got > at(changed_at));
    }

    use BillingInterval::{Annual, Monthly};

    #[test]
    fn monthly_jan_31_clamps_in_leap_and_common_years_and_returns_to_31() {
        check_renewal("2027-01-31T10:00:00Z", Monthly, 0, "2027-01-31T10:00:00Z");
        check_renewal("2027-01-31T10:00:00Z", Monthly, 1, "2027-02-28T10:00:00Z");
        check_renewal("2027-01-31T10:00:00Z", Monthly, 2, "2027-03-31T10:00:00Z");
        check_renewal("2027-01-31T10:00:00Z", Monthly, 3, "2027-04-30T10:00:00Z");
        check_renewal("2027-01-31T10:00:00Z", Monthly, 13, "2028-02-29T10:00:00Z");
        check_renewal("2027-01-31T10:00:00Z", Monthly, 14, "2028-03-31T10:00:00Z");
        check_renewal("2028-01-31T00:00:00Z", Monthly, 1, "2028-02-29T00:00:00Z");
        check_renewal("2028-01-31T00:00:00Z", Monthly, 2, "2028-03-31T00:00:00Z");
        check_renewal("2027-12-31T23:59:59Z", Monthly, 2, "2028-02-29T23:59:59Z");
        check_renewal("2027-03-30T08:00:00Z", Monthly, 11, "2028-02-29T08:00:00Z");
    }

    #[test]
    fn monthly_period_across_february() {
        let a = "2027-01-31T10:00:00Z";
        check_period(
            a,
            Monthly,
            "2027-02-15T00:00:00Z",
            "2027-01-31T10:00:00Z",
            "2027-02-28T10:00:00Z",
        );
        check_period(
            a,
            Monthly,
            "2027-03-01T00:00:00Z",
            "2027-02-28T10:00:00Z",
            "2027-03-31T10:00:00Z",
        );
        check_period(
            a,
            Monthly,
            "2028-02-29T09:59:59Z",
            "2028-01-31T10:00:00Z",
            "2028-02-29T10:00:00Z",
        );
        check_period(
            a,
            Monthly,
            "2028-02-29T10:00:00Z",
            "2028-02-29T10:00:00Z",
            "2028-03-31T10:00:00Z",
        );
        check_period(
            a,
            Monthly,
            "2028-03-31T09:59:59Z",
            "2028-02-29T10:00:00Z",
            "2028-03-31T10:00:00Z",
        );
    }

    #[test]
    fn annual_feb_29_falls_back_to_feb_28_and_returns_in_leap_years() {
        check_renewal("2028-02-29T06:00:00Z", Annual, 0, "2028-02-29T06:00:00Z");
        check_renewal("2028-02-29T06:00:00Z", Annual, 1, "2029-02-28T06:00:00Z");
        check_renewal("2028-02-29T06:00:00Z", Annual, 3, "2031-02-28T06:00:00Z");
        check_renewal("2028-02-29T06:00:00Z", Annual, 4, "2032-02-29T06:00:00Z");
        check_renewal("2028-02-29T06:00:00Z", Annual, 100, "2128-02-29T06:00:00Z");
        check_renewal("2028-02-29T06:00:00Z", Annual, 72, "2100-02-28T06:00:00Z");
        check_period(
            "2028-02-29T06:00:00Z",
            Annual,
            "2031-12-31T00:00:00Z",
            "2031-02-28T06:00:00Z",
            "2032-02-29T06:00:00Z",
        );
    }

    #[test]
    fn periods_are_start_inclusive_end_exclusive() {
        let a = "2027-05-30T12:30:00Z";
        check_period(a, Monthly, a, a, "2027-06-30T12:30:00Z");
        check_period(
            a,
            Monthly,
            "2027-06-30T12:29:59.999999999Z",
            a,
            "2027-06-30T12:30:00Z",
        );
        check_period(
            a,
            Monthly,
            "2027-06-30T12:30:00Z",
            "2027-06-30T12:30:00Z",
            "2027-07-30T12:30:00Z",
        );
        check_period(
            a,
            Annual,
            "2028-05-30T12:30:00Z",
            "2028-05-30T12:30:00Z",
            "2029-05-30T12:30:00Z",
        );
        check_period(a, Annual, "2028-05-30T12:29:59Z", a, "2028-05-30T12:30:00Z");
    }

    #[test]
    fn period_before_the_anchor_is_the_first_period() {
        let a = "2027-01-31T10:00:00Z";
        check_period(
            a,
            Monthly,
            "2020-01-01T00:00:00Z",
            a,
            "2027-02-28T10:00:00Z",
        );
        check_period(a, Annual, "2027-01-31T09:59:59Z", a, "2028-01-31T10:00:00Z");
    }

    #[test]
    fn renewal_keeps_sub_second_time_of_day() {
        check_renewal(
            "2027-08-31T17:00:00.123456789Z",
            Monthly,
            1,
            "2027-09-30T17:00:00.123456789Z",
        );
    }

    #[test]
    fn havana_midnight_missing_in_march_and_doubled_in_november() {
        // 2026-03-08 00:00 CST does not exist: clocks go from 23:59:59 to 01:00 CDT.
        check_day_start("America/Havana", "2026-03-08", "2026-03-08T05:00:00Z");
        check_reset(
            "America/Havana",
            "2026-03-07T12:00:00Z",
            "2026-03-08T05:00:00Z",
        );
        check_reset(
            "America/Havana",
            "2026-03-08T04:59:59Z",
            "2026-03-08T05:00:00Z",
        );
        check_reset(
            "America/Havana",
            "2026-03-08T05:00:00Z",
            "2026-03-09T04:00:00Z",
        );
        check_local_date("America/Havana", "2026-03-08T04:59:59Z", "2026-03-07");
        check_local_date("America/Havana", "2026-03-08T05:00:00Z", "2026-03-08");
        // 2026-11-01 01:00 CDT falls back to 00:00 CST: 00:00 happens at 04:00Z and 05:00Z.
        check_day_start("America/Havana", "2026-11-01", "2026-11-01T04:00:00Z");
        check_reset(
            "America/Havana",
            "2026-10-31T12:00:00Z",
            "2026-11-01T04:00:00Z",
        );
        check_reset(
            "America/Havana",
            "2026-11-01T04:00:00Z",
            "2026-11-02T05:00:00Z",
        );
        check_reset(
            "America/Havana",
            "2026-11-01T05:00:00Z",
            "2026-11-02T05:00:00Z",
        );
    }

    #[test]
    fn half_hour_and_extreme_offsets() {
        check_day_start("Asia/Kolkata", "2027-06-01", "2027-05-31T18:30:00Z");
        check_reset(
            "Asia/Kolkata",
            "2027-05-31T18:29:59Z",
            "2027-05-31T18:30:00Z",
        );
        check_reset(
            "Asia/Kolkata",
            "2027-05-31T18:30:00Z",
            "2027-06-01T18:30:00Z",
        );
        check_local_date("Asia/Kolkata", "2027-05-31T18:30:00Z", "2027-06-01");

        check_day_start("Pacific/Kiritimati", "2027-06-01", "2027-05-31T10:00:00Z");
        check_reset(
            "Pacific/Kiritimati",
            "2027-05-31T09:59:59Z",
            "2027-05-31T10:00:00Z",
        );
        check_reset(
            "Pacific/Kiritimati",
            "2027-05-31T10:00:00Z",
            "2027-06-01T10:00:00Z",
        );
        check_local_date("Pacific/Kiritimati", "2027-05-31T10:00:00Z", "2027-06-01");

        check_day_start("Pacific/Pago_Pago", "2027-06-01", "2027-06-01T11:00:00Z");
        check_reset(
            "Pacific/Pago_Pago",
            "2027-06-01T10:59:59Z",
            "2027-06-01T11:00:00Z",
        );
        check_reset(
            "Pacific/Pago_Pago",
            "2027-06-01T11:00:00Z",
            "2027-06-02T11:00:00Z",
        );
        check_local_date("Pacific/Pago_Pago", "2027-06-01T10:59:59Z", "2027-05-31");
    }

    #[test]
    fn troll_resets_at_every_local_date_even_after_a_22_hour_day() {
        // 2027-03-28 01:00Z: +00 -> +02, so local 2027-03-28 lasts 22 hours.
        check_reset(
            "Antarctica/Troll",
            "2027-03-27T12:00:00Z",
            "2027-03-28T00:00:00Z",
        );
        check_reset(
            "Antarctica/Troll",
            "2027-03-28T00:00:00Z",
            "2027-03-28T22:00:00Z",
        );
        check_reset(
            "Antarctica/Troll",
            "2027-03-28T22:00:00Z",
            "2027-03-29T22:00:00Z",
        );
        // 2027-10-31 01:00Z: +02 -> +00, a 26-hour day.
        check_reset(
            "Antarctica/Troll",
            "2027-10-30T22:00:00Z",
            "2027-11-01T00:00:00Z",
        );
    }

    #[test]
    fn a_skipped_date_has_no_reset_of_its_own() {
        // Samoa skipped 2011-12-30 entirely; its day start is that of the 31st.
        check_day_start("Pacific/Apia", "2011-12-30", "2011-12-30T10:00:00Z");
        check_day_start("Pacific/Apia", "2011-12-31", "2011-12-30T10:00:00Z");
        check_reset(
            "Pacific/Apia",
            "2011-12-29T10:00:00Z",
            "2011-12-30T10:00:00Z",
        );
        check_reset(
            "Pacific/Apia",
            "2011-12-30T10:00:00Z",
            "2011-12-31T10:00:00Z",
        );
    }

    #[test]
    fn a_date_re_entered_after_the_clock_falls_back_over_midnight_is_not_started_again() {
        // St. John's fell back at 00:01 NDT to 23:01 NST (until 2010): 2010-11-07 began at
        // 02:30Z, then local time returned to Nov 6 for an hour and reached Nov 7 00:00 a
        // second time at 03:30Z. "Start of tomorrow" would be in the past there.
        check_day_start("America/St_Johns", "2010-11-07", "2010-11-07T02:30:00Z");
        check_reset(
            "America/St_Johns",
            "2010-11-07T02:29:59Z",
            "2010-11-07T02:30:00Z",
        );
        check_reset(
            "America/St_Johns",
            "2010-11-07T02:30:00Z",
            "2010-11-08T03:30:00Z",
        );
        check_local_date("America/St_Johns", "2010-11-07T02:31:00Z", "2010-11-06");
        check_reset(
            "America/St_Johns",
            "2010-11-07T02:31:00Z",
            "2010-11-08T03:30:00Z",
        );
        // Casey went from +11 to +8 at 02:00 local on 2010-03-05, back into Mar 4.
        check_day_start("Antarctica/Casey", "2010-03-05", "2010-03-04T13:00:00Z");
        check_local_date("Antarctica/Casey", "2010-03-04T15:00:00Z", "2010-03-04");
        check_reset(
            "Antarctica/Casey",
            "2010-03-04T15:00:00Z",
            "2010-03-05T16:00:00Z",
        );
    }

    #[test]
    fn zone_change_west_skips_a_reset_that_would_come_too_soon() {
        // Reset at Tokyo midnight (15:00Z), then moved to Los Angeles, whose midnight is
        // 17 h later: skipped, the next reset is LA's following midnight.
        check_zone_change(
            "America/Los_Angeles",
            "2027-01-10T15:05:00Z",
            "2027-01-10T15:00:00Z",
            "2027-01-12T08:00:00Z",
        );
    }

    #[test]
    fn zone_change_east_skips_a_reset_that_would_come_too_soon() {
        // Reset at LA midnight (08:00Z), then moved to Tokyo, whose midnight is 7 h later.
        check_zone_change(
            "Asia/Tokyo",
            "2027-01-11T09:00:00Z",
            "2027-01-11T08:00:00Z",
            "2027-01-12T15:00:00Z",
        );
    }

    #[test]
    fn zone_change_keeps_a_reset_that_is_far_enough() {
        // Reset in London at 00:00Z, moved to Paris: its midnight 23 h later is allowed.
        check_zone_change(
            "Europe/Paris",
            "2027-01-11T12:00:00Z",
            "2027-01-11T00:00:00Z",
            "2027-01-11T23:00:00Z",
        );
        // Reset in Tokyo, moved to LA a day later: the first LA midnight is 41 h after it.
        check_zone_change(
            "America/Los_Angeles",
            "2027-01-11T15:00:00Z",
            "2027-01-10T15:00:00Z",
            "2027-01-12T08:00:00Z",
        );
    }

    #[test]
    fn zone_change_without_a_prior_reset_counts_from_creation() {
        // Created 22:00Z in London, moved to Paris at once: Paris midnight (23:00Z) is
        // only 1 h after creation, the next is 25 h after.
        check_zone_change(
            "Europe/Paris",
            "2027-01-11T22:00:01Z",
            "2027-01-11T22:00:00Z",
            "2027-01-12T23:00:00Z",
        );
    }

    #[test]
    fn zone_change_at_a_day_start_is_strictly_after() {
        check_zone_change(
            "Asia/Kolkata",
            "2027-06-01T18:30:00Z",
            "2027-05-01T00:00:00Z",
            "2027-06-02T18:30:00Z",
        );
    }

    #[test]
    fn gap_search_agrees_with_chrono_tz() {
        for (zone_name, local) in [
            ("America/Havana", "2026-03-08T00:00:00"),
            ("America/Havana", "2026-03-08T00:59:59"),
            ("Antarctica/Troll", "2027-03-28T01:30:00"),
            ("Australia/Lord_Howe", "2027-10-03T02:10:00"),
            ("Pacific/Apia", "2011-12-30T00:00:00"),
            ("America/New_York", "2027-03-14T02:00:00"),
        ] {
            let tz = zone(zone_name);
            let local: NaiveDateTime = local.parse().expect("test local times parse");
            assert!(tz.offset_from_local_datetime(&local) == LocalResult::None);
            assert_eq!(
                gap_end_by_search(tz, local),
                gap_end(tz, local),
                "{zone_name} {local}"
            );
        }
    }

    #[test]
    fn saturates_at_the_ends_of_chronos_range() {
        // Offsets at the ends of the range: local mean time before the zone's first rule
        // (Tokyo +09:18:59, New York -04:56:02), the last rule after it.
        let (tokyo, new_york) = (zone("Asia/Tokyo"), zone("America/New_York"));
        let (kiritimati, pago_pago) = (zone("Pacific/Kiritimati"), zone("Pacific/Pago_Pago"));
        let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
        assert_eq!(local_date(kiritimati, max), NaiveDate::MAX);
        assert_eq!(local_date(new_york, min), NaiveDate::MIN);
        assert_eq!(day_start(tokyo, NaiveDate::MIN), min);
        assert_eq!(
            show(day_start(pago_pago, NaiveDate::MAX)),
            "+262142-12-31T11:00:00Z"
        );
        assert_eq!(next_daily_reset(kiritimati, max), max);
        assert_eq!(next_daily_reset(pago_pago, max), max);
        assert_eq!(
            show(next_daily_reset(tokyo, min)),
            "-262143-01-01T14:41:01Z"
        );
        assert_eq!(
            show(next_daily_reset(new_york, min)),
            "-262143-01-01T04:56:02Z"
        );
        assert_eq!(first_reset_after_zone_change(pago_pago, min, max), max);
        assert_eq!(renewal(max, Monthly, u32::MAX), max);
        assert_eq!(renewal(min, Annual, u32::MAX), max);
        assert_eq!(renewal(min, Monthly, u32::MAX), max);
        assert_eq!(
            show(renewal(min, Monthly, 12 * 262_143)),
            "0000-01-01T00:00:00Z"
        );
        assert_eq!(billing_period(min, Annual, max).1, max);
        assert_eq!(billing_period(min, Monthly, max).1, max);
        assert_eq!(billing_period(max, Monthly, max), (max, max));
    }

    #[test]
    fn billing_interval_serializes_as_the_spec_spells_it() {
        let json = serde_json::to_string(&[Monthly, Annual]).expect("serializes");
        assert_eq!(json, r#"["MONTHLY","ANNUAL"]"#);
        let back: Vec<BillingInterval> = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, [Monthly, Annual]);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;

    /// Zones with every kind of day the rules must survive: gaps and folds at or across
    /// midnight (Havana, Santiago, St_Johns before 2011, Casey 2010), half-hour and 45-minute
    /// offsets and DST shifts (Kolkata, Tehran, Lord_Howe, Chatham, Kathmandu), the ends of
    /// the date line (Kiritimati, Pago_Pago, Apia's skipped 2011-12-30), 22-hour days
    /// (Troll), zones whose rules moved (Scoresbysund 2024, Nuuk, Casablanca) and plain
    /// ones (London, Chisinau, New York, Los Angeles, Tokyo, UTC).
    const ZONES: &[&str] = &[
        "America/Havana",
        "Asia/Kolkata",
        "Pacific/Kiritimati",
        "Pacific/Pago_Pago",
        "Antarctica/Troll",
        "Europe/London",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Tehran",
        "America/Santiago",
        "America/Scoresbysund",
        "Europe/Chisinau",
        "Asia/Tokyo",
        "America/Los_Angeles",
        "America/St_Johns",
        "Pacific/Apia",
        "Pacific/Chatham",
        "Asia/Kathmandu",
        "Africa/Casablanca",
        "America/Nuuk",
        "Antarctica/Casey",
        "UTC",
    ];

    /// 2000-01-01T00:00:00Z and 2041-01-01T00:00:00Z.
    const FROM_SECONDS: i64 = 946_684_800;
    const UNTIL_SECONDS: i64 = 2_240_524_800;
    /// Cases per property; each case costs microseconds, so be generous.
    const CASES: u32 = 8192;

    fn any_zone() -> impl Strategy<Value = Tz> {
        select(ZONES).prop_map(|name| name.parse::<Tz>().expect("listed zones exist"))
    }

    fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
        (FROM_SECONDS..UNTIL_SECONDS, 0..1_000_000_000u32).prop_map(|(seconds, nanos)| {
            DateTime::from_timestamp(seconds, nanos).expect("2000-2040 is in range")
        })
    }

    /// The first instant after `t`, within about a year, where `tz`'s offset changes.
    fn offset_change_after(tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let offset_at = |u: DateTime<Utc>| tz.offset_from_utc_datetime(&u.naive_utc()).fix();
        let before = offset_at(t);
        // Daily steps miss a change undone within the same day; that only makes the case
        // less pointed, never wrong.
        let day_after = (1..=400)
            .map(|days| t + TimeDelta::days(days))
            .find(|&u| offset_at(u) != before)?;
        let (mut low, mut high) = (day_after - TimeDelta::days(1), day_after);
        while high - low > TimeDelta::seconds(1) {
            let mid = low + (high - low) / 2;
            if offset_at(mid) == before {
                low = mid;
            } else {
                high = mid;
            }
        }
        Some(high)
    }

    /// A zone and an instant at most `max_delta_seconds` from one of the zone's offset changes.
    fn near_offset_change(max_delta_seconds: i64) -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
        (
            any_zone(),
            any_instant(),
            -max_delta_seconds..=max_delta_seconds,
        )
            .prop_map(|(tz, t, delta_seconds)| {
                let change = offset_change_after(tz, t).unwrap_or(t);
                (tz, change + TimeDelta::seconds(delta_seconds))
            })
    }

    /// A zone and an instant: uniform, within two hours of one of the zone's day starts, or
    /// near one of its offset changes. Uniform instants alone almost never land where
    /// "start of tomorrow" goes wrong (St_Johns' fold across midnight lasted one hour a year);
    /// with these weights the properties catch that mistake on every run.
    fn zone_and_instant() -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
        let uniform = (any_zone(), any_instant());
        let near_day_start =
            (any_zone(), any_instant(), -7200i64..=7200).prop_map(|(tz, t, delta_seconds)| {
                let start = day_start(tz, local_date(tz, t));
                (tz, start + TimeDelta::seconds(delta_seconds))
            });
        prop_oneof![
            1 => uniform,
            1 => near_day_start,
            2 => near_offset_change(3 * 3600),
            1 => near_offset_change(30 * 3600),
        ]
    }

    fn any_interval() -> impl Strategy<Value = BillingInterval> {
        prop_oneof![
            Just(BillingInterval::Monthly),
            Just(BillingInterval::Annual)
        ]
    }

    /// Day starts of the dates around `from..=to`'s local dates, wide enough to hold every
    /// day start between the two instants.
    fn day_starts_around(
        tz: Tz,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> {
        let first = local_date(tz, from) - TimeDelta::days(3);
        let last = local_date(tz, to) + TimeDelta::days(3);
        first
            .iter_days()
            .take_while(move |&d| d <= last)
            .map(move |d| day_start(tz, d))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn next_reset_is_the_first_day_start_after_t((tz, t) in zone_and_instant()) {
            let reset = next_daily_reset(tz, t);
            prop_assert!(reset > t);
            prop_assert_eq!(day_start(tz, local_date(tz, reset)), reset);
            for start in day_starts_around(tz, t, reset) {
                prop_assert!(start <= t || start >= reset, "{} lies in ({}, {})", start, t, reset);
            }
        }

        #[test]
        fn local_date_strictly_increases_across_resets((tz, t) in zone_and_instant()) {
            let mut reset = next_daily_reset(tz, t);
            for _ in 0..3 {
                let next = next_daily_reset(tz, reset);
                prop_assert!(local_date(tz, next) > local_date(tz, reset));
                prop_assert!(next > reset);
                reset = next;
            }
        }

        #[test]
        fn zone_change_waits_23_hours_and_then_takes_the_first_day_start(
            (tz, changed_at) in zone_and_instant(),
            since_floor_seconds in 0i64..=172_800,
        ) {
            let floor_from = changed_at - TimeDelta::seconds(since_floor_seconds);
            let reset = first_reset_after_zone_change(tz, changed_at, floor_from);
            prop_assert!(reset > changed_at);
            prop_assert!(reset - floor_from >= ZONE_CHANGE_MIN_GAP);
            prop_assert_eq!(day_start(tz, local_date(tz, reset)), reset);
            let earliest_allowed = floor_from + ZONE_CHANGE_MIN_GAP;
            for start in day_starts_around(tz, changed_at, reset) {
                let allowed = start > changed_at && start >= earliest_allowed;
                prop_assert!(!allowed || start >= reset, "{} was allowed before {}", start, reset);
            }
        }

        #[test]
        fn billing_period_is_the_pair_of_renewals_around_now(
            anchor in any_instant(),
            interval in any_interval(),
            since_anchor_seconds in 0i64..=1_300_000_000,
        ) {
            let now = anchor + TimeDelta::seconds(since_anchor_seconds);
            let (start, end) = billing_period(anchor, interval, now);
            prop_assert!(start <= now && now < end);
            // Independent of billing_period's arithmetic: walk the renewals one by one.
            let mut n = 0;
            while renewal(anchor, interval, n + 1) <= now {
                n += 1;
            }
            prop_assert_eq!(start, renewal(anchor, interval, n));
            prop_assert_eq!(end, renewal(anchor, interval, n + 1));
        }

        #[test]
        fn renewals_keep_the_anchor_day_or_the_last_day_of_the_month(
            anchor in any_instant(),
            interval in any_interval(),
            n in 0u32..600,
        ) {
            let this = renewal(anchor, interval, n);
            let date = this.date_naive();
            prop_assert_eq!(this.time(), anchor.time());
            let months = match interval {
                BillingInterval::Monthly => n,
                BillingInterval::Annual => 12 * n,
            };
            prop_assert_eq!(month_index(this) - month_index(anchor), i64::from(months));
            let last_of_month = date.succ_opt().is_none_or(|next| next.month() != date.month());
            prop_assert!(
                date.day() == anchor.day() || (date.day() < anchor.day() && last_of_month)
            );
            prop_assert!(renewal(anchor, interval, n + 1) > this);
        }
    }
}
