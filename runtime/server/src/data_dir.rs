//! The data folder: private to the user gust runs as, taken by one process at a time, and
//! where a generated admin token is kept.
//!
//! It holds push access tokens, signing secrets and configuration values (API keys), so it
//! is treated as ssh treats its keys: created 0700 (the database 0600), loosened read or
//! execute bits tightened at start with a log line, and a folder that another user owns or
//! that group or others may write refused, since someone else could have put files there.

use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;

use anyhow::Context as _;
use gust_core::auth::new_admin_token;

/// Permission bits of the data folder.
const FOLDER_MODE: u32 = 0o700;
/// Permission bits of the database and its WAL (SQLite gives the WAL and shared-memory
/// files the database file's mode).
const FILE_MODE: u32 = 0o600;

/// Creates the data folder (0700) or checks an existing one; see the module docs.
///
/// # Errors
/// When it cannot be created, or is owned by another user or writable by group or others.
pub(crate) fn prepare(data_dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(FOLDER_MODE)
            .create(data_dir)
            .with_context(|| format!("creating the data folder {}", data_dir.display())),
        Err(e) => Err(e).with_context(|| format!("reading the data folder {}", data_dir.display())),
        Ok(meta) => {
            anyhow::ensure!(meta.is_dir(), "{} is not a folder", data_dir.display());
            let mode = meta.permissions().mode() & 0o777;
            match verdict(meta.uid(), mode, rustix::process::geteuid().as_raw()) {
                Verdict::Fine => Ok(()),
                Verdict::Tighten => {
                    std::fs::set_permissions(
                        data_dir,
                        std::fs::Permissions::from_mode(FOLDER_MODE),
                    )
                    .with_context(|| format!("tightening {}", data_dir.display()))?;
                    tracing::warn!(
                        data_dir = %data_dir.display(),
                        "the data folder was readable by others (mode {mode:o}); tightened to 700"
                    );
                    Ok(())
                }
                Verdict::Refuse(why) => anyhow::bail!(
                    "refusing to use the data folder {}: {why}; it holds secrets (fix its owner or mode, e.g. `chmod 700`)",
                    data_dir.display()
                ),
            }
        }
    }
}

/// Makes the database file private before SQLite opens it (its WAL follows its mode), and
/// tightens one that an earlier gust created 0644.
///
/// # Errors
/// When the file cannot be created or its mode set.
pub(crate) fn private_file(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("tightening {}", path.display()))?;
    }
    // SQLite's WAL and shared-memory files left by an earlier run keep their old mode.
    for suffix in ["-wal", "-shm"] {
        let side = path.with_file_name(format!(
            "{}{suffix}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        if side.exists() {
            std::fs::set_permissions(&side, std::fs::Permissions::from_mode(FILE_MODE))
                .with_context(|| format!("tightening {}", side.display()))?;
        }
    }
    Ok(())
}

/// What to do with an existing data folder.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// Others may read or enter it: tighten to 0700.
    Tighten,
    /// Someone else could have written it: refuse, saying why.
    Refuse(String),
}

fn verdict(owner: u32, mode: u32, me: u32) -> Verdict {
    if owner != me {
        return Verdict::Refuse(format!(
            "it is owned by user {owner}, and gust runs as user {me}"
        ));
    }
    if mode & 0o022 != 0 {
        return Verdict::Refuse(format!("group or others may write it (mode {mode:o})"));
    }
    if mode & 0o077 != 0 {
        return Verdict::Tighten;
    }
    Verdict::Fine
}

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

/// The file in the data folder that says where this host is reached from this machine
/// (`http://127.0.0.1:8080`), written at every start: the CLI sends the folder's admin token
/// only there.
pub(crate) const LOCAL_URL_FILE: &str = "url";

/// The admin token: the one given (then it has no file: it is changed where it was given),
/// else the one stored in the data folder, else a new one that is stored (mode 0600) and
/// printed this once.
pub(crate) fn admin_token(
    given: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<(String, Option<std::path::PathBuf>)> {
    if let Some(token) = given_admin_token(given)? {
        return Ok((token, None));
    }
    if let Some((token, path)) = stored_admin_token(data_dir)? {
        return Ok((token, Some(path)));
    }
    let token = new_admin_token();
    let path = keep_new_admin_token(data_dir, &token)?;
    Ok((token, Some(path)))
}

/// Stores a newly made admin token in the data folder (mode 0600) and prints it this once.
pub(crate) fn keep_new_admin_token(
    data_dir: &Path,
    token: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = data_dir.join("admin-token");
    // The temporary file `write_atomic` renames into place is created with mode 0600.
    gust_model::fs::write_atomic(&path, token.as_bytes())?;
    println!(
        "Generated an admin token, stored in {} (it is shown only this once):\n  {token}",
        path.display()
    );
    Ok(path)
}

/// The admin token given with a flag, a file or the environment, trimmed.
pub(crate) fn given_admin_token(given: Option<String>) -> anyhow::Result<Option<String>> {
    let Some(token) = given else { return Ok(None) };
    let token = token.trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "the admin token is empty");
    Ok(Some(token))
}

/// The admin token stored in the data folder by an earlier start, with its file.
pub(crate) fn stored_admin_token(
    data_dir: &Path,
) -> anyhow::Result<Option<(String, std::path::PathBuf)>> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => Ok(Some((token.trim().to_owned(), path))),
        Ok(_) => anyhow::bail!(
            "{} is empty; delete it to generate a new token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Bytes free for gust in the file system of `data_dir` (what an unprivileged user may
/// still write).
///
/// # Errors
/// When the file system cannot be asked.
pub(crate) fn free_bytes(data_dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(data_dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::{Verdict, verdict};

    #[test]
    fn private_folders_pass_readable_ones_are_tightened_writable_ones_refused() {
        assert_eq!(verdict(1000, 0o700, 1000), Verdict::Fine);
        assert_eq!(verdict(1000, 0o755, 1000), Verdict::Tighten);
        assert_eq!(verdict(1000, 0o750, 1000), Verdict::Tighten);
        assert!(matches!(verdict(1000, 0o775, 1000), Verdict::Refuse(why) if why.contains("775")));
        assert!(matches!(verdict(1000, 0o707, 1000), Verdict::Refuse(_)));
        // Owned by another user: refused. (A container's volume owned by the image's user,
        // which gust runs as, is the first case: it passes.)
        assert!(matches!(verdict(0, 0o700, 1000), Verdict::Refuse(why) if why.contains("user 0")));
    }
}
