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

/// What a key holder can make the host store is bounded: an agent's stored runs stay within
/// `--max-run-storage-mib` (507 `storage_full` past it, nothing evicted), and submissions
/// stop before the disk fills (`--min-free-disk-mib`).
#[tokio::test]
async fn stored_runs_and_the_disk_are_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--max-run-storage-mib", "1"]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let submit = |host: &Host, input: serde_json::Value| {
        host.request(reqwest::Method::POST, "/v1/agents/probe/runs")
            .json(&input)
    };
    // 300 KiB of input each; the echo answers them back, so each run keeps about 600 KiB:
    // the first two fit in 1 MiB (the second is accepted at 900 KiB), the third does not.
    let big = serde_json::json!({"op": "echo", "pad": "x".repeat(300 << 10)});
    let mut kept = Vec::new();
    for _ in 0..2 {
        let (status, run) = host.send(submit(&host, big.clone())).await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{run}");
        let id = run["run_id"].as_str().unwrap().to_owned();
        crate::runs::finished(&host, "probe", &id).await;
        kept.push(id);
    }
    let (status, body) = host.send(submit(&host, big.clone())).await;
    assert_eq!(status, reqwest::StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        crate::support::error_kind(&body, "storage_full").contains("1 MiB"),
        "{body}"
    );
    // The runs kept before are still there: nothing is evicted to make room.
    for id in &kept {
        let run = crate::runs::poll(&host, "probe", id, 0).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    drop(host);

    // A disk with less free space than asked for refuses runs (here: asking for 100 TiB).
    let host = Host::start_on(
        dir.path().join("data"),
        &["--min-free-disk-mib", "104857600"],
    )
    .await;
    crate::support::eventually(Duration::from_secs(10), "runs refused", || async {
        let (status, _) = host
            .send(submit(&host, serde_json::json!({"op": "echo"})))
            .await;
        status == reqwest::StatusCode::INSUFFICIENT_STORAGE
    })
    .await;
    let (_, body) = host
        .send(submit(&host, serde_json::json!({"op": "echo"})))
        .await;
    assert!(
        crate::support::error_kind(&body, "storage_full").contains("disk"),
        "{body}"
    );
    // So does an upload, whose bytes would go to the same disk.
    let (status, body) = host
        .upload("other", std::fs::read(gust_test_guests::ECHO).unwrap())
        .await;
    assert_eq!(status, reqwest::StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        crate::support::error_kind(&body, "storage_full").contains("new versions"),
        "{body}"
    );
    // Bytes already stored are their version again (a redeploy from a project uploads them).
    let (status, body) = host
        .upload("probe", std::fs::read(gust_test_guests::PROBE_A).unwrap())
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
}
