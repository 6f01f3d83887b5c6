//! The host side of what a guest imports: the per-call store data ([`CallState`]) and one
//! file per interface.
//!
//! WASI is linked in full so that every language's toolchain links, but nothing is granted:
//! no preopened directories, no environment, no arguments, sockets and name lookup off,
//! stdin closed. Stdout and stderr are captured (bounded) and become log lines.

mod agent;
mod limits;
mod outbound;
mod sink;
mod stdio;

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::stats::LiveInstance;

pub(crate) use agent::truncate;
pub(crate) use limits::Limiter;
pub use outbound::OutboundPolicy;
pub use sink::{CallInfo, CallSink, HostLog, MAX_HOST_LOG_LINES, Stream, level_name};
use stdio::Captured;

/// Host resources (streams, HTTP requests and the like) one call may hold at once; the
/// default of a million would let a guest make the host allocate without bound.
const MAX_RESOURCES: usize = 10_000;

/// Per-call limits, applied through the store's resource limiter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// Largest linear memory an instance may grow to, in bytes.
    pub(crate) memory_bytes: usize,
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
    config: Arc<BTreeMap<String, String>>,
    /// Where the guest's logs, output, progress and outgoing requests go.
    sink: Arc<dyn CallSink>,
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
            config,
            sink,
            _live: live,
        }
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

/// A store for one call or one trial instantiation: limits on, and an epoch deadline that
/// makes a guest running pure CPU yield every tick, so timeouts and disconnects reach it.
pub(crate) fn new_store(engine: &wasmtime::Engine, state: CallState) -> Store<CallState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);

    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
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
