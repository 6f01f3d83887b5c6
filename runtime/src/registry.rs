//! Agent name → its live deployment, swapped atomically on deploy and rollback.
//!
//! Reads are the sync-call hot path: one atomic load of an immutable map and an `Arc` clone,
//! no lock and no database. Writes (rare: deploys) copy the map and swap it in. A call keeps
//! the `Arc<Deployment>` it loaded, so it runs wholly on the deployment it started on while
//! newer calls see the new one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::bindings::AgentPre;
use crate::gate::Gate;
use crate::host::{CallState, OutboundPolicy};
use crate::store::PushConfig;

/// A deployment ready to serve: a pre-linked component and its frozen settings.
pub(crate) struct Deployment {
    pub(crate) agent: Arc<str>,
    pub(crate) deployment: u32,
    pub(crate) version: u32,
    pub(crate) pre: AgentPre<CallState>,
    /// The agent's admission gate (shared with its other deployments).
    pub(crate) gate: Arc<Gate>,
    /// Where its guests may send HTTP requests.
    pub(crate) outbound: OutboundPolicy,
    /// Largest linear memory of an instance.
    pub(crate) memory_bytes: usize,
    /// Largest output of a call.
    pub(crate) output_bytes: usize,
    pub(crate) sync_timeout: Duration,
    /// Per attempt of a queued run; `None` for none.
    pub(crate) async_timeout: Option<Duration>,
    pub(crate) max_queue_wait: Duration,
    /// Where ended runs are pushed (async mode only).
    pub(crate) push: Option<PushConfig>,
    /// Values the guest reads through `config`; shared by every call of the deployment.
    pub(crate) config: Arc<BTreeMap<String, String>>,
}

/// Deployments that were live recently (or were loaded for a queued run), kept so that runs
/// accepted on them still find them ready without loading their component again.
const RETIRED_KEPT: usize = 32;

/// See the module docs.
pub(crate) struct Registry {
    live: ArcSwap<HashMap<Arc<str>, Arc<Deployment>>>,
    retired: Mutex<VecDeque<Arc<Deployment>>>,
    /// Set once the start-up load is done; checked on every call, so an atomic.
    ready: AtomicBool,
    /// For calls that arrive during the start-up load, to wait instead of failing.
    ready_signal: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            live: ArcSwap::default(),
            retired: Mutex::default(),
            ready: AtomicBool::new(false),
            ready_signal: watch::Sender::new(false),
        }
    }
}

impl Registry {
    pub(crate) fn get(&self, agent: &str) -> Option<Arc<Deployment>> {
        self.live.load().get(agent).cloned()
    }

    /// Makes `deployment` live, returning the one it replaced.
    pub(crate) fn set(&self, deployment: Arc<Deployment>) -> Option<Arc<Deployment>> {
        let previous = self.live.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(Arc::clone(&deployment.agent), Arc::clone(&deployment));
            map
        });
        let previous = previous.get(&deployment.agent).cloned();
        if let Some(previous) = &previous {
            self.remember(Arc::clone(previous));
        }
        previous
    }

    /// Keeps a deployment that is not live for runs accepted on it.
    pub(crate) fn remember(&self, deployment: Arc<Deployment>) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|d| !(d.agent == deployment.agent && d.deployment == deployment.deployment));
        if retired.len() == RETIRED_KEPT {
            retired.pop_front();
        }
        retired.push_back(deployment);
    }

    /// Deployment `number` of `agent`, if it is live or was recently.
    pub(crate) fn find(&self, agent: &str, number: u32) -> Option<Arc<Deployment>> {
        if let Some(live) = self.get(agent).filter(|d| d.deployment == number) {
            return Some(live);
        }
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired
            .iter()
            .find(|d| &*d.agent == agent && d.deployment == number)
            .cloned()
    }

    pub(crate) fn remove(&self, agent: &str) {
        self.live.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(agent);
            map
        });
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|d| &*d.agent != agent);
    }

    pub(crate) fn len(&self) -> usize {
        self.live.load().len()
    }

    /// Marks the start-up load as done; `/readyz` answers 200 from then on.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.ready_signal.send_replace(true);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until the start-up load is done (at once when it is).
    pub(crate) async fn wait_ready(&self) {
        if self.is_ready() {
            return;
        }
        let mut ready = self.ready_signal.subscribe();
        // The sender lives as long as `self`, so this only ends when ready.
        let _ = ready.wait_for(|r| *r).await;
    }
}
