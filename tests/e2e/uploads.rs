//! Uploads: a valid component is stored once; everything else gets a diagnostic with a
//! stable code, and leaves no version behind.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::runs::{finished, submit};
use crate::support::{Host, error_kind};

fn codes(body: &Value) -> Vec<(String, String)> {
    error_kind(body, "invalid_component");
    body["error"]["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .map(|d| {
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
            (
                d["code"].as_str().unwrap().to_owned(),
                d["item"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

/// An agent-shaped component with `memory_pages` of initial memory and any extra imports:
/// the shape needed to reach the checks that come after the export check.
fn run_component(memory_pages: u32, imports: &str) -> Vec<u8> {
    crate::support::agent_component(memory_pages, imports, "")
}

#[tokio::test]
async fn bad_uploads_get_diagnostics_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;

    // Pseudo-random bytes from a fixed seed, so a failure reproduces.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let real = std::fs::read(gust_test_guests::PROBE_A).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("empty body", Vec::new(), "not_a_component", ""),
        ("random bytes", random, "not_a_component", ""),
        (
            "core module",
            wat("(module (func (export \"run\")))"),
            "core_module",
            "",
        ),
        (
            "truncated component",
            real[..real.len() / 2].to_vec(),
            "not_a_component",
            "",
        ),
        (
            "component without run",
            wat("(component)"),
            "missing_export",
            "run",
        ),
        (
            "run with another type",
            wat(r#"(component
                (core module $m (func (export "f") (result i32) i32.const 0))
                (core instance $i (instantiate $m))
                (func $run (result u32) (canon lift (core func $i "f")))
                (export "run" (func $run)))"#),
            "export_type_mismatch",
            "run",
        ),
        (
            "unknown interface",
            wat(
                r#"(component (import "example:nope/thing@1.0.0" (instance (export "hello" (func)))))"#,
            ),
            "unknown_import",
            "example:nope/thing@1.0.0",
        ),
    ];
    let cases = cases.into_iter().chain([
        (
            "memory larger than the host allows",
            // 5000 pages of 64 KiB: 312 MiB initial memory, over the 256 MiB limit.
            run_component(5000, ""),
            "limit_exceeded",
            "",
        ),
        (
            "an interface a provided package does not have",
            run_component(
                1,
                r#"(import "wasi:io/nope@0.2.0" (instance (export "x" (func))))"#,
            ),
            "unknown_import",
            "wasi:io/nope@0.2.0",
        ),
    ]);
    for (what, bytes, code, item) in cases {
        let (status, body) = host.upload("bad-uploads", bytes).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        let found = codes(&body);
        assert!(
            found.iter().any(|(c, i)| c == code && i == item),
            "{what}: expected [{code}] {item}, got {found:?}: {body}"
        );
    }
    // The hand-written `run` really has the world's type: with a small memory it is accepted.
    let (status, body) = host.upload("wat-agent", run_component(1, "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // No failed upload created the agent, let alone a version.
    let (status, body) = host
        .send(host.request(Method::GET, "/v1/agents/bad-uploads"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let stored = std::fs::read_dir(host.data_dir.join("components"))
        .unwrap()
        .count();
    assert_eq!(stored, 1, "only the accepted component is stored");
    let cache = std::fs::read_dir(host.data_dir.join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let cached = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(
        cached, 1,
        "only the accepted component has a cached artifact"
    );
}

#[tokio::test]
async fn same_bytes_are_one_version_and_failures_do_not_add_versions() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let bytes = std::fs::read(gust_test_guests::PROBE_A).unwrap();

    let (status, first) = host.upload("probe", bytes.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["agent"], "probe");
    assert_eq!(first["version"], 1);
    assert_eq!(first["size"], bytes.len());
    assert!(first["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));

    let (status, again) = host.upload("probe", bytes).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["version"], 1);
    assert_eq!(again["digest"], first["digest"]);

    let (status, _) = host.upload("probe", b"not wasm".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, agent) = host
        .send(host.request(Method::GET, "/v1/agents/probe"))
        .await;
    assert_eq!(agent["versions"].as_array().unwrap().len(), 1, "{agent}");

    // The read-only view shows what the component imports and exports, as WIT.
    let (status, view) = host
        .send(host.request(Method::GET, "/v1/agents/probe/versions/1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let wit = view["wit"].as_str().unwrap();
    assert!(wit.contains("export run: func("), "{wit}");
    assert!(wit.contains("import gust:agent/host@0.1.1"), "{wit}");
    let (status, body) = host
        .send(host.request(Method::GET, "/v1/agents/probe/versions/7"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_kind(&body, "not_found");
}

/// The host serves gust:agent 0.1.1; a guest built against 0.1.0, before `emit`, still
/// passes the check, and its host calls (`log`, `config`, `progress`) still work, sync and
/// queued.
#[tokio::test]
async fn a_guest_built_against_the_0_1_0_world_still_uploads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("old", gust_test_guests::AGENT_0_1_0).await;
    let (_, view) = host
        .send(host.request(Method::GET, "/v1/agents/old/versions/1"))
        .await;
    let wit = view["wit"].as_str().unwrap();
    assert!(wit.contains("import gust:agent/host@0.1.0"), "{wit}");
    assert!(!wit.contains("@0.1.1"), "{wit}");
    host.set_config("old", json!({"config": {"marker": "kept"}}))
        .await;
    host.deploy("old", None).await;

    let (status, _, body) = host.call("old", json!({"hi": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"world": "gust:agent@0.1.0", "input": {"hi": 1}, "marker": "kept"})
    );
    let id = submit(&host, "old", json!({"hi": 2})).await;
    let run = finished(&host, "old", &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["json"]["input"], json!({"hi": 2}));
    assert_eq!(run["progress"], json!({"fraction": 1.0, "message": "done"}));
    assert_eq!(
        run["logs"][0]["message"],
        format!("0.1.0 guest ran {id}"),
        "{run}"
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(
        dir.path().join("data"),
        &["--max-upload-mib", "1", "--max-input-mib", "1"],
    )
    .await;
    let (status, body) = host.upload("big", vec![0u8; (1 << 20) + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    error_kind(&body, "payload_too_large");

    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let (status, body) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/run")
                .body(vec![b' '; (1 << 20) + 1]),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // Far past the limit (a file of 40 MiB): the client still reads the 413, not a
    // connection closed while it was sending. The host closed it once it had thrown away
    // 16 MiB, and most clients (curl, reqwest, the CLI) then reported the reset.
    let far = host
        .request(Method::POST, "/v1/agents/probe/run")
        .body(vec![b' '; 40 << 20])
        .send()
        .await
        .map(|response| response.status());
    assert!(matches!(far, Ok(StatusCode::PAYLOAD_TOO_LARGE)), "{far:?}");
    // A client that waits to be invited to send (`Expect: 100-continue`, as curl does for
    // large bodies) is answered 413 at once, not invited to send what will be thrown away.
    let mut stream = tokio::net::TcpStream::connect(host.url.strip_prefix("http://").unwrap())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/agents/probe/run HTTP/1.1\r\nhost: gust\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        crate::support::TOKEN,
        40 << 20
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stream, &mut answer),
    )
    .await
    .expect("an answer without the body")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// The upload check instantiates under the agent's own memory limit: a component whose
/// initial memory is over the default is refused for an agent with the default, and
/// accepted for one configured for more.
#[tokio::test]
async fn the_upload_check_uses_the_agents_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    // 5000 pages of 64 KiB: 312 MiB of initial memory.
    let (status, body) = host.upload("small", run_component(5000, "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        codes(&body).iter().any(|(c, _)| c == "limit_exceeded"),
        "{body}"
    );
    host.set_config("roomy", serde_json::json!({"memory_mib": 512}))
        .await;
    let (status, body) = host.upload("roomy", run_component(5000, "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// `memory_mib` bounds what all of a call's instances hold together: a component of several
/// core instances, each owning a memory within the limit, is refused when together they are
/// over it.
#[tokio::test]
async fn the_memory_limit_counts_every_instance_of_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    // Three more core instances of 100 MiB each (1600 pages): 300 MiB with the default
    // limit of 256 MiB; each alone fits.
    let big = (0..3)
        .map(|i| {
            format!("(core module $big{i} (memory 1600)) (core instance (instantiate $big{i}))")
        })
        .collect::<String>();
    let component = crate::support::agent_component(1, "", &big);
    let (status, body) = host.upload("many-memories", component.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let found = codes(&body);
    assert!(found.iter().any(|(c, _)| c == "limit_exceeded"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("300 MiB"),
        "{body}"
    );
    // With room for all three, it is accepted.
    host.set_config("roomy", serde_json::json!({"memory_mib": 512}))
        .await;
    let (status, body) = host.upload("roomy", component).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
