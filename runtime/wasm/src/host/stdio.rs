//! Bounded capture of a guest's stdout and stderr.
//!
//! `MemoryOutputPipe` traps the guest once full, which would turn a chatty `println!` into a
//! failed call; this pipe instead keeps the first [`CAPACITY`] bytes and silently drops the
//! rest, noting that it did.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept per stream per call.
const CAPACITY: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

/// One captured stream; clones share the buffer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Buffer>>);

impl Captured {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn append(&self, data: &[u8]) {
        let mut buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = CAPACITY.saturating_sub(buffer.bytes.len());
        let kept = room.min(data.len());
        buffer.bytes.extend_from_slice(&data[..kept]);
        buffer.dropped += data.len() - kept;
    }

    /// Takes what was written so far as lines (invalid UTF-8 replaced), with a last line
    /// saying how much was dropped, if anything was.
    pub(crate) fn take_lines(&self) -> Vec<String> {
        let mut buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = std::mem::take(&mut buffer.bytes);
        let dropped = std::mem::take(&mut buffer.dropped);
        drop(buffer);
        let mut lines: Vec<String> = String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if dropped > 0 {
            lines.push(format!("[{dropped} more bytes of output dropped]"));
        }
        lines
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: writes beyond the capacity are dropped, never refused.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lines_and_counts_what_overflows() {
        let c = Captured::new();
        c.append(b"one\ntwo\n");
        assert_eq!(c.take_lines(), vec!["one", "two"]);
        c.append(&vec![b'x'; CAPACITY + 10]);
        let lines = c.take_lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), CAPACITY);
        assert_eq!(lines[1], "[10 more bytes of output dropped]");
        assert!(c.take_lines().is_empty());
    }
}
