//! SQL of the run queue and push deliveries.

use rusqlite::{Connection, OptionalExtension, Row, params};

use gust_model::{
    AgentConfig, DeliveryRecord, DeliveryStatus, LogLine, OutboundRequest, RunOutcome, RunRecord,
    RunStatus, TraceContext,
};

use super::{from_json, internal};
use crate::StoreError;
use crate::queue::{ActiveRuns, NewRun, Recovered, RunWrite, StartedRun, WriteOutcome};

use crate::queue::{IDEMPOTENCY_WINDOW_MS, NEVER_EXPIRES};

pub(super) const MIGRATION: &str = "
    ALTER TABLE agents ADD COLUMN push_secret TEXT;
    ALTER TABLE agents ADD COLUMN push_secret_prev TEXT;
    ALTER TABLE agents ADD COLUMN push_secret_prev_until INTEGER;
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        deployment INTEGER NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        input BLOB NOT NULL,
        content_type TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_until INTEGER,
        output BLOB,
        output_type TEXT,
        error_kind TEXT,
        error_message TEXT,
        progress_fraction REAL,
        progress_message TEXT,
        logs TEXT,
        idempotency_key TEXT,
        request_hash TEXT,
        push INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX runs_agent ON runs(agent, id);
    CREATE INDEX runs_queue ON runs(status, expires_at);
    CREATE INDEX runs_finished ON runs(finished_at);
    CREATE UNIQUE INDEX runs_idempotency ON runs(agent, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE deliveries (
        run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        agent TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        url TEXT NOT NULL,
        access_token TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at INTEGER,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
";

/// Runs a statement from the connection's statement cache: the queue's few statements are
/// parsed once, not on every write.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

fn row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

pub(super) fn apply(tx: &Connection, write: &RunWrite) -> Result<WriteOutcome, StoreError> {
    match write {
        RunWrite::Insert(run) => insert(tx, run),
        RunWrite::Start {
            id,
            now,
            lease_until,
        } => start(tx, id, *now, *lease_until),
        RunWrite::Renew {
            id,
            attempt,
            lease_until,
        } => {
            let renewed = exec(
                tx,
                "UPDATE runs SET lease_until = ?2 WHERE id = ?1 AND status = 'running' AND attempts = ?3",
                params![id, lease_until, attempt],
            )
            .map_err(internal)?;
            // Not running any more (cancelled, or taken over after a lapse): its worker stops.
            Ok(if renewed == 0 {
                WriteOutcome::NotRunning
            } else {
                WriteOutcome::Done
            })
        }
        RunWrite::Progress {
            id,
            attempt,
            fraction,
            message,
        } => {
            exec(tx,
                "UPDATE runs SET progress_fraction = ?2, progress_message = ?3 WHERE id = ?1 AND status = 'running' AND attempts = ?4",
                params![id, fraction, message, attempt],
            )
            .map_err(internal)?;
            Ok(WriteOutcome::Done)
        }
        RunWrite::Finish {
            id,
            attempt,
            now,
            outcome,
            logs,
            outbound,
        } => finish(tx, id, *attempt, *now, outcome, logs, outbound),
        RunWrite::Cancel { agent, id, now } => cancel(tx, agent, id, *now),
        RunWrite::ExpireDue { now } => expire_due(tx, *now),
        RunWrite::Delivery {
            run_id,
            round,
            status,
            attempts,
            last_error,
            next_attempt_at,
        } => {
            exec(tx,
                "UPDATE deliveries SET status = ?3, attempts = ?4, last_error = ?5, next_attempt_at = ?6
                 WHERE run_id = ?1 AND created_at = ?2",
                params![run_id, round, status.as_str(), attempts, last_error, next_attempt_at],
            )
            .map_err(internal)?;
            Ok(WriteOutcome::Done)
        }
        RunWrite::Release { id, attempt } => {
            exec(tx,
                "UPDATE runs SET status = 'queued', attempts = MAX(attempts - 1, 0), lease_until = NULL,
                    expires_at = ?3
                 WHERE id = ?1 AND status = 'running' AND attempts = ?2",
                params![id, attempt, NEVER_EXPIRES],
            )
            .map_err(internal)?;
            Ok(WriteOutcome::Done)
        }
        RunWrite::Reclaim {
            now,
            running_here,
            max_attempts,
        } => {
            let running_here =
                serde_json::to_string(running_here).map_err(|e| StoreError::Internal(e.into()))?;
            // Like recovery at start: a run that has used up its attempts fails as `lost`
            // instead of starting once more.
            let lost: Vec<(String, String)> = tx
                .prepare_cached(
                    "UPDATE runs SET status = 'failed', finished_at = ?1, error_kind = 'lost',
                        error_message = 'the host stopped during every attempt of this run',
                        lease_until = NULL
                     WHERE status = 'running' AND lease_until < ?1 AND attempts >= ?3
                       AND id NOT IN (SELECT value FROM json_each(?2))
                     RETURNING id, agent",
                )
                .and_then(|mut s| {
                    s.query_map(params![now, running_here, max_attempts], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect()
                })
                .map_err(internal)?;
            let mut delivery = false;
            for (id, _) in &lost {
                delivery |= create_delivery(tx, id, RunStatus::Failed, *now)?;
            }
            let ids = tx
                .prepare_cached(
                    "UPDATE runs SET status = 'queued', lease_until = NULL
                     WHERE status = 'running' AND lease_until < ?1
                       AND id NOT IN (SELECT value FROM json_each(?2))
                     RETURNING id, agent",
                )
                .and_then(|mut s| {
                    s.query_map(params![now, running_here], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(internal)?;
            Ok(WriteOutcome::Reclaimed {
                ids,
                lost,
                delivery,
            })
        }
        RunWrite::Redeliver { agent, id, now } => redeliver(tx, agent, id, *now),
        RunWrite::Purge { before } => {
            // A run whose push is still pending stays until its delivery ends: purging it
            // would lose the event (its delivery row goes with it).
            let purged: Vec<(String, i64)> = tx
                .prepare_cached(
                    "DELETE FROM runs WHERE finished_at < ?1 AND status NOT IN ('queued', 'running')
                       AND NOT EXISTS (SELECT 1 FROM deliveries d
                                       WHERE d.run_id = runs.id AND d.status = 'pending')
                     RETURNING agent, stored_bytes",
                )
                .and_then(|mut s| s.query_map([before], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(internal)?;
            let mut freed: std::collections::HashMap<String, i64> =
                std::collections::HashMap::new();
            for (agent, bytes) in purged {
                *freed.entry(agent).or_default() += bytes;
            }
            for (agent, bytes) in freed {
                exec(
                    tx,
                    "UPDATE agents SET run_bytes = max(0, run_bytes - ?2) WHERE name = ?1",
                    params![agent, bytes],
                )
                .map_err(internal)?;
            }
            Ok(WriteOutcome::Done)
        }
    }
}

fn insert(tx: &Connection, run: &NewRun) -> Result<WriteOutcome, StoreError> {
    // The agent may have been deleted since its live deployment was read.
    let agent_exists: bool = row(
        tx,
        "SELECT EXISTS (SELECT 1 FROM agents WHERE name = ?1)",
        [&run.agent],
        |r| r.get(0),
    )
    .map_err(internal)?;
    if !agent_exists {
        return Ok(WriteOutcome::NotFound);
    }
    if let Some((key, hash)) = &run.idempotency {
        let earlier: Option<(String, String, i64)> = row(tx,
                "SELECT id, request_hash, created_at FROM runs WHERE agent = ?1 AND idempotency_key = ?2",
                params![run.agent, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(internal)?;
        if let Some((id, earlier_hash, created_at)) = earlier {
            if created_at > run.created_at - IDEMPOTENCY_WINDOW_MS {
                return Ok(if &earlier_hash == hash {
                    WriteOutcome::Replayed { id }
                } else {
                    WriteOutcome::IdempotencyConflict
                });
            }
            // Older than the window: the key is free again.
            exec(
                tx,
                "UPDATE runs SET idempotency_key = NULL WHERE id = ?1",
                [&id],
            )
            .map_err(internal)?;
        }
    }
    // The agent's stored runs stay within their bound: past it, new runs are refused (the
    // ones kept are never evicted; finished ones leave by retention).
    let stored: i64 = row(
        tx,
        "SELECT run_bytes FROM agents WHERE name = ?1",
        [&run.agent],
        |r| r.get(0),
    )
    .map_err(internal)?;
    let input = i64::try_from(run.input.len()).unwrap_or(i64::MAX);
    if stored.saturating_add(input) > i64::try_from(run.max_stored_bytes).unwrap_or(i64::MAX) {
        return Ok(WriteOutcome::StorageFull);
    }
    exec(
        tx,
        "UPDATE agents SET run_bytes = run_bytes + ?2 WHERE name = ?1",
        params![run.agent, input],
    )
    .map_err(internal)?;
    let (key, hash) = run.idempotency.clone().unzip();
    exec(tx,
        "INSERT INTO runs (id, agent, deployment, version, status, input, content_type, created_at, expires_at, idempotency_key, request_hash, push, stored_bytes, traceparent, tracestate)
         VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?10, ?11, length(?5), ?12, ?13)",
        params![
            run.id,
            run.agent,
            run.deployment,
            run.version,
            run.input,
            run.content_type,
            run.created_at,
            run.expires_at,
            key,
            hash,
            run.push,
            run.trace.as_ref().map(|t| &t.traceparent),
            run.trace.as_ref().and_then(|t| t.tracestate.as_ref()),
        ],
    )
    .map_err(internal)?;
    Ok(WriteOutcome::Inserted)
}

fn start(
    tx: &Connection,
    id: &str,
    now: i64,
    lease_until: i64,
) -> Result<WriteOutcome, StoreError> {
    type Row = (
        String,
        i64,
        String,
        u32,
        u32,
        Vec<u8>,
        String,
        i64,
        Option<TraceContext>,
    );
    let found: Option<Row> = row(tx,
            "SELECT status, expires_at, agent, deployment, attempts, input, content_type, created_at, traceparent, tracestate FROM runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, trace(r, 8)?)),
        )
        .optional()
        .map_err(internal)?;
    let Some((
        status,
        expires_at,
        agent,
        deployment,
        attempts,
        input,
        content_type,
        created_at,
        trace,
    )) = found
    else {
        return Ok(WriteOutcome::NotStarted(None));
    };
    let status = RunStatus::parse(&status);
    if status != Some(RunStatus::Queued) {
        return Ok(WriteOutcome::NotStarted(status));
    }
    // The queue-wait limit is for runs that never started: one queued again after its host
    // died has waited its turn already.
    if attempts == 0 && expires_at < now {
        expire(tx, id, now)?;
        let delivery = create_delivery(tx, id, RunStatus::Expired, now)?;
        return Ok(WriteOutcome::Expired {
            ids: vec![(id.to_owned(), agent)],
            delivery,
        });
    }
    exec(tx,
        "UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = ?2, lease_until = ?3 WHERE id = ?1",
        params![id, now, lease_until],
    )
    .map_err(internal)?;
    Ok(WriteOutcome::Started(StartedRun {
        agent,
        deployment,
        attempt: attempts + 1,
        input,
        content_type,
        created_at,
        trace,
    }))
}

fn finish(
    tx: &Connection,
    id: &str,
    attempt: u32,
    now: i64,
    outcome: &RunOutcome,
    logs: &[LogLine],
    outbound: &[OutboundRequest],
) -> Result<WriteOutcome, StoreError> {
    let logs = serde_json::to_string(logs).map_err(|e| StoreError::Internal(e.into()))?;
    let outbound = (!outbound.is_empty())
        .then(|| serde_json::to_string(outbound))
        .transpose()
        .map_err(|e| StoreError::Internal(e.into()))?;
    let (status, output, output_type, error_kind, error_message) = match outcome {
        RunOutcome::Succeeded {
            content_type,
            output,
        } => (
            RunStatus::Succeeded,
            Some(output.as_slice()),
            Some(content_type.as_str()),
            None,
            None,
        ),
        RunOutcome::Failed { kind, message } => (
            RunStatus::Failed,
            None,
            None,
            Some(kind.as_str()),
            Some(message.as_str()),
        ),
    };
    let ended: Option<(bool, String, i64)> = row(
        tx,
        "UPDATE runs SET status = ?2, finished_at = ?3, output = ?4, output_type = ?5, error_kind = ?6,
            error_message = ?7, logs = ?8, outbound = ?9, lease_until = NULL,
            stored_bytes = length(input) + coalesce(length(?4), 0) + length(?8)
                + coalesce(length(?9), 0)
         WHERE id = ?1 AND status = 'running' AND attempts = ?10
         RETURNING push, agent, coalesce(length(?4), 0) + length(?8) + coalesce(length(?9), 0)",
        params![id, status.as_str(), now, output, output_type, error_kind, error_message, logs, outbound, attempt],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
    .map_err(internal)?;
    let Some((push, agent, added)) = ended else {
        return Ok(WriteOutcome::NotRunning);
    };
    exec(
        tx,
        "UPDATE agents SET run_bytes = run_bytes + ?2 WHERE name = ?1",
        params![agent, added],
    )
    .map_err(internal)?;
    // Most runs do not push: skip reading their deployment's configuration.
    let delivery = push && create_delivery(tx, id, status, now)?;
    Ok(WriteOutcome::Finished { delivery })
}

fn cancel(tx: &Connection, agent: &str, id: &str, now: i64) -> Result<WriteOutcome, StoreError> {
    let Some(status) = status_of(tx, agent, id)? else {
        return Ok(WriteOutcome::NotFound);
    };
    if status.is_final() {
        return Ok(WriteOutcome::AlreadyFinished(status));
    }
    exec(
        tx,
        "UPDATE runs SET status = 'cancelled', finished_at = ?2, lease_until = NULL WHERE id = ?1",
        params![id, now],
    )
    .map_err(internal)?;
    let delivery = create_delivery(tx, id, RunStatus::Cancelled, now)?;
    Ok(WriteOutcome::Cancelled {
        was_running: status == RunStatus::Running,
        delivery,
    })
}

/// The status of run `id` of `agent`, if there is one.
fn status_of(tx: &Connection, agent: &str, id: &str) -> Result<Option<RunStatus>, StoreError> {
    let status: Option<String> = row(
        tx,
        "SELECT status FROM runs WHERE id = ?1 AND agent = ?2",
        params![id, agent],
        |r| r.get(0),
    )
    .optional()
    .map_err(internal)?;
    Ok(status.as_deref().and_then(RunStatus::parse))
}

fn expire(tx: &Connection, id: &str, now: i64) -> Result<(), StoreError> {
    exec(
        tx,
        "UPDATE runs SET status = 'expired', finished_at = ?2 WHERE id = ?1",
        params![id, now],
    )
    .map_err(internal)?;
    Ok(())
}

fn expire_due(tx: &Connection, now: i64) -> Result<WriteOutcome, StoreError> {
    let ids: Vec<(String, String)> = tx
        .prepare_cached(
            "SELECT id, agent FROM runs WHERE status = 'queued' AND attempts = 0 AND expires_at < ?1",
        )
        .and_then(|mut s| s.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(internal)?;
    let mut delivery = false;
    for (id, _) in &ids {
        expire(tx, id, now)?;
        delivery |= create_delivery(tx, id, RunStatus::Expired, now)?;
    }
    Ok(WriteOutcome::Expired { ids, delivery })
}

fn redeliver(tx: &Connection, agent: &str, id: &str, now: i64) -> Result<WriteOutcome, StoreError> {
    let Some(status) = status_of(tx, agent, id)? else {
        return Ok(WriteOutcome::NotFound);
    };
    if !status.is_final() {
        return Ok(WriteOutcome::NoDelivery);
    }
    let changed = exec(
        tx,
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2, last_error = NULL,
                attempts = 0, created_at = ?2
             WHERE run_id = ?1",
        params![id, now],
    )
    .map_err(internal)?;
    Ok(if changed == 0 {
        WriteOutcome::NoDelivery
    } else {
        WriteOutcome::Redelivering
    })
}

/// Creates the push event of a run that just ended, when its deployment pushes.
fn create_delivery(
    tx: &Connection,
    run_id: &str,
    status: RunStatus,
    now: i64,
) -> Result<bool, StoreError> {
    let found: Option<(String, String)> = row(
        tx,
        "SELECT r.agent, d.config FROM runs r
             JOIN deployments d ON d.agent = r.agent AND d.deployment = r.deployment
             WHERE r.id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(internal)?;
    let Some((agent, config)) = found else {
        return Ok(false);
    };
    let config: AgentConfig = from_json(&config).map_err(internal)?;
    let Some(push) = config.push_target() else {
        return Ok(false);
    };
    let event_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    exec(tx,
        "INSERT INTO deliveries (run_id, agent, event_id, event_type, url, access_token, status, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7)
         ON CONFLICT (run_id) DO NOTHING",
        params![
            run_id,
            agent,
            event_id,
            format!("run.{}", status.as_str()),
            push.url,
            push.access_token,
            now
        ],
    )
    .map_err(internal)?;
    Ok(true)
}

pub(super) fn recover(
    tx: &Connection,
    now: i64,
    max_attempts: u32,
) -> Result<Recovered, StoreError> {
    let lost: Vec<String> = tx
        .prepare_cached(
            "UPDATE runs SET status = 'failed', finished_at = ?1, error_kind = 'lost',
                error_message = 'the host stopped during every attempt of this run', lease_until = NULL
             WHERE status = 'running' AND attempts >= ?2 RETURNING id",
        )
        .and_then(|mut s| s.query_map(params![now, max_attempts], |r| r.get(0))?.collect())
        .map_err(internal)?;
    for id in &lost {
        create_delivery(tx, id, RunStatus::Failed, now)?;
    }
    let requeued = exec(
        tx,
        "UPDATE runs SET status = 'queued', lease_until = NULL WHERE status = 'running'",
        [],
    )
    .map_err(internal)?;
    let queued = queued(tx)?;
    Ok(Recovered {
        queued,
        lost: lost.len(),
        requeued,
    })
}

const RUN_COLUMNS: &str =
    "r.id, r.agent, r.deployment, r.version, r.status, r.created_at, r.started_at,
    r.finished_at, r.attempts, r.output_type, r.output, r.error_kind, r.error_message,
    r.progress_fraction, r.progress_message, r.logs, r.outbound,
    d.event_id, d.event_type, d.url, d.access_token, d.status, d.attempts, d.last_error,
    d.next_attempt_at, d.created_at, r.traceparent, r.tracestate";

/// [`RUN_COLUMNS`] without the output, log lines and outgoing requests (read as none).
const SUMMARY_COLUMNS: &str =
    "r.id, r.agent, r.deployment, r.version, r.status, r.created_at, r.started_at,
    r.finished_at, r.attempts, NULL, NULL, r.error_kind, r.error_message,
    r.progress_fraction, r.progress_message, NULL, NULL,
    d.event_id, d.event_type, d.url, d.access_token, d.status, d.attempts, d.last_error,
    d.next_attempt_at, d.created_at, r.traceparent, r.tracestate";

/// The trace context kept in columns `at` (`traceparent`) and `at + 1` (`tracestate`).
fn trace(row: &Row<'_>, at: usize) -> rusqlite::Result<Option<TraceContext>> {
    let traceparent: Option<String> = row.get(at)?;
    Ok(match traceparent {
        Some(traceparent) => Some(TraceContext {
            traceparent,
            tracestate: row.get(at + 1)?,
        }),
        None => None,
    })
}

fn run_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let id: String = row.get(0)?;
    let agent: String = row.get(1)?;
    let status: String = row.get(4)?;
    let output_type: Option<String> = row.get(9)?;
    let output: Option<Vec<u8>> = row.get(10)?;
    let error_kind: Option<String> = row.get(11)?;
    let error_message: Option<String> = row.get(12)?;
    let progress_fraction: Option<f64> = row.get(13)?;
    let progress_message: Option<String> = row.get(14)?;
    let logs: Option<String> = row.get(15)?;
    let outbound: Option<String> = row.get(16)?;
    let event_id: Option<String> = row.get(17)?;
    let delivery = match event_id {
        Some(event_id) => Some(DeliveryRecord {
            run_id: id.clone(),
            agent: agent.clone(),
            event_id,
            event_type: row.get(18)?,
            url: row.get(19)?,
            access_token: row.get(20)?,
            status: DeliveryStatus::parse(&row.get::<_, String>(21)?),
            attempts: row.get(22)?,
            last_error: row.get(23)?,
            next_attempt_at: row.get(24)?,
            created_at: row.get(25)?,
        }),
        None => None,
    };
    Ok(RunRecord {
        id,
        agent,
        deployment: row.get(2)?,
        version: row.get(3)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        created_at: row.get(5)?,
        started_at: row.get(6)?,
        finished_at: row.get(7)?,
        attempts: row.get(8)?,
        output: output_type.zip(output),
        error: error_kind.zip(error_message),
        progress: progress_fraction.zip(progress_message),
        logs: logs
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or_default(),
        outbound: outbound
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or_default(),
        delivery,
        trace: trace(row, 26)?,
    })
}

pub(super) fn get(
    conn: &Connection,
    agent: &str,
    id: &str,
) -> Result<Option<RunRecord>, StoreError> {
    row(
        conn,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN deliveries d ON d.run_id = r.id
             WHERE r.id = ?1 AND r.agent = ?2"
        ),
        params![id, agent],
        run_row,
    )
    .optional()
    .map_err(internal)
}

pub(super) fn input(
    conn: &Connection,
    agent: &str,
    id: &str,
) -> Result<Option<(Vec<u8>, String)>, StoreError> {
    row(
        conn,
        "SELECT input, content_type FROM runs WHERE id = ?1 AND agent = ?2",
        params![id, agent],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(internal)
}

pub(super) fn list(
    conn: &Connection,
    agent: &str,
    status: Option<RunStatus>,
    limit: usize,
    before: Option<&str>,
) -> Result<Vec<RunRecord>, StoreError> {
    // Summaries: a listing never loads outputs, logs or outgoing requests (up to 200 runs
    // of up to 64 MiB of output each); a poll of one run answers them.
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM runs r LEFT JOIN deliveries d ON d.run_id = r.id
         WHERE r.agent = ?1 AND (?2 IS NULL OR r.status = ?2) AND (?3 IS NULL OR r.id < ?3)
         ORDER BY r.id DESC LIMIT ?4"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(
                params![agent, status.map(RunStatus::as_str), before, limit as i64],
                run_row,
            )?
            .collect()
        })
        .map_err(internal)
}

const DELIVERY_COLUMNS: &str = "run_id, agent, event_id, event_type, url, access_token, status,
    attempts, last_error, next_attempt_at, created_at";

fn delivery_row(row: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        run_id: row.get(0)?,
        agent: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        url: row.get(4)?,
        access_token: row.get(5)?,
        status: DeliveryStatus::parse(&row.get::<_, String>(6)?),
        attempts: row.get(7)?,
        last_error: row.get(8)?,
        next_attempt_at: row.get(9)?,
        created_at: row.get(10)?,
    })
}

/// One host holds the database, so nothing is claimed: the deliveries in `busy` are due
/// still and are read past (they are a few dozen at most).
pub(super) fn due(
    conn: &Connection,
    now: i64,
    limit: usize,
    busy: &[String],
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let read = i64::try_from(limit.saturating_add(busy.len())).unwrap_or(i64::MAX);
    let mut due: Vec<DeliveryRecord> = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries
             WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2"
        ))
        .and_then(|mut s| s.query_map(params![now, read], delivery_row)?.collect())
        .map_err(internal)?;
    due.retain(|d| !busy.contains(&d.run_id));
    due.truncate(limit);
    Ok(due)
}

pub(super) fn queued(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    conn.prepare_cached("SELECT id, agent FROM runs WHERE status = 'queued' ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(internal)
}

/// Counted from the `runs_queue` index (status first): the ended runs, which are most of
/// the table, are not read.
pub(super) fn active(conn: &Connection) -> Result<Vec<ActiveRuns>, StoreError> {
    conn.prepare_cached(
        "SELECT agent, SUM(status = 'queued'), SUM(status = 'running'),
                MIN(CASE WHEN status = 'queued' THEN created_at END)
         FROM runs WHERE status IN ('queued', 'running') GROUP BY agent ORDER BY agent",
    )
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(ActiveRuns {
                agent: r.get(0)?,
                queued: r.get(1)?,
                running: r.get(2)?,
                oldest_queued_at: r.get(3)?,
            })
        })?
        .collect()
    })
    .map_err(internal)
}

pub(super) fn next_due(conn: &Connection) -> Result<Option<i64>, StoreError> {
    row(
        conn,
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )
    .map_err(internal)
}
