//! Where what a guest reports during a call goes: its log lines, its stdout and stderr, its
//! progress, the chunks of output it emits, and a record of each outgoing HTTP request. The Wasm layer only hands these to
//! a [`CallSink`]; the caller decides what becomes of them — a sync call writes them to the
//! host log ([`HostLog`]), a queued run keeps them on the run (the run queue's recorder).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gust_model::OutboundRequest;

use crate::bindings::Level;

/// Lines one call may send to the host log; the rest are counted, not written.
pub const MAX_HOST_LOG_LINES: usize = 1000;

/// A captured output stream of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// The name of a log level as runs record it.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Receives what a guest reports during one call. Called from the guest's host calls, so
/// implementations must be quick and must not block.
pub trait CallSink: Send + Sync {
    /// A line the guest logged (`gust:agent/host.log`), already cut to a bounded length.
    fn log(&self, level: Level, message: &str);
    /// A line the guest wrote to stdout or stderr (captured, bounded), at the call's end.
    fn output(&self, stream: Stream, line: &str);
    /// A progress report (`gust:agent/host.progress`), as the guest sent it.
    fn progress(&self, fraction: f32, message: &str);
    /// A chunk of output the guest emitted (`gust:agent/host.emit`), never empty, within
    /// the output limit. The call's output already holds it (before what `run` returns):
    /// a sink only passes it on to whoever follows the call as it runs.
    fn emit(&self, chunk: &[u8]);
    /// An outgoing HTTP request, allowed or denied (method, origin, status; never headers
    /// or bodies).
    fn outbound(&self, request: OutboundRequest);
}

/// Who is running: the fields every host-log line of a call is tagged with.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// The agent's name.
    pub agent: Arc<str>,
    /// The version that runs.
    pub version: u32,
    /// The call's run id.
    pub run_id: Arc<str>,
}

/// The sink of a sync call (and an upload's trial instantiation): everything goes to the
/// host log, tagged with the call; log lines and outgoing-request lines together are
/// bounded by [`MAX_HOST_LOG_LINES`];
/// progress has nowhere to go (the caller is waiting for the answer) and is dropped, and
/// emitted chunks reach the caller with the output.
pub struct HostLog {
    info: CallInfo,
    logged: AtomicUsize,
}

impl HostLog {
    /// A sink for one call.
    pub fn new(info: CallInfo) -> Arc<Self> {
        Arc::new(Self {
            info,
            logged: AtomicUsize::new(0),
        })
    }

    /// Whether the call may still write to the host log (false past the bound, with one
    /// line saying so).
    fn may_log(&self) -> bool {
        let logged = self.logged.fetch_add(1, Ordering::Relaxed) + 1;
        if logged == MAX_HOST_LOG_LINES + 1 {
            let CallInfo {
                agent,
                version,
                run_id,
            } = &self.info;
            tracing::warn!(%agent, version, %run_id, "more log lines of this call are dropped");
        }
        logged <= MAX_HOST_LOG_LINES
    }
}

impl CallSink for HostLog {
    fn log(&self, level: Level, message: &str) {
        if !self.may_log() {
            return;
        }
        let CallInfo {
            agent,
            version,
            run_id,
        } = &self.info;
        match level {
            Level::Trace => tracing::trace!(%agent, version, %run_id, "{message}"),
            Level::Debug => tracing::debug!(%agent, version, %run_id, "{message}"),
            Level::Info => tracing::info!(%agent, version, %run_id, "{message}"),
            Level::Warn => tracing::warn!(%agent, version, %run_id, "{message}"),
            Level::Error => tracing::error!(%agent, version, %run_id, "{message}"),
        }
    }

    fn output(&self, stream: Stream, line: &str) {
        let CallInfo {
            agent,
            version,
            run_id,
        } = &self.info;
        let stream = stream.as_str();
        tracing::info!(%agent, version, %run_id, stream, "{line}");
    }

    fn progress(&self, _fraction: f32, _message: &str) {}

    fn emit(&self, _chunk: &[u8]) {}

    fn outbound(&self, entry: OutboundRequest) {
        // Bounded with the log lines: a guest that sends requests in a loop must not flood
        // the host log either.
        if !self.may_log() {
            return;
        }
        let CallInfo {
            agent,
            version,
            run_id,
        } = &self.info;
        tracing::info!(
            %agent, version, %run_id, method = %entry.method, host = %entry.host,
            status = ?entry.status, duration_ms = entry.duration_ms,
            error = entry.error.as_deref().unwrap_or(""),
            "outgoing request"
        );
    }
}
