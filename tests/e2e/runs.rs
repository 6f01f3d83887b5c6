//! Queued runs: submit, poll with `?wait`, progress and logs, listing, cancel, expiry,
//! idempotency, re-run, and runs staying on the deployment that accepted them.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Host, error_kind, eventually};

pub(crate) async fn submit(host: &Host, agent: &str, input: Value) -> String {
    let (status, body) = host
        .send(
            host.request(Method::POST, &format!("/v1/agents/{agent}/runs"))
                .json(&input),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        body["poll_url"],
        format!("{}/v1/agents/{agent}/runs/{id}", host.url)
    );
    id
}

pub(crate) async fn poll(host: &Host, agent: &str, id: &str, wait_s: u64) -> Value {
    let (status, body) = host
        .send(host.request(
            Method::GET,
            &format!("/v1/agents/{agent}/runs/{id}?wait={wait_s}"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls with `?wait` until the run ends.
pub(crate) async fn finished(host: &Host, agent: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = poll(host, agent, id, 10).await;
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} never ended: {run}");
    }
}

async fn probe_host(dir: &std::path::Path, extra: &[&str]) -> Host {
    let host = Host::start_on(dir.join("data"), extra).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config("probe", json!({"async_timeout_s": 2, "config": {"k": "v"}}))
        .await;
    host.deploy("probe", None).await;
    host
}

#[tokio::test]
async fn poll_sees_progress_logs_output_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &[]).await;

    let id = submit(&host, "probe", json!({"op": "echo", "key": "k"})).await;
    let run = finished(&host, "probe", &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(
        (
            run["agent"].as_str(),
            run["version"].as_u64(),
            run["deployment"].as_u64()
        ),
        (Some("probe"), Some(1), Some(1))
    );
    assert_eq!(run["attempts"], 1);
    assert_eq!(run["output"]["content_type"], "application/json");
    let output = &run["output"]["json"];
    assert_eq!(
        (output["marker"].as_str(), output["config"].as_str()),
        (Some("a"), Some("v"))
    );
    assert_eq!(
        output["run_id"],
        id.as_str(),
        "the guest saw the run id the caller got"
    );
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(
            run[field].as_str().unwrap().ends_with('Z'),
            "{field}: {run}"
        );
    }
    assert_eq!(
        (run["error"].clone(), run["delivery"].clone()),
        (Value::Null, Value::Null)
    );

    // Progress is visible while the run goes on, and logs are kept on the run.
    let id = submit(&host, "probe", json!({"op": "steps", "n": 4, "ms": 250})).await;
    let (h, i) = (&host, &id);
    eventually(
        Duration::from_secs(10),
        "progress while running",
        || async move {
            let run = poll(h, "probe", i, 0).await;
            run["status"] == "running"
                && run["progress"]["fraction"]
                    .as_f64()
                    .is_some_and(|f| f > 0.0 && f < 1.0)
        },
    )
    .await;
    let run = finished(&host, "probe", &id).await;
    assert_eq!(
        run["progress"],
        json!({"fraction": 1.0, "message": "step 4 of 4"})
    );

    let id = submit(&host, "probe", json!({"op": "print"})).await;
    let run = finished(&host, "probe", &id).await;
    let logs: Vec<(String, String)> = run["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["level"].as_str().unwrap().to_owned(),
                l["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (level, text) in [
        ("stdout", "probe stdout line"),
        ("stderr", "probe stderr line"),
        ("info", "probe log line"),
    ] {
        assert!(
            logs.iter()
                .any(|(l, m)| l == level && m == &format!("{text} for {id}")),
            "{level} {text}: {logs:?}"
        );
    }
    assert!(
        !host.log().contains(&format!("probe log line for {id}")),
        "queued runs log to the run, not the host"
    );

    for (input, kind) in [
        (json!({"op": "fail"}), "failed"),
        (json!({"op": "invalid"}), "invalid_input"),
        (json!({"op": "panic"}), "trap"),
        (json!({"op": "spin"}), "timeout"),
    ] {
        let id = submit(&host, "probe", input.clone()).await;
        let run = finished(&host, "probe", &id).await;
        assert_eq!(run["status"], "failed", "{input}: {run}");
        assert_eq!(run["error"]["kind"], kind, "{input}: {run}");
        assert_eq!(run["output"], Value::Null);
    }

    // Unknown and malformed run ids, and a wait past the limit.
    for id in ["run_0123456789abcdef0123456789abcdef", "nope"] {
        let (status, body) = host
            .send(host.request(Method::GET, &format!("/v1/agents/probe/runs/{id}")))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        error_kind(&body, "not_found");
    }
    let (status, _) = host
        .send(host.request(Method::GET, &format!("/v1/agents/probe/runs/{id}?wait=61")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = host
        .send(
            host.request(Method::POST, "/v1/agents/nobody/runs")
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Listing: newest first, paged by cursor, filtered by status.
    let (_, page) = host
        .send(host.request(Method::GET, "/v1/agents/probe/runs?limit=3"))
        .await;
    let first: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(first.len(), 3);
    assert!(
        first.windows(2).all(|w| w[0] > w[1]),
        "newest first: {first:?}"
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    assert_eq!(cursor, first[2]);
    // Listings are summaries: no outputs, logs or outgoing requests (a poll has them).
    for run in page["runs"].as_array().unwrap() {
        for heavy in ["output", "logs", "outbound"] {
            assert!(run.get(heavy).is_none(), "{heavy} in a listing: {run}");
        }
        assert!(
            run["status"].is_string() && run["attempts"].is_u64(),
            "{run}"
        );
    }
    let polled = poll(&host, "probe", first[0], 0).await;
    assert!(
        polled.get("output").is_some() && polled.get("logs").is_some(),
        "{polled}"
    );
    let (_, rest) = host
        .send(host.request(
            Method::GET,
            &format!("/v1/agents/probe/runs?limit=200&cursor={cursor}"),
        ))
        .await;
    assert_eq!(
        rest["runs"].as_array().unwrap().len(),
        4,
        "7 runs in all: {rest}"
    );
    assert_eq!(rest["next_cursor"], Value::Null);
    let (_, failed) = host
        .send(host.request(Method::GET, "/v1/agents/probe/runs?status=failed"))
        .await;
    assert_eq!(failed["runs"].as_array().unwrap().len(), 4);
    let (status, _) = host
        .send(host.request(Method::GET, "/v1/agents/probe/runs?status=weird"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A cursor is a run id: anything else is a mistake, not an empty page (nor, sorting
    // after every run id, the whole list).
    for cursor in ["garbage", "run_zzz"] {
        let (status, body) = host
            .send(host.request(
                Method::GET,
                &format!("/v1/agents/probe/runs?cursor={cursor}"),
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{cursor}: {body}");
    }
    // An agent that does not exist has no runs to list, as it has no keys or versions.
    let (status, body) = host
        .send(host.request(Method::GET, "/v1/agents/nobody/runs"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn cancel_stops_queued_and_spinning_runs_and_queued_runs_expire() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &["--workers", "1"]).await;
    host.set_config(
        "probe",
        json!({"async_timeout_s": null, "max_queue_wait_s": 3}),
    )
    .await;
    host.deploy("probe", None).await;

    let spinning = submit(&host, "probe", json!({"op": "spin"})).await;
    let (h, s) = (&host, &spinning);
    eventually(
        Duration::from_secs(10),
        "the spin to start",
        || async move { poll(h, "probe", s, 0).await["status"] == "running" },
    )
    .await;
    // The only worker is busy: these wait in the queue.
    let queued = submit(&host, "probe", json!({"op": "echo"})).await;
    let expiring = submit(&host, "probe", json!({"op": "echo"})).await;
    let (status, run) = host
        .send(host.request(
            Method::POST,
            &format!("/v1/agents/probe/runs/{queued}/cancel"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "cancelled");

    // The second one waits past its deployment's max_queue_wait_s.
    let run = finished(&host, "probe", &expiring).await;
    assert_eq!(run["status"], "expired", "{run}");
    assert_eq!(run["attempts"], 0);

    let started = Instant::now();
    let (status, run) = host
        .send(host.request(
            Method::POST,
            &format!("/v1/agents/probe/runs/{spinning}/cancel"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["status"], "cancelled");
    let h = &host;
    eventually(
        Duration::from_secs(1),
        "the spinning guest to be dropped",
        || async move { h.stats().await["live_instances"] == 0 },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "interrupted within 1 s: {:?}",
        started.elapsed()
    );

    // The cancelled queued run never started, and the worker is free again.
    let run = poll(&host, "probe", &queued, 0).await;
    assert_eq!(
        (
            run["status"].as_str(),
            run["attempts"].as_u64(),
            &run["started_at"]
        ),
        (Some("cancelled"), Some(0), &Value::Null)
    );
    let (status, body) = host
        .send(host.request(
            Method::POST,
            &format!("/v1/agents/probe/runs/{queued}/cancel"),
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    error_kind(&body, "conflict");
    let next = submit(&host, "probe", json!({"op": "echo"})).await;
    assert_eq!(finished(&host, "probe", &next).await["status"], "succeeded");
}

#[tokio::test]
async fn idempotency_keys_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &[]).await;
    let with_key = |key: &str, body: Value| {
        host.request(Method::POST, "/v1/agents/probe/runs")
            .header("idempotency-key", key)
            .json(&body)
    };
    let response = with_key("order-17", json!({"n": 1})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(
        !response.headers().contains_key("idempotent-replayed"),
        "the first answer is not a replay"
    );
    let first: Value = response.json().await.unwrap();
    let id = first["run_id"].as_str().unwrap().to_owned();
    // A replay answers as the original did (202), marked as a replay.
    let replay = with_key("order-17", json!({"n": 1})).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let again: Value = replay.json().await.unwrap();
    assert_eq!(again["run_id"], id.as_str());
    let (status, body) = host.send(with_key("order-17", json!({"n": 2}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    error_kind(&body, "conflict");
    let (status, _) = host.send(with_key(&"k".repeat(256), json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Concurrent submissions with one key: one run, the others answered with it.
    let answers = futures::future::join_all((0..8).map(|_| async {
        let response = with_key("burst", json!({"b": 1})).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let replayed = response.headers().contains_key("idempotent-replayed");
        (replayed, response.json::<Value>().await.unwrap())
    }))
    .await;
    let created = answers.iter().filter(|(replayed, _)| !replayed).count();
    assert_eq!(created, 1, "{answers:?}");
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .map(|(_, b)| b["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let (_, list) = host
        .send(host.request(Method::GET, "/v1/agents/probe/runs"))
        .await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 2, "one run per key");

    // A re-run takes the same input to the live deployment.
    finished(&host, "probe", &id).await;
    host.upload_file("probe", gust_test_guests::PROBE_B).await;
    host.deploy("probe", None).await;
    let (status, rerun) = host
        .send(host.request(Method::POST, &format!("/v1/agents/probe/runs/{id}/rerun")))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rerun}");
    let rerun_id = rerun["run_id"].as_str().unwrap();
    assert_ne!(rerun_id, id);
    let run = finished(&host, "probe", rerun_id).await;
    assert_eq!(
        (
            run["version"].as_u64(),
            run["output"]["json"]["marker"].as_str()
        ),
        (Some(2), Some("b"))
    );
    assert_eq!(run["output"]["json"]["input"], json!({"n": 1}));
}

#[tokio::test]
async fn queued_runs_finish_on_the_deployment_that_accepted_them() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &["--workers", "1"]).await;
    host.set_config("probe", json!({"async_timeout_s": 30}))
        .await;
    host.deploy("probe", None).await;
    // The only worker sleeps through the redeploy, so `waiting` is still queued when the
    // new deployment goes live.
    let first = submit(&host, "probe", json!({"op": "sleep", "ms": 3000})).await;
    let waiting = submit(&host, "probe", json!({"op": "echo"})).await;
    host.upload_file("probe", gust_test_guests::PROBE_B).await;
    host.deploy("probe", None).await;
    let run = poll(&host, "probe", &waiting, 0).await;
    assert_eq!(
        run["status"], "queued",
        "still waiting when the new deployment went live: {run}"
    );
    let after = submit(&host, "probe", json!({"op": "echo"})).await;
    for (id, version, marker) in [(&first, 2, "a"), (&waiting, 2, "a"), (&after, 3, "b")] {
        let run = finished(&host, "probe", id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["deployment"], version, "{run}");
        assert_eq!(run["output"]["json"]["marker"], marker, "{run}");
    }
}

#[tokio::test]
async fn wait_returns_when_the_run_ends_or_when_the_time_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &[]).await;
    host.set_config("probe", json!({"async_timeout_s": 30}))
        .await;
    host.deploy("probe", None).await;

    let id = submit(&host, "probe", json!({"op": "sleep", "ms": 1500})).await;
    let started = Instant::now();
    let run = poll(&host, "probe", &id, 20).await;
    let waited = started.elapsed();
    assert_eq!(run["status"], "succeeded");
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(6),
        "returned when the run ended: {waited:?}"
    );

    let id = submit(&host, "probe", json!({"op": "sleep", "ms": 5000})).await;
    let started = Instant::now();
    let run = poll(&host, "probe", &id, 1).await;
    let waited = started.elapsed();
    assert!(
        matches!(run["status"].as_str(), Some("queued" | "running")),
        "{run}"
    );
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
        "held for the wait: {waited:?}"
    );
}

/// A submission whose client goes away before the answer keeps no place in the agent's
/// queue, whatever its outcome (a replayed key here). The request's own code gave the place
/// back, and a disconnect drops that code mid-way: the agent was then refused ("already has
/// N runs waiting") with nothing waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_whose_clients_went_away_keep_no_place_in_the_queue() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &["--max-queued-per-agent", "2"]).await;
    let body = r#"{"op":"echo"}"#;
    let (status, first) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/runs")
                .header("idempotency-key", "once")
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    finished(&host, "probe", first["run_id"].as_str().unwrap()).await;
    // The same submission again, from clients that close the connection once it is sent.
    let address = host.url.strip_prefix("http://").unwrap();
    let request = format!(
        "POST /v1/agents/probe/runs HTTP/1.1\r\nhost: gust\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\nidempotency-key: once\r\ncontent-length: {}\r\n\r\n{body}",
        crate::support::TOKEN,
        body.len()
    );
    let gone = (0..200).map(|_| {
        let (address, request) = (address.to_owned(), request.clone());
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            // Reset, not closed: the host sees it at once.
            stream.set_zero_linger().unwrap();
        })
    });
    for client in futures::future::join_all(gone).await {
        client.unwrap();
    }
    let h = &host;
    eventually(
        Duration::from_secs(10),
        "new runs accepted",
        || async move {
            let (status, _) = h
                .send(
                    h.request(Method::POST, "/v1/agents/probe/runs")
                        .json(&json!({"op": "echo"})),
                )
                .await;
            status == StatusCode::ACCEPTED
        },
    )
    .await;
}
