//! Queued runs over HTTP: submit, poll (with `?wait`), list, cancel, re-run, redeliver;
//! and the push test and secret rotation.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use gust_core::Error;
use gust_core::runs::{Submitted, payload_json, run_json, run_summary_json};
use gust_model::RunStatus;

use super::auth::{Admin, Invoker};
use super::error::ApiError;
use super::paths::{AgentName, AgentRun, Params};
use super::{AppState, body};

type Answer = Result<Response, ApiError>;

/// The longest `?wait` a poll may ask for.
const MAX_WAIT_S: u64 = 60;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

pub(crate) async fn submit(
    Invoker(agent): Invoker,
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request_body: Body,
) -> Answer {
    let lifecycle = &state.host.lifecycle;
    lifecycle.registry().wait_ready().await;
    // Fail fast, before reading a body for an agent that is not deployed.
    lifecycle.live(&agent)?;
    let idempotency_key = body::idempotency_key(&headers)?;
    let input = body::read(
        &state.body_budget,
        &headers,
        request_body,
        state.limits.input,
    )
    .await?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    // Read after the body: the run goes to what is live when it is accepted, not when its
    // upload began.
    let deployment = lifecycle.live(&agent)?;
    let submitted = state
        .host
        .runs
        .submit(&deployment, input.into(), content_type, idempotency_key)
        .await?;
    submitted_answer(&state, &agent, submitted).await
}

async fn submitted_answer(state: &AppState, agent: &str, submitted: Submitted) -> Answer {
    let poll_url = format!("{}/{}", state.runs_url(agent), submitted.id);
    let body = json!({"run_id": submitted.id, "status": "queued", "poll_url": poll_url});
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if !submitted.created {
        // The idempotency key named an earlier run: the original answer again, marked as a
        // replay (the run's status now is a poll away).
        body::mark_replayed(&mut response);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetParams {
    wait: Option<u64>,
}

pub(crate) async fn get(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
    Params(params): Params<GetParams>,
) -> Answer {
    let wait = match params.wait {
        Some(s) if s > MAX_WAIT_S => {
            return Err(
                Error::BadRequest(format!("`wait` is at most {MAX_WAIT_S} seconds")).into(),
            );
        }
        Some(s) => Some(Duration::from_secs(s)),
        None => None,
    };
    let run = state.host.runs.get(&agent, &id, wait).await?;
    Ok(Json(run_json(&run)).into_response())
}

/// The input a run was submitted with (a run's page shows it beside the output; a poll
/// leaves it out, as the submitter has it).
pub(crate) async fn input(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
) -> Answer {
    let (bytes, content_type) = state.host.runs.input(&agent, &id).await?;
    // In the shape of `output`, never as the submitted bytes: served as they came, an input
    // of type text/html would be a page on the console's origin.
    Ok(Json(json!({"run_id": id, "input": payload_json(&content_type, &bytes)})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) async fn list(
    Invoker(agent): Invoker,
    State(state): State<Arc<AppState>>,
    Params(params): Params<ListParams>,
) -> Answer {
    let status = match params.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            Error::BadRequest(format!(
                "`status` is one of queued, running, succeeded, failed, cancelled, expired; not `{s}`"
            ))
        })?),
        None => None,
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::BadRequest(format!("`limit` is between 1 and {MAX_LIMIT}")).into());
    }
    let cursor = params.cursor.filter(|c| !c.is_empty());
    let runs = state.host.runs.list(&agent, status, limit, cursor).await?;
    let next_cursor = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id.clone()))
        .flatten();
    let runs: Vec<Value> = runs.iter().map(run_summary_json).collect();
    Ok(Json(json!({"runs": runs, "next_cursor": next_cursor})).into_response())
}

pub(crate) async fn cancel(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
) -> Answer {
    let run = state.host.runs.cancel(&agent, &id).await?;
    Ok(Json(run_json(&run)).into_response())
}

pub(crate) async fn rerun(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
) -> Answer {
    state.host.lifecycle.registry().wait_ready().await;
    let submitted = state.host.runs.rerun(&agent, &id).await?;
    submitted_answer(&state, &agent, submitted).await
}

pub(crate) async fn redeliver(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
) -> Answer {
    let run = state.host.runs.redeliver(&agent, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(run_json(&run))).into_response())
}

pub(crate) async fn push_test(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    state.host.lifecycle.registry().wait_ready().await;
    let status = state.host.runs.push_test(&agent).await?;
    Ok(Json(json!({"status": status, "delivered": (200..300).contains(&status)})).into_response())
}

pub(crate) async fn rotate_secret(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let secret = state.host.secrets.rotate(&agent).await?;
    Ok(Json(json!({"push": {"secret": secret}})).into_response())
}
