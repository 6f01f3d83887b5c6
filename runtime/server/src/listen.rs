//! Accepting and serving connections: HTTP/1.1 with header and idle timeouts, a bound on
//! connections open at once, optional TLS, and a graceful drain at shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::stall::WriteTimeout;

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
    /// How long a write to a client may make no progress before the connection is closed.
    pub(crate) write_timeout: Duration,
}

/// The time requests in flight get to finish once the host stops.
pub(crate) struct Grace {
    pub(crate) period: Duration,
    /// Cancelled when the period ends: what still runs answers at once (503), and gets
    /// [`ANSWER_AFTER_GRACE`] to be written.
    pub(crate) over: tokio_util::sync::CancellationToken,
}

/// How long the answers of requests cut at the grace period's end have to reach their
/// callers before the connections are closed: a 503 is written in microseconds on a
/// healthy connection; a stalled one is not waited for.
const ANSWER_AFTER_GRACE: Duration = Duration::from_secs(2);

/// Serves connections until `shutdown`; then, within `grace`, lets requests in flight finish
/// while `drain` winds down queued-run workers. Returns the grace period's deadline.
pub(crate) async fn accept_loop<D: Future<Output = ()>>(
    listener: TcpListener,
    app: axum::Router,
    listening: Listening,
    shutdown: impl Future<Output = ()>,
    grace: Grace,
    drain: impl FnOnce(tokio::time::Instant) -> D,
) -> tokio::time::Instant {
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
        let write_timeout = listening.write_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(
                            TokioIo::new(WriteTimeout::new(stream, write_timeout)),
                            service,
                        ))
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
                        .watch(http.serve_connection(
                            TokioIo::new(WriteTimeout::new(stream, write_timeout)),
                            service,
                        ))
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
    let deadline = tokio::time::Instant::now() + grace.period;
    let connections = async {
        let closed = graceful.shutdown();
        tokio::pin!(closed);
        tokio::select! {
            () = &mut closed => tracing::info!("all connections closed"),
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    "calls still running after the {}s grace period; answering them 503 and stopping",
                    grace.period.as_secs()
                );
                grace.over.cancel();
                if tokio::time::timeout(ANSWER_AFTER_GRACE, closed).await.is_err() {
                    tracing::warn!("connections still open; closing them");
                }
            }
        }
    };
    tokio::join!(connections, drain(deadline));
    deadline
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
