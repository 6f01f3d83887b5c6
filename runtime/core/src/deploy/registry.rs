//! Agent name → its live deployment, swapped atomically on deploy and rollback.
//!
//! Reads are the sync-call hot path: one atomic load of an immutable map and an `Arc` clone,
//! no lock and no database. Writes (rare: deploys) copy the map and swap it in. A call keeps
//! the `Arc<Deployment>` it loaded, so it runs wholly on the deployment it started on while
//! newer calls see the new one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use gust_model::{DeliveryMode, DeploymentRecord, HostPattern, PushConfig};
use gust_wasm::{Linked, OutboundPolicy, PreparedAgent};

use super::admission::Gate;

/// A deployment ready to serve: a prepared component and the settings frozen with it.
pub struct Deployment {
    /// Numbered from 1 per agent; changes with every deploy and rollback.
    pub number: u32,
    /// When it was made, ms since the epoch: with `number`, what tells it apart from a
    /// deployment of a deleted agent of the same name (whose numbers started at 1 too).
    pub(crate) deployed_at: i64,
    /// The component, prepared for calls (it carries the agent's name and the version).
    pub agent: PreparedAgent,
    /// The agent's admission gate (shared with its other deployments).
    pub(crate) gate: Arc<Gate>,
    /// Wall-time limit of a sync call.
    pub(crate) sync_timeout: Duration,
    /// Per attempt of a queued run; `None` for none.
    pub(crate) async_timeout: Option<Duration>,
    pub(crate) max_queue_wait: Duration,
    /// Where ended runs are pushed (async mode only).
    pub push: Option<PushConfig>,
    /// The allowed-host patterns, parsed, with their text (outgoing requests are counted
    /// by the pattern that allowed them).
    pub(crate) allowed: Arc<[(HostPattern, Arc<str>)]>,
}

impl Deployment {
    /// The deployment `record` describes, running `linked` with the outbound `policy` made
    /// from its configuration, admitted through `gate`.
    pub(crate) fn new(
        record: &DeploymentRecord,
        linked: Linked,
        gate: Arc<Gate>,
        outbound: OutboundPolicy,
    ) -> Arc<Self> {
        let config = &record.config;
        Arc::new(Self {
            number: record.deployment,
            deployed_at: record.deployed_at,
            agent: PreparedAgent::new(&record.agent, record.version, linked, config, outbound),
            gate,
            sync_timeout: Duration::from_secs(config.sync_timeout_s),
            async_timeout: config.async_timeout_s.map(Duration::from_secs),
            max_queue_wait: Duration::from_secs(config.max_queue_wait_s),
            push: config.push_target().cloned(),
            allowed: config
                .allowed_hosts
                .iter()
                .filter_map(|text| Some((HostPattern::parse(text).ok()?, Arc::from(text.as_str()))))
                .collect(),
        })
    }

    /// Whether this is the deployment `record` describes.
    pub(crate) fn is(&self, record: &DeploymentRecord) -> bool {
        self.number == record.deployment && self.deployed_at == record.deployed_at
    }

    /// The agent's name.
    pub fn name(&self) -> &Arc<str> {
        &self.agent.agent
    }

    /// The version that runs.
    pub fn version(&self) -> u32 {
        self.agent.version
    }

    /// How its queued runs' results reach the user: a push target is kept only in async
    /// mode.
    pub fn mode(&self) -> DeliveryMode {
        if self.push.is_some() {
            DeliveryMode::Async
        } else {
            DeliveryMode::Sync
        }
    }
}

/// Deployments that were live recently (or were loaded for a queued run), kept so that runs
/// accepted on them still find them ready without loading their component again.
const RETIRED_KEPT: usize = 32;

/// See the module docs.
pub struct Registry {
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
    /// The live deployment of `agent`.
    pub fn get(&self, agent: &str) -> Option<Arc<Deployment>> {
        self.live.load().get(agent).cloned()
    }

    /// Makes `deployment` live, returning the one it replaced.
    pub(crate) fn set(&self, deployment: Arc<Deployment>) -> Option<Arc<Deployment>> {
        deployment.agent.set_live(true);
        let previous = self.live.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(Arc::clone(deployment.name()), Arc::clone(&deployment));
            map
        });
        let previous = previous.get(deployment.name()).cloned();
        if let Some(previous) = previous
            .as_ref()
            .filter(|previous| !Arc::ptr_eq(previous, &deployment))
        {
            self.remember(Arc::clone(previous));
        }
        previous
    }

    /// Keeps a deployment that is not live for runs accepted on it.
    pub(crate) fn remember(&self, deployment: Arc<Deployment>) {
        // Its warm standby instances go (a redeploy or rollback drops them at once).
        deployment.agent.set_live(false);
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|d| !(d.name() == deployment.name() && d.number == deployment.number));
        if retired.len() == RETIRED_KEPT {
            retired.pop_front();
        }
        retired.push_back(deployment);
    }

    /// Deployment `number` of `agent`, if it is live or was recently.
    pub(crate) fn find(&self, agent: &str, number: u32) -> Option<Arc<Deployment>> {
        if let Some(live) = self.get(agent).filter(|d| d.number == number) {
            return Some(live);
        }
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired
            .iter()
            .find(|d| &**d.name() == agent && d.number == number)
            .cloned()
    }

    pub(crate) fn remove(&self, agent: &str) {
        if let Some(live) = self.get(agent) {
            live.agent.set_live(false);
        }
        self.live.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(agent);
            map
        });
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|d| &**d.name() != agent);
    }

    /// The agents with a live deployment.
    pub(crate) fn agents(&self) -> Vec<String> {
        self.live.load().keys().map(ToString::to_string).collect()
    }

    /// Agents with a live deployment.
    pub fn live_count(&self) -> usize {
        self.live.load().len()
    }

    /// Marks the start-up load as done; `/readyz` answers 200 from then on.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.ready_signal.send_replace(true);
    }

    /// Whether the start-up load is done.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until the start-up load is done (at once when it is).
    pub async fn wait_ready(&self) {
        if self.is_ready() {
            return;
        }
        let mut ready = self.ready_signal.subscribe();
        // The sender lives as long as `self`, so this only ends when ready.
        let _ = ready.wait_for(|r| *r).await;
    }
}
