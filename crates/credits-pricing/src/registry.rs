//! The live registry: an immutable table model → tier behind an `ArcSwap`, built from the
//! plugin directory and swapped whole on reload. It owns which tier prices which model and
//! must never mutate a table a caller may be reading, nor drop a library before the last
//! call into it has returned.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use arc_swap::ArcSwap;

use crate::error::{PricingError, RefusalReason, RefusedPlugin, RegistryError};
use crate::plugin::{LoadedTier, SharedTier};
use crate::{ModelInfo, Price, TierInfo, Usage};

/// At most this many plugin files are loaded from one directory; the rest are refused.
const MAX_PLUGIN_FILES: usize = 256;
/// Probe outcomes kept, by content; past this they are forgotten (and probed again).
const MAX_PROBED: usize = 4 * MAX_PLUGIN_FILES;

/// The tiers' file-name pattern: `libcredits_tier_<name>.so` on Linux (`<name>` of
/// `[a-z0-9_]`, platform prefix and suffix from `std::env::consts`). Only such files are
/// loaded by a directory scan, so the test fixtures cargo builds beside the tiers
/// (`libcredits_fixture_*.so`) and temporary files of a deploy (`….so.new`) are not.
pub fn is_tier_file_name(name: &str) -> bool {
    name.strip_prefix(std::env::consts::DLL_PREFIX)
        .and_then(|rest| rest.strip_prefix("credits_tier_"))
        .and_then(|rest| rest.strip_suffix(std::env::consts::DLL_SUFFIX))
        .is_some_and(|tier| {
            !tier.is_empty()
                && tier
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Asked about the library copies this process has not opened or probed yet, all at once,
/// before any is opened: one [`Probed`] per copy, in order (a missing one counts as
/// [`Probed::Unsure`]). The
/// service opens each copy in a child process first, so that one whose initialisers crash
/// or never return takes down or holds only that child.
pub type Probe = Arc<dyn Fn(&[&Path]) -> Vec<Probed> + Send + Sync>;

/// What a [`Probe`] found of one library copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// Opened and gave control back: for the registry's own load to judge.
    Passed,
    /// Crashed or ended the process that opened it: refused, and so is the same content
    /// on every later reload, without a probe.
    Refused(String),
    /// Not known this time (it did not finish in time, or the probe could not run):
    /// refused now, probed again on the next reload.
    Unsure(String),
}

/// The pricing registry the server shares between all requests (`Send + Sync`).
pub struct PricingRegistry {
    plugin_dir: PathBuf,
    cache_dir: PathBuf,
    probe: Option<Probe>,
    table: ArcSwap<Table>,
    /// Serialises reloads so each builds on the table the previous one installed, and
    /// holds what every load of each library file (by content) shares.
    libraries: Mutex<Libraries>,
}

impl fmt::Debug for PricingRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PricingRegistry")
            .field("plugin_dir", &self.plugin_dir)
            .field("cache_dir", &self.cache_dir)
            .field("tiers", &self.tiers())
            .finish()
    }
}

impl PricingRegistry {
    /// Loads every tier file of `plugin_dir` (see [`is_tier_file_name`]) in file-name order,
    /// each from a private copy in `cache_dir` (created if missing) named by its SHA-256.
    /// Refused files are in the report and do not stop the others; only an unreadable
    /// directory is an error.
    pub fn open(
        plugin_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Result<(PricingRegistry, ReloadReport), RegistryError> {
        PricingRegistry::open_probed(plugin_dir, cache_dir, None)
    }

    /// [`PricingRegistry::open`], with every copy not opened yet asked about with `probe`
    /// first, now and on every reload.
    pub fn open_probed(
        plugin_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
        probe: Option<Probe>,
    ) -> Result<(PricingRegistry, ReloadReport), RegistryError> {
        let plugin_dir = plugin_dir.into();
        let cache_dir = cache_dir.into();
        private_dir(&cache_dir).map_err(|source| RegistryError::CacheDir {
            dir: cache_dir.clone(),
            source,
        })?;
        let mut libraries = Libraries::default();
        let (table, report) = build(
            &plugin_dir,
            &cache_dir,
            probe.as_ref(),
            &Table::default(),
            &mut libraries,
        )?;
        let registry = PricingRegistry {
            plugin_dir,
            cache_dir,
            probe,
            table: ArcSwap::from_pointee(table),
            libraries: Mutex::new(libraries),
        };
        Ok((registry, report))
    }

    /// Prices `usage` of `model` with the tier that lists it. Safe to call from many threads,
    /// also during a reload: a call uses the table current when it started, to the end.
    pub fn price(&self, model: &str, usage: Usage) -> Result<Price, PricingError> {
        self.tier_of(model)?.price(model, usage)
    }

    /// The tier that prices `model` now: a handle that keeps its library open, for a caller
    /// that prices on another thread and may have to [`TierHandle::stall`] that very tier.
    pub fn tier_of(&self, model: &str) -> Result<TierHandle, PricingError> {
        self.table
            .load()
            .by_model
            .get(model)
            .map(|tier| TierHandle(tier.clone()))
            .ok_or_else(|| PricingError::UnknownModel {
                model: model.to_owned(),
            })
    }

    /// Scans the directory again and swaps in the new table. A tier whose file is unchanged
    /// reloads from the same cached copy; a tier whose new file is refused keeps its previous
    /// version; a tier whose file is gone is unloaded once its calls in flight return. On
    /// error (unreadable directory) the current table stays.
    pub fn reload(&self) -> Result<ReloadReport, RegistryError> {
        self.reload_before(None)
    }

    /// [`PricingRegistry::reload`], which swaps the new tiers in only before `deadline`:
    /// past it, nothing it loaded is used ([`RegistryError::TooLate`]), so a caller told
    /// the reload took too long is not surprised by its tiers later.
    pub fn reload_before(
        &self,
        deadline: Option<std::time::Instant>,
    ) -> Result<ReloadReport, RegistryError> {
        let mut libraries = match self.libraries.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(RegistryError::Busy),
        };
        let previous = self.table.load_full();
        let (table, report) = build(
            &self.plugin_dir,
            &self.cache_dir,
            self.probe.as_ref(),
            &previous,
            &mut libraries,
        )?;
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(RegistryError::TooLate);
        }
        self.table.store(Arc::new(table));
        Ok(report)
    }

    /// Every priceable model: tiers in file-name order, each tier's models in its own order.
    pub fn models(&self) -> Vec<ModelInfo> {
        let table = self.table.load();
        table
            .tiers
            .iter()
            .flat_map(|tier| model_infos(tier))
            .collect()
    }

    /// The loaded tiers in file-name order.
    pub fn tiers(&self) -> Vec<TierInfo> {
        self.table
            .load()
            .tiers
            .iter()
            .map(|tier| tier.info.clone())
            .collect()
    }

    /// The loaded tiers disabled after a call that did not return in time, until a reload
    /// loads their file afresh (one whose new file is refused stays disabled, and so does
    /// the same file while that call is still inside it).
    pub fn stalled_tiers(&self) -> Vec<TierInfo> {
        self.table
            .load()
            .tiers
            .iter()
            .filter(|tier| tier.stalled())
            .map(|tier| tier.info.clone())
            .collect()
    }

    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }
}

/// One loaded tier, as [`PricingRegistry::tier_of`] hands it out: its library stays open
/// while the handle lives.
#[derive(Clone)]
pub struct TierHandle(SharedTier);

impl TierHandle {
    /// Prices `usage` of `model` (one of this tier's models).
    pub fn price(&self, model: &str, usage: Usage) -> Result<Price, PricingError> {
        let usage = usage.check()?;
        let price = self.0.price(model, usage);
        let outcome = if price.is_ok() { "ok" } else { "error" };
        metrics::counter!("credits_plugin_calls_total", "outcome" => outcome).increment(1);
        price
    }

    /// A place for one call into this tier's library (hold it until the call returns), or
    /// `None` when [`crate::MAX_CALLS_PER_LIBRARY`] calls are in it already: a plugin that
    /// hangs holds that many of the service's pricing threads at most.
    pub fn admit(&self) -> Option<crate::Admission> {
        self.0.admit()
    }

    /// A call into this tier did not return in time: the tier is disabled, every later call
    /// to it is PRICING_FAILED at once, until a reload loads it afresh (a plugin that loops
    /// on some input would otherwise take one more thread with every such call); a reload
    /// of the same file keeps it disabled while that call has not returned. Returns the
    /// error to answer the late call with.
    pub fn stall(&self, model: &str) -> PricingError {
        metrics::counter!("credits_plugin_calls_total", "outcome" => "stalled").increment(1);
        self.0.stall(model)
    }
}

pub(crate) fn model_infos(tier: &LoadedTier) -> impl Iterator<Item = ModelInfo> + '_ {
    tier.models.iter().map(|m| ModelInfo {
        id: m.id.clone(),
        display_name: m.display_name.clone(),
        tier: tier.info.tier.clone(),
        plugin_version: tier.info.plugin_version.clone(),
        prices: m.prices,
    })
}

/// What a load or reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Tiers loaded from their current file, in file-name order.
    pub loaded: Vec<TierInfo>,
    /// Tiers whose new file was refused and that keep serving their previous version.
    pub kept: Vec<TierInfo>,
    /// Tiers of the previous table that are no longer served (their file is gone, or they
    /// could not be kept).
    pub unloaded: Vec<TierInfo>,
    /// Files not loaded, each with its reason.
    pub refused: Vec<RefusedPlugin>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for tier in &self.loaded {
            writeln!(f, "loaded {tier}")?;
        }
        for tier in &self.kept {
            writeln!(f, "kept {tier}: its new file was refused")?;
        }
        for tier in &self.unloaded {
            writeln!(f, "unloaded {tier}")?;
        }
        for refused in &self.refused {
            writeln!(f, "{refused}")?;
        }
        Ok(())
    }
}

/// An immutable snapshot: which tier owns which model. Replaced whole, never mutated once
/// published.
#[derive(Default)]
struct Table {
    /// In file-name order.
    tiers: Vec<SharedTier>,
    /// foldhash rather than SipHash: this lookup is a third of a price call, and its keys
    /// come from the plugins, not from callers, so there is no hash flooding to resist.
    by_model: HashMap<String, SharedTier, foldhash::fast::RandomState>,
}

impl Table {
    /// Adds `tier` if neither its name nor any of its models is taken; all or nothing.
    fn claim(&mut self, tier: SharedTier) -> Result<(), RefusalReason> {
        if let Some(owner) = self.tiers.iter().find(|t| t.info.tier == tier.info.tier) {
            return Err(RefusalReason::TierTaken {
                tier: tier.info.tier.clone(),
                owner_file: owner.info.file.clone(),
            });
        }
        for model in &tier.models {
            if let Some(owner) = self.by_model.get(&model.id) {
                return Err(RefusalReason::ModelTaken {
                    model: model.id.clone(),
                    owner_tier: owner.info.tier.clone(),
                    owner_file: owner.info.file.clone(),
                });
            }
        }
        for model in &tier.models {
            self.by_model.insert(model.id.clone(), tier.clone());
        }
        self.tiers.push(tier);
        Ok(())
    }
}

/// What the registry knows of each library copy (by its path: its content hash).
#[derive(Default)]
struct Libraries {
    /// Every copy opened so far, with what all its loads share.
    opened: HashMap<PathBuf, Arc<crate::plugin::LibraryCalls>>,
    /// Every copy a probe passed (`None`) or refused for good (why): the same content is
    /// not probed again (one that crashed the probe is refused again at once).
    probed: HashMap<PathBuf, Option<String>>,
}

/// Builds a new table from the directory; `previous` supplies the tiers to keep when their
/// new file is refused.
fn build(
    plugin_dir: &Path,
    cache_dir: &Path,
    probe: Option<&Probe>,
    previous: &Table,
    libraries: &mut Libraries,
) -> Result<(Table, ReloadReport), RegistryError> {
    let files = tier_files(plugin_dir).map_err(|source| RegistryError::PluginDir {
        dir: plugin_dir.to_owned(),
        source,
    })?;
    let copies: Vec<(String, PathBuf, Result<PathBuf, RefusalReason>)> = files
        .into_iter()
        .enumerate()
        .map(|(index, (name, path))| {
            let copy = if index >= MAX_PLUGIN_FILES {
                Err(RefusalReason::TooManyFiles {
                    limit: MAX_PLUGIN_FILES,
                })
            } else {
                crate::plugin::cache_copy(&path, cache_dir)
            };
            (name, path, copy)
        })
        .collect();
    // Opening runs a library's initialisers: each copy this process has not opened or
    // probed yet is probed first (outside it, when the service gives a probe), all at once.
    let mut unsure: HashMap<PathBuf, String> = HashMap::new();
    if libraries.probed.len() > MAX_PROBED {
        // Forgotten contents are only probed again.
        libraries.probed.clear();
    }
    if let Some(probe) = probe {
        let mut new: Vec<&Path> = copies
            .iter()
            .filter_map(|(_, _, copy)| copy.as_deref().ok())
            .filter(|c| !libraries.opened.contains_key(*c) && !libraries.probed.contains_key(*c))
            .collect();
        new.sort_unstable();
        new.dedup();
        if !new.is_empty() {
            let mut outcomes = probe(&new).into_iter();
            for copy in &new {
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| Probed::Unsure("the probe gave no answer".into()));
                match outcome {
                    Probed::Passed => {
                        libraries.probed.insert(copy.to_path_buf(), None);
                    }
                    Probed::Refused(why) => {
                        libraries.probed.insert(copy.to_path_buf(), Some(why));
                    }
                    Probed::Unsure(why) => {
                        unsure.insert(copy.to_path_buf(), why);
                    }
                }
            }
        }
    }
    let outcomes: Vec<(String, PathBuf, Result<SharedTier, RefusalReason>)> = copies
        .into_iter()
        .map(|(name, path, copy)| {
            let tier = copy.and_then(|cached| {
                let refused = libraries.probed.get(&cached).cloned().flatten();
                if let Some(why) = refused.or_else(|| unsure.get(&cached).cloned()) {
                    return Err(RefusalReason::Probe(why));
                }
                LoadedTier::open(&path, cached).map(|tier| {
                    let calls = libraries.opened.entry(tier.cached.clone()).or_default();
                    Arc::new(tier.of_library(calls.clone()))
                })
            });
            (name, path, tier)
        })
        .collect();
    // What serves now claims its tiers and models first: the files unchanged, and the
    // previous versions of files whose new version did not load; then new versions of
    // files that were loaded (those taking another file's tier or model last); then new
    // files; each in name order. So a new file that also
    // lists a model another tier serves is the one refused, not that tier (found by
    // review: a bad new file that sorted earlier took the model and unloaded the tier).
    let serving = |tier: &SharedTier| {
        previous
            .tiers
            .iter()
            .any(|t| t.info.file == tier.info.file && t.cached == tier.cached)
    };
    let mut table = Table::default();
    let mut report = ReloadReport::default();
    // A refused file's tier keeps its previous version, if that still claims.
    let mut refuse = |table: &mut Table, name: &str, file: &Path, reason: RefusalReason| {
        report.refused.push(RefusedPlugin {
            file: file.to_owned(),
            reason,
        });
        let old = previous.tiers.iter().find(|t| t.info.file == name);
        if let Some(old) = old
            && table.claim(old.clone()).is_ok()
        {
            report.kept.push(old.info.clone());
        }
    };
    // Whether `tier`, the new version of file `name`, lists a tier name or a model another
    // file served before this reload.
    let takes_from_another = |name: &str, tier: &SharedTier| {
        let others = previous.tiers.iter().filter(|t| t.info.file != name);
        others.into_iter().any(|t| {
            t.info.tier == tier.info.tier
                || tier
                    .models
                    .iter()
                    .any(|m| t.models.iter().any(|o| o.id == m.id))
        })
    };
    // 0: what serves now; 1: a new version of a file that was loaded; 2: one that also
    // takes what another file served (found by review: a new economy build listing a
    // standard model by mistake, reloaded with a new standard build, took the model first
    // and left standard unloaded for good; now standard's new version claims it first,
    // and economy's is refused); 3: a new file.
    let rank = |name: &str, outcome: &Result<SharedTier, RefusalReason>| match outcome {
        Ok(tier) if serving(tier) => 0,
        Err(_) => 0,
        Ok(tier) if previous.tiers.iter().any(|t| t.info.file == name) => {
            if takes_from_another(name, tier) { 2 } else { 1 }
        }
        Ok(_) => 3,
    };
    let mut loaded = Vec::new();
    for pass in 0..4 {
        for (name, path, outcome) in &outcomes {
            if rank(name, outcome) != pass {
                continue;
            }
            match outcome {
                Ok(tier) => match table.claim(tier.clone()) {
                    Ok(()) => loaded.push(tier.info.clone()),
                    Err(reason) => refuse(&mut table, name, path, reason),
                },
                Err(reason) => refuse(&mut table, name, path, reason.clone()),
            }
        }
    }
    report.loaded = loaded;
    for old in &previous.tiers {
        if !table.tiers.iter().any(|t| t.info.tier == old.info.tier) {
            report.unloaded.push(old.info.clone());
        }
    }
    table.tiers.sort_by(|a, b| a.info.file.cmp(&b.info.file));
    report.loaded.sort_by(|a, b| a.file.cmp(&b.file));
    report.kept.sort_by(|a, b| a.file.cmp(&b.file));
    report
        .refused
        .sort_by(|a, b| a.file.file_name().cmp(&b.file.file_name()));
    Ok((table, report))
}

/// `(file name, path)` of the tier files in `dir`, sorted by name.
fn tier_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        // `is_file` follows symlinks, so a tier may be deployed as a link.
        if is_tier_file_name(&name) && path.is_file() {
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Creates the cache directory for this user only (0700), makes one of this user's so,
/// and refuses one that another user owns (or a link another user owns to it), or that
/// stays writable by others: a library found there is loaded into the service, so whoever
/// can write to it could put their own code in between the check of a copy and its
/// loading (found by review, for a cache under a shared working directory such as /tmp).
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why,
        ))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // The link itself, not what a trailing slash would follow it to.
    let as_named = dir.components().as_path();
    for (what, meta, root_may_own) in [
        ("the directory", std::fs::metadata(dir)?, false),
        ("the link to it", std::fs::symlink_metadata(as_named)?, true),
    ] {
        if meta.uid() != me && !(root_may_own && meta.uid() == 0) {
            return refuse(format!(
                "{what} belongs to user {}, not to this service's ({me}): a library there would run in this service",
                meta.uid()
            ));
        }
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o022 != 0 {
        return refuse(format!(
            "it stays writable by others (mode {:o}, a file system without modes?): a library there would run in this service",
            mode & 0o777
        ));
    }
    Ok(())
}
