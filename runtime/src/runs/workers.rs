//! The bounded pool that executes runs. Accepted runs arrive on an in-memory queue (fed by
//! the writer after each commit, and at start by recovery); each is started in the store
//! (a conditional update: a run cancelled or expired meanwhile is skipped), executed on its
//! deployment, and finished in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Runs;
use super::recorder::RunRecorder;
use crate::bindings::Mode;
use crate::clock;
use crate::invoke::{self, Call};
use crate::store::{LogLine, RunOutcome, RunWrite, StartedRun, WriteOutcome};

pub(super) struct Workers {
    slots: Arc<Semaphore>,
    /// Runs executing now, with the way to interrupt each.
    running: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Workers {
    pub(super) fn new(size: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(size.max(1))),
            running: Mutex::default(),
        }
    }

    fn running_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops run `id` if it is executing here: its future is dropped, and with it the
    /// guest's `Store`. A guest spinning on CPU yields at every epoch tick, so this takes
    /// effect within one tick.
    pub(super) fn interrupt(&self, id: &str) {
        if let Some(stop) = self.running_map().remove(id) {
            let _ = stop.send(());
        }
    }

    pub(super) fn running(&self) -> usize {
        self.running_map().len()
    }
}

/// Takes runs off the queue as worker slots free up.
pub(super) async fn dispatch(runs: Arc<Runs>, mut queue: mpsc::UnboundedReceiver<String>) {
    while let Some(id) = queue.recv().await {
        let Ok(slot) = Arc::clone(&runs.workers.slots).acquire_owned().await else {
            return;
        };
        let runs = Arc::clone(&runs);
        tokio::spawn(async move {
            execute(&runs, id).await;
            drop(slot);
        });
    }
}

async fn execute(runs: &Runs, id: String) {
    let lease = runs.settings.lease;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let now = clock::now_ms();
    let start = RunWrite::Start {
        id: id.clone(),
        now,
        lease_until: now.saturating_add(lease_ms),
    };
    let started = match runs.writer.write(start).await {
        Ok(WriteOutcome::Started(started)) => started,
        // Cancelled, expired or deleted while it waited: nothing to do.
        Ok(_) => return,
        Err(e) => {
            tracing::error!(run_id = %id, "could not start the run: {e:#}");
            return;
        }
    };
    let (stop, stopped) = oneshot::channel();
    runs.workers.running_map().insert(id.clone(), stop);
    let ended = attempt(runs, &id, started, stopped, lease).await;
    runs.workers.running_map().remove(&id);
    let Some((outcome, logs)) = ended else {
        // Interrupted by a cancel, which already recorded the run's end.
        return;
    };
    let finish = RunWrite::Finish {
        id: id.clone(),
        now: clock::now_ms(),
        outcome,
        logs,
    };
    if let Err(e) = runs.writer.write(finish).await {
        tracing::error!(run_id = %id, "could not record the end of the run: {e:#}");
    }
}

/// Executes one attempt; `None` when it was interrupted.
async fn attempt(
    runs: &Runs,
    id: &str,
    started: StartedRun,
    mut stopped: oneshot::Receiver<()>,
    lease: std::time::Duration,
) -> Option<(RunOutcome, Vec<LogLine>)> {
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
            return Some((outcome, Vec::new()));
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
