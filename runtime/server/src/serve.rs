//! `gust serve`, the composition root: the data folder, the store, the engine, the use
//! cases, the listener — and one shutdown that stops them in order.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gust_core::auth::{ADMIN_TOKEN_SETTING, AdminToken};
use gust_core::background::Background;
use gust_core::deploy::Limits;
use gust_core::runs::RunSettings;
use gust_core::{Host, HostSettings};
use gust_store::components::ComponentFiles;
use gust_store::{Change, Store};
use gust_wasm::{OutboundSettings, Stats, Tuning, WasmEngine};

use crate::api::{self, AppState, BodyLimits};
use crate::console;
use crate::data_dir;
use crate::headers::SecurityHeaders;
use crate::listen::{self, Listening};
use crate::tls;

/// Settings of `gust serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where the database, components, cache and generated admin token live.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL shared with other hosts; `None`: SQLite in the data folder.
    pub database: Option<String>,
    /// Base of endpoint URLs in answers; `http://<listen address>` when unset.
    pub public_url: Option<String>,
    /// Where `/metrics` is also served without the admin token; `None`: nowhere else.
    pub metrics_listen: Option<SocketAddr>,
    /// The admin token; generated and stored in the data folder when unset.
    pub admin_token: Option<String>,
    /// How long calls in flight may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long `/readyz` answers 503 after SIGTERM before the listener closes.
    pub drain_delay: Duration,
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
    /// Free bytes below which the data folder's disk counts as full: new runs are refused.
    pub min_free_disk: u64,
    /// Calls, runs and pushes not counted for `/metrics` (only to measure what counting
    /// costs).
    pub skip_metrics: bool,
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
    /// How long writing an answer may make no progress (a client that does not read)
    /// before the connection is closed.
    pub write_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_connections: 16_384,
            tls_cert: None,
            tls_key: None,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The admin token of a host sharing its database with others, where the token's hash is
/// kept for all of them. A token given on start must be that one (else the host refuses to
/// start); without one, the host takes the stored hash — it needs no token of its own — and
/// only the first host of a new database makes one (stored in its data folder and printed,
/// as a single host does). A token left in the data folder by an earlier start that no
/// longer matches was rotated on another host: the stored hash wins.
async fn shared_admin_token(
    given: Option<String>,
    data_dir: &std::path::Path,
    store: &Store,
) -> anyhow::Result<AdminToken> {
    let refused = |e: gust_core::Error| anyhow::anyhow!("{e}");
    if let Some(token) = data_dir::given_admin_token(given)? {
        return AdminToken::shared(&token, None, store.clone())
            .await
            .map_err(refused);
    }
    let stored = store.setting(ADMIN_TOKEN_SETTING).await?;
    match (stored, data_dir::stored_admin_token(data_dir)?) {
        // The folder's token is current: kept, so a rotation here updates the file too.
        (Some(hash), Some((token, file))) if AdminToken::hashes_to(&token, &hash) => {
            AdminToken::shared(&token, Some(file), store.clone())
                .await
                .map_err(refused)
        }
        (Some(hash), kept) => {
            if kept.is_some() {
                tracing::warn!(
                    "the admin token in the data folder was rotated on another host since; \
                     this host takes the database's"
                );
            }
            AdminToken::from_hash(&hash, store.clone()).map_err(refused)
        }
        (None, Some((token, file))) => AdminToken::shared(&token, Some(file), store.clone())
            .await
            .map_err(refused),
        // A new database: this host makes the token, and keeps and shows it only if its
        // hash is the one stored — of hosts starting together, one wins, and the others
        // take the winner's hash instead of printing a token that would not work.
        (None, None) => {
            let token = gust_core::auth::new_admin_token();
            let hash = AdminToken::hash_of(&token);
            let stored = store
                .put_setting_if_absent(ADMIN_TOKEN_SETTING, &hash)
                .await?;
            if stored == hash {
                let file = data_dir::keep_new_admin_token(data_dir, &token)?;
                AdminToken::shared(&token, Some(file), store.clone())
                    .await
                    .map_err(refused)
            } else {
                AdminToken::from_hash(&stored, store.clone()).map_err(refused)
            }
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
    options.runs.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        options.limits.in_flight >= options.limits.upload.max(options.limits.input),
        "the memory for request bodies in flight ({} MiB) must hold at least the largest upload and input ({} MiB)",
        options.limits.in_flight >> 20,
        options.limits.upload.max(options.limits.input) >> 20
    );
    let data_dir = &options.data_dir;
    data_dir::prepare(data_dir)?;
    let _lock = data_dir::lock(data_dir)?;
    let store = match &options.database {
        // Several hosts on one database: the data folder keeps only what is this host's own
        // (the compiled cache, component files fetched from the database, its lock).
        Some(url) => Store::open_postgres(url)
            .await
            .context("opening the database given with --database")?,
        None => {
            let database = data_dir.join("gust.db");
            data_dir::private_file(&database)?;
            Store::open_sqlite(&database)?
        }
    };
    let admin = if store.shared() {
        shared_admin_token(options.admin_token.clone(), data_dir, &store).await?
    } else {
        let (token, file) = data_dir::admin_token(options.admin_token.clone(), data_dir)?;
        AdminToken::new(&token, file)
    };
    let max_memory = (options.host_limits.maxima.memory_mib as usize) << 20;
    let engine = Arc::new(WasmEngine::new(
        &data_dir.join("cache"),
        Arc::new(Stats::default()),
        max_memory,
        options.outbound.clone(),
        &options.tuning,
    )?);
    let files = ComponentFiles::open(data_dir.join("components"))?;

    // Bound before the use cases start, so the public URL (which names the port when none is
    // given) is known to what puts URLs in events: thin push events carry a poll URL.
    let listening = Listening {
        header_timeout: options.http.header_timeout,
        max_headers: options.http.max_headers,
        max_connections: options.http.max_connections,
        write_timeout: options.http.write_timeout,
        tls: match (&options.http.tls_cert, &options.http.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        },
    };
    let open_files = crate::os::raise_open_files();
    crate::os::check_open_files(
        open_files,
        options.http.max_connections,
        options.outbound.connections_per_host,
    );
    if let Some(pool) = &options.tuning.pool {
        crate::os::check_map_count(
            crate::os::max_map_count(),
            pool.instances as usize,
            gust_core::deploy::DEFAULT_MAX_INSTANCES,
        );
    }
    let listener = crate::os::bind(options.listen)
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
    check_public_url(&public_url)?;
    // Where a client on this machine reaches this host: the CLI pairs it with the admin
    // token in this folder, so that token is sent here and nowhere else.
    let mut reachable = local;
    if reachable.ip().is_unspecified() {
        reachable.set_ip(if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    gust_model::fs::write_atomic(
        &options.data_dir.join(crate::data_dir::LOCAL_URL_FILE),
        format!("{scheme}://{reachable}\n").as_bytes(),
    )
    .context("recording the host's address in the data folder")?;

    let background = Background::default();
    let mut runs = options.runs.clone();
    runs.push.public_url.clone_from(&public_url);
    let settings = HostSettings {
        limits: options.host_limits.clone(),
        runs,
        skip_metrics: options.skip_metrics,
    };
    let changes = store.changes();
    let host = match Host::start(store, engine, files, settings, &background).await {
        Ok(host) => host,
        Err(e) => {
            background.cancel_all();
            return Err(anyhow::Error::new(e).context("starting the host"));
        }
    };
    let state = Arc::new(AppState {
        host,
        admin,
        public_url,
        limits: options.limits,
        body_budget: api::BodyBudget::new(options.limits.in_flight),
        tls: listening.tls.is_some(),
        draining: std::sync::atomic::AtomicBool::new(false),
        stopping: tokio_util::sync::CancellationToken::new(),
        // One moment for the whole host: pushes in flight are cut there too.
        past_grace: background.grace_over(),
        database: arc_swap::ArcSwap::from_pointee("not checked yet".to_owned()),
    });

    // The database's health for `/readyz`, probed here every few seconds so that a probe
    // never waits on the database (a busy store would make the host look unready).
    let probed = Arc::clone(&state);
    background.spawn(
        gust_core::background::Stage::Intake,
        move |stop| async move {
            let mut tick = tokio::time::interval(DATABASE_PROBE_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let health = match tokio::time::timeout(
                    DATABASE_PROBE_EVERY,
                    probed.host.lifecycle.ping_store(),
                )
                .await
                {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(e)) => format!("unavailable: {e}"),
                    Err(_) => format!(
                        "unavailable: no answer within {}s",
                        DATABASE_PROBE_EVERY.as_secs()
                    ),
                };
                probed.database.store(Arc::new(health));
            }
        },
    );

    // With several hosts, a token rotated on another one holds here too.
    if let Some(mut changes) = changes {
        let followed = Arc::clone(&state);
        background.spawn(
            gust_core::background::Stage::Intake,
            move |stop| async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let reload = tokio::select! {
                        () = stop.cancelled() => break,
                        change = changes.recv() => match change {
                            Ok(Change::Setting { name }) => name == ADMIN_TOKEN_SETTING,
                            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => true,
                            Ok(_) => false,
                            Err(RecvError::Closed) => break,
                        },
                    };
                    if reload {
                        followed.admin.reload().await;
                    }
                }
            },
        );
    }

    // Runs are refused before the disk fills: a full disk would fail every commit, the
    // accepted runs' included.
    let (runs, watched, min_free) = (
        Arc::clone(&state.host.runs),
        data_dir.clone(),
        options.min_free_disk,
    );
    background.spawn(
        gust_core::background::Stage::Intake,
        move |stop| async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match data_dir::free_bytes(&watched) {
                    Ok(free) => runs.set_disk_low(free < min_free),
                    Err(e) => tracing::warn!("reading the free space of the data folder: {e}"),
                }
            }
        },
    );

    // Deployments load while the listener already answers /healthz; calls wait for the load.
    // If the load itself fails (the store cannot be read), the host cannot serve: it stops.
    let (load_failed, mut on_load_failure) = tokio::sync::oneshot::channel();
    let lifecycle = Arc::clone(&state.host.lifecycle);
    background.spawn(gust_core::background::Stage::Intake, move |_| async move {
        match lifecycle.load_live().await {
            Ok(n) => tracing::info!("{n} deployment(s) loaded; ready"),
            Err(e) => {
                let e = anyhow::Error::new(e).context("loading the live deployments");
                tracing::error!("{e:#}; shutting down");
                let _ = load_failed.send(e);
            }
        }
    });

    // `/metrics` without the token, for a scraper that reaches this address only (it stops
    // with the intake, after the runs' grace period).
    if let Some(address) = options.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listening for metrics on {address}"))?;
        tracing::info!(address = %listener.local_addr()?, "serving /metrics without the admin token");
        let app = api::metrics_router(Arc::clone(&state)).layer(SecurityHeaders);
        background.spawn(
            gust_core::background::Stage::Intake,
            move |stop| async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!("serving metrics: {e}");
                }
            },
        );
    }

    // The one line a script or test waits for; stdout so it is not mixed with logs.
    println!("gust listening on {scheme}://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(address = %local, data_dir = %data_dir.display(), "listening");

    let mut failure = None;
    let draining = Arc::clone(&state);
    let stopping = state.stopping.clone();
    let stop = async {
        tokio::select! {
            () = shutdown => {
                // Still serving, but no longer ready: load balancers stop sending calls
                // before the listener closes.
                if !options.drain_delay.is_zero() {
                    draining.draining.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        "draining: /readyz answers 503 for {}s, then no new connections",
                        options.drain_delay.as_secs()
                    );
                    tokio::time::sleep(options.drain_delay).await;
                }
            }
            Ok(e) = &mut on_load_failure => failure = Some(e),
        }
        stopping.cancel();
    };
    let runs = Arc::clone(&state.host.runs);
    let drain_runs = |deadline| async move { runs.drain(deadline).await };
    let past_grace = state.past_grace.clone();
    let deadline = listen::accept_loop(
        listener,
        api::router(state, console::routes()).layer(SecurityHeaders),
        listening,
        stop,
        listen::Grace {
            period: options.shutdown_grace,
            over: past_grace,
        },
        drain_runs,
    )
    .await;
    // Connections are closed and runs have finished or run out of time: stop what is left,
    // in order (gust_core::background), committing every accepted write.
    background.stop(deadline).await;
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// How often the database is probed for `/readyz`.
const DATABASE_PROBE_EVERY: Duration = Duration::from_secs(5);

/// The public URL goes into every endpoint URL and into the code the console and
/// `gust endpoint` show, inside double quotes in shell, Python and JavaScript: it must be an
/// http(s) URL with none of the characters that would end or expand such a string.
fn check_public_url(url: &str) -> anyhow::Result<()> {
    let parsed =
        url::Url::parse(url).with_context(|| format!("--public-url `{url}` is not a URL"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some(),
        "--public-url `{url}` must be an http:// or https:// URL with a host"
    );
    if let Some(bad) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'`$\\".contains(*c))
    {
        anyhow::bail!("--public-url `{url}` may not contain `{bad}`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_public_url;

    #[test]
    fn public_urls_that_would_break_the_shown_code_are_refused() {
        assert!(check_public_url("https://agents.example.com/gust").is_ok());
        assert!(check_public_url("http://127.0.0.1:8080").is_ok());
        for bad in [
            "https://a.example/\"$(id)\"",
            "https://a.example/`id`",
            "https://a.example/it's",
            "ftp://a.example",
            "a.example",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
    }
}
