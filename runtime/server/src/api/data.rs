//! The data plane: the sync endpoint. Its path is the hot path of the product: auth from
//! memory, one registry load, one fresh instance — no database, no global lock. The call
//! itself is [`Calls::call`](gust_core::calls::Calls::call), the path every call takes.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use gust_core::Error;
use gust_core::calls::{Admit, CallKind, CallRequest, Input, Target};
use gust_core::runs::new_run_id;

use super::auth::Invoker;
use super::error::ApiError;
use super::{AppState, body};

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
    let run_id: Arc<str> = Arc::from(new_run_id());
    let call = CallRequest {
        run_id: Arc::clone(&run_id),
        kind: CallKind::Sync,
        attempt: 1,
        sink: None,
    };
    let input = read_input(&state, headers, request_body);
    let called = state
        .host
        .calls
        .call(Target::Live(agent), input, call, Admit::Wait)
        .await;

    let mut response = match called.outcome {
        Ok(output) => {
            // A guest could answer a content type that is not a valid header value; the
            // bytes still go out, labelled as opaque.
            let content_type = HeaderValue::from_str(&output.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            ([(CONTENT_TYPE, content_type)], output.bytes).into_response()
        }
        Err(e) => ApiError(e).into_response(),
    };
    // No deployment: a 404, which names no run.
    let Some(deployment) = called.deployment else {
        return response;
    };
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&run_id) {
        headers.insert(RUN_ID, id);
    }
    headers.insert(AGENT_VERSION, HeaderValue::from(deployment.version()));
    headers.insert(DEPLOYMENT, HeaderValue::from(deployment.number));
    response
}

/// The body and its content type. Takes the headers by value so that they are dropped
/// here, before the call: a call may wait for minutes, and nothing after this needs them.
async fn read_input(
    state: &AppState,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Input, Error> {
    let bytes: Bytes = body::read(
        &state.body_budget,
        &headers,
        request_body,
        state.limits.input,
    )
    .await?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(JSON)
        .to_owned();
    Ok(Input {
        bytes: bytes.into(),
        content_type,
    })
}
