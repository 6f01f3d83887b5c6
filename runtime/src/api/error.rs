//! The one place errors become HTTP responses: `{"error":{"kind","message"}}` everywhere
//! (plus `diagnostics` for an invalid component). A 500 or a trap says nothing internal;
//! the detail is logged here, once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

fn status(e: &Error) -> StatusCode {
    match e {
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::InvalidComponent { .. } | Error::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Failed(_) | Error::Trap | Error::MemoryLimit(_) | Error::OutputTooLarge(_) => {
            StatusCode::BAD_GATEWAY
        }
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(e) = &self {
            tracing::error!("internal error: {e:#}");
        }
        let status = status(&self);
        let mut body = json!({"kind": self.kind(), "message": self.to_string()});
        if let Error::InvalidComponent { diagnostics, .. } = &self {
            body["diagnostics"] = json!(diagnostics);
        }
        let mut response = (status, Json(json!({ "error": body }))).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so this connection cannot carry another
            // request; say so, or a client's connection pool would reuse it and fail.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if let Error::Overloaded {
            retry_after: Some(after),
            ..
        } = &self
        {
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
