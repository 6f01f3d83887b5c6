//! Agent name → its live deployment, swapped atomically on deploy and rollback.
//!
//! Reads are the sync-call hot path: one atomic load of an immutable map and an `Arc` clone,
//! no lock and no database. Writes (rare: deploys) copy the map and swap it in. A call keeps
//! the `Arc<Deployment>` it loaded, so it runs wholly on the deployment it started on while
//! newer calls see the new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::bindings::AgentPre;
use crate::host::CallState;

/// A deployment ready to serve: a pre-linked component and its frozen settings.
pub(crate) struct Deployment {
    pub(crate) agent: Arc<str>,
    pub(crate) deployment: u32,
    pub(crate) version: u32,
    pub(crate) pre: AgentPre<CallState>,
    pub(crate) sync_timeout: Duration,
    /// Values the guest reads through `config`; shared by every call of the deployment.
    pub(crate) config: Arc<BTreeMap<String, String>>,
}

/// See the module docs.
pub(crate) struct Registry {
    live: ArcSwap<HashMap<Arc<str>, Arc<Deployment>>>,
    /// Set once the start-up load is done; checked on every call, so an atomic.
    ready: AtomicBool,
    /// For calls that arrive during the start-up load, to wait instead of failing.
    ready_signal: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            live: ArcSwap::default(),
            ready: AtomicBool::new(false),
            ready_signal: watch::Sender::new(false),
        }
    }
}

impl Registry {
    pub(crate) fn get(&self, agent: &str) -> Option<Arc<Deployment>> {
        self.live.load().get(agent).cloned()
    }

    pub(crate) fn set(&self, deployment: Arc<Deployment>) {
        self.live.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(Arc::clone(&deployment.agent), Arc::clone(&deployment));
            map
        });
    }

    pub(crate) fn remove(&self, agent: &str) {
        self.live.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(agent);
            map
        });
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
