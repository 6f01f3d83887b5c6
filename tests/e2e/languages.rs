//! Agents in every language (Python and JavaScript built from source with the pinned
//! componentize-py and componentize-js): deployed, called sync and queued, served from the
//! precompiled cache after a restart; the SDKs' errors, context and outgoing HTTP.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::runs::{finished, submit};
use crate::support::componentize::component;
use crate::support::upstream::Upstream;
use crate::support::{Host, error_kind};

/// (agent, project folder); the Rust echo is built by `gust-test-guests`.
const ECHOES: [(&str, &str); 3] = [
    ("echo", "examples/echo"),
    ("python-echo", "examples/python-echo"),
    ("js-echo", "examples/js-echo"),
];

const PROBES: [(&str, &str); 2] = [
    ("python-probe", "tests/guests/python-probe"),
    ("js-probe", "tests/guests/js-probe"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_examples_in_every_language_run_sync_and_queued_and_restart_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    for (agent, folder) in ECHOES {
        let file = if agent == "echo" {
            gust_test_guests::ECHO.to_owned()
        } else {
            let file = component(folder).await;
            let size = std::fs::metadata(&file).unwrap().len();
            assert!(
                size > 5_000_000,
                "{agent} is a whole language runtime: {size} bytes"
            );
            file
        };
        host.upload_file(agent, &file).await;
        host.set_config(agent, json!({"config": {"marker": agent}}))
            .await;
        host.deploy(agent, None).await;

        let (status, version, body) = host.call(agent, json!({"say": "hi"})).await;
        assert_eq!((status, version), (StatusCode::OK, Some(1)), "{body}");
        assert_eq!(
            body,
            json!({"input": {"say": "hi"}, "version": 1, "marker": agent})
        );
        let id = submit(&host, agent, json!({"n": 7})).await;
        let run = finished(&host, agent, &id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(
            run["output"]["json"],
            json!({"input": {"n": 7}, "version": 1, "marker": agent})
        );
    }
    assert_eq!(host.stats().await["compiles_total"], 3);

    let data_dir = host.kill9();
    let host = Host::start_on(data_dir, &[]).await;
    for (agent, _) in ECHOES {
        let (status, _, body) = host.call(agent, json!("again")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["input"], "again");
    }
    let stats = host.stats().await;
    assert_eq!(stats["compiles_total"], 0, "served from the cache: {stats}");
    assert_eq!(stats["cache_loads_total"], 3, "{stats}");
}

async fn probe_host(dir: &std::path::Path, extra: &[&str]) -> Host {
    let host = Host::start_on(dir.join("data"), extra).await;
    for (agent, folder) in PROBES {
        host.upload_file(agent, &component(folder).await).await;
        host.set_config(agent, json!({"config": {"marker": "m"}}))
            .await;
        host.deploy(agent, None).await;
    }
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_errors_are_typed_answers_with_the_language_s_own_detail() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &[]).await;

    for (agent, _) in PROBES {
        let (status, _, body) = host.call(agent, json!({"op": "invalid"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{agent}: {body}");
        assert_eq!(
            error_kind(&body, "invalid_input"),
            "the probe was asked to refuse"
        );
        let (status, _, body) = host.call(agent, json!({"op": "failed"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{agent}: {body}");
        assert_eq!(error_kind(&body, "failed"), "the probe was asked to fail");

        let (status, body) = host
            .send(
                host.request(reqwest::Method::POST, &format!("/v1/agents/{agent}/run"))
                    .header("content-type", "application/json")
                    .body("{not json"),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{agent}: {body}");
        assert!(
            error_kind(&body, "invalid_input").starts_with("the input is not valid JSON"),
            "{agent}: {body}"
        );

        let (status, _, body) = host
            .call(agent, json!({"op": "context", "key": "marker"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{agent}: {body}");
        assert_eq!(body["agent"], agent);
        assert_eq!(body["version"], 1);
        assert_eq!(body["mode"], "sync");
        assert_eq!(body["attempt"], 1);
        assert_eq!(body["content_type"], "application/json");
        assert_eq!(body["has_deadline"], true);
        assert_eq!(body["config"], "m");
        assert!(body["run_id"].as_str().unwrap().starts_with("run_"));

        // Queued: logs and progress land on the run.
        let id = submit(&host, agent, json!({"op": "steps"})).await;
        let run = finished(&host, agent, &id).await;
        assert_eq!(run["status"], "succeeded", "{agent}: {run}");
        assert_eq!(
            run["progress"],
            json!({"fraction": 1.0, "message": "step 3 of 3"})
        );
        let messages: Vec<&str> = run["logs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["message"].as_str())
            .collect();
        assert_eq!(messages, ["step 1", "step 2", "step 3"], "{agent}: {run}");
    }

    // An exception nobody caught: its type, message and where it was raised, not a trap.
    let (status, _, body) = host.call("python-probe", json!({"op": "raise"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let message = error_kind(&body, "failed");
    assert!(message.starts_with("ValueError: boom\n"), "{message}");
    assert!(
        message.contains("Traceback (most recent call last)"),
        "{message}"
    );
    assert_eq!(message.matches("in explode").count(), 4, "{message}");
    let (_, _, body) = host
        .call("python-probe", json!({"op": "unserializable"}))
        .await;
    assert!(
        error_kind(&body, "failed")
            .starts_with("TypeError: Object of type set is not JSON serializable"),
        "{body}"
    );

    let (status, _, body) = host.call("js-probe", json!({"op": "raise"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let message = error_kind(&body, "failed");
    assert!(message.starts_with("Error: boom\n"), "{message}");
    assert_eq!(message.matches("explode@").count(), 4, "{message}");
    assert!(message.contains("app.js:"), "{message}");
    let (_, _, body) = host.call("js-probe", json!({"op": "throw-string"})).await;
    assert_eq!(
        error_kind(&body, "failed"),
        "uncaught string: \"a bare string\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_reach_allowed_hosts_only_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &["--allow-private-network"]).await;
    let allowed = Upstream::start().await;
    let other = Upstream::start().await;
    for (agent, _) in PROBES {
        host.set_config(
            agent,
            json!({"allowed_hosts": [allowed.origin], "outbound_timeout_s": 1}),
        )
        .await;
        host.deploy(agent, None).await;
    }

    for (agent, _) in PROBES {
        let (status, _, body) = host
            .call(
                agent,
                json!({"op": "fetch", "url": format!("{}/hello", allowed.origin)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{agent}: {body}");
        assert_eq!(body["status"], 200, "{agent}: {body}");
        let hello: Value = serde_json::from_str(body["body"].as_str().unwrap()).unwrap();
        assert_eq!(hello["hello"], "from upstream");

        let (status, _, body) = host
            .call(
                agent,
                json!({"op": "post", "url": format!("{}/echo", allowed.origin), "payload": [1, "two"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{agent}: {body}");
        assert_eq!(body["body"], json!({"received": {"sent": [1, "two"]}}));

        // A host not in the list: refused in the guest before any connection is made.
        let (status, _, body) = host
            .call(
                agent,
                json!({"op": "fetch", "url": format!("{}/hello", other.origin)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{agent}: {body}");
        let said = body["denied"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap_or_default();
        assert!(said.contains("denied"), "{agent}: {body}");
        assert!(said.contains("allowed_hosts"), "{agent}: {body}");

        // Refused with a body on the way: the refusal, never a broken body stream (which
        // the JavaScript engine answers by aborting). Repeated, since it was a race.
        let payload = "x".repeat(3000);
        for _ in 0..50 {
            let (status, _, body) = host
                .call(
                    agent,
                    json!({"op": "post", "url": format!("{}/echo", other.origin), "payload": payload}),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{agent}: {body}");
            assert!(
                error_kind(&body, "failed").contains("denied"),
                "{agent}: {body}"
            );
        }

        // A slow upstream is cut at the deployment's timeout.
        let started = Instant::now();
        let (status, _, body) = host
            .call(
                agent,
                json!({"op": "fetch", "url": format!("{}/slow", allowed.origin)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{agent}: {body}");
        assert!(body["error"].is_string(), "{agent}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{agent}: cut at about 1 s, took {:?}",
            started.elapsed()
        );

        // The run records the refusal with its reason (whatever the language makes of it).
        let id = submit(
            &host,
            agent,
            json!({"op": "fetch", "url": format!("{}/hello", other.origin)}),
        )
        .await;
        let run = finished(&host, agent, &id).await;
        assert_eq!(run["outbound"][0]["host"], other.origin.as_str(), "{run}");
        assert!(
            run["outbound"][0]["error"]
                .as_str()
                .unwrap()
                .contains("not in this deployment's allowed_hosts"),
            "{agent}: {run}"
        );
    }
    assert_eq!(
        other.connections(),
        0,
        "nothing reached the host not allowed"
    );
    assert_eq!(
        allowed.requests(),
        6,
        "hello, echo and slow, from each language"
    );
}

/// The Python SDK's `timeout=` (as in `requests`): a read bound holds for each gap in the
/// answer's body, so a streamed answer that keeps coming is read whole and one that stalls
/// fails at the gap, not at the deployment's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_s_timeout_bounds_each_read_of_a_streamed_answer() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &["--allow-private-network"]).await;
    let upstream = Upstream::start().await;
    host.set_config(
        "python-probe",
        json!({"allowed_hosts": [upstream.origin], "outbound_timeout_s": 30}),
    )
    .await;
    host.deploy("python-probe", None).await;
    let fetch = |n: u32, ms: u64, timeout: Value| {
        let input = json!({
            "op": "fetch",
            "url": format!("{}/drip?n={n}&ms={ms}", upstream.origin),
            "timeout": timeout,
        });
        host.call_timed("python-probe", input)
    };

    // Five pieces over 2 s, each gap within the read bound of 1 s.
    let (body, _) = fetch(5, 500, json!(1.0)).await;
    assert_eq!(body["body"], "drop0 drop1 drop2 drop3 drop4 ", "{body}");
    // A gap of 3 s where (connect, read) allows 0.5 s to read.
    let (body, took) = fetch(2, 3000, json!([2.0, 0.5])).await;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.ends_with("reading the answer failed: connection read timeout"),
        "{body}"
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}: {body}");
    // A bound of 0 is a mistake, as in `requests`.
    let (body, _) = fetch(1, 0, json!(0)).await;
    let invalid = body["invalid"].as_str().unwrap_or_default();
    assert!(invalid.contains("above 0"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_standby_instances_serve_one_call_each_and_go_with_their_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let host = probe_host(dir.path(), &[]).await;
    for (agent, _) in PROBES {
        // Calls at a steady rate: a Python guest takes about 0.75 ms to instantiate, so the
        // host makes instances ahead of its calls (a JavaScript one, 0.17 ms, is left to
        // instantiate per call; both must answer the same either way).
        for _ in 0..30 {
            let (status, _, body) = host.call(agent, json!({"op": "count"})).await;
            assert_eq!(status, StatusCode::OK, "{agent}: {body}");
            assert_eq!(
                body["served"], 1,
                "{agent}: an instance served a second call"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A standby instance takes the call's own context and sink.
        let (_, run_id, body) = host.call_run(agent, json!({"op": "context"})).await;
        assert_eq!(body["run_id"], run_id.as_str(), "{agent}: {body}");
        let id = submit(&host, agent, json!({"op": "steps"})).await;
        let run = finished(&host, agent, &id).await;
        let logs = run["logs"].to_string();
        assert!(logs.contains("step 3"), "{agent}: {run}");
    }
    let h = &host;
    crate::support::eventually(
        Duration::from_secs(10),
        "a standby instance made",
        || async move { h.stats().await["live_instances"].as_u64() >= Some(1) },
    )
    .await;
    // A redeploy drops the old deployment's standby instances; the new one has had no call
    // yet, so it keeps none.
    for (agent, _) in PROBES {
        host.set_config(agent, json!({"config": {"marker": "new"}}))
            .await;
        host.deploy(agent, None).await;
    }
    crate::support::eventually(Duration::from_secs(10), "standby dropped", || async move {
        h.stats().await["live_instances"] == 0
    })
    .await;
}
