//! The run queue's writer: one thread that applies writes in batches, one transaction (and
//! one fsync) per batch. Many concurrent submissions therefore share one commit (group
//! commit), and a submitter is answered only once its write is durable.
//!
//! After each commit the writer wakes what depends on it: accepted runs go to the
//! dispatcher, ended runs wake pollers waiting on them, new push events wake the pusher.
//! Doing this here (not in the submitter) means a client that disconnects right after its
//! run was committed cannot keep the run from being executed.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::Hooks;
use crate::error::Error;
use crate::store::{RunWrite, Store, WriteOutcome};

/// Largest batch applied in one transaction.
const MAX_BATCH: usize = 1024;

type Reply = Option<oneshot::Sender<Result<WriteOutcome, Error>>>;

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<(RunWrite, Reply)>,
}

impl Writer {
    /// Starts the writer thread. It ends when every handle is dropped.
    pub(crate) fn start(store: Arc<dyn Store>, hooks: Arc<Hooks>) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("gust-run-writer".into())
            .spawn(move || run(&*store, &hooks, &rx))
            .expect("spawning the run writer thread");
        Self { tx }
    }

    /// Applies `write` and answers once it is committed.
    ///
    /// # Errors
    /// When the database fails, or the writer has stopped.
    pub(crate) async fn write(&self, write: RunWrite) -> Result<WriteOutcome, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((write, Some(reply))).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues `write` without waiting for it (progress reports, lease renewals).
    pub(crate) fn write_detached(&self, write: RunWrite) {
        let _ = self.tx.send((write, None));
    }
}

fn stopped() -> Error {
    Error::Internal(anyhow::anyhow!("the run writer has stopped"))
}

fn run(store: &dyn Store, hooks: &Hooks, rx: &mpsc::Receiver<(RunWrite, Reply)>) {
    let mut writes = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    // Block for the first write, then take whatever else is already waiting: under load
    // batches grow by themselves, and an idle queue commits a lone write at once.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some((write, reply)) = next {
            writes.push(write);
            replies.push(reply);
            next = if writes.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        match store.apply_run_writes(&writes) {
            Ok(outcomes) => {
                for (write, outcome) in writes.iter().zip(&outcomes) {
                    match outcome {
                        Ok(outcome) => hooks.committed(write, outcome),
                        Err(e) => tracing::error!("a run write failed: {e:#}"),
                    }
                }
                hooks.batch(writes.len());
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome.map_err(Error::from));
                    }
                }
            }
            Err(e) => {
                let e = anyhow::Error::new(e);
                tracing::error!("a batch of {} run writes failed: {e:#}", writes.len());
                for reply in replies.drain(..).flatten() {
                    let _ = reply.send(Err(Error::Internal(anyhow::anyhow!("{e:#}"))));
                }
            }
        }
        writes.clear();
    }
}
