//! Every setting of `gust serve`: [`ServeOptions`] and the settings of the layers below it,
//! gathered here so the command line fills them in without reaching past the server.

pub use gust_core::deploy::{AdmissionLimits, Limits};
pub use gust_core::runs::{PushSettings, RunSettings};
pub use gust_model::Maxima;
pub use gust_wasm::{OutboundSettings, Tuning};

pub use crate::api::BodyLimits;
pub use crate::serve::{HttpSettings, ServeOptions};
