//! Running blocking work (SQLite, file I/O, compiles) off the async runtime.

use crate::error::Error;

/// Runs `f` on the blocking pool. Once started it runs to the end even if the caller's
/// future is dropped, which the control plane relies on to keep a commit and the swap that
/// follows it together.
///
/// # Errors
/// [`Error::Internal`] when the task panicked.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("a blocking task failed: {e}")))
}
