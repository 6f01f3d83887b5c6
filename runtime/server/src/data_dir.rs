//! The data folder: taken by one process at a time, and where a generated admin token is
//! kept.

use std::path::Path;

use anyhow::Context as _;
use gust_core::auth::new_admin_token;

/// Takes the data folder for this process alone. Two hosts on one folder would both
/// execute its queued runs; and at start, the run queue treats every run that was running
/// as abandoned, which only holds when no other process can be running it.
pub(crate) fn lock(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another gust process is using the data folder {}",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The admin token: the one given (then it has no file: it is changed where it was given),
/// else the one stored in the data folder, else a new one that is stored (mode 0600) and
/// printed this once.
pub(crate) fn admin_token(
    given: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<(String, Option<std::path::PathBuf>)> {
    if let Some(token) = given {
        let token = token.trim().to_owned();
        anyhow::ensure!(!token.is_empty(), "the admin token is empty");
        return Ok((token, None));
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_owned(), Some(path))),
        Ok(_) => anyhow::bail!(
            "{} is empty; delete it to generate a new token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = new_admin_token();
    // The temporary file `write_atomic` renames into place is created with mode 0600.
    gust_model::fs::write_atomic(&path, token.as_bytes())?;
    println!(
        "Generated an admin token, stored in {} (it is shown only this once):\n  {token}",
        path.display()
    );
    Ok((token, Some(path)))
}
