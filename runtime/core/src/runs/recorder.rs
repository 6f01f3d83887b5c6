//! What a queued run's guest logs and reports, kept on the run for pollers: log lines and
//! captured output (bounded), and progress (written through the run writer, throttled).
//! Emitted chunks go to the run's followers; the output stored at the end holds them.
//! It is the run's [`CallSink`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gust_model::{LogLine, OutboundRequest};
use gust_store::queue::RunWrite;
use gust_wasm::{CallSink, Level, Stream, host::level_name};

use super::events::RunEvents;
use super::writer::Writer;
use crate::clock;

/// Lines and bytes kept per run; what is past them is counted, not kept.
const MAX_LINES: usize = 200;
/// Outgoing requests recorded per run.
const MAX_OUTBOUND: usize = 100;
const MAX_BYTES: usize = 64 * 1024;
/// Progress is written at most this often; the latest report always lands.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    lines: Vec<LogLine>,
    bytes: usize,
    dropped: usize,
    last_progress_write: Option<Instant>,
    unwritten_progress: Option<(f64, String)>,
    outbound: Vec<OutboundRequest>,
}

/// The recorder of one attempt of one run.
pub(super) struct RunRecorder {
    id: String,
    /// The attempt it records (its progress reports name it).
    attempt: u32,
    writer: Writer,
    state: Mutex<State>,
    /// Followers of the run see each line and report as it comes.
    events: Arc<RunEvents>,
}

impl RunRecorder {
    pub(super) fn new(id: String, attempt: u32, writer: Writer, events: Arc<RunEvents>) -> Self {
        Self {
            id,
            attempt,
            writer,
            state: Mutex::default(),
            events,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, level: &str, message: &str) {
        let mut state = self.state();
        if state.lines.len() >= MAX_LINES || state.bytes + message.len() > MAX_BYTES {
            state.dropped += 1;
            return;
        }
        state.bytes += message.len();
        let line = LogLine {
            ts: clock::now_ms(),
            level: level.to_owned(),
            message: message.to_owned(),
        };
        state.lines.push(line.clone());
        drop(state);
        self.events.log(&self.id, line);
    }

    fn report(&self, fraction: f32, message: &str) {
        let fraction = f64::from(fraction.clamp(0.0, 1.0));
        self.events.progress(&self.id, fraction, message);
        let mut state = self.state();
        let due = state
            .last_progress_write
            .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if due {
            state.last_progress_write = Some(Instant::now());
            state.unwritten_progress = None;
            drop(state);
            self.writer.write_detached(RunWrite::Progress {
                id: self.id.clone(),
                attempt: self.attempt,
                fraction,
                message: message.to_owned(),
            });
        } else {
            state.unwritten_progress = Some((fraction, message.to_owned()));
        }
    }

    /// Records an outgoing HTTP request (the first [`MAX_OUTBOUND`]).
    fn record_outbound(&self, request: OutboundRequest) {
        let mut state = self.state();
        if state.outbound.len() < MAX_OUTBOUND {
            state.outbound.push(request);
        }
    }

    /// Ends the attempt: writes a throttled last progress report (before the finish, which
    /// goes through the same writer) and hands over the log lines and outgoing requests.
    pub(super) fn finish(&self) -> (Vec<LogLine>, Vec<OutboundRequest>) {
        let mut state = self.state();
        if let Some((fraction, message)) = state.unwritten_progress.take() {
            self.writer.write_detached(RunWrite::Progress {
                id: self.id.clone(),
                attempt: self.attempt,
                fraction,
                message,
            });
        }
        let mut lines = std::mem::take(&mut state.lines);
        if state.dropped > 0 {
            lines.push(LogLine {
                ts: clock::now_ms(),
                level: "warn".into(),
                message: format!("[{} more log lines dropped]", state.dropped),
            });
        }
        (lines, std::mem::take(&mut state.outbound))
    }
}

impl CallSink for RunRecorder {
    fn log(&self, level: Level, message: &str) {
        self.record(level_name(level), message);
    }

    fn output(&self, stream: Stream, line: &str) {
        self.record(stream.as_str(), line);
    }

    fn progress(&self, fraction: f32, message: &str) {
        self.report(fraction, message);
    }

    fn emit(&self, chunk: &[u8]) {
        self.events.chunk(&self.id, chunk);
    }

    fn outbound(&self, request: OutboundRequest) {
        self.record_outbound(request);
    }
}
