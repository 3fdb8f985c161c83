//! Fuzzing the descriptor validation without a nightly toolchain (issue 10, item 4):
//! proptest builds arbitrary descriptors — names of arbitrary bytes (invalid UTF-8, control
//! characters, whitespace, `@`, empty, null, over-long), model lists (empty, too many, null,
//! duplicated ids, negative prices), a missing pricing function, wrong ABI versions — and
//! feeds them to `read_descriptor`. It must never panic, must refuse with a message exactly
//! the descriptors a reference check refuses, and must copy what it accepts unchanged.
//!
//! `FUZZ_CASES=N cargo test -p credits-pricing --lib fuzz -- --nocapture` runs N cases.

use std::marker::PhantomData;

use credits_plugin_abi::{ABI_VERSION, ModelDescriptor, PluginDescriptor, Status, StrRef};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{MAX_DISPLAY_NAME_BYTES, MAX_MODELS_PER_TIER, MAX_NAME_BYTES, read_descriptor};

const DEFAULT_CASES: u32 = 10_000;

/// A string field as generated: its bytes, or a null pointer, or a length claimed past the
/// bound (never read, so the buffer may be shorter).
#[derive(Clone, Debug)]
enum Field {
    Bytes(Vec<u8>),
    Null,
    TooLong(usize),
}

#[derive(Clone, Debug)]
struct GenModel {
    id: Field,
    display_name: Field,
    prices: [i64; 3],
}

#[derive(Clone, Debug)]
struct GenDescriptor {
    abi_version: u32,
    tier: Field,
    version: Field,
    models: Vec<GenModel>,
    /// Overrides the model count and pointer: `Some(n)` with a null list, or a count past the
    /// bound (the list is never read).
    bad_list: Option<(usize, bool)>,
    has_price: bool,
}

unsafe extern "C" fn price(
    _model: StrRef<'_>,
    _input: i64,
    _cached: i64,
    _output: i64,
    _cost: *mut i64,
) -> Status {
    Status::OK
}

fn field(max: usize) -> impl Strategy<Value = Field> {
    let text = prop_oneof![
        24 => "[a-z0-9][a-z0-9._-]{0,12}".prop_map(String::into_bytes),
        2 => "\\PC{0,20}".prop_map(String::into_bytes),
        1 => "[a-z]{1,4}[ \t\n@\u{7f}\u{0}\u{2028}\u{a0}][a-z]{0,4}".prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..24),
        1 => (max - 2..max + 3).prop_map(|n| vec![b'a'; n]),
    ];
    prop_oneof![
        40 => text.prop_map(Field::Bytes),
        1 => Just(Field::Null),
        1 => (max + 1..usize::MAX).prop_map(Field::TooLong),
    ]
}

fn model(ids: &'static [&'static str]) -> impl Strategy<Value = GenModel> {
    let id = prop_oneof![
        3 => proptest::sample::select(ids).prop_map(|s| Field::Bytes(s.as_bytes().to_vec())),
        1 => field(MAX_NAME_BYTES),
    ];
    let price = prop_oneof![40 => 0i64..10_000_000_000, 1 => any::<i64>(), 1 => Just(-1i64)];
    (
        id,
        field(MAX_DISPLAY_NAME_BYTES),
        [price.clone(), price.clone(), price],
    )
        .prop_map(|(id, display_name, prices)| GenModel {
            id,
            display_name,
            prices,
        })
}

fn descriptor() -> impl Strategy<Value = GenDescriptor> {
    const IDS: &[&str] = &["std-chat", "std-code", "economy", "x"];
    (
        prop_oneof![8 => Just(ABI_VERSION), 1 => any::<u32>()],
        field(MAX_NAME_BYTES),
        field(MAX_NAME_BYTES),
        proptest::collection::vec(model(IDS), 0..6),
        prop_oneof![
            10 => Just(None),
            1 => (0usize..4).prop_map(|n| Some((n, true))),
            1 => (MAX_MODELS_PER_TIER + 1..usize::MAX).prop_map(|n| Some((n, false))),
        ],
        prop_oneof![10 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            |(abi_version, tier, version, models, bad_list, has_price)| GenDescriptor {
                abi_version,
                tier,
                version,
                models,
                bad_list,
                has_price,
            },
        )
}

fn str_ref(f: &Field) -> StrRef<'static> {
    // The descriptor only lives for one `read_descriptor` call, during which every buffer
    // is alive; the `'static` the ABI type claims is the library's promise being simulated.
    match f {
        Field::Bytes(b) => StrRef {
            ptr: if b.is_empty() {
                std::ptr::NonNull::dangling().as_ptr()
            } else {
                b.as_ptr()
            },
            len: b.len(),
            _borrow: PhantomData,
        },
        Field::Null => StrRef {
            ptr: std::ptr::null(),
            len: 3,
            _borrow: PhantomData,
        },
        Field::TooLong(n) => StrRef {
            ptr: b"never read".as_ptr(),
            len: *n,
            _borrow: PhantomData,
        },
    }
}

/// The reference: what a field must be, as text, or `None` if it must be refused.
fn valid_text(f: &Field, max: usize, name: bool) -> Option<String> {
    let Field::Bytes(b) = f else { return None };
    let s = std::str::from_utf8(b).ok()?;
    let refused = s.is_empty()
        || s.len() > max
        || s.chars().any(char::is_control)
        || (name && s.chars().any(char::is_whitespace));
    (!refused).then(|| s.to_owned())
}

/// A model as the host must copy it: id, display name, prices.
type Model = (String, String, [i64; 3]);

fn expected(d: &GenDescriptor) -> Option<(String, String, Vec<Model>)> {
    if d.abi_version != ABI_VERSION || d.bad_list.is_some() || !d.has_price {
        return None;
    }
    let tier = valid_text(&d.tier, MAX_NAME_BYTES, true).filter(|t| !t.contains('@'))?;
    let version = valid_text(&d.version, MAX_NAME_BYTES, true)?;
    if d.models.is_empty() {
        return None;
    }
    let mut models = Vec::new();
    for m in &d.models {
        let id = valid_text(&m.id, MAX_NAME_BYTES, true)?;
        let display = valid_text(&m.display_name, MAX_DISPLAY_NAME_BYTES, false)?;
        if m.prices.iter().any(|&p| p < 0) || models.iter().any(|(i, _, _)| *i == id) {
            return None;
        }
        models.push((id, display, m.prices));
    }
    Some((tier, version, models))
}

fn check(d: &GenDescriptor) -> Result<(), TestCaseError> {
    let models: Vec<ModelDescriptor> = d
        .models
        .iter()
        .map(|m| ModelDescriptor {
            id: str_ref(&m.id),
            display_name: str_ref(&m.display_name),
            input_per_million_micro_credits: m.prices[0],
            cached_input_per_million_micro_credits: m.prices[1],
            output_per_million_micro_credits: m.prices[2],
        })
        .collect();
    let (list, count) = match d.bad_list {
        Some((n, true)) => (std::ptr::null(), n),
        Some((n, false)) => (models.as_ptr(), n),
        None => (models.as_ptr(), models.len()),
    };
    let raw = PluginDescriptor {
        abi_version: d.abi_version,
        tier: str_ref(&d.tier),
        plugin_version: str_ref(&d.version),
        models: list,
        model_count: count,
        price: d.has_price.then_some(price as credits_plugin_abi::PriceFn),
    };
    let got = read_descriptor(&raw, "fuzz.so".into());
    match (got, expected(d)) {
        (Ok((info, loaded, _)), Some((tier, version, want))) => {
            prop_assert_eq!(info.tier, tier);
            prop_assert_eq!(info.plugin_version, version);
            let loaded: Vec<_> = loaded
                .into_iter()
                .map(|m| {
                    let p = m.prices;
                    (
                        m.id,
                        m.display_name,
                        [
                            p.input_per_million_micro_credits,
                            p.cached_input_per_million_micro_credits,
                            p.output_per_million_micro_credits,
                        ],
                    )
                })
                .collect();
            prop_assert_eq!(loaded, want);
        }
        (Err(e), None) => {
            prop_assert!(!e.to_string().trim().is_empty(), "a refusal says why");
        }
        (Ok(_), None) => prop_assert!(false, "accepted an invalid descriptor"),
        (Err(e), Some(_)) => prop_assert!(false, "refused a valid descriptor: {e}"),
    }
    Ok(())
}

#[test]
fn fuzz_plugin_descriptors() {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("FUZZ_CASES must be a number"))
        .unwrap_or(DEFAULT_CASES);
    let executions = std::sync::atomic::AtomicU64::new(0);
    let accepted = std::sync::atomic::AtomicU64::new(0);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
    .run(&descriptor(), |d| {
        executions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if expected(&d).is_some() {
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        check(&d)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "fuzz plugin descriptors: {} executions, {} valid",
        executions.into_inner(),
        accepted.into_inner()
    );
}
