//! The raw PostgreSQL floor of the run queue: what gust's writer asks of PostgreSQL for each
//! run — its insert, its claim and its finish — sent by a plain program over tokio-postgres,
//! with nothing of gust around it (no HTTP, no Wasm, no admission).
//!
//! Everything that shapes the database's work is copied from gust, so the floor is what gust
//! on PostgreSQL could reach if the rest of it cost nothing:
//!
//! - **the statements**, verbatim from `runtime/store/src/postgres/runs.rs` (`apply_batch`,
//!   `lock_agents`, `insert`, `start`, `finish`), each prepared once per connection and sent
//!   one after another as gust's store sends them, on the tables of `schema.rs`;
//! - **the batch shape**: one transaction per batch; the agents' rows locked first; a
//!   savepoint per write (`RELEASE SAVEPOINT write; SAVEPOINT write` between writes, one
//!   round trip); every run queued and ended announced with one `pg_notify` statement per
//!   batch; a host's listener connection `LISTEN`ing meanwhile;
//! - **the batching**: one writer task (`runtime/core/src/runs/writer.rs`) takes the first
//!   write waiting and whatever else is already queued, up to 1024, so batches grow with
//!   the load by themselves;
//! - **the concurrency**: `submitters` tasks each submit their next run as soon as the last
//!   one's insert is committed (as the HTTP clients do), and every committed insert is
//!   claimed by one of `workers` workers, which waits for its claim to commit and then hands
//!   the finish to the writer without waiting (as `runs/workers.rs` does).
//!
//! `fsync` and `synchronous_commit` are the server's (the benchmark checks they are on).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement, Transaction};

/// Largest batch applied in one transaction (gust's writer: `MAX_BATCH`).
const MAX_BATCH: usize = 1024;

/// The channel gust announces changes on.
const CHANNEL: &str = "gust_changes";

/// The agent every run belongs to.
const AGENT: &str = "echo";

/// What an echo run stores as its output: the echo of `{"job":"1234567"}`.
const OUTPUT: &[u8] = br#"{"input":{"job":"1234567"},"version":1,"marker":null}"#;

/// gust's default bound on an agent's stored run bytes (`--max-run-storage-mib 1024`).
const MAX_STORED_BYTES: i64 = 1 << 30;

/// gust's default queue wait (the runs never expire here).
const QUEUE_WAIT_MS: i64 = 3_600_000;

/// A run's lease (gust's default, 30 s).
const LEASE_MS: i64 = 30_000;

/// The tables a run touches, as migration 1 of `runtime/store/src/postgres/schema.rs` makes
/// them (with their indexes: each is maintained on every insert).
const SCHEMA: &str = "
    CREATE TABLE agents (
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
    CREATE UNIQUE INDEX runs_idempotency ON runs(agent, idempotency_key)
        WHERE idempotency_key IS NOT NULL;";

// The statements, as gust's store sends them.

const LOCK_AGENTS: &str = "SELECT name FROM agents
         WHERE name = ANY($1) OR name IN (SELECT agent FROM runs WHERE id = ANY($2))
         ORDER BY name FOR NO KEY UPDATE";

const COUNT_BYTES: &str = "UPDATE agents SET run_bytes = run_bytes + $2 WHERE name = $1 AND run_bytes <= $3::BIGINT - $2::BIGINT";

const INSERT: &str =
    "INSERT INTO runs (id, agent, deployment, version, status, input, content_type, created_at,
            expires_at, idempotency_key, request_hash, push, stored_bytes, traceparent, tracestate)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (agent, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";

const CLAIM: &str = "UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = $2,
            lease_until = $3
         WHERE id = (SELECT id FROM runs WHERE id = $1 AND status = 'queued'
                       AND NOT (attempts = 0 AND expires_at < $2)
                     FOR UPDATE SKIP LOCKED)
         RETURNING agent, deployment, attempts, input, content_type, created_at, traceparent,
            tracestate";

const FINISH: &str = "WITH ended AS (
            UPDATE runs SET status = $2, finished_at = $3, output = $4, output_type = $5,
                error_kind = $6, error_message = $7, logs = $8, outbound = $9, lease_until = NULL,
                stored_bytes = octet_length(input)::BIGINT + coalesce(octet_length($4::BYTEA), 0)
                    + octet_length($8::TEXT) + coalesce(octet_length($9::TEXT), 0)
            WHERE id = $1 AND status = 'running'
            RETURNING push, agent, coalesce(octet_length($4::BYTEA), 0)::BIGINT
                + octet_length($8::TEXT) + coalesce(octet_length($9::TEXT), 0) AS added
         ), counted AS (
            UPDATE agents a SET run_bytes = a.run_bytes + e.added FROM ended e WHERE a.name = e.agent
         )
         SELECT push, agent FROM ended";

const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";

/// What the floor is asked to do.
pub struct Load {
    /// The database, made for this run alone (its tables are created here).
    pub url: String,
    /// Runs to carry from insert to finish.
    pub runs: usize,
    /// Concurrent submitters (the benchmark's HTTP clients).
    pub submitters: usize,
    /// Runs claimed and finished at once (gust's `--workers`).
    pub workers: usize,
    /// The run's input.
    pub input: &'static [u8],
    /// Send each batch's statements without waiting for each answer (not what gust does:
    /// what it would gain).
    pub pipelined: bool,
}

/// What the floor measured.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Runs from the first insert sent to the last finish committed, per second.
    pub runs_per_s: f64,
    /// Writes per transaction: the batches the writer formed.
    pub writes_per_commit: f64,
    /// Share of the time the writer spent inside transactions (1.0: it never waited for
    /// work, so it is what bounds the rate).
    pub writer_busy: f64,
    /// The writer's busy time per write, µs.
    pub us_per_write: f64,
    /// CPU time of the server process that served the writer's connection, per write, µs:
    /// of the writer's busy time, what PostgreSQL spent executing (the rest is waiting for
    /// answers to travel and for processes to be woken).
    pub server_us_per_write: f64,
    /// Notifications the listener heard.
    pub notifications: u64,
}

/// The server's durability settings and version, as `SHOW` answers them.
///
/// # Errors
/// When the database cannot be reached.
pub async fn settings(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let client = connect(url).await?;
    let mut answers = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "full_page_writes",
    ] {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
        answers.push((name.to_owned(), row.get::<_, String>(0)));
    }
    Ok(answers)
}

/// The median time of a prepared `SELECT 1` on an idle connection, in µs, over `n` of them:
/// one round trip to the server, which each of gust's statements costs at least.
///
/// # Errors
/// When the database cannot be reached.
pub async fn round_trip_us(url: &str, n: usize) -> anyhow::Result<f64> {
    let client = connect(url).await?;
    let statement = client.prepare("SELECT 1").await?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = Instant::now();
        client.query_one(&statement, &[]).await?;
        times.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    Ok(crate::median(times))
}

/// The commits per second of one connection committing one small insert at a time: the
/// server's durable-commit rate (each one waits for its WAL flush).
///
/// # Errors
/// When the database cannot be reached.
pub async fn commits_per_s(url: &str, n: usize) -> anyhow::Result<f64> {
    let client = connect(url).await?;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS floor_commits (n BIGINT)")
        .await?;
    let statement = client
        .prepare("INSERT INTO floor_commits (n) VALUES ($1)")
        .await?;
    let started = Instant::now();
    for i in 0..n {
        // Outside a transaction block, each statement commits by itself.
        client.execute(&statement, &[&(i as i64)]).await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Creates the tables in `load.url`'s database, then carries `load.runs` runs from insert to
/// finish as described in the module docs.
///
/// # Errors
/// When the database fails, or a statement does not do what gust's would.
pub async fn run(load: &Load) -> anyhow::Result<Reading> {
    let client = connect(&load.url).await?;
    client
        .batch_execute(SCHEMA)
        .await
        .context("creating the tables")?;
    client
        .execute(
            "INSERT INTO agents (name, created_at, draft, live_deployment) VALUES ($1, $2, '{}', 1)",
            &[&AGENT, &now_ms()],
        )
        .await?;
    let statements = Statements::prepare(&client).await?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let backend_cpu = cpu_time(backend)?;

    // A host's listener: it hears every announcement, as each gust host does.
    let notifications = Arc::new(AtomicU64::new(0));
    let _listener = listen(&load.url, Arc::clone(&notifications)).await?;

    let (writes, queued) = mpsc::unbounded_channel();
    let (claims, to_claim) = mpsc::unbounded_channel();
    let (done, all_done) = oneshot::channel();
    let stats = Arc::new(WriterStats::default());
    let writer = tokio::spawn(
        Writer {
            client,
            statements,
            claims,
            total: load.runs,
            done: Some(done),
            stats: Arc::clone(&stats),
            pipelined: load.pipelined,
        }
        .run(queued),
    );
    let started = Instant::now();
    let dispatcher = tokio::spawn(dispatch(to_claim, writes.clone(), load.workers));
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..load.submitters {
        let (writes, next, total, input) =
            (writes.clone(), Arc::clone(&next), load.runs, load.input);
        submitters.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let now = now_ms();
                let insert = Write::Insert {
                    // Ids in creation order, as gust's UUIDv7 run ids are.
                    id: format!("run_{n:032x}"),
                    input,
                    created_at: now,
                };
                let (reply, answer) = oneshot::channel();
                writes
                    .send((insert, Some(reply)))
                    .map_err(|_| anyhow::anyhow!("the writer stopped"))?;
                answer.await.context("the writer stopped")??;
            }
        }));
    }
    drop(writes);
    for submitter in submitters {
        submitter.await??;
    }
    tokio::select! {
        done = all_done => done.context("the writer stopped before every run finished")?,
        stopped = writer => {
            stopped??;
            anyhow::bail!("the writer stopped before every run finished");
        }
    }
    let elapsed = started.elapsed();
    let backend_cpu = cpu_time(backend)? - backend_cpu;
    dispatcher.abort();
    let commits = stats.commits.load(Ordering::Relaxed) as f64;
    let written = stats.writes.load(Ordering::Relaxed) as f64;
    let busy = Duration::from_nanos(stats.busy_ns.load(Ordering::Relaxed));
    Ok(Reading {
        runs_per_s: load.runs as f64 / elapsed.as_secs_f64(),
        writes_per_commit: written / commits.max(1.0),
        writer_busy: busy.as_secs_f64() / elapsed.as_secs_f64(),
        us_per_write: busy.as_secs_f64() * 1e6 / written.max(1.0),
        server_us_per_write: backend_cpu.as_secs_f64() * 1e6 / written.max(1.0),
        notifications: notifications.load(Ordering::Relaxed),
    })
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A connection that `LISTEN`s on gust's channel and counts what it hears; it stops when
/// the returned client is dropped.
async fn listen(url: &str, heard: Arc<AtomicU64>) -> anyhow::Result<Client> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(_) = message {
                heard.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok(client)
}

/// A write, as gust's `RunWrite` carries it (only what an echo run with push off needs).
enum Write {
    Insert {
        id: String,
        input: &'static [u8],
        created_at: i64,
    },
    Start {
        id: String,
    },
    Finish {
        id: String,
    },
}

type Reply = Option<oneshot::Sender<anyhow::Result<()>>>;

struct Statements {
    lock_agents: Statement,
    count_bytes: Statement,
    insert: Statement,
    claim: Statement,
    finish: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> anyhow::Result<Self> {
        Ok(Self {
            lock_agents: client.prepare(LOCK_AGENTS).await?,
            count_bytes: client.prepare(COUNT_BYTES).await?,
            insert: client.prepare(INSERT).await?,
            claim: client.prepare(CLAIM).await?,
            finish: client.prepare(FINISH).await?,
            notify: client.prepare(NOTIFY).await?,
        })
    }
}

#[derive(Default)]
struct WriterStats {
    commits: AtomicU64,
    writes: AtomicU64,
    busy_ns: AtomicU64,
}

/// gust's writer: one task, one connection at a time.
struct Writer {
    client: Client,
    statements: Statements,
    /// Committed inserts, for the workers to claim.
    claims: mpsc::UnboundedSender<String>,
    /// Runs to finish before `done` is told.
    total: usize,
    done: Option<oneshot::Sender<()>>,
    stats: Arc<WriterStats>,
    pipelined: bool,
}

impl Writer {
    /// gust's writer loop: the first write waiting and whatever else is queued, up to
    /// [`MAX_BATCH`], in one transaction; then the replies, committed inserts to the
    /// workers, and the count of finished runs.
    async fn run(
        mut self,
        mut queued: mpsc::UnboundedReceiver<(Write, Reply)>,
    ) -> anyhow::Result<()> {
        let (claims, total, stats, pipelined) =
            (self.claims, self.total, self.stats, self.pipelined);
        let (client, statements) = (&mut self.client, &self.statements);
        let mut done = self.done;
        let mut finished = 0;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = queued.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queued.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let began = Instant::now();
            apply_batch(client, statements, &batch, pipelined).await?;
            stats
                .busy_ns
                .fetch_add(began.elapsed().as_nanos() as u64, Ordering::Relaxed);
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (write, reply) in batch.drain(..) {
                match write {
                    Write::Insert { id, .. } => {
                        let _ = claims.send(id);
                    }
                    Write::Finish { .. } => finished += 1,
                    Write::Start { .. } => {}
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            if finished >= total
                && let Some(done) = done.take()
            {
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

/// A statement of a batch, with the check of its answer.
type Op<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// One batch, as gust's `apply_batch` sends it: with `pipelined`, the same statements are
/// sent without waiting for each answer before the next (the connection keeps them in
/// order), then every answer is checked.
async fn apply_batch(
    client: &mut Client,
    statements: &Statements,
    writes: &[(Write, Reply)],
    pipelined: bool,
) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    send_batch(&tx, statements, writes, pipelined).await?;
    tx.commit().await?;
    Ok(())
}

/// The statements of a batch inside its transaction `tx`.
async fn send_batch(
    tx: &Transaction<'_>,
    statements: &Statements,
    writes: &[(Write, Reply)],
    pipelined: bool,
) -> anyhow::Result<()> {
    let mut agents: Vec<&str> = Vec::new();
    let mut ending: Vec<&str> = Vec::new();
    for (write, _) in writes {
        match write {
            Write::Insert { .. } => agents.push(AGENT),
            Write::Finish { id } => ending.push(id),
            Write::Start { .. } => {}
        }
    }
    let mut ops: Vec<Op<'_>> = Vec::with_capacity(writes.len() * 4 + 3);
    if !agents.is_empty() || !ending.is_empty() {
        ops.push(Box::pin(async move {
            tx.query(&statements.lock_agents, &[&agents, &ending])
                .await?;
            Ok(())
        }));
    }
    let mut payloads: Vec<String> = Vec::new();
    ops.push(Box::pin(async move {
        tx.batch_execute("SAVEPOINT write").await?;
        Ok(())
    }));
    for (i, (write, _)) in writes.iter().enumerate() {
        match write {
            Write::Insert {
                id,
                input,
                created_at,
            } => {
                let size = input.len() as i64;
                ops.push(Box::pin(async move {
                    let counted = tx
                        .execute(&statements.count_bytes, &[&AGENT, &size, &MAX_STORED_BYTES])
                        .await?;
                    ensure!(counted == 1, "the agent's stored bytes were not counted");
                    Ok(())
                }));
                ops.push(Box::pin(async move {
                    let none: Option<&str> = None;
                    let inserted = tx
                        .execute(
                            &statements.insert,
                            &[
                                id,
                                &AGENT,
                                &1_i64,
                                &1_i64,
                                input,
                                &"application/json",
                                created_at,
                                &(created_at + QUEUE_WAIT_MS),
                                &none,
                                &none,
                                &false,
                                &size,
                                &none,
                                &none,
                            ],
                        )
                        .await?;
                    ensure!(inserted == 1, "run {id} was not inserted");
                    Ok(())
                }));
                payloads.push(json!({"kind": "run_queued", "agent": AGENT, "id": id}).to_string());
            }
            Write::Start { id } => {
                let now = now_ms();
                ops.push(Box::pin(async move {
                    let claimed = tx
                        .query_opt(&statements.claim, &[id, &now, &(now + LEASE_MS)])
                        .await?;
                    ensure!(claimed.is_some(), "run {id} was not claimed");
                    Ok(())
                }));
            }
            Write::Finish { id } => {
                let now = now_ms();
                ops.push(Box::pin(async move {
                    let none: Option<&str> = None;
                    let ended = tx
                        .query_opt(
                            &statements.finish,
                            &[
                                id,
                                &"succeeded",
                                &now,
                                &Some(OUTPUT),
                                &Some("application/json"),
                                &none,
                                &none,
                                &"[]",
                                &none,
                            ],
                        )
                        .await?;
                    ensure!(ended.is_some(), "run {id} was not running");
                    Ok(())
                }));
                payloads.push(json!({"kind": "run_ended", "agent": AGENT, "id": id}).to_string());
            }
        }
        if i + 1 < writes.len() {
            ops.push(Box::pin(async move {
                tx.batch_execute("RELEASE SAVEPOINT write; SAVEPOINT write")
                    .await?;
                Ok(())
            }));
        }
    }
    if !payloads.is_empty() {
        ops.push(Box::pin(async move {
            tx.query(&statements.notify, &[&CHANNEL, &payloads]).await?;
            Ok(())
        }));
    }
    if pipelined {
        futures::future::try_join_all(ops).await?;
    } else {
        // An op sends nothing until it is awaited: one statement, one answer, the next.
        for op in ops {
            op.await?;
        }
    }
    Ok(())
}

/// Claims each committed insert with one of `workers` workers: the claim waits for its
/// commit, the finish is handed over without waiting, and the worker is free.
async fn dispatch(
    mut to_claim: mpsc::UnboundedReceiver<String>,
    writes: mpsc::UnboundedSender<(Write, Reply)>,
    workers: usize,
) {
    let slots = Arc::new(Semaphore::new(workers));
    while let Some(id) = to_claim.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let writes = writes.clone();
        tokio::spawn(async move {
            let (reply, answer) = oneshot::channel();
            let start = Write::Start { id: id.clone() };
            if writes.send((start, Some(reply))).is_err() {
                return;
            }
            if let Ok(Ok(())) = answer.await {
                let _ = writes.send((Write::Finish { id }, None));
            }
            drop(slot);
        });
    }
}

/// User and system CPU time of process `pid` so far (`/proc/<pid>/stat`, in clock ticks:
/// 10 ms each here, fine over a run of seconds).
fn cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading the CPU time of PostgreSQL's process {pid}"))?;
    // After the command's name in parentheses (which may hold spaces): fields 3 onwards;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i - 3)
            .context("a short /proc stat line")?
            .parse()?)
    };
    let per_second = rustix::param::clock_ticks_per_second();
    Ok(Duration::from_secs_f64(
        (ticks(14)? + ticks(15)?) as f64 / per_second as f64,
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
