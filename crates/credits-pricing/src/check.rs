//! `creditd plugins check FILE`: load one plugin file on its own, validate it as the
//! registry would, and describe it (tier, version, models and prices, a sample quote per
//! model). It owns that report's wording and must never touch the running registry.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{PricingError, RefusedPlugin};
use crate::plugin::LoadedTier;
use crate::registry::{is_tier_file_name, model_infos};
use crate::{ModelInfo, TierInfo, Usage};

/// A typical agentic coding turn: a large, mostly cached context and a short answer.
const SAMPLE_USAGE: Usage = Usage {
    input_tokens: 100_000,
    cached_input_tokens: 60_000,
    output_tokens: 2_000,
};

/// What [`check_plugin`] found in a plugin that loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub file: PathBuf,
    pub tier: TierInfo,
    pub abi_version: u32,
    pub models: Vec<ModelInfo>,
    pub sample_usage: Usage,
    /// One quote of `sample_usage` per model, in model order.
    pub sample_quotes: Vec<SampleQuote>,
    /// Whether a directory scan would load this file at all (see
    /// [`crate::is_tier_file_name`]).
    pub file_name_matches: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleQuote {
    pub model: String,
    pub cost_micro_credits: Result<i64, PricingError>,
}

impl CheckReport {
    /// Loads and every sample quote succeeded, and a directory scan would load it.
    pub fn is_clean(&self) -> bool {
        self.file_name_matches
            && self
                .sample_quotes
                .iter()
                .all(|q| q.cost_micro_credits.is_ok())
    }
}

/// Validates the plugin at `path` as the registry would (ABI version, entry symbol,
/// descriptor), then prices a sample usage with each model. The file itself is opened (the
/// loader hands back a library it already opened from the same path: call this once per
/// process, as `creditd plugins check` does, in a child) and closed before returning.
/// Uniqueness against other tiers is not checked: that depends on the directory.
pub fn check_plugin(path: &Path) -> Result<CheckReport, RefusedPlugin> {
    let refused = |reason| RefusedPlugin {
        file: path.to_owned(),
        reason,
    };
    let mut tier = LoadedTier::open_in_place(path).map_err(refused)?;
    tier.info.file = path.display().to_string();
    let sample_quotes = tier
        .models
        .iter()
        .map(|m| SampleQuote {
            model: m.id.clone(),
            cost_micro_credits: tier
                .price(&m.id, SAMPLE_USAGE)
                .map(|p| p.cost_micro_credits),
        })
        .collect();
    let file_name_matches = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_tier_file_name);
    Ok(CheckReport {
        file: path.to_owned(),
        models: model_infos(&tier).collect(),
        tier: tier.info.clone(),
        abi_version: credits_plugin_abi::ABI_VERSION,
        sample_usage: SAMPLE_USAGE,
        sample_quotes,
        file_name_matches,
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let TierInfo {
            tier,
            plugin_version,
            ..
        } = &self.tier;
        writeln!(
            f,
            "{}: tier {tier}@{plugin_version}, ABI {}, {} models",
            self.file.display(),
            self.abi_version,
            self.models.len()
        )?;
        if !self.file_name_matches {
            writeln!(
                f,
                "warning: the file name does not match {}credits_tier_<name>{}; a plugin \
                 directory scan will not load it",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            )?;
        }
        let id_width = self
            .models
            .iter()
            .map(|m| m.id.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let price_width = self
            .models
            .iter()
            .flat_map(|m| {
                let p = m.prices;
                [
                    p.input_per_million_micro_credits,
                    p.cached_input_per_million_micro_credits,
                    p.output_per_million_micro_credits,
                ]
            })
            .map(|price| price.to_string().len())
            .max()
            .unwrap_or(0)
            .max("cached input".len());
        writeln!(f, "prices in micro-credits per million tokens:")?;
        writeln!(
            f,
            "  {:id_width$}  {:>price_width$}  {:>price_width$}  {:>price_width$}  display name",
            "model", "input", "cached input", "output"
        )?;
        for m in &self.models {
            writeln!(
                f,
                "  {:id_width$}  {:>price_width$}  {:>price_width$}  {:>price_width$}  {}",
                m.id,
                m.prices.input_per_million_micro_credits,
                m.prices.cached_input_per_million_micro_credits,
                m.prices.output_per_million_micro_credits,
                m.display_name
            )?;
        }
        let Usage {
            input_tokens,
            cached_input_tokens,
            output_tokens,
        } = self.sample_usage;
        writeln!(
            f,
            "sample quote: {input_tokens} input tokens ({cached_input_tokens} cached), \
             {output_tokens} output tokens:"
        )?;
        for quote in &self.sample_quotes {
            match &quote.cost_micro_credits {
                Ok(cost) => writeln!(f, "  {:id_width$}  {cost} µcr", quote.model)?,
                // The header already names the file and tier; the reason is what is new.
                Err(PricingError::PricingFailed { failure, .. }) => {
                    writeln!(f, "  {:id_width$}  FAILED: {failure}", quote.model)?
                }
                Err(e) => writeln!(f, "  {:id_width$}  FAILED: {e}", quote.model)?,
            }
        }
        Ok(())
    }
}
