//! Uploaded versions of an agent.

use gust_model::VersionRecord;

use crate::VersionDeletion;

use crate::{Backend, Store, StoreError, blocking, detached};

impl Store {
    /// One version of an agent, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn version(
        &self,
        agent: &str,
        version: u32,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.version(&agent, version)).await,
            Backend::Postgres(db) => {
                detached(
                    db,
                    move |db| async move { db.version(&agent, version).await },
                )
                .await
            }
        }
    }

    /// The newest version of an agent, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn latest_version(&self, agent: &str) -> Result<Option<VersionRecord>, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.latest_version(&agent)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.latest_version(&agent).await }).await
            }
        }
    }

    /// The version of `agent` with these bytes, if they were uploaded before.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn version_by_digest(
        &self,
        agent: &str,
        digest: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let agent = agent.to_owned();
        let digest = digest.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.version_by_digest(&agent, &digest)).await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.version_by_digest(&agent, &digest).await
                })
                .await
            }
        }
    }

    /// Records a new version (creating the agent if needed) and returns it with `true`, or
    /// returns the existing version with the same digest and `false`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn add_version(
        &self,
        agent: &str,
        digest: &str,
        size: u64,
        now: i64,
    ) -> Result<(VersionRecord, bool), StoreError> {
        let agent = agent.to_owned();
        let digest = digest.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.add_version(&agent, &digest, size, now)).await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.add_version(&agent, &digest, size, now).await
                })
                .await
            }
        }
    }

    /// Deletes a version unless it is live.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_version(
        &self,
        agent: &str,
        version: u32,
    ) -> Result<VersionDeletion, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.delete_version(&agent, version)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.delete_version(&agent, version).await
                })
                .await
            }
        }
    }
}
