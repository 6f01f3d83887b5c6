//! `wasi:http/outgoing-handler`: the guest's HTTP requests, for calling models and tools.
//!
//! A request goes out only if its scheme, host and port match the deployment's
//! `allowed_hosts`, and its destination passes the address policy of `net` (no loopback or
//! private addresses unless the host allows them; names resolved once and checked). Each
//! has a timeout and a bounded answer, and each — denied ones too — goes to the call's sink
//! (method, origin, status, duration; never headers or bodies): kept on the run for queued
//! runs, written to the host log for sync calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use gust_model::clock;
use gust_model::{HostPattern, OutboundRequest};

use super::CallSink;
use crate::net;
use crate::stats::Stats;

/// Largest request body a guest may send.
const MAX_REQUEST_BYTES: usize = 10 << 20;

/// Most bytes of request bodies one call's outgoing requests may hold in the host at once
/// (taken from the guest, not yet written to a socket); past it the request fails.
const MAX_CALL_BUFFERED_BYTES: usize = 16 << 20;

/// The size of one write into an outgoing body, and so of what its channel holds (wasi-http
/// keeps one chunk and one more in flight): 1 MiB by default, 64 KiB here, so that the
/// requests a guest keeps open hold little memory each.
const BODY_CHUNK_BYTES: usize = 64 << 10;

/// What a deployment allows, and the host-wide outbound settings.
#[derive(Clone)]
pub struct OutboundPolicy {
    pub(crate) allowed: Arc<[HostPattern]>,
    pub(crate) timeout: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) allow_private_network: bool,
    pub(crate) client: reqwest::Client,
    pub(crate) origins: Arc<OriginSlots>,
}

/// A bound on requests in flight per origin, host-wide: one semaphore per origin, made on
/// first use and forgotten once idle (guests with a wildcard in `allowed_hosts` could
/// otherwise grow the map without end).
///
/// It bounds requests, not the client's connections: a place is given back when the answer
/// is dropped, and the pool takes that answer's connection back in a task of its own; a
/// request that takes the place first finds no idle connection and opens one more, which
/// the pool keeps (measured: 9,923 connections for a bound of 7,896 after 10,000 waiting
/// calls; BENCHMARKS.md, "Agents that wait"). Bounding connections needs a connector that
/// holds the place for the connection's life, which reqwest's opaque connection type does
/// not allow.
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

    /// A request's place among those in flight to `origin`, waiting until `deadline`.
    async fn enter(&self, origin: &str, deadline: Instant) -> Option<OwnedSemaphorePermit> {
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
        tokio::time::timeout_at(deadline.into(), semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// The hooks of one call.
pub(crate) struct Outbound {
    pub(crate) policy: OutboundPolicy,
    pub(crate) sink: Arc<dyn CallSink>,
    pub(crate) buffered: Buffered,
}

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

impl WasiHttpHooks for Outbound {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, Error>> + Send> {
        let policy = self.policy.clone();
        let sink = Arc::clone(&self.sink);
        let buffered = self.buffered.clone();
        // Made here, inside the guest's run, so it is that span's child: the request itself
        // is driven elsewhere.
        let span = tracing::info_span!(
            target: crate::trace::TARGET,
            "outbound",
            http.request.method = %request.method(),
            server.address = request.uri().host().unwrap_or(""),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let propagate = crate::trace::headers(&span);
        let traced = span.clone();
        Box::new(
            async move {
                let started = Instant::now();
                let method = request.method().to_string();
                let uri = request.uri().clone();
                let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
                let host = uri.host().unwrap_or("").to_owned();
                let port = uri
                    .port_u16()
                    .unwrap_or(if scheme == "https" { 443 } else { 80 });
                // Scheme, host and port only: userinfo (`user:password@`) is a credential and
                // is never recorded.
                let origin = match uri.port_u16() {
                    Some(port) => format!("{scheme}://{host}:{port}"),
                    None => format!("{scheme}://{host}"),
                };
                let record = |status: Option<u16>, error: Option<String>| {
                    match (status, &error) {
                        (Some(status), _) => {
                            traced.record("http.response.status_code", i64::from(status))
                        }
                        (None, Some(error)) => traced.record("error.type", error.as_str()),
                        (None, None) => &traced,
                    };
                    let entry = OutboundRequest {
                        ts: clock::now_ms(),
                        method: method.clone(),
                        host: origin.clone(),
                        status,
                        duration_ms: u64::try_from(started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        error,
                    };
                    sink.outbound(entry);
                };

                // The body is taken whole before anything is decided: a guest writes it after
                // `handle` returns, and an answer that closed the body under it (a refusal) would
                // make those writes fail instead of the request, which some guests (the
                // JavaScript engine) do not survive.
                // Decided before a byte of the body is taken: a refused request costs the host
                // no memory, whatever the guest writes.
                let (parts, body) = request.into_parts();
                let refusal = if !policy
                    .allowed
                    .iter()
                    .any(|p| p.matches(&scheme, &host, port))
                {
                    Some((
                        format!("denied: {origin} is not in this deployment's allowed_hosts"),
                        Error::HttpRequestDenied,
                    ))
                } else {
                    match reqwest::Url::parse(&uri.to_string()) {
                        Err(e) => Some((format!("invalid URL: {e}"), Error::HttpRequestUriInvalid)),
                        Ok(url) => match net::check_url(&url, policy.allow_private_network) {
                            Err(refused) => {
                                Some((format!("denied: {refused}"), Error::DestinationIpProhibited))
                            }
                            Ok(()) => None,
                        },
                    }
                };
                if let Some((why, code)) = refusal {
                    record(None, Some(why));
                    // The guest writes its body after `handle` returns; a body closed under it
                    // would make those writes fail, which some guests (the JavaScript engine)
                    // do not survive. So it is read and thrown away, for a bounded time.
                    drain(body, policy.timeout).await;
                    return Err(code);
                }
                let url = reqwest::Url::parse(&uri.to_string())
                    .map_err(|_| Error::HttpRequestUriInvalid)?;
                let guest_body = body;

                // The guest may ask for shorter timeouts, never a longer one.
                let timeout = options
                    .and_then(|o| o.first_byte_timeout)
                    .map_or(policy.timeout, |t| t.min(policy.timeout));
                // Held until the answer's body is dropped: the connection is busy until then.
                // Keyed by scheme, lowercased host and the port in effect, so spellings of one
                // origin share its bound.
                let key = format!("{scheme}://{}:{port}", host.to_ascii_lowercase());
                let Some(slot) = policy.origins.enter(&key, started + timeout).await else {
                    record(
                        None,
                        Some(format!(
                            "timed out after {}s waiting for one of the {} connections to {origin}",
                            timeout.as_secs_f64(),
                            policy.origins.per_origin
                        )),
                    );
                    // As for a refusal: the guest may still be writing the body.
                    drain(guest_body, policy.timeout).await;
                    return Err(Error::ConnectionReadTimeout);
                };
                // The wait for a connection counts against the request's timeout.
                let timeout = timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1));
                let body = reqwest::Body::wrap_stream(streamed(guest_body, buffered));
                let mut outgoing = policy
                    .client
                    .request(parts.method, url)
                    .timeout(timeout)
                    .body(body);
                for (name, value) in &parts.headers {
                    if name != http::header::HOST {
                        outgoing = outgoing.header(name, value);
                    }
                }
                // The next hop joins the call's trace, unless the guest set a context itself.
                if !parts.headers.contains_key(crate::trace::TRACEPARENT)
                    && !parts.headers.contains_key(crate::trace::TRACESTATE)
                {
                    for (name, value) in propagate {
                        outgoing = outgoing.header(name, value);
                    }
                }
                let response = match outgoing.send().await {
                    Ok(response) => response,
                    Err(e) => {
                        let (code, why) = match net::refusal(&e) {
                            Some(refused) => {
                                (Error::DestinationIpProhibited, format!("denied: {refused}"))
                            }
                            None if let Some(refused) = body_refusal(&e) => {
                                (Error::HttpRequestBodySize(None), refused)
                            }
                            None if e.is_timeout() => (
                                Error::ConnectionReadTimeout,
                                format!("timed out after {}s", timeout.as_secs_f64()),
                            ),
                            None if e.is_connect() => {
                                (Error::ConnectionRefused, "could not connect".to_owned())
                            }
                            None => (Error::HttpProtocolError, e.without_url().to_string()),
                        };
                        record(None, Some(why));
                        return Err(code);
                    }
                };
                let status = response.status();
                record(Some(status.as_u16()), None);

                let mut answer = http::Response::builder().status(status);
                for (name, value) in response.headers() {
                    answer = answer.header(name, value);
                }
                let limit = policy.max_response_bytes;
                let mut seen = 0usize;
                let frames = response.bytes_stream().map(move |chunk| {
                    let _in_flight = &slot;
                    match chunk {
                        Ok(bytes) => {
                            seen += bytes.len();
                            if seen > limit {
                                Err(Error::HttpResponseBodySize(Some(limit as u64)))
                            } else {
                                Ok(Frame::data(bytes))
                            }
                        }
                        Err(e) if e.is_timeout() => Err(Error::ConnectionReadTimeout),
                        Err(_) => Err(Error::HttpResponseIncomplete),
                    }
                });
                let body: WasiBody = StreamBody::new(frames).boxed_unsync();
                let answer = answer
                    .body(body)
                    .map_err(|e| Error::InternalError(Some(e.to_string())))?;
                Ok((
                    answer,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ))
            }
            .instrument(span),
        )
    }
}

/// Bytes of request bodies the host holds for a guest: counted per call (bounded by
/// [`MAX_CALL_BUFFERED_BYTES`]) and host-wide (`outbound_buffered_bytes` in the stats).
#[derive(Clone)]
pub(crate) struct Buffered {
    call: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

impl Buffered {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        Self {
            call: Arc::default(),
            stats,
        }
    }

    /// Counts `n` bytes as held, if the call's bound allows.
    fn take(&self, n: usize) -> bool {
        let taken = self
            .call
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n)
                    .filter(|after| *after <= MAX_CALL_BUFFERED_BYTES)
            })
            .is_ok();
        if taken {
            self.stats.outbound_buffered(n as i64);
        }
        taken
    }

    fn release(&self, n: usize) {
        self.call.fetch_sub(n, Ordering::AcqRel);
        self.stats.outbound_buffered(-(n as i64));
    }
}

/// A chunk of a request body on its way to the socket: released from the count when the
/// transport drops it (written, or the request failed).
struct Held {
    bytes: Bytes,
    buffered: Buffered,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.buffered.release(self.bytes.len());
    }
}

/// Why a request body could not be streamed.
#[derive(Debug)]
struct BodyRefused(String);

impl std::fmt::Display for BodyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyRefused {}

/// The guest's request body as it is written, chunk by chunk, counted while the host holds
/// each chunk; an error ends it when the body passes [`MAX_REQUEST_BYTES`] or the call's
/// bound, or breaks off.
fn streamed(
    body: WasiBody,
    buffered: Buffered,
) -> impl futures::Stream<Item = Result<Bytes, BodyRefused>> + Send {
    futures::stream::try_unfold((body, 0usize), move |(mut body, sent)| {
        let buffered = buffered.clone();
        async move {
            loop {
                let Some(frame) = body.frame().await else {
                    return Ok(None);
                };
                let frame = frame.map_err(|e| BodyRefused(format!("the body broke off: {e:?}")))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let sent = sent + data.len();
                if sent > MAX_REQUEST_BYTES {
                    return Err(BodyRefused(format!(
                        "the request body is larger than {} MiB",
                        MAX_REQUEST_BYTES >> 20
                    )));
                }
                if !buffered.take(data.len()) {
                    return Err(BodyRefused(format!(
                        "this call's outgoing requests hold {} MiB of body already",
                        MAX_CALL_BUFFERED_BYTES >> 20
                    )));
                }
                let held = Bytes::from_owner(Held {
                    bytes: data,
                    buffered: buffered.clone(),
                });
                return Ok(Some((held, (body, sent))));
            }
        }
    })
}

/// What stopped the body, when it was this host's bound (found in the error's sources).
fn body_refusal(error: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<BodyRefused>() {
            return Some(refused.0.clone());
        }
        source = cause.source();
    }
    None
}

/// Reads a refused request's body to its end and throws it away, within `within`.
async fn drain(mut body: WasiBody, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}
