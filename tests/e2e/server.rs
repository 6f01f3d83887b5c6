//! `gust serve` itself: the admin token's life cycle, probes, and what answers look like.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::Host;

/// The pool reserves its slots' address space up front (terabytes with the defaults); where
/// that is refused, the host says so and allocates each call's instance on demand instead
/// of failing to start.
/// (Linux: elsewhere `ulimit -v` may not be enforced.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn scarce_address_space_falls_back_to_instances_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    // 256 GiB: far below the pool's reservation (terabytes), room for the host's threads and
    // malloc arenas on a many-core machine and for on-demand instances (each reserves a few
    // GiB for its linear memory).
    let host = Host::start_with_address_space(dir.path(), 256 << 20).await;
    assert!(
        host.log()
            .contains("the pooling instance allocator is not available here"),
        "the fallback is logged:\n{}",
        host.log()
    );
    host.upload_file("echo", gust_test_guests::ECHO).await;
    host.deploy("echo", None).await;
    for i in 0..3 {
        let (status, _, body) = host.call("echo", json!({ "n": i })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["input"]["n"], i, "{body}");
    }
}

/// Without such a limit the pool is used: no fallback line.
#[tokio::test]
async fn the_pool_is_used_where_address_space_allows() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("echo", gust_test_guests::ECHO).await;
    host.deploy("echo", None).await;
    let (status, _, body) = host.call("echo", json!({ "n": 1 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !host
            .log()
            .contains("pooling instance allocator is not available"),
        "{}",
        host.log()
    );
}

#[tokio::test]
async fn a_generated_admin_token_is_stored_privately_and_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let host = Host::spawn(data_dir.clone(), &[], None).await;
    let token_file = data_dir.join("admin-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        token.starts_with("gust_admin_") && token.len() > 40,
        "{token}"
    );
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let printed = host.stdout.lock().unwrap().join("\n");
    assert!(
        printed.contains(&token),
        "the new token is shown: {printed}"
    );
    assert!(
        !host.log().contains(&token),
        "the token never reaches the log"
    );

    let authed = |h: &Host, token: &str| {
        h.http
            .get(format!("{}/v1/agents", h.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        authed(&host, &token).await.unwrap().status(),
        StatusCode::OK
    );
    drop(host);

    // Next start: the stored token still works and is not printed again.
    let host = Host::spawn(data_dir.clone(), &[], None).await;
    assert_eq!(
        authed(&host, &token).await.unwrap().status(),
        StatusCode::OK
    );
    let printed = host.stdout.lock().unwrap().join("\n");
    assert!(!printed.contains(&token), "{printed}");
    drop(host);

    // Hosts sharing PostgreSQL share the token kept there: another one given on start is
    // refused, and the host says why.
    if crate::support::suite_backend() == "postgres" {
        let stderr = crate::cluster::refused(
            std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(&data_dir)
                .args(crate::support::suite_database(&data_dir, &[]))
                .env("GUST_ADMIN_TOKEN", "given-token-abcdefghijklmnop"),
        );
        assert!(stderr.contains("another admin token"), "{stderr}");
        return;
    }
    // A single host's token given on start wins over the stored one.
    let host = Host::spawn(data_dir, &[], Some("given-token-abcdefghijklmnop")).await;
    assert_eq!(
        authed(&host, &token).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = host.send(host.request(Method::GET, "/v1/agents")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the test token is not this host's"
    );
    let given = host
        .http
        .get(format!("{}/v1/agents", host.url))
        .bearer_auth("given-token-abcdefghijklmnop")
        .send()
        .await
        .unwrap();
    assert_eq!(given.status(), StatusCode::OK);
}

#[tokio::test]
async fn endpoint_urls_use_the_public_url_never_the_host_header() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(
        dir.path().join("data"),
        &["--public-url", "https://agents.example.com/"],
    )
    .await;
    host.upload_file("echo", gust_test_guests::ECHO).await;
    let answer = host.deploy("echo", None).await;
    assert_eq!(
        answer["endpoints"]["sync"],
        "https://agents.example.com/v1/agents/echo/run"
    );
    let (_, list) = host
        .send(
            host.request(Method::GET, "/v1/agents")
                .header("host", "evil.example"),
        )
        .await;
    assert_eq!(
        list["agents"][0]["endpoints"]["sync"],
        "https://agents.example.com/v1/agents/echo/run"
    );
}

/// Runs `gust serve` on `data` with `extra` flags, expecting it to refuse to start before
/// it listens; returns what it said on stderr.
fn serve_refused(data: &std::path::Path, extra: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("GUST_ADMIN_TOKEN", crate::support::TOKEN)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "it never listened"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Settings that contradict each other stop the host before it listens, with a message: a
/// retention shorter than the idempotency window would let a retried submission run twice.
#[test]
fn a_retention_shorter_than_the_idempotency_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = serve_refused(&dir.path().join("data"), &["--retention-hours", "1"]);
    assert!(
        stderr.contains("must be at least the idempotency window (24 h)"),
        "{stderr}"
    );
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The data folder holds push tokens, signing secrets and configuration values: it is made
/// private (0700, the database and its WAL 0600), a readable one is tightened with a log
/// line, and one others may write is refused before the host listens.
#[tokio::test]
async fn the_data_folder_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = Host::start_on(data.clone(), &[]).await;
    host.upload_file("echo", gust_test_guests::ECHO).await;
    host.deploy("echo", None).await;
    assert_eq!(mode(&data), 0o700);
    // SQLite's files, when the data is kept there (the suite's PostgreSQL pass has none).
    let sqlite = crate::support::suite_backend() == "sqlite";
    if sqlite {
        for file in ["gust.db", "gust.db-wal"] {
            assert_eq!(mode(&data.join(file)), 0o600, "{file}");
        }
    }
    drop(host);

    // A folder (and a database) an earlier gust or a user made readable: tightened.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    if sqlite {
        std::fs::set_permissions(data.join("gust.db"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let host = Host::start_on(data.clone(), &[]).await;
    assert_eq!(mode(&data), 0o700);
    if sqlite {
        assert_eq!(mode(&data.join("gust.db")), 0o600);
    }
    assert!(host.log().contains("tightened to 700"), "{}", host.log());
    drop(host);

    // Writable by others: refused, with the reason.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stderr = serve_refused(&data, &[]);
    assert!(
        stderr.contains("refusing to use the data folder") && stderr.contains("777"),
        "{stderr}"
    );
}

/// `--admin-token-file` keeps the token off the command line (where `ps` shows it).
#[tokio::test]
async fn the_admin_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{}\n", crate::support::TOKEN)).unwrap();
    let host = Host::spawn(
        dir.path().join("data"),
        &["--admin-token-file", file.to_str().unwrap()],
        None,
    )
    .await;
    let (status, _) = host.send(host.request(Method::GET, "/v1/agents")).await;
    assert_eq!(status, StatusCode::OK);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", host.pid())).unwrap();
    assert!(!cmdline.contains(crate::support::TOKEN), "{cmdline}");
    assert!(
        !host
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Generated")),
        "no token was generated"
    );
}

/// `/readyz` for orchestrators: ready with the deployments loaded, the database reported
/// beside it; on SIGTERM with `--drain-delay`, 503 `draining` while calls are still served,
/// then the host stops.
#[tokio::test]
async fn readyz_reports_the_database_and_drains_before_the_listener_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start_on(dir.path().join("data"), &["--drain-delay", "3"]).await;
    host.upload_file("echo", gust_test_guests::ECHO).await;
    host.deploy("echo", None).await;
    let readyz = || async {
        let response = reqwest::get(format!("{}/readyz", host.url)).await.unwrap();
        (
            response.status(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    };
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            &body["status"],
            &body["database"],
            &body["deployments"],
            &body["backend"]
        ),
        (
            &json!("ready"),
            &json!("ok"),
            &json!(1),
            &json!(crate::support::suite_backend())
        ),
        "{body}"
    );

    // A follower of an agent's log lines (a stream that never ends by itself) must not hold
    // the shutdown for the whole grace period.
    let follower = host
        .request(Method::GET, "/v1/agents/echo/logs?follow=1")
        .send()
        .await
        .unwrap();
    assert_eq!(follower.status(), StatusCode::OK);

    let signalled = std::time::Instant::now();
    host.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "draining");
    // Still serving while the load balancer takes it out.
    let (status, _, answer) = host.call("echo", json!({"during": "drain"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "checked within the delay"
    );
    assert_eq!(
        host.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        host.log()
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "the listener stayed open for the delay"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "the open follower held the shutdown for the grace period: {:?}",
        signalled.elapsed()
    );
    drop(follower);
}

/// The suite runs twice (`scripts/test`): on SQLite, and with `GUST_TEST_BACKEND=postgres`
/// on PostgreSQL. Each pass proves it ran where it says.
#[tokio::test]
async fn the_suite_runs_on_the_backend_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let backend = crate::support::suite_backend();
    assert_eq!(host.stats().await["backend"], backend);
    let (_, ready) = host.send(host.request(Method::GET, "/readyz")).await;
    assert_eq!(ready["backend"], backend);
    // SQLite keeps the database in the data folder; PostgreSQL leaves none there.
    assert_eq!(host.data_dir.join("gust.db").exists(), backend == "sqlite");
}
