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
