//! Test support: builds the real plugin libraries once per test binary and lays them out in
//! throwaway plugin directories. Shared with `benches/price.rs` through `#[path]`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every cdylib the tests load: the shipped tiers and the fixtures.
const PLUGIN_PACKAGES: &[&str] = &[
    "credits-tier-economy",
    "credits-tier-standard",
    "credits-tier-premium",
    "credits-fixture-gate-v1",
    "credits-fixture-gate-v2",
    "credits-fixture-copycat",
    "credits-fixture-no-entry",
    "credits-fixture-wrong-abi",
];

/// The directory cargo put this test binary's profile in (`<target>/debug`), where the
/// plugin libraries are built too. `cargo test` does not build other packages' cdylibs,
/// so the first caller runs `cargo build` for them, in the same target dir and profile as
/// this binary (so a custom `CARGO_TARGET_DIR` and `--release` work and nothing is built
/// twice); later callers, on any thread, wait for that one build.
pub fn built_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_plugins)
}

fn build_plugins() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // <target>/<profile dir>/deps/<binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a profile dir above deps/");
    let target_dir = profile_dir
        .parent()
        .expect("a target dir above the profile dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other, // "release" (also for `cargo bench`) or a custom profile
        None => panic!("unexpected profile dir {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--profile", profile, "--target-dir"])
        .arg(target_dir);
    for package in PLUGIN_PACKAGES {
        command.args(["-p", package]);
    }
    let output = command.output().expect("run cargo build for the plugins");
    assert!(
        output.status.success(),
        "building the plugins failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    profile_dir.to_owned()
}

/// The built library of `package`, e.g. `credits-tier-standard`.
pub fn built_lib(package: &str) -> PathBuf {
    built_dir().join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// The file name a tier named `name` is deployed under: `libcredits_tier_<name>.so`.
pub fn tier_file(name: &str) -> String {
    format!(
        "{}credits_tier_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// A plugin directory and a cache directory, both removed when dropped.
pub struct Dirs {
    pub plugins: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

impl Dirs {
    /// `deployed`: (package, `<name>` of the `libcredits_tier_<name>.so` it is deployed as).
    pub fn with(deployed: &[(&str, &str)]) -> Dirs {
        let dirs = Dirs {
            plugins: tempfile::tempdir().expect("plugin dir"),
            cache: tempfile::tempdir().expect("cache dir"),
        };
        for (package, name) in deployed {
            dirs.deploy(package, name);
        }
        dirs
    }

    /// Deploys as operators do (docs/PLUGINS.md): write a file the scan ignores, then
    /// rename it over the tier's file, so a reload never sees a half-written library.
    pub fn deploy(&self, package: &str, name: &str) {
        self.deploy_bytes(
            &std::fs::read(built_lib(package)).expect("built plugin"),
            name,
        );
    }

    pub fn deploy_bytes(&self, bytes: &[u8], name: &str) {
        let temp = self.plugins.path().join(format!("{}.new", tier_file(name)));
        std::fs::write(&temp, bytes).expect("write plugin");
        std::fs::rename(&temp, self.path(name)).expect("rename plugin");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path(name)).expect("remove plugin");
    }

    /// Path of the deployed `libcredits_tier_<name>.so`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.plugins.path().join(tier_file(name))
    }
}

/// The three shipped tiers under their own names.
pub const SHIPPED: &[(&str, &str)] = &[
    ("credits-tier-economy", "economy"),
    ("credits-tier-standard", "standard"),
    ("credits-tier-premium", "premium"),
];
