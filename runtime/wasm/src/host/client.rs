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
//!
//! An HTTP/2 connection carries as many requests at once as its server allows
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`, 100 to 256 at the model APIs' front ends), and
//! hyper-util's pool keeps one per origin: past that number, requests queued on it, so a host
//! with 1,000 calls waiting on one model API had at most a few hundred of them asking it.
//! Requests to an origin known to speak HTTP/2 therefore go out in lanes of
//! [`STREAMS_PER_CONNECTION`], each lane a pool of its own with one connection (within the
//! same bound), as Go's client opens another connection when one is full.
//!
//! One request at a time opens a connection where the others could share it, and the others
//! wait for it at a [`Gate`]: an `https` origin's first request finds out what the origin
//! speaks (a burst of first requests would otherwise open a connection each, most of them
//! dropped once ALPN said `h2`), and a lane's first request opens the lane's connection. The
//! gate is the host's, not hyper-util's: requests waiting in hyper-util's pool for another
//! request's connection fail when that request is dropped (a guest's timeout), whereas at the
//! gate the next one takes over. A connect that fails fails the requests that waited for it,
//! with its cause, at once.
//!
//! A request an HTTP/2 server refused without processing it (a graceful GOAWAY, a refused
//! stream) is sent again on another connection: see `replay`; so is one hyper took for a
//! connection that closed before any of it went out: see `stranded`; and one that may be
//! repeated whose kept-alive HTTP/1.1 connection closed before its answer: see [`Uses`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{colocate, replay, stranded};
use crate::net;

use super::{BoxError, GuestBody};

/// One pool of connections: hyper-util's client over the counting connector, run by the
/// executor that keeps a connection's futures on one task.
#[derive(Clone)]
struct Pool(hyper_util::client::legacy::Client<Counted, GuestBody>);

impl Pool {
    /// Sends `request`; what the client spawns meanwhile is grouped (`colocate`), which
    /// sending again what a GOAWAY refused relies on.
    fn request(
        &self,
        request: hyper::Request<GuestBody>,
    ) -> impl Future<
        Output = Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    > {
        colocate::scope(self.0.request(request))
    }
}

/// Requests one HTTP/2 lane takes before another is opened: the smallest
/// `SETTINGS_MAX_CONCURRENT_STREAMS` RFC 9113 recommends servers allow (Google's front ends
/// allow 100, Cloudflare's 256, nginx 128 by default). A server that allows fewer queues the
/// rest on its connection, as it did before lanes.
pub(crate) const STREAMS_PER_CONNECTION: usize = 100;

/// Times a request is sent again when it did not get through: refused unprocessed, taken by
/// a connection that closed before sending it, or (one that may be repeated) cut by its
/// kept-alive connection's close. A server rotating its connections refuses a request once,
/// and one refusing it on every connection is not taking requests.
const SENT_AGAIN: usize = 3;

/// The client every guest request goes through, shared by every call so that connections
/// to the same model or tool API are reused across calls.
#[derive(Clone)]
pub(crate) struct GuestClient {
    /// HTTP/1.1 origins' pool (a connection carries one request at a time and the pool opens
    /// as many as it needs), where an `https` origin's first request finds out what it
    /// speaks, and HTTP/2 origins' when their bound is one connection.
    shared: Pool,
    /// Makes the lanes of HTTP/2 origins.
    connector: Counted,
    origins: Arc<OriginSlots>,
    /// The lanes of HTTP/2 origins.
    lanes: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<Lane>>>>,
}

/// A pool with one HTTP/2 connection to an origin, the requests in flight on it, and the
/// gate its requests pass while it has no connection.
struct Lane {
    pool: Pool,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    gate: Arc<Gate>,
}

/// A request's count in its lane, held until its answer is read or dropped (an HTTP/2
/// stream stays open until then).
pub(crate) struct InFlight(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Why a request got no answer.
pub(crate) enum SendError {
    /// The client's error.
    Client(hyper_util::client::legacy::Error),
    /// The connection it waited for at a gate could not be opened.
    Failed(Failure),
    /// The connection it waited for at a gate was not open within its guest's
    /// `connect_timeout`.
    ConnectTimedOut(ConnectTimedOut),
    /// hyper took it for a connection that closed without sending any of it (`stranded`).
    Stranded,
}

/// A connect that failed, for the requests that waited for it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The error with its causes.
    pub(crate) why: String,
    /// What made it fail.
    pub(crate) fault: net::ConnectFault,
}

/// What a request came back with: the answer and its count in its lane, or why not.
pub(crate) type Sent = Result<(hyper::Response<hyper::body::Incoming>, InFlight), SendError>;

impl GuestClient {
    /// Sends `request`, all of it within `deadline`: the wait at a gate, for a connection,
    /// and for the answer's head. When the guest set a `connect_timeout` (`connect`), the
    /// waits at a gate and a connect opened for the request end at it too (see
    /// [`ConnectBound`]).
    ///
    /// A request the server refused without processing it is sent again, on another
    /// connection (see `replay`), up to [`SENT_AGAIN`] times; so is one that may be repeated
    /// ([`replayable`]) whose reused connection closed before the answer came (see
    /// [`Uses`]). Bodies are kept for it within `replay`'s bounds, `http` or `https`.
    pub(crate) async fn send(
        &self,
        request: hyper::Request<GuestBody>,
        deadline: tokio::time::Instant,
        connect: Option<Duration>,
    ) -> Result<Sent, tokio::time::error::Elapsed> {
        // Counted afresh for each time the request is sent: a request sent again needs a
        // new connection, and the guest's bound is for getting one.
        let bounds = || Bounds {
            deadline,
            connect: connect.and_then(|asked| {
                let by = tokio::time::Instant::now().checked_add(asked)?;
                Some(ConnectBound { by, asked })
            }),
        };
        let (head, mut body) = request.into_parts();
        let again = async {
            let mut sent = 0;
            loop {
                let (recording, leftover) = replay::Recording::new(body);
                let mut request = hyper::Request::new(recording.boxed_unsync());
                *request.method_mut() = head.method.clone();
                *request.uri_mut() = head.uri.clone();
                *request.version_mut() = head.version;
                *request.headers_mut() = head.headers.clone();
                *request.extensions_mut() = head.extensions.clone();
                let (answer, reused) = self.send_once(request, bounds()).await;
                let (why, refused) = match answer {
                    Err(SendError::Client(e)) if sent < SENT_AGAIN && replay::unprocessed(&e) => {
                        (net::described(&e), SendError::Client(e))
                    }
                    Err(SendError::Client(e))
                        if sent < SENT_AGAIN
                            && reused
                            && replayable(&head)
                            && replay::closed_before_answer(&e) =>
                    {
                        let why = format!(
                            "{}, on a connection used before, for a request that may be repeated",
                            net::described(&e)
                        );
                        (why, SendError::Client(e))
                    }
                    Err(SendError::Stranded) if sent < SENT_AGAIN => (
                        "its connection closed before it went out".to_owned(),
                        SendError::Stranded,
                    ),
                    done => return done,
                };
                // hyper drops the body when it sees the stream closed, if it has not already;
                // a stranded request's was dropped when the watch claimed it.
                match leftover.await {
                    Ok(leftover) => body = leftover.into_body(),
                    Err(_) => return Err(refused),
                }
                sent += 1;
                // The origin only: a query string may carry an API key.
                let origin = origin_key(&head.uri);
                tracing::debug!(origin, sent, "sent again ({why})");
            }
        };
        tokio::time::timeout_at(deadline, again).await
    }

    /// Sends `request` once; also says whether the connection it was given had served an
    /// earlier request (see [`Uses`]).
    async fn send_once(
        &self,
        mut request: hyper::Request<GuestBody>,
        bounds: Bounds,
    ) -> (Sent, bool) {
        let key = origin_key(request.uri());
        let watch = stranded::Watch::new(&mut request, key);
        let connection = watch.connection();
        let send = async {
            // The client speaks HTTP/2 only over TLS: `http` origins go to the shared pool
            // without a look at the origin's entry.
            let https = is_https(&request);
            let shared = || (self.shared.clone(), InFlight(None), None);
            // A wait at a gate is a wait for another request's connect: the guest's
            // `connect_timeout` bounds it as it bounds a connect of its own. Without it, the
            // requests behind a connect that never ends would each wait out their own
            // connect in turn.
            let at_gate = |gate: Arc<Gate>| async move {
                match bounds.connect {
                    Some(bound) => tokio::time::timeout_at(bound.by, gate.pass())
                        .await
                        .map_err(|_| SendError::ConnectTimedOut(bound.cut()))?
                        .map_err(SendError::Failed),
                    None => gate.pass().await.map_err(SendError::Failed),
                }
            };
            let (_finding_out, (pool, in_flight, _opening)) = if https {
                let key = watch.key();
                let origin = self.origins.origin(key);
                // Both held until the answer's head came or the request failed: a request
                // that opens a connection for others and ends without one lets the next try.
                let finding_out = at_gate(Arc::clone(&origin.gate)).await?;
                let lane = (origin.speaks() == Speaks::Http2)
                    .then(|| self.lane(key))
                    .flatten();
                let through = match lane {
                    Some((pool, in_flight, gate)) => match at_gate(gate).await {
                        Ok(opening) => (pool, in_flight, opening),
                        // The lane's connect found that the origin speaks HTTP/1.1 now.
                        Err(SendError::Failed(_)) if origin.speaks() != Speaks::Http2 => shared(),
                        Err(e) => return Err(e),
                    },
                    None => shared(),
                };
                (finding_out, through)
            } else {
                (None, shared())
            };
            tokio::select! {
                biased;
                answer = before(bounds, pool.request(request)) => answer
                    .map(|answer| (answer, in_flight))
                    .map_err(SendError::Client),
                () = watch.stranded(&self.connector.connecting) => Err(SendError::Stranded),
            }
        };
        let sent = send.await;
        let reused = Uses::count(connection.connection_metadata().as_ref());
        (sent, reused)
    }

    /// The lane an HTTP/2 request to `key` goes on: the first with room, or a new one while
    /// the origin's bound allows; else the least busy. The bound keeps a place for the
    /// connection that found out what the origin speaks, which stays in the shared pool until
    /// it has been idle for [`IDLE`]; with a bound of one connection there are no lanes and
    /// the requests share that connection (`None`).
    fn lane(&self, key: &str) -> Option<(Pool, InFlight, Arc<Gate>)> {
        use std::sync::atomic::Ordering::Relaxed;
        let most = self.origins.per_origin() - 1;
        if most == 0 {
            return None;
        }
        let mut all = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= ORIGINS_KEPT && !all.contains_key(key) {
            // Lanes with nothing in flight hold only idle connections, which close with them.
            all.retain(|_, lanes| lanes.iter().any(|l| l.in_flight.load(Relaxed) > 0));
        }
        let lanes = all.entry(key.to_owned()).or_default();
        let open = lanes
            .iter()
            .position(|l| l.in_flight.load(Relaxed) < STREAMS_PER_CONNECTION);
        let index = match open {
            Some(index) => index,
            None if lanes.len() < most => {
                let gate = Arc::new(Gate::default());
                lanes.push(Lane {
                    pool: pool(
                        Counted {
                            lane: Some(Arc::clone(&gate)),
                            ..self.connector.clone()
                        },
                        true,
                    ),
                    in_flight: Arc::default(),
                    gate,
                });
                lanes.len() - 1
            }
            None => (0..lanes.len())
                .min_by_key(|&i| lanes[i].in_flight.load(Relaxed))
                .unwrap_or(0),
        };
        let lane = &lanes[index];
        lane.in_flight.fetch_add(1, Relaxed);
        Some((
            lane.pool.clone(),
            InFlight(Some(Arc::clone(&lane.in_flight))),
            Arc::clone(&lane.gate),
        ))
    }
}

/// Whether a request may be sent again although its server may have processed it: a method
/// RFC 9110 calls safe (GET, HEAD, OPTIONS, TRACE), or a request carrying an idempotency key,
/// as Go's client judges it. (PUT and DELETE are idempotent too, but APIs do not all treat
/// them so.)
fn replayable(head: &http::request::Parts) -> bool {
    use http::Method;
    matches!(
        head.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || head.headers.contains_key("idempotency-key")
        || head.headers.contains_key("x-idempotency-key")
}

/// How many requests had a connection: each request counts itself once it is done with
/// sending (answered or failed), so a request whose connection an earlier one was given
/// learns it is on a reused connection; a connection that was opened in the background,
/// which may wait idle in the pool before its first request, counts as used too (Go marks a
/// connection reused when it goes idle). An HTTP/1.1 server closes a connection it kept alive when it
/// decides to, and a request written in that moment fails before any answer although the
/// server never read it; a reused connection that fails so is that race, as browsers and
/// Go's client judge it, and the request is sent again if it may be repeated
/// ([`replayable`]). One on a new connection is not: the server read it or failed. Nor is
/// one on an HTTP/2 connection, whose server says which streams it left unprocessed
/// (`replay`).
#[derive(Clone, Default)]
struct Uses(Arc<AtomicUsize>);

impl Uses {
    /// Counts a request that was given `connected`; whether it is an HTTP/1.1 connection
    /// another request was given before.
    fn count(connected: Option<&Connected>) -> bool {
        let Some(connected) = connected.filter(|c| !c.is_negotiated_h2()) else {
            return false;
        };
        let mut extras = http::Extensions::new();
        connected.get_extras(&mut extras);
        extras
            .get::<Uses>()
            .is_some_and(|uses| uses.0.fetch_add(1, Ordering::Relaxed) > 0)
    }
}

fn is_https<B>(request: &hyper::Request<B>) -> bool {
    request
        .uri()
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
}

/// Where requests wait while one of them opens the connection they could share (see the
/// module's comment).
#[derive(Default)]
pub(crate) struct Gate(watch::Sender<Link>);

/// A gate's state.
#[derive(Debug, Clone, Default)]
struct Link {
    /// A lane's live connections (hyper-util may make one more than it keeps, in a race of
    /// its own, and drop it), or, for an origin, 1 once what it speaks is known.
    open: usize,
    /// A request is opening a connection.
    opening: bool,
    /// Connects that failed so far, and the cause of the last.
    failed: u64,
    cause: Option<Failure>,
}

/// The request opening a gate's connection; when it ends without one (its connect failed,
/// timed out, or its call was dropped), the next waiting request opens it.
pub(crate) struct Opening(Arc<Gate>);

impl Drop for Opening {
    fn drop(&mut self) {
        self.0
            .0
            .send_if_modified(|l| std::mem::take(&mut l.opening));
    }
}

impl Gate {
    /// Passes when the gate is open; else the first request to come opens it (`Some`) while
    /// the others wait. Fails with the cause when a connect fails while the request waits.
    async fn pass(self: &Arc<Self>) -> Result<Option<Opening>, Failure> {
        let mut seen = self.0.subscribe();
        let failed_before = seen.borrow().failed;
        loop {
            // Copied out: the borrow holds the channel's lock, which the claim below takes.
            let now = seen.borrow_and_update().clone();
            if now.open > 0 {
                return Ok(None);
            }
            if now.failed > failed_before
                && let Some(cause) = now.cause
            {
                return Err(cause);
            }
            let claimed = self.0.send_if_modified(|l| {
                let free = l.open == 0 && !l.opening;
                l.opening |= free;
                free
            });
            if claimed {
                return Ok(Some(Opening(Arc::clone(self))));
            }
            // The sender lives in `self`: `changed` fails only once it is gone.
            if seen.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    fn opened(&self) {
        self.0.send_modify(|l| l.open += 1);
    }

    fn closed(&self) {
        self.0.send_modify(|l| l.open = l.open.saturating_sub(1));
    }

    /// Fails the requests waiting for the connect that failed.
    fn failed(&self, cause: Failure) {
        self.0.send_modify(|l| {
            l.failed += 1;
            l.cause = Some(cause);
        });
    }
}

/// How long an idle connection stays in the pool (and keeps its place).
const IDLE: Duration = Duration::from_secs(90);

/// The guests' client: connections to one origin bounded by `origins`, names resolved and
/// checked by the address policy (`allow_private` lifts it), servers' certificates checked
/// against the webpki roots and `roots`.
///
/// # Errors
/// When the TLS configuration cannot be built.
pub(crate) fn guest_client(
    allow_private: bool,
    origins: Arc<OriginSlots>,
    roots: &net::ExtraRoots,
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
    let mut trusted =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots.add_to(&mut trusted)?;
    // One configuration for every pool: they share its cache of TLS sessions, so a lane's
    // new connection resumes the session of one before it instead of a full handshake.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| anyhow::anyhow!("building the outbound TLS configuration: {e}"))?
    .with_root_certificates(trusted)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let connector = Counted {
        inner: https,
        origins: Arc::clone(&origins),
        lane: None,
        connecting: Arc::default(),
    };
    Ok(GuestClient {
        shared: pool(connector.clone(), false),
        connector,
        origins,
        lanes: Arc::default(),
    })
}

/// A pool over `connector`; `http2_only` for a lane of an HTTP/2 origin, where the pool then
/// opens one connection at a time (hyper-util holds a lock while it connects). The lane's
/// other requests wait at its [`Gate`] meanwhile, not in the pool, while it has no live
/// connection. Once it has had one, a replacement (the server sent GOAWAY, or the
/// connection sat idle past [`IDLE`] while a long stream kept it alive) is opened by a
/// request in the pool, and the requests that come meanwhile wait in the pool: if that
/// request is dropped, hyper-util fails them with it.
fn pool(connector: Counted, http2_only: bool) -> Pool {
    Pool(
        hyper_util::client::legacy::Client::builder(colocate::Colocated)
            .pool_idle_timeout(IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(http2_only)
            .build(connector),
    )
}

/// The bound on connections per origin, host-wide (`--outbound-connections-per-host`), and
/// what each origin speaks: an entry per origin, made on first use and forgotten once no
/// connection holds a place in it and no request waits on it (guests with a wildcard in
/// `allowed_hosts` could otherwise grow the map without end). The guests' client takes a
/// place for each connection it opens ([`Counted`]).
pub(crate) struct OriginSlots {
    per_origin: usize,
    slots: std::sync::Mutex<std::collections::HashMap<String, Arc<Origin>>>,
}

/// Idle origins are forgotten when the map passes this size.
const ORIGINS_KEPT: usize = 1024;

/// One origin's places, what it speaks, and the gate its first requests pass.
pub(crate) struct Origin {
    places: Arc<Semaphore>,
    speaks: std::sync::Mutex<Speaks>,
    /// Open once what the origin speaks is known (an `https` origin's first connection).
    gate: Arc<Gate>,
}

/// What an origin's connections speak, as far as the host knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    Unknown,
    Http1,
    Http2,
}

impl Origin {
    fn speaks(&self) -> Speaks {
        *self.speaks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OriginSlots {
    pub(crate) fn new(per_origin: usize) -> Self {
        Self {
            per_origin: per_origin.max(1),
            slots: std::sync::Mutex::default(),
        }
    }

    /// The entry of `origin` (a key of [`origin_key`]).
    pub(crate) fn origin(&self, origin: &str) -> Arc<Origin> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= ORIGINS_KEPT && !slots.contains_key(origin) {
            slots.retain(|_, o| {
                Arc::strong_count(o) > 1 || o.places.available_permits() < self.per_origin
            });
        }
        Arc::clone(slots.entry(origin.to_owned()).or_insert_with(|| {
            Arc::new(Origin {
                places: Arc::new(Semaphore::new(self.per_origin)),
                speaks: std::sync::Mutex::new(Speaks::Unknown),
                gate: Arc::default(),
            })
        }))
    }

    /// A place among the connections to `origin`, when one is free.
    pub(crate) async fn connection(&self, origin: &str) -> OwnedSemaphorePermit {
        // Held while it waits, so that the entry is not forgotten meanwhile: a place taken in
        // a forgotten entry's semaphore would not count against the bound.
        let origin = self.origin(origin);
        Arc::clone(&origin.places)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Records what a new connection to `origin` negotiated, and opens the origin's gate.
    fn learned(&self, origin: &str, http2: bool) {
        let origin = self.origin(origin);
        *origin.speaks.lock().unwrap_or_else(|e| e.into_inner()) =
            if http2 { Speaks::Http2 } else { Speaks::Http1 };
        origin.gate.0.send_if_modified(|l| {
            let first = l.open == 0;
            l.open = 1;
            first
        });
    }

    /// Fails the requests waiting to learn what `origin` speaks, when that is not known yet.
    fn unreachable(&self, origin: &str, cause: Failure) {
        let origin = self.origin(origin);
        if origin.speaks() == Speaks::Unknown {
            origin.gate.failed(cause);
        }
    }

    /// Whether every place to `origin` is taken: a request that timed out says so.
    pub(crate) fn full(&self, origin: &str) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(origin)
            .is_some_and(|o| o.places.available_permits() == 0)
    }

    pub(crate) fn per_origin(&self) -> usize {
        self.per_origin
    }
}

/// How long past its request's deadline a connect may go on: see `Counted`.
const CONNECT_GRACE: Duration = Duration::from_millis(250);

/// A connect cut off: at its request's deadline (the request timed out), or at the
/// `connect_timeout` its guest asked for (`asked`).
#[derive(Debug, Clone)]
pub(crate) struct ConnectTimedOut {
    pub(crate) asked: Option<Duration>,
}

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.asked {
            Some(asked) => write!(
                f,
                "timed out connecting to the origin: the request's connect_timeout is {}s",
                asked.as_secs_f64()
            ),
            None => f.write_str("timed out connecting to the origin"),
        }
    }
}

impl std::error::Error for ConnectTimedOut {}

/// A request's deadline passed while every connection place of its origin was taken
/// (`--outbound-connections-per-host`): it timed out waiting, the origin refused nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlaceTimedOut;

impl std::fmt::Display for PlaceTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out waiting for a connection to the origin")
    }
}

impl std::error::Error for PlaceTimedOut {}

/// A connect for the shared pool that was still waiting for a place when hyper-util left it
/// to finish in the background: its request took a connection that came back to the pool
/// first. hyper-util lets such a connect go on so as not to waste a socket, but one still
/// waiting for a place has none, and would open a connection nobody asked for. Until it gave
/// up here, thousands of them (one per request that waited) stood in the origin's queue for
/// a place ahead of requests that needed one: a request handed a connection that turned out
/// closed stops waiting for the pool and waits for its own connect alone, and at the end of
/// a burst to a server that drops connections unannounced such requests waited out their
/// deadline while those connects took the places and left their connections idle in the
/// pool. The connect learns it was left behind when it is polled outside its request's
/// scope (`before`): hyper-util's background work runs on other tasks (`colocate`). A lane's
/// connect is left to finish: in an HTTP/2 pool the other requests wait for the one connect
/// under way, through hyper-util's pool, not for connects of their own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeftBehind;

impl std::fmt::Display for LeftBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no longer waiting for a place: its request took another connection")
    }
}

impl std::error::Error for LeftBehind {}

/// What bounds the connect of a connection opened for a request: the request's deadline,
/// and the time its guest allows for getting a connection (`connect_timeout` in its
/// request options).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    deadline: tokio::time::Instant,
    connect: Option<ConnectBound>,
}

/// A guest's `connect_timeout` (`asked`), counted from each time its request is sent: the
/// waits for another request's connect (at a gate) and the connect itself (name, TCP and
/// TLS) end `by` then, later by as long as the request waited for a place among the
/// origin's connections (the host's own bound, which the deadline bounds). A request
/// waiting at a gate counts all of that wait, even while the request opening the
/// connection is itself waiting for a place: that needs the origin's places all taken
/// (thousands by default), and its deadline still bounds it.
#[derive(Debug, Clone, Copy)]
struct ConnectBound {
    by: tokio::time::Instant,
    asked: Duration,
}

impl ConnectBound {
    /// What a wait or a connect cut off by it is.
    fn cut(&self) -> ConnectTimedOut {
        ConnectTimedOut {
            asked: Some(self.asked),
        }
    }
}

tokio::task_local! {
    /// The bounds of the request being sent on this task (see [`before`]).
    static BOUNDS: Bounds;
}

/// Sends with the client within its `bounds`: a connection the client starts for this
/// request waits for a place, and connects, no longer than the request does. The client
/// starts the connector on the request's own task, so the connector reads the bounds there;
/// when an idle connection comes back first, the client lets the connect it started go on in
/// the background. One for the shared pool still waiting for a place then gives up
/// (`LeftBehind`: it is polled outside this scope); one already connecting, or a lane's, is
/// bounded by the deadline, without which it would hold its place for as long as it took
/// (places free as connections close) or the origin left the handshake unanswered.
async fn before<F: Future>(bounds: Bounds, send: F) -> F::Output {
    BOUNDS.scope(bounds, send).await
}

/// Whether the connector's future is polled outside its request's scope ([`before`]):
/// hyper-util left it to finish in the background, on a task of its own (`colocate`).
fn in_the_background() -> bool {
    BOUNDS.try_with(|_| ()).is_err()
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
/// connects, and hands it to the connection; it tells the origin what the connection speaks,
/// and a lane's gate that the lane has a connection (or why not).
#[derive(Clone)]
pub(crate) struct Counted {
    inner: Inner,
    origins: Arc<OriginSlots>,
    /// The gate of the lane whose pool this connector serves.
    lane: Option<Arc<Gate>>,
    /// The connects under way, for the requests waiting for one (`stranded`).
    connecting: Arc<stranded::Connecting>,
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
        let lane = self.lane.clone();
        let mut inner = self.inner.clone();
        // Read here, on the request's task; outside `before` (no request of a guest),
        // there is no deadline.
        let bounds = BOUNDS.try_with(|b| *b).ok();
        let deadline = bounds.map(|b| b.deadline);
        let connect = bounds.and_then(|b| b.connect);
        let key = origin_key(&uri);
        // Counted from the start: the request hyper-util connects again for is waiting.
        let started = self.connecting.start(key.clone());
        // Started for a guest's request on the shared pool: see `LeftBehind`.
        let unwanted_alone = lane.is_none() && bounds.is_some();
        Box::pin(async move {
            let _started = started;
            let waiting = tokio::time::Instant::now();
            let place = origins.connection(&key);
            tokio::pin!(place);
            let place = std::future::poll_fn(|cx| {
                if unwanted_alone && in_the_background() {
                    return Poll::Ready(Err(LeftBehind));
                }
                place.as_mut().poll(cx).map(Ok)
            });
            let place = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, place)
                    .await
                    .map_err(|_| PlaceTimedOut)??,
                None => place.await?,
            };
            // Connecting (the name, TCP and TLS) ends at the guest's `connect_timeout` if it
            // set one (the wait for a place above not counted), and is bounded by the deadline
            // too: a connect the client goes on with in the background (see `before`) holds
            // its place until it ends, and an origin that accepts the connection but never
            // answers the handshake would hold the place for good. A moment past the
            // deadline: a request still waiting for its own connect is cut off by its own
            // timeout first, so mostly only a connect left in the background ends here (when
            // it is the request's own, on a task not polled for that moment,
            // `ConnectTimedOut` still says it timed out). The deadline is this request's own,
            // so running out of it fails no one else at the gates: the next in line opens
            // instead. (Outside `before` there is neither deadline nor guest's bound.)
            let cutoff = deadline.map(|deadline| {
                let late = deadline + CONNECT_GRACE;
                match connect {
                    Some(bound) => {
                        let by = bound.by.checked_add(waiting.elapsed()).unwrap_or(bound.by);
                        if by <= late {
                            (by, bound.cut())
                        } else {
                            (late, ConnectTimedOut { asked: None })
                        }
                    }
                    None => (late, ConnectTimedOut { asked: None }),
                }
            });
            if let Some((by, cut)) = &cutoff
                && *by <= tokio::time::Instant::now()
            {
                // Nothing left of the bound: no connection is started for it.
                return Err(BoxError::from(cut.clone()));
            }
            let https = key.starts_with("https:");
            let connecting = tower_service::Service::call(&mut inner, uri);
            let connected = match cutoff {
                Some((by, cut)) => match tokio::time::timeout_at(by, connecting).await {
                    Ok(connected) => connected,
                    Err(_) => return Err(BoxError::from(cut)),
                },
                None => connecting.await,
            };
            let io = match connected {
                Ok(io) => io,
                Err(error) => {
                    let cause = Failure {
                        why: net::described(&*error),
                        fault: net::connect_fault(&*error),
                    };
                    if let Some(lane) = &lane {
                        lane.failed(cause.clone());
                    }
                    if https {
                        origins.unreachable(&key, cause);
                    }
                    return Err(error);
                }
            };
            let http2 = io.connected().is_negotiated_h2();
            if https {
                origins.learned(&key, http2);
            }
            if let Some(lane) = &lane
                && !http2
            {
                // The lane's pool would speak HTTP/2 to it regardless: the request that
                // opened the lane fails with this, and those waiting for it, having learned
                // what the origin speaks now, go to the shared pool.
                let error = format!("{key} no longer offers HTTP/2");
                lane.failed(Failure {
                    why: error.clone(),
                    fault: net::ConnectFault::Other,
                });
                return Err(error.into());
            }
            Ok(CountedIo {
                io,
                _place: place,
                lane: lane.inspect(|lane| lane.opened()),
                life: stranded::Life::new(),
                // Done in the background (its request took another connection): it may
                // wait idle in the pool before its first request, which then meets the
                // keep-alive race as a reused connection's does.
                uses: Uses(Arc::new(AtomicUsize::new(usize::from(in_the_background())))),
            })
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
    /// The gate of the lane it is the connection of: closed with it.
    lane: Option<Arc<Gate>>,
    /// Ends when the connection is dropped, for the requests hyper took for it (`stranded`).
    life: stranded::Life,
    /// The requests that were given it.
    uses: Uses,
}

impl<T> Drop for CountedIo<T> {
    fn drop(&mut self) {
        if let Some(lane) = &self.lane {
            lane.closed();
        }
    }
}

impl<T: Connection> Connection for CountedIo<T> {
    fn connected(&self) -> Connected {
        self.life
            .alive(self.io.connected())
            .extra(self.uses.clone())
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

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
