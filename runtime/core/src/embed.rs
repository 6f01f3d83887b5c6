//! Calling an agent in-process, without HTTP, a data folder or a database: the part of a
//! sync call that follows routing and auth — [`Calls::call`] on a fresh `Store` with the
//! deployment's limits and epoch deadline, instantiation, `run`, the outcome mapped to an
//! [`Error`], the `Store` dropped — by the very code `gust serve` runs.
//!
//! The benchmarks measure the per-call cost of the engine settings through it
//! (`bench/benches/call.rs`); it is also the smallest way to embed an agent in a program.

use std::path::Path;
use std::sync::Arc;

use gust_model::{AgentConfig, DeploymentRecord};
use gust_store::components::digest_of;
use gust_wasm::check::{self, CheckError};
use gust_wasm::{CallKind, OutboundSettings, Stats, Tuning, WasmEngine};

use crate::calls::{Admit, CallRequest, Calls, Input, Target};
use crate::deploy::{Admission, AdmissionLimits, Deployment, Registry};
use crate::error::Error;
use crate::runs::new_run_id;

/// One agent, compiled and checked, deployed in-process with the default configuration.
pub struct LoadedAgent {
    calls: Calls,
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
        let engine = Arc::new(WasmEngine::new(
            cache_dir,
            Arc::new(Stats::default()),
            (config.memory_mib as usize) << 20,
            OutboundSettings::default(),
            tuning,
        )?);
        // Ticks until the engine is dropped with this agent.
        if let Some(ticker) = engine.epoch_ticker() {
            std::thread::Builder::new()
                .name("gust-epoch".into())
                .spawn(move || ticker.run(|| false))?;
        }
        let linked = check::load_bytes(&engine, &digest_of(bytes), bytes).map_err(|e| match e {
            CheckError::Invalid(diagnostics) => anyhow::anyhow!(
                "{name} is not a valid agent: {}",
                diagnostics
                    .iter()
                    .map(|d| d.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            CheckError::Internal(e) => e,
        })?;
        let outbound = engine
            .outbound_policy(&config)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let record = DeploymentRecord {
            agent: name.to_owned(),
            deployment: 1,
            version: 1,
            digest: String::new(),
            config,
            deployed_at: gust_model::clock::now_ms(),
            rolled_back_at: None,
        };
        // Calls here skip admission (`Admit::Skip`): the gates are never waited on.
        let admission = Arc::new(Admission::new(AdmissionLimits::default()));
        let deployment = Deployment::new(&record, linked, admission.gate(name), outbound);
        let calls = Calls::new(
            engine,
            Arc::new(Registry::default()),
            admission,
            Arc::default(),
        );
        Ok(Self { calls, deployment })
    }

    /// One sync call of `run` with JSON `input`, on a fresh instance.
    ///
    /// # Errors
    /// The agent's own errors and the host's (trap, timeout, limits), as a sync call
    /// answers them.
    pub async fn call(&self, input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let input = Input {
            bytes: input,
            content_type: "application/json".to_owned(),
        };
        let request = CallRequest {
            trace: None,
            run_id: Arc::from(new_run_id()),
            kind: CallKind::Sync,
            attempt: 1,
            sink: None,
            watcher: None,
        };
        self.calls
            .call(
                Target::Deployment(Arc::clone(&self.deployment)),
                std::future::ready(Ok(input)),
                request,
                Admit::Skip,
            )
            .await
            .outcome
            .map(|output| output.bytes)
    }
}
