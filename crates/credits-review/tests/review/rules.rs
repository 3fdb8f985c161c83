//! Named rules: retry loops, refunds, percentiles, context growth and tips.

use std::collections::HashSet;

use credits_core::Credits;
use credits_review::{
    ContextGrowth, Findings, PreviewStatus, PreviewStatus::*, analyse, percentile_model,
    percentile_of, retry_loops, suggested_refund,
};

use crate::helpers::*;

fn analyse_ok(events: &[Ev]) -> Findings {
    analyse(&report(Ok), &thread(events), &HashSet::new(), &[])
}

/// The positions of the loop events found in `events`.
fn check_loops(events: &[Ev], expected: &[usize]) {
    let f = analyse_ok(events);
    assert_eq!(f.retry_loop_event_ids, ids(expected), "events {events:?}");
    assert_eq!(f.retry_loop_events as usize, expected.len());
}

/// The refund (µcr) for `events` under `status` with the events at `credited` positions
/// already covered by a CREDITED review.
fn check_refund(status: PreviewStatus, events: &[Ev], credited_at: &[usize], expected: i64) {
    let f = analyse(
        &report(status),
        &thread(events),
        &credited(credited_at),
        &[],
    );
    assert_eq!(
        f.suggested_refund,
        Credits::from_micro(expected),
        "{status:?}, credited {credited_at:?}"
    );
}

fn check_percentile(total_micro: i64, peers: &[Credits], expected: Option<f64>) {
    assert_eq!(
        percentile_of(Credits::from_micro(total_micro), peers),
        expected,
        "{total_micro} µcr among {} peers",
        peers.len()
    );
}

fn check_growth(inputs: &[u64], expected: (u64, u64, u64, u32)) {
    let events: Vec<Ev> = inputs
        .iter()
        .enumerate()
        .map(|(k, &input)| (k as i64 * 600, "small", input, 100, 1))
        .collect();
    let (first, last, max, ratio) = expected;
    let expected = ContextGrowth {
        first_input_tokens: first,
        last_input_tokens: last,
        max_input_tokens: max,
        growth_ratio_permille: ratio,
    };
    assert_eq!(
        analyse_ok(&events).context_growth,
        expected,
        "inputs {inputs:?}"
    );
}

/// The tips, by their opening words, in order.
fn check_tips(status: PreviewStatus, events: &[Ev], peers: &[Credits], expected: &[&str]) {
    let f = analyse(&report(status), &thread(events), &HashSet::new(), peers);
    let kinds: Vec<&str> = f.tips.iter().map(|t| kind(t)).collect();
    assert_eq!(kinds, expected, "tips {:#?}", f.tips);
}

const LOOP: &str = "loop";
const PREVIEW: &str = "preview";
const CONTEXT: &str = "context";
const CHEAPER: &str = "cheaper";
const PERCENTILE: &str = "percentile";

fn kind(tip: &str) -> &'static str {
    [
        ("Your thread repeated", LOOP),
        ("Your preview", PREVIEW),
        ("The context grew", CONTEXT),
        ("Answers in this thread", CHEAPER),
        ("This thread cost", PERCENTILE),
    ]
    .into_iter()
    .find(|(start, _)| tip.starts_with(start))
    .map(|(_, k)| k)
    .unwrap_or_else(|| panic!("unknown tip {tip:?}"))
}

// A retry loop: a normal start, then six near-identical requests 20 s apart.
fn looping_thread() -> Vec<Ev> {
    concat(&[
        normal(0, 4, "mid", 10_000),
        vec![
            (2_000, "mid", 12_000, 800, 30_000),
            (2_020, "mid", 12_100, 790, 30_000),
            (2_040, "mid", 12_150, 805, 30_000),
            (2_060, "mid", 12_200, 800, 31_000),
            (2_080, "mid", 12_260, 812, 31_000),
            (2_100, "mid", 12_300, 800, 31_000),
        ],
    ])
}

#[test]
fn a_real_retry_loop_is_found_and_refunded() {
    check_loops(&looping_thread(), &[5, 6, 7, 8, 9]);
    check_refund(Ok, &looping_thread(), &[], 30_000 * 2 + 31_000 * 3);
    check_refund(Unknown, &looping_thread(), &[], 153_000);
    let f = analyse_ok(&looping_thread());
    assert_eq!(f.events, 10);
    assert_eq!(f.thread_credits, Credits::from_micro(4 * 10_000 + 183_000));
}

#[test]
fn a_normal_thread_has_no_loop_and_no_refund_when_ok() {
    check_loops(&normal(0, 30, "mid", 10_000), &[]);
    check_refund(Ok, &normal(0, 30, "mid", 10_000), &[], 0);
    check_refund(Unknown, &normal(0, 30, "mid", 10_000), &[], 0);
    // Identical requests far apart are work, not a retry loop.
    check_loops(&retries(0, 5, 3_600, "mid", 1_000, 100, 5), &[]);
    // Quick requests whose sizes differ are work too.
    check_loops(
        &[
            (0, "mid", 1_000, 100, 5),
            (10, "mid", 2_000, 100, 5),
            (20, "mid", 3_000, 100, 5),
        ],
        &[],
    );
}

#[test]
fn loop_length_counts_from_three_events() {
    check_loops(&retries(0, 2, 10, "mid", 1_000, 100, 5), &[]);
    check_loops(&retries(0, 3, 10, "mid", 1_000, 100, 5), &[1, 2]);
    check_loops(&retries(0, 4, 0, "mid", 1_000, 100, 5), &[1, 2, 3]);
    check_loops(&[], &[]);
    check_loops(&retries(0, 1, 10, "mid", 1_000, 100, 5), &[]);
}

#[test]
fn loops_on_different_models_do_not_merge() {
    let events = concat(&[
        retries(0, 3, 20, "big", 1_000, 100, 5),
        retries(60, 3, 20, "mid", 1_000, 100, 5),
    ]);
    check_loops(&events, &[1, 2, 4, 5]);
    // Alternating models never make a run.
    let alternating: Vec<Ev> = (0..6)
        .map(|k| {
            (
                k * 10,
                if k % 2 == 0 { "big" } else { "mid" },
                1_000,
                100,
                5,
            )
        })
        .collect();
    check_loops(&alternating, &[]);
    // A two-event run on one model next to a two-event run on another: no loop at all.
    let events = concat(&[
        retries(0, 2, 20, "big", 1_000, 100, 5),
        retries(40, 2, 20, "mid", 1_000, 100, 5),
    ]);
    check_loops(&events, &[]);
}

#[test]
fn the_time_window_is_inclusive_and_breaks_just_outside() {
    check_loops(&retries(0, 3, 120, "mid", 1_000, 100, 5), &[1, 2]);
    check_loops(&retries(0, 3, 121, "mid", 1_000, 100, 5), &[]);
    // A 121 s gap splits six events into two loops of three.
    let split = [0, 20, 40, 161, 181, 201].map(|s| (s, "mid", 1_000, 100, 5));
    check_loops(&split, &[1, 2, 4, 5]);
    // Out-of-order times (a negative gap) never continue a run.
    let backwards = [100, 90, 80].map(|s| (s, "mid", 1_000, 100, 5));
    check_loops(&backwards, &[]);
}

#[test]
fn similarity_is_relative_to_the_previous_event_and_breaks_just_outside() {
    // Input: +50 ‰ of 1000 is 1050 (in); +52 ‰ of 1050 is 1102 (in, 52.5 allowed).
    let inputs = |v: [u64; 3]| v.map(|i| (0, "mid", i, 100, 5));
    check_loops(&inputs([1_000, 1_050, 1_102]), &[1, 2]);
    check_loops(&inputs([1_000, 1_051, 1_051]), &[]);
    check_loops(&inputs([1_000, 950, 903]), &[1, 2]);
    check_loops(&inputs([1_000, 949, 949]), &[]);
    // Output the same way.
    let outputs = |v: [u64; 3]| v.map(|o| (0, "mid", 1_000, o, 5));
    check_loops(&outputs([200, 210, 220]), &[1, 2]);
    check_loops(&outputs([200, 211, 211]), &[]);
    // A zero count only matches zero.
    check_loops(&outputs([0, 0, 0]), &[1, 2]);
    check_loops(&outputs([0, 1, 1]), &[]);
    // A dissimilar event in the middle splits the run; each half is too short.
    let events = [
        (0, "mid", 1_000, 100, 5),
        (10, "mid", 1_000, 100, 5),
        (20, "mid", 1_000, 200, 5),
        (30, "mid", 1_000, 200, 5),
    ];
    check_loops(&events, &[]);
    // Cached tokens do not matter.
    let mut t = thread(&retries(0, 3, 10, "mid", 1_000, 100, 5));
    t[1].tokens.cached = 1_000;
    let f = analyse(&report(Ok), &t, &HashSet::new(), &[]);
    assert_eq!(f.retry_loop_event_ids, ids(&[1, 2]));
}

#[test]
fn retry_loops_reports_index_ranges() {
    let events = concat(&[
        retries(0, 3, 20, "big", 1_000, 100, 5),
        normal(1_000, 2, "mid", 5),
        retries(5_000, 4, 20, "mid", 1_000, 100, 5),
    ]);
    assert_eq!(retry_loops(&thread(&events)), vec![0..3, 5..9]);
}

// Twelve normal events (1,000 µcr each), then a loop of four (3,000 µcr each): the last ten
// events are 6..=15, of which 13, 14 and 15 are loop events and 6..=12 (six normal events
// and the loop's first try) are the trailing, non-loop events: 9,000 µcr.
fn failing_thread() -> Vec<Ev> {
    concat(&[
        normal(0, 12, "mid", 1_000),
        retries(10_000, 4, 20, "mid", 5_000, 300, 3_000),
    ])
}

#[test]
fn refund_by_preview_status() {
    check_loops(&failing_thread(), &[13, 14, 15]);
    check_refund(Ok, &failing_thread(), &[], 9_000);
    check_refund(Unknown, &failing_thread(), &[], 9_000);
    check_refund(Failing, &failing_thread(), &[], 9_000 + 2_250);
    check_refund(ErrorLoop, &failing_thread(), &[], 9_000 + 4_500);
    // Without a loop, only the share of the last ten events.
    check_refund(ErrorLoop, &normal(0, 12, "mid", 1_000), &[], 5_000);
    check_refund(Failing, &normal(0, 12, "mid", 1_000), &[], 2_500);
    check_refund(Failing, &normal(0, 4, "mid", 1_000), &[], 1_000);
    check_refund(Ok, &normal(0, 12, "mid", 1_000), &[], 0);
    check_refund(ErrorLoop, &[], &[], 0);
}

#[test]
fn halves_of_a_micro_credit_are_rounded_up_for_the_user() {
    check_refund(ErrorLoop, &normal(0, 1, "mid", 1), &[], 1); // 0.5
    check_refund(ErrorLoop, &normal(0, 3, "mid", 1), &[], 2); // 1.5
    check_refund(Failing, &normal(0, 1, "mid", 1), &[], 0); // 0.25
    check_refund(Failing, &normal(0, 2, "mid", 1), &[], 1); // 0.5
    check_refund(Failing, &normal(0, 3, "mid", 1), &[], 1); // 0.75
    // One rounding on the sum, not one per event: 10 × 0.25 = 2.5 → 3.
    check_refund(Failing, &normal(0, 10, "mid", 1), &[], 3);
}

#[test]
fn already_credited_events_are_never_refunded_again() {
    check_refund(Ok, &failing_thread(), &[13], 6_000);
    check_refund(Ok, &failing_thread(), &[13, 14, 15], 0);
    check_refund(ErrorLoop, &failing_thread(), &[13, 14, 15], 4_500);
    check_refund(ErrorLoop, &failing_thread(), &[6, 7], 9_000 + 3_500);
    check_refund(
        ErrorLoop,
        &failing_thread(),
        &(0..16).collect::<Vec<_>>(),
        0,
    );
    // Credited events outside the window change nothing.
    check_refund(ErrorLoop, &failing_thread(), &[0, 1, 2], 13_500);
    // Crediting does not hide a loop: the findings still show it.
    let f = analyse(
        &report(Ok),
        &thread(&failing_thread()),
        &credited(&[13, 14, 15]),
        &[],
    );
    assert_eq!(f.retry_loop_event_ids, ids(&[13, 14, 15]));
}

#[test]
fn the_refund_never_exceeds_the_uncredited_cost() {
    // A thread that is one long loop, in an error loop: everything but the first try, plus
    // half of that first try — still less than the thread.
    let events = retries(0, 5, 20, "big", 9_000, 900, 1_000);
    check_refund(ErrorLoop, &events, &[], 4_000 + 500);
    check_refund(ErrorLoop, &events, &[0], 4_000);
    check_refund(ErrorLoop, &events, &[1, 2, 3, 4], 500);
}

#[test]
fn only_paid_credits_are_refunded() {
    // A settle that could not collect 400 µcr of a 1,000 µcr loop event: 600 was paid.
    let mut t = thread(&retries(0, 3, 20, "big", 9_000, 900, 1_000));
    t[2].uncollected = Credits::from_micro(400);
    let none = HashSet::new();
    assert_eq!(
        suggested_refund(Ok, &t, &retry_loops(&t), &none),
        Credits::from_micro(1_600)
    );
    let f = analyse(&report(Ok), &t, &none, &[]);
    assert_eq!(f.thread_credits, Credits::from_micro(3_000));
    assert_eq!(f.suggested_refund, Credits::from_micro(1_600));
}

#[test]
fn percentile_on_a_known_distribution() {
    let one_to_twenty = whole(&(1..=20).collect::<Vec<_>>());
    check_percentile(15_000_000, &one_to_twenty, Some(75.0));
    check_percentile(20_000_000, &one_to_twenty, Some(100.0));
    check_percentile(1_000_000, &one_to_twenty, Some(5.0));
    check_percentile(999_999, &one_to_twenty, Some(0.0));
    check_percentile(15_500_000, &one_to_twenty, Some(75.0));
    check_percentile(i64::MAX, &one_to_twenty, Some(100.0));
    check_percentile(0, &[], None);
    check_percentile(5_000_000, &whole(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), None);
    check_percentile(
        5_000_000,
        &whole(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        Some(50.0),
    );
    // Ties count as at or below.
    check_percentile(5_000_000, &whole(&[5; 12]), Some(100.0));
    // One decimal, rounded down: 10/30 and 20/30.
    let thirty = whole(&(1..=30).collect::<Vec<_>>());
    check_percentile(10_000_000, &thirty, Some(33.3));
    check_percentile(20_000_000, &thirty, Some(66.6));
    check_percentile(27_000_000, &thirty, Some(90.0));
    // Order of the peers does not matter.
    let mut reversed = one_to_twenty.clone();
    reversed.reverse();
    check_percentile(15_000_000, &reversed, Some(75.0));
}

#[test]
fn analyse_places_the_thread_among_its_peers() {
    // The thread costs 15 credits in total; the peers include it.
    let events = normal(0, 3, "mid", 5_000_000);
    let peers = whole(&(1..=20).collect::<Vec<_>>());
    let f = analyse(&report(Ok), &thread(&events), &HashSet::new(), &peers);
    assert_eq!(f.thread_credits, Credits::from_whole(15).unwrap());
    assert_eq!(f.cost_percentile, Some(75.0));
    let f = analyse(&report(Ok), &thread(&events), &HashSet::new(), &peers[..9]);
    assert_eq!(f.cost_percentile, None);
}

#[test]
fn percentile_model_is_the_reports_else_the_costliest() {
    let t = thread(&[
        (0, "mid", 1_000, 100, 300),
        (600, "big", 1_000, 100, 500),
        (1_200, "mid", 1_000, 100, 300),
    ]);
    let mut r = report(Ok);
    assert_eq!(percentile_model(&r, &t), Some("mid"));
    assert_eq!(percentile_model(&r, &t[..2]), Some("big"));
    assert_eq!(percentile_model(&r, &[]), None);
    // A tie goes to the first name in byte order, whatever the event order.
    let tie = thread(&[(0, "mid", 1, 1, 7), (1, "big", 1, 1, 7)]);
    assert_eq!(percentile_model(&r, &tie), Some("big"));
    let tie = thread(&[(0, "big", 1, 1, 7), (1, "mid", 1, 1, 7)]);
    assert_eq!(percentile_model(&r, &tie), Some("big"));
    r.model = Some("small".to_owned());
    assert_eq!(percentile_model(&r, &t), Some("small"));
}

#[test]
fn context_growth() {
    check_growth(&[1_000, 5_000, 3_000], (1_000, 3_000, 5_000, 3_000));
    check_growth(&[4_000], (4_000, 4_000, 4_000, 1_000));
    check_growth(&[], (0, 0, 0, 1_000));
    check_growth(&[3, 2], (3, 2, 3, 666));
    check_growth(&[0, 10], (0, 10, 10, u32::MAX));
    check_growth(&[1, u64::MAX], (1, u64::MAX, u64::MAX, u32::MAX));
    check_growth(&[u64::MAX, 0], (u64::MAX, 0, u64::MAX, 0));
}

#[test]
fn tips_follow_the_findings_in_a_fixed_order() {
    let none: &[Credits] = &[];
    // A normal thread on an economy model: nothing to say.
    check_tips(Ok, &normal(0, 10, "small", 1_000), none, &[]);
    check_tips(Ok, &[], none, &[]);
    check_tips(ErrorLoop, &[], none, &[PREVIEW]);
    check_tips(Failing, &normal(0, 3, "small", 1), none, &[]);
    check_tips(Ok, &looping_thread(), none, &[LOOP]);
    check_tips(ErrorLoop, &looping_thread(), none, &[LOOP, PREVIEW]);
    // Everything at once.
    let mut events = retries(0, 3, 20, "big", 150_000, 50, 2_000_000);
    events.insert(0, (-600, "big", 10_000, 50, 1_000));
    check_tips(
        ErrorLoop,
        &events,
        &whole(&[1; 10]),
        &[LOOP, PREVIEW, CONTEXT, CHEAPER, PERCENTILE],
    );
}

#[test]
fn the_loop_tip_names_the_longest_loop() {
    let f = analyse_ok(&looping_thread());
    assert_eq!(
        f.tips,
        [
            "Your thread repeated nearly the same request 6 times in a row. When an answer is not \
          what you need, change the request (add the error message, narrow the task) instead \
          of sending it again: every repeat is charged."
        ]
    );
    let events = concat(&[
        retries(0, 3, 20, "mid", 1_000, 100, 5),
        retries(1_000, 4, 20, "big", 1_000, 100, 5),
    ]);
    assert!(analyse_ok(&events).tips[0].contains(" 4 times "));
}

#[test]
fn the_context_tip_needs_a_large_or_much_grown_context() {
    let none: &[Credits] = &[];
    let inputs =
        |first: u64, last: u64| [(0, "small", first, 500, 1), (600, "small", last, 500, 1)];
    check_tips(Ok, &inputs(90_000, 100_000), none, &[CONTEXT]);
    check_tips(Ok, &inputs(90_000, 99_999), none, &[]);
    // Grown fourfold to at least 20,000 tokens.
    check_tips(Ok, &inputs(5_000, 20_000), none, &[CONTEXT]);
    check_tips(Ok, &inputs(5_001, 20_000), none, &[]);
    check_tips(Ok, &inputs(4_999, 19_999), none, &[]);
    // Large once but small at the end: the last request is what a fresh thread would save.
    check_tips(
        Ok,
        &[(0, "small", 500_000, 500, 1), (600, "small", 1_000, 500, 1)],
        none,
        &[],
    );
    let f = analyse_ok(&inputs(5_000, 20_000));
    assert_eq!(
        f.tips,
        [
            "The context grew from 5000 to 20000 input tokens per request. Start a fresh thread \
          with a short summary of what matters: every request pays for the whole context \
          again."
        ]
    );
}

#[test]
fn the_cheaper_model_tip_needs_an_expensive_tier_and_short_answers() {
    let none: &[Credits] = &[];
    let answers = |model: &'static str, output: u64| normal_with_output(model, output);
    check_tips(Ok, &answers("big", 299), none, &[CHEAPER]);
    check_tips(Ok, &answers("mid", 100), none, &[CHEAPER]);
    check_tips(Ok, &answers("big", 300), none, &[]);
    check_tips(Ok, &answers("small", 10), none, &[]);
    let f = analyse_ok(&answers("big", 120));
    assert_eq!(
        f.tips,
        [
            "Answers in this thread were short (about 120 output tokens on average) but came \
          from big, a premium model. A cheaper model usually handles small tasks like these \
          for a fraction of the cost."
        ]
    );
    // Economy events do not dilute the average; the costliest expensive model is named.
    let mixed = [
        (0, "small", 1_000, 5_000, 1),
        (600, "mid", 2_000, 100, 50),
        (1_200, "big", 3_000, 200, 40),
    ];
    let f = analyse_ok(&mixed);
    assert!(
        f.tips[0].contains("about 150 output tokens"),
        "{:?}",
        f.tips
    );
    assert!(
        f.tips[0].contains("from mid, a standard model"),
        "{:?}",
        f.tips
    );
}

fn normal_with_output(model: &'static str, output: u64) -> Vec<Ev> {
    normal(0, 5, model, 1_000)
        .into_iter()
        .map(|(s, m, i, _, c)| (s, m, i, output, c))
        .collect()
}

#[test]
fn the_percentile_tip_from_ninety() {
    // A thread of 9 credits among peers 1..=10: 90.0; of 8.999999: 80.0.
    let peers = whole(&(1..=10).collect::<Vec<_>>());
    let at = |micro: i64| [(0, "small", 1_000, 500, micro)];
    check_tips(Ok, &at(9_000_000), &peers, &[PERCENTILE]);
    check_tips(Ok, &at(8_999_999), &peers, &[]);
    let f = analyse(
        &report(Ok),
        &thread(&at(9_000_000)),
        &HashSet::new(),
        &peers,
    );
    assert_eq!(
        f.tips,
        ["This thread cost as much as or more than 90% of similar threads in the last 30 days."]
    );
    let thirty = whole(&(1..=30).collect::<Vec<_>>());
    let f = analyse(
        &report(Ok),
        &thread(&at(28_000_000)),
        &HashSet::new(),
        &thirty,
    );
    assert!(f.tips[0].contains(" 93.3% "), "{:?}", f.tips);
}

#[test]
fn extreme_values_saturate_instead_of_panicking() {
    let events = retries(0, 4, 0, "big", u64::MAX, u64::MAX, i64::MAX);
    let f = analyse(
        &report(ErrorLoop),
        &thread(&events),
        &HashSet::new(),
        &whole(&[1; 10]),
    );
    assert_eq!(f.thread_credits, Credits::MAX);
    assert_eq!(f.suggested_refund, Credits::MAX);
    assert_eq!(f.retry_loop_events, 3);
    assert_eq!(f.cost_percentile, Some(100.0));
}

#[test]
fn findings_round_trip_through_json() {
    let peers = whole(&(1..=30).collect::<Vec<_>>());
    let f = analyse(
        &report(ErrorLoop),
        &thread(&looping_thread()),
        &credited(&[6]),
        &peers,
    );
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(serde_json::from_str::<Findings>(&json).unwrap(), f);
    let r = report(Failing);
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(
        serde_json::from_str::<credits_review::Report>(&json).unwrap(),
        r
    );
}
