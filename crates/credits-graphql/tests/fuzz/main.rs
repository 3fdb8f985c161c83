//! Fuzzing the GraphQL input conversion without a nightly toolchain (issue 10, item 4):
//! proptest feeds arbitrary `async_graphql::Value`s — strings shaped like amounts and
//! instants, floats, huge integers, nulls, enums, lists, objects with the right keys holding
//! wrong values — to the `Credits`, `DateTime` and `Seq` scalars and to every mutation's
//! input object, and arbitrary counts to the token conversion. Each must answer with a
//! value that round-trips or a non-empty error, and never panic.
//!
//! `FUZZ_CASES=N cargo test -p credits-graphql --test fuzz -- --nocapture` runs N cases per
//! target (default below).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

use async_graphql::indexmap::IndexMap;
use async_graphql::{InputType, Name, Number, Pos, Value};
use credits_graphql::error::Code;
use credits_graphql::query::tokens;
use credits_graphql::scalars::{Credits, DateTime, MAX_SEQ, Seq};
use credits_graphql::types::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const DEFAULT_CASES: u32 = 3_000;

fn runner() -> TestRunner {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("FUZZ_CASES must be a number"))
        .unwrap_or(DEFAULT_CASES);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Every input field name of the mutations, so generated objects hit real fields.
const FIELDS: &[&str] = &[
    "walletId",
    "idempotencyKey",
    "threadId",
    "model",
    "inputTokens",
    "cachedTokens",
    "outputTokens",
    "memberId",
    "amount",
    "ttlSeconds",
    "reservationId",
    "kind",
    "reason",
    "expiresAt",
    "bundleId",
    "paymentReference",
    "id",
    "name",
    "dailyCredits",
    "subscriptionCredits",
    "interval",
    "modelTiers",
    "planId",
    "timezone",
    "adminUserIds",
    "ownerId",
    "billingAnchor",
    "taskDescription",
    "previewStatus",
    "threadLength",
    "contextSize",
    "reviewId",
    "decision",
    "note",
    "from",
    "to",
];

const ENUMS: &[&str] = &[
    "ADMIN",
    "PROMOTION",
    "COMMUNITY",
    "COMPENSATION",
    "PURCHASE",
    "MONTHLY",
    "ANNUAL",
    "OK",
    "FAILING",
    "ERROR_LOOP",
    "UNKNOWN",
    "APPROVE",
    "REJECT",
    "admin",
    "",
];

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "-?[0-9]{1,21}(\\.[0-9]{0,8})?",
        8 => "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,9})?(Z|[+-][0-2][0-9]:[0-5][0-9])",
        8 => "\\PC{0,24}",
        4 => proptest::sample::select(ENUMS).prop_map(str::to_owned),
        4 => proptest::sample::select(&["UTC", "Europe/Paris", "Mars/Olympus", ""][..]).prop_map(str::to_owned),
        1 => (0usize..3).prop_map(|k| "x".repeat([129, 4097, 70_000][k])),
    ]
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        Just(Number::from(0)),
        (-5i64..100_000).prop_map(Number::from),
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        prop_oneof![
            any::<f64>(),
            Just(0.5),
            Just(1e300),
            Just(-0.0),
            Just(9.007_199_254_740_993e15)
        ]
        .prop_filter_map("finite", Number::from_f64),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Boolean),
        3 => number().prop_map(Value::Number),
        5 => string().prop_map(Value::String),
        1 => proptest::sample::select(ENUMS)
            .prop_filter_map("a GraphQL name", |e| (!e.is_empty()).then(|| Value::Enum(Name::new(e)))),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            1 => proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            3 => object(inner),
        ]
    })
}

/// An object whose keys are mostly real input field names.
fn object(inner: impl Strategy<Value = Value> + Clone) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        9 => proptest::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
    ];
    proptest::collection::vec((key, inner), 0..10).prop_map(|fields| {
        Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (Name::new(k), v))
                .collect::<IndexMap<_, _>>(),
        )
    })
}

/// A nearly valid input object: every field name present with a plausible value, then a
/// few fields dropped or replaced with arbitrary values.
fn plausible_object() -> impl Strategy<Value = Value> {
    let plausible = |name: &str| -> BoxedStrategy<Value> {
        let s = |v: &'static str| Just(Value::String(v.to_owned())).boxed();
        match name {
            "amount" | "dailyCredits" | "subscriptionCredits" => prop_oneof![
                "[0-9]{1,4}(\\.[0-9]{1,6})?".prop_map(Value::String),
                (0i64..1000).prop_map(|n| Value::Number(n.into())),
            ]
            .boxed(),
            "inputTokens" | "cachedTokens" | "outputTokens" | "ttlSeconds" | "threadLength"
            | "contextSize" => (-2i64..5000).prop_map(|n| Value::Number(n.into())).boxed(),
            "expiresAt" | "billingAnchor" | "from" | "to" => s("2027-03-10T12:00:00Z"),
            "kind" => Just(Value::Enum(Name::new("PROMOTION"))).boxed(),
            "interval" => s("MONTHLY"),
            "previewStatus" => Just(Value::Enum(Name::new("ERROR_LOOP"))).boxed(),
            "decision" => s("APPROVE"),
            "modelTiers" | "adminUserIds" => {
                Just(Value::List(vec![Value::String("economy".into())])).boxed()
            }
            "timezone" => s("Europe/London"),
            _ => "[a-z_0-9]{1,12}".prop_map(Value::String).boxed(),
        }
    };
    let fields: Vec<BoxedStrategy<(String, Option<Value>)>> = FIELDS
        .iter()
        .map(|&f| {
            let v = prop_oneof![
                8 => plausible(f).prop_map(Some),
                1 => Just(None),
                1 => value().prop_map(Some),
            ];
            v.prop_map(move |v| (f.to_owned(), v)).boxed()
        })
        .collect();
    fields.prop_map(|fields| {
        Value::Object(
            fields
                .into_iter()
                .filter_map(|(k, v)| Some((Name::new(k), v?)))
                .collect::<IndexMap<_, _>>(),
        )
    })
}

/// Parses `v` as `T` without a panic; an error carries a message; a value round-trips.
fn check<T: InputType>(v: &Value, ok: &AtomicU64) -> Result<Option<T>, TestCaseError> {
    let parsed = catch_unwind(AssertUnwindSafe(|| T::parse(Some(v.clone()))))
        .map_err(|_| TestCaseError::fail(format!("{} panicked on {v}", T::type_name())))?;
    match parsed {
        Ok(t) => {
            ok.fetch_add(1, Ordering::Relaxed);
            let back = t.to_value();
            let again = T::parse(Some(back.clone())).map_err(|e| {
                TestCaseError::fail(format!(
                    "{} does not re-parse its own {back}: {}",
                    T::type_name(),
                    e.into_server_error(Pos::default()).message
                ))
            })?;
            prop_assert_eq!(again.to_value(), back);
            Ok(Some(t))
        }
        Err(e) => {
            let message = e.into_server_error(Pos::default()).message;
            prop_assert!(
                !message.trim().is_empty(),
                "{} refused {v} silently",
                T::type_name()
            );
            Ok(None)
        }
    }
}

fn every_input(v: &Value, ok: &AtomicU64) -> Result<(), TestCaseError> {
    check::<CreateWalletInput>(v, ok)?;
    check::<RecordUsageInput>(v, ok)?;
    check::<ReserveInput>(v, ok)?;
    check::<SettleInput>(v, ok)?;
    check::<GrantInput>(v, ok)?;
    check::<PurchaseBundleInput>(v, ok)?;
    check::<PlanInput>(v, ok)?;
    check::<CreateTeamInput>(v, ok)?;
    check::<HighUsageReportInput>(v, ok)?;
    check::<ResolveReviewInput>(v, ok)?;
    check::<UsageFilter>(v, ok)?;
    Ok(())
}

fn report(target: &str, executions: &AtomicU64, ok: &AtomicU64) {
    eprintln!(
        "fuzz graphql {target}: {} executions, {} accepted",
        executions.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn fuzz_scalars() {
    let (executions, ok) = (AtomicU64::new(0), AtomicU64::new(0));
    runner()
        .run(&prop_oneof![6 => leaf(), 1 => value()], |v| {
            executions.fetch_add(3, Ordering::Relaxed);
            if let Some(c) = check::<Credits>(&v, &ok)? {
                prop_assert!(
                    c.0.micro() >= 0,
                    "a negative amount was accepted from {}",
                    v
                );
                match &v {
                    Value::String(s) => prop_assert_eq!(Ok(c.0), credits_core::Credits::parse(s)),
                    Value::Number(n) => prop_assert_eq!(
                        Some(c.0),
                        n.as_i64()
                            .and_then(|w| credits_core::Credits::from_whole(w).ok())
                    ),
                    other => prop_assert!(false, "Credits accepted {}", other),
                }
            }
            if let Some(t) = check::<DateTime>(&v, &ok)? {
                let Value::String(s) = &v else {
                    return Err(TestCaseError::fail(format!("DateTime accepted {v}")));
                };
                // Every digit is kept (a filter bound); `micros` drops those past the
                // microsecond (an instant the service schedules).
                use chrono::SubsecRound;
                let parsed = chrono::DateTime::parse_from_rfc3339(s).map(|d| d.to_utc());
                prop_assert_eq!(Ok(t.0), parsed, "DateTime read {} as another instant", s);
                prop_assert_eq!(t.micros(), t.0.trunc_subsecs(6));
                // What it writes back, it reads again as the same instant.
                let back = <DateTime as async_graphql::ScalarType>::parse(
                    async_graphql::ScalarType::to_value(&t),
                );
                prop_assert!(
                    back.as_ref().is_ok_and(|b| *b == t),
                    "{} did not read back",
                    s
                );
            }
            if let Some(s) = check::<Seq>(&v, &ok)? {
                prop_assert!(s.0 <= MAX_SEQ);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    report("scalars", &executions, &ok);
    assert!(ok.load(Ordering::Relaxed) > 0, "some scalars are valid");
}

#[test]
fn fuzz_input_objects() {
    let (executions, ok) = (AtomicU64::new(0), AtomicU64::new(0));
    let inputs = prop_oneof![1 => value(), 2 => plausible_object()];
    runner()
        .run(&inputs, |v| {
            executions.fetch_add(11, Ordering::Relaxed);
            every_input(&v, &ok)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    report("input objects", &executions, &ok);
    assert!(ok.load(Ordering::Relaxed) > 0, "some inputs are valid");
}

#[test]
fn fuzz_token_counts() {
    let count = || prop_oneof![any::<i32>(), -3i32..100_000, Just(i32::MAX), Just(i32::MIN)];
    let executions = AtomicU64::new(0);
    runner()
        .run(
            &(count(), proptest::option::of(count()), count()),
            |(input, cached, output)| {
                executions.fetch_add(1, Ordering::Relaxed);
                let valid = input >= 0 && output >= 0 && (0..=input).contains(&cached.unwrap_or(0));
                match tokens(input, cached, output) {
                    Ok(t) => {
                        prop_assert!(valid);
                        prop_assert_eq!(
                            (t.input, t.cached, t.output),
                            (input as u64, cached.unwrap_or(0) as u64, output as u64)
                        );
                    }
                    Err(e) => {
                        prop_assert!(!valid);
                        prop_assert_eq!(e.code, Code::InvalidInput);
                        prop_assert!(!e.message.is_empty());
                    }
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "fuzz graphql token counts: {} executions",
        executions.load(Ordering::Relaxed)
    );
}
