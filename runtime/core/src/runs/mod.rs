//! Runs: one invocation of an agent, named by a run id.
//!
//! Sync calls are runs that live only for their request (never written to the database).
//! Queued runs are durable: a submission is answered once the run is committed, workers
//! execute runs on the deployment that was live when each was accepted, results are polled
//! or pushed.
//!
//! Execution is **at-least-once**: a run whose host dies mid-attempt is executed again when
//! the host starts (its `attempt` number says so), until `max_attempts`, after which it
//! fails as `lost`. Agents with side effects should make them idempotent (the run id is a
//! natural key).
//!
//! - `writer`: group commit of every run-queue write;
//! - `state`: what reacts to committed writes, and the in-memory state of dispatch;
//! - `queue`: one agent's runs waiting for room;
//! - `workers`: the bounded pool that executes runs, each through [`crate::calls`];
//! - `recorder`: what a queued run's guest logs and reports, kept for pollers;
//! - `sweeper`: expiry, retention, and repairs of what a failed write left behind;
//! - `push`: delivery of ended runs' events to the user's application, with retries;
//! - `view`: a run as the API shows it.

mod events;
mod push;
mod queue;
mod recorder;
mod state;
mod sweeper;
mod view;
mod workers;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument as _;

use gust_model::{RunRecord, RunStatus, TraceContext};
use gust_store::Store;
use gust_store::queue::{IDEMPOTENCY_WINDOW_MS, NewRun, RunWrite, WriteOutcome};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::background::{Background, Stage};
use crate::calls::Calls;
use crate::clock;
use crate::deploy::{Admission, Deployment, Lifecycle};
use crate::error::Error;
use crate::secrets::PushSecrets;

pub use events::{Kept, RunEvent, RunEvents, Seen};
pub use push::PushSettings;
use state::QueueState;
pub use view::{
    Delivery, Outbound, Payload, Progress, RunError, RunLog, RunSummary, RunView, chunk_json,
    payload_json, run_json,
};
use writer::Writer;

/// A new run id: `run_` and a UUIDv7 in hex, so ids sort by creation time (which keeps the
/// newest-first listing an index scan) and are unguessable enough to be used as handles.
/// Its random bits come from a per-thread CSPRNG (uuid's `fast-rng`), not a system call:
/// every sync call makes an id, and `getrandom` cost more than a microsecond of each. Hex
/// goes through a stack buffer rather than `format!`, which cost as much again as the UUID.
pub fn new_run_id() -> String {
    let mut hex = [0; uuid::fmt::Simple::LENGTH];
    let hex = Uuid::now_v7().simple().encode_lower(&mut hex);
    let mut id = String::with_capacity(RUN_ID_PREFIX.len() + hex.len());
    id.push_str(RUN_ID_PREFIX);
    id.push_str(hex);
    id
}

const RUN_ID_PREFIX: &str = "run_";

/// Server settings of the run queue.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Runs executing at once, at most; `None` (the default): as many as admission lets
    /// through, which bounds them by pool slots and memory like sync calls. Runs of agent
    /// flows mostly wait on models and tools, so a fixed count sized for cores would leave
    /// the host idle with runs queued.
    pub workers: Option<usize>,
    /// Runs of one agent waiting in the queue at most; past it, submissions get 429.
    pub max_queued_per_agent: usize,
    /// How long a worker's claim on a run lasts without renewal.
    pub lease: Duration,
    /// Attempts before a run that keeps losing its host fails as `lost`.
    pub max_attempts: u32,
    /// How long ended runs are kept.
    pub retention: Duration,
    /// Bytes one agent's stored runs (inputs, outputs, logs) may take; past it new runs are
    /// refused with 507 `storage_full` until retention makes room.
    pub max_stored_bytes_per_agent: u64,
    /// Push delivery.
    pub push: PushSettings,
}

impl RunSettings {
    /// Checks the settings that must hold together.
    ///
    /// # Errors
    /// A message for the user when the retention is shorter than the idempotency window:
    /// a run purged earlier would let a retried submission with the same
    /// `Idempotency-Key` run a second time.
    pub fn validate(&self) -> Result<(), String> {
        let window = Duration::from_millis(IDEMPOTENCY_WINDOW_MS.unsigned_abs());
        if self.retention < window {
            return Err(format!(
                "the retention of ended runs ({} h) must be at least the idempotency window ({} h)",
                self.retention.as_secs() / 3600,
                window.as_secs() / 3600
            ));
        }
        Ok(())
    }
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            workers: None,
            max_queued_per_agent: 100_000,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_stored_bytes_per_agent: 1 << 30,
            push: PushSettings::default(),
        }
    }
}

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The result of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The run.
    pub id: String,
    /// `false` when an `Idempotency-Key` named an earlier run, which is returned instead.
    pub created: bool,
}

/// Counters of the run queue for `/v1/stats`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunStats {
    /// Runs accepted since start.
    pub runs_accepted_total: u64,
    /// Runs that reached a final status since start.
    pub runs_ended_total: u64,
    /// Runs executing right now.
    pub runs_running: u64,
    /// Transactions the run queue committed (each one fsync).
    pub run_commits_total: u64,
    /// Writes those transactions carried: over `run_commits_total`, the group-commit
    /// batch size.
    pub run_writes_total: u64,
}

/// The run queue; see the module docs.
pub struct Runs {
    store: Store,
    lifecycle: Arc<Lifecycle>,
    calls: Arc<Calls>,
    admission: Arc<Admission>,
    background: Background,
    writer: Writer,
    state: Arc<QueueState>,
    settings: RunSettings,
    /// Free worker slots, when `workers` caps them.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    pusher: push::Pusher,
    /// Set while the host's disk is almost full: submissions are refused.
    disk_low: AtomicBool,
    /// Live events of the runs executing here.
    events: Arc<RunEvents>,
    /// Cancelled when no run may start any more: at the start of a clean stop's grace
    /// period ([`Runs::drain`]), or with the intake.
    starting: CancellationToken,
}

impl Runs {
    /// Recovers runs left by the previous process and starts the writer, the dispatcher,
    /// the pusher and the sweeper, each in its stage of `background`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn start(
        store: Store,
        lifecycle: Arc<Lifecycle>,
        calls: Arc<Calls>,
        secrets: Arc<PushSecrets>,
        settings: RunSettings,
        background: &Background,
    ) -> Result<Arc<Self>, Error> {
        let (dispatch, queue) = mpsc::unbounded_channel();
        let events = Arc::new(RunEvents::default());
        let state = Arc::new(QueueState::new(
            dispatch,
            Arc::clone(calls.metrics()),
            Arc::clone(&events),
        ));
        let writer = Writer::start(store.clone(), Arc::clone(&state), background);
        let pusher = push::Pusher::new(
            background.clone(),
            store.clone(),
            secrets,
            writer.clone(),
            Arc::clone(&state.push),
            settings.push.clone(),
            Arc::clone(calls.metrics()),
        )
        .map_err(Error::Internal)?;
        let admission = Arc::clone(lifecycle.admission());
        let runs = Arc::new(Self {
            store: store.clone(),
            lifecycle,
            calls,
            admission,
            background: background.clone(),
            writer,
            state,
            slots: settings
                .workers
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
            settings,
            pusher,
            disk_low: AtomicBool::new(false),
            events,
            starting: background.token(Stage::Intake).child_token(),
        });

        let (max_attempts, now) = (runs.settings.max_attempts, clock::now_ms());
        let recovered = store.recover_runs(now, max_attempts).await?;
        if recovered.requeued > 0 || recovered.lost > 0 {
            tracing::warn!(
                requeued = recovered.requeued,
                lost = recovered.lost,
                "runs that were running when the host stopped: executing them again (at-least-once)"
            );
        }
        for (id, agent) in recovered.queued {
            runs.state.dispatch(id, &agent);
        }
        if recovered.lost > 0 {
            runs.state.push.notify_one();
        }

        let (dispatcher, starting) = (Arc::clone(&runs), runs.starting.clone());
        background.spawn(Stage::Intake, move |_| {
            workers::dispatch(dispatcher, queue, starting)
        });
        runs.pusher.start();
        let swept = Arc::clone(&runs);
        background.spawn(Stage::Intake, move |stop| sweeper::sweep(swept, stop));
        Ok(runs)
    }

    /// Accepts a run on `deployment` (the live one) and answers once it is durable.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a bad idempotency key, [`Error::Conflict`] when the key
    /// names an earlier run with another request.
    pub async fn submit(
        &self,
        deployment: &Deployment,
        input: Vec<u8>,
        content_type: String,
        idempotency_key: Option<String>,
        trace: Option<TraceContext>,
    ) -> Result<Submitted, Error> {
        let idempotency = match idempotency_key {
            Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY => {
                return Err(Error::BadRequest(format!(
                    "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )));
            }
            Some(key) => {
                let mut hash = Sha256::new();
                hash.update(content_type.as_bytes());
                hash.update([0]);
                hash.update(&input);
                Some((key, hex::encode(hash.finalize())))
            }
            None => None,
        };
        if self.disk_low.load(Ordering::Relaxed) {
            return Err(Error::StorageFull(
                "the host's disk is almost full; runs are not accepted until space is freed".into(),
            ));
        }
        // A place in the agent's queue, reserved before the insert so that concurrent
        // submissions cannot all pass the bound; given back (by the writer) unless a run
        // takes it.
        let queue = self.state.queue(deployment.name());
        if !queue.reserve(self.settings.max_queued_per_agent) {
            return Err(Error::Overloaded {
                message: format!(
                    "agent `{}` already has {} runs waiting; retry later",
                    deployment.name(),
                    self.settings.max_queued_per_agent
                ),
                retry_after: Some(Duration::from_secs(1)),
                bound: None,
            });
        }
        let now = clock::now_ms();
        let wait = i64::try_from(deployment.max_queue_wait.as_millis()).unwrap_or(i64::MAX);
        let id = new_run_id();
        // The run's own span: its acceptance (up to the commit), under the caller's span when
        // the request named one. It is the context the run keeps, so every attempt and every
        // push is its child: one run, one tree.
        let span = tracing::info_span!(
            target: gust_wasm::trace::TARGET,
            "run",
            agent = %deployment.name(),
            run_id = %id,
        );
        if let Some(caller) = &trace {
            gust_wasm::trace::set_parent(&span, caller);
        }
        let trace = gust_wasm::trace::context(&span).or(trace);
        let run = NewRun {
            id: id.clone(),
            agent: deployment.name().to_string(),
            deployment: deployment.number,
            version: deployment.version(),
            input,
            content_type,
            created_at: now,
            expires_at: now.saturating_add(wait),
            idempotency,
            push: deployment.push.is_some(),
            max_stored_bytes: self.settings.max_stored_bytes_per_agent,
            trace,
        };
        // The writer gives the place back unless the run is inserted, whatever happens to
        // this request meanwhile.
        let outcome = self
            .writer
            .write(RunWrite::Insert(run))
            .instrument(span)
            .await;
        match outcome? {
            WriteOutcome::Inserted => Ok(Submitted { id, created: true }),
            WriteOutcome::NotFound => Err(Error::NotFound(format!(
                "no agent named `{}` is deployed",
                deployment.name()
            ))),
            WriteOutcome::Replayed { id } => Ok(Submitted { id, created: false }),
            WriteOutcome::StorageFull => Err(Error::StorageFull(format!(
                "agent `{}` keeps {} MiB of runs already, its bound; runs are accepted again as retention removes ended ones",
                deployment.name(),
                self.settings.max_stored_bytes_per_agent >> 20
            ))),
            WriteOutcome::IdempotencyConflict => Err(Error::Conflict(
                "this `Idempotency-Key` was used in the last 24 h with another request".into(),
            )),
            other => Err(unexpected(&other)),
        }
    }

    /// The input a run was submitted with, and its content type.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown (or purged) run.
    pub async fn input(&self, agent: &str, id: &str) -> Result<(Vec<u8>, String), Error> {
        self.store
            .run_input(agent, id)
            .await?
            .ok_or_else(|| no_run(id))
    }

    /// One run; with `wait`, holds until it ends or `wait` passes.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown (or purged) run.
    pub async fn get(
        &self,
        agent: &str,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<RunRecord, Error> {
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return self.read(agent, id).await;
        };
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.state.waiter(id);
        loop {
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            // Registered before the read: an end committed after it still wakes us.
            notified.as_mut().enable();
            let run = self.read(agent, id).await?;
            if run.status.is_final() || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(run);
            }
        }
    }

    async fn read(&self, agent: &str, id: &str) -> Result<RunRecord, Error> {
        self.store.run(agent, id).await?.ok_or_else(|| no_run(id))
    }

    /// Applies what another host sharing the database did to a run; see `crate::follow`.
    pub(crate) fn follow(&self, change: &gust_store::Change) {
        use gust_store::Change;
        match change {
            // Every host may take it: the start is a claim only one wins.
            Change::RunQueued { agent, id } => self.state.dispatch(id.clone(), agent),
            Change::RunCancelled { agent, id, .. } => self.state.cancelled_elsewhere(id, agent),
            Change::RunEnded { agent, id } => self.state.ended_elsewhere(id, agent),
            _ => {}
        }
    }

    /// Live events of the runs executing here (`GET …/runs/{id}/events`).
    pub fn events(&self) -> &Arc<RunEvents> {
        &self.events
    }

    /// Queued and running runs per agent (agents with none are left out).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn active(&self) -> Result<Vec<gust_store::queue::ActiveRuns>, Error> {
        Ok(self.store.active_runs().await?)
    }

    /// Runs of an agent, newest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn list(
        &self,
        agent: &str,
        status: Option<RunStatus>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Vec<RunRecord>, Error> {
        let runs = self
            .store
            .list_runs(agent, status, limit, cursor.as_deref())
            .await?;
        // Deleting an agent deletes its runs: only an empty page may be an unknown agent's.
        if runs.is_empty() && self.store.draft(agent).await?.is_none() {
            return Err(crate::deploy::no_agent(agent));
        }
        Ok(runs)
    }

    /// Cancels a queued or running run; a running one is interrupted (within one epoch
    /// tick, even when it spins on pure CPU).
    ///
    /// # Errors
    /// [`Error::NotFound`], or [`Error::Conflict`] when the run has already ended.
    pub async fn cancel(&self, agent: &str, id: &str) -> Result<RunRecord, Error> {
        let write = RunWrite::Cancel {
            agent: agent.to_owned(),
            id: id.to_owned(),
            now: clock::now_ms(),
        };
        match self.writer.write(write).await? {
            WriteOutcome::Cancelled { .. } => self.read(agent, id).await,
            WriteOutcome::AlreadyFinished(status) => Err(Error::Conflict(format!(
                "run `{id}` has already ended ({})",
                status.as_str()
            ))),
            WriteOutcome::NotFound => Err(no_run(id)),
            other => Err(unexpected(&other)),
        }
    }

    /// Submits a new run with the input of run `id`, on the live deployment.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run or when nothing is deployed.
    pub async fn rerun(
        &self,
        agent: &str,
        id: &str,
        trace: Option<TraceContext>,
    ) -> Result<Submitted, Error> {
        let (input, content_type) = self
            .store
            .run_input(agent, id)
            .await?
            .ok_or_else(|| no_run(id))?;
        let deployment = self.lifecycle.live(agent)?;
        self.submit(&deployment, input, content_type, None, trace)
            .await
    }

    /// Pushes an ended run's event again, with the same `webhook-id`.
    ///
    /// # Errors
    /// [`Error::NotFound`], or [`Error::Conflict`] when the run has not ended or its
    /// deployment does not push.
    pub async fn redeliver(&self, agent: &str, id: &str) -> Result<RunRecord, Error> {
        let write = RunWrite::Redeliver {
            agent: agent.to_owned(),
            id: id.to_owned(),
            now: clock::now_ms(),
        };
        match self.writer.write(write).await? {
            WriteOutcome::Redelivering => self.read(agent, id).await,
            WriteOutcome::NoDelivery => Err(Error::Conflict(format!(
                "run `{id}` has no push event to deliver again: it has not ended, or its deployment does not push"
            ))),
            WriteOutcome::NotFound => Err(no_run(id)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a `push.test` event to the live deployment's push target; answers with the
    /// receiver's HTTP status, or why it could not be reached (a test reports what happened:
    /// an unreachable receiver is its finding, not the host failing).
    ///
    /// # Errors
    /// [`Error::Conflict`] when the live deployment does not push, [`Error::BadRequest`]
    /// when the push URL is refused.
    pub async fn push_test(&self, agent: &str) -> Result<Result<u16, String>, Error> {
        let deployment = self.lifecycle.live(agent)?;
        let Some(push) = deployment.push.clone() else {
            return Err(Error::Conflict(format!(
                "the live deployment of `{agent}` does not push (set mode async and push, then deploy)"
            )));
        };
        self.pusher.test(agent, &push).await
    }

    /// At shutdown: stops starting runs, then waits for the runs executing to finish, at
    /// most until `deadline`. Those still running then are stopped by their stage and go
    /// back to the queue without counting the attempt (a clean stop is not a crash); queued
    /// runs stay queued, durable, for the next start.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        // No run starts from now on: one started now would be cut off at the deadline (its
        // effects begun, to be done again), or, started as the last one ended, not even
        // waited for. The rest of the intake goes on through the grace period: following
        // other hosts (their cancels and ends reach the runs and the pollers here), the
        // token reload, the disk and database probes.
        self.starting.cancel();
        if !self.background.settle(Stage::Runs, deadline).await {
            tracing::warn!(
                running = self.state.running().len(),
                "runs still executing after the grace period; they go back to the queue"
            );
        }
    }

    /// Whether the host's disk is almost full (below `--min-free-disk-mib`): what writes to
    /// it, an upload too, is refused until space is freed.
    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }

    /// Tells the queue whether the host's disk is almost full (the server watches it).
    pub fn set_disk_low(&self, low: bool) {
        if self.disk_low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!("the disk is almost full: new runs are refused");
            } else {
                tracing::info!("disk space is back: runs are accepted again");
            }
        }
    }

    /// Counters for `/v1/stats`.
    pub fn stats(&self) -> RunStats {
        RunStats {
            runs_accepted_total: self.state.accepted.load(Ordering::Relaxed),
            runs_ended_total: self.state.ended.load(Ordering::Relaxed),
            runs_running: self.state.running().len() as u64,
            run_commits_total: self.state.commits.load(Ordering::Relaxed),
            run_writes_total: self.state.writes.load(Ordering::Relaxed),
        }
    }
}

fn no_run(id: &str) -> Error {
    Error::NotFound(format!("no run `{id}`"))
}

fn unexpected(outcome: &WriteOutcome) -> Error {
    Error::Internal(anyhow::anyhow!("unexpected run-queue outcome {outcome:?}"))
}

#[cfg(test)]
mod tests {
    use super::new_run_id;

    #[test]
    fn run_ids_are_unique_and_time_ordered() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(a.starts_with("run_") && a.len() == 36, "{a}");
        let uuid = uuid::Uuid::try_parse(&a[4..]).expect("a UUID after the prefix");
        assert_eq!(uuid.get_version_num(), 7, "{a}");
        assert_eq!(
            a[4..],
            uuid.simple().to_string(),
            "lowercase hex without dashes"
        );
        assert!(a < b, "a later id sorts after an earlier one: {a} {b}");
    }
}
