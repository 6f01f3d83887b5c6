//! What seeing into the host costs: sync throughput with wrk, one release binary, three
//! configurations side by side, each a gust serving `waiting-echo` with an input that makes
//! the guest log one line per call:
//!
//! - **off**: `--no-metrics` (calls not counted) and text logs;
//! - metrics alone, and JSON logs alone, to tell their costs apart;
//! - **on**: metrics counted and JSON logs (`--log-format json`), as an operator runs it;
//! - **traced**: as *on*, and every call's spans exported with `--otlp-endpoint` to a local
//!   OTLP/HTTP sink (in this process, answering 200 to each batch).
//!
//! The hosts write their logs to nothing (the cost of formatting and writing is measured,
//! not a terminal's). Each runs on CPU 0 alone and wrk on CPU 1; rounds alternate between
//! them; medians of the rounds and the ratios to *off* are reported.
//!
//! ```text
//! observe --gust target/release/gust --echo target/wasm32-wasip2/release/waiting_echo.wasm \
//!   [--rounds 5] [--seconds 10] [--connections 32]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, ensure};
use gust_bench::Host;
use gust_bench::wrk::{LOAD_CPU, SERVER_CPU, Target, rounds, table};
use serde_json::json;

/// The guest logs this once per call, then answers.
const INPUT: &str = r#"{"log":"one line per call, as agents log a step"}"#;

const USAGE: &str = "\
usage: observe [--gust PATH] [--echo PATH] [--rounds N] [--seconds N] [--connections N]
Sync throughput with metrics and JSON logs off, each alone, on, and on with traces exported; paths
default to the release builds under target/.";

struct Options {
    gust: PathBuf,
    echo: PathBuf,
    rounds: usize,
    seconds: u64,
    connections: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        gust: "target/release/gust".into(),
        echo: "target/wasm32-wasip2/release/waiting_echo.wasm".into(),
        rounds: 5,
        seconds: 10,
        connections: 32,
    };
    for (flag, value) in gust_bench::flags(USAGE)? {
        match flag.as_str() {
            "--gust" => options.gust = value.into(),
            "--echo" => options.echo = value.into(),
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
    let scratch = tempfile::tempdir()?;
    let (sink, exported) = otlp_sink().await?;

    let configurations: [(&'static str, Vec<String>); 5] = [
        ("off: no metrics, text logs", vec!["--no-metrics".into()]),
        ("metrics, text logs", vec![]),
        (
            "no metrics, JSON logs",
            vec!["--no-metrics".into(), "--log-format".into(), "json".into()],
        ),
        (
            "on: metrics, JSON logs",
            vec!["--log-format".into(), "json".into()],
        ),
        (
            "traced: on + OTLP export",
            vec![
                "--log-format".into(),
                "json".into(),
                "--otlp-endpoint".into(),
                sink,
            ],
        ),
    ];
    let mut hosts = Vec::new();
    let mut targets = Vec::new();
    for (i, (name, args)) in configurations.iter().enumerate() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = Host::start_logging(
            Some(SERVER_CPU),
            &options.gust,
            &scratch.path().join(format!("gust-{i}")),
            &args,
        )?;
        host.deploy("echo", &options.echo, json!({ "max_instances": 64 }))
            .await?;
        let key = host.create_key("echo").await?;
        let answer = host
            .http
            .post(format!("{}/v1/agents/echo/run", host.url))
            .bearer_auth(&key)
            .body(INPUT)
            .send()
            .await?;
        ensure!(answer.status().is_success(), "{name}: {}", answer.status());
        targets.push(Target {
            name,
            url: format!("{}/v1/agents/echo/run", host.url),
            headers: vec![("Authorization", format!("Bearer {key}"))],
        });
        hosts.push(host);
    }

    let readings = rounds(
        &targets,
        INPUT,
        scratch.path(),
        options.connections,
        options.seconds,
        options.rounds,
    )?;

    println!(
        "{} rounds of {} s, {} connections; servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; \
         the guest logs one line per call",
        options.rounds, options.seconds, options.connections
    );
    let medians = table("configuration", &targets, &readings);
    println!();
    println!(
        "metrics alone / off: {:.3}; JSON logs alone / off: {:.3}",
        medians[1] / medians[0],
        medians[2] / medians[0]
    );
    println!(
        "on / off: {:.3} (goal ≥ 0.97: metrics and JSON logs within 3 %)",
        medians[3] / medians[0]
    );
    println!("traced / off: {:.3}", medians[4] / medians[0]);
    println!(
        "OTLP bytes the sink received: {} MiB",
        exported.load(Ordering::Relaxed) >> 20
    );
    let errors: u64 = readings.iter().flatten().map(|r| r.errors).sum();
    ensure!(
        errors == 0,
        "{errors} requests failed: the figures above are not valid"
    );
    Ok(())
}

/// An OTLP/HTTP endpoint that takes every batch and answers 200, counting the bytes: the
/// exporter's cost is measured, not a collector's.
async fn otlp_sink() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&bytes);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let counted = Arc::clone(&counted);
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            counted.fetch_add(body.len() as u64, Ordering::Relaxed);
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok((url, bytes))
}
