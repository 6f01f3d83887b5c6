//! The web console: the Agent endpoint page and the pages around it, served at `/` from
//! files compiled into the binary (no build step, no CDN: it works offline), and the
//! sign-in that gives the browser a session cookie.
//!
//! The page is plain HTML, CSS and ES modules (`assets/`) that call the same `/v1` API as
//! every other client, authorised by the session cookie (see `api/auth.rs` for the cookie
//! and its Origin check). Nothing here reads the store: what the page shows is what the API
//! answers.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use gust_core::Error;
use gust_core::auth::{SESSION_IDLE, SESSION_LIFETIME};

use crate::api::auth::{SESSION_COOKIE, same_origin, session_cookie};
use crate::api::error::ApiError;
use crate::api::{AppState, body};

/// The console's files: path under `/console/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dom.js"),
    ),
    (
        "agent.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/agent.js"),
    ),
    (
        "runs.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/runs.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

const INDEX: &str = include_str!("assets/index.html");

/// The console's routes, merged into the API's router.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route(
            "/console/session",
            get(session).post(sign_in).delete(sign_out),
        )
        .route("/console/{file}", get(asset))
}

async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(path, _, _)| *path == name) {
        Some((_, content_type, text)) => file(content_type, text),
        None => ApiError(Error::NotFound(format!("no console file `{name}`"))).into_response(),
    }
}

fn file(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // The files change with the binary: revalidate rather than keep a stale page
            // after an upgrade.
            (CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

/// Whether this browser is signed in, and what the page needs to know about the host.
async fn session(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let open = match session_cookie(&headers) {
        Some(id) => state.admin.sessions().touch(id).await,
        None => false,
    };
    if open {
        Json(json!({
            "signed_in": true,
            "idle_timeout_s": SESSION_IDLE.as_secs(),
            "lifetime_s": SESSION_LIFETIME.as_secs(),
            "public_url": state.public_url,
            "version": env!("CARGO_PKG_VERSION"),
        }))
        .into_response()
    } else {
        // Not an error: every visit starts by asking, and the answer decides which page
        // shows.
        Json(json!({"signed_in": false})).into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// Sign-in bodies are one token.
const SIGN_IN_LIMIT: usize = 4096;

/// The admin token in, a session cookie out. The token is checked like a bearer token and
/// never stored by the page.
async fn sign_in(State(state): State<Arc<AppState>>, parts: Parts, request_body: Body) -> Response {
    match open_session(&state, &parts, request_body).await {
        Ok(id) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            response
                .headers_mut()
                .insert(SET_COOKIE, cookie(&state, &id, None));
            response
        }
        Err(e) => ApiError(e).into_response(),
    }
}

async fn open_session(
    state: &AppState,
    parts: &Parts,
    request_body: Body,
) -> Result<String, Error> {
    // A page of another site must not sign this browser in (login CSRF), either.
    same_origin(parts, state)?;
    let bytes = body::read(
        &state.body_budget,
        &parts.headers,
        request_body,
        SIGN_IN_LIMIT,
    )
    .await?;
    let SignIn { token } = body::json(&bytes)?;
    if !state.admin.matches(token.trim().as_bytes()) {
        return Err(Error::Unauthorized("that is not the admin token".into()));
    }
    state.admin.sessions().create().await
}

async fn sign_out(State(state): State<Arc<AppState>>, parts: Parts) -> Response {
    if let Err(e) = same_origin(&parts, &state) {
        return ApiError(e).into_response();
    }
    if let Some(id) = session_cookie(&parts.headers)
        && let Err(e) = state.admin.sessions().end(id).await
    {
        return ApiError(e).into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, cookie(&state, "", Some(0)));
    response
}

/// The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's
/// request carries it), Secure when the host or its public URL is https. Without `Max-Age` it ends with the
/// browser; the host ends it sooner when idle.
fn cookie(state: &AppState, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut cookie = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
    // Behind a TLS proxy the browser speaks https to the public URL although this host does
    // not.
    if state.tls || state.public_url.starts_with("https://") {
        cookie.push_str("; Secure");
    }
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}
