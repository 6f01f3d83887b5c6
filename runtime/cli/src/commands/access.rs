//! Who may do what: `gust login`/`logout`/`whoami`, invoke keys, push secrets, the admin
//! token, and the host's counters.

use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use crate::client::Client;
use crate::exit::{self, Code, Failure};
use crate::output::{Out, Table, text};
use crate::target::{self, DEFAULT_PROFILE, Given, Profile, Profiles, Source, Target};

/// Checks the token against the server, then stores URL and token as one profile and makes
/// it the default.
pub(crate) async fn login(given: &Given, out: Out) -> anyhow::Result<()> {
    let name = given.profile.as_deref().unwrap_or(DEFAULT_PROFILE);
    let url = target::normalize(given.url.as_deref().unwrap_or(target::DEFAULT_URL));
    let token = match &given.token {
        Some(token) => token.clone(),
        None => target::read_secret(&format!("admin token for {url}: "))?,
    };
    let client = Client::new(Target {
        url: url.clone(),
        token: Some(token.clone()),
        source: Source::Given,
    });
    // Any admin route proves the token; a refused one is not stored.
    client
        .json(client.request(Method::GET, "/v1/agents"))
        .await
        .map_err(|e| Failure::new(exit::code_of(&e), format!("{e:#}; nothing was stored")))?;
    let mut profiles = Profiles::load()?;
    profiles.profiles.insert(
        name.to_owned(),
        Profile {
            url: url.clone(),
            token,
        },
    );
    profiles.default = Some(name.to_owned());
    let path = profiles.save()?;
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
    let mut profiles = Profiles::load()?;
    let Some(name) = profile
        .map(str::to_owned)
        .or_else(|| profiles.default.clone())
    else {
        out.note("not logged in: no default profile");
        return Ok(());
    };
    if profiles.profiles.remove(&name).is_none() {
        return Err(Failure::new(Code::NotFound, format!("no profile `{name}`")).into());
    }
    if profiles.default.as_deref() == Some(name.as_str()) {
        profiles.default = None;
    }
    profiles.save()?;
    out.note(format!(
        "logged out: profile `{name}` and its token are forgotten"
    ));
    Ok(())
}

/// Which server and token the client commands use, from where, and what the server makes
/// of the token (admin, an invoke key, or refused).
pub(crate) async fn whoami(c: &Ctx) -> anyhow::Result<()> {
    let access = match c.call(Method::GET, "/v1/stats").await {
        Ok(_) => "admin",
        Err(e) => match e.downcast_ref::<Failure>().map(|f| f.code) {
            Some(Code::Auth) if e.to_string().starts_with("forbidden") => "invoke key",
            Some(Code::Auth) if c.client.has_token() => "refused",
            Some(Code::Auth) => "none",
            _ => return Err(e),
        },
    };
    let source = c.client.source();
    let profile = match source {
        Source::Profile(name) | Source::GivenUrlWithProfile(name) => Some(name.clone()),
        _ => None,
    };
    if c.out.json {
        c.out.json(&json!({
            "url": c.client.base(),
            "profile": profile,
            "source": source.describe(),
            "access": access,
        }))?;
    } else {
        println!("url:     {}", c.client.base());
        println!("profile: {}", profile.as_deref().unwrap_or("-"));
        println!("from:    {}", source.describe());
        println!("access:  {access}");
    }
    match access {
        "admin" | "invoke key" => Ok(()),
        _ => Err(Failure::auth(format!(
            "{} does not accept this token: `gust login --url {}`",
            c.client.base(),
            c.client.base()
        ))
        .into()),
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
    table.print();
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
    println!("{}", text(&answer["key"]));
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
    table.print();
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
        println!("the push receiver answered {}", answer["status"]);
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

pub(crate) async fn rotate_admin_token(c: &Ctx) -> anyhow::Result<()> {
    let answer = c.call(Method::POST, "/v1/admin/rotate-token").await?;
    shown_once(
        c,
        &answer,
        &answer["admin_token"],
        "the admin token was replaced; the old one no longer works (shown only this once); \
         `gust login` stores the new one",
    )
}

/// A secret the server shows once: alone on stdout (for `$(…)`), the note on stderr.
fn shown_once(c: &Ctx, answer: &Value, secret: &Value, note: &str) -> anyhow::Result<()> {
    if c.out.json {
        return c.out.json(answer);
    }
    println!("{}", text(secret));
    c.out.note(note);
    Ok(())
}
