//! `gust agents …`, `gust versions …` and `gust endpoint`.

use reqwest::Method;
use serde_json::json;

use super::{Ctx, confirm};
use crate::output::{Table, masked_config, or_dash, say, size, text};

pub(crate) async fn agents_list(c: &Ctx) -> anyhow::Result<()> {
    let answer = c.call(Method::GET, "/v1/agents").await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    let agents = answer["agents"].as_array().cloned().unwrap_or_default();
    if agents.is_empty() {
        c.out
            .note("no agents yet: `gust deploy <agent> <file.wasm>` creates one");
        return Ok(());
    }
    let mut table = Table::new(&["AGENT", "LIVE", "VERSIONS", "ENDPOINT"]);
    for a in agents {
        let live = a["live"]["version"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
        table.row(vec![
            text(&a["agent"]),
            live,
            text(&a["versions"]),
            text(&a["endpoints"]["sync"]),
        ]);
    }
    table.print()?;
    Ok(())
}

/// `gust endpoint AGENT [--lang L]`: the live deployment's endpoints (`GET …/endpoints`);
/// with a language, the code to call each, ready to paste.
pub(crate) async fn endpoint(
    c: &Ctx,
    agent: &str,
    lang: Option<crate::cli::SnippetLang>,
) -> anyhow::Result<()> {
    let answer = c
        .call(Method::GET, &format!("/v1/agents/{agent}/endpoints"))
        .await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    let endpoints = answer["endpoints"].as_array().cloned().unwrap_or_default();
    match lang {
        None => {
            let mut table = Table::new(&["ENDPOINT", "METHOD", "URL"]);
            for e in &endpoints {
                table.row(vec![text(&e["title"]), text(&e["method"]), text(&e["url"])]);
            }
            table.print()?;
            c.out.note(format!(
                "mode: {}; code to call them: gust endpoint {agent} --lang curl|python|node",
                text(&answer["mode"])
            ));
        }
        Some(lang) => {
            let comment = match lang {
                crate::cli::SnippetLang::Node => "//",
                _ => "#",
            };
            for (i, e) in endpoints.iter().enumerate() {
                if i > 0 {
                    say!()?;
                }
                say!(
                    "{comment} {}: {}",
                    text(&e["title"]),
                    text(&e["description"])
                )?;
                crate::output::bytes_out(text(&e["snippets"][lang.key()]).as_bytes())?;
            }
        }
    }
    Ok(())
}

pub(crate) async fn agents_show(c: &Ctx, agent: &str) -> anyhow::Result<()> {
    let a = c.call(Method::GET, &format!("/v1/agents/{agent}")).await?;
    if c.out.json {
        return c.out.json(&a);
    }
    let o = &c.out;
    say!("{}    {}", o.bold("agent:"), text(&a["agent"]))?;
    for (name, url) in a["endpoints"].as_object().into_iter().flatten() {
        say!("endpoint: {name:<10} {}", text(url))?;
    }
    match a["live"].as_object() {
        Some(live) => say!(
            "live:     deployment {} = version {} since {} ({} mode)",
            live["deployment"],
            live["version"],
            text(&live["deployed_at"]),
            text(&live["config"]["mode"])
        )?,
        None => say!("live:     nothing deployed")?,
    }
    let pending = if a["draft_pending"] == json!(true) {
        "  (differs from live: deploy to apply)"
    } else {
        ""
    };
    say!("draft:    {}{pending}", masked_config(&a["draft"]))?;
    say!("versions:")?;
    let mut table = Table::new(&["  VERSION", "DIGEST", "SIZE", "UPLOADED", "DEPLOYED", ""]);
    for v in a["versions"].as_array().into_iter().flatten() {
        table.row(vec![
            format!("  {}", v["version"]),
            text(&v["digest"]),
            size(v["size"].as_u64().unwrap_or(0)),
            text(&v["created_at"]),
            v["last_deployed_at"].as_str().unwrap_or("never").to_owned(),
            if v["live"] == json!(true) {
                o.status("live")
            } else {
                String::new()
            },
        ]);
    }
    table.print()?;
    say!("deployments:")?;
    let mut table = Table::new(&["  DEPLOYMENT", "VERSION", "DEPLOYED", "STATE"]);
    for d in a["deployments"].as_array().into_iter().flatten() {
        let state = if d["live"] == json!(true) {
            o.status("live")
        } else if let Some(at) = d["rolled_back_at"].as_str() {
            format!("rolled back {at}")
        } else {
            "superseded".to_owned()
        };
        table.row(vec![
            format!("  {}", d["deployment"]),
            text(&d["version"]),
            text(&d["deployed_at"]),
            state,
        ]);
    }
    table.print()?;
    Ok(())
}

pub(crate) async fn agents_delete(c: &Ctx, agent: &str, yes: bool) -> anyhow::Result<()> {
    confirm(
        &format!("delete agent `{agent}` with its versions and runs; its endpoint will answer 404"),
        yes,
        false,
    )?;
    c.call(Method::DELETE, &format!("/v1/agents/{agent}"))
        .await?;
    if c.out.json {
        return c.out.json(&json!({"agent": agent, "deleted": true}));
    }
    c.out.note(format!("deleted agent {agent}"));
    Ok(())
}

pub(crate) async fn versions_list(c: &Ctx, agent: &str) -> anyhow::Result<()> {
    let answer = c
        .call(Method::GET, &format!("/v1/agents/{agent}/versions"))
        .await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    let mut table = Table::new(&["VERSION", "DIGEST", "SIZE", "UPLOADED", "LAST DEPLOYED", ""]);
    for v in answer["versions"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&v["version"]),
            text(&v["digest"]),
            size(v["size"].as_u64().unwrap_or(0)),
            text(&v["created_at"]),
            or_dash(&v["last_deployed_at"]),
            if v["live"] == json!(true) {
                c.out.status("live")
            } else {
                String::new()
            },
        ]);
    }
    table.print()?;
    Ok(())
}

pub(crate) async fn versions_show(c: &Ctx, agent: &str, version: u32) -> anyhow::Result<()> {
    let v = c
        .call(
            Method::GET,
            &format!("/v1/agents/{agent}/versions/{version}"),
        )
        .await?;
    if c.out.json {
        return c.out.json(&v);
    }
    say!("agent:    {agent}")?;
    say!(
        "version:  {}{}",
        v["version"],
        if v["live"] == json!(true) {
            " (live)"
        } else {
            ""
        }
    )?;
    say!("digest:   {}", text(&v["digest"]))?;
    say!("size:     {}", size(v["size"].as_u64().unwrap_or(0)))?;
    say!("uploaded: {}", text(&v["created_at"]))?;
    say!(
        "deployed: {}",
        v["last_deployed_at"].as_str().unwrap_or("never")
    )?;
    say!()?;
    say!("{}", text(&v["wit"]).trim_end())?;
    Ok(())
}

pub(crate) async fn versions_delete(
    c: &Ctx,
    agent: &str,
    version: u32,
    yes: bool,
) -> anyhow::Result<()> {
    confirm(&format!("delete {agent} version {version}"), yes, false)?;
    c.call(
        Method::DELETE,
        &format!("/v1/agents/{agent}/versions/{version}"),
    )
    .await?;
    if c.out.json {
        return c
            .out
            .json(&json!({"agent": agent, "version": version, "deleted": true}));
    }
    c.out.note(format!("deleted {agent} version {version}"));
    Ok(())
}
