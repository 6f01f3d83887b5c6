//! What a guest does, as the caller sees it: outputs, typed errors, traps, timeouts, logs;
//! and graceful shutdown with a call in flight.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Host, error_kind, eventually};

async fn probe_host(dir: &std::path::Path) -> Host {
    let host = Host::start(dir).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config(
        "probe",
        json!({"sync_timeout_s": 1, "config": {"greeting": "hi"}}),
    )
    .await;
    host.deploy("probe", None).await;
    host
}

#[tokio::test]
async fn guest_outcomes_map_to_error_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path()).await;

    let (status, version, body) = host.call("probe", json!({"key": "greeting"})).await;
    assert_eq!((status, version), (StatusCode::OK, Some(1)));
    assert_eq!(body["config"], "hi");
    assert_eq!(body["agent"], "probe");
    assert_eq!(body["attempt"], 1);
    assert_eq!(body["has_deadline"], true);

    let (status, _, body) = host.call("probe", json!({"op": "invalid"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_kind(&body, "invalid_input"),
        "probe refused its input"
    );

    // Input that is not JSON never reaches the author's code: the SDK answers invalid-input.
    let response = host
        .request(reqwest::Method::POST, "/v1/agents/probe/run")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        error_kind(&body, "invalid_input").contains("not valid JSON"),
        "{body}"
    );

    let (status, _, body) = host.call("probe", json!({"op": "fail"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error_kind(&body, "failed"), "probe failed on purpose");

    let (status, _, body) = host.call("probe", json!({"op": "panic"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // No guest or host detail (panic message, wasm backtrace) reaches the caller.
    assert_eq!(error_kind(&body, "trap"), "the agent trapped");

    // A guest spinning on pure CPU, and one blocked in a host call, are both cut off.
    for op in [json!({"op": "spin"}), json!({"op": "sleep", "ms": 30_000})] {
        let started = Instant::now();
        let (status, _, body) = host.call("probe", op.clone()).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{op}: {body}");
        error_kind(&body, "timeout");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{op} took {:?}",
            started.elapsed()
        );
    }

    // Guest stdout, stderr and log lines reach the host log, tagged with the run id.
    let response = host
        .request(reqwest::Method::POST, "/v1/agents/probe/run")
        .json(&json!({"op": "print"}))
        .send()
        .await
        .unwrap();
    let run_id = response.headers()["gust-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.status(), StatusCode::OK);
    for line in [
        "probe stdout line for",
        "probe stderr line for",
        "probe log line for",
    ] {
        let wanted = format!("{line} {run_id}");
        let (h, w) = (&host, &wanted);
        eventually(
            Duration::from_secs(5),
            w,
            || async move { h.log().contains(w) },
        )
        .await;
    }

    // Every store was dropped: no instance outlives its call.
    let h = &host;
    eventually(
        Duration::from_secs(5),
        "live_instances back to 0",
        || async move { h.stats().await["live_instances"] == 0 },
    )
    .await;
}

#[tokio::test]
async fn the_router_flow_uses_config_logs_and_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("router", gust_test_guests::ROUTER).await;
    host.set_config(
        "router",
        json!({"config": {"TEAM_OUTAGE": "sre", "TEAM_OTHER": "support"}}),
    )
    .await;
    host.deploy("router", None).await;

    let ticket =
        json!({"subject": "Site down", "body": "checkout returns 500", "tier": "enterprise"});
    let (status, _, body) = host.call("router", ticket.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["category"], "OUTAGE");
    assert_eq!(body["priority"], "p1");
    assert_eq!(body["team"], "sre");
    assert_eq!(body["matched"], json!(["down", "500"]));
    let id = crate::runs::submit(&host, "router", ticket.clone()).await;
    let run = crate::runs::finished(&host, "router", &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["json"], body, "queued, the same answer");

    let (status, _, body) = host
        .call("router", json!({"subject": "refund please"}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        error_kind(&body, "failed").contains("TEAM_BILLING"),
        "{body}"
    );

    let (status, _, body) = host.call("router", json!({"subject": "  "})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    error_kind(&body, "invalid_input");
    let (status, _, _) = host
        .call("router", json!({"subject": "x", "surprise": 1}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        host.log().contains("classified as OUTAGE"),
        "the flow's log line reached the host log"
    );
}

#[tokio::test]
async fn sigterm_lets_calls_in_flight_finish_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = probe_host(dir.path()).await;
    host.set_config("probe", json!({"sync_timeout_s": 30}))
        .await;
    host.deploy("probe", None).await;

    let call = {
        let request = host
            .request(reqwest::Method::POST, "/v1/agents/probe/run")
            .json(&json!({"op": "sleep", "ms": 1500}));
        tokio::spawn(async move { request.send().await })
    };
    let h = &host;
    eventually(Duration::from_secs(5), "the call to start", || async move {
        h.stats().await["live_instances"] == 1
    })
    .await;
    host.signal("TERM");
    // New connections are refused while the call in flight goes on.
    let address = host.url.trim_start_matches("http://").to_owned();
    let a = &address;
    eventually(
        Duration::from_secs(5),
        "the listener to close",
        || async move { tokio::net::TcpStream::connect(a).await.is_err() },
    )
    .await;

    let response = call.await.unwrap().expect("the call in flight is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["slept_ms"], 1500);
    let code = tokio::task::spawn_blocking(move || host.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = probe_host(dir.path()).await;
    host.set_config("probe", json!({"sync_timeout_s": 60}))
        .await;
    host.deploy("probe", None).await;
    let request = host
        .request(reqwest::Method::POST, "/v1/agents/probe/run")
        .json(&json!({"op": "sleep", "ms": 60_000}));
    let call = tokio::spawn(async move { request.send().await });
    let h = &host;
    eventually(Duration::from_secs(5), "the call to start", || async move {
        h.stats().await["live_instances"] == 1
    })
    .await;
    host.signal("INT");
    // The first signal waits for the minute-long call; the second one does not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.signal("INT");
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || host.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(130));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        call.await.unwrap().is_err(),
        "the cut-off call gets no answer"
    );
}
