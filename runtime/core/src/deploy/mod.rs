//! Deployments: what is live ([`Registry`]), how it gets there ([`Lifecycle`]: upload,
//! configure, deploy, roll back, delete), how stored components become callable
//! (`loader`), how many instances may run at once ([`Admission`]), and which
//! configurations are allowed (`validate`).

mod admission;
mod lifecycle;
mod loader;
mod memory;
mod registry;
mod validate;

use std::time::Duration;

use gust_model::Maxima;

pub use admission::{Admission, AdmissionLimits, DEFAULT_MAX_INSTANCES};
pub use admission::{Admitted, Slot};
pub use lifecycle::{DeployPreview, Deployed, Draft, Lifecycle, SavedDraft, Uploaded};
pub(crate) use lifecycle::{no_agent, not_deployed};
pub(crate) use loader::Loader;
pub use memory::default_budget as default_memory_budget;
pub use registry::{Deployment, Registry};
pub use validate::validate as validate_config;

/// Server-wide limits of instances, compiles, and what deployments may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Instances running at once.
    pub admission: AdmissionLimits,
    /// How long compiling an upload may take before it is refused.
    pub compile_budget: Duration,
    /// The largest limits a deployment may set.
    pub maxima: Maxima,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            admission: AdmissionLimits::default(),
            compile_budget: Duration::from_secs(300),
            maxima: Maxima::default(),
        }
    }
}
