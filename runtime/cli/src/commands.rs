//! The client commands. Output is for people; errors are one line on stderr and a non-zero
//! exit code.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

use super::ConfigChanges;
use super::client::Client;

pub(crate) async fn deploy(
    client: &Client,
    agent: &str,
    file: Option<&Path>,
    version: Option<u32>,
) -> anyhow::Result<()> {
    let version = match file {
        Some(file) => Some(upload(client, agent, file).await?),
        None => version,
    };
    let body = match version {
        Some(n) => json!({ "version": n }),
        None => json!({}),
    };
    let answer = client
        .json(
            client
                .request(Method::POST, &format!("/v1/agents/{agent}/deploy"))
                .json(&body),
        )
        .await?;
    println!(
        "deployed {agent} version {} (deployment {})\nendpoint: {}",
        answer["version"],
        answer["deployment"],
        text(&answer["endpoints"]["sync"])
    );
    for (name, url) in answer["endpoints"].as_object().into_iter().flatten() {
        if name != "sync" {
            println!("{name}: {}", text(url));
        }
    }
    Ok(())
}

/// Uploads with a progress line (compiling a large guest takes seconds), returning the
/// version number.
pub(crate) async fn upload(client: &Client, agent: &str, file: &Path) -> anyhow::Result<u32> {
    let bytes =
        Bytes::from(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    let total = bytes.len() as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(64 * 1024)
        .map(|start| bytes.slice(start..(start + 64 * 1024).min(bytes.len())))
        .collect();
    let counter = Arc::clone(&sent);
    let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk)
    }));
    let request = client
        .request(Method::POST, &format!("/v1/agents/{agent}/versions"))
        .header(reqwest::header::CONTENT_LENGTH, total)
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(reqwest::Body::wrap_stream(stream));

    let progress = Progress::start(total, Arc::clone(&sent));
    let outcome = client.send(request).await;
    progress.finish();
    let response = outcome?;
    let created = response.status() == reqwest::StatusCode::CREATED;
    let answer: Value = response
        .json()
        .await
        .context("reading the server's answer")?;
    let version = answer["version"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .context("the server's answer has no version number")?;
    if created {
        eprintln!(
            "uploaded {} as {agent} version {version} ({}, {})",
            file.display(),
            text(&answer["digest"]),
            human_size(total)
        );
    } else {
        eprintln!("{} is already {agent} version {version}", file.display());
    }
    Ok(version)
}

/// A status line on stderr while an upload is sent and then compiled by the server.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    terminal: bool,
}

impl Progress {
    fn start(total: u64, sent: Arc<AtomicU64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        if !terminal {
            eprintln!(
                "uploading {} and waiting for the server to compile it…",
                human_size(total)
            );
            return Self {
                task: None,
                terminal,
            };
        }
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut compiling_since = None;
            loop {
                let done = sent.load(Ordering::Relaxed).min(total);
                let line = if done < total {
                    format!(
                        "uploading {}% ({} of {})",
                        done * 100 / total.max(1),
                        human_size(done),
                        human_size(total)
                    )
                } else {
                    let since = *compiling_since.get_or_insert_with(Instant::now);
                    format!(
                        "uploaded {} in {:.1}s; compiling and checking… {:.1}s",
                        human_size(total),
                        since.duration_since(started).as_secs_f64(),
                        since.elapsed().as_secs_f64()
                    )
                };
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            task: Some(task),
            terminal,
        }
    }

    fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}

pub(crate) async fn rollback(client: &Client, agent: &str, to: Option<u32>) -> anyhow::Result<()> {
    let mut request = client.request(Method::POST, &format!("/v1/agents/{agent}/rollback"));
    if let Some(to) = to {
        request = request.json(&json!({ "to": to }));
    }
    let answer = client.json(request).await?;
    println!(
        "rolled back {agent} to deployment {} (version {})\nendpoint: {}",
        answer["deployment"],
        answer["version"],
        text(&answer["endpoints"]["sync"])
    );
    Ok(())
}

pub(crate) async fn agents(client: &Client) -> anyhow::Result<()> {
    let answer = client
        .json(client.request(Method::GET, "/v1/agents"))
        .await?;
    let agents = answer["agents"].as_array().cloned().unwrap_or_default();
    if agents.is_empty() {
        println!("no agents yet: `gust deploy <agent> <file.wasm>` creates one");
        return Ok(());
    }
    println!(
        "{:<32} {:>8} {:>8}  ENDPOINT",
        "AGENT", "VERSION", "VERSIONS"
    );
    for a in agents {
        let live = a["live"]["version"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        println!(
            "{:<32} {:>8} {:>8}  {}",
            text(&a["agent"]),
            live,
            a["versions"],
            text(&a["endpoints"]["sync"])
        );
    }
    Ok(())
}

pub(crate) async fn agent(client: &Client, agent: &str) -> anyhow::Result<()> {
    let a = client
        .json(client.request(Method::GET, &format!("/v1/agents/{agent}")))
        .await?;
    println!("agent:    {}", text(&a["agent"]));
    println!("endpoint: {}", text(&a["endpoints"]["sync"]));
    match a["live"].as_object() {
        Some(live) => println!(
            "live:     deployment {} = version {} since {}",
            live["deployment"],
            live["version"],
            text(&live["deployed_at"])
        ),
        None => println!("live:     nothing deployed"),
    }
    let pending = if a["draft_pending"] == json!(true) {
        "  (differs from live: deploy to apply)"
    } else {
        ""
    };
    println!("draft:    {}{pending}", a["draft"]);
    println!("versions:");
    for v in a["versions"].as_array().into_iter().flatten() {
        println!(
            "  {:>4}  {}  {:>9}  uploaded {}  deployed {}{}",
            v["version"],
            text(&v["digest"]),
            human_size(v["size"].as_u64().unwrap_or(0)),
            text(&v["created_at"]),
            v["last_deployed_at"].as_str().unwrap_or("never"),
            if v["live"] == json!(true) {
                "  (live)"
            } else {
                ""
            }
        );
    }
    println!("deployments:");
    for d in a["deployments"].as_array().into_iter().flatten() {
        let state = if d["live"] == json!(true) {
            "live".to_owned()
        } else if let Some(at) = d["rolled_back_at"].as_str() {
            format!("rolled back {at}")
        } else {
            "superseded".to_owned()
        };
        println!(
            "  {:>4}  version {:<4} {}  {state}",
            d["deployment"],
            d["version"],
            text(&d["deployed_at"])
        );
    }
    Ok(())
}

pub(crate) async fn config(
    client: &Client,
    agent: &str,
    changes: &ConfigChanges,
) -> anyhow::Result<()> {
    let path = format!("/v1/agents/{agent}/config");
    let current = client.send(client.request(Method::GET, &path)).await;
    let mut draft: Value = match current {
        Ok(response) => response.json().await.context("reading the draft")?,
        // A new agent can be configured before its first upload.
        Err(e) if changes.any() && e.to_string().starts_with("not_found:") => json!({}),
        Err(e) => return Err(e),
    };
    if changes.any() {
        apply(&mut draft, changes)?;
        // The access token comes back as "***", which the server reads as "keep it".
        draft = client
            .json(client.request(Method::PUT, &path).json(&draft))
            .await?;
        if let Some(secret) = draft["push"]["secret"].as_str() {
            eprintln!(
                "push signing secret (shown only this once; your receiver verifies signatures with it):\n  {secret}"
            );
        }
        eprintln!("draft saved; `gust deploy {agent}` makes it live");
    }
    println!("{}", serde_json::to_string_pretty(&draft)?);
    Ok(())
}

fn apply(draft: &mut Value, changes: &ConfigChanges) -> anyhow::Result<()> {
    if !draft["config"].is_object() {
        draft["config"] = json!({});
    }
    for pair in &changes.set {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--set takes KEY=VALUE, got `{pair}`");
        };
        draft["config"][key] = json!(value);
    }
    for key in &changes.unset {
        if let Some(map) = draft["config"].as_object_mut() {
            map.remove(key);
        }
    }
    if let Some(s) = changes.sync_timeout {
        draft["sync_timeout_s"] = json!(s);
    }
    if let Some(s) = &changes.async_timeout {
        draft["async_timeout_s"] = number_or_null(s, "none", "--async-timeout takes seconds")?;
    }
    if let Some(s) = changes.max_queue_wait {
        draft["max_queue_wait_s"] = json!(s);
    }
    if changes.no_push {
        draft["push"] = Value::Null;
        draft["mode"] = json!("sync");
    }
    if changes.push_url.is_some() || changes.push_token.is_some() {
        if !draft["push"].is_object() {
            draft["push"] = json!({});
        }
        if let Some(url) = &changes.push_url {
            draft["push"]["url"] = json!(url);
        }
        if let Some(token) = &changes.push_token {
            draft["push"]["access_token"] = json!(token);
        }
    }
    if let Some(mode) = &changes.mode {
        draft["mode"] = json!(mode);
    }
    let mut hosts: Vec<Value> = draft["allowed_hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for origin in &changes.allow_hosts {
        if !hosts.iter().any(|h| h == origin.as_str()) {
            hosts.push(json!(origin));
        }
    }
    hosts.retain(|h| !changes.disallow_hosts.iter().any(|d| h == d.as_str()));
    draft["allowed_hosts"] = Value::Array(hosts);
    if let Some(s) = changes.outbound_timeout {
        draft["outbound_timeout_s"] = json!(s);
    }
    if let Some(mib) = changes.memory_mib {
        draft["memory_mib"] = json!(mib);
    }
    if let Some(mib) = changes.output_mib {
        draft["output_mib"] = json!(mib);
    }
    if let Some(n) = &changes.max_instances {
        draft["max_instances"] = number_or_null(n, "default", "--max-instances takes a number")?;
    }
    Ok(())
}

/// A whole number, or JSON `null` for the word that means "none"/"the default".
fn number_or_null(value: &str, null_word: &str, usage: &str) -> anyhow::Result<Value> {
    if value == null_word {
        return Ok(Value::Null);
    }
    let n: u32 = value
        .parse()
        .with_context(|| format!("{usage} or `{null_word}`, not `{value}`"))?;
    Ok(json!(n))
}

pub(crate) async fn run(
    client: &Client,
    agent: &str,
    input: &str,
    queued: bool,
) -> anyhow::Result<()> {
    let body = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else if let Some(file) = input.strip_prefix('@') {
        std::fs::read(file).with_context(|| format!("reading {file}"))?
    } else {
        input.as_bytes().to_vec()
    };
    let path = if queued {
        format!("/v1/agents/{agent}/runs")
    } else {
        format!("/v1/agents/{agent}/run")
    };
    let response = client
        .send(
            client
                .request(Method::POST, &path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await?;
    if queued {
        let answer: Value = response.json().await.context("reading the answer")?;
        println!("{}", text(&answer["run_id"]));
        eprintln!(
            "queued; `gust runs get {agent} {} --wait` follows it",
            text(&answer["run_id"])
        );
        return Ok(());
    }
    let output = response.bytes().await.context("reading the output")?;
    let mut stdout = std::io::stdout();
    stdout.write_all(&output)?;
    if !output.ends_with(b"\n") && stdout.is_terminal() {
        stdout.write_all(b"\n")?;
    }
    Ok(())
}

pub(crate) async fn runs_get(
    client: &Client,
    agent: &str,
    id: &str,
    wait: bool,
) -> anyhow::Result<()> {
    let path = format!("/v1/agents/{agent}/runs/{id}");
    let terminal = std::io::stderr().is_terminal();
    let run = loop {
        let request = if wait {
            client.request(Method::GET, &format!("{path}?wait=2"))
        } else {
            client.request(Method::GET, &path)
        };
        let run = client.json(request).await?;
        let status = run["status"].as_str().unwrap_or("");
        if !wait || !matches!(status, "queued" | "running") {
            break run;
        }
        let progress = match run["progress"].as_object() {
            Some(p) => format!(
                " {:.0}% {}",
                p["fraction"].as_f64().unwrap_or(0.0) * 100.0,
                p["message"].as_str().unwrap_or("")
            ),
            None => String::new(),
        };
        if terminal {
            eprint!("\r\x1b[2K{status}{progress}");
        } else {
            eprintln!("{status}{progress}");
        }
    };
    if wait && terminal {
        eprint!("\r\x1b[2K");
    }
    println!("{}", serde_json::to_string_pretty(&run)?);
    match run["status"].as_str() {
        Some("succeeded" | "queued" | "running") => Ok(()),
        Some(status) => {
            let error = &run["error"];
            let detail = error["kind"]
                .as_str()
                .map(|k| format!(": {k}: {}", error["message"].as_str().unwrap_or("")))
                .unwrap_or_default();
            bail!("run {id} {status}{detail}")
        }
        None => bail!("the server's answer has no status"),
    }
}

pub(crate) async fn runs_list(
    client: &Client,
    agent: &str,
    status: Option<&str>,
    limit: usize,
) -> anyhow::Result<()> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(status) = status {
        query.push(("status", status.to_owned()));
    }
    let answer = client
        .json(
            client
                .request(Method::GET, &format!("/v1/agents/{agent}/runs"))
                .query(&query),
        )
        .await?;
    println!(
        "{:<36} {:<10} {:>7} {:>8}  CREATED",
        "RUN", "STATUS", "VERSION", "ATTEMPTS"
    );
    for run in answer["runs"].as_array().into_iter().flatten() {
        println!(
            "{:<36} {:<10} {:>7} {:>8}  {}",
            text(&run["run_id"]),
            text(&run["status"]),
            run["version"],
            run["attempts"],
            text(&run["created_at"])
        );
    }
    Ok(())
}

pub(crate) async fn run_action(
    client: &Client,
    agent: &str,
    id: &str,
    action: &str,
) -> anyhow::Result<()> {
    let answer = client
        .json(client.request(
            Method::POST,
            &format!("/v1/agents/{agent}/runs/{id}/{action}"),
        ))
        .await?;
    match action {
        "rerun" => println!("{}", text(&answer["run_id"])),
        _ => println!("{} {}", text(&answer["run_id"]), text(&answer["status"])),
    }
    Ok(())
}

pub(crate) async fn push_test(client: &Client, agent: &str) -> anyhow::Result<()> {
    let answer = client
        .json(client.request(Method::POST, &format!("/v1/agents/{agent}/push/test")))
        .await?;
    println!("the push receiver answered {}", answer["status"]);
    if answer["delivered"] != json!(true) {
        bail!("the push receiver did not accept the test event");
    }
    Ok(())
}

pub(crate) async fn rotate_secret(client: &Client, agent: &str) -> anyhow::Result<()> {
    let answer = client
        .json(client.request(
            Method::POST,
            &format!("/v1/agents/{agent}/push/rotate-secret"),
        ))
        .await?;
    println!("{}", text(&answer["push"]["secret"]));
    eprintln!("new signing secret (shown only this once); the previous one also signs for 24 h");
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

pub(crate) async fn keys_create(
    client: &Client,
    agent: &str,
    name: &str,
    rate: Option<(f64, u32)>,
) -> anyhow::Result<()> {
    let mut body = json!({ "name": name });
    if let Some((per_second, burst)) = rate {
        body["rate_limit"] = json!({"per_second": per_second, "burst": burst});
    }
    let answer = client
        .json(
            client
                .request(Method::POST, &format!("/v1/agents/{agent}/keys"))
                .json(&body),
        )
        .await?;
    println!("{}", text(&answer["key"]));
    eprintln!(
        "key {} for `{agent}` (shown only this once; send it as `Authorization: Bearer …` or `x-api-key: …`)",
        text(&answer["id"])
    );
    Ok(())
}

pub(crate) async fn keys_list(client: &Client, agent: &str) -> anyhow::Result<()> {
    let answer = client
        .json(client.request(Method::GET, &format!("/v1/agents/{agent}/keys")))
        .await?;
    println!("{:<22} {:<24} {:<26} LAST USED", "ID", "NAME", "CREATED");
    for key in answer["keys"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:<24} {:<26} {}",
            text(&key["id"]),
            text(&key["name"]),
            text(&key["created_at"]),
            key["last_used_at"].as_str().unwrap_or("never")
        );
    }
    Ok(())
}

pub(crate) async fn keys_revoke(client: &Client, agent: &str, id: &str) -> anyhow::Result<()> {
    client
        .json(client.request(Method::DELETE, &format!("/v1/agents/{agent}/keys/{id}")))
        .await?;
    eprintln!("revoked {id}");
    Ok(())
}

pub(crate) async fn rotate_admin_token(client: &Client) -> anyhow::Result<()> {
    let answer = client
        .json(client.request(Method::POST, "/v1/admin/rotate-token"))
        .await?;
    println!("{}", text(&answer["admin_token"]));
    eprintln!("the admin token was replaced; the old one no longer works (shown only this once)");
    Ok(())
}
