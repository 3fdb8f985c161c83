//! Properties over random threads: the refund is bounded by what the user paid and has not
//! been credited for, credited events never count, loops are a subset of the thread, the
//! analysis is deterministic, and nothing panics on empty threads or extreme values.

use std::collections::HashSet;

use credits_core::{Credits, UsageId, UsageRecord};
use credits_review::{PreviewStatus, analyse, percentile_of};
use proptest::prelude::*;
use proptest::sample::select;

use crate::helpers::{record, report};

/// One generated event: seconds since the previous one, model, tokens, cost, the written-off
/// part of the cost in %, and whether an earlier review already credited it.
#[derive(Clone, Debug)]
struct Gen {
    gap: i64,
    model: &'static str,
    input: u64,
    output: u64,
    cost: i64,
    uncollected_percent: u8,
    credited: bool,
}

const MODELS: [&str; 3] = ["big", "mid", "small"];

/// A single event (a step of work) of any shape.
fn event() -> impl Strategy<Value = Gen> {
    (
        prop_oneof![Just(0i64), 0..1_000i64, Just(3_600)],
        select(&MODELS[..]),
        prop_oneof![Just(0u64), 0..200_000u64],
        prop_oneof![Just(0u64), 0..3_000u64],
        0..=5_000_000i64,
        prop_oneof![3 => Just(0u8), 1 => 0..=100u8],
        any::<bool>(),
    )
        .prop_map(
            |(gap, model, input, output, cost, uncollected_percent, credited)| Gen {
                gap,
                model,
                input,
                output,
                cost,
                uncollected_percent,
                credited,
            },
        )
}

/// How a repeat differs from the event before it: gap, token changes in ‰ (±60, so some
/// fall just outside the ±50 ‰ of a near-identical request), sometimes another model.
type Repeat = (i64, i64, i64, Option<&'static str>, i64, bool);

fn repeat() -> impl Strategy<Value = Repeat> {
    (
        prop_oneof![Just(0i64), Just(20), 118..=122i64, 0..600i64],
        prop_oneof![Just(0i64), -60..=60i64],
        prop_oneof![Just(0i64), -60..=60i64],
        prop_oneof![6 => Just(None), 1 => select(&MODELS[..]).prop_map(Some)],
        0..=5_000_000i64,
        any::<bool>(),
    )
}

/// A thread: steps of work, each followed by 0–6 repeats of itself — retry loops, runs too
/// short to count, and near misses on time, size and model.
fn events() -> impl Strategy<Value = Vec<Gen>> {
    prop::collection::vec((event(), prop::collection::vec(repeat(), 0..7)), 0..8).prop_map(
        |segments| {
            let mut gens = Vec::new();
            for (first, repeats) in segments {
                let mut prev = first.clone();
                gens.push(first);
                for (gap, input_permille, output_permille, model, cost, credited) in repeats {
                    let scale = |n: u64, permille: i64| {
                        let delta = i128::from(n) * i128::from(permille) / 1000;
                        (i128::from(n) + delta).max(0) as u64
                    };
                    let next = Gen {
                        gap,
                        model: model.unwrap_or(prev.model),
                        input: scale(prev.input, input_permille),
                        output: scale(prev.output, output_permille),
                        cost,
                        uncollected_percent: 0,
                        credited,
                    };
                    gens.push(next.clone());
                    prev = next;
                }
            }
            gens
        },
    )
}

/// Anything the types allow: negative gaps, any token count, costs up to `i64::MAX`.
fn extreme_event() -> impl Strategy<Value = Gen> {
    (
        prop_oneof![any::<i32>().prop_map(i64::from), Just(0i64)],
        select(&MODELS[..]),
        prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)],
        prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)],
        prop_oneof![0..=i64::MAX, Just(i64::MAX), Just(0)],
        0..=100u8,
        any::<bool>(),
    )
        .prop_map(
            |(gap, model, input, output, cost, uncollected_percent, credited)| Gen {
                gap,
                model,
                input,
                output,
                cost,
                uncollected_percent,
                credited,
            },
        )
}

fn status() -> impl Strategy<Value = PreviewStatus> {
    select(vec![
        PreviewStatus::Ok,
        PreviewStatus::Failing,
        PreviewStatus::ErrorLoop,
        PreviewStatus::Unknown,
    ])
}

fn peers() -> impl Strategy<Value = Vec<Credits>> {
    prop::collection::vec((0..=50_000_000i64).prop_map(Credits::from_micro), 0..30)
}

fn build(gens: &[Gen]) -> (Vec<UsageRecord>, HashSet<UsageId>) {
    let mut seconds = 0i64;
    let mut thread = Vec::with_capacity(gens.len());
    let mut credited = HashSet::new();
    for (i, g) in gens.iter().enumerate() {
        seconds += g.gap;
        let mut r = record(i, seconds, g.model, g.input, g.output, g.cost);
        let uncollected = i128::from(g.cost) * i128::from(g.uncollected_percent) / 100;
        r.uncollected = Credits::from_micro(uncollected as i64);
        if g.credited {
            credited.insert(r.id.clone());
        }
        thread.push(r);
    }
    (thread, credited)
}

fn paid(r: &UsageRecord) -> i128 {
    i128::from(r.cost.micro()) - i128::from(r.uncollected.micro())
}

fn cap(micro: i128) -> Credits {
    Credits::from_micro(micro.min(i128::from(i64::MAX)) as i64)
}

/// Everything that must hold for any thread.
fn check_invariants(
    status: PreviewStatus,
    thread: &[UsageRecord],
    credited: &HashSet<UsageId>,
    peers: &[Credits],
) -> Result<(), TestCaseError> {
    let f = analyse(&report(status), thread, credited, peers);

    // Loop events are events of the thread, in order, never a loop's first try.
    let n = thread.len();
    prop_assert_eq!(f.events as usize, n);
    prop_assert_eq!(f.retry_loop_events as usize, f.retry_loop_event_ids.len());
    prop_assert!(f.retry_loop_event_ids.len() <= n.saturating_sub(1));
    let positions: Vec<usize> = f
        .retry_loop_event_ids
        .iter()
        .map(|id| {
            thread
                .iter()
                .position(|r| &r.id == id)
                .expect("a thread event")
        })
        .collect();
    prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
    prop_assert!(!positions.contains(&0));

    // The refund: at least the uncredited loop events, at most the uncredited paid cost.
    let uncredited = |r: &&UsageRecord| !credited.contains(&r.id);
    let uncredited_cost: i128 = thread.iter().filter(uncredited).map(paid).sum();
    let loop_cost: i128 = positions
        .iter()
        .map(|&i| &thread[i])
        .filter(uncredited)
        .map(paid)
        .sum();
    prop_assert!(f.suggested_refund >= Credits::ZERO);
    prop_assert!(f.suggested_refund <= cap(uncredited_cost));
    prop_assert!(f.suggested_refund >= cap(loop_cost));
    if matches!(status, PreviewStatus::Ok | PreviewStatus::Unknown) {
        prop_assert_eq!(f.suggested_refund, cap(loop_cost));
    }
    // The documented rule (docs/REVIEWS.md), computed here from the loop events found: the
    // loop events in full, plus a share of the last 10 events' other paid cost (half in an
    // error loop, a quarter when failing), to the nearest µcr, at most the uncredited cost.
    let trailing: i128 = (n.saturating_sub(10)..n)
        .filter(|i| !positions.contains(i))
        .map(|i| &thread[i])
        .filter(uncredited)
        .map(paid)
        .sum();
    let permille: i128 = match status {
        PreviewStatus::ErrorLoop => 500,
        PreviewStatus::Failing => 250,
        PreviewStatus::Ok | PreviewStatus::Unknown => 0,
    };
    let rule = (loop_cost + (trailing * permille + 500) / 1000).min(uncredited_cost);
    prop_assert_eq!(f.suggested_refund, cap(rule));

    // Totals and the percentile.
    let total: i128 = thread.iter().map(|r| i128::from(r.cost.micro())).sum();
    prop_assert_eq!(f.thread_credits, cap(total));
    prop_assert_eq!(f.cost_percentile.is_some(), peers.len() >= 10);
    if let Some(p) = f.cost_percentile {
        prop_assert!((0.0..=100.0).contains(&p));
    }

    // Deterministic, whatever order a fresh set iterates in.
    let credited_again: HashSet<UsageId> = credited.iter().cloned().collect();
    prop_assert_eq!(
        &analyse(&report(status), thread, &credited_again, peers),
        &f
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_on_random_threads(
        gens in events(),
        status in status(),
        peers in peers(),
    ) {
        let (thread, credited) = build(&gens);
        check_invariants(status, &thread, &credited, &peers)?;
    }

    #[test]
    fn invariants_hold_on_extreme_threads(
        gens in prop::collection::vec(extreme_event(), 0..20),
        status in status(),
        peers in prop::collection::vec(any::<i64>().prop_map(Credits::from_micro), 0..20),
    ) {
        let (thread, credited) = build(&gens);
        check_invariants(status, &thread, &credited, &peers)?;
    }

    #[test]
    fn credited_events_never_count_toward_the_refund(
        gens in events(),
        status in status(),
        new_costs in prop::collection::vec(0..=5_000_000i64, 60),
    ) {
        let (mut thread, credited) = build(&gens);
        let before = analyse(&report(status), &thread, &credited, &[]);
        for (r, cost) in thread.iter_mut().zip(new_costs) {
            if credited.contains(&r.id) {
                r.cost = Credits::from_micro(cost);
                r.uncollected = Credits::ZERO;
            }
        }
        let after = analyse(&report(status), &thread, &credited, &[]);
        prop_assert_eq!(after.suggested_refund, before.suggested_refund);
        prop_assert_eq!(after.retry_loop_event_ids, before.retry_loop_event_ids);
    }

    #[test]
    fn crediting_more_never_raises_the_refund(
        gens in events(),
        status in status(),
        extra in prop::collection::vec(any::<bool>(), 60),
    ) {
        let (thread, credited) = build(&gens);
        let mut more = credited.clone();
        more.extend(thread.iter().zip(extra).filter(|(_, e)| *e).map(|(r, _)| r.id.clone()));
        let less_credited = analyse(&report(status), &thread, &credited, &[]);
        let more_credited = analyse(&report(status), &thread, &more, &[]);
        prop_assert!(more_credited.suggested_refund <= less_credited.suggested_refund);
    }

    #[test]
    fn the_refund_follows_the_preview_status(
        gens in events(),
    ) {
        // OK = UNKNOWN ≤ FAILING ≤ ERROR_LOOP.
        let (thread, credited) = build(&gens);
        let refund = |s| analyse(&report(s), &thread, &credited, &[]).suggested_refund;
        prop_assert_eq!(refund(PreviewStatus::Ok), refund(PreviewStatus::Unknown));
        prop_assert!(refund(PreviewStatus::Ok) <= refund(PreviewStatus::Failing));
        prop_assert!(refund(PreviewStatus::Failing) <= refund(PreviewStatus::ErrorLoop));
    }

    #[test]
    fn the_percentile_rises_with_the_total(
        peers in prop::collection::vec(any::<i64>().prop_map(Credits::from_micro), 0..40),
        a in any::<i64>(),
        b in any::<i64>(),
    ) {
        let (low, high) = (Credits::from_micro(a.min(b)), Credits::from_micro(a.max(b)));
        let (p_low, p_high) = (percentile_of(low, &peers), percentile_of(high, &peers));
        prop_assert_eq!(p_low.is_some(), peers.len() >= 10);
        if let (Some(l), Some(h)) = (p_low, p_high) {
            prop_assert!(l <= h);
            prop_assert!((0.0..=100.0).contains(&l) && (0.0..=100.0).contains(&h));
        }
        if let Some(max) = peers.iter().max() {
            prop_assert_eq!(percentile_of(*max, &peers), (peers.len() >= 10).then_some(100.0));
        }
    }
}
