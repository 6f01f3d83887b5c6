//! Redeploying under load never fails a call, and every call runs wholly on one deployment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::Host;

const CLIENTS: usize = 16;
const MIN_CALLS: usize = 2_000;
const REDEPLOYS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redeploys_under_load_fail_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(Host::start(dir.path()).await);
    // Two builds whose answers differ: the probe's compiled-in marker is "a" or "b".
    assert_eq!(host.upload_file("flip", gust_test_guests::PROBE_A).await, 1);
    assert_eq!(host.upload_file("flip", gust_test_guests::PROBE_B).await, 2);
    host.deploy("flip", Some(1)).await;
    let expected_marker = |version: u32| if version == 1 { "a" } else { "b" };

    // A call in flight finishes on the deployment it started on, even after a swap.
    let slow = host
        .request(Method::POST, "/v1/agents/flip/run")
        .json(&json!({"op": "sleep", "ms": 1000}));
    let slow = tokio::spawn(async move { slow.send().await });
    let h = Arc::clone(&host);
    crate::support::eventually(Duration::from_secs(5), "the slow call to start", || {
        let h = Arc::clone(&h);
        async move { h.stats().await["live_instances"] == 1 }
    })
    .await;
    host.deploy("flip", Some(2)).await;
    let (status, version, body) = host.call("flip", json!({"op": "echo"})).await;
    assert_eq!(
        (status, version, body["marker"].as_str()),
        (StatusCode::OK, Some(2), Some("b"))
    );
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.headers()["gust-agent-version"], "1");
    let slow: serde_json::Value = slow.json().await.unwrap();
    assert_eq!(slow, json!({"marker": "a", "slept_ms": 1000}));
    host.deploy("flip", Some(1)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (host, stop, calls) = (Arc::clone(&host), Arc::clone(&stop), Arc::clone(&calls));
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = host
                    .request(Method::POST, "/v1/agents/flip/run")
                    .json(&json!({"op": "echo"}))
                    .send()
                    .await
                    .expect("the connection never fails");
                let status = response.status();
                let version: Option<u32> = response
                    .headers()
                    .get("gust-agent-version")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                seen.push((
                    status,
                    version,
                    body["marker"].as_str().map(str::to_owned),
                    body["version"].as_u64(),
                ));
                calls.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }

    for i in 0..REDEPLOYS {
        // Let calls flow between swaps so every swap happens under load.
        let target = calls.load(Ordering::Relaxed) + MIN_CALLS / REDEPLOYS;
        while calls.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let version = if i % 2 == 0 { 2 } else { 1 };
        let answer = host.deploy("flip", Some(version)).await;
        assert_eq!(answer["version"], version);
    }
    while calls.load(Ordering::Relaxed) < MIN_CALLS + MIN_CALLS / REDEPLOYS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut per_version = [0usize; 3];
    for client in clients {
        for (status, version, marker, body_version) in client.await.unwrap() {
            total += 1;
            assert_eq!(status, StatusCode::OK, "a call failed during redeploys");
            let version = version.expect("every answer names its version");
            assert_eq!(
                marker.as_deref(),
                Some(expected_marker(version)),
                "the answer came from another build than its header says"
            );
            assert_eq!(
                body_version,
                Some(u64::from(version)),
                "the guest saw another version than the header"
            );
            per_version[version as usize] += 1;
        }
    }
    assert!(total >= MIN_CALLS, "only {total} calls");
    assert!(
        per_version[1] > 0 && per_version[2] > 0,
        "both builds served: {per_version:?}"
    );
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/flip"))
        .await;
    assert_eq!(
        agent["deployments"].as_array().unwrap().len(),
        REDEPLOYS + 3
    );
    eprintln!("{total} calls, {REDEPLOYS} redeploys, per version {per_version:?}");
}
