//! The waiting workload (issue: agents that wait): calls that spend their time waiting on an
//! upstream, as agents wait on models and tools, thousands at once, on a host with default
//! settings.
//!
//! - **sync ramp**: for each count N, a fresh host; the Rust waiting echo deployed; N
//!   connections opened, then N calls sent at once, each waiting on an upstream that
//!   answers after `--wait-ms` (a slow HTTP server in another process: this program
//!   started as `scale upstream`). Reported: calls that succeeded (a 429 is a failure), wall
//!   time from the first send to the last answer, peak `live_instances`, peak resident size
//!   of the host and memory per waiting call. Each host meets the burst twice in a row, and
//!   with `--idle S` a third time after S seconds without calls.
//! - **queued**: N runs submitted, each waiting on the upstream; the time from the last
//!   accepted submission until every run ended, and how many the upstream answered.
//! - **fairness**: an echo's latency idle, then while N calls wait and 4 calls of a
//!   CPU-bound guest spin (2 per core).
//!
//! ```text
//! target/release/scale --gust target/release/gust \
//!   --waiting-echo target/wasm32-wasip2/release/waiting_echo.wasm \
//!   --probe target/wasm32-wasip2/release/gust_probe.wasm --echo …/echo.wasm \
//!   [--ramp 1000,5000,10000] [--queued 10000] [--wait-ms 1000] [--only sync|queued|fairness]
//! ```
//!
//! `--upstream https` serves the upstream as model APIs are served: over TLS (a self-signed
//! certificate the hosts trust with `--outbound-ca-certs`), HTTP/2 offered by ALPN, at most
//! 100 requests at once on a connection (`SETTINGS_MAX_CONCURRENT_STREAMS`, as Google's
//! front ends).
//!
//! It raises its open-file limit (hard and soft; the host it starts inherits them), since
//! 10,000 calls with an outgoing connection each need over 20,000 descriptors.
//! `SCALE_SERVE_ARGS` adds `gust serve` flags to the hosts of the sync, queued, fairness and
//! outbound parts (e.g. `--cpu-lanes 0`, to see what the lanes change).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use gust_bench::{
    Host, Process, TOKEN, cpu_and_faults, quantile, resident_and_private_kib, resident_kib,
};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

struct Options {
    gust: PathBuf,
    waiting_echo: PathBuf,
    echo: PathBuf,
    probe: PathBuf,
    python: Option<PathBuf>,
    /// The Python and JavaScript test probes (`gust build` in tests/guests/*-probe).
    probes: Vec<(String, PathBuf)>,
    rounds: usize,
    seconds: u64,
    ramp: Vec<usize>,
    queued: usize,
    fairness: usize,
    wait_ms: u64,
    only: Option<String>,
    /// The upstream over HTTPS and HTTP/2 (`--upstream https`).
    https: bool,
    /// The upstream's certificate, for the hosts to trust.
    upstream_ca: Option<PathBuf>,
    /// A third sync burst on the same host after this long without calls (`--idle`).
    idle: Option<Duration>,
}

/// Requests at once on one HTTP/2 connection to the HTTPS upstream.
const UPSTREAM_STREAMS: u32 = 100;

const USAGE: &str = "\
usage: scale [--gust PATH] [--waiting-echo PATH] [--echo PATH] [--probe PATH] [--python PATH]
             [--python-probe PATH] [--js-probe PATH]
             [--ramp 1000,5000,10000] [--queued 10000] [--fairness 10000] [--wait-ms 1000]
             [--rounds 3] [--seconds 10] [--upstream http|https] [--idle SECONDS]
             [--only sync|queued|fairness|standby|outbound|languages]
Thousands of calls waiting on an upstream, on a host with default settings.";

fn options() -> anyhow::Result<Options> {
    let wasm = PathBuf::from("target/wasm32-wasip2/release");
    let mut options = Options {
        gust: PathBuf::from("target/release/gust"),
        waiting_echo: wasm.join("waiting_echo.wasm"),
        echo: wasm.join("echo.wasm"),
        probe: wasm.join("gust_probe.wasm"),
        python: None,
        probes: Vec::new(),
        rounds: 3,
        seconds: 10,
        ramp: vec![1000, 5000, 10_000],
        queued: 10_000,
        fairness: 10_000,
        wait_ms: 1000,
        only: None,
        https: false,
        upstream_ca: None,
        idle: None,
    };
    for (flag, value) in gust_bench::flags(USAGE)? {
        match flag.as_str() {
            "--gust" => options.gust = value.into(),
            "--waiting-echo" => options.waiting_echo = value.into(),
            "--echo" => options.echo = value.into(),
            "--probe" => options.probe = value.into(),
            "--python" => options.python = Some(value.into()),
            "--python-probe" => options.probes.push(("python".into(), value.into())),
            "--js-probe" => options.probes.push(("javascript".into(), value.into())),
            "--rounds" => options.rounds = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--ramp" => {
                options.ramp = value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--queued" => options.queued = value.parse()?,
            "--fairness" => options.fairness = value.parse()?,
            "--wait-ms" => options.wait_ms = value.parse()?,
            "--only" => options.only = Some(value),
            "--idle" => options.idle = Some(Duration::from_secs(value.parse()?)),
            "--upstream" => {
                options.https = match value.as_str() {
                    "http" => false,
                    "https" => true,
                    other => anyhow::bail!("--upstream {other}: http or https\n{USAGE}"),
                }
            }
            other => anyhow::bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::args().nth(1).as_deref() == Some("upstream") {
        return runtime.block_on(upstream(std::env::args().nth(2).map(PathBuf::from)));
    }
    runtime.block_on(benchmarks(options()?))
}

async fn benchmarks(mut options: Options) -> anyhow::Result<()> {
    let certificate = tempfile::tempdir()?;
    let ca = options
        .https
        .then(|| certificate.path().join("upstream-ca.pem"));
    let upstream = Upstream::start(ca.as_deref())?;
    options.upstream_ca = ca;
    let options = options;
    let runs = |part: &str| options.only.as_deref().is_none_or(|only| only == part);
    println!(
        "scale: upstream ({}) answers after {} ms, in its own process (pid {})",
        if options.https {
            "HTTPS, HTTP/2 with 100 streams a connection"
        } else {
            "HTTP/1.1"
        },
        options.wait_ms,
        upstream.process.0.id()
    );
    if runs("sync") {
        println!("\nsync calls at once (default settings), each waiting on the upstream:");
        for &n in &options.ramp {
            sync_step(&options, &upstream, n).await?;
        }
    }
    if runs("queued") {
        queued(&options, &upstream).await?;
    }
    if runs("fairness") {
        fairness(&options, &upstream).await?;
    }
    if runs("standby") {
        match &options.python {
            Some(python) => standby(&options, python).await?,
            None => println!("\nstandby: skipped (no --python echo component given)"),
        }
    }
    if runs("outbound") {
        outbound(&options, &upstream).await?;
    }
    if runs("languages") {
        for (language, probe) in &options.probes {
            languages(options.gust.as_path(), &upstream, language, probe).await?;
        }
    }
    Ok(())
}

/// Python and JavaScript guests waiting on the upstream: memory per waiting call (200 in
/// flight), then as many calls at once as that says fit a host whose memory budget is
/// 8 GiB (at most 3,000), all expected to succeed. Memory is the host's private resident
/// memory (`RssAnon`), which the budget weighs; the resident size (`VmRSS`) is printed
/// beside it, though it counts the pages of a guest's memory image that every instance reads
/// (held once) again for each instance.
async fn languages(
    gust: &Path,
    upstream: &Upstream,
    language: &str,
    probe: &Path,
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let host = Host::start(
        gust,
        &scratch.path().join("data"),
        &["--allow-private-network", "--memory-budget-mib", "8192"],
    )?;
    host.deploy("probe", probe, waiting_config(upstream))
        .await?;
    let input = json!({"op": "fetch", "url": upstream.url(5000)});
    let quick = json!({"op": "fetch", "url": upstream.url(0)});
    for _ in 0..10 {
        anyhow::ensure!(host.call("probe", &quick).await?.0 == 200, "warm-up call");
    }
    let in_flight = |n: usize| {
        let host = &host;
        let input = input.clone();
        async move {
            let connections = connect(&host.url, n).await?;
            let (rss, private) = resident_and_private_kib(host.pid());
            let before = (private, rss);
            let sampler = Sampler::start(host);
            let calls = send_all(connections, "probe", &input, Instant::now())?;
            let statuses = futures(calls).await;
            let peak = sampler.stop().await;
            let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
            anyhow::Ok((ok, before, peak))
        }
    };
    let (ok, (private_before, rss_before), peak) = in_flight(200).await?;
    let per_call_kib = peak.private_kib.saturating_sub(private_before) as f64 / 200.0;
    let rss_per_call_kib = peak.rss_kib.saturating_sub(rss_before) as f64 / 200.0;
    let fit = ((8u64 << 20) as f64 / per_call_kib) as usize;
    let n = fit.min(3000);
    println!(
        "\n{language} probe waiting on the upstream: 200 in flight, {ok} succeeded, \
         {per_call_kib:.0} KiB of private memory per waiting call ({} MiB at the peak; \
         RSS {rss_per_call_kib:.0} KiB per call, {} MiB at the peak); \
         8 GiB holds about {fit}",
        peak.private_kib / 1024,
        peak.rss_kib / 1024
    );
    let (ok, _, peak) = in_flight(n).await?;
    println!(
        "  {n} at once (budget 8 GiB): {ok} succeeded; peak live_instances {}, \
         peak private memory {} MiB, peak RSS {} MiB",
        peak.live_instances,
        peak.private_kib / 1024,
        peak.rss_kib / 1024
    );
    Ok(())
}

/// The Python echo at a fixed 50 calls per second, open loop (each call sent at its time
/// whatever the earlier ones did, its latency counted from that time, as wrk2 does), on a
/// host with warm standby and one without, in alternating rounds.
async fn standby(options: &Options, python: &Path) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let with = Host::start(&options.gust, &scratch.path().join("with"), &[])?;
    let without = Host::start(
        &options.gust,
        &scratch.path().join("without"),
        &["--no-warm-standby"],
    )?;
    for host in [&with, &without] {
        host.deploy("python", python, json!({})).await?;
        host.call("python", &json!({"say": "warm"})).await?;
    }
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        // ABBA order, so neither side always runs second.
        let order: [(&Host, bool); 2] = if round % 2 == 0 {
            [(&with, true), (&without, false)]
        } else {
            [(&without, false), (&with, true)]
        };
        for (host, standby) in order {
            let latencies = open_loop(host, "python", 50, options.seconds).await?;
            if standby { &mut on } else { &mut off }.extend(latencies);
        }
    }
    on.sort();
    off.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\nwarm standby, Python echo at 50 calls/s over HTTP ({} rounds of {} s each, alternating): \
         with standby p50 {:.2} ms p99 {:.2} ms; without p50 {:.2} ms p99 {:.2} ms; live_instances at rest {} vs {}",
        options.rounds,
        options.seconds,
        ms(quantile(&on, 0.5)),
        ms(quantile(&on, 0.99)),
        ms(quantile(&off, 0.5)),
        ms(quantile(&off, 0.99)),
        with.stats().await?["live_instances"],
        without.stats().await?["live_instances"],
    );
    Ok(())
}

/// Calls `agent` at `rate` per second for `seconds`, each on time; latencies from the time
/// each was due.
async fn open_loop(
    host: &Host,
    agent: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::new();
    for _ in 0..rate * seconds {
        let due = ticks.tick().await;
        let (http, url) = (
            host.http.clone(),
            format!("{}/v1/agents/{agent}/run", host.url),
        );
        calls.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(TOKEN)
                .json(&json!({"say": "hi"}))
                .send()
                .await?;
            anyhow::ensure!(response.status() == 200, "{}", response.status());
            response.bytes().await?;
            anyhow::Ok(due.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(calls.len());
    for call in calls {
        latencies.push(call.await??);
    }
    Ok(latencies)
}

/// Outgoing requests per second to the local upstream (answering at once): made by guests
/// (the probe sends 50 in a row per call, 32 calls at a time), and by a plain reqwest client
/// with 32 tasks, in alternating rounds.
async fn outbound(options: &Options, upstream: &Upstream) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let host = host(options, scratch.path())?;
    host.deploy("probe", &options.probe, waiting_config(upstream))
        .await?;
    let url = upstream.url(0);
    let seconds = Duration::from_secs(options.seconds);
    let (mut guests, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..options.rounds {
        let before = upstream.answered();
        let start = Instant::now();
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let (http, call_url, url) = (
                    host.http.clone(),
                    format!("{}/v1/agents/probe/run", host.url),
                    url.clone(),
                );
                tokio::spawn(async move {
                    while start.elapsed() < seconds {
                        let body: Value = http
                            .post(&call_url)
                            .bearer_auth(TOKEN)
                            .json(&json!({"op": "fetch-many", "key": url, "n": 50}))
                            .send()
                            .await?
                            .json()
                            .await?;
                        anyhow::ensure!(body["failed"] == 0, "{body}");
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for caller in callers {
            caller.await??;
        }
        guests.push((upstream.answered() - before) as f64 / start.elapsed().as_secs_f64());

        let client = upstream.http.clone();
        let before = upstream.answered();
        let start = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    while start.elapsed() < seconds {
                        let response = client.get(&url).send().await?;
                        anyhow::ensure!(response.status() == 200, "{}", response.status());
                        response.bytes().await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        plain.push((upstream.answered() - before) as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "\noutbound requests/s to a local upstream: from guests {}, plain reqwest {} (median [min – max] of {} rounds)",
        gust_bench::spread(&guests),
        gust_bench::spread(&plain),
        options.rounds
    );
    Ok(())
}

/// A fresh host with default settings, except that guests may reach the loopback upstream.
fn host(options: &Options, scratch: &Path) -> anyhow::Result<Host> {
    let extra = std::env::var("SCALE_SERVE_ARGS").unwrap_or_default();
    let mut args = vec!["--allow-private-network"];
    let ca = options.upstream_ca.as_deref().and_then(Path::to_str);
    if let Some(ca) = ca {
        args.extend(["--outbound-ca-certs", ca]);
    }
    args.extend(extra.split_whitespace());
    Host::start(&options.gust, &scratch.join("data"), &args)
}

fn waiting_config(upstream: &Upstream) -> Value {
    json!({"allowed_hosts": [upstream.origin()], "sync_timeout_s": 120})
}

async fn sync_step(options: &Options, upstream: &Upstream, n: usize) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let host = host(options, scratch.path())?;
    host.deploy("waiting", &options.waiting_echo, waiting_config(upstream))
        .await?;
    let input = json!({"upstream": upstream.url(options.wait_ms)});
    for _ in 0..20 {
        anyhow::ensure!(host.call("waiting", &input).await?.0 == 200, "warm-up call");
    }
    // The first burst on a fresh host touches every pool slot for the first time; the
    // second finds them mapped, as a host that has been serving does.
    for burst in ["fresh host", "again"] {
        burst_of(&host, upstream, &input, n, burst).await?;
    }
    // A host that served a burst and then went quiet: the allocator hands the heap pages it
    // no longer uses back to the system after a while (jemalloc's decay), the pool keeps its
    // slots' pages (`keep_resident`).
    if let Some(idle) = options.idle {
        tokio::time::sleep(idle).await;
        let burst = format!("after {} s idle", idle.as_secs());
        burst_of(&host, upstream, &input, n, &burst).await?;
    }
    Ok(())
}

async fn burst_of(
    host: &Host,
    upstream: &Upstream,
    input: &Value,
    n: usize,
    burst: &str,
) -> anyhow::Result<()> {
    let connections = connect(&host.url, n).await?;
    let before_kib = resident_kib(host.pid());
    let answered_before = upstream.answered();

    let (cpu_before, faults_before) = cpu_seconds_and_faults(host.pid());
    // The upstream and this load generator share the machine's cores with the host during
    // the burst, so their CPU is reported beside the host's.
    let upstream_before = cpu_seconds(upstream.pid());
    let generator_before = cpu_seconds(std::process::id());
    let sampler = Sampler::start(host);
    let calls = send_all(connections, "waiting", input, Instant::now())?;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut wall = Duration::ZERO;
    for call in calls {
        let (status, at) = call.await?;
        *statuses.entry(status).or_default() += 1;
        wall = wall.max(at);
    }
    let peak = sampler.stop().await;
    let (cpu_after, faults_after) = cpu_seconds_and_faults(host.pid());
    let cpu = cpu_after - cpu_before;
    // Zero, not a wrapped difference, if the host's counters could not be read at the end.
    let faults = faults_after.saturating_sub(faults_before);
    let upstream_cpu = (cpu_seconds(upstream.pid()) - upstream_before).max(0.0);
    let generator_cpu = cpu_seconds(std::process::id()) - generator_before;
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let per_call = peak.rss_kib.saturating_sub(before_kib) as f64 / n as f64;
    println!(
        "  {n:>6} calls ({burst}): {ok} succeeded ({:.1} %), statuses {statuses:?}; wall {:.2} s; peak live_instances {} \
         (at {:.2} s); host CPU {cpu:.2} s ({:.0} µs per call, {:.1} page faults per call); CPU of the upstream \
         {upstream_cpu:.2} s, of the load generator {generator_cpu:.2} s; RSS {:.0} MiB before, peak {:.0} MiB; \
         {per_call:.1} KiB per waiting call; upstream answered {}",
        100.0 * ok as f64 / n as f64,
        wall.as_secs_f64(),
        peak.live_instances,
        peak.live_peak_at.as_secs_f64(),
        cpu * 1e6 / n as f64,
        faults as f64 / n as f64,
        before_kib as f64 / 1024.0,
        peak.rss_kib as f64 / 1024.0,
        upstream.answered() - answered_before,
    );
    Ok(())
}

async fn queued(options: &Options, upstream: &Upstream) -> anyhow::Result<()> {
    let n = options.queued;
    let scratch = tempfile::tempdir()?;
    let host = host(options, scratch.path())?;
    // Polled runs: the push path is the queue benchmark's and the push tests' subject.
    host.deploy("waiting", &options.waiting_echo, waiting_config(upstream))
        .await?;
    let input = json!({"upstream": upstream.url(options.wait_ms)});
    let answered_before = upstream.answered();
    let ended_before = host.stats().await?["runs_ended_total"]
        .as_u64()
        .unwrap_or(0);
    let sampler = Sampler::start(&host);
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (http, url, next, input) = (
                host.http.clone(),
                host.url.clone(),
                Arc::clone(&next),
                input.clone(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                    let response = http
                        .post(format!("{url}/v1/agents/waiting/runs"))
                        .bearer_auth(TOKEN)
                        .json(&input)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status() == 202,
                        "submission refused: {}",
                        response.status()
                    );
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let submitted = start.elapsed();
    let last_submission = Instant::now();
    let target = ended_before + n as u64;
    loop {
        let ended = host.stats().await?["runs_ended_total"]
            .as_u64()
            .unwrap_or(0);
        if ended >= target {
            break;
        }
        anyhow::ensure!(
            last_submission.elapsed() < Duration::from_secs(300),
            "{} of {n} runs ended after 5 minutes",
            ended - ended_before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_last = last_submission.elapsed();
    let peak = sampler.stop().await;
    let failed = host
        .admin(
            reqwest::Method::GET,
            "/v1/agents/waiting/runs?status=failed",
            None,
            None,
        )
        .await?;
    let failed = failed["runs"].as_array().map_or(0, Vec::len);
    println!(
        "\nqueued: {n} runs submitted in {:.2} s; all ended {:.2} s after the last submission; \
         upstream answered {}; failed runs (first page): {failed}; peak live_instances {}; peak RSS {:.0} MiB",
        submitted.as_secs_f64(),
        after_last.as_secs_f64(),
        upstream.answered() - answered_before,
        peak.live_instances,
        peak.rss_kib as f64 / 1024.0,
    );
    Ok(())
}

async fn fairness(options: &Options, upstream: &Upstream) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let host = host(options, scratch.path())?;
    host.deploy("echo", &options.echo, json!({})).await?;
    // It spins until its deadline cuts it off, after the measurement.
    host.deploy("spin", &options.probe, json!({"sync_timeout_s": 30}))
        .await?;
    // Calls past the per-host bound on outbound connections wait for one until the first
    // wave's 20 s end: time enough for both waves.
    let mut config = waiting_config(upstream);
    config["outbound_timeout_s"] = json!(120);
    host.deploy("waiting", &options.waiting_echo, config)
        .await?;
    let measure = |seconds: u64| {
        let host_url = host.url.clone();
        let http = host.http.clone();
        async move {
            let mut latencies = Vec::new();
            let until = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < until {
                let start = Instant::now();
                let response = http
                    .post(format!("{host_url}/v1/agents/echo/run"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"say": "hi"}))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "echo: {}", response.status());
                response.bytes().await?;
                latencies.push(start.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies.sort();
            anyhow::Ok(latencies)
        }
    };
    let idle = measure(10).await?;

    // The load: `fairness` calls waiting long enough to outlast the measurement, and four
    // spinning (2 per core on this machine).
    let n = options.fairness;
    let connections = connect(&host.url, n).await?;
    let waiting = send_all(
        connections,
        "waiting",
        &json!({"upstream": upstream.url(20_000)}),
        Instant::now(),
    )?;
    let spinning: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (host.http.clone(), host.url.clone());
            tokio::spawn(async move {
                http.post(format!("{url}/v1/agents/spin/run"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"op": "spin"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    // Until the waiting calls are all in.
    let settle = Instant::now();
    loop {
        let live = host.stats().await?["instances_admitted"]
            .as_u64()
            .unwrap_or(0);
        if live >= (n as u64 + 4) * 99 / 100 || settle.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admitted = host.stats().await?["instances_admitted"]
        .as_u64()
        .unwrap_or(0);
    let loaded = measure(10).await?;
    let spun: Vec<u16> = futures(spinning).await;
    let waited = futures(waiting).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\nfairness: echo idle p50 {:.2} ms p99 {:.2} ms ({} calls); with {admitted} instances admitted \
         ({n} waiting, 4 spinning): p50 {:.2} ms p99 {:.2} ms ({} calls); goal p99 ≤ idle p99 + 20 ms; \
         spinning calls answered {spun:?} (504: cut off at their deadline, as they should be); \
         waiting calls answered 200: {}",
        ms(quantile(&idle, 0.5)),
        ms(quantile(&idle, 0.99)),
        idle.len(),
        ms(quantile(&loaded, 0.5)),
        ms(quantile(&loaded, 0.99)),
        loaded.len(),
        waited.iter().filter(|(s, _)| *s == 200).count(),
    );
    Ok(())
}

/// CPU time process `pid` has used, user and system, in seconds (0 when unreadable).
fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_and_faults(pid).0
}

/// CPU seconds and minor page faults of process `pid` so far, from one reading (zeros when
/// unreadable).
fn cpu_seconds_and_faults(pid: u32) -> (f64, u64) {
    cpu_and_faults(pid).map_or((0.0, 0), |(cpu, faults)| (cpu.as_secs_f64(), faults))
}

async fn futures<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

/// One sync call of `agent` with `input` on each connection, all sent at once; each task
/// answers its status (0 when the request failed) and when its answer was read, from `start`.
fn send_all(
    connections: Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    agent: &str,
    input: &Value,
    start: Instant,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<(u16, Duration)>>> {
    let body = Bytes::from(serde_json::to_vec(input)?);
    let path = format!("/v1/agents/{agent}/run");
    Ok(connections
        .into_iter()
        .map(|mut sender| {
            let request = Request::post(path.as_str())
                .header("host", "gust")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .expect("a request");
            tokio::spawn(async move {
                let status = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.into_body().collect().await;
                        status
                    }
                    Err(_) => 0,
                };
                (status, start.elapsed())
            })
        })
        .collect())
}

/// `n` HTTP/1.1 connections to `url`, opened 256 at a time: the calls are sent once all are
/// open, so the figures measure the host, not connection set-up.
async fn connect(
    url: &str,
    n: usize,
) -> anyhow::Result<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>> {
    let addr = url
        .strip_prefix("http://")
        .context("an http:// host")?
        .to_owned();
    let mut senders = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(256) {
        let opened: Vec<_> = batch
            .iter()
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let stream = tokio::net::TcpStream::connect(&addr).await?;
                    stream.set_nodelay(true)?;
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(connection);
                    anyhow::Ok(sender)
                })
            })
            .collect();
        for sender in opened {
            senders.push(sender.await??);
        }
    }
    Ok(senders)
}

/// The host's peaks while a measurement runs: resident size and `live_instances`, read
/// every 20 ms.
struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Peak>,
}

#[derive(Default)]
struct Peak {
    rss_kib: u64,
    /// `RssAnon`: see [`resident_and_private_kib`].
    private_kib: u64,
    live_instances: u64,
    /// When `live_instances` last grew, from the sampler's start.
    live_peak_at: Duration,
}

impl Sampler {
    fn start(host: &Host) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (pid, url) = (host.pid(), host.url.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut peak = Peak::default();
            let started = Instant::now();
            loop {
                let (rss, private) = resident_and_private_kib(pid);
                peak.rss_kib = peak.rss_kib.max(rss);
                peak.private_kib = peak.private_kib.max(private);
                let stats = async {
                    http.get(format!("{url}/v1/stats"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await?
                        .json::<Value>()
                        .await
                };
                if let Ok(stats) = stats.await {
                    let live = stats["live_instances"].as_u64().unwrap_or(0);
                    if live > peak.live_instances {
                        peak.live_instances = live;
                        peak.live_peak_at = started.elapsed();
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return peak,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> Peak {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The slow upstream, in its own process.
struct Upstream {
    process: Process,
    /// `http://…` or `https://…`, no path.
    origin: String,
    /// Trusts the upstream's certificate.
    http: reqwest::Client,
}

impl Upstream {
    /// Starts `scale upstream` in its own process; over HTTPS when `ca` is where it is to
    /// write its certificate.
    fn start(ca: Option<&Path>) -> anyhow::Result<Self> {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.arg("upstream");
        if let Some(ca) = ca {
            command.arg(ca);
        }
        let mut child = command.stdout(std::process::Stdio::piped()).spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .context("the upstream's address")?
            .to_owned();
        let mut http = reqwest::Client::builder();
        if let Some(ca) = ca {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
        }
        Ok(Self {
            process: Process(child),
            origin: format!("{}://{addr}", if ca.is_some() { "https" } else { "http" }),
            http: http.build()?,
        })
    }

    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    fn url(&self, wait_ms: u64) -> String {
        format!("{}/wait?ms={wait_ms}", self.origin)
    }

    /// Requests it has answered so far: counted by the upstream, not by the host.
    fn answered(&self) -> u64 {
        let http = self.http.clone();
        let url = format!("{}/count", self.origin);
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?
                .block_on(async { http.get(url).send().await.ok()?.text().await.ok() })?
                .trim()
                .parse()
                .ok()
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or(0)
    }
}

/// `scale upstream [CA]`: answers `GET /wait?ms=N` after N milliseconds and `GET /count` with
/// how many waits it answered. Prints `listening on <address>`. Given `CA`, it serves HTTPS
/// with a self-signed certificate for 127.0.0.1 written there, HTTP/2 offered by ALPN with
/// [`UPSTREAM_STREAMS`] requests at once on a connection.
async fn upstream(ca: Option<PathBuf>) -> anyhow::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(65_535)?;
    let tls = match ca {
        Some(ca) => {
            let (acceptor, pem) = gust_testkit::tls::self_signed()?;
            std::fs::write(ca, pem)?;
            Some(acceptor)
        }
        None => None,
    };
    println!("listening on {}", listener.local_addr()?);
    let answered = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let answered = Arc::clone(&answered);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let answered = Arc::clone(&answered);
                async move {
                    let body = if request.uri().path() == "/count" {
                        answered.load(Ordering::Relaxed).to_string()
                    } else {
                        let ms = request
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("ms="))
                            .and_then(|ms| ms.parse().ok())
                            .unwrap_or(1000);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        answered.fetch_add(1, Ordering::Relaxed);
                        "the model's answer".to_owned()
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            let Some(tls) = tls else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                return;
            };
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let _ = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .max_concurrent_streams(UPSTREAM_STREAMS)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            };
        });
    }
}

/// As high as this process may set it (root may raise the hard limit too).
fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let wanted = 1 << 18;
    let current = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: Some(wanted),
        maximum: Some(wanted.max(current.maximum.unwrap_or(0))),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: current.maximum,
                maximum: current.maximum,
            },
        );
    }
}
