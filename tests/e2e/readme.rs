//! The README, run: every `sh` block runs against a live host, in the README's order, unless
//! it is on the exclusion list below with a reason. Blocks under one heading run in one
//! shell, as a reader types them in one terminal; a block whose info string names a file
//! (```` ```python receiver.py ````) is written to that file where the shell is. So the README
//! cannot drift from what gust does: a command that changed fails here.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Host;
use crate::support::componentize::repo;

/// Blocks not run, by the heading they are under and their first line, with the reason. A
/// stand-in, when given, runs in the block's place (what the block would have made).
const EXCLUDED: &[Excluded] = &[
    Excluded {
        heading: "Several hosts",
        first_line: "GUST_DATABASE_URL=",
        reason: "names the reader's database server and secrets; tests/e2e/cluster.rs runs \
                 hosts on a PostgreSQL of its own",
        stand_in: None,
    },
    Excluded {
        heading: "Several hosts",
        first_line: "scripts/cluster",
        reason: "serves in the foreground until Ctrl-C; tests/e2e/cluster.rs covers several \
                 hosts on one PostgreSQL",
        stand_in: None,
    },
    Excluded {
        heading: "Quick start",
        first_line: "scripts/quickstart",
        reason: "builds the host in release mode and serves in the foreground; `scripts/test` \
                 is this test run itself",
        stand_in: None,
    },
    Excluded {
        heading: "Install",
        first_line: "cargo install --locked --path runtime/cli",
        reason: "a release build of the whole host (minutes of CI); the test runs the gust \
                 binary cargo built for it, put first on PATH",
        stand_in: None,
    },
    Excluded {
        heading: "Packaging",
        first_line: "docker build",
        reason: "builds an image from Docker Hub's base images, which CI cannot reach, with a \
                 release build inside",
        stand_in: None,
    },
    Excluded {
        heading: "Packaging",
        first_line: "cargo build --release --locked -p gust-cli",
        reason: "installs into /usr/local and /etc and starts a systemd service: root and a \
                 running systemd, which a test must not touch",
        stand_in: None,
    },
    Excluded {
        heading: "From zero to async push",
        first_line: "gust serve --allow-private-network",
        reason: "the test starts this host itself, with the same flag, on a free port",
        stand_in: None,
    },
    Excluded {
        heading: "From zero to async push",
        first_line: "python3 -m venv .venv",
        reason: "installs from PyPI and npm, and tests reach only loopback; the stand-in links \
                 the same pinned packages scripts/setup installed (tests/receivers)",
        stand_in: Some(
            "ln -s \"$GUST_REPO/.tools/receivers\" .venv\n\
             ln -s \"$GUST_REPO/tests/receivers/node_modules\" node_modules",
        ),
    },
];

struct Excluded {
    heading: &'static str,
    first_line: &'static str,
    reason: &'static str,
    stand_in: Option<&'static str>,
}

#[derive(Debug)]
struct Block {
    line: usize,
    heading: String,
    info: String,
    text: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        if let Some(block) = &mut open {
            if line.starts_with("```") {
                blocks.push(open.take().unwrap());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
        } else if let Some(info) = line.strip_prefix("```") {
            open = Some(Block {
                line: i + 1,
                heading: heading.clone(),
                info: info.trim().to_owned(),
                text: String::new(),
            });
        } else if let Some(title) = line.strip_prefix("## ").or(line.strip_prefix("### ")) {
            heading = title.trim().to_owned();
        }
    }
    assert!(open.is_none(), "README.md has an unclosed code block");
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sh_block_in_the_readme_runs() {
    let repo = repo().canonicalize().unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let blocks = blocks(&readme);

    // The exclusion list stays true: each entry names exactly one block.
    for excluded in EXCLUDED {
        let matching = blocks
            .iter()
            .filter(|b| is_excluded_by(b, excluded))
            .count();
        assert_eq!(
            matching, 1,
            "the README exclusion for `{}` under `{}` ({}) matches {matching} blocks",
            excluded.first_line, excluded.heading, excluded.reason
        );
    }
    for tool in [
        ".tools/receivers/bin/python",
        "tests/receivers/node_modules",
    ] {
        assert!(
            repo.join(tool).exists(),
            "{tool} is missing: run scripts/setup first"
        );
    }

    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let host = Host::spawn(work.join("gust-data"), &["--allow-private-network"], None).await;
    let ports = [free_port(), free_port()];
    let home = work.join("home");
    let cache = work.join("cache");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(repo.join(".tools"), cache.join("toolchains")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_gust")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let substitute = |text: &str| {
        text.replace("http://127.0.0.1:8080", &host.url)
            .replace("127.0.0.1:9000", &format!("127.0.0.1:{}", ports[0]))
            .replace("PORT=9000", &format!("PORT={}", ports[0]))
            .replace("127.0.0.1:9001", &format!("127.0.0.1:{}", ports[1]))
            .replace("PORT=9001", &format!("PORT={}", ports[1]))
    };

    // One script per heading, in the README's order.
    let mut scripts: Vec<(String, String)> = Vec::new();
    for block in &blocks {
        let file = block.info.split_whitespace().nth(1);
        let runnable = block.info == "sh" || file.is_some();
        if !runnable {
            continue;
        }
        if scripts.last().is_none_or(|(h, _)| *h != block.heading) {
            scripts.push((block.heading.clone(), "set -euo pipefail\n".to_owned()));
        }
        let script = &mut scripts.last_mut().unwrap().1;
        script.push_str(&format!("echo '### README.md line {}' >&2\n", block.line));
        if let Some(file) = file {
            script.push_str(&format!(
                "cat > {file} <<'GUST_README_EOF'\n{}GUST_README_EOF\n",
                block.text
            ));
        } else if let Some(excluded) = EXCLUDED.iter().find(|e| is_excluded_by(block, e)) {
            script.push_str(excluded.stand_in.unwrap_or(":"));
            script.push('\n');
        } else {
            script.push_str(&substitute(&block.text));
        }
    }

    let mut sessions = Vec::new();
    for (i, (heading, script)) in scripts.iter().enumerate() {
        let dir = work.join(format!("section-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        // Each section starts where the reader's host runs: beside its data folder.
        std::os::unix::fs::symlink(&host.data_dir, dir.join("gust-data")).unwrap();
        let log = dir.join("session.log");
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .env("HOME", &home)
            .env("PATH", &path)
            .env("GUST_CACHE_DIR", &cache)
            .env("GUST_REPO", &repo)
            .env(
                "CARGO_TARGET_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-rust"),
            )
            .env("NO_COLOR", "1")
            .env_remove("GUST_URL")
            .env_remove("GUST_TOKEN")
            .env_remove("GUST_PROFILE")
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            // Its own process group, so receivers it leaves running can be stopped.
            .process_group(0)
            .spawn()
            .unwrap();
        sessions.push(Session {
            group: child.id(),
            dir: dir.clone(),
        });
        let status = wait(&mut child, Duration::from_secs(900));
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status == Some(0),
            "the README's section `{heading}` failed ({status:?}); its session:\n{output}"
        );
    }

    // Both receivers verified what they were pushed (their logs hold only verified events):
    // the test event, and runs that succeeded with the agent's answer.
    let walkthrough = sessions
        .iter()
        .map(|s| s.dir.join("greeter"))
        .find(|d| d.join("python-receiver.log").exists())
        .expect("the walkthrough ran its Python receiver");
    let python = received(&walkthrough.join("python-receiver.log"), "Ada").await;
    assert!(
        python.iter().any(|e| e["type"] == "push.test"),
        "{python:?}"
    );
    let node = received(&walkthrough.join("node-receiver.log"), "Node").await;
    let event = node.iter().find(|e| e["type"] == "run.succeeded").unwrap();

    // The README's sample event has the shape of a real one.
    let sample = blocks
        .iter()
        .find(|b| b.heading == "From zero to async push" && b.info == "json")
        .expect("the walkthrough shows a sample event");
    let sample: Value = serde_json::from_str(&sample.text).expect("the sample is JSON");
    assert_eq!(keys(&sample), keys(event), "the sample event's fields");
    assert_eq!(
        keys(&sample["data"]),
        keys(&event["data"]),
        "the sample run's fields"
    );
    assert_eq!(
        keys(&sample["data"]["delivery"]),
        keys(&event["data"]["delivery"])
    );
}

/// A section's shell; what it left running (the receivers) is stopped with it.
struct Session {
    group: u32,
    dir: PathBuf,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Already gone is fine: the group may have ended with its shell.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.group)])
            .stderr(Stdio::null())
            .status();
    }
}

fn is_excluded_by(block: &Block, excluded: &Excluded) -> bool {
    block.info == "sh"
        && block.heading == excluded.heading
        && block
            .text
            .lines()
            .next()
            .unwrap_or("")
            .starts_with(excluded.first_line)
}

/// The exit code, or None when it ran past `limit` (then it is killed).
fn wait(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The events a walkthrough receiver printed, once one is a run that greeted `name`.
async fn received(log: &Path, name: &str) -> Vec<Value> {
    let greeting = format!("Hello, {name}!");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events: Vec<Value> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let done = events.iter().any(|e| {
            e["type"] == "run.succeeded" && e["data"]["output"]["json"]["greeting"] == greeting
        });
        if done {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} got no run.succeeded for {name}: {events:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}
