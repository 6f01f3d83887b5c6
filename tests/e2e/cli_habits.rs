//! The CLI as people who use gh, fly or wrangler expect it: `gust login` and profiles in a
//! per-user file, a token that never goes to a server it was not stored for, `--json` on every
//! read command, distinct exit codes, completions, secrets off the command line, and a
//! confirmation on a terminal. Every command runs the real binary in a temporary HOME.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::support::receiver::Receiver;
use crate::support::{Host, TOKEN};

/// A user: a HOME of their own and a working folder, with no GUST_* variables set.
struct User {
    home: tempfile::TempDir,
    cwd: PathBuf,
}

impl User {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let cwd = home.path().join("work");
        std::fs::create_dir_all(&cwd).unwrap();
        Self { home, cwd }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.program(env!("CARGO_BIN_EXE_gust"));
        command.args(args);
        command
    }

    /// `program` as this user runs it: their HOME and folder, no GUST_* variables.
    fn program(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(&self.cwd)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GUST_URL")
            .env_remove("GUST_TOKEN")
            .env_remove("GUST_PROFILE")
            .env("NO_COLOR", "1");
        command
    }

    /// `line` (a shell command line) run on a pseudo-terminal by util-linux `script`, with
    /// TERM set as a terminal emulator sets it (without it no progress bar is drawn); what
    /// is written to its standard input is typed at the terminal.
    fn on_a_pty(&self, line: &str) -> std::process::Child {
        self.program("script")
            .args(["-q", "-e", "-c", line, "/dev/null"])
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("util-linux `script` runs the command on a pty")
    }

    fn gust(&self, args: &[&str]) -> Output {
        self.gust_with_input(args, "")
    }

    fn gust_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running gust");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn config_file(&self) -> PathBuf {
        self.home.path().join(".config/gust/config.toml")
    }
}

/// What a command on a pty ([`User::on_a_pty`]) shows, read as it comes.
struct Screen {
    shown: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Screen {
    fn of(child: &mut std::process::Child) -> Self {
        let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut out = child.stdout.take().unwrap();
        let reader = {
            let shown = std::sync::Arc::clone(&shown);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = std::io::Read::read(&mut out, &mut chunk) {
                    shown.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        };
        Self { shown, reader }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    /// Waits until `what` is on the screen; a few seconds at most, then `child` is killed.
    fn wait_for(&self, what: &str, child: &mut std::process::Child) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.text().contains(what) {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("`{what}` not shown: {}", self.text());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Everything shown, once the command has ended.
    fn end(self) -> String {
        let Self { shown, reader } = self;
        reader.join().unwrap();
        String::from_utf8_lossy(&shown.lock().unwrap()).into_owned()
    }
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "gust failed ({:?}): {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_of(output: &Output) -> Value {
    let out = ok(output);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_profile_and_its_token_goes_only_to_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let user = User::new();

    // Before login there is no token anywhere: 401, exit code 3, and a hint.
    let refused = user.gust(&["agents", "list"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("gust login"),
        "{}",
        stderr(&refused)
    );

    // A wrong token is refused and nothing is stored.
    let wrong = user.gust_with_input(&["login", "--url", &host.url], "not-the-token\n");
    assert_eq!(wrong.status.code(), Some(3), "{}", stderr(&wrong));
    assert!(!user.config_file().exists());

    // The right one, from standard input, is stored in a private file.
    let login = user.gust_with_input(&["login", "--url", &host.url], &format!("{TOKEN}\n"));
    ok(&login);
    assert!(
        stderr(&login).contains("profile `default`"),
        "{}",
        stderr(&login)
    );
    assert_eq!(mode(&user.config_file()), 0o600);
    assert_eq!(mode(user.config_file().parent().unwrap()), 0o700);

    // Every command uses it, from any folder, with global flags before or after.
    assert_eq!(
        json_of(&user.gust(&["agents", "list", "--json"]))["agents"],
        json!([])
    );
    assert_eq!(
        json_of(&user.gust(&["--json", "agents"]))["agents"],
        json!([])
    );
    let who = json_of(&user.gust(&["whoami", "--json"]));
    assert_eq!(
        (&who["url"], &who["profile"], &who["access"]),
        (&json!(host.url), &json!("default"), &json!("admin")),
        "{who}"
    );

    // A named profile, chosen with --profile or GUST_PROFILE.
    ok(&user.gust_with_input(
        &["login", "--profile", "second", "--url", &host.url],
        &format!("{TOKEN}\n"),
    ));
    let who = json_of(&user.gust(&["whoami", "--json", "--profile", "default"]));
    assert_eq!(who["profile"], "default");
    let mut command = user.command(&["whoami", "--json"]);
    let who: Value = serde_json::from_slice(
        &command
            .env("GUST_PROFILE", "second")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(who["profile"], "second");
    let missing = user.gust(&["agents", "--profile", "nobody"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(
        stderr(&missing).contains("no profile `nobody`"),
        "{}",
        stderr(&missing)
    );

    // A stored token never goes to another server: not the profile's, not one in the
    // environment meant for another URL, and not the one in a local data folder (whose host
    // recorded its own address). The "server" here records what it is sent.
    let elsewhere = Receiver::start(vec![]).await;
    let other_url = elsewhere.url.trim_end_matches("/hook").to_owned();
    std::fs::create_dir_all(user.cwd.join("gust-data")).unwrap();
    std::fs::write(user.cwd.join("gust-data/admin-token"), "local-data-token").unwrap();
    std::fs::write(user.cwd.join("gust-data/url"), "http://127.0.0.1:9\n").unwrap();
    let _ = user.gust(&["agents", "list", "--url", &other_url]);
    let _ = user.gust(&["--url", &other_url, "whoami"]);
    let _ = user
        .command(&["agents", "list", "--url", &other_url])
        .env("GUST_TOKEN", "meant-for-another-url")
        .output()
        .unwrap();
    let sent = elsewhere.received();
    assert_eq!(sent.len(), 3, "each command reached the other server");
    for request in &sent {
        assert_eq!(request.header("authorization"), "", "no token was sent");
    }
    // A token without its URL is refused, whichever place gives the URL.
    let mixed = user
        .command(&["agents", "list", "--token-stdin"])
        .env("GUST_URL", &other_url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(mixed.status.code(), Some(2), "{}", stderr(&mixed));
    let mixed = user
        .command(&["agents", "list", "--token", "t"])
        .env("GUST_URL", &other_url)
        .output()
        .unwrap();
    assert_eq!(mixed.status.code(), Some(2), "{}", stderr(&mixed));
    assert!(
        stderr(&mixed).contains("--token needs --url"),
        "{}",
        stderr(&mixed)
    );
    let wrong = user.gust(&["agents", "--profile", "default", "--url", &other_url]);
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    assert_eq!(elsewhere.received().len(), 3, "none of those was sent");
    // A flag --profile beats GUST_URL.
    let who = user
        .command(&["whoami", "--json", "--profile", "default"])
        .env("GUST_URL", &other_url)
        .output()
        .unwrap();
    assert_eq!(json_of(&who)["url"], json!(host.url));
    // The client's flags are refused where they mean nothing.
    let serve = user.gust(&["serve", "--token", "t", "--print-config"]);
    assert_eq!(serve.status.code(), Some(2), "{}", stderr(&serve));

    // A token on the command line works and is warned about; --token-stdin is not.
    let flagged = user.gust(&["agents", "--url", &host.url, "--token", TOKEN]);
    ok(&flagged);
    assert!(
        stderr(&flagged).contains("visible to other users"),
        "{}",
        stderr(&flagged)
    );
    let piped = user.gust_with_input(
        &["agents", "--url", &host.url, "--token-stdin"],
        &format!("{TOKEN}\n"),
    );
    ok(&piped);
    assert!(!stderr(&piped).contains("warning"), "{}", stderr(&piped));

    // Without --url, login goes back to the default profile's own server.
    ok(&user.gust_with_input(&["login"], &format!("{TOKEN}\n")));
    let who = json_of(&user.gust(&["whoami", "--json"]));
    assert_eq!(who["url"], json!(host.url), "{who}");

    // Logout forgets the default profile; then the local data folder is used, with the
    // address its host recorded (a closed port here): its token goes nowhere else.
    ok(&user.gust(&["logout"]));
    assert_eq!(
        user.gust(&["logout", "--profile", "second"]).status.code(),
        Some(4)
    );
    // The one profile left is the default now: commands still reach its server.
    let who = json_of(&user.gust(&["whoami", "--json"]));
    assert_eq!(
        (&who["profile"], &who["access"]),
        (&json!("default"), &json!("admin")),
        "{who}"
    );
    ok(&user.gust(&["logout", "--profile", "default"]));
    let after = user.gust(&["agents", "--url", &host.url]);
    assert_eq!(after.status.code(), Some(3), "{}", stderr(&after));
    let local = user.gust(&["agents", "list"]);
    assert_eq!(local.status.code(), Some(7), "{}", stderr(&local));
    assert!(stderr(&local).contains("127.0.0.1:9"), "{}", stderr(&local));
    // With the folder of this host (its URL recorded, its token), commands just work.
    std::fs::write(user.cwd.join("gust-data/url"), &host.url).unwrap();
    std::fs::write(user.cwd.join("gust-data/admin-token"), TOKEN).unwrap();
    let who = json_of(&user.gust(&["whoami", "--json"]));
    assert_eq!(
        (&who["url"], &who["access"]),
        (&json!(host.url), &json!("admin")),
        "{who}"
    );
}

/// Whatever the order of logouts, the one profile left is the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_profile_left_after_logouts_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let user = User::new();
    for profile in ["first", "second", "third"] {
        ok(&user.gust_with_input(
            &["login", "--profile", profile, "--url", &host.url],
            &format!("{TOKEN}\n"),
        ));
    }
    // The default (the last logged in) goes: two are left, and neither is chosen for the
    // user.
    let left = user.gust(&["logout"]);
    assert!(
        stderr(&left).contains("no default profile now"),
        "{}",
        stderr(&left)
    );
    ok(&user.gust(&["logout", "--profile", "first"]));
    let who = json_of(&user.gust(&["whoami", "--json"]));
    assert_eq!(
        (&who["profile"], &who["access"]),
        (&json!("second"), &json!("admin")),
        "{who}"
    );
}

/// Rotating the admin token updates the profile it came from, so the CLI keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_admin_token_updates_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    // A token the host generates and keeps (one given to it cannot be rotated by the API).
    let host = Host::spawn(dir.path().join("data"), &[], None).await;
    let token = std::fs::read_to_string(host.data_dir.join("admin-token")).unwrap();
    let user = User::new();
    ok(&user.gust_with_input(&["login", "--url", &host.url], &token));
    let rotated = ok(&user.gust(&["admin", "rotate-token"]));
    assert!(!rotated.trim().is_empty() && rotated.trim() != token.trim());
    let who = json_of(&user.gust(&["whoami", "--json"]));
    assert_eq!(who["access"], "admin", "{who}");
    let stored = std::fs::read_to_string(user.config_file()).unwrap();
    assert!(
        stored.contains(rotated.trim()),
        "the profile holds the new token"
    );

    // When the profile cannot be saved (here its lock is a folder), the new token is still
    // printed: the server no longer takes the old one, and shows the new one only once.
    let lock = user.config_file().with_file_name("config.toml.lock");
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&lock).unwrap();
    let unsaved = user.gust(&["admin", "rotate-token"]);
    assert_eq!(unsaved.status.code(), Some(1), "{}", stderr(&unsaved));
    let printed = String::from_utf8_lossy(&unsaved.stdout).trim().to_owned();
    assert!(
        stderr(&unsaved).contains("not saved"),
        "{}",
        stderr(&unsaved)
    );
    let who = json_of(&user.gust_with_input(
        &["whoami", "--json", "--url", &host.url, "--token-stdin"],
        &format!("{printed}\n"),
    ));
    assert_eq!(who["access"], "admin", "the printed token works: {who}");
}

/// Every read command has `--json` and prints one JSON document with the API's field names;
/// with or without it, a command whose reader went away (`gust … | head`) ends quietly with
/// exit code 0. The command tree is walked, so a new command must be classified here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_command_prints_json_and_ends_quietly_when_its_reader_goes() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("echo", gust_test_guests::ECHO).await;
    host.deploy("echo", None).await;
    let (_, key) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/agents/echo/keys")
                .json(&json!({"name": "app"})),
        )
        .await;
    let (_, run) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/agents/echo/runs")
                .json(&json!({})),
        )
        .await;
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let user = User::new();
    ok(&user.gust_with_input(&["login", "--url", &host.url], &format!("{TOKEN}\n")));

    // Read commands with the arguments to run them here, and the field their answer has.
    let reads: Vec<(&str, Vec<&str>, &str)> = vec![
        ("agents list", vec![], "agents"),
        ("agents show", vec!["echo"], "deployments"),
        ("versions list", vec!["echo"], "versions"),
        ("versions show", vec!["echo", "1"], "wit"),
        ("config", vec!["echo"], "sync_timeout_s"),
        ("runs get", vec!["echo", &run_id], "status"),
        ("runs list", vec!["echo"], "runs"),
        ("keys list", vec!["echo"], "keys"),
        ("endpoint", vec!["echo"], "endpoints"),
        ("logs", vec!["echo"], "lines"),
        ("stats", vec![], "calls_total"),
        ("whoami", vec![], "access"),
        ("health", vec![], "ready"),
    ];
    // Commands that change something, or work without a server.
    let others = [
        "serve",
        "new",
        "build",
        "toolchain install",
        "login",
        "logout",
        "deploy",
        "upload",
        "rollback",
        "agents delete",
        "agent",
        "versions delete",
        "run",
        "runs cancel",
        "runs rerun",
        "runs redeliver",
        "push test",
        "push rotate-secret",
        "keys create",
        "keys revoke",
        "admin rotate-token",
        "completions",
    ];
    let mut leaves = Vec::new();
    collect_leaves(&gust_cli::command(), "", &mut leaves);
    for leaf in &leaves {
        assert!(
            reads.iter().any(|(name, _, _)| name == leaf) || others.contains(&leaf.as_str()),
            "`gust {leaf}` is neither a read command nor listed among the others: classify it"
        );
    }
    for (name, args, field) in &reads {
        assert!(leaves.contains(&name.to_string()), "no command `{name}`");
        let mut argv: Vec<&str> = name.split(' ').collect();
        argv.extend(args);
        argv.push("--json");
        let answer = json_of(&user.gust(&argv));
        assert!(
            answer.get(field).is_some(),
            "`gust {name} --json` has no `{field}`: {answer}"
        );
        ends_quietly(&user, &argv, false);
        argv.pop();
        ends_quietly(&user, &argv, false);
    }
    assert!(key["key"].is_string());
    // Output that is not a read's answer: a sync call's, generated scripts and settings, and
    // the events `runs get --follow` writes to stderr (`2>&1 | head`).
    ends_quietly(&user, &["run", "echo", r#"{"hello": "pipe"}"#], false);
    ends_quietly(&user, &["completions", "bash"], false);
    ends_quietly(&user, &["serve", "--print-config"], false);
    ends_quietly(&user, &["runs", "get", "echo", &run_id, "--follow"], true);
}

/// Runs `gust args` with stdout (and with `stderr_too`, stderr) a pipe nobody reads any
/// more, as `gust … | head` finds it once `head` has its lines: it must end with exit code
/// 0 and without a word, not panic in `println!` (exit code 101).
fn ends_quietly(user: &User, args: &[&str], stderr_too: bool) {
    let output = into_closed_pipe(user, args, stderr_too);
    assert_eq!(
        output.status.code(),
        Some(0),
        "`gust {}` into a closed pipe: {}",
        args.join(" "),
        stderr(&output)
    );
    assert_eq!(
        stderr(&output),
        "",
        "`gust {}` into a closed pipe",
        args.join(" ")
    );
}

/// `gust args` with stdout (and with `stderr_too`, stderr) a pipe whose reader is gone.
fn into_closed_pipe(user: &User, args: &[&str], stderr_too: bool) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let errors_to = if stderr_too {
        Stdio::from(writer.try_clone().unwrap())
    } else {
        Stdio::piped()
    };
    user.command(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(errors_to)
        .output()
        .expect("running gust")
}

fn collect_leaves(command: &clap::Command, prefix: &str, leaves: &mut Vec<String>) {
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let name = if prefix.is_empty() {
            sub.get_name().to_owned()
        } else {
            format!("{prefix} {}", sub.get_name())
        };
        if sub.has_subcommands() {
            collect_leaves(sub, &name, leaves);
            // `gust agents` alone lists, so the group is a command too.
        } else {
            leaves.push(name);
        }
    }
}

/// A server on a free loopback port, as far as a CLI test needs one: it reads each
/// request, then `answer` writes what it will. The connections `answer` hands back are held
/// open, with nothing more said.
fn fake_server(
    answer: impl Fn(std::net::TcpStream) -> Option<std::net::TcpStream> + Send + 'static,
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            held.extend(answer(stream));
        }
    });
    url
}

/// A server that accepts a connection and then says nothing (hung, or gone behind a NAT
/// that drops packets silently) is given up on after `--timeout` (or GUST_TIMEOUT), with
/// "unavailable" (7), whether it owes an answer or the next part of a followed stream.
#[test]
fn a_server_that_never_answers_is_given_up_on() {
    // Accepts and reads, then holds every connection open without a word; with `head`, it
    // first answers the head of an event stream.
    let silent = |head: &'static str| {
        fake_server(move |mut stream| {
            let _ = stream.write_all(head.as_bytes());
            Some(stream)
        })
    };
    let user = User::new();
    let mute = silent("");
    let streaming = silent(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    let gave_up = |output: &Output, what: &str| {
        assert_eq!(output.status.code(), Some(7), "{what}: {}", stderr(output));
        assert!(
            stderr(output).contains("said nothing for 1 s"),
            "{what}: {}",
            stderr(output)
        );
    };
    let started = std::time::Instant::now();
    let list = user.gust(&[
        "agents",
        "list",
        "--url",
        &mute,
        "--token",
        "t",
        "--timeout",
        "1",
    ]);
    gave_up(&list, "a request");
    // It answers, then stops partway through the body.
    let stalled = silent(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"agents\"",
    );
    let partway = user.gust(&[
        "agents",
        "list",
        "--url",
        &stalled,
        "--token",
        "t",
        "--timeout",
        "1",
    ]);
    gave_up(&partway, "a body that stops");
    let mut follow = user.command(&["logs", "a", "--follow", "--url", &streaming, "--token", "t"]);
    let follow = follow.env("GUST_TIMEOUT", "1").output().unwrap();
    gave_up(&follow, "a followed stream");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "gave up after {:?}",
        started.elapsed()
    );
    // A sync call may take as long as the agent's `sync_timeout_s`: it is not cut at 1 s.
    let mut run = user
        .command(&[
            "run",
            "a",
            "{}",
            "--url",
            &mute,
            "--token",
            "t",
            "--timeout",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let waiting = run.try_wait().unwrap().is_none();
    let _ = run.kill();
    let _ = run.wait();
    assert!(waiting, "a sync call was cut at the timeout");
    // The bound is on silence: an answer whose bytes keep coming is read to its end, however
    // long it takes (a large run output over a slow link).
    let trickling = fake_server(|mut stream| {
        // JSON may carry spaces: 12 parts, 300 ms apart, over 3.6 s.
        let body = format!("{{\"agents\":[]{}}}", " ".repeat(10));
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        for part in body.as_bytes().chunks(body.len().div_ceil(12)) {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let _ = stream.write_all(part);
        }
        None
    });
    let slow = user.gust(&[
        "agents",
        "list",
        "--url",
        &trickling,
        "--token",
        "t",
        "--timeout",
        "1",
    ]);
    assert_eq!(slow.status.code(), Some(0), "{}", stderr(&slow));
    let mut bad = user.command(&["agents", "list", "--url", &mute, "--token", "t"]);
    let bad = bad.env("GUST_TIMEOUT", "soon").output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let user = User::new();
    ok(&user.gust_with_input(&["login", "--url", &host.url], &format!("{TOKEN}\n")));
    let code = |args: &[&str]| user.gust(args).status.code();

    assert_eq!(code(&["agents", "show", "probe"]), Some(0));
    assert_eq!(code(&["agents", "--no-such-flag"]), Some(2), "usage");
    assert_eq!(
        code(&["config", "probe", "--set", "no-equals-sign"]),
        Some(2),
        "usage"
    );
    assert_eq!(
        code(&["agents", "--url", &host.url, "--token", "wrong"]),
        Some(3),
        "auth"
    );
    assert_eq!(code(&["agents", "show", "nobody"]), Some(4), "not found");
    assert_eq!(
        code(&["versions", "delete", "probe", "1", "--yes"]),
        Some(5),
        "conflict"
    );
    assert_eq!(
        code(&["run", "probe", r#"{"op":"fail"}"#]),
        Some(6),
        "run failed"
    );
    // Input that is not JSON, or a file that cannot be read, is a mistake on the command
    // line: no run is made (a queued one was accepted, only to fail).
    assert_eq!(code(&["run", "probe", "hello"]), Some(2), "usage");
    assert_eq!(
        code(&["run", "--async", "probe", "hello"]),
        Some(2),
        "usage"
    );
    assert_eq!(
        code(&["run", "probe", "@no-such-file.json"]),
        Some(2),
        "usage"
    );
    // The run's outcome still decides when the output's reader went away (`| head -1`).
    let failed = user.gust(&["run", "--async", "--wait", "probe", r#"{"op":"fail"}"#]);
    assert_eq!(failed.status.code(), Some(6), "{}", stderr(&failed));
    let printed = String::from_utf8_lossy(&failed.stdout);
    let id = printed
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("run:")
        .trim();
    let unread = into_closed_pipe(&user, &["runs", "get", "probe", id], false);
    assert_eq!(unread.status.code(), Some(6), "{}", stderr(&unread));
    // With only the events' reader gone (`2> >(head -1)`), the run is still followed to its
    // end and printed, and its failure is still the exit code.
    let (events_reader, events) = std::io::pipe().unwrap();
    drop(events_reader);
    let followed = user
        .command(&["runs", "get", "probe", id, "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(events)
        .output()
        .unwrap();
    assert_eq!(followed.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&followed.stdout).contains(id));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    assert_eq!(
        code(&["agents", "--url", &closed, "--token", "t"]),
        Some(7),
        "unavailable"
    );

    // A destructive command without a terminal to ask on needs --yes.
    let unasked = user.gust(&["agents", "delete", "probe"]);
    assert_eq!(unasked.status.code(), Some(2));
    assert!(
        stderr(&unasked).contains("pass --yes"),
        "{}",
        stderr(&unasked)
    );
    assert_eq!(code(&["agents", "show", "probe"]), Some(0), "still there");
    assert_eq!(code(&["agents", "delete", "probe", "--yes"]), Some(0));
    assert_eq!(code(&["agents", "show", "probe"]), Some(4));
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let user = User::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&user.gust(&["completions", shell]));
        for word in ["versions", "rotate-secret", "json", "token-stdin"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script is valid bash.
    let script = ok(&user.gust(&["completions", "bash"]));
    let file = user.cwd.join("gust.bash");
    std::fs::write(&file, script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).status().unwrap();
    assert!(check.success(), "bash -n rejected the completion script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_standard_input_not_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    let receiver = Receiver::start(vec![]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    let user = User::new();
    ok(&user.gust_with_input(&["login", "--url", &host.url], &format!("{TOKEN}\n")));

    let configured = user.gust_with_input(
        &[
            "config",
            "probe",
            "--mode",
            "async",
            "--push-url",
            &receiver.url,
            "--push-token",
            "-",
        ],
        "from-stdin\n",
    );
    ok(&configured);
    assert!(
        !stderr(&configured).contains("warning"),
        "{}",
        stderr(&configured)
    );
    let set = user.gust_with_input(&["config", "probe", "--secret", "API_KEY"], "sk-123\n");
    let shown = ok(&set);
    assert!(
        !shown.contains("sk-123"),
        "a secret is not printed back: {shown}"
    );
    let draft = json_of(&user.gust(&["config", "probe", "--json"]));
    assert_eq!(draft["config"]["API_KEY"], "sk-123");
    let two = user.gust_with_input(
        &["config", "probe", "--secret", "A", "--push-token", "-"],
        "x\n",
    );
    assert_eq!(two.status.code(), Some(2), "{}", stderr(&two));

    ok(&user.gust(&["deploy", "probe", "--yes"]));
    ok(&user.gust(&["push", "test", "probe"]));
    assert_eq!(
        receiver.received()[0].header("authorization"),
        "Bearer from-stdin",
        "the token read from standard input is the one pushed with"
    );
    // The old flag still works, with a warning.
    let flagged = user.gust(&[
        "config",
        "probe",
        "--push-url",
        &receiver.url,
        "--push-token",
        "t2",
    ]);
    ok(&flagged);
    assert!(
        stderr(&flagged).contains("--push-token -"),
        "{}",
        stderr(&flagged)
    );
}

/// Ctrl-C at a hidden prompt leaves the terminal as it was: rpassword, which reads the
/// secret, raises SIGINT itself before it turns echo back on, and the process ended there.
#[test]
fn ctrl_c_at_a_secret_prompt_leaves_the_terminal_echoing() {
    let user = User::new();
    // On a pty: the prompt, Ctrl-C typed at it, then what the terminal's settings are.
    let line = format!(
        "{} login --url http://127.0.0.1:9; echo \"exit $?\"; stty -a",
        env!("CARGO_BIN_EXE_gust")
    );
    let mut child = user.on_a_pty(&line);
    let mut stdin = child.stdin.take().unwrap();
    let screen = Screen::of(&mut child);
    // Ctrl-C once the prompt is up and reading: typed before, while the terminal still turns
    // it into a signal for every process on it, it would end the shell too.
    screen.wait_for("admin token for", &mut child);
    std::thread::sleep(std::time::Duration::from_millis(500));
    stdin.write_all(b"\x03").unwrap();
    screen.wait_for("min = ", &mut child);
    drop(stdin);
    let _ = child.wait();
    let screen = screen.end();
    assert!(screen.contains("admin token for"), "{screen}");
    assert!(screen.contains("exit 130"), "{screen}");
    let settings: Vec<&str> = screen.split_whitespace().collect();
    assert!(
        settings.contains(&"echo") && !settings.contains(&"-echo"),
        "{screen}"
    );
}

/// On a terminal (a pty from util-linux `script`), `gust deploy` shows what changes and asks;
/// "n" changes nothing, "y" deploys, and the upload shows progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_asks_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let user = User::new();
    ok(&user.gust_with_input(&["login", "--url", &host.url], &format!("{TOKEN}\n")));
    let on_terminal = |answer: &str| {
        let line = format!(
            "{} deploy echo {}",
            env!("CARGO_BIN_EXE_gust"),
            gust_test_guests::ECHO
        );
        let mut child = user.on_a_pty(&line);
        let mut stdin = child.stdin.take().unwrap();
        // The terminal keeps what is typed until the question reads it; standard input stays
        // open a while so `script` does not end the session before then.
        let answer = answer.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(answer.as_bytes());
            std::thread::sleep(std::time::Duration::from_secs(5));
            drop(stdin);
        });
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };

    let (code, screen) = on_terminal("n\n");
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("deploying echo:"), "{screen}");
    assert!(screen.contains("[y/N]"), "{screen}");
    assert!(screen.contains("not confirmed"), "{screen}");
    let agent = json_of(&user.gust(&["agents", "show", "echo", "--json"]));
    assert!(agent["live"].is_null(), "nothing was deployed: {agent}");

    let (code, screen) = on_terminal("y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("uploading") && screen.contains(" B/") && screen.contains("KiB"),
        "a progress bar on the terminal: {screen}"
    );
    assert!(screen.contains("deployed echo version 1"), "{screen}");
    let agent = json_of(&user.gust(&["agents", "show", "echo", "--json"]));
    assert_eq!(agent["live"]["version"], 1, "{agent}");

    // The configuration changes while the question is up (someone else's `gust config`):
    // the "y" was given to what was shown, so nothing is deployed.
    host.set_config("echo", json!({"config": {"shown": "yes"}}))
        .await;
    let line = format!("{} deploy echo", env!("CARGO_BIN_EXE_gust"));
    let mut child = user.on_a_pty(&line);
    let mut stdin = child.stdin.take().unwrap();
    let screen = Screen::of(&mut child);
    screen.wait_for("[y/N]", &mut child);
    host.set_config("echo", json!({"config": {"not_shown": "yes"}}))
        .await;
    stdin.write_all(b"y\n").unwrap();
    screen.wait_for("nothing was deployed", &mut child);
    drop(stdin);
    let status = child.wait().unwrap();
    let screen = screen.end();
    assert!(screen.contains("+ shown"), "the change shown: {screen}");
    assert!(
        screen.contains("changed after the preview above"),
        "{screen}"
    );
    assert_eq!(status.code(), Some(5), "a conflict: {screen}");
    let agent = json_of(&user.gust(&["agents", "show", "echo", "--json"]));
    assert_eq!(
        agent["live"]["deployment"], 1,
        "nothing was deployed: {agent}"
    );
}
