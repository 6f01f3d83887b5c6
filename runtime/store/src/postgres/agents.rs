//! Agents, versions and deployments.
//!
//! Numbers are handed out from the agent's row (`next_version`, `next_deployment`), and every
//! transaction that numbers something, or decides from what is live, first locks that row
//! (`FOR NO KEY UPDATE`: the strength of the update that follows, which still lets other
//! transactions insert rows that refer to the agent). Two hosts uploading or deploying the
//! same agent at once are so put one after the other: numbers stay gap-free and unique (a
//! transaction that rolls back takes its number back with it), an upload of bytes another
//! host just uploaded finds that version, and a version cannot become live while it is
//! being deleted.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use gust_model::{AgentConfig, AgentRecord, AgentSummary, DeploymentRecord, VersionRecord};

use super::{Postgres, col, db, exec, notify, num, opt_num, row, rows};
use crate::{Change, DeployKey, DraftBase, RollbackPlan, StoreError, VersionDeletion};

const VERSION_COLUMNS: &str = "v.agent, v.version, v.digest, v.size, v.created_at,
    (SELECT MAX(d.deployed_at) FROM deployments d WHERE d.agent = v.agent AND d.version = v.version)";

fn version_row(row: &Row) -> Result<VersionRecord, StoreError> {
    let size: i64 = col(row, 3)?;
    Ok(VersionRecord {
        agent: col(row, 0)?,
        version: num(row, 1)?,
        digest: col(row, 2)?,
        size: u64::try_from(size).unwrap_or(0),
        created_at: col(row, 4)?,
        last_deployed_at: col(row, 5)?,
    })
}

const DEPLOYMENT_COLUMNS: &str =
    "d.agent, d.deployment, d.version, d.digest, d.config, d.deployed_at, d.rolled_back_at";

fn deployment_row(row: &Row) -> Result<DeploymentRecord, StoreError> {
    Ok(DeploymentRecord {
        agent: col(row, 0)?,
        deployment: num(row, 1)?,
        version: num(row, 2)?,
        digest: col(row, 3)?,
        config: from_json(col(row, 4)?)?,
        deployed_at: col(row, 5)?,
        rolled_back_at: col(row, 6)?,
    })
}

pub(super) fn from_json(text: &str) -> Result<AgentConfig, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Internal(e.into()))
}

fn to_json(config: &AgentConfig) -> Result<String, StoreError> {
    serde_json::to_string(config).map_err(|e| StoreError::Internal(e.into()))
}

async fn query_version<C: GenericClient>(
    c: &C,
    filter: &str,
    params: super::Params<'_>,
) -> Result<Option<VersionRecord>, StoreError> {
    row(
        c,
        &format!("SELECT {VERSION_COLUMNS} FROM versions v WHERE {filter}"),
        params,
    )
    .await?
    .as_ref()
    .map(version_row)
    .transpose()
}

/// Creates the agent with a default draft when it does not exist yet, and locks its row for
/// the rest of the transaction.
async fn ensure_agent<C: GenericClient>(c: &C, agent: &str, now: i64) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT INTO agents (name, created_at, draft) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        &[&agent, &now, &to_json(&AgentConfig::default())?],
    )
    .await?;
    if lock_agent(c, agent).await?.is_none() {
        // Deleted by another host between the two statements.
        return Err(StoreError::Conflict(format!(
            "the agent `{agent}` was deleted meanwhile; try again"
        )));
    }
    Ok(())
}

/// Locks the agent's row to the end of the transaction; answers its live deployment, or
/// `None` when there is no such agent.
async fn lock_agent<C: GenericClient>(
    c: &C,
    agent: &str,
) -> Result<Option<Option<u32>>, StoreError> {
    row(
        c,
        "SELECT live_deployment FROM agents WHERE name = $1 FOR NO KEY UPDATE",
        &[&agent],
    )
    .await?
    .map(|r| opt_num(&r, 0))
    .transpose()
}

/// What a rollback to deployment `to` of `agent`, whose live deployment is `live`, would do.
async fn named_rollback<C: GenericClient>(
    c: &C,
    agent: &str,
    live: u32,
    to: u32,
) -> Result<RollbackPlan, StoreError> {
    let target = row(
        c,
        &format!(
            "SELECT {DEPLOYMENT_COLUMNS},
                EXISTS (SELECT 1 FROM versions v WHERE v.agent = d.agent AND v.version = d.version)
             FROM deployments d WHERE d.agent = $1 AND d.deployment = $2"
        ),
        &[&agent, &i64::from(to)],
    )
    .await?;
    let Some(target) = target else {
        return Ok(RollbackPlan::NoSuchDeployment);
    };
    let exists: bool = col(&target, 7)?;
    let target = deployment_row(&target)?;
    Ok(if to == live {
        RollbackPlan::AlreadyLive(Box::new(target))
    } else if !exists {
        RollbackPlan::VersionDeleted
    } else {
        RollbackPlan::To {
            from: live,
            to: Box::new(target),
        }
    })
}

impl Postgres {
    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentSummary>, StoreError> {
        let client = self.client().await?;
        let found = rows(
            &client,
            "SELECT a.name, a.created_at, a.live_deployment, d.version,
                (SELECT COUNT(*) FROM versions v WHERE v.agent = a.name),
                d.deployed_at, d.config, a.draft,
                (SELECT MAX(v.version) FROM versions v WHERE v.agent = a.name)
             FROM agents a
             LEFT JOIN deployments d ON d.agent = a.name AND d.deployment = a.live_deployment
             ORDER BY a.name",
            &[],
        )
        .await?;
        found
            .iter()
            .map(|row| {
                let deployment = opt_num(row, 2)?;
                let version = opt_num(row, 3)?;
                let live = col::<Option<&str>>(row, 6)?.map(from_json).transpose()?;
                let draft = from_json(col(row, 7)?)?;
                Ok(AgentSummary {
                    name: col(row, 0)?,
                    created_at: col(row, 1)?,
                    live: deployment.zip(version),
                    versions: num(row, 4)?,
                    deployed_at: col(row, 5)?,
                    mode: live.as_ref().map(|c| c.mode),
                    draft_pending: live.is_some_and(|live| live != draft),
                    newest_version: opt_num(row, 8)?,
                })
            })
            .collect()
    }

    pub(crate) async fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the three reads, so the history is consistent with the agent row.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let Some(agent) = row(
            &tx,
            "SELECT created_at, draft, live_deployment FROM agents WHERE name = $1",
            &[&name],
        )
        .await?
        else {
            return Ok(None);
        };
        let created_at: i64 = col(&agent, 0)?;
        let draft = from_json(col(&agent, 1)?)?;
        let live = opt_num(&agent, 2)?;
        let versions = rows(
            &tx,
            &format!(
                "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.agent = $1 ORDER BY v.version"
            ),
            &[&name],
        )
        .await?
        .iter()
        .map(version_row)
        .collect::<Result<Vec<_>, _>>()?;
        let deployments = rows(
            &tx,
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d WHERE d.agent = $1 ORDER BY d.deployment"
            ),
            &[&name],
        )
        .await?
        .iter()
        .map(deployment_row)
        .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await.map_err(db)?;
        let live = live.and_then(|n| deployments.iter().find(|d| d.deployment == n).cloned());
        Ok(Some(AgentRecord {
            name: name.to_owned(),
            created_at,
            draft,
            live,
            versions,
            deployments,
        }))
    }

    pub(crate) async fn version(
        &self,
        agent: &str,
        version: u32,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let client = self.client().await?;
        query_version(
            &client,
            "v.agent = $1 AND v.version = $2",
            &[&agent, &i64::from(version)],
        )
        .await
    }

    pub(crate) async fn latest_version(
        &self,
        agent: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let client = self.client().await?;
        query_version(
            &client,
            "v.agent = $1 ORDER BY v.version DESC LIMIT 1",
            &[&agent],
        )
        .await
    }

    pub(crate) async fn version_by_digest(
        &self,
        agent: &str,
        digest: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let client = self.client().await?;
        query_version(
            &client,
            "v.agent = $1 AND v.digest = $2",
            &[&agent, &digest],
        )
        .await
    }

    pub(crate) async fn add_version(
        &self,
        agent: &str,
        digest: &str,
        size: u64,
        now: i64,
    ) -> Result<(VersionRecord, bool), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        ensure_agent(&tx, agent, now).await?;
        // Under the agent's lock: an upload of the same bytes by another host has committed
        // (and is found here) or waits for this one.
        if let Some(existing) =
            query_version(&tx, "v.agent = $1 AND v.digest = $2", &[&agent, &digest]).await?
        {
            return Ok((existing, false));
        }
        let numbered = row(
            &tx,
            "UPDATE agents SET next_version = next_version + 1 WHERE name = $1 RETURNING next_version - 1",
            &[&agent],
        )
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("the agent `{agent}` was deleted meanwhile")))?;
        let version = num(&numbered, 0)?;
        let size_column = i64::try_from(size).unwrap_or(i64::MAX);
        exec(
            &tx,
            "INSERT INTO versions (agent, version, digest, size, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&agent, &i64::from(version), &digest, &size_column, &now],
        )
        .await?;
        notify(
            &tx,
            &Change::VersionAdded {
                agent: agent.to_owned(),
                version,
                digest: digest.to_owned(),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok((
            VersionRecord {
                agent: agent.to_owned(),
                version,
                digest: digest.to_owned(),
                size,
                created_at: now,
                last_deployed_at: None,
            },
            true,
        ))
    }

    pub(crate) async fn draft(&self, agent: &str) -> Result<Option<AgentConfig>, StoreError> {
        let client = self.client().await?;
        row(
            &client,
            "SELECT draft FROM agents WHERE name = $1",
            &[&agent],
        )
        .await?
        .map(|r| from_json(col(&r, 0)?))
        .transpose()
    }

    pub(crate) async fn put_draft(
        &self,
        agent: &str,
        draft: &AgentConfig,
        now: i64,
        base: &DraftBase,
    ) -> Result<bool, StoreError> {
        let json = to_json(draft)?;
        let mut client = self.client().await?;
        match base {
            // One statement each: creating the agent and replacing its draft cannot
            // interleave with another host's.
            DraftBase::Any => {
                exec(
                    &client,
                    "INSERT INTO agents (name, created_at, draft) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET draft = excluded.draft",
                    &[&agent, &now, &json],
                )
                .await?;
                Ok(true)
            }
            DraftBase::Absent => Ok(exec(
                &client,
                "INSERT INTO agents (name, created_at, draft) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
                &[&agent, &now, &json],
            )
            .await?
                == 1),
            DraftBase::Present | DraftBase::OneOf(_) | DraftBase::Exactly(_) => {
                // Compared here, not in SQL (a tag is a digest of the parsed draft): the row
                // is locked while it is, so no other host writes between the check and the
                // update.
                let tx = client.transaction().await.map_err(db)?;
                let current = row(
                    &tx,
                    "SELECT draft FROM agents WHERE name = $1 FOR NO KEY UPDATE",
                    &[&agent],
                )
                .await?
                .map(|r| from_json(col(&r, 0)?))
                .transpose()?;
                if !base.matches(current.as_ref()) {
                    return Ok(false);
                }
                exec(
                    &tx,
                    "UPDATE agents SET draft = $2 WHERE name = $1",
                    &[&agent, &json],
                )
                .await?;
                tx.commit().await.map_err(db)?;
                Ok(true)
            }
        }
    }

    pub(crate) async fn deploy(
        &self,
        agent: &str,
        version: u32,
        config: &AgentConfig,
        now: i64,
        key: Option<&DeployKey>,
    ) -> Result<DeploymentRecord, StoreError> {
        let json = to_json(config)?;
        let (key, hash) = (key.map(|k| &k.key), key.map(|k| &k.request_hash));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // The agent's lock first: deploys of one agent are numbered one after the other, and
        // the version cannot be deleted under this one.
        lock_agent(&tx, agent).await?;
        let Some(v) = query_version(
            &tx,
            "v.agent = $1 AND v.version = $2",
            &[&agent, &i64::from(version)],
        )
        .await?
        else {
            return Err(StoreError::NotFound(format!(
                "agent `{agent}` has no version {version}"
            )));
        };
        let numbered = row(
            &tx,
            "UPDATE agents SET next_deployment = next_deployment + 1 WHERE name = $1 RETURNING next_deployment - 1",
            &[&agent],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no agent named `{agent}`")))?;
        let number = num(&numbered, 0)?;
        exec(
            &tx,
            "INSERT INTO deployments (agent, deployment, version, digest, config, deployed_at, idempotency_key, request_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&agent, &i64::from(number), &i64::from(version), &v.digest, &json, &now, &key, &hash],
        )
        .await?;
        exec(
            &tx,
            "UPDATE agents SET live_deployment = $2 WHERE name = $1",
            &[&agent, &i64::from(number)],
        )
        .await?;
        notify(
            &tx,
            &Change::Deployments {
                agent: agent.to_owned(),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(DeploymentRecord {
            agent: agent.to_owned(),
            deployment: number,
            version,
            digest: v.digest,
            config: config.clone(),
            deployed_at: now,
            rolled_back_at: None,
        })
    }

    pub(crate) async fn deployment(
        &self,
        agent: &str,
        number: u32,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        let client = self.client().await?;
        row(
            &client,
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d WHERE d.agent = $1 AND d.deployment = $2"
            ),
            &[&agent, &i64::from(number)],
        )
        .await?
        .as_ref()
        .map(deployment_row)
        .transpose()
    }

    pub(crate) async fn deployment_by_key(
        &self,
        agent: &str,
        key: &str,
        since: i64,
    ) -> Result<Option<(DeploymentRecord, String)>, StoreError> {
        let client = self.client().await?;
        let found = row(
            &client,
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS}, d.request_hash FROM deployments d
                 WHERE d.agent = $1 AND d.idempotency_key = $2 AND d.deployed_at >= $3
                 ORDER BY d.deployment DESC LIMIT 1"
            ),
            &[&agent, &key, &since],
        )
        .await?;
        found
            .map(|r| Ok((deployment_row(&r)?, col(&r, 7)?)))
            .transpose()
    }

    pub(crate) async fn plan_rollback(
        &self,
        agent: &str,
        to: Option<u32>,
    ) -> Result<RollbackPlan, StoreError> {
        let client = self.client().await?;
        let Some(live) = row(
            &client,
            "SELECT live_deployment FROM agents WHERE name = $1",
            &[&agent],
        )
        .await?
        else {
            return Ok(RollbackPlan::NoAgent);
        };
        let Some(live) = opt_num(&live, 0)? else {
            return Ok(RollbackPlan::NothingToRollBackTo);
        };
        if let Some(to) = to {
            return named_rollback(&client, agent, live, to).await;
        }
        // The newest earlier deployment that was not itself rolled back and whose version
        // still exists: repeated rollbacks walk further back. (`rollback` checks that `live`
        // is still live when the plan is carried out.)
        let target = row(
            &client,
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d
                 WHERE d.agent = $1 AND d.deployment < $2 AND d.rolled_back_at IS NULL
                   AND EXISTS (SELECT 1 FROM versions v WHERE v.agent = d.agent AND v.version = d.version)
                 ORDER BY d.deployment DESC LIMIT 1"
            ),
            &[&agent, &i64::from(live)],
        )
        .await?;
        Ok(match target {
            Some(to) => RollbackPlan::To {
                from: live,
                to: Box::new(deployment_row(&to)?),
            },
            None => RollbackPlan::NothingToRollBackTo,
        })
    }

    pub(crate) async fn rollback(
        &self,
        agent: &str,
        from: u32,
        to: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Compare and set: another host's deploy or rollback since the plan wins.
        let changed = exec(
            &tx,
            "UPDATE agents SET live_deployment = $3 WHERE name = $1 AND live_deployment = $2",
            &[&agent, &i64::from(from), &i64::from(to)],
        )
        .await?;
        if changed == 0 {
            return Err(StoreError::Conflict(format!(
                "the live deployment of `{agent}` changed during the rollback; try again"
            )));
        }
        exec(
            &tx,
            "UPDATE deployments SET rolled_back_at = $3 WHERE agent = $1 AND deployment = $2",
            &[&agent, &i64::from(from), &now],
        )
        .await?;
        notify(
            &tx,
            &Change::Deployments {
                agent: agent.to_owned(),
            },
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    pub(crate) async fn live_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let client = self.client().await?;
        rows(
            &client,
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d
                 JOIN agents a ON a.name = d.agent AND a.live_deployment = d.deployment
                 ORDER BY d.agent"
            ),
            &[],
        )
        .await?
        .iter()
        .map(deployment_row)
        .collect()
    }

    pub(crate) async fn delete_version(
        &self,
        agent: &str,
        version: u32,
    ) -> Result<VersionDeletion, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Under the agent's lock no deploy makes this version live meanwhile, and no run is
        // accepted on it (accepting one updates the agent's row too).
        let Some(live) = lock_agent(&tx, agent).await? else {
            return Ok(VersionDeletion::NotFound);
        };
        let Some(v) = query_version(
            &tx,
            "v.agent = $1 AND v.version = $2",
            &[&agent, &i64::from(version)],
        )
        .await?
        else {
            return Ok(VersionDeletion::NotFound);
        };
        if let Some(live) = live {
            let live_version = row(
                &tx,
                "SELECT version FROM deployments WHERE agent = $1 AND deployment = $2",
                &[&agent, &i64::from(live)],
            )
            .await?
            .map(|r| num(&r, 0))
            .transpose()?;
            if live_version == Some(version) {
                return Ok(VersionDeletion::Live);
            }
        }
        let in_use: bool = col(
            &row(
                &tx,
                "SELECT EXISTS (SELECT 1 FROM runs WHERE agent = $1 AND version = $2
                    AND status IN ('queued', 'running'))",
                &[&agent, &i64::from(version)],
            )
            .await?
            .ok_or_else(|| super::internal("EXISTS answered no row".into()))?,
            0,
        )?;
        if in_use {
            return Ok(VersionDeletion::InUse);
        }
        exec(
            &tx,
            "DELETE FROM versions WHERE agent = $1 AND version = $2",
            &[&agent, &i64::from(version)],
        )
        .await?;
        let orphaned = super::keys::drop_unreferenced(&tx, vec![v.digest])
            .await?
            .pop();
        tx.commit().await.map_err(db)?;
        Ok(VersionDeletion::Deleted { orphaned })
    }

    pub(crate) async fn delete_agent(
        &self,
        agent: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let digests: Vec<String> = rows(
            &tx,
            "SELECT digest FROM versions WHERE agent = $1",
            &[&agent],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_, _>>()?;
        let deleted = exec(&tx, "DELETE FROM agents WHERE name = $1", &[&agent]).await?;
        if deleted == 0 {
            return Ok(None);
        }
        let orphaned = super::keys::drop_unreferenced(&tx, digests).await?;
        let agent = agent.to_owned();
        notify(
            &tx,
            &Change::Keys {
                agent: agent.clone(),
            },
        )
        .await?;
        notify(&tx, &Change::Deployments { agent }).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(orphaned))
    }

    pub(crate) async fn referenced_digests(
        &self,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let client = self.client().await?;
        rows(&client, "SELECT DISTINCT digest FROM versions", &[])
            .await?
            .iter()
            .map(|r| col(r, 0))
            .collect()
    }
}
