//! Fuzzing the amount parser without a nightly toolchain (issue 10, item 4): proptest feeds
//! `Credits::parse` arbitrary bytes, arbitrary strings and strings shaped like amounts, and
//! checks it never panics, accepts exactly `-?[0-9]+(\.[0-9]{1,6})?` within range with the
//! exact value, and round-trips what it accepts through the canonical format.
//!
//! `FUZZ_CASES=N cargo test -p credits-core --test fuzz` runs N cases per target (default
//! below); `--nocapture` prints the executions.

use std::cell::Cell;

use credits_core::{AmountError, Credits};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per target by default: together about a second in debug.
const DEFAULT_CASES: u32 = 10_000;

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

/// The reference: the value of a decimal string, decided digit by digit on the text (no
/// arithmetic that could overflow), or why it is not an amount.
fn reference(s: &str) -> Result<i64, AmountError> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let is_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(int) || frac.is_some_and(|f| !is_digits(f)) {
        return Err(AmountError::Syntax);
    }
    let frac = frac.unwrap_or("");
    if frac.len() > 6 {
        return Err(AmountError::TooManyDecimals);
    }
    let int = int.trim_start_matches('0');
    // µcr as a digit string: the integer digits then the fraction padded to six.
    let micro = format!("{int}{frac:0<6}");
    let micro = micro.trim_start_matches('0');
    // i64 runs from -9223372036854775808 to 9223372036854775807 (19 digits); compare as text.
    let max = if negative {
        "9223372036854775808"
    } else {
        "9223372036854775807"
    };
    if micro.len() > max.len() || (micro.len() == max.len() && micro > max) {
        return Err(AmountError::Overflow);
    }
    let signed = format!("{}{micro}", if negative { "-" } else { "" });
    Ok(if micro.is_empty() {
        0
    } else {
        signed.parse().expect("within i64")
    })
}

fn check(s: &str, executions: &Cell<u64>) -> Result<(), TestCaseError> {
    executions.set(executions.get() + 1);
    let got = Credits::parse(s);
    prop_assert_eq!(
        got.clone().map(Credits::micro),
        reference(s),
        "input {:?}",
        s
    );
    if let Ok(c) = got {
        let text = c.to_string();
        prop_assert_eq!(Credits::parse(&text), Ok(c), "canonical form {:?}", text);
        prop_assert!(
            !text.contains('.') || !text.ends_with('0'),
            "not canonical: {text:?}"
        );
    }
    Ok(())
}

fn amount_like() -> impl Strategy<Value = String> {
    (
        proptest::option::of(prop_oneof![Just("-"), Just("+"), Just(" "), Just("--")]),
        "[0-9]{0,22}",
        proptest::option::of(prop_oneof![Just("."), Just(","), Just("..")]),
        "[0-9]{0,9}",
        proptest::option::of(prop_oneof![
            Just("e3"),
            Just(" "),
            Just("\u{0663}"), // an Arabic-Indic digit: not ASCII
            Just("\0"),
            Just("_000"),
        ]),
    )
        .prop_map(|(sign, int, dot, frac, tail)| {
            format!(
                "{}{int}{}{frac}{}",
                sign.unwrap_or(""),
                dot.unwrap_or(""),
                tail.unwrap_or("")
            )
        })
}

#[test]
fn fuzz_credits_parse() {
    let executions = Cell::new(0u64);
    let run = |name: &str, strategy: BoxedStrategy<String>| {
        runner()
            .run(&strategy, |s| check(&s, &executions))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    run(
        "bytes",
        proptest::collection::vec(any::<u8>(), 0..48)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
            .boxed(),
    );
    run("strings", "\\PC{0,40}".boxed());
    run("amount-like", amount_like().boxed());
    run(
        "edges",
        prop_oneof![
            (any::<i64>()).prop_map(|m| Credits::from_micro(m).to_string()),
            (0i64..=9_223_372_036_854).prop_map(|w| format!("{w}.775807")),
            (0i64..=9_223_372_036_854).prop_map(|w| format!("{w}.775808")),
            (0i64..=9_223_372_036_854).prop_map(|w| format!("-{w}.775809")),
        ]
        .boxed(),
    );
    let executions = executions.get();
    eprintln!("fuzz credits parse: {executions} executions");
    assert!(executions >= 4, "every target ran");
}

#[test]
fn parse_refuses_what_it_must() {
    let n = Cell::new(0);
    for (s, want) in [
        ("1.0000001", Err(AmountError::TooManyDecimals)),
        ("9223372036854.775807", Ok(i64::MAX)),
        ("9223372036854.775808", Err(AmountError::Overflow)),
        ("-9223372036854.775808", Ok(i64::MIN)),
        ("-9223372036854.775809", Err(AmountError::Overflow)),
        ("99999999999999999999999", Err(AmountError::Overflow)),
        ("", Err(AmountError::Syntax)),
        ("-", Err(AmountError::Syntax)),
        ("+1", Err(AmountError::Syntax)),
        ("1.", Err(AmountError::Syntax)),
        (".5", Err(AmountError::Syntax)),
        ("00.500000", Ok(500_000)),
    ] {
        check(s, &n).unwrap();
        assert_eq!(Credits::parse(s).map(Credits::micro), want, "{s:?}");
    }
}
