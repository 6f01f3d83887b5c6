//! Live events of the runs executing here, for `GET …/runs/{id}/events`: the recorder hands
//! over each log line and progress report as it sees them, the worker says when an attempt
//! starts, and the writer says when the run's end is committed. A follower subscribes, then
//! reads the stored run, so it misses nothing between the two.
//!
//! The lines of the attempt running now are kept here too (as the recorder keeps them, the
//! same bound): a follower that reconnects mid-run gets them again, which the store cannot
//! give before the run ends.

use std::collections::HashMap;
use std::sync::Mutex;

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
    /// The run's end is committed: read the store.
    Stored,
}

struct Channel {
    sender: broadcast::Sender<RunEvent>,
    lines: Vec<LogLine>,
    /// An attempt runs now (its lines are kept here until its end is stored).
    running: bool,
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
            sender: broadcast::channel(BUFFER).0,
            lines: Vec::new(),
            running: false,
        })
    }

    /// Events of run `id` from now on, and the lines its running attempt has logged so far.
    pub fn subscribe(&self, id: &str) -> (broadcast::Receiver<RunEvent>, Vec<LogLine>) {
        let mut runs = self.lock();
        let channel = Self::channel(&mut runs, id);
        (channel.sender.subscribe(), channel.lines.clone())
    }

    /// The lines the running attempt of `id` has logged so far.
    pub fn lines(&self, id: &str) -> Vec<LogLine> {
        self.lock()
            .get(id)
            .map(|c| c.lines.clone())
            .unwrap_or_default()
    }

    pub(crate) fn started(&self, id: &str) {
        let mut runs = self.lock();
        let channel = Self::channel(&mut runs, id);
        channel.lines.clear();
        channel.running = true;
        let _ = channel.sender.send(RunEvent::Started);
    }

    pub(crate) fn progress(&self, id: &str, fraction: f64, message: &str) {
        if let Some(channel) = self.lock().get(id) {
            let _ = channel.sender.send(RunEvent::Progress {
                fraction,
                message: message.to_owned(),
            });
        }
    }

    pub(crate) fn log(&self, id: &str, line: LogLine) {
        if let Some(channel) = self.lock().get_mut(id) {
            channel.lines.push(line.clone());
            let index = channel.lines.len();
            let _ = channel.sender.send(RunEvent::Log { index, line });
        }
    }

    /// The run's end or delivery was committed. An ended run's channel goes: its followers
    /// read the rest from the store.
    pub(crate) fn ended(&self, id: &str) {
        let mut runs = self.lock();
        if let Some(channel) = runs.get_mut(id) {
            channel.running = false;
            let _ = channel.sender.send(RunEvent::Stored);
            if channel.sender.receiver_count() == 0 {
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
            .is_some_and(|c| !c.running && c.sender.receiver_count() == 0)
        {
            runs.remove(id);
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
        let (live, _) = events.subscribe("r1");
        drop(live);
        events.unsubscribe("r1");
        assert!(events.lock().is_empty());

        // A running run keeps its lines for followers that come later.
        events.started("r2");
        events.log("r2", line("one"));
        let (mut live, lines) = events.subscribe("r2");
        assert_eq!(lines.len(), 1);
        events.log("r2", line("two"));
        assert!(matches!(
            live.try_recv(),
            Ok(RunEvent::Log { index: 2, .. })
        ));
        drop(live);
        events.unsubscribe("r2");
        assert_eq!(events.lines("r2").len(), 2, "still running: kept");
        events.ended("r2");
        assert!(events.lock().is_empty(), "ended, nobody follows: gone");

        // A new attempt starts its lines afresh.
        events.started("r3");
        events.log("r3", line("a"));
        events.started("r3");
        assert!(events.lines("r3").is_empty());
    }
}
