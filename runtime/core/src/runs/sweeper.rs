//! The queue's housekeeping, once a second: runs that waited too long expire, ended runs
//! past retention are purged, and what a failed write could leave behind is repaired.

use std::sync::Arc;
use std::time::Duration;

use gust_store::queue::RunWrite;
use tokio_util::sync::CancellationToken;

use super::Runs;
use crate::clock;

/// Expires runs that waited too long and purges ended runs past retention.
pub(super) async fn sweep(runs: Arc<Runs>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = tokio::time::Instant::now();
    let mut last_reconcile = tokio::time::Instant::now();
    // Alone, a lapsed lease means a failed write here: rare, so looking every 10 s is
    // plenty. With several hosts it means a host died, and its runs should move to another
    // within about a second of the lease's end.
    let reclaim_every = if runs.store.shared() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let mut last_reclaim = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock::now_ms();
        runs.writer.write_detached(RunWrite::ExpireDue { now });
        if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = tokio::time::Instant::now();
            reclaim(&runs, now).await;
        }
        if last_reconcile.elapsed() >= Duration::from_secs(10) {
            last_reconcile = tokio::time::Instant::now();
            redispatch(&runs).await;
        }
        if last_purge.elapsed() >= Duration::from_secs(60) {
            last_purge = tokio::time::Instant::now();
            let retention = i64::try_from(runs.settings.retention.as_millis()).unwrap_or(i64::MAX);
            runs.writer.write_detached(RunWrite::Purge {
                before: now.saturating_sub(retention),
            });
        }
    }
}

/// Running runs whose worker is gone (their lease ran out: a failed write here, or a host
/// that died) go back to the queue.
async fn reclaim(runs: &Runs, now: i64) {
    let running_here = runs.state.running().keys().cloned().collect();
    if let Err(e) = runs
        .writer
        .write(RunWrite::Reclaim {
            now,
            running_here,
            max_attempts: runs.settings.max_attempts,
        })
        .await
    {
        tracing::error!("reclaiming runs with lapsed leases: {e:#}");
    }
}

/// Queued runs that nothing here will pick up (their start was lost, or another host's
/// announcement of them was missed) are dispatched again. A run dispatched twice starts
/// once: the start is a conditional update.
async fn redispatch(runs: &Runs) {
    match runs.store.queued_runs().await {
        Ok(queued) => {
            for (id, agent) in queued {
                runs.state.dispatch(id, &agent);
            }
        }
        Err(e) => tracing::error!("listing queued runs: {e:#}"),
    }
}
