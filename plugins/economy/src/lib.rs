//! The `economy` pricing tier: small, fast models for high-volume work. It owns this tier's
//! model list and prices and must never price a model another tier lists.
//!
//! Prices are micro-credits per million tokens; at 1 credit = US$0.10 (the `credits-100`
//! bundle), 1,000,000 µcr per million tokens is US$0.10 per million.
#![forbid(unsafe_code)]

use credits_plugin_sdk::{Model, Tier, export_tier};

pub struct Economy;

impl Tier for Economy {
    const NAME: &'static str = "economy";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const MODELS: &'static [Model] = &[
        Model {
            id: "economy-mini",
            display_name: "Economy Mini",
            input_per_million_micro_credits: 1_000_000,
            cached_input_per_million_micro_credits: 250_000,
            output_per_million_micro_credits: 4_000_000,
        },
        Model {
            id: "economy-flash",
            display_name: "Economy Flash",
            input_per_million_micro_credits: 1_500_000,
            cached_input_per_million_micro_credits: 375_000,
            output_per_million_micro_credits: 6_000_000,
        },
        Model {
            id: "economy-code",
            display_name: "Economy Code",
            input_per_million_micro_credits: 2_500_000,
            cached_input_per_million_micro_credits: 625_000,
            output_per_million_micro_credits: 10_000_000,
        },
    ];
}

export_tier!(Economy);
