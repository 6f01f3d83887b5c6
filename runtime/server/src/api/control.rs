//! The control plane: agents, versions, configuration, deploy and rollback.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use gust_core::clock::rfc3339;
use gust_core::runs::RunStats;
use gust_model::AgentConfig;
use gust_store::{DraftBase, draft_tag};
use gust_wasm::StatsSnapshot;

use super::answers::{
    AgentList, AgentListed, AgentView, Deployed, DeploymentView, Endpoints, LiveRef, Preview,
    SyncEndpoint, Uploaded, VersionDetail, VersionList, VersionView,
};
use super::auth::Admin;
use super::error::ApiError;
use super::openapi::{
    AgentPath, AgentVersionPath, BINARY, ComponentBytes, OPENMETRICS, TAG_AGENTS, TAG_HOST,
};
use super::paths::{AgentName, AgentVersion, Params};
use super::precondition::{draft_base, entity_tag, with_etag};
use super::{AppState, body};

type Answer = Result<Response, ApiError>;

/// `/healthz`: the process answers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    status: &'static str,
}

/// The process is up (liveness).
#[utoipa::path(get, path = "/healthz", tag = TAG_HOST,
    responses((status = 200, description = "The process answers.", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `/readyz`: whether to send traffic here.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready`, `loading deployments` or `draining`.
    status: &'static str,
    /// Agents with a live deployment loaded.
    deployments: usize,
    /// The database's health as the last probe found it: `ok`, or what failed.
    database: String,
    /// The database: `sqlite` or `postgres`.
    backend: &'static str,
}

/// Ready when the deployments are loaded and the host is not draining. The database is
/// reported beside it, not in it: deployed agents answer sync calls without it (the hot path
/// reads no database), so a load balancer should keep sending them.
#[utoipa::path(get, path = "/readyz", tag = TAG_HOST, responses(
    (status = 200, description = "Ready: deployments loaded, not draining.", body = Readiness),
    (status = 503, description = "Not ready (loading or draining).", body = Readiness)))]
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let database = state.database.load();
    let (ready, status) = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (false, "draining")
    } else if state.host.lifecycle.registry().is_ready() {
        (true, "ready")
    } else {
        (false, "loading deployments")
    };
    let body = Json(Readiness {
        status,
        deployments: state.host.lifecycle.registry().live_count(),
        database: database.as_str().to_owned(),
        backend: state.host.backend,
    });
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `/metrics` behind the admin token (the same text `--metrics-listen` serves without one).
#[utoipa::path(get, path = "/metrics", tag = TAG_HOST, security(("admin" = [])), responses(
    (status = 200, description = "Prometheus metrics (OpenMetrics text).", content_type = OPENMETRICS, body = String)))]
pub(crate) async fn metrics(_: Admin, State(state): State<Arc<AppState>>) -> Answer {
    metrics_text(&state).await
}

/// The Prometheus text exposition (OpenMetrics 1.0), with the state gauges read now.
pub(crate) async fn metrics_text(state: &AppState) -> Answer {
    let host = &state.host;
    let stats = host.engine.stats().snapshot(0);
    let admission = host.lifecycle.admission();
    let (budget, resident, _) = admission.memory();
    let now = gust_core::clock::now_ms();
    let queues = host
        .runs
        .active()
        .await?
        .into_iter()
        .map(|a| {
            let age = a.oldest_queued_at.map(|at| {
                std::time::Duration::from_millis(u64::try_from(now.saturating_sub(at)).unwrap_or(0))
            });
            (a.agent, a.queued, a.running, age)
        })
        .collect();
    let snapshot = gust_core::metrics::Snapshot {
        live_instances: stats.live_instances,
        instances_admitted: admission.in_use() as u64,
        deployments: host.lifecycle.registry().live_count() as u64,
        memory_budget_bytes: budget,
        resident_bytes: resident,
        compiles_total: stats.compiles_total,
        cache_loads_total: stats.cache_loads_total,
        queues,
    };
    let text =
        host.calls.metrics().encode(&snapshot).map_err(|e| {
            gust_core::Error::Internal(anyhow::anyhow!("encoding the metrics: {e}"))
        })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `/v1/stats`: the engine's counters, the run queue's, and admission's.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Stats {
    #[serde(flatten)]
    engine: StatsSnapshot,
    #[serde(flatten)]
    runs: RunStats,
    /// Admitted calls and runs (`live_instances` also counts upload checks).
    instances_admitted: usize,
    /// What admission weighs instances against (deploy/memory.rs).
    memory_budget_bytes: u64,
    /// The latest reading of the memory the process commits: private resident pages and page
    /// tables (deploy/memory.rs).
    resident_bytes: u64,
    /// The estimate per instance learned from it.
    memory_per_instance_bytes: u64,
    /// The database: `sqlite` (in the data folder, one host) or `postgres` (shared by
    /// several hosts).
    backend: &'static str,
}

/// The host's counters.
#[utoipa::path(get, path = "/v1/stats", tag = TAG_HOST, security(("admin" = [])),
    responses((status = 200, description = "Counters since start.", body = Stats)))]
pub(crate) async fn stats(_: Admin, State(state): State<Arc<AppState>>) -> Json<Stats> {
    let host = &state.host;
    let deployments = host.lifecycle.registry().live_count() as u64;
    let admission = host.lifecycle.admission();
    let (budget, resident, per_instance) = admission.memory();
    Json(Stats {
        engine: host.engine.stats().snapshot(deployments),
        runs: host.runs.stats(),
        instances_admitted: admission.in_use(),
        memory_budget_bytes: budget,
        resident_bytes: resident,
        memory_per_instance_bytes: per_instance,
        backend: host.backend,
    })
}

/// Every agent, with what the console's list shows: the live deployment and its mode, whether
/// the draft differs from it, sync calls and failures since this host started, and runs
/// queued and running.
#[utoipa::path(get, path = "/v1/agents", tag = TAG_AGENTS, security(("admin" = [])),
    responses((status = 200, description = "Every agent.", body = AgentList)))]
pub(crate) async fn list_agents(_: Admin, State(state): State<Arc<AppState>>) -> Answer {
    let host = &state.host;
    let active: HashMap<String, (u64, u64)> = host
        .runs
        .active()
        .await?
        .into_iter()
        .map(|a| (a.agent, (a.queued, a.running)))
        .collect();
    let admission = host.lifecycle.admission();
    let agents: Vec<AgentListed> = host
        .lifecycle
        .list()
        .await?
        .into_iter()
        .map(|a| {
            let (calls, failures) = admission.calls(&a.name);
            let (queued, running) = active.get(&a.name).copied().unwrap_or_default();
            AgentListed {
                endpoints: SyncEndpoint {
                    sync: state.sync_url(&a.name),
                },
                agent: a.name,
                created_at: rfc3339(a.created_at),
                live: a.live.map(|(deployment, version)| LiveRef {
                    deployment,
                    version,
                }),
                mode: a.mode,
                deployed_at: a.deployed_at.map(rfc3339),
                draft_pending: a.draft_pending,
                newest_version: a.newest_version,
                versions: a.versions,
                calls,
                failures,
                runs_queued: queued,
                runs_running: running,
            }
        })
        .collect();
    Ok(Json(AgentList { agents }).into_response())
}

/// An agent: its endpoints, live deployment, draft, versions and deployments.
#[utoipa::path(get, path = "/v1/agents/{agent}", tag = TAG_AGENTS, params(AgentPath),
    security(("admin" = [])),
    responses((status = 200, description = "The agent.", body = AgentView)))]
pub(crate) async fn get_agent(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let record = state.host.lifecycle.get(&agent).await?;
    let live_number = record.live.as_ref().map(|d| d.deployment);
    let draft_pending = record
        .live
        .as_ref()
        .is_some_and(|live| live.config != record.draft);
    let mode = record
        .live
        .as_ref()
        .map(|d| d.config.mode)
        .unwrap_or_default();
    Ok(Json(AgentView {
        agent: record.name.clone(),
        created_at: rfc3339(record.created_at),
        endpoints: Endpoints::new(&state, &record.name, mode),
        live: record.live.as_ref().map(|d| DeploymentView::new(d, true)),
        draft: record.draft.redacted(),
        draft_pending,
        versions: VersionView::all(&record),
        deployments: record
            .deployments
            .iter()
            .map(|d| DeploymentView::new(d, live_number == Some(d.deployment)))
            .collect(),
    })
    .into_response())
}

/// Deletes the agent: its versions, deployments, runs, keys and kept log lines.
#[utoipa::path(delete, path = "/v1/agents/{agent}", tag = TAG_AGENTS, params(AgentPath),
    security(("admin" = [])),
    responses((status = 204, description = "Deleted.")))]
pub(crate) async fn delete_agent(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    state.host.lifecycle.delete(&agent).await?;
    // Its kept guest lines go too (followers see their stream end).
    state.host.calls.logs().forget(&agent);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Uploads a component: checked against the agent world, stored as the agent's next version
/// (the agent is created by its first upload). The same bytes again name the same version.
#[utoipa::path(post, path = "/v1/agents/{agent}/versions", tag = TAG_AGENTS, params(AgentPath),
    security(("admin" = [])),
    request_body(content = ComponentBytes, content_type = BINARY, description = "The component's bytes (`.wasm`)."),
    responses(
        (status = 201, description = "A new version.", body = Uploaded, links(
            ("deploy" = (operation_id = "deploy", parameters(("agent" = "$response.body#/agent")),
                request_body = json!({"version": "$response.body#/version"}))),
            ("get_version" = (operation_id = "get_version", parameters(("agent" = "$response.body#/agent"), ("version" = "$response.body#/version")))))),
        (status = 200, description = "These bytes already are this version.", body = Uploaded, links(
            ("deploy" = (operation_id = "deploy", parameters(("agent" = "$response.body#/agent")),
                request_body = json!({"version": "$response.body#/version"}))),
            ("get_version" = (operation_id = "get_version", parameters(("agent" = "$response.body#/agent"), ("version" = "$response.body#/version")))))),
        (status = 422, description = "Not a component of the agent world: `diagnostics` say what is wrong.", body = super::error::ErrorBody),
        (status = 507, description = "The host's disk is almost full.", body = super::error::ErrorBody)))]
pub(crate) async fn upload(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    headers: HeaderMap,
    request_body: Body,
) -> Answer {
    let bytes = body::read(
        &state.body_budget,
        &headers,
        request_body,
        state.limits.upload,
    )
    .await?;
    // A disk almost full refuses new bytes, not bytes already stored: `gust deploy` in a
    // project uploads its component again each time.
    let uploaded = state
        .host
        .lifecycle
        .upload(&agent, bytes, state.host.runs.disk_low())
        .await?;
    let status = if uploaded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let v = uploaded.version;
    Ok((
        status,
        Json(Uploaded {
            created_at: rfc3339(v.created_at),
            agent: v.agent,
            version: v.version,
            digest: v.digest,
            size: v.size,
        }),
    )
        .into_response())
}

/// The agent's stored versions, the live one marked.
#[utoipa::path(get, path = "/v1/agents/{agent}/versions", tag = TAG_AGENTS, params(AgentPath),
    security(("admin" = [])),
    responses((status = 200, description = "The versions, oldest first.", body = VersionList)))]
pub(crate) async fn list_versions(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let record = state.host.lifecycle.get(&agent).await?;
    Ok(Json(VersionList {
        agent,
        versions: VersionView::all(&record),
    })
    .into_response())
}

/// One version, with its component's imports and exports in WIT.
#[utoipa::path(get, path = "/v1/agents/{agent}/versions/{version}", tag = TAG_AGENTS,
    params(AgentVersionPath), security(("admin" = [])),
    responses((status = 200, description = "The version.", body = VersionDetail)))]
pub(crate) async fn get_version(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentVersion(agent, n): AgentVersion,
) -> Answer {
    let (version, wit) = state.host.lifecycle.version(&agent, n).await?;
    let live = state
        .host
        .lifecycle
        .registry()
        .get(&agent)
        .is_some_and(|d| d.version() == n);
    Ok(Json(VersionDetail {
        agent,
        version: VersionView::new(&version, live),
        wit,
    })
    .into_response())
}

/// Deletes a version that no deployment runs now.
#[utoipa::path(delete, path = "/v1/agents/{agent}/versions/{version}", tag = TAG_AGENTS,
    params(AgentVersionPath), security(("admin" = [])),
    responses((status = 204, description = "Deleted."),
        (status = 409, description = "The live deployment runs it.", body = super::error::ErrorBody)))]
pub(crate) async fn delete_version(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentVersion(agent, n): AgentVersion,
) -> Answer {
    state.host.lifecycle.delete_version(&agent, n).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The draft configuration: what the next deploy freezes (the access token reads `***`).
/// Its `ETag` goes back in `If-Match` when the draft is written, so that a change made in
/// between is not overwritten.
#[utoipa::path(get, path = "/v1/agents/{agent}/config", tag = TAG_AGENTS, params(AgentPath),
    security(("admin" = [])),
    responses((status = 200, description = "The draft.", body = AgentConfig,
        headers(("ETag" = String, description = "The draft's entity tag, for `If-Match` on `PUT`.")))))]
pub(crate) async fn get_config(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let draft = state.host.lifecycle.draft(&agent).await?;
    Ok(with_etag(
        Json(draft.config.redacted()).into_response(),
        &draft.tag,
    ))
}

/// Small: a configuration is a few keys, not a data store.
const CONFIG_BODY_LIMIT: usize = 1 << 20;

/// Replaces the draft configuration; it takes effect at the next deploy. Turning push on for
/// the first time answers the signing secret in `push.secret`, this once. With `If-Match`
/// (the `ETag` of the draft read) the draft is replaced only if nobody changed it since.
#[utoipa::path(put, path = "/v1/agents/{agent}/config", tag = TAG_AGENTS,
    params(AgentPath,
        ("If-Match" = Option<String>, Header, description = "The `ETag` of the draft this one replaces (or `*`: any draft of an existing agent). Answered 412 when the draft has changed since."),
        ("If-None-Match" = Option<String>, Header, description = "`*`: write only if the agent does not exist yet, else 412.")),
    security(("admin" = [])),
    request_body(content = AgentConfig, description = "The whole draft; fields left out take their defaults. `push.access_token` may be `***` to keep the stored token (same URL only)."),
    responses((status = 200, description = "The saved draft (with no `ETag`: it is not the body as sent; `GET` gives the tag).", body = AgentConfig),
        (status = 409, description = "Other hosts kept writing the draft while this write read it (it keeps a stored token): try again.", body = super::error::ErrorBody),
        (status = 412, description = "The draft is not the one `If-Match` or `If-None-Match` named: read it again.", body = super::error::ErrorBody)))]
pub(crate) async fn put_config(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    headers: HeaderMap,
    request_body: Body,
) -> Answer {
    let base = draft_base(&headers)?;
    let bytes = body::read(
        &state.body_budget,
        &headers,
        request_body,
        CONFIG_BODY_LIMIT,
    )
    .await?;
    let draft: AgentConfig = body::json(&bytes)?;
    let saved = state.host.lifecycle.put_draft(&agent, draft, base).await?;
    let mut answer = saved.draft.redacted();
    if let (Some(secret), Some(push)) = (saved.new_secret, answer.push.as_mut()) {
        // Shown this once: the receiver needs it to verify signatures.
        push.secret = Some(secret);
    }
    // No `ETag`: the draft stored is not the body sent (defaults filled in, a kept token),
    // and RFC 9110 (9.3.4) gives a tag on a `PUT`'s answer only for the body as sent.
    Ok(Json(answer).into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployRequest {
    /// The version to make live; the newest when left out.
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    version: Option<u32>,
}

/// Makes a version live with the draft configuration frozen beside it: an atomic swap, the
/// endpoint unchanged. An empty body deploys the newest version. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/agents/{agent}/deploy", tag = TAG_AGENTS, params(AgentPath,
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
            description = "Repeats of a deploy with the same key answer the first deploy again."),
        ("If-Match" = Option<String>, Header, description = "The draft's `ETag` (or the preview's `draft_etag`): deploy only that configuration, 412 if the draft changed since.")),
    security(("admin" = [])),
    request_body(content = Option<DeployRequest>),
    responses((status = 200, description = "What is live now.", body = Deployed, links(
        ("run" = (operation_id = "run", parameters(("agent" = "$response.body#/agent")))),
        ("submit_run" = (operation_id = "submit_run", parameters(("agent" = "$response.body#/agent")))))),
        (status = 409, description = "Not deployable (a version missing, an async mode without push).", body = super::error::ErrorBody),
        (status = 412, description = "The draft is not the one `If-Match` named: preview again.", body = super::error::ErrorBody)))]
pub(crate) async fn deploy(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    headers: HeaderMap,
    request_body: Body,
) -> Answer {
    // An empty body deploys the newest version.
    let request: DeployRequest = optional_json(&state, &headers, request_body).await?;
    let key = body::idempotency_key(&headers)?;
    let base = match draft_base(&headers)? {
        DraftBase::Absent => {
            return Err(gust_core::Error::BadRequest(
                "`If-None-Match: *` cannot hold for a deploy, which needs the agent; `If-Match` names the draft to deploy".into(),
            )
            .into());
        }
        base => base,
    };
    let deployed = state
        .host
        .lifecycle
        .deploy(&agent, request.version, key, base)
        .await?;
    let mut response = Json(Deployed::new(&state, &deployed.record)).into_response();
    if deployed.replayed {
        body::mark_replayed(&mut response);
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviewParams {
    /// The version a deploy would make live; the newest when left out.
    #[param(minimum = 1, maximum = 4294967295_u32)]
    version: Option<u32>,
}

/// What `POST …/deploy` with the same version would change, changing nothing: the console's
/// Confirm dialog and `gust deploy --dry-run` show it.
#[utoipa::path(get, path = "/v1/agents/{agent}/deploy/preview", tag = TAG_AGENTS,
    params(AgentPath, PreviewParams), security(("admin" = [])),
    responses((status = 200, description = "What the deploy would change.", body = Preview)))]
pub(crate) async fn preview(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    Params(params): Params<PreviewParams>,
) -> Answer {
    let preview = state.host.lifecycle.preview(&agent, params.version).await?;
    let changes_anything = preview.changes_anything();
    let live_version = preview.live.as_ref().map(|l| l.version);
    Ok(Json(Preview {
        endpoints: Endpoints::new(&state, &agent, preview.draft.mode),
        agent,
        // Masked as the changes are: the preview is what a confirmation shows.
        live: preview.live.as_ref().map(|d| DeploymentView {
            config: d.config.masked(),
            ..DeploymentView::new(d, true)
        }),
        version: VersionView::new(
            &preview.version,
            live_version == Some(preview.version.version),
        ),
        config: preview.draft.masked(),
        changes: preview.changes,
        changes_anything,
        draft_etag: entity_tag(&draft_tag(&preview.draft)),
    })
    .into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackRequest {
    /// The deployment to return to; without it, the previous one.
    #[schema(minimum = 1, maximum = 4294967295_u32)]
    to: Option<u32>,
}

/// Makes an earlier deployment live again, with the configuration frozen in it.
#[utoipa::path(post, path = "/v1/agents/{agent}/rollback", tag = TAG_AGENTS, params(AgentPath),
    security(("admin" = [])),
    request_body(content = Option<RollbackRequest>),
    responses((status = 200, description = "What is live now.", body = Deployed),
        (status = 409, description = "Nothing to roll back to.", body = super::error::ErrorBody)))]
pub(crate) async fn rollback(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    headers: HeaderMap,
    request_body: Body,
) -> Answer {
    let request: RollbackRequest = optional_json(&state, &headers, request_body).await?;
    let record = state.host.lifecycle.rollback(&agent, request.to).await?;
    Ok(Json(Deployed::new(&state, &record)).into_response())
}

/// A small control-plane JSON body that may be left empty (all defaults), read within the
/// body budget.
async fn optional_json<T: Default + serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    request_body: Body,
) -> Result<T, ApiError> {
    let bytes = body::read(&state.body_budget, headers, request_body, CONFIG_BODY_LIMIT).await?;
    // `null` reads as no body: a client that serializes "nothing to say" as JSON sends it.
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        Ok(T::default())
    } else {
        Ok(body::json(&bytes)?)
    }
}
