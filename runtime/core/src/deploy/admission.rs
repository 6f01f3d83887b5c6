//! Admission: how many instances may run at once, server-wide and per agent.
//!
//! A sync call waits a bounded time for room and is refused with 429 `overloaded` past it;
//! a queued run waits in the queue. Each agent has one gate, shared by all its deployments,
//! whose size follows the live deployment's `max_instances` ([`Admission::limit_for`], the
//! one place that size is worked out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_model::AgentConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// Server-wide admission settings.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    /// Instances running at once, server-wide.
    pub max_instances: usize,
    /// A deployment's `max_instances` when it sets none: below the core count, so one agent
    /// cannot occupy every core.
    pub agent_instances: usize,
    /// How long a sync call waits for room before 429 `overloaded`.
    pub sync_wait: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            max_instances: 256,
            agent_instances: cores.saturating_sub(1).max(1),
            sync_wait: Duration::from_secs(2),
        }
    }
}

/// The server's gate and each agent's; see the module docs.
pub struct Admission {
    limits: AdmissionLimits,
    server: Arc<Gate>,
    agents: Mutex<HashMap<String, Arc<Gate>>>,
}

impl Admission {
    /// Gates sized by `limits`.
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            server: Gate::new(limits.max_instances),
            limits,
            agents: Mutex::default(),
        }
    }

    /// How many instances of an agent with `config` may run at once.
    pub(crate) fn limit_for(&self, config: &AgentConfig) -> usize {
        config
            .max_instances
            .map_or(self.limits.agent_instances, |n| n as usize)
    }

    /// The agent's gate, shared by all its deployments (made on first use, at the default
    /// size until a deployment is made live).
    pub(crate) fn gate(&self, agent: &str) -> Arc<Gate> {
        let default = self.limits.agent_instances;
        Arc::clone(
            self.agents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.to_owned())
                .or_insert_with(|| Gate::new(default)),
        )
    }

    /// Sizes `gate` for `config`, the configuration just made live.
    pub(crate) fn resize(&self, gate: &Gate, config: &AgentConfig) {
        gate.set_limit(self.limit_for(config));
    }

    /// Room for one sync call of an agent with `gate`, waiting at most the server's
    /// admission wait.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the agent or the host is full.
    pub(crate) async fn admit_sync(&self, gate: &Gate) -> Result<Admitted, Error> {
        admit(gate, &self.server, Some(self.limits.sync_wait)).await
    }

    /// The server-wide gate (queued runs enter their agent's gate, then this one).
    pub(crate) fn server(&self) -> &Arc<Gate> {
        &self.server
    }

    /// Instances admitted now, server-wide.
    pub fn in_use(&self) -> usize {
        self.server.in_use()
    }
}

/// A resizable bound on instances running at once.
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    limit: Mutex<usize>,
}

impl Gate {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit: Mutex::new(limit),
        })
    }

    /// Changes the bound; instances already in are not affected.
    pub(crate) fn set_limit(&self, limit: usize) {
        let mut current = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        if limit > *current {
            self.permits.add_permits(limit - *current);
        } else if limit < *current {
            // Permits in use now are taken back as they are released.
            let wanted = *current - limit;
            let taken = self.permits.forget_permits(wanted);
            if taken < wanted {
                let permits = Arc::clone(&self.permits);
                tokio::spawn(async move {
                    if let Ok(rest) = permits.acquire_many_owned((wanted - taken) as u32).await {
                        rest.forget();
                    }
                });
            }
        }
        *current = limit;
    }

    /// Waits for room, at most `wait` (`None`: as long as it takes).
    pub(crate) async fn enter(&self, wait: Option<Duration>) -> Option<OwnedSemaphorePermit> {
        let acquire = Arc::clone(&self.permits).acquire_owned();
        match wait {
            Some(wait) => tokio::time::timeout(wait, acquire).await.ok()?.ok(),
            None => acquire.await.ok(),
        }
    }

    pub(crate) fn in_use(&self) -> usize {
        let limit = *self.limit.lock().unwrap_or_else(|e| e.into_inner());
        limit.saturating_sub(self.permits.available_permits())
    }
}

/// The permits of one admitted instance: dropping them makes room.
#[derive(Debug)]
pub struct Admitted {
    _agent: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
}

impl Admitted {
    pub(crate) fn new(agent: OwnedSemaphorePermit, server: OwnedSemaphorePermit) -> Self {
        Self {
            _agent: agent,
            _server: server,
        }
    }
}

/// Enters the agent's gate, then the server's, each within `wait`.
///
/// # Errors
/// [`Error::Overloaded`] when there is no room within `wait`.
pub(crate) async fn admit(
    agent: &Gate,
    server: &Gate,
    wait: Option<Duration>,
) -> Result<Admitted, Error> {
    let overloaded = |what: &str| Error::Overloaded {
        message: format!("{what} is running as many instances as it may; retry shortly"),
        retry_after: Some(Duration::from_secs(1)),
    };
    let agent_permit = agent
        .enter(wait)
        .await
        .ok_or_else(|| overloaded("this agent"))?;
    let server_permit = server
        .enter(wait)
        .await
        .ok_or_else(|| overloaded("the host"))?;
    Ok(Admitted {
        _agent: agent_permit,
        _server: server_permit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_waits_refuse_and_resizing_takes_effect() {
        let agent = Gate::new(1);
        let server = Gate::new(10);
        let first = admit(&agent, &server, Some(Duration::from_millis(10)))
            .await
            .unwrap();
        let refused = admit(&agent, &server, Some(Duration::from_millis(10)))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), "overloaded");
        assert_eq!((agent.in_use(), server.in_use()), (1, 1));
        agent.set_limit(2);
        let second = admit(&agent, &server, Some(Duration::from_millis(10)))
            .await
            .unwrap();
        drop((first, second));
        assert_eq!(server.in_use(), 0);
        agent.set_limit(1);
        let _one = admit(&agent, &server, Some(Duration::from_millis(10)))
            .await
            .unwrap();
        assert!(
            admit(&agent, &server, Some(Duration::from_millis(10)))
                .await
                .is_err(),
            "shrunk back to 1"
        );
    }

    #[tokio::test]
    async fn a_waiting_caller_gets_the_room_that_frees_up() {
        let agent = Gate::new(1);
        let server = Gate::new(1);
        let first = admit(&agent, &server, None).await.unwrap();
        let waiter = tokio::spawn(async move {
            admit(&agent, &server, Some(Duration::from_secs(5)))
                .await
                .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiter.await.unwrap());
    }
}
