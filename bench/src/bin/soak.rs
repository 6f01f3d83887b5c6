//! Soak: mixed load for a while (10 minutes by default), reporting the host's resident
//! memory, threads and open file descriptors at the start, every minute, and at the end —
//! so a leak shows as a trend. Not part of CI.
//!
//! Load: sync calls, queued runs, redeploys between two components, clients that give up
//! mid-call, malformed uploads, and unauthorised requests, all at once.
//!
//! ```text
//! cargo run --release -p gust-bench --bin soak -- --gust target/release/gust \
//!     --echo target/wasm32-wasip2/release/echo.wasm \
//!     --probe target/wasm32-wasip2/release/gust_probe.wasm [--seconds 600]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use gust_bench::{Host, TOKEN, process_usage};
use serde_json::json;

const USAGE: &str = "\
usage: soak [--gust PATH] [--echo PATH] [--probe PATH] [--seconds N]
Mixed load for a while, reporting resident memory, threads and open files over time.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut gust, mut echo, mut probe, mut seconds) = (
        PathBuf::from("target/release/gust"),
        PathBuf::from("target/wasm32-wasip2/release/echo.wasm"),
        PathBuf::from("target/wasm32-wasip2/release/gust_probe.wasm"),
        600u64,
    );
    for (flag, value) in gust_bench::flags(USAGE)? {
        match flag.as_str() {
            "--gust" => gust = value.into(),
            "--echo" => echo = value.into(),
            "--probe" => probe = value.into(),
            "--seconds" => seconds = value.parse()?,
            other => bail!("unknown flag {other} (--help lists the flags)"),
        }
    }
    let data = tempfile::tempdir()?;
    let host = Arc::new(Host::start(&gust, data.path(), &[])?);
    host.deploy("echo", &echo, json!({"max_instances": 16}))
        .await?;
    host.deploy(
        "probe",
        &probe,
        json!({"max_instances": 16, "sync_timeout_s": 5}),
    )
    .await?;
    let components = Arc::new([std::fs::read(&echo)?, std::fs::read(&probe)?]);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let server_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for kind in 0..16 {
        let (host, stop, sent, errors, components) = (
            Arc::clone(&host),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&server_errors),
            Arc::clone(&components),
        );
        tasks.push(tokio::spawn(async move {
            let impatient = reqwest::Client::builder()
                .timeout(Duration::from_millis(50))
                .build()
                .expect("a client");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let url = &host.url;
                let request = match kind {
                    0..=5 => host.http.post(format!("{url}/v1/agents/echo/run")).json(&json!({"n": n})),
                    6..=9 => host.http.post(format!("{url}/v1/agents/echo/runs")).json(&json!({"n": n})),
                    10..=11 => impatient
                        .post(format!("{url}/v1/agents/probe/run"))
                        .json(&json!({"op": if n.is_multiple_of(2) { "spin" } else { "sleep" }, "ms": 10_000})),
                    12 => {
                        // Redeploy the flip agent between two components every half second.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let bytes = components[(n % 2) as usize].clone();
                        let uploaded = host
                            .http
                            .post(format!("{url}/v1/agents/flip/versions"))
                            .bearer_auth(TOKEN)
                            .body(bytes)
                            .send()
                            .await;
                        if uploaded.is_ok() {
                            host.http.post(format!("{url}/v1/agents/flip/deploy")).json(&json!({}))
                        } else {
                            continue;
                        }
                    }
                    13 => host
                        .http
                        .post(format!("{url}/v1/agents/junk/versions"))
                        .body((0..4096).map(|i| (i * 7 + n) as u8).collect::<Vec<u8>>()),
                    14 => host.http.get(format!("{url}/v1/agents/echo")).bearer_auth("wrong"),
                    _ => host.http.get(format!("{url}/v1/agents/echo/runs?limit=20")),
                };
                let request = if kind == 14 { request } else { request.bearer_auth(TOKEN) };
                if let Ok(response) = request.send().await {
                    if response.status().is_server_error() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = response.bytes().await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let started = Instant::now();
    let report = |label: &str| {
        let (rss, threads, fds) = process_usage(host.pid());
        println!(
            "{label:>8}: RSS {:.1} MiB, {threads} threads, {fds} fds, {} requests, {} server errors",
            rss as f64 / 1024.0,
            sent.load(Ordering::Relaxed),
            server_errors.load(Ordering::Relaxed)
        );
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    report("start");
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(60).min(Duration::from_secs(seconds))).await;
        report(&format!("{}s", started.elapsed().as_secs()));
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    report("end");
    let stats = host.stats().await?;
    println!("stats at the end: {stats}");
    Ok(())
}
