//! `GET /v1/agents/{agent}/runs/{run_id}/events`: a run as Server-Sent Events — its status,
//! progress, log lines, and at the end its output (or error) and delivery — ending when the
//! run is final (with an `end` event, so a browser's EventSource does not reconnect).
//!
//! Log events have ids `log:N` (the Nth line of the attempt; a retried run numbers its new
//! attempt's lines from 1 again). A client that reconnects with
//! `Last-Event-ID: log:N` gets the status and the latest progress again, then the lines after
//! N that are kept: those of the attempt running now (kept in memory by `gust-core`'s
//! `RunEvents`), or, once the run has ended, the ones stored with it. Earlier progress
//! reports are not kept, only the latest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use gust_core::runs::{RunEvent, RunEvents, run_json};
use gust_model::LogLine;

use super::AppState;
use super::auth::Invoker;
use super::error::ApiError;
use super::paths::AgentRun;

/// How often the stored run is read again while nothing arrives (a missed wake-up costs at
/// most this).
const RECHECK: Duration = Duration::from_secs(2);

/// The run as Server-Sent Events, ending when it is final.
#[utoipa::path(get, path = "/v1/agents/{agent}/runs/{run_id}/events", tag = super::openapi::TAG_RUNS, operation_id = "run_events",
    params(super::openapi::AgentRunPath,
        ("Last-Event-ID" = Option<String>, Header, description = "`log:N`: resume after the Nth log line of the attempt.")),
    security(("admin" = []), ("api_key" = [])),
    responses((status = 200, description = "`status`, `progress`, `log`, `output`, `error`, `delivery` and a final `end` event.",
        content((super::openapi::RunEventStream = super::openapi::EVENT_STREAM)))))]
pub(crate) async fn events(
    _: Invoker,
    State(state): State<Arc<AppState>>,
    AgentRun(agent, id): AgentRun,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let runs = Arc::clone(&state.host.runs);
    // An unknown run is a 404 before any channel is made for it.
    runs.get(&agent, &id, None).await?;
    // Subscribed before the store is read again: nothing falls between the two.
    let (live, running_lines) = runs.events().subscribe(&id);
    let follower = Follower {
        events: Arc::clone(runs.events()),
        id: id.clone(),
    };
    let run = match runs.get(&agent, &id, None).await {
        Ok(run) => run_json(&run),
        Err(e) => {
            // The receiver goes before the follower, so the channel goes with them.
            drop(live);
            drop(follower);
            return Err(e.into());
        }
    };
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("log:"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let mut first = vec![status_event(&run)];
    first.extend(progress_event(&run));
    let stream = Streaming {
        agent,
        runs,
        live,
        seen,
        done: false,
        follower,
    };
    let stream = if is_final(&run) {
        first.extend(stored_lines(&run, seen));
        first.extend(final_events(&run));
        Box::pin(stream::iter(first.into_iter().map(Ok))) as EventStream
    } else {
        let mut seen_now = seen;
        for (index, line) in running_lines.iter().enumerate() {
            if index + 1 > seen_now {
                first.push(log_event(index + 1, &line_json(line)));
                seen_now = index + 1;
            }
        }
        let stream = Streaming {
            seen: seen_now,
            ..stream
        };
        let rest = stream::unfold(stream, next_events);
        Box::pin(futures::StreamExt::chain(
            stream::iter(first.into_iter().map(Ok)),
            futures::StreamExt::flat_map(rest, |batch| stream::iter(batch.into_iter().map(Ok))),
        )) as EventStream
    };
    // Followers end when the host shuts down, so they do not hold the shutdown for its
    // whole grace period.
    let stream = futures::StreamExt::take_until(stream, state.stopping.clone().cancelled_owned());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// Drops the run's event channel when the last follower of an ended run leaves.
struct Follower {
    events: Arc<RunEvents>,
    id: String,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.events.unsubscribe(&self.id);
    }
}

struct Streaming {
    agent: String,
    runs: Arc<gust_core::runs::Runs>,
    live: tokio::sync::broadcast::Receiver<RunEvent>,
    /// Log lines sent so far.
    seen: usize,
    done: bool,
    follower: Follower,
}

/// The next events of a run still going: what its attempt reports, and at its end the rest
/// from the store.
async fn next_events(mut s: Streaming) -> Option<(Vec<Event>, Streaming)> {
    if s.done {
        return None;
    }
    let event = tokio::time::timeout(RECHECK, s.live.recv()).await;
    let batch = match event {
        Ok(Ok(RunEvent::Started)) => {
            // A new attempt numbers its lines from 1 again.
            s.seen = 0;
            vec![
                Event::default()
                    .event("status")
                    .data(json!({"status": "running"}).to_string()),
            ]
        }
        Ok(Ok(RunEvent::Progress { fraction, message })) => {
            vec![
                Event::default()
                    .event("progress")
                    .data(json!({"fraction": fraction, "message": message}).to_string()),
            ]
        }
        Ok(Ok(RunEvent::Log { index, line })) => {
            if index <= s.seen {
                Vec::new()
            } else {
                s.seen = index;
                vec![log_event(index, &line_json(&line))]
            }
        }
        // The end was stored, or events were missed, or it has been quiet: read the store.
        Ok(Ok(RunEvent::Stored) | Err(RecvError::Lagged(_))) | Err(_) => {
            let Ok(record) = s.runs.get(&s.agent, &s.follower.id, None).await else {
                s.done = true;
                return Some((vec![end_event("gone")], s));
            };
            let run = run_json(&record);
            if is_final(&run) {
                let mut batch = vec![status_event(&run)];
                batch.extend(progress_event(&run));
                batch.extend(stored_lines(&run, s.seen));
                batch.extend(final_events(&run));
                s.done = true;
                batch
            } else {
                // Lines missed while lagging are still kept beside the running attempt.
                let lines = s.runs.events().lines(&s.follower.id);
                let mut batch = Vec::new();
                for (index, line) in lines.iter().enumerate().skip(s.seen) {
                    batch.push(log_event(index + 1, &line_json(line)));
                }
                s.seen = s.seen.max(lines.len());
                batch
            }
        }
        Ok(Err(RecvError::Closed)) => {
            s.done = true;
            vec![end_event("gone")]
        }
    };
    Some((batch, s))
}

fn is_final(run: &Value) -> bool {
    !matches!(run["status"].as_str(), Some("queued" | "running"))
}

fn status_event(run: &Value) -> Event {
    Event::default().event("status").data(
        json!({
            "status": run["status"],
            "attempts": run["attempts"],
            "started_at": run["started_at"],
            "finished_at": run["finished_at"],
        })
        .to_string(),
    )
}

fn progress_event(run: &Value) -> Option<Event> {
    (!run["progress"].is_null()).then(|| {
        Event::default()
            .event("progress")
            .data(run["progress"].to_string())
    })
}

fn stored_lines(run: &Value, seen: usize) -> Vec<Event> {
    run["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(i, _)| i + 1 > seen)
        .map(|(i, line)| log_event(i + 1, line))
        .collect()
}

fn final_events(run: &Value) -> Vec<Event> {
    let mut events = Vec::new();
    if !run["output"].is_null() {
        events.push(
            Event::default()
                .event("output")
                .data(run["output"].to_string()),
        );
    }
    if !run["error"].is_null() {
        events.push(
            Event::default()
                .event("error")
                .data(run["error"].to_string()),
        );
    }
    if !run["delivery"].is_null() {
        events.push(
            Event::default()
                .event("delivery")
                .data(run["delivery"].to_string()),
        );
    }
    events.push(end_event(run["status"].as_str().unwrap_or("ended")));
    events
}

fn end_event(status: &str) -> Event {
    Event::default()
        .event("end")
        .data(json!({"status": status}).to_string())
}

fn log_event(index: usize, line: &Value) -> Event {
    Event::default()
        .id(format!("log:{index}"))
        .event("log")
        .data(line.to_string())
}

fn line_json(line: &LogLine) -> Value {
    json!({
        "ts": gust_core::clock::rfc3339(line.ts),
        "level": line.level,
        "message": line.message,
    })
}
