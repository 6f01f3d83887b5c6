//! gust's Wasm side: everything between component bytes and one call's answer.
//!
//! - [`engine`]: wasmtime's `Engine` with gust's settings ([`Tuning`]), the `Linker` with
//!   all a guest may import, the epoch ticker; `cache` keeps precompiled components;
//! - [`check`]: an upload against the agent world, with diagnostics, and its trial
//!   instantiation; a component that passes is [`Linked`];
//! - [`invoke`]: one call of `run` on a [`PreparedAgent`] — a fresh `Store`, limits, the
//!   deadline, the outcome mapped to [`Output`] or [`CallError`];
//! - [`host`]: what a guest imports (log, config, progress, WASI, outbound HTTP), per-call
//!   state, and the [`CallSink`] that receives what a guest reports;
//! - [`net`]: which addresses the host may connect to on a user's behalf (SSRF policy);
//! - [`standby`]: instances of heavy guests made ahead of demand, one call each;
//! - [`stats`]: counters of compiles, cache loads and live instances.
//!
//! It knows nothing of deployments, queues or HTTP routes: callers hand it a prepared
//! component and a sink, and get an outcome back.

mod bindings;
mod cache;
pub mod check;
pub mod engine;
pub mod host;
pub mod invoke;
pub mod net;
pub mod standby;
pub mod stats;
pub mod trace;

pub use bindings::{CallKind, Level};
pub use check::{CheckError, Compiled, Linked};
pub use engine::{
    DEFAULT_CONNECTIONS_PER_HOST, EpochTicker, OutboundSettings, PoolTuning, Tuning, WasmEngine,
};
pub use host::{CallInfo, CallSink, HostLog, OutboundPolicy, Stream};
pub use invoke::{Call, CallError, Output, PreparedAgent, invoke};
pub use stats::{Stats, StatsSnapshot};
