//! The web console: its scenarios in Debian's Chromium (tests/console/scenarios.mjs, driven
//! by playwright-core), the endpoint snippets run as a user runs them (curl in bash, python3,
//! node), and the session's rules at the HTTP level (cookie flags, CSRF, sign-out, rotation).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Host, TOKEN, eventually};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A program the test runs; missing, it fails with what installs it (never a skip).
fn require(program: &str, installed_by: &str) {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "`{program}` is missing: {installed_by}");
}

/// Signs in with `token`; the session cookie's `name=value`, and the whole `Set-Cookie`.
async fn sign_in(host: &Host, token: &str) -> (StatusCode, Option<(String, String)>) {
    let response = host
        .http
        .post(format!("{}/console/session", host.url))
        .header(ORIGIN, &host.url)
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(|full| {
            let pair = full.split(';').next().unwrap_or_default().to_owned();
            (pair, full.to_owned())
        });
    (status, cookie)
}

/// A request with the session cookie (and no token).
fn with_cookie(host: &Host, method: Method, path: &str, cookie: &str) -> reqwest::RequestBuilder {
    host.http
        .request(method, format!("{}{path}", host.url))
        .header(COOKIE, cookie)
}

#[tokio::test]
async fn the_console_scenarios_pass_in_chromium() {
    let folder = repo().join("tests/console");
    require("node", "scripts/setup installs Node.js");
    require("chromium", "scripts/setup installs Debian's chromium");
    assert!(
        folder.join("node_modules/playwright-core").exists(),
        "tests/console/node_modules is missing: run scripts/setup"
    );
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    let broken = dir.path().join("broken.wasm");
    // An agent that imports an interface the agent world does not offer.
    std::fs::write(
        &broken,
        crate::support::agent_component(1, r#"(import "acme:evil/thing" (instance))"#, ""),
    )
    .unwrap();
    // `scripts/screenshots` keeps them (under docs/console/); otherwise a temporary folder.
    let screenshots = std::env::var_os("GUST_CONSOLE_SCREENSHOTS")
        .map_or_else(|| dir.path().join("screenshots"), PathBuf::from);
    let run = Command::new("node")
        .arg("scenarios.mjs")
        .current_dir(&folder)
        .env("GUST_URL", &host.url)
        .env("GUST_ADMIN_TOKEN", TOKEN)
        .env("GOOD_WASM", gust_test_guests::PROBE_A)
        .env("NEWER_WASM", gust_test_guests::PROBE_B)
        .env("BROKEN_WASM", &broken)
        .env("SCREENSHOTS", &screenshots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    // Which browser ran, in the test's output.
    println!("{stdout}");
    assert!(
        run.status.success() && stdout.contains("console scenarios passed"),
        "the console scenarios failed:\n{stdout}\n{stderr}\n--- the host's log:\n{}",
        host.log()
    );
    assert!(stdout.contains("browser: Chromium"), "{stdout}");
    assert!(screenshots.join("endpoint-async.png").exists());
}

/// Runs `snippet` as a user would: curl lines in bash, Python with python3, Node.js with node,
/// with nothing in the environment but `PATH` and `GUST_API_KEY`.
fn run_snippet(lang: &str, snippet: &str, key: &str, dir: &Path) -> String {
    let (program, file) = match lang {
        "curl" => ("bash", "snippet.sh"),
        "python" => ("python3", "snippet.py"),
        "node" => ("node", "snippet.js"),
        other => panic!("unknown language {other}"),
    };
    let path = dir.join(file);
    std::fs::write(&path, snippet).unwrap();
    let out = Command::new(program)
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GUST_API_KEY", key)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "the {lang} snippet failed:\n{snippet}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn every_endpoint_snippet_runs_verbatim_and_prints_the_answer() {
    for program in ["bash", "curl", "python3", "node"] {
        require(program, "scripts/setup installs it");
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let (status, made) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/keys")
                .json(&json!({"name": "snippets"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();

    // Sync mode: one endpoint.
    let (status, endpoints) = host
        .send(host.request(Method::GET, "/v1/agents/probe/endpoints"))
        .await;
    assert_eq!(status, StatusCode::OK, "{endpoints}");
    let names: Vec<&str> = endpoints["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sync"]);
    for lang in ["curl", "python", "node"] {
        let snippet = endpoints["endpoints"][0]["snippets"][lang]
            .as_str()
            .unwrap();
        let printed = run_snippet(lang, snippet, &key, dir.path());
        let answer: Value = serde_json::from_str(printed.trim()).expect(&printed);
        assert_eq!(answer["marker"], "a", "{lang}: {printed}");
        assert_eq!(answer["input"], json!({"message": "Hello"}), "{lang}");
    }

    // The agents list counts those calls (and a failed one) since the host started.
    let (status, _, _) = host.call("probe", json!({"op": "fail"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (_, list) = host.send(host.request(Method::GET, "/v1/agents")).await;
    let line = &list["agents"][0];
    assert_eq!(
        (
            &line["calls"],
            &line["failures"],
            &line["mode"],
            &line["draft_pending"]
        ),
        (&json!(4), &json!(1), &json!("sync"), &json!(false)),
        "{list}"
    );
    assert_eq!(
        (
            &line["newest_version"],
            &line["runs_queued"],
            &line["runs_running"]
        ),
        (&json!(1), &json!(0), &json!(0)),
        "{list}"
    );

    // Async mode: submit (pushed) and poll.
    host.set_config(
        "probe",
        json!({"mode": "async", "push": {"url": "http://127.0.0.1:9/unused", "access_token": "t"}}),
    )
    .await;
    host.deploy("probe", None).await;
    let (_, endpoints) = host
        .send(host.request(Method::GET, "/v1/agents/probe/endpoints"))
        .await;
    assert_eq!(endpoints["mode"], "async", "{endpoints}");
    let by_name = |name: &str| {
        endpoints["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} endpoint: {endpoints}"))
            .clone()
    };
    assert_eq!(
        by_name("sync")["url"],
        format!("{}/v1/agents/probe/run", host.url)
    );
    for lang in ["curl", "python", "node"] {
        let push = by_name("async_push");
        let printed = run_snippet(
            lang,
            push["snippets"][lang].as_str().unwrap(),
            &key,
            dir.path(),
        );
        let accepted: Value = serde_json::from_str(printed.trim()).expect(&printed);
        assert_eq!(accepted["status"], "queued", "{lang}: {printed}");
        let id = accepted["run_id"].as_str().unwrap().to_owned();
        let h = &host;
        eventually(Duration::from_secs(20), "the pushed run ended", || {
            let id = id.clone();
            async move {
                let (_, run) = h
                    .send(h.request(Method::GET, &format!("/v1/agents/probe/runs/{id}")))
                    .await;
                run["status"] == "succeeded"
            }
        })
        .await;

        let poll = by_name("async_poll");
        let printed = run_snippet(
            lang,
            poll["snippets"][lang].as_str().unwrap(),
            &key,
            dir.path(),
        );
        let answer: Value = serde_json::from_str(printed.trim()).expect(&printed);
        // curl prints the run (its output inside), the others the output itself.
        let output = if lang == "curl" {
            assert_eq!(answer["status"], "succeeded", "{printed}");
            answer["output"]["json"].clone()
        } else {
            answer
        };
        assert_eq!(output["marker"], "a", "{lang}: {printed}");
    }
}

#[tokio::test]
async fn sessions_need_the_token_carry_safe_cookies_and_pass_the_origin_check() {
    let dir = tempfile::tempdir().unwrap();
    // The token lives in the data folder, so it can be rotated.
    let host = Host::spawn(dir.path().join("data"), &[], None).await;
    let token = std::fs::read_to_string(host.data_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();

    let (status, cookie) = sign_in(&host, "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(cookie.is_none());
    let (status, cookie) = sign_in(&host, &token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (cookie, full) = cookie.expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(full.contains(flag), "{full}");
    }
    assert!(!full.contains(&token), "the cookie is not the token");
    // Only a hash is kept: the id is nowhere in the data folder.
    let id = cookie.split_once('=').unwrap().1;
    for entry in walk(&host.data_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
            "{} holds the session id",
            entry.display()
        );
    }

    // Reading needs no Origin; the cookie stands for the admin.
    let response = with_cookie(&host, Method::GET, "/v1/agents", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("content-security-policy"));

    // Changing something with the cookie: only from this host's own origin.
    let change = |origin: Option<&str>| {
        let mut request =
            with_cookie(&host, Method::PUT, "/v1/agents/csrf/config", &cookie).json(&json!({}));
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.send()
    };
    assert_eq!(change(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    for other in [
        "http://evil.example".to_owned(),
        // Same name, other scheme: not this host's origin.
        host.url.replace("http://", "https://"),
        "null".to_owned(),
    ] {
        assert_eq!(
            change(Some(&other)).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{other}"
        );
    }
    let (_, agents) = host
        .send(
            host.http
                .get(format!("{}/v1/agents", host.url))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(
        agents["agents"],
        json!([]),
        "a refused change changed nothing"
    );
    assert_eq!(
        change(Some(&host.url)).await.unwrap().status(),
        StatusCode::OK
    );
    // A token is not a cookie: no Origin needed.
    let (status, _) = host
        .send(
            host.http
                .put(format!("{}/v1/agents/csrf/config", host.url))
                .bearer_auth(&token)
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Signing in from another origin is refused too (login CSRF).
    let response = host
        .http
        .post(format!("{}/console/session", host.url))
        .header(ORIGIN, "http://evil.example")
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // Sign-out ends the session.
    let response = with_cookie(&host, Method::DELETE, "/console/session", &cookie)
        .header(ORIGIN, &host.url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = with_cookie(&host, Method::GET, "/v1/agents", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Rotating the admin token ends every session.
    let (_, a) = sign_in(&host, &token).await;
    let (_, b) = sign_in(&host, &token).await;
    let (a, b) = (a.unwrap().0, b.unwrap().0);
    let response = with_cookie(&host, Method::POST, "/v1/admin/rotate-token", &a)
        .header(ORIGIN, &host.url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for cookie in [a, b] {
        let response = with_cookie(&host, Method::GET, "/v1/agents", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
