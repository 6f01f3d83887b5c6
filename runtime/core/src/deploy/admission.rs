//! Admission: how many instances may run at once, server-wide and per agent, and whether
//! the host's memory holds one more.
//!
//! An instance is admitted through four steps, in order: its agent's gate (whose size
//! follows the live deployment's `max_instances`, [`Admission::limit_for`], the one place
//! that size is worked out), the server's gate (one permit per pooled instance slot), the
//! memory budget (`memory`), and one of [`STARTING`](super::memory::STARTING) places for
//! instances being instantiated (memory is looked at again once the place is taken). A sync
//! call waits for all of it at most the admission wait and is refused with 429 `overloaded`
//! past it; a queued run waits in the queue.
//!
//! The defaults are sized for agents that wait: a call waiting on a model costs memory, not
//! CPU, so the count of instances is bounded by pool slots and memory, not by cores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_model::AgentConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::memory::{self, Charged, MemoryBudget, SAMPLE_EVERY, STARTING, Starting};
use crate::error::Error;

/// Instances running at once by default: room for 10,000 waiting calls of one agent
/// (see [`AdmissionLimits::agent_share`]) with slots to spare for the others.
pub const DEFAULT_MAX_INSTANCES: usize = 12_288;

/// The most instance slots the default per-agent share keeps for the other agents.
const OTHERS_RESERVE: usize = 512;

/// Server-wide admission settings.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    /// Instances running at once, server-wide: the pool's instance slots.
    pub max_instances: usize,
    /// A deployment's `max_instances` when it sets none.
    pub agent_instances: usize,
    /// Resident bytes the host may hold before it admits no more instances.
    pub memory_budget: u64,
    /// How long a sync call waits for room before 429 `overloaded`.
    pub sync_wait: Duration,
}

impl AdmissionLimits {
    /// The default per-agent share of `max_instances`: all but a reserve, so one busy agent
    /// cannot take the slots every other agent needs. The reserve is an eighth, at most
    /// 512: a fixed count rather than a fraction of a large pool, so that the
    /// pool `vm.max_map_count` leaves at Linux's default (10,516) still holds 10,000 waiting
    /// calls of one agent (10,004), while 512 calls of the other agents run beside them.
    #[must_use]
    pub fn agent_share(max_instances: usize) -> usize {
        (max_instances - (max_instances / 8).min(OTHERS_RESERVE)).max(1)
    }
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_instances: DEFAULT_MAX_INSTANCES,
            agent_instances: Self::agent_share(DEFAULT_MAX_INSTANCES),
            memory_budget: memory::default_budget(),
            sync_wait: Duration::from_secs(2),
        }
    }
}

/// The server's gate and each agent's; see the module docs.
pub struct Admission {
    limits: AdmissionLimits,
    server: Arc<Gate>,
    starting: Arc<Semaphore>,
    memory: Arc<MemoryBudget>,
    agents: Mutex<HashMap<String, Arc<Gate>>>,
}

impl Admission {
    /// Gates sized by `limits`.
    pub fn new(limits: AdmissionLimits) -> Self {
        Self::with_reusable(limits, Box::new(|| 0))
    }

    /// Gates sized by `limits`, with `reusable` saying how many resident bytes the instance
    /// pool keeps for reuse (not counted against the memory budget).
    pub fn with_reusable(
        limits: AdmissionLimits,
        reusable: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        let memory = MemoryBudget::new(limits.memory_budget, reusable);
        Self::with_memory(limits, memory)
    }

    fn with_memory(limits: AdmissionLimits, memory: MemoryBudget) -> Self {
        Self {
            server: Gate::new(limits.max_instances),
            starting: Arc::new(Semaphore::new(STARTING)),
            memory: Arc::new(memory),
            limits,
            agents: Mutex::default(),
        }
    }

    /// How many instances of an agent with `config` may run at once.
    pub(crate) fn limit_for(&self, config: &AgentConfig) -> usize {
        config
            .max_instances
            .map_or(self.limits.agent_instances, |n| n as usize)
    }

    /// The agent's gate, shared by all its deployments (made on first use, at the default
    /// size until a deployment is made live).
    pub(crate) fn gate(&self, agent: &str) -> Arc<Gate> {
        let default = self.limits.agent_instances;
        Arc::clone(
            self.agents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.to_owned())
                .or_insert_with(|| Gate::new(default)),
        )
    }

    /// Forgets a deleted agent's gate: an agent made again under its name starts with a gate
    /// of its own, which the old agent's calls still running do not hold places in, and
    /// with its own count of calls.
    pub(crate) fn forget(&self, agent: &str) {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(agent);
    }

    /// Sync calls of `agent` since the host started, and how many of them failed.
    pub fn calls(&self, agent: &str) -> (u64, u64) {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .map_or((0, 0), |gate| {
                (
                    gate.calls.load(Ordering::Relaxed),
                    gate.failures.load(Ordering::Relaxed),
                )
            })
    }

    /// Sizes `gate` for `config`, the configuration just made live.
    pub(crate) fn resize(&self, gate: &Gate, config: &AgentConfig) {
        gate.set_limit(self.limit_for(config));
    }

    /// Room for one sync call of an agent with `gate`, waiting at most the server's
    /// admission wait.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the agent or the host is full.
    pub(crate) async fn admit_sync(&self, gate: &Gate) -> Result<Admitted, Error> {
        let deadline = Instant::now() + self.limits.sync_wait;
        let agent = gate
            .enter_until(Some(deadline))
            .await
            .ok_or_else(|| overloaded(AGENT_FULL))?;
        let slot = self.slot_after_agent(agent, Some(deadline)).await?;
        self.start(slot, Some(deadline)).await
    }

    /// A pool slot for an instance that has its agent's room, waiting until `deadline`
    /// (`None`: as long as it takes). A queued run takes it before it is started in the
    /// store, and [`Admission::start`] just before its instance is made.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when there is no slot by `deadline`.
    pub(crate) async fn slot_after_agent(
        &self,
        agent: Room,
        deadline: Option<Instant>,
    ) -> Result<Slot, Error> {
        let server = self
            .server
            .enter_until(deadline)
            .await
            .ok_or_else(|| overloaded(HOST_FULL))?;
        Ok(Slot {
            _agent: agent,
            _server: server,
        })
    }

    /// The rest of admission, right before the instance is made: memory for it, then a
    /// place among the instances starting; until `deadline` (`None`: as long as it takes).
    /// Memory comes first, so that a caller that finds none holds no place while it waits,
    /// and is looked at again once the place is taken: in a burst, thousands of callers find
    /// memory for one more and then wait for a place, while those ahead of them start and
    /// grow. A caller that finds memory taken then keeps its place while it waits for memory
    /// again: the callers behind it need memory too, and giving the place back sent it
    /// behind all of them. (Among the callers holding places, which one gets memory first
    /// depends on when each looks, every [`SAMPLE_EVERY`], not on when it came.)
    ///
    /// # Errors
    /// [`Error::Overloaded`] when there is no room by `deadline`.
    pub(crate) async fn start(
        &self,
        slot: Slot,
        deadline: Option<Instant>,
    ) -> Result<Admitted, Error> {
        self.memory_until(deadline).await?;
        let acquire = Arc::clone(&self.starting).acquire_owned();
        let starting = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire).await.ok(),
            None => Some(acquire.await),
        }
        .and_then(Result::ok)
        .ok_or_else(|| overloaded(STARTING_FULL))?;
        self.memory_until(deadline).await?;
        let (charged, memory_starting) = self.memory.charge();
        Ok(Admitted {
            _charged: charged,
            starting: Some((starting, memory_starting)),
            _slot: slot,
        })
    }

    /// Waits until the memory budget holds one more instance, at most until `deadline`
    /// (`None`: as long as it takes). A queued run waits here before it is started, so that
    /// it stays `queued` while the host's memory is full.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when there is no room by `deadline`.
    pub(crate) async fn memory_until(&self, deadline: Option<Instant>) -> Result<(), Error> {
        while !self.memory.fits() {
            if deadline.is_some_and(|d| Instant::now() + SAMPLE_EVERY > d) {
                return Err(overloaded(MEMORY_FULL));
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        Ok(())
    }

    /// Instances admitted now, server-wide.
    pub fn in_use(&self) -> usize {
        self.server.in_use()
    }

    /// The memory budget, the latest resident size and the estimate per instance, in bytes.
    pub fn memory(&self) -> (u64, u64, u64) {
        let (resident, per_instance) = self.memory.reading();
        (self.memory.budget(), resident, per_instance)
    }
}

/// Each of admission's bounds: its name in the refusals metric, and what a refused caller is
/// told.
const AGENT_FULL: (&str, &str) = ("agent", "this agent is running as many instances as it may");
const HOST_FULL: (&str, &str) = (
    "host",
    "the host is running as many instances as it has slots for",
);
const STARTING_FULL: (&str, &str) = (
    "starting",
    "the host is starting as many instances as it can",
);
const MEMORY_FULL: (&str, &str) = ("memory", "the host's memory budget is taken");

fn overloaded((bound, what): (&'static str, &str)) -> Error {
    Error::Overloaded {
        message: format!("{what}; retry shortly"),
        retry_after: Some(Duration::from_secs(1)),
        bound: Some(bound),
    }
}

/// A resizable bound on instances running at once. Being the one object every deployment
/// of an agent shares, it also counts the agent's sync calls since the host started (for the
/// console's agents list): two relaxed increments on a line the call touches anyway.
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    limit: Mutex<usize>,
    /// Permits in use that a smaller limit takes back: the next ones given back are kept.
    owed: Arc<AtomicUsize>,
    pub(crate) calls: AtomicU64,
    pub(crate) failures: AtomicU64,
}

impl Gate {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit: Mutex::new(limit),
            owed: Arc::default(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Changes the bound; instances already in are not affected. Permits in use past a
    /// smaller limit are taken back as they are given back, before callers already waiting
    /// see them (taking them with a waiter of its own queued behind those callers, as it
    /// did, let each of them in first).
    pub(crate) fn set_limit(&self, limit: usize) {
        let mut current = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        if limit > *current {
            let more = limit - *current;
            // Permits still owed to a smaller limit are forgiven first.
            let forgiven = self
                .owed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |owed| {
                    Some(owed.saturating_sub(more))
                })
                .map_or(0, |owed| owed.min(more));
            self.permits.add_permits(more - forgiven);
        } else if limit < *current {
            let wanted = *current - limit;
            let taken = self.permits.forget_permits(wanted);
            self.owed.fetch_add(wanted - taken, Ordering::SeqCst);
        }
        *current = limit;
    }

    /// Waits for room until `deadline` (`None`: as long as it takes).
    pub(crate) async fn enter_until(&self, deadline: Option<Instant>) -> Option<Room> {
        let acquire = Arc::clone(&self.permits).acquire_owned();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire).await.ok()?.ok(),
            None => acquire.await.ok(),
        }?;
        Some(Room {
            permit: Some(permit),
            owed: Arc::clone(&self.owed),
        })
    }

    pub(crate) fn in_use(&self) -> usize {
        let limit = *self.limit.lock().unwrap_or_else(|e| e.into_inner());
        (limit + self.owed.load(Ordering::SeqCst)).saturating_sub(self.permits.available_permits())
    }
}

/// Room in a [`Gate`], given back when dropped, or kept back when the gate owes permits to a
/// smaller limit.
#[derive(Debug)]
pub(crate) struct Room {
    permit: Option<OwnedSemaphorePermit>,
    owed: Arc<AtomicUsize>,
}

impl Drop for Room {
    fn drop(&mut self) {
        let owed = self
            .owed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |owed| {
                owed.checked_sub(1)
            });
        if let (Ok(_), Some(permit)) = (owed, self.permit.take()) {
            permit.forget();
        }
    }
}

/// The permits of one admitted instance: dropping them makes room.
pub struct Admitted {
    _charged: Charged,
    /// Held while the instance is instantiated ([`Admitted::starting`]).
    starting: Option<(OwnedSemaphorePermit, Starting)>,
    _slot: Slot,
}

/// An instance's room in its agent's gate and its pool slot: the first half of admission.
#[derive(Debug)]
pub struct Slot {
    _agent: Room,
    _server: Room,
}

impl Admitted {
    /// What to drop once the instance is instantiated: its place among the starting
    /// instances goes to the next one, and the budget finds its memory in the next reading.
    pub(crate) fn starting(&mut self) -> Option<impl FnOnce() + Send + 'static> {
        let starting = self.starting.take()?;
        Some(move || drop(starting))
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("starting", &self.starting.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn one_agent_may_take_all_but_a_reserve_that_is_an_eighth_at_most_512() {
        // Linux's default map count leaves 10,516 slots: one agent must hold 10,000 calls.
        assert_eq!(AdmissionLimits::agent_share(10_516), 10_004);
        assert_eq!(AdmissionLimits::agent_share(DEFAULT_MAX_INSTANCES), 11_776);
        // Small pools keep an eighth for the others.
        assert_eq!(AdmissionLimits::agent_share(1_000), 875);
        assert_eq!(AdmissionLimits::agent_share(7), 7);
        assert_eq!(AdmissionLimits::agent_share(1), 1);
    }

    /// Admission with `max_instances` slots, an agent default of `agent`, a 30 ms wait, and
    /// a resident size the test sets (100 MiB to start) against a 200 MiB budget.
    fn admission(max_instances: usize, agent: usize) -> (Admission, Arc<AtomicU64>) {
        admission_within(max_instances, agent, 200 << 20)
    }

    fn admission_within(
        max_instances: usize,
        agent: usize,
        budget: u64,
    ) -> (Admission, Arc<AtomicU64>) {
        let resident = Arc::new(AtomicU64::new(100 << 20));
        let source = Arc::clone(&resident);
        let memory = MemoryBudget::with_source(
            budget,
            Box::new(move || Some(source.load(Ordering::Relaxed))),
        );
        let limits = AdmissionLimits {
            max_instances,
            agent_instances: agent,
            memory_budget: budget,
            sync_wait: Duration::from_millis(30),
        };
        (Admission::with_memory(limits, memory), resident)
    }

    fn config(max_instances: Option<u32>) -> AgentConfig {
        AgentConfig {
            max_instances,
            ..AgentConfig::default()
        }
    }

    #[tokio::test]
    async fn bounded_waits_refuse_and_resizing_takes_effect() {
        let (admission, _) = admission(10, 1);
        let gate = admission.gate("a");
        let first = admission.admit_sync(&gate).await.unwrap();
        let refused = admission.admit_sync(&gate).await.unwrap_err();
        assert_eq!(refused.kind(), "overloaded");
        assert!(refused.to_string().contains("this agent"), "{refused}");
        assert_eq!((gate.in_use(), admission.in_use()), (1, 1));
        admission.resize(&gate, &config(Some(2)));
        let second = admission.admit_sync(&gate).await.unwrap();
        drop((first, second));
        assert_eq!(admission.in_use(), 0);
        admission.resize(&gate, &config(None));
        let _one = admission.admit_sync(&gate).await.unwrap();
        assert!(admission.admit_sync(&gate).await.is_err(), "back to 1");
        // Another agent has its own gate; the server's slots bound them all.
        let other = admission.gate("b");
        admission.resize(&other, &config(Some(100)));
        let held: Vec<_> = admit_started(&admission, &other, 9).await;
        let full = admission.admit_sync(&other).await.unwrap_err();
        assert!(full.to_string().contains("slots"), "{full}");
        drop(held);
    }

    async fn admit_started(admission: &Admission, gate: &Gate, n: usize) -> Vec<Admitted> {
        let mut held = Vec::new();
        for _ in 0..n {
            let mut admitted = admission.admit_sync(gate).await.unwrap();
            drop(admitted.starting());
            held.push(admitted);
        }
        held
    }

    /// A host with memory to spare (1 GiB, 100 MiB resident) whose places to start are all
    /// held by callers not started yet: the host, its resident size to set, and those callers.
    async fn every_place_to_start_taken() -> (Arc<Admission>, Arc<AtomicU64>, Vec<Admitted>) {
        let (admission, resident) = admission_within(100_000, 100_000, 1 << 30);
        let admission = Arc::new(admission);
        let gate = admission.gate("a");
        let mut first = Vec::new();
        for _ in 0..STARTING {
            first.push(admission.admit_sync(&gate).await.unwrap());
        }
        (admission, resident, first)
    }

    /// A caller of agent `a` taking the whole of admission with a deadline of `wait`, as a
    /// queued run does (its agent's room without a deadline): whether it was admitted.
    fn start_within(admission: &Arc<Admission>, wait: Duration) -> tokio::task::JoinHandle<bool> {
        let admission = Arc::clone(admission);
        tokio::spawn(async move {
            let gate = admission.gate("a");
            let deadline = Some(Instant::now() + wait);
            let slot = admission
                .slot_after_agent(gate.enter_until(None).await.unwrap(), deadline)
                .await
                .unwrap();
            admission.start(slot, deadline).await.is_ok()
        })
    }

    #[tokio::test]
    async fn a_waiting_caller_gets_the_room_that_frees_up() {
        let (admission, _) = admission(1, 1);
        let admission = Arc::new(admission);
        let gate = admission.gate("a");
        let first = admission.admit_sync(&gate).await.unwrap();
        let waiter = start_within(&admission, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn memory_not_reservations_bounds_the_instances() {
        let (admission, resident) = admission(100_000, 100_000);
        let gate = admission.gate("a");
        // Every deployment may grow to 256 MiB, and thousands still fit a 200 MiB budget
        // while they hold what waiting instances hold: 32 KiB each.
        let mut held = Vec::new();
        for n in 1..=3000u64 {
            let mut admitted = admission.admit_sync(&gate).await.unwrap();
            drop(admitted.starting());
            held.push(admitted);
            resident.store((100 << 20) + n * (32 << 10), Ordering::Relaxed);
            if n % 100 == 0 {
                // A new reading: until then the instances admitted since the last one count
                // at the estimate per instance.
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        }
        // The process grows to its budget: the next call waits, then is refused.
        resident.store(200 << 20, Ordering::Relaxed);
        tokio::time::sleep(SAMPLE_EVERY).await;
        let refused = admission.admit_sync(&gate).await.unwrap_err();
        assert!(refused.to_string().contains("memory"), "{refused}");
        // Memory is given back: admitted again.
        held.truncate(1000);
        resident.store(150 << 20, Ordering::Relaxed);
        tokio::time::sleep(SAMPLE_EVERY).await;
        admission.admit_sync(&gate).await.unwrap();
    }

    /// Callers that found memory for one more and then waited for a place to start were
    /// admitted once places freed, though the host had grown past its budget meanwhile: all
    /// 500 here.
    #[tokio::test]
    async fn callers_waiting_for_a_place_to_start_wait_for_memory_again() {
        let (admission, resident, mut first) = every_place_to_start_taken().await;
        let waiting: Vec<_> = (0..500)
            .map(|_| start_within(&admission, Duration::from_secs(1)))
            .collect();
        // They are past the memory check, waiting for a place.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The first ones start and the host grows past its budget.
        resident.store(4 << 30, Ordering::Relaxed);
        tokio::time::sleep(SAMPLE_EVERY).await;
        for admitted in &mut first {
            drop(admitted.starting());
        }
        let mut admitted = 0;
        for waiter in waiting {
            admitted += usize::from(waiter.await.unwrap());
        }
        assert_eq!(admitted, 0, "admitted past the budget");
    }

    /// A caller that got a place to start and found the memory taken meanwhile keeps the
    /// place while it waits for memory, and starts once there is some. It gave the place
    /// back and went behind every caller that came after it.
    #[tokio::test]
    async fn a_caller_that_finds_memory_taken_keeps_its_place_to_start() {
        let (admission, resident, mut first) = every_place_to_start_taken().await;
        let waiter = start_within(&admission, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
        resident.store(4 << 30, Ordering::Relaxed);
        tokio::time::sleep(SAMPLE_EVERY * 2).await;
        drop(first[0].starting());
        // The waiter takes the freed place and finds no memory.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            admission.starting.available_permits(),
            0,
            "the waiter gave its place back"
        );
        assert!(!waiter.is_finished(), "started without memory");
        resident.store(100 << 20, Ordering::Relaxed);
        assert!(waiter.await.unwrap(), "started once memory came back");
    }

    /// Lowering an agent's `max_instances` while it runs at its old limit and callers wait:
    /// as the running instances end, only the new limit's worth of the waiting ones get in.
    /// The permits to take back used to queue behind the callers, and two ran here.
    #[tokio::test]
    async fn a_smaller_limit_holds_for_callers_already_waiting() {
        let gate = Gate::new(2);
        let running = (
            gate.enter_until(None).await.unwrap(),
            gate.enter_until(None).await.unwrap(),
        );
        let (admitted, mut rooms) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..3 {
            let (gate, admitted) = (Arc::clone(&gate), admitted.clone());
            tokio::spawn(async move {
                let _ = admitted.send(gate.enter_until(None).await.unwrap());
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.set_limit(1);
        assert_eq!(gate.in_use(), 2);
        drop(running);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut held = Vec::new();
        while let Ok(room) = rooms.try_recv() {
            held.push(room);
        }
        assert_eq!(held.len(), 1, "callers in under a limit of 1");
        assert_eq!(gate.in_use(), 1);
        // Raised again: one more gets in.
        gate.set_limit(2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(room) = rooms.try_recv() {
            held.push(room);
        }
        assert_eq!((held.len(), gate.in_use()), (2, 2));
    }

    #[tokio::test]
    async fn instances_still_instantiating_hold_a_place_to_start() {
        // Memory enough for them all: 1 MiB is the estimate per instance before a reading.
        let (admission, _) = admission_within(100_000, 100_000, 1 << 30);
        let gate = admission.gate("a");
        let mut held = Vec::new();
        for _ in 0..STARTING {
            held.push(admission.admit_sync(&gate).await.unwrap());
        }
        let refused = admission.admit_sync(&gate).await.unwrap_err();
        assert!(refused.to_string().contains("starting"), "{refused}");
        let started = held[0].starting().expect("not started yet");
        started();
        assert!(held[0].starting().is_none(), "once");
        admission.admit_sync(&gate).await.unwrap();
    }
}
