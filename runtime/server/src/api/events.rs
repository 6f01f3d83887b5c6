//! `GET /v1/agents/{agent}/runs/{run_id}/events`: a run as Server-Sent Events — its status,
//! progress, log lines, chunks of output as the guest emits them, and at the end its output
//! (or error) and delivery — ending when the run is final (with an `end` event, so a
//! browser's EventSource does not reconnect).
//!
//! Log and chunk events have ids that say how far the stream has come in the attempt:
//! `log:N` (N lines so far), or `log:N,out:K` once K bytes of output have been emitted. A
//! retried run counts its new attempt from zero again. A client that reconnects with such a
//! `Last-Event-ID` gets the status and the latest progress again, then what it missed that
//! is kept: while the run executes, the attempt's lines after N and its output after byte K
//! (as one chunk), which `gust-core`'s `RunEvents` keeps in memory; once the run has ended,
//! the lines after N stored with it, and its `output`, which holds every chunk (they are
//! not sent again as chunks). Earlier progress reports are not kept, only the latest.

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

use gust_core::runs::{Kept, RunEvent, RunEvents, Seen, chunk_json, run_json};
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
        ("Last-Event-ID" = Option<String>, Header, description = "`log:N` or `log:N,out:K`: resume after the Nth log line (and K bytes of emitted output) of the attempt.")),
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
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(parse_seen)
        .unwrap_or_default();
    // Subscribed before the store is read again: nothing falls between the two.
    let (live, kept) = runs.events().subscribe(&id, seen);
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
    let mut first = vec![status_event(&run)];
    first.extend(progress_event(&run));
    let mut stream = Streaming {
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
        first.extend(stream.catch_up(kept));
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
    /// Log lines and bytes of output sent so far, of the attempt running now.
    seen: Seen,
    done: bool,
    follower: Follower,
}

impl Streaming {
    /// Events for what the running attempt reported past `seen`, kept beside it: its lines,
    /// then its output since, as one chunk.
    fn catch_up(&mut self, kept: Kept) -> Vec<Event> {
        let mut batch = Vec::new();
        for line in &kept.lines {
            self.seen.lines += 1;
            batch.push(log_event(self.seen, &line_json(line)));
        }
        if !kept.emitted.is_empty() {
            self.seen.bytes += kept.emitted.len();
            batch.push(chunk_event(self.seen, &kept.emitted));
        }
        batch
    }
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
            // A new attempt counts its lines and output from zero again.
            s.seen = Seen::default();
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
            if index <= s.seen.lines {
                Vec::new()
            } else {
                s.seen.lines = index;
                vec![log_event(s.seen, &line_json(&line))]
            }
        }
        Ok(Ok(RunEvent::Chunk { offset, bytes })) => {
            let end = offset + bytes.len();
            if end <= s.seen.bytes {
                Vec::new()
            } else if offset > s.seen.bytes {
                // Output between what was sent and this chunk was missed: it is kept.
                let kept = s.runs.events().kept(&s.follower.id, s.seen);
                s.catch_up(Kept {
                    lines: Vec::new(),
                    emitted: kept.emitted,
                })
            } else {
                let new = &bytes[s.seen.bytes - offset..];
                s.seen.bytes = end;
                vec![chunk_event(s.seen, new)]
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
                // What was missed while lagging is still kept beside the running attempt.
                let kept = s.runs.events().kept(&s.follower.id, s.seen);
                s.catch_up(kept)
            }
        }
        Ok(Err(RecvError::Closed)) => {
            s.done = true;
            vec![end_event("gone")]
        }
    };
    Some((batch, s))
}

/// Reads a `Last-Event-ID`: `log:N` or `log:N,out:K` (anything else counts as nothing seen).
fn parse_seen(id: &str) -> Seen {
    let mut seen = Seen::default();
    for part in id.trim().split(',') {
        if let Some(n) = part.strip_prefix("log:").and_then(|n| n.parse().ok()) {
            seen.lines = n;
        } else if let Some(k) = part.strip_prefix("out:").and_then(|k| k.parse().ok()) {
            seen.bytes = k;
        }
    }
    seen
}

/// The id of a log or chunk event: how far the stream has come once it is sent.
fn event_id(seen: Seen) -> String {
    if seen.bytes == 0 {
        format!("log:{}", seen.lines)
    } else {
        format!("log:{},out:{}", seen.lines, seen.bytes)
    }
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

/// The stored lines after those `seen`, each with the id of the stream once it is sent.
fn stored_lines(run: &Value, seen: Seen) -> Vec<Event> {
    run["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(i, _)| i + 1 > seen.lines)
        .map(|(i, line)| {
            let at = Seen {
                lines: i + 1,
                ..seen
            };
            log_event(at, line)
        })
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

fn log_event(seen: Seen, line: &Value) -> Event {
    Event::default()
        .id(event_id(seen))
        .event("log")
        .data(line.to_string())
}

fn chunk_event(seen: Seen, bytes: &[u8]) -> Event {
    Event::default()
        .id(event_id(seen))
        .event("chunk")
        .data(chunk_json(bytes).to_string())
}

fn line_json(line: &LogLine) -> Value {
    json!({
        "ts": gust_core::clock::rfc3339(line.ts),
        "level": line.level,
        "message": line.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_old_ones_still_read() {
        for seen in [
            Seen::default(),
            Seen { lines: 3, bytes: 0 },
            Seen {
                lines: 0,
                bytes: 17,
            },
            Seen { lines: 2, bytes: 5 },
        ] {
            assert_eq!(parse_seen(&event_id(seen)), seen);
        }
        // A run that emits nothing keeps the ids it always had.
        assert_eq!(event_id(Seen { lines: 4, bytes: 0 }), "log:4");
        assert_eq!(parse_seen("log:4"), Seen { lines: 4, bytes: 0 });
        assert_eq!(parse_seen("nonsense"), Seen::default());
        assert_eq!(parse_seen(" log:x,out:9 "), Seen { lines: 0, bytes: 9 });
    }
}
