//! Guest log lines of sync calls, kept per agent in a bounded ring so an operator can read
//! them (`GET /v1/agents/{agent}/logs`, `gust logs`) and follow them live, without access to
//! the host's own log. Queued runs keep their lines on the run instead.
//!
//! Each line gets a sequence number, increasing per agent: a follower that reconnects asks
//! for the lines after the last one it saw (`Last-Event-ID`), and gets those still in the
//! ring. The ring holds the newest [`KEPT`] lines of each agent, at most [`KEPT_BYTES`] of
//! messages.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Lines kept per agent.
pub const KEPT: usize = 1000;

/// Bytes of messages kept per agent: a captured output line may be 64 KiB, and a thousand
/// of them would be 64 MiB.
pub const KEPT_BYTES: usize = 1 << 20;

/// Lines a slow follower may fall behind by before it is told it missed some.
const FOLLOW_BUFFER: usize = 1024;

/// One guest line of a sync call.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// Increasing per agent, from 1.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub ts: String,
    /// `trace` … `error` for log lines; `info` for captured output.
    pub level: &'static str,
    /// `log`, or `stdout`/`stderr` for captured output.
    pub source: &'static str,
    /// The version that logged it.
    pub version: u32,
    /// The call's run id.
    #[serde(serialize_with = "as_str")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub run_id: Arc<str>,
    /// The line.
    pub message: String,
}

fn as_str<S: serde::Serializer>(value: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(value)
}

struct Ring {
    next: u64,
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    live: broadcast::Sender<Arc<LogLine>>,
}

impl Ring {
    fn new() -> Self {
        Self {
            next: 1,
            lines: VecDeque::new(),
            bytes: 0,
            live: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub struct AgentLogs {
    rings: Mutex<HashMap<Arc<str>, Ring>>,
}

impl AgentLogs {
    /// Keeps a line of `agent` (and hands it to its followers).
    pub(crate) fn push(
        &self,
        agent: &Arc<str>,
        level: &'static str,
        source: &'static str,
        version: u32,
        run_id: &Arc<str>,
        message: &str,
    ) {
        let mut rings = self.lock();
        let ring = rings.entry(Arc::clone(agent)).or_insert_with(Ring::new);
        let line = Arc::new(LogLine {
            seq: ring.next,
            ts: crate::clock::rfc3339(crate::clock::now_ms()),
            level,
            source,
            version,
            run_id: Arc::clone(run_id),
            message: message.to_owned(),
        });
        ring.next += 1;
        ring.bytes += line.message.len();
        ring.lines.push_back(Arc::clone(&line));
        while ring.lines.len() > KEPT || (ring.bytes > KEPT_BYTES && ring.lines.len() > 1) {
            if let Some(old) = ring.lines.pop_front() {
                ring.bytes -= old.message.len();
            }
        }
        // No follower is not an error.
        let _ = ring.live.send(line);
    }

    /// The kept lines of `agent` after `after` (a sequence number; 0 for all), oldest first,
    /// at most `limit`; and, to follow it, a receiver of the lines that come next. Taken
    /// together, so no line falls between the two.
    pub fn read(
        &self,
        agent: &str,
        after: u64,
        limit: usize,
    ) -> (Vec<Arc<LogLine>>, broadcast::Receiver<Arc<LogLine>>) {
        let mut rings = self.lock();
        let ring = rings.entry(Arc::from(agent)).or_insert_with(Ring::new);
        let lines: Vec<_> = ring
            .lines
            .iter()
            .filter(|l| l.seq > after)
            .cloned()
            .collect();
        let skip = lines.len().saturating_sub(limit);
        (
            lines.into_iter().skip(skip).collect(),
            ring.live.subscribe(),
        )
    }

    /// Drops a deleted agent's lines (its followers see the stream end).
    pub fn forget(&self, agent: &str) {
        self.lock().remove(agent);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Ring>> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_in_bytes_too() {
        let logs = AgentLogs::default();
        let (agent, run): (Arc<str>, Arc<str>) = ("a".into(), "run_1".into());
        let big = "x".repeat(64 * 1024);
        for _ in 0..100 {
            logs.push(&agent, "info", "stdout", 1, &run, &big);
        }
        let (kept, _) = logs.read("a", 0, usize::MAX);
        assert_eq!(kept.len(), KEPT_BYTES / big.len());
        assert_eq!(kept.last().unwrap().seq, 100);
    }

    #[test]
    fn the_ring_keeps_the_newest_lines_and_resumes_after_a_sequence_number() {
        let logs = AgentLogs::default();
        let (agent, run): (Arc<str>, Arc<str>) = ("a".into(), "run_1".into());
        for i in 0..KEPT + 5 {
            logs.push(&agent, "info", "log", 1, &run, &format!("line {i}"));
        }
        let (all, _) = logs.read("a", 0, usize::MAX);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].message, "line 5");
        assert_eq!(all.last().unwrap().seq, (KEPT + 5) as u64);
        let (after, mut live) = logs.read("a", (KEPT + 3) as u64, usize::MAX);
        assert_eq!(after.len(), 2);
        let (last, _) = logs.read("a", 0, 3);
        assert_eq!(last.len(), 3, "the newest 3");
        assert_eq!(last[2].seq, (KEPT + 5) as u64);
        logs.push(&agent, "warn", "log", 1, &run, "next");
        assert_eq!(live.try_recv().unwrap().message, "next");
        logs.forget("a");
        assert!(logs.read("a", 0, usize::MAX).0.is_empty());
    }
}
