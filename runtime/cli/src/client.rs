//! A small client of the gust HTTP API for the CLI. Server errors come back as one line,
//! `<kind>: <message>`, carrying the exit code their status means.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::exit::{Code, Failure};
use crate::target::{Source, Target};

/// How long a command waits for the server when `--timeout` does not say: the API answers
/// in milliseconds, and a server that has not answered in a minute (accepted the connection
/// and hung, or went away behind a NAT that drops packets silently) is not going to.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest the server may work on an upload or a deploy: compiling a component, by
/// default within 300 s (`gust serve --compile-timeout`), with the transfer of up to 100 MiB.
pub(crate) const COMPILE_WAIT: Duration = Duration::from_secs(15 * 60);

/// The longest a sync call may run (`sync_timeout_s` is at most an hour), and its answer.
pub(crate) const SYNC_CALL_WAIT: Duration = Duration::from_secs(3600 + 60);

/// Whether `e` is the server's error of `kind` (`not_found`, `precondition_failed`, …): its
/// line starts with the kind, as [`Client::send`] writes it.
pub(crate) fn is_kind(e: &anyhow::Error, kind: &str) -> bool {
    e.to_string()
        .strip_prefix(kind)
        .is_some_and(|rest| rest.starts_with(':'))
}

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    source: Source,
    http: reqwest::Client,
    timeout: Duration,
}

impl Client {
    pub(crate) fn new(target: Target, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            base: target.url.trim_end_matches('/').to_owned(),
            token: target.token,
            source: target.source,
            http,
            timeout,
        }
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    /// A request whose whole answer comes within the timeout.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.open(method, path).timeout(self.timeout)
    }

    /// A request the server may work on for up to `server_bound` (a compile, a sync call):
    /// it is given that long, or the timeout if that is longer.
    pub(crate) fn working(
        &self,
        method: Method,
        path: &str,
        server_bound: Duration,
    ) -> RequestBuilder {
        self.open(method, path)
            .timeout(self.timeout.max(server_bound))
    }

    /// A request for a stream of events, which has no end to wait for: its head comes within
    /// the timeout ([`Client::send_stream`]), then each next part of it ([`Client::next`]).
    pub(crate) fn stream(&self, method: Method, path: &str) -> RequestBuilder {
        self.open(method, path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
    }

    /// The next part of a streamed answer, within the timeout; `None` at its end.
    pub(crate) async fn next<S>(&self, body: &mut S) -> anyhow::Result<Option<bytes::Bytes>>
    where
        S: futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    {
        use futures::StreamExt as _;
        match tokio::time::timeout(self.timeout, body.next()).await {
            Ok(Some(chunk)) => Ok(Some(chunk.map_err(|e| self.failed(&e))?)),
            Ok(None) => Ok(None),
            Err(_) => Err(self.silent().into()),
        }
    }

    fn open(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The error of a server that said nothing for the whole timeout.
    fn silent(&self) -> Failure {
        Failure::new(
            Code::Unavailable,
            format!(
                "{} did not answer within {} s (--timeout or GUST_TIMEOUT raises it; uploads, deploys and sync runs wait longer)",
                self.base,
                self.timeout.as_secs()
            ),
        )
    }

    fn failed(&self, e: &reqwest::Error) -> Failure {
        // A connection not made within its own 10 s is "cannot reach", whatever --timeout.
        if e.is_timeout() && !e.is_connect() {
            return self.silent();
        }
        let message = if e.is_connect() {
            format!(
                "cannot reach {} (is `gust serve` running there?)",
                self.base
            )
        } else {
            format!("request to {} failed: {e}", self.base)
        };
        Failure::new(Code::Unavailable, message)
    }

    /// Sends a request of [`Client::stream`]: its head within the timeout.
    pub(crate) async fn send_stream(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Ok(sent) => sent,
            Err(_) => Err(self.silent().into()),
        }
    }

    /// Sends, and turns a non-2xx answer into an error carrying the server's message.
    pub(crate) async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.map_err(|e| self.failed(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.server_error(response).await.into())
    }

    pub(crate) async fn json(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response.json().await.context("reading the server's answer")
    }
}

impl Client {
    async fn server_error(&self, response: Response) -> Failure {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let Ok(body) = serde_json::from_str::<Value>(&text) else {
            let code = Failure::code_for_status(status.as_u16(), "");
            return Failure::new(code, format!("the server answered {status}"));
        };
        let error = &body["error"];
        let kind = error["kind"].as_str().unwrap_or("error");
        let message = error["message"].as_str().unwrap_or("");
        let mut line = format!("{kind}: {message}");
        if let Some(diagnostics) = error["diagnostics"].as_array() {
            for d in diagnostics {
                let item = d["item"].as_str().filter(|i| !i.is_empty());
                line.push_str(&format!(
                    "\n  [{}]{} {}",
                    d["code"].as_str().unwrap_or(""),
                    item.map(|i| format!(" {i}:")).unwrap_or_default(),
                    d["message"].as_str().unwrap_or("")
                ));
            }
        }
        if kind == "unauthorized" {
            let hint = if self.token.is_none() {
                format!(
                    " (no token is stored for {}: `gust login --url {}` stores one)",
                    self.base, self.base
                )
            } else {
                format!(
                    " (the token came from {}; `gust whoami` shows the lookup)",
                    self.source.describe()
                )
            };
            line.push_str(&hint);
        }
        Failure::new(Failure::code_for_status(status.as_u16(), kind), line)
    }
}
