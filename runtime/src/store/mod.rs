//! Persistence of agents, versions, drafts and deployments, behind one trait.
//!
//! SQLite in the data folder is the embedded default; a PostgreSQL backend (for several
//! hosts sharing one database) implements the same [`Store`]. The trait is blocking:
//! callers on the async runtime go through `spawn_blocking`, and nothing on the sync-call
//! hot path touches it.
//!
//! Component bytes are not in the database: [`components::ComponentFiles`] keeps them as
//! files named by digest.

pub(crate) mod components;
mod config;
mod runs;
mod sqlite;

pub use config::{
    AgentConfig, DEFAULT_MEMORY_MIB, HostPattern, Maxima, Mode, PushConfig, REDACTED,
};
pub use runs::{
    DeliveryRecord, DeliveryStatus, LogLine, NewRun, OutboundRequest, PushSecrets, Recovered,
    RunOutcome, RunRecord, RunStatus, RunWrite, StartedRun, WriteOutcome,
};
pub use sqlite::Sqlite;

use crate::keys::KeyRecord;

/// One uploaded version of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// The agent's name.
    pub agent: String,
    /// Numbered from 1 per agent; never reused while the agent exists, even after a version
    /// is deleted.
    pub version: u32,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// Upload time, ms since the epoch.
    pub created_at: i64,
    /// Time of the latest deployment of this version, if it was ever deployed.
    pub last_deployed_at: Option<i64>,
}

/// One deployment: a version plus the configuration frozen when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    /// The agent's name.
    pub agent: String,
    /// Numbered from 1 per agent.
    pub deployment: u32,
    /// The version it runs.
    pub version: u32,
    /// The digest of that version (kept even if the version is later deleted).
    pub digest: String,
    /// The configuration frozen at deploy time.
    pub config: AgentConfig,
    /// When it was made, ms since the epoch.
    pub deployed_at: i64,
    /// When a rollback took it out of service, if one did. Rollbacks skip such deployments.
    pub rolled_back_at: Option<i64>,
}

/// An agent with its draft, live deployment and history.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    /// The agent's name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// The draft configuration the next deploy will freeze.
    pub draft: AgentConfig,
    /// The live deployment, if any.
    pub live: Option<DeploymentRecord>,
    /// Every version still stored, oldest first.
    pub versions: Vec<VersionRecord>,
    /// Every deployment made, oldest first.
    pub deployments: Vec<DeploymentRecord>,
}

/// A line of the agent list.
#[derive(Debug, Clone)]
pub struct AgentSummary {
    /// The agent's name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// The live deployment's number and version.
    pub live: Option<(u32, u32)>,
    /// How many versions are stored.
    pub versions: u32,
}

/// What a rollback would do.
#[derive(Debug, Clone)]
pub enum RollbackPlan {
    /// The agent does not exist.
    NoAgent,
    /// Nothing is deployed, or no earlier deployment can be returned to.
    NothingToRollBackTo,
    /// Take `from` out of service and make `to` live again.
    To {
        /// The deployment that is live now.
        from: u32,
        /// The deployment to make live.
        to: Box<DeploymentRecord>,
    },
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

/// Persistence behind one trait; see the module docs.
pub trait Store: Send + Sync + 'static {
    /// All agents, by name.
    ///
    /// # Errors
    /// When the database fails.
    fn list_agents(&self) -> Result<Vec<AgentSummary>, StoreError>;

    /// One agent with its history, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError>;

    /// One version of an agent, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    fn version(&self, agent: &str, version: u32) -> Result<Option<VersionRecord>, StoreError>;

    /// The newest version of an agent, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    fn latest_version(&self, agent: &str) -> Result<Option<VersionRecord>, StoreError>;

    /// The version of `agent` with these bytes, if they were uploaded before.
    ///
    /// # Errors
    /// When the database fails.
    fn version_by_digest(
        &self,
        agent: &str,
        digest: &str,
    ) -> Result<Option<VersionRecord>, StoreError>;

    /// Records a new version (creating the agent if needed) and returns it with `true`, or
    /// returns the existing version with the same digest and `false`.
    ///
    /// # Errors
    /// When the database fails.
    fn add_version(
        &self,
        agent: &str,
        digest: &str,
        size: u64,
        now: i64,
    ) -> Result<(VersionRecord, bool), StoreError>;

    /// The agent's draft configuration, or `None` when the agent does not exist.
    ///
    /// # Errors
    /// When the database fails.
    fn draft(&self, agent: &str) -> Result<Option<AgentConfig>, StoreError>;

    /// Replaces the draft, creating the agent if needed.
    ///
    /// # Errors
    /// When the database fails.
    fn put_draft(&self, agent: &str, draft: &AgentConfig, now: i64) -> Result<(), StoreError>;

    /// Makes a new deployment of `version` with `config` and sets it live, in one
    /// transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the version does not exist.
    fn deploy(
        &self,
        agent: &str,
        version: u32,
        config: &AgentConfig,
        now: i64,
    ) -> Result<DeploymentRecord, StoreError>;

    /// One deployment of an agent, live or not.
    ///
    /// # Errors
    /// When the database fails.
    fn deployment(&self, agent: &str, number: u32) -> Result<Option<DeploymentRecord>, StoreError>;

    /// Works out what a rollback would do, without changing anything.
    ///
    /// # Errors
    /// When the database fails.
    fn plan_rollback(&self, agent: &str) -> Result<RollbackPlan, StoreError>;

    /// Carries out a plan: marks `from` rolled back and makes `to` live, provided `from` is
    /// still the live deployment.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the live deployment changed since the plan.
    fn rollback(&self, agent: &str, from: u32, to: u32, now: i64) -> Result<(), StoreError>;

    /// Every live deployment: what the registry is rebuilt from at start.
    ///
    /// # Errors
    /// When the database fails.
    fn live_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError>;

    /// Deletes a version unless it is live.
    ///
    /// # Errors
    /// When the database fails.
    fn delete_version(&self, agent: &str, version: u32) -> Result<VersionDeletion, StoreError>;

    /// Applies a batch of run-queue writes in one transaction (group commit), returning one
    /// outcome per write, in order. A write that fails is undone alone; the others commit.
    ///
    /// # Errors
    /// When the commit fails; then none of the batch was applied.
    fn apply_run_writes(
        &self,
        writes: &[RunWrite],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;

    /// At start: runs that were running when the host stopped are queued again, or failed as
    /// `lost` when they used up `max_attempts`; returns every run to execute.
    ///
    /// # Errors
    /// When the database fails.
    fn recover_runs(&self, now: i64, max_attempts: u32) -> Result<Recovered, StoreError>;

    /// Every queued run, oldest first, with its agent.
    ///
    /// # Errors
    /// When the database fails.
    fn queued_runs(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// One run of `agent` with its delivery, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    fn run(&self, agent: &str, id: &str) -> Result<Option<RunRecord>, StoreError>;

    /// The input a run was submitted with, and its content type.
    ///
    /// # Errors
    /// When the database fails.
    fn run_input(&self, agent: &str, id: &str) -> Result<Option<(Vec<u8>, String)>, StoreError>;

    /// Runs of `agent`, newest first, optionally of one status, older than the run `before`.
    ///
    /// # Errors
    /// When the database fails.
    fn list_runs(
        &self,
        agent: &str,
        status: Option<RunStatus>,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Pending deliveries due by `now`, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// The earliest `next_attempt_at` of any pending delivery.
    ///
    /// # Errors
    /// When the database fails.
    fn next_delivery_at(&self) -> Result<Option<i64>, StoreError>;

    /// The agent's push signing secrets, if it has any.
    ///
    /// # Errors
    /// When the database fails.
    fn push_secrets(&self, agent: &str) -> Result<Option<PushSecrets>, StoreError>;

    /// Gives the agent a new current secret; the old one (if any) keeps signing until
    /// `previous_until`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown agent.
    fn set_push_secret(
        &self,
        agent: &str,
        secret: &str,
        previous_until: i64,
    ) -> Result<(), StoreError>;

    /// Stores a new invoke key (its hash, never the key).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown agent.
    fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;

    /// The keys of an agent.
    ///
    /// # Errors
    /// When the database fails.
    fn list_keys(&self, agent: &str) -> Result<Vec<KeyRecord>, StoreError>;

    /// Every key, for the in-memory key ring at start.
    ///
    /// # Errors
    /// When the database fails.
    fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Deletes a key; `false` when the agent has no such key.
    ///
    /// # Errors
    /// When the database fails.
    fn delete_key(&self, agent: &str, id: &str) -> Result<bool, StoreError>;

    /// Records last-use times.
    ///
    /// # Errors
    /// When the database fails.
    fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError>;

    /// Every digest some version of some agent refers to.
    ///
    /// # Errors
    /// When the database fails.
    fn referenced_digests(&self) -> Result<std::collections::HashSet<String>, StoreError>;

    /// Deletes an agent with its versions and deployments. Returns `None` when there was no
    /// such agent, else the digests no other agent uses any more.
    ///
    /// # Errors
    /// When the database fails.
    fn delete_agent(&self, agent: &str) -> Result<Option<Vec<String>>, StoreError>;
}
