//! The C ABI between the pricing host (`credits-pricing`) and a pricing-tier plugin: the
//! exported symbol names, the descriptor a plugin hands out and the pricing function's
//! signature. It owns the layout of every byte that crosses a library boundary and must never
//! let a Rust-only type (`String`, `Vec`, `Box<dyn _>`, `&dyn _`, an enum read from foreign
//! memory) cross it, nor hand out memory the other side would have to free.
//!
//! The contract, version [`ABI_VERSION`]:
//! - The library exports a `u32` static named [`ABI_VERSION_SYMBOL`]. The host reads it
//!   before it looks at any other symbol and refuses the library unless it equals
//!   [`ABI_VERSION`], so a future layout change is refused instead of misread.
//! - The library exports an [`EntryFn`] named [`ENTRY_SYMBOL`]. It returns a pointer to a
//!   [`PluginDescriptor`] that the library owns; it and every string and model it points to
//!   stay valid and unchanged for as long as the library is loaded. The host copies what it
//!   keeps and never frees any of it.
//! - [`PluginDescriptor::price`] prices one usage. Its strings are borrowed for the call
//!   only; it writes the cost to the out-pointer and returns a [`Status`]. It must not unwind
//!   (the SDK's `export_tier!` catches panics) and must be callable from any thread at once.
//!
//! Amounts are `i64` micro-credits (1 credit = 1,000,000 µcr); token counts are `i64` so a
//! negative count can be refused rather than wrapped.

#![no_std]

use core::marker::PhantomData;

/// The layout version this crate describes. Bump it on any change to a `#[repr(C)]` type,
/// a symbol name or the meaning of a field.
pub const ABI_VERSION: u32 = 1;

/// Name of the exported `u32` static holding the plugin's [`ABI_VERSION`].
pub const ABI_VERSION_SYMBOL: &str = "CREDITS_PLUGIN_ABI_VERSION";

/// Name of the exported [`EntryFn`].
pub const ENTRY_SYMBOL: &str = "credits_plugin_entry";

/// The exported entry function: returns the library's descriptor, or null if it cannot.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// Prices one usage of `model`: `input_tokens` counts all input tokens, cached ones included;
/// `cached_input_tokens` is the cached part. On [`Status::OK`] the cost, rounded up to the
/// micro-credit, is in `*cost_micro_credits`; on any other status it is unspecified.
///
/// # Safety
/// `model` must be valid for the call and `cost_micro_credits` must be valid for a write.
pub type PriceFn = unsafe extern "C" fn(
    model: StrRef<'_>,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    cost_micro_credits: *mut i64,
) -> Status;

/// A UTF-8 string borrowed across the boundary: pointer and length, no terminator, never
/// freed by the reader. The lifetime ties a value built from a Rust `&str` to that borrow;
/// a value read from foreign memory carries whatever lifetime the ABI promises (the library's
/// life for descriptor strings, the call for arguments).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StrRef<'a> {
    pub ptr: *const u8,
    pub len: usize,
    pub _borrow: PhantomData<&'a str>,
}

impl<'a> StrRef<'a> {
    /// Borrows `s` for the boundary.
    pub const fn new(s: &'a str) -> Self {
        StrRef {
            ptr: s.as_ptr(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    /// The raw bytes, which a reader must still check for UTF-8.
    ///
    /// # Safety
    /// `ptr` must be non-null and valid for reads of `len` bytes that nothing mutates for
    /// `'a`. A `StrRef` built by [`StrRef::new`] always is.
    pub const unsafe fn as_bytes(&self) -> &'a [u8] {
        // SAFETY: forwarded to the caller, who promises what `from_raw_parts` needs.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// One model of a tier. Prices are micro-credits per million tokens.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModelDescriptor {
    /// The id callers price by, e.g. `standard-chat`; unique across all loaded tiers.
    pub id: StrRef<'static>,
    /// A name for people, e.g. `Standard Chat`.
    pub display_name: StrRef<'static>,
    /// Price of a million uncached input tokens.
    pub input_per_million_micro_credits: i64,
    /// Price of a million cached input tokens.
    pub cached_input_per_million_micro_credits: i64,
    /// Price of a million output tokens.
    pub output_per_million_micro_credits: i64,
}

/// What the entry function returns. Owned by the library, valid while it is loaded.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// Must equal [`ABI_VERSION`]; checked again here in case the static lies.
    pub abi_version: u32,
    /// Tier name, e.g. `standard`; unique across loaded libraries.
    pub tier: StrRef<'static>,
    /// The plugin's own version, e.g. `1.2.0`; recorded with every price it makes.
    pub plugin_version: StrRef<'static>,
    /// `model_count` models; non-null when `model_count > 0`.
    pub models: *const ModelDescriptor,
    pub model_count: usize,
    /// `Option` so a null pointer from a broken library is a value the host can refuse
    /// rather than undefined behaviour (fn pointers are guaranteed non-null, `Option` of one
    /// is guaranteed to be nullable at the same size).
    pub price: Option<PriceFn>,
}

// SAFETY: a descriptor only points at data the library never mutates (the ABI contract above)
// and at a function that may be called from any thread, so sharing one between threads is
// sound; this lets a plugin keep its descriptor in a `static`.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: as for `Sync`; a `ModelDescriptor` is a piece of that immutable data, which the
// SDK keeps in a `static` array.
unsafe impl Sync for ModelDescriptor {}

/// Outcome of a [`PriceFn`] call. A transparent `i32` rather than a Rust enum: a foreign
/// library may return any value, and an out-of-range enum discriminant would be undefined
/// behaviour, while an unknown status is just an error.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

impl Status {
    /// The cost was written.
    pub const OK: Status = Status(0);
    /// The plugin does not price this model.
    pub const UNKNOWN_MODEL: Status = Status(1);
    /// A count was negative or the cached part exceeded the input.
    pub const INVALID_INPUT: Status = Status(2);
    /// The cost does not fit an `i64` of micro-credits.
    pub const OVERFLOW: Status = Status(3);
    /// The plugin's pricing code panicked; the SDK caught it at the boundary.
    pub const PANICKED: Status = Status(4);
    /// Any other failure the plugin reports.
    pub const FAILED: Status = Status(5);

    /// A short description for error messages.
    pub const fn describe(self) -> &'static str {
        match self {
            Status::OK => "ok",
            Status::UNKNOWN_MODEL => "the plugin does not price this model",
            Status::INVALID_INPUT => "the plugin refused the token counts",
            Status::OVERFLOW => "the cost overflows i64 micro-credits",
            Status::PANICKED => "the plugin panicked",
            Status::FAILED => "the plugin reported an error",
            _ => "the plugin returned an unknown status",
        }
    }
}
