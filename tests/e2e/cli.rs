//! The CLI, as a user types it: deploy a file, configure, call, list, roll back; errors are
//! one line and a non-zero exit.

use std::process::{Command, Output};

use crate::support::{Host, TOKEN};

fn gust(host: &Host, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(args)
        .env("GUST_URL", &host.url)
        .env("GUST_TOKEN", TOKEN)
        .output()
        .expect("running gust")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "gust failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Several `gust config --set` at once, on an agent that does not exist yet: each reads the
/// draft, sets its key and writes the draft back. Every key must be there afterwards; a
/// write made over a draft that changed since it was read would drop the keys written in
/// between.
#[tokio::test]
async fn config_commands_at_once_keep_each_others_keys() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let children: Vec<_> = (0..16)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_gust"))
                .args(["config", "busy", "--set", &format!("key{i}=value{i}")])
                .env("GUST_URL", &host.url)
                .env("GUST_TOKEN", TOKEN)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("running gust")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = ok(&gust(&host, &["config", "busy", "--json"]));
    let draft: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = draft["config"].as_object().unwrap();
    let mut missing: Vec<_> = (0..16)
        .filter(|i| keys.get(&format!("key{i}")) != Some(&serde_json::json!(format!("value{i}"))))
        .collect();
    missing.sort_unstable();
    assert!(missing.is_empty(), "keys lost: {missing:?} of {draft}");
}

#[tokio::test]
async fn deploy_config_run_and_rollback_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let h = &host;

    let out = ok(&gust(
        h,
        &[
            "config",
            "echo",
            "--set",
            "marker=cli",
            "--sync-timeout",
            "30",
        ],
    ));
    // Configuration values are masked for people (they hold API keys); --json shows them.
    assert!(
        out.contains("\"marker\": \"***\"") && out.contains("\"sync_timeout_s\": 30"),
        "{out}"
    );
    let out = ok(&gust(h, &["config", "echo", "--json"]));
    assert!(out.contains("\"marker\": \"cli\""), "{out}");
    let out = ok(&gust(h, &["deploy", "echo", gust_test_guests::ECHO]));
    assert!(out.contains("deployed echo version 1"), "{out}");
    assert!(
        out.contains(&format!("endpoint: {}/v1/agents/echo/run", host.url)),
        "{out}"
    );

    let out = ok(&gust(h, &["run", "echo", r#"{"say":"hi"}"#]));
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"input": {"say": "hi"}, "version": 1, "marker": "cli"})
    );

    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"from":"file"}"#).unwrap();
    let arg = format!("@{}", input.display());
    let out = ok(&gust(h, &["run", "echo", &arg]));
    assert!(out.contains(r#""from":"file""#), "{out}");

    ok(&gust(h, &["config", "echo", "--set", "marker=second"]));
    let out = ok(&gust(h, &["deploy", "echo"]));
    assert!(out.contains("deployment 2"), "{out}");
    let out = ok(&gust(h, &["agents"]));
    assert!(
        out.contains("echo") && out.contains("/v1/agents/echo/run"),
        "{out}"
    );
    let out = ok(&gust(h, &["agent", "echo"]));
    assert!(out.contains("deployment 2 = version 1"), "{out}");
    let out = ok(&gust(h, &["rollback", "echo"]));
    assert!(out.contains("rolled back echo to deployment 1"), "{out}");
    let out = ok(&gust(h, &["run", "echo", "{}"]));
    assert!(out.contains(r#""marker":"cli""#), "{out}");

    // Outbound and resource settings: hosts are added and taken off one by one.
    ok(&gust(
        h,
        &[
            "config",
            "echo",
            "--allow-host",
            "https://api.example.com",
            "--allow-host",
            "https://*.tools.example.com",
            "--outbound-timeout",
            "12",
            "--memory-mib",
            "64",
            "--max-instances",
            "3",
        ],
    ));
    let out = ok(&gust(
        h,
        &[
            "config",
            "echo",
            "--disallow-host",
            "https://api.example.com",
            "--allow-host",
            "https://*.tools.example.com",
        ],
    ));
    let draft: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        draft["allowed_hosts"],
        serde_json::json!(["https://*.tools.example.com"])
    );
    assert_eq!(
        (
            &draft["outbound_timeout_s"],
            &draft["memory_mib"],
            &draft["max_instances"]
        ),
        (
            &serde_json::json!(12),
            &serde_json::json!(64),
            &serde_json::json!(3)
        )
    );
    let out = ok(&gust(h, &["config", "echo", "--max-instances", "default"]));
    assert!(out.contains("\"max_instances\": null"), "{out}");
    let failed = gust(h, &["config", "echo", "--allow-host", "ftp://x"]);
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr)
            .contains("bad_request: `allowed_hosts` entry `ftp://x`"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    // Errors: one clear line and a non-zero exit.
    let failed = gust(h, &["run", "nobody", "{}"]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(
        stderr.trim(),
        "gust: not_found: no agent named `nobody` is deployed"
    );
    let failed = gust(h, &["upload", "echo", "/no/such/file.wasm"]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("reading /no/such/file.wasm"));
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
    let failed = gust(h, &["deploy", "echo", bad.to_str().unwrap()]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("[core_module]"));
    let wrong_token = Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(["agents", "--url", &host.url, "--token", "nope"])
        .output()
        .unwrap();
    assert!(!wrong_token.status.success());
    assert!(String::from_utf8_lossy(&wrong_token.stderr).contains("unauthorized"));
    for command in [
        "serve", "deploy", "upload", "rollback", "agents", "agent", "config", "run",
    ] {
        let help = gust(h, &[command, "--help"]);
        assert!(
            help.status.success() && !help.stdout.is_empty(),
            "{command} --help"
        );
    }
}

// Multi-threaded: the CLI runs block this thread while the receiver must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_and_push_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    let receiver = crate::support::receiver::Receiver::start(vec![]).await;
    let h = &host;

    let configured = gust(
        h,
        &[
            "config",
            "probe",
            "--mode",
            "async",
            "--push-url",
            &receiver.url,
            "--push-token",
            "tok",
        ],
    );
    let out = ok(&configured);
    assert!(
        out.contains("\"access_token\": \"***\"") && out.contains("\"mode\": \"async\""),
        "{out}"
    );
    let stderr = String::from_utf8_lossy(&configured.stderr);
    assert!(
        stderr.contains("whsec_"),
        "the new signing secret is shown once: {stderr}"
    );
    let out = ok(&gust(h, &["deploy", "probe", gust_test_guests::PROBE_A]));
    assert!(
        out.contains("async_push: ") && out.contains("async_poll: "),
        "{out}"
    );
    // Changing something else keeps the write-only token.
    ok(&gust(h, &["config", "probe", "--set", "k=v"]));

    let id = ok(&gust(
        h,
        &[
            "run",
            "--async",
            "probe",
            r#"{"op":"steps","n":2,"ms":100}"#,
        ],
    ));
    let id = id.trim();
    assert!(id.starts_with("run_"), "{id}");
    let out = ok(&gust(h, &["runs", "get", "probe", id, "--wait", "--json"]));
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["progress"]["fraction"], 1.0);
    let out = ok(&gust(h, &["runs", "list", "probe"]));
    assert!(out.contains(id) && out.contains("succeeded"), "{out}");
    let r = &receiver;
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the push",
        || async move { !r.received().is_empty() },
    )
    .await;
    assert_eq!(
        receiver.received()[0].header("authorization"),
        "Bearer tok",
        "the kept token is used"
    );

    let out = ok(&gust(h, &["runs", "redeliver", "probe", id]));
    assert!(out.contains(id), "{out}");
    let out = ok(&gust(h, &["push", "test", "probe"]));
    assert!(out.contains("answered 200"), "{out}");
    let out = ok(&gust(h, &["push", "rotate-secret", "probe"]));
    assert!(out.trim().starts_with("whsec_"), "{out}");
    let out = ok(&gust(h, &["runs", "rerun", "probe", id]));
    assert!(out.trim().starts_with("run_") && out.trim() != id, "{out}");

    // A run that fails: `runs get --wait` prints it and exits non-zero with the reason.
    let failing = ok(&gust(h, &["run", "--async", "probe", r#"{"op":"fail"}"#]));
    let waited = gust(h, &["runs", "get", "probe", failing.trim(), "--wait"]);
    assert!(!waited.status.success());
    assert!(
        String::from_utf8_lossy(&waited.stderr).contains("failed: failed: probe failed on purpose"),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let cancelled = gust(h, &["runs", "cancel", "probe", failing.trim()]);
    assert!(!cancelled.status.success());
    assert!(String::from_utf8_lossy(&cancelled.stderr).contains("conflict: "));

    // Pages of runs: the first page's cursor leads to the next one.
    let page = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["runs", "list", "probe", "--limit", "1", "--json"];
        args.extend(extra);
        serde_json::from_str(&ok(&gust(h, &args))).unwrap()
    };
    let first = page(&[]);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("more than one run")
        .to_owned();
    let second = page(&["--cursor", &cursor]);
    assert_ne!(first["runs"][0]["run_id"], second["runs"][0]["run_id"]);

    let out = ok(&gust(h, &["config", "probe", "--no-push"]));
    assert!(
        out.contains("\"mode\": \"sync\"") && out.contains("\"push\": null"),
        "{out}"
    );
    for command in [
        &["runs", "get", "--help"][..],
        &["runs", "list", "--help"],
        &["push", "test", "--help"],
    ] {
        assert!(gust(h, command).status.success());
    }
}

/// `gust deploy --dry-run` prints the server's deploy preview; `gust endpoint` the endpoints
/// and the same code the console shows.
#[tokio::test]
async fn the_deploy_preview_and_the_endpoints_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let h = &host;
    // A dry run with a file uploads nothing: no agent is made, no version added.
    let out = ok(&gust(
        h,
        &["deploy", "echo", gust_test_guests::ECHO, "--dry-run"],
    ));
    assert!(out.contains("(none) → echo, made by the upload"), "{out}");
    let absent = gust(h, &["agents", "show", "echo"]);
    assert_eq!(absent.status.code(), Some(4), "the dry run made the agent");
    ok(&gust(h, &["deploy", "echo", gust_test_guests::ECHO]));
    let out = ok(&gust(
        h,
        &["deploy", "echo", gust_test_guests::PROBE_A, "--dry-run"],
    ));
    assert!(
        out.contains("version      1 (") && out.contains("→ a new upload ("),
        "{out}"
    );
    // A file that is not a component is refused as its upload would be, uploading nothing.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let refused = gust(h, &["deploy", "echo", junk.to_str().unwrap(), "--dry-run"]);
    assert_eq!(refused.status.code(), Some(2));
    // The file already uploaded is that version: nothing would change.
    let out = ok(&gust(
        h,
        &["deploy", "echo", gust_test_guests::ECHO, "--dry-run"],
    ));
    assert!(out.contains("nothing would change"), "{out}");
    ok(&gust(
        h,
        &[
            "config",
            "echo",
            "--set",
            "MODEL=secret-model",
            "--mode",
            "async",
            "--push-url",
            "https://app.example/hooks",
            "--push-token",
            "tok-1",
        ],
    ));
    let out = ok(&gust(h, &["deploy", "echo", "--dry-run"]));
    for line in [
        "mode         sync → async",
        "push.url     - → https://app.example/hooks",
        "config       + MODEL (value not shown)",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    assert!(
        !out.contains("secret-model") && !out.contains("tok-1"),
        "{out}"
    );
    // The preview's own answer shows the names of configuration values, not the values.
    let masked = |json: String| {
        assert!(
            json.contains("MODEL") && !json.contains("secret-model") && !json.contains("tok-1"),
            "{json}"
        );
    };
    masked(ok(&gust(h, &["deploy", "echo", "--dry-run", "--json"])));
    // Nothing was deployed, nor uploaded.
    let agent: serde_json::Value =
        serde_json::from_str(&ok(&gust(h, &["agents", "show", "echo", "--json"]))).unwrap();
    assert_eq!(agent["live"]["deployment"], 1, "{agent}");
    assert_eq!(
        agent["versions"].as_array().map(Vec::len),
        Some(1),
        "{agent}"
    );
    assert_eq!(agent["draft_pending"], true, "{agent}");

    let out = ok(&gust(h, &["endpoint", "echo"]));
    assert!(
        out.contains(&format!("{}/v1/agents/echo/run", host.url)),
        "{out}"
    );
    assert!(!out.contains("Async push"), "async is not live yet: {out}");
    ok(&gust(h, &["deploy", "echo", "--yes"]));
    let out = ok(&gust(h, &["endpoint", "echo", "--lang", "python"]));
    for part in [
        "# Sync:",
        "# Async push:",
        "# Async poll:",
        "urllib.request",
        "/v1/agents/echo/runs",
    ] {
        assert!(out.contains(part), "{part:?} in {out}");
    }
    let out = ok(&gust(h, &["deploy", "echo", "--dry-run"]));
    assert!(out.contains("nothing would change"), "{out}");
    // Now the live deployment holds them too.
    masked(ok(&gust(h, &["deploy", "echo", "--dry-run", "--json"])));
    let bad = gust(h, &["endpoint", "echo", "--lang", "cobol"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("curl"),
        "the choices are named"
    );
}
