//! Checks that the `gust` binary built alone (`cargo build -p gust-cli`, as scripts/setup and
//! scripts/quickstart do) resolves every dependency with the features the test build
//! (`cargo test --workspace`) gives it. A crate's features are part of its build's identity:
//! one crate resolved with fewer features is built again, and so is everything above it, which
//! for a crate under wasmtime means wasmtime and cranelift, about 15 minutes of a cold CI run.
//! runtime/cli/Cargo.toml pins the features the test build adds; this notices when a change
//! of dependencies needs another pin.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The lines of `cargo tree`'s flat listing, `name vX.Y.Z [feature,feature]`, without the
/// markers it adds to repeated and proc-macro entries.
fn listing(tree: &str) -> BTreeSet<String> {
    tree.lines()
        .map(|line| {
            line.trim()
                .trim_end_matches(" (*)")
                .trim_end_matches(" (proc-macro)")
                .to_owned()
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// The entries of `binary`'s listing that the test build's does not have: each is a
/// dependency the binary's build resolves with other features than the test build.
pub fn unshared(binary: &str, tests: &str) -> Vec<String> {
    let tests = listing(tests);
    listing(binary)
        .into_iter()
        .filter(|entry| !tests.contains(entry))
        .collect()
}

/// `cargo tree` in `root` with `args`, as the flat listing `unshared` reads.
///
/// # Errors
/// When cargo cannot be run or fails.
pub fn cargo_tree(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(root)
        .args([
            "tree",
            "--locked",
            "--prefix",
            "none",
            "--format",
            "{p} [{f}]",
        ])
        .args(args)
        .output()
        .with_context(|| format!("running {cargo} tree"))?;
    if !output.status.success() {
        bail!(
            "cargo tree {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_builds_with_the_test_builds_features() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let binary = cargo_tree(&root, &["-p", "gust-cli", "-e", "normal,build"]).unwrap();
        let tests = cargo_tree(&root, &["--workspace", "-e", "normal,build,dev"]).unwrap();
        assert!(
            binary.lines().count() > 100 && binary.contains("wasmtime v"),
            "cargo tree listed too little to compare:\n{binary}"
        );
        let unshared = unshared(&binary, &tests);
        assert!(
            unshared.is_empty(),
            "`cargo build -p gust-cli` resolves these crates with other features than \
             `cargo test --workspace`, so CI builds them and everything above them twice; pin \
             the test build's features in runtime/cli/Cargo.toml:\n{}",
            unshared.join("\n")
        );
    }

    #[test]
    fn a_crate_with_fewer_features_is_reported() {
        let tests = "wasmtime v48.0.8 [std]\nindexmap v2.14.2 [default,serde,std] (*)\n";
        let binary = "wasmtime v48.0.8 [std] (*)\nindexmap v2.14.2 [serde,std]\n";
        assert_eq!(unshared(binary, tests), ["indexmap v2.14.2 [serde,std]"]);
        let pinned = "wasmtime v48.0.8 [std]\nindexmap v2.14.2 [default,serde,std]\n";
        assert!(unshared(pinned, tests).is_empty());
    }
}
