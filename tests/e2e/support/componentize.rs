//! Python and JavaScript guests, built from source with the code behind `gust build` and the
//! repository's pinned toolchains in `.tools/` (which `scripts/setup` installs; a run without
//! it installs them here, the same way).
//!
//! A build takes 10–30 s, so each guest is built once per test process, and kept between
//! runs under the test target folder, keyed by a digest of everything that goes into it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use gust_project::{self as project, Manifest, Tool, ToolOutput, Toolchains};
use sha2::{Digest, Sha256};

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The repository's toolchain folder.
pub(crate) fn toolchains() -> Toolchains {
    Toolchains::at(repo().join(".tools"))
}

type Slot = Arc<OnceLock<PathBuf>>;
static BUILT: LazyLock<Mutex<HashMap<String, Slot>>> = LazyLock::new(Default::default);

/// The component of the project in `folder` (relative to the repository), built if needed.
pub(crate) async fn component(folder: &str) -> String {
    let folder = folder.to_owned();
    tokio::task::spawn_blocking(move || {
        let slot = Arc::clone(BUILT.lock().unwrap().entry(folder.clone()).or_default());
        slot.get_or_init(|| build(&folder)).display().to_string()
    })
    .await
    .unwrap()
}

fn build(folder: &str) -> PathBuf {
    let project = repo().join(folder);
    let manifest = Manifest::read(&project).unwrap();
    let digest = inputs_digest(&project, &manifest);
    let kept_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("componentized");
    let kept = kept_dir.join(format!("{}-{}.wasm", manifest.name, &digest[..16]));
    if kept.exists() {
        return kept;
    }
    let built = project::build(
        &project,
        &toolchains(),
        ToolOutput::Captured,
        &mut std::io::stderr(),
    )
    .unwrap_or_else(|e| panic!("building {folder}: {e:#}"));
    std::fs::create_dir_all(&kept_dir).unwrap();
    let partial = kept.with_extension("partial");
    std::fs::copy(&built, &partial).unwrap();
    std::fs::rename(&partial, &kept).unwrap();
    kept
}

/// A digest of the project's sources, its SDK, the agent world and the toolchain versions.
fn inputs_digest(project: &Path, manifest: &Manifest) -> String {
    let mut hasher = Sha256::new();
    for tool in [Tool::ComponentizePy, Tool::ComponentizeJs] {
        hasher.update(format!("{}={}\n", tool.name(), tool.version()));
    }
    for root in [
        project.to_path_buf(),
        project.join(&manifest.sdk),
        project.join(&manifest.wit),
    ] {
        let mut files = Vec::new();
        walk(&root, &mut files);
        files.sort();
        for file in files {
            hasher.update(
                file.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes(),
            );
            hasher.update(std::fs::read(&file).unwrap());
        }
    }
    hex::encode(hasher.finalize())
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "build" || name == "node_modules" || name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
