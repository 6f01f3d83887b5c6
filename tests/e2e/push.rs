//! Push delivery: signed with Standard Webhooks (checked by an independent verifier),
//! retried by the Standard Webhooks rules (every non-2xx but 410, never redirected), the
//! spec's envelope with thin bodies for large runs, staged until deploy, restored by
//! rollback, rotated secrets.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use standardwebhooks::Webhook;

use crate::runs::{finished, submit};
use crate::support::receiver::{Answer, Receiver};
use crate::support::{Host, eventually};

const PUSH_TOKEN: &str = "receiver-token-42";

/// A host whose push retries come quickly, with the probe deployed in async mode pushing to
/// `receiver`. Returns the signing secret shown when push was turned on.
async fn async_host(dir: &std::path::Path, receiver: &Receiver) -> (Host, String) {
    let host = Host::start_on(
        dir.join("data"),
        &[
            "--push-retry-schedule",
            "0.2,0.3",
            "--push-timeout",
            "2",
            "--allow-private-network",
        ],
    )
    .await;
    let secret = deploy_pushing_to(&host, &receiver.url).await;
    (host, secret)
}

/// Deploys the probe on `host` in async mode pushing to `url`; returns the signing secret
/// shown when push was turned on.
async fn deploy_pushing_to(host: &Host, url: &str) -> String {
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    let (status, answer) = host
        .send(
            host.request(Method::PUT, "/v1/agents/probe/config")
                .json(&json!({
                    "mode": "async",
                    "push": {"url": url, "access_token": PUSH_TOKEN},
                })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["push"]["access_token"], "***",
        "the token is write-only"
    );
    let secret = answer["push"]["secret"]
        .as_str()
        .expect("the secret is shown once")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    let deployed = host.deploy("probe", None).await;
    let runs_url = format!("{}/v1/agents/probe/runs", host.url);
    assert_eq!(
        deployed["endpoints"],
        json!({"sync": format!("{}/v1/agents/probe/run", host.url), "async_push": runs_url, "async_poll": format!("{runs_url}/{{run_id}}")})
    );
    secret
}

fn verify(secret: &str, received: &crate::support::receiver::Received) -> bool {
    Webhook::new(secret)
        .unwrap()
        .verify(&received.body, &received.headers)
        .is_ok()
}

async fn delivery_becomes(host: &Host, id: &str, status: &str) {
    eventually(Duration::from_secs(10), &format!("the delivery to be {status}"), || async move {
        crate::runs::poll(host, "probe", id, 0).await["delivery"]["status"] == status
    })
    .await;
}

async fn wait_for_pushes(receiver: &Receiver, n: usize) {
    let r = receiver;
    eventually(
        Duration::from_secs(20),
        &format!("{n} pushes"),
        || async move { r.received().len() >= n },
    )
    .await;
}

#[tokio::test]
async fn pushes_are_signed_retried_and_verified_independently() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(vec![Answer::Status(503), Answer::Status(503)]).await;
    let (host, secret) = async_host(dir.path(), &receiver).await;
    let (_, config) = host
        .send(host.request(Method::GET, "/v1/agents/probe/config"))
        .await;
    assert_eq!(config["push"]["access_token"], "***");
    assert!(
        config["push"].get("secret").is_none(),
        "the secret is shown only once"
    );

    let id = submit(&host, "probe", json!({"op": "echo"})).await;
    let run = finished(&host, "probe", &id).await;
    assert_eq!(run["status"], "succeeded");
    wait_for_pushes(&receiver, 3).await;
    delivery_becomes(&host, &id, "delivered").await;
    let run = crate::runs::poll(&host, "probe", &id, 0).await;
    assert_eq!(run["delivery"]["attempts"], 3, "{run}");
    assert_eq!(run["delivery"]["next_attempt_at"], Value::Null);

    let pushes = receiver.received();
    assert_eq!(pushes.len(), 3, "503, 503, then 200");
    let event_id = pushes[0].header("webhook-id");
    assert!(event_id.starts_with("msg_"));
    for push in &pushes {
        assert_eq!(
            push.header("webhook-id"),
            event_id,
            "one id for every attempt"
        );
        assert_eq!(push.header("authorization"), format!("Bearer {PUSH_TOKEN}"));
        assert_eq!(push.header("content-type"), "application/json");
        assert!(
            verify(&secret, push),
            "the signature verifies with the Standard Webhooks library"
        );
        let event = push.json();
        assert_eq!(event["type"], "run.succeeded");
        assert_eq!(event["data"]["run_id"], id.as_str());
        assert_eq!(event["data"]["output"]["json"]["marker"], "a");
        assert!(
            event["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{event}"
        );
        assert_eq!(
            event.as_object().unwrap().len(),
            3,
            "the envelope is {{type, timestamp, data}}: {event}"
        );
    }
    // A tampered body, or another secret, does not verify.
    let mut tampered = pushes[2].clone();
    tampered.body = tampered
        .body
        .iter()
        .copied()
        .map(|b| if b == b'a' { b'b' } else { b })
        .collect::<Vec<u8>>()
        .into();
    assert!(!verify(&secret, &tampered));
    assert!(!verify(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &pushes[2]
    ));

    // Failed runs are pushed too, with their error.
    let id = submit(&host, "probe", json!({"op": "fail"})).await;
    finished(&host, "probe", &id).await;
    wait_for_pushes(&receiver, 4).await;
    let event = receiver.received()[3].json();
    assert_eq!(event["type"], "run.failed");
    assert_eq!(event["data"]["error"]["kind"], "failed");

    // Redelivery repeats the event with the same id.
    let first_id = pushes[0].header("webhook-id");
    let (status, _) = host
        .send(host.request(
            Method::POST,
            &format!(
                "/v1/agents/probe/runs/{}/redeliver",
                pushes[0].json()["data"]["run_id"].as_str().unwrap()
            ),
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_for_pushes(&receiver, 5).await;
    assert_eq!(receiver.received()[4].header("webhook-id"), first_id);

    // The test event reaches the receiver and reports its status.
    let (status, answer) = host
        .send(host.request(Method::POST, "/v1/agents/probe/push/test"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], 200);
    let test = receiver.received().last().unwrap().clone();
    assert_eq!(test.json()["type"], "push.test");
    assert_eq!(test.json()["data"]["agent"], "probe");
    assert!(verify(&secret, &test));
}

#[tokio::test]
async fn too_many_requests_is_retried_after_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(vec![Answer::TooMany(2)]).await;
    let (host, _) = async_host(dir.path(), &receiver).await;
    let id = submit(&host, "probe", json!({"op": "echo"})).await;
    finished(&host, "probe", &id).await;
    delivery_becomes(&host, &id, "delivered").await;
    let pushes = receiver.received();
    assert_eq!(pushes.len(), 2);
    let at = |r: &crate::support::receiver::Received| {
        r.header("webhook-timestamp").parse::<i64>().unwrap()
    };
    // The schedule says 0.2 s; the receiver asked for 2 s.
    assert!(
        at(&pushes[1]) - at(&pushes[0]) >= 2,
        "waited for Retry-After"
    );
}

/// Every answer but a 2xx and 410 is retried, redirects included (never followed); 410
/// Gone stops the retries and the delivery says why.
#[tokio::test]
async fn every_failure_but_gone_is_retried_and_redirects_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = Receiver::start(vec![]).await;
    let receiver = Receiver::start(vec![
        Answer::Redirect(elsewhere.url.clone()),
        Answer::Status(404),
        Answer::Status(400),
    ])
    .await;
    let (host, _) = async_host(dir.path(), &receiver).await;
    let id = submit(&host, "probe", json!({"op": "echo"})).await;
    finished(&host, "probe", &id).await;
    delivery_becomes(&host, &id, "delivered").await;
    let run = crate::runs::poll(&host, "probe", &id, 0).await;
    assert_eq!(
        run["delivery"]["attempts"], 4,
        "redirect, 404, 400, then 200: {run}"
    );
    assert!(
        elsewhere.received().is_empty(),
        "the redirect target got nothing"
    );

    receiver.answer_next(vec![Answer::Status(410)]);
    let id = submit(&host, "probe", json!({"op": "echo"})).await;
    finished(&host, "probe", &id).await;
    delivery_becomes(&host, &id, "failed").await;
    let run = crate::runs::poll(&host, "probe", &id, 0).await;
    assert!(
        run["delivery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("410 Gone"),
        "{run}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), 5, "a 410 is not retried");
}

/// A run whose event is larger than the bound is pushed thin: its id, status and a poll URL
/// that answers the whole run.
#[tokio::test]
async fn large_runs_are_pushed_thin_with_a_poll_url() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(vec![]).await;
    let (host, secret) = async_host(dir.path(), &receiver).await;
    // 1 MiB of output, over the default bound of 256 KiB.
    let id = submit(&host, "probe", json!({"op": "big", "mb": 1})).await;
    finished(&host, "probe", &id).await;
    wait_for_pushes(&receiver, 1).await;
    let push = receiver.received()[0].clone();
    assert!(push.body.len() < 4096, "{} bytes", push.body.len());
    assert!(verify(&secret, &push));
    let event = push.json();
    assert_eq!(event["type"], "run.succeeded");
    assert_eq!(event["data"]["thin"], true, "{event}");
    assert_eq!(event["data"]["status"], "succeeded");
    let poll_url = event["data"]["poll_url"].as_str().unwrap();
    assert_eq!(poll_url, format!("{}/v1/agents/probe/runs/{id}", host.url));
    let full: Value = host
        .http
        .get(poll_url)
        .bearer_auth(crate::support::TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        full["output"]["json"]["blob"].as_str().map(str::len),
        Some(1 << 20)
    );
}

#[tokio::test]
async fn mode_changes_wait_for_deploy_and_rollback_restores_push() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(vec![]).await;
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    let sync = host.deploy("probe", None).await;
    assert_eq!(
        sync["endpoints"].as_object().unwrap().len(),
        2,
        "sync mode: sync and async_poll"
    );
    assert!(sync["endpoints"].get("async_push").is_none());

    // Staged: the draft pushes, the live deployment does not.
    host.set_config(
        "probe",
        json!({"mode": "async", "push": {"url": receiver.url, "access_token": PUSH_TOKEN}}),
    )
    .await;
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/probe"))
        .await;
    assert_eq!(agent["draft_pending"], true);
    assert_eq!(
        (
            agent["draft"]["mode"].as_str(),
            agent["live"]["config"]["mode"].as_str()
        ),
        (Some("async"), Some("sync"))
    );
    let before = submit(&host, "probe", json!({"op": "echo"})).await;
    let run = finished(&host, "probe", &before).await;
    assert_eq!(run["delivery"], Value::Null);

    host.deploy("probe", None).await;
    let after = submit(&host, "probe", json!({"op": "echo"})).await;
    finished(&host, "probe", &after).await;
    wait_for_pushes(&receiver, 1).await;
    assert_eq!(
        receiver.received()[0].json()["data"]["run_id"],
        after.as_str()
    );

    // Rollback brings back the sync deployment, without push.
    let (status, back) = host
        .send(host.request(Method::POST, "/v1/agents/probe/rollback"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(back["config"]["mode"], "sync");
    let rolled = submit(&host, "probe", json!({"op": "echo"})).await;
    let run = finished(&host, "probe", &rolled).await;
    assert_eq!(run["delivery"], Value::Null);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1, "no push after the rollback");
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.json()["data"]["run_id"] != before.as_str()),
        "the run accepted before the deploy was never pushed"
    );
}

#[tokio::test]
async fn rotated_secrets_sign_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(vec![]).await;
    let (host, old) = async_host(dir.path(), &receiver).await;
    let (status, rotated) = host
        .send(host.request(Method::POST, "/v1/agents/probe/push/rotate-secret"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let new = rotated["push"]["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);

    let id = submit(&host, "probe", json!({"op": "echo"})).await;
    finished(&host, "probe", &id).await;
    wait_for_pushes(&receiver, 1).await;
    let push = &receiver.received()[0];
    assert_eq!(
        push.header("webhook-signature").split(' ').count(),
        2,
        "two signatures during the overlap"
    );
    assert!(
        verify(&old, push),
        "receivers still on the old secret verify"
    );
    assert!(verify(&new, push), "receivers on the new secret verify");
}

/// A push receiver a user wrote with a Standard Webhooks library; killed when dropped.
struct LibraryReceiver {
    child: std::process::Child,
    url: String,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl LibraryReceiver {
    /// Starts `program receiver-file` from `tests/receivers`, with the secret and token.
    fn start(program: &std::path::Path, script: &str, secret: &str) -> Self {
        use std::io::BufRead as _;
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/receivers");
        assert!(
            program.exists() || program.components().count() == 1,
            "{} is missing: run scripts/setup, which installs the receivers' libraries",
            program.display()
        );
        let mut child = std::process::Command::new(program)
            .arg(script)
            .current_dir(&folder)
            .env("WEBHOOK_SECRET", secret)
            .env("ACCESS_TOKEN", PUSH_TOKEN)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {script}: {e}", program.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = if let Some(url) = line.strip_prefix("listening on ") {
                    json!({ "listening": url })
                } else {
                    serde_json::from_str(&line).unwrap_or(json!({ "unparsed": line }))
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{script} did not start"));
        let url = first["listening"].as_str().expect("the address").to_owned();
        Self { child, url, lines }
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a push reached the receiver")
    }
}

impl Drop for LibraryReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The receivers users write: one in Python and one in Node.js, each verifying pushes with
/// its language's `standardwebhooks` package (pinned in tests/receivers) and checking the
/// access token. Both accept gust's runs and its test event.
#[tokio::test]
async fn receivers_verify_pushes_with_the_standardwebhooks_libraries() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = repo.join(".tools/receivers/bin/python");
    assert!(
        repo.join("tests/receivers/node_modules/standardwebhooks")
            .exists(),
        "tests/receivers/node_modules is missing: run scripts/setup"
    );
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(
        dir.path().join("data"),
        &["--allow-private-network", "--push-retry-schedule", "0.2"],
    )
    .await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    let push =
        |url: &str| json!({"mode": "async", "push": {"url": url, "access_token": PUSH_TOKEN}});
    let (status, answer) = host
        .send(
            host.request(Method::PUT, "/v1/agents/probe/config")
                .json(&push("http://127.0.0.1:9/unused")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let secret = answer["push"]["secret"].as_str().unwrap().to_owned();

    for (program, script) in [
        (python.as_path(), "receiver.py"),
        (std::path::Path::new("node"), "receiver.mjs"),
    ] {
        let receiver = LibraryReceiver::start(program, script, &secret);
        host.set_config("probe", push(&receiver.url)).await;
        host.deploy("probe", None).await;
        let id = submit(&host, "probe", json!({"op": "echo"})).await;
        finished(&host, "probe", &id).await;
        let got = receiver.next();
        assert_eq!(got["verified"], true, "{script}: {got}");
        assert_eq!(got["event"]["type"], "run.succeeded", "{script}: {got}");
        assert_eq!(
            got["event"]["data"]["run_id"],
            id.as_str(),
            "{script}: {got}"
        );
        delivery_becomes(&host, &id, "delivered").await;

        let (status, answer) = host
            .send(host.request(Method::POST, "/v1/agents/probe/push/test"))
            .await;
        assert_eq!(
            (status, answer["status"].as_u64()),
            (StatusCode::OK, Some(204))
        );
        let got = receiver.next();
        assert_eq!(got["verified"], true, "{script}: {got}");
        assert_eq!(got["event"]["type"], "push.test", "{script}: {got}");
    }
}

#[tokio::test]
async fn a_push_test_reports_an_unreachable_receiver() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", free.local_addr().unwrap());
    drop(free);
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config(
        "probe",
        json!({"mode": "async", "push": {"url": url, "access_token": "t"}}),
    )
    .await;
    host.deploy("probe", None).await;
    // What the test found is the answer, not a failure of the host.
    let (status, answer) = host
        .send(host.request(Method::POST, "/v1/agents/probe/push/test"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["delivered"], false, "{answer}");
    assert!(answer["status"].is_null(), "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("could not be reached")),
        "{answer}"
    );
}

/// An application behind a private CA gets its push once `--outbound-ca-certs` names that
/// CA: push deliveries trust it beside the public roots, as guests' requests do.
#[tokio::test]
async fn a_receiver_certified_by_a_private_ca_is_pushed_to_with_outbound_ca_certs() {
    let (receiver, certificate) = crate::support::upstream::Upstream::start_https(100).await;
    let dir = tempfile::tempdir().unwrap();
    let host = certificate.trusting_host(dir.path()).await;
    deploy_pushing_to(&host, &format!("{}/echo", receiver.origin)).await;
    let id = submit(&host, "probe", json!({"op": "echo"})).await;
    delivery_becomes(&host, &id, "delivered").await;
    // Counted by the receiver: the push came over TLS, once.
    assert_eq!(receiver.hits("/echo"), 1);
}
