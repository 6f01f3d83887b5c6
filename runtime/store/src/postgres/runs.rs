//! The run queue's writes, when several hosts share the queue.
//!
//! A batch is one transaction. Its common writes (plain inserts, starts, finishes, renewals)
//! are applied a kind at a time, in one statement each (see [`grouped`]); the others one by
//! one, each in a savepoint, so one that fails is undone alone and the rest commit (as with
//! SQLite). What several writers change:
//!
//! - **Claims skip, they do not wait.** Starting a run, expiring queued runs, and reclaiming
//!   runs whose lease lapsed each pick their rows with `FOR UPDATE SKIP LOCKED`: of two hosts
//!   starting one run, exactly one wins, and the other learns at once that it did not, instead
//!   of queueing behind the winner's transaction.
//! - **Decisions wait.** A cancel locks its run (`FOR UPDATE`), so it sees a start that is
//!   committing and stops a run that just began, rather than missing it.
//! - **Accounting is SQL.** The bound on an agent's stored bytes is checked and counted in
//!   one `UPDATE … WHERE run_bytes + n <= bound`; ends and purges add and subtract in SQL.
//! - **Agents are locked in one order.** Accepting and ending runs update the agent's row
//!   (its stored bytes). A batch that does either locks the rows of every agent it will touch
//!   first, in name order, so two hosts' batches cannot each hold an agent the other waits
//!   for. Other orders remain possible (a purge, a cancel of a run another batch ends): a
//!   batch that deadlocks anyway is rolled back and applied again, whole.
//! - **Idempotency is a unique index.** See [`insert`].
//! - **Other hosts hear of it.** Runs queued, cancelled and ended are announced with the
//!   commit (`pg_notify`), in one statement per batch.

use deadpool_postgres::{GenericClient, Object, Transaction};

use gust_model::RunStatus;

use super::batch::{create_delivery, lock_agents, pairs, trace};
use super::{Postgres, col, db, exec, grouped, num, retryable, row, rows, sql};
use crate::queue::{
    IDEMPOTENCY_WINDOW_MS, NEVER_EXPIRES, NewRun, RunWrite, StartedRun, WriteOutcome,
};
use crate::{Change, StoreError};

/// The advisory lock a retention purge runs under ("gust" + 1, beside the migrations' lock).
const PURGE_LOCK: i64 = 0x6775_7375;

/// How many times a batch that lost a deadlock is applied again; after that, the write that
/// deadlocked fails alone, like any failing write.
const DEADLOCK_RETRIES: u32 = 3;

impl Postgres {
    pub(crate) async fn apply_run_writes(
        &self,
        writes: &[RunWrite],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        let mut client = self.client().await?;
        let mut retries = DEADLOCK_RETRIES;
        let mut grouped = true;
        loop {
            match apply_batch(&mut client, writes, retries > 0, grouped).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(Failed::Batch(e)) if retryable(&e) && retries > 0 => retries -= 1,
                Err(Failed::Batch(e)) => return Err(e),
                // Applied again one write at a time: the write that fails is undone alone.
                Err(Failed::Grouped(e)) => {
                    tracing::warn!(
                        "a batch's grouped writes failed; applying them one by one: {e:#}"
                    );
                    grouped = false;
                }
            }
        }
    }
}

/// Why an attempt at a batch committed nothing.
enum Failed {
    /// The batch failed (a deadlock to retry, the database away, a failing commit).
    Batch(StoreError),
    /// A set-based statement of [`grouped`] failed, aborting the transaction.
    Grouped(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Batch(e)
    }
}

/// One attempt at a batch. With `grouped`, the common writes are applied a kind at a time
/// first ([`grouped`]); the rest, one by one, each in a savepoint. With `may_retry`, a write
/// that deadlocks fails the batch (to be applied again); without, it fails alone.
async fn apply_batch(
    client: &mut Object,
    writes: &[RunWrite],
    may_retry: bool,
    grouped: bool,
) -> Result<Vec<Result<WriteOutcome, StoreError>>, Failed> {
    let tx = client.transaction().await.map_err(db)?;
    let mut decided: grouped::Decided = vec![None; writes.len()];
    let mut changes = Vec::new();
    if grouped {
        // The batch's settings and agent locks go with the grouped statements.
        match grouped::apply(&tx, writes, &mut decided, &mut changes).await {
            Ok(()) => {}
            Err(e @ StoreError::Unavailable(_)) => return Err(Failed::Batch(e)),
            // A deadlock is tried again whole while tries are left; after that the batch is
            // applied one write at a time, where the write that deadlocks fails alone.
            Err(e) if may_retry && retryable(&e) => return Err(Failed::Batch(e)),
            Err(e) => return Err(Failed::Grouped(e)),
        }
    } else {
        tx.batch_execute(sql::BATCH_SETTINGS).await.map_err(db)?;
        lock_agents(&tx, writes).await?;
    }
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut savepoint = false;
    for (write, decided) in writes.iter().zip(decided) {
        if let Some(outcome) = decided {
            outcomes.push(Ok(outcome));
            continue;
        }
        // A fresh savepoint for each write, in one round trip with the release of the last.
        let sql = if savepoint {
            "RELEASE SAVEPOINT write; SAVEPOINT write"
        } else {
            "SAVEPOINT write"
        };
        tx.batch_execute(sql).await.map_err(db)?;
        savepoint = true;
        let mut heard = Vec::new();
        let outcome = apply(&tx, write, &mut heard).await;
        match &outcome {
            Ok(_) => changes.append(&mut heard),
            Err(e) if may_retry && retryable(e) => return Err(Failed::Batch(outcome.unwrap_err())),
            Err(StoreError::Unavailable(_)) => return Err(Failed::Batch(outcome.unwrap_err())),
            // Undone alone.
            Err(_) => tx
                .batch_execute("ROLLBACK TO SAVEPOINT write")
                .await
                .map_err(db)?,
        }
        outcomes.push(outcome);
    }
    if !changes.is_empty() {
        let payloads: Vec<String> = changes.iter().map(super::notify::payload).collect();
        exec(&tx, sql::NOTIFY, &[&super::notify::CHANNEL, &payloads]).await?;
    }
    tx.commit().await.map_err(db)?;
    Ok(outcomes)
}

async fn apply(
    tx: &Transaction<'_>,
    write: &RunWrite,
    heard: &mut Vec<Change>,
) -> Result<WriteOutcome, StoreError> {
    match write {
        RunWrite::Insert(run) => insert(tx, run, heard).await,
        RunWrite::Start {
            id,
            now,
            lease_until,
        } => start(tx, id, *now, *lease_until, heard).await,
        // The statements a batch uses for all its renewals and finishes, for one.
        RunWrite::Renew { .. } | RunWrite::Finish { .. } => grouped::alone(tx, write, heard).await,
        RunWrite::Progress {
            id,
            attempt,
            fraction,
            message,
        } => {
            exec(
                tx,
                "UPDATE runs SET progress_fraction = $2, progress_message = $3
                 WHERE id = $1 AND status = 'running' AND attempts = $4",
                &[id, fraction, message, &i64::from(*attempt)],
            )
            .await?;
            Ok(WriteOutcome::Done)
        }
        RunWrite::Cancel { agent, id, now } => cancel(tx, agent, id, *now, heard).await,
        RunWrite::ExpireDue { now } => expire_due(tx, *now, heard).await,
        RunWrite::Delivery {
            run_id,
            round,
            status,
            attempts,
            last_error,
            next_attempt_at,
        } => {
            // The attempt is over: its claim ends with it (see `reads::due_deliveries`).
            exec(
                tx,
                "UPDATE deliveries SET status = $3, attempts = $4, last_error = $5,
                    next_attempt_at = $6, claimed_until = NULL
                 WHERE run_id = $1 AND created_at = $2",
                &[
                    run_id,
                    round,
                    &status.as_str(),
                    &i64::from(*attempts),
                    last_error,
                    next_attempt_at,
                ],
            )
            .await?;
            Ok(WriteOutcome::Done)
        }
        RunWrite::Release { id, attempt } => {
            let released = row(
                tx,
                "UPDATE runs SET status = 'queued', attempts = GREATEST(attempts - 1, 0), lease_until = NULL,
                    expires_at = $3
                 WHERE id = $1 AND status = 'running' AND attempts = $2 RETURNING agent",
                &[id, &i64::from(*attempt), &NEVER_EXPIRES],
            )
            .await?;
            if let Some(released) = released {
                heard.push(Change::RunQueued {
                    agent: col(&released, 0)?,
                    id: id.clone(),
                });
            }
            Ok(WriteOutcome::Done)
        }
        RunWrite::Reclaim {
            now,
            running_here,
            max_attempts,
        } => {
            let (ids, lost, delivery) =
                reclaim(tx, *now, running_here, *max_attempts, heard).await?;
            Ok(WriteOutcome::Reclaimed {
                ids,
                lost,
                delivery,
            })
        }
        RunWrite::Redeliver { agent, id, now } => redeliver(tx, agent, id, *now).await,
        RunWrite::Purge { before } => {
            // One host purges at a time: every host sweeps every minute, and two deleting
            // the same rows would only wait on each other. The lock lasts to the batch's
            // commit; a host that does not get it leaves this round to the one that did.
            let ours = row(tx, "SELECT pg_try_advisory_xact_lock($1)", &[&PURGE_LOCK])
                .await?
                .map(|r| col::<bool>(&r, 0))
                .transpose()?
                .unwrap_or(false);
            if !ours {
                return Ok(WriteOutcome::Done);
            }
            // A run whose push is still pending stays until its delivery ends: purging it
            // would lose the event (its delivery row goes with it).
            exec(
                tx,
                "WITH purged AS (
                    DELETE FROM runs r WHERE r.finished_at < $1
                      AND r.status NOT IN ('queued', 'running')
                      AND NOT EXISTS (SELECT 1 FROM deliveries d
                                      WHERE d.run_id = r.id AND d.status = 'pending')
                    RETURNING r.agent, r.stored_bytes
                 ), freed AS (
                    SELECT agent, SUM(stored_bytes)::BIGINT AS bytes FROM purged GROUP BY agent
                 )
                 UPDATE agents a SET run_bytes = GREATEST(0, a.run_bytes - f.bytes)
                 FROM freed f WHERE a.name = f.agent",
                &[before],
            )
            .await?;
            Ok(WriteOutcome::Done)
        }
    }
}

/// Accepts a run, or answers the run its idempotency key names.
///
/// Two hosts may accept the same key at the same instant. Both look for an earlier run and
/// find none; both insert. The unique index on `(agent, idempotency_key)` admits one: the
/// other's `INSERT … ON CONFLICT DO NOTHING` waits for the first transaction, then inserts
/// nothing, and that host reads the winner and answers it (replayed, or a conflict when the
/// requests differ). (Usually the agent's row lock, taken first by the batch, already puts
/// the two one after the other, and the second finds the first's run straight away.)
///
/// A key names its run for [`IDEMPOTENCY_WINDOW_MS`]: an older run gives its key up (the
/// column is cleared) when a new run comes with it.
async fn insert(
    tx: &Transaction<'_>,
    run: &NewRun,
    heard: &mut Vec<Change>,
) -> Result<WriteOutcome, StoreError> {
    if let Some((key, hash)) = &run.idempotency
        && let Some(earlier) = earlier_run(tx, run, key, hash).await?
    {
        return Ok(earlier);
    }
    // The agent's stored runs stay within their bound: past it, new runs are refused (the
    // ones kept are never evicted; finished ones leave by retention).
    let input = i64::try_from(run.input.len()).unwrap_or(i64::MAX);
    let bound = i64::try_from(run.max_stored_bytes).unwrap_or(i64::MAX);
    let counted = exec(
        tx,
        "UPDATE agents SET run_bytes = run_bytes + $2 WHERE name = $1 AND run_bytes <= $3::BIGINT - $2::BIGINT",
        &[&run.agent, &input, &bound],
    )
    .await?;
    if counted == 0 {
        // The agent may have been deleted since its live deployment was read.
        let exists = row(tx, "SELECT 1 FROM agents WHERE name = $1", &[&run.agent])
            .await?
            .is_some();
        return Ok(if exists {
            WriteOutcome::StorageFull
        } else {
            WriteOutcome::NotFound
        });
    }
    let (key, hash) = run.idempotency.clone().unzip();
    let trace = run.trace.as_ref();
    let inserted = exec(
        tx,
        "INSERT INTO runs (id, agent, deployment, version, status, input, content_type, created_at,
            expires_at, idempotency_key, request_hash, push, stored_bytes, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (agent, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        &[
            &run.id,
            &run.agent,
            &i64::from(run.deployment),
            &i64::from(run.version),
            &run.input,
            &run.content_type,
            &run.created_at,
            &run.expires_at,
            &key,
            &hash,
            &run.push,
            &input,
            &trace.map(|t| &t.traceparent),
            &trace.and_then(|t| t.tracestate.as_ref()),
        ],
    )
    .await?;
    if inserted == 0 {
        // Another host's run with this key committed since it was looked for: that one is
        // the run. Its bytes were counted by its own insert, not ours.
        exec(
            tx,
            "UPDATE agents SET run_bytes = run_bytes - $2 WHERE name = $1",
            &[&run.agent, &input],
        )
        .await?;
        let (key, hash) = run
            .idempotency
            .as_ref()
            .ok_or_else(|| super::internal("a run without an idempotency key conflicted".into()))?;
        return earlier_run(tx, run, key, hash).await?.ok_or_else(|| {
            StoreError::Conflict(format!(
                "the idempotency key `{key}` is being reused concurrently; try again"
            ))
        });
    }
    heard.push(Change::RunQueued {
        agent: run.agent.clone(),
        id: run.id.clone(),
    });
    Ok(WriteOutcome::Inserted)
}

/// What the run that `key` names within the window answers (a replay, or a conflict); `None`
/// when there is none, after freeing the key from a run older than the window.
async fn earlier_run(
    tx: &Transaction<'_>,
    run: &NewRun,
    key: &str,
    hash: &str,
) -> Result<Option<WriteOutcome>, StoreError> {
    let Some(earlier) = row(
        tx,
        "SELECT id, request_hash, created_at FROM runs WHERE agent = $1 AND idempotency_key = $2",
        &[&run.agent, &key],
    )
    .await?
    else {
        return Ok(None);
    };
    let id: String = col(&earlier, 0)?;
    let earlier_hash: Option<String> = col(&earlier, 1)?;
    let created_at: i64 = col(&earlier, 2)?;
    if created_at > run.created_at - IDEMPOTENCY_WINDOW_MS {
        return Ok(Some(if earlier_hash.as_deref() == Some(hash) {
            WriteOutcome::Replayed { id }
        } else {
            WriteOutcome::IdempotencyConflict
        }));
    }
    // Older than the window: the key is free again.
    exec(
        tx,
        "UPDATE runs SET idempotency_key = NULL WHERE id = $1 AND idempotency_key = $2",
        &[&id, &key],
    )
    .await?;
    Ok(None)
}

/// The claim: a queued run becomes running with a lease, in one statement that skips the
/// run if another transaction holds it (another host starting or cancelling it).
async fn start(
    tx: &Transaction<'_>,
    id: &str,
    now: i64,
    lease_until: i64,
    heard: &mut Vec<Change>,
) -> Result<WriteOutcome, StoreError> {
    let claimed = row(
        tx,
        "UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = $2,
            lease_until = $3
         WHERE id = (SELECT id FROM runs WHERE id = $1 AND status = 'queued'
                       AND NOT (attempts = 0 AND expires_at < $2)
                     FOR UPDATE SKIP LOCKED)
         RETURNING agent, deployment, attempts, input, content_type, created_at, traceparent,
            tracestate",
        &[&id, &now, &lease_until],
    )
    .await?;
    if let Some(claimed) = claimed {
        return Ok(WriteOutcome::Started(StartedRun {
            agent: col(&claimed, 0)?,
            deployment: num(&claimed, 1)?,
            attempt: num(&claimed, 2)?,
            input: col(&claimed, 3)?,
            content_type: col(&claimed, 4)?,
            created_at: col(&claimed, 5)?,
            trace: trace(&claimed, 6)?,
        }));
    }
    // The queue-wait limit is for runs that never started: one queued again after its host
    // died has waited its turn already.
    let expired = row(
        tx,
        "UPDATE runs SET status = 'expired', finished_at = $2
         WHERE id = (SELECT id FROM runs WHERE id = $1 AND status = 'queued'
                       AND attempts = 0 AND expires_at < $2
                     FOR UPDATE SKIP LOCKED)
         RETURNING agent",
        &[&id, &now],
    )
    .await?;
    if let Some(expired) = expired {
        let agent: String = col(&expired, 0)?;
        let delivery = create_delivery(tx, id, RunStatus::Expired, now).await?;
        heard.push(Change::RunEnded {
            agent: agent.clone(),
            id: id.to_owned(),
        });
        return Ok(WriteOutcome::Expired {
            ids: vec![(id.to_owned(), agent)],
            delivery,
        });
    }
    // Not queued, or held by another host's transaction: as far as this host can tell, it
    // is in the status last committed.
    let status = row(tx, "SELECT status FROM runs WHERE id = $1", &[&id]).await?;
    let status = status
        .map(|r| col::<String>(&r, 0))
        .transpose()?
        .and_then(|s| RunStatus::parse(&s));
    Ok(WriteOutcome::NotStarted(status))
}

async fn cancel(
    tx: &Transaction<'_>,
    agent: &str,
    id: &str,
    now: i64,
    heard: &mut Vec<Change>,
) -> Result<WriteOutcome, StoreError> {
    // Waits for a host that is starting or ending the run, then decides on what it did.
    let Some(status) = run_status(tx, agent, id, Lock::ForUpdate).await? else {
        return Ok(WriteOutcome::NotFound);
    };
    if status.is_final() {
        return Ok(WriteOutcome::AlreadyFinished(status));
    }
    exec(
        tx,
        "UPDATE runs SET status = 'cancelled', finished_at = $2, lease_until = NULL WHERE id = $1",
        &[&id, &now],
    )
    .await?;
    let delivery = create_delivery(tx, id, RunStatus::Cancelled, now).await?;
    let was_running = status == RunStatus::Running;
    heard.push(Change::RunCancelled {
        agent: agent.to_owned(),
        id: id.to_owned(),
        was_running,
    });
    Ok(WriteOutcome::Cancelled {
        was_running,
        delivery,
    })
}

async fn expire_due(
    tx: &Transaction<'_>,
    now: i64,
    heard: &mut Vec<Change>,
) -> Result<WriteOutcome, StoreError> {
    // Runs another host is starting right now are skipped: they are not waiting any more.
    let mut ids = pairs(
        rows(
            tx,
            "UPDATE runs SET status = 'expired', finished_at = $1
             WHERE id IN (SELECT id FROM runs
                          WHERE status = 'queued' AND attempts = 0 AND expires_at < $1
                          FOR UPDATE SKIP LOCKED)
             RETURNING id, agent",
            &[&now],
        )
        .await?,
    )?;
    ids.sort();
    let mut delivery = false;
    for (id, agent) in &ids {
        delivery |= create_delivery(tx, id, RunStatus::Expired, now).await?;
        heard.push(Change::RunEnded {
            agent: agent.clone(),
            id: id.clone(),
        });
    }
    Ok(WriteOutcome::Expired { ids, delivery })
}

/// Queues again every running run whose lease lapsed before `now` (its host stopped
/// renewing it: gone, or cut off), except `running_here`; one that used up its attempts
/// fails as `lost` instead. Runs another host is reclaiming at the same time are skipped.
pub(super) async fn reclaim(
    tx: &Transaction<'_>,
    now: i64,
    running_here: &[String],
    max_attempts: u32,
    heard: &mut Vec<Change>,
) -> Result<(Vec<(String, String)>, Vec<(String, String)>, bool), StoreError> {
    let max_attempts = i64::from(max_attempts);
    let mut lost = pairs(
        rows(
            tx,
            "UPDATE runs SET status = 'failed', finished_at = $1, error_kind = 'lost',
                error_message = 'the host stopped during every attempt of this run',
                lease_until = NULL
             WHERE id IN (SELECT id FROM runs
                          WHERE status = 'running' AND lease_until < $1 AND attempts >= $3
                            AND NOT (id = ANY($2::TEXT[]))
                          FOR UPDATE SKIP LOCKED)
             RETURNING id, agent",
            &[&now, &running_here, &max_attempts],
        )
        .await?,
    )?;
    lost.sort();
    let mut delivery = false;
    for (id, agent) in &lost {
        delivery |= create_delivery(tx, id, RunStatus::Failed, now).await?;
        heard.push(Change::RunEnded {
            agent: agent.clone(),
            id: id.clone(),
        });
    }
    let mut queued = pairs(
        rows(
            tx,
            "UPDATE runs SET status = 'queued', lease_until = NULL
             WHERE id IN (SELECT id FROM runs
                          WHERE status = 'running' AND lease_until < $1
                            AND NOT (id = ANY($2::TEXT[]))
                          FOR UPDATE SKIP LOCKED)
             RETURNING id, agent",
            &[&now, &running_here],
        )
        .await?,
    )?;
    queued.sort();
    for (id, agent) in &queued {
        heard.push(Change::RunQueued {
            agent: agent.clone(),
            id: id.clone(),
        });
    }
    Ok((queued, lost, delivery))
}

/// Whether [`run_status`] locks the run's row (to act on it after the others are done).
enum Lock {
    None,
    ForUpdate,
}

/// The status of `agent`'s run `id`, or `None` when it has no such run.
async fn run_status(
    tx: &Transaction<'_>,
    agent: &str,
    id: &str,
    lock: Lock,
) -> Result<Option<RunStatus>, StoreError> {
    let sql = match lock {
        Lock::None => "SELECT status FROM runs WHERE id = $1 AND agent = $2",
        Lock::ForUpdate => "SELECT status FROM runs WHERE id = $1 AND agent = $2 FOR UPDATE",
    };
    Ok(row(tx, sql, &[&id, &agent])
        .await?
        .map(|r| col::<String>(&r, 0))
        .transpose()?
        .and_then(|s| RunStatus::parse(&s)))
}

async fn redeliver(
    tx: &Transaction<'_>,
    agent: &str,
    id: &str,
    now: i64,
) -> Result<WriteOutcome, StoreError> {
    let Some(status) = run_status(tx, agent, id, Lock::None).await? else {
        return Ok(WriteOutcome::NotFound);
    };
    if !status.is_final() {
        return Ok(WriteOutcome::NoDelivery);
    }
    // A new round: due now, for any host, whoever held the last one's claim.
    let changed = exec(
        tx,
        "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, last_error = NULL,
            attempts = 0, created_at = $2, claimed_until = NULL
         WHERE run_id = $1",
        &[&id, &now],
    )
    .await?;
    Ok(if changed == 0 {
        WriteOutcome::NoDelivery
    } else {
        WriteOutcome::Redelivering
    })
}
