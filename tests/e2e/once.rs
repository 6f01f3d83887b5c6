//! Queued runs execute once: across a restart on a cold cache with a short lease (a worker
//! must not lose its run while its deployment compiles), and across graceful shutdowns
//! while runs finish (a finished result must be committed before the host exits). "Once"
//! is counted by the upstream each run calls, not by the host's own `attempts`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::runs::{poll, submit};
use crate::support::Host;
use crate::support::upstream::Upstream;

/// Waits until every run in `ids` has ended, up to `within`.
async fn all_ended(host: &Host, agent: &str, ids: &[String], within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut ended = Vec::new();
    for id in ids {
        loop {
            let run = poll(host, agent, id, 5).await;
            if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                ended.push(run);
                break;
            }
            assert!(Instant::now() < deadline, "run {id} never ended: {run}");
        }
    }
    ended
}

/// Runs left queued by a host killed with kill -9 execute once after a restart that finds
/// the precompiled cache gone (after an upgrade, or a wiped cache) and a lease of one
/// second: the Python component compiles for many seconds, and no run may lose its lease —
/// and be executed by a second worker — meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_execute_once_after_a_restart_on_a_cold_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let upstream = Upstream::start().await;
    let origin = upstream.origin.clone();
    let component = crate::support::componentize::component("tests/guests/python-probe").await;

    // One worker slot, so the runs wait in the queue behind one that holds it.
    let host = Host::start_on(data.clone(), &["--allow-private-network", "--workers", "1"]).await;
    host.upload_file("probe", &component).await;
    host.set_config(
        "probe",
        json!({"allowed_hosts": [origin], "outbound_timeout_s": 60, "max_instances": 8}),
    )
    .await;
    host.deploy("probe", None).await;
    let holder = format!("{origin}/hold?ms=3000");
    submit(&host, "probe", json!({"op": "fetch", "url": holder})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while upstream.hits("/hold?ms=3000") == 0 {
        assert!(Instant::now() < deadline, "the holding run never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ids = Vec::new();
    for i in 0..4 {
        let url = format!("{origin}/hello?run={i}");
        ids.push(submit(&host, "probe", json!({"op": "fetch", "url": url})).await);
    }
    host.kill9();
    std::fs::remove_dir_all(data.join("cache")).unwrap();

    // Room for every run of the agent from the start, before its deployment is loaded (a
    // host with more cores has it by default): each would compile the component itself.
    let host = Host::start_on(
        data,
        &[
            "--allow-private-network",
            "--lease",
            "1",
            "--agent-instances",
            "8",
        ],
    )
    .await;
    let runs = all_ended(&host, "probe", &ids, Duration::from_secs(240)).await;
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(
            upstream.hits(&format!("/hello?run={i}")),
            1,
            "run {i} executed once: {run}"
        );
        assert_eq!(run["attempts"], 1, "{run}");
    }
}

/// SIGTERM while runs finish, twenty times over one data folder: a run that finished is
/// recorded before the host exits, so none is executed a second time after the restart.
/// (Multi-threaded: the upstream must keep answering while the test waits for the exit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_runs_finish_loses_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let upstream = Upstream::start().await;
    let origin = upstream.origin.clone();
    let mut ids = Vec::new();
    let mut urls = Vec::new();
    for round in 0..20 {
        let mut host = Host::start_on(data.clone(), &["--allow-private-network"]).await;
        if round == 0 {
            host.upload_file("probe", gust_test_guests::PROBE_A).await;
            host.set_config(
                "probe",
                json!({"allowed_hosts": [origin], "max_instances": 8}),
            )
            .await;
            host.deploy("probe", None).await;
        }
        for i in 0..8 {
            let path = format!("/hello?round={round}&run={i}");
            let input = json!({"op": "fetch", "key": format!("{origin}{path}")});
            ids.push(submit(&host, "probe", input).await);
            urls.push(path);
        }
        // Stop while the runs just submitted are executing or finishing.
        host.signal("TERM");
        assert_eq!(
            host.wait_exit(Duration::from_secs(60)),
            Some(0),
            "{}",
            host.log()
        );
    }
    let host = Host::start_on(data, &["--allow-private-network"]).await;
    let runs = all_ended(&host, "probe", &ids, Duration::from_secs(120)).await;
    for (run, path) in runs.iter().zip(&urls) {
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(upstream.hits(path), 1, "{path} executed once: {run}");
    }
    let (_, stats) = host.send(host.request(Method::GET, "/v1/stats")).await;
    assert_eq!(stats["runs_running"], 0, "{stats}");
}
