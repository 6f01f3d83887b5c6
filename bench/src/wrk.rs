//! Load with wrk from the load CPU: a server's req/s and latency percentiles, as the HTTP
//! benchmarks read them.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

use crate::{median, spread};

/// The CPU the servers run on, alone.
pub const SERVER_CPU: &str = "0";
/// The CPU wrk runs on, alone.
pub const LOAD_CPU: &str = "1";

/// A server under load: where to send requests, with which headers.
pub struct Target {
    pub name: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Target {
    /// `host`'s echo agent, called with an invoke key made for it (the way applications
    /// call it).
    ///
    /// # Errors
    /// When the key cannot be made.
    pub async fn keyed_echo(name: &'static str, host: &crate::Host) -> anyhow::Result<Self> {
        let key = host.create_key("echo").await?;
        Ok(Self {
            name,
            url: format!("{}/v1/agents/echo/run", host.url),
            headers: vec![("Authorization", format!("Bearer {key}"))],
        })
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// A short warm-up of every target (compile caches, connection pools, the allocators' warm
/// slots), then `rounds` rounds over all of them, the order reversed every other round so
/// that no target always runs right after the same one. Each reading is printed on stderr
/// as it comes; the readings are returned per target.
///
/// # Errors
/// When a wrk run fails.
pub fn rounds(
    targets: &[Target],
    input: &str,
    scratch: &Path,
    connections: usize,
    seconds: u64,
    rounds: usize,
) -> anyhow::Result<Vec<Vec<Reading>>> {
    for target in targets {
        wrk(target, input, scratch, connections, 2)?;
    }
    let mut readings: Vec<Vec<Reading>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let reading = wrk(&targets[i], input, scratch, connections, seconds)?;
            eprintln!(
                "round {}: {:<32} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  errors {}",
                round + 1,
                targets[i].name,
                reading.requests_per_s,
                reading.p50_ms,
                reading.p99_ms,
                reading.errors
            );
            readings[i].push(reading);
        }
    }
    Ok(readings)
}

/// Prints the Markdown table of the rounds, a row per target headed `what`, and returns
/// each target's median req/s.
pub fn table(what: &str, targets: &[Target], readings: &[Vec<Reading>]) -> Vec<f64> {
    println!("| {what} | req/s median [min – max] | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|");
    for (target, rounds) in targets.iter().zip(readings) {
        let rates: Vec<f64> = rounds.iter().map(|x| x.requests_per_s).collect();
        println!(
            "| {} | {} | {:.3} | {:.3} | {} |",
            target.name,
            spread(&rates),
            median(rounds.iter().map(|x| x.p50_ms).collect()),
            median(rounds.iter().map(|x| x.p99_ms).collect()),
            rounds.iter().map(|x| x.errors).sum::<u64>(),
        );
    }
    readings
        .iter()
        .map(|r| median(r.iter().map(|x| x.requests_per_s).collect()))
        .collect()
}

/// One wrk run against `target`, on the load CPU, posting `input` (JSON).
///
/// # Errors
/// When wrk fails or its report cannot be read.
pub fn wrk(
    target: &Target,
    input: &str,
    scratch: &Path,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Reading> {
    let mut script = format!(
        "wrk.method = \"POST\"\nwrk.body = '{input}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    for (name, value) in &target.headers {
        script.push_str(&format!("wrk.headers[\"{name}\"] = \"{value}\"\n"));
    }
    let script_path = scratch.join("post.lua");
    std::fs::write(&script_path, script)?;
    let output = Command::new("taskset")
        .args(["-c", LOAD_CPU, "wrk", "-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(&script_path)
        .arg(&target.url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "wrk failed: {text}");
    parse_wrk(&text).with_context(|| format!("reading wrk's report:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<Reading> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests_per_s: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let latency = |q: &str| -> anyhow::Result<f64> { duration_ms(field(q).context("no latency")?) };
    // wrk reports non-2xx answers and socket errors only when there are any.
    let non_2xx = field("Non-2xx or 3xx responses:").map_or(Ok(0), str::parse::<u64>)?;
    let socket_errors = field("Socket errors:").map_or(0, |s| {
        s.split(',')
            .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    });
    Ok(Reading {
        requests_per_s,
        p50_ms: latency("50%")?,
        p99_ms: latency("99%")?,
        errors: non_2xx + socket_errors,
    })
}

/// wrk's "1.23ms", "456.00us", "1.02s" in milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))
        .context("a duration without a unit")?;
    let value: f64 = number.parse()?;
    Ok(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        other => bail!("unknown unit {other}"),
    })
}
