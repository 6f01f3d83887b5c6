//! One agent's runs waiting for room, in order, with the count the per-agent queue bound is
//! checked against.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One agent's runs waiting for room. A drainer task per agent with waiting runs takes
/// them in order as the agent's gate (and a worker slot) admits them, so an agent at its
/// limit never holds up the runs of others.
#[derive(Default)]
pub(super) struct AgentQueue {
    ids: Mutex<VecDeque<String>>,
    /// Runs waiting plus places reserved by submissions not yet committed: what the
    /// per-agent bound is checked against.
    places: AtomicUsize,
    /// A drainer is running for this queue.
    draining: AtomicBool,
}

impl AgentQueue {
    /// Reserves a place if fewer than `bound` are taken.
    pub(super) fn reserve(&self, bound: usize) -> bool {
        self.places
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < bound).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a reserved place back.
    pub(super) fn release(&self) {
        let _ = self
            .places
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Adds a run (taking a place unless one was reserved for it); `true` when the queue
    /// needs a drainer started.
    pub(super) fn push(&self, id: String, take_place: bool) -> bool {
        if take_place {
            self.places.fetch_add(1, Ordering::AcqRel);
        }
        self.lock().push_back(id);
        !self.draining.swap(true, Ordering::AcqRel)
    }

    /// Takes a run out (it will not start); `true` if it was waiting here.
    pub(super) fn remove(&self, id: &str) -> bool {
        let mut ids = self.lock();
        let Some(at) = ids.iter().position(|queued| queued == id) else {
            return false;
        };
        ids.remove(at);
        drop(ids);
        self.release();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next run, or `None` when the queue is empty (and then the drainer stops).
    pub(super) fn pop(&self) -> Option<String> {
        loop {
            if let Some(id) = self.lock().pop_front() {
                self.release();
                return Some(id);
            }
            self.draining.store(false, Ordering::Release);
            // A push between the pop and the store above found `draining` still set and
            // started no drainer: take the queue back if it has runs again.
            if self.lock().is_empty() || self.draining.swap(true, Ordering::AcqRel) {
                return None;
            }
        }
    }
}
