//! Invoke keys (per agent) and the admin token's rotation.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use gust_core::clock::rfc3339;
use gust_model::{KeyRecord, RateLimit};

use super::auth::Admin;
use super::error::ApiError;
use super::paths::AgentName;
use super::{AppState, body};

type Answer = Result<Response, ApiError>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    name: String,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

pub(crate) async fn create(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
    headers: HeaderMap,
    request_body: Body,
) -> Answer {
    let bytes = body::read(&state.body_budget, &headers, request_body, 64 << 10).await?;
    let new: NewKey = body::json(&bytes)?;
    let (key, record) = state
        .host
        .keys
        .create(&agent, &new.name, new.rate_limit)
        .await?;
    let mut answer = key_json(&record);
    // Shown this once; only its hash is kept.
    answer["key"] = key.into();
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub(crate) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let keys: Vec<_> = state
        .host
        .keys
        .list(&agent)
        .await?
        .iter()
        .map(key_json)
        .collect();
    Ok(Json(json!({"keys": keys})).into_response())
}

/// `{agent}` and `{key_id}`.
pub(crate) struct AgentKey(String, String);

impl FromRequestParts<Arc<AppState>> for AgentKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let agent = super::paths::agent(parts, state).await?;
        let id = super::paths::param(parts, state, "key_id").await?;
        Ok(Self(agent, id))
    }
}

pub(crate) async fn revoke(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentKey(agent, id): AgentKey,
) -> Answer {
    state.host.keys.revoke(&agent, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A new admin token, effective at once (the old one stops working), stored in the data
/// folder, shown in this answer only.
pub(crate) async fn rotate_admin_token(_: Admin, State(state): State<Arc<AppState>>) -> Answer {
    let token = state.admin.rotate().await?;
    Ok(Json(json!({"admin_token": token})).into_response())
}

fn key_json(record: &KeyRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "name": record.name,
        "created_at": rfc3339(record.created_at),
        "last_used_at": record.last_used_at.map(rfc3339),
        "rate_limit": record.rate_limit,
    })
}
