//! The run queue's in-memory side: what reacts to committed writes (see `writer`) — runs to
//! dispatch, pollers to wake, the pusher to nudge — and the state of dispatch (each agent's
//! waiting runs, the runs executing here and how to interrupt each). The durable queue is
//! in the store; this is rebuilt from it at start.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gust_store::queue::{RunWrite, WriteOutcome};
use tokio::sync::{Notify, mpsc, oneshot};

use super::events::RunEvents;
use super::queue::AgentQueue;
use crate::metrics::Metrics;

/// See the module docs.
pub(super) struct QueueState {
    /// Wakes the dispatcher for an agent whose queue has runs and no drainer.
    pub(super) dispatch: mpsc::UnboundedSender<String>,
    /// Runs in the dispatch queue or executing: the reconciler re-dispatches only queued
    /// runs that are not here.
    pub(super) known: Mutex<HashSet<String>>,
    /// Each agent's runs waiting for room, oldest first.
    pub(super) queues: Mutex<HashMap<String, Arc<AgentQueue>>>,
    /// Runs executing now, with the way to interrupt each.
    pub(super) running: Mutex<HashMap<String, oneshot::Sender<()>>>,
    pub(super) waiters: Mutex<HashMap<String, Arc<Notify>>>,
    pub(super) push: Arc<Notify>,
    pub(super) accepted: AtomicU64,
    pub(super) ended: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) writes: AtomicU64,
    /// Runs accepted and ended, for `/metrics`.
    metrics: Arc<Metrics>,
    /// Followers of a run learn of its end here, after the commit.
    events: Arc<RunEvents>,
}

impl QueueState {
    /// Empty state; `dispatch` wakes the dispatcher for an agent with waiting runs.
    pub(super) fn new(
        dispatch: mpsc::UnboundedSender<String>,
        metrics: Arc<Metrics>,
        events: Arc<RunEvents>,
    ) -> Self {
        Self {
            dispatch,
            known: Mutex::default(),
            queues: Mutex::default(),
            running: Mutex::default(),
            waiters: Mutex::default(),
            push: Arc::new(Notify::new()),
            accepted: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            metrics,
            events,
        }
    }

    pub(super) fn committed(&self, write: &RunWrite, outcome: &WriteOutcome) {
        match (write, outcome) {
            (RunWrite::Insert(run), WriteOutcome::Inserted) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.metrics.run_accepted(&run.agent);
                // Its place in the agent's queue was reserved by `submit`.
                self.enqueue(run.id.clone(), &run.agent, false);
            }
            // Not a new run (a replay, no room, a conflict): the place `submit` reserved goes
            // back here, where every outcome arrives, and not in `submit`, which its client
            // may have dropped (a disconnect) before the outcome came.
            (RunWrite::Insert(run), _) => self.queue(&run.agent).release(),
            (RunWrite::Finish { id, .. }, WriteOutcome::Finished { delivery }) => {
                self.ended(id, *delivery);
            }
            (
                RunWrite::Cancel { id, .. },
                WriteOutcome::Cancelled {
                    was_running,
                    delivery,
                },
            ) => {
                // Interrupting here, after the commit, reaches the worker even if the client
                // that asked has gone away.
                if *was_running {
                    self.interrupt(id);
                } else if let RunWrite::Cancel { agent, .. } = write {
                    self.unqueue(id, agent);
                }
                if let RunWrite::Cancel { agent, .. } = write {
                    self.metrics.run_ended(agent, "cancelled");
                }
                self.ended(id, *delivery);
            }
            (_, WriteOutcome::Expired { ids, delivery }) => {
                for (id, agent) in ids {
                    self.unqueue(id, agent);
                    self.ended(id, false);
                    self.metrics.run_ended(agent, "expired");
                }
                if *delivery {
                    self.push.notify_one();
                }
            }
            (
                _,
                WriteOutcome::Reclaimed {
                    ids,
                    lost,
                    delivery,
                },
            ) => {
                for (id, agent) in ids {
                    tracing::warn!(run_id = %id, "a run's lease ran out; queuing it again");
                    self.dispatch(id.clone(), agent);
                }
                for (id, agent) in lost {
                    tracing::warn!(run_id = %id, "a run's lease ran out after its last attempt; it failed as lost");
                    self.ended(id, false);
                    self.metrics.run_ended(agent, "failed");
                }
                if *delivery {
                    self.push.notify_one();
                }
            }
            (RunWrite::Finish { id, .. }, WriteOutcome::NotRunning) => {
                // Another worker (after a reclaim) or a cancel got there first: this
                // attempt's result is dropped. Leases are renewed from the claim on, so this
                // should only follow a cancel.
                tracing::warn!(run_id = %id, "a run finished here but was no longer running; its result is not recorded");
            }
            (_, WriteOutcome::Redelivering) => self.push.notify_one(),
            _ => {}
        }
    }

    /// A write that was not applied (its batch failed, or the writer had stopped): an
    /// insert gives back the place `submit` reserved for it.
    pub(super) fn not_applied(&self, write: &RunWrite) {
        if let RunWrite::Insert(run) = write {
            self.queue(&run.agent).release();
        }
    }

    pub(super) fn batch(&self, writes: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }

    /// Queues run `id` of `agent` for execution, unless it already is (recovery and the
    /// reconciler: the run's place is not reserved yet).
    pub(super) fn dispatch(&self, id: String, agent: &str) {
        self.enqueue(id, agent, true);
    }

    fn enqueue(&self, id: String, agent: &str, reserve: bool) {
        let queue = self.queue(agent);
        if !self.known().insert(id.clone()) {
            if !reserve {
                queue.release();
            }
            return;
        }
        if queue.push(id, reserve) {
            let _ = self.dispatch.send(agent.to_owned());
        }
    }

    /// Takes a run that will not start (cancelled or expired while waiting) out of its
    /// agent's queue, so it neither counts against the queue bound nor waits for room.
    fn unqueue(&self, id: &str, agent: &str) {
        if self.queue(agent).remove(id) {
            self.known().remove(id);
        }
    }

    /// The agent's queue, made on first use.
    pub(super) fn queue(&self, agent: &str) -> Arc<AgentQueue> {
        Arc::clone(
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.to_owned())
                .or_default(),
        )
    }

    pub(super) fn known(&self) -> MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn running(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops run `id` if it is executing here: its future is dropped, and with it the
    /// guest's `Store`. A guest spinning on CPU yields at every epoch tick, so this takes
    /// effect within one tick.
    fn interrupt(&self, id: &str) {
        if let Some(stop) = self.running().remove(id) {
            let _ = stop.send(());
        }
    }

    fn ended(&self, id: &str, delivery: bool) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        if delivery {
            self.push.notify_one();
        }
        self.wake(id);
    }

    /// Tells the followers and pollers of run `id` that it ended (its end is committed).
    fn wake(&self, id: &str) {
        self.events.ended(id);
        let waiting = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(notify) = waiting {
            notify.notify_waiters();
        }
    }

    /// Another host cancelled run `id`: stop it if it executes here, drop it if it waits
    /// here, and tell its pollers and followers.
    pub(super) fn cancelled_elsewhere(&self, id: &str, agent: &str) {
        self.interrupt(id);
        self.ended_elsewhere(id, agent);
    }

    /// Another host ended run `id` (it executed there, or expired or failed there): it
    /// leaves this host's queue (where its announcement put it) and its place under the
    /// agent's bound, and its pollers and followers here learn of it. Not counted: that host
    /// counted it.
    pub(super) fn ended_elsewhere(&self, id: &str, agent: &str) {
        self.unqueue(id, agent);
        self.wake(id);
    }

    /// The notifier pollers of `id` wait on, registered until the guard drops.
    pub(super) fn waiter<'a>(&'a self, id: &'a str) -> Waiter<'a> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let notify = Arc::clone(waiters.entry(id.to_owned()).or_default());
        Waiter {
            state: self,
            id,
            notify,
        }
    }
}

/// A poller's registration; dropping it (the poll ended, or its client went away) removes
/// the entry when no other poller of the same run shares it.
pub(super) struct Waiter<'a> {
    state: &'a QueueState,
    id: &'a str,
    pub(super) notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self.state.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let ours = waiters
            .get(self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify));
        // The map and this poller hold it: nobody else waits.
        if ours && Arc::strong_count(&self.notify) <= 2 {
            waiters.remove(self.id);
        }
    }
}
