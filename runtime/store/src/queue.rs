//! The run queue's writes: what the writer batches into one transaction (group commit),
//! and what each write did.

use gust_model::{DeliveryStatus, LogLine, OutboundRequest, RunOutcome, RunStatus, TraceContext};

/// How long an `Idempotency-Key` names its run, in milliseconds.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The `expires_at` of a run that no longer expires in the queue (it was released after it
/// started, [`RunWrite::Release`]).
pub const NEVER_EXPIRES: i64 = i64::MAX;

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
    /// The bytes the agent's stored runs may take: past it the run is refused
    /// ([`WriteOutcome::StorageFull`]).
    pub max_stored_bytes: u64,
    /// The trace of the request that submitted it.
    pub trace: Option<TraceContext>,
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
        /// The attempt renewing: an earlier one (its lease lapsed and the run was taken
        /// over) renews nothing and is told [`WriteOutcome::NotRunning`].
        attempt: u32,
        /// New lease end, ms.
        lease_until: i64,
    },
    /// Record progress of a running run.
    Progress {
        /// The run.
        id: String,
        /// The attempt reporting it (an earlier attempt's report is ignored).
        attempt: u32,
        /// 0.0 to 1.0.
        fraction: f64,
        /// What the agent said.
        message: String,
    },
    /// End a running run (ignored if it is no longer running, e.g. cancelled meanwhile, or
    /// runs another attempt now: a host whose lease lapsed while it was still running the
    /// run does not overwrite the attempt that took it over).
    Finish {
        /// The run.
        id: String,
        /// The attempt that ended.
        attempt: u32,
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
    /// shutting down and stopped it), if that attempt is still the run's: another host may
    /// have taken the run over after this one's lease lapsed. The run no longer expires:
    /// `max_queue_wait_s` bounds the wait of a run not started yet, and this one was.
    Release {
        /// The run.
        id: String,
        /// The attempt that was stopped.
        attempt: u32,
    },
    /// Queue again every running run whose lease ended before `now` (its worker is gone),
    /// except those a worker of this host is running: a wall-clock step can make a lease
    /// look lapsed while its worker is alive and renewing.
    Reclaim {
        /// Now, ms.
        now: i64,
        /// Runs executing on this host.
        running_here: Vec<String>,
        /// Attempts a run may have: one that used them up fails as `lost` instead.
        max_attempts: u32,
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
    /// The agent's stored runs are at their bound: the run was not accepted.
    StorageFull,
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
    /// Runs queued again, and runs failed as `lost` (by [`RunWrite::Reclaim`]).
    Reclaimed {
        /// The ids and agents of those queued again.
        ids: Vec<(String, String)>,
        /// The ids and agents of those that used up their attempts.
        lost: Vec<(String, String)>,
        /// Whether push deliveries were created for the lost ones.
        delivery: bool,
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
    /// Acceptance time, ms since the epoch (the attempt's trace shows the wait since).
    pub created_at: i64,
    /// The trace of the request that submitted it.
    pub trace: Option<TraceContext>,
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

/// An agent's runs that have not ended.
#[derive(Debug, Clone)]
pub struct ActiveRuns {
    /// The agent.
    pub agent: String,
    /// Runs waiting in the queue.
    pub queued: u64,
    /// Runs executing.
    pub running: u64,
    /// When the oldest queued run was accepted, ms since the epoch.
    pub oldest_queued_at: Option<i64>,
}
