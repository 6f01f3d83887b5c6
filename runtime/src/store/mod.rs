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
mod sqlite;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use sqlite::Sqlite;

/// The configuration of an agent: edited as a draft, frozen into each deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Wall-time limit of a sync call, in seconds.
    #[serde(default = "default_sync_timeout_s")]
    pub sync_timeout_s: u64,
    /// Values the guest reads with `config(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// GALE's default wall-time limit for a sync call.
pub const DEFAULT_SYNC_TIMEOUT_S: u64 = 180;
/// The longest sync timeout a deployment may ask for.
pub const MAX_SYNC_TIMEOUT_S: u64 = 3600;
/// Bounds on the `config` map, so a draft stays a configuration and not a data store.
const MAX_CONFIG_ENTRIES: usize = 256;
const MAX_CONFIG_KEY_BYTES: usize = 256;
const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;

fn default_sync_timeout_s() -> u64 {
    DEFAULT_SYNC_TIMEOUT_S
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            sync_timeout_s: DEFAULT_SYNC_TIMEOUT_S,
            config: BTreeMap::new(),
        }
    }
}

impl AgentConfig {
    /// Checks the bounds a user may set.
    ///
    /// # Errors
    /// A message saying which field is out of bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_SYNC_TIMEOUT_S).contains(&self.sync_timeout_s) {
            return Err(format!(
                "`sync_timeout_s` must be between 1 and {MAX_SYNC_TIMEOUT_S}, not {}",
                self.sync_timeout_s
            ));
        }
        if self.config.len() > MAX_CONFIG_ENTRIES {
            return Err(format!(
                "`config` has {} entries; at most {MAX_CONFIG_ENTRIES} are allowed",
                self.config.len()
            ));
        }
        for (key, value) in &self.config {
            if key.is_empty() || key.len() > MAX_CONFIG_KEY_BYTES {
                return Err(format!(
                    "`config` keys must be 1 to {MAX_CONFIG_KEY_BYTES} bytes long"
                ));
            }
            if value.len() > MAX_CONFIG_VALUE_BYTES {
                return Err(format!(
                    "`config.{key}` is longer than {MAX_CONFIG_VALUE_BYTES} bytes"
                ));
            }
        }
        Ok(())
    }
}

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
        to: DeploymentRecord,
    },
}

/// The outcome of deleting a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionDeletion {
    /// No such agent or version.
    NotFound,
    /// The version is live: deploy another one first.
    Live,
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
