//! Exit codes, so scripts can tell why a command failed without reading its message.

use std::process::ExitCode;

/// The documented exit codes (README, "CLI"; `gust --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// Anything not listed below.
    Error = 1,
    /// A bad command line, or a request the server refused as malformed (400, 413).
    Usage = 2,
    /// No token, or the server refused it (401, 403).
    Auth = 3,
    /// No such agent, version, run, key or route (404).
    NotFound = 4,
    /// The server's state forbids it (409): a live version, nothing to roll back to, …
    Conflict = 5,
    /// The agent ran and did not succeed: a sync call answered an error, or a run ended
    /// failed, cancelled or expired.
    RunFailed = 6,
    /// The server could not be reached or has no room now (429, 503, 507): retry later.
    Unavailable = 7,
}

pub(crate) const HELP: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage: a bad command line, or a request the server refused as malformed
  3  authentication: no token, or the server refused it
  4  not found: no such agent, version, run or key
  5  conflict: the server's state forbids it (e.g. deleting the live version)
  6  run failed: the agent answered an error, or the run ended failed/cancelled/expired
  7  unavailable: the server could not be reached or has no room now; retry later
Output whose reader went away (`gust runs list | head -1`) ends the command with 0, unless
it already knows the run failed (6).";

/// An error that knows its exit code. Messages are one line for people; the code is for
/// scripts.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    pub(crate) code: Code,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Code::Usage, message)
    }

    pub(crate) fn auth(message: impl Into<String>) -> Self {
        Self::new(Code::Auth, message)
    }

    /// The code for an HTTP error answer of the server.
    pub(crate) fn code_for_status(status: u16, kind: &str) -> Code {
        match (status, kind) {
            (401 | 403, _) => Code::Auth,
            (404, _) => Code::NotFound,
            // 412: the state changed since it was read, as a conflict.
            (409 | 412, _) => Code::Conflict,
            (400 | 413, _) => Code::Usage,
            (422, "invalid_input") | (502 | 504, _) => Code::RunFailed,
            (429 | 503 | 507, _) => Code::Unavailable,
            _ => Code::Error,
        }
    }
}

/// The code of an error: the first `Failure` in its chain decides.
pub(crate) fn code_of(e: &anyhow::Error) -> Code {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<Failure>())
        .map_or(Code::Error, |f| f.code)
}

/// The exit code of a command's outcome.
pub(crate) fn code(outcome: &anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(code_of(e) as u8),
    }
}
