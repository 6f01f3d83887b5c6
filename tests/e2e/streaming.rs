//! Streamed output (`host.emit`): a caller streaming a sync call gets each chunk while the
//! guest is still running; a plain call answers the chunks joined, then what `run` returned;
//! a queued run's event stream carries them and resumes after the last one received; the
//! chunks count against the output limit; `gust runs get --follow` prints them; Python and
//! JavaScript guests stream with `ctx.emit` and with generators.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::runs::{finished, submit};
use crate::support::componentize::component;
use crate::support::sse::{SseEvent, SseReader};
use crate::support::upstream::Upstream;
use crate::support::{Host, error_kind, eventually};

/// Gates on a test upstream, one at a time: a guest's request waits at the gate until the
/// test opens it. The upstream opens `/gate?n=N` requests once N have arrived in all, so
/// each gate counts the two requests (the guest's, the test's) of the gates before it.
struct Gates {
    upstream: Upstream,
    arrivals: usize,
}

impl Gates {
    async fn start() -> Self {
        Self {
            upstream: Upstream::start().await,
            arrivals: 0,
        }
    }

    /// A URL that answers at once.
    fn open_url(&self) -> String {
        format!("{}/hello", self.upstream.origin)
    }

    /// The next gate's URL: one guest waits there until [`Gates::open`].
    fn next(&mut self) -> String {
        self.arrivals += 2;
        self.url()
    }

    fn url(&self) -> String {
        format!("{}/gate?n={}&ms=60000", self.upstream.origin, self.arrivals)
    }

    /// Waits until a guest waits at the gate.
    async fn guest_waits(&self) {
        let upstream = &self.upstream;
        eventually(
            Duration::from_secs(30),
            "the guest waits at the gate",
            || async move { upstream.held() == 1 },
        )
        .await;
    }

    /// Opens the latest gate.
    async fn open(&self) {
        let answer = reqwest::get(self.url())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(answer, "opened");
    }
}

/// A host that lets guests reach the loopback upstream, with `agent` deployed from `file`.
async fn host_with(dir: &std::path::Path, agents: &[(&str, &str)], gates: &Gates) -> Host {
    let host = Host::start_on(dir.join("data"), &["--allow-private-network"]).await;
    for (agent, file) in agents {
        host.upload_file(agent, file).await;
        host.set_config(agent, json!({"allowed_hosts": [gates.upstream.origin]}))
            .await;
        host.deploy(agent, None).await;
    }
    host
}

async fn next_event(reader: &mut SseReader) -> SseEvent {
    tokio::time::timeout(Duration::from_secs(30), reader.next())
        .await
        .expect("an event within 30 s")
        .expect("the stream goes on")
}

/// The events until `end`, that one included.
async fn until_end(reader: &mut SseReader) -> Vec<SseEvent> {
    let mut events = Vec::new();
    loop {
        let event = next_event(reader).await;
        let last = event.event == "end";
        events.push(event);
        if last {
            return events;
        }
    }
}

fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

/// The text of the `chunk` events.
fn chunks(events: &[SseEvent]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.event == "chunk")
        .map(|e| e.data["text"].as_str().expect("text chunks"))
        .collect()
}

/// A payload as answers show one (`{"content_type", "base64"}`), decoded.
fn decoded(payload: &Value) -> (String, Vec<u8>) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload["base64"].as_str().expect("a base64 payload"))
        .unwrap();
    (payload["content_type"].as_str().unwrap().to_owned(), bytes)
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn streamed_call(host: &Host, agent: &str, input: Value) -> SseReader {
    let response = host
        .request(Method::POST, &format!("/v1/agents/{agent}/run"))
        .header("accept", "text/event-stream")
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    SseReader::new(response)
}

/// A plain sync call: status, content type and body bytes.
async fn plain_call(host: &Host, agent: &str, input: Value) -> (StatusCode, String, Vec<u8>) {
    let response = host
        .request(Method::POST, &format!("/v1/agents/{agent}/run"))
        .json(&input)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// The guest emits, waits at a gate only the test opens, emits again: the streaming caller
/// has the first chunk while the guest is still waiting, so before it finished.
async fn first_chunk_before_the_guest_finishes(
    host: &Host,
    gates: &mut Gates,
    agent: &str,
    op: &str,
) {
    let input = json!({"op": op, "key": gates.next(), "url": gates.url()});
    let mut reader = streamed_call(host, agent, input).await;
    let first = next_event(&mut reader).await;
    assert_eq!(
        (first.event.as_str(), &first.data),
        ("chunk", &json!({"text": "first "})),
        "{agent} {op}"
    );
    // Still running: its request is held at the gate, which opens only below.
    gates.guest_waits().await;
    gates.open().await;
    let rest = until_end(&mut reader).await;
    assert_eq!(
        kinds(&rest),
        ["chunk", "output", "end"],
        "{agent} {op}: {rest:?}"
    );
    assert_eq!(rest[0].data, json!({"text": "second"}));
    // The output event carries the whole output, chunks included.
    assert_eq!(
        decoded(&rest[1].data),
        (TEXT.to_owned(), b"first second".to_vec()),
        "{agent} {op}"
    );
}

/// Whether there is a deployment to call is answered before a stream starts: 404 with the
/// error's JSON, as a plain call answers it. It was a 200 whose only event was the error.
#[tokio::test]
async fn a_streamed_call_of_an_agent_not_deployed_is_answered_404() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let response = host
        .request(Method::POST, "/v1/agents/nobody/run")
        .header("accept", "text/event-stream")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "not_found", "{body}");
}

#[tokio::test]
async fn a_streamed_call_gets_the_first_chunk_while_the_guest_still_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mut gates = Gates::start().await;
    let host = host_with(dir.path(), &[("probe", gust_test_guests::PROBE_A)], &gates).await;
    first_chunk_before_the_guest_finishes(&host, &mut gates, "probe", "stream").await;
}

#[tokio::test]
async fn a_plain_call_answers_the_chunks_then_what_run_returned() {
    let dir = tempfile::tempdir().unwrap();
    let gates = Gates::start().await;
    let host = host_with(dir.path(), &[("probe", gust_test_guests::PROBE_A)], &gates).await;

    // Returning nothing: the chunks alone, as text.
    let input = json!({"op": "stream", "key": gates.open_url()});
    let (status, content_type, body) = plain_call(&host, "probe", input).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        (content_type.as_str(), body.as_slice()),
        (TEXT, &b"first second"[..])
    );

    // Returning a value: the chunks, then the value, with the type `run` returned.
    let input = json!({"op": "stream", "key": gates.open_url(), "n": 1});
    let (status, content_type, body) = plain_call(&host, "probe", input).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            content_type.as_str(),
            String::from_utf8_lossy(&body).as_ref()
        ),
        ("application/json", r#"first second{"done":true}"#)
    );
}

#[tokio::test]
async fn a_queued_run_streams_its_chunks_to_followers_and_resumes_after_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut gates = Gates::start().await;
    let host = host_with(dir.path(), &[("probe", gust_test_guests::PROBE_A)], &gates).await;
    let id = submit(&host, "probe", json!({"op": "stream", "key": gates.next()})).await;
    let path = format!("/v1/agents/probe/runs/{id}/events");
    let follow = |last: Option<&str>| {
        let mut request = host.request(Method::GET, &path);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            SseReader::new(response)
        }
    };

    // A follower gets the first chunk (live, or kept beside the attempt if it came first),
    // with an id that says how much output it has had.
    let mut first = follow(None).await;
    let chunk = loop {
        let event = next_event(&mut first).await;
        if event.event == "chunk" {
            break event;
        }
        assert!(
            matches!(event.event.as_str(), "status" | "progress"),
            "{event:?}"
        );
    };
    assert_eq!(chunk.data, json!({"text": "first "}));
    assert_eq!(chunk.id, "log:0,out:6");
    drop(first);
    gates.guest_waits().await;

    // One that comes later gets it again, kept beside the running attempt.
    let mut later = follow(None).await;
    let mut events = Vec::new();
    while !events.iter().any(|e: &SseEvent| e.event == "chunk") {
        events.push(next_event(&mut later).await);
    }
    assert_eq!(chunks(&events), ["first "], "{events:?}");
    assert_eq!(events[0].data["status"], "running");

    // One that resumes after the first chunk does not get it again: only what follows.
    let mut resumed = follow(Some("log:0,out:6")).await;
    let status = next_event(&mut resumed).await;
    assert_eq!(status.event, "status");
    gates.open().await;
    let rest = until_end(&mut resumed).await;
    assert_eq!(chunks(&rest), ["second"], "{rest:?}");
    let second = rest.iter().find(|e| e.event == "chunk").unwrap();
    assert_eq!(second.id, "log:0,out:12");
    let output = &rest[rest.len() - 2];
    assert_eq!(output.event, "output");
    assert_eq!(
        decoded(&output.data),
        (TEXT.to_owned(), b"first second".to_vec())
    );
    let later_rest = until_end(&mut later).await;
    assert_eq!(chunks(&later_rest), ["second"], "{later_rest:?}");

    // Recorded: the poll's output is the chunks, as a plain call answers them.
    let run = finished(&host, "probe", &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        decoded(&run["output"]),
        (TEXT.to_owned(), b"first second".to_vec())
    );

    // Once the run has ended, its chunks are in its output: not sent again as chunks.
    let mut ended = follow(Some("log:0,out:6")).await;
    let events = until_end(&mut ended).await;
    assert_eq!(kinds(&events), ["status", "output", "end"], "{events:?}");
    assert_eq!(decoded(&events[1].data).1, b"first second");
}

#[tokio::test]
async fn emitted_chunks_count_against_the_output_limit() {
    let dir = tempfile::tempdir().unwrap();
    let gates = Gates::start().await;
    let host = host_with(dir.path(), &[("probe", gust_test_guests::PROBE_A)], &gates).await;
    host.set_config("probe", json!({"output_mib": 1})).await;
    host.deploy("probe", None).await;
    // Four chunks of 256 KiB make the limit exactly; a fifth passes it.
    let (within, past) = (
        json!({"op": "emit-many", "n": 4}),
        json!({"op": "emit-many", "n": 5}),
    );

    let (status, content_type, body) = plain_call(&host, "probe", within.clone()).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, TEXT));
    assert_eq!(body.len(), 1 << 20);
    assert!(body.iter().all(|b| *b == b'z'));
    let (status, body) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/run")
                .json(&past),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let message = error_kind(&body, "output_too_large");
    assert!(message.contains("at most 1 MiB"), "{message}");

    // Streamed: the chunks within the limit went out; the one past it ends the call.
    let mut reader = streamed_call(&host, "probe", past.clone()).await;
    let events = until_end(&mut reader).await;
    let sent: usize = chunks(&events).iter().map(|c| c.len()).sum();
    assert_eq!(sent, 1 << 20);
    let error = &events[events.len() - 2];
    assert_eq!(error.event, "error");
    assert_eq!(
        (&error.data["status"], &error.data["kind"]),
        (&json!(502), &json!("output_too_large"))
    );

    // Queued: the run fails the same way and keeps no output; within the limit it keeps it.
    let id = submit(&host, "probe", past).await;
    let run = finished(&host, "probe", &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["kind"], "output_too_large", "{run}");
    assert!(run["output"].is_null(), "{run}");
    let id = submit(&host, "probe", within).await;
    let run = finished(&host, "probe", &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(decoded(&run["output"]).1.len(), 1 << 20);
}

#[tokio::test]
async fn gust_runs_get_follow_prints_the_chunks_as_they_come() {
    let dir = tempfile::tempdir().unwrap();
    let mut gates = Gates::start().await;
    let host = host_with(dir.path(), &[("probe", gust_test_guests::PROBE_A)], &gates).await;
    let id = submit(&host, "probe", json!({"op": "stream", "key": gates.next()})).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["runs", "get", "probe", &id, "--follow"])
        .env("GUST_URL", &host.url)
        .env("GUST_TOKEN", crate::support::TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its stderr as it comes; told once the first chunk is printed.
    let mut stderr = child.stderr.take().unwrap();
    let (printed, first_printed) = tokio::sync::oneshot::channel();
    let reading = tokio::task::spawn_blocking(move || {
        let (mut all, mut buf, mut printed) = (Vec::new(), [0u8; 4096], Some(printed));
        loop {
            let n = std::io::Read::read(&mut stderr, &mut buf).unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&all).into_owned();
            }
            all.extend_from_slice(&buf[..n]);
            if all.windows(6).any(|w| w == b"first ")
                && let Some(printed) = printed.take()
            {
                let _ = printed.send(());
            }
        }
    });
    // Printed while the guest still waits at the gate.
    tokio::time::timeout(Duration::from_secs(30), first_printed)
        .await
        .expect("the first chunk printed within 30 s")
        .unwrap();
    gates.guest_waits().await;
    gates.open().await;
    let stderr = reading.await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The chunks read as the text they make, on a line of their own.
    assert!(stderr.lines().any(|l| l == "first second"), "{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
}

const SDK_PROBES: [(&str, &str); 2] = [
    ("python-probe", "tests/guests/python-probe"),
    ("js-probe", "tests/guests/js-probe"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_stream_with_emit_and_with_generators() {
    let dir = tempfile::tempdir().unwrap();
    let mut gates = Gates::start().await;
    let mut files = Vec::new();
    for (agent, folder) in SDK_PROBES {
        files.push((agent, component(folder).await));
    }
    let agents: Vec<(&str, &str)> = files.iter().map(|(a, f)| (*a, f.as_str())).collect();
    let host = host_with(dir.path(), &agents, &gates).await;

    for (agent, _) in SDK_PROBES {
        // `ctx.emit`, and a generator whose values are emitted.
        for op in ["stream", "generate"] {
            first_chunk_before_the_guest_finishes(&host, &mut gates, agent, op).await;
            let input = json!({"op": op, "url": gates.open_url()});
            let (status, content_type, body) = plain_call(&host, agent, input).await;
            let said = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, StatusCode::OK, "{agent} {op}: {said}");
            assert_eq!(
                (content_type.as_str(), said.as_str()),
                (TEXT, "first second")
            );
        }
        // A generator that returns a value: the chunks, then the value as JSON.
        let input = json!({"op": "generate", "url": gates.open_url(), "tail": {"n": 1}});
        let (status, content_type, body) = plain_call(&host, agent, input).await;
        let said = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(
            (status, content_type.as_str()),
            (StatusCode::OK, "application/json"),
            "{agent}: {said}"
        );
        let tail = said.strip_prefix("first second").expect(&said);
        assert_eq!(
            serde_json::from_str::<Value>(tail).unwrap(),
            json!({"n": 1})
        );

        // Queued: the run's output is the chunks.
        let id = submit(
            &host,
            agent,
            json!({"op": "generate", "url": gates.open_url()}),
        )
        .await;
        let run = finished(&host, agent, &id).await;
        assert_eq!(run["status"], "succeeded", "{agent}: {run}");
        assert_eq!(
            decoded(&run["output"]),
            (TEXT.to_owned(), b"first second".to_vec())
        );
    }
}
