//! What the tests share: starting hosts and talking to them (here), a push receiver
//! (`receiver`), an upstream for guests' outgoing requests (`upstream`), and Python and
//! JavaScript guests built from source (`componentize`).

pub(crate) mod componentize;
pub(crate) mod receiver;
pub(crate) mod sse;
pub(crate) mod upstream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub(crate) const TOKEN: &str = "test-admin-token-0123456789";

/// A running `gust serve`; killed when dropped.
pub(crate) struct Host {
    serving: gust_testkit::Serving,
    pub(crate) url: String,
    pub(crate) data_dir: PathBuf,
    log: PathBuf,
    /// Everything the host printed on stdout (the address line, a generated token).
    pub(crate) stdout: Arc<Mutex<Vec<String>>>,
    pub(crate) http: reqwest::Client,
}

impl Host {
    /// Starts a host on a fresh data folder inside `dir`.
    pub(crate) async fn start(dir: &Path) -> Self {
        Self::start_on(dir.join("data"), &[]).await
    }

    /// Starts a host on `data_dir` (which may hold an earlier host's data) and waits until
    /// it is ready.
    pub(crate) async fn start_on(data_dir: PathBuf, extra: &[&str]) -> Self {
        Self::spawn(data_dir, extra, Some(TOKEN)).await
    }

    /// Starts a host with the admin token given in the environment, or none (so the host
    /// uses the one in its data folder or makes one).
    pub(crate) async fn spawn(data_dir: PathBuf, extra: &[&str], token: Option<&str>) -> Self {
        Self::spawn_with(data_dir, extra, token, reqwest::Client::new()).await
    }

    /// As [`Host::spawn`], talking to the host with `http` (for TLS, a client that trusts
    /// the host's certificate).
    pub(crate) async fn spawn_with(
        data_dir: PathBuf,
        extra: &[&str],
        token: Option<&str>,
        http: reqwest::Client,
    ) -> Self {
        Self::launch(data_dir, extra, token, http, None).await
    }

    /// Starts a host whose address space is capped at `kib` KiB (`ulimit -v`), as on a
    /// machine with little virtual memory to give.
    pub(crate) async fn start_with_address_space(dir: &Path, kib: u64) -> Self {
        let data_dir = dir.join("data");
        Self::launch(
            data_dir,
            &[],
            Some(TOKEN),
            reqwest::Client::new(),
            Some(kib),
        )
        .await
    }

    async fn launch(
        data_dir: PathBuf,
        extra: &[&str],
        token: Option<&str>,
        http: reqwest::Client,
        address_space_kib: Option<u64>,
    ) -> Self {
        std::fs::create_dir_all(&data_dir).unwrap();
        let log = data_dir.with_extension(format!("log.{}", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let gust = env!("CARGO_BIN_EXE_gust");
        let mut command = match address_space_kib {
            None => Command::new(gust),
            // The shell sets the limit, then becomes gust (same pid, so kill works).
            Some(kib) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", r#"ulimit -v "$0" && exec "$@""#])
                    .arg(kib.to_string())
                    .arg(gust);
                sh
            }
        };
        gust_testkit::serve_args(&mut command, &data_dir)
            .args(suite_database(&data_dir, extra))
            .args(if extra.contains(&"--log") {
                &[][..]
            } else {
                &["--log", "info"][..]
            })
            .args(extra)
            .env_remove("GUST_ADMIN_TOKEN")
            .stderr(log_file);
        if let Some(token) = token {
            command.env("GUST_ADMIN_TOKEN", token);
        }
        let serving = match gust_testkit::spawn(&mut command, Duration::from_secs(60)) {
            Ok(serving) => serving,
            Err(e) => panic!(
                "gust did not start ({e:#}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        let host = Self {
            url: serving.url.clone(),
            stdout: Arc::clone(&serving.stdout),
            serving,
            data_dir,
            log,
            http,
        };
        host.wait_ready().await;
        host
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host never became ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the host logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, like a crash or a power cut of the process.
    pub(crate) fn kill9(mut self) -> PathBuf {
        self.serving.child.kill().unwrap();
        self.serving.child.wait().unwrap();
        self.data_dir.clone()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.serving.child.id()
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.serving.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the host did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    /// Sends a signal with `kill(1)`.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Sends and returns the status with the body parsed as JSON (`Null` when empty).
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("request failed: {e:?}\n{}", self.log()));
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, body)
    }

    pub(crate) async fn upload(&self, agent: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        self.send(
            self.request(Method::POST, &format!("/v1/agents/{agent}/versions"))
                .body(bytes),
        )
        .await
    }

    pub(crate) async fn upload_file(&self, agent: &str, path: &str) -> u32 {
        let (status, body) = self.upload(agent, std::fs::read(path).unwrap()).await;
        assert!(status.is_success(), "upload failed: {status} {body}");
        body["version"].as_u64().unwrap() as u32
    }

    pub(crate) async fn set_config(&self, agent: &str, config: Value) {
        let (status, body) = self
            .send(
                self.request(Method::PUT, &format!("/v1/agents/{agent}/config"))
                    .json(&config),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub(crate) async fn deploy(&self, agent: &str, version: Option<u32>) -> Value {
        let body = match version {
            Some(v) => serde_json::json!({ "version": v }),
            None => serde_json::json!({}),
        };
        let (status, answer) = self
            .send(
                self.request(Method::POST, &format!("/v1/agents/{agent}/deploy"))
                    .json(&body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// A sync call: status, the `gust-agent-version` header, and the JSON body.
    pub(crate) async fn call(&self, agent: &str, input: Value) -> (StatusCode, Option<u32>, Value) {
        let (status, version, body) = self.sync_call(agent, input, "gust-agent-version").await;
        (status, version.and_then(|v| v.parse().ok()), body)
    }

    /// A sync call that must answer 200: its JSON body, and how long it took.
    pub(crate) async fn call_timed(&self, agent: &str, input: Value) -> (Value, Duration) {
        let started = Instant::now();
        let (status, _, body) = self.call(agent, input).await;
        assert_eq!(status, StatusCode::OK, "{agent}: {body}");
        (body, started.elapsed())
    }

    /// A sync call: status, its run id (`gust-run-id`), and the JSON body.
    pub(crate) async fn call_run(&self, agent: &str, input: Value) -> (StatusCode, String, Value) {
        let (status, run_id, body) = self.sync_call(agent, input, "gust-run-id").await;
        (status, run_id.unwrap_or_default(), body)
    }

    /// A sync call: status, the answer's `header`, and the JSON body (`Null` when not JSON).
    async fn sync_call(
        &self,
        agent: &str,
        input: Value,
        header: &str,
    ) -> (StatusCode, Option<String>, Value) {
        let response = self
            .request(Method::POST, &format!("/v1/agents/{agent}/run"))
            .json(&input)
            .send()
            .await
            .expect("call failed");
        let status = response.status();
        let value = response
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.json().await.unwrap_or(Value::Null);
        (status, value, body)
    }

    pub(crate) async fn stats(&self) -> Value {
        let (status, body) = self.send(self.request(Method::GET, "/v1/stats")).await;
        assert_eq!(status, StatusCode::OK);
        body
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.serving.child.kill();
        let _ = self.serving.child.wait();
        // A failing test shows what the host said (the log file goes with its temporary
        // folder).
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!(
                "--- the host's log ({}), last lines:\n{tail}\n---",
                self.url
            );
        }
    }
}

/// The backend the suite runs on: `sqlite` (the default), or `postgres` with
/// `GUST_TEST_BACKEND=postgres` (`scripts/test` runs the suite both ways).
pub(crate) fn suite_backend() -> &'static str {
    match std::env::var("GUST_TEST_BACKEND").as_deref() {
        Err(_) | Ok("" | "sqlite") => "sqlite",
        Ok("postgres") => "postgres",
        Ok(other) => panic!("GUST_TEST_BACKEND={other}: the backends are sqlite and postgres"),
    }
}

/// On the PostgreSQL pass, `--database` for a host on `data_dir`: one throwaway PostgreSQL
/// for the test process (gone with it), one database per data folder — so a host started
/// again on its folder finds its data, as it would in SQLite — unless the test gives its own.
pub(crate) fn suite_database(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    static POSTGRES: std::sync::OnceLock<gust_testkit::postgres::PgCluster> =
        std::sync::OnceLock::new();
    static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    if suite_backend() != "postgres" || extra.contains(&"--database") {
        return Vec::new();
    }
    let postgres = POSTGRES.get_or_init(|| {
        gust_testkit::postgres::PgCluster::start()
            .expect("the PostgreSQL the suite's second pass runs on (scripts/setup installs it)")
    });
    let name = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        format!("gust_{}", hex::encode(&digest[..8]))
    };
    let mut created = CREATED.lock().unwrap();
    let url = if created.contains(&name) {
        postgres.url(&name)
    } else {
        let url = postgres
            .create_database(&name)
            .expect("creating a test host's database");
        created.push(name);
        url
    };
    vec!["--database".to_owned(), url]
}

/// Asserts the API's error shape and kind, and returns the message.
pub(crate) fn error_kind(body: &Value, kind: &str) -> String {
    assert_eq!(body["error"]["kind"], kind, "unexpected error: {body}");
    body["error"]["message"]
        .as_str()
        .expect("every error has a message")
        .to_owned()
}

/// Polls `condition` until it holds or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hand-written component whose `run` has exactly the agent world's type (it answers
/// nothing usable if called), with `memory_pages` of initial memory, any extra `imports`,
/// and `extra` component items after the `run` export (its core instance is `$i`, which
/// also exports `seven`). It is the shape that reaches every check after the export check.
pub(crate) fn agent_component(memory_pages: u32, imports: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            {imports}
            (type $mode' (enum "sync" "async"))
            (export $mode "mode" (type $mode'))
            (type $request' (record
                (field "input" (list u8)) (field "content-type" string) (field "agent" string)
                (field "version" u32) (field "run-id" string) (field "mode" $mode)
                (field "attempt" u32) (field "deadline-ms" (option u64))))
            (export $request "request" (type $request'))
            (type $response' (record (field "output" (list u8)) (field "content-type" string)))
            (export $response "response" (type $response'))
            (type $run-error' (variant (case "invalid-input" string) (case "failed" string)))
            (export $run-error "run-error" (type $run-error'))
            (core module $m
                (memory (export "memory") {memory_pages})
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) unreachable)
                (func (export "seven") (result i32) i32.const 7)
                (func (export "run")
                    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i64) (result i32)
                    i32.const 0))
            (core instance $i (instantiate $m))
            (func $run (param "request" $request) (result (result $response (error $run-error)))
                (canon lift (core func $i "run") (memory (core memory $i "memory"))
                    (realloc (core func $i "realloc"))))
            (export "run" (func $run))
            {extra})"#
    ))
    .unwrap()
}

/// Sends `n` sync calls of `agent` with `input` at once, each on its own task.
pub(crate) fn send_at_once(
    host: &Host,
    agent: &str,
    input: &serde_json::Value,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, serde_json::Value)>> {
    (0..n)
        .map(|_| {
            let request = host
                .request(reqwest::Method::POST, &format!("/v1/agents/{agent}/run"))
                .json(input);
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status();
                (status, response.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect()
}

/// The calls that did not pass the upstream's gate (`"opened"`), as `status body`.
pub(crate) async fn not_opened(
    calls: Vec<tokio::task::JoinHandle<(StatusCode, serde_json::Value)>>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        if status != StatusCode::OK || body["body"] != "opened" {
            failed.push(format!("{status} {body}"));
        }
    }
    failed
}
