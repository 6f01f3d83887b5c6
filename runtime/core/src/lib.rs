//! gust's use cases, independent of HTTP: what the API and the console do is done here.
//!
//! - [`deploy`]: the deployment lifecycle (upload, configure, deploy, roll back, delete),
//!   what is live ([`deploy::Registry`]), loading components, admission;
//! - [`calls`]: the one path every call of an agent takes — resolve, admit, invoke,
//!   account;
//! - [`runs`]: the durable run queue — submit, workers, polling, push delivery;
//! - [`auth`]: the admin token and per-agent invoke keys;
//! - [`secrets`]: push signing secrets;
//! - [`embed`]: an agent called in-process, by the same code;
//! - [`background`]: every background loop, stopped in a defined order;
//! - [`Host`]: all of it wired together for one data folder.
//!
//! Below it: `gust-wasm` runs components, `gust-store` keeps records (ARCHITECTURE.md).

pub mod auth;
pub mod background;
pub mod calls;
pub mod clock;
pub mod deploy;
pub mod embed;
pub mod error;
mod follow;
mod host;
pub(crate) mod locks;
pub mod logs;
pub mod metrics;
pub mod runs;
pub mod secrets;
pub(crate) mod tasks;

pub use error::Error;
pub use host::{Host, HostSettings};
