//! Component bytes as files in `<data>/components/`, named by their sha256 digest. Writing
//! the same bytes twice is harmless, and two agents uploading the same component share one
//! file.
//!
//! A host's files are its own. When hosts share a PostgreSQL database, the bytes are also
//! kept in it, once per digest ([`Store::put_component`]), so a host can fetch a version
//! another host uploaded; its files are then a cache.

use std::path::PathBuf;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use gust_model::fs;

use crate::{Backend, Store, StoreError, detached};

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

impl Store {
    /// Keeps `bytes` under `digest` (nothing is sent when they are there already). Call it
    /// after [`Store::add_version`] has recorded a version with the digest: a host that
    /// deletes the last other version of the same bytes meanwhile then either sees the new
    /// version and keeps them, or has dropped them before this call stores them again.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn put_component(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => {
                let (digest, bytes) = (digest.to_owned(), bytes.to_vec());
                detached(db, move |db| async move {
                    db.put_component(&digest, &bytes).await
                })
                .await
            }
        }
    }

    /// The bytes kept under `digest`, if the database keeps them.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(db) => {
                let digest = digest.to_owned();
                detached(db, move |db| async move { db.component(&digest).await }).await
            }
        }
    }

    /// Whether the database keeps the bytes of `digest`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn has_component(&self, digest: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(false),
            Backend::Postgres(db) => {
                let digest = digest.to_owned();
                detached(db, move |db| async move { db.has_component(&digest).await }).await
            }
        }
    }
}
