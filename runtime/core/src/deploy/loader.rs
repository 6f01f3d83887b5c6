//! Turning stored or uploaded component bytes into something callable: compiling (bounded
//! by compile slots and a time budget), loading from the precompiled cache, and keeping the
//! component files and cached artifacts in step with the versions that refer to them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gust_model::Diagnostic;
use gust_store::Store;
use gust_store::components::{ComponentFiles, digest_of};
use gust_wasm::check::{self, CheckError, Compiled};
use gust_wasm::{Linked, WasmEngine};
use tokio::sync::{OnceCell, OwnedMutexGuard, Semaphore};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::tasks::blocking;

/// One load of a stored component, shared by everyone who asks for it meanwhile; a failure
/// is kept as its message.
type Load = OnceCell<Result<Linked, Arc<str>>>;

/// See the module docs. Cheap to clone (clones share everything).
#[derive(Clone)]
pub(crate) struct Loader {
    engine: Arc<WasmEngine>,
    files: ComponentFiles,
    /// With several hosts on one database, the bytes live there (every host must reach
    /// every version); the files are then this host's copies, fetched on first need.
    shared: Option<Store>,
    /// Held while component files are written with their version row, or removed with
    /// theirs: an upload of the same bytes cannot slip in between a deletion's commit and
    /// the removal of the file it orphaned.
    files_lock: Arc<tokio::sync::Mutex<()>>,
    /// Compiles are CPU-heavy and take seconds; bound how many run at once.
    compile_slots: Arc<Semaphore>,
    /// How long compiling an upload may take before it is refused.
    compile_budget: Duration,
    /// Loads in flight, per digest; see [`Loader::prepare`].
    inflight: Arc<Mutex<HashMap<String, Arc<Load>>>>,
    /// Compile times go here.
    metrics: Arc<Metrics>,
}

impl Loader {
    pub(crate) fn new(
        engine: Arc<WasmEngine>,
        files: ComponentFiles,
        shared: Option<Store>,
        compile_budget: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            engine,
            files,
            shared,
            files_lock: Arc::default(),
            compile_slots: Arc::new(Semaphore::new(cores.max(1))),
            compile_budget,
            inflight: Arc::default(),
            metrics,
        }
    }

    pub(crate) fn engine(&self) -> &Arc<WasmEngine> {
        &self.engine
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The files lock; see the field.
    pub(crate) async fn lock_files(&self) -> OwnedMutexGuard<()> {
        Arc::clone(&self.files_lock).lock_owned().await
    }

    /// The stored component for `digest`, loaded from the cache or compiled, linked.
    /// Compiles take a compile slot, like uploads; concurrent prepares of one digest share
    /// one load, so a component is compiled once however many runs need it at once.
    ///
    /// # Errors
    /// [`Error::Internal`] when it cannot be read or compiled, or no longer passes the check.
    pub(crate) async fn prepare(&self, digest: &str) -> Result<Linked, Error> {
        let load = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(inflight.entry(digest.to_owned()).or_default())
        };
        let loaded = load.get_or_init(|| self.load(digest)).await.clone();
        // Done: the next prepare starts afresh (and finds the artifact in the cache).
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(digest).is_some_and(|l| Arc::ptr_eq(l, &load)) {
            inflight.remove(digest);
        }
        loaded.map_err(Error::internal)
    }

    async fn load(&self, digest: &str) -> Result<Linked, Arc<str>> {
        let (engine, digest) = (Arc::clone(&self.engine), digest.to_owned());
        let failed = |e: CheckError| -> Arc<str> {
            match e {
                CheckError::Internal(e) => format!("{e:#}").into(),
                CheckError::Invalid(diagnostics) => {
                    format!("a stored component no longer passes the check: {diagnostics:?}").into()
                }
            }
        };
        let cached = {
            let (engine, digest) = (Arc::clone(&engine), digest.clone());
            blocking(move || check::load_cached(&engine, &digest))
                .await
                .map_err(|e| Arc::from(e.to_string()))?
        };
        if let Some(cached) = cached {
            return cached.map_err(failed);
        }
        self.fetch(&digest)
            .await
            .map_err(|e| Arc::from(e.to_string()))?;
        let _slot = Arc::clone(&self.compile_slots)
            .acquire_owned()
            .await
            .map_err(|e| Arc::from(e.to_string()))?;
        let path = self.files.path(&digest);
        let started = std::time::Instant::now();
        let loaded = blocking(move || check::load(&engine, &digest, &path))
            .await
            .map_err(|e| Arc::from(e.to_string()))?
            .map_err(failed);
        self.metrics.compiled(started.elapsed());
        loaded
    }

    /// Compiles and checks an upload within the compile budget, then proves by a trial
    /// instantiation that it fits the host's limits and a memory limit of `memory_bytes`
    /// (the agent's).
    ///
    /// # Errors
    /// [`Error::InvalidComponent`] with diagnostics when it cannot run here;
    /// [`Error::Overloaded`] when no compile slot frees up within the budget.
    pub(crate) async fn compile_upload(
        &self,
        bytes: Bytes,
        memory_bytes: usize,
    ) -> Result<Compiled, Error> {
        let budget = self.compile_budget;
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
                        bound: None,
                    });
                }
            };
        let engine = Arc::clone(&self.engine);
        // The slot goes with the compile: one that outlives the budget keeps its slot until
        // it ends, so abandoned compiles cannot pile up beyond the bound.
        let metrics = Arc::clone(&self.metrics);
        let compile = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            let compiling = std::time::Instant::now();
            let checked = check::compile_and_check(&engine, &bytes);
            metrics.compiled(compiling.elapsed());
            checked
        });
        let checked =
            match tokio::time::timeout(budget.saturating_sub(started.elapsed()), compile).await {
                Ok(joined) => {
                    joined.map_err(|e| Error::internal(format!("the compile task failed: {e}")))?
                }
                Err(_) => {
                    return Err(invalid(vec![Diagnostic::new(
                        "limit_exceeded",
                        "",
                        format!(
                            "compiling the component took longer than {}s",
                            budget.as_secs()
                        ),
                    )]));
                }
            };
        let compiled = match checked {
            Ok(compiled) => compiled,
            Err(CheckError::Invalid(diagnostics)) => return Err(invalid(diagnostics)),
            Err(CheckError::Internal(e)) => return Err(Error::Internal(e)),
        };
        check::trial_instantiate(&self.engine, &compiled.linked, memory_bytes)
            .await
            .map_err(|d| invalid(vec![d]))?;
        Ok(compiled)
    }

    /// Writes an upload's bytes (and its precompiled artifact) under `digest`, before its
    /// version row: a crash in between leaves an unreferenced file, never a version without
    /// its component. The caller holds the files lock.
    ///
    /// # Errors
    /// When the component file cannot be written.
    pub(crate) async fn keep(
        &self,
        digest: &str,
        bytes: Bytes,
        compiled: Compiled,
    ) -> Result<(), Error> {
        let (files, engine, digest) = (
            self.files.clone(),
            Arc::clone(&self.engine),
            digest.to_owned(),
        );
        // With a shared database, the bytes go there first too; `keep_shared` checks again
        // once the version row exists.
        if let Some(store) = &self.shared {
            store.put_component(&digest, &bytes).await?;
        }
        blocking(move || {
            files.write(&digest, &bytes).map_err(|e| {
                // A disk that filled since the last look: the client's answer is 507, as for
                // a submission, not an internal error.
                let full = e.chain().any(|cause| {
                    cause
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
                });
                if full {
                    Error::StorageFull(
                        "the host's disk is full; uploads are not accepted until space is freed"
                            .into(),
                    )
                } else {
                    Error::Internal(e)
                }
            })?;
            if let Err(e) = compiled.cache(&engine, &digest) {
                tracing::warn!(%digest, "could not cache the compiled component: {e:#}");
            }
            Ok(())
        })
        .await?
    }

    /// After an upload's version row is recorded: makes sure the shared database still
    /// has its bytes. Another host deleting the last other version with this digest between
    /// [`Loader::keep`] and the record would have removed them as an orphan.
    ///
    /// # Errors
    /// When the database fails.
    pub(crate) async fn keep_shared(&self, digest: &str, bytes: &Bytes) -> Result<(), Error> {
        let Some(store) = &self.shared else {
            return Ok(());
        };
        // `put_component` looks for the digest under the database's lock (and sends no bytes
        // when it is there), so a deletion committing meanwhile cannot slip between a look
        // here and the write.
        Ok(store.put_component(digest, bytes).await?)
    }

    /// Removes the component files and cached artifacts of `digests`, which no version
    /// refers to any more. The caller holds the files lock.
    pub(crate) async fn forget(&self, digests: Vec<String>) -> Result<(), Error> {
        if digests.is_empty() {
            return Ok(());
        }
        let (files, engine) = (self.files.clone(), Arc::clone(&self.engine));
        blocking(move || {
            for digest in digests {
                files.remove(&digest);
                engine.evict(&digest);
            }
        })
        .await
    }

    /// The bytes of a stored component.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub(crate) async fn read(&self, digest: &str) -> Result<Vec<u8>, Error> {
        self.fetch(digest).await?;
        let (files, digest) = (self.files.clone(), digest.to_owned());
        blocking(move || files.read(&digest).map_err(Error::Internal)).await?
    }

    /// With a shared database, copies the component's bytes from it into this host's
    /// files unless they are there already (another host uploaded them).
    async fn fetch(&self, digest: &str) -> Result<(), Error> {
        let Some(store) = &self.shared else {
            return Ok(());
        };
        if self.files.path(digest).exists() {
            return Ok(());
        }
        let bytes = store
            .component(digest)
            .await?
            .ok_or_else(|| Error::internal(format!("the database holds no component {digest}")))?;
        // Stored under its digest: bytes that do not hash to it are refused, not kept.
        let (files, digest) = (self.files.clone(), digest.to_owned());
        blocking(move || {
            anyhow::ensure!(
                digest_of(&bytes) == digest,
                "the database's component {digest} does not match its digest"
            );
            files.write(&digest, &bytes)
        })
        .await?
        .map_err(Error::Internal)
    }

    /// Removes component files and cached artifacts that no version refers to: what an
    /// upload left when it failed (or the process died) between writing its bytes and
    /// recording its version.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub(crate) async fn sweep_unreferenced(&self, store: &Store) -> Result<(), Error> {
        let _files = self.lock_files().await;
        let referenced = store.referenced_digests().await?;
        let (files, engine) = (self.files.clone(), Arc::clone(&self.engine));
        blocking(move || {
            for digest in files.digests() {
                if !referenced.contains(&digest) {
                    tracing::info!(%digest, "removing a component no version refers to");
                    files.remove(&digest);
                }
            }
            engine.retain_cached(&referenced);
        })
        .await
    }
}

/// An upload refused with `diagnostics`, summed up in one line.
pub(crate) fn invalid(diagnostics: Vec<Diagnostic>) -> Error {
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
