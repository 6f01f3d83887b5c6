//! Several hosts on one database: what this host does when another one changes something.
//!
//! The store announces every committed change that other hosts must act on
//! ([`gust_store::Change`], PostgreSQL's LISTEN/NOTIFY). Announcements can be missed — the
//! connection that listens drops, a burst overflows the channel — so what is live and the
//! keys are also reconciled after a reconnect ([`Change::Resync`]) and every
//! [`RECONCILE_EVERY`]; the sweeper lists queued runs every 10 s; and a run cancelled (or
//! taken over) elsewhere is stopped at its next lease renewal even when its announcement was
//! missed (`runs/workers.rs`). An announcement makes a change arrive within a second, the
//! rest makes it arrive at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gust_store::Change;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::auth::Keys;
use crate::deploy::Lifecycle;
use crate::runs::Runs;

/// How often what is live and the keys are compared with the database without being told.
const RECONCILE_EVERY: Duration = Duration::from_secs(15);

/// What the follower acts on.
pub(crate) struct Follower {
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) keys: Arc<Keys>,
    pub(crate) runs: Arc<Runs>,
    /// A reconcile is under way.
    pub(crate) reconciling: AtomicBool,
}

impl Follower {
    /// Acts on `changes` until `stop`.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut changes: broadcast::Receiver<Change>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => Change::Resync,
                change = changes.recv() => match change {
                    Ok(change) => change,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "missed announcements from the database; reconciling");
                        Change::Resync
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            self.act(change);
        }
    }

    /// Runs are handled at once (they are cheap and in order); the rest in tasks of their
    /// own, since a deploy elsewhere may mean a compile here, which must not hold up the
    /// announcements behind it.
    fn act(self: &Arc<Self>, change: Change) {
        match change {
            Change::RunQueued { .. } | Change::RunCancelled { .. } | Change::RunEnded { .. } => {
                self.runs.follow(&change);
            }
            Change::VersionAdded { digest, .. } => {
                let follower = Arc::clone(self);
                tokio::spawn(async move { follower.lifecycle.precompile(&digest).await });
            }
            Change::Deployments { agent } => {
                let follower = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = follower.lifecycle.follow(&agent).await {
                        tracing::error!(agent, "following a deploy made on another host: {e:#}");
                    }
                });
            }
            Change::Keys { agent } => {
                let follower = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = follower.keys.follow(Some(&agent)).await {
                        tracing::error!(
                            agent,
                            "following a key change made on another host: {e:#}"
                        );
                    }
                });
            }
            Change::Resync => {
                // One reconcile at a time: under a burst of missed announcements, another
                // one started meanwhile would only repeat the work.
                if self.reconciling.swap(true, Ordering::AcqRel) {
                    return;
                }
                let follower = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = follower.lifecycle.follow_all().await {
                        tracing::error!("reconciling what is live with the database: {e:#}");
                    }
                    if let Err(e) = follower.keys.follow(None).await {
                        tracing::error!("reconciling invoke keys with the database: {e:#}");
                    }
                    follower.reconciling.store(false, Ordering::Release);
                });
            }
            // Settings (the admin token's hash) are the server's to follow.
            Change::Setting { .. } => {}
            // A kind of change this host's version does not act on (announced by a newer
            // host during a rolling upgrade): the reconcile catches what it implies.
            _ => {}
        }
    }
}
