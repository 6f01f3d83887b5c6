//! Live events of the runs executing here, for `GET …/runs/{id}/events`: the recorder hands
//! over each log line, progress report and emitted chunk of output as it sees them, the
//! worker says when an attempt starts, and the writer says when the run's end is committed.
//! A follower subscribes, then reads the stored run, so it misses nothing between the two.
//!
//! The lines and the emitted output of the attempt running now are kept here too (the lines
//! within the recorder's bound, the output within the deployment's output limit, which the
//! host enforces as the guest emits): a follower that reconnects mid-run gets what it missed,
//! which the store cannot give before the run ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gust_model::LogLine;
use tokio::sync::broadcast;

/// Events a slow follower may fall behind by before it re-reads the stored run.
const BUFFER: usize = 256;

/// Something that happened to a run.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// An attempt started.
    Started,
    /// The guest reported progress.
    Progress { fraction: f64, message: String },
    /// The guest logged a line (or wrote one to stdout or stderr); `index` counts the
    /// attempt's lines from 1.
    Log { index: usize, line: LogLine },
    /// The guest emitted a chunk of output; `offset` is where it starts in the attempt's
    /// output (the bytes emitted before it).
    Chunk { offset: usize, bytes: Arc<[u8]> },
    /// The run's end is committed: read the store.
    Stored,
}

struct Channel {
    /// Made for the first follower: most runs have none, and a channel's buffer costs an
    /// allocation of [`BUFFER`] slots (a broadcast has nothing to give a receiver that
    /// subscribes later anyway: it gets what is kept here).
    sender: Option<broadcast::Sender<RunEvent>>,
    lines: Vec<LogLine>,
    /// The chunks the attempt emitted, one after the other.
    emitted: Vec<u8>,
    /// An attempt runs now (its lines and output are kept here until its end is stored).
    running: bool,
}

/// How far a follower has come in the running attempt: the log lines and the bytes of
/// emitted output it has had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Log lines, counted from the attempt's first.
    pub lines: usize,
    /// Bytes of output, from the attempt's first chunk.
    pub bytes: usize,
}

/// What the running attempt of a run has reported past a [`Seen`].
#[derive(Debug, Default)]
pub struct Kept {
    /// The lines after `Seen::lines`: the first is line `Seen::lines + 1`.
    pub lines: Vec<LogLine>,
    /// The output emitted after `Seen::bytes`.
    pub emitted: Vec<u8>,
}

/// See the module docs.
#[derive(Default)]
pub struct RunEvents {
    runs: Mutex<HashMap<String, Channel>>,
}

impl RunEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel<'a>(runs: &'a mut HashMap<String, Channel>, id: &str) -> &'a mut Channel {
        runs.entry(id.to_owned()).or_insert_with(|| Channel {
            sender: None,
            lines: Vec::new(),
            emitted: Vec::new(),
            running: false,
        })
    }

    /// Events of run `id` from now on, and what its running attempt has reported so far
    /// past `seen`.
    pub fn subscribe(&self, id: &str, seen: Seen) -> (broadcast::Receiver<RunEvent>, Kept) {
        let mut runs = self.lock();
        let channel = Self::channel(&mut runs, id);
        let live = channel
            .sender
            .get_or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe();
        (live, channel.kept(seen))
    }

    /// What the running attempt of `id` has reported so far past `seen`.
    pub fn kept(&self, id: &str, seen: Seen) -> Kept {
        self.lock()
            .get(id)
            .map(|c| c.kept(seen))
            .unwrap_or_default()
    }

    pub(crate) fn started(&self, id: &str) {
        let mut runs = self.lock();
        let channel = Self::channel(&mut runs, id);
        channel.lines.clear();
        channel.emitted.clear();
        channel.running = true;
        channel.send(|| RunEvent::Started);
    }

    pub(crate) fn progress(&self, id: &str, fraction: f64, message: &str) {
        if let Some(channel) = self.lock().get(id) {
            channel.send(|| RunEvent::Progress {
                fraction,
                message: message.to_owned(),
            });
        }
    }

    pub(crate) fn log(&self, id: &str, line: LogLine) {
        if let Some(channel) = self.lock().get_mut(id) {
            channel.lines.push(line);
            let index = channel.lines.len();
            channel.send(|| RunEvent::Log {
                index,
                line: channel.lines[index - 1].clone(),
            });
        }
    }

    pub(crate) fn chunk(&self, id: &str, chunk: &[u8]) {
        if let Some(channel) = self.lock().get_mut(id) {
            let offset = channel.emitted.len();
            channel.emitted.extend_from_slice(chunk);
            channel.send(|| RunEvent::Chunk {
                offset,
                bytes: Arc::from(chunk),
            });
        }
    }

    /// The run's end or delivery was committed. An ended run's channel goes: its followers
    /// read the rest from the store.
    pub(crate) fn ended(&self, id: &str) {
        let mut runs = self.lock();
        if let Some(channel) = runs.get_mut(id) {
            channel.running = false;
            channel.send(|| RunEvent::Stored);
            if channel.followers() == 0 {
                runs.remove(id);
            }
        }
    }

    /// A follower left: the channel of a run that is not running and that nobody else
    /// follows goes.
    pub fn unsubscribe(&self, id: &str) {
        let mut runs = self.lock();
        if runs
            .get(id)
            .is_some_and(|c| !c.running && c.followers() == 0)
        {
            runs.remove(id);
        }
    }
}

impl Channel {
    /// Sends the event `make` makes to the followers, if there are any.
    fn send(&self, make: impl FnOnce() -> RunEvent) {
        if let Some(sender) = self.sender.as_ref().filter(|s| s.receiver_count() > 0) {
            let _ = sender.send(make());
        }
    }

    fn followers(&self) -> usize {
        self.sender
            .as_ref()
            .map_or(0, broadcast::Sender::receiver_count)
    }

    fn kept(&self, seen: Seen) -> Kept {
        Kept {
            lines: self.lines.iter().skip(seen.lines).cloned().collect(),
            emitted: self.emitted.get(seen.bytes..).unwrap_or_default().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str) -> LogLine {
        LogLine {
            ts: 0,
            level: "info".into(),
            message: message.into(),
        }
    }

    #[test]
    fn channels_go_when_their_run_is_over_and_nobody_follows() {
        let events = RunEvents::default();
        // A follower of a run that is not running: gone when it leaves.
        let (live, _) = events.subscribe("r1", Seen::default());
        drop(live);
        events.unsubscribe("r1");
        assert!(events.lock().is_empty());

        // A running run keeps its lines for followers that come later.
        events.started("r2");
        events.log("r2", line("one"));
        let (mut live, kept) = events.subscribe("r2", Seen::default());
        assert_eq!(kept.lines.len(), 1);
        events.log("r2", line("two"));
        assert!(matches!(
            live.try_recv(),
            Ok(RunEvent::Log { index: 2, .. })
        ));
        drop(live);
        events.unsubscribe("r2");
        assert_eq!(
            events.kept("r2", Seen::default()).lines.len(),
            2,
            "still running: kept"
        );
        events.ended("r2");
        assert!(events.lock().is_empty(), "ended, nobody follows: gone");

        // A new attempt starts its lines afresh.
        events.started("r3");
        events.log("r3", line("a"));
        events.chunk("r3", b"old");
        events.started("r3");
        let kept = events.kept("r3", Seen::default());
        assert!(kept.lines.is_empty() && kept.emitted.is_empty());
    }

    #[test]
    fn the_running_attempt_s_output_is_kept_for_followers_that_come_later() {
        let events = RunEvents::default();
        events.started("r");
        events.chunk("r", b"Hello, ");
        let (mut live, kept) = events.subscribe("r", Seen::default());
        assert_eq!(kept.emitted, b"Hello, ");
        events.chunk("r", b"world");
        match live.try_recv() {
            Ok(RunEvent::Chunk { offset, bytes }) => {
                assert_eq!((offset, &*bytes), (7, &b"world"[..]));
            }
            other => panic!("{other:?}"),
        }
        // A follower that had the first 9 bytes gets the rest only.
        let seen = Seen { lines: 0, bytes: 9 };
        assert_eq!(events.kept("r", seen).emitted, b"rld");
        // One that claims more than there is gets nothing, not a panic.
        let seen = Seen {
            lines: 5,
            bytes: 99,
        };
        let kept = events.kept("r", seen);
        assert!(kept.lines.is_empty() && kept.emitted.is_empty());
    }
}
