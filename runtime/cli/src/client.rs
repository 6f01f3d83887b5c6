//! A small client of the gust HTTP API for the CLI. Server errors come back as one line,
//! `<kind>: <message>`, carrying the exit code their status means.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::exit::{Code, Failure};
use crate::target::{Source, Target};

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    source: Source,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(target: Target) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            base: target.url.trim_end_matches('/').to_owned(),
            token: target.token,
            source: target.source,
            http,
        }
    }

    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends, and turns a non-2xx answer into an error carrying the server's message.
    pub(crate) async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.map_err(|e| {
            let message = if e.is_connect() {
                format!(
                    "cannot reach {} (is `gust serve` running there?)",
                    self.base
                )
            } else {
                format!("request to {} failed: {e}", self.base)
            };
            Failure::new(Code::Unavailable, message)
        })?;
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
