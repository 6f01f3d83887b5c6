//! The one place errors become HTTP responses: `{"error":{"kind","message"}}` everywhere
//! (plus `diagnostics` for an invalid component). A 500 or a trap says nothing internal;
//! the detail is logged here, once.
//!
//! [`ApiError`] carries a use case's [`Error`] to the edge: the response mapping is the
//! server's, so the error type of `gust-core` stays free of HTTP.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use gust_core::Error;
use gust_model::Diagnostic;

/// Every error answer: `{"error": {"kind", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `not_found`, `overloaded`,
    /// `invalid_component`, `invalid_input`, `failed`, `trap`, `timeout`, …
    kind: &'static str,
    /// For a person.
    message: String,
    /// An invalid component's problems, one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    diagnostics: Option<Vec<Diagnostic>>,
}

/// An [`Error`] on its way out as a response; `?` converts.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

pub(crate) fn status(e: &Error) -> StatusCode {
    match e {
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::InvalidComponent { .. } | Error::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Failed(_) | Error::Trap | Error::MemoryLimit(_) | Error::OutputTooLarge(_) => {
            StatusCode::BAD_GATEWAY
        }
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        // The use cases' errors grow with new kinds; until this mapping names one, it is
        // an internal error, which says nothing.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(error) = self;
        if let Error::Internal(_) = &error {
            tracing::error!("{}", error.logged());
        }
        let status = status(&error);
        let diagnostics = match &error {
            Error::InvalidComponent { diagnostics, .. } => Some(diagnostics.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                kind: error.kind(),
                message: error.to_string(),
                diagnostics,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so this connection cannot carry another
            // request; say so, or a client's connection pool would reuse it and fail.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        let retry_after = match &error {
            Error::Overloaded {
                retry_after: Some(after),
                ..
            } => Some(*after),
            // The database is reconnected with backoff; a second is a fair first retry.
            Error::Unavailable(_) => Some(std::time::Duration::from_secs(1)),
            _ => None,
        };
        if let Some(after) = retry_after {
            let seconds = after
                .as_secs()
                .saturating_add(u64::from(after.subsec_nanos() > 0));
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_say_nothing_internal() {
        let e = Error::Internal(anyhow::anyhow!("disk /secret/path is full"));
        assert_eq!(e.to_string(), "internal error");
        assert_eq!(status(&e), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status(&Error::Trap), StatusCode::BAD_GATEWAY);
        assert_eq!(
            status(&Error::InvalidInput("x".into())),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
