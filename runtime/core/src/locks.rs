//! One control-plane lock per agent: every change to an agent — its versions, draft,
//! deployments, keys, push secret — holds it, so two changes of one agent never interleave
//! while changes of different agents run side by side. Never held across a compile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// See the module docs.
#[derive(Default)]
pub(crate) struct AgentLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AgentLocks {
    /// The agent's lock. Entries are never removed (not even when the agent is deleted): a
    /// waiter may still hold the old one, and a second mutex for the same name would let two
    /// changes run at once.
    pub(crate) async fn lock(&self, agent: &str) -> OwnedMutexGuard<()> {
        let lock = Arc::clone(
            self.locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.to_owned())
                .or_default(),
        );
        lock.lock_owned().await
    }
}
