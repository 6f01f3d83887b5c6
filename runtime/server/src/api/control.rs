//! The control plane: agents, versions, configuration, deploy and rollback.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use gust_core::clock::rfc3339;
use gust_model::{AgentConfig, AgentRecord, DeploymentRecord, VersionRecord};

use super::auth::Admin;
use super::error::ApiError;
use super::paths::{AgentName, AgentVersion, Params};
use super::{AppState, body};

type Answer = Result<Response, ApiError>;

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the deployments are loaded and the host is not draining. The database is
/// reported beside it, not in it: deployed agents answer sync calls without it (the hot path
/// reads no database), so a load balancer should keep sending them.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let database = state.database.load();
    let (ready, status) = if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (false, "draining")
    } else if state.host.lifecycle.registry().is_ready() {
        (true, "ready")
    } else {
        (false, "loading deployments")
    };
    let body = Json(json!({
        "status": status,
        "deployments": state.host.lifecycle.registry().live_count(),
        "database": database.as_str(),
        "backend": state.host.backend,
    }));
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `/metrics` behind the admin token (the same text `--metrics-listen` serves without one).
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

pub(crate) async fn stats(_: Admin, State(state): State<Arc<AppState>>) -> Json<Value> {
    let host = &state.host;
    let deployments = host.lifecycle.registry().live_count() as u64;
    let mut stats = json!(host.engine.stats().snapshot(deployments));
    if let (Some(stats), Value::Object(runs)) = (stats.as_object_mut(), json!(host.runs.stats())) {
        stats.extend(runs);
    }
    // Admitted calls and runs; `live_instances` also counts upload checks.
    let admission = host.lifecycle.admission();
    stats["instances_admitted"] = json!(admission.in_use());
    // What admission weighs instances against (deploy/memory.rs): the budget, the latest
    // reading of the resident size, and the estimate per instance learned from it.
    let (budget, resident, per_instance) = admission.memory();
    stats["memory_budget_bytes"] = json!(budget);
    stats["resident_bytes"] = json!(resident);
    stats["memory_per_instance_bytes"] = json!(per_instance);
    Json(stats)
}

/// Every agent, with what the console's list shows: the live deployment and its mode, whether
/// the draft differs from it, sync calls and failures since this host started, and runs
/// queued and running.
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
    let agents: Vec<Value> = host
        .lifecycle
        .list()
        .await?
        .into_iter()
        .map(|a| {
            let (calls, failures) = admission.calls(&a.name);
            let (queued, running) = active.get(&a.name).copied().unwrap_or_default();
            json!({
                "agent": a.name,
                "created_at": rfc3339(a.created_at),
                "live": a.live.map(|(deployment, version)| json!({"deployment": deployment, "version": version})),
                "mode": a.mode,
                "deployed_at": a.deployed_at.map(rfc3339),
                "draft_pending": a.draft_pending,
                "newest_version": a.newest_version,
                "versions": a.versions,
                "calls": calls,
                "failures": failures,
                "runs_queued": queued,
                "runs_running": running,
                "endpoints": {"sync": state.sync_url(&a.name)},
            })
        })
        .collect();
    Ok(Json(json!({ "agents": agents })).into_response())
}

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
    let versions = versions_json(&record);
    let deployments: Vec<Value> = record
        .deployments
        .iter()
        .map(|d| deployment_json(d, live_number == Some(d.deployment)))
        .collect();
    Ok(Json(json!({
        "agent": record.name,
        "created_at": rfc3339(record.created_at),
        "endpoints": state.endpoints(&record.name, record.live.as_ref().map(|d| d.config.mode).unwrap_or_default()),
        "live": record.live.as_ref().map(|d| deployment_json(d, true)),
        "draft": record.draft.redacted(),
        "draft_pending": draft_pending,
        "versions": versions,
        "deployments": deployments,
    }))
    .into_response())
}

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
    let uploaded = state.host.lifecycle.upload(&agent, bytes).await?;
    let status = if uploaded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let v = &uploaded.version;
    Ok((
        status,
        Json(json!({
            "agent": v.agent,
            "version": v.version,
            "digest": v.digest,
            "size": v.size,
            "created_at": rfc3339(v.created_at),
        })),
    )
        .into_response())
}

pub(crate) async fn list_versions(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let record = state.host.lifecycle.get(&agent).await?;
    Ok(Json(json!({"agent": agent, "versions": versions_json(&record)})).into_response())
}

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
    let mut view = version_json(&version, live);
    view["agent"] = json!(agent);
    view["wit"] = json!(wit);
    Ok(Json(view).into_response())
}

pub(crate) async fn delete_version(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentVersion(agent, n): AgentVersion,
) -> Answer {
    state.host.lifecycle.delete_version(&agent, n).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn get_config(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    Ok(Json(state.host.lifecycle.draft(&agent).await?.redacted()).into_response())
}

/// Small: a configuration is a few keys, not a data store.
const CONFIG_BODY_LIMIT: usize = 1 << 20;

pub(crate) async fn put_config(
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
        CONFIG_BODY_LIMIT,
    )
    .await?;
    let draft: AgentConfig = body::json(&bytes)?;
    let (saved, new_secret) = state.host.lifecycle.put_draft(&agent, draft).await?;
    let mut answer = saved.redacted();
    if let Some(secret) = new_secret {
        // Shown this once: the receiver needs it to verify signatures.
        answer["push"]["secret"] = secret.into();
    }
    Ok(Json(answer).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    version: Option<u32>,
}

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
    let deployed = state
        .host
        .lifecycle
        .deploy(&agent, request.version, key)
        .await?;
    let mut response = Json(deploy_answer(&state, &deployed.record)).into_response();
    if deployed.replayed {
        body::mark_replayed(&mut response);
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviewParams {
    version: Option<u32>,
}

/// What `POST …/deploy` with the same version would change, changing nothing: the console's
/// Confirm dialog and `gust deploy --dry-run` show it.
pub(crate) async fn preview(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    Params(params): Params<PreviewParams>,
) -> Answer {
    let preview = state.host.lifecycle.preview(&agent, params.version).await?;
    let changes_anything = preview.changes_anything();
    Ok(Json(json!({
        "agent": agent,
        "live": preview.live.as_ref().map(|d| deployment_json(d, true)),
        "version": version_json(&preview.version, preview.live.as_ref().is_some_and(|l| l.version == preview.version.version)),
        "config": preview.draft.redacted(),
        "endpoints": state.endpoints(&agent, preview.draft.mode),
        "changes": preview.changes,
        "changes_anything": changes_anything,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The deployment to return to; without it, the previous one.
    to: Option<u32>,
}

pub(crate) async fn rollback(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    headers: HeaderMap,
    request_body: Body,
) -> Answer {
    let request: RollbackRequest = optional_json(&state, &headers, request_body).await?;
    let record = state.host.lifecycle.rollback(&agent, request.to).await?;
    Ok(Json(deploy_answer(&state, &record)).into_response())
}

/// A small control-plane JSON body that may be left empty (all defaults), read within the
/// body budget.
async fn optional_json<T: Default + serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    request_body: Body,
) -> Result<T, ApiError> {
    let bytes = body::read(&state.body_budget, headers, request_body, CONFIG_BODY_LIMIT).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        Ok(body::json(&bytes)?)
    }
}

fn deploy_answer(state: &AppState, d: &DeploymentRecord) -> Value {
    json!({
        "agent": d.agent,
        "deployment": d.deployment,
        "version": d.version,
        "digest": d.digest,
        "deployed_at": rfc3339(d.deployed_at),
        "config": d.config.redacted(),
        "endpoints": state.endpoints(&d.agent, d.config.mode),
    })
}

/// Every version of an agent, the live one marked.
fn versions_json(record: &AgentRecord) -> Vec<Value> {
    let live_version = record.live.as_ref().map(|d| d.version);
    record
        .versions
        .iter()
        .map(|v| version_json(v, live_version == Some(v.version)))
        .collect()
}

fn version_json(v: &VersionRecord, live: bool) -> Value {
    json!({
        "version": v.version,
        "digest": v.digest,
        "size": v.size,
        "created_at": rfc3339(v.created_at),
        "last_deployed_at": v.last_deployed_at.map(rfc3339),
        "live": live,
    })
}

fn deployment_json(d: &DeploymentRecord, live: bool) -> Value {
    json!({
        "deployment": d.deployment,
        "version": d.version,
        "digest": d.digest,
        "config": d.config.redacted(),
        "deployed_at": rfc3339(d.deployed_at),
        "rolled_back_at": d.rolled_back_at.map(rfc3339),
        "live": live,
    })
}
