//! Persistence: after kill -9 every agent is served again at its live deployment, from the
//! precompiled cache (no compile), or compiled once when the cache is gone.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::Host;

#[tokio::test]
async fn kill_nine_then_restart_serves_the_same_deployment_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("echo", gust_test_guests::ECHO).await;
    host.upload_file("echo", gust_test_guests::PROBE_B).await;
    host.set_config("echo", json!({"config": {"marker": "persisted"}}))
        .await;
    host.deploy("echo", Some(1)).await;
    host.set_config("echo", json!({"config": {"marker": "draft only"}}))
        .await;
    let before = host.call("echo", json!({"n": 1})).await;
    assert_eq!(before.0, StatusCode::OK);
    let data_dir = host.kill9();

    let host = Host::start_on(data_dir.clone(), &[]).await;
    let (status, version, body) = host.call("echo", json!({"n": 1})).await;
    assert_eq!((status, version), (StatusCode::OK, Some(1)));
    assert_eq!(body, before.2, "same version, same frozen config");
    let stats = host.stats().await;
    assert_eq!(stats["compiles_total"], 0, "{stats}");
    assert_eq!(stats["cache_loads_total"], 1, "{stats}");
    assert_eq!(stats["deployments"], 1, "{stats}");
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/echo"))
        .await;
    assert_eq!(agent["versions"].as_array().unwrap().len(), 2, "{agent}");
    assert_eq!(agent["draft"]["config"]["marker"], "draft only");
    let data_dir = host.kill9();

    std::fs::remove_dir_all(data_dir.join("cache")).unwrap();
    // What a crash between writing an upload's bytes and recording its version leaves.
    let components = data_dir.join("components");
    let orphan = components.join(format!("{}.wasm", "ab".repeat(32)));
    std::fs::write(&orphan, b"orphan").unwrap();
    std::fs::write(components.join(".tmpXYZ123"), b"half").unwrap();
    let host = Host::start_on(data_dir, &[]).await;
    let (status, version, body) = host.call("echo", json!({"n": 1})).await;
    assert_eq!((status, version), (StatusCode::OK, Some(1)));
    assert_eq!(body["marker"], "persisted");
    assert_eq!(host.stats().await["compiles_total"], 1);
    // The start-up sweep removed the leftovers and kept both versions' components.
    let mut left: Vec<String> = std::fs::read_dir(&components)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|f| f.ends_with(".wasm") && !f.starts_with("abab")),
        "{left:?}"
    );
    let (status, _) = host
        .send(
            host.request(Method::POST, "/v1/agents/echo/deploy")
                .json(&json!({"version": 2})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the other version's component is intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_while_submitting_loses_no_accepted_run() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;

    // A run in the middle of an attempt when the host dies is executed again after restart.
    let interrupted = crate::runs::submit(&host, "probe", json!({"op": "sleep", "ms": 1500})).await;
    let (h, i) = (&host, &interrupted);
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the run to start",
        || async move { crate::runs::poll(h, "probe", i, 0).await["status"] == "running" },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..8 {
        let (http, url, stop) = (host.http.clone(), host.url.clone(), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = http
                    .post(format!("{url}/v1/agents/probe/runs"))
                    .bearer_auth(crate::support::TOKEN)
                    .json(&json!({"op": "echo", "client": client, "n": n}))
                    .send()
                    .await;
                // Once the host is gone, requests fail: that is the point.
                let Ok(response) = sent else { break };
                if response.status() != StatusCode::ACCEPTED {
                    continue;
                }
                let Ok(body) = response.json::<serde_json::Value>().await else {
                    break;
                };
                accepted.push(body["run_id"].as_str().unwrap().to_owned());
            }
            accepted
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let data_dir = host.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    for client in clients {
        accepted.extend(client.await.unwrap());
    }
    assert!(
        accepted.len() > 50,
        "only {} runs were accepted before the kill",
        accepted.len()
    );

    let host = Host::start_on(data_dir, &[]).await;
    for id in &accepted {
        let run = crate::runs::finished(&host, "probe", id).await;
        assert_eq!(
            run["status"], "succeeded",
            "an accepted run was lost or failed: {run}"
        );
    }
    let run = crate::runs::finished(&host, "probe", &interrupted).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempts"], 2, "executed again after the crash: {run}");
    eprintln!(
        "{} runs accepted before kill -9, all ended after restart",
        accepted.len()
    );
}
