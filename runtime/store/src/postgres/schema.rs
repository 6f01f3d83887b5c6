//! The PostgreSQL schema and its migrations.
//!
//! The tables are SQLite's (`sqlite/mod.rs`, `sqlite/runs.rs`) at their latest version, in
//! PostgreSQL's types: `BIGINT` for millisecond times, numbers and counters (a `u32` does not
//! fit `INTEGER`), `BYTEA` for bytes, `BOOLEAN` for flags. What several hosts need on top:
//! `deliveries.claimed_until` (one host delivers an event at a time), `components` (bytes
//! every host can read) and `settings` (shared host settings such as the admin token's hash).
//!
//! `gust_schema` holds one row: how many migrations have run. They run at open, in one
//! transaction under an advisory lock, so hosts starting together apply them once.

use anyhow::{Context as _, bail};
use deadpool_postgres::Object;

/// Migrations, applied in order. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: everything SQLite's schema 8 has, with delivery claims, component bytes and
    // settings.
    "CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        draft TEXT NOT NULL,
        live_deployment BIGINT,
        next_version BIGINT NOT NULL DEFAULT 1,
        next_deployment BIGINT NOT NULL DEFAULT 1,
        push_secret TEXT,
        push_secret_prev TEXT,
        push_secret_prev_until BIGINT,
        run_bytes BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE versions (
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        version BIGINT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (agent, version),
        UNIQUE (agent, digest)
    );
    CREATE INDEX versions_digest ON versions(digest);
    CREATE TABLE deployments (
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        deployment BIGINT NOT NULL,
        version BIGINT NOT NULL,
        digest TEXT NOT NULL,
        config TEXT NOT NULL,
        deployed_at BIGINT NOT NULL,
        rolled_back_at BIGINT,
        idempotency_key TEXT,
        request_hash TEXT,
        PRIMARY KEY (agent, deployment)
    );
    CREATE INDEX deployments_idempotency ON deployments(agent, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        deployment BIGINT NOT NULL,
        version BIGINT NOT NULL,
        status TEXT NOT NULL,
        input BYTEA NOT NULL,
        content_type TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        attempts BIGINT NOT NULL DEFAULT 0,
        lease_until BIGINT,
        output BYTEA,
        output_type TEXT,
        error_kind TEXT,
        error_message TEXT,
        progress_fraction DOUBLE PRECISION,
        progress_message TEXT,
        logs TEXT,
        idempotency_key TEXT,
        request_hash TEXT,
        push BOOLEAN NOT NULL DEFAULT FALSE,
        outbound TEXT,
        stored_bytes BIGINT NOT NULL DEFAULT 0,
        traceparent TEXT,
        tracestate TEXT
    );
    CREATE INDEX runs_agent ON runs(agent, id);
    CREATE INDEX runs_queue ON runs(status, expires_at);
    CREATE INDEX runs_finished ON runs(finished_at);
    -- What makes two hosts accepting the same key at once produce one run (see
    -- postgres/runs.rs, `insert`).
    CREATE UNIQUE INDEX runs_idempotency ON runs(agent, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE deliveries (
        run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        agent TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        url TEXT NOT NULL,
        access_token TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at BIGINT,
        created_at BIGINT NOT NULL,
        -- Until when a host is delivering it (postgres/runs.rs, `due`).
        claimed_until BIGINT
    );
    CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT,
        rate_limit TEXT
    );
    CREATE INDEX keys_agent ON keys(agent);
    CREATE TABLE components (
        digest TEXT PRIMARY KEY,
        bytes BYTEA NOT NULL
    );
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // 2: console sessions, so a browser signed in on one host is signed in on all (a load
    // balancer may send each request elsewhere). Only the SHA-256 of a session id is kept.
    "CREATE TABLE console_sessions (
        hash TEXT PRIMARY KEY,
        opened_at BIGINT NOT NULL,
        seen_at BIGINT NOT NULL
    );
    CREATE INDEX console_sessions_seen ON console_sessions(seen_at);",
];

/// The advisory lock migrations run under (an arbitrary constant: "gust" in ASCII).
const MIGRATION_LOCK: i64 = 0x6775_7374;

/// Brings the schema up to date, once even when several hosts open the database at once.
///
/// # Errors
/// When the database was migrated by a newer gust, or a migration fails.
pub(super) async fn migrate(client: &mut Object) -> anyhow::Result<()> {
    let tx = client.transaction().await.map_err(super::anyhow)?;
    // Held to the end of the transaction: a host that waits here sees the schema the first
    // one made.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(super::anyhow)
        .context("waiting for the migration lock")?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS gust_schema (version INTEGER NOT NULL)")
        .await
        .map_err(super::anyhow)?;
    let row = tx
        .query_opt("SELECT version FROM gust_schema", &[])
        .await
        .map_err(super::anyhow)?;
    let applied = match row {
        Some(row) => {
            let version: i32 = row.try_get(0).map_err(super::anyhow)?;
            usize::try_from(version).context("a negative schema version")?
        }
        None => {
            tx.execute("INSERT INTO gust_schema (version) VALUES (0)", &[])
                .await
                .map_err(super::anyhow)?;
            0
        }
    };
    if applied > MIGRATIONS.len() {
        bail!(
            "the database was migrated by a newer gust (schema {applied}, this binary knows {}): upgrade this host",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql)
            .await
            .map_err(super::anyhow)
            .with_context(|| format!("applying schema migration {}", i + 1))?;
    }
    if applied < MIGRATIONS.len() {
        let version = i32::try_from(MIGRATIONS.len()).context("too many migrations")?;
        tx.execute("UPDATE gust_schema SET version = $1", &[&version])
            .await
            .map_err(super::anyhow)?;
    }
    tx.commit().await.map_err(super::anyhow)?;
    Ok(())
}
