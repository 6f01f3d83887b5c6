//! A queued run followed as Server-Sent Events: status, progress as it is reported, log
//! lines, then the output and an `end` event; and a reconnect with `Last-Event-ID`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::Host;
use crate::support::sse::{SseEvent, SseReader};

/// The events of a stream until `end`: (event, id, data).
async fn until_end(response: reqwest::Response) -> Vec<(String, String, Value)> {
    timed_until_end(response)
        .await
        .into_iter()
        .map(|e| (e.event, e.id, e.data))
        .collect()
}

/// As [`until_end`], with when each event arrived.
async fn timed_until_end(response: reqwest::Response) -> Vec<SseEvent> {
    assert_eq!(response.status(), StatusCode::OK);
    let mut reader = SseReader::new(response);
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut events = Vec::new();
        while let Some(event) = reader.next().await {
            let last = event.event == "end";
            events.push(event);
            if last {
                break;
            }
        }
        events
    })
    .await
    .expect("the stream ended within 30 s")
}

async fn submit(host: &Host, input: Value) -> String {
    let (status, body) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/runs")
                .json(&input),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["run_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_run_streams_its_progress_then_its_output_and_resumes_after_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;

    let id = submit(&host, json!({"op": "steps", "n": 4, "ms": 400})).await;
    let events = until_end(
        host.request(Method::GET, &format!("/v1/agents/probe/runs/{id}/events"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let kinds: Vec<&str> = events.iter().map(|(e, _, _)| e.as_str()).collect();
    let fractions: Vec<f64> = events
        .iter()
        .filter(|(e, _, _)| e == "progress")
        .filter_map(|(_, _, d)| d["fraction"].as_f64())
        .collect();
    // Reported live: more than the last value, in order.
    assert!(fractions.len() >= 3, "{events:?}");
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert_eq!(kinds.first(), Some(&"status"), "{kinds:?}");
    assert_eq!(&kinds[kinds.len() - 2..], ["output", "end"], "{kinds:?}");
    let (_, _, output) = &events[events.len() - 2];
    assert_eq!(output["json"]["steps"], 4, "{output}");
    assert_eq!(events.last().unwrap().2["status"], "succeeded");

    // An ended run: its stored lines with ids, then the output; resumed after line 1.
    let id = submit(&host, json!({"op": "print"})).await;
    let (_, run) = host
        .send(host.request(Method::GET, &format!("/v1/agents/probe/runs/{id}?wait=30")))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let path = format!("/v1/agents/probe/runs/{id}/events");
    let all = until_end(host.request(Method::GET, &path).send().await.unwrap()).await;
    let lines: Vec<&(String, String, Value)> = all.iter().filter(|(e, _, _)| e == "log").collect();
    assert!(lines.len() >= 2, "{all:?}");
    assert_eq!(lines[0].1, "log:1");
    let resumed = until_end(
        host.request(Method::GET, &path)
            .header("last-event-id", "log:1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let resumed_lines: Vec<&str> = resumed
        .iter()
        .filter(|(e, _, _)| e == "log")
        .map(|(_, id, _)| id.as_str())
        .collect();
    assert_eq!(resumed_lines.len(), lines.len() - 1, "{resumed:?}");
    assert!(!resumed_lines.contains(&"log:1"));
    assert_eq!(resumed.last().unwrap().0, "end");

    let missing = host
        .request(Method::GET, "/v1/agents/probe/runs/run_nope/events")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn gust_runs_get_follow_prints_progress_then_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let id = submit(&host, json!({"op": "steps", "n": 3, "ms": 400})).await;
    let (url, token) = (host.url.clone(), crate::support::TOKEN);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
            .args(["runs", "get", "probe", &id, "--follow"])
            .env("GUST_URL", url)
            .env("GUST_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("progress") && stderr.contains("step 1 of 3"),
        "{stderr}"
    );
    assert!(
        stdout.contains("succeeded") && stdout.contains("\"steps\": 3"),
        "{stdout}"
    );
}

/// A sync call asked for as Server-Sent Events: its progress as the guest reports it, then
/// the output.
#[tokio::test]
async fn a_sync_call_streams_its_progress_before_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let response = host
        .request(Method::POST, "/v1/agents/probe/run")
        .header("accept", "text/event-stream")
        .json(&json!({"op": "steps", "n": 3, "ms": 500}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("gust-run-id"));
    let events = timed_until_end(response).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["progress", "progress", "progress", "output", "end"],
        "{events:?}"
    );
    let (output, answered) = (&events[3].data, events[3].at);
    assert_eq!(output["json"]["steps"], 3, "{output}");
    assert_eq!(output["deployment"]["version"], 1, "{output}");
    // Streamed as reported, not gathered at the end.
    let first = events[0].at;
    assert!(
        answered.duration_since(first) >= Duration::from_millis(700),
        "the first progress came {:?} before the output",
        answered.duration_since(first)
    );

    // An error ends the stream as an event with the status a plain call would answer.
    let response = host
        .request(Method::POST, "/v1/agents/probe/run")
        .header("accept", "text/event-stream")
        .json(&json!({"op": "fail"}))
        .send()
        .await
        .unwrap();
    let events = until_end(response).await;
    let (kind, _, error) = &events[events.len() - 2];
    assert_eq!(kind, "error");
    assert_eq!(
        (&error["status"], &error["kind"]),
        (&json!(502), &json!("failed")),
        "{error}"
    );
}
