//! Guardrails: invoke keys and tokens, SSRF-safe push targets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Host, TOKEN, error_kind, eventually};

#[tokio::test]
async fn keys_reach_their_own_agent_only_and_are_revoked_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Debug logging: not even then may a key or the admin token reach the log.
    let host = Host::start_on(dir.path().join("data"), &["--log", "debug"]).await;
    for agent in ["one", "two"] {
        host.upload_file(agent, gust_test_guests::PROBE_A).await;
        host.deploy(agent, None).await;
    }
    let (status, created) = host
        .send(
            host.request(Method::POST, "/v1/agents/one/keys")
                .json(&json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("gust_") && id.starts_with("key_"));
    assert_eq!(created["name"], "ci");

    let call = |agent: &str, auth: (&str, String)| {
        host.http
            .post(format!("{}/v1/agents/{agent}/run", host.url))
            .header(auth.0, auth.1)
            .json(&json!({"op": "echo"}))
            .send()
    };
    let bearer = || ("authorization", format!("Bearer {key}"));
    let x_api_key = || ("x-api-key", key.clone());
    assert_eq!(
        call("one", bearer()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        call("one", x_api_key()).await.unwrap().status(),
        StatusCode::OK
    );
    // Queued runs of its agent too: submit and poll.
    let submitted = host
        .http
        .post(format!("{}/v1/agents/one/runs", host.url))
        .header("x-api-key", &key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), StatusCode::ACCEPTED);

    // Another agent, and every control-plane route: 403.
    let response = call("two", bearer()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        !error_kind(&body, "forbidden").contains(&key),
        "keys never appear in answers"
    );
    for (method, path) in [
        (Method::GET, "/v1/agents"),
        (Method::GET, "/v1/agents/one"),
        (Method::DELETE, "/v1/agents/one"),
        (Method::POST, "/v1/agents/one/versions"),
        (Method::GET, "/v1/agents/one/versions"),
        (Method::GET, "/v1/agents/one/versions/1"),
        (Method::DELETE, "/v1/agents/one/versions/1"),
        (Method::GET, "/v1/agents/one/config"),
        (Method::PUT, "/v1/agents/one/config"),
        (Method::POST, "/v1/agents/one/deploy"),
        (Method::POST, "/v1/agents/one/rollback"),
        (Method::POST, "/v1/agents/one/keys"),
        (Method::GET, "/v1/agents/one/keys"),
        (Method::DELETE, &format!("/v1/agents/one/keys/{id}")),
        (Method::POST, "/v1/agents/one/push/test"),
        (Method::POST, "/v1/agents/one/push/rotate-secret"),
        (
            Method::POST,
            "/v1/agents/one/runs/run_0123456789abcdef0123456789abcdef/redeliver",
        ),
        (Method::GET, "/v1/stats"),
        (Method::POST, "/v1/admin/rotate-token"),
    ] {
        let response = host
            .http
            .request(method.clone(), format!("{}{path}", host.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }

    // Credentials in the URL are refused, whatever they are, wherever they are sent: a
    // route, the data plane, an unknown path and a method a route does not take.
    for query in [
        format!("token={TOKEN}"),
        format!("api_key={key}"),
        "access_token=x".to_owned(),
    ] {
        for (method, path) in [
            (Method::GET, "/v1/agents"),
            (Method::POST, "/v1/agents/one/run"),
            (Method::GET, "/no/such/route"),
            (Method::DELETE, "/healthz"),
        ] {
            let (status, body) = host
                .send(host.request(method.clone(), &format!("{path}?{query}")))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}?{query}");
            error_kind(&body, "bad_request");
        }
    }

    // Listed without the key; last use recorded (flushed in the background).
    let (_, listed) = host
        .send(host.request(Method::GET, "/v1/agents/one/keys"))
        .await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert!(listed["keys"][0].get("key").is_none());
    assert!(!listed.to_string().contains(&key));
    let h = &host;
    eventually(
        Duration::from_secs(15),
        "last use to be recorded",
        || async move {
            let (_, listed) = h.send(h.request(Method::GET, "/v1/agents/one/keys")).await;
            listed["keys"][0]["last_used_at"].is_string()
        },
    )
    .await;

    let (status, _) = host
        .send(host.request(Method::DELETE, &format!("/v1/agents/one/keys/{id}")))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call("one", bearer()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "revoked at once"
    );
    let (status, _) = host
        .send(host.request(Method::DELETE, &format!("/v1/agents/one/keys/{id}")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let log = host.log();
    assert!(log.contains("DEBUG"), "the host logged at debug level");
    assert!(!log.contains(&key), "keys never reach the log");
    assert!(
        !log.contains(TOKEN),
        "the admin token never reaches the log"
    );
}

#[tokio::test]
async fn a_key_rate_limit_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("one", gust_test_guests::PROBE_A).await;
    host.deploy("one", None).await;
    let (_, created) = host
        .send(
            host.request(Method::POST, "/v1/agents/one/keys")
                .json(&json!({
                    "name": "limited", "rate_limit": {"per_second": 1.0, "burst": 2}
                })),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let call = || {
        host.http
            .post(format!("{}/v1/agents/one/run", host.url))
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
    };
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    let limited = call().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "1");
    let body: serde_json::Value = limited.json().await.unwrap();
    error_kind(&body, "overloaded");
    // The admin is not rate-limited, and the key recovers.
    assert_eq!(host.call("one", json!({})).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn the_admin_token_rotates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = Host::spawn(data.clone(), &[], None).await;
    let old = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let rotated = host
        .http
        .post(format!("{}/v1/admin/rotate-token", host.url))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let new = rotated.json::<serde_json::Value>().await.unwrap()["admin_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert_eq!(
        std::fs::read_to_string(data.join("admin-token")).unwrap(),
        new,
        "stored for the next start"
    );
    let agents = |token: &str| {
        host.http
            .get(format!("{}/v1/agents", host.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        agents(&old).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(agents(&new).await.unwrap().status(), StatusCode::OK);

    // One host's token given on the command line is changed there, not rotated. Hosts
    // sharing PostgreSQL keep the token's hash there, for all of them: it rotates through
    // the API whatever the token came from.
    let given = Host::start(&dir.path().join("other")).await;
    let (status, body) = given
        .send(given.request(Method::POST, "/v1/admin/rotate-token"))
        .await;
    let expected = match crate::support::suite_backend() {
        "postgres" => StatusCode::OK,
        _ => StatusCode::CONFLICT,
    };
    assert_eq!(status, expected, "{body}");
}

/// Counts connections to a loopback port, to prove nothing reached it.
async fn counting_listener(address: &str) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

#[tokio::test]
async fn push_targets_on_loopback_are_refused_in_every_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    let (v4, v4_count) = counting_listener("127.0.0.1:0").await;
    let (v6, v6_count) = counting_listener("[::1]:0").await;
    let targets = [
        format!("http://127.0.0.1:{v4}/hook"),
        format!("http://[::1]:{v6}/hook"),
        format!("http://[::ffff:127.0.0.1]:{v4}/hook"),
        format!("http://2130706433:{v4}/hook"),
        format!("http://localhost:{v4}/hook"),
    ];
    for url in &targets {
        host.set_config(
            "probe",
            json!({"mode": "async", "push": {"url": url, "access_token": "t"}}),
        )
        .await;
        host.deploy("probe", None).await;
        let (status, body) = host
            .send(host.request(Method::POST, "/v1/agents/probe/push/test"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            error_kind(&body, "bad_request").contains("not allowed"),
            "{url}: {body}"
        );
    }
    // A run's event to a refused target fails, with the reason, and is not retried.
    let id = crate::runs::submit(&host, "probe", json!({})).await;
    crate::runs::finished(&host, "probe", &id).await;
    let (h, i) = (&host, &id);
    eventually(Duration::from_secs(10), "the delivery to fail", || async move {
        crate::runs::poll(h, "probe", i, 0).await["delivery"]["status"] == "failed"
    })
    .await;
    let run = crate::runs::poll(&host, "probe", &id, 0).await;
    assert!(
        run["delivery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{run}"
    );
    assert_eq!(run["delivery"]["attempts"], 1);
    assert_eq!(
        v4_count.load(Ordering::SeqCst),
        0,
        "nothing connected to 127.0.0.1"
    );
    assert_eq!(
        v6_count.load(Ordering::SeqCst),
        0,
        "nothing connected to [::1]"
    );
}
