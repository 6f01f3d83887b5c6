//! Headers every response carries: a strict Content-Security-Policy (scripts and styles only
//! from this host's own files, so an injected inline script does not run), and the usual
//! refusals of sniffing, framing and referrers.
//!
//! A tower layer that sets four static headers on the way out, rather than axum's
//! `map_response`, which boxes a future per request: the sync path pays a few header inserts
//! and nothing else.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::Response;
use futures::FutureExt as _;
use futures::future::Map;
use tower::{Layer, Service};

/// No inline script or style, no eval, nothing from elsewhere; the page talks only to this
/// host and cannot be framed.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// See the module docs.
#[derive(Clone, Copy)]
pub(crate) struct SecurityHeaders;

impl<S> Layer<S> for SecurityHeaders {
    type Service = WithHeaders<S>;

    fn layer(&self, inner: S) -> WithHeaders<S> {
        WithHeaders { inner }
    }
}

/// The service [`SecurityHeaders`] wraps the router in.
#[derive(Clone)]
pub(crate) struct WithHeaders<S> {
    inner: S,
}

type Finish = fn(Result<Response, Infallible>) -> Result<Response, Infallible>;

impl<S> Service<Request> for WithHeaders<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Map<S::Future, Finish>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.inner.call(request).map(add_headers as Finish)
    }
}

fn add_headers(response: Result<Response, Infallible>) -> Result<Response, Infallible> {
    response.map(|mut response| {
        let headers = response.headers_mut();
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        response
    })
}
