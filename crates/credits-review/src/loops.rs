//! Retry loops: runs of consecutive, near-identical interactions on one model in a short
//! span — the user (or an agent) re-sending the same request. Integer arithmetic only.

use std::ops::Range;

use chrono::TimeDelta;
use credits_core::UsageRecord;

/// Two consecutive events can belong to one loop when the later one started at most this
/// many seconds after the earlier one (a human or agent retrying, not a new step of work).
pub const RETRY_WINDOW_SECONDS: i64 = 120;

/// Two consecutive events are near-identical when both their input and their output token
/// counts are within ±this many ‰ of the earlier event's (50 ‰ = ±5%). Cached tokens are
/// ignored: whether a retry hits the cache says nothing about whether it was a retry.
pub const NEAR_IDENTICAL_PERMILLE: u64 = 50;

/// A run counts as a loop from this many events: one try and two near-identical retries.
pub const MIN_LOOP_LENGTH: usize = 3;

/// The retry loops of a thread (oldest first), as index ranges into it, in order. A run
/// grows while each event has the previous one's model, follows it by 0 to
/// [`RETRY_WINDOW_SECONDS`] seconds and is near-identical to it; runs shorter than
/// [`MIN_LOOP_LENGTH`] are dropped. Within a loop, every event after the first is a loop
/// event (the first was a legitimate try).
pub fn retry_loops(thread: &[UsageRecord]) -> Vec<Range<usize>> {
    let mut loops = Vec::new();
    let mut start = 0;
    for i in 1..=thread.len() {
        if i < thread.len() && continues_run(&thread[i - 1], &thread[i]) {
            continue;
        }
        if i - start >= MIN_LOOP_LENGTH {
            loops.push(start..i);
        }
        start = i;
    }
    loops
}

/// Whether `next` repeats `prev`.
fn continues_run(prev: &UsageRecord, next: &UsageRecord) -> bool {
    let gap = next.at.signed_duration_since(prev.at);
    prev.model == next.model
        && gap >= TimeDelta::zero()
        && gap <= TimeDelta::seconds(RETRY_WINDOW_SECONDS)
        && near(prev.tokens.input, next.tokens.input)
        && near(prev.tokens.output, next.tokens.output)
}

/// `|next − prev| ≤ prev · NEAR_IDENTICAL_PERMILLE / 1000`, exactly (u128 cannot overflow).
fn near(prev: u64, next: u64) -> bool {
    u128::from(prev.abs_diff(next)) * 1000 <= u128::from(prev) * u128::from(NEAR_IDENTICAL_PERMILLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(prev: u64, next: u64, expected: bool) {
        assert_eq!(near(prev, next), expected, "near({prev}, {next})");
    }

    #[test]
    fn near_is_inclusive_and_symmetric_around_the_earlier_count() {
        check(1000, 1000, true);
        check(1000, 1050, true);
        check(1000, 950, true);
        check(1000, 1051, false);
        check(1000, 949, false);
        check(0, 0, true);
        check(0, 1, false);
        check(19, 20, false); // 1/19 ≈ 52.6 ‰
        check(20, 21, true); // 1/20 = 50 ‰
        check(u64::MAX, u64::MAX, true);
        check(u64::MAX, 0, false);
        check(0, u64::MAX, false);
    }
}
