//! The `standard` pricing tier: the everyday chat, coding and vision models. It owns this
//! tier's model list and prices and must never price a model another tier lists.
//!
//! Prices are micro-credits per million tokens; at 1 credit = US$0.10, 30,000,000 µcr per
//! million tokens is US$3 per million.
#![forbid(unsafe_code)]

use credits_plugin_sdk::{Model, Tier, export_tier};

pub struct Standard;

impl Tier for Standard {
    const NAME: &'static str = "standard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const MODELS: &'static [Model] = &[
        Model {
            id: "standard-chat",
            display_name: "Standard Chat",
            input_per_million_micro_credits: 30_000_000,
            cached_input_per_million_micro_credits: 3_000_000,
            output_per_million_micro_credits: 150_000_000,
        },
        Model {
            id: "standard-code",
            display_name: "Standard Code",
            input_per_million_micro_credits: 25_000_000,
            cached_input_per_million_micro_credits: 2_500_000,
            output_per_million_micro_credits: 100_000_000,
        },
        Model {
            id: "standard-vision",
            display_name: "Standard Vision",
            input_per_million_micro_credits: 20_000_000,
            cached_input_per_million_micro_credits: 5_000_000,
            output_per_million_micro_credits: 80_000_000,
        },
    ];
}

export_tier!(Standard);
