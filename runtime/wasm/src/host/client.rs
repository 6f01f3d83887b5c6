//! The HTTP client of guests' requests: hyper-util's pooled client, over TLS (rustls, the
//! webpki roots, HTTP/2 when the server offers it by ALPN), names resolved by the address
//! policy's resolver (`net`), and a connector that counts connections.
//!
//! The count is `--outbound-connections-per-host`: a connection takes a place among those
//! to its origin before it is opened and gives it back when it closes, idle time in the pool
//! included. A request reuses an idle connection when there is one; otherwise it waits for a
//! place, or for a connection to come back, whichever comes first. Counting requests instead
//! (a place per request, given back when its answer was dropped) let the client open more:
//! a request that took a freed place before the pool had taken that answer's connection back
//! opened a new one, and the pool kept both (9,923 connections for a bound of 7,896 after
//! 10,000 waiting calls, which then ran the host out of descriptors). reqwest, which the
//! host used before, cannot count them: its connection type is opaque to a connector layer.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::net;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// What a guest's request body is sent as.
pub(crate) type GuestBody = UnsyncBoxBody<Bytes, BoxError>;

/// The client every guest request goes through, shared by every call so that connections
/// to the same model or tool API are reused across calls.
pub(crate) type GuestClient = hyper_util::client::legacy::Client<Counted, GuestBody>;

/// How long an idle connection stays in the pool (and keeps its place).
const IDLE: Duration = Duration::from_secs(90);

/// The guests' client: connections to one origin bounded by `origins`, names resolved and
/// checked by the address policy (`allow_private` lifts it).
///
/// # Errors
/// When the TLS configuration cannot be built.
pub(crate) fn guest_client(
    allow_private: bool,
    origins: Arc<OriginSlots>,
) -> anyhow::Result<GuestClient> {
    let mut http = HttpConnector::new_with_resolver(SafeDns { allow_private });
    // The TLS layer above takes `https` URLs; this one only opens the TCP connection.
    http.enforce_http(false);
    http.set_nodelay(true);
    // As reqwest set them: a peer that vanished without closing is found within about a
    // minute, idle or not, and its connection gives its place back.
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| anyhow::anyhow!("building the outbound TLS configuration: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(Counted {
                inner: https,
                origins,
            }),
    )
}

/// The bound on connections per origin, host-wide (`--outbound-connections-per-host`): one
/// semaphore per origin, made on first use and forgotten once no connection holds a place
/// in it (guests with a wildcard in `allowed_hosts` could otherwise grow the map without
/// end). The guests' client takes a place for each connection it opens ([`Counted`]).
pub(crate) struct OriginSlots {
    per_origin: usize,
    slots: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

/// Idle origins are forgotten when the map passes this size.
const ORIGINS_KEPT: usize = 1024;

impl OriginSlots {
    pub(crate) fn new(per_origin: usize) -> Self {
        Self {
            per_origin: per_origin.max(1),
            slots: std::sync::Mutex::default(),
        }
    }

    /// A place among the connections to `origin` (a key of [`origin_key`]), when one
    /// is free.
    pub(crate) async fn connection(&self, origin: &str) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= ORIGINS_KEPT && !slots.contains_key(origin) {
                slots.retain(|_, s| {
                    Arc::strong_count(s) > 1 || s.available_permits() < self.per_origin
                });
            }
            Arc::clone(
                slots
                    .entry(origin.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_origin))),
            )
        };
        semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Whether every place to `origin` is taken: a request that timed out says so.
    pub(crate) fn full(&self, origin: &str) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(origin)
            .is_some_and(|s| s.available_permits() == 0)
    }

    pub(crate) fn per_origin(&self) -> usize {
        self.per_origin
    }
}

tokio::task_local! {
    /// The deadline of the request being sent on this task (see [`before`]).
    static DEADLINE: tokio::time::Instant;
}

/// Sends with the client within `deadline`: a connection the client starts for this request
/// waits for a place no longer than the request does. The client starts the connector on the
/// request's own task, so the connector reads the deadline there; when an idle connection
/// comes back first, the client lets the connect it started go on in the background, and
/// without the deadline that connect would wait for a place for as long as it took (places
/// free as connections close), then open a connection nobody asked for.
pub(crate) async fn before<F: Future>(deadline: tokio::time::Instant, send: F) -> F::Output {
    DEADLINE.scope(deadline, send).await
}

/// Resolves names for the guests' client with the address policy (`net::resolve_checked`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SafeDns {
    allow_private: bool,
}

impl tower_service::Service<Name> for SafeDns {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            net::resolve_checked(name.as_str(), allow_private)
                .await
                .map(Vec::into_iter)
        })
    }
}

type Inner = HttpsConnector<HttpConnector<SafeDns>>;

/// The connector that takes a place among the connections to the URL's origin before it
/// connects, and hands it to the connection.
#[derive(Clone)]
pub(crate) struct Counted {
    inner: Inner,
    origins: Arc<OriginSlots>,
}

impl tower_service::Service<Uri> for Counted {
    type Response = CountedIo<MaybeHttpsStream<TokioIo<TcpStream>>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The inner connector is always ready; it is cloned per connection below, once
        // the place is taken.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let origins = Arc::clone(&self.origins);
        let mut inner = self.inner.clone();
        // Read here, on the request's task; outside `before` (no request of a guest),
        // there is no deadline.
        let deadline = DEADLINE.try_with(|d| *d).ok();
        Box::pin(async move {
            let key = origin_key(&uri);
            let place = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, origins.connection(&key))
                    .await
                    .map_err(|_| "timed out waiting for a connection to the origin")?,
                None => origins.connection(&key).await,
            };
            let io = tower_service::Service::call(&mut inner, uri).await?;
            Ok(CountedIo { io, _place: place })
        })
    }
}

/// The scheme, lowercased host and the port in effect: spellings of one origin share its
/// bound.
pub(crate) fn origin_key(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    key(&scheme, uri.host().unwrap_or(""), port)
}

/// The key of an origin given as its lowercased scheme, host and the port in effect.
pub(crate) fn key(scheme: &str, host: &str, port: u16) -> String {
    format!("{scheme}://{}:{port}", host.to_ascii_lowercase())
}

/// A connection with its place among the connections to its origin: the place is given back
/// when the connection is dropped (closed, or let go by the pool).
pub(crate) struct CountedIo<T> {
    io: T,
    _place: OwnedSemaphorePermit,
}

impl<T: Connection> Connection for CountedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
