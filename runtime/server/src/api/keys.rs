//! Invoke keys (per agent) and the admin token's rotation.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use gust_core::clock::rfc3339;
use gust_model::{KeyRecord, RateLimit};

use super::auth::Admin;
use super::error::ApiError;
use super::openapi::{AgentPath, TAG_KEYS};
use super::paths::AgentName;
use super::{AppState, body};

type Answer = Result<Response, ApiError>;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    /// A name to tell keys apart.
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// Requests this key may make; unlimited when left out.
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

/// An invoke key as listed (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyView {
    /// `key_…`: names the key in a revoke.
    id: String,
    name: String,
    created_at: String,
    last_used_at: Option<String>,
    rate_limit: Option<RateLimit>,
}

/// A new key: the key itself, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    #[serde(flatten)]
    view: KeyView,
    /// `gust_…`: send it as `x-api-key` or `Authorization: Bearer`.
    key: String,
}

/// The agent's keys.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<KeyView>,
}

/// Creates an invoke key for this agent's data plane (sync calls and runs).
#[utoipa::path(post, path = "/v1/agents/{agent}/keys", tag = TAG_KEYS, operation_id = "create_key",
    params(AgentPath), security(("admin" = [])), request_body = NewKey,
    responses((status = 201, description = "The key, shown this once.", body = CreatedKey)))]
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
    // Shown this once; only its hash is kept.
    let answer = CreatedKey {
        view: KeyView::new(&record),
        key,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The agent's keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/agents/{agent}/keys", tag = TAG_KEYS, operation_id = "list_keys",
    params(AgentPath), security(("admin" = [])),
    responses((status = 200, description = "The keys.", body = KeyList)))]
pub(crate) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
    AgentName(agent): AgentName,
) -> Answer {
    let keys = state
        .host
        .keys
        .list(&agent)
        .await?
        .iter()
        .map(KeyView::new)
        .collect();
    Ok(Json(KeyList { keys }).into_response())
}

/// `{agent}` and `{key_id}`.
pub(crate) struct AgentKey(String, String);

/// The path of one key.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(dead_code, reason = "read by the OpenAPI document only")]
pub(crate) struct AgentKeyPath {
    /// The agent's name.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")]
    agent: String,
    /// The key's `id`.
    key_id: String,
}

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

/// Revokes a key at once.
#[utoipa::path(delete, path = "/v1/agents/{agent}/keys/{key_id}", tag = TAG_KEYS, operation_id = "revoke_key",
    params(AgentKeyPath), security(("admin" = [])),
    responses((status = 204, description = "Revoked.")))]
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
#[utoipa::path(post, path = "/v1/admin/rotate-token", tag = TAG_KEYS, operation_id = "rotate_admin_token",
    security(("admin" = [])),
    responses((status = 200, description = "The new token, shown this once.", body = RotatedToken),
        (status = 409, description = "The token was given with `--admin-token`, `--admin-token-file` or `GUST_ADMIN_TOKEN`: change it there.", body = super::error::ErrorBody)))]
pub(crate) async fn rotate_admin_token(_: Admin, State(state): State<Arc<AppState>>) -> Answer {
    let admin_token = state.admin.rotate().await?;
    Ok(Json(RotatedToken { admin_token }).into_response())
}

/// The new admin token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotatedToken {
    admin_token: String,
}

impl KeyView {
    fn new(record: &KeyRecord) -> Self {
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            created_at: rfc3339(record.created_at),
            last_used_at: record.last_used_at.map(rfc3339),
            rate_limit: record.rate_limit,
        }
    }
}
