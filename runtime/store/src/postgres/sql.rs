//! The statements of the run queue's hot path on PostgreSQL, in one place: the store sends
//! them (`runs.rs`, `grouped.rs`), and the benchmark's raw floor (`bench/src/pg_floor.rs`)
//! sends the very same text, so the floor measures what gust asks of PostgreSQL.
//!
//! Each statement names its runs by id and must find them through the primary key: one
//! lookup per run, whatever the tables hold. The plans PostgreSQL caches for prepared
//! statements are made from statistics gathered when the table was young, and kept until
//! the next analyze; two plans they then favour cost a batch the square of the queue:
//!
//! - a sequential scan of `runs` for each run named (a table of a few pages looks cheaper to
//!   read whole) — so each batch runs under [`BATCH_SETTINGS`];
//! - a scan of every queued (or running) run through the queue's index (`runs_queue`, on
//!   status) for each run named (when few were queued at the last analyze) — so the status
//!   tests are written `status || ''`, which that index cannot serve.

/// The settings of a batch's transaction: index scans wherever one serves (see above).
pub const BATCH_SETTINGS: &str = "SET LOCAL enable_seqscan = off";

/// Locks, in name order, the rows of the agents a batch accepts runs for (`$1`) and of the
/// agents of the runs it ends (`$2`).
pub const LOCK_AGENTS: &str = "SELECT name FROM agents
         WHERE name = ANY($1)
            OR name IN (SELECT r.agent FROM unnest($2::TEXT[]) AS n(id) JOIN runs r ON r.id = n.id)
         ORDER BY name FOR NO KEY UPDATE";

/// Counts the new runs' bytes per agent against its bound and inserts the runs of every
/// agent within it; answers their ids.
pub const INSERT: &str = "WITH t AS (
            SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BYTEA[],
                $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::BOOL[], $10::BIGINT[], $11::TEXT[],
                $12::TEXT[])
            AS t(id, agent, deployment, version, input, content_type, created_at, expires_at,
                push, bound, traceparent, tracestate)
         ), counted AS (
            UPDATE agents a SET run_bytes = a.run_bytes + n.bytes
            FROM (SELECT agent, sum(octet_length(input))::BIGINT AS bytes, min(bound) AS bound
                  FROM t GROUP BY agent) n
            WHERE a.name = n.agent AND a.run_bytes <= n.bound - n.bytes
            RETURNING a.name
         )
         INSERT INTO runs (id, agent, deployment, version, status, input, content_type,
            created_at, expires_at, push, stored_bytes, traceparent, tracestate)
         SELECT id, agent, deployment, version, 'queued', input, content_type, created_at,
            expires_at, push, octet_length(input)::BIGINT, traceparent, tracestate
         FROM t WHERE agent IN (SELECT name FROM counted)
         RETURNING id";

/// Claims the named runs that are queued and not past their queue wait, skipping runs
/// another transaction holds; answers what a worker needs of each.
pub const START: &str = "WITH t AS (
            SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) AS t(id, now, lease)
         ), claimable AS (
            SELECT r.id FROM runs r JOIN t ON t.id = r.id
            WHERE r.status || '' = 'queued' AND NOT (r.attempts = 0 AND r.expires_at < t.now)
            FOR UPDATE OF r SKIP LOCKED
         )
         UPDATE runs r SET status = 'running', attempts = r.attempts + 1, started_at = t.now,
            lease_until = t.lease
         FROM t WHERE r.id = t.id AND r.id IN (SELECT id FROM claimable)
         RETURNING r.id, r.agent, r.deployment, r.attempts, r.input, r.content_type,
            r.created_at, r.traceparent, r.tracestate";

/// The statuses of the named runs (those that exist).
pub const STATUS: &str = "SELECT id, status FROM runs WHERE id = ANY($1)";

/// Ends the named runs still running the attempt that ended, and counts the bytes each
/// agent's runs now keep; answers the ended runs, whether they push, and their agents.
pub const FINISH: &str = "WITH t AS (
            SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[],
                $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[])
            AS t(id, attempt, status, now, output, output_type, error_kind, error_message, logs,
                outbound)
         ), ended AS (
            UPDATE runs r SET status = t.status, finished_at = t.now, output = t.output,
                output_type = t.output_type, error_kind = t.error_kind,
                error_message = t.error_message, logs = t.logs, outbound = t.outbound,
                lease_until = NULL,
                stored_bytes = octet_length(r.input)::BIGINT + coalesce(octet_length(t.output), 0)
                    + octet_length(t.logs) + coalesce(octet_length(t.outbound), 0)
            FROM t WHERE r.id = t.id AND r.status || '' = 'running' AND r.attempts = t.attempt
            RETURNING r.id, r.push, r.agent, coalesce(octet_length(t.output), 0)::BIGINT
                + octet_length(t.logs) + coalesce(octet_length(t.outbound), 0) AS added
         ), counted AS (
            UPDATE agents a SET run_bytes = a.run_bytes + s.added
            FROM (SELECT agent, sum(added)::BIGINT AS added FROM ended GROUP BY agent) s
            WHERE a.name = s.agent
         )
         SELECT id, push, agent FROM ended";

/// Extends the leases of the named runs still running the attempt that renews.
pub const RENEW: &str = "UPDATE runs r SET lease_until = t.lease
         FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) AS t(id, attempt, lease)
         WHERE r.id = t.id AND r.status || '' = 'running' AND r.attempts = t.attempt
         RETURNING r.id";

/// Announces a batch's changes (`$2`, payloads) on the channel `$1`, at its commit.
pub const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";
