//! `gust serve`: opening the data folder, the listener, connection handling and graceful
//! shutdown.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::agents::{Agents, Limits};
use crate::api::{self, AppState, BodyLimits};
use crate::engine::{OutboundSettings, Runtime, Tuning};
use crate::fsutil;
use crate::keys::KeyRing;
use crate::runs::{RunSettings, Runs};
use crate::stats::Stats;
use crate::store::components::ComponentFiles;
use crate::store::{Sqlite, Store};
use crate::tls;

/// Settings of `gust serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where the database, components, cache and generated admin token live.
    pub data_dir: PathBuf,
    /// Base of endpoint URLs in answers; `http://<listen address>` when unset.
    pub public_url: Option<String>,
    /// The admin token; generated and stored in the data folder when unset.
    pub admin_token: Option<String>,
    /// How long calls in flight may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Request body limits.
    pub limits: BodyLimits,
    /// The run queue.
    pub runs: RunSettings,
    /// Instances running at once, and the largest limits deployments may set.
    pub host_limits: Limits,
    /// Connection handling.
    pub http: HttpSettings,
    /// Guests' outgoing HTTP.
    pub outbound: OutboundSettings,
    /// Engine settings (the default is what gust is tuned with).
    pub tuning: Tuning,
}

/// Connection handling of `gust serve`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Time to send request headers, and the longest idle keep-alive.
    pub header_timeout: Duration,
    /// Headers a request may carry.
    pub max_headers: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// PEM certificate chain, to terminate TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_connections: 4096,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Runs the server until `shutdown` resolves, then stops accepting, lets calls in flight
/// finish within the grace period, and returns.
///
/// # Errors
/// When the data folder, the database or the listener cannot be set up.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = &options.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
    let _lock = lock_data_dir(data_dir)?;
    let (admin_token, admin_token_file) = admin_token(options.admin_token.clone(), data_dir)?;
    let store: Arc<dyn Store> = Arc::new(Sqlite::open(&data_dir.join("gust.db"))?);
    let stats = Arc::new(Stats::default());
    let max_memory = (options.host_limits.maxima.memory_mib as usize) << 20;
    let runtime = Arc::new(Runtime::new(
        &data_dir.join("cache"),
        stats,
        max_memory,
        options.outbound.clone(),
        &options.tuning,
    )?);
    let files = ComponentFiles::open(data_dir.join("components"))?;
    let keys = KeyRing::load(store.all_keys().context("loading invoke keys")?);
    let agents = Arc::new(Agents::new(
        runtime,
        Arc::clone(&store),
        files,
        keys,
        options.host_limits.clone(),
    ));
    let runs = Runs::start(store, Arc::clone(&agents), options.runs.clone())
        .await
        .context("starting the run queue")?;

    let listening = Listening {
        header_timeout: options.http.header_timeout,
        max_headers: options.http.max_headers,
        max_connections: options.http.max_connections,
        tls: match (&options.http.tls_cert, &options.http.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        },
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    let local = listener.local_addr()?;
    let scheme = if listening.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = options
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{local}"))
        .trim_end_matches('/')
        .to_owned();
    let state = Arc::new(AppState {
        agents,
        runs,
        admin_token: ArcSwap::from_pointee(admin_token),
        admin_token_file,
        admin_rotation: tokio::sync::Mutex::new(()),
        public_url,
        limits: options.limits,
    });

    // Deployments load while the listener already answers /healthz; calls wait for the load.
    // If the load itself fails (the store cannot be read), the host cannot serve: it stops.
    let (load_failed, mut on_load_failure) = tokio::sync::oneshot::channel();
    let loader = Arc::clone(&state);
    tokio::spawn(async move {
        match loader.agents.load_live().await {
            Ok(n) => tracing::info!("{n} deployment(s) loaded; ready"),
            Err(e) => {
                let e = anyhow::Error::new(e).context("loading the live deployments");
                tracing::error!("{e:#}; shutting down");
                let _ = load_failed.send(e);
            }
        }
    });

    // Keys' last-use times are kept in memory on the hot path and written here.
    let flusher = Arc::clone(&state.agents);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            flusher.flush_key_use().await;
        }
    });

    // The one line a script or test waits for; stdout so it is not mixed with logs.
    println!("gust listening on {scheme}://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(address = %local, data_dir = %data_dir.display(), "listening");

    let mut failure = None;
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            Ok(e) = &mut on_load_failure => failure = Some(e),
        }
    };
    let runs = Arc::clone(&state.runs);
    let drain_runs = |deadline| async move { runs.drain(deadline).await };
    accept_loop(
        listener,
        api::router(state),
        listening,
        stop,
        options.shutdown_grace,
        drain_runs,
    )
    .await;
    failure.map_or(Ok(()), Err)
}

/// How connections are accepted and served.
pub(crate) struct Listening {
    /// Time a client has to send its request headers, and the longest a keep-alive
    /// connection may stay idle (hyper starts the header timer as soon as it waits for the
    /// next request): the slowloris bound.
    pub(crate) header_timeout: Duration,
    /// Headers a request may carry (431 past it).
    pub(crate) max_headers: usize,
    /// Connections open at once; past it, new connections wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// TLS, when the host terminates it.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves connections until `shutdown`; then, within `grace`, lets requests in flight finish
/// while `drain` winds down queued-run workers.
async fn accept_loop<D: Future<Output = ()>>(
    listener: TcpListener,
    app: axum::Router,
    listening: Listening,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    drain: impl FnOnce(tokio::time::Instant) -> D,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(listening.header_timeout)
        .max_headers(listening.max_headers)
        .keep_alive(true);
    let http = Arc::new(http);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        listening.max_connections.max(1),
    ));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, slot)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (http, tls, watcher) = (Arc::clone(&http), listening.tls.clone(), graceful.watcher());
        let handshake_timeout = listening.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(tls) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, tls.accept(stream)).await
                    else {
                        tracing::debug!("a TLS handshake failed or timed out");
                        return;
                    };
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!("connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for calls and runs in flight");
    let deadline = tokio::time::Instant::now() + grace;
    let connections = async {
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep_until(deadline) => tracing::warn!(
                "calls still running after the {}s grace period; stopping anyway", grace.as_secs()
            ),
        }
    };
    tokio::join!(connections, drain(deadline));
}

/// The next connection, once a connection slot is free.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _peer)) => Some((stream, slot)),
        Err(e) => {
            // Out of file descriptors and the like: back off instead of spinning.
            tracing::warn!("accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Takes the data folder for this process alone. Two hosts on one folder would both
/// execute its queued runs; and at start, the run queue treats every run that was running
/// as abandoned, which only holds when no other process can be running it.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another gust process is using the data folder {}",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The admin token: the one given (then it has no file: it is changed where it was given),
/// else the one stored in the data folder, else a new one that is stored (mode 0600) and
/// printed this once.
fn admin_token(
    given: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<(String, Option<std::path::PathBuf>)> {
    if let Some(token) = given {
        let token = token.trim().to_owned();
        anyhow::ensure!(!token.is_empty(), "the admin token is empty");
        return Ok((token, None));
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_owned(), Some(path))),
        Ok(_) => anyhow::bail!(
            "{} is empty; delete it to generate a new token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = new_admin_token();
    // The temporary file `write_atomic` renames into place is created with mode 0600.
    fsutil::write_atomic(&path, token.as_bytes())?;
    println!(
        "Generated an admin token, stored in {} (it is shown only this once):\n  {token}",
        path.display()
    );
    Ok((token, Some(path)))
}

/// A new random admin token.
pub(crate) fn new_admin_token() -> String {
    format!("gust_admin_{}", hex::encode(rand::random::<[u8; 32]>()))
}
