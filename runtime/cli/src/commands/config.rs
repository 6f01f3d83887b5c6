//! `gust config`: the agent's draft configuration.

use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use crate::cli::ConfigChanges;
use crate::client::is_kind;
use crate::exit::Failure;
use crate::output::{masked_config, note};
use crate::target::read_secret;

/// Shows the draft, or applies the changes to it and shows the result. The draft is printed
/// as the API's JSON document either way: it is a document, not a table.
pub(crate) async fn config(c: &Ctx, agent: &str, changes: &ConfigChanges) -> anyhow::Result<()> {
    let path = format!("/v1/agents/{agent}/config");
    // Secrets are read before anything is sent, so a missing one changes nothing.
    let secrets = Secrets::read(changes)?;
    if !changes.any() {
        let (draft, _) = read(c, &path).await?;
        return show(c, &draft);
    }
    let draft = write(c, &path, changes, &secrets).await?;
    if let Some(secret) = draft["push"]["secret"].as_str() {
        if c.out.json {
            // Scripts get it in the JSON; say where, since it is shown only once.
            c.out.note(
                "the push signing secret is `push.secret` in this answer, shown only this once",
            );
        } else {
            note!(
                "push signing secret (shown only this once; your receiver verifies signatures with it):\n  {secret}"
            );
        }
    }
    c.out
        .note(format!("draft saved; `gust deploy {agent}` makes it live"));
    show(c, &draft)
}

/// How often a change is made on the draft read afresh, when another writer changed it
/// between this command's read and its write. Each round of writers at once lets one of
/// them through, so this many can write one agent's draft at once.
const WRITE_ATTEMPTS: u32 = 32;

/// Applies `changes` to the draft and writes it back, only over the draft it read (its
/// `ETag` in `If-Match`). A draft changed in between (the console, another `gust config`)
/// is read again and the changes made on it, so neither writer's keys are lost.
async fn write(
    c: &Ctx,
    path: &str,
    changes: &ConfigChanges,
    secrets: &Secrets,
) -> anyhow::Result<Value> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut draft, precondition) = match read(c, path).await {
            Ok((draft, Some(tag))) => (draft, Some(("if-match", tag))),
            // A server that gives no tag takes no precondition either.
            Ok((draft, None)) => (draft, None),
            // A new agent can be configured before its first upload; two such commands at
            // once must not both create it.
            Err(e) if is_kind(&e, "not_found") => {
                (json!({}), Some(("if-none-match", "*".to_owned())))
            }
            Err(e) => return Err(e),
        };
        apply(&mut draft, changes, secrets)?;
        // The access token comes back as "***", which the server reads as "keep it".
        let mut request = c.client.request(Method::PUT, path).json(&draft);
        if let Some((name, value)) = &precondition {
            request = request.header(*name, value);
        }
        match c.client.json(request).await {
            Err(e) if attempt < WRITE_ATTEMPTS && is_kind(&e, "precondition_failed") => {
                // A few milliseconds, different for each writer, so that the ones that lost
                // do not all read and write again in step.
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |t| t.subsec_nanos() % 8);
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(2 + jitter))).await;
            }
            outcome => return outcome,
        }
    }
}

/// The draft at `path` and its `ETag`.
async fn read(c: &Ctx, path: &str) -> anyhow::Result<(Value, Option<String>)> {
    let response = c.client.send(c.client.request(Method::GET, path)).await?;
    // A proxy that compresses answers (nginx's gzip) marks the tag weak, and a weak tag
    // never matches a write; the tag itself still names the draft.
    let tag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim_start_matches("W/").to_owned());
    let draft = c.client.read_json(response).await?;
    Ok((draft, tag))
}

/// Prints the draft.
fn show(c: &Ctx, draft: &Value) -> anyhow::Result<()> {
    if c.out.json {
        return c.out.json(draft);
    }
    // For people the draft's configuration values are masked: they hold API keys, and a
    // terminal is seen and scrolled back. `--json` shows them.
    let mut shown = masked_config(draft);
    if let Some(push) = shown.get_mut("push").and_then(Value::as_object_mut) {
        push.remove("secret");
    }
    c.out.json(&shown)
}

/// The secret values of a change, read from standard input or a hidden prompt rather than
/// the command line. One command reads at most one, since they share standard input.
struct Secrets {
    push_token: Option<String>,
    values: Vec<(String, String)>,
}

impl Secrets {
    fn read(changes: &ConfigChanges) -> anyhow::Result<Self> {
        let push_from_stdin = changes.push_token.as_deref() == Some("-");
        if usize::from(push_from_stdin) + changes.secrets.len() > 1 {
            return Err(Failure::usage(
                "one secret per command can come from standard input: set them one at a time",
            )
            .into());
        }
        if changes.push_token.as_deref().is_some_and(|t| t != "-") {
            note!(
                "gust: warning: --push-token on the command line is visible to other users (ps) \
                 and kept in shell history; `--push-token -` reads it from standard input"
            );
        }
        let push_token = if push_from_stdin {
            Some(read_secret("push access token: ")?)
        } else {
            changes.push_token.clone()
        };
        let values = changes
            .secrets
            .iter()
            .map(|key| Ok((key.clone(), read_secret(&format!("{key}: "))?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { push_token, values })
    }
}

fn apply(draft: &mut Value, changes: &ConfigChanges, secrets: &Secrets) -> anyhow::Result<()> {
    if !draft["config"].is_object() {
        draft["config"] = json!({});
    }
    for pair in &changes.set {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Failure::usage(format!("--set takes KEY=VALUE, got `{pair}`")).into());
        };
        draft["config"][key] = json!(value);
    }
    for (key, value) in &secrets.values {
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
    if changes.push_url.is_some() || secrets.push_token.is_some() {
        if !draft["push"].is_object() {
            draft["push"] = json!({});
        }
        if let Some(url) = &changes.push_url {
            draft["push"]["url"] = json!(url);
        }
        if let Some(token) = &secrets.push_token {
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
        .map_err(|_| Failure::usage(format!("{usage} or `{null_word}`, not `{value}`")))?;
    Ok(json!(n))
}
