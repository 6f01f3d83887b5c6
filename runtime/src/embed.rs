//! Calling an agent in-process, without HTTP, a data folder or a database: the part of a
//! sync call that follows routing, auth and admission — a fresh `Store` with the
//! deployment's limits and epoch deadline, instantiation, `run`, the outcome mapped to an
//! [`Error`], the `Store` dropped — by the very code `gust serve` runs.
//!
//! The benchmarks measure the per-call cost of the engine settings through it
//! (`bench/benches/call.rs`); it is also the smallest way to embed an agent in a program.

use std::path::Path;
use std::sync::Arc;

use crate::agents;
use crate::bindings::Mode;
use crate::check;
use crate::engine::{OutboundSettings, Runtime, Tuning};
use crate::error::Error;
use crate::gate::Gate;
use crate::invoke::{self, Call};
use crate::registry::Deployment;
use crate::stats::Stats;
use crate::store::{AgentConfig, DeploymentRecord};

/// One agent, compiled and checked, deployed in-process with the default configuration.
pub struct LoadedAgent {
    runtime: Runtime,
    deployment: Arc<Deployment>,
}

impl LoadedAgent {
    /// Compiles `bytes` (seconds for a large guest; blocking) with the engine `tuning` and
    /// checks them against the agent world, as an upload is checked. `cache_dir` holds the
    /// precompiled artifacts, as in a data folder: a component compiled before by an engine
    /// with the same code-generation settings is loaded from there instead.
    ///
    /// # Errors
    /// When the engine cannot be built, or the component is not a valid agent (the message
    /// lists every diagnostic).
    pub fn load(
        name: &str,
        bytes: &[u8],
        tuning: &Tuning,
        cache_dir: &Path,
    ) -> anyhow::Result<Self> {
        let config = AgentConfig::default();
        let runtime = Runtime::new(
            cache_dir,
            Arc::new(Stats::default()),
            (config.memory_mib as usize) << 20,
            OutboundSettings::default(),
            tuning,
        )?;
        let invalid = |diagnostics: Vec<check::Diagnostic>| {
            anyhow::anyhow!(
                "{name} is not a valid agent: {}",
                diagnostics
                    .iter()
                    .map(|d| d.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let digest = crate::store::components::digest_of(bytes);
        let pre = match runtime.cached(&digest) {
            Some(component) => check::check(&runtime, &component).map_err(invalid)?,
            None => {
                let (component, pre) =
                    check::compile_and_check(&runtime, bytes).map_err(|e| match e {
                        Ok(diagnostics) => invalid(diagnostics),
                        Err(e) => e,
                    })?;
                runtime.cache_artifact(&digest, &component)?;
                pre
            }
        };
        let outbound = runtime
            .outbound_policy(&config)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let record = DeploymentRecord {
            agent: name.to_owned(),
            deployment: 1,
            version: 1,
            digest: String::new(),
            config,
            deployed_at: crate::clock::now_ms(),
            rolled_back_at: None,
        };
        // Calls here skip admission: the gate is never waited on.
        let gate = Gate::new(1);
        let deployment = agents::activate(&record, pre, gate, outbound);
        Ok(Self {
            runtime,
            deployment,
        })
    }

    /// One sync call of `run` with JSON `input`, on a fresh instance.
    ///
    /// # Errors
    /// The agent's own errors and the host's (trap, timeout, limits), as a sync call
    /// answers them.
    pub async fn call(&self, input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let call = Call {
            run_id: Arc::from(crate::runs::new_run_id()),
            input,
            content_type: "application/json".to_owned(),
            mode: Mode::Sync,
            attempt: 1,
            timeout: Some(self.deployment.sync_timeout),
            recorder: None,
        };
        invoke::invoke(&self.runtime, &self.deployment, call)
            .await
            .map(|output| output.bytes)
    }
}
