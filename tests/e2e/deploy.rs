//! Deploy, call, draft configuration, rollback, deletes, and the errors around them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Host, error_kind};

#[tokio::test]
async fn draft_changes_wait_for_deploy_and_rollback_restores_version_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    assert_eq!(host.upload_file("echo", gust_test_guests::ECHO).await, 1);
    host.set_config("echo", json!({"config": {"marker": "one"}}))
        .await;
    let first = host.deploy("echo", None).await;
    assert_eq!(first["agent"], "echo");
    assert_eq!(first["deployment"], 1);
    assert_eq!(first["version"], 1);
    assert!(first["deployed_at"].as_str().unwrap().ends_with('Z'));
    let endpoint = format!("{}/v1/agents/echo/run", host.url);
    assert_eq!(first["endpoints"]["sync"], endpoint.as_str());

    let response = host
        .request(Method::POST, "/v1/agents/echo/run")
        .json(&json!({"hello": "world"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(
        response.headers()["gust-run-id"]
            .to_str()
            .unwrap()
            .starts_with("run_")
    );
    assert_eq!(response.headers()["gust-agent-version"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"input": {"hello": "world"}, "version": 1, "marker": "one"})
    );

    // A draft change is not seen by calls until the deploy.
    host.set_config("echo", json!({"config": {"marker": "two"}}))
        .await;
    assert_eq!(host.call("echo", json!(null)).await.2["marker"], "one");
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/echo"))
        .await;
    assert_eq!(agent["draft_pending"], true, "{agent}");
    assert_eq!(agent["live"]["config"]["config"]["marker"], "one");
    assert_eq!(agent["draft"]["config"]["marker"], "two");
    assert_eq!(host.deploy("echo", None).await["deployment"], 2);
    assert_eq!(host.call("echo", json!(null)).await.2["marker"], "two");

    // A second version with its own configuration.
    assert_eq!(host.upload_file("echo", gust_test_guests::PROBE_B).await, 2);
    host.set_config("echo", json!({"config": {"marker": "three"}}))
        .await;
    let third = host.deploy("echo", Some(2)).await;
    assert_eq!(
        (third["deployment"].as_u64(), third["version"].as_u64()),
        (Some(3), Some(2))
    );
    let (status, version, body) = host.call("echo", json!({"key": "marker"})).await;
    assert_eq!((status, version), (StatusCode::OK, Some(2)));
    assert_eq!(
        (body["marker"].as_str(), body["config"].as_str()),
        (Some("b"), Some("three"))
    );

    // Rollback walks back: deployment 2 (version 1, "two"), then 1 (version 1, "one").
    let (status, back) = host
        .send(host.request(Method::POST, "/v1/agents/echo/rollback"))
        .await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(
        (back["deployment"].as_u64(), back["version"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        back["endpoints"]["sync"],
        endpoint.as_str(),
        "the endpoint never changes"
    );
    let (_, version, body) = host.call("echo", json!(null)).await;
    assert_eq!((version, body["marker"].as_str()), (Some(1), Some("two")));
    host.send(host.request(Method::POST, "/v1/agents/echo/rollback"))
        .await;
    let (_, version, body) = host.call("echo", json!(null)).await;
    assert_eq!((version, body["marker"].as_str()), (Some(1), Some("one")));
    let (status, body) = host
        .send(host.request(Method::POST, "/v1/agents/echo/rollback"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    error_kind(&body, "conflict");

    // The history shows every deployment; the live version cannot be deleted.
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/echo"))
        .await;
    let deployments = agent["deployments"].as_array().unwrap();
    assert_eq!(deployments.len(), 3);
    assert!(
        deployments[1]["rolled_back_at"].is_string()
            && deployments[2]["rolled_back_at"].is_string()
    );
    assert_eq!(agent["live"]["deployment"], 1);
    let versions = agent["versions"].as_array().unwrap();
    assert!(
        versions
            .iter()
            .all(|v| v["digest"].as_str().unwrap().starts_with("sha256:"))
    );
    assert!(versions.iter().all(|v| v["last_deployed_at"].is_string()));
    let (status, _) = host
        .send(host.request(Method::DELETE, "/v1/agents/echo/versions/1"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = host
        .send(host.request(Method::DELETE, "/v1/agents/echo/versions/2"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = host
        .send(host.request(Method::GET, "/v1/agents/echo/versions/2"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting the agent takes its endpoint down.
    let (status, _) = host
        .send(host.request(Method::DELETE, "/v1/agents/echo"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = host.call("echo", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_kind(&body, "not_found");
    let (_, list) = host.send(host.request(Method::GET, "/v1/agents")).await;
    assert_eq!(list["agents"], json!([]));
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let get = |path: &str| host.http.get(format!("{}{path}", host.url));

    // Probes need no token.
    assert_eq!(
        get("/healthz").send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        get("/readyz").send().await.unwrap().status(),
        StatusCode::OK
    );

    // No token, a wrong token, a malformed header: 401 everywhere, data plane included.
    for request in [
        get("/v1/agents"),
        host.http.post(format!("{}/v1/agents/echo/run", host.url)),
        get("/v1/stats").bearer_auth("wrong-token"),
        host.http
            .post(format!("{}/v1/agents/echo/run", host.url))
            .bearer_auth("wrong-token"),
        get("/v1/agents").header("authorization", "Basic abc"),
    ] {
        let (status, body) = host.send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let message = error_kind(&body, "unauthorized");
        assert!(!message.contains("wrong-token") && !message.contains(crate::support::TOKEN));
    }

    for bad in ["Echo", "a_b", "-lead", &"a".repeat(64)] {
        let (status, _, body) = host.call(bad, json!(null)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        error_kind(&body, "bad_request");
    }

    let (status, _, body) = host.call("nobody", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_kind(&body, "not_found");
    let (status, body) = host
        .send(host.request(Method::POST, "/v1/agents/nobody/deploy"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = host
        .send(host.request(Method::GET, "/v1/nothing-here"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_kind(&body, "not_found");
    let (status, body) = host.send(host.request(Method::PATCH, "/v1/agents")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    error_kind(&body, "method_not_allowed");
    let (status, body) = host
        .send(host.request(Method::GET, "/v1/agents/echo/versions/x"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    error_kind(&body, "bad_request");

    // Configuration is checked before it is stored.
    for (config, needle) in [
        (json!({"sync_timeout_s": 0}), "sync_timeout_s"),
        (json!({"config": {"k": 5}}), "invalid type"),
        (json!({"colour": "red"}), "unknown field"),
        (json!({"mode": "sideways"}), "unknown variant"),
        (json!({"mode": "async"}), "needs `push`"),
        (
            json!({"push": {"url": "file:///etc/passwd", "access_token": "t"}}),
            "http or https",
        ),
        (
            json!({"push": {"url": "https://app.example/hook", "access_token": "***"}}),
            "write-only",
        ),
    ] {
        let (status, body) = host
            .send(
                host.request(Method::PUT, "/v1/agents/cfg/config")
                    .json(&config),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{config}: {body}");
        assert!(error_kind(&body, "bad_request").contains(needle), "{body}");
    }
    let (status, body) = host
        .send(
            host.request(Method::PUT, "/v1/agents/cfg/config")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A configured agent without versions cannot be deployed yet.
    host.set_config("cfg", json!({"config": {"a": "b"}})).await;
    let (status, body) = host
        .send(host.request(Method::POST, "/v1/agents/cfg/deploy"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error_kind(&body, "not_found").contains("no versions"),
        "{body}"
    );
    let (status, body) = host
        .send(
            host.request(Method::POST, "/v1/agents/cfg/deploy")
                .json(&json!({"version": "one"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Two editors of one draft (the console and `gust config`, two scripts) each read it and
/// write it back whole. With the `ETag` they read in `If-Match`, the second write is refused
/// with 412 instead of silently dropping the first one's change.
#[tokio::test]
async fn a_draft_written_with_if_match_does_not_overwrite_a_change_made_since() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let path = "/v1/agents/cfg/config";
    let etag =
        |response: &reqwest::Response| response.headers()["etag"].to_str().unwrap().to_owned();
    let put = |body: serde_json::Value, condition: Option<(&'static str, String)>| {
        let mut request = host.request(Method::PUT, path).json(&body);
        if let Some((name, value)) = condition {
            request = request.header(name, value);
        }
        request.send()
    };

    // Creating: only when the agent does not exist yet, with `If-None-Match: *`; an
    // `If-Match` finds nothing to match.
    let created = put(
        json!({"config": {"a": "1"}}),
        Some(("if-none-match", "*".into())),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    // No tag on a `PUT`'s answer: the draft stored is not the body sent (RFC 9110, 9.3.4).
    assert!(created.headers().get("etag").is_none());
    let again = put(json!({}), Some(("if-none-match", "*".into())))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::PRECONDITION_FAILED);
    let response = host
        .request(Method::PUT, "/v1/agents/other/config")
        .header("if-match", "*")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    let (status, _) = host
        .send(host.request(Method::GET, "/v1/agents/other"))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused write creates nothing"
    );

    // Two editors read the same draft.
    let read = host.request(Method::GET, path).send().await.unwrap();
    let tag = etag(&read);
    assert!(tag.starts_with('"') && tag.len() > 2, "{tag}");
    let again = host.request(Method::GET, path).send().await.unwrap();
    assert_eq!(
        etag(&again),
        tag,
        "a draft's tag is the same however often it is read"
    );
    let mut first: serde_json::Value = read.json().await.unwrap();
    let mut second = first.clone();
    first["config"]["model"] = json!("small");
    second["config"]["region"] = json!("eu");
    let saved = put(first, Some(("if-match", tag.clone()))).await.unwrap();
    assert_eq!(saved.status(), StatusCode::OK);
    let saved_tag = etag(&host.request(Method::GET, path).send().await.unwrap());
    assert_ne!(saved_tag, tag);
    let refused = put(second, Some(("if-match", tag.clone()))).await.unwrap();
    assert_eq!(refused.status(), StatusCode::PRECONDITION_FAILED);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        error_kind(&body, "precondition_failed").contains("changed since it was read"),
        "{body}"
    );
    // A weak tag never matches a write, even one naming the draft there now.
    let weak = put(json!({}), Some(("if-match", format!("W/{saved_tag}"))))
        .await
        .unwrap();
    assert_eq!(weak.status(), StatusCode::PRECONDITION_FAILED);
    let bad = put(json!({}), Some(("if-match", "no-quotes".into())))
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let read = host.request(Method::GET, path).send().await.unwrap();
    let draft: serde_json::Value = read.json().await.unwrap();
    assert_eq!(draft["config"], json!({"a": "1", "model": "small"}));

    // Without a precondition a write replaces whatever is there, as before.
    host.set_config("cfg", json!({"config": {"b": "2"}})).await;
    let (_, draft) = host.send(host.request(Method::GET, path)).await;
    assert_eq!(draft["config"], json!({"b": "2"}));
}

/// A deploy with the preview's `draft_etag` in `If-Match` deploys the configuration the
/// preview showed, or nothing: a Confirm dialog's "yes" is not given to a draft that changed
/// while it was open.
#[tokio::test]
async fn a_deploy_with_if_match_deploys_the_previewed_draft_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    assert_eq!(host.upload_file("echo", gust_test_guests::ECHO).await, 1);
    host.set_config("echo", json!({"config": {"marker": "shown"}}))
        .await;
    let (status, preview) = host
        .send(host.request(Method::GET, "/v1/agents/echo/deploy/preview"))
        .await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let shown = preview["draft_etag"].as_str().unwrap().to_owned();
    let read = host
        .request(Method::GET, "/v1/agents/echo/config")
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.headers()["etag"],
        shown.as_str(),
        "the preview's tag is the draft's"
    );

    host.set_config("echo", json!({"config": {"marker": "not shown"}}))
        .await;
    let deploy = |condition: (&'static str, String)| {
        host.send(
            host.request(Method::POST, "/v1/agents/echo/deploy")
                .header(condition.0, condition.1),
        )
    };
    let (status, body) = deploy(("if-match", shown)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    error_kind(&body, "precondition_failed");
    let (status, body) = deploy(("if-none-match", "*".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/echo"))
        .await;
    assert!(agent["live"].is_null(), "nothing was deployed: {agent}");
    assert!(
        agent["deployments"].as_array().unwrap().is_empty(),
        "{agent}"
    );

    let (_, preview) = host
        .send(host.request(Method::GET, "/v1/agents/echo/deploy/preview"))
        .await;
    let (status, deployed) = deploy((
        "if-match",
        preview["draft_etag"].as_str().unwrap().to_owned(),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    assert_eq!(deployed["deployment"], 1);
    let (_, answer) = host
        .send(
            host.request(Method::POST, "/v1/agents/echo/run")
                .json(&json!({"hello": "world"})),
        )
        .await;
    assert_eq!(answer["marker"], "not shown", "{answer}");
}

/// The write-only push token follows its URL: `"***"` keeps the stored token only while the
/// URL stays; a new URL needs the token again, so a stored token is never sent elsewhere.
#[tokio::test]
async fn a_kept_push_token_is_never_sent_to_a_new_url() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let push = |url: &str, token: &str| json!({"push": {"url": url, "access_token": token}});
    host.set_config("app", push("https://app.example/hook", "secret-token"))
        .await;
    // Same URL, token withheld: kept.
    host.set_config("app", push("https://app.example/hook", "***"))
        .await;
    // Another URL with the withheld token: refused, and the draft is unchanged.
    let (status, body) = host
        .send(
            host.request(Method::PUT, "/v1/agents/app/config")
                .json(&push("https://elsewhere.example/steal", "***")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        error_kind(&body, "bad_request").contains("send `push.access_token` again"),
        "{body}"
    );
    let (_, draft) = host
        .send(host.request(Method::GET, "/v1/agents/app/config"))
        .await;
    assert_eq!(draft["push"]["url"], "https://app.example/hook", "{draft}");
    // With the token sent again, the new URL is taken.
    host.set_config("app", push("https://elsewhere.example/hook", "new-token"))
        .await;
}

/// Control-plane calls a client can retry: a deploy with an `Idempotency-Key` answers the
/// first deploy again (no second deployment), and a rollback that names its target is a
/// no-op the second time, not a second step back.
#[tokio::test]
async fn deploys_and_rollbacks_are_safe_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("echo", gust_test_guests::ECHO).await;
    host.deploy("echo", None).await;
    host.upload_file("echo", gust_test_guests::PROBE_A).await;
    let deploy = |key: &str, version: u32| {
        host.request(Method::POST, "/v1/agents/echo/deploy")
            .header("idempotency-key", key)
            .json(&json!({ "version": version }))
    };
    let first = deploy("release-2", 2).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["deployment"], 2, "{first}");
    let again = deploy("release-2", 2).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(
        again["deployment"], 2,
        "the same deployment, not a third: {again}"
    );
    let (status, body) = host.send(deploy("release-2", 1)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    error_kind(&body, "conflict");
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/echo"))
        .await;
    assert_eq!(agent["deployments"].as_array().unwrap().len(), 2, "{agent}");

    let rollback_to = |to: u32| {
        host.request(Method::POST, "/v1/agents/echo/rollback")
            .json(&json!({ "to": to }))
    };
    for _ in 0..2 {
        let (status, body) = host.send(rollback_to(1)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["deployment"], 1, "{body}");
    }
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/echo"))
        .await;
    assert_eq!(agent["live"]["deployment"], 1, "{agent}");
    let (status, body) = host.send(rollback_to(7)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    error_kind(&body, "not_found");
}

/// An agent deleted while a call runs, then made again under its name, starts afresh: the
/// old call does not take the new agent's places, and its calls are not counted as the new
/// one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_made_again_after_a_delete_does_not_inherit_the_old_ones_instances() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let make = || async {
        host.upload_file("probe", gust_test_guests::PROBE_A).await;
        host.set_config("probe", json!({"max_instances": 1})).await;
        host.deploy("probe", None).await;
    };
    make().await;
    let running = host.call("probe", json!({"op": "sleep", "ms": 6000}));
    let again = async {
        let h = &host;
        crate::support::eventually(Duration::from_secs(5), "the call running", || async move {
            h.stats().await["live_instances"].as_u64() == Some(1)
        })
        .await;
        let (status, _) = host
            .send(host.request(Method::DELETE, "/v1/agents/probe"))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        make().await;
        let (status, _, body) = host.call("probe", json!({"op": "echo"})).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the new agent's one instance was taken: {body}"
        );
        let (_, agents) = host.send(host.request(Method::GET, "/v1/agents")).await;
        let listed = &agents["agents"][0];
        assert_eq!(
            (&listed["calls"], &listed["failures"]),
            (&json!(1), &json!(0)),
            "{agents}"
        );
    };
    let ((status, _, body), ()) = tokio::join!(running, again);
    assert_eq!(
        status,
        StatusCode::OK,
        "the deleted agent's call finished: {body}"
    );
}
