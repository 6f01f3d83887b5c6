//! `examples/echo` with one difference: before answering it waits `wait_ms` milliseconds
//! (from its input) in a host call, as an agent waits for a model or a tool. The memory
//! benchmark holds many of these calls in flight to measure what each costs the host; the
//! echo itself returns too fast to be caught in flight.
//!
//! With `upstream` (a URL) in its input it waits on that instead: a GET, as an agent waits
//! for a model's answer; the scale benchmark points it at a slow server in another process.
//! An upstream that fails fails the call, so a benchmark counts it.
//!
//! With `log` (a string) in its input it logs that line once: the observability benchmark
//! measures what a call's log line, metrics and traces cost.
//!
//! The wait is `std::thread::sleep`, which a wasm32-wasip2 guest makes with
//! `wasi:clocks/monotonic-clock.subscribe-duration` and `wasi:io/poll.poll`: the host
//! parks the call on a timer and the instance waits without a thread.

use std::time::Duration;

use gust_sdk::{Context, Error};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct Echo {
    input: Value,
    version: u32,
    marker: Option<String>,
    upstream_bytes: Option<usize>,
}

#[gust_sdk::agent]
fn run(input: Value, ctx: &Context) -> Result<Echo, Error> {
    if let Some(line) = input.get("log").and_then(Value::as_str) {
        ctx.info(line);
    }
    let wait_ms = input.get("wait_ms").and_then(Value::as_u64).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(wait_ms));
    let mut upstream_bytes = None;
    if let Some(url) = input.get("upstream").and_then(Value::as_str) {
        let response = gust_sdk::http::Request::get(url)
            .send()
            .map_err(|e| Error::failed(format!("the upstream: {e}")))?;
        if response.status != 200 {
            return Err(Error::failed(format!(
                "the upstream answered {}",
                response.status
            )));
        }
        upstream_bytes = Some(response.text().len());
    }
    Ok(Echo {
        upstream_bytes,
        input,
        version: ctx.version(),
        marker: ctx.config("marker"),
    })
}
