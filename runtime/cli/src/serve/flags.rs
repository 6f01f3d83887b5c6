//! Every `gust serve` setting as a flag, each with its `GUST_*` variable; the `--config`
//! file takes the same names (see `layers`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::builder::{BoolishValueParser, RangedU64ValueParser};

/// The longest a setting in seconds may be: a year. Past it a value is a mistake, and a
/// deadline computed from it would overflow the clock.
const MAX_SECONDS: u64 = 366 * 24 * 3600;
/// The longest retention of ended runs: a century (the stored runs are bounded in bytes,
/// and hours are turned into seconds with a saturating multiply).
const MAX_RETENTION_HOURS: u64 = 100 * 366 * 24;
/// The largest setting in MiB: 1 PiB, past any disk or memory. Much further (2^44 MiB) the
/// bytes it is counted in overflow.
const MAX_MIB: u64 = 1 << 30;
/// The largest count (instances, connections, workers, runs waiting): 16 Mi, far past what
/// any machine holds, and within what the semaphores that count them take.
const MAX_COUNT: u64 = 1 << 24;

/// The flags of `gust serve`. A field's long name is also its key in the `--config` file,
/// and its variable is `GUST_` and the name in capitals; a unit test holds every field to
/// that rule, so the three spellings cannot drift apart.
#[derive(Debug, Args)]
pub(super) struct Flags {
    /// A TOML file of settings, keyed by these flags' names without `--` (`workers = 8`).
    /// A flag beats its `GUST_*` variable, which beats the file, which beats the default.
    #[arg(long, env = "GUST_CONFIG", value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// Print the effective settings, and where each one comes from, as a config file; then
    /// exit without starting.
    #[arg(long)]
    pub(super) print_config: bool,
    /// A PostgreSQL database shared by several hosts behind a load balancer, e.g.
    /// `postgres://gust:secret@db.internal/gust?sslmode=verify-full&sslrootcert=ca.pem`
    /// (`sslmode`: disable, prefer, require, verify-full). Unset: SQLite in the data folder,
    /// for one host. Each host still keeps its compiled cache in its own data folder.
    #[arg(long = "database", env = "GUST_DATABASE_URL", hide_env_values = true,
          value_name = "URL", value_parser = database_url)]
    pub(super) database: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "GUST_LISTEN", default_value = "127.0.0.1:8080")]
    pub(super) listen: SocketAddr,
    /// Folder for the database, components, the compiled cache and the generated token.
    #[arg(long, env = "GUST_DATA_DIR", default_value = "./gust-data")]
    pub(super) data_dir: PathBuf,
    /// Base of the endpoint URLs printed in answers (for example behind a proxy); default
    /// `http://<listen address>`.
    #[arg(long, env = "GUST_PUBLIC_URL")]
    pub(super) public_url: Option<String>,
    /// Also serve `/metrics` (Prometheus) on this address, without the admin token: for a
    /// scraper on a private network. `/metrics` on the main address needs the token.
    #[arg(long, env = "GUST_METRICS_LISTEN")]
    pub(super) metrics_listen: Option<SocketAddr>,
    /// Admin token; when neither this, `--admin-token-file` nor `GUST_ADMIN_TOKEN` is set,
    /// one is generated on first start and stored in the data folder. Prefer the file or the
    /// variable: a flag's value is visible to every user in `ps`.
    #[arg(long, env = "GUST_ADMIN_TOKEN", hide_env_values = true)]
    pub(super) admin_token: Option<String>,
    /// Read the admin token from this file (for example a mounted secret). Given with
    /// --admin-token, the stronger place wins (flag over variable); in one place, both are
    /// refused.
    #[arg(long, env = "GUST_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub(super) admin_token_file: Option<PathBuf>,
    /// Seconds that calls in flight get to finish after SIGINT or SIGTERM.
    #[arg(
        long,
        env = "GUST_SHUTDOWN_GRACE",
        default_value_t = 30,
        value_name = "S",
        value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_SECONDS)
    )]
    pub(super) shutdown_grace: u64,
    /// On SIGTERM, first answer `/readyz` with 503 for this many seconds while still
    /// serving, so a load balancer's health checks take the host out before it stops
    /// accepting connections. 0: stop accepting at once.
    #[arg(
        long,
        env = "GUST_DRAIN_DELAY",
        default_value_t = 0,
        value_name = "SECONDS",
        value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_SECONDS)
    )]
    pub(super) drain_delay: u64,
    /// Seconds compiling one upload may take before it is refused (`limit_exceeded`).
    #[arg(
        long,
        env = "GUST_COMPILE_TIMEOUT",
        default_value_t = 300,
        value_name = "S",
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_SECONDS)
    )]
    pub(super) compile_timeout: u64,
    /// Largest component upload, in MiB.
    #[arg(
        long,
        env = "GUST_MAX_UPLOAD_MIB",
        default_value_t = 100,
        value_name = "MIB",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_MIB)
    )]
    pub(super) max_upload_mib: usize,
    /// Memory all request bodies being read may take at once, in MiB: many slow uploads
    /// cannot add up past it (a request that finds no room within 2 s gets 429).
    #[arg(
        long,
        env = "GUST_MAX_BODY_MEMORY_MIB",
        default_value_t = 512,
        value_name = "MIB",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_MIB)
    )]
    pub(super) max_body_memory_mib: usize,
    /// Largest call input, in MiB.
    #[arg(
        long,
        env = "GUST_MAX_INPUT_MIB",
        default_value_t = 10,
        value_name = "MIB",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_MIB)
    )]
    pub(super) max_input_mib: usize,
    /// Queued runs executing at once, at most (default: as many as admission lets through,
    /// like sync calls: bounded by instance slots and the memory budget, since runs of agent
    /// flows mostly wait on models and tools).
    #[arg(long, env = "GUST_WORKERS", value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_COUNT))]
    pub(super) workers: Option<usize>,
    /// Attempts before a run that keeps losing its host fails as `lost`.
    #[arg(long, env = "GUST_MAX_ATTEMPTS", default_value_t = 3, value_name = "N")]
    pub(super) max_attempts: u32,
    /// Seconds a worker's claim on a run lasts without renewal.
    #[arg(long, env = "GUST_LEASE", default_value_t = 30, value_name = "S", value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_SECONDS))]
    pub(super) lease: u64,
    /// Hours ended runs are kept before they are purged.
    #[arg(
        long,
        env = "GUST_RETENTION_HOURS",
        default_value_t = 168,
        value_name = "H",
        value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_RETENTION_HOURS)
    )]
    pub(super) retention_hours: u64,
    /// Seconds a push receiver has to answer.
    #[arg(
        long,
        env = "GUST_PUSH_TIMEOUT",
        default_value_t = 15,
        value_name = "S",
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_SECONDS)
    )]
    pub(super) push_timeout: u64,
    /// Delays before push retries, in seconds, comma-separated; the last one repeats (the
    /// Standard Webhooks schedule: 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h).
    #[arg(
        long,
        env = "GUST_PUSH_RETRY_SCHEDULE",
        default_value = "5,300,1800,7200,18000,36000",
        value_name = "S,S,…",
        value_parser = Schedule::parse
    )]
    pub(super) push_retry_schedule: Schedule,
    /// Seconds after an event during which its push is retried (3 days).
    #[arg(
        long,
        env = "GUST_PUSH_RETRY_WINDOW",
        default_value_t = 259_200,
        value_name = "S",
        value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_SECONDS)
    )]
    pub(super) push_retry_window: u64,
    /// Largest push body sent whole, in KiB; a run whose event is larger is pushed thin
    /// (run id, status, poll URL), and the receiver polls for the rest.
    #[arg(
        long,
        env = "GUST_PUSH_MAX_BODY_KIB",
        default_value_t = 256,
        value_name = "KIB",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_MIB << 10)
    )]
    pub(super) push_max_body_kib: usize,
    /// Instances running at once, server-wide: the instance pool's slots (reserved address
    /// space, committed only as guests touch it); past it, sync calls get 429 (default:
    /// 12,288, or as many as `vm.max_map_count` holds at about 6 memory mappings each).
    #[arg(long, env = "GUST_MAX_INSTANCES", value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_COUNT))]
    pub(super) max_instances: Option<usize>,
    /// Instances of one agent running at once, unless its deployment sets `max_instances`
    /// (default: all of --max-instances but an eighth of it, at most 512, kept for the other
    /// agents).
    #[arg(long, env = "GUST_AGENT_INSTANCES", value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_COUNT))]
    pub(super) agent_instances: Option<usize>,
    /// MiB of committed memory (private resident pages and page tables; not the pages of
    /// the components' images that instances only read) past which no more instances are
    /// admitted (default: three quarters of the machine's memory, or of the cgroup's limit).
    #[arg(long, env = "GUST_MEMORY_BUDGET_MIB", value_name = "MIB", value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_MIB))]
    pub(super) memory_budget_mib: Option<u64>,
    /// Milliseconds a sync call waits for room before it is answered 429.
    #[arg(
        long,
        env = "GUST_ADMISSION_WAIT_MS",
        default_value_t = 2000,
        value_name = "MS",
        value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_SECONDS * 1000)
    )]
    pub(super) admission_wait_ms: u64,
    /// The largest `memory_mib` a deployment may set.
    #[arg(
        long,
        env = "GUST_MAX_MEMORY_MIB",
        default_value_t = 1024,
        value_name = "MIB"
    )]
    pub(super) max_memory_mib: u32,
    /// The largest `output_mib` a deployment may set.
    #[arg(
        long,
        env = "GUST_MAX_OUTPUT_MIB",
        default_value_t = 64,
        value_name = "MIB"
    )]
    pub(super) max_output_mib: u32,
    /// MiB one agent's stored runs (inputs, outputs, logs) may take; past it submissions
    /// get 507 `storage_full` until retention removes ended runs.
    #[arg(
        long,
        env = "GUST_MAX_RUN_STORAGE_MIB",
        default_value_t = 1024,
        value_name = "MIB",
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_MIB)
    )]
    pub(super) max_run_storage_mib: u64,
    /// Free MiB the data folder's disk keeps: below it submissions get 507 `storage_full`.
    #[arg(
        long,
        env = "GUST_MIN_FREE_DISK_MIB",
        default_value_t = 1024,
        value_name = "MIB",
        value_parser = RangedU64ValueParser::<u64>::new().range(0..=MAX_MIB)
    )]
    pub(super) min_free_disk_mib: u64,
    /// Runs of one agent waiting in the queue at most; past it, submissions get 429.
    #[arg(
        long,
        env = "GUST_MAX_QUEUED_PER_AGENT",
        default_value_t = 100_000,
        value_name = "N",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_COUNT)
    )]
    pub(super) max_queued_per_agent: usize,
    /// Seconds a client has to send its request headers; also the longest a keep-alive
    /// connection may stay idle.
    #[arg(
        long,
        env = "GUST_HEADER_TIMEOUT",
        default_value_t = 10,
        value_name = "S",
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_SECONDS)
    )]
    pub(super) header_timeout: u64,
    /// Seconds writing an answer may make no progress (a client that stops reading) before
    /// the connection is closed.
    #[arg(
        long,
        env = "GUST_WRITE_TIMEOUT",
        default_value_t = 30,
        value_name = "S",
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_SECONDS)
    )]
    pub(super) write_timeout: u64,
    /// Connections open at once; more wait in the listen backlog (default: 16,384, or three
    /// fifths of the open-file limit when that is lower). Each needs a file descriptor, and
    /// so may an outgoing request of its call: the host raises its soft open-file limit to
    /// the hard one, and warns when that is too low for what is set here.
    #[arg(long, env = "GUST_MAX_CONNECTIONS", value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_COUNT))]
    pub(super) max_connections: Option<usize>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "GUST_TLS_CERT", value_name = "FILE")]
    pub(super) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GUST_TLS_KEY", value_name = "FILE")]
    pub(super) tls_key: Option<PathBuf>,
    /// Connections guests' requests may hold to one origin (scheme, host, port), host-wide,
    /// idle ones included; a request waits for one within its timeout (default: 16,384, or
    /// two fifths of the open-file limit when that is lower).
    #[arg(long, env = "GUST_OUTBOUND_CONNECTIONS_PER_HOST", value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_COUNT))]
    pub(super) outbound_connections_per_host: Option<usize>,
    /// PEM file of CA certificates to trust, beside the public roots, for guests' HTTPS
    /// requests and push deliveries: a company's own CA, or a model server's on the same
    /// network.
    #[arg(long, env = "GUST_OUTBOUND_CA_CERTS", value_name = "FILE")]
    pub(super) outbound_ca_certs: Option<PathBuf>,
    /// Largest answer a guest may read from one outgoing HTTP request, in MiB.
    #[arg(
        long,
        env = "GUST_MAX_OUTBOUND_RESPONSE_MIB",
        default_value_t = 16,
        value_name = "MIB",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_MIB)
    )]
    pub(super) max_outbound_response_mib: usize,
    /// Allow push deliveries (and guest requests) to loopback and private addresses. For
    /// development and tests: it turns off the host's SSRF protection.
    // Boolish, so the variable may also be `1`/`0`, `yes`/`no`, `on`/`off`.
    #[arg(long, env = "GUST_ALLOW_PRIVATE_NETWORK", value_parser = BoolishValueParser::new())]
    pub(super) allow_private_network: bool,
    /// Engine settings: `gust` (the default), or `wasmtime-defaults` for benchmarks that
    /// measure what gust's tuning buys. Hidden: not something to run a host with.
    #[arg(long, hide = true, value_enum, default_value_t = EngineTuning::Gust)]
    pub(super) engine_tuning: EngineTuning,
    /// Guests computing past their first slice (10–20 ms) at once (default: one per core
    /// but one, so a core always stays for calls that wait and new requests; 0: no bound).
    #[arg(long, env = "GUST_CPU_LANES", value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(0..=MAX_COUNT))]
    pub(super) cpu_lanes: Option<usize>,
    /// No instances made ahead of demand: for the benchmark that measures what they buy.
    #[arg(long, hide = true)]
    pub(super) no_warm_standby: bool,
    /// Calls, runs and pushes not counted for `/metrics`: for the benchmark that measures
    /// what counting costs.
    #[arg(long, hide = true)]
    pub(super) no_metrics: bool,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `gust_runtime=debug`.
    #[arg(long, env = "GUST_LOG", default_value = "info", value_parser = log_filter)]
    pub(super) log: String,
    /// Log lines as text for people, or as one JSON object per line for a log pipeline
    /// (a call's lines carry `agent`, `version` and `run_id` as fields either way).
    #[arg(long, env = "GUST_LOG_FORMAT", value_enum, default_value = "text")]
    pub(super) log_format: LogFormat,
    /// Export traces (OpenTelemetry, OTLP over HTTP with protobuf) to this collector, e.g.
    /// `http://127.0.0.1:4318` (`/v1/traces` is added): a span per call (with admission,
    /// instantiation, the guest's run and each outbound request under it) and per queued
    /// run (with its attempts, their queue wait, and its push attempts under it).
    #[arg(long, env = "GUST_OTLP_ENDPOINT", value_name = "URL", value_parser = otlp_endpoint)]
    pub(super) otlp_endpoint: Option<String>,
}

/// Only the scheme is checked here; the rest (and the value's `sslmode`) when the host
/// connects. The value is never repeated back: it may hold a password.
fn database_url(value: &str) -> Result<String, String> {
    if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        Ok(value.to_owned())
    } else {
        Err(
            "a PostgreSQL URL, such as postgres://user@host/gust (without it the \
             host keeps its data in SQLite in the data folder)"
                .into(),
        )
    }
}

fn otlp_endpoint(value: &str) -> Result<String, String> {
    match url::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(value.to_owned()),
        Ok(_) => Err("an http or https URL, such as http://127.0.0.1:4318".into()),
        Err(e) => Err(format!("not a URL ({e})")),
    }
}

/// How the host writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum EngineTuning {
    Gust,
    WasmtimeDefaults,
}

/// A log filter, refused while the settings are read rather than replaced by `info` when
/// the log starts, which would hide the mistake along with the lines asked for.
fn log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| {
            format!("not a log filter (`RUST_LOG` syntax, e.g. `info` or `gust_core=debug`): {e}")
        })
}

/// The push retry delays; a type of its own so that a bad schedule is refused while the
/// settings are read (naming the flag, variable or file key it came from), not later.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Schedule(pub(super) Vec<Duration>);

impl Schedule {
    /// `5,30,120` → 5 s, 30 s, 2 min (fractions allowed, so tests can use short delays).
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("no delays given".to_owned());
        }
        let delays = text
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| (0.0..=MAX_SECONDS as f64).contains(v))
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        format!(
                            "`{}` is not a number of seconds from 0 to {MAX_SECONDS}",
                            s.trim()
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(delays))
    }
}
