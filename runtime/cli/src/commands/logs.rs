//! `gust logs <agent> [--follow]`: the guest lines of an agent's recent sync calls, and with
//! `--follow` the new ones as they come (the API's Server-Sent Events).

use futures::StreamExt as _;
use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::output::text;

pub(crate) async fn logs(c: &Ctx, agent: &str, follow: bool, limit: usize) -> anyhow::Result<()> {
    let path = format!("/v1/agents/{agent}/logs?limit={limit}");
    if !follow {
        let answer = c.call(Method::GET, &path).await?;
        if c.out.json {
            return c.out.json(&answer);
        }
        for line in answer["lines"].as_array().into_iter().flatten() {
            print_line(line);
        }
        return Ok(());
    }
    let response = c
        .client
        .send(
            c.client
                .request(Method::GET, &format!("{path}&follow=1"))
                .header("accept", "text/event-stream"),
        )
        .await?;
    let mut body = response.bytes_stream();
    let mut pending = String::new();
    let mut data = String::new();
    while let Some(chunk) = body.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk?));
        // Server-Sent Events: `field: value` lines, an empty line ends an event.
        while let Some(end) = pending.find('\n') {
            let line = pending[..end].trim_end_matches('\r').to_owned();
            pending.drain(..=end);
            if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let event: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if c.out.json {
                    println!("{event}");
                } else if event.get("seq").is_some() {
                    print_line(&event);
                } else if let Some(missed) = event.get("lines") {
                    eprintln!("gust: {missed} lines were missed (this terminal fell behind)");
                }
                data.clear();
            }
        }
    }
    eprintln!("gust: the stream ended (the agent was deleted, or the host stopped)");
    Ok(())
}

/// `ts level run_id message`, with `[stdout]`/`[stderr]` for captured output.
fn print_line(line: &Value) {
    let source = match line["source"].as_str() {
        Some("log") | None => String::new(),
        Some(other) => format!("[{other}] "),
    };
    println!(
        "{} {:<5} {} {source}{}",
        text(&line["ts"]),
        text(&line["level"]),
        text(&line["run_id"]),
        text(&line["message"])
    );
}
