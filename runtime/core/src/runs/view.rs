//! A run as the API shows it (and as a push event carries it): typed, so the OpenAPI
//! document's schemas are these types and cannot drift from the answers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::rfc3339;
use gust_model::{DeliveryStatus, RunRecord, RunStatus};

/// A run as a listing shows it: the poll shape without `output`, `logs` and `outbound`
/// (a listing does not read them; a poll of the run answers them).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunSummary {
    /// `run_…`.
    pub run_id: String,
    /// The agent.
    pub agent: String,
    /// The version of the deployment it runs on.
    pub version: u32,
    /// The deployment it runs on.
    pub deployment: u32,
    /// Where it is.
    pub status: RunStatus,
    /// Acceptance time (RFC 3339).
    pub created_at: String,
    /// Start of the latest attempt.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    /// Why it failed, once failed (or cancelled, or expired).
    pub error: Option<RunError>,
    /// The latest progress the agent reported.
    pub progress: Option<Progress>,
    /// Push delivery, when the run's deployment pushes.
    pub delivery: Option<Delivery>,
}

/// A run as a poll shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunView {
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The answer, once succeeded.
    pub output: Option<Payload>,
    /// The lines the run logged (bounded).
    pub logs: Vec<RunLog>,
    /// The outgoing HTTP requests it made (bounded; never headers or bodies).
    pub outbound: Vec<Outbound>,
}

/// An error in the API's shape.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunError {
    /// `failed`, `invalid_input`, `trap`, `timeout`, `lost`, `cancelled`, `expired`, …
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// How far a run has come, as its agent reported it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// From 0.0 to 1.0.
    pub fraction: f64,
    /// A short message.
    pub message: String,
}

/// A line a run logged.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunLog {
    /// When (RFC 3339).
    pub ts: String,
    /// `trace`, `debug`, `info`, `warn`, `error`, or `stdout`/`stderr` for captured output.
    pub level: String,
    /// The line.
    pub message: String,
}

/// An outgoing HTTP request a run made.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Outbound {
    /// When it was sent (RFC 3339).
    pub ts: String,
    /// `GET`, `POST`, …
    pub method: String,
    /// `scheme://host[:port]`.
    pub host: String,
    /// The answer's status, if there was one.
    pub status: Option<u16>,
    /// How long it took, ms.
    pub duration_ms: u64,
    /// Why it failed or was denied, if it did.
    pub error: Option<String>,
}

/// A run's push delivery.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<String>,
}

/// A run's input or output as answers show it: JSON as JSON, anything else as base64.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Payload {
    /// A JSON media type whose bytes parse as JSON.
    Json {
        /// The media type.
        content_type: String,
        /// The value.
        json: Value,
    },
    /// Anything else, bytes as they are.
    Base64 {
        /// The media type.
        content_type: String,
        /// The bytes, base64 (standard alphabet, padded).
        base64: String,
    },
}

impl RunSummary {
    pub fn new(run: &RunRecord) -> Self {
        Self {
            run_id: run.id.clone(),
            agent: run.agent.clone(),
            version: run.version,
            deployment: run.deployment,
            status: run.status,
            created_at: rfc3339(run.created_at),
            started_at: run.started_at.map(rfc3339),
            finished_at: run.finished_at.map(rfc3339),
            attempts: run.attempts,
            error: run.error.as_ref().map(|(kind, message)| RunError {
                kind: kind.clone(),
                message: message.clone(),
            }),
            progress: run.progress.as_ref().map(|(fraction, message)| Progress {
                fraction: *fraction,
                message: message.clone(),
            }),
            delivery: run.delivery.as_ref().map(|d| Delivery {
                status: d.status.as_str().to_owned(),
                attempts: d.attempts,
                last_error: d.last_error.clone(),
                next_attempt_at: (d.status == DeliveryStatus::Pending)
                    .then_some(d.next_attempt_at)
                    .flatten()
                    .map(rfc3339),
            }),
        }
    }
}

impl RunView {
    pub fn new(run: &RunRecord) -> Self {
        Self {
            summary: RunSummary::new(run),
            output: run
                .output
                .as_ref()
                .map(|(content_type, bytes)| Payload::new(content_type, bytes)),
            logs: run
                .logs
                .iter()
                .map(|l| RunLog {
                    ts: rfc3339(l.ts),
                    level: l.level.clone(),
                    message: l.message.clone(),
                })
                .collect(),
            outbound: run
                .outbound
                .iter()
                .map(|o| Outbound {
                    ts: rfc3339(o.ts),
                    method: o.method.clone(),
                    host: o.host.clone(),
                    status: o.status,
                    duration_ms: o.duration_ms,
                    error: o.error.clone(),
                })
                .collect(),
        }
    }
}

impl Payload {
    pub fn new(content_type: &str, bytes: &[u8]) -> Self {
        if is_json(content_type)
            && let Ok(json) = serde_json::from_slice::<Value>(bytes)
        {
            return Self::Json {
                content_type: content_type.to_owned(),
                json,
            };
        }
        Self::Base64 {
            content_type: content_type.to_owned(),
            base64: STANDARD.encode(bytes),
        }
    }
}

/// The poll shape as a JSON value (push events and run-event streams add to it).
pub fn run_json(run: &RunRecord) -> Value {
    serde_json::to_value(RunView::new(run)).unwrap_or_default()
}

/// [`Payload::new`] as a JSON value.
pub fn payload_json(content_type: &str, bytes: &[u8]) -> Value {
    serde_json::to_value(Payload::new(content_type, bytes)).unwrap_or_default()
}

/// A chunk of emitted output as event streams carry it: `{"text"}` when it is UTF-8,
/// `{"base64"}` otherwise (a chunk that splits a character is not text on its own).
pub fn chunk_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({"text": text}),
        Err(_) => json!({"base64": STANDARD.encode(bytes)}),
    }
}

fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_text_when_they_can_be() {
        assert_eq!(chunk_json("héllo".as_bytes()), json!({"text": "héllo"}));
        // The first byte of "é" alone is not UTF-8.
        assert_eq!(chunk_json(&[b'h', 0xc3]), json!({"base64": "aMM="}));
    }

    #[test]
    fn json_answers_stay_json_and_others_are_base64() {
        assert_eq!(
            payload_json("application/json; charset=utf-8", br#"{"a":1}"#),
            json!({"content_type": "application/json; charset=utf-8", "json": {"a": 1}})
        );
        assert_eq!(
            payload_json("application/problem+json", b"[1]")["json"],
            json!([1])
        );
        assert_eq!(
            payload_json("text/plain", b"hi"),
            json!({"content_type": "text/plain", "base64": "aGk="})
        );
        // Labelled JSON that is not JSON is not passed off as JSON.
        assert_eq!(
            payload_json("application/json", b"{oops")["base64"],
            "e29vcHM="
        );
    }
}
