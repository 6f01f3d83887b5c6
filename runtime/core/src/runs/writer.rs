//! The run queue's writer: one task that applies writes in batches, one transaction (and
//! one fsync) per batch. Many concurrent submissions therefore share one commit (group
//! commit), and a submitter is answered only once its write is durable.
//!
//! After each commit the writer wakes what depends on it: accepted runs go to the
//! dispatcher, ended runs wake pollers waiting on them, new push events wake the pusher.
//! Doing this here (not in the submitter) means a client that disconnects right after its
//! run was committed cannot keep the run from being executed.
//!
//! It stops last among the queue's tasks (`Stage::Writes`): told to stop, it takes no new
//! write but commits every one already sent.

use std::sync::Arc;

use gust_store::Store;
use gust_store::queue::{RunWrite, WriteOutcome};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::state::QueueState;
use crate::background::{Background, Stage};
use crate::error::Error;

/// Largest batch applied in one transaction.
const MAX_BATCH: usize = 1024;

type Reply = Option<oneshot::Sender<Result<WriteOutcome, Error>>>;

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<(RunWrite, Reply)>,
    state: Arc<QueueState>,
}

impl Writer {
    /// Starts the writer task in `Stage::Writes`; it runs until that stage stops and every
    /// write sent before is committed.
    pub(super) fn start(store: Store, state: Arc<QueueState>, background: &Background) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let writes = Arc::clone(&state);
        background.spawn(Stage::Writes, move |stop| run(store, writes, rx, stop));
        Self { tx, state }
    }

    /// Applies `write` and answers once it is committed.
    ///
    /// # Errors
    /// When the database fails, or the writer has stopped.
    pub(crate) async fn write(&self, write: RunWrite) -> Result<WriteOutcome, Error> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((write, _))) = self.tx.send((write, Some(reply))) {
            self.state.not_applied(&write);
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }

    /// Queues `write` without waiting for it (progress reports, lease renewals).
    pub(crate) fn write_detached(&self, write: RunWrite) {
        if let Err(mpsc::error::SendError((write, _))) = self.tx.send((write, None)) {
            self.state.not_applied(&write);
        }
    }
}

fn stopped() -> Error {
    Error::internal("the run writer has stopped")
}

async fn run(
    store: Store,
    state: Arc<QueueState>,
    mut rx: mpsc::UnboundedReceiver<(RunWrite, Reply)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Wait for the first write, then take whatever else is already waiting: under load
    // batches grow by themselves, and an idle queue commits a lone write at once. Once told
    // to stop, the channel closes: `recv` then yields what was sent before, then `None`.
    loop {
        let first = tokio::select! {
            biased;
            first = rx.recv() => first,
            () = stop.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (writes, replies): (Vec<RunWrite>, Vec<Reply>) = batch.drain(..).unzip();
        let count = writes.len();
        // The agents of the batch's inserts, each holding a place in its agent's queue: a
        // store whose task failed (a database that stopped answering) does not give the
        // writes back, and their places must come back all the same.
        let inserting: Vec<String> = writes
            .iter()
            .filter_map(|write| match write {
                RunWrite::Insert(run) => Some(run.agent.clone()),
                _ => None,
            })
            .collect();
        let (writes, applied) = store.apply_run_writes(writes).await;
        match applied {
            Ok(outcomes) => {
                for (write, outcome) in writes.iter().zip(&outcomes) {
                    match outcome {
                        Ok(outcome) => state.committed(write, outcome),
                        Err(e) => {
                            tracing::error!("a run write failed: {e:#}");
                            state.not_applied(write);
                        }
                    }
                }
                state.batch(count);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome.map_err(Error::from));
                    }
                }
            }
            Err(e) => {
                // A database out of reach is the client's 503 (retry later: nothing was
                // committed); anything else is an internal error.
                let unavailable = matches!(e, gust_store::StoreError::Unavailable(_));
                let e = anyhow::Error::new(e);
                tracing::error!("a batch of {count} run writes failed: {e:#}");
                for agent in &inserting {
                    state.queue(agent).release();
                }
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(if unavailable {
                        Error::Unavailable(format!("{e:#}"))
                    } else {
                        Error::internal(format!("{e:#}"))
                    }));
                }
            }
        }
    }
}
