//! Who may do what: `gust login`/`logout`/`whoami`, invoke keys, push secrets, the admin
//! token, and the host's counters.

use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use crate::cli::Global;
use crate::client::{Client, is_kind};
use crate::exit::{self, Code, Failure};
use crate::output::{Out, Table, note, say, text};
use crate::target::{self, DEFAULT_PROFILE, Given, Profile, Profiles, Source, Target};

/// Checks a token against the server, then stores URL and token as one profile and makes it
/// the default. The token comes from the prompt, standard input or `--token`, never from
/// GUST_TOKEN (a variable meant for another server would be stored for this one). Without
/// `--url` it logs in again to the profile's own server.
pub(crate) async fn login(global: &Global, out: Out) -> anyhow::Result<()> {
    let env = target::env_var;
    let profiles = Profiles::load()?;
    let named = global.profile.clone().or_else(|| env("GUST_PROFILE"));
    let stored_url = |name: &str| profiles.get(name).map(|p| p.url.clone());
    let url = match (&global.url, &named) {
        (Some(url), _) => url.clone(),
        (None, Some(name)) if profiles.get(name).is_some() => stored_url(name).unwrap_or_default(),
        // A new named profile is not given the default profile's server by accident.
        (None, Some(_)) => env("GUST_URL").unwrap_or_else(|| target::DEFAULT_URL.to_owned()),
        (None, None) => env("GUST_URL")
            .or_else(|| profiles.default.as_deref().and_then(stored_url))
            .unwrap_or_else(|| target::DEFAULT_URL.to_owned()),
    };
    let url = target::normalize(&url)?;
    let name = named
        .or_else(|| profiles.name_for_url(&url))
        .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let token = if let Some(token) = &global.token {
        note!(
            "gust: warning: a token on the command line is visible to other users (ps) and \
             kept in shell history; `gust login` reads it from standard input"
        );
        token.clone()
    } else {
        target::read_secret(&format!("admin token for {url}: "))?
    };
    let client = Client::new(
        Target {
            url: url.clone(),
            token: Some(token.clone()),
            source: Source::Flags { profile: None },
        },
        crate::timeout(global)?,
    );
    // Any admin route proves the token; a refused one is not stored.
    client
        .json(client.request(Method::GET, "/v1/agents"))
        .await
        .map_err(|e| Failure::new(exit::code_of(&e), format!("{e:#}; nothing was stored")))?;
    let path = Profiles::update(|profiles| {
        profiles.profiles.insert(
            name.clone(),
            Profile {
                url: url.clone(),
                token,
            },
        );
        profiles.default = Some(name.clone());
    })?;
    if out.json {
        return out.json(&json!({"profile": name, "url": url, "config": path}));
    }
    out.note(format!(
        "logged in to {url} as profile `{name}` (the default now; stored in {})",
        path.display()
    ));
    Ok(())
}

pub(crate) fn logout(profile: Option<&str>, out: Out) -> anyhow::Result<()> {
    let env_profile = target::env_var("GUST_PROFILE");
    let profiles = Profiles::load()?;
    let Some(name) = profile
        .map(str::to_owned)
        .or(env_profile)
        .or_else(|| profiles.default.clone())
    else {
        out.note("not logged in: no default profile");
        return Ok(());
    };
    if profiles.get(&name).is_none() {
        return Err(Failure::new(Code::NotFound, format!("no profile `{name}`")).into());
    }
    let mut left = Vec::new();
    Profiles::update(|profiles| {
        profiles.profiles.remove(&name);
        if profiles.default.as_deref() == Some(name.as_str()) {
            profiles.default = None;
        }
        // With no default, the one profile left is the default, as it would be had it been
        // the only one logged in; among several, which one is the user's to say.
        if profiles.default.is_none() {
            left = profiles.profiles.keys().cloned().collect();
            profiles.default = (left.len() == 1).then(|| left[0].clone());
        }
    })?;
    out.note(format!(
        "logged out: profile `{name}` and its token are forgotten"
    ));
    match left.as_slice() {
        [] => {}
        [only] => out.note(format!("profile `{only}` is the default now")),
        several => out.note(format!(
            "no default profile now (left: {}); `gust login --profile NAME` makes one the default",
            several.join(", ")
        )),
    }
    Ok(())
}

/// Which server and token the client commands use, from where, and what the server makes
/// of the token (admin, an invoke key, or refused).
pub(crate) async fn whoami(given: &Given, out: Out) -> anyhow::Result<()> {
    let target = target::resolve(given)?;
    let source = target.source.clone();
    let (url, has_token) = (target.url.clone(), target.token.is_some());
    let access = if source == Source::Nothing {
        "none"
    } else {
        let client = Client::new(target, given.timeout);
        match client.json(client.request(Method::GET, "/v1/stats")).await {
            Ok(_) => "admin",
            Err(e) => match exit::code_of(&e) {
                Code::Auth if is_kind(&e, "forbidden") => "invoke key",
                Code::Auth if has_token => "refused",
                Code::Auth => "none",
                _ => return Err(e),
            },
        }
    };
    let shown_url = if source == Source::Nothing { "-" } else { &url };
    if out.json {
        out.json(&json!({
            "url": (source != Source::Nothing).then_some(&url),
            "profile": source.profile(),
            "source": source.describe(),
            "access": access,
        }))?;
    } else {
        say!("url:     {shown_url}")?;
        say!("profile: {}", source.profile().unwrap_or("-"))?;
        say!("from:    {}", source.describe())?;
        say!("access:  {access}")?;
    }
    match access {
        "admin" | "invoke key" => Ok(()),
        _ => Err(Failure::auth(format!(
            "no accepted token for {shown_url}: `gust login --url URL` stores one"
        ))
        .into()),
    }
}

/// The probes: up and ready. They need no token, so the default URL serves when nothing
/// else names a server.
pub(crate) async fn health(given: &Given, out: Out) -> anyhow::Result<()> {
    let target = target::resolve(given)?;
    let url = target.url.clone();
    let client = Client::new(target, given.timeout);
    let probe = |path: &'static str| {
        let client = &client;
        async move {
            match client.send(client.request(Method::GET, path)).await {
                Ok(_) => Ok(true),
                // 503 from /readyz: up, still loading deployments.
                Err(e) if exit::code_of(&e) == Code::Unavailable && path == "/readyz" => Ok(false),
                Err(e) => Err(e),
            }
        }
    };
    let up = probe("/healthz").await?;
    let ready = probe("/readyz").await?;
    if out.json {
        out.json(&json!({"url": url, "up": up, "ready": ready}))?;
    } else {
        say!(
            "{url}: up{}",
            if ready {
                ", ready"
            } else {
                ", loading deployments"
            }
        )?;
    }
    if ready {
        Ok(())
    } else {
        Err(Failure::new(Code::Unavailable, format!("{url} is not ready yet")).into())
    }
}

pub(crate) async fn stats(c: &Ctx) -> anyhow::Result<()> {
    let stats = c.call(Method::GET, "/v1/stats").await?;
    if c.out.json {
        return c.out.json(&stats);
    }
    let mut table = Table::new(&["COUNTER", "VALUE"]);
    for (name, value) in stats.as_object().into_iter().flatten() {
        table.row(vec![name.clone(), text(value)]);
    }
    table.print()?;
    Ok(())
}

pub(crate) async fn keys_create(
    c: &Ctx,
    agent: &str,
    name: &str,
    rate: Option<(f64, u32)>,
) -> anyhow::Result<()> {
    let mut body = json!({ "name": name });
    if let Some((per_second, burst)) = rate {
        body["rate_limit"] = json!({"per_second": per_second, "burst": burst});
    }
    let answer = c
        .call_with(Method::POST, &format!("/v1/agents/{agent}/keys"), &body)
        .await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    say!("{}", text(&answer["key"]))?;
    c.out.note(format!(
        "key {} for `{agent}` (shown only this once; send it as `Authorization: Bearer …` or `x-api-key: …`)",
        text(&answer["id"])
    ));
    Ok(())
}

pub(crate) async fn keys_list(c: &Ctx, agent: &str) -> anyhow::Result<()> {
    let answer = c
        .call(Method::GET, &format!("/v1/agents/{agent}/keys"))
        .await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    let mut table = Table::new(&["ID", "NAME", "CREATED", "LAST USED", "RATE LIMIT"]);
    for key in answer["keys"].as_array().into_iter().flatten() {
        let rate = &key["rate_limit"];
        table.row(vec![
            text(&key["id"]),
            text(&key["name"]),
            text(&key["created_at"]),
            key["last_used_at"].as_str().unwrap_or("never").to_owned(),
            if rate.is_object() {
                format!("{}/s, burst {}", rate["per_second"], rate["burst"])
            } else {
                "-".to_owned()
            },
        ]);
    }
    table.print()?;
    Ok(())
}

pub(crate) async fn keys_revoke(c: &Ctx, agent: &str, id: &str) -> anyhow::Result<()> {
    c.call(Method::DELETE, &format!("/v1/agents/{agent}/keys/{id}"))
        .await?;
    if c.out.json {
        return c.out.json(&json!({"id": id, "revoked": true}));
    }
    c.out.note(format!("revoked {id}"));
    Ok(())
}

pub(crate) async fn push_test(c: &Ctx, agent: &str) -> anyhow::Result<()> {
    let answer = c
        .call(Method::POST, &format!("/v1/agents/{agent}/push/test"))
        .await?;
    if c.out.json {
        c.out.json(&answer)?;
    } else {
        match answer["error"].as_str() {
            Some(error) => say!("{error}")?,
            None => say!("the push receiver answered {}", answer["status"])?,
        }
    }
    if answer["delivered"] != json!(true) {
        anyhow::bail!("the push receiver did not accept the test event");
    }
    Ok(())
}

pub(crate) async fn rotate_secret(c: &Ctx, agent: &str) -> anyhow::Result<()> {
    let answer = c
        .call(
            Method::POST,
            &format!("/v1/agents/{agent}/push/rotate-secret"),
        )
        .await?;
    shown_once(
        c,
        &answer,
        &answer["push"]["secret"],
        "new signing secret (shown only this once); the previous one also signs for 24 h",
    )
}

/// Replaces the admin token; the profile the old one came from is updated, so the CLI keeps
/// working.
pub(crate) async fn rotate_admin_token(c: &Ctx) -> anyhow::Result<()> {
    let answer = c.call(Method::POST, "/v1/admin/rotate-token").await?;
    let replaced =
        "the admin token was replaced (shown only this once); the old one no longer works";
    let (Some(name), Some(token)) = (c.client.source().profile(), answer["admin_token"].as_str())
    else {
        return shown_once(c, &answer, &answer["admin_token"], replaced);
    };
    // Printed before the profile is saved: the server takes only the new token now, and a
    // profile that cannot be written (a full disk) must not lose the one place it is shown.
    let printed = say_secret(c, &answer, &answer["admin_token"]);
    let saved = Profiles::update(|profiles| {
        if let Some(profile) = profiles.profiles.get_mut(name) {
            profile.token = token.to_owned();
        }
    });
    if let Err(e) = saved {
        // Not saved and not shown either (stdout is closed): the error is the last place
        // left to show it.
        let shown = match printed {
            Ok(()) => "printed above".to_owned(),
            Err(_) => format!("`{token}`"),
        };
        return Err(e.context(format!(
            "the new admin token is {shown}, and not saved in profile `{name}`, which still \
             holds the old one: `gust login --profile {name}` stores it"
        )));
    }
    printed?;
    c.out.note(format!(
        "{replaced}, and profile `{name}` now holds the new one"
    ));
    Ok(())
}

/// A secret the server shows once: alone on stdout (for `$(…)`), the note on stderr.
fn shown_once(c: &Ctx, answer: &Value, secret: &Value, note: &str) -> anyhow::Result<()> {
    say_secret(c, answer, secret)?;
    c.out.note(note);
    Ok(())
}

/// The secret alone on stdout, or with `--json` the whole answer.
fn say_secret(c: &Ctx, answer: &Value, secret: &Value) -> anyhow::Result<()> {
    if c.out.json {
        return c.out.json(answer);
    }
    say!("{}", text(secret))
}
