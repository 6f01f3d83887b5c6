//! Counters an operator and a test can read at `GET /v1/stats`.
//!
//! Plain atomics: they are bumped on the hot path, so they must cost no lock. The
//! `live_instances` gauge is decremented by [`LiveInstance`]'s `Drop`, which runs whenever a
//! call's `Store` goes away (success, trap, timeout or a dropped request future), so it
//! cannot drift from the truth.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

/// Process-wide counters. They start at zero with the process.
#[derive(Debug, Default)]
pub struct Stats {
    compiles: AtomicU64,
    cache_loads: AtomicU64,
    live_instances: AtomicU64,
    calls: AtomicU64,
    outbound_buffered: AtomicI64,
}

/// A point-in-time copy of [`Stats`], as served by the API.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsSnapshot {
    /// Components compiled by this process (uploads, and cache misses at start or deploy).
    pub compiles_total: u64,
    /// Components loaded from the precompiled cache instead of being compiled.
    pub cache_loads_total: u64,
    /// Instances alive right now (one per call in flight).
    pub live_instances: u64,
    /// Agents with a live deployment.
    pub deployments: u64,
    /// Sync calls served since start, whatever their outcome.
    pub calls_total: u64,
    /// Bytes of guests' outgoing request bodies the host holds right now (taken from a
    /// guest, not yet written to a socket).
    pub outbound_buffered_bytes: u64,
}

impl Stats {
    pub(crate) fn compiled(&self) {
        self.compiles.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_loaded(&self) {
        self.cache_loads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `delta` bytes of outgoing request bodies as held (negative: released).
    pub(crate) fn outbound_buffered(&self, delta: i64) {
        self.outbound_buffered.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn called(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one instance as alive until the returned guard is dropped.
    pub(crate) fn live_instance(self: &Arc<Self>) -> LiveInstance {
        self.live_instances.fetch_add(1, Ordering::Relaxed);
        LiveInstance(Arc::clone(self))
    }

    pub fn snapshot(&self, deployments: u64) -> StatsSnapshot {
        StatsSnapshot {
            compiles_total: self.compiles.load(Ordering::Relaxed),
            cache_loads_total: self.cache_loads.load(Ordering::Relaxed),
            live_instances: self.live_instances.load(Ordering::Relaxed),
            deployments,
            calls_total: self.calls.load(Ordering::Relaxed),
            outbound_buffered_bytes: u64::try_from(self.outbound_buffered.load(Ordering::Relaxed))
                .unwrap_or(0),
        }
    }
}

/// Held by a call's store data; its drop is the instance's end.
#[derive(Debug)]
pub(crate) struct LiveInstance(Arc<Stats>);

impl LiveInstance {
    /// The counters this instance counts in.
    pub(crate) fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.0)
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.live_instances.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_instances_follow_guards() {
        let stats = Arc::new(Stats::default());
        let a = stats.live_instance();
        let b = stats.live_instance();
        assert_eq!(stats.snapshot(0).live_instances, 2);
        drop(a);
        assert_eq!(stats.snapshot(0).live_instances, 1);
        drop(b);
        assert_eq!(stats.snapshot(0).live_instances, 0);
    }
}
