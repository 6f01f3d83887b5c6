//! A multi-step agent flow: triage a support ticket into a category, a priority and the team
//! that owns it. It shows the parts of the SDK a real flow uses: typed JSON in and out,
//! input validation (`invalid_input`), configuration read per deployment, log lines and
//! progress between steps, and a typed `failed` error when configuration is missing.
//!
//! Build and deploy (from the repository root, with `gust serve` running):
//!
//! ```text
//! cargo build -p router --release --target wasm32-wasip2
//! gust config router --set TEAM_BILLING=finance --set TEAM_OUTAGE=sre \
//!     --set TEAM_ACCOUNT=identity --set TEAM_OTHER=support
//! gust deploy router target/wasm32-wasip2/release/router.wasm
//! gust run router '{"subject":"Site down","body":"Checkout returns 500 since 9am","tier":"enterprise"}'
//! ```
//!
//! Configuration:
//! - `TEAM_<CATEGORY>` (required per category that occurs): the team a category routes to;
//! - `KEYWORDS_<CATEGORY>` (optional): comma-separated words that select the category,
//!   replacing the built-in list; categories are `BILLING`, `OUTAGE`, `ACCOUNT`, `OTHER`;
//! - `ESCALATE_TIERS` (optional, default `enterprise`): customer tiers that raise priority.

use gust_sdk::{Context, Error};
use serde::{Deserialize, Serialize};

/// The longest ticket text accepted, so one caller cannot make the flow scan megabytes.
const MAX_TEXT: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ticket {
    subject: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    tier: Option<String>,
}

#[derive(Serialize)]
struct Triage {
    category: &'static str,
    priority: &'static str,
    team: String,
    matched: Vec<String>,
    version: u32,
}

const CATEGORIES: &[(&str, &[&str])] = &[
    (
        "OUTAGE",
        &["down", "outage", "500", "unavailable", "timeout"],
    ),
    (
        "BILLING",
        &["invoice", "refund", "charge", "payment", "billing"],
    ),
    (
        "ACCOUNT",
        &["password", "login", "2fa", "locked", "account"],
    ),
];

#[gust_sdk::agent]
fn run(ticket: Ticket, ctx: &Context) -> Result<Triage, Error> {
    // Step 1: validate.
    let text = format!("{}\n{}", ticket.subject, ticket.body).to_lowercase();
    if ticket.subject.trim().is_empty() {
        return Err(Error::invalid_input("`subject` must not be empty"));
    }
    if text.len() > MAX_TEXT {
        return Err(Error::invalid_input(format!(
            "the ticket is longer than {MAX_TEXT} bytes"
        )));
    }
    ctx.progress(0.25, "validated");

    // Step 2: classify by keywords (configurable per deployment).
    let (category, matched) = classify(&text, ctx);
    ctx.info(format!("classified as {category} (matched {matched:?})"));
    ctx.progress(0.5, "classified");

    // Step 3: prioritise.
    let escalate = ctx
        .config("ESCALATE_TIERS")
        .unwrap_or_else(|| "enterprise".to_owned());
    let escalated = ticket.tier.as_deref().is_some_and(|t| {
        escalate
            .split(',')
            .any(|e| e.trim().eq_ignore_ascii_case(t))
    });
    let urgent = ["urgent", "asap", "immediately"]
        .iter()
        .any(|w| text.contains(w));
    let priority = match (category, escalated || urgent) {
        ("OUTAGE", true) => "p1",
        ("OUTAGE", false) | (_, true) => "p2",
        _ => "p3",
    };
    ctx.progress(0.75, "prioritised");

    // Step 4: route. A category without a team is a configuration problem, not the
    // caller's: it fails the flow with a message the operator can act on.
    let team = ctx.config(&format!("TEAM_{category}")).ok_or_else(|| {
        ctx.error(format!("no team configured for {category}"));
        Error::failed(format!(
            "no team is configured for category {category}: set TEAM_{category} with `gust config`"
        ))
    })?;
    ctx.progress(1.0, "routed");
    Ok(Triage {
        category,
        priority,
        team,
        matched,
        version: ctx.version(),
    })
}

fn classify(text: &str, ctx: &Context) -> (&'static str, Vec<String>) {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for (category, default_keywords) in CATEGORIES {
        let configured = ctx.config(&format!("KEYWORDS_{category}"));
        let keywords: Vec<String> = match &configured {
            Some(list) => list.split(',').map(|k| k.trim().to_lowercase()).collect(),
            None => default_keywords.iter().map(|k| (*k).to_owned()).collect(),
        };
        let matched: Vec<String> = keywords
            .into_iter()
            .filter(|k| !k.is_empty() && words.contains(&k.as_str()))
            .collect();
        if !matched.is_empty() {
            return (category, matched);
        }
    }
    ("OTHER", Vec::new())
}
