//! Guests' outgoing HTTP: allowed hosts only, the address policy, timeouts, and a record of
//! every request on the run.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::runs::{finished, submit};
use crate::support::Host;
use crate::support::upstream::Upstream;

async fn fetch(host: &Host, url: &str) -> serde_json::Value {
    let (status, _, body) = host.call("probe", json!({"op": "fetch", "key": url})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_only_with_timeouts_and_a_record_of_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    let allowed_upstream = Upstream::start().await;
    let other_upstream = Upstream::start().await;
    let (allowed, other) = (&allowed_upstream.origin, &other_upstream.origin);
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config(
        "probe",
        json!({"allowed_hosts": [allowed], "outbound_timeout_s": 1}),
    )
    .await;
    host.deploy("probe", None).await;

    let answer = fetch(&host, &format!("{allowed}/hello")).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(answer["body"].as_str().unwrap()).unwrap()["hello"],
        "from upstream"
    );
    assert_eq!(allowed_upstream.requests(), 1);

    // A host not in the list: denied in the guest, and nothing reaches it.
    let answer = fetch(&host, &format!("{other}/hello")).await;
    assert!(
        answer["error"].as_str().unwrap().starts_with("denied"),
        "{answer}"
    );
    assert_eq!(
        other_upstream.connections(),
        0,
        "no connection to a host that is not allowed"
    );

    // A slow upstream is cut at the deployment's timeout.
    let started = Instant::now();
    let answer = fetch(&host, &format!("{allowed}/slow")).await;
    assert!(answer["error"].is_string(), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut at about 1 s: {:?}",
        started.elapsed()
    );

    // Queued runs record their requests (method, host, status, duration; no headers or bodies).
    let ok = submit(
        &host,
        "probe",
        json!({"op": "fetch", "key": format!("{allowed}/hello")}),
    )
    .await;
    let denied = submit(
        &host,
        "probe",
        json!({"op": "fetch", "key": format!("{other}/hello")}),
    )
    .await;
    let run = finished(&host, "probe", &ok).await;
    let request = &run["outbound"][0];
    assert_eq!(
        (request["method"].as_str(), request["status"].as_u64()),
        (Some("GET"), Some(200)),
        "{run}"
    );
    assert_eq!(request["host"], allowed.as_str());
    assert!(request["duration_ms"].is_u64());
    let run = finished(&host, "probe", &denied).await;
    assert!(
        run["outbound"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not in this deployment's allowed_hosts"),
        "{run}"
    );
    assert_eq!(run["outbound"][0]["status"], serde_json::Value::Null);
    assert_eq!(other_upstream.connections(), 0);
}

#[tokio::test]
async fn private_destinations_stay_refused_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let upstream = Upstream::start().await;
    let origin = upstream.origin.clone();
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    let port = origin.rsplit(':').next().unwrap();
    let localhost = format!("http://localhost:{port}");
    host.set_config("probe", json!({"allowed_hosts": [origin, localhost]}))
        .await;
    host.deploy("probe", None).await;
    for url in [
        format!("{origin}/hello"),
        format!("http://localhost:{port}/hello"),
    ] {
        let answer = fetch(&host, &url).await;
        assert!(
            answer["error"].as_str().unwrap().contains("denied"),
            "{url}: {answer}"
        );
    }
    assert_eq!(
        upstream.connections(),
        0,
        "allowed by the list, refused by the address policy"
    );
}
