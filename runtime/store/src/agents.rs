//! Agents: the list, one agent with its history, its draft configuration, deletion.

use gust_model::{AgentConfig, AgentRecord, AgentSummary};

use crate::{Backend, Store, StoreError, blocking, detached};

/// What a draft write expects to replace. Two people editing one agent's configuration
/// (the console in one place, `gust config --set` in another) each read the draft, change
/// a field and write the whole draft back; without a check the second write silently drops
/// the first one's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftBase {
    /// Whatever is there: the last writer wins.
    Any,
    /// No agent of that name yet (`If-None-Match: *`).
    Absent,
    /// The agent, whatever its draft (`If-Match: *`).
    Present,
    /// A draft whose [`draft_tag`] is one of these (`If-Match`).
    OneOf(Vec<String>),
    /// This draft, access token included: what a writer read and decided on.
    Exactly(Box<AgentConfig>),
}

impl DraftBase {
    /// Whether `current` (the stored draft, `None` for no agent) is what this base expects.
    #[must_use]
    pub fn matches(&self, current: Option<&AgentConfig>) -> bool {
        match (self, current) {
            (Self::Any, _) | (Self::Absent, None) | (Self::Present, Some(_)) => true,
            (Self::OneOf(tags), Some(draft)) => {
                let tag = draft_tag(draft);
                tags.contains(&tag)
            }
            (Self::Exactly(read), Some(draft)) => **read == *draft,
            (Self::Absent | Self::Present | Self::OneOf(_) | Self::Exactly(_), _) => false,
        }
    }
}

/// The entity tag of a draft: a digest of its JSON as clients read it, the same on every
/// host and after a restart (the configuration's keys are ordered), so a tag read from one
/// host of a cluster is checked by another (of the same version: a field added to the
/// configuration changes every tag, and a client then reads again).
///
/// The write-only access token is left out, as it is of what clients read: a digest of it
/// would let a guess be checked against the tag. Nothing is lost by it: a write that keeps
/// the token (`***`) keeps the one stored when it is written, not the one there when it was
/// read.
#[must_use]
pub fn draft_tag(draft: &AgentConfig) -> String {
    use sha2::{Digest as _, Sha256};
    // A struct of strings, numbers and maps with string keys always serializes.
    let json = serde_json::to_vec(&draft.redacted()).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..16])
}

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

    /// Replaces the draft, creating the agent if needed, when the draft there now is the one
    /// `base` expects. Answers whether it wrote: `false` means another writer came first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn put_draft(
        &self,
        agent: &str,
        draft: &AgentConfig,
        now: i64,
        base: DraftBase,
    ) -> Result<bool, StoreError> {
        let agent = agent.to_owned();
        let draft = draft.clone();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.put_draft(&agent, &draft, now, &base)).await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.put_draft(&agent, &draft, now, &base).await
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
