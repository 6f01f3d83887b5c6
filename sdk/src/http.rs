//! Outgoing HTTP for agents: calling models and tools.
//!
//! Requests go through the host (`wasi:http/outgoing-handler`), which allows only the hosts
//! listed in the deployment's `allowed_hosts`; anything else fails with
//! [`HttpError::Denied`]. Calls block until the answer (or the host's timeout).
//!
//! The deployment's `outbound_timeout_s` bounds each request whole, reading the answer
//! included. Within it a request may set shorter bounds on its parts:
//! [`Request::connect_timeout`], [`Request::first_byte_timeout`] and
//! [`Request::between_bytes_timeout`] (a streamed answer that stalls fails early, one that
//! keeps coming is read to its end).
//!
//! ```no_run
//! use gust_sdk::http::Request;
//!
//! # fn demo() -> Result<(), gust_sdk::http::HttpError> {
//! let answer = Request::post("https://api.example.com/v1/chat/completions")
//!     .header("authorization", "Bearer …")
//!     .json(&serde_json::json!({"model": "m", "messages": []}))
//!     .send()?;
//! let value: serde_json::Value = answer.json()?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use crate::__private::bindings::wasi::http::outgoing_handler;
use crate::__private::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};
use crate::__private::bindings::wasi::io::streams::StreamError;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The host refused it: the destination is not in the deployment's `allowed_hosts`, or
    /// it is a private address.
    Denied(String),
    /// The URL, a header or the body could not be used.
    InvalidRequest(String),
    /// The connection, the timeout or the upstream failed.
    Failed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(m) => write!(f, "denied: {m}"),
            Self::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            Self::Failed(m) => write!(f, "request failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of this name (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// [`HttpError::Failed`] when it is not that JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Failed(format!("the answer is not the JSON expected: {e}")))
    }
}

/// A request to build and send.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeouts: Timeouts,
}

/// The bounds a request asked for; `None` leaves the part to the host's timeout.
#[derive(Debug, Clone, Copy, Default)]
struct Timeouts {
    connect: Option<Duration>,
    first_byte: Option<Duration>,
    between_bytes: Option<Duration>,
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeouts: Timeouts::default(),
        }
    }

    /// A `GET`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A `POST`.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a JSON body (and `content-type: application/json`).
    #[must_use]
    pub fn json<T: serde::Serialize>(mut self, value: &T) -> Self {
        self.body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json")
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Bounds getting a connection to the server, counted from the start of the request:
    /// resolving its name, TCP and TLS, and waiting for a connection another request is
    /// opening to it (not a wait for one of the host's places for connections to it, which
    /// counts against the first-byte timeout and the deployment's, not this one). Past it
    /// the request fails with `ConnectionTimeout` (unless the deployment's
    /// `outbound_timeout_s` ends first: `ConnectionReadTimeout`).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = Some(timeout);
        self
    }

    /// Bounds the wait for the answer's status and headers, counted from the start of the
    /// request (a connect included). Past it the request fails with
    /// `ConnectionReadTimeout`. It does not bound the body: see
    /// [`Request::between_bytes_timeout`].
    #[must_use]
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.first_byte = Some(timeout);
        self
    }

    /// Bounds each wait for more of the answer's body, from its headers on: an answer
    /// streamed for minutes is read to its end as long as no gap is longer. Past it reading
    /// fails with `ConnectionReadTimeout`.
    #[must_use]
    pub fn between_bytes_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.between_bytes = Some(timeout);
        self
    }

    /// The `wasi:http` options for the bounds set, if any.
    fn options(&self) -> Result<Option<RequestOptions>, HttpError> {
        let Timeouts {
            connect,
            first_byte,
            between_bytes,
        } = self.timeouts;
        if connect.is_none() && first_byte.is_none() && between_bytes.is_none() {
            return Ok(None);
        }
        // Nanoseconds in a u64: up to 584 years.
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let refused = |what: &str| {
            HttpError::InvalidRequest(format!("the host does not take a {what} timeout"))
        };
        let options = RequestOptions::new();
        options
            .set_connect_timeout(connect.map(nanos))
            .map_err(|()| refused("connect"))?;
        options
            .set_first_byte_timeout(first_byte.map(nanos))
            .map_err(|()| refused("first-byte"))?;
        options
            .set_between_bytes_timeout(between_bytes.map(nanos))
            .map_err(|()| refused("between-bytes"))?;
        Ok(Some(options))
    }

    /// Sends the request and reads the whole answer.
    ///
    /// # Errors
    /// [`HttpError::Denied`] when the host refuses the destination; the others when the
    /// request cannot be made or answered.
    pub fn send(self) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let entries: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        let fields = Fields::from_list(&entries)
            .map_err(|e| HttpError::InvalidRequest(format!("a header is not allowed: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_owned()),
        };
        let invalid = |what: &str| HttpError::InvalidRequest(format!("the {what} is not valid"));
        request
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("host"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|()| invalid("path"))?;
        let body = request.body().map_err(|()| invalid("body"))?;
        let options = self.options()?;

        // Sent first, written after: the host streams the body as it is written.
        let pending = outgoing_handler::handle(request, options).map_err(error)?;
        // When the body cannot be sent (the host refused the request, or the server answered
        // without reading it all), the answer or the reason is still in `pending`.
        let mut body_error = None;
        {
            let stream = body.write().map_err(|()| invalid("body"))?;
            for chunk in self.body.chunks(4096) {
                if let Err(e) = stream.blocking_write_and_flush(chunk) {
                    body_error = Some(stream_error(e));
                    break;
                }
            }
        }
        if body_error.is_none()
            && let Err(code) = OutgoingBody::finish(body, None)
        {
            body_error = Some(format!("{code:?}"));
        }

        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(error(code)),
            Some(Err(())) | None => {
                return Err(HttpError::Failed(match body_error {
                    Some(e) => format!("sending the body: {e}"),
                    None => "no answer".into(),
                }));
            }
        };
        read(response)
    }
}

fn read(response: IncomingResponse) -> Result<Response, HttpError> {
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Failed("the answer has no body".into()))?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::Failed("the answer's body cannot be read".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => {
                    return Err(HttpError::Failed(format!(
                        "reading the answer: {}",
                        stream_error(e)
                    )));
                }
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn split_url(url: &str) -> Result<(Scheme, &str, String), HttpError> {
    let bad = || HttpError::InvalidRequest(format!("`{url}` is not an http or https URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok((scheme, authority, path))
}

fn error(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => {
            HttpError::Denied("the host does not allow this destination".into())
        }
        ErrorCode::DestinationIpProhibited => {
            HttpError::Denied("the destination is a private address".into())
        }
        other => HttpError::Failed(format!("{other:?}")),
    }
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "closed".into(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let (scheme, authority, path) = split_url("https://api.example.com:8443/v1/x?y=1").unwrap();
        assert!(matches!(scheme, Scheme::Https));
        assert_eq!(
            (authority, path.as_str()),
            ("api.example.com:8443", "/v1/x?y=1")
        );
        assert_eq!(split_url("http://h").unwrap().2, "/");
        assert_eq!(split_url("http://h?q=1").unwrap().2, "/?q=1");
        assert!(split_url("ftp://h/x").is_err());
        assert!(split_url("no-scheme").is_err());
        assert!(split_url("http:///path").is_err());
    }
}
