//! Limits on every call and backpressure: memory, stack, output size, instances running at
//! once (429 and recovery), queued runs per agent.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::runs::{finished, submit};
use crate::support::{Host, error_kind, eventually};

async fn probe(host: &Host, agent: &str, config: serde_json::Value) {
    host.upload_file(agent, gust_test_guests::PROBE_A).await;
    host.set_config(agent, config).await;
    host.deploy(agent, None).await;
}

#[tokio::test]
async fn memory_stack_and_output_limits_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    probe(&host, "probe", json!({"memory_mib": 64, "output_mib": 1})).await;

    // Memory: within the limit works; past it, `memory_limit`, sync and queued.
    let (status, _, body) = host.call("probe", json!({"op": "alloc", "mb": 16})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = host.call("probe", json!({"op": "alloc", "mb": 100})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        error_kind(&body, "memory_limit").contains("64 MiB"),
        "{body}"
    );
    let id = submit(&host, "probe", json!({"op": "alloc", "mb": 100})).await;
    assert_eq!(
        finished(&host, "probe", &id).await["error"]["kind"],
        "memory_limit"
    );

    // Stack: deep recursion traps, and the host goes on.
    let (status, _, body) = host
        .call("probe", json!({"op": "recurse", "n": 10_000_000}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    error_kind(&body, "trap");
    let id = submit(&host, "probe", json!({"op": "recurse", "n": 10_000_000})).await;
    assert_eq!(finished(&host, "probe", &id).await["error"]["kind"], "trap");
    let (status, _, body) = host
        .call("probe", json!({"op": "recurse", "n": 1000}))
        .await;
    assert_eq!(
        (status, body["depth"].as_u64()),
        (StatusCode::OK, Some(1000))
    );

    // Output: past the deployment's output_mib.
    let (status, _, body) = host.call("probe", json!({"op": "big", "mb": 2})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    error_kind(&body, "output_too_large");

    // Limits stay within the server's maxima.
    let (status, body) = host
        .send(
            host.request(Method::PUT, "/v1/agents/probe/config")
                .json(&json!({"memory_mib": 4096})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_kind(&body, "bad_request").contains("memory_mib"));
    let h = &host;
    eventually(Duration::from_secs(5), "no instance left", || async move {
        h.stats().await["live_instances"] == 0
    })
    .await;
}

#[tokio::test]
async fn a_full_agent_answers_429_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(
        dir.path().join("data"),
        &[
            "--agent-instances",
            "1",
            "--admission-wait-ms",
            "200",
            "--max-queued-per-agent",
            "2",
        ],
    )
    .await;
    probe(
        &host,
        "busy",
        json!({"sync_timeout_s": 30, "async_timeout_s": 30}),
    )
    .await;
    probe(&host, "other", json!({})).await;

    let slow = host
        .request(Method::POST, "/v1/agents/busy/run")
        .json(&json!({"op": "sleep", "ms": 1500}));
    let slow = tokio::spawn(async move { slow.send().await });
    let h = &host;
    eventually(
        Duration::from_secs(5),
        "the slow call to run",
        || async move { h.stats().await["instances_admitted"] == 1 },
    )
    .await;
    let response = host
        .request(Method::POST, "/v1/agents/busy/run")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    error_kind(&body, "overloaded");
    // Another agent is not affected.
    assert_eq!(host.call("other", json!({})).await.0, StatusCode::OK);
    // Recovery: once the slow call ends, calls are admitted again.
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(host.call("busy", json!({})).await.0, StatusCode::OK);

    // Queued runs wait for room instead; past the per-agent bound, submissions get 429.
    let running = submit(&host, "busy", json!({"op": "sleep", "ms": 1500})).await;
    let (h, r) = (&host, &running);
    eventually(Duration::from_secs(5), "the run to start", || async move {
        crate::runs::poll(h, "busy", r, 0).await["status"] == "running"
    })
    .await;
    let waiting = [
        submit(&host, "busy", json!({})).await,
        submit(&host, "busy", json!({})).await,
    ];
    let (status, body) = host
        .send(
            host.request(Method::POST, "/v1/agents/busy/runs")
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    error_kind(&body, "overloaded");
    for id in waiting.iter().chain([&running]) {
        assert_eq!(finished(&host, "busy", id).await["status"], "succeeded");
    }
    submit(&host, "busy", json!({})).await;
}
