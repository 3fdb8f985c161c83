//! Where a thread's total cost sits among similar threads (SPEC 7, `costPercentile`).

use std::collections::BTreeMap;

use credits_core::{Credits, UsageRecord};

use crate::Report;

/// Below this many peer threads a percentile says little, and SPEC 7 makes it null.
pub const MIN_PEER_THREADS: usize = 10;

/// The share (0–100) of `peers` whose total is ≤ `total`, rounded down to one decimal;
/// `None` with fewer than [`MIN_PEER_THREADS`] peers. `peers` are the totals of the threads
/// of the same model over the last 30 days, the reported thread included.
///
/// The count is exact (integers); only the final share becomes a float, as tenths of a
/// percent, so the stored value is short (`33.3`, not `33.333333333333336`) and never rounds
/// up across a threshold such as [`crate::HIGH_PERCENTILE`].
pub fn percentile_of(total: Credits, peers: &[Credits]) -> Option<f64> {
    let at_or_below = peers.iter().filter(|p| **p <= total).count();
    percentile_from_counts(peers.len() as u64, at_or_below as u64)
}

/// The same percentile from counts: `threads` peers, `at_or_below` of them costing no more.
pub fn percentile_from_counts(threads: u64, at_or_below: u64) -> Option<f64> {
    if threads < MIN_PEER_THREADS as u64 {
        return None;
    }
    // The quotient is at most 1000 when at_or_below ≤ threads.
    let tenths = (u128::from(at_or_below.min(threads)) * 1000 / u128::from(threads)) as u32;
    Some(f64::from(tenths) / 10.0)
}

/// The model whose peers the caller compares against: the report's model, else the thread's
/// costliest (see [`costliest_model`]). `None` for an empty thread without a model.
pub fn percentile_model<'a>(report: &'a Report, thread: &'a [UsageRecord]) -> Option<&'a str> {
    if let Some(model) = report.model.as_deref() {
        return Some(model);
    }
    costliest_model(
        thread
            .iter()
            .map(|r| (r.model.as_str(), i128::from(r.cost.micro()))),
    )
}

/// The model of the largest Σ cost among `(model, cost)` pairs; a tie goes to the model
/// named first in byte order, so the choice never depends on their order.
pub fn costliest_model<'a>(costs: impl IntoIterator<Item = (&'a str, i128)>) -> Option<&'a str> {
    let mut totals: BTreeMap<&str, i128> = BTreeMap::new();
    for (model, cost) in costs {
        *totals.entry(model).or_default() += cost;
    }
    // `max_by_key` keeps the last of equal maxima, so walk the names in reverse.
    totals
        .into_iter()
        .rev()
        .max_by_key(|(_, cost)| *cost)
        .map(|(model, _)| model)
}
