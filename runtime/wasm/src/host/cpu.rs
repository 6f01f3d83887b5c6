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
//! wait on a model meets its deadline at its first instruction. What tells the two apart is
//! the store's call hook: a call into the host during which the epoch ticked was a wait,
//! and the guest starts a fresh slice. (Telling them apart by the time since the guest last
//! resumed was tried first: a guest making 1 ms requests in a row meets a deadline every
//! tick like a computing one, took a lane, and guests calling an API took turns: 937
//! requests/s where 15,653 went through without lanes.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use crate::engine::EPOCH_TICK;

/// The lanes of this process: [`set_lanes`] if called first, else one per core but one, at
/// least one.
static LANES: LazyLock<Lanes> = LazyLock::new(|| {
    let lanes = *CONFIGURED.get_or_init(default_lanes);
    Lanes::new(lanes)
});

static CONFIGURED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// One per core but one, at least one.
#[must_use]
pub fn default_lanes() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.saturating_sub(1).max(1)
}

/// Sets the number of lanes (0: no lanes, guests compute at will); before the first guest
/// runs. Returns false when it was too late.
pub fn set_lanes(lanes: usize) -> bool {
    CONFIGURED.set(lanes).is_ok()
}

static NEXT_TURN: AtomicU64 = AtomicU64::new(1);

/// Epoch ticks so far, counted by the ticker beside the engine's epoch (which wasmtime does
/// not expose for reading): one atomic load tells whether a call into the host spanned a
/// tick.
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Counts one epoch tick; called by the epoch ticker.
pub(crate) fn ticked() {
    TICKS.fetch_add(1, Ordering::Relaxed);
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

    fn off(&self) -> bool {
        self.lock().is_empty()
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
#[derive(Default)]
pub(crate) struct Turn {
    id: Option<u64>,
    /// The tick at which the guest last called into the host.
    entered_host: u64,
    /// Whether a call into the host spanned a tick since the guest's last deadline.
    waited: bool,
}

impl Turn {
    /// The call starts now (a standby instance was made earlier).
    pub(crate) fn restart(&mut self) {
        self.waited = false;
    }

    /// The guest calls into the host (the store's call hook).
    pub(crate) fn entering_host(&mut self) {
        self.entered_host = TICKS.load(Ordering::Relaxed);
    }

    /// The guest is back from the host: a tick passed meanwhile, so it waited.
    pub(crate) fn leaving_host(&mut self) {
        if TICKS.load(Ordering::Relaxed) != self.entered_host {
            self.waited = true;
        }
    }

    /// What a guest that met its deadline awaits before it continues: nothing when it was
    /// not computing (`None`: it goes on with a fresh first slice), a yield when it may go
    /// on, else a wait for a lane.
    pub(crate) fn at_tick(&mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let lanes = &*LANES;
        if lanes.off() {
            return Some(Box::pin(tokio::task::yield_now()));
        }
        let id = *self
            .id
            .get_or_insert_with(|| NEXT_TURN.fetch_add(1, Ordering::Relaxed));
        if std::mem::take(&mut self.waited) {
            // Its deadline passed while it waited: not computing; a lane it held is stale.
            lanes.release(id);
            return None;
        }
        {
            let mut held = lanes.lock();
            let mine = held
                .iter()
                .position(|lane| lane.is_some_and(|(holder, _)| holder == id));
            if let Some(lane) = mine {
                if lanes.waiting.load(Ordering::Relaxed) == 0 {
                    held[lane] = Some((id, Instant::now()));
                    return Some(Box::pin(tokio::task::yield_now()));
                }
                // Others wait: hand the lane on and queue up behind them.
                held[lane] = None;
            }
        }
        if lanes.waiting.load(Ordering::Relaxed) == 0 && lanes.take(id) {
            return Some(Box::pin(tokio::task::yield_now()));
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

    #[test]
    fn a_call_into_the_host_across_a_tick_is_a_wait_not_computing() {
        let mut turn = Turn::default();
        turn.entering_host();
        ticked();
        turn.leaving_host();
        assert!(
            turn.at_tick().is_none(),
            "back from a wait: a fresh slice, no lane"
        );
        assert!(!turn.waited, "counted once");
    }
}
