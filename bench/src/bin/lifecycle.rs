//! Deploys, restarts and memory, on a release `gust serve`:
//!
//! - **redeploy**: under steady sync load, deploy another (precompiled) version, again and
//!   again; time from the deploy answer to the first call served by the new version, and
//!   every call's status (none may fail);
//! - **restart**: N agents deployed (Rust echo, plus Python and JavaScript echo when given),
//!   the host killed with SIGKILL and started again on its data folder; time from the
//!   process start until every agent has served a call, from the precompiled cache
//!   (`compiles_total` must stay 0); and the resident memory then, idle;
//! - **memory in flight**: 1,000 sync calls of the Rust echo waiting inside a host call
//!   (`bench/guests/waiting-echo`) at once; resident memory per call in flight, split into
//!   the guest's linear memory and what the call costs beyond it (fiber stack, tables, the
//!   host's heap), read from `smaps` by [`gust_bench::resident`].
//!
//! Every agent's component gets a distinct digest (a custom section naming it), so each
//! has its own compiled artifact, as distinct agents would.
//!
//! ```text
//! lifecycle --gust target/release/gust --echo target/wasm32-wasip2/release/echo.wasm \
//!   --waiting-echo target/wasm32-wasip2/release/waiting_echo.wasm [--python <py-echo.wasm>] \
//!   [--js <js-echo.wasm>] [--agents 100] [--rounds 3] [--redeploys 10] [--in-flight 1000] \
//!   [--only redeploy|restart|memory]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gust_bench::resident::{self, Resident};
use gust_bench::{Host, median, process_usage, resident_kib, spread, tagged};
use serde_json::json;
use tokio::sync::Mutex;

struct Options {
    gust: PathBuf,
    echo: PathBuf,
    waiting_echo: PathBuf,
    python: Option<PathBuf>,
    js: Option<PathBuf>,
    agents: usize,
    rounds: usize,
    redeploys: usize,
    in_flight: usize,
    /// One part alone (`redeploy`, `restart` or `memory`); all three when `None`.
    only: Option<String>,
}

const USAGE: &str = "\
usage: lifecycle [--gust PATH] [--echo PATH] [--waiting-echo PATH] [--python PATH] [--js PATH]
                 [--agents N] [--rounds N] [--redeploys N] [--in-flight N]
                 [--only redeploy|restart|memory]
Redeploy under load, restart of many agents after SIGKILL, memory per call in flight.";

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        gust: "target/release/gust".into(),
        echo: "target/wasm32-wasip2/release/echo.wasm".into(),
        waiting_echo: "target/wasm32-wasip2/release/waiting_echo.wasm".into(),
        python: None,
        js: None,
        agents: 100,
        rounds: 3,
        redeploys: 10,
        in_flight: 1000,
        only: None,
    };
    for (flag, value) in gust_bench::flags(USAGE)? {
        match flag.as_str() {
            "--gust" => options.gust = value.into(),
            "--echo" => options.echo = value.into(),
            "--waiting-echo" => options.waiting_echo = value.into(),
            "--python" => options.python = Some(value.into()),
            "--js" => options.js = Some(value.into()),
            "--agents" => options.agents = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--redeploys" => options.redeploys = value.parse()?,
            "--in-flight" => options.in_flight = value.parse()?,
            "--only" => options.only = Some(value),
            other => bail!("unknown flag {other} (--help lists the flags)"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let scratch = tempfile::tempdir()?;
    let part = |name: &str| options.only.as_deref().is_none_or(|only| only == name);
    if let Some(only) = &options.only {
        ensure!(
            ["redeploy", "restart", "memory"].contains(&only.as_str()),
            "--only takes redeploy, restart or memory, not {only}"
        );
    }
    if part("redeploy") {
        redeploy(&options, scratch.path()).await?;
        println!();
    }
    if part("restart") {
        restart(&options, scratch.path()).await?;
        println!();
    }
    if part("memory") {
        in_flight(&options, scratch.path()).await?;
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A response seen by the load: when it arrived, its status, the deployment that served it.
type Seen = (Instant, u16, u32);

async fn redeploy(options: &Options, scratch: &Path) -> anyhow::Result<()> {
    let host = Host::start(&options.gust, &scratch.join("redeploy"), &[])?;
    let config = json!({ "max_instances": 64 });
    host.deploy("echo", &options.echo, config).await?;
    // A second version: the same code under another digest, uploaded (and so compiled and
    // cached) before the measurement, as a user uploads before deploying.
    let second = tagged(&read(&options.echo)?, "v2");
    host.admin(
        reqwest::Method::POST,
        "/v1/agents/echo/versions",
        Some(second),
        None,
    )
    .await?;

    let host = Arc::new(host);
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let clients = 16;
    let mut load = Vec::new();
    for _ in 0..clients {
        let (host, stop, seen) = (Arc::clone(&host), Arc::clone(&stop), Arc::clone(&seen));
        load.push(tokio::spawn(async move {
            let input = json!({"say": "hi"});
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, deployment) = host.call("echo", &input).await.unwrap_or((0, 0));
                mine.push((Instant::now(), status, deployment));
            }
            seen.lock().await.extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // (deploy answered at, how long the deploy took, the new deployment, a call sent right
    // after the answer: its latency and the deployment that served it)
    let mut deploys = Vec::new();
    for i in 0..options.redeploys {
        let version = if i % 2 == 0 { 2 } else { 1 };
        let sent = Instant::now();
        let deployment = host.deploy_version("echo", version).await?;
        let answered = Instant::now();
        let (status, served_by) = host.call("echo", &json!({"say": "next"})).await?;
        let first_call = answered.elapsed();
        ensure!(status == 200, "the call after deploy {i} answered {status}");
        deploys.push((answered, answered - sent, deployment, first_call, served_by));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    let mut seen = seen.lock().await.clone();
    seen.sort_by_key(|s| s.0);
    let failed = seen.iter().filter(|s| s.1 != 200).count();

    println!("== redeploy under load ({clients} clients calling the echo without pause)");
    println!(
        "| redeploy | deploy took ms | first load call on the new version, ms after the answer | call sent after the answer: ms, served by the new version |"
    );
    println!("|---|---|---|---|");
    let mut first_ms = Vec::new();
    for (i, (answered, took, deployment, first_call, served_by)) in deploys.iter().enumerate() {
        // A call may be served by the new version before the answer reaches the caller
        // (the registry is swapped first): that counts as 0.
        let first_load = seen
            .iter()
            .find(|s| s.2 == *deployment)
            .map(|s| s.0.saturating_duration_since(*answered));
        let first = first_load.unwrap_or(*first_call).min(*first_call);
        first_ms.push(first.as_secs_f64() * 1000.0);
        println!(
            "| {} | {:.2} | {} | {:.3}, {} |",
            i + 1,
            took.as_secs_f64() * 1000.0,
            first_load.map_or("none".to_owned(), |d| format!(
                "{:.3}",
                d.as_secs_f64() * 1000.0
            )),
            first_call.as_secs_f64() * 1000.0,
            if served_by == deployment { "yes" } else { "NO" },
        );
    }
    let worst = first_ms.iter().copied().fold(0.0, f64::max);
    println!(
        "deploy answer → first call served by the new version: median {:.3} ms, worst {:.3} ms (goal ≤ 50 ms)",
        median(first_ms.clone()),
        worst
    );
    println!("calls under load: {}, failed: {failed}", seen.len());
    ensure!(failed == 0, "{failed} calls failed during redeploys");
    ensure!(
        deploys.iter().all(|d| d.2 == d.4),
        "a call sent after a deploy answer ran on the old version"
    );
    Ok(())
}

async fn restart(options: &Options, scratch: &Path) -> anyhow::Result<()> {
    let data = scratch.join("restart");
    // The agents: Python and JavaScript echoes when given (a few: each compiles for seconds
    // and its artifact is tens of MB), the rest Rust. Each source is read once; every agent
    // is it under its own tag.
    let mut sources: Vec<(&str, Vec<u8>, usize)> = Vec::new();
    for (lang, source) in [("py", &options.python), ("js", &options.js)] {
        if let Some(source) = source {
            sources.push((lang, read(source)?, 5));
        }
    }
    let others: usize = sources.iter().map(|(_, _, count)| count).sum();
    sources.push((
        "rust",
        read(&options.echo)?,
        options.agents.saturating_sub(others),
    ));
    let languages: BTreeMap<&str, usize> = sources
        .iter()
        .map(|(lang, _, count)| (*lang, *count))
        .collect();
    let agents: Vec<String> = sources
        .iter()
        .flat_map(|(lang, _, count)| (0..*count).map(move |i| format!("{lang}-{i:03}")))
        .collect();
    {
        let host = Host::start(&options.gust, &data, &[])?;
        let started = Instant::now();
        for (lang, bytes, count) in &sources {
            for i in 0..*count {
                let name = format!("{lang}-{i:03}");
                host.deploy_bytes(&name, tagged(bytes, &name), json!({}))
                    .await?;
            }
        }
        eprintln!(
            "deployed {} agents in {:.1} s",
            agents.len(),
            started.elapsed().as_secs_f64()
        );
        // Dropping the host kills it with SIGKILL: no shutdown work helps the next start.
    }

    let (mut listening, mut serving, mut rss_idle) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..options.rounds {
        let started = Instant::now();
        let host = Arc::new(Host::start(&options.gust, &data, &[])?);
        let listened = started.elapsed();
        let mut calls = Vec::new();
        for name in &agents {
            let (host, name) = (Arc::clone(&host), name.clone());
            calls.push(tokio::spawn(async move {
                host.call(&name, &json!({"say": "hi"})).await
            }));
        }
        for task in calls {
            let (status, _) = task.await??;
            ensure!(
                status == 200,
                "an agent answered {status} after the restart"
            );
        }
        let all_served = started.elapsed();
        let stats = host.stats().await?;
        ensure!(
            stats["compiles_total"] == 0,
            "the restart compiled components: {stats}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = resident_kib(host.pid());
        eprintln!(
            "restart {}: listening after {:.0} ms, every agent served after {:.0} ms, RSS idle {} MiB",
            round + 1,
            listened.as_secs_f64() * 1000.0,
            all_served.as_secs_f64() * 1000.0,
            rss / 1024
        );
        listening.push(listened.as_secs_f64() * 1000.0);
        serving.push(all_served.as_secs_f64() * 1000.0);
        rss_idle.push(rss as f64 / 1024.0);
    }
    println!(
        "== restart after SIGKILL with {} agents ({languages:?})",
        agents.len()
    );
    println!(
        "| what | median [min – max] of {} restarts |",
        options.rounds
    );
    println!("|---|---|");
    println!("| process start → listening, ms | {} |", spread(&listening));
    println!(
        "| process start → every agent served a call, ms (goal ≤ 1000) | {} |",
        spread(&serving)
    );
    println!("| RSS idle afterwards, MiB | {} |", spread(&rss_idle));
    Ok(())
}

async fn in_flight(options: &Options, scratch: &Path) -> anyhow::Result<()> {
    let n = options.in_flight;
    let limit = n.to_string();
    let host = Arc::new(Host::start(
        &options.gust,
        &scratch.join("in-flight"),
        &[
            "--max-instances",
            &limit,
            "--max-connections",
            &(n + 100).to_string(),
        ],
    )?);
    host.deploy(
        "waiting-echo",
        &options.waiting_echo,
        json!({ "max_instances": n }),
    )
    .await?;
    // Warm: the slots and code pages a call touches are resident from here on.
    for _ in 0..50 {
        host.call("waiting-echo", &json!({"say": "hi"})).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = host.pid();
    let before = resident::of_process(pid)?;

    let wait_ms = 15_000;
    let mut calls = Vec::new();
    for _ in 0..n {
        let host = Arc::clone(&host);
        calls.push(tokio::spawn(async move {
            host.call("waiting-echo", &json!({"say": "hi", "wait_ms": wait_ms}))
                .await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = host.stats().await?["live_instances"].as_u64().unwrap_or(0);
        if live as usize >= n {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {live} of {n} calls got in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = resident::of_process(pid)?;
    let (_, threads, fds) = process_usage(pid);
    for task in calls {
        let (status, _) = task.await??;
        ensure!(status == 200, "a call in flight answered {status}");
    }

    let per_call =
        |f: fn(&Resident) -> u64| f(&during).saturating_sub(f(&before)) as f64 / n as f64;
    println!("== memory with {n} calls in flight (the Rust echo, waiting in a host call)");
    println!("| what | KiB |");
    println!("|---|---|");
    println!("| RSS before (warm, idle) | {} |", before.total);
    println!("| RSS with {n} calls in flight | {} |", during.total);
    println!("| per call in flight, all | {:.1} |", per_call(|r| r.total));
    println!(
        "| per call: the guest's linear memory | {:.1} |",
        per_call(|r| r.memories)
    );
    println!(
        "| of which the memory image's pages read from the artifact (page cache, shared) | {:.1} |",
        per_call(|r| r.shared_images)
    );
    println!(
        "| **per call beyond the guest's memory** (goal ≤ 64) | **{:.1}** |",
        per_call(Resident::beyond_memories)
    );
    println!(
        "| of which the fiber stack | {:.1} |",
        per_call(|r| r.stacks)
    );
    println!("| of which tables | {:.1} |", per_call(|r| r.tables));
    println!(
        "| of which the host's heap and the rest (Store, instances' state, connection, tasks) | {:.1} |",
        per_call(Resident::host)
    );
    println!("(threads {threads}, open files {fds} during the calls)");
    Ok(())
}
