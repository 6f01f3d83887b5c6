//! `gust new`, `gust build`, `gust deploy`, `gust run`, as a new user types them, in each
//! language: from an empty folder and an empty toolchain cache to an answer.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::{Host, TOKEN};

/// Runs `gust` in `dir` as a user would, with the toolchain cache in `cache`.
fn gust(dir: &Path, cache: &Path, host: &Host, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gust"))
        .args(args)
        .current_dir(dir)
        .env("GUST_URL", &host.url)
        .env("GUST_TOKEN", TOKEN)
        .env("GUST_CACHE_DIR", cache)
        // Rust projects: keep the compiled dependencies between test runs (the first run
        // builds them cold, as a new user's would).
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-rust"),
        )
        .output()
        .expect("running gust")
}

fn ok(output: Output) -> (String, String) {
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "gust failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn failed(output: Output) -> String {
    assert!(
        !output.status.success(),
        "gust should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

async fn round_trip(language: &str, toolchain: Option<&str>) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let host = Host::start(&work.path().join("host")).await;
    let agent = format!("hello-{language}");
    let project = work.path().join(&agent);

    let (out, _) = ok(gust(
        work.path(),
        &cache,
        &host,
        &["new", &agent, "--lang", language],
    ));
    assert!(out.contains(&format!("created {agent}/")), "{out}");
    assert!(out.contains("  gust deploy\n"), "{out}");

    let (out, err) = ok(gust(&project, &cache, &host, &["build"]));
    let component = format!("build/{agent}.wasm");
    assert_eq!(out, format!("{component}\n"), "only the path on stdout");
    assert!(project.join(&component).is_file());
    match toolchain {
        Some(tool) => {
            assert!(
                err.contains(&format!("{tool} is not installed; installing it into")),
                "the install is announced: {err}"
            );
            assert!(err.contains(&format!("gust: installed {tool}")), "{err}");
        }
        None => assert!(!err.contains("installing"), "{err}"),
    }

    // In the project folder, `gust deploy` takes the agent and component from gust.toml;
    // the component was just built, so it is not built again.
    let (out, err) = ok(gust(&project, &cache, &host, &["deploy"]));
    assert!(
        out.contains(&format!("deployed {agent} version 1")),
        "{out}"
    );
    assert!(err.contains("not rebuilding"), "{err}");
    assert!(
        err.contains("version      (nothing live) → 1"),
        "the change is shown before it goes live: {err}"
    );
    let (out, _) = ok(gust(
        &project,
        &cache,
        &host,
        &["run", &agent, r#"{"name": "Ada"}"#],
    ));
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer, json!({"greeting": "Hello, Ada!", "version": 1}));

    let err = failed(gust(&project, &cache, &host, &["run", &agent, "{}"]));
    assert_eq!(err, "gust: invalid_input: `name` is missing\n");

    // Configuration reaches the agent at the next deploy; queued runs work the same way.
    ok(gust(
        &project,
        &cache,
        &host,
        &["config", &agent, "--set", "GREETING=Hi"],
    ));
    ok(gust(&project, &cache, &host, &["deploy", &agent]));
    let (id, _) = ok(gust(
        &project,
        &cache,
        &host,
        &["run", "--async", &agent, r#"{"name": "Ada"}"#],
    ));
    let (out, _) = ok(gust(
        &project,
        &cache,
        &host,
        &["runs", "get", &agent, id.trim(), "--wait", "--json"],
    ));
    let run: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["json"]["greeting"], "Hi, Ada!", "{run}");

    if language == "rust" {
        // A source newer than the component: `gust deploy` builds it again, uploads the new
        // version and deploys it.
        let lib = project.join("src/lib.rs");
        let source = std::fs::read_to_string(&lib).unwrap();
        std::fs::write(
            &lib,
            source.replace("\"{greeting}, {name}!\"", "\"{greeting}, {name}!!\""),
        )
        .unwrap();
        let (out, err) = ok(gust(&project, &cache, &host, &["deploy", "--yes"]));
        assert!(err.contains("gust: building"), "{err}");
        assert!(
            out.contains(&format!("deployed {agent} version 2")),
            "{out}"
        );
        let (out, _) = ok(gust(
            &project,
            &cache,
            &host,
            &["run", &agent, r#"{"name": "Ada"}"#],
        ));
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap()["greeting"],
            "Hi, Ada!!"
        );
        // Nothing changed since: nothing is deployed.
        let (out, _) = ok(gust(&project, &cache, &host, &["deploy"]));
        assert!(out.contains("nothing to deploy"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_agent_builds_deploys_and_runs() {
    round_trip("python", Some("componentize-py 0.25.1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_javascript_agent_builds_deploys_and_runs() {
    round_trip("js", Some("componentize-js 0.23.0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_agent_builds_deploys_and_runs() {
    round_trip("rust", None).await;
}

#[tokio::test]
async fn project_commands_refuse_what_they_cannot_do() {
    let work = tempfile::tempdir().unwrap();
    let host = Host::start(&work.path().join("host")).await;
    // The repository's toolchains, rather than a second download.
    let cache = work.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(crate::support::componentize::toolchains().root()).unwrap();
    std::os::unix::fs::symlink(
        crate::support::componentize::toolchains().root(),
        cache.join("toolchains"),
    )
    .unwrap();

    let err = failed(gust(work.path(), &cache, &host, &["build"]));
    assert!(err.contains("no gust.toml in"), "{err}");
    assert!(
        err.contains("gust new <agent> --lang rust|python|js"),
        "{err}"
    );

    let err = failed(gust(
        work.path(),
        &cache,
        &host,
        &["new", "Hello_World", "--lang", "js"],
    ));
    assert!(err.contains("not a valid agent name"), "{err}");
    let err = failed(gust(
        work.path(),
        &cache,
        &host,
        &["new", "x", "--lang", "cobol"],
    ));
    assert!(err.contains("cobol"), "{err}");

    ok(gust(
        work.path(),
        &cache,
        &host,
        &["new", "twice", "--lang", "python"],
    ));
    let err = failed(gust(
        work.path(),
        &cache,
        &host,
        &["new", "twice", "--lang", "js"],
    ));
    assert!(err.contains("already exists"), "{err}");

    // A syntax error in the agent fails the build with the tool's own message, and leaves
    // no component behind.
    let project = work.path().join("twice");
    std::fs::write(project.join("app.py"), "import gust\n\ndef run(:\n").unwrap();
    std::fs::write(
        project.join("gust.toml"),
        "name = \"twice\"\nlanguage = \"python\"\nentry = \"app.py\"\n",
    )
    .unwrap();
    let output = gust(&project, &cache, &host, &["build"]);
    let err = failed(output);
    assert!(
        err.contains("SyntaxError") || err.contains("invalid syntax"),
        "{err}"
    );
    assert!(!project.join("build/twice.wasm").exists());
}
