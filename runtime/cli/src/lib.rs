//! The `gust` command: `gust serve` runs the host (`gust-server`); `new`, `build` and
//! `toolchain` work on the author's machine (`gust-project`); every other command is a
//! client of the HTTP API, which knows nothing of the server's insides (`target` says which
//! server and token it uses).

mod cli;
mod client;
mod commands;
mod exit;
mod output;
mod project;
mod serve;
mod target;
pub mod telemetry;

use std::process::ExitCode;

pub use cli::Cli;
use cli::{
    AdminCommand, AgentsCommand, Command, Global, KeysCommand, PushCommand, RunsCommand,
    ToolchainCommand, VersionsCommand,
};
use commands::Ctx;
use output::Out;

/// The command-line definition, for tests that walk it (and completions).
pub fn command() -> clap::Command {
    use clap::CommandFactory as _;
    Cli::command()
}

/// Runs a parsed command line to its exit code (documented in `exit`).
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = dispatch(cli).await;
    match &outcome {
        // `gust … | head` has what it wanted.
        Err(e) if output::is_reader_gone(e) => return ExitCode::SUCCESS,
        // Nowhere to say it when stderr is closed: the exit code still does.
        Err(e) => output::note!("gust: {e:#}"),
        Ok(()) => {}
    }
    exit::code(&outcome)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    let out = Out::new(global.json, global.quiet);
    match command {
        Command::Serve(args) => {
            refuse_client_flags(&global, "serve")?;
            serve::serve(*args).await
        }
        Command::New { agent, lang } => {
            refuse_client_flags(&global, "new")?;
            project::new(&agent, lang)
        }
        Command::Build { dir } => {
            refuse_client_flags(&global, "build")?;
            project::build_command(&dir, global.quiet)
        }
        Command::Toolchain {
            command: ToolchainCommand::Install { dir, languages },
        } => {
            refuse_client_flags(&global, "toolchain")?;
            project::install(dir, &languages)
        }
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics when it cannot write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut self::command(), "gust", &mut script);
            output::bytes_out(&script)
        }
        Command::Login => commands::login(&global, out).await,
        Command::Logout => commands::logout(global.profile.as_deref(), out),
        Command::Whoami => commands::whoami(&given(&global)?, out).await,
        Command::Health => commands::health(&given(&global)?, out).await,
        command => client_command(command, &Ctx::connect(&given(&global)?, out)?).await,
    }
}

/// The commands that speak the HTTP API.
async fn client_command(command: Command, c: &Ctx) -> anyhow::Result<()> {
    check_names(&command)?;
    match command {
        Command::Deploy {
            agent,
            file,
            version,
            yes,
            dry_run,
        } => commands::deploy(c, agent, file, version, yes, dry_run).await,
        Command::Upload { agent, file } => commands::upload(c, &agent, &file).await.map(|_| ()),
        Command::Endpoint { agent, lang } => commands::endpoint(c, &agent, lang).await,
        Command::Logs {
            agent,
            follow,
            limit,
        } => commands::logs(c, &agent, follow, limit).await,
        Command::Rollback { agent, to } => commands::rollback(c, &agent, to).await,
        Command::Agents { command } => match command.unwrap_or(AgentsCommand::List) {
            AgentsCommand::List => commands::agents_list(c).await,
            AgentsCommand::Show { agent } => commands::agents_show(c, &agent).await,
            AgentsCommand::Delete { agent, yes } => commands::agents_delete(c, &agent, yes).await,
        },
        Command::Agent { agent } => commands::agents_show(c, &agent).await,
        Command::Versions { command } => match command {
            VersionsCommand::List { agent } => commands::versions_list(c, &agent).await,
            VersionsCommand::Show { agent, version } => {
                commands::versions_show(c, &agent, version).await
            }
            VersionsCommand::Delete {
                agent,
                version,
                yes,
            } => commands::versions_delete(c, &agent, version, yes).await,
        },
        Command::Config { agent, changes } => commands::config(c, &agent, &changes).await,
        Command::Run {
            queued,
            wait,
            agent,
            input,
        } => commands::run(c, &agent, &input, queued, wait).await,
        Command::Runs { command } => match command {
            RunsCommand::Get {
                agent,
                id,
                wait,
                follow: false,
            } => commands::runs_get(c, &agent, &id, wait).await,
            RunsCommand::Get {
                agent,
                id,
                follow: true,
                ..
            } => commands::runs_follow(c, &agent, &id).await,
            RunsCommand::List {
                agent,
                status,
                limit,
                cursor,
            } => commands::runs_list(c, &agent, status.as_deref(), limit, cursor.as_deref()).await,
            RunsCommand::Cancel { agent, id } => {
                commands::run_action(c, &agent, &id, "cancel").await
            }
            RunsCommand::Rerun { agent, id } => commands::run_action(c, &agent, &id, "rerun").await,
            RunsCommand::Redeliver { agent, id } => {
                commands::run_action(c, &agent, &id, "redeliver").await
            }
        },
        Command::Keys { command } => match command {
            KeysCommand::Create {
                agent,
                name,
                rate,
                burst,
            } => commands::keys_create(c, &agent, &name, rate.zip(burst)).await,
            KeysCommand::List { agent } => commands::keys_list(c, &agent).await,
            KeysCommand::Revoke { agent, id } => commands::keys_revoke(c, &agent, &id).await,
        },
        Command::Stats => commands::stats(c).await,
        Command::Admin {
            command: AdminCommand::RotateToken,
        } => commands::rotate_admin_token(c).await,
        Command::Push { command } => match command {
            PushCommand::Test { agent } => commands::push_test(c, &agent).await,
            PushCommand::RotateSecret { agent } => commands::rotate_secret(c, &agent).await,
        },
        Command::Serve(_)
        | Command::New { .. }
        | Command::Build { .. }
        | Command::Toolchain { .. }
        | Command::Completions { .. }
        | Command::Login
        | Command::Logout
        | Command::Whoami
        | Command::Health => anyhow::bail!("internal: a local command reached the client"),
    }
}

/// Agent names and ids go into URL paths: one that is not a valid name (`x/../y`, `a?b`)
/// would reach another route, so it is refused before anything is sent.
fn check_names(command: &Command) -> anyhow::Result<()> {
    let (agent, id): (Option<&str>, Option<&str>) = match command {
        Command::Deploy { agent, .. } => (agent.as_deref(), None),
        Command::Upload { agent, .. }
        | Command::Rollback { agent, .. }
        | Command::Agent { agent }
        | Command::Config { agent, .. }
        | Command::Endpoint { agent, .. }
        | Command::Logs { agent, .. }
        | Command::Run { agent, .. } => (Some(agent), None),
        Command::Agents { command } => match command {
            Some(AgentsCommand::Show { agent } | AgentsCommand::Delete { agent, .. }) => {
                (Some(agent), None)
            }
            Some(AgentsCommand::List) | None => (None, None),
        },
        Command::Versions { command } => match command {
            VersionsCommand::List { agent }
            | VersionsCommand::Show { agent, .. }
            | VersionsCommand::Delete { agent, .. } => (Some(agent), None),
        },
        Command::Runs { command } => match command {
            RunsCommand::Get { agent, id, .. }
            | RunsCommand::Cancel { agent, id }
            | RunsCommand::Rerun { agent, id }
            | RunsCommand::Redeliver { agent, id } => (Some(agent), Some(id)),
            RunsCommand::List { agent, .. } => (Some(agent), None),
        },
        Command::Keys { command } => match command {
            KeysCommand::Create { agent, .. } | KeysCommand::List { agent } => (Some(agent), None),
            KeysCommand::Revoke { agent, id } => (Some(agent), Some(id)),
        },
        Command::Push { command } => match command {
            PushCommand::Test { agent } | PushCommand::RotateSecret { agent } => {
                (Some(agent), None)
            }
        },
        _ => (None, None),
    };
    if let Some(agent) = agent
        && !gust_model::valid_agent_name(agent)
    {
        return Err(exit::Failure::usage(format!(
            "`{agent}` is not an agent name (lower-case letters, digits and `-`, at most 63)"
        ))
        .into());
    }
    if let Some(id) = id
        && (id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(exit::Failure::usage(format!("`{id}` is not a run or key id")).into());
    }
    Ok(())
}

/// The connection the command line and environment give, with the token read from standard
/// input for `--token-stdin`, and a warning for a token on the command line.
fn given(global: &Global) -> anyhow::Result<target::Given> {
    let token = if global.token_stdin {
        Some(target::read_secret("token: ")?)
    } else {
        if global.token.is_some() {
            output::note!(
                "gust: warning: a token on the command line is visible to other users (ps) and \
                 kept in shell history; use `gust login`, --token-stdin or GUST_TOKEN"
            );
        }
        global.token.clone()
    };
    let flags = target::Pair {
        url: global.url.clone(),
        token,
    };
    Ok(target::Given::with_env(
        flags,
        global.profile.clone(),
        timeout(global)?,
    ))
}

/// How long the client waits for the server: `--timeout`, GUST_TIMEOUT, or the default.
pub(crate) fn timeout(global: &Global) -> anyhow::Result<std::time::Duration> {
    let seconds = match (global.timeout, target::env_var("GUST_TIMEOUT")) {
        (Some(seconds), _) => seconds,
        (None, Some(text)) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                exit::Failure::usage(format!(
                    "GUST_TIMEOUT must be a number of seconds above 0, not `{text}`"
                ))
            })?,
        (None, None) => return Ok(client::DEFAULT_TIMEOUT),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

/// The client's flags mean nothing to the commands that do not talk to a server; `--token`
/// on `gust serve` in particular would look like it set the admin token.
fn refuse_client_flags(global: &Global, command: &str) -> anyhow::Result<()> {
    let given = [
        (global.url.is_some(), "--url"),
        (global.token.is_some(), "--token"),
        (global.token_stdin, "--token-stdin"),
        (global.profile.is_some(), "--profile"),
        (global.timeout.is_some(), "--timeout"),
    ];
    if let Some((_, flag)) = given.iter().find(|(set, _)| *set) {
        let hint = if command == "serve" && flag.starts_with("--token") {
            " (the server's token is --admin-token-file or GUST_ADMIN_TOKEN)"
        } else {
            ""
        };
        return Err(exit::Failure::usage(format!(
            "{flag} is for commands that talk to a server, not `gust {command}`{hint}"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
