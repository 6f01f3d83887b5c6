//! Push deliveries of ended runs, and the signing secrets that sign them.

use gust_model::{DeliveryRecord, PushSecrets};

use crate::{Backend, Store, StoreError, blocking, detached};

impl Store {
    /// Up to `limit` pending deliveries due by `now`, oldest first, leaving out those in
    /// `busy` (the caller's own in flight, which SQLite would answer again). With PostgreSQL
    /// each is claimed until `claimed_until`, so other hosts leave it alone until then: ask
    /// only for what can start now, and claim for as long as an attempt may take. The caller
    /// keeps the claim's end to give it back ([`Store::release_delivery`]).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn due_deliveries(
        &self,
        now: i64,
        limit: usize,
        claimed_until: i64,
        busy: Vec<String>,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.due_deliveries(now, limit, &busy)).await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.due_deliveries(now, limit, claimed_until, &busy).await
                })
                .await
            }
        }
    }

    /// Gives back this host's claim on the delivery of `run_id` (PostgreSQL), whose attempt
    /// was cut before it ended: it is due again for every host. `claimed_until` is the
    /// claim's end given to [`Store::due_deliveries`]: a claim another host has taken since
    /// is left alone. SQLite claims nothing.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn release_delivery(
        &self,
        run_id: String,
        claimed_until: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.release_delivery(&run_id, claimed_until).await
                })
                .await
            }
        }
    }

    /// The earliest `next_attempt_at` of any pending delivery.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.next_delivery_at()).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.next_delivery_at().await }).await
            }
        }
    }

    /// The agent's push signing secrets, if it has any.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn push_secrets(&self, agent: &str) -> Result<Option<PushSecrets>, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.push_secrets(&agent)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.push_secrets(&agent).await }).await
            }
        }
    }

    /// Gives the agent `secret` as its first signing secret, unless it has one already
    /// (another host may have made it a moment ago: that one was shown, and must keep
    /// signing). Answers whether `secret` is now the agent's.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn first_push_secret(&self, agent: &str, secret: &str) -> Result<bool, StoreError> {
        let agent = agent.to_owned();
        let secret = secret.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.first_push_secret(&agent, &secret)).await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.first_push_secret(&agent, &secret).await
                })
                .await
            }
        }
    }

    /// Gives the agent a new current secret; the old one (if any) keeps signing until
    /// `previous_until`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown agent.
    pub async fn set_push_secret(
        &self,
        agent: &str,
        secret: &str,
        previous_until: i64,
    ) -> Result<(), StoreError> {
        let agent = agent.to_owned();
        let secret = secret.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.set_push_secret(&agent, &secret, previous_until)
                })
                .await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.set_push_secret(&agent, &secret, previous_until).await
                })
                .await
            }
        }
    }
}
