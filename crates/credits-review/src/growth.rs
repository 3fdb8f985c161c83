//! Context growth: how the input (context) sent with each request changed over the thread.

use credits_core::UsageRecord;
use serde::{Deserialize, Serialize};

/// Input tokens of the thread's first, last and largest request, and last ÷ first in ‰.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextGrowth {
    pub first_input_tokens: u64,
    pub last_input_tokens: u64,
    pub max_input_tokens: u64,
    /// `last · 1000 / first`, rounded down, saturating at `u32::MAX`; 1000 means no
    /// growth. With `first = 0` it is 1000 when `last = 0` too, else `u32::MAX`.
    pub growth_ratio_permille: u32,
}

/// The context growth of a thread (oldest first); all zero and ratio 1000 when empty.
pub fn context_growth(thread: &[UsageRecord]) -> ContextGrowth {
    let first = thread.first().map_or(0, |r| r.tokens.input);
    let last = thread.last().map_or(0, |r| r.tokens.input);
    let max = thread.iter().map(|r| r.tokens.input).max().unwrap_or(0);
    ContextGrowth {
        first_input_tokens: first,
        last_input_tokens: last,
        max_input_tokens: max,
        growth_ratio_permille: ratio_permille(first, last),
    }
}

fn ratio_permille(first: u64, last: u64) -> u32 {
    match (first, last) {
        (0, 0) => 1000,
        (0, _) => u32::MAX,
        _ => {
            let ratio = u128::from(last) * 1000 / u128::from(first);
            u32::try_from(ratio).unwrap_or(u32::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(first: u64, last: u64, expected: u32) {
        assert_eq!(ratio_permille(first, last), expected, "{first} → {last}");
    }

    #[test]
    fn ratio() {
        check(1000, 1000, 1000);
        check(1000, 4000, 4000);
        check(3, 1, 333);
        check(3, 2, 666);
        check(1000, 0, 0);
        check(0, 0, 1000);
        check(0, 1, u32::MAX);
        check(1, u64::MAX, u32::MAX);
        check(u64::MAX, u64::MAX, 1000);
        check(1, 4_294_967, 4_294_967_000);
        check(1, 4_294_968, u32::MAX);
    }
}
