//! gust's plain types, shared by every layer: what an agent is called, how it is
//! configured, what is kept of its versions, deployments, runs and keys, and what an upload
//! check reports. No behaviour beyond parsing and formatting lives here; the crates above
//! give these types meaning (ARCHITECTURE.md).
//!
//! - [`name`]: agent names;
//! - [`config`]: an agent's configuration (draft and frozen), its delivery mode and push
//!   target, `allowed_hosts` patterns, the server's maxima;
//! - [`records`]: versions, deployments, agents as stored;
//! - [`runs`]: queued runs, their logs, outbound requests and push deliveries;
//! - [`keys`]: invoke keys as stored, and their rate limits;
//! - [`diagnostic`]: one problem found in an uploaded component;
//! - [`clock`]: timestamps in milliseconds since the Unix epoch;
//! - [`fs`]: atomic file writes, for the folders gust owns.

pub mod clock;
pub mod config;
pub mod diagnostic;
pub mod diff;
pub mod fs;
pub mod keys;
pub mod name;
pub mod records;
pub mod runs;

pub use config::{
    AgentConfig, DEFAULT_MEMORY_MIB, DeliveryMode, HostPattern, Maxima, PushConfig, REDACTED,
};
pub use diagnostic::Diagnostic;
pub use keys::{KeyRecord, RateLimit};
pub use name::valid_agent_name;
pub use records::{AgentRecord, AgentSummary, DeploymentRecord, VersionRecord};
pub use runs::{
    DeliveryRecord, DeliveryStatus, LogLine, OutboundRequest, PushSecrets, RunOutcome, RunRecord,
    RunStatus, TraceContext,
};
