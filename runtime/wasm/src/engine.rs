//! The Wasm side of the host, built once and shared: wasmtime's `Engine` and its settings,
//! the `Linker` with everything a guest may import, the epoch ticker thread, and the
//! on-disk cache of precompiled components (`cache`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, OptLevel};

use gust_model::{AgentConfig, HostPattern};

use crate::bindings::gust::agent::{host, invocation};
use crate::cache::ArtifactCache;
use crate::host::{CallState, OriginSlots, OutboundPolicy};
use crate::stats::Stats;

/// How often the epoch advances (defined beside the CPU lanes, which count in it).
pub use crate::host::cpu::EPOCH_TICK;

/// wasmtime's engine with gust's settings, the linker and the artifact cache: everything
/// needed to turn component bytes into something callable. Built once per host, shared.
pub struct WasmEngine {
    engine: Engine,
    /// Guests are interrupted on the epoch tick, so something must advance it
    /// ([`WasmEngine::epoch_ticker`]).
    epoch_interruption: bool,
    /// See [`Tuning::warm_standby`].
    warm_standby: bool,
    linker: Linker<CallState>,
    cache: ArtifactCache,
    stats: Arc<Stats>,
    outbound: OutboundSettings,
    /// The client every guest request goes through (see `host::client`): shared, so
    /// connections to the same model or tool API are reused across calls.
    outbound_client: crate::host::GuestClient,
    /// The client's bound on connections per origin.
    origins: Arc<OriginSlots>,
}

/// Host-wide settings of guests' outgoing HTTP.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Allow loopback and private destinations (development and tests).
    pub allow_private_network: bool,
    /// Largest answer a guest may read, in bytes.
    pub max_response_bytes: usize,
    /// Connections to one origin (scheme, host, port), host-wide, idle ones in the pool
    /// included; a request waits for one within its timeout.
    pub connections_per_host: usize,
    /// CA certificates trusted beside the webpki roots.
    pub extra_roots: crate::net::ExtraRoots,
}

/// As many as the host takes inbound connections by default: a host full of calls that
/// each wait on the same model API is not held back, while one upstream cannot take every
/// file descriptor. Lower it to spare an upstream that rate-limits.
pub const DEFAULT_CONNECTIONS_PER_HOST: usize = 16_384;

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            allow_private_network: false,
            max_response_bytes: 16 << 20,
            connections_per_host: DEFAULT_CONNECTIONS_PER_HOST,
            extra_roots: crate::net::ExtraRoots::default(),
        }
    }
}

impl WasmEngine {
    /// Builds the engine, links the agent world and starts the epoch ticker.
    ///
    /// # Errors
    /// When the engine cannot be configured on this machine or the cache folder cannot be
    /// created.
    pub fn new(
        cache_root: &Path,
        stats: Arc<Stats>,
        max_memory_bytes: usize,
        outbound: OutboundSettings,
        tuning: &Tuning,
    ) -> anyhow::Result<Self> {
        let engine = match Engine::new(&tuning.wasmtime_config(max_memory_bytes)) {
            Ok(engine) => engine,
            // The pool reserves its address space up front; where that is refused (a small
            // `ulimit -v`, strict overcommit), instances are allocated per call.
            Err(e) if tuning.pool.is_some() => {
                tracing::warn!(
                    "the pooling instance allocator is not available here ({e}); allocating instances on demand, which is slower"
                );
                let on_demand = Tuning {
                    pool: None,
                    ..tuning.clone()
                };
                Engine::new(&on_demand.wasmtime_config(max_memory_bytes))
                    .map_err(anyhow::Error::from)
                    .context("configuring the Wasm engine")?
            }
            Err(e) => return Err(anyhow::Error::from(e).context("configuring the Wasm engine")),
        };
        let epoch_interruption = tuning.epoch_interruption;
        if let Some(lanes) = tuning.cpu_lanes
            && !crate::host::cpu::set_lanes(lanes)
        {
            tracing::warn!("the CPU lanes were set before; --cpu-lanes {lanes} has no effect");
        }
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("linking gust:agent/host")?;
        invocation::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("linking gust:agent/invocation")?;

        let cache = ArtifactCache::open(cache_root, &engine)?;
        // The bound on connections per origin lives in the client's connector.
        let origins = Arc::new(OriginSlots::new(outbound.connections_per_host));
        let outbound_client = crate::host::guest_client(
            outbound.allow_private_network,
            Arc::clone(&origins),
            &outbound.extra_roots,
        )?;
        Ok(Self {
            engine,
            epoch_interruption,
            warm_standby: tuning.warm_standby,
            linker,
            cache,
            stats,
            outbound,
            outbound_client,
            origins,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What advances this engine's epoch, when its guests are interrupted on the tick: the
    /// caller runs it on a thread of its own (`gust serve` under its shutdown structure).
    pub fn epoch_ticker(&self) -> Option<EpochTicker> {
        self.epoch_interruption.then(|| EpochTicker {
            engine: self.engine.weak(),
        })
    }

    pub(crate) fn warm_standby(&self) -> bool {
        self.warm_standby
    }

    pub(crate) fn linker(&self) -> &Linker<CallState> {
        &self.linker
    }

    /// Bytes the instance pool keeps resident in slots no instance uses (up to
    /// `keep_resident` each, so the next instance there skips the page faults): memory a new
    /// instance reuses rather than adds.
    pub fn pool_reusable_bytes(&self) -> u64 {
        self.engine.pooling_allocator_metrics().map_or(0, |pool| {
            (pool.unused_memory_bytes_resident() + pool.unused_table_bytes_resident()) as u64
        })
    }

    /// The counters of this host.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// What guests of a deployment with this configuration may reach over HTTP.
    ///
    /// # Errors
    /// When an `allowed_hosts` entry does not parse (the draft was checked, so only a
    /// configuration stored by another version of gust could do that).
    pub fn outbound_policy(&self, config: &AgentConfig) -> Result<OutboundPolicy, String> {
        let allowed = config
            .allowed_hosts
            .iter()
            .map(|p| HostPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OutboundPolicy {
            allowed: allowed.into(),
            timeout: Duration::from_secs(config.outbound_timeout_s),
            max_response_bytes: self.outbound.max_response_bytes,
            allow_private_network: self.outbound.allow_private_network,
            client: self.outbound_client.clone(),
            origins: Arc::clone(&self.origins),
        })
    }

    /// Compiles client bytes. Blocking and slow (seconds for a large guest): call it off the
    /// async runtime. Bytes are only ever compiled here, never deserialized.
    pub(crate) fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        let component = Component::from_binary(&self.engine, bytes)?;
        self.stats.compiled();
        Ok(component)
    }

    /// Writes the precompiled form of `component` to the cache, so the next load of this
    /// digest skips compilation.
    pub(crate) fn cache_artifact(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        self.cache.store(digest, component)
    }

    /// The compiled component for `digest`: from the cache when it holds a usable artifact,
    /// else compiled from the stored component file (and cached). Blocking.
    pub(crate) fn load(&self, digest: &str, component_file: &Path) -> anyhow::Result<Component> {
        if let Some(component) = self.cached(digest) {
            return Ok(component);
        }
        let bytes = std::fs::read(component_file)
            .with_context(|| format!("reading {}", component_file.display()))?;
        let component = self
            .compile(&bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling {digest}"))?;
        if let Err(e) = self.cache.store(digest, &component) {
            tracing::warn!(%digest, "could not cache the compiled component: {e:#}");
        }
        Ok(component)
    }

    /// The compiled component for `digest` if the cache holds a usable one. Blocking.
    pub(crate) fn cached(&self, digest: &str) -> Option<Component> {
        let component = self.cache.load(&self.engine, digest)?;
        self.stats.cache_loaded();
        Some(component)
    }

    /// Forgets the cached artifact of a component that is no longer stored.
    pub fn evict(&self, digest: &str) {
        self.cache.remove(digest);
    }

    /// Forgets every cached artifact whose digest is not in `keep`.
    pub fn retain_cached(&self, keep: &std::collections::HashSet<String>) {
        self.cache.retain(keep);
    }
}

/// The engine settings that trade memory for per-call speed. [`Tuning::default`] is what
/// `gust serve` runs with; [`Tuning::wasmtime_defaults`] is wasmtime's own configuration,
/// kept so the benchmarks can measure, in one run, what each setting buys (BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Reserve instance slots once and reuse them; `None` maps and unmaps per call.
    pub pool: Option<PoolTuning>,
    /// Map a guest's initial memory copy-on-write from its compiled image instead of
    /// copying the data segments in on every instantiation.
    pub memory_init_cow: bool,
    /// Interrupt guests on the epoch tick. gust needs it (it is how a guest spinning on CPU
    /// is cut off at its deadline); off only to measure its cost.
    pub epoch_interruption: bool,
    /// Make instances of guests slow to instantiate ahead of demand (`standby`).
    pub warm_standby: bool,
    /// Guests computing past their first slice at once (`host::cpu`); `None`: one per core
    /// but one; 0: no bound. Process-wide: the first engine built sets it.
    pub cpu_lanes: Option<usize>,
}

/// Settings of the pooling instance allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTuning {
    /// Bytes of each linear memory and table kept mapped when a slot is freed, reset with
    /// `memset` rather than `madvise` (on virtual machines each `madvise` is a TLB shootdown
    /// costing microseconds). Fiber stacks get the same bound, which wasmtime uses only when
    /// it zeroes stacks (off here).
    pub keep_resident: usize,
    /// Reset only the pages a guest dirtied (Linux `PAGEMAP_SCAN`, kernel 6.7+), instead of
    /// all of `keep_resident`: with it, a large `keep_resident` costs nothing when unused.
    pub pagemap_scan: bool,
    /// Decommits queued before one batch of `madvise` calls (1: none queued).
    pub decommit_batch: usize,
    /// Freed slots kept warm (their memory image still mapped) for reuse by the same
    /// component.
    pub max_unused_warm_slots: u32,
    /// Component instances the pool holds at once: the most calls in flight. `gust serve`
    /// sizes it from `--max-instances`; the default fits an embedding.
    pub instances: u32,
    /// Linear-memory slots, when fewer than four per instance (at most 16,384): `gust serve`
    /// fits them to `vm.max_map_count`, since each slot in use takes four memory mappings.
    pub memories: Option<u32>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            pool: Some(PoolTuning::default()),
            memory_init_cow: true,
            epoch_interruption: true,
            warm_standby: true,
            cpu_lanes: None,
        }
    }
}

/// Measured with `bench/benches/call.rs` (BENCHMARKS.md): resetting only the dirtied pages
/// of up to 1 MiB with `memset`, found with `PAGEMAP_SCAN`, took a Rust echo call from
/// 23 µs to 9 µs and a JavaScript one from 0.81 ms to 0.49 ms; where the kernel lacks the
/// scan, wasmtime falls back to resetting the first `keep_resident` bytes.
impl Default for PoolTuning {
    fn default() -> Self {
        Self {
            keep_resident: 1 << 20,
            pagemap_scan: true,
            decommit_batch: 1,
            max_unused_warm_slots: 100,
            instances: 1000,
            memories: None,
        }
    }
}

impl Tuning {
    /// The wasmtime configuration these settings stand for, for a host whose guests may grow
    /// their memory to `max_memory_bytes`. Public so that a benchmark can run a bare
    /// wasmtime embedding with exactly gust's engine settings.
    #[must_use]
    pub fn wasmtime_config(&self, max_memory_bytes: usize) -> Config {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(self.epoch_interruption)
            .memory_init_cow(self.memory_init_cow)
            .cranelift_opt_level(OptLevel::Speed);
        if let Some(settings) = &self.pool {
            config.allocation_strategy(pool(settings, max_memory_bytes));
        }
        config
    }

    /// wasmtime's defaults: instances allocated on demand, no epoch interruption.
    #[must_use]
    pub fn wasmtime_defaults() -> Self {
        Self {
            pool: None,
            memory_init_cow: true,
            epoch_interruption: false,
            warm_standby: false,
            cpu_lanes: None,
        }
    }
}

/// Linear-memory slots at most. Each slot reserves 4 GiB of address space plus a guard (so
/// compiled guests need no bounds checks on 32-bit memories), and 16,384 of them take 64 TiB,
/// half of x86-64's 128 TiB of user address space. A pool sized for more instances than this
/// shares these slots: a Rust guest uses one memory, componentize-py's one or two.
const MAX_MEMORY_SLOTS: u32 = 16_384;

/// The pooling instance allocator: slots for instances, memories, tables and stacks are
/// reserved once and reused, so a call does not map and unmap memory (on virtual machines
/// the TLB shootdowns of unmapping dominated the per-call cost). Reserved address space
/// costs no memory until a call touches it; a slot's pages are committed as its guest uses
/// them.
fn pool(tuning: &PoolTuning, max_memory_bytes: usize) -> wasmtime::PoolingAllocationConfig {
    // Standby instances (`standby`) live outside admission, so they get slots of their own.
    let instances = tuning
        .instances
        .max(1)
        .saturating_add(crate::standby::HOST_WIDE as u32);
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        // Guests built by componentize-py use about 14 core instances, componentize-js 4.
        .total_core_instances(instances.saturating_mul(16))
        // Set explicitly, so one component cannot take more than its share of the pool's
        // slots (componentize-py makes about 14 core instances sharing one or two
        // memories, each with a table); what its instances hold together is bounded per
        // call by the store's limiter (`host::limits`).
        .max_core_instances_per_component(64)
        .max_memories_per_component(16)
        .max_tables_per_component(64)
        .total_memories(
            instances
                .saturating_mul(4)
                .min(MAX_MEMORY_SLOTS)
                .min(tuning.memories.unwrap_or(u32::MAX).max(1)),
        )
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(max_memory_bytes)
        .linear_memory_keep_resident(tuning.keep_resident)
        .table_keep_resident(tuning.keep_resident)
        .async_stack_keep_resident(tuning.keep_resident)
        .pagemap_scan(if tuning.pagemap_scan {
            wasmtime::Enabled::Auto
        } else {
            wasmtime::Enabled::No
        })
        .decommit_batch_size(tuning.decommit_batch)
        .max_unused_warm_slots(tuning.max_unused_warm_slots);
    pool
}

/// Advances an engine's epoch on every tick. It holds only a weak reference, so it also
/// ends by itself when the engine is dropped (as in tests that build many engines).
pub struct EpochTicker {
    engine: wasmtime::EngineWeak,
}

impl EpochTicker {
    /// Ticks on the calling thread until `stop()` says so or the engine is gone.
    pub fn run(self, stop: impl Fn() -> bool) {
        while !stop() {
            std::thread::sleep(EPOCH_TICK);
            match self.engine.upgrade() {
                Some(engine) => {
                    // Counted first: a guest meeting its deadline right after the increment
                    // must not see the count change during the callback.
                    crate::host::cpu::ticked();
                    engine.increment_epoch();
                }
                None => break,
            }
        }
    }
}

/// Starts a thread that advances `engine`'s epoch on every tick until the engine is dropped:
/// for embeddings without a shutdown structure, like the benchmarks' bare wasmtime, which
/// ticks as gust does.
pub fn start_epoch_ticker(engine: &Engine) {
    let ticker = EpochTicker {
        engine: engine.weak(),
    };
    std::thread::Builder::new()
        .name("gust-epoch".into())
        .spawn(move || ticker.run(|| false))
        .expect("spawning the epoch thread");
}
