//! A small client of the gust HTTP API for the CLI. Server errors come back as one line:
//! `<kind>: <message>`.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        }
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
            if e.is_connect() {
                anyhow!(
                    "cannot reach {} (is `gust serve` running there?)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(server_error(response).await)
    }

    pub(crate) async fn json(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response.json().await.context("reading the server's answer")
    }
}

async fn server_error(response: Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let Ok(body) = serde_json::from_str::<Value>(&text) else {
        return anyhow!("the server answered {status}");
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
        line.push_str(" (pass the admin token with --token or GUST_TOKEN)");
    }
    anyhow!(line)
}
