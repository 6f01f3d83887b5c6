//! Helpers the benchmark programs share: starting a host, deploying, submitting queued
//! runs, percentiles, process readings.
//!
//! - [`resident`]: resident memory per mapping, from `smaps`;
//! - [`wrk`]: sync throughput with wrk;
//! - [`pg_floor`]: the run queue's statements straight to PostgreSQL, without gust.

pub mod pg_floor;
pub mod resident;
pub mod wrk;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

/// The admin token benchmark hosts run with.
pub const TOKEN: &str = "bench-admin-token-0123456789";

/// A `gust serve` on a fresh data folder, killed when dropped.
pub struct Host {
    serving: gust_testkit::Serving,
    /// Its base URL.
    pub url: String,
    /// A client for it.
    pub http: reqwest::Client,
}

impl Host {
    /// Starts `gust serve` with `args` on `data`.
    ///
    /// # Errors
    /// When it does not start.
    pub fn start(gust: &Path, data: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(None, gust, data, args)
    }

    /// Starts `gust serve` with `args` on `data`, on CPU `cpu` alone when given (with
    /// `taskset`, which keeps the process id).
    ///
    /// # Errors
    /// When it does not start.
    pub fn start_on(
        cpu: Option<&str>,
        gust: &Path,
        data: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(cpu, gust, data, args, false)
    }

    /// As [`Host::start_on`], with the host logging at its own level (`args` may set
    /// `--log` and `--log-format`) into nothing: for measuring what writing the log costs
    /// without a screen to fill.
    ///
    /// # Errors
    /// When it does not start.
    pub fn start_logging(
        cpu: Option<&str>,
        gust: &Path,
        data: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(cpu, gust, data, args, true)
    }

    fn spawn(
        cpu: Option<&str>,
        gust: &Path,
        data: &Path,
        args: &[&str],
        logging: bool,
    ) -> anyhow::Result<Self> {
        let mut command = match cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpu]).arg(gust);
                taskset
            }
            None => Command::new(gust),
        };
        gust_testkit::serve_args(&mut command, data)
            .args(if logging { &[][..] } else { &["--log", "warn"] })
            .args(args)
            .env("GUST_ADMIN_TOKEN", TOKEN)
            .stderr(if logging {
                Stdio::null()
            } else {
                Stdio::inherit()
            });
        let serving = gust_testkit::spawn(&mut command, Duration::from_secs(120))
            .with_context(|| format!("starting {}", gust.display()))?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            url: serving.url.clone(),
            serving,
            http,
        })
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.serving.child.id()
    }

    /// Kills the host with SIGKILL (no shutdown, nothing handed back) and reaps it.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.serving.child.kill().context("killing the host")?;
        let _ = self.serving.child.wait();
        Ok(())
    }

    /// Uploads `component` as `agent`, sets `config` and deploys it.
    ///
    /// # Errors
    /// When any step is refused.
    pub async fn deploy(&self, agent: &str, component: &Path, config: Value) -> anyhow::Result<()> {
        let bytes =
            std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
        self.deploy_bytes(agent, bytes, config).await
    }

    /// Deploys `agent`'s `version` (a redeploy or a rollback) and answers the new deployment's
    /// number.
    ///
    /// # Errors
    /// When the deploy is refused or its answer has no deployment number.
    pub async fn deploy_version(&self, agent: &str, version: u32) -> anyhow::Result<u32> {
        let answer = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/agents/{agent}/deploy"),
                None,
                Some(serde_json::json!({ "version": version })),
            )
            .await?;
        let deployment = answer["deployment"]
            .as_u64()
            .context("no deployment number in the deploy answer")?;
        Ok(u32::try_from(deployment)?)
    }

    /// Uploads the component `bytes` as `agent`, sets `config` and deploys it.
    ///
    /// # Errors
    /// When any step is refused.
    pub async fn deploy_bytes(
        &self,
        agent: &str,
        bytes: Vec<u8>,
        config: Value,
    ) -> anyhow::Result<()> {
        use reqwest::Method;
        let agent_path = format!("/v1/agents/{agent}");
        self.admin(
            Method::POST,
            &format!("{agent_path}/versions"),
            Some(bytes),
            None,
        )
        .await?;
        self.admin(
            Method::PUT,
            &format!("{agent_path}/config"),
            None,
            Some(config),
        )
        .await?;
        self.admin(
            Method::POST,
            &format!("{agent_path}/deploy"),
            None,
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    /// Creates an invoke key for `agent` and returns it.
    ///
    /// # Errors
    /// When the host refuses.
    pub async fn create_key(&self, agent: &str) -> anyhow::Result<String> {
        let answer = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/agents/{agent}/keys"),
                None,
                Some(json!({"name": "bench"})),
            )
            .await?;
        answer["key"]
            .as_str()
            .map(str::to_owned)
            .context("no key in the answer")
    }

    /// `/v1/stats`.
    ///
    /// # Errors
    /// When the host does not answer, or refuses.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        self.admin(reqwest::Method::GET, "/v1/stats", None, None)
            .await
    }

    /// One sync call of `agent` with the admin token: its status and the deployment that
    /// served it (0 when the answer does not say), the body read to the end.
    ///
    /// # Errors
    /// When the request cannot be sent or the answer not read.
    pub async fn call(&self, agent: &str, input: &Value) -> anyhow::Result<(u16, u32)> {
        let response = self
            .http
            .post(format!("{}/v1/agents/{agent}/run", self.url))
            .bearer_auth(TOKEN)
            .json(input)
            .send()
            .await?;
        let deployment = response
            .headers()
            .get("gust-deployment")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let status = response.status().as_u16();
        response.bytes().await?;
        Ok((status, deployment))
    }

    /// A control-plane request to `path` with the admin token, with raw `body` bytes or a
    /// `json` body (or neither); its JSON answer (`null` when it has none).
    ///
    /// # Errors
    /// When the request fails or is refused (the error carries the answer).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        json: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(bytes) = body {
            request = request.body(bytes);
        }
        if let Some(value) = json {
            request = request.json(&value);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status}: {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A child process, killed (SIGKILL) when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The command line as `--flag value` pairs: every benchmark program's options take a value.
/// `--help` (or `-h`) prints `usage` and exits.
///
/// # Errors
/// When the last flag has no value.
pub fn flags(usage: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(flags_and_switches(usage, &[])?.0)
}

/// `--flag value` pairs, in the order given.
pub type Pairs = Vec<(String, String)>;

/// As [`flags`], but the flags named in `switches` take no value: they are answered apart,
/// in the order given on the command line.
///
/// # Errors
/// When a flag other than a switch has no value.
pub fn flags_and_switches(usage: &str, switches: &[&str]) -> anyhow::Result<(Pairs, Vec<String>)> {
    let mut args = std::env::args().skip(1);
    let mut pairs = Vec::new();
    let mut given = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{}", usage.trim());
            std::process::exit(0);
        }
        if switches.contains(&flag.as_str()) {
            given.push(flag);
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value (--help lists the flags)"))?;
        pairs.push((flag, value));
    }
    Ok((pairs, given))
}

/// Submits `total` queued runs of `agent` with `input` (JSON) from `clients` concurrent
/// HTTP/1.1 keep-alive clients, client `i` to `urls[i % urls.len()]`, each sending its next
/// run as soon as its last one is accepted; answers each submission's latency (send → 202).
///
/// # Errors
/// When a submission fails or is answered other than 202.
pub async fn submit_runs(
    http: &reqwest::Client,
    urls: &[String],
    agent: &str,
    clients: usize,
    total: usize,
    input: bytes::Bytes,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, next, input) = (http.clone(), Arc::clone(&next), input.clone());
        let url = format!("{}/v1/agents/{agent}/runs", urls[client % urls.len()]);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(input.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().as_u16() == 202,
                    "submit answered {}",
                    response.status()
                );
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}

/// Waits until `hosts` together have ended `target` runs since they started
/// (`runs_ended_total` in `/v1/stats`: each host counts the runs it ended), polling every
/// 5 ms; answers each host's stats then.
///
/// # Errors
/// When a host does not answer, or the runs are not all ended within `within`.
pub async fn wait_ended(
    hosts: &[&Host],
    target: u64,
    within: Duration,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + within;
    loop {
        let mut stats = Vec::with_capacity(hosts.len());
        for host in hosts {
            stats.push(host.stats().await?);
        }
        let ended: u64 = stats
            .iter()
            .map(|s| s["runs_ended_total"].as_u64().unwrap_or(0))
            .sum();
        if ended >= target {
            return Ok(stats);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "runs did not finish: {ended} of {target} ended within {}s",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `bytes` (a component) with a custom section naming `tag` appended: the same code, another
/// digest, so it is another version with its own compiled artifact.
pub fn tagged(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"gust-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// The `q` quantile of sorted `values`.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `values` as `median [min – max]`, without decimals.
pub fn spread(values: &[f64]) -> String {
    format!(
        "{:.0} [{:.0} – {:.0}]",
        median(values.to_vec()),
        values.iter().copied().fold(f64::INFINITY, f64::min),
        values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    )
}

/// `VmRSS` and private resident memory of process `pid`, in KiB, read at the same instant.
/// Private is `RssAnon`, its resident size less the pages of files and shared memory it
/// maps: what the host's memory budget weighs, with the page tables
/// (`runtime/core/src/deploy/memory.rs`), and what its instances add to the machine's memory:
/// `VmRSS` counts a page of page cache once per mapping of it, and every instance of a
/// component maps the component's memory image, so a page of the image read by 200 instances
/// counts 200 times in `VmRSS` while the machine holds it once.
pub fn resident_and_private_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&status, "RssAnon:"))
}

/// What `/proc/<pid>/stat` counts for process `pid`: minor page faults, and its user and
/// system CPU time (in clock ticks: 10 ms each here, fine over a run of seconds). `None`
/// when the process is gone or the line is short.
pub fn cpu_and_faults(pid: u32) -> Option<(std::time::Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name in parentheses (which may hold spaces): fields 3 onwards.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    // minflt is field 10, utime and stime 14 and 15.
    let ticks = field(14)? + field(15)?;
    let per_second = rustix::param::clock_ticks_per_second();
    Some((
        std::time::Duration::from_secs_f64(ticks as f64 / per_second as f64),
        field(10)?,
    ))
}

/// Resident memory (KiB), threads and open file descriptors of process `pid`.
///
/// Counting descriptors lists `/proc/{pid}/fd`, which costs milliseconds of CPU once a host
/// holds 20,000 connections: a sampler that runs during a burst reads [`resident_kib`].
pub fn process_usage(pid: u32) -> (u64, u64, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (resident_kib(pid), status_field(pid, "Threads:"), fds)
}

/// Resident memory (KiB) of process `pid`: one small read, cheap enough to sample every few
/// milliseconds beside the load it measures.
pub fn resident_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, name: &str) -> u64 {
    field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        name,
    )
}

/// A KiB field of a `/proc/PID/status` text (0 when missing).
fn field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
