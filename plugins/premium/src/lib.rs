//! The `premium` pricing tier: the largest reasoning and long-context models. It owns this
//! tier's model list and prices and must never price a model another tier lists.
//!
//! Prices are micro-credits per million tokens; at 1 credit = US$0.10, 150,000,000 µcr per
//! million tokens is US$15 per million.
#![forbid(unsafe_code)]

use credits_plugin_sdk::{Model, Tier, export_tier};

pub struct Premium;

impl Tier for Premium {
    const NAME: &'static str = "premium";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const MODELS: &'static [Model] = &[
        Model {
            id: "premium-reasoning",
            display_name: "Premium Reasoning",
            input_per_million_micro_credits: 150_000_000,
            cached_input_per_million_micro_credits: 15_000_000,
            output_per_million_micro_credits: 750_000_000,
        },
        Model {
            id: "premium-max",
            display_name: "Premium Max",
            input_per_million_micro_credits: 100_000_000,
            cached_input_per_million_micro_credits: 10_000_000,
            output_per_million_micro_credits: 400_000_000,
        },
        Model {
            id: "premium-long-context",
            display_name: "Premium Long Context",
            input_per_million_micro_credits: 60_000_000,
            cached_input_per_million_micro_credits: 6_000_000,
            output_per_million_micro_credits: 240_000_000,
        },
        Model {
            id: "premium-agent",
            display_name: "Premium Agent",
            input_per_million_micro_credits: 50_000_000,
            cached_input_per_million_micro_credits: 5_000_000,
            output_per_million_micro_credits: 250_000_000,
        },
    ];
}

export_tier!(Premium);
