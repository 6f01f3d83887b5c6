//! Guests' outgoing HTTP: allowed hosts only, the address policy, timeouts, and a record of
//! every request on the run.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::runs::{finished, submit};
use crate::support::upstream::Upstream;
use crate::support::{Host, eventually, not_opened, send_at_once};

async fn fetch(host: &Host, url: &str) -> serde_json::Value {
    let (status, _, body) = host.call("probe", json!({"op": "fetch", "key": url})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    body
}

/// Uploads the Rust probe to `host` and deploys it with `config` (its allowed hosts and
/// timeouts).
async fn deploy_probe(host: &Host, config: serde_json::Value) {
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config("probe", config).await;
    host.deploy("probe", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_only_with_timeouts_and_a_record_of_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    let allowed_upstream = Upstream::start().await;
    let other_upstream = Upstream::start().await;
    let (allowed, other) = (&allowed_upstream.origin, &other_upstream.origin);
    deploy_probe(
        &host,
        json!({"allowed_hosts": [allowed], "outbound_timeout_s": 1}),
    )
    .await;

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

/// A sync call's outgoing requests go to the host log, bounded like its own log lines: a
/// guest cannot flood the log by sending requests, denied ones included.
#[tokio::test]
async fn outbound_log_lines_of_a_sync_call_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    // Nothing is allowed, so each request is denied at once, and logged.
    let (status, _, body) = host
        .call(
            "probe",
            json!({"op": "fetch-many", "key": "http://denied.example/x", "n": 1500}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["failed"], 1500, "{body}");
    let log = host.log();
    let logged = log
        .lines()
        .filter(|l| l.contains("outgoing request"))
        .count();
    assert_eq!(logged, 1000, "one call logs at most 1000 lines");
    assert!(
        log.contains("more log lines of this call are dropped"),
        "the cut is said once"
    );
}

/// Credentials a guest puts in a URL's userinfo are never recorded: not on the run, not in
/// the host log.
#[tokio::test]
async fn userinfo_in_an_outbound_url_is_never_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let url = "http://alice:hunter2-secret@denied.example:8080/x";
    let (status, _, body) = host.call("probe", json!({"op": "fetch", "key": url})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let id = submit(&host, "probe", json!({"op": "fetch", "key": url})).await;
    let run = finished(&host, "probe", &id).await;
    assert_eq!(
        run["outbound"][0]["host"], "http://denied.example:8080",
        "{run}"
    );
    assert!(!run.to_string().contains("hunter2"), "{run}");
    assert!(
        host.log().contains("denied.example") && !host.log().contains("hunter2"),
        "the host log records the request without its credentials"
    );
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

/// A guest that opens many requests to a destination it may not reach, writes megabytes
/// into each body and never finishes them cannot make the host hold those bytes: the
/// refusal is decided before the body is read, and the body is drained, not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_request_bodies_are_not_kept_in_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let (status, _, _) = host.call("probe", json!({"op": "echo"})).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let before = rss(host.pid());

    // 200 bodies of 5 MiB: 1000 MiB written, all to a host that is not allowed.
    let input = json!({"op": "hold-bodies", "key": "http://denied.example/x", "n": 200, "mb": 5, "ms": 1500});
    let call = host.call("probe", input);
    tokio::pin!(call);
    let mut peak = before;
    let (status, _, body) = loop {
        tokio::select! {
            done = &mut call => break done,
            () = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(rss(host.pid())),
        }
    };
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["written_mb"], 1000, "{body}");
    let grew = peak.saturating_sub(before) >> 20;
    assert!(
        grew < 200,
        "the host grew by {grew} MiB while the guest wrote 1000 MiB"
    );
    let stats = host.stats().await;
    assert_eq!(stats["outbound_buffered_bytes"], 0, "{stats}");
}

/// A request body to an allowed upstream is streamed to it as the guest writes it, within
/// the per-request bound; past it the guest is told so. Over HTTP/2 (a model API's) too,
/// where hyper sends the body from a task of its own and reports a refused body only as a
/// reset stream: it reached the guest as `HttpProtocolError`.
#[tokio::test]
async fn request_bodies_are_streamed_to_allowed_upstreams() {
    let (dir, h2_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let plain = Upstream::start().await;
    let (h2, certificate) = Upstream::start_https(100).await;
    let hosts = [
        (
            Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await,
            &plain,
        ),
        (certificate.trusting_host(h2_dir.path()).await, &h2),
    ];
    for (host, upstream) in &hosts {
        deploy_probe(host, json!({"allowed_hosts": [upstream.origin]})).await;
        let sink = format!("{}/sink", upstream.origin);
        let (status, _, body) = host
            .call("probe", json!({"op": "post-big", "key": sink, "mb": 8}))
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        assert_eq!(
            body["body"],
            format!("received {} bytes", 8 << 20),
            "{body}"
        );
        let (status, _, body) = host
            .call("probe", json!({"op": "post-big", "key": sink, "mb": 11}))
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("HttpRequestBodySize"),
            "{}: {body}",
            upstream.origin
        );
        assert_eq!(host.stats().await["outbound_buffered_bytes"], 0);
    }
}

/// `--outbound-connections-per-host` bounds the connections to one upstream, counted by the
/// upstream (what it accepted), not only the requests in flight: with 400 calls following
/// each other through 8 places, a request that took a place freed a moment before its
/// connection was back in the pool used to open one more (10 connections for 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_one_upstream_stay_within_the_bound() {
    const BOUND: usize = 8;
    const CALLS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let bound = BOUND.to_string();
    let host = Host::start_on(
        dir.path().join("data"),
        &[
            "--allow-private-network",
            "--outbound-connections-per-host",
            &bound,
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    deploy_probe(&host, json!({"allowed_hosts": [upstream.origin], "sync_timeout_s": 120, "outbound_timeout_s": 120})).await;

    let url = format!("{}/hold?ms=50", upstream.origin);
    let calls = (0..CALLS).map(|_| fetch(&host, &url));
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer["status"], 200, "{answer}");
    }
    assert_eq!(upstream.hits("/hold?ms=50"), CALLS);
    assert!(
        upstream.most_held() <= BOUND,
        "{} held at once",
        upstream.most_held()
    );
    assert!(
        upstream.connections() <= BOUND,
        "{} connections for a bound of {BOUND}",
        upstream.connections()
    );
}

/// Deploys the probe as `patient` (outgoing requests may take 60 s) and `impatient` (1 s),
/// both allowed to reach `origin`.
async fn deploy_patient_and_impatient(host: &Host, origin: &str) {
    for (agent, timeout) in [("patient", 60), ("impatient", 1)] {
        host.upload_file(agent, gust_test_guests::PROBE_A).await;
        host.set_config(
            agent,
            json!({"allowed_hosts": [origin], "sync_timeout_s": 120, "outbound_timeout_s": timeout}),
        )
        .await;
        host.deploy(agent, None).await;
    }
}

/// A request whose time runs out while every one of its origin's connection places is
/// taken has timed out waiting (`ConnectionReadTimeout`); it was reported as refused by the
/// origin (`ConnectionRefused`), which tells a guest to retry at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_out_of_time_waiting_for_a_connection_place_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(
        dir.path().join("data"),
        &[
            "--allow-private-network",
            "--outbound-connections-per-host",
            "1",
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    deploy_patient_and_impatient(&host, &upstream.origin).await;
    let hold = json!({"op": "fetch", "key": format!("{}/hold?ms=4000", upstream.origin)});
    let holding = send_at_once(&host, "patient", &hold, 1);
    eventually(
        Duration::from_secs(10),
        "the one connection held",
        || async { upstream.held() == 1 },
    )
    .await;
    let hello = json!({"op": "fetch", "key": format!("{}/hello", upstream.origin)});
    let (_, _, answer) = host.call("impatient", hello).await;
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("ConnectionReadTimeout"), "{answer}");
    for call in holding {
        let (status, answer) = call.await.unwrap();
        assert_eq!(
            (status, &answer["status"]),
            (StatusCode::OK, &json!(200)),
            "{answer}"
        );
    }
}

/// Model APIs speak HTTP/2 over TLS and let a connection carry so many requests at once
/// (Google's front ends 100). Calls waiting on one are not held to that: the host opens
/// another connection for each hundred, so 250 calls all wait at the upstream together, and
/// those connections resume a TLS session the host already holds. Sent before the host opened
/// lanes, 100 reached the upstream and the rest queued behind them on one connection. The
/// first calls to the upstream wait for the first of them to find out what it speaks, rather
/// than open a connection each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_an_http2_upstream_are_not_held_to_one_connections_streams() {
    const FIRST: usize = 50;
    const AT_ONCE: usize = 250;
    const STREAMS: u32 = 100;
    let (upstream, certificate) = Upstream::start_https(STREAMS).await;
    let dir = tempfile::tempdir().unwrap();
    let host = certificate.trusting_host(dir.path()).await;
    deploy_probe(&host, json!({"allowed_hosts": [upstream.origin], "sync_timeout_s": 120, "outbound_timeout_s": 120})).await;
    // Each call waits at the gate until `arrived` gate requests have come, counted from the
    // upstream's start, or for a minute: only calls that wait together pass.
    let gated = |arrived: usize| json!({"op": "fetch", "key": format!("{}/gate?n={arrived}&ms=60000", upstream.origin)});

    // The first calls: one connection finds out that the upstream speaks HTTP/2, then one
    // lane carries them all.
    let failed = not_opened(send_at_once(&host, "probe", &gated(FIRST), FIRST)).await;
    assert!(failed.is_empty(), "{failed:?}");
    // hyper-util may open one more for a lane in a race of its own (a request that found no
    // connection in the pool and then found its lock free) and drop it: at most one a lane.
    let first = upstream.connections();
    assert!(
        (2..=3).contains(&first),
        "{first} connections: the first, and one lane"
    );

    let failed = not_opened(send_at_once(
        &host,
        "probe",
        &gated(FIRST + AT_ONCE),
        AT_ONCE,
    ))
    .await;
    assert!(
        failed.is_empty(),
        "{} of {AT_ONCE} calls did not pass the gate, e.g. {:?} ({} held at once)",
        failed.len(),
        failed.first(),
        upstream.most_held()
    );
    assert_eq!(upstream.most_held(), AT_ONCE);
    assert_eq!(
        upstream.http2_requests(),
        FIRST + AT_ONCE,
        "every request over HTTP/2"
    );
    // One lane per hundred requests at once: the first one's again, and two more.
    let lanes = AT_ONCE.div_ceil(STREAMS as usize);
    let more = upstream.connections() - first;
    assert!(
        (lanes - 1..=2 * (lanes - 1)).contains(&more),
        "{more} more connections for {lanes} lanes"
    );
    // The lanes opened for the 250 resumed a session of a connection before them (the first
    // lane may have connected before the first connection had its session tickets).
    let (full, resumed) = upstream.handshakes();
    assert_eq!(full + resumed, first + more);
    assert!(
        resumed >= lanes - 1,
        "{full} handshakes in full, {resumed} resumed"
    );
}

/// HTTP/2 servers close connections now and then: nginx after `keepalive_requests` (1,000 by
/// default), front ends when they rotate. They say so with GOAWAY and finish the requests
/// under way; the host's lanes then open another connection, and no call fails for it,
/// neither one that comes right after a GOAWAY nor a burst larger than what a connection
/// carries before it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outlive_an_http2_upstream_closing_its_connections() {
    const CLOSE_AFTER: usize = 5;
    const ONE_BY_ONE: usize = 30;
    const WAVES: usize = 4;
    const AT_ONCE: usize = 40;
    let (upstream, certificate) = Upstream::start_https_closing(100, CLOSE_AFTER).await;
    let dir = tempfile::tempdir().unwrap();
    let host = certificate.trusting_host(dir.path()).await;
    deploy_probe(
        &host,
        json!({"allowed_hosts": [upstream.origin], "sync_timeout_s": 60, "outbound_timeout_s": 30}),
    )
    .await;

    // One after another: every fifth request closes the connection it came on, and the next
    // one follows as soon as its answer is in.
    for i in 0..ONE_BY_ONE {
        let answer = fetch(&host, &format!("{}/hold?ms=0&one={i}", upstream.origin)).await;
        assert_eq!(answer["status"], json!(200), "call {i}: {answer}");
    }
    // Bursts, each of them more than a connection carries before its GOAWAY; every other
    // one posts a body, which a request sent again must carry again.
    for wave in 0..WAVES {
        let (input, answered) = if wave % 2 == 0 {
            let url = format!("{}/hold?ms=300&wave={wave}", upstream.origin);
            (json!({"op": "fetch", "key": url}), json!("held"))
        } else {
            let url = format!("{}/echo?ms=300&wave={wave}", upstream.origin);
            let received = json!({"received": {"n": wave}}).to_string();
            (
                json!({"op": "post", "key": url, "n": wave}),
                json!(received),
            )
        };
        for call in send_at_once(&host, "probe", &input, AT_ONCE) {
            let (status, answer) = call.await.unwrap();
            assert_eq!(
                (status, &answer["status"], &answer["body"]),
                (StatusCode::OK, &json!(200), &answered),
                "wave {wave}: {answer}"
            );
        }
    }
    // Counted by the upstream: each request was served once, all over HTTP/2, and the
    // connections were really closed and opened again.
    let all = ONE_BY_ONE + WAVES * AT_ONCE;
    let mut twice: Vec<(String, usize)> = upstream
        .all_hits()
        .into_iter()
        .filter(|(uri, n)| *n > if uri.contains("wave=") { AT_ONCE } else { 1 })
        .collect();
    twice.sort();
    assert_eq!(upstream.requests(), all, "served more than once: {twice:?}");
    assert_eq!(upstream.http2_requests(), all);
    assert!(
        upstream.connections() > ONE_BY_ONE / CLOSE_AFTER,
        "{} connections",
        upstream.connections()
    );
}

/// A guest that gives up while its request opens a lane's connection (its timeout is
/// shorter than the connect) leaves the connect to the requests waiting for it: the next
/// one opens it and all of them are answered. hyper-util's pool, where they waited before,
/// failed them all with the first one ("could not connect").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_gives_up_while_opening_a_connection_leaves_it_to_the_others() {
    const PATIENT: usize = 5;
    let (upstream, certificate) =
        Upstream::start_https_slow(100, Duration::from_millis(2500)).await;
    let dir = tempfile::tempdir().unwrap();
    let host = certificate.trusting_host(dir.path()).await;
    deploy_patient_and_impatient(&host, &upstream.origin).await;
    let hello = json!({"op": "fetch", "key": format!("{}/hello", upstream.origin)});
    // The host learns that the upstream speaks HTTP/2 (a first connection, 2.5 s).
    let (status, _, answer) = host.call("patient", hello.clone()).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!(200)),
        "{answer}"
    );

    // The impatient call opens the first lane's connection and gives up after 1 s; the
    // patient ones come while it connects and wait for that connection.
    let impatient = send_at_once(&host, "impatient", &hello, 1);
    // Its connection is being opened once the upstream accepted it (and sits on it for the
    // handshake's 2.5 s).
    eventually(
        Duration::from_secs(10),
        "the impatient call's connection",
        || async { upstream.connections() == 2 },
    )
    .await;
    let patient = send_at_once(&host, "patient", &hello, PATIENT);
    let (_, gave_up) = impatient.into_iter().next().unwrap().await.unwrap();
    assert!(
        gave_up["error"]
            .as_str()
            .is_some_and(|e| e.contains("ConnectionReadTimeout")),
        "{gave_up}"
    );
    for call in patient {
        let (status, answer) = call.await.unwrap();
        assert_eq!(
            (status, &answer["status"]),
            (StatusCode::OK, &json!(200)),
            "{answer}"
        );
    }
    assert_eq!(upstream.hits("/hello"), 1 + PATIENT);
}

/// When an idle connection comes back before the one a request is opening, hyper-util
/// hands the request the idle one and lets the connect go on in the background. That connect
/// holds one of the origin's places, and an origin that accepts the connection but never
/// answers the TLS handshake held it for good: with a bound of 2, the origin was left one
/// connection. The connect now ends at its request's deadline, and the upstream sees the
/// connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_left_to_finish_in_the_background_ends_at_its_requests_deadline() {
    let (upstream, certificate) = Upstream::start_https1_stalling(1).await;
    let dir = tempfile::tempdir().unwrap();
    let host = certificate
        .trusting_host_with(dir.path(), &["--outbound-connections-per-host", "2"])
        .await;
    deploy_probe(
        &host,
        json!({"allowed_hosts": [upstream.origin], "sync_timeout_s": 60, "outbound_timeout_s": 6}),
    )
    .await;
    let hold = |ms: u64| json!({"op": "fetch", "key": format!("{}/hold?ms={ms}", upstream.origin)});

    // The first call holds the one connection the upstream serves for 4 s: the time the
    // second has to start its own connect.
    let first = send_at_once(&host, "probe", &hold(4000), 1);
    eventually(
        Duration::from_secs(10),
        "the first call at the upstream",
        || async { upstream.held() == 1 },
    )
    .await;
    // The second opens a connection, which the upstream leaves unanswered, and is then
    // handed the first one's when it comes back.
    let second = send_at_once(&host, "probe", &hold(10), 1);
    eventually(
        Duration::from_secs(10),
        "the second call's connect",
        || async { upstream.stalled().0 == 1 },
    )
    .await;
    for call in first.into_iter().chain(second) {
        let (status, answer) = call.await.unwrap();
        assert_eq!(
            (status, &answer["status"]),
            (StatusCode::OK, &json!(200)),
            "{answer}"
        );
    }
    assert_eq!(upstream.connections(), 2);
    // The second call's deadline is 6 s after it started.
    eventually(
        Duration::from_secs(15),
        "the host closing the unanswered connection",
        || async { upstream.stalled().1 == 1 },
    )
    .await;
}

/// A guest's request options bound the parts of a request, within the deployment's
/// `outbound_timeout_s`: `first_byte_timeout` the answer's head only, so a streamed answer
/// that keeps coming is read to its end (it cut the body off at the first-byte timeout
/// before), and `between_bytes_timeout` each wait for more of the body (it was ignored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_options_bound_the_head_and_each_wait_for_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    let upstream = Upstream::start().await;
    deploy_probe(
        &host,
        json!({"allowed_hosts": [upstream.origin], "sync_timeout_s": 60, "outbound_timeout_s": 30}),
    )
    .await;
    let fetch = |url: String, options: serde_json::Value| {
        let mut input = json!({"op": "fetch", "key": url});
        input
            .as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        host.call_timed("probe", input)
    };
    let drip = |n: u32, ms: u64| format!("{}/drip?n={n}&ms={ms}", upstream.origin);
    let whole = "drop0 drop1 drop2 drop3 drop4 ";

    // Five pieces over 2 s, under a first-byte timeout of 1 s: the head came at once.
    let (answer, _) = fetch(drip(5, 500), json!({"first_byte_ms": 1000})).await;
    assert_eq!(answer["body"], whole, "{answer}");

    // The same pieces 500 ms apart, each within a between-bytes timeout of 1.5 s.
    let (answer, _) = fetch(drip(5, 500), json!({"between_ms": 1500})).await;
    assert_eq!(answer["body"], whole, "{answer}");

    // A gap of 3 s where 500 ms are allowed: cut off at the gap, not at the 30 s timeout.
    let (answer, took) = fetch(drip(2, 3000), json!({"between_ms": 500})).await;
    assert_eq!(
        answer["error"],
        "request failed: reading the answer: connection read timeout"
    );
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?}: {answer}"
    );

    // The head late past the first-byte timeout.
    let (answer, took) = fetch(
        format!("{}/hold?ms=3000", upstream.origin),
        json!({"first_byte_ms": 500}),
    )
    .await;
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("ConnectionReadTimeout"), "{answer}");
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?}: {answer}"
    );
}

/// `connect_timeout` bounds a connect the origin leaves unanswered (here the TLS
/// handshake): the requests fail with `ConnectionTimeout` when it runs out, not at the
/// deployment's 30 s, and the host closes the connection. It was ignored before. The
/// requests that wait for that connect (the first to an HTTPS origin opens it for the
/// others) are bounded by their own `connect_timeout` too: otherwise each would open its
/// own in turn once the one before had timed out, the sixth after 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_ends_a_connect_the_origin_leaves_unanswered() {
    let (upstream, certificate) = Upstream::start_https1_stalling(0).await;
    let dir = tempfile::tempdir().unwrap();
    let host = certificate.trusting_host(dir.path()).await;
    deploy_probe(
        &host,
        json!({"allowed_hosts": [upstream.origin], "sync_timeout_s": 60, "outbound_timeout_s": 30}),
    )
    .await;
    let input =
        json!({"op": "fetch", "key": format!("{}/hello", upstream.origin), "connect_ms": 500});
    let started = Instant::now();
    for call in send_at_once(&host, "probe", &input, 6) {
        let (status, answer) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains("ConnectionTimeout"), "{answer}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    eventually(
        Duration::from_secs(10),
        // Each call's bound counts from its own start: one that came a moment after the
        // first may still open a connection when the first gives up.
        "the host closing the unanswered connections",
        || async {
            let (opened, closed) = upstream.stalled();
            opened >= 1 && closed == opened
        },
    )
    .await;
}

/// An HTTPS upstream whose certificate no trusted CA signed is refused, and the run's record
/// says why; `--outbound-ca-certs` is what lets the tests above reach theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certified_by_an_unknown_ca_is_refused_with_the_cause() {
    let (upstream, _) = Upstream::start_https(100).await;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    deploy_probe(&host, json!({"allowed_hosts": [upstream.origin]})).await;
    let id = submit(
        &host,
        "probe",
        json!({"op": "fetch", "key": format!("{}/hello", upstream.origin)}),
    )
    .await;
    let run = finished(&host, "probe", &id).await;
    let error = run["outbound"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("could not connect: ") && error.contains("UnknownIssuer"),
        "{run}"
    );
    // The guest is told what it was, not that the connection was refused.
    let told = run["output"]["json"]["error"].as_str().unwrap_or_default();
    assert!(told.contains("TlsCertificateError"), "{run}");
    assert_eq!(upstream.requests(), 0);
}
