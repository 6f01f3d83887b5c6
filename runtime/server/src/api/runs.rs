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
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use gust_core::Error;
use gust_core::runs::{Payload, RunSummary, RunView, Submitted};
use gust_model::RunStatus;

use super::auth::{Admin, Invoker};
use super::error::ApiError;
use super::openapi::{AgentPath, AgentRunPath, TAG_PUSH, TAG_RUNS};
use super::paths::{AgentName, AgentRun, Params};
use super::{AppState, body};

type Answer = Result<Response, ApiError>;

/// The longest `?wait` a poll may ask for.
const MAX_WAIT_S: u64 = 60;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

/// A run accepted: durable before this answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accepted {
    run_id: String,
    /// `queued`.
    status: RunStatus,
    /// Where to poll it.
    poll_url: String,
}

/// Queues a run of the live deployment; 202 once it is committed. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/agents/{agent}/runs", tag = TAG_RUNS, operation_id = "submit_run",
    params(AgentPath, ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        description = "A repeat with the same key answers the first run again (within 24 h).")),
    security(("admin" = []), ("api_key" = [])),
    request_body(content = serde_json::Value, description = "The agent's input: any JSON, or any bytes with their `Content-Type`.",
        content(("application/json"), ("*/*"))),
    responses((status = 202, description = "Queued.", body = Accepted, links(
        ("get_run" = (operation_id = "get_run", parameters(("agent" = "$request.path.agent"), ("run_id" = "$response.body#/run_id")))),
        ("run_events" = (operation_id = "run_events", parameters(("agent" = "$request.path.agent"), ("run_id" = "$response.body#/run_id")))),
        ("cancel_run" = (operation_id = "cancel_run", parameters(("agent" = "$request.path.agent"), ("run_id" = "$response.body#/run_id")))))),
        (status = 409, description = "The `Idempotency-Key` was used for another input.", body = super::error::ErrorBody)))]
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
        .submit(
            &deployment,
            input.into(),
            content_type,
            idempotency_key,
            super::trace_of(&headers),
        )
        .await?;
    submitted_answer(&state, &agent, submitted).await
}

async fn submitted_answer(state: &AppState, agent: &str, submitted: Submitted) -> Answer {
    let poll_url = format!("{}/{}", state.runs_url(agent), submitted.id);
    let body = Accepted {
        run_id: submitted.id,
        status: RunStatus::Queued,
        poll_url,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if !submitted.created {
        // The idempotency key named an earlier run: the original answer again, marked as a
        // replay (the run's status now is a poll away).
        body::mark_replayed(&mut response);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetParams {
    /// Seconds to wait for the run to end before answering (at most 60).
    #[param(maximum = 60)]
    wait: Option<u64>,
}

/// A run: its status, and once it ends its output or error.
#[utoipa::path(get, path = "/v1/agents/{agent}/runs/{run_id}", tag = TAG_RUNS, operation_id = "get_run",
    params(AgentRunPath, GetParams), security(("admin" = []), ("api_key" = [])),
    responses((status = 200, description = "The run.", body = RunView)))]
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
    // A host that is stopping starts no more runs, so a wait may never see its run end:
    // the poll is answered with the run as it stands, and the stop is not held for it.
    let run = tokio::select! {
        run = state.host.runs.get(&agent, &id, wait) => run?,
        () = state.stopping.cancelled() => state.host.runs.get(&agent, &id, None).await?,
    };
    Ok(Json(RunView::new(&run)).into_response())
}

/// The input a run was submitted with (a run's page shows it beside the output; a poll
/// leaves it out, as the submitter has it).
#[utoipa::path(get, path = "/v1/agents/{agent}/runs/{run_id}/input", tag = TAG_RUNS, operation_id = "run_input",
    params(AgentRunPath), security(("admin" = []), ("api_key" = [])),
    responses((status = 200, description = "The input.", body = RunInput)))]
pub(crate) async fn input(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
) -> Answer {
    let (bytes, content_type) = state.host.runs.input(&agent, &id).await?;
    // In the shape of `output`, never as the submitted bytes: served as they came, an input
    // of type text/html would be a page on the console's origin.
    Ok(Json(RunInput {
        run_id: id,
        input: Payload::new(&content_type, &bytes),
    })
    .into_response())
}

/// A run's input.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunInput {
    run_id: String,
    input: Payload,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only runs with this status.
    #[param(value_type = Option<RunStatus>)]
    status: Option<String>,
    /// Runs per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunList {
    /// Newest first.
    runs: Vec<RunSummary>,
    /// The next page's `cursor`, when there may be one.
    next_cursor: Option<String>,
}

/// The agent's runs, newest first.
#[utoipa::path(get, path = "/v1/agents/{agent}/runs", tag = TAG_RUNS, operation_id = "list_runs",
    params(AgentPath, ListParams), security(("admin" = []), ("api_key" = [])),
    responses((status = 200, description = "A page of runs.", body = RunList)))]
pub(crate) async fn list(
    Invoker(agent): Invoker,
    State(state): State<Arc<AppState>>,
    Params(params): Params<ListParams>,
) -> Answer {
    let status = match params.status.as_deref() {
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
    if let Some(cursor) = cursor.as_deref().filter(|c| !super::paths::is_run_id(c)) {
        return Err(Error::BadRequest(format!(
            "`cursor` is the `next_cursor` of a page before (a run id), not `{cursor}`"
        ))
        .into());
    }
    let runs = state.host.runs.list(&agent, status, limit, cursor).await?;
    let next_cursor = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id.clone()))
        .flatten();
    let runs = runs.iter().map(RunSummary::new).collect();
    Ok(Json(RunList { runs, next_cursor }).into_response())
}

/// Cancels a run that has not ended (a running one is stopped).
#[utoipa::path(post, path = "/v1/agents/{agent}/runs/{run_id}/cancel", tag = TAG_RUNS, operation_id = "cancel_run",
    params(AgentRunPath), security(("admin" = []), ("api_key" = [])),
    responses((status = 200, description = "The run, cancelled.", body = RunView),
        (status = 409, description = "The run has already ended.", body = super::error::ErrorBody)))]
pub(crate) async fn cancel(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
) -> Answer {
    let run = state.host.runs.cancel(&agent, &id).await?;
    Ok(Json(RunView::new(&run)).into_response())
}

/// Queues a new run with the same input, on what is live now.
#[utoipa::path(post, path = "/v1/agents/{agent}/runs/{run_id}/rerun", tag = TAG_RUNS, operation_id = "rerun",
    params(AgentRunPath), security(("admin" = []), ("api_key" = [])),
    responses((status = 202, description = "The new run, queued.", body = Accepted)))]
pub(crate) async fn rerun(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
    headers: HeaderMap,
) -> Answer {
    state.host.lifecycle.registry().wait_ready().await;
    let submitted = state
        .host
        .runs
        .rerun(&agent, &id, super::trace_of(&headers))
        .await?;
    submitted_answer(&state, &agent, submitted).await
}

/// Pushes an ended run's event again (same `webhook-id`).
#[utoipa::path(post, path = "/v1/agents/{agent}/runs/{run_id}/redeliver", tag = TAG_PUSH, operation_id = "redeliver",
    params(AgentRunPath), security(("admin" = [])),
    responses((status = 202, description = "Queued for delivery.", body = RunView),
        (status = 409, description = "The run has no push event.", body = super::error::ErrorBody)))]
pub(crate) async fn redeliver(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
) -> Answer {
    let run = state.host.runs.redeliver(&agent, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(RunView::new(&run))).into_response())
}

/// A push test's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PushTested {
    /// The receiver's HTTP status; `null` when it could not be reached.
    status: Option<u16>,
    /// Whether it answered 2xx.
    delivered: bool,
    /// Why the receiver could not be reached (connection refused, timed out, …).
    error: Option<String>,
}

/// Sends a signed `push.test` event to the live deployment's push URL and says how the receiver answered.
#[utoipa::path(post, path = "/v1/agents/{agent}/push/test", tag = TAG_PUSH, operation_id = "push_test",
    params(AgentPath), security(("admin" = [])),
    responses((status = 200, description = "How the receiver answered, or why it could not be reached.", body = PushTested),
        (status = 409, description = "The live deployment does not push.", body = super::error::ErrorBody)))]
pub(crate) async fn push_test(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    state.host.lifecycle.registry().wait_ready().await;
    let tested = match state.host.runs.push_test(&agent).await? {
        Ok(status) => PushTested {
            status: Some(status),
            delivered: (200..300).contains(&status),
            error: None,
        },
        Err(error) => PushTested {
            status: None,
            delivered: false,
            error: Some(error),
        },
    };
    Ok(Json(tested).into_response())
}

/// A new push signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotatedSecret {
    push: NewSecret,
}

/// The secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewSecret {
    /// `whsec_…`.
    secret: String,
}

/// A new signing secret at once; the old one keeps signing beside it for 24 hours.
#[utoipa::path(post, path = "/v1/agents/{agent}/push/rotate-secret", tag = TAG_PUSH, operation_id = "rotate_secret",
    params(AgentPath), security(("admin" = [])),
    responses((status = 200, description = "The new secret, shown once.", body = RotatedSecret)))]
pub(crate) async fn rotate_secret(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let secret = state.host.secrets.rotate(&agent).await?;
    Ok(Json(RotatedSecret {
        push: NewSecret { secret },
    })
    .into_response())
}
