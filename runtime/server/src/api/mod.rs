//! HTTP: the routes, and the state they share.
//!
//! - `control`: agents, versions, configuration, deploy and rollback (admin token);
//! - `data`: the sync endpoint, `POST /v1/agents/{agent}/run`;
//! - `runs`: queued runs — submit, poll, list, cancel, re-run, redeliver — and push tests;
//! - `keys`: invoke keys and the admin token's rotation;
//! - `endpoints`: an agent's endpoints with the code to call each, as users copy it;
//! - `logs`: the guest lines of an agent's sync calls, read or followed (SSE);
//! - `events`: one queued run as it goes, as Server-Sent Events;
//! - `auth`, `paths`, `body`: who is calling, the path's names, request bodies — each with
//!   errors in the API's shape;
//! - `error`: the one mapping from [`Error`] to a response;
//! - `openapi`: the OpenAPI document, from the handlers' annotations and answer types
//!   (`answers`: the control plane's).

mod answers;
pub(crate) mod auth;
pub(crate) mod body;
mod control;
mod data;
mod endpoints;
pub(crate) mod error;
mod events;
mod keys;
mod logs;
mod openapi;
mod paths;
mod precondition;
mod runs;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use gust_core::auth::AdminToken;
use gust_core::{Error, Host};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::ApiError;

pub(crate) use body::BodyBudget;

/// Request body limits.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest component upload, in bytes.
    pub upload: usize,
    /// Largest input of a call, in bytes.
    pub input: usize,
    /// Memory all request bodies being read may take at once, server-wide, in bytes.
    pub in_flight: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            upload: 100 << 20,
            input: 10 << 20,
            in_flight: 512 << 20,
        }
    }
}

/// What every handler can reach.
pub(crate) struct AppState {
    /// The use cases.
    pub(crate) host: Host,
    /// The admin token; compared in constant time, never logged.
    pub(crate) admin: AdminToken,
    /// Base of the endpoint URLs in answers, without a trailing slash.
    pub(crate) public_url: String,
    /// Request body limits.
    pub(crate) limits: BodyLimits,
    /// The server-wide memory of request bodies being read.
    pub(crate) body_budget: body::BodyBudget,
    /// Whether this host serves TLS (the console's cookie is then `Secure`).
    pub(crate) tls: bool,
    /// Set on SIGTERM during the drain delay: `/readyz` answers 503.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Cancelled when the listener stops accepting: streams that only follow (logs, run
    /// events) end, where calls in flight get the grace period.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// Cancelled when the stop's grace period ends: a sync call still running is cut and
    /// answered 503, rather than its connection dropped when the process exits.
    pub(crate) past_grace: tokio_util::sync::CancellationToken,
    /// The database's health as a background probe last found it (`/readyz` reads this,
    /// never the database itself: probes must answer at once).
    pub(crate) database: arc_swap::ArcSwap<String>,
}

impl AppState {
    pub(crate) fn sync_url(&self, agent: &str) -> String {
        format!("{}/v1/agents/{agent}/run", self.public_url)
    }

    pub(crate) fn runs_url(&self, agent: &str) -> String {
        format!("{}/v1/agents/{agent}/runs", self.public_url)
    }
}

/// The trace a request belongs to (W3C Trace Context headers), if it says.
pub(crate) fn trace_of(headers: &axum::http::HeaderMap) -> Option<gust_model::TraceContext> {
    gust_wasm::trace::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

/// `--metrics-listen`'s router: `/metrics` without the token, nothing else.
pub(crate) fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(state): axum::extract::State<Arc<AppState>>| async move {
                    control::metrics_text(&state).await
                },
            ),
        )
        .fallback(|| async { ApiError(Error::NotFound("only /metrics is served here".into())) })
        .with_state(state)
}

/// All routes, with `extra` (the console's) beside the API's. Unknown paths and methods
/// answer in the same JSON error shape as the rest.
pub(crate) fn router(state: Arc<AppState>, extra: Router<Arc<AppState>>) -> Router {
    let (api, _) = api_routes().split_for_parts();
    Router::new()
        .merge(extra)
        .merge(api)
        .fallback(|| async { ApiError(Error::NotFound("no such route".into())) })
        .method_not_allowed_fallback(|| async {
            ApiError(Error::MethodNotAllowed(
                "this route does not take that method".into(),
            ))
        })
        .layer(auth::RefuseCredentialsInQuery::new(Arc::clone(&state)))
        .with_state(state)
}

/// The API's routes with their OpenAPI operations: one list for both, so neither can miss
/// a route the other has.
pub(crate) fn api_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::Frame::openapi())
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(control::healthz))
        .routes(routes!(control::readyz))
        .routes(routes!(control::stats))
        .routes(routes!(control::metrics))
        .routes(routes!(control::list_agents))
        .routes(routes!(control::get_agent, control::delete_agent))
        .routes(routes!(control::upload, control::list_versions))
        .routes(routes!(control::get_version, control::delete_version))
        .routes(routes!(control::get_config, control::put_config))
        .routes(routes!(control::deploy))
        .routes(routes!(control::preview))
        .routes(routes!(endpoints::endpoints))
        .routes(routes!(logs::logs))
        .routes(routes!(control::rollback))
        .routes(routes!(data::run))
        .routes(routes!(runs::submit, runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(runs::input))
        .routes(routes!(events::events))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::rerun))
        .routes(routes!(runs::redeliver))
        .routes(routes!(runs::push_test))
        .routes(routes!(runs::rotate_secret))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::rotate_admin_token))
}
