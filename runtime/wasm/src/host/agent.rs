//! `gust:agent/host`: logging, configuration, progress and streamed output.

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

    async fn emit(&mut self, chunk: Vec<u8>) -> wasmtime::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        // Past the output limit the call ends here: a guest emitting in a loop must not
        // make the host hold (or a caller receive) more than a returned output could be.
        self.emitted.push(&chunk)?;
        self.sink.emit(&chunk);
        Ok(())
    }
}

/// The chunks a call has emitted, in order: with the output `run` returns after them they
/// make the call's output, so they are kept (and counted against the output limit) until
/// the call ends.
pub(crate) struct Emitted {
    bytes: Vec<u8>,
    /// The deployment's output limit, which the chunks and the returned output share.
    limit: usize,
    /// The size the chunks would have reached when one was refused.
    refused: Option<usize>,
}

impl Emitted {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            refused: None,
        }
    }

    /// Keeps `chunk`, or refuses it (a trap) when it would take the output past the limit.
    fn push(&mut self, chunk: &[u8]) -> wasmtime::Result<()> {
        let total = self.bytes.len().saturating_add(chunk.len());
        if total > self.limit {
            self.refused = Some(total);
            return Err(wasmtime::Error::msg(
                "the agent emitted more output than its deployment allows",
            ));
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    /// When a chunk was refused: the size the output would have reached with it.
    pub(crate) fn refused(&self) -> Option<usize> {
        self.refused
    }

    /// The call's whole output: the chunks, then `returned`. `Err` with its size when that
    /// is past the limit.
    pub(crate) fn complete(&mut self, returned: Vec<u8>) -> Result<Vec<u8>, usize> {
        let total = self.bytes.len().saturating_add(returned.len());
        if total > self.limit {
            return Err(total);
        }
        if self.bytes.is_empty() {
            return Ok(returned);
        }
        let mut output = std::mem::take(&mut self.bytes);
        output.extend_from_slice(&returned);
        Ok(output)
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
    use super::{Emitted, truncate};

    #[test]
    fn chunks_and_the_returned_output_share_the_limit() {
        let mut emitted = Emitted::new(10);
        assert_eq!(emitted.complete(b"plain".to_vec()), Ok(b"plain".to_vec()));

        let mut emitted = Emitted::new(10);
        emitted.push(b"one ").unwrap();
        emitted.push(b"two ").unwrap();
        assert_eq!(emitted.refused(), None);
        assert_eq!(emitted.complete(b"!!".to_vec()), Ok(b"one two !!".to_vec()));

        // The returned output can pass the limit the chunks left room for.
        let mut emitted = Emitted::new(10);
        emitted.push(b"12345678").unwrap();
        assert_eq!(emitted.complete(b"abc".to_vec()), Err(11));

        // A chunk past the limit is refused, and what it would have made is said.
        let mut emitted = Emitted::new(10);
        emitted.push(b"1234567890").unwrap();
        assert!(emitted.push(b"x").is_err());
        assert_eq!(emitted.refused(), Some(11));
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 3), "hel");
        // "é" is two bytes: cutting inside it backs off to the boundary before it.
        assert_eq!(truncate("aé", 2), "a");
    }
}
