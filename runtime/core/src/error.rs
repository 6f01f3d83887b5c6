//! The errors the use cases return and the HTTP API shows. Each variant is one `kind` of
//! the API's error shape; the server maps them to responses, in one place. The layers
//! below have their own errors ([`StoreError`], [`CallError`]), converted here, once.

use gust_model::Diagnostic;
use gust_store::StoreError;
use gust_wasm::CallError;

/// A failed operation, as a client should see it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid credentials that do not reach this route (a key of another agent).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such agent, version, or nothing deployed.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the state does not allow it (a live version, nothing to roll back to).
    #[error("{0}")]
    Conflict(String),
    /// 412: the request's `If-Match` (or `If-None-Match: *`) names a state that is no
    /// longer there: someone else changed it since the client read it.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413: the body is larger than the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: the upload is not a component this host can run.
    #[error("{message}")]
    InvalidComponent {
        /// A one-line summary.
        message: String,
        /// Every problem found.
        diagnostics: Vec<Diagnostic>,
    },
    /// 422: the guest refused its input (`invalid-input`).
    #[error("{0}")]
    InvalidInput(String),
    /// 429: the host or the caller's key is at its limit; retry later.
    #[error("{message}")]
    Overloaded {
        /// What is exhausted.
        message: String,
        /// When to retry, sent as `Retry-After`.
        retry_after: Option<std::time::Duration>,
        /// Which of admission's bounds was full (`agent`, `host`, `starting`, `memory`),
        /// for the refusals metric; `None` for other limits (a key's rate, the body budget).
        bound: Option<&'static str>,
    },
    /// 503: the database cannot be reached (several hosts sharing PostgreSQL). Nothing was
    /// committed, unless the connection was lost during the commit itself: a submission is
    /// retried safely with its `Idempotency-Key`.
    #[error("{0}")]
    Unavailable(String),
    /// 507: the agent's stored runs are at their bound, or the host's disk is almost full;
    /// nothing is evicted to make room.
    #[error("{0}")]
    StorageFull(String),
    /// 502: the guest returned `failed`; its message is passed on.
    #[error("{0}")]
    Failed(String),
    /// 502: the guest tried to grow its memory past its deployment's limit.
    #[error("the agent ran out of memory: {0}")]
    MemoryLimit(String),
    /// 502: the guest answered more bytes than its deployment allows.
    #[error("{0}")]
    OutputTooLarge(String),
    /// 502: the guest trapped. The detail goes to the host log only.
    #[error("the agent trapped")]
    Trap,
    /// 504: the call ran past its deadline.
    #[error("{0}")]
    Timeout(String),
    /// 500: something broke inside the host. The detail goes to the host log only.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// The `kind` string of the API's error shape.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Overloaded { .. } => "overloaded",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PreconditionFailed(_) => "precondition_failed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::InvalidComponent { .. } => "invalid_component",
            Self::InvalidInput(_) => "invalid_input",
            Self::StorageFull(_) => "storage_full",
            Self::Unavailable(_) => "unavailable",
            Self::Failed(_) => "failed",
            Self::Trap => "trap",
            Self::MemoryLimit(_) => "memory_limit",
            Self::OutputTooLarge(_) => "output_too_large",
            Self::Timeout(_) => "timeout",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Internal(e) => Self::Internal(e),
            StoreError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::InvalidInput(m) => Self::InvalidInput(m),
            CallError::Failed(m) => Self::Failed(m),
            CallError::MemoryLimit(m) => Self::MemoryLimit(m),
            CallError::OutputTooLarge(m) => Self::OutputTooLarge(m),
            CallError::Trap => Self::Trap,
            CallError::Timeout(m) => Self::Timeout(m),
            CallError::PoolExhausted => Self::Overloaded {
                message: CallError::PoolExhausted.to_string(),
                retry_after: Some(std::time::Duration::from_secs(1)),
                bound: None,
            },
        }
    }
}

impl Error {
    /// The error as the host's log tells it: an internal error with its causes (a missing
    /// file, a failed statement), which answers to clients leave out.
    #[must_use]
    pub fn logged(&self) -> String {
        match self {
            Self::Internal(e) => format!("internal error: {e:#}"),
            other => other.to_string(),
        }
    }

    /// An internal error with `message`.
    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        Self::Internal(anyhow::anyhow!("{message}"))
    }
}
