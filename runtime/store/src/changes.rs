//! What other hosts on the same database changed: the notifications a host reacts to so its
//! memory (the registry of live deployments, the key ring, the run queue) follows theirs.
//!
//! Only a shared backend (PostgreSQL) has them: see [`crate::Store::changes`]. A change is
//! announced in the transaction that makes it, so it is heard only once it is committed, and
//! every host hears its own changes too (it may ignore them).

/// One change, as another host (or this one) committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A version was uploaded.
    VersionAdded {
        /// The agent.
        agent: String,
        /// Its number.
        version: u32,
        /// Its component's digest: the bytes are in the store ([`crate::Store::component`]).
        digest: String,
    },
    /// What is live for the agent changed: a deploy, a rollback, or the agent was deleted.
    Deployments {
        /// The agent.
        agent: String,
    },
    /// An invoke key of the agent was created or deleted (or all were, with the agent).
    Keys {
        /// The agent.
        agent: String,
    },
    /// A host setting changed ([`crate::Store::set_setting`]).
    Setting {
        /// Its name.
        name: String,
    },
    /// A run is waiting in the queue: accepted, or queued again after its host stopped.
    RunQueued {
        /// The agent.
        agent: String,
        /// The run.
        id: String,
    },
    /// A run was cancelled.
    RunCancelled {
        /// The agent.
        agent: String,
        /// The run.
        id: String,
        /// It was running: the host running it must stop it.
        was_running: bool,
    },
    /// A run ended: finished, expired, or failed as lost.
    RunEnded {
        /// The agent.
        agent: String,
        /// The run.
        id: String,
    },
    /// The listener (re)connected: changes made while it was away were not heard, so
    /// whatever a subscriber keeps should be read again. A subscriber that falls so far
    /// behind that changes are dropped for it gets `RecvError::Lagged` instead: it means the
    /// same.
    Resync,
}
