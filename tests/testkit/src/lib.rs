//! Starting `gust serve` from a test or a benchmark: one way for both, so they start hosts
//! alike (a free loopback port, the data folder given) and wait for the same sign that the
//! host listens — the `gust listening on <url>` line it prints on stdout.
//!
//! [`postgres`]: a throwaway PostgreSQL server, for tests of the store's PostgreSQL backend.
//! [`tls`]: the TLS side of a stand-in HTTPS API.

pub mod postgres;
pub mod tls;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

/// The line a host prints once it listens, before its URL.
const LISTENING: &str = "gust listening on ";

/// Adds `serve` on a free loopback port with `data_dir` to `command` (which runs the `gust`
/// binary, possibly through a wrapper such as `taskset` or a shell setting `ulimit`).
pub fn serve_args<'a>(command: &'a mut Command, data_dir: &Path) -> &'a mut Command {
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
}

/// A started host: its process (killed when this is dropped), its URL, and every line it
/// printed on stdout so far (the address line, a generated admin token).
pub struct Serving {
    /// The host's process.
    pub child: Child,
    /// Its base URL, `http://127.0.0.1:<port>` (or `https://…`).
    pub url: String,
    /// What it printed on stdout, line by line; still collected while it runs.
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// Spawns `command` with stdout piped and waits up to `within` for the host to say where it
/// listens.
///
/// # Errors
/// When the process cannot start, or exits or stays silent past `within` (the error says
/// which; the caller adds its log).
pub fn spawn(command: &mut Command, within: Duration) -> anyhow::Result<Serving> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("starting gust")?;
    let stdout = child.stdout.take().context("gust's stdout is not piped")?;
    // Read on a thread, so the wait has a deadline and the pipe never fills up.
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let collected = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix(LISTENING) {
                let _ = tx.send(url.to_owned());
            }
            collected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        }
    });
    let serving = |url| Serving {
        child,
        url,
        stdout: lines,
    };
    match rx.recv_timeout(within) {
        Ok(url) => Ok(serving(url)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let mut started = serving(String::new());
            let status = started.child.wait().ok();
            anyhow::bail!("gust exited before it listened ({status:?})")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            drop(serving(String::new()));
            anyhow::bail!("gust did not listen within {}s", within.as_secs())
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
