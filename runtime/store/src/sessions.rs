//! Console sessions, for hosts that share a database (a load balancer may send a browser's
//! next request to another host). A single host keeps its sessions in memory
//! (`gust_core::auth::Sessions`), so SQLite has none of these.

use crate::{Backend, Store, StoreError, detached};

/// How long sessions last, in milliseconds, and how many may be open at once.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    /// Without a request.
    pub idle_ms: i64,
    /// After sign-in, however busy.
    pub lifetime_ms: i64,
    /// Open at once, at most (the least recently used goes).
    pub max: usize,
}

impl Store {
    /// Opens the session whose id hashes to `hash` (hex).
    ///
    /// # Errors
    /// When the database fails, or with SQLite (which keeps no sessions).
    pub async fn create_session(
        &self,
        hash: &str,
        now: i64,
        times: SessionTimes,
    ) -> Result<(), StoreError> {
        let hash = hash.to_owned();
        match &self.backend {
            Backend::Sqlite(_) => Err(in_memory()),
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.create_session(&hash, now, times).await
                })
                .await
            }
        }
    }

    /// Whether the session is open; if so, it counts as used now.
    ///
    /// # Errors
    /// When the database fails, or with SQLite.
    pub async fn touch_session(
        &self,
        hash: &str,
        now: i64,
        times: SessionTimes,
    ) -> Result<bool, StoreError> {
        let hash = hash.to_owned();
        match &self.backend {
            Backend::Sqlite(_) => Err(in_memory()),
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.touch_session(&hash, now, times).await
                })
                .await
            }
        }
    }

    /// Ends one session, or every session with `None`.
    ///
    /// # Errors
    /// When the database fails, or with SQLite.
    pub async fn end_sessions(&self, hash: Option<&str>) -> Result<(), StoreError> {
        let hash = hash.map(str::to_owned);
        match &self.backend {
            Backend::Sqlite(_) => Err(in_memory()),
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.end_sessions(hash.as_deref()).await
                })
                .await
            }
        }
    }
}

fn in_memory() -> StoreError {
    StoreError::Internal(anyhow::anyhow!(
        "a single host keeps console sessions in memory, not in SQLite"
    ))
}
