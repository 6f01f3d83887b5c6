//! HTTP hardening: slow and idle clients, header limits, the connection cap, TLS.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::Host;

fn address(host: &Host) -> String {
    host.url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_owned()
}

/// Reads until the server closes the connection (or `within` passes): how long it took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            within.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_and_header_floods_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--header-timeout", "1"]).await;

    // Slowloris: headers that never finish.
    let mut slow = TcpStream::connect(address(&host)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let closed = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(3)),
        "slow headers cut off: {closed:?}"
    );

    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(address(&host)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 256];
    let n = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let closed = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(3)),
        "idle connection closed: {closed:?}"
    );

    // Too many headers: 431.
    let mut flood = TcpStream::connect(address(&host)).await.unwrap();
    let mut request = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        request.push_str(&format!("X-H{i}: v\r\n"));
    }
    request.push_str("\r\n");
    flood.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 256];
    let n = flood.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    // A client that keeps no connection open, so the two slots are the test's to take.
    let no_pool = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let host = Host::spawn_with(
        dir.path().join("data"),
        &["--max-connections", "2"],
        Some(crate::support::TOKEN),
        no_pool,
    )
    .await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(address(&host)).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a free slot answers")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = TcpStream::connect(address(&host)).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 256];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(waited.is_err(), "no answer while both slots are taken");
    held.clear();
    let answered = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    let n = answered.expect("answered once a slot is free").unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn tls_is_served_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let host = Host::spawn_with(
        dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        Some(crate::support::TOKEN),
        trusting,
    )
    .await;
    assert!(host.url.starts_with("https://"), "{}", host.url);
    host.upload_file("echo", gust_test_guests::ECHO).await;
    let deployed = host.deploy("echo", None).await;
    assert!(
        deployed["endpoints"]["sync"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    assert_eq!(
        host.call("echo", serde_json::json!({"over": "tls"}))
            .await
            .0,
        reqwest::StatusCode::OK
    );
    // The console's session cookie is Secure under TLS: a browser never sends it in clear.
    let signed_in = host
        .http
        .post(format!("{}/console/session", host.url))
        .header(reqwest::header::ORIGIN, &host.url)
        .json(&serde_json::json!({"token": crate::support::TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), reqwest::StatusCode::NO_CONTENT);
    let cookie = signed_in.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(host.url.replace("https://", "http://") + "/healthz")
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// A client that never reads its answer does not hold it (and its connection) forever:
/// once writing makes no progress for `--write-timeout`, the connection is closed.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--write-timeout", "2"]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config("probe", serde_json::json!({"output_mib": 64}))
        .await;
    host.deploy("probe", None).await;
    let body = r#"{"op": "big", "mb": 48}"#;
    let mut stream = TcpStream::connect(host.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "POST /v1/agents/probe/run HTTP/1.1\r\nhost: gust\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        crate::support::TOKEN,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Not reading, for longer than the write timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut received = 0usize;
    let mut chunk = vec![0; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection stayed open after the write timeout"),
        }
    }
    assert!(
        received < 48 << 20,
        "the answer was cut off: {received} bytes of more than 48 MiB arrived"
    );
}

/// The request bodies being read take at most `--max-body-memory-mib` together: slow
/// uploads that hold it leave later requests a 429 after a short wait, not a host that
/// grows; once they go, room is back.
#[tokio::test]
async fn request_bodies_in_flight_are_bounded_server_wide() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(
        dir.path().join("data"),
        &[
            "--max-body-memory-mib",
            "2",
            "--max-upload-mib",
            "1",
            "--max-input-mib",
            "1",
        ],
    )
    .await;
    // Two uploads that send 1000 KiB of their 1 MiB and then stop sending.
    let mut stalled = Vec::new();
    for agent in ["slow-a", "slow-b"] {
        let mut stream = TcpStream::connect(host.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!(
            "POST /v1/agents/{agent}/versions HTTP/1.1\r\nhost: gust\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
            crate::support::TOKEN,
            1 << 20
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&vec![0u8; 1000 << 10]).await.unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upload = || {
        host.request(reqwest::Method::POST, "/v1/agents/other/versions")
            .body(vec![0u8; 100 << 10])
    };
    let (status, body) = host.send(upload()).await;
    assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS, "{body}");
    crate::support::error_kind(&body, "overloaded");
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = host.send(upload()).await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "read whole once room is back (and refused as no component): {body}"
    );
}
