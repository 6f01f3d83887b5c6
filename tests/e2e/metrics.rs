//! `/metrics`, read as Prometheus reads it: the text goes through the OpenMetrics parser of
//! the Python `prometheus_client` package (strict about names, types and `# EOF`), and the
//! values move with the traffic the test sends.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::Host;
use crate::support::componentize::repo;
use crate::support::receiver::Receiver;
use crate::support::upstream::Upstream;

/// Samples by name: each with its labels and value.
type Samples = HashMap<String, Vec<(HashMap<String, String>, f64)>>;

fn parse(text: &str) -> Samples {
    let python = repo().join(".tools/receivers/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup",
        python.display()
    );
    let script = "import json, sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = {}\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       out.setdefault(s.name, []).append([s.labels, s.value])\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Samples>(&out.stdout).unwrap()
}

/// The value of `name` whose labels include all of `labels` (0 when there is none).
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .get(name)
        .into_iter()
        .flatten()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(host: &Host) -> Samples {
    let response = host.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    parse(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_move_with_the_traffic_and_parse_as_openmetrics() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_address = free.local_addr().unwrap().to_string();
    drop(free);
    let host = Host::start_on(
        dir.path().join("data"),
        &[
            "--allow-private-network",
            "--push-retry-schedule",
            "0.2",
            "--metrics-listen",
            &metrics_address,
        ],
    )
    .await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config("probe", json!({"allowed_hosts": [upstream.origin]}))
        .await;
    host.deploy("probe", None).await;

    let before = scrape(&host).await;
    let sync_ok = [
        ("agent", "probe"),
        ("version", "1"),
        ("kind", "sync"),
        ("outcome", "ok"),
    ];
    for _ in 0..3 {
        assert_eq!(host.call("probe", json!({})).await.0, StatusCode::OK);
    }
    assert_eq!(
        host.call("probe", json!({"op": "fail"})).await.0,
        StatusCode::BAD_GATEWAY
    );
    let hello = format!("{}/hello", upstream.origin);
    let (status, _, body) = host
        .call("probe", json!({"op": "fetch", "key": hello}))
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!(200)),
        "{body}"
    );
    let (status, _, body) = host
        .call(
            "probe",
            json!({"op": "fetch", "key": "http://127.0.0.9:9/elsewhere"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["error"].is_string(), "a denied request: {body}");
    let (status, run) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/runs")
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let id = run["run_id"].as_str().unwrap();
    let (_, run) = host
        .send(host.request(Method::GET, &format!("/v1/agents/probe/runs/{id}?wait=30")))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let after = scrape(&host).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        moved("gust_calls_total", &sync_ok),
        5.0,
        "3 echoes and 2 fetches"
    );
    assert_eq!(
        moved(
            "gust_calls_total",
            &[("agent", "probe"), ("kind", "sync"), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "gust_calls_total",
            &[("agent", "probe"), ("kind", "queued"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "gust_call_duration_seconds_count",
            &[("agent", "probe"), ("kind", "sync")]
        ),
        6.0
    );
    assert!(moved("gust_instantiation_seconds_count", &[]) >= 7.0);
    let origin = upstream.origin.as_str();
    assert_eq!(
        moved(
            "gust_outbound_requests_total",
            &[
                ("agent", "probe"),
                ("host_pattern", origin),
                ("outcome", "ok")
            ]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "gust_outbound_requests_total",
            &[("agent", "probe"), ("host_pattern", "denied")]
        ),
        1.0,
        "never the raw destination: {:?}",
        after.get("gust_outbound_requests_total")
    );
    assert_eq!(
        moved("gust_runs_accepted_total", &[("agent", "probe")]),
        1.0
    );
    assert_eq!(
        moved(
            "gust_runs_ended_total",
            &[("agent", "probe"), ("status", "succeeded")]
        ),
        1.0
    );
    assert!(value(&after, "gust_compiles_total", &[]) >= 1.0);
    assert_eq!(value(&after, "gust_deployments", &[]), 1.0);
    assert!(after.contains_key("gust_live_instances"));
    assert!(value(&after, "gust_memory_budget_bytes", &[]) > 0.0);

    // A pushed run: one delivery, on its first attempt.
    let receiver = Receiver::start(vec![]).await;
    host.set_config(
        "probe",
        json!({"allowed_hosts": [upstream.origin], "mode": "async",
               "push": {"url": receiver.url, "access_token": "t"}}),
    )
    .await;
    host.deploy("probe", None).await;
    let (_, run) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/runs")
                .json(&json!({})),
        )
        .await;
    let id = run["run_id"].as_str().unwrap().to_owned();
    let h = &host;
    crate::support::eventually(
        std::time::Duration::from_secs(20),
        "the push was delivered",
        || {
            let id = id.clone();
            async move {
                let (_, run) = h
                    .send(h.request(Method::GET, &format!("/v1/agents/probe/runs/{id}")))
                    .await;
                run["delivery"]["status"] == "delivered"
            }
        },
    )
    .await;
    assert_eq!(receiver.received().len(), 1);
    let pushed = scrape(&host).await;
    assert_eq!(
        value(
            &pushed,
            "gust_push_deliveries_total",
            &[
                ("agent", "probe"),
                ("outcome", "delivered"),
                ("attempt", "1")
            ]
        ),
        1.0
    );

    // Without the token: refused here, served on --metrics-listen.
    let anonymous = reqwest::get(format!("{}/metrics", host.url)).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let open = reqwest::get(format!("http://{metrics_address}/metrics"))
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let open = parse(&open.text().await.unwrap());
    assert_eq!(
        value(&open, "gust_calls_total", &sync_ok),
        value(&after, "gust_calls_total", &sync_ok)
    );
    let other = reqwest::get(format!("http://{metrics_address}/v1/agents"))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND, "only /metrics there");

    // A deleted agent's series are gone.
    let (status, _) = host
        .send(host.request(Method::DELETE, "/v1/agents/probe"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let gone = scrape(&host).await;
    let left: Vec<&String> = gone
        .iter()
        .filter(|(_, samples)| {
            samples
                .iter()
                .any(|(labels, _)| labels.get("agent").map(String::as_str) == Some("probe"))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(left.is_empty(), "series of the deleted agent: {left:?}");
}

#[tokio::test]
async fn admission_refusals_are_counted_by_the_bound_that_was_full() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--memory-budget-mib", "1"]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    assert_eq!(
        host.call("probe", json!({})).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let samples = scrape(&host).await;
    assert_eq!(
        value(
            &samples,
            "gust_admission_refusals_total",
            &[("agent", "probe"), ("bound", "memory")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "gust_calls_total",
            &[("agent", "probe"), ("outcome", "overloaded")]
        ),
        1.0
    );
}

/// A sync call whose client gives up before the answer ends there (the host drops the
/// guest's instance), and still counts: in the calls metric as `abandoned`, and among the
/// agent's calls and failures in the agents list. Before, the call's accounting went with
/// it, and a host whose callers all timed out showed no calls at all.
#[tokio::test]
async fn a_call_its_client_gave_up_on_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &[]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let impatient = host
        .request(Method::POST, "/v1/agents/probe/run")
        .timeout(std::time::Duration::from_millis(500))
        .json(&json!({"op": "sleep", "ms": 3000}))
        .send()
        .await;
    assert!(
        impatient.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{impatient:?}"
    );
    let h = &host;
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the abandoned call counted",
        || async move {
            value(
                &scrape(h).await,
                "gust_calls_total",
                &[("agent", "probe"), ("outcome", "abandoned")],
            ) == 1.0
        },
    )
    .await;
    let (_, listed) = host.send(host.request(Method::GET, "/v1/agents")).await;
    let probe = &listed["agents"][0];
    assert_eq!(
        (&probe["calls"], &probe["failures"]),
        (&json!(1), &json!(1)),
        "{listed}"
    );
}
