//! Runs as pollers and listings read them, due push deliveries (claimed by the host that
//! reads them), and recovery at start.

use tokio_postgres::Row;

use gust_model::{DeliveryRecord, DeliveryStatus, RunRecord, RunStatus};

use super::batch::{pairs, trace};
use super::runs::reclaim;
use super::{Postgres, col, db, num, row, rows};
use crate::StoreError;
use crate::queue::{ActiveRuns, Recovered};

const RUN_COLUMNS: &str = "r.id, r.agent, r.deployment, r.version, r.status, r.created_at,
    r.started_at, r.finished_at, r.attempts, r.output_type, r.output, r.error_kind,
    r.error_message, r.progress_fraction, r.progress_message, r.logs, r.outbound,
    d.event_id, d.event_type, d.url, d.access_token, d.status, d.attempts, d.last_error,
    d.next_attempt_at, d.created_at, r.traceparent, r.tracestate";

/// [`RUN_COLUMNS`] without the output, log lines and outgoing requests (read as none).
const SUMMARY_COLUMNS: &str = "r.id, r.agent, r.deployment, r.version, r.status, r.created_at,
    r.started_at, r.finished_at, r.attempts, NULL::TEXT, NULL::BYTEA, r.error_kind,
    r.error_message, r.progress_fraction, r.progress_message, NULL::TEXT, NULL::TEXT,
    d.event_id, d.event_type, d.url, d.access_token, d.status, d.attempts, d.last_error,
    d.next_attempt_at, d.created_at, r.traceparent, r.tracestate";

fn run_row(row: &Row) -> Result<RunRecord, StoreError> {
    let id: String = col(row, 0)?;
    let agent: String = col(row, 1)?;
    let status: String = col(row, 4)?;
    let output_type: Option<String> = col(row, 9)?;
    let output: Option<Vec<u8>> = col(row, 10)?;
    let error_kind: Option<String> = col(row, 11)?;
    let error_message: Option<String> = col(row, 12)?;
    let progress_fraction: Option<f64> = col(row, 13)?;
    let progress_message: Option<String> = col(row, 14)?;
    let logs: Option<&str> = col(row, 15)?;
    let outbound: Option<&str> = col(row, 16)?;
    let event_id: Option<String> = col(row, 17)?;
    let delivery = match event_id {
        Some(event_id) => Some(DeliveryRecord {
            run_id: id.clone(),
            agent: agent.clone(),
            event_id,
            event_type: col(row, 18)?,
            url: col(row, 19)?,
            access_token: col(row, 20)?,
            status: DeliveryStatus::parse(col(row, 21)?),
            attempts: num(row, 22)?,
            last_error: col(row, 23)?,
            next_attempt_at: col(row, 24)?,
            created_at: col(row, 25)?,
        }),
        None => None,
    };
    Ok(RunRecord {
        id,
        agent,
        deployment: num(row, 2)?,
        version: num(row, 3)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        created_at: col(row, 5)?,
        started_at: col(row, 6)?,
        finished_at: col(row, 7)?,
        attempts: num(row, 8)?,
        output: output_type.zip(output),
        error: error_kind.zip(error_message),
        progress: progress_fraction.zip(progress_message),
        logs: logs
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default(),
        outbound: outbound
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or_default(),
        delivery,
        trace: trace(row, 26)?,
    })
}

const DELIVERY_COLUMNS: &str = "run_id, agent, event_id, event_type, url, access_token, status,
    attempts, last_error, next_attempt_at, created_at";

fn delivery_row(row: &Row) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        run_id: col(row, 0)?,
        agent: col(row, 1)?,
        event_id: col(row, 2)?,
        event_type: col(row, 3)?,
        url: col(row, 4)?,
        access_token: col(row, 5)?,
        status: DeliveryStatus::parse(col(row, 6)?),
        attempts: num(row, 7)?,
        last_error: col(row, 8)?,
        next_attempt_at: col(row, 9)?,
        created_at: col(row, 10)?,
    })
}

impl Postgres {
    /// At start, with other hosts possibly alive: only runs whose lease lapsed are taken back
    /// (a run another host is running keeps renewing its lease); they are queued again, or
    /// fail as `lost` past `max_attempts`. Answers every queued run, this host's to consider.
    pub(crate) async fn recover_runs(
        &self,
        now: i64,
        max_attempts: u32,
    ) -> Result<Recovered, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut heard = Vec::new();
        let (requeued, lost, _) = reclaim(&tx, now, &[], max_attempts, &mut heard).await?;
        if !heard.is_empty() {
            let payloads: Vec<String> = heard.iter().map(super::notify::payload).collect();
            super::exec(
                &tx,
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                &[&super::notify::CHANNEL, &payloads],
            )
            .await?;
        }
        let queued = pairs(
            rows(
                &tx,
                "SELECT id, agent FROM runs WHERE status = 'queued' ORDER BY id",
                &[],
            )
            .await?,
        )?;
        tx.commit().await.map_err(db)?;
        Ok(Recovered {
            queued,
            lost: lost.len(),
            requeued: requeued.len(),
        })
    }

    pub(crate) async fn queued_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        pairs(
            rows(
                &client,
                "SELECT id, agent FROM runs WHERE status = 'queued' ORDER BY id",
                &[],
            )
            .await?,
        )
    }

    /// Counted from the `runs_queue` index (status first): the ended runs, which are most of
    /// the table, are not read.
    pub(crate) async fn active_runs(&self) -> Result<Vec<ActiveRuns>, StoreError> {
        let client = self.client().await?;
        rows(
            &client,
            "SELECT agent, COUNT(*) FILTER (WHERE status = 'queued'),
                COUNT(*) FILTER (WHERE status = 'running'),
                MIN(created_at) FILTER (WHERE status = 'queued')
             FROM runs WHERE status IN ('queued', 'running') GROUP BY agent ORDER BY agent",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let queued: i64 = col(r, 1)?;
            let running: i64 = col(r, 2)?;
            Ok(ActiveRuns {
                agent: col(r, 0)?,
                queued: u64::try_from(queued).unwrap_or(0),
                running: u64::try_from(running).unwrap_or(0),
                oldest_queued_at: col(r, 3)?,
            })
        })
        .collect()
    }

    pub(crate) async fn run(&self, agent: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let client = self.client().await?;
        row(
            &client,
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN deliveries d ON d.run_id = r.id
                 WHERE r.id = $1 AND r.agent = $2"
            ),
            &[&id, &agent],
        )
        .await?
        .as_ref()
        .map(run_row)
        .transpose()
    }

    pub(crate) async fn run_input(
        &self,
        agent: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let client = self.client().await?;
        row(
            &client,
            "SELECT input, content_type FROM runs WHERE id = $1 AND agent = $2",
            &[&id, &agent],
        )
        .await?
        .map(|r| Ok((col(&r, 0)?, col(&r, 1)?)))
        .transpose()
    }

    /// Summaries: a listing never loads outputs, logs or outgoing requests (up to 200 runs
    /// of up to 64 MiB of output each); a poll of one run answers them.
    pub(crate) async fn list_runs(
        &self,
        agent: &str,
        status: Option<RunStatus>,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        rows(
            &client,
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs r LEFT JOIN deliveries d ON d.run_id = r.id
                 WHERE r.agent = $1 AND ($2::TEXT IS NULL OR r.status = $2)
                   AND ($3::TEXT IS NULL OR r.id < $3)
                 ORDER BY r.id DESC LIMIT $4"
            ),
            &[&agent, &status.map(RunStatus::as_str), &before, &limit],
        )
        .await?
        .iter()
        .map(run_row)
        .collect()
    }

    /// Claims up to `limit` pending deliveries due by `now` for this host, oldest first,
    /// leaving out those in `busy` (this host's own in flight, whose claim may have lapsed):
    /// each is held until `claimed_until` (or until its attempt is recorded), and is not due
    /// for any other host meanwhile. Rows another host is claiming at the same moment are
    /// skipped, not waited for. A claim that lapsed (its host died) makes the delivery due
    /// again for every host. If an attempt does outlast its claim, another host may push the
    /// same event too: receivers tell the copies apart by the `webhook-id`, stored with the
    /// event.
    pub(crate) async fn due_deliveries(
        &self,
        now: i64,
        limit: usize,
        claimed_until: i64,
        busy: &[String],
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut due = rows(
            &client,
            &format!(
                "UPDATE deliveries SET claimed_until = $3
                 WHERE run_id IN (SELECT run_id FROM deliveries
                                  WHERE status = 'pending' AND next_attempt_at <= $1
                                    AND (claimed_until IS NULL OR claimed_until <= $1)
                                    AND run_id <> ALL($4)
                                  ORDER BY next_attempt_at LIMIT $2
                                  FOR UPDATE SKIP LOCKED)
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&now, &limit, &claimed_until, &busy],
        )
        .await?
        .iter()
        .map(delivery_row)
        .collect::<Result<Vec<_>, _>>()?;
        due.sort_by(|a, b| (a.next_attempt_at, &a.run_id).cmp(&(b.next_attempt_at, &b.run_id)));
        Ok(due)
    }

    /// Ends this host's claim on `run_id`'s delivery (the one that ends at `claimed_until`):
    /// due again for every host.
    pub(crate) async fn release_delivery(
        &self,
        run_id: &str,
        claimed_until: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE deliveries SET claimed_until = NULL
                 WHERE run_id = $1 AND claimed_until = $2 AND status = 'pending'",
                &[&run_id, &claimed_until],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// When the next pending delivery is due for some host: a claimed one, once its claim
    /// lapses.
    pub(crate) async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let next = row(
            &client,
            "SELECT MIN(GREATEST(next_attempt_at, claimed_until)) FROM deliveries
             WHERE status = 'pending'",
            &[],
        )
        .await?;
        next.map_or(Ok(None), |r| col(&r, 0))
    }
}
