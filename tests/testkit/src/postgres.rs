//! A throwaway PostgreSQL server for tests: its own folder, a free loopback port, trust
//! authentication for the user `gust`, and `fsync` on (the store's durability is part of what
//! is tested). Each test makes its own database with [`PgCluster::create_database`], so tests
//! can share one server.
//!
//! PostgreSQL refuses to run as root, and tests here often do: as root the server runs as the
//! `postgres` user (else `nobody`), which owns the folder. Otherwise it runs as the caller.
//!
//! The server is started under a small shell that holds the read end of a pipe whose write end
//! this process keeps. When this process ends in any way — a panic, an abort, a kill, or a
//! cluster kept in a `static` that is never dropped — the pipe closes, and the shell shuts the
//! server down. No server outlives its test binary.

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The role tests connect as (created by `initdb`, a superuser).
pub const USER: &str = "gust";

/// How long the server may take to accept connections, and to stop.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running PostgreSQL server, stopped when dropped.
pub struct PgCluster {
    /// The cluster's folder: the socket, the log and `data/`; removed when dropped.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user and group the server runs as, when this process is root.
    owner: Option<(u32, u32)>,
    /// `-c name=value` settings given at every start.
    settings: Vec<(String, String)>,
    /// The shell that runs the server; `None` while stopped.
    server: Option<Server>,
}

struct Server {
    shell: Child,
    /// Closing it (or writing a line) makes the shell stop the server.
    stop: ChildStdin,
}

/// How to start a [`PgCluster`]: settings, and files placed in its data folder.
#[derive(Default)]
pub struct PgClusterBuilder {
    settings: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
}

impl PgClusterBuilder {
    /// Adds a server setting (`-c name=value`), e.g. `ssl` = `on`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Places a file in the data folder before the server starts, owned by the server's user
    /// with mode 0600 (what PostgreSQL demands of a private key). Settings that name a file
    /// by a relative path find it there.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_owned(), contents.into()));
        self
    }

    /// Creates the cluster and starts the server.
    ///
    /// # Errors
    /// When PostgreSQL is not installed, or `initdb` or the server fails (the error has the
    /// server's log).
    pub fn start(self) -> anyhow::Result<PgCluster> {
        let bin = postgres_bin()?.context(NOT_INSTALLED)?;
        let owner = server_owner()?;
        let dir = tempfile::Builder::new()
            .prefix("gust-pg-")
            .tempdir()
            .context("creating the cluster's folder")?;
        if let Some((uid, gid)) = owner {
            rustix::fs::chown(dir.path(), Some(uid_of(uid)), Some(gid_of(gid)))
                .with_context(|| format!("handing {} to uid {uid}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        let output = as_owner(&mut initdb, owner)
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        for (name, contents) in &self.files {
            let path = data.join(name);
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                rustix::fs::chown(&path, Some(uid_of(uid)), Some(gid_of(gid)))?;
            }
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            port: free_port()?,
            owner,
            settings: self.settings,
            server: None,
        };
        cluster.start_server()?;
        Ok(cluster)
    }
}

const NOT_INSTALLED: &str =
    "PostgreSQL is not installed: scripts/setup installs it (or set GUST_PG_BIN to its bin folder)";

impl PgCluster {
    /// A cluster with the default settings.
    ///
    /// # Errors
    /// As [`PgClusterBuilder::start`].
    pub fn start() -> anyhow::Result<Self> {
        Self::builder().start()
    }

    /// A builder, for settings and files (TLS certificates).
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// Like [`PgCluster::start`], but when PostgreSQL is not installed and this is not CI
    /// (`CI=true`), prints why and answers `None`, so the caller can skip its test.
    ///
    /// # Errors
    /// When the server fails, or PostgreSQL is missing under CI.
    pub fn start_or_skip() -> anyhow::Result<Option<Self>> {
        if postgres_bin()?.is_none() {
            eprintln!("skipping: {NOT_INSTALLED}");
            return Ok(None);
        }
        Self::start().map(Some)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db`, as user [`USER`] (no password: the server trusts it).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and answers its URL.
    ///
    /// # Errors
    /// When `createdb` fails (e.g. the name is taken).
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let output = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", USER, "-p"])
            .arg(self.port.to_string())
            .arg(name)
            .stdin(Stdio::null())
            .output()
            .context("running createdb")?;
        if !output.status.success() {
            bail!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(self.url(name))
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits until it is gone.
    ///
    /// # Errors
    /// When it does not stop within a minute.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        let _ = server.stop.write_all(b"stop\n");
        drop(server.stop);
        let deadline = Instant::now() + PATIENCE;
        while server.shell.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = server.shell.kill();
                bail!("PostgreSQL did not stop within {}s", PATIENCE.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the server and starts it again on the same port, with the same data: an outage
    /// as clients see it.
    ///
    /// # Errors
    /// When it does not stop or start.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// Starts the server after a [`PgCluster::stop`].
    ///
    /// # Errors
    /// When it does not start.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        self.start_server()
    }

    fn start_server(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("opening the server log")?;
        if let Some((uid, gid)) = self.owner {
            rustix::fs::chown(&log_path, Some(uid_of(uid)), Some(gid_of(gid)))?;
        }
        // The shell starts the server in the background (its stdin is then /dev/null, so
        // the server does not hold the pipe) and waits for a line or the end of the pipe.
        // A line is `stop` (the folder is kept, for `start_again`, and removed by `Drop`);
        // the end of the pipe is this process ending without a drop (a `static` cluster, a
        // panic that aborts): then the shell removes the folder too, else every such run
        // would leave its server's data (1–2 GB after the end-to-end suite) in /tmp.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(concat!(
                r#"dir="$1"; pg="$2"; shift 2; "$pg" "$@" & pid=$!; "#,
                r#"if read -r _; then kill -INT "$pid"; wait "$pid"; "#,
                r#"else kill -INT "$pid"; wait "$pid"; rm -rf "$dir"; fi"#
            ))
            .arg("sh")
            .arg(self.dir.path())
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "max_connections=300"]);
        for (name, value) in &self.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        let mut shell = as_owner(&mut command, self.owner)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting PostgreSQL")?;
        let stop = shell
            .stdin
            .take()
            .context("the shell's stdin is not piped")?;
        self.server = Some(Server { shell, stop });
        self.wait_ready(&log_path)
    }

    fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", USER, "-d", "postgres", "-p"])
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            let exited = match &mut self.server {
                Some(server) => server.shell.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                self.server = None;
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "PostgreSQL did not start on port {}{}:\n{log}",
                    self.port,
                    if exited { " (it exited)" } else { "" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The folder of the newest installed PostgreSQL's programs: `$GUST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian's layout), else wherever `initdb` is on `PATH`.
/// `None` when there is none and this is not CI.
///
/// # Errors
/// Under CI (`CI=true`) when PostgreSQL is missing: CI must not skip these tests silently.
pub fn postgres_bin() -> anyhow::Result<Option<PathBuf>> {
    let found = find_bin();
    if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!(NOT_INSTALLED);
    }
    Ok(found)
}

fn find_bin() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("GUST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return has_server(&dir).then_some(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    if let Some((_, bin)) = newest {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| has_server(dir))
}

/// As root: the uid and gid of `postgres`, else of `nobody`. Otherwise `None`: the server runs
/// as the caller.
fn server_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let ids = |user: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == user)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
    };
    ids("postgres").or_else(|| ids("nobody")).map(Some).context(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as",
    )
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

fn uid_of(uid: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(gid)
}

/// A port nobody listens on now. Another process could take it before the server binds it;
/// then the server fails to start and says so.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_makes_databases_restarts_and_stops() {
        let Some(mut cluster) = PgCluster::start_or_skip().unwrap() else {
            return;
        };
        let url = cluster.create_database("one").unwrap();
        assert!(url.ends_with("/one"), "{url}");
        assert!(cluster.create_database("one").is_err(), "taken");
        cluster.restart().unwrap();
        cluster.create_database("two").unwrap();
        let folder = cluster.dir.path().to_owned();
        drop(cluster);
        assert!(!folder.exists(), "the folder goes with the cluster");
    }

    /// A cluster held in a `static` is never dropped: the process ends with it running. The
    /// server must still stop and its folder go, or every test run leaves gigabytes in /tmp.
    #[test]
    fn a_cluster_never_dropped_goes_when_its_process_ends() {
        if postgres_bin().unwrap().is_none() {
            eprintln!("skipping: {NOT_INSTALLED}");
            return;
        }
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "postgres::tests::exits_holding_a_cluster"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(HOLDER, "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let folder = stdout
            .lines()
            .find_map(|line| line.split_once("cluster folder: ").map(|(_, path)| path))
            .unwrap_or_else(|| {
                panic!(
                    "the child printed no folder ({}):\n{stdout}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        let folder = PathBuf::from(folder);
        let deadline = Instant::now() + PATIENCE;
        while folder.exists() {
            assert!(
                Instant::now() < deadline,
                "{} is still there a minute after its process ended",
                folder.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    const HOLDER: &str = "GUST_TEST_EXIT_HOLDING_A_CLUSTER";

    /// The child of the test above: starts a cluster and exits without dropping it.
    #[test]
    #[ignore = "run by a_cluster_never_dropped_goes_when_its_process_ends"]
    fn exits_holding_a_cluster() {
        if std::env::var_os(HOLDER).is_none() {
            return;
        }
        let cluster = PgCluster::start().unwrap();
        println!("cluster folder: {}", cluster.dir.path().display());
        std::process::exit(0);
    }
}
