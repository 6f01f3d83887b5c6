//! Isolation: a misbehaving agent does not take the host or its neighbours down, and a
//! client that goes away takes its call with it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Host, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_agent_answers_while_another_spins_and_bombs_memory() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(Host::start(dir.path()).await);
    for agent in ["bad", "good"] {
        host.upload_file(agent, gust_test_guests::PROBE_A).await;
    }
    host.set_config("bad", json!({"sync_timeout_s": 3, "memory_mib": 64}))
        .await;
    host.deploy("bad", None).await;
    host.deploy("good", None).await;

    // 50 concurrent calls that spin on CPU and 50 that grow memory past the limit.
    let attack: Vec<_> = (0..100)
        .map(|i| {
            let host = Arc::clone(&host);
            let input = if i % 2 == 0 {
                json!({"op": "spin"})
            } else {
                json!({"op": "alloc", "mb": 200})
            };
            tokio::spawn(async move { host.call("bad", input).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut served = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let (status, _, body) = host.call("good", json!({"op": "echo"})).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the healthy agent failed during the attack: {body}"
        );
        served += 1;
    }
    let mut statuses = Vec::new();
    for call in attack {
        statuses.push(call.await.unwrap());
    }
    assert!(served > 10, "only {served} healthy calls in 3 s");
    // The attack itself got clean answers: timeouts, memory limits, or 429 past the agent's
    // instance bound. Never a 500.
    assert!(
        statuses.iter().all(|s| [
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::BAD_GATEWAY,
            StatusCode::TOO_MANY_REQUESTS
        ]
        .contains(s)),
        "{statuses:?}"
    );
    // No filesystem, environment or sockets reached the guest either: see `calls` for the
    // guest's view; here the host is still whole.
    let h = Arc::clone(&host);
    eventually(Duration::from_secs(10), "every instance gone", || {
        let h = Arc::clone(&h);
        async move { h.stats().await["live_instances"] == 0 }
    })
    .await;
}

#[tokio::test]
async fn a_guest_reaches_no_files_environment_or_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let (status, _, seen) = host.call("probe", json!({"op": "sandbox"})).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    for denied in ["read_root", "read_etc_passwd", "tcp", "dns"] {
        assert!(
            seen[denied].get("Err").is_some(),
            "{denied} must fail: {seen}"
        );
    }
    assert_eq!(
        (seen["env"].as_u64(), seen["args"].as_u64()),
        (Some(0), Some(0)),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_disconnects_mid_call_leave_no_instance_behind() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config("probe", json!({"sync_timeout_s": 60, "max_instances": 64}))
        .await;
    host.deploy("probe", None).await;

    // Clients that give up after 100 ms, while the guest sleeps in a host call or spins.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let url = format!("{}/v1/agents/probe/run", host.url);
    let gave_up = futures::stream::iter(0..1000)
        .map(|i| {
            let input = if i % 2 == 0 {
                json!({"op": "sleep", "ms": 30_000})
            } else {
                json!({"op": "spin"})
            };
            impatient
                .post(&url)
                .bearer_auth(crate::support::TOKEN)
                .json(&input)
                .send()
        })
        .buffer_unordered(32)
        .filter(|r| std::future::ready(r.as_ref().is_err_and(|e| e.is_timeout())))
        .count()
        .await;
    assert_eq!(gave_up, 1000, "every client gave up mid-call");
    let h = &host;
    eventually(
        Duration::from_secs(10),
        "every dropped call's store to be gone",
        || async move {
            let stats = h.stats().await;
            stats["live_instances"] == 0 && stats["instances_admitted"] == 0
        },
    )
    .await;
    let (status, _, _) = host.call("probe", json!({"op": "echo"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = host.send(host.request(Method::GET, "/healthz")).await;
    assert_eq!(status, StatusCode::OK);
}
