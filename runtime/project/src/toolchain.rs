//! The componentize toolchains that turn Python and JavaScript into components, each pinned
//! to one release and installed on first use into a folder of toolchains: the per-user cache
//! for `gust build`, `.tools/` in the repository for its own tests (`scripts/setup`).
//!
//! Each toolchain has a folder named after its version, complete when it holds the
//! `.installed` marker (written last). An install that was interrupted leaves a folder
//! without it, which the next install removes and redoes; a lock file keeps two installs
//! from racing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use super::embedded;

/// The componentize-py release; `sdk/python/toolchain-requirements.txt` pins its hashes.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js release; `sdk/js/package.json` and its lockfile pin it.
pub const COMPONENTIZE_JS: &str = "0.23.0";

const MARKER: &str = ".installed";

/// A pinned toolchain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// componentize-py, from PyPI into a Python virtual environment.
    ComponentizePy,
    /// componentize-js, from npm with `npm ci`.
    ComponentizeJs,
}

impl Tool {
    /// The tool's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ComponentizePy => "componentize-py",
            Self::ComponentizeJs => "componentize-js",
        }
    }

    /// The pinned version.
    pub fn version(self) -> &'static str {
        match self {
            Self::ComponentizePy => COMPONENTIZE_PY,
            Self::ComponentizeJs => COMPONENTIZE_JS,
        }
    }

    /// The executable, relative to the tool's folder.
    fn executable(self) -> &'static str {
        match self {
            Self::ComponentizePy => "bin/componentize-py",
            Self::ComponentizeJs => "node_modules/.bin/componentize-js",
        }
    }
}

/// A folder of installed toolchains.
#[derive(Debug, Clone)]
pub struct Toolchains {
    root: PathBuf,
    /// The interpreter that makes componentize-py's virtual environment.
    python: String,
}

impl Toolchains {
    /// Toolchains in `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            // Tools run in other working folders: their paths must not depend on this one.
            root: std::path::absolute(&root).unwrap_or(root),
            python: std::env::var("GUST_PYTHON").unwrap_or_else(|_| "python3".to_owned()),
        }
    }

    /// Makes componentize-py's environment with `interpreter` (default: `$GUST_PYTHON`, else
    /// `python3`).
    pub fn with_python(mut self, interpreter: impl Into<String>) -> Self {
        self.python = interpreter.into();
        self
    }

    /// The per-user cache: `$GUST_CACHE_DIR/toolchains`, else `$XDG_CACHE_HOME/gust/toolchains`,
    /// else `~/.cache/gust/toolchains`.
    pub fn user_cache() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let base = if let Some(dir) = var("GUST_CACHE_DIR") {
            PathBuf::from(dir)
        } else if let Some(dir) = var("XDG_CACHE_HOME") {
            PathBuf::from(dir).join("gust")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".cache").join("gust")
        } else {
            bail!("no cache folder: set GUST_CACHE_DIR (or HOME)");
        };
        Ok(Self::at(base.join("toolchains")))
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, tool: Tool) -> PathBuf {
        self.root
            .join(format!("{}-{}", tool.name(), tool.version()))
    }

    /// The tool's executable, installing the tool first when it is not there (saying so on
    /// `progress`).
    pub fn ensure(&self, tool: Tool, progress: &mut dyn Write) -> anyhow::Result<PathBuf> {
        let dir = self.dir(tool);
        if !dir.join(MARKER).exists() {
            self.install(tool, progress)?;
        }
        Ok(dir.join(tool.executable()))
    }

    /// Installs the tool unless it is installed; returns its executable.
    pub fn install(&self, tool: Tool, progress: &mut dyn Write) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let lock_path = self.root.join(".lock");
        let lock = fs::File::create(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;

        let dir = self.dir(tool);
        if dir.join(MARKER).exists() {
            return Ok(dir.join(tool.executable()));
        }
        if dir.exists() {
            // An install that did not finish.
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let started = Instant::now();
        writeln!(
            progress,
            "gust: {} {} is not installed; installing it into {} (once)",
            tool.name(),
            tool.version(),
            dir.display()
        )?;
        let installed = match tool {
            Tool::ComponentizePy => install_python(&dir, &self.python, progress),
            Tool::ComponentizeJs => install_js(&dir, progress),
        };
        if let Err(e) = installed {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let executable = dir.join(tool.executable());
        let reported = run_captured(Command::new(&executable).arg("--version"))
            .with_context(|| format!("checking the installed {}", tool.name()))?;
        if !reported.contains(tool.version()) {
            let _ = fs::remove_dir_all(&dir);
            bail!(
                "the installed {} reports `{}`, not version {}",
                tool.name(),
                reported.trim(),
                tool.version()
            );
        }
        fs::write(dir.join(MARKER), tool.version())
            .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
        writeln!(
            progress,
            "gust: installed {} {} ({:.0} s)",
            tool.name(),
            tool.version(),
            started.elapsed().as_secs_f64()
        )?;
        Ok(executable)
    }
}

fn install_python(dir: &Path, python: &str, progress: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(progress, "  creating a Python environment with {python}…")?;
    run_captured(Command::new(python).args(["-m", "venv"]).arg(dir)).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\ncomponentize-py needs Python 3.9 or newer with the `venv` module \
             (Debian: apt-get install python3-venv); set GUST_PYTHON to use another interpreter"
        )
    })?;
    let requirements = dir.join("toolchain-requirements.txt");
    fs::write(&requirements, embedded::PYTHON_TOOLCHAIN_REQUIREMENTS)
        .with_context(|| format!("writing {}", requirements.display()))?;
    writeln!(
        progress,
        "  downloading componentize-py {COMPONENTIZE_PY} from PyPI (about 40 MiB)…"
    )?;
    run_captured(
        Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
            ])
            .arg(&requirements),
    )
    .context("installing componentize-py with pip")?;
    Ok(())
}

fn install_js(dir: &Path, progress: &mut dyn Write) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in [
        ("package.json", embedded::JS_TOOLCHAIN_PACKAGE),
        ("package-lock.json", embedded::JS_TOOLCHAIN_LOCK),
    ] {
        fs::write(dir.join(name), text)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    writeln!(
        progress,
        "  downloading componentize-js {COMPONENTIZE_JS} from npm with `npm ci` (about 100 MiB)…"
    )?;
    run_captured(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\ncomponentize-js needs Node.js 18 or newer with npm \
             (Debian: apt-get install nodejs npm)"
        )
    })?;
    Ok(())
}

/// Runs a command to completion; its output is returned, or is in the error when it fails.
pub(crate) fn run_captured(command: &mut Command) -> anyhow::Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("`{program}` is not installed"),
            _ => anyhow::Error::new(e).context(format!("running `{program}`")),
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`{program}` failed ({}):\n{}{}",
            output.status,
            tail(&stdout),
            tail(&stderr)
        );
    }
    Ok(stdout)
}

/// The last lines of a tool's output, enough to show why it failed.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let kept = &lines[lines.len().saturating_sub(40)..];
    kept.iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pins_agree_with_the_manifests_they_install_from() {
        assert!(
            embedded::PYTHON_TOOLCHAIN_REQUIREMENTS
                .contains(&format!("componentize-py=={COMPONENTIZE_PY} ")),
            "sdk/python/toolchain-requirements.txt pins another componentize-py"
        );
        let package: serde_json::Value =
            serde_json::from_str(embedded::JS_TOOLCHAIN_PACKAGE).unwrap();
        assert_eq!(
            package["devDependencies"]["@bytecodealliance/componentize-js"],
            COMPONENTIZE_JS
        );
        let lock: serde_json::Value = serde_json::from_str(embedded::JS_TOOLCHAIN_LOCK).unwrap();
        assert_eq!(
            lock["packages"]["node_modules/@bytecodealliance/componentize-js"]["version"],
            COMPONENTIZE_JS,
            "sdk/js/package-lock.json is out of date: run `npm install --package-lock-only` in sdk/js"
        );
    }

    #[test]
    fn an_unfinished_install_is_redone_and_a_missing_interpreter_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let chains = Toolchains::at(dir.path());
        let leftover = chains.dir(Tool::ComponentizePy);
        fs::create_dir_all(leftover.join("bin")).unwrap();
        fs::write(leftover.join("half-written"), b"x").unwrap();
        let mut progress = Vec::new();
        let error = Toolchains::at(dir.path())
            .with_python("/nonexistent/python3")
            .install(Tool::ComponentizePy, &mut progress)
            .unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("`/nonexistent/python3` is not installed"),
            "{message}"
        );
        assert!(
            message.contains("apt-get install python3-venv"),
            "{message}"
        );
        assert!(!leftover.exists(), "the failed install is removed");
        let said = String::from_utf8(progress).unwrap();
        assert!(
            said.contains("componentize-py 0.25.1 is not installed; installing it into"),
            "{said}"
        );
    }
}
