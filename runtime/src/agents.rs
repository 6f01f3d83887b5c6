//! The control plane's operations on agents — upload, configure, deploy, roll back, delete —
//! kept apart from HTTP so that the API stays a thin mapping.
//!
//! Every operation that changes what is live holds that agent's lock (never across a compile
//! of an upload), writes the store first and swaps the registry last: if any step fails,
//! nothing changed that a caller could see.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, Semaphore};
use wasmtime::component::Component;

use crate::bindings::AgentPre;
use crate::blocking::blocking;
use crate::check::{self, Diagnostic};
use crate::clock;
use crate::engine::Runtime;
use crate::error::Error;
use crate::gate::{self, Admitted, Gate};
use crate::host::{CallInfo, CallLimits, CallState, OutboundPolicy};
use crate::invoke;
use crate::keys::{self, KeyRecord, KeyRing, RateLimit};
use crate::registry::{Deployment, Registry};
use crate::runs::signing;
use crate::store::components::{ComponentFiles, digest_of};
use crate::store::{
    AgentConfig, AgentRecord, AgentSummary, DeploymentRecord, Maxima, REDACTED, RollbackPlan,
    Store, StoreError, VersionDeletion, VersionRecord,
};

/// How long the deploy-time trial instantiation may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a rotated-out push secret keeps signing.
const SECRET_OVERLAP_MS: i64 = 24 * 3600 * 1000;

/// Whether `name` is a valid agent name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_agent_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The result of an upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The version the bytes are stored as.
    pub version: VersionRecord,
    /// `false` when the same bytes were uploaded before (the existing version is returned).
    pub created: bool,
}

/// See the module docs.
pub struct Agents {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    files: ComponentFiles,
    registry: Arc<Registry>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Compiles are CPU-heavy and take seconds; bound how many run at once.
    compile_slots: Arc<Semaphore>,
    /// Held while component files are written with their version row, or removed with
    /// theirs; see [`Agents::delete_and_forget`].
    files_lock: Arc<Mutex<()>>,
    keys: KeyRing,
    limits: Limits,
    /// Instances running at once, server-wide.
    server_gate: Arc<Gate>,
    /// Each agent's gate; see [`Agents::gate`].
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

/// Server-wide limits of instances and of what deployments may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Instances running at once, server-wide.
    pub max_instances: usize,
    /// A deployment's `max_instances` when it sets none: below the core count, so one agent
    /// cannot occupy every core.
    pub agent_instances: usize,
    /// How long a sync call waits for room before 429 `overloaded`.
    pub sync_wait: Duration,
    /// How long compiling an upload may take before it is refused.
    pub compile_budget: Duration,
    /// The largest limits a deployment may set.
    pub maxima: Maxima,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            max_instances: 256,
            agent_instances: cores.saturating_sub(1).max(1),
            sync_wait: Duration::from_secs(2),
            compile_budget: Duration::from_secs(300),
            maxima: Maxima::default(),
        }
    }
}

impl Agents {
    /// Wires the pieces together. Nothing is loaded until [`Agents::load_live`].
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        store: Arc<dyn Store>,
        files: ComponentFiles,
        keys: KeyRing,
        limits: Limits,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            runtime,
            store,
            files,
            registry: Arc::default(),
            locks: Mutex::default(),
            compile_slots: Arc::new(Semaphore::new(cores.max(1))),
            files_lock: Arc::default(),
            keys,
            server_gate: Gate::new(limits.max_instances),
            gates: Mutex::default(),
            limits,
        }
    }

    /// The agent's admission gate, shared by all its deployments; with `config`, resized to
    /// what that (newly live) configuration asks for.
    fn gate(&self, agent: &str, config: Option<&AgentConfig>) -> Arc<Gate> {
        let default = self.limits.agent_instances;
        let gate = Arc::clone(
            self.gates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.to_owned())
                .or_insert_with(|| Gate::new(default)),
        );
        if let Some(config) = config {
            gate.set_limit(config.max_instances.map_or(default, |n| n as usize));
        }
        gate
    }

    /// Room for one sync call, waiting at most the server's admission wait.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the agent or the host is full.
    pub(crate) async fn admit_call(&self, deployment: &Deployment) -> Result<Admitted, Error> {
        gate::admit(
            &deployment.gate,
            &self.server_gate,
            Some(self.limits.sync_wait),
        )
        .await
    }

    /// The admission gate of `agent` (queued runs enter it, then the server's).
    pub(crate) fn agent_gate(&self, agent: &str) -> Arc<Gate> {
        self.gate(agent, None)
    }

    /// The server-wide admission gate.
    pub(crate) fn server_gate(&self) -> &Arc<Gate> {
        &self.server_gate
    }

    /// Instances running now, server-wide.
    pub(crate) fn instances_in_use(&self) -> usize {
        self.server_gate.in_use()
    }

    fn activate(
        &self,
        record: &DeploymentRecord,
        pre: AgentPre<CallState>,
        live: bool,
    ) -> Result<Arc<Deployment>, Error> {
        let gate = self.gate(&record.agent, live.then_some(&record.config));
        Ok(activate(record, pre, gate, self.outbound(&record.config)?))
    }

    fn outbound(&self, config: &AgentConfig) -> Result<OutboundPolicy, Error> {
        self.runtime.outbound_policy(config).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "a stored configuration does not parse: {e}"
            ))
        })
    }

    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Makes an invoke key for `agent`; the key is in the answer and nowhere else.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent, [`Error::BadRequest`] for a bad name or limit.
    pub async fn create_key(
        &self,
        agent: &str,
        name: &str,
        rate_limit: Option<RateLimit>,
    ) -> Result<(String, KeyRecord), Error> {
        if name.is_empty() || name.len() > 128 {
            return Err(Error::BadRequest(
                "`name` must be 1 to 128 characters".into(),
            ));
        }
        if let Some(limit) = &rate_limit {
            limit.validate().map_err(Error::BadRequest)?;
        }
        // Under the agent's lock, like its deletion: the ring and the store change together.
        let _guard = self.lock(agent).await;
        let (key, record) = keys::new_key(agent, name, rate_limit);
        let store = Arc::clone(&self.store);
        let saved = record.clone();
        blocking(move || store.create_key(&saved)).await??;
        self.keys.add(record.clone());
        tracing::info!(agent, key_id = %record.id, "created an invoke key");
        Ok((key, record))
    }

    /// The keys of `agent` (never the keys themselves).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn list_keys(&self, agent: &str) -> Result<Vec<KeyRecord>, Error> {
        self.get(agent).await?;
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        Ok(blocking(move || store.list_keys(&a)).await??)
    }

    /// Revokes a key at once.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the agent has no such key.
    pub async fn revoke_key(&self, agent: &str, id: &str) -> Result<(), Error> {
        let _guard = self.lock(agent).await;
        let store = Arc::clone(&self.store);
        let (a, i) = (agent.to_owned(), id.to_owned());
        if !blocking(move || store.delete_key(&a, &i)).await?? {
            return Err(Error::NotFound(format!(
                "agent `{agent}` has no key `{id}`"
            )));
        }
        self.keys.remove(id);
        tracing::info!(agent, key_id = id, "revoked an invoke key");
        Ok(())
    }

    /// Writes the keys' last-use times gathered in memory.
    pub(crate) async fn flush_key_use(&self) {
        let used = self.keys.take_last_used();
        if used.is_empty() {
            return;
        }
        let store = Arc::clone(&self.store);
        match blocking(move || store.touch_keys(&used)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("recording key use: {e:#}"),
            Err(e) => tracing::warn!("recording key use: {e:#}"),
        }
    }

    /// Rebuilds the registry from the store at start: every agent is served again at its
    /// live deployment, from the precompiled cache when it holds the artifact. An agent
    /// whose component cannot be loaded is logged and skipped, so one broken file does not
    /// keep every other agent down.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load_live(&self) -> Result<usize, Error> {
        let outcome = self.load_live_inner().await;
        // Ready even on failure: nothing waits forever, and the server stops on the error.
        self.registry.set_ready();
        outcome
    }

    async fn load_live_inner(&self) -> Result<usize, Error> {
        self.sweep_unreferenced().await?;
        let store = Arc::clone(&self.store);
        let live = blocking(move || store.live_deployments()).await??;
        let mut loaded = 0;
        for record in live {
            match self.prepare(&record.digest).await {
                Ok(pre) => {
                    match self.activate(&record, pre, true) {
                        Ok(deployment) => {
                            self.registry.set(deployment);
                        }
                        Err(e) => {
                            tracing::error!(agent = %record.agent, "could not load the live deployment: {e:#}");
                            continue;
                        }
                    }
                    loaded += 1;
                }
                Err(e) => tracing::error!(
                    agent = %record.agent,
                    deployment = record.deployment,
                    "could not load the live deployment; the agent is not served: {e:#}"
                ),
            }
        }
        // Changes to what is live wait for readiness (`wait_ready`), so none can be
        // overwritten by this load's older snapshot.
        Ok(loaded)
    }

    /// Removes component files and cached artifacts that no version refers to: what an
    /// upload left when it failed (or the process died) between writing its bytes and
    /// recording its version.
    async fn sweep_unreferenced(&self) -> Result<(), Error> {
        let (files, files_lock) = (self.files.clone(), Arc::clone(&self.files_lock));
        let (runtime, store) = (Arc::clone(&self.runtime), Arc::clone(&self.store));
        blocking(move || {
            let _files = files_lock.lock().unwrap_or_else(|e| e.into_inner());
            let referenced = store.referenced_digests()?;
            for digest in files.digests() {
                if !referenced.contains(&digest) {
                    tracing::info!(%digest, "removing a component no version refers to");
                    files.remove(&digest);
                }
            }
            runtime.retain_cached(&referenced);
            Ok(())
        })
        .await?
    }

    /// Stores a new version after compiling and checking it. The same bytes uploaded again
    /// return the existing version.
    ///
    /// # Errors
    /// [`Error::InvalidComponent`] with diagnostics when the component cannot run here.
    pub async fn upload(&self, agent: &str, bytes: Bytes) -> Result<Uploaded, Error> {
        let digest = {
            let bytes = bytes.clone();
            blocking(move || digest_of(&bytes)).await?
        };
        let store = Arc::clone(&self.store);
        let (a, d) = (agent.to_owned(), digest.clone());
        if let Some(version) = blocking(move || store.version_by_digest(&a, &d)).await?? {
            return Ok(Uploaded {
                version,
                created: false,
            });
        }

        let budget = self.limits.compile_budget;
        let started = tokio::time::Instant::now();
        // Waiting for a compile slot counts against the budget too: abandoned compiles keep
        // their slots until they end, and an upload must not wait for them without end.
        let permit =
            match tokio::time::timeout(budget, Arc::clone(&self.compile_slots).acquire_owned())
                .await
            {
                Ok(permit) => permit.map_err(|e| Error::Internal(e.into()))?,
                Err(_) => {
                    return Err(Error::Overloaded {
                        message: "every compile slot is busy; retry later".into(),
                        retry_after: Some(Duration::from_secs(10)),
                    });
                }
            };
        let runtime = Arc::clone(&self.runtime);
        let compile = {
            let bytes = bytes.clone();
            // The slot goes with the compile: one that outlives the budget keeps its slot
            // until it ends, so abandoned compiles cannot pile up beyond the bound.
            tokio::task::spawn_blocking(move || {
                let _slot = permit;
                check::compile_and_check(&runtime, &bytes)
            })
        };
        let checked = match tokio::time::timeout(budget.saturating_sub(started.elapsed()), compile)
            .await
        {
            Ok(joined) => joined
                .map_err(|e| Error::Internal(anyhow::anyhow!("the compile task failed: {e}")))?,
            Err(_) => {
                return Err(invalid(vec![Diagnostic {
                    code: "limit_exceeded",
                    item: String::new(),
                    message: format!(
                        "compiling the component took longer than {}s",
                        budget.as_secs()
                    ),
                }]));
            }
        };
        let (component, pre) = match checked {
            Ok(ok) => ok,
            Err(Ok(diagnostics)) => return Err(invalid(diagnostics)),
            Err(Err(e)) => return Err(Error::Internal(e)),
        };
        self.trial_instantiate(&pre)
            .await
            .map_err(|d| invalid(vec![d]))?;

        // Bytes first, then the version row: a crash in between leaves an unreferenced file,
        // never a version without its component. The files lock keeps a concurrent delete
        // from removing these bytes (as another version's orphan) before the row exists.
        let size = bytes.len() as u64;
        let (files, files_lock) = (self.files.clone(), Arc::clone(&self.files_lock));
        let (runtime, store) = (Arc::clone(&self.runtime), Arc::clone(&self.store));
        let a = agent.to_owned();
        let (version, created) = blocking(move || -> Result<_, Error> {
            let _files = files_lock.lock().unwrap_or_else(|e| e.into_inner());
            files.write(&digest, &bytes).map_err(Error::Internal)?;
            if let Err(e) = runtime.cache_artifact(&digest, &component) {
                tracing::warn!(%digest, "could not cache the compiled component: {e:#}");
            }
            Ok(store.add_version(&a, &digest, size, clock::now_ms())?)
        })
        .await??;
        if created {
            tracing::info!(agent, version = version.version, digest = %version.digest, "uploaded a new version");
        }
        Ok(Uploaded { version, created })
    }

    /// The draft configuration.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn draft(&self, agent: &str) -> Result<AgentConfig, Error> {
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        blocking(move || store.draft(&a))
            .await??
            .ok_or_else(|| no_agent(agent))
    }

    /// Replaces the draft configuration (creating the agent if needed). It takes effect at
    /// the next deploy.
    ///
    /// The push access token is write-only: a draft that carries [`REDACTED`] in its place
    /// keeps the token the draft has. Turning push on for the first time creates the agent's
    /// signing secret, returned here (and never again).
    ///
    /// # Errors
    /// [`Error::BadRequest`] when a value is out of bounds.
    pub async fn put_draft(
        &self,
        agent: &str,
        mut draft: AgentConfig,
    ) -> Result<(AgentConfig, Option<String>), Error> {
        let _guard = self.lock(agent).await;
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        let (current, secrets) =
            blocking(move || Ok::<_, StoreError>((store.draft(&a)?, store.push_secrets(&a)?)))
                .await??;
        if let Some(push) = &mut draft.push
            && push.access_token == REDACTED
        {
            match current.and_then(|c| c.push) {
                Some(kept) => push.access_token = kept.access_token,
                None => {
                    return Err(Error::BadRequest(
                        "`push.access_token` is write-only: send the token itself".into(),
                    ));
                }
            }
        }
        draft
            .validate(&self.limits.maxima)
            .map_err(Error::BadRequest)?;
        let new_secret = (draft.push.is_some() && secrets.is_none()).then(signing::new_secret);
        let store = Arc::clone(&self.store);
        let (a, saved, secret) = (agent.to_owned(), draft.clone(), new_secret.clone());
        blocking(move || {
            store.put_draft(&a, &saved, clock::now_ms())?;
            if let Some(secret) = secret {
                store.set_push_secret(&a, &secret, 0)?;
            }
            Ok::<_, StoreError>(())
        })
        .await??;
        Ok((draft, new_secret))
    }

    /// Gives the agent a new push signing secret at once (returned here, never again); for
    /// 24 h pushes carry signatures by both the new and the old secret.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn rotate_push_secret(&self, agent: &str) -> Result<String, Error> {
        let _guard = self.lock(agent).await;
        let secret = signing::new_secret();
        let store = Arc::clone(&self.store);
        let (a, s) = (agent.to_owned(), secret.clone());
        let overlap_until = clock::now_ms() + SECRET_OVERLAP_MS;
        blocking(move || store.set_push_secret(&a, &s, overlap_until)).await??;
        tracing::info!(agent, "rotated the push signing secret");
        Ok(secret)
    }

    /// The live deployment of `agent`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when nothing is deployed.
    pub(crate) fn live(&self, agent: &str) -> Result<Arc<Deployment>, Error> {
        self.registry
            .get(agent)
            .ok_or_else(|| Error::NotFound(format!("no agent named `{agent}` is deployed")))
    }

    /// Deployment `number` of `agent`, live or not: queued runs execute on the deployment
    /// that was live when they were accepted.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it no longer exists (the agent was deleted).
    pub(crate) async fn deployment(
        &self,
        agent: &str,
        number: u32,
    ) -> Result<Arc<Deployment>, Error> {
        if let Some(found) = self.registry.find(agent, number) {
            return Ok(found);
        }
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        let record = blocking(move || store.deployment(&a, number))
            .await??
            .ok_or_else(|| {
                Error::NotFound(format!("agent `{agent}` has no deployment {number}"))
            })?;
        let pre = self.prepare(&record.digest).await?;
        let deployment = self.activate(&record, pre, false)?;
        self.registry.remember(Arc::clone(&deployment));
        Ok(deployment)
    }

    /// Deploys `version` (default: the newest) with the current draft and makes it live.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the agent or version does not exist.
    pub async fn deploy(
        &self,
        agent: &str,
        version: Option<u32>,
    ) -> Result<DeploymentRecord, Error> {
        self.registry.wait_ready().await;
        let guard = self.lock(agent).await;
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        let (target, draft) = blocking(move || {
            let target = match version {
                Some(n) => store.version(&a, n)?,
                None => store.latest_version(&a)?,
            };
            Ok::<_, StoreError>((target, store.draft(&a)?))
        })
        .await??;
        let Some(target) = target else {
            return Err(match (version, draft.is_some()) {
                (_, false) => no_agent(agent),
                (Some(n), true) => Error::NotFound(format!("agent `{agent}` has no version {n}")),
                (None, true) => Error::NotFound(format!(
                    "agent `{agent}` has no versions yet; upload one first"
                )),
            });
        };
        let draft = draft.unwrap_or_default();
        let pre = self.prepare(&target.digest).await?;

        // The commit and the swap run together off the async runtime, so a client that
        // disconnects now cannot leave the store and the registry disagreeing.
        let (store, registry) = (Arc::clone(&self.store), Arc::clone(&self.registry));
        let default_instances = self.limits.agent_instances;
        let a = agent.to_owned();
        let gate = self.gate(agent, None);
        let outbound = self.outbound(&draft)?;
        let record = blocking(move || -> Result<_, Error> {
            let _guard = guard;
            let record = store.deploy(&a, target.version, &draft, clock::now_ms())?;
            gate.set_limit(
                record
                    .config
                    .max_instances
                    .map_or(default_instances, |n| n as usize),
            );
            registry.set(activate(&record, pre, gate, outbound));
            Ok(record)
        })
        .await??;
        tracing::info!(
            agent,
            deployment = record.deployment,
            version = record.version,
            "deployed"
        );
        Ok(record)
    }

    /// Makes the previous deployment live again, with its version and frozen configuration.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent, [`Error::Conflict`] when there is nothing
    /// to roll back to.
    pub async fn rollback(&self, agent: &str) -> Result<DeploymentRecord, Error> {
        self.registry.wait_ready().await;
        let guard = self.lock(agent).await;
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        let (from, to) = match blocking(move || store.plan_rollback(&a)).await?? {
            RollbackPlan::NoAgent => return Err(no_agent(agent)),
            RollbackPlan::NothingToRollBackTo => {
                return Err(Error::Conflict(format!(
                    "agent `{agent}` has no earlier deployment to roll back to"
                )));
            }
            RollbackPlan::To { from, to } => (from, *to),
        };
        let pre = self.prepare(&to.digest).await?;
        // As in `deploy`: commit and swap together, whatever the client does.
        let (store, registry) = (Arc::clone(&self.store), Arc::clone(&self.registry));
        let a = agent.to_owned();
        let target = to.clone();
        let gate = self.gate(agent, None);
        let default_instances = self.limits.agent_instances;
        let outbound = self.outbound(&target.config)?;
        blocking(move || -> Result<_, Error> {
            let _guard = guard;
            store.rollback(&a, from, target.deployment, clock::now_ms())?;
            gate.set_limit(
                target
                    .config
                    .max_instances
                    .map_or(default_instances, |n| n as usize),
            );
            registry.set(activate(&target, pre, gate, outbound));
            Ok(())
        })
        .await??;
        tracing::info!(
            agent,
            from,
            to = to.deployment,
            version = to.version,
            "rolled back"
        );
        Ok(to)
    }

    /// Every agent.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn list(&self) -> Result<Vec<AgentSummary>, Error> {
        let store = Arc::clone(&self.store);
        Ok(blocking(move || store.list_agents()).await??)
    }

    /// One agent with its history.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn get(&self, agent: &str) -> Result<AgentRecord, Error> {
        let store = Arc::clone(&self.store);
        let a = agent.to_owned();
        blocking(move || store.agent(&a))
            .await??
            .ok_or_else(|| no_agent(agent))
    }

    /// One version, with its imports and exports as WIT text.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent or version.
    pub async fn version(&self, agent: &str, n: u32) -> Result<(VersionRecord, String), Error> {
        let store = Arc::clone(&self.store);
        let files = self.files.clone();
        let a = agent.to_owned();
        let found = blocking(move || -> Result<_, Error> {
            let Some(v) = store.version(&a, n)? else {
                return Ok(None);
            };
            let bytes = files.read(&v.digest).map_err(Error::Internal)?;
            let wit = check::wit_text(&bytes).map_err(Error::Internal)?;
            Ok(Some((v, wit)))
        })
        .await??;
        found.ok_or_else(|| Error::NotFound(format!("agent `{agent}` has no version {n}")))
    }

    /// Deletes a version that is not live.
    ///
    /// # Errors
    /// [`Error::NotFound`], or [`Error::Conflict`] while the version is live.
    pub async fn delete_version(&self, agent: &str, n: u32) -> Result<(), Error> {
        self.registry.wait_ready().await;
        let guard = self.lock(agent).await;
        let a = agent.to_owned();
        match self
            .delete_and_forget(guard, move |store| store.delete_version(&a, n))
            .await?
        {
            VersionDeletion::NotFound => Err(Error::NotFound(format!(
                "agent `{agent}` has no version {n}"
            ))),
            VersionDeletion::Live => Err(Error::Conflict(format!(
                "version {n} of `{agent}` is live; deploy another version first"
            ))),
            VersionDeletion::InUse => Err(Error::Conflict(format!(
                "queued or running runs of `{agent}` will execute on version {n}; wait for them or cancel them first"
            ))),
            VersionDeletion::Deleted { .. } => Ok(()),
        }
    }

    /// Deletes an agent, its versions and deployments; its endpoint answers 404 from now on.
    /// Calls already running finish.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn delete(&self, agent: &str) -> Result<(), Error> {
        self.registry.wait_ready().await;
        let guard = self.lock(agent).await;
        let a = agent.to_owned();
        let registry = Arc::clone(&self.registry);
        let deleted = self
            .delete_and_forget(guard, move |store| {
                let deleted = store.delete_agent(&a)?;
                if deleted.is_some() {
                    registry.remove(&a);
                }
                Ok(deleted)
            })
            .await?;
        if deleted.is_none() {
            return Err(no_agent(agent));
        }
        self.keys.remove_agent(agent);
        tracing::info!(agent, "deleted");
        Ok(())
    }

    /// Runs a store deletion and removes the component files (and cached artifacts) it
    /// left unreferenced, under the files lock so that an upload of the same bytes cannot
    /// slip in between; off the async runtime and holding the agent's lock to the end, so a
    /// client that disconnects cannot interrupt it halfway.
    async fn delete_and_forget<T: Orphans + Send + 'static>(
        &self,
        guard: OwnedMutexGuard<()>,
        delete: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let (files, files_lock) = (self.files.clone(), Arc::clone(&self.files_lock));
        let (runtime, store) = (Arc::clone(&self.runtime), Arc::clone(&self.store));
        blocking(move || {
            let _guard = guard;
            let _files = files_lock.lock().unwrap_or_else(|e| e.into_inner());
            let outcome = delete(store.as_ref())?;
            for digest in outcome.orphans() {
                files.remove(digest);
                runtime.evict(digest);
            }
            Ok(outcome)
        })
        .await?
    }

    /// The stored component for `digest`, compiled or loaded from the cache, pre-linked.
    async fn prepare(&self, digest: &str) -> Result<AgentPre<CallState>, Error> {
        let runtime = Arc::clone(&self.runtime);
        let path = self.files.path(digest);
        let digest = digest.to_owned();
        blocking(move || -> Result<AgentPre<CallState>, Error> {
            let component: Component = runtime.load(&digest, &path).map_err(Error::Internal)?;
            check::check(&runtime, &component).map_err(|diagnostics| {
                Error::Internal(anyhow::anyhow!(
                    "a stored component no longer passes the check: {diagnostics:?}"
                ))
            })
        })
        .await?
    }

    /// Instantiates once, without calling anything, to prove the component fits the host's
    /// limits before it is accepted.
    async fn trial_instantiate(&self, pre: &AgentPre<CallState>) -> Result<(), Diagnostic> {
        let state = CallState::new(
            CallInfo {
                agent: Arc::from("(upload check)"),
                version: 0,
                run_id: Arc::from("(upload check)"),
            },
            Arc::new(BTreeMap::new()),
            CallLimits::default(),
            self.runtime.stats().live_instance(),
            None,
            self.outbound(&AgentConfig::default())
                .map_err(|e| Diagnostic {
                    code: "instantiation_failed",
                    item: String::new(),
                    message: e.to_string(),
                })?,
        );

        let mut store = invoke::new_store(&self.runtime, state);
        let limit = |message: String| Diagnostic {
            code: "limit_exceeded",
            item: String::new(),
            message,
        };
        match tokio::time::timeout(TRIAL_TIMEOUT, pre.instantiate_async(&mut store)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match store.data().limiter.refused() {
                Some(why) => Err(limit(format!(
                    "the component does not fit the host's limits: {why}"
                ))),
                None => Err(Diagnostic {
                    code: "instantiation_failed",
                    item: String::new(),
                    message: format!("the component failed to instantiate: {e:#}"),
                }),
            },

            Err(_) => Err(limit(format!(
                "instantiation did not finish within {}s",
                TRIAL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The agent's control-plane lock. Entries are never removed (not even when the agent
    /// is deleted): a waiter may still hold the old one, and a second mutex for the same
    /// name would let two changes run at once.
    async fn lock(&self, agent: &str) -> OwnedMutexGuard<()> {
        let lock = Arc::clone(
            self.locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(agent.to_owned())
                .or_default(),
        );
        lock.lock_owned().await
    }
}

/// What a deletion left without any version referring to it.
trait Orphans {
    fn orphans(&self) -> &[String];
}

impl Orphans for VersionDeletion {
    fn orphans(&self) -> &[String] {
        match self {
            VersionDeletion::Deleted {
                orphaned: Some(digest),
            } => std::slice::from_ref(digest),
            _ => &[],
        }
    }
}

impl Orphans for Option<Vec<String>> {
    fn orphans(&self) -> &[String] {
        self.as_deref().unwrap_or_default()
    }
}

pub(crate) fn activate(
    record: &DeploymentRecord,
    pre: AgentPre<CallState>,
    gate: Arc<Gate>,
    outbound: OutboundPolicy,
) -> Arc<Deployment> {
    let config = &record.config;
    Arc::new(Deployment {
        agent: Arc::from(record.agent.as_str()),
        deployment: record.deployment,
        version: record.version,
        pre,
        gate,
        outbound,
        memory_bytes: (config.memory_mib as usize) << 20,
        output_bytes: (config.output_mib as usize) << 20,
        sync_timeout: Duration::from_secs(config.sync_timeout_s),
        async_timeout: config.async_timeout_s.map(Duration::from_secs),
        max_queue_wait: Duration::from_secs(config.max_queue_wait_s),
        push: config.push_target().cloned(),
        config: Arc::new(config.config.clone()),
    })
}

fn no_agent(agent: &str) -> Error {
    Error::NotFound(format!("no agent named `{agent}`"))
}

fn invalid(diagnostics: Vec<Diagnostic>) -> Error {
    let message = match diagnostics.as_slice() {
        [one] => one.message.clone(),
        many => format!(
            "the component has {} problems; see `diagnostics`",
            many.len()
        ),
    };
    Error::InvalidComponent {
        message,
        diagnostics,
    }
}

#[cfg(test)]
mod tests {
    use super::valid_agent_name;

    #[test]
    fn agent_names() {
        for ok in ["a", "echo", "my-agent-2", "0day", &"a".repeat(63)] {
            assert!(valid_agent_name(ok), "{ok}");
        }
        for bad in ["", "-a", "Echo", "a_b", "a.b", "a/b", "ä", &"a".repeat(64)] {
            assert!(!valid_agent_name(bad), "{bad}");
        }
    }
}
