//! Isolation, measured: the latency of a healthy agent alone, and while another agent is
//! attacked by 50 concurrent calls spinning on CPU and 50 growing memory past their limit.
//! Rounds alternate (baseline, then under attack); medians are reported.
//!
//! ```text
//! cargo run --release -p gust-bench --bin isolation -- --gust target/release/gust \
//!     --echo target/wasm32-wasip2/release/echo.wasm \
//!     --probe target/wasm32-wasip2/release/gust_probe.wasm [--calls 2000] [--rounds 3]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use gust_bench::{Host, TOKEN, median, quantile};
use serde_json::json;

struct Options {
    gust: PathBuf,
    echo: PathBuf,
    probe: PathBuf,
    calls: usize,
    rounds: usize,
}

const USAGE: &str = "\
usage: isolation [--gust PATH] [--echo PATH] [--probe PATH] [--calls N] [--rounds N]
A healthy agent's latency alone and while another agent is attacked.";

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        gust: "target/release/gust".into(),
        echo: "target/wasm32-wasip2/release/echo.wasm".into(),
        probe: "target/wasm32-wasip2/release/gust_probe.wasm".into(),
        calls: 2000,
        rounds: 3,
    };
    for (flag, value) in gust_bench::flags(USAGE)? {
        match flag.as_str() {
            "--gust" => options.gust = value.into(),
            "--echo" => options.echo = value.into(),
            "--probe" => options.probe = value.into(),
            "--calls" => options.calls = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            other => bail!("unknown flag {other} (--help lists the flags)"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let data = tempfile::tempdir()?;
    let host = Arc::new(Host::start(&options.gust, data.path(), &[])?);
    host.deploy("good", &options.echo, json!({})).await?;
    host.deploy(
        "bad",
        &options.probe,
        json!({"sync_timeout_s": 5, "memory_mib": 64}),
    )
    .await?;
    println!(
        "isolation benchmark: {} sequential calls to a healthy agent, alone and beside 50 spinning + 50 memory-bombing calls to another; {} rounds",
        options.calls, options.rounds
    );
    let (mut base_p99, mut attacked_p99, mut base_p50, mut attacked_p50) =
        (vec![], vec![], vec![], vec![]);
    for round in 1..=options.rounds {
        let base = healthy_latencies(&host, options.calls).await?;
        let attack = Attack::start(&host);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let attacked = healthy_latencies(&host, options.calls).await?;
        let refused = attack.stop().await;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "round {round}: alone p50 {:.3} ms p99 {:.3} ms; under attack p50 {:.3} ms p99 {:.3} ms ({refused} attack calls answered 429)",
            ms(quantile(&base, 0.5)),
            ms(quantile(&base, 0.99)),
            ms(quantile(&attacked, 0.5)),
            ms(quantile(&attacked, 0.99))
        );
        base_p50.push(ms(quantile(&base, 0.5)));
        base_p99.push(ms(quantile(&base, 0.99)));
        attacked_p50.push(ms(quantile(&attacked, 0.5)));
        attacked_p99.push(ms(quantile(&attacked, 0.99)));
    }
    let (b50, b99, a50, a99) = (
        median(base_p50),
        median(base_p99),
        median(attacked_p50),
        median(attacked_p99),
    );
    println!();
    println!("median of {} rounds", options.rounds);
    println!("  healthy agent alone:         p50 {b50:.3} ms, p99 {b99:.3} ms");
    println!("  healthy agent under attack:  p50 {a50:.3} ms, p99 {a99:.3} ms");
    println!("  p99 under attack / alone:    {:.2}", a99 / b99);
    Ok(())
}

async fn healthy_latencies(host: &Host, calls: usize) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let (status, _) = host.call("good", &json!({"hello": "world"})).await?;
        anyhow::ensure!(status == 200, "a healthy call failed: {status}");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

/// 100 clients hammering the bad agent until stopped.
struct Attack {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<usize>>,
}

impl Attack {
    fn start(host: &Arc<Host>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..100)
            .map(|i| {
                let (host, stop) = (Arc::clone(host), Arc::clone(&stop));
                let input = if i % 2 == 0 {
                    json!({"op": "spin"})
                } else {
                    json!({"op": "alloc", "mb": 200})
                };
                tokio::spawn(async move {
                    let mut refused = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let sent = host
                            .http
                            .post(format!("{}/v1/agents/bad/run", host.url))
                            .bearer_auth(TOKEN)
                            .json(&input)
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status().as_u16() == 429) {
                            refused += 1;
                        }
                    }
                    refused
                })
            })
            .collect();
        Self { stop, clients }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut refused = 0;
        for client in self.clients {
            refused += client.await.unwrap_or(0);
        }
        refused
    }
}
