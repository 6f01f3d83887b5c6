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
    assert!(
        out.contains("\"marker\": \"cli\"") && out.contains("\"sync_timeout_s\": 30"),
        "{out}"
    );
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
