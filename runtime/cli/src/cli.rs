//! The command line: one grammar of noun groups with verbs (`gust agents list`, `gust runs
//! get <agent> <id>`), the short forms people already type kept as aliases (`gust agents`,
//! `gust agent X`, `gust deploy`, `gust run`), and flags that work before or after the
//! subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use gust_project::Language;

use crate::serve::ServeArgs;

const EXAMPLES: &str = "\
Examples:
  gust new hello --lang python && cd hello
  gust login --url http://127.0.0.1:8080 < ../gust-data/admin-token
  gust deploy                          # build, upload, confirm and deploy this project
  gust run hello '{\"name\": \"Ada\"}'
  gust agents list --json
  gust runs get hello run_0193… --wait

The server and token, as a pair from the first place that gives one: --url with --token
(or --token-stdin); --profile; GUST_URL with GUST_TOKEN; GUST_PROFILE, else the default
profile from `gust login`; ./gust-data (a host started in this folder). A stored token is
never sent to another server.";

/// gust — host agent flows compiled to WebAssembly components.
#[derive(Debug, Parser)]
#[command(
    name = "gust",
    version,
    about,
    after_help = format!("{EXAMPLES}\n\n{}", crate::exit::HELP),
)]
pub struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags of every client command; they may come before or after the subcommand.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The gust server (with the token stored for it by `gust login`, if any). Also
    /// GUST_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// The token to send to --url. On the command line it is visible to other users in
    /// `ps`: prefer `gust login`, --token-stdin or GUST_TOKEN (with GUST_URL).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// Read the token to send to --url from standard input (one line).
    #[arg(long, global = true, conflicts_with = "token")]
    pub(crate) token_stdin: bool,
    /// The profile stored by `gust login` to use. Also GUST_PROFILE.
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) profile: Option<String>,
    /// Print the API's answer as JSON (field names are the API's), for scripts.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Print no notes or progress on stderr (errors still print).
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// Seconds the server may say nothing before the command gives up: before its answer,
    /// or between two parts of it or of a followed stream (the server sends something at
    /// least every 15 s); default 60. Uploads, deploys and sync runs wait at least as long
    /// as the server may take for them. Also GUST_TIMEOUT.
    #[arg(long, global = true, value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the host.
    Serve(Box<ServeArgs>),
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
    /// Store a server's URL and token in a profile; later commands use it.
    #[command(after_help = "\
The token is read from a hidden prompt, or from standard input when it is not a terminal:
  gust login --url https://agents.example.com
  gust login --url http://127.0.0.1:8080 < gust-data/admin-token
  gust login --profile staging --url https://staging.example.com
Profiles live in $XDG_CONFIG_HOME/gust/config.toml (~/.config/gust/config.toml), mode 0600.
The profile logged in to last becomes the default.")]
    Login,
    /// Forget the stored profile (the default one, or --profile).
    Logout,
    /// Show which server and token the client commands use, where they came from, and
    /// whether the server accepts the token.
    #[command(after_help = "Examples:
  gust whoami
  gust whoami --profile staging --json")]
    Whoami,
    /// Deploy: in a project folder, build if needed, upload, show what changes and deploy;
    /// or deploy a given file, or an uploaded version.
    #[command(after_help = "\
Examples:
  gust deploy                         # in a project folder (gust.toml): build, upload, confirm
  gust deploy hello build/hello.wasm  # upload this file and deploy it
  gust deploy hello                   # the newest upload, with the current draft configuration
  gust deploy hello --version 3       # an uploaded version
  gust deploy hello --dry-run         # what would change, without deploying
On a terminal the change is shown and confirmed first; --yes skips the question.")]
    Deploy {
        /// The agent's name (default: the project's, from gust.toml).
        agent: Option<String>,
        /// A component file (`.wasm`) to upload first.
        #[arg(conflicts_with = "version")]
        file: Option<PathBuf>,
        /// Deploy this already uploaded version instead (default: the newest).
        #[arg(long)]
        version: Option<u32>,
        /// Deploy without asking.
        #[arg(short, long)]
        yes: bool,
        /// Show what the deploy would change (the server's deploy preview), and stop; a file
        /// is not uploaded.
        #[arg(long, conflicts_with = "yes")]
        dry_run: bool,
    },
    /// Upload a component as a new version, without deploying it.
    #[command(after_help = "Examples:
  gust upload hello build/hello.wasm          # prints nothing on stdout; --json the version
  gust deploy hello --version 3")]
    Upload {
        /// The agent's name (created if needed).
        agent: String,
        /// The component file (`.wasm`).
        file: PathBuf,
    },
    /// Make the previous deployment live again (repeat to walk further back), or the one
    /// named with `--to` (safe to repeat).
    #[command(after_help = "Examples:
  gust rollback hello                # the deployment before the live one
  gust rollback hello --to 4         # deployment 4 (see `gust agents show hello`); safe to repeat")]
    Rollback {
        /// The agent's name.
        agent: String,
        /// The deployment to return to (see `gust agents show`).
        #[arg(long, value_name = "DEPLOYMENT")]
        to: Option<u32>,
    },
    /// Agents: list, show, delete (`gust agents` alone lists them).
    #[command(after_help = "Examples:
  gust agents                        # the same as `gust agents list`
  gust agents show hello
  gust agents delete hello --yes")]
    Agents {
        #[command(subcommand)]
        command: Option<AgentsCommand>,
    },
    /// Same as `gust agents show <AGENT>`.
    #[command(hide = true)]
    Agent {
        /// The agent's name.
        agent: String,
    },
    /// An agent's uploaded versions: list, show (with its WIT world), delete.
    #[command(after_help = "Examples:
  gust versions list hello
  gust versions show hello 3         # digest, size, dates and the WIT world
  gust versions delete hello 2 --yes")]
    Versions {
        #[command(subcommand)]
        command: VersionsCommand,
    },
    /// Show or change an agent's draft configuration (it takes effect at the next deploy).
    #[command(after_help = "\
Examples:
  gust config hello --set TONE=friendly --allow-host https://api.openai.com
  gust config hello --secret OPENAI_API_KEY < key.txt       # a value kept off the command line
  gust config hello --mode async --push-url https://app.example/hooks --push-token - < token.txt")]
    Config {
        /// The agent's name (created if needed).
        agent: String,
        #[command(flatten)]
        changes: Box<ConfigChanges>,
    },
    /// An agent's endpoints, and the code that calls each (curl, Python, Node.js): the same
    /// the console shows.
    #[command(after_help = "\
Examples:
  gust endpoint hello                  # each endpoint's method and URL
  gust endpoint hello --lang python    # the code to call them from Python
The code reads the key from GUST_API_KEY (`gust keys create hello <name>` makes one).")]
    Endpoint {
        /// The agent's name.
        agent: String,
        /// Print the code to call each endpoint in this language.
        #[arg(long, value_enum)]
        lang: Option<SnippetLang>,
    },
    /// The guest log lines of an agent's recent sync calls; `--follow` keeps printing new
    /// ones. (A queued run keeps its own: `gust runs get`.)
    #[command(after_help = "Examples:
  gust logs hello
  gust logs hello --follow          # until Ctrl-C")]
    Logs {
        /// The agent's name.
        agent: String,
        /// Keep printing lines as calls log them.
        #[arg(short, long)]
        follow: bool,
        /// How many of the kept lines to print first (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Call an agent and print its output; with `--async`, queue a run and print its id.
    #[command(after_help = "\
Examples:
  gust run hello '{\"name\": \"Ada\"}'
  gust run hello @input.json
  echo '{}' | gust run hello -
  gust run --async hello '{}' --wait    # queue, follow, print the run")]
    Run {
        /// Queue the run instead of waiting for it; prints the run id.
        #[arg(long = "async")]
        queued: bool,
        /// With --async: follow the run until it ends and print it.
        #[arg(long, requires = "queued")]
        wait: bool,
        /// The agent's name.
        agent: String,
        /// The input: JSON text, `@file` to read a file, or `-` for standard input.
        input: String,
    },
    /// Queued runs: get, list, cancel, rerun, redeliver.
    #[command(after_help = "Examples:
  gust runs list hello --status failed --limit 5
  gust runs get hello run_0193… --wait
  gust runs cancel hello run_0193…
  gust runs list hello --json | jq -r '.runs[].run_id'")]
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Push delivery: send a test event, rotate the signing secret.
    #[command(after_help = "Examples:
  gust push test hello               # a push.test event through the whole path
  gust push rotate-secret hello > webhook-secret.txt")]
    Push {
        #[command(subcommand)]
        command: PushCommand,
    },
    /// Per-agent invoke keys: create, list, revoke.
    #[command(after_help = "Examples:
  gust keys create hello my-app > app-key.txt     # shown once
  gust keys create hello batch --rate 5 --burst 20
  gust keys list hello
  gust keys revoke hello key_0193…")]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Whether the host is up (`/healthz`) and ready (`/readyz`: every live deployment
    /// loaded). Needs no token.
    #[command(
        after_help = "Examples:\n  gust health\n  gust health --url https://agents.example.com --json"
    )]
    Health,
    /// The host's counters: compiles, instances, calls, runs.
    #[command(after_help = "Examples:
  gust stats
  gust stats --json")]
    Stats,
    /// Host administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print a completion script for a shell.
    #[command(after_help = "\
Examples:
  gust completions bash > ~/.local/share/bash-completion/completions/gust
  gust completions zsh > \"${fpath[1]}/_gust\"
  gust completions fish > ~/.config/fish/completions/gust.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// List agents.
    List,
    /// Show an agent: live deployment, draft configuration, versions, deployments.
    Show {
        /// The agent's name.
        agent: String,
    },
    /// Delete an agent, its versions, deployments and runs; its endpoint answers 404.
    Delete {
        /// The agent's name.
        agent: String,
        /// Delete without asking (needed when standard input is not a terminal).
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VersionsCommand {
    /// List an agent's versions.
    List {
        /// The agent's name.
        agent: String,
    },
    /// Show a version: digest, size, dates, and its WIT world (imports and exports).
    Show {
        /// The agent's name.
        agent: String,
        /// The version number.
        version: u32,
    },
    /// Delete a version (refused while it is live).
    Delete {
        /// The agent's name.
        agent: String,
        /// The version number.
        version: u32,
        /// Delete without asking (needed when standard input is not a terminal).
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Make an invoke key for an agent; prints it (only this once).
    Create {
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
        /// The agent's name.
        agent: String,
    },
    /// Revoke a key at once.
    Revoke {
        /// The agent's name.
        agent: String,
        /// The key id (`key_…`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ToolchainCommand {
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
pub(crate) enum AdminCommand {
    /// Replace the admin token now, without a restart; prints the new one (only this once).
    RotateToken,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// Show a run; with `--wait`, wait until it ends; with `--follow`, print its progress,
    /// log lines and output chunks as they come, then the run.
    Get {
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
        /// Wait for the run to end.
        #[arg(long)]
        wait: bool,
        /// Print status, progress, log lines and output chunks live (the run's event stream),
        /// then the run.
        #[arg(short, long, conflicts_with = "wait")]
        follow: bool,
    },
    /// List an agent's runs, newest first.
    List {
        /// The agent's name.
        agent: String,
        /// Only runs in this status.
        #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "cancelled", "expired"])]
        status: Option<String>,
        /// At most this many (1-200).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=200))]
        limit: u16,
        /// Continue after the last page: the `next_cursor` it gave.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a queued or running run.
    Cancel {
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
    },
    /// Queue a new run with the same input, on the live deployment.
    Rerun {
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
    },
    /// Push an ended run's event again (same `webhook-id`).
    Redeliver {
        /// The agent's name.
        agent: String,
        /// The run id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PushCommand {
    /// Send a `push.test` event to the live deployment's push URL.
    Test {
        /// The agent's name.
        agent: String,
    },
    /// Make a new signing secret now (the old one also signs for 24 h); prints it once.
    RotateSecret {
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
    /// Set a secret value (an API key) read from standard input or a hidden prompt, so it
    /// is not on the command line.
    #[arg(long = "secret", value_name = "KEY")]
    pub(crate) secrets: Vec<String>,
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
    /// Sent as `Authorization: Bearer …` with every push. `-` reads it from standard input
    /// (or a hidden prompt); a value on the command line is visible in `ps`.
    #[arg(long, value_name = "TOKEN|-", conflicts_with = "no_push")]
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
    pub(crate) fn any(&self) -> bool {
        !self.set.is_empty()
            || !self.secrets.is_empty()
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

/// The languages endpoint code is shown in.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum SnippetLang {
    Curl,
    Python,
    Node,
}

impl SnippetLang {
    /// The key of its snippet in the API's answer.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Curl => "curl",
            Self::Python => "python",
            Self::Node => "node",
        }
    }
}
