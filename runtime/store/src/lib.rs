//! Persistence of agents, versions, drafts, deployments, runs, deliveries and keys, behind
//! one async interface named for what its callers need.
//!
//! [`Store`] dispatches to a backend: SQLite in the data folder is the embedded default
//! (`sqlite/`). Its calls block, so the store runs them on tokio's blocking pool itself;
//! callers only `.await`. A backend with an async driver (PostgreSQL, for several hosts on
//! one database) becomes one more `Backend` variant with the same methods, and no caller
//! changes. Nothing on the sync-call hot path touches the store.
//!
//! - `agents`, `versions`, `deployments`, `runs`, `deliveries`, `keys`: the interface, one
//!   file per kind of record;
//! - [`queue`]: the run queue's writes, applied in batches (group commit);
//! - [`components`]: component bytes, as files named by digest (not in the database).

pub mod components;
pub mod queue;

pub use runs::Applied;

mod agents;
mod deliveries;
mod deployments;
mod keys;
mod runs;
mod sqlite;
mod versions;

use std::path::Path;
use std::sync::Arc;

use gust_model::DeploymentRecord;

/// What a rollback would do.
#[derive(Debug, Clone)]
pub enum RollbackPlan {
    /// The agent does not exist.
    NoAgent,
    /// Nothing is deployed, or no earlier deployment can be returned to.
    NothingToRollBackTo,
    /// The deployment named as the target does not exist.
    NoSuchDeployment,
    /// The deployment named as the target ran a version that has since been deleted.
    VersionDeleted,
    /// The deployment named as the target is live already: nothing to do.
    AlreadyLive(Box<DeploymentRecord>),
    /// Take `from` out of service and make `to` live again.
    To {
        /// The deployment that is live now.
        from: u32,
        /// The deployment to make live.
        to: Box<DeploymentRecord>,
    },
}

/// A deploy's `Idempotency-Key` and the hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployKey {
    /// As the client sent it.
    pub key: String,
    /// What was asked (the version, or the newest), hashed.
    pub request_hash: String,
}

/// The outcome of deleting a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionDeletion {
    /// No such agent or version.
    NotFound,
    /// The version is live: deploy another one first.
    Live,
    /// Queued or running runs will execute on it.
    InUse,
    /// Deleted. `orphaned` is its digest when no other version anywhere still uses it, so the
    /// caller can remove the file.
    Deleted {
        /// The digest no version references any more.
        orphaned: Option<String>,
    },
}

/// Outcomes a caller acts on; anything else is an internal error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The agent or version does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The state changed under the caller (for example a concurrent rollback).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The persistence of one host; cheap to clone (clones share the backend).
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

/// The database behind a [`Store`].
#[derive(Debug, Clone)]
enum Backend {
    /// One SQLite file in the data folder.
    Sqlite(Arc<sqlite::Sqlite>),
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and brings its schema up to
    /// date.
    ///
    /// # Errors
    /// When the file cannot be opened, or was written by a newer gust.
    pub fn open_sqlite(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(sqlite::Sqlite::open(path)?)),
        })
    }

    /// The backend's name, for operators (`sqlite`).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Runs `f` with the SQLite backend on the blocking pool. Once started it runs to the
    /// end even if the caller's future is dropped.
    /// A trivial read: whether the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.sqlite(sqlite::Sqlite::ping).await
    }

    async fn sqlite<T: Send + 'static>(
        &self,
        f: impl FnOnce(&sqlite::Sqlite) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Backend::Sqlite(db) = &self.backend;
        let db = Arc::clone(db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Internal(anyhow::anyhow!("a database task failed: {e}")))?
    }
}
