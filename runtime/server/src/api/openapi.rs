//! The OpenAPI 3.1 document, served at `/v1/openapi.json` without auth.
//!
//! Derived from the code (utoipa): each handler's `#[utoipa::path]` names its route, and the
//! router is built from those same annotations (`utoipa_axum::routes!` in `mod.rs`), so a
//! route cannot be served without being documented or documented without being served.
//! Answer schemas are the types the handlers serialize. The error answers every operation
//! can give (a bad query, missing credentials, an unknown agent, a body too large, …) are
//! added here by rule, from what the operation takes, rather than repeated on each handler.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use bytes::Bytes;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HttpMethod, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, ToSchema};

use super::error::ErrorBody;

pub(crate) const TAG_HOST: &str = "host";
pub(crate) const TAG_AGENTS: &str = "agents";
pub(crate) const TAG_CALLS: &str = "calls";
pub(crate) const TAG_RUNS: &str = "runs";
pub(crate) const TAG_PUSH: &str = "push";
pub(crate) const TAG_KEYS: &str = "keys";

pub(crate) const BINARY: &str = "application/wasm";
pub(crate) const EVENT_STREAM: &str = "text/event-stream";
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text";

/// The security schemes' names, as `security(...)` in the annotations spells them.
const ADMIN: &str = "admin";
const API_KEY: &str = "api_key";

/// A component's bytes, as an upload's body: binary, not JSON (OpenAPI 3.1 says so with
/// `contentMediaType`, where 3.0 said `format: binary`).
pub(crate) struct ComponentBytes;

impl utoipa::PartialSchema for ComponentBytes {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type(BINARY)
            .description(Some("A WebAssembly component of the `gust:agent` world."))
            .into()
    }
}

impl ToSchema for ComponentBytes {}

/// The Server-Sent Events of a stream, one schema per event (`event`, `data`, `id`), as
/// tools that read `text/event-stream` check them.
fn event_stream(description: &str, events: &[&str]) -> RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::Type;
    utoipa::openapi::ObjectBuilder::new()
        .description(Some(description))
        .property(
            "event",
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(events.iter().copied())),
        )
        .property(
            "data",
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("JSON, except for comments the stream may carry.")),
        )
        .property(
            "id",
            utoipa::openapi::ObjectBuilder::new().schema_type(Type::String),
        )
        .required("event")
        .required("data")
        .into()
}

/// A queued run's events (`GET …/runs/{run_id}/events`).
pub(crate) struct RunEventStream;

impl utoipa::PartialSchema for RunEventStream {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        event_stream(
            "`status` and `progress` as they change, `log` lines and emitted `chunk`s (ids `log:N` or `log:N,out:K`), then `output` or `error`, `delivery` when the run pushes, and `end`.",
            &[
                "status", "progress", "log", "chunk", "output", "error", "delivery", "end",
            ],
        )
    }
}

impl ToSchema for RunEventStream {}

/// A sync call's events (`POST …/run` with `Accept: text/event-stream`).
pub(crate) struct CallEventStream;

impl utoipa::PartialSchema for CallEventStream {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        event_stream(
            "`progress`, `log` and emitted `chunk`s as the guest reports them, `dropped` if a slow reader missed log lines, then `output` or `error`, and `end`.",
            &[
                "progress", "log", "chunk", "dropped", "output", "error", "end",
            ],
        )
    }
}

impl ToSchema for CallEventStream {}

/// An agent's followed guest lines (`GET …/logs?follow=1`).
pub(crate) struct LogEventStream;

impl utoipa::PartialSchema for LogEventStream {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        event_stream(
            "`log` lines (ids: their `seq`), and `missed` when lines were dropped before this reader got them.",
            &["log", "missed"],
        )
    }
}

impl ToSchema for LogEventStream {}

/// The path of an agent's routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(dead_code, reason = "read by the OpenAPI document only")]
pub(crate) struct AgentPath {
    /// The agent's name: 1 to 63 characters of a-z, 0-9 and `-`, starting with a letter or
    /// digit.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")]
    agent: String,
}

/// The path of one version.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(dead_code, reason = "read by the OpenAPI document only")]
pub(crate) struct AgentVersionPath {
    /// The agent's name.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")]
    agent: String,
    /// The version number, from 1.
    #[param(minimum = 1, maximum = 4294967295_u32)]
    version: u32,
}

/// The path of one run.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(dead_code, reason = "read by the OpenAPI document only")]
pub(crate) struct AgentRunPath {
    /// The agent's name.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")]
    agent: String,
    /// `run_` and 32 hex digits.
    #[param(pattern = "^run_[0-9a-f]{32}$")]
    run_id: String,
}

/// The document's frame: what the annotations do not say.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "gust",
        description = "Deploy agent flows compiled to WebAssembly components and call them: sync calls answered inline, queued runs polled or pushed to your application.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = TAG_HOST, description = "Health, readiness, metrics and counters."),
        (name = TAG_AGENTS, description = "Agents, versions, configuration, deploy and rollback, endpoints and logs (admin)."),
        (name = TAG_CALLS, description = "Sync calls (admin token or the agent's key)."),
        (name = TAG_RUNS, description = "Queued runs (admin token or the agent's key)."),
        (name = TAG_PUSH, description = "Push deliveries of queued runs' results (admin)."),
        (name = TAG_KEYS, description = "Invoke keys and the admin token (admin)."),
    ),
)]
pub(crate) struct Frame;

/// Adds the security schemes, the version, and the error answers by rule: applied to the
/// whole document, once the router has added every route's operation to the frame.
struct Rules;

impl Modify for Rules {
    fn modify(&self, doc: &mut OpenApi) {
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token: `Authorization: Bearer <token>`. Reaches every route.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "An invoke key of the agent in the path (also accepted as `Authorization: Bearer <key>`): sync calls and runs of that agent only.",
            ))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for method in [
                HttpMethod::Get,
                HttpMethod::Put,
                HttpMethod::Post,
                HttpMethod::Delete,
            ] {
                let operation = match method {
                    HttpMethod::Get => item.get.as_mut(),
                    HttpMethod::Put => item.put.as_mut(),
                    HttpMethod::Post => item.post.as_mut(),
                    HttpMethod::Delete => item.delete.as_mut(),
                    _ => None,
                };
                let Some(operation) = operation else { continue };
                let schemes: Vec<String> = operation
                    .security
                    .iter()
                    .flatten()
                    .filter_map(|s| serde_json::to_value(s).ok())
                    .filter_map(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
                    .flatten()
                    .collect();
                let mut errors = BTreeMap::new();
                errors.insert(
                    "400",
                    "Malformed: a bad path, query, header or body, or a credential in the query string.",
                );
                errors.insert("500", "Something broke inside the host (logged there).");
                errors.insert(
                    "503",
                    "The database shared by several hosts cannot be reached: retry after `Retry-After`. Nothing was committed, unless the connection was lost during the commit: retry a submission with the same `Idempotency-Key`.",
                );
                if !schemes.is_empty() {
                    errors.insert("401", "No valid credentials.");
                    errors.insert(
                        "403",
                        "Credentials that do not reach this route (another agent's key; a console session without its own Origin).",
                    );
                }
                if schemes.iter().any(|s| s == API_KEY) {
                    errors.insert(
                        "429",
                        "The caller's key or the host is at its limit; retry after `Retry-After`.",
                    );
                }
                if path.contains("{agent}") {
                    errors.insert(
                        "404",
                        "No such agent, version, run or key, or nothing deployed.",
                    );
                }
                if operation.request_body.is_some() {
                    errors.insert("413", "The body is larger than the host takes.");
                    errors.entry("429").or_insert(
                        "The host is reading as many request bodies as its memory allows; retry after `Retry-After`.",
                    );
                }
                if matches!(method, HttpMethod::Post | HttpMethod::Put) && path.contains("{agent}")
                {
                    errors.insert(
                        "507",
                        "The agent's stored runs are at their bound, or the host's disk is almost full.",
                    );
                }
                for (status, description) in errors {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(error_response(description)));
                }
            }
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build()
}

/// This document (OpenAPI 3.1), without auth: client generators and API tools read it.
#[utoipa::path(get, path = "/v1/openapi.json", tag = TAG_HOST, operation_id = "openapi",
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document())
}

/// The document as served, built the first time it is asked for (from the same route list
/// the router is built from).
pub(crate) fn document() -> Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let (_, mut api) = super::api_routes().split_for_parts();
            Rules.modify(&mut api);
            let mut json = serde_json::to_value(&api).unwrap_or_default();
            camel_case_links(&mut json);
            Bytes::from(serde_json::to_vec_pretty(&json).unwrap_or_default())
        })
        .clone()
}

/// utoipa 5 writes a link's fields in snake case (`operation_id`); OpenAPI spells them in
/// camel case, and tools that follow links (schemathesis) read only that.
fn camel_case_links(doc: &mut serde_json::Value) {
    let operations = doc
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let links = operation
            .get_mut("responses")
            .and_then(serde_json::Value::as_object_mut)
            .into_iter()
            .flat_map(|responses| responses.values_mut())
            .filter_map(|response| response.get_mut("links"))
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|links| links.values_mut())
            .filter_map(serde_json::Value::as_object_mut);
        for link in links {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
}
