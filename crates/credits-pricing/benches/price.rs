//! One price call through the plugin boundary against the same pricing written inline.
//! Run with `cargo bench -p credits-pricing`; figures are in docs/BENCHMARKS.md.
//!
//! - `inline/formula`: the SDK's formula alone, no lookup (a floor, not a fair rival).
//! - `inline/registry`: what a registry with the tiers compiled in would do per call: check
//!   the usage, look the model up in a `HashMap`, apply the formula, attach a shared
//!   `priced_by`. This is "the same pricing written inline".
//! - `plugin/registry`: `PricingRegistry::price` on the real `standard` tier library.

#[path = "../tests/pricing/helpers.rs"]
#[allow(dead_code)] // the bench uses a few of the tests' helpers
mod helpers;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use credits_plugin_sdk::{Model, PriceError, cost_per_million};
use credits_pricing::{PricingRegistry, Usage};
use criterion::{Criterion, criterion_group, criterion_main};

const USAGE: Usage = Usage {
    input_tokens: 10_000,
    cached_input_tokens: 2_000,
    output_tokens: 1_000,
};
const MODEL: &str = "standard-chat";
const EXPECTED_MICRO_CREDITS: i64 = 396_000;

fn sdk_usage(u: Usage) -> credits_plugin_sdk::Usage {
    credits_plugin_sdk::Usage {
        input_tokens: u.input_tokens,
        cached_input_tokens: u.cached_input_tokens,
        output_tokens: u.output_tokens,
    }
}

/// The inline rival of the plugin registry: same steps, no library boundary.
struct InlineRegistry {
    /// The same map type as the registry's, so only the boundary differs.
    by_model: HashMap<String, (Model, Arc<str>), foldhash::fast::RandomState>,
}

impl InlineRegistry {
    fn new(registry: &PricingRegistry) -> InlineRegistry {
        let by_model = registry
            .models()
            .into_iter()
            .map(|m| {
                let model = Model {
                    id: "",
                    display_name: "",
                    input_per_million_micro_credits: m.prices.input_per_million_micro_credits,
                    cached_input_per_million_micro_credits: m
                        .prices
                        .cached_input_per_million_micro_credits,
                    output_per_million_micro_credits: m.prices.output_per_million_micro_credits,
                };
                let priced_by: Arc<str> = format!("{}@{}", m.tier, m.plugin_version).into();
                (m.id, (model, priced_by))
            })
            .collect();
        InlineRegistry { by_model }
    }

    fn price(&self, model: &str, usage: Usage) -> Result<(i64, Arc<str>), PriceError> {
        let usage = usage.check().map_err(|_| PriceError::InvalidInput)?;
        let (model, priced_by) = self.by_model.get(model).ok_or(PriceError::Failed)?;
        let cost = credits_plugin_sdk::standard_cost(model, sdk_usage(usage))?;
        Ok((cost, priced_by.clone()))
    }
}

fn bench(c: &mut Criterion) {
    let dirs = helpers::Dirs::with(helpers::SHIPPED);
    let (registry, report) =
        PricingRegistry::open(dirs.plugins.path(), dirs.cache.path()).expect("open registry");
    assert_eq!(report.loaded.len(), 3, "{report}");
    let inline = InlineRegistry::new(&registry);
    assert_eq!(
        registry.price(MODEL, USAGE).unwrap().cost_micro_credits,
        EXPECTED_MICRO_CREDITS
    );
    assert_eq!(
        inline.price(MODEL, USAGE).unwrap().0,
        EXPECTED_MICRO_CREDITS
    );

    let mut group = c.benchmark_group("price");
    group.bench_function("inline/formula", |b| {
        b.iter(|| {
            cost_per_million(
                sdk_usage(black_box(USAGE)),
                30_000_000,
                3_000_000,
                150_000_000,
            )
        })
    });
    group.bench_function("inline/registry", |b| {
        b.iter(|| inline.price(black_box(MODEL), black_box(USAGE)))
    });
    group.bench_function("plugin/registry", |b| {
        b.iter(|| registry.price(black_box(MODEL), black_box(USAGE)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
