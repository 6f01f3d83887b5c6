//! Invoke keys (their hashes, never the keys).

use gust_model::KeyRecord;

use crate::{Store, StoreError};

impl Store {
    /// Stores a new invoke key (its hash, never the key).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown agent.
    pub async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.sqlite(move |db| db.create_key(&key)).await
    }

    /// The keys of an agent.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_keys(&self, agent: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let agent = agent.to_owned();
        self.sqlite(move |db| db.list_keys(&agent)).await
    }

    /// Every key, for the in-memory key ring at start.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.sqlite(|db| db.all_keys()).await
    }

    /// Deletes a key; `false` when the agent has no such key.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_key(&self, agent: &str, id: &str) -> Result<bool, StoreError> {
        let (agent, id) = (agent.to_owned(), id.to_owned());
        self.sqlite(move |db| db.delete_key(&agent, &id)).await
    }

    /// Records last-use times.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn touch_keys(&self, used: Vec<(String, i64)>) -> Result<(), StoreError> {
        self.sqlite(move |db| db.touch_keys(&used)).await
    }
}
