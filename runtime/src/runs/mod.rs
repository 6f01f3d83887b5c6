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
//! - `workers`: the bounded pool that executes runs;
//! - `push`: delivery of ended runs' events to the user's application, with retries;
//! - `signing`: Standard Webhooks signatures;
//! - `recorder`: what a queued run's guest logs and reports, kept for pollers;
//! - `view`: a run as the API shows it.

mod push;
pub(crate) mod recorder;
pub(crate) mod signing;
pub(crate) mod view;
mod workers;
mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::agents::Agents;
use crate::blocking::blocking;
use crate::clock;
use crate::error::Error;
use crate::registry::Deployment;
use crate::store::{NewRun, RunRecord, RunStatus, RunWrite, Store, WriteOutcome};

pub use push::PushSettings;
use writer::Writer;

/// A new run id: `run_` and a UUIDv7 in hex, so ids sort by creation time (which keeps the
/// newest-first listing an index scan) and are unguessable enough to be used as handles.
/// Its random bits come from a per-thread CSPRNG (uuid's `fast-rng`), not a system call:
/// every sync call makes an id, and `getrandom` cost more than a microsecond of each. Hex
/// goes through a stack buffer rather than `format!`, which cost as much again as the UUID.
pub(crate) fn new_run_id() -> String {
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
    /// Runs executing at once.
    pub workers: usize,
    /// Runs of one agent waiting in the queue at most; past it, submissions get 429.
    pub max_queued_per_agent: usize,
    /// How long a worker's claim on a run lasts without renewal.
    pub lease: Duration,
    /// Attempts before a run that keeps losing its host fails as `lost`.
    pub max_attempts: u32,
    /// How long ended runs are kept.
    pub retention: Duration,
    /// Push delivery.
    pub push: PushSettings,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            workers: 64,
            max_queued_per_agent: 100_000,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            retention: Duration::from_secs(7 * 24 * 3600),
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

/// What reacts to committed writes (see `writer`), and the in-memory state of dispatch.
pub(crate) struct Hooks {
    /// Wakes the dispatcher for an agent whose queue has runs and no drainer.
    dispatch: mpsc::UnboundedSender<String>,
    /// Runs in the dispatch queue or executing: the reconciler re-dispatches only queued
    /// runs that are not here.
    known: Mutex<HashSet<String>>,
    /// Each agent's runs waiting for room, oldest first.
    queues: Mutex<HashMap<String, Arc<workers::AgentQueue>>>,
    /// Runs executing now, with the way to interrupt each.
    running: Mutex<HashMap<String, oneshot::Sender<()>>>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    push: Arc<Notify>,
    accepted: AtomicU64,
    ended: AtomicU64,
    commits: AtomicU64,
    writes: AtomicU64,
}

impl Hooks {
    fn committed(&self, write: &RunWrite, outcome: &WriteOutcome) {
        match (write, outcome) {
            (RunWrite::Insert(run), WriteOutcome::Inserted) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                // Its place in the agent's queue was reserved by `submit`.
                self.enqueue(run.id.clone(), &run.agent, false);
            }
            (RunWrite::Finish { id, .. }, WriteOutcome::Finished { delivery }) => {
                self.ended(id, *delivery);
            }
            (
                RunWrite::Cancel { id, .. },
                WriteOutcome::Cancelled {
                    was_running,
                    delivery,
                },
            ) => {
                // Interrupting here, after the commit, reaches the worker even if the client
                // that asked has gone away.
                if *was_running {
                    self.interrupt(id);
                } else if let RunWrite::Cancel { agent, .. } = write {
                    self.unqueue(id, agent);
                }
                self.ended(id, *delivery);
            }
            (_, WriteOutcome::Expired { ids, delivery }) => {
                for (id, agent) in ids {
                    self.unqueue(id, agent);
                    self.ended(id, false);
                }
                if *delivery {
                    self.push.notify_one();
                }
            }
            (_, WriteOutcome::Reclaimed { ids }) => {
                for (id, agent) in ids {
                    tracing::warn!(run_id = %id, "a run's lease ran out; queuing it again");
                    self.dispatch(id.clone(), agent);
                }
            }
            (_, WriteOutcome::Redelivering) => self.push.notify_one(),
            _ => {}
        }
    }

    fn batch(&self, writes: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }

    /// Queues run `id` of `agent` for execution, unless it already is (recovery and the
    /// reconciler: the run's place is not reserved yet).
    fn dispatch(&self, id: String, agent: &str) {
        self.enqueue(id, agent, true);
    }

    fn enqueue(&self, id: String, agent: &str, reserve: bool) {
        let queue = self.queue(agent);
        if !self.known().insert(id.clone()) {
            if !reserve {
                queue.release();
            }
            return;
        }
        if queue.push(id, reserve) {
            let _ = self.dispatch.send(agent.to_owned());
        }
    }

    /// Takes a run that will not start (cancelled or expired while waiting) out of its
    /// agent's queue, so it neither counts against the queue bound nor waits for room.
    fn unqueue(&self, id: &str, agent: &str) {
        if self.queue(agent).remove(id) {
            self.known().remove(id);
        }
    }

    /// The agent's queue, made on first use.
    fn queue(&self, agent: &str) -> Arc<workers::AgentQueue> {
        Arc::clone(
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.to_owned())
                .or_default(),
        )
    }

    fn known(&self) -> MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops run `id` if it is executing here: its future is dropped, and with it the
    /// guest's `Store`. A guest spinning on CPU yields at every epoch tick, so this takes
    /// effect within one tick.
    fn interrupt(&self, id: &str) {
        if let Some(stop) = self.running().remove(id) {
            let _ = stop.send(());
        }
    }

    fn ended(&self, id: &str, delivery: bool) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        if delivery {
            self.push.notify_one();
        }
        let waiting = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(notify) = waiting {
            notify.notify_waiters();
        }
    }

    /// The notifier pollers of `id` wait on, registered until the guard drops.
    fn waiter<'a>(&'a self, id: &'a str) -> Waiter<'a> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let notify = Arc::clone(waiters.entry(id.to_owned()).or_default());
        Waiter {
            hooks: self,
            id,
            notify,
        }
    }
}

/// A poller's registration; dropping it (the poll ended, or its client went away) removes
/// the entry when no other poller of the same run shares it.
struct Waiter<'a> {
    hooks: &'a Hooks,
    id: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self.hooks.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let ours = waiters
            .get(self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify));
        // The map and this poller hold it: nobody else waits.
        if ours && Arc::strong_count(&self.notify) <= 2 {
            waiters.remove(self.id);
        }
    }
}

/// Counters of the run queue for `/v1/stats`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
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
    store: Arc<dyn Store>,
    agents: Arc<Agents>,
    writer: Writer,
    hooks: Arc<Hooks>,
    settings: RunSettings,
    /// Free worker slots.
    slots: Arc<tokio::sync::Semaphore>,
    /// Set at shutdown: no new run starts.
    stopping: AtomicBool,
    pusher: push::Pusher,
}

impl Runs {
    /// Recovers runs left by the previous process and starts the writer, the workers, the
    /// pusher and the sweeper.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn start(
        store: Arc<dyn Store>,
        agents: Arc<Agents>,
        settings: RunSettings,
    ) -> Result<Arc<Self>, Error> {
        let (dispatch, queue) = mpsc::unbounded_channel();
        let hooks = Arc::new(Hooks {
            dispatch,
            known: Mutex::default(),
            queues: Mutex::default(),
            running: Mutex::default(),
            waiters: Mutex::default(),
            push: Arc::new(Notify::new()),
            accepted: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        });
        let writer = Writer::start(Arc::clone(&store), Arc::clone(&hooks));
        let pusher = push::Pusher::new(
            Arc::clone(&store),
            writer.clone(),
            Arc::clone(&hooks.push),
            settings.push.clone(),
        )
        .map_err(Error::Internal)?;
        let runs = Arc::new(Self {
            store: Arc::clone(&store),
            agents,
            writer,
            hooks,
            slots: Arc::new(tokio::sync::Semaphore::new(settings.workers.max(1))),
            settings,
            stopping: AtomicBool::new(false),
            pusher,
        });

        let (max_attempts, now) = (runs.settings.max_attempts, clock::now_ms());
        let recovered = blocking(move || store.recover_runs(now, max_attempts)).await??;
        if recovered.requeued > 0 || recovered.lost > 0 {
            tracing::warn!(
                requeued = recovered.requeued,
                lost = recovered.lost,
                "runs that were running when the host stopped: executing them again (at-least-once)"
            );
        }
        for (id, agent) in recovered.queued {
            runs.hooks.dispatch(id, &agent);
        }
        if recovered.lost > 0 {
            runs.hooks.push.notify_one();
        }

        tokio::spawn(workers::dispatch(Arc::clone(&runs), queue));
        runs.pusher.spawn();
        tokio::spawn(sweep(Arc::clone(&runs)));
        Ok(runs)
    }

    /// Accepts a run on `deployment` (the live one) and answers once it is durable.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a bad idempotency key, [`Error::Conflict`] when the key
    /// names an earlier run with another request.
    pub(crate) async fn submit(
        &self,
        deployment: &Deployment,
        input: Vec<u8>,
        content_type: String,
        idempotency_key: Option<String>,
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
        // A place in the agent's queue, reserved before the insert so that concurrent
        // submissions cannot all pass the bound; given back unless a run takes it.
        let queue = self.hooks.queue(&deployment.agent);
        if !queue.reserve(self.settings.max_queued_per_agent) {
            return Err(Error::Overloaded {
                message: format!(
                    "agent `{}` already has {} runs waiting; retry later",
                    deployment.agent, self.settings.max_queued_per_agent
                ),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        let now = clock::now_ms();
        let wait = i64::try_from(deployment.max_queue_wait.as_millis()).unwrap_or(i64::MAX);
        let run = NewRun {
            id: new_run_id(),
            agent: deployment.agent.to_string(),
            deployment: deployment.deployment,
            version: deployment.version,
            input,
            content_type,
            created_at: now,
            expires_at: now.saturating_add(wait),
            idempotency,
            push: deployment.push.is_some(),
        };
        let id = run.id.clone();
        let outcome = self.writer.write(RunWrite::Insert(run)).await;
        if !matches!(outcome, Ok(WriteOutcome::Inserted)) {
            queue.release();
        }
        match outcome? {
            WriteOutcome::Inserted => Ok(Submitted { id, created: true }),
            WriteOutcome::NotFound => Err(Error::NotFound(format!(
                "no agent named `{}` is deployed",
                deployment.agent
            ))),
            WriteOutcome::Replayed { id } => Ok(Submitted { id, created: false }),
            WriteOutcome::IdempotencyConflict => Err(Error::Conflict(
                "this `Idempotency-Key` was used in the last 24 h with another request".into(),
            )),
            other => Err(unexpected(&other)),
        }
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
        let waiter = self.hooks.waiter(id);
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
        let store = Arc::clone(&self.store);
        let (a, i) = (agent.to_owned(), id.to_owned());
        blocking(move || store.run(&a, &i))
            .await??
            .ok_or_else(|| no_run(id))
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
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        Ok(blocking(move || store.list_runs(&a, status, limit, cursor.as_deref())).await??)
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
    pub async fn rerun(&self, agent: &str, id: &str) -> Result<Submitted, Error> {
        let store = Arc::clone(&self.store);
        let (a, i) = (agent.to_owned(), id.to_owned());
        let (input, content_type) = blocking(move || store.run_input(&a, &i))
            .await??
            .ok_or_else(|| no_run(id))?;
        let deployment = self.agents.live(agent)?;
        self.submit(&deployment, input, content_type, None).await
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
    /// receiver's HTTP status.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the live deployment does not push, [`Error::Failed`] when the
    /// receiver cannot be reached.
    pub async fn push_test(&self, agent: &str) -> Result<u16, Error> {
        let deployment = self.agents.live(agent)?;
        let Some(push) = deployment.push.clone() else {
            return Err(Error::Conflict(format!(
                "the live deployment of `{agent}` does not push (set mode async and push, then deploy)"
            )));
        };
        self.pusher.test(agent, &push).await
    }

    /// At shutdown: starts no new run, lets running ones finish until `deadline`, and gives
    /// those still running back to the queue without counting the attempt (a clean stop is
    /// not a crash). Queued runs stay queued, durable, for the next start.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        self.stopping.store(true, Ordering::Relaxed);
        while !self.hooks.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished: Vec<String> = self.hooks.running().keys().cloned().collect();
        for id in unfinished {
            tracing::warn!(run_id = %id, "stopping with the run unfinished; it goes back to the queue");
            if let Err(e) = self.writer.write(RunWrite::Release { id }).await {
                tracing::error!("releasing a run at shutdown: {e:#}");
            }
        }
    }

    /// Counters for `/v1/stats`.
    pub fn stats(&self) -> RunStats {
        RunStats {
            runs_accepted_total: self.hooks.accepted.load(Ordering::Relaxed),
            runs_ended_total: self.hooks.ended.load(Ordering::Relaxed),
            runs_running: self.hooks.running().len() as u64,
            run_commits_total: self.hooks.commits.load(Ordering::Relaxed),
            run_writes_total: self.hooks.writes.load(Ordering::Relaxed),
        }
    }
}

/// Expires runs that waited too long and purges ended runs past retention.
async fn sweep(runs: Arc<Runs>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = tokio::time::Instant::now();
    let mut last_reconcile = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let now = clock::now_ms();
        runs.writer.write_detached(RunWrite::ExpireDue { now });
        if last_reconcile.elapsed() >= Duration::from_secs(10) {
            last_reconcile = tokio::time::Instant::now();
            reconcile(&runs, now).await;
        }
        if last_purge.elapsed() >= Duration::from_secs(60) {
            last_purge = tokio::time::Instant::now();
            let retention = i64::try_from(runs.settings.retention.as_millis()).unwrap_or(i64::MAX);
            runs.writer.write_detached(RunWrite::Purge {
                before: now.saturating_sub(retention),
            });
        }
    }
}

/// Repairs what a failed write could leave behind: running runs whose worker is gone (their
/// lease ran out) go back to the queue, and queued runs that nothing will pick up (their
/// start was lost) are dispatched again. A run dispatched twice starts once: the start is a
/// conditional update.
async fn reconcile(runs: &Runs, now: i64) {
    if let Err(e) = runs.writer.write(RunWrite::Reclaim { now }).await {
        tracing::error!("reclaiming runs with lapsed leases: {e:#}");
    }
    let store = Arc::clone(&runs.store);
    match blocking(move || store.queued_runs()).await {
        Ok(Ok(queued)) => {
            for (id, agent) in queued {
                runs.hooks.dispatch(id, &agent);
            }
        }
        Ok(Err(e)) => tracing::error!("listing queued runs: {e:#}"),
        Err(e) => tracing::error!("listing queued runs: {e:#}"),
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
