//! The data plane: the sync endpoint. Its path is the hot path of the product: auth from
//! memory, one registry load, one fresh instance — no database, no global lock.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::auth::Invoker;
use super::{AppState, body};
use crate::bindings::Mode;
use crate::error::Error;
use crate::invoke::{self, Call};
use crate::runs;

const JSON: &str = "application/json";

// Header names as constants: inserting with a `&str` validates the name on every call.
/// The run id of the call.
const RUN_ID: HeaderName = HeaderName::from_static("gust-run-id");
/// The version number of the component that answered.
const AGENT_VERSION: HeaderName = HeaderName::from_static("gust-agent-version");
/// The deployment that answered (changes with every deploy and rollback).
const DEPLOYMENT: HeaderName = HeaderName::from_static("gust-deployment");

pub(crate) async fn run(
    Invoker(agent): Invoker,
    State(state): State<Arc<AppState>>,
    // The whole request, not `HeaderMap` + `Body`: extracting a `HeaderMap` clones it.
    request: Request,
) -> Response {
    let (Parts { headers, .. }, request_body) = request.into_parts();
    // A call that arrives while the host is still loading deployments at start waits for
    // the load instead of being told the agent does not exist.
    state.agents.registry().wait_ready().await;
    let Some(deployment) = state.agents.registry().get(&agent) else {
        return Error::NotFound(format!("no agent named `{agent}` is deployed")).into_response();
    };
    let run_id: Arc<str> = Arc::from(runs::new_run_id());
    let outcome = async {
        let (input, content_type) = read_input(headers, request_body, state.limits.input).await?;
        let call = Call {
            run_id: Arc::clone(&run_id),
            input: input.into(),
            content_type,
            mode: Mode::Sync,
            attempt: 1,
            timeout: Some(deployment.sync_timeout),
            recorder: None,
        };

        state.agents.runtime().stats().called();
        let _admitted = state.agents.admit_call(&deployment).await?;
        invoke::invoke(state.agents.runtime(), &deployment, call).await
    }
    .await;

    let mut response = match outcome {
        Ok(output) => {
            // A guest could answer a content type that is not a valid header value; the
            // bytes still go out, labelled as opaque.
            let content_type = HeaderValue::from_str(&output.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            ([(CONTENT_TYPE, content_type)], output.bytes).into_response()
        }
        Err(e) => e.into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&run_id) {
        headers.insert(RUN_ID, id);
    }
    headers.insert(AGENT_VERSION, HeaderValue::from(deployment.version));
    headers.insert(DEPLOYMENT, HeaderValue::from(deployment.deployment));
    response
}

/// The body and its content type. Takes the headers by value so that they are dropped
/// here, before the call: a call may wait for minutes, and nothing after this needs them.
async fn read_input(
    headers: HeaderMap,
    request_body: Body,
    limit: usize,
) -> Result<(Bytes, String), Error> {
    let input = body::read(&headers, request_body, limit).await?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(JSON)
        .to_owned();
    Ok((input, content_type))
}
