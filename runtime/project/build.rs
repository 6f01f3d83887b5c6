//! Lists the files `gust new` writes into a project — the agent world and each language's
//! SDK — from the repository's folders, so a file added to an SDK is carried by the binary
//! without anyone listing it by hand. The list (`embedded_files.rs` in `OUT_DIR`) holds
//! `include_str!` of each file; `src/embedded.rs` includes it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.join("../..");
    let templates = manifest.join("templates/rust");

    let mut out = String::new();
    let wit = under(&root.join("wit"), "wit", &["wit", "md"]);
    write_list(
        &mut out,
        "WIT",
        "The agent world and the WASI packages it uses, as `wit/` in every project.",
        &wit,
    );

    // The repository's SDK manifests inherit from its workspace; projects get their own.
    let mut rust = vec![(
        "sdk/Cargo.toml".to_owned(),
        templates.join("sdk.Cargo.toml"),
    )];
    rust.extend(under(&root.join("sdk/src"), "sdk/src", &["rs"]));
    rust.push((
        "sdk/macros/Cargo.toml".to_owned(),
        templates.join("sdk-macros.Cargo.toml"),
    ));
    rust.extend(under(
        &root.join("sdk/macros/src"),
        "sdk/macros/src",
        &["rs"],
    ));
    write_list(
        &mut out,
        "RUST_SDK",
        "The Rust SDK as a standalone crate in `sdk/`.",
        &rust,
    );

    let python = under(&root.join("sdk/python/gust"), "sdk/gust", &["py"]);
    write_list(
        &mut out,
        "PYTHON_SDK",
        "The Python SDK package, in `sdk/gust/`.",
        &python,
    );

    let js = vec![("sdk/gust.js".to_owned(), root.join("sdk/js/gust.js"))];
    write_list(
        &mut out,
        "JS_SDK",
        "The JavaScript SDK module, as `sdk/gust.js`.",
        &js,
    );

    for watched in [
        root.join("wit"),
        root.join("sdk/src"),
        root.join("sdk/macros/src"),
        root.join("sdk/python/gust"),
        root.join("sdk/js/gust.js"),
        templates,
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(dest.join("embedded_files.rs"), out).expect("writing the file list");
}

/// Every file under `dir` (recursively) with one of `extensions`, as (path in the project,
/// path on disk), sorted so the list does not depend on the file system's order.
fn under(dir: &Path, project_dir: &str, extensions: &[&str]) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_owned(), project_dir.to_owned())];
    while let Some((dir, project_dir)) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("a directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() {
                // Byte-code caches of a local Python run are not part of the SDK.
                if name != "__pycache__" {
                    pending.push((path, format!("{project_dir}/{name}")));
                }
            } else if path
                .extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
            {
                found.push((format!("{project_dir}/{name}"), path));
            }
        }
    }
    found.sort();
    assert!(!found.is_empty(), "no files found in {}", dir.display());
    found
}

fn write_list(out: &mut String, name: &str, doc: &str, files: &[(String, PathBuf)]) {
    writeln!(out, "/// {doc}").unwrap();
    writeln!(out, "pub(crate) const {name}: &[File] = &[").unwrap();
    for (in_project, on_disk) in files {
        let on_disk = on_disk
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", on_disk.display()));
        writeln!(
            out,
            "    ({in_project:?}, include_str!({:?})),",
            on_disk.display().to_string()
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
}
