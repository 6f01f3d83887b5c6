use std::fmt;

/// Why a run did not succeed, as the caller will see it.
///
/// The two kinds are kept apart because callers act on them differently: an
/// [`Error::InvalidInput`] means "fix your request" (HTTP 422), an [`Error::Failed`] means
/// "the flow could not finish" (HTTP 502) and may succeed when retried.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input was not acceptable. Input that is not valid JSON for the agent's input type
    /// becomes this error without the author writing anything.
    InvalidInput(String),
    /// The flow failed; the message is passed on to the caller as it is.
    Failed(String),
}

impl Error {
    /// The caller's input is not acceptable.
    pub fn invalid_input(message: impl fmt::Display) -> Self {
        Self::InvalidInput(message.to_string())
    }

    /// The flow could not finish.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::Failed(message.to_string())
    }

    /// The message the caller will read.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m) | Self::Failed(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Turns any error into a gust [`Error`] with `?`, adding what the flow was doing.
///
/// ```
/// use gust_sdk::{Error, ResultExt};
///
/// fn parse_limit(raw: &str) -> Result<u32, Error> {
///     raw.parse::<u32>().or_invalid_input("`limit` must be a whole number")
/// }
/// assert_eq!(parse_limit("7"), Ok(7));
/// assert!(matches!(parse_limit("x"), Err(Error::InvalidInput(m)) if m.starts_with("`limit`")));
/// ```
pub trait ResultExt<T> {
    /// Maps the error to [`Error::Failed`] with `"{context}: {error}"`.
    ///
    /// # Errors
    /// When `self` is an error.
    fn or_failed(self, context: &str) -> Result<T, Error>;

    /// Maps the error to [`Error::InvalidInput`] with `"{context}: {error}"`.
    ///
    /// # Errors
    /// When `self` is an error.
    fn or_invalid_input(self, context: &str) -> Result<T, Error>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn or_failed(self, context: &str) -> Result<T, Error> {
        self.map_err(|e| Error::Failed(format!("{context}: {e}")))
    }

    fn or_invalid_input(self, context: &str) -> Result<T, Error> {
        self.map_err(|e| Error::InvalidInput(format!("{context}: {e}")))
    }
}
