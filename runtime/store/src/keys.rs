//! Invoke keys (their hashes, never the keys).

use gust_model::KeyRecord;

use crate::{Backend, Store, StoreError, blocking, detached};

impl Store {
    /// Stores a new invoke key (its hash, never the key).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown agent.
    pub async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.create_key(&key)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.create_key(&key).await }).await
            }
        }
    }

    /// The keys of an agent.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_keys(&self, agent: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.list_keys(&agent)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.list_keys(&agent).await }).await
            }
        }
    }

    /// Every key, for the in-memory key ring at start.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.all_keys()).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.all_keys().await }).await
            }
        }
    }

    /// Deletes a key; `false` when the agent has no such key.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_key(&self, agent: &str, id: &str) -> Result<bool, StoreError> {
        let (agent, id) = (agent.to_owned(), id.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.delete_key(&agent, &id)).await,
            Backend::Postgres(db) => {
                detached(
                    db,
                    move |db| async move { db.delete_key(&agent, &id).await },
                )
                .await
            }
        }
    }

    /// Records last-use times.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn touch_keys(&self, used: Vec<(String, i64)>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.touch_keys(&used)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.touch_keys(&used).await }).await
            }
        }
    }
}
