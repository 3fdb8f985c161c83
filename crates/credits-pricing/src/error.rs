//! The errors of pricing and loading: what callers (the server, `creditd plugins check`) can
//! act on. It owns their wording, which names the file or tier at fault, and must never
//! carry anything borrowed from a plugin library (it may be unloaded before the error is read).

use std::path::PathBuf;

use credits_plugin_abi::Status;

/// Why a usage could not be priced. The server maps these to `UNKNOWN_MODEL`,
/// `PRICING_FAILED` and `INVALID_INPUT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// No loaded tier lists the model.
    #[error("unknown model {model:?}: no loaded pricing tier lists it")]
    UnknownModel { model: String },
    /// The tier's plugin returned an error status, panicked, or returned a negative or
    /// overflowing cost.
    #[error("pricing model {model:?} failed in {priced_by} (plugin file {file}): {failure}")]
    PricingFailed {
        model: String,
        /// `<tier>@<version>` of the plugin that failed.
        priced_by: String,
        /// The plugin's file name in the plugin directory.
        file: String,
        failure: PluginFailure,
    },
    /// A token count is negative or the cached part exceeds the input.
    #[error(
        "invalid usage: every token count must be >= 0 and cached <= input \
         (input {input_tokens}, cached {cached_input_tokens}, output {output_tokens})"
    )]
    InvalidInput {
        input_tokens: i64,
        cached_input_tokens: i64,
        output_tokens: i64,
    },
}

/// How a plugin failed a pricing call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    #[error("the plugin panicked (caught at the plugin boundary)")]
    Panicked,
    #[error("the cost overflows i64 micro-credits")]
    Overflow,
    #[error("the plugin returned a negative cost ({cost_micro_credits} µcr)")]
    NegativeCost { cost_micro_credits: i64 },
    #[error("the plugin returned status {code}: {}", Status(*.code).describe())]
    ErrorStatus { code: i32 },
    /// A call into the tier did not return in time: the tier is disabled until the next
    /// reload (its stuck call keeps one thread).
    #[error("the plugin did not answer in time; its tier is disabled until pricing is reloaded")]
    Stalled,
}

impl PluginFailure {
    pub(crate) fn from_status(status: Status) -> PluginFailure {
        match status {
            Status::PANICKED => PluginFailure::Panicked,
            Status::OVERFLOW => PluginFailure::Overflow,
            other => PluginFailure::ErrorStatus { code: other.0 },
        }
    }
}

/// A plugin file that was not loaded, and why. Its `Display` names the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plugin {} refused: {reason}", file.display())]
pub struct RefusedPlugin {
    pub file: PathBuf,
    pub reason: RefusalReason,
}

/// Why a plugin file was refused. Checked in this order: readable, probed (when the service
/// probes), loadable, ABI version, entry symbol, descriptor, then uniqueness against the
/// files that claimed first (in name order; on a reload, what serves already goes first).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    #[error("cannot read or cache the file: {0}")]
    Io(String),
    #[error("not a loadable dynamic library: {0}")]
    NotALibrary(String),
    /// Opened first in a separate process (the service's probe), it failed there: it
    /// crashed or hung that process while loading, or was refused.
    #[error("refused when opened in a separate process first: {0}")]
    Probe(String),
    #[error("no ABI version symbol `{symbol}`: not a credits pricing plugin")]
    MissingAbiVersion { symbol: &'static str },
    #[error("ABI version {found}, this host speaks {expected}")]
    AbiVersion { found: u32, expected: u32 },
    #[error("no entry symbol `{symbol}`")]
    MissingEntry { symbol: &'static str },
    #[error("the entry function returned no descriptor")]
    NullDescriptor,
    #[error("invalid descriptor: {0}")]
    InvalidDescriptor(String),
    #[error("tier {tier:?} is already loaded from {owner_file}")]
    TierTaken { tier: String, owner_file: String },
    #[error("model {model:?} is already owned by tier {owner_tier:?} from {owner_file}")]
    ModelTaken {
        model: String,
        owner_tier: String,
        owner_file: String,
    },
    #[error("more than {limit} plugin files in the directory")]
    TooManyFiles { limit: usize },
}

/// The plugin directory or the cache could not be used at all; nothing was loaded or
/// swapped.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read plugin directory {}: {source}", dir.display())]
    PluginDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use plugin cache directory {}: {source}", dir.display())]
    CacheDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Another reload has not finished (one stuck in a plugin's initialiser never does):
    /// this one does not queue behind it.
    #[error("another pricing reload is still in progress")]
    Busy,
    /// The reload was not done by its deadline: nothing it loaded is used.
    #[error("it did not finish in time; the previous tiers keep serving")]
    TooLate,
}
