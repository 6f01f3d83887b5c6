//! The use cases of one host, wired together: what `gust serve` builds once at start and
//! every request reaches through.

use std::sync::Arc;
use std::time::Duration;

use gust_store::Store;
use gust_store::components::ComponentFiles;
use gust_wasm::WasmEngine;

use crate::auth::{KeyRing, Keys};
use crate::background::{Background, Stage};
use crate::calls::Calls;
use crate::deploy::{Admission, Lifecycle, Limits, Loader, Registry};
use crate::error::Error;
use crate::follow::Follower;
use crate::locks::AgentLocks;
use crate::metrics::Metrics;
use crate::runs::{RunSettings, Runs};
use crate::secrets::PushSecrets;

/// How often the keys' last-use times gathered in memory are written.
const KEY_USE_FLUSH: Duration = Duration::from_secs(5);

/// The settings of the use cases.
#[derive(Debug, Clone, Default)]
pub struct HostSettings {
    /// Instances, compiles, and what deployments may ask for.
    pub limits: Limits,
    /// The run queue.
    pub runs: RunSettings,
    /// Calls, runs and pushes not counted for `/metrics` (only to measure what counting
    /// costs; the default counts).
    pub skip_metrics: bool,
}

/// See the module docs.
pub struct Host {
    /// Upload, configure, deploy, roll back, delete; what is live.
    pub lifecycle: Arc<Lifecycle>,
    /// Calling an agent.
    pub calls: Arc<Calls>,
    /// The run queue.
    pub runs: Arc<Runs>,
    /// Invoke keys.
    pub keys: Arc<Keys>,
    /// Push signing secrets.
    pub secrets: Arc<PushSecrets>,
    /// The Wasm engine (for its counters).
    pub engine: Arc<WasmEngine>,
    /// Which database backs this host.
    pub backend: &'static str,
}

impl Host {
    /// Wires the use cases over `store`, `engine` and the component `files`, and starts
    /// their background work in `background`: the run queue (recovering what the previous
    /// process left), the key-use flusher, the epoch ticker. Deployments are not loaded yet:
    /// see [`Lifecycle::load_live`].
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn start(
        store: Store,
        engine: Arc<WasmEngine>,
        files: ComponentFiles,
        settings: HostSettings,
        background: &Background,
    ) -> Result<Self, Error> {
        if let Some(ticker) = engine.epoch_ticker() {
            background
                .thread(Stage::Engine, "gust-epoch", move |stop| {
                    ticker.run(|| stop.is_cancelled());
                })
                .map_err(|e| Error::Internal(e.into()))?;
        }
        // Subscribed before anything is read, so no change made by another host after
        // those reads is missed.
        let changes = store.changes();
        let ring = Arc::new(KeyRing::load(store.all_keys().await?));
        let locks = Arc::new(AgentLocks::default());
        let secrets = Arc::new(PushSecrets::new(store.clone(), Arc::clone(&locks)));
        let keys = Arc::new(Keys::new(
            store.clone(),
            Arc::clone(&ring),
            Arc::clone(&locks),
        ));
        let registry = Arc::new(Registry::default());
        let pool = Arc::clone(&engine);
        let admission = Arc::new(Admission::with_reusable(
            settings.limits.admission.clone(),
            Box::new(move || pool.pool_reusable_bytes()),
        ));
        let metrics = Arc::new(Metrics::recording(!settings.skip_metrics));
        let loader = Loader::new(
            Arc::clone(&engine),
            files,
            store.shared().then(|| store.clone()),
            settings.limits.compile_budget,
            Arc::clone(&metrics),
        );
        let lifecycle = Arc::new(Lifecycle::new(
            store.clone(),
            loader,
            Arc::clone(&registry),
            Arc::clone(&admission),
            locks,
            ring,
            Arc::clone(&secrets),
            settings.limits.maxima,
        ));
        let calls = Arc::new(Calls::new(
            Arc::clone(&engine),
            registry,
            admission,
            Arc::clone(&metrics),
        ));
        let runs = Runs::start(
            store.clone(),
            Arc::clone(&lifecycle),
            Arc::clone(&calls),
            Arc::clone(&secrets),
            settings.runs,
            background,
        )
        .await?;

        // Keys' last-use times are kept in memory on the hot path and written here, once
        // more when the host stops.
        let flusher = Arc::clone(&keys);
        background.spawn(Stage::Delivery, move |stop| async move {
            let mut tick = tokio::time::interval(KEY_USE_FLUSH);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => flusher.flush_use().await,
                }
            }
            flusher.flush_use().await;
        });

        if let Some(changes) = changes {
            let follower = Arc::new(Follower {
                lifecycle: Arc::clone(&lifecycle),
                keys: Arc::clone(&keys),
                runs: Arc::clone(&runs),
                reconciling: std::sync::atomic::AtomicBool::new(false),
            });
            background.spawn(Stage::Intake, move |stop| follower.run(changes, stop));
        }

        Ok(Self {
            lifecycle,
            calls,
            runs,
            keys,
            secrets,
            engine,
            backend: store.backend_name(),
        })
    }
}
