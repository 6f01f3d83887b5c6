//! Reading Server-Sent Events as a client does: `event:`, `id:` and `data:` lines, an empty
//! line ending each event, the data as JSON.

use std::pin::Pin;
use std::time::Instant;

use futures::{Stream, StreamExt as _};
use serde_json::Value;

/// One event, and when it arrived.
#[derive(Debug)]
pub(crate) struct SseEvent {
    /// Its name (empty when it has none).
    pub(crate) event: String,
    /// Its id (empty when it has none).
    pub(crate) id: String,
    pub(crate) data: Value,
    pub(crate) at: Instant,
}

/// The events of one response, read as they come.
pub(crate) struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    pending: Vec<u8>,
}

impl SseReader {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            pending: Vec::new(),
        }
    }

    /// The next event; `None` when the stream ends.
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&raw[..end]).into_owned();
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if line.is_empty() && !data.is_empty() {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some(SseEvent {
                        event,
                        id,
                        data,
                        at: Instant::now(),
                    });
                }
            }
            let chunk = self.body.next().await?.expect("the stream reads");
            self.pending.extend_from_slice(&chunk);
        }
    }
}
