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
//! - `error`: the one mapping from [`Error`] to a response.

pub(crate) mod auth;
pub(crate) mod body;
mod control;
mod data;
mod endpoints;
pub(crate) mod error;
mod events;
mod keys;
mod logs;
mod paths;
mod runs;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use gust_core::auth::AdminToken;
use gust_core::{Error, Host};
use gust_model::DeliveryMode;

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

    /// The endpoints of a deployment: sync calls; submitting queued runs whose results are
    /// pushed (async mode only); and where a queued run is polled.
    pub(crate) fn endpoints(&self, agent: &str, mode: DeliveryMode) -> serde_json::Value {
        let mut endpoints = serde_json::json!({
            "sync": self.sync_url(agent),
            "async_poll": format!("{}/{{run_id}}", self.runs_url(agent)),
        });
        if mode == DeliveryMode::Async {
            endpoints["async_push"] = self.runs_url(agent).into();
        }
        endpoints
    }
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
    Router::new()
        .merge(extra)
        .route("/healthz", get(control::healthz))
        .route("/readyz", get(control::readyz))
        .route("/v1/stats", get(control::stats))
        .route("/metrics", get(control::metrics))
        .route("/v1/agents", get(control::list_agents))
        .route(
            "/v1/agents/{agent}",
            get(control::get_agent).delete(control::delete_agent),
        )
        .route(
            "/v1/agents/{agent}/versions",
            post(control::upload).get(control::list_versions),
        )
        .route(
            "/v1/agents/{agent}/versions/{version}",
            get(control::get_version).delete(control::delete_version),
        )
        .route(
            "/v1/agents/{agent}/config",
            get(control::get_config).put(control::put_config),
        )
        .route("/v1/agents/{agent}/deploy", post(control::deploy))
        .route("/v1/agents/{agent}/deploy/preview", get(control::preview))
        .route("/v1/agents/{agent}/endpoints", get(endpoints::endpoints))
        .route("/v1/agents/{agent}/logs", get(logs::logs))
        .route("/v1/agents/{agent}/rollback", post(control::rollback))
        .route("/v1/agents/{agent}/run", post(data::run))
        .route(
            "/v1/agents/{agent}/runs",
            post(runs::submit).get(runs::list),
        )
        .route("/v1/agents/{agent}/runs/{run_id}", get(runs::get))
        .route("/v1/agents/{agent}/runs/{run_id}/input", get(runs::input))
        .route(
            "/v1/agents/{agent}/runs/{run_id}/events",
            get(events::events),
        )
        .route(
            "/v1/agents/{agent}/runs/{run_id}/cancel",
            post(runs::cancel),
        )
        .route("/v1/agents/{agent}/runs/{run_id}/rerun", post(runs::rerun))
        .route(
            "/v1/agents/{agent}/runs/{run_id}/redeliver",
            post(runs::redeliver),
        )
        .route("/v1/agents/{agent}/push/test", post(runs::push_test))
        .route(
            "/v1/agents/{agent}/keys",
            post(keys::create).get(keys::list),
        )
        .route("/v1/agents/{agent}/keys/{key_id}", delete(keys::revoke))
        .route("/v1/admin/rotate-token", post(keys::rotate_admin_token))
        .route(
            "/v1/agents/{agent}/push/rotate-secret",
            post(runs::rotate_secret),
        )
        .fallback(|| async { ApiError(Error::NotFound("no such route".into())) })
        .method_not_allowed_fallback(|| async {
            ApiError(Error::MethodNotAllowed(
                "this route does not take that method".into(),
            ))
        })
        .layer(auth::RefuseCredentialsInQuery::new(Arc::clone(&state)))
        .with_state(state)
}
