//! Checks that the `gust` binary built on its own shares every dependency's build with the
//! test build. scripts/setup builds the binary before the tests (`cargo run --bin gust`,
//! planned here as `cargo build --bin gust`: `cargo run` prints no plan), scripts/quickstart
//! builds it alone (`cargo build -p gust-cli`), and `cargo test --workspace` and the
//! PostgreSQL pass (`--test e2e`) build it with the tests. A dependency is built again when
//! any of its build's inputs differ: its features (other members' dev-dependencies add some),
//! or its profile (build scripts and proc-macros get other debug info unless the profile says
//! otherwise). Everything above it is then built again too, which for a crate under wasmtime
//! means wasmtime and cranelift, about 15 minutes of a cold CI run.
//! runtime/cli/Cargo.toml pins the features and the workspace's `[profile.dev.build-override]`
//! the debug info; this notices when a change of dependencies needs another pin.
//!
//! It compares cargo's build plans (`--unit-graph`), which name exactly those inputs. The
//! flag is unstable, so the pinned stable cargo is asked for it with `RUSTC_BOOTSTRAP=1`;
//! printing the plan builds nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// One dependency's build as the plan describes it, without what does not change the build
/// (the profile's name: the test build calls it `test`, with the same settings as `dev`).
fn units(plan: &str) -> anyhow::Result<BTreeSet<String>> {
    let plan: Value = serde_json::from_str(plan).context("reading cargo's build plan")?;
    let units = plan["units"]
        .as_array()
        .context("cargo's build plan has no units")?;
    let mut builds = BTreeSet::new();
    for unit in units {
        let package = unit["pkg_id"].as_str().context("a unit without pkg_id")?;
        // The workspace's own crates are built per use and cost seconds.
        if package.starts_with("path+") {
            continue;
        }
        let package = package.rsplit('#').next().unwrap_or(package);
        let mut profile = unit["profile"].clone();
        if let Some(profile) = profile.as_object_mut() {
            profile.remove("name");
        }
        builds.insert(format!(
            "{package} {target} ({mode}, {platform}) features {features} profile {profile}",
            target = unit["target"]["name"],
            mode = unit["mode"],
            platform = unit["platform"],
            features = unit["features"],
        ));
    }
    Ok(builds)
}

/// The dependency builds of `binary`'s plan that `tests`' plan does not have.
///
/// # Errors
/// When a plan is not cargo's unit graph.
pub fn unshared(binary: &str, tests: &str) -> anyhow::Result<Vec<String>> {
    let tests = units(tests)?;
    Ok(units(binary)?
        .into_iter()
        .filter(|unit| !tests.contains(unit))
        .collect())
}

/// Cargo's build plan for `args` (a cargo command and its selection) in `root`.
///
/// # Errors
/// When cargo cannot be run or fails.
pub fn build_plan(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(args)
        .args(["--locked", "--unit-graph", "-Z", "unstable-options"])
        .output()
        .with_context(|| format!("running {cargo}"))?;
    if !output.status.success() {
        bail!(
            "cargo {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).context("cargo's build plan is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_shares_its_dependencies_builds_with_the_tests() {
        let root = crate::tests::repository_root();
        let tests = build_plan(&root, &["test", "--workspace", "--no-run"]).unwrap();
        for binary in [
            &["build", "--bin", "gust"][..],
            &["build", "-p", "gust-cli"],
            &["test", "--workspace", "--test", "e2e", "--no-run"],
        ] {
            let plan = build_plan(&root, binary).unwrap();
            assert!(
                units(&plan).unwrap().len() > 300 && plan.contains("wasmtime@"),
                "cargo {binary:?} planned too little to compare"
            );
            let reported = unshared(&plan, &tests).unwrap();
            assert!(
                reported.is_empty(),
                "`cargo {}` builds these dependencies otherwise than `cargo test --workspace`, \
                 so CI builds them, and everything above them, twice; pin the test build's \
                 features in runtime/cli/Cargo.toml, or give the profiles the same settings \
                 (Cargo.toml's [profile.dev.build-override]):\n{}",
                binary.join(" "),
                reported.join("\n")
            );
        }
    }

    fn plan(units: &[(&str, &str, &str, &str)]) -> String {
        let units: Vec<Value> = units
            .iter()
            .map(|(package, features, debuginfo, profile)| {
                serde_json::json!({
                    "pkg_id": package,
                    "target": {"name": "lib"},
                    "mode": "build",
                    "platform": null,
                    "features": features.split(',').filter(|f| !f.is_empty()).collect::<Vec<_>>(),
                    "profile": {"name": profile, "opt_level": "2", "debuginfo": debuginfo},
                })
            })
            .collect();
        serde_json::json!({"version": 1, "units": units}).to_string()
    }

    #[test]
    fn a_dependency_built_with_other_features_or_debug_info_is_reported() {
        let tests = plan(&[
            (
                "registry+x#zerocopy@0.8.64",
                "derive,simd",
                "line-tables-only",
                "test",
            ),
            (
                "registry+x#unicode-ident@1.0.27",
                "",
                "line-tables-only",
                "test",
            ),
            (
                "path+file:///gust#gust-cli@0.1.0",
                "",
                "line-tables-only",
                "test",
            ),
        ]);
        let binary = plan(&[
            (
                "registry+x#zerocopy@0.8.64",
                "simd",
                "line-tables-only",
                "dev",
            ),
            ("registry+x#unicode-ident@1.0.27", "", "0", "dev"),
            ("path+file:///gust#gust-cli@0.1.0", "", "0", "dev"),
        ]);
        let reported = unshared(&binary, &tests).unwrap();
        assert_eq!(reported.len(), 2, "{reported:#?}");
        assert!(
            reported[0].starts_with("unicode-ident@1.0.27 "),
            "{reported:#?}"
        );
        assert!(reported[1].starts_with("zerocopy@0.8.64 "), "{reported:#?}");

        let pinned = plan(&[
            (
                "registry+x#zerocopy@0.8.64",
                "derive,simd",
                "line-tables-only",
                "dev",
            ),
            (
                "registry+x#unicode-ident@1.0.27",
                "",
                "line-tables-only",
                "dev",
            ),
        ]);
        assert_eq!(unshared(&pinned, &tests).unwrap(), Vec::<String>::new());
    }
}
