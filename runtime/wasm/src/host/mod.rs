//! The host side of what a guest imports: the per-call store data ([`CallState`]) and one
//! file per interface.
//!
//! WASI is linked in full so that every language's toolchain links, but nothing is granted:
//! no preopened directories, no environment, no arguments, sockets and name lookup off,
//! stdin closed. Stdout and stderr are captured (bounded) and become log lines.

mod agent;
mod client;
mod colocate;
pub mod cpu;
mod limits;
mod outbound;
mod replay;
mod sink;
mod stdio;
mod stranded;

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::stats::LiveInstance;

pub(crate) use agent::{Emitted, truncate};
pub(crate) use client::{GuestClient, OriginSlots, guest_client};
pub(crate) use limits::Limiter;
pub use outbound::OutboundPolicy;
pub use sink::{CallInfo, CallSink, HostLog, MAX_HOST_LOG_LINES, Stream, level_name};
use stdio::Captured;

/// An error of the guests' HTTP client, boxed.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a guest's request body is sent as (defined here, where `client` and `replay` both
/// reach it without reaching each other).
pub(crate) type GuestBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// Host resources (streams, HTTP requests and the like) one call may hold at once; the
/// default of a million would let a guest make the host allocate without bound.
const MAX_RESOURCES: usize = 10_000;

/// Per-call limits, applied through the store's resource limiter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// Largest linear memory an instance may grow to, in bytes.
    pub(crate) memory_bytes: usize,
    /// Largest output of a call (emitted chunks and the returned output together), in bytes.
    pub(crate) output_bytes: usize,
}

/// The data of one call's `Store`. Built fresh for every call and dropped with it.
pub struct CallState {
    /// Built on the guest's first WASI import, not with the call: building it seeds two
    /// random generators and boxes clocks and streams (about 5 % of a Rust echo call), and
    /// a guest that only computes on its input never touches WASI.
    wasi: Option<Wasi>,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: outbound::Outbound,
    pub(crate) limiter: Limiter,
    /// The chunks of output the guest emitted so far.
    pub(crate) emitted: Emitted,
    config: Arc<BTreeMap<String, String>>,
    /// Where the guest's logs, output, progress and outgoing requests go.
    sink: Arc<dyn CallSink>,
    /// Its turns on the CPU lanes, once it computes past a slice.
    cpu: cpu::Turn,
    _live: LiveInstance,
}

impl CallState {
    pub(crate) fn new(
        config: Arc<BTreeMap<String, String>>,
        limits: CallLimits,
        live: LiveInstance,
        sink: Arc<dyn CallSink>,
        outbound: OutboundPolicy,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi: None,
            http: WasiHttpCtx::new(),
            table,
            outbound: outbound::Outbound {
                policy: outbound,
                sink: Arc::clone(&sink),
                buffered: outbound::Buffered::new(live.stats()),
            },
            limiter: Limiter::new(limits.memory_bytes),
            emitted: Emitted::new(limits.output_bytes),
            config,
            sink,
            cpu: cpu::Turn::default(),
            _live: live,
        }
    }

    /// Sends what the guest reports from now on to `sink`: a standby instance, made before
    /// its call, gets the call's sink when the call takes it.
    pub(crate) fn bind(&mut self, sink: Arc<dyn CallSink>) {
        self.outbound.sink = Arc::clone(&sink);
        self.sink = sink;
        self.cpu.restart();
    }

    /// Hands what the guest wrote to stdout and stderr to the sink, line by line.
    pub(crate) fn flush_output(&self) {
        // Without a WASI context the guest never had a stream to write to.
        let Some(wasi) = &self.wasi else {
            return;
        };
        for (stream, captured) in [
            (Stream::Stdout, &wasi.stdout),
            (Stream::Stderr, &wasi.stderr),
        ] {
            for line in captured.take_lines() {
                self.sink.output(stream, &line);
            }
        }
    }
}

/// Ticks a call runs before its first yield: two, so a call that computes for less than a
/// tick never yields, even when a tick falls during it (with one, 3 % of 0.3 ms echo calls
/// met a tick, yielded, and queued behind every CPU-bound guest: the p99 of the fairness
/// benchmark). Later slices are one tick.
pub(crate) const FIRST_SLICE_TICKS: u64 = 2;

/// A store for one call or one trial instantiation: limits on, and an epoch deadline that
/// makes a guest running pure CPU yield every tick, so timeouts and disconnects reach it.
pub(crate) fn new_store(engine: &wasmtime::Engine, state: CallState) -> Store<CallState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);

    store.set_epoch_deadline(FIRST_SLICE_TICKS);
    // A guest computing on CPU yields once a tick, through tokio's own yield: tokio then
    // looks for I/O and timers before it polls the guest again (after a plain self-wake it
    // looks only every 61 polls). Past its first slice it continues on a CPU lane (`cpu`),
    // so guests that compute cannot hold every worker. Beside four spinning guests on two
    // cores, an echo's p50 went from 137 ms with neither to 14 ms with the yield alone, to
    // what BENCHMARKS.md, "Fairness", shows with both.
    // Which calls into the host waited (`cpu::Turn`): two atomic loads per host call.
    store.call_hook(|mut ctx, hook| {
        match hook {
            wasmtime::CallHook::CallingHost => ctx.data_mut().cpu.entering_host(),
            wasmtime::CallHook::ReturningFromHost => ctx.data_mut().cpu.leaving_host(),
            wasmtime::CallHook::CallingWasm | wasmtime::CallHook::ReturningFromWasm => {}
        }
        Ok(())
    });
    store.epoch_deadline_callback(|mut ctx| {
        Ok(match ctx.data_mut().cpu.at_tick() {
            Some(wait) => wasmtime::UpdateDeadline::YieldCustom(1, wait),
            // Back from a wait, not computing: a fresh first slice.
            None => wasmtime::UpdateDeadline::Continue(FIRST_SLICE_TICKS),
        })
    });
    store
}

/// A call's WASI context and the streams its stdout and stderr are captured in.
struct Wasi {
    ctx: WasiCtx,
    stdout: Captured,
    stderr: Captured,
}

impl Wasi {
    /// Nothing granted: no preopened directories, environment or arguments, sockets and
    /// name lookup off, stdin closed.
    fn new() -> Self {
        let stdout = Captured::new();
        let stderr = Captured::new();
        let ctx = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            ctx,
            stdout,
            stderr,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.get_or_insert_with(Wasi::new).ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}
