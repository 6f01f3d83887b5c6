//! gust: a host runtime for agent flows compiled to WebAssembly components.
//!
//! A component is uploaded, checked against the agent world (`wit/`), deployed behind a
//! fixed route and called there; redeploys swap versions atomically. The modules, from the
//! edge inwards:
//!
//! - `server`: `gust serve` — data folder, listener, graceful shutdown;
//! - `api`: HTTP routes — control plane (agents, versions, deploy) and data plane (run);
//! - `agents`: the control plane's operations, independent of HTTP;
//! - `registry`: agent name → live deployment, read lock-free on every call;
//! - `keys`: per-agent invoke keys, checked from memory;
//! - `invoke`: one call — a fresh `Store`, limits, deadline, result mapping;
//! - `gate`: admission — instances running at once, per agent and server-wide;
//! - `host`: what a guest imports (log, config, progress, WASI, outbound HTTP);
//! - `check`: an upload against the agent world, with diagnostics;
//! - `engine`: the wasmtime `Engine`, `Linker`, epoch ticker and precompiled cache;
//! - `bindings`: the one `bindgen!` of the agent world;
//! - `store`: persistence behind one trait (SQLite embedded; PostgreSQL for many hosts);
//! - `runs`: run ids (and, with queued runs, the job queue);
//! - `stats`, [`clock`], [`error`]: counters, timestamps, the error kinds;
//! - `embed`: an agent called in-process, by the same code (for benchmarks and embedding);
//! - `cli`: the client commands that speak the HTTP API, and the project commands;
//! - `project`: on the author's machine — `gust new` projects, `gust build` with each
//!   language's pinned toolchain.

pub mod agents;
pub mod api;
pub(crate) mod bindings;
pub(crate) mod blocking;
pub mod check;
pub mod cli;
pub(crate) mod clock;
pub mod embed;
pub mod engine;
pub mod error;
pub(crate) mod fsutil;
pub(crate) mod gate;
pub(crate) mod host;
pub(crate) mod invoke;
pub(crate) mod keys;
pub(crate) mod net;
pub mod project;
pub(crate) mod registry;
pub mod runs;
pub mod server;
pub mod stats;
pub mod store;
pub(crate) mod tls;

pub use error::Error;
