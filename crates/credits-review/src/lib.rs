//! Judging a high credit usage report (SPEC 7) from the service's own usage records: the
//! thread's total cost and event count, retry loops, context growth, the cost percentile
//! among similar threads, a suggested refund and plain tips. Everything here is a pure
//! function of its arguments — the caller fetches the thread, the usage ids covered by
//! earlier CREDITED reviews and the peer totals, and stores the `Findings`. This crate must
//! never do I/O, run async code or read a clock, and no amount ever goes through floating
//! point: costs are `Credits` (i64 µcr) with i128 intermediates. The only float is
//! `cost_percentile`, which is a share of threads, not an amount.
//!
//! # The suggested refund
//!
//! Only the credits the user actually paid count (`cost − uncollected`: uncollected cost was
//! written off, SPEC 4), and never for an event covered by an earlier CREDITED review.
//!
//! - every **retry loop event** (see [`retry_loops`]) is refunded in full;
//! - of the **last [`TRAILING_WINDOW_EVENTS`] events** that are not loop events, a share is
//!   refunded by preview status: `ERROR_LOOP` [`ERROR_LOOP_TRAILING_PERMILLE`] ‰ (50%),
//!   `FAILING` [`FAILING_TRAILING_PERMILLE`] ‰ (25%), `OK` and `UNKNOWN` nothing. The
//!   service has no failure signal of its own, so the tail of the thread stands in for
//!   "the events after the first failure".
//!
//! The share is applied once, to the sum of those events, and rounded to the nearest µcr
//! with halves going up (to the user): neither side gains more than ½ µcr (SPEC 1 allows
//! at most 1 µcr in the user's favour). The refund never exceeds the thread's paid,
//! not-yet-credited cost.

use std::collections::HashSet;

use credits_core::{Credits, UsageId, UsageRecord};
use serde::{Deserialize, Serialize};

mod growth;
mod loops;
mod percentile;
mod refund;
mod tips;

pub use growth::{ContextGrowth, context_growth};
pub use loops::{MIN_LOOP_LENGTH, NEAR_IDENTICAL_PERMILLE, RETRY_WINDOW_SECONDS, retry_loops};
pub use percentile::{
    MIN_PEER_THREADS, costliest_model, percentile_from_counts, percentile_model, percentile_of,
};
pub use refund::{
    ERROR_LOOP_TRAILING_PERMILLE, FAILING_TRAILING_PERMILLE, TRAILING_WINDOW_EVENTS,
    suggested_refund, trailing_permille,
};
pub use tips::{
    CONTEXT_GROWTH_PERMILLE, EXPENSIVE_TIERS, GROWTH_TIP_MIN_TOKENS, HIGH_PERCENTILE,
    LARGE_CONTEXT_TOKENS, SMALL_TASK_OUTPUT_TOKENS,
};

/// What the user saw of the preview while the thread ran (SPEC 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PreviewStatus {
    Ok,
    Failing,
    ErrorLoop,
    Unknown,
}

/// A user's high-usage report, already checked at the edge (lengths, ids; SPEC 1). The
/// user's `thread_length` and `context_size` are their view and are kept with the review;
/// the findings come from the service's own records only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub thread_id: String,
    pub task_description: String,
    pub model: Option<String>,
    pub preview_status: PreviewStatus,
    pub thread_length: Option<u32>,
    pub context_size: Option<u64>,
}

/// What the analysis found; stored with the review (as JSON) and shown to admin and user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    /// Σ cost of the thread's events (saturating at `Credits::MAX`).
    pub thread_credits: Credits,
    /// Number of usage events in the thread (saturating).
    pub events: u32,
    /// Events inside retry loops after each loop's first (legitimate) try.
    pub retry_loop_events: u32,
    /// Their ids, in thread order.
    pub retry_loop_event_ids: Vec<UsageId>,
    pub context_growth: ContextGrowth,
    /// 0–100, one decimal rounded down; `None` with fewer than [`MIN_PEER_THREADS`] peers.
    pub cost_percentile: Option<f64>,
    pub suggested_refund: Credits,
    pub tips: Vec<String>,
    /// Set when the analysis saw one pool member's events of the thread only (a plain
    /// member's report): a CREDITED review covers those events, not the other members'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The highest ledger seq among the events analysed: a CREDITED review covers the
    /// thread's events up to it (its member's only, with `member`). Reviews filed before
    /// it was recorded cover the events up to their filing instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covers_seq: Option<u64>,
}

/// Analyses a reported thread.
///
/// - `thread`: the thread's usage events on one wallet, oldest first (ledger order).
/// - `already_credited`: usage ids covered by earlier CREDITED reviews; never refunded twice.
/// - `peer_thread_totals`: total costs of the threads (wallet, threadId) of the same model
///   (see [`percentile_model`]) over the last 30 days, platform-wide, this one included.
pub fn analyse(
    report: &Report,
    thread: &[UsageRecord],
    already_credited: &HashSet<UsageId>,
    peer_thread_totals: &[Credits],
) -> Findings {
    let total = saturating_credits(thread.iter().map(|r| i128::from(r.cost.micro())).sum());
    analyse_with_percentile(
        report,
        thread,
        already_credited,
        percentile_of(total, peer_thread_totals),
    )
}

/// [`analyse`] for a caller whose store ranks the thread among its peers itself (see
/// [`percentile_from_counts`]), so the peer totals never have to be loaded.
pub fn analyse_with_percentile(
    report: &Report,
    thread: &[UsageRecord],
    already_credited: &HashSet<UsageId>,
    cost_percentile: Option<f64>,
) -> Findings {
    let loops = retry_loops(thread);
    let loop_event_ids: Vec<UsageId> = loops
        .iter()
        .flat_map(|run| &thread[run.start + 1..run.end])
        .map(|r| r.id.clone())
        .collect();
    let thread_credits =
        saturating_credits(thread.iter().map(|r| i128::from(r.cost.micro())).sum());
    let growth = context_growth(thread);
    let tips = tips::tips(report, thread, &loops, &growth, cost_percentile);
    Findings {
        thread_credits,
        events: saturating_u32(thread.len()),
        retry_loop_events: saturating_u32(loop_event_ids.len()),
        retry_loop_event_ids: loop_event_ids,
        context_growth: growth,
        cost_percentile,
        suggested_refund: suggested_refund(report.preview_status, thread, &loops, already_credited),
        tips,
        member: None,
        covers_seq: None,
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A sum of costs; only a corrupt ledger could exceed i64 µcr, and a report must not panic.
fn saturating_credits(micro: i128) -> Credits {
    Credits::from_micro(micro.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}
