//! What the run queue's batches share, applied one by one or grouped: the agent lock a batch takes
//! first, a run's push event, and the rows' trace contexts.

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;

use gust_model::{RunStatus, TraceContext};

use super::{col, exec, row, rows, sql};
use crate::StoreError;
use crate::queue::RunWrite;

/// Locks, in name order, the rows of the agents whose stored bytes the batch changes: those
/// it accepts runs for, and those of the runs it ends. (`NO KEY UPDATE`, the strength of the
/// updates to come: inserts that merely refer to the agent are not held up.)
pub(super) async fn lock_agents(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
) -> Result<(), StoreError> {
    let mut agents: Vec<&str> = Vec::new();
    let mut ending: Vec<&str> = Vec::new();
    for write in writes {
        match write {
            RunWrite::Insert(run) => agents.push(&run.agent),
            RunWrite::Finish { id, .. } => ending.push(id),
            _ => {}
        }
    }
    if agents.is_empty() && ending.is_empty() {
        return Ok(());
    }
    agents.sort_unstable();
    agents.dedup();
    rows(tx, sql::LOCK_AGENTS, &[&agents, &ending])
        .await
        .map(drop)
}

/// Creates the push event of a run that just ended, when its deployment pushes. Its
/// `event_id` (the `webhook-id`) is made here once and stored, so every host that delivers
/// it sends the same one.
pub(super) async fn create_delivery<C: GenericClient>(
    tx: &C,
    run_id: &str,
    status: RunStatus,
    now: i64,
) -> Result<bool, StoreError> {
    let found = row(
        tx,
        "SELECT r.agent, d.config FROM runs r
         JOIN deployments d ON d.agent = r.agent AND d.deployment = r.deployment
         WHERE r.id = $1",
        &[&run_id],
    )
    .await?;
    let Some(found) = found else {
        return Ok(false);
    };
    let agent: String = col(&found, 0)?;
    let config = super::agents::from_json(col(&found, 1)?)?;
    let Some(push) = config.push_target() else {
        return Ok(false);
    };
    let event_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    exec(
        tx,
        "INSERT INTO deliveries (run_id, agent, event_id, event_type, url, access_token, status,
            next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)
         ON CONFLICT (run_id) DO NOTHING",
        &[
            &run_id,
            &agent,
            &event_id,
            &format!("run.{}", status.as_str()),
            &push.url,
            &push.access_token,
            &now,
        ],
    )
    .await?;
    Ok(true)
}

/// `(id, agent)` from rows whose first two columns are those.
pub(super) fn pairs(rows: Vec<Row>) -> Result<Vec<(String, String)>, StoreError> {
    rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
}

/// The trace context kept in columns `at` (`traceparent`) and `at + 1` (`tracestate`).
pub(super) fn trace(row: &Row, at: usize) -> Result<Option<TraceContext>, StoreError> {
    let traceparent: Option<String> = col(row, at)?;
    traceparent
        .map(|traceparent| {
            Ok(TraceContext {
                traceparent,
                tracestate: col(row, at + 1)?,
            })
        })
        .transpose()
}
