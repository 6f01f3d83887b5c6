//! `gust logs <agent> [--follow]`: the guest lines of an agent's recent sync calls, and with
//! `--follow` the new ones as they come (the API's Server-Sent Events).

use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use super::sse::{self, each_event};
use crate::output::{note, say, text};

pub(crate) async fn logs(c: &Ctx, agent: &str, follow: bool, limit: usize) -> anyhow::Result<()> {
    let path = format!("/v1/agents/{agent}/logs?limit={limit}");
    if !follow {
        let answer = c.call(Method::GET, &path).await?;
        if c.out.json {
            return c.out.json(&answer);
        }
        for line in answer["lines"].as_array().into_iter().flatten() {
            print_line(line)?;
        }
        return Ok(());
    }
    let response = sse::follow(c, &format!("{path}&follow=1")).await?;
    let json = c.out.json;
    each_event(c, response, |event, data| {
        if json {
            say!("{data}")?;
        } else if event == "missed" {
            note!(
                "gust: {} lines were missed (this terminal fell behind)",
                data["lines"]
            );
        } else {
            print_line(&data)?;
        }
        Ok(true)
    })
    .await?;
    note!("gust: the stream ended (the agent was deleted, or the host stopped)");
    Ok(())
}

/// `ts level run_id message`, with `[stdout]`/`[stderr]` for captured output.
fn print_line(line: &Value) -> anyhow::Result<()> {
    let source = match line["source"].as_str() {
        Some("log") | None => String::new(),
        Some(other) => format!("[{other}] "),
    };
    say!(
        "{} {:<5} {} {source}{}",
        text(&line["ts"]),
        text(&line["level"]),
        text(&line["run_id"]),
        text(&line["message"])
    )
}
