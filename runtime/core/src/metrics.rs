//! What the host counts for operators, in Prometheus' terms (`prometheus-client`), recorded
//! where the use cases decide things — a call's outcome, an admission refusal, a run's end,
//! a push attempt, a compile — and exported by the server as `/metrics`.
//!
//! Labels are bounded by what the host controls: agent names, versions, error kinds, run
//! statuses, and an outbound request's *allowed-host pattern* (never its raw destination,
//! which a guest could vary without bound). A deleted agent's series, or a deleted
//! version's, are dropped: every labelled family keeps an index of the label sets it has.
//!
//! Gauges of state (live instances, queue depth per agent) are read when scraped, from the
//! same sources `/v1/stats` reads; the server fills them in [`Metrics::encode`]'s caller.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Buckets of call and run durations: 1 ms to about 9 minutes (agents wait on models).
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Buckets of instantiation and compile times: 50 µs to about 100 s.
fn short_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

type Agent = Arc<str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    agent: Agent,
    version: u32,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    agent: Agent,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    agent: Agent,
    bound: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: Agent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    agent: Agent,
    status: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    agent: Agent,
    outcome: &'static str,
    attempt: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    agent: Agent,
    host_pattern: Arc<str>,
    outcome: &'static str,
}

/// Label sets that carry an agent (and maybe a version), so its series can be dropped.
trait OfAgent {
    fn agent(&self) -> &str;
    fn version(&self) -> Option<u32> {
        None
    }
}

macro_rules! of_agent {
    ($($t:ty),*) => {$(impl OfAgent for $t { fn agent(&self) -> &str { &self.agent } })*};
}
of_agent!(
    KindLabels,
    BoundLabels,
    AgentLabels,
    StatusLabels,
    DeliveryLabels,
    OutboundLabels
);

impl OfAgent for CallLabels {
    fn agent(&self) -> &str {
        &self.agent
    }
    fn version(&self) -> Option<u32> {
        Some(self.version)
    }
}

/// A family and the label sets it holds: a set is looked up under a read lock (the common
/// case, already there), inserted under the write lock the first time.
struct Tracked<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    seen: RwLock<HashSet<L>>,
}

impl<L, M, C> Tracked<L, M, C>
where
    L: Clone + Hash + Eq + OfAgent + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    C: MetricConstructor<M>,
{
    fn with(&self, labels: L, use_it: impl FnOnce(&M)) {
        let known = self
            .seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&labels);
        if !known {
            self.seen
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(labels.clone());
        }
        use_it(&self.family.get_or_create(&labels));
    }

    /// Drops the series of `agent` (of one `version` of it, when given).
    fn forget(&self, agent: &str, version: Option<u32>) {
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        seen.retain(|labels| {
            let gone =
                labels.agent() == agent && (version.is_none() || labels.version() == version);
            if gone {
                self.family.remove(labels);
            }
            !gone
        });
    }

    /// Drops every series (for gauges refilled on each scrape).
    fn clear(&self) {
        self.seen.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.family.clear();
    }
}

impl<L, M> Tracked<L, M>
where
    L: Clone + Hash + Eq + OfAgent + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn new(make: fn() -> M) -> Self {
        Self {
            family: Family::new_with_constructor(make),
            seen: RwLock::new(HashSet::new()),
        }
    }
}

/// What the scrape reads from the host's state, filled by the server just before encoding.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub live_instances: u64,
    pub instances_admitted: u64,
    pub deployments: u64,
    pub memory_budget_bytes: u64,
    pub resident_bytes: u64,
    pub compiles_total: u64,
    pub cache_loads_total: u64,
    /// Per agent with queued or running runs: `(agent, queued, running, oldest queued age)`.
    pub queues: Vec<(String, u64, u64, Option<Duration>)>,
}

/// See the module docs.
pub struct Metrics {
    /// Off only for the benchmark that measures what recording costs (`--no-metrics`):
    /// the families stay registered, at zero.
    recording: bool,
    registry: Mutex<Registry>,
    calls: Tracked<CallLabels, Counter>,
    call_seconds: Tracked<KindLabels, Histogram>,
    instantiation_seconds: Histogram,
    refusals: Tracked<BoundLabels, Counter>,
    runs_accepted: Tracked<AgentLabels, Counter>,
    runs_ended: Tracked<StatusLabels, Counter>,
    deliveries: Tracked<DeliveryLabels, Counter>,
    outbound: Tracked<OutboundLabels, Counter>,
    compile_seconds: Histogram,
    live_instances: Gauge,
    instances_admitted: Gauge,
    deployments: Gauge,
    memory_budget: Gauge,
    resident: Gauge,
    compiles: Counter,
    cache_loads: Counter,
    runs_queued: Tracked<AgentLabels, Gauge>,
    runs_running: Tracked<AgentLabels, Gauge>,
    oldest_queued: Tracked<AgentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered under the `gust_` prefix.
    pub fn new() -> Self {
        Self::recording(true)
    }

    /// Every metric; with `recording` false, calls, runs, pushes, outbound requests and
    /// compiles are not counted (the state gauges still are, when scraped).
    pub fn recording(recording: bool) -> Self {
        let metrics = Self {
            recording,
            registry: Mutex::new(Registry::with_prefix("gust")),
            calls: Tracked::new(Counter::default),
            call_seconds: Tracked::new(call_buckets),
            instantiation_seconds: short_buckets(),
            refusals: Tracked::new(Counter::default),
            runs_accepted: Tracked::new(Counter::default),
            runs_ended: Tracked::new(Counter::default),
            deliveries: Tracked::new(Counter::default),
            outbound: Tracked::new(Counter::default),
            compile_seconds: short_buckets(),
            live_instances: Gauge::default(),
            instances_admitted: Gauge::default(),
            deployments: Gauge::default(),
            memory_budget: Gauge::default(),
            resident: Gauge::default(),
            compiles: Counter::default(),
            cache_loads: Counter::default(),
            runs_queued: Tracked::new(Gauge::default),
            runs_running: Tracked::new(Gauge::default),
            oldest_queued: Tracked::new(Gauge::default),
        };
        {
            let mut r = metrics.lock_registry();
            r.register(
                "calls",
                "Calls of agents (sync calls and attempts of queued runs) by agent, version, kind and outcome (ok or the error kind)",
                metrics.calls.family.clone(),
            );
            r.register_with_unit(
                "call_duration",
                "Time from a call's admission request to its answer, by agent and kind",
                Unit::Seconds,
                metrics.call_seconds.family.clone(),
            );
            r.register_with_unit(
                "instantiation",
                "Time from admission to a ready instance (a standby instance counts as ready at once)",
                Unit::Seconds,
                metrics.instantiation_seconds.clone(),
            );
            r.register(
                "admission_refusals",
                "Calls refused with 429, by agent and the bound that was full (agent, host, starting, memory)",
                metrics.refusals.family.clone(),
            );
            r.register(
                "runs_accepted",
                "Queued runs committed, by agent",
                metrics.runs_accepted.family.clone(),
            );
            r.register(
                "runs_ended",
                "Queued runs that ended, by agent and final status",
                metrics.runs_ended.family.clone(),
            );
            r.register(
                "push_deliveries",
                "Push attempts, by agent, outcome (delivered, retry, failed) and attempt number",
                metrics.deliveries.family.clone(),
            );
            r.register(
                "outbound_requests",
                "Guests' outgoing HTTP requests, by agent, the allowed-host pattern that let them through (`denied` when none did) and outcome (ok, http_error, error)",
                metrics.outbound.family.clone(),
            );
            r.register_with_unit(
                "compile_duration",
                "Time to compile a component (cache misses)",
                Unit::Seconds,
                metrics.compile_seconds.clone(),
            );
            r.register("compiles", "Components compiled", metrics.compiles.clone());
            r.register(
                "artifact_cache_hits",
                "Components loaded from the precompiled cache instead of compiled",
                metrics.cache_loads.clone(),
            );
            r.register(
                "live_instances",
                "Instances alive now (calls, runs, standby and upload checks)",
                metrics.live_instances.clone(),
            );
            r.register(
                "instances_admitted",
                "Instances admitted now",
                metrics.instances_admitted.clone(),
            );
            r.register(
                "deployments",
                "Live deployments",
                metrics.deployments.clone(),
            );
            r.register_with_unit(
                "memory_budget",
                "The memory budget admission weighs instances against",
                Unit::Bytes,
                metrics.memory_budget.clone(),
            );
            r.register_with_unit(
                "resident_memory",
                "The memory the process commits (private resident pages and page tables) at the budget's latest reading",
                Unit::Bytes,
                metrics.resident.clone(),
            );
            r.register(
                "runs_queued",
                "Runs waiting in the queue, by agent",
                metrics.runs_queued.family.clone(),
            );
            r.register(
                "runs_running",
                "Runs executing, by agent",
                metrics.runs_running.family.clone(),
            );
            r.register_with_unit(
                "queue_oldest_age",
                "Age of the oldest queued run, by agent",
                Unit::Seconds,
                metrics.oldest_queued.family.clone(),
            );
        }
        metrics
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call ended: `outcome` is `ok` or the error's kind.
    pub(crate) fn called(
        &self,
        agent: &Agent,
        version: u32,
        queued: bool,
        outcome: &'static str,
        took: Duration,
    ) {
        if !self.recording {
            return;
        }
        let kind = if queued { "queued" } else { "sync" };
        self.calls.with(
            CallLabels {
                agent: Arc::clone(agent),
                version,
                kind,
                outcome,
            },
            |c| {
                c.inc();
            },
        );
        self.call_seconds.with(
            KindLabels {
                agent: Arc::clone(agent),
                kind,
            },
            |h| h.observe(took.as_secs_f64()),
        );
    }

    pub(crate) fn instantiated(&self, took: Duration) {
        if !self.recording {
            return;
        }
        self.instantiation_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn refused(&self, agent: &Agent, bound: &'static str) {
        if !self.recording {
            return;
        }
        self.refusals.with(
            BoundLabels {
                agent: Arc::clone(agent),
                bound,
            },
            |c| {
                c.inc();
            },
        );
    }

    pub(crate) fn run_accepted(&self, agent: &str) {
        if !self.recording {
            return;
        }
        self.runs_accepted.with(
            AgentLabels {
                agent: agent.into(),
            },
            |c| {
                c.inc();
            },
        );
    }

    pub(crate) fn run_ended(&self, agent: &str, status: &str) {
        if !self.recording {
            return;
        }
        self.runs_ended.with(
            StatusLabels {
                agent: agent.into(),
                status: status.into(),
            },
            |c| {
                c.inc();
            },
        );
    }

    pub(crate) fn push_attempt(&self, agent: &str, outcome: &'static str, attempt: u32) {
        if !self.recording {
            return;
        }
        self.deliveries.with(
            DeliveryLabels {
                agent: agent.into(),
                outcome,
                attempt,
            },
            |c| {
                c.inc();
            },
        );
    }

    pub(crate) fn outbound(&self, agent: &Agent, host_pattern: Arc<str>, outcome: &'static str) {
        if !self.recording {
            return;
        }
        self.outbound.with(
            OutboundLabels {
                agent: Arc::clone(agent),
                host_pattern,
                outcome,
            },
            |c| {
                c.inc();
            },
        );
    }

    pub(crate) fn compiled(&self, took: Duration) {
        if !self.recording {
            return;
        }
        self.compile_seconds.observe(took.as_secs_f64());
    }

    /// Drops every series of a deleted agent.
    pub(crate) fn forget_agent(&self, agent: &str) {
        self.calls.forget(agent, None);
        self.call_seconds.forget(agent, None);
        self.refusals.forget(agent, None);
        self.runs_accepted.forget(agent, None);
        self.runs_ended.forget(agent, None);
        self.deliveries.forget(agent, None);
        self.outbound.forget(agent, None);
    }

    /// Drops the series of a deleted version.
    pub(crate) fn forget_version(&self, agent: &str, version: u32) {
        self.calls.forget(agent, Some(version));
    }

    /// The text exposition (OpenMetrics) of every metric, with the state gauges set from
    /// `now`.
    ///
    /// # Errors
    /// Only if formatting fails.
    pub fn encode(&self, now: &Snapshot) -> Result<String, std::fmt::Error> {
        // Held throughout: two scrapes at once must not both add the engine's counts.
        let registry = self.lock_registry();
        let gauge = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.live_instances, now.live_instances);
        gauge(&self.instances_admitted, now.instances_admitted);
        gauge(&self.deployments, now.deployments);
        gauge(&self.memory_budget, now.memory_budget_bytes);
        gauge(&self.resident, now.resident_bytes);
        // Counters kept by the engine: moved up to its total (they only grow).
        let catch_up = |c: &Counter, total: u64| {
            let behind = total.saturating_sub(c.get());
            if behind > 0 {
                c.inc_by(behind);
            }
        };
        catch_up(&self.compiles, now.compiles_total);
        catch_up(&self.cache_loads, now.cache_loads_total);
        // Queue gauges are refilled: an agent whose queue emptied (or that was deleted) has
        // no series.
        self.runs_queued.clear();
        self.runs_running.clear();
        self.oldest_queued.clear();
        for (agent, queued, running, oldest) in &now.queues {
            let labels = AgentLabels {
                agent: agent.as_str().into(),
            };
            self.runs_queued.with(labels.clone(), |g| gauge(g, *queued));
            self.runs_running
                .with(labels.clone(), |g| gauge(g, *running));
            if let Some(age) = oldest {
                self.oldest_queued.with(labels, |g| {
                    g.set(age.as_secs_f64());
                });
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_by_convention_and_dropped_with_their_agent() {
        let metrics = Metrics::new();
        let a: Agent = "alpha".into();
        let b: Agent = "beta".into();
        metrics.called(&a, 1, false, "ok", Duration::from_millis(3));
        metrics.called(&a, 2, true, "timeout", Duration::from_secs(2));
        metrics.called(&b, 1, false, "ok", Duration::from_millis(1));
        metrics.outbound(&a, "https://*.example.com".into(), "ok");
        let text = metrics.encode(&Snapshot::default()).unwrap();
        assert!(
            text.contains(
                r#"gust_calls_total{agent="alpha",version="1",kind="sync",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gust_call_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"host_pattern="https://*.example.com""#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");

        metrics.forget_version(&a, 1);
        let text = metrics.encode(&Snapshot::default()).unwrap();
        assert!(!text.contains(r#"agent="alpha",version="1""#), "{text}");
        assert!(text.contains(r#"agent="alpha",version="2""#), "{text}");
        metrics.forget_agent("alpha");
        let text = metrics.encode(&Snapshot::default()).unwrap();
        assert!(!text.contains(r#"agent="alpha""#), "{text}");
        assert!(text.contains(r#"agent="beta""#), "{text}");
    }

    #[test]
    fn a_host_that_does_not_record_counts_nothing() {
        let metrics = Metrics::recording(false);
        let a: Agent = "alpha".into();
        metrics.called(&a, 1, false, "ok", Duration::from_millis(3));
        metrics.outbound(&a, "https://*.example.com".into(), "ok");
        metrics.run_accepted("alpha");
        let text = metrics.encode(&Snapshot::default()).unwrap();
        assert!(!text.contains(r#"agent="alpha""#), "{text}");
        // A recording host would have counted them.
        let recording = Metrics::new();
        recording.called(&a, 1, false, "ok", Duration::from_millis(3));
        let text = recording.encode(&Snapshot::default()).unwrap();
        assert!(text.contains(r#"agent="alpha""#), "{text}");
    }

    #[test]
    fn queue_gauges_follow_the_latest_snapshot() {
        let metrics = Metrics::new();
        let mut now = Snapshot {
            queues: vec![("alpha".into(), 3, 1, Some(Duration::from_secs(5)))],
            ..Snapshot::default()
        };
        let text = metrics.encode(&now).unwrap();
        assert!(
            text.contains(r#"gust_runs_queued{agent="alpha"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gust_queue_oldest_age_seconds{agent="alpha"} 5.0"#),
            "{text}"
        );
        now.queues.clear();
        let text = metrics.encode(&now).unwrap();
        assert!(
            !text.contains(r#"gust_runs_queued{agent="alpha"}"#),
            "{text}"
        );
    }
}
