//! Every setting of `gust serve`: [`ServeOptions`] and the settings of the layers below it,
//! gathered here so the command line fills them in without reaching past the server.

pub use gust_core::deploy::{
    AdmissionLimits, DEFAULT_MAX_INSTANCES, Limits, default_memory_budget,
};
pub use gust_core::runs::{PushSettings, RunSettings};
pub use gust_model::Maxima;
pub use gust_wasm::net::ExtraRoots;
pub use gust_wasm::{DEFAULT_CONNECTIONS_PER_HOST, OutboundSettings, PoolTuning, Tuning};

pub use crate::api::BodyLimits;
pub use crate::os::{
    connection_defaults, instances_default, max_map_count, memories_default, raise_open_files,
};
pub use crate::serve::{HttpSettings, ServeOptions};
