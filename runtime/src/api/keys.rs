//! Invoke keys (per agent) and the admin token's rotation.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Admin;
use super::paths::AgentName;
use super::{AppState, body};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::keys::{KeyRecord, RateLimit};

type Answer = Result<Response, Error>;

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
    let bytes = body::read(&headers, request_body, 64 << 10).await?;
    let new: NewKey = body::json(&bytes)?;
    let (key, record) = state
        .agents
        .create_key(&agent, &new.name, new.rate_limit)
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
        .agents
        .list_keys(&agent)
        .await?
        .iter()
        .map(key_json)
        .collect();
    Ok(Json(json!({"keys": keys})).into_response())
}

/// `{agent}` and `{key_id}`.
pub(crate) struct AgentKey(String, String);

impl FromRequestParts<Arc<AppState>> for AgentKey {
    type Rejection = Error;

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
    state.agents.revoke_key(&agent, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A new admin token, effective at once (the old one stops working), stored in the data
/// folder, shown in this answer only.
pub(crate) async fn rotate_admin_token(_: Admin, State(state): State<Arc<AppState>>) -> Answer {
    let Some(file) = state.admin_token_file.clone() else {
        return Err(Error::Conflict(
            "the admin token was given with --admin-token or GUST_ADMIN_TOKEN; change it there"
                .into(),
        ));
    };
    let _rotating = state.admin_rotation.lock().await;
    let token = crate::server::new_admin_token();
    let stored = token.clone();
    crate::blocking::blocking(move || crate::fsutil::write_atomic(&file, stored.as_bytes()))
        .await?
        .map_err(Error::Internal)?;
    state.admin_token.store(Arc::new(token.clone()));
    tracing::info!("the admin token was rotated");
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
