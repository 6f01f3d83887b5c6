//! `wasi:http/outgoing-handler`: the guest's HTTP requests, for calling models and tools.
//!
//! A request goes out only if its scheme, host and port match the deployment's
//! `allowed_hosts`, and its destination passes the address policy of `net` (no loopback or
//! private addresses unless the host allows them; names resolved once and checked). Each
//! has a timeout and a bounded answer, and each — denied ones too — goes to the call's sink
//! (method, origin, status, duration; never headers or bodies): kept on the run for queued
//! runs, written to the host log for sync calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Limited, StreamBody};
use hyper::body::Frame;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use gust_model::clock;
use gust_model::{HostPattern, OutboundRequest};

use super::CallSink;
use crate::net;

/// Largest request body a guest may send.
const MAX_REQUEST_BYTES: usize = 10 << 20;

/// What a deployment allows, and the host-wide outbound settings.
#[derive(Clone)]
pub struct OutboundPolicy {
    pub(crate) allowed: Arc<[HostPattern]>,
    pub(crate) timeout: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) allow_private_network: bool,
    pub(crate) client: reqwest::Client,
}

/// The hooks of one call.
pub(crate) struct Outbound {
    pub(crate) policy: OutboundPolicy,
    pub(crate) sink: Arc<dyn CallSink>,
}

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, Error>> + Send> {
        let policy = self.policy.clone();
        let sink = Arc::clone(&self.sink);
        Box::new(async move {
            let started = Instant::now();
            let method = request.method().to_string();
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
            let host = uri.host().unwrap_or("").to_owned();
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            let origin = format!("{scheme}://{}", uri.authority().map_or("", |a| a.as_str()));
            let record = |status: Option<u16>, error: Option<String>| {
                let entry = OutboundRequest {
                    ts: clock::now_ms(),
                    method: method.clone(),
                    host: origin.clone(),
                    status,
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    error,
                };
                sink.outbound(entry);
            };

            // The body is taken whole before anything is decided: a guest writes it after
            // `handle` returns, and an answer that closed the body under it (a refusal) would
            // make those writes fail instead of the request, which some guests (the
            // JavaScript engine) do not survive.
            let (parts, body) = request.into_parts();
            let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    record(
                        None,
                        Some("the request body is too large or broke off".into()),
                    );
                    return Err(Error::HttpRequestBodySize(None));
                }
            };

            if !policy
                .allowed
                .iter()
                .any(|p| p.matches(&scheme, &host, port))
            {
                record(
                    None,
                    Some(format!(
                        "denied: {origin} is not in this deployment's allowed_hosts"
                    )),
                );
                return Err(Error::HttpRequestDenied);
            }
            let url = match reqwest::Url::parse(&uri.to_string()) {
                Ok(url) => url,
                Err(e) => {
                    record(None, Some(format!("invalid URL: {e}")));
                    return Err(Error::HttpRequestUriInvalid);
                }
            };
            if let Err(refused) = net::check_url(&url, policy.allow_private_network) {
                record(None, Some(format!("denied: {refused}")));
                return Err(Error::DestinationIpProhibited);
            }

            // The guest may ask for shorter timeouts, never a longer one.
            let timeout = options
                .and_then(|o| o.first_byte_timeout)
                .map_or(policy.timeout, |t| t.min(policy.timeout));
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
            let response = match outgoing.send().await {
                Ok(response) => response,
                Err(e) => {
                    let (code, why) = match net::refusal(&e) {
                        Some(refused) => {
                            (Error::DestinationIpProhibited, format!("denied: {refused}"))
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
            let frames = response.bytes_stream().map(move |chunk| match chunk {
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
            });
            let body: WasiBody = StreamBody::new(frames).boxed_unsync();
            let answer = answer
                .body(body)
                .map_err(|e| Error::InternalError(Some(e.to_string())))?;
            Ok((
                answer,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
