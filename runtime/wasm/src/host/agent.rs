//! `gust:agent/host`: logging, configuration and progress.

use crate::bindings::Level;
use crate::bindings::gust::agent::{host, invocation};

use super::CallState;

/// Longest log message kept; a guest cannot flood the host log with one call.
const MAX_MESSAGE_BYTES: usize = 4096;

impl host::Host for CallState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.sink.log(level, truncate(&message, MAX_MESSAGE_BYTES));
        Ok(())
    }

    async fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }

    async fn progress(&mut self, fraction: f32, message: String) -> wasmtime::Result<()> {
        self.sink
            .progress(fraction, truncate(&message, MAX_MESSAGE_BYTES));
        Ok(())
    }
}

impl invocation::Host for CallState {}

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
