//! The data plane: the sync endpoint. Its path is the hot path of the product: auth from
//! memory, one registry load, one fresh instance — no database, no global lock. The call
//! itself is [`Calls::call`](gust_core::calls::Calls::call), the path every call takes.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use gust_core::Error;
use gust_core::calls::{Admit, CallKind, CallRequest, Called, Input, Target};
use gust_core::runs::{chunk_json, new_run_id, payload_json};

use super::auth::Invoker;
use super::error::ApiError;
use super::{AppState, body};

const JSON: &str = "application/json";

/// Headers a call's answer carries: its content type, run id, version and deployment, the
/// security headers and its length.
const ANSWER_HEADERS: usize = 12;

// Header names as constants: inserting with a `&str` validates the name on every call.
/// The run id of the call.
const RUN_ID: HeaderName = HeaderName::from_static("gust-run-id");
/// The version number of the component that answered.
const AGENT_VERSION: HeaderName = HeaderName::from_static("gust-agent-version");
/// The deployment that answered (changes with every deploy and rollback).
const DEPLOYMENT: HeaderName = HeaderName::from_static("gust-deployment");

/// Calls the agent and answers with its output, as the agent labelled it. With
/// `Accept: text/event-stream`, the call's progress and log lines stream as Server-Sent
/// Events, then its `output` (or `error`) and `end`.
#[utoipa::path(post, path = "/v1/agents/{agent}/run", tag = super::openapi::TAG_CALLS, operation_id = "run",
    params(super::openapi::AgentPath), security(("admin" = []), ("api_key" = [])),
    request_body(content = serde_json::Value, description = "The agent's input: any JSON, or any bytes with their `Content-Type`.",
        content(("application/json"), ("*/*"))),
    responses(
        (status = 200, description = "The agent's output, with `gust-run-id`, `gust-agent-version` and `gust-deployment` headers.",
            content((serde_json::Value = "*/*"), (super::openapi::CallEventStream = super::openapi::EVENT_STREAM))),
        (status = 422, description = "The agent refused the input (`invalid_input`).", body = super::error::ErrorBody),
        (status = 502, description = "The agent failed (`failed`), trapped, ran out of memory or answered too much.", body = super::error::ErrorBody),
        (status = 504, description = "The call ran past its deployment's `sync_timeout_s`.", body = super::error::ErrorBody)))]
pub(crate) async fn run(
    Invoker(agent): Invoker,
    State(state): State<Arc<AppState>>,
    // The whole request, not `HeaderMap` + `Body`: extracting a `HeaderMap` clones it.
    request: Request,
) -> Response {
    let (Parts { headers, .. }, request_body) = request.into_parts();
    let run_id: Arc<str> = Arc::from(new_run_id());
    if wants_events(&headers) {
        // Whether there is a deployment to call is known before the stream starts: a 404,
        // as a plain call answers, not a 200 whose only event is that error.
        state.host.lifecycle.registry().wait_ready().await;
        if let Err(e) = state.host.lifecycle.live(&agent) {
            return ApiError(e).into_response();
        }
        return streamed(state, agent, headers, request_body, run_id);
    }
    let call = CallRequest {
        run_id: Arc::clone(&run_id),
        kind: CallKind::Sync,
        attempt: 1,
        sink: None,
        watcher: None,
        trace: super::trace_of(&headers),
    };
    let input = read_input(&state, headers, request_body);
    // Boxed: the call's future takes kilobytes, and this handler's future, which axum boxes
    // and moves on its way in, would otherwise hold it inline and be copied with it (about
    // 30 KB of copies a request, 9 % of its instructions in `bench/callgrind`).
    let calling = Box::pin(
        state
            .host
            .calls
            .call(Target::Live(agent), input, call, Admit::Wait),
    );
    let called = within_grace(&state, calling).await;

    let mut response = match called.outcome {
        Ok(output) => {
            // A guest could answer a content type that is not a valid header value; the
            // bytes still go out, labelled as opaque.
            let content_type = HeaderValue::from_str(&output.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let mut response = Response::new(Body::from(output.bytes));
            // Room for every header the answer gets on its way out (its own three, the
            // security headers, the length), so that the map never grows and rehashes.
            let mut headers = HeaderMap::with_capacity(ANSWER_HEADERS);
            headers.insert(CONTENT_TYPE, content_type);
            *response.headers_mut() = headers;
            response
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

/// The call, or, if the host's stop reaches the end of its grace period first, a 503 that
/// tells the caller to call again (another host behind the balancer, or this one once it is
/// back) where the process's exit would drop the connection without an answer. The guest
/// is stopped as when a caller goes away.
async fn within_grace(
    state: &AppState,
    calling: impl std::future::Future<Output = Called>,
) -> Called {
    tokio::select! {
        called = calling => called,
        () = state.past_grace.cancelled() => Called {
            deployment: None,
            outcome: Err(Error::Unavailable(
                "the host stopped before the call ended (its shutdown grace period ran out): call again".into(),
            )),
        },
    }
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

/// Whether the caller asked for the call as Server-Sent Events.
fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"))
}

/// Events a slow caller may fall behind by; past them, lines are dropped (and counted in a
/// `dropped` event), never the output: emitted chunks wait, joined, for the caller.
const STREAM_BUFFER: usize = 256;

/// A sync call as Server-Sent Events: its progress, log lines and emitted chunks of output
/// as the guest reports them, then `output` (the whole output, chunks included; or `error`,
/// with the status a plain call would have answered) and `end`. The call runs inside the
/// stream: a caller that goes away cancels it, as with a plain call.
fn streamed(
    state: Arc<AppState>,
    agent: String,
    headers: HeaderMap,
    request_body: Body,
    run_id: Arc<str>,
) -> Response {
    let (sender, events) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    let watcher = Arc::new(Watcher {
        events: sender,
        dropped: std::sync::atomic::AtomicU64::new(0),
        emitted: std::sync::Mutex::default(),
    });
    let call = CallRequest {
        run_id: Arc::clone(&run_id),
        kind: CallKind::Sync,
        attempt: 1,
        sink: None,
        watcher: Some(Arc::clone(&watcher) as Arc<dyn gust_wasm::CallSink>),
        trace: super::trace_of(&headers),
    };
    let calling = async move {
        let input = read_input(&state, headers, request_body);
        within_grace(
            &state,
            state
                .host
                .calls
                .call(Target::Live(agent), input, call, Admit::Wait),
        )
        .await
    };
    let stream = futures::stream::unfold(
        (Some(Box::pin(calling)), events, watcher),
        |(mut calling, mut events, watcher)| async move {
            // `None` once the answer went out: the stream ends.
            let call = calling.as_mut()?;
            tokio::select! {
                biased;
                Some(item) = events.recv() => {
                    let mut batch = Vec::new();
                    if let Watched::Event(event) = item {
                        batch.push(event);
                    }
                    // Chunks go out after any event received, not only after their own
                    // wake-up, which a full channel may not have taken.
                    batch.extend(watcher.take_emitted());
                    Some((batch, (calling, events, watcher)))
                }
                called = call => {
                    // What the guest reported before it answered comes first.
                    let mut batch = Vec::new();
                    while let Ok(item) = events.try_recv() {
                        if let Watched::Event(event) = item {
                            batch.push(event);
                        }
                    }
                    batch.extend(watcher.take_emitted());
                    let dropped = watcher.dropped.load(std::sync::atomic::Ordering::Relaxed);
                    if dropped > 0 {
                        batch.push(Event::default().event("dropped").data(serde_json::json!({"events": dropped}).to_string()));
                    }
                    batch.extend(answer_events(called));
                    Some((batch, (None, events, watcher)))
                }
            }
        },
    );
    let stream = futures::StreamExt::flat_map(stream, |batch| {
        futures::stream::iter(batch.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response();
    if let Ok(id) = HeaderValue::from_str(&run_id) {
        response.headers_mut().insert(RUN_ID, id);
    }
    response
}

/// The output (or the error) of a streamed call, then `end`.
fn answer_events(called: Called) -> Vec<Event> {
    let deployment = called
        .deployment
        .as_ref()
        .map(|d| serde_json::json!({"version": d.version(), "deployment": d.number}));
    let mut events = Vec::new();
    match called.outcome {
        Ok(output) => {
            let mut data = payload_json(&output.content_type, &output.bytes);
            data["deployment"] = deployment.unwrap_or_default();
            events.push(Event::default().event("output").data(data.to_string()));
        }
        Err(e) => {
            if let Error::Internal(_) = &e {
                tracing::error!("{}", e.logged());
            }
            // What a plain call's error answer says: its status, kind and message.
            let status = super::error::status(&e).as_u16();
            events.push(Event::default().event("error").data(
                serde_json::json!({"status": status, "kind": e.kind(), "message": e.to_string()})
                    .to_string(),
            ));
        }
    }
    events.push(Event::default().event("end").data("{}"));
    events
}

/// What the watcher hands the stream.
enum Watched {
    /// A progress report or a log line.
    Event(Event),
    /// Chunks are waiting in [`Watcher::emitted`].
    Emitted,
}

/// Forwards what the guest reports to the stream, without ever waiting on the caller.
struct Watcher {
    events: tokio::sync::mpsc::Sender<Watched>,
    dropped: std::sync::atomic::AtomicU64,
    /// Chunks emitted and not sent yet. They are part of the output, so they are never
    /// dropped: behind a slow caller they pile up here as one, within the output limit the
    /// host enforces as they are emitted (a channel of one event per chunk would not be
    /// bounded by it).
    emitted: std::sync::Mutex<Vec<u8>>,
}

impl Watcher {
    fn send(&self, event: Event) {
        if self.events.try_send(Watched::Event(event)).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.emitted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunks waiting, as one `chunk` event.
    fn take_emitted(&self) -> Option<Event> {
        let bytes = std::mem::take(&mut *self.pending());
        (!bytes.is_empty()).then(|| {
            Event::default()
                .event("chunk")
                .data(chunk_json(&bytes).to_string())
        })
    }
}

impl gust_wasm::CallSink for Watcher {
    fn log(&self, level: gust_wasm::Level, message: &str) {
        let level = gust_wasm::host::level_name(level);
        self.send(
            Event::default()
                .event("log")
                .data(serde_json::json!({"level": level, "message": message}).to_string()),
        );
    }

    fn output(&self, stream: gust_wasm::Stream, line: &str) {
        self.send(
            Event::default().event("log").data(
                serde_json::json!({"level": "info", "stream": stream.as_str(), "message": line})
                    .to_string(),
            ),
        );
    }

    fn progress(&self, fraction: f32, message: &str) {
        self.send(
            Event::default()
                .event("progress")
                .data(serde_json::json!({"fraction": fraction, "message": message}).to_string()),
        );
    }

    fn emit(&self, chunk: &[u8]) {
        let mut pending = self.pending();
        let wake = pending.is_empty();
        pending.extend_from_slice(chunk);
        drop(pending);
        // One wake-up for chunks that pile up. When the channel is full, none is needed:
        // the stream takes the chunks after the next event it receives.
        if wake {
            let _ = self.events.try_send(Watched::Emitted);
        }
    }

    fn outbound(&self, _request: gust_model::OutboundRequest) {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use gust_wasm::CallSink as _;

    use super::*;

    /// Emitted chunks are the output: behind a caller too slow for the channel they wait,
    /// joined, and are never dropped; log lines past the channel are dropped and counted.
    #[test]
    fn chunks_behind_a_full_channel_wait_and_lines_are_dropped() {
        let (sender, mut events) = tokio::sync::mpsc::channel(1);
        let watcher = Watcher {
            events: sender,
            dropped: Default::default(),
            emitted: Default::default(),
        };
        // The first chunk's wake-up takes the channel's one place.
        watcher.emit(b"one ");
        watcher.log(gust_wasm::Level::Info, "no room for this line");
        watcher.emit(b"two");
        assert_eq!(watcher.dropped.load(Ordering::Relaxed), 1);
        assert!(matches!(events.try_recv(), Ok(Watched::Emitted)));
        assert!(events.try_recv().is_err());
        assert_eq!(*watcher.pending(), b"one two");
        assert!(watcher.take_emitted().is_some());
        assert!(watcher.pending().is_empty());
        assert!(watcher.take_emitted().is_none());
    }
}
