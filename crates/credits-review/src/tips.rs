//! Plain tips derived from the findings, each behind a named threshold, in a fixed order:
//! retry loop, error-loop preview, large context, expensive model on small tasks, high
//! percentile.

use std::collections::BTreeMap;
use std::ops::Range;

use credits_core::UsageRecord;

use crate::{ContextGrowth, PreviewStatus, Report};

/// A last request with at least this many input tokens carries a large context.
pub const LARGE_CONTEXT_TOKENS: u64 = 100_000;

/// A context that grew to at least this many ‰ of its first request (4×) has grown large…
pub const CONTEXT_GROWTH_PERMILLE: u32 = 4_000;

/// …provided the last request has at least this many input tokens: 500 → 2,000 tokens is
/// fourfold growth but nothing a fresh thread would save.
pub const GROWTH_TIP_MIN_TOKENS: u64 = 20_000;

/// Average output tokens per event below which the thread's work counts as small tasks.
pub const SMALL_TASK_OUTPUT_TOKENS: u64 = 300;

/// Pricing tiers (`UsageRecord.tier`) for which a cheaper model is worth suggesting.
pub const EXPENSIVE_TIERS: [&str; 2] = ["premium", "standard"];

/// A cost percentile at or above this (0–100) is worth telling the user.
pub const HIGH_PERCENTILE: u32 = 90;

pub(crate) fn tips(
    report: &Report,
    thread: &[UsageRecord],
    loops: &[Range<usize>],
    growth: &ContextGrowth,
    percentile: Option<f64>,
) -> Vec<String> {
    let mut tips = Vec::new();
    if let Some(longest) = loops.iter().map(|run| run.len()).max() {
        tips.push(format!(
            "Your thread repeated nearly the same request {longest} times in a row. When an \
             answer is not what you need, change the request (add the error message, narrow \
             the task) instead of sending it again: every repeat is charged."
        ));
    }
    if report.preview_status == PreviewStatus::ErrorLoop {
        tips.push(
            "Your preview was stuck in an error loop. Fix the failing preview (start from its \
             first error) before re-running the request: re-running against a broken preview \
             costs credits without getting closer to a result."
                .to_owned(),
        );
    }
    let large = growth.last_input_tokens >= LARGE_CONTEXT_TOKENS;
    let grown = growth.growth_ratio_permille >= CONTEXT_GROWTH_PERMILLE
        && growth.last_input_tokens >= GROWTH_TIP_MIN_TOKENS;
    if large || grown {
        tips.push(format!(
            "The context grew from {} to {} input tokens per request. Start a fresh thread \
             with a short summary of what matters: every request pays for the whole context \
             again.",
            growth.first_input_tokens, growth.last_input_tokens
        ));
    }
    if let Some((model, tier, average)) = expensive_model_on_small_tasks(thread) {
        tips.push(format!(
            "Answers in this thread were short (about {average} output tokens on average) but \
             came from {model}, a {tier} model. A cheaper model usually handles small tasks \
             like these for a fraction of the cost."
        ));
    }
    if let Some(p) = percentile.filter(|p| *p >= f64::from(HIGH_PERCENTILE)) {
        tips.push(format!(
            "This thread cost as much as or more than {p}% of similar threads in the last 30 \
             days."
        ));
    }
    tips
}

/// The costliest model on an expensive tier (a tie goes to the first name in byte order),
/// its tier and the average output tokens of the thread's expensive-tier events, when that
/// average is below [`SMALL_TASK_OUTPUT_TOKENS`].
fn expensive_model_on_small_tasks(thread: &[UsageRecord]) -> Option<(&str, &str, u128)> {
    let mut per_model: BTreeMap<&str, (i128, &str)> = BTreeMap::new();
    let (mut events, mut output) = (0u128, 0u128);
    for r in thread
        .iter()
        .filter(|r| EXPENSIVE_TIERS.contains(&r.tier.as_str()))
    {
        events += 1;
        output += u128::from(r.tokens.output);
        let entry = per_model.entry(r.model.as_str()).or_insert((0, ""));
        entry.0 += i128::from(r.cost.micro());
        // A plugin reload may move a model to another tier; the latest event says where it is.
        entry.1 = r.tier.as_str();
    }
    let average = output.checked_div(events)?;
    if average >= u128::from(SMALL_TASK_OUTPUT_TOKENS) {
        return None;
    }
    // `max_by_key` keeps the last of equal maxima, so walk the names in reverse.
    let (model, (_, tier)) = per_model
        .into_iter()
        .rev()
        .max_by_key(|(_, (cost, _))| *cost)?;
    Some((model, tier, average))
}
