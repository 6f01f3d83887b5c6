//! Persistence of agents, versions, drafts, deployments, runs, deliveries and keys, behind
//! one async interface named for what its callers need.
//!
//! [`Store`] dispatches to a backend: SQLite in the data folder is the embedded default
//! (`sqlite/`); its calls block, so the store runs them on tokio's blocking pool itself.
//! PostgreSQL (`postgres/`) is for several hosts on one database: its calls are async, and
//! it is written for other processes writing at the same time. Callers only `.await`, and
//! see the same semantics from both. Nothing on the sync-call hot path touches the store.
//!
//! - `agents`, `versions`, `deployments`, `runs`, `deliveries`, `keys`, `settings`: the
//!   interface, one file per kind of record;
//! - [`queue`]: the run queue's writes, applied in batches (group commit);
//! - [`components`]: component bytes, as files named by digest (and, with PostgreSQL, in the
//!   database too, for every host);
//! - [`changes`]: what other hosts on a shared database changed.

pub mod changes;
pub mod components;
pub mod queue;
pub mod sessions;

pub use agents::{DraftBase, draft_tag};
pub use changes::Change;
pub use postgres::sql as postgres_queue_sql;
pub use runs::Applied;

mod agents;
mod deliveries;
mod deployments;
mod keys;
mod postgres;
mod runs;
mod settings;
mod sqlite;
mod versions;

use std::future::Future;
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
    /// The database could not be reached: refused, timed out, or the connection was lost.
    /// Worth retrying later (the server answers 503 with `Retry-After`). Only a networked
    /// backend (PostgreSQL) reports it; SQLite never does.
    #[error("{0}")]
    Unavailable(String),
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
    /// A PostgreSQL database, possibly shared with other hosts.
    Postgres(Arc<postgres::Postgres>),
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

    /// Connects to the PostgreSQL database at `url`
    /// (`postgres://user:pass@host:port/db?sslmode=…&sslrootcert=…&pool_size=…`), brings its
    /// schema up to date (once, when several hosts open it at the same time), and starts
    /// listening for the changes other hosts make ([`Store::changes`]).
    ///
    /// `sslmode` means what it means to libpq: `disable`, `prefer` (the default: TLS when the
    /// server offers it, unverified), `require` (TLS, the certificate not verified unless
    /// `sslrootcert` is given), `verify-ca` (the chain verified), `verify-full` (the chain and
    /// the host name). `sslrootcert` is a PEM file of trusted roots, or `system` (the
    /// webpki roots, also used when it is absent). `pool_size` bounds this host's
    /// connections (16 by default).
    ///
    /// # Errors
    /// When the URL is not valid (the message never shows the password), the database
    /// cannot be reached, or it was migrated by a newer gust.
    pub async fn open_postgres(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            backend: Backend::Postgres(Arc::new(postgres::Postgres::open(url).await?)),
        })
    }

    /// Whether other hosts may share this database (PostgreSQL): then what they change is
    /// announced by [`Store::changes`], runs may execute on any host, leases, not this
    /// process's start, decide which running runs were abandoned, and the database keeps
    /// component bytes for every host (SQLite leaves them as files in the data folder, and
    /// the component methods then store and find nothing).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The backend's name, for operators (`sqlite`, `postgres`).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A trivial read: whether the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, sqlite::Sqlite::ping).await,
            Backend::Postgres(db) => detached(db, |db| async move { db.ping().await }).await,
        }
    }

    /// The changes hosts sharing the database commit (this one's included), from now on;
    /// `None` when the backend is not shared (SQLite). After every (re)connection of the
    /// listener a [`Change::Resync`] comes: changes made while it was away were missed.
    pub fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(db) => Some(db.subscribe()),
        }
    }

    /// Whether the database was reachable when last checked (PostgreSQL: by the change
    /// listener, every few seconds; no query is made here). Always true for SQLite.
    pub fn database_up(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => true,
            Backend::Postgres(db) => db.database_up(),
        }
    }

    /// Closes the store for every clone: PostgreSQL's listener stops and its connections
    /// close; calls made afterwards fail as [`StoreError::Unavailable`]. Dropping the last
    /// clone does the same. SQLite needs nothing (its file closes with the last clone).
    pub fn close(&self) {
        match &self.backend {
            Backend::Sqlite(_) => {}
            Backend::Postgres(db) => db.close(),
        }
    }
}

/// Runs `f` with the SQLite backend on the blocking pool. Once started it runs to the end
/// even if the caller's future is dropped.
async fn blocking<T: Send + 'static>(
    db: &Arc<sqlite::Sqlite>,
    f: impl FnOnce(&sqlite::Sqlite) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("a database task failed: {e}")))?
}

/// Runs `f` with the PostgreSQL backend as a task of its own, so that, as with SQLite, a
/// call once started runs to the end (its transaction commits or rolls back) even if the
/// caller's future is dropped.
async fn detached<T, F, Fut>(db: &Arc<postgres::Postgres>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(Arc<postgres::Postgres>) -> Fut,
    Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    // Bounded, so a database that stopped answering (without closing the connection) makes
    // a caller's request fail with 503 rather than hang; the statement itself goes on, and
    // TCP's keepalives and user timeout (postgres/config.rs) end it.
    match tokio::time::timeout(CALL_LIMIT, tokio::spawn(f(Arc::clone(db)))).await {
        Ok(done) => {
            done.map_err(|e| StoreError::Internal(anyhow::anyhow!("a database task failed: {e}")))?
        }
        Err(_) => Err(StoreError::Unavailable(format!(
            "database unavailable: no answer within {}s",
            CALL_LIMIT.as_secs()
        ))),
    }
}

/// The longest a call to a shared database may take before its caller is told the
/// database is unavailable. Generous: a batch of runs or a large component takes far less
/// on a database that answers.
const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
