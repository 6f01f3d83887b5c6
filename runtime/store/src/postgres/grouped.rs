//! The common writes of a batch, applied a kind at a time: every plain insert in one
//! statement, every start in one, every finish in one, every renewal in one.
//!
//! Applied one by one, each write costs a round trip and a savepoint (so that one failing
//! write is undone alone); a batch of a thousand writes then waits on two thousand round
//! trips, each a context switch on the database's side, and the queue runs at a fraction of
//! what PostgreSQL can commit. Here a batch costs a few statements whatever its size.
//!
//! What stays as it was:
//!
//! - **Each write's outcome** is what it would have been alone. A write the set-based
//!   statement cannot decide — an insert whose agent is near its storage bound or is gone, a
//!   start whose run is queued yet not claimable (held by another transaction, or past its
//!   queue wait) — is left to the one-by-one path, which decides it and says why. A start
//!   whose run is not queued is told what it is now. (A finish or a renewal not applied is `NotRunning`: the only reason.)
//! - **Order.** Writes of one batch come from tasks that did not wait for each other, so any
//!   order of them is one they could have had — except for writes that name the same run
//!   (one task's progress then its finish). A write whose run another write of the batch
//!   names is left, with that other, to the one-by-one path, in the batch's order.
//! - **Failure.** These statements have no savepoint of their own: one that fails aborts the
//!   transaction, and the batch is applied again one write at a time (see
//!   `runs::apply_run_writes`), where a failing write is undone alone. Savepoints cost only
//!   on that path.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::batch::{create_delivery, lock_agents, trace};
use super::{col, num, rows, sql};
use gust_model::{LogLine, OutboundRequest, RunOutcome, RunStatus};

use crate::queue::{RunWrite, StartedRun, WriteOutcome};
use crate::{Change, StoreError};

/// The outcome of each write, by its place in the batch; `None` for those left to the
/// one-by-one path.
pub(super) type Decided = Vec<Option<WriteOutcome>>;

/// Applies the plain inserts, starts, finishes and renewals of `writes` a kind at a time,
/// recording what each did in `decided` and what other hosts must hear in `heard`.
///
/// # Errors
/// When a statement fails: the transaction is then aborted.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
    decided: &mut Decided,
    heard: &mut Vec<Change>,
) -> Result<(), StoreError> {
    let alone = named_once(writes);
    let mut inserts = Vec::new();
    let mut starts = Vec::new();
    let mut finishes = Vec::new();
    let mut renewals = Vec::new();
    for (at, write) in writes.iter().enumerate() {
        if !alone[at] {
            continue;
        }
        match write {
            // A key may name an earlier run: that is a read and a decision, one by one.
            RunWrite::Insert(run) if run.idempotency.is_none() => inserts.push(at),
            RunWrite::Start { .. } => starts.push(at),
            RunWrite::Finish { .. } => finishes.push(at),
            RunWrite::Renew { .. } => renewals.push(at),
            _ => {}
        }
    }
    // Two writers that lock the same rows in one order cannot deadlock on them: the agents
    // are locked in name order first, and runs are updated in id order.
    let by_run = |a: &usize, b: &usize| run_of(&writes[*a]).cmp(&run_of(&writes[*b]));
    finishes.sort_unstable_by(by_run);
    renewals.sort_unstable_by(by_run);
    // Sent together, answered in order: the batch's settings, its agent locks, and one
    // statement per kind. Each names other runs, so none depends on another's answer. The
    // order they run in is the order they are sent in, so the agent locks go first: every
    // statement is parsed beforehand (once per connection: a statement not yet parsed would
    // send its execution only after its parse is answered, behind the others), and the
    // futures are polled in the order written.
    for statement in [
        sql::LOCK_AGENTS,
        sql::INSERT,
        sql::START,
        sql::FINISH,
        sql::RENEW,
    ] {
        tx.prepare_cached(statement).await.map_err(super::db)?;
    }
    let (settings, locked, inserted, claimed, ended, renewed) = tokio::join!(
        biased;
        tx.batch_execute(sql::BATCH_SETTINGS),
        lock_agents(tx, writes),
        unless_none(&inserts, insert(tx, writes, &inserts)),
        unless_none(&starts, start(tx, writes, &starts)),
        unless_none(&finishes, finish(tx, writes, &finishes)),
        unless_none(&renewals, renew(tx, writes, &renewals)),
    );
    // The first failure is the cause; those after it only saw the transaction aborted.
    settings.map_err(super::db)?;
    locked?;
    let (inserted, claimed, ended, renewed) = (inserted?, claimed?, ended?, renewed?);
    record_inserts(writes, &inserts, &inserted, decided, heard)?;
    record_starts(tx, writes, &starts, &claimed, decided).await?;
    record_finishes(tx, writes, &finishes, &ended, decided, heard).await?;
    record_renewals(writes, &renewals, &renewed, decided)?;
    Ok(())
}

/// Applies one renewal or finish by itself (the one-by-one path: its run is named twice in
/// the batch, or the batch is applied again write by write), with the statement a batch
/// uses for all of them, so each is written once.
pub(super) async fn alone(
    tx: &Transaction<'_>,
    write: &RunWrite,
    heard: &mut Vec<Change>,
) -> Result<WriteOutcome, StoreError> {
    let writes = std::slice::from_ref(write);
    let mut decided: Decided = vec![None];
    match write {
        RunWrite::Renew { .. } => {
            let renewed = renew(tx, writes, &[0]).await?;
            record_renewals(writes, &[0], &renewed, &mut decided)?;
        }
        RunWrite::Finish { .. } => {
            let ended = finish(tx, writes, &[0]).await?;
            record_finishes(tx, writes, &[0], &ended, &mut decided, heard).await?;
        }
        _ => {}
    }
    decided
        .pop()
        .flatten()
        .ok_or_else(|| super::internal("only a renewal or a finish is applied alone".into()))
}

/// The rows of `statement`, or none when no write is of its kind (nothing is sent).
async fn unless_none(
    at: &[usize],
    statement: impl Future<Output = Result<Vec<Row>, StoreError>>,
) -> Result<Vec<Row>, StoreError> {
    if at.is_empty() {
        Ok(Vec::new())
    } else {
        statement.await
    }
}

/// For each write, whether it is the only one of the batch that names its run (writes that
/// name no single run — an expiry sweep, a reclaim, a purge — count as not alone).
fn named_once(writes: &[RunWrite]) -> Vec<bool> {
    let mut named: HashMap<&str, u32> = HashMap::with_capacity(writes.len());
    for write in writes {
        if let Some(id) = run_of(write) {
            *named.entry(id).or_default() += 1;
        }
    }
    writes
        .iter()
        .map(|write| run_of(write).is_some_and(|id| named[id] == 1))
        .collect()
}

/// The run a write names, if it names one.
fn run_of(write: &RunWrite) -> Option<&str> {
    match write {
        RunWrite::Insert(run) => Some(&run.id),
        RunWrite::Start { id, .. }
        | RunWrite::Renew { id, .. }
        | RunWrite::Progress { id, .. }
        | RunWrite::Finish { id, .. }
        | RunWrite::Cancel { id, .. }
        | RunWrite::Redeliver { id, .. }
        | RunWrite::Release { id, .. } => Some(id),
        RunWrite::Delivery { run_id, .. } => Some(run_id),
        RunWrite::ExpireDue { .. } | RunWrite::Purge { .. } | RunWrite::Reclaim { .. } => None,
    }
}

/// Accepts runs without idempotency keys: the bytes of each agent's new runs are counted
/// against its bound together, and the runs of every agent within it inserted together. An
/// agent whose new runs would pass its bound (some may fit), or that is gone, is left to the
/// one-by-one path, which accepts what fits and refuses the rest, run by run.
async fn insert(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
    at: &[usize],
) -> Result<Vec<Row>, StoreError> {
    let n = at.len();
    let mut id = Vec::with_capacity(n);
    let mut agent = Vec::with_capacity(n);
    let mut deployment = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut input = Vec::with_capacity(n);
    let mut content_type = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    let mut expires_at = Vec::with_capacity(n);
    let mut push = Vec::with_capacity(n);
    let mut bound = Vec::with_capacity(n);
    let mut traceparent = Vec::with_capacity(n);
    let mut tracestate = Vec::with_capacity(n);
    for &i in at {
        let RunWrite::Insert(run) = &writes[i] else {
            unreachable!("grouped with the inserts")
        };
        id.push(run.id.as_str());
        agent.push(run.agent.as_str());
        deployment.push(i64::from(run.deployment));
        version.push(i64::from(run.version));
        input.push(run.input.as_slice());
        content_type.push(run.content_type.as_str());
        created_at.push(run.created_at);
        expires_at.push(run.expires_at);
        push.push(run.push);
        bound.push(i64::try_from(run.max_stored_bytes).unwrap_or(i64::MAX));
        let trace = run.trace.as_ref();
        traceparent.push(trace.map(|t| t.traceparent.as_str()));
        tracestate.push(trace.and_then(|t| t.tracestate.as_deref()));
    }
    rows(
        tx,
        sql::INSERT,
        &[
            &id,
            &agent,
            &deployment,
            &version,
            &input,
            &content_type,
            &created_at,
            &expires_at,
            &push,
            &bound,
            &traceparent,
            &tracestate,
        ],
    )
    .await
}

/// What the inserts did: the runs returned were accepted.
fn record_inserts(
    writes: &[RunWrite],
    at: &[usize],
    inserted: &[Row],
    decided: &mut Decided,
    heard: &mut Vec<Change>,
) -> Result<(), StoreError> {
    let place = places(writes, at);
    for row in inserted {
        let i = at[place_of(&place, col(row, 0)?)?];
        let RunWrite::Insert(run) = &writes[i] else {
            unreachable!("grouped with the inserts")
        };
        decided[i] = Some(WriteOutcome::Inserted);
        heard.push(Change::RunQueued {
            agent: run.agent.clone(),
            id: run.id.clone(),
        });
    }
    Ok(())
}

/// The claims: every named run that is queued (and not past its queue wait) becomes running
/// with a lease, skipping runs another transaction holds.
async fn start(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
    at: &[usize],
) -> Result<Vec<Row>, StoreError> {
    let mut id = Vec::with_capacity(at.len());
    let mut now = Vec::with_capacity(at.len());
    let mut lease = Vec::with_capacity(at.len());
    for &i in at {
        let RunWrite::Start {
            id: run,
            now: at_time,
            lease_until,
        } = &writes[i]
        else {
            unreachable!("grouped with the starts")
        };
        id.push(run.as_str());
        now.push(*at_time);
        lease.push(*lease_until);
    }
    rows(tx, sql::START, &[&id, &now, &lease]).await
}

/// What the starts did: the runs returned were claimed; the others are read.
async fn record_starts(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
    at: &[usize],
    claimed: &[Row],
    decided: &mut Decided,
) -> Result<(), StoreError> {
    let place = places(writes, at);
    for row in claimed {
        decided[at[place_of(&place, col(row, 0)?)?]] = Some(WriteOutcome::Started(StartedRun {
            agent: col(row, 1)?,
            deployment: num(row, 2)?,
            attempt: num(row, 3)?,
            input: col(row, 4)?,
            content_type: col(row, 5)?,
            created_at: col(row, 6)?,
            trace: trace(row, 7)?,
        }));
    }
    // The rest, most often runs another host claimed first (every host tries every run it
    // hears of), are told what they are now in one read. Those still queued — held by a
    // transaction that may yet give them back, or past their queue wait — are decided one by
    // one.
    let unclaimed: Vec<&str> = at
        .iter()
        .filter(|&&i| decided[i].is_none())
        .filter_map(|&i| run_of(&writes[i]))
        .collect();
    if unclaimed.is_empty() {
        return Ok(());
    }
    let found = rows(tx, sql::STATUS, &[&unclaimed]).await?;
    let mut status: HashMap<&str, RunStatus> = HashMap::with_capacity(found.len());
    for row in &found {
        if let Some(now) = RunStatus::parse(col(row, 1)?) {
            status.insert(col(row, 0)?, now);
        }
    }
    for &i in at {
        if decided[i].is_some() {
            continue;
        }
        decided[i] = match run_of(&writes[i]).and_then(|run| status.get(run)) {
            None => Some(WriteOutcome::NotStarted(None)),
            Some(RunStatus::Queued) => None,
            Some(now) => Some(WriteOutcome::NotStarted(Some(*now))),
        };
    }
    Ok(())
}

/// Ends running runs (each only if it still runs the attempt that ended) and counts the
/// bytes each agent's runs now keep; creates the push events of those whose deployments push.
async fn finish(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
    at: &[usize],
) -> Result<Vec<Row>, StoreError> {
    let n = at.len();
    let mut id = Vec::with_capacity(n);
    let mut attempt = Vec::with_capacity(n);
    let mut now = Vec::with_capacity(n);
    let mut endings = Vec::with_capacity(n);
    for &i in at {
        let RunWrite::Finish {
            id: run,
            attempt: of,
            now: at_time,
            outcome,
            logs,
            outbound,
        } = &writes[i]
        else {
            unreachable!("grouped with the finishes")
        };
        id.push(run.as_str());
        attempt.push(i64::from(*of));
        now.push(*at_time);
        endings.push(Ending::of(outcome, logs, outbound)?);
    }
    let status: Vec<&str> = endings.iter().map(|e| e.status.as_str()).collect();
    let output: Vec<Option<&[u8]>> = endings.iter().map(|e| e.output).collect();
    let output_type: Vec<Option<&str>> = endings.iter().map(|e| e.output_type).collect();
    let error_kind: Vec<Option<&str>> = endings.iter().map(|e| e.error_kind).collect();
    let error_message: Vec<Option<&str>> = endings.iter().map(|e| e.error_message).collect();
    let logs: Vec<&str> = endings.iter().map(|e| e.logs.as_str()).collect();
    let outbound: Vec<Option<&str>> = endings.iter().map(|e| e.outbound.as_deref()).collect();
    rows(
        tx,
        sql::FINISH,
        &[
            &id,
            &attempt,
            &status,
            &now,
            &output,
            &output_type,
            &error_kind,
            &error_message,
            &logs,
            &outbound,
        ],
    )
    .await
}

/// What the finishes did: the runs returned ended (their push events are created now); the
/// others were not running that attempt any more.
async fn record_finishes(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
    at: &[usize],
    ended: &[Row],
    decided: &mut Decided,
    heard: &mut Vec<Change>,
) -> Result<(), StoreError> {
    let place = places(writes, at);
    for row in ended {
        let run: &str = col(row, 0)?;
        let push: bool = col(row, 1)?;
        let k = place_of(&place, run)?;
        let RunWrite::Finish { now, outcome, .. } = &writes[at[k]] else {
            unreachable!("grouped with the finishes")
        };
        // Most runs do not push: skip reading their deployment's configuration.
        let delivery = push && create_delivery(tx, run, status_of(outcome), *now).await?;
        heard.push(Change::RunEnded {
            agent: col(row, 2)?,
            id: run.to_owned(),
        });
        decided[at[k]] = Some(WriteOutcome::Finished { delivery });
    }
    // Not running that attempt any more (cancelled, or taken over after its lease lapsed).
    for &i in at {
        decided[i].get_or_insert(WriteOutcome::NotRunning);
    }
    Ok(())
}

/// Extends the leases of runs still running the attempt that renews; the others are told
/// their run is not running any more (their workers stop).
async fn renew(
    tx: &Transaction<'_>,
    writes: &[RunWrite],
    at: &[usize],
) -> Result<Vec<Row>, StoreError> {
    let mut id = Vec::with_capacity(at.len());
    let mut attempt = Vec::with_capacity(at.len());
    let mut lease = Vec::with_capacity(at.len());
    for &i in at {
        let RunWrite::Renew {
            id: run,
            attempt: of,
            lease_until,
        } = &writes[i]
        else {
            unreachable!("grouped with the renewals")
        };
        id.push(run.as_str());
        attempt.push(i64::from(*of));
        lease.push(*lease_until);
    }
    rows(tx, sql::RENEW, &[&id, &attempt, &lease]).await
}

/// What the renewals did: the runs returned were extended; the others are not running that
/// attempt any more.
fn record_renewals(
    writes: &[RunWrite],
    at: &[usize],
    renewed: &[Row],
    decided: &mut Decided,
) -> Result<(), StoreError> {
    let place = places(writes, at);
    for row in renewed {
        decided[at[place_of(&place, col(row, 0)?)?]] = Some(WriteOutcome::Done);
    }
    for &i in at {
        decided[i].get_or_insert(WriteOutcome::NotRunning);
    }
    Ok(())
}

/// The status a run ends in with `outcome`.
fn status_of(outcome: &RunOutcome) -> RunStatus {
    match outcome {
        RunOutcome::Succeeded { .. } => RunStatus::Succeeded,
        RunOutcome::Failed { .. } => RunStatus::Failed,
    }
}

/// The columns a run's end writes, from what its attempt reported.
struct Ending<'a> {
    status: RunStatus,
    output: Option<&'a [u8]>,
    output_type: Option<&'a str>,
    error_kind: Option<&'a str>,
    error_message: Option<&'a str>,
    /// The log lines, as JSON.
    logs: String,
    /// The outgoing requests, as JSON; `None` when there were none.
    outbound: Option<String>,
}

impl<'a> Ending<'a> {
    fn of(
        outcome: &'a RunOutcome,
        logs: &[LogLine],
        outbound: &[OutboundRequest],
    ) -> Result<Self, StoreError> {
        let logs = serde_json::to_string(logs).map_err(|e| StoreError::Internal(e.into()))?;
        let outbound = (!outbound.is_empty())
            .then(|| serde_json::to_string(outbound))
            .transpose()
            .map_err(|e| StoreError::Internal(e.into()))?;
        Ok(match outcome {
            RunOutcome::Succeeded {
                content_type,
                output,
            } => Ending {
                status: RunStatus::Succeeded,
                output: Some(output.as_slice()),
                output_type: Some(content_type.as_str()),
                error_kind: None,
                error_message: None,
                logs,
                outbound,
            },
            RunOutcome::Failed { kind, message } => Ending {
                status: RunStatus::Failed,
                output: None,
                output_type: None,
                error_kind: Some(kind.as_str()),
                error_message: Some(message.as_str()),
                logs,
                outbound,
            },
        })
    }
}

/// Where in its group each run's write is: the run of write `at[k]` maps to `k`.
fn places<'a>(writes: &'a [RunWrite], at: &[usize]) -> HashMap<&'a str, usize> {
    at.iter()
        .enumerate()
        .filter_map(|(k, &i)| Some((run_of(&writes[i])?, k)))
        .collect()
}

/// The place in its group of the write of run `id`, which a statement returned.
fn place_of(places: &HashMap<&str, usize>, id: &str) -> Result<usize, StoreError> {
    places
        .get(id)
        .copied()
        .ok_or_else(|| super::internal(format!("a statement returned run {id}, not asked for")))
}
