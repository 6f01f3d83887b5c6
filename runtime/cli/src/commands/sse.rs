//! Reading Server-Sent Events from the API (`gust logs --follow`, `gust runs get --follow`).

use reqwest::Method;
use serde_json::Value;

use super::Ctx;

/// Opens the event stream at `path`.
pub(crate) async fn follow(c: &Ctx, path: &str) -> anyhow::Result<reqwest::Response> {
    c.client.send(c.client.stream(Method::GET, path)).await
}

/// Calls `each(event, data)` for every event of `response` until the stream ends, `each`
/// answers `false`, or it fails (its error is the answer: `ReaderGone` when whoever read the
/// output went away). `event` is the event's name (`message` when it has none); `data` its
/// JSON (`null` when it is not JSON).
pub(crate) async fn each_event(
    c: &Ctx,
    response: reqwest::Response,
    mut each: impl FnMut(&str, Value) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut body = response.bytes_stream();
    // Bytes, not text, until a line is whole: a character may be split between chunks.
    let mut pending: Vec<u8> = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    // The server's keep-alive comments arrive every 15 s: a stream silent for the whole
    // timeout has lost its server.
    while let Some(chunk) = c.client.next(&mut body).await? {
        pending.extend_from_slice(&chunk);
        // `field: value` lines; an empty line ends an event.
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw[..end])
                .trim_end_matches('\r')
                .to_owned();
            if let Some(value) = line.strip_prefix("event:") {
                event = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let name = if event.is_empty() { "message" } else { &event };
                let value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if !each(name, value)? {
                    return Ok(());
                }
                event.clear();
                data.clear();
            }
        }
    }
    Ok(())
}
