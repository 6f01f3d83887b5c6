//! Component bytes as files in `<data>/components/`, named by their sha256 digest. Writing
//! the same bytes twice is harmless, and two agents uploading the same component share one
//! file.

use std::path::PathBuf;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::fsutil;

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The component folder.
#[derive(Debug, Clone)]
pub(crate) struct ComponentFiles {
    dir: PathBuf,
}

impl ComponentFiles {
    pub(crate) fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fsutil::remove_stale_temp_files(&dir);
        Ok(Self { dir })
    }

    pub(crate) fn path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{}.wasm", fsutil::digest_hex(digest)))
    }

    /// Stores `bytes` durably under `digest` (a no-op when the file is already there).
    pub(crate) fn write(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(digest);
        if path.exists() {
            return Ok(());
        }
        fsutil::write_atomic(&path, bytes)
    }

    pub(crate) fn read(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path(digest);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The digests of every stored component.
    pub(crate) fn digests(&self) -> Vec<String> {
        digests_in(&self.dir, ".wasm")
    }

    pub(crate) fn remove(&self, digest: &str) {
        let _ = std::fs::remove_file(self.path(digest));
    }
}

/// `sha256:<hex>` for every file `<hex><extension>` in `dir`.
pub(crate) fn digests_in(dir: &std::path::Path, extension: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(extension)?;
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| format!("sha256:{hex}"))
        })
        .collect()
}
