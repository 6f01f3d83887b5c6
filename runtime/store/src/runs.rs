//! Queued runs: the batched writes of the run queue, recovery at start, reads for pollers.

use gust_model::{RunRecord, RunStatus};

use crate::queue::{ActiveRuns, Recovered, RunWrite, WriteOutcome};

use crate::{Backend, Store, StoreError, blocking, detached};

/// One outcome per write of a batch, in order; `Err` when the batch did not commit.
pub type Applied = Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;

impl Store {
    /// Applies a batch of run-queue writes in one transaction (group commit), returning one
    /// outcome per write, in order. A write that fails is undone alone; the others commit.
    ///
    /// The writes come back with the outcomes, so the caller can act on both without
    /// copying the batch (the writes hold run inputs and outputs).
    ///
    /// # Errors
    /// When the commit fails; then none of the batch was applied.
    pub async fn apply_run_writes(&self, writes: Vec<RunWrite>) -> (Vec<RunWrite>, Applied) {
        let applied = match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    let outcomes = db.apply_run_writes(&writes);
                    Ok((writes, outcomes))
                })
                .await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    let outcomes = db.apply_run_writes(&writes).await;
                    Ok((writes, outcomes))
                })
                .await
            }
        };
        match applied {
            Ok((writes, outcomes)) => (writes, outcomes),
            // The task failed before it gave the writes back; nothing was committed.
            Err(e) => (Vec::new(), Err(e)),
        }
    }

    /// At start: runs that were running when the host stopped are queued again, or failed as
    /// `lost` when they used up `max_attempts`; returns every run to execute.
    ///
    /// With PostgreSQL other hosts may be running runs: only runs whose lease lapsed before
    /// `now` are taken back; the others are left to their hosts.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn recover_runs(&self, now: i64, max_attempts: u32) -> Result<Recovered, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.recover_runs(now, max_attempts)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.recover_runs(now, max_attempts).await
                })
                .await
            }
        }
    }

    /// Every queued run, oldest first, with its agent.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn queued_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.queued_runs()).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.queued_runs().await }).await
            }
        }
    }

    /// Each agent with queued or running runs.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn active_runs(&self) -> Result<Vec<ActiveRuns>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.active_runs()).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.active_runs().await }).await
            }
        }
    }

    /// One run of `agent` with its delivery, or `None`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn run(&self, agent: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let agent = agent.to_owned();
        let id = id.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.run(&agent, &id)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.run(&agent, &id).await }).await
            }
        }
    }

    /// The input a run was submitted with, and its content type.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn run_input(
        &self,
        agent: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let agent = agent.to_owned();
        let id = id.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.run_input(&agent, &id)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.run_input(&agent, &id).await }).await
            }
        }
    }

    /// Runs of `agent`, newest first, optionally of one status, older than the run `before`:
    /// summaries, without their outputs, log lines and outgoing requests.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_runs(
        &self,
        agent: &str,
        status: Option<RunStatus>,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let agent = agent.to_owned();
        let before = before.map(str::to_owned);
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.list_runs(&agent, status, limit, before.as_deref())
                })
                .await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.list_runs(&agent, status, limit, before.as_deref()).await
                })
                .await
            }
        }
    }
}
