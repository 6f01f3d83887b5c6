//! Agents: the list, one agent with its history, its draft configuration, deletion.

use gust_model::{AgentConfig, AgentRecord, AgentSummary};

use crate::{Backend, Store, StoreError, blocking, detached};

impl Store {
    /// All agents, by name.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_agents(&self) -> Result<Vec<AgentSummary>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.list_agents()).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.list_agents().await }).await
            }
        }
    }

    /// One agent with its history, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let name = name.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.agent(&name)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.agent(&name).await }).await
            }
        }
    }

    /// The agent's draft configuration, or `None` when the agent does not exist.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn draft(&self, agent: &str) -> Result<Option<AgentConfig>, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.draft(&agent)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.draft(&agent).await }).await
            }
        }
    }

    /// Replaces the draft, creating the agent if needed.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn put_draft(
        &self,
        agent: &str,
        draft: &AgentConfig,
        now: i64,
    ) -> Result<(), StoreError> {
        let agent = agent.to_owned();
        let draft = draft.clone();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.put_draft(&agent, &draft, now)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.put_draft(&agent, &draft, now).await
                })
                .await
            }
        }
    }

    /// Deletes an agent with its versions and deployments. Returns `None` when there was no
    /// such agent, else the digests no other agent uses any more.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_agent(&self, agent: &str) -> Result<Option<Vec<String>>, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.delete_agent(&agent)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.delete_agent(&agent).await }).await
            }
        }
    }

    /// Every digest some version of some agent refers to.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn referenced_digests(
        &self,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.referenced_digests()).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.referenced_digests().await }).await
            }
        }
    }
}
