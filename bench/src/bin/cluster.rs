//! Several hosts on one PostgreSQL (issue #15), on this machine, against a throwaway
//! PostgreSQL server (`gust_testkit::postgres::PgCluster`: Debian's PostgreSQL on a free
//! loopback port, `fsync` and `synchronous_commit` on — checked and printed at start):
//!
//! - **queue**: queued runs per second end to end (submit → every run final, as the `queue`
//!   benchmark measures it: the echo, push off, 64 clients, `--workers 64`), rounds
//!   interleaved: one host on SQLite, one host on PostgreSQL, two hosts on one PostgreSQL with
//!   the clients split between them, and the raw PostgreSQL floor
//!   ([`gust_bench::pg_floor`]: gust's statements, batches and concurrency without gust).
//!   Each PostgreSQL round gets a fresh database;
//! - **deploy**: two hosts on one database; the echo deployed on A again and again
//!   (alternately two versions, both compiled on both hosts beforehand); time from A's
//!   deploy answer to the first answer from B, polled every millisecond with a sync call,
//!   that carries the new deployment (`gust-deployment`);
//! - **failover**: three hosts with `--lease 5`; runs that each wait a few seconds in a host
//!   call (`bench/guests/waiting-echo`) are submitted, and once all run, the host holding the
//!   most is killed with SIGKILL; time from the kill until every run it held is started
//!   again elsewhere, and until every one is final;
//! - **sync**: sync req/s with wrk (as the `http` benchmark: server on CPU 0, wrk on CPU 1),
//!   one host on SQLite against one on PostgreSQL: the sync path touches no database.
//!
//! ```text
//! cluster --gust target/release/gust --echo target/wasm32-wasip2/release/echo.wasm \
//!   --waiting-echo target/wasm32-wasip2/release/waiting_echo.wasm \
//!   [--runs 20000] [--rounds 3] [--deploys 50] [--seconds 10] [--quick] \
//!   [--only queue,deploy,failover,sync]
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use gust_bench::pg_floor;
use gust_bench::wrk::{LOAD_CPU, SERVER_CPU, Target, rounds, table};
use gust_bench::{Host, median, quantile, spread, tagged};
use gust_testkit::postgres::PgCluster;
use serde_json::{Value, json};

/// The input of every queued echo run: 17 bytes, as the `queue` benchmark sends.
const INPUT: &[u8] = br#"{"job":"1234567"}"#;

/// The two floors: gust's statements as gust sends them (the floor of the goal), and the
/// same statements sent one at a time (what sending them together gains).
const FLOORS: [&str; 2] = ["raw PostgreSQL floor", "floor, one statement at a time"];

/// The input of the sync calls under wrk, as the `http` benchmark sends.
const SYNC_INPUT: &str = r#"{"say":"hi"}"#;

const USAGE: &str = "\
usage: cluster [--gust PATH] [--echo PATH] [--waiting-echo PATH] [--runs N] [--rounds N]
               [--clients N] [--workers N] [--deploys N] [--seconds N] [--connections N]
               [--failover-runs N] [--hold-ms N] [--lease S] [--quick]
               [--only queue,deploy,failover,sync]
Several hosts on one PostgreSQL: queued runs/s on SQLite, PostgreSQL, two hosts and the raw
PostgreSQL floor; deploy propagation between hosts; failover after kill -9; sync req/s on
SQLite and PostgreSQL. --quick: smaller sizes (--runs 2000 --rounds 2 --deploys 20
--seconds 3), which flags given after it override.";

struct Options {
    gust: PathBuf,
    echo: PathBuf,
    waiting_echo: PathBuf,
    /// Queued runs per round and configuration.
    runs: usize,
    /// Rounds of the queue, failover and sync parts.
    rounds: usize,
    clients: usize,
    workers: usize,
    deploys: usize,
    /// Seconds of each wrk run (sync part).
    seconds: u64,
    connections: usize,
    /// Runs in flight when a host is killed (failover part), at most 200 (one listing page).
    failover_runs: usize,
    /// How long each of those runs waits in its host call.
    hold_ms: u64,
    /// `--lease` of the failover hosts, seconds.
    lease: u64,
    /// The parts to run; all when `None`.
    only: Option<Vec<String>>,
}

impl Options {
    fn part(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == name))
    }
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        gust: "target/release/gust".into(),
        echo: "target/wasm32-wasip2/release/echo.wasm".into(),
        waiting_echo: "target/wasm32-wasip2/release/waiting_echo.wasm".into(),
        runs: 20_000,
        rounds: 3,
        clients: 64,
        workers: 64,
        deploys: 50,
        seconds: 10,
        connections: 32,
        failover_runs: 30,
        hold_ms: 3000,
        lease: 5,
        only: None,
    };
    let (pairs, switches) = gust_bench::flags_and_switches(USAGE, &["--quick"])?;
    if !switches.is_empty() {
        options.runs = 2000;
        options.rounds = 2;
        options.deploys = 20;
        options.seconds = 3;
    }
    for (flag, value) in pairs {
        match flag.as_str() {
            "--gust" => options.gust = value.into(),
            "--echo" => options.echo = value.into(),
            "--waiting-echo" => options.waiting_echo = value.into(),
            "--runs" => options.runs = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--clients" => options.clients = value.parse()?,
            "--workers" => options.workers = value.parse()?,
            "--deploys" => options.deploys = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--connections" => options.connections = value.parse()?,
            "--failover-runs" => options.failover_runs = value.parse()?,
            "--hold-ms" => options.hold_ms = value.parse()?,
            "--lease" => options.lease = value.parse()?,
            "--only" => {
                let parts: Vec<String> = value.split(',').map(str::to_owned).collect();
                for part in &parts {
                    ensure!(
                        ["queue", "deploy", "failover", "sync"].contains(&part.as_str()),
                        "unknown part {part} (queue, deploy, failover, sync)"
                    );
                }
                options.only = Some(parts);
            }
            other => bail!("unknown flag {other} (--help lists the flags)"),
        }
    }
    ensure!(
        (1..=200).contains(&options.failover_runs),
        "--failover-runs is 1 to 200"
    );
    ensure!(
        options.rounds > 0 && options.runs > 0,
        "--rounds and --runs must be positive"
    );
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    if options.part("sync") {
        for tool in ["wrk", "taskset"] {
            ensure!(
                std::process::Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok(),
                "{tool} is not installed (bench/run installs it with apt-get)"
            );
        }
    }
    let scratch = tempfile::tempdir()?;
    let pg = PgCluster::start().context("starting a throwaway PostgreSQL")?;
    let mut databases = 0;
    let mut database = |what: &str| {
        databases += 1;
        pg.create_database(&format!("{what}_{databases}"))
    };

    // The durability this is all measured with: PgCluster starts the server with both on;
    // read them back from the server itself.
    let settings = pg_floor::settings(&database("settings")?).await?;
    println!(
        "PostgreSQL: {}",
        settings
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for name in ["fsync", "synchronous_commit"] {
        ensure!(
            settings.iter().any(|(n, v)| n == name && v == "on"),
            "PostgreSQL's {name} is not on: the figures would not be durable ones"
        );
    }
    println!();

    if options.part("queue") {
        queue(&options, scratch.path(), &mut database).await?;
        println!();
    }
    if options.part("deploy") {
        deploys(&options, scratch.path(), &database("deploy")?).await?;
        println!();
    }
    if options.part("failover") {
        failover(&options, scratch.path(), &mut database).await?;
        println!();
    }
    if options.part("sync") {
        sync(&options, scratch.path(), &database("sync")?).await?;
    }
    Ok(())
}

/// Makes a fresh database named after what it is for, and answers its URL.
type Databases<'a> = dyn FnMut(&str) -> anyhow::Result<String> + 'a;

/// One round of one queue configuration, as `queue` reports it.
struct QueueReading {
    runs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Over all hosts: `run_writes_total / run_commits_total`.
    writes_per_commit: f64,
    /// Over all hosts: writes per run (3 when every run is one insert, one start and one
    /// finish; more when hosts race for a start and the loser's write finds it taken).
    writes_per_run: f64,
}

async fn queue(
    options: &Options,
    scratch: &Path,
    database: &mut Databases<'_>,
) -> anyhow::Result<()> {
    println!(
        "== queued runs end to end: {} runs a round, {} rounds, {} clients, --workers {} per host",
        options.runs, options.rounds, options.clients, options.workers
    );
    let names = [
        "one host, SQLite",
        "one host, PostgreSQL",
        "two hosts, one PostgreSQL",
    ];
    let mut gust: [Vec<QueueReading>; 3] = Default::default();
    let mut floor: [Vec<pg_floor::Reading>; 2] = Default::default();
    let mut round_trips = Vec::new();
    let mut commits = Vec::new();
    for round in 1..=options.rounds {
        for (i, name) in names.iter().enumerate() {
            let url = match i {
                0 => None,
                _ => Some(database("queue")?),
            };
            let hosts = if i == 2 { 2 } else { 1 };
            let reading = queue_round(options, scratch, url.as_deref(), hosts).await?;
            println!(
                "round {round}: {name:<26} {:>7.0} runs/s, submit p50 {:.2} ms p99 {:.2} ms, \
                 {:.1} writes per commit, {:.2} writes per run",
                reading.runs_per_s,
                reading.p50_ms,
                reading.p99_ms,
                reading.writes_per_commit,
                reading.writes_per_run
            );
            gust[i].push(reading);
        }
        for (i, name) in FLOORS.iter().enumerate() {
            let url = database("floor")?;
            let reading = pg_floor::run(&pg_floor::Load {
                url: url.clone(),
                runs: options.runs,
                submitters: options.clients,
                workers: options.workers,
                input: INPUT,
                one_at_a_time: i == 1,
            })
            .await?;
            println!(
                "round {round}: {name:<26} {:>7.0} runs/s, {:.1} writes per commit, writer busy \
                 {:.0} %, {:.0} µs per write of which PostgreSQL's CPU {:.0} µs",
                reading.runs_per_s,
                reading.writes_per_commit,
                reading.writer_busy * 100.0,
                reading.us_per_write,
                reading.server_us_per_write
            );
            floor[i].push(reading);
            if i == 0 {
                let round_trip = pg_floor::round_trip_us(&url, 2000).await?;
                let commit_rate = pg_floor::commits_per_s(&url, 300).await?;
                println!(
                    "round {round}: a round trip (prepared SELECT 1) {round_trip:.0} µs; \
                     {commit_rate:.0} commits/s of one connection committing alone"
                );
                round_trips.push(round_trip);
                commits.push(commit_rate);
            }
        }
    }
    println!();
    println!("median of {} rounds [min – max]", options.rounds);
    println!(
        "| configuration | runs/s end to end | submit → 202 p50 ms | p99 ms | writes per commit | writes per run |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, readings) in names.iter().zip(&gust) {
        let of = |f: fn(&QueueReading) -> f64| readings.iter().map(f).collect::<Vec<f64>>();
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.1} | {:.2} |",
            spread(&of(|r| r.runs_per_s)),
            median(of(|r| r.p50_ms)),
            median(of(|r| r.p99_ms)),
            median(of(|r| r.writes_per_commit)),
            median(of(|r| r.writes_per_run)),
        );
    }
    for (name, readings) in FLOORS.iter().zip(&floor) {
        println!(
            "| {name} | {} | – | – | {:.1} | 3.00 |",
            spread(&readings.iter().map(|r| r.runs_per_s).collect::<Vec<f64>>()),
            median(readings.iter().map(|r| r.writes_per_commit).collect()),
        );
    }
    let rate = |i: usize| median(gust[i].iter().map(|r| r.runs_per_s).collect());
    let (sqlite, postgres, two) = (rate(0), rate(1), rate(2));
    let floor_rate = median(floor[0].iter().map(|r| r.runs_per_s).collect());
    println!();
    for (name, readings) in FLOORS.iter().zip(&floor) {
        println!(
            "{name}: writer busy {:.0} % of the time, {:.0} µs of transaction per write, of \
             which the server process's CPU {:.0} µs",
            median(readings.iter().map(|r| r.writer_busy * 100.0).collect()),
            median(readings.iter().map(|r| r.us_per_write).collect()),
            median(readings.iter().map(|r| r.server_us_per_write).collect()),
        );
    }
    println!(
        "a round trip (prepared SELECT 1): {:.0} µs; one connection committing alone: {:.0} commits/s",
        median(round_trips),
        median(commits),
    );
    println!("PostgreSQL / SQLite, one host: {:.2}", postgres / sqlite);
    println!(
        "two hosts / one host on PostgreSQL: {:.2} (two hosts share these 2 cores with \
         PostgreSQL and the load: they cannot beat one here)",
        two / postgres
    );
    println!(
        "gust on PostgreSQL / raw floor: {:.2} (goal ≥ 0.5: {})",
        postgres / floor_rate,
        met(postgres / floor_rate >= 0.5)
    );
    println!(
        "gust on PostgreSQL, one host: {postgres:.0} runs/s (goal ≥ 5,000: {})",
        met(postgres >= 5000.0)
    );
    Ok(())
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "not met" }
}

/// The host arguments for the database at `url` (none: SQLite in the data folder).
fn database_args<'a>(url: Option<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = Vec::new();
    if let Some(url) = url {
        args.extend(["--database", url]);
    }
    args.extend_from_slice(extra);
    args
}

/// `count` hosts on the database at `url` (SQLite when `None`), each on its own data folder
/// under `scratch`, with the echo deployed on the first (`config`) and serving on all.
async fn start_hosts(
    options: &Options,
    scratch: &Path,
    url: Option<&str>,
    count: usize,
    extra: &[&str],
    (agent, component, config): (&str, &Path, Value),
) -> anyhow::Result<Vec<Host>> {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let args = database_args(url, extra);
    let folder = scratch.join(format!("hosts-{}", STARTED.fetch_add(1, Ordering::Relaxed)));
    let mut hosts = Vec::new();
    for i in 0..count {
        hosts.push(Host::start(
            &options.gust,
            &folder.join(format!("host-{i}")),
            &args,
        )?);
    }
    hosts[0].deploy(agent, component, config).await?;
    let input = if agent == "echo" {
        json!({"say": "hi"})
    } else {
        json!({"wait_ms": 0})
    };
    for host in &hosts[1..] {
        until(
            Duration::from_secs(30),
            "every host to serve the agent",
            || async { Ok(host.call(agent, &input).await?.0 == 200) },
        )
        .await?;
    }
    Ok(hosts)
}

async fn queue_round(
    options: &Options,
    scratch: &Path,
    url: Option<&str>,
    count: usize,
) -> anyhow::Result<QueueReading> {
    let workers = options.workers.to_string();
    // As `queue`: a fixed worker count and as many instances of the echo.
    let hosts = start_hosts(
        options,
        scratch,
        url,
        count,
        &["--workers", &workers],
        (
            "echo",
            &options.echo,
            json!({"max_instances": options.workers}),
        ),
    )
    .await?;
    let refs: Vec<&Host> = hosts.iter().collect();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let mut before = Vec::new();
    for host in &hosts {
        before.push(host.stats().await?);
    }
    let sum = |stats: &[Value], key: &str| -> f64 {
        stats
            .iter()
            .map(|s| s[key].as_u64().unwrap_or(0) as f64)
            .sum()
    };
    let started = Instant::now();
    let mut latencies = gust_bench::submit_runs(
        &hosts[0].http,
        &urls,
        "echo",
        options.clients,
        options.runs,
        Bytes::from_static(INPUT),
    )
    .await?;
    let target = sum(&before, "runs_ended_total") as u64 + options.runs as u64;
    let after = gust_bench::wait_ended(&refs, target, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let delta = |key: &str| sum(&after, key) - sum(&before, key);
    Ok(QueueReading {
        runs_per_s: options.runs as f64 / elapsed,
        p50_ms: quantile(&latencies, 0.50).as_secs_f64() * 1000.0,
        p99_ms: quantile(&latencies, 0.99).as_secs_f64() * 1000.0,
        writes_per_commit: delta("run_writes_total") / delta("run_commits_total").max(1.0),
        writes_per_run: delta("run_writes_total") / options.runs as f64,
    })
}

async fn deploys(options: &Options, scratch: &Path, url: &str) -> anyhow::Result<()> {
    println!(
        "== deploy propagation: two hosts on one database, {} deploys on A, B polled every 1 ms",
        options.deploys
    );
    let hosts = start_hosts(
        options,
        scratch,
        Some(url),
        2,
        &[],
        ("echo", &options.echo, json!({"max_instances": 64})),
    )
    .await?;
    let (a, b) = (&hosts[0], &hosts[1]);
    // A second version, the same code under another digest: each host compiles it when it
    // hears of the upload, before the measurement (as users upload before deploying).
    let bytes = std::fs::read(&options.echo)
        .with_context(|| format!("reading {}", options.echo.display()))?;
    a.admin(
        reqwest::Method::POST,
        "/v1/agents/echo/versions",
        Some(tagged(&bytes, "v2")),
        None,
    )
    .await?;
    until(
        Duration::from_secs(120),
        "B to compile both versions",
        || async { Ok(b.stats().await?["compiles_total"].as_u64().unwrap_or(0) >= 2) },
    )
    .await?;

    let input = json!({"say": "hi"});
    // (deploy request's duration, deploy answer → B's first answer from it, B's polls)
    let mut seen = Vec::new();
    for i in 0..options.deploys {
        let version = if i % 2 == 0 { 2 } else { 1 };
        let sent = Instant::now();
        let deployment = a.deploy_version("echo", version).await?;
        let answered = Instant::now();
        let mut polls = 0;
        let reached = loop {
            let poll = Instant::now();
            let (status, served_by) = b.call("echo", &input).await?;
            polls += 1;
            ensure!(status == 200, "B answered {status} during deploy {}", i + 1);
            if served_by == deployment {
                break Instant::now().saturating_duration_since(answered);
            }
            ensure!(
                answered.elapsed() < Duration::from_secs(30),
                "B did not serve deployment {deployment} within 30 s"
            );
            tokio::time::sleep_until((poll + Duration::from_millis(1)).into()).await;
        };
        seen.push((answered - sent, reached, polls));
        // Let the swap settle on both before the next deploy.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reached: Vec<Duration> = seen.iter().map(|s| s.1).collect();
    reached.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let took: Vec<f64> = seen.iter().map(|s| ms(s.0)).collect();
    let polls: Vec<f64> = seen.iter().map(|s| s.2 as f64).collect();
    println!(
        "| deploys | A's deploy request ms, median [min – max] | A's answer → B serves it: p50 ms | p99 ms | max ms | B's polls per deploy, median |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} [{:.1} – {:.1}] | {:.1} | {:.1} | {:.1} | {:.0} |",
        seen.len(),
        median(took.clone()),
        took.iter().copied().fold(f64::INFINITY, f64::min),
        took.iter().copied().fold(0.0, f64::max),
        ms(quantile(&reached, 0.50)),
        ms(quantile(&reached, 0.99)),
        ms(reached[reached.len() - 1]),
        median(polls),
    );
    let p99 = quantile(&reached, 0.99);
    println!(
        "deploy propagation p99 {:.1} ms (goal ≤ 1 s: {})",
        ms(p99),
        met(p99 <= Duration::from_secs(1))
    );
    Ok(())
}

async fn failover(
    options: &Options,
    scratch: &Path,
    database: &mut Databases<'_>,
) -> anyhow::Result<()> {
    println!(
        "== failover: three hosts with --lease {}, {} runs each waiting {} ms, the busiest host killed (SIGKILL)",
        options.lease, options.failover_runs, options.hold_ms
    );
    println!(
        "| round | runs the killed host held | kill → all started again elsewhere, s | kill → all final, s | all final less the run's wait, s |"
    );
    println!("|---|---|---|---|---|");
    let mut restarted_s = Vec::new();
    let mut final_s = Vec::new();
    for round in 1..=options.rounds {
        let url = database("failover")?;
        let (restarted, ended, held) = failover_round(options, scratch, &url).await?;
        let hold = Duration::from_millis(options.hold_ms);
        println!(
            "| {round} | {held} | {:.2} | {:.2} | {:.2} |",
            restarted.as_secs_f64(),
            ended.as_secs_f64(),
            ended.saturating_sub(hold).as_secs_f64()
        );
        restarted_s.push(restarted.as_secs_f64());
        final_s.push(ended.saturating_sub(hold).as_secs_f64());
    }
    let goal = options.lease as f64 + 2.0;
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "kill → every run started again elsewhere: worst {:.2} s; kill → every run final, less \
         the {} ms the run itself waits: worst {:.2} s (goal ≤ lease + 2 s = {goal:.0} s: {})",
        worst(&restarted_s),
        options.hold_ms,
        worst(&final_s),
        met(worst(&final_s) <= goal)
    );
    Ok(())
}

/// One failover round: (kill → every run the victim held started again elsewhere, kill →
/// every run final, how many it held).
async fn failover_round(
    options: &Options,
    scratch: &Path,
    url: &str,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let lease = options.lease.to_string();
    let mut hosts = start_hosts(
        options,
        scratch,
        Some(url),
        3,
        &["--lease", &lease],
        (
            "waiting",
            &options.waiting_echo,
            json!({"max_instances": 64}),
        ),
    )
    .await?;
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let input = Bytes::from(json!({ "wait_ms": options.hold_ms }).to_string());
    gust_bench::submit_runs(
        &hosts[0].http,
        &urls,
        "waiting",
        options.failover_runs,
        options.failover_runs,
        input,
    )
    .await?;
    // Every run executing somewhere; who holds how many.
    let waiting = Instant::now();
    let running = loop {
        let mut running = Vec::new();
        for host in &hosts {
            running.push(host.stats().await?["runs_running"].as_u64().unwrap_or(0));
        }
        if running.iter().sum::<u64>() == options.failover_runs as u64 {
            break running;
        }
        ensure!(
            waiting.elapsed() < Duration::from_secs(10),
            "the runs were not all running within 10 s: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (victim, held) = running
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|(_, n)| *n)
        .context("no hosts")?;
    ensure!(held > 0, "no host holds a run");
    let killed = Instant::now();
    hosts[victim].kill()?;
    let witness = &hosts[(victim + 1) % hosts.len()];

    let deadline =
        Duration::from_millis(options.hold_ms) * 3 + Duration::from_secs(options.lease + 30);
    let mut restarted = None;
    let ended = loop {
        let page = witness
            .admin(
                reqwest::Method::GET,
                &format!("/v1/agents/waiting/runs?limit={}", options.failover_runs),
                None,
                None,
            )
            .await?;
        let runs = page["runs"].as_array().context("no runs in the listing")?;
        ensure!(
            runs.len() == options.failover_runs,
            "the listing shows {} runs",
            runs.len()
        );
        let is_final = |r: &Value| !matches!(r["status"].as_str(), Some("queued" | "running"));
        let again: Vec<&Value> = runs
            .iter()
            .filter(|r| r["attempts"].as_u64().unwrap_or(0) >= 2)
            .collect();
        let started_again = again.iter().filter(|r| r["status"] != "queued").count() as u64;
        if restarted.is_none() && started_again >= held {
            restarted = Some(killed.elapsed());
        }
        if runs.iter().all(is_final) {
            let elapsed = killed.elapsed();
            ensure!(
                again.len() as u64 == held,
                "{} runs were attempted again, but the killed host held {held}",
                again.len()
            );
            let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] != "succeeded").collect();
            ensure!(failed.is_empty(), "runs did not succeed: {failed:?}");
            break elapsed;
        }
        ensure!(
            killed.elapsed() < deadline,
            "runs were not all final {} s after the kill",
            deadline.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((restarted.unwrap_or(ended), ended, held))
}

async fn sync(options: &Options, scratch: &Path, url: &str) -> anyhow::Result<()> {
    println!(
        "== sync calls: one host on SQLite, one on PostgreSQL; {} rounds of {} s, {} connections; \
         servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}",
        options.rounds, options.seconds, options.connections
    );
    let mut hosts = Vec::new();
    let mut targets = Vec::new();
    for (name, url) in [
        ("one host, SQLite", None),
        ("one host, PostgreSQL", Some(url)),
    ] {
        let host = Host::start_on(
            Some(SERVER_CPU),
            &options.gust,
            &scratch.join(format!("sync-{}", hosts.len())),
            &database_args(url, &[]),
        )?;
        // As `http`: the echo takes microseconds, so as many calls in as connections.
        host.deploy("echo", &options.echo, json!({"max_instances": 64}))
            .await?;
        targets.push(Target::keyed_echo(name, &host).await?);
        hosts.push(host);
    }
    let readings = rounds(
        &targets,
        SYNC_INPUT,
        scratch,
        options.connections,
        options.seconds,
        options.rounds,
    )?;
    let medians = table("host", &targets, &readings);
    println!();
    println!(
        "PostgreSQL / SQLite: {:.3} (the sync path touches no database: expected ≈ 1)",
        medians[1] / medians[0]
    );
    let errors: u64 = readings.iter().flatten().map(|r| r.errors).sum();
    ensure!(
        errors == 0,
        "{errors} requests failed: the figures above are not valid"
    );
    Ok(())
}

/// Polls `check` every 10 ms until it answers true, for at most `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "waited {} s for {what}",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
