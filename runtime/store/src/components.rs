//! Component bytes as files in `<data>/components/`, named by their sha256 digest. Writing
//! the same bytes twice is harmless, and two agents uploading the same component share one
//! file.

use std::path::PathBuf;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use gust_model::fs;

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The component folder.
#[derive(Debug, Clone)]
pub struct ComponentFiles {
    dir: PathBuf,
}

impl ComponentFiles {
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::remove_stale_temp_files(&dir);
        Ok(Self { dir })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.wasm", fs::digest_hex(digest)))
    }

    /// Stores `bytes` durably under `digest` (a no-op when the file is already there).
    pub fn write(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(digest);
        if path.exists() {
            return Ok(());
        }
        fs::write_atomic(&path, bytes).map_err(anyhow::Error::from)
    }

    pub fn read(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path(digest);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The digests of every stored component.
    pub fn digests(&self) -> Vec<String> {
        fs::digests_in(&self.dir, ".wasm")
    }

    pub fn remove(&self, digest: &str) {
        let _ = std::fs::remove_file(self.path(digest));
    }
}
