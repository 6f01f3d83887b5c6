//! The bounded pool that executes runs. Accepted runs arrive on an in-memory queue (fed by
//! the writer after each commit, and at start by recovery); each is started in the store
//! (a conditional update: a run cancelled or expired meanwhile is skipped), executed on its
//! deployment, and finished in the store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::Runs;
use super::recorder::RunRecorder;
use crate::bindings::Mode;
use crate::clock;
use crate::gate::Admitted;
use crate::invoke::{self, Call};
use crate::store::{LogLine, OutboundRequest, RunOutcome, RunWrite, StartedRun, WriteOutcome};

/// One agent's runs waiting for room. A drainer task per agent with waiting runs takes
/// them in order as the agent's gate (and a worker slot) admits them, so an agent at its
/// limit never holds up the runs of others.
#[derive(Default)]
pub(super) struct AgentQueue {
    ids: Mutex<VecDeque<String>>,
    /// Runs waiting plus places reserved by submissions not yet committed: what the
    /// per-agent bound is checked against.
    places: AtomicUsize,
    /// A drainer is running for this queue.
    draining: AtomicBool,
}

impl AgentQueue {
    /// Reserves a place if fewer than `bound` are taken.
    pub(super) fn reserve(&self, bound: usize) -> bool {
        self.places
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < bound).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a reserved place back.
    pub(super) fn release(&self) {
        let _ = self
            .places
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Adds a run (taking a place unless one was reserved for it); `true` when the queue
    /// needs a drainer started.
    pub(super) fn push(&self, id: String, take_place: bool) -> bool {
        if take_place {
            self.places.fetch_add(1, Ordering::AcqRel);
        }
        self.lock().push_back(id);
        !self.draining.swap(true, Ordering::AcqRel)
    }

    /// Takes a run out (it will not start); `true` if it was waiting here.
    pub(super) fn remove(&self, id: &str) -> bool {
        let mut ids = self.lock();
        let Some(at) = ids.iter().position(|queued| queued == id) else {
            return false;
        };
        ids.remove(at);
        drop(ids);
        self.release();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next run, or `None` when the queue is empty (and then the drainer stops).
    fn pop(&self) -> Option<String> {
        loop {
            if let Some(id) = self.lock().pop_front() {
                self.release();
                return Some(id);
            }
            self.draining.store(false, Ordering::Release);
            // A push between the pop and the store above found `draining` still set and
            // started no drainer: take the queue back if it has runs again.
            if self.lock().is_empty() || self.draining.swap(true, Ordering::AcqRel) {
                return None;
            }
        }
    }
}

/// Starts a drainer for each agent whose queue needs one.
pub(super) async fn dispatch(runs: Arc<Runs>, mut wake: mpsc::UnboundedReceiver<String>) {
    while let Some(agent) = wake.recv().await {
        let queue = runs.hooks.queue(&agent);
        tokio::spawn(drain(Arc::clone(&runs), agent, queue));
    }
}

async fn drain(runs: Arc<Runs>, agent: String, queue: Arc<AgentQueue>) {
    loop {
        // The agent's room first, then a worker slot without waiting: a drainer never sits
        // on room it cannot use (that room is what this agent's sync calls need). With no
        // free slot, it gives the room back, waits for a slot to free up, and tries again.
        let Some(agent_room) = runs.agents.agent_gate(&agent).enter(None).await else {
            return;
        };
        let slot = match Arc::clone(&runs.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                drop(agent_room);
                match Arc::clone(&runs.slots).acquire_owned().await {
                    Ok(freed) => drop(freed),
                    Err(_) => return,
                }
                continue;
            }
            Err(tokio::sync::TryAcquireError::Closed) => return,
        };
        let Some(server_room) = runs.agents.server_gate().enter(None).await else {
            return;
        };
        if runs.stopping.load(Ordering::Relaxed) {
            // Shutting down: the runs stay queued in the store for the next start.
            return;
        }
        let Some(id) = queue.pop() else {
            return;
        };
        let admitted = Admitted::new(agent_room, server_room);
        let runs = Arc::clone(&runs);
        tokio::spawn(async move {
            execute(&runs, &id, admitted).await;
            runs.hooks.known().remove(&id);
            drop(slot);
        });
    }
}

async fn execute(runs: &Runs, id: &str, admitted: Admitted) {
    let lease = runs.settings.lease;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    // Interruptible from before the start commits: a cancel that lands right after it
    // finds this run already registered.
    let (stop, stopped) = oneshot::channel();
    runs.hooks.running().insert(id.to_owned(), stop);
    let now = clock::now_ms();
    let start = RunWrite::Start {
        id: id.to_owned(),
        now,
        lease_until: now.saturating_add(lease_ms),
    };
    let started = match runs.writer.write(start).await {
        Ok(WriteOutcome::Started(started)) => Some(started),
        // Cancelled, expired or deleted while it waited: nothing to do.
        Ok(_) => None,
        Err(e) => {
            tracing::error!(run_id = %id, "could not start the run: {e:#}");
            None
        }
    };
    let Some(started) = started else {
        runs.hooks.running().remove(id);
        return;
    };
    let ended = attempt(runs, id, started, stopped, lease).await;
    // The instance is gone: make room before the end is recorded.
    drop(admitted);
    runs.hooks.running().remove(id);
    let Some((outcome, (logs, outbound))) = ended else {
        // Interrupted by a cancel, which already recorded the run's end.
        return;
    };
    // Not waited for: the worker slot is free for the next run while the end commits (the
    // writer keeps writes in order, so it lands after this run's start and progress, and
    // pollers and pushes are woken after the commit). If it fails, the writer logs it, the
    // lease lapses and the reconciler queues the run again (at-least-once).
    runs.writer.write_detached(RunWrite::Finish {
        id: id.to_owned(),
        now: clock::now_ms(),
        outcome,
        logs,
        outbound,
    });
}

/// Executes one attempt; `None` when it was interrupted.
async fn attempt(
    runs: &Runs,
    id: &str,
    started: StartedRun,
    mut stopped: oneshot::Receiver<()>,
    lease: std::time::Duration,
) -> Option<(RunOutcome, (Vec<LogLine>, Vec<OutboundRequest>))> {
    let deployment = match runs
        .agents
        .deployment(&started.agent, started.deployment)
        .await
    {
        Ok(deployment) => deployment,
        Err(e) => {
            let outcome = RunOutcome::Failed {
                kind: e.kind().to_owned(),
                message: format!("the run's deployment could not be loaded: {e}"),
            };
            return Some((outcome, (Vec::new(), Vec::new())));
        }
    };
    let recorder = Arc::new(RunRecorder::new(id.to_owned(), runs.writer.clone()));
    let call = Call {
        run_id: Arc::from(id),
        input: started.input,
        content_type: started.content_type,
        mode: Mode::Async,
        attempt: started.attempt,
        timeout: deployment.async_timeout,
        recorder: Some(Arc::clone(&recorder)),
    };
    let runtime = Arc::clone(runs.agents.runtime());
    let call = invoke::invoke(&runtime, &deployment, call);
    tokio::pin!(call);
    let mut renew = tokio::time::interval(lease / 3);
    renew.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            _ = &mut stopped => return None,
            _ = renew.tick() => {
                let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
                runs.writer.write_detached(RunWrite::Renew {
                    id: id.to_owned(),
                    lease_until: clock::now_ms().saturating_add(lease_ms),
                });
            }
        }
    };
    let outcome = match result {
        Ok(output) => RunOutcome::Succeeded {
            content_type: output.content_type,
            output: output.bytes,
        },
        Err(e) => RunOutcome::Failed {
            kind: e.kind().to_owned(),
            message: e.to_string(),
        },
    };
    Some((outcome, recorder.finish()))
}
