//! Who is calling: the admin (everywhere), or an agent's invoke key (that agent's data plane
//! only). Credentials come in `Authorization: Bearer …` or `x-api-key: …`, never in the URL;
//! they are compared in constant time and never logged or echoed.
//!
//! A request with neither header may carry the console's session cookie, which stands for
//! the admin. A browser sends cookies along with requests other sites make it send, so a
//! state-changing request authorised by the cookie must also come from the console's own
//! origin (its `Origin` header); requests with a token or key are not affected.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use tower::{Layer, Service};

use gust_core::Error;
use gust_core::auth::Key;

use super::AppState;
use super::error::ApiError;
use super::paths;

/// Query parameters that look like credentials: refused wherever they appear, because URLs
/// end up in logs, histories and `Referer` headers.
const CREDENTIAL_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "admin_token",
    "api_key",
    "apikey",
    "key",
    "x-api-key",
];

/// Refuses requests that carry a credential in the query string (400): a parameter named
/// like one (after percent-decoding), or a value that looks like a gust key or token.
///
/// A tower layer around every route rather than `axum::middleware::from_fn`, which boxes the
/// inner service and a future on every request: this one answers at once or passes the
/// request through.
#[derive(Clone)]
pub(crate) struct RefuseCredentialsInQuery {
    state: Arc<AppState>,
}

impl RefuseCredentialsInQuery {
    pub(crate) fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for RefuseCredentialsInQuery {
    type Service = QueryGuard<S>;

    fn layer(&self, inner: S) -> QueryGuard<S> {
        QueryGuard {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// The service [`RefuseCredentialsInQuery`] wraps each route in.
#[derive(Clone)]
pub(crate) struct QueryGuard<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Service<Request> for QueryGuard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if carries_credential(&request, &self.state) {
            let refused = Error::BadRequest(
                "credentials go in the `Authorization` or `x-api-key` header, never in the URL"
                    .into(),
            );
            return Either::Left(ready(Ok(ApiError(refused).into_response())));
        }
        Either::Right(self.inner.call(request))
    }
}

fn carries_credential(request: &Request, state: &AppState) -> bool {
    request.uri().query().is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes()).any(|(name, value)| {
            CREDENTIAL_PARAMS.contains(&name.to_ascii_lowercase().as_str())
                || value.starts_with("gust_")
                || state.admin.matches(value.as_bytes())
        })
    })
}

enum Caller {
    Admin,
    Key(Arc<Key>),
}

async fn caller(parts: &Parts, state: &AppState) -> Result<Caller, Error> {
    let bearer = match parts.headers.get(AUTHORIZATION) {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    Error::Unauthorized(
                        "the `Authorization` header must be `Bearer <token>`".into(),
                    )
                })?,
        ),
        None => None,
    };
    let api_key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let Some(presented) = bearer.or(api_key.map(str::trim)) else {
        return match session_cookie(&parts.headers) {
            Some(id) => {
                // The origin first: a refused cross-site request must not keep a session
                // alive.
                same_origin(parts, state)?;
                if state.admin.sessions().touch(id).await {
                    Ok(Caller::Admin)
                } else {
                    Err(Error::Unauthorized(
                        "the console session ended (signed out, idle, or the admin token was rotated); sign in again".into(),
                    ))
                }
            }
            None => Err(Error::Unauthorized(
                "missing credentials: send `Authorization: Bearer <token>` or `x-api-key: <key>`"
                    .into(),
            )),
        };
    };
    let digest = gust_core::auth::digest(presented.as_bytes());
    if state.admin.matches_digest(&digest) {
        return Ok(Caller::Admin);
    }
    match state.host.keys.ring().find_digest(&digest) {
        Some(key) => Ok(Caller::Key(key)),
        None => Err(Error::Unauthorized("the token is not valid".into())),
    }
}

/// The console's session cookie.
pub(crate) const SESSION_COOKIE: &str = "gust_session";

/// The value of the session cookie, if the request has one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        })
}

/// The CSRF check of a request authorised by the session cookie: reading is free (a page of
/// another site cannot read the answer), anything else must name this host as its `Origin`
/// — the scheme it serves with the `Host` it was sent to, or the public URL's origin (behind
/// a proxy).
pub(crate) fn same_origin(parts: &Parts, state: &AppState) -> Result<(), Error> {
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let origin = parts.headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = parts.headers.get(HOST).and_then(|v| v.to_str().ok());
    // The scheme this host serves, not either: under TLS, a page injected into plain
    // `http://` on the same name must not pass.
    let scheme = if state.tls { "https://" } else { "http://" };
    let ours = |origin: &str| {
        host.is_some_and(|host| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        }) || origin.eq_ignore_ascii_case(public_origin(&state.public_url))
    };
    match origin {
        Some(origin) if ours(origin) => Ok(()),
        Some(origin) => Err(Error::Forbidden(format!(
            "a request from `{origin}` may not use the console's session; send a token instead"
        ))),
        None => Err(Error::Forbidden(
            "a state-changing request with the console's session must carry an `Origin` header"
                .into(),
        )),
    }
}

/// `scheme://host[:port]` of a URL (the public URL may have a path).
fn public_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..]
        .find('/')
        .map_or(url, |end| &url[..after_scheme + end])
}

/// The admin: required by the control plane. Put it first among a handler's arguments so
/// that an unauthenticated request learns nothing else.
pub(crate) struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match caller(parts, state).await? {
            Caller::Admin => Ok(Admin),
            Caller::Key(_) => Err(Error::Forbidden(
                "an invoke key only calls its own agent; this route needs the admin token".into(),
            )
            .into()),
        }
    }
}

/// A caller of an agent's data plane (calls and runs): the admin, or a key of the agent in
/// the path, within the key's rate limit. Carries the (validated) agent name.
pub(crate) struct Invoker(pub(crate) String);

impl FromRequestParts<Arc<AppState>> for Invoker {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let who = caller(parts, state).await?;
        let agent = paths::agent(parts, state).await?;
        if let Caller::Key(key) = who {
            if *key.agent != *agent {
                return Err(Error::Forbidden(format!(
                    "this key belongs to another agent than `{agent}`"
                ))
                .into());
            }
            if let Err(wait) = key.admit() {
                return Err(Error::Overloaded {
                    message: "this key's rate limit is exhausted".into(),
                    retry_after: Some(wait.max(Duration::from_millis(1))),
                    bound: None,
                }
                .into());
            }
        }
        Ok(Self(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_origin_drops_the_path() {
        assert_eq!(public_origin("https://a.example/gust"), "https://a.example");
        assert_eq!(
            public_origin("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, "a=1; gust_session=s1; b=2".parse().unwrap());
        assert_eq!(session_cookie(&headers), Some("s1"));
        headers.clear();
        headers.append(COOKIE, "gust_session=".parse().unwrap());
        assert_eq!(session_cookie(&headers), None);
    }
}
