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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

/// How often the epoch advances. A guest spinning on CPU yields to the async runtime at
/// least this often, which is what lets timeouts and disconnects cut it off.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

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
    state: Mutex<LaneState>,
    /// Whether there are no lanes at all (`--cpu-lanes 0`): checked without the lock.
    off: bool,
}

struct LaneState {
    /// Each lane's holder and when it last ticked.
    held: Vec<Option<(u64, Instant)>>,
    /// Guests waiting for a lane, first come first served.
    queue: VecDeque<u64>,
}

impl Lanes {
    fn new(lanes: usize) -> Self {
        Self {
            state: Mutex::new(LaneState {
                held: vec![None; lanes],
                queue: VecDeque::new(),
            }),
            off: lanes == 0,
        }
    }

    fn off(&self) -> bool {
        self.off
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` holds a lane now: one handed to it, or a free one when no one is ahead
    /// of it in the queue. A lane whose holder has not ticked for two ticks is free. Without
    /// a lane, `id` is in line afterwards: a lane handed to it may have gone stale before it
    /// looked (its task was not polled for two ticks) and been taken by the first in line,
    /// which had taken `id` out of the queue when it handed the lane over.
    fn take(&self, id: u64) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(lane) = state.held.iter_mut().flatten().find(|(h, _)| *h == id) {
            lane.1 = now;
            state.queue.retain(|w| *w != id);
            return true;
        }
        let free = state.held.iter().position(|lane| match lane {
            None => true,
            Some((_, ticked)) => now.duration_since(*ticked) > EPOCH_TICK * 2,
        });
        let first = state.queue.front().is_none_or(|first| *first == id);
        let (Some(lane), true) = (free, first) else {
            if !state.queue.contains(&id) {
                state.queue.push_back(id);
            }
            return false;
        };
        state.held[lane] = Some((id, now));
        state.queue.retain(|w| *w != id);
        true
    }

    /// `id` goes on computing: keeps its lane when no one waits, else hands it to the first
    /// in line and queues up itself. Returns whether it kept it (or found a free one).
    fn next_slice(&self, id: u64) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let mine = state
            .held
            .iter()
            .position(|lane| lane.is_some_and(|(holder, _)| holder == id));
        match (mine, state.queue.pop_front()) {
            (Some(lane), None) => {
                state.held[lane] = Some((id, now));
                true
            }
            (Some(lane), Some(next)) => {
                state.held[lane] = Some((next, now));
                state.queue.push_back(id);
                false
            }
            (None, first) => {
                if let Some(first) = first {
                    state.queue.push_front(first);
                }
                if !state.queue.is_empty() {
                    if !state.queue.contains(&id) {
                        state.queue.push_back(id);
                    }
                    return false;
                }
                drop(state);
                self.take(id)
            }
        }
    }

    /// `id` stops computing, or its call ends: its lane and its place in line go.
    fn release(&self, id: u64) {
        let mut state = self.lock();
        for lane in &mut state.held {
            if lane.is_some_and(|(holder, _)| holder == id) {
                *lane = None;
            }
        }
        state.queue.retain(|w| *w != id);
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
    /// The epoch callback runs as a call into the host too (wasmtime wraps the libcall in
    /// the same hooks): its own wait, for a lane, is not a wait on I/O.
    in_tick: bool,
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
        if std::mem::take(&mut self.in_tick) {
            return;
        }
        if TICKS.load(Ordering::Relaxed) != self.entered_host {
            self.waited = true;
        }
    }

    /// What a guest that met its deadline awaits before it continues: nothing when it was
    /// not computing (`None`: it goes on with a fresh first slice), a yield when it may go
    /// on, else a wait for a lane.
    pub(crate) fn at_tick(&mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        self.in_tick = true;
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
        if lanes.next_slice(id) {
            return Some(Box::pin(tokio::task::yield_now()));
        }
        Some(Box::pin(async move {
            // In line: the lane is handed over at its holder's next tick, or found free when
            // the holder went on to wait for I/O or ended; looked at twice a tick.
            while !lanes.take(id) {
                tokio::time::sleep(EPOCH_TICK / 2).await;
            }
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
    fn lanes_are_handed_on_in_turn_and_freed_when_their_holder_stops_ticking() {
        let lanes = Lanes::new(1);
        assert!(lanes.take(1));
        assert!(lanes.next_slice(1), "no one waits: it keeps its lane");
        assert!(!lanes.next_slice(2), "held: 2 queues up");
        assert!(!lanes.next_slice(3), "3 behind 2");
        assert!(!lanes.next_slice(1), "1 hands over and queues behind 3");
        assert!(
            !lanes.take(3),
            "3 is first in line, but 2 holds the lane now"
        );
        assert!(lanes.take(2), "handed to 2");
        assert!(!lanes.next_slice(2), "2 hands over to 3");
        assert!(lanes.take(3));
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(lanes.take(1), "3 stopped ticking: first in line takes it");
        lanes.release(1);
        lanes.release(2);
        assert!(lanes.take(4), "released, no one in line");
    }

    /// A lane handed to a guest whose task is not polled for two ticks goes stale, and the
    /// guest that handed it over takes it back. The first guest then only polled `take`,
    /// which did not put it back in line: with two others computing, the queue was never
    /// empty and it waited until its deadline.
    #[test]
    fn a_guest_too_slow_to_take_the_lane_handed_to_it_gets_a_later_turn() {
        let lanes = Lanes::new(1);
        assert!(lanes.take(1));
        assert!(!lanes.next_slice(2), "2 waits");
        assert!(!lanes.next_slice(1), "1 hands the lane to 2");
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(lanes.take(1), "2 never looked: the stale lane goes to 1");
        assert!(!lanes.next_slice(3), "3 computes too, and waits");
        let mut turns = 0;
        while !lanes.take(2) {
            turns += 1;
            assert!(turns < 10, "2 is never given the lane again");
            // 1 and 3 take turns on the lane, each taking it when it is handed over.
            for id in [1, 3] {
                if lanes.take(id) {
                    lanes.next_slice(id);
                }
            }
        }
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
