//! Running work off the caller's future: blocking work (file I/O, compiles) on the blocking
//! pool, and changes that must finish once begun.

use std::future::Future;

use crate::error::Error;

/// Runs `f` on the blocking pool. Once started it runs to the end even if the caller's
/// future is dropped.
///
/// # Errors
/// [`Error::Internal`] when the task panicked.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("a blocking task failed: {e}")))
}

/// Runs `change` to its end even if the caller's future is dropped (a client that
/// disconnects): the control plane relies on it to keep a commit and what follows it — the
/// registry swap, the removal of files — together.
///
/// # Errors
/// What `change` returns; [`Error::Internal`] when it panicked.
pub(crate) async fn to_completion<T: Send + 'static>(
    change: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(change)
        .await
        .map_err(|e| Error::internal(format!("a control-plane task failed: {e}")))?
}
