//! Agent projects on the author's machine: `gust new` writes one, `gust build` turns it into
//! a component with the language's toolchain.
//!
//! A project is a folder with a `gust.toml` naming the agent and its language. Python and
//! JavaScript projects are built with componentize-py and componentize-js (pinned, installed
//! on first use, see [`toolchain`]); Rust projects with cargo, whose toolchain and wasm target
//! come from the project's `rust-toolchain.toml`. Every build ends in `build/<agent>.wasm`.

mod embedded;
mod freshness;
mod scaffold;
pub mod toolchain;

use std::io::Write;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde::Deserialize;

pub use freshness::{component_path, needs_build};
pub use scaffold::new_project;
pub use toolchain::{Tool, Toolchains};

/// The file that makes a folder a gust project.
pub const MANIFEST: &str = "gust.toml";

/// The languages `gust new` and `gust build` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Rust, with the gust SDK crate and cargo.
    Rust,
    /// Python, with the gust SDK package and componentize-py.
    Python,
    /// JavaScript, with the gust SDK module and componentize-js.
    Js,
}

impl Language {
    /// The name used in `gust.toml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::Js => "js",
        }
    }
}

/// `gust.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The agent's name: the component is `build/<name>.wasm`.
    pub name: String,
    /// The project's language.
    pub language: Language,
    /// The module the component is made from (Python and JavaScript): `app.py`, `app.js`.
    #[serde(default)]
    pub entry: Option<PathBuf>,
    /// Where the SDK is, relative to the project (default `sdk`).
    #[serde(default = "default_sdk")]
    pub sdk: PathBuf,
    /// Where the agent world is, relative to the project (default `wit`).
    #[serde(default = "default_wit")]
    pub wit: PathBuf,
}

fn default_sdk() -> PathBuf {
    PathBuf::from("sdk")
}

fn default_wit() -> PathBuf {
    PathBuf::from("wit")
}

impl Manifest {
    /// Reads `gust.toml` in `project`.
    pub fn read(project: &Path) -> anyhow::Result<Self> {
        let path = project.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no {MANIFEST} in {}: `gust build` runs in a project made by \
                 `gust new <agent> --lang rust|python|js`",
                project.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let manifest: Self =
            toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        if !gust_model::valid_agent_name(&manifest.name) {
            bail!(
                "{}: `name = {:?}` is not a valid agent name (lower-case letters, digits and \
                 `-`, at most 63)",
                path.display(),
                manifest.name
            );
        }
        Ok(manifest)
    }
}

/// Where the tools' own output goes while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutput {
    /// To this process's standard error, as it happens (for people).
    Stderr,
    /// Kept, and shown only in the error when the build fails (for tests and scripts).
    Captured,
}

/// Builds the project in `project`; returns the path of the component.
pub fn build(
    project: &Path,
    toolchains: &Toolchains,
    output: ToolOutput,
    progress: &mut dyn Write,
) -> anyhow::Result<PathBuf> {
    let project = project
        .canonicalize()
        .with_context(|| format!("opening {}", project.display()))?;
    let manifest = Manifest::read(&project)?;
    let out_dir = project.join("build");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let target = component_path(&project, &manifest.name);
    // Tools write their output bit by bit: build beside it and rename, so `build/<agent>.wasm`
    // is always a whole component (the last good one when a build fails).
    let partial = out_dir.join(format!(".{}.wasm.partial", manifest.name));
    let _ = std::fs::remove_file(&partial);

    match manifest.language {
        Language::Rust => {
            let built = build_rust(&project, output)?;
            std::fs::copy(&built, &partial)
                .with_context(|| format!("copying {}", built.display()))?;
        }
        Language::Python => {
            let tool = toolchains.ensure(Tool::ComponentizePy, progress)?;
            build_python(&project, &manifest, &tool, &partial, output)?;
        }
        Language::Js => {
            let tool = toolchains.ensure(Tool::ComponentizeJs, progress)?;
            build_js(&project, &manifest, &tool, &partial, output)?;
        }
    }
    let size = std::fs::metadata(&partial)
        .map(|m| m.len())
        .with_context(|| format!("the build wrote no component ({})", partial.display()))?;
    if size == 0 {
        bail!("the build wrote an empty component");
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("renaming into {}", target.display()))?;
    Ok(target)
}

fn build_rust(project: &Path, output: ToolOutput) -> anyhow::Result<PathBuf> {
    let mut command = Command::new("cargo");
    command.current_dir(project).args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--message-format=json-render-diagnostics",
    ]);
    // Cargo's messages (JSON) say where the library went, wherever the target folder is.
    let stdout = run_tool(&mut command, output, true)?;
    let mut found = Vec::new();
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_cdylib = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if message["reason"] == "compiler-artifact" && is_cdylib {
            let files = message["filenames"].as_array().into_iter().flatten();
            found.extend(
                files
                    .filter_map(|f| f.as_str())
                    .filter(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from),
            );
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            bail!("cargo built no component: the package needs `[lib] crate-type = [\"cdylib\"]`")
        }
        many => bail!("cargo built several components ({many:?}); a project builds one"),
    }
}

fn build_python(
    project: &Path,
    manifest: &Manifest,
    tool: &Path,
    out: &Path,
    output: ToolOutput,
) -> anyhow::Result<()> {
    let entry_rel = manifest.entry.as_deref().unwrap_or(Path::new("app.py"));
    let entry = existing(project, entry_rel, "", "the entry module")?;
    let module = entry
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|_| entry.extension().is_some_and(|e| e == "py"))
        .with_context(|| format!("the entry {} is not a `.py` file", entry.display()))?;
    let sdk = existing(project, &manifest.sdk, "gust/__init__.py", "the Python SDK")?;
    let wit = existing(project, &manifest.wit, "agent.wit", "the agent world")?;
    let module_dir = entry.parent().unwrap_or(project);
    let mut command = Command::new(tool);
    command
        .current_dir(project)
        .arg("-d")
        .arg(&wit)
        .args(["-w", "agent", "componentize", module, "-p"])
        .arg(module_dir)
        .arg("-p")
        .arg(&sdk)
        .arg("-o")
        .arg(out);
    run_tool(&mut command, output, false).map(|_| ())
}

fn build_js(
    project: &Path,
    manifest: &Manifest,
    tool: &Path,
    out: &Path,
    output: ToolOutput,
) -> anyhow::Result<()> {
    let entry_rel = manifest.entry.as_deref().unwrap_or(Path::new("app.js"));
    let entry = existing(project, entry_rel, "", "the entry module")?;
    let sdk = existing(project, &manifest.sdk, "gust.js", "the JavaScript SDK")?;
    let wit = existing(project, &manifest.wit, "agent.wit", "the agent world")?;
    // componentize-js lets the module import files below its working folder only; the SDK
    // can live beside the project (the repository's examples share one).
    let root = common_ancestor(project, &sdk);
    let mut command = Command::new(tool);
    command
        .current_dir(&root)
        .arg(&entry)
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "agent", "-o"])
        .arg(out);
    run_tool(&mut command, output, false).map(|_| ())
}

/// `project/relative`, canonical, which must exist (and hold `inside` when that is given).
fn existing(project: &Path, relative: &Path, inside: &str, what: &str) -> anyhow::Result<PathBuf> {
    let path = project.join(relative);
    let probe = if inside.is_empty() {
        path.clone()
    } else {
        path.join(inside)
    };
    if !probe.exists() {
        bail!(
            "{what} is missing: there is no {} (see {MANIFEST})",
            probe.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("opening {}", path.display()))
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.ancestors()
        .find(|candidate| b.starts_with(candidate))
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Runs a build tool and returns its standard output; with `want_stdout` that output is
/// the caller's (cargo's JSON messages) and never shown.
fn run_tool(
    command: &mut Command,
    output: ToolOutput,
    want_stdout: bool,
) -> anyhow::Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    command.stdin(Stdio::null());
    match output {
        ToolOutput::Captured => toolchain::run_captured(command),
        ToolOutput::Stderr => {
            let stderr = || -> anyhow::Result<Stdio> {
                Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
            };
            command.stderr(stderr()?);
            command.stdout(if want_stdout {
                Stdio::piped()
            } else {
                stderr()?
            });
            let child = command.spawn().map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => anyhow::anyhow!("`{program}` is not installed"),
                _ => anyhow::Error::new(e).context(format!("running `{program}`")),
            })?;
            let done = child
                .wait_with_output()
                .with_context(|| format!("running `{program}`"))?;
            if !done.status.success() {
                bail!("`{program}` failed ({}); its output is above", done.status);
            }
            Ok(String::from_utf8_lossy(&done.stdout).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_valid_agents_in_known_languages() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join(MANIFEST), text).unwrap();

        let missing = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(missing.contains("gust new <agent>"), "{missing}");

        write("name = \"hello\"\nlanguage = \"python\"\n");
        let manifest = Manifest::read(dir.path()).unwrap();
        assert_eq!(manifest.language, Language::Python);
        assert_eq!(manifest.sdk, Path::new("sdk"));

        write("name = \"Hello World\"\nlanguage = \"js\"\n");
        let bad = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        assert!(bad.contains("not a valid agent name"), "{bad}");

        write("name = \"hello\"\nlanguage = \"cobol\"\n");
        let unknown = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        assert!(unknown.contains("cobol"), "{unknown}");

        write("name = \"hello\"\nlanguage = \"rust\"\nlanguge = \"typo\"\n");
        let typo = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        assert!(typo.contains("languge"), "{typo}");
    }

    #[test]
    fn the_common_ancestor_is_the_deepest_shared_folder() {
        assert_eq!(
            common_ancestor(Path::new("/r/examples/js-echo"), Path::new("/r/sdk/js")),
            Path::new("/r")
        );
        assert_eq!(
            common_ancestor(Path::new("/p/hello"), Path::new("/p/hello/sdk")),
            Path::new("/p/hello")
        );
    }
}
