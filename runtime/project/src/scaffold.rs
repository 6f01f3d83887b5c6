//! `gust new`: a project that builds as it is, in the language the author knows.
//!
//! The SDK and the agent world are written into the project (`sdk/`, `wit/`) rather than
//! fetched: gust's SDKs are not on crates.io, PyPI or npm, and a project that carries them
//! builds offline and the same way on every machine.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::embedded::{self, File};
use super::toolchain::{COMPONENTIZE_JS, COMPONENTIZE_PY};
use super::{Language, MANIFEST};

/// The Rust release Rust projects pin (the one gust is tested with).
const RUST_CHANNEL: &str = "1.95.0";

const README: &str = include_str!("../templates/README.md");
const GITIGNORE: &str = "/build\n/target\n__pycache__/\n";

/// Writes a new project for the agent `name` into `parent/name`; returns its folder.
///
/// The folder appears whole or not at all: the files are written into a temporary folder
/// beside it, which is renamed at the end.
pub fn new_project(parent: &Path, name: &str, language: Language) -> anyhow::Result<PathBuf> {
    if !gust_model::valid_agent_name(name) {
        bail!(
            "`{name}` is not a valid agent name: use lower-case letters, digits and `-`, \
             starting with a letter or digit, at most 63 characters"
        );
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists; pick another name or move it away",
            dir.display()
        );
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".gust-new-{name}-"))
        .tempdir_in(parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;
    for (path, text) in files(name, language) {
        let target = staging.path().join(path);
        if let Some(folder) = target.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &dir) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e).with_context(|| format!("creating {}", dir.display()));
    }
    Ok(dir)
}

/// Every file of a new project: (path inside the project, text).
fn files(name: &str, language: Language) -> Vec<(&'static str, String)> {
    let fill = |template: &str| {
        template
            .replace("{{agent}}", name)
            .replace("{{rust_channel}}", RUST_CHANNEL)
    };
    let (source, language_name, language_notes, build_notes) = notes(language);
    let readme = fill(README)
        .replace("{{language}}", language_name)
        .replace("{{source}}", source)
        .replace("{{language_notes}}", &language_notes)
        .replace("{{build_notes}}", &build_notes);
    let mut manifest = format!(
        "# A gust agent project: `gust build` reads this file.\nname = \"{name}\"\nlanguage = \"{}\"\n",
        language.as_str()
    );
    let mut files = vec![("README.md", readme), (".gitignore", GITIGNORE.to_owned())];
    let copied = |list: &[File]| -> Vec<(&'static str, String)> {
        list.iter().map(|(p, t)| (*p, (*t).to_owned())).collect()
    };
    files.extend(copied(embedded::WIT));
    match language {
        Language::Rust => {
            files.push((
                "Cargo.toml",
                fill(include_str!("../templates/rust/Cargo.toml")),
            ));
            files.push((
                "rust-toolchain.toml",
                fill(include_str!("../templates/rust/rust-toolchain.toml")),
            ));
            files.push(("src/lib.rs", fill(include_str!("../templates/rust/lib.rs"))));
            files.extend(copied(embedded::RUST_SDK));
        }
        Language::Python => {
            manifest.push_str("entry = \"app.py\"\n");
            files.push(("app.py", fill(include_str!("../templates/python/app.py"))));
            files.extend(copied(embedded::PYTHON_SDK));
        }
        Language::Js => {
            manifest.push_str("entry = \"app.js\"\n");
            files.push(("app.js", fill(include_str!("../templates/js/app.js"))));
            files.extend(copied(embedded::JS_SDK));
        }
    }
    files.push((MANIFEST, manifest));
    files
}

/// (source file, language name, notes on writing, notes on building) for the README.
fn notes(language: Language) -> (&'static str, &'static str, String, String) {
    match language {
        Language::Rust => (
            "src/lib.rs",
            "Rust",
            "Return `Error::invalid_input(…)` for a bad input (HTTP 422) and `Error::failed(…)` \
             when the flow cannot finish (HTTP 502); `gust_sdk::http` calls other services."
                .to_owned(),
            "This runs `cargo build --release --target wasm32-wasip2`; the Rust toolchain and the \
             target come from `rust-toolchain.toml` (rustup installs them on first use)."
                .to_owned(),
        ),
        Language::Python => (
            "app.py",
            "Python",
            "Raise `gust.InvalidInput` for a bad input (HTTP 422) and `gust.Failed` when the flow \
             cannot finish (HTTP 502); any other exception is answered as `failed` with its type, \
             message and traceback. `gust.http` calls other services. Import everything at module \
             level: componentize-py runs the module once at build time and snapshots it, and a \
             running agent has no file system to import from."
                .to_owned(),
            format!(
                "This runs componentize-py {COMPONENTIZE_PY}, which gust installs on first use \
                 into its toolchain cache (`~/.cache/gust/toolchains`; it needs `python3` with \
                 `venv`). The first build takes a minute; the component is about 18 MiB."
            ),
        ),
        Language::Js => (
            "app.js",
            "JavaScript",
            "Throw `InvalidInput` for a bad input (HTTP 422) and `Failed` when the flow cannot \
             finish (HTTP 502); anything else thrown is answered as `failed` with its message \
             and stack. Call other services with `fetch` (the one from `./sdk/gust.js` explains \
             failures better)."
                .to_owned(),
            format!(
                "This runs componentize-js {COMPONENTIZE_JS}, which gust installs on first use \
                 with `npm ci` into its toolchain cache (`~/.cache/gust/toolchains`; it needs \
                 Node.js and npm). The component is about 12 MiB."
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_written_whole_and_never_over_another() {
        let parent = tempfile::tempdir().unwrap();
        let dir = new_project(parent.path(), "hello", Language::Python).unwrap();
        let manifest = super::super::Manifest::read(&dir).unwrap();
        assert_eq!(
            (manifest.name.as_str(), manifest.language),
            ("hello", Language::Python)
        );
        for file in [
            "app.py",
            "README.md",
            "sdk/gust/__init__.py",
            "wit/agent.wit",
            "wit/deps/http.wit",
        ] {
            assert!(dir.join(file).is_file(), "{file} is missing");
        }
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(
            readme.contains("gust run hello '{\"name\": \"Ada\"}'"),
            "{readme}"
        );
        assert!(!has_placeholder(&readme), "a placeholder is left: {readme}");

        let again = new_project(parent.path(), "hello", Language::Js).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        assert!(
            !dir.join("app.js").exists(),
            "the existing project is untouched"
        );

        let bad = new_project(parent.path(), "Hello_World", Language::Rust).unwrap_err();
        assert!(bad.to_string().contains("not a valid agent name"), "{bad}");
        let left: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["hello"], "no staging folders are left behind");
    }

    #[test]
    fn every_language_gets_its_sdk_and_entry() {
        for (language, entry, sdk) in [
            (Language::Rust, "src/lib.rs", "sdk/macros/src/lib.rs"),
            (Language::Python, "app.py", "sdk/gust/http.py"),
            (Language::Js, "app.js", "sdk/gust.js"),
        ] {
            let files = files("greeter", language);
            let names: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
            assert!(
                names.contains(&entry) && names.contains(&sdk),
                "{language:?}: {names:?}"
            );
            for (path, text) in &files {
                assert!(
                    !has_placeholder(text),
                    "{language:?}: a placeholder is left in {path}"
                );
            }
        }
        let rust = files("greeter", Language::Rust);
        let cargo = &rust.iter().find(|(p, _)| *p == "Cargo.toml").unwrap().1;
        assert!(cargo.contains("name = \"greeter\""), "{cargo}");
    }

    /// A `{{name}}` left unfilled (the SDK sources have other `{{`, in format strings).
    fn has_placeholder(text: &str) -> bool {
        text.split("{{").skip(1).any(|rest| {
            rest.split_once("}}").is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
        })
    }
}
