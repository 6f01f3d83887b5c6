//! Invoke keys, push signing secrets, host settings, and component bytes: the small records,
//! each written in one statement (or under a lock) so concurrent hosts cannot interleave.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use gust_model::{KeyRecord, PushSecrets};

use super::{Postgres, col, db, exec, notify, row, rows};
use crate::{Change, StoreError};

const KEY_COLUMNS: &str = "id, agent, name, hash, created_at, last_used_at, rate_limit";

fn key_row(row: &Row) -> Result<KeyRecord, StoreError> {
    let rate: Option<&str> = col(row, 6)?;
    Ok(KeyRecord {
        id: col(row, 0)?,
        agent: col(row, 1)?,
        name: col(row, 2)?,
        hash: col(row, 3)?,
        created_at: col(row, 4)?,
        last_used_at: col(row, 5)?,
        rate_limit: rate.and_then(|r| serde_json::from_str(r).ok()),
    })
}

/// The advisory lock space of component digests (the second key is the digest's hash).
/// Storing bytes and dropping unreferenced ones take it, so a host storing the bytes of a
/// digest that another host is dropping either finds them gone and stores them again, or
/// makes the other host see the version that now uses them.
const COMPONENT_LOCK: i32 = 0x636f_6d70;

async fn lock_component<C: GenericClient>(c: &C, digest: &str) -> Result<(), StoreError> {
    exec(
        c,
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&COMPONENT_LOCK, &digest],
    )
    .await
    .map(drop)
}

/// Of `candidates`, the digests no version of any agent uses any more; their component
/// bytes are deleted in the same transaction.
pub(super) async fn drop_unreferenced<C: GenericClient>(
    c: &C,
    mut candidates: Vec<String>,
) -> Result<Vec<String>, StoreError> {
    // In one order, so two hosts dropping overlapping digests cannot deadlock on the locks.
    candidates.sort();
    candidates.dedup();
    let mut out = Vec::new();
    for digest in candidates {
        lock_component(c, &digest).await?;
        // Read after the lock: a version another host added and committed meanwhile is seen.
        let used = row(
            c,
            "SELECT EXISTS (SELECT 1 FROM versions WHERE digest = $1)",
            &[&digest],
        )
        .await?
        .map(|r| col::<bool>(&r, 0))
        .transpose()?
        .unwrap_or(false);
        if !used {
            exec(c, "DELETE FROM components WHERE digest = $1", &[&digest]).await?;
            out.push(digest);
        }
    }
    Ok(out)
}

impl Postgres {
    pub(crate) async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let rate = key
            .rate_limit
            .map(|r| serde_json::to_string(&r))
            .transpose()
            .map_err(|e| StoreError::Internal(e.into()))?;
        let no_agent = || StoreError::NotFound(format!("no agent named `{}`", key.agent));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let statement = tx
            .prepare_cached(
                "INSERT INTO keys (id, agent, name, hash, created_at, rate_limit)
                 SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM agents WHERE name = $2)",
            )
            .await
            .map_err(db)?;
        let inserted = tx
            .execute(
                &statement,
                &[
                    &key.id,
                    &key.agent,
                    &key.name,
                    &key.hash,
                    &key.created_at,
                    &rate,
                ],
            )
            .await;
        match inserted {
            Ok(0) => return Err(no_agent()),
            Ok(_) => {}
            // The agent was deleted by another host after the check.
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                return Err(no_agent());
            }
            Err(e) => return Err(db(e)),
        }
        notify(
            &tx,
            &Change::Keys {
                agent: key.agent.clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    pub(crate) async fn list_keys(&self, agent: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.client().await?;
        rows(
            &client,
            &format!("SELECT {KEY_COLUMNS} FROM keys WHERE agent = $1 ORDER BY created_at, id"),
            &[&agent],
        )
        .await?
        .iter()
        .map(key_row)
        .collect()
    }

    pub(crate) async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.client().await?;
        rows(&client, &format!("SELECT {KEY_COLUMNS} FROM keys"), &[])
            .await?
            .iter()
            .map(key_row)
            .collect()
    }

    pub(crate) async fn delete_key(&self, agent: &str, id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let deleted = exec(
            &tx,
            "DELETE FROM keys WHERE agent = $1 AND id = $2",
            &[&agent, &id],
        )
        .await?;
        if deleted > 0 {
            notify(
                &tx,
                &Change::Keys {
                    agent: agent.to_owned(),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(deleted > 0)
    }

    /// In one statement. Each key keeps the latest time any host reported: a host that
    /// flushes late does not move a key's last use back.
    pub(crate) async fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let mut latest: HashMap<&str, i64> = HashMap::new();
        for (id, at) in used {
            let entry = latest.entry(id).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<&str>, Vec<i64>) = latest.into_iter().unzip();
        let client = self.client().await?;
        exec(
            &client,
            "UPDATE keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
             FROM unnest($1::text[], $2::bigint[]) AS u(id, at) WHERE k.id = u.id",
            &[&ids, &times],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn push_secrets(
        &self,
        agent: &str,
    ) -> Result<Option<PushSecrets>, StoreError> {
        let client = self.client().await?;
        let Some(found) = row(
            &client,
            "SELECT push_secret, push_secret_prev, push_secret_prev_until FROM agents WHERE name = $1",
            &[&agent],
        )
        .await?
        else {
            return Ok(None);
        };
        let current: Option<String> = col(&found, 0)?;
        let previous: Option<String> = col(&found, 1)?;
        let until: Option<i64> = col(&found, 2)?;
        Ok(current.map(|current| PushSecrets {
            current,
            previous: previous.zip(until),
        }))
    }

    /// One statement: the old secret that becomes the previous one is the one current at
    /// the update, whichever host set it.
    pub(crate) async fn set_push_secret(
        &self,
        agent: &str,
        secret: &str,
        previous_until: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let changed = exec(
            &client,
            "UPDATE agents SET push_secret_prev = push_secret,
                push_secret_prev_until = CASE WHEN push_secret IS NULL THEN NULL ELSE $3::BIGINT END,
                push_secret = $2
             WHERE name = $1",
            &[&agent, &secret, &previous_until],
        )
        .await?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("no agent named `{agent}`")));
        }
        Ok(())
    }

    pub(crate) async fn first_push_secret(
        &self,
        agent: &str,
        secret: &str,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // One statement: of two hosts making the first secret at once, one sets it.
        let changed = exec(
            &client,
            "UPDATE agents SET push_secret = $2 WHERE name = $1 AND push_secret IS NULL",
            &[&agent, &secret],
        )
        .await?;
        Ok(changed == 1)
    }

    pub(crate) async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        row(
            &client,
            "SELECT value FROM settings WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| col(&r, 0))
        .transpose()
    }

    /// The first host to store a value wins; the others get the winner's. A host inserting
    /// the same name at the same time waits for the first one's commit, then finds its row.
    pub(crate) async fn put_setting_if_absent(
        &self,
        name: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let inserted = exec(
            &tx,
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &value],
        )
        .await?;
        let stored = if inserted > 0 {
            notify(
                &tx,
                &Change::Setting {
                    name: name.to_owned(),
                },
            )
            .await?;
            value.to_owned()
        } else {
            let found = row(&tx, "SELECT value FROM settings WHERE name = $1", &[&name])
                .await?
                .ok_or_else(|| {
                    StoreError::Conflict(format!("the setting `{name}` was deleted meanwhile"))
                })?;
            col(&found, 0)?
        };
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    pub(crate) async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        exec(
            &tx,
            "INSERT INTO settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&name, &value],
        )
        .await?;
        notify(
            &tx,
            &Change::Setting {
                name: name.to_owned(),
            },
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    /// Stores the bytes unless they are there already (then they are not sent again).
    pub(crate) async fn put_component(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        lock_component(&tx, digest).await?;
        if !self.has(&tx, digest).await? {
            exec(
                &tx,
                "INSERT INTO components (digest, bytes) VALUES ($1, $2)",
                &[&digest, &bytes],
            )
            .await?;
        }
        tx.commit().await.map_err(db)
    }

    pub(crate) async fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        row(
            &client,
            "SELECT bytes FROM components WHERE digest = $1",
            &[&digest],
        )
        .await?
        .map(|r| col(&r, 0))
        .transpose()
    }

    pub(crate) async fn has_component(&self, digest: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        self.has(&client, digest).await
    }

    async fn has<C: GenericClient>(&self, c: &C, digest: &str) -> Result<bool, StoreError> {
        let found = row(
            c,
            "SELECT EXISTS (SELECT 1 FROM components WHERE digest = $1)",
            &[&digest],
        )
        .await?;
        found.map_or(Ok(false), |r| col(&r, 0))
    }
}
