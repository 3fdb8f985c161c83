//! Random histories of calls and clock jumps (SPEC 11). After every step: conservation,
//! no negative bucket or lot, replay equals state; a retried key changes nothing, at once
//! or later in the history (a retry step sends an earlier call again); and
//! advancing in one jump equals advancing in many small steps, or in bounded batches.

use chrono::Duration;
use credits_core::testing::{Genesis, Journal, Outcome, Step, genesis, step};
use proptest::prelude::*;

/// Runs a history; `split` cuts every clock jump into that many pieces.
fn run(g: &Genesis, steps: &[Step], split: i64) -> Result<Journal, TestCaseError> {
    run_stepped(g, steps, split, None)
}

/// [`run`], applying what falls due at most `max` records at a time when `max` is set.
fn run_stepped(
    g: &Genesis,
    steps: &[Step],
    split: i64,
    max: Option<usize>,
) -> Result<Journal, TestCaseError> {
    let mut j = g.journal();
    j.check_invariants().map_err(TestCaseError::fail)?;
    for (n, s) in steps.iter().enumerate() {
        match s.op(&j, n) {
            None => {
                // A retry with nothing sent yet.
                let Step::Advance { seconds } = *s else {
                    continue;
                };
                let piece = seconds / split;
                for i in 1..=split {
                    let t = if i == split {
                        j.wallet.now + Duration::seconds(seconds - piece * (split - 1))
                    } else {
                        j.wallet.now + Duration::seconds(piece)
                    };
                    match max {
                        Some(max) => j.advance_in_steps(t, max),
                        None => {
                            j.advance_to(t);
                        }
                    }
                    j.check_invariants().map_err(TestCaseError::fail)?;
                }
            }
            Some(op) => {
                let now = j.wallet.now;
                let before = j.entries.len();
                let result = j.run(now, &op);
                match &result {
                    Ok(Outcome::Applied(e)) => {
                        prop_assert_eq!(j.entries.len(), before + 1);
                        prop_assert_eq!(e.seq, before as u64);
                        // Retrying the same call with its key is answered from the record.
                        if op.key().is_some() {
                            let state = j.wallet.clone();
                            let again = j
                                .run(now, &op)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(again, Outcome::Replayed(e.clone()));
                            prop_assert_eq!(&j.wallet, &state);
                            prop_assert_eq!(j.entries.len(), before + 1);
                        }
                    }
                    Ok(Outcome::Replayed(_)) | Err(_) => prop_assert_eq!(
                        j.entries.len(),
                        before,
                        "a refused call or a replay records nothing"
                    ),
                }
            }
        }
        j.check_invariants().map_err(TestCaseError::fail)?;
    }
    Ok(j)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(g in genesis(), steps in prop::collection::vec(step(), 1..60)) {
        run(&g, &steps, 1)?;
    }

    #[test]
    fn one_jump_equals_many_small_steps(g in genesis(), steps in prop::collection::vec(step(), 1..40), split in 2i64..7) {
        let one = run(&g, &steps, 1)?;
        let many = run(&g, &steps, split)?;
        prop_assert_eq!(&one.wallet, &many.wallet);
        prop_assert_eq!(&one.entries, &many.entries);
    }

    #[test]
    fn advancing_in_bounded_steps_equals_one_advance(g in genesis(), steps in prop::collection::vec(step(), 1..40), max in 1usize..4) {
        let one = run(&g, &steps, 1)?;
        let stepped = run_stepped(&g, &steps, 1, Some(max))?;
        prop_assert_eq!(&one.wallet, &stepped.wallet);
        prop_assert_eq!(&one.entries, &stepped.entries);
    }
}

/// The generator must reach every path, or the properties above prove little: each kind of
/// call succeeds, is replayed and is refused somewhere, and every kind of due event happens.
#[test]
fn histories_exercise_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::<String>::new();
    for _ in 0..300 {
        let g = genesis().new_tree(&mut runner).unwrap().current();
        let steps = prop::collection::vec(step(), 1..60)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut j = g.journal();
        for (n, s) in steps.iter().enumerate() {
            let Some(op) = s.op(&j, n) else {
                let Step::Advance { seconds } = *s else {
                    continue;
                };
                let t = j.wallet.now + Duration::seconds(seconds);
                seen.extend(
                    j.advance_to(t)
                        .iter()
                        .map(|e| format!("due {:?}", e.cause())),
                );
                continue;
            };
            let name = format!("{op:?}").split('(').next().unwrap().to_owned();
            let outcome = match j.run(j.wallet.now, &op) {
                Ok(Outcome::Applied(_)) => "ok".to_owned(),
                Ok(Outcome::Replayed(_)) => "replay".to_owned(),
                Err(e) => format!("{e:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            };
            seen.insert(format!("{name} {outcome}"));
        }
    }
    let expected = [
        "Usage ok",
        "Usage replay",
        "Reserve replay",
        "Grant replay",
        "Usage IdempotencyConflict",
        "Usage InsufficientCredits",
        "Usage MemberLimitExceeded",
        "Usage ModelNotAllowed",
        "Reserve ok",
        "Reserve InvalidInput",
        "Reserve InsufficientCredits",
        "Reserve MemberLimitExceeded",
        "Settle ok",
        "Settle replay",
        "Settle IdempotencyConflict",
        "Settle ReservationNotActive",
        "Settle ModelNotAllowed",
        "Release ok",
        "Release replay",
        "Release ReservationNotActive",
        "Grant ok",
        "Grant InvalidInput",
        "ChangePlan ok",
        "SetTimezone ok",
        "due DailyReset",
        "due Renewal",
        "due Expiry",
        "due Release",
    ];
    let missing: Vec<_> = expected.iter().filter(|e| !seen.contains(**e)).collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
}
