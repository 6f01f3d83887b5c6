//! `gust serve`: the composition root and the HTTP edge.
//!
//! - [`serve()`]: opens the data folder, the store and the engine, starts the use cases
//!   (`gust-core`), listens, and stops everything in order on shutdown;
//! - `listen`: accepting and serving connections (timeouts, limits, TLS), the graceful drain;
//!   `stall`: the write timeout for clients that stop reading;
//! - `api`: the routes under `/v1`, their extractors, and the one mapping of errors to
//!   responses;
//! - `data_dir`: the data folder's lock and generated admin token;
//! - [`options`]: every setting of `gust serve`, for the command line to fill in.

mod api;
mod console;
mod data_dir;
mod headers;
mod listen;
pub mod options;
/// Trace context helpers and the spans' target (`gust serve --otlp-endpoint`).
pub use gust_wasm::trace;
mod os;
mod serve;
mod stall;
mod tls;

pub use serve::serve;
