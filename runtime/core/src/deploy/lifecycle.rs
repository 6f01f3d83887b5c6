//! The deployment lifecycle — upload, configure, deploy, roll back, delete — kept apart
//! from HTTP so that the API stays a thin mapping.
//!
//! Every operation that changes what is live holds that agent's lock (never across a compile
//! of an upload), writes the store first and swaps the registry last, to completion even if
//! the caller goes away ([`to_completion`]): if any step fails, nothing changed that a caller
//! could see.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use gust_model::diff::{ConfigChange, config_changes};
use gust_model::{
    AgentConfig, AgentRecord, AgentSummary, DeploymentRecord, Maxima, REDACTED, VersionRecord,
};
use gust_store::components::digest_of;
use gust_store::queue::IDEMPOTENCY_WINDOW_MS;
use gust_store::{DeployKey, DraftBase, RollbackPlan, Store, VersionDeletion, draft_tag};
use gust_wasm::{Linked, OutboundPolicy};
use sha2::{Digest as _, Sha256};
use tokio::sync::OwnedMutexGuard;

use super::admission::Admission;
use super::loader::Loader;
use super::registry::{Deployment, Registry};
use super::validate::validate;
use crate::auth::KeyRing;
use crate::clock;
use crate::error::Error;
use crate::locks::AgentLocks;
use crate::secrets::PushSecrets;
use crate::tasks::{blocking, to_completion};

/// How often a draft write reads and writes again after another host wrote in between.
const DRAFT_WRITE_ATTEMPTS: usize = 3;

/// Checks the client's precondition `base` against `current`, the draft there now (`None`
/// for no agent); `again` says what the client does when it does not hold.
fn require(
    base: &DraftBase,
    agent: &str,
    current: Option<&AgentConfig>,
    again: &str,
) -> Result<(), Error> {
    if base.matches(current) {
        return Ok(());
    }
    Err(Error::PreconditionFailed(match (base, current) {
        (DraftBase::Absent, _) => {
            format!("agent `{agent}` exists already (the request's If-None-Match is `*`)")
        }
        (_, None) => {
            format!("no agent named `{agent}`, so no draft matches the request's If-Match")
        }
        (_, Some(_)) => format!(
            "the draft of `{agent}` is not the one the request's If-Match names: it changed since it was read; {again}"
        ),
    }))
}

/// Puts the stored access token in place of [`REDACTED`] in `draft`, if `current` has one
/// for the same push URL.
fn keep_token(draft: &mut AgentConfig, current: Option<&AgentConfig>) -> Result<(), Error> {
    let Some(push) = &mut draft.push else {
        return Ok(());
    };
    if push.access_token != REDACTED {
        return Ok(());
    }
    match current.and_then(|c| c.push.as_ref()) {
        // The stored token goes only where it was stored for: a new URL needs the token
        // again, or a draft could send it to any destination.
        Some(kept) if kept.url == push.url => {
            push.access_token.clone_from(&kept.access_token);
            Ok(())
        }
        Some(_) => Err(Error::BadRequest(
            "`push.url` changed: send `push.access_token` again (the stored token is only sent to the URL it was given for)".into(),
        )),
        None => Err(Error::BadRequest(
            "`push.access_token` is write-only: send the token itself".into(),
        )),
    }
}

/// A draft configuration and its entity tag ([`draft_tag`]), which a write names to be
/// sure it replaces what its client read.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The configuration, the access token in it.
    pub config: AgentConfig,
    /// Its entity tag.
    pub tag: String,
}

/// What a draft write saved.
#[derive(Debug, Clone)]
pub struct SavedDraft {
    /// The draft now stored, the access token in it.
    pub draft: AgentConfig,
    /// The push signing secret, when this write turned push on for the first time.
    pub new_secret: Option<String>,
}

/// The result of a deploy.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The deployment that is live.
    pub record: DeploymentRecord,
    /// `true` when an idempotency key named an earlier deploy, which is answered again.
    pub replayed: bool,
}

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `key` for a deploy of `version`, with the hash of that request.
fn deploy_key(key: String, version: Option<u32>) -> Result<DeployKey, Error> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(Error::BadRequest(format!(
            "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    let request = match version {
        Some(n) => format!("deploy version {n}"),
        None => "deploy the newest version".to_owned(),
    };
    Ok(DeployKey {
        key,
        request_hash: hex::encode(Sha256::digest(request.as_bytes())),
    })
}

/// What a deploy would do, shown before it is made (the console's Confirm dialog, `gust
/// deploy --dry-run`): which deployment is live, the version the deploy would make live,
/// and every configuration field it would change.
#[derive(Debug, Clone)]
pub struct DeployPreview {
    /// The deployment live now.
    pub live: Option<DeploymentRecord>,
    /// The version the deploy would make live.
    pub version: VersionRecord,
    /// The configuration it would freeze (the draft).
    pub draft: AgentConfig,
    /// Fields of `draft` that differ from the live configuration; secrets masked.
    pub changes: Vec<ConfigChange>,
}

impl DeployPreview {
    /// Whether the deploy would change anything that is live.
    pub fn changes_anything(&self) -> bool {
        !self.changes.is_empty()
            || self
                .live
                .as_ref()
                .is_none_or(|l| l.version != self.version.version)
    }
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
pub struct Lifecycle {
    store: Store,
    loader: Loader,
    registry: Arc<Registry>,
    admission: Arc<Admission>,
    locks: Arc<AgentLocks>,
    keys: Arc<KeyRing>,
    secrets: Arc<PushSecrets>,
    /// The largest limits a deployment may set.
    maxima: Maxima,
}

impl Lifecycle {
    #[expect(
        clippy::too_many_arguments,
        reason = "the composition root hands each collaborator over once"
    )]
    pub(crate) fn new(
        store: Store,
        loader: Loader,
        registry: Arc<Registry>,
        admission: Arc<Admission>,
        locks: Arc<AgentLocks>,
        keys: Arc<KeyRing>,
        secrets: Arc<PushSecrets>,
        maxima: Maxima,
    ) -> Self {
        Self {
            store,
            loader,
            registry,
            admission,
            locks,
            keys,
            secrets,
            maxima,
        }
    }

    /// What is live, read on every call.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The admission gates of the host's agents.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
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
        self.loader.sweep_unreferenced(&self.store).await?;
        let live = self.store.live_deployments().await?;
        let mut loaded = 0;
        for record in live {
            let deployment = async {
                let linked = self.loader.prepare(&record.digest).await?;
                let outbound = self.outbound(&record.config)?;
                let gate = self.admission.gate(&record.agent);
                self.admission.resize(&gate, &record.config);
                Ok::<_, Error>(Deployment::new(&record, linked, gate, outbound))
            };
            match deployment.await {
                Ok(deployment) => {
                    self.registry.set(deployment);
                    loaded += 1;
                }
                Err(e) => tracing::error!(
                    agent = %record.agent,
                    deployment = record.deployment,
                    "could not load the live deployment; the agent is not served: {}",
                    e.logged()
                ),
            }
        }
        // Changes to what is live wait for readiness (`wait_ready`), so none can be
        // overwritten by this load's older snapshot.
        Ok(loaded)
    }

    /// What guests of a deployment with `config` may reach over HTTP.
    fn outbound(&self, config: &AgentConfig) -> Result<OutboundPolicy, Error> {
        self.loader
            .engine()
            .outbound_policy(config)
            .map_err(|e| Error::internal(format!("a stored configuration does not parse: {e}")))
    }

    /// Stores a new version after compiling and checking it. The same bytes uploaded again
    /// return the existing version. With `disk_low`, only that: new bytes have no room.
    ///
    /// # Errors
    /// [`Error::InvalidComponent`] with diagnostics when the component cannot run here;
    /// [`Error::StorageFull`] for new bytes on a disk that is almost full.
    pub async fn upload(
        &self,
        agent: &str,
        bytes: Bytes,
        disk_low: bool,
    ) -> Result<Uploaded, Error> {
        let digest = {
            let bytes = bytes.clone();
            blocking(move || digest_of(&bytes)).await?
        };
        if let Some(version) = self.store.version_by_digest(agent, &digest).await? {
            return Ok(Uploaded {
                version,
                created: false,
            });
        }
        if disk_low {
            return Err(Error::StorageFull(
                "the host's disk is almost full; new versions are not accepted until space is freed"
                    .into(),
            ));
        }
        // Checked against the agent's own memory limit (its draft's, which the next deploy
        // freezes), not the default: an agent configured for more memory can upload a
        // component that needs it.
        let memory_mib = self
            .store
            .draft(agent)
            .await?
            .unwrap_or_default()
            .memory_mib;
        let compiled = self
            .loader
            .compile_upload(bytes.clone(), (memory_mib as usize) << 20)
            .await?;

        // Bytes first, then the version row (see `Loader::keep`), under the files lock so
        // that a concurrent delete cannot remove these bytes (as another version's orphan)
        // before the row exists; to completion, so a disconnect cannot stop it halfway.
        let size = bytes.len() as u64;
        let files = self.loader.lock_files().await;
        let (loader, store, agent_name) =
            (self.loader.clone(), self.store.clone(), agent.to_owned());
        let kept = digest.clone();
        let (record_loader, recorded_bytes) = (self.loader.clone(), bytes.clone());
        let keep = async move { loader.keep(&kept, bytes, compiled).await };
        let (version, created) = keep_then_record(files, keep, async move {
            let added = store
                .add_version(&agent_name, &digest, size, clock::now_ms())
                .await?;
            record_loader.keep_shared(&digest, &recorded_bytes).await?;
            Ok(added)
        })
        .await?;
        if created {
            tracing::info!(agent, version = version.version, digest = %version.digest, "uploaded a new version");
        }
        Ok(Uploaded { version, created })
    }

    /// The draft configuration, with its entity tag.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn draft(&self, agent: &str) -> Result<Draft, Error> {
        let config = self
            .store
            .draft(agent)
            .await?
            .ok_or_else(|| no_agent(agent))?;
        Ok(Draft {
            tag: draft_tag(&config),
            config,
        })
    }

    /// Replaces the draft configuration (creating the agent if needed), when the stored
    /// draft is the one `base` names. It takes effect at the next deploy.
    ///
    /// The push access token is write-only: a draft that carries [`REDACTED`] in its place
    /// keeps the token the draft has, as long as the push URL stays the same. Turning push
    /// on for the first time creates the agent's signing secret, returned here (and never
    /// again).
    ///
    /// # Errors
    /// [`Error::BadRequest`] when a value is out of bounds; [`Error::PreconditionFailed`]
    /// when the draft is not the one `base` names.
    pub async fn put_draft(
        &self,
        agent: &str,
        draft: AgentConfig,
        base: DraftBase,
    ) -> Result<SavedDraft, Error> {
        let _guard = self.locks.lock(agent).await;
        if draft.push.as_ref().is_some_and(|p| p.secret.is_some()) {
            return Err(Error::BadRequest(
                "`push.secret` is made by the host and shown once; it cannot be set (rotate it with POST …/push/rotate-secret)".into(),
            ));
        }
        // The lock above orders this host's writers. Another host sharing the database can
        // still write between the read and the write below; the write checks that the draft
        // is still the one read, and a lost race reads again: the kept token and the client's
        // precondition are then decided against the draft that is really there. A write
        // that names nothing and keeps no token depends on nothing read: it just replaces.
        let keeps_token = draft
            .push
            .as_ref()
            .is_some_and(|p| p.access_token == REDACTED);
        for _ in 0..DRAFT_WRITE_ATTEMPTS {
            let current = self.store.draft(agent).await?;
            require(&base, agent, current.as_ref(), "read it again")?;
            let mut draft = draft.clone();
            keep_token(&mut draft, current.as_ref())?;
            validate(&draft, &self.maxima).map_err(Error::BadRequest)?;
            let read = match &current {
                _ if base == DraftBase::Any && !keeps_token => DraftBase::Any,
                Some(current) => DraftBase::Exactly(Box::new(current.clone())),
                None => DraftBase::Absent,
            };
            if !self
                .store
                .put_draft(agent, &draft, clock::now_ms(), read)
                .await?
            {
                continue;
            }
            // Made only if there is none, in one statement: another host may have turned
            // push on a moment ago and shown its secret.
            let new_secret = if draft.push.is_some() {
                self.secrets.first(agent).await?
            } else {
                None
            };
            return Ok(SavedDraft { draft, new_secret });
        }
        Err(Error::Conflict(format!(
            "the draft of `{agent}` kept changing under this write (other hosts are writing it); try again"
        )))
    }

    /// The live deployment of `agent`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when nothing is deployed.
    pub fn live(&self, agent: &str) -> Result<Arc<Deployment>, Error> {
        self.registry.get(agent).ok_or_else(|| not_deployed(agent))
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
        let record = self.store.deployment(agent, number).await?.ok_or_else(|| {
            Error::NotFound(format!("agent `{agent}` has no deployment {number}"))
        })?;
        let linked = self.loader.prepare(&record.digest).await?;
        let outbound = self.outbound(&record.config)?;
        let deployment = Deployment::new(&record, linked, self.admission.gate(agent), outbound);
        self.registry.remember(Arc::clone(&deployment));
        Ok(deployment)
    }

    /// Deploys `version` (default: the newest) with the current draft and makes it live.
    ///
    /// With an idempotency `key`, a deploy repeated within the idempotency window (a client
    /// retrying after a lost answer) answers the deployment the first one made, changing
    /// nothing. The draft must be the one `base` names.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the agent or version does not exist; [`Error::Conflict`]
    /// when the key was used for another request; [`Error::BadRequest`] for a bad key;
    /// [`Error::PreconditionFailed`] when the draft is not the one `base` names.
    pub async fn deploy(
        &self,
        agent: &str,
        version: Option<u32>,
        key: Option<String>,
        base: DraftBase,
    ) -> Result<Deployed, Error> {
        let key = key.map(|key| deploy_key(key, version)).transpose()?;
        self.registry.wait_ready().await;
        let guard = self.locks.lock(agent).await;
        if let Some(key) = &key {
            let since = clock::now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS);
            if let Some((record, hash)) =
                self.store.deployment_by_key(agent, &key.key, since).await?
            {
                if hash != key.request_hash {
                    return Err(Error::Conflict(
                        "this `Idempotency-Key` was used in the last 24 h with another request"
                            .into(),
                    ));
                }
                return Ok(Deployed {
                    record,
                    replayed: true,
                });
            }
        }
        let target = match version {
            Some(n) => self.store.version(agent, n).await?,
            None => self.store.latest_version(agent).await?,
        };
        let draft = self.store.draft(agent).await?;
        let Some(target) = target else {
            return Err(match (version, draft.is_some()) {
                (_, false) => no_agent(agent),
                (Some(n), true) => Error::NotFound(format!("agent `{agent}` has no version {n}")),
                (None, true) => Error::NotFound(format!(
                    "agent `{agent}` has no versions yet; upload one first"
                )),
            });
        };
        // Checked under the agent's lock, against the draft this deploy freezes: what the
        // client confirmed is what goes live, or nothing does.
        require(&base, agent, draft.as_ref(), "preview the deploy again")?;
        let draft = draft.unwrap_or_default();
        let linked = self.loader.prepare(&target.digest).await?;
        let outbound = self.outbound(&draft)?;
        let (store, a) = (self.store.clone(), agent.to_owned());
        let commit = async move {
            Ok(store
                .deploy(&a, target.version, &draft, clock::now_ms(), key)
                .await?)
        };
        let record = self
            .commit_then_swap(guard, agent, linked, outbound, commit)
            .await?;
        tracing::info!(
            agent,
            deployment = record.deployment,
            version = record.version,
            "deployed"
        );
        Ok(Deployed {
            record,
            replayed: false,
        })
    }

    /// What deploying `version` (default: the newest) would change; changes nothing.
    ///
    /// # Errors
    /// As [`deploy`](Self::deploy) would answer: [`Error::NotFound`] for an unknown agent or
    /// version, or no version yet.
    pub async fn preview(&self, agent: &str, version: Option<u32>) -> Result<DeployPreview, Error> {
        let record = self.get(agent).await?;
        let target = match version {
            Some(n) => record
                .versions
                .iter()
                .find(|v| v.version == n)
                .ok_or_else(|| Error::NotFound(format!("agent `{agent}` has no version {n}")))?,
            None => record
                .versions
                .iter()
                .max_by_key(|v| v.version)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "agent `{agent}` has no versions yet; upload one first"
                    ))
                })?,
        };
        let changes = config_changes(record.live.as_ref().map(|l| &l.config), &record.draft);
        Ok(DeployPreview {
            version: target.clone(),
            live: record.live,
            draft: record.draft,
            changes,
        })
    }

    /// Makes deployment `to` live again, with its version and frozen configuration; without
    /// `to`, the previous deployment (repeated calls then walk further back). Naming the
    /// target makes a repeated call a no-op: the target is live already.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent or deployment, [`Error::Conflict`] when there
    /// is nothing to roll back to or the target's version was deleted.
    pub async fn rollback(&self, agent: &str, to: Option<u32>) -> Result<DeploymentRecord, Error> {
        self.registry.wait_ready().await;
        let guard = self.locks.lock(agent).await;
        let (from, to) = match self.store.plan_rollback(agent, to).await? {
            RollbackPlan::NoAgent => return Err(no_agent(agent)),
            RollbackPlan::NothingToRollBackTo => {
                return Err(Error::Conflict(format!(
                    "agent `{agent}` has no earlier deployment to roll back to"
                )));
            }
            RollbackPlan::NoSuchDeployment => {
                return Err(Error::NotFound(format!(
                    "agent `{agent}` has no deployment {}",
                    to.unwrap_or_default()
                )));
            }
            RollbackPlan::VersionDeleted => {
                return Err(Error::Conflict(format!(
                    "deployment {} of `{agent}` ran a version that has been deleted",
                    to.unwrap_or_default()
                )));
            }
            RollbackPlan::AlreadyLive(live) => return Ok(*live),
            RollbackPlan::To { from, to } => (from, *to),
        };
        let linked = self.loader.prepare(&to.digest).await?;
        let outbound = self.outbound(&to.config)?;
        let (store, a, target) = (self.store.clone(), agent.to_owned(), to.clone());
        let commit = async move {
            store
                .rollback(&a, from, target.deployment, clock::now_ms())
                .await?;
            Ok(target)
        };
        self.commit_then_swap(guard, agent, linked, outbound, commit)
            .await?;
        tracing::info!(
            agent,
            from,
            to = to.deployment,
            version = to.version,
            "rolled back"
        );
        Ok(to)
    }

    /// Commits a change of what is live (`commit` answers the deployment it made live),
    /// then sizes the agent's gate for it and swaps it into the registry: together, to the
    /// end, even if the caller goes away, so the store and the registry never disagree.
    async fn commit_then_swap(
        &self,
        guard: OwnedMutexGuard<()>,
        agent: &str,
        linked: Linked,
        outbound: OutboundPolicy,
        commit: impl Future<Output = Result<DeploymentRecord, Error>> + Send + 'static,
    ) -> Result<DeploymentRecord, Error> {
        let (registry, admission) = (Arc::clone(&self.registry), Arc::clone(&self.admission));
        let gate = admission.gate(agent);
        to_completion(async move {
            let _guard = guard;
            let record = commit.await?;
            admission.resize(&gate, &record.config);
            registry.set(Deployment::new(&record, linked, gate, outbound));
            Ok(record)
        })
        .await
    }

    /// Makes what is live here what the shared database says is live for `agent`, after
    /// another host deployed, rolled back or deleted it. The component is compiled (or
    /// loaded from this host's cache) before the agent's lock is taken, so calls keep
    /// reaching the deployment live here until the new one is ready, and local changes wait
    /// only for the swap.
    ///
    /// # Errors
    /// When the store fails or the component cannot be prepared.
    pub(crate) async fn follow(&self, agent: &str) -> Result<(), Error> {
        self.registry.wait_ready().await;
        if let Some(live) = self.store.agent(agent).await?.and_then(|a| a.live) {
            if self.registry.get(agent).is_some_and(|d| d.is(&live)) {
                return Ok(());
            }
            // Warms the cache; the second prepare below is then a load.
            self.loader.prepare(&live.digest).await?;
        }
        let guard = self.locks.lock(agent).await;
        // Read again under the lock: a change made here (or a newer one announced) since
        // the read above wins over that read.
        let record = self.store.agent(agent).await?;
        let Some(live) = record.as_ref().and_then(|a| a.live.clone()) else {
            if self.registry.get(agent).is_some() {
                self.registry.remove(agent);
                tracing::info!(agent, "the agent was deleted or taken down on another host");
            }
            if record.is_none() {
                self.admission.forget(agent);
                self.keys.remove_agent(agent);
                self.loader.metrics().forget_agent(agent);
            }
            return Ok(());
        };
        if self.registry.get(agent).is_some_and(|d| d.is(&live)) {
            return Ok(());
        }
        let linked = self.loader.prepare(&live.digest).await?;
        let outbound = self.outbound(&live.config)?;
        let record = live.clone();
        self.commit_then_swap(guard, agent, linked, outbound, async move { Ok(record) })
            .await?;
        tracing::info!(
            agent,
            deployment = live.deployment,
            version = live.version,
            "serving the deployment made live on another host"
        );
        Ok(())
    }

    /// [`Lifecycle::follow`] for every agent live here or in the store: after a missed
    /// announcement (the database connection was lost) and now and then.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub(crate) async fn follow_all(&self) -> Result<(), Error> {
        // One read of what is live; only the agents where this host differs are followed.
        let live = self.store.live_deployments().await?;
        let mut agents: std::collections::BTreeSet<String> = live
            .iter()
            .filter(|record| {
                !self
                    .registry
                    .get(&record.agent)
                    .is_some_and(|d| d.is(record))
            })
            .map(|record| record.agent.clone())
            .collect();
        let live: std::collections::HashSet<&str> =
            live.iter().map(|record| record.agent.as_str()).collect();
        agents.extend(
            self.registry
                .agents()
                .into_iter()
                .filter(|agent| !live.contains(agent.as_str())),
        );
        for agent in agents {
            if let Err(e) = self.follow(&agent).await {
                tracing::error!(agent, "following a change made on another host: {e:#}");
            }
        }
        Ok(())
    }

    /// Compiles a version uploaded on another host ahead of its deploy, so the deploy
    /// there finds this host ready to swap.
    pub(crate) async fn precompile(&self, digest: &str) {
        if let Err(e) = self.loader.prepare(digest).await {
            tracing::warn!(%digest, "compiling a version uploaded on another host: {e:#}");
        }
    }

    /// Whether the store answers (for `/readyz`).
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping_store(&self) -> Result<(), Error> {
        Ok(self.store.ping().await?)
    }

    /// Every agent.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn list(&self) -> Result<Vec<AgentSummary>, Error> {
        Ok(self.store.list_agents().await?)
    }

    /// One agent with its history.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn get(&self, agent: &str) -> Result<AgentRecord, Error> {
        self.store
            .agent(agent)
            .await?
            .ok_or_else(|| no_agent(agent))
    }

    /// One version, with its imports and exports as WIT text.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent or version.
    pub async fn version(&self, agent: &str, n: u32) -> Result<(VersionRecord, String), Error> {
        let version = self
            .store
            .version(agent, n)
            .await?
            .ok_or_else(|| Error::NotFound(format!("agent `{agent}` has no version {n}")))?;
        let bytes = self.loader.read(&version.digest).await?;
        let wit = blocking(move || gust_wasm::check::wit_text(&bytes))
            .await?
            .map_err(Error::Internal)?;
        Ok((version, wit))
    }

    /// Deletes a version that is not live.
    ///
    /// # Errors
    /// [`Error::NotFound`], or [`Error::Conflict`] while the version is live.
    pub async fn delete_version(&self, agent: &str, n: u32) -> Result<(), Error> {
        self.registry.wait_ready().await;
        let guard = self.locks.lock(agent).await;
        let (store, a) = (self.store.clone(), agent.to_owned());
        let deletion = self
            .delete_and_forget(guard, async move {
                let deletion = store.delete_version(&a, n).await?;
                let orphans = match &deletion {
                    VersionDeletion::Deleted {
                        orphaned: Some(digest),
                    } => vec![digest.clone()],
                    _ => Vec::new(),
                };
                Ok((deletion, orphans))
            })
            .await?;
        match deletion {
            VersionDeletion::NotFound => Err(Error::NotFound(format!(
                "agent `{agent}` has no version {n}"
            ))),
            VersionDeletion::Live => Err(Error::Conflict(format!(
                "version {n} of `{agent}` is live; deploy another version first"
            ))),
            VersionDeletion::InUse => Err(Error::Conflict(format!(
                "queued or running runs of `{agent}` will execute on version {n}; wait for them or cancel them first"
            ))),
            VersionDeletion::Deleted { .. } => {
                self.loader.metrics().forget_version(agent, n);
                Ok(())
            }
        }
    }

    /// Deletes an agent, its versions and deployments; its endpoint answers 404 from now on.
    /// Calls already running finish.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn delete(&self, agent: &str) -> Result<(), Error> {
        self.registry.wait_ready().await;
        let guard = self.locks.lock(agent).await;
        let (store, registry, admission, a) = (
            self.store.clone(),
            Arc::clone(&self.registry),
            Arc::clone(&self.admission),
            agent.to_owned(),
        );
        let deleted = self
            .delete_and_forget(guard, async move {
                let deleted = store.delete_agent(&a).await?;
                if deleted.is_some() {
                    registry.remove(&a);
                    admission.forget(&a);
                }
                let orphans = deleted.clone().unwrap_or_default();
                Ok((deleted, orphans))
            })
            .await?;
        if deleted.is_none() {
            return Err(no_agent(agent));
        }
        self.keys.remove_agent(agent);
        // Its series go too: a deleted agent is not a zero in every dashboard.
        self.loader.metrics().forget_agent(agent);
        tracing::info!(agent, "deleted");
        Ok(())
    }

    /// Runs a store deletion (which answers what it did and the digests it left without any
    /// version) and removes those component files and cached artifacts, under the files
    /// lock so that an upload of the same bytes cannot slip in between; to the end and
    /// holding the agent's lock, so a client that disconnects cannot interrupt it halfway.
    async fn delete_and_forget<T: Send + 'static>(
        &self,
        guard: OwnedMutexGuard<()>,
        delete: impl Future<Output = Result<(T, Vec<String>), Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let files = self.loader.lock_files().await;
        let loader = self.loader.clone();
        to_completion(async move {
            let (_guard, _files) = (guard, files);
            let (outcome, orphans) = delete.await?;
            loader.forget(orphans).await?;
            Ok(outcome)
        })
        .await
    }
}

/// Runs `keep` (writing a component's files) and then `record` (its version row) to the
/// end, holding the files lock throughout.
async fn keep_then_record<T: Send + 'static>(
    files: OwnedMutexGuard<()>,
    keep: impl Future<Output = Result<(), Error>> + Send + 'static,
    record: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    to_completion(async move {
        let _files = files;
        keep.await?;
        record.await
    })
    .await
}

pub(crate) fn no_agent(agent: &str) -> Error {
    Error::NotFound(format!("no agent named `{agent}`"))
}

/// The answer to a call of an agent with nothing deployed.
pub(crate) fn not_deployed(agent: &str) -> Error {
    Error::NotFound(format!("no agent named `{agent}` is deployed"))
}
