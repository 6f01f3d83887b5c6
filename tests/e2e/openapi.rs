//! The OpenAPI document, checked by schemathesis against a live host: no 5xx, every answer
//! conforms to the document (status, content type, headers, body schema — also each event of
//! the Server-Sent Event streams), schema-violating requests are refused, every operation
//! answers 2xx at least once, and the chain agent → version → deploy → run → poll is walked
//! through the document's links. The hooks that seed what a schema cannot generate are in
//! `tests/openapi/hooks.py`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::runs::submit;
use crate::support::componentize::repo;
use crate::support::receiver::Receiver;
use crate::support::{Host, TOKEN};

/// Operations each fuzzed in a run of its own (below): rotation and deletion would turn the
/// rest into conforming 401s and 404s; and schemathesis leaves the document's own address
/// out of a run over the whole document.
const ON_THEIR_OWN: [&str; 3] = ["rotate_admin_token", "delete_agent", "openapi"];

/// One answer as the hooks recorded it.
struct Answer {
    phase: String,
    op: String,
    path: String,
    status: u16,
    body: Value,
}

/// Runs `st run` against `host` with the hooks and `seeds`; returns what was answered.
/// Awaited, not blocking: the push receiver runs on this test's runtime.
async fn schemathesis(host: &Host, dir: &Path, seeds: &Value, selection: &[&str]) -> Vec<Answer> {
    let st = repo().join(".tools/schemathesis/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run scripts/setup",
        st.display()
    );
    let record = dir.join("answers.jsonl");
    let _ = std::fs::remove_file(&record);
    let out = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(repo().join("tests/openapi/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/v1/openapi.json", host.url))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        // Reproducible: one seed, one worker, a bounded number of examples.
        .args(["--seed", "1", "--workers", "1", "--max-examples", "20"])
        .args(["--checks", "all"])
        // Valid by the schema yet refused by the host is expected where the schema cannot
        // say enough: this host's limits (`memory_mib` within `--max-memory-mib`), a push
        // target required by async mode, bytes that must be a component, an input the agent
        // itself refuses (422).
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args([
            "--request-timeout",
            "30",
            "--no-color",
            "--output-truncate",
            "true",
        ])
        .args(selection)
        .env("PYTHONPATH", repo().join("tests/openapi"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("GUST_ST_COMPONENT", gust_test_guests::PROBE_A)
        .env("GUST_ST_SEEDS", seeds.to_string())
        .env("GUST_ST_RECORD", &record)
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}\nthe host's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        host.log()
    );
    std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Answer {
                phase: v["phase"].as_str().unwrap_or_default().to_owned(),
                op: v["op"].as_str().unwrap_or_default().to_owned(),
                path: v["path"].as_str().unwrap_or_default().to_owned(),
                status: v["status"].as_u64().unwrap_or_default() as u16,
                body: v["body"].clone(),
            }
        })
        .collect()
}

/// The document's operation ids.
async fn operations(host: &Host) -> BTreeSet<String> {
    let doc: Value = reqwest::get(format!("{}/v1/openapi.json", host.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn schemathesis_finds_every_answer_true_to_the_document() {
    let receiver = Receiver::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;

    // `seeded` pushes its runs' results (so push tests and redeliveries succeed); `scratch`
    // takes the fuzzed configurations, deploys and rollbacks; `versions` has a version that
    // is not live, for a delete.
    for agent in ["seeded", "scratch", "versions"] {
        host.upload_file(agent, gust_test_guests::PROBE_A).await;
    }
    assert_eq!(
        host.upload_file("versions", gust_test_guests::PROBE_B)
            .await,
        2
    );
    host.set_config(
        "seeded",
        json!({"mode": "async", "async_timeout_s": 3600,
               "push": {"url": receiver.url, "access_token": "receiver-token"}}),
    )
    .await;
    for agent in ["seeded", "scratch", "versions"] {
        host.deploy(agent, Some(1)).await;
    }
    // A second deployment, so a rollback has somewhere to go.
    host.deploy("scratch", Some(1)).await;
    let done = submit(&host, "seeded", json!({"hello": "world"})).await;
    let (status, run) = host
        .send(host.request(
            Method::GET,
            &format!("/v1/agents/seeded/runs/{done}?wait=30"),
        ))
        .await;
    assert_eq!(
        (status, run["status"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{run}"
    );
    // Runs that wait long enough to be cancelled.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(submit(&host, "seeded", json!({"op": "sleep", "ms": 600_000})).await);
    }
    let mut keys = Vec::new();
    for n in 0..3 {
        let (status, key) = host
            .send(
                host.request(Method::POST, "/v1/agents/seeded/keys")
                    .json(&json!({"name": format!("seed {n}")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        keys.push(key["id"].clone());
    }
    let seeds = json!({
        "agents": {"seeded": "seeded", "scratch": "scratch", "versions": "versions"},
        "done_run": done,
        "waiting_runs": waiting,
        "keys": keys,
        "push_url": receiver.url,
    });

    let mut selection = Vec::new();
    for op in ON_THEIR_OWN {
        selection.extend(["--exclude-operation-id", op]);
    }
    let answers = schemathesis(&host, dir.path(), &seeds, &selection).await;

    // Every operation answered 2xx at least once.
    let mut statuses: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for a in &answers {
        statuses.entry(&a.op).or_default().push(a.status);
    }
    let fuzzed: Vec<String> = operations(&host)
        .await
        .into_iter()
        .filter(|op| !ON_THEIR_OWN.contains(&op.as_str()))
        .collect();
    assert!(fuzzed.len() >= 30, "{fuzzed:?}");
    let without_2xx: Vec<_> = fuzzed
        .iter()
        .filter(|op| {
            !statuses
                .get(op.as_str())
                .is_some_and(|s| s.iter().any(|s| (200..300).contains(s)))
        })
        .map(|op| format!("{op}: {:?}", statuses.get(op.as_str())))
        .collect();
    assert!(
        without_2xx.is_empty(),
        "operations that never answered 2xx: {without_2xx:#?}"
    );

    // The stateful phase walked the document's links: a version it uploaded was deployed,
    // a run submitted to that deployment, and that run polled, each with the ids the
    // previous answer carried.
    let stateful = answers
        .iter()
        .filter(|a| a.phase == "stateful" && (200..300).contains(&a.status));
    let (mut uploaded, mut deployed) = (HashSet::new(), HashSet::new());
    let mut submitted: HashMap<String, String> = HashMap::new();
    let mut chains = Vec::new();
    for a in stateful {
        let b = &a.body;
        match a.op.as_str() {
            "upload" => {
                uploaded.insert((b["agent"].to_string(), b["version"].to_string()));
            }
            "deploy" if uploaded.contains(&(b["agent"].to_string(), b["version"].to_string())) => {
                deployed.insert(b["agent"].as_str().unwrap_or_default().to_owned());
            }
            "submit_run" => {
                let agent = a.path.split('/').nth(3).unwrap_or_default();
                if deployed.contains(agent) {
                    submitted.insert(
                        b["run_id"].as_str().unwrap_or_default().to_owned(),
                        agent.to_owned(),
                    );
                }
            }
            "get_run" => {
                if let Some(agent) = b["run_id"].as_str().and_then(|id| submitted.get(id)) {
                    chains.push(format!("{agent}: {}", b["run_id"]));
                }
            }
            _ => {}
        }
    }
    assert!(
        !chains.is_empty(),
        "no stateful chain upload → deploy → submit → poll (uploaded {uploaded:?}, deployed {deployed:?}, submitted {submitted:?})"
    );
}

/// Token rotation, agent deletion and the document itself, each fuzzed alone against a host
/// of its own: the first call succeeds, and every later one conforms too (404 for the
/// deleted agent, 401 for the old token).
#[tokio::test]
async fn rotation_deletion_and_the_document_conform_on_their_own() {
    for op in ON_THEIR_OWN {
        let dir = tempfile::tempdir().unwrap();
        // The token in the data folder, not in the environment: only such a token rotates.
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("admin-token"), TOKEN).unwrap();
        let host = Host::spawn(data, &[], None).await;
        host.upload_file("solo", gust_test_guests::PROBE_A).await;
        host.deploy("solo", None).await;
        let seeds = json!({
            "agents": {"seeded": "solo", "scratch": "solo", "versions": "solo"},
            "done_run": "", "waiting_runs": [], "keys": [], "push_url": "",
        });
        let answers = schemathesis(
            &host,
            dir.path(),
            &seeds,
            // No stateful phase: the links lead to operations outside the selection.
            &[
                "--include-operation-id",
                op,
                "--phases",
                "examples,coverage,fuzzing",
            ],
        )
        .await;
        let statuses: Vec<u16> = answers
            .iter()
            .filter(|a| a.op == op)
            .map(|a| a.status)
            .collect();
        assert!(
            statuses.iter().any(|s| (200..300).contains(s)),
            "{op}: {statuses:?}"
        );
        // And it did what it says.
        let (status, _) = host
            .send(host.request(Method::GET, "/v1/agents/solo"))
            .await;
        let expected = match op {
            "delete_agent" => StatusCode::NOT_FOUND,
            "rotate_admin_token" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::OK,
        };
        assert_eq!(status, expected, "{op}");
    }
}

/// The document is served without auth, is OpenAPI 3.1, names both security schemes, and
/// lists routes the router serves: every documented operation is routed (not the router's
/// "no such route" or "method not allowed").
#[tokio::test]
async fn the_document_lists_what_the_router_serves() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let response = reqwest::get(format!("{}/v1/openapi.json", host.url))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["admin"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
            // Every answer's schema is a type, not `{}` (except the agent's own output).
            for (status, answer) in op["responses"].as_object().unwrap() {
                for (media, content) in answer["content"].as_object().into_iter().flatten() {
                    let schema = &content["schema"];
                    assert!(
                        media == "*/*"
                            || schema.get("$ref").is_some()
                            || schema.get("type").is_some(),
                        "{method} {path} {status} {media}: {schema}"
                    );
                }
            }
            let concrete = path
                .replace("{agent}", "no-such-agent")
                .replace("{version}", "1")
                .replace("{run_id}", "run_00000000000000000000000000000000")
                .replace("{key_id}", "key_0000000000000000");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = host
                .request(method.clone(), &concrete)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let routed = !(status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND
                    && body["error"]["message"] == "no such route"));
            assert!(
                routed,
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    // The other direction holds by construction: the router is built from the same
    // annotated handlers as the document (`api_routes` in runtime/server/src/api/mod.rs).
    assert!(documented.len() >= 33, "{documented:?}");
}
