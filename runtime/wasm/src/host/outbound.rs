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
use futures::{StreamExt as _, TryStreamExt as _};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use gust_model::clock;
use gust_model::{HostPattern, OutboundRequest};

use super::CallSink;
use super::client;
use super::{BoxError, GuestBody};
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
    pub(crate) client: client::GuestClient,
    /// The client's bound on connections per origin, asked why a request timed out.
    pub(crate) origins: Arc<client::OriginSlots>,
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
                let checked = if !policy
                    .allowed
                    .iter()
                    .any(|p| p.matches(&scheme, &host, port))
                {
                    Err((
                        format!("denied: {origin} is not in this deployment's allowed_hosts"),
                        Error::HttpRequestDenied,
                    ))
                } else {
                    match reqwest::Url::parse(&uri.to_string()) {
                        Err(e) => Err((format!("invalid URL: {e}"), Error::HttpRequestUriInvalid)),
                        Ok(url) => match net::check_url(&url, policy.allow_private_network) {
                            Err(refused) => {
                                Err((format!("denied: {refused}"), Error::DestinationIpProhibited))
                            }
                            Ok(()) => Ok(url),
                        },
                    }
                };
                let url = match checked {
                    Ok(url) => url,
                    Err((why, code)) => {
                        record(None, Some(why));
                        // The guest writes its body after `handle` returns; a body closed under
                        // it would make those writes fail, which some guests (the JavaScript
                        // engine) do not survive. So it is read and thrown away, for a bounded
                        // time.
                        drain(body, policy.timeout).await;
                        return Err(code);
                    }
                };
                let guest_body = body;

                // The deployment's `outbound_timeout_s` bounds the whole request, reading the
                // answer included. Within it the guest may bound parts, as its request
                // options say (`wasi:http` names them): the answer's head (`first_byte`,
                // counted from the start, so the wait for a connection to the origin counts:
                // the client's connector holds one of `--outbound-connections-per-host`
                // places for each, see `client`; wasmtime's own client counts it from the
                // connection instead), a connect (`connect`) and each wait for more of the
                // body (`between_bytes`).
                let options = options.unwrap_or_default();
                let whole = tokio::time::Instant::from_std(started + policy.timeout);
                let timeout = options
                    .first_byte_timeout
                    .map_or(policy.timeout, |t| t.min(policy.timeout));
                let deadline = tokio::time::Instant::from_std(started + timeout);
                let timed_out = || format!("timed out after {}s", timeout.as_secs_f64());
                // Why the body was refused, if it was: over HTTP/2 hyper sends the body from
                // a task of its own and the request fails with a reset stream, the refusal
                // only logged.
                let refusal = Arc::new(std::sync::OnceLock::new());
                let body: GuestBody = StreamBody::new(
                    streamed(
                        Drained {
                            body: Some(guest_body),
                            within: policy.timeout,
                        },
                        buffered,
                        Arc::clone(&refusal),
                    )
                    .map(|chunk| chunk.map(Frame::data).map_err(BoxError::from)),
                )
                .boxed_unsync();
                let outgoing = match outgoing(parts, &url, propagate, body) {
                    Ok(outgoing) => outgoing,
                    Err(why) => {
                        record(None, Some(why));
                        return Err(Error::HttpRequestUriInvalid);
                    }
                };
                let sent = policy
                    .client
                    .send(outgoing, deadline, options.connect_timeout)
                    .await;
                let out_of_time = || {
                    if policy.origins.full(&client::key(&scheme, &host, port)) {
                        format!(
                            "{} waiting for one of the {} connections to {origin}",
                            timed_out(),
                            policy.origins.per_origin()
                        )
                    } else {
                        timed_out()
                    }
                };
                let (response, in_flight) = match sent {
                    Ok(Ok(sent)) => sent,
                    Err(_) => {
                        record(None, Some(out_of_time()));
                        return Err(Error::ConnectionReadTimeout);
                    }
                    Ok(Err(client::SendError::ConnectTimedOut(cut))) => {
                        // The connect it waited for, opened by another request, was not done
                        // within this request's own `connect_timeout`.
                        record(None, Some(cut.to_string()));
                        return Err(Error::ConnectionTimeout);
                    }
                    Ok(Err(client::SendError::Stranded)) => {
                        // Not sent, and not sent again: one whose body the client could not
                        // keep (too large, trailers, an error), or sent again as often as the
                        // client does.
                        record(
                            None,
                            Some("the connection closed before the request went out".to_owned()),
                        );
                        return Err(Error::ConnectionTerminated);
                    }
                    Ok(Err(client::SendError::Failed(failure))) => {
                        // The connect it waited for, opened by another request, failed.
                        let (code, why) = connect_failed(failure.fault, &failure.why);
                        record(None, Some(why));
                        return Err(code);
                    }
                    Ok(Err(client::SendError::Client(e))) => {
                        let fault = net::connect_fault(&e);
                        // The wait for a connection place ends with the deadline the request's own
                        // timeout has too, and is polled first: it is this timeout, seen first.
                        let (code, why) = if net::cause::<client::PlaceTimedOut>(&e).is_some() {
                            (Error::ConnectionReadTimeout, out_of_time())
                        } else if let Some(cut) = net::cause::<client::ConnectTimedOut>(&e) {
                            match cut.asked {
                                // The guest's own bound on the connect.
                                Some(_) => (Error::ConnectionTimeout, cut.to_string()),
                                None => (Error::ConnectionReadTimeout, timed_out()),
                            }
                        } else if let Some(BodyRefused(refused)) =
                            net::cause::<BodyRefused>(&e).or_else(|| refusal.get().cloned())
                        {
                            (Error::HttpRequestBodySize(None), refused)
                        } else if e.is_connect() || matches!(fault, net::ConnectFault::Refused(_)) {
                            connect_failed(fault, &net::described(&e))
                        } else {
                            (Error::HttpProtocolError, net::described(&e))
                        };
                        record(None, Some(why));
                        return Err(code);
                    }
                };
                let status = response.status();
                record(Some(status.as_u16()), None);

                let (head, incoming) = response.into_parts();
                let mut answer = http::Response::builder().status(status);
                for (name, value) in &head.headers {
                    answer = answer.header(name, value);
                }
                let frames = answer_frames(
                    incoming,
                    in_flight,
                    Within {
                        whole,
                        between: options.between_bytes_timeout,
                    },
                    policy.max_response_bytes,
                );
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

/// The request to send: the guest's method, headers and body to `url`, without the URL's
/// userinfo, which goes as basic credentials (as browsers and curl send it) unless the guest
/// set `Authorization` itself; the client sets `Host`. The call's trace context goes along
/// unless the guest set one, and `Accept: */*` and gust's `User-Agent` unless the guest set
/// them (as reqwest, which sent guests' requests before, did).
fn outgoing(
    parts: http::request::Parts,
    url: &reqwest::Url,
    propagate: Vec<(&'static str, String)>,
    body: GuestBody,
) -> Result<http::Request<GuestBody>, String> {
    let mut bare = url.clone();
    let credentials = (!url.username().is_empty() || url.password().is_some()).then(|| {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = decode(url.username());
        let password = url.password().map(decode).unwrap_or_default();
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{password}")
            )
        )
    });
    let uri: http::Uri = bare
        .as_str()
        .parse()
        .map_err(|e| format!("invalid URL: {e}"))?;
    let mut request = http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(body)
        .map_err(|e| format!("invalid request: {e}"))?;
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if name != http::header::HOST {
            headers.append(name, value.clone());
        }
    }
    if let Some(credentials) = credentials
        && !headers.contains_key(http::header::AUTHORIZATION)
        && let Ok(mut value) = http::HeaderValue::from_str(&credentials)
    {
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if !headers.contains_key(http::header::ACCEPT) {
        headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
    }
    if !headers.contains_key(http::header::USER_AGENT) {
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("gust/", env!("CARGO_PKG_VERSION"))),
        );
    }
    // The next hop joins the call's trace, unless the guest set a context itself.
    if !parts.headers.contains_key(crate::trace::TRACEPARENT)
        && !parts.headers.contains_key(crate::trace::TRACESTATE)
    {
        for (name, value) in propagate {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    Ok(request)
}

/// When an answer's body must have come: all of it by `whole` (the request's timeout covers
/// reading the answer), and each frame within `between` of the guest asking for it, when
/// the guest set a `between_bytes_timeout`. The wait counts from the guest's read, not from
/// the frame before: time the guest spends on a frame is its own, not the server's.
#[derive(Clone, Copy)]
struct Within {
    whole: tokio::time::Instant,
    between: Option<Duration>,
}

impl Within {
    /// When the next frame must have come, waiting from now.
    fn next(&self) -> tokio::time::Instant {
        match self.between {
            Some(between) => tokio::time::Instant::now()
                .checked_add(between)
                .map_or(self.whole, |by| by.min(self.whole)),
            None => self.whole,
        }
    }
}

/// The answer's body for the guest: its data frames, cut at `limit` bytes, and ended with
/// an error when a frame is late (`within`) or the connection breaks off.
fn answer_frames(
    incoming: hyper::body::Incoming,
    in_flight: client::InFlight,
    within: Within,
    limit: usize,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Error>> + Send {
    // The request counts in its lane until the answer ends or is dropped, with the state.
    futures::stream::unfold(
        Some((incoming, 0usize, in_flight)),
        move |state| async move {
            let (mut body, mut seen, in_flight) = state?;
            loop {
                let frame = match tokio::time::timeout_at(within.next(), body.frame()).await {
                    Err(_) => return Some((Err(Error::ConnectionReadTimeout), None)),
                    Ok(None) => return None,
                    Ok(Some(Err(_))) => return Some((Err(Error::HttpResponseIncomplete), None)),
                    Ok(Some(Ok(frame))) => frame,
                };
                // Trailers are not passed on.
                let Ok(bytes) = frame.into_data() else {
                    continue;
                };
                seen += bytes.len();
                if seen > limit {
                    return Some((Err(Error::HttpResponseBodySize(Some(limit as u64))), None));
                }
                return Some((Ok(Frame::data(bytes)), Some((body, seen, in_flight))));
            }
        },
    )
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

/// A chunk of a request body on its way to the socket: released from the count when its
/// last copy is dropped, by the transport (written, or the request failed) and by the
/// client, which keeps a copy until the answer's head comes in case the request must be
/// sent again (`replay`).
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
#[derive(Debug, Clone)]
struct BodyRefused(String);

impl std::fmt::Display for BodyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyRefused {}

/// The guest's request body as it is written, chunk by chunk, counted while the host holds
/// each chunk; an error ends it when the body passes [`MAX_REQUEST_BYTES`] or the call's
/// bound, or breaks off, and is also kept in `refusal`, for whoever does not get to see it.
fn streamed(
    body: Drained,
    buffered: Buffered,
    refusal: Arc<std::sync::OnceLock<BodyRefused>>,
) -> impl futures::Stream<Item = Result<Bytes, BodyRefused>> + Send {
    let chunks = futures::stream::try_unfold((body, 0usize), move |(mut body, sent)| {
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
    });
    chunks.inspect_err(move |refused| {
        let _ = refusal.set(refused.clone());
    })
}

/// The guest's request body as the client reads it. If the client lets it go before its end
/// (the request timed out waiting for a connection, or could not connect), the rest is read
/// and thrown away in the background, within `within`, as for a refusal: the guest may still
/// be writing it, and a body closed under it makes those writes fail, which some guests (the
/// JavaScript engine) do not survive.
struct Drained {
    body: Option<WasiBody>,
    within: Duration,
}

impl hyper::body::Body for Drained {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(body) = self.body.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(body).poll_frame(cx);
        if let std::task::Poll::Ready(None | Some(Err(_))) = polled {
            self.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(hyper::body::Body::is_end_stream)
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        if let Some(body) = self.body.take()
            && !hyper::body::Body::is_end_stream(&body)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(drain(body, self.within));
        }
    }
}

/// Reads a refused request's body to its end and throws it away, within `within`.
async fn drain(mut body: WasiBody, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// The guest's error code for a connection that could not be opened, and the record's
/// words for it (`why`: the error with its causes).
fn connect_failed(fault: net::ConnectFault, why: &str) -> (Error, String) {
    let code = match fault {
        net::ConnectFault::Refused(refused) => {
            return (Error::DestinationIpProhibited, format!("denied: {refused}"));
        }
        net::ConnectFault::Dns => Error::DnsError {
            rcode: Some("address not available".into()),
            info_code: None,
        },
        net::ConnectFault::TlsCertificate => Error::TlsCertificateError,
        net::ConnectFault::Tls => Error::TlsProtocolError,
        net::ConnectFault::Other => Error::ConnectionRefused,
    };
    (code, format!("could not connect: {why}"))
}
