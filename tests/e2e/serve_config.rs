//! `gust serve --config FILE`: the settings from flags, `GUST_*` variables, the file and the
//! defaults, in that order; `--print-config` shows them (secrets masked) without starting;
//! and a host started from a file alone serves.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::StatusCode;

use crate::support::TOKEN;

/// `gust serve ARGS` in `dir` with only the `GUST_*` variables given, so that none from the
/// environment the tests run in leaks in.
fn gust_serve(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gust"));
    command.arg("serve").args(args).current_dir(dir);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GUST_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command
}

fn run(mut command: Command) -> (Output, String, String) {
    let output = command.output().expect("running gust");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// The printed line of `key`, asserting it exists.
fn line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{printed}"))
}

/// A TOML string of `path`.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("a UTF-8 temporary path"))
}

#[test]
fn print_config_shows_each_setting_its_source_and_masks_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("never-made");
    let file = dir.path().join("gust-server.toml");
    std::fs::write(
        &file,
        format!(
            "workers = 8\nlease = 99\nmax_attempts = 7\nallow-private-network = true\n\
             admin-token = \"file-secret-0123456789\"\ndata-dir = {}\n",
            toml_path(&data)
        ),
    )
    .unwrap();

    let (output, printed, stderr) = run(gust_serve(
        dir.path(),
        &[
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "9",
            "--print-config",
        ],
        &[
            ("GUST_LEASE", "45"),
            ("GUST_ALLOW_PRIVATE_NETWORK", "false"),
            ("GUST_MAX_INPUT_MIB", "12"),
            ("GUST_ADMIN_TOKEN", "env-secret-0123456789"),
        ],
    ));
    assert!(output.status.success(), "{printed}{stderr}");
    let expect = |key: &str, value: &str, source: &str| {
        let l = line(&printed, key);
        assert!(
            l.starts_with(&format!("{key} = {value} ")) && l.ends_with(&format!("# {source}")),
            "expected `{key} = {value}  # {source}`, got `{l}`"
        );
    };
    expect("workers", "9", "flag");
    expect("lease", "45", "env GUST_LEASE");
    expect(
        "allow-private-network",
        "false",
        "env GUST_ALLOW_PRIVATE_NETWORK",
    );
    expect("max-input-mib", "12", "env GUST_MAX_INPUT_MIB");
    expect("max-attempts", "7", "file");
    expect("data-dir", &toml_path(&data), "file");
    expect("max-upload-mib", "100", "default");
    expect("listen", "\"127.0.0.1:8080\"", "default");
    expect("admin-token", "\"***\"", "env GUST_ADMIN_TOKEN");
    for secret in ["file-secret-0123456789", "env-secret-0123456789"] {
        assert!(
            !printed.contains(secret) && !stderr.contains(secret),
            "a token was shown:\n{printed}{stderr}"
        );
    }
    // Nothing started: no data folder, neither the configured one nor the default.
    assert!(!data.exists(), "--print-config made the data folder");
    assert!(!dir.path().join("gust-data").exists());
    assert!(!printed.contains("listening"), "{printed}");
}

#[test]
fn a_bad_config_file_stops_gust_with_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gust-server.toml");
    std::fs::write(&file, "workers = 8\nmax-uplaod-mib = 5\n").unwrap();
    let (output, stdout, stderr) = run(gust_serve(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("GUST_CONFIG", file.to_str().unwrap())],
    ));
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(file.to_str().unwrap()) && stderr.contains("`max-uplaod-mib`"),
        "{stderr}"
    );
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(!dir.path().join("gust-data").exists());
}

/// Values past what a setting can mean are refused while the settings are read, naming
/// the setting and its range, from any layer; before, some panicked at start (a semaphore
/// of 2^61 permits, a retry delay of 1e300 s) or on SIGTERM (a grace past the clock's end),
/// and MiB values past 2^44 wrapped around to 0 (every upload refused as too large).
#[test]
fn settings_out_of_their_range_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], vars: &[(&str, &str)], needle: &str| {
        let (output, stdout, stderr) = run(gust_serve(dir.path(), args, vars));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} {vars:?}: {stdout}{stderr}"
        );
        assert!(stderr.contains(needle), "{args:?} {vars:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    refused(&["--workers", "2305843009213693952"], &[], "--workers");
    refused(
        &["--max-connections", "18446744073709551615"],
        &[],
        "not in 1..=",
    );
    refused(
        &["--max-instances", "18446744073709551615"],
        &[],
        "--max-instances",
    );
    refused(
        &["--shutdown-grace", "10000000000000000000"],
        &[],
        "--shutdown-grace",
    );
    refused(
        &["--push-retry-schedule", "5,1e300"],
        &[],
        "`1e300` is not a number of seconds",
    );
    refused(
        &["--max-upload-mib", "17592186044416"],
        &[],
        "--max-upload-mib",
    );
    refused(
        &[],
        &[("GUST_MEMORY_BUDGET_MIB", "17592186044416")],
        "--memory-budget-mib",
    );
    refused(&["--log", "gust_core=loud"], &[], "not a log filter");
    let file = dir.path().join("gust-server.toml");
    std::fs::write(&file, "push-retry-schedule = [5, 1e300]\n").unwrap();
    refused(
        &["--config", file.to_str().unwrap()],
        &[],
        "is not a number of seconds from 0",
    );
    std::fs::write(&file, "max-input-mib = 17592186044416\n").unwrap();
    refused(&["--config", file.to_str().unwrap()], &[], "max-input-mib");

    // A certificate and its key go together, from whatever layers they come.
    std::fs::write(&file, "tls-cert = \"cert.pem\"\n").unwrap();
    refused(
        &["--config", file.to_str().unwrap(), "--print-config"],
        &[],
        "--tls-cert and --tls-key go together",
    );
    let (output, stdout, stderr) = run(gust_serve(
        dir.path(),
        &["--config", file.to_str().unwrap(), "--print-config"],
        &[("GUST_TLS_KEY", "key.pem")],
    ));
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(line(&stdout, "tls-cert").contains("cert.pem"), "{stdout}");
    assert!(
        line(&stdout, "tls-key").contains("env GUST_TLS_KEY"),
        "{stdout}"
    );
}

#[test]
fn outbound_ca_certs_that_hold_no_certificate_stop_gust_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "a key, not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (file, why) in [
        (&not_pem, "holds no PEM certificate"),
        (&missing, "reading CA certificates from"),
    ] {
        let (output, stdout, stderr) = run(gust_serve(
            dir.path(),
            &[
                "--listen",
                "127.0.0.1:0",
                "--outbound-ca-certs",
                file.to_str().unwrap(),
            ],
            &[],
        ));
        assert!(!output.status.success(), "{stdout}{stderr}");
        assert!(
            stderr.contains(file.to_str().unwrap()) && stderr.contains(why),
            "{stderr}"
        );
        assert!(!stdout.contains("listening"), "{stdout}");
        assert!(!dir.path().join("gust-data").exists());
    }
}

#[tokio::test]
async fn a_host_started_from_a_config_file_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    // A port free a moment ago: the file must choose it, as `127.0.0.1:0` would not show
    // that the file's address was used.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("gust-server.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata-dir = {}\nadmin-token-file = {}\n\
             log = \"info\"\n",
            toml_path(&data),
            toml_path(&token)
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("gust.log")).unwrap();
    let mut command = gust_serve(dir.path(), &["--config", file.to_str().unwrap()], &[]);
    command.stderr(log);
    let host = gust_testkit::spawn(&mut command, Duration::from_secs(60)).unwrap_or_else(|e| {
        panic!(
            "gust did not start ({e:#}):\n{}",
            std::fs::read_to_string(dir.path().join("gust.log")).unwrap_or_default()
        )
    });
    assert_eq!(host.url, format!("http://127.0.0.1:{port}"));

    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/healthz", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // The token came from the file the config named.
    let agents = http
        .get(format!("{}/v1/agents", host.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(agents.status(), StatusCode::OK);
    assert!(data.join("gust.db").exists(), "the file's data-dir is used");
    assert!(!dir.path().join("gust-data").exists());
    // `host` is killed when dropped.
}

/// `--admin-token-file` on the command line beats `GUST_ADMIN_TOKEN` in the environment, as
/// a flag beats a variable for every setting (they used to conflict).
#[tokio::test]
async fn a_token_file_flag_beats_the_token_variable() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("gust.log")).unwrap();
    let mut command = gust_serve(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
        &[("GUST_ADMIN_TOKEN", "from-the-environment")],
    );
    command.stderr(log);
    let host = gust_testkit::spawn(&mut command, Duration::from_secs(60)).unwrap_or_else(|e| {
        panic!(
            "gust did not start ({e:#}):\n{}",
            std::fs::read_to_string(dir.path().join("gust.log")).unwrap_or_default()
        )
    });
    let http = reqwest::Client::new();
    let with = |token: &'static str| {
        http.get(format!("{}/v1/agents", host.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(with(TOKEN).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        with("from-the-environment").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
