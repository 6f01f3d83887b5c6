//! Every background loop of a host, started under one cancellation token and stopped in a
//! defined order.
//!
//! Each loop belongs to a [`Stage`]; stopping a stage cancels its token (a child of the
//! host's one token) and waits for its tasks and threads. [`Background::stop`] goes
//! through the stages in their order, so that nothing a later stage serves is gone while an
//! earlier one still needs it:
//!
//! 1. [`Stage::Intake`]: what starts new work — the run dispatcher, the sweeper and
//!    reconciler, the start-up load, following other hosts. The starting of runs stops
//!    before, when the grace period begins (`Runs::drain`); the rest goes on through it.
//! 2. [`Stage::Runs`]: runs executing; they get the grace period to finish, then stop and
//!    go back to the queue.
//! 3. [`Stage::Delivery`]: the pusher and the key-use flusher (which flushes once more).
//!    Pushes in flight get the rest of the grace period; past it they are cut
//!    ([`Background::grace_over`]) and sent again later.
//! 4. [`Stage::Writes`]: the run queue's writer, which commits every write accepted before
//!    it stopped.
//! 5. [`Stage::Engine`]: the epoch ticker, last, so a guest stopped in stage 2 still yields.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A group of background work stopped together; see the module docs for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// What starts new work.
    Intake,
    /// Runs executing.
    Runs,
    /// Push deliveries and the key-use flusher.
    Delivery,
    /// The run queue's writer.
    Writes,
    /// The epoch ticker.
    Engine,
}

const STAGES: [Stage; 5] = [
    Stage::Intake,
    Stage::Runs,
    Stage::Delivery,
    Stage::Writes,
    Stage::Engine,
];

/// How long a stage past the grace period may take to stop before the host gives up on it:
/// enough to commit a last batch of writes.
const LAST_WORDS: Duration = Duration::from_secs(5);

struct Group {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// See the module docs. Cheap to clone: clones share the stages.
#[derive(Clone)]
pub struct Background {
    root: CancellationToken,
    groups: Arc<[Group]>,
    /// Cancelled when the stop's grace period ends.
    grace_over: CancellationToken,
}

impl Default for Background {
    fn default() -> Self {
        let root = CancellationToken::new();
        let groups = STAGES
            .iter()
            .map(|_| Group {
                token: root.child_token(),
                tracker: TaskTracker::new(),
            })
            .collect();
        let grace_over = root.child_token();
        Self {
            root,
            groups,
            grace_over,
        }
    }
}

impl Background {
    fn group(&self, stage: Stage) -> &Group {
        &self.groups[stage as usize]
    }

    /// The token of `stage`: cancelled when the stage stops.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.group(stage).token.clone()
    }

    /// Cancelled when the grace period of the host's stop ends: work that a stopping stage
    /// lets finish (a push in flight) is cut there, so that the stop keeps to its period.
    pub fn grace_over(&self) -> CancellationToken {
        self.grace_over.clone()
    }

    /// Whether the host is stopping (any stage has been told to stop).
    pub fn stopping(&self) -> bool {
        self.group(Stage::Intake).token.is_cancelled()
    }

    /// Runs the task `make(token)` in `stage`; it should end soon after the token is
    /// cancelled.
    pub fn spawn<F>(&self, stage: Stage, make: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let group = self.group(stage);
        group.tracker.spawn(make(group.token.clone()));
    }

    /// Runs `body(token)` on an OS thread named `name` in `stage` (for loops that must not
    /// be tokio tasks, like the epoch ticker); it should return soon after the token is
    /// cancelled.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn thread(
        &self,
        stage: Stage,
        name: &str,
        body: impl FnOnce(CancellationToken) + Send + 'static,
    ) -> std::io::Result<()> {
        let group = self.group(stage);
        let (running, token) = (group.tracker.token(), group.token.clone());
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _running = running;
                body(token);
            })
            .map(drop)
    }

    /// Waits until the tasks of `stage` have ended by themselves, at most until `deadline`,
    /// without telling them to stop; `true` when they all ended.
    pub(crate) async fn settle(&self, stage: Stage, deadline: Instant) -> bool {
        let group = self.group(stage);
        group.tracker.close();
        tokio::time::timeout_at(deadline, group.tracker.wait())
            .await
            .is_ok()
    }

    /// Stops every stage, in order: each is cancelled and waited for, the waits bounded by
    /// `deadline` (and, past it, by a few seconds each, for last writes).
    pub async fn stop(&self, deadline: Instant) {
        let over = self.grace_over.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            over.cancel();
        });
        for stage in STAGES {
            let group = self.group(stage);
            group.token.cancel();
            group.tracker.close();
            let bound = deadline.max(Instant::now()) + LAST_WORDS;
            if tokio::time::timeout_at(bound, group.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    ?stage,
                    "background work did not stop in time; leaving it behind"
                );
            }
        }
        timer.abort();
        self.root.cancel();
    }

    /// Tells every stage to stop at once (when the host could not start), without waiting.
    pub fn cancel_all(&self) {
        self.root.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Stages stop in their order: a later stage's task still runs while an earlier one
    /// stops, and the thread of the last stage stops last.
    #[tokio::test]
    async fn stages_stop_in_order() {
        let background = Background::default();
        let stopped = Arc::new(Mutex::new(Vec::new()));
        for stage in [Stage::Writes, Stage::Intake, Stage::Delivery] {
            let stopped = Arc::clone(&stopped);
            background.spawn(stage, move |token| async move {
                token.cancelled().await;
                stopped.lock().unwrap().push(stage);
            });
        }
        let seen = Arc::clone(&stopped);
        background
            .thread(Stage::Engine, "test-ticker", move |token| {
                while !token.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                seen.lock().unwrap().push(Stage::Engine);
            })
            .unwrap();
        background
            .stop(Instant::now() + Duration::from_secs(5))
            .await;
        assert_eq!(
            *stopped.lock().unwrap(),
            [Stage::Intake, Stage::Delivery, Stage::Writes, Stage::Engine]
        );
        assert!(background.stopping());
    }

    /// Work that outlives its stage's token is cut where the grace period ends, not after
    /// the few seconds the stop gives a stage past it.
    #[tokio::test]
    async fn work_left_to_finish_is_cut_when_the_grace_period_ends() {
        let background = Background::default();
        let over = background.grace_over();
        let (cut, seen) = tokio::sync::oneshot::channel();
        background.spawn(Stage::Delivery, move |_| async move {
            over.cancelled().await;
            let _ = cut.send(Instant::now());
        });
        let deadline = Instant::now() + Duration::from_millis(300);
        background.stop(deadline).await;
        let cut_at = seen.await.expect("the work was cut");
        assert!(cut_at >= deadline, "cut before the grace period ended");
        assert!(
            Instant::now() < deadline + LAST_WORDS,
            "the stop waited past the grace period for work it could cut"
        );
    }

    #[tokio::test]
    async fn settle_waits_for_work_that_ends_by_itself() {
        let background = Background::default();
        background.spawn(Stage::Runs, |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        assert!(
            background
                .settle(Stage::Runs, Instant::now() + Duration::from_secs(5))
                .await
        );
        background.spawn(Stage::Runs, |_| std::future::pending());
        assert!(
            !background
                .settle(Stage::Runs, Instant::now() + Duration::from_millis(20))
                .await
        );
    }
}
