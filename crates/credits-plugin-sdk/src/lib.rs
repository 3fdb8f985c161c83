//! The pricing teams' side of the plugin boundary: a [`Tier`] trait to describe a tier in
//! ordinary Rust, the [`export_tier!`] macro that turns it into the C ABI of
//! [`credits_plugin_abi`], and [`standard_cost`], the pricing formula every shipped tier
//! uses. It owns the translation from Rust to that ABI and must never let a panic, a Rust
//! type or an allocation cross it.
//!
//! # Writing a tier
//!
//! A tier is a `cdylib` crate whose library file is named `libcredits_tier_<name>.so`
//! (package `credits-tier-<name>`), the only names the host's directory scan loads:
//!
//! ```toml
//! [package]
//! name = "credits-tier-example"
//! version = "1.0.0"          # becomes the plugin version, recorded with every price
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! credits-plugin-sdk = { path = "../../crates/credits-plugin-sdk" }
//! ```
//!
//! Its `src/lib.rs` names the tier, lists its models with their prices in micro-credits
//! (1 credit = 1,000,000 µcr) per million tokens, and exports it:
//!
//! ```
//! use credits_plugin_sdk::{Model, PriceError, Tier, Usage, export_tier, standard_cost};
//!
//! pub struct Example;
//!
//! impl Tier for Example {
//!     const NAME: &'static str = "example";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const MODELS: &'static [Model] = &[
//!         Model {
//!             id: "example-small",
//!             display_name: "Example Small",
//!             input_per_million_micro_credits: 2_000_000,
//!             cached_input_per_million_micro_credits: 500_000,
//!             output_per_million_micro_credits: 8_000_000,
//!         },
//!         Model {
//!             id: "example-large",
//!             display_name: "Example Large",
//!             input_per_million_micro_credits: 20_000_000,
//!             cached_input_per_million_micro_credits: 5_000_000,
//!             output_per_million_micro_credits: 80_000_000,
//!         },
//!     ];
//!
//!     // Optional: the default is `standard_cost(model, usage)`. A tier may use another
//!     // formula; it returns the cost in micro-credits, rounded up.
//!     fn price(model: &Model, usage: Usage) -> Result<i64, PriceError> {
//!         // e.g. a minimum charge of 1 µcr per call
//!         Ok(standard_cost(model, usage)?.max(1))
//!     }
//! }
//!
//! export_tier!(Example);
//!
//! // A tier is tested as plain Rust, without loading it:
//! let small = &Example::MODELS[0];
//! let usage = Usage { input_tokens: 10_000, cached_input_tokens: 4_000, output_tokens: 500 };
//! // (6,000 × 2,000,000 + 4,000 × 500,000 + 500 × 8,000,000) / 1,000,000 = 18,000 µcr
//! assert_eq!(Example::price(small, usage), Ok(18_000));
//! ```
//!
//! `export_tier!` checks the model list when the crate compiles (non-empty ids and names,
//! unique ids, non-negative prices) and exports the two symbols the host looks for. This
//! tier does not build, for its negative price:
//!
//! ```compile_fail,E0080
//! use credits_plugin_sdk::{Model, Tier, export_tier};
//! pub struct Broken;
//! impl Tier for Broken {
//!     const NAME: &'static str = "broken";
//!     const VERSION: &'static str = "1.0.0";
//!     const MODELS: &'static [Model] = &[Model {
//!         id: "broken-model",
//!         display_name: "Broken",
//!         input_per_million_micro_credits: -1,
//!         cached_input_per_million_micro_credits: 0,
//!         output_per_million_micro_credits: 0,
//!     }];
//! }
//! export_tier!(Broken);
//! ```
//!
//! Every call from the host runs inside `catch_unwind`: a panic in `price` becomes an error
//! the host reports for that call, never an unwind across the boundary. Keep the default
//! `panic = "unwind"` for tier crates, since with `panic = "abort"` there is nothing to catch.
//!
//! Check the built file with `creditd plugins check target/release/libcredits_tier_example.so`
//! and deploy it as `docs/PLUGINS.md` describes.

use credits_plugin_abi::{ModelDescriptor, Status, StrRef};

/// The ABI this SDK exports, re-exported so the macro needs no second dependency.
pub use credits_plugin_abi as abi;

/// One model of a tier; prices are micro-credits per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Model {
    /// The id callers price by, unique across every loaded tier (e.g. `standard-chat`).
    pub id: &'static str,
    /// A name for people.
    pub display_name: &'static str,
    /// Price of a million uncached input tokens.
    pub input_per_million_micro_credits: i64,
    /// Price of a million cached input tokens; usually below the input price.
    pub cached_input_per_million_micro_credits: i64,
    /// Price of a million output tokens.
    pub output_per_million_micro_credits: i64,
}

/// Token counts of one interaction. `input_tokens` counts all input, cached included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
}

impl Usage {
    /// Every count ≥ 0 and the cached part within the input. The host checks this before
    /// calling a plugin; `export_tier!` checks again because the ABI cannot promise it.
    pub const fn is_valid(&self) -> bool {
        self.input_tokens >= 0
            && self.cached_input_tokens >= 0
            && self.output_tokens >= 0
            && self.cached_input_tokens <= self.input_tokens
    }
}

/// Why a tier could not price a usage. Each becomes an ABI [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceError {
    /// The counts break [`Usage::is_valid`].
    InvalidInput,
    /// The cost does not fit an `i64` of micro-credits.
    Overflow,
    /// Anything else the tier wants to refuse.
    Failed,
}

impl PriceError {
    const fn status(self) -> Status {
        match self {
            PriceError::InvalidInput => Status::INVALID_INPUT,
            PriceError::Overflow => Status::OVERFLOW,
            PriceError::Failed => Status::FAILED,
        }
    }
}

/// A pricing tier, exported with [`export_tier!`].
pub trait Tier {
    /// Tier name, e.g. `standard`; unique across loaded plugins.
    const NAME: &'static str;
    /// Plugin version; use `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// The models this tier prices.
    const MODELS: &'static [Model];

    /// Cost of `usage` on `model` (one of [`Tier::MODELS`]) in micro-credits, rounded up.
    /// `usage` is already valid. The default is [`standard_cost`].
    fn price(model: &Model, usage: Usage) -> Result<i64, PriceError> {
        standard_cost(model, usage)
    }
}

/// The standard formula with `model`'s prices; see [`cost_per_million`].
pub fn standard_cost(model: &Model, usage: Usage) -> Result<i64, PriceError> {
    cost_per_million(
        usage,
        model.input_per_million_micro_credits,
        model.cached_input_per_million_micro_credits,
        model.output_per_million_micro_credits,
    )
}

const TOKENS_PER_PRICE_UNIT: i128 = 1_000_000;

/// `ceil(((input − cached)·input_price + cached·cached_price + output·output_price) / 1,000,000)`
/// in i128 with one rounding, up, then checked back into an `i64` of micro-credits.
///
/// ```
/// use credits_plugin_sdk::{PriceError, Usage, cost_per_million};
/// let usage = Usage { input_tokens: 3, cached_input_tokens: 3, output_tokens: 0 };
/// // 3 × 250,000 / 1,000,000 = 0.75 µcr, rounded up to 1
/// assert_eq!(cost_per_million(usage, 1_000_000, 250_000, 4_000_000), Ok(1));
/// let huge = Usage { input_tokens: i64::MAX, cached_input_tokens: 0, output_tokens: 0 };
/// assert_eq!(cost_per_million(huge, 2_000_000, 0, 0), Err(PriceError::Overflow));
/// ```
pub fn cost_per_million(
    usage: Usage,
    input_per_million_micro_credits: i64,
    cached_input_per_million_micro_credits: i64,
    output_per_million_micro_credits: i64,
) -> Result<i64, PriceError> {
    if !usage.is_valid() {
        return Err(PriceError::InvalidInput);
    }
    let uncached = i128::from(usage.input_tokens - usage.cached_input_tokens);
    // Each product of two i64 fits an i128; only the sum of three can overflow.
    let numerator = (uncached * i128::from(input_per_million_micro_credits))
        .checked_add(
            i128::from(usage.cached_input_tokens)
                * i128::from(cached_input_per_million_micro_credits),
        )
        .and_then(|sum| {
            sum.checked_add(
                i128::from(usage.output_tokens) * i128::from(output_per_million_micro_credits),
            )
        })
        .ok_or(PriceError::Overflow)?;
    // Usual case: a numerator that fits a u64, where dividing by the constant compiles to a
    // multiplication instead of a call to the (slow) 128-bit division routine.
    if let Ok(small) = u64::try_from(numerator) {
        let cost = small.div_ceil(TOKENS_PER_PRICE_UNIT as u64);
        return i64::try_from(cost).map_err(|_| PriceError::Overflow);
    }
    // Truncating division plus one when a positive remainder is left: the ceiling, also for
    // a negative numerator (which only a negative price can produce).
    let mut cost = numerator / TOKENS_PER_PRICE_UNIT;
    if numerator % TOKENS_PER_PRICE_UNIT > 0 {
        cost += 1;
    }
    i64::try_from(cost).map_err(|_| PriceError::Overflow)
}

/// Exports a [`Tier`] from a `cdylib`: the ABI version static and the entry function of
/// [`credits_plugin_abi`], with the descriptor and model table in `static`s so nothing is
/// allocated or freed across the boundary. Use it once per library.
#[macro_export]
macro_rules! export_tier {
    ($tier:ty) => {
        // A panic in `price` is caught and reported only when it unwinds; aborting would
        // end the service that loaded the tier.
        #[cfg(panic = "abort")]
        compile_error!("a pricing tier must be built with panic = \"unwind\" (the default)");
        const _: () = {
            const MODEL_COUNT: usize = <$tier as $crate::Tier>::MODELS.len();
            static MODELS: [$crate::abi::ModelDescriptor; MODEL_COUNT] =
                $crate::__private::model_table::<MODEL_COUNT>(<$tier as $crate::Tier>::MODELS);
            static DESCRIPTOR: $crate::abi::PluginDescriptor =
                $crate::__private::descriptor::<$tier>(&MODELS);

            // The names must match `abi::ABI_VERSION_SYMBOL` and `abi::ENTRY_SYMBOL`; the
            // host's tests load real tiers, so a mismatch cannot pass unnoticed.
            // SAFETY: unmangled names can clash with another symbol of the same name; these
            // two are the plugin ABI's own, and a tier library exports one tier, once.
            #[unsafe(no_mangle)]
            pub static CREDITS_PLUGIN_ABI_VERSION: u32 = $crate::abi::ABI_VERSION;

            // SAFETY: as above.
            #[unsafe(no_mangle)]
            pub extern "C" fn credits_plugin_entry() -> *const $crate::abi::PluginDescriptor {
                &DESCRIPTOR
            }
        };
    };
}

/// Items `export_tier!` expands to; not part of the SDK's API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use credits_plugin_abi::{ABI_VERSION, PluginDescriptor};

    /// The ABI model table. Checked at compile time: at least one model, no empty id or
    /// name, no negative price, no id twice (such a list fails the tier's build). The
    /// host checks the rest when it loads the tier (characters and lengths of ids and
    /// names): run `creditd plugins check` on the built file.
    pub const fn model_table<const N: usize>(models: &'static [Model]) -> [ModelDescriptor; N] {
        assert!(N > 0, "a tier must list at least one model");
        let empty = ModelDescriptor {
            id: StrRef::new(""),
            display_name: StrRef::new(""),
            input_per_million_micro_credits: 0,
            cached_input_per_million_micro_credits: 0,
            output_per_million_micro_credits: 0,
        };
        let mut table = [empty; N];
        let mut i = 0;
        while i < N {
            let m = &models[i];
            assert!(!m.id.is_empty(), "a model id is empty");
            assert!(!m.display_name.is_empty(), "a model display name is empty");
            assert!(
                m.input_per_million_micro_credits >= 0
                    && m.cached_input_per_million_micro_credits >= 0
                    && m.output_per_million_micro_credits >= 0,
                "a model price is negative"
            );
            let mut j = 0;
            while j < i {
                assert!(
                    !bytes_eq(models[j].id.as_bytes(), m.id.as_bytes()),
                    "two models share an id"
                );
                j += 1;
            }
            table[i] = ModelDescriptor {
                id: StrRef::new(m.id),
                display_name: StrRef::new(m.display_name),
                input_per_million_micro_credits: m.input_per_million_micro_credits,
                cached_input_per_million_micro_credits: m.cached_input_per_million_micro_credits,
                output_per_million_micro_credits: m.output_per_million_micro_credits,
            };
            i += 1;
        }
        table
    }

    pub const fn descriptor<T: Tier>(models: &'static [ModelDescriptor]) -> PluginDescriptor {
        assert!(!T::NAME.is_empty(), "the tier name is empty");
        assert!(!T::VERSION.is_empty(), "the tier version is empty");
        PluginDescriptor {
            abi_version: ABI_VERSION,
            tier: StrRef::new(T::NAME),
            plugin_version: StrRef::new(T::VERSION),
            models: models.as_ptr(),
            model_count: models.len(),
            price: Some(price::<T>),
        }
    }

    const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// The exported pricing function of every SDK tier.
    ///
    /// # Safety
    /// As [`credits_plugin_abi::PriceFn`]: `model` valid for the call, `cost` writable.
    pub unsafe extern "C" fn price<T: Tier>(
        model: StrRef<'_>,
        input_tokens: i64,
        cached_input_tokens: i64,
        output_tokens: i64,
        cost_micro_credits: *mut i64,
    ) -> Status {
        let usage = Usage {
            input_tokens,
            cached_input_tokens,
            output_tokens,
        };
        // A panic must not leave an `extern "C"` function (that aborts the whole service),
        // so the tier's code runs inside `catch_unwind`. Nothing shared is left half-updated
        // by a panic here (the closure only reads), hence `AssertUnwindSafe`.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the host passes a string valid for this call (the ABI contract).
            let id = unsafe { model.as_bytes() };
            let Some(model) = T::MODELS.iter().find(|m| m.id.as_bytes() == id) else {
                return Err(Status::UNKNOWN_MODEL);
            };
            if !usage.is_valid() {
                return Err(Status::INVALID_INPUT);
            }
            T::price(model, usage).map_err(PriceError::status)
        }));
        match outcome {
            Ok(Ok(cost)) => {
                // SAFETY: the host passes a pointer valid for one write (the ABI contract).
                unsafe { cost_micro_credits.write(cost) };
                Status::OK
            }
            Ok(Err(status)) => status,
            Err(payload) => {
                // Dropping a panic payload runs arbitrary code that could panic again: it is
                // dropped inside `catch_unwind` too, and only a payload whose drop panics is
                // leaked (found by review: leaking every payload grew the service's memory
                // with each call a plugin panicked on).
                let dropped =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
                if let Err(again) = dropped {
                    std::mem::forget(again);
                }
                Status::PANICKED
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input_tokens: i64, cached_input_tokens: i64, output_tokens: i64) -> Usage {
        Usage {
            input_tokens,
            cached_input_tokens,
            output_tokens,
        }
    }

    fn check(u: Usage, prices: (i64, i64, i64), expected: Result<i64, PriceError>) {
        assert_eq!(
            cost_per_million(u, prices.0, prices.1, prices.2),
            expected,
            "{u:?} {prices:?}"
        );
    }

    #[test]
    fn cost_per_million_rounds_once_and_up() {
        check(usage(0, 0, 0), (1, 1, 1), Ok(0));
        check(usage(1, 0, 0), (1_000_000, 0, 0), Ok(1));
        check(usage(1, 0, 0), (1, 0, 0), Ok(1)); // 0.000001 µcr rounds up
        // Three parts of 0.4 µcr each: one rounding gives 2, rounding each part would give 3.
        check(usage(2, 1, 1), (400_000, 400_000, 400_000), Ok(2));
        check(
            usage(10_000, 2_000, 1_000),
            (30_000_000, 3_000_000, 150_000_000),
            Ok(396_000),
        );
        check(usage(1_000_000, 0, 0), (7, 0, 0), Ok(7));
        // Numerators past u64 take the i128 path and round the same way.
        check(usage(i64::MAX, 0, 0), (3, 0, 0), Ok(27_670_116_110_565));
        check(
            usage(i64::MAX, 0, 0),
            (999_999, 0, 0),
            Ok(9_223_362_813_482_738_953),
        );
        // A negative price (refused by `export_tier!`) still rounds up, towards zero.
        check(usage(3, 0, 0), (-500_000, 0, 0), Ok(-1));
    }

    #[test]
    fn cost_per_million_refuses_bad_counts() {
        check(usage(-1, 0, 0), (1, 1, 1), Err(PriceError::InvalidInput));
        check(usage(0, 0, -1), (1, 1, 1), Err(PriceError::InvalidInput));
        check(usage(1, 2, 0), (1, 1, 1), Err(PriceError::InvalidInput));
        check(usage(1, -1, 0), (1, 1, 1), Err(PriceError::InvalidInput));
    }

    #[test]
    fn cost_per_million_checks_overflow() {
        // The largest cost that fits, exactly: i64::MAX tokens at 1,000,000 µcr per million.
        check(usage(i64::MAX, 0, 0), (1_000_000, 0, 0), Ok(i64::MAX));
        check(
            usage(i64::MAX, 0, 0),
            (1_000_001, 0, 0),
            Err(PriceError::Overflow),
        );
        // The i128 sum itself overflows: three products near 2^126.
        check(
            usage(i64::MAX, 0, i64::MAX),
            (i64::MAX, 0, i64::MAX),
            Err(PriceError::Overflow),
        );
    }

    struct Panicky;
    impl Tier for Panicky {
        const NAME: &'static str = "panicky";
        const VERSION: &'static str = "0.0.1";
        const MODELS: &'static [Model] = &[Model {
            id: "p",
            display_name: "P",
            input_per_million_micro_credits: 1,
            cached_input_per_million_micro_credits: 1,
            output_per_million_micro_credits: 1,
        }];
        fn price(_: &Model, usage: Usage) -> Result<i64, PriceError> {
            if usage.output_tokens == 13 {
                panic!("unlucky");
            }
            Ok(usage.output_tokens)
        }
    }

    fn call(model: &str, input: i64, cached: i64, output: i64) -> (Status, i64) {
        let mut cost = -1;
        // SAFETY: `model` outlives the call and `cost` is a live local.
        let status = unsafe {
            __private::price::<Panicky>(StrRef::new(model), input, cached, output, &mut cost)
        };
        (status, cost)
    }

    #[test]
    fn exported_price_maps_outcomes_to_statuses() {
        assert_eq!(call("p", 0, 0, 5), (Status::OK, 5));
        assert_eq!(call("q", 0, 0, 5).0, Status::UNKNOWN_MODEL);
        assert_eq!(call("p", 1, 2, 5).0, Status::INVALID_INPUT);
        assert_eq!(call("p", 0, 0, 13).0, Status::PANICKED);
    }
}
