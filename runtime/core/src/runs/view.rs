//! A run as the API shows it (and as a push event carries it).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::clock::rfc3339;
use gust_model::{DeliveryStatus, RunRecord};

/// The poll shape: `{"run_id","agent","version","deployment","status","created_at",
/// "started_at","finished_at","attempts","output","error","progress","logs","outbound","delivery"}`.
pub fn run_json(run: &RunRecord) -> Value {
    json!({
        "run_id": run.id,
        "agent": run.agent,
        "version": run.version,
        "deployment": run.deployment,
        "status": run.status.as_str(),
        "created_at": rfc3339(run.created_at),
        "started_at": run.started_at.map(rfc3339),
        "finished_at": run.finished_at.map(rfc3339),
        "attempts": run.attempts,
        "output": run.output.as_ref().map(|(content_type, bytes)| payload_json(content_type, bytes)),
        "error": run.error.as_ref().map(|(kind, message)| json!({"kind": kind, "message": message})),
        "progress": run.progress.as_ref().map(|(fraction, message)| json!({"fraction": fraction, "message": message})),
        "logs": run.logs.iter().map(|l| json!({"ts": rfc3339(l.ts), "level": l.level, "message": l.message})).collect::<Vec<_>>(),
        "outbound": run.outbound.iter().map(|o| json!({
            "ts": rfc3339(o.ts),
            "method": o.method,
            "host": o.host,
            "status": o.status,
            "duration_ms": o.duration_ms,
            "error": o.error,
        })).collect::<Vec<_>>(),
        "delivery": run.delivery.as_ref().map(|d| json!({
            "status": d.status.as_str(),
            "attempts": d.attempts,
            "last_error": d.last_error,
            "next_attempt_at": (d.status == DeliveryStatus::Pending).then_some(d.next_attempt_at).flatten().map(rfc3339),
        })),
    })
}

/// A run as a listing shows it: the poll shape without `output`, `logs` and `outbound`
/// (a listing does not read them; a poll of the run answers them).
pub fn run_summary_json(run: &RunRecord) -> Value {
    let mut summary = run_json(run);
    if let Some(fields) = summary.as_object_mut() {
        for heavy in ["output", "logs", "outbound"] {
            fields.remove(heavy);
        }
    }
    summary
}

/// A run's input or output as answers show it: JSON as JSON, anything else as base64.
pub fn payload_json(content_type: &str, bytes: &[u8]) -> Value {
    if is_json(content_type)
        && let Ok(value) = serde_json::from_slice::<Value>(bytes)
    {
        return json!({"content_type": content_type, "json": value});
    }
    json!({"content_type": content_type, "base64": STANDARD.encode(bytes)})
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
