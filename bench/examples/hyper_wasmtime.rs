//! The physical limit's two parts in one server: `raw_hyper`'s hyper server whose handler
//! runs the Rust echo in the bare wasmtime embedding (`benches/bare`) with gust's engine
//! settings — Store, instantiate, call, drop — and answers its output. No routing, auth,
//! admission or bookkeeping: what separates gust from it is gust's own, and what separates
//! it from the sum of raw hyper's and the bare call's costs measured alone is what the two
//! cost each other when they share a core (caches, the scheduler, the loopback's wake-ups).
//!
//! `hyper_wasmtime --echo echo.wasm [--listen 127.0.0.1:0] [--on-demand]` prints `listening on
//! <address>` and serves until killed. `--on-demand` allocates each instance per call instead of
//! from the pool, as gust does where the pool's address space is refused (under valgrind, for
//! `bench/callgrind --combined`). An example rather than a program in `src/bin` because it links
//! wasmtime, which only the benchmarks' dev-dependencies bring.

#[path = "../benches/bare/mod.rs"]
mod bare;

use std::convert::Infallible;
use std::sync::Arc;

use bare::BareAgent;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const USAGE: &str = "usage: hyper_wasmtime --echo PATH [--listen ADDRESS] [--on-demand]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (pairs, switches) = gust_bench::flags_and_switches(USAGE, &["--on-demand"])?;
    let (mut echo, mut listen) = (None, "127.0.0.1:0".to_owned());
    for (flag, value) in pairs {
        match flag.as_str() {
            "--echo" => echo = Some(value),
            "--listen" => listen = value,
            _ => anyhow::bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    let mut tuning = gust_wasm::Tuning::default();
    if switches.iter().any(|switch| switch == "--on-demand") {
        tuning.pool = None;
    }
    let echo = echo.ok_or_else(|| anyhow::anyhow!("--echo PATH is required\n{USAGE}"))?;
    let bytes = std::fs::read(&echo)?;
    let agent = Arc::new(BareAgent::new(&tuning, &bytes));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| {
                let agent = Arc::clone(&agent);
                async move {
                    let input = match request.into_body().collect().await {
                        Ok(body) => body.to_bytes().to_vec(),
                        Err(_) => Vec::new(),
                    };
                    let output = agent.call(&BareAgent::request(input)).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(output)))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
