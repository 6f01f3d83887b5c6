//! The command line: `gust serve` runs the host; every other command is a client of its
//! HTTP API (server and token from `--url`/`--token` or `GUST_URL`/`GUST_TOKEN`).

mod client;
mod commands;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::BodyLimits;
use crate::server::{self, ServeOptions};

/// gust — host agent flows compiled to WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "gust", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host.
    Serve(ServeArgs),
    /// Upload a component (if a file is given) and deploy it; prints the endpoint.
    Deploy {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// A component file (`.wasm`) to upload first.
        #[arg(conflicts_with = "version")]
        file: Option<PathBuf>,
        /// Deploy this already uploaded version instead (default: the newest).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Upload a component as a new version, without deploying it.
    Upload {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name (created if needed).
        agent: String,
        /// The component file (`.wasm`).
        file: PathBuf,
    },
    /// Make the previous deployment live again (repeat to walk further back).
    Rollback {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
    },
    /// List agents.
    Agents {
        #[command(flatten)]
        conn: Connection,
    },
    /// Show an agent: live deployment, draft configuration, versions, deployments.
    Agent {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
    },
    /// Show or change an agent's draft configuration (it takes effect at the next deploy).
    Config {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name (created if needed).
        agent: String,
        /// Set a value the agent reads with `config(KEY)`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Remove a value.
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
        /// Wall-time limit of a sync call, in seconds.
        #[arg(long, value_name = "S")]
        sync_timeout: Option<u64>,
    },
    /// Call an agent synchronously and print its output.
    Run {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// The input: JSON text, `@file` to read a file, or `-` for standard input.
        input: String,
    },
}

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, Args)]
struct Connection {
    /// The gust server.
    #[arg(long, env = "GUST_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token (default: `./gust-data/admin-token` when that file exists).
    #[arg(long, env = "GUST_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder for the database, components, the compiled cache and the generated token.
    #[arg(long, default_value = "./gust-data")]
    data_dir: PathBuf,
    /// Base of the endpoint URLs printed in answers (for example behind a proxy); default
    /// `http://<listen address>`.
    #[arg(long)]
    public_url: Option<String>,
    /// Admin token; when neither this nor `GUST_ADMIN_TOKEN` is set, one is generated on
    /// first start and stored in the data folder.
    #[arg(long, env = "GUST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds that calls in flight get to finish after SIGINT or SIGTERM.
    #[arg(long, default_value_t = 30, value_name = "S")]
    shutdown_grace: u64,
    /// Largest component upload, in MiB.
    #[arg(long, default_value_t = 100, value_name = "MIB")]
    max_upload_mib: usize,
    /// Largest call input, in MiB.
    #[arg(long, default_value_t = 10, value_name = "MIB")]
    max_input_mib: usize,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `gust_runtime=debug`.
    #[arg(long, env = "GUST_LOG", default_value = "info")]
    log: String,
}

/// Starts logging to stderr: the server's filter for `serve`, warnings only for client
/// commands (whose output is for people and scripts).
pub fn init_tracing(cli: &Cli) {
    let filter = match &cli.command {
        Command::Serve(args) => args.log.clone(),
        _ => "warn".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a parsed command line to its exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Deploy {
            conn,
            agent,
            file,
            version,
        } => commands::deploy(&conn.client(), &agent, file.as_deref(), version).await,
        Command::Upload { conn, agent, file } => commands::upload(&conn.client(), &agent, &file)
            .await
            .map(|_| ()),
        Command::Rollback { conn, agent } => commands::rollback(&conn.client(), &agent).await,
        Command::Agents { conn } => commands::agents(&conn.client()).await,
        Command::Agent { conn, agent } => commands::agent(&conn.client(), &agent).await,
        Command::Config {
            conn,
            agent,
            set,
            unset,
            sync_timeout,
        } => commands::config(&conn.client(), &agent, &set, &unset, sync_timeout).await,
        Command::Run { conn, agent, input } => commands::run(&conn.client(), &agent, &input).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gust: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Connection {
    fn client(&self) -> client::Client {
        let token = self.token.clone().or_else(|| {
            std::fs::read_to_string("gust-data/admin-token")
                .ok()
                .map(|t| t.trim().to_owned())
        });
        client::Client::new(&self.url, token)
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let options = ServeOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        public_url: args.public_url,
        admin_token: args.admin_token,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        limits: BodyLimits {
            upload: args.max_upload_mib << 20,
            input: args.max_input_mib << 20,
        },
    };
    server::serve(options, shutdown_signal()).await
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot listen for shutdown signals; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("gust: second signal, exiting now");
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
