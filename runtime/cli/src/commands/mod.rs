//! The client commands, one file per noun. Each prints for people by default and the API's
//! answer with `--json`; errors carry their exit code (`crate::exit`).

mod access;
mod agents;
mod config;
mod deploy;
mod logs;
mod runs;
mod sse;

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::exit::Failure;
use crate::output::Out;
use crate::target::{self, Given};

pub(crate) use access::{
    health, keys_create, keys_list, keys_revoke, login, logout, push_test, rotate_admin_token,
    rotate_secret, stats, whoami,
};
pub(crate) use agents::{
    agents_delete, agents_list, agents_show, endpoint, versions_delete, versions_list,
    versions_show,
};
pub(crate) use config::config;
pub(crate) use deploy::{deploy, rollback, upload};
pub(crate) use logs::logs;
pub(crate) use runs::{run, run_action, runs_follow, runs_get, runs_list};

/// What a client command works with: the server and how to print.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) out: Out,
}

impl Ctx {
    pub(crate) fn connect(given: &Given, out: Out) -> anyhow::Result<Self> {
        let target = target::resolve(given)?;
        // Every route but the probes needs a token: say where to get one instead of asking
        // a server that would refuse.
        if target.source == target::Source::Nothing {
            return Err(Failure::auth(
                "no server and token to use: `gust login --url URL` stores them (or give \
                 --url with --token-stdin, or run where ./gust-data is)",
            )
            .into());
        }
        Ok(Self {
            client: Client::new(target, given.timeout),
            out,
        })
    }

    /// A JSON answer of `method path`.
    pub(crate) async fn call(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        self.client.json(self.client.request(method, path)).await
    }

    /// A JSON answer of `method path` with a JSON body.
    pub(crate) async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        self.client
            .json(self.client.request(method, path).json(body))
            .await
    }
}

/// Asks on the terminal before something that cannot be undone, or that changes what
/// callers get. Without a terminal a destructive command needs `--yes` (scripts say so
/// explicitly); `proceed_without_terminal` lets a command that always ran unattended, such
/// as `gust deploy <agent> <file>`, keep doing so.
pub(crate) fn confirm(
    question: &str,
    yes: bool,
    proceed_without_terminal: bool,
) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        if proceed_without_terminal {
            return Ok(());
        }
        return Err(Failure::usage(format!(
            "{question}: standard input is not a terminal to ask on; pass --yes"
        ))
        .into());
    }
    // Where stderr is closed the question goes unseen; the answer is still read.
    let _ = write!(std::io::stderr(), "{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        Err(Failure::new(
            crate::exit::Code::Error,
            "not confirmed; nothing was changed",
        )
        .into())
    }
}
