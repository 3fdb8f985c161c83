//! The calendar rules against `shared/vectors/`, instants computed outside the project
//! (Python zoneinfo, tzdata 2025b). Every row must agree; a failure lists the rows.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use credits_core::calendar::{
    BillingInterval, billing_period, day_start, local_date, next_daily_reset,
};

const DAILY_RESETS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/daily-resets.tsv"
);
const BILLING_PERIODS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/billing-periods.tsv"
);

/// Both files are far larger than this; fewer rows means the file was not really read.
const MIN_ROWS: usize = 400;

/// The data rows of a vector file, each with its 1-based line number, split on tabs.
fn rows(path: &str) -> Vec<(usize, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path} (shared/ must sit beside the repo): {e}"));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#') && !line.trim().is_empty())
        .map(|(i, line)| (i + 1, line.split('\t').map(str::to_owned).collect()))
        .collect()
}

fn instant(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad instant {s:?}: {e}"))
        .with_timezone(&Utc)
}

fn assert_no_failures(file: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} row(s) of {file} disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn daily_resets_agree_with_the_vectors() {
    let rows = rows(DAILY_RESETS);
    let mut failures = Vec::new();
    for (line, fields) in &rows {
        let [zone, now, expected] = fields.as_slice() else {
            panic!("daily-resets.tsv:{line}: expected 3 fields, got {fields:?}");
        };
        let tz: Tz = zone
            .parse()
            .unwrap_or_else(|e| panic!("daily-resets.tsv:{line}: {e}"));
        let expected = instant(expected);
        let got = next_daily_reset(tz, instant(now));
        // The reset must also be the start of the local date it opens.
        let as_day_start = day_start(tz, local_date(tz, expected));
        if got != expected || as_day_start != expected {
            failures.push(format!(
                "line {line}: {zone} {now} expected {expected}, next_daily_reset {got}, \
                 day_start(local_date(expected)) {as_day_start}"
            ));
        }
    }
    assert_no_failures("daily-resets.tsv", &failures);
    assert!(rows.len() > MIN_ROWS, "only {} rows read", rows.len());
}

#[test]
fn billing_periods_agree_with_the_vectors() {
    let rows = rows(BILLING_PERIODS);
    let mut failures = Vec::new();
    for (line, fields) in &rows {
        let [anchor, interval, now, start, end] = fields.as_slice() else {
            panic!("billing-periods.tsv:{line}: expected 5 fields, got {fields:?}");
        };
        let interval = match interval.as_str() {
            "MONTHLY" => BillingInterval::Monthly,
            "ANNUAL" => BillingInterval::Annual,
            other => panic!("billing-periods.tsv:{line}: unknown interval {other:?}"),
        };
        let expected = (instant(start), instant(end));
        let got = billing_period(instant(anchor), interval, instant(now));
        if got != expected {
            failures.push(format!(
                "line {line}: {anchor} {interval:?} {now} expected [{}, {}), got [{}, {})",
                expected.0, expected.1, got.0, got.1
            ));
        }
    }
    assert_no_failures("billing-periods.tsv", &failures);
    assert!(rows.len() > MIN_ROWS, "only {} rows read", rows.len());
}
