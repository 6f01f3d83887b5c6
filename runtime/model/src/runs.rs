//! Queued runs and their push deliveries, as they are kept and shown.

use serde::{Deserialize, Serialize};

/// Where a run is in its life. `succeeded`, `failed`, `cancelled` and `expired` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Accepted and durable, waiting for a worker.
    Queued,
    /// A worker is executing it.
    Running,
    /// The agent answered; `output` holds the answer.
    Succeeded,
    /// The agent or the host failed it; `error` says why.
    Failed,
    /// Cancelled before it ended.
    Cancelled,
    /// It waited in the queue longer than its deployment's `max_queue_wait_s`.
    Expired,
}

impl RunStatus {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Parses [`RunStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// A line a run logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// When, ms since the epoch.
    pub ts: i64,
    /// `trace`, `debug`, `info`, `warn`, `error`, or `stdout`/`stderr` for captured output.
    pub level: String,
    /// The line.
    pub message: String,
}

/// An outgoing HTTP request a run made (never its headers or bodies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundRequest {
    /// When it was sent, ms since the epoch.
    pub ts: i64,
    /// `GET`, `POST`, …
    pub method: String,
    /// `scheme://host[:port]`.
    pub host: String,
    /// The answer's status, if there was one.
    pub status: Option<u16>,
    /// How long it took, ms.
    pub duration_ms: u64,
    /// Why it failed or was denied, if it did.
    pub error: Option<String>,
}

/// The W3C Trace Context a request carried: kept with a queued run, so that its attempts and
/// pushes continue the trace of the request that submitted it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`.
    pub traceparent: String,
    /// `tracestate`, if any.
    pub tracestate: Option<String>,
}

/// How a run's execution ended.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// The agent answered.
    Succeeded {
        /// The answer's media type.
        content_type: String,
        /// The answer.
        output: Vec<u8>,
    },
    /// The agent or the host failed it.
    Failed {
        /// An error kind of the API (`failed`, `invalid_input`, `trap`, `timeout`, `lost`, …).
        kind: String,
        /// What happened.
        message: String,
    },
}

/// A run as stored, without its input.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// `run_…`.
    pub id: String,
    /// The agent.
    pub agent: String,
    /// The deployment it runs on.
    pub deployment: u32,
    /// That deployment's version.
    pub version: u32,
    /// Where it is.
    pub status: RunStatus,
    /// Acceptance time.
    pub created_at: i64,
    /// Start of the latest attempt.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// Attempts started so far.
    pub attempts: u32,
    /// The answer's content type and bytes, once succeeded.
    pub output: Option<(String, Vec<u8>)>,
    /// The error kind and message, once failed.
    pub error: Option<(String, String)>,
    /// The latest progress report.
    pub progress: Option<(f64, String)>,
    /// Log lines (bounded).
    pub logs: Vec<LogLine>,
    /// Outgoing HTTP requests (bounded).
    pub outbound: Vec<OutboundRequest>,
    /// Push delivery, when the run's deployment pushes.
    pub delivery: Option<DeliveryRecord>,
    /// The trace of the request that submitted it.
    pub trace: Option<TraceContext>,
}

/// Where a push delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not delivered yet; attempted at `next_attempt_at`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up: a permanent refusal, or the retry window passed.
    Failed,
}

impl DeliveryStatus {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses [`DeliveryStatus::as_str`]; anything unknown reads as pending.
    pub fn parse(s: &str) -> Self {
        match s {
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// One push event of a run (created when the run ends, if its deployment pushes).
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// The run.
    pub run_id: String,
    /// The agent.
    pub agent: String,
    /// `webhook-id`: the same on every attempt and on redelivery.
    pub event_id: String,
    /// `run.succeeded`, `run.failed`, `run.cancelled` or `run.expired`.
    pub event_type: String,
    /// Frozen from the deployment's push configuration.
    pub url: String,
    /// Frozen from the deployment's push configuration.
    pub access_token: String,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<i64>,
    /// When the event was created.
    pub created_at: i64,
}

/// The signing secrets of an agent's push deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSecrets {
    /// `whsec_…`, signs every push.
    pub current: String,
    /// The secret it replaced, with the time until which it still signs.
    pub previous: Option<(String, i64)>,
}
