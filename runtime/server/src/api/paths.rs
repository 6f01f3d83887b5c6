//! Path parameters, validated, with errors in the API's shape (axum's own rejections are
//! plain text).

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use gust_core::Error;
use gust_model::name::{AGENT_NAME_RULE, valid_agent_name};

use super::AppState;
use super::error::ApiError;

/// A valid `{agent}` path segment.
pub(crate) struct AgentName(pub(crate) String);

/// `{agent}` and `{version}`.
pub(crate) struct AgentVersion(pub(crate) String, pub(crate) u32);

pub(crate) async fn param(
    parts: &mut Parts,
    state: &Arc<AppState>,
    name: &str,
) -> Result<String, Error> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| Error::BadRequest(format!("bad path: {e}")))?;
    params
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("route has no `{name}` parameter")))
}

pub(crate) async fn agent(parts: &mut Parts, state: &Arc<AppState>) -> Result<String, Error> {
    let name = param(parts, state, "agent").await?;
    if valid_agent_name(&name) {
        Ok(name)
    } else {
        Err(Error::BadRequest(AGENT_NAME_RULE.into()))
    }
}

impl FromRequestParts<Arc<AppState>> for AgentName {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(agent(parts, state).await?))
    }
}

impl FromRequestParts<Arc<AppState>> for AgentVersion {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let agent = agent(parts, state).await?;
        let raw = param(parts, state, "version").await?;
        let version = raw
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::BadRequest(format!("`{raw}` is not a version number")))?;
        Ok(Self(agent, version))
    }
}

/// `{agent}` and `{run_id}`. A run id that is not even well-formed names no run: 404.
pub(crate) struct AgentRun(pub(crate) String, pub(crate) String);

impl FromRequestParts<Arc<AppState>> for AgentRun {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let agent = agent(parts, state).await?;
        let id = param(parts, state, "run_id").await?;
        if !is_run_id(&id) {
            return Err(Error::NotFound(format!("no run `{id}`")).into());
        }
        Ok(Self(agent, id))
    }
}

/// Whether `id` has the form of a run id (`run_` and 32 hexadecimal digits).
pub(crate) fn is_run_id(id: &str) -> bool {
    id.strip_prefix("run_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Query parameters, with errors in the API's shape.
pub(crate) struct Params<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned + Send> FromRequestParts<Arc<AppState>> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError(Error::BadRequest(e.body_text())))
    }
}
