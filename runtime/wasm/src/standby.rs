//! Warm standby: instances of a heavy guest made ahead of demand, so a call finds one ready
//! instead of paying for instantiation (about 0.75 ms for componentize-py's guests, against
//! 15 µs for a Rust one).
//!
//! Each standby instance is a whole fresh `Store` that serves exactly one call and is
//! dropped with it, as every instance is: nothing of one call reaches another. Only what
//! instantiation does is moved ahead of the call; the call's sink is bound when it takes
//! the instance.
//!
//! How many are kept follows the call rate: enough to cover the calls that arrive while
//! one is being made (four times the rate × the instantiation time, rounded up); none for a
//! guest whose shortest instantiation (of at least [`SAMPLES`]) is under [`HEAVY`], or for
//! an agent without calls in the last [`IDLE`]; at most [`PER_AGENT`] per deployment and [`HOST_WIDE`] on the host. They are
//! made by one task per deployment, which ends when the deployment is dropped (a redeploy
//! drops them with it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::bindings::{Agent, AgentPre};
use crate::host::CallState;

/// Instantiation slower than this is worth doing ahead of demand.
/// Between a Rust guest (15–50 µs) and a componentize-py one (about 0.75 ms), with room for
/// a busy host stretching the former's wall-clock readings.
pub const HEAVY: Duration = Duration::from_micros(500);
/// Instantiations a call made by itself before the shortest of them decides: one reading
/// on a busy host could make a light guest look heavy, and once it had standby instances
/// its calls would stop instantiating by themselves and never correct it.
pub const SAMPLES: u32 = 5;
/// Standby instances of one deployment, at most.
pub const PER_AGENT: usize = 8;
/// Standby instances on the host, at most: the pool is sized this much above the instances
/// admission lets run, so standby never takes a call's slot.
pub const HOST_WIDE: usize = 64;
/// An agent without calls for this long keeps none.
pub const IDLE: Duration = Duration::from_secs(30);

/// One instance made ahead of demand.
pub(crate) struct Warm {
    pub(crate) store: Store<CallState>,
    pub(crate) instance: Agent,
}

/// Makes a fresh store for one instance of the deployment (its limits, configuration and
/// outbound policy, with a sink that writes to the host log until a call binds its own).
pub(crate) type StoreMaker = Box<dyn Fn() -> Store<CallState> + Send + Sync>;

/// Standby instances in this process.
static HOST_WIDE_KEPT: AtomicUsize = AtomicUsize::new(0);

/// The standby instances of one deployment; see the module docs.
pub(crate) struct Standby {
    ready: Mutex<VecDeque<Warm>>,
    demand: Mutex<Demand>,
    wake: Arc<tokio::sync::Notify>,
    /// Whether the task that makes instances runs.
    started: std::sync::Once,
    /// Standby instances on the whole host.
    host_wide: &'static AtomicUsize,
    /// The deployment is no longer live: it keeps none.
    retired: std::sync::atomic::AtomicBool,
}

struct Demand {
    /// Calls per second, smoothed.
    rate: f64,
    window_start: Instant,
    window_calls: u32,
    last_call: Option<Instant>,
    /// The shortest instantiation seen; `None` before the first.
    instantiate: Option<Duration>,
    /// Instantiations seen.
    samples: u32,
}

impl Demand {
    /// Whether the guest is worth keeping instances of: [`SAMPLES`] instantiations seen,
    /// the shortest at least [`HEAVY`].
    fn is_heavy(&self) -> bool {
        self.samples >= SAMPLES && self.instantiate.is_some_and(|t| t >= HEAVY)
    }
}

impl Standby {
    pub(crate) fn new() -> Self {
        Self {
            ready: Mutex::default(),
            demand: Mutex::new(Demand {
                rate: 0.0,
                window_start: Instant::now(),
                window_calls: 0,
                last_call: None,
                instantiate: None,
                samples: 0,
            }),
            wake: Arc::default(),
            started: std::sync::Once::new(),
            host_wide: &HOST_WIDE_KEPT,
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A ready instance for a call, if there is one. Counts the call; for a heavy guest,
    /// wakes the task that makes instances (started on the first such call; `make` and `pre`
    /// go to it). A light guest's calls cost one uncontended lock here and nothing more.
    pub(crate) fn take(
        self: &Arc<Self>,
        make: impl FnOnce() -> (StoreMaker, AgentPre<CallState>),
    ) -> Option<Warm> {
        let heavy = {
            let mut demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            demand.last_call = Some(now);
            demand.window_calls += 1;
            let window = now.duration_since(demand.window_start);
            if window >= Duration::from_secs(1) {
                let rate = f64::from(demand.window_calls) / window.as_secs_f64();
                demand.rate = (demand.rate + rate) / 2.0;
                demand.window_start = now;
                demand.window_calls = 0;
            }
            demand.is_heavy()
        };
        if !heavy {
            return None;
        }
        self.started.call_once(|| {
            let (maker, pre) = make();
            tokio::spawn(refill(Arc::downgrade(self), maker, pre));
        });
        let warm = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if warm.is_some() {
            self.host_wide.fetch_sub(1, Ordering::Relaxed);
        }
        // The task makes the next one.
        self.wake.notify_one();
        warm
    }

    /// Records how long a call's own instantiation took: what decides whether this guest is
    /// worth keeping instances of. The shortest seen counts: a wall-clock reading only
    /// grows when the host is busy, so the minimum is the guest's own cost. A failed one
    /// counts not at all: a full pool or a process out of memory mappings refuses within
    /// microseconds, and as the shortest it would have stopped the guest's standby for good.
    pub(crate) fn instantiated<T, E>(&self, took: Duration, outcome: &Result<T, E>) {
        if outcome.is_err() {
            return;
        }
        let mut demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        demand.instantiate = Some(demand.instantiate.map_or(took, |seen| seen.min(took)));
        demand.samples = demand.samples.saturating_add(1);
    }

    /// Whether the deployment is live. One that is not keeps no instances (it may still
    /// run queued runs accepted on it, each instantiating its own): they are dropped now.
    pub(crate) fn set_live(&self, live: bool) {
        self.retired.store(!live, Ordering::Relaxed);
        if !live {
            let dropped =
                std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()));
            self.host_wide.fetch_sub(dropped.len(), Ordering::Relaxed);
        }
    }

    /// Instances to keep now.
    fn target(&self) -> usize {
        if self.retired.load(Ordering::Relaxed) {
            return 0;
        }
        let demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        let Some(instantiate) = demand.instantiate.filter(|_| demand.is_heavy()) else {
            return 0;
        };
        if demand.last_call.is_none_or(|at| at.elapsed() >= IDLE) {
            return 0;
        }
        // Before the first full second of calls, the rate is not known yet: one.
        let wanted = (demand.rate * instantiate.as_secs_f64() * 4.0).ceil() as usize;
        wanted.clamp(1, PER_AGENT)
    }

    fn len(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let kept = self
            .ready
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        self.host_wide.fetch_sub(kept, Ordering::Relaxed);
    }
}

/// One place in the host-wide count of standby instances, given back when dropped unless
/// kept (the instance was made and stored).
struct Reserved(&'static AtomicUsize);

impl Reserved {
    fn take(count: &'static AtomicUsize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < HOST_WIDE).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }

    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the deployment's standby at its target until the deployment is gone.
async fn refill(standby: Weak<Standby>, make_store: StoreMaker, pre: AgentPre<CallState>) {
    loop {
        let Some(strong) = standby.upgrade() else {
            return;
        };
        let target = strong.target();
        while strong.len() > target {
            let dropped = strong
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_back();
            if dropped.is_some() {
                strong.host_wide.fetch_sub(1, Ordering::Relaxed);
            }
        }
        while strong.len() < target && !strong.retired.load(Ordering::Relaxed) {
            // Counted before it is made, given back if it is not kept: a reservation that
            // also comes back if this task is dropped mid-way (the runtime shutting down).
            let Some(reserved) = Reserved::take(strong.host_wide) else {
                break;
            };
            let mut store = make_store();
            match pre.instantiate_async(&mut store).await {
                // Retired meanwhile: dropped with the reservation.
                Ok(_) if strong.retired.load(Ordering::Relaxed) => break,
                Ok(instance) => {
                    reserved.keep();
                    strong
                        .ready
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(Warm { store, instance });
                }
                Err(e) => {
                    // The call that would have used it instantiates by itself, and says
                    // what went wrong there.
                    tracing::debug!("making a standby instance: {e:#}");
                    break;
                }
            }
        }
        // Woken by a call, or once a second to let an idle agent's instances go; the
        // deployment is not kept alive while waiting.
        let wake = Arc::clone(&strong.wake);
        drop(strong);
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_instantiation_does_not_make_a_heavy_guest_look_light() {
        let standby = Standby::new();
        for _ in 0..SAMPLES {
            standby.instantiated(Duration::from_micros(800), &Ok::<(), ()>(()));
        }
        standby.demand.lock().unwrap().last_call = Some(Instant::now());
        assert_eq!(standby.target(), 1, "a heavy guest with calls keeps one");
        // A full pool refuses at once.
        standby.instantiated(Duration::from_micros(3), &Err::<(), ()>(()));
        assert_eq!(standby.target(), 1, "one refusal stopped the standby");
    }
}
