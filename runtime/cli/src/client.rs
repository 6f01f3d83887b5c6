//! A small client of the gust HTTP API for the CLI. Server errors come back as one line,
//! `<kind>: <message>`, carrying the exit code their status means.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::exit::{Code, Failure};
use crate::target::{Source, Target};

/// How long a command waits for the server to say something when `--timeout` does not say:
/// the API answers in milliseconds, and a server that has said nothing for a minute
/// (accepted the connection and hung, or went away behind a NAT that drops packets
/// silently) is not going to. The bound is on silence, not on the whole answer: a large
/// run output over a slow link takes as long as it takes while its bytes keep coming.
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

/// The bound a [`Client::working`] request was given on its whole answer, kept with its
/// response so that a body cut by it is reported as that, not as the timeout's silence.
#[derive(Clone, Copy)]
struct Bound(Duration);

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    source: Source,
    /// Gives up when the server says nothing for the timeout: until the answer's head
    /// (sending the request included), then between two parts of its body.
    http: reqwest::Client,
    /// For requests the server works on in silence ([`Client::working`]); reqwest's read
    /// timeout is the client's, not a request's, hence a second client.
    patient: reqwest::Client,
    timeout: Duration,
}

impl Client {
    pub(crate) fn new(target: Target, timeout: Duration) -> Self {
        // A connection not made within its own 10 s is "cannot reach", whatever --timeout.
        let builder = || reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        Self {
            base: target.url.trim_end_matches('/').to_owned(),
            token: target.token,
            source: target.source,
            http: builder().read_timeout(timeout).build().unwrap_or_default(),
            patient: builder().build().unwrap_or_default(),
            timeout,
        }
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    /// A request whose server may stay silent for at most the timeout at a time.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.open(&self.http, method, path)
    }

    /// A request the server may work on in silence for up to `server_bound` (a compile, a
    /// sync call): its whole answer is given that long, or the timeout if that is longer.
    pub(crate) fn working(
        &self,
        method: Method,
        path: &str,
        server_bound: Duration,
    ) -> RequestBuilder {
        self.open(&self.patient, method, path)
            .timeout(self.timeout.max(server_bound))
    }

    /// A request for a stream of events, which has no end to wait for: its head, then each
    /// next part of it (the server's keep-alives come every 15 s), within the timeout.
    pub(crate) fn stream(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
    }

    /// The next part of a streamed answer; `None` at its end.
    pub(crate) async fn next<S>(&self, body: &mut S) -> anyhow::Result<Option<bytes::Bytes>>
    where
        S: futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    {
        use futures::StreamExt as _;
        match body.next().await {
            Some(chunk) => Ok(Some(chunk.map_err(|e| self.failed(&e, None))?)),
            None => Ok(None),
        }
    }

    fn open(&self, http: &reqwest::Client, method: Method, path: &str) -> RequestBuilder {
        let request = http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The error of a server that said nothing for the timeout, or, for a request given a
    /// bound of its own ([`Client::working`]), did not finish its answer within it.
    fn silent(&self, bound: Option<Duration>) -> Failure {
        let message = match bound {
            Some(bound) => format!(
                "{} did not finish answering within {} s, the longest this command waits for \
                 it (--timeout or GUST_TIMEOUT raises it)",
                self.base,
                bound.as_secs_f64()
            ),
            None => format!(
                "{} said nothing for {} s (--timeout or GUST_TIMEOUT raises it; uploads, deploys and sync runs wait longer)",
                self.base,
                self.timeout.as_secs_f64()
            ),
        };
        Failure::new(Code::Unavailable, message)
    }

    /// `bound`: the request's own bound on its whole answer, if it has one.
    fn failed(&self, e: &reqwest::Error, bound: Option<Duration>) -> Failure {
        if e.is_timeout() && !e.is_connect() {
            return self.silent(bound);
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

    /// Sends, and turns a non-2xx answer into an error carrying the server's message.
    pub(crate) async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let (http, request) = request.build_split();
        let request = request.map_err(|e| self.failed(&e, None))?;
        let bound = request.timeout().copied();
        let mut response = http
            .execute(request)
            .await
            .map_err(|e| self.failed(&e, bound))?;
        if response.status().is_success() {
            // Kept for the body's read, which the same bound cuts.
            if let Some(bound) = bound {
                response.extensions_mut().insert(Bound(bound));
            }
            return Ok(response);
        }
        Err(self.server_error(response).await.into())
    }

    pub(crate) async fn json(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        self.read_json(response).await
    }

    /// A successful answer's body as JSON.
    pub(crate) async fn read_json(&self, response: Response) -> anyhow::Result<Value> {
        let body = self.body(response).await?;
        serde_json::from_slice(&body).context("reading the server's answer")
    }

    /// An answer's body. A server that stops sending partway is unavailable (7), as one
    /// that never answered: the command did not get what it asked for.
    pub(crate) async fn body(&self, response: Response) -> anyhow::Result<bytes::Bytes> {
        let bound = response.extensions().get::<Bound>().map(|b| b.0);
        Ok(response.bytes().await.map_err(|e| self.failed(&e, bound))?)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers.
    async fn silent_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        url
    }

    /// A client of the server at `url`, with a timeout of 0.2 s.
    fn client_of(url: String) -> Client {
        let target = Target {
            url,
            token: None,
            source: Source::DataFolder,
        };
        Client::new(target, Duration::from_millis(200))
    }

    /// A server that answers every request's head and part of its body, then stops.
    async fn stalling_server() -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"status\":")
                    .await;
                held.push(stream);
            }
        });
        url
    }

    /// A body cut by a request's own bound is reported with that bound too: the head came
    /// in time, the rest did not.
    #[tokio::test]
    async fn a_bound_that_runs_out_during_the_body_is_named_for_what_it_is() {
        let client = client_of(stalling_server().await);
        let cut = client
            .json(client.working(
                Method::GET,
                "/v1/agents/a/runs/r?wait=2",
                Duration::from_millis(700),
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            cut.contains("did not finish answering within 0.7 s"),
            "{cut}"
        );
        assert!(
            cut.contains("the longest this command waits for it"),
            "{cut}"
        );
    }

    /// A request with a bound of its own that runs out is reported with that bound, not
    /// as the timeout's silence (it named the timeout, shorter, which had not applied).
    #[tokio::test]
    async fn a_bound_that_runs_out_is_named_for_what_it_is() {
        let client = client_of(silent_server().await);
        let silent = client
            .send(client.request(Method::GET, "/v1/agents"))
            .await
            .unwrap_err()
            .to_string();
        assert!(silent.contains("said nothing for 0.2 s"), "{silent}");
        let working = client
            .send(client.working(
                Method::POST,
                "/v1/agents/a/deploy",
                Duration::from_millis(700),
            ))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            working.contains("did not finish answering within 0.7 s"),
            "{working}"
        );
    }
}
