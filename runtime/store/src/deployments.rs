//! Deployments: deploying, rolling back, what is live.

use gust_model::{AgentConfig, DeploymentRecord};

use crate::{Backend, DeployKey, RollbackPlan, Store, StoreError, blocking, detached};

impl Store {
    /// Makes a new deployment of `version` with `config` and sets it live, in one
    /// transaction; `key` is kept with it, for replays (see [`Store::deployment_by_key`]).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the version does not exist.
    pub async fn deploy(
        &self,
        agent: &str,
        version: u32,
        config: &AgentConfig,
        now: i64,
        key: Option<DeployKey>,
    ) -> Result<DeploymentRecord, StoreError> {
        let agent = agent.to_owned();
        let config = config.clone();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.deploy(&agent, version, &config, now, key.as_ref())
                })
                .await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.deploy(&agent, version, &config, now, key.as_ref()).await
                })
                .await
            }
        }
    }

    /// The newest deployment of `agent` made with the idempotency `key` at or after `since`,
    /// with the hash of the request that made it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn deployment_by_key(
        &self,
        agent: &str,
        key: &str,
        since: i64,
    ) -> Result<Option<(DeploymentRecord, String)>, StoreError> {
        let (agent, key) = (agent.to_owned(), key.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.deployment_by_key(&agent, &key, since)).await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.deployment_by_key(&agent, &key, since).await
                })
                .await
            }
        }
    }

    /// One deployment of an agent, live or not.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn deployment(
        &self,
        agent: &str,
        number: u32,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.deployment(&agent, number)).await,
            Backend::Postgres(db) => {
                detached(
                    db,
                    move |db| async move { db.deployment(&agent, number).await },
                )
                .await
            }
        }
    }

    /// Works out what a rollback would do, without changing anything: to deployment `to`
    /// when it is named, else to the newest earlier deployment that was not itself rolled
    /// back (so repeated unnamed rollbacks walk further back).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn plan_rollback(
        &self,
        agent: &str,
        to: Option<u32>,
    ) -> Result<RollbackPlan, StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.plan_rollback(&agent, to)).await,
            Backend::Postgres(db) => {
                detached(
                    db,
                    move |db| async move { db.plan_rollback(&agent, to).await },
                )
                .await
            }
        }
    }

    /// Carries out a plan: marks `from` rolled back and makes `to` live, provided `from` is
    /// still the live deployment.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the live deployment changed since the plan.
    pub async fn rollback(
        &self,
        agent: &str,
        from: u32,
        to: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let agent = agent.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.rollback(&agent, from, to, now)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.rollback(&agent, from, to, now).await
                })
                .await
            }
        }
    }

    /// Every live deployment: what the registry is rebuilt from at start.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn live_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.live_deployments()).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.live_deployments().await }).await
            }
        }
    }
}
