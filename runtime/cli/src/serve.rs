//! `gust serve`: the server's settings — from flags, `GUST_*` variables and a `--config`
//! file (`flags`, `layers`) — `--print-config` (`print`), and their translation into the
//! server's options.

mod flags;
mod layers;
mod print;

use std::time::Duration;

use clap::{ArgMatches, Args, Command, FromArgMatches};

use gust_server::options::{
    AdmissionLimits, BodyLimits, DEFAULT_MAX_INSTANCES, ExtraRoots, HttpSettings, Limits, Maxima,
    OutboundSettings, PoolTuning, PushSettings, RunSettings, ServeOptions, Tuning,
    connection_defaults, default_memory_budget, instances_default, max_map_count, memories_default,
    raise_open_files,
};

pub(crate) use flags::LogFormat;
use flags::{EngineTuning, Flags};
use layers::Setting;

/// `gust serve`'s settings with every layer applied: clap hands over the command line, and
/// the `--config` file is merged in while the arguments are read, so that a bad file stops
/// `gust` like a bad flag does, and the file's `log` reaches `telemetry::init`.
#[derive(Debug)]
pub(crate) struct ServeArgs {
    /// The log filter (`RUST_LOG` syntax); a field of its own because `telemetry::init` reads
    /// it before `serve` runs.
    pub(crate) log: String,
    /// Text or JSON lines; read by `telemetry::init` too.
    pub(crate) log_format: flags::LogFormat,
    /// Where traces go, if anywhere; read by `telemetry::init`.
    pub(crate) otlp_endpoint: Option<String>,
    flags: Flags,
    /// Each setting's value and where it came from, for `--print-config`.
    settings: Vec<Setting>,
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        Flags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Flags::augment_args_for_update(cmd)
    }

    fn group_id() -> Option<clap::Id> {
        Flags::group_id()
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let resolved = layers::resolve(matches)?;
        // Checked once every layer is in: the certificate may come from the file and its key
        // from a variable.
        if resolved.flags.tls_cert.is_some() != resolved.flags.tls_key.is_some() {
            // The file is named only when the half that was given came from it.
            let from_file = resolved.settings.iter().any(|setting| {
                matches!(setting.key.as_str(), "tls-cert" | "tls-key")
                    && matches!(setting.source, layers::Source::File)
            });
            let file = matches
                .get_one::<std::path::PathBuf>("config")
                .filter(|_| from_file)
                .map(|path| format!("config file {}: ", path.display()))
                .unwrap_or_default();
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!(
                    "{file}--tls-cert and --tls-key go together (a certificate chain and its \
                     private key): give both, as flags, GUST_* variables or keys of the config file"
                ),
            ));
        }
        Ok(Self {
            log: resolved.flags.log.clone(),
            log_format: resolved.flags.log_format,
            otlp_endpoint: resolved.flags.otlp_endpoint.clone(),
            flags: resolved.flags,
            settings: resolved.settings,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.flags.print_config {
        // Before anything touches the disk: printing the settings creates no data folder.
        let settings = print::render(&args.settings, args.flags.config.as_deref());
        return crate::output::bytes_out(settings.as_bytes());
    }
    let token_from_file = token_from_file(&args)?;
    let mut args = args.flags;
    let admin_token = match (&args.admin_token_file, token_from_file) {
        (Some(file), true) => Some(read_token_file(file)?),
        _ => args.admin_token.take(),
    };
    serve_with(args, admin_token).await
}

/// Whether the admin token is read from `admin-token-file` rather than taken from
/// `admin-token`.
fn token_from_file(args: &ServeArgs) -> anyhow::Result<bool> {
    Ok(
        match (&args.flags.admin_token, &args.flags.admin_token_file) {
            (Some(_), Some(_)) => {
                // Both given (a flag and a variable, say): the stronger place wins, as for every
                // other setting; the same place giving both is a mistake to point out.
                let rank = |key: &str| {
                    args.settings
                        .iter()
                        .find(|s| s.key == key)
                        .map_or(3, |s| match s.source {
                            layers::Source::Flag => 0,
                            layers::Source::Env(_) => 1,
                            layers::Source::File => 2,
                            layers::Source::Default => 3,
                        })
                };
                let (token, file) = (rank("admin-token"), rank("admin-token-file"));
                anyhow::ensure!(
                    token != file,
                    "the admin token is given twice in one place (admin-token and \
                 admin-token-file): give one"
                );
                file < token
            }
            (None, Some(_)) => true,
            _ => false,
        },
    )
}

async fn serve_with(args: Flags, admin_token: Option<String>) -> anyhow::Result<()> {
    anyhow::ensure!(
        admin_token.as_deref().map(str::trim) != Some(print::MASK),
        "the admin token is `{}`, the mask `--print-config` prints in its place: give the real \
         token, preferably as admin-token-file",
        print::MASK
    );
    // Raised before the defaults that depend on it are worked out.
    let (max_connections, connections_per_host) = connection_defaults(raise_open_files());
    let map_count = max_map_count();
    let max_instances = args
        .max_instances
        .unwrap_or_else(|| instances_default(DEFAULT_MAX_INSTANCES, map_count))
        .max(1);
    let extra_roots = match &args.outbound_ca_certs {
        Some(path) => ExtraRoots::load(path)?,
        None => ExtraRoots::default(),
    };
    let options = ServeOptions {
        listen: args.listen,
        data_dir: args.data_dir,
        database: args.database,
        public_url: args.public_url,
        metrics_listen: args.metrics_listen,
        admin_token,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        drain_delay: Duration::from_secs(args.drain_delay),
        limits: BodyLimits {
            upload: args.max_upload_mib << 20,
            input: args.max_input_mib << 20,
            in_flight: args.max_body_memory_mib << 20,
        },
        outbound: OutboundSettings {
            allow_private_network: args.allow_private_network,
            max_response_bytes: args.max_outbound_response_mib << 20,
            connections_per_host: args
                .outbound_connections_per_host
                .unwrap_or(connections_per_host)
                .max(1),
            extra_roots: extra_roots.clone(),
        },
        min_free_disk: args.min_free_disk_mib.saturating_mul(1 << 20),
        skip_metrics: args.no_metrics,
        tuning: match args.engine_tuning {
            // The pool holds every instance admission may let run.
            EngineTuning::Gust => Tuning {
                pool: Some(PoolTuning {
                    instances: u32::try_from(max_instances).unwrap_or(u32::MAX),
                    memories: memories_default(max_instances, map_count),
                    ..PoolTuning::default()
                }),
                warm_standby: !args.no_warm_standby,
                cpu_lanes: args.cpu_lanes,
                ..Tuning::default()
            },
            EngineTuning::WasmtimeDefaults => Tuning::wasmtime_defaults(),
        },
        http: HttpSettings {
            header_timeout: Duration::from_secs(args.header_timeout.max(1)),
            max_connections: args.max_connections.unwrap_or(max_connections).max(1),
            write_timeout: Duration::from_secs(args.write_timeout.max(1)),
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            ..HttpSettings::default()
        },
        host_limits: {
            Limits {
                admission: AdmissionLimits {
                    max_instances,
                    agent_instances: args
                        .agent_instances
                        .unwrap_or_else(|| AdmissionLimits::agent_share(max_instances))
                        .max(1),
                    memory_budget: args
                        .memory_budget_mib
                        .map_or_else(default_memory_budget, |mib| mib.max(1) << 20),
                    sync_wait: Duration::from_millis(args.admission_wait_ms),
                },
                compile_budget: Duration::from_secs(args.compile_timeout.max(1)),
                maxima: Maxima {
                    memory_mib: args.max_memory_mib.max(1),
                    output_mib: args.max_output_mib.max(1),
                    instances: u32::try_from(max_instances).unwrap_or(u32::MAX),
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
                schedule: args.push_retry_schedule.0,
                window: Duration::from_secs(args.push_retry_window),
                allow_private_network: args.allow_private_network,
                max_body_bytes: args.push_max_body_kib.max(1) << 10,
                extra_roots,
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
        crate::output::note!("gust: second signal, exiting now");
        std::process::exit(130);
    });
}

#[cfg(test)]
mod token_tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: super::ServeArgs,
    }

    #[test]
    fn the_token_and_its_file_in_one_place_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gust-server.toml");
        std::fs::write(&file, "admin-token = \"a\"\nadmin-token-file = \"b\"\n").unwrap();
        let cli = Cli::try_parse_from(["gust", "--config", file.to_str().unwrap()]).unwrap();
        let e = super::token_from_file(&cli.serve).unwrap_err();
        assert!(e.to_string().contains("given twice in one place"), "{e}");
        let cli =
            Cli::try_parse_from(["gust", "--admin-token", "a", "--admin-token-file", "b"]).unwrap();
        assert!(super::token_from_file(&cli.serve).is_err());
        let cli = Cli::try_parse_from(["gust", "--admin-token-file", "b"]).unwrap();
        assert!(super::token_from_file(&cli.serve).unwrap());
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use clap::Parser as _;

    use super::ServeArgs;
    use super::flags::Schedule;
    use super::layers::Source;

    /// A command with `serve` as a subcommand, read the way the binary reads it.
    #[derive(clap::Parser)]
    struct Gust {
        #[command(subcommand)]
        command: Subcommand,
    }

    #[derive(clap::Subcommand)]
    enum Subcommand {
        Serve(ServeArgs),
    }

    /// `gust serve ARGS`. The variables are the process's: the tests use settings no one
    /// sets in the environment they run in; the variable layer is tested end to end
    /// (`tests/e2e/serve_config.rs`), where a child's environment can be set without
    /// `unsafe`.
    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let Subcommand::Serve(args) =
            Gust::try_parse_from(["gust", "serve"].iter().chain(args))?.command;
        Ok(args)
    }

    fn config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("gust-server.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn errors_in_a_file_never_repeat_the_token() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "workers = 8\nadmin-token = \"s3cr3t-tok\n",
            "admin-token = 1234567890123\n",
        ] {
            let file = config(dir.path(), text);
            let message = serve(&["--config", file.to_str().unwrap()])
                .err()
                .unwrap_or_else(|| panic!("{text} was accepted"))
                .to_string();
            assert!(
                !message.contains("s3cr3t") && !message.contains("1234567890123"),
                "{message}"
            );
            assert!(
                message.contains("admin-token") || message.contains("line 2"),
                "{message}"
            );
        }
    }

    fn source(args: &ServeArgs, key: &str) -> Source {
        let setting = args.settings.iter().find(|s| s.key == key).unwrap();
        setting.source.clone()
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(
            dir.path(),
            "workers = 8\nlease = 99\nlisten = \"0.0.0.0:9000\"\nlog = \"debug\"\n\
             push_retry_schedule = [1, 2.5]\nallow-private-network = true\n",
        );
        let file = file.to_str().unwrap();
        let args = serve(&["--workers", "9", "--config", file]).unwrap();
        assert_eq!(args.flags.workers, Some(9));
        assert_eq!(source(&args, "workers"), Source::Flag);
        assert_eq!(args.flags.lease, 99);
        assert_eq!(source(&args, "lease"), Source::File);
        assert_eq!(args.flags.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(
            args.flags.push_retry_schedule,
            Schedule(vec![Duration::from_secs(1), Duration::from_millis(2500)])
        );
        assert!(args.flags.allow_private_network);
        // The file's log filter is the one `telemetry::init` sees.
        assert_eq!(args.log, "debug");
        assert_eq!(args.flags.max_attempts, 3);
        assert_eq!(source(&args, "max-attempts"), Source::Default);

        // Without the file, the defaults.
        let args = serve(&["--workers", "9"]).unwrap();
        assert_eq!(args.flags.lease, 30);
        assert_eq!(source(&args, "lease"), Source::Default);
    }

    #[test]
    fn a_switch_the_file_turns_off_is_turned_on_by_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), "allow-private-network = false\n");
        let file = file.to_str().unwrap();
        let args = serve(&["--config", file]).unwrap();
        assert!(!args.flags.allow_private_network);
        assert_eq!(source(&args, "allow-private-network"), Source::File);
        let args = serve(&["--config", file, "--allow-private-network"]).unwrap();
        assert!(args.flags.allow_private_network);
        assert_eq!(source(&args, "allow-private-network"), Source::Flag);
    }

    #[test]
    fn a_token_given_by_flag_sets_the_files_token_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), "admin-token-file = \"/run/secrets/token\"\n");
        let file = file.to_str().unwrap();
        let args = serve(&["--config", file, "--admin-token", "t0ken-from-flag"]).unwrap();
        assert_eq!(args.flags.admin_token.as_deref(), Some("t0ken-from-flag"));
        assert_eq!(args.flags.admin_token_file, None);
        let args = serve(&["--config", file]).unwrap();
        assert_eq!(
            args.flags.admin_token_file.as_deref(),
            Some(Path::new("/run/secrets/token"))
        );
    }

    #[test]
    fn a_bad_file_is_an_error_naming_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            ("wrokers = 8\n", "unknown setting `wrokers`"),
            ("workers = true\n", "`workers` must be a whole number"),
            ("listen = \"nowhere\"\n", "--listen"),
            (
                "push-retry-schedule = \"5,x\"\n",
                "`x` is not a number of seconds",
            ),
            (
                "max-upload-mib = 99999999999999999999999\n",
                "not valid TOML",
            ),
            ("workers = 99999999999999999999\n", "not valid TOML"),
            ("engine-tuning = \"fast\"\n", "--engine-tuning"),
            ("tls-cert = \"cert.pem\"\n", "--tls-key"),
        ] {
            let file = config(dir.path(), text);
            let error = serve(&["--config", file.to_str().unwrap()])
                .err()
                .unwrap_or_else(|| panic!("{text} was accepted"));
            let message = error.to_string();
            assert!(
                message.contains(&format!("config file {}", file.display()))
                    && message.contains(expected),
                "{text}: {message}"
            );
        }
        let missing = dir.path().join("missing.toml");
        let error = serve(&["--config", missing.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("cannot read the config file") && error.contains("missing.toml"),
            "{error}"
        );
        // A half of the TLS pair given as a flag beside a file that has neither: the file is
        // not to blame.
        let other = config(dir.path(), "workers = 8\n");
        let other = other.to_str().unwrap();
        let Err(error) = serve(&["--config", other, "--tls-cert", "cert.pem"]) else {
            panic!("a certificate without its key was accepted");
        };
        let error = error.to_string();
        assert!(
            error.contains("--tls-key") && !error.contains(&format!("config file {other}")),
            "{error}"
        );
    }

    #[test]
    fn printed_settings_mask_secrets_and_read_back_as_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = config(
            dir.path(),
            "admin-token = \"s3cret-token\"\nworkers = 8\npush-retry-schedule = \"5,300\"\n\
             data-dir = \"/var/lib/gust \\\"x\\\"\"\n",
        );
        let args = serve(&["--config", file.to_str().unwrap(), "--lease", "45"]).unwrap();
        let printed = super::print::render(&args.settings, args.flags.config.as_deref());
        assert!(!printed.contains("s3cret"), "{printed}");
        for line in [
            "admin-token = \"***\"",
            "workers = 8",
            "lease = 45",
            "push-retry-schedule = \"5,300\"",
            "data-dir = \"/var/lib/gust \\\"x\\\"\"",
            "max-attempts = 3",
            "allow-private-network = false",
            "# public-url is not set",
        ] {
            assert!(
                printed.lines().any(|l| l.starts_with(line)),
                "{line}:\n{printed}"
            );
        }
        let source_of = |key: &str| {
            let line = printed
                .lines()
                .find(|l| l.starts_with(&format!("{key} =")))
                .unwrap();
            line.rsplit("# ").next().unwrap().to_owned()
        };
        assert_eq!(source_of("workers"), "file");
        assert_eq!(source_of("lease"), "flag");
        assert_eq!(source_of("max-attempts"), "default");
        // The hidden engine setting is not advertised while it has its default.
        assert!(!printed.contains("engine-tuning"), "{printed}");

        // Fed back (token put back), the same settings.
        let again = config(dir.path(), &printed.replace("***", "s3cret-token"));
        let args = serve(&["--config", again.to_str().unwrap()]).unwrap();
        assert_eq!(args.flags.lease, 45);
        assert_eq!(args.flags.workers, Some(8));
        assert_eq!(args.flags.admin_token.as_deref(), Some("s3cret-token"));
        assert_eq!(args.flags.data_dir, Path::new("/var/lib/gust \"x\""));
    }

    #[test]
    fn the_mask_is_refused_as_a_token() {
        let args = serve(&["--admin-token", "***", "--data-dir", "/nonexistent/gust"]).unwrap();
        let error = futures::executor::block_on(super::serve(args)).unwrap_err();
        assert!(error.to_string().contains("the mask"), "{error}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gust-server.toml");
        let args = serve(&["--config", example.to_str().unwrap()]).unwrap();
        assert_eq!(args.flags.data_dir, Path::new("/var/lib/gust"));
    }

    /// README's table of settings names every variable (and so every setting).
    #[test]
    fn every_setting_is_in_the_readme() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let args = serve(&[]).unwrap();
        for setting in args.settings.iter().filter(|s| !s.hidden) {
            let row = format!("| `--{}` |", setting.key);
            assert!(readme.contains(&row), "README has no row {row}");
        }
    }

    #[test]
    fn retry_schedules_parse() {
        let s = Schedule::parse("5, 0.5,120").unwrap();
        assert_eq!(s.0, [5.0, 0.5, 120.0].map(Duration::from_secs_f64));
        assert!(Schedule::parse("5,x").is_err());
        assert!(Schedule::parse("-1").is_err());
        assert!(Schedule::parse("").is_err());
    }
}
