//! Precompiled components on disk. Loading one is the crate's one use of `unsafe`
//! (`deserialize_own_artifact`), kept here with the writes that make it sound.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gust_model::fs;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Precompiled components on disk, in a folder named by the engine's compatibility hash, so
/// an upgraded host never tries to load artifacts built by another one.
///
/// Only the host writes here (after compiling bytes itself), which is what makes loading
/// these files with `deserialize_file` sound.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    pub(crate) fn open(root: &Path, engine: &Engine) -> anyhow::Result<Self> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the cache folder {}", dir.display()))?;
        fs::remove_stale_temp_files(&dir);
        Ok(Self { dir })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.cwasm", fs::digest_hex(digest)))
    }

    pub(crate) fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        match deserialize_own_artifact(engine, &path) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(%digest, "ignoring an unusable cached artifact: {e:#}");
                None
            }
        }
    }

    pub(crate) fn store(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize().map_err(anyhow::Error::from)?;
        fs::write_atomic(&self.path(digest), &bytes).map_err(anyhow::Error::from)
    }

    pub(crate) fn remove(&self, digest: &str) {
        let _ = std::fs::remove_file(self.path(digest));
    }

    /// Removes every artifact whose digest is not in `keep`.
    pub(crate) fn retain(&self, keep: &std::collections::HashSet<String>) {
        for digest in fs::digests_in(&self.dir, ".cwasm") {
            if !keep.contains(&digest) {
                self.remove(&digest);
            }
        }
    }
}

/// Loads a precompiled artifact from the host's own cache folder.
#[expect(
    unsafe_code,
    reason = "deserializing precompiled code is unsafe by contract"
)]
fn deserialize_own_artifact(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: `deserialize_file` trusts its input to be code this engine configuration
    // produced. Files in the cache folder are written only by `ArtifactCache::store`, from a
    // component this process compiled, atomically (no partial file is ever visible), in a
    // folder keyed by the engine's compatibility hash; wasmtime additionally checks the
    // header and engine settings and refuses a mismatch. Client bytes never reach this path.
    unsafe { Component::deserialize_file(engine, path) }.map_err(anyhow::Error::from)
}
