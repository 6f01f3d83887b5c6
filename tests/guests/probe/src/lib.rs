//! A test guest that does what its input asks, so end-to-end tests can drive every path of
//! the host: `{"op": "echo" | "fail" | "invalid" | "panic" | "spin" | "sleep" | "steps" | "print" |
//! "alloc" | "recurse" | "big" | "sandbox" | "fetch" | "fetch-many" | "post" | "post-big" | "hold-bodies" |
//! "stream" | "emit-many"}`. Its answers carry a marker compiled in (`a`, or `b` with the `marker-b`
//! feature), so a test can tell two builds apart.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gust_sdk::{Context, Error};
use serde::Deserialize;
use serde_json::{Value, json};

const MARKER: &str = if cfg!(feature = "marker-b") { "b" } else { "a" };

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    mb: usize,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    n: u32,
    /// `fetch`'s request options, in milliseconds.
    #[serde(default)]
    connect_ms: Option<u64>,
    #[serde(default)]
    first_byte_ms: Option<u64>,
    #[serde(default)]
    between_ms: Option<u64>,
}

#[gust_sdk::agent]
fn run(input: Value, ctx: &Context) -> Result<Value, Error> {
    let parsed: Input = serde_json::from_value(input.clone())
        .map_err(|e| Error::invalid_input(format!("probe input: {e}")))?;
    match parsed.op.as_deref().unwrap_or("echo") {
        "echo" => Ok(json!({
            "marker": MARKER,
            "version": ctx.version(),
            "agent": ctx.agent(),
            "run_id": ctx.run_id(),
            "attempt": ctx.attempt(),
            "has_deadline": ctx.deadline().is_some(),
            "config": parsed.key.as_deref().and_then(|k| ctx.config(k)),
            "input": input,
        })),
        "fail" => Err(Error::failed("probe failed on purpose")),
        "invalid" => Err(Error::invalid_input("probe refused its input")),
        "panic" => panic!("probe panicked on purpose"),
        "spin" => {
            // Pure CPU, no host calls: only epoch interruption can stop this.
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "sleep" => {
            // Blocks inside a host call (the monotonic clock's poll).
            std::thread::sleep(Duration::from_millis(parsed.ms));
            Ok(json!({"marker": MARKER, "slept_ms": parsed.ms}))
        }
        "steps" => {
            // Reports progress between steps, as a multi-step flow would.
            for step in 1..=parsed.n {
                std::thread::sleep(Duration::from_millis(parsed.ms));
                ctx.progress(
                    step as f32 / parsed.n as f32,
                    format!("step {step} of {}", parsed.n),
                );
            }
            Ok(json!({"marker": MARKER, "steps": parsed.n}))
        }
        "print" => {
            println!("probe stdout line for {}", ctx.run_id());
            eprintln!("probe stderr line for {}", ctx.run_id());
            ctx.info(format!("probe log line for {}", ctx.run_id()));
            Ok(json!({"marker": MARKER}))
        }
        "recurse" => Ok(json!({"depth": recurse(parsed.n)})),
        "fetch" => {
            let url = parsed.key.as_deref().unwrap_or_default();
            let mut request = gust_sdk::http::Request::get(url);
            if let Some(ms) = parsed.connect_ms {
                request = request.connect_timeout(Duration::from_millis(ms));
            }
            if let Some(ms) = parsed.first_byte_ms {
                request = request.first_byte_timeout(Duration::from_millis(ms));
            }
            if let Some(ms) = parsed.between_ms {
                request = request.between_bytes_timeout(Duration::from_millis(ms));
            }
            Ok(match request.send() {
                Ok(response) => json!({"status": response.status, "body": response.text()}),
                Err(e) => json!({"error": e.to_string()}),
            })
        }
        "stream" => {
            // Emits, waits on `key` (a gate the test holds), emits again: a streaming caller
            // gets the first chunk while the guest is still waiting. Returns nothing (the
            // answer is the chunks alone), or with `n: 1` a JSON value after them.
            ctx.emit("first ");
            let url = parsed.key.as_deref().unwrap_or_default();
            if let Err(e) = gust_sdk::http::Request::get(url).send() {
                return Err(Error::failed(format!("waiting on {url}: {e}")));
            }
            ctx.emit("second");
            Ok(if parsed.n == 1 {
                json!({"done": true})
            } else {
                Value::Null
            })
        }
        "emit-many" => {
            // `n` chunks of 256 KiB, for the output limit.
            let chunk = vec![b'z'; 256 << 10];
            for _ in 0..parsed.n {
                ctx.emit(&chunk);
            }
            Ok(Value::Null)
        }
        "fetch-many" => {
            // The same request `n` times, for the bounds on what one call may record.
            let url = parsed.key.as_deref().unwrap_or_default();
            let failed = (0..parsed.n)
                .filter(|_| gust_sdk::http::Request::get(url).send().is_err())
                .count();
            Ok(json!({"sent": parsed.n, "failed": failed}))
        }
        "post" => {
            // `{"n": n}` posted to `key` as JSON.
            let url = parsed.key.as_deref().unwrap_or_default();
            Ok(
                match gust_sdk::http::Request::post(url)
                    .json(&json!({"n": parsed.n}))
                    .send()
                {
                    Ok(response) => json!({"status": response.status, "body": response.text()}),
                    Err(e) => json!({"error": e.to_string()}),
                },
            )
        }
        "post-big" => {
            // `mb` MiB posted to `key`, as one body.
            let url = parsed.key.as_deref().unwrap_or_default();
            Ok(
                match gust_sdk::http::Request::post(url)
                    .body(vec![b'y'; parsed.mb << 20])
                    .send()
                {
                    Ok(response) => json!({"status": response.status, "body": response.text()}),
                    Err(e) => json!({"error": e.to_string()}),
                },
            )
        }
        "hold-bodies" => Ok(hold_bodies(
            parsed.key.as_deref().unwrap_or_default(),
            parsed.n,
            parsed.mb,
            parsed.ms,
        )),
        "sandbox" => Ok(json!({
            // What a guest can reach of the host: nothing, if the sandbox holds.
            "read_root": std::fs::read_dir("/").map(|d| d.count()).map_err(|e| e.to_string()),
            "read_etc_passwd": std::fs::read_to_string("/etc/passwd").map(|s| s.len()).map_err(|e| e.to_string()),
            "env": std::env::vars().count(),
            "args": std::env::args().count(),
            "tcp": std::net::TcpStream::connect("127.0.0.1:80").map(|_| ()).map_err(|e| e.to_string()),
            "dns": std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|a| a.count()).map_err(|e| e.to_string()),
        })),
        "count" => {
            // Every call gets a fresh instance, so this static starts from zero each time;
            // a count above 1 means state carried over from another call.
            static CALLS: AtomicU32 = AtomicU32::new(0);
            Ok(json!({"count": CALLS.fetch_add(1, Ordering::Relaxed) + 1}))
        }
        "big" => Ok(json!({"blob": "x".repeat(parsed.mb << 20)})),
        "alloc" => {
            let block = vec![1u8; parsed.mb << 20];
            Ok(
                json!({"allocated_mb": block.len() >> 20, "sum": block.iter().map(|b| u64::from(*b)).sum::<u64>()}),
            )
        }
        other => Err(Error::invalid_input(format!("unknown op `{other}`"))),
    }
}

/// Recursion the optimiser cannot turn into a loop, for the stack-overflow tests.
fn recurse(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    std::hint::black_box(recurse(std::hint::black_box(n - 1))) + 1
}

/// A hostile guest: opens `n` POST requests to `url` (authority and path, plain http),
/// writes `mb` MiB into each body and never finishes one, then holds them all for `ms`
/// before returning. The host must not keep those bodies in its memory.
fn hold_bodies(url: &str, n: u32, mb: usize, ms: u64) -> Value {
    use gust_sdk::__private::bindings::wasi::http::outgoing_handler;
    use gust_sdk::__private::bindings::wasi::http::types::{
        Fields, Method, OutgoingRequest, Scheme,
    };

    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    // `blocking-write-and-flush` takes at most 4096 bytes at a time.
    let chunk = vec![b'x'; 4096];
    let mut held = Vec::new();
    let mut written = 0usize;
    let mut refused = 0u32;
    for _ in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        let _ = request.set_method(&Method::Post);
        let _ = request.set_scheme(Some(&Scheme::Http));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
        let Ok(body) = request.body() else { continue };
        let Ok(pending) = outgoing_handler::handle(request, None) else {
            refused += 1;
            continue;
        };
        let Ok(stream) = body.write() else { continue };
        for _ in 0..(mb * 256) {
            if stream.blocking_write_and_flush(&chunk).is_err() {
                break;
            }
            written += chunk.len();
        }
        // Never `OutgoingBody::finish`: the body stays open.
        held.push((pending, stream, body));
    }
    std::thread::sleep(Duration::from_millis(ms));
    json!({"open": held.len(), "written_mb": written >> 20, "refused": refused})
}
