//! The run-queue benchmark: queued runs per second end to end (submit → final) for the echo
//! agent with push off, and submit-to-202 latency, beside the machine's plain SQLite
//! insert-and-update rate with the same durability (WAL, `synchronous=FULL`), one commit
//! per job and 64 jobs per commit — so the ratio shows what the queue costs over the
//! database alone.
//!
//! Rounds alternate (gust, then the SQLite baselines) and the medians are reported.
//!
//! ```text
//! cargo run --release -p gust-bench --bin queue -- --gust target/release/gust \
//!     --echo target/wasm32-wasip2/release/echo.wasm [--runs 20000] [--rounds 3]
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use gust_bench::{Host, median};
use serde_json::json;
/// The input of every job: 17 bytes, as in the issue's reference figures.
const INPUT: &[u8] = br#"{"job":"1234567"}"#;

struct Options {
    gust: PathBuf,
    echo: PathBuf,
    runs: usize,
    rounds: usize,
    clients: usize,
    workers: usize,
}

const USAGE: &str = "\
usage: queue [--gust PATH] [--echo PATH] [--runs N] [--rounds N] [--clients N] [--workers N]
Queued runs per second end to end, beside plain SQLite with the same durability.";

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        gust: PathBuf::from("target/release/gust"),
        echo: PathBuf::from("target/wasm32-wasip2/release/echo.wasm"),
        runs: 20_000,
        rounds: 3,
        clients: 64,
        workers: 64,
    };
    for (flag, value) in gust_bench::flags(USAGE)? {
        match flag.as_str() {
            "--gust" => options.gust = value.into(),
            "--echo" => options.echo = value.into(),
            "--runs" => options.runs = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--clients" => options.clients = value.parse()?,
            "--workers" => options.workers = value.parse()?,
            other => bail!("unknown flag {other} (--help lists the flags)"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    println!(
        "queue benchmark: {} runs per round, {} rounds, {} clients, {} workers",
        options.runs, options.rounds, options.clients, options.workers
    );
    let mut gust = Vec::new();
    let mut per_commit = Vec::new();
    let mut batched = Vec::new();
    for round in 1..=options.rounds {
        let g = gust_round(&options).await?;
        println!(
            "round {round}: gust {:.0} runs/s end to end, submit p50 {:.2} ms p99 {:.2} ms, {:.1} writes per commit",
            g.runs_per_s, g.p50_ms, g.p99_ms, g.writes_per_commit
        );
        let jobs = options.runs.min(5_000);
        let one = tokio::task::spawn_blocking(move || sqlite_round(jobs, 1)).await??;
        let many = tokio::task::spawn_blocking(move || sqlite_round(jobs * 4, 64)).await??;
        println!(
            "round {round}: SQLite {one:.0} jobs/s one commit per write, {many:.0} jobs/s 64 jobs per commit"
        );
        gust.push(g);
        per_commit.push(one);
        batched.push(many);
    }
    let runs_per_s = median(gust.iter().map(|g| g.runs_per_s).collect());
    let p50 = median(gust.iter().map(|g| g.p50_ms).collect());
    let p99 = median(gust.iter().map(|g| g.p99_ms).collect());
    let batch = median(gust.iter().map(|g| g.writes_per_commit).collect());
    let (one, many) = (median(per_commit), median(batched));
    println!();
    println!("median of {} rounds", options.rounds);
    println!("  gust queue, end to end:         {runs_per_s:>9.0} runs/s");
    println!("  gust submit → 202:              p50 {p50:.2} ms, p99 {p99:.2} ms");
    println!("  gust group commit:              {batch:.1} writes per commit");
    println!(
        "  SQLite, commit per write:       {one:>9.0} jobs/s  (gust / this = {:.2})",
        runs_per_s / one
    );
    println!(
        "  SQLite, 64 jobs per commit:     {many:>9.0} jobs/s  (gust / this = {:.2})",
        runs_per_s / many
    );
    Ok(())
}

struct GustRound {
    runs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    writes_per_commit: f64,
}

async fn gust_round(options: &Options) -> anyhow::Result<GustRound> {
    let data = tempfile::tempdir()?;
    let workers = options.workers.to_string();
    let host = Host::start(&options.gust, data.path(), &["--workers", &workers])?;
    // A fixed worker count and as many instances, as this benchmark has always measured
    // (by default the queue runs as many as admission lets through: see `scale`).
    host.deploy(
        "echo",
        &options.echo,
        json!({"max_instances": options.workers}),
    )
    .await?;
    let before = host.stats().await?;
    let started = Instant::now();
    let mut latencies = gust_bench::submit_runs(
        &host.http,
        std::slice::from_ref(&host.url),
        "echo",
        options.clients,
        options.runs,
        bytes::Bytes::from_static(INPUT),
    )
    .await?;
    // End to end: until every accepted run has reached a final state.
    let target = before["runs_ended_total"].as_u64().unwrap_or(0) + options.runs as u64;
    let after = gust_bench::wait_ended(&[&host], target, Duration::from_secs(600))
        .await?
        .remove(0);
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    let delta = |key: &str| {
        after[key].as_u64().unwrap_or(0) as f64 - before[key].as_u64().unwrap_or(0) as f64
    };
    let round = GustRound {
        runs_per_s: options.runs as f64 / elapsed,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        writes_per_commit: delta("run_writes_total") / delta("run_commits_total").max(1.0),
    };
    drop(host);
    Ok(round)
}

/// The same job lifecycle written straight to SQLite with the queue's durability: insert a
/// queued job, later mark it done; `per_commit` inserts to a transaction, then as many
/// updates to another (so 1 means a commit per insert and per update).
fn sqlite_round(jobs: usize, per_commit: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = rusqlite::Connection::open(dir.path().join("bench.db"))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT NOT NULL, input BLOB NOT NULL, output BLOB);",
    )?;
    let started = Instant::now();
    for first in (0..jobs).step_by(per_commit) {
        let ids = first..(first + per_commit).min(jobs);
        let tx = conn.transaction()?;
        for id in ids.clone() {
            tx.prepare_cached("INSERT INTO jobs (id, status, input) VALUES (?1, 'queued', ?2)")?
                .execute(rusqlite::params![id as i64, INPUT])?;
        }
        tx.commit()?;
        let tx = conn.transaction()?;
        for id in ids {
            tx.prepare_cached("UPDATE jobs SET status = 'done', output = ?2 WHERE id = ?1")?
                .execute(rusqlite::params![id as i64, INPUT])?;
        }
        tx.commit()?;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}
