//! The bounded pool that executes runs. Accepted runs arrive on an in-memory queue (fed by
//! the writer after each commit, and at start by recovery); each is started in the store
//! (a conditional update: a run cancelled or expired meanwhile is skipped), executed on its
//! deployment through [`Calls::call`](crate::calls::Calls::call), and finished in the store.

use std::sync::Arc;
use std::time::Duration;

use gust_model::{RunOutcome, clock};
use gust_store::queue::{RunWrite, StartedRun, WriteOutcome};
use gust_wasm::CallKind;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::Runs;
use super::queue::AgentQueue;
use super::recorder::RunRecorder;
use crate::background::Stage;
use crate::calls::{Admit, CallRequest, Input, Target};
use crate::deploy::Slot;

/// Starts a drainer for each agent whose queue needs one.
pub(super) async fn dispatch(
    runs: Arc<Runs>,
    mut wake: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
) {
    // Runs execute on loaded deployments: before the start-up load is done, each worker
    // would load (and on a cold cache compile) its deployment by itself.
    tokio::select! {
        () = stop.cancelled() => return,
        () = runs.lifecycle.registry().wait_ready() => {}
    }
    loop {
        let agent = tokio::select! {
            () = stop.cancelled() => return,
            agent = wake.recv() => match agent {
                Some(agent) => agent,
                None => return,
            },
        };
        let queue = runs.state.queue(&agent);
        let drainer = Arc::clone(&runs);
        let stop = stop.clone();
        runs.background.spawn(Stage::Intake, move |_| async move {
            // Shutting down: the runs stay queued in the store for the next start.
            tokio::select! {
                () = stop.cancelled() => {}
                () = drain(drainer, agent, queue) => {}
            }
        });
    }
}

async fn drain(runs: Arc<Runs>, agent: String, queue: Arc<AgentQueue>) {
    loop {
        // Looked up for each run: an agent deleted and made again meanwhile has a new gate.
        let gate = runs.admission.gate(&agent);
        // The agent's room first, then a worker slot without waiting: a drainer never sits
        // on room it cannot use (that room is what this agent's sync calls need). With no
        // free slot, it gives the room back, waits for a slot to free up, and tries again.
        let Some(agent_room) = gate.enter_until(None).await else {
            return;
        };
        let slot = match &runs.slots {
            None => None,
            Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    drop(agent_room);
                    match Arc::clone(slots).acquire_owned().await {
                        Ok(freed) => drop(freed),
                        Err(_) => return,
                    }
                    continue;
                }
                Err(tokio::sync::TryAcquireError::Closed) => return,
            },
        };
        // The same admission as a sync call's, without its deadline: a pool slot and room in
        // memory now; a place to start (and memory again) just before the instance is made
        // (`Calls::call`), so that starting the run in the store or loading its deployment
        // holds no place to start.
        let Ok(room) = runs.admission.slot_after_agent(agent_room, None).await else {
            return;
        };
        // Not started while the host's memory is full: the run stays `queued`.
        if runs.admission.memory_until(None).await.is_err() {
            return;
        }
        if runs.starting.is_cancelled() {
            return;
        }
        let Some(id) = queue.pop() else {
            return;
        };
        let worker = Arc::clone(&runs);
        runs.background
            .spawn(Stage::Runs, move |shutdown| async move {
                execute(&worker, &id, room, shutdown).await;
                worker.state.known().remove(&id);
                drop(slot);
            });
    }
}

/// How an attempt ended.
enum Ended {
    /// It ran to an outcome, to be recorded with its logs and outgoing requests.
    Outcome(Box<RunWrite>),
    /// A cancel interrupted it, and already recorded the run's end.
    Cancelled,
    /// The host is shutting down: the run goes back to the queue.
    Stopped,
}

async fn execute(runs: &Runs, id: &str, room: Slot, shutdown: CancellationToken) {
    let lease = runs.settings.lease;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    // Interruptible from before the start commits: a cancel that lands right after it
    // finds this run already registered.
    let (stop, stopped) = oneshot::channel();
    runs.state.running().insert(id.to_owned(), stop);
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
        runs.state.running().remove(id);
        return;
    };
    let agent = started.agent.clone();
    let attempt_number = started.attempt;
    // The attempt's span continues the trace of the request that submitted the run; its
    // first child is the wait in the queue, from acceptance to this start.
    let span = tracing::info_span!(
        target: gust_wasm::trace::TARGET,
        "run.attempt",
        agent = %agent,
        run_id = %id,
        // i64: the OpenTelemetry layer writes unsigned numbers as text.
        attempt = i64::from(started.attempt),
    );
    if let Some(trace) = &started.trace {
        gust_wasm::trace::set_parent(&span, trace);
    }
    if started.attempt == 1 {
        let accepted = std::time::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(started.created_at).unwrap_or(0));
        gust_wasm::trace::elapsed_span(&span, "queue.wait", accepted);
    }
    let ended = attempt(runs, id, started, room, stopped, shutdown)
        .instrument(span)
        .await;
    runs.state.running().remove(id);
    // The attempt is over whatever comes of its end: its event channel stops being a
    // running one (followers re-read the store; the committed end tells them again).
    runs.events.ended(id);
    match ended {
        // Not waited for: the worker slot is free for the next run while the end commits
        // (the writer keeps writes in order, so it lands after this run's start and
        // progress, and pollers and pushes are woken after the commit). If it fails, the
        // writer logs it, the lease lapses and the reconciler queues the run again
        // (at-least-once).
        Ended::Outcome(finish) => {
            if let RunWrite::Finish { outcome, .. } = &*finish {
                let status = match outcome {
                    RunOutcome::Succeeded { .. } => "succeeded",
                    RunOutcome::Failed { .. } => "failed",
                };
                runs.calls.metrics().run_ended(&agent, status);
            }
            runs.writer.write_detached(*finish);
        }
        Ended::Cancelled => {}
        Ended::Stopped => {
            tracing::warn!(run_id = %id, "stopping with the run unfinished; it goes back to the queue");
            let release = RunWrite::Release {
                id: id.to_owned(),
                attempt: attempt_number,
            };
            if let Err(e) = runs.writer.write(release).await {
                tracing::error!("releasing a run at shutdown: {e:#}");
            }
        }
    }
}

/// Executes one attempt, renewing the run's lease from the claim on — while its deployment
/// is loaded (seconds, when it compiles) and while it runs — so that no other worker takes
/// the run over in the meantime.
async fn attempt(
    runs: &Runs,
    id: &str,
    started: StartedRun,
    room: Slot,
    mut cancelled: oneshot::Receiver<()>,
    shutdown: CancellationToken,
) -> Ended {
    let lease = runs.settings.lease;
    // Every write of this attempt names it, so none lands on another attempt of the run.
    let number = started.attempt;
    runs.events.started(id);
    let recorder = Arc::new(RunRecorder::new(
        id.to_owned(),
        number,
        runs.writer.clone(),
        Arc::clone(&runs.events),
    ));
    let work = async {
        let deployment = match runs
            .lifecycle
            .deployment(&started.agent, started.deployment)
            .await
        {
            Ok(deployment) => deployment,
            Err(e) => {
                // The run's record says what its reader may know; the log says why. An agent
                // deleted with its runs waiting is no fault of the host's.
                if matches!(e, crate::Error::NotFound(_)) {
                    tracing::warn!(run_id = %id, "the run's deployment is gone: {e}");
                } else {
                    tracing::error!(
                        run_id = %id,
                        "the run's deployment could not be loaded: {}",
                        e.logged()
                    );
                }
                return Err(RunOutcome::Failed {
                    kind: e.kind().to_owned(),
                    message: format!("the run's deployment could not be loaded: {e}"),
                });
            }
        };
        let input = Input {
            bytes: started.input,
            content_type: started.content_type,
        };
        let request = CallRequest {
            run_id: Arc::from(id),
            kind: CallKind::Async,
            attempt: started.attempt,
            sink: Some(Arc::clone(&recorder) as _),
            watcher: None,
            // The call's span is a child of this attempt's, which holds the trace.
            trace: None,
        };
        // Room was taken before the run was claimed; the call gives it back when the
        // instance is gone, before the end is recorded.
        let called = runs
            .calls
            .call(
                Target::Deployment(deployment),
                std::future::ready(Ok(input)),
                request,
                Admit::Slot(room),
            )
            .await;
        Ok(called.outcome)
    };
    tokio::pin!(work);
    let mut renew = tokio::time::interval(lease / 3);
    renew.tick().await;
    // A renewal that finds the run no longer running (cancelled on another host whose
    // announcement this host missed, or taken over after its lease lapsed) stops it here:
    // whoever ended or took it records it. Renewals are written beside the run, not waited
    // for in its way.
    let (lost, mut was_lost) = tokio::sync::mpsc::unbounded_channel::<()>();
    let done = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = &mut cancelled => return Ended::Cancelled,
            () = shutdown.cancelled() => return Ended::Stopped,
            Some(()) = was_lost.recv() => {
                tracing::warn!(run_id = %id, "the run is no longer this host's (cancelled or taken over elsewhere); stopping it");
                return Ended::Cancelled;
            }
            _ = renew.tick() => {
                let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
                let renewal = RunWrite::Renew {
                    id: id.to_owned(),
                    attempt: number,
                    lease_until: clock::now_ms().saturating_add(lease_ms),
                };
                let (writer, lost) = (runs.writer.clone(), lost.clone());
                tokio::spawn(async move {
                    if let Ok(WriteOutcome::NotRunning) = writer.write(renewal).await {
                        let _ = lost.send(());
                    }
                });
            }
        }
    };
    let outcome = match done {
        Ok(Ok(output)) => RunOutcome::Succeeded {
            content_type: output.content_type,
            output: output.bytes,
        },
        Ok(Err(e)) => RunOutcome::Failed {
            kind: e.kind().to_owned(),
            message: e.to_string(),
        },
        Err(failed) => failed,
    };
    let (logs, outbound) = recorder.finish();
    Ended::Outcome(Box::new(RunWrite::Finish {
        id: id.to_owned(),
        attempt: number,
        now: clock::now_ms(),
        outcome,
        logs,
        outbound,
    }))
}
