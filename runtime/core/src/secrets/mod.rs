//! Push signing secrets: made when an agent first turns push on (shown once), rotated on
//! request with a 24 h overlap, and read by the pusher to sign each attempt
//! ([`signature`], the Standard Webhooks scheme).

pub(crate) mod signature;

use std::sync::Arc;

use gust_store::Store;

use crate::clock;
use crate::error::Error;
use crate::locks::AgentLocks;

/// How long a rotated-out push secret keeps signing.
const SECRET_OVERLAP_MS: i64 = 24 * 3600 * 1000;

/// See the module docs.
pub struct PushSecrets {
    store: Store,
    locks: Arc<AgentLocks>,
}

impl PushSecrets {
    pub(crate) fn new(store: Store, locks: Arc<AgentLocks>) -> Self {
        Self { store, locks }
    }

    /// Gives `agent` its first signing secret, unless it has one. Returns the secret made,
    /// to be shown this once; `None` when the agent had one (made by an earlier write, or a
    /// moment ago by another host: that one was shown, and keeps signing).
    ///
    /// # Errors
    /// When the store fails.
    pub(crate) async fn first(&self, agent: &str) -> Result<Option<String>, Error> {
        let secret = signature::new_secret();
        Ok(self
            .store
            .first_push_secret(agent, &secret)
            .await?
            .then_some(secret))
    }

    /// Gives the agent a new push signing secret at once (returned here, never again); for
    /// 24 h pushes carry signatures by both the new and the old secret.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn rotate(&self, agent: &str) -> Result<String, Error> {
        let _guard = self.locks.lock(agent).await;
        let secret = signature::new_secret();
        let overlap_until = clock::now_ms() + SECRET_OVERLAP_MS;
        self.store
            .set_push_secret(agent, &secret, overlap_until)
            .await?;
        tracing::info!(agent, "rotated the push signing secret");
        Ok(secret)
    }

    /// The secrets that sign now: the current one, and the previous one during the 24 h
    /// after a rotation.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the agent has no secret.
    pub(crate) async fn signing(&self, agent: &str) -> Result<Vec<String>, Error> {
        let secrets = self.store.push_secrets(agent).await?.ok_or_else(|| {
            Error::Conflict(format!("agent `{agent}` has no push signing secret"))
        })?;
        let now = clock::now_ms();
        let mut all = vec![secrets.current];
        if let Some((previous, until)) = secrets.previous
            && until > now
        {
            all.push(previous);
        }
        Ok(all)
    }
}
