//! The host side of what a guest imports: the per-call store data ([`CallState`]) and one
//! file per interface.
//!
//! WASI is linked in full so that every language's toolchain links, but nothing is granted:
//! no preopened directories, no environment, no arguments, sockets and name lookup off,
//! stdin closed. Stdout and stderr are captured (bounded) and become log lines.

mod agent;
mod limits;
mod outbound;
mod stdio;

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::runs::recorder::RunRecorder;
use crate::stats::LiveInstance;

pub(crate) use agent::truncate;
pub(crate) use limits::Limiter;
pub(crate) use outbound::OutboundPolicy;
pub(crate) use stdio::Captured;

/// Host resources (streams, HTTP requests and the like) one call may hold at once; the
/// default of a million would let a guest make the host allocate without bound.
const MAX_RESOURCES: usize = 10_000;

/// Lines one sync call may send to the host log; the rest are counted, not written.
pub(crate) const MAX_HOST_LOG_LINES: usize = 1000;

/// Who is running: the fields every log line of the call is tagged with.
#[derive(Debug, Clone)]
pub(crate) struct CallInfo {
    pub(crate) agent: Arc<str>,
    pub(crate) version: u32,
    pub(crate) run_id: Arc<str>,
}

/// Per-call limits, applied through the store's resource limiter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// Largest linear memory an instance may grow to, in bytes.
    pub(crate) memory_bytes: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
        }
    }
}

/// The data of one call's `Store`. Built fresh for every call and dropped with it.
pub(crate) struct CallState {
    /// Built on the guest's first WASI import, not with the call: building it seeds two
    /// random generators and boxes clocks and streams (about 5 % of a Rust echo call), and
    /// a guest that only computes on its input never touches WASI.
    wasi: Option<Wasi>,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: outbound::Outbound,
    pub(crate) limiter: Limiter,
    info: CallInfo,
    config: Arc<BTreeMap<String, String>>,
    /// A queued run's log and progress keeper; `None` for sync calls, which log to the host.
    recorder: Option<Arc<RunRecorder>>,
    /// Lines this call sent to the host log (sync calls), bounded by [`MAX_HOST_LOG_LINES`].
    logged: usize,
    _live: LiveInstance,
}

impl CallState {
    pub(crate) fn new(
        info: CallInfo,
        config: Arc<BTreeMap<String, String>>,
        limits: CallLimits,
        live: LiveInstance,
        recorder: Option<Arc<RunRecorder>>,
        outbound: OutboundPolicy,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi: None,
            http: WasiHttpCtx::new(),
            table,
            logged: 0,
            outbound: outbound::Outbound {
                policy: outbound,
                info: info.clone(),
                recorder: recorder.clone(),
            },
            limiter: Limiter::new(limits.memory_bytes),

            info,
            config,
            recorder,
            _live: live,
        }
    }

    /// Sends what the guest wrote to stdout and stderr to the run's log (queued runs) or the
    /// host log (sync calls), tagged with the run.
    pub(crate) fn flush_output(&self) {
        // Without a WASI context the guest never had a stream to write to.
        let Some(wasi) = &self.wasi else {
            return;
        };
        let CallInfo {
            agent,
            version,
            run_id,
        } = &self.info;
        for (stream, captured) in [("stdout", &wasi.stdout), ("stderr", &wasi.stderr)] {
            for line in captured.take_lines() {
                match &self.recorder {
                    Some(recorder) => recorder.log(stream, &line),
                    None => tracing::info!(%agent, version, %run_id, stream, "{line}"),
                }
            }
        }
    }

    /// Whether a sync call may still write to the host log (false past the bound, with one
    /// line saying so).
    pub(crate) fn may_log(&mut self) -> bool {
        self.logged += 1;
        if self.logged == MAX_HOST_LOG_LINES + 1 {
            let CallInfo {
                agent,
                version,
                run_id,
            } = &self.info;
            tracing::warn!(%agent, version, %run_id, "more log lines of this call are dropped");
        }
        self.logged <= MAX_HOST_LOG_LINES
    }
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
