//! The reference flow end to end: the triage example against a mock OpenAI-compatible model
//! and a mock customer tool, both started here on loopback.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use reqwest::StatusCode as Status;
use serde_json::{Value, json};

use crate::runs::{finished, submit};
use crate::support::componentize::component;
use crate::support::{Host, error_kind};

/// The mock model: checks the key and the model name, records the prompt, answers a
/// classification in the chat-completions shape.
async fn model() -> (String, Arc<Mutex<Vec<Value>>>) {
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&prompts);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, Json(request): Json<Value>| {
            let seen = Arc::clone(&seen);
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer test-model-key") {
                    return (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad key"})));
                }
                assert_eq!(request["model"], "tiny-model");
                seen.lock().unwrap().push(request.clone());
                let ticket = request["messages"][1]["content"].as_str().unwrap_or("").to_lowercase();
                let (category, urgency) = if ticket.contains("charged") { ("billing", "high") } else { ("other", "low") };
                let content = json!({"category": category, "urgency": urgency, "summary": "a customer wrote in"}).to_string();
                (StatusCode::OK, Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})))
            }
        }),
    );
    (serve(app).await, prompts)
}

/// The mock customer tool.
async fn tool() -> String {
    let app = axum::Router::new().route(
        "/customers/{id}",
        axum::routing::get(|Path(id): Path<String>| async move {
            match id.as_str() {
                "c-42" => (
                    StatusCode::OK,
                    Json(json!({"id": "c-42", "name": "Ada", "tier": "enterprise"})),
                ),
                _ => (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error": "no such customer"})),
                ),
            }
        }),
    );
    serve(app).await
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_triage_flow_calls_its_model_and_tool_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    let (model, prompts) = model().await;
    let tool = tool().await;
    let flows = [
        ("triage", gust_test_guests::TRIAGE.to_owned()),
        ("python-triage", component("examples/python-triage").await),
        ("js-triage", component("examples/js-triage").await),
    ];
    for (agent, file) in &flows {
        host.upload_file(agent, file).await;
        triage_flow(&host, agent, &model, &tool, &prompts).await;
    }
}

/// One flow, sync and queued, then its typed errors.
async fn triage_flow(
    host: &Host,
    agent: &str,
    model: &str,
    tool: &str,
    prompts: &Mutex<Vec<Value>>,
) {
    let settings = |allowed: Vec<&str>, key: &str| {
        json!({
            "allowed_hosts": allowed,
            "config": {
                "MODEL_BASE_URL": format!("{model}/v1"),
                "MODEL": "tiny-model",
                "MODEL_API_KEY": key,
                "TOOLS_BASE_URL": tool,
            },
        })
    };
    host.set_config(agent, settings(vec![model, tool], "test-model-key"))
        .await;
    host.deploy(agent, None).await;

    let ticket = json!({"customer_id": "c-42", "subject": "Charged twice", "body": "My card was billed two times."});
    let (status, _, answer) = host.call(agent, ticket.clone()).await;
    assert_eq!(status, Status::OK, "{agent}: {answer}");
    assert_eq!(answer["category"], "billing");
    assert_eq!(answer["urgency"], "high");
    assert_eq!(answer["priority"], "p1");
    assert_eq!(answer["queue"], "billing-urgent");
    assert_eq!(answer["summary"], "a customer wrote in");
    assert_eq!(
        answer["customer"],
        json!({"id": "c-42", "name": "Ada", "tier": "enterprise"})
    );
    let prompt = prompts.lock().unwrap().last().unwrap()["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.contains("Charged twice"), "{agent}: {prompt}");

    // Queued: progress reached the end, and both requests are on the run.
    let id = submit(host, agent, ticket).await;
    let run = finished(host, agent, &id).await;
    assert_eq!(run["status"], "succeeded", "{agent}: {run}");
    assert_eq!(
        run["progress"],
        json!({"fraction": 1.0, "message": "routed"})
    );
    let calls: Vec<(String, String, u64)> = run["outbound"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["method"].as_str().unwrap().into(),
                o["host"].as_str().unwrap().into(),
                o["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("POST".into(), model.to_owned(), 200),
            ("GET".into(), tool.to_owned(), 200)
        ],
        "{agent}"
    );
    assert!(
        run["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"] == "classified as billing (high)"),
        "{agent}: {run}"
    );

    // Typed errors: an unknown customer is the caller's problem; a model that refuses the
    // key, or cannot be reached, is a failure of the flow.
    let (status, _, body) = host
        .call(agent, json!({"customer_id": "nobody", "subject": "hi"}))
        .await;
    assert_eq!(status, Status::UNPROCESSABLE_ENTITY, "{agent}: {body}");
    assert!(error_kind(&body, "invalid_input").contains("nobody"));
    let (status, _, body) = host.call(agent, json!({"subject": "no customer"})).await;
    assert_eq!(status, Status::UNPROCESSABLE_ENTITY, "{agent}: {body}");

    let failure = |config: Value| async move {
        host.set_config(agent, config).await;
        host.deploy(agent, None).await;
        let (status, _, body) = host
            .call(
                agent,
                json!({"customer_id": "c-42", "subject": "Charged twice"}),
            )
            .await;
        assert_eq!(status, Status::BAD_GATEWAY, "{agent}: {body}");
        error_kind(&body, "failed")
    };
    let message = failure(settings(vec![model, tool], "wrong-key")).await;
    assert_eq!(message, "the model answered HTTP 401");
    let message = failure(settings(vec![tool], "test-model-key")).await;
    assert!(
        message.starts_with("the model could not be reached: ") && message.contains("denied"),
        "{agent}: {body}"
    );
}
