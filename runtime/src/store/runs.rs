//! What the store keeps of queued runs and their push deliveries, and the writes the run
//! queue batches into one transaction (group commit).

use serde::{Deserialize, Serialize};

/// Where a run is in its life. `succeeded`, `failed`, `cancelled` and `expired` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A run to accept.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// `run_…`.
    pub id: String,
    /// The agent.
    pub agent: String,
    /// The deployment that was live when the run was accepted; it executes there.
    pub deployment: u32,
    /// That deployment's version.
    pub version: u32,
    /// The input, as sent.
    pub input: Vec<u8>,
    /// Its content type.
    pub content_type: String,
    /// Acceptance time, ms since the epoch.
    pub created_at: i64,
    /// When it expires if still queued, ms since the epoch.
    pub expires_at: i64,
    /// `Idempotency-Key` and the hash of what was sent with it.
    pub idempotency: Option<(String, String)>,
    /// Whether its deployment pushes ended runs (known at acceptance, so most runs need
    /// not look up their deployment's configuration when they end).
    pub push: bool,
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

    pub(crate) fn from_db(s: &str) -> Self {
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

/// One write of the run queue. The writer applies many in one transaction.
#[derive(Debug, Clone)]
pub enum RunWrite {
    /// Accept a run (or find the one its idempotency key names).
    Insert(NewRun),
    /// Start an attempt of a queued run: `running`, attempts + 1, a lease.
    Start {
        /// The run.
        id: String,
        /// Now, ms.
        now: i64,
        /// Lease end, ms.
        lease_until: i64,
    },
    /// Extend the lease of a running run.
    Renew {
        /// The run.
        id: String,
        /// New lease end, ms.
        lease_until: i64,
    },
    /// Record progress of a running run.
    Progress {
        /// The run.
        id: String,
        /// 0.0 to 1.0.
        fraction: f64,
        /// What the agent said.
        message: String,
    },
    /// End a running run (ignored if it is no longer running, e.g. cancelled meanwhile).
    Finish {
        /// The run.
        id: String,
        /// Now, ms.
        now: i64,
        /// How it ended.
        outcome: RunOutcome,
        /// Its log lines.
        logs: Vec<LogLine>,
        /// Its outgoing HTTP requests.
        outbound: Vec<OutboundRequest>,
    },
    /// Cancel a queued or running run.
    Cancel {
        /// The agent named in the request.
        agent: String,
        /// The run.
        id: String,
        /// Now, ms.
        now: i64,
    },
    /// Expire every queued run past its queue-wait limit.
    ExpireDue {
        /// Now, ms.
        now: i64,
    },
    /// Record a delivery attempt (ignored if the event was redelivered meanwhile).
    Delivery {
        /// The run.
        run_id: String,
        /// The event's `created_at` when the attempt was picked up: a redelivery resets it,
        /// and an older attempt's result must not overwrite the new round.
        round: i64,
        /// The new status.
        status: DeliveryStatus,
        /// Attempts made so far.
        attempts: u32,
        /// What went wrong, if it did.
        last_error: Option<String>,
        /// When to try again (pending only).
        next_attempt_at: Option<i64>,
    },
    /// Push a finished run's event again, now.
    Redeliver {
        /// The agent named in the request.
        agent: String,
        /// The run.
        id: String,
        /// Now, ms.
        now: i64,
    },
    /// Delete finished runs that ended before `before`.
    Purge {
        /// Cut-off, ms.
        before: i64,
    },
    /// Give a running run back to the queue without counting the attempt (the host is
    /// shutting down and stopped it).
    Release {
        /// The run.
        id: String,
    },
    /// Queue again every running run whose lease ended before `now` (its worker is gone).
    Reclaim {
        /// Now, ms.
        now: i64,
    },
}

/// What a [`RunWrite`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// The run was accepted.
    Inserted,
    /// The idempotency key names an earlier run with the same request.
    Replayed {
        /// That run.
        id: String,
    },
    /// The idempotency key names an earlier run with another request.
    IdempotencyConflict,
    /// The attempt started.
    Started(StartedRun),
    /// The run was not started: it is in this status now (`expired` if it just expired).
    NotStarted(Option<RunStatus>),
    /// Applied.
    Done,
    /// The run ended (and an event was created if its deployment pushes).
    Finished {
        /// Whether a push delivery was created.
        delivery: bool,
    },
    /// The run was no longer running; nothing changed.
    NotRunning,
    /// The run was cancelled.
    Cancelled {
        /// It was running: its worker must stop it.
        was_running: bool,
        /// A push delivery was created.
        delivery: bool,
    },
    /// The run had already ended in this status; nothing changed.
    AlreadyFinished(RunStatus),
    /// No such run (of that agent).
    NotFound,
    /// Runs queued again (by [`RunWrite::Reclaim`]).
    Reclaimed {
        /// Their ids and agents.
        ids: Vec<(String, String)>,
    },
    /// Runs that expired, and whether any push delivery was created.
    Expired {
        /// Their ids and agents.
        ids: Vec<(String, String)>,
        /// Whether deliveries were created.
        delivery: bool,
    },
    /// The run's event will be pushed again.
    Redelivering,
    /// The run has no push delivery to repeat (its deployment does not push), or it has
    /// not ended.
    NoDelivery,
}

/// What a [`RunWrite::Start`] hands the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedRun {
    /// The agent.
    pub agent: String,
    /// The deployment to run on.
    pub deployment: u32,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The input, as sent.
    pub input: Vec<u8>,
    /// Its content type.
    pub content_type: String,
}

/// What start-up recovery did.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Runs to execute, oldest first (queued ones and those that were running), with their
    /// agents.
    pub queued: Vec<(String, String)>,
    /// Runs that were running and had used up their attempts: failed as `lost`.
    pub lost: usize,
    /// Of `queued`, how many were running when the host stopped.
    pub requeued: usize,
}
