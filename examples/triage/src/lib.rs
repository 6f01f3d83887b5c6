//! The reference agent flow: triage a support ticket in several steps (also in
//! `examples/python-triage` and `examples/js-triage`).
//!
//! 1. check the ticket;
//! 2. classify it with a model, through an OpenAI-compatible chat-completions API;
//! 3. look the customer up with a tool API;
//! 4. decide priority and queue — and answer with a typed result.
//!
//! Progress is reported between steps (pollers of a queued run see it), each step logs, and
//! failures are typed: a ticket that cannot be triaged is `invalid_input`, an unreachable or
//! confused model or tool is `failed`.
//!
//! Build and deploy (from the repository root, with `gust serve` running):
//!
//! ```text
//! cargo build -p triage --release --target wasm32-wasip2
//! gust config triage --set MODEL_BASE_URL=https://api.openai.com/v1 --set MODEL=gpt-4o-mini \
//!     --set MODEL_API_KEY=sk-… --set TOOLS_BASE_URL=https://crm.example.com
//! # and allow those hosts: PUT /v1/agents/triage/config with
//! #   "allowed_hosts": ["https://api.openai.com", "https://crm.example.com"]
//! gust deploy triage target/wasm32-wasip2/release/triage.wasm
//! gust run triage '{"customer_id":"c-42","subject":"Charged twice","body":"My card was billed two times."}'
//! ```

use gust_sdk::http::{HttpError, Request};
use gust_sdk::{Context, Error};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ticket {
    customer_id: String,
    subject: String,
    #[serde(default)]
    body: String,
}

/// What the model is asked to answer, as JSON.
#[derive(Deserialize)]
struct Classification {
    category: String,
    urgency: Urgency,
    summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Urgency {
    Low,
    Normal,
    High,
}

#[derive(Serialize, Deserialize)]
struct Customer {
    id: String,
    name: String,
    tier: String,
}

#[derive(Serialize)]
struct Triage {
    category: String,
    urgency: Urgency,
    summary: String,
    customer: Customer,
    priority: &'static str,
    queue: String,
}

impl Urgency {
    fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

const CATEGORIES: &[&str] = &["billing", "outage", "account", "other"];

#[gust_sdk::agent]
fn run(ticket: Ticket, ctx: &Context) -> Result<Triage, Error> {
    // 1. Check the ticket.
    if ticket.subject.trim().is_empty() || ticket.customer_id.trim().is_empty() {
        return Err(Error::invalid_input(
            "`subject` and `customer_id` are required",
        ));
    }
    ctx.progress(0.1, "checked the ticket");

    // 2. Classify it with the model.
    let classification = classify(&ticket, ctx)?;
    ctx.info(format!(
        "classified as {} ({})",
        classification.category,
        classification.urgency.as_str()
    ));
    ctx.progress(0.4, "classified");

    // 3. Look the customer up.
    let customer = lookup(&ticket.customer_id, ctx)?;
    ctx.info(format!(
        "customer {} is on the {} tier",
        customer.id, customer.tier
    ));
    ctx.progress(0.7, "looked up the customer");

    // 4. Decide.
    let priority = match (classification.urgency, customer.tier.as_str()) {
        (Urgency::High, _) | (Urgency::Normal, "enterprise") => "p1",
        (Urgency::Normal, _) | (Urgency::Low, "enterprise") => "p2",
        (Urgency::Low, _) => "p3",
    };
    let queue = format!(
        "{}-{}",
        classification.category,
        if priority == "p1" {
            "urgent"
        } else {
            "standard"
        }
    );
    ctx.progress(1.0, "routed");
    Ok(Triage {
        category: classification.category,
        urgency: classification.urgency,
        summary: classification.summary,
        customer,
        priority,
        queue,
    })
}

fn setting(ctx: &Context, key: &str) -> Result<String, Error> {
    ctx.config(key)
        .ok_or_else(|| Error::failed(format!("the deployment does not set {key}")))
}

fn classify(ticket: &Ticket, ctx: &Context) -> Result<Classification, Error> {
    let base = setting(ctx, "MODEL_BASE_URL")?;
    let request = json!({
        "model": setting(ctx, "MODEL")?,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": format!(
                "You triage support tickets. Answer only JSON: {{\"category\": one of {CATEGORIES:?}, \"urgency\": \"low\"|\"normal\"|\"high\", \"summary\": one sentence}}."
            )},
            {"role": "user", "content": format!("{}\n\n{}", ticket.subject, ticket.body)},
        ],
    });
    let answer = Request::post(&format!("{}/chat/completions", base.trim_end_matches('/')))
        .header(
            "authorization",
            &format!("Bearer {}", setting(ctx, "MODEL_API_KEY")?),
        )
        .json(&request)
        .send()
        .map_err(|e| unreachable_service("the model", &e))?;
    if answer.status != 200 {
        return Err(Error::failed(format!(
            "the model answered HTTP {}",
            answer.status
        )));
    }
    let completion: serde_json::Value = answer.json().map_err(Error::failed)?;
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| Error::failed("the model's answer has no message"))?;
    let classification: Classification = serde_json::from_str(content)
        .map_err(|e| Error::failed(format!("the model did not answer the JSON asked for: {e}")))?;
    if !CATEGORIES.contains(&classification.category.as_str()) {
        return Err(Error::failed(format!(
            "the model chose an unknown category `{}`",
            classification.category
        )));
    }
    Ok(classification)
}

fn lookup(customer_id: &str, ctx: &Context) -> Result<Customer, Error> {
    let base = setting(ctx, "TOOLS_BASE_URL")?;
    let id: String = customer_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let answer = Request::get(&format!("{}/customers/{id}", base.trim_end_matches('/')))
        .send()
        .map_err(|e| unreachable_service("the customer tool", &e))?;
    match answer.status {
        200 => answer.json().map_err(Error::failed),
        404 => Err(Error::invalid_input(format!("no customer `{customer_id}`"))),
        status => Err(Error::failed(format!(
            "the customer tool answered HTTP {status}"
        ))),
    }
}

fn unreachable_service(what: &str, e: &HttpError) -> Error {
    Error::failed(format!("{what} could not be reached: {e}"))
}
