//! The embedded backend: one SQLite file in the data folder, in WAL mode with
//! `synchronous=FULL`, so a commit survives kill -9 and power loss.
//!
//! One connection behind a mutex serves every call: the control plane is not a hot path, and
//! a single writer is what SQLite wants anyway.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use gust_model::{
    AgentConfig, AgentRecord, AgentSummary, DeliveryRecord, DeploymentRecord, KeyRecord,
    PushSecrets, RunRecord, RunStatus, VersionRecord,
};

use crate::queue::{Recovered, RunWrite, WriteOutcome};
use crate::{DeployKey, DraftBase, RollbackPlan, StoreError, VersionDeletion};

mod runs;
mod settings;

/// Schema migrations, applied in order; the database's `user_version` is how many have run.
/// Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: agents, versions, deployments.
    "CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        draft TEXT NOT NULL,
        live_deployment INTEGER,
        next_version INTEGER NOT NULL DEFAULT 1,
        next_deployment INTEGER NOT NULL DEFAULT 1
    ) STRICT;
    CREATE TABLE versions (
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (agent, version),
        UNIQUE (agent, digest)
    ) STRICT;
    CREATE INDEX versions_digest ON versions(digest);
    CREATE TABLE deployments (
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        deployment INTEGER NOT NULL,
        version INTEGER NOT NULL,
        digest TEXT NOT NULL,
        config TEXT NOT NULL,
        deployed_at INTEGER NOT NULL,
        rolled_back_at INTEGER,
        PRIMARY KEY (agent, deployment)
    ) STRICT;",
    // 2: queued runs, push deliveries and their signing secrets.
    runs::MIGRATION,
    // 3: per-agent invoke keys (their hashes).
    "CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        rate_limit TEXT
    ) STRICT;
    CREATE INDEX keys_agent ON keys(agent);",
    // 4: the outgoing HTTP requests a run made.
    "ALTER TABLE runs ADD COLUMN outbound TEXT;",
    // 5: deploys made with an `Idempotency-Key`.
    "ALTER TABLE deployments ADD COLUMN idempotency_key TEXT;
    ALTER TABLE deployments ADD COLUMN request_hash TEXT;
    CREATE INDEX deployments_idempotency ON deployments(agent, idempotency_key)
        WHERE idempotency_key IS NOT NULL;",
    // 6: the bytes each run keeps (input, output, logs, outgoing requests), and each agent's
    // total, for the per-agent bound on stored runs.
    "ALTER TABLE runs ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN run_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE runs SET stored_bytes = length(input) + coalesce(length(output), 0)
        + coalesce(length(logs), 0) + coalesce(length(outbound), 0);
    UPDATE agents SET run_bytes =
        (SELECT coalesce(sum(stored_bytes), 0) FROM runs WHERE runs.agent = agents.name);",
    // 7: the trace (W3C Trace Context) of the request that submitted a run.
    "ALTER TABLE runs ADD COLUMN traceparent TEXT;
    ALTER TABLE runs ADD COLUMN tracestate TEXT;",
    // 8: host settings (the admin token's hash), as PostgreSQL keeps them.
    "CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;",
];

/// The SQLite backend: blocking calls, run on the blocking pool by [`crate::Store`].
#[derive(Debug)]
pub(crate) struct Sqlite {
    conn: Mutex<Connection>,
    /// A second connection for reads of runs (polls, listings, due deliveries): in WAL mode
    /// they proceed while the run queue's writer commits on `conn`.
    reader: Mutex<Connection>,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// # Errors
    /// When the file cannot be opened, or was written by a newer gust.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .context("configuring the database")?;
        migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        let reader = Connection::open(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        reader
            .execute_batch("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
            .context("configuring the database")?;
        Ok(Self {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock leaves no half-done transaction behind (it rolls back
        // on drop), so the connection is still good to use.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn)
    }

    fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(internal)?;
            let out = f(&tx)?;
            tx.commit().map_err(internal)?;
            Ok(out)
        })
    }
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if applied > MIGRATIONS.len() {
        anyhow::bail!(
            "the database has schema version {applied}, but this gust knows only up to {}: it was written by a newer gust",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("applying schema migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.into())
}

fn to_json(config: &AgentConfig) -> Result<String, StoreError> {
    serde_json::to_string(config).map_err(|e| StoreError::Internal(e.into()))
}

fn from_json(text: &str) -> rusqlite::Result<AgentConfig> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

const VERSION_COLUMNS: &str = "v.agent, v.version, v.digest, v.size, v.created_at,
    (SELECT MAX(d.deployed_at) FROM deployments d WHERE d.agent = v.agent AND d.version = v.version)";

fn version_row(row: &Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        agent: row.get(0)?,
        version: row.get(1)?,
        digest: row.get(2)?,
        size: row.get(3)?,
        created_at: row.get(4)?,
        last_deployed_at: row.get(5)?,
    })
}

const DEPLOYMENT_COLUMNS: &str =
    "d.agent, d.deployment, d.version, d.digest, d.config, d.deployed_at, d.rolled_back_at";

const KEY_COLUMNS: &str = "id, agent, name, hash, created_at, last_used_at, rate_limit";

fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let rate: Option<String> = row.get(6)?;
    Ok(KeyRecord {
        id: row.get(0)?,
        agent: row.get(1)?,
        name: row.get(2)?,
        hash: row.get(3)?,
        created_at: row.get(4)?,
        last_used_at: row.get(5)?,
        rate_limit: rate.and_then(|r| serde_json::from_str(&r).ok()),
    })
}

fn deployment_row(row: &Row<'_>) -> rusqlite::Result<DeploymentRecord> {
    Ok(DeploymentRecord {
        agent: row.get(0)?,
        deployment: row.get(1)?,
        version: row.get(2)?,
        digest: row.get(3)?,
        config: from_json(&row.get::<_, String>(4)?)?,
        deployed_at: row.get(5)?,
        rolled_back_at: row.get(6)?,
    })
}

fn query_version(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Option<VersionRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {VERSION_COLUMNS} FROM versions v WHERE {filter}"),
        params,
        version_row,
    )
    .optional()
    .map_err(internal)
}

/// What a rollback to deployment `to` of `agent`, whose live deployment is `live`, would do.
fn named_rollback(
    conn: &Connection,
    agent: &str,
    live: u32,
    to: u32,
) -> Result<RollbackPlan, StoreError> {
    let target: Option<(DeploymentRecord, bool)> = conn
        .query_row(
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS},
                    EXISTS (SELECT 1 FROM versions v WHERE v.agent = d.agent AND v.version = d.version)
                 FROM deployments d WHERE d.agent = ?1 AND d.deployment = ?2"
            ),
            params![agent, to],
            |r| Ok((deployment_row(r)?, r.get(7)?)),
        )
        .optional()
        .map_err(internal)?;
    Ok(match target {
        None => RollbackPlan::NoSuchDeployment,
        Some((target, _)) if to == live => RollbackPlan::AlreadyLive(Box::new(target)),
        Some((_, false)) => RollbackPlan::VersionDeleted,
        Some((target, true)) => RollbackPlan::To {
            from: live,
            to: Box::new(target),
        },
    })
}

/// Creates the agent with a default draft when it does not exist yet.
fn ensure_agent(tx: &Transaction<'_>, agent: &str, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO agents (name, created_at, draft) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
        params![agent, now, to_json(&AgentConfig::default())?],
    )
    .map_err(internal)?;
    Ok(())
}

/// Digests among `candidates` that no version of any agent uses any more.
fn unreferenced(tx: &Transaction<'_>, candidates: Vec<String>) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for digest in candidates {
        let used: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM versions WHERE digest = ?1)",
                [&digest],
                |r| r.get(0),
            )
            .map_err(internal)?;
        if !used {
            out.push(digest);
        }
    }
    Ok(out)
}

impl Sqlite {
    pub(crate) fn list_agents(&self) -> Result<Vec<AgentSummary>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT a.name, a.created_at, a.live_deployment, d.version,
                        (SELECT COUNT(*) FROM versions v WHERE v.agent = a.name),
                        d.deployed_at, d.config, a.draft,
                        (SELECT MAX(v.version) FROM versions v WHERE v.agent = a.name)
                     FROM agents a
                     LEFT JOIN deployments d ON d.agent = a.name AND d.deployment = a.live_deployment
                     ORDER BY a.name",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map([], |row| {
                    let deployment: Option<u32> = row.get(2)?;
                    let version: Option<u32> = row.get(3)?;
                    let live: Option<AgentConfig> =
                        row.get::<_, Option<String>>(6)?.map(|c| from_json(&c)).transpose()?;
                    let draft: AgentConfig = from_json(&row.get::<_, String>(7)?)?;
                    Ok(AgentSummary {
                        name: row.get(0)?,
                        created_at: row.get(1)?,
                        live: deployment.zip(version),
                        versions: row.get(4)?,
                        deployed_at: row.get(5)?,
                        mode: live.as_ref().map(|c| c.mode),
                        draft_pending: live.is_some_and(|live| live != draft),
                        newest_version: row.get(8)?,
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)
        })
    }

    pub(crate) fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.with(|conn| {
            let Some((created_at, draft, live)) = conn
                .query_row(
                    "SELECT created_at, draft, live_deployment FROM agents WHERE name = ?1",
                    [name],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            from_json(&r.get::<_, String>(1)?)?,
                            r.get::<_, Option<u32>>(2)?,
                        ))
                    },
                )
                .optional()
                .map_err(internal)?
            else {
                return Ok(None);
            };
            let versions = conn
                .prepare(&format!(
                    "SELECT {VERSION_COLUMNS} FROM versions v WHERE v.agent = ?1 ORDER BY v.version"
                ))
                .and_then(|mut s| s.query_map([name], version_row)?.collect())
                .map_err(internal)?;
            let deployments: Vec<DeploymentRecord> = conn
                .prepare(&format!(
                    "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d WHERE d.agent = ?1 ORDER BY d.deployment"
                ))
                .and_then(|mut s| s.query_map([name], deployment_row)?.collect())
                .map_err(internal)?;
            let live = live.and_then(|n| deployments.iter().find(|d| d.deployment == n).cloned());
            Ok(Some(AgentRecord {
                name: name.to_owned(),
                created_at,
                draft,
                live,
                versions,
                deployments,
            }))
        })
    }

    pub(crate) fn version(
        &self,
        agent: &str,
        version: u32,
    ) -> Result<Option<VersionRecord>, StoreError> {
        self.with(|conn| {
            query_version(
                conn,
                "v.agent = ?1 AND v.version = ?2",
                params![agent, version],
            )
        })
    }

    pub(crate) fn latest_version(&self, agent: &str) -> Result<Option<VersionRecord>, StoreError> {
        self.with(|conn| {
            query_version(
                conn,
                "v.agent = ?1 ORDER BY v.version DESC LIMIT 1",
                params![agent],
            )
        })
    }

    pub(crate) fn version_by_digest(
        &self,
        agent: &str,
        digest: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        self.with(|conn| {
            query_version(
                conn,
                "v.agent = ?1 AND v.digest = ?2",
                params![agent, digest],
            )
        })
    }

    pub(crate) fn add_version(
        &self,
        agent: &str,
        digest: &str,
        size: u64,
        now: i64,
    ) -> Result<(VersionRecord, bool), StoreError> {
        self.tx(|tx| {
            ensure_agent(tx, agent, now)?;
            if let Some(existing) =
                query_version(tx, "v.agent = ?1 AND v.digest = ?2", params![agent, digest])?
            {
                return Ok((existing, false));
            }
            let version: u32 = tx
                .query_row(
                    "UPDATE agents SET next_version = next_version + 1 WHERE name = ?1 RETURNING next_version - 1",
                    [agent],
                    |r| r.get(0),
                )
                .map_err(internal)?;
            tx.execute(
                "INSERT INTO versions (agent, version, digest, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![agent, version, digest, size, now],
            )
            .map_err(internal)?;
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
        })
    }

    pub(crate) fn draft(&self, agent: &str) -> Result<Option<AgentConfig>, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT draft FROM agents WHERE name = ?1", [agent], |r| {
                from_json(&r.get::<_, String>(0)?)
            })
            .optional()
            .map_err(internal)
        })
    }

    pub(crate) fn put_draft(
        &self,
        agent: &str,
        draft: &AgentConfig,
        now: i64,
        base: &DraftBase,
    ) -> Result<bool, StoreError> {
        let json = to_json(draft)?;
        self.tx(|tx| {
            // The one connection is this host's only writer, so the read and the write below
            // cannot be split by another.
            let current = tx
                .query_row("SELECT draft FROM agents WHERE name = ?1", [agent], |r| {
                    from_json(&r.get::<_, String>(0)?)
                })
                .optional()
                .map_err(internal)?;
            if !base.matches(current.as_ref()) {
                return Ok(false);
            }
            ensure_agent(tx, agent, now)?;
            tx.execute(
                "UPDATE agents SET draft = ?2 WHERE name = ?1",
                params![agent, json],
            )
            .map_err(internal)?;
            Ok(true)
        })
    }

    pub(crate) fn deploy(
        &self,
        agent: &str,
        version: u32,
        config: &AgentConfig,
        now: i64,
        key: Option<&DeployKey>,
    ) -> Result<DeploymentRecord, StoreError> {
        let json = to_json(config)?;
        let (key, hash) = (key.map(|k| &k.key), key.map(|k| &k.request_hash));
        self.tx(|tx| {
            let Some(v) = query_version(tx, "v.agent = ?1 AND v.version = ?2", params![agent, version])?
            else {
                return Err(StoreError::NotFound(format!(
                    "agent `{agent}` has no version {version}"
                )));
            };
            let number: u32 = tx
                .query_row(
                    "UPDATE agents SET next_deployment = next_deployment + 1 WHERE name = ?1 RETURNING next_deployment - 1",
                    [agent],
                    |r| r.get(0),
                )
                .map_err(internal)?;
            tx.execute(
                "INSERT INTO deployments (agent, deployment, version, digest, config, deployed_at, idempotency_key, request_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![agent, number, version, v.digest, json, now, key, hash],
            )
            .map_err(internal)?;
            tx.execute(
                "UPDATE agents SET live_deployment = ?2 WHERE name = ?1",
                params![agent, number],
            )
            .map_err(internal)?;
            Ok(DeploymentRecord {
                agent: agent.to_owned(),
                deployment: number,
                version,
                digest: v.digest,
                config: config.clone(),
                deployed_at: now,
                rolled_back_at: None,
            })
        })
    }

    pub(crate) fn deployment(
        &self,
        agent: &str,
        number: u32,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments d WHERE d.agent = ?1 AND d.deployment = ?2"),
                params![agent, number],
                deployment_row,
            )
            .optional()
            .map_err(internal)
        })
    }

    /// The deployment of `agent` made with `key` since `since`, with its request hash.
    pub(crate) fn deployment_by_key(
        &self,
        agent: &str,
        key: &str,
        since: i64,
    ) -> Result<Option<(DeploymentRecord, String)>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                &format!(
                    "SELECT {DEPLOYMENT_COLUMNS}, d.request_hash FROM deployments d
                     WHERE d.agent = ?1 AND d.idempotency_key = ?2 AND d.deployed_at >= ?3
                     ORDER BY d.deployment DESC LIMIT 1"
                ),
                params![agent, key, since],
                |r| Ok((deployment_row(r)?, r.get(7)?)),
            )
            .optional()
            .map_err(internal)
        })
    }

    pub(crate) fn plan_rollback(
        &self,
        agent: &str,
        to: Option<u32>,
    ) -> Result<RollbackPlan, StoreError> {
        self.with(|conn| {
            let Some(live) = conn
                .query_row("SELECT live_deployment FROM agents WHERE name = ?1", [agent], |r| {
                    r.get::<_, Option<u32>>(0)
                })
                .optional()
                .map_err(internal)?
            else {
                return Ok(RollbackPlan::NoAgent);
            };
            let Some(live) = live else {
                return Ok(RollbackPlan::NothingToRollBackTo);
            };
            if let Some(to) = to {
                return named_rollback(conn, agent, live, to);
            }
            // The newest earlier deployment that was not itself rolled back and whose version
            // still exists: repeated rollbacks walk further back.
            let target = conn
                .query_row(
                    &format!(
                        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d
                         WHERE d.agent = ?1 AND d.deployment < ?2 AND d.rolled_back_at IS NULL
                           AND EXISTS (SELECT 1 FROM versions v WHERE v.agent = d.agent AND v.version = d.version)
                         ORDER BY d.deployment DESC LIMIT 1"
                    ),
                    params![agent, live],
                    deployment_row,
                )
                .optional()
                .map_err(internal)?;
            Ok(match target {
                Some(to) => RollbackPlan::To {
                    from: live,
                    to: Box::new(to),
                },
                None => RollbackPlan::NothingToRollBackTo,
            })
        })
    }

    pub(crate) fn rollback(
        &self,
        agent: &str,
        from: u32,
        to: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE agents SET live_deployment = ?3 WHERE name = ?1 AND live_deployment = ?2",
                    params![agent, from, to],
                )
                .map_err(internal)?;
            if changed == 0 {
                return Err(StoreError::Conflict(format!(
                    "the live deployment of `{agent}` changed during the rollback; try again"
                )));
            }
            tx.execute(
                "UPDATE deployments SET rolled_back_at = ?3 WHERE agent = ?1 AND deployment = ?2",
                params![agent, from, now],
            )
            .map_err(internal)?;
            Ok(())
        })
    }

    pub(crate) fn live_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.with(|conn| {
            conn.prepare(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d
                 JOIN agents a ON a.name = d.agent AND a.live_deployment = d.deployment
                 ORDER BY d.agent"
            ))
            .and_then(|mut s| s.query_map([], deployment_row)?.collect())
            .map_err(internal)
        })
    }

    pub(crate) fn delete_version(
        &self,
        agent: &str,
        version: u32,
    ) -> Result<VersionDeletion, StoreError> {
        self.tx(|tx| {
            let Some(v) = query_version(tx, "v.agent = ?1 AND v.version = ?2", params![agent, version])?
            else {
                return Ok(VersionDeletion::NotFound);
            };
            let live_version: Option<u32> = tx
                .query_row(
                    "SELECT d.version FROM agents a JOIN deployments d ON d.agent = a.name AND d.deployment = a.live_deployment WHERE a.name = ?1",
                    [agent],
                    |r| r.get(0),
                )
                .optional()
                .map_err(internal)?;
            if live_version == Some(version) {
                return Ok(VersionDeletion::Live);
            }
            let in_use: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM runs WHERE agent = ?1 AND version = ?2
                        AND status IN ('queued', 'running'))",
                    params![agent, version],
                    |r| r.get(0),
                )
                .map_err(internal)?;
            if in_use {
                return Ok(VersionDeletion::InUse);
            }
            tx.execute(
                "DELETE FROM versions WHERE agent = ?1 AND version = ?2",
                params![agent, version],
            )
            .map_err(internal)?;
            let orphaned = unreferenced(tx, vec![v.digest])?.pop();
            Ok(VersionDeletion::Deleted { orphaned })
        })
    }

    pub(crate) fn apply_run_writes(
        &self,
        writes: &[RunWrite],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        self.with(|conn| {
            let mut tx = conn.transaction().map_err(internal)?;
            let mut outcomes = Vec::with_capacity(writes.len());
            for write in writes {
                // Each write in its own savepoint: one that fails is undone alone, and the
                // rest of the batch still commits.
                let savepoint = tx.savepoint().map_err(internal)?;
                let outcome = runs::apply(&savepoint, write);
                if outcome.is_ok() {
                    savepoint.commit().map_err(internal)?;
                }
                outcomes.push(outcome);
            }
            tx.commit().map_err(internal)?;
            Ok(outcomes)
        })
    }

    pub(crate) fn queued_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(runs::queued)
    }

    pub(crate) fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(internal))
    }

    pub(crate) fn active_runs(&self) -> Result<Vec<crate::queue::ActiveRuns>, StoreError> {
        self.read(runs::active)
    }

    pub(crate) fn recover_runs(
        &self,
        now: i64,
        max_attempts: u32,
    ) -> Result<Recovered, StoreError> {
        self.tx(|tx| runs::recover(tx, now, max_attempts))
    }

    pub(crate) fn run(&self, agent: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.read(|conn| runs::get(conn, agent, id))
    }

    pub(crate) fn run_input(
        &self,
        agent: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        self.read(|conn| runs::input(conn, agent, id))
    }

    pub(crate) fn list_runs(
        &self,
        agent: &str,
        status: Option<RunStatus>,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|conn| runs::list(conn, agent, status, limit, before))
    }

    pub(crate) fn due_deliveries(
        &self,
        now: i64,
        limit: usize,
        busy: &[String],
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.read(|conn| runs::due(conn, now, limit, busy))
    }

    pub(crate) fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        self.read(runs::next_due)
    }

    pub(crate) fn push_secrets(&self, agent: &str) -> Result<Option<PushSecrets>, StoreError> {
        self.read(|conn| {
            let row: Option<(Option<String>, Option<String>, Option<i64>)> = conn
                .query_row(
                    "SELECT push_secret, push_secret_prev, push_secret_prev_until FROM agents WHERE name = ?1",
                    [agent],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(internal)?;
            Ok(row.and_then(|(current, prev, until)| {
                Some(PushSecrets {
                    current: current?,
                    previous: prev.zip(until),
                })
            }))
        })
    }

    pub(crate) fn set_push_secret(
        &self,
        agent: &str,
        secret: &str,
        previous_until: i64,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE agents SET push_secret_prev = push_secret,
                        push_secret_prev_until = CASE WHEN push_secret IS NULL THEN NULL ELSE ?3 END,
                        push_secret = ?2
                     WHERE name = ?1",
                    params![agent, secret, previous_until],
                )
                .map_err(internal)?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("no agent named `{agent}`")));
            }
            Ok(())
        })
    }

    pub(crate) fn first_push_secret(&self, agent: &str, secret: &str) -> Result<bool, StoreError> {
        self.with(|conn| {
            let changed = conn
                .execute(
                    "UPDATE agents SET push_secret = ?2 WHERE name = ?1 AND push_secret IS NULL",
                    params![agent, secret],
                )
                .map_err(internal)?;
            Ok(changed == 1)
        })
    }

    pub(crate) fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let rate = key
            .rate_limit
            .map(|r| serde_json::to_string(&r))
            .transpose()
            .map_err(|e| StoreError::Internal(e.into()))?;
        self.tx(|tx| {
            let exists: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM agents WHERE name = ?1)", [&key.agent], |r| r.get(0))
                .map_err(internal)?;
            if !exists {
                return Err(StoreError::NotFound(format!("no agent named `{}`", key.agent)));
            }
            tx.execute(
                "INSERT INTO keys (id, agent, name, hash, created_at, rate_limit) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key.id, key.agent, key.name, key.hash, key.created_at, rate],
            )
            .map_err(internal)?;
            Ok(())
        })
    }

    pub(crate) fn list_keys(&self, agent: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|conn| {
            conn.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE agent = ?1 ORDER BY created_at, id"
            ))
            .and_then(|mut s| s.query_map([agent], key_row)?.collect())
            .map_err(internal)
        })
    }

    pub(crate) fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|conn| {
            conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM keys"))
                .and_then(|mut s| s.query_map([], key_row)?.collect())
                .map_err(internal)
        })
    }

    pub(crate) fn delete_key(&self, agent: &str, id: &str) -> Result<bool, StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM keys WHERE agent = ?1 AND id = ?2",
                params![agent, id],
            )
            .map(|n| n > 0)
            .map_err(internal)
        })
    }

    pub(crate) fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        self.tx(|tx| {
            for (id, at) in used {
                tx.execute(
                    "UPDATE keys SET last_used_at = ?2 WHERE id = ?1",
                    params![id, at],
                )
                .map_err(internal)?;
            }
            Ok(())
        })
    }

    pub(crate) fn referenced_digests(
        &self,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.with(|conn| {
            conn.prepare("SELECT DISTINCT digest FROM versions")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(internal)
        })
    }

    pub(crate) fn delete_agent(&self, agent: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.tx(|tx| {
            let digests: Vec<String> = tx
                .prepare("SELECT digest FROM versions WHERE agent = ?1")
                .and_then(|mut s| s.query_map([agent], |r| r.get(0))?.collect())
                .map_err(internal)?;
            let deleted = tx
                .execute("DELETE FROM agents WHERE name = ?1", [agent])
                .map_err(internal)?;
            if deleted == 0 {
                return Ok(None);
            }
            Ok(Some(unreferenced(tx, digests)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The behaviour both backends share is tested through `Store`, on each of them, in
    // tests/store/; here what only SQLite has: its file, and its migrations.

    #[test]
    fn reopening_keeps_everything_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.db");
        {
            let db = Sqlite::open(&path).unwrap();
            db.add_version("a", "sha256:1", 1, 0).unwrap();
            db.deploy("a", 1, &AgentConfig::default(), 0, None).unwrap();
        }
        let db = Sqlite::open(&path).unwrap();
        assert_eq!(db.live_deployments().unwrap().len(), 1);
        drop(db);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Sqlite::open(&path).unwrap_err().to_string();
        assert!(err.contains("newer gust"), "{err}");
    }
}
