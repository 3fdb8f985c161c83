//! The suggested refund (the rule is in the crate docs and `docs/REVIEWS.md`). Amounts are
//! µcr in i128 from the first sum to the last comparison; no floats.

use std::collections::HashSet;
use std::ops::Range;

use credits_core::{Credits, UsageId, UsageRecord};

use crate::{PreviewStatus, saturating_credits};

/// How many of the thread's last events stand in for "after the preview started failing":
/// the service sees no failure signal of its own, so it looks at the tail of the thread.
pub const TRAILING_WINDOW_EVENTS: usize = 10;

/// Share (‰) of the trailing, non-loop events refunded when the preview was in an error loop.
pub const ERROR_LOOP_TRAILING_PERMILLE: u32 = 500;

/// Share (‰) of the trailing, non-loop events refunded when the preview was failing.
pub const FAILING_TRAILING_PERMILLE: u32 = 250;

/// The share (‰) of the trailing, non-loop events refunded for a preview status.
pub fn trailing_permille(status: PreviewStatus) -> u32 {
    match status {
        PreviewStatus::ErrorLoop => ERROR_LOOP_TRAILING_PERMILLE,
        PreviewStatus::Failing => FAILING_TRAILING_PERMILLE,
        PreviewStatus::Ok | PreviewStatus::Unknown => 0,
    }
}

/// The suggested refund for a thread (oldest first) with the given retry `loops` (from
/// [`crate::retry_loops`]): the paid cost of every loop event after each loop's first, plus
/// [`trailing_permille`] of the paid cost of the other events among the last
/// [`TRAILING_WINDOW_EVENTS`], rounded to the nearest µcr with halves up. Events in
/// `already_credited` count for nothing. Never more than the thread's paid, not-yet-credited
/// cost.
pub fn suggested_refund(
    status: PreviewStatus,
    thread: &[UsageRecord],
    loops: &[Range<usize>],
    already_credited: &HashSet<UsageId>,
) -> Credits {
    let mut in_loop = vec![false; thread.len()];
    for run in loops {
        let retries = run.start.saturating_add(1)..run.end.min(thread.len());
        for flag in in_loop.get_mut(retries).into_iter().flatten() {
            *flag = true;
        }
    }
    let tail_start = thread.len().saturating_sub(TRAILING_WINDOW_EVENTS);
    let (mut uncredited, mut looped, mut trailing) = (0i128, 0i128, 0i128);
    for (i, r) in thread.iter().enumerate() {
        if already_credited.contains(&r.id) {
            continue;
        }
        let paid = paid_micro(r);
        uncredited += paid;
        if in_loop[i] {
            looped += paid;
        } else if i >= tail_start {
            trailing += paid;
        }
    }
    let refund = (looped + share_micro(trailing, trailing_permille(status))).min(uncredited);
    debug_assert!(
        (0..=uncredited).contains(&refund),
        "a refund is never negative nor more than the uncredited cost"
    );
    saturating_credits(refund)
}

/// `permille` ‰ of `sum` µcr (≥ 0), with the rule's one rounding: to the nearest µcr, a half
/// going to the user (SPEC 1 allows at most 1 µcr in the user's favour).
fn share_micro(sum: i128, permille: u32) -> i128 {
    (sum * i128::from(permille) + 500) / 1000
}

/// What the user paid for an event: its cost minus the written-off `uncollected` part,
/// kept within `0..=cost` so that a corrupt record cannot inflate a refund.
fn paid_micro(r: &UsageRecord) -> i128 {
    let cost = i128::from(r.cost.micro()).max(0);
    (cost - i128::from(r.uncollected.micro())).clamp(0, cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sum: i128, permille: u32, expected: i128) {
        assert_eq!(
            share_micro(sum, permille),
            expected,
            "{sum} µcr at {permille} ‰"
        );
    }

    #[test]
    fn halves_of_a_micro_credit_go_to_the_user() {
        check(1, 500, 1); // 0.5 → 1
        check(3, 500, 2); // 1.5 → 2
        check(1, 250, 0); // 0.25 → 0
        check(2, 250, 1); // 0.5 → 1
        check(3, 250, 1); // 0.75 → 1
        check(4, 250, 1);
        check(0, 500, 0);
        check(1_000_000, 250, 250_000);
        check(7, 0, 0);
    }
}
