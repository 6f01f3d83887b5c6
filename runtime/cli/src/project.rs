//! `gust new`, `gust build` and `gust toolchain`: the commands that work on the author's
//! machine, without a server.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use gust_project::{self as project, Language, Manifest, Tool, ToolOutput, Toolchains};

use crate::output::{note, say};

pub(crate) fn new(agent: &str, language: Language) -> anyhow::Result<()> {
    project::new_project(Path::new("."), agent, language)?;
    let entry = match language {
        Language::Rust => "src/lib.rs",
        Language::Python => "app.py",
        Language::Js => "app.js",
    };
    say!(
        "created {agent}/ ({}): {entry}, gust.toml, README.md, sdk/, wit/",
        language.as_str()
    )?;
    say!()?;
    say!("next:")?;
    say!("  cd {agent}")?;
    say!("  gust build")?;
    say!("  gust deploy")?;
    say!("  gust run {agent} '{{\"name\": \"Ada\"}}'")?;
    Ok(())
}

/// `gust build`: standard output carries only the path, for scripts
/// (`gust deploy x "$(gust build)"`).
pub(crate) fn build_command(dir: &Path, quiet: bool) -> anyhow::Result<()> {
    let built = build(dir, quiet)?;
    say!("{}", relative_to_cwd(&built).display())?;
    Ok(())
}

/// Builds the project in `dir` with the tools' output on stderr (unless quiet); returns the
/// component's path.
pub(crate) fn build(dir: &Path, quiet: bool) -> anyhow::Result<PathBuf> {
    let manifest = Manifest::read(dir)?;
    let toolchains = Toolchains::user_cache()?;
    if !quiet {
        note!(
            "gust: building {} ({})…",
            manifest.name,
            manifest.language.as_str()
        );
    }
    let (tools, mut progress): (ToolOutput, Box<dyn std::io::Write>) = if quiet {
        (ToolOutput::Captured, Box::new(std::io::sink()))
    } else {
        (ToolOutput::Stderr, Box::new(std::io::stderr()))
    };
    let built = project::build(dir, &toolchains, tools, &mut progress)?;
    let shown = relative_to_cwd(&built);
    let size = std::fs::metadata(&built).map(|m| m.len()).unwrap_or(0);
    if !quiet {
        note!(
            "gust: built {} ({})",
            shown.display(),
            crate::output::size(size)
        );
    }
    Ok(built)
}

pub(crate) fn install(dir: Option<PathBuf>, languages: &[Language]) -> anyhow::Result<()> {
    let toolchains = match dir {
        Some(dir) => Toolchains::at(dir),
        None => Toolchains::user_cache()?,
    };
    let wanted: Vec<Language> = if languages.is_empty() {
        vec![Language::Python, Language::Js]
    } else {
        languages.to_vec()
    };
    for language in wanted {
        let tool = match language {
            Language::Python => Tool::ComponentizePy,
            Language::Js => Tool::ComponentizeJs,
            Language::Rust => bail!(
                "Rust needs no gust toolchain: rustup installs the one a project's \
                 rust-toolchain.toml names"
            ),
        };
        let executable = toolchains
            .install(tool, &mut std::io::stderr())
            .with_context(|| format!("installing {} {}", tool.name(), tool.version()))?;
        say!(
            "{} {}: {}",
            tool.name(),
            tool.version(),
            executable.display()
        )?;
    }
    Ok(())
}

/// `path` relative to the working folder when it is below it (as people typed it).
fn relative_to_cwd(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| cwd.canonicalize().ok())
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}
