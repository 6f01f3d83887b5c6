//! Agents: the list, one agent with its history, its draft configuration, deletion.

use gust_model::{AgentConfig, AgentRecord, AgentSummary};

use crate::{Store, StoreError};

impl Store {
    /// All agents, by name.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_agents(&self) -> Result<Vec<AgentSummary>, StoreError> {
        self.sqlite(move |db| db.list_agents()).await
    }

    /// One agent with its history, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let name = name.to_owned();
        self.sqlite(move |db| db.agent(&name)).await
    }

    /// The agent's draft configuration, or `None` when the agent does not exist.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn draft(&self, agent: &str) -> Result<Option<AgentConfig>, StoreError> {
        let agent = agent.to_owned();
        self.sqlite(move |db| db.draft(&agent)).await
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
        self.sqlite(move |db| db.put_draft(&agent, &draft, now))
            .await
    }

    /// Deletes an agent with its versions and deployments. Returns `None` when there was no
    /// such agent, else the digests no other agent uses any more.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_agent(&self, agent: &str) -> Result<Option<Vec<String>>, StoreError> {
        let agent = agent.to_owned();
        self.sqlite(move |db| db.delete_agent(&agent)).await
    }

    /// Every digest some version of some agent refers to.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn referenced_digests(
        &self,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.sqlite(move |db| db.referenced_digests()).await
    }
}
