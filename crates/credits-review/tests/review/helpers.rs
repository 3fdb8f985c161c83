//! Building threads of usage events for the tests: an event is `(seconds after t0, model,
//! input tokens, output tokens, cost µcr)`; ids are `use_<position>`.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use credits_core::{Charge, Credits, Source, Tokens, UsageId, UsageRecord};
use credits_review::{PreviewStatus, Report};

pub type Ev = (i64, &'static str, u64, u64, i64);

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
        .unwrap()
        .to_utc()
}

/// Test models and their tiers.
pub fn tier_of(model: &str) -> &'static str {
    match model {
        "big" => "premium",
        "mid" => "standard",
        _ => "economy",
    }
}

pub fn record(
    position: usize,
    seconds: i64,
    model: &str,
    input: u64,
    output: u64,
    cost: i64,
) -> UsageRecord {
    let cost = Credits::from_micro(cost);
    UsageRecord {
        id: id(position),
        key: format!("key-{position}"),
        thread_id: "thread-1".to_owned(),
        model: model.to_owned(),
        tier: tier_of(model).to_owned(),
        member: None,
        tokens: Tokens {
            input,
            cached: 0,
            output,
        },
        cost,
        charged: if cost.is_positive() {
            vec![Charge {
                source: Source::Daily,
                amount: cost,
            }]
        } else {
            Vec::new()
        },
        uncollected: Credits::ZERO,
        priced_by: format!("{}@1.0.0", tier_of(model)),
        reservation_id: None,
        at: t0() + TimeDelta::seconds(seconds),
    }
}

pub fn id(position: usize) -> UsageId {
    UsageId(format!("use_{position}"))
}

pub fn ids(positions: &[usize]) -> Vec<UsageId> {
    positions.iter().copied().map(id).collect()
}

pub fn credited(positions: &[usize]) -> HashSet<UsageId> {
    positions.iter().copied().map(id).collect()
}

pub fn thread(events: &[Ev]) -> Vec<UsageRecord> {
    events
        .iter()
        .enumerate()
        .map(|(i, &(s, m, input, output, cost))| record(i, s, m, input, output, cost))
        .collect()
}

/// `n` identical requests `gap` seconds apart from `start`.
pub fn retries(
    start: i64,
    n: usize,
    gap: i64,
    model: &'static str,
    input: u64,
    output: u64,
    cost: i64,
) -> Vec<Ev> {
    (0..n as i64)
        .map(|k| (start + k * gap, model, input, output, cost))
        .collect()
}

/// A normal working thread: `n` requests five minutes apart, context and answers varying.
pub fn normal(start: i64, n: usize, model: &'static str, cost: i64) -> Vec<Ev> {
    (0..n as u64)
        .map(|k| {
            let input = 2_000 + k * 1_500 + (k % 3) * 700;
            let output = 400 + (k * 337) % 900;
            (start + k as i64 * 300, model, input, output, cost)
        })
        .collect()
}

pub fn concat(parts: &[Vec<Ev>]) -> Vec<Ev> {
    parts.concat()
}

pub fn report(status: PreviewStatus) -> Report {
    Report {
        thread_id: "thread-1".to_owned(),
        task_description: "make the login page work".to_owned(),
        model: None,
        preview_status: status,
        thread_length: None,
        context_size: None,
    }
}

pub fn whole(credits: &[i64]) -> Vec<Credits> {
    credits
        .iter()
        .map(|c| Credits::from_whole(*c).unwrap())
        .collect()
}
