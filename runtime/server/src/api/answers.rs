//! The shapes of the control plane's answers, as types: handlers serialize these, and the
//! OpenAPI document's schemas are derived from them, so the two cannot drift apart.
//! (Runs are shaped in `gust-core`'s `runs/view.rs`, as push events carry them too.)

use serde::Serialize;
use utoipa::ToSchema;

use gust_core::clock::rfc3339;
use gust_model::diff::ConfigChange;
use gust_model::{AgentConfig, AgentRecord, DeliveryMode, DeploymentRecord, VersionRecord};

use super::AppState;

/// Where an agent is called. `async_push` only in async mode.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Endpoints {
    /// `POST` here for a sync call.
    pub(crate) sync: String,
    /// `GET` a queued run here (`{run_id}` replaced).
    pub(crate) async_poll: String,
    /// `POST` here to queue a run whose result is pushed to the application.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) async_push: Option<String>,
}

impl Endpoints {
    pub(crate) fn new(state: &AppState, agent: &str, mode: DeliveryMode) -> Self {
        Self {
            sync: state.sync_url(agent),
            async_poll: format!("{}/{{run_id}}", state.runs_url(agent)),
            async_push: (mode == DeliveryMode::Async).then(|| state.runs_url(agent)),
        }
    }
}

/// A live deployment's number and version, as the agents list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LiveRef {
    pub(crate) deployment: u32,
    pub(crate) version: u32,
}

/// The sync endpoint alone.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SyncEndpoint {
    pub(crate) sync: String,
}

/// An agent as the list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentListed {
    pub(crate) agent: String,
    pub(crate) created_at: String,
    pub(crate) live: Option<LiveRef>,
    /// The live deployment's mode.
    pub(crate) mode: Option<DeliveryMode>,
    pub(crate) deployed_at: Option<String>,
    /// Whether the draft differs from the live configuration.
    pub(crate) draft_pending: bool,
    pub(crate) newest_version: Option<u32>,
    /// How many versions are stored.
    pub(crate) versions: u32,
    /// Sync calls since this host started.
    pub(crate) calls: u64,
    /// Sync calls that failed since this host started, those whose caller went away before
    /// the answer included.
    pub(crate) failures: u64,
    pub(crate) runs_queued: u64,
    pub(crate) runs_running: u64,
    pub(crate) endpoints: SyncEndpoint,
}

/// `GET /v1/agents`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentList {
    pub(crate) agents: Vec<AgentListed>,
}

/// A stored version of an agent's component.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionView {
    pub(crate) version: u32,
    /// `sha256:…` of the component's bytes.
    pub(crate) digest: String,
    /// Bytes.
    pub(crate) size: u64,
    pub(crate) created_at: String,
    pub(crate) last_deployed_at: Option<String>,
    /// Whether the live deployment runs it.
    pub(crate) live: bool,
}

impl VersionView {
    pub(crate) fn new(v: &VersionRecord, live: bool) -> Self {
        Self {
            version: v.version,
            digest: v.digest.clone(),
            size: v.size,
            created_at: rfc3339(v.created_at),
            last_deployed_at: v.last_deployed_at.map(rfc3339),
            live,
        }
    }

    /// Every version of an agent, the live one marked.
    pub(crate) fn all(record: &AgentRecord) -> Vec<Self> {
        let live_version = record.live.as_ref().map(|d| d.version);
        record
            .versions
            .iter()
            .map(|v| Self::new(v, live_version == Some(v.version)))
            .collect()
    }
}

/// A deployment: a version with the configuration frozen when it was made.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeploymentView {
    pub(crate) deployment: u32,
    pub(crate) version: u32,
    pub(crate) digest: String,
    /// The frozen configuration (the access token reads `***`).
    pub(crate) config: AgentConfig,
    pub(crate) deployed_at: String,
    pub(crate) rolled_back_at: Option<String>,
    pub(crate) live: bool,
}

impl DeploymentView {
    pub(crate) fn new(d: &DeploymentRecord, live: bool) -> Self {
        Self {
            deployment: d.deployment,
            version: d.version,
            digest: d.digest.clone(),
            config: d.config.redacted(),
            deployed_at: rfc3339(d.deployed_at),
            rolled_back_at: d.rolled_back_at.map(rfc3339),
            live,
        }
    }
}

/// `GET /v1/agents/{agent}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentView {
    pub(crate) agent: String,
    pub(crate) created_at: String,
    pub(crate) endpoints: Endpoints,
    pub(crate) live: Option<DeploymentView>,
    /// The configuration the next deploy freezes.
    pub(crate) draft: AgentConfig,
    pub(crate) draft_pending: bool,
    pub(crate) versions: Vec<VersionView>,
    pub(crate) deployments: Vec<DeploymentView>,
}

/// An upload's answer: 201 for a new version, 200 when the bytes were already a version.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Uploaded {
    pub(crate) agent: String,
    pub(crate) version: u32,
    pub(crate) digest: String,
    pub(crate) size: u64,
    pub(crate) created_at: String,
}

/// `GET /v1/agents/{agent}/versions`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionList {
    pub(crate) agent: String,
    pub(crate) versions: Vec<VersionView>,
}

/// `GET /v1/agents/{agent}/versions/{version}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionDetail {
    pub(crate) agent: String,
    #[serde(flatten)]
    pub(crate) version: VersionView,
    /// The component's imports and exports in WIT.
    pub(crate) wit: String,
}

/// A deploy's or rollback's answer: what is live now.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Deployed {
    pub(crate) agent: String,
    pub(crate) deployment: u32,
    pub(crate) version: u32,
    pub(crate) digest: String,
    pub(crate) deployed_at: String,
    pub(crate) config: AgentConfig,
    pub(crate) endpoints: Endpoints,
}

impl Deployed {
    pub(crate) fn new(state: &AppState, d: &DeploymentRecord) -> Self {
        Self {
            agent: d.agent.clone(),
            deployment: d.deployment,
            version: d.version,
            digest: d.digest.clone(),
            deployed_at: rfc3339(d.deployed_at),
            config: d.config.redacted(),
            endpoints: Endpoints::new(state, &d.agent, d.config.mode),
        }
    }
}

/// What a deploy would change, changing nothing.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Preview {
    pub(crate) agent: String,
    pub(crate) live: Option<DeploymentView>,
    /// The version the deploy would make live.
    pub(crate) version: VersionView,
    /// The configuration it would freeze.
    pub(crate) config: AgentConfig,
    pub(crate) endpoints: Endpoints,
    pub(crate) changes: Vec<ConfigChange>,
    pub(crate) changes_anything: bool,
    /// The draft's entity tag, as `GET …/config` gives it in `ETag`. Sent in `If-Match` with
    /// the deploy, it deploys this configuration or nothing (412 when the draft changed
    /// since): what a Confirm dialog showed is what goes live.
    pub(crate) draft_etag: String,
}
