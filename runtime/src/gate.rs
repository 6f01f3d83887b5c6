//! Admission: how many instances may run at once, server-wide and per agent.
//!
//! A sync call waits a bounded time for room and is refused with 429 `overloaded` past it;
//! a queued run waits in the queue. Each agent has one gate, shared by all its deployments,
//! whose size follows the live deployment's `max_instances`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

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
pub(crate) struct Admitted {
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
