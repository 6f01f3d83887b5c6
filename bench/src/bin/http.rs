//! Sync throughput over HTTP, with wrk, side by side:
//!
//! - gust serving the echo example (a fresh instance per call, as always), with an invoke key;
//! - the same gust with wasmtime's default engine settings (`--engine-tuning
//!   wasmtime-defaults`), to show what gust's tuning buys end to end;
//! - with `--wasmtime`, `wasmtime serve -S cli` serving `bench/peers/wasi-http-echo`, the same echo as a
//!   wasi:http component;
//! - a raw hyper server answering a fixed body (`raw_hyper`): the physical limit's HTTP part;
//! - with `--hyper-wasmtime`, that server running the echo in a bare wasmtime embedding per
//!   request (`examples/hyper_wasmtime.rs`): the limit's two parts sharing one core.
//!
//! Every server runs on CPU 0 alone and wrk on CPU 1 alone (`taskset`). After a warm-up,
//! rounds alternate between the servers; medians of the rounds are reported with their
//! spread, and the ratios of gust to its peers.
//!
//! ```text
//! http --gust target/release/gust --echo target/wasm32-wasip2/release/echo.wasm \
//!   --wasmtime <wasmtime-cli 48.0.8> --wasi-echo target/wasm32-wasip2/release/wasi_http_echo.wasm \
//!   --raw-hyper target/release/raw_hyper [--hyper-wasmtime target/release/examples/hyper_wasmtime] \
//!   [--rounds 5] [--seconds 10] [--connections 32] [--floor-us F]
//! ```

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gust_bench::wrk::{LOAD_CPU, SERVER_CPU, Target, rounds, table};
use gust_bench::{Host, Process};
use serde_json::json;

const INPUT: &str = r#"{"say":"hi"}"#;

// The servers' names, as the table prints them.
const GUST_DEFAULTS: &str = "gust, wasmtime default settings";
const WASMTIME_SERVE: &str = "wasmtime serve";
const RAW_HYPER: &str = "raw hyper";
const HYPER_WASMTIME: &str = "raw hyper + bare wasmtime";

struct Options {
    gust: PathBuf,
    echo: PathBuf,
    /// `wasmtime serve` is measured when given.
    wasmtime: Option<PathBuf>,
    wasi_echo: PathBuf,
    raw_hyper: PathBuf,
    hyper_wasmtime: Option<PathBuf>,
    rounds: usize,
    seconds: u64,
    connections: usize,
    /// The bare-wasmtime floor per call (criterion's `bare-wasmtime-gust-settings`, measured
    /// in the same `bench/run`), in µs.
    floor_us: Option<f64>,
}

const USAGE: &str = "\
usage: http [--gust PATH] [--echo PATH] [--wasmtime PATH] [--wasi-echo PATH]
            [--raw-hyper PATH] [--hyper-wasmtime PATH] [--rounds N] [--seconds N]
            [--connections N] [--floor-us F]
Sync throughput under wrk of gust, gust with wasmtime's defaults, raw hyper, and when their
paths are given `wasmtime serve` (--wasmtime) and raw hyper running the echo in a bare
wasmtime embedding (--hyper-wasmtime); other paths default to the release builds under
target/.";

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        gust: "target/release/gust".into(),
        echo: "target/wasm32-wasip2/release/echo.wasm".into(),
        wasmtime: None,
        wasi_echo: "target/wasm32-wasip2/release/wasi_http_echo.wasm".into(),
        raw_hyper: "target/release/raw_hyper".into(),
        hyper_wasmtime: None,
        rounds: 5,
        seconds: 10,
        connections: 32,
        floor_us: None,
    };
    for (flag, value) in gust_bench::flags(USAGE)? {
        match flag.as_str() {
            "--gust" => options.gust = value.into(),
            "--echo" => options.echo = value.into(),
            "--wasmtime" => options.wasmtime = Some(value.into()),
            "--wasi-echo" => options.wasi_echo = value.into(),
            "--raw-hyper" => options.raw_hyper = value.into(),
            "--hyper-wasmtime" => options.hyper_wasmtime = Some(value.into()),
            "--floor-us" => options.floor_us = Some(value.parse()?),
            "--rounds" => options.rounds = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--connections" => options.connections = value.parse()?,
            other => bail!("unknown flag {other} (--help lists the flags)"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    for tool in ["wrk", "taskset"] {
        ensure!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed (bench/run installs it with apt-get)"
        );
    }
    let scratch = tempfile::tempdir()?;

    let (gust, gust_host) = start_gust(&options, &scratch.path().join("gust"), &[]).await?;
    let (gust_defaults, _gust_defaults_host) = start_gust(
        &options,
        &scratch.path().join("gust-defaults"),
        &["--engine-tuning", "wasmtime-defaults"],
    )
    .await?;
    let wasmtime = match &options.wasmtime {
        Some(path) => Some(start_wasmtime(path, &options.wasi_echo)?),
        None => None,
    };
    let (_raw, raw_url) = start_listening(&options.raw_hyper, &[])?;
    let echo = options.echo.to_string_lossy();
    let combined = match &options.hyper_wasmtime {
        Some(path) => Some(start_listening(path, &["--echo", &echo])?),
        None => None,
    };

    let bare = |name, url: &String| Target {
        name,
        url: url.clone(),
        headers: vec![],
    };
    let mut targets = vec![
        gust,
        Target {
            name: GUST_DEFAULTS,
            ..gust_defaults
        },
        bare(RAW_HYPER, &raw_url),
    ];
    if let Some((_, url)) = &wasmtime {
        targets.push(bare(WASMTIME_SERVE, url));
    }
    if let Some((_, url)) = &combined {
        targets.push(bare(HYPER_WASMTIME, url));
    }
    let http = reqwest::Client::new();
    for target in &targets {
        check_answer(&http, target).await?;
    }

    let readings = rounds(
        &targets,
        INPUT,
        scratch.path(),
        options.connections,
        options.seconds,
        options.rounds,
    )?;
    let gust_rss = gust_bench::resident_kib(gust_host.pid());

    println!(
        "{} rounds of {} s, {} connections; servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}",
        options.rounds, options.seconds, options.connections
    );
    let medians = table("server", &targets, &readings);
    let median = |name| {
        targets
            .iter()
            .position(|t| t.name == name)
            .map(|i| medians[i])
    };
    let (gust, raw) = (medians[0], median(RAW_HYPER).unwrap_or(f64::NAN));
    println!();
    if let Some(defaults) = median(GUST_DEFAULTS) {
        println!("gust / gust with wasmtime defaults: {:.2}", gust / defaults);
    }
    if let Some(wasmtime) = median(WASMTIME_SERVE) {
        println!("gust / wasmtime serve: {:.2} (goal ≥ 3)", gust / wasmtime);
    }
    println!("gust / raw hyper: {:.2} (goal ≥ 0.5)", gust / raw);
    print!("µs per request on the server core:");
    for (target, median) in targets.iter().zip(&medians) {
        print!(" {} {:.1};", target.name, 1e6 / median);
    }
    println!();
    let limit = options.floor_us.map(|floor| {
        // The physical limit of a sync call on one core: raw hyper's CPU time per request
        // (it saturates the server core) plus the bare-wasmtime floor of one call.
        let limit = 1e6 / (1e6 / raw + floor);
        println!(
            "physical limit on one core: 1 / (raw hyper {:.1} µs + bare wasmtime {floor:.1} µs) = {limit:.0} req/s; \
             gust {gust:.0} req/s = {:.2} of it (goal ≥ 0.8)",
            1e6 / raw,
            gust / limit
        );
        limit
    });
    if let Some(both) = median(HYPER_WASMTIME) {
        println!(
            "raw hyper + bare wasmtime in one server: {both:.0} req/s{}; gust = {:.2} of it",
            limit.map_or_else(String::new, |l| format!(" = {:.2} of the limit", both / l)),
            gust / both
        );
    }
    println!("gust RSS after the runs: {} MiB", gust_rss / 1024);
    let errors: u64 = readings.iter().flatten().map(|r| r.errors).sum();
    ensure!(
        errors == 0,
        "{errors} requests failed: the figures above are not valid"
    );
    Ok(())
}

/// A gust host with the echo example deployed and an invoke key for it.
async fn start_gust(
    options: &Options,
    data: &Path,
    args: &[&str],
) -> anyhow::Result<(Target, Host)> {
    let host = Host::start_on(Some(SERVER_CPU), &options.gust, data, args)?;
    // The echo takes microseconds: as many calls at once as there are connections, on a
    // deployment sized for that rather than the host's per-agent default.
    host.deploy("echo", &options.echo, json!({ "max_instances": 64 }))
        .await?;
    let target = Target::keyed_echo("gust", &host).await?;
    Ok((target, host))
}

fn start_wasmtime(wasmtime: &Path, wasi_echo: &Path) -> anyhow::Result<(Process, String)> {
    // Port 0: it binds a free port and says which, so no other process can take it between
    // choosing and binding.
    let mut child = Command::new("taskset")
        .args(["-c", SERVER_CPU])
        .arg(wasmtime)
        .args(["serve", "-S", "cli", "--addr", "127.0.0.1:0"])
        .arg(wasi_echo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", wasmtime.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let process = Process(child);
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .context("wasmtime serve exited before serving")??;
        if let Some(url) = line.trim().strip_prefix("Serving HTTP on ") {
            break url.to_owned();
        }
    };
    // Keep reading its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((process, url))
}

/// Starts `program args --listen 127.0.0.1:0` on the server CPU; it says where it listens.
fn start_listening(program: &Path, args: &[&str]) -> anyhow::Result<(Process, String)> {
    let mut child = Command::new("taskset")
        .args(["-c", SERVER_CPU])
        .arg(program)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let process = Process(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("{} did not say where it listens", program.display()))?;
    Ok((process, format!("http://{address}/")))
}

/// Each server must answer the echo of the input before it is measured.
async fn check_answer(http: &reqwest::Client, target: &Target) -> anyhow::Result<()> {
    let mut request = http.post(&target.url).body(INPUT);
    for (name, value) in &target.headers {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let response = loop {
        match request.try_clone().context("a request")?.send().await {
            Ok(response) => break response,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context(target.name),
        }
    };
    let status = response.status();
    let body = response.text().await?;
    ensure!(
        status.is_success() && body.contains(INPUT),
        "{} answered {status}: {body}",
        target.name
    );
    Ok(())
}
