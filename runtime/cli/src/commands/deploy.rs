//! `gust deploy`, `gust upload`, `gust rollback`: what goes live, shown before it does.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Ctx, confirm};
use crate::client::{COMPILE_WAIT, is_kind};
use crate::exit::Failure;
use crate::output::{Out, note, say, size, text};

/// `gust deploy [AGENT] [FILE] [--version N]`. Without an agent it works on the project in
/// this folder (or the nearest one above): builds when the component is older than the
/// sources, uploads, and deploys the project's agent.
pub(crate) async fn deploy(
    c: &Ctx,
    agent: Option<String>,
    file: Option<PathBuf>,
    version: Option<u32>,
    yes: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let (agent, file, from_project) = match agent {
        Some(agent) => (agent, file, false),
        None => {
            let (dir, manifest) = find_project()?;
            let file = match version {
                Some(_) => None,
                None => Some(built_component(c.out, &dir, &manifest.name)?),
            };
            (manifest.name, file, true)
        }
    };
    // The agent as a dry run with a file read it, so that it is not read twice.
    let mut read = None;
    let version = match &file {
        // A dry run uploads nothing: an upload makes a version, and the agent if it is new.
        Some(file) if dry_run => {
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::usage(format!("reading {}: {e}", file.display())))?;
            let digest = digest_of(&bytes);
            let Some(uploaded) = agent_if_any(c, &agent).await? else {
                is_component(file, &bytes)?;
                return dry_run_new_upload(c, &agent, &digest, None).await;
            };
            let Some(version) = version_with(&uploaded, &digest) else {
                is_component(file, &bytes)?;
                return dry_run_new_upload(c, &agent, &digest, Some(&uploaded)).await;
            };
            read = Some(uploaded);
            Some(version)
        }
        Some(file) => Some(upload_version(c, &agent, file, false).await?),
        None => version,
    };

    let before = match read {
        Some(before) => before,
        None => c.call(Method::GET, &format!("/v1/agents/{agent}")).await?,
    };
    let target = match version {
        Some(n) => n,
        None => newest_version(&before).ok_or_else(|| {
            Failure::new(
                crate::exit::Code::NotFound,
                format!("`{agent}` has no uploaded version: `gust deploy {agent} <file.wasm>`"),
            )
        })?,
    };
    // What changes comes from the server's deploy preview, the same one the console's
    // Confirm dialog shows.
    let preview = c
        .call(
            Method::GET,
            &format!("/v1/agents/{agent}/deploy/preview?version={target}"),
        )
        .await?;
    let changes = change_lines(&preview);
    if dry_run {
        if c.out.json {
            return c.out.json(&preview);
        }
        if changes.is_empty() {
            say!("nothing would change: version {target} with this configuration is live")?;
        }
        for line in &changes {
            say!("{line}")?;
        }
        return Ok(());
    }
    if changes.is_empty() {
        if c.out.json {
            // Not the deploy answer (no deploy was made): what is live, marked as such.
            return c.out.json(&json!({
                "deployed": false,
                "agent": agent,
                "live": before["live"],
                "endpoints": before["endpoints"],
            }));
        }
        say!(
            "nothing to deploy: version {target} with this configuration is already live\nendpoint: {}",
            text(&before["endpoints"]["sync"])
        )?;
        return Ok(());
    }
    let will_ask = !yes && std::io::stdin().is_terminal();
    if !c.out.quiet || will_ask {
        note!("deploying {agent}:");
        for line in &changes {
            note!("  {line}");
        }
    }
    // `gust deploy <agent> <file>` always ran unattended in scripts; it still does.
    confirm(&format!("deploy {agent} version {target}?"), yes, true).map_err(|e| {
        if file.is_some() {
            e.context(format!("version {target} stays uploaded, not deployed"))
        } else {
            e
        }
    })?;
    // The configuration shown above goes live, or nothing does: the preview's tag of the
    // draft in `If-Match` (a server that gives none takes none).
    let mut request = c
        .client
        .working(
            Method::POST,
            &format!("/v1/agents/{agent}/deploy"),
            COMPILE_WAIT,
        )
        .json(&json!({ "version": target }));
    if let Some(tag) = preview["draft_etag"].as_str() {
        request = request.header("if-match", tag);
    }
    let answer = c.client.json(request).await.map_err(|e| {
        if is_kind(&e, "precondition_failed") {
            e.context(format!(
                "the configuration of {agent} changed after the preview above; nothing was deployed: run the command again to see the change"
            ))
        } else {
            e
        }
    })?;
    if c.out.json {
        return c.out.json(&answer);
    }
    say!(
        "deployed {agent} version {} (deployment {})\nendpoint: {}",
        answer["version"],
        answer["deployment"],
        text(&answer["endpoints"]["sync"])
    )?;
    for (name, url) in answer["endpoints"].as_object().into_iter().flatten() {
        if name != "sync" {
            say!("{name}: {}", text(url))?;
        }
    }
    if from_project {
        c.out
            .note(format!("call it: gust run {agent} '{{\"name\": \"Ada\"}}'"));
    }
    Ok(())
}

/// The nearest folder from here up that holds a `gust.toml`.
fn find_project() -> anyhow::Result<(PathBuf, gust_project::Manifest)> {
    let cwd = std::env::current_dir().context("reading the working folder")?;
    for dir in cwd.ancestors() {
        if dir.join(gust_project::MANIFEST).is_file() {
            return Ok((dir.to_path_buf(), gust_project::Manifest::read(dir)?));
        }
    }
    Err(Failure::usage(format!(
        "no {} here or above: name the agent and file (`gust deploy <agent> <file.wasm>`), or \
         run it in a project made by `gust new`",
        gust_project::MANIFEST
    ))
    .into())
}

/// The project's component, built first when a source is newer than it.
fn built_component(out: Out, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let component = gust_project::component_path(dir, name);
    if !gust_project::needs_build(dir, &component)? {
        out.note(format!(
            "{} is newer than the sources; not rebuilding",
            component.display()
        ));
        return Ok(component);
    }
    crate::project::build(dir, out.quiet)
}

/// The digest the server names a component's version by.
fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Refuses a file that is not a Wasm component at all, as its upload would be: a dry run
/// uploads nothing, so the server's full check is not made (the rest of it, against the
/// agent world, happens at the upload).
fn is_component(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // `\0asm`, then a version of two bytes and the layer, 1 for a component (0 for a core
    // module).
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(Failure::usage(format!("{} is not a Wasm component", file.display())).into());
    }
    if bytes[6..8] != [1, 0] {
        return Err(Failure::usage(format!(
            "{} is a core Wasm module, not a component: build it for wasm32-wasip2 (or \
             with a component toolchain)",
            file.display()
        ))
        .into());
    }
    Ok(())
}

/// `GET /v1/agents/{agent}`; `None` when there is no such agent yet.
async fn agent_if_any(c: &Ctx, agent: &str) -> anyhow::Result<Option<Value>> {
    match c.call(Method::GET, &format!("/v1/agents/{agent}")).await {
        Ok(found) => Ok(Some(found)),
        Err(e) if crate::exit::code_of(&e) == crate::exit::Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The uploaded version whose component has `digest`.
fn version_with(agent: &Value, digest: &str) -> Option<u32> {
    agent["versions"]
        .as_array()?
        .iter()
        .find(|v| v["digest"] == digest)
        .and_then(|v| v["version"].as_u64())
        .and_then(|v| u32::try_from(v).ok())
}

/// `--dry-run` with a file not uploaded yet: what deploying it would change. The
/// configuration's changes are the draft's whichever version goes live, so they come from
/// the preview of the newest upload; the version line names the file's component.
async fn dry_run_new_upload(
    c: &Ctx,
    agent: &str,
    digest: &str,
    before: Option<&Value>,
) -> anyhow::Result<()> {
    let preview = match before.and_then(newest_version) {
        Some(newest) => Some(
            c.call(
                Method::GET,
                &format!("/v1/agents/{agent}/deploy/preview?version={newest}"),
            )
            .await?,
        ),
        None => None,
    };
    if c.out.json {
        return c.out.json(&json!({
            "agent": agent,
            "uploaded": false,
            "digest": digest,
            "preview": preview,
        }));
    }
    if before.is_none() {
        say!("agent        (none) → {agent}, made by the upload")?;
    }
    let live = before.map_or(&Value::Null, |a| &a["live"]);
    let new = format!("a new upload {}", short_digest(&Value::from(digest)));
    say!("{}", version_change(live, &new))?;
    for line in preview.as_ref().map(setting_lines).unwrap_or_default() {
        say!("{line}")?;
    }
    c.out
        .note("nothing was uploaded (--dry-run); `gust upload` uploads without deploying");
    Ok(())
}

fn newest_version(agent: &Value) -> Option<u32> {
    agent["versions"]
        .as_array()?
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .max()
        .and_then(|v| u32::try_from(v).ok())
}

/// The preview's changes, one line each: the version, then each setting.
fn change_lines(preview: &Value) -> Vec<String> {
    let (live, version) = (&preview["live"], &preview["version"]);
    let to = format!(
        "{} {}",
        version["version"],
        short_digest(&version["digest"])
    );
    (live.is_null() || live["version"] != version["version"])
        .then(|| version_change(live, &to))
        .into_iter()
        .chain(setting_lines(preview))
        .collect()
}

/// The version line: from what is `live` (`null`: nothing) to `to`.
fn version_change(live: &Value, to: &str) -> String {
    if live.is_null() {
        format!("version      (nothing live) → {to}")
    } else {
        format!(
            "version      {} {} → {to}",
            live["version"],
            short_digest(&live["digest"])
        )
    }
}

/// The preview's changes of settings, one line each. Secrets (the push access token,
/// configuration values) arrive masked and are named, never shown. On a first deploy every
/// setting is new; only those a user chose (mode, push target, configuration keys) are
/// listed.
fn setting_lines(preview: &Value) -> Vec<String> {
    let live = &preview["live"];
    let mut lines = Vec::new();
    for change in preview["changes"].as_array().into_iter().flatten() {
        let field = text(&change["field"]);
        let (from, to) = (&change["from"], &change["to"]);
        if live.is_null()
            && !(field == "mode" || field.starts_with("push.") || field.starts_with("config."))
        {
            continue;
        }
        if live.is_null() && field == "mode" && to == "sync" {
            continue;
        }
        let line = match field.strip_prefix("config.") {
            Some(key) if from.is_null() => format!("config       + {key} (value not shown)"),
            Some(key) if to.is_null() => format!("config       - {key}"),
            Some(key) => format!("config       ~ {key} (value not shown)"),
            None if change["secret"] == true => format!("{field} (changed; not shown)"),
            None => format!("{field:<12} {} → {}", shown(from), shown(to)),
        };
        lines.push(line);
    }
    lines
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short_digest(v: &Value) -> String {
    let digest = text(v);
    let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
    // By characters: a server's answer is not trusted to be hexadecimal.
    format!("({})", hex.chars().take(12).collect::<String>())
}

/// Uploads with a progress bar (compiling a large guest takes seconds), returning the
/// version number.
pub(crate) async fn upload(c: &Ctx, agent: &str, file: &Path) -> anyhow::Result<u32> {
    upload_version(c, agent, file, true).await
}

/// Uploads; with `print_answer` (`gust upload`) the API's answer is what `--json` prints.
async fn upload_version(
    c: &Ctx,
    agent: &str,
    file: &Path,
    print_answer: bool,
) -> anyhow::Result<u32> {
    let bytes = Bytes::from(
        std::fs::read(file)
            .map_err(|e| Failure::usage(format!("reading {}: {e}", file.display())))?,
    );
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
    let request = c
        .client
        .working(
            Method::POST,
            &format!("/v1/agents/{agent}/versions"),
            COMPILE_WAIT,
        )
        .header(reqwest::header::CONTENT_LENGTH, total)
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(reqwest::Body::wrap_stream(stream));

    let progress = Progress::start(c.out, total, Arc::clone(&sent));
    let outcome = c.client.send(request).await;
    progress.finish();
    let response = outcome?;
    let created = response.status() == reqwest::StatusCode::CREATED;
    let answer = c.client.read_json(response).await?;
    let version = answer["version"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .context("the server's answer has no version number")?;
    if print_answer && c.out.json {
        c.out.json(&answer)?;
    }
    if created {
        c.out.note(format!(
            "uploaded {} as {agent} version {version} ({}, {})",
            file.display(),
            text(&answer["digest"]),
            size(total)
        ));
    } else {
        c.out.note(format!(
            "{} is already {agent} version {version}",
            file.display()
        ));
    }
    Ok(version)
}

/// A bar while an upload is sent, then a spinner while the server compiles it; one line
/// on stderr when that is not a terminal.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn start(out: Out, total: u64, sent: Arc<AtomicU64>) -> Self {
        if !out.progress {
            out.note(format!(
                "uploading {} and waiting for the server to compile it…",
                size(total)
            ));
            return Self {
                task: None,
                bar: None,
            };
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bar:30} {binary_bytes}/{binary_total_bytes}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        // Drawn now, not first by the task: a small upload may be over before it runs.
        bar.tick();
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let done = sent.load(Ordering::Relaxed).min(total);
                shown.set_position(done);
                if done == total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shown.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} compiling and checking… {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            shown.enable_steady_tick(Duration::from_millis(120));
        });
        Self {
            task: Some(task),
            bar: Some(bar),
        }
    }

    fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

pub(crate) async fn rollback(c: &Ctx, agent: &str, to: Option<u32>) -> anyhow::Result<()> {
    // A deployment no longer in memory is loaded again, compiled if its artifact is gone.
    let mut request = c.client.working(
        Method::POST,
        &format!("/v1/agents/{agent}/rollback"),
        COMPILE_WAIT,
    );
    if let Some(to) = to {
        request = request.json(&json!({ "to": to }));
    }
    let answer = c.client.json(request).await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    say!(
        "rolled back {agent} to deployment {} (version {})\nendpoint: {}",
        answer["deployment"],
        answer["version"],
        text(&answer["endpoints"]["sync"])
    )?;
    Ok(())
}
