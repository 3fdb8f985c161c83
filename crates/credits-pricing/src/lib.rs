//! The pricing host: loads the pricing-tier plugins of a directory, keeps the registry
//! model → tier, prices usages through the plugins and reloads tiers while the service runs.
//! It owns which library prices which model and keeps every library open while anything
//! still uses it; it must never let a refused or failing plugin stop the others, nor unload
//! a library a call is still inside.
//!
//! ```no_run
//! use credits_pricing::{PricingRegistry, Usage};
//!
//! let (registry, report) = PricingRegistry::open("/opt/creditd/plugins", "/var/lib/creditd/plugin-cache")?;
//! eprintln!("{report}");
//! let usage = Usage { input_tokens: 10_000, cached_input_tokens: 2_000, output_tokens: 1_000 };
//! let price = registry.price("standard-chat", usage)?;
//! println!("{} µcr by {}", price.cost_micro_credits, price.priced_by); // 396000 µcr by standard@1.2.0
//! let report = registry.reload()?; // after a deploy
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod check;
mod error;
mod plugin;
mod registry;

use std::fmt;
use std::sync::Arc;

pub use check::{CheckReport, SampleQuote, check_plugin};
pub use error::{PluginFailure, PricingError, RefusalReason, RefusedPlugin, RegistryError};
pub use plugin::{Admission, MAX_CALLS_PER_LIBRARY};
pub use registry::{PricingRegistry, Probe, Probed, ReloadReport, TierHandle, is_tier_file_name};

/// Token counts of one interaction. `input_tokens` counts all input tokens, cached ones
/// included; `cached_input_tokens` is the cached part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
}

impl Usage {
    /// Every count ≥ 0 and `cached_input_tokens ≤ input_tokens` (SPEC 2).
    pub fn check(self) -> Result<Usage, PricingError> {
        let Usage {
            input_tokens,
            cached_input_tokens,
            output_tokens,
        } = self;
        if input_tokens < 0
            || cached_input_tokens < 0
            || output_tokens < 0
            || cached_input_tokens > input_tokens
        {
            return Err(PricingError::InvalidInput {
                input_tokens,
                cached_input_tokens,
                output_tokens,
            });
        }
        Ok(self)
    }
}

/// The cost of one usage and the plugin that computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// Rounded up to the micro-credit by the plugin; never negative.
    pub cost_micro_credits: i64,
    pub priced_by: PricedBy,
}

/// `<tier>@<plugin version>`, e.g. `standard@1.2.0`, recorded with every usage event.
/// Shared, so attaching it to a price costs a reference count, not an allocation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PricedBy(Arc<PricedByParts>);

#[derive(PartialEq, Eq, Hash)]
struct PricedByParts {
    label: String,
    tier_len: usize,
}

impl PricedBy {
    pub(crate) fn new(tier: &str, plugin_version: &str) -> PricedBy {
        PricedBy(Arc::new(PricedByParts {
            label: format!("{tier}@{plugin_version}"),
            tier_len: tier.len(),
        }))
    }

    /// The whole label, `<tier>@<version>`.
    pub fn as_str(&self) -> &str {
        &self.0.label
    }

    pub fn tier(&self) -> &str {
        &self.0.label[..self.0.tier_len]
    }

    pub fn plugin_version(&self) -> &str {
        &self.0.label[self.0.tier_len + 1..]
    }
}

impl fmt::Display for PricedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PricedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A model's list prices, in micro-credits per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prices {
    pub input_per_million_micro_credits: i64,
    pub cached_input_per_million_micro_credits: i64,
    pub output_per_million_micro_credits: i64,
}

/// One model of a loaded tier, as [`PricingRegistry::models`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    pub display_name: String,
    pub tier: String,
    pub plugin_version: String,
    pub prices: Prices,
}

/// One loaded tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierInfo {
    pub tier: String,
    pub plugin_version: String,
    /// The plugin's file name in the plugin directory (or the path given to
    /// [`check_plugin`]).
    pub file: String,
    pub model_count: usize,
}

impl fmt::Display for TierInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let TierInfo {
            tier,
            plugin_version,
            file,
            model_count,
        } = self;
        write!(
            f,
            "{tier}@{plugin_version} from {file} ({model_count} models)"
        )
    }
}
