//! Builds the guests for `wasm32-wasip2` with a nested cargo into this crate's `OUT_DIR`
//! (its own target folder, so it never waits on the outer build's lock), and writes one
//! path constant per component.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// (constant name, package, features, output file name).
const GUESTS: &[(&str, &str, &str, &str)] = &[
    ("ECHO", "echo", "", "echo"),
    ("ROUTER", "router", "", "router"),
    ("TRIAGE", "triage", "", "triage"),
    ("PROBE_A", "gust-probe", "", "gust_probe"),
    ("PROBE_B", "gust-probe", "marker-b", "gust_probe"),
    ("AGENT_0_1_0", "gust-guest-0-1-0", "", "gust_guest_0_1_0"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..");
    for watched in [
        "sdk",
        "wit",
        "examples",
        "tests/guests/probe",
        "tests/guests/agent-0-1-0",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("target");
    ensure_target_installed();

    let mut constants = String::new();
    for (constant, package, features, file) in GUESTS {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&root)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                TARGET,
                "--package",
                package,
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            // The outer build's flags are for the host, not for wasm.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET");
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        let status = cmd.status().expect("running cargo to build a guest");
        assert!(
            status.success(),
            "building guest `{package}` failed ({status})"
        );
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{file}.wasm"));
        // Builds of one package with other features overwrite the same file: copy it out.
        let kept = out_dir.join(format!("{}.wasm", constant.to_lowercase()));
        std::fs::copy(&built, &kept)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), kept.display()));
        constants.push_str(&format!(
            "/// `{package}`{} built for {TARGET}.\npub const {constant}: &str = {:?};\n",
            if features.is_empty() {
                String::new()
            } else {
                format!(" with `{features}`")
            },
            kept.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("guests.rs"), constants).unwrap();
}

/// A toolchain that was installed before the project pinned it may lack the wasm target
/// that `rust-toolchain.toml` lists; add it rather than fail with "can't find crate for std".
fn ensure_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("running rustc --print sysroot");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .exists()
    {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .unwrap_or_else(|e| {
            panic!("the {TARGET} target is missing and rustup could not be run to add it ({e}); run `rustup target add {TARGET}`")
        });
    assert!(
        status.success(),
        "`rustup target add {TARGET}` failed ({status})"
    );
}
