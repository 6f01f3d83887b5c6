//! `GET /v1/agents/{agent}/logs`: the guest lines of the agent's recent sync calls, from the
//! ring `gust-core` keeps (`logs.rs`); with `?follow=1`, as Server-Sent Events that go on
//! with each new line. Each event's id is the line's sequence number, so a client that
//! reconnects with `Last-Event-ID` gets the lines it missed that are still kept.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use gust_core::Error;
use gust_core::logs::{KEPT, LogLine};

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use super::openapi::{AgentPath, EVENT_STREAM, LogEventStream, TAG_AGENTS};
use super::paths::{AgentName, Params};

const DEFAULT_LINES: usize = 100;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogParams {
    /// Stream new lines as they come (`1` or `true`).
    #[param(pattern = "^(0|1|true|false)$")]
    follow: Option<String>,
    /// The most kept lines answered first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only lines after this sequence number.
    after: Option<u64>,
}

/// The kept lines.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Logs<'a> {
    agent: String,
    /// Oldest first.
    lines: Vec<&'a LogLine>,
}

/// The guest lines of the agent's recent sync calls; with `follow=1`, as Server-Sent Events
/// (`log` events whose ids are the lines' `seq`, `missed` when lines were dropped).
#[utoipa::path(get, path = "/v1/agents/{agent}/logs", tag = TAG_AGENTS, operation_id = "logs",
    params(AgentPath, LogParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume a follow after this line.")),
    security(("admin" = [])),
    responses((status = 200, description = "The kept lines, or (with `follow=1`) a stream of them.",
        content((Logs<'static> = "application/json"), (LogEventStream = EVENT_STREAM)))))]
pub(crate) async fn logs(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    Params(params): Params<LogParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // An unknown agent is a 404, not an empty ring made for it.
    state.host.lifecycle.get(&agent).await?;
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // A client resuming wants every line it missed that is still kept, not the newest 100.
    let resuming = resumed.is_some() || params.after.is_some();
    let limit = params
        .limit
        .unwrap_or(if resuming { KEPT } else { DEFAULT_LINES });
    if !(1..=KEPT).contains(&limit) {
        return Err(Error::BadRequest(format!("`limit` is between 1 and {KEPT}")).into());
    }
    let follow = match params.follow.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!("`follow` is 1 or 0, not `{other}`")).into());
        }
    };
    let after = resumed.or(params.after).unwrap_or(0);
    let (kept, live) = state.host.calls.logs().read(&agent, after, limit);
    if !follow {
        let lines = kept.iter().map(|l| &**l).collect();
        return Ok(Json(Logs { agent, lines }).into_response());
    }
    let last = kept.last().map_or(after, |l| l.seq);
    // Lines after `after` that the ring no longer has: say how many.
    let gap = kept
        .first()
        .map_or(0, |l| l.seq.saturating_sub(after.saturating_add(1)));
    let missed = (resuming && gap > 0).then(|| {
        Ok(Event::default()
            .event("missed")
            .data(json!({"lines": gap}).to_string()))
    });
    let first = stream::iter(
        missed
            .into_iter()
            .chain(kept.into_iter().map(|line| Ok(event(&line)))),
    );
    let next = stream::unfold((live, last), |(mut live, last)| async move {
        loop {
            match live.recv().await {
                // Already sent from the ring.
                Ok(line) if line.seq <= last => {}
                Ok(line) => {
                    let seq = line.seq;
                    return Some((Ok::<_, Infallible>(event(&line)), (live, seq)));
                }
                Err(RecvError::Lagged(missed)) => {
                    let note = Event::default()
                        .event("missed")
                        .data(json!({"lines": missed}).to_string());
                    return Some((Ok(note), (live, last)));
                }
                // The agent was deleted.
                Err(RecvError::Closed) => return None,
            }
        }
    });
    // Followers end when the host shuts down, so they do not hold the shutdown for its
    // whole grace period.
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        first
            .chain(next)
            .take_until(state.stopping.clone().cancelled_owned()),
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn event(line: &LogLine) -> Event {
    Event::default()
        .id(line.seq.to_string())
        .event("log")
        .data(serde_json::to_string(line).unwrap_or_default())
}
