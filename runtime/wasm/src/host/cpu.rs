//! Fair CPU: guests that compute past their first slice take turns on a few lanes, so they
//! cannot fill every worker thread while calls that wait, and new requests, queue behind
//! them.
//!
//! The async runtime is cooperative: a guest computing on CPU keeps its worker thread for a
//! whole epoch tick before it yields. With such guests on every worker, every other task —
//! a new request, a call whose model just answered — waits behind them, a tick per guest
//! ahead of it in the queue. So a guest that reaches the end of a slice continues only on a
//! lane: there are one fewer lanes than cores (at least one), and a guest without a lane
//! waits for one off the run queue, taking no worker. A lane's holder hands it on at its
//! next tick when others wait (turns, roughly round robin), and a lane whose holder has not
//! ticked for two ticks (it went on to wait for I/O, or ended) is free: nothing else has
//! to tell the lanes when a guest stops computing.
//!
//! Calls that never compute for a whole slice never see the lanes. Nor does a guest whose
//! deadline passed while it waited: the epoch is wall-clock time, so a guest back from a
//! one-second wait on a model meets its deadline at its first instruction. What tells the
//! two apart is how long since the guest last resumed: a guest computing since then reaches
//! its next deadline within a tick or two; one that waited, much later.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::engine::EPOCH_TICK;

/// The lanes of this process: one per core but one, at least one.
static LANES: LazyLock<Lanes> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Lanes::new(cores.saturating_sub(1).max(1))
});

static NEXT_TURN: AtomicU64 = AtomicU64::new(1);

/// Longer than this since a guest last resumed, and it was waiting, not computing: a
/// computing guest meets its deadline within one tick of the last (two for the first slice),
/// give or take the thread's scheduling.
const WAITED: Duration = Duration::from_millis(30);

/// The instant times are counted from, so they fit an atomic.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

struct Lanes {
    /// Each lane's holder and when it last ticked.
    held: Mutex<Vec<Option<(u64, Instant)>>>,
    /// Guests waiting for a lane.
    waiting: AtomicUsize,
}

impl Lanes {
    fn new(lanes: usize) -> Self {
        Self {
            held: Mutex::new(vec![None; lanes]),
            waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<(u64, Instant)>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a free lane for `id`, if there is one.
    fn take(&self, id: u64) -> bool {
        let mut held = self.lock();
        let now = Instant::now();
        let free = held.iter().position(|lane| match lane {
            None => true,
            Some((_, ticked)) => now.duration_since(*ticked) > EPOCH_TICK * 2,
        });
        if let Some(lane) = free {
            held[lane] = Some((id, now));
        }
        free.is_some()
    }

    fn release(&self, id: u64) {
        for lane in self.lock().iter_mut() {
            if lane.is_some_and(|(holder, _)| holder == id) {
                *lane = None;
            }
        }
    }
}

/// Counts a guest among the waiting until dropped, also when its call ends while it waits.
struct Waiting(&'static Lanes);

impl Waiting {
    fn new(lanes: &'static Lanes) -> Self {
        lanes.waiting.fetch_add(1, Ordering::Relaxed);
        Self(lanes)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call's place in the turns; it takes part only once it computes past a slice.
pub(crate) struct Turn {
    id: Option<u64>,
    /// When the guest last resumed (began its slice): at the start of the call, and when
    /// the wait at a tick ends.
    resumed: Arc<AtomicU64>,
}

impl Default for Turn {
    fn default() -> Self {
        Self {
            id: None,
            resumed: Arc::new(AtomicU64::new(now_ns())),
        }
    }
}

impl Turn {
    /// The call starts now (a standby instance was made earlier).
    pub(crate) fn restart(&self) {
        self.resumed.store(now_ns(), Ordering::Relaxed);
    }

    /// What a guest that met its deadline awaits before it continues: nothing when it was
    /// not computing (`None`: it goes on with a fresh first slice), a yield when it may go
    /// on, else a wait for a lane.
    pub(crate) fn at_tick(&mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let id = *self
            .id
            .get_or_insert_with(|| NEXT_TURN.fetch_add(1, Ordering::Relaxed));
        let lanes = &*LANES;
        let resumed = Arc::clone(&self.resumed);
        let since = Duration::from_nanos(now_ns().saturating_sub(resumed.load(Ordering::Relaxed)));
        if since > WAITED {
            // Its deadline passed while it waited: not computing; a lane it held is stale.
            lanes.release(id);
            resumed.store(now_ns(), Ordering::Relaxed);
            return None;
        }
        let resume = move || resumed.store(now_ns(), Ordering::Relaxed);
        {
            let mut held = lanes.lock();
            let mine = held
                .iter()
                .position(|lane| lane.is_some_and(|(holder, _)| holder == id));
            if let Some(lane) = mine {
                if lanes.waiting.load(Ordering::Relaxed) == 0 {
                    held[lane] = Some((id, Instant::now()));
                    return Some(Box::pin(async move {
                        tokio::task::yield_now().await;
                        resume();
                    }));
                }
                // Others wait: hand the lane on and queue up behind them.
                held[lane] = None;
            }
        }
        if lanes.waiting.load(Ordering::Relaxed) == 0 && lanes.take(id) {
            return Some(Box::pin(async move {
                tokio::task::yield_now().await;
                resume();
            }));
        }
        let waiting = Waiting::new(lanes);
        Some(Box::pin(async move {
            // Not woken by the holder (it may be waiting on I/O and never tick again):
            // looked at twice a tick.
            while !lanes.take(id) {
                tokio::time::sleep(EPOCH_TICK / 2).await;
            }
            drop(waiting);
            tokio::task::yield_now().await;
            resume();
        }))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            LANES.release(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_handed_on_and_freed_when_their_holder_stops_ticking() {
        let lanes = Lanes::new(1);
        assert!(lanes.take(1));
        assert!(!lanes.take(2), "one lane, held");
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(lanes.take(2), "the holder stopped ticking");
        lanes.release(2);
        assert!(lanes.take(3), "released");
    }
}
