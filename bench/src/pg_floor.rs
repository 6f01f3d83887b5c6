//! The raw PostgreSQL floor of the run queue: what gust's writer asks of PostgreSQL for each
//! run — its insert, its claim and its finish — sent by a plain program over tokio-postgres,
//! with nothing of gust around it (no HTTP, no Wasm, no admission).
//!
//! Everything that shapes the database's work is gust's, so the floor is what gust on
//! PostgreSQL could reach if the rest of it cost nothing:
//!
//! - **the tables**, made by gust's own migrations (the store is opened once on the
//!   database, then closed);
//! - **the statements**, the very text gust's store sends (`gust_store::postgres_queue_sql`),
//!   prepared once per connection. An echo run needs no more than the lock, the insert, the
//!   claim and the finish: every claim here wins, so the read that tells losing starts
//!   their run's status is never sent, nor are renewals (runs end long before their lease);
//! - **the batch shape** (`runtime/store/src/postgres/runs.rs`, `grouped.rs`): one
//!   transaction per batch, under gust's settings; the agents' rows locked first; every
//!   insert of the batch in one statement, every claim in one, every finish in one, all
//!   sent together; then every run queued and ended announced with one `pg_notify`
//!   statement; a host's listener connection `LISTEN`ing meanwhile;
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

use gust_store::postgres_queue_sql as sql;

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
    /// Send each batch's statements one at a time, each after the last one's answer (not
    /// what gust does: what sending them together gains).
    pub one_at_a_time: bool,
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
    let store = gust_store::Store::open_postgres(&load.url)
        .await
        .context("creating gust's tables")?;
    store.close();
    let client = connect(&load.url).await?;
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
            one_at_a_time: load.one_at_a_time,
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
    insert: Statement,
    start: Statement,
    finish: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> anyhow::Result<Self> {
        Ok(Self {
            lock_agents: client.prepare(sql::LOCK_AGENTS).await?,
            insert: client.prepare(sql::INSERT).await?,
            start: client.prepare(sql::START).await?,
            finish: client.prepare(sql::FINISH).await?,
            notify: client.prepare(sql::NOTIFY).await?,
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
    one_at_a_time: bool,
}

impl Writer {
    /// gust's writer loop: the first write waiting and whatever else is queued, up to
    /// [`MAX_BATCH`], in one transaction; then the replies, committed inserts to the
    /// workers, and the count of finished runs.
    async fn run(
        mut self,
        mut queued: mpsc::UnboundedReceiver<(Write, Reply)>,
    ) -> anyhow::Result<()> {
        let (claims, total, stats, one_at_a_time) =
            (self.claims, self.total, self.stats, self.one_at_a_time);
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
            apply_batch(client, statements, &batch, one_at_a_time).await?;
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

/// One batch, as gust's `apply_batch` sends it: the settings, the agent lock and the
/// statements of each kind sent together (the connection keeps them in order), then the
/// announcements. With `one_at_a_time`, each statement waits for the last one's answer (not
/// what gust does: what sending them together gains).
async fn apply_batch(
    client: &mut Client,
    statements: &Statements,
    writes: &[(Write, Reply)],
    one_at_a_time: bool,
) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    send_batch(&tx, statements, writes, one_at_a_time).await?;
    tx.commit().await?;
    Ok(())
}

/// The statements of a batch inside its transaction `tx`.
async fn send_batch(
    tx: &Transaction<'_>,
    statements: &Statements,
    writes: &[(Write, Reply)],
    one_at_a_time: bool,
) -> anyhow::Result<()> {
    let now = now_ms();
    let mut inserts = Inserts::default();
    let mut starts: Vec<&str> = Vec::new();
    let mut ending: Vec<&str> = Vec::new();
    let mut payloads: Vec<String> = Vec::new();
    for (write, _) in writes {
        match write {
            Write::Insert {
                id,
                input,
                created_at,
            } => {
                inserts.id.push(id);
                inserts.input.push(input);
                inserts.created_at.push(*created_at);
                inserts.expires_at.push(created_at + QUEUE_WAIT_MS);
                payloads.push(json!({"kind": "run_queued", "agent": AGENT, "id": id}).to_string());
            }
            Write::Start { id } => starts.push(id),
            Write::Finish { id } => {
                ending.push(id);
                payloads.push(json!({"kind": "run_ended", "agent": AGENT, "id": id}).to_string());
            }
        }
    }
    let agents: Vec<&str> = if inserts.id.is_empty() {
        vec![]
    } else {
        vec![AGENT]
    };
    let mut ops: Vec<Op<'_>> = Vec::with_capacity(5);
    ops.push(Box::pin(async move {
        tx.batch_execute(sql::BATCH_SETTINGS).await?;
        Ok(())
    }));
    if !agents.is_empty() || !ending.is_empty() {
        let ending = ending.clone();
        ops.push(Box::pin(async move {
            tx.query(&statements.lock_agents, &[&agents, &ending])
                .await?;
            Ok(())
        }));
    }
    if !inserts.id.is_empty() {
        ops.push(Box::pin(async move {
            let n = inserts.id.len();
            let none: Vec<Option<&str>> = vec![None; n];
            let inserted = tx
                .query(
                    &statements.insert,
                    &[
                        &inserts.id,
                        &vec![AGENT; n],
                        &vec![1_i64; n],
                        &vec![1_i64; n],
                        &inserts.input,
                        &vec!["application/json"; n],
                        &inserts.created_at,
                        &inserts.expires_at,
                        &vec![false; n],
                        &vec![MAX_STORED_BYTES; n],
                        &none,
                        &none,
                    ],
                )
                .await?;
            ensure!(
                inserted.len() == n,
                "{} of {n} runs inserted",
                inserted.len()
            );
            Ok(())
        }));
    }
    if !starts.is_empty() {
        ops.push(Box::pin(async move {
            let n = starts.len();
            let claimed = tx
                .query(
                    &statements.start,
                    &[&starts, &vec![now; n], &vec![now + LEASE_MS; n]],
                )
                .await?;
            ensure!(claimed.len() == n, "{} of {n} runs claimed", claimed.len());
            Ok(())
        }));
    }
    if !ending.is_empty() {
        ops.push(Box::pin(async move {
            let n = ending.len();
            let none: Vec<Option<&str>> = vec![None; n];
            let ended = tx
                .query(
                    &statements.finish,
                    &[
                        &ending,
                        &vec![1_i64; n],
                        &vec!["succeeded"; n],
                        &vec![now; n],
                        &vec![Some(OUTPUT); n],
                        &vec![Some("application/json"); n],
                        &none,
                        &none,
                        &vec!["[]"; n],
                        &none,
                    ],
                )
                .await?;
            ensure!(ended.len() == n, "{} of {n} runs ended", ended.len());
            Ok(())
        }));
    }
    if one_at_a_time {
        // An op sends nothing until it is awaited: one statement, one answer, the next.
        for op in ops {
            op.await?;
        }
    } else {
        futures::future::try_join_all(ops).await?;
    }
    // The announcements name what the statements did, so they follow the answers.
    if !payloads.is_empty() {
        tx.query(&statements.notify, &[&CHANNEL, &payloads]).await?;
    }
    Ok(())
}

/// The columns of a batch's inserts that differ from run to run.
#[derive(Default)]
struct Inserts<'a> {
    id: Vec<&'a str>,
    input: Vec<&'a [u8]>,
    created_at: Vec<i64>,
    expires_at: Vec<i64>,
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

/// User and system CPU time of process `pid` so far.
fn cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let pid = u32::try_from(pid).context("a process id")?;
    crate::cpu_and_faults(pid)
        .map(|(cpu, _)| cpu)
        .with_context(|| format!("reading the CPU time of PostgreSQL's process {pid}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
