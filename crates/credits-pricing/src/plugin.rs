//! One loaded plugin library: caching it under its content hash, opening it, validating its
//! descriptor and calling its pricing function. It owns every `unsafe` read of plugin memory
//! and must never keep a pointer into a library without holding that library open.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use credits_plugin_abi::{
    ABI_VERSION, ABI_VERSION_SYMBOL, ENTRY_SYMBOL, EntryFn, PluginDescriptor, PriceFn, Status,
    StrRef,
};
use libloading::Library;
use sha2::{Digest, Sha256};

use crate::error::{PluginFailure, PricingError, RefusalReason};
use crate::{Price, PricedBy, Prices, TierInfo, Usage};

/// Bounds on what a descriptor may claim, so a corrupt one is refused rather than read far
/// past its end.
const MAX_MODELS_PER_TIER: usize = 1024;
const MAX_NAME_BYTES: usize = 128;
const MAX_DISPLAY_NAME_BYTES: usize = 256;

/// A validated plugin, open. Its pricing function and the strings copied from its
/// descriptor are usable for as long as this value lives; the registry shares it in an
/// `Arc` so a call in flight keeps the library open across a reload.
pub(crate) struct LoadedTier {
    pub(crate) info: TierInfo,
    pub(crate) models: Vec<LoadedModel>,
    pub(crate) priced_by: PricedBy,
    price_fn: PriceFn,
    /// A call did not return in time: refuse every call until a reload loads it afresh.
    stalled: AtomicBool,
    /// What every load of this library file shares (they are one library).
    calls: Arc<LibraryCalls>,
    /// The cache copy it was opened from, named by its content hash: the same bytes
    /// loaded again are the same library.
    pub(crate) cached: std::path::PathBuf,
    /// Declared last so it is dropped (and the library closed) after everything else; the
    /// strings above are owned copies, and `price_fn` is never called after drop.
    _library: Library,
}

impl LoadedTier {
    /// Opens `path` itself, not a copy: for a process that opens it once and then exits
    /// (`check_plugin`), which the loader's cache of paths cannot fool.
    pub(crate) fn open_in_place(path: &Path) -> Result<LoadedTier, RefusalReason> {
        let io = |e: std::io::Error| RefusalReason::Io(e.to_string());
        let bytes = std::fs::read(path).map_err(io)?;
        segments_fit(&bytes).map_err(RefusalReason::NotALibrary)?;
        // Absolute: the loader searches its library path for a bare name, and would open
        // another file of that name (found by review).
        LoadedTier::open(path, std::path::absolute(path).map_err(io)?)
    }

    /// Opens `cached`, the copy of `path` (or `path` itself), and validates it. The service
    /// opens copies ([`cache_copy`]): the dynamic loader hands back an already-open library
    /// for a path it has seen, so a new version written over the same path would never load.
    pub(crate) fn open(
        path: &Path,
        cached: std::path::PathBuf,
    ) -> Result<LoadedTier, RefusalReason> {
        let file = file_name(path);
        let library = open_now(&cached)?;

        // The version comes first: a library of another ABI may lay out everything else
        // differently, so nothing else of it is touched before this matches.
        // SAFETY: the symbol is read as the address of a `u32` static, which is what ABI
        // version 1 and every later version promise to export under this name.
        let version_ptr =
            unsafe { library.get::<*const u32>(ABI_VERSION_SYMBOL) }.map_err(|_| {
                RefusalReason::MissingAbiVersion {
                    symbol: ABI_VERSION_SYMBOL,
                }
            })?;
        let version_ptr: *const u32 = *version_ptr;
        if version_ptr.is_null() || !version_ptr.is_aligned() {
            return Err(RefusalReason::MissingAbiVersion {
                symbol: ABI_VERSION_SYMBOL,
            });
        }
        // SAFETY: non-null and aligned address of an immutable `u32` static in a library that
        // stays open while we read it.
        let found = unsafe { version_ptr.read() };
        if found != ABI_VERSION {
            return Err(RefusalReason::AbiVersion {
                found,
                expected: ABI_VERSION,
            });
        }

        // SAFETY: ABI version 1 defines this symbol as an `EntryFn`.
        let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }.map_err(|_| {
            RefusalReason::MissingEntry {
                symbol: ENTRY_SYMBOL,
            }
        })?;
        // SAFETY: calling the entry function of a library whose ABI version matched; it takes
        // no arguments and returns a pointer we check before reading.
        let descriptor = unsafe { entry() };
        if descriptor.is_null() || !descriptor.is_aligned() {
            return Err(RefusalReason::NullDescriptor);
        }
        // SAFETY: a non-null, aligned descriptor that the ABI says stays valid and unchanged
        // while the library is open, which `library` guarantees until this function returns
        // it inside the `LoadedTier`.
        let descriptor = unsafe { &*descriptor };
        let (info, models, price_fn) = read_descriptor(descriptor, file)?;
        let priced_by = PricedBy::new(&info.tier, &info.plugin_version);
        Ok(LoadedTier {
            info,
            models,
            priced_by,
            price_fn,
            stalled: AtomicBool::new(false),
            calls: Arc::default(),
            cached,
            _library: library,
        })
    }

    /// Prices `usage` of `model` (one of this tier's models). `usage` is already valid.
    pub(crate) fn price(&self, model: &str, usage: Usage) -> Result<Price, PricingError> {
        if self.stalled() {
            return Err(self.failed(model, PluginFailure::Stalled));
        }
        let mut cost_micro_credits = 0_i64;
        self.calls.inside.fetch_add(1, Ordering::Relaxed);
        let _left = InFlight(&self.calls.inside);
        // SAFETY: `price_fn` came from `self._library`, which is open while `self` lives; the
        // model string and the out-pointer are valid for the call, as `PriceFn` requires.
        let status = unsafe {
            (self.price_fn)(
                StrRef::new(model),
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens,
                &mut cost_micro_credits,
            )
        };
        let failure = if status != Status::OK {
            PluginFailure::from_status(status)
        } else if cost_micro_credits < 0 {
            PluginFailure::NegativeCost { cost_micro_credits }
        } else {
            return Ok(Price {
                cost_micro_credits,
                priced_by: self.priced_by.clone(),
            });
        };
        Err(self.failed(model, failure))
    }

    /// A place for one call into this tier's library, unless [`MAX_CALLS_PER_LIBRARY`] are
    /// admitted already (all its loads share them).
    pub(crate) fn admit(&self) -> Option<Admission> {
        let before = self.calls.admitted.fetch_add(1, Ordering::Relaxed);
        let admission = Admission(self.calls.clone());
        // A disabled tier answers PRICING_FAILED at once, without entering the library:
        // its stuck calls must not turn that into "overloaded".
        (before < MAX_CALLS_PER_LIBRARY || self.stalled()).then_some(admission)
    }

    /// Whether a call into this tier did not return in time (it is disabled until a reload
    /// loads its file afresh), through this load or another of the same library (found by
    /// review: a reload while the call hung made a load that stayed enabled).
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed) || self.calls.stalled.load(Ordering::Relaxed)
    }

    /// This load as one of the library file's loads: it shares their count of calls
    /// inside, and starts disabled while a call that stalled is still inside (each reload
    /// of a plugin that hangs could otherwise lose one more thread to it).
    pub(crate) fn of_library(mut self, calls: Arc<LibraryCalls>) -> LoadedTier {
        self.stalled.store(calls.stuck(), Ordering::Relaxed);
        self.calls = calls;
        self
    }

    /// Disables this tier: a call did not return in time (see [`PluginFailure::Stalled`]).
    pub(crate) fn stall(&self, model: &str) -> PricingError {
        self.stalled.store(true, Ordering::Relaxed);
        self.calls.stalled.store(true, Ordering::Relaxed);
        self.failed(model, PluginFailure::Stalled)
    }

    fn failed(&self, model: &str, failure: PluginFailure) -> PricingError {
        PricingError::PricingFailed {
            model: model.to_owned(),
            priced_by: self.priced_by.to_string(),
            file: self.info.file.clone(),
            failure,
        }
    }
}

pub(crate) type SharedTier = Arc<LoadedTier>;

/// A model as its plugin listed it, copied out of the library.
pub(crate) struct LoadedModel {
    pub(crate) id: String,
    pub(crate) display_name: String,
    pub(crate) prices: Prices,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// What every load of one library file shares: the calls inside it now, and whether one
/// of them stalled.
#[derive(Debug, Default)]
pub(crate) struct LibraryCalls {
    inside: AtomicUsize,
    stalled: AtomicBool,
    /// Calls admitted to this library and not yet returned (see [`LoadedTier::admit`]).
    admitted: AtomicUsize,
}

/// Most calls one library may have admitted at once: a plugin that hangs keeps every call
/// that entered before its tier was disabled, and this many at most, so the other tiers
/// keep the rest of the service's pricing slots.
pub const MAX_CALLS_PER_LIBRARY: usize = 128;

/// A call's place among its library's [`MAX_CALLS_PER_LIBRARY`], held until it returns.
pub struct Admission(Arc<LibraryCalls>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LibraryCalls {
    /// A call stalled and one is still inside. With none inside, the stall is forgotten:
    /// it was a passing overload, or the stuck call has returned.
    fn stuck(&self) -> bool {
        if self.inside.load(Ordering::Relaxed) > 0 {
            self.stalled.load(Ordering::Relaxed)
        } else {
            self.stalled.store(false, Ordering::Relaxed);
            false
        }
    }
}

/// Counts a call out of the plugin when it returns (or unwinds).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `<cache_dir>/<sha256><DLL_SUFFIX>`, written through a temporary file of its own, made
/// durable and renamed into place. A file already under that name is used only if it holds
/// exactly these bytes (a crash could have left it short); the cache may be shared by
/// several nodes. The bytes are hashed and copied from one read, so the copy is the content
/// that was hashed.
pub(crate) fn cache_copy(
    path: &Path,
    cache_dir: &Path,
) -> Result<std::path::PathBuf, RefusalReason> {
    let io = |e: std::io::Error| RefusalReason::Io(e.to_string());
    let bytes = std::fs::read(path).map_err(io)?;
    segments_fit(&bytes).map_err(RefusalReason::NotALibrary)?;
    let mut name = String::with_capacity(64 + std::env::consts::DLL_SUFFIX.len());
    for byte in Sha256::digest(&bytes) {
        let _ = write!(name, "{byte:02x}");
    }
    let cached = cache_dir.join(format!("{name}{}", std::env::consts::DLL_SUFFIX));
    if std::fs::read(&cached).is_ok_and(|held| held == bytes) {
        return Ok(cached);
    }
    // Created new (never opened over another loader's file), so two loaders, of this
    // process or of nodes sharing the cache, never write one temporary file.
    static NEXT_TEMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (temp, mut file) = loop {
        let n = NEXT_TEMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let temp = cache_dir.join(format!(".{name}.{}.{n}.{nanos}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
        {
            Ok(file) => break (temp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(e)),
        }
    };
    // A failed write (a full disk) or rename leaves no partial file behind.
    let written = std::io::Write::write_all(&mut file, &bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, &cached))
        .and_then(|()| sync_dir(cache_dir));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io(e));
    }
    Ok(cached)
}

/// Makes a rename in `dir` durable. Some file systems (CIFS, some FUSE mounts) cannot sync
/// a directory and say so (EINVAL, EBADF): the copy is complete anyway, so that is no
/// reason to refuse the plugin.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    const EBADF: i32 = 9;
    const EINVAL: i32 = 22;
    match std::fs::File::open(dir)?.sync_all() {
        Err(e) if matches!(e.raw_os_error(), Some(EBADF | EINVAL)) => Ok(()),
        other => other,
    }
}

/// Refuses an ELF file cut short (a reload while it was still being copied in): the
/// dynamic loader maps its segments without checking them against the file's length, and
/// touching one past the end would kill the process (SIGBUS) instead of refusing the
/// plugin. Other formats, and ELF files of another class or byte order, are left to the
/// loader.
fn segments_fit(bytes: &[u8]) -> Result<(), String> {
    const PT_LOAD: u32 = 1;
    if !bytes.starts_with(b"\x7fELF") || bytes.get(4..6) != Some(&[2, 1]) {
        return Ok(());
    }
    let short = || {
        format!(
            "the file is cut short ({} bytes): it ends before its program headers",
            bytes.len()
        )
    };
    // Every offset is the file's to choose: added to without overflow (found by review: a
    // header near the top of the address space panicked a debug build's reload).
    let u16_at = |at: usize| {
        Some(u16::from_le_bytes(
            bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |at: usize| {
        Some(u32::from_le_bytes(
            bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |at: u64| {
        let at = usize::try_from(at).ok()?;
        Some(u64::from_le_bytes(
            bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let table = u64_at(0x20).ok_or_else(short)?;
    let (size, count) = (
        u16_at(0x36).ok_or_else(short)?,
        u16_at(0x38).ok_or_else(short)?,
    );
    for i in 0..u64::from(count) {
        let header = table.checked_add(i * u64::from(size)).ok_or_else(short)?;
        let kind = usize::try_from(header)
            .ok()
            .and_then(u32_at)
            .ok_or_else(short)?;
        if kind != PT_LOAD {
            continue;
        }
        let field = |at: u64| header.checked_add(at).and_then(u64_at).ok_or_else(short);
        let (offset, length) = (field(8)?, field(32)?);
        let end = offset.saturating_add(length);
        // A segment of zero-filled memory only maps nothing of the file.
        if length > 0 && end > bytes.len() as u64 {
            return Err(format!(
                "the file is cut short ({} bytes): a segment ends at byte {end}",
                bytes.len()
            ));
        }
    }
    Ok(())
}

fn read_descriptor(
    d: &PluginDescriptor,
    file: String,
) -> Result<(TierInfo, Vec<LoadedModel>, PriceFn), RefusalReason> {
    let invalid = RefusalReason::InvalidDescriptor;
    if d.abi_version != ABI_VERSION {
        return Err(RefusalReason::AbiVersion {
            found: d.abi_version,
            expected: ABI_VERSION,
        });
    }
    let tier = read_name("tier name", d.tier, MAX_NAME_BYTES)?;
    if tier.contains('@') {
        // `priced_by` is `<tier>@<version>`; an `@` in the tier would make it ambiguous.
        return Err(invalid(format!("tier name {tier:?} contains '@'")));
    }
    let plugin_version = read_name("plugin version", d.plugin_version, MAX_NAME_BYTES)?;
    let price_fn = d
        .price
        .ok_or_else(|| invalid("no pricing function".into()))?;
    if d.model_count == 0 || d.model_count > MAX_MODELS_PER_TIER {
        return Err(invalid(format!(
            "{} models, expected 1 to {MAX_MODELS_PER_TIER}",
            d.model_count
        )));
    }
    if d.models.is_null() || !d.models.is_aligned() {
        return Err(invalid("model list pointer is null or misaligned".into()));
    }
    // SAFETY: non-null, aligned, and the ABI promises `model_count` descriptors that live and
    // stay unchanged while the library is open (the caller holds it open).
    let raw_models = unsafe { std::slice::from_raw_parts(d.models, d.model_count) };
    let mut models = Vec::with_capacity(raw_models.len());
    let mut seen = HashSet::with_capacity(raw_models.len());
    for m in raw_models {
        let id = read_name("model id", m.id, MAX_NAME_BYTES)?;
        let display_name = read_text("model display name", m.display_name, MAX_DISPLAY_NAME_BYTES)?;
        let prices = [
            m.input_per_million_micro_credits,
            m.cached_input_per_million_micro_credits,
            m.output_per_million_micro_credits,
        ];
        if prices.iter().any(|&p| p < 0) {
            return Err(invalid(format!(
                "model {id:?} has a negative price {prices:?}"
            )));
        }
        if !seen.insert(id.clone()) {
            return Err(invalid(format!("model {id:?} is listed twice")));
        }
        models.push(LoadedModel {
            id,
            display_name,
            prices: Prices {
                input_per_million_micro_credits: prices[0],
                cached_input_per_million_micro_credits: prices[1],
                output_per_million_micro_credits: prices[2],
            },
        });
    }
    let info = TierInfo {
        tier,
        plugin_version,
        file,
        model_count: models.len(),
    };
    Ok((info, models, price_fn))
}

/// A non-empty string of printable characters without spaces: ids, tier names, versions.
fn read_name(what: &str, s: StrRef<'static>, max: usize) -> Result<String, RefusalReason> {
    let s = read_text(what, s, max)?;
    if s.chars().any(char::is_whitespace) {
        return Err(RefusalReason::InvalidDescriptor(format!(
            "{what} {s:?} contains whitespace"
        )));
    }
    Ok(s)
}

/// A non-empty UTF-8 string without control characters, copied out of the library.
fn read_text(what: &str, s: StrRef<'static>, max: usize) -> Result<String, RefusalReason> {
    let invalid = RefusalReason::InvalidDescriptor;
    if s.ptr.is_null() || s.len == 0 {
        return Err(invalid(format!("{what} is empty")));
    }
    if s.len > max {
        return Err(invalid(format!(
            "{what} is {} bytes, at most {max} allowed",
            s.len
        )));
    }
    // SAFETY: non-null, bounded length, and the ABI promises descriptor strings stay valid
    // and unchanged while the library is open (the caller holds it open).
    let bytes = unsafe { s.as_bytes() };
    let text =
        std::str::from_utf8(bytes).map_err(|e| invalid(format!("{what} is not UTF-8: {e}")))?;
    if text.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} {text:?} contains a control character"
        )));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
#[path = "plugin_fuzz.rs"]
mod fuzz;

/// Opens a library with every symbol bound now (`RTLD_NOW`): one that needs a symbol no
/// loaded library defines is refused here, naming its file, instead of ending the process
/// at its first call into that symbol (found by review: libloading binds lazily).
fn open_now(path: &Path) -> Result<Library, RefusalReason> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library as UnixLibrary, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: opening a library runs its initialisers; the library comes from the
        // operator's plugin directory, which is trusted to hold pricing plugins (the same
        // trust as the service binary), and the service probes new files in a separate
        // process first. Everything it exports is checked before use.
        unsafe { UnixLibrary::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .map(Library::from)
            .map_err(|e| RefusalReason::NotALibrary(e.to_string()))
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above.
        unsafe { Library::new(path) }.map_err(|e| RefusalReason::NotALibrary(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    /// Found by review: program headers said to start 2 bytes below the top of the address
    /// space overflowed the offset arithmetic, a panic in a debug build's reload (with no
    /// file named) instead of a refusal.
    #[test]
    fn program_headers_past_the_address_space_are_refused() {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let refused = super::segments_fit(&elf);
        assert!(
            refused.as_ref().is_err_and(|why| why.contains("cut short")),
            "{refused:?}"
        );
    }
}
