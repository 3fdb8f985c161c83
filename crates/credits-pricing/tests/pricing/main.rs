//! credits-pricing against real plugin libraries: the three shipped tiers and the fixtures in
//! `fixtures/`, built by `helpers::built_dir` before the first test uses them.

mod helpers;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use credits_pricing::{
    PluginFailure, PricingError, PricingRegistry, RefusalReason, ReloadReport, Usage, check_plugin,
    is_tier_file_name,
};
use helpers::{Dirs, SHIPPED, built_dir, built_lib, tier_file};

/// Found by review: every call that entered a hanging plugin before its tier was disabled
/// (2 s) stayed stuck with its pricing slot, so a busy hanging tier took all 256 and every
/// other tier's calls were refused until a restart. A library admits at most
/// `MAX_CALLS_PER_LIBRARY` calls at once (all its loads together); the others are refused
/// at once, and their slots stay free for the other tiers.
#[test]
fn a_library_admits_a_bounded_number_of_calls() {
    use credits_pricing::MAX_CALLS_PER_LIBRARY;
    let dirs = Dirs::with(&[
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
    ]);
    let (registry, _) = open(&dirs);
    let tier = registry.tier_of("fixture-gated").unwrap();
    let mut held: Vec<_> = (0..MAX_CALLS_PER_LIBRARY)
        .map(|_| tier.admit().expect("within the bound"))
        .collect();
    assert!(tier.admit().is_none(), "past the bound");
    // Its other models share the library's bound, across a reload of the same file.
    assert!(registry.tier_of("fixture-ok").unwrap().admit().is_none());
    registry.reload().unwrap();
    assert!(registry.tier_of("fixture-ok").unwrap().admit().is_none());
    // Another library is not held back.
    assert!(registry.tier_of("standard-chat").unwrap().admit().is_some());
    // A call that returns frees its place.
    held.pop();
    let again = tier.admit().expect("a place again");
    assert!(tier.admit().is_none());
    // A disabled tier is admitted (to be refused PRICING_FAILED at once, not "overloaded").
    let _ = tier.stall("fixture-gated");
    assert!(tier.admit().is_some());
    drop(again);
}

/// Found by review: the cache was used whoever could write to it, and a library found
/// there runs in the service. A new one is made for this user only, and one of this
/// user's that others may write to is made so. (A cache another user owns is refused; a
/// test cannot make one without being root.)
#[test]
fn the_cache_is_this_users_only() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = Dirs::with(&[("credits-tier-standard", "standard")]);
    let fresh = dirs.cache.path().join("new/cache");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    PricingRegistry::open(dirs.plugins.path(), &fresh).expect("a new cache");
    assert_eq!(mode(&fresh), 0o700);
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
    PricingRegistry::open(dirs.plugins.path(), &fresh).expect("this user's cache");
    assert_eq!(mode(&fresh), 0o700, "made this user's only again");
}

fn usage(input_tokens: i64, cached_input_tokens: i64, output_tokens: i64) -> Usage {
    Usage {
        input_tokens,
        cached_input_tokens,
        output_tokens,
    }
}

fn open(dirs: &Dirs) -> (PricingRegistry, ReloadReport) {
    PricingRegistry::open(dirs.plugins.path(), dirs.cache.path()).expect("open registry")
}

fn loaded(report: &ReloadReport) -> Vec<String> {
    report
        .loaded
        .iter()
        .map(|t| format!("{}@{}", t.tier, t.plugin_version))
        .collect()
}

/// `(cost, priced_by)` or the error's message.
fn price(registry: &PricingRegistry, model: &str, u: Usage) -> Result<(i64, String), String> {
    registry
        .price(model, u)
        .map(|p| (p.cost_micro_credits, p.priced_by.to_string()))
        .map_err(|e| e.to_string())
}

fn check(registry: &PricingRegistry, model: &str, u: Usage, cost: i64, priced_by: &str) {
    assert_eq!(
        price(registry, model, u),
        Ok((cost, priced_by.to_owned())),
        "{model} {u:?}"
    );
}

/// `standard-chat` is priced by the shipped standard tier.
fn standard_serves_chat(registry: &PricingRegistry) {
    check(
        registry,
        "standard-chat",
        usage(10_000, 2_000, 1_000),
        396_000,
        "standard@1.2.0",
    );
}

#[test]
fn loads_the_three_shipped_tiers_in_file_name_order() {
    let dirs = Dirs::with(SHIPPED);
    let (registry, report) = open(&dirs);
    assert_eq!(
        loaded(&report),
        ["economy@1.0.0", "premium@1.0.0", "standard@1.2.0"]
    );
    assert!(report.refused.is_empty() && report.kept.is_empty() && report.unloaded.is_empty());

    let models: Vec<String> = registry
        .models()
        .iter()
        .map(|m| format!("{} {}@{}", m.id, m.tier, m.plugin_version))
        .collect();
    assert_eq!(
        models,
        [
            "economy-mini economy@1.0.0",
            "economy-flash economy@1.0.0",
            "economy-code economy@1.0.0",
            "premium-reasoning premium@1.0.0",
            "premium-max premium@1.0.0",
            "premium-long-context premium@1.0.0",
            "premium-agent premium@1.0.0",
            "standard-chat standard@1.2.0",
            "standard-code standard@1.2.0",
            "standard-vision standard@1.2.0",
        ]
    );
    // Realistic shape: cached input cheaper than input, output dearer than input.
    for m in registry.models() {
        let p = m.prices;
        assert!(p.cached_input_per_million_micro_credits < p.input_per_million_micro_credits);
        assert!(p.output_per_million_micro_credits > p.input_per_million_micro_credits);
    }
}

#[test]
fn prices_known_usages_to_the_exact_micro_credit() {
    let dirs = Dirs::with(SHIPPED);
    let (registry, _) = open(&dirs);
    let (eco, std, pre) = ("economy@1.0.0", "standard@1.2.0", "premium@1.0.0");
    // (8,000 × 30 + 2,000 × 3 + 1,000 × 150) µcr = 396,000 µcr
    check(
        &registry,
        "standard-chat",
        usage(10_000, 2_000, 1_000),
        396_000,
        std,
    );
    check(
        &registry,
        "economy-mini",
        usage(10_000, 2_000, 1_000),
        12_500,
        eco,
    );
    check(
        &registry,
        "premium-reasoning",
        usage(10_000, 2_000, 1_000),
        1_980_000,
        pre,
    );
    check(
        &registry,
        "premium-max",
        usage(1_000_000, 0, 100_000),
        140_000_000,
        pre,
    );
    check(&registry, "standard-code", usage(1, 0, 1), 125, std);
    check(&registry, "standard-vision", usage(0, 0, 0), 0, std);
    // Rounded up once: 3 × 0.25 = 0.75 → 1; 2 × 2.5 + 3 × 0.625 = 6.875 → 7.
    check(&registry, "economy-mini", usage(3, 3, 0), 1, eco);
    check(&registry, "economy-code", usage(5, 3, 0), 7, eco);
}

#[test]
fn refuses_invalid_usage_and_unknown_models() {
    let dirs = Dirs::with(SHIPPED);
    let (registry, _) = open(&dirs);
    for bad in [
        usage(-1, 0, 0),
        usage(0, -1, 0),
        usage(0, 0, -1),
        usage(5, 6, 0),
    ] {
        let err = registry.price("standard-chat", bad).unwrap_err();
        assert!(
            matches!(err, PricingError::InvalidInput { .. }),
            "{bad:?}: {err}"
        );
    }
    let err = registry.price("gpt-imaginary", usage(1, 0, 1)).unwrap_err();
    assert_eq!(
        err,
        PricingError::UnknownModel {
            model: "gpt-imaginary".into()
        }
    );
    assert!(err.to_string().contains("gpt-imaginary"), "{err}");
}

#[test]
fn directory_scan_loads_only_tier_file_names() {
    // The target dir holds the fixtures too (libcredits_fixture_*.so); only tiers load.
    let cache = tempfile::tempdir().unwrap();
    let (registry, report) = PricingRegistry::open(built_dir(), cache.path()).unwrap();
    assert_eq!(
        loaded(&report),
        ["economy@1.0.0", "premium@1.0.0", "standard@1.2.0"]
    );
    assert!(report.refused.is_empty(), "{report}");
    assert_eq!(registry.tiers().len(), 3);

    for name in ["libcredits_tier_standard.so", "libcredits_tier_a_2.so"] {
        assert!(is_tier_file_name(name), "{name}");
    }
    for name in [
        "libcredits_tier_.so",
        "libcredits_tier_standard.so.new",
        ".libcredits_tier_standard.so",
        "libcredits_fixture_gate_v1.so",
        "credits_tier_standard.so",
        "libcredits_tier_Standard.so",
        "libcredits_tier_std-2.so",
    ] {
        assert!(!is_tier_file_name(name), "{name}");
    }
}

/// Every bad library next to the good tiers: each refused with its file and reason, in
/// file-name order, and the good tiers (also those after a refused file) keep working.
#[test]
fn refuses_bad_libraries_by_name_and_keeps_the_good_ones() {
    let dirs = Dirs::with(&[
        ("credits-tier-economy", "economy"),
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
        // Same tier name as the file before it:
        ("credits-fixture-gate-v2", "fixture_v2"),
        ("credits-fixture-no-entry", "no_entry"),
        ("credits-fixture-wrong-abi", "wrong_abi"),
        // Lists `standard-chat`, which libcredits_tier_standard.so owns:
        ("credits-fixture-copycat", "zz_copycat"),
    ]);
    dirs.deploy_bytes(b"#!/bin/sh\necho not a library\n", "aaa_garbage");
    let (registry, report) = open(&dirs);

    assert_eq!(
        loaded(&report),
        ["economy@1.0.0", "fixture@1.0.0", "standard@1.2.0"]
    );
    let refused: Vec<(String, &RefusalReason)> = report
        .refused
        .iter()
        .map(|r| {
            (
                r.file.file_name().unwrap().to_string_lossy().into_owned(),
                &r.reason,
            )
        })
        .collect();
    assert_eq!(refused.len(), 5, "{report}");
    assert_eq!(refused[0].0, tier_file("aaa_garbage"));
    assert!(
        matches!(refused[0].1, RefusalReason::NotALibrary(_)),
        "{report}"
    );
    assert_eq!(refused[1].0, tier_file("fixture_v2"));
    assert_eq!(
        refused[1].1,
        &RefusalReason::TierTaken {
            tier: "fixture".into(),
            owner_file: tier_file("fixture")
        }
    );
    assert_eq!(refused[2].0, tier_file("no_entry"));
    assert_eq!(
        refused[2].1,
        &RefusalReason::MissingEntry {
            symbol: "credits_plugin_entry"
        }
    );
    assert_eq!(refused[3].0, tier_file("wrong_abi"));
    assert_eq!(
        refused[3].1,
        &RefusalReason::AbiVersion {
            found: 99,
            expected: 1
        }
    );
    assert_eq!(refused[4].0, tier_file("zz_copycat"));
    assert_eq!(
        refused[4].1,
        &RefusalReason::ModelTaken {
            model: "standard-chat".into(),
            owner_tier: "standard".into(),
            owner_file: tier_file("standard"),
        }
    );
    // Every message names the file it is about.
    for r in &report.refused {
        let name = r.file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(r.to_string().contains(&name), "{r}");
    }
    let text = report.to_string();
    assert!(
        text.contains("ABI version 99, this host speaks 1"),
        "{text}"
    );
    assert!(
        text.contains("no entry symbol `credits_plugin_entry`"),
        "{text}"
    );

    // Refused whole: the copycat's own model is not served either.
    assert!(matches!(
        registry.price("copycat-own", usage(1, 0, 1)),
        Err(PricingError::UnknownModel { .. })
    ));
    check(
        &registry,
        "standard-chat",
        usage(10_000, 2_000, 1_000),
        396_000,
        "standard@1.2.0",
    );
    check(
        &registry,
        "economy-mini",
        usage(3, 3, 0),
        1,
        "economy@1.0.0",
    );
}

#[test]
fn a_failing_plugin_call_is_an_error_naming_the_plugin_and_the_rest_keeps_serving() {
    let dirs = Dirs::with(&[
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
    ]);
    let (registry, _) = open(&dirs);
    let failure = |model: &str, u: Usage| match registry.price(model, u) {
        Err(err @ PricingError::PricingFailed { .. }) => {
            let text = err.to_string();
            for needle in [model, "fixture@1.0.0", &tier_file("fixture")] {
                assert!(text.contains(needle), "{text:?} lacks {needle:?}");
            }
            let PricingError::PricingFailed { failure, .. } = err else {
                unreachable!()
            };
            failure
        }
        other => panic!("{model}: expected PricingFailed, got {other:?}"),
    };
    assert_eq!(
        failure("fixture-error", usage(1, 0, 1)),
        PluginFailure::ErrorStatus { code: 5 }
    );
    assert_eq!(
        failure("fixture-negative", usage(1_000_000, 0, 0)),
        PluginFailure::NegativeCost {
            cost_micro_credits: -1_000_001
        }
    );
    // 10^7 tokens at (i64::MAX / 2) µcr per million: about 4.6 × 10^19 µcr.
    assert_eq!(
        failure("fixture-overflow", usage(10_000_000, 0, 0)),
        PluginFailure::Overflow
    );
    assert_eq!(
        failure("fixture-overflow", usage(0, 0, 10_000_000)),
        PluginFailure::Overflow
    );
    // The panic is caught inside the plugin; this process, and the plugin, carry on.
    assert_eq!(
        failure("fixture-panic", usage(1, 0, 1)),
        PluginFailure::Panicked
    );
    assert_eq!(
        failure("fixture-panic", usage(1, 0, 1)),
        PluginFailure::Panicked
    );
    check(
        &registry,
        "fixture-ok",
        usage(1_000_000, 0, 0),
        1_000_000,
        "fixture@1.0.0",
    );
    check(
        &registry,
        "fixture-overflow",
        usage(2, 0, 0),
        9_223_372_036_855,
        "fixture@1.0.0",
    );
    check(
        &registry,
        "standard-chat",
        usage(10_000, 2_000, 1_000),
        396_000,
        "standard@1.2.0",
    );
}

/// A gate key no other test (or test process) uses: `fixture-gated` blocks on files named
/// after its input token count (see fixtures/gate-v1).
fn gate_key() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(0);
    i64::from(std::process::id() % 1_000_000) * 1_000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

fn gate_file(key: i64, suffix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("credits-fixture-gate-{key}.{suffix}"))
}

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn reload_swaps_versions_while_a_call_in_flight_finishes_on_the_old_library() {
    let dirs = Dirs::with(&[
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
    ]);
    let (registry, _) = open(&dirs);
    let key = gate_key();
    std::fs::write(gate_file(key, "armed"), b"").unwrap();

    std::thread::scope(|s| {
        let in_flight = s.spawn(|| registry.price("fixture-gated", usage(key, 0, 0)));
        wait_for("the call to enter the plugin", || {
            gate_file(key, "entered").exists()
        });

        // v2 goes over v1 by rename while v1 is executing; the reload must not wait for it.
        dirs.deploy("credits-fixture-gate-v2", "fixture");
        let report = registry.reload().unwrap();
        assert_eq!(
            loaded(&report),
            ["fixture@2.0.0", "standard@1.2.0"],
            "{report}"
        );
        assert!(
            report.refused.is_empty() && report.unloaded.is_empty(),
            "{report}"
        );

        // New work goes to v2 (prices doubled) while the old call is still blocked.
        check(
            &registry,
            "fixture-ok",
            usage(1_000, 0, 0),
            2_000,
            "fixture@2.0.0",
        );
        assert!(!in_flight.is_finished());

        std::fs::write(gate_file(key, "release"), b"").unwrap();
        let old = in_flight
            .join()
            .unwrap()
            .expect("the in-flight call completes");
        assert_eq!(
            (old.cost_micro_credits, old.priced_by.as_str()),
            (key, "fixture@1.0.0")
        );
        assert_eq!(
            (old.priced_by.tier(), old.priced_by.plugin_version()),
            ("fixture", "1.0.0")
        );
    });
    for suffix in ["armed", "entered", "release"] {
        let _ = std::fs::remove_file(gate_file(key, suffix));
    }
}

/// Found by review: a plugin file cut short (a reload while it was still being copied in)
/// was handed to the dynamic loader, which maps segments past the end of the file: touching
/// one kills the process (SIGBUS). It is refused, naming the file; the tier keeps serving
/// its previous version.
#[test]
fn a_plugin_file_cut_short_is_refused() {
    let dirs = Dirs::with(&[("credits-tier-standard", "standard")]);
    let (registry, _) = open(&dirs);
    let whole = std::fs::read(built_lib("credits-tier-standard")).unwrap();
    // (The loaded segments of a tier library end within its first 300 KB; debug info follows.)
    for cut in [64, 1_000, 100_000] {
        dirs.deploy_bytes(&whole[..cut], "standard");
        let report = registry.reload().unwrap();
        assert_eq!(report.refused.len(), 1, "{report}");
        let refused = &report.refused[0];
        assert_eq!(
            refused.file.file_name().unwrap().to_string_lossy(),
            tier_file("standard")
        );
        assert!(
            matches!(&refused.reason, RefusalReason::NotALibrary(why) if why.contains("cut short")),
            "{report}"
        );
        registry.price("standard-chat", usage(1000, 0, 0)).unwrap();
    }
}

#[test]
fn reload_keeps_a_tier_whose_new_file_is_refused_and_unloads_a_tier_whose_file_is_gone() {
    let dirs = Dirs::with(&[
        ("credits-tier-economy", "economy"),
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
    ]);
    let (registry, _) = open(&dirs);

    dirs.deploy_bytes(b"truncated upload", "standard");
    dirs.remove("economy");
    dirs.deploy("credits-fixture-wrong-abi", "fixture");
    let report = registry.reload().unwrap();
    assert!(report.loaded.is_empty(), "{report}");
    let kept: Vec<_> = report.kept.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        kept,
        [
            format!("fixture@1.0.0 from {} (6 models)", tier_file("fixture")),
            format!("standard@1.2.0 from {} (3 models)", tier_file("standard")),
        ]
    );
    let unloaded: Vec<_> = report.unloaded.iter().map(|t| t.tier.as_str()).collect();
    assert_eq!(unloaded, ["economy"]);
    assert_eq!(report.refused.len(), 2, "{report}");

    check(
        &registry,
        "standard-chat",
        usage(10_000, 2_000, 1_000),
        396_000,
        "standard@1.2.0",
    );
    check(
        &registry,
        "fixture-ok",
        usage(1_000, 0, 0),
        1_000,
        "fixture@1.0.0",
    );
    assert!(matches!(
        registry.price("economy-mini", usage(1, 0, 0)),
        Err(PricingError::UnknownModel { .. })
    ));

    // Fixing the files brings the new versions in; the kept ones go.
    dirs.deploy("credits-tier-standard", "standard");
    dirs.deploy("credits-fixture-gate-v2", "fixture");
    let report = registry.reload().unwrap();
    assert_eq!(
        loaded(&report),
        ["fixture@2.0.0", "standard@1.2.0"],
        "{report}"
    );
    assert!(report.kept.is_empty() && report.refused.is_empty() && report.unloaded.is_empty());
    check(
        &registry,
        "fixture-ok",
        usage(1_000, 0, 0),
        2_000,
        "fixture@2.0.0",
    );
}

#[test]
fn libraries_load_from_content_hash_copies() {
    let dirs = Dirs::with(&[
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
    ]);
    let (registry, _) = open(&dirs);
    let cached = || {
        let mut names: Vec<String> = std::fs::read_dir(dirs.cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let first = cached();
    assert_eq!(first.len(), 2, "{first:?}");
    for name in &first {
        let hash = name.strip_suffix(std::env::consts::DLL_SUFFIX).unwrap();
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }
    // Unchanged files reuse their copies; a new version adds one and overwrites none.
    registry.reload().unwrap();
    assert_eq!(cached(), first);
    dirs.deploy("credits-fixture-gate-v2", "fixture");
    registry.reload().unwrap();
    let after = cached();
    assert_eq!(after.len(), 3);
    assert!(first.iter().all(|name| after.contains(name)));
}

#[test]
fn pricing_from_many_threads_survives_repeated_reloads() {
    let dirs = Dirs::with(&[
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
    ]);
    let (registry, _) = open(&dirs);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut calls = 0_u64;
                    while !stop.load(Ordering::Relaxed) {
                        check(
                            &registry,
                            "standard-chat",
                            usage(10_000, 2_000, 1_000),
                            396_000,
                            "standard@1.2.0",
                        );
                        let p = registry.price("fixture-ok", usage(1_000, 0, 0)).unwrap();
                        let expected = match p.priced_by.as_str() {
                            "fixture@1.0.0" => 1_000,
                            "fixture@2.0.0" => 2_000,
                            other => panic!("priced by {other}"),
                        };
                        assert_eq!(p.cost_micro_credits, expected);
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        for round in 0..20 {
            let package = if round % 2 == 0 {
                "credits-fixture-gate-v2"
            } else {
                "credits-fixture-gate-v1"
            };
            dirs.deploy(package, "fixture");
            let report = registry.reload().unwrap();
            assert!(report.refused.is_empty(), "{report}");
        }
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            assert!(worker.join().unwrap() > 0);
        }
    });
}

#[test]
fn check_plugin_describes_a_tier_or_says_why_it_is_refused() {
    let report = check_plugin(&built_lib("credits-tier-standard")).expect("standard is valid");
    assert!(report.is_clean(), "{report}");
    let text = report.to_string();
    for needle in [
        "tier standard@1.2.0, ABI 1, 3 models",
        "standard-chat",
        "Standard Chat",
        "30000000",
        "150000000",
        // 40,000 × 30 + 60,000 × 3 + 2,000 × 150 = 1,680,000 µcr
        "1680000 µcr",
    ] {
        assert!(text.contains(needle), "{text}\nlacks {needle:?}");
    }

    // A valid plugin under a name the scan ignores: valid, with a warning.
    let fixture = check_plugin(&built_lib("credits-fixture-gate-v1")).unwrap();
    assert!(!fixture.file_name_matches && !fixture.is_clean());
    let text = fixture.to_string();
    assert!(
        text.contains("warning: the file name does not match"),
        "{text}"
    );
    let panic_line = text
        .lines()
        .rfind(|l| l.contains("fixture-panic "))
        .unwrap();
    assert!(
        panic_line.ends_with("FAILED: the plugin panicked (caught at the plugin boundary)"),
        "{text}"
    );

    let wrong_abi = built_lib("credits-fixture-wrong-abi");
    let refused = check_plugin(&wrong_abi).unwrap_err();
    assert_eq!(
        refused.reason,
        RefusalReason::AbiVersion {
            found: 99,
            expected: 1
        }
    );
    assert!(
        refused
            .to_string()
            .contains(&wrong_abi.display().to_string()),
        "{refused}"
    );

    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), b"not a library").unwrap();
    let refused = check_plugin(garbage.path()).unwrap_err();
    assert!(
        matches!(refused.reason, RefusalReason::NotALibrary(_)),
        "{refused}"
    );
    assert!(check_plugin(&built_dir().join("no-such-file.so")).is_err());
}

#[test]
fn an_in_place_overwrite_still_loads_the_new_version() {
    // Not the documented deploy, but the host must not be fooled by it: it loads from a copy
    // named by content, so the loader cannot hand back the old library for the same path.
    let dirs = Dirs::with(&[("credits-fixture-gate-v1", "fixture")]);
    let (registry, _) = open(&dirs);
    std::fs::copy(built_lib("credits-fixture-gate-v2"), dirs.path("fixture")).unwrap();
    let report = registry.reload().unwrap();
    assert_eq!(loaded(&report), ["fixture@2.0.0"], "{report}");
    check(
        &registry,
        "fixture-ok",
        usage(1_000, 0, 0),
        2_000,
        "fixture@2.0.0",
    );
}

#[test]
fn a_reload_that_cannot_read_the_directory_keeps_the_current_table() {
    let dirs = Dirs::with(&[("credits-tier-standard", "standard")]);
    let plugins = tempfile::tempdir().unwrap();
    let plugin_dir = plugins.path().join("plugins");
    std::fs::rename(dirs.plugins.path(), &plugin_dir).unwrap();
    let (registry, _) = PricingRegistry::open(&plugin_dir, dirs.cache.path()).unwrap();
    std::fs::rename(&plugin_dir, dirs.plugins.path()).unwrap();

    let err = registry.reload().unwrap_err();
    assert!(
        err.to_string().contains(&plugin_dir.display().to_string()),
        "{err}"
    );
    check(
        &registry,
        "standard-chat",
        usage(10_000, 2_000, 1_000),
        396_000,
        "standard@1.2.0",
    );
    assert!(PricingRegistry::open(&plugin_dir, dirs.cache.path()).is_err());
}

/// Found by review: a reload that took longer than its caller waited swapped its tiers in
/// later all the same. One past its deadline uses nothing it loaded; the next one does.
#[test]
fn a_reload_past_its_deadline_uses_nothing_it_loaded() {
    let dirs = Dirs::with(&[("credits-fixture-gate-v1", "fixture")]);
    let (registry, _) = open(&dirs);
    dirs.deploy("credits-fixture-gate-v2", "fixture");
    let past = Instant::now();
    assert!(matches!(
        registry.reload_before(Some(past)),
        Err(credits_pricing::RegistryError::TooLate)
    ));
    check(
        &registry,
        "fixture-ok",
        usage(1_000, 0, 0),
        1_000,
        "fixture@1.0.0",
    );
    let later = Instant::now() + Duration::from_secs(60);
    let report = registry.reload_before(Some(later)).unwrap();
    assert_eq!(loaded(&report), ["fixture@2.0.0"], "{report}");
}

/// Whether a price call was refused because its tier is disabled.
fn refused_as_stalled(err: &PricingError) -> bool {
    matches!(
        err,
        PricingError::PricingFailed {
            failure: PluginFailure::Stalled,
            ..
        }
    )
}

/// A tier whose call did not return in time is disabled (every model, at once) until a
/// reload loads it afresh; other tiers are untouched.
#[test]
fn a_stalled_tier_is_refused_until_the_next_reload() {
    let dirs = Dirs::with(&[
        ("credits-tier-standard", "standard"),
        ("credits-fixture-gate-v1", "fixture"),
    ]);
    let (registry, _) = open(&dirs);
    assert!(registry.stalled_tiers().is_empty());
    let err = registry
        .tier_of("fixture-gated")
        .unwrap()
        .stall("fixture-gated");
    let stalled: Vec<String> = registry
        .stalled_tiers()
        .into_iter()
        .map(|t| t.tier)
        .collect();
    assert_eq!(stalled, ["fixture"]);
    assert!(
        matches!(err, PricingError::PricingFailed { failure: PluginFailure::Stalled, ref file, .. } if file == "libcredits_tier_fixture.so"),
        "{err:?}"
    );
    let refused = registry.price("fixture-ok", usage(1000, 0, 0)).unwrap_err();
    assert!(refused_as_stalled(&refused), "{refused:?}");
    registry.price("standard-chat", usage(1000, 0, 0)).unwrap();
    assert!(matches!(
        registry.tier_of("no-such-model"),
        Err(PricingError::UnknownModel { .. })
    ));
    registry.reload().unwrap();
    registry.price("fixture-ok", usage(1000, 0, 0)).unwrap();
    assert!(registry.stalled_tiers().is_empty());
}

/// Found by review: a call that hung across a reload stalled the load it entered, no
/// longer the registry's, and the reload's load of the same file stayed enabled: new calls
/// kept entering the hanging library. Every load of the library is disabled.
#[test]
fn a_stall_found_after_a_reload_disables_the_reloaded_tier() {
    let dirs = Dirs::with(&[("credits-fixture-gate-v1", "fixture")]);
    let (registry, _) = open(&dirs);
    let before = registry.tier_of("fixture-gated").unwrap();
    registry.reload().unwrap();
    before.stall("fixture-gated");
    let refused = registry.price("fixture-ok", usage(1000, 0, 0)).unwrap_err();
    assert!(refused_as_stalled(&refused), "{refused:?}");
    assert_eq!(registry.stalled_tiers().len(), 1);
    // Nothing is inside it: the next reload enables it again.
    registry.reload().unwrap();
    registry.price("fixture-ok", usage(1000, 0, 0)).unwrap();
}

/// Found by review: a reload enabled a stalled tier's same library again while its stuck
/// call still held a thread, so each reload of a plugin that hangs could lose one more
/// pricing thread and slot. The same file stays disabled until that call returns; a new
/// file is loaded enabled.
#[test]
fn a_reload_keeps_the_same_library_disabled_while_its_stalled_call_is_inside() {
    let dirs = Dirs::with(&[("credits-fixture-gate-v1", "fixture")]);
    let (registry, _) = open(&dirs);
    let stalled = |registry: &PricingRegistry| -> Vec<String> {
        registry
            .stalled_tiers()
            .into_iter()
            .map(|t| t.plugin_version)
            .collect()
    };
    while_stuck(&registry, || {
        for _ in 0..2 {
            registry.reload().unwrap();
            assert_eq!(
                stalled(&registry),
                ["1.0.0"],
                "the same file, its call still inside"
            );
        }
        assert!(registry.price("fixture-ok", usage(1000, 0, 0)).is_err());
    });
    registry.reload().unwrap();
    assert!(stalled(&registry).is_empty(), "its call returned");
    registry.price("fixture-ok", usage(1000, 0, 0)).unwrap();
    // A stalled tier with a call inside is replaced by a new file at once.
    while_stuck(&registry, || {
        dirs.deploy("credits-fixture-gate-v2", "fixture");
        registry.reload().unwrap();
        assert!(stalled(&registry).is_empty());
        registry.price("fixture-ok", usage(1000, 0, 0)).unwrap();
        // Rolled back to the stuck file: disabled again, its call still inside.
        dirs.deploy("credits-fixture-gate-v1", "fixture");
        registry.reload().unwrap();
        assert_eq!(stalled(&registry), ["1.0.0"], "the stuck file, restored");
    });
    registry.reload().unwrap();
    assert!(stalled(&registry).is_empty(), "its call returned");
}

/// Runs `then` while a `fixture-gated` call is stuck inside the plugin and its tier has
/// been stalled; lets the call return afterwards.
fn while_stuck(registry: &PricingRegistry, then: impl FnOnce()) {
    let key = gate_key();
    std::fs::write(gate_file(key, "armed"), b"").unwrap();
    std::thread::scope(|s| {
        let stuck = s.spawn(|| registry.price("fixture-gated", usage(key, 0, 0)));
        wait_for("the call to enter the plugin", || {
            gate_file(key, "entered").exists()
        });
        registry
            .tier_of("fixture-gated")
            .unwrap()
            .stall("fixture-gated");
        then();
        std::fs::write(gate_file(key, "release"), b"").unwrap();
        stuck.join().unwrap().unwrap();
    });
    for suffix in ["armed", "entered", "release"] {
        let _ = std::fs::remove_file(gate_file(key, suffix));
    }
}

/// Found by review: a new file that sorts earlier and also lists another tier's model took
/// that model over on a reload, and the tier serving it, unchanged, was refused and
/// unloaded. The files serving now claim first: the new file is refused, and its tier keeps
/// serving its previous version (SPEC 4).
#[test]
fn a_new_file_cannot_take_a_model_from_a_tier_that_keeps_serving() {
    let dirs = Dirs::with(&[
        ("credits-tier-economy", "economy"),
        ("credits-tier-standard", "standard"),
    ]);
    let (registry, _) = open(&dirs);
    // `economy` sorts before `standard`; the copycat lists `standard-chat`.
    dirs.deploy("credits-fixture-copycat", "economy");
    let report = registry.reload().unwrap();
    assert_eq!(loaded(&report), ["standard@1.2.0"], "{report}");
    let kept: Vec<_> = report.kept.iter().map(|t| t.tier.as_str()).collect();
    assert_eq!(kept, ["economy"], "{report}");
    assert_eq!(report.refused.len(), 1, "{report}");
    assert!(report.refused[0].file.ends_with(tier_file("economy")));
    assert!(
        matches!(&report.refused[0].reason, RefusalReason::ModelTaken { model, .. } if model == "standard-chat"),
        "{report}"
    );
    assert!(report.unloaded.is_empty(), "{report}");
    standard_serves_chat(&registry);
    assert!(registry.price("economy-mini", usage(1, 0, 0)).is_ok());
    assert!(matches!(
        registry.price("copycat-own", usage(1, 0, 1)),
        Err(PricingError::UnknownModel { .. })
    ));
    let tiers: Vec<_> = registry.tiers().into_iter().map(|t| t.tier).collect();
    assert_eq!(tiers, ["economy", "standard"], "in file-name order");
}

/// Found by review of the fix above: the previous version of a tier whose new file was
/// refused claimed only after every new file, so a new file listing one of its models took
/// it and the whole tier was unloaded. It claims with the files serving now.
#[test]
fn a_tier_whose_new_file_is_refused_keeps_its_models_from_a_new_file() {
    let dirs = Dirs::with(&[
        ("credits-tier-economy", "economy"),
        ("credits-tier-standard", "standard"),
    ]);
    let (registry, _) = open(&dirs);
    dirs.deploy_bytes(b"truncated upload", "standard");
    // A new tier, sorting first, that lists `standard-chat`.
    dirs.deploy("credits-fixture-copycat", "aa_copycat");
    let report = registry.reload().unwrap();
    let kept: Vec<_> = report.kept.iter().map(|t| t.tier.as_str()).collect();
    assert_eq!(kept, ["standard"], "{report}");
    assert!(report.unloaded.is_empty(), "{report}");
    let refused: Vec<_> = report
        .refused
        .iter()
        .map(|r| r.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        refused,
        [tier_file("aa_copycat"), tier_file("standard")],
        "{report}"
    );
    standard_serves_chat(&registry);
    assert!(matches!(
        registry.price("copycat-own", usage(1, 0, 1)),
        Err(PricingError::UnknownModel { .. })
    ));
}

/// Found by review: a changed file (a valid new version) and a new file sorting before it
/// that lists one of its models were deployed together. The new file took the model, the
/// new version was refused, the old one could not claim its model either, and the tier was
/// unloaded. New versions of loaded files claim before new files.
#[test]
fn a_new_version_claims_its_models_before_a_new_file() {
    let dirs = Dirs::with(&[("credits-fixture-gate-v1", "standard")]);
    let (registry, _) = open(&dirs);
    dirs.deploy("credits-tier-standard", "standard");
    dirs.deploy("credits-fixture-copycat", "aa_copycat");
    let report = registry.reload().unwrap();
    assert_eq!(loaded(&report), ["standard@1.2.0"], "{report}");
    assert!(report.kept.is_empty(), "{report}");
    assert_eq!(report.refused.len(), 1, "{report}");
    assert!(report.refused[0].file.ends_with(tier_file("aa_copycat")));
    standard_serves_chat(&registry);
}

/// Found by review: two loaded files changed in one reload, the new economy build listing a
/// standard model by mistake (the copycat) and a valid new standard build. Both were new
/// versions, claimed in file-name order: economy took `standard-chat`, the new standard
/// was refused, its previous version could not claim its model either, and standard was
/// unloaded (and, a new file from then on, refused on every later reload). A new version
/// that takes what another file served claims after the ones that do not.
#[test]
fn a_new_version_cannot_take_a_model_from_another_new_version() {
    let dirs = Dirs::with(&[
        ("credits-tier-economy", "economy"),
        ("credits-tier-standard", "standard"),
    ]);
    let (registry, _) = open(&dirs);
    dirs.deploy("credits-fixture-copycat", "economy");
    // Another build of standard: the same library with one more byte at its end.
    let mut rebuilt = std::fs::read(built_lib("credits-tier-standard")).unwrap();
    rebuilt.push(0);
    dirs.deploy_bytes(&rebuilt, "standard");
    let report = registry.reload().unwrap();
    assert_eq!(loaded(&report), ["standard@1.2.0"], "{report}");
    let kept: Vec<_> = report.kept.iter().map(|t| t.tier.as_str()).collect();
    assert_eq!(kept, ["economy"], "{report}");
    assert_eq!(report.refused.len(), 1, "{report}");
    assert!(report.refused[0].file.ends_with(tier_file("economy")));
    assert!(report.unloaded.is_empty(), "{report}");
    standard_serves_chat(&registry);
    assert!(registry.price("economy-mini", usage(1, 0, 0)).is_ok());
}
