//! The `gust` command: `gust serve` runs the host (`gust-server`); `new`, `build` and
//! `toolchain` work on the author's machine (`gust-project`); every other command is a
//! client of the HTTP API (server and token from `--url`/`--token` or
//! `GUST_URL`/`GUST_TOKEN`), which knows nothing of the server's insides.

mod client;
mod commands;
mod project;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use gust_project::Language;
use gust_server::options::{
    AdmissionLimits, BodyLimits, HttpSettings, Limits, Maxima, OutboundSettings, PushSettings,
    RunSettings, ServeOptions, Tuning,
};

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
    /// Start an agent project in a new folder `<AGENT>`, in Rust, Python or JavaScript.
    New {
        /// The agent's name (also the folder's).
        agent: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: Language,
    },
    /// Build the agent project in this folder (or DIR); prints where the component is.
    Build {
        /// The project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// The pinned toolchains that build Python and JavaScript agents.
    Toolchain {
        #[command(subcommand)]
        command: ToolchainCommand,
    },
    /// Upload a component (if a file is given) and deploy it; prints the endpoints.
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
    /// Make the previous deployment live again (repeat to walk further back), or the one
    /// named with `--to` (safe to repeat).
    Rollback {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// The deployment to return to (see `gust agent`).
        #[arg(long, value_name = "DEPLOYMENT")]
        to: Option<u32>,
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
        #[command(flatten)]
        changes: ConfigChanges,
    },
    /// Call an agent and print its output; with `--async`, queue a run and print its id.
    Run {
        #[command(flatten)]
        conn: Connection,
        /// Queue the run instead of waiting for it; prints the run id.
        #[arg(long = "async")]
        queued: bool,
        /// The agent's name.
        agent: String,
        /// The input: JSON text, `@file` to read a file, or `-` for standard input.
        input: String,
    },
    /// Queued runs: show, list, cancel, re-run, redeliver.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Push delivery: send a test event, rotate the signing secret.
    Push {
        #[command(subcommand)]
        command: PushCommand,
    },
    /// Per-agent invoke keys: create, list, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Host administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make an invoke key for an agent; prints it (only this once).
    Create {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// A name for the key (who or what uses it).
        name: String,
        /// Sustained requests per second allowed with this key.
        #[arg(long, requires = "burst")]
        rate: Option<f64>,
        /// Requests allowed at once above the sustained rate.
        #[arg(long, requires = "rate")]
        burst: Option<u32>,
    },
    /// List an agent's keys (ids, names, created and last-used times).
    List {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
    },
    /// Revoke a key at once.
    Revoke {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// The key id (`key_…`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ToolchainCommand {
    /// Install componentize-py and componentize-js (or the named ones) now, rather than at
    /// the first `gust build` that needs them; prints where they are.
    Install {
        /// Install into this folder instead of the per-user cache.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Which: `python`, `js` (default: both).
        #[arg(value_enum)]
        languages: Vec<Language>,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Replace the admin token now, without a restart; prints the new one (only this once).
    RotateToken {
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Show a run; with `--wait`, a live status line until it ends, then the result.
    Get {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
        /// Wait for the run to end.
        #[arg(long)]
        wait: bool,
    },
    /// List an agent's runs, newest first.
    List {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// Only runs in this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Cancel a queued or running run.
    Cancel {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
    },
    /// Queue a new run with the same input, on the live deployment.
    Rerun {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
    },
    /// Push an ended run's event again (same `webhook-id`).
    Redeliver {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PushCommand {
    /// Send a `push.test` event to the live deployment's push URL.
    Test {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
    },
    /// Make a new signing secret now (the old one also signs for 24 h); prints it once.
    RotateSecret {
        #[command(flatten)]
        conn: Connection,
        /// The agent's name.
        agent: String,
    },
}

/// Changes `gust config` makes to the draft; with none, it only shows the draft.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ConfigChanges {
    /// Set a value the agent reads with `config(KEY)`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,
    /// Remove a value.
    #[arg(long = "unset", value_name = "KEY")]
    pub(crate) unset: Vec<String>,
    /// Wall-time limit of a sync call, in seconds.
    #[arg(long, value_name = "S")]
    pub(crate) sync_timeout: Option<u64>,
    /// Wall-time limit of one attempt of a queued run, in seconds, or `none`.
    #[arg(long, value_name = "S|none")]
    pub(crate) async_timeout: Option<String>,
    /// How long a run may wait in the queue before it expires, in seconds.
    #[arg(long, value_name = "S")]
    pub(crate) max_queue_wait: Option<u64>,
    /// `async` pushes every queued run's result to the push URL; `sync` does not.
    #[arg(long, value_parser = ["sync", "async"])]
    pub(crate) mode: Option<String>,
    /// Where results are pushed (async mode).
    #[arg(long, value_name = "URL", conflicts_with = "no_push")]
    pub(crate) push_url: Option<String>,
    /// Sent as `Authorization: Bearer …` with every push.
    #[arg(long, value_name = "TOKEN", conflicts_with = "no_push")]
    pub(crate) push_token: Option<String>,
    /// Remove the push target (and switch to sync mode).
    #[arg(long)]
    pub(crate) no_push: bool,
    /// Let the agent send HTTP requests to this origin: `https://host[:port]`, the host
    /// possibly `*.domain` (repeat for more).
    #[arg(long = "allow-host", value_name = "ORIGIN")]
    pub(crate) allow_hosts: Vec<String>,
    /// Take an origin off the agent's allowed hosts.
    #[arg(long = "disallow-host", value_name = "ORIGIN")]
    pub(crate) disallow_hosts: Vec<String>,
    /// Time one outgoing HTTP request may take, in seconds.
    #[arg(long, value_name = "S")]
    pub(crate) outbound_timeout: Option<u64>,
    /// Largest memory an instance may grow to, in MiB.
    #[arg(long, value_name = "MIB")]
    pub(crate) memory_mib: Option<u32>,
    /// Largest output a call may answer, in MiB.
    #[arg(long, value_name = "MIB")]
    pub(crate) output_mib: Option<u32>,
    /// Instances of this agent running at once, or `default` for the server's default.
    #[arg(long, value_name = "N|default")]
    pub(crate) max_instances: Option<String>,
}

impl ConfigChanges {
    fn any(&self) -> bool {
        !self.set.is_empty()
            || !self.unset.is_empty()
            || self.sync_timeout.is_some()
            || self.async_timeout.is_some()
            || self.max_queue_wait.is_some()
            || self.mode.is_some()
            || self.push_url.is_some()
            || self.push_token.is_some()
            || self.no_push
            || !self.allow_hosts.is_empty()
            || !self.disallow_hosts.is_empty()
            || self.outbound_timeout.is_some()
            || self.memory_mib.is_some()
            || self.output_mib.is_some()
            || self.max_instances.is_some()
    }
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
    /// Admin token; when neither this, `--admin-token-file` nor `GUST_ADMIN_TOKEN` is set,
    /// one is generated on first start and stored in the data folder. Prefer the file or the
    /// variable: a flag's value is visible to every user in `ps`.
    #[arg(long, env = "GUST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Read the admin token from this file (for example a mounted secret).
    #[arg(long, value_name = "FILE", conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    /// Seconds that calls in flight get to finish after SIGINT or SIGTERM.
    #[arg(long, default_value_t = 30, value_name = "S")]
    shutdown_grace: u64,
    /// Seconds compiling one upload may take before it is refused (`limit_exceeded`).
    #[arg(long, default_value_t = 300, value_name = "S")]
    compile_timeout: u64,
    /// Largest component upload, in MiB.
    #[arg(long, default_value_t = 100, value_name = "MIB")]
    max_upload_mib: usize,
    /// Memory all request bodies being read may take at once, in MiB: many slow uploads
    /// cannot add up past it (a request that finds no room within 2 s gets 429).
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    max_body_memory_mib: usize,
    /// Largest call input, in MiB.
    #[arg(long, default_value_t = 10, value_name = "MIB")]
    max_input_mib: usize,
    /// Queued runs executing at once. Runs of agent flows mostly wait on models and tools,
    /// so this is well above the core count.
    #[arg(long, default_value_t = 64, value_name = "N")]
    workers: usize,
    /// Attempts before a run that keeps losing its host fails as `lost`.
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_attempts: u32,
    /// Seconds a worker's claim on a run lasts without renewal.
    #[arg(long, default_value_t = 30, value_name = "S")]
    lease: u64,
    /// Hours ended runs are kept before they are purged.
    #[arg(long, default_value_t = 168, value_name = "H")]
    retention_hours: u64,
    /// Seconds a push receiver has to answer.
    #[arg(long, default_value_t = 15, value_name = "S")]
    push_timeout: u64,
    /// Delays before push retries, in seconds, comma-separated; the last one repeats (the
    /// Standard Webhooks schedule: 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h).
    #[arg(
        long,
        default_value = "5,300,1800,7200,18000,36000",
        value_name = "S,S,…"
    )]
    push_retry_schedule: String,
    /// Seconds after an event during which its push is retried (3 days).
    #[arg(long, default_value_t = 259_200, value_name = "S")]
    push_retry_window: u64,
    /// Largest push body sent whole, in KiB; a run whose event is larger is pushed thin
    /// (run id, status, poll URL), and the receiver polls for the rest.
    #[arg(long, default_value_t = 256, value_name = "KIB")]
    push_max_body_kib: usize,
    /// Instances running at once, server-wide; past it, sync calls get 429.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_instances: usize,
    /// Instances of one agent running at once, unless its deployment sets `max_instances`
    /// (default: one less than the core count, at least 1).
    #[arg(long, value_name = "N")]
    agent_instances: Option<usize>,
    /// Milliseconds a sync call waits for room before it is answered 429.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    admission_wait_ms: u64,
    /// The largest `memory_mib` a deployment may set.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    max_memory_mib: u32,
    /// The largest `output_mib` a deployment may set.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    max_output_mib: u32,
    /// MiB one agent's stored runs (inputs, outputs, logs) may take; past it submissions
    /// get 507 `storage_full` until retention removes ended runs.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    max_run_storage_mib: u64,
    /// Free MiB the data folder's disk keeps: below it submissions get 507 `storage_full`.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    min_free_disk_mib: u64,
    /// Runs of one agent waiting in the queue at most; past it, submissions get 429.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    max_queued_per_agent: usize,
    /// Seconds a client has to send its request headers; also the longest a keep-alive
    /// connection may stay idle.
    #[arg(long, default_value_t = 10, value_name = "S")]
    header_timeout: u64,
    /// Seconds writing an answer may make no progress (a client that stops reading) before
    /// the connection is closed.
    #[arg(long, default_value_t = 30, value_name = "S")]
    write_timeout: u64,
    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    max_connections: usize,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Largest answer a guest may read from one outgoing HTTP request, in MiB.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    max_outbound_response_mib: usize,
    /// Allow push deliveries (and guest requests) to loopback and private addresses. For
    /// development and tests: it turns off the host's SSRF protection.
    #[arg(long)]
    allow_private_network: bool,
    /// Engine settings: `gust` (the default), or `wasmtime-defaults` for benchmarks that
    /// measure what gust's tuning buys. Hidden: not something to run a host with.
    #[arg(long, hide = true, value_enum, default_value_t = EngineTuning::Gust)]
    engine_tuning: EngineTuning,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `gust_runtime=debug`.
    #[arg(long, env = "GUST_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineTuning {
    Gust,
    WasmtimeDefaults,
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
        Command::New { agent, lang } => project::new(&agent, lang),
        Command::Build { dir } => project::build(&dir),
        Command::Toolchain {
            command: ToolchainCommand::Install { dir, languages },
        } => project::install(dir, &languages),
        Command::Deploy {
            conn,
            agent,
            file,
            version,
        } => commands::deploy(&conn.client(), &agent, file.as_deref(), version).await,
        Command::Upload { conn, agent, file } => commands::upload(&conn.client(), &agent, &file)
            .await
            .map(|_| ()),
        Command::Rollback { conn, agent, to } => {
            commands::rollback(&conn.client(), &agent, to).await
        }
        Command::Agents { conn } => commands::agents(&conn.client()).await,
        Command::Agent { conn, agent } => commands::agent(&conn.client(), &agent).await,
        Command::Config {
            conn,
            agent,
            changes,
        } => commands::config(&conn.client(), &agent, &changes).await,
        Command::Run {
            conn,
            queued,
            agent,
            input,
        } => commands::run(&conn.client(), &agent, &input, queued).await,
        Command::Runs { command } => match command {
            RunsCommand::Get {
                conn,
                agent,
                id,
                wait,
            } => commands::runs_get(&conn.client(), &agent, &id, wait).await,
            RunsCommand::List {
                conn,
                agent,
                status,
                limit,
            } => commands::runs_list(&conn.client(), &agent, status.as_deref(), limit).await,
            RunsCommand::Cancel { conn, agent, id } => {
                commands::run_action(&conn.client(), &agent, &id, "cancel").await
            }
            RunsCommand::Rerun { conn, agent, id } => {
                commands::run_action(&conn.client(), &agent, &id, "rerun").await
            }
            RunsCommand::Redeliver { conn, agent, id } => {
                commands::run_action(&conn.client(), &agent, &id, "redeliver").await
            }
        },
        Command::Keys { command } => match command {
            KeysCommand::Create {
                conn,
                agent,
                name,
                rate,
                burst,
            } => commands::keys_create(&conn.client(), &agent, &name, rate.zip(burst)).await,
            KeysCommand::List { conn, agent } => commands::keys_list(&conn.client(), &agent).await,
            KeysCommand::Revoke { conn, agent, id } => {
                commands::keys_revoke(&conn.client(), &agent, &id).await
            }
        },
        Command::Admin { command } => match command {
            AdminCommand::RotateToken { conn } => {
                commands::rotate_admin_token(&conn.client()).await
            }
        },
        Command::Push { command } => match command {
            PushCommand::Test { conn, agent } => commands::push_test(&conn.client(), &agent).await,
            PushCommand::RotateSecret { conn, agent } => {
                commands::rotate_secret(&conn.client(), &agent).await
            }
        },
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
        admin_token: match &args.admin_token_file {
            Some(file) => Some(read_token_file(file)?),
            None => args.admin_token,
        },
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        limits: BodyLimits {
            upload: args.max_upload_mib << 20,
            input: args.max_input_mib << 20,
            in_flight: args.max_body_memory_mib << 20,
        },
        outbound: OutboundSettings {
            allow_private_network: args.allow_private_network,
            max_response_bytes: args.max_outbound_response_mib << 20,
        },
        min_free_disk: args.min_free_disk_mib.saturating_mul(1 << 20),
        tuning: match args.engine_tuning {
            EngineTuning::Gust => Tuning::default(),
            EngineTuning::WasmtimeDefaults => Tuning::wasmtime_defaults(),
        },
        http: HttpSettings {
            header_timeout: Duration::from_secs(args.header_timeout.max(1)),
            max_connections: args.max_connections.max(1),
            write_timeout: Duration::from_secs(args.write_timeout.max(1)),
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            ..HttpSettings::default()
        },
        host_limits: {
            let defaults = AdmissionLimits::default();
            Limits {
                admission: AdmissionLimits {
                    max_instances: args.max_instances.max(1),
                    agent_instances: args
                        .agent_instances
                        .unwrap_or(defaults.agent_instances)
                        .max(1),
                    sync_wait: Duration::from_millis(args.admission_wait_ms),
                },
                compile_budget: Duration::from_secs(args.compile_timeout.max(1)),
                maxima: Maxima {
                    memory_mib: args.max_memory_mib.max(1),
                    output_mib: args.max_output_mib.max(1),
                    instances: u32::try_from(args.max_instances).unwrap_or(u32::MAX).max(1),
                },
            }
        },
        runs: RunSettings {
            workers: args.workers,
            max_queued_per_agent: args.max_queued_per_agent.max(1),
            lease: Duration::from_secs(args.lease.max(1)),
            max_attempts: args.max_attempts.max(1),
            retention: Duration::from_secs(args.retention_hours.saturating_mul(3600)),
            max_stored_bytes_per_agent: args.max_run_storage_mib.max(1).saturating_mul(1 << 20),
            push: PushSettings {
                timeout: Duration::from_secs(args.push_timeout.max(1)),
                schedule: parse_schedule(&args.push_retry_schedule)?,
                window: Duration::from_secs(args.push_retry_window),
                allow_private_network: args.allow_private_network,
                max_body_bytes: args.push_max_body_kib.max(1) << 10,
                ..PushSettings::default()
            },
        },
    };
    gust_server::serve(options, shutdown_signal()).await
}

/// The admin token kept in `file` (surrounding whitespace trimmed).
fn read_token_file(file: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("--admin-token-file {}: {e}", file.display()))?;
    let token = token.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "--admin-token-file {} is empty",
        file.display()
    );
    Ok(token.to_owned())
}

/// `5,30,120` → 5 s, 30 s, 2 min (fractions allowed, so tests can use short delays).
fn parse_schedule(text: &str) -> anyhow::Result<Vec<Duration>> {
    let schedule = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    anyhow::anyhow!("--push-retry-schedule: `{s}` is not a number of seconds")
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!schedule.is_empty(), "--push-retry-schedule is empty");
    Ok(schedule)
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

    #[test]
    fn retry_schedules_parse() {
        let s = super::parse_schedule("5, 0.5,120").unwrap();
        assert_eq!(s, [5.0, 0.5, 120.0].map(std::time::Duration::from_secs_f64));
        assert!(super::parse_schedule("5,x").is_err());
        assert!(super::parse_schedule("-1").is_err());
    }
}
