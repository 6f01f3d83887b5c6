//! `GET /v1/agents/{agent}/endpoints`: each endpoint of the live deployment with the code a
//! user copies to call it — curl, Python (standard library only) and Node.js (built-in
//! `fetch`, Node 18 and later). The console and `gust endpoint` show these same strings, and
//! a test runs them verbatim, so they must work as printed: the only thing a user supplies is
//! the `GUST_API_KEY` environment variable.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use gust_model::DeliveryMode;

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use super::openapi::{AgentPath, TAG_AGENTS};
use super::paths::AgentName;

/// The input the snippets send; agents take any JSON, and this reads as an example.
const EXAMPLE_INPUT: &str = r#"{"message": "Hello"}"#;

/// The live deployment's endpoints, each with code to copy.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EndpointList {
    agent: String,
    deployment: u32,
    version: u32,
    mode: DeliveryMode,
    /// The environment variable the snippets read the key from.
    key_variable: &'static str,
    endpoints: Vec<Endpoint>,
}

/// One endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Endpoint {
    /// `sync`, `async_push` or `async_poll`.
    name: &'static str,
    title: &'static str,
    description: &'static str,
    method: &'static str,
    url: String,
    snippets: Snippets,
}

/// Code that calls an endpoint, as printed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Snippets {
    /// bash with curl.
    curl: String,
    /// Python 3, standard library only.
    python: String,
    /// Node.js 18 or later.
    node: String,
}

/// The live deployment's endpoints with curl, Python and Node.js code to call each.
#[utoipa::path(get, path = "/v1/agents/{agent}/endpoints", tag = TAG_AGENTS, operation_id = "endpoints",
    params(AgentPath), security(("admin" = [])),
    responses((status = 200, description = "The endpoints.", body = EndpointList)))]
pub(crate) async fn endpoints(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Result<Response, ApiError> {
    let live = state.host.lifecycle.live(&agent)?;
    let mode = live.mode();
    Ok(Json(EndpointList {
        endpoints: endpoint_list(&state, &agent, mode),
        agent,
        deployment: live.number,
        version: live.version(),
        mode,
        key_variable: "GUST_API_KEY",
    })
    .into_response())
}

/// Sync calls always; in async mode also submitting a run (its result pushed to the user's
/// application) and polling one.
pub(crate) fn endpoint_list(state: &AppState, agent: &str, mode: DeliveryMode) -> Vec<Endpoint> {
    let sync = state.sync_url(agent);
    let runs = state.runs_url(agent);
    let mut list = vec![endpoint(
        ("sync", "Sync"),
        "Calls the agent and answers with its output.",
        ("POST", &sync),
        [curl_call(&sync), python_call(&sync), node_call(&sync)],
    )];
    if mode == DeliveryMode::Async {
        list.push(endpoint(
            ("async_push", "Async push"),
            "Queues a run and answers 202 with its id at once; the result is pushed, signed, to your application.",
            ("POST", &runs),
            [curl_call(&runs), python_call(&runs), node_call(&runs)],
        ));
        list.push(endpoint(
            ("async_poll", "Async poll"),
            "Queues a run, then polls it until it ends and prints its output.",
            ("GET", &format!("{runs}/{{run_id}}")),
            [curl_poll(&runs), python_poll(&runs), node_poll(&runs)],
        ));
    }
    list
}

/// One endpoint as the API shows it; `snippets` in the order curl, Python, Node.js.
fn endpoint(
    (name, title): (&'static str, &'static str),
    description: &'static str,
    (method, url): (&'static str, &str),
    [curl, python, node]: [String; 3],
) -> Endpoint {
    Endpoint {
        name,
        title,
        description,
        method,
        url: url.to_owned(),
        snippets: Snippets { curl, python, node },
    }
}

fn curl_call(url: &str) -> String {
    format!(
        r#"curl -sS -X POST "{url}" \
  -H "Authorization: Bearer $GUST_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{EXAMPLE_INPUT}'
"#
    )
}

fn curl_poll(runs: &str) -> String {
    format!(
        r#"POLL_URL=$(curl -sS -X POST "{runs}" \
  -H "Authorization: Bearer $GUST_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{EXAMPLE_INPUT}' | sed -n 's/.*"poll_url":"\([^"]*\)".*/\1/p')
# Waits up to 60 s for the run to end; repeat it while the status is queued or running.
curl -sS "$POLL_URL?wait=60" -H "Authorization: Bearer $GUST_API_KEY"
"#
    )
}

const PYTHON_PRELUDE: &str = r#"import json
import os
import urllib.request


def call(method, url, body=None):
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Bearer " + os.environ["GUST_API_KEY"],
            "Content-Type": "application/json",
        },
        method=method,
    )
    with urllib.request.urlopen(request) as response:
        return response.read().decode()

"#;

fn python_call(url: &str) -> String {
    format!("{PYTHON_PRELUDE}\nprint(call(\"POST\", \"{url}\", {EXAMPLE_INPUT}))\n")
}

fn python_poll(runs: &str) -> String {
    format!(
        r#"{PYTHON_PRELUDE}
run = json.loads(call("POST", "{runs}", {EXAMPLE_INPUT}))
poll_url = run["poll_url"]
# Each poll waits up to 60 s for the run to end.
while run["status"] in ("queued", "running"):
    run = json.loads(call("GET", poll_url + "?wait=60"))
if run["status"] == "succeeded":
    print(json.dumps(run["output"].get("json", run["output"])))
else:
    print(json.dumps(run))
"#
    )
}

const NODE_PRELUDE: &str = r#"const headers = {
  Authorization: `Bearer ${process.env.GUST_API_KEY}`,
  "Content-Type": "application/json",
};
"#;

fn node_call(url: &str) -> String {
    format!(
        r#"{NODE_PRELUDE}
fetch("{url}", {{
  method: "POST",
  headers,
  body: JSON.stringify({EXAMPLE_INPUT}),
}})
  .then((response) => response.text())
  .then((text) => console.log(text));
"#
    )
}

fn node_poll(runs: &str) -> String {
    format!(
        r#"{NODE_PRELUDE}
async function main() {{
  const submitted = await fetch("{runs}", {{
    method: "POST",
    headers,
    body: JSON.stringify({EXAMPLE_INPUT}),
  }});
  let run = await submitted.json();
  const pollUrl = run.poll_url;
  // Each poll waits up to 60 s for the run to end.
  while (run.status === "queued" || run.status === "running") {{
    run = await (await fetch(`${{pollUrl}}?wait=60`, {{ headers }})).json();
  }}
  const output = run.status === "succeeded" ? run.output : null;
  console.log(JSON.stringify(output ? (output.json ?? output) : run));
}}

main();
"#
    )
}
