//! `gust:agent/host`: logging, configuration and progress.

use crate::bindings::Level;
use crate::bindings::gust::agent::{host, invocation};

use super::CallState;

/// Longest log message kept; a guest cannot flood the host log with one call.
const MAX_MESSAGE_BYTES: usize = 4096;

impl host::Host for CallState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = truncate(&message, MAX_MESSAGE_BYTES);
        if let Some(recorder) = &self.recorder {
            let level = match level {
                Level::Trace => "trace",
                Level::Debug => "debug",
                Level::Info => "info",
                Level::Warn => "warn",
                Level::Error => "error",
            };
            recorder.log(level, message);
            return Ok(());
        }
        if !self.may_log() {
            return Ok(());
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
        Ok(())
    }

    async fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }

    async fn progress(&mut self, fraction: f32, message: String) -> wasmtime::Result<()> {
        // Recorded on queued runs only; a sync caller is already waiting for the answer and
        // has nowhere to see it.
        if let Some(recorder) = &self.recorder {
            recorder.progress(fraction, truncate(&message, MAX_MESSAGE_BYTES));
        }
        Ok(())
    }
}

impl invocation::Host for CallState {}

use super::CallInfo;

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 3), "hel");
        // "é" is two bytes: cutting inside it backs off to the boundary before it.
        assert_eq!(truncate("aé", 2), "a");
    }
}
