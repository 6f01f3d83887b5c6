//! Agents, versions and deployments as they are stored and shown.

use crate::config::{AgentConfig, DeliveryMode};

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
    /// When the live deployment was made, ms since the epoch.
    pub deployed_at: Option<i64>,
    /// The live deployment's mode.
    pub mode: Option<DeliveryMode>,
    /// Whether the draft differs from the live configuration (a deploy would change it).
    pub draft_pending: bool,
    /// The newest uploaded version (a deploy without a version makes it live).
    pub newest_version: Option<u32>,
}
